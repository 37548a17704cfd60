//! TCP through NATs (spec §14.3): sockets that share their local port with the connection the
//! node keeps to the hub, so a punch leaves through the NAT mapping the hub observed, and
//! simultaneous open.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep_until, timeout_at, Instant};

/// How long one connect attempt may stay unanswered before it is abandoned and a fresh SYN is
/// sent (§14.3). Shorter than Linux's first SYN retransmission (1 s), so a SYN dropped by the
/// peer's NAT before the peer's own SYN opened it is repeated quickly.
pub const ATTEMPT: Duration = Duration::from_millis(250);

/// A TCP socket bound to `local` with `SO_REUSEADDR` and `SO_REUSEPORT`, so that the hub
/// connection, the punch attempts and the punch listener can all use the same local port.
/// Every socket sharing that port must be made by this function (Linux requires the options
/// on all of them).
pub fn reusable_socket(local: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(local)?;
    Ok(socket)
}

/// Connects to `remote` from `local` through a [`reusable_socket`]. Use it for the control
/// connection to the hub, so that a later [`simultaneous_open`] from the same local port
/// leaves through the NAT mapping the hub observed. `local` may have port 0; read the port
/// chosen with `local_addr()` on the stream.
pub async fn connect_reusable(local: SocketAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    reusable_socket(local)?.connect(remote).await
}

/// TCP simultaneous open (spec §14.3): from `local` (the port the hub observed, shared through
/// [`reusable_socket`]), listens and, from `start_at`, repeatedly connects to `remote`, one
/// attempt every [`ATTEMPT`], until a connection is up or `deadline` passes. Returns the first
/// stream that connects, whether by the attempts (including a simultaneous open, where both
/// SYNs cross) or by the listener (a peer behind a symmetric NAT arrives from another port of
/// `remote`'s address; connections from any other address are dropped).
///
/// Both sides call it with each other's observed address and the same `start_at`. The stream
/// carries Ferry frames as any TCP connection does; who is the Ferry client is decided by the
/// caller (the hub), not by TCP. Fails with `TimedOut` at the deadline, naming the attempts
/// made and the last error.
pub async fn simultaneous_open(
    local: SocketAddr,
    remote: SocketAddr,
    start_at: Instant,
    deadline: Instant,
) -> io::Result<TcpStream> {
    let listener = reusable_socket(local)?.listen(16)?;
    // With port 0 the listener chose the port; the attempts must use the same one.
    let local = listener.local_addr()?;
    let attempts = Cell::new(0u32);
    let last_error: RefCell<Option<io::Error>> = RefCell::new(None);
    let accept = async {
        loop {
            let (stream, from) = listener.accept().await?;
            if from.ip() == remote.ip() {
                tracing::debug!(%local, %from, "tcp punch: accepted");
                return Ok::<_, io::Error>(stream);
            }
            tracing::debug!(%local, %from, "tcp punch: dropped a connection from a stranger");
        }
    };
    let dial = async {
        sleep_until(start_at).await;
        loop {
            attempts.set(attempts.get() + 1);
            let next = Instant::now() + ATTEMPT;
            let result = match reusable_socket(local) {
                Ok(socket) => match timeout_at(next, socket.connect(remote)).await {
                    Ok(result) => result,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {} ms", ATTEMPT.as_millis()),
                    )),
                },
                Err(error) => Err(error),
            };
            match result {
                Ok(stream) => {
                    tracing::debug!(%local, %remote, attempt = attempts.get(), "tcp punch: connected");
                    return Ok::<_, io::Error>(stream);
                }
                Err(error) => {
                    tracing::trace!(%local, %remote, %error, "tcp punch: attempt failed");
                    *last_error.borrow_mut() = Some(error);
                }
            }
            sleep_until(next).await;
        }
    };
    let outcome = timeout_at(deadline, async {
        tokio::select! {
            stream = accept => stream,
            stream = dial => stream,
        }
    })
    .await;
    match outcome {
        Ok(Ok(stream)) => {
            stream.set_nodelay(true)?;
            Ok(stream)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => {
            let waited = deadline.saturating_duration_since(start_at).as_millis();
            let last = match last_error.take() {
                Some(error) => error.to_string(),
                None => "none".to_owned(),
            };
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "tcp simultaneous open from {local} to {remote} did not connect within \
                     {waited} ms ({} attempts, last error: {last})",
                    attempts.get()
                ),
            ))
        }
    }
}
