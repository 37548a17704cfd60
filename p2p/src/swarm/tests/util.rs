//! Socket-free harnesses for the swarm core (quinn-proto's `tests/util.rs` is the model): every
//! node's actions are carried out in memory, messages go through the wire codec, and time is a
//! variable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::ErrorCode;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::manifest::{FileEntry, Manifest, PieceIndex, RelPath};
use crate::pieces::{sha256, Bitfield};
use crate::swarm::{Action, ConnId, Swarm, SwarmConfig};
use crate::wire::{BlockRef, PeerId, PeerMessage, SERVICE};

/// A socket-free swarm: every node's actions are carried out in memory, messages go through
/// the wire codec, and time is a variable.
pub(crate) struct Net {
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) content: Vec<u8>,
    pub(crate) nodes: Vec<Swarm>,
    /// Per node: whether it corrupts the blocks it uploads.
    pub(crate) corrupt: Vec<bool>,
    /// (node, conn) → (other node, other conn)
    pub(crate) links: HashMap<(usize, ConnId), (usize, ConnId)>,
    pub(crate) next_conn: u64,
    pub(crate) now: Instant,
    pub(crate) completed: Vec<bool>,
    pub(crate) closed_with: Vec<(usize, Option<ErrorCode>)>,
}

/// The listen address of node `i`.
fn listen_addr(i: usize) -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
}

/// Two distinct elements of `v`, mutably.
fn two<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (left, right) = v.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = v.split_at_mut(a);
        (&mut right[0], &mut left[b])
    }
}

/// Both cores (with their node index and conn) finish a handshake with each other; if the
/// second refuses, the first forgets the connection. Returns whether both accepted.
fn handshake(
    (a, ia, ca): (&mut Swarm, usize, ConnId),
    (b, ib, cb): (&mut Swarm, usize, ConnId),
    now: Instant,
) -> bool {
    let (id_a, id_b) = (a.our_id(), b.our_id());
    if a.handle_connected(ca, id_b, listen_addr(ib), now).is_err() {
        return false;
    }
    if b.handle_connected(cb, id_a, listen_addr(ia), now).is_err() {
        a.handle_disconnected(ca, now);
        return false;
    }
    true
}

/// The PIECE message that answers an upload of real content.
pub(crate) fn upload(
    content: &[u8],
    manifest: &Manifest,
    piece: PieceIndex,
    offset: u32,
    length: u32,
) -> PeerMessage {
    let start = manifest.piece_start(piece) as usize + offset as usize;
    PeerMessage::Piece {
        piece: piece.get(),
        offset,
        data: Bytes::copy_from_slice(&content[start..start + length as usize]),
    }
}

/// The same block with its first byte flipped.
fn corrupt(msg: PeerMessage) -> PeerMessage {
    match msg {
        PeerMessage::Piece {
            piece,
            offset,
            data,
        } => {
            let mut data = data.to_vec();
            data[0] ^= 0xff;
            PeerMessage::Piece {
                piece,
                offset,
                data: data.into(),
            }
        }
        other => other,
    }
}

pub(crate) fn manifest_for(content: &[u8], piece_size: u32) -> Manifest {
    let hashes = content.chunks(piece_size as usize).map(sha256).collect();
    Manifest::new(
        piece_size,
        vec![FileEntry {
            path: RelPath::parse_portable("f", 32).unwrap(),
            size: content.len() as u64,
        }],
        hashes,
        vec![],
        vec![],
    )
    .unwrap()
}

impl Net {
    pub(crate) fn new(content_len: usize, piece_size: u32) -> Self {
        let mut rng = StdRng::seed_from_u64(7);
        let content: Vec<u8> = (0..content_len).map(|_| rng.gen()).collect();
        Self::with_content(content, piece_size)
    }

