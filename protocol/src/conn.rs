//! Connection bookkeeping that needs a clock but no I/O: keep-alive, request ids and the table
//! of requests in flight (spec §8). Callers pass `now`; nothing here reads the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::header::RequestId;

/// Hands out request ids: 1, 2, ... wrapping past `u32::MAX` back to 1, never 0 (the
/// connection id). The caller skips ids still in flight.
#[derive(Debug, Clone)]
pub struct RequestIds {
    next: u32,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl RequestIds {
    /// The next id; callers with long-lived requests check it against their in-flight set.
    pub fn next_id(&mut self) -> RequestId {
        let id = self.next;
        self.next = self.next.checked_add(1).unwrap_or(1);
        RequestId(id)
    }
}

/// The requests in flight on one connection, by id, each with the caller's state `T`: the one
/// table both ends keep. A client picks ids with [`RequestTable::start`]; a server checks the
/// ids its client picked with [`RequestTable::check`] before [`RequestTable::insert`].
#[derive(Debug)]
pub struct RequestTable<T> {
    ids: RequestIds,
    live: HashMap<RequestId, T>,
}

/// Why a request id cannot start (spec §3.3, §8.2): the caller turns each into its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Id 0 names the connection, never a request: a protocol violation.
    ConnectionId,
    /// The id is already in flight.
    Duplicate,
    /// `limit` requests are already in flight.
    Full { limit: usize },
}

impl<T> Default for RequestTable<T> {
    fn default() -> Self {
        Self {
            ids: RequestIds::default(),
            live: HashMap::new(),
        }
    }
}

impl<T> RequestTable<T> {
    /// Registers a new request under a fresh id: ids wrap after 2^32 and skip any still in
    /// flight, so a long-lived request never shares its id.
    pub fn start(&mut self, state: T) -> RequestId {
        let id = loop {
            let id = self.ids.next_id();
            if !self.live.contains_key(&id) {
                break id;
            }
        };
        self.live.insert(id, state);
        id
    }

    /// Whether a request the peer numbered `id` may start with at most `limit` in flight.
    pub fn check(&self, id: RequestId, limit: usize) -> Result<(), Refusal> {
        if id == RequestId::CONNECTION {
            Err(Refusal::ConnectionId)
        } else if self.live.contains_key(&id) {
            Err(Refusal::Duplicate)
        } else if self.live.len() >= limit {
            Err(Refusal::Full { limit })
        } else {
            Ok(())
        }
    }

    /// Registers a request the peer numbered (after [`RequestTable::check`]); returns the state
    /// it replaced, which a checked id never has.
    pub fn insert(&mut self, id: RequestId, state: T) -> Option<T> {
        self.live.insert(id, state)
    }

    pub fn get(&self, id: RequestId) -> Option<&T> {
        self.live.get(&id)
    }

    /// Ends a request (finished, cancelled or failed); `None` if it was not in flight.
    pub fn finish(&mut self, id: RequestId) -> Option<T> {
        self.live.remove(&id)
    }

    /// Ends every request, as when the connection closes.
    pub fn clear(&mut self) {
        self.live.clear();
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The requests in flight, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (RequestId, &T)> {
        self.live.iter().map(|(id, state)| (*id, state))
    }
}

/// Keep-alive: after `interval` without hearing from the peer, send a ping; if nothing at all
/// arrives within `timeout` of that ping, the peer is gone.
#[derive(Debug, Clone)]
pub struct KeepAlive {
    interval: Duration,
    timeout: Duration,
    last_heard: Instant,
    outstanding: Option<(u64, Instant)>,
    next_token: u64,
}

/// What the keep-alive wants done now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepAliveAction {
    /// Nothing until [`KeepAlive::poll_timeout`].
    Wait,
    /// Send a ping (id 0) with this payload.
    SendPing(Bytes),
    /// The peer has been silent past the timeout: close the connection.
    Expired,
}

