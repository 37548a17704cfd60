//! The partial file beside a download: its name (`.NAME.ferry-part`), its record
//! (`.NAME.ferry-part.meta`, format in the module docs of [`super`]), the lock that keeps two
//! downloads off one part, and the writer that fills it.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_jail::{Create, Jail, RelPath};
use ferry_protocol::digest::FetchDigest;
use tracing::warn;

use super::local_error;
use crate::error::ClientError;

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
    pub(super) fn for_entry(path: &str, size: u64, mtime_secs: i64, mtime_nanos: u32) -> Self {
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

    pub(super) fn same_file(&self, other: &Self) -> bool {
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

/// `.NAME{suffix}` beside `rel`, as [`part_path`] and [`meta_path`] name it.
pub(super) fn sibling_rel(
    rel: &RelPath,
    suffix: &str,
    dest: &Path,
) -> Result<RelPath, ClientError> {
    rel.with_file_name(&format!(".{}{suffix}", rel.file_name()))
        .map_err(|e| ClientError::Local(format!("{}: {e}", dest.display())))
}

/// Takes the partial file for this download: created if missing (never truncated here), and
/// locked so no other download writes it at the same time.
pub(super) fn claim_part(
    jail: &Jail,
    rel: &RelPath,
    part: &Path,
) -> Result<std::fs::File, ClientError> {
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
pub(super) fn write_error(
    part: &Path,
    error: std::io::Error,
    written: u64,
    size: u64,
) -> ClientError {
    if error.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
        return ClientError::Local(format!(
            "no space left on the device holding {}: the partial file was kept with {written} of {size} bytes; free at least {} bytes and run the same command again to resume, or delete it",
            part.display(),
            size.saturating_sub(written),
        ));
    }
    ClientError::io(part, error)
}

/// Writes the partial file's record: a few lines, in place, as `tokio::fs::write` did.
pub(super) fn write_meta(
    jail: &Jail,
    rel: &RelPath,
    path: &Path,
    meta: &PartMeta,
) -> Result<(), ClientError> {
    use std::io::Write;
    jail.create_file(rel, Create::Truncate)
        .map_err(|e| local_error(path, e))?
        .write_all(meta.to_text().as_bytes())
        .map_err(|e| ClientError::io(path, e))
}

/// Records the checkpoint of an interrupted download; best effort (resume works without it).
/// Without a hash the record written at the start stays as it is.
pub(super) fn keep_partial(
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

/// Writes a download's chunks to its part file on a blocking thread, in batches: through
/// `tokio::fs::File`, every 64 KiB chunk was copied and cost its own trip to the blocking pool,
/// which held `ferry get` to about 0.7x of curl's speed. One batch is written while the next
/// fills; chunks are moved, not copied, and a batch is one vectored write. A batch goes out
/// once it holds [`PartWriter::MIN_BATCH`] bytes and no write is in flight: writing each chunk
/// as it came whenever the writer was free cost a blocking-pool trip, two thread wake-ups and
/// a write per 64 KiB on a fast disk (issue 10). While a write is in flight, chunks gather up
/// to [`PartWriter::MAX_BATCH`]. [`PartWriter::finish`] writes whatever is left, so the part
/// holds every byte handed in whenever the download stops.
#[derive(Debug)]
pub(super) struct PartWriter<F = std::fs::File> {
    /// The file, while no batch is being written.
    idle: Option<F>,
    writing: Option<tokio::task::JoinHandle<(F, std::io::Result<()>)>>,
    batch: Vec<Bytes>,
    batch_len: usize,
}

/// What a [`PartWriter`] writes to: the part file (a recorder in tests).
pub(super) trait PartSink: std::io::Write + Send + 'static {
    /// Waits until the bytes written are on the storage device.
    fn sync_data(&self) -> std::io::Result<()>;
}

impl PartSink for std::fs::File {
    fn sync_data(&self) -> std::io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

impl<F: PartSink> PartWriter<F> {
    /// Bytes gathered before a batch goes to the blocking pool while the file is free.
    const MIN_BATCH: usize = 1 << 20;
    /// Bytes gathered before waiting for the write in flight.
    const MAX_BATCH: usize = 4 << 20;

    pub(super) fn new(file: F) -> Self {
        Self {
            idle: Some(file),
            writing: None,
            batch: Vec::new(),
            batch_len: 0,
        }
    }

    pub(super) async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        let writer_free =
            self.idle.is_some() || self.writing.as_ref().is_some_and(|w| w.is_finished());
        if (writer_free && self.batch_len >= Self::MIN_BATCH) || self.batch_len >= Self::MAX_BATCH {
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
            let result = write_all_vectored(&mut file, &batch);
            (file, result)
        }));
        Ok(())
    }

    async fn wait(&mut self) -> std::io::Result<F> {
        let handle = self
            .writing
            .take()
            .ok_or_else(|| std::io::Error::other("part writer lost its file"))?;
        let (file, result) = handle.await.map_err(std::io::Error::other)?;
        result.map(|()| file)
    }

    /// Writes everything gathered and syncs the data, so the part holds every byte handed in.
    pub(super) async fn finish(mut self) -> std::io::Result<()> {
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

/// Writes every chunk, in order, in as few `writev` calls as the kernel allows.
fn write_all_vectored(out: &mut impl std::io::Write, chunks: &[Bytes]) -> std::io::Result<()> {
    use std::io::{ErrorKind, IoSlice};
    // Linux takes at most 1024 slices per call (IOV_MAX); a server may send tiny frames.
    const MAX_SLICES: usize = 1024;
    let mut slices: Vec<IoSlice<'_>> = chunks
        .iter()
        .filter(|chunk| !chunk.is_empty())
        .map(|chunk| IoSlice::new(chunk))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let take = rest.len().min(MAX_SLICES);
        match out.write_vectored(&rest[..take]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut rest, written),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the length of every write call and the bytes written.
    #[derive(Debug, Clone, Default)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<(Vec<usize>, Vec<u8>)>>);

    impl std::io::Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[std::io::IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            let mut record = self.0.lock().unwrap();
            let len = bufs.iter().map(|b| b.len()).sum();
            record.0.push(len);
            bufs.iter().for_each(|b| record.1.extend_from_slice(b));
            Ok(len)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl PartSink for Recorder {
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 10: a fast download reaches the file in writes of at least a megabyte, one
    /// vectored write per batch, not one write (and one trip to the blocking pool) per 64 KiB
    /// chunk; `finish` writes the rest, and the bytes are the chunks in order.
    #[tokio::test]
    async fn chunks_reach_the_file_in_batches_of_at_least_a_megabyte() {
        let sink = Recorder::default();
        let mut writer = PartWriter::new(sink.clone());
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let chunk = Bytes::from(vec![i; 64 * 1024]);
            expected.extend_from_slice(&chunk);
            writer.write(chunk).await.unwrap();
        }
        writer.write(Bytes::from_static(b"tail")).await.unwrap();
        expected.extend_from_slice(b"tail");
        writer.finish().await.unwrap();
        let (calls, data) = &*sink.0.lock().unwrap();
        assert!(data == &expected, "the bytes are the chunks in order");
        let (_, batches) = calls.split_last().unwrap();
        assert!(batches.iter().all(|&len| len >= 1 << 20), "{calls:?}");
        assert!(calls.len() <= 3, "{calls:?}");
    }

    /// Takes at most 1000 bytes per call, from at most 1024 slices (IOV_MAX).
    struct Stingy(Vec<u8>);

    impl std::io::Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[std::io::IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            assert!(bufs.len() <= 1024, "{} slices", bufs.len());
            let mut taken = 0;
            for buf in bufs {
                let take = buf.len().min(1000 - taken);
                self.0.extend_from_slice(&buf[..take]);
                taken += take;
            }
            Ok(taken)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tiny_chunks_and_short_writes_still_write_everything_in_order() {
        let chunks: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![i as u8; (i % 5) as usize]))
            .collect();
        let mut out = Stingy(Vec::new());
        write_all_vectored(&mut out, &chunks).unwrap();
        assert_eq!(out.0, chunks.concat());
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
}
