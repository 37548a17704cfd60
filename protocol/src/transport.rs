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

/// Plain TCP, with Nagle off: requests, pings and piece requests are small and must not wait
/// for an ACK.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as BoxedStream)
        })
    }
}

/// A bound TCP listener as an [`Acceptor`]; accepted streams have Nagle off.
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
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = self.listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
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
            accepted.nodelay().unwrap(),
            "Nagle is off on accepted streams"
        );
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
