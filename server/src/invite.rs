//! Invites: one-time enrolment codes waiting to be used (spec §13.11), one file per invite in
//! a directory beside the authorised-clients file.
//!
//! ```text
//! ~/.config/ferry/authorized_clients
//! ~/.config/ferry/invites/            0700
//!     7                               0600, one invite, named by its nameplate:
//!         ferry invite v1
//!         code 7-crossover-clockwork
//!         name bob                    (optional)
//!         root team/bob               (optional)
//!         write                       (optional)
//!         expires 1764598800          (Unix seconds)
//! ```
//!
//! One file per invite, so concurrent `ferry-server invite` commands and the running server
//! never rewrite each other's state: [`create`] writes a temporary file and links it to its
//! nameplate's name, which fails if that name is taken (then it tries another); [`claim`]
//! renames the invite away before reading it, which exactly one claimant can do, and syncs the
//! directory before the caller answers, so a code is burned before anyone learns anything
//! from it, and a crash cannot leave it usable. The server reads the directory at every
//! enrolment, so new invites need no restart. Codes are secrets: this module never logs one,
//! and [`Invite`]'s `Debug` hides it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol::enrol::{Code, MAX_NAMEPLATE};
use rand::Rng;

/// The invites directory's name, beside the authorised-clients file.
pub const DIR_NAME: &str = "invites";

/// How long an invite lasts unless `--expires` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);

const MAGIC: &str = "ferry invite v1";
/// An invite file is a few lines; anything larger is not one.
const MAX_FILE: u64 = 4096;

/// Where a server that takes enrolments keeps its invites, and the file enrolled clients are
/// added to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub invites: PathBuf,
    pub authorized_clients: PathBuf,
}

impl Enrolment {
    /// The invites directory beside `authorized_clients`.
    pub fn beside(authorized_clients: impl Into<PathBuf>) -> Self {
        let authorized_clients = authorized_clients.into();
        Self {
            invites: dir_beside(&authorized_clients),
            authorized_clients,
        }
    }
}

/// `<dir of authorized_clients>/invites`.
pub fn dir_beside(authorized_clients: &Path) -> PathBuf {
    match authorized_clients.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(DIR_NAME),
        _ => PathBuf::from(DIR_NAME),
    }
}

/// One invite: the code and what the client that uses it becomes.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    pub code: Code,
    /// The enrolled client's name; `None`: `client-` and the first 8 characters of its id.
    pub name: Option<String>,
    /// The directory it is confined to (as `authorized_clients`' `root=`), without the `/`.
    pub root: Option<String>,
    pub write: bool,
    /// Unix seconds after which the invite is void.
    pub expires: u64,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("code", &self.code)
            .field("name", &self.name)
            .field("root", &self.root)
            .field("write", &self.write)
            .field("expires", &self.expires)
            .finish()
    }
}

impl Invite {
    fn text(&self) -> String {
        let mut text = format!("{MAGIC}\ncode {}\n", self.code);
        if let Some(name) = &self.name {
            text.push_str(&format!("name {name}\n"));
        }
        if let Some(root) = &self.root {
            text.push_str(&format!("root {root}\n"));
        }
        if self.write {
            text.push_str("write\n");
        }
        text.push_str(&format!("expires {}\n", self.expires));
        text
    }

    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let (mut code, mut name, mut root, mut write, mut expires) =
            (None, None, None, false, None);
        for line in lines {
            match line.split_once(' ') {
                Some(("code", v)) => code = Some(v.parse::<Code>().ok()?),
                Some(("name", v)) => name = Some(v.to_owned()),
                Some(("root", v)) => root = Some(v.to_owned()),
                Some(("expires", v)) => expires = Some(v.parse().ok()?),
                None if line == "write" => write = true,
                None if line.is_empty() => {}
                _ => return None,
            }
        }
        Some(Self {
            code: code?,
            name,
            root,
            write,
            expires: expires?,
        })
    }

    /// Whether it is past its expiry at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        unix(now) >= self.expires
    }
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("invites directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "invites directory {path} may be read by others (mode {mode:o}); run: chmod 700 {path}"
    )]
    Permissions { path: String, mode: u32 },
    #[error("no free nameplate in {path}: {count} invites are pending; wait for some to expire")]
    Full { path: String, count: usize },
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> InviteError + '_ {
    move |source| InviteError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates the directory (0700) if needed and refuses one that group or others may enter:
/// the files in it are secrets.
fn open_dir(dir: &Path) -> Result<(), InviteError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))?;
    let mode = std::fs::metadata(dir)
        .map_err(io_error(dir))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(InviteError::Permissions {
            path: dir.display().to_string(),
            mode,
        });
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), InviteError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The nameplates of the invites in `dir` (file names that are numbers), with expired ones
/// removed on the way.
fn pending(dir: &Path, now: SystemTime) -> Result<Vec<u32>, InviteError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let Some(nameplate) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match read(&entry.path()) {
            Ok(Some(invite)) if invite.expired(now) => {
                let _ = std::fs::remove_file(entry.path());
            }
            _ => out.push(nameplate),
        }
    }
    Ok(out)
}

