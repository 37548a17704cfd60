//! Whole trees: the remote tree is walked one directory listing at a time, depth first, and
//! its files are fetched `jobs` at a time; one file's failure is reported and the rest go on.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ferry_common::text::printable;
use ferry_jail::{Jail, RelPath};
use ferry_protocol::message::{Entry, EntryKind};
use futures::StreamExt;
use tracing::{debug, warn};

use super::conn::Conn;
use super::fetch::{Digests, Fetcher, Target};
use super::{
    local_error, safe_relative, when_not_busy, Cancel, Downloaded, GetOptions, TreeReport,
};
use crate::client::Client;
use crate::error::ClientError;
use crate::progress::TransferProgress;

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
    let conn = &Conn::new(client);
    let root = cancel
        .guard(conn.run(|c| async move { when_not_busy(|| c.stat(remote)).await }))
        .await?;
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
    let digests = Digests::default();
    let fetcher = Fetcher {
        conn,
        options,
        progress,
        cancel,
        digests: &digests,
    };
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
            .guard(conn.run(|c| {
                let dir = &dir;
                async move { when_not_busy(|| c.list_with(dir, false, 0, true)).await }
            }))
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
                let target = Target {
                    jail,
                    rel: &rel,
                    dest: &local,
                };
                let result = fetcher
                    .fetch_to(&remote_path, &entry, target, &entry.name)
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
