//! Super-seeding (spec/P2P.md §4.4): a node that starts complete advertises nothing and reveals
//! pieces a few at a time, so that each piece leaves the seed once before any leaves it twice:
//! first copies go only to unchoked peers, one peer each, and a peer fetching one keeps its
//! unchoke slot (`choker.rs`).
//!
//! How many pieces stay revealed in front of a peer follows that peer's upload rate × the
//! time from revealing a piece to the peer's HAVE for it ([`RevealWindow`]): a piece is
//! pending for a whole loop (our HAVE, its REQUESTs, the blocks, its hash, its HAVE), and a
//! fixed few pieces left a 20 Mbit/s, 200 ms link a quarter idle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;

use super::depth::{Meter, MIN_WINDOW};
use super::{ConnId, Swarm, SwarmConfig};
use crate::manifest::PieceIndex;
use crate::wire::{PeerMessage, MAX_BLOCK};

/// Fewest pieces in a window once the peer's rate and loop are measured: one it fetches, one
/// it asks for next and one to spare. The larger first window ([`SuperSeed::first_window`])
/// is only a start: kept for a slow peer, it holds first copies the others then wait for.
pub(super) const MEASURED_FLOOR: u32 = 3;

/// Whether we super-seed, and how often each piece was revealed.
#[derive(Debug)]
pub(super) struct SuperSeed {
    /// Fixed at construction: on iff the node starts complete and the config asks for it.
    pub(super) on: bool,
    /// Per piece, how many peers it was revealed to (departed peers included).
    pub(super) reveal_count: Vec<u32>,
    /// An unchoked peer's window was left short: no piece could be shown to it then.
    pub(super) starved: bool,
    /// Pieces no connected peer held at the last [`Swarm::reveal`].
    pub(super) unheld: usize,
}

impl SuperSeed {
    pub(super) fn new(config: &SwarmConfig, missing: usize, pieces: u32) -> Self {
        Self {
            on: config.super_seed && missing == 0 && pieces > 0,
            reveal_count: vec![0; pieces as usize],
            starved: false,
            unheld: pieces as usize,
        }
    }

    /// Revealed-but-missing pieces kept in front of a peer before its rate and loop are
    /// measured: `reveal_blocks` worth, plus one.
    pub(super) fn first_window(config: &SwarmConfig, piece_size: u32) -> u32 {
        let piece_size = piece_size.max(1) as usize;
        (config.reveal_blocks * MAX_BLOCK as usize).div_ceil(piece_size) as u32 + 1
    }

    /// How long a first copy stays held back for the peer it was revealed to while that peer
    /// makes no progress (no REQUEST of ours served or accepted, no block sent to it): the
    /// request timeout, the time a downloader waits for a block before asking elsewhere.
    pub(super) fn stall(config: &SwarmConfig) -> Duration {
        config.request_timeout
    }

    /// Most revealed-but-missing pieces in front of one peer: a full request pipeline's worth
    /// (`pipeline` blocks), plus one, and never below [`SuperSeed::first_window`].
    pub(super) fn cap(config: &SwarmConfig, piece_size: u32) -> u32 {
        let piece_size = piece_size.max(1) as usize;
        let cap = (config.pipeline * MAX_BLOCK as usize).div_ceil(piece_size) as u32 + 1;
        cap.max(Self::first_window(config, piece_size as u32))
    }
}

/// One peer's reveal window: [`SuperSeed::first_window`] pieces until measured, then ceil(2 ×
/// upload rate to it × shortest reveal-to-HAVE time ÷ piece size) + 1 pieces, between
/// [`MEASURED_FLOOR`] and [`SuperSeed::cap`]. The doubling lets the rate grow, as for the
/// request depth (`depth.rs`).
#[derive(Debug, Clone, Default)]
pub(super) struct RevealWindow {
    /// When each revealed piece the peer lacks was revealed; at most [`SuperSeed::cap`].
    revealed_at: BTreeMap<u32, Instant>,
    /// Shortest time from revealing a piece to the peer's HAVE for it.
    min_loop: Option<Duration>,
    /// Block bytes uploaded to the peer.
    meter: Meter,
    /// Pieces to keep revealed; `None` until the first rate sample.
    target: Option<u32>,
    /// When the peer last made progress: a REQUEST accepted or a block sent to it.
    progress: Option<Instant>,
}

