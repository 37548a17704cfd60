//! One QUIC bidirectional stream as one Ferry connection (§14.2): `AsyncRead + AsyncWrite`, so
//! the Ferry handshake and frame driver run over it exactly as over TCP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a dropped stream waits for the peer to acknowledge what was written before the
/// connection is closed (§14.2: closing).
pub const LINGER: Duration = Duration::from_secs(3);

/// The QUIC application error code of an orderly close (§14.2).
pub const CLOSE_DONE: VarInt = VarInt::from_u32(0);

/// A Ferry connection over QUIC: the connection's one bidirectional stream. Reading returns
/// end of file when the peer finished its side; `shutdown` finishes ours (a FIN, like TCP's).
/// Dropping it finishes the stream, waits up to [`LINGER`] for the peer to acknowledge the
/// data (in a task, so drop does not block), then closes the connection with code 0.
#[derive(Debug)]
pub struct QuicStream {
    connection: Connection,
    send: Option<SendStream>,
    recv: RecvStream,
}

impl QuicStream {
    pub(crate) fn new(connection: Connection, send: SendStream, recv: RecvStream) -> Self {
        Self {
            connection,
            send: Some(send),
            recv,
        }
    }

    /// The peer's address as this side sees it (after its NAT).
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// QUIC's current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }

    /// The underlying quinn connection (statistics, close reason).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    fn send(&mut self) -> io::Result<&mut SendStream> {
        self.send
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "quic stream is closed"))
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.get_mut().recv), cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().send() {
            Ok(send) => AsyncWrite::poll_write(Pin::new(send), cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().send() {
            Ok(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().send() {
            // A second shutdown finds the stream already finished: that is success.
            Ok(send) => match AsyncWrite::poll_shutdown(Pin::new(send), cx) {
                Poll::Ready(Err(_)) => Poll::Ready(Ok(())),
                other => other,
            },
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        let Some(mut send) = self.send.take() else {
            return;
        };
        // Already finished or reset: harmless.
        let _ = send.finish();
        let connection = self.connection.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = tokio::time::timeout(LINGER, send.stopped()).await;
                    connection.close(CLOSE_DONE, b"done");
                });
            }
            Err(_) => connection.close(CLOSE_DONE, b"done"),
        }
    }
}
