//! One QUIC bidirectional stream as one Ferry connection (§14.2): `AsyncRead + AsyncWrite`, so
//! the Ferry handshake and frame driver run over it exactly as over TCP.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a dropped stream waits for the peer to acknowledge what was written before the
/// connection is closed (§14.2: closing).
pub const LINGER: Duration = Duration::from_secs(3);

/// The QUIC application error code of an orderly close (§14.2).
pub const CLOSE_DONE: VarInt = VarInt::from_u32(0);

type Opening =
    Pin<Box<dyn Future<Output = Result<(SendStream, RecvStream), ConnectionError>> + Send>>;

/// A Ferry connection over QUIC: the connection's one bidirectional stream. Reading returns
/// end of file when the peer finished its side; `shutdown` finishes ours (a FIN, like TCP's).
/// Dropping it finishes the stream, waits up to [`LINGER`] for the peer to acknowledge the
/// data (in a task, so drop does not block), then closes the connection with code 0.
///
/// On the accepting side the stream exists for QUIC only once the dialer has sent its first
/// bytes (RFC 9000 §2.1), so the first read or write here waits for them: the dialer speaks
/// first, as a Ferry client does (§14.2).
pub struct QuicStream {
    connection: Connection,
    opening: Option<Opening>,
    send: Option<SendStream>,
    recv: Option<RecvStream>,
}

impl fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicStream")
            .field("remote", &self.connection.remote_address())
            .field("opening", &self.opening.is_some())
            .field("send", &self.send)
            .field("recv", &self.recv)
            .finish()
    }
}

impl QuicStream {
    /// The dialer's stream, opened by it.
    pub(crate) fn opened(connection: Connection, send: SendStream, recv: RecvStream) -> Self {
        Self {
            connection,
            opening: None,
            send: Some(send),
            recv: Some(recv),
        }
    }

    /// The listener's stream: accepted when the dialer's first bytes arrive.
    pub(crate) fn accepting(connection: Connection) -> Self {
        let peer = connection.clone();
        Self {
            connection,
            opening: Some(Box::pin(async move { peer.accept_bi().await })),
            send: None,
            recv: None,
        }
    }

    /// Completes the accept of the listener's stream; ready at once on the dialer's.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(opening) = self.opening.as_mut() {
            let result = ready!(opening.as_mut().poll(cx));
            self.opening = None;
            match result {
                Ok((send, recv)) => {
                    self.send = Some(send);
                    self.recv = Some(recv);
                }
                Err(error) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("quic peer closed before opening its stream: {error}"),
                    )))
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Waits until the stream is open: at once on the dialer's side; on the listener's, until
    /// the dialer opened it, which it does with its first bytes (§14.2). A listener settles a
    /// punch with it: a QUIC connection the dialer dropped for another path never opens its
    /// stream, and fails here when the dialer closes it.
    pub async fn wait_open(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_open(cx)).await
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

    fn send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut SendStream>> {
        ready!(self.poll_open(cx))?;
        Poll::Ready(
            self.send.as_mut().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "quic stream is closed")
            }),
        )
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_open(cx))?;
        match this.recv.as_mut() {
            Some(recv) => AsyncRead::poll_read(Pin::new(recv), cx, buf),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "quic stream is closed",
            ))),
        }
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match ready!(self.get_mut().send(cx)) {
            Ok(send) => AsyncWrite::poll_write(Pin::new(send), cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.get_mut().send(cx)) {
            Ok(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.get_mut().send(cx)) {
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
            // Never opened (or already given up): nothing to deliver.
            self.connection.close(CLOSE_DONE, b"done");
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
