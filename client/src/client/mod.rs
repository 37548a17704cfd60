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
//! not keep one unread while awaiting another request on the same `Client`. Dropping a request handle before its end sends
//! `Cancel` and forgets the id, so late frames for it are discarded. The invariants of the
//! routing table are in `STATE.md` beside this file.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_protocol::conn::{KeepAlive, KeepAliveAction, RequestIds};
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{
    DigestRequest, DigestResponse, Entry, FetchRequest, FetchResponse, ListRequest, StatRequest,
    TO_END,
};
use ferry_protocol::transport::{Connector, TcpConnector};
use ferry_protocol::{
    Error as ProtoError, ErrorBody, ErrorCode, Frame, FrameType, HandshakeError, Key, Message,
    RecvHalf, RequestId, SendHalf, Service,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, trace, warn};

use crate::error::ClientError;
use ferry_common::url::FerryUrl;

/// Entries [`Client::list`] collects before it refuses a listing: about 10 MiB of entries with
/// short names. Stream larger listings with [`Client::list_stream`].
pub const MAX_COLLECTED_ENTRIES: usize = 100_000;

/// Client settings: `Default`-like constructor plus setters.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub key: Key,
    /// Ask the server for a plaintext session (authenticated handshake, bodies in the clear).
    pub plaintext: bool,
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
}

impl ClientConfig {
    pub fn new(key: Key) -> Self {
        Self {
            key,
            plaintext: false,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(20),
            request_buffer: 64,
            frame_read_timeout: Duration::from_secs(30),
            busy_retries: 5,
            connector: Arc::new(TcpConnector),
        }
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
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        // The writer ends on its own when `outgoing` goes; the reader would wait for the server.
        self.reader.abort();
    }
}

/// State shared with the reader task.
#[derive(Default)]
struct RouteTable {
    state: Mutex<State>,
    /// Payload bytes of pongs queued for the writer and not yet written. A server that pings
    /// without reading would otherwise grow the queue without bound (spec §3.8).
    pong_bytes: AtomicUsize,
}

/// Body bytes one request may have waiting for its caller. The channel also bounds frames,
/// but a server picks the frame size (up to the 1 MiB cap, or 16 MiB configured), so frames
/// alone would let 64 list pages hold 64 MiB.
const REQUEST_BYTES: u32 = 4 << 20;

/// A frame on its way to a request handle, holding its share of the request's byte budget
/// until the handle takes it.
type Routed = (Frame, tokio::sync::OwnedSemaphorePermit);

/// Pongs owed beyond this many queued bytes are dropped: the peer is not reading them.
const MAX_QUEUED_PONG_BYTES: usize = 1 << 20;

#[derive(Default)]
struct State {
    ids: RequestIds,
    routes: HashMap<u32, Route>,
    closed: Option<CloseReason>,
}

/// Where a request's frames go, and which service it is (a pong is only for a ping).
struct Route {
    tx: mpsc::Sender<Routed>,
    /// Wire bytes this request may have waiting in its channel (see [`REQUEST_BYTES`]).
    budget: Arc<tokio::sync::Semaphore>,
    service: Service,
}

/// Why the connection ended; turned into a fresh [`ClientError`] for each request that asks.
#[derive(Debug, Clone)]
enum CloseReason {
    Lost(String),
    Remote(ErrorBody),
    Protocol(String),
    /// The server stopped in the middle of a frame for longer than the frame-read deadline.
    Stalled(Duration),
}

impl CloseReason {
    fn to_error(&self) -> ClientError {
        match self {
            Self::Lost(why) => ClientError::ConnectionLost(why.clone()),
            Self::Remote(body) => ClientError::RemoteClosed(body.clone()),
            Self::Protocol(why) => ClientError::Protocol(why.clone()),
            Self::Stalled(limit) => ClientError::Protocol(format!(
                "the server started a frame and did not finish it within {}s (a corrupted or stalled connection)",
                limit.as_secs()
            )),
        }
    }
}

enum Outgoing {
    Message(RequestId, Message),
    /// A pong, counted in [`RouteTable::pong_bytes`] until written.
    Pong(RequestId, Bytes),
}

