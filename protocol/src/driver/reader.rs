//! The frame reader: owns a stream's read half, its buffer and the [`RecvHalf`], and yields
//! opened frames. It tells a clean end of stream from one inside a frame (spec §9 row 5) and
//! from a bad frame or record, and enforces the per-frame read deadline (a frame that has
//! started arriving must finish within the limit: the slowloris defence, spec §7).

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::error::Error;
use crate::frame::Frame;
use crate::session::RecvHalf;

/// Default spare capacity kept in the read buffer before each read.
const READ_RESERVE: usize = 16 * 1024;

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
    eof: bool,
    /// Before each read the buffer has at least `low_water` spare bytes, else `reserve` more.
    reserve: usize,
    low_water: usize,
    last_read: Instant,
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
            eof: false,
            reserve: READ_RESERVE,
            low_water: READ_RESERVE,
            last_read: Instant::now(),
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
            if self.buf.capacity() - self.buf.len() < self.low_water {
                self.buf.reserve(self.reserve);
            }
            let deadline = self
                .frame_started
                .zip(self.frame_read_timeout)
                .map(|(started, limit)| (started + limit, limit));
            tokio::select! {
                biased;
                () = sleep_until(deadline.map(|(at, _)| at)), if deadline.is_some() => {
                    let limit = deadline.map_or(Duration::ZERO, |(_, limit)| limit);
                    return Err(ReadEnd::Stalled(limit));
                }
                read = self.io.read_buf(&mut self.buf) => match read {
                    Ok(0) => self.eof = true,
                    Ok(_) => self.last_read = Instant::now(),
                    Err(error) => return Err(ReadEnd::Io(error)),
                },
            }
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
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
