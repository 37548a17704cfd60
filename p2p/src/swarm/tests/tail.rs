//! One seed and N leechers, every pair connected, over modelled links on a fake clock: each
//! node's uplink sends at `rate` bytes per second, sharing it among its connections in turn
//! (one message at a time, as fair queueing shares a shaped link among TCP flows), and every
//! message then takes `rtt / 2` and queues for the receiver's downlink, also at `rate` (netlab
//! shapes both directions, so the fluid bound is content / rate). As the shell does
//! (`node/peer.rs`), a block is reported uploaded once sent, and a CANCEL or CHOKE drops the
//! blocks still queued for that peer (a real sender's socket buffer holds a few more that no
//! CANCEL reaches). Pieces are checked by comparing bytes, which is what the hash would say, at
//! a fraction of a debug build's SHA-256 cost.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::manifest::{choose_piece_size, Manifest};
use crate::pieces::Bitfield;
use crate::swarm::picker::{BlockState, PieceState};
use crate::swarm::{Action, ConnId, Swarm, SwarmConfig};
use crate::wire::{PeerId, PeerMessage, SERVICE};

use super::util::{manifest_for, upload};

enum Event {
    Deliver(usize, ConnId, PeerMessage),
    /// Node's uplink finished its last message.
    Free(usize),
    /// A late node starts and connects to every other node.
    Join(usize),
}

struct Uplink {
    /// Per connection, messages waiting, in order.
    queues: BTreeMap<ConnId, VecDeque<PeerMessage>>,
    /// The connection served last: the next turn starts after it.
    last: Option<ConnId>,
    busy: bool,
    /// The block being sent, if the message on the wire is one: reported to the core once
    /// sent, as the shell reports a written upload.
    sending: Option<(ConnId, u64)>,
}

pub(crate) struct Swarmnet {
    content: Vec<u8>,
    manifest: Arc<Manifest>,
    pub(crate) nodes: Vec<Swarm>,
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    uplinks: Vec<Uplink>,
    /// When each node's downlink is next free.
    downlinks: Vec<Instant>,
    rate: f64,
    rtt: Duration,
    pub(crate) now: Instant,
    events: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    pub(crate) completed: Vec<Option<Instant>>,
    /// Why leechers' peers were or were not sending to them, sampled every 50 ms: before the
    /// endgame and in it.
    pub(crate) reasons: [Reasons; 2],
    /// When each leecher first had a piece, and first had a block (sampled).
    pub(crate) first_piece: Vec<Option<Instant>>,
    pub(crate) first_block: Vec<Option<Instant>>,
    /// Block bytes each node's uplink sent.
    pub(crate) sent: Vec<u64>,
    /// Invariants are checked after every `check_every`-th drain: every one up to 8 leechers;
    /// beyond, HAVEs alone (pieces × nodes²) make checking each too slow for a debug build.
    check_every: u64,
    drains: u64,
    /// Regular unchoke slots of incomplete leechers, summed over samples, and the most seen.
    pub(crate) slots: (u64, u64, usize),
    /// Per leecher, one line per sample while incomplete (kept when `trace` is set): what it
    /// has, whether it is in endgame, and per peer what is asked of it and whether it chokes.
    pub(crate) timeline: Vec<Vec<String>>,
    pub(crate) trace: bool,
    start: Instant,
    /// One line a second (kept when `TAIL_SECONDS` is set in the environment): see
    /// [`Swarmnet::second`].
    pub(crate) seconds: Vec<String>,
    per_second: bool,
    /// Blocks the seed has sent at least once, and block bytes it sent again.
    seed_sent_blocks: HashSet<(u32, u32)>,
    seed_resent: u64,
    /// Block bytes each node got from the seed.
    from_seed: Vec<u64>,
    /// Totals at the last per-second line: seed's first-copy bytes, seed's repeats, leechers'
    /// sent, leechers' wasted, leechers' late.
    last_second: (Instant, [u64; 5]),
    /// Incomplete leechers' uplinks, sampled: [samples, idle, idle while an unchoked peer
    /// wants one of its pieces (asked elsewhere), idle while only choked peers want one, idle
    /// while no incomplete peer wants any].
    pub(crate) uplink_idle: [u64; 5],
    /// Each leecher's downloaded bytes at the last per-second line.
    last_downloaded: Vec<u64>,
    /// What a late node is started with when it joins (`Swarmnet::join_late`).
    config: SwarmConfig,
    run_seed: u64,
    /// When each node joined: the start, or later for a late one.
    pub(crate) joined: Vec<Instant>,
}

/// Per sampled (leecher, peer) pair, what held the peer: counts summed over samples.
#[derive(Debug, Default, Clone)]
pub(crate) struct Reasons {
    /// Leecher samples taken.
    pub(crate) samples: u64,
    /// Requests in flight at the peer.
    pub(crate) busy: u64,
    /// The peer has something we want but chokes us.
    pub(crate) choked: u64,
    /// The peer has nothing we want.
    pub(crate) nothing: u64,
    /// Idle: it unchoked us and has a piece we want, yet nothing is asked of it, although it
    /// has an open block or an unstarted piece we want (the picker missed it).
    pub(crate) idle_open: u64,
    /// Idle: every block of its pieces we want is asked of someone else.
    pub(crate) idle_taken: u64,
    /// Of `idle_taken`: some of those blocks wait at the seed.
    pub(crate) idle_taken_at_seed: u64,
}

impl Reasons {
    pub(crate) fn idle(&self) -> u64 {
        self.idle_open + self.idle_taken
    }

