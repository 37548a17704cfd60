//! The two tasks that own the socket, and the routing table they share with the request
//! handles (its invariants are in `STATE.md` beside this file). The reader splits frames off
//! the byte stream, answers keep-alive traffic and routes every other frame by request id; the
//! writer seals and writes what the handles queue, batching whatever is ready.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::conn::{KeepAlive, KeepAliveAction, RequestTable};
use ferry_protocol::driver::{Batch, FrameReader, FrameWriter, Outbox, ReadEnd, WriteError};
use ferry_protocol::{
    Error as ProtoError, ErrorBody, Frame, FrameType, Message, RequestId, Service,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, trace, warn};

use crate::error::ClientError;

/// State shared with the reader task.
#[derive(Default)]
pub(super) struct RouteTable {
    state: Mutex<State>,
    /// Payload bytes of pongs queued for the writer and not yet written. A server that pings
    /// without reading would otherwise grow the queue without bound (spec §3.8).
    pong_bytes: AtomicUsize,
    /// Frames routed to requests other than errors and fetch headers: whether the server
    /// answered anything on this connection that a retried request would not ask again.
    pub(super) answered: AtomicU64,
    /// Our send key passed its close-soon point (spec §5.5): no new requests start here.
    pub(super) retiring: AtomicBool,
    /// Our send key as upload data is queued for it (spec §5.5): counted when queued, not when
    /// sealed, so an upload stops at the close-soon point however far the writer lags.
    /// `None` until the connection knows its suite.
    pub(super) uploads: Mutex<Option<KeyUse>>,
    /// Woken when [`RouteTable::fail`] records why the connection ended.
    closed_signal: tokio::sync::Notify,
}

/// Why a connection whose key nears its usage limit takes no new requests.
pub(super) const RETIRING: &str =
    "this connection's key is near its usage limit (spec 5.5); continue on a new connection";

/// The server's send key as the records we open count against its usage limit (spec §5.5):
/// the blocks the server sealed are the blocks we open, so a close once they have passed the
/// close-soon point is the server retiring a spent key, not a fault.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyUse {
    /// The suite's limit; `None` where it has none (plaintext, CBC + HMAC).
    limit: Option<u64>,
    used: u64,
}

impl KeyUse {
    pub(super) fn new(suite: ferry_protocol::crypto::RecordSuite, assumed: u64) -> Self {
        Self {
            limit: suite.block_limit(),
            used: assumed,
        }
    }

    /// Counts one record of `len` plaintext bytes as its sealer did: its counter blocks and
    /// the tag's.
    pub(super) fn opened(&mut self, len: usize) {
        if self.limit.is_some() {
            self.used = self
                .used
                .saturating_add(ferry_protocol::crypto::gcm::blocks(len));
        }
    }

    /// Whether the server's key has passed the point where it starts no new requests.
    pub(super) fn past_close_soon(&self) -> bool {
        self.limit.is_some_and(|limit| {
            self.used > limit.saturating_sub(ferry_protocol::crypto::CLOSE_SOON_BLOCKS)
        })
    }
}

/// Body bytes one request may have waiting for its caller. The channel also bounds frames,
/// but a server picks the frame size (up to the 1 MiB cap, or 16 MiB configured), so frames
/// alone would let 64 list pages hold 64 MiB.
pub(super) const REQUEST_BYTES: u32 = 4 << 20;

/// A frame on its way to a request handle, holding its share of the request's byte budget
/// until the handle takes it.
pub(super) type Routed = (Frame, tokio::sync::OwnedSemaphorePermit);

/// Pongs owed beyond this many queued bytes are dropped: the peer is not reading them.
const MAX_QUEUED_PONG_BYTES: usize = 1 << 20;

#[derive(Default)]
pub(super) struct State {
    /// Requests in flight and where their frames go.
    pub(super) routes: RequestTable<Route>,
    pub(super) closed: Option<CloseReason>,
}

