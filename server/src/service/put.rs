//! Put (spec §3.12): uploads, written through the jail into a hidden partial file beside the
//! destination and renamed to the destination only after the whole file's BLAKE3 matches the
//! digest the client announced, so a half upload never appears under the final name.
//!
//! - **Resume.** The partial's name is derived from (principal, destination, size, digest):
//!   only the same content from the same principal continues it, and the client needs no
//!   state of its own to resume. The first answer carries the partial's length and the BLAKE3
//!   of those bytes, which the client checks against its own file before continuing.
//! - **Flow control.** The client may send data up to the `limit` of the latest answer; the
//!   server moves it on as it writes, never more than [`WINDOW`] past what is on disk, so one
//!   upload buffers at most [`WINDOW`] bytes however fast its client is. The reader hands the
//!   upload's frames to its task through [`deliver`], which enforces the limit.
//! - **One upload per partial.** A second upload of the same content waits for the first
//!   (a lock per partial, held with the file, also across a blocking write that outlives an
//!   aborted task).
//! - **Quota.** Bytes received per principal and server run ([`Uploads`]).
//! - **A full disk** is `NO_SPACE` with how far the upload got; the partial stays for a resume.
//! - **Stale partials** older than [`STALE_AFTER`] are removed from a directory whenever an
//!   upload starts in it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_jail::Create;
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{ClientHello, EntryKind, PutEnd, PutRequest, PutResponse};
use ferry_protocol::{ErrorCode, Key, KeyResolver, Message, Permissions, Principal, RequestId};
use rustix::io::Errno;
use tokio::sync::{mpsc, OwnedMutexGuard};

use super::{Context, ServiceError, Sink, Tree};
use crate::fs::{FsError, Jail, RelPath};

/// How far past what it has written the server lets a client send.
pub(crate) const WINDOW: u64 = 4 << 20;
/// A new answer (moving the limit on) after this many bytes written since the last one.
const ACK_EVERY: u64 = WINDOW / 4;
/// Bytes gathered into one blocking write.
const WRITE_BATCH: usize = 1 << 20;
/// An upload that receives nothing for this long ends with `TIMEOUT` (spec §7's request
/// answer timeout, seen from the server).
pub(crate) const IDLE: Duration = Duration::from_secs(60);
/// Partials untouched for this long are removed when an upload starts in their directory.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Marks a partial's name: `.NAME.ferry-up-<16 hex digits>`.
pub(crate) const PART_TAG: &str = ".ferry-up-";

/// The resolver of `--allow-upload`: one key, as [`ferry_protocol::SingleKey`], whose holder
/// may read and write.
#[derive(Debug, Clone)]
pub(crate) struct WritableKey {
    key: Key,
    principal: Principal,
}

impl WritableKey {
    pub(crate) fn new(key: Key) -> Self {
        let mut principal = Principal::key_holder();
        principal.permissions = Permissions::READ_WRITE;
        Self { key, principal }
    }
}

impl KeyResolver for WritableKey {
    fn resolve(&self, _hello: &ClientHello) -> Option<(Key, Principal)> {
        Some((self.key.clone(), self.principal.clone()))
    }
}

/// What the server shares between all uploads: the partials' locks and the quota counts.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    /// Partial path → its lock. Entries die with their last holder.
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Principal name → bytes received (and reserved by uploads in flight) this run.
    used: Mutex<HashMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can leave the maps half-updated, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Uploads {
    fn partial_lock(&self, part: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.locks);
        if let Some(held) = locks.get(part).and_then(Weak::upgrade) {
            return held;
        }
        if locks.len() >= 64 {
            locks.retain(|_, weak| weak.strong_count() > 0);
        }
        let fresh = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(part.to_owned(), Arc::downgrade(&fresh));
        fresh
    }

    /// Reserves `bytes` of `who`'s quota, or says how much is used.
    fn reserve(self: &Arc<Self>, who: &str, bytes: u64, quota: u64) -> Result<Reservation, u64> {
        let mut used = lock(&self.used);
        let now = used.get(who).copied().unwrap_or(0);
        if now.saturating_add(bytes) > quota {
            return Err(now);
        }
        used.insert(who.to_owned(), now + bytes);
        Ok(Reservation {
            uploads: self.clone(),
            who: who.to_owned(),
            reserved: bytes,
            received: 0,
        })
    }

    /// Bytes `who` has uploaded (or reserved) this run.
    #[cfg(test)]
    pub(crate) fn used(&self, who: &str) -> u64 {
        lock(&self.used).get(who).copied().unwrap_or(0)
    }
}

