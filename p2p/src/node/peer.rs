//! One peer connection: the session and peer handshakes, then a reader loop (frames in, events
//! to the actor) and a writer task (commands from the actor, uploads read from storage), and
//! the close of spec/P2P.md §3.10 (one ERROR frame, our FIN, a brief drain).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::transport::BoxedStream;
use ferry_protocol::{ClientHandshakeConfig, ErrorBody, RecvHalf, SendHalf, ServerHandshakeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Ctx, Event, PeerCmd};
use crate::manifest::PieceIndex;
use crate::swarm::ConnId;
use crate::wire::{self, PeerId, PeerMessage};

/// Handshakes, registers with the actor, then runs a reader loop here and a writer task beside
/// it until either ends or `cancel` fires.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all, fields(conn = conn.0, peer = ?dialed))]
pub(super) async fn run_peer(
    mut stream: BoxedStream,
    remote: Option<SocketAddr>,
    dialed: Option<SocketAddr>,
    conn: ConnId,
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    handshake_permit: Option<OwnedSemaphorePermit>,
) {
    let hello = tokio::time::timeout(
        ctx.handshake_timeout,
        handshake(&mut stream, dialed.is_some(), &ctx),
    );
    let hello = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        hello = hello => hello,
    };
    drop(handshake_permit);
    let (send, recv, leftover, peer_id, listen_port) = match hello {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "peer handshake failed");
            if let Some(addr) = dialed {
                let reason = format!("handshake failed: {e}");
                let _ = events.send(Event::DialFailed(addr, reason)).await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!("peer handshake timed out");
            if let Some(addr) = dialed {
                let reason = format!("no handshake in {}s", ctx.handshake_timeout.as_secs());
                let _ = events.send(Event::DialFailed(addr, reason)).await;
            }
            return;
        }
    };
    let listen_addr = dialed.or_else(|| {
        remote
            .filter(|_| listen_port != 0)
            .map(|r| SocketAddr::new(r.ip(), listen_port))
    });
    let (mut read_half, write_half) = tokio::io::split(stream);
    let (cmds_tx, cmds_rx) = mpsc::unbounded_channel();
    if events
        .send(Event::Connected {
            conn,
            peer_id,
            listen_addr,
            dialed,
            cmds: cmds_tx.clone(),
            cancel: cancel.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    // Fired by the writer once it has sent its last frame and shut down its side.
    let closing = CancellationToken::new();
    let (writer_ctx, writer_events) = (ctx.clone(), events.clone());
    let (writer_cancel, writer_closing) = (cancel.clone(), closing.clone());
    let mut writer = tokio::spawn(async move {
        let mut write_half = write_half;
        write_loop(
            &mut write_half,
            send,
            cmds_rx,
            conn,
            writer_ctx,
            writer_events,
            writer_cancel,
            writer_closing,
        )
        .await;
        // Our FIN on every way out (as dropping a TCP write half sent it), so the peer's
        // reader sees the end instead of waiting for its timeout.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write_half.shutdown()).await;
    });
    let end = read_loop(
        &mut read_half,
        recv,
        leftover,
        conn,
        &events,
        &cancel,
        &closing,
        &cmds_tx,
    )
    .await;
    match end {
        ReadEnd::Violation(error) => {
            // spec/P2P.md §3.10: one ERROR frame, our FIN, a brief drain, then close.
            let _ = cmds_tx.send(PeerCmd::Close(error));
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT * 2, &mut writer).await;
            cancel.cancel();
            let _ = writer.await;
            // The swarm learns at once; the drain only protects the ERROR in flight.
            let _ = events.send(Event::Disconnected(conn)).await;
            drain(&mut read_half).await;
        }
        ReadEnd::Closing => {
            // The swarm has already forgotten this peer; a node that stops waits for this
            // Disconnected, so it comes after the drain.
            cancel.cancel();
            let _ = writer.await;
            drain(&mut read_half).await;
            let _ = events.send(Event::Disconnected(conn)).await;
        }
        ReadEnd::Gone => {
            cancel.cancel();
            let _ = writer.await;
            let _ = events.send(Event::Disconnected(conn)).await;
        }
    }
}

