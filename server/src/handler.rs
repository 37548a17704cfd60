//! One connection: handshake under a deadline, then a reader (this task), a writer task and one
//! task per request.
//!
//! ```text
//!             +-------------+   ctrl (pong, refusals; drained first)   +--------+
//!  socket --> | reader loop | ---------------------------------------> |        |
//!             |  dispatch   |                                          | writer | --> socket
//!             +-------------+   spawn    +---------------+   data      |        |
//!                           \----------> | request tasks | ----------> |        |
//!                                        +---------------+  (bounded)  +--------+
//! ```
//!
//! Both queues are bounded, so a client that stops reading stalls the writer, the queues fill
//! and the request tasks wait: backpressure instead of memory growth. Request tasks enqueue
//! frame by frame and the bounded queue admits waiting senders in FIFO order, so concurrent
//! fetches interleave chunk by chunk. The writer seals and batches many frames per `write`.
//!
//! The reader enforces the per-frame read deadline (a frame that has started must finish
//! within `frame_read_timeout`), the idle timeout (nothing in flight and nothing received) and
//! the in-flight limit. Frame, decode and record errors end the connection with an error frame
//! on id 0; a well-formed but unknown request gets `UNKNOWN_REQUEST` for its id and the
//! connection continues.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::message::{DigestRequest, FetchRequest, ListEnd, ListRequest, StatRequest};
use ferry_protocol::{
    DecodeError, ErrorBody, ErrorCode, Frame, Message, RecvHalf, RequestId, SendHalf, ServerConfig,
    Service,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::admission::PendingTicket;
use crate::buffers::{BufferPool, PooledBuf};
use crate::config::Limits;
use crate::fs::{FileReader, FsError, Jail, Lister, RelPath};
use crate::shutdown::Signals;

/// State shared by every connection of a server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub jail: Jail,
    pub limits: Limits,
    pub handshake: ServerConfig,
    /// Whole-file digests by file version (spec §3.11).
    pub digests: crate::digest::DigestCache,
}

/// A frame to send: the request id and the message.
type Out = (RequestId, Message);

/// Data-queue depth in frames: with 64 KiB chunks, at most 1 MiB waits per connection.
const DATA_QUEUE: usize = 16;
/// Control-queue depth: pongs and refusals.
const CTRL_QUEUE: usize = 32;
/// The writer stops batching once this much is encoded.
const WRITE_BATCH: usize = 256 * 1024;
/// Smaller plaintext chunks are copied into the batch rather than sent as their own segment.
const ZERO_COPY_MIN: usize = 4096;
/// How long the goodbye frame may wait for room in the data queue.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);
/// Read-buffer top-up before each socket read.
const READ_RESERVE: usize = 16 * 1024;

/// Why the reader stopped.
#[derive(Debug)]
enum Close {
    /// The client closed its side and nothing is in flight.
    Eof,
    /// The stream ended inside a frame (spec §9 row 5): close, nothing to send.
    Truncated,
    /// The client sent a connection-level error.
    PeerError(ErrorBody),
    /// Protocol violation, decode or record failure, frame deadline: tell the client why.
    Fatal(ErrorCode, String),
    /// Nothing happened for `idle_timeout`.
    Idle,
    /// Shutdown requested and nothing left in flight.
    Shutdown,
    /// Grace period over.
    Killed,
    /// The writer ended (client gone or write deadline).
    WriterGone,
    /// Reading from the socket failed.
    Io(std::io::Error),
}

