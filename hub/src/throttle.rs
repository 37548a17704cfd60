//! Token buckets per key (node id or IP address), for the hub's request throttling (HUB.md §7).
//!
//! Sans-IO: every call takes `now`. Each key has its own bucket, so a flooding identity drains
//! only its own and others keep theirs. The table is bounded: when full, buckets that have
//! refilled completely (indistinguishable from a fresh one) are dropped, and if none has, the
//! new key is refused rather than growing the table, so memory cannot be exhausted by keys.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Burst and refill of one bucket.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// Requests added back per second.
    pub per_second: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets keyed by `K`.
#[derive(Debug)]
pub struct Throttle<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Eq + Hash + Clone> Throttle<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys,
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * f64::from(self.rate.per_second))
            .min(f64::from(self.rate.burst));
        bucket.at = now;
    }

    /// Takes one token for `key`: `Ok` if allowed, else how long until one is back.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.prune(now);
            if self.buckets.len() >= self.max_keys {
                return Err(Duration::from_secs(1));
            }
        }
        let full = Bucket {
            tokens: f64::from(self.rate.burst),
            at: now,
        };
        let mut bucket = *self.buckets.get(key).unwrap_or(&full);
        self.refill(&mut bucket, now);
        let result = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let per_second = f64::from(self.rate.per_second.max(1));
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        };
        self.buckets.insert(key.clone(), bucket);
        result
    }

    /// Drops buckets that are full again.
    fn prune(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * f64::from(rate.per_second) < f64::from(rate.burst)
        });
    }

    /// Keys with a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_key_is_held_back_and_another_is_not() {
        let mut t = Throttle::new(
            Rate {
                burst: 5,
                per_second: 2,
            },
            100,
        );
        let now = Instant::now();
        for _ in 0..5 {
            assert!(t.check(&"flood", now).is_ok());
        }
        let wait = t.check(&"flood", now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(t.check(&"other", now).is_ok());
        // Half a second later one token is back.
        assert!(t.check(&"flood", now + Duration::from_millis(500)).is_ok());
        assert!(t.check(&"flood", now + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Throttle::new(
            Rate {
                burst: 1,
                per_second: 1,
            },
            3,
        );
        let now = Instant::now();
        for k in 0..3 {
            assert!(t.check(&k, now).is_ok());
        }
        // Full and nobody refilled: a new key is refused, the table does not grow.
        assert!(t.check(&3, now).is_err());
        assert_eq!(t.len(), 3);
        // A second later every bucket is full again and may be dropped.
        assert!(t.check(&3, now + Duration::from_secs(1)).is_ok());
        assert_eq!(t.len(), 1);
    }
}