    pub(crate) fn line(&self) -> String {
        let n = self.samples.max(1) as f64;
        format!(
            "per leecher: busy {:.2}, choked {:.2}, nothing wanted {:.2}, idle {:.2} (open {:.2}, all taken {:.2}, of which at the seed {:.2}); {} samples",
            self.busy as f64 / n,
            self.choked as f64 / n,
            self.nothing as f64 / n,
            self.idle() as f64 / n,
            self.idle_open as f64 / n,
            self.idle_taken as f64 / n,
            self.idle_taken_at_seed as f64 / n,
            self.samples
        )
    }
}

impl Swarmnet {
    pub(crate) fn new(
        leechers: usize,
        content_len: usize,
        piece_size: u32,
        rate: f64,
        rtt: Duration,
        config: SwarmConfig,
    ) -> Self {
        Self::with_late(leechers, content_len, piece_size, rate, rtt, config, None)
    }

    /// [`Swarmnet::new`] where leecher `late.0` joins `late.1` after the start, as a machine
    /// coming online later: it connects to every other node only then, and starts afresh (its
    /// clock too) when it joins.
    pub(crate) fn with_late(
        leechers: usize,
        content_len: usize,
        piece_size: u32,
        rate: f64,
        rtt: Duration,
        config: SwarmConfig,
        late: Option<(usize, Duration)>,
    ) -> Self {
        let mut content = vec![0; content_len];
        StdRng::seed_from_u64(11).fill_bytes(&mut content);
        let manifest = Arc::new(manifest_for(&content, piece_size));
        let now = Instant::now();
        let n = manifest.piece_count();
        // One deterministic run is one sample of a chaotic process: TAIL_SEED=k gives every
        // node another rng seed, so a change can be compared over several.
        let run: u64 = std::env::var("TAIL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let nodes: Vec<Swarm> = (0..=leechers)
            .map(|i| {
                let have = if i == 0 {
                    Bitfield::full(n)
                } else {
                    Bitfield::new(n)
                };
                let id = PeerId([i as u8 + 1; 20]);
                Swarm::new(
                    manifest.clone(),
                    have,
                    id,
                    config.clone(),
                    run * 1000 + i as u64,
                    now,
                )
            })
            .collect();
        let count = nodes.len();
        let mut net = Self {
            content,
            manifest,
            nodes,
            links: BTreeMap::new(),
            uplinks: (0..count)
                .map(|_| Uplink {
                    queues: BTreeMap::new(),
                    last: None,
                    busy: false,
                    sending: None,
                })
                .collect(),
            downlinks: vec![now; count],
            rate,
            rtt,
            now,
            events: BTreeMap::new(),
            seq: 0,
            completed: vec![None; count],
            reasons: Default::default(),
            first_piece: vec![None; count],
            first_block: vec![None; count],
            sent: vec![0; count],
            check_every: if leechers <= 8 { 1 } else { 101 },
            drains: 0,
            slots: (0, 0, 0),
            timeline: vec![Vec::new(); count],
            trace: false,
            start: now,
            seconds: Vec::new(),
            per_second: std::env::var_os("TAIL_SECONDS").is_some(),
            seed_sent_blocks: HashSet::new(),
            seed_resent: 0,
            from_seed: vec![0; count],
            last_second: (now, [0; 5]),
            last_downloaded: vec![0; count],
            uplink_idle: [0; 5],
            config,
            run_seed: run,
            joined: vec![now; count],
        };
        for a in 0..count {
            for b in a + 1..count {
                if late.is_none_or(|(l, _)| a != l && b != l) {
                    net.link(a, b);
                }
            }
        }
        if let Some((node, after)) = late {
            net.joined[node] = now + after;
            net.schedule(now + after, Event::Join(node));
        }
        net
    }

    /// Connects nodes `a` and `b` now; connection ids are unique per pair.
    fn link(&mut self, a: usize, b: usize) {
        let n = self.nodes.len() as u64;
        let (ca, cb) = (
            ConnId(a as u64 * n + b as u64),
            ConnId(b as u64 * n + a as u64),
        );
        let (ida, idb) = (self.nodes[a].our_id(), self.nodes[b].our_id());
        let now = self.now;
        self.nodes[a].handle_connected(ca, idb, None, now).unwrap();
        self.nodes[b].handle_connected(cb, ida, None, now).unwrap();
        self.links.insert((a, ca), (b, cb));
        self.links.insert((b, cb), (a, ca));
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    /// Starts the next message on node `i`'s uplink, taking connections in turn.
    fn kick(&mut self, i: usize) {
        let up = &mut self.uplinks[i];
        if up.busy {
            return;
        }
        let conns: Vec<ConnId> = up.queues.keys().copied().collect();
        let start = up
            .last
            .and_then(|l| conns.iter().position(|c| *c > l))
            .unwrap_or(0);
        let Some(conn) = (0..conns.len())
            .map(|k| conns[(start + k) % conns.len()])
            .find(|c| !up.queues[c].is_empty())
        else {
            return;
        };
        let Some(msg) = up.queues.get_mut(&conn).and_then(|q| q.pop_front()) else {
            return;
        };
        up.last = Some(conn);
        up.busy = true;
        if let PeerMessage::Piece { data, .. } = &msg {
            up.sending = Some((conn, data.len() as u64));
        }
        if let PeerMessage::Piece {
            data,
            piece,
            offset,
        } = &msg
        {
            self.sent[i] += data.len() as u64;
            if i == 0 && !self.seed_sent_blocks.insert((*piece, *offset)) {
                self.seed_resent += data.len() as u64;
            }
        }
        let send = Duration::from_secs_f64(msg.to_bytes().len() as f64 / self.rate);
        let done = self.now + send;
        self.schedule(done, Event::Free(i));
        if let Some(&(j, cj)) = self.links.get(&(i, conn)) {
            if i == 0 {
                if let PeerMessage::Piece { data, .. } = &msg {
                    self.from_seed[j] += data.len() as u64;
                }
            }
            let arrives = (done + self.rtt / 2).max(self.downlinks[j] + send);
            self.downlinks[j] = arrives;
            self.schedule(arrives, Event::Deliver(j, cj, msg));
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(action) = self.nodes[i].poll_action() {
            let now = self.now;
            match action {
                Action::Send { conn, msg } => {
                    if matches!(msg, PeerMessage::Choke) {
                        // A choke drops the blocks queued for the peer (node/peer.rs).
                        let queue = self.uplinks[i].queues.entry(conn).or_default();
                        let before = queue.len();
                        queue.retain(|m| !matches!(m, PeerMessage::Piece { .. }));
                        for _ in queue.len()..before {
                            self.nodes[i].handle_uploaded(conn, 0, now);
                        }
                    }
                    self.enqueue(i, conn, msg);
                }
                Action::Upload {
                    conn,
                    piece,
                    offset,
                    length,
                } => {
                    let msg = upload(&self.content, &self.manifest, piece, offset, length);
                    self.enqueue(i, conn, msg);
                }
                // The shell drops a block not yet written (node/peer.rs); one on the wire goes.
                Action::CancelUpload {
                    conn,
                    piece,
                    offset,
                    length,
                } => {
                    let queue = self.uplinks[i].queues.entry(conn).or_default();
                    let found = queue.iter().position(|m| {
                        matches!(m, PeerMessage::Piece { piece: p, offset: o, data }
                            if *p == piece.get() && *o == offset && data.len() == length as usize)
                    });
                    if let Some(k) = found {
                        queue.remove(k);
                        self.nodes[i].handle_uploaded(conn, 0, now);
                    }
                }
                Action::Verify { piece, data } => {
                    let start = self.manifest.piece_start(piece) as usize;
                    let ok = self.content[start..start + data.len()] == data[..];
                    self.nodes[i].handle_verified(piece, data, ok, now);
                }
                Action::Completed => self.completed[i] = Some(now),
                Action::Close { conn, .. } => {
                    if let Some((j, cj)) = self.links.remove(&(i, conn)) {
                        self.links.remove(&(j, cj));
                        self.nodes[j].handle_disconnected(cj, now);
                        self.drain(j);
                    }
                }
                Action::Discovered(_) => {}
            }
        }
        self.drains += 1;
        if self.drains % self.check_every == 0 {
            if let Err(e) = self.nodes[i].check_invariants() {
                panic!("node {i}: {e}");
            }
        }
        self.kick(i);
    }

    /// Queues `msg` on `conn`: a block behind everything, any other message ahead of the
    /// blocks, as the node's writer sends them (`write_loop` in node/peer.rs). Queued behind
    /// blocks, a REQUEST or CANCEL waited for every block this node owed that peer.
    fn enqueue(&mut self, i: usize, conn: ConnId, msg: PeerMessage) {
        let queue = self.uplinks[i].queues.entry(conn).or_default();
        let at = if matches!(msg, PeerMessage::Piece { .. }) {
            queue.len()
        } else {
            queue
                .iter()
                .position(|m| matches!(m, PeerMessage::Piece { .. }))
                .unwrap_or(queue.len())
        };
        queue.insert(at, msg);
    }

    /// Totals as in `last_second`.
    fn totals(&self) -> [u64; 5] {
        let stats: Vec<_> = self.nodes[1..].iter().map(Swarm::stats).collect();
        [
            self.sent[0] - self.seed_resent,
            self.seed_resent,
            self.sent[1..].iter().sum(),
            stats.iter().map(|s| s.wasted).sum(),
            stats.iter().map(|s| s.late).sum(),
        ]
    }

    /// One line for the second just past, each as a share of what one uplink sends in it:
    /// the seed's uplink sending first copies of blocks and blocks it sent before, leechers'
    /// uplinks on average, blocks leechers received twice (late ones among them); then pieces
    /// no leecher holds yet, leechers' pieces (least, median, most) and how many are done.
    fn second(&mut self) {
        let totals = self.totals();
        let (then, last) = self.last_second;
        let span = (self.now - then).as_secs_f64().max(1e-9) * self.rate;
        let d = |k: usize| (totals[k] - last[k]) as f64 / span;
        let leechers = self.nodes.len() - 1;
        let pieces = self.manifest.piece_count();
        let unheld = (0..pieces)
            .filter(|&p| self.nodes[1..].iter().all(|n| !n.picker.have.has_index(p)))
            .count();
        let mut have: Vec<u32> = self.nodes[1..]
            .iter()
            .map(|n| n.picker.have.count())
            .collect();
        have.sort_unstable();
        let done = self.completed[1..].iter().flatten().count();
        // Incomplete leechers' downlinks, least used first.
        let mut down: Vec<f64> = (1..self.nodes.len())
            .filter(|&i| self.completed[i].is_none_or(|t| t > then))
            .map(|i| {
                let got = self.nodes[i].stats().downloaded;
                (got - self.last_downloaded[i]) as f64 / span
            })
            .collect();
        down.sort_by(f64::total_cmp);
        for i in 1..self.nodes.len() {
            self.last_downloaded[i] = self.nodes[i].stats().downloaded;
        }
        let starved = down.iter().filter(|&&d| d < 0.5).count();
        // The leecher with fewest pieces: peers unchoking it, those with a piece it wants.
        let least = (1..self.nodes.len())
            .filter(|&i| self.completed[i].is_none())
            .min_by_key(|&i| self.nodes[i].picker.have.count());
        let least = least.map_or(String::new(), |i| {
            let peers = self.nodes[i].peers.values();
            let unchoking = peers.clone().filter(|p| !p.peer_choking).count();
            let useful = peers.filter(|p| !p.peer_choking && p.wanted > 0).count();
            format!(" (n{i}: unchoked by {unchoking}, {useful} with a piece it wants)")
        });
        let lowest: Vec<String> = down.iter().take(3).map(|d| format!("{d:.2}")).collect();
        self.seconds.push(format!(
            "{:6.2}s seed first {:.2} again {:.2} | leechers up {:.2} | twice {:.2} (late {:.2}) | unheld {:3} | have {}/{}/{} of {pieces}, done {done}/{leechers} | down < 0.5: {starved}, least {}{least}",
            (self.now - self.start).as_secs_f64(),
            d(0),
            d(1),
            d(2) / leechers as f64,
            d(3),
            d(4),
            unheld,
            have[0],
            have[have.len() / 2],
            have[have.len() - 1],
            lowest.join(" "),
        ));
        self.last_second = (self.now, totals);
    }

    /// Classifies every incomplete leecher's peers (see [`Reasons`]).
    fn sample(&mut self) {
        if self.per_second && self.now - self.last_second.0 >= Duration::from_secs(1) {
            self.second();
        }
        for i in 1..self.nodes.len() {
            let node = &self.nodes[i];
            if self.first_piece[i].is_none() && node.picker.have.count() > 0 {
                self.first_piece[i] = Some(self.now);
            }
            if self.first_block[i].is_none() && node.stats().downloaded > 0 {
                self.first_block[i] = Some(self.now);
            }
            if node.is_complete() {
                continue;
            }
            self.sample_uplink(i);
            let node = &self.nodes[i];
            let slots = node.slots();
            self.slots = (
                self.slots.0 + slots as u64,
                self.slots.1 + 1,
                self.slots.2.max(slots),
            );
            if self.trace {
                let line = self.trace_line(i);
                self.timeline[i].push(line);
            }
            let node = &self.nodes[i];
            let phase = usize::from(node.picker.missing == 0);
            let mut r = std::mem::take(&mut self.reasons[phase]);
            r.samples += 1;
            for (conn, peer) in &node.peers {
                if !peer.outstanding.is_empty() {
                    r.busy += 1;
                } else if peer.wanted == 0 {
                    r.nothing += 1;
                } else if peer.peer_choking {
                    r.choked += 1;
                } else {
                    let (open, at_seed) = self.idle_cause(i, *conn);
                    if open {
                        r.idle_open += 1;
                    } else {
                        r.idle_taken += 1;
                        r.idle_taken_at_seed += u64::from(at_seed);
                    }
                }
            }
            self.reasons[phase] = r;
        }
    }

    /// Whether leecher `i`'s uplink is idle now, and why (see `uplink_idle`).
    fn sample_uplink(&mut self, i: usize) {
        self.uplink_idle[0] += 1;
        let up = &self.uplinks[i];
        if up.busy || up.queues.values().any(|q| !q.is_empty()) {
            return;
        }
        self.uplink_idle[1] += 1;
        let (mut unchoked, mut choked) = (false, false);
        for (conn, peer) in &self.nodes[i].peers {
            let Some(&(j, cj)) = self.links.get(&(i, *conn)) else {
                continue;
            };
            let wants = self.nodes[j].peers.get(&cj).is_some_and(|p| p.wanted > 0);
            if wants && !peer.am_choking {
                unchoked = true;
            } else if wants {
                choked = true;
            }
        }
        let k = if unchoked {
            2
        } else if choked {
            3
        } else {
            4
        };
        self.uplink_idle[k] += 1;
    }

    /// Leecher `i` now: pieces had, missing, started, verifying; then per peer (by node
    /// number) requests outstanding / depth, `c` if it chokes us, `w` pieces we want from it.
    fn trace_line(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let verifying = node
            .picker
            .pieces
            .iter()
            .filter(|p| matches!(p, PieceState::Verifying(_)))
            .count();
        let mut line = format!(
            "{:7.2}s have {:3} missing {:3} active {:2} verifying {} {}",
            (self.now - self.start).as_secs_f64(),
            node.picker.have.count(),
            node.picker.missing,
            node.picker.active.len(),
            verifying,
            if node.picker.missing == 0 {
                "ENDGAME"
            } else {
                ""
            }
        );
        for (conn, peer) in &node.peers {
            let j = self.links.get(&(i, *conn)).map_or(usize::MAX, |l| l.0);
            line += &format!(
                " | n{j} {}/{}{} w{} q{}",
                peer.outstanding.len(),
                peer.depth.target(),
                if peer.peer_choking { " c" } else { "" },
                peer.wanted,
                self.uplinks[j]
                    .queues
                    .get(&self.links[&(i, *conn)].1)
                    .map_or(0, |q| q.len()),
            );
        }
        line
    }

    /// For an idle peer of leecher `i`: whether it has an open block or an unstarted piece we
    /// want, and whether blocks of its pieces we want are asked of the seed.
    fn idle_cause(&self, i: usize, conn: ConnId) -> (bool, bool) {
        let node = &self.nodes[i];
        let peer = &node.peers[&conn];
        let seed_conn = node
            .peers
            .keys()
            .copied()
            .find(|c| self.links.get(&(i, *c)).is_some_and(|(j, _)| *j == 0));
        let (mut open, mut at_seed) = (false, false);
        for (p, state) in node.picker.pieces.iter().enumerate() {
            if !peer.have.has_index(p as u32) {
                continue;
            }
            match state {
                PieceState::Missing => open = true,
                PieceState::Active(a) => {
                    for b in &a.blocks {
                        match &b.state {
                            BlockState::Open => open = true,
                            BlockState::Requested(list) => {
                                at_seed |= seed_conn.is_some_and(|s| list.contains(&s));
                            }
                            BlockState::Done => {}
                        }
                    }
                }
                PieceState::Verifying(_) | PieceState::Have => {}
            }
        }
        (open, at_seed)
    }

    /// Runs until every leecher completes or `limit` passes; returns when the last finished.
    pub(crate) fn run(&mut self, limit: Duration) -> Option<Duration> {
        let start = self.now;
        self.start = start;
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
        let mut next_sample = start;
        while self.completed[1..].iter().any(Option::is_none) && self.now < start + limit {
            let timer = self
                .nodes
                .iter()
                .map(Swarm::poll_timeout)
                .min()
                .expect("nodes");
            let event = self.events.keys().next().map(|k| k.0);
            self.now = self.now.max(event.map_or(timer, |e| e.min(timer)));
            if self.now >= next_sample {
                self.sample();
                next_sample = self.now + Duration::from_millis(50);
            }
            let now = self.now;
            if event.is_some_and(|e| e <= now) {
                let Some((_, event)) = self.events.pop_first() else {
                    break;
                };
                match event {
                    Event::Free(i) => {
                        self.uplinks[i].busy = false;
                        if let Some((conn, len)) = self.uplinks[i].sending.take() {
                            self.nodes[i].handle_uploaded(conn, len, now);
                        }
                        self.kick(i);
                    }
                    Event::Join(i) => {
                        let n = self.manifest.piece_count();
                        let id = self.nodes[i].our_id();
                        self.nodes[i] = Swarm::new(
                            self.manifest.clone(),
                            Bitfield::new(n),
                            id,
                            self.config.clone(),
                            self.run_seed * 1000 + i as u64,
                            now,
                        );
                        for j in 0..self.nodes.len() {
                            if j != i {
                                self.link(i.min(j), i.max(j));
                            }
                        }
                        for j in 0..self.nodes.len() {
                            self.drain(j);
                        }
                    }
                    Event::Deliver(to, conn, msg) => {
                        let msg = PeerMessage::decode(msg.kind(), SERVICE, msg.to_bytes().into())
                            .expect("own encoding");
                        self.nodes[to].handle_message(conn, msg, now);
                        self.drain(to);
                    }
                }
            } else {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].poll_timeout() <= now {
                        self.nodes[i].handle_timeout(now);
                        self.drain(i);
                    }
                }
            }
        }
        if self.per_second {
            self.second();
        }
        self.completed[1..]
            .iter()
            .map(|c| c.map(|t| t - start))
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max())
    }
}

