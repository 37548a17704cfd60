//! The tracker client: connect, then announce, each with exponential-backoff retransmission.
//! A reply counts only if it comes from the tracker's address and carries our transaction id;
//! anything else (malformed, stale, spoofed) is ignored and the wait continues.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_protocol::{ErrorBody, FrameType};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    frame, parse, Announce, AnnounceEvent, AnnounceReply, ConnectionId, ANNOUNCE, CONNECT,
    CONNECT_MAGIC, MAX_DATAGRAM,
};
use crate::manifest::ContentId;
use crate::swarm::Stats;
use crate::wire::PeerId;

/// Retransmission schedule: the n-th attempt waits `base · 2^n` for a reply.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    /// 2 s, 4 s, ... 64 s: six attempts, about two minutes in all.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            attempts: 6,
        }
    }
}

/// A tracker exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("tracker {0} did not answer")]
    NoAnswer(SocketAddr),
    #[error("tracker refused: {0}")]
    Refused(ErrorBody),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A client for one tracker address, holding its connection id while it is fresh.
#[derive(Debug)]
pub struct TrackerClient {
    socket: UdpSocket,
    tracker: SocketAddr,
    backoff: Backoff,
    connection: Option<(ConnectionId, Instant)>,
}

impl TrackerClient {
    pub async fn new(tracker: SocketAddr, backoff: Backoff) -> std::io::Result<Self> {
        let bind: SocketAddr = if tracker.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Ok(Self {
            socket: UdpSocket::bind(bind).await?,
            tracker,
            backoff,
            connection: None,
        })
    }

    /// Sends `body` and waits for the matching reply, retransmitting with backoff.
    async fn exchange(
        &self,
        service: ferry_protocol::Service,
        body: &[u8],
    ) -> Result<(FrameType, bytes::Bytes), TrackerError> {
        let tx: u32 = rand::random();
        let request = frame(FrameType::REQUEST, service, tx, body);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        for attempt in 0..self.backoff.attempts {
            self.socket.send_to(&request, self.tracker).await?;
            let deadline = Instant::now() + self.backoff.base * (1u32 << attempt.min(16));
            loop {
                let received =
                    tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await;
                let Ok(received) = received else { break };
                let (len, from) = received?;
                if from != self.tracker {
                    tracing::debug!(%from, "ignoring datagram from a stranger");
                    continue;
                }
                let Some((header, body)) = parse(&buf[..len]) else {
                    tracing::debug!("ignoring malformed tracker reply");
                    continue;
                };
                if header.id.0 != tx || header.service != service {
                    continue;
                }
                return Ok((header.kind, body));
            }
            tracing::debug!(tracker = %self.tracker, attempt, "no answer, retransmitting");
        }
        Err(TrackerError::NoAnswer(self.tracker))
    }

    async fn connection_id(&mut self) -> Result<ConnectionId, TrackerError> {
        // Reuse an id for one minute of its two-minute life (as BEP 15 clients do).
        if let Some((id, at)) = self.connection {
            if at.elapsed() < Duration::from_secs(60) {
                return Ok(id);
            }
        }
        loop {
            let (kind, body) = self.exchange(CONNECT, &CONNECT_MAGIC).await?;
            if kind != FrameType::RESPONSE {
                continue;
            }
            let Ok(id) = <ConnectionId>::try_from(body.as_ref()) else {
                continue;
            };
            self.connection = Some((id, Instant::now()));
            return Ok(id);
        }
    }

    /// Announces and returns the tracker's reply.
    #[allow(clippy::too_many_arguments)]
    pub async fn announce(
        &mut self,
        content_id: ContentId,
        peer_id: PeerId,
        port: u16,
        uploaded: u64,
        downloaded: u64,
        left: u64,
        event: AnnounceEvent,
        wanted: u16,
    ) -> Result<AnnounceReply, TrackerError> {
        let connection_id = self.connection_id().await?;
        let announce = Announce {
            connection_id,
            content_id,
            peer_id,
            port,
            uploaded,
            downloaded,
            left,
            event,
            wanted,
        };
        let mut body = Vec::with_capacity(Announce::LEN);
        announce.encode(&mut body);
        let (kind, reply) = self.exchange(ANNOUNCE, &body).await?;
        match kind {
            FrameType::RESPONSE => {
                AnnounceReply::decode(&reply).ok_or(TrackerError::NoAnswer(self.tracker))
            }
            FrameType::ERROR => {
                self.connection = None;
                match ErrorBody::decode(reply) {
                    Ok(body) => Err(TrackerError::Refused(body)),
                    Err(_) => Err(TrackerError::NoAnswer(self.tracker)),
                }
            }
            _ => Err(TrackerError::NoAnswer(self.tracker)),
        }
    }
}

/// What a node tells its tracker about itself.
#[derive(Clone, Debug)]
pub struct AnnounceInfo {
    pub content_id: ContentId,
    pub peer_id: PeerId,
    pub port: u16,
    pub total: u64,
}

