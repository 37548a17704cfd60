//! The known-servers file (spec §13.8, trust on first use): which node id answered at each
//! `HOST:PORT` the first time, like OpenSSH's `known_hosts`.
//!
//! ```text
//! # ferry known servers: HOST:PORT ID, one per line
//! files.example.org:6789 k3v5...
//! [2001:db8::1]:7000 abcd...
//! ```
//!
//! Lines are `HOST:PORT ID` separated by one or more spaces; blank lines and lines starting with
//! `#` are kept and ignored. Host names compare without case; an IPv6 host is in brackets; the
//! port is always written. A line that does not parse is an error naming it, never skipped: a
//! pin that silently stopped counting would be trusted again on the next first use. The file
//! is created owner-only (0600, parents 0700) and refused when others may write it.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_protocol::identity::NodeId;

use crate::url::Hint;

/// `dirs::config_dir()/ferry/known_servers`.
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("ferry").join("known_servers"))
}

/// The first line of a new file.
const HEADER: &str =
    "# ferry known servers: HOST:PORT ID, one per line (`ferry forget HOST:PORT` removes one)\n";

/// A known-servers file that cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum KnownServersError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line} is not HOST:PORT ID: {reason}")]
    Malformed {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{path} may be written by others (mode {mode:o}), so its pins cannot be trusted; run: chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
}

/// One pin: the id that answered at `authority`, from line `line` (counting from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub authority: String,
    pub id: NodeId,
    pub line: usize,
}

/// The pins of one file, as read.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: PathBuf,
    pins: Vec<Pin>,
}

/// The form a hint is pinned under: `host:port`, the host lowercased, IPv6 in brackets.
pub fn pin_key(hint: &Hint) -> String {
    Hint {
        host: hint.host.to_ascii_lowercase(),
        port: hint.port,
    }
    .authority()
}

impl KnownServers {
    /// Reads `path`; a missing file has no pins.
    pub fn load(path: &Path) -> Result<Self, KnownServersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(io_error(path, source)),
        };
        check_permissions(path)?;
        let mut pins = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if let Some(pin) =
                parse_line(line, n + 1).map_err(|reason| KnownServersError::Malformed {
                    path: path.display().to_string(),
                    line: n + 1,
                    reason,
                })?
            {
                pins.push(pin);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            pins,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin of `hint`, if any (the first line for it).
    pub fn lookup(&self, hint: &Hint) -> Option<&Pin> {
        let key = pin_key(hint);
        self.pins.iter().find(|p| p.authority == key)
    }

    /// The first of `hints` that is pinned, with its pin.
    pub fn first_pinned<'a>(&self, hints: &'a [Hint]) -> Option<(&'a Hint, &Pin)> {
        hints
            .iter()
            .find_map(|h| self.lookup(h).map(|pin| (h, pin)))
    }
}

/// Appends `hint id` to the file at `path` (created owner-only, with its parents); returns the
/// line number it was written on.
pub fn add(path: &Path, hint: &Hint, id: &NodeId) -> Result<usize, KnownServersError> {
    // A malformed file, or one others may write, is refused before anything is added to it.
    KnownServers::load(path)?;
    let lines = match std::fs::read_to_string(path) {
        Ok(text) => text.lines().count(),
        Err(_) => 0,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(|e| io_error(parent, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| io_error(path, e))?;
    let mut text = String::new();
    let mut line = lines + 1;
    if lines == 0 {
        text.push_str(HEADER);
        line += 1;
    }
    text.push_str(&format!("{} {id}\n", pin_key(hint)));
    // One write, so two clients pinning at once do not interleave within a line.
    file.write_all(text.as_bytes())
        .map_err(|e| io_error(path, e))?;
    Ok(line)
}

/// Removes every pin of `hint` from the file at `path`, keeping every other line; returns how
/// many were removed. The file is replaced whole (written beside it, then renamed).
pub fn forget(path: &Path, hint: &Hint) -> Result<usize, KnownServersError> {
    // Parse first: a malformed file is reported, not rewritten.
    let known = KnownServers::load(path)?;
    let gone: Vec<usize> = known
        .pins
        .iter()
        .filter(|p| p.authority == pin_key(hint))
        .map(|p| p.line)
        .collect();
    if gone.is_empty() {
        return Ok(0);
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    let kept: String = text
        .lines()
        .enumerate()
        .filter(|(n, _)| !gone.contains(&(n + 1)))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(kept.as_bytes()).and_then(|()| f.sync_all()));
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(path, e));
    }
    Ok(gone.len())
}

