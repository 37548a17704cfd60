//! The load generator behind `ferry-load`.
//!
//! - [`codec`]: in-memory frame encode/decode throughput per body size and thread count.
//! - [`server`]: closed- or open-loop load against a live server, HDR latency percentiles.
//! - [`hostile`]: attacks beside an honest client, and what they did to its latency.
//! - [`workload`]: the request mix and its targets; [`client`]: load connections.
//! - [`stats`]: per-worker recording and the one collector; [`plot`]: SVG charts.

pub mod client;
pub mod codec;
pub mod hostile;
pub mod plot;
pub mod server;
pub mod stats;
pub mod workload;
