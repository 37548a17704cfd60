//! `ferry-load server`: C connections, each keeping K requests in flight (closed loop), or
//! issuing at a fixed total rate R (open loop). In open loop every request has an intended send
//! time on a fixed schedule and its latency is measured from that time, so a server stall shows
//! up as latency instead of silently lowering the offered load (coordinated omission).
//!
//! Every answer is checked: records are opened and authenticated by the session, a fetch's data
//! must add up to the length its response announced and its end counted, and to the BLAKE3
//! digest its end carries. A failed check is counted as an error and makes the binary exit 1.
//!
//! The load generator shares the machine with the server it measures, so it is built to cost
//! little per request, as wrk does: one single-threaded runtime per thread with its share of
//! the connections (no work stealing, no cross-thread wake-ups), one recorder per thread, each
//! connection's requests in a fixed table indexed by id, and requests encoded from messages
//! built once.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_protocol::digest::{fetch_digest, FetchDigest};
use ferry_protocol::message::{EntryKind, ListRequest};
use ferry_protocol::{FrameType, Message, RequestId, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{dial, Dial, LoadConn};
use super::stats::{collect, Recorder, Summary};
use super::workload::{Mix, Op, Targets};

/// When the run ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

/// Settings of a server run.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub dial: Dial,
    pub connections: usize,
    pub in_flight: usize,
    pub mix: Mix,
    pub stop: Stop,
    /// Total requests per second across connections (open loop); `None` = closed loop.
    pub rate: Option<f64>,
    pub targets: Targets,
    /// Threads, each running its share of the connections on its own single-threaded
    /// runtime (at least 1, at most one per connection).
    pub threads: usize,
    /// Print one line per second to stderr.
    pub live: bool,
}

/// The start of every error name that means an answer failed a check (as opposed to the
/// server refusing a request, e.g. `NOT_FOUND`): the data did not match the digest or length
/// the server announced, or a record failed to open (the session reports it as a connection
/// error, and every request then in flight fails with it).
const INTEGRITY: &str = "integrity: ";
const CONNECTION_ERROR: &str = "connection error: ";

/// How many of the run's requests failed an integrity check, and their error names.
pub fn integrity_failures(summary: &Summary) -> (u64, Vec<&str>) {
    let failed: Vec<(&str, u64)> = summary
        .errors
        .iter()
        .filter(|(what, _)| what.contains(INTEGRITY) || what.starts_with(CONNECTION_ERROR))
        .map(|(what, n)| (what.as_str(), *n))
        .collect();
    (
        failed.iter().map(|(_, n)| n).sum(),
        failed.into_iter().map(|(what, _)| what).collect(),
    )
}

/// Upper bound on how long a run may go on after its stop condition, waiting for answers.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the load on `options.threads` threads of its own and returns the summary.
pub async fn run(options: ServerOptions) -> Summary {
    let threads = options.threads.clamp(1, options.connections.max(1));
    let options = Arc::new(options);
    let (tx, rx) = crossbeam_channel::unbounded();
    let start = Instant::now();
    let live = options.live;
    let collector = std::thread::spawn(move || collect(rx, start, live));
    let budget = Arc::new(AtomicI64::new(match options.stop {
        Stop::Requests(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Stop::After(_) => i64::MAX,
    }));
    let deadline = match options.stop {
        Stop::After(d) => start + d,
        // A request-count run still ends eventually if the server stops answering.
        Stop::Requests(_) => start + Duration::from_secs(24 * 3600),
    };
    let mut handles = Vec::new();
    for thread in 0..threads {
        let options = options.clone();
        let budget = budget.clone();
        let thread_tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ferry-load-{thread}"))
            .spawn(move || {
                let recorder = Rc::new(RefCell::new(Recorder::new(thread_tx)));
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        recorder
                            .borrow_mut()
                            .error(Duration::ZERO, format!("starting a runtime: {e}"));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async {
                    let mut tasks = Vec::new();
                    for index in (thread..options.connections).step_by(threads) {
                        let options = options.clone();
                        let recorder = recorder.clone();
                        let budget = budget.clone();
                        tasks.push(tokio::task::spawn_local(async move {
                            worker(index, &options, &recorder, &budget, start, deadline).await
                        }));
                    }
                    for task in tasks {
                        let _ = task.await;
                    }
                });
            });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => Recorder::new(tx.clone())
                .error(Duration::ZERO, format!("starting a load thread: {e}")),
        }
    }
    drop(tx);
    // The load threads and the collector block; wait for them off this runtime's threads.
    tokio::task::spawn_blocking(move || {
        for handle in handles {
            let _ = handle.join();
        }
        collector
            .join()
            .unwrap_or_else(|_| panic!("the stats collector thread panicked"))
    })
    .await
    .unwrap_or_else(|e| panic!("waiting for the load threads: {e}"))
}

