//! Swarm peers through the hub (spec/HUB.md §3.8, §3.9): present nodes announce the content ids
//! they serve (`ANNOUNCE`, 0x68) and ask which present nodes serve one (`PEERS`, 0x69). The
//! index is small and bounded: a limit of content ids per identity and a limit of entries in
//! all, and only a node with a presence may announce, so every entry names a node the hub can
//! relay to or coordinate a punch with.
//!
//! This module is a child of `server` (wired there with `#[path]`) so that it reads the hub's
//! presence table directly; the client's side is an `impl` of [`HubConn`] below.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_protocol::identity::{NodeId, ID_HASH_LEN};
use ferry_protocol::{ErrorCode, Service};

use super::{hints_of, lock, malformed, Conn, Refusal};
use crate::client::{HubConn, HubError};
use crate::wire::{self, WireError, MAX_ADDRS};

/// Announce or withdraw content ids (HUB.md §3.8).
pub const ANNOUNCE: Service = Service(0x68);
/// The present nodes that serve a content id (HUB.md §3.9).
pub const PEERS: Service = Service(0x69);

/// Bytes of a content id (P2P.md §2: the manifest's SHA-256).
pub const CONTENT_ID_LEN: usize = 32;
/// Most content ids one ANNOUNCE carries.
pub const MAX_ANNOUNCE: usize = 32;
/// Most nodes one PEERS answer lists.
pub const MAX_PEERS: usize = 50;

/// `ANNOUNCE` flag: remove the listed content ids instead of adding them.
pub const WITHDRAW: u8 = 0x01;

/// The hub's content index codes (category 0x07, HUB.md §5).
pub mod codes {
    use ferry_protocol::ErrorCode;
    /// An ANNOUNCE from an identity with no presence at the hub.
    pub const NOT_PRESENT: ErrorCode = ErrorCode(0x0710);
    /// The identity already announces as many content ids as the hub allows one identity.
    pub const ANNOUNCE_LIMIT: ErrorCode = ErrorCode(0x0711);
    /// The hub's index holds as many entries as it allows, all of present nodes.
    pub const INDEX_FULL: ErrorCode = ErrorCode(0x0712);
}

/// A content id.
pub type ContentId = [u8; CONTENT_ID_LEN];

/// `flags: u8 | count: u8 (0..=32) | content_id[32] * count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub withdraw: bool,
    pub content: Vec<ContentId>,
}

impl AnnounceRequest {
    pub fn to_bytes(&self) -> Bytes {
        let content = &self.content[..self.content.len().min(MAX_ANNOUNCE)];
        let mut b = BytesMut::with_capacity(2 + content.len() * CONTENT_ID_LEN);
        b.put_u8(if self.withdraw { WITHDRAW } else { 0 });
        b.put_u8(content.len() as u8);
        for id in content {
            b.put_slice(id);
        }
        b.freeze()
    }

    pub fn decode(mut src: Bytes) -> Result<Self, WireError> {
        let flags = get_u8(&mut src)?;
        if flags & !WITHDRAW != 0 {
            return Err(WireError::Undefined {
                field: "announce flags",
                value: flags,
            });
        }
        let count = usize::from(get_u8(&mut src)?);
        if count > MAX_ANNOUNCE {
            return Err(WireError::TooLong {
                field: "content ids",
                len: count,
                max: MAX_ANNOUNCE,
            });
        }
        let content = (0..count)
            .map(|_| get_content_id(&mut src))
            .collect::<Result<_, _>>()?;
        end(&src)?;
        Ok(Self {
            withdraw: flags & WITHDRAW != 0,
            content,
        })
    }
}

/// `held: u16`: how many content ids the caller announces after this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceResponse {
    pub held: u16,
}

impl AnnounceResponse {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.held.to_be_bytes())
    }

    pub fn decode(mut src: Bytes) -> Result<Self, WireError> {
        need(&src, 2)?;
        let held = src.get_u16();
        end(&src)?;
        Ok(Self { held })
    }
}

