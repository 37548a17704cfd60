//! Tests of the whole core: several cores driven against each other, and malformed input.

mod catch_up;
mod have;
mod late;
mod leave;
mod link;
mod tail;
pub(super) mod util;

use bytes::Bytes;
use ferry_protocol::ErrorCode;

use crate::swarm::{Action, SwarmConfig};
use crate::wire::{BlockRef, PeerMessage};
use util::*;

#[test]
fn one_seed_five_leechers_all_complete() {
    let mut net = Net::new(1_000_000, 65_536);
    let seed = net.add(true, false);
    let leechers: Vec<usize> = (0..5).map(|_| net.add(false, false)).collect();
    for &l in &leechers {
        assert!(net.connect(seed, l));
    }
    for (k, &a) in leechers.iter().enumerate() {
        for &b in &leechers[k + 1..] {
            assert!(net.connect(a, b));
        }
    }
    net.pump();
    for _ in 0..100 {
        if leechers.iter().all(|&l| net.completed[l]) {
            break;
        }
        net.tick(10);
    }
    for &l in &leechers {
        assert!(net.nodes[l].is_complete(), "leecher {l} incomplete");
        assert_eq!(net.nodes[l].stats().hash_failures, 0);
    }
    // Leechers served each other, not only the seed.
    let leecher_upload: u64 = leechers
        .iter()
        .map(|&l| net.nodes[l].stats().uploaded)
        .sum();
    assert!(leecher_upload > 0, "no leecher uploaded anything");
}

#[test]
fn malformed_peer_input_is_handled_per_spec() {
    // Wrong bitfield size: dropped.
    let (mut net, a, conn) = one_link();
    net.nodes[a].handle_message(
        conn,
        PeerMessage::Bitfield(Bytes::from_static(&[0xff])),
        net.now,
    );
    assert_eq!(closed_code(&mut net, a), Some(ErrorCode::MALFORMED_MESSAGE));
    // Spare bits set: 7 pieces → 1 byte, low bit must be zero.
    let (mut net, a, conn) = one_link();
    net.nodes[a].handle_message(
        conn,
        PeerMessage::Bitfield(Bytes::from_static(&[0x01])),
        net.now,
    );
    assert_eq!(closed_code(&mut net, a), Some(ErrorCode::MALFORMED_MESSAGE));
    // Anything before the bitfield: dropped.
    let (mut net, a, conn) = one_link();
    net.nodes[a].handle_message(conn, PeerMessage::Have(1), net.now);
    assert_eq!(
        closed_code(&mut net, a),
        Some(ErrorCode::UNEXPECTED_MESSAGE)
    );
    // Out-of-range have and request: dropped.
    let (mut net, a, conn) = one_link();
    net.nodes[a].handle_message(
        conn,
        PeerMessage::Bitfield(Bytes::from_static(&[0x00])),
        net.now,
    );
    net.nodes[a].handle_message(conn, PeerMessage::Have(7), net.now);
    assert_eq!(closed_code(&mut net, a), Some(ErrorCode::INVALID_RANGE));
    let (mut net, a, conn) = one_link();
    net.nodes[a].handle_message(
        conn,
        PeerMessage::Bitfield(Bytes::from_static(&[0x00])),
        net.now,
    );
    net.nodes[a].handle_message(conn, PeerMessage::Interested, net.now);
    net.nodes[a].handle_message(
        conn,
        PeerMessage::Request(BlockRef {
            piece: 6,
            offset: 16_384,
            length: 16_384,
        }),
        net.now,
    );
    // The last piece is 100_000 - 6 * 16_384 = 1_696 bytes long.
    assert_eq!(closed_code(&mut net, a), Some(ErrorCode::INVALID_RANGE));
    // A valid request while unchoked is served.
    let (mut net, a, conn) = one_link();
    net.nodes[a].handle_message(
        conn,
        PeerMessage::Bitfield(Bytes::from_static(&[0x00])),
        net.now,
    );
    net.nodes[a].handle_message(conn, PeerMessage::Interested, net.now);
    net.nodes[a].handle_message(
        conn,
        PeerMessage::Request(BlockRef {
            piece: 6,
            offset: 0,
            length: 1_696,
        }),
        net.now,
    );
    let actions: Vec<Action> = std::iter::from_fn(|| net.nodes[a].poll_action()).collect();
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::Upload { length: 1_696, .. })),
        "{actions:?}"
    );
    // A second bitfield: dropped.
    net.nodes[a].handle_message(
        conn,
        PeerMessage::Bitfield(Bytes::from_static(&[0x00])),
        net.now,
    );
    assert_eq!(
        closed_code(&mut net, a),
        Some(ErrorCode::UNEXPECTED_MESSAGE)
    );
}

/// A small swarm for the simulations: 16 pieces of two blocks (the last shorter), a short pipeline so requests
/// queue up and interleave.
fn sim_config() -> SwarmConfig {
    SwarmConfig {
        pipeline: 4,
        pipeline_min: 4,
        reveal_blocks: 4,
        ..SwarmConfig::default()
    }
}