/// Quota reserved for one upload; what it did not receive is given back when it ends.
#[derive(Debug)]
struct Reservation {
    uploads: Arc<Uploads>,
    who: String,
    reserved: u64,
    received: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let unused = self.reserved.saturating_sub(self.received);
        if let Some(used) = lock(&self.uploads.used).get_mut(&self.who) {
            *used = used.saturating_sub(unused);
        }
    }
}

/// What the reader hands an upload's task.
#[derive(Debug)]
pub(crate) enum Input {
    Data(Bytes),
    End(PutEnd),
    /// The client sent data past the limit; the route is gone.
    Overrun {
        limit: u64,
    },
}

/// One connection's uploads in flight, by request id: where the reader sends their frames.
#[derive(Debug, Default)]
pub(crate) struct Routes(Mutex<RouteTable>);

#[derive(Debug, Default)]
struct RouteTable {
    map: HashMap<RequestId, Route>,
    /// The client's side of the connection ended: no route is added any more.
    ended: bool,
    next_token: u64,
}

#[derive(Debug)]
struct Route {
    tx: mpsc::UnboundedSender<Input>,
    /// Tells this upload from a newer one that reused its id.
    token: u64,
    /// The file offset the next data byte belongs at.
    at: u64,
    /// Data may reach up to here (exclusive); 0 until the first answer is sent.
    limit: Arc<AtomicU64>,
}

/// Removes its route when the upload ends, however it ends.
#[derive(Debug)]
struct RouteGuard {
    routes: Arc<Routes>,
    id: RequestId,
    token: u64,
    limit: Arc<AtomicU64>,
}

impl RouteGuard {
    /// Data is now accepted from `at` up to `limit`.
    fn open(&self, at: u64, limit: u64) {
        let mut table = lock(&self.routes.0);
        if let Some(route) = table
            .map
            .get_mut(&self.id)
            .filter(|r| r.token == self.token)
        {
            route.at = at;
        }
        self.limit.store(limit, Ordering::Release);
    }

    fn advance(&self, limit: u64) {
        self.limit.store(limit, Ordering::Release);
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let mut table = lock(&self.routes.0);
        if table
            .map
            .get(&self.id)
            .is_some_and(|r| r.token == self.token)
        {
            table.map.remove(&self.id);
        }
    }
}

enum RegisterError {
    Busy(usize),
    Ended,
}

impl Routes {
    fn register(
        self: &Arc<Self>,
        id: RequestId,
        max: usize,
    ) -> Result<(RouteGuard, mpsc::UnboundedReceiver<Input>), RegisterError> {
        let mut table = lock(&self.0);
        if table.ended {
            return Err(RegisterError::Ended);
        }
        if table.map.len() >= max {
            return Err(RegisterError::Busy(max));
        }
        table.next_token += 1;
        let token = table.next_token;
        let (tx, rx) = mpsc::unbounded_channel();
        let limit = Arc::new(AtomicU64::new(0));
        table.map.insert(
            id,
            Route {
                tx,
                token,
                at: 0,
                limit: limit.clone(),
            },
        );
        let guard = RouteGuard {
            routes: self.clone(),
            id,
            token,
            limit,
        };
        Ok((guard, rx))
    }
}

