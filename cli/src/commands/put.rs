//! `ferry put [-r] [-f] [--no-resume] LOCAL... URL`: uploads (spec §3.12), also used by the
//! shell's `put` and `mput`.

use std::path::{Path, PathBuf};

use super::Context;
use crate::cli::PutArgs;
use crate::progress::{self, Progress};
use ferry_client::client::Client;
use ferry_client::error::ClientError;
use ferry_client::transfer::{
    self, cancel_pair, remote_join, Cancel, PutOptions, PutTreeReport, Uploaded,
};
use ferry_protocol::message::EntryKind;
use ferry_protocol::ErrorCode;

pub async fn run(ctx: &Context, args: PutArgs) -> Result<(), ClientError> {
    let (locals, url) = args.targets().map_err(ClientError::Usage)?;
    let client = ctx.connect(&url).await?;
    // The URL's path loses a trailing slash; it still says "a directory".
    let dest = match args.args.last() {
        Some(raw) if raw.ends_with('/') && !url.path.is_empty() => format!("{}/", url.path),
        _ => url.path.clone(),
    };
    let options = PutOptions {
        force: args.force,
        parents: false,
        resume: !args.no_resume,
        jobs: args.jobs,
    };
    let progress = ctx.progress();
    let (handle, cancel) = cancel_pair();
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            handle.cancel();
        }
    });
    let note = |line: &str| ctx.note(line);
    let result = put_paths(
        &client,
        &locals,
        &dest,
        args.recursive,
        &options,
        &progress,
        &cancel,
        &note,
    )
    .await;
    watcher.abort();
    progress.clear();
    result
}

/// Whether the remote `dest` names a directory: the root, a path ending in `/`, or an existing
/// directory.
pub async fn remote_is_dir(client: &Client, dest: &str) -> Result<bool, ClientError> {
    if dest.is_empty() || dest.ends_with('/') {
        return Ok(true);
    }
    match client.stat(dest).await {
        Ok(entry) => Ok(entry.kind == EntryKind::DIRECTORY),
        Err(e) if e.remote_code() == Some(ErrorCode::NOT_FOUND) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Uploads each of `locals` to `dest`: into it under the local name when it is a directory
/// (several files need one), else as `dest` itself. A local directory needs `recursive`. A
/// failure does not stop the others (unless the connection is gone or Ctrl-C); the worst is
/// returned, the others printed once each.
#[allow(clippy::too_many_arguments)]
pub async fn put_paths(
    client: &Client,
    locals: &[PathBuf],
    dest: &str,
    recursive: bool,
    options: &PutOptions,
    progress: &Progress,
    cancel: &Cancel,
    note: &(dyn Fn(&str) + Sync),
) -> Result<(), ClientError> {
    let into_dir = cancel.guard(remote_is_dir(client, dest)).await?;
    // A destination ending in / is a directory to create, as the usage says.
    let options = &PutOptions {
        parents: options.parents || (dest.ends_with('/') && !dest.trim_matches('/').is_empty()),
        ..options.clone()
    };
    if locals.len() > 1 && !into_dir {
        return Err(ClientError::Usage(format!(
            "with several files the destination must be a directory: {dest} is not one (end it with / to create it)"
        )));
    }
    let mut failed: Vec<(String, ClientError)> = Vec::new();
    for local in locals {
        let result = put_one(
            client, local, dest, into_dir, recursive, options, progress, cancel, note,
        )
        .await;
        if let Err(e) = result {
            let stop = matches!(e, ClientError::Interrupted) || e.is_connection_error();
            failed.push((local.display().to_string(), e));
            if stop {
                break;
            }
        }
    }
    progress.clear();
    if locals.len() == 1 {
        return match failed.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        };
    }
    worst(failed, progress)
}

#[allow(clippy::too_many_arguments)]
async fn put_one(
    client: &Client,
    local: &Path,
    dest: &str,
    into_dir: bool,
    recursive: bool,
    options: &PutOptions,
    progress: &Progress,
    cancel: &Cancel,
    note: &(dyn Fn(&str) + Sync),
) -> Result<(), ClientError> {
    let meta = std::fs::metadata(local).map_err(|e| ClientError::io(local, e))?;
    let name = || {
        local
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                ClientError::Local(format!(
                    "{}: the upload needs a file name in utf-8",
                    local.display()
                ))
            })
    };
    let target = if into_dir {
        remote_join(dest, &name()?)
    } else {
        dest.to_owned()
    };
    if meta.is_dir() {
        if !recursive {
            return Err(ClientError::Local(format!(
                "{} is a directory; use put -r",
                local.display()
            )));
        }
        let report =
            transfer::upload_tree(client, local, &target, options, progress, cancel).await?;
        return tree_summary(&target, report, progress, note);
    }
    match transfer::upload_file(client, local, &target, options, progress, cancel).await {
        Ok(done) => {
            note(&file_summary(&done));
            Ok(())
        }
        Err(e) => {
            progress.clear();
            Err(hint(e))
        }
    }
}

/// Adds what to do to a refusal the user can act on.
fn hint(error: ClientError) -> ClientError {
    match error.remote_code() {
        Some(ErrorCode::ALREADY_EXISTS) => ClientError::About {
            what: "put".into(),
            source: Box::new(error),
            after: "; use -f (--force) to overwrite it".into(),
        },
        _ => error,
    }
}

/// `docs/a.txt: 10.00 MiB in 1.2s (8.33 MiB/s), blake3 3a7bd3e2…`, the remote path first.
pub fn file_summary(done: &Uploaded) -> String {
    let resumed = if done.resumed_from > 0 {
        format!(", resumed at {}", indicatif::HumanBytes(done.resumed_from))
    } else {
        String::new()
    };
    format!(
        "{} -> {}: {}{resumed}, blake3 {}",
        done.local.display(),
        if done.remote.is_empty() {
            "/"
        } else {
            &done.remote
        },
        progress::summary(done.sent, done.elapsed),
        &hex::encode(done.digest)[..16]
    )
}

fn tree_summary(
    target: &str,
    report: PutTreeReport,
    progress: &Progress,
    note: &(dyn Fn(&str) + Sync),
) -> Result<(), ClientError> {
    progress.clear();
    let failures = report.failed.len();
    let mut line = format!(
        "{}/: {} files uploaded, {}",
        target,
        report.files.len(),
        progress::summary(report.bytes, report.elapsed)
    );
    if report.empty_dirs > 0 {
        line.push_str(&format!(", {} empty directories made", report.empty_dirs));
    }
    if failures > 0 {
        line.push_str(&format!(", {failures} failed or skipped"));
    }
    note(&line);
    worst(report.failed, progress)
}

/// Prints every failure but the most serious, which is returned (naming its file) for the
/// caller to print as the exit reason.
fn worst(mut failed: Vec<(String, ClientError)>, progress: &Progress) -> Result<(), ClientError> {
    let worst = (0..failed.len())
        .rev()
        .max_by_key(|&i| failed[i].1.exit_code())
        .map(|i| failed.remove(i));
    for (path, error) in &failed {
        progress.println(&format!("ferry: {path}: {error}"));
    }
    match worst {
        Some((what, e)) => Err(ClientError::About {
            what,
            source: Box::new(e),
            after: String::new(),
        }),
        None => Ok(()),
    }
}
