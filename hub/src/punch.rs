//! Hole punching as the hub coordinates it (HUB.md §3.6, §3.7; PROTOCOL.md §14): learning this
//! node's UDP address from the hub, and running one side of a punch — TCP simultaneous open and
//! QUIC raced, in the role the hub named.
//!
//! Who is at the other end is never decided here: the caller runs the end-to-end identity
//! handshake over what this returns, and the dialer (the Ferry client) requires the node id it
//! resolved, so a lying instruction or a hostile address gains nothing but a failed handshake.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_protocol::transport::BoxedStream;
use ferry_traversal::{tcp, Path, QuicEndpoint, Role};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::client::HubConn;
use crate::wire::{self, Punch, PunchRole, TOKEN_LEN};

/// How long a punch may take from its start time before the caller falls back (to the relay).
/// Long enough for a few TCP attempts (250 ms apart) and QUIC's retransmitted Initials.
pub const PUNCH_BUDGET: Duration = Duration::from_secs(3);

/// How long a reflect exchange waits for the hub's reply; requests repeat every 100 ms.
pub const REFLECT_WAIT: Duration = Duration::from_millis(500);

/// A punched connection.
pub struct Punched {
    pub stream: BoxedStream,
    pub path: Path,
    /// Where the peer's packets come from.
    pub remote: SocketAddr,
}

impl std::fmt::Debug for Punched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Punched")
            .field("path", &self.path)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// The traversal role for the hub's punch role.
pub fn role_of(role: PunchRole) -> Role {
    match role {
        PunchRole::Dial => Role::Dialer,
        PunchRole::Listen => Role::Listener,
    }
}

/// A QUIC endpoint for punching whose UDP address the hub has seen (HUB.md §3.7): bound on
/// the hub's address family, given a token by `conn` and reflected once. `None`, with the reason
/// logged, when any step fails; the punch then runs over TCP only.
pub async fn udp_endpoint(conn: &mut HubConn) -> Option<QuicEndpoint> {
    let hub = conn.hub_addr();
    let endpoint = match QuicEndpoint::bind(unspecified_like(hub)) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            info!("no udp socket ({e}); punching over tcp only");
            return None;
        }
    };
    let token = match conn.udp_token().await {
        Ok(token) => token,
        Err(e) => {
            info!("no udp token from the hub ({e}); punching over tcp only");
            return None;
        }
    };
    match reflect(&endpoint, hub, token, REFLECT_WAIT).await {
        Some(seen) => {
            info!(%seen, "the hub sees this side's udp socket");
            Some(endpoint)
        }
        None => {
            info!("no udp reflect answer from the hub; punching over tcp only");
            None
        }
    }
}

/// The unspecified address of `addr`'s family, port 0: where a socket that talks to `addr`
/// binds.
pub fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

/// Sends reflect requests for `token` to the hub's UDP port from `endpoint`'s socket until the
/// hub answers or `wait` passes (HUB.md §3.7); the hub then knows this socket's public address
/// and hands it to punch peers. Returns the address the hub saw, when it answered.
pub async fn reflect(
    endpoint: &QuicEndpoint,
    hub: SocketAddr,
    token: [u8; TOKEN_LEN],
    wait: Duration,
) -> Option<SocketAddr> {
    let request = wire::reflect::request(&token);
    let until = Instant::now() + wait;
    let sending = async {
        loop {
            if let Err(e) = endpoint.send_raw(hub, &request).await {
                debug!(%hub, "udp reflect request failed: {e}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let answered = async {
        loop {
            let Ok((datagram, from)) = endpoint.recv_raw().await else {
                return None;
            };
            if from != hub {
                continue;
            }
            if let Some(seen) = wire::reflect::parse_reply(&datagram, &token) {
                return Some(seen);
            }
        }
    };
    tokio::time::timeout_at(until, async {
        tokio::select! {
            seen = answered => seen,
            () = sending => None,
        }
    })
    .await
    .ok()
    .flatten()
}

/// The peer's TCP address to punch towards: the last of `addrs`, where the hub saw the peer's
/// control connection come from (§3.6).
pub fn tcp_target(punch: &Punch) -> Option<SocketAddr> {
    punch.addrs.last().copied()
}

/// The dialer's side of a punch (the Ferry client): TCP simultaneous open from `local_tcp` (the
/// port of this side's hub connection) and, when both sides have a UDP address, QUIC from
/// `quic`, both starting `punch.delay_ms` from now; the first to connect wins and the other is
/// dropped (which closes it, so the listener's copy dies at its handshake timeout).
pub async fn dial(
    punch: &Punch,
    local_tcp: SocketAddr,
    quic: Option<&QuicEndpoint>,
    budget: Duration,
) -> io::Result<Punched> {
    punch_as(Role::Dialer, punch, local_tcp, quic, budget).await
}

/// The listener's side of a punch (the node): TCP simultaneous open and QUIC towards the
/// dialer, both starting `punch.delay_ms` from now, each keeping only what the dialer speaks
/// on (the dialer keeps one path and its first bytes go there, PROTOCOL.md §14.3-14.4). The
/// first such path settles the punch: the other side is dropped at once, which closes the TCP
/// punch listener and stops the QUIC accept, so nothing else reaches the node through them
/// for the rest of `budget`.
pub async fn listen(
    punch: &Punch,
    local_tcp: SocketAddr,
    quic: Option<&QuicEndpoint>,
    budget: Duration,
) -> io::Result<Punched> {
    punch_as(Role::Listener, punch, local_tcp, quic, budget).await
}

/// Both transports of a punch in `role`, the first to succeed kept (see [`dial`], [`listen`]).
async fn punch_as(
    role: Role,
    punch: &Punch,
    local_tcp: SocketAddr,
    quic: Option<&QuicEndpoint>,
    budget: Duration,
) -> io::Result<Punched> {
    let start = Instant::now() + Duration::from_millis(u64::from(punch.delay_ms));
    let deadline = start + budget;
    let tcp = async {
        let Some(remote) = tcp_target(punch) else {
            return Err(io::Error::other(
                "the punch names no TCP address of the peer",
            ));
        };
        debug!(%local_tcp, %remote, ?role, "punch: tcp simultaneous open");
        // As the listener, returns only a connection the dialer's first bytes arrived on.
        let stream = tcp::simultaneous_open_as(local_tcp, remote, start, deadline, role).await?;
        Ok(Punched {
            stream: Box::new(stream),
            path: Path::PunchedTcp,
            remote,
        })
    };
    let quic = async {
        let (Some(endpoint), Some(&remote)) = (quic, punch.udp.first()) else {
            return Err(io::Error::other(
                "no quic punch: one side has no UDP address at the hub",
            ));
        };
        debug!(%remote, ?role, "punch: quic");
        let mut stream = endpoint
            .punch_and_connect(remote, role, start, deadline)
            .await?;
        if role == Role::Listener {
            // The handshake completes for a connection the dialer then drops for TCP: only
            // its opening the stream (with its first bytes) says the dialer kept this one.
            tokio::time::timeout_at(deadline, stream.wait_open())
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the quic connection from {remote} opened no stream before the punch's deadline"),
                    )
                })??;
        }
        Ok(Punched {
            stream: Box::new(stream),
            path: Path::PunchedQuic,
            remote,
        })
    };
    first_ok(tcp, quic).await
}

