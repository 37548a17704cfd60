//! `ferry-load hostile`: while an honest client measures latency, attacker connections send
//! malformed frames, wrong keys, oversized lengths, slow headers and path-traversal requests.
//! Reports how each attack was rejected and how much the honest client's latency moved. The
//! honest client verifies every fetched byte, so "up and correct" is checked, not assumed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_protocol::message::{FetchRequest, ListRequest, StatRequest, TO_END};
use ferry_protocol::{
    ClientHandshakeConfig, FrameDecoder, FrameType, Header, Key, Message, RequestId, Service,
    MAX_BODY_LIMIT,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{dial, Dial};
use super::server::{self, ServerOptions, Stop};
use super::stats::Summary;
use super::workload::{Mix, Targets};

/// The attacks, cycled through by every attacker connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Attack {
    /// A header with the wrong magic byte.
    BadMagic,
    /// Random bytes instead of a handshake.
    Garbage,
    /// A full handshake with a random key.
    WrongKey,
    /// A pre-handshake header declaring a 4 GiB body.
    OversizedBeforeAuth,
    /// An authenticated frame header declaring more than the maximum body.
    OversizedAfterAuth,
    /// Half a header, then silence.
    SlowHeader,
    /// Authenticated requests for paths outside the root.
    PathTraversal,
}

impl Attack {
    const ALL: [Attack; 7] = [
        Attack::BadMagic,
        Attack::Garbage,
        Attack::WrongKey,
        Attack::OversizedBeforeAuth,
        Attack::OversizedAfterAuth,
        Attack::SlowHeader,
        Attack::PathTraversal,
    ];
}

/// Paths that must all be refused.
const TRAVERSALS: [&str; 8] = [
    "../../../../etc/passwd",
    "/etc/passwd",
    "a/../../etc/passwd",
    "..",
    "C:\\Windows\\win.ini",
    "\\\\server\\share",
    "a\0b",
    "./../x",
];

/// Settings of a hostile run.
#[derive(Debug, Clone)]
pub struct HostileOptions {
    pub dial: Dial,
    pub attackers: usize,
    pub duration: Duration,
    pub targets: Targets,
    pub live: bool,
}

/// How one attack fared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackTally {
    pub attempts: u64,
    /// Outcome (an error code, "closed", "closed after 10s", "SERVED" …) to count.
    pub outcomes: BTreeMap<String, u64>,
}

/// The report of a hostile run.
#[derive(Debug, Clone, Serialize)]
pub struct HostileReport {
    pub baseline: Summary,
    pub under_attack: Summary,
    pub attacks: BTreeMap<String, AttackTally>,
    /// Latency ratio under attack / baseline, at p50 and p99.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    /// Whether the server still answered correctly after the attack.
    pub server_alive_after: bool,
    /// Anything a correct server must never do (e.g. serve a traversal path).
    pub violations: Vec<String>,
}

fn honest(options: &HostileOptions, duration: Duration) -> ServerOptions {
    ServerOptions {
        dial: options.dial.clone(),
        connections: 1,
        in_flight: 1,
        mix: "stat=1,echo=1,fetch-small=2,list=1"
            .parse::<Mix>()
            .unwrap_or_default(),
        stop: Stop::After(duration),
        rate: None,
        targets: options.targets.clone(),
        threads: 1,
        live: options.live,
    }
}

/// Runs a baseline third without attackers, then the honest client under attack.
pub async fn run(options: HostileOptions) -> HostileReport {
    let baseline_time = options.duration / 3;
    if options.live {
        eprintln!("baseline: honest client alone for {baseline_time:?}");
    }
    let baseline = server::run(honest(&options, baseline_time)).await;
    let attack_time = options.duration - baseline_time;
    if options.live {
        eprintln!(
            "under attack: {} attacker connections for {attack_time:?}",
            options.attackers
        );
    }
    let deadline = Instant::now() + attack_time;
    let options = Arc::new(options);
    let mut attackers = Vec::new();
    for index in 0..options.attackers {
        let options = options.clone();
        attackers.push(tokio::spawn(async move {
            attacker(index, &options, deadline).await
        }));
    }
    let under_attack = server::run(honest(&options, attack_time)).await;
    let mut attacks: BTreeMap<String, AttackTally> = BTreeMap::new();
    let mut violations = Vec::new();
    for task in attackers {
        if let Ok(tallies) = task.await {
            for (attack, tally) in tallies {
                let entry = attacks.entry(format!("{attack:?}")).or_default();
                entry.attempts += tally.attempts;
                for (k, v) in tally.outcomes {
                    if k.starts_with("SERVED") {
                        violations.push(format!("{attack:?}: {k}"));
                    }
                    *entry.outcomes.entry(k).or_default() += v;
                }
            }
        }
    }
    let after = server::run(ServerOptions {
        stop: Stop::Requests(20),
        ..honest(&options, Duration::from_secs(10))
    })
    .await;
    let server_alive_after = after.requests == 20 && after.errors.is_empty();
    for (what, n) in &under_attack.errors {
        violations.push(format!("honest client saw {n} × {what}"));
    }
    let ratio = |a: u64, b: u64| a as f64 / (b.max(1)) as f64;
    HostileReport {
        p50_ratio: ratio(under_attack.latency_us.p50, baseline.latency_us.p50),
        p99_ratio: ratio(under_attack.latency_us.p99, baseline.latency_us.p99),
        baseline,
        under_attack,
        attacks,
        server_alive_after,
        violations,
    }
}

