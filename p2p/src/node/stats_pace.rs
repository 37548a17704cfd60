//! When the node's counters wake the tasks that watch them ([`NodeHandle::stats`]).
//!
//! The actor refreshes [`Stats`] after every event, several per 16 KiB block. Waking every
//! watcher each time (the CLI's progress loop runs on the main thread, a futex wake and a
//! context switch per block) cost a leecher about a tenth of its CPU on loopback. The value is
//! still refreshed every time, so a `borrow()` always reads the latest counters; only the
//! wake-ups are paced.
//!
//! [`NodeHandle::stats`]: super::NodeHandle::stats

use std::time::{Duration, Instant};

use crate::swarm::Stats;

/// Most often a change of byte counters alone wakes the watchers.
pub(super) const BYTES_PACE: Duration = Duration::from_millis(50);

/// Decides, for each refresh of the counters, whether watchers are woken now or at
/// [`StatsPace::deadline`]. Sans-IO: the caller passes the time.
#[derive(Debug, Default)]
pub(super) struct StatsPace {
    /// When watchers were last woken.
    last_wake: Option<Instant>,
    /// A change they have not been woken for.
    pending: bool,
}

impl StatsPace {
    /// The counters went from `old` to `new` at `now` (the new value is already readable):
    /// whether to wake the watchers now. Pieces, peers, hash failures and bans wake them at
    /// once (completion is noticed as it happens); bytes alone at most once per
    /// [`BYTES_PACE`], the rest at the deadline.
    pub(super) fn on_refresh(&mut self, old: &Stats, new: &Stats, now: Instant) -> bool {
        if old == new {
            return false;
        }
        let events_changed = (
            old.have,
            old.pieces,
            old.peers,
            old.hash_failures,
            old.banned,
        ) != (
            new.have,
            new.pieces,
            new.peers,
            new.hash_failures,
            new.banned,
        );
        let due = self.last_wake.is_none_or(|at| now >= at + BYTES_PACE);
        if events_changed || due {
            self.woken(now);
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// When a change not yet announced must wake the watchers; `None` when there is none.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match (self.pending, self.last_wake) {
            (true, Some(at)) => Some(at + BYTES_PACE),
            _ => None,
        }
    }

    /// The watchers were woken for the pending change at `now`.
    pub(super) fn woken(&mut self, now: Instant) {
        self.last_wake = Some(now);
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(downloaded: u64) -> Stats {
        Stats {
            have: 1,
            pieces: 10,
            peers: 2,
            downloaded,
            ..Stats::default()
        }
    }

    #[test]
    fn byte_counters_wake_watchers_at_most_once_per_pace_and_never_miss_the_last() {
        let t0 = Instant::now();
        let mut pace = StatsPace::default();
        assert!(
            pace.on_refresh(&bytes(0), &bytes(1), t0),
            "the first change wakes"
        );
        // A block every millisecond for 120 ms: wakes at 0, 50 and 100 ms only.
        let mut wakes = 1;
        for ms in 1..120u64 {
            let now = t0 + Duration::from_millis(ms);
            if pace.on_refresh(&bytes(ms), &bytes(ms + 1), now) {
                wakes += 1;
            }
        }
        assert_eq!(wakes, 3);
        // The changes after the 100 ms wake are announced at its deadline, not lost.
        assert_eq!(pace.deadline(), Some(t0 + Duration::from_millis(150)));
        pace.woken(t0 + Duration::from_millis(150));
        assert_eq!(pace.deadline(), None);
        // An unchanged refresh wakes nobody and schedules nothing.
        let later = t0 + Duration::from_secs(5);
        assert!(!pace.on_refresh(&bytes(7), &bytes(7), later));
        assert_eq!(pace.deadline(), None);
    }

    #[test]
    fn pieces_peers_and_failures_wake_watchers_at_once() {
        let t0 = Instant::now();
        let mut pace = StatsPace::default();
        assert!(pace.on_refresh(&bytes(0), &bytes(1), t0));
        let soon = t0 + Duration::from_millis(1);
        let base = bytes(1);
        for changed in [
            Stats { have: 2, ..base },
            Stats { peers: 3, ..base },
            Stats {
                hash_failures: 1,
                ..base
            },
            Stats { banned: 1, ..base },
            Stats {
                have: 10,
                downloaded: 9,
                ..base
            },
        ] {
            assert!(pace.on_refresh(&base, &changed, soon), "{changed:?}");
        }
        assert_eq!(pace.deadline(), None);
    }
}
