//! DHT datagrams (spec/P2P.md §7.2): one plaintext Ferry frame on service 0x48, request id =
//! transaction id, the body a method byte, the sender's node id and the method's fields.
//!
//! ```text
//!  REQUEST  (0x10)  method u8 | id[20] | args                      | zero padding
//!  RESPONSE (0x11)  method u8 | id[20] | you (family|addr|port) | results
//!  ERROR    (0x14)  Ferry error body
//!
//!  method         request args                          response results
//!  0x01 PING      —                                     —
//!  0x02 FIND_NODE target[20]                            n u8 | n × node
//!  0x03 GET_PEERS key[20]                               token[8] | n u8 | n × node
//!                                                        | p u8 | p × (family|addr|port)
//!  0x04 ANNOUNCE  key[20] | port u16 | token[8]         —
//!  node = id[20] | family u8 | addr[4 or 16] | port u16
//! ```

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_protocol::{ErrorBody, FrameType, Header, RequestId, Service, HEADER_LEN};

use super::NodeId;
use crate::addr;

/// The DHT's service byte (in the tracker range of PROTOCOL.md §2.3).
pub const SERVICE: Service = Service(0x48);
/// The header's version byte in every DHT datagram (spec/P2P.md §7.2). Fixed here rather than
/// taken from the session protocol, so the DHT's wire does not move when sessions do.
pub const DATAGRAM_VERSION: u8 = 1;
/// Largest datagram read or sent.
pub const MAX_DATAGRAM: usize = 1400;
/// Length of an announce token.
pub const TOKEN_LEN: usize = 8;
/// Most nodes in one reply (k).
pub const MAX_NODES: usize = 8;

/// A token handed out by `GET_PEERS` and required by `ANNOUNCE_PEER`.
pub type Token = [u8; TOKEN_LEN];

/// The method byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Ping = 0x01,
    FindNode = 0x02,
    GetPeers = 0x03,
    AnnouncePeer = 0x04,
}

impl Method {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Ping,
            0x02 => Self::FindNode,
            0x03 => Self::GetPeers,
            0x04 => Self::AnnouncePeer,
            _ => return None,
        })
    }
}

/// A request's method-specific fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Ping,
    FindNode {
        target: NodeId,
    },
    GetPeers {
        key: NodeId,
    },
    AnnouncePeer {
        key: NodeId,
        port: u16,
        token: Token,
    },
}

impl Query {
    pub fn method(&self) -> Method {
        match self {
            Query::Ping => Method::Ping,
            Query::FindNode { .. } => Method::FindNode,
            Query::GetPeers { .. } => Method::GetPeers,
            Query::AnnouncePeer { .. } => Method::AnnouncePeer,
        }
    }
}

/// A request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: NodeId,
    pub query: Query,
    /// Trailing zero bytes: they make the request as large as the reply it asks for (§7.5).
    pub padding: usize,
}

impl Request {
    pub fn encoded_len(&self) -> usize {
        1 + 20
            + match self.query {
                Query::Ping => 0,
                Query::FindNode { .. } | Query::GetPeers { .. } => 20,
                Query::AnnouncePeer { .. } => 20 + 2 + TOKEN_LEN,
            }
            + self.padding
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.query.method() as u8);
        dst.put_slice(&self.id.0);
        match &self.query {
            Query::Ping => {}
            Query::FindNode { target: k } | Query::GetPeers { key: k } => dst.put_slice(&k.0),
            Query::AnnouncePeer { key, port, token } => {
                dst.put_slice(&key.0);
                dst.put_u16(*port);
                dst.put_slice(token);
            }
        }
        dst.put_bytes(0, self.padding);
    }

    pub fn decode(mut src: &[u8]) -> Option<Self> {
        let method = Method::from_u8(take_u8(&mut src)?)?;
        let id = take_id(&mut src)?;
        let query = match method {
            Method::Ping => Query::Ping,
            Method::FindNode => Query::FindNode {
                target: take_id(&mut src)?,
            },
            Method::GetPeers => Query::GetPeers {
                key: take_id(&mut src)?,
            },
            Method::AnnouncePeer => {
                let key = take_id(&mut src)?;
                if src.len() < 2 + TOKEN_LEN {
                    return None;
                }
                let port = src.get_u16();
                let mut token = [0u8; TOKEN_LEN];
                src.copy_to_slice(&mut token);
                Query::AnnouncePeer { key, port, token }
            }
        };
        // Padding is zeros only, so every accepted request has one encoding.
        if src.iter().any(|&b| b != 0) {
            return None;
        }
        Some(Self {
            id,
            query,
            padding: src.len(),
        })
    }
}

