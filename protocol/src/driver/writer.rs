//! The frame writer: owns a stream's write half and the [`SendHalf`]. The role hands it
//! already-built items through an [`Outbox`]; it seals them into a [`Batch`] in the order
//! taken and writes everything queued at once, one `writev` per wake.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::header::{FrameType, Header, RequestId, Service, HEADER_LEN};
use crate::message::{Message, Mode};
use crate::session::SendHalf;

/// The writer stops taking more items once this much is batched.
pub const WRITE_BATCH: usize = 256 * 1024;
/// Smaller plaintext data chunks are copied into the batch rather than sent as their own
/// segment.
pub const ZERO_COPY_MIN: usize = 4096;
/// The batch buffer's default size: a full batch and the frame that overflows it.
const BUFFER: usize = WRITE_BATCH + 128 * 1024;
/// Segments handed to one `writev` (the kernel's `IOV_MAX` is 1024; fewer is plenty).
const MAX_SEGMENTS: usize = 64;

/// Frames sealed (or, plaintext data, framed) in wire order, waiting for one write.
///
/// In plaintext mode a large data chunk is not copied: the batch holds its 12-byte header and
/// the chunk's own `Bytes` (e.g. a slice of a file read buffer) side by side. With a suite
/// that seals in place ([`SendHalf::in_place_room`], AES-256-GCM), a data chunk that no one
/// else holds and that has room for the tag after it is sealed where it lies: the batch holds
/// its header and the sealed chunk side by side, and hands the chunk's buffer back once it is
/// written ([`FrameWriter::recycle`]), so a reader can read the next chunk into it. Other
/// encrypted frames are sealed into the batch buffer, the one copy encryption then needs;
/// data chunks wait in `unsealed` and are sealed together (interleaved CBC chains, several
/// times faster than one record at a time), always before any later frame, so wire order is
/// kept.
#[derive(Debug)]
pub struct Batch {
    send: SendHalf,
    /// Negotiated version, for the headers written here directly (plaintext data).
    version: u8,
    plaintext: bool,
    /// Encoded bytes not yet moved into `segments`.
    scratch: BytesMut,
    /// What the next write sends, in order.
    segments: VecDeque<Segment>,
    /// Bytes of the first segment already written (a write may take part of one).
    written: usize,
    /// Wire bytes batched (sealed or not) since the last write.
    len: usize,
    /// Encrypted mode: data chunks waiting to be sealed together, in order.
    unsealed: Vec<(Service, RequestId, Bytes)>,
    /// Room taken back in `scratch` after each write, so one allocation serves every batch.
    reclaim: usize,
}

impl Batch {
    fn new(send: SendHalf, version: u8) -> Self {
        let plaintext = send.mode() == Mode::PLAINTEXT;
        Self {
            send,
            version,
            plaintext,
            scratch: BytesMut::with_capacity(BUFFER),
            segments: VecDeque::new(),
            written: 0,
            len: 0,
            unsealed: Vec::new(),
            reclaim: WRITE_BATCH,
        }
    }

    /// Adds one message.
    pub fn push(&mut self, id: RequestId, message: Message) -> Result<(), Error> {
        match message {
            Message::Data(body) if self.plaintext && body.len() >= ZERO_COPY_MIN => {
                if body.len() > self.send.max_payload() {
                    // Let the session say why, as for any other frame.
                    return self
                        .push_with(|send, out| send.write_message(id, &Message::Data(body), out));
                }
                self.seal_unsealed()?;
                let header = Header {
                    kind: FrameType::DATA,
                    version: self.version,
                    service: Message::Data(Bytes::new()).kind().1,
                    id,
                    // At most `max_payload`, checked above, which fits a u32.
                    length: u32::try_from(body.len()).unwrap_or(u32::MAX),
                };
                header.encode(&mut self.scratch);
                self.segments
                    .push_back(Segment::Shared(self.scratch.split().freeze()));
                self.len += HEADER_LEN + body.len();
                self.segments.push_back(Segment::Shared(body));
                Ok(())
            }
            Message::Data(body) if !self.plaintext => match self.sealable(body) {
                Ok(body) => self.seal_in_place(id, body),
                Err(body) => {
                    self.len += self.send.frame_len(body.len());
                    let service = Message::Data(Bytes::new()).kind().1;
                    self.unsealed.push((service, id, body));
                    Ok(())
                }
            },
            message => self.push_with(|send, out| send.write_message(id, &message, out)),
        }
    }

