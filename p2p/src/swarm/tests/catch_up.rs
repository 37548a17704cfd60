//! A leecher that has caught up with a peer (holds everything that peer has) is not interested
//! in it until the peer's next HAVE. On a fake clock with a 100 ms one-way path, a relay `a`
//! gets one piece a second from a scripted source and passes each on to `b`, which has no other
//! source and so catches up after every piece: the time from `a`'s HAVE to `b`'s block is what
//! a caught-up leecher waits for each new piece (netlab, 1 seed + 3 at 200 ms RTT: the leechers
//! relay the seed's pieces to one another at the rate they arrive, and catch up again and again).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::manifest::Manifest;
use crate::pieces::{sha256, Bitfield};
use crate::swarm::{Action, ConnId, Swarm, SwarmConfig};
use crate::wire::{PeerId, PeerMessage, SERVICE};

use super::util::{manifest_for, upload};

const ONE_WAY: Duration = Duration::from_millis(100);
const PIECES: u32 = 6;
/// `a`'s connection to the scripted source.
const SOURCE: ConnId = ConnId(90);
const A_TO_B: ConnId = ConnId(1);
const B_TO_A: ConnId = ConnId(2);

struct Relay {
    content: Vec<u8>,
    manifest: Arc<Manifest>,
    /// 0 is `a`, 1 is `b`.
    nodes: [Swarm; 2],
    now: Instant,
    start: Instant,
    /// (arrival, sequence) → (to node, its conn, message).
    queue: BTreeMap<(Instant, u64), (usize, ConnId, PeerMessage)>,
    seq: u64,
    /// Per piece: when `a` sent HAVE for it to `b`, and when `b` received its block.
    have_sent: Vec<Option<Instant>>,
    block_in: Vec<Option<Instant>>,
}

impl Relay {
    fn new() -> Self {
        let mut content = vec![0; PIECES as usize * 16_384];
        StdRng::seed_from_u64(3).fill_bytes(&mut content);
        let manifest = Arc::new(manifest_for(&content, 16_384));
        let now = Instant::now();
        let node = |i: u8| {
            Swarm::new(
                manifest.clone(),
                Bitfield::new(PIECES),
                PeerId([i; 20]),
                SwarmConfig::default(),
                u64::from(i),
                now,
            )
        };
        let mut relay = Self {
            content,
            manifest: manifest.clone(),
            nodes: [node(1), node(2)],
            now,
            start: now,
            queue: BTreeMap::new(),
            seq: 0,
            have_sent: vec![None; PIECES as usize],
            block_in: vec![None; PIECES as usize],
        };
        let [a, b] = &mut relay.nodes;
        let (id_a, id_b) = (a.our_id(), b.our_id());
        a.handle_connected(SOURCE, PeerId([0xee; 20]), None, now)
            .unwrap();
        a.handle_connected(A_TO_B, id_b, None, now).unwrap();
        b.handle_connected(B_TO_A, id_a, None, now).unwrap();
        // The source has everything and serves `a` at once.
        let full = Bitfield::full(PIECES);
        relay.at(
            now,
            0,
            SOURCE,
            PeerMessage::Bitfield(Bytes::copy_from_slice(full.as_bytes())),
        );
        relay.at(now, 0, SOURCE, PeerMessage::Unchoke);
        relay
    }

    fn at(&mut self, when: Instant, to: usize, conn: ConnId, msg: PeerMessage) {
        self.seq += 1;
        self.queue.insert((when, self.seq), (to, conn, msg));
    }

    /// The node and connection at the other end of node `i`'s link to its neighbour.
    fn other_end(i: usize) -> (usize, ConnId) {
        if i == 0 {
            (1, B_TO_A)
        } else {
            (0, A_TO_B)
        }
    }

    /// Carries out node `i`'s actions: messages to the other node take [`ONE_WAY`]; the
    /// source answers the REQUEST for piece p only at p + 1 seconds, so `a` gets one piece a
    /// second.
    fn drain(&mut self, i: usize) {
        while let Some(action) = self.nodes[i].poll_action() {
            let now = self.now;
            match action {
                Action::Send { conn: SOURCE, msg } => {
                    if let PeerMessage::Request(block) = msg {
                        let piece = self.manifest.piece(block.piece).expect("requested");
                        let data = upload(&self.content, &self.manifest, piece, 0, 16_384);
                        let due = self.start + Duration::from_secs(u64::from(block.piece) + 1);
                        self.at(due.max(now + ONE_WAY), 0, SOURCE, data);
                    }
                }
                Action::Send { conn, msg } => {
                    if let (0, PeerMessage::Have(p)) = (i, &msg) {
                        self.have_sent[*p as usize].get_or_insert(now);
                    }
                    debug_assert_eq!(conn, if i == 0 { A_TO_B } else { B_TO_A });
                    let (to, to_conn) = Self::other_end(i);
                    self.at(now + ONE_WAY, to, to_conn, msg);
                }
                Action::Upload {
                    conn,
                    piece,
                    offset,
                    length,
                } => {
                    let data = upload(&self.content, &self.manifest, piece, offset, length);
                    self.nodes[i].handle_uploaded(conn, u64::from(length), now);
                    let (to, to_conn) = Self::other_end(i);
                    self.at(now + ONE_WAY, to, to_conn, data);
                }
                Action::Verify { piece, data } => {
                    let ok = sha256(&data) == *self.manifest.hash(piece);
                    self.nodes[i].handle_verified(piece, data, ok, now);
                }
                Action::CancelUpload { .. } | Action::Discovered(_) | Action::Completed => {}
                // Complete nodes leave each other (spec/P2P.md §4.4): `a` the source, then
                // `b` `a`.
                Action::Close { error: None, .. } => {}
                Action::Close { conn, error } => panic!("node {i} closed {conn:?}: {error:?}"),
            }
        }
    }

