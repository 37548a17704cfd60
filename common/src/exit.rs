//! Exit codes, one table for every Ferry command (house style: sendme's convention).

/// Success.
pub const OK: u8 = 0;
/// The server refused a request (not found, permission denied, ...), or a local problem such as
/// an existing destination.
pub const REMOTE: u8 = 1;
/// Bad command-line usage (clap's own code).
pub const USAGE: u8 = 2;
/// Could not connect, or the key was refused, or the connection was lost; for `ferry-peer`,
/// nowhere to find the data.
pub const CONNECTION: u8 = 3;
/// Received data did not match its hash, or the file changed during a resume.
pub const INTEGRITY: u8 = 4;
/// Interrupted by Ctrl-C (SIGINT): 128 + 2.
pub const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM: 128 + 15.
pub const TERMINATED: u8 = 143;
