//! How many regular unchoke slots to use (spec/P2P.md §4.3): sized by what our uplink carries,
//! as libtorrent's rate-based choker sizes them, instead of a fixed 3. A fixed count leaves the
//! uplink idle when the few unchoked peers cannot take all it sends (their downlinks are shared,
//! they want few of our pieces), and a leecher then waits on peers that hold what it wants but
//! choke it.
//!
//! Each rechoke first re-sizes the count from the window that just ended:
//! - the uplink's *busy share*: the part of the window during which blocks were waiting to be
//!   sent (a block reported sent while others were still queued means the uplink went straight
//!   on to the next one);
//! - the *fair share*: all block bytes sent in the window over the number of unchoked peers;
//! - the peers unchoked at both ends of the window, and what each of them took.
//!
//! The count opens while the uplink has idle time (busy share below [`OPEN_BELOW`]), in
//! proportion to the idle share: to `count × TARGET / busy`, at least one more, at most double,
//! so a download of a few rechoke intervals reaches its count within one or two rather than
//! one slot per 10 s. Opening does not wait for every unchoked peer to take a fair share: while
//! leeching, a peer keeps its slot for what it sends us and may want little from us, and
//! waiting on it kept the uplink idle (the tail harness at 32 leechers had windows busy 0.3–0.6
//! with one unchoked peer under a tenth of its share). It closes by one while the uplink is full
//! (busy share at least [`CLOSE_FROM`]) and a peer unchoked throughout took less than a quarter
//! of its fair share (a slot is held by a peer that does not use it, and the others fill the
//! uplink without it). Otherwise it holds: the gap between the busy thresholds (0.85 / 0.95)
//! is the hysteresis, so a count that just opened and now fills the uplink stays, and one
//! window's noise does not move it back and forth at every rechoke. A window with no block
//! sent, or shorter than half a rechoke interval, changes nothing.
//!
//! Between rechokes the count only grows ([`Slots::grow`], [`Swarm::grow_slots`]): on the 1 s
//! tick, once a quarter of the rechoke interval has passed since the last re-size, if choked
//! peers are interested and the uplink had idle time since that re-size, the count opens by the
//! same rule and the best-ranked of them are unchoked at once. A download of a few rechoke
//! intervals otherwise spends most of its time at the first count; opening a slot on an idle
//! uplink chokes nobody, so it need not wait for the rechoke, whose interval bounds choking
//! churn. Closing stays at the rechoke.
//!
//! The count stays between a floor (`regular_unchokes` while leeching, `seed_unchokes` while
//! complete) and a cap (`max_unchokes`); a cap at or below the floor is a fixed count, the
//! choker before this module.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{ConnId, Swarm, SwarmConfig};

/// Below this busy share the uplink has idle time worth another slot.
pub const OPEN_BELOW: f64 = 0.85;
/// At or above this busy share the uplink is full.
pub const CLOSE_FROM: f64 = 0.95;
/// The busy share an opening aims at.
pub const TARGET: f64 = 0.9;
/// Between rechokes the count may grow once a rechoke interval over this has passed since the
/// last re-size. A quarter (2.5 s of 10) spans about 20 blocks of 16 KiB even on a 1 Mbit/s
/// uplink, so the busy share is not one block's noise, and still lets the count open up to
/// three times before the next rechoke.
pub const GROW_EVERY: u32 = 4;

/// The rate-based slot count and the measurements of the current window.
#[derive(Debug)]
pub(super) struct Slots {
    /// Regular slots, before the floor and cap of the moment are applied.
    count: usize,
    window_start: Instant,
    /// Time in this window during which blocks were waiting to be sent.
    busy: Duration,
    /// The last upload report, and whether blocks were still queued after it.
    mark: Instant,
    waiting: bool,
    /// Peers unchoked when the window began (at the end of the one before); `None` in the
    /// first window, where every peer unchoked at its end was unchoked within its first
    /// moments (on its INTERESTED or BITFIELD), so each counts.
    unchoked_before: Option<BTreeSet<ConnId>>,
    /// Busy time and blocks sent since the slots started, never reset: a growth window's share
    /// is the difference from its start (see [`Slots::grow`]).
    total_busy: Duration,
    total_sent: u64,
    /// The last re-size (a rechoke or a growth between rechokes): when, and the totals then.
    resized: Instant,
    resized_busy: Duration,
    resized_sent: u64,
}

