//! The swarm core: which blocks to ask whom for, whom to serve, what to do with every peer
//! message (spec/P2P.md §4). Sans-IO: inputs are `handle_*` calls with `now`, outputs are
//! [`Action`]s from [`Swarm::poll_action`] and a deadline from [`Swarm::poll_timeout`]. It holds
//! no sockets, files or clocks. Invariants are listed in `STATE.md` beside this file, and
//! `invariants.rs` checks each of them in tests.
//!
//! [`Swarm`] is a composition of one part per job, each in its own module:
//! - `picker`: our pieces and blocks, which block to request next (rarest first, endgame),
//!   and accepting blocks (spec/P2P.md §4.1, §4.2).
//! - `peer`: per-peer state (bitfield, interest, requests, given-up requests), BITFIELD and HAVE.
//! - `choker`: unchoke slots, the optimistic unchoke, and serving requests (§4.3).
//! - `slots`: how many unchoke slots, from how busy the uplink was (§4.3).
//! - `blame`: hash-failure blame, strikes and bans (§4.6).
//! - `super_seed`: revealing pieces a few at a time while seeding (§4.4).
//! - `pex`: peer exchange (§3.11).
//!
//! Tests only: `invariants` (one function per `STATE.md` invariant) and `tests` (the harnesses,
//! `tests/util.rs`, and the simulations that drive several cores against each other).

mod blame;
mod choker;
mod depth;
#[cfg(test)]
mod invariants;
mod peer;
mod pex;
mod picker;
mod slots;
mod super_seed;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::{ErrorBody, ErrorCode};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::manifest::{Manifest, PieceIndex};
use crate::pieces::Bitfield;
use crate::wire::{PeerId, PeerMessage};

use blame::Blame;
use choker::Choker;
use peer::Peer;
use picker::{Picker, PieceState};
use slots::Slots;
use super_seed::SuperSeed;

