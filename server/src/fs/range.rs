//! Byte ranges and the fetch reader: large positioned reads, hashed as read, with a check
//! after every read that the file has not changed under us.

use std::fs::File;
use std::io::IoSliceMut;
use std::sync::{Arc, Mutex};

use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{FetchEnd, FetchResponse, TO_END};

use super::jail::{FsError, Jail, Meta};
use super::path::RelPath;

/// Resolves a requested `(offset, length)` against a file of `size` bytes.
///
/// `offset == size` is a valid, empty range (resuming a complete download). An offset past
/// the end, a length reaching past the end, and an `offset + length` that overflows `u64` are
/// refused; [`TO_END`] means "everything from `offset`".
pub fn resolve(offset: u64, length: u64, size: u64) -> Result<(u64, u64), FsError> {
    let invalid = || FsError::Range {
        offset,
        length,
        size,
    };
    if offset > size {
        return Err(invalid());
    }
    if length == TO_END {
        return Ok((offset, size - offset));
    }
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok((offset, length)),
        _ => Err(invalid()),
    }
}

/// Bytes of a kept file's range and their digest, kept with the file
/// ([`EntryCache::confirm_file`](super::EntryCache::confirm_file)) so that a fetch that reads
/// exactly these bytes again need not hash them again
/// ([`FileReader::read_whole_kept`]). The bytes are still read every time and compared with
/// these byte for byte, so the digest sent is always the digest of the bytes sent: a memo can
/// only spare work, never change an answer. Built only from bytes just hashed, so `digest` is
/// always `fetch_digest(bytes)`.
#[derive(Debug, Clone)]
pub struct DigestMemo {
    bytes: Box<[u8]>,
    digest: [u8; 32],
}

impl DigestMemo {
    /// Longest range remembered: what a kept file may hold beside its descriptor (at most
    /// `MAX_FILES` x 16 KiB in all).
    pub const MAX: usize = 16 * 1024;

    /// A memo whose digest need not be its bytes': only for tests that show which digest is
    /// sent.
    #[cfg(test)]
    pub(crate) fn planted(bytes: &[u8], digest: [u8; 32]) -> Self {
        Self {
            bytes: bytes.into(),
            digest,
        }
    }

    /// Whether `bufs`' first `len` bytes, counted across them in order, are this memo's bytes.
    fn holds(&self, bufs: &[&mut [u8]], len: usize) -> bool {
        if self.bytes.len() != len {
            return false;
        }
        let mut rest = &self.bytes[..];
        for buf in bufs {
            let n = rest.len().min(buf.len());
            if buf[..n] != rest[..n] {
                return false;
            }
            rest = &rest[n..];
        }
        rest.is_empty()
    }
}

/// One fetch's file, range and running hash. Blocking: call from a blocking thread.
#[derive(Debug)]
pub struct FileReader {
    /// Shared with the kept-file cache (`super::files`) when kept there; only positioned
    /// reads and `fstat` use it, so fetches of one file can share it.
    file: Arc<File>,
    path: RelPath,
    /// Metadata when the fetch started; every later observation must match it.
    opened: Meta,
    pos: u64,
    remaining: u64,
    sent: u64,
    /// Boxed: a BLAKE3 state is about 2 KB, and the reader moves in and out of blocking
    /// tasks and futures, each move a copy. Made at the first bytes hashed, so a range whose
    /// digest comes from a memo never makes one.
    hasher: Option<Box<FetchDigest>>,
    /// The whole range's digest, once known without the hasher (a memo's).
    known: Option<[u8; 32]>,
}

impl FileReader {
    /// Opens `path` (a regular file) and resolves the range.
    pub fn open(
        jail: &Jail,
        path: RelPath,
        offset: u64,
        length: u64,
    ) -> Result<(Self, FetchResponse), FsError> {
        let (file, meta) = jail.open_file(&path)?;
        Self::from_open(file, meta, path, offset, length)
    }

    /// A reader over a file already opened through the jail (with `meta` from that open).
    pub fn from_open(
        file: File,
        meta: Meta,
        path: RelPath,
        offset: u64,
        length: u64,
    ) -> Result<(Self, FetchResponse), FsError> {
        Self::from_shared(Arc::new(file), meta, path, offset, length)
    }

