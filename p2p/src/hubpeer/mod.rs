//! A swarm node that finds and is found through a hub (spec/P2P.md §3.12, HUB.md §3.8–§3.9):
//! `ferry-peer … --hub [NAME@]HUB`.
//!
//! - **Presence.** The node keeps a presence at the hub (`ferry_hub::node`, as
//!   `ferry-server --hub` does) under NAME, or under its node id's text when no name is given.
//!   Relays the hub hands it become inbound peers of the running swarm ([`PeerAdder::inbound`]).
//! - **Announce.** On every new presence (a hub restart, a reconnection) and every
//!   `reannounce`, it announces the swarm's content id on a second connection. Several swarms
//!   on one [`Host`] share one presence and announce all their content ids together
//!   ([`start_hosted`]).
//! - **Find.** While incomplete it asks the hub which present nodes serve the content id: at
//!   once, every `lookup` while it has no peer, every `refresh` otherwise. For each node it is
//!   not connected to it dials the node's hints directly (the peer must prove the node id the
//!   hub gave); once the hints failed, or [`HubPeerConfig::punch_after`] into them, it asks the
//!   hub to coordinate a hole punch beside them (HUB.md §3.6: TCP simultaneous open raced
//!   against QUIC, as `ferry` does, with `ferry_hub::punch`). Only when neither path answers,
//!   and the node has fewer than `relay_below` peers, it asks the hub to relay: relayed bytes
//!   count against the hub's budgets, so direct peers are preferred. Seeds wait to be reached,
//!   as on the open internet.
//! - **Upgrade.** A peer reached through the relay is punched again in the background, backing
//!   off from 1 s to 30 s; a punched connection replaces the relayed one (P2P.md §3.3: a
//!   relayed connection loses to any other to the same node), its requests go back to the
//!   pool and every verified piece stays.
//! - **Listen.** The presence answers the hub's punch events (`ferry_hub::node`); a punched
//!   stream reaches the running node through [`PeerAdder::inbound`] exactly like an accepted
//!   TCP connection, a relayed one through [`PeerAdder::inbound_relayed`].
//!
//! Every path carries the ordinary peer wire: its session has its own ephemeral X25519
//! exchange (PROTOCOL.md §5.1) and the peers prove their node ids in Noise XX bound to that
//! session (P2P.md §3.3), so the hub sees only ciphertext and cannot stand in for either end;
//! the side that dialled, punched or asked for the relay requires the node id the hub gave.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

use crate::node::{Host, HostAdder, NodeHandle, PeerAdder};
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
    /// Ask the hub to coordinate hole punches, and answer its punch events (HUB.md §3.6).
    pub punch: bool,
    /// When the punch starts beside direct hints that have not failed yet.
    pub punch_after: Duration,
    /// Bound on one punch from its start time.
    pub punch_budget: Duration,
    /// A relayed peer is punched again after the first delay, doubling to the second.
    pub upgrade_backoff: (Duration, Duration),
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
            punch: true,
            // As the client does (ferry_client::client::hub): a silent hint must not hold up
            // the punch, and punches that work at all work within a few round trips.
            punch_after: Duration::from_millis(250),
            punch_budget: Duration::from_secs(1),
            upgrade_backoff: (Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// How a node was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    /// TCP simultaneous open, coordinated by the hub (PROTOCOL.md §14.3).
    PunchedTcp,
    /// QUIC over a punched UDP path, coordinated by the hub (PROTOCOL.md §14.4).
    PunchedQuic,
    Relayed,
}

/// Counters of one node's hub use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubPeerStats {
    pub announces: u64,
    pub lookups: u64,
    /// Peers reached by dialling a hint from the hub.
    pub direct: u64,
    /// Peers reached by a punch we asked the hub for (first try or upgrade), by TCP and QUIC.
    pub punched_tcp: u64,
    pub punched_quic: u64,
    /// Punched connections the other side asked for (our presence listened).
    pub punched_in: u64,
    /// Relayed peers later reached by a punch (the punched connection replaced the relay).
    pub upgraded: u64,
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
    presence: ferry_hub::Presence,
}