/// Serves one accepted connection until it closes. `ticket` is its place in the pool of
/// connections still in their handshake; the connection closes at once if it is evicted.
pub(crate) async fn serve(
    mut stream: TcpStream,
    ticket: PendingTicket,
    shared: Arc<Shared>,
    signals: Signals,
) {
    let limits = &shared.limits;
    let evicted = ticket.evicted().clone();
    let handshake = tokio::select! {
        biased;
        _ = signals.kill.cancelled() => return,
        _ = evicted.cancelled() => {
            tracing::debug!("evicted before completing the handshake");
            // Only a peer that has sent nothing can still read a plaintext error; once the
            // server has answered its hello, a plaintext frame would read as a bad record.
            // Best effort and never waiting: an idle flood must not cost a task that waits.
            if !ticket.has_progressed() {
                let _ = stream.try_write(&crate::listener::busy_frame(
                    "too many connections waiting to authenticate; try again later",
                ));
            }
            return;
        }
        result = tokio::time::timeout(limits.handshake_timeout, async {
            // Admission prefers to evict connections that have sent nothing.
            stream.readable().await?;
            ticket.mark_progress();
            ferry_protocol::tokio::server_handshake(&mut stream, shared.handshake.clone()).await
        }) => result,
    };
    let (session, leftover) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => {
            // Wrong keys and scanners are the peer's problem, not ours.
            tracing::debug!(%error, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(
                timeout = %humantime::format_duration(limits.handshake_timeout),
                "handshake timed out"
            );
            return;
        }
    };
    let Some(_slot) = ticket.authenticate() else {
        tracing::debug!("evicted as the handshake completed");
        return;
    };
    tracing::debug!(mode = ?session.mode(), "session established");
    let version = session.version();
    let (send, recv) = session.into_split();
    let chunk = limits.chunk_size.min(send.max_payload()).max(1);
    let page_bytes = limits.list_page_bytes.min(send.max_payload()).max(4096);
    // Whole chunks per read, so only a file's last frame is short.
    let read_size = (limits.read_size / chunk).max(1) * chunk;
    let (rd, wr) = stream.into_split();
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
    let (ctrl_tx, ctrl_rx) = mpsc::channel(CTRL_QUEUE);
    let mut writer = tokio::spawn(
        Writer::new(send, version, wr, limits.write_timeout)
            .run(ctrl_rx, data_rx)
            .in_current_span(),
    );
    let mut conn = Conn {
        shared: shared.clone(),
        ctx: RequestCtx {
            shared: shared.clone(),
            data: data_tx,
            buffers: BufferPool::new(read_size, limits.read_buffers_per_connection),
            chunk,
            page_bytes,
        },
        ctrl: ctrl_tx,
        kill: signals.kill.clone(),
        tasks: JoinSet::new(),
        in_flight: HashMap::new(),
        next_generation: 0,
    };
    let close = conn
        .read_loop(rd, recv, leftover, &signals, &mut writer)
        .await;
    let writer_done = matches!(close, Close::WriterGone);
    let farewell = match &close {
        Close::Fatal(code, message) => {
            tracing::debug!(%code, %message, "closing connection");
            Some(ErrorBody::new(*code, message.clone()))
        }
        Close::Idle => Some(ErrorBody::new(
            ErrorCode::TIMEOUT,
            format!(
                "idle for {}",
                humantime::format_duration(limits.idle_timeout)
            ),
        )),
        Close::Shutdown => Some(ErrorBody::from_code(ErrorCode::SHUTTING_DOWN)),
        Close::Killed => Some(ErrorBody::new(
            ErrorCode::SHUTTING_DOWN,
            "server shut down before the request finished",
        )),
        Close::PeerError(body) => {
            tracing::debug!(%body, "client closed the connection with an error");
            None
        }
        Close::Io(error) => {
            tracing::debug!(%error, "read failed");
            None
        }
        Close::Eof | Close::WriterGone => None,
        Close::Truncated => {
            tracing::debug!("stream ended inside a frame");
            None
        }
    };
    conn.tasks.abort_all();
    let kill_now = matches!(close, Close::Killed);
    if let Some(body) = farewell {
        // Through the data queue, so it follows every frame already queued (a fetch's end
        // must not be overtaken by the goodbye). A client that does not read gets no goodbye.
        let patience = if kill_now {
            Duration::from_millis(100)
        } else {
            FAREWELL_TIMEOUT
        };
        let goodbye = (
            RequestId::CONNECTION,
            Message::Error {
                service: Service::HANDSHAKE,
                body,
            },
        );
        let _ = tokio::time::timeout(patience, conn.ctx.data.send(goodbye)).await;
    }
    // Dropping every sender lets the writer flush what is queued and shut the socket down.
    drop(conn);
    if !writer_done {
        let patience = if kill_now {
            Duration::from_millis(100)
        } else {
            limits.write_timeout
        };
        tokio::select! {
            biased;
            _ = signals.kill.cancelled(), if !kill_now => writer.abort(),
            _ = tokio::time::sleep(patience) => writer.abort(),
            _ = &mut writer => {}
        }
    }
    tracing::debug!("connection closed");
}

