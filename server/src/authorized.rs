//! Authorised clients: the file that says which identities may connect with the identity
//! handshake (spec §13.6), as whom and with what access, like OpenSSH's `authorized_keys`.
//!
//! ```text
//! # ID                                  NAME  [root=DIR/]  [write]
//! abcdefghijklmnopqrstuvwxyz234567ab    bob   root=team/bob/ write
//! ```
//!
//! One client per line: its node id, a name for logs, then options in any order: `root=DIR/`
//! confines it to that directory beneath the served root (which it sees as `/`), `write` lets
//! it upload (otherwise it may only read). `#` starts a comment; blank lines are ignored. A
//! malformed line is reported with its number and skipped; the others still count.
//!
//! [`AuthorizedClients`] is the server's resolver: it stats the file at every identity
//! handshake and rereads it only when it changed, so an edit (or `ferry-server revoke`)
//! applies from the next connection on, without a restart. [`authorize`] and [`revoke`] edit
//! the file atomically (a temporary file beside it, fsync, rename).

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_protocol::identity::NodeId;
use ferry_protocol::noise::IdentityResolver;
use ferry_protocol::{Permissions, Principal};

use crate::fs::RelPath;

/// The file's name in the ferry config directory, beside the identity.
pub const FILE_NAME: &str = "authorized_clients";

/// Larger files are refused rather than read (a line is under 200 bytes).
const MAX_FILE: u64 = 4 << 20;

/// Longest client name.
const MAX_NAME: usize = 64;

/// `<config dir>/ferry/authorized_clients`, beside the default identity file.
pub fn default_path() -> Option<PathBuf> {
    ferry_common::identity::default_identity_file().map(|p| p.with_file_name(FILE_NAME))
}

/// One authorised client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: NodeId,
    /// Its name in logs and in `revoke NAME`.
    pub name: String,
    /// The directory beneath the served root it is confined to; `None` for the whole root.
    pub root: Option<String>,
    /// May upload.
    pub write: bool,
}

impl Client {
    /// Who this client is once it has proven its identity.
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            permissions: if self.write {
                Permissions::READ_WRITE
            } else {
                Permissions::READ
            },
            subtree: self.root.clone(),
        }
    }

    /// The client's line in the file.
    pub fn line(&self) -> String {
        let mut line = format!("{} {}", self.id, self.name);
        if let Some(root) = &self.root {
            line.push_str(&format!(" root={root}/"));
        }
        if self.write {
            line.push_str(" write");
        }
        line
    }
}

/// A malformed line: its 1-based number and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The clients of a file, each with its line number, and its malformed lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub clients: Vec<(usize, Client)>,
    pub errors: Vec<LineError>,
}

/// Checks a client name: 1 to 64 characters of letters, digits, `.`, `_`, `-`, `@`, not
/// starting with `-` (so it never reads as a flag).
pub fn check_name(name: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || "._-@".contains(c);
    if name.is_empty() || name.len() > MAX_NAME || name.starts_with('-') || !name.chars().all(fine)
    {
        return Err(format!(
            "name {name:?} must be 1 to {MAX_NAME} letters, digits, '.', '_', '-' or '@', not starting with '-'"
        ));
    }
    Ok(())
}

/// Checks a `root=` directory and returns it without its trailing `/` (e.g. `team/bob`).
pub fn check_root(root: &str) -> Result<String, String> {
    let path = RelPath::parse_strict(root).map_err(|e| {
        format!("root {root:?} must be a directory beneath the served root, like team/bob/ ({e})")
    })?;
    Ok(path.as_str().to_owned())
}

/// Parses one line; `Ok(None)` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<Client>, String> {
    let content = line.split_once('#').map_or(line, |(before, _)| before);
    let mut fields = content.split_whitespace();
    let Some(id) = fields.next() else {
        return Ok(None);
    };
    let id: NodeId = id
        .parse()
        .map_err(|e| format!("{id:?} is not a node id ({e})"))?;
    let name = fields
        .next()
        .ok_or("a name must follow the id (ID NAME [root=DIR/] [write])")?;
    check_name(name)?;
    let mut client = Client {
        id,
        name: name.to_owned(),
        root: None,
        write: false,
    };
    for option in fields {
        if option == "write" && !client.write {
            client.write = true;
        } else if let (Some(root), None) = (option.strip_prefix("root="), &client.root) {
            client.root = Some(check_root(root)?);
        } else {
            return Err(format!(
                "unknown or repeated option {option:?} (expected root=DIR/ or write)"
            ));
        }
    }
    Ok(Some(client))
}