/// The shell's handle for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Tunables. `Default` gives the values in spec/P2P.md §4.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// Most block requests outstanding per peer (pipelining). Each peer's depth follows its
    /// rate × round trip between `pipeline_min` and this (spec/P2P.md §4.1, `depth.rs`); kept
    /// below the 512 requests a peer queues for us.
    pub pipeline: usize,
    /// Fewest block requests outstanding per peer, whatever its rate (equal to `pipeline`: a
    /// fixed depth), and the most endgame duplicates one peer holds (spec/P2P.md §4.2). 2, not
    /// 4: a flow that gets a block a second or less, one of 8 sharing a slow uplink, is held at
    /// the floor, and every block of that floor waits in the sender's queue; with 4, a slow
    /// leecher's last pieces waited behind them. Netlab 1 + 99 at 1 Mbit/s, seven runs with 2
    /// against five with 4: the last leecher 6-11 s after the median against 12-63 s, at
    /// 716-739 s against 717-776 s; the median 12 s later on average.
    pub pipeline_min: usize,
    /// Super-seeding keeps this many blocks' worth of revealed pieces in front of each peer
    /// (spec/P2P.md §4.4).
    pub reveal_blocks: usize,
    /// Peers unchoked for their rate, besides the optimistic one.
    pub regular_unchokes: usize,
    /// The same while we have everything: a seed spends nothing on tit-for-tat, and more slots
    /// spread (super-seeded) pieces to more peers at once.
    pub seed_unchokes: usize,
    /// Most regular slots: above the floor (`regular_unchokes`, `seed_unchokes`), the count
    /// follows what the uplink carries (spec/P2P.md §4.3, `slots.rs`). At or below the floor,
    /// the count is fixed at the floor. 8, not more: every peer unchoked shares the uplink and
    /// keeps at least `pipeline_min` requests queued with us, so more slots make each flow
    /// slower and each request wait longer, and a piece is shared only once all its blocks are
    /// in (netlab 1 + 99 at 1 Mbit/s: the median leecher at 1.26-1.27x the bound in five runs
    /// with 8 against 1.28-1.30x in three with 16, the last at 1.28-1.38x against 1.31-1.32x).
    pub max_unchokes: usize,
    pub rechoke_interval: Duration,
    pub optimistic_interval: Duration,
    /// A request unanswered this long is given back to the picker.
    pub request_timeout: Duration,
    /// A peer silent this long is dropped.
    pub idle_timeout: Duration,
    /// We send a keep-alive after this long without sending.
    pub keepalive: Duration,
    pub pex_interval: Duration,
    /// Proven bad pieces after which a peer is banned.
    pub ban_threshold: u32,
    /// Requests a peer may have queued with us; more are ignored.
    pub max_queued_uploads: usize,
    /// Unrequested blocks tolerated from one peer before it is dropped.
    pub max_unrequested: u32,
    /// A node that starts complete reveals pieces a few at a time, so that each piece leaves
    /// the seed once before any leaves it twice (spec/P2P.md §4.4).
    pub super_seed: bool,
    /// HAVEs to a peer that we choke and that chokes us, for pieces it has or while it is
    /// interested in us, wait for the next 1 s tick, or for anything else going to that peer,
    /// and then leave together (spec/P2P.md §3.5). Off: every HAVE leaves at once.
    pub hold_haves: bool,
    /// Super-seeding: the pieces shown to a peer per unchoke (its stint) before its slot passes
    /// to the choked peer with fewest pieces (spec/P2P.md §4.4); 0: no limit, the slots stay
    /// with whoever fetches first copies. Without stints the seed's slots stayed with the same
    /// 8 of 99 leechers for a whole download while the others' uplinks idled for want of a
    /// piece no one else had (`tests/tail.rs`, 1 + 99 at 1 Mbit/s, seeds 0 and 2: 1.16x and
    /// 1.17x the bound; stints of 4: 1.13x and 1.13x; of 2: 1.20x, the seed idle between
    /// turns; of 8: 1.14x, seed 0).
    pub seed_stint: u32,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            pipeline: 500,
            pipeline_min: 2,
            reveal_blocks: 64,
            regular_unchokes: 3,
            seed_unchokes: 7,
            max_unchokes: 8,
            rechoke_interval: Duration::from_secs(10),
            optimistic_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            keepalive: Duration::from_secs(30),
            pex_interval: Duration::from_secs(60),
            ban_threshold: 2,
            max_queued_uploads: 512,
            max_unrequested: 1024,
            super_seed: true,
            hold_haves: true,
            seed_stint: 4,
        }
    }
}

/// What the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message to a peer.
    Send { conn: ConnId, msg: PeerMessage },
    /// Read this block from storage and send it as a `PIECE` message. Report with
    /// [`Swarm::handle_uploaded`].
    Upload {
        conn: ConnId,
        piece: PieceIndex,
        offset: u32,
        length: u32,
    },
    /// Drop a queued upload if it has not been sent yet.
    CancelUpload {
        conn: ConnId,
        piece: PieceIndex,
        offset: u32,
        length: u32,
    },
    /// Hash this assembled piece; if it matches, write it; then call [`Swarm::handle_verified`].
    Verify { piece: PieceIndex, data: Vec<u8> },
    /// Close the connection, after sending `error` if there is one. The core has already
    /// forgotten the peer.
    Close {
        conn: ConnId,
        error: Option<ErrorBody>,
    },
    /// Addresses learnt by peer exchange.
    Discovered(Vec<SocketAddr>),
    /// Every piece is verified and written. Emitted once.
    Completed,
}

/// Why a connection was refused at [`Swarm::handle_connected`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("peer is banned")]
    Banned,
    #[error("connected to ourselves")]
    SelfConnection,
    #[error("already connected to this peer")]
    Duplicate,
}

