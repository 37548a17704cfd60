//! The hub: accepts identity-handshake connections and serves names, resolution, presence,
//! relays and punch coordination (spec/HUB.md). One task per connection; the shared state is a
//! few mutex-guarded tables, each held only for a lookup or an insert (never across an await).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::noise::{AcceptConfig, ServerIdentityConfig};
use ferry_protocol::{ErrorBody, ErrorCode, Frame, FrameType, RequestId, Service};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{Framed, FramedParts};
use tracing::{debug, info, warn};

use crate::codec::{HubCodec, Out, Prefixed};

/// Swarm peers through the hub (HUB.md §3.8, §3.9); a child module so it reads the presences.
#[path = "content.rs"]
pub mod content;
use crate::names::{self, Store};
use crate::throttle::{Rate, Throttle};
use crate::wire::{self, codes, Event, HintSource, Punch, TOKEN_LEN};

/// Limits of one hub (HUB.md §7).
#[derive(Debug, Clone)]
pub struct HubLimits {
    /// Connections at once, handshakes included.
    pub max_connections: usize,
    /// Time allowed for the identity handshake.
    pub handshake_timeout: Duration,
    /// A connection that sends no frame for this long is closed (nodes ping every 25 s).
    pub idle_timeout: Duration,
    /// Requests (register, resolve, punch, relay) per node id.
    pub per_id: Rate,
    /// Requests per source IP address, over all its ids.
    pub per_ip: Rate,
    /// Relays spliced at once, over all identities.
    pub max_relays: usize,
    /// Relays one client identity may have at once.
    pub max_relays_per_id: usize,
    /// Bytes (both directions) the relays one client identity asked for may carry per hour.
    pub relay_bytes_per_hour: u64,
    /// Bytes per second one client identity's relays may carry together.
    pub relay_rate: u64,
    /// How long a client waits for the node's side of a relay.
    pub relay_wait: Duration,
    /// How often the hub measures a present node's RTT.
    pub rtt_interval: Duration,
    /// How long a node's content index entries outlive its last presence (§3.8).
    pub index_grace: Duration,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            per_id: Rate {
                burst: 20,
                per_second: 5,
            },
            per_ip: Rate {
                burst: 100,
                per_second: 50,
            },
            max_relays: 256,
            max_relays_per_id: 8,
            relay_bytes_per_hour: 4 << 30,
            relay_rate: 25_000_000,
            relay_wait: Duration::from_secs(10),
            rtt_interval: Duration::from_secs(60),
            index_grace: content::DEFAULT_GRACE,
        }
    }
}

/// Who may register names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// First come, first served.
    Open,
    /// Only with an invite code from `ferry-hub invite`.
    InviteOnly,
}

/// A hub's settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub identity: Identity,
    pub listen: SocketAddr,
    /// Where names are kept (`None`: in memory only).
    pub state: Option<PathBuf>,
    pub registration: Registration,
    pub limits: HubLimits,
}

impl HubConfig {
    pub fn new(identity: Identity, listen: SocketAddr) -> Self {
        Self {
            identity,
            listen,
            state: None,
            registration: Registration::Open,
            limits: HubLimits::default(),
        }
    }
}

/// A node with a control connection.
#[derive(Debug)]
struct Online {
    conn: u64,
    id: NodeId,
    addrs: Vec<SocketAddr>,
    reflected: SocketAddr,
    events: mpsc::Sender<Event>,
    rtt: Duration,
}

type Spliced = Framed<TcpStream, HubCodec>;

#[derive(Debug)]
struct Pending {
    node: NodeId,
    client: NodeId,
    deliver: oneshot::Sender<Spliced>,
}

#[derive(Debug, Default)]
struct Relays {
    pending: HashMap<[u8; TOKEN_LEN], Pending>,
    active: usize,
    per_id: HashMap<NodeId, usize>,
    /// Bytes used per client identity in the current hour, and when that hour started.
    used: HashMap<NodeId, (u64, Instant)>,
    /// Byte-rate buckets per client identity: (tokens, at).
    rate: HashMap<NodeId, (f64, Instant)>,
}

