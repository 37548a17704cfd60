//! QUIC over a punched UDP path (spec §14.2, §14.4): a quinn endpoint on the node's one UDP
//! socket (the socket it talks to the hub from, so the NAT mapping the hub observed is the one
//! punched), punch datagrams, and one bidirectional stream per connection as a
//! [`QuicStream`]. QUIC provides the reliability; nothing here retransmits stream data.

mod socket;
mod stream;
mod tls;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::{ClientConfig, Endpoint, EndpointConfig, ServerConfig, TransportConfig, VarInt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Mutex};
use tokio::time::{sleep_until, timeout_at, Instant};

use socket::{Datagram, DemuxSocket, Punches};
pub use stream::{QuicStream, CLOSE_DONE, LINGER};
pub use tls::ALPN;

/// The punch datagram (§14.4): a zero byte (so the QUIC fixed bit is clear and it is never
/// taken for QUIC) and `ferry-punch`. It carries nothing else and proves nothing: it only opens
/// the sender's NAT towards the peer and shows the receiver the sender's mapped address.
pub const PUNCH: &[u8] = b"\x00ferry-punch";

/// Interval between punch datagrams while a punch runs (§14.4).
pub const PUNCH_INTERVAL: Duration = Duration::from_millis(100);

/// How long the dialer waits for the peer's first punch before dialing the address it was
/// given anyway (§14.4): a peer behind a symmetric NAT never gets its punches through a
/// port-filtering NAT, yet may still be reachable.
pub const PUNCH_WAIT: Duration = Duration::from_millis(200);

/// QUIC idle timeout (§14.2); keep-alives every [`KEEP_ALIVE`] hold it and the NAT mappings.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// QUIC keep-alive interval, under every common NAT's 30 s UDP timeout (§14.2).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Which side of a punch this is (§14.4). The hub assigns them; the dialer is the Ferry client
/// (it opens the stream and its first bytes are the Ferry handshake's first frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends punches, then opens the QUIC connection and the stream.
    Dialer,
    /// Sends punches, then accepts the connection from the peer's address and its stream.
    Listener,
}

/// A quinn endpoint (client and server) on one UDP socket that the caller may also use for its
/// own datagrams ([`send_raw`](Self::send_raw), [`recv_raw`](Self::recv_raw)): any datagram
/// whose first byte has bit 0x40 clear is the caller's, never QUIC's (§14.2). Cheap to clone.
#[derive(Clone, Debug)]
pub struct QuicEndpoint {
    endpoint: Endpoint,
    io: Arc<UdpSocket>,
    raw: Arc<Mutex<mpsc::Receiver<Datagram>>>,
    punches: Arc<Punches>,
    client: ClientConfig,
}

impl QuicEndpoint {
    /// Binds a UDP socket on `local` (port 0 for any) and starts an endpoint on it. Call it
    /// inside a tokio runtime.
    pub fn bind(local: SocketAddr) -> io::Result<Self> {
        Self::from_socket(std::net::UdpSocket::bind(local)?)
    }

