//! One connection to a server, shared by many requests in flight.
//!
//! [`Client`] is a cheap, clonable handle. Behind it two tasks own the socket: the reader splits
//! frames off the byte stream, answers keep-alive traffic and routes every other frame by request
//! id to the channel of the request that is waiting for it; the writer seals and writes whatever
//! the handles queue. Request handles ([`FetchStream`], [`ListStream`]) decode their own frames,
//! so the reader never copies or parses data chunks: a chunk's `Bytes` goes from the read buffer
//! to the caller untouched.
//!
//! Backpressure: each request's channel is bounded; when a caller stops reading, the reader waits,
//! TCP fills up and the server slows down. The protocol has no per-request flow control, so this
//! also holds up the other requests on the connection: read a [`FetchStream`] or drop it, but do
//! not keep one unread while awaiting another request on the same `Client`. Dropping a request
//! handle before its end sends `Cancel` and forgets the id, so late frames for it are discarded.
//! The invariants of the routing table are in `STATE.md` beside this file.
//!
//! The pieces: this file is the API ([`Client`], [`ClientConfig`]); `connect.rs` resolves,
//! connects (trying a busy server again), runs the handshake and starts the tasks; `race.rs`
//! races a URL's hints (Happy Eyeballs, RFC 8305); `hub.rs` reaches `ferry://NAME@HUB/`
//! through a hub (direct hints, else the hub's relay);
//! `driver.rs` is the reader and writer tasks and the routing table they share with the
//! request handles; `streams.rs` is the request handles and how they read their frames.

mod connect;
mod driver;
pub mod hub;
mod offer;
mod race;
mod streams;
#[cfg(test)]
mod test_support;
mod upload;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{
    DigestRequest, DigestResponse, Entry, FetchRequest, FetchResponse, ListRequest, StatRequest,
    TO_END,
};
use ferry_protocol::transport::{Connector, TcpConnector};
use ferry_protocol::{Key, Message, Service};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::error::ClientError;
use driver::{now, Outgoing, RouteTable};

pub use connect::{Connected, Target};
pub use streams::{FetchStream, ListStream};
pub use upload::Upload;

/// Entries [`Client::list`] collects before it refuses a listing: about 10 MiB of entries with
/// short names. Stream larger listings with [`Client::list_stream`].
pub const MAX_COLLECTED_ENTRIES: usize = 100_000;

/// Client settings: `Default`-like constructor plus setters.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub key: Key,
    /// Ask the server for a plaintext session (authenticated handshake, bodies in the clear).
    pub plaintext: bool,
    /// Record suites to offer, most preferred first (spec §4.3). Default: AES-256-GCM, then
    /// AES-256-CBC + HMAC-SHA256; CBC + HMAC alone speaks protocol version 1, which servers
    /// from before version 2 understand (`--suite cbc-hmac`).
    pub suites: Vec<ferry_protocol::crypto::RecordSuite>,
    /// Bound on connect plus handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on waiting for each answer frame of a request. Default 60 s.
    pub request_timeout: Duration,
    /// Ping after this much silence. Default 15 s.
    pub keepalive_interval: Duration,
    /// Give up on the server this long after an unanswered ping. Default 20 s.
    pub keepalive_timeout: Duration,
    /// Frames buffered per request before the reader waits for the caller. Default 64
    /// (4 MiB of 64 KiB chunks).
    pub request_buffer: usize,
    /// A frame whose first byte arrived must be complete within this long (spec §7, frame
    /// read): a corrupted length on the wire cannot make the client wait for bytes that never
    /// come. Default 30 s, as the server.
    pub frame_read_timeout: Duration,
    /// A server whose connection slots are all taken answers the handshake with `BUSY` (or,
    /// evicting a handshake to admit another, closes it): the client tries again this many
    /// times, waiting 100 ms, 200 ms, 400 ms, … (at most 2 s) between tries, and says so.
    /// Default 5.
    pub busy_retries: u32,
    /// How streams to the server are opened. Default TCP ([`TcpConnector`]); a relay or QUIC
    /// connector can stand in without the rest of the client changing.
    pub connector: Arc<dyn Connector>,
    /// The server that must answer, by node id: when set, the identity handshake (spec §13)
    /// replaces the PSK one and a server proving another key is refused
    /// ([`ClientError::WrongServer`]). [`Client::connect`] takes it from a `ferry://ID@` URL.
    /// Default `None` (PSK).
    pub server_id: Option<ferry_protocol::identity::NodeId>,
    /// Who we prove to be in the identity handshake. Default `None`: a fresh identity for each
    /// connection (anonymous, for servers that admit any identity). Set without `server_id`,
    /// the identity handshake runs and accepts whichever id the server proves
    /// ([`Connected::server_id`]; the caller pins it, trust on first use).
    pub identity: Option<ferry_protocol::identity::Identity>,
    /// Tests only: our send key starts as if this many AES blocks had been sealed under it, so
    /// that its usage limit's close-soon point (spec §5.5) is within a test's reach (the
    /// server's `Limits::assume_blocks_used`). Default 0.
    #[doc(hidden)]
    pub assume_blocks_used: u64,
    /// Tests only: the server's send key is taken to start this many blocks into its usage
    /// limit, mirroring the server's `Limits::assume_blocks_used`, so that a close after its
    /// close-soon point is known for what it is. Default 0.
    #[doc(hidden)]
    pub assume_server_blocks_used: u64,
}

