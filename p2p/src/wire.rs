//! The peer wire: messages between swarm peers as Ferry frames of service `0x50`
//! (spec/P2P.md §3). Sans-IO: a body and its header's type byte in, a [`PeerMessage`] out, and
//! back.
//!
//! A connection is an ordinary Ferry session (same 12-byte header, same handshake and record
//! encryption) whose pre-shared key is derived from the content id with [`swarm_key`], so only
//! holders of the manifest can complete the handshake. Every peer message uses request id 0.
//!
//! ```text
//!  type  message        body
//!  0x30  HANDSHAKE      content_id[32] | listen_port u16 | noise (32 or 96 bytes)
//!  0x31  BITFIELD       ceil(pieces/8) bytes, piece 0 = MSB of byte 0, spare bits zero
//!  0x32  HAVE           piece u32
//!  0x33  INTERESTED     (empty)
//!  0x34  NOT_INTERESTED (empty)
//!  0x35  CHOKE          (empty)
//!  0x36  UNCHOKE        (empty)
//!  0x37  REQUEST        piece u32 | offset u32 | length u32      (1 <= length <= 16384)
//!  0x38  PIECE          piece u32 | offset u32 | data            (1 <= len(data) <= 16384)
//!  0x39  CANCEL         piece u32 | offset u32 | length u32
//!  0x3B  IDENTITY       noise (64 bytes)
//!  0x3A  PEX            count u8 (<= 50) | count × ( family u8 (4|6) | addr[4|16] | port u16 )
//!  0x14  ERROR          ferry error body (category u8 | code u16 | message str); then close
//!  0x20  PING           keep-alive, empty
//! ```
//!
//! A peer's id is its node id (PROTOCOL.md §13.1), proven by a Noise XX handshake carried in
//! HANDSHAKE and IDENTITY and bound to the session ([`Greeter`], spec/P2P.md §3.3).

use std::fmt;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes};
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::noise::bound::{BoundXx, MESSAGE_LENS};
use ferry_protocol::{ErrorBody, ErrorCode, FrameType, Header, Key, RequestId, Service};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::addr::{self, AddrError};
use crate::manifest::ContentId;

/// The peer-wire service byte.
pub const SERVICE: Service = Service(0x50);

/// Largest block a peer may request or send (spec/P2P.md §3.7).
pub const MAX_BLOCK: u32 = 16 * 1024;

/// Most addresses in one PEX message.
pub const MAX_PEX: usize = 50;

/// Cap on a peer frame's wire body: a 64 KiB bitfield plus crypto overhead fits, anything
/// longer is dropped by the frame decoder before it is buffered.
pub const MAX_BODY: u32 = 96 * 1024;

/// HKDF label for the swarm key.
pub const PSK_LABEL: &[u8] = b"ferry p2p psk";

/// The session key of a swarm: HKDF-SHA256(ikm = content id, no salt, info = "ferry p2p psk").
pub fn swarm_key(content_id: &ContentId) -> Key {
    let hk = Hkdf::<Sha256>::new(None, &content_id.0);
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
    if hk.expand(PSK_LABEL, &mut okm).is_err() {
        unreachable!("hkdf expand of 32 bytes");
    }
    Key::from_bytes(okm)
}

/// A peer's id: the 160-bit hash of its node id (PROTOCOL.md §13.1), proven in the peer
/// handshake (spec/P2P.md §3.3). Tracker announcements carry it unproven.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// A random id, for what is not a node (e.g. a ferry-server source).
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The node id this peer id is the hash of.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_bytes(self.0)
    }
}

impl From<NodeId> for PeerId {
    fn from(id: NodeId) -> Self {
        Self(*id.as_bytes())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..6]))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Peer-wire type bytes (the header's `type` field under service `0x50`).
pub mod kind {
    use ferry_protocol::FrameType;
    pub const HANDSHAKE: FrameType = FrameType(0x30);
    pub const BITFIELD: FrameType = FrameType(0x31);
    pub const HAVE: FrameType = FrameType(0x32);
    pub const INTERESTED: FrameType = FrameType(0x33);
    pub const NOT_INTERESTED: FrameType = FrameType(0x34);
    pub const CHOKE: FrameType = FrameType(0x35);
    pub const UNCHOKE: FrameType = FrameType(0x36);
    pub const REQUEST: FrameType = FrameType(0x37);
    pub const PIECE: FrameType = FrameType(0x38);
    pub const CANCEL: FrameType = FrameType(0x39);
    pub const PEX: FrameType = FrameType(0x3A);
    pub const IDENTITY: FrameType = FrameType(0x3B);
    pub const ERROR: FrameType = FrameType::ERROR;
    pub const PING: FrameType = FrameType::PING;
}

/// A block: `length` bytes at `offset` inside piece `piece`. Raw wire numbers; the swarm checks
/// them against the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    pub piece: u32,
    pub offset: u32,
    pub length: u32,
}

/// One peer-wire message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// The first message each way: the dialer's carries Noise message 1 (32 bytes), the
    /// listener's answer message 2 (96 bytes).
    Handshake {
        content_id: ContentId,
        listen_port: u16,
        noise: Bytes,
    },
    /// The dialer's Noise message 3 (64 bytes), after the listener's HANDSHAKE.
    Identity(Bytes),
    Bitfield(Bytes),
    Have(u32),
    Interested,
    NotInterested,
    Choke,
    Unchoke,
    Request(BlockRef),
    Piece {
        piece: u32,
        offset: u32,
        data: Bytes,
    },
    Cancel(BlockRef),
    Pex(Vec<SocketAddr>),
    KeepAlive,
    Error(ErrorBody),
}