/// What every request task needs.
#[derive(Debug, Clone)]
struct RequestCtx {
    shared: Arc<Shared>,
    data: mpsc::Sender<Out>,
    /// This connection's fetch read buffers.
    buffers: Arc<BufferPool>,
    /// Data bytes per frame.
    chunk: usize,
    /// Encoded bytes per list page.
    page_bytes: usize,
}

#[derive(Debug)]
struct InFlight {
    service: Service,
    generation: u64,
    abort: AbortHandle,
}

/// The reader's state.
#[derive(Debug)]
struct Conn {
    shared: Arc<Shared>,
    ctx: RequestCtx,
    ctrl: mpsc::Sender<Out>,
    /// The server's grace-period-over signal.
    kill: tokio_util::sync::CancellationToken,
    /// Request tasks; each returns its id and generation.
    tasks: JoinSet<(RequestId, u64)>,
    in_flight: HashMap<RequestId, InFlight>,
    /// Tells a finished task from a newer request that reused its id after a cancel.
    next_generation: u64,
}

impl Conn {
    async fn read_loop(
        &mut self,
        mut rd: OwnedReadHalf,
        mut recv: RecvHalf,
        mut buf: BytesMut,
        signals: &Signals,
        writer: &mut tokio::task::JoinHandle<()>,
    ) -> Close {
        let limits = self.shared.limits.clone();
        let far = Duration::from_secs(86_400 * 365);
        let mut stopping = false;
        let mut eof = false;
        let mut last_activity = Instant::now();
        let mut frame_started: Option<Instant> = None;
        loop {
            loop {
                match recv.read_frame(&mut buf) {
                    Ok(Some(frame)) => {
                        last_activity = Instant::now();
                        frame_started = None;
                        if let Some(close) = self.handle_frame(frame, stopping).await {
                            return close;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return Close::Fatal(error.code(), error.to_string()),
                }
            }
            if recv.decoder().is_mid_frame(&buf) {
                if eof {
                    return Close::Truncated;
                }
                frame_started.get_or_insert_with(Instant::now);
            } else {
                frame_started = None;
            }
            if self.in_flight.is_empty() {
                if eof {
                    return Close::Eof;
                }
                if stopping {
                    return Close::Shutdown;
                }
            }
            let now = Instant::now();
            let frame_deadline = frame_started.map(|t| t + limits.frame_read_timeout);
            let idle_armed = self.in_flight.is_empty() && frame_started.is_none();
            let idle_deadline = last_activity + limits.idle_timeout;
            if buf.capacity() - buf.len() < READ_RESERVE / 4 {
                buf.reserve(READ_RESERVE);
            }
            tokio::select! {
                biased;
                _ = signals.kill.cancelled() => return Close::Killed,
                _ = signals.stop.cancelled(), if !stopping => stopping = true,
                result = &mut *writer => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "writer task failed");
                    }
                    return Close::WriterGone;
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    last_activity = Instant::now();
                    if let Some((id, service)) = self.finished(joined) {
                        let internal = (
                            id,
                            Message::Error {
                                service,
                                body: ErrorBody::from_code(ErrorCode::INTERNAL),
                            },
                        );
                        if let Some(close) = self.enqueue(&self.ctx.data, internal).await {
                            return close;
                        }
                    }
                }
                _ = tokio::time::sleep_until(frame_deadline.unwrap_or(now + far)),
                    if frame_deadline.is_some() => {
                    return Close::Fatal(
                        ErrorCode::TIMEOUT,
                        format!(
                            "frame not completed within {}",
                            humantime::format_duration(limits.frame_read_timeout)
                        ),
                    );
                }
                _ = tokio::time::sleep_until(idle_deadline), if idle_armed => return Close::Idle,
                read = rd.read_buf(&mut buf), if !eof => match read {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(error) => return Close::Io(error),
                },
            }
        }
    }

    /// Bookkeeping for a finished request task. Returns a request that panicked, which still
    /// owes the client a final frame.
    fn finished(
        &mut self,
        joined: Result<(RequestId, u64), JoinError>,
    ) -> Option<(RequestId, Service)> {
        match joined {
            Ok((id, generation)) => {
                if self
                    .in_flight
                    .get(&id)
                    .is_some_and(|f| f.generation == generation)
                {
                    self.in_flight.remove(&id);
                }
                None
            }
            // Cancelled tasks were removed when cancelled.
            Err(error) if error.is_cancelled() => None,
            Err(error) => {
                // A panicking request must not take the connection down; find its id.
                tracing::error!(%error, "request task panicked");
                let task = error.id();
                let id = self
                    .in_flight
                    .iter()
                    .find(|(_, f)| f.abort.id() == task)
                    .map(|(id, _)| *id)?;
                let flight = self.in_flight.remove(&id)?;
                Some((id, flight.service))
            }
        }
    }

    /// Sends a reply that does not belong to a running request's stream.
    async fn reply(&self, id: RequestId, message: Message) -> Option<Close> {
        self.enqueue(&self.ctrl, (id, message)).await
    }

    /// Waits for room in a queue; the reader stalls meanwhile (that is the backpressure), but
    /// still ends at once when the grace period is over.
    async fn enqueue(&self, queue: &mpsc::Sender<Out>, out: Out) -> Option<Close> {
        tokio::select! {
            biased;
            _ = self.kill.cancelled() => Some(Close::Killed),
            sent = queue.send(out) => match sent {
                Ok(()) => None,
                Err(_) => Some(Close::WriterGone),
            },
        }
    }

    async fn refuse(
        &self,
        id: RequestId,
        service: Service,
        code: ErrorCode,
        message: String,
    ) -> Option<Close> {
        tracing::debug!(%id, ?service, %code, %message, "request refused");
        self.reply(
            id,
            Message::Error {
                service,
                body: ErrorBody::new(code, message),
            },
        )
        .await
    }

    async fn handle_frame(&mut self, frame: Frame, stopping: bool) -> Option<Close> {
        let id = frame.header.id;
        let service = frame.header.service;
        let message = match frame.message() {
            Ok(message) => message,
            Err(error @ DecodeError::UnknownMessage { .. }) => {
                // The frame was authentic (it passed the record layer), just not understood.
                if id == RequestId::CONNECTION {
                    return Some(Close::Fatal(error.code(), error.to_string()));
                }
                return self
                    .refuse(id, service, ErrorCode::UNKNOWN_REQUEST, error.to_string())
                    .await;
            }
            Err(error) => {
                return Some(Close::Fatal(error.code(), format!("request {id}: {error}")))
            }
        };
        let request = match message {
            Message::Ping(payload) => return self.reply(id, Message::Pong(payload)).await,
            // We never ping, but a pong is harmless.
            Message::Pong(_) => return None,
            Message::Cancel { service } => return self.cancel(id, service).await,
            Message::Error { body, .. } if id == RequestId::CONNECTION => {
                return Some(Close::PeerError(body))
            }
            Message::Error { .. } => return None,
            Message::ListRequest(r) => Request::List(r),
            Message::StatRequest(r) => Request::Stat(r),
            Message::FetchRequest(r) => Request::Fetch(r),
            Message::DigestRequest(r) => Request::Digest(r),
            other => {
                let text = format!("{:?} is not something a client sends", other.kind().0);
                if id == RequestId::CONNECTION {
                    return Some(Close::Fatal(ErrorCode::UNEXPECTED_MESSAGE, text));
                }
                return self
                    .refuse(id, service, ErrorCode::UNEXPECTED_MESSAGE, text)
                    .await;
            }
        };
        self.start(id, service, request, stopping).await
    }

    async fn start(
        &mut self,
        id: RequestId,
        service: Service,
        request: Request,
        stopping: bool,
    ) -> Option<Close> {
        if id == RequestId::CONNECTION {
            return Some(Close::Fatal(
                ErrorCode::UNEXPECTED_MESSAGE,
                "requests must not use id 0".into(),
            ));
        }
        if self.in_flight.contains_key(&id) {
            return self
                .refuse(
                    id,
                    service,
                    ErrorCode::DUPLICATE_ID,
                    format!("request id {} is already in flight", id.0),
                )
                .await;
        }
        if stopping {
            return self
                .refuse(
                    id,
                    service,
                    ErrorCode::SHUTTING_DOWN,
                    "server is shutting down".into(),
                )
                .await;
        }
        let max = self.shared.limits.max_in_flight_per_connection;
        if self.in_flight.len() >= max {
            return self
                .refuse(
                    id,
                    service,
                    ErrorCode::BUSY,
                    format!("{max} requests already in flight on this connection"),
                )
                .await;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let abort = self.tasks.spawn(
            run_request(self.ctx.clone(), id, service, request, generation).in_current_span(),
        );
        self.in_flight.insert(
            id,
            InFlight {
                service,
                generation,
                abort,
            },
        );
        None
    }

    async fn cancel(&mut self, id: RequestId, _service: Service) -> Option<Close> {
        // The id alone names the request; the service byte is informational.
        let Some(flight) = self.in_flight.remove(&id) else {
            // Already finished: the client will see its end frame.
            return None;
        };
        flight.abort.abort();
        tracing::info!(%id, service = service_name(flight.service), outcome = "cancelled", "request");
        // Through the data queue, so it follows any frame the request already queued.
        let cancelled = (
            id,
            Message::Error {
                service: flight.service,
                body: ErrorBody::from_code(ErrorCode::CANCELLED),
            },
        );
        self.enqueue(&self.ctx.data, cancelled).await
    }
}

