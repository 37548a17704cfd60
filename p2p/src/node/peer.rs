//! One peer connection: the session and peer handshakes, then a reader loop (frames in, events
//! to the actor) and a writer task (commands from the actor, uploads read from storage), and
//! the close of spec/P2P.md §3.10 (one ERROR frame, our FIN, a brief drain).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::driver::{FrameReader, FrameWriter, WriteError};
use ferry_protocol::transport::BoxedStream;
use ferry_protocol::{ClientHandshakeConfig, ErrorBody, ServerHandshakeConfig, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::host::Accepted;
use super::{Ctx, Event, PeerCmd};
use crate::manifest::PieceIndex;
use crate::swarm::ConnId;
use crate::wire::{self, PeerId, PeerMessage};

/// How a connection that did not come from the actor's own dialing or listener was opened
/// (spec/P2P.md §3.12: a relayed or hub-found peer), and who is told how its handshake ended.
#[derive(Debug, Default)]
pub(super) struct Opened {
    /// We opened it (a relay we asked for): we are the session client and the dialer.
    pub outbound: bool,
    /// The node id the peer must prove; another closes the connection.
    pub expect: Option<PeerId>,
    /// Through a hub's relay (see `Event::Connected`).
    pub relayed: bool,
    /// Told the peer's id once it is handed to the actor, or why the handshake failed.
    pub done: Option<oneshot::Sender<Result<PeerId, String>>>,
}

impl Opened {
    /// Tells whoever waits why the connection failed; returns the reason.
    fn failed(&mut self, reason: String) -> String {
        if let Some(done) = self.done.take() {
            let _ = done.send(Err(reason.clone()));
        }
        reason
    }
}

/// Handshakes, registers with the actor, then runs a reader loop here and a writer task beside
/// it until either ends or `cancel` fires.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all, fields(conn = conn.0, peer = ?dialed))]
pub(super) async fn run_peer(
    stream: PeerStream,
    remote: Option<SocketAddr>,
    dialed: Option<SocketAddr>,
    conn: ConnId,
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    handshake_permit: Option<OwnedSemaphorePermit>,
    mut opened: Opened,
) {
    let outbound = dialed.is_some() || opened.outbound;
    let hello = tokio::time::timeout(ctx.handshake_timeout, handshake(stream, outbound, &ctx));
    let hello = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        hello = hello => hello,
    };
    drop(handshake_permit);
    let (mut reader, frames, greeted) = match hello {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "peer handshake failed");
            let reason = opened.failed(format!("handshake failed: {e}"));
            if let Some(addr) = dialed {
                let _ = events.send(Event::DialFailed(addr, reason)).await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!("peer handshake timed out");
            let reason = opened.failed(format!(
                "no handshake in {}s",
                ctx.handshake_timeout.as_secs()
            ));
            if let Some(addr) = dialed {
                let _ = events.send(Event::DialFailed(addr, reason)).await;
            }
            return;
        }
    };
    if let Some(expected) = opened.expect.filter(|e| *e != greeted.peer_id) {
        // A hint that leads to another node (a stale address, a hostile relay end) is a dead
        // hint (HUB.md §4.2): close without a word.
        let reason = opened.failed(format!(
            "the peer proved id {}, not {}",
            greeted.peer_id, expected
        ));
        tracing::debug!(%reason, "closing");
        if let Some(addr) = dialed {
            let _ = events.send(Event::DialFailed(addr, reason)).await;
        }
        return;
    }
    let listen_port = greeted.listen_port;
    let listen_addr = dialed.or_else(|| {
        remote
            .filter(|_| listen_port != 0)
            .map(|r| SocketAddr::new(r.ip(), listen_port))
    });
    let (cmds_tx, cmds_rx) = mpsc::unbounded_channel();
    if events
        .send(Event::Connected {
            conn,
            peer_id: greeted.peer_id,
            listen_addr,
            dialed,
            tiebreak: Some(greeted.tiebreak),
            relayed: opened.relayed,
            cmds: cmds_tx.clone(),
            cancel: cancel.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    if let Some(done) = opened.done.take() {
        let _ = done.send(Ok(greeted.peer_id));
    }
    // Fired by the writer once it has sent its last frame and shut down its side.
    let closing = CancellationToken::new();
    let (writer_ctx, writer_events) = (ctx.clone(), events.clone());
    let (writer_cancel, writer_closing) = (cancel.clone(), closing.clone());
    let mut writer = tokio::spawn(async move {
        let mut frames = frames;
        write_loop(
            &mut frames,
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
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, frames.get_mut().shutdown()).await;
    });
    let end = read_loop(&mut reader, conn, &events, &cancel, &closing, &cmds_tx).await;
    match end {
        ReadEnd::Violation(error) => {
            // spec/P2P.md §3.10: one ERROR frame, our FIN, a brief drain, then close.
            let _ = cmds_tx.send(PeerCmd::Close(error));
            let written = tokio::time::timeout(CLOSE_WRITE_TIMEOUT * 2, &mut writer).await;
            cancel.cancel();
            // A finished task must not be awaited again: that panics, and this task would
            // never tell the swarm the peer is gone.
            if written.is_err() {
                let _ = writer.await;
            }
            // The swarm learns at once; the drain only protects the ERROR in flight.
            let _ = events.send(Event::Disconnected(conn)).await;
            drain(reader.get_mut()).await;
        }
        ReadEnd::Closing => {
            // The swarm has already forgotten this peer; a node that stops waits for this
            // Disconnected, so it comes after the drain.
            cancel.cancel();
            let _ = writer.await;
            drain(reader.get_mut()).await;
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
/// Spare room in the read buffer before each read: several 16 KiB blocks per read.
const READ_RESERVE: usize = 64 * 1024;

/// Reads and discards until end of stream, [`LINGER_TIME`] or [`LINGER_BYTES`].
async fn drain<R: AsyncRead + Unpin>(read: &mut R) {
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
    #[error(transparent)]
    Greet(#[from] wire::GreetError),
}

/// The two halves of an established peer connection.
type PeerReader = FrameReader<ReadHalf<BoxedStream>>;
type PeerWriter = FrameWriter<WriteHalf<BoxedStream>>;

/// A peer connection as it reaches [`run_peer`]: a raw stream (dialled, or accepted on the
/// node's own listener) or one whose session handshake a [`Host`](super::host::Host) completed.
pub(super) enum PeerStream {
    Raw(BoxedStream),
    /// Boxed: a session's record state is large beside a stream pointer.
    Established(Box<Accepted>),
}

/// The session handshake on a raw stream, keyed by the swarm (spec/P2P.md §3.2).
async fn session_handshake(
    stream: &mut BoxedStream,
    outbound: bool,
    ctx: &Ctx,
) -> Result<(Session, BytesMut), ferry_protocol::Error> {
    if outbound {
        let mut config = ClientHandshakeConfig::new(ctx.key.clone());
        config.max_body = wire::MAX_BODY;
        config.suites = ctx.suites.clone();
        ferry_protocol::tokio::client_handshake(stream, config).await
    } else {
        let mut config = ServerHandshakeConfig::new(ctx.key.clone());
        config.max_body = wire::MAX_BODY;
        config.suites = ctx.suites.clone();
        ferry_protocol::tokio::server_handshake(stream, config).await
    }
}

/// The session handshake (unless a host did it), then the peer handshake of spec/P2P.md §3.3:
/// HANDSHAKE each way and the dialer's IDENTITY, which prove both node identities inside this
/// session. A failed peer handshake is answered with one ERROR and a close as §3.10 says.
async fn handshake(
    stream: PeerStream,
    outbound: bool,
    ctx: &Ctx,
) -> Result<(PeerReader, PeerWriter, wire::Greeted), HandshakeFailure> {
    let (stream, session, leftover) = match stream {
        PeerStream::Established(accepted) => {
            let Accepted {
                stream,
                session,
                leftover,
                ..
            } = *accepted;
            (stream, session, leftover)
        }
        PeerStream::Raw(mut stream) => {
            let (session, leftover) = session_handshake(&mut stream, outbound, ctx).await?;
            (stream, session, leftover)
        }
    };
    let version = session.version();
    let binding = session.channel_binding().copied();
    let (send, recv) = session.into_split();
    let (read_half, write_half) = tokio::io::split(stream);
    // No frame deadline: blocks are small, and the swarm's own timers (request timeouts,
    // choking) judge a slow peer.
    let mut reader =
        FrameReader::new(read_half, recv, leftover).read_reserve(READ_RESERVE, READ_RESERVE / 4);
    // Blocks are 16 KiB; a swarm holds many connections.
    let mut writer = FrameWriter::new(write_half, send, version).buffer(64 * 1024);
    match greet(&mut reader, &mut writer, binding.as_ref(), outbound, ctx).await {
        Ok(greeted) => Ok((reader, writer, greeted)),
        Err(HandshakeFailure::Greet(e)) => {
            if let Some(body) = e.error_body() {
                let msg = PeerMessage::Error(body);
                let _ = writer.batch().push_with(|send, out| msg.write(send, out));
            }
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, writer.shutdown()).await;
            drain(reader.get_mut()).await;
            Err(e.into())
        }
        Err(e) => Err(e),
    }
}

/// Runs the [`wire::Greeter`] over the session until the peer's node id is proven.
async fn greet(
    reader: &mut PeerReader,
    writer: &mut PeerWriter,
    binding: Option<&[u8; 32]>,
    outbound: bool,
    ctx: &Ctx,
) -> Result<wire::Greeted, HandshakeFailure> {
    let content_id = ctx.manifest.content_id();
    let mut greeter = if outbound {
        let (greeter, hello) =
            wire::Greeter::dial(&ctx.identity, content_id, binding, ctx.listen_port)?;
        send(writer, &hello).await?;
        greeter
    } else {
        wire::Greeter::accept(&ctx.identity, content_id, binding, ctx.listen_port)?
    };
    loop {
        let frame = reader
            .next_frame()
            .await
            .map_err(ferry_protocol::Error::from)?;
        let msg = PeerMessage::decode(frame.header.kind, frame.header.service, frame.body)
            .map_err(wire::GreetError::from)?;
        let (reply, greeted) = greeter.handle(msg)?;
        if let Some(reply) = reply {
            send(writer, &reply).await?;
        }
        if let Some(greeted) = greeted {
            return Ok(greeted);
        }
    }
}

/// Writes one message at once (the handshake waits for the answer).
async fn send(writer: &mut PeerWriter, msg: &PeerMessage) -> Result<(), ferry_protocol::Error> {
    writer.batch().push_with(|send, out| msg.write(send, out))?;
    writer.flush().await.map_err(|e| match e {
        WriteError::Encode(e) => e,
        WriteError::Io(e) => ferry_protocol::Error::Io(e),
        WriteError::Timeout(_) => ferry_protocol::Error::Timeout("sending the peer handshake"),
    })
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

async fn read_loop(
    reader: &mut PeerReader,
    conn: ConnId,
    events: &mpsc::Sender<Event>,
    cancel: &CancellationToken,
    closing: &CancellationToken,
    cmds: &mpsc::UnboundedSender<PeerCmd>,
) -> ReadEnd {
    // Made once: a `cancelled()` made in each `select!` registers with the token and
    // unregisters again, two locks per future per message.
    let gone = cancel.cancelled();
    let closed = closing.cancelled();
    tokio::pin!(gone, closed);
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut gone => return ReadEnd::Gone,
            _ = &mut closed => return ReadEnd::Closing,
            frame = reader.next_frame() => match frame {
                Ok(frame) => frame,
                Err(ferry_protocol::driver::ReadEnd::Frame(e)) => {
                    // Over-long frames, bad records and bad magic end the connection
                    // (PROTOCOL.md §9 rows 1-9).
                    tracing::debug!(error = %e, code = %e.code(), "dropping peer: bad frame");
                    return ReadEnd::Violation(Some(wire::frame_error(&e)));
                }
                // End of stream (between or inside frames) or a failed read.
                Err(_) => return ReadEnd::Gone,
            },
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
        // The actor usually has room: then the message goes without a wait.
        let msg = match events.try_send(Event::Message(conn, msg)) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Closed(_)) => return ReadEnd::Gone,
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        tokio::select! {
            biased;
            _ = &mut gone => return ReadEnd::Gone,
            _ = &mut closed => return ReadEnd::Closing,
            sent = events.send(msg) => {
                if sent.is_err() {
                    return ReadEnd::Gone;
                }
            }
        }
    }
}

/// Blocks batched into one write while more are queued: a `writev` (and a wake-up of the
/// reading end) per 16 KiB block was a fifth of a loopback seed's CPU. The connection's
/// batch buffer is this size, so it serves a full batch without growing.
const UPLOAD_BATCH: usize = 64 * 1024;

/// Takes the actor's commands and the upload queue: every command already queued goes into
/// the batch first (so cancels and chokes reach the upload queue before the next block is
/// read), then one block; more blocks while more are queued, up to [`UPLOAD_BATCH`] bytes,
/// each after the commands that arrived meanwhile; then one write.
async fn write_loop(
    writer: &mut PeerWriter,
    mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
    conn: ConnId,
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    closing: CancellationToken,
) {
    let mut uploads: VecDeque<(PieceIndex, u32, u32)> = VecDeque::new();
    // Lengths of the blocks in the batch, reported to the swarm once written.
    let mut batched: Vec<u32> = Vec::new();
    let mut body = wire::PieceBody::default();
    // Made once, as in `read_loop`.
    let gone = cancel.cancelled();
    tokio::pin!(gone);
    loop {
        let cmd = if uploads.is_empty() && writer.batch().is_empty() {
            tokio::select! {
                biased;
                _ = &mut gone => return,
                cmd = cmds.recv() => match cmd { Some(cmd) => Some(cmd), None => return },
            }
        } else if writer.batch().is_full() {
            None
        } else {
            match cmds.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        };
        match cmd {
            Some(PeerCmd::Send(msg)) => {
                if matches!(msg, PeerMessage::Choke) {
                    // A choke discards the peer's queued requests (spec/P2P.md §4.3).
                    for _ in uploads.drain(..) {
                        let _ = events.send(Event::Uploaded(conn, 0)).await;
                    }
                }
                if writer
                    .batch()
                    .push_with(|send, out| msg.write(send, out))
                    .is_err()
                {
                    return;
                }
            }
            Some(PeerCmd::Upload {
                piece,
                offset,
                length,
            }) => uploads.push_back((piece, offset, length)),
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
            }
            Some(PeerCmd::Close(error)) => {
                if let Some(body) = error {
                    let msg = PeerMessage::Error(body);
                    let _ = writer.batch().push_with(|send, out| msg.write(send, out));
                }
                // Whatever is batched, the ERROR last, then our FIN; the reader then drains
                // until the peer's.
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, writer.shutdown()).await;
                closing.cancel();
                return;
            }
            Some(PeerCmd::Pong(id, payload)) => {
                let sent = writer.batch().push_frame(
                    ferry_protocol::FrameType::PONG,
                    ferry_protocol::Service::ECHO,
                    id,
                    &payload,
                );
                if sent.is_err() {
                    return;
                }
            }
            None => {
                // No command waits: add one block (if any); write the batch once it is large
                // enough or nothing more is queued.
                if let Some(block) = uploads.pop_front() {
                    match upload(writer, &ctx, &mut body, block) {
                        Ok(length) => batched.push(length),
                        Err(UploadFailed::Read) => {
                            let _ = events.send(Event::Uploaded(conn, 0)).await;
                        }
                        Err(UploadFailed::Encode) => return,
                    }
                    if !uploads.is_empty() && writer.batch().len() < UPLOAD_BATCH {
                        continue;
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut gone => return,
                    r = writer.flush() => if r.is_err() { return },
                }
                for length in batched.drain(..) {
                    let _ = events.send(Event::Uploaded(conn, u64::from(length))).await;
                }
            }
        }
    }
}

enum UploadFailed {
    /// The block could not be read from storage: the request is dropped.
    Read,
    /// The block could not be sealed: the connection ends.
    Encode,
}

/// Reads one requested block into `body` (the connection's one PIECE buffer) and adds it to
/// the batch; returns its length.
fn upload(
    writer: &mut PeerWriter,
    ctx: &Ctx,
    body: &mut wire::PieceBody,
    (piece, offset, length): (PieceIndex, u32, u32),
) -> Result<u32, UploadFailed> {
    // 16 KiB positioned reads are served from the page cache in microseconds, so they run
    // inline rather than on the blocking pool.
    let data = body.start(piece.get(), offset, length as usize);
    if let Err(e) = ctx.storage.read_into(&ctx.manifest, piece, offset, data) {
        tracing::warn!(error = %e, "reading a block to upload failed");
        return Err(UploadFailed::Read);
    }
    if ctx.corrupt_uploads {
        if let Some(first) = data.first_mut() {
            *first ^= 0xff;
        }
    }
    writer
        .batch()
        .push_with(|send, out| body.write(send, out))
        .map_err(|_| UploadFailed::Encode)?;
    Ok(length)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use ferry_protocol::identity::Identity;
    use ferry_protocol::transport::TcpConnector;
    use ferry_protocol::Session;
    use tokio::io::{AsyncWrite, DuplexStream};

    use super::*;
    use crate::pieces::{make_manifest, Storage};

    /// A stream that writes every `writev` whole and counts them.
    struct CountingWrites {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingWrites {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &all));
            if matches!(written, Ok(n) if n > 0) {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Ready(written)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// issue 14: blocks queued together leave four to a write (one `writev` per 16 KiB block
    /// was a fifth of a loopback seed's CPU), in the order asked, each reported once written.
    #[tokio::test]
    async fn queued_blocks_leave_several_to_a_write_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        let content = ferry_testkit::data(8 * 16_384, 3);
        std::fs::write(&src, &content).unwrap();
        let manifest =
            Arc::new(make_manifest(&src, Some(4 * 16_384), vec![], vec![], &|_| {}).unwrap());
        let storage = Arc::new(Storage::open_existing(dir.path(), &manifest).unwrap());
        let identity = Identity::generate();
        let ctx = Arc::new(Ctx {
            manifest: manifest.clone(),
            storage,
            key: wire::swarm_key(&manifest.content_id()),
            peer_id: wire::PeerId::from(identity.id()),
            identity,
            listen_port: 0,
            handshake_timeout: Duration::from_secs(10),
            corrupt_uploads: false,
            connector: Arc::new(TcpConnector),
            suites: ferry_protocol::crypto::RecordSuite::DEFAULT_SUITES.to_vec(),
        });
        let (ours, theirs) = tokio::io::duplex(4 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let stream: BoxedStream = Box::new(CountingWrites {
            inner: ours,
            writes: writes.clone(),
        });
        let (a, b) = Session::dangerous_pair_with_fixed_keys(true);
        let version = a.version();
        let (send, _) = a.into_split();
        let (_, write_half) = tokio::io::split(stream);
        let mut writer = FrameWriter::new(write_half, send, version).buffer(64 * 1024);
        let (cmds, cmds_rx) = mpsc::unbounded_channel();
        // Every request is queued before the writer first runs.
        let blocks: Vec<(u32, u32)> = (0..8).map(|i| (i / 4, (i % 4) * 16_384)).collect();
        for &(piece, offset) in &blocks {
            cmds.send(PeerCmd::Upload {
                piece: manifest.piece(piece).unwrap(),
                offset,
                length: 16_384,
            })
            .unwrap();
        }
        let (events_tx, mut events) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                let closing = CancellationToken::new();
                write_loop(
                    &mut writer,
                    cmds_rx,
                    ConnId(1),
                    ctx,
                    events_tx,
                    cancel,
                    closing,
                )
                .await
            }
        });
        for _ in &blocks {
            match events.recv().await {
                Some(Event::Uploaded(ConnId(1), 16_384)) => {}
                other => panic!("expected one uploaded block, got {other:?}"),
            }
        }
        cancel.cancel();
        task.await.unwrap();
        drop(cmds);
        assert_eq!(writes.load(Ordering::Relaxed), 2, "8 blocks in writes of 4");
        let (_, recv) = b.into_split();
        let mut reader = FrameReader::new(theirs, recv, BytesMut::new());
        for &(piece, offset) in &blocks {
            let frame = reader.next_frame().await.unwrap();
            let msg = PeerMessage::decode(frame.header.kind, frame.header.service, frame.body);
            let at = (piece * 4 * 16_384 + offset) as usize;
            assert_eq!(
                msg,
                Ok(PeerMessage::Piece {
                    piece,
                    offset,
                    data: Bytes::copy_from_slice(&content[at..at + 16_384]),
                })
            );
        }
    }
}
