//! One seed and N leechers, every pair connected, over modelled links on a fake clock: each
//! node's uplink sends at `rate` bytes per second, sharing it among its connections in turn
//! (one message at a time, as fair queueing shares a shaped link among TCP flows), and every
//! message then takes `rtt / 2` and queues for the receiver's downlink, also at `rate` (netlab
//! shapes both directions, so the fluid bound is content / rate). Pieces are checked by comparing
//! bytes, which is what the hash would say, at a fraction of a debug build's SHA-256 cost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::manifest::Manifest;
use crate::pieces::Bitfield;
use crate::swarm::{Action, ConnId, Swarm, SwarmConfig};
use crate::wire::{PeerId, PeerMessage, SERVICE};

use super::util::{manifest_for, upload};

enum Event {
    Deliver(usize, ConnId, PeerMessage),
    /// Node's uplink finished its last message.
    Free(usize),
}

struct Uplink {
    /// Per connection, messages waiting, in order.
    queues: BTreeMap<ConnId, VecDeque<PeerMessage>>,
    /// The connection served last: the next turn starts after it.
    last: Option<ConnId>,
    busy: bool,
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
    /// Sum over samples of leechers' peers that had wanted pieces, unchoked us, and had
    /// nothing in flight; and the number of samples.
    pub(crate) idle_peers: (u64, u64),
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
        let mut content = vec![0; content_len];
        StdRng::seed_from_u64(11).fill_bytes(&mut content);
        let manifest = Arc::new(manifest_for(&content, piece_size));
        let now = Instant::now();
        let n = manifest.piece_count();
        let nodes: Vec<Swarm> = (0..=leechers)
            .map(|i| {
                let have = if i == 0 {
                    Bitfield::full(n)
                } else {
                    Bitfield::new(n)
                };
                let id = PeerId([i as u8 + 1; 20]);
                Swarm::new(manifest.clone(), have, id, config.clone(), i as u64, now)
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
                })
                .collect(),
            downlinks: vec![now; count],
            rate,
            rtt,
            now,
            events: BTreeMap::new(),
            seq: 0,
            completed: vec![None; count],
            idle_peers: (0, 0),
        };
        let mut next = 1;
        for a in 0..count {
            for b in a + 1..count {
                let (ca, cb) = (ConnId(next), ConnId(next + 1));
                next += 2;
                let (ida, idb) = (net.nodes[a].our_id(), net.nodes[b].our_id());
                net.nodes[a].handle_connected(ca, idb, None, now).unwrap();
                net.nodes[b].handle_connected(cb, ida, None, now).unwrap();
                net.links.insert((a, ca), (b, cb));
                net.links.insert((b, cb), (a, ca));
            }
        }
        net
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
        let send = Duration::from_secs_f64(msg.to_bytes().len() as f64 / self.rate);
        let done = self.now + send;
        self.schedule(done, Event::Free(i));
        if let Some(&(j, cj)) = self.links.get(&(i, conn)) {
            let arrives = (done + self.rtt / 2).max(self.downlinks[j] + send);
            self.downlinks[j] = arrives;
            self.schedule(arrives, Event::Deliver(j, cj, msg));
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(action) = self.nodes[i].poll_action() {
            let now = self.now;
            match action {
                Action::Send { conn, msg } => self.enqueue(i, conn, msg),
                Action::Upload {
                    conn,
                    piece,
                    offset,
                    length,
                } => {
                    let msg = upload(&self.content, &self.manifest, piece, offset, length);
                    self.nodes[i].handle_uploaded(conn, u64::from(length), now);
                    self.enqueue(i, conn, msg);
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
                Action::CancelUpload { .. } | Action::Discovered(_) => {}
            }
        }
        if let Err(e) = self.nodes[i].check_invariants() {
            panic!("node {i}: {e}");
        }
        self.kick(i);
    }

    fn enqueue(&mut self, i: usize, conn: ConnId, msg: PeerMessage) {
        self.uplinks[i]
            .queues
            .entry(conn)
            .or_default()
            .push_back(msg);
    }

    /// Leechers' peers that have pieces they want and unchoked them but have nothing asked.
    fn sample_idle(&mut self) {
        for node in &self.nodes[1..] {
            if node.is_complete() || node.picker.missing > 0 {
                continue;
            }
            let idle = node
                .peers
                .values()
                .filter(|p| p.wanted > 0 && !p.peer_choking && p.outstanding.is_empty())
                .count();
            self.idle_peers.0 += idle as u64;
            self.idle_peers.1 += 1;
        }
    }

    /// Runs until every leecher completes or `limit` passes; returns when the last finished.
    pub(crate) fn run(&mut self, limit: Duration) -> Option<Duration> {
        let start = self.now;
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
                self.sample_idle();
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
                        self.kick(i);
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
        self.completed[1..]
            .iter()
            .map(|c| c.map(|t| t - start))
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max())
    }
}

/// 20 Mbit/s of TCP payload, as netlab's shaper gives a 20mbit link.
const RATE: f64 = 19.1e6 / 8.0;

/// One seed and `leechers` on equal links: when the last leecher finished, and the mean
/// number of a leecher's peers (sampled every 50 ms during its endgame) that had pieces it
/// wanted and unchoked it but had nothing asked.
fn tail(leechers: usize) -> (Duration, f64) {
    let mut net = Swarmnet::new(
        leechers,
        4 << 20,
        256 << 10,
        RATE,
        Duration::from_millis(2),
        SwarmConfig::default(),
    );
    let took = net.run(Duration::from_secs(300)).expect("all complete");
    let idle = net.idle_peers.0 as f64 / net.idle_peers.1.max(1) as f64;
    (took, idle)
}

/// issue 14: the tail of a swarm of one seed and eight leechers, against the fluid bound
/// (every byte leaves the seed once and enters each leecher once: content / rate). A
/// measurement more than a check (about 15 s in a debug build): on this model the swarm takes
/// about 1.9x the bound, and filling freed unchoke slots at once instead of at the next
/// rechoke made it 2.0x, so that was not kept. The bound here only catches a regression.
#[test]
#[ignore = "a measurement, about 15 s in a debug build: cargo test -p ferry-p2p --lib eight_leechers -- --ignored --nocapture"]
fn eight_leechers_finish_near_the_fluid_bound() {
    let bound = (4 << 20) as f64 / RATE;
    let (took, idle) = tail(8);
    let ratio = took.as_secs_f64() / bound;
    eprintln!("bound {bound:.2} s: {ratio:.2}x; idle peers at the tail {idle:.2}");
    assert!(ratio <= 2.2, "{ratio:.2}x the bound {bound:.2} s");
}
