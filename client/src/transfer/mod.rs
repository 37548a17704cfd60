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

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use ferry_jail::{Create, FsError, Jail, RelPath};
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{Entry, EntryKind, TO_END};
use ferry_protocol::ErrorCode;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::client::{Client, FetchStream};
use crate::error::ClientError;
use crate::progress::TransferProgress;
use ferry_common::text::printable;

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

/// The partial-file record (see the module docs for the format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartMeta {
    pub path: String,
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    pub checkpoint: Option<(u64, [u8; 32])>,
}

impl PartMeta {
    fn for_entry(path: &str, size: u64, mtime_secs: i64, mtime_nanos: u32) -> Self {
        Self {
            path: path.to_string(),
            size,
            mtime_secs,
            mtime_nanos,
            checkpoint: None,
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = format!(
            "ferry-part 1\npath {}\nsize {}\nmtime {}.{:09}\n",
            self.path, self.size, self.mtime_secs, self.mtime_nanos
        );
        if let Some((len, sha)) = &self.checkpoint {
            out.push_str(&format!("checkpoint {len} {}\n", hex::encode(sha)));
        }
        out
    }

    /// `None` for anything that is not a well-formed record.
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != "ferry-part 1" {
            return None;
        }
        let mut meta = Self::for_entry("", 0, 0, 0);
        let mut seen = 0;
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            match key {
                "path" => {
                    meta.path = value.to_string();
                    seen |= 1;
                }
                "size" => {
                    meta.size = value.parse().ok()?;
                    seen |= 2;
                }
                "mtime" => {
                    let (secs, nanos) = value.split_once('.')?;
                    meta.mtime_secs = secs.parse().ok()?;
                    meta.mtime_nanos = nanos.parse().ok()?;
                    seen |= 4;
                }
                "checkpoint" => {
                    let (len, sha) = value.split_once(' ')?;
                    let sha: [u8; 32] = hex::decode(sha).ok()?.try_into().ok()?;
                    meta.checkpoint = Some((len.parse().ok()?, sha));
                }
                _ => {}
            }
        }
        (seen == 7).then_some(meta)
    }

    fn same_file(&self, other: &Self) -> bool {
        self.path == other.path
            && self.size == other.size
            && self.mtime_secs == other.mtime_secs
            && self.mtime_nanos == other.mtime_nanos
    }
}

/// The suffix of partial files; remote names ending in it (or in [`META_SUFFIX`]) are refused.
pub const PART_SUFFIX: &str = ".ferry-part";
/// The suffix of a partial file's record.
pub const META_SUFFIX: &str = ".ferry-part.meta";

/// `.NAME.ferry-part` beside `NAME`.
pub fn part_path(dest: &Path) -> PathBuf {
    sibling(dest, PART_SUFFIX)
}

/// `.NAME.ferry-part.meta` beside `NAME`.
pub fn meta_path(dest: &Path) -> PathBuf {
    sibling(dest, META_SUFFIX)
}

fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dest.file_name().unwrap_or(dest.as_os_str()));
    name.push(suffix);
    dest.with_file_name(name)
}

/// Whether a name belongs to the partial-file namespace, which no remote name may reach.
pub fn is_reserved_name(name: &str) -> bool {
    name.ends_with(PART_SUFFIX) || name.ends_with(META_SUFFIX)
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
    // Ask first: a remote directory is a usage problem whatever exists locally.
    let entry = cancel.guard(when_not_busy(|| client.stat(remote))).await?;
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
    fetch_to(
        client,
        remote,
        &entry,
        Target {
            jail: &jail,
            rel: &rel,
            dest,
        },
        options,
        progress,
        label,
        cancel,
    )
    .await
    .map(|mut d| {
        d.elapsed = started.elapsed();
        d
    })
}

