//! The Ferry wire protocol.
//!
//! Every message on every transport is a frame: a fixed 12-byte big-endian header and a body.
//! After a PSK + X25519 handshake, bodies are protected by the negotiated record suite:
//! AES-256-GCM (protocol version 2's default) or AES-256-CBC + HMAC-SHA256 (encrypt-then-MAC),
//! both with implicit sequence numbers. `spec/PROTOCOL.md` is the normative
//! description; this crate is its reference implementation.
//!
//! The core is sans-IO: it takes bytes and returns frames, takes messages and returns bytes, and
//! never touches a socket or the clock. The [`tokio`] module is a thin adapter.
//!
//! Modules, bottom up:
//! - [`header`]: the 12-byte header and the wire-number newtypes (type, service, id).
//! - [`frame`]: frames and the incremental decoder (magic, version and length checks first).
//! - [`message`]: typed bodies, one file per message, with `encode`/`decode`/`encoded_len`.
//! - [`error`]: the stable error-code table and one error enum per layer.
//! - [`crypto`]: keys, the HKDF key schedule, and the record layer (suite, sequence limits, IVs).
//! - [`digest`]: the end-to-end fetch digest (BLAKE3).
//! - [`handshake`]: client and server handshake state machines.
//! - [`enrol`]: enrolment with a one-time code (SPAKE2 bound to the identity handshake).
//! - [`identity`]: node identities (X25519 key pairs) and their ids; [`noise`]: the identity
//!   handshake (Noise XX) and the server's accept that serves both handshakes on one port.
//! - [`session`]: an established connection's framing and record protection.
//! - [`conn`]: keep-alive and request-id bookkeeping, driven by a caller-supplied clock.
//! - [`tokio`] (feature `tokio`): async handshake and a `tokio_util` codec.
//! - [`transport`] (feature `tokio`): where streams come from (TCP today; relays, QUIC later).
//! - [`frame_wake`] (feature `tokio`): every TCP stream's reader is woken once per frame, not
//!   per segment (`SO_RCVLOWAT` follows the clear-text headers; nothing changes on the wire).
//! - [`driver`] (feature `tokio`): the one framed connection driver (frame reader, batching
//!   frame writer) that the server, the client and the peer run over any split stream.

pub mod addr;
pub mod conn;
pub mod crypto;
pub mod digest;
#[cfg(feature = "tokio")]
pub mod driver;
pub mod enrol;
pub mod error;
pub mod frame;
#[cfg(feature = "tokio")]
pub mod frame_wake;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod handshake;
pub mod header;
pub mod identity;
pub mod message;
pub mod noise;
pub mod session;
#[cfg(feature = "tokio")]
pub mod sockopt;
#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg(feature = "tokio")]
pub mod transport;

pub use crypto::Key;
pub use error::{Category, CryptoError, DecodeError, Error, ErrorCode, HandshakeError, Initiator};
pub use frame::{Frame, FrameDecoder, DEFAULT_MAX_BODY, MAX_BODY_LIMIT};
pub use handshake::{
    ClientHandshakeConfig, KeyResolver, Permissions, Principal, ServerHandshakeConfig, SingleKey,
};
pub use header::{FrameType, Header, RequestId, Service, HEADER_LEN, MAGIC, MIN_VERSION, VERSION};
pub use message::{ErrorBody, Message, Mode};
pub use session::{RecvHalf, Role, SendHalf, Session};
