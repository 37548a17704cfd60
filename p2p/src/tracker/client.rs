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
    CONNECTION_ID_LIFETIME, CONNECT_MAGIC, MAX_DATAGRAM,
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

/// What the exchanges with one tracker have met so far, for telling a user why no peer turns
/// up (see [`crate::status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerReport {
    /// Requests sent since the last answer.
    pub unanswered: u32,
    /// Answers received in all.
    pub answers: u32,
    /// Peers listed by the latest announce answer.
    pub listed: usize,
    /// The latest failure other than silence (refused, i/o, an error reply); an answer clears
    /// it.
    pub error: Option<String>,
}

/// A [`TrackerReport`] shared between a tracker's announce loop and whoever reports on it.
#[derive(Debug, Default)]
pub struct TrackerHealth(std::sync::Mutex<TrackerReport>);

impl TrackerHealth {
    pub fn report(&self) -> TrackerReport {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerReport> {
        // A panic elsewhere cannot leave a report half-written: every update is one assignment.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sent(&self) {
        self.lock().unanswered += 1;
    }

    fn answered(&self) {
        let mut r = self.lock();
        r.unanswered = 0;
        r.answers += 1;
        r.error = None;
    }

    fn failed(&self, error: String) {
        self.lock().error = Some(error);
    }

    fn listed(&self, peers: usize) {
        self.lock().listed = peers;
    }
}

/// `io::Error` as one lowercase phrase without the "(os error N)" tail.
pub(crate) fn io_phrase(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        return "connection refused".into();
    }
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// A client for one tracker address, holding its connection id while it is fresh.
#[derive(Debug)]
pub struct TrackerClient {
    socket: UdpSocket,
    tracker: SocketAddr,
    backoff: Backoff,
    connection: Option<(ConnectionId, Instant)>,
    health: std::sync::Arc<TrackerHealth>,
    /// When the tracker last confirmed an announce: it has held us since.
    announced_at: Option<Instant>,
    /// A connection id showed the tracker started after `announced_at`: it forgot us.
    forgotten: bool,
}

impl TrackerClient {
    pub async fn new(tracker: SocketAddr, backoff: Backoff) -> std::io::Result<Self> {
        Self::with_health(tracker, backoff, Default::default()).await
    }

    /// Like [`TrackerClient::new`], recording what happens in `health`.
    pub async fn with_health(
        tracker: SocketAddr,
        backoff: Backoff,
        health: std::sync::Arc<TrackerHealth>,
    ) -> std::io::Result<Self> {
        let bind: SocketAddr = if tracker.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).await?;
        // Connected, so an ICMP "port unreachable" surfaces as an error instead of silence.
        socket.connect(tracker).await?;
        Ok(Self {
            socket,
            tracker,
            backoff,
            connection: None,
            health,
            announced_at: None,
            forgotten: false,
        })
    }

    /// Sends `body` and waits for the matching reply, retransmitting on `schedule`. Returns the
    /// reply and when the request was first sent.
    async fn exchange(
        &self,
        service: ferry_protocol::Service,
        body: &[u8],
        schedule: Backoff,
    ) -> Result<(FrameType, bytes::Bytes, Instant), TrackerError> {
        let tx: u32 = rand::random();
        let request = frame(FrameType::REQUEST, service, tx, body);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let first_sent = Instant::now();
        for attempt in 0..schedule.attempts {
            self.health.sent();
            if let Err(e) = self.socket.send(&request).await {
                self.health.failed(io_phrase(&e));
                return Err(e.into());
            }
            let deadline = Instant::now() + schedule.base * (1u32 << attempt.min(16));
            loop {
                let received =
                    tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await;
                let Ok(received) = received else { break };
                let (len, from) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        self.health.failed(io_phrase(&e));
                        return Err(e.into());
                    }
                };
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
                self.health.answered();
                return Ok((header.kind, body, first_sent));
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
        self.connect(self.backoff).await
    }