impl RevealWindow {
    pub(super) fn on_revealed(&mut self, piece: u32, now: Instant) {
        self.revealed_at.insert(piece, now);
    }

    /// The peer announced `piece`.
    pub(super) fn on_have(&mut self, piece: u32, now: Instant, piece_size: u32) {
        if let Some(at) = self.revealed_at.remove(&piece) {
            let turn = now.saturating_duration_since(at);
            if self.min_loop.is_none_or(|m| turn < m) {
                self.min_loop = Some(turn);
                // The first loop comes a loop after the start; use the rate measured so far
                // rather than wait a further loop for a window of that length.
                self.resize(piece_size);
            }
        }
    }

    /// We accepted a REQUEST from the peer.
    pub(super) fn on_request(&mut self, now: Instant) {
        self.progress = Some(now);
    }

    /// We sent `bytes` of blocks to the peer.
    pub(super) fn on_uploaded(&mut self, bytes: u64, now: Instant, piece_size: u32) {
        self.progress = Some(now);
        let window = self.min_loop.unwrap_or_default().max(MIN_WINDOW);
        if self.meter.add(bytes, now, window) {
            self.resize(piece_size);
        }
    }

    fn resize(&mut self, piece_size: u32) {
        let (Some(turn), rate) = (self.min_loop, self.meter.rate()) else {
            return;
        };
        if rate <= 0.0 {
            return;
        }
        let ahead = 2.0 * rate * turn.as_secs_f64() / f64::from(piece_size.max(1));
        // Saturating float-to-int cast: a huge product lands on the cap.
        self.target = Some((ahead.ceil() as u32).saturating_add(1));
    }

    /// The revealed pieces the peer does not have yet and is still taken to be fetching at
    /// `now`: revealed, or progress made, less than `stall` ago ([`SuperSeed::stall`]).
    pub(super) fn fetching(&self, now: Instant, stall: Duration) -> impl Iterator<Item = u32> + '_ {
        self.revealed_at.iter().filter_map(move |(&piece, &at)| {
            let since = self.progress.map_or(at, |p| p.max(at));
            (now.saturating_duration_since(since) < stall).then_some(piece)
        })
    }

    /// Pieces to keep revealed now: `first` before the first sample, then the measured
    /// window within [`MEASURED_FLOOR`]`..=cap`.
    pub(super) fn target(&self, first: u32, cap: u32) -> u32 {
        match self.target {
            Some(measured) => measured.clamp(MEASURED_FLOOR.min(cap), cap),
            None => first.min(cap),
        }
    }
}

impl Swarm {
    /// Super-seeding (spec/P2P.md §4.4): tops up `conn`'s window. Every other peer's is
    /// topped up too when a first copy has landed since the last call, or when an unchoked
    /// peer was left short for want of a piece it could be shown: what called this (a HAVE,
    /// an unchoke) may have made one showable.
    pub(super) fn reveal(&mut self, conn: ConnId, now: Instant) {
        if !self.super_seed.on {
            return;
        }
        let unheld = self.picker.availability.iter().filter(|&&a| a == 0).count();
        let landed = unheld < self.super_seed.unheld;
        self.super_seed.unheld = unheld;
        let starved = std::mem::take(&mut self.super_seed.starved);
        self.top_up(conn, now);
        if starved || landed {
            let others: Vec<ConnId> = self
                .reveal_order()
                .into_iter()
                .filter(|&c| c != conn)
                .collect();
            for c in others {
                self.top_up(c, now);
            }
        }
    }