/// One window's measurements, for [`resize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Window {
    /// Share of the window the uplink had blocks waiting, 0..=1.
    pub(super) busy: f64,
    /// Block bytes sent to all peers.
    pub(super) sent: u64,
    /// Peers unchoked at the window's end.
    pub(super) unchoked: usize,
    /// The least any peer unchoked throughout the window took, if there is one (in the first
    /// window: any peer unchoked at its end).
    pub(super) least: Option<u64>,
}

impl Slots {
    pub(super) fn new(config: &SwarmConfig, now: Instant) -> Self {
        Self {
            count: config.regular_unchokes,
            window_start: now,
            busy: Duration::ZERO,
            mark: now,
            waiting: false,
            unchoked_before: None,
            total_busy: Duration::ZERO,
            total_sent: 0,
            resized: now,
            resized_busy: Duration::ZERO,
            resized_sent: 0,
        }
    }

    /// Busy time so far, counting a stretch still under way (blocks waiting) up to `now`.
    fn busy_until(&self, now: Instant) -> Duration {
        let pending = if self.waiting {
            now.saturating_duration_since(self.mark)
        } else {
            Duration::ZERO
        };
        self.total_busy + pending
    }

    /// Starts a growth window at `now`.
    fn mark_resized(&mut self, now: Instant) {
        self.resized = now;
        self.resized_busy = self.busy_until(now);
        self.resized_sent = self.total_sent;
    }

    /// Between rechokes, opens the count by the rechoke's rule (never closes it) once at least
    /// `min_window` has passed since the last re-size and the uplink had idle time since then;
    /// `unchoked` peers are unchoked now. Returns whether the count grew.
    pub(super) fn grow(
        &mut self,
        floor: usize,
        cap: usize,
        unchoked: usize,
        min_window: Duration,
        now: Instant,
    ) -> bool {
        let length = now.saturating_duration_since(self.resized);
        if length.is_zero() || length < min_window {
            return false;
        }
        let busy = self.busy_until(now).saturating_sub(self.resized_busy);
        let window = Window {
            busy: (busy.as_secs_f64() / length.as_secs_f64()).min(1.0),
            // Blocks, not bytes: opening looks only at whether anything was sent.
            sent: self.total_sent - self.resized_sent,
            unchoked,
            least: None,
        };
        let before = self.get(floor, cap);
        let after = resize(before, floor, cap, window);
        if after <= before {
            return false;
        }
        tracing::debug!(
            before,
            after,
            ?window,
            "unchoke slots grown between rechokes"
        );
        self.count = after;
        self.mark_resized(now);
        true
    }

    /// Regular slots now: the count between `floor` and `cap` (a cap at or below the floor
    /// fixes the count at the floor).
    pub(super) fn get(&self, floor: usize, cap: usize) -> usize {
        self.count.clamp(floor, cap.max(floor))
    }

    /// An upload was reported (sent, or dropped with `sent == false`); `queued` blocks are still
    /// waiting for the uplink after it.
    pub(super) fn on_uploaded(&mut self, sent: bool, queued: usize, now: Instant) {
        // Blocks were waiting since the mark, so the uplink went straight on to this one. The
        // core does not see when a block starts waiting on an idle uplink (the request's
        // arrival), so such a stretch counts from this report: the share is a lower bound.
        if sent && self.waiting {
            let stretch = now.saturating_duration_since(self.mark);
            self.busy += stretch;
            self.total_busy += stretch;
        }
        if sent {
            self.total_sent += 1;
        }
        // A dropped block leaves the uplink sending what it was sending.
        if sent || !self.waiting {
            self.mark = now;
        }
        self.waiting = queued > 0;
    }

