//! Connection bookkeeping that needs a clock but no I/O: keep-alive and request ids (spec §8).
//! Callers pass `now`; nothing here reads the clock.

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
}
