//! The root jail: every open goes through a descriptor of the root (the served tree, a swarm's
//! download directory, a client's destination) and is resolved beneath it by the kernel.
//!
//! Preferred: `openat2(root, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`. The kernel then
//! refuses any resolution step that would leave the root (`..`, absolute symlinks, symlinks
//! whose target climbs out, symlinked intermediate directories pointing outside) with `EXDEV`,
//! atomically, so a concurrent rename cannot race us out. Symlinks that stay inside the root
//! are followed, unless the jail refuses all links ([`Links::Refuse`], `RESOLVE_NO_SYMLINKS`).
//!
//! Fallback when the kernel lacks `openat2` (`ENOSYS`, before Linux 5.6, or a seccomp filter):
//! walk the components one `openat(O_NOFOLLOW)` at a time. That refuses every symlink, inside
//! the root or not: safe, less convenient, and logged once at startup.
//!
//! Reading lives here; creating, renaming and removing in [`crate::write`]. All blocking;
//! callers run these on blocking threads.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use ferry_protocol::message::{Entry, EntryKind};
use ferry_protocol::ErrorCode;
use rustix::fs::{Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::path::{PathError, RelPath};

/// How paths are resolved beneath the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`.
    Openat2,
    /// Per-component `openat(O_NOFOLLOW)`; refuses all symlinks.
    NoFollow,
}

/// Which symbolic links a path may go through. Either way nothing outside the root is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Links that resolve inside the root are followed (with [`Resolver::Openat2`]).
    WithinRoot,
    /// No link is followed anywhere on the path: a download directory holds only what the
    /// download created, so a link there was planted.
    Refuse,
}

/// A file-system request failed. Messages name only the client's relative path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("not found: {0}")]
    NotFound(RelPath),
    #[error("not a directory: {0}")]
    NotADirectory(RelPath),
    #[error("not a regular file: {0}")]
    NotAFile(RelPath),
    #[error("permission denied: {0}")]
    PermissionDenied(RelPath),
    #[error("{0} resolves outside the served root")]
    Escapes(RelPath),
    #[error("{0} goes through a symbolic link, which this server does not follow")]
    Symlink(RelPath),
    #[error("name too long: {0}")]
    NameTooLong(RelPath),
    #[error("range offset {offset} length {length} is invalid for a file of {size} bytes")]
    Range { offset: u64, length: u64, size: u64 },
    #[error("{0} changed while being sent")]
    Changed(RelPath),
    #[error("i/o error on {path}: {errno}")]
    Io { path: RelPath, errno: Errno },
}

impl FsError {
    /// The one mapping from file-system failures to wire codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Path(e) => e.code(),
            Self::NotFound(_) => ErrorCode::NOT_FOUND,
            Self::NotADirectory(_) => ErrorCode::NOT_A_DIRECTORY,
            Self::NotAFile(_) => ErrorCode::NOT_A_FILE,
            Self::PermissionDenied(_) => ErrorCode::PERMISSION_DENIED,
            Self::Escapes(_) | Self::Symlink(_) => ErrorCode::INVALID_PATH,
            Self::NameTooLong(_) => ErrorCode::NAME_TOO_LONG,
            Self::Range { .. } => ErrorCode::INVALID_RANGE,
            Self::Changed(_) => ErrorCode::FILE_CHANGED,
            // A full disk or quota is the server's state, not a bug, and the client can act on it.
            Self::Io { errno, .. } if *errno == Errno::NOSPC || *errno == Errno::DQUOT => {
                ErrorCode::NO_SPACE
            }
            Self::Io { .. } => ErrorCode::INTERNAL,
        }
    }

    /// Maps an errno from resolving or reading `path`.
    pub fn from_errno(errno: Errno, path: &RelPath, resolver: Resolver) -> Self {
        let path = path.clone();
        match errno {
            Errno::NOENT => Self::NotFound(path),
            Errno::NOTDIR => Self::NotADirectory(path),
            Errno::ACCESS | Errno::PERM => Self::PermissionDenied(path),
            // openat2 with RESOLVE_BENEATH: a step would leave the root.
            Errno::XDEV => Self::Escapes(path),
            Errno::LOOP if resolver == Resolver::NoFollow => Self::Symlink(path),
            Errno::LOOP => Self::Escapes(path),
            Errno::NAMETOOLONG => Self::NameTooLong(path),
            errno => Self::Io { path, errno },
        }
    }
}