/// A peer message could not be decoded. The connection is closed with [`WireError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated {kind:?}: needed {needed} bytes, got {got}")]
    Truncated {
        kind: FrameType,
        needed: usize,
        got: usize,
    },
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("unknown peer message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("service 0x{0:02x} is not the peer wire")]
    WrongService(u8),
    #[error("block length {0} not in 1..=16384")]
    BadBlockLength(u32),
    #[error("pex with {0} addresses exceeds 50")]
    TooManyAddresses(usize),
    #[error("pex address family {0} is neither 4 nor 6")]
    BadFamily(u8),
    #[error("malformed error body")]
    BadErrorBody,
    #[error(
        "a {0}-byte peer handshake without a node identity: the peer speaks the peer wire from \
         before identities, which this one no longer accepts (spec/P2P.md §3.3)"
    )]
    WithoutIdentity(usize),
    #[error("noise message of {got} bytes in a {kind:?}, not one of {allowed:?}")]
    NoiseLength {
        kind: FrameType,
        got: usize,
        allowed: &'static [usize],
    },
}

impl WireError {
    /// The wire code for this failure, as the table in spec/P2P.md §3.2 lists it: an unknown
    /// (type, service) pair is `UNKNOWN_REQUEST`, a count or length above its limit is
    /// `TOO_LARGE`, everything else (wrong layout, zero length, unknown family) is
    /// `MALFORMED_MESSAGE`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownType(_) | Self::WrongService(_) => ErrorCode::UNKNOWN_REQUEST,
            Self::WithoutIdentity(_) => ErrorCode::UNSUPPORTED_VERSION,
            Self::BadBlockLength(0) => ErrorCode::MALFORMED_MESSAGE,
            Self::BadBlockLength(_) | Self::TooManyAddresses(_) => ErrorCode::TOO_LARGE,
            Self::Truncated { .. }
            | Self::TrailingBytes(_)
            | Self::BadFamily(_)
            | Self::BadErrorBody
            | Self::NoiseLength { .. } => ErrorCode::MALFORMED_MESSAGE,
        }
    }
}

fn need(kind: FrameType, src: &Bytes, n: usize) -> Result<(), WireError> {
    if src.len() < n {
        return Err(WireError::Truncated {
            kind,
            needed: n,
            got: src.len(),
        });
    }
    Ok(())
}

/// The body length of a HANDSHAKE before identities; refused with its own message.
const OLD_HANDSHAKE_LEN: usize = 54;
/// Noise messages a HANDSHAKE may carry: message 1 (the dialer's) or 2 (the listener's).
const HANDSHAKE_NOISE_LENS: [usize; 2] = [MESSAGE_LENS[0], MESSAGE_LENS[1]];
/// The Noise message an IDENTITY carries: message 3.
const IDENTITY_NOISE_LENS: [usize; 1] = [MESSAGE_LENS[2]];

fn noise_len(kind: FrameType, body: &Bytes, allowed: &'static [usize]) -> Result<(), WireError> {
    if allowed.contains(&body.len()) {
        return Ok(());
    }
    Err(WireError::NoiseLength {
        kind,
        got: body.len(),
        allowed,
    })
}

fn block_len_ok(len: u32) -> Result<(), WireError> {
    if len == 0 || len > MAX_BLOCK {
        return Err(WireError::BadBlockLength(len));
    }
    Ok(())
}

impl PeerMessage {
    /// The header type byte.
    pub fn kind(&self) -> FrameType {
        match self {
            Self::Handshake { .. } => kind::HANDSHAKE,
            Self::Identity(_) => kind::IDENTITY,
            Self::Bitfield(_) => kind::BITFIELD,
            Self::Have(_) => kind::HAVE,
            Self::Interested => kind::INTERESTED,
            Self::NotInterested => kind::NOT_INTERESTED,
            Self::Choke => kind::CHOKE,
            Self::Unchoke => kind::UNCHOKE,
            Self::Request(_) => kind::REQUEST,
            Self::Piece { .. } => kind::PIECE,
            Self::Cancel(_) => kind::CANCEL,
            Self::Pex(_) => kind::PEX,
            Self::KeepAlive => kind::PING,
            Self::Error(_) => kind::ERROR,
        }
    }

    /// Decodes a body given its header's type and service. An `ERROR` is accepted on any
    /// service (PROTOCOL.md §6.3 puts connection errors on 0x00; we send them on 0x50).
    pub fn decode(kind: FrameType, service: Service, mut body: Bytes) -> Result<Self, WireError> {
        if service != SERVICE && kind != kind::ERROR {
            return Err(WireError::WrongService(service.0));
        }
        let fixed = |n: usize, body: &Bytes| -> Result<(), WireError> {
            need(kind, body, n)?;
            if body.len() > n {
                return Err(WireError::TrailingBytes(body.len() - n));
            }
            Ok(())
        };
        let msg = match kind {
            kind::HANDSHAKE => {
                // The layout before identities (content id, a 20-byte claimed id, port).
                if body.len() == OLD_HANDSHAKE_LEN {
                    return Err(WireError::WithoutIdentity(body.len()));
                }
                need(kind, &body, 34)?;
                let mut content_id = [0u8; 32];
                body.copy_to_slice(&mut content_id);
                let listen_port = body.get_u16();
                noise_len(kind, &body, &HANDSHAKE_NOISE_LENS)?;
                Self::Handshake {
                    content_id: ContentId(content_id),
                    listen_port,
                    noise: body,
                }
            }
            kind::IDENTITY => {
                noise_len(kind, &body, &IDENTITY_NOISE_LENS)?;
                Self::Identity(body)
            }
            kind::BITFIELD => Self::Bitfield(body),
            kind::HAVE => {
                fixed(4, &body)?;
                Self::Have(body.get_u32())
            }
            kind::INTERESTED | kind::NOT_INTERESTED | kind::CHOKE | kind::UNCHOKE | kind::PING => {
                fixed(0, &body)?;
                match kind {
                    kind::INTERESTED => Self::Interested,
                    kind::NOT_INTERESTED => Self::NotInterested,
                    kind::CHOKE => Self::Choke,
                    kind::UNCHOKE => Self::Unchoke,
                    _ => Self::KeepAlive,
                }
            }
            kind::REQUEST | kind::CANCEL => {
                fixed(12, &body)?;
                let block = BlockRef {
                    piece: body.get_u32(),
                    offset: body.get_u32(),
                    length: body.get_u32(),
                };
                block_len_ok(block.length)?;
                if kind == kind::REQUEST {
                    Self::Request(block)
                } else {
                    Self::Cancel(block)
                }
            }
            kind::PIECE => {
                need(kind, &body, 9)?;
                let piece = body.get_u32();
                let offset = body.get_u32();
                block_len_ok(u32::try_from(body.len()).unwrap_or(u32::MAX))?;
                Self::Piece {
                    piece,
                    offset,
                    data: body,
                }
            }
            kind::PEX => {
                need(kind, &body, 1)?;
                let count = body.get_u8() as usize;
                if count > MAX_PEX {
                    return Err(WireError::TooManyAddresses(count));
                }
                let mut addrs = Vec::with_capacity(count);
                for _ in 0..count {
                    addrs.push(addr::decode(&mut body).map_err(|e| match e {
                        AddrError::Truncated { needed, got } => {
                            WireError::Truncated { kind, needed, got }
                        }
                        AddrError::BadFamily(family) => WireError::BadFamily(family),
                    })?);
                }
                if !body.is_empty() {
                    return Err(WireError::TrailingBytes(body.len()));
                }
                Self::Pex(addrs)
            }
            kind::ERROR => {
                Self::Error(ErrorBody::decode(body).map_err(|_| WireError::BadErrorBody)?)
            }
            other => return Err(WireError::UnknownType(other.0)),
        };
        Ok(msg)
    }