/// The writer: takes frames from both queues (control first), seals them and writes them in
/// batches of about [`WRITE_BATCH`] bytes, one `writev` at a time.
///
/// In plaintext mode a data chunk is not copied: the batch holds its 12-byte header and the
/// chunk's own `Bytes` (a slice of the fetch's read buffer) side by side. Encrypted frames are
/// sealed into the batch buffer, which is the one copy encryption needs anyway; data chunks
/// wait in `unsealed` and are sealed together (interleaved CBC chains, several times faster
/// than one record at a time), always before any later frame, so wire order is kept.
struct Writer {
    send: SendHalf,
    /// Negotiated version, for headers written here directly (plaintext data).
    version: u8,
    plaintext: bool,
    io: OwnedWriteHalf,
    write_timeout: Duration,
    /// Encoded bytes not yet split into `segments`.
    scratch: BytesMut,
    /// What the next `writev` sends, in order.
    segments: VecDeque<Bytes>,
    batched: usize,
    /// Encrypted mode: data chunks queued for sealing together, in order.
    unsealed: Vec<(RequestId, Bytes)>,
}

impl Writer {
    fn new(send: SendHalf, version: u8, io: OwnedWriteHalf, write_timeout: Duration) -> Self {
        let plaintext = send.mode() == ferry_protocol::Mode::PLAINTEXT;
        Self {
            send,
            version,
            plaintext,
            io,
            write_timeout,
            scratch: BytesMut::with_capacity(WRITE_BATCH + 128 * 1024),
            segments: VecDeque::new(),
            batched: 0,
            unsealed: Vec::new(),
        }
    }

