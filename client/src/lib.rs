//! The Ferry client: a library used by the `ferry` command, the benchmarks, the load generator
//! and the p2p node, plus the command itself.
//!
//! Modules:
//! - [`url`]: `ferry://HOST[:PORT][/PATH]` addresses.
//! - [`key`]: where the pre-shared key comes from (flag, file, environment, default file).
//! - [`error`]: [`ClientError`] and the exit-code convention.
//! - [`client`]: [`Client`], one multiplexed connection with list, stat, fetch and ping.
//! - [`transfer`]: downloads to disk with `.part` files, resume and parallel trees.
//! - [`progress`]: progress bars and summaries.
//! - [`cli`], [`commands`], [`shell`]: the `ferry` command line and interactive shell.

pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod format;
pub mod key;
pub mod progress;
pub mod shell;
pub mod transfer;
pub mod url;

pub use client::{Client, ClientConfig, FetchStream, ListStream, Target};
pub use error::ClientError;
pub use url::FerryUrl;
