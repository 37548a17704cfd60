//! Names and their durable store (spec/HUB.md §2, §6).
//!
//! A name is 1 to 32 characters of `a-z`, `0-9` and `-`, starting with a letter and not ending
//! with `-`. Because a node id is exactly 34 characters, no string is both, which keeps
//! `ferry://NAME@HUB/` and `ferry://ID@HOST/` apart.
//!
//! The store is an append-only log (`names.log`): each change is one line, written and
//! fsynced before the request that caused it is answered, so a hub killed at any point (even
//! `kill -9`) restarts with every acknowledged change. A torn last line was never
//! acknowledged and is dropped. The log is compacted (rewritten beside and renamed) at start.
//! Invite codes are lines of a separate file (`invites`, `CODE EXPIRES` with the Unix second
//! it stops being good) that `ferry-hub invite` appends to; a used code is recorded in the log, so neither writer ever rewrites the other's file.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol::identity::NodeId;

/// Longest name, in characters (a node id is 34, so no id is a name).
pub const MAX_NAME: usize = 32;

const LOG: &str = "names.log";
const INVITES: &str = "invites";
const HEADER: &str = "ferry-hub names v1";

/// Why a name is not valid; one sentence each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("name {0:?} is {1} characters long: at most 32")]
    TooLong(String, usize),
    #[error("name {0:?} must start with a letter a-z")]
    Start(String),
    #[error("name {0:?} must not end with '-'")]
    End(String),
    #[error("name {0:?} contains {1:?}: names use a-z, 0-9 and '-' only (lowercase)")]
    Character(String, char),
}

/// Checks a name's syntax (HUB.md §2).
pub fn check_name(name: &str) -> Result<(), NameError> {
    let Some(first) = name.chars().next() else {
        return Err(NameError::Empty);
    };
    let count = name.chars().count();
    if count > MAX_NAME {
        return Err(NameError::TooLong(name.to_string(), count));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::Character(name.to_string(), c));
    }
    if !first.is_ascii_lowercase() {
        return Err(NameError::Start(name.to_string()));
    }
    if name.ends_with('-') {
        return Err(NameError::End(name.to_string()));
    }
    Ok(())
}

/// Whether an invite code has the shape `ferry-hub invite` prints (HUB.md §2.2).
pub fn check_invite(code: &str) -> bool {
    (8..=crate::wire::MAX_INVITE).contains(&code.len())
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The bound names, backed by the log in `dir` (or memory only, for tests and `--state none`).
#[derive(Debug)]
pub struct Store {
    names: HashMap<String, NodeId>,
    used_invites: HashSet<String>,
    dir: Option<PathBuf>,
    log: Option<File>,
}

/// What [`Store::bind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The name was free and is now bound.
    New,
    /// The caller already held it.
    Again,
}

impl Store {
    /// A store that forgets everything at exit.
    pub fn in_memory() -> Self {
        Self {
            names: HashMap::new(),
            used_invites: HashSet::new(),
            dir: None,
            log: None,
        }
    }

