//! The fixed 12-byte frame header (spec §2) and the wire numbers it carries.
//!
//! ```text
//!  0        1        2        3        4                                  8                                  12
//! +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//! |  type  | magic  |version |service |             request id            |          body length              |
//! +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//! ```
//!
//! All fields are big-endian. `length` counts the body bytes as they travel on the wire, so for an
//! encrypted frame it includes the IV and the tag.

use std::fmt;

use bytes::{Buf, BufMut};

use crate::error::DecodeError;

/// Size of the header in bytes.
pub const HEADER_LEN: usize = 12;

/// The second byte of every frame. Anything else is rejected before any other work (spec §2.1).
pub const MAGIC: u8 = 0xFE;

/// The version in the header of frames outside a session: the handshake's, errors sent before
/// a version is agreed, the tracker's and the DHT's (spec §4.3). [`Header::new`] writes it;
/// frames inside a session carry the negotiated version instead, up to
/// [`crate::handshake::MAX_VERSION`].
pub const VERSION: u8 = 1;

/// The oldest protocol version this implementation speaks.
pub const MIN_VERSION: u8 = 1;

/// Declares a `u8` wire-number newtype with named constants. Unknown values survive decoding and
/// print in hex, so a receiver can report exactly what it did not understand.
macro_rules! wire_u8 {
    ($(#[$doc:meta])* $name:ident { $($(#[$cdoc:meta])* $konst:ident = $value:expr,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u8);

        impl $name {
            $($(#[$cdoc])* pub const $konst: Self = Self($value);)*

            /// The constant's name, if this value has one.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$konst => Some(stringify!($konst)),)*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "{}(0x{:02x})", stringify!($name), self.0),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

wire_u8! {
    /// The `type` byte: what kind of message the body holds (spec §2.2).
    FrameType {
        /// Client's first handshake message.
        CLIENT_HELLO = 0x01,
        /// Server's handshake reply: chosen version and mode, its share.
        SERVER_HELLO = 0x02,
        /// Server's key confirmation.
        SERVER_FINISHED = 0x03,
        /// Client's key confirmation; requests may follow it.
        CLIENT_FINISHED = 0x04,
        /// Identity handshake, Noise XX message 1: client's ephemeral key and offer (§13).
        NOISE_1 = 0x08,
        /// Identity handshake, Noise XX message 2: server's keys and choice (§13).
        NOISE_2 = 0x09,
        /// Identity handshake, Noise XX message 3: client's static key; requests may follow.
        NOISE_3 = 0x0A,
        /// A request; the service byte says which.
        REQUEST = 0x10,
        /// A response to a request (for list, one page of entries).
        RESPONSE = 0x11,
        /// One chunk of a data stream (fetch).
        DATA = 0x12,
        /// The end of a stream, with totals.
        END = 0x13,
        /// An error answering a request, or ending the connection when the id is 0.
        ERROR = 0x14,
        /// The client abandons a request it sent.
        CANCEL = 0x15,
        /// Keep-alive probe with an arbitrary payload.
        PING = 0x20,
        /// Echo of a ping's payload.
        PONG = 0x21,
    }
}

wire_u8! {
    /// The `service` byte: which service a message belongs to (spec §2.3).
    ///
    /// `0x40..=0x4F` is reserved for the tracker, `0x50..=0x5F` for the peer wire and
    /// `0xF0..=0xFF` for private experiments.
    Service {
        /// Handshake messages and connection-level errors.
        HANDSHAKE = 0x00,
        /// Directory listing.
        LIST = 0x01,
        /// One entry's metadata.
        STAT = 0x02,
        /// Whole-file or byte-range fetch.
        FETCH = 0x03,
        /// Keep-alive and round-trip measurement.
        ECHO = 0x04,
        /// The BLAKE3 digest of a whole file (verifies a resumed download).
        DIGEST = 0x05,
        /// An upload: the client sends a file, resumable, verified end to end (spec §3.12).
        PUT = 0x06,
        /// Enrolment with a one-time code (SPAKE2), only in an enrolment session (spec §13.11).
        ENROL = 0x07,
        /// An offer of files to a receiver, answered per file, before they go by PUT
        /// (spec §3.13).
        OFFER = 0x08,
    }
}

impl Service {
    /// Services reserved for the tracker (spec §2.3).
    pub const TRACKER_RANGE: std::ops::RangeInclusive<u8> = 0x40..=0x4F;
    /// Services reserved for the peer wire protocol (spec §2.3).
    pub const PEER_RANGE: std::ops::RangeInclusive<u8> = 0x50..=0x5F;
}

/// A request id. Every frame answering a request carries the id of that request. Id 0 is the
/// connection itself: handshake frames and connection-fatal errors use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RequestId(pub u32);

impl RequestId {
    /// The connection-level id.
    pub const CONNECTION: Self = Self(0);
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub kind: FrameType,
    pub version: u8,
    pub service: Service,
    pub id: RequestId,
    /// Body length on the wire.
    pub length: u32,
}

impl Header {
    /// A header of version [`VERSION`] (frames outside a session).
    pub fn new(kind: FrameType, service: Service, id: RequestId, length: u32) -> Self {
        Self {
            kind,
            version: VERSION,
            service,
            id,
            length,
        }
    }

    /// Appends the 12 header bytes.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.kind.0);
        dst.put_u8(MAGIC);
        dst.put_u8(self.version);
        dst.put_u8(self.service.0);
        dst.put_u32(self.id.0);
        dst.put_u32(self.length);
    }

    /// The header as an array, e.g. to feed a MAC.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.encode(&mut &mut out[..]);
        out
    }

    /// Parses a header from exactly its 12 bytes, checking only the magic. Version and length
    /// limits are the decoder's policy ([`crate::frame::FrameDecoder`]).
    pub fn decode(mut src: &[u8]) -> Result<Self, DecodeError> {
        if src.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                needed: HEADER_LEN,
                got: src.len(),
            });
        }
        let kind = FrameType(src.get_u8());
        let magic = src.get_u8();
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        Ok(Self {
            kind,
            version: src.get_u8(),
            service: Service(src.get_u8()),
            id: RequestId(src.get_u32()),
            length: src.get_u32(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_network_byte_order() {
        let header = Header::new(
            FrameType::DATA,
            Service::FETCH,
            RequestId(0x0102_0304),
            65_536,
        );
        let bytes = header.to_bytes();
        assert_eq!(
            bytes,
            [0x12, 0xFE, 0x01, 0x03, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x00]
        );
        assert_eq!(Header::decode(&bytes).unwrap(), header);
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut bytes = Header::new(FrameType::PING, Service::ECHO, RequestId(1), 0).to_bytes();
        bytes[1] = 0x00;
        assert_eq!(Header::decode(&bytes), Err(DecodeError::BadMagic(0)));
    }

    #[test]
    fn unknown_wire_numbers_print_in_hex() {
        assert_eq!(format!("{:?}", FrameType(0x7f)), "FrameType(0x7f)");
        assert_eq!(format!("{:?}", Service::FETCH), "FETCH");
    }
}
