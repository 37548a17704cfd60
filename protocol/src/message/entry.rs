//! Directory entry metadata, shared by list pages and stat responses (spec §3.4).

use bytes::{BufMut, Bytes};

use super::{
    check_mtime_nanos, expect_empty, get_i64, get_str, get_u32, get_u64, get_u8, put_str, str_len,
};
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
    /// Flag on the wire kind byte: the entry is a symbolic link that stays inside the root,
    /// the low bits give the target's kind and a `link` string follows `mode` (spec §3.4).
    /// Only sent in answer to a list request with the link-targets flag.
    pub const LINK_FLAG: u8 = 0x80;
}

/// One directory entry.
///
/// ```text
/// name: str | kind: u8 | size: u64 | mtime_secs: i64 | mtime_nanos: u32 | mode: u32
///   [ | link: str ]   only when kind has bit 0x80 (EntryKind::LINK_FLAG) set
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// For list pages, the path relative to the listed directory (`/`-separated); for stat, the
    /// final component (empty for the root).
    pub name: String,
    pub kind: EntryKind,
    /// Size in bytes: a regular file's length; for anything else what `st_size` says
    /// (directories: file-system dependent; unfollowed symlinks: 0).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch (may be negative).
    pub mtime_secs: i64,
    /// Nanoseconds within the second, below 10^9.
    pub mtime_nanos: u32,
    /// Unix permission bits (the low 12 bits of `st_mode`).
    pub mode: u32,
    /// For a symbolic link that resolves inside the root, listed with the link-targets flag:
    /// the link's own text (e.g. `../docs/a.txt`), while the fields above describe its target.
    /// Encoded as [`EntryKind::LINK_FLAG`] on the kind byte plus a trailing string.
    pub link: Option<String>,
}

impl Entry {
    /// Fixed-size part after the name.
    const FIXED_LEN: usize = 1 + 8 + 8 + 4 + 4;

    pub fn encoded_len(&self) -> usize {
        str_len(&self.name) + Self::FIXED_LEN + self.link.as_deref().map_or(0, str_len)
    }

    /// A kind with [`EntryKind::LINK_FLAG`] set cannot be encoded faithfully (the flag is
    /// driven by `link`), so the flag bit of `kind` is ignored.
    pub fn encode(&self, dst: &mut impl BufMut) {
        put_str(dst, &self.name);
        let kind = self.kind.0 & !EntryKind::LINK_FLAG;
        match &self.link {
            Some(_) => dst.put_u8(kind | EntryKind::LINK_FLAG),
            None => dst.put_u8(kind),
        }
        dst.put_u64(self.size);
        dst.put_i64(self.mtime_secs);
        dst.put_u32(self.mtime_nanos);
        dst.put_u32(self.mode);
        if let Some(link) = &self.link {
            put_str(dst, link);
        }
    }

    /// Reads one entry from the front of `src`.
    pub fn decode(src: &mut Bytes) -> Result<Self, DecodeError> {
        let name = get_str(src)?;
        let wire_kind = get_u8(src)?;
        let kind = EntryKind(wire_kind & !EntryKind::LINK_FLAG);
        let size = get_u64(src)?;
        let mtime_secs = get_i64(src)?;
        let mtime_nanos = get_u32(src)?;
        check_mtime_nanos(mtime_nanos)?;
        let mode = get_u32(src)?;
        let link = if wire_kind & EntryKind::LINK_FLAG != 0 {
            Some(get_str(src)?)
        } else {
            None
        };
        Ok(Self {
            name,
            kind,
            size,
            mtime_secs,
            mtime_nanos,
            mode,
            link,
        })
    }

    /// Decodes a body holding exactly one entry (a stat response).
    pub fn decode_body(mut src: Bytes) -> Result<Self, DecodeError> {
        let entry = Self::decode(&mut src)?;
        expect_empty(&src)?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_entry_carries_its_text_after_the_fixed_fields() {
        let entry = Entry {
            name: "l".into(),
            kind: EntryKind::DIRECTORY,
            size: 4096,
            mtime_secs: 1,
            mtime_nanos: 2,
            mode: 0o755,
            link: Some("../d".into()),
        };
        let mut wire = Vec::new();
        entry.encode(&mut wire);
        assert_eq!(wire.len(), entry.encoded_len());
        assert_eq!(wire[3], EntryKind::LINK_FLAG | 1, "flag on the kind byte");
        assert_eq!(&wire[wire.len() - 6..], b"\x00\x04../d");
        let mut src = Bytes::from(wire);
        assert_eq!(Entry::decode(&mut src).unwrap(), entry);
        assert!(src.is_empty());
        // Without a link the layout is the 27-byte one of old.
        let plain = Entry {
            link: None,
            ..entry
        };
        assert_eq!(plain.encoded_len(), 2 + 1 + 25);
    }
}
