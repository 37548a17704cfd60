//! The shell's commands that ask the server: `ls`, `cd`, `stat`, `ping`, `get` (in the
//! foreground or as a job) and `mget`. Those that do not are in `local.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::message::EntryKind;
use futures::StreamExt;

use super::local::{absolute, expand_home};
use super::{help, split_flags, Shell};
use crate::commands::{self, print_lines, print_text};
use crate::format;
use crate::progress::{self, Progress};
use ferry_client::error::ClientError;
use ferry_client::transfer::{self, remote_name, Cancel, GetOptions};

impl Shell {
    pub(super) fn ls(&self, args: &[&str]) -> Result<(), ClientError> {
        let (flags, paths) = split_flags(args, "lR")?;
        let long = flags.contains('l');
        let recursive = flags.contains('R');
        let target = self.remote(paths.first().copied().unwrap_or(""));
        let client = self.client();
        let path = target.clone();
        let entries = self.block_on(async move {
            commands::ls::listing(&client, &path, recursive, u16::MAX, long).await
        })?;
        if !recursive {
            self.cache.put(&target, entries.clone());
        }
        if long {
            print_lines(entries.iter().map(format::long_line));
        } else {
            print_lines(entries.iter().map(format::display_name));
        }
        Ok(())
    }

    pub(super) fn cd(&self, args: &[&str]) -> Result<(), ClientError> {
        let target = self.remote(args.first().copied().unwrap_or("/"));
        if !target.is_empty() {
            let client = self.client();
            let path = target.clone();
            let entry = self.block_on(async move { client.stat(&path).await })?;
            if entry.kind != EntryKind::DIRECTORY {
                return Err(ClientError::Local(format!("/{target} is not a directory")));
            }
        }
        self.set_cwd(target);
        Ok(())
    }

    pub(super) fn stat(&self, args: &[&str]) -> Result<(), ClientError> {
        let [path] = args else {
            return Err(ClientError::Usage("usage: stat PATH".into()));
        };
        let target = self.remote(path);
        let client = self.client();
        let path = target.clone();
        let entry = self.block_on(async move { client.stat(&path).await })?;
        print_text(&format::stat_text(&target, &entry));
        Ok(())
    }