/// Counters a test or an operator can read.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Bytes the hub spliced, both directions.
    pub relayed_bytes: AtomicU64,
    /// Requests refused by throttling.
    pub throttled: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    id: NodeId,
    identity: ServerIdentityConfig,
    registration: Registration,
    limits: HubLimits,
    store: Mutex<Store>,
    online: Mutex<HashMap<String, Online>>,
    relays: Mutex<Relays>,
    content: Mutex<content::Index>,
    by_id: Mutex<Throttle<NodeId>>,
    by_ip: Mutex<Throttle<IpAddr>>,
    slots: Arc<Semaphore>,
    next_conn: AtomicU64,
    stats: Arc<HubStats>,
    /// Every relayed chunk is copied here when set (tests check the hub sees no plaintext).
    tap: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    /// UDP reflect (HUB.md §3.7): each connection's token, and the UDP address its reflect
    /// datagrams last came from, by connection.
    udp_tokens: Mutex<HashMap<[u8; TOKEN_LEN], u64>>,
    udp_seen: Mutex<HashMap<u64, SocketAddr>>,
    /// Reflect datagrams per source IP address.
    udp_by_ip: Mutex<Throttle<IpAddr>>,
}

/// A bound hub, ready to [`run`](Hub::run).
#[derive(Debug)]
pub struct Hub {
    listener: TcpListener,
    /// The same port over UDP, for the reflect exchange (§3.7).
    udp: UdpSocket,
    shared: Arc<Shared>,
}

/// A refusal: code and one sentence.
type Refusal = (ErrorCode, String);

impl Hub {
    /// Opens the store and binds the listen address.
    pub async fn bind(config: HubConfig) -> std::io::Result<Hub> {
        let store = match &config.state {
            Some(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || Store::open(&dir))
                    .await
                    .map_err(std::io::Error::other)??
            }
            None => Store::in_memory(),
        };
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        // TCP and UDP on the same port (port 0 picks the TCP port, then takes it for UDP too).
        let port = listener.local_addr()?.port();
        let udp_addr = SocketAddr::new(config.listen.ip(), port);
        let udp = UdpSocket::bind(udp_addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {udp_addr} (udp): {e}"))
        })?;
        let limits = config.limits.clone();
        Ok(Hub {
            listener,
            udp,
            shared: Arc::new(Shared {
                id: config.identity.id(),
                identity: ServerIdentityConfig::new(config.identity),
                registration: config.registration,
                store: Mutex::new(store),
                online: Mutex::default(),
                relays: Mutex::default(),
                content: Mutex::new(content::Index::new(
                    content::IndexLimits::default(),
                    limits.index_grace,
                )),
                by_id: Mutex::new(Throttle::new(limits.per_id, 100_000)),
                by_ip: Mutex::new(Throttle::new(limits.per_ip, 100_000)),
                slots: Arc::new(Semaphore::new(limits.max_connections)),
                limits,
                next_conn: AtomicU64::new(1),
                stats: Arc::default(),
                tap: Mutex::new(None),
                udp_tokens: Mutex::default(),
                udp_seen: Mutex::default(),
                udp_by_ip: Mutex::new(Throttle::new(config.limits.per_ip, 100_000)),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The hub's node id (clients name it as `ferry://ID@HOST/`).
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    pub fn stats(&self) -> Arc<HubStats> {
        self.shared.stats.clone()
    }

    /// Copies every relayed chunk to the returned channel (for tests: the hub sees only
    /// ciphertext).
    pub fn tap_relays(&self) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.shared.tap) = Some(tx);
        rx
    }

    /// Serves until `shutdown` completes; open connections are dropped with the runtime task.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        let addr = self.listener.local_addr()?;
        info!(%addr, id = %self.shared.id, "hub listening");
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(reflect_loop(self.shared.clone(), Arc::new(self.udp)));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.shared.slots.clone().try_acquire_owned() else {
                debug!(%peer, "connection refused: the hub is at its connection limit");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            tasks.spawn(async move {
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                serve(&shared, stream, peer).await;
                shared.stats.connections.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
            // Reap finished tasks so the set does not grow with history.
            while tasks.try_join_next().is_some() {}
        }
        tasks.shutdown().await;
        info!("hub stopped");
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a table's lock leaves it consistent (every update is one insert
    // or remove), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error_out(service: Service, id: RequestId, code: ErrorCode, message: &str) -> Out {
    let body = ErrorBody::new(code, message);
    let mut b = BytesMut::with_capacity(body.encoded_len());
    body.encode(&mut b);
    Out::new(FrameType::ERROR, service, id, b.freeze())
}

fn response(service: Service, id: RequestId, body: Bytes) -> Out {
    Out::new(FrameType::RESPONSE, service, id, body)
}

/// What ends a connection's frame loop.
enum Next {
    Close,
    /// The connection becomes the client side of a relay to this node.
    RelayClient {
        node: NodeId,
        client: NodeId,
        deliver: oneshot::Receiver<Spliced>,
        id: RequestId,
        token: [u8; TOKEN_LEN],
    },
    /// The connection is the node side of a relay; hand it over.
    RelayNode {
        deliver: oneshot::Sender<Spliced>,
    },
}

async fn serve(shared: &Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let accept = AcceptConfig {
        psk: None,
        identity: Some(shared.identity.clone()),
    };
    let handshake = tokio::time::timeout(
        shared.limits.handshake_timeout,
        ferry_protocol::tokio::server_accept(&mut stream, accept),
    )
    .await;
    let (session, principal, leftover) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            debug!(%peer, "handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "handshake timed out");
            return;
        }
    };
    // AnyIdentity names the principal by the id it proved.
    let Ok(client) = principal.name.parse::<NodeId>() else {
        return;
    };
    let mut parts = FramedParts::new::<Out>(stream, HubCodec::new(session));
    parts.read_buf = leftover;
    let mut framed = Framed::from_parts(parts);
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut c = Conn {
        shared: shared.clone(),
        conn,
        client,
        peer,
        presence: None,
        events: None,
        probe: None,
        udp_token: None,
    };
    let next = c.frames(&mut framed).await;
    c.leave();
    c.forget_udp();
    match next {
        Next::Close => {}
        Next::RelayNode { deliver } => {
            // The client's task owns the splice from here; if it gave up, this drops.
            let _ = deliver.send(framed);
        }
        Next::RelayClient {
            node,
            client,
            deliver,
            id,
            token,
        } => {
            let wait = shared.limits.relay_wait;
            let node_side = tokio::time::timeout(wait, deliver).await;
            lock(&shared.relays).pending.remove(&token);
            let node_side = match node_side {
                Ok(Ok(node_side)) => node_side,
                _ => {
                    let secs = wait.as_secs();
                    let _ = framed
                        .send(error_out(
                            wire::RELAY,
                            id,
                            codes::RELAY_TIMEOUT,
                            &format!("the node did not open its side of the relay within {secs} s"),
                        ))
                        .await;
                    release_slot(shared, &client);
                    return;
                }
            };
            let answer = wire::RelayResponse { peer: node }.to_bytes();
            if framed.send(response(wire::RELAY, id, answer)).await.is_ok() {
                debug!(%client, %node, "relay spliced");
                splice(shared, client, framed, node_side).await;
            }
            release_slot(shared, &client);
        }
    }
}

fn release_slot(shared: &Shared, client: &NodeId) {
    let mut relays = lock(&shared.relays);
    relays.active = relays.active.saturating_sub(1);
    if let Some(n) = relays.per_id.get_mut(client) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            relays.per_id.remove(client);
        }
    }
}