    /// Opens (creating) the store in `dir`: replays the log, drops a torn last line, and
    /// compacts it.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut store = Self::in_memory();
        let path = dir.join(LOG);
        match File::open(&path) {
            Ok(file) => store.replay(io::BufReader::new(file), &path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        store.dir = Some(dir.to_path_buf());
        store.compact()?;
        Ok(store)
    }

    fn replay(&mut self, reader: impl BufRead, path: &Path) -> io::Result<()> {
        let bad = |n: usize, why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} line {n}: {why}", path.display()),
            )
        };
        let mut lines = Vec::new();
        for line in reader.split(b'\n') {
            lines.push(line?);
        }
        // `split` yields a last piece without its newline too: such a line was torn by a crash
        // before it was acknowledged, so it is dropped.
        let complete = {
            let data_ends_with_newline = std::fs::read(path)?.last() == Some(&b'\n');
            if data_ends_with_newline {
                lines.len()
            } else {
                lines.len().saturating_sub(1)
            }
        };
        for (i, raw) in lines.iter().take(complete).enumerate() {
            let n = i + 1;
            let line = std::str::from_utf8(raw).map_err(|_| bad(n, "not utf-8"))?;
            if n == 1 {
                if line != HEADER {
                    return Err(bad(n, "not a ferry-hub names log"));
                }
                continue;
            }
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["bind", name, id] => {
                    let id = id.parse().map_err(|_| bad(n, "invalid node id"))?;
                    self.names.insert((*name).to_string(), id);
                }
                ["release", name] => {
                    self.names.remove(*name);
                }
                ["used", code] => {
                    self.used_invites.insert((*code).to_string());
                }
                _ => return Err(bad(n, "unknown record")),
            }
        }
        Ok(())
    }

    /// Rewrites the log with the current state beside it, then renames it into place.
    fn compact(&mut self) -> io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let tmp = dir.join(format!(".{LOG}.tmp"));
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = format!("{HEADER}\n");
        let mut names: Vec<_> = self.names.iter().collect();
        names.sort();
        for (name, id) in names {
            text.push_str(&format!("bind {name} {id}\n"));
        }
        let mut used: Vec<_> = self.used_invites.iter().collect();
        used.sort();
        for code in used {
            text.push_str(&format!("used {code}\n"));
        }
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        let path = dir.join(LOG);
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        self.log = Some(OpenOptions::new().append(true).open(&path)?);
        Ok(())
    }

    fn append(&mut self, line: &str) -> io::Result<()> {
        if let Some(log) = &mut self.log {
            log.write_all(format!("{line}\n").as_bytes())?;
            log.sync_data()?;
        }
        Ok(())
    }

    /// Who holds `name`.
    pub fn get(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).copied()
    }

    /// How many names are bound.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Binds a free name to `id`; `Err(holder)` when another id holds it.
    pub fn bind(&mut self, name: &str, id: NodeId) -> io::Result<Result<Bound, NodeId>> {
        match self.names.get(name) {
            Some(holder) if *holder == id => return Ok(Ok(Bound::Again)),
            Some(holder) => return Ok(Err(*holder)),
            None => {}
        }
        self.append(&format!("bind {name} {id}"))?;
        self.names.insert(name.to_string(), id);
        Ok(Ok(Bound::New))
    }

    /// Moves `name` from its holder `from` to `to`. `Err(holder)` when `from` does not hold it.
    pub fn rebind(
        &mut self,
        name: &str,
        from: NodeId,
        to: NodeId,
    ) -> io::Result<Result<(), Option<NodeId>>> {
        match self.names.get(name) {
            Some(holder) if *holder == from => {}
            other => return Ok(Err(other.copied())),
        }
        self.append(&format!("bind {name} {to}"))?;
        self.names.insert(name.to_string(), to);
        Ok(Ok(()))
    }

    /// Releases `name` held by `from`. `Err(holder)` when `from` does not hold it.
    pub fn release(&mut self, name: &str, from: NodeId) -> io::Result<Result<(), Option<NodeId>>> {
        match self.names.get(name) {
            Some(holder) if *holder == from => {}
            other => return Ok(Err(other.copied())),
        }
        self.append(&format!("release {name}"))?;
        self.names.remove(name);
        Ok(Ok(()))
    }

    /// Whether `code` is an issued, unused, unexpired invite. The invites file is read each time,
    /// so codes that `ferry-hub invite` adds while the hub runs count at once.
    pub fn invite_valid(&self, code: &str) -> io::Result<bool> {
        self.invite_valid_at(code, SystemTime::now())
    }

    /// [`Store::invite_valid`] at a given time.
    pub fn invite_valid_at(&self, code: &str, now: SystemTime) -> io::Result<bool> {
        if !check_invite(code) || self.used_invites.contains(code) {
            return Ok(false);
        }
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let text = match std::fs::read_to_string(dir.join(INVITES)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let now = unix_seconds(now);
        Ok(text.lines().any(|line| {
            let mut fields = line.split_whitespace();
            if fields.next() != Some(code) {
                return false;
            }
            // A line without an expiry was issued before invites expired: it stays good.
            match fields.next() {
                None => true,
                Some(expires) => expires.parse::<u64>().is_ok_and(|expires| now < expires),
            }
        }))
    }

    /// Marks an invite used, durably.
    pub fn use_invite(&mut self, code: &str) -> io::Result<()> {
        self.append(&format!("used {code}"))?;
        self.used_invites.insert(code.to_string());
        Ok(())
    }
}