    pub(super) fn ping(&self, args: &[&str]) -> Result<(), ClientError> {
        let count: u32 = match args.first() {
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ClientError::Usage(format!("not a count: {n}")))?,
            None => 3,
        };
        let client = self.client();
        self.block_on(async move {
            for seq in 1..=count {
                if seq > 1 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let rtt = client.ping(Bytes::from_static(&[0x5a; 32])).await?;
                print_lines([format!(
                    "pong from {}: seq={seq} time={:.3} ms",
                    client.peer(),
                    rtt.as_secs_f64() * 1000.0
                )]);
            }
            Ok(())
        })
    }

    pub(super) fn get(&mut self, args: &[&str], background: bool) -> Result<(), ClientError> {
        let mut options = GetOptions::default();
        let mut recursive = false;
        let mut positional = Vec::new();
        let mut iter = args.iter();
        let mut flags_done = false;
        let mut out = None;
        while let Some(arg) = iter.next() {
            match *arg {
                "--" if !flags_done => flags_done = true,
                "-r" | "-R" if !flags_done => recursive = true,
                "-f" if !flags_done => options.force = true,
                // As `ferry get -o`: the destination as a flag.
                "-o" | "--out" if !flags_done => {
                    let dest = iter
                        .next()
                        .ok_or_else(|| ClientError::Usage(format!("{arg} takes a destination")))?;
                    out = Some(dest);
                }
                "-j" if !flags_done => {
                    options.jobs = iter
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| (1..=32).contains(n))
                        .ok_or_else(|| ClientError::Usage("-j takes 1 to 32".into()))?;
                }
                flag if flag.starts_with('-') && flag.len() > 1 && !flags_done => {
                    return Err(ClientError::Usage(format!(
                        "get: unknown option {flag}; usage: {}",
                        help::find("get").map_or("", |c| c.usage)
                    )))
                }
                path => positional.push(path),
            }
        }
        let (remote_arg, dest) = match (positional.as_slice(), out) {
            ([remote], None) => (*remote, None),
            ([remote], Some(dest)) | ([remote, dest], None) => {
                (*remote, Some(PathBuf::from(expand_home(dest))))
            }
            _ => {
                return Err(ClientError::Usage(format!(
                    "usage: {}",
                    help::find("get").map_or("", |c| c.usage)
                )))
            }
        };
        let remote = self.remote(remote_arg);
        let label = format!("get {}", args.join(" "));
        // Background jobs must not follow a later lcd: fix local paths now.
        let dest = dest.map(|d| absolute(&d)).transpose()?;
        let client = self.client();
        if recursive {
            let dest = match dest {
                Some(dest) => dest,
                None => absolute(Path::new(
                    remote_name(&remote).unwrap_or(self.server.host.as_str()),
                ))?,
            };
            let run = move |progress: Progress, cancel: Cancel| async move {
                let report =
                    transfer::download_tree(&client, &remote, &dest, &options, &progress, &cancel)
                        .await?;
                let line = summarize_tree(&progress, report)?;
                Ok(format!(
                    "{}/: {line}",
                    commands::get::shown(&dest).display()
                ))
            };
            if background {
                self.spawn_job(label, run);
                return Ok(());
            }
            let progress = self.ctx.progress();
            let result = self.transfer(|cancel| run(progress.clone(), cancel));
            progress.clear();
            self.ctx.note(&result?);
            return Ok(());
        }
        let dest = absolute(&transfer::resolve_dest(&remote, dest.as_deref())?)?;
        let run = move |progress: Progress, cancel: Cancel| async move {
            let done =
                transfer::download_file(&client, &remote, &dest, &options, &progress, &cancel)
                    .await?;
            Ok(commands::get::file_summary(&done))
        };
        if background {
            self.spawn_job(label, run);
            return Ok(());
        }
        let progress = self.ctx.progress();
        let result = self.transfer(|cancel| run(progress.clone(), cancel));
        // Ctrl-C abandons the bar; take it off the screen before the error is printed.
        progress.clear();
        self.ctx.note(&result?);
        Ok(())
    }

    pub(super) fn mget(&mut self, args: &[&str]) -> Result<(), ClientError> {
        let (flags, patterns) = split_flags(args, "f")?;
        if patterns.is_empty() {
            return Err(ClientError::Usage("usage: mget [-f] GLOB...".into()));
        }
        let options = GetOptions {
            force: flags.contains('f'),
            ..GetOptions::default()
        };
        let mut wanted = Vec::new();
        for pattern in &patterns {
            let full = self.remote(pattern);
            let (dir, name_glob) = match full.rsplit_once('/') {
                Some((dir, name)) => (dir.to_string(), name.to_string()),
                None => (String::new(), full.clone()),
            };
            if dir.contains(['*', '?', '[']) {
                return Err(ClientError::Usage(format!(
                    "{pattern}: patterns match names within one directory"
                )));
            }
            let matcher = glob::Pattern::new(&name_glob)
                .map_err(|e| ClientError::Usage(format!("{pattern}: {e}")))?;
            let client = self.client();
            let listed_dir = dir.clone();
            let entries = self.block_on(async move { client.list(&listed_dir, false, 0).await })?;
            let before = wanted.len();
            for entry in entries {
                // One plain name per entry; anything else could write outside the local
                // directory.
                let plain = transfer::safe_relative(&entry.name)
                    .is_some_and(|p| p.components().count() == 1);
                if entry.kind == EntryKind::FILE && plain && matcher.matches(&entry.name) {
                    let path = if dir.is_empty() {
                        entry.name.clone()
                    } else {
                        format!("{dir}/{}", entry.name)
                    };
                    wanted.push((path, absolute(Path::new(&entry.name))?));
                }
            }
            if wanted.len() == before {
                return Err(ClientError::Local(format!("{pattern}: no matching files")));
            }
        }
        wanted.sort();
        wanted.dedup();
        let label = format!("mget {} ({} files)", patterns.join(" "), wanted.len());
        let client = self.client();
        let run = move |progress: Progress, cancel: Cancel| async move {
            let started = Instant::now();
            let results: Vec<(String, Result<transfer::Downloaded, ClientError>)> =
                futures::stream::iter(wanted.into_iter().map(|(remote, dest)| {
                    let (client, options, progress, cancel) =
                        (&client, &options, &progress, &cancel);
                    async move {
                        let r = transfer::download_file(
                            client, &remote, &dest, options, progress, cancel,
                        )
                        .await;
                        (remote, r)
                    }
                }))
                .buffer_unordered(options.jobs)
                .collect()
                .await;
            let mut report = transfer::TreeReport {
                elapsed: started.elapsed(),
                ..Default::default()
            };
            for (remote, result) in results {
                match result {
                    Ok(done) => {
                        report.bytes += done.fetched;
                        report.files.push(done);
                    }
                    Err(e) => report.failed.push((remote, e)),
                }
            }
            summarize_tree(&progress, report)
        };
        if self.batch {
            let progress = Progress::hidden();
            let line = self.transfer(|cancel| run(progress, cancel))?;
            self.ctx.note(&line);
        } else {
            self.spawn_job(label, run);
        }
        Ok(())
    }
}

/// One summary line for a tree or mget; the worst failure becomes the error.
fn summarize_tree(
    progress: &Progress,
    report: transfer::TreeReport,
) -> Result<String, ClientError> {
    let fetched = report.files.iter().filter(|f| !f.skipped).count();
    let skipped = report.files.len() - fetched;
    let mut line = format!(
        "{fetched} file(s), {}",
        progress::summary(report.bytes, report.elapsed)
    );
    if skipped > 0 {
        line.push_str(&format!(", {skipped} already up to date"));
    }
    if report.failed.is_empty() {
        return Ok(line);
    }
    if report
        .failed
        .iter()
        .any(|(_, e)| matches!(e, ClientError::Interrupted))
    {
        return Err(ClientError::Interrupted);
    }
    // The worst failure becomes the error, naming its path; the others are printed here, so
    // each is said once.
    let mut failed = report.failed;
    let count = failed.len();
    let worst = (0..failed.len())
        .rev()
        .max_by_key(|&i| failed[i].1.exit_code())
        .map(|i| failed.remove(i));
    for (path, e) in &failed {
        progress.println(&format!("ferry: {path}: {e}"));
    }
    match worst {
        Some((path, e)) => Err(ClientError::About {
            what: path,
            source: Box::new(e),
            after: format!(" ({count} failed; {line})"),
        }),
        None => Ok(line),
    }
}
