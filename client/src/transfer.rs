//! Downloads to disk: `.part` files, resume, and whole trees with a bounded number of files in
//! flight.
//!
//! A file `NAME` is written to `NAME.part` and renamed to `NAME` only after the server's
//! end-of-fetch hash matched what arrived. Beside the partial file, `NAME.part.meta` records what
//! it is a part of, as small `key value` text lines:
//!
//! ```text
//! ferry-part 1
//! path docs/big.iso            remote path
//! size 734003200               remote size when the download started
//! mtime 1700000000.000000005   remote mtime (seconds.nanoseconds)
//! checkpoint 1048576 <blake3>  optional: length and digest of the part when it was last closed
//! ```
//!
//! A resume (the default when both files exist) first checks that the remote size and mtime are
//! unchanged (if not, it fails with an integrity error rather than splice two versions of the
//! file), then re-hashes the part (and compares it with the checkpoint when one was written) and
//! continues with a range request. The final digest (BLAKE3, as the protocol uses) therefore
//! covers the whole file: the old
//! part first, then the new bytes; the new bytes are also checked against the server's hash of
//! the range. Interrupted transfers (Ctrl-C, lost connection) keep the part and write the
//! checkpoint.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{Entry, EntryKind, TO_END};
use ferry_protocol::ErrorCode;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::client::{Client, FetchStream};
use crate::error::ClientError;
use crate::progress::Progress;

/// How `get` treats existing files.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Overwrite an existing destination, and start over when a partial file cannot be resumed.
    pub force: bool,
    /// Continue from `NAME.part` when it exists (the default). `false` starts over.
    pub resume: bool,
    /// Files in flight at once for trees. Default 4.
    pub jobs: usize,
}

