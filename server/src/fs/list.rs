//! Directory listing in a stable order (bytewise by name, depth first) with bounded memory.
//!
//! Sorting a directory normally means holding all its names. To keep a directory of 10^6
//! entries from costing 10^6 names per request, each open directory keeps only a *batch*: the
//! smallest names greater than the last one sent, up to a byte budget. Filling a batch is one
//! pass over the directory (`rewinddir` + `getdents`) with a max-heap that evicts the largest
//! name whenever the budget is exceeded; once a name has been evicted, larger names are
//! skipped for the rest of the pass. A directory that fits the budget is read once.
//!
//! Trade-off: memory is `O(budget)` per open directory instead of `O(entries)`, paid for with
//! `entries / batch` passes over very large directories (`O(n^2 / batch)` `getdents` work, each
//! pass from the dentry cache). With the default 1 MiB budget a 10^5-entry directory is one or
//! two passes, 10^6 about twenty. In a recursive walk each deeper level gets half of its
//! parent's budget (never less than [`MIN_BUDGET`]), so a whole walk stays under about twice
//! the budget whatever its depth.
//!
//! Entries are stat'ed with `fstatat(AT_SYMLINK_NOFOLLOW)` relative to the directory's own
//! descriptor, and subdirectories are opened with `O_NOFOLLOW | O_DIRECTORY` relative to it, so
//! a walk never descends through a symlink and cannot loop or leave the root. A symlink is
//! described by its target when a [`LinkResolver`] resolves it inside the root (the entry
//! then carries the link text if asked for); otherwise it is listed as a symlink of size 0,
//! and nothing says where it points (spec §3.4). Names that are not UTF-8
//! cannot be expressed on the wire and are skipped (counted in the log). Entries that vanish
//! between the pass and the stat are skipped too; entries created behind the cursor during a
//! walk are not listed, entries created ahead of it are.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol::message::{Entry, EntryKind, ListPage};
use rustix::fs::{AtFlags, Dir, Mode, OFlags};
use rustix::io::Errno;

use super::jail::{LinkResolver, Meta};

/// Smallest batch budget of a deep level.
pub const MIN_BUDGET: usize = 16 * 1024;

/// Bookkeeping cost charged per buffered name beyond its bytes (a `Vec` and a heap slot).
const NAME_OVERHEAD: usize = 48;

fn cost(name: &[u8]) -> usize {
    name.len() + NAME_OVERHEAD
}

/// Sorted names of small directories, so that listing a directory that has not changed skips
/// reading it (`getdents`, sorting, allocating every name again). Only names are kept: every
/// entry is still `fstatat`'ed on every listing, so sizes, times, kinds and modes are never
/// stale; a name is, only if the directory changed, which its own metadata tells.
///
/// Validation: a directory's `(dev, ino, nlink, size, mtime, ctime)` must equal what it was
/// when its names were read. Any change of a name in it (create, remove, rename in or out)
/// sets its mtime and ctime to the current time, and ctime cannot be set back by anyone, so a
/// change made after the names were read gives a later ctime, unless it falls in the same
/// timestamp tick as the change before it (coarse kernel clocks, 1 s or 2 s file systems).
/// That is why a directory changed less than [`RACY`] before it was read is not cached (the
/// "racy git" rule): its next change is then sure to carry a later time. The cost is that a
/// directory changing all the time is always read.
///
/// Why it matters for scaling: reading a directory takes the directory's own lock once per
/// entry (tmpfs: the dentry's `d_lock`, to walk its children past the reader's cursor; ext4:
/// `i_rwsem`), so every core listing the same directory queues on one lock. A cached listing
/// does not read the directory at all.
#[derive(Debug)]
pub struct NameCache {
    dirs: Mutex<HashMap<(u64, u64), Arc<Cached>>>,
    racy: Duration,
    hits: AtomicU64,
}

/// Directories remembered; past it the cache starts over (a listing then reads once more).
const CACHED_DIRS: usize = 4096;
/// Largest directory cached, in bytes of names (a few hundred entries).
const CACHED_BYTES: usize = 16 * 1024;
/// See [`NameCache`]: larger than any file system's timestamp granularity (2 s) plus a
/// coarse clock's lag.
pub const RACY: Duration = Duration::from_secs(3);