/// Where a request's frames go, and which service it is (a pong is only for a ping).
pub(super) struct Route {
    pub(super) tx: mpsc::Sender<Routed>,
    /// Wire bytes this request may have waiting in its channel (see [`REQUEST_BYTES`]).
    pub(super) budget: Arc<tokio::sync::Semaphore>,
    pub(super) service: Service,
}

/// Why the connection ended; turned into a fresh [`ClientError`] for each request that asks.
#[derive(Debug, Clone)]
pub(super) enum CloseReason {
    Lost(String),
    Remote(ErrorBody),
    Protocol(String),
    /// The server stopped in the middle of a frame for longer than the frame-read deadline.
    Stalled(Duration),
    /// The server closed the connection after its key passed the close-soon point (spec §5.5).
    Retired,
}

impl CloseReason {
    pub(super) fn to_error(&self) -> ClientError {
        match self {
            Self::Lost(why) => ClientError::ConnectionLost(why.clone()),
            Self::Remote(body) => ClientError::RemoteClosed(body.clone()),
            Self::Protocol(why) => ClientError::Protocol(why.clone()),
            Self::Retired => ClientError::Retired(
                "the server closed the connection once its key neared its usage limit (spec 5.5)"
                    .into(),
            ),
            Self::Stalled(limit) => ClientError::Protocol(format!(
                "the server started a frame and did not finish it within {}s (a corrupted or stalled connection)",
                limit.as_secs()
            )),
        }
    }
}

pub(super) enum Outgoing {
    Message(RequestId, Message),
    /// A pong, counted in [`RouteTable::pong_bytes`] until written.
    Pong(RequestId, Bytes),
}

impl RouteTable {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated, so a poisoned lock
        // is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the connection dead and wakes every waiting request (their senders are dropped).
    pub(super) fn fail(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.closed.is_none() {
            debug!(?reason, "connection closed");
            state.closed = Some(reason);
        }
        state.routes.clear();
        drop(state);
        self.closed_signal.notify_waiters();
    }

    pub(super) fn closed_error(&self) -> ClientError {
        match &self.lock().closed {
            Some(reason) => reason.to_error(),
            None => ClientError::ConnectionLost("request abandoned".into()),
        }
    }
}

/// The clock as tokio sees it, so keep-alive follows paused time in tests.
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Owns the read half: frames in, routed by id; keep-alive pings out.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    conn: Arc<RouteTable>,
    outgoing: mpsc::WeakUnboundedSender<Outgoing>,
    mut keepalive: KeepAlive,
    mut server_key: KeyUse,
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
    // Any byte from the server counts as life, even in the middle of a long frame.
    let mut heard = reader.last_read();
    let mut hear = |reader: &FrameReader<R>, keepalive: &mut KeepAlive| {
        if reader.last_read() > heard {
            heard = reader.last_read();
            keepalive.handle_received(heard.into_std());
        }
    };
    // One timer, moved as the deadline moves: a new one per frame took the runtime's timer
    // lock twice per frame (issue 10); moving a registered timer later takes none.
    let keepalive_timer =
        tokio::time::sleep_until(tokio::time::Instant::from_std(keepalive.poll_timeout()));
    tokio::pin!(keepalive_timer);
    loop {
        hear(&reader, &mut keepalive);
        let keepalive_at = tokio::time::Instant::from_std(keepalive.poll_timeout());
        if keepalive_timer.deadline() != keepalive_at {
            keepalive_timer.as_mut().reset(keepalive_at);
        }
        tokio::select! {
            frame = reader.next_frame() => match frame {
                Ok(frame) => {
                    server_key.opened(frame.body.len());
                    if let Err(reason) = dispatch(frame, &conn, &mut keepalive, &send, &pong).await
                    {
                        conn.fail(reason);
                        return;
                    }
                }
                Err(end @ (ReadEnd::Eof | ReadEnd::Truncated | ReadEnd::Io(_)))
                    if server_key.past_close_soon() =>
                {
                    debug!(?end, "the server retired the connection");
                    conn.fail(CloseReason::Retired);
                    return;
                }
                Err(end) => {
                    conn.fail(closed(end, &send));
                    return;
                }
            },
            () = &mut keepalive_timer => {
                hear(&reader, &mut keepalive);
                match keepalive.poll(now()) {
                    KeepAliveAction::SendPing(payload) => {
                        send(RequestId::CONNECTION, Message::Ping(payload))
                    }
                    KeepAliveAction::Expired => {
                        conn.fail(CloseReason::Lost("the server stopped answering".into()));
                        return;
                    }
                    KeepAliveAction::Wait => {}
                }
            }
        }
    }
}