    /// Ends the window at `now`: measures it against `peers` (conn, unchoked, bytes sent to it
    /// in the window) and re-sizes the count between `floor` and `cap`.
    pub(super) fn end_window(
        &mut self,
        peers: &[(ConnId, bool, u64)],
        floor: usize,
        cap: usize,
        min_window: Duration,
        now: Instant,
    ) {
        let length = now.saturating_duration_since(self.window_start);
        let unchoked: BTreeSet<ConnId> = peers
            .iter()
            .filter(|(_, u, _)| *u)
            .map(|(c, _, _)| *c)
            .collect();
        let window = Window {
            busy: if length.is_zero() {
                0.0
            } else {
                (self.busy.as_secs_f64() / length.as_secs_f64()).min(1.0)
            },
            sent: peers.iter().map(|(_, _, b)| *b).sum(),
            unchoked: unchoked.len(),
            least: peers
                .iter()
                .filter(|(c, u, _)| {
                    *u && self.unchoked_before.as_ref().is_none_or(|b| b.contains(c))
                })
                .map(|(_, _, b)| *b)
                .min(),
        };
        if self.waiting {
            let stretch = now.saturating_duration_since(self.mark);
            self.busy += stretch;
            self.total_busy += stretch;
            self.mark = now;
        }
        if length >= min_window {
            let before = self.get(floor, cap);
            self.count = resize(before, floor, cap, window);
            if self.count != before {
                tracing::debug!(before, after = self.count, ?window, "unchoke slots");
            }
        }
        self.window_start = now;
        self.busy = Duration::ZERO;
        self.unchoked_before = Some(unchoked);
        self.mark_resized(now);
    }
}

/// The next count from `count` after `window` (see the module comment), between `floor` and
/// `cap`.
pub(super) fn resize(count: usize, floor: usize, cap: usize, window: Window) -> usize {
    let cap = cap.max(floor);
    if window.sent == 0 {
        return count.clamp(floor, cap);
    }
    // With no peer unchoked throughout (each left its slot with NOT_INTERESTED once it had
    // what it wanted), no slot was held unused.
    let fair = window.sent as f64 / window.unchoked.max(1) as f64;
    let least = window.least.map_or(fair, |l| l as f64);
    let next = if window.busy < OPEN_BELOW {
        // Proportional to the idle share; `busy` may be 0 (no block ever queued behind
        // another), so the ratio is bounded by the doubling first.
        let aim = (count as f64 * TARGET / window.busy.max(TARGET / 2.0)).ceil() as usize;
        aim.clamp(count + 1, count.max(1) * 2)
    } else if window.busy >= CLOSE_FROM && least < fair / 4.0 {
        count.saturating_sub(1)
    } else {
        count
    };
    next.clamp(floor, cap)
}

impl Swarm {
    /// Re-sizes the unchoke slots from the window that ends with this rechoke; called just
    /// before [`Swarm::rechoke`], while each peer's `window_up` still holds the window's bytes.
    pub(super) fn resize_slots(&mut self, now: Instant) {
        let peers: Vec<(ConnId, bool, u64)> = self
            .peers
            .iter()
            .map(|(c, p)| (*c, !p.am_choking, p.window_up))
            .collect();
        let floor = if self.is_complete() {
            self.config.seed_unchokes
        } else {
            self.config.regular_unchokes
        };
        let min_window = self.config.rechoke_interval / 2;
        self.slots
            .end_window(&peers, floor, self.config.max_unchokes, min_window, now);
    }