    /// `body` as a buffer to seal where it lies, if the suite seals in place, no one else
    /// holds the buffer (so no one sees it change) and the tag fits after it; else `body` as
    /// it was, to be sealed by copying.
    fn sealable(&self, body: Bytes) -> Result<BytesMut, Bytes> {
        let Some(room) = self.send.in_place_room() else {
            return Err(body);
        };
        if body.is_empty() || body.len() > self.send.max_payload() {
            // Nothing to save, or too large: the session says why when it is sealed.
            return Err(body);
        }
        let buf = body.try_into_mut()?;
        if buf.capacity() - buf.len() < room {
            return Err(buf.freeze());
        }
        Ok(buf)
    }

    /// Seals one data chunk where it lies and batches its header and the sealed chunk, after
    /// everything batched before it.
    fn seal_in_place(&mut self, id: RequestId, mut body: BytesMut) -> Result<(), Error> {
        self.seal_unsealed()?;
        let service = Message::Data(Bytes::new()).kind().1;
        self.send
            .write_in_place(FrameType::DATA, service, id, &mut body, &mut self.scratch)?;
        self.segments
            .push_back(Segment::Shared(self.scratch.split().freeze()));
        self.len += HEADER_LEN + body.len();
        self.segments.push_back(Segment::Sealed(body));
        Ok(())
    }

    /// Adds one frame with a raw body.
    pub fn push_frame(
        &mut self,
        kind: FrameType,
        service: Service,
        id: RequestId,
        body: &[u8],
    ) -> Result<(), Error> {
        self.push_with(|send, out| send.write_frame(kind, service, id, body, out))
    }

    /// Adds what `encode` appends with the session's send half, for roles with their own
    /// message types (the peer wire's `PeerMessage::write`).
    pub fn push_with<T>(
        &mut self,
        encode: impl FnOnce(&mut SendHalf, &mut BytesMut) -> Result<T, Error>,
    ) -> Result<T, Error> {
        // Data chunks queued before this frame go before it.
        self.seal_unsealed()?;
        let before = self.scratch.len();
        let result = encode(&mut self.send, &mut self.scratch);
        self.len += self.scratch.len() - before;
        result
    }

    /// Wire bytes batched since the last write.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.scratch.is_empty() && self.segments.is_empty()
    }

    /// Whether the batch is big enough to write without taking more.
    pub fn is_full(&self) -> bool {
        self.len >= WRITE_BATCH
    }

    /// The session's send half, e.g. for `close_soon` or the largest payload.
    pub fn send_half(&self) -> &SendHalf {
        &self.send
    }

    /// Seals the queued data chunks, together, into the batch.
    fn seal_unsealed(&mut self) -> Result<(), Error> {
        if self.unsealed.is_empty() {
            return Ok(());
        }
        let frames: Vec<_> = self
            .unsealed
            .iter()
            .map(|(service, id, body)| (FrameType::DATA, *service, *id, &body[..]))
            .collect();
        let result = self.send.write_frames(&frames, &mut self.scratch);
        self.unsealed.clear();
        result
    }

    /// Seals everything batched now (a flush would), so that [`SendHalf::close_soon`] says
    /// whether these records crossed the key's close-soon point before they are written.
    pub fn seal(&mut self) -> Result<(), Error> {
        self.finish()
    }

    /// Seals what waits and closes the batch into segments for writing.
    fn finish(&mut self) -> Result<(), Error> {
        self.seal_unsealed()?;
        if !self.scratch.is_empty() {
            self.segments
                .push_back(Segment::Shared(self.scratch.split().freeze()));
        }
        Ok(())
    }
}