    /// [`FileReader::from_open`] over a descriptor that others may share (a kept file).
    pub fn from_shared(
        file: Arc<File>,
        meta: Meta,
        path: RelPath,
        offset: u64,
        length: u64,
    ) -> Result<(Self, FetchResponse), FsError> {
        let (offset, length) = resolve(offset, length, meta.size)?;
        let response = FetchResponse {
            size: meta.size,
            mtime_secs: meta.mtime_secs,
            mtime_nanos: meta.mtime_nanos,
            offset,
            length,
        };
        Ok((
            Self {
                file,
                path,
                opened: meta,
                pos: offset,
                remaining: length,
                sent: 0,
                hasher: None,
                known: None,
            },
            response,
        ))
    }

    /// Bytes still to read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Reads the next bytes of the range into `bufs`, filling them in order, as many as fit,
    /// in one `preadv` (more only if the kernel reads short), and hashes them. Returns how
    /// many. A short read or changed metadata ends the fetch with [`FsError::Changed`].
    pub fn read_batch(&mut self, bufs: &mut [&mut [u8]]) -> Result<usize, FsError> {
        let want = self.want(bufs);
        let mut filled = 0;
        while filled < want {
            let mut iov = io_slices(bufs, filled, want);
            match rustix::io::preadv(&*self.file, &mut iov, self.pos + filled as u64) {
                Ok(0) => return Err(FsError::Changed(self.path.clone())),
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => {
                    return Err(FsError::Io {
                        path: self.path.clone(),
                        errno,
                    })
                }
            }
        }
        self.check_unchanged()?;
        self.consume(bufs, want);
        Ok(want)
    }

    /// [`FileReader::read_batch`] only if no byte has to come from a disk: `Ok(None)`, with
    /// nothing consumed, when the range is not all in the page cache (`RWF_NOWAIT` says
    /// `EAGAIN` or reads short) or when the file system cannot tell (`EOPNOTSUPP`) and is not
    /// memory-backed. Lets a small, hot read run on an async thread: it is a copy out of
    /// memory, not a wait.
    pub fn read_batch_cached(&mut self, bufs: &mut [&mut [u8]]) -> Result<Option<usize>, FsError> {
        let want = self.want(bufs);
        if self.read_into(bufs, want)?.is_none() {
            return Ok(None);
        }
        self.check_unchanged()?;
        self.consume(bufs, want);
        Ok(Some(want))
    }

    /// [`FileReader::read_batch_cached`] of the whole range at once, without the `fstat` after
    /// the read, for a kept file whose cache confirms after the read that nothing changed it
    /// ([`EntryCache::confirm_file`](super::EntryCache::confirm_file)); the caller must not
    /// send the bytes otherwise. When the bytes read are `memo`'s bytes, its digest is the
    /// range's and they are not hashed. Otherwise they are hashed, and a range of at most
    /// [`DigestMemo::MAX`] comes back with a memo of them, for the kept file to hold.
    /// `Ok(None)` as for `read_batch_cached`, and also, with nothing read, when some of the
    /// range was read before or `bufs` cannot hold it all.
    pub fn read_whole_kept(
        &mut self,
        bufs: &mut [&mut [u8]],
        memo: Option<&DigestMemo>,
    ) -> Result<Option<(usize, Option<DigestMemo>)>, FsError> {
        let want = self.want(bufs);
        if self.sent > 0 || want as u64 != self.remaining {
            return Ok(None);
        }
        if self.read_into(bufs, want)?.is_none() {
            return Ok(None);
        }
        if let Some(memo) = memo.filter(|memo| memo.holds(bufs, want)) {
            self.known = Some(memo.digest);
            self.advance(want);
            return Ok(Some((want, None)));
        }
        self.consume(bufs, want);
        if want > DigestMemo::MAX {
            return Ok(Some((want, None)));
        }
        let mut bytes = Vec::with_capacity(want);
        let mut left = want;
        for buf in bufs.iter() {
            let n = left.min(buf.len());
            bytes.extend_from_slice(&buf[..n]);
            left -= n;
        }
        let digest = self.digest();
        self.known = Some(digest);
        let memo = DigestMemo {
            bytes: bytes.into_boxed_slice(),
            digest,
        };
        Ok(Some((want, Some(memo))))
    }

