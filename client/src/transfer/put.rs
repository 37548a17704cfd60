//! Uploads from disk (spec §3.12): one file, or a whole tree.
//!
//! A file is hashed whole first (BLAKE3, the digest the request announces), so the server can
//! name its partial after the content and resume it with no state kept here. When the server
//! holds a partial, its first answer carries the digest of the bytes it holds; they are checked
//! against the same bytes of the local file before anything more is sent, and a partial that
//! does not match is started over (the restart flag), never trusted. The data is hashed again
//! as it is sent: a local file that changed since it was hashed is not ended (the upload is
//! cancelled; the server's partial of the old content stays for nobody), so the server is never
//! asked to store a file that does not match its digest. The server's end frame must repeat the
//! size and digest.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{put_flags, PutEnd, PutRequest};
use ferry_protocol::ErrorCode;
use futures::StreamExt;

use super::conn::Conn;
use super::{is_reserved_name, when_not_busy, Cancel};
use crate::client::{Client, Upload};
use crate::error::ClientError;
use crate::progress::TransferProgress;

/// Bytes read from the local file per blocking read.
const READ_SIZE: usize = 1 << 20;
/// Data bytes per frame.
const CHUNK: usize = 64 * 1024;

/// How `put` treats what exists on the server.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// Replace an existing remote file. Default: off (`ALREADY_EXISTS`).
    pub force: bool,
    /// Create missing remote parent directories. Default: off for one file; `put -r` sets it.
    pub parents: bool,
    /// Continue a partial upload the server holds (after checking it). Default: on.
    pub resume: bool,
    /// Files in flight at once in a tree upload (at least 1). Default: 4, like `get -r`.
    pub jobs: u16,
}

impl Default for PutOptions {
    fn default() -> Self {
        Self {
            force: false,
            parents: false,
            resume: true,
            jobs: 4,
        }
    }
}

/// What one finished upload did.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub local: PathBuf,
    pub remote: String,
    /// Size of the whole file.
    pub size: u64,
    /// Bytes sent in this run (less than `size` after a resume).
    pub sent: u64,
    /// Where this run started (0 unless resumed).
    pub resumed_from: u64,
    /// BLAKE3 of the whole file, as the server stored it.
    pub digest: [u8; 32],
    pub elapsed: Duration,
}

