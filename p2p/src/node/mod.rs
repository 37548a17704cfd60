//! The tokio shell around the swarm core: a listener, one reader and one writer task per peer,
//! and a swarm actor that owns the [`Swarm`] and carries out its
//! [`Action`](crate::swarm::Action)s. The shell moves bytes, arms timers, hashes and writes
//! pieces on blocking threads, and decides nothing.
//!
//! Every long-lived task selects on its cancellation token first (`biased`), so shutting the
//! node down is one `cancel()`.
//!
//! Files: this one holds the API ([`NodeConfig`], [`start`], [`NodeHandle`]) and what the tasks
//! share (the commands to a peer, the events into the actor); `actor.rs` is the swarm actor
//! (events, actions, dialing); `peer.rs` is one peer connection (handshake, reader, writer,
//! close and drain); `server.rs` runs a ferry-server as a peer; `host.rs` is one listener
//! shared by several swarms, routing each connection by the key its hello names;
//! `stats_pace.rs` decides when a refresh of the counters wakes their watchers; `unsent.rs`
//! limits the data a peer socket holds unsent, so our messages do not queue behind it.

mod actor;
mod host;
mod peer;
mod server;
mod stats_pace;
mod unsent;

pub use host::{Host, HostAdder};
pub use unsent::PeerTcpConnector;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::transport::{BoxedStream, Connector};
use ferry_protocol::ErrorBody;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::manifest::{Manifest, PieceIndex};
use crate::pieces::{Bitfield, Storage, StorageError};
use crate::source::ServerSource;
use crate::status::Sources;
use crate::swarm::{ConnId, Stats, Swarm, SwarmConfig};
use crate::wire::{self, PeerId, PeerMessage};
use actor::{Actor, Inbound};

/// Most inbound connections allowed to be mid-handshake at once.
const MAX_PENDING_HANDSHAKES: usize = 64;

/// [`NodeConfig::max_peers`] unless set: with half of it dialled and half accepted, a peer in
/// a swarm of a hundred keeps 30-40 connections, 40 on average (spec/P2P.md §4.7).
pub const DEFAULT_MAX_PEERS: usize = 40;

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// TCP address to accept peers on; port 0 picks one.
    pub listen: SocketAddr,
    /// How peers are dialled. Default TCP (each connection's reader woken per frame, see
    /// `ferry_protocol::frame_wake`, and its unsent data limited, [`PeerTcpConnector`]); a
    /// relayed or QUIC transport can stand in.
    pub connector: Arc<dyn Connector>,
    /// Peers to dial at start.
    pub peers: Vec<SocketAddr>,
    /// UDP trackers to announce to.
    pub trackers: Vec<SocketAddr>,
    /// Keep serving after the download completes.
    pub seed_after_complete: bool,
    /// Most simultaneous peer connections, dialled and accepted together. The node dials only
    /// up to [`NodeConfig::dial_limit`] (half), so the rest stays open to peers that dial it,
    /// and while it downloads accepts only up to the rest (a seed, which dials nobody, up to
    /// all of it): a newcomer finds room, the peers that start a swarm do not fill up with the
    /// dials of all that come after, and in a large swarm each peer keeps most of this many,
    /// not every peer it hears of (spec/P2P.md §4.7: each connection carries a HAVE for every
    /// piece).
    pub max_peers: usize,
    pub swarm: SwarmConfig,
    /// Deadline for the session handshake plus the peer handshake message.
    pub handshake_timeout: Duration,
    /// Record suites offered to and accepted from peers (spec PROTOCOL.md §4.3). Default: AES-256-GCM
    /// and AES-256-CBC + HMAC-SHA256; `--suite cbc-hmac` for peers from before protocol
    /// version 2.
    pub suites: Vec<ferry_protocol::crypto::RecordSuite>,
    /// Flip a byte in every uploaded block. Only for tests of the ban logic.
    pub dangerous_corrupt_uploads: bool,
    /// Ferry servers that also hold the files; fetched from by byte range alongside the swarm.
    pub servers: Vec<ServerSource>,
    /// A DHT node to find peers through and announce to (spec/P2P.md §7).
    pub dht: Option<crate::dht::shell::DhtHandle>,
    /// The node identity proven to peers; its node id is our peer id (spec/P2P.md §3.3), so
    /// bans outlive a reconnection. `None`: a fresh identity for this node's run.
    pub identity: Option<Identity>,
    /// How often the node dials more of the peers it knows (PEX, earlier failures) and
    /// re-checks its connections. Peers that discovery names are dialled at once regardless.
    pub maintenance_interval: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            connector: Arc::new(PeerTcpConnector),
            peers: Vec::new(),
            trackers: Vec::new(),
            seed_after_complete: true,
            max_peers: DEFAULT_MAX_PEERS,
            swarm: SwarmConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            suites: ferry_protocol::crypto::RecordSuite::DEFAULT_SUITES.to_vec(),
            dangerous_corrupt_uploads: false,
            servers: Vec::new(),
            dht: None,
            identity: None,
            maintenance_interval: Duration::from_millis(500),
        }
    }
}

