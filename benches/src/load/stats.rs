//! Measurement: workers record into a local [`Interval`] and ship it to one collector thread
//! every [`FLUSH_EVERY`] over a crossbeam channel, so the hot path never contends on a lock and
//! the channel carries ~10 messages per worker per second, not one per request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use serde::Serialize;

/// How often a worker hands its interval to the collector.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Latencies are recorded in microseconds, 1 µs .. 10 min, 3 significant figures.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|e| unreachable!("{e}"))
}

/// What a worker measured since its last flush. Latencies travel as raw samples and only the
/// collector records them into histograms: a histogram of this range is ~160 KB, and building,
/// zeroing and merging one per flush per connection cost more CPU than the requests it measured
/// (64 connections: 13% of the load generator in `hdrhistogram::add`, 4.5% in `memset`).
#[derive(Debug, Clone, Default)]
pub struct Interval {
    pub requests: u64,
    pub bytes: u64,
    /// Error name (e.g. `NOT_FOUND(0x0301)` or `connection closed`) to count.
    pub errors: BTreeMap<String, u64>,
    /// Every request's latency in microseconds, clamped into the histogram's bounds.
    pub latencies_us: Vec<u32>,
}

/// The largest latency recorded, 10 minutes; it fits in a `u32` of microseconds.
const MAX_LATENCY_US: u64 = 600_000_000;

impl Interval {
    pub fn record_ok(&mut self, latency: Duration, bytes: u64) {
        self.requests += 1;
        self.bytes += bytes;
        self.record_latency(latency);
    }

    pub fn record_error(&mut self, latency: Duration, what: impl Into<String>) {
        self.requests += 1;
        *self.errors.entry(what.into()).or_default() += 1;
        self.record_latency(latency);
    }

    fn record_latency(&mut self, latency: Duration) {
        let us = (latency.as_micros().min(u128::from(MAX_LATENCY_US)) as u64).max(1);
        self.latencies_us.push(us as u32);
    }

    /// An empty interval with room for as many samples as this one holds, so a steady worker
    /// does not grow its buffer again after every flush.
    fn take(&mut self) -> Interval {
        let room = self.latencies_us.len();
        std::mem::replace(
            self,
            Interval {
                latencies_us: Vec::with_capacity(room),
                ..Interval::default()
            },
        )
    }
}

/// The collector's running totals over a second or the whole run.
#[derive(Debug)]
struct Tally {
    requests: u64,
    bytes: u64,
    errors: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            requests: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            latency_us: new_histogram(),
        }
    }
}

impl Tally {
    fn merge(&mut self, other: &Interval) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for &us in &other.latencies_us {
            // Samples are clamped into the histogram's bounds, so recording cannot fail.
            let _ = self.latency_us.record(u64::from(us));
        }
    }

    /// Empties the tally for the next second, keeping the histogram's memory.
    fn clear(&mut self) {
        self.requests = 0;
        self.bytes = 0;
        self.errors.clear();
        self.latency_us.reset();
    }
}

/// A worker's handle: record locally, flush periodically.
#[derive(Debug)]
pub struct Recorder {
    current: Interval,
    last_flush: Instant,
    tx: Sender<Interval>,
}

impl Recorder {
    pub fn new(tx: Sender<Interval>) -> Self {
        Self {
            current: Interval::default(),
            last_flush: Instant::now(),
            tx,
        }
    }

    pub fn ok(&mut self, latency: Duration, bytes: u64) {
        self.current.record_ok(latency, bytes);
        self.maybe_flush();
    }

    /// [`Recorder::ok`] for a caller that has just read the clock (`now`).
    pub fn ok_at(&mut self, now: Instant, latency: Duration, bytes: u64) {
        self.current.record_ok(latency, bytes);
        if now.saturating_duration_since(self.last_flush) >= FLUSH_EVERY {
            self.flush();
        }
    }

    pub fn error(&mut self, latency: Duration, what: impl Into<String>) {
        self.current.record_error(latency, what);
        self.maybe_flush();
    }

