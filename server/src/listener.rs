//! Binding and the accept loop: admission (see `admission`), back-off on accept errors and a
//! tracked task per connection.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::frame_wake::FrameWake;
use ferry_protocol::transport::{Acceptor, BoxedStream, Split};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::{Admission, Admit};
use crate::connection::{self, ServerContext};
use crate::shutdown::Signals;

/// Pending connections the kernel queues for us.
const BACKLOG: u32 = 1024;
/// First and longest pause after an accept error such as `EMFILE`.
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a refused connection gets to receive its `BUSY` frame.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds one address. IPv6 sockets are IPv6-only, so `[::]:P` and `0.0.0.0:P` can both be
/// listened on.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let socket = TcpSocket::new_v6()?;
        rustix::net::sockopt::set_ipv6_v6only(&socket, true)?;
        socket
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Errors that concern one half-open connection, not the listener: retry at once.
fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || error.raw_os_error() == Some(libc::EPROTO)
}

/// A stream admission can watch. A TCP socket lends a duplicate descriptor, so admission can
/// peek whether the peer has sent anything, and says when bytes are waiting, so the connection
/// counts as having spoken *before* the handshake drains them. Other transports lend neither
/// and are judged by the handshake's first read alone.
pub trait AdmissionPeek {
    /// A duplicate descriptor to peek at; none by default.
    fn peek_handle(&self) -> Option<std::os::fd::OwnedFd> {
        None
    }

    /// Waits until bytes (or the end) are waiting to be read; by default `Ok(false)` at once,
    /// for transports that cannot tell without reading.
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<bool>> + Send {
        std::future::ready(Ok(false))
    }
}

impl AdmissionPeek for TcpStream {
    fn peek_handle(&self) -> Option<std::os::fd::OwnedFd> {
        self.as_fd().try_clone_to_owned().ok()
    }

    async fn readable(&self) -> std::io::Result<bool> {
        TcpStream::readable(self).await.map(|()| true)
    }
}

/// TCP as `TcpAcceptor` hands it out: the socket under the per-frame wake-up.
impl AdmissionPeek for FrameWake<TcpStream> {
    fn peek_handle(&self) -> Option<std::os::fd::OwnedFd> {
        self.get_ref().peek_handle()
    }

    async fn readable(&self) -> std::io::Result<bool> {
        AdmissionPeek::readable(self.get_ref()).await
    }
}

impl AdmissionPeek for BoxedStream {}

impl AdmissionPeek for tokio::io::DuplexStream {}

/// Accepts until `stop`, spawning one tracked task per connection.
pub(crate) async fn accept_loop<A>(
    mut listener: A,
    server: Arc<ServerContext>,
    connections: Arc<Admission>,
    tracker: TaskTracker,
    signals: Signals,
) where
    A: Acceptor,
    A::Stream: AdmissionPeek,
{
    let mut backoff = BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = signals.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = BACKOFF_START;
                accepted
            }
            Err(error) if is_transient(&error) => {
                tracing::debug!(%error, "accept failed for one connection");
                continue;
            }
            Err(error) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the condition persists until connections
                // close, so pause instead of spinning on it.
                tracing::warn!(%error, backoff = ?backoff, "accept failed; backing off");
                tokio::select! {
                    biased;
                    _ = signals.stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let span = tracing::info_span!("conn", %peer, client = tracing::field::Empty);
        // The duplicate lets admission peek whether the peer has sent anything.
        let peek = stream.peek_handle();
        match connections.admit(peer.ip(), peek, std::time::Instant::now()) {
            Admit::Pending(ticket) => {
                let server = server.clone();
                let signals = signals.clone();
                tracker.spawn(connection::serve(stream, ticket, server, signals).instrument(span));
            }
            Admit::Busy => {
                tracing::warn!(%peer, "every connection slot is authenticated; refusing");
                tracker.spawn(refuse_busy(stream).instrument(span));
            }
        }
    }
    tracing::debug!(addr = ?listener.local_addr().ok(), "listener closed");
}

/// Tells a client over the connection limit why it is being closed, in a plaintext
/// connection-level error frame like a failed handshake's.
async fn refuse_busy<S: Split>(mut stream: S) {
    let out = connection::busy_frame("too many connections; try again later");
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await;
}
