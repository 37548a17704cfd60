//! The routing table (spec/P2P.md §7.4): k-buckets by shared prefix length with our id, the
//! last bucket split when full (as in BEP 5), least-recently-seen node first, and a replacement
//! cache per bucket. A full bucket keeps its old nodes while they answer (the paper: long-lived
//! nodes are likely to stay); a node that misses [`MAX_FAILURES`] queries in a row is replaced by
//! the freshest replacement.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{NodeId, K};

/// Consecutive unanswered queries that make a node stale.
pub const MAX_FAILURES: u8 = 2;
/// A node not heard from this long is questionable: it is pinged before a newcomer is turned
/// away (BEP 5).
pub const QUESTIONABLE_AFTER: Duration = Duration::from_secs(15 * 60);

/// One known node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub last_seen: Instant,
    pub failures: u8,
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    /// Least recently seen first.
    nodes: Vec<Entry>,
    /// Newcomers waiting for a slot, most recent last.
    replacements: Vec<Entry>,
    /// When a node last entered or answered in this bucket; `None`: never.
    changed: Option<Instant>,
}

/// What became of a node offered to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Added, or refreshed if it was there.
    Added,
    /// The bucket is full: the node waits in the replacement cache. If `ping` is given, that
    /// node (the least recently seen) should be pinged; a failure makes room.
    Full { ping: Option<Entry> },
    /// Our own id, or a known id at another address (not moved: that would let anyone take
    /// over an id).
    Refused,
}