    pub(crate) fn with_content(content: Vec<u8>, piece_size: u32) -> Self {
        let manifest = Arc::new(manifest_for(&content, piece_size));
        Self {
            manifest,
            content,
            nodes: Vec::new(),
            corrupt: Vec::new(),
            links: HashMap::new(),
            next_conn: 1,
            now: Instant::now(),
            completed: Vec::new(),
            closed_with: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, seed: bool, corrupt: bool) -> usize {
        // In memory a seed serves instantly; with a slot for everyone the leechers would
        // never need each other, so keep the classic four slots here.
        let config = SwarmConfig {
            seed_unchokes: 3,
            ..SwarmConfig::default()
        };
        self.add_with(seed, corrupt, config)
    }

    /// [`Net::add`] with its own config.
    pub(crate) fn add_with(&mut self, seed: bool, corrupt: bool, config: SwarmConfig) -> usize {
        let n = self.manifest.piece_count();
        let have = if seed {
            Bitfield::full(n)
        } else {
            Bitfield::new(n)
        };
        let i = self.nodes.len();
        self.nodes.push(Swarm::new(
            self.manifest.clone(),
            have,
            PeerId([i as u8 + 1; 20]),
            config,
            i as u64,
            self.now,
        ));
        self.corrupt.push(corrupt);
        self.completed.push(false);
        i
    }

    pub(crate) fn connect(&mut self, a: usize, b: usize) -> bool {
        let (ca, cb) = (ConnId(self.next_conn), ConnId(self.next_conn + 1));
        self.next_conn += 2;
        let (na, nb) = two(&mut self.nodes, a, b);
        if !handshake((na, a, ca), (nb, b, cb), self.now) {
            return false;
        }
        self.links.insert((a, ca), (b, cb));
        self.links.insert((b, cb), (a, ca));
        true
    }

    pub(crate) fn deliver(&mut self, to: usize, conn: ConnId, msg: PeerMessage) {
        // Through the codec, as on the wire.
        let msg = PeerMessage::decode(msg.kind(), SERVICE, msg.to_bytes().into()).unwrap();
        self.nodes[to].handle_message(conn, msg, self.now);
    }

    /// Runs actions until quiet. Returns whether anything happened.
    pub(crate) fn pump(&mut self) -> bool {
        let mut any = false;
        for _ in 0..1_000_000 {
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                while let Some(action) = self.nodes[i].poll_action() {
                    progressed = true;
                    self.apply(i, action);
                    self.check_invariants();
                }
            }
            if !progressed {
                return any;
            }
            any = true;
        }
        panic!("no quiescence");
    }

    /// Every core's `STATE.md` invariants; called after every action carried out.
    pub(crate) fn check_invariants(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if let Err(e) = node.check_invariants() {
                panic!("node {i}: {e}");
            }
        }
    }

    pub(crate) fn apply(&mut self, i: usize, action: Action) {
        match action {
            Action::Send { conn, msg } => {
                if let Some(&(j, cj)) = self.links.get(&(i, conn)) {
                    self.deliver(j, cj, msg);
                }
            }
            Action::Upload {
                conn,
                piece,
                offset,
                length,
            } => {
                let msg = upload(&self.content, &self.manifest, piece, offset, length);
                let msg = if self.corrupt[i] { corrupt(msg) } else { msg };
                self.nodes[i].handle_uploaded(conn, length as u64, self.now);
                if let Some(&(j, cj)) = self.links.get(&(i, conn)) {
                    self.deliver(j, cj, msg);
                }
            }
            Action::CancelUpload { .. } => {}
            Action::Verify { piece, data } => {
                let ok = sha256(&data) == *self.manifest.hash(piece);
                self.nodes[i].handle_verified(piece, data, ok, self.now);
            }
            Action::Close { conn, error } => {
                self.closed_with.push((i, error.map(|e| e.code)));
                if let Some((j, cj)) = self.links.remove(&(i, conn)) {
                    self.links.remove(&(j, cj));
                    self.nodes[j].handle_disconnected(cj, self.now);
                }
            }
            Action::Discovered(_) => {}
            Action::Completed => self.completed[i] = true,
        }
    }

    pub(crate) fn tick(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        for node in &mut self.nodes {
            node.handle_timeout(self.now);
        }
        self.pump();
    }
}

pub(crate) fn one_link() -> (Net, usize, ConnId) {
    let mut net = Net::new(100_000, 16_384);
    let a = net.add(true, false);
    let b = net.add(false, false);
    // Connect `a` to a scripted peer: only a's side exists.
    let conn = ConnId(99);
    net.nodes[a]
        .handle_connected(conn, PeerId([0xee; 20]), None, net.now)
        .unwrap();
    let _ = b;
    while net.nodes[a].poll_action().is_some() {}
    (net, a, conn)
}

