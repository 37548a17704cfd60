//! `ferry get URL [DEST] [-r] [--resume | --no-resume] [-j N] [--force]`.

use std::path::PathBuf;

use super::{register, Context, Leg};
use crate::cli::GetArgs;
use crate::progress::{self, Progress};
use ferry_client::client::hub::NamedSession;
use ferry_client::error::ClientError;
use ferry_client::transfer::{
    self, cancel_pair, part_path, remote_name, Cancel, Downloaded, GetOptions, TreeReport,
};
use ferry_client::Client;
use ferry_common::FerryUrl;

pub async fn run(ctx: &Context, args: GetArgs) -> Result<(), ClientError> {
    let (urls, dest) = args.targets().map_err(ClientError::Usage)?;
    if urls.len() > 1 {
        return run_many(ctx, &args, urls, dest).await;
    }
    let (client, session) = open(ctx, &args.url).await?;
    let options = get_options(&args);
    let progress = ctx.progress();
    let (watcher, cancel) = cancel_on_ctrl_c();
    let path = &args.url.path;
    let result = if args.recursive {
        let dest = args
            .dest()
            .unwrap_or_else(|| PathBuf::from(remote_name(path).unwrap_or(args.url.host.as_str())));
        transfer::download_tree(&client, path, &dest, &options, &progress, &cancel)
            .await
            .and_then(|report| tree_summary(ctx, &progress, &dest, report))
    } else if args.dest().is_some_and(|d| d.as_os_str() == "-") {
        // `get URL -`: the file on stdout (the curl and scp convention), progress on stderr.
        // The bytes are out before the end digest is checked: a failure still exits 4.
        let mut stdout = tokio::io::stdout();
        transfer::download_to_writer(&client, path, &mut stdout, &options, &progress, &cancel)
            .await
            .map(|done| ctx.note(&file_summary(&done)))
    } else {
        match transfer::resolve_dest(path, args.dest().as_deref()) {
            Ok(dest) => {
                let on = On {
                    client: &client,
                    session: session.as_ref(),
                };
                fetch_one(ctx, on, path, &dest, &options, &progress, &cancel).await
            }
            Err(e) => Err(e),
        }
    };
    watcher.abort();
    // A transfer stopped early (Ctrl-C, an error) abandons its bar: take it off the screen
    // before the note and the error are printed.
    progress.clear();
    result
}

fn get_options(args: &GetArgs) -> GetOptions {
    GetOptions {
        force: args.force,
        resume: !args.no_resume,
        jobs: args.jobs.into(),
        min_progress: args.min_progress,
    }
}

/// Ctrl-C asks the transfers to stop; they flush and record their partial files first. Abort
/// the returned task when the transfers are over.
fn cancel_on_ctrl_c() -> (tokio::task::JoinHandle<()>, Cancel) {
    let (handle, cancel) = cancel_pair();
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            handle.cancel();
        }
    });
    (watcher, cancel)
}