/// 20 Mbit/s of TCP payload, as netlab's shaper gives a 20mbit link.
pub(crate) const RATE: f64 = 19.1e6 / 8.0;

/// [`RATE`], or `TAIL_MBIT` links' payload rate (netlab's shaper gives 95.5 % of a link's rate
/// as TCP payload), to compare with the bench at another `RATE` (its 1 + 99 runs at 1mbit).
fn bench_rate() -> f64 {
    std::env::var("TAIL_MBIT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(RATE, |mbit| mbit * 0.955e6 / 8.0)
}

/// What one run of [`tail`] measured.
struct Tail {
    /// When the last leecher finished, over the fluid bound.
    ratio: f64,
    reasons: [Reasons; 2],
    /// When leechers first had a piece, and finished, over the bound: (earliest, latest).
    first_piece: (f64, f64),
    finished: (f64, f64),
    /// Bytes the seed uploaded, over the content's size.
    seed_upload: f64,
    /// Bytes leechers received twice or unasked, over the content's size, summed.
    wasted: f64,
    /// Of `wasted`, blocks that came for requests given up (spec/P2P.md §3.8).
    late: f64,
    /// The share of the run's time the seed's uplink, and leechers' on average, sent blocks.
    upload_use: (f64, f64),
    /// Incomplete leechers' regular unchoke slots: mean over samples, and the most.
    slots: (f64, usize),
    /// The seed's regular slots at the end.
    seed_slots: usize,
    /// The last leecher's last fifth of samples (when traced), and its node number.
    trace: Vec<String>,
    last: usize,
    /// One line a second when `TAIL_SECONDS` is set.
    seconds: Vec<String>,
    uplink_idle: [u64; 5],
}

impl Tail {
    fn print(&self, leechers: usize) {
        eprintln!(
            "1 seed + {leechers}: {:.2}x the bound; first piece {:.2}..{:.2}, finished {:.2}..{:.2} (x bound); seed sent {:.2}x the content; wasted {:.2}x (late for a given-up request {:.2}x); uplinks busy: seed {:.2}, leechers {:.2}; slots: leechers {:.1} (at most {}), seed {}",
            self.ratio,
            self.first_piece.0,
            self.first_piece.1,
            self.finished.0,
            self.finished.1,
            self.seed_upload,
            self.wasted,
            self.late,
            self.upload_use.0,
            self.upload_use.1,
            self.slots.0,
            self.slots.1,
            self.seed_slots
        );
        eprintln!("  before endgame, {}", self.reasons[0].line());
        eprintln!("  in endgame,     {}", self.reasons[1].line());
        let u = self.uplink_idle;
        let n = u[0].max(1) as f64;
        eprintln!(
            "  incomplete leechers' uplinks idle {:.2} of samples: an unchoked peer wants a piece (asked elsewhere) {:.2}, only choked peers want one {:.2}, nobody wants any {:.2}",
            u[1] as f64 / n,
            u[2] as f64 / n,
            u[3] as f64 / n,
            u[4] as f64 / n
        );
        for line in &self.seconds {
            eprintln!("    {line}");
        }
        if !self.trace.is_empty() {
            eprintln!("  the last leecher (n{}), its last fifth:", self.last);
            for line in &self.trace {
                eprintln!("    {line}");
            }
        }
    }
}

/// The netlab bench's content length (benches/swarm/run.sh SIZE_MIB=64).
pub(crate) const BENCH_LEN: usize = 64 << 20;

/// The bench's piece size: what `ferry-peer make` picks for [`BENCH_LEN`] (spec/P2P.md §2.3:
/// 64 KiB, 1024 pieces, since stop 31; 256 KiB before), or `TAIL_PIECE_KIB` to compare.
pub(crate) fn bench_piece() -> u32 {
    std::env::var("TAIL_PIECE_KIB")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or_else(|| choose_piece_size(BENCH_LEN as u64), |kib| kib << 10)
}

/// One seed and `leechers` on equal links, every pair connected.
fn tail(leechers: usize, content_len: usize, piece_size: u32) -> Tail {
    tail_with(leechers, content_len, piece_size, SwarmConfig::default())
}

/// [`tail`] with every node on `config`.
fn tail_with(leechers: usize, content_len: usize, piece_size: u32, config: SwarmConfig) -> Tail {
    tail_on(
        leechers,
        content_len,
        piece_size,
        Duration::from_millis(2),
        config,
        false,
    )
}

/// [`tail_with`] with every path taking `rtt` there and back.
fn tail_on(
    leechers: usize,
    content_len: usize,
    piece_size: u32,
    rtt: Duration,
    config: SwarmConfig,
    trace: bool,
) -> Tail {
    let rate = bench_rate();
    let mut net = Swarmnet::new(leechers, content_len, piece_size, rate, rtt, config);
    net.trace = trace;
    let start = net.now;
    let bound = content_len as f64 / rate;
    let limit = Duration::from_secs_f64((4.0 * bound).max(300.0));
    let took = net.run(limit).expect("all complete");
    let x = |t: Option<Instant>| t.map_or(f64::NAN, |t| (t - start).as_secs_f64() / bound);
    let range = |v: &[Option<Instant>]| {
        v.iter()
            .map(|t| x(*t))
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
                (lo.min(t), hi.max(t))
            })
    };
    let content = content_len as f64;
    let capacity = rate * took.as_secs_f64();
    let leechers_sent: u64 = net.sent[1..].iter().sum();
    // The last leecher's last fifth, one line a sample.
    let last = (1..net.nodes.len())
        .max_by_key(|&i| net.completed[i])
        .unwrap_or(1);
    let lines = &net.timeline[last];
    let trace = lines[lines.len() - lines.len() / 5..].to_vec();
    if std::env::var_os("TAIL_PER_PEER").is_some() {
        let mut rows: Vec<(u64, u64, usize)> = (1..net.nodes.len())
            .map(|i| (net.from_seed[i], net.sent[i], i))
            .collect();
        rows.sort_unstable();
        for (from, sent, i) in rows {
            eprintln!(
                "  n{i}: from seed {:.3}, sent {:.3} of capacity, done {:.3}",
                from as f64 / content_len as f64,
                sent as f64 / capacity,
                x(net.completed[i])
            );
        }
    }
    Tail {
        trace,
        last,
        seconds: std::mem::take(&mut net.seconds),
        uplink_idle: net.uplink_idle,
        upload_use: (
            net.sent[0] as f64 / capacity,
            leechers_sent as f64 / capacity / leechers as f64,
        ),
        ratio: took.as_secs_f64() / bound,
        slots: (net.slots.0 as f64 / net.slots.1.max(1) as f64, net.slots.2),
        seed_slots: net.nodes[0].slots(),
        reasons: net.reasons.clone(),
        first_piece: range(&net.first_piece[1..]),
        finished: range(&net.completed[1..]),
        seed_upload: net.nodes[0].stats().uploaded as f64 / content,
        wasted: net.nodes[1..]
            .iter()
            .map(|n| n.stats().wasted as f64)
            .sum::<f64>()
            / content,
        late: net.nodes[1..]
            .iter()
            .map(|n| n.stats().late as f64)
            .sum::<f64>()
            / content,
    }
}