impl NodeConfig {
    /// Connections the node dials up to: half of [`NodeConfig::max_peers`] (at least one).
    pub fn dial_limit(&self) -> usize {
        (self.max_peers / 2).max(1)
    }
}

/// The node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("a hashing task failed: {0}")]
    Join(String),
    #[error("swarm {0} is already served on this host")]
    AlreadyHosted(crate::manifest::ContentId),
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// Where peers can reach us.
    pub listen_addr: SocketAddr,
    /// Our node id as a peer id (spec/P2P.md §3.3).
    pub peer_id: PeerId,
    /// The node id peers know us by.
    pub node_id: NodeId,
    /// Latest counters, updated as the swarm works.
    pub stats: watch::Receiver<Stats>,
    /// What the node tried to find peers and what failed.
    pub sources: Arc<Sources>,
    /// The ids of the connected peers, sorted.
    pub peer_ids: watch::Receiver<Vec<PeerId>>,
    /// Adds connections opened elsewhere (a hub's relay) to the running node.
    pub adder: PeerAdder,
    /// The identity the node proves to peers.
    pub identity: Identity,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), NodeError>>,
}

impl NodeHandle {
    /// Stops the node and waits for it.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.cancel.cancel();
        self.wait().await
    }

    /// Waits until the node stops on its own (download complete without seeding) or fails.
    pub async fn wait(self) -> Result<(), NodeError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(NodeError::Join(e.to_string())),
        }
    }

    /// A token that stops the node when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops the node without waiting (e.g. simulating a crash in tests: nothing is flushed
    /// beyond what was already written).
    pub fn abort(self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

/// Commands from the swarm actor to a peer's writer task.
#[derive(Debug)]
enum PeerCmd {
    Send(PeerMessage),
    Upload {
        piece: PieceIndex,
        offset: u32,
        length: u32,
    },
    CancelUpload {
        piece: PieceIndex,
        offset: u32,
        length: u32,
    },
    Close(Option<ErrorBody>),
    /// Answer a base-protocol `PING` on the echo service (PROTOCOL.md §3.8).
    Pong(ferry_protocol::RequestId, bytes::Bytes),
}

/// Events into the swarm actor.
#[derive(Debug)]
enum Event {
    Connected {
        conn: ConnId,
        peer_id: PeerId,
        listen_addr: Option<SocketAddr>,
        dialed: Option<SocketAddr>,
        /// Orders two connections to one node (spec/P2P.md §3.3); `None` for a server source.
        tiebreak: Option<[u8; 32]>,
        /// Through a hub's relay: loses to any connection to the same node that is not
        /// (spec/P2P.md §3.3), so a punched path replaces a relayed one.
        relayed: bool,
        cmds: mpsc::UnboundedSender<PeerCmd>,
        cancel: CancellationToken,
    },
    /// Dialling (or handshaking with) an address failed, and why.
    DialFailed(SocketAddr, String),
    Message(ConnId, PeerMessage),
    Uploaded(ConnId, u64),
    Disconnected(ConnId),
    Verified {
        piece: PieceIndex,
        data: Vec<u8>,
        ok: bool,
        error: Option<StorageError>,
    },
    Discovered(Vec<SocketAddr>),
    /// A connection opened outside the actor ([`PeerAdder`]); boxed, it is rare and large.
    Add(Box<Added>),
}

/// A connection for the actor to run as a peer.
struct Added {
    stream: BoxedStream,
    /// The address we dialled, when we dialled one (not through a relay).
    dialed: Option<SocketAddr>,
    opened: peer::Opened,
}

impl std::fmt::Debug for Added {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Added")
            .field("dialed", &self.dialed)
            .field("opened", &self.opened)
            .finish_non_exhaustive()
    }
}

