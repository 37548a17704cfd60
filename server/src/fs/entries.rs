//! Described listings of small directories, kept while nothing in them changes, so listing an
//! unchanged directory costs no `getdents` and no `fstatat` per entry: on this kind of machine
//! a system call costs over a microsecond, and a 100-entry listing was 100 of them.
//!
//! Validation is by inotify, not by timestamps: a file's size or mtime can change without its
//! directory's metadata changing, so the [`NameCache`](super::NameCache) rule cannot cover
//! entries. When a listing is stored, the process's inotify instance watches the directory
//! and every entry's own inode (so a write through a hard link elsewhere, or a link made later,
//! is seen too). The kernel queues an event inside the system call that makes the change
//! (write, truncate, fallocate, utimes, chmod, chown, link, unlink, rename, create), before it
//! returns; every lookup reads the queue first and drops the listings an event touches. So a
//! change whose call returned before the listing request was read is never served stale.
//!
//! What a listing is not kept for, so the [`Lister`](super::Lister) reads it every time:
//! directories with a symbolic link (the target is another path, resolved per request), an
//! entry on another file system (a mount point), more than [`MAX_ENTRIES`] entries, and file
//! systems whose changes may not reach inotify (network and FUSE file systems, overlays: only
//! tmpfs, ramfs, ext2/3/4, xfs and btrfs are trusted). A change that made an event during the
//! fill is not stored either.
//!
//! Two changes make no event: a store through a shared `mmap`, which moves mtime (lazily, at
//! the first write fault after writeback) without a system call on the file, and a file system
//! mounted on a subdirectory (whose entry then describes the mounted root). A listing is
//! therefore also described afresh once it is [`TTL`] old (by one request, while the others
//! keep it for at most one more [`TTL`]).
//!
//! Limits: at most [`MAX_WATCHES`] inotify watches (each pins its inode in memory); past it,
//! the instance is replaced and everything is read afresh.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_protocol::message::{Entry, EntryKind, ListPage};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{AtFlags, Dir, FileType};
use rustix::io::Errno;

use super::jail::Meta;
use super::list::{stamp, Stamp};

/// Largest directory kept, in entries.
pub const MAX_ENTRIES: usize = 1024;
/// Most inotify watches held at once.
pub const MAX_WATCHES: usize = 16_384;
/// Age after which a kept listing is described again (see the module doc: `mmap` stores).
pub const TTL: Duration = Duration::from_secs(1);

/// What every watch asks for: anything that changes an entry's metadata, or a directory's
/// names (which changes that directory's own mtime, size and link count).
pub(super) fn watch_flags() -> WatchFlags {
    WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DONT_FOLLOW
}

/// File systems whose every local change reaches inotify (`statfs` magic numbers).
pub(super) const TRUSTED_FS: [i64; 6] = [
    0x0102_1994, // tmpfs
    0x8584_58f6, // ramfs
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x2FC1_2FC1, // zfs
];

/// A directory's entries, described, sorted bytewise by name.
#[derive(Debug)]
pub struct Listing {
    stamp: Stamp,
    entries: Vec<Entry>,
    /// Names left out because they are not UTF-8.
    skipped: u64,
}

