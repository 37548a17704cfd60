//! One file onto disk: through its partial file (resumed when it checks out), watched by the
//! minimum-progress rule, checked against the server's digest, then renamed into place with
//! the remote mtime and executable bits.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use ferry_jail::{Jail, RelPath};
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{DigestResponse, Entry, TO_END};
use tracing::debug;

use super::conn::Conn;
use super::part::{
    claim_part, keep_partial, meta_path, part_path, sibling_rel, write_error, write_meta, PartMeta,
    PartWriter, META_SUFFIX, PART_SUFFIX,
};
use super::resume::Start;
use super::{local_error, when_not_busy, Cancel, Downloaded, GetOptions, MinProgress};
use crate::client::{Client, FetchStream};
use crate::error::ClientError;
use crate::progress::{FileProgress, TransferProgress};

/// Where one download lands: `rel` beneath `jail`, shown to the user as `dest`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) jail: &'a Jail,
    pub(super) rel: &'a RelPath,
    pub(super) dest: &'a Path,
}

/// What the downloads of one command share: the connection, the options, where progress goes,
/// the token that stops them, and the whole-file digests already asked for.
#[derive(Clone, Copy)]
pub(super) struct Fetcher<'a> {
    pub(super) conn: &'a Conn,
    pub(super) options: &'a GetOptions,
    pub(super) progress: &'a dyn TransferProgress,
    pub(super) cancel: &'a Cancel,
    pub(super) digests: &'a Digests,
}

/// Whole-file digests (spec §3.11) by remote path, asked for once per download: a resume on a
/// new connection does not ask again (a server retiring connections fast may answer one
/// request on each).
pub(super) type Digests = std::sync::Mutex<std::collections::HashMap<String, DigestResponse>>;

impl Fetcher<'_> {
    /// Downloads `remote` (described by `entry`) to `target` through its partial file, resuming
    /// it when it checks out; `label` names the file on its progress bar. When the connection
    /// is retired on the way (spec §5.5), the download goes on over a new one from the bytes
    /// in the partial file (the same resume as a second run of the command), and the whole
    /// file is still checked against the server's digest.
    pub(super) async fn fetch_to(
        &self,
        remote: &str,
        entry: &Entry,
        target: Target<'_>,
        label: &str,
    ) -> Result<Downloaded, ClientError> {
        let started = Instant::now();
        let mut options = self.options.clone();
        let mut first_offset = None;
        let result = loop {
            let client = self.conn.current().await;
            let leg = self
                .fetch_leg(
                    &client,
                    &options,
                    remote,
                    entry,
                    target,
                    label,
                    &mut first_offset,
                )
                .await;
            match leg {
                Err(e) if e.is_retired() => {
                    if let Err(e) = self.conn.renew(&client, e).await {
                        break Err(e);
                    }
                }
                other => break other,
            }
            // The part holds what this download fetched: it continues, whatever --no-resume
            // said about a part found at the start.
            options.resume = true;
        };
        if let Ok(mut map) = self.digests.lock() {
            map.remove(remote);
        }
        result.map(|mut done| {
            let from = first_offset.unwrap_or(done.resumed_from);
            done.resumed_from = from;
            done.fetched = done.size - from;
            done.elapsed = started.elapsed();
            done
        })
    }

    /// One leg of [`Fetcher::fetch_to`], on `client`: from the partial file's end (when it
    /// checks out) to the end of the file, or until the connection is retired. The first leg
    /// notes where it started in `first_offset`.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_leg(
        &self,
        client: &Client,
        options: &GetOptions,
        remote: &str,
        entry: &Entry,
        target: Target<'_>,
        label: &str,
        first_offset: &mut Option<u64>,
    ) -> Result<Downloaded, ClientError> {
        let started = Instant::now();
        let Fetcher {
            progress, cancel, ..
        } = *self;
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

        let Start {
            offset,
            hasher,
            whole_digest,
        } = if options.resume && had_part {
            self.resume_from(client, remote, &wanted, dest, label)
                .await?
        } else {
            Start::fresh()
        };
        first_offset.get_or_insert(offset);

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
        let bar = progress.file(label, entry.size, offset);
        // A fresh download's whole-file hash is the stream's own running hash (checked against the
        // server's at the end); only a resume needs a second hash that starts with the part.
        let mut sink = Some(Sink {
            writer: PartWriter::new(file),
            whole: (offset > 0).then_some(hasher),
            bar,
            written: offset,
        });
        let mut fetch: Option<FetchStream> = None;
        let result = async {
            let stream = cancel
                .guard(when_not_busy(|| client.fetch(remote, offset, TO_END)))
                .await?;
            let response = *stream.response();
            fetch = Some(stream);
            if response.size != wanted.size
                || response.mtime_secs != wanted.mtime_secs
                || response.mtime_nanos != wanted.mtime_nanos
            {
                return Err(ClientError::Integrity(format!(
                    "{remote} changed on the server while the download started"
                )));
            }
            let (Some(stream), Some(taken)) = (fetch.take(), sink.take()) else {
                return Err(ClientError::Local("the download lost its stream".into()));
            };
            let pump = Pump {
                stream,
                sink: taken,
                remote: remote.to_string(),
                size: entry.size,
                part: part.clone(),
            };
            let mut task =
                AbortOnDrop(tokio::spawn(pump.run(cancel.clone(), options.min_progress)));
            match (&mut task.0).await {
                Ok((pump, result)) => {
                    fetch = Some(pump.stream);
                    sink = Some(pump.sink);
                    result
                }
                Err(e) => Err(ClientError::Local(format!("the download task failed: {e}"))),
            }
        }
        .await;
        let Some(Sink {
            writer,
            whole,
            bar,
            written,
        }) = sink
        else {
            // Only a panic in the data loop loses it; the part keeps what reached it.
            return result.and(Err(ClientError::Local("the download task failed".into())));
        };

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
}