    /// Between rechokes (on the 1 s housekeeping tick), grows the count while the uplink had
    /// idle time since the last re-size and choked peers want to be served, and unchokes at
    /// once the best of them, ranked as the rechoke ranks, up to the new count. Opening a slot
    /// on an idle uplink chokes nobody, so it need not wait for the rechoke, whose interval
    /// bounds choking churn; closing stays at the rechoke.
    pub(super) fn grow_slots(&mut self, now: Instant) {
        let seeding = self.is_complete();
        let mut candidates: Vec<(ConnId, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.am_choking && p.peer_interested && p.got_bitfield)
            .map(|(c, p)| (*c, if seeding { p.window_up } else { p.window_down }))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let floor = if seeding {
            self.config.seed_unchokes
        } else {
            self.config.regular_unchokes
        };
        let unchoked = self.peers.values().filter(|p| !p.am_choking).count();
        let min_window = self.config.rechoke_interval / GROW_EVERY;
        if !self
            .slots
            .grow(floor, self.config.max_unchokes, unchoked, min_window, now)
        {
            return;
        }
        // As the rechoke: random order first so equal rates do not always favour the same peers.
        for i in (1..candidates.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            candidates.swap(i, j);
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
        for (conn, _) in candidates {
            if !self.unchoke_if_free(conn, now) {
                break;
            }
        }
    }

    /// Feeds the busy share: called for every upload report.
    pub(super) fn count_upload(&mut self, sent: bool, now: Instant) {
        let queued = self.peers.values().map(|p| p.queued_uploads).sum();
        self.slots.on_uploaded(sent, queued, now);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use bytes::Bytes;

    use super::*;
    use crate::swarm::tests::util::Net;
    use crate::swarm::Action;
    use crate::wire::{BlockRef, PeerId, PeerMessage};

    /// A complete node (3 regular slots as floor) with 8 interested peers, each holding piece 0
    /// (so none is a newcomer for the welcome slot, `choker.rs`); returns it and the peers it
    /// unchoked.
    fn seed_with_eight_peers() -> (Net, usize, Vec<ConnId>, HashSet<ConnId>) {
        let mut net = Net::new(64 * 16_384, 16_384);
        let seed = net.add(true, false);
        let conns: Vec<ConnId> = (0..8).map(|i| ConnId(100 + i)).collect();
        for (i, &c) in conns.iter().enumerate() {
            net.nodes[seed]
                .handle_connected(c, PeerId([0x80 + i as u8; 20]), None, net.now)
                .unwrap();
            net.nodes[seed].handle_message(
                c,
                PeerMessage::Bitfield(Bytes::from_static(&[0x80, 0, 0, 0, 0, 0, 0, 0])),
                net.now,
            );
            net.nodes[seed].handle_message(c, PeerMessage::Interested, net.now);
        }
        let mut unchoked = HashSet::new();
        uploads(&mut net, seed, &mut unchoked);
        (net, seed, conns, unchoked)
    }

    /// Drains `node`'s actions: tracks whom it unchokes and returns the uploads it queued.
    fn uploads(net: &mut Net, node: usize, unchoked: &mut HashSet<ConnId>) -> Vec<(ConnId, u64)> {
        let mut out = Vec::new();
        for action in std::iter::from_fn(|| net.nodes[node].poll_action()) {
            match action {
                Action::Send {
                    conn,
                    msg: PeerMessage::Unchoke,
                } => {
                    unchoked.insert(conn);
                }
                Action::Send {
                    conn,
                    msg: PeerMessage::Choke,
                } => {
                    unchoked.remove(&conn);
                }
                Action::Upload { conn, length, .. } => out.push((conn, u64::from(length))),
                _ => {}
            }
        }
        out
    }

    /// Each unchoked peer asks for `each` blocks of distinct pieces.
    fn request(net: &mut Net, node: usize, unchoked: &HashSet<ConnId>, each: u32, next: &mut u32) {
        let mut conns: Vec<ConnId> = unchoked.iter().copied().collect();
        conns.sort();
        for conn in conns {
            for _ in 0..each {
                let block = BlockRef {
                    piece: *next % 64,
                    offset: 0,
                    length: 16_384,
                };
                *next += 1;
                net.nodes[node].handle_message(conn, PeerMessage::Request(block), net.now);
            }
        }
    }

    /// One second on an idle uplink: each unchoked peer asks for one block, it leaves at once,
    /// then the 1 s tick runs (and whatever it unchoked is taken into `unchoked`).
    fn idle_second(net: &mut Net, seed: usize, unchoked: &mut HashSet<ConnId>, next: &mut u32) {
        request(net, seed, unchoked, 1, next);
        for (conn, len) in uploads(net, seed, unchoked) {
            net.nodes[seed].handle_uploaded(conn, len, net.now);
        }
        net.now += Duration::from_secs(1);
        net.nodes[seed].handle_timeout(net.now);
        uploads(net, seed, unchoked);
    }

    #[test]
    fn an_idle_uplink_unchokes_more_peers_at_the_next_rechoke() {
        let (mut net, seed, _, mut unchoked) = seed_with_eight_peers();
        assert_eq!(unchoked.len(), 4, "3 regular slots and the optimistic one");
        // Above the default cap (8), which the growth between rechokes reaches by itself.
        net.nodes[seed].config.max_unchokes = 16;
        // For 10 s, each unchoked peer asks for a block every second and it leaves at once:
        // blocks never wait, the uplink is idle nearly all the time.
        let mut next = 0;
        let mut seen = Vec::new();
        for _ in 0..10 {
            idle_second(&mut net, seed, &mut unchoked, &mut next);
            seen.push(net.nodes[seed].slots());
        }
        // Grown between rechokes at 3 s (to 6) and 6 s (to 12, the last choked peer
        // unchoked; none waits at 9 s), then the rechoke at 10 s opened it again, to the cap.
        assert_eq!(seen, [3, 3, 6, 6, 6, 12, 12, 12, 12, 16]);
        assert_eq!(unchoked.len(), 8);
    }

    #[test]
    fn an_idle_uplink_unchokes_more_peers_before_the_next_rechoke() {
        let (mut net, seed, _, mut unchoked) = seed_with_eight_peers();
        assert_eq!(unchoked.len(), 4, "3 regular slots and the optimistic one");
        // Each unchoked peer asks for a block every second and it leaves at once: the uplink
        // is idle nearly all the time, and 4 peers wait choked.
        let mut next = 0;
        let mut seen = Vec::new();
        for _ in 0..5 {
            idle_second(&mut net, seed, &mut unchoked, &mut next);
            seen.push((net.nodes[seed].slots(), unchoked.len()));
        }
        // Nothing moves before a quarter of the rechoke interval (2.5 s); at the 3 s tick the
        // count doubles and three more peers are unchoked at once, 7 s before the rechoke;
        // the next growth waits another 2.5 s.
        assert_eq!(seen, [(3, 4), (3, 4), (6, 7), (6, 7), (6, 7)]);
    }

    #[test]
    fn a_busy_uplink_does_not_grow_between_rechokes() {
        let (mut net, seed, _, mut unchoked) = seed_with_eight_peers();
        // Each unchoked peer asks for 10 blocks at once; they leave one every 250 ms, the
        // others still queued: from the first report on, the uplink is busy (0.92 of the
        // first 3 s, more after), while 4 interested peers wait choked.
        let mut next = 0;
        request(&mut net, seed, &unchoked, 10, &mut next);
        let queued = uploads(&mut net, seed, &mut unchoked);
        assert_eq!(queued.len(), 40);
        for (conn, len) in queued.into_iter().take(39) {
            net.now += Duration::from_millis(250);
            net.nodes[seed].handle_uploaded(conn, len, net.now);
            net.nodes[seed].handle_timeout(net.now);
            uploads(&mut net, seed, &mut unchoked);
            assert_eq!(net.nodes[seed].slots(), 3);
            assert_eq!(unchoked.len(), 4);
        }
    }

    #[test]
    fn growth_between_rechokes_only_opens() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let quarter = ms(2500);
        let mut slots = Slots::new(&SwarmConfig::default(), t0);
        let (a, b) = (ConnId(1), ConnId(2));
        // A rechoke after an idle window opens the count to 6.
        slots.on_uploaded(true, 0, t0 + ms(1000));
        slots.end_window(
            &[(a, true, 100), (b, true, 0)],
            3,
            16,
            ms(5000),
            t0 + ms(10_000),
        );
        assert_eq!(slots.get(3, 16), 6);
        // 10.25..13 s: full, and peer b took nothing; the rechoke would close one, growth
        // does not (0.92 busy since the rechoke).
        for t in (10_250..=13_000).step_by(250) {
            slots.on_uploaded(true, usize::from(t < 13_000), t0 + ms(t));
        }
        assert!(!slots.grow(3, 16, 7, quarter, t0 + ms(13_000)));
        assert_eq!(slots.get(3, 16), 6);
        // Idle from 13 s: by 16 s the share since the rechoke is 2.75 / 6, so it opens in
        // proportion (6 × 0.9 / 0.46 → 12) and starts a new growth window.
        slots.on_uploaded(true, 0, t0 + ms(15_000));
        assert!(slots.grow(3, 16, 7, quarter, t0 + ms(16_000)));
        assert_eq!(slots.get(3, 16), 12);
        // Idle still, but less than a quarter of a rechoke interval since the growth.
        slots.on_uploaded(true, 0, t0 + ms(17_000));
        assert!(!slots.grow(3, 16, 13, quarter, t0 + ms(18_000)));
        assert_eq!(slots.get(3, 16), 12);
    }

    #[test]
    fn a_full_uplink_keeps_the_slots() {
        let (mut net, seed, _, mut unchoked) = seed_with_eight_peers();
        // Each unchoked peer asks for 8 blocks at once; they leave one every 312.5 ms, the
        // others still queued: the uplink is busy from the first to the last, 9.7 s of 10
        // (and 0.9 of the first 3.1 s, so it does not grow between rechokes either).
        let mut next = 0;
        request(&mut net, seed, &unchoked, 8, &mut next);
        let queued = uploads(&mut net, seed, &mut unchoked);
        assert_eq!(queued.len(), 32);
        for (conn, len) in queued {
            net.now += Duration::from_micros(312_500);
            net.nodes[seed].handle_uploaded(conn, len, net.now);
            net.nodes[seed].handle_timeout(net.now);
            uploads(&mut net, seed, &mut unchoked);
        }
        assert_eq!(net.nodes[seed].slots(), 3);
        assert_eq!(unchoked.len(), 4);
    }

    fn window(busy: f64, sent: u64, unchoked: usize, least: Option<u64>) -> Window {
        Window {
            busy,
            sent,
            unchoked,
            least,
        }
    }

    #[test]
    fn an_idle_uplink_whose_slots_are_used_opens_in_proportion() {
        // 4 unchoked took 100 each, the uplink busy half the time: 3 × 0.9 / 0.5 = 5.4 → 6.
        assert_eq!(resize(3, 3, 16, window(0.5, 400, 4, Some(100))), 6);
        // Nearly full: one more.
        assert_eq!(resize(3, 3, 16, window(0.84, 400, 4, Some(100))), 4);
        // Never queued at all: at most double.
        assert_eq!(resize(3, 3, 16, window(0.0, 400, 4, Some(100))), 6);
        // The cap holds.
        assert_eq!(resize(6, 3, 7, window(0.1, 400, 4, Some(100))), 7);
    }

    #[test]
    fn a_full_uplink_or_a_window_with_nothing_sent_does_not_open() {
        // Full, or between the thresholds, with every slot used: hold.
        assert_eq!(resize(5, 3, 16, window(0.97, 400, 4, Some(100))), 5);
        assert_eq!(resize(5, 3, 16, window(0.85, 400, 4, Some(100))), 5);
        // Nothing sent: nobody asked, so no measurement.
        assert_eq!(resize(5, 3, 16, window(0.0, 0, 4, Some(0))), 5);
    }

    #[test]
    fn an_idle_uplink_opens_even_past_a_peer_that_takes_little() {
        // A leecher keeps a peer unchoked for what it sends us, and it may want little.
        assert_eq!(resize(5, 3, 16, window(0.5, 400, 4, Some(1))), 9);
        // Every unchoked peer left its slot (NOT_INTERESTED) or none was unchoked at the end.
        assert_eq!(resize(5, 3, 16, window(0.5, 400, 4, None)), 9);
        assert_eq!(resize(5, 3, 16, window(0.5, 400, 0, None)), 9);
    }

    #[test]
    fn a_full_uplink_with_an_unused_slot_closes_one_down_to_the_floor() {
        assert_eq!(resize(5, 3, 16, window(0.96, 400, 4, Some(24))), 4);
        assert_eq!(resize(3, 3, 16, window(0.96, 400, 4, Some(0))), 3);
        // Between the busy thresholds, or every peer at a quarter of its share or more: hold.
        assert_eq!(resize(5, 3, 16, window(0.9, 400, 4, Some(0))), 5);
        assert_eq!(resize(5, 3, 16, window(0.96, 400, 4, Some(25))), 5);
        // Nobody unchoked throughout: nothing shows an unused slot.
        assert_eq!(resize(5, 3, 16, window(0.96, 400, 4, None)), 5);
    }

    #[test]
    fn a_cap_at_or_below_the_floor_fixes_the_count() {
        assert_eq!(resize(3, 3, 0, window(0.1, 400, 4, Some(100))), 3);
        assert_eq!(resize(7, 7, 3, window(0.99, 400, 8, Some(0))), 7);
        let slots = Slots::new(&SwarmConfig::default(), Instant::now());
        assert_eq!(slots.get(7, 0), 7);
        assert_eq!(slots.get(3, 16), 3);
    }

    #[test]
    fn the_count_settles_once_the_uplink_is_full() {
        // A modelled uplink of capacity 100 per window; each unchoked peer can take 10: 4
        // unchoked keep it 0.4 busy, so the count opens to 6 (7 unchoked, 0.7), then to 8 (9
        // unchoked, 0.9, between the thresholds), and holds there on every later window.
        let mut count = 3;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let unchoked = count + 1;
            let sent = (unchoked as u64 * 10).min(100);
            let busy = sent as f64 / 100.0;
            let least = sent / unchoked as u64;
            count = resize(count, 3, 16, window(busy, sent, unchoked, Some(least)));
            seen.push(count);
        }
        assert_eq!(seen, [6, 8, 8, 8, 8, 8, 8, 8]);
    }

