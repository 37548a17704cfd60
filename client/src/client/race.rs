//! Happy Eyeballs (RFC 8305): racing connection attempts to the addresses of an address's hints.
//!
//! Attempts start one at a time, in order: the next one [`CONNECTION_ATTEMPT_DELAY`] after the
//! last start, or at once when an attempt fails (RFC 8305 §5). Starting an attempt never cancels
//! an earlier one: the first attempt to *succeed* wins, and the caller's attempt is the whole
//! connect plus handshake, so a hint that accepts TCP and then stalls or proves the wrong
//! identity cannot win, and costs the others at most one delay. The losers are dropped, which
//! closes their streams. Addresses are put in order by [`interleave`] (RFC 8305 §4).
//!
//! The racing knows nothing about sockets: it runs whatever futures `attempt` makes, so tests
//! drive it with fakes and paused time.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

/// RFC 8305 §5's recommended Connection Attempt Delay.
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// RFC 8305 §4: alternates address families, starting with the first address's family, and
/// keeps each family's own order (which is the hints' order, then the resolver's).
pub fn interleave<T>(addrs: Vec<(T, SocketAddr)>) -> Vec<(T, SocketAddr)> {
    let Some(first_v6) = addrs.first().map(|(_, a)| a.is_ipv6()) else {
        return addrs;
    };
    let (mut first, mut other): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .partition(|(_, a)| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(first.len() + other.len());
    first.reverse();
    other.reverse();
    loop {
        match (first.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Runs `attempt` on each candidate, staggered by `delay` as the module says, and returns the
/// first success with its candidate. When every attempt fails, returns every error in the
/// candidates' order.
pub async fn race<C, T, E, F, Fut>(
    candidates: Vec<C>,
    delay: Duration,
    mut attempt: F,
) -> Result<(C, T), Vec<E>>
where
    F: FnMut(&C) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waiting = candidates.into_iter().enumerate();
    let mut candidates = Vec::new();
    let mut running = FuturesUnordered::new();
    let mut errors = Vec::new();
    let mut next_start = Instant::now();
    loop {
        let more = waiting.len() > 0;
        if running.is_empty() && !more {
            errors.sort_by_key(|(i, _)| *i);
            return Err(errors.into_iter().map(|(_, e)| e).collect());
        }
        tokio::select! {
            // A finished attempt is looked at before a start falls due at the same moment.
            biased;
            Some((i, result)) = running.next(), if !running.is_empty() => match result {
                Ok(value) => {
                    // Every candidate up to `i` has started, so slot `i` is filled.
                    let candidate = candidates.swap_remove(i);
                    return Ok((candidate, value));
                }
                Err(e) => {
                    errors.push((i, e));
                    next_start = Instant::now();
                }
            },
            () = tokio::time::sleep_until(next_start), if more => {
                if let Some((i, candidate)) = waiting.next() {
                    let fut = attempt(&candidate);
                    candidates.push(candidate);
                    running.push(async move { (i, fut.await) });
                    next_start = Instant::now() + delay;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone, Copy)]
    enum Fake {
        /// Succeeds after this long.
        Ok(u64),
        /// Fails after this long.
        Fail(u64),
        /// Never finishes (a listener that accepts and never answers).
        Hang,
    }

    /// Runs the race over fakes; returns the winner (or errors), when each attempt started and
    /// when the race ended, in milliseconds of paused time.
    async fn run(fakes: &[Fake]) -> (Result<usize, Vec<usize>>, Vec<u64>, u64, Arc<Mutex<u32>>) {
        let t0 = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(Mutex::new(0));
        let candidates: Vec<usize> = (0..fakes.len()).collect();
        let result = race(candidates, CONNECTION_ATTEMPT_DELAY, |&i| {
            starts.lock().unwrap().push(t0.elapsed().as_millis() as u64);
            let guard = DropCount(dropped.clone());
            let fake = fakes[i];
            async move {
                let _guard = guard;
                match fake {
                    Fake::Ok(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(i)
                    }
                    Fake::Fail(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Err(i)
                    }
                    Fake::Hang => std::future::pending().await,
                }
            }
        })
        .await
        .map(|(c, v)| {
            assert_eq!(c, v, "the winner is returned with its own candidate");
            v
        });
        let ended = t0.elapsed().as_millis() as u64;
        let starts = starts.lock().unwrap().clone();
        (result, starts, ended, dropped)
    }

    struct DropCount(Arc<Mutex<u32>>);

    impl Drop for DropCount {
        fn drop(&mut self) {
            *self.0.lock().unwrap() += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_first_attempt_lets_the_second_start_at_250_ms_and_win() {
        let (result, starts, ended, dropped) = run(&[Fake::Hang, Fake::Ok(10), Fake::Ok(0)]).await;
        assert_eq!(result, Ok(1));
        assert_eq!(starts, [0, 250], "the third never starts");
        assert_eq!(ended, 260);
        assert_eq!(
            *dropped.lock().unwrap(),
            2,
            "the silent loser is dropped too"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_starts_the_next_at_once() {
        let (result, starts, ended, _) = run(&[Fake::Fail(5), Fake::Fail(20), Fake::Ok(7)]).await;
        assert_eq!(result, Ok(2));
        assert_eq!(starts, [0, 5, 25]);
        assert_eq!(ended, 32);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_attempt_that_finishes_first_still_wins() {
        // The first is slow (300 ms) but the second is slower: starting the second does not
        // cancel the first.
        let (result, starts, ended, _) = run(&[Fake::Ok(300), Fake::Ok(400)]).await;
        assert_eq!(result, Ok(0));
        assert_eq!((starts, ended), (vec![0, 250], 300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_the_next_start_does_not_start_two_at_once() {
        // The first fails at 260 ms, after the second started at 250: the third starts then.
        let (result, starts, _, _) = run(&[Fake::Fail(260), Fake::Hang, Fake::Ok(1)]).await;
        assert_eq!(result, Ok(2));
        assert_eq!(starts, [0, 250, 260]);
    }

    #[tokio::test(start_paused = true)]
    async fn when_all_fail_every_error_comes_back_in_candidate_order() {
        let (result, starts, ended, _) = run(&[Fake::Fail(400), Fake::Fail(1)]).await;
        assert_eq!(result, Err(vec![0, 1]));
        assert_eq!((starts, ended), (vec![0, 250], 400));
        let (result, starts, _, _) = run(&[]).await;
        assert_eq!((result, starts), (Err(vec![]), vec![]));
    }

    #[test]
    fn families_alternate_starting_with_the_first() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let addrs = vec![
            (0, a("[::1]:1")),
            (0, a("[::2]:1")),
            (1, a("10.0.0.1:1")),
            (1, a("[::3]:1")),
            (2, a("10.0.0.2:1")),
        ];
        let order: Vec<_> = interleave(addrs)
            .into_iter()
            .map(|(h, a)| (h, a.to_string()))
            .collect();
        assert_eq!(
            order,
            [
                (0, "[::1]:1".to_string()),
                (1, "10.0.0.1:1".to_string()),
                (0, "[::2]:1".to_string()),
                (2, "10.0.0.2:1".to_string()),
                (1, "[::3]:1".to_string()),
            ]
        );
        let v4 = vec![((), a("10.0.0.1:1")), ((), a("10.0.0.2:1"))];
        assert_eq!(interleave(v4.clone()), v4, "one family keeps its order");
    }
}
