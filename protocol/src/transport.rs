//! Where connections come from. Sessions run over any ordered, reliable byte stream; this seam
//! names how one is dialled ([`Connector`]) and accepted ([`Acceptor`]), so that TCP today and a
//! relayed stream or a QUIC stream later carry the same handshake and frames without the client,
//! server or peer code changing.
//!
//! The traits only produce streams: the handshake, framing and every decision stay in the
//! sans-IO core and the drivers above it.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::frame_wake::FrameWake;

/// A byte stream a session can run over.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A stream of any transport, for code that picks the transport at run time.
pub type BoxedStream = Box<dyn Stream>;

/// A stream that splits into a read half and a write half for two tasks. TCP splits without a
/// lock (`into_split`); any other stream shares one through `tokio::io::split`.
pub trait Split: Stream {
    type Read: AsyncRead + Send + Unpin + 'static;
    type Write: AsyncWrite + Send + Unpin + 'static;

    fn split(self) -> (Self::Read, Self::Write);
}

impl Split for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Split for BoxedStream {
    type Read = tokio::io::ReadHalf<BoxedStream>;
    type Write = tokio::io::WriteHalf<BoxedStream>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

impl Split for tokio::io::DuplexStream {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// What [`Connector::connect`] returns.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<BoxedStream>> + Send + 'a>>;

/// Dials a peer. Object-safe, so a configuration can hold `Arc<dyn Connector>` and a relay or
/// QUIC connector can stand in for TCP.
pub trait Connector: fmt::Debug + Send + Sync {
    /// Opens a stream to `addr`. The caller bounds the time it may take.
    fn connect(&self, addr: SocketAddr) -> Connecting<'_>;
}

/// Accepts streams from peers.
pub trait Acceptor: Send {
    /// The accepted stream's type (static: the accept loop is monomorphised per transport).
    type Stream: Split;

    /// The next incoming stream and the address it came from.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address peers reach this acceptor at.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A TCP stream as every Ferry connection uses it: Nagle off (requests, pings and piece
/// requests are small and must not wait for an ACK), and its reader woken once per frame
/// rather than per TCP segment ([`FrameWake`]).
pub fn tcp_stream(stream: TcpStream) -> FrameWake<TcpStream> {
    let _ = stream.set_nodelay(true);
    FrameWake::new(stream)
}

/// Plain TCP, each stream made by [`tcp_stream`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl TcpConnector {
    /// Dials `addr`, keeping the stream's type (the [`Connector`] boxes it).
    pub async fn dial(addr: SocketAddr) -> io::Result<FrameWake<TcpStream>> {
        Ok(tcp_stream(TcpStream::connect(addr).await?))
    }
}

impl Connector for TcpConnector {
    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        Box::pin(async move { Ok(Box::new(Self::dial(addr).await?) as BoxedStream) })
    }
}

/// A bound TCP listener as an [`Acceptor`]; accepted streams are made by [`tcp_stream`].
#[derive(Debug)]
pub struct TcpAcceptor {
    listener: TcpListener,
}

impl TcpAcceptor {
    pub fn new(listener: TcpListener) -> Self {
        Self { listener }
    }
}

impl Acceptor for TcpAcceptor {
    type Stream = FrameWake<TcpStream>;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = self.listener.accept().await?;
        Ok((tcp_stream(stream), addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    use std::os::fd::AsFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_tcp_connector_reaches_a_tcp_acceptor() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut acceptor = TcpAcceptor::new(listener);
        let addr = acceptor.local_addr().unwrap();
        let connector: std::sync::Arc<dyn Connector> = std::sync::Arc::new(TcpConnector);
        let (dialled, accepted) = tokio::join!(connector.connect(addr), acceptor.accept());
        let (mut dialled, mut accepted) = (dialled.unwrap(), accepted.unwrap().0);
        dialled.write_all(b"ferry").await.unwrap();
        let mut buf = [0u8; 5];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ferry");
        assert!(
            accepted.get_ref().nodelay().unwrap(),
            "Nagle is off on accepted streams"
        );
    }

    /// A 16 KiB block's header and first bytes, as a frame starts arriving.
    fn block_start() -> Vec<u8> {
        let mut out = vec![0x12, 0xfe, 0x02, 0x03, 0, 0, 0, 1];
        out.extend_from_slice(&16_400u32.to_be_bytes());
        out.extend_from_slice(&[7u8; 100]);
        out
    }

    /// issue 14: both ends of every Ferry TCP connection, dialled or accepted, ask the kernel
    /// to wake their reader when the frame it has started can be completed, not per segment.
    #[cfg(unix)]
    #[tokio::test]
    async fn dialled_and_accepted_streams_are_woken_per_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut acceptor = TcpAcceptor::new(listener);
        let addr = acceptor.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(TcpConnector::dial(addr), acceptor.accept());
        let (mut dialled, accepted) = (dialled.unwrap(), accepted.unwrap().0);
        // A duplicate descriptor names the same socket after the split moves the stream.
        let probe = TcpStream::from_std(std::net::TcpStream::from(
            accepted.get_ref().as_fd().try_clone_to_owned().unwrap(),
        ))
        .unwrap();
        let (mut read, mut write) = accepted.split();
        let mut buf = vec![0u8; 4096];

        dialled.write_all(&block_start()).await.unwrap();
        let mut got = 0;
        while got < 112 {
            got += read.read(&mut buf).await.unwrap();
        }
        assert_eq!(
            crate::frame_wake::rcvlowat(&probe).unwrap(),
            16_300,
            "the accepted (and split) stream waits for the rest of the frame"
        );

        write.write_all(&block_start()).await.unwrap();
        let mut got = 0;
        while got < 112 {
            got += dialled.read(&mut buf).await.unwrap();
        }
        assert_eq!(
            crate::frame_wake::rcvlowat(dialled.get_ref()).unwrap(),
            16_300,
            "the dialled stream waits for the rest of the frame"
        );
    }

