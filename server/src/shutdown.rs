//! Graceful shutdown: two one-way signals and a drain.
//!
//! `stop` asks everything to wind down: accept loops return (closing their listeners),
//! connections refuse new requests with `SHUTTING_DOWN` and close once their in-flight requests
//! have finished. `kill` is raised when the grace period is over: connections abort their
//! requests and close at once. Every connection task is tracked, so the server knows when the
//! drain is complete.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The signals every connection watches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Signals {
    /// Stop accepting connections and requests; finish what is in flight.
    pub stop: CancellationToken,
    /// Grace period over: drop everything now.
    pub kill: CancellationToken,
}

/// Bound on waiting for tasks to notice `kill`; they only need to reach an await point.
const KILL_WAIT: Duration = Duration::from_secs(5);

impl Signals {
    /// Raises `stop`, waits up to `grace` for every tracked task, then raises `kill` and waits
    /// a little longer for the stragglers. Returns how many tasks were still running when the
    /// grace period ended.
    pub async fn drain(&self, tracker: &TaskTracker, grace: Duration) -> usize {
        self.stop.cancel();
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
            return 0;
        }
        let remaining = tracker.len();
        tracing::warn!(
            remaining,
            grace = %humantime::format_duration(grace),
            "grace period over; closing remaining connections"
        );
        self.kill.cancel();
        if tokio::time::timeout(KILL_WAIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(remaining = tracker.len(), "tasks still running after kill");
        }
        remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_polite_tasks_and_kills_slow_ones() {
        let signals = Signals::default();
        let tracker = TaskTracker::new();
        let stop = signals.stop.clone();
        tracker.spawn(async move { stop.cancelled().await });
        let kill = signals.kill.clone();
        tracker.spawn(async move {
            // Ignores stop, like a long transfer; only kill ends it.
            kill.cancelled().await;
        });
        let remaining = signals.drain(&tracker, Duration::from_secs(3)).await;
        assert_eq!(remaining, 1);
        assert!(tracker.is_empty());

        let signals = Signals::default();
        let tracker = TaskTracker::new();
        let stop = signals.stop.clone();
        tracker.spawn(async move { stop.cancelled().await });
        assert_eq!(signals.drain(&tracker, Duration::from_secs(3)).await, 0);
        assert!(!signals.kill.is_cancelled());
    }
}