/// A node as listed in replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
}

impl NodeInfo {
    pub fn encoded_len(&self) -> usize {
        20 + addr::encoded_len(&self.addr)
    }

    fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.id.0);
        addr::encode(&self.addr, dst);
    }

    fn decode(src: &mut &[u8]) -> Option<Self> {
        let id = take_id(src)?;
        let addr = addr::decode(src).ok()?;
        Some(Self { id, addr })
    }
}

/// A response's method-specific fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Ping,
    FindNode {
        nodes: Vec<NodeInfo>,
    },
    GetPeers {
        token: Token,
        nodes: Vec<NodeInfo>,
        peers: Vec<SocketAddr>,
    },
    AnnouncePeer,
}

impl Answer {
    pub fn method(&self) -> Method {
        match self {
            Answer::Ping => Method::Ping,
            Answer::FindNode { .. } => Method::FindNode,
            Answer::GetPeers { .. } => Method::GetPeers,
            Answer::AnnouncePeer => Method::AnnouncePeer,
        }
    }
}

/// A response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: NodeId,
    /// The requester's address as the responder saw it (BEP 42's `ip`).
    pub you: SocketAddr,
    pub answer: Answer,
}

impl Response {
    pub fn encoded_len(&self) -> usize {
        let nodes = |n: &[NodeInfo]| 1 + n.iter().map(NodeInfo::encoded_len).sum::<usize>();
        1 + 20
            + addr::encoded_len(&self.you)
            + match &self.answer {
                Answer::Ping | Answer::AnnouncePeer => 0,
                Answer::FindNode { nodes: n } => nodes(n),
                Answer::GetPeers {
                    nodes: n, peers, ..
                } => TOKEN_LEN + nodes(n) + 1 + peers.iter().map(addr::encoded_len).sum::<usize>(),
            }
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.answer.method() as u8);
        dst.put_slice(&self.id.0);
        addr::encode(&self.you, dst);
        let put_nodes = |dst: &mut _, nodes: &[NodeInfo]| {
            BufMut::put_u8(dst, nodes.len() as u8);
            for node in nodes {
                node.encode(dst);
            }
        };
        match &self.answer {
            Answer::Ping | Answer::AnnouncePeer => {}
            Answer::FindNode { nodes } => put_nodes(dst, nodes),
            Answer::GetPeers {
                token,
                nodes,
                peers,
            } => {
                dst.put_slice(token);
                put_nodes(dst, nodes);
                dst.put_u8(peers.len() as u8);
                for peer in peers {
                    addr::encode(peer, dst);
                }
            }
        }
    }

    pub fn decode(mut src: &[u8]) -> Option<Self> {
        let method = Method::from_u8(take_u8(&mut src)?)?;
        let id = take_id(&mut src)?;
        let you = addr::decode(&mut src).ok()?;
        let answer = match method {
            Method::Ping => Answer::Ping,
            Method::AnnouncePeer => Answer::AnnouncePeer,
            Method::FindNode => Answer::FindNode {
                nodes: take_nodes(&mut src)?,
            },
            Method::GetPeers => {
                if src.len() < TOKEN_LEN {
                    return None;
                }
                let mut token = [0u8; TOKEN_LEN];
                src.copy_to_slice(&mut token);
                let nodes = take_nodes(&mut src)?;
                let count = take_u8(&mut src)? as usize;
                let mut peers = Vec::with_capacity(count.min(src.len() / addr::V4_LEN));
                for _ in 0..count {
                    peers.push(addr::decode(&mut src).ok()?);
                }
                Answer::GetPeers {
                    token,
                    nodes,
                    peers,
                }
            }
        };
        if !src.is_empty() {
            return None;
        }
        Some(Self { id, you, answer })
    }
}

