//! Directory listing (spec §3.5): request, pages of entries, end.

use bytes::{BufMut, Bytes};

use super::{check_str, expect_empty, get_str, get_u16, get_u64, get_u8, put_str, str_len, Entry};
use crate::error::DecodeError;

/// Flag bit: walk subdirectories too.
const FLAG_RECURSIVE: u8 = 0x01;
/// Flag bit: mark symlinks that stay inside the root and give their text (spec §3.5). Bit
/// 0x02 stays undefined (a negative vector rejects it).
const FLAG_LINKS: u8 = 0x80;

/// ```text
/// path: str | flags: u8 | max_depth: u16
/// ```
/// `path` is relative to the served root, `/`-separated; `""` is the root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    pub path: String,
    pub recursive: bool,
    /// For recursive walks: how many directory levels below `path` to descend.
    pub max_depth: u16,
    /// Ask for link targets: entries that are symlinks resolving inside the root carry
    /// [`Entry::link`](super::Entry::link). Servers that predate the flag reject it.
    pub links: bool,
}

impl ListRequest {
    pub fn new(
        path: impl Into<String>,
        recursive: bool,
        max_depth: u16,
    ) -> Result<Self, DecodeError> {
        let path = path.into();
        check_str(&path)?;
        Ok(Self {
            path,
            recursive,
            max_depth,
            links: false,
        })
    }

    /// Asks for link targets (see [`ListRequest::links`]).
    pub fn with_links(mut self, links: bool) -> Self {
        self.links = links;
        self
    }

    pub fn encoded_len(&self) -> usize {
        str_len(&self.path) + 1 + 2
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        put_str(dst, &self.path);
        let mut flags = 0;
        if self.recursive {
            flags |= FLAG_RECURSIVE;
        }
        if self.links {
            flags |= FLAG_LINKS;
        }
        dst.put_u8(flags);
        dst.put_u16(self.max_depth);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let path = get_str(&mut src)?;
        let flags = get_u8(&mut src)?;
        // Unknown flags are rejected so that a new flag always comes with a version bump.
        if flags & !(FLAG_RECURSIVE | FLAG_LINKS) != 0 {
            return Err(DecodeError::InvalidValue {
                field: "list flags",
                value: flags.into(),
            });
        }
        let max_depth = get_u16(&mut src)?;
        expect_empty(&src)?;
        Ok(Self {
            path,
            recursive: flags & FLAG_RECURSIVE != 0,
            max_depth,
            links: flags & FLAG_LINKS != 0,
        })
    }
}

/// One page of a listing:
/// ```text
/// count: u16 | entry * count
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    pub entries: Vec<Entry>,
}

impl ListPage {
    pub fn encoded_len(&self) -> usize {
        2 + self.entries.iter().map(Entry::encoded_len).sum::<usize>()
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        // Senders keep pages under the frame limit, far below 65 535 entries.
        dst.put_u16(self.entries.len() as u16);
        for entry in &self.entries {
            entry.encode(dst);
        }
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let count = get_u16(&mut src)? as usize;
        // Each entry takes at least 27 bytes, so `count` cannot make us over-allocate.
        let mut entries = Vec::with_capacity(count.min(src.len() / 27));
        for _ in 0..count {
            entries.push(Entry::decode(&mut src)?);
        }
        expect_empty(&src)?;
        Ok(Self { entries })
    }
}

/// The end of a listing: `entries: u64`, the total number of entries sent in all pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEnd {
    pub entries: u64,
}

impl ListEnd {
    pub const LEN: usize = 8;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u64(self.entries);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let entries = get_u64(&mut src)?;
        expect_empty(&src)?;
        Ok(Self { entries })
    }
}
