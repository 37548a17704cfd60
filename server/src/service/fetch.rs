//! Fetch (spec §3.7): large reads on a blocking thread, one read ahead of the frames being
//! queued, cut into chunks without copying.
//!
//! `FileReader` (fs/range.rs) is moved into a blocking read and back, so at most one read per
//! fetch is outstanding. Read buffers come from the connection's pool (buffers.rs); the
//! deadlock-freedom argument is in connection/STATE.md ("Fetch task").

use bytes::Bytes;
use ferry_protocol::message::FetchRequest;
use ferry_protocol::Message;

use super::{Context, ServiceError, Sink};
use crate::buffers::PooledBuf;
use crate::fs::{FileReader, FsError};

/// Answers one fetch request. Returns the data bytes sent.
///
/// The first read happens in the same blocking call as the open when a buffer is free, so a
/// small file costs one trip to the blocking pool, not two (that hop is most of a small
/// fetch's cost).
pub(crate) async fn fetch(
    ctx: &Context,
    request: FetchRequest,
    sink: &Sink,
) -> Result<u64, ServiceError> {
    let path = ctx.readable(&request.path)?;
    let tree = ctx.tree.clone();
    let pool = ctx.buffers.clone();
    let first_buf = pool.try_get();
    let (reader, response, first) = tokio::task::spawn_blocking(move || {
        let (mut reader, response) =
            FileReader::open(&tree.jail, path, request.offset, request.length)?;
        let first = match first_buf {
            Some(mut buf) if reader.remaining() > 0 => {
                let n = reader.read_batch(buf.space())?;
                buf.set_len(n);
                Some(buf)
            }
            _ => None,
        };
        Ok::<_, FsError>((reader, response, first))
    })
    .await??;
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
        let batch = Bytes::from_owner(batch);
        let mut at = 0;
        while at < batch.len() {
            let end = (at + chunk).min(batch.len());
            sink.send(Message::Data(batch.slice(at..end))).await?;
            at = end;
        }
    }
    let Some(reader) = reader else {
        return Err(ServiceError::Internal("fetch lost its reader".into()));
    };
    let end = reader.finish()?;
    sink.send(Message::FetchEnd(end)).await?;
    Ok(end.bytes)
}

type ReadResult = (FileReader, Result<PooledBuf, FsError>);

fn spawn_read(mut reader: FileReader, mut buf: PooledBuf) -> tokio::task::JoinHandle<ReadResult> {
    tokio::task::spawn_blocking(move || {
        let result = reader.read_batch(buf.space()).map(|n| {
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