impl Listing {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Names left out because they are not valid UTF-8 (spec §3.5).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The entries cut into pages of at most `page_bytes` encoded bytes (at least one entry
    /// each), as [`Lister::next_page`](super::Lister::next_page) cuts them.
    pub fn pages(&self, page_bytes: usize) -> Vec<ListPage> {
        let mut pages = Vec::new();
        let mut page = ListPage::default();
        let mut size = 2usize;
        for entry in &self.entries {
            let len = entry.encoded_len();
            if !page.entries.is_empty()
                && (size + len > page_bytes || page.entries.len() == usize::from(u16::MAX))
            {
                pages.push(std::mem::take(&mut page));
                size = 2;
            }
            size += len;
            page.entries.push(entry.clone());
        }
        if !page.entries.is_empty() {
            pages.push(page);
        }
        pages
    }
}

/// Kept listings by directory identity `(dev, ino)`, with the inotify instance that
/// invalidates them. One per process ([`EntryCache::shared`]): a listing is only reached
/// through a directory the jail opened, so it serves every tree.
#[derive(Debug)]
pub struct EntryCache {
    pub(super) inner: Mutex<Inner>,
    /// Open files kept for fetches (`super::files`), under a lock of their own: a fetch's
    /// look-up takes only this one, and its confirmation takes `inner` once (to read the event
    /// queue). Lock order: `inner`, then `files`.
    pub(super) files: Mutex<super::files::Kept>,
    pub(super) ttl: Duration,
    pub(super) hits: AtomicU64,
}

#[derive(Debug)]
pub(super) struct Inner {
    /// `None` when inotify is unavailable: nothing is kept.
    pub(super) notify: Option<Arc<OwnedFd>>,
    /// Bumped when `notify` is replaced; a fill that started under another is dropped.
    pub(super) epoch: u64,
    /// Events read so far.
    pub(super) seq: u64,
    pub(super) watches: HashMap<i32, Watch>,
    /// Kept listings, each with the time it is to be described again.
    dirs: HashMap<(u64, u64), (Arc<Listing>, Instant)>,
    /// Directories found unfit to keep (a symlink, too many entries, an untrusted file
    /// system), with their stamp then: not described again until their names change.
    unfit: HashMap<(u64, u64), Stamp>,
}

#[derive(Debug, Default)]
pub(super) struct Watch {
    /// `seq` of the last event on this watch.
    pub(super) last_event: u64,
    /// Listings that depend on it.
    dirs: Vec<(u64, u64)>,
    /// Kept files that depend on it: the file itself (`None`: any event drops it), or a
    /// directory on its path (`Some(k)`: the path's component `k` is the name in it that the
    /// path goes through, so only an event naming that entry, or the directory itself, drops
    /// it).
    pub(super) files: HashMap<super::files::FileRef, Option<usize>>,
}

impl Inner {
    /// Reads every queued event and drops the listings and files they touch.
    pub(super) fn drain(&mut self, files: &Mutex<super::files::Kept>) {
        let Inner {
            notify,
            seq,
            watches,
            dirs,
            ..
        } = self;
        let Some(fd) = notify.as_ref() else { return };
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(fd.as_fd(), &mut buf);
        loop {
            match reader.next() {
                Ok(event) => {
                    *seq += 1;
                    if event.events().contains(ReadFlags::QUEUE_OVERFLOW) {
                        // Events were lost: nothing kept can be trusted.
                        dirs.clear();
                        super::files::Kept::clear_in(files);
                        for watch in watches.values_mut() {
                            watch.last_event = *seq;
                        }
                        continue;
                    }
                    let watch = watches.entry(event.wd()).or_default();
                    watch.last_event = *seq;
                    for dir in watch.dirs.drain(..) {
                        dirs.remove(&dir);
                    }
                    if !watch.files.is_empty() {
                        let named = event.file_name().map(|n| n.to_bytes()).unwrap_or_default();
                        super::files::Kept::forget_named(files, &mut watch.files, named);
                    }
                }
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => continue,
                Err(error) => {
                    // Cannot read the queue: keep nothing from now on.
                    tracing::warn!(%error, "cannot read inotify events; listings and files are no longer cached");
                    dirs.clear();
                    super::files::Kept::clear_in(files);
                    *notify = None;
                    return;
                }
            }
        }
    }

    /// Replaces the inotify instance (dropping every watch) and forgets everything.
    pub(super) fn reset(&mut self, files: &Mutex<super::files::Kept>) {
        self.notify = new_instance();
        self.epoch += 1;
        self.watches.clear();
        self.dirs.clear();
        super::files::Kept::clear_in(files);
    }
}

fn new_instance() -> Option<Arc<OwnedFd>> {
    match inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK) {
        Ok(fd) => Some(Arc::new(fd)),
        Err(error) => {
            tracing::debug!(%error, "no inotify; listings are not cached");
            None
        }
    }
}