impl HubPeer {
    /// Stops (or resumes) answering the hub's punch events, so peers fall back to the relay
    /// meanwhile (for tests, and operators who want to force the relay for a while).
    pub fn pause_punching(&self, paused: bool) {
        self.presence.pause_punching(paused);
    }
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
    let served = vec![Served::of(node, content)];
    let entry = Entry::Node(node.adder.clone());
    start_with(
        served,
        entry,
        node.listen_addr,
        node.identity.clone(),
        config,
    )
    .await
}

/// Starts ONE presence for every swarm `nodes` runs on `host`: one control connection at the
/// hub, all their content ids announced together, the hub's relayed and punched streams
/// routed to the swarm their hello names (as the host's own port does). The nodes must share
/// one identity, which peers are told to expect.
pub async fn start_hosted(
    host: &Host,
    nodes: &[(&NodeHandle, crate::manifest::ContentId)],
    config: HubPeerConfig,
) -> Result<HubPeer, String> {
    let Some((first, _)) = nodes.first() else {
        return Err("no swarm to keep present at the hub".into());
    };
    if let Some((other, _)) = nodes.iter().find(|(n, _)| n.node_id != first.node_id) {
        return Err(format!(
            "the swarms behind one presence must share one identity, but {} and {} differ",
            first.node_id, other.node_id
        ));
    }
    let served = nodes.iter().map(|(n, c)| Served::of(n, *c)).collect();
    let entry = Entry::Host(host.adder());
    let identity = first.identity.clone();
    Ok(start_with(served, entry, host.listen_addr(), identity, config).await)
}

/// Where the presence's relayed and punched streams go.
#[derive(Debug, Clone)]
enum Entry {
    /// Straight to the one node (its peer handshake, with the session handshake in its task).
    Node(PeerAdder),
    /// Through the host, which routes each by the key its hello names.
    Host(HostAdder),
}

/// One swarm behind the presence.
#[derive(Debug, Clone)]
struct Served {
    content: ContentId,
    adder: PeerAdder,
    peer_ids: watch::Receiver<Vec<PeerId>>,
    swarm: watch::Receiver<Stats>,
}

impl Served {
    fn of(node: &NodeHandle, content: crate::manifest::ContentId) -> Self {
        Self {
            content: content.0,
            adder: node.adder.clone(),
            peer_ids: node.peer_ids.clone(),
            swarm: node.stats.clone(),
        }
    }
}

async fn start_with(
    served: Vec<Served>,
    entry: Entry,
    listen: SocketAddr,
    identity: Identity,
    config: HubPeerConfig,
) -> HubPeer {
    let me = identity.id();
    let key = config
        .hub
        .name
        .clone()
        .unwrap_or_else(|| identity.id().to_string());
    let addrs = match &config.addrs {
        Some(addrs) => addrs.clone(),
        None => reported_addrs(listen, &config.hub).await,
    };
    let mut presence = PresenceConfig::new(
        config.hub.hints.clone(),
        config.hub.hub_id,
        identity.clone(),
        key,
    );
    presence.addrs = addrs;
    presence.punch = config.punch;
    let hub_addrs = hub_addrs(&config.hub).await;
    let (acceptor, presence) = spawn_presence(presence);
    let cancel = CancellationToken::new();
    let (stats_tx, stats) = watch::channel(HubPeerStats::default());
    let unrelayed = Unrelayed::default();
    tokio::spawn(accept_relays(
        acceptor,
        hub_addrs,
        entry,
        stats_tx.clone(),
        unrelayed.clone(),
        cancel.clone(),
    ));
    let finder = Finder {
        config,
        identity,
        served,
        status: presence.status.clone(),
        stats: stats_tx,
        me,
        unrelayed,
    };
    tokio::spawn(finder.run(cancel.clone()));
    HubPeer {
        status: presence.status.clone(),
        stats,
        cancel,
        presence,
    }
}

/// The nodes this node has a connection to that is not relayed (direct or punched): a relayed
/// connection to one of them is replaced already, so its upgrade stops.
#[derive(Debug, Clone, Default)]
struct Unrelayed(Arc<Mutex<HashSet<NodeId>>>);

impl Unrelayed {
    fn set(&self, id: NodeId, unrelayed: bool) {
        // Every update is one insert or remove, so a poisoned lock still holds a valid set.
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if unrelayed {
            ids.insert(id);
        } else {
            ids.remove(&id);
        }
    }

    fn contains(&self, id: &NodeId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }
}

