//! The gossip core (spec/P2P.md §8.4): push-pull anti-entropy of one channel's newest signed
//! record, plus a membership table that spreads like PEX. Sans-IO: datagrams and `now` in,
//! datagrams, events and a deadline out.
//!
//! Methods, by group: getters (`latest`, `members`, `swarm_peers`, `manifest_holders`);
//! inputs (`handle_datagram`, `handle_timeout`); mutators (`offer`, `set_local`,
//! `set_manifest`, `request_manifest`, `add_seed`); outputs, polled in this order after every
//! input (`poll_transmit`, `poll_event`, `poll_timeout`).
//!
//! One rule moves records: whoever learns from a STATUS (request or response) that the other
//! side's newest version is below its own sends it the record. Every interval a node sends
//! STATUS requests to `fanout` members at random, and at start (and on accepting a new record)
//! to every member it knows, so a node that returns catches up in one round trip.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::ErrorBody;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::channel::ChannelId;
use super::record::{RecordError, SignedRelease};
use super::wire::{self, MemberAddr, Message, Role, Status};
use crate::manifest::ContentId;

/// How the core runs.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Time between rounds. Default 2 s.
    pub interval: Duration,
    /// Members asked per round. Default 3.
    pub fanout: usize,
    /// Most members remembered (listed ones beyond this are ignored). Default 1024.
    pub max_members: usize,
    /// A STATUS response is taken only this long after its request. Default 5 s.
    pub response_timeout: Duration,
    /// Datagrams per second taken from one source IP address; more are dropped unread.
    /// Default 100.
    pub source_rate: u32,
    /// Datagrams one source IP address may send at once before `source_rate` applies.
    /// Default 200.
    pub source_burst: u32,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            fanout: 3,
            max_members: 1024,
            response_timeout: Duration::from_secs(5),
            source_rate: 100,
            source_burst: 200,
        }
    }
}

/// What a member last said about itself.
#[derive(Clone, Debug)]
pub struct Member {
    pub addr: SocketAddr,
    /// Its last STATUS; `None` while it is only listed by others.
    pub status: Option<Status>,
    pub last_heard: Option<Instant>,
}

/// Why a record was refused (§8.4); each is logged by the shell.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Invalid(RecordError),
    #[error("release for channel {0} is not the channel followed")]
    WrongChannel(ChannelId),
    #[error("release {offered} is older than release {held} held: a replay or a stale copy")]
    Older { offered: u64, held: u64 },
    #[error("release {0} differs from the release {0} held: the channel key signed two")]
    Conflict(u64),
}

/// What the shell must act on.
#[derive(Clone, Debug)]
pub enum GossipEvent {
    /// A newer valid record: fetch and install it.
    Accepted(SignedRelease),
    Rejected {
        from: SocketAddr,
        why: Rejection,
    },
    ManifestChunk {
        from: SocketAddr,
        content_id: ContentId,
        offset: u32,
        total: u32,
        data: Bytes,
    },
    ManifestRefused {
        from: SocketAddr,
        content_id: ContentId,
    },
}

/// The sans-IO gossip node.
#[derive(Debug)]
pub struct Gossip {
    config: GossipConfig,
    channel: ChannelId,
    role: Role,
    name: String,
    latest: Option<SignedRelease>,
    running: u64,
    failed: u64,
    swarm_port: u16,
    manifest: Option<(ContentId, Bytes)>,
    members: HashMap<SocketAddr, Member>,
    /// Addresses that turned out to be this node.
    selves: HashSet<SocketAddr>,
    /// STATUS requests in flight: transaction -> (to, sent at).
    outstanding: HashMap<u32, (SocketAddr, Instant)>,
    /// Contact every member at the next timeout (start, a new record).
    everyone_due: bool,
    next_round: Instant,
    rng: StdRng,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<GossipEvent>,
    limiter: SourceLimiter,
}

/// Source addresses with a bucket of their own; beyond it new ones share one bucket.
const MAX_SOURCES: usize = 4096;