    async fn run(mut self, mut ctrl: mpsc::Receiver<Out>, mut data: mpsc::Receiver<Out>) {
        let (mut ctrl_open, mut data_open) = (true, true);
        loop {
            let first = tokio::select! {
                biased;
                m = ctrl.recv(), if ctrl_open => match m {
                    Some(m) => m,
                    None => { ctrl_open = false; continue; }
                },
                m = data.recv(), if data_open => match m {
                    Some(m) => m,
                    None => { data_open = false; continue; }
                },
                else => break,
            };
            if let Err(error) = self.push(first) {
                tracing::warn!(%error, "cannot encode a frame; closing");
                return;
            }
            while self.batched < WRITE_BATCH {
                let next = match ctrl.try_recv() {
                    Ok(next) => next,
                    Err(_) => match data.try_recv() {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                };
                if let Err(error) = self.push(next) {
                    tracing::warn!(%error, "cannot encode a frame; closing");
                    return;
                }
            }
            if let Err(error) = self.seal_unsealed() {
                tracing::warn!(%error, "cannot encode a frame; closing");
                return;
            }
            match tokio::time::timeout(self.write_timeout, self.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "write failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(
                        timeout = %humantime::format_duration(self.write_timeout),
                        "client stopped reading; closing"
                    );
                    return;
                }
            }
        }
        let _ = tokio::time::timeout(self.write_timeout, self.io.shutdown()).await;
    }

    /// Encodes one frame into the batch.
    fn push(&mut self, (id, message): Out) -> Result<(), ferry_protocol::Error> {
        match message {
            Message::Data(body) if self.plaintext && body.len() >= ZERO_COPY_MIN => {
                let header = ferry_protocol::Header {
                    kind: ferry_protocol::FrameType::DATA,
                    version: self.version,
                    service: Service::FETCH,
                    id,
                    // Chunks are at most `chunk`, which fits a u32 and the peer's cap.
                    length: u32::try_from(body.len()).unwrap_or(u32::MAX),
                };
                header.encode(&mut self.scratch);
                self.segments.push_back(self.scratch.split().freeze());
                self.batched += ferry_protocol::HEADER_LEN + body.len();
                self.segments.push_back(body);
            }
            Message::Data(body) if !self.plaintext => {
                self.batched +=
                    ferry_protocol::HEADER_LEN + ferry_protocol::crypto::sealed_len(body.len());
                self.unsealed.push((id, body));
            }
            message => {
                self.seal_unsealed()?;
                let before = self.scratch.len();
                self.send.write_message(id, &message, &mut self.scratch)?;
                self.batched += self.scratch.len() - before;
            }
        }
        Ok(())
    }

    /// Seals the queued data chunks, together, into the batch.
    fn seal_unsealed(&mut self) -> Result<(), ferry_protocol::Error> {
        if self.unsealed.is_empty() {
            return Ok(());
        }
        let frames: Vec<_> = self
            .unsealed
            .iter()
            .map(|(id, body)| {
                (
                    ferry_protocol::FrameType::DATA,
                    Service::FETCH,
                    *id,
                    &body[..],
                )
            })
            .collect();
        let result = self.send.write_frames(&frames, &mut self.scratch);
        self.unsealed.clear();
        result
    }

    /// Writes every batched segment.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.scratch.is_empty() {
            self.segments.push_back(self.scratch.split().freeze());
        }
        while !self.segments.is_empty() {
            let slices: Vec<std::io::IoSlice<'_>> = self
                .segments
                .iter()
                .take(64)
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            let mut written = self.io.write_vectored(&slices).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let Some(front) = self.segments.front_mut() else {
                    break;
                };
                if written >= front.len() {
                    written -= front.len();
                    self.segments.pop_front();
                } else {
                    bytes::Buf::advance(front, written);
                    written = 0;
                }
            }
        }
        self.batched = 0;
        // Reclaim the scratch allocation once every frozen piece of it has been written.
        self.scratch.reserve(WRITE_BATCH);
        Ok(())
    }
}