/// One connection's loop; reconnects after failures until the run ends.
async fn worker(
    index: usize,
    options: &ServerOptions,
    recorder: &RefCell<Recorder>,
    budget: &AtomicI64,
    start: Instant,
    deadline: Instant,
) {
    // Open loop: this connection's share of the rate, staggered so connections interleave.
    let period = options
        .rate
        .map(|r| Duration::from_secs_f64(options.connections as f64 / r.max(1e-9)));
    let mut next_due = period.map(|p| start + p.mul_f64(index as f64 / options.connections as f64));
    // Built once: every request of a kind is the same message.
    let requests = Op::ALL.map(|op| options.targets.request(op));
    while Instant::now() < deadline && budget.load(Ordering::Relaxed) > 0 {
        let attempt = Instant::now();
        match dial(&options.dial).await {
            Ok(conn) => {
                let driven = drive(
                    conn,
                    options,
                    &requests,
                    recorder,
                    budget,
                    deadline,
                    period,
                    &mut next_due,
                )
                .await;
                match driven {
                    Err(what) => recorder.borrow_mut().error(attempt.elapsed(), what),
                    Ok(()) => return,
                }
            }
            Err(what) => {
                recorder.borrow_mut().error(attempt.elapsed(), what);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A fetch's data so far, kept for its digest. Most small fetches arrive as one data frame,
/// which is hashed in one call at the end; a hasher (~2 KB of state) is set up only when a
/// second frame arrives.
#[derive(Debug, Default)]
enum Received {
    #[default]
    Nothing,
    One(Bytes),
    Streaming(Box<FetchDigest>),
}

impl Received {
    fn add(&mut self, data: Bytes) {
        *self = match std::mem::take(self) {
            Received::Nothing => Received::One(data),
            Received::One(first) => {
                let mut hasher = Box::new(FetchDigest::new());
                hasher.update(&first).update(&data);
                Received::Streaming(hasher)
            }
            Received::Streaming(mut hasher) => {
                hasher.update(&data);
                Received::Streaming(hasher)
            }
        };
    }

    fn digest(&self) -> [u8; 32] {
        match self {
            Received::Nothing => fetch_digest(&[]),
            Received::One(data) => fetch_digest(data),
            Received::Streaming(hasher) => hasher.finalize(),
        }
    }
}

#[derive(Debug)]
struct Pending {
    id: RequestId,
    op: Op,
    started: Instant,
    bytes: u64,
    /// The length a fetch's response announced.
    announced: Option<u64>,
    received: Received,
}

/// A connection's requests in flight: slot `s` of `k` only ever uses ids `1 + s + n·k`, so an
/// answer finds its request by arithmetic, without hashing.
struct InFlight {
    slots: Vec<Option<Pending>>,
    rounds: Vec<u32>,
    free: Vec<usize>,
}

impl InFlight {
    fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity).map(|_| None).collect(),
            rounds: vec![0; capacity],
            free: (0..capacity).rev().collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// A fresh id for a new request, or `None` when all slots are taken.
    fn next_id(&mut self) -> Option<RequestId> {
        let slot = *self.free.last()?;
        let k = self.slots.len() as u64;
        let mut id = 1 + slot as u64 + u64::from(self.rounds[slot]) * k;
        if id > u64::from(u32::MAX) {
            self.rounds[slot] = 0;
            id = 1 + slot as u64;
        }
        self.rounds[slot] += 1;
        Some(RequestId(id as u32))
    }

    fn insert(&mut self, pending: Pending) {
        if let Some(slot) = self.free.pop() {
            self.slots[slot] = Some(pending);
        }
    }

    fn slot(&self, id: RequestId) -> Option<usize> {
        let slot = (id.0 as usize).checked_sub(1)? % self.slots.len();
        self.slots[slot]
            .as_ref()
            .is_some_and(|p| p.id == id)
            .then_some(slot)
    }

    fn get_mut(&mut self, id: RequestId) -> Option<&mut Pending> {
        let slot = self.slot(id)?;
        self.slots[slot].as_mut()
    }

    fn remove(&mut self, id: RequestId) -> Option<Pending> {
        let slot = self.slot(id)?;
        self.free.push(slot);
        self.slots[slot].take()
    }

    fn drain(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.free.clear();
        self.free.extend((0..self.slots.len()).rev());
        self.slots.iter_mut().filter_map(Option::take)
    }
}

/// Drives one connection. `Ok` when the run ended normally; `Err` names what broke it (the
/// requests then in flight have been counted as failed).
#[allow(clippy::too_many_arguments)]
async fn drive(
    mut conn: LoadConn,
    options: &ServerOptions,
    requests: &[Option<Message>; Op::ALL.len()],
    recorder: &RefCell<Recorder>,
    budget: &AtomicI64,
    deadline: Instant,
    period: Option<Duration>,
    next_due: &mut Option<Instant>,
) -> Result<(), String> {
    // A per-connection generator: `thread_rng` is not `Send` across awaits.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let mut pending = InFlight::new(options.in_flight);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut issuing = true;
    let fail_all = |pending: &mut InFlight, what: &str| {
        let mut recorder = recorder.borrow_mut();
        for p in pending.drain() {
            recorder.error(p.started.elapsed(), what.to_string());
        }
    };
    // One timer for the connection, moved only when the time to wake changes (in closed loop,
    // never until the run ends).
    let mut armed = deadline;
    let sleep = tokio::time::sleep_until(armed.into());
    tokio::pin!(sleep);
    // Read once per wake-up: it ends the latency of every answer that came in and starts the
    // requests sent in their place (a few microseconds early at most, which counts against
    // the server, never for it).
    let mut now = Instant::now();
    loop {
        if now >= deadline {
            issuing = false;
        }
        while issuing && !pending.is_full() {
            let started = match (period, next_due.as_mut()) {
                (Some(p), Some(due)) if *due <= now => {
                    let intended = *due;
                    *due += p;
                    intended
                }
                (Some(_), _) => break,
                (None, _) => now,
            };
            if budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                issuing = false;
                break;
            }
            let op = options.mix.pick(&mut rng);
            let Some(message) = &requests[op.index()] else {
                recorder
                    .borrow_mut()
                    .error(Duration::ZERO, format!("no target for {}", op.name()));
                continue;
            };
            let Some(id) = pending.next_id() else { break };
            conn.send
                .write_message(id, message, &mut out)
                .map_err(|e| format!("encode: {e}"))?;
            pending.insert(Pending {
                id,
                op,
                started,
                bytes: 0,
                announced: None,
                received: Received::Nothing,
            });
        }
        if !issuing && pending.is_empty() {
            return Ok(());
        }
        if !out.is_empty() {
            if let Err(e) = conn.writer.write_all(&out).await {
                fail_all(&mut pending, "connection closed");
                return Err(format!("write: {e}"));
            }
            out.clear();
        }
        // Wake for the next scheduled request, the end of the run, or data.
        let wake = match (*next_due, issuing) {
            (Some(due), true) => due.min(deadline),
            _ if issuing => deadline,
            _ => deadline.max(Instant::now()) + DRAIN,
        };
        if wake != armed {
            armed = wake;
            sleep.as_mut().reset(wake.into());
        }
        // Room for a whole burst of answers in one read; `reserve` takes the buffer's memory
        // back once the frames cut from it are gone, so this rarely allocates.
        if conn.read_buf.capacity() - conn.read_buf.len() < 4096 {
            conn.read_buf.reserve(64 * 1024);
        }
        tokio::select! {
            biased;
            read = conn.reader.read_buf(&mut conn.read_buf) => match read {
                Ok(0) | Err(_) => {
                    fail_all(&mut pending, "connection closed");
                    return Err("connection closed by server".into());
                }
                Ok(_) => {}
            },
            () = &mut sleep => {
                if !issuing && Instant::now() >= wake {
                    fail_all(&mut pending, "no answer before the run ended");
                    return Ok(());
                }
            }
        }
        now = Instant::now();
        loop {
            let frame = match conn.recv.read_frame(&mut conn.read_buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let what = format!("{CONNECTION_ERROR}{} ({})", e, e.code());
                    fail_all(&mut pending, &what);
                    return Err(what);
                }
            };
            if frame.header.kind == FrameType::RESPONSE && frame.header.service == Service::LIST {
                // A page is checked entry by entry without being built into `Entry` values
                // (100 strings a page): the load generator measures the server, and wrk, the
                // baseline, does not parse nginx's HTML either.
                let Some(p) = pending.get_mut(frame.header.id) else {
                    continue;
                };
                if walk_list_page(&frame.body).is_some() {
                    p.bytes += frame.body.len() as u64;
                } else if let Some(p) = pending.remove(frame.header.id) {
                    recorder
                        .borrow_mut()
                        .error(p.started.elapsed(), "malformed list page".to_string());
                }
                continue;
            }
            let message = match frame.message() {
                Ok(message) => message,
                Err(e) => {
                    if let Some(p) = pending.remove(frame.header.id) {
                        recorder
                            .borrow_mut()
                            .error(p.started.elapsed(), format!("malformed reply: {e}"));
                    }
                    continue;
                }
            };
            if frame.header.id == RequestId::CONNECTION {
                // Keep-alive from the server; answer so it does not drop us.
                if let Message::Ping(payload) = message {
                    let _ =
                        conn.send
                            .write_message(frame.header.id, &Message::Pong(payload), &mut out);
                }
                continue;
            }
            let Some(p) = pending.get_mut(frame.header.id) else {
                continue;
            };
            let done = match message {
                Message::ListPage(_) => {
                    p.bytes += frame.body.len() as u64;
                    None
                }
                Message::FetchResponse(response) => {
                    p.announced = Some(response.length);
                    None
                }
                Message::Data(data) => {
                    p.bytes += data.len() as u64;
                    p.received.add(data);
                    None
                }
                Message::FetchEnd(end) => Some(check_fetch(p, &end)),
                Message::ListEnd(_) | Message::StatResponse(_) | Message::Pong(_) => Some(Ok(())),
                Message::Error { body, .. } => Some(Err(body.code.to_string())),
                other => Some(Err(format!("unexpected {:?}", other.kind()))),
            };
            if let Some(result) = done {
                if let Some(p) = pending.remove(frame.header.id) {
                    let latency = now.saturating_duration_since(p.started);
                    match result {
                        Ok(()) => recorder.borrow_mut().ok_at(now, latency, p.bytes),
                        Err(what) => recorder
                            .borrow_mut()
                            .error(latency, format!("{}: {what}", p.op.name())),
                    }
                }
            }
        }
    }
}

/// A fetch's end against what arrived: the data frames must add up to the length the response
/// announced and the end counted, and hash to the end's digest.
fn check_fetch(p: &Pending, end: &ferry_protocol::message::FetchEnd) -> Result<(), String> {
    if end.bytes != p.bytes || p.announced.is_some_and(|n| n != p.bytes) {
        return Err(format!(
            "{INTEGRITY}byte count mismatch: {} data bytes arrived, the response announced {}, \
             the end counted {}",
            p.bytes,
            p.announced.map_or("nothing".to_string(), |n| n.to_string()),
            end.bytes
        ));
    }
    if p.received.digest() != end.digest {
        return Err(format!("{INTEGRITY}digest mismatch over {} bytes", p.bytes));
    }
    Ok(())
}

/// Checks a list page body (spec §3.5, entries §3.4) as `ListPage::decode` does, without
/// allocating: the count, then each entry's name (UTF-8), fixed fields (nanoseconds below
/// 10^9) and, with the link flag, its link text; nothing may follow. Returns the count.
pub fn walk_list_page(body: &[u8]) -> Option<u16> {
    fn take<'a>(body: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if body.len() < n {
            return None;
        }
        let (head, rest) = body.split_at(n);
        *body = rest;
        Some(head)
    }
    fn string(body: &mut &[u8]) -> Option<()> {
        let len = take(body, 2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        std::str::from_utf8(take(body, len)?).ok().map(|_| ())
    }
    let mut body = body;
    let count = take(&mut body, 2)?;
    let count = u16::from_be_bytes([count[0], count[1]]);
    for _ in 0..count {
        string(&mut body)?;
        let fixed = take(&mut body, 25)?;
        let nanos = u32::from_be_bytes([fixed[17], fixed[18], fixed[19], fixed[20]]);
        if nanos >= 1_000_000_000 {
            return None;
        }
        if fixed[0] & EntryKind::LINK_FLAG != 0 {
            string(&mut body)?;
        }
    }
    body.is_empty().then_some(count)
}