impl EntryCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                notify: new_instance(),
                epoch: 0,
                seq: 0,
                watches: HashMap::new(),
                dirs: HashMap::new(),
                unfit: HashMap::new(),
            }),
            files: Default::default(),
            ttl,
            hits: AtomicU64::new(0),
        }
    }

    /// The process's cache.
    pub fn shared() -> Arc<Self> {
        static SHARED: OnceLock<Arc<EntryCache>> = OnceLock::new();
        SHARED.get_or_init(|| Arc::new(Self::new(TTL))).clone()
    }

    /// Listings answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The kept listing of the directory open at `dir`, if nothing in it changed since it was
    /// described. Two system calls (`fstat`, and a read of the event queue that finds it
    /// empty), neither of which waits for a disk, so it may run on a runtime thread.
    pub fn lookup(&self, dir: &impl AsFd) -> Result<Option<Arc<Listing>>, Errno> {
        let now = stamp(&rustix::fs::fstat(dir)?);
        let Ok(mut inner) = self.inner.lock() else {
            return Ok(None);
        };
        inner.drain(&self.files);
        let id = (now.0, now.1);
        let Some((listing, renew)) = inner.dirs.get_mut(&id) else {
            return Ok(None);
        };
        if listing.stamp != now {
            inner.dirs.remove(&id);
            return Ok(None);
        }
        let at = Instant::now();
        if at >= *renew {
            // This caller describes it again; the others meanwhile keep the listing, which no
            // event has touched, rather than all describing it at once.
            *renew = at + self.ttl;
            return Ok(None);
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(listing.clone()))
    }

    /// Describes the directory open at `dir` and keeps the result if it may be kept (see the
    /// module doc); `None` leaves the listing to the [`Lister`](super::Lister). Blocking.
    pub fn fill(&self, dir: &OwnedFd) -> Result<Option<Arc<Listing>>, Errno> {
        let started = Instant::now();
        let (notify, epoch, mark) = {
            let Ok(mut inner) = self.inner.lock() else {
                return Ok(None);
            };
            inner.drain(&self.files);
            let Some(notify) = inner.notify.clone() else {
                return Ok(None);
            };
            (notify, inner.epoch, inner.seq)
        };
        let before = stamp(&rustix::fs::fstat(dir)?);
        if self.is_unfit(&before) {
            return Ok(None);
        }
        let fs = rustix::fs::fstatfs(dir)?;
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
        if !TRUSTED_FS.contains(&(fs.f_type as i64)) {
            return Ok(self.unfit(before));
        }
        // The directory is watched before anything in it is read, so any change from here on
        // makes an event (and one between the stamp above and the watch changes the stamp).
        let proc_dir = format!("/proc/self/fd/{}", dir.as_raw_fd());
        // `/.`: the directory itself. The bare `/proc/self/fd/N` is the descriptor's magic link,
        // which `IN_DONT_FOLLOW` would watch instead (and no name change would reach it).
        let dir_path = format!("{proc_dir}/.");
        let Ok(dir_wd) = inotify::add_watch(&*notify, dir_path.as_str(), watch_flags()) else {
            return Ok(None);
        };
        let mut names = Vec::new();
        let mut reader = Dir::new(
            dir.try_clone()
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?,
        )?;
        while let Some(entry) = reader.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if entry.file_type() == FileType::Symlink || names.len() == MAX_ENTRIES {
                return Ok(self.unfit(before));
            }
            names.push(name.to_vec());
        }
        names.sort_unstable();
        let mut wds = vec![dir_wd];
        let mut entries = Vec::with_capacity(names.len());
        let mut skipped = 0;
        for name in names {
            let Ok(name) = String::from_utf8(name) else {
                skipped += 1;
                continue;
            };
            // Watch the entry's inode before describing it; if the name is replaced in
            // between, the directory's watch sees that.
            let path = format!("{proc_dir}/{name}");
            let Ok(wd) = inotify::add_watch(&*notify, path.as_str(), watch_flags()) else {
                return Ok(None);
            };
            wds.push(wd);
            let st = match rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(e),
            };
            let meta = Meta::from_stat(&st);
            if meta.kind == EntryKind::SYMLINK || meta.dev != before.0 {
                return Ok(self.unfit(before));
            }
            entries.push(meta.entry(name));
        }
        let after = stamp(&rustix::fs::fstat(dir)?);
        if before != after {
            return Ok(None);
        }
        let listing = Arc::new(Listing {
            stamp: after,
            entries,
            skipped,
        });
        let Ok(mut inner) = self.inner.lock() else {
            return Ok(Some(listing));
        };
        inner.drain(&self.files);
        if inner.epoch != epoch {
            return Ok(Some(listing));
        }
        if inner.watches.len() + wds.len() > MAX_WATCHES {
            inner.reset(&self.files);
            return Ok(Some(listing));
        }
        // Something changed while it was being described: serve it once, do not keep it.
        if wds
            .iter()
            .any(|wd| inner.watches.get(wd).is_some_and(|w| w.last_event > mark))
        {
            return Ok(Some(listing));
        }
        let id = (after.0, after.1);
        for wd in wds {
            let watch = inner.watches.entry(wd).or_default();
            if !watch.dirs.contains(&id) {
                watch.dirs.push(id);
            }
        }
        inner.dirs.insert(id, (listing.clone(), started + self.ttl));
        Ok(Some(listing))
    }
}