    /// Fetches a fresh connection id and notes whether the tracker restarted since it last
    /// confirmed our announce (spec/P2P.md §5.2: `expiry_ms` counts from the tracker's start).
    async fn connect(&mut self, schedule: Backoff) -> Result<ConnectionId, TrackerError> {
        loop {
            let (kind, body, sent) = self.exchange(CONNECT, &CONNECT_MAGIC, schedule).await?;
            if kind != FrameType::RESPONSE {
                continue;
            }
            let Ok(id) = <ConnectionId>::try_from(body.as_ref()) else {
                continue;
            };
            if let Some(announced) = self.announced_at {
                if started_after(&id, sent.into_std(), announced.into_std()) {
                    self.forgotten = true;
                }
            }
            self.connection = Some((id, Instant::now()));
            return Ok(id);
        }
    }

    /// One CONNECT with a single attempt of `wait`: a cheap check (28 bytes each way) that
    /// refreshes the connection id and returns whether the tracker has forgotten our announce
    /// (it restarted). Errors mean the tracker did not answer.
    pub async fn probe(&mut self, wait: Duration) -> Result<bool, TrackerError> {
        self.connect(Backoff {
            base: wait,
            attempts: 1,
        })
        .await?;
        Ok(self.forgotten)
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
        let result = self.exchange(ANNOUNCE, &body, self.backoff).await;
        let (kind, reply) = match result {
            Ok((kind, reply, _)) => (kind, reply),
            Err(e) => {
                // A tracker that restarted drops announces with our old id without a word; the
                // next attempt starts with a fresh one.
                self.connection = None;
                return Err(e);
            }
        };
        match kind {
            FrameType::RESPONSE => {
                let reply =
                    AnnounceReply::decode(&reply).ok_or(TrackerError::NoAnswer(self.tracker))?;
                self.health.listed(reply.peers.len());
                if port != 0 && event != AnnounceEvent::Stopped {
                    self.announced_at = Some(Instant::now());
                    self.forgotten = false;
                }
                Ok(reply)
            }
            FrameType::ERROR => {
                self.connection = None;
                match ErrorBody::decode(reply) {
                    Ok(body) => {
                        self.health.failed(format!("refused the announce: {body}"));
                        Err(TrackerError::Refused(body))
                    }
                    Err(_) => Err(TrackerError::NoAnswer(self.tracker)),
                }
            }
            _ => Err(TrackerError::NoAnswer(self.tracker)),
        }
    }
}

/// Whether the tracker that issued `id` (to a CONNECT sent at `sent`) started after `announced`,
/// when it last confirmed our announce, i.e. it restarted and forgot us. The id was issued after
/// `sent`, so the tracker started no earlier than `sent − (expiry_ms − 120 000)` (spec/P2P.md
/// §5.2: `expiry_ms` counts from the tracker's start); a tracker on another clock reads as older
/// and is never taken for a restarted one.
pub fn started_after(
    id: &ConnectionId,
    sent: std::time::Instant,
    announced: std::time::Instant,
) -> bool {
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(&id[..8]);
    let uptime = Duration::from_millis(
        u64::from_be_bytes(expiry).saturating_sub(CONNECTION_ID_LIFETIME.as_millis() as u64),
    );
    sent.checked_sub(uptime)
        .is_some_and(|started| started > announced)
}

/// What a node tells its tracker about itself.
#[derive(Clone, Debug)]
pub struct AnnounceInfo {
    pub content_id: ContentId,
    pub peer_id: PeerId,
    pub port: u16,
    pub total: u64,
}

/// How often a client checks between announces that its tracker still holds it: a thirtieth of
/// the interval (2 s for the default 60 s), 1 s to 60 s (spec/P2P.md §5.5).
pub fn probe_period(interval: Duration) -> Duration {
    (interval / 30).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// How long a download with no peer waits after its `n`-th empty answer in a row (n ≥ 1): 1 s
/// for the first five (seeds that re-announce to a restarted tracker show up within a second),
/// then 2 s, 4 s, … (spec/P2P.md §5.5). The caller caps it at the interval.
pub fn lonely_wait(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(5).min(12))
}

