//! Shared helpers for Ferry benchmarks and the load generator.
