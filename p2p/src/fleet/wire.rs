//! Gossip datagrams (spec/P2P.md §8.3, §8.9): one plaintext Ferry frame per UDP datagram,
//! services 0x70-0x73, request id = transaction id.
//!
//! ```text
//!  0x70 STATUS    REQUEST / RESPONSE  status | zero padding (request only, body >= 512 bytes)
//!  0x71 RECORD    REQUEST             a signed release record (§8.2); never answered
//!  0x72 MANIFEST  REQUEST             content_id[32] | offset u32 | zero padding (body >= 512)
//!                 RESPONSE            content_id[32] | offset u32 | total u32 | data (1..=1024)
//!                 ERROR               Ferry error body (UNKNOWN_RELEASE)
//!  0x73 ANNOUNCE  REQUEST             channel[32] | role u8 | zero padding (body >= 512);
//!                                     never answered; sent to the LAN group (§8.9)
//!  status = channel[32] | role u8 | latest u64 | running u64 | failed u64 | swarm_port u16
//!           | name str (<= 64 bytes) | count u8 (<= 16) | count x member
//!  member = family u8 | addr[4 or 16] | port u16 | age_s u32 (0xffffffff: never heard)
//! ```

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_protocol::{ErrorBody, ErrorCode, FrameType, Header, RequestId, Service, HEADER_LEN};

use super::channel::ChannelId;
use super::record::{SignedRelease, MAX_LEN as MAX_RECORD};
use crate::addr;
use crate::manifest::ContentId;

pub const STATUS: Service = Service(0x70);
pub const RECORD: Service = Service(0x71);
pub const MANIFEST: Service = Service(0x72);
pub const ANNOUNCE: Service = Service(0x73);
/// The header's version byte in every gossip datagram, fixed like the DHT's (§7.2).
pub const DATAGRAM_VERSION: u8 = 1;
/// Largest datagram read or sent.
pub const MAX_DATAGRAM: usize = 1400;
/// Smallest STATUS or MANIFEST request body: the padding makes a request as large as a
/// quarter of everything it can cause to be sent back (§8.3, no amplification).
pub const MIN_REQUEST_BODY: usize = 512;
/// Most manifest bytes in one MANIFEST response.
pub const CHUNK: usize = 1024;
/// Most addresses in one STATUS.
pub const MAX_MEMBERS: usize = 16;
/// Longest follower name, in bytes.
pub const MAX_NAME: usize = 64;

/// Error codes of the fleet category (0x08, PROTOCOL.md §6.2).
pub const UNKNOWN_RELEASE: ErrorCode = ErrorCode::UNKNOWN_RELEASE;
/// `age_s` of a member never heard from (only listed by others).
pub const NEVER: u32 = u32::MAX;

/// Another member as a STATUS lists it: where it gossips and how long since the sender heard
/// from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberAddr {
    pub addr: SocketAddr,
    pub age_s: u32,
}

/// What the sender of a STATUS is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows the channel and installs its releases.
    Follower = 1,
    /// Published a release and seeds it.
    Publisher = 2,
    /// Only asks (`fleet status`): not listed, never sent records.
    Observer = 3,
}

impl Role {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Follower,
            2 => Self::Publisher,
            3 => Self::Observer,
            _ => return None,
        })
    }
}

/// A node's account of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub channel: ChannelId,
    pub role: Role,
    /// Version of the newest valid record it holds; 0 for none.
    pub latest: u64,
    /// Version its `current` link points at; 0 for none.
    pub running: u64,
    /// Version whose apply hook failed most recently, if no later one succeeded; 0 for none.
    pub failed: u64,
    /// TCP port of its swarm for `latest`'s content (downloading or seeding); 0 for none.
    pub swarm_port: u16,
    pub name: String,
    /// Gossip addresses of other members it knows (membership spreads like PEX).
    pub members: Vec<MemberAddr>,
}

/// One gossip datagram, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    StatusRequest {
        status: Status,
        padding: usize,
    },
    StatusResponse(Status),
    Record(SignedRelease),
    ManifestRequest {
        content_id: ContentId,
        offset: u32,
        padding: usize,
    },
    ManifestChunk {
        content_id: ContentId,
        offset: u32,
        total: u32,
        data: Bytes,
    },
    ManifestError(ErrorBody),
    /// "A member of `channel` gossips at this datagram's source address" (LAN discovery).
    Announce {
        channel: ChannelId,
        role: Role,
        padding: usize,
    },
}

impl Status {
    fn encoded_len(&self) -> usize {
        32 + 1
            + 8 * 3
            + 2
            + 2
            + self.name.len()
            + 1
            + self
                .members
                .iter()
                .map(|m| addr::encoded_len(&m.addr) + 4)
                .sum::<usize>()
    }

    fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.channel.0);
        dst.put_u8(self.role as u8);
        dst.put_u64(self.latest);
        dst.put_u64(self.running);
        dst.put_u64(self.failed);
        dst.put_u16(self.swarm_port);
        dst.put_u16(self.name.len() as u16);
        dst.put_slice(self.name.as_bytes());
        dst.put_u8(self.members.len() as u8);
        for member in &self.members {
            addr::encode(&member.addr, dst);
            dst.put_u32(member.age_s);
        }
    }

    fn decode(src: &mut &[u8]) -> Option<Self> {
        if src.len() < 32 + 1 + 24 + 2 + 2 {
            return None;
        }
        let mut channel = [0u8; 32];
        src.copy_to_slice(&mut channel);
        let role = Role::from_u8(src.get_u8())?;
        let (latest, running, failed) = (src.get_u64(), src.get_u64(), src.get_u64());
        let swarm_port = src.get_u16();
        let name_len = usize::from(src.get_u16());
        if name_len > MAX_NAME || src.len() < name_len {
            return None;
        }
        let (name, rest) = src.split_at(name_len);
        *src = rest;
        let name = std::str::from_utf8(name).ok()?;
        if name.chars().any(char::is_control) {
            return None;
        }
        let count = usize::from(take_u8(src)?);
        if count > MAX_MEMBERS {
            return None;
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = addr::decode(src).ok()?;
            if src.len() < 4 {
                return None;
            }
            members.push(MemberAddr {
                addr,
                age_s: src.get_u32(),
            });
        }
        Some(Self {
            channel: ChannelId(channel),
            role,
            latest,
            running,
            failed,
            swarm_port,
            name: name.to_owned(),
            members,
        })
    }
}

/// A follower name cut to what the wire carries: at most 64 bytes, no control characters.
pub fn clean_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_NAME {
            break;
        }
        out.push(c);
    }
    out
}

fn take_u8(src: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = src.split_first()?;
    *src = rest;
    Some(b)
}

/// Zero padding only, so each accepted request has one encoding.
fn take_padding(src: &[u8]) -> Option<usize> {
    src.iter().all(|&b| b == 0).then_some(src.len())
}

impl Message {
    /// A STATUS request padded to the minimum body.
    pub fn status_request(status: Status) -> Self {
        let padding = MIN_REQUEST_BODY.saturating_sub(status.encoded_len());
        Self::StatusRequest { status, padding }
    }

    /// A MANIFEST request padded to the minimum body.
    pub fn manifest_request(content_id: ContentId, offset: u32) -> Self {
        Self::ManifestRequest {
            content_id,
            offset,
            padding: MIN_REQUEST_BODY - 36,
        }
    }

    /// An ANNOUNCE padded to the minimum body, as large as the STATUS request it causes.
    pub fn announce(channel: ChannelId, role: Role) -> Self {
        Self::Announce {
            channel,
            role,
            padding: MIN_REQUEST_BODY - 33,
        }
    }

    fn kind_and_service(&self) -> (FrameType, Service) {
        match self {
            Message::StatusRequest { .. } => (FrameType::REQUEST, STATUS),
            Message::StatusResponse(_) => (FrameType::RESPONSE, STATUS),
            Message::Record(_) => (FrameType::REQUEST, RECORD),
            Message::ManifestRequest { .. } => (FrameType::REQUEST, MANIFEST),
            Message::ManifestChunk { .. } => (FrameType::RESPONSE, MANIFEST),
            Message::ManifestError(_) => (FrameType::ERROR, MANIFEST),
            Message::Announce { .. } => (FrameType::REQUEST, ANNOUNCE),
        }
    }

    /// The whole datagram: header and body.
    pub fn to_datagram(&self, transaction: u32) -> Vec<u8> {
        let mut body = BytesMut::new();
        match self {
            Message::StatusRequest { status, padding } => {
                status.encode(&mut body);
                body.put_bytes(0, *padding);
            }
            Message::StatusResponse(status) => status.encode(&mut body),
            Message::Record(record) => body.put_slice(record.as_bytes()),
            Message::ManifestRequest {
                content_id,
                offset,
                padding,
            } => {
                body.put_slice(&content_id.0);
                body.put_u32(*offset);
                body.put_bytes(0, *padding);
            }
            Message::ManifestChunk {
                content_id,
                offset,
                total,
                data,
            } => {
                body.put_slice(&content_id.0);
                body.put_u32(*offset);
                body.put_u32(*total);
                body.put_slice(data);
            }
            Message::ManifestError(e) => e.encode(&mut body),
            Message::Announce {
                channel,
                role,
                padding,
            } => {
                body.put_slice(&channel.0);
                body.put_u8(*role as u8);
                body.put_bytes(0, *padding);
            }
        }
        let (kind, service) = self.kind_and_service();
        let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
        let mut header = Header::new(kind, service, RequestId(transaction), body.len() as u32);
        header.version = DATAGRAM_VERSION;
        header.encode(&mut out);
        out.put_slice(&body);
        out.to_vec()
    }

