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

use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::OwnedFd;

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

/// One open directory of the walk.
#[derive(Debug)]
struct Level {
    /// Descriptor used for `fstatat` and for opening subdirectories.
    fd: OwnedFd,
    /// A duplicate of `fd` that reads entries; shares its file offset, which only it uses.
    dir: Dir,
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
        let dir = Dir::new(
            fd.try_clone()
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?,
        )?;
        Ok(Self {
            fd,
            dir,
            prefix,
            after: None,
            batch: VecDeque::new(),
            exhausted: false,
            budget,
        })
    }

    /// One pass over the directory: the smallest names after the cursor that fit the budget.
    fn refill(&mut self) -> Result<(), Errno> {
        self.dir.rewind();
        let mut heap: BinaryHeap<Vec<u8>> = BinaryHeap::new();
        let mut bytes = 0usize;
        // Smallest name evicted so far; everything at or above it waits for a later pass.
        let mut cut: Option<Vec<u8>> = None;
        while let Some(entry) = self.dir.read() {
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
mod tests {
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