pub(crate) fn closed_code(net: &mut Net, node: usize) -> Option<ErrorCode> {
    while let Some(action) = net.nodes[node].poll_action() {
        if let Action::Close { error, .. } = action {
            return error.map(|e| e.code);
        }
    }
    None
}

/// Requests in `actions` for `conn`, in order.
pub(crate) fn requests_to(actions: &[Action], to: ConnId) -> Vec<BlockRef> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: PeerMessage::Request(b),
            } if *conn == to => Some(*b),
            _ => None,
        })
        .collect()
}

/// Codes of the connections closed with an error (clean closes, e.g. seed to seed, are not
/// drops).
pub(crate) fn drops(actions: &[Action]) -> Vec<ErrorCode> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close {
                error: Some(error), ..
            } => Some(error.code),
            _ => None,
        })
        .collect()
}

/// The block a scripted peer sends for `b` (16 KiB pieces).
pub(crate) fn block_msg(net: &Net, b: BlockRef) -> PeerMessage {
    let start = (b.piece * 16_384 + b.offset) as usize;
    PeerMessage::Piece {
        piece: b.piece,
        offset: b.offset,
        data: Bytes::from(net.content[start..start + b.length as usize].to_vec()),
    }
}

/// Takes `node`'s actions, hashing (and so completing) every piece it hands out, until
/// quiet; returns the rest.
pub(crate) fn settle(net: &mut Net, node: usize) -> Vec<Action> {
    let mut out = Vec::new();
    while let Some(action) = net.nodes[node].poll_action() {
        match action {
            Action::Verify { piece, data } => {
                let ok = sha256(&data) == *net.manifest.hash(piece);
                net.nodes[node].handle_verified(piece, data, ok, net.now);
            }
            other => out.push(other),
        }
    }
    out
}
/// How a simulated node treats its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behaviour {
    Honest,
    /// Serves real pieces with the first byte of every block flipped.
    CorruptBlocks,
    /// Claims every piece in its BITFIELD while holding none, never chokes, and answers every
    /// REQUEST at once with a block of garbage.
    Liar,
}

/// One simulated node: a core and how it behaves.
pub(crate) struct SimNode {
    pub(crate) swarm: Swarm,
    pub(crate) behaviour: Behaviour,
    pub(crate) completed: bool,
    /// Error codes of the connections it closed (`None` for a clean close).
    pub(crate) closed: Vec<Option<ErrorCode>>,
}

/// A deterministic simulation of several cores (quinn-proto's `Pair::step/drive` is the
/// model). Messages wait in per-connection queues, in order, as on a stream; each
/// [`Sim::step`] delivers the head of one queue chosen by a seeded RNG, so runs interleave
/// differently per seed and identically per seed. Time is a variable advanced when the
/// network is quiet (and now and then while it is not, so requests time out with blocks in
/// flight). After every step every called core's invariants (`STATE.md`) are checked, plus what only
/// the harness sees (H1-H3): honest nodes send nothing they have not verified, never blame each
/// other, and a super-seed announces exactly what it revealed.
pub(crate) struct Sim {
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) content: Vec<u8>,
    pub(crate) nodes: Vec<SimNode>,
    /// (node, conn) → (other node, other conn).
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    /// Messages in flight to (node, conn), oldest first.
    queues: BTreeMap<(usize, ConnId), VecDeque<PeerMessage>>,
    rng: StdRng,
    next_conn: u64,
    pub(crate) now: Instant,
    pub(crate) steps: u64,
    /// Every delivery as (to node, to conn, message type), for comparing runs.
    pub(crate) trace: Vec<(usize, u64, u8)>,
    /// Pieces each super-seed announced with HAVE, per connection.
    haves: BTreeMap<(usize, ConnId), BTreeSet<u32>>,
    /// Block bytes each node uploaded, per (node, piece).
    pub(crate) uploads: BTreeMap<(usize, u32), u64>,
    /// Slow nodes: a queue to or from one is passed over three times in four when chosen (for
    /// a queue of the others).
    pub(crate) slow: BTreeSet<usize>,
    /// Queues with messages waiting at the last [`Sim::step`].
    busy: usize,
    /// Nodes called since the last [`Sim::check`]: only a call changes a core's state, so only
    /// these can have broken an invariant.
    touched: BTreeSet<usize>,
}

