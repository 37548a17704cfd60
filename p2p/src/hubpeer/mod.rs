//! A swarm node that finds and is found through a hub (spec/P2P.md §3.12, HUB.md §3.8–§3.9):
//! `ferry-peer … --hub [NAME@]HUB`.
//!
//! - **Presence.** The node keeps a presence at the hub (`ferry_hub::node`, as
//!   `ferry-server --hub` does) under NAME, or under its node id's text when no name is given.
//!   Relays the hub hands it become inbound peers of the running swarm ([`PeerAdder::inbound`]).
//! - **Announce.** On every new presence (a hub restart, a reconnection) and every
//!   `reannounce`, it announces the swarm's content id on a second connection.
//! - **Find.** While incomplete it asks the hub which present nodes serve the content id: at
//!   once, every `lookup` while it has no peer, every `refresh` otherwise. For each node it is
//!   not connected to it dials the node's hints directly (the peer must prove the node id the
//!   hub gave), and only when none answers, and the node has fewer than `relay_below` peers,
//!   asks the hub to relay: relayed bytes count against the hub's budgets, so direct peers are
//!   preferred. Seeds wait to be reached, as on the open internet.
//!
//! The relayed stream carries the ordinary peer wire: its session has its own ephemeral X25519
//! exchange (PROTOCOL.md §5.1) and the peers prove their node ids in Noise XX bound to that
//! session (P2P.md §3.3), so the hub sees only ciphertext and cannot stand in for either end.
//! Hub-coordinated hole punching is not used here yet: a node without a direct path is relayed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use ferry_common::url::{FerryUrl, Hint};
use ferry_hub::content::{ContentId, PeerEntry};
use ferry_hub::{spawn_presence, HubConn, HubError, PresenceConfig, Status};
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::transport::{Acceptor, BoxedStream};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::node::{NodeHandle, PeerAdder};
use crate::swarm::Stats;
use crate::wire::PeerId;

/// `[NAME@]HUB`, HUB being `HOST[:PORT]` or `ferry://HUBID@HOST:PORT/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAddr {
    pub name: Option<String>,
    pub hints: Vec<Hint>,
    pub hub_id: Option<NodeId>,
}

impl std::str::FromStr for HubAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (name, hub) = match text.split_once('@') {
            Some((name, hub)) if ferry_common::url::is_hub_name(name) => {
                (Some(name.to_string()), hub)
            }
            _ => (None, text),
        };
        let hub = hub.strip_prefix("ferry://").unwrap_or(hub);
        // A placeholder name makes the parser read HUBID@HOST as the hub's (HUB.md §2.3).
        let url: FerryUrl = format!("ferry://x@{hub}")
            .parse()
            .map_err(|e| format!("{text:?} is not [NAME@]HUB: {e}"))?;
        Ok(Self {
            name,
            hints: url.hints(),
            hub_id: url.server_id,
        })
    }
}

/// How a node uses a hub.
#[derive(Debug, Clone)]
pub struct HubPeerConfig {
    pub hub: HubAddr,
    /// Addresses reported to the hub as this node's hints. `None`: the node's listening
    /// address, with the address it reaches the hub from standing in for an unspecified IP.
    pub addrs: Option<Vec<SocketAddr>>,
    /// Lookup interval while the node has no peer.
    pub lookup: Duration,
    /// Lookup interval while it has peers but is incomplete.
    pub refresh: Duration,
    /// Announce interval (besides every new presence).
    pub reannounce: Duration,
    /// Time allowed for one direct hint, connection and handshake.
    pub direct_timeout: Duration,
    /// Wait before trying a node again after every path to it failed.
    pub retry: Duration,
    /// Relay only while the node has fewer peers than this.
    pub relay_below: usize,
}

impl HubPeerConfig {
    pub fn new(hub: HubAddr) -> Self {
        Self {
            hub,
            addrs: None,
            lookup: Duration::from_secs(1),
            refresh: Duration::from_secs(15),
            reannounce: Duration::from_secs(120),
            direct_timeout: Duration::from_secs(2),
            retry: Duration::from_secs(5),
            relay_below: 8,
        }
    }
}

/// How a node was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Relayed,
}

/// Counters of one node's hub use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubPeerStats {
    pub announces: u64,
    pub lookups: u64,
    /// Peers reached by dialling a hint from the hub.
    pub direct: u64,
    /// Peers reached through the hub's relay, our request.
    pub relayed_out: u64,
    /// Relays the hub handed us.
    pub relayed_in: u64,
}

/// A running hub peer; dropping it stops it (the node keeps its connections).
#[derive(Debug)]
pub struct HubPeer {
    pub status: watch::Receiver<Status>,
    pub stats: watch::Receiver<HubPeerStats>,
    cancel: CancellationToken,
    _presence: ferry_hub::Presence,
}

