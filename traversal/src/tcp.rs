//! TCP through NATs (spec §14.3): sockets that share their local port with the connection the
//! node keeps to the hub, so a punch leaves through the NAT mapping the hub observed, and
//! simultaneous open.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::quic::Role;

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
            let result = attempt(local, remote, next).await;
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

/// One connect from `local` to `remote`, given up at `until`.
async fn attempt(local: SocketAddr, remote: SocketAddr, until: Instant) -> io::Result<TcpStream> {
    let socket = reusable_socket(local)?;
    match timeout_at(until, socket.connect(remote)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {} ms", ATTEMPT.as_millis()),
        )),
    }
}

/// [`simultaneous_open`] with the hub's tie-break (spec §14.3, HUB.md §3.6): when both sides
/// can reach each other's port, each side's attempt can meet the other's listener and form
/// **two** TCP connections, and each side would keep a different one. The hub therefore names
/// one dialer:
///
/// - [`Role::Dialer`] (the Ferry client) keeps only a connection its own attempts made (a
///   simultaneous open, or the peer's listener answered) and closes what its listener accepts.
/// - [`Role::Listener`] (the Ferry server) also sends SYNs (its NAT must open), but keeps every
///   connection it gets, accepted or dialled, and returns the first one on which bytes arrive:
///   the dialer speaks first (the Ferry handshake's first frame) on the one connection it kept.
///
/// The peek does not consume: the returned stream still starts with the dialer's first byte.
/// Unlike [`simultaneous_open`], the future is `Send`, so a node can spawn it.
pub async fn simultaneous_open_as(
    local: SocketAddr,
    remote: SocketAddr,
    start_at: Instant,
    deadline: Instant,
    role: Role,
) -> io::Result<TcpStream> {
    let listener = reusable_socket(local)?.listen(16)?;
    let local = listener.local_addr()?;
    let attempts = AtomicU32::new(0);
    let last_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let (found, mut candidates) = mpsc::unbounded_channel::<TcpStream>();
    let accept = async {
        loop {
            let (stream, from) = listener.accept().await?;
            if from.ip() != remote.ip() {
                tracing::debug!(%local, %from, "tcp punch: dropped a connection from a stranger");
                continue;
            }
            match role {
                // Not ours: the peer's attempt met our listener; the peer keeps the one our
                // attempt made.
                Role::Dialer => {
                    tracing::debug!(%local, %from, "tcp punch: dialer closes an accepted connection")
                }
                Role::Listener => {
                    tracing::debug!(%local, %from, "tcp punch: accepted a candidate");
                    let _ = found.send(stream);
                }
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    };
    let dial = async {
        sleep_until(start_at).await;
        loop {
            attempts.fetch_add(1, Ordering::Relaxed);
            let next = Instant::now() + ATTEMPT;
            let result = attempt(local, remote, next).await;
            match result {
                Ok(stream) => {
                    tracing::debug!(%local, %remote, attempt = attempts.load(Ordering::Relaxed), ?role, "tcp punch: connected");
                    match role {
                        Role::Dialer => return Ok::<_, io::Error>(stream),
                        Role::Listener => {
                            let _ = found.send(stream);
                            // One connection of our own is enough to have opened our NAT;
                            // the rest comes from the dialer.
                            std::future::pending::<()>().await;
                        }
                    }
                }
                Err(error) => {
                    tracing::trace!(%local, %remote, %error, "tcp punch: attempt failed");
                    *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                }
            }
            sleep_until(next).await;
        }
    };
    // The listener's choice: the first candidate the dialer's bytes arrive on.
    let choose = async {
        let mut waiting = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                Some(stream) = candidates.recv() => {
                    waiting.spawn(async move {
                        let mut byte = [0u8; 1];
                        let got = stream.peek(&mut byte).await;
                        (stream, got)
                    });
                }
                Some(joined) = waiting.join_next(), if !waiting.is_empty() => match joined {
                    Ok((stream, Ok(n))) if n > 0 => return Ok::<_, io::Error>(stream),
                    // Closed (the dialer dropped it) or failed: not the one.
                    _ => {}
                },
            }
        }
    };
    let outcome = timeout_at(deadline, async {
        match role {
            Role::Dialer => tokio::select! {
                stream = dial => stream,
                result = accept => result.and_then(|()| unreachable_stream()),
            },
            // The listener's dialling only opens its NAT and feeds candidates.
            Role::Listener => tokio::select! {
                stream = choose => stream,
                result = dial => result.and_then(|_| unreachable_stream()),
                result = accept => result.and_then(|()| unreachable_stream()),
            },
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
            let last = match last_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(error) => error.to_string(),
                None => "none".to_owned(),
            };
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "tcp punch ({role:?}) from {local} to {remote} did not connect within \
                     {waited} ms ({} attempts, last error: {last})",
                    attempts.load(Ordering::Relaxed)
                ),
            ))
        }
    }
}

fn unreachable_stream() -> io::Result<TcpStream> {
    Err(io::Error::other("the punch listener stopped"))
}
