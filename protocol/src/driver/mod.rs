//! One framed connection driver for every role (server, client, peer), over any
//! `AsyncRead + AsyncWrite` stream once it is split ([`Split`](crate::transport::Split)).
//!
//! ```text
//!   read half --> FrameReader --frames--> role's dispatch (routes, services, swarm events)
//!                  (buffer, RecvHalf, frame deadline, EOF vs truncated vs bad record)
//!
//!   role's queues --Outbox--> FrameWriter --one writev per wake--> write half
//!                  (Batch: SendHalf seals in wire order, zero-copy plaintext data,
//!                   data chunks sealed together, write timeout, shutdown on close)
//! ```
//!
//! The driver only moves bytes and arms timers. Policy stays with the role: which queues exist
//! and how they are bounded (backpressure), which frames are answered where, keep-alive and
//! idle decisions, request-id rules (spec §8.2, [`crate::conn::RequestTable`]).
//!
//! Two properties every role gets from here:
//! - **Only the writer seals.** Sealing assigns the implicit sequence numbers (spec §5.5), so
//!   the [`SendHalf`](crate::SendHalf) lives in the writer's [`Batch`] and nowhere else.
//! - **One write per wake.** Everything queued when the writer wakes (up to [`WRITE_BATCH`]
//!   bytes) goes out in one `writev`, so a small response (response, data, end) is one
//!   syscall, not three.

mod reader;
mod writer;

pub use reader::{FrameReader, ReadEnd};
pub use writer::{Batch, FrameWriter, Outbox, WriteError, WRITE_BATCH, ZERO_COPY_MIN};
