//! The writing half of [`Jail`]: create files and directories, rename and remove, all beneath
//! the root.
//!
//! Every operation resolves the *parent* directory of its path beneath the root exactly as a
//! read does (`openat2` with `RESOLVE_BENEATH`, or the per-component `O_NOFOLLOW` walk), then
//! acts on the last name relative to that descriptor (`openat`, `mkdirat`, `renameat`,
//! `unlinkat`). The last name is never followed: a file is created with `O_NOFOLLOW`, and
//! `mkdirat`, `renameat` and `unlinkat` act on a link itself, never on its target. So a link
//! planted inside the root can neither carry a write outside it nor make one land on a file
//! elsewhere.

use std::fs::File;
use std::os::fd::OwnedFd;

use ferry_protocol::message::EntryKind;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::jail::{FsError, Jail, Meta};
use crate::path::RelPath;

/// What [`Jail::create_file`] does when the file exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Fail (`O_EXCL`).
    New,
    /// Empty it (`O_TRUNC`).
    Truncate,
    /// Keep its contents (create it only if missing), e.g. to resume.
    Keep,
}

impl Jail {
    /// Opens the directory holding `path`'s last name, beneath the root, and returns the name.
    /// The root itself has no parent to create it in.
    fn parent_of<'p>(&self, path: &'p RelPath) -> Result<(OwnedFd, &'p str), FsError> {
        if path.is_root() {
            return Err(FsError::NotAFile(path.clone()));
        }
        let dir = self
            .resolve(&path.parent(), OFlags::PATH | OFlags::DIRECTORY, true)
            .map_err(|errno| self.error(errno, path))?;
        Ok((dir, path.file_name()))
    }

    /// Maps an errno from acting on the last name, which is never followed: `ELOOP` there
    /// means the name is a symbolic link.
    fn last_name_error(&self, errno: Errno, path: &RelPath) -> FsError {
        match errno {
            Errno::LOOP => FsError::Symlink(path.clone()),
            errno => self.error(errno, path),
        }
    }

    /// Creates (or opens, see [`Create`]) the regular file `path` for reading and writing. The
    /// parent directory must exist. A symbolic link or anything but a regular file under that
    /// name is refused, and no FIFO or device is opened for long: the open does not block and
    /// the kind is checked before the file is handed out.
    pub fn create_file(&self, path: &RelPath, how: Create) -> Result<File, FsError> {
        let (dir, name) = self.parent_of(path)?;
        let mut flags = OFlags::RDWR
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | OFlags::CLOEXEC;
        match how {
            Create::New => flags |= OFlags::EXCL,
            Create::Truncate => flags |= OFlags::TRUNC,
            Create::Keep => {}
        }
        let fd =
            rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o666)).map_err(|errno| {
                match errno {
                    // A directory opened for writing.
                    Errno::ISDIR => FsError::NotAFile(path.clone()),
                    errno => self.last_name_error(errno, path),
                }
            })?;
        let st = rustix::fs::fstat(&fd).map_err(|errno| self.error(errno, path))?;
        if Meta::from_stat(&st).kind != EntryKind::FILE {
            return Err(FsError::NotAFile(path.clone()));
        }
        // Regular files ignore O_NONBLOCK; clear it anyway so nothing surprises a writer.
        let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
        Ok(File::from(fd))
    }

    /// Creates the directory `path` and any missing parents. Existing directories are fine;
    /// an existing file, or a link that leaves the root (or any link, with
    /// [`crate::Links::Refuse`] or the no-follow resolver), is refused where it is met.
    pub fn create_dir_all(&self, path: &RelPath) -> Result<(), FsError> {
        let mut done = RelPath::root();
        for name in path.components() {
            let dir = self
                .resolve(&done, OFlags::PATH | OFlags::DIRECTORY, true)
                .map_err(|errno| self.error(errno, &done))?;
            done = done.join(name)?;
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777)) {
                // Whatever exists is checked when it is opened as the next parent, or below.
                Ok(()) | Err(Errno::EXIST) => {}
                Err(errno) => return Err(self.error(errno, &done)),
            }
        }
        self.resolve(path, OFlags::PATH | OFlags::DIRECTORY, true)
            .map(drop)
            .map_err(|errno| self.error(errno, path))
    }

    /// Renames `from` to `to`, both beneath the root; an existing `to` is replaced (as
    /// `rename(2)`). A link under either name is moved or replaced itself, never followed.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), FsError> {
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name).map_err(|errno| {
            // ENOENT is about the source; every other failure names the destination.
            if errno == Errno::NOENT {
                self.error(errno, from)
            } else {
                self.error(errno, to)
            }
        })
    }

    /// [`Jail::rename`], but fails with `EEXIST` when `to` exists (`RENAME_NOREPLACE`), so an
    /// upload without overwrite cannot replace a file that appeared meanwhile.
    pub fn rename_new(&self, from: &RelPath, to: &RelPath) -> Result<(), FsError> {
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        rustix::fs::renameat_with(
            &from_dir,
            from_name,
            &to_dir,
            to_name,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|errno| match errno {
            Errno::NOENT => self.error(errno, from),
            errno => FsError::from_errno(errno, to, self.resolver()),
        })
    }

    /// Removes the file (or link) `path`; a link is removed itself, not its target.
    pub fn remove_file(&self, path: &RelPath) -> Result<(), FsError> {
        let (dir, name) = self.parent_of(path)?;
        rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty())
            .map_err(|errno| self.error(errno, path))
    }

    /// Makes the directory `path` with exactly the permission bits `mode & 0o777` (not
    /// narrowed by the umask); its parent must exist. Returns whether it was made: an existing
    /// directory is left as it is (as `mkdir -p`), a link under that name is refused and never
    /// followed, anything else there is `NotADirectory`.
    pub fn create_dir(&self, path: &RelPath, mode: u32) -> Result<bool, FsError> {
        let (dir, name) = self.parent_of(path)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode & 0o777)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return match self.symlink_metadata(path)?.kind {
                    EntryKind::DIRECTORY => Ok(false),
                    EntryKind::SYMLINK => Err(FsError::Symlink(path.clone())),
                    _ => Err(FsError::NotADirectory(path.clone())),
                }
            }
            Err(errno) => return Err(self.last_name_error(errno, path)),
        }
        let made = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| self.last_name_error(errno, path))?;
        rustix::fs::fchmod(&made, Mode::from_raw_mode(mode & 0o777))
            .map_err(|errno| self.error(errno, path))?;
        Ok(true)
    }

    /// Metadata of `path` itself: a final symbolic link is described, not followed.
    pub fn symlink_metadata(&self, path: &RelPath) -> Result<Meta, FsError> {
        let fd = self.open_at(path, OFlags::PATH, false)?;
        let st = rustix::fs::fstat(&fd).map_err(|errno| self.error(errno, path))?;
        Ok(Meta::from_stat(&st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::{Links, Resolver};
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A root holding links planted to leave it: to a file outside, to a directory outside,
    /// dangling to a name outside, and one link that stays inside.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/inside.txt"), b"inside").unwrap();
        std::fs::write(outer.path().join("canary.txt"), b"CANARY").unwrap();
        std::fs::create_dir(outer.path().join("outside")).unwrap();
        std::fs::write(outer.path().join("outside/secret.txt"), b"SECRET").unwrap();
        symlink("../canary.txt", root.join("escape")).unwrap();
        symlink(outer.path().join("canary.txt"), root.join("abs_escape")).unwrap();
        symlink("../outside", root.join("linkdir")).unwrap();
        symlink("../planted.txt", root.join("dangle")).unwrap();
        symlink("sub", root.join("innerdir")).unwrap();
        (outer, root)
    }

    fn p(s: &str) -> RelPath {
        RelPath::parse(s, 64).unwrap()
    }

    /// Every resolver and link policy the jail has: the fallback is forced even where the
    /// kernel has `openat2`.
    fn jails(root: &Path) -> Vec<Jail> {
        let mut out = Vec::new();
        for resolver in [Resolver::Openat2, Resolver::NoFollow] {
            for links in [Links::WithinRoot, Links::Refuse] {
                let jail = Jail::open(root).unwrap();
                if resolver == Resolver::Openat2 && jail.resolver() != Resolver::Openat2 {
                    continue; // this kernel has no openat2; the fallback runs below
                }
                out.push(jail.with_resolver(resolver).with_links(links));
            }
        }
        out
    }

    /// Nothing outside the root changed.
    fn outside_untouched(outer: &Path) {
        assert_eq!(std::fs::read(outer.join("canary.txt")).unwrap(), b"CANARY");
        assert_eq!(
            std::fs::read(outer.join("outside/secret.txt")).unwrap(),
            b"SECRET"
        );
        let mut names: Vec<_> = std::fs::read_dir(outer.join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["secret.txt"]);
        assert!(!outer.join("planted.txt").exists());
    }

    #[test]
    fn a_directory_is_made_with_its_exact_mode_and_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let (outer, root) = setup();
        for (i, jail) in jails(&root).into_iter().enumerate() {
            let who = format!("{:?}/{:?}", jail.resolver(), jail.links());
            let name = format!("sub/made{i}");
            assert!(jail.create_dir(&p(&name), 0o750).unwrap(), "{who}");
            let mode = std::fs::metadata(root.join(&name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o750, "{who}");
            // mkdir -p: an existing directory is fine and keeps its mode.
            assert!(!jail.create_dir(&p(&name), 0o700).unwrap(), "{who}");
            assert!(matches!(
                jail.create_dir(&p("sub/inside.txt"), 0o755),
                Err(FsError::NotADirectory(_))
            ));
            for link in ["escape", "abs_escape", "dangle", "linkdir", "innerdir"] {
                assert!(
                    matches!(jail.create_dir(&p(link), 0o755), Err(FsError::Symlink(_))),
                    "{who} {link}"
                );
            }
            // Beneath a link that leaves the root, nothing is made.
            assert!(jail.create_dir(&p("linkdir/new"), 0o755).is_err(), "{who}");
        }
        outside_untouched(outer.path());
    }

    #[test]
    fn writes_through_planted_links_fail_and_touch_nothing_outside() {
        let (outer, root) = setup();
        for jail in jails(&root) {
            let who = format!("{:?}/{:?}", jail.resolver(), jail.links());
            for how in [Create::New, Create::Truncate, Create::Keep] {
                for link in ["escape", "abs_escape", "dangle"] {
                    let err = jail.create_file(&p(link), how).unwrap_err();
                    match err {
                        // O_EXCL refuses any existing name, a link included.
                        FsError::Io {
                            errno: Errno::EXIST,
                            ..
                        } if how == Create::New => {}
                        FsError::Symlink(_) => assert_eq!(
                            err.to_string(),
                            format!(
                                "{link} goes through a symbolic link, which this server does not follow"
                            )
                        ),
                        err => panic!("{who} {link} {how:?}: {err}"),
                    }
                }
                let err = jail.create_file(&p("linkdir/new.txt"), how).unwrap_err();
                assert!(
                    matches!(err, FsError::Escapes(_) | FsError::Symlink(_)),
                    "{who} {how:?}: {err}"
                );
                let err = jail.create_file(&p("linkdir/secret.txt"), how).unwrap_err();
                assert!(
                    matches!(err, FsError::Escapes(_) | FsError::Symlink(_)),
                    "{who} {how:?}: {err}"
                );
            }
            let err = jail.create_dir_all(&p("linkdir/made/deeper")).unwrap_err();
            assert!(
                matches!(err, FsError::Escapes(_) | FsError::Symlink(_)),
                "{who}: {err}"
            );
            assert!(jail.create_dir_all(&p("escape")).is_err(), "{who}");
            let err = jail
                .rename(&p("sub/inside.txt"), &p("linkdir/moved.txt"))
                .unwrap_err();
            assert!(
                matches!(err, FsError::Escapes(_) | FsError::Symlink(_)),
                "{who}: {err}"
            );
            let err = jail
                .rename(&p("linkdir/secret.txt"), &p("stolen.txt"))
                .unwrap_err();
            assert!(
                matches!(err, FsError::Escapes(_) | FsError::Symlink(_)),
                "{who}: {err}"
            );
            let err = jail.remove_file(&p("linkdir/secret.txt")).unwrap_err();
            assert!(
                matches!(err, FsError::Escapes(_) | FsError::Symlink(_)),
                "{who}: {err}"
            );
            assert_eq!(
                jail.symlink_metadata(&p("escape")).unwrap().kind,
                EntryKind::SYMLINK,
                "{who}"
            );
            assert!(root.join("sub/inside.txt").exists(), "{who}");
            assert!(!root.join("stolen.txt").exists(), "{who}");
            outside_untouched(outer.path());
        }
        // Renaming onto a link or removing one acts on the link itself, never its target.
        let jail = Jail::open(&root).unwrap();
        std::fs::write(root.join("new.txt"), b"new").unwrap();
        jail.rename(&p("new.txt"), &p("escape")).unwrap();
        assert_eq!(std::fs::read(root.join("escape")).unwrap(), b"new");
        jail.remove_file(&p("abs_escape")).unwrap();
        assert!(!root.join("abs_escape").exists());
        outside_untouched(outer.path());
    }

    #[test]
    fn links_inside_the_root_follow_only_when_allowed() {
        let (_outer, root) = setup();
        for jail in jails(&root) {
            let result = jail.create_file(&p("innerdir/via-link.txt"), Create::New);
            if jail.resolver() == Resolver::Openat2 && jail.links() == Links::WithinRoot {
                result.unwrap();
                assert!(root.join("sub/via-link.txt").exists());
                std::fs::remove_file(root.join("sub/via-link.txt")).unwrap();
            } else {
                assert!(matches!(result, Err(FsError::Symlink(_))), "{jail:?}");
                assert!(!root.join("sub/via-link.txt").exists());
            }
        }
    }

    #[test]
    fn create_write_rename_remove_beneath_the_root() {
        let (_outer, root) = setup();
        for jail in jails(&root) {
            let who = format!("{:?}/{:?}", jail.resolver(), jail.links());
            jail.create_dir_all(&p("a/b/c")).unwrap();
            jail.create_dir_all(&p("a/b/c")).unwrap();
            let mut file = jail.create_file(&p("a/b/c/f"), Create::New).unwrap();
            file.write_all(b"hello").unwrap();
            drop(file);
            assert!(matches!(
                jail.create_file(&p("a/b/c/f"), Create::New),
                Err(FsError::Io {
                    errno: Errno::EXIST,
                    ..
                })
            ));
            let mut text = String::new();
            jail.create_file(&p("a/b/c/f"), Create::Keep)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, "hello", "{who}");
            let meta = jail.symlink_metadata(&p("a/b/c/f")).unwrap();
            assert_eq!((meta.kind, meta.size), (EntryKind::FILE, 5));
            drop(jail.create_file(&p("a/b/c/f"), Create::Truncate).unwrap());
            assert_eq!(jail.stat(&p("a/b/c/f")).unwrap().size, 0);
            std::fs::write(root.join("a/taken"), b"x").unwrap();
            assert!(matches!(
                jail.rename_new(&p("a/b/c/f"), &p("a/taken")),
                Err(FsError::Io {
                    errno: Errno::EXIST,
                    ..
                })
            ));
            jail.rename_new(&p("a/b/c/f"), &p("a/fresh")).unwrap();
            jail.rename(&p("a/fresh"), &p("a/b/c/f")).unwrap();
            jail.rename(&p("a/b/c/f"), &p("a/g")).unwrap();
            assert!(root.join("a/g").exists() && !root.join("a/b/c/f").exists());
            jail.remove_file(&p("a/g")).unwrap();
            assert!(matches!(
                jail.remove_file(&p("a/g")),
                Err(FsError::NotFound(_))
            ));
            // A file in the way of a directory, a directory in the way of a file, the root.
            assert!(matches!(
                jail.create_dir_all(&p("sub/inside.txt/x")),
                Err(FsError::NotADirectory(_))
            ));
            assert!(matches!(
                jail.create_file(&p("a/b"), Create::Keep),
                Err(FsError::NotAFile(_))
            ));
            assert!(matches!(
                jail.create_file(&RelPath::root(), Create::Keep),
                Err(FsError::NotAFile(_))
            ));
            std::fs::remove_dir_all(root.join("a")).unwrap();
        }
    }

    #[test]
    fn special_files_are_not_opened_for_writing() {
        let (_outer, root) = setup();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let jail = Jail::open(&root).unwrap();
        assert!(matches!(
            jail.create_file(&p("fifo"), Create::Keep),
            Err(FsError::NotAFile(_))
        ));
    }
}