/// The hub's addresses: a stream the presence hands over from one of them is a relay, from
/// anywhere else a punch (the punched peer's address).
async fn hub_addrs(hub: &HubAddr) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for hint in &hub.hints {
        match hint.ip() {
            Some(ip) => addrs.push(SocketAddr::new(ip, hint.port)),
            None => {
                if let Ok(found) = tokio::net::lookup_host((hint.host.as_str(), hint.port)).await {
                    addrs.extend(found);
                }
            }
        }
    }
    addrs
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

/// Hands the presence's relayed and punched streams to the node, as inbound peers.
async fn accept_relays(
    mut acceptor: ferry_hub::RelayAcceptor,
    mut hub_addrs: Vec<SocketAddr>,
    entry: Entry,
    stats: watch::Sender<HubPeerStats>,
    unrelayed: Unrelayed,
    cancel: CancellationToken,
) {
    if let Ok(addr) = acceptor.local_addr() {
        hub_addrs.push(addr);
    }
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            accepted = acceptor.accept() => accepted,
        };
        let Ok((stream, from)) = accepted else {
            continue;
        };
        let relayed = hub_addrs.contains(&from);
        let adder = match &entry {
            Entry::Node(adder) => adder.clone(),
            Entry::Host(host) => {
                // The host runs the handshakes and routes the stream; it is counted on arrival.
                host.inbound(stream, from, relayed);
                stats.send_modify(|s| {
                    if relayed {
                        s.relayed_in += 1;
                    } else {
                        s.punched_in += 1;
                    }
                });
                continue;
            }
        };
        let stats = stats.clone();
        let unrelayed = unrelayed.clone();
        tokio::spawn(async move {
            let added = if relayed {
                adder.inbound_relayed(stream).await
            } else {
                adder.inbound(stream).await
            };
            match added {
                Ok(peer) if relayed => {
                    info!(%peer, "relayed peer connected to us");
                    stats.send_modify(|s| s.relayed_in += 1);
                }
                Ok(peer) => {
                    info!(%peer, %from, "punched peer connected to us");
                    unrelayed.set(peer.node_id(), true);
                    stats.send_modify(|s| s.punched_in += 1);
                }
                // A punch's losing copy (the dialer kept the other transport) ends here.
                Err(e) => debug!(%from, relayed, "connection from the hub's presence: {e}"),
            }
        });
    }
}

struct Finder {
    config: HubPeerConfig,
    identity: Identity,
    served: Vec<Served>,
    status: watch::Receiver<Status>,
    stats: watch::Sender<HubPeerStats>,
    me: NodeId,
    unrelayed: Unrelayed,
}

