//! A host: one listener for many swarms (quinn's `Endpoint`, rqbit's `Session`).
//!
//! Every swarm has its own pre-shared key (derived from its content id, spec/P2P.md §3.2), so
//! which swarm an inbound connection belongs to is known only from the key its ClientHello
//! names: the version-2 key hint (spec/PROTOCOL.md §4.2). The host answers the session
//! handshake with the key of the swarm the hint names and hands the established session to
//! that swarm's node; the node then runs the peer handshake as on its own listener. A hint that
//! names no swarm here is answered like a wrong key, so a host is no oracle for which swarms it
//! serves. A version-1 hello carries no hint; it is served only while the host holds a single
//! swarm.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::crypto::RecordSuite;
use ferry_protocol::message::{ClientHello, KeyHint};
use ferry_protocol::transport::{Acceptor, BoxedStream};
use ferry_protocol::{Key, KeyResolver, Permissions, Principal, ServerHandshakeConfig, Session};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{NodeConfig, NodeError};
use crate::manifest::ContentId;
use crate::wire;

/// Most inbound connections in their session handshake at once, over all swarms.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Established connections waiting for their node's actor to take them.
const INBOUND_QUEUE: usize = 64;

/// A connection whose session handshake the host completed for one swarm.
pub(super) struct Accepted {
    pub stream: BoxedStream,
    pub session: Session,
    /// Bytes that arrived after the handshake; they belong to the session.
    pub leftover: BytesMut,
    pub remote: SocketAddr,
    /// Handed over by a hub's relay ([`HostAdder::inbound`]); spec/P2P.md §3.3.
    pub relayed: bool,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// Where a hosted swarm's connections go.
#[derive(Debug, Clone)]
struct Route {
    key: Key,
    content_id: ContentId,
    inbound: mpsc::Sender<Accepted>,
}

/// The swarms a host serves, by the hint of their key. Also the handshake's key resolver.
#[derive(Debug, Default)]
struct Routes {
    by_hint: Mutex<HashMap<KeyHint, Route>>,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyHint, Route>> {
        // A panic elsewhere while holding the lock leaves the map itself consistent.
        self.by_hint.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn route_for(&self, hint: Option<KeyHint>) -> Option<Route> {
        let routes = self.lock();
        match hint {
            Some(hint) => routes.get(&hint).cloned(),
            // A version-1 peer names no key: only a host with one swarm knows which it means.
            None if routes.len() == 1 => routes.values().next().cloned(),
            None => None,
        }
    }
}

impl KeyResolver for Routes {
    fn resolve(&self, hello: &ClientHello) -> Option<(Key, Principal)> {
        let route = self.route_for(hello.key_hint())?;
        let principal = Principal {
            name: principal_name(&route.content_id),
            permissions: Permissions::READ,
            subtree: None,
        };
        Some((route.key, principal))
    }
}

/// The principal a hosted swarm's peers are known by: its content id, in hex.
fn principal_name(content_id: &ContentId) -> String {
    content_id.to_string()
}

/// One listener shared by the nodes started on it with [`start_on`](super::start_on).
#[derive(Debug)]
pub struct Host {
    listen_addr: SocketAddr,
    routes: Arc<Routes>,
    handshakes: Handshakes,
    pending: Arc<Semaphore>,
    cancel: CancellationToken,
    /// Taken by [`Host::shutdown`]; dropping the host cancels the loop without waiting.
    task: Option<JoinHandle<()>>,
}

/// Hands connections opened elsewhere (a hub's relay or punch, spec/P2P.md §3.12) to a host,
/// which answers each like one accepted on its port and routes it to the swarm its hello names.
#[derive(Debug, Clone)]
pub struct HostAdder {
    routes: Arc<Routes>,
    handshakes: Handshakes,
    pending: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl HostAdder {
    /// Runs the session handshake on `stream` (from `remote`) in a task of its own, as the
    /// host's listener does, and hands it to its swarm's node; `relayed`: it came through a
    /// hub's relay, so a connection to the same node that is not replaces it (§3.3).
    pub fn inbound(&self, stream: BoxedStream, remote: SocketAddr, relayed: bool) {
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "refusing a peer connection: too many handshakes pending");
            return;
        };
        tokio::spawn(serve(
            stream,
            remote,
            relayed,
            self.routes.clone(),
            self.handshakes.clone(),
            self.cancel.clone(),
            permit,
        ));
    }
}

impl Host {
    /// Listens on `config.listen` (port 0 picks one), with its handshake timeout and record
    /// suites; the nodes started on the host take the rest of their configuration from their
    /// own.
    pub async fn bind(config: &NodeConfig) -> Result<Self, NodeError> {
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Listen { addr, source })?;
        let listen_addr = listener
            .local_addr()
            .map_err(|source| NodeError::Listen { addr, source })?;
        let routes = Arc::new(Routes::default());
        let cancel = CancellationToken::new();
        let handshakes = Handshakes {
            timeout: config.handshake_timeout,
            suites: config.suites.clone(),
        };
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        let task = tokio::spawn(accept_loop(
            super::unsent::PeerAcceptor::new(listener),
            routes.clone(),
            handshakes.clone(),
            pending.clone(),
            cancel.clone(),
        ));
        Ok(Self {
            listen_addr,
            routes,
            handshakes,
            pending,
            cancel,
            task: Some(task),
        })
    }