/// A decoded request.
#[derive(Debug)]
enum Request {
    List(ListRequest),
    Stat(StatRequest),
    Fetch(FetchRequest),
    Digest(DigestRequest),
}

impl Request {
    fn path(&self) -> &str {
        match self {
            Self::List(r) => &r.path,
            Self::Stat(r) => &r.path,
            Self::Fetch(r) => &r.path,
            Self::Digest(r) => &r.path,
        }
    }
}

fn service_name(service: Service) -> &'static str {
    match service {
        Service::LIST => "list",
        Service::STAT => "stat",
        Service::FETCH => "fetch",
        Service::ECHO => "echo",
        Service::DIGEST => "digest",
        _ => "other",
    }
}

/// Why a request ended without its normal end frame.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    /// Answered on the wire with the error's code.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The connection's writer is gone; nothing can be sent.
    #[error("connection closed")]
    Closed,
    /// A bug (a blocking task panicked); the client gets `INTERNAL`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<JoinError> for ServiceError {
    fn from(error: JoinError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<crate::fs::PathError> for ServiceError {
    fn from(error: crate::fs::PathError) -> Self {
        Self::Fs(error.into())
    }
}

async fn run_request(
    ctx: RequestCtx,
    id: RequestId,
    service: Service,
    request: Request,
    generation: u64,
) -> (RequestId, u64) {
    let started = Instant::now();
    let path = request.path().to_owned();
    let result = match request {
        Request::List(r) => list(&ctx, id, r).await,
        Request::Stat(r) => stat(&ctx, id, r).await,
        Request::Fetch(r) => fetch(&ctx, id, r).await,
        Request::Digest(r) => digest(&ctx, id, r).await,
    };
    // Whole microseconds, so logs show 774.536, not 774.5355099999999.
    let elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0;
    let name = service_name(service);
    let body = match result {
        Ok(bytes) => {
            tracing::info!(%id, service = name, ?path, bytes, elapsed_ms, outcome = "ok", "request");
            None
        }
        Err(ServiceError::Fs(error)) => {
            let code = error.code();
            tracing::info!(%id, service = name, ?path, elapsed_ms, outcome = %code, %error, "request");
            Some(ErrorBody::new(code, error.to_string()))
        }
        Err(ServiceError::Closed) => {
            tracing::debug!(%id, service = name, ?path, elapsed_ms, "connection closed mid-request");
            None
        }
        Err(ServiceError::Internal(error)) => {
            tracing::error!(%id, service = name, ?path, %error, "request failed");
            Some(ErrorBody::from_code(ErrorCode::INTERNAL))
        }
    };
    if let Some(body) = body {
        let _ = ctx.data.send((id, Message::Error { service, body })).await;
    }
    (id, generation)
}

impl RequestCtx {
    async fn send(&self, id: RequestId, message: Message) -> Result<(), ServiceError> {
        self.data
            .send((id, message))
            .await
            .map_err(|_| ServiceError::Closed)
    }

    fn parse(&self, raw: &str) -> Result<RelPath, ServiceError> {
        Ok(RelPath::parse(raw, self.shared.limits.max_path_depth)?)
    }
}

/// Stat: one entry; a final symlink inside the root is followed (spec §3.6). Returns 0 data
/// bytes.
async fn stat(ctx: &RequestCtx, id: RequestId, request: StatRequest) -> Result<u64, ServiceError> {
    let path = ctx.parse(&request.path)?;
    let shared = ctx.shared.clone();
    let (path, meta) = tokio::task::spawn_blocking(move || {
        let meta = shared.jail.stat(&path);
        (path, meta)
    })
    .await?;
    let entry = meta?.entry(path.file_name().to_owned());
    ctx.send(id, Message::StatResponse(entry)).await?;
    Ok(0)
}

/// Digest: the whole file's BLAKE3, from the cache or hashed on a blocking thread (§3.11).
/// Returns 0 data bytes.
async fn digest(
    ctx: &RequestCtx,
    id: RequestId,
    request: DigestRequest,
) -> Result<u64, ServiceError> {
    let path = ctx.parse(&request.path)?;
    let shared = ctx.shared.clone();
    let response =
        tokio::task::spawn_blocking(move || shared.digests.digest(&shared.jail, &path)).await??;
    ctx.send(id, Message::DigestResponse(response)).await?;
    Ok(0)
}

/// List: pages produced on a blocking thread one at a time, so a slow client holds no thread.
/// The open and the first page share one trip to the blocking pool, and none is spent only to
/// learn that the listing is over, so a small directory costs one hop. Returns the number of
/// entries.
async fn list(ctx: &RequestCtx, id: RequestId, request: ListRequest) -> Result<u64, ServiceError> {
    let path = ctx.parse(&request.path)?;
    let limits = &ctx.shared.limits;
    let max_depth = if request.recursive {
        request.max_depth.min(limits.max_list_depth)
    } else {
        0
    };
    let budget = limits.list_batch_bytes;
    let links = request.links;
    let page_bytes = ctx.page_bytes;
    let shared = ctx.shared.clone();
    let (path, opened) = tokio::task::spawn_blocking(move || {
        let resolver = shared.jail.resolver();
        let opened = shared.jail.open_dir(&path).and_then(|fd| {
            let mut lister = Lister::new(fd, max_depth > 0, max_depth, budget)
                .map_err(|e| FsError::from_errno(e, &path, resolver))?
                .with_links(shared.jail.link_resolver(&path), links);
            let page = lister
                .next_page(page_bytes)
                .map_err(|e| FsError::from_errno(e, &path, resolver))?;
            Ok((lister, page))
        });
        (path, opened)
    })
    .await?;
    let (mut lister, mut page) = opened?;
    while let Some(current) = page.take() {
        ctx.send(id, Message::ListPage(current)).await?;
        if lister.is_done() {
            break;
        }
        let (returned, next) = tokio::task::spawn_blocking(move || {
            let next = lister.next_page(page_bytes);
            (lister, next)
        })
        .await?;
        lister = returned;
        page =
            next.map_err(|errno| FsError::from_errno(errno, &path, ctx.shared.jail.resolver()))?;
    }
    if lister.skipped() > 0 {
        tracing::debug!(
            skipped = lister.skipped(),
            "names that are not utf-8 were not listed"
        );
    }
    let entries = lister.total();
    ctx.send(id, Message::ListEnd(ListEnd { entries })).await?;
    Ok(entries)
}

/// Fetch: large reads on a blocking thread, one read ahead of the frames being queued, cut into
/// chunks without copying. Returns the data bytes sent.
///
/// The first read happens in the same blocking call as the open when a buffer is free, so a
/// small file costs one trip to the blocking pool, not two (that hop is most of a small
/// fetch's cost).
async fn fetch(
    ctx: &RequestCtx,
    id: RequestId,
    request: FetchRequest,
) -> Result<u64, ServiceError> {
    let path = ctx.parse(&request.path)?;
    let shared = ctx.shared.clone();
    let pool = ctx.buffers.clone();
    let first_buf = pool.try_get();
    let (reader, response, first) = tokio::task::spawn_blocking(move || {
        let (mut reader, response) =
            FileReader::open(&shared.jail, path, request.offset, request.length)?;
        let first = match first_buf {
            Some(mut buf) if reader.remaining() > 0 => {
                let n = reader.read_batch(buf.space())?;
                buf.set_len(n);
                Some(buf)
            }
            _ => None,
        };
        Ok::<_, FsError>((reader, response, first))
    })
    .await??;
    ctx.send(id, Message::FetchResponse(response)).await?;

    let chunk = ctx.chunk;
    // At most one of `reader` and `reading` holds the reader; `ready` is a batch read but not
    // yet queued.
    let mut reader = Some(reader);
    let mut reading = None;
    let mut ready = first;
    loop {
        let batch = match ready.take() {
            Some(batch) => batch,
            None => {
                if reading.is_none() {
                    match reader.take() {
                        Some(r) if r.remaining() > 0 => {
                            // Holding no unqueued buffer here, so waiting cannot deadlock.
                            reading = Some(spawn_read(r, pool.get().await));
                        }
                        other => {
                            reader = other;
                            break;
                        }
                    }
                }
                let Some(handle) = reading.take() else { break };
                let (r, batch) = handle.await?;
                reader = Some(r);
                batch?
            }
        };
        // Start the next read before queueing this batch, so disk and socket overlap, but only
        // with a buffer that is free right now.
        if let Some(r) = reader.take() {
            match (r.remaining() > 0).then(|| pool.try_get()).flatten() {
                Some(buf) => reading = Some(spawn_read(r, buf)),
                None => reader = Some(r),
            }
        }
        let batch = Bytes::from_owner(batch);
        let mut at = 0;
        while at < batch.len() {
            let end = (at + chunk).min(batch.len());
            ctx.send(id, Message::Data(batch.slice(at..end))).await?;
            at = end;
        }
    }
    let Some(reader) = reader else {
        return Err(ServiceError::Internal("fetch lost its reader".into()));
    };
    let end = reader.finish()?;
    ctx.send(id, Message::FetchEnd(end)).await?;
    Ok(end.bytes)
}

type ReadResult = (FileReader, Result<PooledBuf, FsError>);

fn spawn_read(mut reader: FileReader, mut buf: PooledBuf) -> tokio::task::JoinHandle<ReadResult> {
    tokio::task::spawn_blocking(move || {
        let result = reader.read_batch(buf.space()).map(|n| {
            buf.set_len(n);
            buf
        });
        (reader, result)
    })
}