impl Default for GetOptions {
    fn default() -> Self {
        Self {
            force: false,
            resume: true,
            jobs: 4,
        }
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
            Err(e) if e.remote_code() == Some(ErrorCode::BUSY) => {
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

/// `NAME.part` for `NAME`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// `NAME.part.meta` for `NAME`.
pub fn meta_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part.meta");
    PathBuf::from(name)
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
    Ok(match dest {
        Some(d) if dir_like(d) => d.join(name),
        Some(d) => d.to_path_buf(),
        None => PathBuf::from(name),
    })
}

/// Downloads one file. `bar` (from [`Progress::file`]) is created once the size is known.
pub async fn download_file(
    client: &Client,
    remote: &str,
    dest: &Path,
    options: &GetOptions,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<Downloaded, ClientError> {
    let started = Instant::now();
    if dest.exists() && !options.force {
        return Err(ClientError::Local(format!(
            "{} already exists; use -f (--force) to overwrite it",
            dest.display()
        )));
    }
    let entry = cancel.guard(when_not_busy(|| client.stat(remote))).await?;
    if entry.kind == EntryKind::DIRECTORY {
        return Err(ClientError::Local(format!(
            "{remote} is a directory; use get -r"
        )));
    }
    let label = remote_name(remote).unwrap_or(remote);
    fetch_to(
        client, remote, &entry, dest, options, progress, label, cancel,
    )
    .await
    .map(|mut d| {
        d.elapsed = started.elapsed();
        d
    })
}

#[allow(clippy::too_many_arguments)]
async fn fetch_to(
    client: &Client,
    remote: &str,
    entry: &Entry,
    dest: &Path,
    options: &GetOptions,
    progress: &Progress,
    label: &str,
    cancel: &Cancel,
) -> Result<Downloaded, ClientError> {
    let started = Instant::now();
    let part = part_path(dest);
    let meta_file = meta_path(dest);
    let wanted = PartMeta::for_entry(remote, entry.size, entry.mtime_secs, entry.mtime_nanos);

    let mut offset = 0;
    let mut hasher = FetchDigest::new();
    if options.resume && part.exists() {
        match resume_point(&part, &meta_file, &wanted, options.force).await? {
            Some((len, prefix)) => {
                offset = len;
                hasher = prefix;
                info!(file = %dest.display(), offset, "resuming");
            }
            None => debug!(file = %dest.display(), "partial file not resumable; starting over"),
        }
    }

    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| ClientError::io(parent, e))?;
    }
    let mut file = if offset > 0 {
        tokio::fs::OpenOptions::new()
            .write(true)
            .open(&part)
            .await
            .map_err(|e| ClientError::io(&part, e))?
    } else {
        tokio::fs::File::create(&part)
            .await
            .map_err(|e| ClientError::io(&part, e))?
    };
    if offset > 0 {
        // Anything past the verified prefix (there is none today, but a crash could leave it)
        // is cut before appending.
        file.set_len(offset)
            .await
            .map_err(|e| ClientError::io(&part, e))?;
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| ClientError::io(&part, e))?;
    }
    write_meta(&meta_file, &wanted).await?;
    let mut writer = PartWriter::new(file.into_std().await);

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
        loop {
            let chunk = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(ClientError::Interrupted),
                chunk = stream.chunk() => chunk?,
            };
            let Some(chunk) = chunk else { break };
            if let Some(whole) = whole.as_mut() {
                whole.update(&chunk);
            }
            written += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
            writer
                .write(chunk)
                .await
                .map_err(|e| ClientError::io(&part, e))?;
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
            flushed.map_err(|e| ClientError::io(&part, e))?;
            let verified = fetch.as_ref().and_then(FetchStream::digest);
            let digest = match (whole, verified) {
                (Some(whole), Some(_)) => Some(whole.finalize()),
                (None, verified) => verified,
                (Some(_), None) => None,
            };
            let Some(digest) = digest.filter(|_| written == entry.size) else {
                keep_partial(&meta_file, &wanted, written, part_hash).await;
                return Err(ClientError::Integrity(format!(
                    "{remote}: have {written} bytes, expected {}",
                    entry.size
                )));
            };
            set_mtime(&part, entry);
            tokio::fs::rename(&part, dest)
                .await
                .map_err(|e| ClientError::io(dest, e))?;
            let _ = tokio::fs::remove_file(&meta_file).await;
            bar.finish_and_clear();
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
                keep_partial(&meta_file, &wanted, written, part_hash).await;
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

async fn write_meta(path: &Path, meta: &PartMeta) -> Result<(), ClientError> {
    tokio::fs::write(path, meta.to_text())
        .await
        .map_err(|e| ClientError::io(path, e))
}

/// Records the checkpoint of an interrupted download; best effort (resume works without it).
/// Without a hash the record written at the start stays as it is.
async fn keep_partial(
    meta_file: &Path,
    wanted: &PartMeta,
    written: u64,
    hash: Option<FetchDigest>,
) {
    let Some(hash) = hash else { return };
    let mut meta = wanted.clone();
    meta.checkpoint = Some((written, hash.finalize()));
    if let Err(e) = write_meta(meta_file, &meta).await {
        warn!(error = %e, "could not record the partial download");
    }
}

fn set_mtime(path: &Path, entry: &Entry) {
    let time = if entry.mtime_secs >= 0 {
        UNIX_EPOCH + Duration::new(entry.mtime_secs as u64, entry.mtime_nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(entry.mtime_secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    };
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(time));
    if let Err(e) = result {
        debug!(error = %e, "could not set the modification time");
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
pub fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if name.is_empty() || name.contains('\0') || name.contains('\\') {
        return None;
    }
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| path.to_path_buf())
}

/// Downloads the tree under `remote` into `dest`, `options.jobs` files at a time. Files that
/// already exist with the remote size and mtime are skipped (so re-running an interrupted tree
/// only fetches what is missing); other existing files are refused without `--force`. One
/// file's failure does not stop the others; a lost connection or Ctrl-C stops everything.
pub async fn download_tree(
    client: &Client,
    remote: &str,
    dest: &Path,
    options: &GetOptions,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<TreeReport, ClientError> {
    let started = Instant::now();
    let root = cancel.guard(when_not_busy(|| client.stat(remote))).await?;
    if root.kind != EntryKind::DIRECTORY {
        return Err(ClientError::Local(format!(
            "{remote} is not a directory; use get without -r"
        )));
    }
    let entries = cancel
        .guard(when_not_busy(|| client.list(remote, true, u16::MAX)))
        .await?;
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|e| ClientError::io(dest, e))?;
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for entry in entries {
        let Some(rel) = safe_relative(&entry.name) else {
            warn!(name = %entry.name, "skipping an entry with an unsafe name");
            continue;
        };
        if !seen.insert(entry.name.clone()) {
            continue;
        }
        let local = dest.join(&rel);
        match entry.kind {
            EntryKind::DIRECTORY => {
                tokio::fs::create_dir_all(&local)
                    .await
                    .map_err(|e| ClientError::io(&local, e))?;
            }
            EntryKind::FILE => files.push((entry, local)),
            _ => debug!(name = %entry.name, "skipping a non-regular file"),
        }
    }
    files.sort_by(|a, b| a.0.name.cmp(&b.0.name));

    let jobs = options.jobs.max(1);
    let results = futures::stream::iter(files.into_iter().map(|(entry, local)| {
        let remote_path = if remote.is_empty() {
            entry.name.clone()
        } else {
            format!("{remote}/{}", entry.name)
        };
        async move {
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
                &local,
                options,
                progress,
                &entry.name,
                cancel,
            )
            .await;
            (remote_path, result)
        }
    }))
    .buffer_unordered(jobs)
    .collect::<Vec<_>>()
    .await;

    let mut report = TreeReport::default();
    for (remote_path, result) in results {
        match result {
            Ok(done) => {
                report.bytes += done.fetched;
                report.files.push(done);
            }
            Err(e) if e.is_connection_error() || matches!(e, ClientError::Interrupted) => {
                return Err(e)
            }
            Err(e) => report.failed.push((remote_path, e)),
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
            PathBuf::from("x/a.txt.part")
        );
        assert_eq!(
            meta_path(Path::new("a.txt")),
            PathBuf::from("a.txt.part.meta")
        );
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
