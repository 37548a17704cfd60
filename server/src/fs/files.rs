//! Open files kept for fetches, validated by the same inotify instance as the kept listings
//! ([`EntryCache`]), so a hot small file costs no path walk: an empty read of the event queue
//! replaces two `openat2`, two `fstat`, an `fcntl` and two `close`.
//!
//! A file is kept under its jail (root identity and link policy) and its request path. When
//! it is stored, the root, every directory on the path and the file's own inode are watched
//! before the jail opens the file, and the file is kept only if no event touched any of them
//! from before the open to after it. From then on anything that could change what the path
//! names, or the file's metadata, makes an event inside the system call that does it: a name
//! created, removed or renamed in any directory on the path, a directory on it renamed,
//! removed or `chmod`ed, the file written, truncated, `chmod`ed, linked or unlinked, through
//! any name or descriptor. Every lookup reads the queue first and drops what an event touches,
//! so a change whose call returned before the fetch request was read is never served stale.
//!
//! Contents are never served from the cache: every fetch reads the file (`pread`) and checks
//! its metadata after the read, as an uncached fetch does, so even a change that makes no event
//! (a store through a shared `mmap`) shows in the bytes, or fails the fetch as changed. A kept
//! file may hold one [`DigestMemo`] (a small range's bytes and their digest, at most
//! [`DigestMemo::MAX`]): a fetch on the spot that reads exactly those bytes again sends the
//! memo's digest instead of hashing them, so the digest is still that of the bytes sent.
//!
//! Not kept, so every fetch opens the file through the jail: paths through a symbolic link,
//! paths that cross a mount point, file systems whose changes may not reach inotify (as for
//! listings: only local ones are trusted), and anything while inotify is unavailable. A
//! mount made over a directory on the path makes no event; a kept file is therefore opened
//! afresh once it is [`TTL`](super::entries::TTL) old. At most [`MAX_FILES`] descriptors are
//! held; an unlinked file's descriptor is closed at the next lookup of any file.
//!
//! Confinement is the jail's: the descriptor kept is the one [`Jail::open_file`] returned, and
//! the watched path is walked one component at a time without following links, so no watch
//! and no descriptor reaches outside the root.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_protocol::message::EntryKind;
use rustix::fs::inotify;
use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::entries::{watch_flags, EntryCache, MAX_WATCHES, TRUSTED_FS};
use super::jail::{FsError, Jail, Links, Meta};
use super::path::RelPath;
use super::range::DigestMemo;

/// Most descriptors kept open at once; fewer where the process may open few (see
/// [`max_files`]).
pub const MAX_FILES: usize = 1024;

/// Descriptors the cache may hold: [`MAX_FILES`], or a quarter of the process's descriptor
/// limit if that is less, so that kept files never starve accepts and fetches.
fn max_files() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let quarter = limit.map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX));
        MAX_FILES.min(quarter)
    })
}
/// Paths found unfit to keep, remembered; past it the list starts over.
const UNFIT_FILES: usize = 4096;

/// Which jail a path is resolved in: two jails with the same key resolve every path alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JailKey {
    root: (u64, u64),
    refuse_links: bool,
}

impl JailKey {
    pub fn of(jail: &Jail) -> Self {
        Self {
            root: jail.root_id(),
            refuse_links: jail.links() == Links::Refuse,
        }
    }
}

/// A kept file's name, as the watches it depends on know it.
pub(super) type FileRef = (JailKey, Arc<str>);

#[derive(Debug)]
struct KeptFile {
    file: Arc<File>,
    meta: Meta,
    /// When it is to be opened afresh (see the module doc: mounts).
    renew: Instant,
    /// The last small range fetched on the spot, with its digest.
    memo: Option<Arc<DigestMemo>>,
}

/// The kept files, under the entry cache's `files` lock.
#[derive(Debug, Default)]
pub(super) struct Kept {
    by_jail: HashMap<JailKey, HashMap<Arc<str>, KeptFile>>,
    count: usize,
    /// Paths not to be kept, until the time given (they may become fit: a link removed).
    unfit: HashMap<FileRef, Instant>,
}