    /// The order in which windows are topped up: with stints, unchoked peers first, then the
    /// choked ones, fewest pieces first, then choked longest ago (never unchoked first), so a
    /// freed slot goes to the neediest. (Longest ago alone: the same 1 + 99 in `tests/tail.rs`,
    /// but a leecher joining late got one stint, then, holding pieces, no welcome slot from
    /// the leechers, and finished 3.4 s after the others, `tests/late.rs`.)
    fn reveal_order(&self) -> Vec<ConnId> {
        let mut conns: Vec<ConnId> = self.peers.keys().copied().collect();
        if self.rotates_seed_slots() {
            conns.sort_by_key(|c| {
                let p = &self.peers[c];
                (p.am_choking, p.have.count(), p.choked_at)
            });
        }
        conns
    }

    /// Whether `conn` is draining its stint (`Peer::draining`).
    pub(super) fn draining(&self, conn: ConnId) -> bool {
        self.peers.get(&conn).is_some_and(|p| p.draining())
    }

    /// Whether a choked peer that lacks a piece could take a slot when a stint ends.
    fn a_peer_waits(&self) -> bool {
        self.peers
            .values()
            .any(|p| p.am_choking && p.got_bitfield && !p.have.is_full())
    }

    /// Tops up every peer's window: after a rechoke.
    pub(super) fn reveal_all(&mut self, now: Instant) {
        if !self.super_seed.on {
            return;
        }
        self.super_seed.starved = false;
        for conn in self.reveal_order() {
            self.top_up(conn, now);
        }
    }

    /// Time-driven: while some piece is held by no one, tops up every window once a second, so
    /// that a first copy whose peer stalled ([`SuperSeed::stall`]) is shown to another peer
    /// within a second of the bound.
    pub(super) fn reveal_tick(&mut self, now: Instant) {
        if self.super_seed.on && self.picker.availability.contains(&0) {
            self.reveal_all(now);
        }
    }

    /// Whether `conn` is unchoked and fetching a *first copy*: a piece revealed to it that no
    /// connected peer holds, on which it has not stalled. Such a peer keeps its unchoke slot
    /// (`rechoke`): choked, it could not fetch the piece, and showing it to another would send
    /// it twice.
    pub(super) fn fetching_first_copy(&self, conn: ConnId, now: Instant) -> bool {
        let stall = SuperSeed::stall(&self.config);
        self.peers.get(&conn).is_some_and(|p| {
            !p.am_choking
                && p.revealed.is_some()
                && p.reveal
                    .fetching(now, stall)
                    .any(|i| self.picker.availability.get(i as usize) == Some(&0))
        })
    }

    /// Per piece, how many unchoked peers it is revealed to that lack it and have not stalled:
    /// copies on their way. A choked peer cannot ask for what it was shown, and a stalled one
    /// (nothing asked or sent for [`SuperSeed::stall`]) is not asking, so their reveals do not
    /// count: a peer that leaves, is banned, is choked or stalls releases its first copies.
    fn in_flight(&self, now: Instant) -> Vec<u16> {
        let stall = SuperSeed::stall(&self.config);
        let mut in_flight = vec![0u16; self.manifest.piece_count() as usize];
        for peer in self.peers.values().filter(|p| !p.am_choking) {
            for piece in peer.reveal.fetching(now, stall) {
                if let Some(n) = in_flight.get_mut(piece as usize) {
                    *n = n.saturating_add(1);
                }
            }
        }
        in_flight
    }