/// issue 14: the tail of a swarm of one seed and eight leechers, against the fluid bound
/// (every byte leaves the seed once and enters each leecher once: content / rate). A
/// measurement more than a check; it prints what held each leecher's peers. On 16 pieces the
/// start alone costs half the bound (the seed shares its uplink among all eight until each has
/// a piece), and the seed sends each piece about twice, so this shape is far from the bench's.
/// The bound here only catches a regression.
#[test]
#[ignore = "a measurement, about 3 s in a debug build: cargo test -p ferry-p2p --lib swarm::tests::tail -- --ignored --nocapture"]
fn eight_leechers_finish_near_the_fluid_bound() {
    let t = tail(8, 4 << 20, 256 << 10);
    t.print(8);
    assert!(t.ratio <= 2.2, "{:.2}x the bound", t.ratio);
}

/// The same on the netlab bench's shape (benches/swarm/run.sh: 64 MiB; the figures below are
/// of 256 KiB pieces, so 256 pieces; at [`bench_piece`]'s 64 KiB it measured 1.02x): the start
/// (the seed sharing its uplink among every leecher until each has a piece) and the seed's
/// reveals weigh 16 times less than on 16 pieces. Measured 1.29x: about 2.9 of a
/// leecher's 8 peers have pieces it wants but choke it (3 regular slots and 1 optimistic,
/// between rechokes 10 s apart), leechers' uplinks are 0.68 busy, and the seed sends 1.15x the
/// content. With the super-seed's first copies (issue 13) 1.21x, and the same with the
/// rate-based slot count re-sized only at rechokes: it opened leechers to 5 or 6 slots at the
/// first rechoke (10 s, a third of the run), too late to matter. Grown between rechokes too
/// (every 2.5 s while the uplink has idle time): 1.10x, leechers at 8.5 slots on average
/// (see `unchoke_slot_rules_on_every_shape`). With the request depth at least a second of
/// each peer's rate (`depth.rs`, `QUEUE_TIME`): 1.15x, leechers receiving 0.6x the content
/// as duplicates (endgame requests to a second peer queued behind a second of others; 0.17x
/// before). Endgame duplicates only of late requests (spec/P2P.md §4.2): 1.14x, 0.59x; with no
/// endgame at all 1.13x, 0.48x, so most of the 0.6x is not endgame duplicates.
#[test]
#[ignore = "a measurement, about 2 minutes in a debug build: cargo test -p ferry-p2p --lib swarm::tests::tail -- --ignored --nocapture"]
fn eight_leechers_on_the_bench_shape() {
    let t = tail(8, BENCH_LEN, bench_piece());
    t.print(8);
    assert!(t.ratio <= 1.2, "{:.2}x the bound", t.ratio);
}