    /// Decodes one datagram; `None` for anything that is not exactly one valid gossip frame
    /// (dropped without an answer, §8.3). A RECORD whose signature fails is `Err`, so that the
    /// receiver can log the rejection (§8.4).
    pub fn from_datagram(
        datagram: &[u8],
    ) -> Option<Result<(u32, Self), super::record::RecordError>> {
        if datagram.len() < HEADER_LEN || datagram.len() > MAX_DATAGRAM {
            return None;
        }
        let mut h = &datagram[..HEADER_LEN];
        let (kind, magic, version, service) = (h.get_u8(), h.get_u8(), h.get_u8(), h.get_u8());
        let transaction = h.get_u32();
        let length = h.get_u32() as usize;
        if magic != ferry_protocol::MAGIC
            || version != DATAGRAM_VERSION
            || length != datagram.len() - HEADER_LEN
        {
            return None;
        }
        let mut body = &datagram[HEADER_LEN..];
        let message = match (FrameType(kind), Service(service)) {
            (FrameType::REQUEST, STATUS) => {
                if body.len() < MIN_REQUEST_BODY {
                    return None;
                }
                let status = Status::decode(&mut body)?;
                let padding = take_padding(body)?;
                Message::StatusRequest { status, padding }
            }
            (FrameType::RESPONSE, STATUS) => {
                let status = Status::decode(&mut body)?;
                if !body.is_empty() {
                    return None;
                }
                Message::StatusResponse(status)
            }
            (FrameType::REQUEST, RECORD) => {
                if body.len() > MAX_RECORD {
                    return None;
                }
                match SignedRelease::decode(body) {
                    Ok(record) => Message::Record(record),
                    Err(e) => return Some(Err(e)),
                }
            }
            (FrameType::REQUEST, MANIFEST) => {
                if body.len() < MIN_REQUEST_BODY {
                    return None;
                }
                let mut content_id = [0u8; 32];
                body.copy_to_slice(&mut content_id);
                let offset = body.get_u32();
                let padding = take_padding(body)?;
                Message::ManifestRequest {
                    content_id: ContentId(content_id),
                    offset,
                    padding,
                }
            }
            (FrameType::RESPONSE, MANIFEST) => {
                if body.len() < 40 + 1 || body.len() > 40 + CHUNK {
                    return None;
                }
                let mut content_id = [0u8; 32];
                body.copy_to_slice(&mut content_id);
                let offset = body.get_u32();
                let total = body.get_u32();
                // A chunk lies inside the manifest it is part of.
                if u64::from(offset) + body.len() as u64 > u64::from(total) {
                    return None;
                }
                Message::ManifestChunk {
                    content_id: ContentId(content_id),
                    offset,
                    total,
                    data: Bytes::copy_from_slice(body),
                }
            }
            (FrameType::ERROR, MANIFEST) => {
                Message::ManifestError(ErrorBody::decode(Bytes::copy_from_slice(body)).ok()?)
            }
            (FrameType::REQUEST, ANNOUNCE) => {
                if body.len() < MIN_REQUEST_BODY {
                    return None;
                }
                let mut channel = [0u8; 32];
                body.copy_to_slice(&mut channel);
                // Observers only ask; they never announce themselves.
                let role = match Role::from_u8(body.get_u8())? {
                    Role::Observer => return None,
                    role => role,
                };
                let padding = take_padding(body)?;
                Message::Announce {
                    channel: ChannelId(channel),
                    role,
                    padding,
                }
            }
            _ => return None,
        };
        Some(Ok((transaction, message)))
    }
}