/// Hands a `DATA` or `END` frame of service PUT to its upload (called by the connection's
/// reader, in frame order). Frames for an id with no upload in flight are dropped: they were
/// sent before the client saw the upload end (spec §3.12). Data past the granted limit ends
/// the upload (`TOO_LARGE`), so nothing a client sends can grow the server's buffers past it.
pub(crate) fn deliver(ctx: &Context, id: RequestId, message: Message) {
    let mut table = lock(&ctx.uploads.0);
    let Some(route) = table.map.get_mut(&id) else {
        tracing::trace!(%id, "upload frame for no upload in flight");
        return;
    };
    match message {
        Message::PutData(data) => {
            let end = route.at.saturating_add(data.len() as u64);
            let limit = route.limit.load(Ordering::Acquire);
            if end > limit {
                if let Some(route) = table.map.remove(&id) {
                    let _ = route.tx.send(Input::Overrun { limit });
                }
                return;
            }
            route.at = end;
            let _ = route.tx.send(Input::Data(data));
        }
        Message::PutEnd(end) => {
            // Nothing more belongs to this upload.
            if let Some(route) = table.map.remove(&id) {
                let _ = route.tx.send(Input::End(end));
            }
        }
        _ => {}
    }
}

/// The client's side of the connection ended: uploads waiting for data end now (their
/// partials stay for a resume) instead of waiting out [`IDLE`].
pub(crate) fn connection_ended(ctx: &Context) {
    let mut table = lock(&ctx.uploads.0);
    table.ended = true;
    table.map.clear();
}

fn refused(code: ErrorCode, message: String) -> ServiceError {
    ServiceError::Refused(code, message)
}

/// An upload's partial file, its running hash and the lock that makes it this upload's.
#[derive(Debug)]
struct Part {
    file: File,
    path: RelPath,
    hasher: FetchDigest,
    written: u64,
    _lock: OwnedMutexGuard<()>,
}

impl Part {
    fn write(mut self, batch: Vec<Bytes>) -> Result<Self, FsError> {
        for chunk in &batch {
            self.file
                .write_all(chunk)
                .map_err(|e| io_error(&e, &self.path))?;
            self.hasher.update(chunk);
            self.written += chunk.len() as u64;
        }
        Ok(self)
    }
}

/// A full disk (or disk quota) is the server's state, not a bug: the client hears how far the
/// upload got, and the partial stays, so the same command resumes once there is room.
fn out_of_space(error: FsError, path: &RelPath, stored: u64, size: u64) -> ServiceError {
    match error {
        FsError::Io { errno, .. } if errno == Errno::NOSPC || errno == Errno::DQUOT => refused(
            ErrorCode::NO_SPACE,
            format!(
                "no space left on the server for {path}: {stored} of {size} bytes are stored and kept; \
                 the same upload resumes from there once there is room"
            ),
        ),
        other => other.into(),
    }
}

fn io_error(error: &std::io::Error, path: &RelPath) -> FsError {
    FsError::Io {
        path: path.clone(),
        errno: Errno::from_io_error(error).unwrap_or(Errno::IO),
    }
}