/// Announces `started`, then periodically at the tracker's interval, `completed` when the
/// download finishes and `stopped` (one attempt) on cancellation. Peers go to `on_peers`.
///
/// Between announces it probes the tracker (one CONNECT every [`probe_period`]); a tracker that
/// restarted, or answers again after a silence, is announced to at once, so a tracker that
/// forgot its peers learns them again within seconds rather than at the next interval. A
/// download that has no peer and heard of none asks again soon ([`lonely_wait`]), so it meets
/// peers that re-announce to a fresh tracker.
pub async fn announce_loop(
    tracker: SocketAddr,
    info: AnnounceInfo,
    stats: watch::Receiver<Stats>,
    mut complete: watch::Receiver<bool>,
    cancel: CancellationToken,
    health: std::sync::Arc<TrackerHealth>,
    on_peers: impl Fn(Vec<SocketAddr>),
) {
    let mut client = match TrackerClient::with_health(tracker, Backoff::default(), health).await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(%tracker, error = %io_phrase(&e), "cannot open a udp socket for the tracker");
            return;
        }
    };
    let mut event = AnnounceEvent::Started;
    let mut told_complete = *complete.borrow();
    let mut interval = Duration::from_secs(60);
    // Empty answers in a row while downloading with no peer.
    let mut lonely = 0u32;
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
        let mut down = false;
        let wait = match result {
            Ok(reply) => {
                event = AnnounceEvent::None;
                interval = reply
                    .interval
                    .clamp(Duration::from_secs(1), Duration::from_secs(3600));
                let empty = reply.peers.is_empty();
                on_peers(reply.peers);
                let s = *stats.borrow();
                if empty && s.have < s.pieces && s.peers == 0 {
                    lonely += 1;
                    lonely_wait(lonely).min(interval)
                } else {
                    lonely = 0;
                    interval
                }
            }
            Err(e) => {
                tracing::debug!(%tracker, error = %e, "announce failed");
                down = true;
                Duration::from_secs(30)
            }
        };
        let until = Instant::now() + wait;
        let period = probe_period(interval);
        let mut probe = tokio::time::interval_at(Instant::now() + period, period);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                _ = probe.tick() => {
                    let probed = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => continue,
                        p = client.probe(period.min(Duration::from_secs(1))) => p,
                    };
                    match probed {
                        Ok(forgotten) if forgotten || down => {
                            tracing::debug!(%tracker, forgotten, "tracker is back or restarted; announcing again");
                            if event == AnnounceEvent::None {
                                event = AnnounceEvent::Started;
                            }
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => down = true,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection id says how long its tracker has run; one that started after our announce
    /// was confirmed has forgotten us, one that ran through it has not.
    #[test]
    fn a_connection_id_tells_a_restarted_tracker() {
        let t0 = std::time::Instant::now();
        let tracker = super::super::Tracker::with_secret(Default::default(), [1; 32], t0);
        let from: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let announced = t0 + Duration::from_secs(10);
        // The same tracker, 20 s later: started at t0, before the announce.
        let later = t0 + Duration::from_secs(30);
        let id = tracker.connection_id(from, later);
        assert!(!started_after(&id, later, announced));
        // A tracker started at t0 + 20 s (after the announce), asked 5 ms later.
        let restarted = t0 + Duration::from_secs(20);
        let fresh = super::super::Tracker::with_secret(Default::default(), [2; 32], restarted);
        let sent = restarted + Duration::from_millis(5);
        let id = fresh.connection_id(from, sent);
        assert!(started_after(&id, sent, announced));
        // A tracker whose clock is not its uptime (a huge expiry) never looks restarted.
        let mut odd = id;
        odd[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(!started_after(&odd, sent, announced));
    }

    #[test]
    fn lonely_downloads_ask_every_second_then_back_off() {
        let waits: Vec<u64> = (1..=9).map(|n| lonely_wait(n).as_secs()).collect();
        assert_eq!(waits, [1, 1, 1, 1, 1, 2, 4, 8, 16]);
        assert_eq!(
            probe_period(Duration::from_secs(60)),
            Duration::from_secs(2)
        );
        assert_eq!(probe_period(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(
            probe_period(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
    }
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