/// Fuzzing entry: decode, re-encode, compare (every accepted datagram but an error has exactly
/// one encoding).
#[cfg(any(fuzzing, test))]
pub fn fuzz_gossip(data: &[u8]) {
    if let Some(Ok((tx, message))) = Message::from_datagram(data) {
        let again = message.to_datagram(tx);
        if !matches!(message, Message::ManifestError(_)) {
            assert_eq!(again, data);
        }
        assert_eq!(
            Message::from_datagram(&again).and_then(Result::ok),
            Some((tx, message))
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fleet::record::tests::{release, test_key};

    pub(crate) fn status(members: Vec<SocketAddr>) -> Status {
        let members = members
            .into_iter()
            .map(|addr| MemberAddr { addr, age_s: 5 })
            .collect();
        Status {
            channel: test_key().id(),
            role: Role::Follower,
            latest: 3,
            running: 2,
            failed: 0,
            swarm_port: 7000,
            name: "node-1".into(),
            members,
        }
    }

    fn examples() -> Vec<Message> {
        let v4: SocketAddr = "192.0.2.1:7070".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:7070".parse().unwrap();
        vec![
            Message::status_request(status(vec![v4, v6])),
            Message::StatusResponse(status(vec![])),
            Message::Record(release(&test_key(), 3)),
            Message::manifest_request(ContentId([7; 32]), 1024),
            Message::ManifestChunk {
                content_id: ContentId([7; 32]),
                offset: 1024,
                total: 2000,
                data: Bytes::from(vec![5u8; 976]),
            },
            Message::ManifestError(ErrorBody::new(UNKNOWN_RELEASE, "no such release here")),
            Message::announce(test_key().id(), Role::Follower),
        ]
    }

    #[test]
    fn every_message_round_trips_within_the_datagram_limit() {
        for message in examples() {
            let datagram = message.to_datagram(0x0102_0304);
            assert!(datagram.len() <= MAX_DATAGRAM, "{message:?}");
            assert_eq!(
                Message::from_datagram(&datagram).unwrap().unwrap(),
                (0x0102_0304, message.clone())
            );
            fuzz_gossip(&datagram);
            for len in 0..datagram.len() {
                fuzz_gossip(&datagram[..len]);
            }
        }
    }

    #[test]
    fn requests_are_at_least_512_bytes_and_replies_at_most_four_times_that() {
        let request = Message::status_request(status(vec![])).to_datagram(1);
        assert_eq!(request.len(), HEADER_LEN + MIN_REQUEST_BODY);
        let full = status(vec!["[2001:db8::1]:1".parse().unwrap(); MAX_MEMBERS]);
        let mut full = full;
        full.name = "n".repeat(MAX_NAME);
        let reply = Message::StatusResponse(full).to_datagram(1).len();
        let record = HEADER_LEN + MAX_RECORD;
        assert!(reply + record <= 4 * request.len(), "{reply} + {record}");
        let chunk = Message::ManifestChunk {
            content_id: ContentId([0; 32]),
            offset: 0,
            total: CHUNK as u32,
            data: Bytes::from(vec![1u8; CHUNK]),
        };
        assert!(chunk.to_datagram(1).len() <= 4 * request.len());
    }

    #[test]
    fn short_requests_nonzero_padding_and_oversized_lists_are_dropped() {
        let mut short = Message::StatusRequest {
            status: status(vec![]),
            padding: 0,
        }
        .to_datagram(1);
        assert!(Message::from_datagram(&short).is_none());
        let mut padded = Message::status_request(status(vec![])).to_datagram(1);
        *padded.last_mut().unwrap() = 1;
        assert!(Message::from_datagram(&padded).is_none());
        short.truncate(HEADER_LEN);
        assert!(Message::from_datagram(&short).is_none());
        let mut many = status(vec!["192.0.2.1:1".parse().unwrap(); MAX_MEMBERS]);
        many.members.push(MemberAddr {
            addr: "192.0.2.2:1".parse().unwrap(),
            age_s: NEVER,
        });
        let datagram = Message::StatusResponse(many).to_datagram(1);
        assert!(Message::from_datagram(&datagram).is_none());
    }

    #[test]
    fn an_announce_is_512_bytes_of_body_and_an_observer_or_short_one_is_dropped() {
        let channel = test_key().id();
        let datagram = Message::announce(channel, Role::Publisher).to_datagram(0);
        assert_eq!(datagram.len(), HEADER_LEN + MIN_REQUEST_BODY);
        assert_eq!(&datagram[HEADER_LEN..HEADER_LEN + 32], &channel.0);
        assert_eq!(datagram[HEADER_LEN + 32], 2);
        let observer = Message::Announce {
            channel,
            role: Role::Observer,
            padding: MIN_REQUEST_BODY - 33,
        };
        assert!(Message::from_datagram(&observer.to_datagram(0)).is_none());
        let short = Message::Announce {
            channel,
            role: Role::Follower,
            padding: 10,
        };
        assert!(Message::from_datagram(&short.to_datagram(0)).is_none());
        let mut dirty = datagram.clone();
        *dirty.last_mut().unwrap() = 1;
        assert!(Message::from_datagram(&dirty).is_none());
    }

    #[test]
    fn a_chunk_past_its_total_is_dropped() {
        let chunk = Message::ManifestChunk {
            content_id: ContentId([0; 32]),
            offset: 100,
            total: 150,
            data: Bytes::from(vec![1u8; 51]),
        };
        assert!(Message::from_datagram(&chunk.to_datagram(1)).is_none());
    }

    #[test]
    fn names_are_cut_to_64_bytes_without_control_characters() {
        assert_eq!(clean_name("a\tb\nc"), "abc");
        assert_eq!(clean_name(&"é".repeat(40)).len(), 64);
    }

    proptest::proptest! {
        #[test]
        fn random_datagrams_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1400)) {
            fuzz_gossip(&data);
        }
    }
}
