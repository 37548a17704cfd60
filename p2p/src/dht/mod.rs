//! A Kademlia DHT for content ids (spec/P2P.md §7), BEP 5 semantics on the Ferry codec: UDP
//! datagrams of one plaintext frame on service 0x48 ([`wire`]).
//!
//! [`Dht`] is the sans-IO core: datagrams and `now` in (`handle_*`), datagrams, events and a
//! deadline out (`poll_*`); randomness comes from a seed. It owns the routing table
//! ([`table`]), the iterative lookups (α = 3 in flight, ending when the k closest answered; a
//! query unanswered at its short timeout frees its slot and its place among the k closest, or
//! is sent again when the lookup has no one else to ask; an unanswered ANNOUNCE is sent again),
//! and what it keeps for others ([`store`]: announced peers, token secrets, rate limits).
//! [`shell`] runs it on one tokio UDP socket and persists the routing table.
//!
//! Hardening (§7.5–§7.8): node ids are tied to addresses ([`id_matches`], after BEP 42), a
//! reply is never larger than [`AMPLIFICATION`] times the request that caused it, each source
//! address is rate limited, `announce_peer` needs a token bound to the requester's address,
//! and every table is bounded. The DHT never sees a content id, only [`key_for`] of it: the
//! content id is the swarm's key (§3.1).

pub mod shell;
pub mod store;
pub mod table;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_protocol::{ErrorBody, ErrorCode, HEADER_LEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::manifest::ContentId;
use store::{PeerStore, RateLimiter, Tokens};
use table::{Insert, RoutingTable};
use wire::{Answer, Message, Method, NodeInfo, Query, Request, Response, Token, MAX_DATAGRAM};

/// Bucket size and the number of closest nodes a lookup converges on.
pub const K: usize = 8;
/// Queries in flight per lookup.
pub const ALPHA: usize = 3;
/// A reply is at most this many times as long as the request datagram that caused it.
pub const AMPLIFICATION: usize = 4;
/// `FIND_NODE` and `GET_PEERS` requests are padded to this datagram length, so that a full
/// reply fits the amplification bound (4 × 256 = 1024 bytes).
pub const REQUEST_PAD_TO: usize = 256;
/// Most queries in flight at once, over all lookups and pings.
pub const MAX_IN_FLIGHT: usize = 256;
/// Most lookups running at once.
pub const MAX_LOOKUPS: usize = 32;
/// Candidates a lookup remembers (closest first).
pub const MAX_CANDIDATES: usize = 8 * K;
/// Bootstrap addresses one lookup accepts.
pub const MAX_SEEDS: usize = 64;
/// Nodes not heard from this long are pinged, and our own id looked up, this often.
pub const REFRESH: Duration = Duration::from_secs(15 * 60);
/// Times one lookup query is sent again after its short timeout ([`DhtConfig::retry_after`]).
pub const MAX_RETRANSMITS: u8 = 2;
/// Distinct responders that must report the same public address before we take an id for it.
pub const ID_VOTES: usize = 3;

/// A 160-bit node id, also the key space of content keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 20]);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", hex::encode(&self.0[..4]))
    }
}

impl NodeId {
    /// XOR distance; byte arrays compare as the big-endian numbers they are.
    pub fn distance(&self, other: &NodeId) -> [u8; 20] {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// Number of leading bits shared with `other` (160 if equal).
    pub fn shared_prefix(&self, other: &NodeId) -> u32 {
        let d = self.distance(other);
        let mut n = 0;
        for b in d {
            if b != 0 {
                return n + b.leading_zeros();
            }
            n += 8;
        }
        n
    }
}

/// The DHT key under which a content id's peers are announced:
/// `SHA-256("ferry dht key" | content_id)[0..20]`. Not the content id itself, which is the
/// swarm's pre-shared key (§3.1) and must not be published.
pub fn key_for(content_id: &ContentId) -> NodeId {
    let mut h = Sha256::new();
    h.update(b"ferry dht key");
    h.update(content_id.0);
    let mut id = [0u8; 20];
    id.copy_from_slice(&h.finalize()[..20]);
    NodeId(id)
}

/// An address as 16 bytes, IPv4 in its IPv4-mapped form.
pub fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Addresses whose node ids are not checked (BEP 42's local-network exemption): loopback,
/// private, link-local, unique-local and unspecified. On those networks an address proves
/// nothing about the Internet, and the tests run on 127.0.0.1.
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// `SHA-256("ferry dht id" | masked address | r)`: BEP 42's construction with SHA-256 in
/// place of CRC32-C. IPv4 is masked with 03 0f 3f ff (4 bytes), IPv6's first 8 bytes with
/// 01 03 07 0f 1f 3f 7f ff; `r` is 0..=7.
fn id_hash(ip: IpAddr, r: u8) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ferry dht id");
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mask = [0x03, 0x0f, 0x3f, 0xff];
            let o = v4.octets();
            h.update([
                o[0] & mask[0],
                o[1] & mask[1],
                o[2] & mask[2],
                o[3] & mask[3],
            ]);
        }
        IpAddr::V6(v6) => {
            let mask = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];
            let o = v6.octets();
            let mut m = [0u8; 8];
            for i in 0..8 {
                m[i] = o[i] & mask[i];
            }
            h.update(m);
        }
    }
    h.update([r & 7]);
    h.finalize().into()
}

