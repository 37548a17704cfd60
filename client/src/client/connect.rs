//! Opening a connection: resolve a URL's host, try its addresses in turn, try a busy server
//! again after a jittered back-off, run the handshake over whatever stream the connector
//! gives, and start the reader and writer tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::conn::KeepAlive;
use ferry_protocol::driver::{FrameReader, FrameWriter};
use ferry_protocol::{Error as ProtoError, ErrorCode, HandshakeError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::driver::{now, read_loop, write_loop, RouteTable};
use super::{Client, ClientConfig, ClientInner};
use crate::error::ClientError;
use ferry_common::url::FerryUrl;

/// Spare room in the read buffer before each read.
const READ_RESERVE: usize = 256 * 1024;

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

impl Client {
    /// Connects through `config.connector` (TCP unless changed) and runs the handshake, both
    /// bounded by `config.connect_timeout`.
    /// A URL's host is resolved and its addresses tried in order.
    pub async fn connect(
        target: impl Into<Target>,
        mut config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let addrs = match target.into() {
            Target::Addr(addr) => vec![addr],
            Target::Url(url) => {
                // `ferry://ID@HOST/`: the id in the address names who must answer.
                config.server_id = config.server_id.or(url.server_id);
                match tokio::time::timeout(config.connect_timeout, resolve(&url)).await {
                    Ok(addrs) => addrs?,
                    Err(_) => {
                        return Err(ClientError::Timeout {
                            what: format!("resolving {}", url.host),
                            secs: config.connect_timeout.as_secs(),
                        })
                    }
                }
            }
        };
        let mut last = None;
        for addr in addrs {
            match Self::connect_addr(addr, config.clone()).await {
                Ok(client) => return Ok(client),
                // Only socket-level failures try the next address; a server that answered
                // and refused us would refuse again.
                Err(e @ ClientError::Connect { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Local("no address to connect to".into())))
    }

    /// One address: connect and handshake, again after a pause while the server is full.
    async fn connect_addr(addr: SocketAddr, config: ClientConfig) -> Result<Client, ClientError> {
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
                other => return other,
            }
        }
    }

    async fn connect_once(addr: SocketAddr, config: ClientConfig) -> Result<Client, ClientError> {
        let timeout = config.connect_timeout;
        let attempt = async {
            let stream = config
                .connector
                .connect(addr)
                .await
                .map_err(|source| ClientError::Connect { addr, source })?;
            Self::handshake(stream, addr, config).await
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
        mut io: S,
        peer: SocketAddr,
        config: ClientConfig,
    ) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (session, leftover) = match config.server_id {
            Some(server_id) => identity_handshake(&mut io, peer, server_id, &config).await?,
            None => {
                let proto = ferry_protocol::ClientHandshakeConfig::new(config.key.clone())
                    .plaintext(config.plaintext)
                    .with_suites(config.suites.clone());
                ferry_protocol::tokio::client_handshake(&mut io, proto)
                    .await
                    .map_err(|e| handshake_error(e, peer))?
            }
        };
        debug!(%peer, version = session.version(), mode = ?session.mode(), "connected");
        let version = session.version();
        let (send, recv) = session.into_split();
        let max_payload = send.max_payload();
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(RouteTable::default());
        // Fetch data is split off the read buffer without copying, so one read may take many
        // frames: keep a quarter megabyte of room.
        let frames = FrameReader::new(read, recv, leftover)
            .frame_read_timeout(config.frame_read_timeout)
            .read_reserve(READ_RESERVE, READ_RESERVE);
        let reader = tokio::spawn(read_loop(
            frames,
            conn.clone(),
            tx.downgrade(),
            KeepAlive::new(config.keepalive_interval, config.keepalive_timeout, now()),
        ));
        tokio::spawn(write_loop(
            // Requests are small.
            FrameWriter::new(write, send, version).buffer(4096),
            rx,
            conn.clone(),
        ));
        Ok(Client {
            shared: Arc::new(ClientInner {
                peer: peer.to_string(),
                outgoing: tx,
                conn,
                reader: reader.abort_handle(),
                max_payload,
                request_timeout: config.request_timeout,
                request_buffer: config.request_buffer.max(1),
            }),
        })
    }
}

/// The identity handshake (spec §13): the server must prove `server_id`'s key.
async fn identity_handshake<S>(
    io: &mut S,
    peer: SocketAddr,
    server_id: ferry_protocol::identity::NodeId,
    config: &ClientConfig,
) -> Result<(ferry_protocol::Session, bytes::BytesMut), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use ferry_protocol::noise::{ClientIdentityConfig, ClientIdentityError};
    let identity = config
        .identity
        .clone()
        .unwrap_or_else(ferry_protocol::identity::Identity::generate);
    let proto = ClientIdentityConfig::new(identity, Some(server_id)).plaintext(config.plaintext);
    match ferry_protocol::tokio::client_identity_handshake(io, proto).await {
        Ok((session, _, leftover)) => Ok((session, leftover)),
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

async fn resolve(url: &FerryUrl) -> Result<Vec<SocketAddr>, ClientError> {
    if let Some(ip) = url.ip() {
        return Ok(vec![SocketAddr::new(ip, url.port)]);
    }
    let resolved = tokio::net::lookup_host(url.authority())
        .await
        .map_err(|e| {
            let reason = e.to_string();
            let reason = reason
                .strip_prefix("failed to lookup address information: ")
                .unwrap_or(&reason)
                .to_lowercase();
            ClientError::Resolve {
                host: url.host.clone(),
                reason,
            }
        })?;
    let addrs: Vec<_> = resolved.collect();
    if addrs.is_empty() {
        return Err(ClientError::Resolve {
            host: url.host.clone(),
            reason: "no addresses".into(),
        });
    }
    Ok(addrs)
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
}