/// A token bucket per source IP address (spec §8.4 "Rate limit"). The key is the address
/// without the port: a sender gains nothing by changing ports. A flood from one address is
/// dropped before it is decoded, so it costs no signature checks and no answers, and the
/// datagrams of every other address are still read.
#[derive(Debug)]
struct SourceLimiter {
    rate: f64,
    burst: f64,
    /// Tokens left and when they were counted.
    buckets: HashMap<IpAddr, (f64, Instant)>,
    dropped: u64,
}

impl SourceLimiter {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            dropped: 0,
        }
    }

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        let refill = |(tokens, at): (f64, Instant)| {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            (tokens + secs * rate).min(burst)
        };
        let mut key = ip;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_SOURCES {
            // A full bucket holds nothing worth keeping.
            self.buckets.retain(|_, b| refill(*b) < burst);
            if self.buckets.len() >= MAX_SOURCES {
                key = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            }
        }
        let bucket = self.buckets.entry(key).or_insert((burst, now));
        let tokens = refill(*bucket);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            self.dropped += 1;
            return false;
        }
        *bucket = (tokens - 1.0, now);
        true
    }
}

impl Gossip {
    pub fn new(
        channel: ChannelId,
        role: Role,
        name: &str,
        config: GossipConfig,
        seed: u64,
        now: Instant,
    ) -> Self {
        Self {
            channel,
            role,
            name: wire::clean_name(name),
            latest: None,
            running: 0,
            failed: 0,
            swarm_port: 0,
            manifest: None,
            members: HashMap::new(),
            selves: HashSet::new(),
            outstanding: HashMap::new(),
            everyone_due: true,
            next_round: now,
            rng: StdRng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            limiter: SourceLimiter::new(config.source_rate, config.source_burst),
            config,
        }
    }

    // ---- getters

    pub fn channel(&self) -> ChannelId {
        self.channel
    }

    pub fn latest(&self) -> Option<&SignedRelease> {
        self.latest.as_ref()
    }

    /// Datagrams dropped so far by the per-source rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.limiter.dropped
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Swarm addresses of members whose newest record is `version` and that serve it.
    pub fn swarm_peers(&self, version: u64) -> Vec<SocketAddr> {
        self.members
            .values()
            .filter_map(|m| {
                let s = m.status.as_ref()?;
                (s.latest == version && s.swarm_port != 0)
                    .then(|| SocketAddr::new(m.addr.ip(), s.swarm_port))
            })
            .collect()
    }