/// How long after the run's end an attack already under way may wait for its verdict.
const VERDICT_GRACE: Duration = Duration::from_secs(2);

async fn attacker(
    index: usize,
    options: &HostileOptions,
    deadline: Instant,
) -> BTreeMap<Attack, AttackTally> {
    let mut tallies: BTreeMap<Attack, AttackTally> = BTreeMap::new();
    let mut n = index;
    while Instant::now() < deadline {
        let attack = Attack::ALL[n % Attack::ALL.len()];
        n += 1;
        // An attack started just before the end still gets time to hear its verdict, so a
        // prompt rejection is not miscounted as a connection the server left open.
        let verdict_by = deadline + VERDICT_GRACE;
        let budget = verdict_by.saturating_duration_since(Instant::now());
        let outcomes = match tokio::time::timeout(
            budget + Duration::from_secs(1),
            one(attack, options, verdict_by),
        )
        .await
        {
            Ok(outcomes) => outcomes,
            Err(_) => vec!["still open when the run ended".into()],
        };
        let tally = tallies.entry(attack).or_default();
        for outcome in outcomes {
            tally.attempts += 1;
            *tally.outcomes.entry(outcome).or_default() += 1;
        }
    }
    tallies
}

/// The outcome of a connection the server closed: at once, or after a deadline of its own.
fn closed_since(sent_at: Instant) -> String {
    let waited = sent_at.elapsed();
    if waited > Duration::from_secs(1) {
        format!("closed after {}s", waited.as_secs())
    } else {
        "closed".into()
    }
}

/// Reads until the server closes or sends an error frame; returns the outcome as text.
async fn await_verdict(stream: &mut TcpStream, deadline: Instant, sent_at: Instant) -> String {
    let mut buf = BytesMut::with_capacity(4096);
    let mut decoder = FrameDecoder::new(4096);
    decoder.set_version(1);
    loop {
        if let Ok(Some(frame)) = decoder.decode(&mut buf) {
            if let Ok(Message::Error { body, .. }) = frame.message() {
                return body.code.to_string();
            }
        }
        match tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buf)).await {
            Err(_) => return "still open when the run ended".into(),
            Ok(Ok(0)) | Ok(Err(_)) => return closed_since(sent_at),
            Ok(Ok(_)) => {}
        }
    }
}