    /// Appends the body bytes.
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::Handshake {
                content_id,
                listen_port,
                noise,
            } => {
                dst.put_slice(&content_id.0);
                dst.put_u16(*listen_port);
                dst.put_slice(noise);
            }
            Self::Identity(noise) => dst.put_slice(noise),
            Self::Bitfield(bits) => dst.put_slice(bits),
            Self::Have(piece) => dst.put_u32(*piece),
            Self::Interested
            | Self::NotInterested
            | Self::Choke
            | Self::Unchoke
            | Self::KeepAlive => {}
            Self::Request(b) | Self::Cancel(b) => {
                dst.put_u32(b.piece);
                dst.put_u32(b.offset);
                dst.put_u32(b.length);
            }
            Self::Piece {
                piece,
                offset,
                data,
            } => {
                dst.put_u32(*piece);
                dst.put_u32(*offset);
                dst.put_slice(data);
            }
            Self::Pex(addrs) => {
                // Callers keep at most MAX_PEX addresses; extra ones are not sent.
                let addrs = &addrs[..addrs.len().min(MAX_PEX)];
                dst.put_u8(addrs.len() as u8);
                for a in addrs {
                    addr::encode(a, dst);
                }
            }
            Self::Error(body) => body.encode(dst),
        }
    }

    /// Exact length of [`PeerMessage::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Handshake { noise, .. } => 34 + noise.len(),
            Self::Identity(noise) => noise.len(),
            Self::Bitfield(bits) => bits.len(),
            Self::Have(_) => 4,
            Self::Interested
            | Self::NotInterested
            | Self::Choke
            | Self::Unchoke
            | Self::KeepAlive => 0,
            Self::Request(_) | Self::Cancel(_) => 12,
            Self::Piece { data, .. } => 8 + data.len(),
            Self::Pex(addrs) => {
                1 + addrs
                    .iter()
                    .take(MAX_PEX)
                    .map(addr::encoded_len)
                    .sum::<usize>()
            }
            Self::Error(body) => body.encoded_len(),
        }
    }

    /// Appends this message as one frame on the connection id, sealed by `send`.
    pub fn write(
        &self,
        send: &mut ferry_protocol::SendHalf,
        dst: &mut bytes::BytesMut,
    ) -> Result<(), ferry_protocol::Error> {
        seal(send, self.kind(), &self.to_bytes(), dst)
    }

    /// The body as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }
}

/// A `PIECE` body built where the block is read: the caller reads the block straight into
/// [`PieceBody::start`]'s slice and [`PieceBody::write`] seals the frame from this buffer, the
/// frame [`PeerMessage::Piece`] would give, without that message's two copies and two
/// allocations of the block. One per connection: its buffer serves every block.
#[derive(Debug, Default)]
pub struct PieceBody {
    /// The piece index and offset (big-endian), then the block.
    buf: Vec<u8>,
}

impl PieceBody {
    /// Starts the body of block (`piece`, `offset`) of `len` bytes; returns the block's bytes
    /// to fill (what they held before is not cleared: the caller overwrites all of them).
    pub fn start(&mut self, piece: u32, offset: u32, len: usize) -> &mut [u8] {
        self.buf.resize(8 + len, 0);
        self.buf[..4].copy_from_slice(&piece.to_be_bytes());
        self.buf[4..8].copy_from_slice(&offset.to_be_bytes());
        &mut self.buf[8..]
    }

    /// Appends the `PIECE` frame on the connection id, sealed by `send`.
    pub fn write(
        &self,
        send: &mut ferry_protocol::SendHalf,
        dst: &mut bytes::BytesMut,
    ) -> Result<(), ferry_protocol::Error> {
        seal(send, kind::PIECE, &self.buf, dst)
    }
}

/// Appends one peer-wire frame of `kind` with `body` on the connection id, sealed by `send`.
fn seal(
    send: &mut ferry_protocol::SendHalf,
    kind: FrameType,
    body: &[u8],
    dst: &mut bytes::BytesMut,
) -> Result<(), ferry_protocol::Error> {
    send.write_frame(
        kind,
        SERVICE,
        ferry_protocol::RequestId::CONNECTION,
        body,
        dst,
    )
}

