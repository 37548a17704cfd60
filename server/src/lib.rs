//! The Ferry server: serves one directory tree over the Ferry protocol (list, stat, fetch,
//! ping), safely under hostile clients.
//!
//! Modules:
//! - [`config`]: [`Config`] and [`Limits`], the library configuration.
//! - `admission`: connection slots; a bounded pool for connections still in their handshake,
//!   with eviction, so a flood of idle connections cannot lock honest clients out.
//! - `listener`: binding, the accept loop with admission and error back-off.
//! - `connection`: one connection's lifecycle (handshake, hand-off from admission, goodbye),
//!   its reader and its writer; invariants in `connection/STATE.md`.
//! - `service`: list, stat, fetch, digest and echo, one module each, callable without a
//!   socket; each consults the client's principal before touching the tree.
//! - [`fs`]: request paths, the root jail, sorted bounded-memory listings, byte ranges.
//! - [`invite`]: one-time enrolment codes waiting to be used (one owner-only file each); the
//!   ENROL service (`service/enrol.rs`) claims them in enrolment sessions (spec §13.11).
//! - [`receive`]: the receiving end of `ferry send`: offers (spec §3.13) and the uploads they
//!   accept, into one directory.
//! - `shutdown`: stop/kill signals and the drain.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use ferry_server::{Config, Server};
//! let key = ferry_protocol::Key::generate();
//! let config = Config::new("/srv/share", key).listen(["127.0.0.1:0".parse().unwrap()]);
//! let server = Server::bind(config).await?;
//! println!("listening on {:?}", server.local_addrs());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod admission;
pub mod authorized;
mod buffers;
pub mod config;
mod connection;
pub mod fs;
pub mod invite;
mod listener;
pub mod receive;
mod service;
mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ferry_protocol::transport::{Acceptor, TcpAcceptor};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use config::{Config, Limits, DEFAULT_PORT};
#[doc(hidden)]
pub use connection::key_reserve_blocks;
pub use listener::AdmissionPeek;

use connection::ServerContext;
use service::Tree;
use shutdown::Signals;

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    listeners: Vec<TcpListener>,
    context: Arc<ServerContext>,
}

impl Server {
    /// Opens the root and binds every listen address (port 0 picks a free port).
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        if config.listen.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no listen address configured",
            ));
        }
        let root = config.root.clone();
        let mut jail = tokio::task::spawn_blocking(move || fs::Jail::open(&root))
            .await
            .map_err(std::io::Error::other)??;
        if !config.follow_symlinks {
            jail = jail.with_resolver(fs::Resolver::NoFollow);
        }
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            let listener = listener::bind(*addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            listeners.push(listener);
        }
        let mut handshake = match &config.resolver {
            Some(resolver) => {
                ferry_protocol::ServerHandshakeConfig::with_resolver(resolver.clone())
            }
            // --allow-upload: the one key's holder may also write (spec §3.12).
            None if config.allow_upload => ferry_protocol::ServerHandshakeConfig::with_resolver(
                Arc::new(service::put::WritableKey::new(config.key.clone())),
            ),
            None => ferry_protocol::ServerHandshakeConfig::new(config.key.clone()),
        };
        handshake.allow_plaintext = config.allow_plaintext;
        handshake.max_body = config.limits.max_body;
        handshake.suites = config.suites.clone();
        let identity = config.identity.clone().map(|identity| {
            let resolver = config
                .identity_resolver
                .clone()
                .unwrap_or_else(|| Arc::new(ferry_protocol::noise::AnyIdentity));
            let mut identity =
                ferry_protocol::noise::ServerIdentityConfig::with_resolver(identity, resolver);
            identity.allow_plaintext = config.allow_plaintext;
            identity.max_body = config.limits.max_body;
            identity.suites = config.suites.clone();
            identity.enrolment = config.enrolment.is_some();
            identity
        });
        tracing::info!(
            addrs = ?listeners.iter().filter_map(|l| l.local_addr().ok()).collect::<Vec<_>>(),
            key = %config.key.fingerprint(),
            plaintext = config.allow_plaintext,
            resolver = ?jail.resolver(),
            "listening"
        );
        Ok(Server {
            listeners,
            context: Arc::new(ServerContext {
                tree: Arc::new(Tree::new(jail, config.limits)),
                handshake,
                identity,
                enrolment: config.enrolment.clone(),
            }),
        })
    }

    /// The bound addresses, with the ports actually chosen.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// within the grace period, closes whatever remains and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.run_with(Vec::<TcpAcceptor>::new(), shutdown).await
    }

    /// [`Server::run`], also serving the streams `acceptors` produce: another transport (a
    /// relay, QUIC, an in-memory pipe in tests) gets the same admission, handshake, services
    /// and shutdown as the bound TCP listeners.
    pub async fn run_with<A>(
        self,
        acceptors: Vec<A>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()>
    where
        A: Acceptor + 'static,
        A::Stream: listener::AdmissionPeek,
    {
        let signals = Signals::default();
        let tracker = TaskTracker::new();
        let limits = self.context.limits();
        let connections = admission::Admission::new(admission::AdmissionLimits {
            max_connections: limits.max_connections,
            max_pending: limits.max_pending,
            max_pending_per_address: limits.max_pending_per_address,
        });
        for listener in self.listeners {
            tracker.spawn(listener::accept_loop(
                TcpAcceptor::new(listener),
                self.context.clone(),
                connections.clone(),
                tracker.clone(),
                signals.clone(),
            ));
        }
        for acceptor in acceptors {
            tracker.spawn(listener::accept_loop(
                acceptor,
                self.context.clone(),
                connections.clone(),
                tracker.clone(),
                signals.clone(),
            ));
        }
        shutdown.await;
        tracing::info!("shutting down");
        signals
            .drain(&tracker, self.context.limits().shutdown_grace)
            .await;
        tracing::info!("stopped");
        Ok(())
    }
}
