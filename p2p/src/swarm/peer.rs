//! Per-peer state (spec/P2P.md §3): what a peer has, interest both ways, our requests to it and
//! the ones we gave up; and the messages that change it, BITFIELD and HAVE.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_protocol::ErrorCode;

use super::depth::Depth;
use super::pex::FIRST_PEX;
use super::picker::PieceState;
use super::super_seed::RevealWindow;
use super::{ConnId, Swarm, SwarmConfig};
use crate::pieces::Bitfield;
use crate::wire::{PeerId, PeerMessage};

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) id: PeerId,
    pub(super) addr: Option<SocketAddr>,
    pub(super) have: Bitfield,
    pub(super) got_bitfield: bool,
    /// Pieces this peer has that we still lack.
    pub(super) wanted: u32,
    pub(super) am_choking: bool,
    pub(super) am_interested: bool,
    pub(super) peer_choking: bool,
    pub(super) peer_interested: bool,
    /// Unchoked while not interested (spec/P2P.md §4.3): on its BITFIELD, which lacked a piece
    /// we have, its INTERESTED on the way; or kept unchoked through a NOT_INTERESTED until its
    /// slot is wanted (`on_not_interested`). Cleared by its INTERESTED or our next CHOKE.
    pub(super) unchoked_early: bool,
    /// Our requests to this peer: (piece, offset) → when sent. Ordered, so the requests given up
    /// together (a CHOKE, a timeout) are remembered in the same order on every run.
    pub(super) outstanding: BTreeMap<(u32, u32), Instant>,
    /// Requests we gave up (CANCEL sent, timed out, released by a CHOKE) whose block may still
    /// be on its way, oldest first, with when we gave them up (spec/P2P.md §3.8).
    pub(super) given_up: VecDeque<((u32, u32), Instant)>,
    pub(super) queued_uploads: usize,
    pub(super) unrequested: u32,
    /// Super-seeding: pieces we told this peer about with HAVE.
    pub(super) revealed: Option<Bitfield>,
    /// Revealed pieces the peer does not have yet.
    pub(super) revealed_pending: u32,
    /// Super-seeding: how many pieces to keep revealed in front of this peer.
    pub(super) reveal: RevealWindow,
    pub(super) window_down: u64,
    pub(super) window_up: u64,
    pub(super) last_recv: Instant,
    pub(super) last_sent: Instant,
    pub(super) next_pex: Instant,
    /// How many requests to keep outstanding (spec/P2P.md §4.1).
    pub(super) depth: Depth,
    /// HAVEs not sent yet, oldest first: held while we choke the peer and it chokes us, for
    /// pieces it has or while it is interested in us, until the next tick, the next message to
    /// it, an UNCHOKE either way, or our completion (`send_have`, spec/P2P.md §3.5).
    pub(super) held_haves: Vec<u32>,
    /// The peer's piece count at each of the last [`PROGRESS_TICKS`] ticks, oldest first: how
    /// fast it gains pieces, from anyone (the starving check of `choker.rs`).
    pub(super) progress: VecDeque<u32>,
    /// Super-seeding: pieces shown to this peer since we last unchoked it, and whether its
    /// stint is closed: nothing more is shown to it until it is choked and unchoked again.
    pub(super) stint: u32,
    pub(super) stint_closed: bool,
    /// When we last choked it; `None` if never: whose turn a freed slot is.
    pub(super) choked_at: Option<Instant>,
}

/// Over how many 1 s ticks a peer's gain of pieces is measured (spec/P2P.md §4.3).
pub(super) const PROGRESS_TICKS: usize = 2;

impl Peer {
    /// A peer that just finished its handshake; `revealed` is `Some` while we super-seed.
    pub(super) fn new(
        id: PeerId,
        addr: Option<SocketAddr>,
        pieces: u32,
        revealed: Option<Bitfield>,
        config: &SwarmConfig,
        now: Instant,
    ) -> Self {
        Self {
            id,
            addr,
            have: Bitfield::new(pieces),
            got_bitfield: false,
            wanted: 0,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            unchoked_early: false,
            outstanding: BTreeMap::new(),
            given_up: VecDeque::new(),
            queued_uploads: 0,
            unrequested: 0,
            revealed,
            revealed_pending: 0,
            reveal: RevealWindow::default(),
            window_down: 0,
            window_up: 0,
            last_recv: now,
            last_sent: now,
            next_pex: now + FIRST_PEX,
            depth: Depth::new(config.pipeline_min, config.pipeline),
            held_haves: Vec::new(),
            progress: VecDeque::with_capacity(PROGRESS_TICKS),
            stint: 0,
            stint_closed: false,
            choked_at: None,
        }
    }