    /// Starts an endpoint on an existing socket (the one the node talks to the hub from).
    /// From here on, use [`send_raw`](Self::send_raw)/[`recv_raw`](Self::recv_raw) instead of
    /// the socket itself.
    pub fn from_socket(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let io = Arc::new(UdpSocket::from_std(socket)?);
        let (raw_tx, raw_rx) = mpsc::channel(socket::RAW_QUEUE);
        let punches = Arc::new(Punches::default());
        let demux = Arc::new(DemuxSocket {
            io: io.clone(),
            raw: raw_tx,
            punches: punches.clone(),
        });
        let transport = Arc::new(transport_config());
        let mut server = ServerConfig::with_crypto(Arc::new(tls::server_crypto()?));
        server.transport_config(transport.clone());
        let mut client = ClientConfig::new(Arc::new(tls::client_crypto()?));
        client.transport_config(transport);
        let mut config = EndpointConfig::default();
        // Every QUIC packet then has the fixed bit set, which is what tells it from the
        // caller's datagrams.
        config.grease_quic_bit(false);
        let endpoint = Endpoint::new_with_abstract_socket(
            config,
            Some(server),
            demux,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Self {
            endpoint,
            io,
            raw: Arc::new(Mutex::new(raw_rx)),
            punches,
            client,
        })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Sends one datagram of the caller's own (e.g. a hub keep-alive) from the endpoint's
    /// socket. Its first byte must have bit 0x40 clear, or the peer would take it for QUIC.
    pub async fn send_raw(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        if socket::is_quic(datagram) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a raw datagram must start with a byte whose bit 0x40 is clear",
            ));
        }
        self.io.send_to(datagram, to).await.map(|_| ())
    }

    /// Receives the next datagram that is neither QUIC nor a punch, with its source. One
    /// caller at a time gets each datagram; up to 256 wait, later ones are dropped.
    pub async fn recv_raw(&self) -> io::Result<(Vec<u8>, SocketAddr)> {
        self.raw
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "quic endpoint closed"))
    }

    /// The source address of the last punch datagram received from `ip`, if any: the peer's
    /// address as its NAT maps it towards us (peer reflexive).
    pub fn punch_source(&self, ip: IpAddr) -> Option<SocketAddr> {
        self.punches.source_of(ip)
    }

    /// Dials `remote` directly (no punch) and opens the connection's stream; fails at
    /// `deadline`. For a peer whose address is reachable as it is.
    pub async fn connect(&self, remote: SocketAddr, deadline: Instant) -> io::Result<QuicStream> {
        let start = Instant::now();
        timeout_at(deadline, self.dial(remote))
            .await
            .map_err(|_| timed_out("quic connect", remote, deadline - start))?
    }

    /// Accepts the next connection from anyone; fails at `deadline`. The stream is accepted
    /// when the dialer's first bytes arrive (see [`QuicStream`]).
    pub async fn accept(&self, deadline: Instant) -> io::Result<QuicStream> {
        let start = Instant::now();
        timeout_at(deadline, self.answer(None)).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no quic connection arrived within {} ms",
                    (deadline - start).as_millis()
                ),
            )
        })?
    }

    /// Punches through both NATs and connects (spec §14.4). Both sides call it at the same
    /// `start_at` with the other's address as the hub observed it; from `start_at` each sends
    /// [`PUNCH`] to `remote` every [`PUNCH_INTERVAL`] until connected. The [`Role::Dialer`]
    /// dials the source of the peer's first punch (the address its NAT really uses, which
    /// differs from `remote` behind a symmetric NAT), or `remote` after [`PUNCH_WAIT`]
    /// without one, and dials a punch source seen later too; quinn retransmits the handshake.
    /// The [`Role::Listener`] accepts the first connection from `remote`'s IP address and
    /// refuses others while it waits. Returns the stream once the QUIC handshake is done (on the
    /// listener, its first read or write waits for the dialer's first bytes, see
    /// [`QuicStream`]) or `TimedOut` at `deadline`.
    pub async fn punch_and_connect(
        &self,
        remote: SocketAddr,
        role: Role,
        start_at: Instant,
        deadline: Instant,
    ) -> io::Result<QuicStream> {
        let punching = async {
            sleep_until(start_at).await;
            loop {
                if let Err(error) = self.io.send_to(PUNCH, remote).await {
                    tracing::debug!(%remote, %error, "quic punch: send failed");
                }
                tokio::time::sleep(PUNCH_INTERVAL).await;
            }
        };
        let connecting = async {
            sleep_until(start_at).await;
            match role {
                Role::Dialer => self.dial_punched(remote, start_at).await,
                Role::Listener => self.answer(Some(remote.ip())).await,
            }
        };
        let outcome = timeout_at(deadline, async {
            tokio::select! {
                stream = connecting => stream,
                () = punching => unreachable_punching(),
            }
        })
        .await;
        match outcome {
            Ok(stream) => stream,
            Err(_) => {
                let seen = match self.punch_source(remote.ip()) {
                    Some(from) => format!("a punch arrived from {from}"),
                    None => "no punch arrived".to_owned(),
                };
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "quic punch ({role:?}) from {} to {remote} did not connect within {} ms \
                         ({seen})",
                        self.local_addr()
                            .map_or_else(|_| "?".to_owned(), |a| a.to_string()),
                        deadline.saturating_duration_since(start_at).as_millis(),
                    ),
                ))
            }
        }
    }

    /// Closes every connection and stops the endpoint.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"endpoint closed");
    }

    /// The dialer's side of a punch: waits up to [`PUNCH_WAIT`] for the peer's punch, dials its
    /// source (or `remote`), and also dials any different punch source that shows up later.
    async fn dial_punched(&self, remote: SocketAddr, start_at: Instant) -> io::Result<QuicStream> {
        let first = self.wait_punch(remote.ip(), start_at + PUNCH_WAIT).await;
        let mut target = first.unwrap_or(remote);
        loop {
            tracing::debug!(%target, "quic punch: dialing");
            let attempt = self.dial(target);
            tokio::pin!(attempt);
            // Switch to a new punch source if one appears while this attempt runs.
            let moved = async {
                loop {
                    let arrived = self.punches.arrived.notified();
                    if let Some(from) = self.punch_source(remote.ip()) {
                        if from != target {
                            return from;
                        }
                    }
                    arrived.await;
                }
            };
            tokio::select! {
                stream = &mut attempt => match stream {
                    Ok(stream) => return Ok(stream),
                    // The handshake failed outright (not a timeout): keep punching and retry.
                    Err(error) => {
                        tracing::debug!(%target, %error, "quic punch: attempt failed");
                        tokio::time::sleep(PUNCH_INTERVAL).await;
                    }
                },
                from = moved => target = from,
            }
        }
    }

    async fn wait_punch(&self, ip: IpAddr, until: Instant) -> Option<SocketAddr> {
        timeout_at(until, async {
            loop {
                let arrived = self.punches.arrived.notified();
                if let Some(from) = self.punch_source(ip) {
                    return from;
                }
                arrived.await;
            }
        })
        .await
        .ok()
    }

    async fn dial(&self, remote: SocketAddr) -> io::Result<QuicStream> {
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), remote, tls::SERVER_NAME)
            .map_err(|e| io::Error::other(format!("quic connect to {remote}: {e}")))?;
        let connection = connecting
            .await
            .map_err(|e| io::Error::other(format!("quic handshake with {remote}: {e}")))?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| io::Error::other(format!("quic stream to {remote}: {e}")))?;
        Ok(QuicStream::opened(connection, send, recv))
    }

    /// Accepts connections until one from `only` (any address when `None`) completes its
    /// handshake; its stream is accepted when the dialer's first bytes arrive.
    async fn answer(&self, only: Option<IpAddr>) -> io::Result<QuicStream> {
        loop {
            let incoming = self.endpoint.accept().await.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "quic endpoint closed")
            })?;
            let from = incoming.remote_address();
            if only.is_some_and(|ip| ip != from.ip()) {
                tracing::debug!(%from, "quic punch: refused a connection from a stranger");
                incoming.refuse();
                continue;
            }
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::debug!(%from, %error, "quic accept: handshake failed");
                    continue;
                }
            };
            return Ok(QuicStream::accepting(connection));
        }
    }
}

fn transport_config() -> TransportConfig {
    let mut transport = TransportConfig::default();
    // One Ferry connection per QUIC connection (§14.2): one bidirectional stream, no others.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    // Fits in a VarInt of milliseconds.
    transport.max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    // A punched handshake's first Initial is often dropped by the peer's NAT; a lower first
    // RTT guess retransmits it sooner than quinn's 333 ms default (§14.4).
    transport.initial_rtt(Duration::from_millis(100));
    transport
}

fn timed_out(what: &str, remote: SocketAddr, waited: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "{what} to {remote} did not complete within {} ms",
            waited.as_millis()
        ),
    )
}

/// The punch loop never ends by itself; this keeps `select!`'s types honest.
fn unreachable_punching() -> io::Result<QuicStream> {
    Err(io::Error::other("punching stopped"))
}