/// What the choker costs on the bench's shape: with 7 regular slots (every other leecher
/// unchoked) instead of 3, the same swarm measured 1.09x, bound by the seed's uplink (busy
/// 0.99, sending 1.09x the content), with 0.12 of a leecher's peers choking it instead of 2.9.
/// Kept as the reference the rate-based count (`slots.rs`) aims at: a fixed 7 (`max_unchokes: 0`
/// keeps the count from moving above it); 1.08x with the super-seed's first copies; 1.16x
/// with the request depth at least a second of each peer's rate (`depth.rs`, `QUEUE_TIME`),
/// 0.67x of the content received twice (0.14x before); endgame duplicates only of late
/// requests (spec/P2P.md §4.2) 1.15x, 0.65x (no endgame at all: 1.14x, 0.55x).
#[test]
#[ignore = "a measurement, about 2 minutes in a debug build: cargo test -p ferry-p2p --lib swarm::tests::tail -- --ignored --nocapture"]
fn eight_leechers_on_the_bench_shape_with_every_peer_unchoked() {
    let config = SwarmConfig {
        regular_unchokes: 7,
        max_unchokes: 0,
        ..SwarmConfig::default()
    };
    let t = tail_with(8, BENCH_LEN, bench_piece(), config);
    t.print(8);
    assert!(t.ratio <= 1.2, "{:.2}x the bound", t.ratio);
}

