//! Manifests: the description of what a swarm distributes (spec/P2P.md §2).
//!
//! A manifest lists relative file paths and sizes, the piece size and one SHA-256 hash per piece,
//! plus where to find peers (trackers) and byte-range sources (ferry servers). It travels as a
//! canonical binary encoding, so that every holder computes the same [`ContentId`].
//!
//! ```text
//!  info section (hashed into the content id)
//!  +----------+---------+---------+--------------+--------------+
//!  | magic 8  | ver u8  | alg u8  | piece_size   | file_count   |
//!  | FERRYMF1 |  0x01   |  0x01   |    u32       |    u32       |
//!  +----------+---------+---------+--------------+--------------+
//!  file_count × ( path_len u16 | path utf-8 | size u64 )   sorted by path bytes, strictly
//!  piece_count u32 | piece_count × 32-byte SHA-256
//!  sources section (not hashed)
//!  tracker_count u8 | tracker_count × ( len u16 | url utf-8 )
//!  server_count u8  | server_count  × ( len u16 | url utf-8 )
//! ```
//!
//! Manifests from elsewhere are hostile. [`Manifest::decode`] checks every limit and path rule
//! before anything else may use the data, and the only way to get a [`PieceIndex`] or a
//! [`RelPath`] is through a manifest that passed those checks (parse, don't validate).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use bytes::{Buf, BufMut};
use ferry_jail::PathError;
use ferry_protocol::ErrorCode;
use sha2::{Digest, Sha256};

/// A manifest file path: the jail's path type, parsed by [`parse_path`].
pub use ferry_jail::RelPath;

/// First bytes of every manifest file.
pub const MAGIC: [u8; 8] = *b"FERRYMF1";
/// The manifest format version this implementation writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Hash algorithm byte for SHA-256, the only one defined.
pub const HASH_SHA256: u8 = 1;

/// Smallest allowed piece size; one block (spec/P2P.md §2.3).
pub const MIN_PIECE_SIZE: u32 = 16 * 1024;
/// Largest allowed piece size: pieces are assembled in memory before hashing.
pub const MAX_PIECE_SIZE: u32 = 16 * 1024 * 1024;
/// Piece sizes [`choose_piece_size`] picks from.
pub const AUTO_PIECE_RANGE: (u32, u32) = (64 * 1024, 4 * 1024 * 1024);
/// Most files one manifest may list.
pub const MAX_FILES: u32 = 1 << 20;
/// Most components one path may have.
pub const MAX_DEPTH: usize = 32;
/// Longest path in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component in bytes (the common file-system limit).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Largest total size: 1 PiB, so every offset computation fits u64 with room to spare.
pub const MAX_TOTAL_SIZE: u64 = 1 << 50;
/// Most pieces: keeps a bitfield message within 64 KiB (8 TiB at 16 MiB pieces).
pub const MAX_PIECES: u32 = 1 << 19;
/// Most trackers or servers listed.
pub const MAX_SOURCES: usize = 16;
/// Longest tracker or server URL in bytes.
pub const MAX_URL_LEN: usize = 1024;
/// Largest manifest file accepted from disk.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;

/// A manifest was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not a ferry manifest (bad magic)")]
    BadMagic,
    #[error("manifest format version {0} not supported (expected 1)")]
    UnsupportedVersion(u8),
    #[error("hash algorithm {0} not supported (expected 1, sha-256)")]
    UnsupportedHash(u8),
    #[error("truncated: needed {needed} bytes, {got} left")]
    Truncated { needed: usize, got: usize },
    #[error("{0} trailing bytes after the manifest")]
    TrailingBytes(usize),
    #[error("piece size {0} is not a power of two in 16384..=16777216")]
    BadPieceSize(u32),
    #[error("{0} files exceed the limit of 1048576")]
    TooManyFiles(u64),
    #[error("total size overflows the limit of 2^50 bytes")]
    TooLarge,
    #[error("{0} pieces exceed the limit of 524288; use a larger piece size")]
    TooManyPieces(u64),
    #[error("piece count {got} does not match the sizes, which need {expected}")]
    PieceCountMismatch { got: u64, expected: u64 },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("files are not in canonical order at {0:?} (sorted, no duplicates)")]
    NotCanonical(String),
    #[error("duplicate path {0:?}")]
    Duplicate(String),
    #[error("{0:?} is both a file and a directory")]
    FileDirConflict(String),
    #[error("{0} sources exceed the limit of 16")]
    TooManySources(usize),
    #[error("invalid source url: {0}")]
    BadSource(&'static str),
    #[error("string is not valid utf-8")]
    InvalidUtf8,
}

