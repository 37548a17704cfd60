//! Choking (spec/P2P.md §4.3): whom we serve. A few unchoke slots go to the fastest peers of the
//! last window, one optimistic slot rotates, one welcome slot serves a peer we never served,
//! and only unchoked peers' requests are served.
//!
//! The welcome slot: a peer that joins after the others finds every slot held by the peers that
//! came first, has nothing to trade, ranks last by rate, and would wait for the optimistic
//! rotation (30 s). The reference client weights newly connected peers three times in that
//! rotation, libtorrent gives the optimistic slots to the peers that waited longest since their
//! last one; both act only at the rotation. Here a peer we never unchoked (by node id, so a
//! reconnection gains nothing) that wants what we have is unchoked at once in one slot of its
//! own, beside the others, choking nobody; it holds it until the first rechoke at least
//! [`WELCOME_TERM`] later, where it competes like any peer and the slot goes to another never
//! served. A newcomer holding fewer pieces than the welcome holder takes the slot from it once
//! the holder has had it for [`WELCOME_TERM`].
//!
//! The same slot serves a peer that tit-for-tat leaves behind while holding pieces: the peers
//! that have what it lacks rank it by what it gives them, which is little, so it gains pieces
//! slowly and falls further behind (in `tests/tail.rs`, one such leecher of 32 set the finish at
//! 1.3-1.4x the bound while the others were done at 1.05-1.2x). Every peer's piece count is
//! sampled on the 1 s tick; a choked, interested peer gaining at under half the median pace over
//! [`PROGRESS_TICKS`] ticks is *starving* and takes the slot when no newcomer wants it. A
//! newcomer still comes first: it takes the slot from a starving holder at once, term or not,
//! since it has nothing to trade at all (`tests/late.rs`).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use ferry_protocol::ErrorCode;
use rand::Rng;

use super::peer::PROGRESS_TICKS;
use super::{Action, ConnId, Swarm, SwarmConfig};
use crate::wire::{BlockRef, PeerId, PeerMessage};

/// The least a welcomed peer holds its slot: about 10 blocks of 16 KiB at a sixth of a 1 Mbit/s
/// uplink, so it leaves with pieces to trade.
pub const WELCOME_TERM: Duration = Duration::from_millis(2500);

/// The fewest incomplete peers whose median pace makes another peer starving: below it, every
/// peer is unchoked anyway, or a median says little.
const STARVING_MIN_PEERS: usize = 4;
/// Node ids remembered as served: a bound on memory, far above any swarm's peer count.
const SERVED_CAP: usize = 4096;

/// When the unchoke set is next recomputed, and who holds the optimistic and welcome slots.
#[derive(Debug)]
pub(super) struct Choker {
    pub(super) next_rechoke: Instant,
    pub(super) next_optimistic: Instant,
    pub(super) optimistic: Option<ConnId>,
    /// The peer in the welcome slot, and since when.
    pub(super) welcome: Option<(ConnId, Instant)>,
    /// Whether the welcome holder was let in as a starving peer, not as a newcomer: a newcomer
    /// may take the slot from it within its term.
    welcome_for_starving: bool,
    /// Node ids we ever unchoked, oldest first (at most `SERVED_CAP`).
    served: HashSet<PeerId>,
    /// When we started: the peers that come in the first [`WELCOME_TERM`] are the swarm's
    /// start, not newcomers to it.
    started: Instant,
    served_order: VecDeque<PeerId>,
}

impl Choker {
    pub(super) fn new(config: &SwarmConfig, now: Instant) -> Self {
        Self {
            next_rechoke: now + config.rechoke_interval,
            next_optimistic: now + config.optimistic_interval,
            optimistic: None,
            welcome: None,
            welcome_for_starving: false,
            served: HashSet::new(),
            served_order: VecDeque::new(),
            started: now,
        }
    }

    fn mark_served(&mut self, id: PeerId) {
        if self.served.insert(id) {
            self.served_order.push_back(id);
            if self.served_order.len() > SERVED_CAP {
                if let Some(old) = self.served_order.pop_front() {
                    self.served.remove(&old);
                }
            }
        }
    }

    /// The welcome holder, if it still holds the slot (connected and unchoked).
    pub(super) fn welcomed(&self) -> Option<ConnId> {
        self.welcome.map(|(c, _)| c)
    }
}

