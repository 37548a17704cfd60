//! The tokio shell of a fleet node (spec/P2P.md §8.4-8.5): one UDP socket for the gossip core,
//! the manifest fetch, one swarm node for the newest release (downloading, then seeding), and
//! installs on a blocking thread. A publisher runs the same shell with its release already
//! complete and no install directory.
//!
//! Jobs move one way: fetch the manifest, download, install, seed. A newer record replaces
//! whatever job is running (the old swarm node stops; its partial directory is pruned later).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::channel::ChannelId;
use super::gossip::{Gossip, GossipConfig, GossipEvent};
use super::install::{Applied, InstallDir, InstallError};
use super::lan::{self, LanConfig};
use super::record::SignedRelease;
use super::wire::{self, Message, Role};
use crate::manifest::{ContentId, Manifest};
use crate::node::{self, NodeConfig, NodeHandle};
use crate::pieces::{Bitfield, Storage};

/// Largest manifest fetched by gossip (the 256 MiB file limit of §2.3 is for files on disk).
pub const MAX_MANIFEST: u32 = 64 << 20;
/// A manifest chunk not answered in this time is asked of another holder.
const CHUNK_TIMEOUT: Duration = Duration::from_millis(700);
/// How often jobs are looked at (progress, timeouts).
const TICK: Duration = Duration::from_millis(100);

/// How a fleet node runs.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub channel: ChannelId,
    /// Follower name shown by `fleet status`.
    pub name: String,
    /// UDP address of the gossip socket; port 0 picks one.
    pub gossip_listen: SocketAddr,
    /// Gossip addresses to start from (`--peer`).
    pub peers: Vec<SocketAddr>,
    pub gossip: GossipConfig,
    /// The swarm node's settings; `listen` (port 0 for a fresh one per release), suites and
    /// connector are used, peers are filled in from gossip.
    pub node: NodeConfig,
    /// Key for a release's `ferry://` source, if it names one.
    pub server_key: Option<ferry_protocol::Key>,
    /// A swarm with no peer for this long is restarted with every peer gossip knows.
    pub swarm_retry: Duration,
    /// An apply hook still running after this long is killed and counts as failed.
    pub hook_timeout: Duration,
    /// LAN discovery (§8.9): announce to and listen on this multicast group. None: off.
    pub lan: Option<LanConfig>,
}

impl FleetConfig {
    pub fn new(channel: ChannelId, name: &str) -> Self {
        Self {
            channel,
            name: name.to_owned(),
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            peers: Vec::new(),
            gossip: GossipConfig::default(),
            node: NodeConfig::default(),
            server_key: None,
            swarm_retry: Duration::from_secs(3),
            hook_timeout: super::install::DEFAULT_HOOK_TIMEOUT,
            lan: None,
        }
    }
}

/// What a follower does, for the command line and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEvent {
    Accepted {
        version: u64,
        from: Option<SocketAddr>,
    },
    Rejected {
        from: SocketAddr,
        why: String,
    },
    Downloading {
        version: u64,
        peers: usize,
    },
    /// Pieces failed their hash (the swarm re-fetches them and bans the sender, §4.6).
    PiecesFailed {
        version: u64,
        hash_failures: u32,
        banned: usize,
    },
    Installed {
        version: u64,
        path: PathBuf,
    },
    ApplyFailed {
        version: u64,
        status: String,
        restored: Option<u64>,
    },
    /// Serving this version to the swarm on this TCP port.
    Seeding {
        version: u64,
        port: u16,
    },
    Error(String),
}