/// Finds targets on the server when the user named none: the listed directory is the root, the
/// small file is the smallest non-empty file (stat targets it too), the large file the largest.
pub async fn discover(dial_to: &Dial, mut targets: Targets) -> Result<Targets, String> {
    let mut conn = dial(dial_to).await?;
    let id = RequestId(1);
    let mut out = BytesMut::new();
    let list = Message::ListRequest(
        ListRequest::new(targets.list_dir.clone(), true, 3).map_err(|e| e.to_string())?,
    );
    conn.send
        .write_message(id, &list, &mut out)
        .map_err(|e| e.to_string())?;
    conn.writer
        .write_all(&out)
        .await
        .map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    'read: loop {
        while let Some(frame) = conn
            .recv
            .read_frame(&mut conn.read_buf)
            .map_err(|e| e.to_string())?
        {
            match frame.message().map_err(|e| e.to_string())? {
                Message::ListPage(page) => files.extend(
                    page.entries
                        .into_iter()
                        .filter(|e| e.kind == EntryKind::FILE && e.size > 0),
                ),
                Message::ListEnd(_) => break 'read,
                Message::Error { body, .. } => {
                    return Err(format!("listing {:?}: {}", targets.list_dir, body))
                }
                _ => {}
            }
        }
        let read =
            tokio::time::timeout_at(deadline.into(), conn.reader.read_buf(&mut conn.read_buf))
                .await
                .map_err(|_| "listing the server timed out".to_string())?;
        if read.map_err(|e| e.to_string())? == 0 {
            return Err("server closed the connection while listing".into());
        }
    }
    let prefix = if targets.list_dir.is_empty() {
        String::new()
    } else {
        format!("{}/", targets.list_dir)
    };
    files.sort_by_key(|e| e.size);
    if targets.small_file.is_empty() {
        if let Some(small) = files.first() {
            targets.small_file = format!("{prefix}{}", small.name);
        }
    }
    if targets.large_file.is_empty() {
        if let Some(large) = files.last() {
            targets.large_file = format!("{prefix}{}", large.name);
        }
    }
    if targets.stat.is_empty() {
        targets.stat = if targets.small_file.is_empty() {
            targets.list_dir.clone()
        } else {
            targets.small_file.clone()
        };
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use ferry_protocol::message::{Entry, ListPage};

    fn pending(id: RequestId) -> Pending {
        Pending {
            id,
            op: Op::Echo,
            started: Instant::now(),
            bytes: 0,
            announced: None,
            received: Received::Nothing,
        }
    }

    /// Ids in flight are distinct and never 0, an answer finds its own request and nothing
    /// else (a finished request's id, an id of another slot, 0), and ids wrap before `u32::MAX`.
    #[test]
    fn in_flight_requests_are_found_by_id_and_only_by_their_own() {
        let mut table = InFlight::new(3);
        let ids: Vec<RequestId> = (0..3)
            .map(|_| {
                let id = table.next_id().unwrap();
                table.insert(pending(id));
                id
            })
            .collect();
        assert!(table.is_full() && table.next_id().is_none());
        assert_eq!(ids, [RequestId(1), RequestId(2), RequestId(3)]);
        assert!(table.get_mut(RequestId::CONNECTION).is_none());
        assert_eq!(table.remove(ids[1]).unwrap().id, ids[1]);
        assert!(table.remove(ids[1]).is_none(), "a finished request is gone");
        let reused = table.next_id().unwrap();
        assert_eq!(reused, RequestId(5), "the freed slot's next id");
        table.insert(pending(reused));
        assert!(
            table.get_mut(ids[1]).is_none(),
            "the old id of a reused slot"
        );
        assert_eq!(table.get_mut(reused).unwrap().id, reused);
        assert_eq!(table.drain().count(), 3);
        assert!(table.is_empty());

        // Near the top of the id space a slot starts again from its first id.
        let mut table = InFlight::new(2);
        table.rounds[0] = (u32::MAX - 1) / 2;
        let high = table.next_id().unwrap();
        assert_eq!(high, RequestId(u32::MAX));
        table.insert(pending(high));
        assert_eq!(table.remove(high).unwrap().id, high);
        assert_eq!(table.next_id(), Some(RequestId(1)));
    }

    /// One data frame is hashed in one call at the end, more go through a hasher: both give
    /// the digest of all the bytes.
    #[test]
    fn received_data_hashes_to_the_digest_of_all_of_it() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut one = Received::default();
        one.add(Bytes::copy_from_slice(&data));
        assert!(matches!(one, Received::One(_)));
        assert_eq!(one.digest(), fetch_digest(&data));
        let mut many = Received::default();
        for chunk in data.chunks(1700) {
            many.add(Bytes::copy_from_slice(chunk));
        }
        assert!(matches!(many, Received::Streaming(_)));
        assert_eq!(many.digest(), fetch_digest(&data));
        assert_eq!(Received::default().digest(), fetch_digest(&[]));
    }

    /// The walk accepts what `ListPage::decode` accepts and refuses what it refuses: every
    /// truncation, a bad UTF-8 name, nanoseconds out of range, trailing bytes.
    #[test]
    fn the_walk_agrees_with_the_decoder() {
        let entry = |name: &str, link: Option<&str>| Entry {
            name: name.into(),
            kind: EntryKind::FILE,
            size: 7,
            mtime_secs: -3,
            mtime_nanos: 999_999_999,
            mode: 0o644,
            link: link.map(Into::into),
        };
        let page = ListPage {
            entries: vec![
                entry("a", None),
                entry("dir/é", Some("../x")),
                entry("", None),
            ],
        };
        let mut body = BytesMut::new();
        page.encode(&mut body);
        let body = body.to_vec();
        assert_eq!(walk_list_page(&body), Some(3));
        assert_eq!(ListPage::decode(Bytes::from(body.clone())).unwrap(), page);
        for cut in 0..body.len() {
            assert!(walk_list_page(&body[..cut]).is_none(), "cut at {cut}");
            assert!(ListPage::decode(Bytes::copy_from_slice(&body[..cut])).is_err());
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(walk_list_page(&trailing).is_none());
        let mut bad_name = body.clone();
        bad_name[4] = 0xFF; // the first name's only byte
        assert!(walk_list_page(&bad_name).is_none());
        assert!(ListPage::decode(Bytes::from(bad_name)).is_err());
        let mut bad_nanos = body;
        // First entry: count 2, name 2 + 1, kind 1, size 8, secs 8, then the nanoseconds.
        bad_nanos[2 + 3 + 17..2 + 3 + 21].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        assert!(walk_list_page(&bad_nanos).is_none());
        assert!(ListPage::decode(Bytes::from(bad_nanos)).is_err());
    }
}