impl Swarm {
    /// Recomputes the unchoke set: `slots()` fastest interested peers plus the optimistic one,
    /// and starts a new rate window. While super-seeding, a peer fetching a first copy keeps
    /// its slot (spec/P2P.md §4.4) and the others share the rest.
    pub(super) fn rechoke(&mut self, now: Instant) {
        self.choker.next_rechoke = now + self.config.rechoke_interval;
        self.check_welcome();
        // A welcome ends at the first rechoke after its term: the peer competes like any other.
        let welcome_kept = self
            .choker
            .welcome
            .filter(|(_, since)| now.saturating_duration_since(*since) < WELCOME_TERM);
        self.choker.welcome = welcome_kept;
        let seeding = self.is_complete();
        let kept: Vec<ConnId> = self
            .peers
            .keys()
            .copied()
            .filter(|&c| self.super_seed.on && self.fetching_first_copy(c, now))
            .collect();
        let mut candidates: Vec<(ConnId, u64)> = self
            .peers
            .iter()
            .filter(|(c, p)| p.peer_interested && p.got_bitfield && !kept.contains(*c))
            .filter(|(c, _)| welcome_kept.is_none_or(|(w, _)| w != **c))
            .map(|(c, p)| (*c, if seeding { p.window_up } else { p.window_down }))
            .collect();
        // Random order first so equal rates do not always favour the same peers.
        for i in (1..candidates.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            candidates.swap(i, j);
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
        let slots = self.slots();
        // A peer finishing its stint's last piece holds no slot (spec/P2P.md §4.4).
        let draining = kept.iter().filter(|&&c| self.draining(c)).count();
        let kept_in_slots = kept.len() - draining;
        let mut unchoke: HashSet<ConnId> = candidates
            .iter()
            .take(slots.saturating_sub(kept_in_slots))
            .map(|(c, _)| *c)
            .collect();
        let optimistic_valid = self
            .choker
            .optimistic
            .is_some_and(|c| candidates.iter().any(|(x, _)| *x == c) && !unchoke.contains(&c));
        if kept_in_slots > slots {
            // Every slot, the optimistic one included, is kept.
            self.choker.optimistic = None;
        } else if !optimistic_valid {
            let rest: Vec<ConnId> = candidates
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| !unchoke.contains(c))
                .collect();
            self.choker.optimistic = if rest.is_empty() {
                None
            } else {
                Some(rest[self.rng.gen_range(0..rest.len())])
            };
        }
        if let Some(c) = self.choker.optimistic {
            unchoke.insert(c);
        }
        unchoke.extend(kept);
        // Regular slots no interested peer took stay with the unchoked peers that are not
        // interested now (spec/P2P.md §4.3): choking them only costs their next request a
        // round trip.
        let mut idle: Vec<ConnId> = self
            .peers
            .keys()
            .copied()
            .filter(|c| !unchoke.contains(c))
            .filter(|c| self.peers[c].got_bitfield && !self.peers[c].am_choking)
            .filter(|c| !self.peers[c].peer_interested)
            .collect();
        idle.sort_unstable();
        let free = (slots + 1).saturating_sub(unchoke.len() - draining);
        unchoke.extend(idle.into_iter().take(free));
        // A welcome still in its term is kept; the next is given on the 1 s tick.
        if let Some((w, _)) = welcome_kept {
            unchoke.insert(w);
        }
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            let Some(peer) = self.peers.get_mut(&conn) else {
                continue;
            };
            peer.window_down = 0;
            peer.window_up = 0;
            let want = unchoke.contains(&conn);
            if want && peer.am_choking {
                peer.am_choking = false;
                let id = peer.id;
                self.choker.mark_served(id);
                self.send(conn, PeerMessage::Unchoke, now);
            } else if !want && !peer.am_choking {
                peer.choke(now);
                self.send(conn, PeerMessage::Choke, now);
            }
        }
        // The newly unchoked are shown their windows.
        self.reveal_all(now);
    }

    /// A newly interested peer is unchoked at once while slots are free, rather than waiting
    /// up to a rechoke interval.
    pub(super) fn maybe_unchoke_now(&mut self, conn: ConnId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.unchoked_early = false;
        }
        if !self.unchoke_if_free(conn, now) {
            self.welcome_now(conn, now);
        }
    }

    /// A peer that is not interested keeps its unchoke until its slot is wanted (spec/P2P.md
    /// §4.3): by a choked interested peer (`unchoke_if_free`) or at a rechoke that fills every
    /// slot. A peer that caught up with us says NOT_INTERESTED, and INTERESTED again on our
    /// next HAVE; choked in between, it could ask for that piece only after our UNCHOKE, a
    /// round trip later, and a CHOKE crossing its INTERESTED and REQUESTs made it give those
    /// up. A super-seed's peer with a revealed piece still missing is kept too: the
    /// NOT_INTERESTED crossed that HAVE.
    pub(super) fn on_not_interested(&mut self, conn: ConnId, _now: Instant) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        peer.peer_interested = false;
        if !peer.am_choking {
            peer.unchoked_early = true;
        }
    }

    /// Whether `conn` holds an unchoke it has no use for: unchoked, not interested, and we
    /// have nothing it lacks (while super-seeding: no revealed piece it lacks). A peer
    /// unchoked on a BITFIELD that lacks a piece we have is not idle: its INTERESTED is on
    /// the way.
    fn idle_unchoked(&self, conn: ConnId) -> bool {
        let Some(p) = self.peers.get(&conn) else {
            return false;
        };
        if p.am_choking || p.peer_interested || !p.got_bitfield {
            return false;
        }
        if p.revealed.is_some() {
            return p.revealed_pending == 0;
        }
        let (ours, theirs) = (self.picker.have.as_bytes(), p.have.as_bytes());
        ours.iter().zip(theirs).all(|(o, t)| o & !t == 0)
    }

    /// A peer whose BITFIELD lacks pieces we can give it is unchoked before it says it is
    /// interested, while slots are free (spec/P2P.md §4.3).
    pub(super) fn unchoke_early(&mut self, conn: ConnId, now: Instant) {
        if self.unchoke_if_free(conn, now) || self.welcome_now(conn, now) {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.unchoked_early = !peer.peer_interested;
            }
        }
    }

    /// Unchokes `conn` if a slot is free for it (`make_room`); returns whether it sent UNCHOKE.
    pub(super) fn unchoke_if_free(&mut self, conn: ConnId, now: Instant) -> bool {
        if !self.peers.get(&conn).is_some_and(|p| p.am_choking) || !self.make_room(conn, now) {
            return false;
        }
        let Some(peer) = self.peers.get_mut(&conn) else {
            return false;
        };
        peer.am_choking = false;
        let id = peer.id;
        self.choker.mark_served(id);
        self.send(conn, PeerMessage::Unchoke, now);
        // A super-seed's newly unchoked peer is shown its whole window.
        self.reveal(conn, now);
        true
    }

    /// On the 1 s tick: a newcomer that came while the welcome slot was in its term, or before
    /// we had run for [`WELCOME_TERM`], gets it now if `welcome_now` allows.
    /// Failing a newcomer, the slot goes to a starving peer ([`Swarm::welcome_starving`]).
    pub(super) fn welcome_tick(&mut self, now: Instant) {
        if self.rotates_seed_slots() {
            // Its slots go round every peer, the never unchoked first: no welcome needed.
            return;
        }
        self.check_welcome();
        let median = self.mark_progress();
        let neediest = self
            .peers
            .iter()
            .filter(|(_, p)| p.am_choking && p.peer_interested && p.have.count() == 0)
            .map(|(c, _)| *c)
            .find(|c| !self.choker.served.contains(&self.peers[c].id));
        if let Some(conn) = neediest {
            if self.welcome_now(conn, now) {
                return;
            }
        }
        if let Some(median) = median {
            self.welcome_starving(median, now);
        }
    }

    /// Pieces `conn` gained over the last [`PROGRESS_TICKS`] ticks; `None` before it has been
    /// watched that long.
    fn gained(&self, conn: ConnId) -> Option<u32> {
        let peer = self.peers.get(&conn)?;
        let oldest = *peer.progress.front()?;
        (peer.progress.len() == PROGRESS_TICKS).then(|| peer.have.count().saturating_sub(oldest))
    }

    /// Whether `conn` gains pieces at under half the `median` pace of the incomplete peers.
    fn starving(&self, conn: ConnId, median: u32) -> bool {
        self.peers.get(&conn).is_some_and(|p| !p.have.is_full())
            && self
                .gained(conn)
                .is_some_and(|g| g.saturating_mul(2) < median)
    }

    /// On the tick: the median of the incomplete peers' gains (at least
    /// [`STARVING_MIN_PEERS`] of them watched long enough, median above 0), then this tick's
    /// piece count recorded for every peer.
    fn mark_progress(&mut self) -> Option<u32> {
        let mut gains: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| p.got_bitfield && !p.have.is_full())
            .filter_map(|(c, _)| self.gained(*c))
            .collect();
        for peer in self.peers.values_mut() {
            if peer.progress.len() == PROGRESS_TICKS {
                peer.progress.pop_front();
            }
            peer.progress.push_back(peer.have.count());
        }
        if gains.len() < STARVING_MIN_PEERS {
            return None;
        }
        gains.sort_unstable();
        let median = gains[gains.len() / 2];
        (median > 0).then_some(median)
    }

    /// Gives the welcome slot to a choked, interested peer gaining pieces at under half the
    /// median pace (`starving`), at random among several: tit-for-tat left it behind, since
    /// those who have what it lacks rank it by what it gives them, and it has little to give.
    /// The slot must be free, or held by a starving peer past its term that no longer starves
    /// (choked then; while super-seeding, not while it fetches a first copy): a newcomer keeps
    /// it to the rechoke.
    fn welcome_starving(&mut self, median: u32, now: Instant) {
        let starving: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.am_choking && p.peer_interested && p.got_bitfield)
            .map(|(c, _)| *c)
            .filter(|&c| self.starving(c, median))
            .collect();
        if starving.is_empty() {
            return;
        }
        // At random: the peers that see the same starving peers would otherwise all pick the
        // same one, filling its downlink while the others wait a term longer.
        let conn = starving[self.rng.gen_range(0..starving.len())];
        if let Some((w, since)) = self.choker.welcome {
            // A newcomer keeps the slot to the rechoke, as before starving peers shared it.
            if !self.choker.welcome_for_starving
                || now.saturating_duration_since(since) < WELCOME_TERM
                || self.starving(w, median)
                || (self.super_seed.on && self.fetching_first_copy(w, now))
            {
                return;
            }
            self.choke_to_free_slot(w, now);
        }
        self.unchoke_in_welcome(conn, true, now);
    }

    /// Unchokes `conn` in the welcome slot, as a starving peer or as a newcomer; returns
    /// whether it did (`conn` is connected).
    fn unchoke_in_welcome(&mut self, conn: ConnId, for_starving: bool, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return false;
        };
        peer.am_choking = false;
        let id = peer.id;
        tracing::debug!(?conn, for_starving, "welcome unchoke");
        self.choker.mark_served(id);
        self.choker.welcome = Some((conn, now));
        self.choker.welcome_for_starving = for_starving;
        self.send(conn, PeerMessage::Unchoke, now);
        self.reveal(conn, now);
        true
    }

    /// Whether we super-seed in stints (spec/P2P.md §4.4): slots pass from peer to peer.
    pub(super) fn rotates_seed_slots(&self) -> bool {
        self.super_seed.on && self.config.seed_stint > 0
    }

    /// Clears the welcome slot if its holder left or was choked.
    fn check_welcome(&mut self) {
        if let Some((w, _)) = self.choker.welcome {
            if self.peers.get(&w).is_none_or(|p| p.am_choking) {
                self.choker.welcome = None;
            }
        }
    }

    /// Unchokes `conn`, choked with no slot free, in the welcome slot if it is a newcomer: it
    /// holds no piece (nothing to trade, so tit-for-tat never picks it), we never served it (by
    /// node id), and we have run for [`WELCOME_TERM`] (before that every peer is new and the
    /// slots are being handed out). The slot must be free, held by a starving peer
    /// (`welcome_starving`), or held for [`WELCOME_TERM`] by a peer that now holds pieces; the
    /// holder is choked then (while super-seeding, not while it fetches a first copy). Returns
    /// whether it sent UNCHOKE.
    fn welcome_now(&mut self, conn: ConnId, now: Instant) -> bool {
        self.check_welcome();
        if self.rotates_seed_slots() {
            return false;
        }
        let Some(peer) = self.peers.get(&conn) else {
            return false;
        };
        if !peer.am_choking
            || !peer.got_bitfield
            || peer.have.count() > 0
            || self.choker.served.contains(&peer.id)
            || now.saturating_duration_since(self.choker.started) < WELCOME_TERM
        {
            return false;
        }
        if let Some((w, since)) = self.choker.welcome {
            let holder = &self.peers[&w];
            let in_term = now.saturating_duration_since(since) < WELCOME_TERM;
            if (in_term && !self.choker.welcome_for_starving)
                || holder.have.count() == 0
                || (self.super_seed.on && self.fetching_first_copy(w, now))
            {
                return false;
            }
            self.choke_to_free_slot(w, now);
        }
        self.unchoke_in_welcome(conn, false, now)
    }

    /// The unchoked peer, other than `conn`, whose slot `conn` may take when none is free: one
    /// that is not interested (`idle_unchoked`), lowest connection first.
    fn idle_slot(&self, conn: ConnId) -> Option<ConnId> {
        self.peers
            .keys()
            .copied()
            .find(|&c| c != conn && Some(c) != self.choker.welcomed() && self.idle_unchoked(c))
    }

    /// Whether `conn` could be unchoked now: fewer than `slots() + 1` peers are unchoked, or
    /// one of them holds its slot without using it (spec/P2P.md §4.3).
    pub(super) fn has_room(&self, conn: ConnId) -> bool {
        let unchoked = self.unchoked_in_slots();
        unchoked <= self.slots() || self.idle_slot(conn).is_some()
    }

    /// Frees a slot for `conn` if none is: the peer of `idle_slot` is choked. Every caller
    /// unchokes a peer with a use for the slot (it said INTERESTED, its BITFIELD lacks a piece
    /// we have, or a super-seed has a piece to show it), which the idle one has not. Returns
    /// whether a slot is free.
    pub(super) fn make_room(&mut self, conn: ConnId, now: Instant) -> bool {
        self.check_welcome();
        let unchoked = self.unchoked_in_slots();
        if unchoked <= self.slots() {
            return true;
        }
        let Some(idle) = self.idle_slot(conn) else {
            return false;
        };
        self.choke_to_free_slot(idle, now);
        true
    }

    /// Chokes `conn` so that another peer can have its slot (the optimistic one too, if it
    /// held that).
    pub(super) fn choke_to_free_slot(&mut self, conn: ConnId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.choke(now);
        }
        if self.choker.optimistic == Some(conn) {
            self.choker.optimistic = None;
        }
        self.send(conn, PeerMessage::Choke, now);
    }

    /// Unchoked peers in the regular and optimistic slots: all but the welcome holder.
    fn unchoked_in_slots(&self) -> usize {
        let welcomed = self.choker.welcomed();
        self.peers
            .iter()
            .filter(|(c, p)| !p.am_choking && Some(**c) != welcomed && !p.draining())
            .count()
    }

    /// Regular unchoke slots: more while seeding.
    pub(super) fn slots(&self) -> usize {
        // The floor, raised while the uplink has idle time (spec/P2P.md §4.3, `slots.rs`).
        let floor = if self.is_complete() {
            self.config.seed_unchokes
        } else {
            self.config.regular_unchokes
        };
        self.slots.get(floor, self.config.max_unchokes)
    }

    pub(super) fn on_request(&mut self, conn: ConnId, block: BlockRef, now: Instant) {
        let Some(piece) = self.manifest.piece(block.piece) else {
            return self.protocol_error(
                conn,
                ErrorCode::INVALID_RANGE,
                &format!(
                    "request for piece {} of {}",
                    block.piece,
                    self.manifest.piece_count()
                ),
                now,
            );
        };
        let piece_len = self.manifest.piece_len(piece);
        if block
            .offset
            .checked_add(block.length)
            .is_none_or(|end| end > piece_len)
        {
            return self.protocol_error(
                conn,
                ErrorCode::INVALID_RANGE,
                &format!(
                    "request {}+{} beyond piece length {piece_len}",
                    block.offset, block.length
                ),
                now,
            );
        }
        let have = self.picker.have.has(piece);
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        // Requests while choked, for pieces we never announced, or beyond the queue limit are
        // ignored: they can be honest races (spec/P2P.md §4.4).
        if peer.am_choking || !have || peer.queued_uploads >= self.config.max_queued_uploads {
            tracing::trace!(?conn, ?block, "ignoring request");
            return;
        }
        peer.queued_uploads += 1;
        // Progress: a super-seed keeps holding the peer's first copies (`super_seed.rs`).
        peer.reveal.on_request(now);
        self.actions.push_back(Action::Upload {
            conn,
            piece,
            offset: block.offset,
            length: block.length,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use bytes::Bytes;

    use crate::pieces::Bitfield;
    use crate::swarm::tests::util::*;
    use crate::swarm::{Action, ConnId, Swarm, SwarmConfig};
    use crate::wire::{PeerId, PeerMessage};

    #[test]
    fn choking_keeps_a_few_unchoked_and_rotates_the_optimistic_slot() {
        let mut net = Net::new(100_000, 16_384);
        let seed = net.add(true, false);
        let conns: Vec<ConnId> = (0..8).map(|i| ConnId(100 + i)).collect();
        for (i, &c) in conns.iter().enumerate() {
            net.nodes[seed]
                .handle_connected(c, PeerId([0x80 + i as u8; 20]), None, net.now)
                .unwrap();
            // Each holds piece 0: none is a newcomer for the welcome slot.
            net.nodes[seed].handle_message(
                c,
                PeerMessage::Bitfield(Bytes::from_static(&[0x80])),
                net.now,
            );
            net.nodes[seed].handle_message(c, PeerMessage::Interested, net.now);
        }
        let mut unchoked: HashSet<ConnId> = HashSet::new();
        let mut optimistic_seen = HashSet::new();
        for round in 0..12 {
            for a in std::iter::from_fn(|| net.nodes[seed].poll_action()) {
                match a {
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
                    _ => {}
                }
            }
            assert!(
                unchoked.len() <= 4,
                "round {round}: {} unchoked",
                unchoked.len()
            );
            if let Some(o) = net.nodes[seed].choker.optimistic {
                optimistic_seen.insert(o);
            }
            net.now += Duration::from_secs(10);
            net.nodes[seed].handle_timeout(net.now);
        }
        assert!(optimistic_seen.len() >= 2, "optimistic slot never rotated");
    }

    /// Carries out `node`'s actions: tracks whom it unchokes and what it reveals to whom.
    fn run(
        net: &mut Net,
        node: usize,
        unchoked: &mut HashSet<ConnId>,
        shown: &mut Vec<(ConnId, u32)>,
    ) {
        for action in std::iter::from_fn(|| net.nodes[node].poll_action()) {
            match action {
                Action::Send {
                    conn,
                    msg: PeerMessage::Unchoke,
                } => assert!(unchoked.insert(conn)),
                Action::Send {
                    conn,
                    msg: PeerMessage::Choke,
                } => assert!(unchoked.remove(&conn)),
                Action::Send {
                    conn,
                    msg: PeerMessage::Have(p),
                } => shown.push((conn, p)),
                _ => {}
            }
        }
    }

    #[test]
    fn a_super_seed_keeps_peers_fetching_first_copies_unchoked() {
        // 10 pieces of 16 KiB and windows of 5: a and b, first in, are shown every piece's
        // first copy. Then come more faster peers than any slot count unchokes.
        let mut net = Net::new(10 * 16_384, 16_384);
        let seed = net.add(true, false);
        net.nodes[seed].config.reveal_blocks = 4;
        let (a, b) = (ConnId(1), ConnId(2));
        let fast: Vec<ConnId> = (10..30).map(ConnId).collect();
        let mut unchoked: HashSet<ConnId> = HashSet::new();
        let mut shown: Vec<(ConnId, u32)> = Vec::new();
        for (i, &conn) in [a, b].iter().chain(&fast).enumerate() {
            net.nodes[seed]
                .handle_connected(conn, PeerId([0x80 + i as u8; 20]), None, net.now)
                .unwrap();
            net.nodes[seed].handle_message(
                conn,
                PeerMessage::Bitfield(Bytes::from_static(&[0, 0])),
                net.now,
            );
            net.nodes[seed].handle_message(conn, PeerMessage::Interested, net.now);
        }
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(shown.iter().all(|(c, _)| *c == a || *c == b), "{shown:?}");
        assert!(unchoked.contains(&a) && unchoked.contains(&b));
        // Rates do not take a fetching peer's slot (80 s: two optimistic rotations, within the
        // idle timeout; a and b are slow but not stalled).
        for _ in 0..8 {
            for (k, &conn) in fast.iter().enumerate() {
                net.nodes[seed].handle_uploaded(conn, (1 << 20) + k as u64, net.now);
            }
            net.nodes[seed].handle_uploaded(b, 1 << 16, net.now);
            net.nodes[seed].handle_uploaded(a, 1 << 12, net.now);
            net.now += Duration::from_secs(10);
            net.nodes[seed].handle_timeout(net.now);
            run(&mut net, seed, &mut unchoked, &mut shown);
            assert!(
                unchoked.contains(&a) && unchoked.contains(&b),
                "{unchoked:?}"
            );
        }
        // Every first copy landed: rates decide again, and the fastest peer is unchoked.
        let pieces: Vec<(ConnId, u32)> = std::mem::take(&mut shown);
        assert_eq!(pieces.len(), 10);
        for (conn, p) in pieces {
            net.nodes[seed].handle_message(conn, PeerMessage::Have(p), net.now);
        }
        run(&mut net, seed, &mut unchoked, &mut shown);
        for (k, &conn) in fast.iter().enumerate() {
            net.nodes[seed].handle_uploaded(conn, (1 << 20) + k as u64, net.now);
        }
        net.now += Duration::from_secs(10);
        net.nodes[seed].handle_timeout(net.now);
        run(&mut net, seed, &mut unchoked, &mut shown);
        let fastest = *fast.last().unwrap();
        assert!(unchoked.contains(&fastest), "{unchoked:?}");
    }

    /// Connects `conn` (node id `id`) to `node` with `bitfield`, interested.
    fn join(net: &mut Net, node: usize, conn: ConnId, id: u8, bitfield: &'static [u8]) {
        net.nodes[node]
            .handle_connected(conn, PeerId([id; 20]), None, net.now)
            .unwrap();
        net.nodes[node].handle_message(
            conn,
            PeerMessage::Bitfield(Bytes::from_static(bitfield)),
            net.now,
        );
        net.nodes[node].handle_message(conn, PeerMessage::Interested, net.now);
    }

    /// Advances `net` by `ms` and runs `node`'s timers.
    fn wait(net: &mut Net, node: usize, ms: u64) {
        net.now += Duration::from_millis(ms);
        net.nodes[node].handle_timeout(net.now);
    }

    #[test]
    fn a_newcomer_with_nothing_is_welcomed_at_once_and_once() {
        let mut net = Net::new(64 * 16_384, 16_384);
        let (seed, _, mut unchoked) = seed_with_twelve_peers(&mut net);
        let mut shown = Vec::new();
        // A peer with nothing in the first 2.5 s is part of the swarm's start: no welcome.
        join(&mut net, seed, ConnId(1), 0x41, &[0; 8]);
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(!unchoked.contains(&ConnId(1)));
        // After it, a newcomer with nothing is unchoked at once, beside the 8 (and the one that
        // came early, on the next tick).
        wait(&mut net, seed, 3000);
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(unchoked.contains(&ConnId(1)), "{unchoked:?}");
        assert_eq!(unchoked.len(), 9);
        // A second newcomer waits: the slot is in its term.
        join(&mut net, seed, ConnId(2), 0x42, &[0; 8]);
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(!unchoked.contains(&ConnId(2)));
        // Past the term the holder has a piece: the slot passes to the newcomer on a tick.
        net.nodes[seed].handle_message(ConnId(1), PeerMessage::Have(5), net.now);
        wait(&mut net, seed, 2000);
        wait(&mut net, seed, 1000);
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(
            unchoked.contains(&ConnId(2)) && !unchoked.contains(&ConnId(1)),
            "{unchoked:?}"
        );
        assert_eq!(unchoked.len(), 9);
        // The same node reconnecting is not welcomed again: it was served.
        net.nodes[seed].handle_disconnected(ConnId(2), net.now);
        unchoked.remove(&ConnId(2));
        wait(&mut net, seed, 2000);
        join(&mut net, seed, ConnId(3), 0x42, &[0; 8]);
        wait(&mut net, seed, 1000);
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(!unchoked.contains(&ConnId(3)), "{unchoked:?}");
    }

    /// A seed that does not super-seed, with a fixed 7 regular slots + 1 optimistic, on 64
    /// pieces, and 12 interested peers each holding piece 0: 8 unchoked, 4 wait. Returns the
    /// seed's index, the 12 connections, and those it unchoked.
    fn seed_with_twelve_peers(net: &mut Net) -> (usize, Vec<ConnId>, HashSet<ConnId>) {
        let seed = net.add(true, false);
        let config = SwarmConfig {
            super_seed: false,
            seed_unchokes: 7,
            max_unchokes: 0,
            ..SwarmConfig::default()
        };
        let full = Bitfield::full(net.manifest.piece_count());
        net.nodes[seed] = Swarm::new(
            net.manifest.clone(),
            full,
            PeerId([1; 20]),
            config,
            0,
            net.now,
        );
        let conns: Vec<ConnId> = (0..12u8).map(|i| ConnId(100 + u64::from(i))).collect();
        for (i, &conn) in conns.iter().enumerate() {
            join(
                net,
                seed,
                conn,
                0x80 + i as u8,
                &[0x80, 0, 0, 0, 0, 0, 0, 0],
            );
        }
        let mut unchoked = HashSet::new();
        run(net, seed, &mut unchoked, &mut Vec::new());
        assert_eq!(unchoked.len(), 8);
        (seed, conns, unchoked)
    }

    /// One second at the seed: each of `conns` but those in `stalled` gains a piece (from
    /// others; `next[i]` is the next piece of `conns[i]`), then the tick.
    fn one_second(
        net: &mut Net,
        seed: usize,
        conns: &[ConnId],
        next: &mut [u32],
        stalled: &[ConnId],
    ) {
        for (i, &conn) in conns.iter().enumerate() {
            if !stalled.contains(&conn) {
                net.nodes[seed].handle_message(conn, PeerMessage::Have(next[i]), net.now);
                next[i] += 1;
            }
        }
        wait(net, seed, 1000);
    }

    #[test]
    fn a_peer_left_behind_gets_the_welcome_slot() {
        let mut net = Net::new(64 * 16_384, 16_384);
        let (seed, conns, mut unchoked) = seed_with_twelve_peers(&mut net);
        let mut shown = Vec::new();
        let choked: Vec<ConnId> = conns
            .iter()
            .copied()
            .filter(|c| !unchoked.contains(c))
            .collect();
        let (behind, later) = (choked[0], choked[1]);
        let mut next = vec![1u32; conns.len()];
        // All at the same pace: nobody is behind, no extra unchoke.
        for _ in 0..4 {
            one_second(&mut net, seed, &conns, &mut next, &[]);
        }
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert_eq!(unchoked.len(), 8, "{unchoked:?}");
        // `behind` stops gaining: within two seconds it is unchoked beside the 8.
        for _ in 0..2 {
            one_second(&mut net, seed, &conns, &mut next, &[behind]);
        }
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(unchoked.contains(&behind), "{unchoked:?}");
        assert_eq!(unchoked.len(), 9);
        // `behind` keeps pace again and `later` stalls: once the holder's term is over, the
        // slot passes to `later` (before the first rechoke, at 10 s).
        for _ in 0..3 {
            one_second(&mut net, seed, &conns, &mut next, &[later]);
        }
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(
            unchoked.contains(&later) && !unchoked.contains(&behind),
            "{unchoked:?}"
        );
        assert_eq!(unchoked.len(), 9);
    }

    #[test]
    fn a_newcomer_comes_before_a_starving_peer() {
        let mut net = Net::new(64 * 16_384, 16_384);
        let (seed, conns, mut unchoked) = seed_with_twelve_peers(&mut net);
        let mut shown = Vec::new();
        let behind = *conns
            .iter()
            .find(|c| !unchoked.contains(c))
            .expect("a choked peer");
        let mut next = vec![1u32; conns.len()];
        for _ in 0..4 {
            one_second(&mut net, seed, &conns, &mut next, &[]);
        }
        for _ in 0..2 {
            one_second(&mut net, seed, &conns, &mut next, &[behind]);
        }
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(unchoked.contains(&behind), "{unchoked:?}");
        // A newcomer with nothing takes the slot at once, within the starving holder's term.
        join(&mut net, seed, ConnId(1), 0x41, &[0; 8]);
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(
            unchoked.contains(&ConnId(1)) && !unchoked.contains(&behind),
            "{unchoked:?}"
        );
        assert_eq!(unchoked.len(), 9);
        // The newcomer keeps it through its own term, however far behind the other falls.
        for _ in 0..2 {
            one_second(&mut net, seed, &conns, &mut next, &[behind]);
        }
        run(&mut net, seed, &mut unchoked, &mut shown);
        assert!(
            unchoked.contains(&ConnId(1)) && !unchoked.contains(&behind),
            "{unchoked:?}"
        );
    }
}
