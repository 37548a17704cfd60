//! A node's presence at a hub (HUB.md §4): one control connection, kept alive through NATs,
//! reconnected with exponential back-off and jitter; relay events become incoming streams of a
//! [`RelayAcceptor`], so a server serves relayed clients exactly like direct ones.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ferry_common::url::Hint;
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::transport::{Acceptor, BoxedStream};
use ferry_protocol::{ErrorBody, FrameType, RequestId, Service};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::client::{HubConn, HubError};
use crate::codec::Out;
use crate::wire::{codes, Event};

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
    let task = tokio::spawn(presence_loop(config, tx, status_tx));
    (
        RelayAcceptor { rx, hub },
        Presence {
            status,
            task: task.abort_handle(),
        },
    )
}

/// The running presence; dropping it stops it.
#[derive(Debug)]
pub struct Presence {
    pub status: watch::Receiver<Status>,
    task: tokio::task::AbortHandle,
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
) {
    let mut attempt = 0u32;
    loop {
        let _ = status.send(Status::Connecting);
        match present(&mut config, &relays, &status).await {
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
) -> Result<(), HubError> {
    let mut conn = HubConn::connect(&config.hub, config.hub_id, &config.identity).await?;
    let hub_addr = conn.hub_addr();
    let hub_id = conn.hub_id();
    // A hub named without its id is trusted on first contact for the rest of the run: a later
    // reconnection must reach the same hub.
    config.hub_id.get_or_insert(hub_id);
    let config = &*config;
    let (id, reflected) = conn.presence(&config.name, config.addrs.clone()).await?;
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
                            // The mechanics live in ferry-traversal, whose API is not there
                            // yet: the client falls back to the relay (HUB.md §3.6).
                            debug!(peer = %punch.peer, delay_ms = punch.delay_ms, addrs = ?punch.addrs, "punch requested; no traversal transport in this build");
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
