//! Identity files: the node's long-term X25519 secret (spec §13.1), kept like a key file (hex
//! text, owner-only, refused when others can read it; [`crate::key_file`] does both), created on
//! first use in the config directory, and rotated by moving the old one aside as
//! `identity.old-YYYY-MM-DD` until its owner removes it. `ferry`, `ferry-server` and
//! `ferry-peer` share the same file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::Key;

use crate::key_file::{self, KeyFileError};

/// `dirs::config_dir()/ferry/identity`.
pub fn default_identity_file() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("ferry").join("identity"))
}

/// An identity file that cannot be used or made. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityFileError {
    #[error(transparent)]
    File(#[from] KeyFileError),
    #[error("no config directory for the identity file: pass --identity FILE")]
    NoConfigDir,
}

/// Reads the identity in `path` (refusing a file others can read).
pub fn load(path: &Path) -> Result<Identity, IdentityFileError> {
    let key = key_file::load(path)?;
    Ok(Identity::from_secret(*key.as_bytes()))
}

/// Writes `identity` to a new owner-only file; never overwrites one.
pub fn save_new(identity: &Identity, path: &Path) -> Result<(), IdentityFileError> {
    key_file::save_new(&Key::from_bytes(*identity.secret_bytes()), path)?;
    Ok(())
}

/// Whether [`load_or_create`] found the file or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityOrigin {
    Found,
    Created,
}

/// The identity in `path`, created there (owner-only, parents 0700) if there is no file yet.
/// A file that exists but cannot be used is an error, never replaced.
pub fn load_or_create(path: &Path) -> Result<(Identity, IdentityOrigin), IdentityFileError> {
    if path.exists() {
        return Ok((load(path)?, IdentityOrigin::Found));
    }
    let identity = Identity::generate();
    save_new(&identity, path)?;
    Ok((identity, IdentityOrigin::Created))
}

/// `path`, or the default identity file when `None`.
pub fn path_or_default(path: Option<&Path>) -> Result<PathBuf, IdentityFileError> {
    match path {
        Some(path) => Ok(path.to_path_buf()),
        None => default_identity_file().ok_or(IdentityFileError::NoConfigDir),
    }
}

/// What [`rotate`] did.
#[derive(Debug)]
pub struct Rotated {
    /// The id given up, and where its file now lies; `None` when there was no identity yet.
    pub old: Option<(NodeId, PathBuf)>,
    pub new: Identity,
}

/// Replaces the identity in `path` with a new one, keeping the old file beside it as
/// `NAME.old-YYYY-MM-DD` (`-2`, `-3`, ... when that exists). The new identity is written first
/// under a temporary name, so a failure leaves the old one in place.
pub fn rotate(path: &Path, now: SystemTime) -> Result<Rotated, IdentityFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let old = if path.exists() {
        Some(load(path)?.id())
    } else {
        None
    };
    let new = Identity::generate();
    let staging = sibling(path, ".new");
    // A staging file left by a crash is ours to replace: it was never in use.
    let _ = std::fs::remove_file(&staging);
    save_new(&new, &staging)?;
    let old = match old {
        Some(id) => {
            let aside = free_old_name(path, now);
            std::fs::rename(path, &aside).map_err(io)?;
            Some((id, aside))
        }
        None => None,
    };
    std::fs::rename(&staging, path).map_err(io)?;
    Ok(Rotated { old, new })
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn free_old_name(path: &Path, now: SystemTime) -> PathBuf {
    let date = utc_date(now);
    let first = sibling(path, &format!(".old-{date}"));
    let mut candidate = first.clone();
    let mut n = 2;
    while candidate.exists() {
        candidate = sibling(path, &format!(".old-{date}-{n}"));
        n += 1;
    }
    candidate
}

/// `YYYY-MM-DD` in UTC (Howard Hinnant's days-to-civil algorithm; no calendar crate needed).
fn utc_date(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_utc_days() {
        let at = |secs| utc_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_796_083_199), "2026-11-30");
        assert_eq!(at(1_796_083_200), "2026-12-01");
    }

    #[cfg(unix)]
    #[test]
    fn created_on_first_use_owner_only_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config/ferry/identity");
        let (first, origin) = load_or_create(&path).unwrap();
        assert_eq!(origin, IdentityOrigin::Created);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let (again, origin) = load_or_create(&path).unwrap();
        assert_eq!((again.id(), origin), (first.id(), IdentityOrigin::Found));
        // Readable by others: refused, and never silently replaced.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn rotation_keeps_the_old_identity_beside_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200);
        let (first, _) = load_or_create(&path).unwrap();
        let rotated = rotate(&path, day).unwrap();
        let (old_id, aside) = rotated.old.unwrap();
        assert_eq!(old_id, first.id());
        assert_eq!(aside, dir.path().join("identity.old-2026-12-01"));
        assert_eq!(load(&aside).unwrap().id(), first.id());
        assert_eq!(load(&path).unwrap().id(), rotated.new.id());
        assert_ne!(rotated.new.id(), first.id());
        // Twice the same day: the second old file gets its own name.
        let second = rotate(&path, day).unwrap();
        assert_eq!(
            second.old.unwrap(),
            (
                rotated.new.id(),
                dir.path().join("identity.old-2026-12-01-2")
            )
        );
        assert!(!dir.path().join("identity.new").exists());
    }

    #[test]
    fn rotating_nothing_creates_the_first_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        let rotated = rotate(&path, SystemTime::now()).unwrap();
        assert!(rotated.old.is_none());
        assert_eq!(load(&path).unwrap().id(), rotated.new.id());
    }
}