/// Counters for progress displays and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub have: u32,
    pub pieces: u32,
    pub peers: usize,
    /// Payload bytes of blocks accepted from peers.
    pub downloaded: u64,
    /// Payload bytes sent to peers.
    pub uploaded: u64,
    /// Bytes received that were unrequested or duplicates.
    pub wasted: u64,
    /// Of `wasted`, bytes of blocks that arrived after we had given their request up (an
    /// endgame CANCEL, a request timeout, a CHOKE: spec/P2P.md §3.8).
    pub late: u64,
    pub hash_failures: u32,
    pub banned: usize,
}

/// The swarm state of one content id.
///
/// Methods come in four groups, as on quinn-proto's `Connection`:
/// - getters: [`Swarm::our_id`], [`Swarm::have`], [`Swarm::is_complete`], [`Swarm::stats`],
///   [`Swarm::is_banned`], [`Swarm::peer_addrs`];
/// - inputs: [`Swarm::handle_connected`], [`Swarm::handle_message`],
///   [`Swarm::handle_uploaded`], [`Swarm::handle_verified`], [`Swarm::handle_disconnected`],
///   [`Swarm::handle_timeout`];
/// - mutators: none beyond construction; every change enters through a `handle_*` call;
/// - outputs: [`Swarm::poll_action`], [`Swarm::poll_timeout`].
///
/// Poll order: after every `handle_*` call the shell drains [`Swarm::poll_action`] until it
/// returns `None`, carrying out each action in order (results such as a verified piece come back
/// as later `handle_*` calls), then reads [`Swarm::poll_timeout`] and calls
/// [`Swarm::handle_timeout`] once that instant has passed. Only [`Swarm::new`] and `handle_*`
/// calls queue actions or move the deadline, so the deadline read after draining is current.
#[derive(Debug)]
pub struct Swarm {
    manifest: Arc<Manifest>,
    config: SwarmConfig,
    our_id: PeerId,
    /// Our pieces and blocks, and what to request next.
    picker: Picker,
    /// Connected peers that finished the handshake; ordered so that a seeded core makes the same
    /// choices on every run.
    peers: BTreeMap<ConnId, Peer>,
    choker: Choker,
    /// How many regular unchoke slots the uplink's use calls for.
    slots: Slots,
    blame: Blame,
    super_seed: SuperSeed,
    actions: VecDeque<Action>,
    rng: StdRng,
    next_housekeeping: Instant,
    completed_emitted: bool,
    stats: Stats,
}

impl Swarm {
    /// A swarm that already has the pieces in `have` (verified on disk by the caller).
    pub fn new(
        manifest: Arc<Manifest>,
        have: Bitfield,
        our_id: PeerId,
        config: SwarmConfig,
        seed: u64,
        now: Instant,
    ) -> Self {
        let n = manifest.piece_count();
        let picker = Picker::new(&manifest, have);
        let mut swarm = Self {
            config: config.clone(),
            our_id,
            super_seed: SuperSeed::new(&config, picker.missing, n),
            picker,
            peers: BTreeMap::new(),
            choker: Choker::new(&config, now),
            slots: Slots::new(&config, now),
            blame: Blame::default(),
            actions: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            next_housekeeping: now + Duration::from_secs(1),
            completed_emitted: false,
            stats: Stats::default(),
            manifest,
        };
        swarm.stats.pieces = n;
        swarm.check_complete();
        swarm
    }

    pub fn our_id(&self) -> PeerId {
        self.our_id
    }

    pub fn have(&self) -> &Bitfield {
        &self.picker.have
    }