/// A running fleet node.
#[derive(Debug)]
pub struct FleetHandle {
    pub gossip_addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<FleetEvent>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl FleetHandle {
    /// Stops the node and waits for it (its swarm node too).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }

    /// Kills the node without any cleanup, as `kill -9` would (tests of restarts).
    pub fn abort(self) {
        self.task.abort();
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// What a publisher serves: its signed record, the manifest and the data.
#[derive(Debug)]
pub struct Published {
    pub record: SignedRelease,
    pub manifest: Arc<Manifest>,
    /// The directory holding the manifest's top-level entry.
    pub data_root: PathBuf,
}

/// Starts a follower installing into `dir` (spec §8.5).
pub async fn follow(
    config: FleetConfig,
    dir: PathBuf,
    apply: Option<String>,
    keep: usize,
) -> std::io::Result<FleetHandle> {
    let install = InstallDir::open(&dir).map_err(std::io::Error::other)?;
    start(
        config,
        Role::Follower,
        Some(Installer {
            dir: install,
            apply,
            keep,
        }),
        None,
    )
    .await
}

/// Starts a publisher: announces `published` and seeds its data until shut down.
pub async fn publish(config: FleetConfig, published: Published) -> std::io::Result<FleetHandle> {
    start(config, Role::Publisher, None, Some(published)).await
}

#[derive(Debug)]
struct Installer {
    dir: InstallDir,
    apply: Option<String>,
    keep: usize,
}

/// The job for the newest record.
#[derive(Debug)]
enum Job {
    Idle,
    FetchingManifest {
        version: u64,
        content_id: ContentId,
        buf: Vec<u8>,
        total: Option<u32>,
        asked: Option<(SocketAddr, Instant)>,
        /// Holders that answered badly, skipped until the list runs out.
        failed: HashSet<SocketAddr>,
    },
    Downloading {
        version: u64,
        manifest: Arc<Manifest>,
        node: NodeHandle,
        started: Instant,
        alone_since: Option<Instant>,
        failures: u32,
        /// Swarm addresses the node was given or has been handed a connection to.
        dialed: HashSet<SocketAddr>,
    },
    Installing {
        version: u64,
        node: NodeHandle,
        task: JoinHandle<Result<(PathBuf, Applied), InstallError>>,
    },
    Seeding {
        node: NodeHandle,
    },
}

/// The LAN discovery socket and when to announce next.
struct Lan {
    socket: UdpSocket,
    group: SocketAddr,
    announcement: Vec<u8>,
    interval: Duration,
}

struct Actor {
    config: FleetConfig,
    gossip: Gossip,
    socket: Arc<UdpSocket>,
    lan: Option<Lan>,
    installer: Option<Installer>,
    job: Job,
    events: mpsc::UnboundedSender<FleetEvent>,
    cancel: CancellationToken,
    members_saved: usize,
}

async fn start(
    config: FleetConfig,
    role: Role,
    installer: Option<Installer>,
    published: Option<Published>,
) -> std::io::Result<FleetHandle> {
    let socket = Arc::new(UdpSocket::bind(config.gossip_listen).await?);
    let gossip_addr = socket.local_addr()?;
    let now = Instant::now().into_std();
    let mut gossip = Gossip::new(
        config.channel,
        role,
        &config.name,
        config.gossip.clone(),
        rand::random(),
        now,
    );
    for &peer in &config.peers {
        gossip.add_seed(peer);
    }
    let (events_tx, events) = mpsc::unbounded_channel();
    let lan = config.lan.as_ref().and_then(|cfg| {
        let opened = lan::open(cfg.group, gossip_addr.ip())
            .and_then(|s| lan::prepare_sender(&socket, cfg.group).map(|()| s));
        match opened {
            Ok(lan_socket) => Some(Lan {
                socket: lan_socket,
                group: cfg.group,
                announcement: Message::announce(config.channel, role).to_datagram(0),
                interval: cfg.interval,
            }),
            Err(e) => {
                // Seeds and remembered members still work; the LAN is a convenience.
                let _ = events_tx.send(FleetEvent::Error(format!(
                    "LAN discovery on {} is off: {e}",
                    cfg.group
                )));
                None
            }
        }
    });
    let cancel = CancellationToken::new();
    let mut actor = Actor {
        config,
        gossip,
        socket,
        lan,
        installer,
        job: Job::Idle,
        events: events_tx,
        cancel: cancel.clone(),
        members_saved: 0,
    };
    if let Some(published) = published {
        actor.start_publisher(published).await?;
    } else {
        actor.restore().await;
    }
    let task = tokio::spawn(actor.run());
    Ok(FleetHandle {
        gossip_addr,
        events,
        cancel,
        task,
    })
}

impl Actor {
    fn emit(&self, event: FleetEvent) {
        let _ = self.events.send(event);
    }

    async fn start_publisher(&mut self, published: Published) -> std::io::Result<()> {
        let now = Instant::now().into_std();
        let version = published.record.version();
        self.gossip
            .offer(published.record, now)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.gossip.set_manifest(
            published.manifest.content_id(),
            Bytes::from(published.manifest.encode()),
        );
        let storage = Storage::open_existing(&published.data_root, &published.manifest)
            .map_err(std::io::Error::other)?;
        let have = Bitfield::full(published.manifest.piece_count());
        let node = self
            .start_node(published.manifest.clone(), Arc::new(storage), have, version)
            .await?;
        self.seeding(version, node);
        Ok(())
    }

    /// After a restart: the saved record, members and install state pick up where they were.
    async fn restore(&mut self) {
        let Some(installer) = &self.installer else {
            return;
        };
        let dir = installer.dir.clone();
        if let Ok(text) = std::fs::read_to_string(dir.state_file("members")) {
            for addr in text.lines().filter_map(|l| l.trim().parse().ok()) {
                self.gossip.add_seed(addr);
            }
        }
        let Ok(bytes) = std::fs::read(dir.state_file("record")) else {
            return;
        };
        let record = match SignedRelease::decode(&bytes) {
            Ok(record) if record.release().channel == self.config.channel => record,
            Ok(_) => return,
            Err(e) => {
                self.emit(FleetEvent::Error(format!("saved record ignored: {e}")));
                return;
            }
        };
        let now = Instant::now().into_std();
        if self.gossip.offer(record.clone(), now).is_err() {
            return;
        }
        self.begin(record).await;
    }

    /// Starts the job for a newly held record (or the saved one after a restart).
    async fn begin(&mut self, record: SignedRelease) {
        let version = record.version();
        let content_id = record.release().content_id;
        self.stop_job().await;
        self.gossip.set_local(self.running(), self.failed(), 0);
        let Some(installer) = &self.installer else {
            return;
        };
        let dir = installer.dir.clone();
        let saved = std::fs::read(dir.state_file(&format!("manifest-{version}")))
            .ok()
            .and_then(|b| Manifest::decode(&b).ok())
            .filter(|m| m.content_id() == content_id);
        match saved {
            Some(manifest) => self.have_manifest(version, Arc::new(manifest)).await,
            None => {
                self.job = Job::FetchingManifest {
                    version,
                    content_id,
                    buf: Vec::new(),
                    total: None,
                    asked: None,
                    failed: HashSet::new(),
                };
                // Asked now rather than at the next tick: this is on the path from publish to
                // the first download.
                self.step().await;
            }
        }
    }

    fn running(&self) -> u64 {
        self.installer
            .as_ref()
            .and_then(|i| i.dir.current())
            .map_or(0, |(v, _)| v)
    }

    fn failed(&self) -> u64 {
        self.installer
            .as_ref()
            .map_or(0, |i| i.dir.load_state().failed)
    }

    async fn stop_job(&mut self) {
        match std::mem::replace(&mut self.job, Job::Idle) {
            Job::Downloading { node, .. } | Job::Seeding { node, .. } => {
                let _ = node.shutdown().await;
            }
            Job::Installing { node, task, .. } => {
                // An install in progress finishes: it only renames and runs the hook.
                let _ = task.await;
                let _ = node.shutdown().await;
            }
            Job::Idle | Job::FetchingManifest { .. } => {}
        }
    }

    async fn start_node(
        &self,
        manifest: Arc<Manifest>,
        storage: Arc<Storage>,
        have: Bitfield,
        version: u64,
    ) -> std::io::Result<NodeHandle> {
        let mut config = self.config.node.clone();
        config.peers = self.gossip.swarm_peers(version);
        config.seed_after_complete = true;
        config.servers.clear();
        if let Some(record) = self.gossip.latest() {
            let source = &record.release().source;
            if !source.is_empty() && !have.is_full() {
                match (
                    source.parse::<ferry_common::FerryUrl>(),
                    &self.config.server_key,
                ) {
                    (Ok(url), Some(key)) => config.servers.push(crate::source::ServerSource {
                        url,
                        key: key.clone(),
                    }),
                    (Ok(_), None) => {
                        tracing::warn!(%source, "release names a server but no key was given")
                    }
                    (Err(e), _) => tracing::warn!(%source, error = %e, "ignoring release source"),
                }
            }
        }
        let node = node::start(manifest, storage, have, config)
            .await
            .map_err(std::io::Error::other)?;
        Ok(node)
    }

    fn seeding(&mut self, version: u64, node: NodeHandle) {
        let port = node.listen_addr.port();
        self.gossip.set_local(self.running(), self.failed(), port);
        self.emit(FleetEvent::Seeding { version, port });
        self.job = Job::Seeding { node };
    }

    /// The manifest is known: install a complete version, or download it.
    async fn have_manifest(&mut self, version: u64, manifest: Arc<Manifest>) {
        let Some(installer) = &self.installer else {
            return;
        };
        let dir = installer.dir.clone();
        self.gossip
            .set_manifest(manifest.content_id(), Bytes::from(manifest.encode()));
        let state = dir.load_state();
        let (root, complete) = if dir.has_version(version) {
            (dir.version_dir(version), true)
        } else {
            (dir.partial_dir(version), false)
        };
        let opened = {
            let (root, manifest) = (root.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || {
                let storage = if complete {
                    Storage::open_existing(&root, &manifest)?
                } else {
                    Storage::create(&root, &manifest)?
                };
                // Whatever is on disk and matches is kept: a restarted download resumes.
                let have = storage.verify(&manifest, &|| {});
                Ok::<_, crate::pieces::StorageError>((storage, have))
            })
            .await
        };
        let (storage, have) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                self.emit(FleetEvent::Error(format!(
                    "cannot open version {version} under {}: {e}",
                    root.display()
                )));
                return;
            }
            Err(e) => {
                self.emit(FleetEvent::Error(format!("opening version {version}: {e}")));
                return;
            }
        };
        let full = have.is_full();
        let node = match self
            .start_node(manifest.clone(), Arc::new(storage), have, version)
            .await
        {
            Ok(node) => node,
            Err(e) => {
                self.emit(FleetEvent::Error(format!("cannot start the swarm: {e}")));
                return;
            }
        };
        if full && (complete || version <= state.applied) {
            if version > state.applied {
                self.install(version, manifest, node);
            } else {
                self.seeding(version, node);
            }
            return;
        }
        if full {
            self.install(version, manifest, node);
            return;
        }
        self.gossip
            .set_local(self.running(), self.failed(), node.listen_addr.port());
        let peers = self.gossip.swarm_peers(version).len();
        // Timestamped in the log: the fleet bench measures publish-to-first-download from it.
        tracing::info!(version, peers, "download started");
        self.emit(FleetEvent::Downloading { version, peers });
        let dialed = self.gossip.swarm_peers(version).into_iter().collect();
        self.job = Job::Downloading {
            version,
            manifest,
            node,
            started: Instant::now(),
            alone_since: None,
            failures: 0,
            dialed,
        };
    }

    /// Every piece is verified: name the version, switch, run the hook (blocking thread).
    fn install(&mut self, version: u64, manifest: Arc<Manifest>, node: NodeHandle) {
        let Some(installer) = &self.installer else {
            return;
        };
        let dir = installer.dir.clone();
        let apply = installer.apply.clone();
        let hook_timeout = self.config.hook_timeout;
        let top = top_entry(&manifest);
        let task = tokio::task::spawn_blocking(move || {
            if !dir.has_version(version) {
                dir.finish_version(version)?;
            }
            let path = match &top {
                Some(top) => dir.version_dir(version).join(top),
                None => dir.version_dir(version),
            };
            let applied =
                dir.apply_with_timeout(version, top.as_deref(), apply.as_deref(), hook_timeout)?;
            Ok((path, applied))
        });
        self.job = Job::Installing {
            version,
            node,
            task,
        };
    }

    async fn run(mut self) {
        let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
        let mut lan_buf = vec![0u8; wire::MAX_DATAGRAM + 1];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_announce = Instant::now();
        loop {
            self.flush().await;
            let deadline = Instant::from_std(self.gossip.poll_timeout());
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => {
                    match received {
                        Ok((len, from)) => {
                            self.gossip.handle_datagram(from, &buf[..len], Instant::now().into_std());
                        }
                        // ICMP port-unreachable from a departed member surfaces here.
                        Err(e) => tracing::debug!(error = %e, "gossip socket"),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.gossip.handle_timeout(Instant::now().into_std());
                    self.save_members();
                }
                received = async {
                    match &self.lan {
                        Some(lan) => lan.socket.recv_from(&mut lan_buf).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok((len, from)) = received {
                        self.gossip.handle_announce(from, &lan_buf[..len], Instant::now().into_std());
                    }
                }
                _ = tokio::time::sleep_until(next_announce), if self.lan.is_some() => {
                    if let Some(lan) = &self.lan {
                        if let Err(e) = self.socket.send_to(&lan.announcement, lan.group).await {
                            tracing::debug!(group = %lan.group, error = %e, "announcement not sent");
                        }
                        next_announce = Instant::now() + lan.interval;
                    }
                }
                _ = tick.tick() => self.step().await,
            }
            self.drain_events().await;
        }
        self.save_members();
        self.stop_job().await;
    }

    async fn flush(&mut self) {
        while let Some((to, datagram)) = self.gossip.poll_transmit() {
            if let Err(e) = self.socket.send_to(&datagram, to).await {
                tracing::debug!(%to, error = %e, "gossip send failed");
            }
        }
    }

    async fn drain_events(&mut self) {
        while let Some(event) = self.gossip.poll_event() {
            match event {
                GossipEvent::Accepted(record) => {
                    let version = record.version();
                    tracing::info!(version, "release accepted");
                    if let Some(installer) = &self.installer {
                        if let Err(e) = installer.dir.write_atomic("record", record.as_bytes()) {
                            self.emit(FleetEvent::Error(e.to_string()));
                        }
                    }
                    self.emit(FleetEvent::Accepted {
                        version,
                        from: None,
                    });
                    self.begin(record).await;
                }
                GossipEvent::Rejected { from, why } => {
                    // Every rejection is logged (§8.4): a forged or replayed record is news.
                    tracing::warn!(%from, "release rejected: {why}");
                    self.emit(FleetEvent::Rejected {
                        from,
                        why: why.to_string(),
                    });
                }
                GossipEvent::ManifestChunk {
                    from,
                    content_id,
                    offset,
                    total,
                    data,
                } => {
                    self.manifest_chunk(from, content_id, offset, total, data)
                        .await
                }
                GossipEvent::ManifestRefused { from, .. } => {
                    if let Job::FetchingManifest { asked, failed, .. } = &mut self.job {
                        failed.insert(from);
                        if asked.is_some_and(|(to, _)| to == from) {
                            *asked = None;
                        }
                    }
                }
            }
        }
    }

    async fn manifest_chunk(
        &mut self,
        from: SocketAddr,
        content_id: ContentId,
        offset: u32,
        total: u32,
        data: Bytes,
    ) {
        let Job::FetchingManifest {
            version,
            content_id: wanted,
            buf,
            total: known_total,
            asked,
            failed,
        } = &mut self.job
        else {
            return;
        };
        if content_id != *wanted
            || !asked.is_some_and(|(to, _)| to == from)
            || offset as usize != buf.len()
        {
            return;
        }
        if total > MAX_MANIFEST || known_total.is_some_and(|t| t != total) {
            failed.insert(from);
            *asked = None;
            return;
        }
        *known_total = Some(total);
        buf.extend_from_slice(&data);
        *asked = None;
        if buf.len() < total as usize {
            // The next chunk at once from the same holder: a manifest of N chunks then takes
            // N round trips, not N ticks.
            *asked = Some((from, Instant::now()));
            self.gossip
                .request_manifest(from, content_id, buf.len() as u32);
            return;
        }
        let version = *version;
        // The content id is the hash of the info section: a holder cannot send another.
        match Manifest::decode(buf) {
            Ok(manifest) if manifest.content_id() == content_id => {
                if let Some(installer) = &self.installer {
                    let name = format!("manifest-{version}");
                    if let Err(e) = installer.dir.write_atomic(&name, buf) {
                        self.emit(FleetEvent::Error(e.to_string()));
                    }
                }
                self.have_manifest(version, Arc::new(manifest)).await;
            }
            _ => {
                tracing::warn!(%from, version, "manifest does not match the release's content id");
                buf.clear();
                *known_total = None;
                failed.insert(from);
            }
        }
    }

    /// Progress of the current job: manifest requests, download completion, installs.
    async fn step(&mut self) {
        let now = Instant::now();
        match &mut self.job {
            Job::Idle | Job::Seeding { .. } => {}
            Job::FetchingManifest {
                version,
                content_id,
                buf,
                asked,
                failed,
                ..
            } => {
                if asked.is_some_and(|(_, at)| now.duration_since(at) < CHUNK_TIMEOUT) {
                    return;
                }
                if let Some((to, _)) = asked.take() {
                    failed.insert(to);
                }
                let holders = self.gossip.manifest_holders(*version);
                let next = holders
                    .iter()
                    .find(|h| !failed.contains(h))
                    .or_else(|| {
                        // Everyone failed once: start over rather than give up.
                        failed.clear();
                        holders.first()
                    })
                    .copied();
                if let Some(to) = next {
                    *asked = Some((to, now));
                    let (id, offset) = (*content_id, buf.len() as u32);
                    self.gossip.request_manifest(to, id, offset);
                }
            }
            Job::Downloading {
                version,
                node,
                alone_since,
                failures,
                manifest,
                started,
                dialed,
            } => {
                let stats = *node.stats.borrow();
                if stats.hash_failures > *failures {
                    *failures = stats.hash_failures;
                    let event = FleetEvent::PiecesFailed {
                        version: *version,
                        hash_failures: stats.hash_failures,
                        banned: stats.banned,
                    };
                    let _ = self.events.send(event);
                }
                if stats.have == stats.pieces {
                    let (version, manifest) = (*version, manifest.clone());
                    tracing::info!(version, elapsed = ?started.elapsed(), "download complete");
                    if let Job::Downloading { node, .. } =
                        std::mem::replace(&mut self.job, Job::Idle)
                    {
                        self.install(version, manifest, node);
                    }
                    return;
                }
                // Members that started serving this version since the node started: the node
                // takes its peers at start, so connections to the new ones are handed to it.
                for addr in self.gossip.swarm_peers(*version) {
                    if dialed.insert(addr) {
                        let connector = self.config.node.connector.clone();
                        let adder = node.adder.clone();
                        let limit = self.config.node.handshake_timeout;
                        tokio::spawn(async move {
                            let added = match tokio::time::timeout(limit, connector.connect(addr))
                                .await
                            {
                                Ok(Ok(stream)) => adder.outbound(stream, Some(addr), None).await,
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(_) => Err(format!("no answer in {} s", limit.as_secs())),
                            };
                            if let Err(e) = added {
                                tracing::debug!(%addr, "swarm peer from gossip not added: {e}");
                            }
                        });
                    }
                }
                if stats.peers > 0 {
                    *alone_since = None;
                    return;
                }
                let since = *alone_since.get_or_insert(now);
                if now.duration_since(since) < self.config.swarm_retry
                    || self.gossip.swarm_peers(*version).is_empty()
                {
                    return;
                }
                // No peer for a while but gossip knows some: the node takes its peers only at
                // start, so start it again with every one (it resumes from the disk).
                let (version, manifest) = (*version, manifest.clone());
                self.stop_job().await;
                self.have_manifest(version, manifest).await;
            }
            Job::Installing { task, .. } => {
                if !task.is_finished() {
                    return;
                }
                let Job::Installing {
                    version,
                    node,
                    task,
                } = std::mem::replace(&mut self.job, Job::Idle)
                else {
                    return;
                };
                match task.await {
                    Ok(Ok((path, Applied::Ok))) => {
                        tracing::info!(version, path = %path.display(), "release installed");
                        self.emit(FleetEvent::Installed { version, path });
                    }
                    Ok(Ok((_, Applied::HookFailed { status, restored }))) => {
                        tracing::warn!(version, %status, ?restored, "apply hook failed; current restored");
                        self.emit(FleetEvent::ApplyFailed {
                            version,
                            status,
                            restored,
                        });
                    }
                    Ok(Err(e)) => self.emit(FleetEvent::Error(format!(
                        "installing version {version}: {e}"
                    ))),
                    Err(e) => self.emit(FleetEvent::Error(format!(
                        "installing version {version}: {e}"
                    ))),
                }
                if let Some(installer) = &self.installer {
                    if let Err(e) = installer.dir.prune(installer.keep, version) {
                        self.emit(FleetEvent::Error(e.to_string()));
                    }
                }
                self.seeding(version, node);
            }
        }
    }

    /// Keeps the members heard from, so that a restarted follower knows whom to ask.
    fn save_members(&mut self) {
        let Some(installer) = &self.installer else {
            return;
        };
        let heard: Vec<String> = self
            .gossip
            .members()
            .filter(|m| m.last_heard.is_some())
            .map(|m| m.addr.to_string())
            .collect();
        if heard.len() == self.members_saved {
            return;
        }
        self.members_saved = heard.len();
        let mut text = heard.join("\n");
        text.push('\n');
        if let Err(e) = installer.dir.write_atomic("members", text.as_bytes()) {
            tracing::warn!(error = %e, "cannot save the members");
        }
    }
}

impl std::fmt::Debug for Lan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lan")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor").finish_non_exhaustive()
    }
}

/// The manifest's single top-level entry, which `current` names (None if there is not one).
pub fn top_entry(manifest: &Manifest) -> Option<String> {
    let top = manifest.files().first()?.path.components().next()?;
    manifest
        .files()
        .iter()
        .all(|f| f.path.components().next() == Some(top))
        .then(|| top.to_owned())
}