    /// Gossip addresses of members that hold `version`'s manifest (they serve its swarm).
    pub fn manifest_holders(&self, version: u64) -> Vec<SocketAddr> {
        let mut holders: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.latest == version && s.swarm_port != 0)
            })
            .map(|m| m.addr)
            .collect();
        holders.shuffle(&mut self.rng.clone());
        holders
    }

    // ---- mutators

    /// A member to contact (a `--peer` seed or a remembered one).
    pub fn add_seed(&mut self, addr: SocketAddr) {
        if !self.selves.contains(&addr) && self.members.len() < self.config.max_members {
            self.members.entry(addr).or_insert(Member {
                addr,
                status: None,
                last_heard: None,
            });
        }
    }

    /// Offers a record from this process (the publisher's own, or one saved before a
    /// restart): accepted by the same rules as one from the network, without an event.
    pub fn offer(&mut self, record: SignedRelease, now: Instant) -> Result<bool, Rejection> {
        let accepted = self.judge(record)?;
        if accepted {
            self.everyone_due = true;
            self.next_round = now;
        }
        Ok(accepted)
    }

    /// What this node says about itself besides its newest record.
    pub fn set_local(&mut self, running: u64, failed: u64, swarm_port: u16) {
        self.running = running;
        self.failed = failed;
        self.swarm_port = swarm_port;
    }

    /// The manifest of the newest record, served to MANIFEST requests.
    pub fn set_manifest(&mut self, content_id: ContentId, encoded: Bytes) {
        self.manifest = Some((content_id, encoded));
    }

    pub fn request_manifest(&mut self, to: SocketAddr, content_id: ContentId, offset: u32) {
        let tx = self.rng.gen();
        self.send(to, Message::manifest_request(content_id, offset), tx);
    }

    // ---- inputs

    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        if !self.limiter.allow(from.ip(), now) {
            return;
        }
        let (tx, message) = match Message::from_datagram(datagram) {
            None => return,
            Some(Err(e)) => {
                self.events.push_back(GossipEvent::Rejected {
                    from,
                    why: Rejection::Invalid(e),
                });
                return;
            }
            Some(Ok(decoded)) => decoded,
        };
        match message {
            Message::StatusRequest { status, .. } => {
                if self.outstanding.contains_key(&tx) {
                    // Our own request came back: this address is us.
                    self.selves.insert(from);
                    self.members.remove(&from);
                    return;
                }
                if status.channel != self.channel {
                    tracing::debug!(%from, "status for another channel ignored");
                    return;
                }
                let reply = Message::StatusResponse(self.status());
                self.send(from, reply, tx);
                self.heard(from, status, now);
            }
            Message::StatusResponse(status) => {
                match self.outstanding.get(&tx) {
                    Some((to, _)) if *to == from => {}
                    _ => return,
                }
                self.outstanding.remove(&tx);
                if status.channel != self.channel {
                    return;
                }
                self.heard(from, status, now);
            }
            Message::Record(record) => match self.judge(record.clone()) {
                Ok(true) => {
                    self.everyone_due = true;
                    self.next_round = now;
                    self.events.push_back(GossipEvent::Accepted(record));
                }
                Ok(false) => {}
                Err(why) => self.events.push_back(GossipEvent::Rejected { from, why }),
            },
            Message::ManifestRequest {
                content_id, offset, ..
            } => {
                let reply = match &self.manifest {
                    Some((id, bytes)) if *id == content_id && (offset as usize) < bytes.len() => {
                        let start = offset as usize;
                        let end = (start + wire::CHUNK).min(bytes.len());
                        Message::ManifestChunk {
                            content_id,
                            offset,
                            total: bytes.len() as u32,
                            data: bytes.slice(start..end),
                        }
                    }
                    _ => Message::ManifestError(ErrorBody::new(
                        wire::UNKNOWN_RELEASE,
                        "no manifest for this content id here",
                    )),
                };
                self.send(from, reply, tx);
            }
            Message::ManifestChunk {
                content_id,
                offset,
                total,
                data,
            } => self.events.push_back(GossipEvent::ManifestChunk {
                from,
                content_id,
                offset,
                total,
                data,
            }),
            // Announcements come through `handle_announce`, from the LAN group only.
            Message::Announce { .. } => {}
            Message::ManifestError(e) => {
                tracing::debug!(%from, error = %e.message, "manifest refused");
                if let Some((id, _)) = &self.latest_manifest_wanted() {
                    self.events.push_back(GossipEvent::ManifestRefused {
                        from,
                        content_id: *id,
                    });
                }
            }
        }
    }

    /// A datagram received on the LAN discovery socket (§8.9): an ANNOUNCE of this channel
    /// makes its source a member, asked for its STATUS at once unless a request to it is
    /// already out or it was heard from within the last interval. Anything else is dropped.
    pub fn handle_announce(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        if !self.limiter.allow(from.ip(), now) {
            return;
        }
        let Some(Ok((_, Message::Announce { channel, .. }))) = Message::from_datagram(datagram)
        else {
            return;
        };
        if channel != self.channel || self.selves.contains(&from) || from.port() == 0 {
            return;
        }
        let interval = self.config.interval;
        let recent = self.members.get(&from).is_some_and(|m| {
            m.last_heard
                .is_some_and(|t| now.saturating_duration_since(t) < interval)
        });
        if recent || self.outstanding.values().any(|(to, _)| *to == from) {
            return;
        }
        if !self.members.contains_key(&from) {
            tracing::debug!(%from, "member found on the LAN");
        }
        self.add_seed(from);
        if self.members.contains_key(&from) {
            let tx = self.rng.gen();
            self.outstanding.insert(tx, (from, now));
            let request = Message::status_request(self.status());
            self.send(from, request, tx);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.response_timeout;
        self.outstanding
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < timeout);
        if now < self.next_round {
            return;
        }
        let mut targets: Vec<SocketAddr> = self.members.keys().copied().collect();
        targets.sort();
        if self.everyone_due {
            self.everyone_due = false;
        } else {
            targets.shuffle(&mut self.rng);
            targets.truncate(self.config.fanout);
        }
        for to in targets {
            let tx = self.rng.gen();
            self.outstanding.insert(tx, (to, now));
            let request = Message::status_request(self.status());
            self.send(to, request, tx);
        }
        self.next_round = now + self.config.interval;
    }

    // ---- outputs

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<GossipEvent> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` next (at once after a new record or at start).
    pub fn poll_timeout(&self) -> Instant {
        self.next_round
    }

    // ---- internals

    fn latest_manifest_wanted(&self) -> Option<(ContentId, u64)> {
        self.latest
            .as_ref()
            .map(|r| (r.release().content_id, r.version()))
    }

    /// §8.4's acceptance rules. `Ok(true)`: newer and now held; `Ok(false)`: the same record
    /// again (silently ignored).
    fn judge(&mut self, record: SignedRelease) -> Result<bool, Rejection> {
        let release = record.release();
        if release.channel != self.channel {
            return Err(Rejection::WrongChannel(release.channel));
        }
        if let Some(held) = &self.latest {
            if record.version() < held.version() {
                return Err(Rejection::Older {
                    offered: record.version(),
                    held: held.version(),
                });
            }
            if record.version() == held.version() {
                return if record == *held {
                    Ok(false)
                } else {
                    Err(Rejection::Conflict(held.version()))
                };
            }
        }
        self.latest = Some(record);
        self.manifest = None;
        Ok(true)
    }

    fn status(&mut self) -> Status {
        let mut listed: Vec<&Member> = self.members.values().collect();
        listed.sort_by_key(|m| m.addr);
        let mut members: Vec<MemberAddr> = listed
            .iter()
            .filter(|m| m.status.as_ref().is_none_or(|s| s.role != Role::Observer))
            .map(|m| MemberAddr {
                addr: m.addr,
                age_s: m.last_heard.map_or(wire::NEVER, |t| {
                    u32::try_from(t.elapsed().as_secs()).unwrap_or(wire::NEVER - 1)
                }),
            })
            .collect();
        members.shuffle(&mut self.rng);
        members.truncate(wire::MAX_MEMBERS);
        Status {
            channel: self.channel,
            role: self.role,
            latest: self.latest.as_ref().map_or(0, SignedRelease::version),
            running: self.running,
            failed: self.failed,
            swarm_port: self.swarm_port,
            name: self.name.clone(),
            members,
        }
    }

    fn heard(&mut self, from: SocketAddr, status: Status, now: Instant) {
        let ours = self.latest.as_ref().map_or(0, SignedRelease::version);
        // The one rule that moves records (§8.4). Observers only look.
        if status.role != Role::Observer && status.latest < ours {
            if let Some(record) = self.latest.clone() {
                let tx = self.rng.gen();
                self.send(from, Message::Record(record), tx);
            }
        }
        let listed: Vec<SocketAddr> = status.members.iter().map(|m| m.addr).collect();
        let room = self.members.len() < self.config.max_members || self.members.contains_key(&from);
        if status.role != Role::Observer && room {
            self.members.insert(
                from,
                Member {
                    addr: from,
                    status: Some(status),
                    last_heard: Some(now),
                },
            );
        }
        for addr in listed {
            self.add_seed(addr);
        }
    }

    fn send(&mut self, to: SocketAddr, message: Message, tx: u32) {
        self.transmits.push_back((to, message.to_datagram(tx)));
    }
}

/// Fuzzing entry for the fleet (fuzz target `fleet`): the record and datagram decoders round
/// trip, and the whole core takes any datagram without a panic, answering within the
/// amplification bound of spec/P2P.md §8.3.
#[cfg(any(fuzzing, test))]
pub fn fuzz_fleet(data: &[u8]) {
    super::record::fuzz_record(data);
    super::wire::fuzz_gossip(data);
    let now = Instant::now();
    // Signing costs more than the rest of a run: one record serves every run.
    static RECORD: std::sync::OnceLock<Option<SignedRelease>> = std::sync::OnceLock::new();
    let key = super::channel::ChannelKey::from_seed([7; 32]);
    let mut core = Gossip::new(
        key.id(),
        Role::Follower,
        "fuzz",
        GossipConfig::default(),
        1,
        now,
    );
    let record = RECORD.get_or_init(|| {
        super::record::Release {
            channel: key.id(),
            version: 2,
            content_id: ContentId([1; 32]),
            time_ms: 0,
            notes: String::new(),
            source: String::new(),
        }
        .sign(&key)
        .ok()
    });
    if let Some(record) = record {
        let _ = core.offer(record.clone(), now);
    }
    core.set_manifest(ContentId([1; 32]), Bytes::from(vec![0u8; 3000]));
    let from = SocketAddr::from(([192, 0, 2, 1], 7070));
    core.handle_datagram(from, data, now);
    let mut sent = 0;
    while let Some((_, datagram)) = core.poll_transmit() {
        assert!(datagram.len() <= wire::MAX_DATAGRAM);
        sent += datagram.len();
    }
    assert!(
        sent <= 4 * data.len(),
        "{sent} bytes sent for {} received",
        data.len()
    );
    while core.poll_event().is_some() {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fleet::channel::ChannelKey;
    use crate::fleet::record::tests::{release, test_key};

    fn node(n: u8, now: Instant) -> (SocketAddr, Gossip) {
        let addr: SocketAddr = format!("127.0.0.{n}:7070").parse().unwrap();
        let gossip = Gossip::new(
            test_key().id(),
            Role::Follower,
            &format!("n{n}"),
            GossipConfig::default(),
            u64::from(n),
            now,
        );
        (addr, gossip)
    }

    /// Delivers every datagram until all are quiet (a lossless network in one step).
    fn drive(nodes: &mut [(SocketAddr, Gossip)], now: Instant) -> Vec<(usize, GossipEvent)> {
        let mut events = Vec::new();
        for _ in 0..100 {
            let mut moved = false;
            for i in 0..nodes.len() {
                nodes[i].1.handle_timeout(now);
                while let Some((to, datagram)) = nodes[i].1.poll_transmit() {
                    moved = true;
                    let from = nodes[i].0;
                    if let Some(j) = nodes.iter().position(|(a, _)| *a == to) {
                        nodes[j].1.handle_datagram(from, &datagram, now);
                    }
                }
            }
            for (i, (_, g)) in nodes.iter_mut().enumerate() {
                while let Some(e) = g.poll_event() {
                    events.push((i, e));
                }
            }
            if !moved {
                break;
            }
        }
        events
    }

    #[test]
    fn a_record_reaches_every_member_through_one_seed() {
        let now = Instant::now();
        let mut nodes: Vec<_> = (1..=5).map(|n| node(n, now)).collect();
        // A chain of seeds: each knows only the one before it.
        for i in 1..nodes.len() {
            let prev = nodes[i - 1].0;
            nodes[i].1.add_seed(prev);
        }
        nodes[0].1.offer(release(&test_key(), 1), now).unwrap();
        let events = drive(&mut nodes, now);
        let accepted: HashSet<usize> = events
            .iter()
            .filter(|(_, e)| matches!(e, GossipEvent::Accepted(_)))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(accepted, (1..5).collect());
        for (_, g) in &nodes {
            assert_eq!(g.latest().unwrap().version(), 1);
        }
    }

    #[test]
    fn a_flood_from_one_address_is_cut_to_its_bucket_and_another_is_still_answered() {
        let now = Instant::now();
        let (_, mut target) = node(1, now);
        target.offer(release(&test_key(), 3), now).unwrap();
        let (_, mut other) = node(2, now);
        let request = Message::status_request(other.status()).to_datagram(77);
        // 10 000 STATUS requests, each asking for a record too (latest 0), from one address
        // on ever-changing ports; then an honest member from another address.
        let flooder = IpAddr::from([192, 0, 2, 66]);
        for i in 0..10_000u16 {
            target.handle_datagram(SocketAddr::new(flooder, 1024 + i % 5000), &request, now);
        }
        let honest: SocketAddr = "192.0.2.7:7070".parse().unwrap();
        target.handle_datagram(honest, &request, now);
        let (mut to_flooder, mut to_honest) = (0, 0);
        while let Some((to, _)) = target.poll_transmit() {
            if to.ip() == flooder {
                to_flooder += 1;
            } else if to == honest {
                to_honest += 1;
            }
        }
        // A STATUS response and a RECORD per request taken: the burst, and no more.
        let burst = GossipConfig::default().source_burst as usize;
        assert_eq!(to_flooder, 2 * burst);
        assert_eq!(
            to_honest, 2,
            "the honest member got its STATUS and the record"
        );
        assert_eq!(target.rate_limited(), 10_000 - burst as u64);
        // A second later the flooder has `source_rate` more, no more.
        let later = now + Duration::from_secs(1);
        for i in 0..1000u16 {
            target.handle_datagram(SocketAddr::new(flooder, 1024 + i), &request, later);
        }
        let taken = std::iter::from_fn(|| target.poll_transmit()).count();
        assert_eq!(taken, 2 * GossipConfig::default().source_rate as usize);
    }

    #[test]
    fn a_forged_or_wrong_channel_record_is_rejected_and_reported() {
        let now = Instant::now();
        let (_, mut g) = node(1, now);
        let from: SocketAddr = "127.0.0.9:1".parse().unwrap();
        let other = ChannelKey::from_seed([0x42; 32]);
        let wrong = Message::Record(release(&other, 7)).to_datagram(1);
        g.handle_datagram(from, &wrong, now);
        let mut forged = Message::Record(release(&test_key(), 7)).to_datagram(1);
        let last = forged.len() - 1;
        forged[last] ^= 0x80;
        g.handle_datagram(from, &forged, now);
        let events: Vec<_> = std::iter::from_fn(|| g.poll_event()).collect();
        assert!(matches!(
            events[0],
            GossipEvent::Rejected {
                why: Rejection::WrongChannel(_),
                ..
            }
        ));
        assert!(matches!(
            events[1],
            GossipEvent::Rejected {
                why: Rejection::Invalid(RecordError::BadSignature),
                ..
            }
        ));
        assert!(g.latest().is_none());
    }

    #[test]
    fn older_and_replayed_records_are_rejected_the_same_one_ignored() {
        let now = Instant::now();
        let (_, mut g) = node(1, now);
        let from: SocketAddr = "127.0.0.9:1".parse().unwrap();
        let key = test_key();
        let deliver = |g: &mut Gossip, r: SignedRelease| {
            g.handle_datagram(from, &Message::Record(r).to_datagram(1), now);
            std::iter::from_fn(|| g.poll_event()).collect::<Vec<_>>()
        };
        assert!(matches!(
            deliver(&mut g, release(&key, 5))[..],
            [GossipEvent::Accepted(_)]
        ));
        assert!(deliver(&mut g, release(&key, 5)).is_empty(), "duplicate");
        assert!(matches!(
            deliver(&mut g, release(&key, 4))[..],
            [GossipEvent::Rejected {
                why: Rejection::Older {
                    offered: 4,
                    held: 5
                },
                ..
            }]
        ));
        let mut other = release(&key, 5).release().clone();
        other.notes = "same version, other content".into();
        assert!(matches!(
            deliver(&mut g, other.sign(&key).unwrap())[..],
            [GossipEvent::Rejected {
                why: Rejection::Conflict(5),
                ..
            }]
        ));
        assert!(matches!(
            deliver(&mut g, release(&key, 6))[..],
            [GossipEvent::Accepted(_)]
        ));
        assert_eq!(g.latest().unwrap().version(), 6);
    }

    #[test]
    fn a_member_that_returns_catches_up_in_one_exchange() {
        let now = Instant::now();
        let mut nodes: Vec<_> = (1..=3).map(|n| node(n, now)).collect();
        let a = nodes[0].0;
        nodes[1].1.add_seed(a);
        nodes[2].1.add_seed(a);
        drive(&mut nodes, now);
        // Node 3 goes away; a release is published at node 1 and reaches node 2.
        let mut away = nodes.pop().unwrap();
        nodes[0].1.offer(release(&test_key(), 2), now).unwrap();
        drive(&mut nodes, now);
        assert_eq!(nodes[1].1.latest().unwrap().version(), 2);
        // It returns as a fresh process knowing only its seed: the first round fetches it.
        let (addr, mut fresh) = node(3, now);
        fresh.add_seed(a);
        away.1 = fresh;
        nodes.push((addr, away.1));
        let later = now + Duration::from_millis(1);
        drive(&mut nodes, later);
        assert_eq!(nodes[2].1.latest().unwrap().version(), 2);
    }

    #[test]
    fn a_node_that_dials_itself_forgets_that_address() {
        let now = Instant::now();
        let (addr, mut g) = node(1, now);
        g.add_seed(addr);
        g.handle_timeout(now);
        let (to, datagram) = g.poll_transmit().unwrap();
        assert_eq!(to, addr);
        g.handle_datagram(addr, &datagram, now);
        assert!(g.poll_transmit().is_none(), "no answer to itself");
        assert_eq!(g.members().count(), 0);
    }

    #[test]
    fn manifests_are_served_in_chunks_and_unknown_ones_refused() {
        let now = Instant::now();
        let (_, mut g) = node(1, now);
        let from: SocketAddr = "127.0.0.9:1".parse().unwrap();
        let id = ContentId([3; 32]);
        g.set_manifest(id, Bytes::from(vec![9u8; 2500]));
        g.handle_datagram(
            from,
            &Message::manifest_request(id, 2048).to_datagram(4),
            now,
        );
        let (_, reply) = g.poll_transmit().unwrap();
        match Message::from_datagram(&reply).unwrap().unwrap() {
            (
                4,
                Message::ManifestChunk {
                    offset,
                    total,
                    data,
                    ..
                },
            ) => {
                assert_eq!((offset, total, data.len()), (2048, 2500, 452));
            }
            other => panic!("{other:?}"),
        }
        g.handle_datagram(
            from,
            &Message::manifest_request(ContentId([4; 32]), 0).to_datagram(5),
            now,
        );
        let (_, reply) = g.poll_transmit().unwrap();
        assert!(matches!(
            Message::from_datagram(&reply).unwrap().unwrap(),
            (5, Message::ManifestError(_))
        ));
    }

    #[test]
    fn the_fuzz_entry_takes_every_example_datagram() {
        let mut status = crate::fleet::wire::tests::status(vec![]);
        status.channel = ChannelKey::from_seed([7; 32]).id();
        status.latest = 1;
        for datagram in [
            Message::status_request(status.clone()).to_datagram(1),
            Message::StatusResponse(status).to_datagram(1),
            Message::manifest_request(ContentId([1; 32]), 1024).to_datagram(2),
            Message::Record(release(&test_key(), 3)).to_datagram(3),
        ] {
            fuzz_fleet(&datagram);
        }
    }

    #[test]
    fn responses_are_taken_only_from_the_address_asked() {
        let now = Instant::now();
        let (_, mut a) = node(1, now);
        let (b_addr, mut b) = node(2, now);
        a.add_seed(b_addr);
        b.offer(release(&test_key(), 1), now).unwrap();
        a.handle_timeout(now);
        let (_, request) = a.poll_transmit().unwrap();
        b.handle_datagram("127.0.0.1:7070".parse().unwrap(), &request, now);
        let (_, response) = b.poll_transmit().unwrap();
        // The same response from a third address is ignored.
        a.handle_datagram("127.0.0.3:7070".parse().unwrap(), &response, now);
        assert!(a.members().all(|m| m.status.is_none()));
        a.handle_datagram(b_addr, &response, now);
        assert_eq!(a.members().filter(|m| m.status.is_some()).count(), 1);
    }
}
