//! Fleet updates (spec/P2P.md §8): a channel key signs small release records; followers learn
//! of them by gossip, fetch the content through the swarm from whoever has it, and install
//! each version atomically.
//!
//! Files: `channel.rs` (keys and channel ids), `record.rs` (the signed release record),
//! `wire.rs` (gossip datagrams, services 0x70-0x72), `gossip.rs` (the sans-IO anti-entropy
//! core), `install.rs` (versions, the `current` link, the apply hook, rollback),
//! `follower.rs` (the tokio shell: socket, manifest fetch, swarm, installs; also what a
//! publisher runs), `lan.rs` (multicast discovery on the local link, §8.9), `status.rs` (the
//! `fleet status` crawl), `cli.rs` (the commands).
//!
//! Membership is this module's own small push-pull protocol rather than `foca`'s SWIM: SWIM
//! disseminates an update a bounded number of times, so a follower offline during a publish
//! would never hear of it without a pull of our own anyway; and an independent implementation
//! must be writable from the spec, which would then have to fix foca's message set and timers.

pub mod channel;
pub mod cli;
pub mod follower;
pub mod gossip;
pub mod install;
pub mod lan;
pub mod record;
pub mod status;
pub mod wire;
