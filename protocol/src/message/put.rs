//! Put (spec §3.12): an upload. The request names the destination and announces the file (size,
//! mode, whole-file BLAKE3); the server answers where it will continue (a resumable partial it
//! already holds) and how far the client may send (flow control); data chunks follow; both
//! sides end with the file's length and digest.

use bytes::{BufMut, Bytes};

use super::{
    check_str, expect_empty, get_array, get_str, get_u32, get_u64, get_u8, put_str, str_len,
};
use crate::error::DecodeError;

/// Flag bits of a [`PutRequest`] (spec §3.12).
pub mod put_flags {
    /// Replace an existing file under the destination name.
    pub const OVERWRITE: u8 = 0x01;
    /// Create missing parent directories (like `mkdir -p`).
    pub const PARENTS: u8 = 0x02;
    /// Discard any partial upload the server holds and start at byte 0.
    pub const RESTART: u8 = 0x04;
    /// Make the directory `path` instead of storing a file (`mkdir`, or `mkdir -p` with
    /// PARENTS): size 0, an all-zero digest, neither OVERWRITE nor RESTART.
    pub const DIRECTORY: u8 = 0x08;
    /// Every defined bit; the others are reserved and must be zero.
    pub const ALL: u8 = OVERWRITE | PARENTS | RESTART | DIRECTORY;
}

/// The largest `mode` a put may carry: the permission, setuid, setgid and sticky bits.
pub const MAX_MODE: u32 = 0o7777;

/// ```text
/// path: str | size: u64 | mode: u32 | flags: u8 | digest: [u8; 32]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRequest {
    /// The destination file, path syntax as in spec §3.5.
    pub path: String,
    /// The whole file's length in bytes.
    pub size: u64,
    /// Unix permission bits wanted for the file (at most [`MAX_MODE`]).
    pub mode: u32,
    /// [`put_flags`] bits.
    pub flags: u8,
    /// BLAKE3 of all `size` bytes ([`crate::digest`]), computed before the upload starts.
    pub digest: [u8; 32],
}

impl PutRequest {
    pub fn new(
        path: impl Into<String>,
        size: u64,
        mode: u32,
        flags: u8,
        digest: [u8; 32],
    ) -> Result<Self, DecodeError> {
        let path = path.into();
        check_str(&path)?;
        Ok(Self {
            path,
            size,
            mode: mode & MAX_MODE,
            flags: flags & put_flags::ALL,
            digest,
        })
    }

    pub fn overwrite(&self) -> bool {
        self.flags & put_flags::OVERWRITE != 0
    }

    pub fn parents(&self) -> bool {
        self.flags & put_flags::PARENTS != 0
    }

    pub fn restart(&self) -> bool {
        self.flags & put_flags::RESTART != 0
    }

    /// A request to make the directory `path` (with `mode`), rather than to upload a file:
    /// how `put -r` carries an empty directory.
    pub fn directory(
        path: impl Into<String>,
        mode: u32,
        parents: bool,
    ) -> Result<Self, DecodeError> {
        let parents = if parents { put_flags::PARENTS } else { 0 };
        Self::new(path, 0, mode, put_flags::DIRECTORY | parents, [0; 32])
    }

    pub fn is_directory(&self) -> bool {
        self.flags & put_flags::DIRECTORY != 0
    }

    pub fn encoded_len(&self) -> usize {
        str_len(&self.path) + 8 + 4 + 1 + 32
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        put_str(dst, &self.path);
        dst.put_u64(self.size);
        dst.put_u32(self.mode);
        dst.put_u8(self.flags);
        dst.put_slice(&self.digest);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let path = get_str(&mut src)?;
        let size = get_u64(&mut src)?;
        let mode = get_u32(&mut src)?;
        let flags = get_u8(&mut src)?;
        let digest = get_array(&mut src)?;
        expect_empty(&src)?;
        if mode > MAX_MODE {
            return Err(DecodeError::InvalidValue {
                field: "put mode",
                value: mode.into(),
            });
        }
        if flags & !put_flags::ALL != 0 {
            return Err(DecodeError::InvalidValue {
                field: "put flags",
                value: flags.into(),
            });
        }
        // A directory carries no content: anything that describes some is a malformed request.
        if flags & put_flags::DIRECTORY != 0 {
            if flags & (put_flags::OVERWRITE | put_flags::RESTART) != 0 {
                return Err(DecodeError::InvalidValue {
                    field: "put directory flags",
                    value: flags.into(),
                });
            }
            if size != 0 || digest != [0; 32] {
                return Err(DecodeError::InvalidValue {
                    field: "put directory size or digest",
                    value: size,
                });
            }
        }
        Ok(Self {
            path,
            size,
            mode,
            flags,
            digest,
        })
    }
}