    #[test]
    fn busy_share_counts_time_with_blocks_waiting() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let config = SwarmConfig::default();
        let mut slots = Slots::new(&config, t0);
        let (a, b) = (ConnId(1), ConnId(2));
        // A window too short to measure changes nothing but starts the next.
        slots.end_window(&[(a, true, 0), (b, true, 0)], 3, 16, ms(5000), t0);
        // 0..4 s: a block sent every 1 s with more queued behind it; 4..10 s: idle.
        for s in 1..=4 {
            slots.on_uploaded(true, usize::from(s < 4), t0 + ms(1000 * s));
        }
        assert!(!slots.waiting);
        // Busy from the first report (1 s) to the last (4 s): 3 s of 10, a busy share of 0.3,
        // so it opens, to double at most: 6.
        slots.end_window(
            &[(a, true, 100), (b, true, 100)],
            3,
            16,
            ms(5000),
            t0 + ms(10_000),
        );
        assert_eq!(slots.get(3, 16), 6);
        // A dropped block reported while others wait does not count as sending time, and an
        // idle gap after the queue emptied is not busy.
        slots.on_uploaded(false, 2, t0 + ms(11_000));
        slots.on_uploaded(true, 0, t0 + ms(12_000));
        slots.on_uploaded(true, 0, t0 + ms(12_500));
        assert_eq!(slots.busy, ms(1000));
        // A window shorter than `min_window` changes nothing.
        slots.end_window(
            &[(a, true, 1), (b, true, 1)],
            3,
            16,
            ms(5000),
            t0 + ms(13_000),
        );
        assert_eq!(slots.get(3, 16), 6);
    }
}