struct Conn {
    shared: Arc<Shared>,
    conn: u64,
    client: NodeId,
    peer: SocketAddr,
    /// The name and request id of this connection's presence.
    presence: Option<(String, RequestId)>,
    events: Option<mpsc::Receiver<Event>>,
    /// The RTT probe in flight: its payload and when it left.
    probe: Option<(u64, Instant)>,
    /// This connection's UDP reflect token (§3.7), once asked for.
    udp_token: Option<[u8; TOKEN_LEN]>,
}

impl Conn {
    async fn frames(&mut self, framed: &mut Framed<TcpStream, HubCodec>) -> Next {
        let idle = self.shared.limits.idle_timeout;
        let mut rtt_tick = tokio::time::interval(self.shared.limits.rtt_interval);
        loop {
            let has_events = self.events.is_some();
            tokio::select! {
                frame = tokio::time::timeout(idle, framed.next()) => {
                    let frame = match frame {
                        Err(_) => {
                            let secs = idle.as_secs();
                            let _ = framed.send(error_out(Service::HANDSHAKE, RequestId(0), ErrorCode::TIMEOUT,
                                &format!("no frame for {secs} s"))).await;
                            return Next::Close;
                        }
                        Ok(None) => return Next::Close,
                        Ok(Some(Err(e))) => {
                            debug!(peer = %self.peer, "connection failed: {e}");
                            return Next::Close;
                        }
                        Ok(Some(Ok(frame))) => frame,
                    };
                    match self.frame(frame).await {
                        Ok(Step::Reply(out)) => {
                            if framed.send(out).await.is_err() {
                                return Next::Close;
                            }
                        }
                        Ok(Step::Nothing) => {}
                        Ok(Step::Then(out, next)) => {
                            if let Some(out) = out {
                                if framed.send(out).await.is_err() {
                                    return Next::Close;
                                }
                            }
                            return next;
                        }
                        Err(out) => {
                            let _ = framed.send(out).await;
                            return Next::Close;
                        }
                    }
                }
                event = recv_event(&mut self.events), if has_events => {
                    let Some((_, id)) = &self.presence else { continue };
                    let id = *id;
                    match event {
                        Some(event) => {
                            let out = Out::new(FrameType::DATA, wire::PRESENCE, id, event.to_bytes());
                            if framed.send(out).await.is_err() {
                                return Next::Close;
                            }
                        }
                        None => {
                            // A newer control connection took the name over.
                            let _ = framed.send(error_out(wire::PRESENCE, id, codes::SUPERSEDED,
                                "a newer control connection for this name replaced this one")).await;
                            self.presence = None;
                            self.events = None;
                            return Next::Close;
                        }
                    }
                }
                _ = rtt_tick.tick(), if has_events => {
                    let nonce = rand::random::<u64>();
                    self.probe = Some((nonce, Instant::now()));
                    let out = Out::new(FrameType::PING, Service::ECHO, RequestId(0), Bytes::copy_from_slice(&nonce.to_be_bytes()));
                    if framed.send(out).await.is_err() {
                        return Next::Close;
                    }
                }
            }
        }
    }