impl ClientConfig {
    pub fn new(key: Key) -> Self {
        Self {
            key,
            plaintext: false,
            suites: ferry_protocol::crypto::RecordSuite::DEFAULT_SUITES.to_vec(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(20),
            request_buffer: 64,
            frame_read_timeout: Duration::from_secs(30),
            busy_retries: 5,
            connector: Arc::new(TcpConnector),
            server_id: None,
            identity: None,
            assume_blocks_used: 0,
            assume_server_blocks_used: 0,
        }
    }

    /// Requires the server to prove it is `id` (identity handshake).
    pub fn server_id(mut self, id: ferry_protocol::identity::NodeId) -> Self {
        self.server_id = Some(id);
        self
    }

    /// Our identity in the identity handshake.
    pub fn identity(mut self, identity: ferry_protocol::identity::Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = connector;
        self
    }

    pub fn busy_retries(mut self, retries: u32) -> Self {
        self.busy_retries = retries;
        self
    }

    pub fn frame_read_timeout(mut self, timeout: Duration) -> Self {
        self.frame_read_timeout = timeout;
        self
    }

    pub fn plaintext(mut self, plaintext: bool) -> Self {
        self.plaintext = plaintext;
        self
    }

    /// Offers these record suites (see [`ClientConfig::suites`]).
    pub fn suites(mut self, suites: Vec<ferry_protocol::crypto::RecordSuite>) -> Self {
        self.suites = suites;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }
}

/// A handle on one connection. Clones share the connection; it closes when the last clone and
/// the last request handle are dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientInner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.shared.peer)
            .finish_non_exhaustive()
    }
}

struct ClientInner {
    peer: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    conn: Arc<RouteTable>,
    reader: AbortHandle,
    max_payload: usize,
    request_timeout: Duration,
    request_buffer: usize,
    /// How to open another connection to the same server (spec §5.5: a retired connection
    /// continues on a new one); set when the connection was made by address.
    redial: std::sync::OnceLock<(std::net::SocketAddr, ClientConfig)>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        // The writer ends on its own when `outgoing` goes; the reader would wait for the server.
        self.reader.abort();
    }
}

impl Client {
    /// The server's address.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Largest ping payload (and frame body) this session carries.
    pub fn max_payload(&self) -> usize {
        self.shared.max_payload
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.conn.lock().closed.is_some()
    }

    /// Opens a new connection to the same server: the same address and settings (key, our
    /// identity, suites), and the server must prove the id it proved on this one. A transfer
    /// goes on through it when the server retires this connection (spec §5.5). Fails for a
    /// connection not made by address (over a relay or a given stream).
    pub async fn reconnect(&self) -> Result<Client, ClientError> {
        let Some((addr, config)) = self.shared.redial.get().cloned() else {
            return Err(ClientError::Local(format!(
                "the connection to {} was not made by address, so it cannot be opened again",
                self.shared.peer
            )));
        };
        Ok(Self::connect_addr(addr, config).await?.0)
    }

