//! The UDP tracker (spec/P2P.md §5): connect/announce in the style of BEP 15, every datagram
//! one plaintext Ferry frame. Request id = transaction id.
//!
//! ```text
//!  service 0x40 CONNECT   REQUEST  body: "FERRYTRK" | 8 zero bytes                      (16)
//!                         RESPONSE body: connection_id[16]                               (16)
//!  service 0x41 ANNOUNCE  REQUEST  body: connection_id[16] | content_id[32] | peer_id[20]
//!                                        | port u16 | uploaded u64 | downloaded u64
//!                                        | left u64 | event u8 | wanted u16              (97)
//!                         RESPONSE body: interval_s u32 | leechers u32 | seeders u32
//!                                        | count u16 | count × (family u8 | addr | port u16)
//!                         ERROR    body: ferry error body (only to a valid connection id)
//!  connection_id = expiry_ms u64 | HMAC-SHA256(secret, ip | port | expiry_ms)[..8]
//! ```
//!
//! The connection id is stateless: the tracker recomputes the MAC, so it keeps nothing per
//! connect. A request without a valid connection id is unauthenticated and gets at most as many
//! bytes as it sent (a connect reply is exactly as long as a connect request), and a malformed
//! or forged one gets nothing at all: the tracker cannot be used to amplify traffic.
//!
//! [`Tracker`] is the sans-IO core; [`server`] and [`client`] are the tokio shells.

pub mod client;
pub mod server;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_protocol::{ErrorBody, ErrorCode, FrameType, Header, RequestId, Service, HEADER_LEN};
use hmac::{Hmac, Mac};
use rand::seq::SliceRandom;
use sha2::Sha256;

use crate::addr;
use crate::manifest::ContentId;
use crate::wire::PeerId;

/// Connect service byte.
pub const CONNECT: Service = Service(0x40);
/// Announce service byte.
pub const ANNOUNCE: Service = Service(0x41);
/// Body of a connect request.
pub const CONNECT_MAGIC: [u8; 16] = *b"FERRYTRK\0\0\0\0\0\0\0\0";
/// A connection id stays valid this long.
pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(120);
/// Largest datagram the tracker reads or sends.
pub const MAX_DATAGRAM: usize = 1400;
/// Most peers in one announce reply.
pub const MAX_PEERS_PER_REPLY: usize = 150;

/// A connection id as carried on the wire.
pub type ConnectionId = [u8; 16];

/// Announce events (BEP 15 numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceEvent {
    None = 0,
    Completed = 1,
    Started = 2,
    Stopped = 3,
}

impl AnnounceEvent {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::None,
            1 => Self::Completed,
            2 => Self::Started,
            3 => Self::Stopped,
            _ => return None,
        })
    }
}

/// An announce request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    pub connection_id: ConnectionId,
    pub content_id: ContentId,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: AnnounceEvent,
    pub wanted: u16,
}

impl Announce {
    pub const LEN: usize = 97;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.connection_id);
        dst.put_slice(&self.content_id.0);
        dst.put_slice(&self.peer_id.0);
        dst.put_u16(self.port);
        dst.put_u64(self.uploaded);
        dst.put_u64(self.downloaded);
        dst.put_u64(self.left);
        dst.put_u8(self.event as u8);
        dst.put_u16(self.wanted);
    }

    pub fn decode(mut src: &[u8]) -> Option<Self> {
        if src.len() != Self::LEN {
            return None;
        }
        let mut take = |n: usize| {
            let (a, b) = src.split_at(n);
            src = b;
            a
        };
        let connection_id = take(16).try_into().ok()?;
        let content_id = ContentId(take(32).try_into().ok()?);
        let peer_id = PeerId(take(20).try_into().ok()?);
        let mut rest = take(Self::LEN - 68);
        Some(Self {
            connection_id,
            content_id,
            peer_id,
            port: rest.get_u16(),
            uploaded: rest.get_u64(),
            downloaded: rest.get_u64(),
            left: rest.get_u64(),
            event: AnnounceEvent::from_u8(rest.get_u8())?,
            wanted: rest.get_u16(),
        })
    }
}