/// 1 seed + 32 on 256 pieces (16 MiB of 64 KiB pieces, to stay within a few minutes in a debug
/// build; invariants checked every 101st step). Measured 1.88x: about 20 of a leecher's 32 peers
/// have pieces it wants but choke it, the seed's uplink is 0.81 busy and sends 1.53x the
/// content; 7 regular slots gave 1.78x. With the super-seed's first copies (issue 13) it took
/// 2.25x, its first leecher done at 1.17x; with the rate-based slot count re-sized only at
/// rechokes 2.27x (the run ended at 1.6 rechoke intervals, so the count moved once, near the
/// end); grown between rechokes too, 1.54x.
#[test]
#[ignore = "a measurement, about 2 minutes in a debug build: cargo test -p ferry-p2p --lib swarm::tests::tail -- --ignored --nocapture"]
fn thirty_two_leechers_on_256_pieces() {
    let t = tail(32, 16 << 20, 64 << 10);
    t.print(32);
    assert!(t.ratio <= 1.7, "{:.2}x the bound", t.ratio);
}

/// 1 + 32 on the netlab bench's shape (64 MiB of [`bench_piece`] pieces, as
/// `benches/swarm/run.sh` NS=32; measured over seeds 0-11 at 64 KiB: 1.225x, 1.157x with the
/// starving-peer welcome slot, 1.126x with a slow peer's reveal window shrinking below the
/// first one; benches/swarm/README.md): the bound is 28 s instead of 7, so the start (leechers
/// with nothing to trade yet) and the catch-up after the last first copy (pieces crossing
/// queues a second deep at each hop) weigh a quarter as much as on 16 MiB. About 5 s in
/// release.
#[test]
#[ignore = "a measurement, about 5 s in release: cargo test --release -p ferry-p2p --lib swarm::tests::tail::thirty_two -- --ignored --nocapture"]
fn thirty_two_leechers_on_the_bench_shape() {
    let t = tail(32, BENCH_LEN, bench_piece());
    t.print(32);
    assert!(t.ratio <= 1.7, "{:.2}x the bound", t.ratio);
}

