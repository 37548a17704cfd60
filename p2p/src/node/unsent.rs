//! Peer sockets keep little data the kernel has not sent yet (`TCP_NOTSENT_LOWAT`), so that a
//! REQUEST, HAVE or CANCEL we write waits behind at most [`UNSENT_LOWAT`] of our own blocks to
//! that peer, not behind the hundreds of KiB a send buffer grows to. The writer task holds the
//! rest of the upload queue and puts every message ahead of it (`peer.rs`, `write_loop`).
//!
//! Measured on netlab (issue 14, 1 seed + 32 at 5 Mbit/s, 64 KiB pieces): without it the seed's
//! sockets held 65-135 KiB unsent each, about a second at a connection's share of the uplink;
//! a leecher's requests to a peer it also uploads to waited as long on their way, its request
//! depth (rate × the time it covers) sank to the floor, and uplinks idled for want of requests.

use std::io;
use std::net::SocketAddr;

use ferry_protocol::frame_wake::FrameWake;
use ferry_protocol::sockopt::{self, IntOption};
use ferry_protocol::transport::{
    Acceptor, BoxedStream, Connecting, Connector, TcpAcceptor, TcpConnector,
};
use tokio::net::{TcpListener, TcpStream};

/// Unsent bytes past which a peer socket stops taking writes: one 16 KiB block. The link stays
/// full as long as the writer refills within a block's sending time (26 ms at 5 Mbit/s); what
/// is in flight is TCP's congestion window's business, not limited by this.
pub(crate) const UNSENT_LOWAT: usize = 16 * 1024;

/// Applies [`UNSENT_LOWAT`] to a peer connection's socket. A kernel without the option (before
/// Linux 3.12, other systems) keeps its default: the peer works, its requests may wait longer.
pub(crate) fn limit_unsent(stream: &TcpStream) {
    if let Err(error) = sockopt::set(stream, IntOption::NotSentLowWater, UNSENT_LOWAT) {
        tracing::debug!(%error, "cannot limit a peer socket's unsent data");
    }
}

/// TCP as [`TcpConnector`] dials it, with the socket's unsent data limited.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerTcpConnector;

impl PeerTcpConnector {
    /// Dials `addr`, keeping the stream's type.
    pub async fn dial(addr: SocketAddr) -> io::Result<FrameWake<TcpStream>> {
        let stream = TcpConnector::dial(addr).await?;
        limit_unsent(stream.get_ref());
        Ok(stream)
    }
}

impl Connector for PeerTcpConnector {
    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        Box::pin(async move { Ok(Box::new(Self::dial(addr).await?) as BoxedStream) })
    }
}

/// A TCP listener whose accepted peer sockets have their unsent data limited.
#[derive(Debug)]
pub(crate) struct PeerAcceptor(TcpAcceptor);

impl PeerAcceptor {
    pub(crate) fn new(listener: TcpListener) -> Self {
        Self(TcpAcceptor::new(listener))
    }
}

impl Acceptor for PeerAcceptor {
    type Stream = FrameWake<TcpStream>;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        limit_unsent(stream.get_ref());
        Ok((stream, addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// issue 14: both ends of a peer connection, dialled by the node's default connector or
    /// accepted by its listener, hold at most a block unsent.
    #[tokio::test]
    async fn dialled_and_accepted_peer_sockets_hold_little_unsent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut acceptor = PeerAcceptor::new(listener);
        let addr = acceptor.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(PeerTcpConnector::dial(addr), acceptor.accept());
        let (dialled, accepted) = (dialled.unwrap(), accepted.unwrap().0);
        for (end, stream) in [("dialled", &dialled), ("accepted", &accepted)] {
            assert_eq!(
                sockopt::get(stream.get_ref(), IntOption::NotSentLowWater).unwrap(),
                UNSENT_LOWAT,
                "{end}"
            );
        }
        let connector = crate::node::NodeConfig::default().connector;
        assert_eq!(format!("{connector:?}"), "PeerTcpConnector");
    }
}