/// Writes a new invite that lasts `ttl` from `now`, with a fresh code on a free nameplate
/// (1 to 999, chosen at random so that a stranger cannot burn invites by counting), and
/// returns it. Expired invites are removed on the way.
pub fn create(
    dir: &Path,
    name: Option<String>,
    root: Option<String>,
    write: bool,
    ttl: Duration,
    now: SystemTime,
) -> Result<Invite, InviteError> {
    use std::os::unix::fs::OpenOptionsExt;
    open_dir(dir)?;
    let taken = pending(dir, now)?;
    let mut rng = rand::thread_rng();
    let temp = dir.join(format!(
        ".new-{}-{:016x}",
        std::process::id(),
        rng.gen::<u64>()
    ));
    let expires = unix(now).saturating_add(ttl.as_secs().max(1));
    // A few tries: another `invite` may take the nameplate between the listing and the link.
    for _ in 0..64 {
        let free = (1..=MAX_NAMEPLATE).filter(|n| !taken.contains(n)).count();
        if free == 0 {
            break;
        }
        let nameplate = (1..=MAX_NAMEPLATE)
            .filter(|n| !taken.contains(n))
            .nth(rng.gen_range(0..free))
            .unwrap_or(1);
        let invite = Invite {
            code: Code::generate(nameplate, &mut rng),
            name: name.clone(),
            root: root.clone(),
            write,
            expires,
        };
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(invite.text().as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io_error(dir)(e));
        }
        // link(2) never replaces: the nameplate is ours only if nobody took it meanwhile.
        let linked = std::fs::hard_link(&temp, dir.join(nameplate.to_string()));
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                sync_dir(dir)?;
                return Ok(invite);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(dir)(e)),
        }
    }
    Err(InviteError::Full {
        path: dir.display().to_string(),
        count: taken.len(),
    })
}

/// Reads one invite file; `None` when it is not an invite. Refused when group or others may
/// read it.
fn read(path: &Path) -> Result<Option<Invite>, InviteError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let meta = file.metadata().map_err(io_error(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(InviteError::Permissions {
            path: path.display().to_string(),
            mode,
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(io_error(path))?;
    Ok(Invite::parse(&text))
}

/// What claiming a nameplate found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// No invite with that nameplate (never made, already used, or burned by a wrong guess).
    Missing,
    /// There was one, past its expiry; it is gone now.
    Expired,
    /// The invite, now removed from the directory: it can never be claimed again.
    Valid(Invite),
}

/// Takes the invite `nameplate` out of `dir` for good, before anything is answered: renamed
/// away (atomic: one claimant wins), the directory synced, then read and deleted.
pub fn claim(dir: &Path, nameplate: u32, now: SystemTime) -> Result<Claim, InviteError> {
    let path = dir.join(nameplate.to_string());
    let taken = dir.join(format!(
        ".claimed-{nameplate}-{}-{:016x}",
        std::process::id(),
        rand::thread_rng().gen::<u64>()
    ));
    match std::fs::rename(&path, &taken) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Claim::Missing),
        Err(e) => return Err(io_error(dir)(e)),
    }
    // The burn is durable before the caller answers anything derived from the code.
    sync_dir(dir)?;
    let invite = read(&taken);
    let _ = std::fs::remove_file(&taken);
    let _ = sync_dir(dir);
    Ok(match invite? {
        Some(invite) if invite.code.nameplate != nameplate => Claim::Missing,
        Some(invite) if invite.expired(now) => Claim::Expired,
        Some(invite) => Claim::Valid(invite),
        None => Claim::Missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn an_invite_is_an_owner_only_file_in_an_owner_only_directory() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(DIR_NAME);
        let invite = create(
            &dir,
            Some("bob".into()),
            Some("team/bob".into()),
            true,
            DEFAULT_TTL,
            now(),
        )
        .unwrap();
        let file = dir.join(invite.code.nameplate.to_string());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(read(&file).unwrap(), Some(invite.clone()));
        assert_eq!(invite.expires, 1_800_000_600);
        assert!((1..=MAX_NAMEPLATE).contains(&invite.code.nameplate));
        // Nothing else is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // The code never shows in Debug.
        assert!(!format!("{invite:?}").contains(&invite.code.to_string()));
    }

    #[test]
    fn a_claim_burns_the_invite_for_good() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(DIR_NAME);
        let invite = create(&dir, None, None, false, DEFAULT_TTL, now()).unwrap();
        let n = invite.code.nameplate;
        assert_eq!(claim(&dir, n, now()).unwrap(), Claim::Valid(invite));
        assert_eq!(claim(&dir, n, now()).unwrap(), Claim::Missing);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert_eq!(claim(&dir, 1000, now()).unwrap(), Claim::Missing);
    }

    #[test]
    fn an_expired_invite_is_burned_and_refused() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(DIR_NAME);
        let invite = create(&dir, None, None, false, Duration::from_secs(60), now()).unwrap();
        let later = now() + Duration::from_secs(60);
        assert_eq!(
            claim(&dir, invite.code.nameplate, later).unwrap(),
            Claim::Expired
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_creates_never_share_a_nameplate() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(DIR_NAME);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|_| {
                            create(&dir, None, None, false, DEFAULT_TTL, now())
                                .unwrap()
                                .code
                                .nameplate
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 160);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 160);
    }

    #[test]
    fn a_directory_others_may_enter_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(DIR_NAME);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = create(&dir, None, None, false, DEFAULT_TTL, now()).unwrap_err();
        assert!(error.to_string().contains("chmod 700"), "{error}");
    }
}