/// Answers one upload. Returns the data bytes received.
pub(crate) async fn put(
    ctx: &Context,
    request: PutRequest,
    sink: &Sink,
) -> Result<u64, ServiceError> {
    let tree = ctx.tree.clone();
    let limits = &tree.limits;
    // A bad path is refused before access is considered, as for reads.
    let path = RelPath::parse(&request.path, limits.max_path_depth)?;
    let who = ctx.principal.clone();
    if !who.permissions.write {
        return Err(refused(
            ErrorCode::READ_ONLY,
            format!(
                "{} may not upload: this server is read-only for it",
                who.name
            ),
        ));
    }
    if path.is_root() {
        return Err(refused(
            ErrorCode::INVALID_PATH,
            "an upload needs a file name, not the root".into(),
        ));
    }
    if path.file_name().contains(PART_TAG) {
        return Err(refused(
            ErrorCode::INVALID_PATH,
            format!("{path}: names holding {PART_TAG} are reserved for partial uploads"),
        ));
    }
    if request.is_directory() {
        return make_dir(&tree, path, &request, sink).await;
    }
    let size = request.size;
    if size > limits.max_upload_size {
        return Err(refused(
            ErrorCode::TOO_LARGE,
            format!(
                "{path} is {size} bytes, more than the {} bytes this server accepts in one upload",
                limits.max_upload_size
            ),
        ));
    }
    let (route, mut rx) = match ctx
        .uploads
        .register(sink.id, limits.max_uploads_per_connection)
    {
        Ok(registered) => registered,
        Err(RegisterError::Ended) => return Err(ServiceError::Closed),
        Err(RegisterError::Busy(max)) => {
            return Err(refused(
                ErrorCode::BUSY,
                format!("{max} uploads are already in flight on this connection"),
            ))
        }
    };
    let part_path = part_name(&path, &who.name, &request)?;
    let held = tree
        .uploads
        .partial_lock(part_path.as_str())
        .lock_owned()
        .await;
    let part = {
        let tree = tree.clone();
        let request = request.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || prepare(&tree, &path, part_path, &request, held))
            .await??
    };
    let offset = part.written;
    let quota = limits.upload_quota;
    let mut reservation = tree
        .uploads
        .reserve(&who.name, size - offset, quota)
        .map_err(|used| {
            refused(
                ErrorCode::QUOTA_EXCEEDED,
                format!(
                    "uploading {} more bytes would exceed the quota of {quota} bytes for {} ({used} already used)",
                    size - offset,
                    who.name
                ),
            )
        })?;
    let limit = offset.saturating_add(WINDOW).min(size);
    route.open(offset, limit);
    sink.send(Message::PutResponse(PutResponse {
        offset,
        limit,
        prefix: part.hasher.finalize(),
    }))
    .await?;

    let mut part = Some(part);
    let mut acked = offset;
    let mut next = None;
    loop {
        let input = match next.take() {
            Some(input) => input,
            None => match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(input)) => input,
                Ok(None) => return Err(ServiceError::Closed),
                Err(_) => {
                    return Err(refused(
                        ErrorCode::TIMEOUT,
                        format!("no upload data for {} s", IDLE.as_secs()),
                    ))
                }
            },
        };
        let Some(current) = part.take() else {
            return Err(ServiceError::Internal("upload lost its file".into()));
        };
        match input {
            Input::Data(first) => {
                let mut len = first.len();
                let mut batch = vec![first];
                while len < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(Input::Data(more)) => {
                            len += more.len();
                            batch.push(more);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let stored = current.written;
                let written = tokio::task::spawn_blocking(move || current.write(batch))
                    .await?
                    .map_err(|error| out_of_space(error, &path, stored, size))?;
                reservation.received = written.written - offset;
                if written.written < size && written.written - acked >= ACK_EVERY {
                    acked = written.written;
                    let limit = acked.saturating_add(WINDOW).min(size);
                    // Open the limit before the client can hear of it.
                    route.advance(limit);
                    sink.send(Message::PutResponse(PutResponse {
                        offset: acked,
                        limit,
                        prefix: written.hasher.finalize(),
                    }))
                    .await?;
                }
                part = Some(written);
            }
            Input::Overrun { limit } => {
                return Err(refused(
                    ErrorCode::TOO_LARGE,
                    format!("upload data went past the granted limit of {limit} bytes"),
                ));
            }
            Input::End(end) => {
                drop(route);
                let stored = finish(&tree, &path, current, &request, end).await?;
                sink.send(Message::PutEnd(stored)).await?;
                return Ok(size - offset);
            }
        }
    }
}

/// A directory request (`put -r` of an empty directory): made beneath the root like a file's
/// parents, answered at once with an end of no bytes.
async fn make_dir(
    tree: &Arc<Tree>,
    path: RelPath,
    request: &PutRequest,
    sink: &Sink,
) -> Result<u64, ServiceError> {
    let tree = tree.clone();
    let (parents, mode) = (request.parents(), request.mode);
    tokio::task::spawn_blocking(move || {
        let parent = path.parent();
        if parents {
            tree.jail.create_dir_all(&parent)?;
        } else if tree.jail.stat(&parent)?.kind != EntryKind::DIRECTORY {
            return Err(FsError::NotADirectory(parent));
        }
        tree.jail.create_dir(&path, mode).map(drop)
    })
    .await??;
    sink.send(Message::PutEnd(PutEnd {
        bytes: 0,
        digest: [0; 32],
    }))
    .await?;
    Ok(0)
}

