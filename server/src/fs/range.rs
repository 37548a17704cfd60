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
    /// tasks and futures, each move a copy.
    hasher: Box<FetchDigest>,
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
                hasher: Box::new(FetchDigest::new()),
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
        self.read_cached(bufs, true)
    }

    /// [`FileReader::read_batch_cached`] without the `fstat` after the read, for a kept file
    /// whose cache confirms after the read that nothing changed it
    /// ([`EntryCache::confirm_file`](super::EntryCache::confirm_file)); the caller must not
    /// send the bytes otherwise.
    pub fn read_batch_kept(&mut self, bufs: &mut [&mut [u8]]) -> Result<Option<usize>, FsError> {
        self.read_cached(bufs, false)
    }

    fn read_cached(
        &mut self,
        bufs: &mut [&mut [u8]],
        check: bool,
    ) -> Result<Option<usize>, FsError> {
        let want = self.want(bufs);
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
        if check {
            self.check_unchanged()?;
        }
        self.consume(bufs, want);
        Ok(Some(want))
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
        let mut left = len;
        for buf in bufs {
            let n = left.min(buf.len());
            self.hasher.update(&buf[..n]);
            left -= n;
        }
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
            digest: self.hasher.finalize(),
        })
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