    /// We choke it: its early unchoke and its stint end (spec/P2P.md §4.4), and it waits for
    /// a turn from `now`.
    pub(super) fn choke(&mut self, now: Instant) {
        self.am_choking = true;
        self.unchoked_early = false;
        self.stint = 0;
        self.stint_closed = false;
        self.choked_at = Some(now);
    }

    /// Unchoked with its stint closed and at most one piece of it still pending: it holds no
    /// slot, so its successor starts while it finishes (spec/P2P.md §4.4).
    pub(super) fn draining(&self) -> bool {
        self.stint_closed && !self.am_choking && self.revealed_pending <= 1
    }

    /// Forgets an outstanding request whose block may still arrive, so that block is not taken
    /// for misbehaviour. Keeps at most `keep` entries, each for at most `window`.
    pub(super) fn give_up(&mut self, key: (u32, u32), now: Instant, keep: usize, window: Duration) {
        if self.outstanding.remove(&key).is_none() {
            return;
        }
        self.expire_given_up(now, window);
        if self.given_up.len() >= keep {
            self.given_up.pop_front();
        }
        self.given_up.push_back((key, now));
    }

    /// Whether `key` is a request given up within the window; consumes it.
    pub(super) fn take_given_up(
        &mut self,
        key: (u32, u32),
        now: Instant,
        window: Duration,
    ) -> bool {
        self.expire_given_up(now, window);
        match self.given_up.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.given_up.remove(i);
                true
            }
            None => false,
        }
    }

    fn expire_given_up(&mut self, now: Instant, window: Duration) {
        while self
            .given_up
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) > window)
        {
            self.given_up.pop_front();
        }
    }
}

impl Swarm {
    /// How many given-up requests are remembered per peer, and for how long: a peer's late
    /// blocks are at most what was in its queue and on the wire when we gave up, i.e. a few
    /// pipelines, and arrive within a request timeout unless the peer is stuck.
    pub(super) fn given_up_limits(&self) -> (usize, Duration) {
        (4 * self.config.pipeline.max(1), self.config.request_timeout)
    }

