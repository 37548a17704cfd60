//! issue 14: a leecher that joins a swarm late (a machine coming online after the others) is
//! served soon. One seed and N leechers on the tail harness's modelled links (`tail.rs`), the
//! last leecher cut off until `join` after the start. Before the newcomer unchoke
//! (spec/P2P.md §4.3) every peer's slots were held by the peers that came first, and nothing
//! but the rate-based slot growth (every 2.5 s, ranked by rate, where a newcomer's is 0) or the
//! optimistic rotation (30 s) let the newcomer in.

use std::time::Duration;

use crate::swarm::SwarmConfig;

use super::tail::{bench_piece, Swarmnet, BENCH_LEN, RATE};

/// What one run measured, in seconds.
struct Late {
    /// From the newcomer's join to its first block.
    first_block: f64,
    /// The newcomer's finish after the last of the others.
    finish_after_others: f64,
    /// The others' finishes, first and last, and the newcomer's, after the start.
    others: (f64, f64),
    newcomer: f64,
    /// When the last finished, over the fluid bound (content / rate, from the start).
    ratio: f64,
    /// The newcomer's first seconds: who unchokes it, what it receives.
    seconds: Vec<String>,
}

impl Late {
    fn print(&self, leechers: usize, join: Duration) {
        eprintln!(
            "1 seed + {leechers}, the last joining at {:.1} s: its first block {:.2} s after joining, finished {:.2} s after the others (others {:.2}..{:.2} s, it {:.2} s); {:.3}x the bound",
            join.as_secs_f64(),
            self.first_block,
            self.finish_after_others,
            self.others.0,
            self.others.1,
            self.newcomer,
            self.ratio
        );
        eprintln!("  {}", self.seconds.join("; "));
    }
}

fn late(
    leechers: usize,
    content_len: usize,
    piece_size: u32,
    join: Duration,
    config: SwarmConfig,
) -> Late {
    let rtt = Duration::from_millis(2);
    let mut net = Swarmnet::with_late(
        leechers,
        content_len,
        piece_size,
        RATE,
        rtt,
        config,
        Some((leechers, join)),
    );
    let start = net.now;
    // A second at a time, to follow the newcomer's first seconds.
    let mut seconds = Vec::new();
    let mut last = 0;
    while net.run(Duration::from_secs(1)).is_none() {
        assert!(net.now - start < Duration::from_secs(300), "incomplete");
        let node = &net.nodes[leechers];
        if net.now >= net.joined[leechers] && seconds.len() < 12 {
            let unchoking = node.peers.values().filter(|p| !p.peer_choking).count();
            let got = node.stats().downloaded;
            seconds.push(format!(
                "{:.0}s: unchoked by {unchoking} of {}, {:.2} of its link",
                (net.now - start).as_secs_f64(),
                node.peers.len(),
                (got - last) as f64 / RATE
            ));
            last = got;
        }
    }
    let secs = |t: std::time::Instant| (t - start).as_secs_f64();
    let done: Vec<f64> = net.completed[1..leechers]
        .iter()
        .map(|t| secs(t.expect("complete")))
        .collect();
    let others = (
        done.iter().copied().fold(f64::INFINITY, f64::min),
        done.iter().copied().fold(0.0, f64::max),
    );
    let newcomer = secs(net.completed[leechers].expect("complete"));
    let first = net.first_block[leechers].expect("a block came");
    Late {
        first_block: (first - net.joined[leechers]).as_secs_f64(),
        finish_after_others: newcomer - others.1,
        others,
        newcomer,
        ratio: others.1.max(newcomer) / (content_len as f64 / RATE),
        seconds,
    }
}

/// Every node's slots full of interested peers, as on netlab: there the shell reports a block
/// sent once the socket buffer takes it, so the core never sees blocks queue, every uplink
/// looks idle and the slot count grows to its cap (16) within seconds, all of them taken by the
/// peers that came first. Fixed slots give the model the same state.
fn full_slots(regular: usize) -> SwarmConfig {
    SwarmConfig {
        regular_unchokes: regular,
        seed_unchokes: regular,
        max_unchokes: 0,
        ..SwarmConfig::default()
    }
}

/// 1 + 8 on 256 pieces of 64 KiB (bound 7 s), 3 regular slots each, the last leecher joining
/// at 2 s: it is served within about a second (by a welcome slot once its holder's term is
/// over, or the seed's next turn, spec/P2P.md §4.4), and finishes within 1.5 s of its own
/// bound (its join plus the content at its link's rate: 9.03 s). HEAD before the welcome
/// slot: first block 5.97 s after joining, finished 6.91 s after the others (who finish at
/// about 8 s: some 6 s over its bound). Before the seed's stints: first block 1.05 s after
/// joining, finished 1.66 s after the others (10.07 s, 1.04 s over its bound); with them
/// 0.10 s and 2.02 s, the others finishing 0.5 s sooner (9.90 s, 0.87 s over its bound).
/// (Until the stints this test asked it to finish no more than its 2 s of lateness after the
/// others, which their faster finish now fails.)
#[test]
fn a_late_leecher_is_served_soon() {
    let join = Duration::from_secs(2);
    let content = 16 << 20;
    let t = late(8, content, 64 << 10, join, full_slots(3));
    t.print(8, join);
    assert!(
        t.first_block <= 1.5,
        "first block {:.2} s after joining",
        t.first_block
    );
    let own_bound = join.as_secs_f64() + content as f64 / RATE;
    assert!(
        t.newcomer - own_bound <= 1.5,
        "finished {:.2} s after its own bound ({:.2} s after the others)",
        t.newcomer - own_bound,
        t.finish_after_others
    );
}

/// The netlab bench's shape (64 MiB of 256 KiB pieces, bound 28 s), 1 + 8 and 1 + 32, the last
/// leecher joining at 4 s (netlab's DHT runs saw one 4.3 s late), with the rate-based slots and
/// with netlab's 16 full slots. TAIL_SEED=k for other runs.
#[test]
#[ignore = "a measurement, about 20 s in release: cargo test --release -p ferry-p2p --lib swarm::tests::late -- --ignored --nocapture"]
fn a_late_leecher_on_the_bench_shape() {
    let join = Duration::from_secs(4);
    for (name, config) in [
        ("rate-based slots", SwarmConfig::default()),
        ("16 slots full", full_slots(16)),
    ] {
        for n in [8, 32] {
            eprintln!("{name}:");
            let t = late(n, BENCH_LEN, bench_piece(), join, config.clone());
            t.print(n, join);
        }
    }
}