/// Whether `id` may be used from `ip`: its first 21 bits equal those of
/// [`id_hash`]`(ip, id[19] & 7)`, or the address is [exempt](is_exempt).
pub fn id_matches(id: &NodeId, ip: IpAddr) -> bool {
    if is_exempt(ip) {
        return true;
    }
    let h = id_hash(ip, id.0[19] & 7);
    id.0[0] == h[0] && id.0[1] == h[1] && (id.0[2] & 0xf8) == (h[2] & 0xf8)
}

/// A node id valid for `ip`, the rest of its bits from `random`.
pub fn id_for(ip: IpAddr, random: [u8; 20]) -> NodeId {
    let mut id = random;
    if !is_exempt(ip) {
        let h = id_hash(ip, id[19] & 7);
        id[0] = h[0];
        id[1] = h[1];
        id[2] = (h[2] & 0xf8) | (id[2] & 0x07);
    }
    NodeId(id)
}

/// Names one lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LookupId(pub u64);

/// What the core tells its shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Peers found by a `get_peers` lookup (only ones not reported before by this lookup).
    Peers {
        lookup: LookupId,
        peers: Vec<SocketAddr>,
    },
    /// A lookup ended: the k closest nodes that answered, and how many announces were sent
    /// then (not counting those sent later to closer nodes that answer late, §7.4).
    Done {
        lookup: LookupId,
        closest: Vec<NodeInfo>,
        announced: usize,
    },
    /// Our id changed to one valid for our public address (§7.5): persist it.
    IdChanged(NodeId),
}

/// A lookup could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("{0} lookups already running, the most allowed")]
    TooMany(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    New,
    Asked,
    /// Asked, and unanswered past the short timeout: still awaited until the hard one, but no
    /// longer holding one of the lookup's α slots.
    Slow,
    Answered,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    id: NodeId,
    addr: SocketAddr,
    state: State,
    token: Option<Token>,
    /// When it was asked, as the lookup counts its queries ([`Lookup::asked`]); 0 if not yet.
    asked: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `join`: the lookup of our own id that joins the network; when it ends, the buckets
    /// further than our closest neighbours are refreshed (the paper's join, §7.4).
    FindNode {
        join: bool,
    },
    GetPeers {
        announce: Option<u16>,
    },
}

#[derive(Debug)]
struct Lookup {
    target: NodeId,
    kind: Kind,
    /// Closest first; at most [`MAX_CANDIDATES`].
    candidates: Vec<Candidate>,
    /// Addresses of unknown id (bootstrap), asked before the candidates, and when each was
    /// asked (as in [`Candidate::asked`]).
    seeds: Vec<(SocketAddr, State, u32)>,
    peers: HashSet<SocketAddr>,
    /// Queries sent so far (repeats not counted): numbers them in the order they were sent.
    asked: u32,
    /// The number of the latest-sent query that has been answered: a slow query sent before it
    /// has been *overtaken* (L3).
    answered: u32,
}

impl Lookup {
    fn add(&mut self, node: NodeInfo, own: &NodeId) {
        // The hash in `id_matches` is the costly check: last.
        if node.id == *own
            || self.candidates.iter().any(|c| c.id == node.id)
            || !id_matches(&node.id, node.addr.ip())
        {
            return;
        }
        let d = node.id.distance(&self.target);
        let pos = self
            .candidates
            .partition_point(|c| c.id.distance(&self.target) < d);
        if pos >= MAX_CANDIDATES {
            return;
        }
        self.candidates.insert(
            pos,
            Candidate {
                id: node.id,
                addr: node.addr,
                state: State::New,
                token: None,
                asked: 0,
            },
        );
        self.candidates.truncate(MAX_CANDIDATES);
    }