    /// Where connections opened elsewhere enter this host.
    pub fn adder(&self) -> HostAdder {
        HostAdder {
            routes: self.routes.clone(),
            handshakes: self.handshakes.clone(),
            pending: self.pending.clone(),
            cancel: self.cancel.clone(),
        }
    }

    /// Where peers reach every swarm on this host.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Stops accepting. Nodes started on the host keep their connections; stop them with
    /// their handles.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Routes connections for `content_id` to a new queue; the registration ends when the
    /// returned guard is dropped (the node stops). `None` if the swarm is already hosted.
    pub(super) fn register(
        &self,
        content_id: ContentId,
    ) -> Option<(mpsc::Receiver<Accepted>, Registration)> {
        let key = wire::swarm_key(&content_id);
        let hint = key.hint();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let mut routes = self.routes.lock();
        if routes.contains_key(&hint) {
            return None;
        }
        routes.insert(
            hint,
            Route {
                key,
                content_id,
                inbound: tx,
            },
        );
        let registration = Registration {
            routes: self.routes.clone(),
            hint,
        };
        Some((rx, registration))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A swarm's place on a host; dropping it stops routing connections to the swarm.
#[derive(Debug)]
pub(super) struct Registration {
    routes: Arc<Routes>,
    hint: KeyHint,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.hint);
    }
}

/// How the host runs session handshakes.
#[derive(Debug, Clone)]
struct Handshakes {
    timeout: Duration,
    suites: Vec<RecordSuite>,
}

async fn accept_loop(
    mut listener: super::unsent::PeerAcceptor,
    routes: Arc<Routes>,
    handshakes: Handshakes,
    pending: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "cannot accept a peer connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "refusing a peer connection: too many handshakes pending");
            continue;
        };
        tokio::spawn(serve(
            Box::new(stream),
            remote,
            false,
            routes.clone(),
            handshakes.clone(),
            cancel.clone(),
            permit,
        ));
    }
}

/// One inbound connection: the session handshake with the key its hello names, then to that
/// swarm's node.
async fn serve(
    mut stream: BoxedStream,
    remote: SocketAddr,
    relayed: bool,
    routes: Arc<Routes>,
    handshakes: Handshakes,
    cancel: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _permit = permit;
    let mut config = ServerHandshakeConfig::with_resolver(routes.clone());
    config.max_body = wire::MAX_BODY;
    config.suites = handshakes.suites;
    let handshake = tokio::time::timeout(
        handshakes.timeout,
        ferry_protocol::tokio::server_handshake_principal(&mut stream, config),
    );
    let (session, principal, leftover) = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => {
                tracing::debug!(%remote, %error, "peer session handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "peer session handshake timed out");
                return;
            }
        },
    };
    let route = {
        let routes = routes.lock();
        routes
            .values()
            .find(|route| principal_name(&route.content_id) == principal.name)
            .cloned()
    };
    // The swarm may have stopped during the handshake; then the connection just ends.
    let Some(route) = route else { return };
    let accepted = Accepted {
        stream,
        session,
        leftover,
        remote,
        relayed,
    };
    if route.inbound.try_send(accepted).is_err() {
        tracing::debug!(%remote, "refusing a peer connection: its swarm is not keeping up");
    }
}
