//! Enrol (spec §13.11): a client that holds a one-time code proves it with SPAKE2 and is added
//! to the server's authorised clients. Four bodies, each fixed except the end's strings:
//!
//! ```text
//! C→S REQUEST  EnrolRequest : nameplate u32 | pake_a [u8; 33]            37 bytes
//! S→C RESPONSE EnrolResponse: pake_b [u8; 33] | confirm [u8; 32]         65 bytes
//! C→S DATA     EnrolConfirm : confirm [u8; 32]                           32 bytes
//! S→C END      EnrolEnd     : flags u8 | name str | root str
//! ```
//!
//! A SPAKE2 message is the side byte (`A` = 0x41 from the client, `B` = 0x42 from the server)
//! and a 32-byte Ed25519 group element; the decoder checks the side byte, the group element is
//! checked by SPAKE2 itself (`crate::enrol`).

use bytes::{BufMut, Bytes};

use super::{expect_empty, get_array, get_str, get_u32, get_u8, put_str, str_len};
use crate::error::DecodeError;

/// A SPAKE2 message: side byte and group element.
pub const PAKE_LEN: usize = 33;
/// A key-confirmation MAC (HMAC-SHA256).
pub const CONFIRM_LEN: usize = 32;
/// The side byte of the client's (SPAKE2 side A) message.
pub const SIDE_A: u8 = 0x41;
/// The side byte of the server's (SPAKE2 side B) message.
pub const SIDE_B: u8 = 0x42;

/// `EnrolEnd::flags`: the enrolled client may upload.
pub const ENROL_WRITE: u8 = 0x01;

fn pake(src: &mut Bytes, side: u8, field: &'static str) -> Result<[u8; PAKE_LEN], DecodeError> {
    let pake: [u8; PAKE_LEN] = get_array(src)?;
    if pake[0] != side {
        return Err(DecodeError::InvalidValue {
            field,
            value: pake[0].into(),
        });
    }
    Ok(pake)
}

/// The client's first message: which invite (the code's number) and its SPAKE2 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolRequest {
    /// The code's leading number; 0 is malformed.
    pub nameplate: u32,
    /// SPAKE2 side A's message, starting with [`SIDE_A`].
    pub pake: [u8; PAKE_LEN],
}

impl EnrolRequest {
    pub const LEN: usize = 4 + PAKE_LEN;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u32(self.nameplate);
        dst.put_slice(&self.pake);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let nameplate = get_u32(&mut src)?;
        let pake = pake(&mut src, SIDE_A, "enrol pake side")?;
        expect_empty(&src)?;
        if nameplate == 0 {
            return Err(DecodeError::InvalidValue {
                field: "nameplate",
                value: 0,
            });
        }
        Ok(Self { nameplate, pake })
    }
}

/// The server's SPAKE2 message and its key confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolResponse {
    /// SPAKE2 side B's message, starting with [`SIDE_B`].
    pub pake: [u8; PAKE_LEN],
    pub confirm: [u8; CONFIRM_LEN],
}

impl EnrolResponse {
    pub const LEN: usize = PAKE_LEN + CONFIRM_LEN;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.pake);
        dst.put_slice(&self.confirm);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let pake = pake(&mut src, SIDE_B, "enrol pake side")?;
        let confirm = get_array(&mut src)?;
        expect_empty(&src)?;
        Ok(Self { pake, confirm })
    }
}

/// The client's key confirmation, sent only after the server's has verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolConfirm {
    pub confirm: [u8; CONFIRM_LEN],
}

impl EnrolConfirm {
    pub const LEN: usize = CONFIRM_LEN;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.confirm);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let confirm = get_array(&mut src)?;
        expect_empty(&src)?;
        Ok(Self { confirm })
    }
}

/// The server's end of a successful enrolment: as whom the client is now authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolEnd {
    /// [`ENROL_WRITE`] or 0; other bits are malformed.
    pub flags: u8,
    /// The client's name in the server's authorised clients.
    pub name: String,
    /// The directory it sees as its root, e.g. `team/bob`; empty for the whole root.
    pub root: String,
}

impl EnrolEnd {
    pub fn encoded_len(&self) -> usize {
        1 + str_len(&self.name) + str_len(&self.root)
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.flags);
        put_str(dst, &self.name);
        put_str(dst, &self.root);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let flags = get_u8(&mut src)?;
        let name = get_str(&mut src)?;
        let root = get_str(&mut src)?;
        expect_empty(&src)?;
        if flags & !ENROL_WRITE != 0 {
            return Err(DecodeError::InvalidValue {
                field: "enrol flags",
                value: flags.into(),
            });
        }
        Ok(Self { flags, name, root })
    }
}