impl Kept {
    pub(super) fn forget(&mut self, (jail, path): &FileRef) {
        if let Some(files) = self.by_jail.get_mut(jail) {
            if files.remove(path).is_some() {
                self.count -= 1;
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.by_jail.clear();
        self.count = 0;
    }

    /// Clears the kept files behind `lock`.
    pub(super) fn clear_in(lock: &Mutex<Kept>) {
        if let Ok(mut kept) = lock.lock() {
            kept.clear();
        }
    }

    /// One event on a watch that `dependents` depend on: drops the kept files it may touch
    /// and stops tracking them there. `named` is the entry the event names in a watched
    /// directory (empty: the watched inode itself), so a new name, or a sibling written,
    /// drops only the files whose path goes through that name.
    pub(super) fn forget_named(
        lock: &Mutex<Kept>,
        dependents: &mut HashMap<FileRef, Option<usize>>,
        named: &[u8],
    ) {
        let Ok(mut kept) = lock.lock() else {
            return;
        };
        dependents.retain(|file, component| {
            let touched = match component {
                Some(k) if !named.is_empty() => {
                    file.1.split('/').nth(*k).map(str::as_bytes) == Some(named)
                }
                _ => true,
            };
            if touched {
                kept.forget(file);
            }
            !touched
        });
    }
}

/// A kept file as [`EntryCache::peek_file`] finds it: descriptor, metadata, digest memo.
pub type Peeked = (Arc<File>, Meta, Option<Arc<DigestMemo>>);

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// Kept, and nothing changed since: the descriptor and the file's metadata now.
    Hit(Arc<File>, Meta),
    /// Not kept (or due to be opened afresh): [`EntryCache::fill_file`] may keep it.
    Miss,
    /// Recently found unfit to keep: open it through the jail.
    Unfit,
}

impl EntryCache {
    /// The kept file at `path` in `jail`, if nothing that decides what it names or describes
    /// changed since it was opened. One system call (an empty read of the event queue) that
    /// cannot wait for a disk, so it may run on a runtime thread.
    pub fn lookup_file(&self, jail: JailKey, path: &RelPath) -> Lookup {
        let Ok(mut inner) = self.inner.lock() else {
            return Lookup::Unfit;
        };
        inner.drain(&self.files);
        if inner.notify.is_none() {
            return Lookup::Unfit;
        }
        let key = path.as_kernel_path();
        let now = Instant::now();
        let Ok(mut kept) = self.files.lock() else {
            return Lookup::Unfit;
        };
        if let Some(kept) = kept.by_jail.get_mut(&jail).and_then(|f| f.get_mut(key)) {
            if now >= kept.renew {
                // This caller opens it again; the others keep using it meanwhile.
                kept.renew = now + self.ttl;
                return Lookup::Miss;
            }
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Hit(kept.file.clone(), kept.meta);
        }
        match kept.unfit.get(&(jail, Arc::from(key))) {
            Some(until) if now < *until => Lookup::Unfit,
            _ => Lookup::Miss,
        }
    }

    /// The kept file at `path`, without reading the event queue: a candidate to read, whose
    /// bytes may be sent only once [`EntryCache::confirm_file`] says, after the read, that it
    /// is still kept. Saves a system call: one read of the queue after the file's read both
    /// validates the kept name and metadata and stands in for the `fstat` that checks that
    /// nothing changed the file during the read (any change that returned before it made an
    /// event). `None`: not kept, or due to be opened afresh.
    /// Also the kept file's [`DigestMemo`], if it has one.
    pub fn peek_file(&self, jail: JailKey, path: &RelPath) -> Option<Peeked> {
        // The files' own lock only: the event queue is read once, by the confirmation.
        let kept = self.files.lock().ok()?;
        let kept = kept.by_jail.get(&jail)?.get(path.as_kernel_path())?;
        // Due: left to a task, whose lookup opens it afresh.
        if Instant::now() >= kept.renew {
            return None;
        }
        Some((kept.file.clone(), kept.meta, kept.memo.clone()))
    }

