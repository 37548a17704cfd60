//! Fetch (spec §3.7): request, response header, data chunks, end with a BLAKE3 digest.

use bytes::{BufMut, Bytes};

use super::{
    check_mtime_nanos, check_str, expect_empty, get_array, get_i64, get_str, get_u32, get_u64,
    put_str, str_len,
};
use crate::error::DecodeError;

/// A `length` meaning "to the end of the file".
pub const TO_END: u64 = u64::MAX;

/// ```text
/// path: str | offset: u64 | length: u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub path: String,
    /// First byte to send.
    pub offset: u64,
    /// How many bytes, or [`TO_END`].
    pub length: u64,
}

impl FetchRequest {
    pub fn new(path: impl Into<String>, offset: u64, length: u64) -> Result<Self, DecodeError> {
        let path = path.into();
        check_str(&path)?;
        Ok(Self {
            path,
            offset,
            length,
        })
    }

    pub fn encoded_len(&self) -> usize {
        str_len(&self.path) + 16
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        put_str(dst, &self.path);
        dst.put_u64(self.offset);
        dst.put_u64(self.length);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let path = get_str(&mut src)?;
        let offset = get_u64(&mut src)?;
        let length = get_u64(&mut src)?;
        expect_empty(&src)?;
        Ok(Self {
            path,
            offset,
            length,
        })
    }
}

/// Sent before the data: what the file is and which bytes will follow.
/// ```text
/// size: u64 | mtime_secs: i64 | mtime_nanos: u32 | offset: u64 | length: u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchResponse {
    /// Size of the whole file when the fetch started.
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// First byte that will be sent.
    pub offset: u64,
    /// Exactly how many bytes the data frames will carry.
    pub length: u64,
}

impl FetchResponse {
    pub const LEN: usize = 8 + 8 + 4 + 8 + 8;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u64(self.size);
        dst.put_i64(self.mtime_secs);
        dst.put_u32(self.mtime_nanos);
        dst.put_u64(self.offset);
        dst.put_u64(self.length);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let size = get_u64(&mut src)?;
        let mtime_secs = get_i64(&mut src)?;
        let mtime_nanos = get_u32(&mut src)?;
        let offset = get_u64(&mut src)?;
        let length = get_u64(&mut src)?;
        expect_empty(&src)?;
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(DecodeError::InvalidValue {
                field: "fetch range",
                value: offset,
            });
        }
        check_mtime_nanos(mtime_nanos)?;
        Ok(Self {
            size,
            mtime_secs,
            mtime_nanos,
            offset,
            length,
        })
    }
}

/// The end of a fetch.
/// ```text
/// bytes: u64 | digest: [u8; 32]
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchEnd {
    /// Total data bytes sent for this request.
    pub bytes: u64,
    /// BLAKE3 of exactly those bytes, for end-to-end verification ([`crate::digest`]).
    pub digest: [u8; 32],
}

impl FetchEnd {
    pub const LEN: usize = 8 + 32;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u64(self.bytes);
        dst.put_slice(&self.digest);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let bytes = get_u64(&mut src)?;
        let digest = get_array(&mut src)?;
        expect_empty(&src)?;
        Ok(Self { bytes, digest })
    }
}