impl Drop for HubPeer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts the presence, announces and lookups for `node`'s swarm.
pub async fn start(
    node: &NodeHandle,
    content: crate::manifest::ContentId,
    config: HubPeerConfig,
) -> HubPeer {
    let content: ContentId = content.0;
    let identity = node.identity.clone();
    let key = config
        .hub
        .name
        .clone()
        .unwrap_or_else(|| identity.id().to_string());
    let addrs = match &config.addrs {
        Some(addrs) => addrs.clone(),
        None => reported_addrs(node.listen_addr, &config.hub).await,
    };
    let mut presence = PresenceConfig::new(
        config.hub.hints.clone(),
        config.hub.hub_id,
        identity.clone(),
        key,
    );
    presence.addrs = addrs;
    let (acceptor, presence) = spawn_presence(presence);
    let cancel = CancellationToken::new();
    let (stats_tx, stats) = watch::channel(HubPeerStats::default());
    tokio::spawn(accept_relays(
        acceptor,
        node.adder.clone(),
        stats_tx.clone(),
        cancel.clone(),
    ));
    let finder = Finder {
        config,
        identity,
        content,
        adder: node.adder.clone(),
        peer_ids: node.peer_ids.clone(),
        swarm: node.stats.clone(),
        status: presence.status.clone(),
        stats: stats_tx,
        me: node.node_id,
    };
    tokio::spawn(finder.run(cancel.clone()));
    HubPeer {
        status: presence.status.clone(),
        stats,
        cancel,
        _presence: presence,
    }
}

/// The node's listening address as a hint: an unspecified IP is replaced by the address this
/// host reaches the hub from (a LAN address behind a NAT; the hub adds the reflected one).
async fn reported_addrs(listen: SocketAddr, hub: &HubAddr) -> Vec<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    for hint in &hub.hints {
        let Some(ip) = hint.ip() else { continue };
        let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        // A connected UDP socket sends nothing; it only asks the kernel for the route.
        if let Ok(socket) = tokio::net::UdpSocket::bind(bind).await {
            if socket.connect((ip, hint.port)).await.is_ok() {
                if let Ok(local) = socket.local_addr() {
                    return vec![SocketAddr::new(local.ip(), listen.port())];
                }
            }
        }
    }
    Vec::new()
}

async fn accept_relays(
    mut acceptor: ferry_hub::RelayAcceptor,
    adder: PeerAdder,
    stats: watch::Sender<HubPeerStats>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            accepted = acceptor.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let adder = adder.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            match adder.inbound(stream).await {
                Ok(peer) => {
                    debug!(%peer, "relayed peer connected to us");
                    stats.send_modify(|s| s.relayed_in += 1);
                }
                Err(e) => debug!("relayed connection: {e}"),
            }
        });
    }
}

struct Finder {
    config: HubPeerConfig,
    identity: Identity,
    content: ContentId,
    adder: PeerAdder,
    peer_ids: watch::Receiver<Vec<PeerId>>,
    swarm: watch::Receiver<Stats>,
    status: watch::Receiver<Status>,
    stats: watch::Sender<HubPeerStats>,
    me: NodeId,
}

impl Finder {
    async fn run(mut self, cancel: CancellationToken) {
        let mut conn: Option<HubConn> = None;
        let mut announced_for: Option<Status> = None;
        let mut last_announce = Instant::now();
        let mut last_lookup: Option<Instant> = None;
        let mut attempts: JoinSet<(NodeId, Option<Path>)> = JoinSet::new();
        let mut trying: HashSet<NodeId> = HashSet::new();
        let mut not_before: HashMap<NodeId, Instant> = HashMap::new();
        let tick = self.config.lookup.min(Duration::from_millis(500));
        loop {
            // Announce on every new presence, and now and then.
            let status = self.status.borrow().clone();
            let present = matches!(status, Status::Present { .. });
            if !present {
                // The next presence, even one that looks the same, is announced afresh.
                announced_for = None;
            }
            let due = announced_for.as_ref() != Some(&status)
                || last_announce.elapsed() >= self.config.reannounce;
            if present && due {
                match self.announce(&mut conn).await {
                    Ok(()) => {
                        announced_for = Some(status);
                        last_announce = Instant::now();
                    }
                    Err(e) => {
                        warn!("announcing to the hub: {e}");
                        conn = None;
                    }
                }
            }
            let swarm = *self.swarm.borrow();
            let complete = swarm.pieces > 0 && swarm.have == swarm.pieces;
            let connected: HashSet<NodeId> =
                self.peer_ids.borrow().iter().map(|p| p.node_id()).collect();
            let interval = if connected.is_empty() {
                self.config.lookup
            } else {
                self.config.refresh
            };
            let lookup_due = last_lookup.is_none_or(|at| at.elapsed() >= interval);
            if present && !complete && lookup_due {
                last_lookup = Some(Instant::now());
                match self.lookup(&mut conn).await {
                    Ok(peers) => {
                        let now = Instant::now();
                        for peer in peers {
                            if peer.id == self.me
                                || connected.contains(&peer.id)
                                || trying.contains(&peer.id)
                                || not_before.get(&peer.id).is_some_and(|at| *at > now)
                            {
                                continue;
                            }
                            trying.insert(peer.id);
                            let mut config = self.config.clone();
                            if let Status::Present { hub_id, .. } = &*self.status.borrow() {
                                config.hub.hub_id = Some(*hub_id);
                            }
                            let reach = Reach {
                                config,
                                identity: self.identity.clone(),
                                adder: self.adder.clone(),
                                peer_ids: self.peer_ids.clone(),
                            };
                            attempts.spawn(async move {
                                let id = peer.id;
                                (id, reach.reach(peer).await)
                            });
                        }
                    }
                    Err(e) => {
                        warn!("asking the hub for peers: {e}");
                        conn = None;
                    }
                }
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = self.status.changed() => {}
                _ = self.peer_ids.changed() => {}
                Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                    let Ok((id, path)) = done else { continue };
                    trying.remove(&id);
                    match path {
                        Some(Path::Direct) => self.stats.send_modify(|s| s.direct += 1),
                        Some(Path::Relayed) => self.stats.send_modify(|s| s.relayed_out += 1),
                        None => {
                            not_before.insert(id, Instant::now() + self.config.retry);
                        }
                    }
                }
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    async fn connection<'a>(
        &self,
        conn: &'a mut Option<HubConn>,
    ) -> Result<&'a mut HubConn, HubError> {
        if conn.is_none() {
            let hub = &self.config.hub;
            let hub_id = match &*self.status.borrow() {
                Status::Present { hub_id, .. } => Some(*hub_id),
                _ => hub.hub_id,
            };
            *conn = Some(HubConn::connect(&hub.hints, hub_id, &self.identity).await?);
        }
        Ok(conn.as_mut().expect("set above"))
    }