    /// Runs until `b` has every piece (at most a minute of fake time).
    fn run(&mut self) {
        for i in 0..2 {
            self.drain(i);
        }
        while !self.nodes[1].is_complete() {
            assert!(
                self.now < self.start + Duration::from_secs(60),
                "b never completed"
            );
            let timer = self.nodes.iter().map(Swarm::poll_timeout).min().unwrap();
            let next = self.queue.keys().next().map(|k| k.0);
            self.now = next.map_or(timer, |n| n.min(timer)).max(self.now);
            if next.is_some_and(|n| n <= self.now) {
                let Some((_, (to, conn, msg))) = self.queue.pop_first() else {
                    break;
                };
                let msg = PeerMessage::decode(msg.kind(), SERVICE, msg.to_bytes().into())
                    .expect("own encoding");
                if let (1, PeerMessage::Piece { piece, .. }) = (to, &msg) {
                    self.block_in[*piece as usize].get_or_insert(self.now);
                }
                self.nodes[to].handle_message(conn, msg, self.now);
                if let Err(e) = self.nodes[to].check_invariants() {
                    panic!("node {to}: {e}");
                }
                self.drain(to);
            } else {
                for i in 0..2 {
                    if self.nodes[i].poll_timeout() <= self.now {
                        self.nodes[i].handle_timeout(self.now);
                        self.drain(i);
                    }
                }
            }
        }
    }
}

/// spec/P2P.md §4.3: a peer that caught up with us and said NOT_INTERESTED keeps its unchoke
/// while a slot is free, so our next HAVE is answered with its INTERESTED and REQUESTs in one
/// flight: the block reaches it three one-way trips after the HAVE left (HAVE, REQUEST,
/// block). Choked on its NOT_INTERESTED, it waited two more (INTERESTED, UNCHOKE).
#[test]
fn a_caught_up_peer_is_served_one_round_trip_after_our_have() {
    let mut relay = Relay::new();
    relay.run();
    // Piece 0 is the first `b` hears of; every later one finds `b` caught up.
    for p in 1..PIECES as usize {
        let (Some(have), Some(block)) = (relay.have_sent[p], relay.block_in[p]) else {
            panic!(
                "piece {p}: HAVE {:?}, block {:?}",
                relay.have_sent[p], relay.block_in[p]
            );
        };
        let waited = block - have;
        assert!(
            waited <= ONE_WAY * 3,
            "piece {p}: the block came {waited:?} after the HAVE (3 one-way trips: {:?})",
            ONE_WAY * 3
        );
    }
}

/// The CHOKE and UNCHOKE messages among `node`'s queued actions, in order, as (conn, unchoke).
fn choking(node: &mut Swarm) -> Vec<(ConnId, bool)> {
    std::iter::from_fn(|| node.poll_action())
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: PeerMessage::Choke,
            } => Some((conn, false)),
            Action::Send {
                conn,
                msg: PeerMessage::Unchoke,
            } => Some((conn, true)),
            _ => None,
        })
        .collect()
}

/// The slot a not-interested peer keeps goes to the next peer with a use for it (spec/P2P.md
/// §4.3): one that says INTERESTED, or whose BITFIELD lacks a piece we have.
#[test]
fn an_idle_unchoke_goes_to_the_next_peer_that_wants_it() {
    let content = vec![7; 4 * 16_384];
    let manifest = Arc::new(manifest_for(&content, 16_384));
    let now = Instant::now();
    let config = SwarmConfig {
        regular_unchokes: 3,
        max_unchokes: 3,
        ..SwarmConfig::default()
    };
    // A leecher with pieces 0 and 1 of 4.
    let mut have = Bitfield::new(4);
    for i in 0..2 {
        have.set(manifest.piece(i).unwrap());
    }
    let mut node = Swarm::new(manifest, have, PeerId([1; 20]), config, 1, now);
    let empty = || PeerMessage::Bitfield(Bytes::from_static(&[0]));
    let conns: Vec<ConnId> = (10..16).map(ConnId).collect();
    for (i, &c) in conns.iter().enumerate() {
        node.handle_connected(c, PeerId([0x80 + i as u8; 20]), None, now)
            .unwrap();
    }
    // Three slots and the optimistic one: the first four are unchoked on their BITFIELDs.
    for &c in &conns[..4] {
        node.handle_message(c, empty(), now);
        node.handle_message(c, PeerMessage::Interested, now);
    }
    assert_eq!(
        choking(&mut node),
        conns[..4].iter().map(|&c| (c, true)).collect::<Vec<_>>()
    );
    // The first two caught up with us: they keep their slots while nobody else wants them.
    for &c in &conns[..2] {
        node.handle_message(c, PeerMessage::Have(0), now);
        node.handle_message(c, PeerMessage::Have(1), now);
        node.handle_message(c, PeerMessage::NotInterested, now);
    }
    assert_eq!(choking(&mut node), vec![]);
    node.check_invariants().unwrap();
    // A fifth peer lacks what we have: it takes the first one's slot on its BITFIELD...
    node.handle_message(conns[4], empty(), now);
    assert_eq!(
        choking(&mut node),
        vec![(conns[0], false), (conns[4], true)]
    );
    node.check_invariants().unwrap();
    // ...a sixth takes the second one's, and the first, interested again, finds none idle.
    node.handle_message(conns[5], empty(), now);
    assert_eq!(
        choking(&mut node),
        vec![(conns[1], false), (conns[5], true)]
    );
    node.handle_message(conns[0], PeerMessage::Interested, now);
    assert_eq!(choking(&mut node), vec![], "no slot is idle now");
    node.check_invariants().unwrap();
}
