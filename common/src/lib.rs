//! What every Ferry binary does the same way, written once: `ferry`, `ferry-server`,
//! `ferry-peer` and `ferry-load` all read keys, name servers and trackers, exit and log alike.
//!
//! Modules:
//! - [`key_file`]: reading and creating key files (owner-only, as ssh insists).
//! - [`identity`]: the node's identity file (created on first use, rotated aside).
//! - [`keys`]: where the pre-shared key comes from (flag, file, environment, default file), and
//!   the connect line a server prints.
//! - [`known_servers`]: the ids that answered at each `HOST:PORT` first (trust on first use).
//! - [`url`]: `ferry://[ID@]HOST[:PORT][,HOST[:PORT]...][/PATH]` server addresses and `udp://HOST:PORT` trackers.
//! - [`exit`]: the exit-code table shared by every command.
//! - [`text`]: the one sanitiser for remote strings shown on a terminal.
//! - `logging`, `progress` (feature `cli`): the tracing subscriber and progress-bar styling.
//!
//! The protocol crate stays sans-IO: it parses a key file's bytes, this crate reads the file.

pub mod exit;
pub mod identity;
pub mod key_file;
pub mod keys;
pub mod known_servers;
pub mod text;
pub mod url;

#[cfg(feature = "cli")]
pub mod logging;
#[cfg(feature = "cli")]
pub mod progress;

pub use keys::KeySources;
pub use url::{FerryUrl, TrackerUrl};