    async fn announce(&self, conn: &mut Option<HubConn>) -> Result<(), HubError> {
        let held = self
            .connection(conn)
            .await?
            .announce(&[self.content], false)
            .await?;
        debug!(held, "announced to the hub");
        self.stats.send_modify(|s| s.announces += 1);
        Ok(())
    }

    async fn lookup(&self, conn: &mut Option<HubConn>) -> Result<Vec<PeerEntry>, HubError> {
        let peers = self.connection(conn).await?.peers(&self.content).await?;
        debug!(count = peers.len(), "peers from the hub");
        self.stats.send_modify(|s| s.lookups += 1);
        Ok(peers)
    }
}

/// What one attempt to reach a node needs.
struct Reach {
    config: HubPeerConfig,
    identity: Identity,
    adder: PeerAdder,
    peer_ids: watch::Receiver<Vec<PeerId>>,
}

impl Reach {
    /// Direct hints first, then (while the node has few peers) the hub's relay.
    async fn reach(&self, peer: PeerEntry) -> Option<Path> {
        for addr in &peer.addrs {
            let dial = async {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                let _ = stream.set_nodelay(true);
                let stream: BoxedStream = Box::new(stream);
                self.adder
                    .outbound(stream, Some(*addr), Some(peer.id))
                    .await
            };
            match tokio::time::timeout(self.config.direct_timeout, dial).await {
                Ok(Ok(_)) => {
                    info!(peer = %peer.id, %addr, "peer reached directly");
                    return Some(Path::Direct);
                }
                Ok(Err(e)) => debug!(peer = %peer.id, %addr, "direct hint failed: {e}"),
                Err(_) => debug!(peer = %peer.id, %addr, "direct hint timed out"),
            }
        }
        let ids = self.peer_ids.borrow().clone();
        // It may have reached us meanwhile; and relays are for nodes with few peers.
        if ids.contains(&PeerId::from(peer.id)) || ids.len() >= self.config.relay_below {
            return None;
        }
        match self.relay(&peer).await {
            Ok(()) => {
                info!(peer = %peer.id, via = %peer.via, "peer reached through the hub's relay");
                Some(Path::Relayed)
            }
            Err(e) => {
                debug!(peer = %peer.id, "relay failed: {e}");
                None
            }
        }
    }

    async fn relay(&self, peer: &PeerEntry) -> Result<(), String> {
        let hub = &self.config.hub;
        let conn = HubConn::connect(&hub.hints, hub.hub_id, &self.identity)
            .await
            .map_err(|e| e.to_string())?;
        let (stream, _) = conn.relay(&peer.via).await.map_err(|e| e.to_string())?;
        self.adder
            .outbound(Box::new(stream), None, Some(peer.id))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_addresses_parse_with_and_without_a_name() {
        let plain: HubAddr = "127.0.0.1:6790".parse().unwrap();
        assert_eq!(plain.name, None);
        assert_eq!(plain.hints[0].authority(), "127.0.0.1:6790");
        let id = Identity::from_secret([3; 32]).id();
        let named: HubAddr = format!("alice@ferry://{id}@10.0.0.1:6790/")
            .parse()
            .unwrap();
        assert_eq!(named.name.as_deref(), Some("alice"));
        assert_eq!(named.hub_id, Some(id));
        let pinned: HubAddr = format!("{id}@10.0.0.1:6790").parse().unwrap();
        assert_eq!((pinned.name, pinned.hub_id), (None, Some(id)));
    }
}