/// `content_id[32]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersRequest {
    pub content: ContentId,
}

impl PeersRequest {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.content)
    }

    pub fn decode(mut src: Bytes) -> Result<Self, WireError> {
        let content = get_content_id(&mut src)?;
        end(&src)?;
        Ok(Self { content })
    }
}

/// One present node that serves the content id: its id, the key it is present under (its
/// name, or its id's text) for `RELAY` and `PUNCH`, and its hints as `RESOLVE` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub id: NodeId,
    pub via: String,
    pub addrs: Vec<SocketAddr>,
}

/// `count: u8 (0..=50) | (id | via: str | addrs) * count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersResponse {
    pub peers: Vec<PeerEntry>,
}

impl PeersResponse {
    pub fn to_bytes(&self) -> Bytes {
        let peers = &self.peers[..self.peers.len().min(MAX_PEERS)];
        let mut b = BytesMut::new();
        b.put_u8(peers.len() as u8);
        for p in peers {
            b.put_slice(p.id.as_bytes());
            // Names are at most 32 bytes and ids' text 34.
            b.put_u16(p.via.len() as u16);
            b.put_slice(p.via.as_bytes());
            let addrs = &p.addrs[..p.addrs.len().min(MAX_ADDRS)];
            b.put_u8(addrs.len() as u8);
            for a in addrs {
                wire::put_addr(&mut b, a);
            }
        }
        b.freeze()
    }

    pub fn decode(mut src: Bytes) -> Result<Self, WireError> {
        let count = usize::from(get_u8(&mut src)?);
        if count > MAX_PEERS {
            return Err(WireError::TooLong {
                field: "peers",
                len: count,
                max: MAX_PEERS,
            });
        }
        let mut peers = Vec::with_capacity(count);
        for _ in 0..count {
            need(&src, ID_HASH_LEN)?;
            let mut id = [0u8; ID_HASH_LEN];
            src.copy_to_slice(&mut id);
            need(&src, 2)?;
            let len = usize::from(src.get_u16());
            if len > 64 {
                return Err(WireError::TooLong {
                    field: "via",
                    len,
                    max: 64,
                });
            }
            need(&src, len)?;
            let via = String::from_utf8(src.split_to(len).to_vec()).map_err(|_| WireError::Utf8)?;
            let n = usize::from(get_u8(&mut src)?);
            if n > MAX_ADDRS {
                return Err(WireError::TooManyAddrs { count: n });
            }
            let addrs = (0..n)
                .map(|_| wire::get_addr(&mut src))
                .collect::<Result<_, _>>()?;
            peers.push(PeerEntry {
                id: NodeId::from_bytes(id),
                via,
                addrs,
            });
        }
        end(&src)?;
        Ok(Self { peers })
    }
}

fn need(src: &Bytes, n: usize) -> Result<(), WireError> {
    if src.remaining() < n {
        return Err(WireError::Short {
            need: n - src.remaining(),
        });
    }
    Ok(())
}

fn get_u8(src: &mut Bytes) -> Result<u8, WireError> {
    need(src, 1)?;
    Ok(src.get_u8())
}

fn get_content_id(src: &mut Bytes) -> Result<ContentId, WireError> {
    need(src, CONTENT_ID_LEN)?;
    let mut id = [0u8; CONTENT_ID_LEN];
    src.copy_to_slice(&mut id);
    Ok(id)
}

fn end(src: &Bytes) -> Result<(), WireError> {
    match src.remaining() {
        0 => Ok(()),
        n => Err(WireError::Trailing(n)),
    }
}

/// Bounds of the index (HUB.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLimits {
    /// Content ids one identity may announce at once.
    pub per_node: usize,
    /// (content id, node) entries in all.
    pub entries: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        Self {
            per_node: 64,
            entries: 100_000,
        }
    }
}