impl EntryCache {
    fn is_unfit(&self, now: &Stamp) -> bool {
        self.inner
            .lock()
            .is_ok_and(|inner| inner.unfit.get(&(now.0, now.1)) == Some(now))
    }

    /// Remembers that the directory with stamp `then` cannot be kept; returns `None`.
    fn unfit(&self, then: Stamp) -> Option<Arc<Listing>> {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.unfit.len() >= UNFIT_DIRS {
                inner.unfit.clear();
            }
            inner.unfit.insert((then.0, then.1), then);
        }
        None
    }
}

/// Unfit directories remembered; past it the list starts over.
const UNFIT_DIRS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::list::tests::set_mtime;
    use crate::fs::Lister;
    use rustix::fs::{Mode, OFlags};
    use std::io::Write;
    use std::path::Path;

    fn open(path: &Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    /// The listing as the server would send it through `cache`, and whether it was a hit.
    fn cached(cache: &EntryCache, dir: &Path) -> (Vec<Entry>, bool) {
        let fd = open(dir);
        if let Some(listing) = cache.lookup(&fd).unwrap() {
            return (listing.entries().to_vec(), true);
        }
        let listing = cache
            .fill(&fd)
            .unwrap()
            .expect("a plain directory is described");
        (listing.entries().to_vec(), false)
    }

    /// The listing read afresh, without any cache.
    fn fresh(dir: &Path) -> Vec<Entry> {
        let mut lister = Lister::new(open(dir), false, 0, 1 << 20).unwrap();
        let mut out = Vec::new();
        while let Some(page) = lister.next_page(1 << 16).unwrap() {
            out.extend(page.entries);
        }
        out
    }

    /// A kept listing is never stale: each change below, made after the listing was kept (the
    /// second listing before it must be a hit), shows in the next listing exactly as a fresh
    /// read shows it. The changes: a file grown, an mtime moved by one nanosecond, a file
    /// replaced by a rename, one removed, a mode changed, a write through a hard link in
    /// another directory, a write through a hard link made after the listing was kept, a write
    /// through a descriptor opened before, a file created inside a subdirectory (the
    /// subdirectory's mtime), and a new name with the directory's mtime put back.
    #[test]
    fn kept_entries_are_never_stale() {
        if !Path::new("/proc/self/fd").is_dir() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        let other = root.path().join("other");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&other).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        for name in ["a", "b", "c", "d", "e", "f"] {
            std::fs::write(dir.join(name), name.as_bytes()).unwrap();
        }
        std::fs::write(other.join("h"), b"h").unwrap();
        std::fs::hard_link(other.join("h"), dir.join("h")).unwrap();
        let mut held = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("f"))
            .unwrap();
        let cache = EntryCache::new(Duration::from_secs(3600));

        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: Vec<Change> = vec![
            (
                "grown",
                Box::new(|| std::fs::write(dir.join("a"), b"longer").unwrap()),
            ),
            (
                "mtime by 1 ns",
                Box::new(|| {
                    let st = rustix::fs::stat(dir.join("b")).unwrap();
                    set_mtime(
                        &dir.join("b"),
                        st.st_mtime as i64,
                        (st.st_mtime_nsec as i64 + 1) % 1_000_000_000,
                    );
                }),
            ),
            (
                "replaced",
                Box::new(|| {
                    std::fs::write(other.join("new-c"), b"replacement c").unwrap();
                    std::fs::rename(other.join("new-c"), dir.join("c")).unwrap();
                }),
            ),
            (
                "removed",
                Box::new(|| std::fs::remove_file(dir.join("d")).unwrap()),
            ),
            (
                "chmod",
                Box::new(|| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dir.join("e"), std::fs::Permissions::from_mode(0o600))
                        .unwrap();
                }),
            ),
            (
                "through a hard link",
                Box::new(|| std::fs::write(other.join("h"), b"hhhhhhhh").unwrap()),
            ),
            (
                "hard link made later",
                Box::new(|| std::fs::hard_link(dir.join("a"), other.join("a2")).unwrap()),
            ),
            (
                "through the later hard link",
                Box::new(|| std::fs::write(other.join("a2"), b"via a2, longer").unwrap()),
            ),
            (
                "subdirectory",
                Box::new(|| std::fs::write(dir.join("sub/x"), b"x").unwrap()),
            ),
            (
                "new name, directory mtime put back",
                Box::new(|| {
                    let st = rustix::fs::stat(&dir).unwrap();
                    std::fs::write(dir.join("g"), b"g").unwrap();
                    set_mtime(&dir, st.st_mtime as i64, st.st_mtime_nsec as i64);
                }),
            ),
        ];
        for (what, change) in &changes {
            let (first, _) = cached(&cache, &dir);
            assert_eq!(first, fresh(&dir), "{what}: before the change");
            let (second, hit) = cached(&cache, &dir);
            assert!(hit, "{what}: an unchanged directory is kept");
            assert_eq!(second, first);
            change();
            assert_eq!(cached(&cache, &dir).0, fresh(&dir), "{what}: stale");
        }
        let (_, hit) = cached(&cache, &dir);
        assert!(hit);
        held.write_all(b"more").unwrap();
        assert_eq!(
            cached(&cache, &dir).0,
            fresh(&dir),
            "a descriptor opened before"
        );
        assert!(cache.hits() > changes.len() as u64);
    }

    /// The directory's own watch reports a new name by itself (without it, only the
    /// directory's timestamps would, and those are as coarse as the kernel's clock tick).
    #[test]
    fn a_new_name_is_reported_by_the_directory_watch() {
        if !Path::new("/proc/self/fd").is_dir() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), b"a").unwrap();
        let cache = EntryCache::new(Duration::from_secs(3600));
        let fd = open(root.path());
        if cache.fill(&fd).unwrap().is_none() || cache.lookup(&fd).unwrap().is_none() {
            return; // an untrusted file system: nothing is kept
        }
        std::fs::write(root.path().join("b"), b"b").unwrap();
        let id = stamp(&rustix::fs::fstat(&fd).unwrap());
        let mut inner = cache.inner.lock().unwrap();
        inner.drain(&cache.files);
        assert!(
            !inner.dirs.contains_key(&(id.0, id.1)),
            "the event dropped it"
        );
    }

    /// Directories with a symlink are left to the lister, and a listing past its age is
    /// described again.
    #[test]
    fn links_are_not_kept_and_old_listings_are_read_again() {
        if !Path::new("/proc/self/fd").is_dir() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), b"a").unwrap();
        let cache = EntryCache::new(Duration::ZERO);
        let fd = open(root.path());
        assert!(cache.fill(&fd).unwrap().is_some());
        assert!(cache.lookup(&fd).unwrap().is_none(), "zero ttl: never kept");
        std::os::unix::fs::symlink("a", root.path().join("l")).unwrap();
        let cache = EntryCache::new(TTL);
        assert!(cache.fill(&open(root.path())).unwrap().is_none());
        assert!(
            cache.fill(&open(root.path())).unwrap().is_none(),
            "still unfit"
        );
        // Once the link is gone (the directory's names changed), it is kept again.
        std::fs::remove_file(root.path().join("l")).unwrap();
        assert!(cache.fill(&open(root.path())).unwrap().is_some());
        assert!(cache.lookup(&open(root.path())).unwrap().is_some());
        assert_eq!(cache.hits(), 1);
    }

    #[test]
    fn pages_are_cut_like_the_listers() {
        let root = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(root.path().join(format!("file-{i:03}")), b"").unwrap();
        }
        let cache = EntryCache::new(TTL);
        let Some(listing) = cache.fill(&open(root.path())).unwrap() else {
            return; // an untrusted file system: nothing to compare
        };
        for page_bytes in [1, 100, 1000, 1 << 16] {
            let mut lister = Lister::new(open(root.path()), false, 0, 1 << 20).unwrap();
            let mut want = Vec::new();
            while let Some(page) = lister.next_page(page_bytes).unwrap() {
                want.push(page);
            }
            assert_eq!(listing.pages(page_bytes), want, "{page_bytes}");
        }
    }
}