/// 1 + 99 on the bench's shape (run.sh NS=99, netlab's largest swarm): the N = 100,
/// which this 2-core machine cannot run on netlab (CPU-bound at 20 Mbit/s; scaled down, a HAVE
/// per piece per peer outweighs small pieces). Measured at `4278678` (release, load ~12):
/// 1.36x, seed sent 1.30x the content, wasted 1.32x (late for given-up requests). About 80 s
/// in release. `TAIL_MBIT=1` runs it on netlab's 1 + 99 shape (run.sh `RATE=1mbit`), about
/// 150 s: at `7bb8cb9` 1.16x and 1.17x (`TAIL_SEED` 0 and 2), leechers' uplinks 0.85-0.86
/// busy; netlab's 1.28-1.32x at that code is about this times the 1.11x of its wire bytes
/// beyond full frames (HAVEs and ACKs, which this harness does not carry). `TAIL_PER_PEER=1`
/// prints each leecher's share of the content from the seed and of its uplink used: at
/// `7bb8cb9` the seed served the same 8 leechers all along (13-14 % of the content each, their
/// uplinks 0.92-0.95 busy, the 85 others' 0.65-0.93); with stints of 4 (spec/P2P.md §4.4) 1.14x
/// and 1.12x, none over 3 % from the seed.
#[test]
#[ignore = "a measurement, about 80 s in release: cargo test --release -p ferry-p2p --lib swarm::tests::tail::ninety_nine -- --ignored --nocapture"]
fn ninety_nine_leechers_on_the_bench_shape() {
    let t = tail(99, BENCH_LEN, bench_piece());
    t.print(99);
    assert!(t.ratio <= 2.0, "{:.2}x the bound", t.ratio);
}