    /// Reads `want` bytes at the reader's position into `bufs` if no byte has to come from a
    /// disk, without hashing them or moving past them; `Ok(None)` as for
    /// [`FileReader::read_batch_cached`].
    fn read_into(&self, bufs: &mut [&mut [u8]], want: usize) -> Result<Option<()>, FsError> {
        let io = |errno| FsError::Io {
            path: self.path.clone(),
            errno,
        };
        let mut iov = io_slices(bufs, 0, want);
        // tmpfs and ramfs keep file pages in memory and do not implement RWF_NOWAIT: read
        // them plainly, without first asking (each system call costs a microsecond here).
        let read = if memory_backed(self.opened.dev, &self.file) {
            rustix::io::preadv(&*self.file, &mut iov, self.pos)
        } else {
            rustix::io::preadv2(
                &*self.file,
                &mut iov,
                self.pos,
                rustix::io::ReadWriteFlags::NOWAIT,
            )
        };
        let n = match read {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN)
            | Err(rustix::io::Errno::OPNOTSUPP)
            | Err(rustix::io::Errno::INTR) => return Ok(None),
            Err(errno) => return Err(io(errno)),
        };
        if n == 0 && want > 0 {
            return Err(FsError::Changed(self.path.clone()));
        }
        if n < want {
            return Ok(None);
        }
        Ok(Some(()))
    }

    /// How many bytes the next read takes: the rest of the range, or as many as `bufs` hold.
    fn want(&self, bufs: &[&mut [u8]]) -> usize {
        let room: usize = bufs.iter().map(|b| b.len()).sum();
        usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(room)
    }

    /// Hashes the `len` bytes just read into `bufs` and moves past them.
    fn consume(&mut self, bufs: &[&mut [u8]], len: usize) {
        let hasher = self.hasher.get_or_insert_with(Default::default);
        let mut left = len;
        for buf in bufs {
            let n = left.min(buf.len());
            hasher.update(&buf[..n]);
            left -= n;
        }
        self.advance(len);
    }

    /// Moves past `len` bytes read (and hashed, or matched by a memo).
    fn advance(&mut self, len: usize) {
        self.pos += len as u64;
        self.remaining -= len as u64;
        self.sent += len as u64;
    }

    fn check_unchanged(&self) -> Result<(), FsError> {
        let now = rustix::fs::fstat(&self.file).map_err(|errno| FsError::Io {
            path: self.path.clone(),
            errno,
        })?;
        if Meta::from_stat(&now).unchanged_since(&self.opened) {
            Ok(())
        } else {
            Err(FsError::Changed(self.path.clone()))
        }
    }

    /// The end frame, after a last check that the file is still as it was when opened.
    pub fn finish(self) -> Result<FetchEnd, FsError> {
        self.check_unchanged()?;
        self.end()
    }

    /// [`FileReader::finish`] right after the read that took the range's last bytes, with
    /// nothing sent in between: that read checked the file after reading them, so the check
    /// is not repeated (a system call costs a microsecond here). An empty range, which no
    /// read checked, is checked as by `finish`.
    pub fn finish_just_read(self) -> Result<FetchEnd, FsError> {
        if self.remaining > 0 || self.sent == 0 {
            return self.finish();
        }
        self.end()
    }

    fn end(self) -> Result<FetchEnd, FsError> {
        Ok(FetchEnd {
            bytes: self.sent,
            digest: self.known.unwrap_or_else(|| self.digest()),
        })
    }

    /// The digest of the bytes hashed so far.
    fn digest(&self) -> [u8; 32] {
        match &self.hasher {
            Some(hasher) => hasher.finalize(),
            None => FetchDigest::new().finalize(),
        }
    }
}

/// The parts of `bufs` from byte `skip` up to byte `end`, counted across them in order, for
/// one vectored read.
fn io_slices<'a>(bufs: &'a mut [&mut [u8]], skip: usize, end: usize) -> Vec<IoSliceMut<'a>> {
    let mut start = 0;
    let mut slices = Vec::with_capacity(bufs.len());
    for buf in bufs.iter_mut() {
        let (from, to) = (start, start + buf.len());
        start = to;
        let (a, b) = (skip.max(from), end.min(to));
        if a < b {
            slices.push(IoSliceMut::new(&mut buf[a - from..b - from]));
        }
    }
    slices
}

