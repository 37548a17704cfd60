//! What a DHT node keeps for others (spec/P2P.md §7.6, §7.7): announced peers with expiry,
//! the rotating token secrets, and the per-source rate limiter. Each is bounded.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::seq::SliceRandom;
use rand::Rng;
use sha2::Sha256;

use super::wire::{Token, TOKEN_LEN};
use super::NodeId;

/// An announce is kept this long unless renewed.
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);
/// Most keys stored.
pub const MAX_KEYS: usize = 4096;
/// Most peers per key.
pub const MAX_PEERS_PER_KEY: usize = 256;
/// The token secret changes this often; a token is valid for the current and previous one.
pub const SECRET_ROTATION: Duration = Duration::from_secs(5 * 60);

/// Announced peers per key, each with its expiry.
#[derive(Debug, Default)]
pub struct PeerStore {
    keys: HashMap<NodeId, Vec<(SocketAddr, Instant)>>,
}

impl PeerStore {
    /// Records `peer` for `key`. `false` if the store is full (the key is new and there are
    /// already [`MAX_KEYS`], or the key has [`MAX_PEERS_PER_KEY`] others).
    pub fn add(&mut self, key: NodeId, peer: SocketAddr, now: Instant) -> bool {
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_KEYS {
            self.expire(now);
            if self.keys.len() >= MAX_KEYS {
                return false;
            }
        }
        let peers = self.keys.entry(key).or_default();
        peers.retain(|(_, until)| *until > now);
        let until = now + PEER_TTL;
        if let Some(p) = peers.iter_mut().find(|(a, _)| *a == peer) {
            p.1 = until;
            return true;
        }
        if peers.len() >= MAX_PEERS_PER_KEY {
            return false;
        }
        peers.push((peer, until));
        true
    }

    /// Up to `n` live peers for `key`, a random sample when there are more.
    pub fn peers(
        &self,
        key: &NodeId,
        n: usize,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Vec<SocketAddr> {
        let mut live: Vec<SocketAddr> = self
            .keys
            .get(key)
            .into_iter()
            .flatten()
            .filter(|(_, until)| *until > now)
            .map(|(a, _)| *a)
            .collect();
        live.shuffle(rng);
        live.truncate(n);
        live
    }

    pub fn expire(&mut self, now: Instant) {
        for peers in self.keys.values_mut() {
            peers.retain(|(_, until)| *until > now);
        }
        self.keys.retain(|_, p| !p.is_empty());
    }

    /// (keys, peers) held.
    pub fn size(&self) -> (usize, usize) {
        (self.keys.len(), self.keys.values().map(Vec::len).sum())
    }
}

/// Token secrets: `token = HMAC-SHA256(secret, ip as 16 bytes, IPv4 mapped)[0..8]`.
#[derive(Debug)]
pub struct Tokens {
    current: [u8; 32],
    previous: [u8; 32],
    rotated: Instant,
}

impl Tokens {
    pub fn new(rng: &mut impl Rng, now: Instant) -> Self {
        Self {
            current: rng.gen(),
            previous: rng.gen(),
            rotated: now,
        }
    }

    /// Rotates the secret if [`SECRET_ROTATION`] has passed.
    pub fn tick(&mut self, now: Instant, rng: &mut impl Rng) {
        if now.saturating_duration_since(self.rotated) >= SECRET_ROTATION {
            // Two periods or more: the previous secret is as old as the current one's
            // predecessor would be, so both are replaced.
            if now.saturating_duration_since(self.rotated) >= SECRET_ROTATION * 2 {
                self.previous = rng.gen();
            } else {
                self.previous = self.current;
            }
            self.current = rng.gen();
            self.rotated = now;
        }
    }

    pub fn next_rotation(&self) -> Instant {
        self.rotated + SECRET_ROTATION
    }

    pub fn token(&self, ip: IpAddr) -> Token {
        token(&self.current, ip)
    }

    /// Whether `token` was issued to `ip` under the current or the previous secret.
    pub fn check(&self, token: &Token, ip: IpAddr) -> bool {
        // Both compared, in constant time each, so timing says nothing about which matched.
        let a = ferry_protocol::crypto::mac_eq(&super::store::token(&self.current, ip), token);
        let b = ferry_protocol::crypto::mac_eq(&super::store::token(&self.previous, ip), token);
        a | b
    }
}

/// `HMAC-SHA256(secret, ip16)[0..8]`, IPv4 as its IPv4-mapped IPv6 form.
pub fn token(secret: &[u8; 32], ip: IpAddr) -> Token {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length.
        Err(_) => unreachable!("hmac key of 32 bytes"),
    };
    mac.update(&super::ip16(ip));
    let tag = mac.finalize().into_bytes();
    let mut out = [0u8; TOKEN_LEN];
    out.copy_from_slice(&tag[..TOKEN_LEN]);
    out
}

/// Requests per second allowed from one source address, on average.
pub const RATE_PER_SEC: f64 = 20.0;
/// Requests one source may send in a burst.
pub const RATE_BURST: f64 = 50.0;
/// Most source addresses tracked; beyond that they share one bucket.
pub const MAX_SOURCES: usize = 8192;

/// Slots the clock hand looks at for a reusable one when a new source finds the table full.
pub const EVICT_SCAN: usize = 8;