/// The server's answer, first once before any data and then again as it makes room (flow
/// control). 48 bytes.
/// ```text
/// offset: u64 | limit: u64 | prefix: [u8; 32]
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResponse {
    /// Bytes of the file the server holds: in the first response, where the data must start
    /// (a resumed partial, or 0); later, how many it has received and written.
    pub offset: u64,
    /// The client may send data up to this file offset (exclusive), and no further.
    pub limit: u64,
    /// BLAKE3 of the first `offset` bytes the server holds, so the client can check a partial
    /// before continuing it rather than trust it.
    pub prefix: [u8; 32],
}

impl PutResponse {
    pub const LEN: usize = 8 + 8 + 32;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u64(self.offset);
        dst.put_u64(self.limit);
        dst.put_slice(&self.prefix);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let offset = get_u64(&mut src)?;
        let limit = get_u64(&mut src)?;
        let prefix = get_array(&mut src)?;
        expect_empty(&src)?;
        if limit < offset {
            return Err(DecodeError::InvalidValue {
                field: "put limit",
                value: limit,
            });
        }
        Ok(Self {
            offset,
            limit,
            prefix,
        })
    }
}

/// The end of an upload, the same layout both ways: from the client, the file it sent; from
/// the server (the request's final frame), the file now stored under the destination name.
/// ```text
/// bytes: u64 | digest: [u8; 32]
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutEnd {
    /// The whole file's length.
    pub bytes: u64,
    /// BLAKE3 of the whole file.
    pub digest: [u8; 32],
}

impl PutEnd {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_request_carries_no_content() {
        let good = PutRequest::directory("a/b", 0o755, true).unwrap();
        assert!(good.is_directory() && good.parents() && good.size == 0);
        let mut bytes = Vec::new();
        good.encode(&mut bytes);
        assert_eq!(PutRequest::decode(bytes.into()), Ok(good));
        for (size, flags, digest) in [
            (1, put_flags::DIRECTORY, [0; 32]),
            (0, put_flags::DIRECTORY, [1; 32]),
            (0, put_flags::DIRECTORY | put_flags::OVERWRITE, [0; 32]),
            (0, put_flags::DIRECTORY | put_flags::RESTART, [0; 32]),
        ] {
            let request = PutRequest {
                path: "d".into(),
                size,
                mode: 0o755,
                flags,
                digest,
            };
            let mut bytes = Vec::new();
            request.encode(&mut bytes);
            assert!(
                matches!(
                    PutRequest::decode(bytes.into()),
                    Err(DecodeError::InvalidValue { .. })
                ),
                "{request:?}"
            );
        }
    }

    #[test]
    fn undefined_flags_and_modes_are_refused() {
        let good = PutRequest::new("a", 5, 0o644, put_flags::OVERWRITE, [1; 32]).unwrap();
        let mut bytes = Vec::new();
        good.encode(&mut bytes);
        assert_eq!(PutRequest::decode(bytes.clone().into()), Ok(good));
        // flags byte: after 2 + 1 (path) + 8 + 4.
        let mut bad = bytes.clone();
        bad[15] = 0x10;
        assert!(matches!(
            PutRequest::decode(bad.into()),
            Err(DecodeError::InvalidValue {
                field: "put flags",
                value: 16
            })
        ));
        let mut bad = bytes;
        bad[11..15].copy_from_slice(&0o10000u32.to_be_bytes());
        assert!(matches!(
            PutRequest::decode(bad.into()),
            Err(DecodeError::InvalidValue {
                field: "put mode",
                ..
            })
        ));
    }

    #[test]
    fn a_limit_below_the_offset_is_refused() {
        let mut bytes = Vec::new();
        PutResponse {
            offset: 10,
            limit: 9,
            prefix: [0; 32],
        }
        .encode(&mut bytes);
        assert!(PutResponse::decode(bytes.into()).is_err());
    }
}