fn take_u8(src: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = src.split_first()?;
    *src = rest;
    Some(b)
}

fn take_id(src: &mut &[u8]) -> Option<NodeId> {
    if src.len() < 20 {
        return None;
    }
    let (id, rest) = src.split_at(20);
    *src = rest;
    Some(NodeId(id.try_into().ok()?))
}

fn take_nodes(src: &mut &[u8]) -> Option<Vec<NodeInfo>> {
    let count = take_u8(src)? as usize;
    if count > MAX_NODES {
        return None;
    }
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        nodes.push(NodeInfo::decode(src)?);
    }
    Some(nodes)
}

/// One DHT datagram, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
    Error(ErrorBody),
}

impl Message {
    fn kind(&self) -> FrameType {
        match self {
            Message::Request(_) => FrameType::REQUEST,
            Message::Response(_) => FrameType::RESPONSE,
            Message::Error(_) => FrameType::ERROR,
        }
    }

    /// The whole datagram: header and body.
    pub fn to_datagram(&self, transaction: u32) -> Vec<u8> {
        let mut body = BytesMut::new();
        match self {
            Message::Request(r) => r.encode(&mut body),
            Message::Response(r) => r.encode(&mut body),
            Message::Error(e) => e.encode(&mut body),
        }
        let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
        let mut header = Header::new(
            self.kind(),
            SERVICE,
            RequestId(transaction),
            body.len() as u32,
        );
        header.version = DATAGRAM_VERSION;
        header.encode(&mut out);
        out.put_slice(&body);
        out.to_vec()
    }

    /// Decodes one datagram; `None` for anything that is not exactly one valid DHT frame.
    pub fn from_datagram(datagram: &[u8]) -> Option<(u32, Self)> {
        if datagram.len() < HEADER_LEN || datagram.len() > MAX_DATAGRAM {
            return None;
        }
        // The header is read here, not by `Header::decode`, so that the session protocol's
        // accepted versions do not change which DHT datagrams are valid.
        let mut h = &datagram[..HEADER_LEN];
        let (kind, magic, version, service) = (h.get_u8(), h.get_u8(), h.get_u8(), h.get_u8());
        let transaction = h.get_u32();
        let length = h.get_u32() as usize;
        if magic != ferry_protocol::MAGIC
            || version != DATAGRAM_VERSION
            || service != SERVICE.0
            || length != datagram.len() - HEADER_LEN
        {
            return None;
        }
        let body = &datagram[HEADER_LEN..];
        let message = match FrameType(kind) {
            FrameType::REQUEST => Message::Request(Request::decode(body)?),
            FrameType::RESPONSE => Message::Response(Response::decode(body)?),
            FrameType::ERROR => {
                Message::Error(ErrorBody::decode(Bytes::copy_from_slice(body)).ok()?)
            }
            _ => return None,
        };
        Some((transaction, message))
    }
}