/// What a directory's metadata said when its names were read.
pub(crate) type Stamp = (u64, u64, u64, u64, i64, i64, i64, i64);

#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    names: Vec<Vec<u8>>,
}

// Field widths of `struct stat` differ between architectures, hence the casts.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn stamp(st: &rustix::fs::Stat) -> Stamp {
    (
        st.st_dev as u64,
        st.st_ino as u64,
        st.st_nlink as u64,
        st.st_size as u64,
        st.st_mtime as i64,
        st.st_mtime_nsec as i64,
        st.st_ctime as i64,
        st.st_ctime_nsec as i64,
    )
}

impl NameCache {
    pub fn new(racy: Duration) -> Self {
        Self {
            dirs: Mutex::new(HashMap::new()),
            racy,
            hits: AtomicU64::new(0),
        }
    }

    /// The process's cache. Keyed by the directory's identity, so one cache serves every
    /// tree: an entry is only reached through a directory the jail opened.
    pub fn shared() -> Arc<Self> {
        static SHARED: OnceLock<Arc<NameCache>> = OnceLock::new();
        SHARED.get_or_init(|| Arc::new(Self::new(RACY))).clone()
    }

    /// Listings answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn lookup(&self, now: &Stamp) -> Option<Arc<Cached>> {
        let dirs = self.dirs.lock().ok()?;
        let cached = dirs.get(&(now.0, now.1))?;
        (cached.stamp == *now).then(|| {
            self.hits.fetch_add(1, Ordering::Relaxed);
            cached.clone()
        })
    }

    /// Remembers `names`, read between `before` and `after`, starting at `started`, if the
    /// directory held still and had not changed within [`RACY`] of the read.
    fn store(&self, before: Stamp, after: Stamp, started: SystemTime, names: &VecDeque<Vec<u8>>) {
        if before != after || names.iter().map(|n| cost(n)).sum::<usize>() > CACHED_BYTES {
            return;
        }
        let Ok(since_epoch) = started.duration_since(UNIX_EPOCH) else {
            return;
        };
        let horizon = since_epoch.saturating_sub(self.racy);
        let changed = |secs: i64, nanos: i64| {
            u64::try_from(secs).map_or(Duration::ZERO, |s| {
                Duration::new(s, u32::try_from(nanos).unwrap_or(0).min(999_999_999))
            })
        };
        if changed(after.4, after.5) >= horizon || changed(after.6, after.7) >= horizon {
            return;
        }
        let Ok(mut dirs) = self.dirs.lock() else {
            return;
        };
        if dirs.len() >= CACHED_DIRS {
            dirs.clear();
        }
        dirs.insert(
            (after.0, after.1),
            Arc::new(Cached {
                stamp: after,
                names: names.iter().cloned().collect(),
            }),
        );
    }
}

/// One open directory of the walk.
#[derive(Debug)]
struct Level {
    /// Descriptor used for `fstatat` and for opening subdirectories.
    fd: OwnedFd,
    /// A duplicate of `fd` that reads entries; shares its file offset, which only it uses.
    /// Made on the first pass, which a cached listing never needs.
    dir: Option<Dir>,
    /// Where this directory's names may come from instead of a pass.
    cache: Option<Arc<NameCache>>,
    /// Path of this directory relative to the listed one, with a trailing `/` (or empty).
    prefix: String,
    /// The last name taken from this directory; the next batch starts after it.
    after: Option<Vec<u8>>,
    /// Sorted names not yet sent.
    batch: VecDeque<Vec<u8>>,
    /// No names exist beyond the current batch.
    exhausted: bool,
    budget: usize,
}

impl Level {
    fn new(fd: OwnedFd, prefix: String, budget: usize) -> Result<Self, Errno> {
        Ok(Self {
            fd,
            dir: None,
            cache: None,
            prefix,
            after: None,
            batch: VecDeque::new(),
            exhausted: false,
            budget,
        })
    }

