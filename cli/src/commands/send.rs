//! `ferry send [-r] FILE... RECEIVER` (spec §3.13): offers files to someone running
//! `ferry receive`, then uploads the ones the receiver takes, as `ferry put` does (hashed first,
//! resumed, checked end to end). RECEIVER is `NAME@HUB` (direct hints, else the hub's relay;
//! the resolved id is required on every path) or `ferry://ID@HOST:PORT/`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;

use super::put::file_summary;
use super::{register, Context, Leg};
use crate::cli::SendArgs;
use crate::progress::Progress;
use ferry_client::client::hub::NamedSession;
use ferry_client::client::Client;
use ferry_client::error::ClientError;
use ferry_client::transfer::{self, cancel_pair, Cancel, PutOptions, Uploaded};
use ferry_common::url::FerryUrl;
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{offer_flags, OfferItem, OfferRequest, OfferResponse};
use ferry_protocol::ErrorCode;

/// How long the receiver may take to answer an offer: a person may be reading it. The
/// receiver itself declines after 5 minutes.
const ANSWER_WAIT: Duration = Duration::from_secs(330);

/// One thing offered: where it is here and how it is announced.
#[derive(Debug, Clone)]
struct Local {
    path: PathBuf,
    item: OfferItem,
}

pub async fn run(ctx: &Context, args: SendArgs) -> Result<(), ClientError> {
    let (last, files) = args
        .args
        .split_last()
        .ok_or_else(|| ClientError::Usage("send needs FILE... and a receiver".into()))?;
    let target = parse_receiver(last).map_err(ClientError::Usage)?;
    let (handle, cancel) = cancel_pair();
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            handle.cancel();
        }
    });
    let result = send(ctx, &args, files, &target, &cancel).await;
    watcher.abort();
    result
}

/// `NAME@HUB`, `ferry://NAME@HUB/` or `ferry://ID@HOST:PORT/`.
pub fn parse_receiver(text: &str) -> Result<FerryUrl, String> {
    if text.starts_with("ferry://") {
        let url: FerryUrl = text.parse().map_err(|e| format!("{text}: {e}"))?;
        if url.name.is_none() && url.server_id.is_none() {
            return Err(format!(
                "{text} names no receiver: use NAME@HUB or ferry://ID@HOST:PORT/ (the id that ferry receive prints)"
            ));
        }
        return Ok(url);
    }
    register::parse_target(text)
}

