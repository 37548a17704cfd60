//! The UDP socket under the quinn endpoint, shared with the node's own datagrams (§14.2).
//!
//! QUIC packets always have the fixed bit (0x40 in the first byte) set, since both ends turn
//! QUIC bit greasing off; any datagram whose first byte has it clear is the application's
//! (hub keep-alives, punch datagrams) and never reaches quinn. Punch datagrams are recorded
//! here (their source is the peer's address as its NAT maps it); the rest are queued for
//! [`QuicEndpoint::recv_raw`](super::QuicEndpoint::recv_raw). No GSO/GRO: one datagram per
//! call, which keeps the demultiplexing exact.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};

use super::PUNCH;

/// Datagrams not for quinn that may wait for `recv_raw`; beyond this they are dropped, as a
/// full socket buffer would drop them.
pub(crate) const RAW_QUEUE: usize = 256;

/// A datagram of the caller's and its source.
pub(crate) type Datagram = (Vec<u8>, SocketAddr);

/// True when `datagram` may be a QUIC packet (RFC 9000 §17: the fixed bit).
pub(crate) fn is_quic(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0x40 != 0)
}

/// Punch sources seen, per peer IP address: the last source port each address punched from.
#[derive(Debug, Default)]
pub(crate) struct Punches {
    seen: Mutex<HashMap<IpAddr, SocketAddr>>,
    pub(crate) arrived: Notify,
}

impl Punches {
    pub(crate) fn source_of(&self, ip: IpAddr) -> Option<SocketAddr> {
        self.seen.lock().ok()?.get(&ip).copied()
    }

    fn record(&self, from: SocketAddr) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(from.ip(), from);
        }
        self.arrived.notify_waiters();
    }
}

pub(crate) struct DemuxSocket {
    pub(crate) io: Arc<UdpSocket>,
    pub(crate) raw: mpsc::Sender<Datagram>,
    pub(crate) punches: Arc<Punches>,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller {
            io: self.io.clone(),
            writable: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // max_transmit_segments() is 1, so `contents` is one datagram.
        self.io
            .try_send_to(transmit.contents, transmit.destination)
            .map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            let mut read = ReadBuf::new(buf);
            let from = ready!(self.io.poll_recv_from(cx, &mut read))?;
            let datagram = read.filled();
            if is_quic(datagram) {
                let len = datagram.len();
                *slot = RecvMeta {
                    addr: from,
                    len,
                    stride: len,
                    ..RecvMeta::default()
                };
                return Poll::Ready(Ok(1));
            }
            if datagram == PUNCH {
                self.punches.record(from);
            } else {
                // A full queue drops the datagram, as a full socket buffer would.
                let _ = self.raw.try_send((datagram.to_vec(), from));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        // No IP_PMTUDISC_DO here, so stay at QUIC's minimum 1200-byte packets.
        true
    }
}

type Writable = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Waits for write readiness; each poller has its own future, so several tasks may wait.
struct Poller {
    io: Arc<UdpSocket>,
    writable: Option<Writable>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let io = &this.io;
        let writable = this.writable.get_or_insert_with(|| {
            let io = io.clone();
            Box::pin(async move { io.writable().await })
        });
        let result = ready!(writable.as_mut().poll(cx));
        this.writable = None;
        Poll::Ready(result)
    }
}