    /// The next batch: from the cache when the directory is unchanged, else from a pass.
    fn refill(&mut self) -> Result<(), Errno> {
        let Some(cache) = self.cache.clone().filter(|_| self.after.is_none()) else {
            return self.pass();
        };
        let before = stamp(&rustix::fs::fstat(&self.fd)?);
        if let Some(cached) = cache.lookup(&before) {
            self.batch = cached.names.iter().cloned().collect();
            self.exhausted = true;
            return Ok(());
        }
        let started = SystemTime::now();
        self.pass()?;
        if self.exhausted {
            let after = stamp(&rustix::fs::fstat(&self.fd)?);
            cache.store(before, after, started, &self.batch);
        }
        Ok(())
    }

    /// One pass over the directory: the smallest names after the cursor that fit the budget.
    fn pass(&mut self) -> Result<(), Errno> {
        let dir = match &mut self.dir {
            Some(dir) => dir,
            None => self.dir.insert(Dir::new(
                self.fd
                    .try_clone()
                    .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?,
            )?),
        };
        dir.rewind();
        let mut heap: BinaryHeap<Vec<u8>> = BinaryHeap::new();
        let mut bytes = 0usize;
        // Smallest name evicted so far; everything at or above it waits for a later pass.
        let mut cut: Option<Vec<u8>> = None;
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if self.after.as_deref().is_some_and(|after| name <= after) {
                continue;
            }
            if cut.as_deref().is_some_and(|cut| name >= cut) {
                continue;
            }
            bytes += cost(name);
            heap.push(name.to_vec());
            while bytes > self.budget && heap.len() > 1 {
                if let Some(largest) = heap.pop() {
                    bytes -= cost(&largest);
                    cut = Some(largest);
                }
            }
        }
        self.exhausted = cut.is_none();
        self.batch = heap.into_sorted_vec().into();
        Ok(())
    }
}

/// A listing in progress. Blocking: drive it from a blocking thread, one page at a time.
#[derive(Debug)]
pub struct Lister {
    stack: Vec<Level>,
    recursive: bool,
    /// Directory levels below the listed one to descend into.
    max_depth: u16,
    /// Entries produced so far.
    total: u64,
    /// An entry that did not fit the previous page.
    carry: Option<Entry>,
    /// Names skipped because they are not UTF-8.
    skipped: u64,
    /// Follows symlinks inside the root; `None` lists every symlink as one, unfollowed.
    links: Option<LinkResolver>,
    /// Put the link text of followed symlinks into their entries.
    link_text: bool,
}

impl Lister {
    /// Starts listing the directory open at `dir`.
    pub fn new(
        dir: OwnedFd,
        recursive: bool,
        max_depth: u16,
        budget: usize,
    ) -> Result<Self, Errno> {
        Ok(Self {
            stack: vec![Level::new(dir, String::new(), budget.max(MIN_BUDGET))?],
            recursive,
            max_depth,
            total: 0,
            carry: None,
            skipped: 0,
            links: None,
            link_text: false,
        })
    }

    /// Takes the listed directory's names from `cache` while the directory is unchanged
    /// (see [`NameCache`]); subdirectories of a recursive walk are always read.
    pub fn with_cache(mut self, cache: Arc<NameCache>) -> Self {
        if let Some(top) = self.stack.first_mut() {
            top.cache = Some(cache);
        }
        self
    }

    /// Follows symlinks that stay inside the root with `resolver`; with `link_text`, entries
    /// of followed links also carry the link's text.
    pub fn with_links(mut self, resolver: Option<LinkResolver>, link_text: bool) -> Self {
        self.links = resolver;
        self.link_text = link_text;
        self
    }

    /// Entries produced so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Names skipped because they are not valid UTF-8.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Whether every entry has been produced, so the next page would be `None`. Lets a
    /// caller skip a trip to the blocking pool just to learn that.
    pub fn is_done(&self) -> bool {
        self.carry.is_none()
            && self
                .stack
                .iter()
                .all(|level| level.batch.is_empty() && level.exhausted)
    }

    /// The next page, at most `page_bytes` encoded (at least one entry), or `None` when done.
    pub fn next_page(&mut self, page_bytes: usize) -> Result<Option<ListPage>, Errno> {
        let mut page = ListPage::default();
        let mut size = 2usize;
        loop {
            let entry = match self.carry.take() {
                Some(entry) => entry,
                None => match self.next_entry()? {
                    Some(entry) => entry,
                    None => break,
                },
            };
            let len = entry.encoded_len();
            if !page.entries.is_empty()
                && (size + len > page_bytes || page.entries.len() == usize::from(u16::MAX))
            {
                self.carry = Some(entry);
                break;
            }
            size += len;
            page.entries.push(entry);
        }
        Ok((!page.entries.is_empty()).then_some(page))
    }