async fn send(
    ctx: &Context,
    args: &SendArgs,
    files: &[String],
    target: &FerryUrl,
    cancel: &Cancel,
) -> Result<(), ClientError> {
    let locals = {
        let (files, recursive) = (files.to_vec(), args.recursive);
        cancel
            .guard(async {
                tokio::task::spawn_blocking(move || collect(&files, recursive))
                    .await
                    .map_err(|e| ClientError::Local(format!("hashing task failed: {e}")))?
            })
            .await?
    };
    let who = match &target.name {
        Some(name) => name.clone(),
        None => target.authority(),
    };
    let (client, session) = cancel.guard(connect(ctx, target)).await?;
    let request = OfferRequest {
        items: locals.iter().map(|l| l.item.clone()).collect(),
        set: None,
    };
    let bytes: u64 = request.items.iter().map(|i| i.size).sum();
    ctx.note(&format!(
        "ferry: offering {} ({}) to {who}; waiting for the answer",
        plural(request.items.len(), "item"),
        indicatif::HumanBytes(bytes)
    ));
    let answer = cancel
        .guard(client.offer(request, ANSWER_WAIT))
        .await
        .map_err(|e| match e.remote_code() {
            Some(ErrorCode::OFFER_DECLINED) => ClientError::About {
                what: format!("{who} declined the offer"),
                source: Box::new(e),
                after: String::new(),
            },
            _ => e,
        })?;
    let progress = ctx.progress();
    let mut refused = Vec::new();
    let mut wanted = Vec::new();
    for (local, code) in locals.into_iter().zip(answer.codes) {
        match code {
            OfferResponse::ACCEPTED => wanted.push(local),
            ErrorCode::ALREADY_HAVE => ctx.note(&format!(
                "ferry: {who} already has {} (same size and digest); not sent",
                local.item.path
            )),
            code => refused.push((local.item.path, code)),
        }
    }
    let result = match &session {
        Some(session) => {
            let moving = Moving {
                ctx,
                session,
                who: &who,
                jobs: args.jobs,
                progress: &progress,
            };
            moving.upload(client, wanted, cancel).await
        }
        None => {
            let (done, failed) = upload(&client, &wanted, args.jobs, &progress, cancel).await;
            failed.map_or(Ok(done), Err)
        }
    };
    progress.clear();
    let sent = result?;
    for done in &sent {
        ctx.note(&file_summary(done));
    }
    for (path, code) in &refused {
        progress.println(&format!(
            "ferry: {who} refused {path}: {} ({code})",
            code.description()
        ));
    }
    match refused.first() {
        Some((path, code)) => Err(ClientError::Local(format!(
            "{} of the offered items were refused, first {path} ({code})",
            refused.len()
        ))),
        None => Ok(()),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Connects requiring the receiver's id: the one the hub resolves (through a
/// [`NamedSession`], which moves from the relay to a punched path when one appears), or the
/// one in the address.
async fn connect(
    ctx: &Context,
    target: &FerryUrl,
) -> Result<(Client, Option<NamedSession>), ClientError> {
    if target.name.is_some() {
        let named = register::connect_named(ctx, target).await?;
        tracing::info!(route = %named.route, node = %named.node, "connected to the receiver");
        let session = NamedSession::new(named);
        return Ok((session.client(), Some(session)));
    }
    Ok((ctx.connect(target).await?, None))
}

/// Uploads over a [`NamedSession`] that may move (relay to punched, HUB.md §4.1): the
/// uploads run on the path of the moment, and when the session moves they are stopped as
/// Ctrl-C would stop them, the old connection is closed (the receiver then keeps the partials
/// and waits for this sender, as after a broken connection), the items not yet stored are
/// offered again on the new path (a receiver takes them without asking again, §3.13), and
/// their uploads resume there from the bytes the receiver holds, checked end to end as ever.
struct Moving<'a> {
    ctx: &'a Context,
    session: &'a NamedSession,
    who: &'a str,
    jobs: u16,
    progress: &'a Progress,
}

impl Moving<'_> {
    async fn upload(
        &self,
        first: Client,
        wanted: Vec<Local>,
        cancel: &Cancel,
    ) -> Result<Vec<Uploaded>, ClientError> {
        let mut client = first;
        let mut left = wanted;
        let mut sent = Vec::new();
        loop {
            let leg = Leg::start(self.session, cancel);
            let route = leg.route;
            let (done, failed) =
                upload(&client, &left, self.jobs, self.progress, &leg.cancel).await;
            let moving = leg.moved(cancel);
            drop(leg);
            let stored: Vec<String> = done.iter().map(|d| d.remote.clone()).collect();
            sent.extend(done);
            match failed {
                None => {
                    sent.sort_by(|a, b| a.remote.cmp(&b.remote));
                    return Ok(sent);
                }
                Some(e) if !moving || !is_interrupted(&e) => return Err(e),
                Some(_) => {}
            }
            // Directories were made on the old path; only files are left to send.
            left.retain(|l| !l.item.is_directory() && !stored.contains(&l.item.path));
            self.progress.clear();
            let to = self.session.route();
            self.ctx.note(&format!(
                "ferry: moved from the {route} path to the {to} one with {} left to send; offering them again there",
                plural(left.len(), "item")
            ));
            drop(client);
            client = self.session.client();
            let request = OfferRequest {
                items: left.iter().map(|l| l.item.clone()).collect(),
                set: None,
            };
            let answer = cancel.guard(client.offer(request, ANSWER_WAIT)).await?;
            let mut again = Vec::new();
            for (local, code) in left.into_iter().zip(answer.codes) {
                match code {
                    OfferResponse::ACCEPTED => again.push(local),
                    // Stored by the old connection after all.
                    ErrorCode::ALREADY_HAVE => {}
                    code => {
                        return Err(ClientError::Local(format!(
                            "{} refused {} when it was offered again on the new path: {} ({code})",
                            self.who,
                            local.item.path,
                            code.description()
                        )))
                    }
                }
            }
            left = again;
        }
    }
}

/// A stop asked for by the leg's cancel, as `upload` reports it (the error may name its item).
fn is_interrupted(error: &ClientError) -> bool {
    match error {
        ClientError::Interrupted => true,
        ClientError::About { source, .. } => is_interrupted(source),
        _ => false,
    }
}

/// Uploads the accepted items, `jobs` at a time; directories first (their files need them).
/// Returns what was stored, and the first failure, after which nothing more starts.
async fn upload(
    client: &Client,
    wanted: &[Local],
    jobs: u16,
    progress: &Progress,
    cancel: &Cancel,
) -> (Vec<Uploaded>, Option<ClientError>) {
    for dir in wanted.iter().filter(|l| l.item.is_directory()) {
        if let Err(e) = cancel
            .guard(client.make_dir(&dir.item.path, dir.item.mode, true))
            .await
        {
            return (Vec::new(), Some(e));
        }
    }
    // Never -f: a receiver overwrites nothing (spec §3.13).
    let options = PutOptions {
        force: false,
        parents: true,
        resume: true,
        jobs,
    };
    let options = &options;
    let mut results = futures::stream::iter(wanted.iter().filter(|l| !l.item.is_directory()).map(
        |l| async move {
            transfer::upload_file(client, &l.path, &l.item.path, options, progress, cancel)
                .await
                .map_err(|e| ClientError::About {
                    what: l.item.path.clone(),
                    source: Box::new(e),
                    after: String::new(),
                })
        },
    ))
    .buffer_unordered(usize::from(jobs.max(1)));
    let mut done = Vec::new();
    while let Some(result) = results.next().await {
        match result {
            Ok(uploaded) => done.push(uploaded),
            Err(e) => return (done, Some(e)),
        }
    }
    done.sort_by(|a, b| a.remote.cmp(&b.remote));
    (done, None)
}