/// How long the ERROR frame before a close may take to write.
pub(super) const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After sending its last frame and shutting down its side, a closing peer reads and discards
/// for this long or this many bytes (spec/P2P.md §3.10): closing a socket with unread data
/// makes the kernel send a reset, which can destroy the ERROR frame still in flight. The byte
/// bound covers a full pipeline of blocks (64 × 16 KiB) already on its way.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// Reads and discards until end of stream, [`LINGER_TIME`] or [`LINGER_BYTES`].
async fn drain(read: &mut ReadHalf<BoxedStream>) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut scratch = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, read.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum HandshakeFailure {
    #[error(transparent)]
    Session(#[from] ferry_protocol::Error),
    #[error("peer handshake: {0}")]
    Wire(#[from] wire::WireError),
    #[error("expected a peer handshake message, got {0:?}")]
    Unexpected(ferry_protocol::FrameType),
    #[error("peer is in a different swarm")]
    WrongContent,
}

async fn handshake(
    stream: &mut BoxedStream,
    outbound: bool,
    ctx: &Ctx,
) -> Result<(SendHalf, RecvHalf, BytesMut, PeerId, u16), HandshakeFailure> {
    let (session, mut buf) = if outbound {
        let mut config = ClientHandshakeConfig::new(ctx.key.clone());
        config.max_body = wire::MAX_BODY;
        ferry_protocol::tokio::client_handshake(stream, config).await?
    } else {
        let mut config = ServerHandshakeConfig::new(ctx.key.clone());
        config.max_body = wire::MAX_BODY;
        ferry_protocol::tokio::server_handshake(stream, config).await?
    };
    let (mut send, mut recv) = session.into_split();
    let hello = PeerMessage::Handshake {
        content_id: ctx.manifest.content_id(),
        peer_id: ctx.peer_id,
        listen_port: ctx.listen_port,
    };
    let mut out = BytesMut::new();
    hello.write(&mut send, &mut out)?;
    stream
        .write_all(&out)
        .await
        .map_err(ferry_protocol::Error::Io)?;
    let frame = loop {
        if let Some(frame) = recv.read_frame(&mut buf)? {
            break frame;
        }
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(ferry_protocol::Error::Io)?
            == 0
        {
            return Err(ferry_protocol::Error::Closed.into());
        }
    };
    match PeerMessage::decode(frame.header.kind, frame.header.service, frame.body)? {
        PeerMessage::Handshake {
            content_id,
            peer_id,
            listen_port,
        } => {
            if content_id != ctx.manifest.content_id() {
                return Err(HandshakeFailure::WrongContent);
            }
            Ok((send, recv, buf, peer_id, listen_port))
        }
        _ => Err(HandshakeFailure::Unexpected(frame.header.kind)),
    }
}

/// Why [`read_loop`] returned.
#[derive(Debug)]
enum ReadEnd {
    /// The peer broke the wire rules: close after sending this error (`None`: the peer sent
    /// a malformed ERROR, which is never answered).
    Violation(Option<ErrorBody>),
    /// Our writer sent its last frame (a close asked for by the swarm).
    Closing,
    /// End of stream, an I/O error, shutdown, or the swarm actor is gone.
    Gone,
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    read: &mut ReadHalf<BoxedStream>,
    mut recv: ferry_protocol::RecvHalf,
    mut buf: BytesMut,
    conn: ConnId,
    events: &mpsc::Sender<Event>,
    cancel: &CancellationToken,
    closing: &CancellationToken,
    cmds: &mpsc::UnboundedSender<PeerCmd>,
) -> ReadEnd {
    loop {
        loop {
            let frame = match recv.read_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    // Over-long frames, bad records and bad magic end the connection
                    // (PROTOCOL.md §9 rows 1-9).
                    tracing::debug!(error = %e, code = %e.code(), "dropping peer: bad frame");
                    return ReadEnd::Violation(Some(wire::frame_error(&e)));
                }
            };
            let msg = match wire::inbound(&frame.header, frame.body) {
                wire::Inbound::Message(msg) => msg,
                wire::Inbound::Pong(id, payload) => {
                    let _ = cmds.send(PeerCmd::Pong(id, payload));
                    continue;
                }
                wire::Inbound::Ignore => continue,
                wire::Inbound::Close(error) => {
                    tracing::debug!(?error, "dropping peer: bad message");
                    return ReadEnd::Violation(error);
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return ReadEnd::Gone,
                _ = closing.cancelled() => return ReadEnd::Closing,
                sent = events.send(Event::Message(conn, msg)) => {
                    if sent.is_err() {
                        return ReadEnd::Gone;
                    }
                }
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return ReadEnd::Gone,
            _ = closing.cancelled() => return ReadEnd::Closing,
            n = read.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => return ReadEnd::Gone,
                Ok(_) => {}
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    write: &mut WriteHalf<BoxedStream>,
    mut send: ferry_protocol::SendHalf,
    mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
    conn: ConnId,
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    closing: CancellationToken,
) {
    let mut uploads: VecDeque<(PieceIndex, u32, u32)> = VecDeque::new();
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        // Take every queued command first so cancels and chokes reach the upload queue before
        // the next block is read.
        let cmd = if uploads.is_empty() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                cmd = cmds.recv() => match cmd { Some(cmd) => Some(cmd), None => return },
            }
        } else {
            match cmds.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        };
        out.clear();
        match cmd {
            Some(PeerCmd::Send(msg)) => {
                if matches!(msg, PeerMessage::Choke) {
                    // A choke discards the peer's queued requests (spec/P2P.md §4.3).
                    for _ in uploads.drain(..) {
                        let _ = events.send(Event::Uploaded(conn, 0)).await;
                    }
                }
                if msg.write(&mut send, &mut out).is_err() {
                    return;
                }
            }
            Some(PeerCmd::Upload {
                piece,
                offset,
                length,
            }) => {
                uploads.push_back((piece, offset, length));
                continue;
            }
            Some(PeerCmd::CancelUpload {
                piece,
                offset,
                length,
            }) => {
                let before = uploads.len();
                uploads.retain(|u| *u != (piece, offset, length));
                if uploads.len() < before {
                    let _ = events.send(Event::Uploaded(conn, 0)).await;
                }
                continue;
            }
            Some(PeerCmd::Close(error)) => {
                if let Some(body) = error {
                    let msg = PeerMessage::Error(body);
                    if msg.write(&mut send, &mut out).is_ok() {
                        let _ =
                            tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write.write_all(&out)).await;
                    }
                }
                // Our FIN follows the ERROR; the reader then drains until the peer's.
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write.shutdown()).await;
                closing.cancel();
                return;
            }
            Some(PeerCmd::Pong(id, payload)) => {
                let sent = send.write_frame(
                    ferry_protocol::FrameType::PONG,
                    ferry_protocol::Service::ECHO,
                    id,
                    &payload,
                    &mut out,
                );
                if sent.is_err() {
                    return;
                }
            }
            None => {
                let Some((piece, offset, length)) = uploads.pop_front() else {
                    continue;
                };
                // 16 KiB positioned reads are served from the page cache in microseconds, so
                // they run inline rather than on the blocking pool.
                let data = match ctx.storage.read(&ctx.manifest, piece, offset, length) {
                    Ok(mut data) => {
                        if ctx.corrupt_uploads {
                            data[0] ^= 0xff;
                        }
                        data
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a block to upload failed");
                        let _ = events.send(Event::Uploaded(conn, 0)).await;
                        continue;
                    }
                };
                let msg = PeerMessage::Piece {
                    piece: piece.get(),
                    offset,
                    data: data.into(),
                };
                if msg.write(&mut send, &mut out).is_err() {
                    return;
                }
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    r = write.write_all(&out) => if r.is_err() { return },
                }
                let _ = events.send(Event::Uploaded(conn, length as u64)).await;
                continue;
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = write.write_all(&out) => if r.is_err() { return },
        }
    }
}