/// `get URL URL... [DEST]`: each into the directory DEST (default: the current one) under its
/// remote name, one after the other; a failure does not stop the rest, the worst sets the exit
/// code, and each is said once.
async fn run_many(
    ctx: &Context,
    args: &GetArgs,
    urls: Vec<ferry_common::FerryUrl>,
    dest: Option<PathBuf>,
) -> Result<(), ClientError> {
    let dir = dest.unwrap_or_else(|| PathBuf::from("."));
    if dir.as_os_str() == "-" {
        return Err(ClientError::Usage(
            "several URLs cannot all go to stdout; name a directory".into(),
        ));
    }
    if !dir.is_dir() {
        if !dir.to_string_lossy().ends_with('/') {
            return Err(ClientError::Usage(format!(
                "with several URLs the destination must be a directory: {} is not one (end it with / to create it)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(&dir).map_err(|e| ClientError::io(&dir, e))?;
    }
    let options = get_options(args);
    let progress = ctx.progress();
    let (watcher, cancel) = cancel_on_ctrl_c();
    let mut failed: Vec<(String, ClientError)> = Vec::new();
    for url in &urls {
        let path = &url.path;
        let result = match open(ctx, url).await {
            Ok((client, _)) if args.recursive => {
                let tree = dir.join(remote_name(path).unwrap_or(url.host.as_str()));
                transfer::download_tree(&client, path, &tree, &options, &progress, &cancel)
                    .await
                    .and_then(|report| tree_summary(ctx, &progress, &tree, report))
            }
            Ok((client, session)) => match transfer::resolve_dest(path, Some(&dir.join(""))) {
                Ok(dest) => {
                    let on = On {
                        client: &client,
                        session: session.as_ref(),
                    };
                    fetch_one(ctx, on, path, &dest, &options, &progress, &cancel).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let stop = matches!(e, ClientError::Interrupted);
            failed.push((url.to_string(), e));
            if stop {
                break;
            }
        }
    }
    watcher.abort();
    progress.clear();
    // The first of the most serious failures is the exit reason, printed by `main`; the
    // others are printed here, each once.
    let worst = (0..failed.len())
        .rev()
        .max_by_key(|&i| failed[i].1.exit_code())
        .map(|i| failed.remove(i));
    for (url, e) in &failed {
        progress.println(&format!("ferry: {}: {e}", crate::format::printable(url)));
    }
    match worst {
        Some((url, e)) => Err(ClientError::About {
            what: url,
            source: Box::new(e),
            after: String::new(),
        }),
        None => Ok(()),
    }
}

/// Connects to `url`: a named node (`ferry://NAME@HUB/`) through a [`NamedSession`], which
/// moves from the relay to a punched path when one appears; any other address plainly.
async fn open(
    ctx: &Context,
    url: &FerryUrl,
) -> Result<(Client, Option<NamedSession>), ClientError> {
    if url.name.is_none() {
        return Ok((ctx.connect(url).await?, None));
    }
    let session = NamedSession::new(register::connect_named(ctx, url).await?);
    Ok((session.client(), Some(session)))
}

/// Where a file is fetched from: the connection, and the session it came from when the node
/// was named at a hub.
#[derive(Clone, Copy)]
struct On<'a> {
    client: &'a Client,
    session: Option<&'a NamedSession>,
}

async fn fetch_one(
    ctx: &Context,
    on: On<'_>,
    path: &str,
    dest: &std::path::Path,
    options: &GetOptions,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<(), ClientError> {
    let result = match on.session {
        // Without resume the rest could not continue from the byte reached: stay on the path.
        Some(session) if options.resume => {
            fetch_moving(ctx, session, path, dest, options, progress, cancel).await
        }
        _ => transfer::download_file(on.client, path, dest, options, progress, cancel).await,
    };
    match result {
        Ok(done) => {
            ctx.note(&file_summary(&done));
            Ok(())
        }
        Err(e) => {
            // Off the screen before anything is printed below it.
            progress.clear();
            let part = part_path(dest);
            let stopped = matches!(e, ClientError::Interrupted) || e.is_connection_error();
            if stopped && part.exists() {
                ctx.note(&format!(
                    "partial download kept in {}; run the same command again to resume",
                    part.display()
                ));
            }
            Err(e)
        }
    }
}

/// [`transfer::download_file`] over a [`NamedSession`], in legs: each runs on the session's
/// path of the moment, and when the session moves (relay to punched, HUB.md §4.3) the leg is
/// stopped as Ctrl-C would stop it (what arrived is flushed and recorded in the partial file)
/// and the next leg resumes from the byte reached on the new path. Nothing is fetched twice but
/// what was in flight on the old path; the whole file's digest is still checked at the end.
async fn fetch_moving(
    ctx: &Context,
    session: &NamedSession,
    path: &str,
    dest: &std::path::Path,
    options: &GetOptions,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<Downloaded, ClientError> {
    let started = std::time::Instant::now();
    loop {
        let leg = Leg::start(session, cancel);
        let route = leg.route;
        let client = session.client();
        let result =
            transfer::download_file(&client, path, dest, options, progress, &leg.cancel).await;
        let moved = leg.moved(cancel);
        drop(leg);
        match result {
            Err(ClientError::Interrupted) if moved => {
                progress.clear();
                let reached = std::fs::metadata(part_path(dest)).map_or(0, |m| m.len());
                ctx.note(&format!(
                    "ferry: {path}: moved from the {route} path to the {} one at byte {reached}; the rest continues there",
                    session.route()
                ));
            }
            Ok(mut done) => {
                done.elapsed = started.elapsed();
                return Ok(done);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A local path as the user would like to read it: relative to the current directory when it
/// is inside it.
pub fn shown(path: &std::path::Path) -> std::path::PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.to_path_buf()))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
}

/// `a.txt: 10.00 MiB in 1.2s (8.33 MiB/s), blake3 3a7bd3e2…`.
pub fn file_summary(done: &Downloaded) -> String {
    let resumed = if done.resumed_from > 0 {
        format!(", resumed at {}", indicatif::HumanBytes(done.resumed_from))
    } else {
        String::new()
    };
    format!(
        "{}: {}{resumed}, blake3 {}",
        shown(&done.dest).display(),
        progress::summary(done.fetched, done.elapsed),
        &hex::encode(done.digest)[..16]
    )
}

/// Prints the per-file failures and one summary line; fails with the most serious error. Each
/// failure is said once: the worst is not printed here but returned, naming its path, for the
/// caller to print as the exit reason.
pub fn tree_summary(
    ctx: &Context,
    progress: &Progress,
    dest: &std::path::Path,
    report: TreeReport,
) -> Result<(), ClientError> {
    progress.clear();
    let fetched = report.files.iter().filter(|f| !f.skipped).count();
    let skipped = report.files.len() - fetched;
    let mut failed = report.failed;
    let failures = failed.len();
    // The first of the most serious failures is the exit reason (`max_by_key` keeps the last
    // maximum, hence `rev`).
    let worst = (0..failed.len())
        .rev()
        .max_by_key(|&i| failed[i].1.exit_code())
        .map(|i| failed.remove(i));
    for (path, error) in &failed {
        progress.println(&format!("ferry: {path}: {error}"));
    }
    let mut line = format!(
        "{}/: {fetched} files fetched, {}",
        shown(dest).display(),
        progress::summary(report.bytes, report.elapsed)
    );
    if skipped > 0 {
        line.push_str(&format!(", {skipped} already up to date"));
    }
    if failures > 0 {
        line.push_str(&format!(", {failures} failed"));
    }
    ctx.note(&line);
    match worst {
        Some((path, e)) => Err(ClientError::About {
            what: path,
            source: Box::new(e),
            after: String::new(),
        }),
        None => Ok(()),
    }
}
