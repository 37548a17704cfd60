//! Blame and bans (spec/P2P.md §4.6): who sent a piece that failed its hash, strikes given only
//! with certainty, and the banned ids and addresses.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Instant;

use ferry_protocol::{ErrorBody, ErrorCode};

use super::picker::PieceIndexRaw;
use super::{ConnId, Swarm};
use crate::manifest::PieceIndex;
use crate::pieces::sha256;
use crate::wire::{PeerId, MAX_BLOCK};

/// One failed attempt at a piece: who sent which block, and the block's hash.
#[derive(Debug)]
pub(super) struct FailedAttempt {
    blocks: Vec<(PeerId, [u8; 32])>,
}

/// Strikes, bans and the failure history that blame is judged from.
#[derive(Debug, Default)]
pub(super) struct Blame {
    /// Proven bad pieces per peer id.
    pub(super) strikes: HashMap<PeerId, u32>,
    pub(super) banned_ids: HashSet<PeerId>,
    pub(super) banned_addrs: HashSet<SocketAddr>,
    /// Failed attempts at pieces whose blocks came from several peers, judged once a good copy
    /// arrives.
    pub(super) history: HashMap<u32, Vec<FailedAttempt>>,
    /// Per piece, the peers that contributed to a failed copy.
    pub(super) avoid: HashMap<u32, HashSet<PeerId>>,
}

impl Blame {
    /// Whether a peer with this id or listen address must not be (re)connected.
    pub(super) fn is_banned(&self, id: Option<PeerId>, addr: Option<SocketAddr>) -> bool {
        id.is_some_and(|id| self.banned_ids.contains(&id))
            || addr.is_some_and(|a| self.banned_addrs.contains(&a))
    }
}

impl Swarm {
    /// The piece failed its hash. Blame is assigned only when it is certain: a piece that came
    /// entirely from one peer convicts that peer; a mixed piece is remembered and judged block by
    /// block once a good copy arrives (spec/P2P.md §4.6).
    pub(super) fn record_failure(
        &mut self,
        piece: PieceIndex,
        data: &[u8],
        sources: Vec<PeerId>,
        now: Instant,
    ) {
        let p = piece.get();
        let contributors: HashSet<PeerId> = sources.iter().copied().collect();
        self.blame
            .avoid
            .entry(p)
            .or_default()
            .extend(contributors.iter().copied());
        if contributors.len() == 1 {
            if let Some(id) = contributors.into_iter().next() {
                self.strike(id, now);
            }
            return;
        }
        let blocks = sources
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let start = i * MAX_BLOCK as usize;
                let end = (start + MAX_BLOCK as usize).min(data.len());
                (*id, sha256(&data[start.min(end)..end]))
            })
            .collect();
        let attempts = self.blame.history.entry(p).or_default();
        // Bounded: a piece that keeps failing with mixed sources keeps only its last few
        // attempts; convictions still happen because every attempt is judged when one succeeds.
        if attempts.len() >= 8 {
            attempts.remove(0);
        }
        attempts.push(FailedAttempt { blocks });
    }

    pub(super) fn judge_attempts(
        &mut self,
        piece: PieceIndex,
        good: &[u8],
        attempts: Vec<FailedAttempt>,
        now: Instant,
    ) {
        let _ = piece;
        // Ordered, so strikes (and the closes they cause) come in the same order on every run.
        let mut guilty = BTreeSet::new();
        for attempt in attempts {
            for (i, (id, hash)) in attempt.blocks.iter().enumerate() {
                let start = i * MAX_BLOCK as usize;
                let end = (start + MAX_BLOCK as usize).min(good.len());
                if sha256(&good[start.min(end)..end]) != *hash {
                    guilty.insert(*id);
                }
            }
        }
        for id in guilty {
            self.strike(id, now);
        }
    }

    pub(super) fn strike(&mut self, id: PeerId, now: Instant) {
        let strikes = self.blame.strikes.entry(id).or_insert(0);
        *strikes += 1;
        tracing::debug!(peer = %id, strikes = *strikes, "peer sent bad data");
        if *strikes >= self.config.ban_threshold {
            self.blame.banned_ids.insert(id);
            let conns: Vec<ConnId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.id == id)
                .map(|(c, _)| *c)
                .collect();
            for conn in conns {
                if let Some(addr) = self.peers.get(&conn).and_then(|p| p.addr) {
                    self.blame.banned_addrs.insert(addr);
                }
                tracing::warn!(peer = %id, "banning peer after repeated bad pieces");
                self.close(
                    conn,
                    Some(ErrorBody::new(
                        ErrorCode::BANNED,
                        "banned: repeated pieces failing their hash",
                    )),
                    now,
                );
            }
        }
    }

    /// Whether `conn` should stay off `piece` because it contributed to a failed copy and some
    /// other connected peer could serve it.
    pub(super) fn avoided(&self, piece: u32, conn: ConnId) -> bool {
        let (Some(avoid), Some(peer)) = (self.blame.avoid.get(&piece), self.peers.get(&conn))
        else {
            return false;
        };
        if !avoid.contains(&peer.id) {
            return false;
        }
        let index = PieceIndexRaw(piece);
        self.peers
            .iter()
            .any(|(c, p)| *c != conn && !avoid.contains(&p.id) && index.in_bits(&p.have))
    }
}

#[cfg(test)]
mod tests {
    use crate::swarm::tests::util::*;
    use crate::wire::PeerId;

    #[test]
    fn corrupt_peer_is_banned_and_honest_peers_are_not() {
        let mut net = Net::new(600_000, 16_384);
        let seed = net.add(true, false);
        let bad = net.add(true, true);
        let leecher = net.add(false, false);
        net.nodes[leecher].config.pipeline = 4;
        assert!(net.connect(leecher, bad));
        assert!(net.connect(leecher, seed));
        net.pump();
        for _ in 0..200 {
            if net.completed[leecher] {
                break;
            }
            net.tick(10);
        }
        let node = &net.nodes[leecher];
        assert!(node.is_complete());
        assert!(node.is_banned(Some(PeerId([bad as u8 + 1; 20])), None));
        assert!(!node.is_banned(Some(PeerId([seed as u8 + 1; 20])), None));
        assert!(node.stats().hash_failures >= 2);
        // A banned peer cannot come back.
        assert!(!net.connect(leecher, bad));
    }

    #[test]
    fn mixed_source_failures_only_convict_the_liar() {
        // Two sources share each piece; only block-level comparison can tell who lied.
        let mut net = Net::new(16_384 * 64, 16_384 * 4);
        let good = net.add(true, false);
        let bad = net.add(true, true);
        let leecher = net.add(false, false);
        net.nodes[leecher].config.pipeline = 1;
        assert!(net.connect(leecher, good));
        assert!(net.connect(leecher, bad));
        net.pump();
        for _ in 0..200 {
            if net.completed[leecher] {
                break;
            }
            net.tick(10);
        }
        let node = &net.nodes[leecher];
        assert!(node.is_complete());
        assert!(node.is_banned(Some(PeerId([bad as u8 + 1; 20])), None));
        assert!(!node.is_banned(Some(PeerId([good as u8 + 1; 20])), None));
        assert_eq!(node.blame.strikes.get(&PeerId([good as u8 + 1; 20])), None);
    }
}