impl RouteTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated, so a poisoned lock
        // is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the connection dead and wakes every waiting request (their senders are dropped).
    fn fail(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.closed.is_none() {
            debug!(?reason, "connection closed");
            state.closed = Some(reason);
        }
        state.routes.clear();
    }

    fn closed_error(&self) -> ClientError {
        match &self.lock().closed {
            Some(reason) => reason.to_error(),
            None => ClientError::ConnectionLost("request abandoned".into()),
        }
    }
}

impl Client {
    /// Connects over TCP and runs the handshake, both bounded by `config.connect_timeout`.
    /// A URL's host is resolved and its addresses tried in order.
    pub async fn connect(
        target: impl Into<Target>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let addrs = match target.into() {
            Target::Addr(addr) => vec![addr],
            Target::Url(url) => {
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
        let proto =
            ferry_protocol::ClientConfig::new(config.key.clone()).plaintext(config.plaintext);
        let (session, leftover) = ferry_protocol::tokio::client_handshake(&mut io, proto)
            .await
            .map_err(|e| handshake_error(e, peer))?;
        debug!(%peer, version = session.version(), mode = ?session.mode(), "connected");
        let (send, recv) = session.into_split();
        let max_payload = send.max_payload();
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(RouteTable::default());
        let reader = tokio::spawn(read_loop(
            read,
            recv,
            leftover,
            conn.clone(),
            tx.downgrade(),
            KeepAlive::new(config.keepalive_interval, config.keepalive_timeout, now()),
            config.frame_read_timeout,
        ));
        tokio::spawn(write_loop(write, send, rx, conn.clone()));
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

    /// Registers a fresh request id, then queues the request.
    fn start(&self, service: Service, message: Message) -> Result<Pending, ClientError> {
        let (tx, rx) = mpsc::channel(self.shared.request_buffer);
        let id = {
            let mut state = self.shared.conn.lock();
            if let Some(reason) = &state.closed {
                return Err(reason.to_error());
            }
            // Ids wrap after 2^32 requests; skip any still in flight.
            let id = loop {
                let id = state.ids.next_id();
                if !state.routes.contains_key(&id.0) {
                    break id;
                }
            };
            let budget = Arc::new(tokio::sync::Semaphore::new(REQUEST_BYTES as usize));
            state.routes.insert(
                id.0,
                Route {
                    tx,
                    service,
                    budget,
                },
            );
            id
        };
        trace!(%id, ?service, "request");
        self.shared
            .outgoing
            .send(Outgoing::Message(id, message))
            .map_err(|_| self.shared.conn.closed_error())?;
        Ok(Pending {
            client: self.clone(),
            id,
            service,
            rx,
            done: false,
        })
    }

    fn cancel(&self, id: RequestId, service: Service) {
        let was_live = self.shared.conn.lock().routes.remove(&id.0).is_some();
        if was_live && service != Service::ECHO {
            trace!(%id, ?service, "cancel");
            let _ = self
                .shared
                .outgoing
                .send(Outgoing::Message(id, Message::Cancel { service }));
        }
    }
}

/// One request in flight: its id and the channel its frames arrive on.
struct Pending {
    client: Client,
    id: RequestId,
    service: Service,
    rx: mpsc::Receiver<Routed>,
    /// The final frame arrived (or the request was refused): nothing to cancel.
    done: bool,
}

impl Pending {
    async fn next(&mut self) -> Result<Frame, ClientError> {
        self.next_within(self.client.shared.request_timeout).await
    }

    async fn next_within(&mut self, timeout: Duration) -> Result<Frame, ClientError> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            // The frame leaves the channel: its bytes no longer count against the budget.
            Ok(Some((frame, _permit))) => Ok(frame),
            Ok(None) => {
                self.done = true;
                Err(self.client.shared.conn.closed_error())
            }
            Err(_) => Err(ClientError::Timeout {
                what: format!("waiting for the server to answer request {}", self.id),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// Decodes a frame routed to this request. A malformed body (spec §9 rows 12-15, e.g.
    /// `mtime_nanos` of 10^9 or more) is fatal to the connection, not only to this request:
    /// the client sends `MALFORMED_MESSAGE` on id 0 and closes, as the spec asks of a receiver.
    fn decode(&mut self, frame: &Frame) -> Result<Message, ClientError> {
        frame.message().map_err(|e| {
            let why = format!(
                "the server sent a malformed {:?} frame: {e}",
                frame.header.kind
            );
            let shared = &self.client.shared;
            let _ = shared.outgoing.send(Outgoing::Message(
                RequestId::CONNECTION,
                Message::Error {
                    service: Service::HANDSHAKE,
                    body: ErrorBody::new(e.code(), why.clone()),
                },
            ));
            shared.conn.fail(CloseReason::Protocol(why.clone()));
            self.done = true;
            ClientError::Protocol(why)
        })
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ClientError>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((frame, _permit))) => Poll::Ready(Ok(frame)),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Err(self.client.shared.conn.closed_error()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.client.cancel(self.id, self.service);
        }
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("service", &self.service)
            .field("done", &self.done)
            .finish()
    }
}

/// A listing in progress; yields pages, then checks the total in the end frame.
#[derive(Debug)]
pub struct ListStream {
    pending: Pending,
    received: u64,
}

impl ListStream {
    /// The next page of entries, or `None` after the end frame.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Entry>>, ClientError> {
        if self.pending.done {
            return Ok(None);
        }
        let frame = self.pending.next().await?;
        match self.pending.decode(&frame)? {
            Message::ListPage(page) => {
                self.received += page.entries.len() as u64;
                Ok(Some(page.entries))
            }
            Message::ListEnd(end) => {
                self.pending.done = true;
                if end.entries != self.received {
                    return Err(ClientError::Protocol(format!(
                        "listing ended claiming {} entries after {} were sent",
                        end.entries, self.received
                    )));
                }
                Ok(None)
            }
            Message::Error { body, .. } => {
                self.pending.done = true;
                Err(ClientError::Remote(body))
            }
            other => Err(unexpected("list", &other)),
        }
    }
}

/// A fetch in progress. The header ([`FetchStream::response`]) has arrived; [`FetchStream::chunk`]
/// yields the data as it comes and, at the end frame, checks the byte count and the BLAKE3 digest of
/// everything received. Dropping the stream early cancels the request.
#[derive(Debug)]
pub struct FetchStream {
    pending: Pending,
    response: FetchResponse,
    received: u64,
    hasher: FetchDigest,
    digest: Option<[u8; 32]>,
}

impl FetchStream {
    /// What the server said about the file and the range it is sending.
    pub fn response(&self) -> &FetchResponse {
        &self.response
    }

    /// Data bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The hash state over the data received so far (to checkpoint an interrupted download).
    pub fn hasher(&self) -> FetchDigest {
        self.hasher.clone()
    }

    /// The verified digest (BLAKE3) of the range, once the end frame has been checked.
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.digest
    }

    /// The next chunk, or `None` once the end frame arrived and matched. An
    /// [`ClientError::Integrity`] error means the data must not be trusted.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        let timeout = self.pending.client.shared.request_timeout;
        match tokio::time::timeout(timeout, std::future::poll_fn(|cx| self.poll_chunk(cx))).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: format!("waiting for data of request {}", self.pending.id),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// Poll form of [`FetchStream::chunk`].
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, ClientError>> {
        if self.pending.done {
            return Poll::Ready(Ok(None));
        }
        let frame = match self.pending.poll_next(cx) {
            Poll::Ready(Ok(frame)) => frame,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(self.handle(frame))
    }

    fn handle(&mut self, frame: Frame) -> Result<Option<Bytes>, ClientError> {
        // Data is the hot path: take the body as is, no decode step.
        if frame.header.kind == FrameType::DATA && frame.header.service == Service::FETCH {
            let chunk = frame.body;
            self.received += chunk.len() as u64;
            if self.received > self.response.length {
                return Err(ClientError::Integrity(format!(
                    "server sent more than the {} bytes it announced",
                    self.response.length
                )));
            }
            self.hasher.update(&chunk);
            return Ok(Some(chunk));
        }
        match self.pending.decode(&frame)? {
            Message::FetchEnd(end) => {
                self.pending.done = true;
                if end.bytes != self.received || self.received != self.response.length {
                    return Err(ClientError::Integrity(format!(
                        "received {} bytes, server announced {} and reported {} at the end",
                        self.received, self.response.length, end.bytes
                    )));
                }
                let digest = self.hasher.finalize();
                if digest != end.digest {
                    return Err(ClientError::Integrity(format!(
                        "digest of the received data is {}, server sent {}",
                        hex::encode(digest),
                        hex::encode(end.digest)
                    )));
                }
                self.digest = Some(digest);
                Ok(None)
            }
            Message::Error { body, .. } => {
                self.pending.done = true;
                Err(ClientError::Remote(body))
            }
            other => Err(unexpected("fetch", &other)),
        }
    }
}

impl futures::Stream for FetchStream {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx).map(Result::transpose)
    }
}

/// The clock as tokio sees it, so keep-alive follows paused time in tests.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unexpected(what: &str, message: &Message) -> ClientError {
    let (kind, service) = message.kind();
    ClientError::Protocol(format!(
        "unexpected {kind:?}/{service:?} frame answering {what}"
    ))
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

/// Owns the read half: frames in, routed by id; keep-alive pings out.
async fn read_loop<R: AsyncRead + Unpin>(
    mut read: R,
    mut recv: RecvHalf,
    mut buf: BytesMut,
    conn: Arc<RouteTable>,
    outgoing: mpsc::WeakUnboundedSender<Outgoing>,
    mut keepalive: KeepAlive,
    frame_read_timeout: Duration,
) {
    let send = |id: RequestId, message: Message| {
        if let Some(tx) = outgoing.upgrade() {
            let _ = tx.send(Outgoing::Message(id, message));
        }
    };
    let pong = |id: RequestId, payload: Bytes| {
        // Answer every ping (spec §3.8) while the server reads its pongs; past the bound it
        // is not reading, and queueing more would only grow our memory.
        let queued = conn.pong_bytes.load(Ordering::Relaxed);
        if queued > 0 && queued + payload.len() > MAX_QUEUED_PONG_BYTES {
            trace!(%id, queued, "dropping a pong: the server is not reading");
            return;
        }
        if let Some(tx) = outgoing.upgrade() {
            // A copy: the payload is a slice of the read buffer, and a queued slice would pin
            // that whole allocation, so a flood would make the reader allocate anew each read.
            let payload = Bytes::copy_from_slice(&payload);
            conn.pong_bytes.fetch_add(payload.len(), Ordering::Relaxed);
            if let Err(mpsc::error::SendError(Outgoing::Pong(_, payload))) =
                tx.send(Outgoing::Pong(id, payload))
            {
                conn.pong_bytes.fetch_sub(payload.len(), Ordering::Relaxed);
            }
        }
    };
    // When the frame now arriving started to arrive (spec §7 frame read deadline).
    let mut frame_started: Option<tokio::time::Instant> = None;
    loop {
        loop {
            match recv.read_frame(&mut buf) {
                Ok(Some(frame)) => {
                    frame_started = None;
                    if let Err(reason) = dispatch(frame, &conn, &mut keepalive, &send, &pong).await
                    {
                        conn.fail(reason);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "bad frame from server");
                    send(
                        RequestId::CONNECTION,
                        Message::Error {
                            service: Service::HANDSHAKE,
                            body: ErrorBody::new(e.code(), e.to_string()),
                        },
                    );
                    conn.fail(CloseReason::Protocol(corruption(&e)));
                    return;
                }
            }
        }
        if recv.decoder().is_mid_frame(&buf) {
            frame_started.get_or_insert_with(tokio::time::Instant::now);
        } else {
            frame_started = None;
        }
        // Reading into spare capacity; frames are split off without copying, so the buffer's
        // allocation is shared with chunks still held by callers and is replaced as needed.
        buf.reserve(256 * 1024);
        let keepalive_at = tokio::time::Instant::from_std(keepalive.poll_timeout());
        let frame_deadline = frame_started.map(|t| t + frame_read_timeout);
        tokio::select! {
            read = read.read_buf(&mut buf) => match read {
                Ok(0) => {
                    let why = if recv.decoder().is_mid_frame(&buf) {
                        "the server closed the connection in the middle of a frame"
                    } else {
                        "the server closed the connection"
                    };
                    conn.fail(CloseReason::Lost(why.into()));
                    return;
                }
                Ok(_) => keepalive.handle_received(now()),
                Err(e) => {
                    conn.fail(CloseReason::Lost(e.to_string()));
                    return;
                }
            },
            () = async {
                match frame_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                send(
                    RequestId::CONNECTION,
                    Message::Error {
                        service: Service::HANDSHAKE,
                        body: ErrorBody::new(
                            ferry_protocol::ErrorCode::TIMEOUT,
                            format!("frame not completed within {}s", frame_read_timeout.as_secs()),
                        ),
                    },
                );
                conn.fail(CloseReason::Stalled(frame_read_timeout));
                return;
            }
            () = tokio::time::sleep_until(keepalive_at) => match keepalive.poll(now()) {
                KeepAliveAction::SendPing(payload) => send(RequestId::CONNECTION, Message::Ping(payload)),
                KeepAliveAction::Expired => {
                    conn.fail(CloseReason::Lost("the server stopped answering".into()));
                    return;
                }
                KeepAliveAction::Wait => {}
            },
        }
    }
}

/// One sentence for a frame or record the client could not read: the same wording whichever
/// side noticed the corruption first.
fn corruption(error: &ProtoError) -> String {
    format!("the connection was corrupted or tampered with ({error})")
}

/// Whether a server may send `kind`/`service` on a request id (spec §3.2). Anything else there
/// (an unknown type or service, a handshake or request frame) is discarded and the request
/// carries on (spec §9 rows 10 and 16, as a client applies them).
fn server_sends(kind: FrameType, service: Service) -> bool {
    use FrameType as T;
    match kind {
        T::RESPONSE => matches!(
            service,
            Service::LIST | Service::STAT | Service::FETCH | Service::DIGEST
        ),
        T::DATA => service == Service::FETCH,
        T::END => matches!(service, Service::LIST | Service::FETCH),
        T::ERROR => true,
        T::PING | T::PONG => service == Service::ECHO,
        _ => false,
    }
}

async fn dispatch(
    frame: Frame,
    conn: &RouteTable,
    keepalive: &mut KeepAlive,
    send: &impl Fn(RequestId, Message),
    pong: &impl Fn(RequestId, Bytes),
) -> Result<(), CloseReason> {
    let id = frame.header.id;
    let kind = frame.header.kind;
    if id == RequestId::CONNECTION {
        return match frame.message() {
            Ok(Message::Ping(payload)) => {
                pong(RequestId::CONNECTION, payload);
                Ok(())
            }
            Ok(Message::Pong(payload)) => {
                keepalive.handle_pong(&payload, now());
                Ok(())
            }
            Ok(Message::Error { body, .. }) => Err(CloseReason::Remote(body)),
            Ok(other) => {
                debug!(kind = ?other.kind(), "ignoring connection-level frame");
                Ok(())
            }
            Err(e) => {
                send(
                    RequestId::CONNECTION,
                    Message::Error {
                        service: Service::HANDSHAKE,
                        body: ErrorBody::new(e.code(), e.to_string()),
                    },
                );
                Err(CloseReason::Protocol(format!(
                    "the server sent a malformed {kind:?} frame: {e}"
                )))
            }
        };
    }
    if !server_sends(kind, frame.header.service) {
        debug!(%id, ?kind, service = ?frame.header.service, "discarding a frame a server does not send");
        return Ok(());
    }
    if kind == FrameType::PING {
        // A ping on a request id is not part of the request: answer it on that id (§3.8).
        pong(id, frame.body);
        return Ok(());
    }
    let last = matches!(kind, FrameType::END | FrameType::ERROR | FrameType::PONG)
        || (kind == FrameType::RESPONSE
            && matches!(frame.header.service, Service::STAT | Service::DIGEST));
    let route = {
        let mut state = conn.lock();
        match state.routes.get(&id.0) {
            // An unsolicited pong on a request id is ignored (§3.8), not taken as its answer.
            Some(route) if kind == FrameType::PONG && route.service != Service::ECHO => None,
            Some(_) if last => state.routes.remove(&id.0).map(|r| (r.tx, r.budget)),
            Some(route) => Some((route.tx.clone(), route.budget.clone())),
            None => None,
        }
    };
    match route {
        Some((tx, budget)) => {
            // Waits while the caller has REQUEST_BYTES unread: the reader stops, TCP fills,
            // the server slows down (the connection's backpressure).
            let cost = (frame.body.len() as u32).clamp(1, REQUEST_BYTES);
            let Ok(permit) = budget.acquire_many_owned(cost).await else {
                return Ok(());
            };
            if tx.send((frame, permit)).await.is_err() {
                // The caller dropped its handle between our lookup and the send; its Drop has
                // already cancelled the request.
                conn.lock().routes.remove(&id.0);
            }
        }
        // Frames still in flight after a cancel.
        None => trace!(%id, ?kind, "frame for a request no longer waiting"),
    }
    Ok(())
}

/// Owns the write half: seals queued messages, batching whatever is ready into one write.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut send: SendHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    conn: Arc<RouteTable>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut next = Some(first);
        let mut pongs = 0;
        while let Some(out) = next {
            let (id, message) = match out {
                Outgoing::Message(id, message) => (id, message),
                Outgoing::Pong(id, payload) => {
                    pongs += payload.len();
                    (id, Message::Pong(payload))
                }
            };
            if let Err(e) = send.write_message(id, &message, &mut buf) {
                // Callers check sizes before queueing, so this is a bug, not the server's fault.
                warn!(error = %e, "cannot encode request");
                conn.fail(CloseReason::Protocol(format!("cannot encode request: {e}")));
                return;
            }
            if buf.len() >= 256 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        let written = write.write_all(&buf).await;
        conn.pong_bytes.fetch_sub(pongs, Ordering::Relaxed);
        if let Err(e) = written {
            conn.fail(CloseReason::Lost(e.to_string()));
            return;
        }
    }
    let _ = write.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::digest::fetch_digest;
    use ferry_protocol::message::{EntryKind, FetchEnd, ListEnd, ListPage};
    use ferry_protocol::{ErrorCode, ServerConfig};
    use futures::{SinkExt, StreamExt};

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            kind: EntryKind::FILE,
            size: 3,
            mtime_secs: 1,
            mtime_nanos: 0,
            mode: 0o644,
            link: None,
        }
    }

    /// A tiny in-memory server: files are `name -> content`; a fetch of `slow` sends its data in
    /// 1-byte chunks only after a stat arrives, to prove requests interleave. `corrupt` sends a
    /// wrong hash.
    async fn fake_server(io: tokio::io::DuplexStream, key: Key) {
        let mut conn = ferry_protocol::tokio::accept(io, ServerConfig::new(key))
            .await
            .unwrap();
        let files: HashMap<&str, &[u8]> = [
            ("a.txt", b"abc".as_slice()),
            ("corrupt", b"xyz".as_slice()),
            ("slow", b"0123456789".as_slice()),
            ("overflow", b"abc".as_slice()),
            ("short", b"abc".as_slice()),
        ]
        .into();
        let mut parked: Option<RequestId> = None;
        while let Some(Ok(frame)) = conn.next().await {
            let id = frame.header.id;
            let replies: Vec<Message> = match frame.message().unwrap() {
                Message::Ping(p) => vec![Message::Pong(p)],
                Message::StatRequest(r) => {
                    let mut out = vec![match files.get(r.path.as_str()) {
                        Some(_) => Message::StatResponse(entry(&r.path)),
                        None => Message::Error {
                            service: Service::STAT,
                            body: ErrorBody::new(ErrorCode::NOT_FOUND, "no such file"),
                        },
                    }];
                    // Release the parked slow fetch after answering the stat.
                    if let Some(slow) = parked.take() {
                        conn.send((id, out.remove(0))).await.unwrap();
                        for b in files["slow"] {
                            conn.send((slow, Message::Data(Bytes::copy_from_slice(&[*b]))))
                                .await
                                .unwrap();
                        }
                        conn.send((
                            slow,
                            Message::FetchEnd(FetchEnd {
                                bytes: 10,
                                digest: fetch_digest(files["slow"]),
                            }),
                        ))
                        .await
                        .unwrap();
                    }
                    out
                }
                Message::ListRequest(_) => vec![
                    Message::ListPage(ListPage {
                        entries: vec![entry("a"), entry("b")],
                    }),
                    Message::ListPage(ListPage {
                        entries: vec![entry("c")],
                    }),
                    Message::ListEnd(ListEnd { entries: 3 }),
                ],
                Message::FetchRequest(r) => {
                    let data = files[r.path.as_str()];
                    let head = Message::FetchResponse(FetchResponse {
                        size: data.len() as u64,
                        mtime_secs: 1,
                        mtime_nanos: 0,
                        offset: 0,
                        length: data.len() as u64,
                    });
                    if r.path == "slow" {
                        parked = Some(id);
                        vec![head]
                    } else if r.path == "overflow" || r.path == "short" {
                        // Announce 3 bytes, then send 5 (or 2) and an end that agrees with
                        // what was sent: the count must still be checked against the header.
                        let sent: &[u8] = if r.path == "overflow" {
                            b"12345"
                        } else {
                            b"12"
                        };
                        vec![
                            head,
                            Message::Data(Bytes::copy_from_slice(sent)),
                            Message::FetchEnd(FetchEnd {
                                bytes: sent.len() as u64,
                                digest: fetch_digest(sent),
                            }),
                        ]
                    } else {
                        let mut sha = fetch_digest(data);
                        if r.path == "corrupt" {
                            sha[0] ^= 1;
                        }
                        vec![
                            head,
                            Message::Data(Bytes::from_static(data)),
                            Message::FetchEnd(FetchEnd {
                                bytes: data.len() as u64,
                                digest: sha,
                            }),
                        ]
                    }
                }
                Message::Cancel { .. } => vec![],
                other => panic!("fake server got {other:?}"),
            };
            for reply in replies {
                conn.send((id, reply)).await.unwrap();
            }
        }
    }

    async fn pair() -> Client {
        let key = Key::generate();
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(fake_server(b, key.clone()));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        Client::handshake(a, peer, ClientConfig::new(key))
            .await
            .unwrap()
    }

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

    #[tokio::test]
    async fn remote_errors_and_integrity_failures_are_distinct() {
        let client = pair().await;
        let err = client.stat("missing").await.unwrap_err();
        assert_eq!(err.remote_code(), Some(ErrorCode::NOT_FOUND));
        let (_, data) = client.fetch_all("a.txt").await.unwrap();
        assert_eq!(data, b"abc");
        let err = client.fetch_all("corrupt").await.unwrap_err();
        assert!(matches!(err, ClientError::Integrity(_)), "{err}");
        for path in ["overflow", "short"] {
            let err = client.fetch_all(path).await.unwrap_err();
            assert!(matches!(err, ClientError::Integrity(_)), "{path}: {err}");
        }
        // The connection survives a failed request.
        client.stat("a.txt").await.unwrap();
    }

    #[tokio::test]
    async fn wrong_key_is_an_auth_error() {
        let (a, b) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let _ = ferry_protocol::tokio::accept(b, ServerConfig::new(Key::generate())).await;
        });
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let err = Client::handshake(a, peer, ClientConfig::new(Key::generate()))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Auth { .. }), "{err}");
        assert_eq!(err.exit_code(), crate::error::exit::CONNECTION);
    }

    #[tokio::test]
    async fn requests_fail_cleanly_when_the_server_goes_away() {
        let key = Key::generate();
        let (a, b) = tokio::io::duplex(4096);
        let server_key = key.clone();
        tokio::spawn(async move {
            let conn = ferry_protocol::tokio::accept(b, ServerConfig::new(server_key))
                .await
                .unwrap();
            drop(conn);
        });
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let client = Client::handshake(a, peer, ClientConfig::new(key))
            .await
            .unwrap();
        let err = client.stat("x").await.unwrap_err();
        assert!(err.is_connection_error(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_server_expires_the_connection() {
        let key = Key::generate();
        let (a, b) = tokio::io::duplex(4096);
        let server_key = key.clone();
        let server = tokio::spawn(async move {
            // Handshake, then never read or answer.
            let conn = ferry_protocol::tokio::accept(b, ServerConfig::new(server_key))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(conn);
        });
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let config = ClientConfig::new(key)
            .keepalive(Duration::from_secs(5), Duration::from_secs(5))
            .request_timeout(Duration::from_secs(600));
        let client = Client::handshake(a, peer, config).await.unwrap();
        let err = client.stat("x").await.unwrap_err();
        assert!(err.to_string().contains("stopped answering"), "{err}");
        server.abort();
    }
}
