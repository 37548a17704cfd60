//! Wake the reader once per frame, not once per TCP segment. Every Ferry TCP stream gets this
//! from [`TcpConnector`](crate::transport::TcpConnector) and
//! [`TcpAcceptor`](crate::transport::TcpAcceptor): client, server and peers alike.
//!
//! On a slow link a 16 KiB block arrives as about 11 segments spread over milliseconds, and a
//! reader woken for each one (epoll, a context switch, a `recv` of 1448 bytes, the frame still
//! incomplete) paid for that per segment: on netlab's 20 Mbit/s links ~720 wake-ups and `recv`s
//! per MiB received, the largest share of a leecher's (and a `ferry get`'s) own CPU (issue 14). Frame headers travel
//! in clear (PROTOCOL.md §2.1), so this wrapper follows the frame boundaries in the bytes it
//! passes up and sets the socket's `SO_RCVLOWAT` to the bytes the current frame still lacks:
//! the kernel then wakes the reader when the frame can be completed.
//!
//! Never more than those bytes: the peer has committed to sending them (it writes whole
//! frames), so the reader cannot wait for data that is not coming; between frames the mark is
//! 1, as without this wrapper. End of stream and errors wake the reader whatever the mark, and
//! the kernel also wakes it when the receive window is nearly full. It changes nothing on the
//! wire. Off unix the wrapper only follows the frames and never touches the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use crate::HEADER_LEN;

/// Below this many missing bytes the mark stays at 1: raising it would cost a system call to
/// save at most one wake-up.
const WORTH_RAISING: usize = 4096;
/// The highest mark asked for: two 16 KiB blocks. A mark whose window does not fit the receive
/// buffer makes the kernel grow the buffer, and older kernels then also clamp the advertised
/// window to the mark, which would cap a long link's rate; 32 KiB needs about 64 KiB of buffer,
/// under the 128 KiB a TCP socket starts with (`tcp_rmem`). A longer frame wakes the reader
/// once per 32 KiB.
const MAX_MARK: usize = 32 * 1024;

/// Where the byte stream stands in its sequence of frames (PROTOCOL.md §2: a 12-byte header
/// whose last four bytes are the body length, then the body, then the next header).
#[derive(Debug, Default)]
pub(crate) struct FrameCursor {
    header: [u8; HEADER_LEN],
    /// Header bytes seen of the current frame (`HEADER_LEN` once its body has started).
    header_seen: usize,
    /// Body bytes of the current frame not yet seen.
    body_left: u64,
}

impl FrameCursor {
    /// Follows `bytes`, the next bytes of the stream.
    pub(crate) fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.header_seen < HEADER_LEN {
                let take = (HEADER_LEN - self.header_seen).min(bytes.len());
                self.header[self.header_seen..self.header_seen + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_seen += take;
                bytes = &bytes[take..];
                if self.header_seen == HEADER_LEN {
                    let mut length = [0u8; 4];
                    length.copy_from_slice(&self.header[8..12]);
                    self.body_left = u64::from(u32::from_be_bytes(length));
                    if self.body_left == 0 {
                        self.header_seen = 0;
                    }
                }
            } else {
                let take = self.body_left.min(bytes.len() as u64);
                self.body_left -= take;
                bytes = &bytes[take as usize..];
                if self.body_left == 0 {
                    self.header_seen = 0;
                }
            }
        }
    }

    /// Bytes the peer must still send to finish the frame it has started; 0 between frames.
    /// Until the header is whole only its own missing bytes count.
    pub(crate) fn missing(&self) -> u64 {
        match self.header_seen {
            0 => 0,
            seen if seen < HEADER_LEN => (HEADER_LEN - seen) as u64,
            _ => self.body_left,
        }
    }

    /// The receive low-water mark for what is missing: 1 (wake on any byte) unless enough is
    /// missing to be worth a system call, never more than is missing.
    pub(crate) fn mark(&self) -> usize {
        let missing = usize::try_from(self.missing()).unwrap_or(usize::MAX);
        if missing < WORTH_RAISING {
            1
        } else {
            missing.min(MAX_MARK)
        }
    }
}

/// A socket whose receive low-water mark can be set.
pub trait LowWater {
    fn set_low_water(&self, bytes: usize) -> io::Result<()>;
}

