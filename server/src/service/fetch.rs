//! Fetch (spec §3.7): large reads on a blocking thread, one read ahead of the frames being
//! queued, cut into chunks without copying.
//!
//! `FileReader` (fs/range.rs) is moved into a blocking read and back, so at most one read per
//! fetch is outstanding. Read buffers come from the connection's pool (buffers.rs); the
//! deadlock-freedom argument is in connection/STATE.md ("Fetch task").

use std::sync::Arc;

use ferry_protocol::message::{FetchEnd, FetchRequest, FetchResponse};
use ferry_protocol::{Message, RequestId};

use super::{Context, ServiceError, Sink};
use crate::buffers::PooledBuf;
use crate::fs::files::{JailKey, Lookup};
use crate::fs::{EntryCache, FileReader, FsError, RelPath};

/// Largest range served without a trip to the blocking pool, when the file's pages are
/// already in memory. Why that cannot stall the runtime thread: the open is a `RESOLVE_CACHED`
/// walk (fails rather than reading a directory from disk), the read is `RWF_NOWAIT` (fails
/// rather than waiting for a disk) or from tmpfs, so the whole request is a few syscalls that
/// only copy from memory plus hashing 64 KiB: tens of microseconds, less than one hop to the
/// blocking pool and back costs in wake-ups.
pub(crate) const INLINE_MAX: u64 = 64 * 1024;

/// Answers one fetch request. Returns the data bytes sent.
///
/// A small file whose path and pages are cached is answered inline ([`INLINE_MAX`]); anything
/// else is opened and first read in one blocking call when a buffer is free, so it costs one
/// trip to the blocking pool, not two. A range read whole in that first read is queued as one
/// burst (response, data, end), so it leaves in one write.
pub(crate) async fn fetch(
    ctx: &Context,
    request: FetchRequest,
    sink: &Sink,
) -> Result<u64, ServiceError> {
    let path = ctx.readable(&request.path)?;
    let pool = ctx.buffers.clone();
    let (reader, response, first) = match open_inline(ctx, &path, &request)? {
        Some(opened) => opened,
        None => {
            let tree = ctx.tree.clone();
            let first_buf = pool.try_get();
            tokio::task::spawn_blocking(move || {
                // Opens through the jail, and keeps the descriptor when it may be kept.
                let (file, meta) = EntryCache::shared().fill_file(&tree.jail, &path)?;
                let (mut reader, response) =
                    FileReader::from_shared(file, meta, path, request.offset, request.length)?;
                let first = match first_buf {
                    Some(mut buf) if reader.remaining() > 0 => {
                        let n = reader.read_batch(&mut buf.spaces(reader.remaining()))?;
                        buf.set_len(n);
                        Some(buf)
                    }
                    _ => None,
                };
                Ok::<_, FsError>((reader, response, first))
            })
            .await??
        }
    };
    if reader.remaining() == 0 {
        return send_whole(ctx, sink, reader, response, first).await;
    }
    sink.send(Message::FetchResponse(response)).await?;

    let chunk = ctx.chunk;
    // At most one of `reader` and `reading` holds the reader; `ready` is a batch read but not
    // yet queued.
    let mut reader = Some(reader);
    let mut reading = None;
    let mut ready = first;
    loop {
        let batch = match ready.take() {
            Some(batch) => batch,
            None => {
                if reading.is_none() {
                    match reader.take() {
                        Some(r) if r.remaining() > 0 => {
                            // Holding no unqueued buffer here, so waiting cannot deadlock.
                            reading = Some(spawn_read(r, pool.get().await));
                        }
                        other => {
                            reader = other;
                            break;
                        }
                    }
                }
                let Some(handle) = reading.take() else { break };
                let (r, batch) = handle.await?;
                reader = Some(r);
                batch?
            }
        };
        // Start the next read before queueing this batch, so disk and socket overlap, but only
        // with a buffer that is free right now.
        if let Some(r) = reader.take() {
            match (r.remaining() > 0).then(|| pool.try_get()).flatten() {
                Some(buf) => reading = Some(spawn_read(r, buf)),
                None => reader = Some(r),
            }
        }
        let (chunks, held) = batch.into_chunks(chunk);
        for data in chunks {
            sink.send(Message::Data(data)).await?;
        }
        // Queued: the buffer's place in the pool is free (slots are handed back as written).
        drop(held);
    }
    let Some(reader) = reader else {
        return Err(ServiceError::Internal("fetch lost its reader".into()));
    };
    let end = reader.finish()?;
    sink.send(Message::FetchEnd(end)).await?;
    Ok(end.bytes)
}