impl KeepAlive {
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Self {
            interval,
            timeout,
            last_heard: now,
            outstanding: None,
            next_token: 1,
        }
    }

    /// Any frame arrived from the peer.
    pub fn handle_received(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// A pong with id 0 arrived; returns the round-trip time if it answers our ping.
    pub fn handle_pong(&mut self, payload: &[u8], now: Instant) -> Option<Duration> {
        self.last_heard = now;
        let token = u64::from_be_bytes(payload.try_into().ok()?);
        match self.outstanding {
            Some((expected, sent)) if expected == token => {
                self.outstanding = None;
                Some(now.saturating_duration_since(sent))
            }
            _ => None,
        }
    }

    /// When to call [`KeepAlive::poll`] next.
    pub fn poll_timeout(&self) -> Instant {
        match self.outstanding {
            Some((_, sent)) => sent + self.timeout,
            None => self.last_heard + self.interval,
        }
    }

    /// Decides what to do at `now`.
    pub fn poll(&mut self, now: Instant) -> KeepAliveAction {
        match self.outstanding {
            Some((_, sent)) if self.last_heard < sent && now >= sent + self.timeout => {
                KeepAliveAction::Expired
            }
            Some((_, sent)) if self.last_heard >= sent => {
                // Heard something since the ping; the connection is alive even if the pong
                // is still queued behind data.
                self.outstanding = None;
                self.poll(now)
            }
            Some(_) => KeepAliveAction::Wait,
            None if now >= self.last_heard + self.interval => {
                let token = self.next_token;
                self.next_token += 1;
                self.outstanding = Some((token, now));
                KeepAliveAction::SendPing(Bytes::copy_from_slice(&token.to_be_bytes()))
            }
            None => KeepAliveAction::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_skip_zero_when_wrapping() {
        let mut ids = RequestIds { next: u32::MAX };
        assert_eq!(ids.next_id(), RequestId(u32::MAX));
        assert_eq!(ids.next_id(), RequestId(1));
    }

    #[test]
    fn pings_after_idle_and_expires_after_silence() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut ka = KeepAlive::new(10 * s, 5 * s, t0);
        assert_eq!(ka.poll(t0 + 9 * s), KeepAliveAction::Wait);
        assert_eq!(ka.poll_timeout(), t0 + 10 * s);
        let KeepAliveAction::SendPing(payload) = ka.poll(t0 + 10 * s) else {
            panic!("expected a ping")
        };
        assert_eq!(ka.poll(t0 + 14 * s), KeepAliveAction::Wait);
        assert_eq!(ka.poll(t0 + 15 * s), KeepAliveAction::Expired);

        let mut ka = KeepAlive::new(10 * s, 5 * s, t0);
        let KeepAliveAction::SendPing(payload2) = ka.poll(t0 + 10 * s) else {
            panic!("expected a ping")
        };
        assert_eq!(payload, payload2);
        assert_eq!(ka.handle_pong(&payload2, t0 + 12 * s), Some(2 * s));
        assert_eq!(ka.poll(t0 + 15 * s), KeepAliveAction::Wait);
    }

    #[test]
    fn any_traffic_counts_as_alive() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut ka = KeepAlive::new(10 * s, 5 * s, t0);
        assert!(matches!(ka.poll(t0 + 10 * s), KeepAliveAction::SendPing(_)));
        ka.handle_received(t0 + 11 * s);
        assert_eq!(ka.poll(t0 + 16 * s), KeepAliveAction::Wait);
    }

    #[test]
    fn started_ids_skip_those_in_flight_and_never_use_zero() {
        let mut table = RequestTable::default();
        let first = table.start("long-lived");
        assert_eq!(first, RequestId(1));
        // Wrap the counter round to the long-lived request's id.
        table.ids = RequestIds { next: u32::MAX };
        assert_eq!(table.start("a"), RequestId(u32::MAX));
        assert_eq!(
            table.start("b"),
            RequestId(2),
            "0 and the live 1 are skipped"
        );
        assert_eq!(table.finish(first), Some("long-lived"));
        assert_eq!(table.finish(first), None, "a request ends once");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_peers_ids_are_checked_in_spec_order() {
        let mut table = RequestTable::default();
        assert_eq!(
            table.check(RequestId::CONNECTION, 1),
            Err(Refusal::ConnectionId)
        );
        assert_eq!(table.check(RequestId(7), 1), Ok(()));
        assert_eq!(table.insert(RequestId(7), ()), None);
        // A duplicate is named as such even when the table is also full.
        assert_eq!(table.check(RequestId(7), 1), Err(Refusal::Duplicate));
        assert_eq!(
            table.check(RequestId(8), 1),
            Err(Refusal::Full { limit: 1 })
        );
        table.clear();
        assert!(table.is_empty());
        assert_eq!(table.check(RequestId(8), 1), Ok(()));
    }
}
