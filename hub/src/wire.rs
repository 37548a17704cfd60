//! The hub's messages on the Ferry codec (spec/HUB.md §3): services 0x60–0x65, their request
//! and response bodies, presence events, and the hub's error codes (category 0x07).
//!
//! Bodies follow PROTOCOL.md §3.1: big-endian integers, strings as a u16 length then UTF-8,
//! nothing padded, and a body must be consumed exactly. Every decoder returns `Err` on short,
//! long or invalid input and never panics.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_protocol::identity::{NodeId, ID_HASH_LEN};
use ferry_protocol::{ErrorCode, Service};

/// Names, registration and release (HUB.md §3.2).
pub const REGISTER: Service = Service(0x60);
/// A name's node id and hints (HUB.md §3.3).
pub const RESOLVE: Service = Service(0x61);
/// A node's control request: its addresses in, its reflected address and events out (§3.4).
pub const PRESENCE: Service = Service(0x62);
/// A relayed stream: the client's side and the node's side (§3.5).
pub const RELAY: Service = Service(0x63);
/// Hole-punch coordination (§3.6).
pub const PUNCH: Service = Service(0x64);
/// A token that binds this connection's UDP reflect datagrams to it (§3.7).
pub const UDP_TOKEN: Service = Service(0x65);

/// Most addresses one message carries (a node reports at most this many).
pub const MAX_ADDRS: usize = 16;
/// Bytes of a relay token.
pub const TOKEN_LEN: usize = 16;
/// Longest invite code, in bytes.
pub const MAX_INVITE: usize = 64;

/// The hub's error codes (HUB.md §5), category 0x07.
pub mod codes {
    use ferry_protocol::ErrorCode;
    /// The name is bound to another node id.
    pub const NAME_TAKEN: ErrorCode = ErrorCode(0x0701);
    /// The name breaks the syntax of HUB.md §2.
    pub const INVALID_NAME: ErrorCode = ErrorCode(0x0702);
    /// This hub registers only with an invite code, and none valid was given.
    pub const INVITE_REQUIRED: ErrorCode = ErrorCode(0x0703);
    /// No node holds the name.
    pub const UNKNOWN_NAME: ErrorCode = ErrorCode(0x0704);
    /// The name is registered but its node has no control connection now.
    pub const NOT_ONLINE: ErrorCode = ErrorCode(0x0705);
    /// Too many requests from this identity or address; retry later.
    pub const THROTTLED: ErrorCode = ErrorCode(0x0706);
    /// A relay limit was reached (concurrent relays, or the identity's byte budget).
    pub const RELAY_LIMIT: ErrorCode = ErrorCode(0x0707);
    /// The relay token is unknown, expired, or was issued to another node.
    pub const BAD_TOKEN: ErrorCode = ErrorCode(0x0708);
    /// The caller's key does not hold the name (release, move, presence).
    pub const NOT_HOLDER: ErrorCode = ErrorCode(0x0709);
    /// A newer control connection for the same name replaced this one.
    pub const SUPERSEDED: ErrorCode = ErrorCode(0x070A);
    /// The other side of a relay did not arrive in time.
    pub const RELAY_TIMEOUT: ErrorCode = ErrorCode(0x070B);

    /// (code, name) of every hub code, for messages and the spec check.
    pub const ALL: &[(ErrorCode, &str)] = &[
        (NAME_TAKEN, "NAME_TAKEN"),
        (INVALID_NAME, "INVALID_NAME"),
        (INVITE_REQUIRED, "INVITE_REQUIRED"),
        (UNKNOWN_NAME, "UNKNOWN_NAME"),
        (NOT_ONLINE, "NOT_ONLINE"),
        (THROTTLED, "THROTTLED"),
        (RELAY_LIMIT, "RELAY_LIMIT"),
        (BAD_TOKEN, "BAD_TOKEN"),
        (NOT_HOLDER, "NOT_HOLDER"),
        (SUPERSEDED, "SUPERSEDED"),
        (RELAY_TIMEOUT, "RELAY_TIMEOUT"),
    ];

    /// The code's name, when it is a hub code.
    pub fn name(code: ErrorCode) -> Option<&'static str> {
        ALL.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
    }
}

