//! Super-seeding (spec/P2P.md §4.4): a node that starts complete advertises nothing and reveals
//! pieces a few at a time, least revealed first, so each piece leaves the seed about once.
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

/// Whether we super-seed, and how often each piece was revealed.
#[derive(Debug)]
pub(super) struct SuperSeed {
    /// Fixed at construction: on iff the node starts complete and the config asks for it.
    pub(super) on: bool,
    /// Per piece, how many peers it was revealed to (departed peers included).
    pub(super) reveal_count: Vec<u32>,
}

impl SuperSeed {
    pub(super) fn new(config: &SwarmConfig, missing: usize, pieces: u32) -> Self {
        Self {
            on: config.super_seed && missing == 0 && pieces > 0,
            reveal_count: vec![0; pieces as usize],
        }
    }

    /// Fewest revealed-but-missing pieces kept in front of each peer: `reveal_blocks` worth,
    /// plus one.
    pub(super) fn target(config: &SwarmConfig, piece_size: u32) -> u32 {
        let piece_size = piece_size.max(1) as usize;
        (config.reveal_blocks * MAX_BLOCK as usize).div_ceil(piece_size) as u32 + 1
    }

    /// Most revealed-but-missing pieces in front of one peer: a full request pipeline's worth
    /// (`pipeline` blocks), plus one, and never below [`SuperSeed::target`].
    pub(super) fn cap(config: &SwarmConfig, piece_size: u32) -> u32 {
        let piece_size = piece_size.max(1) as usize;
        let cap = (config.pipeline * MAX_BLOCK as usize).div_ceil(piece_size) as u32 + 1;
        cap.max(Self::target(config, piece_size as u32))
    }
}

/// One peer's reveal window: ceil(2 × upload rate to it × shortest reveal-to-HAVE time ÷ piece
/// size) + 1 pieces, between [`SuperSeed::target`] and [`SuperSeed::cap`]. The doubling lets
/// the rate grow, as for the request depth (`depth.rs`).
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

    /// We sent `bytes` of blocks to the peer.
    pub(super) fn on_uploaded(&mut self, bytes: u64, now: Instant, piece_size: u32) {
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

    /// Pieces to keep revealed now, within `floor..=cap`.
    pub(super) fn target(&self, floor: u32, cap: u32) -> u32 {
        self.target.unwrap_or(floor).clamp(floor.min(cap), cap)
    }
}

impl Swarm {
    /// Super-seeding: keeps a few revealed-but-missing pieces in front of `conn`, choosing
    /// those revealed least often, then those fewest peers have, from a random start.
    pub(super) fn reveal(&mut self, conn: ConnId, now: Instant) {
        if !self.super_seed.on {
            return;
        }
        let floor = SuperSeed::target(&self.config, self.manifest.piece_size());
        let cap = SuperSeed::cap(&self.config, self.manifest.piece_size());
        let n = self.manifest.piece_count();
        loop {
            let Some(peer) = self.peers.get(&conn) else {
                return;
            };
            let Some(revealed) = &peer.revealed else {
                return;
            };
            let target = peer.reveal.target(floor, cap);
            if peer.revealed_pending >= target || !peer.got_bitfield {
                return;
            }
            let start = self.rng.gen_range(0..n);
            let mut best: Option<(PieceIndex, (u32, u16))> = None;
            for i in 0..n {
                let Some(piece) = self.manifest.piece((start + i) % n) else {
                    continue;
                };
                if peer.have.has(piece) || revealed.has(piece) {
                    continue;
                }
                let key = (
                    self.super_seed.reveal_count[piece.idx()],
                    self.picker.availability[piece.idx()],
                );
                if best.is_none_or(|(_, b)| key < b) {
                    best = Some((piece, key));
                }
            }
            let Some((piece, _)) = best else {
                return;
            };
            self.super_seed.reveal_count[piece.idx()] += 1;
            if let Some(peer) = self.peers.get_mut(&conn) {
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
    use bytes::Bytes;

    use crate::swarm::tests::util::*;
    use crate::swarm::{Action, ConnId};
    use crate::wire::{PeerId, PeerMessage};

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