    /// Reads the event queue; whether `file` (from [`EntryCache::peek_file`]) is still the kept
    /// file at `path`, so nothing changed what `path` names or the file's content and
    /// metadata up to this call. If so, a `memo` of what was just read replaces the file's.
    pub fn confirm_file(
        &self,
        jail: JailKey,
        path: &RelPath,
        file: &Arc<File>,
        memo: Option<DigestMemo>,
    ) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        inner.drain(&self.files);
        drop(inner);
        let Ok(mut kept) = self.files.lock() else {
            return false;
        };
        let Some(kept) = kept
            .by_jail
            .get_mut(&jail)
            .and_then(|files| files.get_mut(path.as_kernel_path()))
            .filter(|kept| Arc::ptr_eq(&kept.file, file))
        else {
            return false;
        };
        if let Some(memo) = memo {
            kept.memo = Some(Arc::new(memo));
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Drops the kept file at `path` (a fetch found it changed in a way no event reported).
    pub fn forget_file(&self, jail: JailKey, path: &RelPath) {
        if let Ok(mut kept) = self.files.lock() {
            kept.forget(&(jail, Arc::from(path.as_kernel_path())));
        }
    }

    /// Opens the regular file at `path` through `jail`, exactly as [`Jail::open_file`] does
    /// (same errors), and keeps the descriptor if it may be kept (see the module doc).
    /// Blocking: walks the path.
    pub fn fill_file(&self, jail: &Jail, path: &RelPath) -> Result<(Arc<File>, Meta), FsError> {
        let key = JailKey::of(jail);
        let started = Instant::now();
        let begun = self.inner.lock().ok().and_then(|mut inner| {
            inner.drain(&self.files);
            let notify = inner.notify.clone()?;
            Some((notify, inner.epoch, inner.seq))
        });
        let Some((notify, epoch, mark)) = begun else {
            let (file, meta) = jail.open_file(path)?;
            return Ok((Arc::new(file), meta));
        };
        // Watch before opening, so any change from here on makes an event.
        let watched = watch_path(&notify, jail, path);
        let (file, meta) = jail.open_file(path)?;
        let file = Arc::new(file);
        let wds = match watched {
            Ok(Watched::Fit { wds, parent }) => {
                // The jail may have followed a final link within the root; what was watched is
                // the name itself, so it must be the file opened.
                let same = rustix::fs::statat(&parent, path.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| Meta::from_stat(&st))
                    .is_ok_and(|st| {
                        st.kind == EntryKind::FILE && (st.dev, st.ino) == (meta.dev, meta.ino)
                    });
                if !same || meta.dev != jail.root_id().0 || !trusted(&file) {
                    self.unfit_file(key, path, started);
                    return Ok((file, meta));
                }
                wds
            }
            Ok(Watched::Unfit) => {
                self.unfit_file(key, path, started);
                return Ok((file, meta));
            }
            // No watch (the system's inotify limit) or a race on the way: serve it, and try
            // again once it is due.
            Err(_) => {
                self.unfit_file(key, path, started);
                return Ok((file, meta));
            }
        };
        let Ok(mut inner) = self.inner.lock() else {
            return Ok((file, meta));
        };
        inner.drain(&self.files);
        if inner.epoch != epoch {
            return Ok((file, meta));
        }
        if inner.watches.len() + wds.len() > MAX_WATCHES {
            inner.reset(&self.files);
            return Ok((file, meta));
        }
        // Something changed while it was being opened: serve it once, do not keep it.
        if wds
            .iter()
            .any(|wd| inner.watches.get(wd).is_some_and(|w| w.last_event > mark))
        {
            return Ok((file, meta));
        }
        let name: Arc<str> = Arc::from(path.as_kernel_path());
        let Ok(mut guard) = self.files.lock() else {
            return Ok((file, meta));
        };
        let kept = &mut *guard;
        kept.unfit.remove(&(key, name.clone()));
        let files = kept.by_jail.entry(key).or_default();
        let fresh = KeptFile {
            file: file.clone(),
            meta,
            renew: started + self.ttl,
            memo: None,
        };
        match files.insert(name.clone(), fresh) {
            Some(_) => {}
            None if kept.count < max_files() => kept.count += 1,
            None => {
                // Full: keep what is kept; this one is served, not kept, until it is due.
                files.remove(&name);
                drop((guard, inner));
                self.unfit_file(key, path, started);
                return Ok((file, meta));
            }
        }
        drop(guard);
        // Watch `k` (the root, then each directory on the path) holds component `k`; the last
        // one is the file itself.
        let last = wds.len() - 1;
        for (k, wd) in wds.into_iter().enumerate() {
            let component = (k < last).then_some(k);
            let watch = inner.watches.entry(wd).or_default();
            watch
                .files
                .entry((key, name.clone()))
                // The same directory twice on one path (a bind mount): any event drops it.
                .and_modify(|seen| {
                    if *seen != component {
                        *seen = None;
                    }
                })
                .or_insert(component);
        }
        Ok((file, meta))
    }

    fn unfit_file(&self, jail: JailKey, path: &RelPath, started: Instant) {
        if let Ok(mut kept) = self.files.lock() {
            let ttl = self.ttl;
            let unfit = &mut kept.unfit;
            if unfit.len() >= UNFIT_FILES {
                unfit.clear();
            }
            unfit.insert((jail, Arc::from(path.as_kernel_path())), started + ttl);
        }
    }
}

enum Watched {
    /// Every watch, and the directory holding the final name.
    Fit {
        wds: Vec<i32>,
        parent: std::os::fd::OwnedFd,
    },
    /// A link or a mount point on the path.
    Unfit,
}

/// Watches the root, every directory on `path` and the final name (not following it).
fn watch_path(
    notify: &std::os::fd::OwnedFd,
    jail: &Jail,
    path: &RelPath,
) -> Result<Watched, Errno> {
    let parents = match jail.parents(path) {
        Ok(parents) => parents,
        Err(Errno::LOOP) => return Ok(Watched::Unfit),
        Err(e) => return Err(e),
    };
    let root = jail.root_fd();
    let dev = jail.root_id().0;
    let mut wds = Vec::with_capacity(parents.len() + 2);
    // The directory itself: `/proc/self/fd/N` alone would be the descriptor's magic link,
    // which `IN_DONT_FOLLOW` watches instead of the directory.
    let proc = |fd: &dyn AsRawFd| format!("/proc/self/fd/{}/.", fd.as_raw_fd());
    wds.push(inotify::add_watch(
        notify,
        proc(&root).as_str(),
        watch_flags(),
    )?);
    for dir in &parents {
        if Meta::from_stat(&rustix::fs::fstat(dir)?).dev != dev {
            return Ok(Watched::Unfit);
        }
        wds.push(inotify::add_watch(
            notify,
            proc(dir).as_str(),
            watch_flags(),
        )?);
    }
    let parent = match parents.into_iter().last() {
        Some(dir) => dir,
        None => rustix::io::fcntl_dupfd_cloexec(root.as_fd(), 0)?,
    };
    let name = format!("/proc/self/fd/{}/{}", parent.as_raw_fd(), path.file_name());
    wds.push(inotify::add_watch(notify, name.as_str(), watch_flags())?);
    Ok(Watched::Fit { wds, parent })
}

/// Whether the file's file system reports every local change to inotify.
fn trusted(file: &File) -> bool {
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    rustix::fs::fstatfs(file).is_ok_and(|fs| TRUSTED_FS.contains(&(fs.f_type as i64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::list::tests::set_mtime;
    use ferry_protocol::ErrorCode;
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::time::Duration;

    /// What a fetch would see: the metadata it answers with and the bytes it reads.
    type Seen = Result<(Meta, Vec<u8>), ErrorCode>;

    fn read_all(file: &File, meta: Meta) -> (Meta, Vec<u8>) {
        let mut buf = vec![0u8; meta.size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], filled as u64).unwrap() {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        (meta, buf)
    }

    /// Through `cache`, as a fetch does: a kept file if there is one, else opened (and kept).
    /// Says whether it was kept.
    fn cached(cache: &EntryCache, jail: &Jail, path: &str) -> (Seen, bool) {
        let path = RelPath::parse(path, 16).unwrap();
        if let Lookup::Hit(file, meta) = cache.lookup_file(JailKey::of(jail), &path) {
            return (Ok(read_all(&file, meta)), true);
        }
        let seen = cache
            .fill_file(jail, &path)
            .map(|(file, meta)| read_all(&file, meta))
            .map_err(|e| e.code());
        (seen, false)
    }

    /// Opened through the jail, without any cache.
    fn fresh(jail: &Jail, path: &str) -> Seen {
        let path = RelPath::parse(path, 16).unwrap();
        jail.open_file(&path)
            .map(|(file, meta)| read_all(&file, meta))
            .map_err(|e| e.code())
    }

    /// A kept file is never stale: after each change below, made while the file was kept (the
    /// second fetch before it must be a hit), the next fetch through the cache sees exactly
    /// the metadata and bytes (or the error) that an uncached open sees. The changes: a write,
    /// a truncation, a write through a descriptor opened before, a rename over it, an unlink,
    /// a chmod, an mtime moved by one nanosecond, a write through a hard link in another
    /// directory, a replacement by a hard link to another file, a directory on the path
    /// renamed and made again, and a directory on the path replaced by a link out of the root.
    #[test]
    fn kept_files_are_never_stale() {
        if !Path::new("/proc/self/fd").is_dir() {
            return;
        }
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        let d = root.join("d");
        let other = root.join("other");
        for dir in [&d, &other, &d.join("sub"), &d.join("out")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for name in ["a", "b", "c", "e", "f", "g", "m", "r", "sub/s", "out/o"] {
            std::fs::write(d.join(name), format!("content of {name}")).unwrap();
        }
        std::fs::create_dir(outer.path().join("outside")).unwrap();
        std::fs::write(outer.path().join("outside/o"), b"CANARY outside the root").unwrap();
        std::fs::write(other.join("h"), b"h").unwrap();
        std::fs::hard_link(other.join("h"), d.join("h")).unwrap();
        std::fs::write(other.join("x"), b"another file entirely").unwrap();
        let mut held = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("g"))
            .unwrap();
        let jail = Jail::open(&root).unwrap();
        let cache = EntryCache::new(Duration::from_secs(3600));
        let (_, kept) = cached(&cache, &jail, "d/a");
        assert!(!kept);
        if !cached(&cache, &jail, "d/a").1 {
            // A file system whose changes may not reach inotify: nothing is kept to test.
            assert!(!trusted(&File::open(d.join("a")).unwrap()));
            return;
        }

        type Change<'a> = (&'a str, &'a str, Box<dyn FnMut() + 'a>);
        let changes: Vec<Change> = vec![
            (
                "written",
                "d/a",
                Box::new(|| std::fs::write(d.join("a"), b"CONTENT OF A").unwrap()),
            ),
            (
                "truncated",
                "d/b",
                Box::new(|| {
                    let f = std::fs::OpenOptions::new().write(true).open(d.join("b"));
                    f.unwrap().set_len(3).unwrap();
                }),
            ),
            (
                "through a descriptor opened before",
                "d/g",
                Box::new(|| held.write_all(b"+").unwrap()),
            ),
            (
                "renamed over",
                "d/c",
                Box::new(|| {
                    std::fs::write(other.join("new-c"), b"replacement c").unwrap();
                    std::fs::rename(other.join("new-c"), d.join("c")).unwrap();
                }),
            ),
            (
                "unlinked",
                "d/e",
                Box::new(|| std::fs::remove_file(d.join("e")).unwrap()),
            ),
            (
                "chmod",
                "d/f",
                Box::new(|| {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::Permissions::from_mode(0o600);
                    std::fs::set_permissions(d.join("f"), mode).unwrap();
                }),
            ),
            (
                "mtime by 1 ns",
                "d/m",
                Box::new(|| {
                    let st = rustix::fs::stat(d.join("m")).unwrap();
                    let nanos = (st.st_mtime_nsec as i64 + 1) % 1_000_000_000;
                    set_mtime(&d.join("m"), st.st_mtime as i64, nanos);
                }),
            ),
            (
                "through a hard link",
                "d/h",
                Box::new(|| std::fs::write(other.join("h"), b"hhhh").unwrap()),
            ),
            (
                "replaced by a hard link",
                "d/r",
                Box::new(|| {
                    std::fs::hard_link(other.join("x"), d.join("r.tmp")).unwrap();
                    std::fs::rename(d.join("r.tmp"), d.join("r")).unwrap();
                }),
            ),
            (
                "a directory on the path renamed and made again",
                "d/sub/s",
                Box::new(|| {
                    std::fs::rename(d.join("sub"), other.join("sub.old")).unwrap();
                    std::fs::create_dir(d.join("sub")).unwrap();
                    std::fs::write(d.join("sub/s"), b"a new s").unwrap();
                }),
            ),
            (
                "a directory on the path replaced by a link out of the root",
                "d/out/o",
                Box::new(|| {
                    std::fs::rename(d.join("out"), other.join("out.old")).unwrap();
                    std::os::unix::fs::symlink(outer.path().join("outside"), d.join("out"))
                        .unwrap();
                }),
            ),
        ];
        let count = changes.len() as u64;
        let hits = cache.hits();
        for (what, path, mut change) in changes {
            let (first, _) = cached(&cache, &jail, path);
            assert_eq!(first, fresh(&jail, path), "{what}: before the change");
            let (second, hit) = cached(&cache, &jail, path);
            assert!(hit, "{what}: an unchanged file is kept");
            assert_eq!(second, first);
            let key = JailKey::of(&jail);
            let rel = RelPath::parse(path, 16).unwrap();
            let (file, _, _) = cache.peek_file(key, &rel).expect("kept");
            assert!(
                cache.confirm_file(key, &rel, &file, None),
                "{what}: confirmed"
            );
            change();
            // The reader's way: the kept file read first, then confirmed.
            if let Some((file, meta, _)) = cache.peek_file(key, &rel) {
                let seen = read_all(&file, meta);
                if cache.confirm_file(key, &rel, &file, None) {
                    assert_eq!(
                        Ok(seen),
                        fresh(&jail, path),
                        "{what}: stale when read first"
                    );
                }
            }
            let (after, _) = cached(&cache, &jail, path);
            assert_eq!(after, fresh(&jail, path), "{what}: stale");
            assert_ne!(after, first, "{what}: the change shows");
        }
        assert!(cache.hits() >= hits + count);
        let (escaped, _) = cached(&cache, &jail, "d/out/o");
        assert_eq!(escaped, Err(ErrorCode::INVALID_PATH));
    }

    /// An event that names an entry drops only the kept files whose path goes through that
    /// name: a new name, a sibling written or removed, leave the others in the directory (and
    /// below it) kept; a name on the path changed still drops what is below it.
    #[test]
    fn an_event_drops_only_the_kept_files_it_names() {
        if !Path::new("/proc/self/fd").is_dir() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("d");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        for name in ["a", "b", "sub/s", "sub/t"] {
            std::fs::write(d.join(name), format!("content of {name}")).unwrap();
        }
        let jail = Jail::open(root.path()).unwrap();
        let cache = EntryCache::new(Duration::from_secs(3600));
        let paths = ["d/a", "d/b", "d/sub/s", "d/sub/t"];
        for path in paths {
            assert!(cached(&cache, &jail, path).0.is_ok());
        }
        if !cached(&cache, &jail, "d/a").1 {
            assert!(!trusted(&File::open(d.join("a")).unwrap()));
            return;
        }
        let kept = |path: &str| {
            let rel = RelPath::parse(path, 16).unwrap();
            matches!(cache.lookup_file(JailKey::of(&jail), &rel), Lookup::Hit(..))
        };
        assert!(paths.iter().all(|p| kept(p)), "all kept to begin with");
        // New names in `d` and in `d/sub`, and a name removed: nothing kept is named.
        std::fs::write(d.join("new"), b"new").unwrap();
        std::fs::write(d.join("sub/new"), b"new").unwrap();
        std::fs::remove_file(d.join("new")).unwrap();
        assert!(
            paths.iter().all(|p| kept(p)),
            "unrelated names drop nothing"
        );
        // A sibling written: only it is dropped, and it is never stale.
        std::fs::write(d.join("b"), b"B!").unwrap();
        assert!(kept("d/a") && kept("d/sub/s") && kept("d/sub/t"));
        assert!(!kept("d/b"));
        assert_eq!(cached(&cache, &jail, "d/b").0, fresh(&jail, "d/b"));
        // A directory on the path renamed: everything below it goes, the rest stays.
        std::fs::rename(d.join("sub"), d.join("sub.old")).unwrap();
        assert!(!kept("d/sub/s") && !kept("d/sub/t"));
        assert!(kept("d/a"));
        assert_eq!(cached(&cache, &jail, "d/sub/s").0, fresh(&jail, "d/sub/s"));
        // A name made again in the place of one on the path.
        for path in ["d/a", "d/b"] {
            assert!(cached(&cache, &jail, path).0.is_ok());
        }
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/s"), b"a new s").unwrap();
        let (after, _) = cached(&cache, &jail, "d/sub/s");
        assert_eq!(after, fresh(&jail, "d/sub/s"));
        assert!(kept("d/a") && kept("d/b"));
    }

    /// Paths through a link are opened through the jail every time, never kept; a kept file
    /// is opened afresh once it is due.
    #[test]
    fn links_are_not_kept_and_old_files_are_opened_again() {
        if !Path::new("/proc/self/fd").is_dir() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), b"f").unwrap();
        std::os::unix::fs::symlink("d", root.path().join("via-dir")).unwrap();
        std::os::unix::fs::symlink("d/f", root.path().join("via-file")).unwrap();
        let jail = Jail::open(root.path()).unwrap();
        let cache = EntryCache::new(Duration::from_secs(3600));
        for path in ["via-dir/f", "via-file"] {
            if jail.resolver() != crate::fs::Resolver::Openat2 {
                break;
            }
            let want = fresh(&jail, path);
            assert!(want.is_ok(), "{path}: links within the root are followed");
            for _ in 0..3 {
                let (seen, kept) = cached(&cache, &jail, path);
                assert_eq!(seen, want, "{path}");
                assert!(!kept, "{path}: a path through a link is not kept");
            }
        }
        let cache = EntryCache::new(Duration::ZERO);
        assert!(!cached(&cache, &jail, "d/f").1);
        let rel = RelPath::parse("d/f", 16).unwrap();
        assert!(cache.peek_file(JailKey::of(&jail), &rel).is_none(), "due");
        assert!(!cached(&cache, &jail, "d/f").1, "zero ttl: opened again");
        // Once due, the reader's peek leaves it alone, and the next lookup opens it afresh
        // (a sleep past the age only makes it due; nothing races).
        let ttl = Duration::from_millis(20);
        let cache = EntryCache::new(ttl);
        assert!(!cached(&cache, &jail, "d/f").1);
        if cache.peek_file(JailKey::of(&jail), &rel).is_some() {
            std::thread::sleep(ttl * 2);
            assert!(cache.peek_file(JailKey::of(&jail), &rel).is_none(), "due");
            let due = cache.lookup_file(JailKey::of(&jail), &rel);
            assert!(matches!(due, Lookup::Miss), "{due:?}");
        }
    }
}