impl Finder {
    async fn run(mut self, cancel: CancellationToken) {
        let mut conn: Option<HubConn> = None;
        let mut announced_for: Option<Status> = None;
        let mut last_announce = Instant::now();
        let mut last_lookup: Vec<Option<Instant>> = vec![None; self.served.len()];
        // Attempts and back-offs are per swarm (its index in `served`) and node.
        let mut attempts: JoinSet<((usize, NodeId), bool)> = JoinSet::new();
        let mut trying: HashSet<(usize, NodeId)> = HashSet::new();
        let mut not_before: HashMap<(usize, NodeId), Instant> = HashMap::new();
        // Woken by the first swarm's peers (the only one, but for a host's seeds, which look
        // up no one); the others are seen on the tick.
        let mut first_peers = self.served.first().map(|s| s.peer_ids.clone());
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
            for (index, served) in self.served.iter().enumerate() {
                let swarm = *served.swarm.borrow();
                let complete = swarm.pieces > 0 && swarm.have == swarm.pieces;
                let connected: HashSet<NodeId> = served
                    .peer_ids
                    .borrow()
                    .iter()
                    .map(|p| p.node_id())
                    .collect();
                let interval = if connected.is_empty() {
                    self.config.lookup
                } else {
                    self.config.refresh
                };
                let lookup_due = last_lookup[index].is_none_or(|at| at.elapsed() >= interval);
                if !present || complete || !lookup_due {
                    continue;
                }
                last_lookup[index] = Some(Instant::now());
                let content = served.content;
                match self.lookup(&mut conn, &content).await {
                    Ok(peers) => {
                        let now = Instant::now();
                        for peer in peers {
                            let key = (index, peer.id);
                            if peer.id == self.me
                                || connected.contains(&peer.id)
                                || trying.contains(&key)
                                || not_before.get(&key).is_some_and(|at| *at > now)
                            {
                                continue;
                            }
                            trying.insert(key);
                            let mut config = self.config.clone();
                            if let Status::Present { hub_id, .. } = &*self.status.borrow() {
                                config.hub.hub_id = Some(*hub_id);
                            }
                            let reach = Reach {
                                config,
                                identity: self.identity.clone(),
                                adder: served.adder.clone(),
                                peer_ids: served.peer_ids.clone(),
                                stats: self.stats.clone(),
                                unrelayed: self.unrelayed.clone(),
                            };
                            attempts.spawn(async move { (key, reach.reach(peer).await) });
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
                Ok(()) = async { first_peers.as_mut().expect("guarded").changed().await }, if first_peers.is_some() => {}
                Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                    let Ok((key, reached)) = done else { continue };
                    trying.remove(&key);
                    if !reached {
                        not_before.insert(key, Instant::now() + self.config.retry);
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

    /// Announces every swarm's content id in one request.
    async fn announce(&self, conn: &mut Option<HubConn>) -> Result<(), HubError> {
        let contents: Vec<ContentId> = self.served.iter().map(|s| s.content).collect();
        let held = self
            .connection(conn)
            .await?
            .announce(&contents, false)
            .await?;
        debug!(held, "announced to the hub");
        self.stats.send_modify(|s| s.announces += 1);
        Ok(())
    }

    async fn lookup(
        &self,
        conn: &mut Option<HubConn>,
        content: &ContentId,
    ) -> Result<Vec<PeerEntry>, HubError> {
        let peers = self.connection(conn).await?.peers(content).await?;
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
    stats: watch::Sender<HubPeerStats>,
    unrelayed: Unrelayed,
}

impl Reach {
    /// Direct hints, the punch beside them once they failed or ran `punch_after`, then (while
    /// the node has few peers) the hub's relay, which is upgraded to a punched path when a
    /// later punch succeeds. Whether the node was reached; a relayed attempt returns once the
    /// relay is replaced or gone.
    async fn reach(&self, peer: PeerEntry) -> bool {
        if let Some(path) = self.direct_or_punch(&peer).await {
            self.count(path);
            self.unrelayed.set(peer.id, true);
            return true;
        }
        let ids = self.peer_ids.borrow().clone();
        // It may have reached us meanwhile; and relays are for nodes with few peers.
        if ids.contains(&PeerId::from(peer.id)) || ids.len() >= self.config.relay_below {
            return false;
        }
        if let Err(e) = self.relay(&peer).await {
            debug!(peer = %peer.id, "relay failed: {e}");
            return false;
        }
        info!(peer = %peer.id, via = %peer.via, "peer reached through the hub's relay");
        self.unrelayed.set(peer.id, false);
        self.count(Path::Relayed);
        if self.config.punch {
            self.upgrade(&peer).await;
        }
        true
    }

    fn count(&self, path: Path) {
        self.stats.send_modify(|s| match path {
            Path::Direct => s.direct += 1,
            Path::PunchedTcp => s.punched_tcp += 1,
            Path::PunchedQuic => s.punched_quic += 1,
            Path::Relayed => s.relayed_out += 1,
        });
    }

    /// The node's hints, and the punch beside them (as the client's `direct_or_punch`); the
    /// first path whose handshake proves the node's id wins.
    async fn direct_or_punch(&self, peer: &PeerEntry) -> Option<Path> {
        let direct = self.direct(peer);
        tokio::pin!(direct);
        let mut direct_done = false;
        tokio::select! {
            found = &mut direct => {
                if found {
                    return Some(Path::Direct);
                }
                direct_done = true;
            }
            () = tokio::time::sleep(self.config.punch_after), if self.config.punch => {}
        }
        if !self.config.punch {
            return None;
        }
        let punch = self.punch(peer);
        tokio::pin!(punch);
        let mut punch_done = false;
        while !(direct_done && punch_done) {
            tokio::select! {
                found = &mut direct, if !direct_done => {
                    if found {
                        return Some(Path::Direct);
                    }
                    direct_done = true;
                }
                punched = &mut punch, if !punch_done => match punched {
                    Ok(path) => return Some(path),
                    Err(e) => {
                        debug!(peer = %peer.id, "no punched path: {e}");
                        punch_done = true;
                    }
                },
            }
        }
        None
    }

    /// The hints one after another, each bounded by `direct_timeout`.
    async fn direct(&self, peer: &PeerEntry) -> bool {
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
                    return true;
                }
                Ok(Err(e)) => debug!(peer = %peer.id, %addr, "direct hint failed: {e}"),
                Err(_) => debug!(peer = %peer.id, %addr, "direct hint timed out"),
            }
        }
        false
    }

    /// The dialer's side of a hub-coordinated punch (HUB.md §3.6), as `ferry` runs it: the RTT
    /// to the hub, this side's UDP socket shown to the hub (§3.7), the instruction checked,
    /// TCP simultaneous open raced against QUIC (`ferry_hub::punch::dial`), and the peer
    /// handshake over the winner with the node's id required.
    async fn punch(&self, peer: &PeerEntry) -> Result<Path, String> {
        let hub = &self.config.hub;
        let mut conn = HubConn::connect(&hub.hints, hub.hub_id, &self.identity)
            .await
            .map_err(|e| e.to_string())?;
        let rtt = conn.rtt().await.map_err(|e| e.to_string())?;
        let quic = ferry_hub::punch::udp_endpoint(&mut conn).await;
        let instruction = conn
            .punch(&peer.via, rtt, Vec::new())
            .await
            .map_err(|e| e.to_string())?;
        ferry_client::client::hub::check_punch(&instruction, peer.id)?;
        debug!(
            peer = %peer.id,
            rtt_ms = rtt.as_millis() as u64,
            delay_ms = instruction.delay_ms,
            tcp = ?ferry_hub::punch::tcp_target(&instruction),
            udp = ?instruction.udp,
            "punching"
        );
        let punched = ferry_hub::punch::dial(
            &instruction,
            conn.local_addr(),
            quic.as_ref(),
            self.config.punch_budget,
        )
        .await
        .map_err(|e| e.to_string())?;
        let path = match punched.path {
            ferry_hub::traversal::Path::PunchedQuic => Path::PunchedQuic,
            _ => Path::PunchedTcp,
        };
        let remote = punched.remote;
        let added = tokio::time::timeout(
            self.config.direct_timeout,
            self.adder.outbound(punched.stream, None, Some(peer.id)),
        )
        .await
        .map_err(|_| {
            format!(
                "the handshake over the punched path to {remote} took over {} ms",
                self.config.direct_timeout.as_millis()
            )
        })?;
        added.map_err(|e| format!("the punched path to {remote}: {e}"))?;
        info!(peer = %peer.id, %remote, ?path, "peer reached by a punch");
        Ok(path)
    }

    async fn relay(&self, peer: &PeerEntry) -> Result<(), String> {
        let hub = &self.config.hub;
        let conn = HubConn::connect(&hub.hints, hub.hub_id, &self.identity)
            .await
            .map_err(|e| e.to_string())?;
        let (stream, _) = conn.relay(&peer.via).await.map_err(|e| e.to_string())?;
        self.adder
            .outbound_relayed(Box::new(stream), peer.id)
            .await
            .map(|_| ())
    }

    /// Punches a relayed peer again, backing off, until a punch succeeds (the punched
    /// connection then replaces the relayed one), another connection that is not relayed
    /// did, or the peer is gone.
    async fn upgrade(&self, peer: &PeerEntry) {
        let (mut delay, max) = self.config.upgrade_backoff;
        let mut attempt = 1u32;
        loop {
            tokio::time::sleep(delay).await;
            if !self.peer_ids.borrow().contains(&PeerId::from(peer.id)) {
                debug!(peer = %peer.id, "the relayed peer is gone; no upgrade");
                return;
            }
            if self.unrelayed.contains(&peer.id) {
                self.stats.send_modify(|s| s.upgraded += 1);
                info!(peer = %peer.id, "the relayed peer was reached by a punch from its side");
                return;
            }
            match self.punch(peer).await {
                Ok(path) => {
                    info!(peer = %peer.id, attempt, ?path, "moved the peer from the relay to a punched path");
                    self.count(path);
                    self.unrelayed.set(peer.id, true);
                    self.stats.send_modify(|s| s.upgraded += 1);
                    return;
                }
                Err(e) => debug!(peer = %peer.id, attempt, "still relayed: {e}"),
            }
            delay = (delay * 2).min(max);
            attempt += 1;
        }
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
