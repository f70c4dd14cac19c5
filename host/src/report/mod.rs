//! Figures and reference figures: curves over training, 1-d histograms against the optimum,
//! image grids with their prompts.

pub mod grid;
pub mod oned;
pub mod plot;
