//! What a node has tried in order to find peers and what failed, so that a download with no
//! peer can say why instead of sitting silent: each tracker's answers (or silence), the peer
//! addresses it heard of and why dialling them failed, and the ferry-server sources.
//!
//! The node's tasks record into one shared [`Sources`]; [`Sources::describe`] turns it into one
//! sentence for the user.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::tracker::client::TrackerHealth;

/// Most dial failures spelled out in one description; the rest are counted.
const SHOWN_FAILURES: usize = 3;

/// Everything a node tried to find peers, shared by its tasks.
#[derive(Debug, Default)]
pub struct Sources {
    trackers: Vec<(SocketAddr, Arc<TrackerHealth>)>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Peer addresses heard of (`--peer`, trackers, PEX).
    known: HashSet<SocketAddr>,
    /// The latest reason each address could not be dialled; removed once it connects.
    failures: BTreeMap<SocketAddr, String>,
    /// Ferry-server sources by URL, with why each failed (`None`: in use or connecting).
    servers: BTreeMap<String, Option<String>>,
}

impl Sources {
    /// Sources for these trackers; each gets the health record its announce loop writes.
    pub fn new(trackers: &[SocketAddr]) -> Self {
        Self {
            trackers: trackers
                .iter()
                .map(|t| (*t, Arc::new(TrackerHealth::default())))
                .collect(),
            inner: Mutex::default(),
        }
    }

    /// The health record of `tracker`.
    pub fn tracker(&self, tracker: SocketAddr) -> Arc<TrackerHealth> {
        self.trackers
            .iter()
            .find(|(t, _)| *t == tracker)
            .map(|(_, h)| h.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a single insert or remove, so a poisoned lock still holds whole data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn heard_of(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.lock().known.extend(addrs);
    }

    pub fn dial_failed(&self, addr: SocketAddr, reason: String) {
        let mut inner = self.lock();
        inner.known.insert(addr);
        inner.failures.insert(addr, reason);
    }

    pub fn connected(&self, addr: SocketAddr) {
        self.lock().failures.remove(&addr);
    }

    pub fn server(&self, url: &str, failure: Option<String>) {
        self.lock().servers.insert(url.to_owned(), failure);
    }

    /// One sentence: each tracker's state, then the peers heard of and why they could not be
    /// reached, then the servers. E.g. "tracker 10.0.0.1:6969 did not answer 3 requests; no
    /// peer address known".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (addr, health) in &self.trackers {
            let r = health.report();
            parts.push(match (&r.error, r.answers) {
                (Some(error), _) => format!("tracker {addr}: {error}"),
                (None, 0) => format!(
                    "tracker {addr} did not answer {} request{}",
                    r.unanswered,
                    plural(r.unanswered as usize)
                ),
                (None, _) if r.unanswered > 1 => format!(
                    "tracker {addr} stopped answering ({} requests unanswered)",
                    r.unanswered
                ),
                (None, _) => format!(
                    "tracker {addr} listed {} peer{}",
                    r.listed,
                    plural(r.listed)
                ),
            });
        }
        let inner = self.lock();
        if inner.known.is_empty() {
            if inner.servers.is_empty() {
                parts.push("no peer address known".into());
            }
        } else {
            let mut text = format!(
                "{} peer address{} known, none reachable",
                inner.known.len(),
                if inner.known.len() == 1 { "" } else { "es" }
            );
            if !inner.failures.is_empty() {
                let shown: Vec<String> = inner
                    .failures
                    .iter()
                    .take(SHOWN_FAILURES)
                    .map(|(addr, why)| format!("{addr}: {why}"))
                    .collect();
                let _ = write!(text, " ({}", shown.join(", "));
                if inner.failures.len() > SHOWN_FAILURES {
                    let _ = write!(text, ", and {} more", inner.failures.len() - SHOWN_FAILURES);
                }
                text.push(')');
            }
            parts.push(text);
        }
        for (url, failure) in &inner.servers {
            parts.push(match failure {
                Some(why) => format!("server {url}: {why}"),
                None => format!("server {url}: connecting"),
            });
        }
        parts.join("; ")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_what_failed() {
        let tracker: SocketAddr = "10.0.0.1:6969".parse().unwrap();
        let sources = Sources::new(&[tracker]);
        assert_eq!(
            sources.describe(),
            "tracker 10.0.0.1:6969 did not answer 0 requests; no peer address known"
        );
        for port in 1..=5 {
            let addr = SocketAddr::from(([10, 0, 0, 2], port));
            sources.dial_failed(addr, "connection refused".into());
        }
        sources.connected(SocketAddr::from(([10, 0, 0, 2], 5)));
        sources.server("ferry://h/pub", Some("wrong key".into()));
        assert_eq!(
            sources.describe(),
            "tracker 10.0.0.1:6969 did not answer 0 requests; 5 peer addresses known, none \
             reachable (10.0.0.2:1: connection refused, 10.0.0.2:2: connection refused, \
             10.0.0.2:3: connection refused, and 1 more); server ferry://h/pub: wrong key"
        );
    }
}
