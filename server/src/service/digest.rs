//! The digest service (spec §3.11): BLAKE3 of a whole file, computed once per file version and
//! cached, so a client can verify a download that was assembled from several fetches.
//!
//! A version is `(dev, ino, size, mtime, ctime)`: any write changes mtime or ctime, so a cached
//! digest is never served for content it does not describe. The cache is bounded (oldest entry
//! out first); a client asking for many files only costs hashing time, not memory.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{DigestRequest, DigestResponse, EntryKind};
use ferry_protocol::Message;

use super::{Context, ServiceError, Sink};
use crate::fs::{FsError, Jail, Meta, RelPath};

/// Versions remembered. 32 bytes of digest plus the key each: about 100 KiB in all.
const CAPACITY: usize = 1024;
/// Bytes read per positioned read while hashing.
const READ: usize = 1 << 20;

/// Answers one digest request from the cache or by hashing on a blocking thread. Returns 0
/// data bytes.
pub(crate) async fn digest(
    ctx: &Context,
    request: DigestRequest,
    sink: &Sink,
) -> Result<u64, ServiceError> {
    let path = ctx.readable(&request.path)?;
    let tree = ctx.tree.clone();
    let response =
        tokio::task::spawn_blocking(move || tree.digests.digest(&tree.jail, &path)).await??;
    sink.send(Message::DigestResponse(response)).await?;
    Ok(0)
}

type Version = (u64, u64, u64, i64, u32, i64, u32);

fn version(meta: &Meta) -> Version {
    (
        meta.dev,
        meta.ino,
        meta.size,
        meta.mtime_secs,
        meta.mtime_nanos,
        meta.ctime_secs,
        meta.ctime_nanos,
    )
}

/// Digests of recently asked-for file versions.
#[derive(Debug, Default)]
pub(crate) struct DigestCache {
    inner: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    map: HashMap<Version, [u8; 32]>,
    order: VecDeque<Version>,
}

impl DigestCache {
    /// The digest of `path` as it is now, hashing it unless this version was hashed before.
    /// Blocking: call from a blocking thread. A file that changes while it is hashed is
    /// [`FsError::Changed`]; it is not cached.
    pub(crate) fn digest(&self, jail: &Jail, path: &RelPath) -> Result<DigestResponse, FsError> {
        let (file, meta) = jail.open_file(path)?;
        let key = version(&meta);
        let response = |digest| DigestResponse {
            size: meta.size,
            mtime_secs: meta.mtime_secs,
            mtime_nanos: meta.mtime_nanos,
            digest,
        };
        if let Some(digest) = self.lock().map.get(&key) {
            return Ok(response(*digest));
        }
        let io = |e: std::io::Error| FsError::Io {
            path: path.clone(),
            errno: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
        };
        let mut hasher = FetchDigest::new();
        let mut buf = vec![0u8; READ];
        let mut pos = 0u64;
        while pos < meta.size {
            let want = usize::try_from(meta.size - pos).unwrap_or(READ).min(READ);
            let n = match file.read_at(&mut buf[..want], pos) {
                // Shorter than it said: it shrank under us.
                Ok(0) => return Err(FsError::Changed(path.clone())),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        let now = rustix::fs::fstat(&file).map_err(|errno| FsError::Io {
            path: path.clone(),
            errno,
        })?;
        let after = Meta::from_stat(&now);
        if after.kind != EntryKind::FILE || !after.unchanged_since(&meta) {
            return Err(FsError::Changed(path.clone()));
        }
        let digest = hasher.finalize();
        let mut cached = self.lock();
        if cached.map.insert(key, digest).is_none() {
            cached.order.push_back(key);
            while cached.order.len() > CAPACITY {
                if let Some(old) = cached.order.pop_front() {
                    cached.map.remove(&old);
                }
            }
        }
        Ok(response(digest))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        // Inserts and removals keep `map` and `order` in step even if a panic interrupted one
        // (at worst an order entry without a map entry), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use ferry_protocol::Principal;

    #[test]
    fn digests_are_cached_per_version_and_follow_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        let jail = Jail::open(dir.path()).unwrap();
        let cache = DigestCache::default();
        let path = RelPath::parse("a", 64).unwrap();
        let first = cache.digest(&jail, &path).unwrap();
        assert_eq!(first.digest, ferry_protocol::digest::fetch_digest(b"hello"));
        assert_eq!(first.size, 5);
        assert_eq!(cache.digest(&jail, &path).unwrap(), first);
        assert_eq!(cache.len(), 1);
        // A new version (new size, mtime or ctime) is hashed again.
        std::fs::write(dir.path().join("a"), b"hello, world").unwrap();
        let second = cache.digest(&jail, &path).unwrap();
        assert_eq!(
            second.digest,
            ferry_protocol::digest::fetch_digest(b"hello, world")
        );
        // Directories are not files.
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let err = cache
            .digest(&jail, &RelPath::parse("d", 64).unwrap())
            .unwrap_err();
        assert_eq!(err.code(), ferry_protocol::ErrorCode::NOT_A_FILE);
    }

    #[tokio::test]
    async fn the_service_answers_from_the_shared_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        let ctx = context(dir.path(), Principal::key_holder());
        let (sink, mut rx) = sink();
        let request = || DigestRequest { path: "a".into() };
        assert_eq!(digest(&ctx, request(), &sink).await.unwrap(), 0);
        assert_eq!(digest(&ctx, request(), &sink).await.unwrap(), 0);
        let frames = drain(&mut rx);
        assert_eq!(frames.len(), 2);
        for frame in frames {
            assert!(
                matches!(&frame, Message::DigestResponse(r)
                    if r.digest == ferry_protocol::digest::fetch_digest(b"hello")),
                "{frame:?}"
            );
        }
        assert_eq!(ctx.tree.digests.len(), 1);
    }
}