/// Why a hub body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("hub message body ends early: {need} more bytes needed")]
    Short { need: usize },
    #[error("hub message body has {0} trailing bytes")]
    Trailing(usize),
    #[error("invalid utf-8 in a hub message string")]
    Utf8,
    #[error("undefined value {value} for {field}")]
    Undefined { field: &'static str, value: u8 },
    #[error("{count} addresses in one message: at most 16")]
    TooManyAddrs { count: usize },
    #[error("{field} of {len} bytes exceeds {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

type Result<T> = std::result::Result<T, WireError>;

fn need(src: &Bytes, n: usize) -> Result<()> {
    if src.remaining() < n {
        return Err(WireError::Short {
            need: n - src.remaining(),
        });
    }
    Ok(())
}

fn get_u8(src: &mut Bytes) -> Result<u8> {
    need(src, 1)?;
    Ok(src.get_u8())
}

fn get_u16(src: &mut Bytes) -> Result<u16> {
    need(src, 2)?;
    Ok(src.get_u16())
}

fn get_u32(src: &mut Bytes) -> Result<u32> {
    need(src, 4)?;
    Ok(src.get_u32())
}

fn get_str(src: &mut Bytes, field: &'static str, max: usize) -> Result<String> {
    let len = usize::from(get_u16(src)?);
    if len > max {
        return Err(WireError::TooLong { field, len, max });
    }
    need(src, len)?;
    let bytes = src.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Utf8)
}

fn put_str(dst: &mut impl BufMut, s: &str) {
    // Every string we send is bounded far below u16::MAX (names, invites).
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

fn get_id(src: &mut Bytes) -> Result<NodeId> {
    need(src, ID_HASH_LEN)?;
    let mut id = [0u8; ID_HASH_LEN];
    src.copy_to_slice(&mut id);
    Ok(NodeId::from_bytes(id))
}

fn get_token(src: &mut Bytes) -> Result<[u8; TOKEN_LEN]> {
    need(src, TOKEN_LEN)?;
    let mut token = [0u8; TOKEN_LEN];
    src.copy_to_slice(&mut token);
    Ok(token)
}

fn end(src: &Bytes) -> Result<()> {
    match src.remaining() {
        0 => Ok(()),
        n => Err(WireError::Trailing(n)),
    }
}

/// `family: u8 (4 | 6) | ip: 4 or 16 bytes | port: u16`.
pub fn put_addr(dst: &mut impl BufMut, addr: &SocketAddr) {
    ferry_protocol::addr::encode(addr, dst);
}

pub fn get_addr(src: &mut Bytes) -> Result<SocketAddr> {
    use ferry_protocol::addr::{decode, AddrError};
    decode(src).map_err(|e| match e {
        AddrError::Truncated { needed, got } => WireError::Short { need: needed - got },
        AddrError::BadFamily(value) => WireError::Undefined {
            field: "address family",
            value,
        },
    })
}

/// `count: u8 | addr*`.
fn put_addrs(dst: &mut impl BufMut, addrs: &[SocketAddr]) {
    let addrs = &addrs[..addrs.len().min(MAX_ADDRS)];
    dst.put_u8(addrs.len() as u8);
    for addr in addrs {
        put_addr(dst, addr);
    }
}

fn get_addrs(src: &mut Bytes) -> Result<Vec<SocketAddr>> {
    let count = usize::from(get_u8(src)?);
    if count > MAX_ADDRS {
        return Err(WireError::TooManyAddrs { count });
    }
    (0..count).map(|_| get_addr(src)).collect()
}

fn to_bytes(f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::new();
    f(&mut b);
    b.freeze()
}

/// REGISTER request flags.
pub mod register_flags {
    /// Unbind the name (only its holder may).
    pub const RELEASE: u8 = 0x01;
    /// Bind the name to the id that follows (only its holder may).
    pub const MOVE: u8 = 0x02;
    /// Every defined flag.
    pub const ALL: u8 = RELEASE | MOVE;
}

/// `flags: u8 | name: str | invite: str | [to: id, when MOVE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// RELEASE or 0; MOVE is set on the wire when `to` is.
    pub flags: u8,
    pub name: String,
    /// Empty when none.
    pub invite: String,
    /// The node id the name moves to (flag MOVE).
    pub to: Option<NodeId>,
}

