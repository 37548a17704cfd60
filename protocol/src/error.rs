//! Errors of every layer, and the stable wire code table they map to (spec §6).
//!
//! Codes are never renumbered and never change meaning. The high byte of a code is its category.
//! [`Error::code`] is the one place that maps an error to the code sent on the wire.

use std::fmt;

/// Who caused an error: this side, or the peer (h2's `Initiator`). A peer-caused error is logged
/// at debug/warn, a local one may deserve more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// This endpoint detected a problem of its own or refused the peer.
    Local,
    /// The peer sent an error frame.
    Remote,
}

/// Broad class of an error code; the code's high byte (spec §6.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Category(pub u8);

impl Category {
    /// Framing, versions, unknown or malformed messages. The connection is usually closed.
    pub const PROTOCOL: Self = Self(0x01);
    /// Handshake, key and record failures. The connection is always closed.
    pub const AUTH: Self = Self(0x02);
    /// The request cannot be served as asked (path, file kind, range). Only that request fails.
    pub const REQUEST: Self = Self(0x03);
    /// A limit was reached or a deadline passed. Retrying later may succeed.
    pub const LIMIT: Self = Self(0x04);
    /// The server failed or is shutting down.
    pub const SERVER: Self = Self(0x05);
    /// Reserved for the peer-wire and tracker services.
    pub const PEER: Self = Self(0x06);
    /// Fleet updates (P2P.md §8).
    pub const FLEET: Self = Self(0x08);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::PROTOCOL => "protocol",
            Self::AUTH => "auth",
            Self::REQUEST => "request",
            Self::LIMIT => "limit",
            Self::SERVER => "server",
            Self::PEER => "peer",
            Self::FLEET => "fleet",
            _ => return None,
        })
    }
}

impl fmt::Debug for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Category(0x{:02x})", self.0),
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

macro_rules! error_codes {
    ($($konst:ident = $value:expr, $text:expr;)*) => {
        /// A stable wire error code (spec §6.2). Unknown codes survive and print in hex.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct ErrorCode(pub u16);

        impl ErrorCode {
            $(#[doc = $text] pub const $konst: Self = Self($value);)*

            /// Every code this implementation knows, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$konst,)*];

            /// The code's name in the table, e.g. `NOT_FOUND`.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$konst => Some(stringify!($konst)),)*
                    _ => None,
                }
            }

            /// The table's one-line meaning, used as the message when there is nothing better.
            pub fn description(self) -> &'static str {
                match self {
                    $(Self::$konst => $text,)*
                    _ => "unknown error",
                }
            }
        }
    };
}

error_codes! {
    BAD_FRAME = 0x0101, "bad frame";
    UNSUPPORTED_VERSION = 0x0102, "unsupported protocol version";
    UNKNOWN_REQUEST = 0x0103, "unknown request";
    MALFORMED_MESSAGE = 0x0104, "malformed message body";
    DUPLICATE_ID = 0x0105, "request id already in use";
    UNEXPECTED_MESSAGE = 0x0106, "message not allowed in this state";
    AUTHENTICATION_FAILED = 0x0201, "authentication failed";
    PLAINTEXT_REFUSED = 0x0202, "plaintext sessions are not allowed by this server";
    BAD_RECORD = 0x0203, "record failed authentication";
    ENROLMENT_FAILED = 0x0204, "enrolment failed: the code is wrong, expired or used";
    NOT_FOUND = 0x0301, "not found";
    NOT_A_FILE = 0x0302, "not a regular file";
    NOT_A_DIRECTORY = 0x0303, "not a directory";
    PERMISSION_DENIED = 0x0304, "permission denied";
    INVALID_PATH = 0x0305, "invalid path";
    NAME_TOO_LONG = 0x0306, "name too long";
    INVALID_RANGE = 0x0307, "invalid range";
    FILE_CHANGED = 0x0308, "file changed while being sent";
    CANCELLED = 0x0309, "cancelled";
    READ_ONLY = 0x030A, "read-only: this client may not upload";
    ALREADY_EXISTS = 0x030B, "the destination already exists";
    DIGEST_MISMATCH = 0x030C, "the uploaded bytes do not match their digest";
    OFFER_DECLINED = 0x030D, "the receiver declined the offer";
    NOT_OFFERED = 0x030E, "the receiver accepted no offer of this file";
    ALREADY_HAVE = 0x030F, "the receiver already has this file";
    TOO_LARGE = 0x0401, "too large";
    BUSY = 0x0402, "busy: limit reached";
    TIMEOUT = 0x0403, "timed out";
    QUOTA_EXCEEDED = 0x0404, "upload quota exceeded";
    NO_SPACE = 0x0405, "no space left on the server";
    INTERNAL = 0x0501, "internal error";
    SHUTTING_DOWN = 0x0502, "server is shutting down";
    BANNED = 0x0601, "banned: repeatedly sent data that failed verification";
    UNKNOWN_RELEASE = 0x0801, "unknown release: no manifest for this content id here";
}

impl ErrorCode {
    /// The category is the code's high byte.
    pub fn category(self) -> Category {
        Category((self.0 >> 8) as u8)
    }