    /// Frames of every awkward size, each written in uneven pieces and the next only once the
    /// other end has read it whole, cross a dialled-accepted pair byte-exact both ways: the
    /// per-frame mark never waits for bytes the sender is not sending (a mark past the frame's
    /// end would hang the read, caught by the guard).
    #[tokio::test]
    async fn odd_frame_sizes_cross_both_ways_byte_exact() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut acceptor = TcpAcceptor::new(listener);
        let addr = acceptor.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(TcpConnector.connect(addr), acceptor.accept());
        let (dialled, accepted) = (dialled.unwrap(), accepted.unwrap().0);
        let frames: Vec<Vec<u8>> = [0usize, 1, 4095, 4096, 4097, 16_412, 32_767, 32_769, 100_003]
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let mut frame = vec![0x12, 0xfe, 0x02, 0x03, 0, 0, 0, i as u8];
                frame.extend_from_slice(&u32::try_from(body).unwrap().to_be_bytes());
                frame.extend((0..body).map(|b| (b * 31 + i) as u8));
                frame
            })
            .collect();
        async fn send(
            mut to: impl AsyncWrite + Unpin,
            frames: &[Vec<u8>],
            mut read_whole: tokio::sync::mpsc::Receiver<()>,
        ) {
            for frame in frames {
                // Pieces of 1 to ~9 KiB, each flushed alone, so the frame arrives cut.
                let mut step = 1;
                let mut at = 0;
                while at < frame.len() {
                    let take = step.min(frame.len() - at);
                    to.write_all(&frame[at..at + take]).await.unwrap();
                    to.flush().await.unwrap();
                    tokio::task::yield_now().await;
                    at += take;
                    step = (step * 7 + 3) % 9001 + 1;
                }
                read_whole.recv().await.unwrap();
            }
        }
        async fn receive(
            mut from: impl AsyncRead + Unpin,
            frames: &[Vec<u8>],
            read_whole: tokio::sync::mpsc::Sender<()>,
        ) {
            for (i, frame) in frames.iter().enumerate() {
                let mut got = vec![0u8; frame.len()];
                from.read_exact(&mut got).await.unwrap();
                assert!(got == *frame, "frame {i} differs");
                read_whole.send(()).await.unwrap();
            }
        }
        let (dialled_read, dialled_write) = dialled.split();
        let (accepted_read, accepted_write) = accepted.split();
        let (to_acceptor_read, to_acceptor_wait) = tokio::sync::mpsc::channel(1);
        let (to_dialler_read, to_dialler_wait) = tokio::sync::mpsc::channel(1);
        let both = async {
            tokio::join!(
                send(dialled_write, &frames, to_acceptor_wait),
                receive(accepted_read, &frames, to_acceptor_read),
                send(accepted_write, &frames, to_dialler_wait),
                receive(dialled_read, &frames, to_dialler_read),
            )
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), both)
            .await
            .expect("a read waited for bytes that were never sent");
    }

    #[tokio::test]
    async fn a_refused_dial_is_an_io_error() {
        // Bind then drop: the port is closed, so the dial is refused, not hung.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(TcpConnector.connect(addr).await.is_err());
    }
}
