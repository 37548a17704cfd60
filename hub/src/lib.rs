//! ferry-hub (issue 12): names, presence, rendezvous and relay for Ferry nodes that cannot be
//! dialled directly, specified in `spec/HUB.md`.
//!
//! Modules:
//! - [`wire`]: the hub's services (0x60–0x69) on the Ferry codec, their bodies and error codes.
//! - [`names`]: name syntax and the durable store (an fsynced append-only log).
//! - [`throttle`]: token buckets per identity and per address.
//! - [`server`]: the hub itself ([`Hub`]): the identity handshake, the services, relay splicing.
//! - [`content`]: content ids announced through the hub, for swarms (ANNOUNCE, PEERS).
//! - [`client`]: a caller's connection to a hub ([`HubConn`]).
//! - [`node`]: a node's presence (control connection, keep-alive, reconnection) and the
//!   [`RelayAcceptor`] that turns relay requests into incoming streams.
//! - `fuzz`: the fuzzing entry point for the bodies.
//! - [`punch`]: one side of a hub-coordinated punch (TCP simultaneous open and QUIC raced)
//!   and the UDP reflect exchange.
//! - `codec`: raw frames over a session, and a stream that yields bytes already read first.
//!
//! Every hub connection runs the Noise XX identity handshake (PROTOCOL.md §13), so the hub knows
//! each caller's node id; a relayed stream carries the end-to-end handshake between client and
//! node, so the hub forwards only ciphertext.

pub mod client;
pub mod codec;
#[doc(hidden)]
pub mod fuzz;
pub mod names;
pub mod node;
pub mod punch;
pub mod server;
pub mod throttle;
pub mod wire;

pub use ferry_traversal as traversal;

pub use client::{HubConn, HubError, RelayStream};
pub use node::{spawn_presence, Presence, PresenceConfig, RelayAcceptor, Status};
/// Content ids announced through the hub (HUB.md §3.8, §3.9); it lives inside [`server`],
/// whose presences it reads.
pub use server::content;
pub use server::{Hub, HubConfig, HubLimits, HubStats, Registration};
