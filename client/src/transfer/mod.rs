//! Downloads to disk: partial files, resume, and whole trees with a bounded number of files in
//! flight.
//!
//! A file `NAME` is written to `.NAME.ferry-part` beside it and renamed to `NAME` only after
//! the server's hash matched what arrived. Beside the partial file, `.NAME.ferry-part.meta`
//! records what it is a part of, as small `key value` text lines:
//!
//! ```text
//! ferry-part 1
//! path docs/big.iso            remote path
//! size 734003200               remote size when the download started
//! mtime 1700000000.000000005   remote mtime (seconds.nanoseconds)
//! checkpoint 1048576 <blake3>  optional: length and digest of the part when it was last closed
//! ```
//!
//! No remote name can reach those files: a remote name any of whose components ends in
//! `.ferry-part` or `.ferry-part.meta` is refused ([`is_reserved_name`]), so a server holding
//! both `a` and `.a.ferry-part` cannot make one download finish onto the other's temporary
//! file. A download holds an exclusive lock (`flock`) on its partial file, so two downloads,
//! in one process or two, never write the same one.
//!
//! A resume (the default when both files exist) first checks that the remote size and mtime are
//! unchanged (if not, it fails with an integrity error rather than splice two versions of the
//! file), then re-hashes the part (and compares it with the checkpoint when one was written),
//! asks the server for the whole file's digest (the DIGEST service, spec §3.11) and continues
//! with a range request. The part's hash state continues over the new bytes, so the whole file
//! is checked against the server's whole-file digest without reading it again: a server that
//! answers the range with the wrong bytes is caught even when the range's own digest matches.
//! A server without the DIGEST service gets no trust in a splice: the download starts over.
//!
//! A transfer that moves fewer than [`MinProgress`] bytes in its window ends (exit 3, part
//! kept), free space for the rest of the file is checked before it starts, and nothing past the
//! size the server stated is written. The executable bit of the remote mode is kept (like
//! `cp`); other permission bits follow the local umask.
//!
//! A connection retired on the way (spec §5.5: the server's or our key near its usage limit)
//! is replaced by a new one to the same server; refused requests run again there, a file
//! continues from its partial file through the same resume (`conn.rs`, `fetch.rs`), a download
//! to a writer from the bytes written (hashed as written, then checked against the whole
//! file's digest), and an upload from the server's partial (`put.rs`).
//!
//! Files: `part.rs` (the partial file's name, record, lock and writer), `resume.rs` (whether a
//! part continues, and from where), `fetch.rs` (one file onto disk, and the minimum-progress
//! watch), `tree.rs` (whole trees), `conn.rs` (the connection of the moment, renewed when
//! retired); this file holds the public API.

mod conn;
mod fetch;
mod part;
mod put;
mod resume;
mod tree;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_common::text::printable;
use ferry_jail::{FsError, Jail, RelPath};
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{EntryKind, FetchResponse, TO_END};
use ferry_protocol::ErrorCode;
use tokio::sync::watch;
use tracing::debug;

use crate::client::Client;
use crate::error::ClientError;
use crate::progress::TransferProgress;
use conn::Conn;
use fetch::{Digests, Fetcher, ProgressWatch, Target};

pub use conn::MAX_IDLE_CONNECTIONS;
pub use part::{is_reserved_name, meta_path, part_path, PartMeta, META_SUFFIX, PART_SUFFIX};
pub use put::{remote_join, upload_file, upload_tree, PutOptions, PutTreeReport, Uploaded};
pub use tree::{download_tree, MAX_FRONTIER, MAX_REPORTED_FAILURES};

/// How `get` treats existing files.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Overwrite an existing destination, and start over when a partial file cannot be resumed.
    pub force: bool,
    /// Continue from `NAME.part` when it exists (the default). `false` starts over.
    pub resume: bool,
    /// Files in flight at once for trees. Default 4.
    pub jobs: usize,
    /// The least a transfer must move per window to go on. Default [`MinProgress::DEFAULT`].
    pub min_progress: MinProgress,
}

impl Default for GetOptions {
    fn default() -> Self {
        Self {
            force: false,
            resume: true,
            jobs: 4,
            min_progress: MinProgress::DEFAULT,
        }
    }
}

/// The minimum-progress rule: a fetch that receives fewer than `bytes` in `window` ends with a
/// timeout (exit 3) and keeps its partial file, so a server dripping a byte now and then cannot
/// hold a download open forever. `bytes == 0` turns the rule off. Written `4K/60s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinProgress {
    pub bytes: u64,
    pub window: Duration,
}