/// Announces `started`, then periodically at the tracker's interval, `completed` when the
/// download finishes and `stopped` (one attempt) on cancellation. Peers go to `on_peers`.
pub async fn announce_loop(
    tracker: SocketAddr,
    info: AnnounceInfo,
    stats: watch::Receiver<Stats>,
    mut complete: watch::Receiver<bool>,
    cancel: CancellationToken,
    on_peers: impl Fn(Vec<SocketAddr>),
) {
    let Ok(mut client) = TrackerClient::new(tracker, Backoff::default()).await else {
        tracing::warn!(%tracker, "cannot open a udp socket for the tracker");
        return;
    };
    let mut event = AnnounceEvent::Started;
    let mut told_complete = *complete.borrow();
    loop {
        let s = *stats.borrow();
        let left = if s.pieces == 0 || s.have == s.pieces {
            0
        } else {
            info.total.saturating_sub(s.downloaded)
        }
        .max(u64::from(s.have < s.pieces));
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = client.announce(info.content_id, info.peer_id, info.port, s.uploaded, s.downloaded, left, event, 50) => r,
        };
        let wait = match result {
            Ok(reply) => {
                event = AnnounceEvent::None;
                on_peers(reply.peers);
                reply
                    .interval
                    .clamp(Duration::from_secs(1), Duration::from_secs(3600))
            }
            Err(e) => {
                tracing::debug!(%tracker, error = %e, "announce failed");
                Duration::from_secs(30)
            }
        };
        let until = Instant::now() + wait;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let s = *stats.borrow();
                    // One short attempt: shutting down must not wait for a dead tracker.
                    client.backoff = Backoff { base: Duration::from_millis(500), attempts: 1 };
                    let stop = client.announce(info.content_id, info.peer_id, info.port, s.uploaded, s.downloaded, 0, AnnounceEvent::Stopped, 0);
                    let _ = tokio::time::timeout(Duration::from_secs(1), stop).await;
                    return;
                }
                _ = tokio::time::sleep_until(until) => break,
                changed = complete.changed() => {
                    if changed.is_ok() && *complete.borrow() && !told_complete {
                        told_complete = true;
                        event = AnnounceEvent::Completed;
                        break;
                    }
                    if changed.is_err() {
                        // The node is gone; wait for cancellation or the next interval.
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep_until(until) => break,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A tracker that never answers: the client's retransmissions arrive at base·(2^n − 1).
    #[tokio::test(start_paused = true)]
    async fn retransmits_with_exponential_backoff() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let log = arrivals.clone();
        let start = Instant::now();
        let listener = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            for _ in 0..4 {
                let (_, _) = silent.recv_from(&mut buf).await.unwrap();
                log.lock().unwrap().push(start.elapsed());
            }
        });
        let backoff = Backoff {
            base: Duration::from_secs(15),
            attempts: 4,
        };
        let mut client = TrackerClient::new(addr, backoff).await.unwrap();
        let result = client
            .announce(
                ContentId([0; 32]),
                PeerId([0; 20]),
                1,
                0,
                0,
                0,
                AnnounceEvent::Started,
                1,
            )
            .await;
        assert!(matches!(result, Err(TrackerError::NoAnswer(_))));
        listener.await.unwrap();
        let got: Vec<u64> = arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        // Sent at 0, then after waiting 15, 30 and 60 s.
        assert_eq!(got, vec![0, 15, 45, 105]);
        assert_eq!(start.elapsed().as_secs(), 225);
    }

    /// Replies with the wrong transaction id or from another address are ignored; the right one
    /// is taken even after them.
    #[tokio::test]
    async fn only_matching_replies_count() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let (len, from) = server.recv_from(&mut buf).await.unwrap();
            let (header, _) = parse(&buf[..len]).unwrap();
            let tx = header.id.0;
            // Wrong transaction id, a spoofed source, garbage, then the real reply.
            server
                .send_to(
                    &frame(FrameType::RESPONSE, CONNECT, tx.wrapping_add(1), &[1; 16]),
                    from,
                )
                .await
                .unwrap();
            stranger
                .send_to(&frame(FrameType::RESPONSE, CONNECT, tx, &[2; 16]), from)
                .await
                .unwrap();
            server.send_to(b"\x11\xfe\x01", from).await.unwrap();
            server
                .send_to(&frame(FrameType::RESPONSE, CONNECT, tx, &[3; 16]), from)
                .await
                .unwrap();
        });
        let mut client = TrackerClient::new(
            addr,
            Backoff {
                base: Duration::from_secs(5),
                attempts: 1,
            },
        )
        .await
        .unwrap();
        assert_eq!(client.connection_id().await.unwrap(), [3; 16]);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn announces_against_the_real_tracker() {
        let cancel = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(super::super::server::serve(
            "127.0.0.1:0".parse().unwrap(),
            super::super::TrackerConfig::default(),
            cancel.clone(),
            move |a| {
                let _ = tx.send(a);
            },
        ));
        let addr = rx.await.unwrap();
        let mut a = TrackerClient::new(addr, Backoff::default()).await.unwrap();
        let mut b = TrackerClient::new(addr, Backoff::default()).await.unwrap();
        let r = a
            .announce(
                ContentId([5; 32]),
                PeerId([1; 20]),
                7001,
                0,
                0,
                0,
                AnnounceEvent::Started,
                50,
            )
            .await
            .unwrap();
        assert!(r.peers.is_empty());
        let r = b
            .announce(
                ContentId([5; 32]),
                PeerId([2; 20]),
                7002,
                0,
                0,
                10,
                AnnounceEvent::Started,
                50,
            )
            .await
            .unwrap();
        assert_eq!(r.peers, vec!["127.0.0.1:7001".parse().unwrap()]);
        cancel.cancel();
        server.await.unwrap().unwrap();
    }
}