/// A token bucket per source IP, plus one shared by the sources that did not fit.
///
/// The buckets live in at most [`MAX_SOURCES`] slots, found through an index by address. A new
/// source in a full table takes the first of the next [`EVICT_SCAN`] slots after a clock hand
/// whose bucket has refilled (a source idle that long is indistinguishable from a new one), or
/// else shares the overflow bucket. So each request costs O(1), whatever a flood of spoofed
/// addresses does; a full scan of the table per new address did not.
#[derive(Debug)]
pub struct RateLimiter {
    index: HashMap<IpAddr, usize>,
    slots: Vec<Bucket>,
    /// The next slot the clock hand looks at.
    hand: usize,
    overflow: (f64, Instant),
    /// Slots looked at to find a reusable one, for the tests' bound on work.
    #[cfg(test)]
    pub(crate) scanned: u64,
}

#[derive(Debug)]
struct Bucket {
    ip: IpAddr,
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(now: Instant) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            hand: 0,
            overflow: (RATE_BURST, now),
            #[cfg(test)]
            scanned: 0,
        }
    }

    /// Whether a request from `ip` at `now` may be answered (and counts it).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let slot = match self.index.get(&ip) {
            Some(&i) => Some(i),
            None => self.claim(ip, now),
        };
        let (tokens, at) = match slot {
            Some(i) => {
                let b = &mut self.slots[i];
                (&mut b.tokens, &mut b.at)
            }
            None => (&mut self.overflow.0, &mut self.overflow.1),
        };
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * RATE_PER_SEC).min(RATE_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A slot with a full bucket for a new source: a fresh one while the table has room, else
    /// one of the next [`EVICT_SCAN`] after the hand whose source has been idle long enough to
    /// refill. `None`: the source shares the overflow bucket.
    fn claim(&mut self, ip: IpAddr, now: Instant) -> Option<usize> {
        let fresh = Bucket {
            ip,
            tokens: RATE_BURST,
            at: now,
        };
        if self.slots.len() < MAX_SOURCES {
            self.slots.push(fresh);
            self.index.insert(ip, self.slots.len() - 1);
            return Some(self.slots.len() - 1);
        }
        let full = Duration::from_secs_f64(RATE_BURST / RATE_PER_SEC);
        for _ in 0..EVICT_SCAN {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            #[cfg(test)]
            {
                self.scanned += 1;
            }
            if now.saturating_duration_since(self.slots[i].at) >= full {
                let old = std::mem::replace(&mut self.slots[i], fresh);
                self.index.remove(&old.ip);
                self.index.insert(ip, i);
                return Some(i);
            }
        }
        None
    }

    pub fn sources(&self) -> usize {
        self.index.len()
    }

    /// Whether `ip` has a bucket of its own.
    #[cfg(test)]
    pub(crate) fn tracks(&self, ip: IpAddr) -> bool {
        self.index.contains_key(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn tokens_bind_the_address_and_expire_after_two_rotations() {
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let mut t = Tokens::new(&mut rng, now);
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        let b: IpAddr = "203.0.113.6".parse().unwrap();
        let tok = t.token(a);
        assert!(t.check(&tok, a));
        assert!(!t.check(&tok, b), "another address cannot use it");
        let mut forged = tok;
        forged[0] ^= 1;
        assert!(!t.check(&forged, a));
        t.tick(now + SECRET_ROTATION, &mut rng);
        assert!(t.check(&tok, a), "valid under the previous secret");
        t.tick(now + SECRET_ROTATION * 2, &mut rng);
        assert!(!t.check(&tok, a), "two rotations later it is gone");
    }

    #[test]
    fn store_expires_and_stays_bounded() {
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let mut s = PeerStore::default();
        let key = NodeId([1; 20]);
        for i in 0..(MAX_PEERS_PER_KEY + 10) {
            let peer = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1));
            assert_eq!(s.add(key, peer, now), i < MAX_PEERS_PER_KEY);
        }
        assert_eq!(s.peers(&key, 1000, now, &mut rng).len(), MAX_PEERS_PER_KEY);
        assert_eq!(s.peers(&key, 5, now, &mut rng).len(), 5);
        for k in 1..MAX_KEYS {
            assert!(s.add(
                NodeId([
                    (k >> 8) as u8,
                    k as u8,
                    9,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0
                ]),
                SocketAddr::from(([10, 0, 0, 1], 1)),
                now
            ));
        }
        assert!(!s.add(NodeId([7; 20]), SocketAddr::from(([10, 0, 0, 1], 1)), now));
        assert_eq!(s.size().0, MAX_KEYS);
        let later = now + PEER_TTL;
        assert!(s.peers(&key, 1000, later, &mut rng).is_empty());
        // Once the old entries expire, new keys fit again.
        assert!(s.add(NodeId([7; 20]), SocketAddr::from(([10, 0, 0, 1], 1)), later));
        assert_eq!(s.size(), (1, 1));
    }

    #[test]
    fn rate_limit_is_per_source_and_refills() {
        let now = Instant::now();
        let mut r = RateLimiter::new(now);
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        let b: IpAddr = "203.0.113.6".parse().unwrap();
        let allowed = (0..1000).filter(|_| r.allow(a, now)).count();
        assert_eq!(allowed, RATE_BURST as usize);
        assert!(r.allow(b, now), "another source is unaffected");
        let later = now + Duration::from_secs(1);
        let allowed = (0..1000).filter(|_| r.allow(a, later)).count();
        assert_eq!(allowed, RATE_PER_SEC as usize);
        // Many sources: the table stays bounded.
        for i in 0..(MAX_SOURCES as u32 + 100) {
            r.allow(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), later);
        }
        assert!(r.sources() <= MAX_SOURCES);
    }
}