/// An announce reply body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceReply {
    pub interval: Duration,
    pub leechers: u32,
    pub seeders: u32,
    pub peers: Vec<SocketAddr>,
}

impl AnnounceReply {
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u32(self.interval.as_secs().min(u32::MAX as u64) as u32);
        dst.put_u32(self.leechers);
        dst.put_u32(self.seeders);
        dst.put_u16(self.peers.len() as u16);
        for peer in &self.peers {
            addr::encode(peer, dst);
        }
    }

    pub fn decode(mut src: &[u8]) -> Option<Self> {
        if src.len() < 14 {
            return None;
        }
        let interval = Duration::from_secs(src.get_u32() as u64);
        let leechers = src.get_u32();
        let seeders = src.get_u32();
        let count = src.get_u16() as usize;
        let mut peers = Vec::with_capacity(count.min(MAX_PEERS_PER_REPLY));
        for _ in 0..count {
            peers.push(addr::decode(&mut src).ok()?);
        }
        if !src.is_empty() {
            return None;
        }
        Some(Self {
            interval,
            leechers,
            seeders,
            peers,
        })
    }
}

/// Builds one datagram: a plaintext Ferry frame.
pub fn frame(kind: FrameType, service: Service, transaction: u32, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    Header::new(kind, service, RequestId(transaction), body.len() as u32).encode(&mut out);
    out.put_slice(body);
    out.to_vec()
}

/// Splits a datagram into its header and body; `None` if it is not exactly one valid frame.
pub fn parse(datagram: &[u8]) -> Option<(Header, Bytes)> {
    if datagram.len() < HEADER_LEN || datagram.len() > MAX_DATAGRAM {
        return None;
    }
    let header = Header::decode(&datagram[..HEADER_LEN]).ok()?;
    if header.version != ferry_protocol::VERSION
        || header.length as usize != datagram.len() - HEADER_LEN
    {
        return None;
    }
    Some((header, Bytes::copy_from_slice(&datagram[HEADER_LEN..])))
}

/// Tracker settings.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Announce interval told to peers; peers silent for two intervals are dropped.
    pub interval: Duration,
    pub max_swarms: usize,
    pub max_peers_per_swarm: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            max_swarms: 10_000,
            max_peers_per_swarm: 10_000,
        }
    }
}

#[derive(Debug)]
struct PeerEntry {
    addr: SocketAddr,
    left: u64,
    last_seen: Instant,
}

/// The tracker core: datagrams in, datagrams out.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    secret: [u8; 32],
    epoch: Instant,
    swarms: HashMap<ContentId, HashMap<PeerId, PeerEntry>>,
}

impl Tracker {
    pub fn new(config: TrackerConfig, now: Instant) -> Self {
        Self::with_secret(config, rand::random(), now)
    }

    pub fn with_secret(config: TrackerConfig, secret: [u8; 32], now: Instant) -> Self {
        Self {
            config,
            secret,
            epoch: now,
            swarms: HashMap::new(),
        }
    }

    fn mac(&self, from: SocketAddr, expiry_ms: u64) -> [u8; 8] {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            // HMAC accepts keys of any length.
            Err(_) => unreachable!("hmac key of 32 bytes"),
        };
        match from.ip() {
            IpAddr::V4(ip) => mac.update(&ip.to_ipv6_mapped().octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&from.port().to_be_bytes());
        mac.update(&expiry_ms.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag[..8]);
        out
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A connection id for `from`, valid for two minutes.
    pub fn connection_id(&self, from: SocketAddr, now: Instant) -> ConnectionId {
        let expiry = self.now_ms(now) + CONNECTION_ID_LIFETIME.as_millis() as u64;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&expiry.to_be_bytes());
        id[8..].copy_from_slice(&self.mac(from, expiry));
        id
    }