impl RegisterRequest {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| {
            let flags = (self.flags & !register_flags::MOVE)
                | if self.to.is_some() {
                    register_flags::MOVE
                } else {
                    0
                };
            b.put_u8(flags);
            put_str(b, &self.name);
            put_str(b, &self.invite);
            if let Some(to) = &self.to {
                b.put_slice(to.as_bytes());
            }
        })
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let flags = get_u8(&mut src)?;
        if flags & !register_flags::ALL != 0 || flags == register_flags::ALL {
            return Err(WireError::Undefined {
                field: "register flags",
                value: flags,
            });
        }
        // Names are checked by their syntax later; the wire only bounds what is buffered.
        let name = get_str(&mut src, "name", 255)?;
        let invite = get_str(&mut src, "invite", MAX_INVITE)?;
        let to = if flags & register_flags::MOVE != 0 {
            Some(get_id(&mut src)?)
        } else {
            None
        };
        end(&src)?;
        Ok(Self {
            // MOVE is carried by `to`.
            flags: flags & !register_flags::MOVE,
            name,
            invite,
            to,
        })
    }
}

/// The answer to REGISTER: `name: str | id: 20 bytes` (the id now bound; on release, the id
/// that held it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterResponse {
    pub name: String,
    pub id: NodeId,
}

impl RegisterResponse {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| {
            put_str(b, &self.name);
            b.put_slice(self.id.as_bytes());
        })
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let name = get_str(&mut src, "name", 255)?;
        let id = get_id(&mut src)?;
        end(&src)?;
        Ok(Self { name, id })
    }
}

/// RESOLVE and PUNCH requests name a node: `name: str`, for PUNCH followed by the caller's
/// own candidate addresses and its measured RTT to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRequest {
    pub name: String,
}

impl NameRequest {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| put_str(b, &self.name))
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let name = get_str(&mut src, "name", 255)?;
        end(&src)?;
        Ok(Self { name })
    }
}

/// Where a hint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HintSource {
    /// The node reported it (an address it listens on).
    Reported = 1,
    /// The hub saw the node's control connection come from it (its public mapping).
    Reflected = 2,
}

/// `id: 20 bytes | online: u8 (0 | 1) | count: u8 | (source: u8 | addr)*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveResponse {
    pub id: NodeId,
    pub online: bool,
    pub hints: Vec<(HintSource, SocketAddr)>,
}

impl ResolveResponse {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| {
            b.put_slice(self.id.as_bytes());
            b.put_u8(u8::from(self.online));
            let hints = &self.hints[..self.hints.len().min(MAX_ADDRS)];
            b.put_u8(hints.len() as u8);
            for (source, addr) in hints {
                b.put_u8(*source as u8);
                put_addr(b, addr);
            }
        })
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let id = get_id(&mut src)?;
        let online = match get_u8(&mut src)? {
            0 => false,
            1 => true,
            value => {
                return Err(WireError::Undefined {
                    field: "online",
                    value,
                })
            }
        };
        let count = usize::from(get_u8(&mut src)?);
        if count > MAX_ADDRS {
            return Err(WireError::TooManyAddrs { count });
        }
        let mut hints = Vec::with_capacity(count);
        for _ in 0..count {
            let source = match get_u8(&mut src)? {
                1 => HintSource::Reported,
                2 => HintSource::Reflected,
                value => {
                    return Err(WireError::Undefined {
                        field: "hint source",
                        value,
                    })
                }
            };
            hints.push((source, get_addr(&mut src)?));
        }
        end(&src)?;
        Ok(Self { id, online, hints })
    }
}

/// `name: str | count: u8 | addr*`: the node holding `name` is here, listening on `addrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRequest {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

impl PresenceRequest {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| {
            put_str(b, &self.name);
            put_addrs(b, &self.addrs);
        })
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let name = get_str(&mut src, "name", 255)?;
        let addrs = get_addrs(&mut src)?;
        end(&src)?;
        Ok(Self { name, addrs })
    }
}

/// `reflected: addr`: where the hub sees the control connection come from (as STUN's
/// XOR-MAPPED-ADDRESS, unobfuscated: the session is encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceResponse {
    pub reflected: SocketAddr,
}

impl PresenceResponse {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| put_addr(b, &self.reflected))
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let reflected = get_addr(&mut src)?;
        end(&src)?;
        Ok(Self { reflected })
    }
}

/// What the hub asks of a present node: DATA frames on the PRESENCE request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `kind 1 | token: 16 bytes | client: id`: open a relay connection with this token; the
    /// client that asked is `client`.
    Relay {
        token: [u8; TOKEN_LEN],
        client: NodeId,
    },
    /// `kind 2 | punch`: after `delay_ms`, punch towards the peer in `role` (§3.6); the
    /// end-to-end handshake proves who is there.
    Punch(Punch),
}

