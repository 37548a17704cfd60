//! The tokio shell around the swarm core: a listener, one reader and one writer task per peer,
//! and a swarm actor that owns the [`Swarm`] and carries out its [`Action`]s. The shell moves
//! bytes, arms timers, hashes and writes pieces on blocking threads, and decides nothing.
//!
//! Every long-lived task selects on its cancellation token first (`biased`), so shutting the
//! node down is one `cancel()`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::transport::{Acceptor, BoxedStream, Connector, TcpAcceptor, TcpConnector};
use ferry_protocol::{ClientConfig, ErrorBody, RecvHalf, SendHalf, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::manifest::{Manifest, PieceIndex};
use crate::pieces::{sha256, Bitfield, Storage, StorageError};
use crate::source::{ServerSource, SourceClient};
use crate::status::Sources;
use crate::swarm::{Action, ConnId, Stats, Swarm, SwarmConfig};
use crate::tracker::client::{announce_loop, AnnounceInfo};
use crate::wire::{self, PeerId, PeerMessage};

/// Most inbound connections allowed to be mid-handshake at once.
const MAX_PENDING_HANDSHAKES: usize = 64;

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// TCP address to accept peers on; port 0 picks one.
    pub listen: SocketAddr,
    /// How peers are dialled. Default TCP; a relayed or QUIC transport can stand in.
    pub connector: Arc<dyn Connector>,
    /// Peers to dial at start.
    pub peers: Vec<SocketAddr>,
    /// UDP trackers to announce to.
    pub trackers: Vec<SocketAddr>,
    /// Keep serving after the download completes.
    pub seed_after_complete: bool,
    /// Most simultaneous peer connections.
    pub max_peers: usize,
    pub swarm: SwarmConfig,
    /// Deadline for the session handshake plus the peer handshake message.
    pub handshake_timeout: Duration,
    /// Flip a byte in every uploaded block. Only for tests of the ban logic.
    pub dangerous_corrupt_uploads: bool,
    /// Ferry servers that also hold the files; fetched from by byte range alongside the swarm.
    pub servers: Vec<ServerSource>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            connector: Arc::new(TcpConnector),
            peers: Vec::new(),
            trackers: Vec::new(),
            seed_after_complete: true,
            max_peers: 40,
            swarm: SwarmConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            dangerous_corrupt_uploads: false,
            servers: Vec::new(),
        }
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
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// Where peers can reach us.
    pub listen_addr: SocketAddr,
    pub peer_id: PeerId,
    /// Latest counters, updated as the swarm works.
    pub stats: watch::Receiver<Stats>,
    /// What the node tried to find peers and what failed.
    pub sources: Arc<Sources>,
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
}

