//! The client's error type. Variants are grouped so that the CLI can map each to an exit code
//! ([`ClientError::exit_code`]): remote refusals, connection and authentication failures,
//! integrity failures, and local problems.

use std::net::SocketAddr;
use std::path::PathBuf;

use ferry_common::text::{printable, printable_cut, MAX_REMOTE_MESSAGE};
use ferry_protocol::{ErrorBody, ErrorCode, HandshakeError};

/// The exit-code table, shared by every Ferry command (`ferry_common::exit`).
pub use ferry_common::exit;

/// Everything that can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered a request with an error frame. Only that request failed.
    #[error("{}", remote_message(.0))]
    Remote(ErrorBody),
    /// The server ended the connection with an error frame on id 0 (spec §6.3): every request
    /// in flight failed, whatever the code.
    #[error("the server closed the connection: {}", remote_message(.0).trim_start_matches("server: "))]
    RemoteClosed(ErrorBody),

    #[error("could not resolve host {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{}", connect_message(.addr, .source))]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("authentication failed with {addr}: wrong key, or not a Ferry server (compare --key or FERRY_KEY with the server's connect line)")]
    Auth { addr: SocketAddr },
    #[error("the server at {addr} proved identity {proven}, not {expected} as the address requires: it may be an impostor (a man-in-the-middle) or the id in the address is wrong, so nothing was sent to it")]
    WrongServer {
        addr: SocketAddr,
        expected: ferry_protocol::identity::NodeId,
        proven: ferry_protocol::identity::NodeId,
    },
    /// Trust on first use (spec §13.8): the server at a pinned `HOST:PORT` proved another id.
    #[error("the server at {authority} presents id {proven}, but {file} (line {line}) says {known}: it may be an impostor, or its identity changed; if you trust the change, run: ferry forget {authority}")]
    KnownServerChanged {
        authority: String,
        proven: ferry_protocol::identity::NodeId,
        known: ferry_protocol::identity::NodeId,
        file: String,
        line: usize,
    },
    #[error("the server at {addr} {}", refusal(.source))]
    Handshake {
        addr: SocketAddr,
        source: HandshakeError,
    },
    #[error("timed out after {secs}s {}", printable(.what))]
    Timeout { what: String, secs: u64 },
    /// The connection ended while a request was in flight.
    #[error("connection lost: {}", printable(.0))]
    ConnectionLost(String),
    /// The connection's keys are near their usage limit (spec §5.5): this side starts no new
    /// requests on it, or the server closed it once its own key was spent. A transfer
    /// continues on a new connection ([`ClientError::is_retired`]).
    #[error("{}", printable(.0))]
    Retired(String),
    /// The server sent something this client cannot make sense of.
    #[error("protocol error: {}", printable(.0))]
    Protocol(String),

    /// The data received does not match what the server said it sent.
    #[error("integrity check failed: {}", printable(.0))]
    Integrity(String),

    /// A local file problem. The path may hold a remote name, hence the sanitiser; the OS
    /// error is said once, without the `(os error N)` suffix.
    #[error("{}: {}", printable(&.path.display().to_string()), os_error(.source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Anything else decided locally: an existing destination, a bad argument.
    #[error("{}", printable(.0))]
    Local(String),
    /// One item of a larger operation (a file of `get -r`) failed: says which, and `after`
    /// may add a summary. Exits as `source` does.
    #[error("{}: {source}{after}", printable(.what))]
    About {
        what: String,
        source: Box<ClientError>,
        after: String,
    },
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
            // An upload whose bytes did not hash to its digest (spec §3.12).
            Self::Remote(body) if body.code == ErrorCode::DIGEST_MISMATCH => exit::INTEGRITY,
            Self::Remote(body) if body.code.is_connection_fatal() => exit::CONNECTION,
            Self::RemoteClosed(_) => exit::CONNECTION,
            Self::Remote(_) | Self::Io { .. } | Self::Local(_) => exit::REMOTE,
            Self::Resolve { .. }
            | Self::Connect { .. }
            | Self::Auth { .. }
            | Self::WrongServer { .. }
            | Self::KnownServerChanged { .. }
            | Self::Handshake { .. }
            | Self::Timeout { .. }
            | Self::ConnectionLost(_)
            | Self::Retired(_)
            | Self::Protocol(_) => exit::CONNECTION,
            Self::Integrity(_) => exit::INTEGRITY,
            Self::About { source, .. } => source.exit_code(),
            Self::Interrupted => exit::INTERRUPTED,
            Self::Usage(_) => exit::USAGE,
        }
    }

    /// The wire code when the server refused the request.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote(body) | Self::RemoteClosed(body) => Some(body.code),
            _ => None,
        }
    }

    /// Whether the server (or this side's own key) retired the connection (spec §5.5): a
    /// `SHUTTING_DOWN` refusal or goodbye, or [`ClientError::Retired`]. The request, or the
    /// rest of a transfer, goes on a new connection.
    pub fn is_retired(&self) -> bool {
        match self {
            Self::Retired(_) => true,
            Self::Remote(body) | Self::RemoteClosed(body) => body.code == ErrorCode::SHUTTING_DOWN,
            _ => false,
        }
    }

    /// Whether the connection is unusable after this error (as opposed to one failed request).
    pub fn is_connection_error(&self) -> bool {
        self.exit_code() == exit::CONNECTION
    }

    /// A local file operation on `path` failed.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