/// The metadata the services need, decoded once from `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    pub ctime_secs: i64,
    pub ctime_nanos: u32,
    /// Permission bits, the low 12 bits of `st_mode`.
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
}

impl Meta {
    // Field widths of `struct stat` differ between architectures, hence the casts.
    #[allow(clippy::unnecessary_cast)]
    pub fn from_stat(st: &Stat) -> Self {
        let fmt = st.st_mode as u32 & libc::S_IFMT;
        let kind = match fmt {
            libc::S_IFREG => EntryKind::FILE,
            libc::S_IFDIR => EntryKind::DIRECTORY,
            libc::S_IFLNK => EntryKind::SYMLINK,
            _ => EntryKind::OTHER,
        };
        Self {
            kind,
            size: (st.st_size as i64).max(0) as u64,
            mtime_secs: st.st_mtime as i64,
            mtime_nanos: (st.st_mtime_nsec as u64).min(999_999_999) as u32,
            ctime_secs: st.st_ctime as i64,
            ctime_nanos: (st.st_ctime_nsec as u64).min(999_999_999) as u32,
            mode: st.st_mode as u32 & 0o7777,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        }
    }

    pub fn entry(&self, name: String) -> Entry {
        Entry {
            link: None,
            name,
            kind: self.kind,
            size: self.size,
            mtime_secs: self.mtime_secs,
            mtime_nanos: self.mtime_nanos,
            mode: self.mode,
        }
    }

    /// Same file, same size, same modification and change times: the content a reader saw
    /// between two such observations is what the file held throughout.
    pub fn unchanged_since(&self, earlier: &Meta) -> bool {
        self.dev == earlier.dev
            && self.ino == earlier.ino
            && self.size == earlier.size
            && (self.mtime_secs, self.mtime_nanos) == (earlier.mtime_secs, earlier.mtime_nanos)
            && (self.ctime_secs, self.ctime_nanos) == (earlier.ctime_secs, earlier.ctime_nanos)
    }
}

/// Resolves the symlinks a listing meets: each must stay inside the root to be followed.
#[derive(Debug)]
pub struct LinkResolver {
    root: OwnedFd,
    /// The listed directory, relative to the root (`"."` for the root).
    base: String,
}