/// Shared, read-only context of every peer task.
#[derive(Debug)]
struct Ctx {
    manifest: Arc<Manifest>,
    storage: Arc<Storage>,
    key: ferry_protocol::Key,
    peer_id: PeerId,
    listen_port: u16,
    handshake_timeout: Duration,
    corrupt_uploads: bool,
    connector: Arc<dyn Connector>,
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
    let peer_id = PeerId::generate();
    let ctx = Arc::new(Ctx {
        key: wire::swarm_key(&manifest.content_id()),
        manifest: manifest.clone(),
        storage,
        peer_id,
        listen_port: listen_addr.port(),
        handshake_timeout: config.handshake_timeout,
        corrupt_uploads: config.dangerous_corrupt_uploads,
        connector: config.connector.clone(),
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
        listener: TcpAcceptor::new(listener),
        completed: None,
        handshaking: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
        closing: HashSet::new(),
        sources: sources.clone(),
    };
    let task = tokio::spawn(actor.run());
    Ok(NodeHandle {
        listen_addr,
        peer_id,
        stats,
        sources,
        cancel,
        task,
    })
}

#[derive(Debug)]
struct PeerLink {
    cmds: mpsc::UnboundedSender<PeerCmd>,
    cancel: CancellationToken,
    addr: Option<SocketAddr>,
}

#[derive(Debug)]
struct Actor {
    swarm: Swarm,
    ctx: Arc<Ctx>,
    config: NodeConfig,
    cancel: CancellationToken,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    stats_tx: watch::Sender<Stats>,
    peers: HashMap<ConnId, PeerLink>,
    next_conn: u64,
    /// Every peer address learnt from config, trackers and PEX.
    known: HashSet<SocketAddr>,
    dialing: HashSet<SocketAddr>,
    /// Failed dials: attempts and when to try again.
    retry: HashMap<SocketAddr, (u32, Instant)>,
    /// Addresses that turned out to be this node.
    self_addrs: HashSet<SocketAddr>,
    listen_addr: SocketAddr,
    listener: TcpAcceptor,
    completed: Option<tokio::sync::watch::Sender<bool>>,
    /// Permits for inbound connections that have not finished their handshake.
    handshaking: Arc<Semaphore>,
    /// Connections told to close whose task has not ended yet.
    closing: HashSet<ConnId>,
    sources: Arc<Sources>,
}

impl Actor {
    async fn run(mut self) -> Result<(), NodeError> {
        self.known.extend(self.config.peers.iter().copied());
        let (complete_tx, complete_rx) = watch::channel(self.swarm.is_complete());
        self.completed = Some(complete_tx);
        for tracker in self.config.trackers.clone() {
            let info = AnnounceInfo {
                content_id: self.ctx.manifest.content_id(),
                peer_id: self.ctx.peer_id,
                port: self.listen_addr.port(),
                total: self.ctx.manifest.total_size(),
            };
            let stats = self.stats_tx.subscribe();
            let events = self.events_tx.clone();
            let cancel = self.cancel.child_token();
            let complete = complete_rx.clone();
            let health = self.sources.tracker(tracker);
            tokio::spawn(async move {
                announce_loop(tracker, info, stats, complete, cancel, health, |peers| {
                    let _ = events.try_send(Event::Discovered(peers));
                })
                .await
            });
        }
        if !self.swarm.is_complete() {
            for source in self.config.servers.clone() {
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                tokio::spawn(run_server_source(
                    source,
                    conn,
                    self.ctx.manifest.clone(),
                    self.events_tx.clone(),
                    self.cancel.child_token(),
                    self.sources.clone(),
                ));
            }
        }
        let mut maintenance = tokio::time::interval(Duration::from_millis(500));
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            if let Err(e) = self.drain_actions() {
                break Err(e);
            }
            let _ = self.stats_tx.send(self.swarm.stats());
            if self.swarm.is_complete() {
                if let Some(tx) = &self.completed {
                    let _ = tx.send(true);
                }
                if !self.config.seed_after_complete {
                    // Peers get what is queued for them (the HAVE for the last piece) first.
                    self.close_peers_gracefully().await;
                    break Ok(());
                }
            }
            let deadline = Instant::from_std(self.swarm.poll_timeout());
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break Ok(()),
                Some(event) = self.events_rx.recv() => {
                    if let Err(e) = self.handle_event(event) {
                        break Err(e);
                    }
                }
                accepted = self.listener.accept() => {
                    if let Ok((stream, remote)) = accepted {
                        // Connections still handshaking are capped too, so silent sockets
                        // cannot pile up tasks.
                        let permit = self.handshaking.clone().try_acquire_owned();
                        match permit {
                            Ok(permit)
                                if self.peers.len() + self.dialing.len()
                                    < self.config.max_peers * 2 =>
                            {
                                self.spawn_peer(Box::new(stream), remote, permit);
                            }
                            _ => tracing::debug!("refusing a connection: at the peer limit"),
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.swarm.handle_timeout(Instant::now().into_std());
                }
                _ = maintenance.tick() => self.dial_more(),
            }
        };
        let stats = self.swarm.stats();
        tracing::info!(
            have = stats.have,
            pieces = stats.pieces,
            downloaded = stats.downloaded,
            uploaded = stats.uploaded,
            wasted = stats.wasted,
            hash_failures = stats.hash_failures,
            banned = stats.banned,
            "node stopping"
        );
        // Stop every peer and tracker task; let the trackers see `stopped` best effort.
        self.cancel.cancel();
        for link in self.peers.values() {
            link.cancel.cancel();
        }
        if let Err(e) = self.ctx.storage.sync() {
            tracing::warn!(error = %e, "flushing downloaded data failed");
        }
        result
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn handle_event(&mut self, event: Event) -> Result<(), NodeError> {
        let now = self.now();
        match event {
            Event::Connected {
                conn,
                peer_id,
                listen_addr,
                dialed,
                cmds,
                cancel,
            } => {
                if let Some(addr) = dialed {
                    self.dialing.remove(&addr);
                }
                match self.swarm.handle_connected(conn, peer_id, listen_addr, now) {
                    Ok(()) => {
                        if let Some(addr) = listen_addr {
                            self.known.insert(addr);
                            self.retry.remove(&addr);
                            self.sources.connected(addr);
                        }
                        self.peers.insert(
                            conn,
                            PeerLink {
                                cmds,
                                cancel,
                                addr: listen_addr,
                            },
                        );
                    }
                    Err(refused) => {
                        tracing::debug!(?conn, %peer_id, %refused, "refusing peer");
                        if refused == crate::swarm::Refused::SelfConnection {
                            if let Some(addr) = dialed {
                                self.self_addrs.insert(addr);
                            }
                        }
                        cancel.cancel();
                    }
                }
            }
            Event::DialFailed(addr, reason) => {
                self.dialing.remove(&addr);
                self.sources.dial_failed(addr, reason);
                let entry = self.retry.entry(addr).or_insert((0, Instant::now()));
                entry.0 += 1;
                // 1 s, 2 s, 4 s ... up to a minute between attempts.
                let backoff =
                    Duration::from_secs(1u64 << entry.0.min(6)).min(Duration::from_secs(60));
                entry.1 = Instant::now() + backoff;
            }
            Event::Message(conn, msg) => self.swarm.handle_message(conn, msg, now),
            Event::Uploaded(conn, bytes) => self.swarm.handle_uploaded(conn, bytes, now),
            Event::Disconnected(conn) => {
                self.closing.remove(&conn);
                if let Some(link) = self.peers.remove(&conn) {
                    link.cancel.cancel();
                    if let Some(addr) = link.addr {
                        // Reconnect later if it comes back; not immediately.
                        self.retry
                            .insert(addr, (1, Instant::now() + Duration::from_secs(2)));
                    }
                }
                self.swarm.handle_disconnected(conn, now);
            }
            Event::Verified {
                piece,
                data,
                ok,
                error,
            } => {
                if let Some(error) = error {
                    return Err(error.into());
                }
                self.swarm.handle_verified(piece, data, ok, now);
            }
            Event::Discovered(addrs) => {
                for addr in addrs {
                    if addr != self.listen_addr && !self.self_addrs.contains(&addr) {
                        self.known.insert(addr);
                        self.sources.heard_of([addr]);
                    }
                }
            }
        }
        Ok(())
    }

    fn drain_actions(&mut self) -> Result<(), NodeError> {
        while let Some(action) = self.swarm.poll_action() {
            match action {
                Action::Send { conn, msg } => self.send_to_peer(conn, PeerCmd::Send(msg)),
                Action::Upload {
                    conn,
                    piece,
                    offset,
                    length,
                } => self.send_to_peer(
                    conn,
                    PeerCmd::Upload {
                        piece,
                        offset,
                        length,
                    },
                ),
                Action::CancelUpload {
                    conn,
                    piece,
                    offset,
                    length,
                } => self.send_to_peer(
                    conn,
                    PeerCmd::CancelUpload {
                        piece,
                        offset,
                        length,
                    },
                ),
                Action::Verify { piece, data } => {
                    let ctx = self.ctx.clone();
                    let events = self.events_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let ok = sha256(&data) == *ctx.manifest.hash(piece);
                        let error = if ok {
                            ctx.storage.write_piece(&ctx.manifest, piece, &data).err()
                        } else {
                            None
                        };
                        let _ = events.blocking_send(Event::Verified {
                            piece,
                            data,
                            ok,
                            error,
                        });
                    });
                }
                Action::Close { conn, error } => {
                    if let Some(link) = self.peers.remove(&conn) {
                        if link.cmds.send(PeerCmd::Close(error)).is_err() {
                            link.cancel.cancel();
                        } else {
                            self.closing.insert(conn);
                        }
                        if let Some(addr) = link.addr {
                            self.retry
                                .insert(addr, (4, Instant::now() + Duration::from_secs(15)));
                        }
                    }
                }
                Action::Discovered(addrs) => {
                    for addr in addrs {
                        if addr != self.listen_addr && !self.self_addrs.contains(&addr) {
                            self.known.insert(addr);
                            self.sources.heard_of([addr]);
                        }
                    }
                }
                Action::Completed => {
                    tracing::info!("download complete");
                }
            }
        }
        Ok(())
    }

