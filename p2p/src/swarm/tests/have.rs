//! HAVEs held for mutually choked peers (spec/P2P.md §3.5): a leecher fed by a scripted seed,
//! with scripted peers that choke it or that it unchoked.

use bytes::Bytes;

use super::util::*;
use crate::swarm::{Action, ConnId, SwarmConfig};
use crate::wire::{PeerId, PeerMessage};

/// 100_000 bytes in 16 KiB pieces: 7 pieces of one block each.
const PIECES: u32 = 7;
/// The piece WANTING has.
const LAST: u32 = PIECES - 1;
const SOURCE: ConnId = ConnId(1);
/// Has every piece, chokes us, we choke it, and is not interested in us: a seed, or a
/// super-seed, which shows a choked peer one piece at a time and shows the next once our HAVE
/// says we have the last (§4.4): held, that HAVE would keep it showing us nothing, or a piece
/// we have.
const SEEDING: ConnId = ConnId(2);
/// A peer that said INTERESTED, which we unchoked (our one slot); it chokes us.
const UNCHOKED: ConnId = ConnId(3);
/// Has nothing, is not interested, chokes us and we choke it: our HAVEs make it interested.
const LACKING: ConnId = ConnId(4);
/// Has only the last piece, is interested in us, chokes us, and we choke it (our slot is
/// UNCHOKED's): our HAVEs change nothing it can do, so they are held.
const WANTING: ConnId = ConnId(5);

/// A leecher with one unchoke slot (the optimistic one), connected to a seed that unchoked it (SOURCE), a peer
/// with everything that chokes it (SEEDING), an interested peer with nothing that it unchoked
/// (UNCHOKED), a peer with nothing that chokes it (LACKING) and an interested peer with the
/// last piece that it chokes and that chokes it (WANTING). Returns the net, the leecher and
/// the blocks it requested from the seed, one per piece.
fn leecher() -> (Net, usize, Vec<PeerMessage>) {
    let mut net = Net::new(100_000, 16_384);
    let config = SwarmConfig {
        // No regular slot: UNCHOKED takes the optimistic one.
        regular_unchokes: 0,
        max_unchokes: 0,
        ..SwarmConfig::default()
    };
    let a = net.add_with(false, false, config);
    let now = net.now;
    for (conn, id) in [
        (SOURCE, 0xe1),
        (SEEDING, 0xe2),
        (UNCHOKED, 0xe3),
        (LACKING, 0xe4),
        (WANTING, 0xe5),
    ] {
        net.nodes[a]
            .handle_connected(conn, PeerId([id; 20]), None, now)
            .unwrap();
    }
    for conn in [SOURCE, SEEDING] {
        let all = PeerMessage::Bitfield(Bytes::from_static(&[0xfe]));
        net.nodes[a].handle_message(conn, all, now);
    }
    for conn in [UNCHOKED, LACKING] {
        net.nodes[a].handle_message(conn, PeerMessage::Bitfield(Bytes::from_static(&[0])), now);
    }
    let last_only = PeerMessage::Bitfield(Bytes::from_static(&[0x02]));
    net.nodes[a].handle_message(WANTING, last_only, now);
    net.nodes[a].handle_message(UNCHOKED, PeerMessage::Interested, now);
    let actions = settle(&mut net, a);
    assert!(
        sent(&actions, UNCHOKED).contains(&PeerMessage::Unchoke),
        "{actions:?}"
    );
    net.nodes[a].handle_message(WANTING, PeerMessage::Interested, now);
    let actions = settle(&mut net, a);
    assert!(
        !sent(&actions, WANTING).contains(&PeerMessage::Unchoke),
        "{actions:?}"
    );
    net.nodes[a].handle_message(SOURCE, PeerMessage::Unchoke, now);
    let actions = settle(&mut net, a);
    let mut blocks: Vec<PeerMessage> = requests_to(&actions, SOURCE)
        .into_iter()
        .map(|b| block_msg(&net, b))
        .collect();
    assert_eq!(blocks.len(), PIECES as usize, "{actions:?}");
    // The last piece last: it ends our interest in WANTING, and that NOT_INTERESTED carries
    // whatever is held for it.
    blocks.sort_by_key(|b| piece_of(b) == LAST);
    (net, a, blocks)
}