/// One piece of a batch's next write.
#[derive(Debug)]
enum Segment {
    /// Encoded frames, or a plaintext chunk's own bytes.
    Shared(Bytes),
    /// A data chunk sealed where it lay, handed back once written.
    Sealed(BytesMut),
}

impl std::ops::Deref for Segment {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Shared(bytes) => bytes,
            Self::Sealed(buf) => buf,
        }
    }
}

/// Where a [`FrameWriter`] hands the buffers it sealed in place once they are written.
struct Recycle(Box<dyn FnMut(BytesMut) + Send>);

impl std::fmt::Debug for Recycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recycle")
    }
}

/// Why a [`FrameWriter`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// An item could not be encoded (a bug in the role, or the record layer refusing to seal).
    #[error("cannot encode a frame: {0}")]
    Encode(#[from] Error),
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
    /// The peer did not take the batch within the write timeout (it stopped reading).
    #[error("the peer took nothing for {}s", .0.as_secs())]
    Timeout(Duration),
}

/// Where a [`FrameWriter::run`] takes its items from: the role's queues and their policy
/// (priorities, bounds, accounting).
pub trait Outbox: Send {
    type Item: Send;

    /// Waits for the next item; `None` once the role has closed its queues (the writer then
    /// flushes and shuts the write half down).
    fn recv(&mut self) -> impl Future<Output = Option<Self::Item>> + Send;

    /// An item already queued, without waiting.
    fn try_recv(&mut self) -> Option<Self::Item>;

    /// Adds one item to the batch.
    fn encode(&mut self, item: Self::Item, batch: &mut Batch) -> Result<(), Error>;

    /// The batch's write ended (written or failed): release what was held for its items.
    fn written(&mut self) {}
}

/// Frames out to a write half.
#[derive(Debug)]
pub struct FrameWriter<W> {
    io: W,
    batch: Batch,
    write_timeout: Option<Duration>,
    recycle: Option<Recycle>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// `version`: the session's negotiated version.
    pub fn new(io: W, send: SendHalf, version: u8) -> Self {
        Self {
            io,
            batch: Batch::new(send, version),
            write_timeout: None,
            recycle: None,
        }
    }

    /// Bounds each batch's write (none by default): a peer that stops reading ends the writer
    /// instead of holding it, and everything queued behind it, forever.
    pub fn write_timeout(mut self, limit: Duration) -> Self {
        self.write_timeout = Some(limit);
        self
    }

    /// Sizes the batch buffer (by default a full batch, for a role that streams data): a role
    /// that sends small messages on many connections keeps less memory per connection; the
    /// buffer still grows for a large batch.
    pub fn buffer(mut self, capacity: usize) -> Self {
        self.batch.scratch = BytesMut::with_capacity(capacity);
        self.batch.reclaim = capacity.min(WRITE_BATCH);
        self
    }

    /// Hands each data chunk sealed in place ([`Batch`]) to `hook` once it is written: the
    /// buffer, now holding the sealed record body, with its capacity, for a reader to fill
    /// again. Without a hook such buffers are freed.
    pub fn recycle(mut self, hook: impl FnMut(BytesMut) + Send + 'static) -> Self {
        self.recycle = Some(Recycle(Box::new(hook)));
        self
    }

    /// What the next [`FrameWriter::flush`] writes.
    pub fn batch(&mut self) -> &mut Batch {
        &mut self.batch
    }

    /// Writes everything batched, as few `writev`s as the stream takes (one, unless it takes
    /// less than offered), within the write timeout. Cancel-safe: what was written stays
    /// written and the rest stays batched.
    pub async fn flush(&mut self) -> Result<(), WriteError> {
        self.batch.finish()?;
        match self.write_timeout {
            Some(limit) => tokio::time::timeout(limit, self.write_segments())
                .await
                .map_err(|_| WriteError::Timeout(limit))??,
            None => self.write_segments().await?,
        }
        Ok(())
    }