impl LinkResolver {
    /// The metadata of what the link at `rel` (relative to the listed directory) points to,
    /// if it resolves inside the root; `None` if it leaves the root, dangles or loops.
    pub fn follow(&self, rel: &str) -> Option<Meta> {
        let path = format!("{}/{}", self.base, rel);
        let fd = rustix::fs::openat2(
            &self.root,
            path.as_str(),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()?;
        rustix::fs::fstat(&fd).ok().map(|st| Meta::from_stat(&st))
    }
}

/// A root directory, held open.
#[derive(Debug)]
pub struct Jail {
    pub(crate) root: OwnedFd,
    /// The root directory's `(st_dev, st_ino)`: which tree this jail serves.
    root_id: (u64, u64),
    pub(crate) resolver: Resolver,
    pub(crate) links: Links,
}

/// A descriptor's `(st_dev, st_ino)`.
#[allow(clippy::unnecessary_cast)] // field widths differ between architectures
fn identity(fd: &OwnedFd) -> Result<(u64, u64), Errno> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// How many times to retry an `openat2` that reports `EAGAIN` (a concurrent rename or mount
/// during a `RESOLVE_BENEATH` walk).
const OPENAT2_RETRIES: usize = 8;

impl Jail {
    /// Opens `root` (which must be a directory) and picks the resolver the kernel supports.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let resolver = match rustix::fs::openat2(
            &fd,
            ".",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(_) => Resolver::Openat2,
            Err(Errno::NOSYS) | Err(Errno::PERM) => {
                tracing::warn!(
                    "openat2 is unavailable; falling back to per-component O_NOFOLLOW opens, \
                     so no symbolic link will be followed"
                );
                Resolver::NoFollow
            }
            Err(e) => return Err(e.into()),
        };
        let root_id = identity(&fd)?;
        Ok(Self {
            root: fd,
            root_id,
            resolver,
            links: Links::WithinRoot,
        })
    }

    /// Forces the per-component fallback (tests exercise it on kernels that have `openat2`).
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    pub fn resolver(&self) -> Resolver {
        self.resolver
    }

    /// Sets which symbolic links paths may go through (default [`Links::WithinRoot`]).
    pub fn with_links(mut self, links: Links) -> Self {
        self.links = links;
        self
    }

    pub fn links(&self) -> Links {
        self.links
    }

    /// The root directory's `(st_dev, st_ino)`, read when the jail was opened: two jails with
    /// the same identity, resolver and links resolve every path alike.
    pub fn root_id(&self) -> (u64, u64) {
        self.root_id
    }

    /// Maps an errno met while resolving `path` in this jail.
    pub(crate) fn error(&self, errno: Errno, path: &RelPath) -> FsError {
        match (errno, self.links) {
            // RESOLVE_NO_SYMLINKS met a link: not an escape, a refused link.
            (Errno::LOOP, Links::Refuse) => FsError::Symlink(path.clone()),
            _ => FsError::from_errno(errno, path, self.resolver),
        }
    }

    /// Opens `path` beneath the root. `follow_final` decides whether a symlink in the last
    /// component is followed (still only within the root) or opened itself (with `O_PATH`).
    pub fn open_at(
        &self,
        path: &RelPath,
        flags: OFlags,
        follow_final: bool,
    ) -> Result<OwnedFd, FsError> {
        self.resolve(path, flags, follow_final)
            .map_err(|errno| self.error(errno, path))
    }

    /// [`Jail::open_at`] with the bare errno.
    pub(crate) fn resolve(
        &self,
        path: &RelPath,
        flags: OFlags,
        follow_final: bool,
    ) -> Result<OwnedFd, Errno> {
        self.resolve_with(path, flags, follow_final, ResolveFlags::empty())
    }

    /// [`Jail::resolve`] with `extra` resolve flags added to the jail's own (openat2 only).
    fn resolve_with(
        &self,
        path: &RelPath,
        flags: OFlags,
        follow_final: bool,
        extra: ResolveFlags,
    ) -> Result<OwnedFd, Errno> {
        // openat2 refuses O_PATH combined with anything but CLOEXEC, DIRECTORY, NOFOLLOW.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        match self.resolver {
            Resolver::Openat2 => {
                let flags = if follow_final {
                    flags
                } else {
                    flags | OFlags::NOFOLLOW
                };
                let resolve = extra
                    | match self.links {
                        Links::WithinRoot => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                        Links::Refuse => ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                    };
                let mut attempt = 0;
                loop {
                    match rustix::fs::openat2(
                        &self.root,
                        path.as_kernel_path(),
                        flags,
                        Mode::empty(),
                        resolve,
                    ) {
                        Err(Errno::AGAIN) if attempt < OPENAT2_RETRIES => attempt += 1,
                        other => break other,
                    }
                }
            }
            Resolver::NoFollow => self.open_no_follow(path, flags),
        }
    }

    fn open_no_follow(&self, path: &RelPath, flags: OFlags) -> Result<OwnedFd, Errno> {
        let components: Vec<&str> = path.components().collect();
        let Some((last, parents)) = components.split_last() else {
            return rustix::fs::openat(&self.root, ".", flags, Mode::empty());
        };
        let mut dir: Option<OwnedFd> = None;
        for name in parents {
            let at: BorrowedFd<'_> = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            let next = rustix::fs::openat(
                at,
                *name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| if e == Errno::NOTDIR { Errno::LOOP } else { e })?;
            dir = Some(next);
        }
        let at: BorrowedFd<'_> = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
        match rustix::fs::openat(at, *last, flags | OFlags::NOFOLLOW, Mode::empty()) {
            // O_DIRECTORY | O_NOFOLLOW on a symlink says ENOTDIR; report it as the link it is.
            Err(Errno::NOTDIR)
                if rustix::fs::statat(at, *last, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| Meta::from_stat(&st).kind == EntryKind::SYMLINK) =>
            {
                Err(Errno::LOOP)
            }
            other => other,
        }
    }

    /// Metadata of what `path` names. A final symlink that stays inside the root is followed
    /// (the target is described); one that leaves the root or dangles is refused like any
    /// other path that escapes or does not exist, without saying where it points. The
    /// no-follow resolver refuses every symlink (spec §3.4).
    pub fn stat(&self, path: &RelPath) -> Result<Meta, FsError> {
        let fd = self.open_at(path, OFlags::PATH, true)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| FsError::from_errno(e, path, self.resolver))?;
        let meta = Meta::from_stat(&st);
        if meta.kind == EntryKind::SYMLINK {
            // Only the no-follow resolver hands back a final symlink itself.
            return Err(FsError::Symlink(path.clone()));
        }
        Ok(meta)
    }

    /// For listings: a duplicate of the root descriptor, to resolve symlinks met in a walk
    /// against the root rather than the directory they sit in. `None` with the no-follow
    /// resolver, which follows no link.
    pub fn link_resolver(&self, base: &RelPath) -> Option<LinkResolver> {
        if self.resolver != Resolver::Openat2 || self.links == Links::Refuse {
            return None;
        }
        let root = self.root.try_clone().ok()?;
        Some(LinkResolver {
            root,
            base: base.as_kernel_path().to_owned(),
        })
    }

    /// Opens a regular file for reading. FIFOs, sockets and devices are refused before they are
    /// opened for reading: the first open is `O_PATH`, which has no side effects, and the
    /// second must reach the same inode.
    pub fn open_file(&self, path: &RelPath) -> Result<(File, Meta), FsError> {
        self.open_read(path, true)
    }

    /// [`Jail::open_file`], choosing whether a final symlink is followed (within the root) or
    /// refused as [`FsError::Symlink`].
    pub fn open_read(&self, path: &RelPath, follow_final: bool) -> Result<(File, Meta), FsError> {
        self.open_read_with(path, follow_final, ResolveFlags::empty())?
            .ok_or_else(|| self.error(Errno::AGAIN, path))
    }

    /// [`Jail::open_file`] only if it cannot wait for the disk: every step of the path must
    /// already be in the kernel's lookup cache (`RESOLVE_CACHED`, Linux 5.12), so the call is a
    /// few microseconds of CPU and may run on an async thread. `Ok(None)` when it would have
    /// to look something up (or the resolver is not `openat2`): use [`Jail::open_file`] on a
    /// blocking thread instead. Confinement is the same as [`Jail::open_file`]'s: the same
    /// `RESOLVE_BENEATH` walk and the same checks, only refusing to block.
    pub fn open_file_cached(&self, path: &RelPath) -> Result<Option<(File, Meta)>, FsError> {
        if self.resolver != Resolver::Openat2 {
            return Ok(None);
        }
        self.open_read_with(path, true, ResolveFlags::CACHED)
    }

    /// [`Jail::open_read`] with extra resolve flags. `Ok(None)`: with `RESOLVE_CACHED`, a walk
    /// said `EAGAIN` (not all cached, or a rename raced it).
    fn open_read_with(
        &self,
        path: &RelPath,
        follow_final: bool,
        extra: ResolveFlags,
    ) -> Result<Option<(File, Meta)>, FsError> {
        let open = |flags| match self.resolve_with(path, flags, follow_final, extra) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::AGAIN) if !extra.is_empty() => Ok(None),
            Err(errno) => Err(self.error(errno, path)),
        };
        let Some(probe) = open(OFlags::PATH)? else {
            return Ok(None);
        };
        let st =
            rustix::fs::fstat(&probe).map_err(|e| FsError::from_errno(e, path, self.resolver))?;
        let meta = Meta::from_stat(&st);
        match meta.kind {
            EntryKind::FILE => {}
            // Only the no-follow resolver, or `follow_final` false, hands back a final symlink.
            EntryKind::SYMLINK => return Err(FsError::Symlink(path.clone())),
            _ => return Err(FsError::NotAFile(path.clone())),
        }
        // O_NONBLOCK: should a FIFO be swapped in between the two opens, the open does not
        // hang; the inode check below then refuses it.
        let Some(fd) = open(OFlags::RDONLY | OFlags::NONBLOCK)? else {
            return Ok(None);
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| FsError::from_errno(e, path, self.resolver))?;
        let opened = Meta::from_stat(&st);
        if opened.kind != EntryKind::FILE || opened.dev != meta.dev || opened.ino != meta.ino {
            return Err(FsError::Changed(path.clone()));
        }
        // Regular files ignore O_NONBLOCK for reads; clear it anyway so nothing surprises us.
        let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
        Ok(Some((File::from(fd), opened)))
    }

    /// Opens a directory for listing.
    pub fn open_dir(&self, path: &RelPath) -> Result<OwnedFd, FsError> {
        // O_DIRECTORY makes the kernel refuse anything else before opening it.
        self.open_at(path, OFlags::RDONLY | OFlags::DIRECTORY, true)
    }

    /// [`Jail::open_dir`] only if it cannot wait for a disk: every step of the path must be
    /// in the kernel's caches (`RESOLVE_CACHED`); `Ok(None)` otherwise, and always with the
    /// no-follow resolver. Lets a listing answered from memory skip the blocking pool.
    pub fn open_dir_cached(&self, path: &RelPath) -> Result<Option<OwnedFd>, FsError> {
        if self.resolver != Resolver::Openat2 {
            return Ok(None);
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        match self.resolve_with(path, flags, true, ResolveFlags::CACHED) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::AGAIN) => Ok(None),
            Err(errno) => Err(self.error(errno, path)),
        }
    }

    /// The root's descriptor, for watching the root itself (inotify through
    /// `/proc/self/fd`). Resolving paths goes through the jail's own methods, never this.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The directories `path` passes through below the root (not the root, not the final
    /// component), each opened `O_PATH` one component at a time without following any link,
    /// so none of them can be outside the root. Lets a cache watch every directory whose
    /// names decide what `path` names. A link on the way is `ELOOP`.
    pub fn parents(&self, path: &RelPath) -> Result<Vec<OwnedFd>, Errno> {
        let components: Vec<&str> = path.components().collect();
        let Some((_, parents)) = components.split_last() else {
            return Ok(Vec::new());
        };
        let mut dirs: Vec<OwnedFd> = Vec::with_capacity(parents.len());
        for name in parents {
            let at: BorrowedFd<'_> = dirs.last().map_or(self.root.as_fd(), |d| d.as_fd());
            let next = rustix::fs::openat(
                at,
                *name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| if e == Errno::NOTDIR { Errno::LOOP } else { e })?;
            dirs.push(next);
        }
        Ok(dirs)
    }

    /// A jail whose root is the directory `path` beneath this one (a client confined to a
    /// subtree): it is opened through this jail, and everything later resolves beneath it,
    /// so neither `..` nor a link can leave the subtree.
    pub fn subtree(&self, path: &RelPath) -> Result<Jail, FsError> {
        let root = self.open_at(path, OFlags::PATH | OFlags::DIRECTORY, true)?;
        let root_id = identity(&root).map_err(|e| self.error(e, path))?;
        Ok(Self {
            root,
            root_id,
            resolver: self.resolver,
            links: self.links,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("sub/deeper/file.txt"), b"inside").unwrap();
        std::fs::write(outer.path().join("canary.txt"), b"CANARY").unwrap();
        std::fs::create_dir(outer.path().join("outside_dir")).unwrap();
        std::fs::write(outer.path().join("outside_dir/secret.txt"), b"CANARY").unwrap();
        symlink("../canary.txt", root.join("escape")).unwrap();
        symlink(outer.path().join("canary.txt"), root.join("abs_escape")).unwrap();
        symlink("../outside_dir", root.join("linkdir")).unwrap();
        symlink("sub/deeper/file.txt", root.join("inner_link")).unwrap();
        (outer, root)
    }

    fn p(s: &str) -> RelPath {
        RelPath::parse(s, 64).unwrap()
    }

    #[test]
    fn both_resolvers_refuse_escapes() {
        let (_outer, root) = setup();
        for resolver in [Resolver::Openat2, Resolver::NoFollow] {
            let jail = Jail::open(&root).unwrap().with_resolver(resolver);
            for bad in ["escape", "abs_escape", "linkdir/secret.txt", "linkdir"] {
                let err = jail.open_file(&p(bad)).unwrap_err();
                assert_eq!(
                    err.code(),
                    ErrorCode::INVALID_PATH,
                    "{resolver:?} {bad}: {err}"
                );
            }
            assert!(jail.open_dir(&p("linkdir")).is_err());
            let (file, meta) = jail.open_file(&p("sub/deeper/file.txt")).unwrap();
            assert_eq!(meta.size, 6);
            drop(file);
            // Stat follows like open does, so it refuses the same links.
            assert_eq!(
                jail.stat(&p("escape")).unwrap_err().code(),
                ErrorCode::INVALID_PATH
            );
        }
    }

    /// The cached open refuses what the blocking open refuses, even once every path is in
    /// the lookup cache (a refused walk is not "not cached"), and opens the same files.
    #[test]
    fn the_cached_open_refuses_the_same_escapes() {
        let (_outer, root) = setup();
        let jail = Jail::open(&root).unwrap();
        if jail.resolver() != Resolver::Openat2 {
            return;
        }
        for bad in ["escape", "abs_escape", "linkdir/secret.txt", "linkdir"] {
            // Twice: the first walk fills the dentry cache, the second meets a cached escape.
            for _ in 0..2 {
                match jail.open_file_cached(&p(bad)) {
                    Ok(Some(_)) => panic!("{bad} opened outside the root"),
                    // Not cached: the caller takes the blocking open, which refuses it.
                    Ok(None) => {}
                    Err(err) => assert_eq!(err.code(), ErrorCode::INVALID_PATH, "{bad}: {err}"),
                }
            }
        }
        assert_eq!(
            jail.open_file_cached(&p("sub")).unwrap_err().code(),
            ErrorCode::NOT_A_FILE
        );
        let _ = jail.open_file(&p("inner_link")).unwrap();
        // A cached walk also says "not cached" when any rename on the machine raced it (the
        // kernel's global rename sequence), as other tests' renames do in a suite run: a path
        // just opened must open cached within a few tries, not on the first. The tries are
        // spaced (1 ms, the blocking open again between them to refill the cache): 1000 tries
        // back to back took microseconds and all fell inside one burst of renames.
        let (_, meta) = (0..5000)
            .find_map(|_| {
                let cached = jail.open_file_cached(&p("inner_link")).unwrap();
                if cached.is_none() {
                    let _ = jail.open_file(&p("inner_link")).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                cached
            })
            .expect("a path just opened is cached");
        assert_eq!(meta.size, 6);
        // The no-follow resolver never takes the cached path.
        let jail = jail.with_resolver(Resolver::NoFollow);
        assert!(jail.open_file_cached(&p("inner_link")).unwrap().is_none());
    }

    #[test]
    fn inner_symlinks_follow_only_with_openat2() {
        let (_outer, root) = setup();
        let jail = Jail::open(&root).unwrap();
        if jail.resolver() == Resolver::Openat2 {
            assert!(jail.open_file(&p("inner_link")).is_ok());
        }
        let jail = jail.with_resolver(Resolver::NoFollow);
        assert_eq!(
            jail.open_file(&p("inner_link")).unwrap_err().code(),
            ErrorCode::INVALID_PATH
        );
    }

    #[test]
    fn kinds_are_checked_before_opening() {
        let (_outer, root) = setup();
        let jail = Jail::open(&root).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert_eq!(
            jail.open_file(&p("fifo")).unwrap_err().code(),
            ErrorCode::NOT_A_FILE
        );
        assert_eq!(jail.stat(&p("fifo")).unwrap().kind, EntryKind::OTHER);
        assert_eq!(
            jail.open_file(&p("sub")).unwrap_err().code(),
            ErrorCode::NOT_A_FILE
        );
        assert_eq!(
            jail.open_dir(&p("sub/deeper/file.txt")).unwrap_err().code(),
            ErrorCode::NOT_A_DIRECTORY
        );
        assert_eq!(
            jail.open_file(&p("missing")).unwrap_err().code(),
            ErrorCode::NOT_FOUND
        );
    }
}