    /// Drops this connection's UDP token and reflected address.
    fn forget_udp(&mut self) {
        if let Some(token) = self.udp_token.take() {
            lock(&self.shared.udp_tokens).remove(&token);
        }
        lock(&self.shared.udp_seen).remove(&self.conn);
    }

    /// The UDP address this connection's reflect datagrams came from, if any arrived.
    fn udp_of(&self, conn: u64) -> Vec<SocketAddr> {
        lock(&self.shared.udp_seen)
            .get(&conn)
            .copied()
            .into_iter()
            .collect()
    }

    fn udp_token(&mut self, id: RequestId) -> Step {
        let token = *self.udp_token.get_or_insert_with(rand::random);
        lock(&self.shared.udp_tokens).insert(token, self.conn);
        Step::Reply(response(
            wire::UDP_TOKEN,
            id,
            wire::UdpTokenResponse { token }.to_bytes(),
        ))
    }

    /// Removes this connection's presence, unless a newer one replaced it.
    fn leave(&mut self) {
        if let Some((name, _)) = self.presence.take() {
            let mut online = lock(&self.shared.online);
            if online.get(&name).map(|o| o.conn) == Some(self.conn) {
                if let Some(o) = online.remove(&name) {
                    lock(&self.shared.content).depart(o.id, &name, Instant::now());
                }
                debug!(%name, "node left");
            }
        }
    }

    fn throttle(&self) -> Result<(), Refusal> {
        let now = Instant::now();
        let by_ip = lock(&self.shared.by_ip).check(&self.peer.ip(), now);
        let by_id = by_ip.and_then(|()| lock(&self.shared.by_id).check(&self.client, now));
        by_id.map_err(|wait| {
            self.shared.stats.throttled.fetch_add(1, Ordering::Relaxed);
            (
                codes::THROTTLED,
                format!(
                    "too many requests from this identity or address; retry in {} ms",
                    wait.as_millis().max(1)
                ),
            )
        })
    }

