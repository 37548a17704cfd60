//! Shared code of Ferry's benchmarks and its load generator, `ferry-load`.
//!
//! - [`ratios`]: reads criterion's estimates after a run and prints each candidate as a ratio of
//!   a baseline measured in the same run, because absolute figures on a shared machine are noise.
//! - [`baseline`]: raw cipher+MAC work, the floor encrypted framing is compared against.
//! - [`load`]: the load generator's modes (codec, server, hostile), statistics and plots.

pub mod baseline;
pub mod load;
pub mod ratios;
