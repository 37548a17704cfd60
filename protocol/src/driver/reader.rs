//! The frame reader: owns a stream's read half, its buffer and the [`RecvHalf`], and yields
//! opened frames. It tells a clean end of stream from one inside a frame (spec §9 row 5) and
//! from a bad frame or record, and enforces the per-frame read deadline (a frame that has
//! started arriving must finish within the limit: the slowloris defence, spec §7).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, Sleep};

use crate::error::Error;
use crate::frame::Frame;
use crate::session::RecvHalf;

/// Default spare capacity kept in the read buffer before each read.
const READ_RESERVE: usize = 16 * 1024;

/// Room a recycling reader leaves after each read: the most the frame decoder reserves for a
/// frame still arriving, so that it never moves the buffer to a fresh allocation.
const DECODER_ROOM: usize = 64 * 1024;

/// Why a [`FrameReader`] yields no more frames.
#[derive(Debug)]
pub enum ReadEnd {
    /// The peer closed its side between frames.
    Eof,
    /// The stream ended inside a frame (spec §9 row 5): nothing more can be read.
    Truncated,
    /// A frame started arriving and did not finish within this deadline.
    Stalled(Duration),
    /// A frame or record the session cannot accept (bad magic, too long, bad record, ...):
    /// the connection is corrupt.
    Frame(Error),
    /// Reading from the stream failed.
    Io(io::Error),
}

impl From<ReadEnd> for Error {
    fn from(end: ReadEnd) -> Self {
        match end {
            ReadEnd::Eof | ReadEnd::Truncated => Error::Closed,
            ReadEnd::Stalled(_) => Error::Timeout("completing a frame"),
            ReadEnd::Frame(error) => error,
            ReadEnd::Io(error) => Error::Io(error),
        }
    }
}