/// Downloads one file to `out` (e.g. stdout, for `get URL -`): nothing is kept on disk and
/// nothing resumes. The data is written as it arrives, so a failed check (exit 4) comes after
/// the bytes were written, as with `curl`; the caller must say so.
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
    let mut stream = cancel
        .guard(when_not_busy(|| client.fetch(remote, 0, TO_END)))
        .await?;
    let size = stream.response().size;
    let bar = progress.file(remote_name(remote).unwrap_or(remote), size, 0);
    let mut watch = ProgressWatch::new(options.min_progress);
    let mut cancel = cancel.clone();
    while let Some(chunk) = watch.next_chunk(&mut stream, &mut cancel, remote).await? {
        bar.inc(chunk.len() as u64);
        out.write_all(&chunk).await.map_err(|e| {
            ClientError::Local(format!(
                "writing the output: {}",
                crate::error::os_error(&e)
            ))
        })?;
    }
    out.flush().await.map_err(|e| {
        ClientError::Local(format!(
            "writing the output: {}",
            crate::error::os_error(&e)
        ))
    })?;
    bar.finish();
    let digest = stream.digest().ok_or_else(|| {
        ClientError::Integrity(format!("{remote}: the transfer ended without its digest"))
    })?;
    Ok(Downloaded {
        remote: remote.to_string(),
        dest: PathBuf::from("-"),
        size,
        fetched: stream.received(),
        resumed_from: 0,
        digest,
        elapsed: started.elapsed(),
        skipped: false,
    })
}

/// Tracks the minimum-progress rule over one fetch: the window restarts whenever it has
/// seen `min.bytes`.
struct ProgressWatch {
    min: MinProgress,
    since: tokio::time::Instant,
    bytes: u64,
}

impl ProgressWatch {
    fn new(min: MinProgress) -> Self {
        Self {
            min,
            since: tokio::time::Instant::now(),
            bytes: 0,
        }
    }

    fn add(&mut self, n: u64) {
        self.bytes += n;
        if self.bytes >= self.min.bytes {
            self.since = tokio::time::Instant::now();
            self.bytes = 0;
        }
    }

    /// The next chunk of `stream` (`None` at its end), unless the user cancels first or the
    /// window runs out short of the minimum.
    async fn next_chunk(
        &mut self,
        stream: &mut FetchStream,
        cancel: &mut Cancel,
        remote: &str,
    ) -> Result<Option<Bytes>, ClientError> {
        let chunk = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(ClientError::Interrupted),
            // Data already here counts before the deadline is looked at.
            chunk = stream.chunk() => chunk?,
            () = self.expired() => return Err(self.error(remote)),
        };
        if let Some(chunk) = &chunk {
            self.add(chunk.len() as u64);
        }
        Ok(chunk)
    }

    /// Resolves when the window ran out short of the minimum; never when the rule is off.
    async fn expired(&self) {
        if self.min.is_off() {
            return std::future::pending().await;
        }
        tokio::time::sleep_until(self.since + self.min.window).await;
    }

    fn error(&self, remote: &str) -> ClientError {
        ClientError::Timeout {
            what: format!(
                "waiting for {remote}: {} bytes arrived in {}s, less than the minimum of {} (--min-progress {})",
                self.bytes,
                self.min.window.as_secs(),
                self.min.bytes,
                self.min
            ),
            secs: self.min.window.as_secs(),
        }
    }
}

/// How long the server may take to hash a whole file for the digest service: a minute, plus
/// the file at 20 MB/s (a slow disk).
fn digest_timeout(size: u64) -> Duration {
    Duration::from_secs(60 + size / 20_000_000)
}

/// Bytes free for an unprivileged writer in the file system holding `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Takes the partial file for this download: created if missing (never truncated here), and
/// locked so no other download writes it at the same time.
fn claim_part(jail: &Jail, rel: &RelPath, part: &Path) -> Result<std::fs::File, ClientError> {
    let file = jail
        .create_file(rel, Create::Keep)
        .map_err(|e| local_error(part, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ClientError::Local(format!(
            "{} is being written by another download; wait for it to finish",
            part.display()
        ))),
        Err(e) => Err(ClientError::io(part, e.into())),
    }
}

