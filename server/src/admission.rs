//! Connection admission: who gets a slot, and who loses one, when connections arrive faster
//! than they authenticate.
//!
//! Like OpenSSH's `MaxStartups`, connections that have not completed the handshake
//! (*pending*) live in their own bounded pool, apart from authenticated ones. Unlike a plain
//! cap, a full pool does not refuse the newcomer: it **evicts** the pending connection least
//! likely to be an honest client about to finish, so a flood of idle connections keeps
//! cycling through the pool instead of holding it, and a client that completes its handshake
//! in a few round trips always gets through. Authenticated connections are never evicted.
//!
//! Rules, checked in this order for a new connection from address `A`:
//! 1. `A` already has `max_pending_per_address` pending connections: evict the oldest of
//!    `A`'s that has sent nothing for at least [`PER_ADDRESS_MIN_AGE`], if there is one. One
//!    host's idle connections thus cannot take the whole pool and push out other hosts'
//!    handshakes, while a burst of honest connections from one address (a NAT, a parallel
//!    download, a slow machine) is not cut short by its own cap.
//! 2. The pool holds `max_pending`: evict one pending connection, the oldest that has sent
//!    nothing, else the oldest.
//! 3. Authenticated plus pending reach `max_connections`: evict as in rule 2, or, when every
//!    slot is authenticated, refuse the newcomer with `BUSY`.
//!
//! "Sent nothing" means nothing read by its handshake yet and nothing waiting in its socket.
//! An honest client sends its ClientHello at once, so a flood of silent connections never
//! evicts it; a flood that sends a hello and stalls can only evict it through rule 2, after
//! `max_pending` newer connections, which an honest handshake (two round trips) outpaces.
//! IPv6 addresses are grouped by /64, the block one host usually holds.
//!
//! The table is plain data under a mutex: no I/O but one non-blocking `MSG_PEEK` per
//! candidate, on a duplicate of the connection's descriptor owned by the table.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How long a connection must have been pending before its own address's newcomers may
/// evict it (rule 1). Far longer than an honest handshake takes to start.
pub(crate) const PER_ADDRESS_MIN_AGE: Duration = Duration::from_millis(500);

/// Admission limits (see [`crate::Limits`] for the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdmissionLimits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_pending_per_address: usize,
}

impl AdmissionLimits {
    /// Keeps the limits consistent: at least one slot of each kind, the pool within the total.
    fn normalised(self) -> Self {
        let max_connections = self.max_connections.max(1);
        let max_pending = self.max_pending.clamp(1, max_connections);
        Self {
            max_connections,
            max_pending,
            max_pending_per_address: self.max_pending_per_address.clamp(1, max_pending),
        }
    }
}

/// What admission decided for a new connection.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Serve it; hold the ticket for the whole handshake.
    Pending(PendingTicket),
    /// Every slot is held by an authenticated connection.
    Busy,
}

/// The server's admission table.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    authenticated: usize,
    next_seq: u64,
    /// Pending connections by arrival: the smallest key is the oldest.
    pending: BTreeMap<u64, Pending>,
    per_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Pending {
    address: IpAddr,
    admitted: Instant,
    /// Set by the connection once its handshake has read anything.
    progressed: Arc<AtomicBool>,
    /// A duplicate of the socket, for peeking; `None` if `dup` failed.
    peek: Option<OwnedFd>,
    evict: CancellationToken,
}

