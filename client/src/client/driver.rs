//! The two tasks that own the socket, and the routing table they share with the request
//! handles (its invariants are in `STATE.md` beside this file). The reader splits frames off
//! the byte stream, answers keep-alive traffic and routes every other frame by request id; the
//! writer seals and writes what the handles queue, batching whatever is ready.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_protocol::conn::{KeepAlive, KeepAliveAction, RequestTable};
use ferry_protocol::{
    Error as ProtoError, ErrorBody, Frame, FrameType, Message, RecvHalf, RequestId, SendHalf,
    Service,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
}

impl CloseReason {
    pub(super) fn to_error(&self) -> ClientError {
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

/// Owns the write half: seals queued messages, batching whatever is ready into one write.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
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
    use super::super::{Client, ClientConfig};
    use super::*;
    use ferry_protocol::{Key, ServerHandshakeConfig};
    use std::net::SocketAddr;

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
