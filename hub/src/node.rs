//! A node's presence at a hub (HUB.md §4): one control connection, kept alive through NATs,
//! reconnected with exponential back-off and jitter; relay events become incoming streams of a
//! [`RelayAcceptor`], so a server serves relayed clients exactly like direct ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_common::url::Hint;
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::transport::{Acceptor, BoxedStream};
use ferry_protocol::{ErrorBody, FrameType, RequestId, Service};
use ferry_traversal::QuicEndpoint;
use futures::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::client::{HubConn, HubError};
use crate::codec::Out;
use crate::punch::{self, PUNCH_BUDGET, REFLECT_WAIT};
use crate::wire::{codes, Event, Punch, PunchRole};

/// Punches a node runs at once; more are ignored (the client falls back to the relay), so a
/// flood of instructions cannot make the node a packet cannon.
pub const MAX_PUNCHES: usize = 4;

/// Keep-alive of the control connection: well under the 30 s that the shortest common NAT
/// mapping timeouts allow for UDP and far under TCP's (RFC 5382 asks ≥ 2 h 4 min, many home
/// routers keep 5 minutes or less).
pub const KEEPALIVE: Duration = Duration::from_secs(25);

/// How a node stays present.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    pub hub: Vec<Hint>,
    /// The hub's id to require; `None` trusts the first hub that answers, for the rest of
    /// the run.
    pub hub_id: Option<NodeId>,
    pub identity: Identity,
    pub name: String,
    /// The addresses this node listens on, reported as hints.
    pub addrs: Vec<SocketAddr>,
    pub keepalive: Duration,
    /// First and largest reconnection delay.
    pub backoff: (Duration, Duration),
    /// Answer the hub's punch instructions (HUB.md §3.6) and keep a UDP address at the hub
    /// (§3.7) for QUIC punches. Off, the node is reachable directly or through the relay only.
    pub punch: bool,
}

impl PresenceConfig {
    pub fn new(hub: Vec<Hint>, hub_id: Option<NodeId>, identity: Identity, name: String) -> Self {
        Self {
            hub,
            hub_id,
            identity,
            name,
            addrs: Vec::new(),
            keepalive: KEEPALIVE,
            backoff: (Duration::from_millis(500), Duration::from_secs(60)),
            punch: true,
        }
    }
}

/// What the presence loop knows now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connecting,
    /// Present; the hub sees the control connection come from `reflected`.
    Present {
        hub_id: NodeId,
        reflected: SocketAddr,
    },
    /// The last attempt failed; the next starts after the back-off.
    Failed(String),
}

/// Relayed connections, as an [`Acceptor`] for `Server::run_with`.
#[derive(Debug)]
pub struct RelayAcceptor {
    rx: mpsc::Receiver<(BoxedStream, SocketAddr)>,
    hub: SocketAddr,
}

impl Acceptor for RelayAcceptor {
    type Stream = BoxedStream;