    pub(super) fn on_bitfield(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        let n = self.manifest.piece_count();
        let bits = match Bitfield::from_bytes(bytes, n) {
            Ok(bits) => bits,
            Err(e) => {
                return self.protocol_error(conn, ErrorCode::MALFORMED_MESSAGE, &e.to_string(), now)
            }
        };
        let mut wanted = 0;
        let mut lacks = false;
        for piece in self.manifest.pieces() {
            if bits.has(piece) {
                let a = &mut self.picker.availability[piece.idx()];
                *a = a.saturating_add(1);
                if !self.picker.have.has(piece) {
                    wanted += 1;
                }
            } else if self.picker.have.has(piece) {
                lacks = true;
            }
        }
        let seed_to_seed = bits.is_full() && self.is_complete();
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.have = bits;
            peer.got_bitfield = true;
            peer.wanted = wanted;
        }
        if seed_to_seed {
            self.close(conn, None, now);
            return;
        }
        self.update_interest(conn, now);
        self.reveal(conn, now);
        // A peer lacking what we have (a super-seed: what we revealed) will ask for it: unchoke
        // now, so the UNCHOKE travels with our BITFIELD's answer instead of a round trip after
        // its INTERESTED (spec/P2P.md §4.3).
        let revealed = self.peers.get(&conn).map(|p| match p.revealed {
            Some(_) => p.revealed_pending > 0,
            None => lacks,
        });
        if revealed == Some(true) {
            self.unchoke_early(conn, now);
        }
    }

    pub(super) fn on_have(&mut self, conn: ConnId, index: u32, now: Instant) {
        let Some(piece) = self.manifest.piece(index) else {
            return self.protocol_error(
                conn,
                ErrorCode::INVALID_RANGE,
                &format!(
                    "have {index} out of range (pieces: {})",
                    self.manifest.piece_count()
                ),
                now,
            );
        };
        let we_have = self.picker.have.has(piece);
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        if peer.have.has(piece) {
            return;
        }
        peer.have.set(piece);
        if peer.revealed.as_ref().is_some_and(|r| r.has(piece)) {
            peer.revealed_pending = peer.revealed_pending.saturating_sub(1);
            peer.reveal.on_have(index, now, self.manifest.piece_size());
        }
        let a = &mut self.picker.availability[piece.idx()];
        *a = a.saturating_add(1);
        if !we_have {
            peer.wanted += 1;
        }
        let stint_over = peer.stint_closed && !peer.am_choking && peer.revealed_pending == 0;
        let seed_to_seed = peer.have.is_full() && self.is_complete();
        if seed_to_seed {
            self.close(conn, None, now);
            return;
        }
        self.update_interest(conn, now);
        self.fill_requests(conn, now);
        if stint_over {
            // Its stint's pieces are in: choked (its slot passed on while it drained).
            self.choke_to_free_slot(conn, now);
            self.reveal_all(now);
        } else {
            self.reveal(conn, now);
            if self.draining(conn) {
                // Its stint's last piece is on its way: its slot passes on now (§4.4).
                self.reveal_all(now);
            }
        }
    }

    /// Announces our verified piece `p` to `conn`. No block flows either way on a connection
    /// where both sides choke, so a HAVE there to a peer interested in us anyway is held: it
    /// leaves with the next message to that peer or on the next tick (at most ~1 s later),
    /// several in one write, instead of one small packet (and its ACK) per piece (spec/P2P.md
    /// §3.5). A peer that unchoked us, or that we unchoked, may request from it, and one that
    /// is not interested may become so: those go at once. So do HAVEs to a peer that has the
    /// piece but is not interested: a super-seed (§4.4) shows a peer it chokes one piece at a
    /// time, the least held, and the next on our HAVE for the last; held, those HAVEs left it
    /// showing pieces we already had (their counts lagging) and its uplink idle (`tests/tail.rs`,
    /// 1 + 32 on the bench shape, one run of twelve: seed busy 0.87 instead of 0.97, 1.32x the
    /// bound instead of 1.23x). (Holding also the HAVEs that make a peer interested left a
    /// simulated 1 + 32 swarm at 1.98x its bound instead of 1.42x: peers learnt late what they
    /// wanted, so were unchoked late. Holding also those for a piece the peer has, where blocks
    /// flow, cut a 1 + 99 netlab run's small frames by 9 %, but took `tests/tail.rs`'s 1 + 99
    /// bench shape, seed 1, from 1.19x to 1.28x the bound; 1.29x holding also those to a peer
    /// that unchoked us while we choke it.) Held HAVEs also leave on the peer's NOT_INTERESTED:
    /// they may name pieces it lacks.
    pub(super) fn send_have(&mut self, conn: ConnId, p: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        let mutually_choked = peer.am_choking && peer.peer_choking;
        if self.config.hold_haves && mutually_choked && peer.peer_interested {
            peer.held_haves.push(p);
        } else {
            self.send(conn, PeerMessage::Have(p), now);
        }
    }

    /// Sends the HAVEs held for `conn`, if any.
    pub(super) fn flush_haves(&mut self, conn: ConnId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        if let Some(last) = peer.held_haves.pop() {
            // `send` puts the others first, in order.
            self.send(conn, PeerMessage::Have(last), now);
        }
    }

    /// Sends every HAVE held for any peer.
    pub(super) fn flush_all_haves(&mut self, now: Instant) {
        let conns: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.held_haves.is_empty())
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            self.flush_haves(conn, now);
        }
    }

    pub(super) fn update_interest(&mut self, conn: ConnId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        let want = peer.wanted > 0;
        if want != peer.am_interested {
            peer.am_interested = want;
            let msg = if want {
                PeerMessage::Interested
            } else {
                PeerMessage::NotInterested
            };
            self.send(conn, msg, now);
        }
    }

    /// Removes a peer and everything it held. Returns whether it was known.
    pub(super) fn forget(&mut self, conn: ConnId) -> bool {
        self.release_requests(conn);
        let Some(peer) = self.peers.remove(&conn) else {
            return false;
        };
        // Its exclusive pieces become claimable by the next peer.
        for &p in &self.picker.active {
            if let PieceState::Active(active) = &mut self.picker.pieces[p as usize] {
                if active.owner == Some(conn) {
                    active.owner = None;
                }
            }
        }
        for piece in self.manifest.pieces() {
            if peer.have.has(piece) {
                let a = &mut self.picker.availability[piece.idx()];
                *a = a.saturating_sub(1);
            }
        }
        if self.choker.optimistic == Some(conn) {
            self.choker.optimistic = None;
        }
        true
    }
}