impl LowWater for TcpStream {
    fn set_low_water(&self, bytes: usize) -> io::Result<()> {
        crate::sockopt::set(self, crate::sockopt::IntOption::ReceiveLowWater, bytes)
    }
}

/// The read half of a split TCP stream: the option is the socket's, shared by both halves.
impl LowWater for OwnedReadHalf {
    fn set_low_water(&self, bytes: usize) -> io::Result<()> {
        crate::sockopt::set(
            self.as_ref(),
            crate::sockopt::IntOption::ReceiveLowWater,
            bytes,
        )
    }
}

/// A stream that keeps its socket's `SO_RCVLOWAT` at what the current frame lacks.
#[derive(Debug)]
pub struct FrameWake<S> {
    inner: S,
    cursor: FrameCursor,
    /// The mark the socket has now.
    mark: usize,
    /// Setting the mark failed once: leave the socket alone (it still works, waking per
    /// segment).
    broken: bool,
}

impl<S> FrameWake<S> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: LowWater> FrameWake<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            cursor: FrameCursor::default(),
            mark: 1,
            broken: false,
        }
    }

    fn follow(&mut self, read: &[u8]) {
        self.cursor.advance(read);
        let mark = self.cursor.mark();
        if mark == self.mark || self.broken {
            return;
        }
        match self.inner.set_low_water(mark) {
            Ok(()) => self.mark = mark,
            Err(_) => self.broken = true,
        }
    }
}