impl MinProgress {
    /// 4 KiB per minute: 68 bytes/s, far below any link a person would wait on (a 9600 baud
    /// modem moves 1 KiB/s), so it never ends an honest slow transfer, yet a drip of one byte
    /// every few seconds ends within a minute.
    pub const DEFAULT: Self = Self {
        bytes: 4096,
        window: Duration::from_secs(60),
    };

    /// No minimum.
    pub const OFF: Self = Self {
        bytes: 0,
        window: Duration::from_secs(60),
    };

    pub fn is_off(&self) -> bool {
        self.bytes == 0 || self.window.is_zero()
    }
}

impl fmt::Display for MinProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        write!(f, "{}/{}s", self.bytes, self.window.as_secs_f64())
    }
}

impl std::str::FromStr for MinProgress {
    type Err = String;

    /// `BYTES/DURATION` (`4K/60s`, `1M/5m`, `100/2s`), or `0` / `off`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "0" || s.eq_ignore_ascii_case("off") {
            return Ok(Self::OFF);
        }
        let bad = || format!("expected BYTES/DURATION such as 4K/60s, or off; got {s:?}");
        let (bytes, window) = s.split_once('/').ok_or_else(bad)?;
        let bytes = bytes.trim();
        let (digits, unit) = match bytes.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => bytes.split_at(at),
            None => (bytes, ""),
        };
        let scale: u64 = match unit
            .to_ascii_uppercase()
            .trim_end_matches("IB")
            .trim_end_matches('B')
        {
            "" => 1,
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            _ => return Err(bad()),
        };
        let bytes = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .ok_or_else(bad)?;
        let window = window.trim();
        let window = match window.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => humantime::parse_duration(window).map_err(|_| bad())?,
        };
        Ok(Self { bytes, window })
    }
}

/// What one finished download did.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub remote: String,
    pub dest: PathBuf,
    /// Size of the whole file.
    pub size: u64,
    /// Bytes fetched in this run (less than `size` after a resume).
    pub fetched: u64,
    /// Where this run started (0 unless resumed).
    pub resumed_from: u64,
    /// Digest (BLAKE3) of the whole file.
    pub digest: [u8; 32],
    pub elapsed: Duration,
    /// The destination already held this exact file (trees only).
    pub skipped: bool,
}

/// What a tree download did.
#[derive(Debug, Default)]
pub struct TreeReport {
    pub files: Vec<Downloaded>,
    /// Files that failed, with why; the others were still fetched.
    pub failed: Vec<(String, ClientError)>,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Tells transfers to stop: set it to `true` (e.g. on Ctrl-C). Partial files are kept.
#[derive(Debug, Clone)]
pub struct Cancel {
    rx: watch::Receiver<bool>,
}

/// The sending side of [`Cancel`].
#[derive(Debug, Clone)]
pub struct CancelHandle {
    tx: Arc<watch::Sender<bool>>,
}

/// A cancel pair.
pub fn cancel_pair() -> (CancelHandle, Cancel) {
    let (tx, rx) = watch::channel(false);
    (CancelHandle { tx: Arc::new(tx) }, Cancel { rx })
}

impl CancelHandle {
    pub fn cancel(&self) {
        let _ = self.tx.send(true);
    }
}

impl Cancel {
    /// A token that never fires.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so `changed` never reports a closed channel.
        std::mem::forget(tx);
        Self { rx }
    }

    pub fn is_cancelled(&self) -> bool {
        *self.rx.borrow()
    }