/// Which side of a punch dials (HUB.md §3.6): the hub names exactly one, so both sides agree
/// which TCP connection (or QUIC connection) is the Ferry connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunchRole {
    /// `1`: the Ferry client; keeps only connections its own attempts made.
    Dial = 1,
    /// `2`: the Ferry server; keeps the first connection the dialer's first bytes arrive on.
    Listen = 2,
}

impl PunchRole {
    fn get(src: &mut Bytes) -> Result<Self> {
        match get_u8(src)? {
            1 => Ok(Self::Dial),
            2 => Ok(Self::Listen),
            value => Err(WireError::Undefined {
                field: "punch role",
                value,
            }),
        }
    }
}

/// A punch instruction, to either side (HUB.md §3.6):
/// `peer: id | delay_ms: u32 | role: u8 | addrs (TCP) | udp: addrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Punch {
    pub peer: NodeId,
    pub delay_ms: u32,
    /// This side's role.
    pub role: PunchRole,
    /// The peer's TCP candidates: what it reported, then where the hub sees its control
    /// connection come from.
    pub addrs: Vec<SocketAddr>,
    /// The peer's UDP addresses as the hub saw its reflect datagrams come from (§3.7); empty
    /// when the peer sent none.
    pub udp: Vec<SocketAddr>,
}

impl Punch {
    fn put(&self, b: &mut BytesMut) {
        b.put_slice(self.peer.as_bytes());
        b.put_u32(self.delay_ms);
        b.put_u8(self.role as u8);
        put_addrs(b, &self.addrs);
        put_addrs(b, &self.udp);
    }

    fn get(src: &mut Bytes) -> Result<Self> {
        let peer = get_id(src)?;
        let delay_ms = get_u32(src)?;
        let role = PunchRole::get(src)?;
        let addrs = get_addrs(src)?;
        let udp = get_addrs(src)?;
        Ok(Self {
            peer,
            delay_ms,
            role,
            addrs,
            udp,
        })
    }

    /// The PUNCH response body (same layout as the event, without the kind).
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| self.put(b))
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let punch = Self::get(&mut src)?;
        end(&src)?;
        Ok(punch)
    }
}

/// The UDP_TOKEN response (§3.7): `token: 16 bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpTokenResponse {
    pub token: [u8; TOKEN_LEN],
}

impl UdpTokenResponse {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.token)
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let token = get_token(&mut src)?;
        end(&src)?;
        Ok(Self { token })
    }
}

/// The UDP reflect exchange on the hub's port (HUB.md §3.7). Every datagram's first byte has
/// bit 0x40 clear, so a node's QUIC socket tells them from QUIC (PROTOCOL.md §14.2).
pub mod reflect {
    use super::*;

    /// First byte of a reflect request.
    pub const REQUEST: u8 = 0x11;
    /// First byte of a reflect reply.
    pub const REPLY: u8 = 0x12;
    /// A request is exactly this long (kind, token, zero padding), so that the longest reply
    /// (kind, token, an IPv6 addr: 36 bytes) is never larger than the request.
    pub const REQUEST_LEN: usize = 36;

    /// The request datagram for `token`.
    pub fn request(token: &[u8; TOKEN_LEN]) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0] = REQUEST;
        out[1..1 + TOKEN_LEN].copy_from_slice(token);
        out
    }

    /// The token of a well-formed request (exact length, kind, zero padding), else `None`.
    pub fn parse_request(datagram: &[u8]) -> Option<[u8; TOKEN_LEN]> {
        if datagram.len() != REQUEST_LEN || datagram[0] != REQUEST {
            return None;
        }
        if datagram[1 + TOKEN_LEN..].iter().any(|&b| b != 0) {
            return None;
        }
        datagram[1..1 + TOKEN_LEN].try_into().ok()
    }

    /// The reply: `0x12 | token | addr` (at most 36 bytes).
    pub fn reply(token: &[u8; TOKEN_LEN], seen: &SocketAddr) -> Bytes {
        to_bytes(|b| {
            b.put_u8(REPLY);
            b.put_slice(token);
            put_addr(b, seen);
        })
    }

    /// The address of a reply that echoes `token`, else `None` (a reply without the token is
    /// not from the hub: the token only travelled inside the encrypted session).
    pub fn parse_reply(datagram: &[u8], token: &[u8; TOKEN_LEN]) -> Option<SocketAddr> {
        let mut src = Bytes::copy_from_slice(datagram);
        if get_u8(&mut src).ok()? != REPLY || get_token(&mut src).ok()? != *token {
            return None;
        }
        let addr = get_addr(&mut src).ok()?;
        end(&src).ok()?;
        Some(addr)
    }
}