/// How long an invite lasts unless `ferry-hub invite --expires` says otherwise.
pub const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Issues an invite code good for [`DEFAULT_INVITE_TTL`].
pub fn issue_invite(dir: &Path) -> io::Result<String> {
    issue_invite_for(dir, DEFAULT_INVITE_TTL, SystemTime::now())
}

/// Issues an invite code: 20 random characters, appended to `dir/invites` (owner-only) with the
/// Unix second it expires at (`CODE EXPIRES`), so a code handed out and forgotten does not stay
/// a way in for ever.
pub fn issue_invite_for(dir: &Path, ttl: Duration, now: SystemTime) -> io::Result<String> {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    let code: String = (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    let expires = unix_seconds(now).saturating_add(ttl.as_secs().max(1));
    std::fs::create_dir_all(dir)?;
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join(INVITES))?;
    file.write_all(format!("{code} {expires}\n").as_bytes())?;
    file.sync_all()?;
    Ok(code)
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::identity::Identity;

    fn id(seed: u8) -> NodeId {
        Identity::from_secret([seed; 32]).id()
    }

    #[test]
    fn names_follow_the_syntax_and_no_id_is_a_name() {
        for good in ["a", "alice", "a-1", "x9", &"a".repeat(32)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Alice",
            "1a",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a@b",
            &"a".repeat(33),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&id(1).to_string()).is_err());
    }

    #[test]
    fn the_log_survives_a_reopen_and_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(store.bind("alice", id(1)).unwrap(), Ok(Bound::New));
            assert_eq!(store.bind("bob", id(2)).unwrap(), Ok(Bound::New));
            assert_eq!(store.release("bob", id(2)).unwrap(), Ok(()));
            assert_eq!(store.rebind("alice", id(1), id(3)).unwrap(), Ok(()));
        }
        // A crash mid-append leaves a line without its newline.
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap();
        log.write_all(b"bind carol ").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get("alice"), Some(id(3)));
        assert_eq!(store.get("bob"), None);
        assert_eq!(store.get("carol"), None);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn only_the_holder_releases_or_moves() {
        let mut store = Store::in_memory();
        store.bind("alice", id(1)).unwrap().unwrap();
        assert_eq!(store.bind("alice", id(2)).unwrap(), Err(id(1)));
        assert_eq!(store.release("alice", id(2)).unwrap(), Err(Some(id(1))));
        assert_eq!(
            store.rebind("alice", id(2), id(2)).unwrap(),
            Err(Some(id(1)))
        );
        assert_eq!(store.get("alice"), Some(id(1)));
    }

    #[test]
    fn an_invite_is_good_once() {
        let dir = tempfile::tempdir().unwrap();
        let code = issue_invite(dir.path()).unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert!(store.invite_valid(&code).unwrap());
        assert!(!store.invite_valid("not-issued-code").unwrap());
        store.use_invite(&code).unwrap();
        assert!(!store.invite_valid(&code).unwrap());
        drop(store);
        assert!(!Store::open(dir.path())
            .unwrap()
            .invite_valid(&code)
            .unwrap());
    }

    #[test]
    fn an_invite_expires() {
        let dir = tempfile::tempdir().unwrap();
        let issued = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let code = issue_invite_for(dir.path(), Duration::from_secs(3600), issued).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = |secs| issued + Duration::from_secs(secs);
        assert!(store.invite_valid_at(&code, at(0)).unwrap());
        assert!(store.invite_valid_at(&code, at(3599)).unwrap());
        assert!(!store.invite_valid_at(&code, at(3600)).unwrap());
        assert!(!store.invite_valid_at(&code, at(86_400)).unwrap());
    }

    #[test]
    fn an_invite_from_before_expiry_existed_stays_good_and_a_bad_expiry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(INVITES),
            "oldstyle-code-0001\nbadexpiry-code-0002 soon\n",
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.invite_valid("oldstyle-code-0001").unwrap());
        assert!(!store.invite_valid("badexpiry-code-0002").unwrap());
    }
}