    /// Runs `fut` unless cancelled first, so Ctrl-C also interrupts the requests before the
    /// data flows (a stat or listing on a slow server).
    pub async fn guard<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let mut cancel = self.clone();
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(ClientError::Interrupted),
            result = fut => result,
        }
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&mut self) {
        // A dropped handle means nobody can cancel any more: wait forever.
        if self.rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs a request, again after a pause while the server answers BUSY (its per-connection
/// request limit is shared by every transfer and background job on the connection). Gives up
/// after about 10 s.
async fn when_not_busy<T, F, Fut>(mut request: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(20);
    for _ in 0..20 {
        match request().await {
            // Only a request refused as BUSY is retried; a connection the server closed
            // (even with BUSY) stays closed.
            Err(ClientError::Remote(body)) if body.code == ErrorCode::BUSY => {
                debug!(?delay, "server busy; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
    request().await
}

/// The last component of a remote path, or `None` for the root.
pub fn remote_name(path: &str) -> Option<&str> {
    path.rsplit('/').find(|c| !c.is_empty())
}

/// Where `get REMOTE [DEST]` writes: `DEST` itself, or `DEST/NAME` when `DEST` is a directory
/// or ends with `/`,
/// or `./NAME` without `DEST`.
pub fn resolve_dest(remote: &str, dest: Option<&Path>) -> Result<PathBuf, ClientError> {
    let name = remote_name(remote)
        .ok_or_else(|| ClientError::Local("the root is a directory; use get -r".into()))?;
    // A trailing slash names a directory even before it exists.
    let dir_like = |d: &Path| d.is_dir() || d.as_os_str().to_string_lossy().ends_with('/');
    let dest = match dest {
        Some(d) if dir_like(d) => d.join(checked_name(name)?),
        Some(d) => d.to_path_buf(),
        None => PathBuf::from(checked_name(name)?),
    };
    if dest
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_reserved_name)
    {
        return Err(ClientError::Local(format!(
            "{} ends in {PART_SUFFIX} or {META_SUFFIX}, names ferry keeps for partial downloads; choose another destination",
            dest.display()
        )));
    }
    Ok(dest)
}

/// A remote name used as a local file name: one safe component.
fn checked_name(name: &str) -> Result<&str, ClientError> {
    match safe_relative(name) {
        Some(_) => Ok(name),
        None => Err(ClientError::Local(format!(
            "refusing the remote name {:?}: it is not a safe local file name",
            printable(name)
        ))),
    }
}

/// Turns a listing name (`a/b/c`) into a local relative path, refusing anything that could
/// leave the destination directory.
///
/// Components in the partial-file namespace ([`is_reserved_name`]) are refused too, so a
/// remote name never lands on another download's temporary file.
///
/// The rules are the jail's ([`RelPath::parse_strict`]); this adds only the partial-file
/// namespace.
pub fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = RelPath::parse_strict(name).ok()?;
    if path.components().any(is_reserved_name) {
        return None;
    }
    Some(PathBuf::from(path.as_str()))
}

/// Downloads one file. `bar` (from [`TransferProgress::file`]) is created once the size is known.
pub async fn download_file(
    client: &Client,
    remote: &str,
    dest: &Path,
    options: &GetOptions,
    progress: &dyn TransferProgress,
    cancel: &Cancel,
) -> Result<Downloaded, ClientError> {
    let started = Instant::now();
    let conn = Conn::new(client);
    // Ask first: a remote directory is a usage problem whatever exists locally.
    let entry = cancel
        .guard(conn.run(|c| async move { when_not_busy(|| c.stat(remote)).await }))
        .await?;
    if entry.kind == EntryKind::DIRECTORY {
        return Err(ClientError::Local(format!(
            "{remote} is a directory; use get -r"
        )));
    }
    if dest.exists() && !options.force {
        return Err(ClientError::Local(format!(
            "{} already exists; use -f (--force) to overwrite it",
            dest.display()
        )));
    }
    let label = remote_name(remote).unwrap_or(remote);
    // The user named the destination; its directory is the jail every write stays beneath.
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| ClientError::io(parent, e))?;
    let jail = Jail::open(parent).map_err(|e| ClientError::io(parent, e))?;
    let name = dest.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        ClientError::Local(format!(
            "{}: the destination needs a file name in utf-8",
            dest.display()
        ))
    })?;
    let rel = RelPath::parse_strict(name)
        .map_err(|e| ClientError::Local(format!("{}: {e}", dest.display())))?;
    let digests = Digests::default();
    let fetcher = Fetcher {
        conn: &conn,
        options,
        progress,
        cancel,
        digests: &digests,
    };
    let target = Target {
        jail: &jail,
        rel: &rel,
        dest,
    };
    fetcher
        .fetch_to(remote, &entry, target, label)
        .await
        .map(|mut d| {
            d.elapsed = started.elapsed();
            d
        })
}

/// Downloads one file to `out` (e.g. stdout, for `get URL -`): nothing is kept on disk. The
/// data is written as it arrives, so a failed check (exit 4) comes after the bytes were
/// written, as with `curl`; the caller must say so. When the connection is retired on the way
/// (spec §5.5) the download goes on over a new one with a range fetch from the bytes already
/// written; those are hashed as they are written, and the whole is then checked against the
/// server's digest of the whole file (spec §3.11), as a resumed download is.
pub async fn download_to_writer<W: tokio::io::AsyncWrite + Unpin>(
    client: &Client,
    remote: &str,
    out: &mut W,
    options: &GetOptions,
    progress: &dyn TransferProgress,
    cancel: &Cancel,
) -> Result<Downloaded, ClientError> {
    use tokio::io::AsyncWriteExt;
    let started = Instant::now();
    let conn = Conn::new(client);
    let writing = |e: std::io::Error| {
        ClientError::Local(format!(
            "writing the output: {}",
            crate::error::os_error(&e)
        ))
    };
    // What every leg must describe (size and mtime), from the first answer.
    let mut first: Option<FetchResponse> = None;
    let mut bar: Option<Box<dyn crate::progress::FileProgress>> = None;
    // Every byte written to `out`, in order.
    let mut written = 0u64;
    let mut whole = FetchDigest::new();
    // The server's digest of the whole file, asked for once a leg starts past byte 0.
    let mut whole_digest: Option<[u8; 32]> = None;
    let mut cancel = cancel.clone();
    let result = loop {
        let client = conn.current().await;
        let offset = written;
        let leg = async {
            let mut stream = cancel
                .guard(when_not_busy(|| client.fetch(remote, offset, TO_END)))
                .await?;
            let response = *stream.response();
            let same = |f: &FetchResponse| {
                (f.size, f.mtime_secs, f.mtime_nanos)
                    == (response.size, response.mtime_secs, response.mtime_nanos)
            };
            if !first.as_ref().is_none_or(same) {
                return Err(ClientError::Integrity(format!(
                    "{remote} changed on the server after {written} bytes were written"
                )));
            }
            first.get_or_insert(response);
            let bar = bar.get_or_insert_with(|| {
                progress.file(remote_name(remote).unwrap_or(remote), response.size, 0)
            });
            let mut watch = ProgressWatch::new(options.min_progress);
            while let Some(chunk) = watch.next_chunk(&mut stream, &mut cancel, remote).await? {
                out.write_all(&chunk).await.map_err(writing)?;
                whole.update(&chunk);
                written += chunk.len() as u64;
                bar.inc(chunk.len() as u64);
            }
            out.flush().await.map_err(writing)?;
            stream.digest().ok_or_else(|| {
                ClientError::Integrity(format!("{remote}: the transfer ended without its digest"))
            })
        };
        match leg.await {
            // A leg from byte 0 is the whole file: the stream checked its digest.
            Ok(digest) if offset == 0 => break Ok(digest),
            Ok(_) => break Ok(whole.clone().finalize()),
            Err(e) if e.is_retired() => {
                if let Err(e) = conn.renew(&client, e).await {
                    break Err(e);
                }
                if written > 0 && whole_digest.is_none() {
                    match whole_file_digest(&conn, remote, first.as_ref(), written, &cancel).await {
                        Ok(digest) => whole_digest = Some(digest),
                        Err(e) => break Err(e),
                    }
                }
            }
            Err(e) => break Err(e),
        }
    };
    let digest = match result {
        Ok(digest) => digest,
        Err(e) => {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            return Err(e);
        }
    };
    if let Some(expected) = whole_digest {
        if digest != expected {
            return Err(ClientError::Integrity(format!(
                "{remote}: the {written} bytes written, continued over a new connection, do not match the server's digest of the whole file"
            )));
        }
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    Ok(Downloaded {
        remote: remote.to_string(),
        dest: PathBuf::from("-"),
        size: first.map_or(written, |f| f.size),
        fetched: written,
        resumed_from: 0,
        digest,
        elapsed: started.elapsed(),
        skipped: false,
    })
}

/// The server's digest of the whole of `remote` (spec §3.11), for a download to a writer that
/// goes on after `written` bytes: it must describe the file the first leg described.
async fn whole_file_digest(
    conn: &Conn,
    remote: &str,
    first: Option<&FetchResponse>,
    written: u64,
    cancel: &Cancel,
) -> Result<[u8; 32], ClientError> {
    let size = first.map_or(0, |f| f.size);
    let asked = cancel
        .guard(conn.run(|c| async move {
            when_not_busy(|| c.digest(remote, resume::digest_timeout(size))).await
        }))
        .await;
    let stated = match asked {
        Ok(stated) => stated,
        Err(e) if e.remote_code() == Some(ErrorCode::UNKNOWN_REQUEST) => {
            return Err(ClientError::Retired(format!(
                "the server retired the connection after {written} bytes were written and cannot state the whole file's digest (an older server), so the download cannot continue; run get again"
            )))
        }
        Err(e) => return Err(e),
    };
    let same = first.is_some_and(|f| {
        (f.size, f.mtime_secs, f.mtime_nanos)
            == (stated.size, stated.mtime_secs, stated.mtime_nanos)
    });
    if !same {
        return Err(ClientError::Integrity(format!(
            "{remote} changed on the server after {written} bytes were written"
        )));
    }
    Ok(stated.digest)
}

/// A write the jail refused or the system failed, for the user: a link that would lead out is
/// named as such; system errors read as they did through the path-based calls.
fn local_error(path: &Path, error: FsError) -> ClientError {
    use rustix::io::Errno;
    let os = |errno: Errno| {
        ClientError::io(
            path,
            std::io::Error::from_raw_os_error(errno.raw_os_error()),
        )
    };
    match error {
        FsError::Symlink(_) => ClientError::Local(format!(
            "{}: refusing to write through a symbolic link",
            path.display()
        )),
        FsError::Escapes(_) => ClientError::Local(format!(
            "{}: refusing to write outside the destination directory, where a symbolic link leads",
            path.display()
        )),
        FsError::NotAFile(_) => ClientError::Local(format!(
            "{}: exists and is not a regular file",
            path.display()
        )),
        FsError::NotFound(_) => os(Errno::NOENT),
        FsError::NotADirectory(_) => os(Errno::NOTDIR),
        FsError::PermissionDenied(_) => os(Errno::ACCESS),
        FsError::NameTooLong(_) => os(Errno::NAMETOOLONG),
        FsError::Io { errno, .. } => os(errno),
        other => ClientError::Local(format!("{}: {other}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn busy_answers_are_retried_then_given_up() {
        let mut calls = 0;
        let result = when_not_busy(|| {
            calls += 1;
            let busy = calls < 3;
            async move {
                if busy {
                    Err(ClientError::Remote(ferry_protocol::ErrorBody::from_code(
                        ErrorCode::BUSY,
                    )))
                } else {
                    Ok(calls)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
        let err = when_not_busy(|| async {
            Err::<(), _>(ClientError::Remote(ferry_protocol::ErrorBody::from_code(
                ErrorCode::BUSY,
            )))
        })
        .await
        .unwrap_err();
        assert_eq!(err.remote_code(), Some(ErrorCode::BUSY));
    }

    #[test]
    fn min_progress_parses() {
        assert_eq!(
            "4K/60s".parse::<MinProgress>().unwrap(),
            MinProgress::DEFAULT
        );
        assert_eq!(
            "100/2".parse::<MinProgress>().unwrap(),
            MinProgress {
                bytes: 100,
                window: Duration::from_secs(2)
            }
        );
        assert!("off".parse::<MinProgress>().unwrap().is_off());
        assert!("0".parse::<MinProgress>().unwrap().is_off());
        assert_eq!("1MiB/5m".parse::<MinProgress>().unwrap().bytes, 1 << 20);
        for bad in ["", "4K", "x/1s", "4Q/1s", "4K/soon"] {
            assert!(bad.parse::<MinProgress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert_eq!(safe_relative("a/b.txt"), Some(PathBuf::from("a/b.txt")));
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "a\\b", "./x"] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
        // The jail's strict rules refuse what the server's request parser refuses too.
        for bad in ["a//b", "a/./b", ".", "C:x", "a\0b", &"n".repeat(256)] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
        assert_eq!(safe_relative("ab:c/d e"), Some(PathBuf::from("ab:c/d e")));
    }

    #[test]
    fn destinations() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_dest("docs/a.txt", None).unwrap(),
            PathBuf::from("a.txt")
        );
        assert_eq!(
            resolve_dest("docs/a.txt", Some(dir.path())).unwrap(),
            dir.path().join("a.txt")
        );
        assert_eq!(
            resolve_dest("a.txt", Some(Path::new("/tmp/nonexistent-x/b"))).unwrap(),
            PathBuf::from("/tmp/nonexistent-x/b")
        );
        assert!(resolve_dest("", None).is_err());
        assert_eq!(
            resolve_dest("d/a.txt", Some(Path::new("new/"))).unwrap(),
            PathBuf::from("new/a.txt")
        );
        assert_eq!(
            part_path(Path::new("x/a.txt")),
            PathBuf::from("x/.a.txt.ferry-part")
        );
        assert_eq!(
            meta_path(Path::new("a.txt")),
            PathBuf::from(".a.txt.ferry-part.meta")
        );
        // No remote name reaches the partial-file namespace, in a tree or as one file.
        for reserved in [".a.ferry-part", "d/.a.ferry-part.meta", ".d.ferry-part/a"] {
            assert_eq!(safe_relative(reserved), None, "{reserved}");
        }
        assert!(resolve_dest(".a.ferry-part", None).is_err());
        assert!(resolve_dest("a.part", None).is_ok());
    }
}