impl Event {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| match self {
            Self::Relay { token, client } => {
                b.put_u8(1);
                b.put_slice(token);
                b.put_slice(client.as_bytes());
            }
            Self::Punch(punch) => {
                b.put_u8(2);
                punch.put(b);
            }
        })
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let event = match get_u8(&mut src)? {
            1 => Self::Relay {
                token: get_token(&mut src)?,
                client: get_id(&mut src)?,
            },
            2 => Self::Punch(Punch::get(&mut src)?),
            value => {
                return Err(WireError::Undefined {
                    field: "event kind",
                    value,
                })
            }
        };
        end(&src)?;
        Ok(event)
    }
}

/// `role: u8 | (1: name: str | 2: token: 16 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayRequest {
    /// A client asks to be relayed to the node holding `name`.
    Connect { name: String },
    /// A node answers a relay event with its token.
    Accept { token: [u8; TOKEN_LEN] },
}

impl RelayRequest {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| match self {
            Self::Connect { name } => {
                b.put_u8(1);
                put_str(b, name);
            }
            Self::Accept { token } => {
                b.put_u8(2);
                b.put_slice(token);
            }
        })
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let request = match get_u8(&mut src)? {
            1 => Self::Connect {
                name: get_str(&mut src, "name", 255)?,
            },
            2 => Self::Accept {
                token: get_token(&mut src)?,
            },
            value => {
                return Err(WireError::Undefined {
                    field: "relay role",
                    value,
                })
            }
        };
        end(&src)?;
        Ok(request)
    }
}

/// `peer: id`: the relay is spliced; the other end is (claims to be) `peer`. The last frame of
/// the hub session on this connection: raw bytes of the other end follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayResponse {
    pub peer: NodeId,
}

impl RelayResponse {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| b.put_slice(self.peer.as_bytes()))
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let peer = get_id(&mut src)?;
        end(&src)?;
        Ok(Self { peer })
    }
}

/// `name: str | rtt_ms: u32 | count: u8 | addr*`: punch to `name`; the caller's RTT to the hub
/// and its own candidate addresses (the hub adds the reflected one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PunchRequest {
    pub name: String,
    pub rtt_ms: u32,
    pub addrs: Vec<SocketAddr>,
}

impl PunchRequest {
    pub fn to_bytes(&self) -> Bytes {
        to_bytes(|b| {
            put_str(b, &self.name);
            b.put_u32(self.rtt_ms);
            put_addrs(b, &self.addrs);
        })
    }

    pub fn decode(mut src: Bytes) -> Result<Self> {
        let name = get_str(&mut src, "name", 255)?;
        let rtt_ms = get_u32(&mut src)?;
        let addrs = get_addrs(&mut src)?;
        end(&src)?;
        Ok(Self {
            name,
            rtt_ms,
            addrs,
        })
    }
}