    async fn frame(&mut self, frame: Frame) -> Result<Step, Out> {
        let h = frame.header;
        match h.kind {
            FrameType::PING => Ok(Step::Reply(Out::new(
                FrameType::PONG,
                h.service,
                h.id,
                frame.body,
            ))),
            FrameType::PONG => {
                if let Some((nonce, sent)) = self.probe {
                    if frame.body.as_ref() == nonce.to_be_bytes() {
                        self.probe = None;
                        if let Some((name, _)) = &self.presence {
                            if let Some(o) = lock(&self.shared.online).get_mut(name) {
                                if o.conn == self.conn {
                                    o.rtt = sent.elapsed();
                                }
                            }
                        }
                    }
                }
                Ok(Step::Nothing)
            }
            FrameType::REQUEST if h.id.0 != 0 => {
                let service = h.service;
                let result = match service {
                    wire::REGISTER => self
                        .register(frame.body)
                        .map(|b| Step::Reply(response(service, h.id, b))),
                    wire::RESOLVE => self
                        .resolve(frame.body)
                        .map(|b| Step::Reply(response(service, h.id, b))),
                    wire::PRESENCE => self.presence(frame.body, h.id),
                    wire::PUNCH => self
                        .punch(frame.body)
                        .map(|b| Step::Reply(response(service, h.id, b))),
                    wire::RELAY => self.relay(frame.body, h.id),
                    content::ANNOUNCE => self
                        .announce(frame.body)
                        .map(|b| Step::Reply(response(service, h.id, b))),
                    content::PEERS => self
                        .peers(frame.body)
                        .map(|b| Step::Reply(response(service, h.id, b))),
                    wire::UDP_TOKEN if frame.body.is_empty() => Ok(self.udp_token(h.id)),
                    wire::UDP_TOKEN => Err((
                        ErrorCode::MALFORMED_MESSAGE,
                        format!(
                            "a UDP_TOKEN request has an empty body, not {} bytes",
                            frame.body.len()
                        ),
                    )),
                    _ => Err((
                        ErrorCode::UNKNOWN_REQUEST,
                        format!(
                            "unknown request: service 0x{:02x} is not served by this hub",
                            service.0
                        ),
                    )),
                };
                match result {
                    Ok(step) => Ok(step),
                    Err((code, message)) if code == ErrorCode::MALFORMED_MESSAGE => {
                        Err(error_out(service, RequestId(0), code, &message))
                    }
                    Err((code, message)) => {
                        Ok(Step::Reply(error_out(service, h.id, code, &message)))
                    }
                }
            }
            FrameType::ERROR => Ok(Step::Then(None, Next::Close)),
            kind => Err(error_out(
                h.service,
                RequestId(0),
                ErrorCode::UNEXPECTED_MESSAGE,
                &format!("a {kind} frame is not expected by the hub"),
            )),
        }
    }

    fn register(&mut self, body: Bytes) -> Result<Bytes, Refusal> {
        let req = wire::RegisterRequest::decode(body).map_err(malformed)?;
        self.throttle()?;
        names::check_name(&req.name).map_err(|e| (codes::INVALID_NAME, e.to_string()))?;
        let mut store = lock(&self.shared.store);
        let io = |e: std::io::Error| {
            (
                ErrorCode::INTERNAL,
                format!("the hub cannot write its state: {e}"),
            )
        };
        let not_holder = |name: &str, holder: Option<NodeId>| match holder {
            Some(_) => (
                codes::NOT_HOLDER,
                format!("name {name:?} is held by another key"),
            ),
            None => (
                codes::UNKNOWN_NAME,
                format!("name {name:?} is not registered"),
            ),
        };
        if req.flags & wire::register_flags::RELEASE != 0 {
            store
                .release(&req.name, self.client)
                .map_err(io)?
                .map_err(|h| not_holder(&req.name, h))?;
            info!(name = %req.name, id = %self.client, "name released");
            drop(store);
            forget_presence(&self.shared, &req.name);
            return Ok(wire::RegisterResponse {
                name: req.name,
                id: self.client,
            }
            .to_bytes());
        }
        if let Some(to) = req.to {
            store
                .rebind(&req.name, self.client, to)
                .map_err(io)?
                .map_err(|h| not_holder(&req.name, h))?;
            info!(name = %req.name, from = %self.client, %to, "name moved");
            drop(store);
            forget_presence(&self.shared, &req.name);
            return Ok(wire::RegisterResponse {
                name: req.name,
                id: to,
            }
            .to_bytes());
        }
        if store.get(&req.name) == Some(self.client) {
            return Ok(wire::RegisterResponse {
                name: req.name,
                id: self.client,
            }
            .to_bytes());
        }
        if store.get(&req.name).is_some() {
            return Err((
                codes::NAME_TAKEN,
                format!("name {:?} is taken by another key", req.name),
            ));
        }
        let invite = if self.shared.registration == Registration::InviteOnly {
            if req.invite.is_empty() || !store.invite_valid(&req.invite).map_err(io)? {
                return Err((
                    codes::INVITE_REQUIRED,
                    "this hub registers names only with a valid, unused invite code (ferry-hub invite)".into(),
                ));
            }
            Some(req.invite.clone())
        } else {
            None
        };
        store
            .bind(&req.name, self.client)
            .map_err(io)?
            .map_err(|_| {
                (
                    codes::NAME_TAKEN,
                    format!("name {:?} is taken by another key", req.name),
                )
            })?;
        if let Some(code) = invite {
            store.use_invite(&code).map_err(io)?;
        }
        info!(name = %req.name, id = %self.client, "name registered");
        Ok(wire::RegisterResponse {
            name: req.name,
            id: self.client,
        }
        .to_bytes())
    }

