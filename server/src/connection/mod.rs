//! One connection's lifecycle: the handshake under a deadline and the hand-off from admission,
//! then a reader ([`reader`], this task), a writer task ([`writer`]) and one task per request
//! (`crate::service`), and finally the goodbye and the drain. Invariants: `STATE.md` beside
//! this file.
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
//! The reader and the writer are the protocol crate's shared driver
//! (`ferry_protocol::driver`); the policy is here: which queues, how deep, who answers what.
//! Both queues are bounded, so a client that stops reading stalls the writer, the queues fill
//! and the request tasks wait: backpressure instead of memory growth. Request tasks enqueue
//! frame by frame and the bounded queue admits waiting senders in FIFO order, so concurrent
//! fetches interleave chunk by chunk. The writer seals and batches everything queued into one
//! `writev`.

mod progress;
mod reader;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::driver::{FrameReader, FrameWriter};
use ferry_protocol::transport::Split;
use ferry_protocol::{
    ErrorBody, ErrorCode, Frame, Message, RequestId, ServerHandshakeConfig, Service,
};
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::admission::PendingTicket;
use crate::buffers::BufferPool;
use crate::config::Limits;
use crate::listener::AdmissionPeek;
use crate::service::{Context, Tree};
use crate::shutdown::Signals;

use reader::{Close, Reader};
use writer::Queues;

/// What every connection of one server shares: the served tree and the handshake settings.
#[derive(Debug)]
pub(crate) struct ServerContext {
    pub tree: Arc<Tree>,
    pub handshake: ServerHandshakeConfig,
    /// The identity handshake, served on the same port when the server has an identity.
    pub identity: Option<ferry_protocol::noise::ServerIdentityConfig>,
    /// Where enrolment sessions find invites and add clients (spec §13.11); `None`: no
    /// enrolment (the identity config then refuses clients that ask for it).
    pub enrolment: Option<crate::invite::Enrolment>,
}

impl ServerContext {
    pub fn limits(&self) -> &Limits {
        &self.tree.limits
    }
}