/// Returns the first of two attempts to succeed, or both errors when both fail.
async fn first_ok<A, B>(a: A, b: B) -> io::Result<Punched>
where
    A: std::future::Future<Output = io::Result<Punched>>,
    B: std::future::Future<Output = io::Result<Punched>>,
{
    tokio::pin!(a, b);
    let (mut a_err, mut b_err) = (None, None);
    loop {
        tokio::select! {
            result = &mut a, if a_err.is_none() => match result {
                Ok(p) => return Ok(p),
                Err(e) => a_err = Some(e),
            },
            result = &mut b, if b_err.is_none() => match result {
                Ok(p) => return Ok(p),
                Err(e) => b_err = Some(e),
            },
        }
        if let (Some(a), Some(b)) = (&a_err, &b_err) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the punch failed: tcp: {a}; quic: {b}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::identity::Identity;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// The dialer keeps QUIC (it has no TCP address to punch), so the listener's TCP side
    /// must close the moment the QUIC stream opens, not at the punch's deadline: a second
    /// connection to the node's port in that window would otherwise be taken for the punch.
    #[tokio::test]
    async fn the_listener_closes_its_tcp_side_as_soon_as_the_dialer_keeps_quic() {
        let peer = Identity::from_secret([9; 32]).id();
        let dialer_udp = QuicEndpoint::bind(loopback()).unwrap();
        let listener_udp = QuicEndpoint::bind(loopback()).unwrap();
        // The node's TCP port, held (bound, not listening) the way its hub connection holds it.
        let held = tcp::reusable_socket(loopback()).unwrap();
        let node_tcp = held.local_addr().unwrap();
        // Where the listener's own SYNs go: nothing listens there.
        let nowhere = std::net::TcpListener::bind(loopback())
            .unwrap()
            .local_addr()
            .unwrap();
        let to_listener = Punch {
            peer,
            delay_ms: 0,
            role: PunchRole::Listen,
            addrs: vec![nowhere],
            udp: vec![dialer_udp.local_addr().unwrap()],
        };
        let to_dialer = Punch {
            role: PunchRole::Dial,
            addrs: vec![],
            udp: vec![listener_udp.local_addr().unwrap()],
            ..to_listener.clone()
        };
        let budget = Duration::from_secs(20);
        let dialing = async {
            let mut punched = dial(&to_dialer, nowhere, Some(&dialer_udp), budget)
                .await
                .unwrap();
            // The dialer speaks first on the path it kept.
            punched.stream.write_all(b"x").await.unwrap();
            punched
        };
        let (listened, dialed) = tokio::join!(
            listen(&to_listener, node_tcp, Some(&listener_udp), budget),
            dialing
        );
        let mut listened = listened.unwrap();
        assert_eq!(
            (listened.path, dialed.path),
            (Path::PunchedQuic, Path::PunchedQuic)
        );
        let mut first = [0u8; 1];
        listened.stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"x", "the dialer's first byte is still there");

        // Settled: the node's port no longer accepts anything.
        let second = tokio::net::TcpStream::connect(node_tcp).await;
        assert!(
            second.is_err(),
            "a second connection reached the punch listener after the punch settled"
        );
        drop(held);
    }
}