/// Content id → the nodes that announced it, and back, with which nodes are present now.
///
/// The hub tells the index when a node's presence starts ([`Index::arrive`]) and ends
/// ([`Index::depart`]), so the presence check is one lookup. A node's entries stay for a grace
/// period after its last presence ends (a node reconnecting on a new port keeps them without
/// announcing again) and are then dropped; lookups never list a node that is not present.
/// Every call costs the entries it touches (plus nodes whose grace ran out), never a scan of
/// the table.
#[derive(Debug)]
pub struct Index {
    limits: IndexLimits,
    grace: Duration,
    /// Per content id, its nodes by announce order (the key is a sequence number).
    by_content: HashMap<ContentId, BTreeMap<u64, NodeId>>,
    by_node: HashMap<NodeId, Held>,
    entries: usize,
    next_seq: u64,
    /// Present nodes: the keys each is present under (§3.4), latest last.
    present: HashMap<NodeId, Vec<String>>,
    /// Nodes whose last presence ended, with when their entries go, oldest first. An item is
    /// stale once the node came back or left again (its `Held::gone` no longer matches).
    leaving: VecDeque<(Instant, NodeId)>,
}

/// One node's entries: content id → its sequence number in `by_content`.
#[derive(Debug, Default)]
struct Held {
    content: HashMap<ContentId, u64>,
    /// When the entries go, while the node has no presence.
    gone: Option<Instant>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new(IndexLimits::default(), DEFAULT_GRACE)
    }
}

/// How long a node's entries outlive its last presence by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

impl Index {
    pub fn new(limits: IndexLimits, grace: Duration) -> Self {
        Self {
            limits,
            grace,
            by_content: HashMap::new(),
            by_node: HashMap::new(),
            entries: 0,
            next_seq: 0,
            present: HashMap::new(),
            leaving: VecDeque::new(),
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether `node` has a presence now.
    pub fn is_present(&self, node: &NodeId) -> bool {
        self.present.contains_key(node)
    }

    /// `node` became present under `key`; its entries, if any, stay.
    pub fn arrive(&mut self, node: NodeId, key: &str) {
        let keys = self.present.entry(node).or_default();
        keys.retain(|k| k != key);
        keys.push(key.to_owned());
        if let Some(held) = self.by_node.get_mut(&node) {
            held.gone = None;
        }
    }

    /// `node`'s presence under `key` ended; when it was its last, its entries go after the grace.
    pub fn depart(&mut self, node: NodeId, key: &str, now: Instant) {
        let Some(keys) = self.present.get_mut(&node) else {
            return;
        };
        keys.retain(|k| k != key);
        if !keys.is_empty() {
            return;
        }
        self.present.remove(&node);
        if let Some(held) = self.by_node.get_mut(&node) {
            let at = now + self.grace;
            held.gone = Some(at);
            self.leaving.push_back((at, node));
        }
        self.expire(now);
    }

    /// Drops the entries of nodes whose grace ran out by `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, node)) = self.leaving.front() {
            if at > now {
                break;
            }
            self.leaving.pop_front();
            self.drop_if_gone(node, Some(at));
        }
    }

    /// Drops `node`'s entries if it is still gone (at `at`, or at any time for `None`).
    fn drop_if_gone(&mut self, node: NodeId, at: Option<Instant>) {
        let gone = self
            .by_node
            .get(&node)
            .and_then(|h| h.gone)
            .is_some_and(|g| at.is_none_or(|at| at == g));
        if gone {
            let content: Vec<ContentId> = self.by_node[&node].content.keys().copied().collect();
            self.withdraw(node, &content);
        }
    }