    fn next_entry(&mut self) -> Result<Option<Entry>, Errno> {
        loop {
            let depth = self.stack.len();
            let Some(level) = self.stack.last_mut() else {
                return Ok(None);
            };
            if level.batch.is_empty() {
                if !level.exhausted {
                    level.refill()?;
                }
                if level.batch.is_empty() {
                    self.stack.pop();
                    continue;
                }
            }
            let Some(name) = level.batch.pop_front() else {
                continue;
            };
            level.after = Some(name.clone());
            let st = match rustix::fs::statat(&level.fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            {
                Ok(st) => st,
                // Removed since the pass; not an error for the listing as a whole.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e),
            };
            let meta = Meta::from_stat(&st);
            let Ok(name_str) = std::str::from_utf8(&name) else {
                self.skipped += 1;
                continue;
            };
            let rel = format!("{}{}", level.prefix, name_str);
            if meta.kind == EntryKind::SYMLINK {
                self.total += 1;
                let followed = self.links.as_ref().and_then(|links| links.follow(&rel));
                let entry = match followed {
                    Some(target) => {
                        let mut entry = target.entry(rel);
                        if self.link_text {
                            entry.link =
                                rustix::fs::readlinkat(&level.fd, name.as_slice(), Vec::new())
                                    .ok()
                                    .and_then(|text| text.into_string().ok());
                        }
                        entry
                    }
                    // Leaves the root, dangles, or following is off: a link, and no more.
                    None => Meta { size: 0, ..meta }.entry(rel),
                };
                return Ok(Some(entry));
            }
            if self.recursive
                && meta.kind == EntryKind::DIRECTORY
                && depth <= usize::from(self.max_depth)
            {
                let child_budget = (level.budget / 2).max(MIN_BUDGET);
                match rustix::fs::openat(
                    &level.fd,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => {
                        let child = Level::new(fd, format!("{rel}/"), child_budget)?;
                        self.stack.push(child);
                    }
                    // Unreadable or vanished subdirectories are listed but not entered.
                    Err(e) => tracing::debug!(dir = %rel, error = %e, "not descending"),
                }
            }
            self.total += 1;
            return Ok(Some(meta.entry(rel)));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    fn all(lister: &mut Lister, page_bytes: usize) -> Vec<String> {
        let mut names = Vec::new();
        for _ in 0..100_000 {
            match lister.next_page(page_bytes).unwrap() {
                Some(page) => names.extend(page.entries.into_iter().map(|e| e.name)),
                None => return names,
            }
        }
        panic!("listing did not end");
    }

    /// (name, size, mtime) of every entry, through `cache`.
    fn described(dir: &std::path::Path, cache: &Arc<NameCache>) -> Vec<(String, u64, i64, u32)> {
        let mut lister = Lister::new(open(dir), false, 0, 1 << 20)
            .unwrap()
            .with_cache(cache.clone());
        let mut out = Vec::new();
        while let Some(page) = lister.next_page(1 << 16).unwrap() {
            out.extend(
                page.entries
                    .into_iter()
                    .map(|e| (e.name, e.size, e.mtime_secs, e.mtime_nanos)),
            );
        }
        out
    }

    /// Sets `path`'s access and modification times to exactly `secs`.`nanos`.
    pub(crate) fn set_mtime(path: &std::path::Path, secs: i64, nanos: i64) {
        let t = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nanos as _,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::empty(),
        )
        .unwrap();
    }

    /// A cached listing is never stale: after a rename, a size change, an entry's mtime moved
    /// within the same second, and a new name whose directory mtime was then put back exactly
    /// (only ctime tells), the next listing shows the change. Directories changed within
    /// [`RACY`] of being read are not cached, so the test waits that long once, for all cases.
    #[test]
    fn cached_names_are_never_stale() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (0..4).map(|i| root.path().join(format!("d{i}"))).collect();
        for dir in &dirs {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("a"), b"1").unwrap();
            std::fs::write(dir.join("b"), b"2").unwrap();
        }
        let cache = Arc::new(NameCache::new(RACY));
        // Too fresh to cache: read every time.
        described(&dirs[0], &cache);
        described(&dirs[0], &cache);
        assert_eq!(cache.hits(), 0);
        std::thread::sleep(RACY + Duration::from_millis(100));
        let mut hits = 0;
        for dir in &dirs {
            let first = described(dir, &cache);
            assert_eq!(described(dir, &cache), first);
            hits += 1;
            assert_eq!(cache.hits(), hits, "an unchanged old directory is cached");
        }
        let names =
            |d: &[(String, u64, i64, u32)]| d.iter().map(|e| e.0.clone()).collect::<Vec<_>>();

        std::fs::rename(dirs[0].join("b"), dirs[0].join("c")).unwrap();
        assert_eq!(names(&described(&dirs[0], &cache)), ["a", "c"]);

        std::fs::write(dirs[1].join("a"), b"longer").unwrap();
        assert_eq!(described(&dirs[1], &cache)[0].1, 6);

        let before = described(&dirs[2], &cache)[0].clone();
        set_mtime(
            &dirs[2].join("a"),
            before.2,
            i64::from((before.3 + 1) % 1_000_000_000),
        );
        let after = described(&dirs[2], &cache)[0].clone();
        assert_eq!(
            (after.2, after.3),
            (before.2, (before.3 + 1) % 1_000_000_000)
        );

        let st = rustix::fs::stat(&dirs[3]).unwrap();
        std::fs::write(dirs[3].join("new"), b"").unwrap();
        set_mtime(&dirs[3], st.st_mtime as i64, st.st_mtime_nsec as i64);
        assert_eq!(names(&described(&dirs[3], &cache)), ["a", "b", "new"]);
    }

