//! Getting a connection through NATs (issue 12): TCP simultaneous open and QUIC over a punched
//! UDP path, each handing back a byte stream that carries ordinary Ferry frames, so the
//! end-to-end identity handshake runs over it unchanged (spec/PROTOCOL.md §14).
//!
//! Modules:
//! - [`tcp`]: sockets bound with address/port reuse, so a punch leaves through the NAT mapping
//!   the hub observed, and [`tcp::simultaneous_open`] (§14.3).
//! - [`quic`]: a quinn endpoint over one UDP socket that still lets the caller send and receive
//!   its own (hub, punch) datagrams on that socket, and [`quic::QuicEndpoint::punch_and_connect`]
//!   (§14.2, §14.4); the result is one bidirectional stream, [`quic::QuicStream`].
//! - [`path`]: [`Path`], which kind of path a connection took, for `ferry ping` and logs.
//!
//! Nothing here decides *when* to punch or with whom: the hub (ferry-hub) exchanges the
//! addresses, picks the roles and the start time, and calls these functions on both sides.

pub mod path;
pub mod quic;
pub mod tcp;

pub use path::Path;
pub use quic::{QuicEndpoint, QuicStream, Role};