/// Fuzzing entry: decode, re-encode, compare (a decoded request or response has exactly one
/// encoding).
#[cfg(any(fuzzing, test))]
pub fn fuzz_message(data: &[u8]) {
    if let Some((tx, message)) = Message::from_datagram(data) {
        let again = message.to_datagram(tx);
        if !matches!(message, Message::Error(_)) {
            assert_eq!(again, data);
        }
        assert_eq!(Message::from_datagram(&again), Some((tx, message)));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn examples() -> Vec<Message> {
        let id = NodeId([0x11; 20]);
        let v4: SocketAddr = "192.0.2.1:6881".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let node = NodeInfo {
            id: NodeId([0x22; 20]),
            addr: v4,
        };
        vec![
            Message::Request(Request {
                id,
                query: Query::Ping,
                padding: 0,
            }),
            Message::Request(Request {
                id,
                query: Query::FindNode {
                    target: NodeId([0x33; 20]),
                },
                padding: 7,
            }),
            Message::Request(Request {
                id,
                query: Query::GetPeers {
                    key: NodeId([0x44; 20]),
                },
                padding: 0,
            }),
            Message::Request(Request {
                id,
                query: Query::AnnouncePeer {
                    key: NodeId([0x44; 20]),
                    port: 7000,
                    token: [9; 8],
                },
                padding: 0,
            }),
            Message::Response(Response {
                id,
                you: v6,
                answer: Answer::Ping,
            }),
            Message::Response(Response {
                id,
                you: v4,
                answer: Answer::FindNode {
                    nodes: vec![node, node],
                },
            }),
            Message::Response(Response {
                id,
                you: v4,
                answer: Answer::GetPeers {
                    token: [1; 8],
                    nodes: vec![node],
                    peers: vec![v4, v6],
                },
            }),
            Message::Response(Response {
                id,
                you: v4,
                answer: Answer::AnnouncePeer,
            }),
            Message::Error(ErrorBody::new(
                ferry_protocol::ErrorCode::AUTHENTICATION_FAILED,
                "bad token",
            )),
        ]
    }

    #[test]
    fn roundtrip_lengths_and_every_truncation_is_refused() {
        for (i, m) in examples().into_iter().enumerate() {
            let d = m.to_datagram(0x0102_0304);
            match &m {
                Message::Request(r) => assert_eq!(d.len(), HEADER_LEN + r.encoded_len()),
                Message::Response(r) => assert_eq!(d.len(), HEADER_LEN + r.encoded_len()),
                Message::Error(_) => {}
            }
            assert_eq!(
                Message::from_datagram(&d),
                Some((0x0102_0304, m.clone())),
                "{i}"
            );
            fuzz_message(&d);
            for cut in 0..d.len() {
                assert_eq!(Message::from_datagram(&d[..cut]), None, "{i} cut at {cut}");
            }
            // One byte more than the header says: refused.
            let mut long = d.clone();
            long.push(0);
            assert_eq!(Message::from_datagram(&long), None);
        }
    }

    #[test]
    fn junk_is_refused_without_panic() {
        let mut d = Message::Request(Request {
            id: NodeId([0; 20]),
            query: Query::Ping,
            padding: 3,
        })
        .to_datagram(1);
        // Another version, magic or service: refused.
        for (at, value) in [(2, 2u8), (1, 0xfd), (3, 0x40)] {
            let mut other = d.clone();
            other[at] = value;
            assert_eq!(
                Message::from_datagram(&other),
                None,
                "byte {at} = {value:#x}"
            );
        }
        // Non-zero padding.
        let last = d.len() - 1;
        d[last] = 1;
        assert_eq!(Message::from_datagram(&d), None);
        for len in 0..300 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            fuzz_message(&junk);
        }
    }

    /// spec/P2P.md §7.9 lists these datagrams byte for byte; an independent implementation is
    /// checked against the same text.
    #[test]
    fn spec_vectors_decode_and_reencode() {
        let spec = include_str!("../../../spec/P2P.md");
        let start = spec
            .find("dht vectors:")
            .expect("spec/P2P.md has the dht vectors");
        let mut seen = 0;
        let mut methods = std::collections::HashSet::new();
        for block in spec[start..]
            .split("```")
            .next()
            .unwrap_or_default()
            .split("\n\n")
            .skip(1)
        {
            let hex: String = block
                .lines()
                .filter(|l| !l.starts_with('#'))
                .flat_map(|l| l.split_whitespace())
                .collect();
            if hex.is_empty() {
                continue;
            }
            let bytes = hex::decode(&hex).unwrap_or_else(|e| panic!("{e}: {hex}"));
            let (tx, m) = Message::from_datagram(&bytes)
                .unwrap_or_else(|| panic!("vector does not decode: {hex}"));
            assert_eq!(m.to_datagram(tx), bytes);
            methods.insert(format!("{:?}", std::mem::discriminant(&m)));
            if let Message::Request(r) = &m {
                methods.insert(format!("{:?}", r.query.method()));
            }
            if let Message::Response(r) = &m {
                methods.insert(format!("r{:?}", r.answer.method()));
            }
            seen += 1;
        }
        assert!(seen >= 9, "only {seen} vectors");
        assert!(methods.len() >= 10, "{methods:?}");
    }
}