impl Pending {
    /// Whether the peer has sent anything: read already, or waiting to be read. A closed
    /// connection counts as silent (it is the cheapest to evict).
    fn has_spoken(&self) -> bool {
        if self.progressed.load(Ordering::Relaxed) {
            return true;
        }
        let Some(fd) = &self.peek else { return false };
        let mut byte = [0u8; 1];
        matches!(
            rustix::net::recv(
                fd,
                &mut byte,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            ),
            Ok(n) if n > 0
        )
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits: limits.normalised(),
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters more than refusing every connection would; keep going.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer` arriving at `now`, evicting a pending one if the rules
    /// say so. `socket` is a duplicate of the connection's descriptor (for peeking), if one
    /// could be made.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, socket: Option<OwnedFd>, now: Instant) -> Admit {
        let address = group(peer);
        let limits = self.limits;
        let mut table = self.lock();
        if table.per_address.get(&address).copied().unwrap_or(0) >= limits.max_pending_per_address {
            if let Some(admitted_before) = now.checked_sub(PER_ADDRESS_MIN_AGE) {
                table.evict_silent(address, admitted_before);
            }
        }
        if table.pending.len() >= limits.max_pending {
            table.evict();
        }
        if table.authenticated + table.pending.len() >= limits.max_connections && !table.evict() {
            return Admit::Busy;
        }
        let seq = table.next_seq;
        table.next_seq += 1;
        let progressed = Arc::new(AtomicBool::new(false));
        let evict = CancellationToken::new();
        table.pending.insert(
            seq,
            Pending {
                address,
                admitted: now,
                progressed: progressed.clone(),
                peek: socket,
                evict: evict.clone(),
            },
        );
        *table.per_address.entry(address).or_insert(0) += 1;
        Admit::Pending(PendingTicket {
            admission: self.clone(),
            seq,
            progressed,
            evicted: evict,
        })
    }

    /// Pending and authenticated connections now.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let table = self.lock();
        (table.pending.len(), table.authenticated)
    }
}

impl Table {
    /// Rule 1: evicts `address`'s oldest connection that was admitted before
    /// `admitted_before` and has sent nothing, if any.
    fn evict_silent(&mut self, address: IpAddr, admitted_before: Instant) -> bool {
        let victim = self
            .pending
            .iter()
            .take_while(|(_, p)| p.admitted < admitted_before)
            .find(|(_, p)| p.address == address && !p.has_spoken())
            .map(|(seq, _)| *seq);
        victim.is_some_and(|seq| self.evict_seq(seq))
    }

    /// Rules 2 and 3: evicts the oldest pending connection that has sent nothing, else the
    /// oldest. Returns whether one was evicted (only false when none is pending).
    fn evict(&mut self) -> bool {
        let victim = self
            .pending
            .iter()
            .find(|(_, p)| !p.has_spoken())
            .or_else(|| self.pending.iter().next())
            .map(|(seq, _)| *seq);
        victim.is_some_and(|seq| self.evict_seq(seq))
    }

    fn evict_seq(&mut self, seq: u64) -> bool {
        match self.remove(seq) {
            Some(pending) => {
                pending.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, seq: u64) -> Option<Pending> {
        let pending = self.pending.remove(&seq)?;
        if let Some(count) = self.per_address.get_mut(&pending.address) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&pending.address);
            }
        }
        Some(pending)
    }
}

/// IPv4 addresses stand alone; IPv6 addresses are grouped by their /64.
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// A pending connection's place in the pool. Dropping it frees the place.
#[derive(Debug)]
pub(crate) struct PendingTicket {
    admission: Arc<Admission>,
    seq: u64,
    progressed: Arc<AtomicBool>,
    evicted: CancellationToken,
}

impl PendingTicket {
    /// Cancelled when this connection is evicted.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    /// The handshake has read something from the peer.
    pub fn mark_progress(&self) {
        self.progressed.store(true, Ordering::Relaxed);
    }

    /// Whether [`mark_progress`](Self::mark_progress) was called.
    pub fn has_progressed(&self) -> bool {
        self.progressed.load(Ordering::Relaxed)
    }

    /// The handshake completed: trade the pending place for an authenticated slot. `None` if
    /// the connection was evicted meanwhile (it must then close).
    pub fn authenticate(self) -> Option<AuthenticatedSlot> {
        let admission = self.admission.clone();
        let mut table = admission.lock();
        table.remove(self.seq)?;
        table.authenticated += 1;
        drop(table);
        Some(AuthenticatedSlot { admission })
    }
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        // After `authenticate` the entry is already gone and this is a no-op.
        let _ = self.admission.lock().remove(self.seq);
    }
}

/// An authenticated connection's slot. Dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct AuthenticatedSlot {
    admission: Arc<Admission>,
}

impl Drop for AuthenticatedSlot {
    fn drop(&mut self) {
        let mut table = self.admission.lock();
        table.authenticated = table.authenticated.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, pending: usize, per_address: usize) -> Arc<Admission> {
        Admission::new(AdmissionLimits {
            max_connections: total,
            max_pending: pending,
            max_pending_per_address: per_address,
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn admit(admission: &Arc<Admission>, from: u8, at: Instant) -> PendingTicket {
        match admission.admit(ip(from), None, at) {
            Admit::Pending(ticket) => ticket,
            Admit::Busy => panic!("refused"),
        }
    }

    #[test]
    fn a_full_pool_evicts_the_oldest_silent_connection_not_one_that_spoke() {
        let admission = limits(100, 3, 3);
        let now = Instant::now();
        let spoke = admit(&admission, 1, now);
        spoke.mark_progress();
        let silent_old = admit(&admission, 1, now);
        let silent_new = admit(&admission, 1, now);
        let newcomer = admit(&admission, 1, now);
        assert!(silent_old.evicted().is_cancelled());
        assert!(!spoke.evicted().is_cancelled());
        assert!(!silent_new.evicted().is_cancelled());
        assert!(!newcomer.evicted().is_cancelled());
        assert_eq!(admission.counts(), (3, 0));
        // Only when everyone has spoken does the oldest speaker go.
        silent_new.mark_progress();
        newcomer.mark_progress();
        let _last = admit(&admission, 1, now);
        assert!(spoke.evicted().is_cancelled());
        assert!(
            spoke.authenticate().is_none(),
            "an evicted ticket cannot authenticate"
        );
    }

    #[test]
    fn one_address_evicts_only_its_own_old_connections() {
        let admission = limits(100, 20, 2);
        let t0 = Instant::now();
        let later = t0 + PER_ADDRESS_MIN_AGE * 2;
        let other = admit(&admission, 2, t0);
        let old: Vec<_> = (0..2).map(|_| admit(&admission, 1, t0)).collect();
        // A burst of young connections from one address is not cut short by its own cap...
        let burst: Vec<_> = (0..5).map(|_| admit(&admission, 1, t0)).collect();
        assert!(old
            .iter()
            .chain(&burst)
            .all(|t| !t.evicted().is_cancelled()));
        assert_eq!(admission.counts(), (8, 0));
        // ...but later newcomers from it evict its connections that are old enough and silent,
        // one each; one that has spoken is left alone.
        old[0].mark_progress();
        let _newer: Vec<_> = (0..3).map(|_| admit(&admission, 1, later)).collect();
        assert!(!old[0].evicted().is_cancelled());
        assert_eq!(
            old.iter()
                .chain(&burst)
                .filter(|t| t.evicted().is_cancelled())
                .count(),
            3
        );
        assert!(!other.evicted().is_cancelled(), "another host is untouched");
        assert_eq!(admission.counts(), (8, 0));
    }

    #[test]
    fn authenticated_connections_are_never_evicted() {
        let admission = limits(2, 2, 2);
        let now = Instant::now();
        let first = admit(&admission, 1, now).authenticate().unwrap();
        let second = admit(&admission, 1, now).authenticate().unwrap();
        assert!(matches!(admission.admit(ip(1), None, now), Admit::Busy));
        drop(first);
        let third = admit(&admission, 1, now);
        // The total is full again: a newcomer evicts the pending one, not the authenticated.
        let fourth = admit(&admission, 3, now);
        assert!(third.evicted().is_cancelled());
        assert_eq!(admission.counts(), (1, 1));
        drop((second, fourth));
        assert_eq!(admission.counts(), (0, 0));
    }

    #[test]
    fn ipv6_groups_by_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(group(a), group(b));
        assert_ne!(group(a), group(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(group(mapped), ip(1));
    }
}
