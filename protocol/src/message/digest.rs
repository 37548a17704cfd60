//! Digest (spec §3.11): the BLAKE3 of a whole file, so a client can verify a download that was
//! assembled from several fetches (a resume) as one file.

use bytes::{BufMut, Bytes};

use super::{
    check_mtime_nanos, check_str, expect_empty, get_array, get_i64, get_str, get_u32, get_u64,
    put_str, str_len,
};
use crate::error::DecodeError;

/// ```text
/// path: str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestRequest {
    pub path: String,
}

impl DigestRequest {
    pub fn new(path: impl Into<String>) -> Result<Self, DecodeError> {
        let path = path.into();
        check_str(&path)?;
        Ok(Self { path })
    }

    pub fn encoded_len(&self) -> usize {
        str_len(&self.path)
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        put_str(dst, &self.path);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let path = get_str(&mut src)?;
        expect_empty(&src)?;
        Ok(Self { path })
    }
}

/// The file version the digest describes, and the digest. 52 bytes.
/// ```text
/// size: u64 | mtime_secs: i64 | mtime_nanos: u32 | digest: [u8; 32]
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestResponse {
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// BLAKE3 of the whole file's `size` bytes ([`crate::digest`]).
    pub digest: [u8; 32],
}

impl DigestResponse {
    pub const LEN: usize = 8 + 8 + 4 + 32;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u64(self.size);
        dst.put_i64(self.mtime_secs);
        dst.put_u32(self.mtime_nanos);
        dst.put_slice(&self.digest);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let size = get_u64(&mut src)?;
        let mtime_secs = get_i64(&mut src)?;
        let mtime_nanos = get_u32(&mut src)?;
        let digest = get_array(&mut src)?;
        expect_empty(&src)?;
        check_mtime_nanos(mtime_nanos)?;
        Ok(Self {
            size,
            mtime_secs,
            mtime_nanos,
            digest,
        })
    }
}