/// Checks the whole file against the announced digest, then gives it its final name.
async fn finish(
    tree: &Arc<Tree>,
    path: &RelPath,
    part: Part,
    request: &PutRequest,
    end: PutEnd,
) -> Result<PutEnd, ServiceError> {
    let size = request.size;
    if part.written != size {
        return Err(refused(
            ErrorCode::INVALID_RANGE,
            format!(
                "the upload of {path} ended after {} of its {size} bytes",
                part.written
            ),
        ));
    }
    if end.bytes != size || end.digest != request.digest {
        return Err(refused(
            ErrorCode::DIGEST_MISMATCH,
            format!(
                "the end of the upload of {path} announces another file ({} bytes) than its request ({size} bytes)",
                end.bytes
            ),
        ));
    }
    let digest = part.hasher.finalize();
    let tree = tree.clone();
    let path = path.clone();
    let overwrite = request.overwrite();
    let mode = request.mode & 0o777;
    tokio::task::spawn_blocking(move || {
        let Part {
            file,
            path: part_path,
            _lock,
            ..
        } = part;
        if digest != end.digest {
            // These bytes can never become the file: drop them, and say so.
            drop(file);
            let _ = tree.jail.remove_file(&part_path);
            return Err(refused(
                ErrorCode::DIGEST_MISMATCH,
                format!(
                    "the {size} bytes received for {path} do not hash to the announced digest; nothing was stored"
                ),
            ));
        }
        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(mode))
            .map_err(|errno| FsError::Io {
                path: path.clone(),
                errno,
            })?;
        file.sync_all().map_err(|e| io_error(&e, &path))?;
        drop(file);
        let renamed = if overwrite {
            tree.jail.rename(&part_path, &path)
        } else {
            tree.jail.rename_new(&part_path, &path)
        };
        match renamed {
            Ok(()) => {}
            // The verified partial stays, so a retry that may overwrite needs no data.
            Err(FsError::Io {
                errno: Errno::EXIST,
                ..
            }) => return Err(already_exists(&path)),
            Err(FsError::NotAFile(_)) | Err(FsError::Io { errno: Errno::ISDIR, .. }) => {
                return Err(refused(
                    ErrorCode::NOT_A_FILE,
                    format!("{path} is a directory on the server"),
                ))
            }
            Err(error) => return Err(error.into()),
        }
        // The rename is durable only once the directory is.
        if let Ok(dir) = tree.jail.open_dir(&path.parent()) {
            let _ = rustix::fs::fsync(&dir);
        }
        Ok(PutEnd {
            bytes: size,
            digest,
        })
    })
    .await?
}

fn already_exists(path: &RelPath) -> ServiceError {
    refused(
        ErrorCode::ALREADY_EXISTS,
        format!("{path} already exists on the server and the upload may not overwrite it"),
    )
}

/// The partial beside `path` for this principal and content: `.NAME.ferry-up-` and 16 hex
/// digits of a BLAKE3 over who, where and what.
fn part_name(path: &RelPath, who: &str, request: &PutRequest) -> Result<RelPath, ServiceError> {
    let mut key = FetchDigest::new();
    key.update(b"ferry put partial v1\0")
        .update(who.as_bytes())
        .update(b"\0")
        .update(path.as_str().as_bytes())
        .update(b"\0")
        .update(&request.size.to_be_bytes())
        .update(&request.digest);
    let key = key.finalize();
    // Keep the partial's name within 255 bytes: 1 + 200 + 10 + 16.
    let name = path.file_name();
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let part = format!(".{}{PART_TAG}{}", &name[..cut], hex::encode(&key[..8]));
    Ok(path.with_file_name(&part)?)
}

