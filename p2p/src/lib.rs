//! Ferry's swarm download: many peers fetch the same files from each other, every message a
//! Ferry frame (same 12-byte header, same session encryption, same error codes). The
//! normative description is `spec/P2P.md`.
//!
//! Modules:
//! - [`addr`]: the socket-address encoding shared by PEX and tracker replies.
//! - [`manifest`]: the canonical manifest, its hostile-input checks, [`manifest::PieceIndex`]
//!   and [`manifest::RelPath`].
//! - [`pieces`]: bitfields, the jailed file store, hashing and verification.
//! - [`wire`]: peer-wire messages (service 0x50) and the swarm key.
//! - [`swarm`]: the sans-IO swarm core (picker, choker, bans); see `src/swarm/STATE.md`.
//! - [`node`]: the tokio shell: listener, peer actors, the swarm actor.
//! - [`tracker`]: the UDP tracker core, its server and its client.
//! - [`dht`]: the Kademlia DHT for content ids: sans-IO core, tokio shell (spec/P2P.md §7).
//! - [`fleet`]: fleet updates: channels, signed releases, gossip, atomic installs (§8).
//! - [`hubpeer`]: peers announced, found and relayed through a ferry-hub (§3.12, HUB.md).
//! - [`source`]: a `ferry-server` used as a swarm source (byte-range fetches).
//! - [`status`]: what a node tried to find peers and what failed, in words.
pub use ferry_protocol::addr;
pub mod dht;
pub mod fleet;
pub mod hubpeer;
pub mod manifest;
pub mod node;
pub mod pieces;
pub mod source;
pub mod status;
pub mod swarm;
pub mod tracker;
pub mod wire;