    #[test]
    fn small_budget_gives_the_same_sorted_listing_in_many_passes() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        for i in 0..2000 {
            let name = format!("f{:05}-{}", (i * 7919) % 2000, "x".repeat(i % 40));
            std::fs::write(dir.path().join(&name), b"").unwrap();
            expected.push(name);
        }
        expected.sort();
        let mut lister = Lister::new(open(dir.path()), false, 0, MIN_BUDGET).unwrap();
        assert_eq!(all(&mut lister, 4096), expected);
        assert_eq!(lister.total(), 2000);
    }

    #[test]
    fn is_done_says_exactly_when_the_next_page_would_be_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for name in ["a", "b", "sub/c"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        // Small pages: more is coming after each of the first pages.
        let mut lister = Lister::new(open(dir.path()), true, 5, 1 << 20).unwrap();
        let mut pages = 0;
        while let Some(_page) = lister.next_page(1).unwrap() {
            pages += 1;
            if lister.is_done() {
                break;
            }
        }
        assert_eq!((pages, lister.total()), (4, 4));
        assert!(lister.next_page(1).unwrap().is_none());
        // One large page holds everything, and is_done knows it without another call.
        let mut lister = Lister::new(open(dir.path()), false, 0, 1 << 20).unwrap();
        assert_eq!(lister.next_page(1 << 16).unwrap().unwrap().entries.len(), 3);
        assert!(lister.is_done());
    }

    #[test]
    fn recursive_walk_is_depth_first_and_respects_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c/d")).unwrap();
        std::fs::write(dir.path().join("a.txt"), b"1").unwrap();
        std::fs::write(dir.path().join("b/c/d/deep.txt"), b"1").unwrap();
        std::fs::write(dir.path().join("b/z.txt"), b"1").unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("link")).unwrap();
        let mut lister = Lister::new(open(dir.path()), true, 10, 1 << 20).unwrap();
        assert_eq!(
            all(&mut lister, 1 << 16),
            [
                "a.txt",
                "b",
                "b/c",
                "b/c/d",
                "b/c/d/deep.txt",
                "b/z.txt",
                "link"
            ]
        );
        let mut lister = Lister::new(open(dir.path()), true, 1, 1 << 20).unwrap();
        assert_eq!(
            all(&mut lister, 1 << 16),
            ["a.txt", "b", "b/c", "b/z.txt", "link"]
        );
        let mut lister = Lister::new(open(dir.path()), false, 10, 1 << 20).unwrap();
        assert_eq!(all(&mut lister, 1 << 16), ["a.txt", "b", "link"]);
    }
}