    fn maybe_flush(&mut self) {
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.current.requests > 0 || !self.current.errors.is_empty() {
            let _ = self.tx.send(self.current.take());
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One second of the run, as printed live and plotted.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    /// How much of the second the row covers: 1.0, except for a run's last, partial second.
    pub duration_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub p99_us: u64,
}

impl Second {
    /// Requests per second over the time the row covers, so a partial last second is not
    /// drawn as a cliff.
    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.duration_s.max(1e-3)
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.duration_s.max(1e-3)
    }
}

/// How much of second number `second` (counted from 0) had passed after `elapsed_s`: the
/// covered part of the run's last row, in (0, 1].
fn covered_part(elapsed_s: f64, second: u64) -> f64 {
    (elapsed_s - second as f64).clamp(1e-3, 1.0)
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub elapsed_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub bytes: u64,
    pub mb_per_s: f64,
    pub latency_us: Percentiles,
    pub errors: BTreeMap<String, u64>,
    pub per_second: Vec<Second>,
    /// Latency distribution as (quantile, microseconds) points, for plots.
    #[serde(skip)]
    pub quantiles: Vec<(f64, u64)>,
}

/// Receives intervals until every sender is gone; prints one line per second unless quiet.
pub fn collect(rx: Receiver<Interval>, start: Instant, live: bool) -> Summary {
    let mut total = Tally::default();
    let mut second = Tally::default();
    let mut current_second = 0u64;
    let mut per_second = Vec::new();
    let close_second = |n: u64, duration_s: f64, s: &mut Tally, per_second: &mut Vec<Second>| {
        let errors = s.errors.values().sum();
        let row = Second {
            second: n + 1,
            duration_s,
            requests: s.requests,
            bytes: s.bytes,
            errors,
            p99_us: if s.requests > 0 {
                s.latency_us.value_at_quantile(0.99)
            } else {
                0
            },
        };
        if live {
            let partial = if duration_s < 1.0 {
                format!("  (last {duration_s:.2}s)")
            } else {
                String::new()
            };
            eprintln!(
                "[{:>4}s] {:>10.0} req/s {:>10.1} MB/s  p99 {:>9}  errors {}{partial}",
                row.second,
                row.requests_per_s(),
                row.mb_per_s(),
                fmt_us(row.p99_us),
                row.errors
            );
        }
        per_second.push(row);
        s.clear();
    };
    loop {
        let deadline = start + Duration::from_secs(current_second + 1);
        match rx.recv_deadline(deadline) {
            Ok(interval) => {
                let now_second = start.elapsed().as_secs();
                while now_second > current_second {
                    close_second(current_second, 1.0, &mut second, &mut per_second);
                    current_second += 1;
                }
                total.merge(&interval);
                second.merge(&interval);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                close_second(current_second, 1.0, &mut second, &mut per_second);
                current_second += 1;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    if second.requests > 0 {
        let covered = covered_part(elapsed, current_second);
        close_second(current_second, covered, &mut second, &mut per_second);
    }
    let quantiles = if total.requests > 0 {
        total
            .latency_us
            .iter_quantiles(4)
            .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
            .collect()
    } else {
        Vec::new()
    };
    Summary {
        elapsed_s: elapsed,
        requests: total.requests,
        requests_per_s: total.requests as f64 / elapsed,
        bytes: total.bytes,
        mb_per_s: total.bytes as f64 / elapsed / 1e6,
        latency_us: Percentiles::of(&total.latency_us),
        errors: total.errors,
        per_second,
        quantiles,
    }
}

/// Microseconds in the most readable unit.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

impl Summary {
    /// The human-readable report on stdout.
    pub fn print(&self, title: &str) {
        println!("{title}");
        println!(
            "  requests   {} in {:.2}s = {:.0} req/s",
            self.requests, self.elapsed_s, self.requests_per_s
        );
        println!(
            "  data       {:.1} MB = {:.1} MB/s",
            self.bytes as f64 / 1e6,
            self.mb_per_s
        );
        let l = &self.latency_us;
        println!(
            "  latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max)
        );
        if self.errors.is_empty() {
            println!("  errors     none");
        } else {
            for (what, n) in &self.errors {
                println!("  errors     {n:>8}  {what}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_last_second_is_a_rate_not_a_cliff() {
        // 0.25 s into the third second: the last row covers a quarter of a second.
        let covered = covered_part(2.25, 2);
        assert!((covered - 0.25).abs() < 1e-9, "{covered}");
        let row = Second {
            second: 3,
            duration_s: covered,
            requests: 250,
            bytes: 250_000,
            errors: 0,
            p99_us: 0,
        };
        assert!((row.requests_per_s() - 1000.0).abs() < 1e-6);
        assert!((row.mb_per_s() - 1.0).abs() < 1e-9);
        // A whole second, and a clock read late, never exceed one second.
        assert_eq!(covered_part(3.0, 2), 1.0);
        assert_eq!(covered_part(7.5, 2), 1.0);
    }

    #[test]
    fn collector_merges_workers_and_counts_errors() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let start = Instant::now();
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut r = Recorder::new(tx);
                    for i in 0..1000u64 {
                        r.ok(Duration::from_micros(100 + i), 10);
                    }
                    r.error(Duration::from_millis(5), "NOT_FOUND(0x0301)");
                })
            })
            .collect();
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
        let summary = collect(rx, start, false);
        assert_eq!(summary.requests, 3003);
        assert_eq!(summary.bytes, 30_000);
        assert_eq!(summary.errors["NOT_FOUND(0x0301)"], 3);
        assert!(summary.latency_us.p50 >= 500 && summary.latency_us.p50 <= 700);
        assert!(summary.latency_us.max >= 5000);
    }
}
