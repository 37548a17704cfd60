//! `ferry`, the command line: one-shot commands, the interactive shell, output formatting,
//! progress bars and `demo`. The work itself is the `ferry_client` library's; this crate turns
//! arguments into calls and results into text.
//!
//! Modules:
//! - [`cli`]: the clap definition of every command and flag.
//! - [`commands`]: one module per command (`demo` runs an in-process `ferry_server`).
//! - [`shell`]: the interactive shell (rustyline, completion, background jobs).
//! - [`format`](mod@format): entries as `ls -l` lines, stat text and JSON.
//! - [`progress`]: progress bars (indicatif) behind the library's progress trait.

pub mod cli;
pub mod commands;
pub mod format;
pub mod progress;
pub mod shell;
