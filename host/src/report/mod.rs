//! Drawing figures as PNG files: line charts, histograms against a reference, image grids with
//! their prompts.

pub mod grid;
pub mod plot;