/// Blocking: checks the destination, makes its parents if asked, sweeps stale partials, and
/// opens (or continues) the partial, hashing what it already holds.
fn prepare(
    tree: &Tree,
    path: &RelPath,
    part_path: RelPath,
    request: &PutRequest,
    held: OwnedMutexGuard<()>,
) -> Result<Part, ServiceError> {
    let jail = &tree.jail;
    let parent = path.parent();
    if request.parents() {
        jail.create_dir_all(&parent)?;
    } else if jail.stat(&parent)?.kind != EntryKind::DIRECTORY {
        return Err(FsError::NotADirectory(parent).into());
    }
    match jail.symlink_metadata(path) {
        Ok(meta) if meta.kind == EntryKind::SYMLINK => {
            return Err(refused(
                ErrorCode::INVALID_PATH,
                format!("{path} is a symbolic link on the server; an upload never replaces one"),
            ))
        }
        Ok(meta) if meta.kind == EntryKind::DIRECTORY => {
            return Err(refused(
                ErrorCode::NOT_A_FILE,
                format!("{path} is a directory on the server"),
            ))
        }
        Ok(meta) if meta.kind != EntryKind::FILE => {
            return Err(FsError::NotAFile(path.clone()).into())
        }
        Ok(_) if !request.overwrite() => return Err(already_exists(path)),
        Ok(_) | Err(FsError::NotFound(_)) => {}
        Err(error) => return Err(error.into()),
    }
    sweep_stale(tree, &parent, &part_path);
    let how = if request.restart() {
        Create::Truncate
    } else {
        Create::Keep
    };
    let mut file = jail.create_file(&part_path, how)?;
    let held_len = file.metadata().map_err(|e| io_error(&e, &part_path))?.len();
    let mut hasher = FetchDigest::new();
    let mut written = 0;
    if held_len > request.size {
        // Cannot be this content's prefix.
        file.set_len(0).map_err(|e| io_error(&e, &part_path))?;
    } else if held_len > 0 {
        let mut buf = vec![0u8; 1 << 20];
        while written < held_len {
            let want = buf.len().min((held_len - written) as usize);
            let n = file
                .read(&mut buf[..want])
                .map_err(|e| io_error(&e, &part_path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            written += n as u64;
        }
    }
    file.seek(SeekFrom::Start(written))
        .map_err(|e| io_error(&e, &part_path))?;
    // A partial left longer than what was hashed (it shrank meanwhile) is cut to match.
    file.set_len(written)
        .map_err(|e| io_error(&e, &part_path))?;
    Ok(Part {
        file,
        path: part_path,
        hasher,
        written,
        _lock: held,
    })
}

/// Removes partials in `dir` untouched for [`STALE_AFTER`], except `keep` and any whose upload
/// holds its lock. Best effort: a failure here never fails the upload.
fn sweep_stale(tree: &Tree, dir: &RelPath, keep: &RelPath) {
    let jail: &Jail = &tree.jail;
    let Ok(fd) = jail.open_dir(dir) else { return };
    let Ok(entries) = rustix::fs::Dir::read_from(&fd) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if !name.starts_with('.') || !name.contains(PART_TAG) {
            continue;
        }
        let Ok(part) = dir.join(name) else { continue };
        if &part == keep {
            continue;
        }
        let Ok(meta) = jail.symlink_metadata(&part) else {
            continue;
        };
        if meta.kind != EntryKind::FILE
            || now.saturating_sub(meta.mtime_secs) < STALE_AFTER.as_secs() as i64
        {
            continue;
        }
        // Holding its lock, no upload can be continuing it while it goes.
        let Ok(_held) = tree.uploads.partial_lock(part.as_str()).try_lock_owned() else {
            continue;
        };
        if jail.remove_file(&part).is_ok() {
            tracing::info!(partial = %part, "removed a stale partial upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use ferry_protocol::Principal;

    fn writer() -> Principal {
        let mut p = Principal::key_holder();
        p.permissions = Permissions::READ_WRITE;
        p
    }

    #[test]
    fn quota_not_received_is_given_back() {
        let uploads = Arc::new(Uploads::default());
        let mut first = uploads.reserve("bob", 100, 150).unwrap();
        // 100 reserved: 60 more would pass 150.
        assert_eq!(uploads.reserve("bob", 60, 150).unwrap_err(), 100);
        assert!(uploads.reserve("alice", 150, 150).is_ok());
        first.received = 30;
        drop(first);
        assert_eq!(uploads.used("bob"), 30);
        assert!(uploads.reserve("bob", 120, 150).is_ok());
    }

    #[test]
    fn data_past_the_limit_ends_the_route_and_strays_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), writer());
        let id = RequestId(3);
        let (guard, mut rx) = ctx.uploads.register(id, 4).ok().unwrap();
        // Nothing is accepted before the first answer opens the route.
        deliver(&ctx, id, Message::PutData(Bytes::from_static(b"x")));
        assert!(matches!(rx.try_recv(), Ok(Input::Overrun { limit: 0 })));
        let (guard2, mut rx) = {
            drop(guard);
            ctx.uploads.register(id, 4).ok().unwrap()
        };
        guard2.open(10, 14);
        deliver(&ctx, id, Message::PutData(Bytes::from_static(b"abcd")));
        assert!(matches!(rx.try_recv(), Ok(Input::Data(d)) if d.len() == 4));
        deliver(&ctx, id, Message::PutData(Bytes::from_static(b"e")));
        assert!(matches!(rx.try_recv(), Ok(Input::Overrun { limit: 14 })));
        // The route is gone: later frames for the id go nowhere.
        deliver(&ctx, id, Message::PutData(Bytes::from_static(b"f")));
        assert!(rx.try_recv().is_err());
        deliver(
            &ctx,
            RequestId(99),
            Message::PutData(Bytes::from_static(b"g")),
        );
        // A newer upload on the same id is not removed by the old guard.
        let (_guard3, _rx3) = ctx.uploads.register(id, 4).ok().unwrap();
        drop(guard2);
        assert!(lock(&ctx.uploads.0).map.contains_key(&id));
    }

    #[test]
    fn uploads_per_connection_are_bounded_and_end_with_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), writer());
        let _a = ctx.uploads.register(RequestId(1), 2).ok().unwrap();
        let _b = ctx.uploads.register(RequestId(2), 2).ok().unwrap();
        assert!(matches!(
            ctx.uploads.register(RequestId(3), 2),
            Err(RegisterError::Busy(2))
        ));
        connection_ended(&ctx);
        assert!(matches!(
            ctx.uploads.register(RequestId(4), 2),
            Err(RegisterError::Ended)
        ));
    }

    #[test]
    fn partial_names_depend_on_who_and_what_and_fit_a_name() {
        let path = RelPath::parse("d/a.bin", 8).unwrap();
        let request = PutRequest::new("d/a.bin", 5, 0o644, 0, [1; 32]).unwrap();
        let name = part_name(&path, "bob", &request).unwrap();
        assert!(name.as_str().starts_with("d/.a.bin.ferry-up-"), "{name}");
        assert_eq!(name, part_name(&path, "bob", &request).unwrap());
        assert_ne!(name, part_name(&path, "eve", &request).unwrap());
        let mut other = request.clone();
        other.digest = [2; 32];
        assert_ne!(name, part_name(&path, "bob", &other).unwrap());
        let long = "é".repeat(127);
        let path = RelPath::parse(&long, 8).unwrap();
        let name = part_name(&path, "bob", &request).unwrap();
        assert!(name.file_name().len() <= 255, "{}", name.file_name().len());
    }

    #[test]
    fn stale_partials_are_swept_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), writer());
        let old = dir.path().join(".x.ferry-up-0000000000000000");
        let fresh = dir.path().join(".y.ferry-up-0000000000000000");
        let other = dir.path().join("old-but-not-a-partial");
        for p in [&old, &fresh, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let long_ago = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        for p in [&old, &other] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        let keep = RelPath::parse("keep", 8).unwrap();
        sweep_stale(&ctx.tree, &RelPath::root(), &keep);
        assert!(!old.exists());
        assert!(fresh.exists() && other.exists());
    }
}
