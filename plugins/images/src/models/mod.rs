//! One module per published architecture.