/// The k-bucket table around `own`.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    own: NodeId,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    pub fn new(own: NodeId) -> Self {
        Self {
            own,
            buckets: vec![Bucket::default()],
        }
    }

    pub fn own(&self) -> NodeId {
        self.own
    }

    fn index(&self, id: &NodeId) -> usize {
        (self.own.shared_prefix(id) as usize).min(self.buckets.len() - 1)
    }

    /// Nodes in the table (not the replacements).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buckets (grows by splitting, at most 160).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Sizes of (nodes, replacements) per bucket, for tests and invariants.
    pub fn bucket_sizes(&self) -> Vec<(usize, usize)> {
        self.buckets
            .iter()
            .map(|b| (b.nodes.len(), b.replacements.len()))
            .collect()
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.buckets[self.index(id)]
            .nodes
            .iter()
            .any(|e| e.id == *id)
    }

    /// Whether [`insert`](Self::insert) would add `id` now (its bucket has room or can split).
    pub fn has_room(&self, id: &NodeId) -> bool {
        let i = self.index(id);
        self.buckets[i].nodes.len() < K || (i == self.buckets.len() - 1 && self.buckets.len() < 160)
    }

    /// Offers a node we heard from at `now` (it answered us, or proved its address).
    pub fn insert(&mut self, id: NodeId, addr: SocketAddr, now: Instant) -> Insert {
        if id == self.own {
            return Insert::Refused;
        }
        loop {
            let count = self.buckets.len();
            let last = count - 1;
            let i = self.index(&id);
            let bucket = &mut self.buckets[i];
            if let Some(pos) = bucket.nodes.iter().position(|e| e.id == id) {
                if bucket.nodes[pos].addr != addr {
                    return Insert::Refused;
                }
                let mut e = bucket.nodes.remove(pos);
                e.last_seen = now;
                e.failures = 0;
                bucket.nodes.push(e);
                bucket.changed = Some(now);
                return Insert::Added;
            }
            let entry = Entry {
                id,
                addr,
                last_seen: now,
                failures: 0,
            };
            if bucket.nodes.len() < K {
                bucket.replacements.retain(|e| e.id != id);
                bucket.nodes.push(entry);
                bucket.changed = Some(now);
                return Insert::Added;
            }
            // Only the bucket that holds our own id splits (the paper's relaxed rule keeps
            // the table O(k log n)); 160 buckets is one per bit.
            if i == last && count < 160 {
                self.split();
                continue;
            }
            // A stale node makes room at once.
            if let Some(pos) = bucket.nodes.iter().position(|e| e.failures >= MAX_FAILURES) {
                bucket.nodes.remove(pos);
                bucket.nodes.push(entry);
                bucket.changed = Some(now);
                return Insert::Added;
            }
            if let Some(r) = bucket.replacements.iter_mut().find(|e| e.id == id) {
                r.last_seen = now;
                r.addr = addr;
            } else {
                if bucket.replacements.len() >= K {
                    bucket.replacements.remove(0);
                }
                bucket.replacements.push(entry);
            }
            let oldest = bucket.nodes[0];
            let ping = (now.saturating_duration_since(oldest.last_seen) >= QUESTIONABLE_AFTER
                || oldest.failures > 0)
                .then_some(oldest);
            return Insert::Full { ping };
        }
    }

    fn split(&mut self) {
        let depth = self.buckets.len() - 1;
        let old = std::mem::take(&mut self.buckets[depth]);
        self.buckets.push(Bucket::default());
        for e in old.nodes {
            let i = self.index(&e.id);
            self.buckets[i].nodes.push(e);
        }
        for e in old.replacements {
            let i = self.index(&e.id);
            self.buckets[i].replacements.push(e);
        }
        // Keep least-recently-seen order in both halves.
        for b in &mut self.buckets[depth..] {
            b.nodes.sort_by_key(|e| e.last_seen);
            b.replacements.sort_by_key(|e| e.last_seen);
            b.changed = b.nodes.last().map(|e| e.last_seen);
        }
    }

    /// Buckets to refresh (§7.4): those further than the last (which holds our closest
    /// neighbours, found by looking up our own id) that are not full, or, with `before`, that
    /// no node entered or answered in since then (BEP 5's bucket refresh). Without a lookup
    /// into its range, a bucket is filled only by nodes that happen to query us, and a group of
    /// nodes whose far buckets stay empty answers every lookup with each other (§7.4).
    pub fn to_refresh(&self, before: Option<Instant>) -> Vec<usize> {
        let last = self.buckets.len() - 1;
        (0..last)
            .filter(|&i| {
                let b = &self.buckets[i];
                b.nodes.len() < K || before.is_some_and(|t| b.changed.is_none_or(|c| c < t))
            })
            .collect()
    }

    /// An id in bucket `i`'s range: sharing exactly `i` leading bits with ours (the last
    /// bucket: at least `i`), the other bits from `random`.
    pub fn id_in_bucket(&self, i: usize, random: [u8; 20]) -> NodeId {
        let i = i.min(159);
        let mut id = random;
        for bit in 0..=i {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            let own = self.own.0[byte] & mask;
            // The first `i` bits equal ours, bit `i` differs.
            let want = if bit < i { own } else { own ^ mask };
            id[byte] = (id[byte] & !mask) | want;
        }
        NodeId(id)
    }

    /// A query to `id` at `addr` went unanswered. After [`MAX_FAILURES`] in a row the node
    /// gives its slot to the freshest replacement, if there is one.
    pub fn failed(&mut self, id: &NodeId, addr: SocketAddr) {
        let i = self.index(id);
        let bucket = &mut self.buckets[i];
        bucket.replacements.retain(|e| e.id != *id);
        let Some(pos) = bucket
            .nodes
            .iter()
            .position(|e| e.id == *id && e.addr == addr)
        else {
            return;
        };
        let e = &mut bucket.nodes[pos];
        e.failures = e.failures.saturating_add(1);
        if e.failures >= MAX_FAILURES {
            if let Some(r) = bucket.replacements.pop() {
                bucket.nodes.remove(pos);
                bucket.nodes.push(r);
                bucket.nodes.sort_by_key(|e| e.last_seen);
            }
        }
    }

    /// Up to `n` good nodes closest to `target` (stale ones last resort: left out).
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<Entry> {
        let mut all: Vec<Entry> = self
            .buckets
            .iter()
            .flat_map(|b| b.nodes.iter())
            .filter(|e| e.failures < MAX_FAILURES)
            .copied()
            .collect();
        all.sort_by_key(|e| e.id.distance(target));
        all.truncate(n);
        all
    }

    /// Every node, for persisting.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// Nodes not heard from since `before`: refreshed by a ping (bucket refresh, BEP 5).
    pub fn questionable(&self, before: Instant) -> Vec<Entry> {
        self.entries()
            .filter(|e| e.last_seen < before)
            .copied()
            .collect()
    }

    /// Checks the table's invariants; `Err` names the first one broken.
    pub fn check(&self) -> Result<(), String> {
        let last = self.buckets.len() - 1;
        for (i, b) in self.buckets.iter().enumerate() {
            if b.nodes.len() > K || b.replacements.len() > K {
                return Err(format!(
                    "bucket {i} holds {} nodes and {} replacements, over k = {K}",
                    b.nodes.len(),
                    b.replacements.len()
                ));
            }
            for e in b.nodes.iter().chain(&b.replacements) {
                let cpl = self.own.shared_prefix(&e.id) as usize;
                if (i < last && cpl != i) || (i == last && cpl < last) || e.id == self.own {
                    return Err(format!(
                        "node with prefix {cpl} in bucket {i} of {}",
                        last + 1
                    ));
                }
            }
            if b.nodes.windows(2).any(|w| w[0].last_seen > w[1].last_seen) {
                return Err(format!("bucket {i} is not least-recently-seen first"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_with_prefix(own: &NodeId, cpl: usize, salt: u8) -> NodeId {
        let mut id = own.0;
        // Flip bit `cpl`, randomise the rest after it.
        id[cpl / 8] ^= 0x80 >> (cpl % 8);
        for (j, b) in id.iter_mut().enumerate() {
            if j > cpl / 8 {
                *b = salt.wrapping_mul(31).wrapping_add(j as u8);
            }
        }
        NodeId(id)
    }

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 6881))
    }

    #[test]
    fn far_bucket_holds_k_then_caches_replacements() {
        let now = Instant::now();
        let own = NodeId([0; 20]);
        let mut t = RoutingTable::new(own);
        // Ids sharing no prefix with ours (first bit set) all land in bucket 0 once split.
        for n in 0..30u16 {
            let mut id = [0xffu8; 20];
            id[19] = n as u8;
            id[18] = (n >> 8) as u8;
            let r = t.insert(NodeId(id), addr(n), now);
            t.check().unwrap();
            if n < K as u16 {
                assert_eq!(r, Insert::Added);
            } else {
                assert!(matches!(r, Insert::Full { ping: None }), "{n}: {r:?}");
            }
        }
        assert_eq!(t.bucket_count(), 2, "one split made the far bucket");
        assert_eq!(t.bucket_sizes()[0], (K, K), "k nodes, k replacements");
        assert_eq!(t.len(), K);
    }

    #[test]
    fn near_bucket_splits_until_one_per_prefix() {
        let now = Instant::now();
        let own = NodeId([0x5a; 20]);
        let mut t = RoutingTable::new(own);
        for cpl in 0..40 {
            for salt in 0..3 {
                t.insert(
                    id_with_prefix(&own, cpl, salt),
                    addr(cpl as u16 * 4 + salt as u16),
                    now,
                );
                t.check().unwrap();
            }
        }
        assert_eq!(t.len(), 120, "no bucket is full: every node kept");
        assert!(t.bucket_count() >= 35, "{}", t.bucket_count());
        assert!(t.bucket_count() <= 160);
    }

    #[test]
    fn live_nodes_stay_stale_ones_are_replaced() {
        let now = Instant::now();
        let own = NodeId([0; 20]);
        let mut t = RoutingTable::new(own);
        let far = |n: u8| {
            let mut id = [0xf0u8; 20];
            id[19] = n;
            NodeId(id)
        };
        for n in 0..K as u8 {
            t.insert(far(n), addr(n as u16), now);
        }
        // Fill until the far bucket is its own and full.
        let later = now + QUESTIONABLE_AFTER;
        let r = t.insert(far(100), addr(100), later);
        // The oldest node is questionable: ping it rather than drop it.
        assert_eq!(
            r,
            Insert::Full {
                ping: Some(t.closest(&far(0), 1)[0])
            }
        );
        assert!(!t.contains(&far(100)));
        // It answers: it stays, the newcomer stays out (the paper's preference for old nodes).
        assert_eq!(t.insert(far(0), addr(0), later), Insert::Added);
        assert!(t.contains(&far(0)) && !t.contains(&far(100)));
        // Another fails twice: the replacement takes its slot.
        t.failed(&far(1), addr(1));
        assert!(t.contains(&far(1)));
        t.failed(&far(1), addr(1));
        assert!(!t.contains(&far(1)) && t.contains(&far(100)));
        t.check().unwrap();
        // A known id at a new address is refused, not moved.
        assert_eq!(t.insert(far(2), addr(999), later), Insert::Refused);
        assert_eq!(t.insert(own, addr(1), later), Insert::Refused);
    }
}
