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
//! - [`format`](mod@format): entries as `ls -l` lines, stat text and JSON.
//! - [`cli`], [`commands`], [`shell`]: the `ferry` command line and interactive shell (`demo`
//!   runs an in-process `ferry_server`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_client::ClientError> {
//! use ferry_client::{Client, ClientConfig, FerryUrl};
//! let url: FerryUrl = "ferry://127.0.0.1:6789/docs".parse().expect("a valid address");
//! let key = "3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".parse().expect("a valid key");
//! let client = Client::connect(&url, ClientConfig::new(key)).await?;
//! for entry in client.list(&url.path, false, 0).await? {
//!     println!("{}", entry.name);
//! }
//! let mut stream = client.fetch("docs/a.txt", 0, ferry_protocol::message::TO_END).await?;
//! while let Some(chunk) = stream.chunk().await? {
//!     // Each chunk is `Bytes` straight from the socket buffer; the end frame's digest is
//!     // checked before `chunk` returns `None`.
//!     let _ = chunk;
//! }
//! # Ok(())
//! # }
//! ```

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