impl ManifestError {
    /// The wire code for this rejection.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidPath { .. }
            | Self::Duplicate(_)
            | Self::FileDirConflict(_)
            | Self::NotCanonical(_) => ErrorCode::INVALID_PATH,
            Self::TooManyFiles(_) | Self::TooLarge | Self::TooManyPieces(_) => ErrorCode::TOO_LARGE,
            _ => ErrorCode::MALFORMED_MESSAGE,
        }
    }
}

/// The content id: SHA-256 of the manifest's canonical info section. Two manifests with the same
/// files, piece size and hashes have the same id whatever trackers they list.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A piece number known to be in range for its manifest. Only a [`Manifest`] hands these out,
/// so code holding one never re-checks bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(u32);

impl PieceIndex {
    /// The number as it travels on the wire.
    pub fn get(self) -> u32 {
        self.0
    }

    /// As a `usize` for indexing per-piece tables.
    pub fn idx(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Checks a manifest path against the rules of spec/P2P.md §2.4 and parses it into the jail's
/// path type: `/`-separated, 1..=32 components, each non-empty, not `.` or `..`, without `\`,
/// `:`, NUL or control characters, no Windows device names, no trailing dot or space. Joined
/// under a root it can only name something inside it.
pub fn parse_path(path: &str) -> Result<RelPath, ManifestError> {
    RelPath::parse_portable(path, MAX_DEPTH).map_err(|e| ManifestError::InvalidPath {
        path: path.chars().take(200).collect(),
        reason: path_reason(&e),
    })
}

/// The manifest's words for each broken path rule.
fn path_reason(error: &PathError) -> &'static str {
    match error {
        PathError::EmptyPath => "empty",
        PathError::PathTooLong(_) => "longer than 4096 bytes",
        PathError::Absolute => "absolute",
        PathError::TooDeep { .. } => "deeper than 32 components",
        PathError::Empty => "empty component",
        PathError::Dot | PathError::DotDot => "dot component",
        PathError::NameTooLong(_) => "component longer than 255 bytes",
        PathError::Backslash => "backslash",
        PathError::Colon | PathError::Prefix => "colon (windows drive or stream)",
        PathError::Control | PathError::Nul => "control character",
        PathError::TrailingDotOrSpace => "trailing dot or space",
        PathError::DeviceName => "windows device name",
    }
}

// The limits above are the jail's: one set of numbers for every path that touches the disk.
const _: () = assert!(MAX_PATH_LEN == ferry_jail::path::MAX_PATH);
const _: () = assert!(MAX_COMPONENT_LEN == ferry_jail::path::MAX_NAME);

/// One file of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub path: RelPath,
    pub size: u64,
}

/// Where a file's slice of a piece lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Index into [`Manifest::files`].
    pub file: usize,
    /// Offset inside that file.
    pub offset: u64,
    /// Bytes of the piece in that file.
    pub len: u32,
    /// Offset inside the piece where this span starts.
    pub piece_offset: u32,
}

/// A validated manifest. Fields are private so every instance went through [`Manifest::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    piece_size: u32,
    files: Vec<FileEntry>,
    hashes: Vec<[u8; 32]>,
    trackers: Vec<String>,
    servers: Vec<String>,
    /// Derived: start offset of each file in the concatenated content.
    starts: Vec<u64>,
    total: u64,
    content_id: ContentId,
}