    /// Flushes, then shuts the write half down (our FIN), within the write timeout each.
    pub async fn shutdown(&mut self) -> Result<(), WriteError> {
        self.flush().await?;
        match self.write_timeout {
            Some(limit) => tokio::time::timeout(limit, self.io.shutdown())
                .await
                .map_err(|_| WriteError::Timeout(limit))??,
            None => self.io.shutdown().await?,
        }
        Ok(())
    }

    /// Writes batches until the outbox closes: waits for one item, takes every item already
    /// queued (up to [`WRITE_BATCH`] bytes), and writes them together. Then flushes and shuts
    /// the write half down.
    pub async fn run<O: Outbox>(&mut self, mut outbox: O) -> Result<(), WriteError> {
        while let Some(first) = outbox.recv().await {
            outbox.encode(first, &mut self.batch)?;
            while !self.batch.is_full() {
                let Some(next) = outbox.try_recv() else {
                    break;
                };
                outbox.encode(next, &mut self.batch)?;
            }
            let flushed = self.flush().await;
            outbox.written();
            flushed?;
        }
        self.shutdown().await
    }

    /// The write half.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }

    async fn write_segments(&mut self) -> io::Result<()> {
        let batch = &mut self.batch;
        while !batch.segments.is_empty() {
            let slices: Vec<io::IoSlice<'_>> = batch
                .segments
                .iter()
                .take(MAX_SEGMENTS)
                .enumerate()
                .map(|(i, s)| io::IoSlice::new(if i == 0 { &s[batch.written..] } else { s }))
                .collect();
            let mut written = self.io.write_vectored(&slices).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // Drop what is written whole; remember how much of a segment written in part.
            while let Some(front) = batch.segments.front() {
                let left = front.len() - batch.written;
                if written < left {
                    batch.written += written;
                    break;
                }
                written -= left;
                batch.written = 0;
                if let (Some(Segment::Sealed(buf)), Some(Recycle(hook))) =
                    (batch.segments.pop_front(), &mut self.recycle)
                {
                    hook(buf);
                }
            }
        }
        batch.len = 0;
        // Reclaim the scratch allocation once every frozen piece of it has been written.
        batch.scratch.reserve(batch.reclaim);
        Ok(())
    }
}

/// A single bounded queue of `(id, message)` pairs, in order.
impl Outbox for mpsc::Receiver<(RequestId, Message)> {
    type Item = (RequestId, Message);

    fn recv(&mut self) -> impl Future<Output = Option<Self::Item>> + Send {
        mpsc::Receiver::recv(self)
    }

    fn try_recv(&mut self) -> Option<Self::Item> {
        mpsc::Receiver::try_recv(self).ok()
    }

    fn encode(&mut self, (id, message): Self::Item, batch: &mut Batch) -> Result<(), Error> {
        batch.push(id, message)
    }
}

/// A single unbounded queue of `(id, message)` pairs, in order.
impl Outbox for mpsc::UnboundedReceiver<(RequestId, Message)> {
    type Item = (RequestId, Message);