    /// Whether both handles are on the same connection.
    pub fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Frames that reached a request on this connection, other than errors and fetch
    /// headers (which move no data): whether the server answered anything on it.
    pub fn answered(&self) -> u64 {
        self.shared
            .conn
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lists `path` (`""` is the root). Recursive listings descend `max_depth` levels and name
    /// entries relative to `path`.
    ///
    /// The listing is collected in memory, so it is refused past [`MAX_COLLECTED_ENTRIES`]
    /// entries (the server decides how many it sends); use [`Client::list_stream`] to handle
    /// any number page by page.
    pub async fn list(
        &self,
        path: &str,
        recursive: bool,
        max_depth: u16,
    ) -> Result<Vec<Entry>, ClientError> {
        self.list_with(path, recursive, max_depth, false).await
    }

    /// [`Client::list`]; with `links`, symlinks that stay inside the root also carry their
    /// text in [`Entry::link`] (for `ls -l`).
    pub async fn list_with(
        &self,
        path: &str,
        recursive: bool,
        max_depth: u16,
        links: bool,
    ) -> Result<Vec<Entry>, ClientError> {
        let mut stream = self.list_stream_with(path, recursive, max_depth, links)?;
        let mut entries = Vec::new();
        while let Some(page) = stream.next_page().await? {
            if entries.len() + page.len() > MAX_COLLECTED_ENTRIES {
                return Err(ClientError::Local(format!(
                    "{} lists more than {MAX_COLLECTED_ENTRIES} entries; list it page by page (ferry ls streams)",
                    if path.is_empty() { "/" } else { path }
                )));
            }
            entries.extend(page);
        }
        Ok(entries)
    }

    /// Starts a listing and returns its pages as they arrive.
    pub fn list_stream(
        &self,
        path: &str,
        recursive: bool,
        max_depth: u16,
    ) -> Result<ListStream, ClientError> {
        self.list_stream_with(path, recursive, max_depth, false)
    }

    /// [`Client::list_stream`]; `links` as in [`Client::list_with`].
    pub fn list_stream_with(
        &self,
        path: &str,
        recursive: bool,
        max_depth: u16,
        links: bool,
    ) -> Result<ListStream, ClientError> {
        let request = ListRequest::new(path, recursive, max_depth)
            .map_err(|e| ClientError::Local(format!("path too long: {e}")))?
            .with_links(links);
        let pending = self.start(Service::LIST, Message::ListRequest(request))?;
        Ok(ListStream {
            pending,
            received: 0,
        })
    }

    /// Metadata of one entry.
    pub async fn stat(&self, path: &str) -> Result<Entry, ClientError> {
        let request = StatRequest::new(path)
            .map_err(|e| ClientError::Local(format!("path too long: {e}")))?;
        let mut pending = self.start(Service::STAT, Message::StatRequest(request))?;
        let frame = pending.next().await?;
        pending.done = true;
        match pending.decode(&frame)? {
            Message::StatResponse(entry) => Ok(entry),
            Message::Error { body, .. } => Err(ClientError::Remote(body)),
            other => Err(unexpected("stat", &other)),
        }
    }

    /// The BLAKE3 digest of the whole file `path`, with the size and mtime it describes
    /// (spec §3.11). A server that predates the digest service answers `UNKNOWN_REQUEST`.
    /// The server may need to hash the file first, so the answer is awaited for `timeout`
    /// rather than the usual request timeout.
    pub async fn digest(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<DigestResponse, ClientError> {
        let request = DigestRequest::new(path)
            .map_err(|e| ClientError::Local(format!("path too long: {e}")))?;
        let mut pending = self.start(Service::DIGEST, Message::DigestRequest(request))?;
        let frame = pending.next_within(timeout).await?;
        pending.done = true;
        match pending.decode(&frame)? {
            Message::DigestResponse(response) => Ok(response),
            Message::Error { body, .. } => Err(ClientError::Remote(body)),
            other => Err(unexpected("digest", &other)),
        }
    }

    /// Fetches `length` bytes (or [`TO_END`]) of `path` from `offset`. Returns once the server
    /// has accepted the request; the stream then yields the data and checks the end.
    pub async fn fetch(
        &self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<FetchStream, ClientError> {
        let request = FetchRequest::new(path, offset, length)
            .map_err(|e| ClientError::Local(format!("path too long: {e}")))?;
        let mut pending = self.start(Service::FETCH, Message::FetchRequest(request))?;
        let frame = pending.next().await?;
        let response = match pending.decode(&frame)? {
            Message::FetchResponse(response) => response,
            Message::Error { body, .. } => {
                pending.done = true;
                return Err(ClientError::Remote(body));
            }
            other => return Err(unexpected("fetch", &other)),
        };
        let expected_len = if length == TO_END {
            response.size.saturating_sub(offset)
        } else {
            length
        };
        if response.offset != offset || response.length > expected_len {
            return Err(ClientError::Protocol(format!(
                "asked for {expected_len} bytes at {offset}, server offered {} at {}",
                response.length, response.offset
            )));
        }
        Ok(FetchStream {
            pending,
            response,
            received: 0,
            hasher: FetchDigest::new(),
            digest: None,
            data_timer: None,
        })
    }

    /// Fetches a whole file into memory, verified. Convenient for small files and tests.
    pub async fn fetch_all(&self, path: &str) -> Result<(FetchResponse, Vec<u8>), ClientError> {
        let mut stream = self.fetch(path, 0, TO_END).await?;
        let mut data = Vec::with_capacity(usize::try_from(stream.response().length).unwrap_or(0));
        while let Some(chunk) = stream.chunk().await? {
            data.extend_from_slice(&chunk);
        }
        Ok((*stream.response(), data))
    }

    /// Sends a ping with `payload` and waits for its echo; returns the round-trip time.
    pub async fn ping(&self, payload: Bytes) -> Result<Duration, ClientError> {
        if payload.len() > self.shared.max_payload {
            return Err(ClientError::Local(format!(
                "ping payload of {} bytes exceeds {}",
                payload.len(),
                self.shared.max_payload
            )));
        }
        let started = now();
        let mut pending = self.start(Service::ECHO, Message::Ping(payload.clone()))?;
        let frame = pending.next().await?;
        pending.done = true;
        let rtt = started.elapsed();
        match pending.decode(&frame)? {
            Message::Pong(echo) if echo == payload => Ok(rtt),
            Message::Pong(_) => Err(ClientError::Protocol(
                "pong payload differs from the ping".into(),
            )),
            Message::Error { body, .. } => Err(ClientError::Remote(body)),
            other => Err(unexpected("ping", &other)),
        }
    }
}

fn unexpected(what: &str, message: &Message) -> ClientError {
    let (kind, service) = message.kind();
    ClientError::Protocol(format!(
        "unexpected {kind:?}/{service:?} frame answering {what}"
    ))
}

#[cfg(test)]
mod tests {
    use super::test_support::pair;
    use super::*;
    use ferry_protocol::digest::fetch_digest;

    #[tokio::test]
    async fn requests_are_multiplexed_on_one_connection() {
        let client = pair().await;
        // The slow fetch is answered only after the stat that follows it: if requests were not
        // multiplexed this would deadlock (bounded by the test timeout below).
        let slow = client.fetch("slow", 0, TO_END).await.unwrap();
        let c2 = client.clone();
        let read_slow = tokio::spawn(async move {
            let mut slow = slow;
            let mut data = Vec::new();
            while let Some(chunk) = slow.chunk().await.unwrap() {
                data.extend_from_slice(&chunk);
            }
            (data, slow.digest())
        });
        let stat = c2.stat("a.txt").await.unwrap();
        assert_eq!(stat.name, "a.txt");
        let (data, sha) = tokio::time::timeout(Duration::from_secs(5), read_slow)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(data, b"0123456789");
        assert_eq!(sha, Some(fetch_digest(b"0123456789")));

        let names: Vec<_> = client
            .list("", false, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(client.ping(Bytes::from_static(b"hi")).await.is_ok());
    }
}
