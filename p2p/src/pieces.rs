//! Pieces on disk: bitfields, the jailed file store, hashing a tree into a manifest and
//! verifying what is already on disk (spec/P2P.md §2.5).
//!
//! All file access goes through [`Storage`], which holds its root as a [`Jail`] and only ever
//! opens a manifest's [`RelPath`]s beneath it: a download refuses every symlink on the way
//! (spec/P2P.md §2.4), a seed follows none that leaves the root, and neither follows one at the
//! end.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_jail::{Create, FsError, Jail, Links};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::manifest::{choose_piece_size, FileEntry, Manifest, ManifestError, PieceIndex, RelPath};

/// Which pieces a peer (or we) has. Bit `i` is the most significant bit of byte `i / 8`, as in
/// the `BITFIELD` message (spec/P2P.md §3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
}

/// A bitfield from the wire does not fit the manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    #[error("bitfield of {got} bytes, expected {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("bitfield has bits set past piece {0}")]
    SpareBits(u32),
}

impl Bitfield {
    /// All clear, for `len` pieces.
    pub fn new(len: u32) -> Self {
        Self {
            bits: vec![0; (len as usize).div_ceil(8)],
            len,
        }
    }

    /// All set.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set_raw(i);
        }
        b
    }

    /// Parses wire bytes for a manifest of `len` pieces: exactly `ceil(len / 8)` bytes and no
    /// bit set past the last piece.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Self, BitfieldError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                got: bytes.len(),
                expected,
            });
        }
        let spare = (expected * 8) as u32 - len;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bytes[expected - 1] & mask != 0 {
                return Err(BitfieldError::SpareBits(len));
            }
        }
        Ok(Self {
            bits: bytes.to_vec(),
            len,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn has(&self, piece: PieceIndex) -> bool {
        self.has_index(piece.get())
    }

    /// Whether raw piece number `i` is set; false when out of range.
    pub fn has_index(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    pub fn set(&mut self, piece: PieceIndex) {
        self.set_raw(piece.get());
    }

    fn set_raw(&mut self, i: u32) {
        if i < self.len {
            self.bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
    }

    pub fn clear(&mut self, piece: PieceIndex) {
        let i = piece.get();
        if i < self.len {
            self.bits[(i / 8) as usize] &= !(0x80 >> (i % 8));
        }
    }

    /// Number of pieces set.
    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }
}

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: refusing to follow a symlink or non-directory inside the download directory")]
    NotADirectory(PathBuf),
    #[error("{0}: exists and is not a regular file")]
    NotAFile(PathBuf),
    #[error("{path}: has {got} bytes, manifest says {expected}")]
    WrongSize {
        path: PathBuf,
        got: u64,
        expected: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Maps a jail failure on `rel` (a directory on the way when `dir`) to the storage errors
/// callers already know, with the errno texts the path-based calls gave.
fn jail_err(root: &Path, rel: &RelPath, dir: bool) -> impl FnOnce(FsError) -> StorageError {
    let path = rel.under(root);
    move |e| {
        let os = |code| StorageError::Io {
            path: path.clone(),
            source: io::Error::from_raw_os_error(code),
        };
        match e {
            FsError::NotADirectory(_) | FsError::Escapes(_) => StorageError::NotADirectory(path),
            FsError::Symlink(_) if dir => StorageError::NotADirectory(path),
            FsError::Symlink(_) | FsError::NotAFile(_) => StorageError::NotAFile(path),
            FsError::NotFound(_) => os(libc::ENOENT),
            FsError::PermissionDenied(_) => os(libc::EACCES),
            FsError::NameTooLong(_) => os(libc::ENAMETOOLONG),
            FsError::Io { errno, .. } => os(errno.raw_os_error()),
            other => StorageError::Io {
                path,
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

/// Appended to a file's name while it is being downloaded, as `ferry get` does: a half file
/// never carries the final name.
pub const PART_SUFFIX: &str = ".part";

/// `path` with [`PART_SUFFIX`] appended to its file name.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PART_SUFFIX);
    PathBuf::from(name)
}

/// The files of one manifest under one root directory.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    jail: Jail,
    /// Each file's path (for messages) and handle.
    files: Vec<(PathBuf, Option<File>)>,
    /// Files this storage created empty: they hold only zeros, so hashing them is skipped.
    fresh: Vec<AtomicBool>,
    writable: bool,
    /// For each file written under its `.part` name, that name and the final one
    /// [`Storage::finish`] gives it.
    pending: std::sync::Mutex<Vec<Option<(RelPath, RelPath)>>>,
}

impl Storage {
    /// Opens existing files read-only for seeding. Files must exist with their manifest size.
    /// Links inside `root` that stay inside it are followed on the way, never at the end.
    pub fn open_existing(root: &Path, manifest: &Manifest) -> Result<Self, StorageError> {
        let jail = Jail::open(root).map_err(io_err(root))?;
        let mut files = Vec::with_capacity(manifest.files().len());
        for entry in manifest.files() {
            let path = entry.path.under(root);
            let (file, meta) =
                jail.open_read(&entry.path, false)
                    .map_err(jail_err(root, &entry.path, false))?;
            let got = meta.size;
            if got != entry.size {
                return Err(StorageError::WrongSize {
                    path,
                    got,
                    expected: entry.size,
                });
            }
            files.push((path, Some(file)));
        }
        Ok(Self {
            root: root.to_path_buf(),
            jail,
            fresh: files.iter().map(|_| AtomicBool::new(false)).collect(),
            pending: std::sync::Mutex::new(vec![None; files.len()]),
            files,
            writable: false,
        })
    }

    /// Creates (or reopens, for resuming) every file under `root` with its manifest size. Only
    /// directories and files named by the manifest are created; an existing symlink anywhere on
    /// the way is refused, so nothing is written outside `root`.
    pub fn create(root: &Path, manifest: &Manifest) -> Result<Self, StorageError> {
        Self::create_with(root, manifest, false)
    }

    /// Like [`Storage::create`], but a file not yet on disk under its final name is written as
    /// `NAME.part` (resuming one that exists) and renamed by [`Storage::finish`]. A file already
    /// present under its final name (a finished earlier download) is checked and used in place.
    pub fn create_partial(root: &Path, manifest: &Manifest) -> Result<Self, StorageError> {
        Self::create_with(root, manifest, true)
    }

    fn create_with(root: &Path, manifest: &Manifest, partial: bool) -> Result<Self, StorageError> {
        // The root itself is the user's choice; beneath it, nothing but what the manifest names.
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let jail = Jail::open(root)
            .map_err(io_err(root))?
            .with_links(Links::Refuse);
        let mut files = Vec::with_capacity(manifest.files().len());
        let mut fresh = Vec::with_capacity(manifest.files().len());
        let mut pending = Vec::with_capacity(manifest.files().len());
        // A manifest naming both X and X.part keeps X under its own name, or the two would
        // share one file.
        let names: std::collections::HashSet<&str> =
            manifest.files().iter().map(|f| f.path.as_str()).collect();
        for entry in manifest.files() {
            let final_rel = &entry.path;
            let parent = final_rel.parent();
            jail.create_dir_all(&parent)
                .map_err(jail_err(root, &parent, true))?;
            let clash = names.contains(format!("{}{PART_SUFFIX}", entry.path.as_str()).as_str());
            let rel = if partial && !clash {
                let part = final_rel
                    .with_file_name(&format!("{}{PART_SUFFIX}", final_rel.file_name()))
                    .map_err(|e| jail_err(root, final_rel, false)(e.into()))?;
                let done = jail.symlink_metadata(final_rel).is_ok()
                    && jail.symlink_metadata(&part).is_err();
                if done {
                    pending.push(None);
                    final_rel.clone()
                } else {
                    pending.push(Some((part.clone(), final_rel.clone())));
                    part
                }
            } else {
                pending.push(None);
                final_rel.clone()
            };
            let path = rel.under(root);
            // Never through a link, and only a regular file: anything else is refused.
            let file = jail
                .create_file(&rel, Create::Keep)
                .map_err(jail_err(root, &rel, false))?;
            let meta = file.metadata().map_err(io_err(&path))?;
            // An empty file we are about to extend holds nothing worth hashing.
            fresh.push(AtomicBool::new(meta.len() == 0 && entry.size > 0));
            if meta.len() != entry.size {
                // Sparse: unwritten regions read as zeros and fail their hash on resume.
                file.set_len(entry.size).map_err(io_err(&path))?;
            }
            files.push((path, Some(file)));
        }
        Ok(Self {
            root: root.to_path_buf(),
            jail,
            files,
            fresh,
            writable: true,
            pending: std::sync::Mutex::new(pending),
        })
    }

    /// Flushes the data, then gives every `.part` file its final name. Call it once every
    /// piece is verified; later calls do nothing.
    pub fn finish(&self) -> Result<(), StorageError> {
        self.sync()?;
        // Renames only move names: the open handles keep serving uploads.
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for slot in pending.iter_mut() {
            if let Some((part, final_rel)) = slot.take() {
                self.jail
                    .rename(&part, &final_rel)
                    .map_err(jail_err(&self.root, &final_rel, false))?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn file(&self, index: usize) -> Result<&File, StorageError> {
        let (path, file) = &self.files[index];
        file.as_ref()
            .ok_or_else(|| StorageError::NotAFile(path.clone()))
    }

    /// Reads `len` bytes at `offset` inside `piece`.
    pub fn read(
        &self,
        manifest: &Manifest,
        piece: PieceIndex,
        offset: u32,
        len: u32,
    ) -> Result<Vec<u8>, StorageError> {
        let mut out = vec![0u8; len as usize];
        self.read_into(manifest, piece, offset, &mut out)?;
        Ok(out)
    }

    /// Fills `out` with the bytes at `offset` inside `piece` (e.g. straight into a frame body
    /// being built); the range must lie inside the piece.
    pub fn read_into(
        &self,
        manifest: &Manifest,
        piece: PieceIndex,
        offset: u32,
        out: &mut [u8],
    ) -> Result<(), StorageError> {
        // A range past the piece would leave part of `out` unread: refuse it.
        let end = u32::try_from(out.len())
            .ok()
            .and_then(|len| offset.checked_add(len))
            .filter(|end| *end <= manifest.piece_len(piece))
            .ok_or_else(|| StorageError::Io {
                path: self.root.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} bytes at offset {offset} lie outside piece {} of {} bytes",
                        out.len(),
                        piece.get(),
                        manifest.piece_len(piece)
                    ),
                ),
            })?;
        for span in manifest.spans(piece) {
            let s_end = span.piece_offset + span.len;
            let lo = offset.max(span.piece_offset);
            let hi = end.min(s_end);
            if lo >= hi {
                continue;
            }
            let file = self.file(span.file)?;
            let at = span.offset + (lo - span.piece_offset) as u64;
            file.read_exact_at(&mut out[(lo - offset) as usize..(hi - offset) as usize], at)
                .map_err(io_err(&self.files[span.file].0))?;
        }
        Ok(())
    }

    /// Reads a whole piece.
    pub fn read_piece(
        &self,
        manifest: &Manifest,
        piece: PieceIndex,
    ) -> Result<Vec<u8>, StorageError> {
        self.read(manifest, piece, 0, manifest.piece_len(piece))
    }

    /// Writes a whole, already verified piece.
    pub fn write_piece(
        &self,
        manifest: &Manifest,
        piece: PieceIndex,
        data: &[u8],
    ) -> Result<(), StorageError> {
        for span in manifest.spans(piece) {
            let file = self.file(span.file)?;
            self.fresh[span.file].store(false, Ordering::Relaxed);
            let part = &data[span.piece_offset as usize..(span.piece_offset + span.len) as usize];
            file.write_all_at(part, span.offset)
                .map_err(io_err(&self.files[span.file].0))?;
        }
        Ok(())
    }

    /// Flushes written data to disk.
    pub fn sync(&self) -> Result<(), StorageError> {
        for (path, file) in &self.files {
            if let Some(file) = file {
                file.sync_data().map_err(io_err(path))?;
            }
        }
        Ok(())
    }

    /// Hashes every piece on disk (in parallel) and returns those that match the manifest.
    /// `progress` is called once per piece checked.
    pub fn verify(&self, manifest: &Manifest, progress: &(dyn Fn() + Sync)) -> Bitfield {
        let good: Vec<PieceIndex> = manifest
            .pieces()
            .collect::<Vec<_>>()
            .into_par_iter()
            .filter(|piece| {
                // Pieces lying wholly in files we just created are zeros: missing, unread.
                if manifest
                    .spans(*piece)
                    .iter()
                    .all(|s| self.fresh[s.file].load(Ordering::Relaxed))
                {
                    progress();
                    return false;
                }
                let ok = self
                    .read_piece(manifest, *piece)
                    .map(|data| sha256(&data) == *manifest.hash(*piece))
                    .unwrap_or(false);
                progress();
                ok
            })
            .collect();
        let mut have = Bitfield::new(manifest.piece_count());
        for piece in good {
            have.set(piece);
        }
        have
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Building a manifest from files failed.
#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: name is not valid utf-8")]
    NonUtf8(PathBuf),
    #[error("{0}: symlinks and special files are not supported")]
    Special(PathBuf),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Collects the regular files under `path` (or `path` itself) with manifest paths that start
/// with `path`'s own name. Sorted canonically.
pub fn scan(path: &Path) -> Result<(PathBuf, Vec<(FileEntry, PathBuf)>), MakeError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MakeError::Io { path: p, source }
    };
    let name = path
        .file_name()
        .ok_or_else(|| MakeError::NonUtf8(path.to_path_buf()))?
        .to_str()
        .ok_or_else(|| MakeError::NonUtf8(path.to_path_buf()))?
        .to_owned();
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut out = Vec::new();
    // Iterative walk: (relative manifest path, disk path).
    let mut stack = vec![(name, path.to_path_buf())];
    while let Some((rel, disk)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&disk).map_err(io(&disk))?;
        if meta.is_dir() {
            for child in std::fs::read_dir(&disk).map_err(io(&disk))? {
                let child = child.map_err(io(&disk))?;
                let child_name = child
                    .file_name()
                    .to_str()
                    .ok_or_else(|| MakeError::NonUtf8(child.path()))?
                    .to_owned();
                stack.push((format!("{rel}/{child_name}"), child.path()));
            }
        } else if meta.is_file() {
            let path = crate::manifest::parse_path(&rel)?;
            out.push((
                FileEntry {
                    path,
                    size: meta.len(),
                },
                disk,
            ));
        } else {
            return Err(MakeError::Special(disk));
        }
    }
    out.sort_by(|a, b| {
        a.0.path
            .as_str()
            .as_bytes()
            .cmp(b.0.path.as_str().as_bytes())
    });
    Ok((base, out))
}

/// Hashes the files under `path` into a manifest, one piece per rayon task. `piece_size`
/// defaults to [`choose_piece_size`]; `progress(bytes)` is called as pieces finish.
pub fn make_manifest(
    path: &Path,
    piece_size: Option<u32>,
    trackers: Vec<String>,
    servers: Vec<String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Manifest, MakeError> {
    let (base, entries) = scan(path)?;
    let files: Vec<FileEntry> = entries.iter().map(|(e, _)| e.clone()).collect();
    let total: u64 = files.iter().map(|f| f.size).sum();
    let piece_size = piece_size.unwrap_or_else(|| choose_piece_size(total));
    // A manifest with placeholder hashes gives the piece layout and checks every limit before
    // any hashing work.
    let count = total.div_ceil(piece_size as u64);
    if count > crate::manifest::MAX_PIECES as u64 {
        return Err(ManifestError::TooManyPieces(count).into());
    }
    let layout = Manifest::new(
        piece_size,
        files.clone(),
        vec![[0; 32]; count as usize],
        vec![],
        vec![],
    )?;
    let storage = Storage::open_existing(&base, &layout).map_err(|e| match e {
        StorageError::Io { path, source } => MakeError::Io { path, source },
        other => MakeError::Io {
            path: base.clone(),
            source: io::Error::other(other.to_string()),
        },
    })?;
    let hashes: Vec<Result<[u8; 32], StorageError>> = layout
        .pieces()
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|piece| {
            let data = storage.read_piece(&layout, piece)?;
            progress(data.len() as u64);
            Ok(sha256(&data))
        })
        .collect();
    let hashes = hashes
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| match e {
            StorageError::Io { path, source } => MakeError::Io { path, source },
            other => MakeError::Io {
                path: base.clone(),
                source: io::Error::other(other.to_string()),
            },
        })?;
    Ok(Manifest::new(piece_size, files, hashes, trackers, servers)?)
}

/// The directory that a manifest's paths are relative to, given a `--data` argument that may
/// name either that directory or the manifest's single top-level entry itself.
pub fn data_root(data: &Path, manifest: &Manifest) -> PathBuf {
    let top = manifest
        .files()
        .first()
        .and_then(|f| f.path.components().next());
    let all_share_top = manifest
        .files()
        .iter()
        .all(|f| f.path.components().next() == top);
    match (top, data.file_name().and_then(|n| n.to_str())) {
        (Some(top), Some(name)) if all_share_top && name == top => data
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        _ => data.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfield_wire_checks() {
        let mut b = Bitfield::new(10);
        assert_eq!(b.as_bytes().len(), 2);
        let m = crate::manifest::tests::sample(&[("a", 10 * 16_384)], 16_384);
        b.set(m.piece(0).unwrap());
        b.set(m.piece(9).unwrap());
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(Bitfield::from_bytes(&[0x80, 0x40], 10).unwrap(), b);
        assert_eq!(
            Bitfield::from_bytes(&[0x80, 0x20], 10),
            Err(BitfieldError::SpareBits(10))
        );
        assert!(matches!(
            Bitfield::from_bytes(&[0x80], 10),
            Err(BitfieldError::WrongLength { .. })
        ));
        assert!(Bitfield::full(10).is_full());
        assert_eq!(Bitfield::full(10).as_bytes(), &[0xff, 0xc0]);
    }

    #[test]
    fn make_then_verify_then_copy_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let a: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(src.join("a.bin"), &a).unwrap();
        std::fs::write(src.join("sub/b"), b"hello").unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        let m = make_manifest(&src, Some(16_384), vec![], vec![], &|_| {}).unwrap();
        let paths: Vec<&str> = m.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["tree/a.bin", "tree/empty", "tree/sub/b"]);
        assert_eq!(m.total_size(), 100_005);
        assert_eq!(data_root(&src, &m), dir.path());

        let seed = Storage::open_existing(dir.path(), &m).unwrap();
        assert!(seed.verify(&m, &|| {}).is_full());

        let out = dir.path().join("out");
        let copy = Storage::create(&out, &m).unwrap();
        assert_eq!(copy.verify(&m, &|| {}).count(), 0);
        for piece in m.pieces() {
            copy.write_piece(&m, piece, &seed.read_piece(&m, piece).unwrap())
                .unwrap();
        }
        assert!(copy.verify(&m, &|| {}).is_full());
        assert_eq!(std::fs::read(out.join("tree/a.bin")).unwrap(), a);
        // A block read straddling the file boundary.
        let last = m.piece(m.piece_count() - 1).unwrap();
        let tail = seed.read(&m, last, 0, m.piece_len(last)).unwrap();
        assert!(tail.ends_with(b"hello"));
    }

    /// A block range past its piece (or overflowing u32) is an error, not zeros from beyond
    /// the piece's spans, and never a panic.
    #[test]
    fn a_read_past_the_piece_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, vec![7u8; 40_000]).unwrap();
        let m = make_manifest(&src, Some(16_384), vec![], vec![], &|_| {}).unwrap();
        let seed = Storage::open_existing(dir.path(), &m).unwrap();
        let last = m.piece(2).unwrap();
        assert_eq!(m.piece_len(last), 40_000 - 2 * 16_384);
        assert_eq!(seed.read(&m, last, 0, 7_232).unwrap(), vec![7u8; 7_232]);
        assert!(seed.read(&m, last, 0, 7_233).is_err());
        assert!(seed.read(&m, last, 7_000, 16_384).is_err());
        assert!(seed.read(&m, last, u32::MAX, 2).is_err());
    }

    #[test]
    fn partial_files_carry_part_names_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        std::fs::create_dir_all(&src).unwrap();
        let a: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(src.join("a.bin"), &a).unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        let m = make_manifest(&src, Some(16_384), vec![], vec![], &|_| {}).unwrap();
        let seed = Storage::open_existing(dir.path(), &m).unwrap();
        let out = dir.path().join("out");
        let copy = Storage::create_partial(&out, &m).unwrap();
        assert!(out.join("tree/a.bin.part").exists());
        assert!(!out.join("tree/a.bin").exists());
        let first = m.piece(0).unwrap();
        copy.write_piece(&m, first, &seed.read_piece(&m, first).unwrap())
            .unwrap();
        drop(copy);
        // Resuming keeps what the .part file holds.
        let copy = Storage::create_partial(&out, &m).unwrap();
        assert_eq!(copy.verify(&m, &|| {}).count(), 1);
        for piece in m.pieces() {
            copy.write_piece(&m, piece, &seed.read_piece(&m, piece).unwrap())
                .unwrap();
        }
        copy.finish().unwrap();
        assert_eq!(std::fs::read(out.join("tree/a.bin")).unwrap(), a);
        assert!(out.join("tree/empty").exists());
        assert!(!out.join("tree/a.bin.part").exists());
        // Reading after the rename still works, and a rerun uses the final names in place.
        assert!(copy.verify(&m, &|| {}).is_full());
        let again = Storage::create_partial(&out, &m).unwrap();
        assert!(again.verify(&m, &|| {}).is_full());
        assert!(!out.join("tree/a.bin.part").exists());
    }

    #[test]
    fn symlinks_inside_the_download_dir_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("tree")).unwrap();
        let m = crate::manifest::tests::sample(&[("tree/x", 10)], 16_384);
        assert!(matches!(
            Storage::create(&out, &m),
            Err(StorageError::NotADirectory(_))
        ));
        std::fs::remove_file(out.join("tree")).unwrap();
        std::fs::create_dir(out.join("tree")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), out.join("tree/x")).unwrap();
        assert!(Storage::create(&out, &m).is_err());
        assert!(!outside.join("victim").exists());
    }

    #[test]
    fn seeding_reads_nothing_through_a_link_out_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("x"), b"0123456789").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("tree")).unwrap();
        let m = crate::manifest::tests::sample(&[("tree/x", 10)], 16_384);
        assert!(matches!(
            Storage::open_existing(&data, &m),
            Err(StorageError::NotADirectory(_))
        ));
        // Nor is a final link followed, even one that stays inside.
        std::fs::remove_file(data.join("tree")).unwrap();
        std::fs::create_dir(data.join("tree")).unwrap();
        std::fs::write(data.join("real"), b"0123456789").unwrap();
        std::os::unix::fs::symlink("../real", data.join("tree/x")).unwrap();
        assert!(matches!(
            Storage::open_existing(&data, &m),
            Err(StorageError::NotAFile(_))
        ));
        std::fs::remove_file(data.join("tree/x")).unwrap();
        std::fs::rename(data.join("real"), data.join("tree/x")).unwrap();
        assert!(Storage::open_existing(&data, &m).is_ok());
    }
}
