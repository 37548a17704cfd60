//! Opening a connection: resolve every hint of a URL, race their addresses (Happy Eyeballs,
//! `race.rs`), try a busy server again after a jittered back-off, run the handshake over
//! whatever stream the connector gives, and start the reader and writer tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::conn::KeepAlive;
use ferry_protocol::driver::{FrameReader, FrameWriter};
use ferry_protocol::{Error as ProtoError, ErrorCode, HandshakeError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::driver::{now, read_loop, write_loop, KeyUse, RouteTable};
use super::{race, Client, ClientConfig, ClientInner};
use crate::error::ClientError;
use ferry_common::url::{FerryUrl, Hint};
use ferry_protocol::identity::NodeId;

/// The size of a read buffer, and the room below which a read moves to another.
const READ_BUFFER: usize = 512 * 1024;
const READ_LOW_WATER: usize = 128 * 1024;
/// Read buffers kept for reuse: with REQUEST_BYTES queued for a fetch and a part writer's
/// batches, about as many as a bulk fetch keeps alive (12 MiB at most).
const READ_SPARES: usize = 24;

/// Where to connect: an address, or a URL whose host is resolved first.
#[derive(Debug, Clone)]
pub enum Target {
    Addr(SocketAddr),
    Url(FerryUrl),
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

impl From<&FerryUrl> for Target {
    fn from(url: &FerryUrl) -> Self {
        Self::Url(url.clone())
    }
}

impl From<FerryUrl> for Target {
    fn from(url: FerryUrl) -> Self {
        Self::Url(url)
    }
}

/// What [`Client::connect_url`] reached.
#[derive(Debug)]
pub struct Connected {
    pub client: Client,
    /// The hint whose address answered first with a completed handshake.
    pub hint: Hint,
    pub addr: SocketAddr,
    /// The id the server proved in the identity handshake; `None` after the PSK handshake.
    pub server_id: Option<NodeId>,
}

impl Client {
    /// Connects through `config.connector` (TCP unless changed) and runs the handshake, each
    /// attempt bounded by `config.connect_timeout`. A URL's hints are raced as
    /// [`Client::connect_url`] says.
    pub async fn connect(
        target: impl Into<Target>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        match target.into() {
            Target::Addr(addr) => Ok(Self::connect_addr(addr, config).await?.0),
            Target::Url(url) => Ok(Self::connect_url(&url, config).await?.client),
        }
    }

    /// Resolves every hint of `url` and races their addresses (RFC 8305, spec §13.8): attempts
    /// start 250 ms apart, or at once when one fails, and the first whose handshake completes
    /// wins; the others are dropped. When all fail, the most telling error is returned (a
    /// server that proved the wrong id before one that refused us, before one that did not
    /// answer). `ferry://ID@` requires ID of every hint.
    pub async fn connect_url(
        url: &FerryUrl,
        mut config: ClientConfig,
    ) -> Result<Connected, ClientError> {
        if url.name.is_some() {
            // Boxed: connect_named races the node's hints through this function again.
            return Ok(Box::pin(Self::connect_named(url, config)).await?.connected);
        }
        config.server_id = config.server_id.or(url.server_id);
        let hints = url.hints();
        let addrs = match tokio::time::timeout(config.connect_timeout, resolve_all(&hints)).await {
            Ok(addrs) => addrs?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    what: format!("resolving {}", url.host),
                    secs: config.connect_timeout.as_secs(),
                })
            }
        };
        let candidates = race::interleave(addrs);
        let won = race::race(candidates, race::CONNECTION_ATTEMPT_DELAY, |&(_, addr)| {
            Self::connect_addr(addr, config.clone())
        })
        .await;
        match won {
            Ok(((hint, addr), (client, server_id))) => Ok(Connected {
                client,
                hint: hints[hint].clone(),
                addr,
                server_id,
            }),
            Err(errors) => Err(errors
                .into_iter()
                .min_by_key(telling)
                .unwrap_or_else(|| ClientError::Local("no address to connect to".into()))),
        }
    }

    /// One address: connect and handshake, again after a pause while the server is full.
    pub(super) async fn connect_addr(
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<(Client, Option<NodeId>), ClientError> {
        let mut tries = 0;
        loop {
            let result = Self::connect_once(addr, config.clone()).await;
            match result {
                Err(e) if tries < config.busy_retries && is_busy_at_connect(&e) => {
                    let delay = busy_backoff(tries);
                    tries += 1;
                    warn!(
                        "the server at {addr} is busy; trying again in {} ms ({tries} of {})",
                        delay.as_millis(),
                        config.busy_retries
                    );
                    tokio::time::sleep(delay).await;
                }
                Ok((client, proven)) => {
                    // The same server must answer a new connection: the id it proved here.
                    let mut again = config;
                    again.server_id = again.server_id.or(proven);
                    let _ = client.shared.redial.set((addr, again));
                    return Ok((client, proven));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_once(
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<(Client, Option<NodeId>), ClientError> {
        let timeout = config.connect_timeout;
        let attempt = async {
            let stream = config
                .connector
                .connect(addr)
                .await
                .map_err(|source| ClientError::Connect { addr, source })?;
            Self::handshake_proving(stream, addr, config).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: format!("connecting to {addr}"),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// Runs the handshake over any byte stream and starts the connection tasks. Used by
    /// [`Client::connect`] and by tests over in-memory pipes; the caller bounds the time.
    pub async fn handshake<S>(
        io: S,
        peer: SocketAddr,
        config: ClientConfig,
    ) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Ok(Self::handshake_proving(io, peer, config).await?.0)
    }

    /// [`Client::handshake`], also returning the id the server proved. The identity handshake
    /// runs when the config names the server or gives our identity (spec §13).
    async fn handshake_proving<S>(
        mut io: S,
        peer: SocketAddr,
        config: ClientConfig,
    ) -> Result<(Client, Option<NodeId>), ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (session, leftover, proven) = if config.server_id.is_some() || config.identity.is_some()
        {
            let (session, leftover, proven) =
                identity_handshake(&mut io, peer, config.server_id, &config).await?;
            (session, leftover, Some(proven))
        } else {
            let proto = ferry_protocol::ClientHandshakeConfig::new(config.key.clone())
                .plaintext(config.plaintext)
                .with_suites(config.suites.clone());
            let (session, leftover) = ferry_protocol::tokio::client_handshake(&mut io, proto)
                .await
                .map_err(|e| handshake_error(e, peer))?;
            (session, leftover, None)
        };
        debug!(%peer, version = session.version(), mode = ?session.mode(), "connected");
        let version = session.version();
        let (mut send, recv) = session.into_split();
        if config.assume_blocks_used > 0 {
            send.assume_blocks_used(config.assume_blocks_used);
        }
        let server_key = KeyUse::new(send.suite(), config.assume_server_blocks_used);
        let max_payload = send.max_payload();
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = RouteTable::default();
        if let Ok(mut uploads) = conn.uploads.lock() {
            *uploads = Some(KeyUse::new(send.suite(), config.assume_blocks_used));
        }
        let conn = Arc::new(conn);
        // Fetch data is split off the read buffer without copying, so one read may take many
        // frames: reads of up to READ_BUFFER - 64 KiB, at least READ_LOW_WATER. A bulk fetch
        // keeps megabytes of frames alive (queued for its handle, gathered for the disk), so
        // their buffers are reused once those frames are gone rather than allocated afresh.
        let frames = FrameReader::new(read, recv, leftover)
            .frame_read_timeout(config.frame_read_timeout)
            .read_reserve(READ_BUFFER, READ_LOW_WATER)
            .recycle_buffers(READ_SPARES);
        let reader = tokio::spawn(read_loop(
            frames,
            conn.clone(),
            tx.downgrade(),
            KeepAlive::new(config.keepalive_interval, config.keepalive_timeout, now()),
            server_key,
        ));
        tokio::spawn(write_loop(
            // Requests are small.
            FrameWriter::new(write, send, version).buffer(4096),
            rx,
            conn.clone(),
        ));
        let client = Client {
            shared: Arc::new(ClientInner {
                peer: peer.to_string(),
                outgoing: tx,
                conn,
                reader: reader.abort_handle(),
                max_payload,
                request_timeout: config.request_timeout,
                request_buffer: config.request_buffer.max(1),
                redial: std::sync::OnceLock::new(),
            }),
        };
        Ok((client, proven))
    }
}

/// The identity handshake (spec §13): the server must prove `server_id`'s key when one is
/// given; returns the id it proved.
async fn identity_handshake<S>(
    io: &mut S,
    peer: SocketAddr,
    server_id: Option<NodeId>,
    config: &ClientConfig,
) -> Result<(ferry_protocol::Session, bytes::BytesMut, NodeId), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use ferry_protocol::noise::{ClientIdentityConfig, ClientIdentityError};
    let identity = config
        .identity
        .clone()
        .unwrap_or_else(ferry_protocol::identity::Identity::generate);
    let mut proto = ClientIdentityConfig::new(identity, server_id).plaintext(config.plaintext);
    // The same offer as the PSK handshake's; a list without an encrypted suite means the
    // default there, so here too.
    if config.suites.iter().any(|suite| suite.id().is_some()) {
        proto.suites = config.suites.clone();
    }
    match ferry_protocol::tokio::client_identity_handshake(io, proto).await {
        Ok((session, proven, leftover)) => Ok((session, leftover, proven)),
        Err(ClientIdentityError::WrongServer { expected, proven }) => {
            Err(ClientError::WrongServer {
                addr: peer,
                expected,
                proven,
            })
        }
        Err(ClientIdentityError::Failed(e)) => Err(handshake_error(e, peer)),
    }
}

/// Every hint's addresses, as `(hint index, address)` in the hints' order, each address once.
/// Hints are resolved together; one that does not resolve is skipped while another does.
async fn resolve_all(hints: &[Hint]) -> Result<Vec<(usize, SocketAddr)>, ClientError> {
    let resolved = futures::future::join_all(hints.iter().map(resolve)).await;
    let mut addrs: Vec<(usize, SocketAddr)> = Vec::new();
    let mut first_error = None;
    for (i, result) in resolved.into_iter().enumerate() {
        match result {
            Ok(found) => {
                for addr in found {
                    if !addrs.iter().any(|(_, a)| *a == addr) {
                        addrs.push((i, addr));
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if addrs.is_empty() => Err(e),
        _ => Ok(addrs),
    }
}

async fn resolve(hint: &Hint) -> Result<Vec<SocketAddr>, ClientError> {
    if let Some(ip) = hint.ip() {
        return Ok(vec![SocketAddr::new(ip, hint.port)]);
    }
    let resolved = tokio::net::lookup_host(hint.authority())
        .await
        .map_err(|e| {
            let reason = e.to_string();
            let reason = reason
                .strip_prefix("failed to lookup address information: ")
                .unwrap_or(&reason)
                .to_lowercase();
            ClientError::Resolve {
                host: hint.host.clone(),
                reason,
            }
        })?;
    let addrs: Vec<_> = resolved.collect();
    if addrs.is_empty() {
        return Err(ClientError::Resolve {
            host: hint.host.clone(),
            reason: "no addresses".into(),
        });
    }
    Ok(addrs)
}

/// Which failed attempt's error to report when every hint failed: lower says more. A server
/// that proved another id than the address requires says the most (spec §13.8), then one
/// that answered and refused, then one that stopped answering, then one never reached.
fn telling(error: &ClientError) -> u8 {
    match error {
        ClientError::WrongServer { .. } => 0,
        ClientError::Auth { .. } | ClientError::Handshake { .. } => 1,
        ClientError::RemoteClosed(_) | ClientError::Protocol(_) => 2,
        ClientError::ConnectionLost(_) | ClientError::Timeout { .. } => 3,
        _ => 4,
    }
}

/// A refusal that says "come back later": `BUSY` during the handshake, or the connection
/// closed mid-handshake (a full server evicts a handshake in progress without a word, because
/// its plaintext error would reach us as a bad record).
fn is_busy_at_connect(error: &ClientError) -> bool {
    match error {
        ClientError::Handshake {
            source: HandshakeError::Refused(body),
            ..
        } => body.code == ErrorCode::BUSY,
        ClientError::ConnectionLost(_) => true,
        _ => false,
    }
}

/// 100 ms, 200 ms, 400 ms, … capped at 2 s, each stretched by up to a quarter at random so
/// that clients turned away together do not all come back together.
fn busy_backoff(tries: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1 << tries.min(5))
        .min(Duration::from_secs(2));
    let spread = rand::random::<u32>() % (base.as_millis() as u32 / 4 + 1);
    base + Duration::from_millis(u64::from(spread))
}

fn handshake_error(error: ProtoError, addr: SocketAddr) -> ClientError {
    match error {
        ProtoError::Handshake(HandshakeError::AuthenticationFailed) => ClientError::Auth { addr },
        ProtoError::Handshake(source) => ClientError::Handshake { addr, source },
        ProtoError::Closed => ClientError::ConnectionLost(format!(
            "the server at {addr} closed the connection during the handshake"
        )),
        ProtoError::Io(source) => ClientError::Connect { addr, source },
        other => ClientError::Protocol(format!("handshake with {addr}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::{Key, ServerHandshakeConfig};

    #[tokio::test]
    async fn wrong_key_is_an_auth_error() {
        let (a, b) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let _ =
                ferry_protocol::tokio::accept(b, ServerHandshakeConfig::new(Key::generate())).await;
        });
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let err = Client::handshake(a, peer, ClientConfig::new(Key::generate()))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Auth { .. }), "{err}");
        assert_eq!(err.exit_code(), crate::error::exit::CONNECTION);
    }

    /// A transport with no sockets at all: each dial is an in-memory pipe to the fake server.
    #[derive(Debug)]
    struct InMemory {
        key: Key,
        dials: std::sync::atomic::AtomicUsize,
    }

    impl ferry_protocol::transport::Connector for InMemory {
        fn connect(&self, _addr: SocketAddr) -> ferry_protocol::transport::Connecting<'_> {
            self.dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (near, far) = tokio::io::duplex(1 << 16);
            tokio::spawn(super::super::test_support::fake_server(
                far,
                self.key.clone(),
            ));
            Box::pin(async move { Ok(Box::new(near) as ferry_protocol::transport::BoxedStream) })
        }
    }

    #[tokio::test]
    async fn connect_goes_through_the_configured_connector() {
        let key = Key::generate();
        let transport = Arc::new(InMemory {
            key: key.clone(),
            dials: Default::default(),
        });
        // Nothing listens on this address: only the connector can make the connection.
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let client = Client::connect(addr, ClientConfig::new(key).connector(transport.clone()))
            .await
            .unwrap();
        assert_eq!(client.stat("a.txt").await.unwrap().size, 3);
        assert_eq!(transport.dials.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A network of hints with no sockets: each address refuses, accepts and stays silent, or
    /// accepts and runs the identity handshake as some identity. Dials are timed.
    #[derive(Debug, Default)]
    struct Hints {
        at: std::collections::HashMap<SocketAddr, Behaviour>,
        silent: std::sync::Mutex<Vec<tokio::io::DuplexStream>>,
        dials: std::sync::Mutex<Vec<(SocketAddr, tokio::time::Instant)>>,
    }

    #[derive(Debug, Clone)]
    enum Behaviour {
        Refuse,
        Silent,
        Serve(ferry_protocol::identity::Identity),
    }

    impl ferry_protocol::transport::Connector for Hints {
        fn connect(&self, addr: SocketAddr) -> ferry_protocol::transport::Connecting<'_> {
            self.dials
                .lock()
                .unwrap()
                .push((addr, tokio::time::Instant::now()));
            let behaviour = self.at.get(&addr).cloned().unwrap_or(Behaviour::Refuse);
            Box::pin(async move {
                let (near, mut far) = tokio::io::duplex(1 << 16);
                match behaviour {
                    Behaviour::Refuse => {
                        return Err(std::io::ErrorKind::ConnectionRefused.into());
                    }
                    Behaviour::Silent => self.silent.lock().unwrap().push(far),
                    Behaviour::Serve(identity) => {
                        tokio::spawn(async move {
                            let config = ferry_protocol::noise::AcceptConfig {
                                psk: None,
                                identity: Some(ferry_protocol::noise::ServerIdentityConfig::new(
                                    identity,
                                )),
                            };
                            if ferry_protocol::tokio::server_accept(&mut far, config)
                                .await
                                .is_ok()
                            {
                                // Hold the connection open until the client drops it.
                                let _ = tokio::io::copy(&mut far, &mut tokio::io::sink()).await;
                            }
                        });
                    }
                }
                Ok(Box::new(near) as ferry_protocol::transport::BoxedStream)
            })
        }
    }

    fn identity(byte: u8) -> ferry_protocol::identity::Identity {
        ferry_protocol::identity::Identity::from_secret([byte; 32])
    }

    /// Connects to `url` over `hints`; returns the result, when each address was dialled
    /// (milliseconds after the start) and how long the whole connect took.
    async fn dial(
        hints: Hints,
        url: &str,
        config: ClientConfig,
    ) -> (Result<Connected, ClientError>, Vec<(u16, u64)>, u64) {
        let hints = Arc::new(hints);
        let start = tokio::time::Instant::now();
        let url: FerryUrl = url.parse().unwrap();
        let result = Client::connect_url(&url, config.connector(hints.clone())).await;
        let took = start.elapsed().as_millis() as u64;
        let dials = hints
            .dials
            .lock()
            .unwrap()
            .iter()
            .map(|(a, t)| (a.port(), (*t - start).as_millis() as u64))
            .collect();
        (result, dials, took)
    }

    fn hints(at: &[(u16, Behaviour)]) -> Hints {
        Hints {
            at: at
                .iter()
                .map(|(port, b)| (SocketAddr::from(([127, 0, 0, 1], *port)), b.clone()))
                .collect(),
            ..Hints::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_hint_that_accepts_and_never_answers_loses_to_the_second_within_300_ms() {
        let server = identity(7);
        let url = format!("ferry://{}@127.0.0.1:1,127.0.0.1:2/", server.id());
        let net = hints(&[
            (1, Behaviour::Silent),
            (2, Behaviour::Serve(server.clone())),
        ]);
        let (result, dials, took) = dial(net, &url, ClientConfig::new(Key::generate())).await;
        let connected = result.unwrap();
        assert_eq!((connected.hint.port, connected.addr.port()), (2, 2));
        assert_eq!(connected.server_id, Some(server.id()));
        assert_eq!(
            dials,
            [(1, 0), (2, 250)],
            "the second starts one attempt delay later"
        );
        assert!(took < 300, "connected after {took} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_hint_with_nothing_listening_hands_over_at_once() {
        let server = identity(7);
        let url = format!("ferry://{}@127.0.0.1:1,127.0.0.1:2/", server.id());
        let net = hints(&[(1, Behaviour::Refuse), (2, Behaviour::Serve(server))]);
        let (result, dials, took) = dial(net, &url, ClientConfig::new(Key::generate())).await;
        assert_eq!(result.unwrap().hint.port, 2);
        assert_eq!((dials, took), (vec![(1, 0), (2, 0)], 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_that_proves_the_wrong_identity_loses_to_the_right_one() {
        let (right, wrong) = (identity(7), identity(8));
        // The impostor answers first and fast; it must not win, nor delay the right server.
        let url = format!("ferry://{}@127.0.0.1:1,127.0.0.1:2/", right.id());
        let net = hints(&[
            (1, Behaviour::Serve(wrong.clone())),
            (2, Behaviour::Serve(right.clone())),
        ]);
        let (result, dials, took) = dial(net, &url, ClientConfig::new(Key::generate())).await;
        let connected = result.unwrap();
        assert_eq!(
            (connected.hint.port, connected.server_id),
            (2, Some(right.id()))
        );
        assert_eq!((dials, took), (vec![(1, 0), (2, 0)], 0));

        // With only impostors, dead and silent hints, the wrong id is what the user hears.
        let url = format!(
            "ferry://{}@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/",
            right.id()
        );
        let net = hints(&[
            (1, Behaviour::Refuse),
            (2, Behaviour::Serve(wrong.clone())),
            (3, Behaviour::Refuse),
        ]);
        let (result, _, _) = dial(net, &url, ClientConfig::new(Key::generate())).await;
        match result.unwrap_err() {
            ClientError::WrongServer {
                addr,
                expected,
                proven,
            } => {
                assert_eq!((addr.port(), expected, proven), (2, right.id(), wrong.id()));
            }
            other => panic!("expected WrongServer, got {other}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_identity_without_a_server_id_accepts_and_reports_whoever_answers() {
        let server = identity(9);
        let net = hints(&[(5, Behaviour::Serve(server.clone()))]);
        let config = ClientConfig::new(Key::generate()).identity(identity(1));
        let (result, _, _) = dial(net, "ferry://127.0.0.1:5/", config).await;
        let connected = result.unwrap();
        assert_eq!(
            connected.server_id,
            Some(server.id()),
            "the caller pins this id"
        );
        // PSK, as before, proves no id.
        let net = Hints::default();
        let (result, _, _) = dial(
            net,
            "ferry://127.0.0.1:5/",
            ClientConfig::new(Key::generate()),
        )
        .await;
        assert!(
            matches!(result, Err(ClientError::Connect { .. })),
            "{result:?}"
        );
    }
}