/// What one received frame asks of a peer session (spec/P2P.md §3.1, §3.2, §3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A peer message for the swarm.
    Message(PeerMessage),
    /// A base-protocol `PING` on the echo service: answer `PONG` on `ECHO` with this id and
    /// payload (PROTOCOL.md §3.8).
    Pong(RequestId, Bytes),
    /// A `PONG` on the echo service: nothing to do.
    Ignore,
    /// The peer broke the wire rules: send this `ERROR` (if any; a malformed `ERROR` from the
    /// peer is never answered), then close.
    Close(Option<ErrorBody>),
}

/// Classifies a frame that the session decoded: the one place that decides which frames are
/// answered, ignored, passed on or end the connection, and with which code.
pub fn inbound(header: &Header, body: Bytes) -> Inbound {
    if header.service == Service::ECHO {
        if header.kind == FrameType::PING {
            return Inbound::Pong(header.id, body);
        }
        if header.kind == FrameType::PONG {
            return Inbound::Ignore;
        }
    }
    match PeerMessage::decode(header.kind, header.service, body) {
        Ok(msg) => Inbound::Message(msg),
        Err(WireError::BadErrorBody) => Inbound::Close(None),
        Err(e) => Inbound::Close(Some(ErrorBody::new(e.code(), e.to_string()))),
    }
}

/// The `ERROR` sent before closing on a framing or record failure (an over-long header, bad
/// magic or version, a record that fails to open): PROTOCOL.md §9 rows 1–9.
pub fn frame_error(e: &ferry_protocol::Error) -> ErrorBody {
    ErrorBody::new(e.code(), e.to_string())
}

/// The Noise prologue of the peer handshake (spec/P2P.md §3.3): a label, the content id and the
/// session's channel binding (PROTOCOL.md §5.7), so that the proof is valid only inside this
/// one session: relayed into another session, it fails.
pub fn identity_prologue(content_id: &ContentId, binding: &[u8; 32]) -> Vec<u8> {
    let mut prologue = Vec::with_capacity(IDENTITY_LABEL.len() + 64);
    prologue.extend_from_slice(IDENTITY_LABEL);
    prologue.extend_from_slice(&content_id.0);
    prologue.extend_from_slice(binding);
    prologue
}

/// The label that opens [`identity_prologue`].
pub const IDENTITY_LABEL: &[u8] = b"ferry p2p identity v1";

/// What the peer handshake proved about the other end (spec/P2P.md §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Greeted {
    /// The peer's node id, proven by its static key.
    pub peer_id: PeerId,
    pub listen_port: u16,
    /// Noise's handshake hash: the same at both ends and unique to this connection; of two
    /// connections between the same two nodes, both keep the one whose hash is smaller.
    pub tiebreak: [u8; 32],
}