    /// Indices of the k closest candidates that have neither failed nor gone past their short
    /// timeout: the ones the lookup asks, and waits for (§7.4). A slow node's place goes to the
    /// next candidate; it comes back in if it answers.
    fn top(&self) -> impl Iterator<Item = usize> + '_ {
        self.candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| !matches!(c.state, State::Failed | State::Slow))
            .map(|(i, _)| i)
            .take(K)
    }

    /// Queries that hold one of the α slots: asked, and not past their short timeout.
    fn in_flight(&self) -> usize {
        self.seeds.iter().filter(|s| s.1 == State::Asked).count()
            + self
                .candidates
                .iter()
                .filter(|c| c.state == State::Asked)
                .count()
    }

    /// Whether [`next`](Self::next) has someone to ask.
    fn has_next(&self) -> bool {
        self.seeds.iter().any(|s| s.1 == State::New)
            || self.top().any(|i| self.candidates[i].state == State::New)
    }

    /// Nobody has answered yet and nobody is left to ask: all the lookup can do is wait.
    fn starving(&self) -> bool {
        !self.has_next()
            && !self.seeds.iter().any(|s| s.1 == State::Answered)
            && !self.candidates.iter().any(|c| c.state == State::Answered)
    }

    /// Marks a query past its short timeout, if it is still only asked.
    fn slow(&mut self, id: Option<NodeId>, addr: SocketAddr) {
        let state = match id {
            None => self
                .seeds
                .iter_mut()
                .find(|s| s.0 == addr)
                .map(|s| &mut s.1),
            Some(id) => self
                .candidates
                .iter_mut()
                .find(|c| c.id == id && c.addr == addr)
                .map(|c| &mut c.state),
        };
        if let Some(state) = state.filter(|s| **s == State::Asked) {
            *state = State::Slow;
        }
    }

    /// The next address to ask, marked asked; `None` if nothing is due.
    fn next(&mut self) -> Option<(Option<NodeId>, SocketAddr)> {
        if let Some(s) = self.seeds.iter_mut().find(|s| s.1 == State::New) {
            self.asked += 1;
            s.1 = State::Asked;
            s.2 = self.asked;
            return Some((None, s.0));
        }
        let i = self
            .top()
            .find(|&i| self.candidates[i].state == State::New)?;
        self.asked += 1;
        let c = &mut self.candidates[i];
        c.state = State::Asked;
        c.asked = self.asked;
        Some((Some(c.id), c.addr))
    }

    /// Settled (L3): no seed is new or asked, the [`top`](Self::top) k have all answered, and
    /// every slow seed, and every slow candidate closer than the farthest of those k (any, if
    /// fewer), has been overtaken: a query sent after it was answered. A silent node is passed
    /// over once the lookup has heard from a node asked after it (at the latest, the one asked
    /// in its place at its short timeout); where every answer is slow (long links) the lookup
    /// still waits for them, so it converges as if no query were slow.
    fn done(&self) -> bool {
        let waited = |state: State, asked: u32| {
            matches!(state, State::New | State::Asked)
                || (state == State::Slow && asked >= self.answered)
        };
        if self.seeds.iter().any(|s| waited(s.1, s.2)) {
            return false;
        }
        let mut end = self.candidates.len();
        for (n, i) in self.top().enumerate() {
            if self.candidates[i].state != State::Answered {
                return false;
            }
            if n == K - 1 {
                end = i;
            }
        }
        !self.candidates[..end]
            .iter()
            .any(|c| c.state == State::Slow && waited(c.state, c.asked))
    }

    fn set(&mut self, id: Option<NodeId>, addr: SocketAddr, state: State) {
        match id {
            None => {
                if let Some(s) = self.seeds.iter_mut().find(|s| s.0 == addr) {
                    s.1 = state;
                }
            }
            Some(id) => {
                if let Some(c) = self
                    .candidates
                    .iter_mut()
                    .find(|c| c.id == id && c.addr == addr)
                {
                    c.state = state;
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
struct InFlight {
    to: SocketAddr,
    /// The id we expect to answer; `None` for a bootstrap address.
    id: Option<NodeId>,
    method: Method,
    /// The hard timeout: unanswered by then, the query failed.
    deadline: Instant,
    lookup: Option<LookupId>,
    /// A lookup's query: its short timeout, when it is next looked at ([`Dht::short_timeout`]).
    retry_at: Option<Instant>,
    /// Times it was sent again; a repeat is the same datagram (same transaction id), so an
    /// answer to any of them counts and the query holds one in-flight slot throughout.
    retransmits: u8,
    /// The datagram, kept for the queries that are sent again (a lookup's, an ANNOUNCE).
    datagram: Vec<u8>,
    /// A `GET_PEERS` to one of the closest nodes of a lookup that ended without its answer
    /// (§7.4): the key and port to announce once it answers with a token.
    announce: Option<(NodeId, u16)>,
}

/// Core settings.
#[derive(Clone, Debug)]
pub struct DhtConfig {
    /// A query unanswered this long counts as a failure (the hard timeout).
    pub query_timeout: Duration,
    /// A lookup's query unanswered this long (the short timeout) stops holding one of the
    /// lookup's α slots and its place among the k closest; if the lookup has no one else to
    /// ask, the query is sent again. An unanswered ANNOUNCE is sent again after it too.
    pub retry_after: Duration,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            query_timeout: Duration::from_secs(2),
            retry_after: Duration::from_millis(500),
        }
    }
}

/// The DHT node core.
#[derive(Debug)]
pub struct Dht {
    config: DhtConfig,
    id: NodeId,
    table: RoutingTable,
    store: PeerStore,
    tokens: Tokens,
    limiter: RateLimiter,
    rng: StdRng,
    in_flight: HashMap<u32, InFlight>,
    lookups: HashMap<LookupId, Lookup>,
    next_lookup: u64,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    /// Public address reported by responders → the responders' addresses (bounded).
    votes: HashMap<IpAddr, HashSet<IpAddr>>,
    /// The address our id was last found valid for (saves a hash per response).
    valid_at: Option<IpAddr>,
    next_refresh: Instant,
}

impl Dht {
    /// A node with id `id`, its randomness drawn from `seed`.
    pub fn new(config: DhtConfig, id: NodeId, seed: u64, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        Self {
            config,
            id,
            table: RoutingTable::new(id),
            store: PeerStore::default(),
            tokens: Tokens::new(&mut rng, now),
            limiter: RateLimiter::new(now),
            rng,
            in_flight: HashMap::new(),
            lookups: HashMap::new(),
            next_lookup: 1,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            votes: HashMap::new(),
            valid_at: None,
            next_refresh: now + REFRESH,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    pub fn store(&self) -> &PeerStore {
        &self.store
    }

    /// Queries awaiting an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Lookups running.
    pub fn lookups(&self) -> usize {
        self.lookups.len()
    }

    /// Every node in the routing table, for persisting.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.table
            .entries()
            .map(|e| NodeInfo {
                id: e.id,
                addr: e.addr,
            })
            .collect()
    }

    /// Joins the network through `seeds` (bootstrap nodes, persisted nodes: ids unknown or
    /// untrusted): a lookup of our own id that asks them first.
    pub fn bootstrap(
        &mut self,
        seeds: &[SocketAddr],
        now: Instant,
    ) -> Result<LookupId, LookupError> {
        let target = self.id;
        self.start(target, Kind::FindNode { join: true }, seeds, now)
    }

    /// Looks for the k nodes closest to `target`.
    pub fn find_node(&mut self, target: NodeId, now: Instant) -> Result<LookupId, LookupError> {
        self.start(target, Kind::FindNode { join: false }, &[], now)
    }

    /// Looks for peers under `key`; with `announce`, then announces (our address, that TCP
    /// port) to the k closest nodes that gave a token.
    pub fn get_peers(
        &mut self,
        key: NodeId,
        announce: Option<u16>,
        now: Instant,
    ) -> Result<LookupId, LookupError> {
        self.start(key, Kind::GetPeers { announce }, &[], now)
    }

    /// [`get_peers`](Self::get_peers) that also asks `seeds` (addresses of unknown id) first:
    /// for a thin routing table.
    pub fn get_peers_via(
        &mut self,
        key: NodeId,
        announce: Option<u16>,
        seeds: &[SocketAddr],
        now: Instant,
    ) -> Result<LookupId, LookupError> {
        self.start(key, Kind::GetPeers { announce }, seeds, now)
    }

    fn start(
        &mut self,
        target: NodeId,
        kind: Kind,
        seeds: &[SocketAddr],
        now: Instant,
    ) -> Result<LookupId, LookupError> {
        if self.lookups.len() >= MAX_LOOKUPS {
            return Err(LookupError::TooMany(self.lookups.len()));
        }
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        let mut lookup = Lookup {
            target,
            kind,
            candidates: Vec::new(),
            seeds: Vec::new(),
            peers: HashSet::new(),
            asked: 0,
            answered: 0,
        };
        for e in self.table.closest(&target, K) {
            lookup.add(
                NodeInfo {
                    id: e.id,
                    addr: e.addr,
                },
                &self.id,
            );
        }
        let mut seen = HashSet::new();
        for s in seeds.iter().take(MAX_SEEDS) {
            if seen.insert(*s) {
                lookup.seeds.push((*s, State::New, 0));
            }
        }
        self.lookups.insert(id, lookup);
        self.step(now);
        Ok(id)
    }

    /// The next datagram to send and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Instant {
        self.in_flight
            .values()
            .map(|f| f.retry_at.map_or(f.deadline, |r| r.min(f.deadline)))
            .chain([self.next_refresh, self.tokens.next_rotation()])
            .min()
            .unwrap_or(self.next_refresh)
    }

    /// Expires queries, rotates token secrets, refreshes the table.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tokens.tick(now, &mut self.rng);
        let expired: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(tx, _)| *tx)
            .collect();
        for tx in expired {
            if let Some(f) = self.in_flight.remove(&tx) {
                if let Some(id) = f.id {
                    self.table.failed(&id, f.to);
                }
                if let Some(l) = f.lookup.and_then(|l| self.lookups.get_mut(&l)) {
                    l.set(f.id, f.to, State::Failed);
                }
            }
        }
        let slow: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.retry_at.is_some_and(|r| r <= now))
            .map(|(tx, _)| *tx)
            .collect();
        // All of them are slow before any is sent again: a lookup that they settle (L3) sends
        // none of them again.
        for tx in &slow {
            if let Some(f) = self.in_flight.get(tx) {
                if let Some(l) = f.lookup.and_then(|l| self.lookups.get_mut(&l)) {
                    l.slow(f.id, f.to);
                }
            }
        }
        for tx in slow {
            self.short_timeout(tx, now);
        }
        if now >= self.next_refresh {
            self.next_refresh = now + REFRESH;
            self.store.expire(now);
            // The paper's bucket refresh, simplified: ping whoever has been quiet, and look
            // up our own id so that new neighbours are found.
            if let Some(before) = now.checked_sub(REFRESH) {
                for e in self.table.questionable(before) {
                    self.send_query(Some(e.id), e.addr, Query::Ping, None, now);
                }
            }
            if !self.table.is_empty() && self.lookups.len() < MAX_LOOKUPS {
                let _ = self.find_node(self.id, now);
                self.refresh_buckets(now.checked_sub(REFRESH), now);
            }
        }
        self.step(now);
    }

    /// A query unanswered for [`DhtConfig::retry_after`] (§7.4), already marked slow in its
    /// lookup: it freed its α slot and its place among the k closest, so the lookup asks its next
    /// candidate; a lookup with no one else to ask (a bootstrap through one node) sends it again
    /// instead, unless the lookup has settled. An ANNOUNCE is sent again. At most
    /// [`MAX_RETRANSMITS`] times, following timers only, never a received datagram, so nobody
    /// can make us send more.
    fn short_timeout(&mut self, tx: u32, now: Instant) {
        let Some(f) = self.in_flight.get_mut(&tx) else {
            return;
        };
        f.retry_at = None;
        let again = match f.lookup.and_then(|l| self.lookups.get(&l)) {
            Some(l) => !l.has_next() && !l.done(),
            None if f.method == Method::AnnouncePeer => true,
            // Neither a lookup's nor an ANNOUNCE: awaited until its hard timeout, not repeated.
            None => return,
        };
        if again && f.retransmits < MAX_RETRANSMITS {
            f.retransmits += 1;
            tracing::debug!(
                to = %f.to,
                tx,
                method = ?f.method,
                lookup = f.lookup.map(|l| l.0),
                repeat = f.retransmits,
                "dht query sent again"
            );
            self.outbox.push_back((f.to, f.datagram.clone()));
        }
        let next = now + self.config.retry_after;
        if f.retransmits < MAX_RETRANSMITS && next < f.deadline {
            f.retry_at = Some(next);
        }
    }

    /// Handles one datagram from `from`. Anything malformed or unexpected is dropped.
    pub fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        self.tokens.tick(now, &mut self.rng);
        let Some((tx, message)) = Message::from_datagram(datagram) else {
            return;
        };
        match message {
            Message::Request(request) => {
                // Counted before any work: a flood costs one map lookup per datagram.
                if !self.limiter.allow(from.ip(), now) {
                    return;
                }
                let reply = self.answer(&request, from, now);
                let budget = (AMPLIFICATION * datagram.len()).min(MAX_DATAGRAM);
                if let Some(reply) = fit(reply, budget) {
                    let bytes = reply.to_datagram(tx);
                    debug_assert!(bytes.len() <= budget);
                    self.outbox.push_back((from, bytes));
                }
                self.maybe_verify(request.id, from, now);
            }
            Message::Response(response) => {
                let Some(f) = self.take_in_flight(tx, from, response.answer.method()) else {
                    return;
                };
                if f.id.is_some_and(|id| id != response.id) {
                    // Someone else answers at that address now: the node we knew is gone.
                    if let Some(id) = f.id {
                        self.table.failed(&id, f.to);
                    }
                    if let Some(l) = f.lookup.and_then(|l| self.lookups.get_mut(&l)) {
                        l.set(f.id, f.to, State::Failed);
                    }
                    self.step(now);
                    return;
                }
                self.vote(response.you, from.ip());
                if id_matches(&response.id, from.ip()) {
                    self.offer(response.id, from, now);
                }
                if let Some(lid) = f.lookup {
                    self.lookup_answered(lid, &f, &response);
                }
                if let (Some((key, port)), Some(id), Answer::GetPeers { token, .. }) =
                    (f.announce, f.id, &response.answer)
                {
                    // One of the closest nodes, answering after its lookup ended (§7.4).
                    let token = *token;
                    if self.send_query(
                        Some(id),
                        from,
                        Query::AnnouncePeer { key, port, token },
                        None,
                        now,
                    ) {
                        tracing::debug!(to = %from, "dht late announce");
                    }
                }
                self.feed_starving(f.lookup, &response.answer);
                self.step(now);
            }
            Message::Error(error) => {
                // Only an error for a query we sent, from where we sent it, counts.
                if self.in_flight.get(&tx).is_none_or(|f| f.to != from) {
                    return;
                }
                let Some(f) = self.in_flight.remove(&tx) else {
                    return;
                };
                tracing::debug!(%from, code = %error.code, "dht query refused");
                if let Some(l) = f.lookup.and_then(|l| self.lookups.get_mut(&l)) {
                    l.set(f.id, f.to, State::Failed);
                }
                self.step(now);
            }
        }
    }

    fn take_in_flight(&mut self, tx: u32, from: SocketAddr, method: Method) -> Option<InFlight> {
        let f = self.in_flight.get(&tx)?;
        if f.to != from || f.method != method {
            return None;
        }
        self.in_flight.remove(&tx)
    }

    fn answer(&mut self, request: &Request, from: SocketAddr, now: Instant) -> Message {
        let answer = match &request.query {
            Query::Ping => Answer::Ping,
            Query::FindNode { target } => Answer::FindNode {
                nodes: self.closest_infos(target),
            },
            Query::GetPeers { key } => Answer::GetPeers {
                token: self.tokens.token(from.ip()),
                nodes: self.closest_infos(key),
                peers: self.store.peers(key, 255, now, &mut self.rng),
            },
            Query::AnnouncePeer { key, port, token } => {
                // §7.7: the token proves the requester receives at its source address, so only
                // that address can be announced.
                if !self.tokens.check(token, from.ip()) {
                    return Message::Error(ErrorBody::new(
                        ErrorCode::AUTHENTICATION_FAILED,
                        "bad token",
                    ));
                }
                if *port == 0 {
                    return Message::Error(ErrorBody::new(ErrorCode::MALFORMED_MESSAGE, "port 0"));
                }
                if !self.store.add(*key, SocketAddr::new(from.ip(), *port), now) {
                    return Message::Error(ErrorBody::new(ErrorCode::BUSY, "peer store is full"));
                }
                Answer::AnnouncePeer
            }
        };
        Message::Response(Response {
            id: self.id,
            you: from,
            answer,
        })
    }

    fn closest_infos(&self, target: &NodeId) -> Vec<NodeInfo> {
        self.table
            .closest(target, K)
            .into_iter()
            .map(|e| NodeInfo {
                id: e.id,
                addr: e.addr,
            })
            .collect()
    }

    /// A node that queried us goes into the table only once it answers a ping from us (a
    /// query's source address may be forged), and only if there is room for it.
    fn maybe_verify(&mut self, id: NodeId, from: SocketAddr, now: Instant) {
        if id == self.id
            || self.table.contains(&id)
            || !self.table.has_room(&id)
            || self.in_flight.len() >= MAX_IN_FLIGHT / 2
            || self.in_flight.values().any(|f| f.to == from)
            || !id_matches(&id, from.ip())
        {
            return;
        }
        self.send_query(Some(id), from, Query::Ping, None, now);
    }

    fn offer(&mut self, id: NodeId, addr: SocketAddr, now: Instant) {
        let inserted = self.table.insert(id, addr, now);
        if let Insert::Full { ping: Some(oldest) } = inserted {
            if !self.in_flight.values().any(|f| f.to == oldest.addr) {
                self.send_query(Some(oldest.id), oldest.addr, Query::Ping, None, now);
            }
        }
    }

    fn vote(&mut self, you: SocketAddr, voter: IpAddr) {
        let ip = you.ip().to_canonical();
        if self.valid_at == Some(ip) {
            return;
        }
        if is_exempt(ip) || id_matches(&self.id, ip) {
            self.valid_at = Some(ip);
            return;
        }
        if !self.votes.contains_key(&ip) && self.votes.len() >= 8 {
            return;
        }
        let voters = self.votes.entry(ip).or_default();
        if voters.len() < ID_VOTES {
            voters.insert(voter.to_canonical());
        }
        if voters.len() >= ID_VOTES {
            // Enough independent responders see us at `ip`: take an id valid there, so that
            // others keep us in their tables (§7.5).
            self.votes.clear();
            self.id = id_for(ip, self.rng.gen());
            self.valid_at = Some(ip);
            let old = std::mem::replace(&mut self.table, RoutingTable::new(self.id));
            for e in old.entries() {
                self.table.insert(e.id, e.addr, e.last_seen);
            }
            self.events.push_back(Event::IdChanged(self.id));
        }
    }

    /// Gives the nodes of an answer to every other lookup that is [starving](Lookup::starving):
    /// a swarm's GET_PEERS that started with the bootstrap node alone goes on through the nodes
    /// the concurrent join learns while its own query waits (§7.4). Any node is a sound
    /// candidate: candidates are ordered by distance, so far ones are asked only while nothing
    /// closer is known.
    fn feed_starving(&mut self, from: Option<LookupId>, answer: &Answer) {
        let nodes = match answer {
            Answer::FindNode { nodes } | Answer::GetPeers { nodes, .. } => nodes,
            _ => return,
        };
        let own = self.id;
        for (lid, l) in &mut self.lookups {
            if Some(*lid) != from && l.starving() {
                for n in nodes {
                    l.add(*n, &own);
                }
            }
        }
    }

    fn lookup_answered(&mut self, lid: LookupId, f: &InFlight, response: &Response) {
        let own = self.id;
        let Some(l) = self.lookups.get_mut(&lid) else {
            return;
        };
        let mut asked = None;
        if f.id.is_none() {
            // A bootstrap address: now we know its id, it competes like any candidate.
            if let Some(s) = l.seeds.iter_mut().find(|s| s.0 == f.to) {
                s.1 = State::Answered;
                asked = Some(s.2);
            }
            l.add(
                NodeInfo {
                    id: response.id,
                    addr: f.to,
                },
                &own,
            );
        }
        if let Some(c) = l
            .candidates
            .iter_mut()
            .find(|c| c.id == response.id && c.addr == f.to)
        {
            c.state = State::Answered;
            c.asked = *asked.get_or_insert(c.asked);
            if let Answer::GetPeers { token, .. } = &response.answer {
                c.token = Some(*token);
            }
        }
        l.answered = l.answered.max(asked.unwrap_or(0));
        let (nodes, peers) = match &response.answer {
            Answer::FindNode { nodes } => (nodes.as_slice(), &[][..]),
            Answer::GetPeers { nodes, peers, .. } => (nodes.as_slice(), peers.as_slice()),
            _ => (&[][..], &[][..]),
        };
        for n in nodes {
            l.add(*n, &own);
        }
        if matches!(l.kind, Kind::GetPeers { .. }) {
            let fresh: Vec<SocketAddr> = peers
                .iter()
                .filter(|p| p.port() != 0 && l.peers.len() < 4096 && l.peers.insert(**p))
                .copied()
                .collect();
            if !fresh.is_empty() {
                self.events.push_back(Event::Peers {
                    lookup: lid,
                    peers: fresh,
                });
            }
        }
    }

    /// Sends what the lookups are due to send, and finishes the ones that converged.
    fn step(&mut self, now: Instant) {
        let ids: Vec<LookupId> = self.lookups.keys().copied().collect();
        for lid in ids {
            loop {
                if self.in_flight.len() >= MAX_IN_FLIGHT {
                    break;
                }
                let Some(l) = self.lookups.get_mut(&lid) else {
                    break;
                };
                if l.in_flight() >= ALPHA {
                    break;
                }
                let Some((id, addr)) = l.next() else {
                    break;
                };
                let query = match l.kind {
                    Kind::FindNode { .. } => Query::FindNode { target: l.target },
                    Kind::GetPeers { .. } => Query::GetPeers { key: l.target },
                };
                self.send_query(id, addr, query, Some(lid), now);
            }
            if self.lookups.get(&lid).is_some_and(|l| l.done()) {
                self.finish(lid, now);
            }
        }
    }

    /// Looks up a random id in each bucket [`RoutingTable::to_refresh`] names, as long as
    /// lookup slots are free (a quarter of them kept for the shell's own lookups).
    fn refresh_buckets(&mut self, before: Option<Instant>, now: Instant) {
        for i in self.table.to_refresh(before) {
            if self.lookups.len() >= MAX_LOOKUPS - MAX_LOOKUPS / 4 {
                break;
            }
            let target = self.table.id_in_bucket(i, self.rng.gen());
            let _ = self.find_node(target, now);
        }
    }

    fn finish(&mut self, lid: LookupId, now: Instant) {
        let Some(l) = self.lookups.remove(&lid) else {
            return;
        };
        if l.kind == (Kind::FindNode { join: true }) {
            self.refresh_buckets(None, now);
        }
        let closest: Vec<&Candidate> = l
            .candidates
            .iter()
            .filter(|c| c.state == State::Answered)
            .take(K)
            .collect();
        let announce = match l.kind {
            Kind::GetPeers { announce } => announce,
            Kind::FindNode { .. } => None,
        };
        let mut announced = 0;
        if let Some(port) = announce {
            for c in &closest {
                if let Some(token) = c.token {
                    let query = Query::AnnouncePeer {
                        key: l.target,
                        port,
                        token,
                    };
                    if self.send_query(Some(c.id), c.addr, query, None, now) {
                        announced += 1;
                    }
                }
            }
        }
        // Queries still out are the lookup's no more: not sent again, their nodes not followed.
        // One to a node closer than the farthest announced to (any, if fewer than k were) gets
        // its ANNOUNCE if it answers with a token before its hard timeout (§7.4).
        let farthest = (closest.len() == K).then(|| closest[K - 1].id.distance(&l.target));
        let late = |id: NodeId, to: SocketAddr| {
            l.candidates.iter().any(|c| {
                c.id == id
                    && c.addr == to
                    && c.state == State::Slow
                    && farthest.is_none_or(|d| c.id.distance(&l.target) < d)
            })
        };
        for f in self.in_flight.values_mut() {
            if f.lookup == Some(lid) {
                f.lookup = None;
                f.retry_at = None;
                if let (Some(port), Some(id)) = (announce, f.id) {
                    if late(id, f.to) {
                        f.announce = Some((l.target, port));
                    }
                }
            }
        }
        self.events.push_back(Event::Done {
            lookup: lid,
            closest: closest
                .iter()
                .map(|c| NodeInfo {
                    id: c.id,
                    addr: c.addr,
                })
                .collect(),
            announced,
        });
    }

    /// Queues a query; `false` if too many are in flight.
    fn send_query(
        &mut self,
        id: Option<NodeId>,
        to: SocketAddr,
        query: Query,
        lookup: Option<LookupId>,
        now: Instant,
    ) -> bool {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(l) = lookup.and_then(|l| self.lookups.get_mut(&l)) {
                l.set(id, to, State::Failed);
            }
            return false;
        }
        let tx = loop {
            let tx: u32 = self.rng.gen();
            if tx != 0 && !self.in_flight.contains_key(&tx) {
                break tx;
            }
        };
        let method = query.method();
        let resent = lookup.is_some() || method == Method::AnnouncePeer;
        let mut request = Request {
            id: self.id,
            query,
            padding: 0,
        };
        if matches!(method, Method::FindNode | Method::GetPeers) {
            request.padding = REQUEST_PAD_TO - HEADER_LEN - request.encoded_len();
        }
        let datagram = Message::Request(request).to_datagram(tx);
        self.in_flight.insert(
            tx,
            InFlight {
                to,
                id,
                method,
                deadline: now + self.config.query_timeout,
                lookup,
                retry_at: resent.then(|| now + self.config.retry_after),
                retransmits: 0,
                datagram: if resent { datagram.clone() } else { Vec::new() },
                announce: None,
            },
        );
        self.outbox.push_back((to, datagram));
        true
    }
}