    fn resolve(&mut self, body: Bytes) -> Result<Bytes, Refusal> {
        let req = wire::NameRequest::decode(body).map_err(malformed)?;
        self.throttle()?;
        let Some(id) = lock(&self.shared.store).get(&req.name) else {
            return Err((
                codes::UNKNOWN_NAME,
                format!("name {:?} is not registered", req.name),
            ));
        };
        let online = lock(&self.shared.online);
        let (online, hints) = match online.get(&req.name) {
            Some(o) => (true, hints_of(o)),
            None => (false, Vec::new()),
        };
        Ok(wire::ResolveResponse { id, online, hints }.to_bytes())
    }

    fn presence(&mut self, body: Bytes, id: RequestId) -> Result<Step, Refusal> {
        let req = wire::PresenceRequest::decode(body).map_err(malformed)?;
        match lock(&self.shared.store).get(&req.name) {
            Some(holder) if holder == self.client => {}
            Some(_) => {
                return Err((
                    codes::NOT_HOLDER,
                    format!("name {:?} is held by another key", req.name),
                ))
            }
            // A node may be present under its id's text, which no name can be (§3.4).
            None if req.name == self.client.to_string() => {}
            None => {
                return Err((
                    codes::UNKNOWN_NAME,
                    format!(
                        "name {:?} is not registered; run ferry register first",
                        req.name
                    ),
                ))
            }
        }
        self.leave();
        // A small queue: events are rare, and a node that does not read them is dropped
        // rather than buffered for.
        let (tx, rx) = mpsc::channel(16);
        let mut online = lock(&self.shared.online);
        let previous = online.insert(
            req.name.clone(),
            Online {
                conn: self.conn,
                id: self.client,
                addrs: req.addrs,
                reflected: self.peer,
                events: tx,
                rtt: Duration::ZERO,
            },
        );
        {
            // Lock order: presences, then the index.
            let mut index = lock(&self.shared.content);
            if let Some(p) = &previous {
                index.depart(p.id, &req.name, Instant::now());
            }
            index.arrive(self.client, &req.name);
        }
        drop(online);
        // Dropping the previous entry's sender ends its connection with SUPERSEDED.
        drop(previous);
        info!(name = %req.name, id = %self.client, reflected = %self.peer, "node present");
        self.presence = Some((req.name, id));
        self.events = Some(rx);
        Ok(Step::Reply(response(
            wire::PRESENCE,
            id,
            wire::PresenceResponse {
                reflected: self.peer,
            }
            .to_bytes(),
        )))
    }

    fn punch(&mut self, body: Bytes) -> Result<Bytes, Refusal> {
        let req = wire::PunchRequest::decode(body).map_err(malformed)?;
        self.throttle()?;
        let online = lock(&self.shared.online);
        let Some(node) = online.get(&req.name) else {
            return Err(offline(&self.shared, &req.name));
        };
        let client_rtt = Duration::from_millis(u64::from(req.rtt_ms.min(10_000)));
        let (to_client, to_node) = punch_delays(client_rtt, node.rtt);
        let mut client_addrs = req.addrs;
        client_addrs.truncate(wire::MAX_ADDRS - 1);
        client_addrs.push(self.peer);
        // The caller dials and is the Ferry client; the node listens and is the Ferry server,
        // so both keep the same connection (§3.6).
        let event = Event::Punch(Punch {
            peer: self.client,
            delay_ms: to_node.as_millis() as u32,
            role: wire::PunchRole::Listen,
            addrs: client_addrs,
            udp: self.udp_of(self.conn),
        });
        node.events.try_send(event).map_err(|_| {
            (
                codes::NOT_ONLINE,
                format!("name {:?} is not reading its control connection", req.name),
            )
        })?;
        // The observed address last, always (§3.6): the peer punches towards it.
        let mut addrs: Vec<SocketAddr> = node
            .addrs
            .iter()
            .filter(|a| **a != node.reflected)
            .take(wire::MAX_ADDRS - 1)
            .copied()
            .collect();
        addrs.push(node.reflected);
        Ok(Punch {
            peer: node.id,
            delay_ms: to_client.as_millis() as u32,
            role: wire::PunchRole::Dial,
            addrs,
            udp: self.udp_of(node.conn),
        }
        .to_bytes())
    }

