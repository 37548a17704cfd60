//! Handshake bodies (spec §4.2).

use bytes::{BufMut, Bytes};

use super::{expect_empty, get_array, get_u8};
use crate::error::DecodeError;

/// Whether bodies after the handshake are encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode(pub u8);

impl Mode {
    /// AES-256-CBC + HMAC-SHA256 on every body (the default).
    pub const ENCRYPTED: Self = Self(0x00);
    /// Authenticated handshake, then bodies in the clear. Servers refuse it unless configured.
    pub const PLAINTEXT: Self = Self(0x01);

    fn check(self) -> Result<Self, DecodeError> {
        match self {
            Self::ENCRYPTED | Self::PLAINTEXT => Ok(self),
            Self(other) => Err(DecodeError::InvalidValue {
                field: "mode",
                value: other.into(),
            }),
        }
    }
}

/// ```text
/// min_version: u8 | max_version: u8 | mode: u8 | nonce: [u8; 32] | key_share: [u8; 32]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub min_version: u8,
    pub max_version: u8,
    pub mode: Mode,
    pub nonce: [u8; 32],
    /// The client's ephemeral X25519 public key.
    pub key_share: [u8; 32],
}

impl ClientHello {
    pub const LEN: usize = 3 + 32 + 32;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.min_version);
        dst.put_u8(self.max_version);
        dst.put_u8(self.mode.0);
        dst.put_slice(&self.nonce);
        dst.put_slice(&self.key_share);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let min_version = get_u8(&mut src)?;
        let max_version = get_u8(&mut src)?;
        if min_version == 0 || min_version > max_version {
            return Err(DecodeError::InvalidValue {
                field: "version range",
                value: u64::from(min_version) << 8 | u64::from(max_version),
            });
        }
        let mode = Mode(get_u8(&mut src)?).check()?;
        let nonce = get_array(&mut src)?;
        let key_share = get_array(&mut src)?;
        expect_empty(&src)?;
        Ok(Self {
            min_version,
            max_version,
            mode,
            nonce,
            key_share,
        })
    }
}

/// ```text
/// version: u8 | mode: u8 | nonce: [u8; 32] | key_share: [u8; 32]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The version chosen from the client's range; every later frame carries it.
    pub version: u8,
    /// Echo of the client's mode; a different value is a downgrade and fails the handshake.
    pub mode: Mode,
    pub nonce: [u8; 32],
    pub key_share: [u8; 32],
}

impl ServerHello {
    pub const LEN: usize = 2 + 32 + 32;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.version);
        dst.put_u8(self.mode.0);
        dst.put_slice(&self.nonce);
        dst.put_slice(&self.key_share);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let version = get_u8(&mut src)?;
        let mode = Mode(get_u8(&mut src)?).check()?;
        let nonce = get_array(&mut src)?;
        let key_share = get_array(&mut src)?;
        expect_empty(&src)?;
        Ok(Self {
            version,
            mode,
            nonce,
            key_share,
        })
    }
}

/// Key confirmation: `HMAC-SHA256(confirm_key, transcript_hash)` (spec §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub mac: [u8; 32],
}

impl Finished {
    pub const LEN: usize = 32;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.mac);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let mac = get_array(&mut src)?;
        expect_empty(&src)?;
        Ok(Self { mac })
    }
}