impl Manifest {
    /// Builds and validates a manifest. `files` must be sorted by path bytes (the canonical
    /// order); `hashes` must hold exactly one hash per piece.
    pub fn new(
        piece_size: u32,
        files: Vec<FileEntry>,
        hashes: Vec<[u8; 32]>,
        trackers: Vec<String>,
        servers: Vec<String>,
    ) -> Result<Self, ManifestError> {
        if !piece_size.is_power_of_two() || !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&piece_size)
        {
            return Err(ManifestError::BadPieceSize(piece_size));
        }
        if files.len() as u64 > MAX_FILES as u64 {
            return Err(ManifestError::TooManyFiles(files.len() as u64));
        }
        let mut total: u64 = 0;
        let mut starts = Vec::with_capacity(files.len());
        let mut dirs: HashSet<&str> = HashSet::new();
        for (i, file) in files.iter().enumerate() {
            if i > 0 {
                let prev = files[i - 1].path.as_str();
                match prev.as_bytes().cmp(file.path.as_str().as_bytes()) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Err(ManifestError::Duplicate(file.path.as_str().to_owned()))
                    }
                    std::cmp::Ordering::Greater => {
                        return Err(ManifestError::NotCanonical(file.path.as_str().to_owned()))
                    }
                }
            }
            let path = file.path.as_str();
            for (at, _) in path.match_indices('/') {
                dirs.insert(&path[..at]);
            }
            starts.push(total);
            total = total
                .checked_add(file.size)
                .filter(|t| *t <= MAX_TOTAL_SIZE)
                .ok_or(ManifestError::TooLarge)?;
        }
        if let Some(file) = files.iter().find(|f| dirs.contains(f.path.as_str())) {
            return Err(ManifestError::FileDirConflict(
                file.path.as_str().to_owned(),
            ));
        }
        let expected = total.div_ceil(piece_size as u64);
        if expected > MAX_PIECES as u64 {
            return Err(ManifestError::TooManyPieces(expected));
        }
        if hashes.len() as u64 != expected {
            return Err(ManifestError::PieceCountMismatch {
                got: hashes.len() as u64,
                expected,
            });
        }
        for list in [&trackers, &servers] {
            if list.len() > MAX_SOURCES {
                return Err(ManifestError::TooManySources(list.len()));
            }
            for url in list.iter() {
                if url.is_empty() || url.len() > MAX_URL_LEN {
                    return Err(ManifestError::BadSource("empty or longer than 1024 bytes"));
                }
                if url.chars().any(|c| c.is_control()) {
                    return Err(ManifestError::BadSource("control character"));
                }
            }
        }
        let mut manifest = Self {
            piece_size,
            files,
            hashes,
            trackers,
            servers,
            starts,
            total,
            content_id: ContentId([0; 32]),
        };
        let mut info = Vec::with_capacity(manifest.info_len());
        manifest.encode_info(&mut info);
        manifest.content_id = ContentId(Sha256::digest(&info).into());
        Ok(manifest)
    }

    /// Parses and validates the canonical encoding. Anything non-canonical is rejected, so
    /// `decode(x)?.encode() == x` for every accepted `x`.
    pub fn decode(mut src: &[u8]) -> Result<Self, ManifestError> {
        let magic: [u8; 8] = take_array(&mut src)?;
        if magic != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let version = take_u8(&mut src)?;
        if version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion(version));
        }
        let alg = take_u8(&mut src)?;
        if alg != HASH_SHA256 {
            return Err(ManifestError::UnsupportedHash(alg));
        }
        let piece_size = take_u32(&mut src)?;
        let file_count = take_u32(&mut src)?;
        if file_count > MAX_FILES {
            return Err(ManifestError::TooManyFiles(file_count as u64));
        }
        // Each file needs at least 2 + 1 + 8 bytes, so a lying count cannot make us allocate more
        // than the input justifies.
        let mut files = Vec::with_capacity((file_count as usize).min(src.len() / 11));
        for _ in 0..file_count {
            let path = take_str(&mut src)?;
            let path = parse_path(&path)?;
            let size = take_u64(&mut src)?;
            files.push(FileEntry { path, size });
        }
        let piece_count = take_u32(&mut src)? as usize;
        if piece_count > MAX_PIECES as usize {
            return Err(ManifestError::TooManyPieces(piece_count as u64));
        }
        need(src, piece_count.saturating_mul(32))?;
        let mut hashes = Vec::with_capacity(piece_count);
        for _ in 0..piece_count {
            hashes.push(take_array::<32>(&mut src)?);
        }
        let mut sources = [Vec::new(), Vec::new()];
        for list in sources.iter_mut() {
            let count = take_u8(&mut src)? as usize;
            if count > MAX_SOURCES {
                return Err(ManifestError::TooManySources(count));
            }
            for _ in 0..count {
                list.push(take_str(&mut src)?);
            }
        }
        if !src.is_empty() {
            return Err(ManifestError::TrailingBytes(src.len()));
        }
        let [trackers, servers] = sources;
        Self::new(piece_size, files, hashes, trackers, servers)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_info(&mut out);
        for list in [&self.trackers, &self.servers] {
            out.put_u8(list.len() as u8);
            for url in list.iter() {
                put_str(&mut out, url);
            }
        }
        out
    }

    /// Exact length of [`Manifest::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        self.info_len()
            + [&self.trackers, &self.servers]
                .iter()
                .map(|l| 1 + l.iter().map(|u| 2 + u.len()).sum::<usize>())
                .sum::<usize>()
    }

    fn info_len(&self) -> usize {
        8 + 1
            + 1
            + 4
            + 4
            + self
                .files
                .iter()
                .map(|f| 2 + f.path.as_str().len() + 8)
                .sum::<usize>()
            + 4
            + 32 * self.hashes.len()
    }

    fn encode_info(&self, out: &mut Vec<u8>) {
        out.put_slice(&MAGIC);
        out.put_u8(FORMAT_VERSION);
        out.put_u8(HASH_SHA256);
        out.put_u32(self.piece_size);
        out.put_u32(self.files.len() as u32);
        for file in &self.files {
            put_str(out, file.path.as_str());
            out.put_u64(file.size);
        }
        out.put_u32(self.hashes.len() as u32);
        for hash in &self.hashes {
            out.put_slice(hash);
        }
    }

    /// Reads and decodes a manifest file, refusing files over [`MAX_MANIFEST_BYTES`].
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let len = std::fs::metadata(path)?.len();
        if len > MAX_MANIFEST_BYTES {
            return Err(LoadError::Manifest(ManifestError::TooLarge));
        }
        let bytes = std::fs::read(path)?;
        Ok(Self::decode(&bytes)?)
    }

    pub fn content_id(&self) -> ContentId {
        self.content_id
    }

    pub fn piece_size(&self) -> u32 {
        self.piece_size
    }

    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    pub fn trackers(&self) -> &[String] {
        &self.trackers
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Total bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.total
    }

    pub fn piece_count(&self) -> u32 {
        // `new` refused more than MAX_PIECES pieces, so this cannot truncate.
        self.hashes.len() as u32
    }

    /// The piece with number `index`, if this manifest has it.
    pub fn piece(&self, index: u32) -> Option<PieceIndex> {
        ((index as usize) < self.hashes.len()).then_some(PieceIndex(index))
    }

    /// Every piece, in order.
    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.piece_count()).map(PieceIndex)
    }

    pub fn hash(&self, piece: PieceIndex) -> &[u8; 32] {
        &self.hashes[piece.idx()]
    }

    /// Length of `piece`: the piece size, except for a shorter last piece.
    pub fn piece_len(&self, piece: PieceIndex) -> u32 {
        let start = piece.0 as u64 * self.piece_size as u64;
        (self.total - start).min(self.piece_size as u64) as u32
    }

    /// Byte offset of `piece` in the concatenated content.
    pub fn piece_start(&self, piece: PieceIndex) -> u64 {
        piece.0 as u64 * self.piece_size as u64
    }

    /// The file slices `piece` covers, in order. Empty files cover nothing.
    pub fn spans(&self, piece: PieceIndex) -> Vec<Span> {
        let start = self.piece_start(piece);
        let end = start + self.piece_len(piece) as u64;
        // First file whose end is past `start`.
        let first = self
            .starts
            .partition_point(|s| *s <= start)
            .saturating_sub(1);
        let mut spans = Vec::new();
        for file in first..self.files.len() {
            let f_start = self.starts[file];
            let f_end = f_start + self.files[file].size;
            if f_start >= end {
                break;
            }
            let lo = start.max(f_start);
            let hi = end.min(f_end);
            if lo < hi {
                spans.push(Span {
                    file,
                    offset: lo - f_start,
                    len: (hi - lo) as u32,
                    piece_offset: (lo - start) as u32,
                });
            }
        }
        spans
    }

    /// A copy with different sources; the content id stays the same.
    pub fn with_sources(
        &self,
        trackers: Vec<String>,
        servers: Vec<String>,
    ) -> Result<Self, ManifestError> {
        Self::new(
            self.piece_size,
            self.files.clone(),
            self.hashes.clone(),
            trackers,
            servers,
        )
    }
}