/// Parses a whole file. A later line with an id or a name already used is an error (the first
/// one counts), so that a name always means one client.
pub fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let error = |message: String| LineError {
            line: number,
            message,
        };
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some(client)) => {
                if let Some((first, _)) = parsed.clients.iter().find(|(_, c)| c.id == client.id) {
                    parsed.errors.push(error(format!(
                        "id {} is already on line {first}",
                        client.id
                    )));
                } else if let Some((first, _)) =
                    parsed.clients.iter().find(|(_, c)| c.name == client.name)
                {
                    parsed.errors.push(error(format!(
                        "name {} is already on line {first}",
                        client.name
                    )));
                } else {
                    parsed.clients.push((number, client));
                }
            }
            Err(message) => parsed.errors.push(error(message)),
        }
    }
    parsed
}

/// A file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("authorised clients file {path} is writable by others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("authorised clients file {path} is larger than {MAX_FILE} bytes")]
    TooLarge { path: String },
    #[error("authorised clients file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What identifies one version of the file: a rewrite (new inode), an append (size) or an
/// in-place edit (ctime, which every write sets, to the nanosecond) changes it, even within
/// the same second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Reads the file: `Ok(None)` when it does not exist; refused when group or others may write
/// it (whoever can edit it can let themselves in).
fn read(path: &Path) -> Result<Option<(String, Stamp)>, FileError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| FileError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    // The stamp and the mode of the file actually opened, so a swap after the check is seen
    // at the next handshake.
    let meta = file.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(FileError::Permissions {
            path: path.display().to_string(),
            mode,
        });
    }
    if meta.len() > MAX_FILE {
        return Err(FileError::TooLarge {
            path: path.display().to_string(),
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text).map_err(io)?;
    Ok(Some((text, Stamp::of(&meta))))
}

/// Loads the file for the command line: a missing file has no clients.
pub fn load(path: &Path) -> Result<Parsed, FileError> {
    Ok(read(path)?
        .map(|(text, _)| parse(&text))
        .unwrap_or_default())
}

/// The resolver over an authorised-clients file, reread whenever it changes.
#[derive(Debug)]
pub struct AuthorizedClients {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The version last read; `None` before the first read or while the file is missing.
    stamp: Option<Stamp>,
    clients: HashMap<NodeId, Principal>,
}

impl AuthorizedClients {
    /// Reads `path` at the first handshake and whenever it changes afterwards.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rereads the file if it changed since the last read.
    fn refresh(&self, state: &mut State) {
        let current = std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m));
        if current.is_some() && current == state.stamp {
            return;
        }
        // Fails closed: a missing, unreadable or unsafe file authorises nobody.
        state.clients.clear();
        state.stamp = None;
        match read(&self.path) {
            Ok(Some((text, stamp))) => {
                let parsed = parse(&text);
                for error in &parsed.errors {
                    tracing::warn!(file = %self.path.display(), "skipping {error}");
                }
                state.clients = parsed
                    .clients
                    .into_iter()
                    .map(|(_, c)| (c.id, c.principal()))
                    .collect();
                state.stamp = Some(stamp);
                tracing::info!(file = %self.path.display(), clients = state.clients.len(), "read the authorised clients");
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "no client is authorised"),
        }
    }
}

impl IdentityResolver for AuthorizedClients {
    fn resolve(&self, client: &NodeId, _public_key: &[u8; 32]) -> Option<Principal> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut state);
        state.clients.get(client).cloned()
    }
}

/// An edit that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the name {name} already belongs to {id}; revoke it first or choose another name")]
    NameTaken { name: String, id: NodeId },
    #[error("no client {0} in {1}")]
    NotFound(String, String),
}

const HEADER: &str = "# Ferry authorised clients, one a line: ID NAME [root=DIR/] [write]\n\
                      # (see ferry-server authorize --help; edits apply from the next connection)\n";

/// The directory holding `path`, created (0700) if missing, and the file's name in it.
fn dir_and_name(path: &Path) -> std::io::Result<(PathBuf, String)> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let name = path
        .file_name()
        .map_or_else(|| FILE_NAME.into(), |n| n.to_string_lossy().into_owned());
    Ok((dir, name))
}