/// Trims a reply to `budget` bytes (peers first, then the farthest nodes); `None` if even the
/// bare reply does not fit.
fn fit(mut reply: Message, budget: usize) -> Option<Message> {
    let len = |m: &Message| {
        HEADER_LEN
            + match m {
                Message::Response(r) => r.encoded_len(),
                Message::Request(r) => r.encoded_len(),
                Message::Error(e) => e.encoded_len(),
            }
    };
    while len(&reply) > budget {
        let Message::Response(r) = &mut reply else {
            return None;
        };
        let trimmed = match &mut r.answer {
            Answer::GetPeers { peers, nodes, .. } => peers.pop().is_some() || nodes.pop().is_some(),
            Answer::FindNode { nodes } => nodes.pop().is_some(),
            _ => false,
        };
        if !trimmed {
            return None;
        }
    }
    Some(reply)
}

/// Fuzzing entry: the datagram decoded and re-encoded ([`wire::fuzz_message`]), then fed to a
/// node both as a request and as the answer to its outstanding query (transaction id patched
/// in). Whatever it sends back must be within the amplification bound.
#[cfg(any(fuzzing, test))]
pub fn fuzz_datagram(data: &[u8]) {
    wire::fuzz_message(data);
    let now = Instant::now();
    let mut d = Dht::new(DhtConfig::default(), NodeId([0x80; 20]), 1, now);
    let from = SocketAddr::from(([44, 0, 0, 1], 6881));
    let _ = d.bootstrap(&[from], now);
    let mut tx = None;
    while let Some((_, query)) = d.poll_transmit() {
        tx = Message::from_datagram(&query).map(|(tx, _)| tx);
    }
    let mut answer = data.to_vec();
    if let (Some(tx), Some(field)) = (tx, answer.get_mut(4..8)) {
        field.copy_from_slice(&tx.to_be_bytes());
    }
    for datagram in [data, &answer] {
        d.handle_datagram(datagram, from, now);
        while let Some((_, out)) = d.poll_transmit() {
            if !matches!(Message::from_datagram(&out), Some((_, Message::Request(_)))) {
                assert!(out.len() <= AMPLIFICATION * datagram.len());
            }
        }
    }
    d.handle_timeout(now + Duration::from_secs(60));
    d.table.check().unwrap_or_else(|e| panic!("{e}"));
}

#[cfg(test)]
mod tests;