    /// Whether this code can only describe the connection as a whole (spec §6.3): the
    /// handshake and record failures, a corrupt frame, a version mismatch and a ban. Every other code
    /// is scoped by the id of the error frame that carries it: id 0 ends the connection, any
    /// other id ends only that request.
    pub fn is_connection_fatal(self) -> bool {
        self.category() == Category::AUTH
            || matches!(
                self,
                Self::BAD_FRAME | Self::UNSUPPORTED_VERSION | Self::BANNED
            )
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}(0x{:04x})", self.0),
            None => write!(f, "ErrorCode(0x{:04x})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A frame or message body could not be decoded. Always caused by the peer's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic byte 0x{0:02x}, expected 0xfe")]
    BadMagic(u8),
    #[error("protocol version {got} not accepted here (accepting {min}..={max})")]
    UnsupportedVersion { got: u8, min: u8, max: u8 },
    #[error("body length {length} exceeds {max}")]
    TooLarge { length: u32, max: u32 },
    #[error("truncated: needed {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("string is not valid utf-8")]
    InvalidUtf8,
    #[error("no message of type {kind:?} for service {service:?}")]
    UnknownMessage {
        kind: crate::FrameType,
        service: crate::Service,
    },
    #[error("invalid {field}: {value}")]
    InvalidValue { field: &'static str, value: u64 },
    #[error("string of {0} bytes does not fit a u16 length prefix")]
    StringTooLong(usize),
}

impl DecodeError {
    /// The wire code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadMagic(_) => ErrorCode::BAD_FRAME,
            Self::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            Self::TooLarge { .. } => ErrorCode::TOO_LARGE,
            Self::UnknownMessage { .. } => ErrorCode::UNKNOWN_REQUEST,
            // The frame decoder waits for whole frames, so a short read is always a body
            // shorter than its own fields say.
            Self::Truncated { .. }
            | Self::TrailingBytes(_)
            | Self::InvalidUtf8
            | Self::InvalidValue { .. }
            | Self::StringTooLong(_) => ErrorCode::MALFORMED_MESSAGE,
        }
    }
}

/// A record failed. Deliberately one opaque variant for every length, tag and padding failure
/// so a peer learns nothing from which check failed (spec §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("record failed authentication")]
    BadRecord,
    #[error("sequence numbers exhausted; the connection must be re-established")]
    SequenceExhausted,
    #[error("body of {0} bytes is too large to encrypt")]
    TooLarge(usize),
}

/// The handshake failed (spec §4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Wrong key, a forged or malformed handshake message, a bad key share. One variant on
    /// purpose: a wrong key and a malformed handshake look the same from outside.
    #[error("authentication failed")]
    AuthenticationFailed,
    #[error("no common protocol version: we speak {ours_min}..={ours_max}, peer offered {theirs_min}..={theirs_max}")]
    NoCommonVersion {
        ours_min: u8,
        ours_max: u8,
        theirs_min: u8,
        theirs_max: u8,
    },
    #[error("the server does not allow plaintext sessions")]
    PlaintextRefused,
    #[error("no common record suite: we accept {ours:?}, peer offered {theirs:?}")]
    NoCommonSuite {
        ours: Vec<crate::message::SuiteId>,
        theirs: Vec<crate::message::SuiteId>,
    },
    /// The server refused our version-2 hello before answering it, which a version-2 server
    /// never does to an honest client (spec §4.3): it predates version 2.
    #[error("the server did not understand our protocol version 2 hello, so it is older than version 2; offering only the cbc-hmac suite (--suite cbc-hmac) speaks version 1")]
    HelloNotUnderstood,
    #[error("peer refused the handshake: {0}")]
    Refused(crate::message::ErrorBody),
}

impl HandshakeError {
    /// The wire code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::AuthenticationFailed => ErrorCode::AUTHENTICATION_FAILED,
            Self::NoCommonVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            Self::PlaintextRefused => ErrorCode::PLAINTEXT_REFUSED,
            // A capability mismatch like a version one (spec §4.4).
            Self::NoCommonSuite { .. } => ErrorCode::UNSUPPORTED_VERSION,
            // What the server sent.
            Self::HelloNotUnderstood => ErrorCode::AUTHENTICATION_FAILED,
            Self::Refused(body) => body.code,
        }
    }
}

/// Any error of the codec, session or handshake, as seen by an adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("peer closed the connection")]
    Closed,
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The one mapping from errors to wire codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Decode(e) => e.code(),
            Self::Crypto(CryptoError::BadRecord) => ErrorCode::BAD_RECORD,
            Self::Crypto(CryptoError::SequenceExhausted | CryptoError::TooLarge(_)) => {
                ErrorCode::INTERNAL
            }
            Self::Handshake(e) => e.code(),
            Self::Closed | Self::Io(_) => ErrorCode::INTERNAL,
            Self::Timeout(_) => ErrorCode::TIMEOUT,
        }
    }

    /// Who caused it.
    pub fn initiator(&self) -> Initiator {
        match self {
            Self::Handshake(HandshakeError::Refused(_)) => Initiator::Remote,
            _ => Initiator::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_categorised() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "{code:?} listed twice");
            assert!(code.category().name().is_some(), "{code:?} has no category");
        }
    }

    #[test]
    fn unknown_codes_print_in_hex() {
        assert_eq!(format!("{}", ErrorCode(0x0999)), "ErrorCode(0x0999)");
        assert_eq!(format!("{}", ErrorCode::NOT_FOUND), "NOT_FOUND(0x0301)");
    }
}