fn parse_line(line: &str, number: usize) -> Result<Option<Pin>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let mut words = trimmed.split_whitespace();
    let (Some(authority), Some(id), None) = (words.next(), words.next(), words.next()) else {
        return Err("expected two words".into());
    };
    let hint: Hint = authority
        .parse()
        .map_err(|e: crate::url::UrlError| e.to_string())?;
    if !authority.ends_with(&format!(":{}", hint.port)) {
        return Err(format!("{authority:?} has no port"));
    }
    let id: NodeId = id.parse().map_err(|e| format!("id {id:?}: {e}"))?;
    Ok(Some(Pin {
        authority: pin_key(&hint),
        id,
        line: number,
    }))
}

fn io_error(path: &Path, source: std::io::Error) -> KnownServersError {
    KnownServersError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), KnownServersError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(KnownServersError::Permissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), KnownServersError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::identity::Identity;

    fn hint(s: &str) -> Hint {
        s.parse().unwrap()
    }

    fn id(byte: u8) -> NodeId {
        Identity::from_secret([byte; 32]).id()
    }

    #[test]
    fn pins_are_added_found_and_forgotten_by_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/ferry/known_servers");
        assert!(KnownServers::load(&path)
            .unwrap()
            .lookup(&hint("h:1"))
            .is_none());

        assert_eq!(
            add(&path, &hint("Files.Example.org:7000"), &id(1)).unwrap(),
            2
        );
        assert_eq!(add(&path, &hint("[::1]:7000"), &id(2)).unwrap(), 3);
        assert_eq!(add(&path, &hint("10.0.0.1"), &id(3)).unwrap(), 4);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# ferry known servers"), "{text}");
        assert!(
            text.contains(&format!("\nfiles.example.org:7000 {}\n", id(1))),
            "{text}"
        );

        let known = KnownServers::load(&path).unwrap();
        let pin = known.lookup(&hint("FILES.example.org:7000")).unwrap();
        assert_eq!((pin.id, pin.line), (id(1), 2));
        assert_eq!(known.lookup(&hint("[::1]:7000")).unwrap().id, id(2));
        assert_eq!(known.lookup(&hint("10.0.0.1:6789")).unwrap().line, 4);
        assert!(
            known.lookup(&hint("files.example.org:7001")).is_none(),
            "ports count"
        );
        let hints = [hint("nope:1"), hint("[::1]:7000")];
        assert_eq!(known.first_pinned(&hints).unwrap().1.id, id(2));

        assert_eq!(forget(&path, &hint("[::1]:7000")).unwrap(), 1);
        assert_eq!(forget(&path, &hint("[::1]:7000")).unwrap(), 0);
        let known = KnownServers::load(&path).unwrap();
        assert!(known.lookup(&hint("[::1]:7000")).is_none());
        assert_eq!(known.lookup(&hint("10.0.0.1:6789")).unwrap().line, 3);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("# ferry"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "forget keeps the file owner-only");
        }
    }

    #[test]
    fn a_line_that_does_not_parse_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_servers");
        for (text, expect) in [
            ("h:1\n", "line 1 is not HOST:PORT ID: expected two words"),
            (
                "# c\n\nh:1 notanid\n",
                "line 3 is not HOST:PORT ID: id \"notanid\"",
            ),
            (&*format!("h {}\n", id(1)), "has no port"),
            (&*format!("h:1 {} extra\n", id(1)), "expected two words"),
        ] {
            std::fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            let err = KnownServers::load(&path).unwrap_err().to_string();
            assert!(err.contains(expect), "{text:?}: {err}");
            assert!(forget(&path, &hint("h:1")).is_err(), "never rewritten");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_servers");
        add(&path, &hint("h:1"), &id(1)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let err = KnownServers::load(&path).unwrap_err().to_string();
        assert!(err.contains("may be written by others (mode 664)"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            KnownServers::load(&path).is_ok(),
            "ids are public: reading is fine"
        );
    }
}
