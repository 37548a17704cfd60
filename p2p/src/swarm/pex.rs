//! Peer exchange (spec/P2P.md §3.11): every `pex_interval` each peer is sent the listen
//! addresses of our other peers, and addresses we receive are handed to the shell to dial.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Action, ConnId, Swarm};
use crate::wire::{PeerMessage, MAX_PEX};

/// A newcomer's first exchange comes this soon after connecting, so it learns the swarm quickly.
pub(super) const FIRST_PEX: Duration = Duration::from_secs(2);

impl Swarm {
    /// A PEX from a peer: banned addresses and port 0 are dropped, the rest discovered.
    pub(super) fn on_pex(&mut self, addrs: Vec<SocketAddr>) {
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| !self.blame.banned_addrs.contains(a) && a.port() != 0)
            .collect();
        if !addrs.is_empty() {
            self.actions.push_back(Action::Discovered(addrs));
        }
    }

    /// Sends `conn` our other peers' addresses if its exchange is due (housekeeping).
    pub(super) fn maybe_pex(&mut self, conn: ConnId, now: Instant) {
        if self.peers.get(&conn).is_none_or(|p| now < p.next_pex) {
            return;
        }
        let addrs: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(c, _)| **c != conn)
            .filter_map(|(_, p)| p.addr)
            .take(MAX_PEX)
            .collect();
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.next_pex = now + self.config.pex_interval;
        }
        if !addrs.is_empty() {
            self.send(conn, PeerMessage::Pex(addrs), now);
        }
    }
}