    /// Adds `content` for `node`, which must be present (`NOT_PRESENT` otherwise). Returns how
    /// many content ids `node` announces now.
    pub fn announce(
        &mut self,
        node: NodeId,
        content: &[ContentId],
        now: Instant,
    ) -> Result<usize, Refusal> {
        self.expire(now);
        if !self.is_present(&node) {
            return Err((
                codes::NOT_PRESENT,
                "this identity has no presence at the hub; send PRESENCE first".into(),
            ));
        }
        let held = self.by_node.get(&node);
        let new: Vec<ContentId> = {
            let mut seen = HashSet::new();
            content
                .iter()
                .filter(|c| held.is_none_or(|h| !h.content.contains_key(*c)) && seen.insert(**c))
                .copied()
                .collect()
        };
        let count = held.map_or(0, |h| h.content.len());
        if count + new.len() > self.limits.per_node {
            return Err((
                codes::ANNOUNCE_LIMIT,
                format!(
                    "this identity announces {count} content ids and asked for {} more; the limit is {}",
                    new.len(),
                    self.limits.per_node
                ),
            ));
        }
        if self.entries + new.len() > self.limits.entries {
            // Make room from the nodes that left, before their grace runs out.
            while let Some((_, gone)) = self.leaving.pop_front() {
                self.drop_if_gone(gone, None);
                if self.entries + new.len() <= self.limits.entries {
                    break;
                }
            }
            if self.entries + new.len() > self.limits.entries {
                return Err((
                    codes::INDEX_FULL,
                    format!(
                        "the hub's index holds {} entries, its limit",
                        self.limits.entries
                    ),
                ));
            }
        }
        let held = self.by_node.entry(node).or_default();
        for c in new {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.by_content.entry(c).or_default().insert(seq, node);
            held.content.insert(c, seq);
            self.entries += 1;
        }
        Ok(held.content.len())
    }

    /// Removes `content` for `node`; returns how many it announces now.
    pub fn withdraw(&mut self, node: NodeId, content: &[ContentId]) -> usize {
        let Some(held) = self.by_node.get_mut(&node) else {
            return 0;
        };
        for c in content {
            if let Some(seq) = held.content.remove(c) {
                self.entries -= 1;
                if let Some(nodes) = self.by_content.get_mut(c) {
                    nodes.remove(&seq);
                    if nodes.is_empty() {
                        self.by_content.remove(c);
                    }
                }
            }
        }
        let left = held.content.len();
        if left == 0 {
            self.by_node.remove(&node);
        }
        left
    }

    /// The present nodes that announced `content`, other than `except`, latest announce first,
    /// each with the key it is present under (its latest).
    pub fn peers(
        &mut self,
        content: &ContentId,
        except: &NodeId,
        now: Instant,
    ) -> Vec<(NodeId, &str)> {
        self.expire(now);
        let Some(nodes) = self.by_content.get(content) else {
            return Vec::new();
        };
        nodes
            .values()
            .rev()
            .filter(|n| *n != except)
            .filter_map(|n| {
                let key = self.present.get(n)?.last()?;
                Some((*n, key.as_str()))
            })
            .take(MAX_PEERS)
            .collect()
    }

    /// The nodes that announced `content`, present or not, oldest first.
    pub fn nodes(&self, content: &ContentId) -> Vec<NodeId> {
        self.by_content
            .get(content)
            .map_or_else(Vec::new, |m| m.values().copied().collect())
    }
}

impl Conn {
    /// `ANNOUNCE` (HUB.md §3.8).
    pub(super) fn announce(&mut self, body: Bytes) -> Result<Bytes, Refusal> {
        let req = AnnounceRequest::decode(body).map_err(malformed)?;
        self.throttle()?;
        let mut index = lock(&self.shared.content);
        let held = if req.withdraw {
            index.withdraw(self.client, &req.content)
        } else {
            index.announce(self.client, &req.content, Instant::now())?
        };
        Ok(AnnounceResponse {
            held: held.min(usize::from(u16::MAX)) as u16,
        }
        .to_bytes())
    }

    /// `PEERS` (HUB.md §3.9): the present nodes other than the caller, newest announce first.
    pub(super) fn peers(&mut self, body: Bytes) -> Result<Bytes, Refusal> {
        let req = PeersRequest::decode(body).map_err(malformed)?;
        self.throttle()?;
        // Lock order: presences, then the index (as the presence changes take them).
        let online = lock(&self.shared.online);
        let mut index = lock(&self.shared.content);
        let peers = index
            .peers(&req.content, &self.client, Instant::now())
            .into_iter()
            .filter_map(|(id, via)| {
                let o = online.get(via).filter(|o| o.id == id)?;
                Some(PeerEntry {
                    id,
                    via: via.to_string(),
                    addrs: hints_of(o).into_iter().map(|(_, a)| a).collect(),
                })
            })
            .collect();
        Ok(PeersResponse { peers }.to_bytes())
    }
}