/// A hub error's code as text: the hub's name, else the core table's.
pub fn code_name(code: ErrorCode) -> String {
    match codes::name(code) {
        Some(name) => format!("{name}(0x{:04x})", code.0),
        None => code.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::identity::Identity;

    fn id(seed: u8) -> NodeId {
        Identity::from_secret([seed; 32]).id()
    }

    fn addrs() -> Vec<SocketAddr> {
        vec![
            "192.0.2.1:6789".parse().unwrap(),
            "[2001:db8::1]:7000".parse().unwrap(),
        ]
    }

    /// Every body: round trip, and every strict prefix and one extra byte fail.
    fn check(body: Bytes, decode: impl Fn(Bytes) -> bool) {
        assert!(decode(body.clone()), "round trip of {body:02x?}");
        for cut in 0..body.len() {
            assert!(!decode(body.slice(..cut)), "prefix {cut} of {body:02x?}");
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(!decode(Bytes::from(longer)));
    }

    #[test]
    fn every_body_round_trips_and_refuses_truncation_and_trailing_bytes() {
        let reg = RegisterRequest {
            flags: 0,
            name: "alice".into(),
            invite: "abc".into(),
            to: Some(id(2)),
        };
        check(reg.to_bytes(), |b| {
            RegisterRequest::decode(b).ok() == Some(reg.clone())
        });
        let resp = RegisterResponse {
            name: "alice".into(),
            id: id(1),
        };
        check(resp.to_bytes(), |b| {
            RegisterResponse::decode(b).ok() == Some(resp.clone())
        });
        let name = NameRequest { name: "bob".into() };
        check(name.to_bytes(), |b| {
            NameRequest::decode(b).ok() == Some(name.clone())
        });
        let res = ResolveResponse {
            id: id(3),
            online: true,
            hints: vec![
                (HintSource::Reported, addrs()[0]),
                (HintSource::Reflected, addrs()[1]),
            ],
        };
        check(res.to_bytes(), |b| {
            ResolveResponse::decode(b).ok() == Some(res.clone())
        });
        let pres = PresenceRequest {
            name: "alice".into(),
            addrs: addrs(),
        };
        check(pres.to_bytes(), |b| {
            PresenceRequest::decode(b).ok() == Some(pres.clone())
        });
        let pr = PresenceResponse {
            reflected: addrs()[0],
        };
        check(pr.to_bytes(), |b| {
            PresenceResponse::decode(b).ok() == Some(pr.clone())
        });
        for event in [
            Event::Relay {
                token: [7; TOKEN_LEN],
                client: id(4),
            },
            Event::Punch(Punch {
                peer: id(5),
                delay_ms: 42,
                role: PunchRole::Listen,
                addrs: addrs(),
                udp: vec![addrs()[1]],
            }),
        ] {
            check(event.to_bytes(), |b| {
                Event::decode(b).ok() == Some(event.clone())
            });
        }
        for relay in [
            RelayRequest::Connect {
                name: "alice".into(),
            },
            RelayRequest::Accept { token: [9; 16] },
        ] {
            check(relay.to_bytes(), |b| {
                RelayRequest::decode(b).ok() == Some(relay.clone())
            });
        }
        let rr = RelayResponse { peer: id(6) };
        check(rr.to_bytes(), |b| {
            RelayResponse::decode(b).ok() == Some(rr.clone())
        });
        let punch = PunchRequest {
            name: "alice".into(),
            rtt_ms: 30,
            addrs: addrs(),
        };
        check(punch.to_bytes(), |b| {
            PunchRequest::decode(b).ok() == Some(punch.clone())
        });
    }

    #[test]
    fn undefined_values_are_refused() {
        assert!(RegisterRequest::decode(Bytes::from_static(&[0x04, 0, 0, 0, 0])).is_err());
        assert!(RegisterRequest::decode(Bytes::from_static(&[0x03, 0, 0, 0, 0])).is_err());
        assert!(get_addr(&mut Bytes::from_static(&[5, 1, 2, 3, 4, 0, 1])).is_err());
        assert!(Event::decode(Bytes::from_static(&[3])).is_err());
        assert!(RelayRequest::decode(Bytes::from_static(&[0])).is_err());
        let mut punch = Punch {
            peer: id(1),
            delay_ms: 0,
            role: PunchRole::Dial,
            addrs: vec![],
            udp: vec![],
        }
        .to_bytes()
        .to_vec();
        punch[24] = 3;
        assert!(Punch::decode(Bytes::from(punch)).is_err());
        // 17 addresses
        let mut b = BytesMut::new();
        put_str(&mut b, "a");
        b.put_u8(17);
        assert!(PresenceRequest::decode(b.freeze()).is_err());
    }

    #[test]
    fn reflect_replies_are_never_larger_than_requests_and_need_the_token() {
        let token = [5u8; TOKEN_LEN];
        let request = reflect::request(&token);
        assert_eq!(reflect::parse_request(&request), Some(token));
        assert_eq!(reflect::parse_request(&request[..35]), None);
        let mut padded = request;
        padded[35] = 1;
        assert_eq!(reflect::parse_request(&padded), None);
        for seen in addrs() {
            let reply = reflect::reply(&token, &seen);
            assert!(reply.len() <= request.len(), "{} bytes", reply.len());
            assert_eq!(reply[0] & 0x40, 0);
            assert_eq!(reflect::parse_reply(&reply, &token), Some(seen));
            assert_eq!(reflect::parse_reply(&reply, &[6; TOKEN_LEN]), None);
        }
    }

    #[test]
    fn hub_codes_are_category_7_and_named() {
        for (code, name) in codes::ALL {
            assert_eq!(code.0 >> 8, 0x07);
            assert!(code_name(*code).starts_with(name));
        }
    }
}