/// The unchoke slot rules side by side on every shape above: the fixed slots (3 regular while
/// leeching, 7 while seeding: `max_unchokes: 0`, the choker before `slots.rs`), 7 regular
/// (every other leecher at N = 8), the rate-based count (`slots.rs`, the default), and both
/// again with rechokes every 5 s instead of 10 s. Prints one table; the runs go on parallel
/// threads. Measured (release build, 2 cores shared), the rate-based count re-sized only at
/// rechokes (before) and also grown between them (after, the default):
///
/// | shape | fixed 3 | fixed 7 | rate-based before / after | fixed 3, 5 s | rate-based, 5 s, before / after |
/// |---|---|---|---|---|---|
/// | 1 + 8, 16 pieces | 1.81x | 2.43x | 1.81x / 1.81x | 1.81x | 1.81x / 1.79x |
/// | 1 + 8, 256 pieces (bench) | 1.21x | 1.08x | 1.21x / 1.10x | 1.25x | 1.11x / 1.07x |
/// | 1 + 32, 256 pieces | 2.25x | 1.81x | 2.27x / 1.54x | 1.92x | 1.63x / 1.40x |
///
/// At 10 s rechokes these runs (2 to 16 s) see one or two rechokes; re-sized only there, the
/// count could act at one at most. Grown every 2.5 s while the uplink has idle time, leechers
/// average 8.5 slots at N = 8 and 5.0 at N = 32 with the 10 s rhythm kept, and the rate-based
/// count beats a fixed 7 at N = 32.
#[test]
#[ignore = "a measurement, about 25 minutes of CPU in a debug build, 2 in release: cargo test --release -p ferry-p2p --lib swarm::tests::tail::unchoke -- --ignored --nocapture"]
fn unchoke_slot_rules_on_every_shape() {
    let fixed = SwarmConfig {
        max_unchokes: 0,
        ..SwarmConfig::default()
    };
    let seven = SwarmConfig {
        regular_unchokes: 7,
        max_unchokes: 0,
        ..SwarmConfig::default()
    };
    let rules = [
        ("fixed 3 (+1), seed 7", fixed),
        ("fixed 7 (+1)", seven),
        ("rate-based (default)", SwarmConfig::default()),
        (
            "fixed 3 (+1), rechoke 5 s",
            SwarmConfig {
                rechoke_interval: Duration::from_secs(5),
                max_unchokes: 0,
                ..SwarmConfig::default()
            },
        ),
        (
            "rate-based, rechoke 5 s",
            SwarmConfig {
                rechoke_interval: Duration::from_secs(5),
                ..SwarmConfig::default()
            },
        ),
    ];
    let shapes = [
        ("1 + 8, 16 pieces of 256 KiB", 8, 4 << 20, 256 << 10),
        (
            "1 + 8, 256 pieces of 256 KiB (bench)",
            8,
            64 << 20,
            256 << 10,
        ),
        ("1 + 32, 256 pieces of 64 KiB", 32, 16 << 20, 64 << 10),
    ];
    let results: Vec<Vec<Tail>> = std::thread::scope(|scope| {
        let handles: Vec<Vec<_>> = shapes
            .iter()
            .map(|&(_, n, len, piece)| {
                rules
                    .iter()
                    .map(|(_, config)| {
                        let config = config.clone();
                        scope.spawn(move || tail_with(n, len, piece, config))
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|row| row.into_iter().map(|h| h.join().expect("run")).collect())
            .collect()
    });
    let names: Vec<&str> = rules.iter().map(|r| r.0).collect();
    eprintln!("| shape | {} |", names.join(" | "));
    eprintln!("|---|{}", "---|".repeat(rules.len()));
    for ((name, n, _, _), row) in shapes.iter().zip(&results) {
        let cells: Vec<String> = row
            .iter()
            .map(|t| {
                format!(
                    "{:.2}x (slots {:.1}, up {:.2}/{:.2})",
                    t.ratio, t.slots.0, t.upload_use.0, t.upload_use.1
                )
            })
            .collect();
        eprintln!("| {name} | {} |", cells.join(" | "));
        for (rule, t) in rules.iter().zip(row) {
            eprintln!("{name}, {}:", rule.0);
            t.print(*n);
        }
    }
}

/// issue 14: one seed and three leechers on the bench's long link (20 Mbit/s, 200 ms RTT,
/// 64 MiB of 256 KiB pieces), printing the last leecher's last fifth, sample by sample.
/// netlab measured 1.26-1.66x; this model gives 1.05x (1.07x with `QUEUE_TIME` in
/// `depth.rs`): it has no socket buffers, CPU contention or lab delay line, and none of its
/// depths sank to the floor as netlab's leecher-to-leecher ones did.
#[test]
#[ignore = "a measurement, about a second in release: cargo test --release -p ferry-p2p --lib swarm::tests::tail::three -- --ignored --nocapture"]
fn three_leechers_on_a_long_link() {
    let t = tail_on(
        3,
        BENCH_LEN,
        bench_piece(),
        Duration::from_millis(200),
        SwarmConfig::default(),
        true,
    );
    t.print(3);
    assert!(t.ratio <= 1.15, "{:.2}x the bound", t.ratio);
}
