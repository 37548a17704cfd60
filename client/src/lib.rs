//! The Ferry client library: used by the `ferry` command (crate `ferry-cli`), the benchmarks,
//! the load generator and the p2p node. It draws nothing and reads no terminal.
//!
//! Modules:
//! - [`client`]: [`Client`], one multiplexed connection with list, stat, digest, fetch and ping.
//! - [`transfer`]: downloads to disk with `.part` files, resume and parallel trees.
//! - [`progress`]: the trait through which transfers report progress.
//! - [`error`]: [`ClientError`] and its exit code.
//!
//! Addresses ([`FerryUrl`]) and key sources come from `ferry_common`, re-exported here.
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

pub mod client;
pub mod error;
pub mod progress;
pub mod transfer;

pub use client::{Client, ClientConfig, FetchStream, ListStream, Target};
pub use error::ClientError;
pub use ferry_common::url::{self, FerryUrl};
pub use progress::{FileProgress, NoProgress, TransferProgress};