/// Writes `text` to `path` atomically: a temporary file beside it (mode 0600), fsync, rename,
/// then fsync of the directory; the parent directory is created (0700) if missing.
fn write_atomic(path: &Path, text: &str) -> Result<(), FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| FileError::Io {
        path: path.display().to_string(),
        source,
    };
    let (dir, name) = dir_and_name(path).map_err(io)?;
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(io)
}

/// Serialises edits of `path` across threads and processes (the server enrolling clients,
/// `ferry-server authorize`/`revoke`): an exclusive flock on `.NAME.lock` beside it, held
/// until the returned file is dropped. Without it two read-modify-writes could lose a line.
fn lock(path: &Path) -> Result<std::fs::File, FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| FileError::Io {
        path: path.display().to_string(),
        source,
    };
    let (dir, name) = dir_and_name(path).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(format!(".{name}.lock")))
        .map_err(io)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(e.into()))?;
    Ok(file)
}

/// Authorises `client`: replaces the line of its id if there is one (changing its name, root
/// or access), else appends one. Every other line, comments and malformed ones included, is
/// kept as it was.
pub fn authorize(path: &Path, client: &Client) -> Result<(), EditError> {
    let _lock = lock(path)?;
    let text = read(path)?.map(|(text, _)| text).unwrap_or_default();
    let parsed = parse(&text);
    if let Some((_, other)) = parsed
        .clients
        .iter()
        .find(|(_, c)| c.name == client.name && c.id != client.id)
    {
        return Err(EditError::NameTaken {
            name: client.name.clone(),
            id: other.id,
        });
    }
    let replaced = parsed
        .clients
        .iter()
        .find(|(_, c)| c.id == client.id)
        .map(|(line, _)| *line);
    let mut out = if text.is_empty() {
        HEADER.to_owned()
    } else {
        String::new()
    };
    for (index, line) in text.lines().enumerate() {
        if Some(index + 1) == replaced {
            out.push_str(&client.line());
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if replaced.is_none() {
        out.push_str(&client.line());
        out.push('\n');
    }
    Ok(write_atomic(path, &out)?)
}

/// Removes the client named by `who` (an id or a name) and returns it.
pub fn revoke(path: &Path, who: &str) -> Result<Client, EditError> {
    let not_found = || EditError::NotFound(who.to_owned(), path.display().to_string());
    let _lock = lock(path)?;
    let text = read(path)?.map(|(text, _)| text).ok_or_else(not_found)?;
    let parsed = parse(&text);
    let id = who.parse::<NodeId>().ok();
    let (number, client) = parsed
        .clients
        .into_iter()
        .find(|(_, c)| Some(c.id) == id || c.name == who)
        .ok_or_else(not_found)?;
    let mut out = String::new();
    for (index, line) in text.lines().enumerate() {
        if index + 1 != number {
            out.push_str(line);
            out.push('\n');
        }
    }
    write_atomic(path, &out)?;
    Ok(client)
}

/// The `clients` table: name, id, root and access, one client a row.
pub fn table(clients: &[(usize, Client)]) -> String {
    let root_of = |c: &Client| {
        c.root
            .as_deref()
            .map_or("/".to_owned(), |r| format!("{r}/"))
    };
    let width = |f: &dyn Fn(&Client) -> usize, title: &str| {
        clients
            .iter()
            .map(|(_, c)| f(c))
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let names = width(&|c| c.name.len(), "NAME");
    let roots = width(&|c| root_of(c).len(), "ROOT");
    let mut out = format!(
        "{:names$}  {:34}  {:roots$}  ACCESS\n",
        "NAME", "ID", "ROOT"
    );
    for (_, c) in clients {
        let access = if c.write { "read-write" } else { "read-only" };
        let id = c.id.to_string();
        out.push_str(&format!(
            "{:names$}  {id:34}  {:roots$}  {access}\n",
            c.name,
            root_of(c)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::identity::Identity;

    fn id(n: u8) -> NodeId {
        Identity::from_secret([n; 32]).id()
    }

    #[test]
    fn good_lines_parse_with_their_options() {
        let text = format!(
            "# comment\n\n{a} alice\n  {b}\tbob root=team/bob/ write # trailing comment\n{c} carol write root=pub\n",
            a = id(1),
            b = id(2),
            c = id(3)
        );
        let parsed = parse(&text);
        assert_eq!(parsed.errors, []);
        let clients: Vec<_> = parsed.clients.iter().map(|(n, c)| (*n, c.line())).collect();
        assert_eq!(
            clients,
            [
                (3, format!("{} alice", id(1))),
                (4, format!("{} bob root=team/bob/ write", id(2))),
                (5, format!("{} carol root=pub/ write", id(3))),
            ]
        );
        let bob = parsed.clients[1].1.principal();
        assert_eq!(bob.permissions, Permissions::READ_WRITE);
        assert_eq!(bob.subtree.as_deref(), Some("team/bob"));
        assert_eq!(
            parsed.clients[0].1.principal().permissions,
            Permissions::READ
        );
        assert_eq!(parsed.clients[0].1.principal().subtree, None);
    }

    #[test]
    fn every_malformed_line_is_reported_with_its_number_and_skipped() {
        let good = id(1);
        let text = [
            format!("{good} alice"),                 // 1 good
            "notanid bob".to_owned(),                // 2
            format!("{}", id(2)),                    // 3 no name
            format!("{} -x", id(3)),                 // 4 bad name
            format!("{} dave root=../up", id(4)),    // 5 climbs
            format!("{} erin root=/abs", id(5)),     // 6 absolute
            format!("{} fay admin", id(6)),          // 7 unknown option
            format!("{} gus write write", id(7)),    // 8 repeated
            format!("{good} alice2"),                // 9 duplicate id
            format!("{} alice", id(8)),              // 10 duplicate name
            format!("{} hal root=ok/ write", id(9)), // 11 good
        ]
        .join("\n");
        let parsed = parse(&text);
        let lines: Vec<usize> = parsed.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 9, 10], "{:#?}", parsed.errors);
        let kept: Vec<usize> = parsed.clients.iter().map(|(n, _)| *n).collect();
        assert_eq!(kept, [1, 11]);
        assert!(parsed.errors[0].to_string().starts_with("line 2: "));
        assert!(
            parsed.errors[4].message.contains("root"),
            "{}",
            parsed.errors[4]
        );
    }

    #[test]
    fn a_file_others_may_write_is_refused_with_the_chmod_hint() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, format!("{} alice\n", id(1))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = load(&path).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
        let resolver = AuthorizedClients::new(&path);
        assert_eq!(resolver.resolve(&id(1), &[0; 32]), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(resolver.resolve(&id(1), &[0; 32]).is_some());
    }

    /// Edits within one second (often within one clock tick) are still seen: the stamp holds
    /// the inode, the size and the ctime to the nanosecond, not the mtime alone.
    #[test]
    fn the_resolver_rereads_the_file_after_every_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let resolver = AuthorizedClients::new(&path);
        let alice = Client {
            id: id(1),
            name: "alice".into(),
            root: None,
            write: false,
        };
        assert_eq!(resolver.resolve(&alice.id, &[0; 32]), None, "no file");
        authorize(&path, &alice).unwrap();
        assert_eq!(
            resolver.resolve(&alice.id, &[0; 32]),
            Some(alice.principal())
        );
        revoke(&path, "alice").unwrap();
        assert_eq!(resolver.resolve(&alice.id, &[0; 32]), None, "revoked");
        authorize(&path, &alice).unwrap();
        assert!(resolver.resolve(&alice.id, &[0; 32]).is_some());
        // An in-place rewrite of the same length keeping the mtime: only the ctime tells.
        let text = std::fs::read_to_string(&path).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let swapped = text.replace(&alice.id.to_string(), &id(2).to_string());
        assert_eq!(swapped.len(), text.len());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        (&file).write_all(swapped.as_bytes()).unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        assert_eq!(
            resolver.resolve(&alice.id, &[0; 32]),
            None,
            "edited in place"
        );
        assert!(resolver.resolve(&id(2), &[0; 32]).is_some());
    }

    #[test]
    fn edits_keep_other_lines_and_refuse_a_taken_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE_NAME);
        let bob = |write| Client {
            id: id(2),
            name: "bob".into(),
            root: Some("team/bob".into()),
            write,
        };
        authorize(&path, &bob(false)).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("# mine\nbroken line\n");
        write_atomic(&path, &text).unwrap();
        authorize(&path, &bob(true)).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.contains("# mine\nbroken line\n"), "{after}");
        assert_eq!(load(&path).unwrap().clients, [(3, bob(true))]);
        let thief = Client {
            id: id(3),
            ..bob(false)
        };
        assert!(matches!(
            authorize(&path, &thief),
            Err(EditError::NameTaken { .. })
        ));
        assert_eq!(revoke(&path, &id(2).to_string()).unwrap(), bob(true));
        assert!(matches!(revoke(&path, "bob"), Err(EditError::NotFound(..))));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