    /// Closes every connection as spec/P2P.md §3.10 says (what is queued first, then our FIN,
    /// then a brief drain) and waits, bounded, until each peer task has ended.
    async fn close_peers_gracefully(&mut self) {
        let links: Vec<(ConnId, PeerLink)> = self.peers.drain().collect();
        for (conn, link) in links {
            if link.cmds.send(PeerCmd::Close(None)).is_ok() {
                self.closing.insert(conn);
            } else {
                link.cancel.cancel();
            }
        }
        let deadline = Instant::now() + CLOSE_WRITE_TIMEOUT + LINGER_TIME + Duration::from_secs(1);
        while !self.closing.is_empty() {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some(Event::Disconnected(conn))) => {
                    self.closing.remove(&conn);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    fn send_to_peer(&mut self, conn: ConnId, cmd: PeerCmd) {
        if let Some(link) = self.peers.get(&conn) {
            // A closed channel means the peer's tasks ended; Disconnected is on its way.
            let _ = link.cmds.send(cmd);
        }
    }

    /// Dials known peers while below the connection limit, skipping connected, banned, our own
    /// and backing-off addresses.
    fn dial_more(&mut self) {
        if self.swarm.is_complete() {
            // Seeds wait to be dialled; leechers find them.
            return;
        }
        let now = Instant::now();
        let connected: HashSet<SocketAddr> = self.peers.values().filter_map(|l| l.addr).collect();
        let candidates: Vec<SocketAddr> = self
            .known
            .iter()
            .copied()
            .filter(|a| {
                !connected.contains(a)
                    && !self.dialing.contains(a)
                    && !self.self_addrs.contains(a)
                    && *a != self.listen_addr
                    && !self.swarm.is_banned(None, Some(*a))
                    && self.retry.get(a).is_none_or(|(_, at)| *at <= now)
            })
            .collect();
        for addr in candidates {
            if self.peers.len() + self.dialing.len() >= self.config.max_peers {
                break;
            }
            self.dialing.insert(addr);
            let ctx = self.ctx.clone();
            let events = self.events_tx.clone();
            let conn = ConnId(self.next_conn);
            self.next_conn += 1;
            let cancel = self.cancel.child_token();
            tokio::spawn(async move {
                let dial = tokio::time::timeout(ctx.handshake_timeout, ctx.connector.connect(addr));
                let reason = match dial.await {
                    Ok(Ok(stream)) => {
                        return run_peer(
                            stream,
                            Some(addr),
                            Some(addr),
                            conn,
                            ctx,
                            events,
                            cancel,
                            None,
                        )
                        .await
                    }
                    Ok(Err(e)) => crate::tracker::client::io_phrase(&e),
                    Err(_) => format!("no answer in {}s", ctx.handshake_timeout.as_secs()),
                };
                let _ = events.send(Event::DialFailed(addr, reason)).await;
            });
        }
    }

    fn spawn_peer(
        &mut self,
        stream: BoxedStream,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let ctx = self.ctx.clone();
        let events = self.events_tx.clone();
        let cancel = self.cancel.child_token();
        tokio::spawn(async move {
            run_peer(
                stream,
                Some(remote),
                None,
                conn,
                ctx,
                events,
                cancel,
                Some(permit),
            )
            .await
        });
    }
}

/// Handshakes, registers with the actor, then runs a reader loop here and a writer task beside
/// it until either ends or `cancel` fires.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all, fields(conn = conn.0, peer = ?dialed))]
async fn run_peer(
    mut stream: BoxedStream,
    remote: Option<SocketAddr>,
    dialed: Option<SocketAddr>,
    conn: ConnId,
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    handshake_permit: Option<OwnedSemaphorePermit>,
) {
    let hello = tokio::time::timeout(
        ctx.handshake_timeout,
        handshake(&mut stream, dialed.is_some(), &ctx),
    );
    let hello = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        hello = hello => hello,
    };
    drop(handshake_permit);
    let (send, recv, leftover, peer_id, listen_port) = match hello {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "peer handshake failed");
            if let Some(addr) = dialed {
                let reason = format!("handshake failed: {e}");
                let _ = events.send(Event::DialFailed(addr, reason)).await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!("peer handshake timed out");
            if let Some(addr) = dialed {
                let reason = format!("no handshake in {}s", ctx.handshake_timeout.as_secs());
                let _ = events.send(Event::DialFailed(addr, reason)).await;
            }
            return;
        }
    };
    let listen_addr = dialed.or_else(|| {
        remote
            .filter(|_| listen_port != 0)
            .map(|r| SocketAddr::new(r.ip(), listen_port))
    });
    let (mut read_half, write_half) = tokio::io::split(stream);
    let (cmds_tx, cmds_rx) = mpsc::unbounded_channel();
    if events
        .send(Event::Connected {
            conn,
            peer_id,
            listen_addr,
            dialed,
            cmds: cmds_tx.clone(),
            cancel: cancel.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    // Fired by the writer once it has sent its last frame and shut down its side.
    let closing = CancellationToken::new();
    let (writer_ctx, writer_events) = (ctx.clone(), events.clone());
    let (writer_cancel, writer_closing) = (cancel.clone(), closing.clone());
    let mut writer = tokio::spawn(async move {
        let mut write_half = write_half;
        write_loop(
            &mut write_half,
            send,
            cmds_rx,
            conn,
            writer_ctx,
            writer_events,
            writer_cancel,
            writer_closing,
        )
        .await;
        // Our FIN on every way out (as dropping a TCP write half sent it), so the peer's
        // reader sees the end instead of waiting for its timeout.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write_half.shutdown()).await;
    });
    let end = read_loop(
        &mut read_half,
        recv,
        leftover,
        conn,
        &events,
        &cancel,
        &closing,
        &cmds_tx,
    )
    .await;
    match end {
        ReadEnd::Violation(error) => {
            // spec/P2P.md §3.10: one ERROR frame, our FIN, a brief drain, then close.
            let _ = cmds_tx.send(PeerCmd::Close(error));
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT * 2, &mut writer).await;
            cancel.cancel();
            let _ = writer.await;
            // The swarm learns at once; the drain only protects the ERROR in flight.
            let _ = events.send(Event::Disconnected(conn)).await;
            drain(&mut read_half).await;
        }
        ReadEnd::Closing => {
            // The swarm has already forgotten this peer; a node that stops waits for this
            // Disconnected, so it comes after the drain.
            cancel.cancel();
            let _ = writer.await;
            drain(&mut read_half).await;
            let _ = events.send(Event::Disconnected(conn)).await;
        }
        ReadEnd::Gone => {
            cancel.cancel();
            let _ = writer.await;
            let _ = events.send(Event::Disconnected(conn)).await;
        }
    }
}

/// How long the ERROR frame before a close may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After sending its last frame and shutting down its side, a closing peer reads and discards
/// for this long or this many bytes (spec/P2P.md §3.10): closing a socket with unread data
/// makes the kernel send a reset, which can destroy the ERROR frame still in flight. The byte
/// bound covers a full pipeline of blocks (64 × 16 KiB) already on its way.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// Reads and discards until end of stream, [`LINGER_TIME`] or [`LINGER_BYTES`].
async fn drain(read: &mut ReadHalf<BoxedStream>) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut scratch = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, read.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum HandshakeFailure {
    #[error(transparent)]
    Session(#[from] ferry_protocol::Error),
    #[error("peer handshake: {0}")]
    Wire(#[from] wire::WireError),
    #[error("expected a peer handshake message, got {0:?}")]
    Unexpected(ferry_protocol::FrameType),
    #[error("peer is in a different swarm")]
    WrongContent,
}

async fn handshake(
    stream: &mut BoxedStream,
    outbound: bool,
    ctx: &Ctx,
) -> Result<(SendHalf, RecvHalf, BytesMut, PeerId, u16), HandshakeFailure> {
    let (session, mut buf) = if outbound {
        let mut config = ClientConfig::new(ctx.key.clone());
        config.max_body = wire::MAX_BODY;
        ferry_protocol::tokio::client_handshake(stream, config).await?
    } else {
        let mut config = ServerConfig::new(ctx.key.clone());
        config.max_body = wire::MAX_BODY;
        ferry_protocol::tokio::server_handshake(stream, config).await?
    };
    let (mut send, mut recv) = session.into_split();
    let hello = PeerMessage::Handshake {
        content_id: ctx.manifest.content_id(),
        peer_id: ctx.peer_id,
        listen_port: ctx.listen_port,
    };
    let mut out = BytesMut::new();
    hello.write(&mut send, &mut out)?;
    stream
        .write_all(&out)
        .await
        .map_err(ferry_protocol::Error::Io)?;
    let frame = loop {
        if let Some(frame) = recv.read_frame(&mut buf)? {
            break frame;
        }
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(ferry_protocol::Error::Io)?
            == 0
        {
            return Err(ferry_protocol::Error::Closed.into());
        }
    };
    match PeerMessage::decode(frame.header.kind, frame.header.service, frame.body)? {
        PeerMessage::Handshake {
            content_id,
            peer_id,
            listen_port,
        } => {
            if content_id != ctx.manifest.content_id() {
                return Err(HandshakeFailure::WrongContent);
            }
            Ok((send, recv, buf, peer_id, listen_port))
        }
        _ => Err(HandshakeFailure::Unexpected(frame.header.kind)),
    }
}

/// Why [`read_loop`] returned.
#[derive(Debug)]
enum ReadEnd {
    /// The peer broke the wire rules: close after sending this error (`None`: the peer sent
    /// a malformed ERROR, which is never answered).
    Violation(Option<ErrorBody>),
    /// Our writer sent its last frame (a close asked for by the swarm).
    Closing,
    /// End of stream, an I/O error, shutdown, or the swarm actor is gone.
    Gone,
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    read: &mut ReadHalf<BoxedStream>,
    mut recv: ferry_protocol::RecvHalf,
    mut buf: BytesMut,
    conn: ConnId,
    events: &mpsc::Sender<Event>,
    cancel: &CancellationToken,
    closing: &CancellationToken,
    cmds: &mpsc::UnboundedSender<PeerCmd>,
) -> ReadEnd {
    loop {
        loop {
            let frame = match recv.read_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    // Over-long frames, bad records and bad magic end the connection
                    // (PROTOCOL.md §9 rows 1-9).
                    tracing::debug!(error = %e, code = %e.code(), "dropping peer: bad frame");
                    return ReadEnd::Violation(Some(wire::frame_error(&e)));
                }
            };
            let msg = match wire::inbound(&frame.header, frame.body) {
                wire::Inbound::Message(msg) => msg,
                wire::Inbound::Pong(id, payload) => {
                    let _ = cmds.send(PeerCmd::Pong(id, payload));
                    continue;
                }
                wire::Inbound::Ignore => continue,
                wire::Inbound::Close(error) => {
                    tracing::debug!(?error, "dropping peer: bad message");
                    return ReadEnd::Violation(error);
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return ReadEnd::Gone,
                _ = closing.cancelled() => return ReadEnd::Closing,
                sent = events.send(Event::Message(conn, msg)) => {
                    if sent.is_err() {
                        return ReadEnd::Gone;
                    }
                }
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return ReadEnd::Gone,
            _ = closing.cancelled() => return ReadEnd::Closing,
            n = read.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => return ReadEnd::Gone,
                Ok(_) => {}
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    write: &mut WriteHalf<BoxedStream>,
    mut send: ferry_protocol::SendHalf,
    mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
    conn: ConnId,
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    closing: CancellationToken,
) {
    let mut uploads: VecDeque<(PieceIndex, u32, u32)> = VecDeque::new();
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        // Take every queued command first so cancels and chokes reach the upload queue before
        // the next block is read.
        let cmd = if uploads.is_empty() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                cmd = cmds.recv() => match cmd { Some(cmd) => Some(cmd), None => return },
            }
        } else {
            match cmds.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        };
        out.clear();
        match cmd {
            Some(PeerCmd::Send(msg)) => {
                if matches!(msg, PeerMessage::Choke) {
                    // A choke discards the peer's queued requests (spec/P2P.md §4.3).
                    for _ in uploads.drain(..) {
                        let _ = events.send(Event::Uploaded(conn, 0)).await;
                    }
                }
                if msg.write(&mut send, &mut out).is_err() {
                    return;
                }
            }
            Some(PeerCmd::Upload {
                piece,
                offset,
                length,
            }) => {
                uploads.push_back((piece, offset, length));
                continue;
            }
            Some(PeerCmd::CancelUpload {
                piece,
                offset,
                length,
            }) => {
                let before = uploads.len();
                uploads.retain(|u| *u != (piece, offset, length));
                if uploads.len() < before {
                    let _ = events.send(Event::Uploaded(conn, 0)).await;
                }
                continue;
            }
            Some(PeerCmd::Close(error)) => {
                if let Some(body) = error {
                    let msg = PeerMessage::Error(body);
                    if msg.write(&mut send, &mut out).is_ok() {
                        let _ =
                            tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write.write_all(&out)).await;
                    }
                }
                // Our FIN follows the ERROR; the reader then drains until the peer's.
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write.shutdown()).await;
                closing.cancel();
                return;
            }
            Some(PeerCmd::Pong(id, payload)) => {
                let sent = send.write_frame(
                    ferry_protocol::FrameType::PONG,
                    ferry_protocol::Service::ECHO,
                    id,
                    &payload,
                    &mut out,
                );
                if sent.is_err() {
                    return;
                }
            }
            None => {
                let Some((piece, offset, length)) = uploads.pop_front() else {
                    continue;
                };
                // 16 KiB positioned reads are served from the page cache in microseconds, so
                // they run inline rather than on the blocking pool.
                let data = match ctx.storage.read(&ctx.manifest, piece, offset, length) {
                    Ok(mut data) => {
                        if ctx.corrupt_uploads {
                            data[0] ^= 0xff;
                        }
                        data
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a block to upload failed");
                        let _ = events.send(Event::Uploaded(conn, 0)).await;
                        continue;
                    }
                };
                let msg = PeerMessage::Piece {
                    piece: piece.get(),
                    offset,
                    data: data.into(),
                };
                if msg.write(&mut send, &mut out).is_err() {
                    return;
                }
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    r = write.write_all(&out) => if r.is_err() { return },
                }
                let _ = events.send(Event::Uploaded(conn, length as u64)).await;
                continue;
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = write.write_all(&out) => if r.is_err() { return },
        }
    }
}