async fn one(attack: Attack, options: &HostileOptions, deadline: Instant) -> Vec<String> {
    let connect = || async {
        TcpStream::connect(options.dial.addr)
            .await
            .map_err(|e| format!("connect failed: {}", e.kind()))
    };
    match attack {
        Attack::BadMagic | Attack::Garbage | Attack::OversizedBeforeAuth | Attack::SlowHeader => {
            let mut stream = match connect().await {
                Ok(s) => s,
                Err(e) => return vec![e],
            };
            let bytes: Vec<u8> = match attack {
                Attack::BadMagic => {
                    let mut h = Header::new(
                        FrameType::CLIENT_HELLO,
                        Service::HANDSHAKE,
                        RequestId(0),
                        67,
                    )
                    .to_bytes();
                    h[1] = 0x00;
                    h.to_vec()
                }
                Attack::Garbage => (0..256).map(|_| rand::random::<u8>()).collect(),
                Attack::OversizedBeforeAuth => Header::new(
                    FrameType::CLIENT_HELLO,
                    Service::HANDSHAKE,
                    RequestId(0),
                    u32::MAX,
                )
                .to_bytes()
                .to_vec(),
                _ => Header::new(
                    FrameType::CLIENT_HELLO,
                    Service::HANDSHAKE,
                    RequestId(0),
                    67,
                )
                .to_bytes()[..5]
                    .to_vec(),
            };
            let sent_at = Instant::now();
            if stream.write_all(&bytes).await.is_err() {
                return vec!["closed".into()];
            }
            vec![await_verdict(&mut stream, deadline, sent_at).await]
        }
        Attack::WrongKey => {
            let wrong = Dial {
                key: Key::generate(),
                ..options.dial.clone()
            };
            match dial(&wrong).await {
                Ok(_) => vec!["SERVED: handshake with a wrong key succeeded".into()],
                Err(e) if e.contains("authentication failed") => {
                    vec!["AUTHENTICATION_FAILED(0x0201)".into()]
                }
                Err(e) => vec![e],
            }
        }
        Attack::OversizedAfterAuth => {
            let mut stream = match connect().await {
                Ok(s) => s,
                Err(e) => return vec![e],
            };
            let config = ClientHandshakeConfig::new(options.dial.key.clone())
                .plaintext(options.dial.plaintext);
            if let Err(e) = ferry_protocol::tokio::client_handshake(&mut stream, config).await {
                return vec![format!("handshake failed: {e}")];
            }
            let header = Header::new(
                FrameType::REQUEST,
                Service::FETCH,
                RequestId(1),
                MAX_BODY_LIMIT + 1,
            );
            let sent_at = Instant::now();
            if stream.write_all(&header.to_bytes()).await.is_err() {
                return vec!["closed".into()];
            }
            // The verdict, if any, is encrypted; closing the connection is what counts here.
            let mut sink = [0u8; 4096];
            loop {
                match tokio::time::timeout_at(deadline.into(), stream.read(&mut sink)).await {
                    Err(_) => return vec!["still open when the run ended".into()],
                    Ok(Ok(0)) | Ok(Err(_)) => return vec![closed_since(sent_at)],
                    Ok(Ok(_)) => {}
                }
            }
        }
        Attack::PathTraversal => traversal(options).await,
    }
}

/// Sends every traversal path as fetch, stat and list; each must come back as an error.
async fn traversal(options: &HostileOptions) -> Vec<String> {
    let mut conn = match dial(&options.dial).await {
        Ok(c) => c,
        Err(e) => return vec![format!("connect failed: {e}")],
    };
    let mut out = BytesMut::new();
    let mut expected = 0usize;
    for (i, path) in TRAVERSALS.iter().enumerate() {
        let requests = [
            FetchRequest::new(*path, 0, TO_END).map(Message::FetchRequest),
            StatRequest::new(*path).map(Message::StatRequest),
            ListRequest::new(*path, false, 0).map(Message::ListRequest),
        ];
        for (j, request) in requests.into_iter().enumerate() {
            let Ok(request) = request else { continue };
            let id = RequestId((i * 3 + j + 1) as u32);
            if conn.send.write_message(id, &request, &mut out).is_err() {
                return vec!["encode failed".into()];
            }
            expected += 1;
        }
    }
    if conn.writer.write_all(&out).await.is_err() {
        return vec!["closed".into()];
    }
    let mut outcomes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        loop {
            let frame = match conn.recv.read_frame(&mut conn.read_buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    outcomes.push(format!("connection error: {e}"));
                    return outcomes;
                }
            };
            match frame.message() {
                Ok(Message::Error { body, .. }) => outcomes.push(body.code.to_string()),
                Ok(Message::ListEnd(_) | Message::StatResponse(_) | Message::FetchEnd(_)) => {
                    outcomes.push(format!(
                        "SERVED: a traversal request got {:?}",
                        frame.header.kind
                    ));
                }
                _ => {}
            }
        }
        if outcomes.len() >= expected {
            break;
        }
        match tokio::time::timeout_at(deadline.into(), conn.reader.read_buf(&mut conn.read_buf))
            .await
        {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                outcomes.push("closed before answering every request".into());
                break;
            }
        }
    }
    outcomes
}

impl HostileReport {
    pub fn print(&self) {
        self.baseline.print("honest client, baseline");
        self.under_attack.print("honest client, under attack");
        println!(
            "  latency moved: p50 ×{:.2}, p99 ×{:.2}",
            self.p50_ratio, self.p99_ratio
        );
        println!("attacks");
        for (attack, tally) in &self.attacks {
            let outcomes: Vec<String> = tally
                .outcomes
                .iter()
                .map(|(k, v)| format!("{v} × {k}"))
                .collect();
            println!(
                "  {:<22} {:>6} attempts: {}",
                attack,
                tally.attempts,
                outcomes.join(", ")
            );
        }
        println!(
            "server after the attack: {}",
            if self.server_alive_after {
                "up and answering correctly"
            } else {
                "NOT answering correctly"
            }
        );
        if self.violations.is_empty() {
            println!("violations: none");
        } else {
            for v in &self.violations {
                println!("VIOLATION: {v}");
            }
        }
    }
}