    async fn accept(&mut self) -> std::io::Result<(BoxedStream, SocketAddr)> {
        match self.rx.recv().await {
            Some(accepted) => Ok(accepted),
            // The presence task ended: no more relays, but the server keeps serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.hub)
    }
}

/// Starts the presence task; it runs until the returned handle is dropped.
pub fn spawn_presence(config: PresenceConfig) -> (RelayAcceptor, Presence) {
    let (tx, rx) = mpsc::channel(16);
    let (status_tx, status) = watch::channel(Status::Connecting);
    let hub = config
        .hub
        .first()
        .and_then(|h| h.ip().map(|ip| SocketAddr::new(ip, h.port)))
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let paused = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(presence_loop(config, tx, status_tx, paused.clone()));
    (
        RelayAcceptor { rx, hub },
        Presence {
            status,
            task: task.abort_handle(),
            paused,
        },
    )
}

/// The running presence; dropping it stops it.
#[derive(Debug)]
pub struct Presence {
    pub status: watch::Receiver<Status>,
    task: tokio::task::AbortHandle,
    paused: Arc<AtomicBool>,
}

impl Presence {
    /// Stops (or resumes) answering punch instructions, without touching the control
    /// connection: while paused, clients fall back to the relay. For tests and operators who
    /// want to force the relay for a while.
    pub fn pause_punching(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The delay before reconnection attempt `attempt` (0-based): doubling from `min` up to `max`,
/// then a uniform jitter down to half, so nodes cut off together do not return together.
pub fn backoff(attempt: u32, (min, max): (Duration, Duration), jitter: f64) -> Duration {
    let full = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

async fn presence_loop(
    mut config: PresenceConfig,
    relays: mpsc::Sender<(BoxedStream, SocketAddr)>,
    status: watch::Sender<Status>,
    paused: Arc<AtomicBool>,
) {
    let mut attempt = 0u32;
    loop {
        let _ = status.send(Status::Connecting);
        match present(&mut config, &relays, &status, &paused).await {
            // It was present: the next failure starts the back-off afresh.
            Ok(()) => attempt = 0,
            Err(e) => {
                warn!("hub presence: {e}");
                let _ = status.send(Status::Failed(e.to_string()));
            }
        }
        let delay = backoff(attempt, config.backoff, rand::random());
        attempt = attempt.saturating_add(1);
        debug!("reconnecting to the hub in {} ms", delay.as_millis());
        tokio::time::sleep(delay).await;
    }
}

/// One control connection, until it fails. `Ok` if it got as far as being present.
async fn present(
    config: &mut PresenceConfig,
    relays: &mpsc::Sender<(BoxedStream, SocketAddr)>,
    status: &watch::Sender<Status>,
    paused: &AtomicBool,
) -> Result<(), HubError> {
    let mut conn = HubConn::connect(&config.hub, config.hub_id, &config.identity).await?;
    let hub_addr = conn.hub_addr();
    let hub_id = conn.hub_id();
    // A hub named without its id is trusted on first contact for the rest of the run: a later
    // reconnection must reach the same hub.
    config.hub_id.get_or_insert(hub_id);
    let config = &*config;
    // The punch's local TCP port is this connection's (PROTOCOL.md §14.3), and the UDP token
    // is asked for before the presence, whose events would otherwise interleave with it.
    let local_tcp = conn.local_addr();
    let udp = if config.punch {
        udp_presence(&mut conn, hub_addr, config.keepalive).await
    } else {
        None
    };
    let quic = udp.as_ref().map(|(endpoint, _)| endpoint.clone());
    let punches = Arc::new(Semaphore::new(MAX_PUNCHES));
    let (id, reflected) = conn
        .presence(&config.name, reported(&config.addrs, local_tcp))
        .await?;
    info!(name = %config.name, %reflected, hub = %hub_addr, "present at the hub");
    let _ = status.send(Status::Present { hub_id, reflected });
    let mut tick = tokio::time::interval(config.keepalive);
    tick.tick().await;
    let mut silent = 0u32;
    loop {
        tokio::select! {
            frame = conn.framed().next() => {
                silent = 0;
                let frame = match frame {
                    None => return Ok(()),
                    Some(Err(e)) => {
                        debug!("control connection failed: {e}");
                        return Ok(());
                    }
                    Some(Ok(frame)) => frame,
                };
                let h = frame.header;
                match h.kind {
                    FrameType::PING => {
                        conn.send(Out::new(FrameType::PONG, h.service, h.id, frame.body)).await?;
                    }
                    FrameType::DATA if h.id == id => match Event::decode(frame.body) {
                        Ok(Event::Relay { token, client }) => {
                            debug!(%client, "relay requested");
                            let config = config.clone();
                            let relays = relays.clone();
                            tokio::spawn(async move {
                                match open_relay(&config, hub_addr, hub_id, token).await {
                                    Ok(stream) => {
                                        let _ = relays.send((stream, hub_addr)).await;
                                    }
                                    Err(e) => warn!("relay for {client}: {e}"),
                                }
                            });
                        }
                        Ok(Event::Punch(punch)) => {
                            debug!(peer = %punch.peer, delay_ms = punch.delay_ms, role = ?punch.role, addrs = ?punch.addrs, udp = ?punch.udp, "punch requested");
                            let enabled = config.punch && !paused.load(Ordering::SeqCst);
                            if let Some(why) = punch_refusal(&punch, enabled) {
                                warn!(peer = %punch.peer, "punch ignored: {why}");
                            } else if let Ok(permit) = punches.clone().try_acquire_owned() {
                                let relays = relays.clone();
                                let quic = quic.clone();
                                tokio::spawn(async move {
                                    listen_punch(punch, local_tcp, quic, relays).await;
                                    drop(permit);
                                });
                            } else {
                                debug!(max = MAX_PUNCHES, "punch ignored: this node runs its maximum of punches");
                            }
                        }
                        Err(e) => return Err(HubError::Protocol(e.to_string())),
                    },
                    FrameType::ERROR => {
                        let body = ErrorBody::decode(frame.body).map_err(|e| HubError::Protocol(e.to_string()))?;
                        if body.code == codes::SUPERSEDED {
                            info!("another control connection for {:?} replaced this one", config.name);
                        }
                        return Err(HubError::Refused { code: body.code, message: body.message });
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                silent += 1;
                // Three keep-alive periods without a frame: the path is gone.
                if silent > 3 {
                    return Ok(());
                }
                conn.send(Out::new(FrameType::PING, Service::ECHO, RequestId(0), Bytes::from_static(b"ka"))).await?;
            }
        }
    }
}

/// Why a node does not act on a punch event, if it does not (HUB.md §3.6): punching is off,
/// the event makes the node the dialer (a node is the Ferry server and never speaks first), or
/// it gives no address to punch towards.
pub fn punch_refusal(punch: &Punch, enabled: bool) -> Option<&'static str> {
    if !enabled {
        Some("punching is off at this node; the client will use the relay")
    } else if punch.role != PunchRole::Listen {
        Some("the event names this node the dialer, which a node never is")
    } else if punch.addrs.is_empty() && punch.udp.is_empty() {
        Some("the event gives no address of the peer")
    } else {
        None
    }
}

/// The addresses to report (HUB.md §3.4): a listening address with an unspecified IP
/// (`0.0.0.0:6789`, `[::]:6789`) becomes this host's address on the route to the hub, the local
/// address of the control connection, with the listening port; duplicates go.
pub fn reported(addrs: &[SocketAddr], control_local: SocketAddr) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let addr = if addr.ip().is_unspecified() {
            if addr.is_ipv4() != control_local.is_ipv4() || addr.port() == 0 {
                continue;
            }
            SocketAddr::new(control_local.ip(), addr.port())
        } else {
            *addr
        };
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out.truncate(crate::wire::MAX_ADDRS - 1);
    out
}

/// The node's UDP side (HUB.md §3.7): a QUIC endpoint on a socket of its own whose public
/// address the hub learns from token-bound reflect requests, repeated every keep-alive period
/// so the NAT keeps the mapping. `None` when the hub or the socket does not allow it (the node
/// then punches over TCP only). The refresh task ends when the returned guard drops.
async fn udp_presence(
    conn: &mut HubConn,
    hub: SocketAddr,
    keepalive: Duration,
) -> Option<(QuicEndpoint, AbortOnDrop)> {
    let token = match conn.udp_token().await {
        Ok(token) => token,
        Err(e) => {
            debug!("no udp token from the hub: {e}");
            return None;
        }
    };
    let endpoint = match QuicEndpoint::bind(punch::unspecified_like(hub)) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            warn!("cannot open a udp socket for punching: {e}");
            return None;
        }
    };
    match punch::reflect(&endpoint, hub, token, REFLECT_WAIT).await {
        Some(seen) => debug!(%seen, "the hub sees this node's udp socket"),
        None => debug!(%hub, "no udp reflect answer from the hub; quic punches may fail"),
    }
    let refresh = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(keepalive).await;
                let _ = punch::reflect(&endpoint, hub, token, REFLECT_WAIT).await;
            }
        })
    };
    Some((endpoint, AbortOnDrop(refresh.abort_handle())))
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The listener's side of a punch (the node is the Ferry server): [`punch::listen`] keeps the
/// one path the client speaks on and closes the other transport's punch at once; that path
/// goes to the server like a relayed connection.
async fn listen_punch(
    punch: Punch,
    local_tcp: SocketAddr,
    quic: Option<QuicEndpoint>,
    relays: mpsc::Sender<(BoxedStream, SocketAddr)>,
) {
    let peer = punch.peer;
    match punch::listen(&punch, local_tcp, quic.as_ref(), PUNCH_BUDGET).await {
        Ok(punched) => {
            info!(%peer, remote = %punched.remote, "{}", punched.path);
            let _ = relays.send((punched.stream, punched.remote)).await;
        }
        Err(e) => debug!(%peer, "punch: {e}"),
    }
}