/// What a tree upload did.
#[derive(Debug, Default)]
pub struct PutTreeReport {
    pub files: Vec<Uploaded>,
    /// Files that failed or were skipped, with why; the others were still sent.
    pub failed: Vec<(String, ClientError)>,
    /// Directories with nothing in them, made on the server (the others come with their files).
    pub empty_dirs: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// The remote path of `name` inside the remote directory `dir` (`""` is the root).
pub fn remote_join(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Uploads the local file `local` to the remote path `remote` (a file name, not a directory).
/// When the connection is retired on the way (spec §5.5: the server's key or ours near its
/// usage limit), the upload goes on over a new connection to the same server from the partial
/// the server kept, checked against its prefix digest as any resume (spec §3.12).
pub async fn upload_file(
    client: &Client,
    local: &Path,
    remote: &str,
    options: &PutOptions,
    progress: &dyn TransferProgress,
    cancel: &Cancel,
) -> Result<Uploaded, ClientError> {
    upload_on(&Conn::new(client), local, remote, options, progress, cancel).await
}

/// [`upload_file`] on the transfer's connection of the moment, renewed when it is retired.
async fn upload_on(
    conn: &Conn,
    local: &Path,
    remote: &str,
    options: &PutOptions,
    progress: &dyn TransferProgress,
    cancel: &Cancel,
) -> Result<Uploaded, ClientError> {
    let started = Instant::now();
    let (size, mode, digest) = {
        let local = local.to_path_buf();
        tokio::task::spawn_blocking(move || hash_file(&local))
            .await
            .map_err(|e| ClientError::Local(format!("hashing task failed: {e}")))??
    };
    let mut flags = 0;
    if options.force {
        flags |= put_flags::OVERWRITE;
    }
    if options.parents {
        flags |= put_flags::PARENTS;
    }
    if !options.resume {
        flags |= put_flags::RESTART;
    }
    let mut request = PutRequest::new(remote, size, mode, flags, digest)
        .map_err(|e| ClientError::Local(format!("path too long: {e}")))?;
    let label = super::remote_name(remote).unwrap_or(remote).to_owned();
    let leg = Leg {
        local,
        label: &label,
        progress,
        cancel,
    };
    let mut first_offset = None;
    let mut retired = false;
    loop {
        let client = conn.current().await;
        match leg.run(&client, &request, &mut first_offset).await {
            Err(e) if e.is_retired() => conn.renew(&client, e).await?,
            Err(e) if retired && e.remote_code() == Some(ErrorCode::ALREADY_EXISTS) => {
                // The retired leg may have ended the upload, and its answer was cut: what is
                // there now is this upload if it is this file.
                if stored_there(conn, remote, size, digest, cancel).await? {
                    break;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
            Ok(()) => break,
        }
        retired = true;
        // The server's partial holds what this upload sent: it continues, whatever
        // --no-resume said about a partial found at the start.
        request.flags &= !put_flags::RESTART;
    }
    let resumed_from = first_offset.unwrap_or(0);
    Ok(Uploaded {
        local: local.to_path_buf(),
        remote: remote.to_owned(),
        size,
        sent: size - resumed_from,
        resumed_from,
        digest,
        elapsed: started.elapsed(),
    })
}

/// Whether the server holds `remote` as exactly `size` bytes hashing to `digest` (spec §3.11).
async fn stored_there(
    conn: &Conn,
    remote: &str,
    size: u64,
    digest: [u8; 32],
    cancel: &Cancel,
) -> Result<bool, ClientError> {
    let timeout = Duration::from_secs(60 + size / 20_000_000);
    let stated = cancel
        .guard(conn.run(|c| async move { when_not_busy(|| c.digest(remote, timeout)).await }))
        .await?;
    Ok(stated.size == size && stated.digest == digest)
}

/// One connection's part of an upload.
struct Leg<'a> {
    local: &'a Path,
    label: &'a str,
    progress: &'a dyn TransferProgress,
    cancel: &'a Cancel,
}

impl Leg<'_> {
    /// Sends `request`'s file on `client` from where the server's partial ends (when it checks
    /// out) and ends it, or stops where the connection is retired. The first leg notes where
    /// it started in `first_offset`.
    async fn run(
        &self,
        client: &Client,
        request: &PutRequest,
        first_offset: &mut Option<u64>,
    ) -> Result<(), ClientError> {
        let Leg {
            local,
            label,
            progress,
            cancel,
        } = *self;
        let (size, digest) = (request.size, request.digest);
        let mut upload = start(client, request, cancel).await?;
        let mut hasher = FetchDigest::new();
        if upload.offset() > 0 {
            let offset = upload.offset();
            let (held, prefix) = {
                let local = local.to_path_buf();
                tokio::task::spawn_blocking(move || hash_prefix(&local, offset))
                    .await
                    .map_err(|e| ClientError::Local(format!("hashing task failed: {e}")))??
            };
            if prefix.finalize() == upload.prefix() && held == offset {
                hasher = prefix;
            } else {
                progress.println(&format!(
                    "{label}: the server's partial upload ({offset} bytes) does not match this file; starting over"
                ));
                drop(upload);
                let mut again = request.clone();
                again.flags |= put_flags::RESTART;
                upload = start(client, &again, cancel).await?;
                if upload.offset() != 0 {
                    return Err(ClientError::Protocol(format!(
                        "the server continued a restarted upload at byte {}",
                        upload.offset()
                    )));
                }
            }
        }
        first_offset.get_or_insert(upload.offset());
        let bar = progress.file(label, size, upload.offset());
        let sent = send_from(local, &mut upload, &mut hasher, size, &*bar, cancel).await;
        if let Err(error) = sent {
            bar.abandon();
            return Err(error);
        }
        if hasher.finalize() != digest {
            bar.abandon();
            // Dropping the upload cancels it: the server never gets an end for bytes that do
            // not match the digest it was promised.
            return Err(ClientError::Local(format!(
                "{} changed while it was being uploaded; run put again",
                local.display()
            )));
        }
        let stored = cancel
            .guard(upload.finish(PutEnd {
                bytes: size,
                digest,
            }))
            .await;
        let stored = match stored {
            Ok(stored) => stored,
            Err(error) => {
                bar.abandon();
                return Err(error);
            }
        };
        if stored.bytes != size || stored.digest != digest {
            bar.abandon();
            return Err(ClientError::Integrity(format!(
                "the server stored {} bytes with another digest than the {size} bytes sent",
                stored.bytes
            )));
        }
        bar.finish();
        Ok(())
    }
}

async fn start(
    client: &Client,
    request: &PutRequest,
    cancel: &Cancel,
) -> Result<Upload, ClientError> {
    cancel
        .guard(when_not_busy(|| client.put(request.clone())))
        .await
}

/// Sends the file from the upload's offset to its end, hashing what it sends.
async fn send_from(
    local: &Path,
    upload: &mut Upload,
    hasher: &mut FetchDigest,
    size: u64,
    bar: &dyn crate::progress::FileProgress,
    cancel: &Cancel,
) -> Result<(), ClientError> {
    let file = File::open(local).map_err(|e| ClientError::io(local, e))?;
    let mut file = Some(file);
    // The data frames stay at the RECOMMENDED 64 KiB (spec §7), far below any receiver's cap.
    let chunk = CHUNK;
    while upload.sent() < size {
        let at = upload.sent();
        let want = READ_SIZE.min((size - at) as usize);
        let Some(f) = file.take() else {
            return Err(ClientError::Local("the upload lost its file".into()));
        };
        let (f, read) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let read = f.read_exact_at(&mut buf, at).map(|()| buf);
            (f, read)
        })
        .await
        .map_err(|e| ClientError::Local(format!("reading task failed: {e}")))?;
        file = Some(f);
        let data = Bytes::from(read.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ClientError::Local(format!(
                "{} shrank while it was being uploaded; run put again",
                local.display()
            )),
            _ => ClientError::io(local, e),
        })?);
        hasher.update(&data);
        let mut from = 0;
        while from < data.len() {
            let to = (from + chunk).min(data.len());
            cancel.guard(upload.send(data.slice(from..to))).await?;
            bar.inc((to - from) as u64);
            from = to;
        }
    }
    Ok(())
}