type Opened = (FileReader, FetchResponse, Option<PooledBuf>);

/// Opens and reads a small range on this thread if nothing has to wait for a disk; `None`
/// sends the request to the blocking pool. A kept file ([`EntryCache::lookup_file`]) needs no
/// open at all; one not yet kept goes to the blocking pool, which keeps it; one that cannot be
/// kept is opened here with a walk that cannot wait for a disk. Confinement is the jail's, as
/// on the slow path: a kept descriptor is one the jail opened.
fn open_inline(
    ctx: &Context,
    path: &RelPath,
    request: &FetchRequest,
) -> Result<Option<Opened>, FsError> {
    let jail = &ctx.tree.jail;
    let key = JailKey::of(jail);
    let (file, meta, kept) = match EntryCache::shared().lookup_file(key, path) {
        Lookup::Hit(file, meta) => (file, meta, true),
        Lookup::Miss => return Ok(None),
        Lookup::Unfit => match jail.open_file_cached(path)? {
            Some((file, meta)) => (Arc::new(file), meta, false),
            None => return Ok(None),
        },
    };
    let (mut reader, response) =
        FileReader::from_shared(file, meta, path.clone(), request.offset, request.length)?;
    let mut first = None;
    if (1..=INLINE_MAX).contains(&reader.remaining()) {
        if let Some(mut buf) = ctx.buffers.try_get() {
            match reader.read_batch_cached(&mut buf.spaces(reader.remaining())) {
                Ok(Some(n)) => {
                    buf.set_len(n);
                    first = Some(buf);
                }
                Ok(None) => {}
                // A kept file that changed without an event (a store through a shared
                // `mmap`): open it afresh rather than fail the fetch.
                Err(FsError::Changed(_)) if kept => {
                    EntryCache::shared().forget_file(key, path);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(Some((reader, response, first)))
}

/// A range read whole: the response, its chunks and the end, queued as one burst.
async fn send_whole(
    ctx: &Context,
    sink: &Sink,
    reader: FileReader,
    response: FetchResponse,
    first: Option<PooledBuf>,
) -> Result<u64, ServiceError> {
    // Nothing was sent since the read that took the last bytes (and checked the file).
    let end = reader.finish_just_read()?;
    let (frames, held) = whole_frames(ctx.chunk, response, first, end);
    sink.send_all(frames).await?;
    drop(held);
    Ok(end.bytes)
}

/// The response, the data cut into chunks, and the end; and what holds the read buffer's
/// place in the pool until they are queued ([`PooledBuf::into_chunks`]).
fn whole_frames(
    chunk: usize,
    response: FetchResponse,
    first: Option<PooledBuf>,
    end: FetchEnd,
) -> (Vec<Message>, Option<PooledBuf>) {
    let mut frames = vec![Message::FetchResponse(response)];
    let mut held = None;
    if let Some(batch) = first {
        let (chunks, place) = batch.into_chunks(chunk);
        frames.extend(chunks.into_iter().map(Message::Data));
        held = place;
    }
    frames.push(Message::FetchEnd(end));
    (frames, held)
}

/// Answers a fetch of a small range of a kept file on the spot, for the connection's reader
/// to queue without a task: one read of the file and one of the event queue after it
/// ([`EntryCache::peek_file`]), no wait for a disk, no hop to the blocking pool; the bytes are
/// hashed only if they are not the kept file's digest memo. `None` (nothing done, nothing
/// consumed) leaves the request to a task
/// ([`fetch`]), which also answers every error; so do ranges that need more than
/// `max_frames` frames. Returns the frames and the data bytes, and logs the request's line
/// as [`super::run`] does.
pub(crate) fn answer_kept(
    ctx: &Context,
    id: RequestId,
    request: &FetchRequest,
    max_frames: usize,
) -> Option<(Vec<Message>, u64)> {
    // The clock is read only for the request's log line (two reads a request otherwise).
    let started = tracing::enabled!(tracing::Level::INFO).then(std::time::Instant::now);
    let path = ctx.readable(&request.path).ok()?;
    let key = JailKey::of(&ctx.tree.jail);
    let cache = EntryCache::shared();
    let (file, meta, memo) = cache.peek_file(key, &path)?;
    let (mut reader, response) = FileReader::from_shared(
        file.clone(),
        meta,
        path.clone(),
        request.offset,
        request.length,
    )
    .ok()?;
    let remaining = reader.remaining();
    let frames = remaining.div_ceil(ctx.chunk as u64).saturating_add(2);
    if remaining > INLINE_MAX || frames > max_frames as u64 {
        return None;
    }
    let mut first = None;
    let mut fresh_memo = None;
    if remaining > 0 {
        let mut buf = ctx.buffers.try_get()?;
        // A hot file is read again every time; only hashing the same bytes again is spared.
        match reader.read_whole_kept(&mut buf.spaces(remaining), memo.as_deref()) {
            Ok(Some((n, fresh))) => {
                buf.set_len(n);
                fresh_memo = fresh;
            }
            Ok(None) => return None,
            Err(_) => {
                // Changed without an event, or unreadable: the task opens it afresh.
                cache.forget_file(key, &path);
                return None;
            }
        }
        first = Some(buf);
    }
    // After the read: nothing changed the name, the metadata or the bytes up to now.
    if !cache.confirm_file(key, &path, &file, fresh_memo) {
        return None;
    }
    let end = reader.finish_just_read().ok()?;
    let elapsed_ms = started.map_or(0.0, |t| t.elapsed().as_micros() as f64 / 1000.0);
    let bytes = end.bytes;
    tracing::info!(%id, service = "fetch", path = ?request.path, bytes, elapsed_ms, outcome = "ok", "request");
    // At most 64 KiB, queued by the reader one answer at a time: its buffer's place may be
    // freed before it is queued.
    let (frames, _) = whole_frames(ctx.chunk, response, first, end);
    Some((frames, bytes))
}

type ReadResult = (FileReader, Result<PooledBuf, FsError>);

fn spawn_read(mut reader: FileReader, mut buf: PooledBuf) -> tokio::task::JoinHandle<ReadResult> {
    tokio::task::spawn_blocking(move || {
        let result = reader
            .read_batch(&mut buf.spaces(reader.remaining()))
            .map(|n| {
                buf.set_len(n);
                buf
            });
        (reader, result)
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::buffers::BufferPool;
    use bytes::Bytes;
    use ferry_protocol::message::TO_END;
    use ferry_protocol::{ErrorCode, Principal};

    /// Runs a fetch while draining its sink, as the writer would: the chunks own the pool's
    /// buffers, so a fetch longer than the pool waits until they are written. Each chunk is
    /// copied out at once, which frees its buffer.
    async fn run_fetch(
        ctx: &Context,
        request: FetchRequest,
    ) -> (Result<u64, ServiceError>, Vec<Message>) {
        let (sink, mut rx) = sink();
        let ctx = ctx.clone();
        let task = tokio::spawn(async move { fetch(&ctx, request, &sink).await });
        let mut frames = Vec::new();
        while let Some((id, message)) = rx.recv().await {
            assert_eq!(id, ferry_protocol::RequestId(7));
            frames.push(match message {
                Message::Data(bytes) => Message::Data(Bytes::copy_from_slice(&bytes)),
                other => other,
            });
        }
        (task.await.unwrap(), frames)
    }

    /// The response, the data as one buffer with each chunk's length, and the end frame.
    fn split(frames: Vec<Message>) -> (Message, Vec<u8>, Vec<usize>, Message) {
        let mut frames = frames.into_iter();
        let response = frames.next().expect("a response");
        let mut data = Vec::new();
        let mut chunks = Vec::new();
        let mut end = None;
        for frame in frames {
            match frame {
                Message::Data(bytes) if end.is_none() => {
                    chunks.push(bytes.len());
                    data.extend_from_slice(&bytes);
                }
                other if end.is_none() => end = Some(other),
                other => panic!("a frame after the end: {other:?}"),
            }
        }
        (response, data, chunks, end.expect("an end"))
    }

    /// The test context reads 8 bytes at a time with 2 buffers and sends 4-byte chunks, so a
    /// 30-byte file takes four reads, read-ahead and the pool's wait.
    #[tokio::test]
    async fn a_range_arrives_in_chunks_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..30u8).collect();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let ctx = context(dir.path(), Principal::key_holder());
        for (offset, length) in [(0, TO_END), (3, 20), (30, TO_END)] {
            let request = FetchRequest {
                path: "f".into(),
                offset,
                length,
            };
            let (sent, frames) = run_fetch(&ctx, request).await;
            let sent = sent.unwrap();
            let (response, data, chunks, end) = split(frames);
            let want = &content[offset as usize..][..(length.min(30 - offset)) as usize];
            assert_eq!(data, want);
            assert_eq!(sent, want.len() as u64);
            assert!(chunks.iter().all(|&c| c <= 4 && c > 0), "{chunks:?}");
            assert!(
                matches!(response, Message::FetchResponse(r) if r.size == 30 && r.offset == offset && r.length == sent)
            );
            assert!(matches!(end, Message::FetchEnd(e) if e.bytes == sent
                    && e.digest == ferry_protocol::digest::fetch_digest(want)));
        }
    }

    /// Issue 10: on a connection that seals in place, a fetch reads straight into the pool's
    /// slots and queues each as a chunk that no one else holds, with room for the tag after
    /// it, so that the writer seals it where it lies: in order, with the range's digest, on the
    /// task's path (several reads, read-ahead, the pool's wait) and the whole-range one.
    #[tokio::test]
    async fn chunks_read_into_slots_can_be_sealed_where_they_lie() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..30u8).collect();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let ctx = Context {
            buffers: BufferPool::sealing_in_place(8, 2, 4, Some(16)),
            ..context(dir.path(), Principal::key_holder())
        };
        for length in [TO_END, 5] {
            let request = FetchRequest {
                path: "f".into(),
                offset: 1,
                length,
            };
            let (sink, mut rx) = sink();
            let task = {
                let ctx = ctx.clone();
                tokio::spawn(async move { fetch(&ctx, request, &sink).await })
            };
            let (mut data, mut end) = (Vec::new(), None);
            while let Some((_, message)) = rx.recv().await {
                match message {
                    Message::Data(chunk) => {
                        let slot = chunk.try_into_mut().expect("held by no one else");
                        assert!(slot.len() <= 4 && slot.capacity() - slot.len() >= 16);
                        data.extend_from_slice(&slot);
                    }
                    Message::FetchEnd(e) => end = Some(e),
                    _ => {}
                }
            }
            let want = &content[1..][..length.min(29) as usize];
            assert_eq!(task.await.unwrap().unwrap(), want.len() as u64);
            assert_eq!(data, want);
            assert_eq!(
                end.unwrap().digest,
                ferry_protocol::digest::fetch_digest(want)
            );
        }
    }

    /// A small file whose path and pages are cached is opened, read and hashed without the
    /// blocking pool, and its frames are queued as one burst.
    #[tokio::test]
    async fn a_cached_small_file_is_answered_inline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        // Read it once so its pages and path are cached, as for any hot file.
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
        let ctx = context(dir.path(), Principal::key_holder());
        let ctx = Context { chunk: 64, ..ctx };
        let request = FetchRequest {
            path: "f".into(),
            offset: 0,
            length: TO_END,
        };
        let path = ctx.readable("f").unwrap();
        // The first fetch of a file opens it on the blocking pool, and keeps it if it may.
        let (out, mut rx) = sink();
        assert_eq!(fetch(&ctx, request.clone(), &out).await.unwrap(), 5);
        drain(&mut rx);
        if ctx.tree.jail.resolver() == crate::fs::Resolver::Openat2 {
            let (reader, response, first) = open_inline(&ctx, &path, &request)
                .unwrap()
                .expect("a cached path opens inline");
            assert_eq!((response.size, reader.remaining()), (5, 0));
            let first = first.expect("cached pages read inline");
            assert_eq!(first.into_chunks(64).0, [&b"hello"[..]]);
        }
        let (sink, mut rx) = sink();
        assert_eq!(fetch(&ctx, request, &sink).await.unwrap(), 5);
        let frames = drain(&mut rx);
        assert!(
            matches!(&frames[..], [Message::FetchResponse(_), Message::Data(d), Message::FetchEnd(e)]
                if d[..] == b"hello"[..] && e.digest == ferry_protocol::digest::fetch_digest(b"hello")),
            "{frames:?}"
        );
    }

    /// The inline path resolves beneath the root like the blocking one: a link planted to a
    /// file outside, with every step of both paths in the kernel's cache, is refused, and no
    /// byte of the outside file is sent.
    #[tokio::test]
    async fn the_inline_path_refuses_a_link_out_of_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(outer.path().join("secret"), b"CANARY").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("planted")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("absolute")).unwrap();
        // Warm the caches through the links, as an attacker would before asking.
        for name in ["planted", "absolute"] {
            assert_eq!(std::fs::read(root.join(name)).unwrap(), b"CANARY");
        }
        let ctx = context(&root, Principal::key_holder());
        for name in ["planted", "absolute"] {
            let request = FetchRequest {
                path: name.into(),
                offset: 0,
                length: TO_END,
            };
            let path = ctx.readable(name).unwrap();
            match open_inline(&ctx, &path, &request) {
                Ok(Some(_)) => panic!("{name}: opened outside the root"),
                Ok(None) => {}
                Err(e) => assert_eq!(e.code(), ErrorCode::INVALID_PATH, "{name}: {e}"),
            }
            let frames = answer(
                &ctx,
                ferry_protocol::Service::FETCH,
                super::super::Request::Fetch(request),
            )
            .await;
            assert_eq!(error_code(&frames), ErrorCode::INVALID_PATH, "{name}");
        }
    }

    /// Once a fetch has kept a small file, the reader's on-the-spot answer is the same frames
    /// as a task's, digest included; a change shows at once; and when a directory on the path
    /// is swapped for a link out of the root, nothing is answered on the spot and the task
    /// refuses the path without sending a byte of the outside file.
    #[tokio::test]
    async fn a_kept_file_is_answered_on_the_spot_and_never_stale_or_outside() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir(outer.path().join("outside")).unwrap();
        std::fs::write(outer.path().join("outside/f"), b"CANARY").unwrap();
        std::fs::write(root.join("d/f"), b"hello").unwrap();
        let ctx = Context {
            chunk: 64,
            ..context(&root, Principal::key_holder())
        };
        let request = || FetchRequest {
            path: "d/f".into(),
            offset: 0,
            length: TO_END,
        };
        let (out, mut rx) = sink();
        fetch(&ctx, request(), &out).await.unwrap();
        let by_task = drain(&mut rx);
        let Some((on_the_spot, bytes)) = answer_kept(&ctx, RequestId(7), &request(), 16) else {
            // Nothing kept: no inotify, or a file system it cannot be trusted on.
            return;
        };
        assert_eq!((on_the_spot, bytes), (by_task, 5));
        assert!(
            answer_kept(&ctx, RequestId(7), &request(), 2).is_none(),
            "no room"
        );

        std::fs::write(root.join("d/f"), b"changed!").unwrap();
        // Dropped by the change's event: the next task opens it afresh and keeps it again.
        assert!(answer_kept(&ctx, RequestId(7), &request(), 16).is_none());
        let (out, mut rx) = sink();
        assert_eq!(fetch(&ctx, request(), &out).await.unwrap(), 8);
        let (frames, _) = answer_kept(&ctx, RequestId(7), &request(), 16).unwrap();
        assert_eq!(frames, drain(&mut rx));
        assert!(matches!(&frames[1], Message::Data(d) if d[..] == b"changed!"[..]));

        std::fs::rename(root.join("d"), root.join("d.old")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("outside"), root.join("d")).unwrap();
        assert!(answer_kept(&ctx, RequestId(7), &request(), 16).is_none());
        let frames = answer(
            &ctx,
            ferry_protocol::Service::FETCH,
            super::super::Request::Fetch(request()),
        )
        .await;
        assert_eq!(error_code(&frames), ErrorCode::INVALID_PATH);
    }

    /// A file `f` holding `content` in `root`, fetched whole once through a task (which is
    /// what keeps it open, where the cache may), with the context and request that did it.
    async fn fetched_once(root: &std::path::Path, content: &[u8]) -> (Context, FetchRequest) {
        std::fs::write(root.join("f"), content).unwrap();
        let ctx = Context {
            chunk: 64,
            ..context(root, Principal::key_holder())
        };
        let request = FetchRequest {
            path: "f".into(),
            offset: 0,
            length: TO_END,
        };
        let (out, mut rx) = sink();
        let sent = fetch(&ctx, request.clone(), &out).await.unwrap();
        assert_eq!(sent, content.len() as u64);
        drain(&mut rx);
        (ctx, request)
    }

    /// Issue 10: the answer on the spot takes a kept file's digest memo only for the bytes it
    /// holds. A memo planted with a wrong digest shows which digest is sent: the memo's when
    /// the bytes read are its bytes (the hash was spared), the bytes' own when they differ,
    /// as after a store through a shared `mmap`, which makes no event and leaves the file and
    /// its memo kept.
    #[tokio::test]
    async fn a_kept_files_digest_memo_is_used_only_for_its_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, request) = fetched_once(dir.path(), b"hello").await;
        let digest_sent = || {
            let (frames, _) = answer_kept(&ctx, RequestId(7), &request, 16)?;
            match &frames[..] {
                [_, Message::Data(d), Message::FetchEnd(e)] if d[..] == b"hello"[..] => {
                    Some(e.digest)
                }
                other => panic!("{other:?}"),
            }
        };
        let Some(first) = digest_sent() else {
            return; // nothing kept: no inotify, or a file system it cannot be trusted on
        };
        assert_eq!(first, ferry_protocol::digest::fetch_digest(b"hello"));

        let (key, path) = (JailKey::of(&ctx.tree.jail), ctx.readable("f").unwrap());
        let plant = |bytes: &[u8]| {
            let cache = EntryCache::shared();
            let (file, _, _) = cache.peek_file(key, &path).expect("kept");
            let memo = crate::fs::range::DigestMemo::planted(bytes, [0xAA; 32]);
            assert!(cache.confirm_file(key, &path, &file, Some(memo)));
        };
        plant(b"hello");
        assert_eq!(
            digest_sent(),
            Some([0xAA; 32]),
            "the memo's digest, not hashed"
        );
        plant(b"HELLO");
        assert_eq!(
            digest_sent(),
            Some(ferry_protocol::digest::fetch_digest(b"hello")),
            "other bytes than the memo's: hashed"
        );
    }

    /// A kept range larger than one read buffer (the test context's are 8 bytes) is left to a
    /// task, which reads it in several batches; answered on the spot, its end would count
    /// only the first buffer's bytes.
    #[tokio::test]
    async fn a_kept_range_larger_than_a_read_buffer_is_left_to_a_task() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, request) = fetched_once(dir.path(), b"hello, world").await;
        let (key, path) = (JailKey::of(&ctx.tree.jail), ctx.readable("f").unwrap());
        if EntryCache::shared().peek_file(key, &path).is_none() {
            return; // nothing kept: no inotify, or a file system it cannot be trusted on
        }
        assert_eq!(answer_kept(&ctx, RequestId(7), &request, 16), None);
    }

    #[tokio::test]
    async fn a_bad_range_or_a_directory_is_refused_before_any_frame() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let ctx = context(dir.path(), Principal::key_holder());
        for (path, offset, code) in [
            ("f", 4, ErrorCode::INVALID_RANGE),
            ("d", 0, ErrorCode::NOT_A_FILE),
        ] {
            let request = FetchRequest {
                path: path.into(),
                offset,
                length: TO_END,
            };
            let (result, frames) = run_fetch(&ctx, request).await;
            let err = result.unwrap_err();
            assert!(
                matches!(&err, ServiceError::Fs(e) if e.code() == code),
                "{err:?}"
            );
            assert!(frames.is_empty(), "{frames:?}");
        }
    }
}
