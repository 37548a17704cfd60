//! The client's error type. Variants are grouped so that the CLI can map each to an exit code
//! ([`ClientError::exit_code`]): remote refusals, connection and authentication failures,
//! integrity failures, and local problems.

use std::net::SocketAddr;
use std::path::PathBuf;

use ferry_protocol::{ErrorBody, ErrorCode, HandshakeError};

/// Exit codes shared by every Ferry command-line tool.
pub mod exit {
    pub const OK: u8 = 0;
    /// The server refused a request (not found, permission denied, ...), or a local problem
    /// such as an existing destination.
    pub const REMOTE: u8 = 1;
    /// Bad command-line usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// Could not connect, or the key was refused, or the connection was lost.
    pub const CONNECTION: u8 = 3;
    /// Received data did not match the server's hash, or the file changed during a resume.
    pub const INTEGRITY: u8 = 4;
    /// Interrupted by Ctrl-C.
    pub const INTERRUPTED: u8 = 130;
}

/// Everything that can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered a request with an error frame. Only that request failed.
    #[error("{}", remote_message(.0))]
    Remote(ErrorBody),

    #[error("could not resolve host {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{}", connect_message(.addr, .source))]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("authentication failed with {addr}: wrong key, or not a Ferry server (compare --key or FERRY_KEY with the server's connect line)")]
    Auth { addr: SocketAddr },
    #[error("the server at {addr} refused the handshake: {source}")]
    Handshake {
        addr: SocketAddr,
        source: HandshakeError,
    },
    #[error("timed out after {secs}s {what}")]
    Timeout { what: String, secs: u64 },
    /// The connection ended while a request was in flight.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The server sent something this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The data received does not match what the server said it sent.
    #[error("integrity check failed: {0}")]
    Integrity(String),

    /// A local file problem.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Anything else decided locally: an existing destination, a bad argument.
    #[error("{0}")]
    Local(String),
    /// The user pressed Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// The command cannot run as given (no key, bad argument); exit code 2 like a clap error.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Remote(body) if body.code == ErrorCode::FILE_CHANGED => exit::INTEGRITY,
            Self::Remote(body) if body.code.is_connection_fatal() => exit::CONNECTION,
            Self::Remote(_) | Self::Io { .. } | Self::Local(_) => exit::REMOTE,
            Self::Resolve { .. }
            | Self::Connect { .. }
            | Self::Auth { .. }
            | Self::Handshake { .. }
            | Self::Timeout { .. }
            | Self::ConnectionLost(_)
            | Self::Protocol(_) => exit::CONNECTION,
            Self::Integrity(_) => exit::INTEGRITY,
            Self::Interrupted => exit::INTERRUPTED,
            Self::Usage(_) => exit::USAGE,
        }
    }

    /// The wire code when the server refused the request.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote(body) => Some(body.code),
            _ => None,
        }
    }

    /// Whether the connection is unusable after this error (as opposed to one failed request).
    pub fn is_connection_error(&self) -> bool {
        self.exit_code() == exit::CONNECTION
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

fn remote_message(body: &ErrorBody) -> String {
    let name = body.code.name().unwrap_or("UNKNOWN").to_ascii_lowercase();
    let name = name.replace('_', " ");
    // The message comes from the peer: no control characters reach the terminal.
    let message = crate::format::printable(&body.message);
    if message.is_empty() || message == body.code.description() {
        format!("server: {}", body.code.description())
    } else if message.starts_with(&name) {
        format!("server: {message}")
    } else {
        format!("server: {message} ({name})")
    }
}

fn connect_message(addr: &SocketAddr, source: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match source.kind() {
        K::ConnectionRefused => {
            format!("connection refused by {addr}: no Ferry server is listening there")
        }
        K::TimedOut => format!("connecting to {addr} timed out"),
        _ => format!("could not connect to {addr}: {source}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_convention() {
        let remote = ClientError::Remote(ErrorBody::new(ErrorCode::NOT_FOUND, "no such file: x"));
        assert_eq!(remote.exit_code(), exit::REMOTE);
        assert_eq!(remote.to_string(), "server: no such file: x (not found)");
        let changed = ClientError::Remote(ErrorBody::from_code(ErrorCode::FILE_CHANGED));
        assert_eq!(changed.exit_code(), exit::INTEGRITY);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = ClientError::Connect {
            addr,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(refused.exit_code(), exit::CONNECTION);
        assert!(refused
            .to_string()
            .starts_with("connection refused by 127.0.0.1:1"));
        assert_eq!(ClientError::Auth { addr }.exit_code(), exit::CONNECTION);
        assert_eq!(
            ClientError::Integrity("x".into()).exit_code(),
            exit::INTEGRITY
        );
        assert_eq!(ClientError::Interrupted.exit_code(), exit::INTERRUPTED);
    }
}