impl HubConn {
    /// Announces (or withdraws) content ids this node serves; returns how many it announces
    /// now. The identity must be present at the hub (on any connection).
    pub async fn announce(
        &mut self,
        content: &[ContentId],
        withdraw: bool,
    ) -> Result<usize, HubError> {
        let mut held = 0;
        for chunk in content.chunks(MAX_ANNOUNCE) {
            let req = AnnounceRequest {
                withdraw,
                content: chunk.to_vec(),
            };
            let (_, body) = self.request(ANNOUNCE, req.to_bytes()).await?;
            held = usize::from(
                AnnounceResponse::decode(body)
                    .map_err(|e| HubError::Protocol(e.to_string()))?
                    .held,
            );
        }
        Ok(held)
    }

    /// The present nodes, other than this one, that announced `content`.
    pub async fn peers(&mut self, content: &ContentId) -> Result<Vec<PeerEntry>, HubError> {
        let req = PeersRequest { content: *content };
        let (_, body) = self.request(PEERS, req.to_bytes()).await?;
        Ok(PeersResponse::decode(body)
            .map_err(|e| HubError::Protocol(e.to_string()))?
            .peers)
    }
}

/// The name of a content index code, for messages.
pub fn code_name(code: ErrorCode) -> Option<&'static str> {
    match code {
        codes::NOT_PRESENT => Some("NOT_PRESENT"),
        codes::ANNOUNCE_LIMIT => Some("ANNOUNCE_LIMIT"),
        codes::INDEX_FULL => Some("INDEX_FULL"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; ID_HASH_LEN])
    }

    fn index(per_node: usize, entries: usize) -> Index {
        Index::new(IndexLimits { per_node, entries }, Duration::from_secs(30))
    }

    fn listed(index: &mut Index, content: u8, except: u8, now: Instant) -> Vec<NodeId> {
        index
            .peers(&[content; 32], &node(except), now)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn the_index_is_bounded_per_node_and_in_all() {
        let mut index = index(3, 5);
        let now = Instant::now();
        for n in 1..=3 {
            index.arrive(node(n), &format!("n{n}"));
        }
        assert_eq!(index.announce(node(1), &[[1; 32], [2; 32]], now), Ok(2));
        // Announcing again changes nothing.
        assert_eq!(index.announce(node(1), &[[1; 32], [1; 32]], now), Ok(2));
        let over = index
            .announce(node(1), &[[3; 32], [4; 32]], now)
            .unwrap_err();
        assert_eq!(over.0, codes::ANNOUNCE_LIMIT);
        assert_eq!(
            index.announce(node(2), &[[1; 32], [2; 32], [3; 32]], now),
            Ok(3)
        );
        assert_eq!(index.len(), 5);
        let full = index.announce(node(3), &[[1; 32]], now).unwrap_err();
        assert_eq!(full.0, codes::INDEX_FULL);
        // Node 2 left: its entries make room, even within its grace.
        index.depart(node(2), "n2", now);
        assert_eq!(index.len(), 5);
        assert_eq!(index.announce(node(3), &[[1; 32]], now), Ok(1));
        assert_eq!(index.len(), 3);
        assert_eq!(index.nodes(&[1; 32]), vec![node(1), node(3)]);
        assert_eq!(index.withdraw(node(1), &[[1; 32], [9; 32]]), 1);
        assert_eq!(index.nodes(&[1; 32]), vec![node(3)]);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn only_a_present_node_announces_and_only_present_nodes_are_listed() {
        let mut index = index(64, 100);
        let now = Instant::now();
        let refused = index.announce(node(1), &[[1; 32]], now).unwrap_err();
        assert_eq!(refused.0, codes::NOT_PRESENT);
        index.arrive(node(1), "alice");
        index.arrive(node(2), &node(2).to_string());
        index.announce(node(1), &[[1; 32]], now).unwrap();
        index.announce(node(2), &[[1; 32]], now).unwrap();
        // Latest announce first, never the caller, each with the key it is present under.
        assert_eq!(
            index.peers(&[1; 32], &node(9), now),
            vec![(node(2), node(2).to_string().as_str()), (node(1), "alice")]
        );
        assert_eq!(listed(&mut index, 1, 2, now), vec![node(1)]);
        // Present under two keys: it stays present until both end.
        index.arrive(node(1), "alice2");
        index.depart(node(1), "alice", now);
        assert_eq!(
            index.peers(&[1; 32], &node(2), now),
            vec![(node(1), "alice2")]
        );
        index.depart(node(1), "alice2", now);
        assert_eq!(listed(&mut index, 1, 2, now), vec![]);
        assert!(!index.is_present(&node(1)));
        assert_eq!(
            index.announce(node(1), &[[2; 32]], now).unwrap_err().0,
            codes::NOT_PRESENT
        );
    }

    #[test]
    fn entries_of_a_node_that_left_go_after_the_grace_unless_it_came_back() {
        let mut index = index(64, 100);
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        for n in 1..=3 {
            index.arrive(node(n), &format!("n{n}"));
            index
                .announce(node(n), &[[1; 32], [n + 10; 32]], t0)
                .unwrap();
        }
        assert_eq!(index.len(), 6);
        // Node 1 reconnects (a new port) within the grace: its entries stay and it is listed.
        index.depart(node(1), "n1", t0);
        index.depart(node(2), "n2", t0);
        index.arrive(node(1), "n1");
        let later = t0 + Duration::from_secs(5);
        assert_eq!(listed(&mut index, 1, 9, later), vec![node(3), node(1)]);
        assert_eq!(index.len(), 6);
        // Past the grace node 2's entries are gone, the others' stay.
        let past = t0 + grace;
        assert_eq!(listed(&mut index, 1, 9, past), vec![node(3), node(1)]);
        assert_eq!(index.len(), 4);
        assert_eq!(index.nodes(&[12; 32]), vec![]);
        assert_eq!(index.nodes(&[1; 32]), vec![node(1), node(3)]);
        // Node 2 coming back after that announces afresh.
        index.arrive(node(2), "n2");
        assert_eq!(listed(&mut index, 1, 9, past), vec![node(3), node(1)]);
        // A node that leaves, returns and leaves again goes one grace after its last leave.
        index.depart(node(3), "n3", past);
        index.arrive(node(3), "n3");
        let again = past + Duration::from_secs(20);
        index.depart(node(3), "n3", again);
        index.expire(past + grace);
        assert_eq!(index.nodes(&[13; 32]), vec![node(3)]);
        index.expire(again + grace);
        assert_eq!(index.nodes(&[13; 32]), vec![]);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn bodies_round_trip_and_refuse_what_is_undefined() {
        let req = AnnounceRequest {
            withdraw: true,
            content: vec![[7; 32]],
        };
        assert_eq!(AnnounceRequest::decode(req.to_bytes()), Ok(req));
        assert!(AnnounceRequest::decode(Bytes::from_static(&[2, 0])).is_err());
        assert!(AnnounceRequest::decode(Bytes::from_static(&[0, 33])).is_err());
        assert!(AnnounceRequest::decode(Bytes::from_static(&[0, 1, 0])).is_err());
        let resp = PeersResponse {
            peers: vec![PeerEntry {
                id: node(4),
                via: "alice".into(),
                addrs: vec!["192.0.2.1:7000".parse().unwrap()],
            }],
        };
        assert_eq!(PeersResponse::decode(resp.to_bytes()), Ok(resp.clone()));
        let mut long = resp.to_bytes().to_vec();
        long.push(0);
        assert!(PeersResponse::decode(Bytes::from(long)).is_err());
        assert!(PeersResponse::decode(Bytes::from_static(&[51])).is_err());
    }
}