/// The file's size, permission bits and BLAKE3, in one pass.
fn hash_file(local: &Path) -> Result<(u64, u32, [u8; 32]), ClientError> {
    let mut file = File::open(local).map_err(|e| ClientError::io(local, e))?;
    let meta = file.metadata().map_err(|e| ClientError::io(local, e))?;
    if meta.is_dir() {
        return Err(ClientError::Local(format!(
            "{} is a directory; use put -r",
            local.display()
        )));
    }
    if !meta.is_file() {
        return Err(ClientError::Local(format!(
            "{} is not a regular file",
            local.display()
        )));
    }
    let mut hasher = FetchDigest::new();
    let mut buf = vec![0u8; READ_SIZE];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| ClientError::io(local, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, meta.permissions().mode() & 0o7777, hasher.finalize()))
}

/// The hash state after the first `len` bytes, and how many there were.
fn hash_prefix(local: &Path, len: u64) -> Result<(u64, FetchDigest), ClientError> {
    let file = File::open(local).map_err(|e| ClientError::io(local, e))?;
    let mut hasher = FetchDigest::new();
    let mut buf = vec![0u8; READ_SIZE];
    let mut done = 0u64;
    let mut reader = file.take(len);
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ClientError::io(local, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok((done, hasher))
}

/// Uploads the local directory `local` into the remote directory `remote` (created, with its
/// parents, as needed), `options.jobs` files at a time. Empty directories are made too, with
/// their local permission bits. Symbolic links to files are followed; links to directories,
/// special files, names that are not UTF-8 and names ferry reserves for partial files are
/// skipped and reported.
pub async fn upload_tree(
    client: &Client,
    local: &Path,
    remote: &str,
    options: &PutOptions,
    progress: &dyn TransferProgress,
    cancel: &Cancel,
) -> Result<PutTreeReport, ClientError> {
    let started = Instant::now();
    let options = PutOptions {
        parents: true,
        ..options.clone()
    };
    let Walked { files, empty_dirs } = {
        let local = local.to_path_buf();
        tokio::task::spawn_blocking(move || walk(&local))
            .await
            .map_err(|e| ClientError::Local(format!("walking task failed: {e}")))??
    };
    let mut report = PutTreeReport::default();
    // One connection of the moment for every file, renewed when it is retired (spec §5.5).
    let conn = &Conn::new(client);
    // Few and cheap (one round trip each), so one at a time, before the files.
    for (rel, mode) in empty_dirs {
        let target = if rel.is_empty() {
            remote.to_owned()
        } else {
            remote_join(remote, &rel)
        };
        let made = conn.run(|client| {
            let target = target.clone();
            async move { client.make_dir(&target, mode, true).await }
        });
        match cancel.guard(made).await {
            Ok(()) => report.empty_dirs += 1,
            Err(error) => {
                let stop = matches!(error, ClientError::Interrupted) || error.is_connection_error();
                report.failed.push((rel, error));
                if stop {
                    report.elapsed = started.elapsed();
                    return Ok(report);
                }
            }
        }
    }
    // Several files in flight hide each upload's round trips (request, first answer, end),
    // which dominate small files; the connection multiplexes them.
    let options = &options;
    let mut results = futures::stream::iter(files.into_iter().map(|(rel, found)| async move {
        let result = match found {
            Ok(path) if !cancel.is_cancelled() => {
                let target = remote_join(remote, &rel);
                upload_on(conn, &path, &target, options, progress, cancel).await
            }
            Ok(_) => Err(ClientError::Interrupted),
            Err(why) => Err(ClientError::Local(why)),
        };
        (rel, result)
    }))
    .buffer_unordered(usize::from(options.jobs.max(1)));
    while let Some((name, result)) = results.next().await {
        match result {
            Ok(done) => {
                report.bytes += done.sent;
                report.files.push(done);
            }
            Err(error) => {
                let stop = matches!(error, ClientError::Interrupted) || error.is_connection_error();
                report.failed.push((name, error));
                if stop {
                    break;
                }
            }
        }
    }
    drop(results);
    report.files.sort_by(|a, b| a.remote.cmp(&b.remote));
    report.failed.sort_by(|a, b| a.0.cmp(&b.0));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// What a walk found beneath its root, each sorted by `/`-separated relative name.
#[derive(Debug, Default)]
struct Walked {
    /// Every file, as (relative name, path or why skipped).
    files: Vec<(String, Result<PathBuf, String>)>,
    /// Directories with no entries at all (the root is `""`), with their permission bits.
    empty_dirs: Vec<(String, u32)>,
}

fn walk(root: &Path) -> Result<Walked, ClientError> {
    let meta = std::fs::metadata(root).map_err(|e| ClientError::io(root, e))?;
    if !meta.is_dir() {
        return Err(ClientError::Local(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut out = Vec::new();
    let mut empty_dirs = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| ClientError::io(&dir, e))?
            .filter_map(Result::ok)
            .collect();
        if entries.is_empty() {
            let mode = std::fs::metadata(&dir)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0o755);
            empty_dirs.push((prefix, mode));
            continue;
        }
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                out.push((
                    path.display().to_string(),
                    Err("the name is not utf-8; skipped".into()),
                ));
                continue;
            };
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if is_reserved_name(&name) || name.contains(".ferry-up-") {
                out.push((
                    rel,
                    Err("a name ferry keeps for partial files; skipped".into()),
                ));
                continue;
            }
            let Ok(own) = entry.file_type() else { continue };
            if own.is_dir() {
                stack.push((path, rel));
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => out.push((rel, Ok(path))),
                Ok(m) if m.is_dir() => {
                    out.push((rel, Err("a symbolic link to a directory; skipped".into())))
                }
                Ok(_) => out.push((rel, Err("not a regular file; skipped".into()))),
                Err(e) => out.push((rel, Err(format!("{e}; skipped")))),
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    empty_dirs.sort();
    Ok(Walked {
        files: out,
        empty_dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_names_join_without_doubled_slashes() {
        assert_eq!(remote_join("", "a"), "a");
        assert_eq!(remote_join("in/", "a/b"), "in/a/b");
        assert_eq!(remote_join("in", "a"), "in/a");
    }

    #[test]
    fn a_walk_lists_files_sorted_and_skips_partials() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/x"), b"x").unwrap();
        std::fs::write(dir.path().join("a"), b"a").unwrap();
        std::fs::write(dir.path().join(".a.ferry-part"), b"p").unwrap();
        std::fs::create_dir_all(dir.path().join("b/empty")).unwrap();
        std::fs::set_permissions(
            dir.path().join("b/empty"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let walked = walk(dir.path()).unwrap();
        assert_eq!(walked.empty_dirs, [("b/empty".to_owned(), 0o750)]);
        let names: Vec<_> = walked
            .files
            .iter()
            .map(|(n, r)| (n.as_str(), r.is_ok()))
            .collect();
        assert_eq!(
            names,
            [(".a.ferry-part", false), ("a", true), ("b/c/x", true)]
        );
    }
}