    fn relay(&mut self, body: Bytes, id: RequestId) -> Result<Step, Refusal> {
        match wire::RelayRequest::decode(body).map_err(malformed)? {
            wire::RelayRequest::Connect { name } => {
                self.throttle()?;
                let (node, events) = {
                    let online = lock(&self.shared.online);
                    let Some(o) = online.get(&name) else {
                        return Err(offline(&self.shared, &name));
                    };
                    (o.id, o.events.clone())
                };
                let limits = &self.shared.limits;
                let token: [u8; TOKEN_LEN] = rand::random();
                let (tx, rx) = oneshot::channel();
                {
                    let mut relays = lock(&self.shared.relays);
                    let mine = relays.per_id.get(&self.client).copied().unwrap_or(0);
                    if relays.active >= limits.max_relays {
                        return Err((
                            codes::RELAY_LIMIT,
                            format!(
                                "the hub relays {} streams already, its limit",
                                limits.max_relays
                            ),
                        ));
                    }
                    if mine >= limits.max_relays_per_id {
                        return Err((
                            codes::RELAY_LIMIT,
                            format!(
                                "this identity has {mine} relays open, the limit is {}",
                                limits.max_relays_per_id
                            ),
                        ));
                    }
                    if let Some((used, since)) = relays.used.get(&self.client) {
                        if since.elapsed() < Duration::from_secs(3600)
                            && *used >= limits.relay_bytes_per_hour
                        {
                            return Err((codes::RELAY_LIMIT, format!("this identity's relays carried {used} bytes this hour, the limit is {}", limits.relay_bytes_per_hour)));
                        }
                    }
                    relays.active += 1;
                    *relays.per_id.entry(self.client).or_default() += 1;
                    relays.pending.insert(
                        token,
                        Pending {
                            node,
                            client: self.client,
                            deliver: tx,
                        },
                    );
                }
                if events
                    .try_send(Event::Relay {
                        token,
                        client: self.client,
                    })
                    .is_err()
                {
                    lock(&self.shared.relays).pending.remove(&token);
                    release_slot(&self.shared, &self.client);
                    return Err((
                        codes::NOT_ONLINE,
                        format!("name {name:?} is not reading its control connection"),
                    ));
                }
                Ok(Step::Then(
                    None,
                    Next::RelayClient {
                        node,
                        client: self.client,
                        deliver: rx,
                        id,
                        token,
                    },
                ))
            }
            wire::RelayRequest::Accept { token } => {
                let pending = {
                    let mut relays = lock(&self.shared.relays);
                    match relays.pending.get(&token) {
                        Some(p) if p.node == self.client => relays.pending.remove(&token),
                        _ => None,
                    }
                };
                let Some(pending) = pending else {
                    return Err((
                        codes::BAD_TOKEN,
                        "the relay token is unknown, expired or not issued to this node".into(),
                    ));
                };
                let answer = wire::RelayResponse {
                    peer: pending.client,
                }
                .to_bytes();
                Ok(Step::Then(
                    Some(response(wire::RELAY, id, answer)),
                    Next::RelayNode {
                        deliver: pending.deliver,
                    },
                ))
            }
        }
    }
}

enum Step {
    Nothing,
    Reply(Out),
    Then(Option<Out>, Next),
}

async fn recv_event(events: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Ends whatever presence `name` has (its name was released or moved).
fn forget_presence(shared: &Shared, name: &str) {
    let mut online = lock(&shared.online);
    if let Some(o) = online.remove(name) {
        lock(&shared.content).depart(o.id, name, Instant::now());
    }
}

fn malformed(e: wire::WireError) -> Refusal {
    (ErrorCode::MALFORMED_MESSAGE, e.to_string())
}

fn offline(shared: &Shared, name: &str) -> Refusal {
    if lock(&shared.store).get(name).is_some() {
        (
            codes::NOT_ONLINE,
            format!("{name:?} has no control connection to this hub now"),
        )
    } else {
        (
            codes::UNKNOWN_NAME,
            format!("name {name:?} is not registered"),
        )
    }
}

/// A present node's hints: what it reported, then its reflected address (once).
fn hints_of(o: &Online) -> Vec<(HintSource, SocketAddr)> {
    let mut hints: Vec<_> = o
        .addrs
        .iter()
        .take(wire::MAX_ADDRS - 1)
        .map(|a| (HintSource::Reported, *a))
        .collect();
    if !o.addrs.contains(&o.reflected) {
        hints.push((HintSource::Reflected, o.reflected));
    }
    hints
}

/// Answers UDP reflect requests (HUB.md §3.7): a request with a live connection's token records
/// where it came from as that connection's UDP address and is answered with it; anything else
/// is dropped unanswered. The reply is never larger than the request, and each source address
/// is throttled, so the port cannot be used to amplify or flood.
async fn reflect_loop(shared: Arc<Shared>, udp: Arc<UdpSocket>) {
    let mut buf = [0u8; 64];
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // ICMP errors surface here on some platforms; they say nothing about the hub.
                debug!("udp receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(token) = wire::reflect::parse_request(&buf[..n]) else {
            continue;
        };
        if lock(&shared.udp_by_ip)
            .check(&from.ip(), Instant::now())
            .is_err()
        {
            continue;
        }
        let Some(conn) = lock(&shared.udp_tokens).get(&token).copied() else {
            continue;
        };
        lock(&shared.udp_seen).insert(conn, from);
        let reply = wire::reflect::reply(&token, &from);
        let _ = udp.send_to(&reply, from).await;
    }
}