/// Reading a manifest file failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
}

/// Piece size for `total` bytes: about 1000–2000 pieces, a power of two in 64 KiB..=4 MiB.
pub fn choose_piece_size(total: u64) -> u32 {
    let target = (total / 1024).max(1).next_power_of_two();
    target.clamp(AUTO_PIECE_RANGE.0 as u64, AUTO_PIECE_RANGE.1 as u64) as u32
}

fn need(src: &[u8], n: usize) -> Result<(), ManifestError> {
    if src.len() < n {
        return Err(ManifestError::Truncated {
            needed: n,
            got: src.len(),
        });
    }
    Ok(())
}

fn take_u8(src: &mut &[u8]) -> Result<u8, ManifestError> {
    need(src, 1)?;
    Ok(src.get_u8())
}

fn take_u32(src: &mut &[u8]) -> Result<u32, ManifestError> {
    need(src, 4)?;
    Ok(src.get_u32())
}

fn take_u64(src: &mut &[u8]) -> Result<u64, ManifestError> {
    need(src, 8)?;
    Ok(src.get_u64())
}

fn take_array<const N: usize>(src: &mut &[u8]) -> Result<[u8; N], ManifestError> {
    need(src, N)?;
    let mut out = [0u8; N];
    src.copy_to_slice(&mut out);
    Ok(out)
}