    /// Whether `id` was issued to `from` and has not expired.
    pub fn check_connection_id(&self, id: &ConnectionId, from: SocketAddr, now: Instant) -> bool {
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&id[..8]);
        let expiry = u64::from_be_bytes(expiry);
        let now_ms = self.now_ms(now);
        if expiry < now_ms || expiry > now_ms + CONNECTION_ID_LIFETIME.as_millis() as u64 {
            return false;
        }
        ferry_protocol::crypto::mac_eq(&self.mac(from, expiry), &id[8..])
    }

    /// Handles one datagram from `from`; returns the reply, if any.
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let (header, body) = parse(datagram)?;
        if header.kind != FrameType::REQUEST {
            return None;
        }
        let tx = header.id.0;
        match header.service {
            CONNECT => {
                // Exactly the magic: the reply (same length) never exceeds the request.
                if body.as_ref() != CONNECT_MAGIC {
                    return None;
                }
                let id = self.connection_id(from, now);
                let reply = frame(FrameType::RESPONSE, CONNECT, tx, &id);
                debug_assert!(reply.len() <= datagram.len());
                Some(reply)
            }
            ANNOUNCE => {
                // The connection id is checked before anything else is looked at.
                if body.len() < 16 {
                    return None;
                }
                let mut id = [0u8; 16];
                id.copy_from_slice(&body[..16]);
                if !self.check_connection_id(&id, from, now) {
                    tracing::debug!(%from, "announce with a bad connection id; no answer");
                    return None;
                }
                let Some(announce) = Announce::decode(&body) else {
                    let error = ErrorBody::new(ErrorCode::MALFORMED_MESSAGE, "malformed announce");
                    let mut b = Vec::new();
                    error.encode(&mut b);
                    return Some(frame(FrameType::ERROR, ANNOUNCE, tx, &b));
                };
                let reply = match self.announce(&announce, from, now) {
                    Ok(reply) => reply,
                    Err(error) => {
                        let mut b = Vec::new();
                        error.encode(&mut b);
                        return Some(frame(FrameType::ERROR, ANNOUNCE, tx, &b));
                    }
                };
                let mut b = Vec::new();
                reply.encode(&mut b);
                Some(frame(FrameType::RESPONSE, ANNOUNCE, tx, &b))
            }
            _ => None,
        }
    }

    fn announce(
        &mut self,
        a: &Announce,
        from: SocketAddr,
        now: Instant,
    ) -> Result<AnnounceReply, ErrorBody> {
        let expiry = self.config.interval * 2;
        if !self.swarms.contains_key(&a.content_id) && self.swarms.len() >= self.config.max_swarms {
            self.expire(now);
            if self.swarms.len() >= self.config.max_swarms {
                return Err(ErrorBody::new(ErrorCode::BUSY, "too many swarms"));
            }
        }
        let swarm = self.swarms.entry(a.content_id).or_default();
        swarm.retain(|_, p| now.saturating_duration_since(p.last_seen) < expiry);
        if a.event == AnnounceEvent::Stopped {
            swarm.remove(&a.peer_id);
        } else if a.port != 0 {
            if !swarm.contains_key(&a.peer_id) && swarm.len() >= self.config.max_peers_per_swarm {
                return Err(ErrorBody::new(ErrorCode::BUSY, "swarm is full"));
            }
            swarm.insert(
                a.peer_id,
                PeerEntry {
                    addr: SocketAddr::new(from.ip(), a.port),
                    left: a.left,
                    last_seen: now,
                },
            );
        }
        let seeders = swarm.values().filter(|p| p.left == 0).count() as u32;
        let leechers = swarm.len() as u32 - seeders;
        let want = (a.wanted as usize).min(MAX_PEERS_PER_REPLY);
        let mut peers: Vec<SocketAddr> = swarm
            .iter()
            .filter(|(id, p)| **id != a.peer_id && (a.left > 0 || p.left > 0))
            .map(|(_, p)| p.addr)
            .collect();
        peers.shuffle(&mut rand::thread_rng());
        peers.truncate(want);
        // Keep the reply within one datagram.
        while 12 + 14 + peers.iter().map(addr::encoded_len).sum::<usize>() > MAX_DATAGRAM {
            peers.pop();
        }
        if swarm.is_empty() {
            self.swarms.remove(&a.content_id);
        }
        Ok(AnnounceReply {
            interval: self.config.interval,
            leechers,
            seeders,
            peers,
        })
    }

    /// Drops peers that missed two intervals, and empty swarms.
    pub fn expire(&mut self, now: Instant) {
        let expiry = self.config.interval * 2;
        for swarm in self.swarms.values_mut() {
            swarm.retain(|_, p| now.saturating_duration_since(p.last_seen) < expiry);
        }
        self.swarms.retain(|_, s| !s.is_empty());
    }

    /// Peers currently listed for `content_id`.
    pub fn peer_count(&self, content_id: &ContentId) -> usize {
        self.swarms.get(content_id).map_or(0, |s| s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn connect(t: &mut Tracker, from: SocketAddr, now: Instant) -> ConnectionId {
        let req = frame(FrameType::REQUEST, CONNECT, 7, &CONNECT_MAGIC);
        let reply = t.handle_datagram(&req, from, now).unwrap();
        assert!(reply.len() <= req.len(), "amplification");
        let (h, body) = parse(&reply).unwrap();
        assert_eq!(
            (h.kind, h.service, h.id),
            (FrameType::RESPONSE, CONNECT, RequestId(7))
        );
        body.as_ref().try_into().unwrap()
    }

    fn announce_req(
        id: ConnectionId,
        peer: u8,
        port: u16,
        left: u64,
        event: AnnounceEvent,
    ) -> Vec<u8> {
        let a = Announce {
            connection_id: id,
            content_id: ContentId([1; 32]),
            peer_id: PeerId([peer; 20]),
            port,
            uploaded: 0,
            downloaded: 0,
            left,
            event,
            wanted: 50,
        };
        let mut b = Vec::new();
        a.encode(&mut b);
        assert_eq!(b.len(), Announce::LEN);
        assert_eq!(Announce::decode(&b), Some(a));
        frame(FrameType::REQUEST, ANNOUNCE, 9, &b)
    }

    fn announce(
        t: &mut Tracker,
        from: SocketAddr,
        peer: u8,
        left: u64,
        event: AnnounceEvent,
        now: Instant,
    ) -> Option<AnnounceReply> {
        let id = connect(t, from, now);
        let reply =
            t.handle_datagram(&announce_req(id, peer, from.port(), left, event), from, now)?;
        let (h, body) = parse(&reply).unwrap();
        assert_eq!(h.kind, FrameType::RESPONSE);
        AnnounceReply::decode(&body)
    }

    #[test]
    fn announce_returns_other_peers() {
        let now = Instant::now();
        let mut t = Tracker::new(TrackerConfig::default(), now);
        let r = announce(&mut t, addr(1), 1, 0, AnnounceEvent::Started, now).unwrap();
        assert!(r.peers.is_empty());
        assert_eq!(r.seeders, 1);
        let r = announce(&mut t, addr(2), 2, 100, AnnounceEvent::Started, now).unwrap();
        assert_eq!(r.peers, vec![addr(1)]);
        assert_eq!((r.seeders, r.leechers), (1, 1));
        // Stopped removes.
        announce(&mut t, addr(1), 1, 0, AnnounceEvent::Stopped, now).unwrap();
        assert_eq!(t.peer_count(&ContentId([1; 32])), 1);
    }

    #[test]
    fn bad_connection_ids_get_no_answer() {
        let now = Instant::now();
        let mut t = Tracker::new(TrackerConfig::default(), now);
        let id = connect(&mut t, addr(1), now);
        // Forged.
        let mut forged = id;
        forged[15] ^= 1;
        assert_eq!(
            t.handle_datagram(
                &announce_req(forged, 1, 1, 0, AnnounceEvent::None),
                addr(1),
                now
            ),
            None
        );
        // Issued to another address (spoofed source).
        assert_eq!(
            t.handle_datagram(
                &announce_req(id, 1, 1, 0, AnnounceEvent::None),
                addr(2),
                now
            ),
            None
        );
        // Expired after two minutes.
        let later = now + CONNECTION_ID_LIFETIME + Duration::from_millis(1);
        assert_eq!(
            t.handle_datagram(
                &announce_req(id, 1, 1, 0, AnnounceEvent::None),
                addr(1),
                later
            ),
            None
        );
        // Valid within the lifetime.
        let soon = now + Duration::from_secs(119);
        assert!(t
            .handle_datagram(
                &announce_req(id, 1, 1, 0, AnnounceEvent::None),
                addr(1),
                soon
            )
            .is_some());
        // Another tracker's (another secret's) ids are worthless.
        let other = Tracker::new(TrackerConfig::default(), now);
        assert!(!other.check_connection_id(&id, addr(1), now));
    }

    #[test]
    fn unauthenticated_requests_are_never_amplified() {
        let now = Instant::now();
        let mut t = Tracker::new(TrackerConfig::default(), now);
        // Short, padded-wrong or junk connects: silence.
        assert_eq!(
            t.handle_datagram(
                &frame(FrameType::REQUEST, CONNECT, 1, b"FERRYTRK"),
                addr(1),
                now
            ),
            None
        );
        assert_eq!(
            t.handle_datagram(
                &frame(FrameType::REQUEST, CONNECT, 1, &[0; 16]),
                addr(1),
                now
            ),
            None
        );
        assert_eq!(t.handle_datagram(b"\x10\xfe\x01", addr(1), now), None);
        // Malformed announce without a valid id: silence.
        assert_eq!(
            t.handle_datagram(
                &frame(FrameType::REQUEST, ANNOUNCE, 1, &[0; 40]),
                addr(1),
                now
            ),
            None
        );
        // Lying length field: silence.
        let mut d = frame(FrameType::REQUEST, CONNECT, 1, &CONNECT_MAGIC);
        d.push(0);
        assert_eq!(t.handle_datagram(&d, addr(1), now), None);
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            if let Some(reply) = t.handle_datagram(&junk, addr(1), now) {
                assert!(reply.len() <= junk.len());
            }
        }
    }

    #[test]
    fn peers_missing_two_intervals_expire() {
        let now = Instant::now();
        let config = TrackerConfig {
            interval: Duration::from_secs(60),
            ..Default::default()
        };
        let mut t = Tracker::new(config, now);
        announce(&mut t, addr(1), 1, 0, AnnounceEvent::Started, now).unwrap();
        announce(
            &mut t,
            addr(2),
            2,
            5,
            AnnounceEvent::Started,
            now + Duration::from_secs(100),
        )
        .unwrap();
        // Peer 1 was last seen 119 s ago: still listed.
        let r = announce(
            &mut t,
            addr(3),
            3,
            5,
            AnnounceEvent::Started,
            now + Duration::from_secs(119),
        )
        .unwrap();
        assert!(r.peers.contains(&addr(1)));
        // At 120 s it has missed two intervals.
        let r = announce(
            &mut t,
            addr(3),
            3,
            5,
            AnnounceEvent::None,
            now + Duration::from_secs(120),
        )
        .unwrap();
        assert!(!r.peers.contains(&addr(1)));
        assert!(r.peers.contains(&addr(2)));
        t.expire(now + Duration::from_secs(1000));
        assert_eq!(t.peer_count(&ContentId([1; 32])), 0);
    }

    #[test]
    fn replies_fit_one_datagram() {
        let now = Instant::now();
        let mut t = Tracker::new(TrackerConfig::default(), now);
        for i in 0..250u16 {
            announce(
                &mut t,
                SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 7000)),
                (i % 250) as u8,
                5,
                AnnounceEvent::Started,
                now,
            );
        }
        let id = connect(&mut t, addr(1), now);
        let reply = t
            .handle_datagram(
                &announce_req(id, 251, 1, 5, AnnounceEvent::None),
                addr(1),
                now,
            )
            .unwrap();
        assert!(reply.len() <= MAX_DATAGRAM);
        let (_, body) = parse(&reply).unwrap();
        assert!(AnnounceReply::decode(&body).unwrap().peers.len() <= 50);
    }
}
