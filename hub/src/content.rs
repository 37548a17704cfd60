//! Swarm peers through the hub (spec/HUB.md §3.8, §3.9): present nodes announce the content ids
//! they serve (`ANNOUNCE`, 0x68) and ask which present nodes serve one (`PEERS`, 0x69). The
//! index is small and bounded: a limit of content ids per identity and a limit of entries in
//! all, and only a node with a presence may announce, so every entry names a node the hub can
//! relay to or coordinate a punch with.
//!
//! This module is a child of `server` (wired there with `#[path]`) so that it reads the hub's
//! presence table directly; the client's side is an `impl` of [`HubConn`] below.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_protocol::identity::{NodeId, ID_HASH_LEN};
use ferry_protocol::{ErrorCode, Service};

use super::{hints_of, lock, malformed, Conn, Online, Refusal};
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
#[derive(Debug, Clone, Copy)]
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

/// Content id → the nodes that announced it, and back. Entries of nodes that are no longer
/// present are dropped when the index is full and skipped by lookups.
#[derive(Debug, Default)]
pub struct Index {
    limits: IndexLimits,
    by_content: HashMap<ContentId, Vec<NodeId>>,
    by_node: HashMap<NodeId, HashSet<ContentId>>,
    entries: usize,
}

impl Index {
    pub fn new(limits: IndexLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Adds `content` for `node`, which is present; `present` says which other nodes still
    /// are (to make room). Returns how many content ids `node` announces now.
    pub fn announce(
        &mut self,
        node: NodeId,
        content: &[ContentId],
        present: impl Fn(&NodeId) -> bool,
    ) -> Result<usize, Refusal> {
        let held = self.by_node.get(&node);
        let new: Vec<ContentId> = {
            let mut seen = HashSet::new();
            content
                .iter()
                .filter(|c| held.is_none_or(|h| !h.contains(*c)) && seen.insert(**c))
                .copied()
                .collect()
        };
        let count = held.map_or(0, HashSet::len);
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
            self.prune(&present);
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
        for c in &new {
            self.by_content.entry(*c).or_default().push(node);
        }
        self.entries += new.len();
        let held = self.by_node.entry(node).or_default();
        held.extend(new);
        Ok(held.len())
    }

    /// Removes `content` for `node`; returns how many it announces now.
    pub fn withdraw(&mut self, node: NodeId, content: &[ContentId]) -> usize {
        let Some(held) = self.by_node.get_mut(&node) else {
            return 0;
        };
        for c in content {
            if held.remove(c) {
                self.entries -= 1;
                if let Some(nodes) = self.by_content.get_mut(c) {
                    nodes.retain(|n| *n != node);
                    if nodes.is_empty() {
                        self.by_content.remove(c);
                    }
                }
            }
        }
        let left = held.len();
        if left == 0 {
            self.by_node.remove(&node);
        }
        left
    }

    /// Drops every entry of nodes that are not present.
    pub fn prune(&mut self, present: impl Fn(&NodeId) -> bool) {
        let gone: Vec<NodeId> = self
            .by_node
            .keys()
            .filter(|n| !present(n))
            .copied()
            .collect();
        for node in gone {
            let content: Vec<ContentId> = self.by_node[&node].iter().copied().collect();
            self.withdraw(node, &content);
        }
    }

    /// The nodes that announced `content`, newest last.
    pub fn nodes(&self, content: &ContentId) -> &[NodeId] {
        self.by_content.get(content).map_or(&[], Vec::as_slice)
    }
}

/// Present nodes by id: the key each is present under, and its entry.
fn present_by_id(online: &HashMap<String, Online>) -> HashMap<NodeId, (&str, &Online)> {
    online
        .iter()
        .map(|(key, o)| (o.id, (key.as_str(), o)))
        .collect()
}

impl Conn {
    /// `ANNOUNCE` (HUB.md §3.8).
    pub(super) fn announce(&mut self, body: Bytes) -> Result<Bytes, Refusal> {
        let req = AnnounceRequest::decode(body).map_err(malformed)?;
        self.throttle()?;
        if req.withdraw {
            let held = lock(&self.shared.content).withdraw(self.client, &req.content);
            return Ok(AnnounceResponse {
                held: held.min(usize::from(u16::MAX)) as u16,
            }
            .to_bytes());
        }
        let online = lock(&self.shared.online);
        if !online.values().any(|o| o.id == self.client) {
            return Err((
                codes::NOT_PRESENT,
                "this identity has no presence at the hub; send PRESENCE first".into(),
            ));
        }
        let present = present_by_id(&online);
        let held = lock(&self.shared.content)
            .announce(self.client, &req.content, |n| present.contains_key(n))?;
        Ok(AnnounceResponse {
            held: held.min(usize::from(u16::MAX)) as u16,
        }
        .to_bytes())
    }

    /// `PEERS` (HUB.md §3.9): the present nodes other than the caller, newest announce first.
    pub(super) fn peers(&mut self, body: Bytes) -> Result<Bytes, Refusal> {
        let req = PeersRequest::decode(body).map_err(malformed)?;
        self.throttle()?;
        let online = lock(&self.shared.online);
        let present = present_by_id(&online);
        let index = lock(&self.shared.content);
        let peers = index
            .nodes(&req.content)
            .iter()
            .rev()
            .filter(|n| **n != self.client)
            .filter_map(|n| present.get(n).map(|(via, o)| (n, via, o)))
            .take(MAX_PEERS)
            .map(|(id, via, o)| PeerEntry {
                id: *id,
                via: via.to_string(),
                addrs: hints_of(o).into_iter().map(|(_, a)| a).collect(),
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

    #[test]
    fn the_index_is_bounded_per_node_and_in_all() {
        let mut index = Index::new(IndexLimits {
            per_node: 3,
            entries: 5,
        });
        let all = |_: &NodeId| true;
        assert_eq!(index.announce(node(1), &[[1; 32], [2; 32]], all), Ok(2));
        // Announcing again changes nothing.
        assert_eq!(index.announce(node(1), &[[1; 32], [1; 32]], all), Ok(2));
        let over = index
            .announce(node(1), &[[3; 32], [4; 32]], all)
            .unwrap_err();
        assert_eq!(over.0, codes::ANNOUNCE_LIMIT);
        assert_eq!(
            index.announce(node(2), &[[1; 32], [2; 32], [3; 32]], all),
            Ok(3)
        );
        assert_eq!(index.len(), 5);
        let full = index.announce(node(3), &[[1; 32]], all).unwrap_err();
        assert_eq!(full.0, codes::INDEX_FULL);
        // Node 2 left: its entries make room.
        assert_eq!(
            index.announce(node(3), &[[1; 32]], |n| *n != node(2)),
            Ok(1)
        );
        assert_eq!(index.len(), 3);
        assert_eq!(index.nodes(&[1; 32]), &[node(1), node(3)]);
        assert_eq!(index.withdraw(node(1), &[[1; 32], [9; 32]]), 1);
        assert_eq!(index.nodes(&[1; 32]), &[node(3)]);
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