/// How long each side waits before dialling so that both dial at the same moment (HUB.md §3.6,
/// as DCUtR): the instruction reaches a side after half its RTT, so the side with the shorter
/// RTT waits the difference, and both add a margin for jitter.
pub fn punch_delays(client_rtt: Duration, node_rtt: Duration) -> (Duration, Duration) {
    const MARGIN: Duration = Duration::from_millis(20);
    let longest = client_rtt.max(node_rtt);
    (
        (longest - client_rtt) / 2 + MARGIN,
        (longest - node_rtt) / 2 + MARGIN,
    )
}

/// Splices the client and node sides until either closes (or a limit stops it). Bytes left in
/// either side's read buffer go across first.
async fn splice(shared: &Arc<Shared>, client: NodeId, a: Spliced, b: Spliced) {
    let a = a.into_parts();
    let b = b.into_parts();
    let a = Prefixed::new(a.read_buf, a.io);
    let b = Prefixed::new(b.read_buf, b.io);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    // copy_bidirectional cannot meter, so two pumps charge each chunk to the client's budget.
    let one = pump(shared, client, ar, bw);
    let two = pump(shared, client, br, aw);
    let (sent, received) = tokio::join!(one, two);
    debug!(%client, sent, received, "relay closed");
}

async fn pump<R, W>(shared: &Arc<Shared>, client: NodeId, mut r: R, mut w: W) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match charge(shared, &client, n as u64) {
            Ok(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
            Ok(_) => {}
            Err(()) => {
                debug!(%client, "relay stopped: the identity's byte budget is spent");
                break;
            }
        }
        if let Some(tap) = &*lock(&shared.tap) {
            let _ = tap.send(Bytes::copy_from_slice(&buf[..n]));
        }
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n as u64;
        shared
            .stats
            .relayed_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = w.shutdown().await;
    total
}

/// Charges `n` relayed bytes to `client`: how long to wait to keep to the rate, or `Err` when
/// this hour's budget is spent.
fn charge(shared: &Shared, client: &NodeId, n: u64) -> Result<Duration, ()> {
    let limits = &shared.limits;
    let now = Instant::now();
    let mut relays = lock(&shared.relays);
    let used = relays.used.entry(*client).or_insert((0, now));
    if now.duration_since(used.1) >= Duration::from_secs(3600) {
        *used = (0, now);
    }
    used.0 += n;
    if used.0 > limits.relay_bytes_per_hour {
        return Err(());
    }
    if limits.relay_rate == 0 {
        return Ok(Duration::ZERO);
    }
    let rate = limits.relay_rate as f64;
    let bucket = relays.rate.entry(*client).or_insert((rate, now));
    let elapsed = now.duration_since(bucket.1).as_secs_f64();
    bucket.0 = (bucket.0 + elapsed * rate).min(rate) - n as f64;
    bucket.1 = now;
    Ok(if bucket.0 < 0.0 {
        Duration::from_secs_f64(-bucket.0 / rate)
    } else {
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punch_delays_make_both_sides_dial_together() {
        let (c, n) = punch_delays(Duration::from_millis(100), Duration::from_millis(20));
        // Client: arrives at 50 ms, waits 20 → dials at 70. Node: arrives at 10, waits 60 → 70.
        assert_eq!(Duration::from_millis(50) + c, Duration::from_millis(10) + n);
        assert_eq!(c, Duration::from_millis(20));
        assert_eq!(n, Duration::from_millis(60));
    }
}