    pub fn is_complete(&self) -> bool {
        self.picker.is_complete()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            have: self.picker.have.count(),
            peers: self.peers.len(),
            banned: self.blame.banned_ids.len(),
            ..self.stats
        }
    }

    /// Whether a peer with this id or listen address must not be (re)connected.
    pub fn is_banned(&self, id: Option<PeerId>, addr: Option<SocketAddr>) -> bool {
        self.blame.is_banned(id, addr)
    }

    /// Listen addresses of connected peers.
    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        self.peers.values().filter_map(|p| p.addr).collect()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next instant at which [`Swarm::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Instant {
        self.choker
            .next_rechoke
            .min(self.choker.next_optimistic)
            .min(self.next_housekeeping)
    }

    /// A connection finished its handshake. `addr` is the peer's listen address. On success the
    /// core queues our `BITFIELD` (always the first message, spec/P2P.md §3.4).
    pub fn handle_connected(
        &mut self,
        conn: ConnId,
        id: PeerId,
        addr: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(), Refused> {
        if self.is_banned(Some(id), addr) {
            return Err(Refused::Banned);
        }
        if id == self.our_id {
            return Err(Refused::SelfConnection);
        }
        if self.peers.values().any(|p| p.id == id) {
            return Err(Refused::Duplicate);
        }
        let pieces = self.manifest.piece_count();
        let revealed = self.super_seed.on.then(|| Bitfield::new(pieces));
        self.peers.insert(
            conn,
            Peer::new(id, addr, pieces, revealed, &self.config, now),
        );
        // Timestamped by the subscriber: when discovery (tracker, DHT, PEX) first paid off.
        tracing::debug!(?conn, ?addr, peers = self.peers.len(), "peer connected");
        // A super-seed starts by claiming nothing and reveals pieces once it knows the peer's.
        let advertised = if self.super_seed.on {
            Bitfield::new(self.manifest.piece_count())
        } else {
            self.picker.have.clone()
        };
        self.send(
            conn,
            PeerMessage::Bitfield(Bytes::copy_from_slice(advertised.as_bytes())),
            now,
        );
        Ok(())
    }

    /// The connection is gone (closed by either side). Unknown ids are ignored, so calling this
    /// after a [`Action::Close`] is harmless.
    pub fn handle_disconnected(&mut self, conn: ConnId, now: Instant) {
        if self.forget(conn) {
            self.refill_all(now);
            // Its first copies go to others at once (spec/P2P.md §4.4).
            self.reveal_all(now);
        }
    }

    /// The shell sent `bytes` of block payload for an earlier [`Action::Upload`] (or dropped it,
    /// with `bytes == 0`).
    pub fn handle_uploaded(&mut self, conn: ConnId, bytes: u64, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.queued_uploads = peer.queued_uploads.saturating_sub(1);
            peer.window_up += bytes;
            if bytes > 0 {
                peer.last_sent = now;
                if peer.revealed.is_some() {
                    peer.reveal
                        .on_uploaded(bytes, now, self.manifest.piece_size());
                }
            }
        }
        self.stats.uploaded += bytes;
        self.count_upload(bytes > 0, now);
    }

    /// The result of an [`Action::Verify`]: `ok` if the hash matched and the piece was written.
    /// `data` is the piece handed out, given back for smart banning.
    pub fn handle_verified(&mut self, piece: PieceIndex, data: Vec<u8>, ok: bool, now: Instant) {
        let sources = match &mut self.picker.pieces[piece.idx()] {
            PieceState::Verifying(sources) => std::mem::take(sources),
            _ => return,
        };
        let p = piece.get();
        if ok {
            self.picker.pieces[piece.idx()] = PieceState::Have;
            self.picker.have.set(piece);
            self.blame.avoid.remove(&p);
            if let Some(attempts) = self.blame.history.remove(&p) {
                self.judge_attempts(piece, &data, attempts, now);
            }
            let conns: Vec<ConnId> = self.peers.keys().copied().collect();
            for conn in conns {
                self.send_have(conn, p, now);
                let Some(peer) = self.peers.get_mut(&conn) else {
                    continue;
                };
                if peer.have.has(piece) {
                    peer.wanted = peer.wanted.saturating_sub(1);
                }
                self.update_interest(conn, now);
            }
            if self.is_complete() {
                // A download that stops now closes every connection after its last HAVE
                // (spec/P2P.md §3.10): nothing may stay held.
                self.flush_all_haves(now);
            }
            self.check_complete();
            // We may now finish with seeds; close seed-to-seed connections.
            if self.is_complete() {
                let seeds: Vec<ConnId> = self
                    .peers
                    .iter()
                    .filter(|(_, peer)| peer.have.is_full())
                    .map(|(c, _)| *c)
                    .collect();
                for conn in seeds {
                    self.close(conn, None, now);
                }
            }
        } else {
            self.stats.hash_failures += 1;
            self.picker.pieces[piece.idx()] = PieceState::Missing;
            self.picker.missing += 1;
            self.record_failure(piece, &data, sources, now);
        }
        self.picker.recycle(data);
        self.refill_all(now);
    }

    /// One decoded message from `conn`.
    pub fn handle_message(&mut self, conn: ConnId, msg: PeerMessage, now: Instant) {
        let (keep, window) = self.given_up_limits();
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        peer.last_recv = now;
        // spec/P2P.md §3.4: BITFIELD is the first message after HANDSHAKE, exactly once.
        let first = !peer.got_bitfield;
        match msg {
            PeerMessage::Bitfield(_) if !first => {
                self.protocol_error(conn, ErrorCode::UNEXPECTED_MESSAGE, "second bitfield", now)
            }
            PeerMessage::Bitfield(bytes) => self.on_bitfield(conn, &bytes, now),
            PeerMessage::Error(body) => {
                tracing::debug!(?conn, %body, "peer sent an error");
                self.close(conn, None, now);
            }
            PeerMessage::KeepAlive => {}
            _ if first => self.protocol_error(
                conn,
                ErrorCode::UNEXPECTED_MESSAGE,
                "first message after the handshake must be a bitfield",
                now,
            ),
            PeerMessage::Handshake { .. } | PeerMessage::Identity(_) => {
                self.protocol_error(conn, ErrorCode::UNEXPECTED_MESSAGE, "second handshake", now)
            }
            PeerMessage::Have(index) => self.on_have(conn, index, now),
            PeerMessage::Interested => {
                peer.peer_interested = true;
                self.maybe_unchoke_now(conn, now);
            }
            PeerMessage::NotInterested => {
                self.on_not_interested(conn, now);
                // Our held HAVEs may name pieces it lacks, and would make it interested (§3.5).
                self.flush_haves(conn, now);
            }
            PeerMessage::Choke => {
                peer.peer_choking = true;
                // A choke discards all of our requests to that peer (spec/P2P.md §3.6). The
                // peer may have been sent some of them after its CHOKE (a request crossing it
                // on the wire, then an UNCHOKE), so their blocks may still come.
                let keys: Vec<(u32, u32)> = peer.outstanding.keys().copied().collect();
                for key in &keys {
                    peer.give_up(*key, now, keep, window);
                }
                for key in keys {
                    self.picker.release_block(conn, key);
                }
                self.refill_all(now);
            }
            PeerMessage::Unchoke => {
                peer.peer_choking = false;
                // It may ask for what we have now: no HAVE to it is held any longer (§3.5).
                self.flush_haves(conn, now);
                self.fill_requests(conn, now);
            }
            PeerMessage::Request(block) => self.on_request(conn, block, now),
            PeerMessage::Cancel(block) => {
                if let Some(piece) = self.manifest.piece(block.piece) {
                    self.actions.push_back(Action::CancelUpload {
                        conn,
                        piece,
                        offset: block.offset,
                        length: block.length,
                    });
                }
            }
            PeerMessage::Piece {
                piece,
                offset,
                data,
            } => self.on_piece(conn, piece, offset, data, now),
            PeerMessage::Pex(addrs) => self.on_pex(addrs),
        }
    }

    /// Time-driven work: rechoke, optimistic rotation, request timeouts, idle peers, held
    /// HAVEs, keep-alives and peer exchange.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.choker.next_optimistic || now >= self.choker.next_rechoke {
            self.resize_slots(now);
        }
        if now >= self.choker.next_optimistic {
            self.choker.next_optimistic = now + self.config.optimistic_interval;
            self.choker.optimistic = None;
            self.rechoke(now);
        } else if now >= self.choker.next_rechoke {
            self.rechoke(now);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + Duration::from_secs(1);
            self.housekeeping(now);
            self.reveal_tick(now);
            self.grow_slots(now);
            self.welcome_tick(now);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let (keep, window) = self.given_up_limits();
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        let mut released = false;
        for conn in conns {
            let Some(peer) = self.peers.get_mut(&conn) else {
                continue;
            };
            if now.saturating_duration_since(peer.last_recv) >= self.config.idle_timeout {
                self.close(
                    conn,
                    Some(ErrorBody::new(ErrorCode::TIMEOUT, "idle peer")),
                    now,
                );
                continue;
            }
            let timeout = self.config.request_timeout;
            let late: Vec<(u32, u32)> = peer
                .outstanding
                .iter()
                .filter(|(_, at)| now.saturating_duration_since(**at) >= timeout)
                .map(|(k, _)| *k)
                .collect();
            for key in late {
                peer.give_up(key, now, keep, window);
                self.picker.release_block(conn, key);
                released = true;
            }
            let peer = &self.peers[&conn];
            // What is in flight each way, once a second, for diagnosing a link that is not
            // filled (RUST_LOG=ferry_p2p::swarm=debug).
            tracing::debug!(
                ?conn,
                outstanding = peer.outstanding.len(),
                depth = peer.depth.target(),
                queued_uploads = peer.queued_uploads,
                revealed_pending = peer.revealed_pending,
                reveal_target = peer.reveal.target(
                    SuperSeed::first_window(&self.config, self.manifest.piece_size()),
                    SuperSeed::cap(&self.config, self.manifest.piece_size()),
                ),
                down = peer.window_down,
                up = peer.window_up,
                "flow"
            );
            // Held HAVEs leave within a tick of their piece (spec/P2P.md §3.5).
            self.flush_haves(conn, now);
            let peer = &self.peers[&conn];
            if now.saturating_duration_since(peer.last_sent) >= self.config.keepalive {
                self.send(conn, PeerMessage::KeepAlive, now);
            }
            self.maybe_pex(conn, now);
        }
        // In endgame a request can become late (§4.2) with nothing else happening.
        if released || (self.picker.missing == 0 && !self.picker.is_complete()) {
            self.refill_all(now);
        }
    }

    fn close(&mut self, conn: ConnId, error: Option<ErrorBody>, now: Instant) {
        if self.forget(conn) {
            self.actions.push_back(Action::Close { conn, error });
            self.refill_all(now);
            // Its first copies go to others at once (spec/P2P.md §4.4).
            self.reveal_all(now);
        }
    }

    fn protocol_error(&mut self, conn: ConnId, code: ErrorCode, message: &str, now: Instant) {
        tracing::debug!(?conn, %code, message, "dropping peer");
        self.close(conn, Some(ErrorBody::new(code, message)), now);
    }

    /// Queues `msg` for `conn`, after the HAVEs held for it (`send_have`): they share its
    /// write, and no message overtakes a HAVE queued before it.
    fn send(&mut self, conn: ConnId, msg: PeerMessage, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.last_sent = now;
            for p in peer.held_haves.drain(..) {
                self.actions.push_back(Action::Send {
                    conn,
                    msg: PeerMessage::Have(p),
                });
            }
            self.actions.push_back(Action::Send { conn, msg });
        }
    }

    fn check_complete(&mut self) {
        if self.is_complete() && !self.completed_emitted {
            self.completed_emitted = true;
            self.actions.push_back(Action::Completed);
        }
    }
}