impl Sim {
    pub(crate) fn new(seed: u64, content_len: usize, piece_size: u32) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut content = vec![0; content_len];
        rng.fill_bytes(&mut content);
        Self {
            manifest: Arc::new(manifest_for(&content, piece_size)),
            content,
            nodes: Vec::new(),
            links: BTreeMap::new(),
            queues: BTreeMap::new(),
            rng,
            next_conn: 1,
            now: Instant::now(),
            steps: 0,
            trace: Vec::new(),
            haves: BTreeMap::new(),
            uploads: BTreeMap::new(),
            slow: BTreeSet::new(),
            busy: 0,
            touched: BTreeSet::new(),
        }
    }

    /// Adds a node that starts complete (`seed`) or empty.
    pub(crate) fn add(&mut self, seed: bool, behaviour: Behaviour, config: SwarmConfig) -> usize {
        let n = self.manifest.piece_count();
        let have = if seed {
            Bitfield::full(n)
        } else {
            Bitfield::new(n)
        };
        let i = self.nodes.len();
        let core_seed = self.rng.gen();
        self.nodes.push(SimNode {
            swarm: Swarm::new(
                self.manifest.clone(),
                have,
                PeerId([i as u8 + 1; 20]),
                config,
                core_seed,
                self.now,
            ),
            behaviour,
            completed: false,
            closed: Vec::new(),
        });
        self.touched.insert(i);
        self.drain();
        i
    }

    pub(crate) fn id(&self, node: usize) -> PeerId {
        self.nodes[node].swarm.our_id()
    }

    /// Both sides finish a handshake; returns whether both accepted.
    pub(crate) fn connect(&mut self, a: usize, b: usize) -> bool {
        let (ca, cb) = (ConnId(self.next_conn), ConnId(self.next_conn + 1));
        self.next_conn += 2;
        let (na, nb) = two(&mut self.nodes, a, b);
        if !handshake((&mut na.swarm, a, ca), (&mut nb.swarm, b, cb), self.now) {
            return false;
        }
        self.links.insert((a, ca), (b, cb));
        self.links.insert((b, cb), (a, ca));
        self.touched.extend([a, b]);
        self.drain();
        self.check();
        true
    }

    /// Delivers one message; returns false when nothing is in flight.
    pub(crate) fn step(&mut self) -> bool {
        let busy: Vec<(usize, ConnId)> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        self.busy = busy.len();
        if busy.is_empty() {
            return false;
        }
        let slow = |s: &Self, (to, conn): (usize, ConnId)| {
            s.slow.contains(&to)
                || s.links
                    .get(&(to, conn))
                    .is_some_and(|l| s.slow.contains(&l.0))
        };
        let mut pick = busy[self.rng.gen_range(0..busy.len())];
        // A slow node's queue, when chosen, is passed over three times in four for one of the
        // others, so it moves at a quarter of their pace however many queues there are (drawing
        // again from all of them left a slow node among 20 almost frozen, and idle-dropped).
        if slow(self, pick) && self.rng.gen_range(0..4) != 0 {
            let others: Vec<(usize, ConnId)> =
                busy.iter().copied().filter(|&q| !slow(self, q)).collect();
            if !others.is_empty() {
                pick = others[self.rng.gen_range(0..others.len())];
            }
        }
        let (to, conn) = pick;
        let Some(msg) = self.queues.get_mut(&(to, conn)).and_then(|q| q.pop_front()) else {
            return false;
        };
        self.steps += 1;
        self.touched.insert(to);
        self.trace.push((to, conn.0, msg.kind().0));
        // Through the codec, as on the wire.
        let msg = PeerMessage::decode(msg.kind(), SERVICE, msg.to_bytes().into()).unwrap();
        match (self.nodes[to].behaviour, msg) {
            (Behaviour::Liar, PeerMessage::Request(b)) => {
                let garbage = vec![0x5a; b.length as usize];
                self.send_raw(
                    to,
                    conn,
                    PeerMessage::Piece {
                        piece: b.piece,
                        offset: b.offset,
                        data: garbage.into(),
                    },
                );
            }
            (Behaviour::Liar, PeerMessage::Interested) => {
                self.send_raw(to, conn, PeerMessage::Unchoke);
                let now = self.now;
                self.nodes[to]
                    .swarm
                    .handle_message(conn, PeerMessage::Interested, now);
            }
            (_, msg) => {
                let now = self.now;
                self.nodes[to].swarm.handle_message(conn, msg, now);
            }
        }
        self.drain();
        self.check();
        true
    }

    /// Moves the clock and runs every core whose deadline passed.
    pub(crate) fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.swarm.poll_timeout() <= now {
                node.swarm.handle_timeout(now);
                self.touched.insert(i);
            }
        }
        self.drain();
        self.check();
    }

    /// Steps until `done` or `max_steps`; a quiet network advances the clock a second, and so
    /// does one step in 64, or in twice the busy queues if more, with messages still in flight:
    /// each queue then moves about twice a sim second however many there are (one in 64 alone
    /// left a queue among 400 moving every 7 s, a slow one every 26 s, and their requests timed
    /// out). Returns whether `done` was reached.
    pub(crate) fn drive(&mut self, max_steps: u64, done: impl Fn(&Sim) -> bool) -> bool {
        while self.steps < max_steps {
            if done(self) {
                return true;
            }
            let per_second = 64.max(2 * self.busy);
            if self.rng.gen_range(0..per_second) == 0 || !self.step() {
                self.advance(Duration::from_secs(1));
            }
        }
        done(self)
    }

    /// `node` vanishes: what it already sent arrives (it has left the node), then every
    /// connection to it closes; it hears nothing more.
    pub(crate) fn depart(&mut self, node: usize) {
        let conns: Vec<(ConnId, (usize, ConnId))> = self
            .links
            .iter()
            .filter(|((i, _), _)| *i == node)
            .map(|((_, c), to)| (*c, *to))
            .collect();
        for (_, (j, cj)) in &conns {
            while let Some(msg) = self.queues.get_mut(&(*j, *cj)).and_then(|q| q.pop_front()) {
                self.steps += 1;
                let now = self.now;
                self.touched.insert(*j);
                self.nodes[*j].swarm.handle_message(*cj, msg, now);
                self.drain();
                self.check();
            }
        }
        for (c, (j, cj)) in conns {
            if self.links.remove(&(node, c)).is_some() {
                self.links.remove(&(j, cj));
                self.queues.remove(&(node, c));
                self.queues.remove(&(j, cj));
                let now = self.now;
                self.touched.insert(j);
                self.nodes[j].swarm.handle_disconnected(cj, now);
                self.drain();
                self.check();
            }
        }
    }

    /// Queues `msg` from `from` on its connection `conn`, if it is still open.
    fn send_raw(&mut self, from: usize, conn: ConnId, msg: PeerMessage) {
        if let Some(&to) = self.links.get(&(from, conn)) {
            self.queues.entry(to).or_default().push_back(msg);
        }
    }

    /// Carries out every queued action of every node until all are quiet.
    fn drain(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(action) = self.nodes[i].swarm.poll_action() {
                    any = true;
                    self.apply(i, action);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn apply(&mut self, i: usize, action: Action) {
        let behaviour = self.nodes[i].behaviour;
        let now = self.now;
        self.touched.insert(i);
        match action {
            Action::Send { conn, msg } => {
                if behaviour == Behaviour::Honest {
                    self.check_announced(i, conn, &msg);
                }
                let msg = match (behaviour, msg) {
                    (Behaviour::Liar, PeerMessage::Bitfield(_)) => {
                        let full = Bitfield::full(self.manifest.piece_count());
                        PeerMessage::Bitfield(Bytes::copy_from_slice(full.as_bytes()))
                    }
                    (Behaviour::Liar, PeerMessage::Choke) => return,
                    (_, msg) => msg,
                };
                self.send_raw(i, conn, msg);
            }
            Action::Upload {
                conn,
                piece,
                offset,
                length,
            } => {
                assert!(
                    self.nodes[i].swarm.have().has(piece),
                    "node {i} uploads piece {} it has not verified",
                    piece.get()
                );
                let msg = upload(&self.content, &self.manifest, piece, offset, length);
                let msg = match behaviour {
                    Behaviour::CorruptBlocks => corrupt(msg),
                    _ => msg,
                };
                self.nodes[i]
                    .swarm
                    .handle_uploaded(conn, length as u64, now);
                *self.uploads.entry((i, piece.get())).or_default() += u64::from(length);
                self.send_raw(i, conn, msg);
            }
            // Uploads are queued at once, so there is nothing left to cancel.
            Action::CancelUpload { .. } => {}
            Action::Verify { piece, data } => {
                let ok = sha256(&data) == *self.manifest.hash(piece);
                self.nodes[i].swarm.handle_verified(piece, data, ok, now);
            }
            Action::Close { conn, error } => {
                self.nodes[i].closed.push(error.map(|e| e.code));
                if let Some((j, cj)) = self.links.remove(&(i, conn)) {
                    self.links.remove(&(j, cj));
                    self.queues.remove(&(i, conn));
                    self.queues.remove(&(j, cj));
                    self.touched.insert(j);
                    self.nodes[j].swarm.handle_disconnected(cj, now);
                }
            }
            Action::Discovered(_) => {}
            Action::Completed => self.nodes[i].completed = true,
        }
    }

    /// H1: nothing unverified leaves an honest node: its BITFIELD and HAVEs name verified
    /// pieces. H3 (first half): a super-seed advertises an empty BITFIELD; its HAVEs are
    /// recorded for [`Sim::check`].
    fn check_announced(&mut self, i: usize, conn: ConnId, msg: &PeerMessage) {
        let swarm = &self.nodes[i].swarm;
        match msg {
            PeerMessage::Have(p) => {
                assert!(
                    swarm.have().has_index(*p),
                    "node {i} announces piece {p} it has not verified"
                );
                if swarm.super_seed.on {
                    self.haves.entry((i, conn)).or_default().insert(*p);
                }
            }
            PeerMessage::Bitfield(bytes) => {
                let bits = Bitfield::from_bytes(bytes, self.manifest.piece_count()).unwrap();
                assert!(
                    !swarm.super_seed.on || bits.count() == 0,
                    "super-seed {i} advertises {} pieces",
                    bits.count()
                );
                for p in self.manifest.pieces() {
                    assert!(
                        !bits.has(p) || swarm.have().has(p),
                        "node {i} advertises piece {} it has not verified",
                        p.get()
                    );
                }
            }
            _ => {}
        }
    }

    /// The invariants of every core called since the last check, H2 (honest nodes never
    /// strike honest ones) and H3.
    fn check(&mut self) {
        for i in std::mem::take(&mut self.touched) {
            let node = &self.nodes[i];
            if let Err(e) = node.swarm.check_invariants() {
                panic!("step {}: node {i}: {e}", self.steps);
            }
            if node.behaviour != Behaviour::Honest {
                continue;
            }
            // H3: a super-seed sent HAVE exactly for the pieces it revealed to each peer.
            if node.swarm.super_seed.on {
                for (conn, peer) in &node.swarm.peers {
                    let revealed: BTreeSet<u32> = self
                        .manifest
                        .pieces()
                        .filter(|p| peer.revealed.as_ref().is_some_and(|r| r.has(*p)))
                        .map(|p| p.get())
                        .collect();
                    let none = BTreeSet::new();
                    let sent = self.haves.get(&(i, *conn)).unwrap_or(&none);
                    assert_eq!(
                        &revealed, sent,
                        "step {}: super-seed {i} revealed to {conn:?} other than it sent",
                        self.steps
                    );
                }
            }
            for (j, other) in self.nodes.iter().enumerate() {
                if other.behaviour == Behaviour::Honest {
                    let id = other.swarm.our_id();
                    assert!(
                        !node.swarm.blame.strikes.contains_key(&id),
                        "step {}: honest node {i} struck honest node {j}",
                        self.steps
                    );
                }
            }
        }
    }
}