/// Why the peer handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GreetError {
    #[error("the session has no channel binding to prove identities in")]
    NoBinding,
    #[error("the peer is in a different swarm")]
    WrongContent,
    #[error("expected {expected} from the peer, got type 0x{got:02x}")]
    Unexpected { expected: &'static str, got: u8 },
    #[error("the peer did not prove a node identity bound to this session")]
    Identity,
    #[error("peer handshake: {0}")]
    Wire(#[from] WireError),
    #[error("the peer refused the handshake: {0}")]
    Refused(ErrorBody),
}

impl GreetError {
    /// The `ERROR` to send before closing; `None` answers nothing (the peer's own `ERROR`).
    pub fn error_body(&self) -> Option<ErrorBody> {
        match self {
            Self::Refused(_) => None,
            Self::Wire(e) => Some(ErrorBody::new(e.code(), e.to_string())),
            Self::Unexpected { .. } => Some(ErrorBody::new(
                ErrorCode::UNEXPECTED_MESSAGE,
                self.to_string(),
            )),
            Self::WrongContent | Self::NoBinding | Self::Identity => {
                Some(ErrorBody::from_code(ErrorCode::AUTHENTICATION_FAILED))
            }
        }
    }
}

#[derive(Debug)]
enum GreetState {
    AwaitHandshake,
    /// The listener answered; the dialer's message 3 proves who it is.
    AwaitIdentity {
        listen_port: u16,
    },
    Done,
}

/// The peer handshake of spec/P2P.md §3.3, sans-IO: the dialer's HANDSHAKE carries Noise XX
/// message 1, the listener's answer message 2 (which proves the listener's node id), the
/// dialer's IDENTITY message 3 (which proves the dialer's), all under a prologue bound to the
/// session ([`identity_prologue`]).
#[derive(Debug)]
pub struct Greeter {
    noise: BoundXx,
    content_id: ContentId,
    listen_port: u16,
    state: GreetState,
}

impl Greeter {
    /// The dialing side, and the HANDSHAKE it sends first. `binding` is the session's
    /// [`channel_binding`](ferry_protocol::Session::channel_binding).
    pub fn dial(
        identity: &Identity,
        content_id: ContentId,
        binding: Option<&[u8; 32]>,
        listen_port: u16,
    ) -> Result<(Self, PeerMessage), GreetError> {
        let binding = binding.ok_or(GreetError::NoBinding)?;
        let prologue = identity_prologue(&content_id, binding);
        let mut noise =
            BoundXx::initiator(identity, &prologue).map_err(|_| GreetError::Identity)?;
        let first = noise.write().map_err(|_| GreetError::Identity)?;
        let hello = PeerMessage::Handshake {
            content_id,
            listen_port,
            noise: first.into(),
        };
        Ok((
            Self {
                noise,
                content_id,
                listen_port,
                state: GreetState::AwaitHandshake,
            },
            hello,
        ))
    }

    /// The accepting side: it speaks once the dialer's HANDSHAKE has arrived.
    pub fn accept(
        identity: &Identity,
        content_id: ContentId,
        binding: Option<&[u8; 32]>,
        listen_port: u16,
    ) -> Result<Self, GreetError> {
        let binding = binding.ok_or(GreetError::NoBinding)?;
        let prologue = identity_prologue(&content_id, binding);
        Ok(Self {
            noise: BoundXx::responder(identity, &prologue).map_err(|_| GreetError::Identity)?,
            content_id,
            listen_port,
            state: GreetState::AwaitHandshake,
        })
    }

    /// Takes the peer's next message. Returns what to send (if anything) and, once the peer's
    /// identity is proven, what was proven; after that, the caller sends its BITFIELD.
    pub fn handle(
        &mut self,
        msg: PeerMessage,
    ) -> Result<(Option<PeerMessage>, Option<Greeted>), GreetError> {
        let dialer = self.noise.is_initiator();
        match (std::mem::replace(&mut self.state, GreetState::Done), msg) {
            (_, PeerMessage::Error(body)) => Err(GreetError::Refused(body)),
            (
                GreetState::AwaitHandshake,
                PeerMessage::Handshake {
                    content_id,
                    listen_port,
                    noise,
                },
            ) => {
                if content_id != self.content_id {
                    return Err(GreetError::WrongContent);
                }
                self.noise.read(&noise).map_err(|_| GreetError::Identity)?;
                if dialer {
                    // Message 2 proved the listener; message 3 proves us.
                    let third = self.noise.write().map_err(|_| GreetError::Identity)?;
                    let greeted = self.greeted(listen_port)?;
                    Ok((Some(PeerMessage::Identity(third.into())), Some(greeted)))
                } else {
                    let second = self.noise.write().map_err(|_| GreetError::Identity)?;
                    self.state = GreetState::AwaitIdentity { listen_port };
                    let answer = PeerMessage::Handshake {
                        content_id: self.content_id,
                        listen_port: self.listen_port,
                        noise: second.into(),
                    };
                    Ok((Some(answer), None))
                }
            }
            (GreetState::AwaitIdentity { listen_port }, PeerMessage::Identity(noise)) => {
                self.noise.read(&noise).map_err(|_| GreetError::Identity)?;
                Ok((None, Some(self.greeted(listen_port)?)))
            }
            (state, other) => Err(GreetError::Unexpected {
                expected: match state {
                    GreetState::AwaitIdentity { .. } => "IDENTITY",
                    _ => "HANDSHAKE",
                },
                got: other.kind().0,
            }),
        }
    }

    fn greeted(&self, listen_port: u16) -> Result<Greeted, GreetError> {
        let (Some(id), Some(hash)) = (self.noise.remote_id(), self.noise.handshake_hash()) else {
            return Err(GreetError::Identity);
        };
        Ok(Greeted {
            peer_id: id.into(),
            listen_port,
            tiebreak: *hash,
        })
    }
}

/// Fuzz helper for the session's classification: `data` is kind, service, a 4-byte id and the
/// body. Every outcome must be one the spec lists, with a code from §3.2.
#[cfg(any(fuzzing, test))]
pub fn fuzz_inbound(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let id = RequestId(u32::from_be_bytes([data[2], data[3], data[4], data[5]]));
    let body = Bytes::copy_from_slice(&data[6..]);
    let header = Header::new(FrameType(data[0]), Service(data[1]), id, body.len() as u32);
    match inbound(&header, body.clone()) {
        Inbound::Message(msg) => {
            assert!(header.service == SERVICE || header.kind == kind::ERROR);
            assert_eq!(msg.kind(), header.kind);
        }
        Inbound::Pong(pong_id, payload) => {
            assert_eq!(
                (header.kind, header.service),
                (FrameType::PING, Service::ECHO)
            );
            assert_eq!((pong_id, payload), (id, body));
        }
        Inbound::Ignore => {
            assert_eq!(
                (header.kind, header.service),
                (FrameType::PONG, Service::ECHO)
            );
        }
        Inbound::Close(None) => assert_eq!(header.kind, kind::ERROR),
        Inbound::Close(Some(error)) => {
            assert!(
                [
                    ErrorCode::MALFORMED_MESSAGE,
                    ErrorCode::TOO_LARGE,
                    ErrorCode::UNKNOWN_REQUEST,
                    ErrorCode::UNSUPPORTED_VERSION
                ]
                .contains(&error.code),
                "{error}"
            );
            let mut out = Vec::new();
            error.encode(&mut out);
            assert_eq!(out.len(), error.encoded_len());
        }
    }
}

/// Fuzz helper for the peer handshake (spec/P2P.md §3.3): the first byte picks the side (even:
/// accepting, odd: dialling), the rest is a run of `type u8 | len u8 | body` messages fed to a
/// [`Greeter`] until it fails or finishes. Nothing may panic, and nothing unproven may pass:
/// random bytes cannot complete Noise, so a finished greeting is a failure of the fuzz run.
#[cfg(any(fuzzing, test))]
pub fn fuzz_greeting(data: &[u8]) {
    let Some((&side, mut rest)) = data.split_first() else {
        return;
    };
    let identity = Identity::from_secret([0x42; 32]);
    let (content_id, binding) = (ContentId([1; 32]), [2; 32]);
    let mut greeter = if side % 2 == 1 {
        match Greeter::dial(&identity, content_id, Some(&binding), 1) {
            Ok((greeter, _hello)) => greeter,
            Err(_) => return,
        }
    } else {
        match Greeter::accept(&identity, content_id, Some(&binding), 1) {
            Ok(greeter) => greeter,
            Err(_) => return,
        }
    };
    while let [kind, len, tail @ ..] = rest {
        let (body, next) = tail.split_at((*len as usize).min(tail.len()));
        rest = next;
        let Ok(msg) = PeerMessage::decode(FrameType(*kind), SERVICE, Bytes::copy_from_slice(body))
        else {
            return;
        };
        match greeter.handle(msg) {
            Ok((_, Some(greeted))) => panic!("an unproven peer passed: {greeted:?}"),
            Ok((_, None)) => {}
            Err(e) => {
                let _ = e.error_body();
                return;
            }
        }
    }
}

/// Fuzz helper: decode a body under every peer type byte; whatever decodes must re-encode to the
/// same bytes.
#[cfg(any(fuzzing, test))]
pub fn fuzz_peer_message(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let body = Bytes::copy_from_slice(body);
    if let Ok(msg) = PeerMessage::decode(FrameType(kind), SERVICE, body.clone()) {
        let encoded = msg.to_bytes();
        assert_eq!(encoded.len(), msg.encoded_len());
        if !matches!(msg, PeerMessage::Error(_)) {
            assert_eq!(encoded, body.as_ref());
        }
        assert_eq!(
            PeerMessage::decode(msg.kind(), SERVICE, encoded.into()).as_ref(),
            Ok(&msg)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ferry_protocol::Session;
    use proptest::prelude::*;

    pub fn examples() -> Vec<PeerMessage> {
        vec![
            PeerMessage::Handshake {
                content_id: ContentId([7; 32]),
                listen_port: 6881,
                noise: Bytes::from(vec![9; 32]),
            },
            PeerMessage::Handshake {
                content_id: ContentId([7; 32]),
                listen_port: 0,
                noise: Bytes::from(vec![8; 96]),
            },
            PeerMessage::Identity(Bytes::from(vec![6; 64])),
            PeerMessage::Bitfield(Bytes::from_static(&[0xff, 0x80])),
            PeerMessage::Have(12),
            PeerMessage::Interested,
            PeerMessage::NotInterested,
            PeerMessage::Choke,
            PeerMessage::Unchoke,
            PeerMessage::Request(BlockRef {
                piece: 3,
                offset: 16_384,
                length: 16_384,
            }),
            PeerMessage::Piece {
                piece: 3,
                offset: 16_384,
                data: Bytes::from(vec![0xab; 16_384]),
            },
            PeerMessage::Cancel(BlockRef {
                piece: 3,
                offset: 0,
                length: 1,
            }),
            PeerMessage::Pex(vec![
                "10.0.0.1:6881".parse().unwrap(),
                "[2001:db8::1]:7000".parse().unwrap(),
            ]),
            PeerMessage::KeepAlive,
            PeerMessage::Error(ErrorBody::new(ErrorCode::INVALID_RANGE, "piece 99 of 10")),
        ]
    }

    #[test]
    fn every_message_round_trips_through_an_encrypted_session() {
        let key = swarm_key(&ContentId([1; 32]));
        // Fixed direction keys stand in for a handshake; the real one is exercised by the
        // swarm integration tests.
        let keys = ferry_protocol::crypto::derive_keys(&key, &[2; 32], &[3; 32]);
        let mut a = Session::encrypted(
            1,
            MAX_BODY,
            ferry_protocol::Role::Client,
            &keys.client_to_server,
            &keys.server_to_client,
        );
        let mut b = Session::encrypted(
            1,
            MAX_BODY,
            ferry_protocol::Role::Server,
            &keys.client_to_server,
            &keys.server_to_client,
        );
        let mut wire = BytesMut::new();
        for msg in examples() {
            assert_eq!(msg.to_bytes().len(), msg.encoded_len());
            a.write_frame(
                msg.kind(),
                SERVICE,
                RequestId(0),
                &msg.to_bytes(),
                &mut wire,
            )
            .unwrap();
        }
        for msg in examples() {
            let frame = b.read_frame(&mut wire).unwrap().unwrap();
            let got = PeerMessage::decode(frame.header.kind, frame.header.service, frame.body);
            assert_eq!(got, Ok(msg));
        }
    }

    /// The uploader builds PIECE bodies in place; the frames must be byte for byte those of
    /// `PeerMessage::Piece`, a reused buffer included (a longer block before a shorter one).
    #[test]
    fn a_piece_body_seals_to_the_frame_of_a_piece_message() {
        // Two GCM sessions keyed alike seal alike (CBC draws a random IV per record).
        let gcm = || {
            Session::dangerous_pair_with_suite(ferry_protocol::crypto::RecordSuite::Aes256Gcm)
                .0
                .into_split()
                .0
        };
        let (mut by_message, mut in_place) = (gcm(), gcm());
        let mut body = PieceBody::default();
        for (piece, offset, len, fill) in [(3, 16_384, 16_384, 0xab), (9, 0, 100, 0x01)] {
            let msg = PeerMessage::Piece {
                piece,
                offset,
                data: Bytes::from(vec![fill; len]),
            };
            let (mut want, mut got) = (BytesMut::new(), BytesMut::new());
            msg.write(&mut by_message, &mut want).unwrap();
            body.start(piece, offset, len).fill(fill);
            body.write(&mut in_place, &mut got).unwrap();
            assert_eq!(got, want, "piece {piece}");
        }
    }

    /// spec/P2P.md §3.3: both ends learn the other's node id and the same tiebreak; a proof
    /// made under another session's binding, or for another swarm, fails.
    #[test]
    fn the_greeting_proves_both_node_ids_in_one_session_only() {
        let cid = ContentId([5; 32]);
        let (a, b) = (
            Identity::from_secret([0xa0; 32]),
            Identity::from_secret([0xb0; 32]),
        );
        let run = |dial_binding: [u8; 32], accept_binding: [u8; 32], accept_cid: ContentId| {
            let (mut dialer, hello) = Greeter::dial(&a, cid, Some(&dial_binding), 7000).unwrap();
            let mut acceptor = Greeter::accept(&b, accept_cid, Some(&accept_binding), 0).unwrap();
            let (answer, none) = acceptor.handle(hello)?;
            assert_eq!(none, None);
            let (third, by_dialer) = dialer.handle(answer.unwrap())?;
            let (nothing, by_acceptor) = acceptor.handle(third.unwrap())?;
            assert_eq!(nothing, None);
            Ok::<_, GreetError>((by_dialer.unwrap(), by_acceptor.unwrap()))
        };
        let (by_dialer, by_acceptor) = run([1; 32], [1; 32], cid).unwrap();
        assert_eq!(by_dialer.peer_id, PeerId::from(b.id()));
        assert_eq!(by_acceptor.peer_id, PeerId::from(a.id()));
        assert_eq!((by_dialer.listen_port, by_acceptor.listen_port), (0, 7000));
        assert_eq!(by_dialer.tiebreak, by_acceptor.tiebreak);
        assert_eq!(
            run([1; 32], [2; 32], cid).unwrap_err(),
            GreetError::Identity
        );
        assert_eq!(
            run([1; 32], [1; 32], ContentId([6; 32])).unwrap_err(),
            GreetError::WrongContent
        );
        assert_eq!(
            Greeter::accept(&b, cid, None, 0).unwrap_err(),
            GreetError::NoBinding
        );
        // Out of order: a BITFIELD where the HANDSHAKE belongs.
        let mut acceptor = Greeter::accept(&b, cid, Some(&[1; 32]), 0).unwrap();
        let err = acceptor
            .handle(PeerMessage::Bitfield(Bytes::new()))
            .unwrap_err();
        assert_eq!(
            err.error_body().unwrap().code,
            ErrorCode::UNEXPECTED_MESSAGE
        );
    }

    #[test]
    fn the_greeting_survives_arbitrary_messages() {
        let mut rng = 0x1234_5678_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        };
        for _ in 0..300 {
            let mut data: Vec<u8> = (0..200).map(|_| next()).collect();
            // Mostly well-formed HANDSHAKE and IDENTITY frames, so the Noise reads run.
            data[1] = if data[0] % 3 == 0 { 0x3B } else { 0x30 };
            data[2] = if data[1] == 0x3B { 64 } else { 34 + 32 };
            fuzz_greeting(&data);
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let d = |k: FrameType, b: &[u8]| PeerMessage::decode(k, SERVICE, Bytes::copy_from_slice(b));
        assert!(matches!(
            d(kind::HAVE, &[0, 0, 1]),
            Err(WireError::Truncated { .. })
        ));
        assert_eq!(
            d(kind::HAVE, &[0, 0, 0, 1, 0]),
            Err(WireError::TrailingBytes(1))
        );
        assert_eq!(d(kind::CHOKE, &[0]), Err(WireError::TrailingBytes(1)));
        assert_eq!(
            d(kind::REQUEST, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0x01]),
            Err(WireError::BadBlockLength(16_385))
        );
        assert_eq!(
            d(kind::REQUEST, &[0; 12]),
            Err(WireError::BadBlockLength(0))
        );
        let mut big = vec![0u8; 8];
        big.extend(vec![1u8; 16_385]);
        assert_eq!(d(kind::PIECE, &big), Err(WireError::BadBlockLength(16_385)));
        assert_eq!(
            d(kind::PIECE, &[0; 8]),
            Err(WireError::Truncated {
                kind: kind::PIECE,
                needed: 9,
                got: 8
            })
        );
        assert_eq!(d(kind::PEX, &[51]), Err(WireError::TooManyAddresses(51)));
        // spec/P2P.md §3.3: the layout from before identities is named as such; a noise
        // message of another length is malformed.
        let old = d(kind::HANDSHAKE, &[0; 54]);
        assert_eq!(old, Err(WireError::WithoutIdentity(54)));
        assert_eq!(old.unwrap_err().code(), ErrorCode::UNSUPPORTED_VERSION);
        for len in [33, 34 + 31, 34 + 33, 34 + 64, 34 + 97] {
            let got = d(kind::HANDSHAKE, &vec![0; len]);
            assert!(
                got.as_ref()
                    .is_err_and(|e| e.code() == ErrorCode::MALFORMED_MESSAGE),
                "{len}: {got:?}"
            );
        }
        for len in [0, 63, 65, 96] {
            let got = d(kind::IDENTITY, &vec![0; len]);
            assert!(
                matches!(got, Err(WireError::NoiseLength { got, .. }) if got == len),
                "{len}"
            );
        }
        assert_eq!(d(kind::PEX, &[1, 5]), Err(WireError::BadFamily(5)));
        assert_eq!(d(FrameType(0x3F), &[]), Err(WireError::UnknownType(0x3F)));
        assert_eq!(
            PeerMessage::decode(kind::HAVE, Service::FETCH, Bytes::new()),
            Err(WireError::WrongService(0x03))
        );
        assert_eq!(
            d(FrameType(0x3F), &[]).unwrap_err().code(),
            ErrorCode::UNKNOWN_REQUEST
        );
    }

    #[test]
    fn pings_errors_and_other_services_are_classified() {
        let h = |k: FrameType, s: Service, id: u32| Header::new(k, s, RequestId(id), 0);
        let hello = Bytes::from_static(b"hello");
        assert_eq!(
            inbound(&h(FrameType::PING, Service::ECHO, 7), hello.clone()),
            Inbound::Pong(RequestId(7), hello)
        );
        assert_eq!(
            inbound(&h(FrameType::PONG, Service::ECHO, 7), Bytes::new()),
            Inbound::Ignore
        );
        assert_eq!(
            inbound(&h(FrameType::PING, SERVICE, 0), Bytes::new()),
            Inbound::Message(PeerMessage::KeepAlive)
        );
        assert_eq!(
            inbound(
                &h(kind::ERROR, Service::HANDSHAKE, 0),
                Bytes::from_static(&[1])
            ),
            Inbound::Close(None)
        );
        let Inbound::Close(Some(error)) =
            inbound(&h(FrameType::REQUEST, Service::LIST, 1), Bytes::new())
        else {
            panic!("a list request on a peer session must close it");
        };
        assert_eq!(error.code, ErrorCode::UNKNOWN_REQUEST);
    }

    /// spec/P2P.md §3.2: the code each violation closes the connection with.
    #[test]
    fn each_violation_has_the_code_the_spec_names() {
        let code = |k: FrameType, b: &[u8]| {
            PeerMessage::decode(k, SERVICE, Bytes::copy_from_slice(b))
                .unwrap_err()
                .code()
        };
        let mut request = vec![0u8; 8];
        request.extend(16_385u32.to_be_bytes());
        let mut pex51 = vec![51u8];
        pex51.extend([4, 10, 0, 0, 1, 0x1a, 0xe1].repeat(51));
        for (what, k, body, want) in [
            (
                "have, 5 bytes",
                kind::HAVE,
                vec![0u8; 5],
                ErrorCode::MALFORMED_MESSAGE,
            ),
            (
                "have, 3 bytes",
                kind::HAVE,
                vec![0u8; 3],
                ErrorCode::MALFORMED_MESSAGE,
            ),
            (
                "choke with a body",
                kind::CHOKE,
                vec![0],
                ErrorCode::MALFORMED_MESSAGE,
            ),
            (
                "request of length 0",
                kind::REQUEST,
                vec![0u8; 12],
                ErrorCode::MALFORMED_MESSAGE,
            ),
            (
                "request of 16385",
                kind::REQUEST,
                request.clone(),
                ErrorCode::TOO_LARGE,
            ),
            (
                "cancel of 16385",
                kind::CANCEL,
                request,
                ErrorCode::TOO_LARGE,
            ),
            (
                "empty piece",
                kind::PIECE,
                vec![0u8; 8],
                ErrorCode::MALFORMED_MESSAGE,
            ),
            (
                "piece of 16385",
                kind::PIECE,
                vec![1u8; 8 + 16_385],
                ErrorCode::TOO_LARGE,
            ),
            (
                "pex family 5",
                kind::PEX,
                vec![1, 5],
                ErrorCode::MALFORMED_MESSAGE,
            ),
            ("pex of 51", kind::PEX, pex51, ErrorCode::TOO_LARGE),
            (
                "pex count past the end",
                kind::PEX,
                vec![2, 4, 1, 2, 3, 4, 0, 1],
                ErrorCode::MALFORMED_MESSAGE,
            ),
            (
                "unknown type",
                FrameType(0x3F),
                vec![],
                ErrorCode::UNKNOWN_REQUEST,
            ),
            (
                "handshake type 0x01",
                FrameType(0x01),
                vec![],
                ErrorCode::UNKNOWN_REQUEST,
            ),
            (
                "bad error body",
                kind::ERROR,
                vec![1],
                ErrorCode::MALFORMED_MESSAGE,
            ),
        ] {
            assert_eq!(code(k, &body), want, "{what}");
        }
        assert_eq!(
            PeerMessage::decode(kind::HAVE, Service::ECHO, Bytes::new())
                .unwrap_err()
                .code(),
            ErrorCode::UNKNOWN_REQUEST
        );
        // A connection error may come on the handshake service, as PROTOCOL.md §6.3 sends it.
        let body = ErrorBody::new(ErrorCode::BANNED, "banned");
        let mut bytes = Vec::new();
        body.encode(&mut bytes);
        assert_eq!(
            PeerMessage::decode(kind::ERROR, Service::HANDSHAKE, bytes.into()),
            Ok(PeerMessage::Error(body))
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for msg in examples() {
            let bytes = msg.to_bytes();
            // Bitfield bodies are any length at this layer; the swarm checks them.
            if matches!(msg, PeerMessage::Bitfield(_)) {
                continue;
            }
            for cut in 0..bytes.len() {
                let r =
                    PeerMessage::decode(msg.kind(), SERVICE, Bytes::copy_from_slice(&bytes[..cut]));
                // A shorter piece payload is still a valid piece message.
                if matches!(msg, PeerMessage::Piece { .. }) && cut > 8 {
                    continue;
                }
                // A listener's HANDSHAKE cut after 32 noise bytes has a dialer's layout.
                if matches!(msg, PeerMessage::Handshake { .. }) && cut == 34 + 32 {
                    continue;
                }
                assert!(r.is_err(), "{msg:?} cut at {cut} decoded as {r:?}");
            }
        }
    }

    #[test]
    fn swarm_key_depends_on_the_content_id() {
        let a = swarm_key(&ContentId([1; 32]));
        assert_eq!(a.as_bytes(), swarm_key(&ContentId([1; 32])).as_bytes());
        assert_ne!(a.as_bytes(), swarm_key(&ContentId([2; 32])).as_bytes());
    }

    proptest! {
        #[test]
        fn random_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), kind in 0x30u8..0x3c) {
            let mut input = vec![kind];
            input.extend(data);
            fuzz_peer_message(&input);
        }

        #[test]
        fn random_frames_are_classified_per_spec(
            kind in prop::sample::select(vec![0x14u8, 0x20, 0x21, 0x10, 0x30, 0x32, 0x37, 0x38, 0x3a, 0x3f]),
            service in prop::sample::select(vec![0x00u8, 0x01, 0x04, 0x50, 0x51]),
            id in any::<u32>(),
            body in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut input = vec![kind, service];
            input.extend(id.to_be_bytes());
            input.extend(body);
            fuzz_inbound(&input);
        }

        #[test]
        fn bit_flips_never_panic(which in 0usize..13, at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let msg = &examples()[which];
            let mut input = vec![msg.kind().0];
            input.extend(msg.to_bytes());
            let i = at.index(input.len());
            input[i] ^= 1 << bit;
            fuzz_peer_message(&input);
        }
    }
}