    fn recv(&mut self) -> impl Future<Output = Option<Self::Item>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }

    fn try_recv(&mut self) -> Option<Self::Item> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }

    fn encode(&mut self, (id, message): Self::Item, batch: &mut Batch) -> Result<(), Error> {
        batch.push(id, message)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use super::*;
    use crate::message::{FetchEnd, FetchResponse};
    use crate::session::{RecvHalf, Session};

    /// Collects what is written and counts the write calls that reach the stream; with
    /// `take`, each call takes at most that many bytes, as a socket with a full buffer does.
    #[derive(Default)]
    struct CountingWriter {
        wire: Vec<u8>,
        writes: Arc<AtomicUsize>,
        take: Option<usize>,
    }

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.writes.fetch_add(1, Ordering::Relaxed);
            this.wire.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.writes.fetch_add(1, Ordering::Relaxed);
            let mut n = 0;
            let mut room = this.take.unwrap_or(usize::MAX);
            for buf in bufs {
                let part = &buf[..buf.len().min(room)];
                this.wire.extend_from_slice(part);
                n += part.len();
                room -= part.len();
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn halves(encrypted: bool) -> (SendHalf, RecvHalf) {
        let (ours, theirs) = Session::dangerous_pair_with_fixed_keys(encrypted);
        (ours.into_split().0, theirs.into_split().1)
    }

    fn open(mut recv: RecvHalf, wire: &[u8]) -> Vec<(RequestId, Message)> {
        let mut wire = BytesMut::from(wire);
        let mut got = Vec::new();
        while let Some(frame) = recv.read_frame(&mut wire).unwrap() {
            got.push((frame.header.id, frame.message().unwrap()));
        }
        assert!(wire.is_empty(), "{} bytes left over", wire.len());
        got
    }

    /// Issue 10: a small fetch queued as response, data and end goes out in one write call,
    /// in order, in both modes and whether the chunk takes the zero-copy path or the batch.
    #[tokio::test]
    async fn everything_queued_goes_out_in_one_write() {
        for encrypted in [false, true] {
            for chunk in [100, ZERO_COPY_MIN + 1] {
                let (send, recv) = halves(encrypted);
                let writes = Arc::new(AtomicUsize::new(0));
                let io = CountingWriter {
                    writes: writes.clone(),
                    ..CountingWriter::default()
                };
                let (tx, rx) = mpsc::channel(8);
                let id = RequestId(5);
                let data = Bytes::from(vec![9u8; chunk]);
                let frames = vec![
                    (
                        id,
                        Message::FetchResponse(FetchResponse {
                            size: chunk as u64,
                            mtime_secs: 0,
                            mtime_nanos: 0,
                            offset: 0,
                            length: chunk as u64,
                        }),
                    ),
                    (id, Message::Data(data)),
                    (
                        id,
                        Message::FetchEnd(FetchEnd {
                            bytes: chunk as u64,
                            digest: [0; 32],
                        }),
                    ),
                ];
                // Queued before the writer wakes, as a request task that answers at once.
                for frame in frames.clone() {
                    tx.send(frame).await.unwrap();
                }
                drop(tx);
                let mut writer = FrameWriter::new(io, send, crate::VERSION);
                writer.run(rx).await.unwrap();
                let wire = std::mem::take(&mut writer.get_mut().wire);
                assert_eq!(
                    open(recv, &wire),
                    frames,
                    "encrypted {encrypted}, chunk {chunk}"
                );
                assert_eq!(
                    writes.load(Ordering::Relaxed),
                    1,
                    "encrypted {encrypted}, chunk {chunk}"
                );
            }
        }
    }

    /// Issue 10: with AES-256-GCM a data chunk that no one else holds and that has room for
    /// the tag is sealed where it lies. The wire is byte for byte what sealing by copying
    /// gives, in order among copied chunks and other frames, also when the socket takes a few
    /// bytes at a time; each such buffer comes back to the recycle hook once written (the same
    /// allocation); a chunk held elsewhere or without room is copied.
    #[tokio::test]
    async fn chunks_sealed_in_place_give_the_same_bytes_and_come_back() {
        use crate::crypto::RecordSuite;
        use std::sync::Mutex;

        let lens = [65_536usize, 1, 17, 4096, 65_536, 100];
        let data: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        // Chunk 1 is also held elsewhere, chunk 3 has no room after it: both are copied.
        let chunk = |i: usize| -> Bytes {
            let mut buf = BytesMut::with_capacity(data[i].len() + if i == 3 { 0 } else { 16 });
            buf.extend_from_slice(&data[i]);
            buf.freeze()
        };
        let frames = |chunks: Vec<Bytes>| -> Vec<(RequestId, Message)> {
            let mut frames = vec![(RequestId(1), Message::Ping(Bytes::from_static(b"p")))];
            frames.extend(chunks.into_iter().map(|c| (RequestId(2), Message::Data(c))));
            frames.insert(4, (RequestId(3), Message::Pong(Bytes::from_static(b"q"))));
            frames.push((
                RequestId(2),
                Message::FetchEnd(FetchEnd {
                    bytes: 7,
                    digest: [1; 32],
                }),
            ));
            frames
        };
        let write = |frames: Vec<(RequestId, Message)>, take: Option<usize>| async move {
            let (ours, _) = Session::dangerous_pair_with_suite(RecordSuite::Aes256Gcm);
            let back = Arc::new(Mutex::new(Vec::new()));
            let hook = back.clone();
            let io = CountingWriter {
                take,
                ..CountingWriter::default()
            };
            let mut writer = FrameWriter::new(io, ours.into_split().0, 2)
                .recycle(move |buf: BytesMut| hook.lock().unwrap().push(buf.as_ptr() as usize));
            for (id, message) in frames {
                writer.batch().push(id, message).unwrap();
            }
            writer.flush().await.unwrap();
            let wire = std::mem::take(&mut writer.get_mut().wire);
            let back = std::mem::take(&mut *back.lock().unwrap());
            (wire, back)
        };

        // Every chunk held elsewhere too: all sealed by copying.
        let copied: Vec<Bytes> = data.iter().map(|d| Bytes::copy_from_slice(d)).collect();
        let (by_copy, none) = write(frames(copied.clone()), None).await;
        assert!(none.is_empty());
        let (_, theirs) = Session::dangerous_pair_with_suite(RecordSuite::Aes256Gcm);
        assert_eq!(open(theirs.into_split().1, &by_copy), frames(copied));

        for take in [None, Some(1000), Some(7)] {
            let chunks: Vec<Bytes> = (0..lens.len()).map(chunk).collect();
            let held = chunks[1].clone();
            let in_place: Vec<usize> = [0, 2, 4, 5]
                .iter()
                .map(|&i| chunks[i].as_ptr() as usize)
                .collect();
            let (wire, back) = write(frames(chunks), take).await;
            assert_eq!(wire, by_copy, "take {take:?}");
            assert_eq!(back, in_place, "take {take:?}");
            assert_eq!(
                held[..],
                data[1][..],
                "a chunk held elsewhere is not touched"
            );
        }
    }

    /// Items queued apart (the writer woke between them) are separate writes: the test above
    /// counts what it claims to.
    #[tokio::test]
    async fn items_that_arrive_after_a_write_take_their_own() {
        let (send, recv) = halves(true);
        let writes = Arc::new(AtomicUsize::new(0));
        let io = CountingWriter {
            writes: writes.clone(),
            ..CountingWriter::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut writer = FrameWriter::new(io, send, crate::VERSION);
        let ping = (RequestId(1), Message::Ping("a".into()));
        tx.send(ping.clone()).unwrap();
        let mut outbox = rx;
        let first = Outbox::recv(&mut outbox).await.unwrap();
        outbox.encode(first, writer.batch()).unwrap();
        writer.flush().await.unwrap();
        tx.send(ping.clone()).unwrap();
        drop(tx);
        writer.run(outbox).await.unwrap();
        let wire = std::mem::take(&mut writer.get_mut().wire);
        assert_eq!(open(recv, &wire), vec![ping.clone(), ping]);
        assert_eq!(writes.load(Ordering::Relaxed), 2);
    }

    /// A peer that takes nothing ends the writer after the write timeout.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_the_writer_out() {
        let (send, _) = halves(false);
        let (ours, _theirs) = tokio::io::duplex(16);
        let limit = Duration::from_secs(30);
        let mut writer = FrameWriter::new(ours, send, crate::VERSION).write_timeout(limit);
        writer
            .batch()
            .push(RequestId(1), Message::Ping(Bytes::from(vec![0; 1024])))
            .unwrap();
        assert!(matches!(writer.flush().await, Err(WriteError::Timeout(l)) if l == limit));
    }
}