/// Messages to `to` in `actions`, in order.
fn sent(actions: &[Action], to: ConnId) -> Vec<PeerMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn, msg } if *conn == to => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn haves(actions: &[Action], to: ConnId) -> Vec<u32> {
    sent(actions, to)
        .into_iter()
        .filter_map(|m| match m {
            PeerMessage::Have(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn piece_of(block: &PeerMessage) -> u32 {
    match block {
        PeerMessage::Piece { piece, .. } => *piece,
        other => panic!("not a block: {other:?}"),
    }
}

/// HAVEs to a peer that chokes us, that we choke, and that is interested in us anyway wait for
/// the 1 s tick and leave together, in order. HAVEs to the seed that unchoked us, to the peer
/// we unchoked, to a choked peer that lacks the piece, and to a choked peer that has it but is
/// not interested (a super-seed waits on them) leave at once.
#[test]
fn haves_to_a_mutually_choked_peer_wait_for_the_tick_together() {
    let (mut net, a, blocks) = leecher();
    let mut pieces = Vec::new();
    for block in &blocks[..3] {
        pieces.push(piece_of(block));
        net.nodes[a].handle_message(SOURCE, block.clone(), net.now);
        let actions = settle(&mut net, a);
        let p = *pieces.last().unwrap();
        for to in [SOURCE, UNCHOKED, LACKING, SEEDING] {
            assert_eq!(haves(&actions, to), [p], "to {to:?}: {actions:?}");
        }
        assert_eq!(haves(&actions, WANTING), [] as [u32; 0], "{actions:?}");
    }
    net.now += std::time::Duration::from_secs(1);
    let now = net.now;
    net.nodes[a].handle_timeout(now);
    let actions = settle(&mut net, a);
    assert_eq!(haves(&actions, WANTING), pieces, "{actions:?}");
    // One write: nothing else to that peer between them.
    let to_wanting: Vec<&Action> = actions
        .iter()
        .filter(|x| matches!(x, Action::Send { conn, .. } if *conn == WANTING))
        .collect();
    assert!(
        to_wanting[..pieces.len()].iter().all(|x| matches!(
            x,
            Action::Send {
                msg: PeerMessage::Have(_),
                ..
            }
        )),
        "{actions:?}"
    );
    // Nothing held any more: the next tick sends none again.
    net.now += std::time::Duration::from_secs(1);
    let now = net.now;
    net.nodes[a].handle_timeout(now);
    assert_eq!(haves(&settle(&mut net, a), WANTING), [] as [u32; 0]);
}

/// [`leecher`] after the first block: the HAVE for its piece is held for WANTING.
fn holding_the_first() -> (Net, usize, Vec<PeerMessage>) {
    let (mut net, a, blocks) = leecher();
    let now = net.now;
    net.nodes[a].handle_message(SOURCE, blocks[0].clone(), now);
    assert_eq!(haves(&settle(&mut net, a), WANTING), [] as [u32; 0]);
    (net, a, blocks)
}

/// Held HAVEs go ahead of the next message to that peer, and at once when it unchokes us.
#[test]
fn held_haves_leave_with_the_next_message_or_an_unchoke() {
    let (mut net, a, blocks) = holding_the_first();
    let now = net.now;
    // The last piece ends our interest in WANTING: the held HAVE goes ahead of NOT_INTERESTED.
    let last = blocks.last().unwrap();
    net.nodes[a].handle_message(SOURCE, last.clone(), now);
    let actions = settle(&mut net, a);
    let to_wanting = sent(&actions, WANTING);
    let not_interested = to_wanting
        .iter()
        .position(|m| *m == PeerMessage::NotInterested)
        .unwrap_or_else(|| panic!("no NOT_INTERESTED: {actions:?}"));
    assert!(
        to_wanting[..not_interested].contains(&PeerMessage::Have(piece_of(&blocks[0]))),
        "{actions:?}"
    );

    let (mut net, a, blocks) = holding_the_first();
    let now = net.now;
    net.nodes[a].handle_message(WANTING, PeerMessage::Unchoke, now);
    let actions = settle(&mut net, a);
    assert_eq!(
        haves(&actions, WANTING),
        [piece_of(&blocks[0])],
        "{actions:?}"
    );
    // Unchoked by it: the next HAVE goes at once.
    net.nodes[a].handle_message(SOURCE, blocks[1].clone(), now);
    let actions = settle(&mut net, a);
    assert_eq!(
        haves(&actions, WANTING),
        [piece_of(&blocks[1])],
        "{actions:?}"
    );
}

/// A peer that says NOT_INTERESTED gets our held HAVEs at once: they may name pieces it
/// lacks, which would make it interested again.
#[test]
fn not_interested_sends_the_held_haves_at_once() {
    let (mut net, a, blocks) = holding_the_first();
    let now = net.now;
    net.nodes[a].handle_message(WANTING, PeerMessage::NotInterested, now);
    let actions = settle(&mut net, a);
    assert_eq!(
        haves(&actions, WANTING),
        [piece_of(&blocks[0])],
        "{actions:?}"
    );
}

/// Completing sends every held HAVE before `Completed` (a download that stops at completion
/// closes after its last HAVE, spec/P2P.md §3.10), without waiting for a tick.
#[test]
fn completion_flushes_held_haves() {
    let (mut net, a, blocks) = leecher();
    let (last, rest) = blocks.split_last().unwrap();
    for block in rest {
        net.nodes[a].handle_message(SOURCE, block.clone(), net.now);
        let actions = settle(&mut net, a);
        assert_eq!(haves(&actions, WANTING), [] as [u32; 0], "{actions:?}");
    }
    net.nodes[a].handle_message(SOURCE, last.clone(), net.now);
    let all = settle(&mut net, a);
    let done = all
        .iter()
        .position(|x| matches!(x, Action::Completed))
        .expect("completed");
    let mut got = haves(&all[..done], WANTING);
    got.sort_unstable();
    assert_eq!(got, (0..PIECES).collect::<Vec<_>>(), "{all:?}");
}

/// What leaves the nodes of a [`Flow`] run.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// HAVE messages sent.
    haves: u64,
    /// Writes (one drain of a core's actions for one connection, which the node's writer
    /// sends as one write) that carry a HAVE and no block: each is a packet of its own, and
    /// its ACK, that no block or other message would have carried.
    have_writes: u64,
    /// Writes without a block, of any kind.
    control_writes: u64,
    /// Block bytes delivered.
    payload: u64,
    /// When the last leecher completed.
    secs: f64,
    /// Longest a HAVE waited between its piece's verification and leaving.
    max_hold_ms: u64,
}

/// A small event-driven network: 1 seed + `n` leechers, all connected, each uplink sending
/// blocks at `rate` bytes/s in order (messages other than blocks go ahead of them), 1 ms of
/// latency. Every drain of a core's actions for one connection counts as one write, as the
/// node's writer coalesces what is queued at the same moment (`node/peer.rs` write_loop).
struct Flow {
    manifest: std::sync::Arc<crate::manifest::Manifest>,
    content: Vec<u8>,
    nodes: Vec<crate::swarm::Swarm>,
    links: std::collections::BTreeMap<(usize, ConnId), (usize, ConnId)>,
    /// (at, seq) → event.
    events: std::collections::BTreeMap<(std::time::Duration, u64), Event>,
    seq: u64,
    start: std::time::Instant,
    now: std::time::Duration,
    uplink_free: Vec<std::time::Duration>,
    rate: u64,
    /// (node, piece) → when it verified it.
    verified_at: std::collections::BTreeMap<(usize, u32), std::time::Duration>,
    counts: Counts,
}

enum Event {
    Deliver(usize, ConnId, PeerMessage),
    Uploaded(usize, ConnId, u64),
}

const LATENCY: std::time::Duration = std::time::Duration::from_millis(1);

impl Flow {
    fn new(n: usize, pieces: usize, piece_size: u32, rate: u64, hold: bool) -> Self {
        use rand::{RngCore, SeedableRng};
        let mut content = vec![0; pieces * piece_size as usize];
        rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut content);
        let manifest = std::sync::Arc::new(manifest_for(&content, piece_size));
        let start = std::time::Instant::now();
        let count = manifest.piece_count();
        let nodes: Vec<crate::swarm::Swarm> = (0..=n)
            .map(|i| {
                let have = if i == 0 {
                    crate::pieces::Bitfield::full(count)
                } else {
                    crate::pieces::Bitfield::new(count)
                };
                crate::swarm::Swarm::new(
                    manifest.clone(),
                    have,
                    PeerId([i as u8 + 1; 20]),
                    crate::swarm::SwarmConfig {
                        hold_haves: hold,
                        ..Default::default()
                    },
                    i as u64,
                    start,
                )
            })
            .collect();
        let mut flow = Self {
            manifest,
            content,
            uplink_free: vec![std::time::Duration::ZERO; nodes.len()],
            nodes,
            links: Default::default(),
            events: Default::default(),
            seq: 0,
            start,
            now: std::time::Duration::ZERO,
            rate,
            verified_at: Default::default(),
            counts: Counts::default(),
        };
        let mut next = 1;
        for a in 0..=n {
            for b in a + 1..=n {
                let (ca, cb) = (ConnId(next), ConnId(next + 1));
                next += 2;
                let (ia, ib) = (flow.nodes[a].our_id(), flow.nodes[b].our_id());
                flow.nodes[a].handle_connected(ca, ib, None, start).unwrap();
                flow.nodes[b].handle_connected(cb, ia, None, start).unwrap();
                flow.links.insert((a, ca), (b, cb));
                flow.links.insert((b, cb), (a, ca));
            }
        }
        for i in 0..=n {
            flow.drain(i);
        }
        flow
    }

    fn at(&mut self, at: std::time::Duration, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    /// Carries out node `i`'s actions, counting one write per connection.
    fn drain(&mut self, i: usize) {
        // conn → (carries a HAVE, carries a block)
        let mut writes: std::collections::BTreeMap<ConnId, (bool, bool)> = Default::default();
        while let Some(action) = self.nodes[i].poll_action() {
            match action {
                Action::Send { conn, msg } => {
                    let w = writes.entry(conn).or_default();
                    if let PeerMessage::Have(p) = msg {
                        w.0 = true;
                        self.counts.haves += 1;
                        if let Some(at) = self.verified_at.get(&(i, p)) {
                            let held = (self.now - *at).as_millis() as u64;
                            self.counts.max_hold_ms = self.counts.max_hold_ms.max(held);
                        }
                    }
                    if let Some(&(j, cj)) = self.links.get(&(i, conn)) {
                        self.at(self.now + LATENCY, Event::Deliver(j, cj, msg));
                    }
                }
                Action::Upload {
                    conn,
                    piece,
                    offset,
                    length,
                } => {
                    writes.entry(conn).or_default().1 = true;
                    let msg = upload(&self.content, &self.manifest, piece, offset, length);
                    let free = self.uplink_free[i].max(self.now);
                    let sent = free
                        + std::time::Duration::from_nanos(
                            u64::from(length) * 1_000_000_000 / self.rate,
                        );
                    self.uplink_free[i] = sent;
                    self.at(sent, Event::Uploaded(i, conn, u64::from(length)));
                    if let Some(&(j, cj)) = self.links.get(&(i, conn)) {
                        self.at(sent + LATENCY, Event::Deliver(j, cj, msg));
                    }
                }
                Action::Verify { piece, data } => {
                    let ok = crate::pieces::sha256(&data) == *self.manifest.hash(piece);
                    if ok {
                        self.verified_at.insert((i, piece.get()), self.now);
                    }
                    let now = self.start + self.now;
                    self.nodes[i].handle_verified(piece, data, ok, now);
                }
                Action::Close { conn, .. } => {
                    if let Some((j, cj)) = self.links.remove(&(i, conn)) {
                        self.links.remove(&(j, cj));
                        let now = self.start + self.now;
                        self.nodes[j].handle_disconnected(cj, now);
                        self.drain(j);
                    }
                }
                Action::CancelUpload { .. } | Action::Discovered(_) | Action::Completed => {}
            }
        }
        for (has_have, has_block) in writes.into_values() {
            if !has_block {
                self.counts.control_writes += 1;
                if has_have {
                    self.counts.have_writes += 1;
                }
            }
        }
    }

    /// Runs until every leecher is complete (or `limit` passes).
    fn run(mut self, limit: std::time::Duration) -> Counts {
        while self.now < limit && !self.nodes.iter().all(|n| n.is_complete()) {
            let timer = self
                .nodes
                .iter()
                .map(|n| n.poll_timeout() - self.start)
                .min()
                .unwrap();
            let next = self.events.keys().next().map(|k| k.0);
            if next.is_none_or(|at| timer < at) {
                self.now = self.now.max(timer);
                let now = self.start + self.now;
                for i in 0..self.nodes.len() {
                    if self.nodes[i].poll_timeout() <= now {
                        self.nodes[i].handle_timeout(now);
                        self.drain(i);
                    }
                }
                continue;
            }
            let (key, event) = self.events.pop_first().unwrap();
            self.now = self.now.max(key.0);
            let now = self.start + self.now;
            let i = match event {
                Event::Deliver(j, cj, msg) => {
                    if let PeerMessage::Piece { data, .. } = &msg {
                        self.counts.payload += data.len() as u64;
                    }
                    self.nodes[j].handle_message(cj, msg, now);
                    j
                }
                Event::Uploaded(i, conn, len) => {
                    self.nodes[i].handle_uploaded(conn, len, now);
                    i
                }
            };
            self.drain(i);
            if let Err(e) = self.nodes[i].check_invariants() {
                panic!("node {i} at {:?}: {e}", self.now);
            }
        }
        assert!(
            self.nodes.iter().all(|n| n.is_complete()),
            "incomplete at {:?}",
            self.now
        );
        self.counts.secs = self.now.as_secs_f64();
        self.counts
    }
}

/// Every leecher completes with HAVEs held, no HAVE waits much longer than a tick, and fewer
/// writes carry HAVEs than with every HAVE sent at once.
#[test]
fn flow_holds_haves_within_a_tick_and_saves_writes() {
    let run =
        |hold| Flow::new(8, 32, 65_536, 625_000, hold).run(std::time::Duration::from_secs(600));
    let (old, new) = (run(false), run(true));
    assert!(new.max_hold_ms <= 1_000, "{new:?}");
    assert_eq!(old.max_hold_ms, 0, "{old:?}");
    assert!(new.have_writes < old.have_writes, "{old:?} {new:?}");
}

/// The figures of the scaled bench shape (1 + 32, 16 MiB in 64 KiB pieces, 5 Mbit/s uplinks),
/// with and without held HAVEs. Measured: 1 + 32, 262_406 writes carrying HAVEs without held
/// HAVEs, 189_285 holding those to interested peers (0.72x, last leecher done at 45.5 s
/// against 44.4 without); 185_717 holding also those for pieces the peer had (0.71x, 41.3 s),
/// which left a super-seed showing pieces its peers had (`send_have`); 177_238 holding every
/// HAVE to a mutually choked peer, but done at 53.7 s. 1 + 8: 16_454 and 16_344 (most of 8
/// peers are unchoked). Holding every HAVE to an interested peer that has the piece or that we
/// choke: 117_837 of 262_383 (0.45x, done at 44.1 s against 50.1), 1 + 8 12_633 of 16_442
/// (0.77x), but 1 + 99 in `tests/tail.rs` took 1.29x the bound instead of 1.19x (`send_have`).
/// Slow in a debug build:
/// `cargo test -p ferry-p2p --release --lib have::flow_figures -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, slow in a debug build: cargo test -p ferry-p2p --release --lib have::flow_figures -- --ignored --nocapture"]
fn flow_figures() {
    for (n, pieces, piece) in [(32, 256, 65_536), (8, 256, 65_536)] {
        for hold in [false, true] {
            let c = Flow::new(n, pieces, piece, 625_000, hold)
                .run(std::time::Duration::from_secs(3_600));
            println!(
                "1 + {n}, {pieces} x {} KiB, hold {hold}: {c:?}, HAVE writes per payload MiB {:.1}",
                piece / 1024,
                c.have_writes as f64 / (c.payload as f64 / 1_048_576.0)
            );
        }
    }
}