/// Hands connections opened elsewhere (a hub's relay, a hint from a hub) to a running node:
/// the channel of new peer connections into its actor (spec/P2P.md §3.12).
#[derive(Clone, Debug)]
pub struct PeerAdder {
    events: mpsc::Sender<Event>,
}

impl PeerAdder {
    /// A connection this node opened, to `dialed` or through a relay (`None`): it runs the
    /// session handshake as the client and the peer handshake as the dialer. The peer must
    /// prove `expect` when given. Returns once the peer is handed to the swarm (its id), or
    /// why not.
    pub async fn outbound(
        &self,
        stream: BoxedStream,
        dialed: Option<SocketAddr>,
        expect: Option<NodeId>,
    ) -> Result<PeerId, String> {
        self.add(stream, dialed, true, expect.map(PeerId::from), false)
            .await
    }

    /// [`PeerAdder::outbound`] for a connection through a hub's relay: any later connection to
    /// the same node that is not relayed (a punched one) replaces it (spec/P2P.md §3.3).
    pub async fn outbound_relayed(
        &self,
        stream: BoxedStream,
        expect: NodeId,
    ) -> Result<PeerId, String> {
        self.add(stream, None, true, Some(PeerId::from(expect)), true)
            .await
    }

    /// A connection the other end opened (a punched stream, as an accepted TCP connection):
    /// we are the listener.
    pub async fn inbound(&self, stream: BoxedStream) -> Result<PeerId, String> {
        self.add(stream, None, false, None, false).await
    }

    /// [`PeerAdder::inbound`] for a relay the hub handed us; it loses to a connection to the
    /// same node that is not relayed, as in [`PeerAdder::outbound_relayed`].
    pub async fn inbound_relayed(&self, stream: BoxedStream) -> Result<PeerId, String> {
        self.add(stream, None, false, None, true).await
    }

    async fn add(
        &self,
        stream: BoxedStream,
        dialed: Option<SocketAddr>,
        outbound: bool,
        expect: Option<PeerId>,
        relayed: bool,
    ) -> Result<PeerId, String> {
        let (done, result) = tokio::sync::oneshot::channel();
        let added = Added {
            stream,
            dialed,
            opened: peer::Opened {
                outbound,
                expect,
                relayed,
                done: Some(done),
            },
        };
        if self.events.send(Event::Add(Box::new(added))).await.is_err() {
            return Err("the node has stopped".into());
        }
        result
            .await
            .unwrap_or_else(|_| Err("the node stopped the connection before its handshake".into()))
    }
}

/// Shared, read-only context of every peer task.
#[derive(Debug)]
struct Ctx {
    manifest: Arc<Manifest>,
    storage: Arc<Storage>,
    key: ferry_protocol::Key,
    identity: Identity,
    peer_id: PeerId,
    listen_port: u16,
    handshake_timeout: Duration,
    corrupt_uploads: bool,
    connector: Arc<dyn Connector>,
    suites: Vec<ferry_protocol::crypto::RecordSuite>,
}

