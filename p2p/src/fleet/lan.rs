//! LAN discovery (spec/P2P.md §8.9): members announce "channel C gossips here" to a multicast
//! group every interval, from their gossip socket, and listen on the group's port; an
//! announcement of their channel makes its source a member (`Gossip::handle_announce`).
//! Only the small ANNOUNCE datagram is multicast, with a hop limit of 1: it stays on the link.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

/// The IPv4 group: organisation-local scope (RFC 2365), never routed off the site.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 70, 77);
/// The IPv6 group: link-local scope.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0xf1ee, 0x7077);
/// The UDP port every member listens on (shared by the members of one host).
pub const PORT: u16 = 7077;
/// Time between a member's announcements (the first is sent at start).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Where and how often a member announces itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanConfig {
    /// The group and port: [`GROUP_V4`] or [`GROUP_V6`], port [`PORT`] by default.
    pub group: SocketAddr,
    pub interval: Duration,
}

impl LanConfig {
    /// The default group of the gossip socket's address family (a socket speaks one).
    pub fn for_gossip(gossip: SocketAddr) -> Self {
        let ip = match gossip {
            SocketAddr::V4(_) => IpAddr::V4(GROUP_V4),
            SocketAddr::V6(_) => IpAddr::V6(GROUP_V6),
        };
        Self {
            group: SocketAddr::new(ip, PORT),
            interval: INTERVAL,
        }
    }
}

/// Opens the listening socket: the group's port, shared with the other members on this host
/// (SO_REUSEADDR), the group joined on the interface that holds `local` (the gossip socket's
/// address; unspecified: the interface the system routes the group to).
pub fn open(group: SocketAddr, local: IpAddr) -> std::io::Result<UdpSocket> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let family = match group {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket(family, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    let socket = match (group.ip(), local) {
        (IpAddr::V4(g), local) => {
            // Bound to the group itself: unicast to the port and other groups stay out.
            rustix::net::bind(&fd, &group)?;
            let interface = match local {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            let socket = std::net::UdpSocket::from(fd);
            socket.join_multicast_v4(&g, &interface)?;
            socket
        }
        (IpAddr::V6(g), _) => {
            sockopt::set_ipv6_v6only(&fd, true)?;
            rustix::net::bind(
                &fd,
                &SocketAddr::from((Ipv6Addr::UNSPECIFIED, group.port())),
            )?;
            let socket = std::net::UdpSocket::from(fd);
            socket.join_multicast_v6(&g, 0)?;
            socket
        }
    };
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Sets the gossip socket up to send announcements: hop limit 1 (the link only) and loopback
/// on (the other members of this host hear them too).
pub fn prepare_sender(gossip: &UdpSocket, group: SocketAddr) -> std::io::Result<()> {
    match group {
        SocketAddr::V4(_) => {
            gossip.set_multicast_ttl_v4(1)?;
            gossip.set_multicast_loop_v4(true)
        }
        SocketAddr::V6(_) => gossip.set_multicast_loop_v6(true),
    }
}