/// Why the connection ended when the server sent no more frames; tells the server why where
/// the fault is its stream's (a bad frame, a stalled frame).
fn closed(end: ReadEnd, send: &impl Fn(RequestId, Message)) -> CloseReason {
    let goodbye = |code, message: String| {
        send(
            RequestId::CONNECTION,
            Message::Error {
                service: Service::HANDSHAKE,
                body: ErrorBody::new(code, message),
            },
        )
    };
    match end {
        ReadEnd::Eof => CloseReason::Lost("the server closed the connection".into()),
        ReadEnd::Truncated => {
            CloseReason::Lost("the server closed the connection in the middle of a frame".into())
        }
        ReadEnd::Io(e) => CloseReason::Lost(e.to_string()),
        ReadEnd::Frame(e) => {
            warn!(error = %e, "bad frame from server");
            goodbye(e.code(), e.to_string());
            CloseReason::Protocol(corruption(&e))
        }
        ReadEnd::Stalled(limit) => {
            goodbye(
                ferry_protocol::ErrorCode::TIMEOUT,
                format!("frame not completed within {}s", limit.as_secs()),
            );
            CloseReason::Stalled(limit)
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
            Service::LIST
                | Service::STAT
                | Service::FETCH
                | Service::DIGEST
                | Service::PUT
                | Service::OFFER
        ),
        T::DATA => service == Service::FETCH,
        T::END => matches!(service, Service::LIST | Service::FETCH | Service::PUT),
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
            && matches!(
                frame.header.service,
                Service::STAT | Service::DIGEST | Service::OFFER
            ));
    let route = {
        let mut state = conn.lock();
        match state.routes.get(id) {
            // An unsolicited pong on a request id is ignored (§3.8), not taken as its answer.
            Some(route) if kind == FrameType::PONG && route.service != Service::ECHO => None,
            Some(_) if last => state.routes.finish(id).map(|r| (r.tx, r.budget)),
            Some(route) => Some((route.tx.clone(), route.budget.clone())),
            None => None,
        }
    };
    match route {
        Some((tx, budget)) => {
            // A fetch's header alone moves no data: a connection retired right after it
            // must count as one that answered nothing, or a transfer could dial for ever.
            let fetch_header =
                kind == FrameType::RESPONSE && frame.header.service == Service::FETCH;
            if kind != FrameType::ERROR && !fetch_header {
                conn.answered.fetch_add(1, Ordering::Relaxed);
            }
            // Waits while the caller has REQUEST_BYTES unread: the reader stops, TCP fills,
            // the server slows down (the connection's backpressure).
            let cost = (frame.body.len() as u32).clamp(1, REQUEST_BYTES);
            let Ok(permit) = budget.acquire_many_owned(cost).await else {
                return Ok(());
            };
            if tx.send((frame, permit)).await.is_err() {
                // The caller dropped its handle between our lookup and the send; its Drop has
                // already cancelled the request.
                conn.lock().routes.finish(id);
            }
        }
        // Frames still in flight after a cancel.
        None => trace!(%id, ?kind, "frame for a request no longer waiting"),
    }
    Ok(())
}

/// What the writer takes from the request handles and the reader, in order; pongs are
/// counted in [`RouteTable::pong_bytes`] until their batch is written.
pub(super) struct Queue {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    conn: Arc<RouteTable>,
    /// Pong bytes in the batch being written.
    pongs: usize,
}

impl Outbox for Queue {
    type Item = Outgoing;

    fn recv(&mut self) -> impl std::future::Future<Output = Option<Outgoing>> + Send {
        self.rx.recv()
    }

