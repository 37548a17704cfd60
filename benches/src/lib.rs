//! Shared helpers for Ferry's benchmarks and load generator.
//!
//! - [`ratios`]: reads criterion's estimates after a run and prints each candidate as a ratio of
//!   a baseline measured in the same run, because absolute figures on a shared machine are noise.

pub mod ratios;
