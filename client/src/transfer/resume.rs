//! Whether a partial file continues, and from where: its record must name the same remote
//! file (size and mtime), its bytes must match the checkpoint, and the server must state the
//! whole file's digest (spec §3.11) so the finished file can be checked as one.

use std::path::Path;
use std::time::Duration;

use ferry_common::text::printable;
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::ErrorCode;
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use super::fetch::Fetcher;
use super::part::{meta_path, part_path, PartMeta};
use super::when_not_busy;
use crate::client::Client;
use crate::error::ClientError;

/// Where a download starts: byte 0, or the end of a part that checked out.
pub(super) struct Start {
    pub(super) offset: u64,
    /// The hash state after the first `offset` bytes.
    pub(super) hasher: FetchDigest,
    /// The server's digest of the whole file, which a resumed download must match.
    pub(super) whole_digest: Option<[u8; 32]>,
}

impl Start {
    pub(super) fn fresh() -> Self {
        Self {
            offset: 0,
            hasher: FetchDigest::new(),
            whole_digest: None,
        }
    }
}

impl Fetcher<'_> {
    /// Where the download of `remote` into `dest`, whose partial file exists, starts: after the
    /// part when it checks out and the server states the whole file's digest, else at 0.
    pub(super) async fn resume_from(
        &self,
        client: &Client,
        remote: &str,
        wanted: &PartMeta,
        dest: &Path,
        label: &str,
    ) -> Result<Start, ClientError> {
        let part = part_path(dest);
        match resume_point(&part, &meta_path(dest), wanted, self.options.force).await? {
            Some((len, prefix)) if len > 0 => {
                let known = self
                    .digests
                    .lock()
                    .ok()
                    .and_then(|map| map.get(remote).copied());
                let asked = match known {
                    Some(d) => Ok(d),
                    None => {
                        self.cancel
                            .guard(when_not_busy(|| {
                                client.digest(remote, digest_timeout(wanted.size))
                            }))
                            .await
                    }
                };
                match asked {
                    Ok(d) => {
                        if let Ok(mut map) = self.digests.lock() {
                            map.insert(remote.to_string(), d);
                        }
                        if (d.size, d.mtime_secs, d.mtime_nanos)
                            != (wanted.size, wanted.mtime_secs, wanted.mtime_nanos)
                        {
                            return Err(ClientError::Integrity(format!(
                                "{remote} changed on the server since the partial download was started; delete {} or pass --force to start over",
                                part.display()
                            )));
                        }
                        info!(file = %dest.display(), offset = len, "resuming");
                        return Ok(Start {
                            offset: len,
                            hasher: prefix,
                            whole_digest: Some(d.digest),
                        });
                    }
                    Err(e) if e.remote_code() == Some(ErrorCode::UNKNOWN_REQUEST) => {
                        self.progress.println(&format!(
                            "ferry: {}: the server cannot state the whole file's digest (an older server), so the download starts over instead of resuming at byte {len}",
                            printable(label)
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => debug!(file = %dest.display(), "partial file not resumable; starting over"),
        }
        Ok(Start::fresh())
    }
}

/// How long the server may take to hash a whole file for the digest service: a minute, plus
/// the file at 20 MB/s (a slow disk).
pub(super) fn digest_timeout(size: u64) -> Duration {
    Duration::from_secs(60 + size / 20_000_000)
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

#[cfg(test)]
mod tests {
    use super::*;

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