impl<S: AsyncRead + LowWater + Unpin> AsyncRead for FrameWake<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        this.follow(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameWake<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Split for two tasks without a lock, the read half still following the frames (it is the
/// only half that reads, so it keeps the cursor).
impl crate::transport::Split for FrameWake<TcpStream> {
    type Read = FrameWake<OwnedReadHalf>;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn split(self) -> (Self::Read, Self::Write) {
        let (read, write) = self.inner.into_split();
        let read = FrameWake {
            inner: read,
            cursor: self.cursor,
            mark: self.mark,
            broken: self.broken,
        };
        (read, write)
    }
}

#[cfg(all(test, unix))]
pub(crate) fn rcvlowat(socket: &TcpStream) -> io::Result<usize> {
    crate::sockopt::get(socket, crate::sockopt::IntOption::ReceiveLowWater)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A frame of `body` bytes as it travels (PROTOCOL.md §2.1; the body's content does not
    /// matter here).
    fn frame(body: usize) -> Vec<u8> {
        let mut out = vec![0x12, 0xfe, 0x02, 0x03, 0, 0, 0, 1];
        out.extend_from_slice(&u32::try_from(body).unwrap().to_be_bytes());
        out.extend((0..body).map(|i| i as u8));
        out
    }

    /// An in-memory stream that records every mark set on it.
    struct Recorded {
        inner: DuplexStream,
        marks: Arc<Mutex<Vec<usize>>>,
    }

    impl LowWater for Recorded {
        fn set_low_water(&self, bytes: usize) -> io::Result<()> {
            self.marks.lock().unwrap().push(bytes);
            Ok(())
        }
    }

    impl AsyncRead for Recorded {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    #[test]
    fn the_cursor_follows_frames_across_any_cut() {
        let mut stream = Vec::new();
        for body in [16_412, 0, 30, 5000, 16_412] {
            stream.extend(frame(body));
        }
        // Every cut position of the stream into two reads, then the rest in 7-byte reads.
        for cut in (0..stream.len()).step_by(97) {
            let mut cursor = FrameCursor::default();
            cursor.advance(&stream[..cut]);
            for chunk in stream[cut..].chunks(7) {
                cursor.advance(chunk);
            }
            assert_eq!(cursor.missing(), 0, "cut at {cut}");
        }
        let mut cursor = FrameCursor::default();
        cursor.advance(&stream[..5]);
        assert_eq!(cursor.missing(), 7, "the rest of the header");
        cursor.advance(&stream[5..12 + 100]);
        assert_eq!(cursor.missing(), 16_312, "the rest of the body");
        assert_eq!(cursor.mark(), 16_312);
        cursor.advance(&stream[112..12 + 16_000]);
        assert_eq!(cursor.missing(), 412);
        assert_eq!(
            cursor.mark(),
            1,
            "too little missing to be worth a system call"
        );
    }

    #[test]
    fn the_mark_is_never_above_what_the_frame_lacks() {
        let mut stream = Vec::new();
        for body in [16_412, 16_412, 60, 98_304, 20, 16_412] {
            stream.extend(frame(body));
        }
        // A deterministic spread of read sizes, from one byte to several frames.
        let mut state = 0x2545_f491_u32;
        let mut at = 0;
        let mut cursor = FrameCursor::default();
        let mut ends = Vec::new();
        let mut pos = 0;
        for body in [16_412, 16_412, 60, 98_304, 20, 16_412] {
            pos += HEADER_LEN + body;
            ends.push(pos);
        }
        while at < stream.len() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let take = (1 + state as usize % 40_000).min(stream.len() - at);
            cursor.advance(&stream[at..at + take]);
            at += take;
            let frame_end = ends.iter().copied().find(|&end| end > at).unwrap_or(at);
            let lacks = frame_end - at;
            let mark = cursor.mark();
            assert!(mark >= 1);
            // 32 KiB of mark needs ~64 KiB of buffer: below the 128 KiB a socket starts with.
            assert!(
                mark <= 32 * 1024,
                "mark {mark} would grow the receive buffer"
            );
            assert!(
                mark <= lacks.max(1),
                "mark {mark} with {lacks} bytes to come"
            );
        }
    }

    /// issue 14: a reader that has part of a 16 KiB block asks to be woken once the rest is
    /// there, and goes back to waking on any byte between frames.
    #[tokio::test]
    async fn a_partial_frame_raises_the_mark_to_its_rest() {
        let (mut theirs, ours) = tokio::io::duplex(1 << 20);
        let marks = Arc::new(Mutex::new(Vec::new()));
        let mut stream = FrameWake::new(Recorded {
            inner: ours,
            marks: marks.clone(),
        });
        let block = frame(16_412);
        let mut buf = vec![0u8; 64 * 1024];
        theirs.write_all(&block[..1460]).await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 1460);
        assert_eq!(*marks.lock().unwrap(), vec![block.len() - 1460]);
        // The rest, and a small frame whole: between frames the mark is 1 again.
        theirs.write_all(&block[1460..]).await.unwrap();
        theirs.write_all(&frame(30)).await.unwrap();
        let mut got = 1460;
        while got < block.len() + 42 {
            got += stream.read(&mut buf).await.unwrap();
        }
        assert_eq!(*marks.lock().unwrap(), vec![block.len() - 1460, 1]);
    }

    /// A loopback connection: the dialling end as it is, the accepting end wrapped.
    #[cfg(unix)]
    async fn tcp_pair() -> (TcpStream, FrameWake<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (dialled.unwrap(), FrameWake::new(accepted.unwrap().0))
    }

    /// The mark reaches the socket.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_mark_is_set_on_a_tcp_socket() {
        let (mut theirs, mut ours) = tcp_pair().await;
        let block = frame(16_412);
        theirs.write_all(&block[..12 + 100]).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 112 {
            got += ours.read(&mut buf).await.unwrap();
        }
        assert_eq!(got, 112);
        assert_eq!(rcvlowat(&ours.inner).unwrap(), 16_312);
        theirs.write_all(&block[112..]).await.unwrap();
        while got < block.len() {
            got += ours.read(&mut buf).await.unwrap();
        }
        assert_eq!(rcvlowat(&ours.inner).unwrap(), 1);
    }

    /// A peer that stops mid-frame (closes, or dies) still wakes the reader: the mark never
    /// holds back the end of the stream.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_end_of_the_stream_wakes_a_reader_waiting_for_a_frame() {
        let (mut theirs, mut ours) = tcp_pair().await;
        let block = frame(16_412);
        theirs.write_all(&block[..112]).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        assert_eq!(ours.read(&mut buf).await.unwrap(), 112);
        assert_eq!(rcvlowat(&ours.inner).unwrap(), 16_312);
        theirs.write_all(&block[112..1000]).await.unwrap();
        theirs.shutdown().await.unwrap();
        let mut got = 112;
        loop {
            match ours.read(&mut buf).await.unwrap() {
                0 => break,
                n => got += n,
            }
        }
        assert_eq!(got, 1000);
    }
}
