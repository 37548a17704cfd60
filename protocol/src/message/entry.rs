//! Directory entry metadata, shared by list pages and stat responses (spec §3.4).

use bytes::{BufMut, Bytes};

use super::{expect_empty, get_i64, get_str, get_u32, get_u64, get_u8, put_str, str_len};
use crate::error::DecodeError;

/// What an entry is. Unknown values survive decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKind(pub u8);

impl EntryKind {
    pub const FILE: Self = Self(0);
    pub const DIRECTORY: Self = Self(1);
    pub const SYMLINK: Self = Self(2);
    /// FIFOs, sockets, devices: listed, never opened.
    pub const OTHER: Self = Self(3);
}

/// One directory entry.
///
/// ```text
/// name: str | kind: u8 | size: u64 | mtime_secs: i64 | mtime_nanos: u32 | mode: u32
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// For list pages, the path relative to the listed directory (`/`-separated); for stat, the
    /// final component (empty for the root).
    pub name: String,
    pub kind: EntryKind,
    /// Size in bytes (for symlinks, the link itself).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch (may be negative).
    pub mtime_secs: i64,
    /// Nanoseconds within the second, below 10^9.
    pub mtime_nanos: u32,
    /// Unix permission bits (the low 12 bits of `st_mode`).
    pub mode: u32,
}

impl Entry {
    /// Fixed-size part after the name.
    const FIXED_LEN: usize = 1 + 8 + 8 + 4 + 4;

    pub fn encoded_len(&self) -> usize {
        str_len(&self.name) + Self::FIXED_LEN
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        put_str(dst, &self.name);
        dst.put_u8(self.kind.0);
        dst.put_u64(self.size);
        dst.put_i64(self.mtime_secs);
        dst.put_u32(self.mtime_nanos);
        dst.put_u32(self.mode);
    }

    /// Reads one entry from the front of `src`.
    pub fn decode(src: &mut Bytes) -> Result<Self, DecodeError> {
        let name = get_str(src)?;
        let kind = EntryKind(get_u8(src)?);
        let size = get_u64(src)?;
        let mtime_secs = get_i64(src)?;
        let mtime_nanos = get_u32(src)?;
        if mtime_nanos >= 1_000_000_000 {
            return Err(DecodeError::InvalidValue {
                field: "mtime_nanos",
                value: mtime_nanos.into(),
            });
        }
        let mode = get_u32(src)?;
        Ok(Self {
            name,
            kind,
            size,
            mtime_secs,
            mtime_nanos,
            mode,
        })
    }

    /// Decodes a body holding exactly one entry (a stat response).
    pub fn decode_body(mut src: Bytes) -> Result<Self, DecodeError> {
        let entry = Self::decode(&mut src)?;
        expect_empty(&src)?;
        Ok(entry)
    }
}