    /// Keeps `conn`'s window of revealed-but-missing pieces full, so that each piece leaves
    /// the seed once before any leaves it twice:
    /// - While some piece is held by no connected peer, an unchoked peer is shown only pieces
    ///   no peer holds or is fetching (revealed to no unchoked peer lacking it), least revealed
    ///   first. With none left it waits (`starved`) for the first copies on their way.
    /// - Once every piece is held, the piece fewest peers hold, then the least revealed.
    /// - A choked peer is unchoked first if a slot is free and there is a piece to show it.
    ///   Otherwise, once every piece is held, it is shown one piece (it can fetch it from
    ///   others) so that it is interested and rechokes consider it; before that, nothing.
    ///
    /// Ties go to the first piece from a random start.
    fn top_up(&mut self, conn: ConnId, now: Instant) {
        let first = SuperSeed::first_window(&self.config, self.manifest.piece_size());
        let cap = SuperSeed::cap(&self.config, self.manifest.piece_size());
        let n = self.manifest.piece_count();
        let all_held = self.picker.availability.iter().all(|&a| a > 0);
        let mut in_flight = self.in_flight(now);
        loop {
            let Some(peer) = self.peers.get(&conn) else {
                return;
            };
            let Some(revealed) = &peer.revealed else {
                return;
            };
            if !peer.got_bitfield {
                return;
            }
            let choked = peer.am_choking;
            let fetching = !choked || self.has_room(conn);
            let target = if fetching {
                peer.reveal.target(first, cap)
            } else {
                1
            };
            if peer.revealed_pending >= target {
                return;
            }
            let stint = self.config.seed_stint;
            if fetching
                && !choked
                && stint > 0
                && peer.stint >= stint
                && (peer.stint_closed || self.a_peer_waits())
            {
                // Its stint is over while another peer waits for a turn (spec/P2P.md §4.4);
                // with none waiting it goes on, rather than drain its window for nothing.
                if let Some(peer) = self.peers.get_mut(&conn) {
                    peer.stint_closed = true;
                }
                return;
            }
            let start = self.rng.gen_range(0..n);
            // Lower is better.
            let mut best: Option<(PieceIndex, (u32, u32))> = None;
            for i in 0..n {
                let Some(piece) = self.manifest.piece((start + i) % n) else {
                    continue;
                };
                if peer.have.has(piece) || revealed.has(piece) {
                    continue;
                }
                let count = self.super_seed.reveal_count[piece.idx()];
                let held = u32::from(self.picker.availability[piece.idx()]);
                let key = if all_held {
                    (held, count)
                } else if fetching && held == 0 && in_flight[piece.idx()] == 0 {
                    (count, 0)
                } else {
                    continue;
                };
                if best.is_none_or(|(_, b)| key < b) {
                    best = Some((piece, key));
                }
            }
            let Some((piece, _)) = best else {
                // Only a first copy landing can give it more (every piece is showable once
                // all are held).
                if fetching && !choked && !all_held {
                    self.super_seed.starved = true;
                }
                return;
            };
            if choked && fetching {
                // Unchoked before it is shown anything, so what it is shown it can fetch
                // (spec/P2P.md §4.3: its INTERESTED is on the way), in the slot of a peer
                // that is not interested if none is free.
                self.make_room(conn, now);
                if let Some(peer) = self.peers.get_mut(&conn) {
                    peer.am_choking = false;
                    peer.unchoked_early = !peer.peer_interested;
                }
                self.send(conn, PeerMessage::Unchoke, now);
            }
            if fetching {
                in_flight[piece.idx()] = in_flight[piece.idx()].saturating_add(1);
            }
            self.super_seed.reveal_count[piece.idx()] += 1;
            if let Some(peer) = self.peers.get_mut(&conn) {
                if fetching {
                    peer.stint += 1;
                }
                peer.revealed_pending += 1;
                peer.reveal.on_revealed(piece.get(), now);
                if let Some(r) = &mut peer.revealed {
                    r.set(piece);
                }
            }
            self.send(conn, PeerMessage::Have(piece.get()), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::{RevealWindow, SuperSeed, MEASURED_FLOOR};
    use crate::swarm::tests::util::*;
    use crate::swarm::{Action, ConnId, SwarmConfig};
    use crate::wire::{BlockRef, PeerId, PeerMessage};

    /// The pieces `node` revealed with HAVE to `to` since the last call (other actions are
    /// dropped).
    /// `conn` (peer id all `id`) connects to `seed` and sends an empty BITFIELD.
    fn join_empty(net: &mut Net, seed: usize, conn: ConnId, id: u8) {
        net.nodes[seed]
            .handle_connected(conn, PeerId([id; 20]), None, net.now)
            .unwrap();
        let pieces = net.nodes[seed].manifest.piece_count() as usize;
        let empty = PeerMessage::Bitfield(Bytes::from(vec![0u8; pieces.div_ceil(8)]));
        net.nodes[seed].handle_message(conn, empty, net.now);
    }

    fn haves(net: &mut Net, node: usize, to: ConnId) -> Vec<u32> {
        std::iter::from_fn(|| net.nodes[node].poll_action())
            .filter_map(|a| match a {
                Action::Send {
                    conn,
                    msg: PeerMessage::Have(p),
                } if conn == to => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Messages sent, each with its connection.
    type Sent = Vec<(ConnId, PeerMessage)>;

    /// The UNCHOKEs, CHOKEs and HAVEs `node` sent since the last call, with their connection.
    fn sent(net: &mut Net, node: usize) -> Sent {
        std::iter::from_fn(|| net.nodes[node].poll_action())
            .filter_map(|a| match a {
                Action::Send { conn, msg } => Some((conn, msg)),
                _ => None,
            })
            .filter(|(_, m)| {
                matches!(
                    m,
                    PeerMessage::Unchoke | PeerMessage::Choke | PeerMessage::Have(_)
                )
            })
            .collect()
    }

    fn to(sent: &[(ConnId, PeerMessage)], conn: ConnId) -> Vec<&PeerMessage> {
        sent.iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, m)| m)
            .collect()
    }

    fn shown(sent: &[(ConnId, PeerMessage)], conn: ConnId) -> Vec<u32> {
        to(sent, conn)
            .into_iter()
            .filter_map(|m| match m {
                PeerMessage::Have(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    /// `conn` fetches the pieces of its stint: the first `window` are shown at once, the
    /// rest one per HAVE. Returns what the seed sent on the HAVE that left one piece pending
    /// and on the last one.
    fn fetch_stint(
        net: &mut Net,
        seed: usize,
        conn: ConnId,
        mut stint: Vec<u32>,
        len: usize,
    ) -> (Sent, Sent) {
        let mut at_one = Vec::new();
        let mut i = 0;
        while i < stint.len() {
            net.nodes[seed].handle_message(conn, PeerMessage::Have(stint[i]), net.now);
            let out = sent(net, seed);
            i += 1;
            if i == len {
                assert_eq!(stint.len(), len, "more than a stint shown");
                return (at_one, out);
            }
            let more = shown(&out, conn);
            stint.extend(&more);
            if i == len - 1 {
                at_one = out;
            } else if more.is_empty() {
                assert!(to(&out, conn).is_empty(), "{out:?}");
            }
        }
        panic!("stint of {} pieces, not {len}", stint.len());
    }

    /// Windows of 3 pieces of 16 KiB, stints of 4.
    fn stints_of_4() -> SwarmConfig {
        SwarmConfig {
            reveal_blocks: 2,
            seed_stint: 4,
            ..SwarmConfig::default()
        }
    }

    /// A super-seed of 32 pieces of 16 KiB on `config`.
    fn stint_seed(config: SwarmConfig) -> (Net, usize) {
        let mut net = Net::new(32 * 16_384, 16_384);
        let seed = net.add_with(true, false, config);
        (net, seed)
    }

    #[test]
    fn a_super_seed_passes_each_slot_on_after_a_stint_to_a_peer_that_waited() {
        // 32 pieces of 16 KiB, windows of 3, stints of 4, one regular slot (+ the optimistic):
        // a and b are unchoked and shown first copies; c and d wait.
        let (mut net, seed) = stint_seed(SwarmConfig {
            seed_unchokes: 1,
            max_unchokes: 1,
            ..stints_of_4()
        });
        let (a, b, c, d) = (ConnId(1), ConnId(2), ConnId(3), ConnId(4));
        for (conn, id) in [(a, 0xaa), (b, 0xbb), (c, 0xcc), (d, 0xdd)] {
            join_empty(&mut net, seed, conn, id);
        }
        let out = sent(&mut net, seed);
        assert_eq!(shown(&out, a).len(), 3, "{out:?}");
        assert_eq!(shown(&out, b).len(), 3);
        assert!(to(&out, c).is_empty() && to(&out, d).is_empty(), "{out:?}");
        // a fetches its stint. With one piece of it left, a holds no slot: c (never
        // unchoked, before d) is unchoked and shown its window while a finishes; a's last
        // HAVE gets it choked, and nothing more is shown to it.
        let (at_one, last) = fetch_stint(&mut net, seed, a, shown(&out, a), 4);
        assert_eq!(
            to(&at_one, c).first(),
            Some(&&PeerMessage::Unchoke),
            "{at_one:?}"
        );
        assert_eq!(shown(&at_one, c).len(), 3);
        assert!(to(&at_one, d).is_empty(), "{at_one:?}");
        assert_eq!(to(&last, a), vec![&PeerMessage::Choke], "{last:?}");
        net.check_invariants();
        // b's stint ends the same way; its slot goes to d (no piece, never unchoked), not
        // back to a.
        let (at_one, last) = fetch_stint(&mut net, seed, b, shown(&out, b), 4);
        assert_eq!(
            to(&at_one, d).first(),
            Some(&&PeerMessage::Unchoke),
            "{at_one:?}"
        );
        assert!(to(&at_one, a).is_empty(), "{at_one:?}");
        assert_eq!(to(&last, b), vec![&PeerMessage::Choke], "{last:?}");
        net.check_invariants();
    }

    #[test]
    fn a_stint_goes_on_while_no_peer_waits_for_a_turn() {
        // A lone peer is kept topped up past its stint of 4: choking it would only drain its
        // window and leave the seed idle for a round trip.
        let (mut net, seed) = stint_seed(stints_of_4());
        let a = ConnId(1);
        join_empty(&mut net, seed, a, 0xaa);
        let mut pending = shown(&sent(&mut net, seed), a);
        assert_eq!(pending.len(), 3);
        let mut fetched = 0;
        while fetched < 10 {
            let piece = pending.remove(0);
            net.nodes[seed].handle_message(a, PeerMessage::Have(piece), net.now);
            fetched += 1;
            let out = sent(&mut net, seed);
            assert!(!to(&out, a).contains(&&PeerMessage::Choke), "{out:?}");
            pending.extend(shown(&out, a));
            assert_eq!(pending.len(), 3, "after {fetched}: {out:?}");
        }
        net.check_invariants();
    }

    #[test]
    fn a_slow_peers_window_shrinks_below_the_first_one() {
        // 64 KiB pieces and the default 64 blocks: 17 pieces before the first sample. A peer
        // that then fetches at 64 KiB/s with a 1 s loop needs ceil(2 × 64 KiB/s × 1 s ÷
        // 64 KiB) + 1 = 3: kept at 17 it would hold 17 first copies, a quarter of a minute of
        // its rate, while the others wait for them (the 1 + 32 tail harness, seed 9).
        let config = SwarmConfig::default();
        let piece = 65_536;
        let (first, cap) = (
            SuperSeed::first_window(&config, piece),
            SuperSeed::cap(&config, piece),
        );
        assert_eq!(first, 17);
        let mut window = RevealWindow::default();
        assert_eq!(window.target(first, cap), first);
        let start = Instant::now();
        window.on_revealed(0, start);
        for quarter in 1..=4 {
            window.on_uploaded(16_384, start + Duration::from_millis(250 * quarter), piece);
        }
        window.on_have(0, start + Duration::from_secs(1), piece);
        assert_eq!(window.target(first, cap), 3);
        // Slower still, it keeps the least window: a piece to fetch, one to ask for next and
        // one to spare.
        let mut slower = RevealWindow::default();
        slower.on_revealed(0, start);
        for second in 1..=4 {
            slower.on_uploaded(4_096, start + Duration::from_secs(second), piece);
        }
        slower.on_have(0, start + Duration::from_secs(4), piece);
        assert_eq!(slower.target(first, cap), MEASURED_FLOOR);
    }

    #[test]
    fn super_seed_shows_no_second_copy_while_a_first_copy_is_on_its_way() {
        // 6 pieces of 16 KiB, windows of 5, four unchoke slots.
        let mut net = Net::new(6 * 16_384, 16_384);
        let seed = net.add(true, false);
        net.nodes[seed].config.reveal_blocks = 4;
        let (a, b) = (ConnId(7), ConnId(8));
        join_empty(&mut net, seed, a, 0xaa);
        let to_a = haves(&mut net, seed, a);
        assert_eq!(to_a.len(), 5);
        // b is shown the one piece no one has or fetches, and none of a's.
        join_empty(&mut net, seed, b, 0xbb);
        let to_b = haves(&mut net, seed, b);
        assert_eq!(to_b.len(), 1, "{to_b:?}");
        assert!(!to_a.contains(&to_b[0]));
        // While one of a's is still on its way, b is shown nothing.
        for &p in &to_a[..4] {
            net.nodes[seed].handle_message(a, PeerMessage::Have(p), net.now);
        }
        net.nodes[seed].handle_message(b, PeerMessage::Have(to_b[0]), net.now);
        assert_eq!(haves(&mut net, seed, b), Vec::<u32>::new());
        // The last first copy lands: every piece is held, and b is shown a's.
        net.nodes[seed].handle_message(a, PeerMessage::Have(to_a[4]), net.now);
        let mut more = haves(&mut net, seed, b);
        more.sort_unstable();
        let mut all_of_a = to_a.clone();
        all_of_a.sort_unstable();
        assert_eq!(more, all_of_a);
    }

    /// A seed with 10 pieces of 16 KiB and windows of 5; `a` joins first and is shown five
    /// first copies, then `b` joins, is shown the other five and fetches them. Returns the
    /// seed, a, b and the pieces shown to a.
    fn a_holds_five_first_copies(net: &mut Net) -> (usize, ConnId, ConnId, Vec<u32>) {
        let seed = net.add(true, false);
        net.nodes[seed].config.reveal_blocks = 4;
        let (a, b) = (ConnId(7), ConnId(8));
        join_empty(net, seed, a, 0xaa);
        let to_a = haves(net, seed, a);
        assert_eq!(to_a.len(), 5);
        join_empty(net, seed, b, 0xbb);
        net.nodes[seed].handle_message(b, PeerMessage::Interested, net.now);
        let to_b = haves(net, seed, b);
        assert_eq!(to_b.len(), 5, "{to_b:?}");
        for p in to_b {
            net.nodes[seed].handle_message(b, PeerMessage::Have(p), net.now);
        }
        // Every piece left is a first copy reserved for a.
        assert_eq!(haves(net, seed, b), Vec::<u32>::new());
        (seed, a, b, to_a)
    }

    /// Advances the clock a second at a time for `secs` seconds; both peers stay alive (a
    /// keep-alive each second) and `a` asks for nothing. Returns what `b` was shown.
    fn wait(net: &mut Net, seed: usize, (a, b): (ConnId, ConnId), secs: u64) -> Vec<u32> {
        let mut shown = Vec::new();
        for _ in 0..secs {
            net.now += Duration::from_secs(1);
            for conn in [a, b] {
                net.nodes[seed].handle_message(conn, PeerMessage::KeepAlive, net.now);
            }
            net.nodes[seed].handle_timeout(net.now);
            shown.extend(haves(net, seed, b));
        }
        shown
    }

    #[test]
    fn a_first_copy_held_for_a_peer_that_never_fetches_it_is_released_after_the_stall_bound() {
        // a is, say, another complete node that super-seeds too: it never asks for what it is
        // shown (the hostile-seed simulation stalled on exactly this).
        let mut net = Net::new(10 * 16_384, 16_384);
        let (seed, a, b, to_a) = a_holds_five_first_copies(&mut net);
        let stall = net.nodes[seed].config.request_timeout.as_secs();
        assert_eq!(wait(&mut net, seed, (a, b), stall - 1), Vec::<u32>::new());
        let mut shown = wait(&mut net, seed, (a, b), 2);
        shown.sort_unstable();
        let mut expected = to_a.clone();
        expected.sort_unstable();
        assert_eq!(shown, expected, "a's first copies were not released");
    }

    #[test]
    fn a_first_copy_held_for_a_peer_that_leaves_is_released_at_once() {
        let mut net = Net::new(10 * 16_384, 16_384);
        let (seed, a, b, to_a) = a_holds_five_first_copies(&mut net);
        // A ban closes the connection through the same path.
        net.nodes[seed].handle_disconnected(a, net.now);
        let mut shown = haves(&mut net, seed, b);
        shown.sort_unstable();
        let mut expected = to_a.clone();
        expected.sort_unstable();
        assert_eq!(shown, expected, "a's first copies were not released");
    }

    #[test]
    fn a_first_copy_stays_held_while_its_peer_makes_progress() {
        // a is slow, not stuck: it asks for a block of its first copies every 20 s.
        let mut net = Net::new(10 * 16_384, 16_384);
        let (seed, a, b, to_a) = a_holds_five_first_copies(&mut net);
        net.nodes[seed].handle_message(a, PeerMessage::Interested, net.now);
        for &p in &to_a[..4] {
            assert_eq!(wait(&mut net, seed, (a, b), 20), Vec::<u32>::new());
            let block = BlockRef {
                piece: p,
                offset: 0,
                length: 16_384,
            };
            net.nodes[seed].handle_message(a, PeerMessage::Request(block), net.now);
            let uploads = settle(&mut net, seed)
                .into_iter()
                .filter(|x| matches!(x, Action::Upload { .. }))
                .count();
            assert_eq!(uploads, 1);
            net.nodes[seed].handle_uploaded(a, 16_384, net.now);
            net.nodes[seed].handle_message(a, PeerMessage::Have(p), net.now);
        }
        // Only a's fifth piece is still a first copy; it stays a's while a keeps fetching.
        assert_eq!(wait(&mut net, seed, (a, b), 20), Vec::<u32>::new());
    }

    #[test]
    fn super_seed_reveals_a_few_pieces_at_a_time() {
        // 64 pieces of 16 KiB; 4 blocks → target ceil(4 / 1) + 1 = 5 revealed pieces.
        let mut net = Net::new(64 * 16_384, 16_384);
        let seed = net.add(true, false);
        net.nodes[seed].config.reveal_blocks = 4;
        let conn = ConnId(7);
        net.nodes[seed]
            .handle_connected(conn, PeerId([0xaa; 20]), None, net.now)
            .unwrap();
        let first: Vec<Action> = std::iter::from_fn(|| net.nodes[seed].poll_action())
            .filter(|a| *a != Action::Completed)
            .collect();
        assert_eq!(
            first,
            vec![Action::Send {
                conn,
                msg: PeerMessage::Bitfield(Bytes::from(vec![0u8; 8]))
            }]
        );
        net.nodes[seed].handle_message(
            conn,
            PeerMessage::Bitfield(Bytes::from(vec![0u8; 8])),
            net.now,
        );
        let haves: Vec<u32> = std::iter::from_fn(|| net.nodes[seed].poll_action())
            .filter_map(|a| match a {
                Action::Send {
                    msg: PeerMessage::Have(p),
                    ..
                } => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(haves.len(), 5);
        // The peer got one: exactly one more is revealed, and never one already revealed.
        net.nodes[seed].handle_message(conn, PeerMessage::Have(haves[0]), net.now);
        let more: Vec<u32> = std::iter::from_fn(|| net.nodes[seed].poll_action())
            .filter_map(|a| match a {
                Action::Send {
                    msg: PeerMessage::Have(p),
                    ..
                } => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(more.len(), 1);
        assert!(!haves.contains(&more[0]));
        // A second peer is shown different pieces first (least revealed).
        let other = ConnId(8);
        net.nodes[seed]
            .handle_connected(other, PeerId([0xbb; 20]), None, net.now)
            .unwrap();
        net.nodes[seed].handle_message(
            other,
            PeerMessage::Bitfield(Bytes::from(vec![0u8; 8])),
            net.now,
        );
        let second: Vec<u32> = std::iter::from_fn(|| net.nodes[seed].poll_action())
            .filter_map(|a| match a {
                Action::Send {
                    conn: c,
                    msg: PeerMessage::Have(p),
                } if c == other => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(second.len(), 5);
        assert!(second.iter().all(|p| !haves.contains(p) && *p != more[0]));
    }
}