    fn try_recv(&mut self) -> Option<Outgoing> {
        self.rx.try_recv().ok()
    }

    fn encode(&mut self, out: Outgoing, batch: &mut Batch) -> Result<(), ProtoError> {
        let pushed = match out {
            Outgoing::Message(id, message) => batch.push(id, message),
            Outgoing::Pong(id, payload) => {
                self.pongs += payload.len();
                batch.push(id, Message::Pong(payload))
            }
        };
        // Spec §5.5: past the close-soon point, requests already started finish here and new
        // ones go to a new connection. Seen here, before this record reaches the server and
        // so before its answer can come back.
        if batch.send_half().close_soon() && !self.conn.retiring.load(Ordering::SeqCst) {
            debug!("our send key is near its usage limit: no new requests on this connection");
            self.conn.retiring.store(true, Ordering::SeqCst);
        }
        pushed
    }

    fn written(&mut self) {
        self.conn
            .pong_bytes
            .fetch_sub(std::mem::take(&mut self.pongs), Ordering::Relaxed);
    }
}

/// Owns the write half: seals queued messages, batching whatever is ready into one write.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    conn: Arc<RouteTable>,
) {
    let queue = Queue {
        rx,
        conn: conn.clone(),
        pongs: 0,
    };
    match writer.run(queue).await {
        Ok(()) => {}
        Err(WriteError::Encode(e)) => {
            // Callers check sizes before queueing, so this is a bug, not the server's fault.
            warn!(error = %e, "cannot encode request");
            conn.fail(CloseReason::Protocol(format!("cannot encode request: {e}")));
        }
        Err(WriteError::Io(e)) => {
            // A write fails once the server has closed or reset the connection, and only the
            // read half knows why: a goodbye it read, or a key past its close-soon point (a
            // retired connection, spec §5.5) rather than a lost one. So the reader gives the
            // verdict; the bound only ends a connection whose read half never sees the close.
            let verdict = conn.closed_signal.notified();
            if conn.lock().closed.is_none() {
                let _ = tokio::time::timeout(WRITE_FAILED_VERDICT, verdict).await;
            }
            conn.fail(CloseReason::Lost(e.to_string()));
        }
        Err(e @ WriteError::Timeout(_)) => conn.fail(CloseReason::Lost(e.to_string())),
    }
}

/// How long a failed write waits for the read half to say why the connection ended.
const WRITE_FAILED_VERDICT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::super::{Client, ClientConfig};
    use super::*;
    use ferry_protocol::{Key, ServerHandshakeConfig};
    use std::net::SocketAddr;

    #[test]
    fn the_servers_key_is_past_close_soon_once_its_records_cross_the_point() {
        use ferry_protocol::crypto::{RecordSuite, CLOSE_SOON_BLOCKS};
        let suite = RecordSuite::Aes256Gcm;
        let point = suite.block_limit().unwrap() - CLOSE_SOON_BLOCKS;
        // A 64 KiB record costs 4097 blocks; an empty one, 1 (the tag's).
        let mut key = KeyUse::new(suite, point - 4098);
        key.opened(65_536);
        assert!(!key.past_close_soon());
        key.opened(0);
        assert!(!key.past_close_soon(), "exactly at the point");
        key.opened(0);
        assert!(key.past_close_soon());
        // Suites without a usage limit never retire a connection this way.
        for suite in [RecordSuite::Aes256CbcHmacSha256, RecordSuite::Plaintext] {
            let mut key = KeyUse::new(suite, u64::MAX - 1);
            key.opened(65_536);
            assert!(!key.past_close_soon(), "{suite:?}");
        }
    }

    #[tokio::test]
    async fn requests_fail_cleanly_when_the_server_goes_away() {
        let key = Key::generate();
        let (a, b) = tokio::io::duplex(4096);
        let server_key = key.clone();
        tokio::spawn(async move {
            let conn = ferry_protocol::tokio::accept(b, ServerHandshakeConfig::new(server_key))
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
            let conn = ferry_protocol::tokio::accept(b, ServerHandshakeConfig::new(server_key))
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