fn remote_message(body: &ErrorBody) -> String {
    let name = body.code.name().unwrap_or("UNKNOWN").to_ascii_lowercase();
    let name = name.replace('_', " ");
    // The message comes from the peer: no control characters reach the terminal, and a
    // 60 KB message does not fill it.
    let message = printable_cut(&body.message, MAX_REMOTE_MESSAGE);
    if message.is_empty() || message == body.code.description() {
        format!("server: {}", body.code.description())
    } else if message.starts_with(&name) {
        format!("server: {message}")
    } else {
        format!("server: {message} ({name})")
    }
}

/// An OS error as one lowercase clause, without Rust's `(os error N)` suffix, and without the
/// inner error repeated when an error wraps another with the same text.
pub(crate) fn os_error(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
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

/// A handshake refusal in one sentence: the server's own reason when it sent one.
fn refusal(source: &HandshakeError) -> String {
    match source {
        HandshakeError::Refused(body) => {
            let message = if body.message.is_empty() {
                body.code.description().to_string()
            } else {
                printable_cut(&body.message, MAX_REMOTE_MESSAGE)
            };
            format!("refused the connection: {message} ({})", body.code)
        }
        other => format!("refused the handshake: {}", printable(&other.to_string())),
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

    #[test]
    fn connection_errors_from_the_server_exit_3_whatever_the_code() {
        // A record the server could not open, a malformed frame, its frame deadline: it ends
        // the connection on id 0, and the client says so with exit 3, as when it noticed first.
        for code in [
            ErrorCode::BAD_RECORD,
            ErrorCode::MALFORMED_MESSAGE,
            ErrorCode::TIMEOUT,
        ] {
            let err = ClientError::RemoteClosed(ErrorBody::new(code, "x"));
            assert_eq!(err.exit_code(), exit::CONNECTION, "{code:?}");
            assert!(
                err.to_string()
                    .starts_with("the server closed the connection: x"),
                "{err}"
            );
        }
    }

    #[test]
    fn shutting_down_in_any_form_retires_the_connection() {
        let body = ErrorBody::from_code(ErrorCode::SHUTTING_DOWN);
        assert!(ClientError::Remote(body.clone()).is_retired());
        assert!(ClientError::RemoteClosed(body).is_retired());
        let retired = ClientError::Retired("x".into());
        assert!(retired.is_retired());
        assert_eq!(retired.exit_code(), exit::CONNECTION);
        let busy = ClientError::Remote(ErrorBody::from_code(ErrorCode::BUSY));
        assert!(!busy.is_retired());
        assert!(!ClientError::ConnectionLost("eof".into()).is_retired());
    }

    #[test]
    fn os_errors_are_said_once() {
        let err = ClientError::io("a/b", std::io::Error::from_raw_os_error(2));
        assert_eq!(err.to_string(), "a/b: no such file or directory");
        let long = ClientError::Remote(ErrorBody::new(
            ErrorCode::INTERNAL,
            "\x1b[31m".repeat(10_000),
        ));
        assert!(
            long.to_string().chars().count() < 600,
            "{}",
            long.to_string().len()
        );
        assert!(!long.to_string().contains('\x1b'));
    }
}