const SIM_LEN: usize = 16 * 32_768 - 1_000;
const SIM_PIECE: u32 = 32_768;

/// Connects every pair of nodes.
fn mesh(sim: &mut Sim) {
    let n = sim.nodes.len();
    for a in 0..n {
        for b in a + 1..n {
            assert!(sim.connect(a, b), "{a} and {b} refused to connect");
        }
    }
}

/// One super-seed and five leechers, all connected, for several seeds: everyone completes and
/// the invariants hold after every delivered message.
#[test]
fn sim_super_seed_and_leechers_complete() {
    for seed in 1..=2 {
        let mut sim = Sim::new(seed, SIM_LEN, SIM_PIECE);
        sim.add(true, Behaviour::Honest, sim_config());
        for _ in 0..5 {
            sim.add(false, Behaviour::Honest, sim_config());
        }
        mesh(&mut sim);
        let done = sim.drive(200_000, |s| s.nodes.iter().all(|n| n.swarm.is_complete()));
        assert!(done, "seed {seed}: incomplete after {} steps", sim.steps);
        let leecher_upload: u64 = (1..6).map(|i| sim.nodes[i].swarm.stats().uploaded).sum();
        assert!(
            leecher_upload > 0,
            "seed {seed}: leechers never served each other"
        );
        for node in &sim.nodes {
            assert_eq!(node.swarm.stats().hash_failures, 0);
            assert!(node.closed.iter().all(|c| c.is_none()), "{:?}", node.closed);
        }
    }
}

/// A seed serving corrupt blocks and a peer that claims every piece and answers with garbage,
/// among honest nodes: every honest leecher completes, each hostile node is banned by someone,
/// and no honest node is ever struck (checked after every step by the harness).
#[test]
fn sim_hostile_peers_are_banned_and_downloads_complete() {
    for seed in 1..=3 {
        let mut sim = Sim::new(seed, SIM_LEN, SIM_PIECE);
        sim.add(true, Behaviour::Honest, sim_config());
        let corrupt = sim.add(true, Behaviour::CorruptBlocks, sim_config());
        let liar = sim.add(false, Behaviour::Liar, sim_config());
        let leechers: Vec<usize> = (0..3)
            .map(|_| sim.add(false, Behaviour::Honest, sim_config()))
            .collect();
        mesh(&mut sim);
        let done = sim.drive(400_000, |s| {
            leechers.iter().all(|&l| s.nodes[l].swarm.is_complete())
        });
        assert!(done, "seed {seed}: incomplete after {} steps", sim.steps);
        for hostile in [corrupt, liar] {
            let id = sim.id(hostile);
            assert!(
                leechers
                    .iter()
                    .any(|&l| sim.nodes[l].swarm.is_banned(Some(id), None)),
                "seed {seed}: node {hostile} was never banned"
            );
        }
        let failures: u32 = leechers
            .iter()
            .map(|&l| sim.nodes[l].swarm.stats().hash_failures)
            .sum();
        assert!(failures >= 2, "seed {seed}: only {failures} hash failures");
    }
}

/// The same seed gives the same run, message for message.
#[test]
fn sim_is_deterministic() {
    let run = |seed| {
        let mut sim = Sim::new(seed, SIM_LEN, SIM_PIECE);
        sim.add(true, Behaviour::Honest, sim_config());
        sim.add(true, Behaviour::CorruptBlocks, sim_config());
        for _ in 0..3 {
            sim.add(false, Behaviour::Honest, sim_config());
        }
        mesh(&mut sim);
        sim.drive(400_000, |s| (2..5).all(|l| s.nodes[l].swarm.is_complete()));
        let stats: Vec<_> = sim.nodes.iter().map(|n| n.swarm.stats()).collect();
        (sim.trace, stats)
    };
    let (a, b) = (run(9), run(9));
    assert!(
        a.0 == b.0,
        "traces differ ({} and {} deliveries)",
        a.0.len(),
        b.0.len()
    );
    assert_eq!(a.1, b.1);
    assert!(run(10).0 != a.0, "another seed gives the same run");
}

/// Two complete nodes that both super-seed (two publishers of one release) and three leechers.
/// Each seed sees the other as a peer with nothing that asks for nothing: the first copies
/// revealed to it must go to the leechers once it has stalled on them (spec/P2P.md §4.4).
#[test]
fn sim_two_super_seeds_and_leechers_complete() {
    for seed in 1..=2 {
        let mut sim = Sim::new(seed, SIM_LEN, SIM_PIECE);
        sim.add(true, Behaviour::Honest, sim_config());
        sim.add(true, Behaviour::Honest, sim_config());
        let leechers: Vec<usize> = (0..3)
            .map(|_| sim.add(false, Behaviour::Honest, sim_config()))
            .collect();
        mesh(&mut sim);
        let done = sim.drive(200_000, |s| {
            leechers.iter().all(|&l| s.nodes[l].swarm.is_complete())
        });
        assert!(done, "seed {seed}: incomplete after {} steps", sim.steps);
    }
}