/// Whether the file's pages live in memory (tmpfs, ramfs): reading them copies, never waits
/// for a disk (a swapped-out tmpfs page can, like any swapped-out page of this process).
///
/// The answer is remembered per device (`st_dev`, one per mounted file system), so it costs
/// one `fstatfs` per file system, not one per read. A device number is only reused after its
/// file system is unmounted; should a served tree have a tmpfs unmounted and a disk file
/// system mounted under the same number, a small read could then wait for that disk on the
/// runtime thread: slower, never wrong.
fn memory_backed(dev: u64, file: &File) -> bool {
    // statfs(2) magic numbers; `f_type`'s C type differs between targets, hence the cast.
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    /// Devices remembered; past it the list starts over.
    const KNOWN: usize = 64;
    static VERDICTS: Mutex<Vec<(u64, bool)>> = Mutex::new(Vec::new());
    let known = VERDICTS
        .lock()
        .ok()
        .and_then(|known| known.iter().find(|(d, _)| *d == dev).map(|&(_, m)| m));
    if let Some(memory) = known {
        return memory;
    }
    let Ok(fs) = rustix::fs::fstatfs(file) else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)]
    let memory = matches!(fs.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC);
    if let Ok(mut known) = VERDICTS.lock() {
        if known.len() >= KNOWN {
            known.clear();
        }
        known.push((dev, memory));
    }
    memory
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::digest::fetch_digest;

    /// tmpfs is recognised, and the answer is then remembered for its device.
    #[test]
    fn memory_backing_is_known_per_device() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let file = File::open(dir.path().join("f")).unwrap();
        let dev = rustix::fs::fstat(&file).unwrap().st_dev as u64;
        let memory = memory_backed(dev, &file);
        let fs = rustix::fs::fstatfs(&file).unwrap();
        #[allow(clippy::unnecessary_cast)]
        let tmpfs = fs.f_type as i64 == 0x0102_1994;
        assert_eq!(memory, tmpfs);
        assert_eq!(memory_backed(dev, &file), memory, "remembered");
    }

    #[test]
    fn ranges_at_the_edges() {
        assert_eq!(resolve(0, TO_END, 10).unwrap(), (0, 10));
        assert_eq!(resolve(0, 0, 10).unwrap(), (0, 0));
        assert_eq!(resolve(10, TO_END, 10).unwrap(), (10, 0));
        assert_eq!(resolve(10, 0, 10).unwrap(), (10, 0));
        assert_eq!(resolve(3, 7, 10).unwrap(), (3, 7));
        assert!(resolve(11, TO_END, 10).is_err());
        assert!(resolve(10, 1, 10).is_err());
        assert!(resolve(3, 8, 10).is_err());
        assert!(resolve(1, u64::MAX - 1, 10).is_err(), "overflowing end");
        assert!(resolve(u64::MAX, 1, 10).is_err());
        assert_eq!(resolve(0, TO_END, 0).unwrap(), (0, 0));
    }

    #[test]
    fn reader_hashes_exactly_the_range_and_detects_changes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let jail = Jail::open(dir.path()).unwrap();
        let path = RelPath::parse("f", 8).unwrap();
        let (mut reader, response) = FileReader::open(&jail, path.clone(), 10, 50_000).unwrap();
        assert_eq!(
            (response.offset, response.length, response.size),
            (10, 50_000, 100_000)
        );
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16_384];
        while reader.remaining() > 0 {
            let n = reader.read_batch(&mut [&mut buf[..]]).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, &data[10..50_010]);
        let end = reader.finish().unwrap();
        assert_eq!(end.bytes, 50_000);
        assert_eq!(
            end.digest,
            ferry_protocol::digest::fetch_digest(&data[10..50_010])
        );

        let (mut reader, _) = FileReader::open(&jail, path, 0, TO_END).unwrap();
        reader.read_batch(&mut [&mut buf[..]]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("f"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
            .unwrap();
        let err = reader.read_batch(&mut [&mut buf[..]]).unwrap_err();
        assert_eq!(err.code(), ferry_protocol::ErrorCode::FILE_CHANGED);
    }

    /// Issue 10: a read into several buffers (a fetch's slots) fills them in order, skips an
    /// empty one, stops at the range's end, and hashes exactly the range, by both the plain
    /// and the cached read.
    #[test]
    fn a_read_into_several_buffers_fills_them_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let jail = Jail::open(dir.path()).unwrap();
        let path = RelPath::parse("f", 8).unwrap();
        for cached in [false, true] {
            let (mut reader, _) = FileReader::open(&jail, path.clone(), 3, 990).unwrap();
            let mut got = Vec::new();
            while reader.remaining() > 0 {
                let (mut a, mut b, mut c) = ([0u8; 5], [0u8; 0], [0u8; 300]);
                let mut bufs = [&mut a[..], &mut b[..], &mut c[..]];
                let n = if cached {
                    match reader.read_batch_cached(&mut bufs).unwrap() {
                        Some(n) => n,
                        None => return, // a file system that cannot say; nothing to check
                    }
                } else {
                    reader.read_batch(&mut bufs).unwrap()
                };
                // 990 bytes, 305 a read: three full reads and 75.
                assert!(n == 305 || n == 75, "{n}");
                let mut left = n;
                for buf in &bufs {
                    let take = left.min(buf.len());
                    got.extend_from_slice(&buf[..take]);
                    left -= take;
                }
            }
            assert_eq!(got, &data[3..993]);
            let end = reader.finish().unwrap();
            assert_eq!(
                end.digest,
                ferry_protocol::digest::fetch_digest(&data[3..993])
            );
        }
    }

    /// Issue 10: a kept file's range read whole reuses the digest remembered with the same
    /// bytes instead of hashing them again (the second read makes no new memo, and a memo
    /// whose digest was planted wrong shows that its digest is the one sent); bytes that
    /// differ from the memo's (a change no event reported, e.g. a store through a shared
    /// `mmap`) are hashed afresh, so the digest is always the digest of the bytes read.
    #[test]
    fn a_digest_memo_is_used_only_for_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("f"), &old).unwrap();
        let jail = Jail::open(dir.path()).unwrap();
        let path = RelPath::parse("f", 8).unwrap();
        // One read of the whole range [3, 993) into two buffers, as into a fetch's slots.
        let read = |memo: Option<&DigestMemo>| {
            let (mut reader, _) = FileReader::open(&jail, path.clone(), 3, 990).unwrap();
            let (mut a, mut b) = ([0u8; 500], [0u8; 490]);
            let got = reader.read_whole_kept(&mut [&mut a[..], &mut b[..]], memo);
            let (n, fresh) = got.unwrap()?;
            assert_eq!(n, 990);
            let bytes = [&a[..], &b[..]].concat();
            Some((bytes, reader.finish_just_read().unwrap(), fresh))
        };
        let Some((bytes, end, memo)) = read(None) else {
            return; // a file system that cannot say whether the pages are in memory
        };
        assert_eq!((bytes.as_slice(), end.bytes), (&old[3..993], 990));
        assert_eq!(end.digest, fetch_digest(&old[3..993]));
        let memo = memo.expect("a memo of the bytes read");

        let (_, again, fresh) = read(Some(&memo)).unwrap();
        assert_eq!(again.digest, end.digest);
        assert!(fresh.is_none(), "the memo's digest was reused");
        let planted = DigestMemo {
            digest: [0xAA; 32],
            ..memo.clone()
        };
        let (_, reused, _) = read(Some(&planted)).unwrap();
        assert_eq!(
            reused.digest, [0xAA; 32],
            "the memo's digest is the one used"
        );

        // Same size, other bytes: the memo no longer matches them.
        let new: Vec<u8> = old.iter().map(|b| b ^ 0x5A).collect();
        std::fs::write(dir.path().join("f"), &new).unwrap();
        let (bytes, end, fresh) = read(Some(&memo)).unwrap();
        assert_eq!(bytes, &new[3..993]);
        assert_eq!(
            end.digest,
            fetch_digest(&new[3..993]),
            "not the memo's digest"
        );
        assert_eq!(fresh.expect("a memo of the new bytes").digest, end.digest);
    }

    #[test]
    fn io_slices_cover_the_asked_bytes_across_buffers() {
        let lens = |skip, end| -> Vec<usize> {
            let mut bufs = [&mut [0u8; 4][..], &mut [0u8; 0][..], &mut [0u8; 6][..]];
            io_slices(&mut bufs, skip, end)
                .iter()
                .map(|s| s.len())
                .collect()
        };
        assert_eq!(lens(0, 10), [4, 6]);
        assert_eq!(lens(0, 3), [3]);
        assert_eq!(lens(3, 10), [1, 6]);
        assert_eq!(lens(4, 7), [3]);
        assert_eq!(lens(10, 10), Vec::<usize>::new());
    }
}