/// Data-queue depth in frames: with 64 KiB chunks, at most 1 MiB waits per connection.
const DATA_QUEUE: usize = 16;
/// Control-queue depth: pongs and refusals.
const CTRL_QUEUE: usize = 32;
/// Read-buffer top-up before each socket read (requests are small).
const READ_RESERVE: usize = 16 * 1024;
/// How long the goodbye frame may wait for room in the data queue.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one accepted connection until it closes. `ticket` is its place in the pool of
/// connections still in their handshake; the connection closes at once if it is evicted.
pub(crate) async fn serve<S: Split + AdmissionPeek>(
    mut stream: S,
    ticket: PendingTicket,
    server: Arc<ServerContext>,
    signals: Signals,
) {
    let limits = server.limits();
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
                // One poll of the write: whatever the socket takes at once, never a wait.
                let _ = stream
                    .write(&busy_frame(
                        "too many connections waiting to authenticate; try again later",
                    ))
                    .now_or_never();
            }
            return;
        }
        result = tokio::time::timeout(limits.handshake_timeout, async {
            // Admission prefers to evict connections that have sent nothing. Where the
            // transport can say bytes are waiting, the connection is marked before the
            // handshake drains them (so a peek never sees it empty and unmarked); elsewhere the
            // first read marks it.
            if AdmissionPeek::readable(&stream).await? {
                ticket.mark_progress();
            }
            // PSK or identity, by the client's first frame (spec §13.7).
            ferry_protocol::tokio::server_accept_enrolment(
                &mut progress::MarkOnFirstRead::new(&mut stream, &ticket),
                ferry_protocol::noise::AcceptConfig {
                    psk: Some(server.handshake.clone()),
                    identity: server.identity.clone(),
                },
            )
            .await
        }) => result,
    };
    let (session, principal, enrolling, leftover) = match handshake {
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
    // Every later line of this connection, each request's included, names the client.
    tracing::Span::current().record("client", tracing::field::display(&principal.name));
    tracing::debug!(mode = ?session.mode(), principal = %principal.name, "session established");
    let version = session.version();
    let (mut send, recv) = session.into_split();
    if limits.assume_blocks_used > 0 {
        send.assume_blocks_used(limits.assume_blocks_used);
    }
    let budget = writer::KeyBudget::new(send.suite(), limits.assume_blocks_used, finals(limits));
    let chunk = limits.chunk_size.min(send.max_payload()).max(1);
    let page_bytes = limits.list_page_bytes.min(send.max_payload()).max(4096);
    // Whole chunks per read, so only a file's last frame is short.
    let read_size = (limits.read_size / chunk).max(1) * chunk;
    let (rd, wr) = stream.split();
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
    let (ctrl_tx, ctrl_rx) = mpsc::channel(CTRL_QUEUE);
    // Read into slots that the writer seals where they lie and hands back, where the suite
    // saves a copy that way (AES-256-GCM; buffers.rs).
    let buffers = BufferPool::sealing_in_place(
        read_size,
        limits.read_buffers_per_connection,
        chunk,
        send.in_place_room(),
    );
    let recycled = buffers.clone();
    let link = writer::Link::with_budget(
        FrameWriter::new(wr, send, version)
            .write_timeout(limits.write_timeout)
            .recycle(move |slot| recycled.recycle(slot)),
        budget,
    );
    let mut writer = tokio::spawn(
        writer::run_shared(link.clone(), Queues::new(ctrl_rx, data_rx)).in_current_span(),
    );
    let frames = FrameReader::new(rd, recv, leftover)
        .frame_read_timeout(limits.frame_read_timeout)
        .read_reserve(READ_RESERVE, READ_RESERVE / 4);
    // A principal confined to a subtree gets a jail opened there (authorised clients' root=).
    let tree = match &principal.subtree {
        None => server.tree.clone(),
        Some(subtree) => match server.tree.confined(subtree) {
            Ok(tree) => Arc::new(tree),
            Err(error) => {
                tracing::warn!(principal = %principal.name, %subtree, %error, "cannot open the client's root; closing");
                // The client's entry is wrong on this server, not its request: say so once,
                // as the connection's goodbye, rather than leave it to guess from a close.
                let goodbye = ErrorBody::new(
                    ErrorCode::INTERNAL,
                    format!("the server cannot open this client's root {subtree}: {error}"),
                );
                let goodbye = (
                    RequestId::CONNECTION,
                    Message::Error {
                        service: Service::HANDSHAKE,
                        body: goodbye,
                    },
                );
                let _ = tokio::time::timeout(FAREWELL_TIMEOUT, data_tx.send(goodbye)).await;
                drop((data_tx, ctrl_tx));
                let _ = tokio::time::timeout(limits.write_timeout, &mut writer).await;
                writer.abort();
                return;
            }
        },
    };
    let services = Context {
        tree,
        principal: Arc::new(principal),
        buffers,
        chunk,
        page_bytes,
        uploads: Default::default(),
        enrol: match (enrolling, &server.enrolment) {
            (Some(binding), Some(enrolment)) => Some(Arc::new(
                crate::service::enrol::EnrolSession::new(binding, enrolment.clone()),
            )),
            _ => None,
        },
    };
    let mut reader = Reader::new(
        limits.clone(),
        services,
        data_tx,
        ctrl_tx,
        signals.kill.clone(),
        Some(link),
    );
    let close = reader.read_loop(frames, &signals, &mut writer).await;
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
        // The writer seals its own goodbye with the numbers (writer::KeyBudget).
        Close::Spent => Some(ErrorBody::from_code(ErrorCode::SHUTTING_DOWN)),
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
    reader.abort_all();
    if matches!(close, Close::Spent) {
        // Each request still open ends with its own SHUTTING_DOWN error, after the frames it
        // queued, before the goodbye (spec §5.5).
        reader.end_in_flight(FAREWELL_TIMEOUT).await;
    }
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
        let _ = tokio::time::timeout(patience, reader.data().send(goodbye)).await;
    }
    // Dropping every sender lets the writer flush what is queued and shut the socket down.
    drop(reader);
    if writer_done {
        // The reader's own write failed (the writer task may still wait for its queues).
        writer.abort();
    } else {
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

/// The final errors a connection keeps room for under its key (spec §5.5): one for each
/// request in flight, each refusal that may race the close, and a kept-file answer.
fn finals(limits: &Limits) -> usize {
    limits.max_in_flight_per_connection + CTRL_QUEUE + 1
}

/// The blocks a GCM connection keeps below its key's usage limit for its final frames (spec
/// §5.5), for tests that place the limit exactly.
#[doc(hidden)]
pub fn key_reserve_blocks(limits: &Limits) -> u64 {
    writer::KeyBudget::new(
        ferry_protocol::crypto::RecordSuite::Aes256Gcm,
        0,
        finals(limits),
    )
    .reserve()
}

/// A plaintext connection-level `BUSY` error frame, as sent before the handshake completes
/// (spec §4.4): to a connection evicted from admission here, and by the listener to one
/// refused at the connection limit.
pub(crate) fn busy_frame(message: &str) -> BytesMut {
    let body = ErrorBody::new(ErrorCode::BUSY, message);
    let frame = Frame::from_message(
        RequestId::CONNECTION,
        &Message::Error {
            service: Service::HANDSHAKE,
            body,
        },
    );
    let mut out = BytesMut::with_capacity(frame.encoded_len());
    frame.encode(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_frame_is_a_plaintext_connection_error() {
        let mut bytes = busy_frame("full");
        let frame = ferry_protocol::handshake::handshake_decoder()
            .decode(&mut bytes)
            .unwrap()
            .unwrap();
        assert!(bytes.is_empty());
        assert_eq!(frame.header.id, RequestId::CONNECTION);
        match frame.message().unwrap() {
            Message::Error { service, body } => {
                assert_eq!(service, Service::HANDSHAKE);
                assert_eq!(
                    (body.code, body.message.as_str()),
                    (ErrorCode::BUSY, "full")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