async fn open_relay(
    config: &PresenceConfig,
    hub: SocketAddr,
    hub_id: NodeId,
    token: [u8; crate::wire::TOKEN_LEN],
) -> Result<BoxedStream, HubError> {
    let conn = HubConn::connect_addr(hub, Some(hub_id), &config.identity).await?;
    let (stream, client) = conn.relay_accept(token).await?;
    debug!(%client, "relay open");
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listening_address_is_reported_as_the_address_towards_the_hub() {
        let local: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        let addrs: Vec<SocketAddr> = [
            "0.0.0.0:6789",
            "[::]:6789",
            "198.51.100.1:7000",
            "192.0.2.10:6789",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let want: Vec<SocketAddr> = ["192.0.2.10:6789", "198.51.100.1:7000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(reported(&addrs, local), want);
    }

    #[test]
    fn a_punch_event_that_makes_the_node_dial_or_names_no_address_is_ignored() {
        let peer = ferry_protocol::identity::Identity::from_secret([3; 32]).id();
        let good = Punch {
            peer,
            delay_ms: 20,
            role: PunchRole::Listen,
            addrs: vec!["198.51.100.7:40000".parse().unwrap()],
            udp: vec![],
        };
        assert_eq!(punch_refusal(&good, true), None);
        assert!(punch_refusal(&good, false).is_some());
        let dial = Punch {
            role: PunchRole::Dial,
            ..good.clone()
        };
        assert!(punch_refusal(&dial, true).unwrap().contains("dialer"));
        let nowhere = Punch {
            addrs: vec![],
            ..good
        };
        assert!(punch_refusal(&nowhere, true).is_some());
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_down_to_half() {
        let b = (Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(backoff(0, b, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(1, b, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(3, b, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(20, b, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(20, b, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX, b, 0.5), Duration::from_secs(45));
    }
}