fn take_str(src: &mut &[u8]) -> Result<String, ManifestError> {
    need(src, 2)?;
    let len = src.get_u16() as usize;
    need(src, len)?;
    let (s, rest) = src.split_at(len);
    *src = rest;
    String::from_utf8(s.to_vec()).map_err(|_| ManifestError::InvalidUtf8)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Paths are at most 4096 bytes and URLs 1024, checked by `new`, so the u16 cannot wrap.
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// Fuzz helper: decode, and if accepted, check that the encoding is byte-identical and that
/// decoding it again gives the same manifest. Panics only on a real bug.
#[cfg(any(fuzzing, test))]
pub fn fuzz_manifest(data: &[u8]) {
    if let Ok(manifest) = Manifest::decode(data) {
        let encoded = manifest.encode();
        assert_eq!(encoded, data, "accepted manifest is not canonical");
        assert_eq!(encoded.len(), manifest.encoded_len());
        let again = Manifest::decode(&encoded).expect("re-decoding a canonical manifest");
        assert_eq!(again, manifest);
        for piece in manifest.pieces() {
            let covered: u32 = manifest.spans(piece).iter().map(|s| s.len).sum();
            assert_eq!(covered, manifest.piece_len(piece));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn sample(sizes: &[(&str, u64)], piece_size: u32) -> Manifest {
        let files: Vec<FileEntry> = sizes
            .iter()
            .map(|(p, s)| FileEntry {
                path: parse_path(p).unwrap(),
                size: *s,
            })
            .collect();
        let total: u64 = sizes.iter().map(|(_, s)| s).sum();
        let count = total.div_ceil(piece_size as u64) as usize;
        let hashes = (0..count).map(|i| [i as u8; 32]).collect();
        Manifest::new(
            piece_size,
            files,
            hashes,
            vec!["udp://127.0.0.1:6969".into()],
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_content_id_ignores_sources() {
        let m = sample(&[("d/a", 100_000), ("d/b/c", 5), ("d/e", 0)], 16_384);
        let bytes = m.encode();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        let other = m.with_sources(vec![], vec!["ferry://h/".into()]).unwrap();
        assert_eq!(other.content_id(), m.content_id());
        assert_ne!(other.encode(), bytes);
    }

    #[test]
    fn hostile_paths_are_rejected() {
        for path in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/",
            "",
            ".",
            "a/./b",
            "C:/x",
            "C:x",
            "a\\..\\b",
            "..\\x",
            "a/NUL",
            "com1.txt",
            "x.",
            "x ",
            "a\0b",
            "a\nb",
            "file:stream",
        ] {
            assert!(parse_path(path).is_err(), "accepted {path:?}");
        }
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert!(parse_path(&deep).is_err());
        assert!(parse_path(&vec!["d"; MAX_DEPTH].join("/")).is_ok());
        assert!(parse_path(&"x".repeat(256)).is_err());
        for ok in ["a", "a/b.c", "über/ñ", "..a", "a..b", "console", "com10"] {
            assert!(parse_path(ok).is_ok(), "rejected {ok:?}");
        }
        // The jail's parser reports in the manifest's words.
        for (path, reason) in [
            ("", "empty"),
            ("/x", "absolute"),
            ("a//b", "empty component"),
            ("../x", "dot component"),
            ("a\\b", "backslash"),
            ("C:x", "colon (windows drive or stream)"),
            ("a\0b", "control character"),
            ("x ", "trailing dot or space"),
            ("a/NUL", "windows device name"),
        ] {
            assert_eq!(
                parse_path(path).unwrap_err(),
                ManifestError::InvalidPath {
                    path: path.into(),
                    reason
                }
            );
        }
        assert_eq!(
            parse_path(&"x".repeat(256)).unwrap_err().to_string(),
            format!(
                "invalid path {:?}: component longer than 255 bytes",
                "x".repeat(200)
            )
        );
    }

    fn entry(p: &str, size: u64) -> FileEntry {
        FileEntry {
            path: parse_path(p).unwrap(),
            size,
        }
    }

    #[test]
    fn structural_problems_are_rejected() {
        let h = |n: usize| vec![[0u8; 32]; n];
        let e = |r: Result<Manifest, ManifestError>| r.unwrap_err();
        assert!(matches!(
            e(Manifest::new(0, vec![entry("a", 1)], h(1), vec![], vec![])),
            ManifestError::BadPieceSize(0)
        ));
        assert!(matches!(
            e(Manifest::new(
                20_000,
                vec![entry("a", 1)],
                h(1),
                vec![],
                vec![]
            )),
            ManifestError::BadPieceSize(_)
        ));
        assert!(matches!(
            e(Manifest::new(
                16_384,
                vec![entry("a", 1), entry("a", 1)],
                h(1),
                vec![],
                vec![]
            )),
            ManifestError::Duplicate(_)
        ));
        assert!(matches!(
            e(Manifest::new(
                16_384,
                vec![entry("b", 1), entry("a", 1)],
                h(1),
                vec![],
                vec![]
            )),
            ManifestError::NotCanonical(_)
        ));
        assert!(matches!(
            e(Manifest::new(
                16_384,
                vec![entry("a", 1), entry("a/b", 1)],
                h(1),
                vec![],
                vec![]
            )),
            ManifestError::FileDirConflict(_)
        ));
        assert!(matches!(
            e(Manifest::new(
                16_384,
                vec![entry("a", 16_385)],
                h(1),
                vec![],
                vec![]
            )),
            ManifestError::PieceCountMismatch {
                got: 1,
                expected: 2
            }
        ));
        assert!(matches!(
            e(Manifest::new(
                16_384,
                vec![entry("a", u64::MAX), entry("b", 2)],
                h(0),
                vec![],
                vec![]
            )),
            ManifestError::TooLarge
        ));
    }

    #[test]
    fn lying_counts_do_not_allocate_or_panic() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 1, 0, 0, 0x40, 0, 0x00, 0x0f, 0xff, 0xff]);
        assert!(Manifest::decode(&bytes).is_err());
        let mut m = sample(&[("a", 10)], 16_384).encode();
        // The piece count field claims far more hashes than the input holds.
        let at = 8 + 1 + 1 + 4 + 4 + 2 + 1 + 8;
        m[at..at + 4].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(matches!(
            Manifest::decode(&m),
            Err(ManifestError::Truncated { .. })
        ));
        m[at..at + 4].copy_from_slice(&[0xff; 4]);
        assert!(matches!(
            Manifest::decode(&m),
            Err(ManifestError::TooManyPieces(_))
        ));
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let bytes = sample(&[("x/a", 40_000), ("x/b", 1)], 16_384).encode();
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Manifest::decode(&long),
            Err(ManifestError::TrailingBytes(1))
        );
    }

    #[test]
    fn spans_cover_pieces_across_file_boundaries() {
        let m = sample(&[("a", 10_000), ("b", 0), ("c", 30_000)], 16_384);
        assert_eq!(m.piece_count(), 3);
        let s0 = m.spans(m.piece(0).unwrap());
        assert_eq!(s0.len(), 2);
        assert_eq!((s0[0].file, s0[0].offset, s0[0].len), (0, 0, 10_000));
        assert_eq!((s0[1].file, s0[1].offset, s0[1].len), (2, 0, 6_384));
        let s2 = m.spans(m.piece(2).unwrap());
        assert_eq!((s2[0].file, s2[0].offset, s2[0].len), (2, 22_768, 7_232));
        assert_eq!(m.piece_len(m.piece(2).unwrap()), 7_232);
        assert!(m.piece(3).is_none());
    }

    #[test]
    fn piece_size_choice_is_bounded() {
        assert_eq!(choose_piece_size(0), 64 * 1024);
        assert_eq!(choose_piece_size(64 << 20), 64 * 1024);
        assert_eq!(choose_piece_size(256 << 20), 256 * 1024);
        assert_eq!(choose_piece_size(1 << 30), 1 << 20);
        assert_eq!(choose_piece_size(1 << 40), 4 << 20);
    }

    /// The boundary vectors in spec/P2P.md §2.3 are what `make` picks: a different rule would
    /// give the same files another content id.
    #[test]
    fn piece_size_choice_matches_the_spec_vectors() {
        let spec = include_str!("../../spec/P2P.md");
        let start = spec
            .find("piece-size vectors:")
            .expect("spec/P2P.md has the piece-size vectors");
        let rows: Vec<(u64, u32)> = spec[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .map(|l| {
                let mut cols = l.split_whitespace().map(|c| c.parse::<u64>().unwrap());
                (cols.next().unwrap(), cols.next().unwrap() as u32)
            })
            .collect();
        assert!(rows.len() >= 10, "{rows:?}");
        for (total, want) in rows {
            assert_eq!(choose_piece_size(total), want, "total {total}");
        }
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        let name = "[a-z]{1,6}";
        (
            proptest::collection::btree_map(
                proptest::collection::vec(name, 1..4).prop_map(|v| v.join("/")),
                0u64..100_000,
                0..8,
            ),
            0u32..3,
            proptest::collection::vec("udp://[a-z]{1,8}:[0-9]{1,4}", 0..3),
        )
            .prop_filter_map("file/dir conflict", |(files, shift, trackers)| {
                let piece_size = MIN_PIECE_SIZE << shift;
                let files: Vec<FileEntry> = files
                    .into_iter()
                    .map(|(p, size)| {
                        Some(FileEntry {
                            path: parse_path(&p).ok()?,
                            size,
                        })
                    })
                    .collect::<Option<_>>()?;
                let total: u64 = files.iter().map(|f| f.size).sum();
                let n = total.div_ceil(piece_size as u64) as usize;
                let hashes = (0..n)
                    .map(|i| Sha256::digest(i.to_be_bytes()).into())
                    .collect();
                Manifest::new(piece_size, files, hashes, trackers, vec![]).ok()
            })
    }

    proptest! {
        #[test]
        fn manifests_round_trip(m in arb_manifest()) {
            let bytes = m.encode();
            prop_assert_eq!(bytes.len(), m.encoded_len());
            prop_assert_eq!(&Manifest::decode(&bytes).unwrap(), &m);
            fuzz_manifest(&bytes);
        }

        #[test]
        fn mutated_manifests_never_panic(m in arb_manifest(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = m.encode();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            fuzz_manifest(&bytes);
        }
    }
}