/// Everything offered: each file under its own name, each tree (with -r) under its
/// directory's name with its empty directories; hashed now, as the offer carries digests.
fn collect(files: &[String], recursive: bool) -> Result<Vec<Local>, ClientError> {
    let mut out = Vec::new();
    for file in files {
        let path = Path::new(file);
        let meta = std::fs::metadata(path).map_err(|e| ClientError::io(path, e))?;
        let name = base_name(path)?;
        if meta.is_dir() {
            if !recursive {
                return Err(ClientError::Usage(format!(
                    "{file} is a directory; use send -r"
                )));
            }
            walk(path, &name, &mut out)?;
        } else {
            out.push(hashed(path, name)?);
        }
    }
    Ok(out)
}

/// The name a local path is offered under: its last component (`.` and `..` resolved first).
fn base_name(path: &Path) -> Result<String, ClientError> {
    let real = std::fs::canonicalize(path).map_err(|e| ClientError::io(path, e))?;
    real.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            ClientError::Local(format!(
                "{}: a file is offered under its name, which must be utf-8",
                path.display()
            ))
        })
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<Local>) -> Result<(), ClientError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ClientError::io(dir, e))?
        .filter_map(Result::ok)
        .collect();
    if entries.is_empty() {
        let mode = std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o755);
        out.push(Local {
            path: dir.to_path_buf(),
            item: OfferItem {
                path: prefix.to_owned(),
                size: 0,
                mode,
                flags: offer_flags::DIRECTORY,
                digest: [0; 32],
            },
        });
        return Ok(());
    }
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(ClientError::Local(format!(
                "{}: the name is not utf-8",
                path.display()
            )));
        };
        let rel = format!("{prefix}/{name}");
        let meta = std::fs::metadata(&path).map_err(|e| ClientError::io(&path, e))?;
        if meta.is_dir() {
            // A link to a directory could loop; only real directories are walked.
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            walk(&path, &rel, out)?;
        } else if meta.is_file() {
            out.push(hashed(&path, rel)?);
        }
    }
    Ok(())
}

/// A file's offer item: size, permission bits and BLAKE3, in one read.
fn hashed(path: &Path, name: String) -> Result<Local, ClientError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
    let meta = file.metadata().map_err(|e| ClientError::io(path, e))?;
    if !meta.is_file() {
        return Err(ClientError::Local(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut hasher = FetchDigest::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| ClientError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Local {
        path: path.to_path_buf(),
        item: OfferItem {
            path: name,
            size,
            mode: meta.permissions().mode() & 0o7777,
            flags: 0,
            digest: hasher.finalize(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_are_named_at_a_hub_or_by_id() {
        let id = ferry_protocol::identity::Identity::from_secret([1; 32]).id();
        assert_eq!(
            parse_receiver("alice@hub.example.org:6790")
                .unwrap()
                .name
                .as_deref(),
            Some("alice")
        );
        let direct = parse_receiver(&format!("ferry://{id}@127.0.0.1:7000/")).unwrap();
        assert_eq!(direct.server_id, Some(id));
        assert!(parse_receiver("ferry://127.0.0.1:7000/").is_err());
        assert!(parse_receiver("hub.example.org").is_err());
    }

    #[test]
    fn a_tree_is_offered_under_its_name_with_its_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::create_dir_all(root.join("y")).unwrap();
        std::fs::write(root.join("a.jpg"), b"aaa").unwrap();
        std::fs::write(root.join("y/b.jpg"), b"b").unwrap();
        let files = [root.display().to_string()];
        assert!(collect(&files, false).is_err());
        let items: Vec<_> = collect(&files, true)
            .unwrap()
            .into_iter()
            .map(|l| (l.item.is_directory(), l.item))
            .map(|(dir, item)| (item.path, item.size, dir))
            .collect();
        assert_eq!(
            items,
            [
                ("photos/a.jpg".to_owned(), 3, false),
                ("photos/empty".to_owned(), 0, true),
                ("photos/y/b.jpg".to_owned(), 1, false),
            ]
        );
    }
}