/// Most byte-range fetches in flight to one server: below the server's per-connection limit
/// (32), so it never answers BUSY.
const SERVER_FETCHES_IN_FLIGHT: usize = 16;

/// Runs a ferry-server as a peer: greets the core with a full bitfield and an unchoke, turns
/// each block request into a byte-range fetch, and disconnects on the first failed fetch so its
/// outstanding requests go back to the swarm at once.
#[tracing::instrument(skip_all, fields(conn = conn.0, server = %source.url.host))]
async fn run_server_source(
    source: ServerSource,
    conn: ConnId,
    manifest: Arc<Manifest>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    sources: Arc<Sources>,
) {
    let client = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        c = SourceClient::connect(&source, manifest) => match c {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use server source");
                sources.server(&source.url.to_string(), Some(e.to_string()));
                return;
            }
        },
    };
    let (cmds_tx, mut cmds) = mpsc::unbounded_channel();
    let registered = Event::Connected {
        conn,
        peer_id: source.peer_id(),
        listen_addr: None,
        dialed: None,
        cmds: cmds_tx,
        cancel: cancel.clone(),
    };
    if events.send(registered).await.is_err() {
        return;
    }
    for msg in client.greeting() {
        if events.send(Event::Message(conn, msg)).await.is_err() {
            return;
        }
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(SERVER_FETCHES_IN_FLIGHT));
    let mut fetches = tokio::task::JoinSet::new();
    let mut keepalive = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            cmd = cmds.recv() => match cmd {
                None | Some(PeerCmd::Close(_)) => break,
                Some(PeerCmd::Send(PeerMessage::Request(block))) => {
                    let (client, events, permits, cancel) =
                        (client.clone(), events.clone(), permits.clone(), cancel.clone());
                    fetches.spawn(async move {
                        let Ok(_permit) = permits.acquire().await else { return };
                        match client.fetch_block(block).await {
                            Ok(msg) => {
                                let _ = events.send(Event::Message(conn, msg)).await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "server fetch failed; dropping the source");
                                cancel.cancel();
                            }
                        }
                    });
                }
                Some(_) => {}
            },
            _ = keepalive.tick() => {
                let _ = events.send(Event::Message(conn, PeerMessage::KeepAlive)).await;
            }
            Some(_) = fetches.join_next(), if !fetches.is_empty() => {}
        }
    }
    fetches.abort_all();
    let _ = events.send(Event::Disconnected(conn)).await;
}