/// Frames in from a read half.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    recv: RecvHalf,
    buf: BytesMut,
    frame_read_timeout: Option<Duration>,
    /// When the frame now arriving started to arrive (its first byte was buffered).
    frame_started: Option<Instant>,
    /// Fires at the frame deadline; kept from frame to frame ([`FrameReader::arm_deadline`]).
    deadline_timer: Option<Pin<Box<Sleep>>>,
    eof: bool,
    /// Before each read the buffer has at least `low_water` spare bytes, else `reserve` more.
    reserve: usize,
    low_water: usize,
    last_read: Instant,
    /// Earlier read buffers whose frames may still be alive, kept to be reused once they are
    /// all dropped ([`FrameReader::recycle_buffers`]); oldest first, at most `max_spares`.
    spares: VecDeque<BytesMut>,
    max_spares: usize,
    /// Buffers allocated for reading (not reused), for tests.
    #[cfg(test)]
    allocated: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `leftover`: bytes that arrived with the handshake (they belong to the session).
    pub fn new(io: R, recv: RecvHalf, leftover: BytesMut) -> Self {
        Self {
            io,
            recv,
            buf: leftover,
            frame_read_timeout: None,
            frame_started: None,
            deadline_timer: None,
            eof: false,
            reserve: READ_RESERVE,
            low_water: READ_RESERVE,
            last_read: Instant::now(),
            spares: VecDeque::new(),
            max_spares: 0,
            #[cfg(test)]
            allocated: 0,
        }
    }

    /// Arms the per-frame read deadline (none by default).
    pub fn frame_read_timeout(mut self, limit: Duration) -> Self {
        self.frame_read_timeout = Some(limit);
        self
    }

    /// Keeps at least `low_water` spare bytes before each read, topping up by `reserve`. Frames
    /// are split off without copying, so a large `reserve` lets one read take many frames.
    pub fn read_reserve(mut self, reserve: usize, low_water: usize) -> Self {
        self.reserve = reserve.max(1);
        self.low_water = low_water.min(self.reserve).max(1);
        self
    }

    /// Reuses read buffers instead of allocating one per read while earlier frames are alive:
    /// up to `spares` earlier buffers are kept, and one is read into again once every frame
    /// cut from it has been dropped. At bulk rates a fresh buffer per read came from memory the
    /// allocator had just handed back to the kernel, so every 4 KiB of it cost a page fault and
    /// a page clear (issue 10). Memory: at most `spares` buffers of `reserve` bytes beyond the
    /// frames themselves. A buffer is reused when it has room for a read of `low_water` bytes
    /// after the frame still arriving, plus `DECODER_ROOM`: so `reserve` should exceed
    /// `low_water` + 64 KiB by at least a typical frame.
    pub fn recycle_buffers(mut self, spares: usize) -> Self {
        self.max_spares = spares;
        self
    }

    /// The next frame, opened. Cancel-safe: bytes read and the frame deadline live here, so a
    /// caller may `select!` this against its own events and call it again.
    pub async fn next_frame(&mut self) -> Result<Frame, ReadEnd> {
        loop {
            if let Some(frame) = self
                .recv
                .read_frame(&mut self.buf)
                .map_err(ReadEnd::Frame)?
            {
                self.frame_started = None;
                return Ok(frame);
            }
            let mid_frame = self.is_mid_frame();
            if self.eof {
                return Err(if mid_frame {
                    ReadEnd::Truncated
                } else {
                    ReadEnd::Eof
                });
            }
            if mid_frame {
                self.frame_started.get_or_insert_with(Instant::now);
            } else {
                self.frame_started = None;
            }
            self.make_room();
            // When recycling, a read leaves room for the rest of a frame it cuts, so the
            // decoder's own reserve never moves the buffer to a fresh allocation.
            let room = self.buf.capacity() - self.buf.len();
            let tail = if self.max_spares > 0 { DECODER_ROOM } else { 0 };
            let deadline = self
                .frame_started
                .zip(self.frame_read_timeout)
                .map(|(started, limit)| (started + limit, limit));
            if let Some((at, _)) = deadline {
                self.arm_deadline(at);
            }
            let mut space = (&mut self.buf).limit(room - tail);
            tokio::select! {
                biased;
                () = wait_for(&mut self.deadline_timer), if deadline.is_some() => {
                    let limit = deadline.map_or(Duration::ZERO, |(_, limit)| limit);
                    return Err(ReadEnd::Stalled(limit));
                }
                read = self.io.read_buf(&mut space) => match read {
                    Ok(0) => self.eof = true,
                    Ok(_) => self.last_read = Instant::now(),
                    Err(error) => return Err(ReadEnd::Io(error)),
                },
            }
        }
    }

    /// Points the frame deadline's timer at `at`. One timer serves every frame: a new timer
    /// per read registered with the runtime's timer wheel and deregistered again, under its
    /// lock, and at bulk rates (a frame cut by almost every read) the worker threads queued
    /// on that lock (issue 10); moving a registered timer later takes no lock.
    fn arm_deadline(&mut self, at: Instant) {
        match &mut self.deadline_timer {
            Some(timer) if timer.deadline() == at => {}
            Some(timer) => timer.as_mut().reset(at),
            None => self.deadline_timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Makes sure the buffer has `low_water` spare bytes (and [`DECODER_ROOM`] more when
    /// recycling) before a read.
    fn make_room(&mut self) {
        let tail = if self.max_spares > 0 { DECODER_ROOM } else { 0 };
        let wanted = self.low_water + tail;
        if self.buf.capacity() - self.buf.len() >= wanted {
            return;
        }
        if self.max_spares == 0 {
            #[cfg(test)]
            if !self.buf.try_reclaim(self.reserve) {
                self.allocated += 1;
            }
            self.buf.reserve(self.reserve);
            return;
        }
        // Every frame cut from this buffer is gone: read into it again (the bytes of a frame
        // still arriving move to its front).
        if self.buf.try_reclaim(wanted) {
            return;
        }
        let pending = self.buf.len();
        let reused = self
            .spares
            .iter_mut()
            .position(|spare| spare.try_reclaim(pending + wanted))
            .and_then(|at| self.spares.remove(at));
        let mut next = reused.unwrap_or_else(|| {
            #[cfg(test)]
            {
                self.allocated += 1;
            }
            BytesMut::with_capacity(self.reserve.max(pending + wanted))
        });
        next.extend_from_slice(&self.buf);
        let mut earlier = std::mem::replace(&mut self.buf, next);
        // Kept only to find out when its frames are gone; its own bytes were copied.
        earlier.clear();
        self.spares.push_back(earlier);
        if self.spares.len() > self.max_spares {
            // Its frames free it when they go.
            self.spares.pop_front();
        }
    }

    /// Whether a frame has started but not finished arriving.
    pub fn is_mid_frame(&self) -> bool {
        self.recv.decoder().is_mid_frame(&self.buf)
    }

    /// When bytes last arrived (or the reader was made): keep-alive counts any byte as life.
    pub fn last_read(&self) -> Instant {
        self.last_read
    }

    /// The read half, e.g. to drain it before closing.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }
}

async fn wait_for(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::RequestId;
    use crate::message::Message;
    use crate::session::Session;
    use tokio::io::AsyncWriteExt;

    fn pair(encrypted: bool) -> (crate::SendHalf, RecvHalf) {
        let (client, server) = Session::dangerous_pair_with_fixed_keys(encrypted);
        (client.into_split().0, server.into_split().1)
    }

    fn ping(send: &mut crate::SendHalf, id: u32) -> BytesMut {
        let mut wire = BytesMut::new();
        send.write_message(RequestId(id), &Message::Ping("p".into()), &mut wire)
            .unwrap();
        wire
    }

    #[tokio::test]
    async fn leftover_frames_come_first_then_a_clean_end() {
        let (mut send, recv) = pair(true);
        let leftover = ping(&mut send, 1);
        let (mut theirs, ours) = tokio::io::duplex(1024);
        theirs.write_all(&ping(&mut send, 2)).await.unwrap();
        drop(theirs);
        let mut reader = FrameReader::new(ours, recv, leftover);
        assert_eq!(reader.next_frame().await.unwrap().header.id, RequestId(1));
        assert_eq!(reader.next_frame().await.unwrap().header.id, RequestId(2));
        assert!(matches!(reader.next_frame().await, Err(ReadEnd::Eof)));
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_truncated() {
        let (mut send, recv) = pair(false);
        let wire = ping(&mut send, 1);
        let (mut theirs, ours) = tokio::io::duplex(1024);
        theirs.write_all(&wire[..wire.len() - 1]).await.unwrap();
        drop(theirs);
        let mut reader = FrameReader::new(ours, recv, BytesMut::new());
        assert!(matches!(reader.next_frame().await, Err(ReadEnd::Truncated)));
    }

    #[tokio::test]
    async fn a_bad_record_is_a_frame_error() {
        let (mut send, recv) = pair(true);
        let mut wire = ping(&mut send, 1);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let (mut theirs, ours) = tokio::io::duplex(1024);
        theirs.write_all(&wire).await.unwrap();
        let mut reader = FrameReader::new(ours, recv, BytesMut::new());
        match reader.next_frame().await {
            Err(ReadEnd::Frame(error)) => assert_eq!(error.code(), crate::ErrorCode::BAD_RECORD),
            other => panic!("{other:?}"),
        }
    }

    /// A started frame must finish within the deadline; a quiet connection between frames is
    /// not the reader's business (idle is the role's policy).
    #[tokio::test(start_paused = true)]
    async fn a_stalled_frame_times_out_but_silence_between_frames_does_not() {
        let (mut send, recv) = pair(false);
        let wire = ping(&mut send, 1);
        let (mut theirs, ours) = tokio::io::duplex(1024);
        let limit = Duration::from_secs(10);
        let mut reader = FrameReader::new(ours, recv, BytesMut::new()).frame_read_timeout(limit);
        // Silence: still waiting after ten deadlines.
        let quiet = tokio::time::timeout(limit * 10, reader.next_frame()).await;
        assert!(quiet.is_err(), "no frame started, so no deadline");
        theirs.write_all(&wire[..3]).await.unwrap();
        let started = Instant::now();
        assert!(matches!(reader.next_frame().await, Err(ReadEnd::Stalled(l)) if l == limit));
        assert_eq!(started.elapsed(), limit);
    }

    /// Issue 10: frames still alive (queued for the caller, as a bulk fetch's are) no longer
    /// make every read allocate: a buffer is read into again once its frames are dropped, so a
    /// long stream of frames needs only as many buffers as are alive at once, and every frame
    /// still arrives intact and in order.
    #[tokio::test]
    async fn read_buffers_are_reused_once_their_frames_are_dropped() {
        for encrypted in [false, true] {
            let (mut send, recv) = pair(encrypted);
            let frames = 256usize;
            let body = |i: usize| vec![i as u8; 16 * 1024 + i % 7];
            let (mut theirs, ours) = tokio::io::duplex(256 * 1024);
            let writer = tokio::spawn(async move {
                for i in 0..frames {
                    let mut wire = BytesMut::new();
                    send.write_frame(
                        crate::FrameType::DATA,
                        crate::Service::FETCH,
                        RequestId(1),
                        &body(i),
                        &mut wire,
                    )
                    .unwrap();
                    theirs.write_all(&wire).await.unwrap();
                }
            });
            let mut reader = FrameReader::new(ours, recv, BytesMut::new())
                .read_reserve(128 * 1024, 16 * 1024)
                .recycle_buffers(8);
            // The caller holds the last 12 frames (about three buffers' worth), like a channel.
            let mut alive = VecDeque::new();
            for i in 0..frames {
                let frame = reader.next_frame().await.unwrap();
                assert_eq!(frame.body, body(i), "frame {i}");
                alive.push_back(frame);
                if alive.len() > 12 {
                    alive.pop_front();
                }
            }
            writer.await.unwrap();
            assert!(matches!(reader.next_frame().await, Err(ReadEnd::Eof)));
            // 4 MiB went through 128 KiB buffers: without reuse, one allocation per read.
            assert!(
                reader.allocated <= 8,
                "encrypted {encrypted}: {} buffers allocated",
                reader.allocated
            );
            assert!(reader.spares.len() <= 8);
        }
    }

    /// The deadline is each frame's own: frames that each take just under the limit to
    /// arrive never stall the reader however long the stream runs, and the first one that
    /// takes longer does, at its own deadline.
    #[tokio::test(start_paused = true)]
    async fn every_frame_gets_its_own_deadline() {
        let (mut send, recv) = pair(true);
        let (mut theirs, ours) = tokio::io::duplex(1024);
        let limit = Duration::from_secs(10);
        let mut reader = FrameReader::new(ours, recv, BytesMut::new()).frame_read_timeout(limit);
        let frames: Vec<BytesMut> = (0..6).map(|i| ping(&mut send, i)).collect();
        let sender = tokio::spawn(async move {
            for wire in &frames[..5] {
                theirs.write_all(&wire[..4]).await.unwrap();
                tokio::time::sleep(limit - Duration::from_secs(1)).await;
                theirs.write_all(&wire[4..]).await.unwrap();
            }
            theirs.write_all(&frames[5][..4]).await.unwrap();
            tokio::time::sleep(limit * 3).await;
            drop(theirs);
        });
        for i in 0..5 {
            assert_eq!(reader.next_frame().await.unwrap().header.id, RequestId(i));
        }
        let started = Instant::now();
        assert!(matches!(reader.next_frame().await, Err(ReadEnd::Stalled(l)) if l == limit));
        assert_eq!(started.elapsed(), limit);
        sender.abort();
    }

    /// Cancelling `next_frame` (as a role's `select!` does) loses neither bytes nor the
    /// deadline already running.
    #[tokio::test(start_paused = true)]
    async fn next_frame_is_cancel_safe() {
        let (mut send, recv) = pair(true);
        let wire = ping(&mut send, 7);
        let (mut theirs, ours) = tokio::io::duplex(1024);
        let limit = Duration::from_secs(10);
        let mut reader = FrameReader::new(ours, recv, BytesMut::new()).frame_read_timeout(limit);
        theirs.write_all(&wire[..5]).await.unwrap();
        let cut = tokio::time::timeout(limit / 2, reader.next_frame()).await;
        assert!(cut.is_err());
        assert!(reader.is_mid_frame());
        theirs.write_all(&wire[5..]).await.unwrap();
        assert_eq!(reader.next_frame().await.unwrap().header.id, RequestId(7));
    }
}