/// Where a fetch's data goes: the part file's writer, the resume hash, the progress bar and
/// the count of bytes handed to the writer (the part's length once it is flushed).
struct Sink {
    writer: PartWriter,
    whole: Option<FetchDigest>,
    bar: Box<dyn FileProgress>,
    written: u64,
}

/// The data loop of one fetch, run as a task of its own that hands everything back. Awaited
/// inline under `block_on` (as the `ferry` command runs), every frame the connection's reader
/// queued had to wake the blocking thread through a futex, two system calls and two context
/// switches per 64 KiB (issue 10); on a worker the wake-up stays within the runtime.
struct Pump {
    stream: FetchStream,
    sink: Sink,
    remote: String,
    /// The size the listing stated: no more than this is written.
    size: u64,
    part: PathBuf,
}

impl Pump {
    async fn run(
        mut self,
        mut cancel: Cancel,
        min: MinProgress,
    ) -> (Self, Result<(), ClientError>) {
        let result = self.pump(&mut cancel, min).await;
        (self, result)
    }

    async fn pump(&mut self, cancel: &mut Cancel, min: MinProgress) -> Result<(), ClientError> {
        let mut watch = ProgressWatch::new(min);
        let sink = &mut self.sink;
        while let Some(chunk) = watch
            .next_chunk(&mut self.stream, cancel, &self.remote)
            .await?
        {
            // The stream refuses data past the length it announced, and that was checked
            // against the stated size; this keeps the disk bound local and obvious.
            if sink.written + chunk.len() as u64 > self.size {
                return Err(ClientError::Integrity(format!(
                    "{}: the server sent more than the {} bytes it stated",
                    self.remote, self.size
                )));
            }
            if let Some(whole) = sink.whole.as_mut() {
                whole.update(&chunk);
            }
            let len = chunk.len() as u64;
            sink.writer
                .write(chunk)
                .await
                .map_err(|e| write_error(&self.part, e, sink.written, self.size))?;
            sink.written += len;
            sink.bar.inc(len);
        }
        Ok(())
    }
}

/// A task that is aborted when the future waiting for it is dropped, as the inline loop it
/// replaces stopped when its future was.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tracks the minimum-progress rule over one fetch: the window restarts whenever it has
/// seen `min.bytes`.
pub(super) struct ProgressWatch {
    min: MinProgress,
    since: tokio::time::Instant,
    bytes: u64,
    /// Fires when the window ends. One timer for the whole fetch, moved when the window
    /// restarts: a timer per chunk took the runtime's timer lock twice per 64 KiB (issue 10).
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl ProgressWatch {
    pub(super) fn new(min: MinProgress) -> Self {
        let since = tokio::time::Instant::now();
        Self {
            min,
            since,
            bytes: 0,
            // Armed for real in `expired`; never awaited while the rule is off.
            timer: Box::pin(tokio::time::sleep_until(
                since.checked_add(min.window).unwrap_or(since),
            )),
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
    pub(super) async fn next_chunk(
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
    async fn expired(&mut self) {
        if self.min.is_off() {
            return std::future::pending().await;
        }
        let end = self.since + self.min.window;
        if self.timer.deadline() != end {
            self.timer.as_mut().reset(end);
        }
        self.timer.as_mut().await;
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

#[cfg(test)]
mod tests {
    use super::AbortOnDrop;
    use std::time::Duration;

    /// Dropping the wait for a download's data loop ends the loop too, as the inline loop it
    /// replaced ended with its future: a caller that gives up (Ctrl-C, a leg cancelled when the
    /// route changes) leaves no task writing to the part behind it.
    #[tokio::test(start_paused = true)]
    async fn dropping_the_wait_for_a_task_aborts_it() {
        let (held, released) = tokio::sync::oneshot::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let task = AbortOnDrop(tokio::spawn(async move {
            let _held_until_the_task_ends = held;
            started.send(()).unwrap();
            std::future::pending::<()>().await;
        }));
        running.await.unwrap();
        drop(task);
        // Paused time: the timeout only fires once nothing else can run, so this does not
        // depend on how fast the abort is.
        let ended = tokio::time::timeout(Duration::from_secs(60), released).await;
        assert!(
            matches!(ended, Ok(Err(_))),
            "the task outlived the wait for it"
        );
    }
}