/// Starts a node serving `storage`, which already holds the verified pieces in `have`.
pub async fn start(
    manifest: Arc<Manifest>,
    storage: Arc<Storage>,
    have: Bitfield,
    config: NodeConfig,
) -> Result<NodeHandle, NodeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.listen,
            source,
        })?;
    let listen_addr = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: config.listen,
        source,
    })?;
    let inbound = Inbound::Listener(unsent::PeerAcceptor::new(listener));
    start_with(manifest, storage, have, config, inbound, listen_addr)
}

/// Starts a node like [`start`], but on `host`'s listener instead of its own (`config.listen`
/// is not used): one port serves every swarm started on the host.
pub fn start_on(
    host: &Host,
    manifest: Arc<Manifest>,
    storage: Arc<Storage>,
    have: Bitfield,
    config: NodeConfig,
) -> Result<NodeHandle, NodeError> {
    let content_id = manifest.content_id();
    let (queue, registration) = host
        .register(content_id)
        .ok_or(NodeError::AlreadyHosted(content_id))?;
    let inbound = Inbound::Hosted {
        queue,
        _registration: registration,
    };
    start_with(manifest, storage, have, config, inbound, host.listen_addr())
}

fn start_with(
    manifest: Arc<Manifest>,
    storage: Arc<Storage>,
    have: Bitfield,
    config: NodeConfig,
    inbound: Inbound,
    listen_addr: SocketAddr,
) -> Result<NodeHandle, NodeError> {
    let identity = config.identity.clone().unwrap_or_else(Identity::generate);
    let node_id = identity.id();
    let peer_id = PeerId::from(node_id);
    let ctx = Arc::new(Ctx {
        identity,
        key: wire::swarm_key(&manifest.content_id()),
        manifest: manifest.clone(),
        storage,
        peer_id,
        listen_port: listen_addr.port(),
        handshake_timeout: config.handshake_timeout,
        corrupt_uploads: config.dangerous_corrupt_uploads,
        connector: config.connector.clone(),
        suites: config.suites.clone(),
    });
    let now = Instant::now().into_std();
    let swarm = Swarm::new(
        manifest.clone(),
        have,
        peer_id,
        config.swarm.clone(),
        rand::random(),
        now,
    );
    let (stats_tx, stats) = watch::channel(swarm.stats());
    let (peer_ids_tx, peer_ids) = watch::channel(Vec::new());
    let identity = ctx.identity.clone();
    let sources = Arc::new(Sources::new(&config.trackers));
    sources.heard_of(config.peers.iter().copied());
    for server in &config.servers {
        sources.server(&server.url.to_string(), None);
    }
    let cancel = CancellationToken::new();
    let (events_tx, events_rx) = mpsc::channel(1024);
    let actor = Actor {
        swarm,
        ctx,
        config,
        cancel: cancel.clone(),
        events_tx,
        events_rx,
        stats_tx,
        peers: HashMap::new(),
        next_conn: 1,
        known: HashSet::new(),
        dialing: HashSet::new(),
        retry: HashMap::new(),
        self_addrs: HashSet::new(),
        listen_addr,
        inbound,
        completed: None,
        handshaking: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
        closing: HashSet::new(),
        sources: sources.clone(),
        peer_ids: peer_ids_tx,
        peer_ids_stale: false,
        stats_pace: stats_pace::StatsPace::default(),
    };
    let adder = PeerAdder {
        events: actor.events_tx.clone(),
    };
    if let Some(dht) = actor.config.dht.clone() {
        let events = actor.events_tx.clone();
        let stats = stats.clone();
        tokio::spawn(crate::dht::shell::discover(
            dht,
            crate::dht::key_for(&manifest.content_id()),
            listen_addr.port(),
            cancel.child_token(),
            move || stats.borrow().peers == 0,
            move |peers| {
                let _ = events.try_send(Event::Discovered(peers));
            },
        ));
    }
    let task = tokio::spawn(actor.run());
    Ok(NodeHandle {
        listen_addr,
        peer_id,
        node_id,
        stats,
        sources,
        peer_ids,
        adder,
        identity,
        cancel,
        task,
    })
}