/// The error for a write that failed: a full disk says what was kept and what to do.
fn write_error(part: &Path, error: std::io::Error, written: u64, size: u64) -> ClientError {
    if error.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
        return ClientError::Local(format!(
            "no space left on the device holding {}: the partial file was kept with {written} of {size} bytes; free at least {} bytes and run the same command again to resume, or delete it",
            part.display(),
            size.saturating_sub(written),
        ));
    }
    ClientError::io(part, error)
}

#[allow(clippy::too_many_arguments)]
async fn fetch_to(
    client: &Client,
    remote: &str,
    entry: &Entry,
    target: Target<'_>,
    options: &GetOptions,
    progress: &dyn TransferProgress,
    label: &str,
    cancel: &Cancel,
) -> Result<Downloaded, ClientError> {
    let started = Instant::now();
    let Target { jail, rel, dest } = target;
    let part = part_path(dest);
    let meta_file = meta_path(dest);
    let part_rel = sibling_rel(rel, PART_SUFFIX, dest)?;
    let meta_rel = sibling_rel(rel, META_SUFFIX, dest)?;
    let wanted = PartMeta::for_entry(remote, entry.size, entry.mtime_secs, entry.mtime_nanos);

    // The caller created the directory (the jail's root, or one made beneath it).
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let had_part = jail.symlink_metadata(&part_rel).is_ok();
    let claimed = claim_part(jail, &part_rel, &part)?;

    let mut offset = 0;
    let mut hasher = FetchDigest::new();
    // The server's digest of the whole file, which a resumed download must match.
    let mut whole_digest = None;
    if options.resume && had_part {
        match resume_point(&part, &meta_file, &wanted, options.force).await? {
            Some((len, prefix)) if len > 0 => {
                match cancel
                    .guard(when_not_busy(|| {
                        client.digest(remote, digest_timeout(entry.size))
                    }))
                    .await
                {
                    Ok(d) => {
                        if (d.size, d.mtime_secs, d.mtime_nanos)
                            != (wanted.size, wanted.mtime_secs, wanted.mtime_nanos)
                        {
                            return Err(ClientError::Integrity(format!(
                                "{remote} changed on the server since the partial download was started; delete {} or pass --force to start over",
                                part.display()
                            )));
                        }
                        offset = len;
                        hasher = prefix;
                        whole_digest = Some(d.digest);
                        info!(file = %dest.display(), offset, "resuming");
                    }
                    Err(e) if e.remote_code() == Some(ErrorCode::UNKNOWN_REQUEST) => {
                        progress.println(&format!(
                            "ferry: {}: the server cannot state the whole file's digest (an older server), so the download starts over instead of resuming at byte {len}",
                            printable(label)
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => debug!(file = %dest.display(), "partial file not resumable; starting over"),
        }
    }

    // A server cannot fill the disk by stating a huge size: say what is needed up front.
    let needed = entry.size - offset;
    if let Some(free) = free_space(parent) {
        if free < needed {
            if !had_part {
                let _ = jail.remove_file(&part_rel);
            }
            return Err(ClientError::Local(format!(
                "{remote} needs {needed} more bytes ({}) but only {free} ({}) are free in {}",
                ferry_common::text::human_bytes(needed),
                ferry_common::text::human_bytes(free),
                parent.display()
            )));
        }
    }

    let mut file = claimed.try_clone().map_err(|e| ClientError::io(&part, e))?;
    {
        use std::io::Seek;
        // Anything past the verified prefix is cut before appending; a fresh start empties it.
        file.set_len(offset)
            .map_err(|e| ClientError::io(&part, e))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| ClientError::io(&part, e))?;
    }
    write_meta(jail, &meta_rel, &meta_file, &wanted)?;
    let mut writer = PartWriter::new(file);

    let bar = progress.file(label, entry.size, offset);
    let mut written = offset;
    // A fresh download's whole-file hash is the stream's own running hash (checked against the
    // server's at the end); only a resume needs a second hash that starts with the part.
    let mut whole: Option<FetchDigest> = (offset > 0).then_some(hasher);
    let mut fetch: Option<FetchStream> = None;
    let result = async {
        let stream = fetch.insert(
            cancel
                .guard(when_not_busy(|| client.fetch(remote, offset, TO_END)))
                .await?,
        );
        let response = *stream.response();
        if response.size != wanted.size
            || response.mtime_secs != wanted.mtime_secs
            || response.mtime_nanos != wanted.mtime_nanos
        {
            return Err(ClientError::Integrity(format!(
                "{remote} changed on the server while the download started"
            )));
        }
        let mut cancel = cancel.clone();
        let mut watch = ProgressWatch::new(options.min_progress);
        while let Some(chunk) = watch.next_chunk(stream, &mut cancel, remote).await? {
            // The stream refuses data past the length it announced, and that was checked
            // against the stated size; this keeps the disk bound local and obvious.
            if written + chunk.len() as u64 > entry.size {
                return Err(ClientError::Integrity(format!(
                    "{remote}: the server sent more than the {} bytes it stated",
                    entry.size
                )));
            }
            if let Some(whole) = whole.as_mut() {
                whole.update(&chunk);
            }
            let len = chunk.len() as u64;
            writer
                .write(chunk)
                .await
                .map_err(|e| write_error(&part, e, written, entry.size))?;
            written += len;
            bar.inc(len);
        }
        Ok(())
    }
    .await;

    // The hash of exactly the bytes in the part, if known: the resume hash, or the stream's
    // when every chunk it hashed was also written.
    let part_hash = match (&whole, &fetch) {
        (Some(whole), _) => Some(whole.clone()),
        (None, Some(stream)) if stream.received() == written - offset => Some(stream.hasher()),
        (None, _) => None,
    };
    // Flush what arrived whatever happened, so the part on disk matches `written`.
    let flushed = writer.finish().await;
    match result {
        Ok(()) => {
            flushed.map_err(|e| write_error(&part, e, written, entry.size))?;
            let verified = fetch.as_ref().and_then(FetchStream::digest);
            let digest = match (whole, verified) {
                (Some(whole), Some(_)) => Some(whole.finalize()),
                (None, verified) => verified,
                (Some(_), None) => None,
            };
            let Some(digest) = digest.filter(|_| written == entry.size) else {
                keep_partial(jail, &meta_rel, &meta_file, &wanted, written, part_hash);
                return Err(ClientError::Integrity(format!(
                    "{remote}: have {written} bytes, expected {}",
                    entry.size
                )));
            };
            if let Some(expected) = whole_digest.filter(|d| *d != digest) {
                // The range matched its own digest but the file does not: the server sent
                // other bytes than the file's at the resume point. The part can never become
                // right, so it goes.
                let _ = jail.remove_file(&part_rel);
                let _ = jail.remove_file(&meta_rel);
                return Err(ClientError::Integrity(format!(
                    "{remote}: the resumed file hashes to {}, but the server's digest of the whole file is {}; the partial file was removed, run the command again to download it from the start",
                    &hex::encode(digest)[..16],
                    &hex::encode(expected)[..16]
                )));
            }
            set_mtime(&claimed, entry);
            set_mode(&claimed, entry);
            jail.rename(&part_rel, rel)
                .map_err(|e| local_error(dest, e))?;
            drop(claimed);
            let _ = jail.remove_file(&meta_rel);
            bar.finish();
            Ok(Downloaded {
                remote: remote.to_string(),
                dest: dest.to_path_buf(),
                size: entry.size,
                fetched: written - offset,
                resumed_from: offset,
                digest,
                elapsed: started.elapsed(),
                skipped: false,
            })
        }
        Err(e) => {
            bar.abandon();
            if flushed.is_ok() && !matches!(e, ClientError::Integrity(_)) {
                keep_partial(jail, &meta_rel, &meta_file, &wanted, written, part_hash);
            }
            Err(e)
        }
    }
}

/// Writes a download's chunks to its part file on a blocking thread, in batches: through
/// `tokio::fs::File`, every 64 KiB chunk was copied and cost its own trip to the blocking pool,
/// which held `ferry get` to about 0.7x of curl's speed. One batch is written while the next
/// fills; chunks are moved, not copied. A chunk goes out at once when no write is in flight,
/// so a slow download reaches the disk as it arrives; while one is, chunks gather (up to
/// `BATCH` bytes), so a fast download is written in large batches.
#[derive(Debug)]
struct PartWriter {
    /// The file, while no batch is being written.
    idle: Option<std::fs::File>,
    writing: Option<tokio::task::JoinHandle<(std::fs::File, std::io::Result<()>)>>,
    batch: Vec<Bytes>,
    batch_len: usize,
}

impl PartWriter {
    /// Bytes gathered before a batch goes to the blocking pool.
    const BATCH: usize = 4 << 20;

    fn new(file: std::fs::File) -> Self {
        Self {
            idle: Some(file),
            writing: None,
            batch: Vec::new(),
            batch_len: 0,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        let writer_free =
            self.idle.is_some() || self.writing.as_ref().is_some_and(|w| w.is_finished());
        if writer_free || self.batch_len >= Self::BATCH {
            self.submit().await?;
        }
        Ok(())
    }

    /// Starts writing the gathered batch once the previous one is done.
    async fn submit(&mut self) -> std::io::Result<()> {
        let mut file = match self.idle.take() {
            Some(file) => file,
            None => self.wait().await?,
        };
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let result = batch.iter().try_for_each(|chunk| file.write_all(chunk));
            (file, result)
        }));
        Ok(())
    }

    async fn wait(&mut self) -> std::io::Result<std::fs::File> {
        let handle = self
            .writing
            .take()
            .ok_or_else(|| std::io::Error::other("part writer lost its file"))?;
        let (file, result) = handle.await.map_err(std::io::Error::other)?;
        result.map(|()| file)
    }

    /// Writes everything gathered and syncs the data, so the part holds every byte handed in.
    async fn finish(mut self) -> std::io::Result<()> {
        if !self.batch.is_empty() {
            self.submit().await?;
        }
        let file = match self.idle.take() {
            Some(file) => file,
            None => self.wait().await?,
        };
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Decides whether `part` can be continued. Returns its length and the hash state after it,
/// `None` to start over, or an error when the remote file changed and `force` is not set.
async fn resume_point(
    part: &Path,
    meta_file: &Path,
    wanted: &PartMeta,
    force: bool,
) -> Result<Option<(u64, FetchDigest)>, ClientError> {
    let Some(meta) = tokio::fs::read_to_string(meta_file)
        .await
        .ok()
        .and_then(|t| PartMeta::parse(&t))
    else {
        warn!(
            "{} has no readable {}; starting over",
            part.display(),
            meta_file.display()
        );
        return Ok(None);
    };
    if !meta.same_file(wanted) {
        if force {
            return Ok(None);
        }
        return Err(ClientError::Integrity(format!(
            "{} changed on the server since {} was started (size {} -> {}, mtime {} -> {}); delete the partial file or pass --force to start over",
            wanted.path,
            part.display(),
            meta.size,
            wanted.size,
            meta.mtime_secs,
            wanted.mtime_secs
        )));
    }
    let len = tokio::fs::metadata(part)
        .await
        .map_err(|e| ClientError::io(part, e))?
        .len();
    if len > wanted.size {
        return Ok(None);
    }
    // Hash the part; when a checkpoint was written, the bytes it covers must be unchanged.
    let mut file = tokio::fs::File::open(part)
        .await
        .map_err(|e| ClientError::io(part, e))?;
    let mut hasher = FetchDigest::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| ClientError::io(part, e))?;
        if n == 0 {
            break;
        }
        if let Some((cp_len, cp_sha)) = meta.checkpoint {
            if done < cp_len && done + n as u64 >= cp_len {
                let mut at_cp = hasher.clone();
                at_cp.update(&buf[..(cp_len - done) as usize]);
                let sha = at_cp.finalize();
                if sha != cp_sha {
                    if force {
                        return Ok(None);
                    }
                    return Err(ClientError::Integrity(format!(
                        "{} was modified since it was written; delete it or pass --force to start over",
                        part.display()
                    )));
                }
            }
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    if let Some((cp_len, _)) = meta.checkpoint {
        if done < cp_len {
            if force {
                return Ok(None);
            }
            return Err(ClientError::Integrity(format!(
                "{} is shorter than when it was written; delete it or pass --force to start over",
                part.display()
            )));
        }
    }
    Ok(Some((done, hasher)))
}

/// Writes the partial file's record: a few lines, in place, as `tokio::fs::write` did.
fn write_meta(jail: &Jail, rel: &RelPath, path: &Path, meta: &PartMeta) -> Result<(), ClientError> {
    use std::io::Write;
    jail.create_file(rel, Create::Truncate)
        .map_err(|e| local_error(path, e))?
        .write_all(meta.to_text().as_bytes())
        .map_err(|e| ClientError::io(path, e))
}

/// Records the checkpoint of an interrupted download; best effort (resume works without it).
/// Without a hash the record written at the start stays as it is.
fn keep_partial(
    jail: &Jail,
    meta_rel: &RelPath,
    meta_file: &Path,
    wanted: &PartMeta,
    written: u64,
    hash: Option<FetchDigest>,
) {
    let Some(hash) = hash else { return };
    let mut meta = wanted.clone();
    meta.checkpoint = Some((written, hash.finalize()));
    if let Err(e) = write_meta(jail, meta_rel, meta_file, &meta) {
        warn!(error = %e, "could not record the partial download");
    }
}

fn set_mtime(file: &std::fs::File, entry: &Entry) {
    let time = if entry.mtime_secs >= 0 {
        UNIX_EPOCH + Duration::new(entry.mtime_secs as u64, entry.mtime_nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(entry.mtime_secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    };
    let result = file.set_modified(time);
    if let Err(e) = result {
        debug!(error = %e, "could not set the modification time");
    }
}

/// Keeps the executable bits of the remote mode where the local file is readable (as `cp`
/// does); nothing else of the remote mode (no set-id or sticky bits) is applied.
fn set_mode(file: &std::fs::File, entry: &Entry) {
    use std::os::unix::fs::PermissionsExt;
    if entry.mode & 0o111 == 0 {
        return;
    }
    let result = file.metadata().and_then(|meta| {
        let mode = meta.permissions().mode() & 0o777;
        let mode = mode | ((mode & 0o444) >> 2);
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    });
    if let Err(e) = result {
        debug!(error = %e, "could not set the mode");
    }
}

fn same_as_local(entry: &Entry, dest: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(dest) else {
        return false;
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    meta.is_file()
        && meta.len() == entry.size
        && mtime.is_some_and(|m| {
            m.as_secs() as i64 == entry.mtime_secs && m.subsec_nanos() == entry.mtime_nanos
        })
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

/// Where one download lands: `rel` beneath `jail`, shown to the user as `dest`.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    jail: &'a Jail,
    rel: &'a RelPath,
    dest: &'a Path,
}

/// `.NAME{suffix}` beside `rel`, as [`part_path`] and [`meta_path`] name it.
fn sibling_rel(rel: &RelPath, suffix: &str, dest: &Path) -> Result<RelPath, ClientError> {
    rel.with_file_name(&format!(".{}{suffix}", rel.file_name()))
        .map_err(|e| ClientError::Local(format!("{}: {e}", dest.display())))
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

/// Directories waiting to be listed during a tree download, at most; past it the rest of the
/// tree fails with a clear error instead of growing memory without bound.
pub const MAX_FRONTIER: usize = 100_000;
/// Failures remembered in a [`TreeReport`]; later ones are counted in its last entry.
pub const MAX_REPORTED_FAILURES: usize = 1000;

/// Downloads the tree under `remote` into `dest`, `options.jobs` files at a time. Files that
/// already exist with the remote size and mtime are skipped (so re-running an interrupted tree
/// only fetches what is missing); other existing files are refused without `--force`. One
/// file's failure does not stop the others; a lost connection or Ctrl-C stops everything.
///
/// The tree is walked one directory at a time (a plain listing each), depth first, so memory
/// holds one directory's listing (at most [`crate::client::MAX_COLLECTED_ENTRIES`]) and the
/// directories still to visit (at most [`MAX_FRONTIER`]), whatever the server sends.
pub async fn download_tree(
    client: &Client,
    remote: &str,
    dest: &Path,
    options: &GetOptions,
    progress: &dyn TransferProgress,
    cancel: &Cancel,
) -> Result<TreeReport, ClientError> {
    let started = Instant::now();
    let root = cancel.guard(when_not_busy(|| client.stat(remote))).await?;
    if root.kind != EntryKind::DIRECTORY {
        return Err(ClientError::Local(format!(
            "{remote} is not a directory; use get without -r"
        )));
    }
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|e| ClientError::io(dest, e))?;
    // Every file and directory of the tree is written beneath this root.
    let jail = &Jail::open(dest).map_err(|e| ClientError::io(dest, e))?;
    let mut report = TreeReport::default();
    let failed = |report: &mut TreeReport, path: &str, e: ClientError| {
        if report.failed.len() < MAX_REPORTED_FAILURES {
            report.failed.push((printable(path), e));
        }
    };
    let join = |dir: &str, name: &str| {
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    };
    let mut frontier: Vec<(String, RelPath)> = vec![(remote.to_string(), RelPath::root())];
    while let Some((dir, local_dir)) = frontier.pop() {
        if cancel.is_cancelled() {
            return Err(ClientError::Interrupted);
        }
        let mut entries = match cancel
            // Links marked, so a directory link is not walked (spec §3.4: the server's own
            // recursive listings do not descend through them either).
            .guard(when_not_busy(|| client.list_with(&dir, false, 0, true)))
            .await
        {
            Ok(entries) => entries,
            Err(e) if e.is_connection_error() || matches!(e, ClientError::Interrupted) => {
                return Err(e)
            }
            Err(e) => {
                failed(&mut report, &dir, e);
                continue;
            }
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut files = Vec::new();
        let mut seen = HashSet::new();
        let mut subdirs = Vec::new();
        for entry in entries {
            // A plain listing names one component; anything else is refused like `..`.
            let Some(rel) = safe_relative(&entry.name)
                .filter(|_| !entry.name.contains('/'))
                .and_then(|_| local_dir.join(&entry.name).ok())
            else {
                warn!(name = %printable(&entry.name), "skipping an entry with an unsafe name");
                continue;
            };
            if !seen.insert(entry.name.clone()) {
                continue;
            }
            let local = rel.under(dest);
            let remote_path = join(&dir, &entry.name);
            match entry.kind {
                EntryKind::DIRECTORY if entry.link.is_some() => {
                    // A loop (`a -> .`) or a second copy of a subtree: name it and go on.
                    warn!(
                        "skipping {}: a link to a directory (get -r does not follow them; get it by its own path)",
                        printable(&remote_path)
                    );
                }
                EntryKind::DIRECTORY => {
                    if let Err(e) = jail.create_dir_all(&rel) {
                        failed(&mut report, &remote_path, local_error(&local, e));
                        continue;
                    }
                    subdirs.push((remote_path, rel));
                }
                EntryKind::FILE => files.push((entry, remote_path, rel, local)),
                _ => debug!(name = %printable(&entry.name), "skipping a non-regular file"),
            }
        }
        if frontier.len() + subdirs.len() > MAX_FRONTIER {
            return Err(ClientError::Local(format!(
                "the tree under {remote} has more than {MAX_FRONTIER} directories waiting to be listed; download it in parts"
            )));
        }
        // Popped from the end: the first name is visited first.
        frontier.extend(subdirs.into_iter().rev());

        let jobs = options.jobs.max(1);
        let mut results = futures::stream::iter(files.into_iter().map(
            |(entry, remote_path, rel, local)| async move {
                if cancel.is_cancelled() {
                    return (remote_path, Err(ClientError::Interrupted));
                }
                if same_as_local(&entry, &local) {
                    let skipped = Downloaded {
                        remote: remote_path.clone(),
                        dest: local,
                        size: entry.size,
                        fetched: 0,
                        resumed_from: entry.size,
                        digest: [0; 32],
                        elapsed: Duration::ZERO,
                        skipped: true,
                    };
                    return (remote_path, Ok(skipped));
                }
                if local.exists() && !options.force {
                    let err = ClientError::Local(format!(
                        "{} already exists; use -f (--force) to overwrite it",
                        local.display()
                    ));
                    return (remote_path, Err(err));
                }
                let result = fetch_to(
                    client,
                    &remote_path,
                    &entry,
                    Target {
                        jail,
                        rel: &rel,
                        dest: &local,
                    },
                    options,
                    progress,
                    &entry.name,
                    cancel,
                )
                .await;
                (remote_path, result)
            },
        ))
        .buffer_unordered(jobs);
        while let Some((remote_path, result)) = results.next().await {
            match result {
                Ok(done) => {
                    report.bytes += done.fetched;
                    report.files.push(done);
                }
                Err(e) if e.is_connection_error() || matches!(e, ClientError::Interrupted) => {
                    return Err(e)
                }
                Err(e) => failed(&mut report, &remote_path, e),
            }
        }
    }
    report.files.sort_by(|a, b| a.remote.cmp(&b.remote));
    report.elapsed = started.elapsed();
    Ok(report)
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
    fn meta_round_trips() {
        let mut meta = PartMeta::for_entry("a b/c.iso", 123, -5, 999_999_999);
        assert_eq!(PartMeta::parse(&meta.to_text()), Some(meta.clone()));
        meta.checkpoint = Some((42, [7; 32]));
        assert_eq!(PartMeta::parse(&meta.to_text()), Some(meta));
        assert_eq!(PartMeta::parse("ferry-part 1\npath x\n"), None);
        assert_eq!(PartMeta::parse("garbage"), None);
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

    #[tokio::test]
    async fn resume_point_checks_remote_and_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("f.part");
        let meta_file = dir.path().join("f.part.meta");
        std::fs::write(&part, b"hello").unwrap();
        let wanted = PartMeta::for_entry("f", 10, 1, 2);
        let mut meta = wanted.clone();
        meta.checkpoint = Some((5, ferry_protocol::digest::fetch_digest(b"hello")));
        std::fs::write(&meta_file, meta.to_text()).unwrap();

        let (len, hasher) = resume_point(&part, &meta_file, &wanted, false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(len, 5);
        assert_eq!(
            hasher.finalize(),
            ferry_protocol::digest::fetch_digest(b"hello")
        );

        // The remote changed: an integrity error, or a fresh start with --force.
        let changed = PartMeta::for_entry("f", 11, 1, 2);
        let err = resume_point(&part, &meta_file, &changed, false)
            .await
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), crate::error::exit::INTEGRITY);
        assert!(resume_point(&part, &meta_file, &changed, true)
            .await
            .unwrap()
            .is_none());

        // The part was tampered with.
        std::fs::write(&part, b"HELLO").unwrap();
        let err = resume_point(&part, &meta_file, &wanted, false)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Integrity(_)), "{err}");
    }
}
