//! `ferry receive [NAME@HUB] [--from SENDER] [-o DIR] [--listen ADDR | --relay-only]`: waits for
//! `ferry send` (spec §3.13). Senders reach this machine directly on `--listen` or, at a hub,
//! through its relay (this machine stays present there under NAME, as `ferry-server --hub`
//! does). Who may send: `--from`'s sender, and ids in authorized_clients, at once; anyone else
//! after a y/N question on the terminal, and nobody without one. The files arrive through the
//! server's own upload service (`ferry_server::receive`): confined to DIR, never overwriting,
//! resumed when a sender comes back after an interruption.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{register, trust, Context};
use crate::cli::ReceiveArgs;
use crate::progress::{self, Progress};
use ferry_client::client::hub::hub_error;
use ferry_client::error::ClientError;
use ferry_common::url::FerryUrl;
use ferry_hub::{HubConn, PresenceConfig, Status};
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::message::{OfferItem, OfferResponse};
use ferry_protocol::transport::Acceptor;
use ferry_protocol::ErrorCode;
use ferry_server::receive::{Event, Offer, Receiver, Receiving, Stored};
use indicatif::ProgressBar;

/// How long the hub may take to acknowledge the presence before `receive` gives up.
const PRESENT_WITHIN: Duration = Duration::from_secs(20);

pub async fn run(ctx: &Context, args: ReceiveArgs) -> Result<(), ClientError> {
    if args.at.is_none() && args.relay_only {
        return Err(ClientError::Usage(
            "--relay-only needs NAME@HUB: otherwise no sender can reach this machine".into(),
        ));
    }
    let identity = ctx.identity()?;
    std::fs::create_dir_all(&args.out).map_err(|e| ClientError::io(&args.out, e))?;
    let (receiver, mut events) =
        Receiver::open(&args.out, identity.clone(), ferry_server::Limits::default())
            .map_err(|e| ClientError::io(&args.out, e))?;
    let receiver = Arc::new(receiver);
    let from = match &args.from {
        Some(text) => Some(sender_id(ctx, text, &identity).await?),
        None => None,
    };

    let mut listening = Vec::new();
    if !args.relay_only {
        for addr in &args.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ClientError::Local(format!("cannot listen on {addr}: {e}")))?;
            let bound = listener
                .local_addr()
                .map_err(|e| ClientError::Local(format!("cannot listen on {addr}: {e}")))?;
            listening.push(bound);
            let receiver = receiver.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            let stream = ferry_protocol::transport::tcp_stream(stream);
                            let receiver = receiver.clone();
                            tokio::spawn(async move { receiver.serve(stream, peer).await });
                        }
                        Err(e) => {
                            tracing::warn!("accepting a sender failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
    }
    let me = identity.id();
    // Kept alive for the whole wait: dropping it leaves the hub.
    let _presence = match &args.at {
        Some(at) => Some(
            present(
                at,
                &identity,
                &listening,
                !args.relay_only,
                receiver.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let out = args.out.display().to_string();
    for addr in &listening {
        let shown = if addr.ip().is_unspecified() {
            format!("HOST:{}", addr.port())
        } else {
            addr.to_string()
        };
        ctx.note(&format!(
            "ferry: receiving into {out} directly: ferry send FILE ferry://{me}@{shown}/"
        ));
    }
    if let Some(at) = &args.at {
        let name = at.name.clone().unwrap_or_default();
        ctx.note(&format!(
            "ferry: receiving into {out} as {name}: ferry send FILE {name}@{}",
            at.hints()[0].authority()
        ));
    }
    ctx.note("ferry: waiting for an offer (Ctrl-C to stop)");

    let authorised = authorised_ids();
    // Items accepted in this run, per sender: a sender whose connection moved (relay to
    // punched) offers the rest again, and is not asked about twice (spec §3.13).
    let mut taken = HashSet::new();
    let mut shown = Shown::new(ctx);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tick.tick(), if !shown.files.is_empty() => {
                shown.update();
                continue;
            }
            _ = tokio::signal::ctrl_c() => {
                shown.progress.clear();
                return Err(ClientError::Interrupted);
            }
        };
        let Some(event) = event else {
            shown.progress.clear();
            return Err(ClientError::Local("the receiver stopped".into()));
        };
        match event {
            Event::Offer(offer) => {
                let refused = refused_bytes(&offer.items, &offer.checks);
                let all = match offer.set {
                    Some(set) => set.bytes,
                    None => offer.items.iter().map(|i| i.size).sum(),
                };
                let count = offer
                    .set
                    .map_or(offer.items.len() as u64, |s| u64::from(s.items));
                if decide(ctx, offer, from, &authorised, &mut taken, &out).await {
                    shown.expect(count, all.saturating_sub(refused));
                }
            }
            Event::Continued(more) => {
                // Items of the set refused now no longer count towards the total.
                shown.refuse(refused_bytes(&more.items, &more.checks));
                for (item, code) in more.items.iter().zip(&more.checks) {
                    if *code != OfferResponse::ACCEPTED {
                        shown.progress.println(&format!(
                            "ferry: not taking {}: {} ({code})",
                            item.path,
                            code.description()
                        ));
                    }
                }
            }
            Event::Receiving(receiving) => shown.start(receiving),
            Event::Stored(stored) => {
                shown.stored(&stored);
                let item = &stored.item;
                let kind = if item.is_directory() {
                    "directory".to_owned()
                } else {
                    format!("{}", indicatif::HumanBytes(item.size))
                };
                let resumed = if item.size > stored.received {
                    format!(
                        ", resumed at {} ({} received now)",
                        item.size - stored.received,
                        stored.received
                    )
                } else {
                    String::new()
                };
                let line = format!(
                    "received {} ({kind}{resumed}) from {}, blake3 {}",
                    item.path,
                    stored.sender,
                    &hex::encode(item.digest)[..16]
                );
                shown.progress.suspend(|| super::print_lines([line]));
            }
            // A connection whose offer was taken: whole, the wait is over.
            Event::Ended(ended) if ended.accepted => {
                shown.update();
                shown.clear();
                if ended.missing.is_empty() {
                    ctx.note(&format!(
                        "ferry: everything {} sent has arrived in {out}{}",
                        ended.sender,
                        shown.summary()
                    ));
                    return Ok(());
                }
                let bytes: u64 = ended.missing.iter().map(|i| i.size).sum();
                ctx.note(&format!(
                    "ferry: {} left with {} of its items ({}) not arrived; waiting for it to send again (it resumes)",
                    ended.sender,
                    ended.missing.len(),
                    indicatif::HumanBytes(bytes)
                ));
            }
            Event::Ended(_) => {}
        }
    }
}

/// Accepts or declines one offer; says which, and why, on stderr. Returns whether it accepted.
async fn decide(
    ctx: &Context,
    offer: Offer,
    from: Option<NodeId>,
    authorised: &HashSet<NodeId>,
    taken: &mut HashSet<Taken>,
    out: &str,
) -> bool {
    let sender = offer.sender;
    let summary = describe(&offer);
    let again = !offer.items.is_empty()
        && offer
            .items
            .iter()
            .all(|item| taken.contains(&taken_key(sender, item)));
    let why_not = match from {
        _ if again => None,
        Some(expected) if expected == sender => None,
        Some(expected) => Some(format!(
            "this receiver takes offers from {expected} only"
        )),
        None if authorised.contains(&sender) => None,
        None if std::io::stdin().is_terminal() => {
            if ask(&format!(
                "ferry: {sender} offers {summary}. Receive into {out}? [y/N] "
            ))
            .await
            {
                None
            } else {
                Some("the receiver said no".to_owned())
            }
        }
        None => Some(format!(
            "{sender} is not authorised here and there is no terminal to ask, so the offer is declined \
             (authorise it with ferry-server authorize {sender} --name NAME, or receive --from {sender})"
        )),
    };
    match why_not {
        None => {
            let asked = from.is_none() && !authorised.contains(&sender) && !again;
            if again {
                ctx.note(&format!(
                    "ferry: accepted automatically from {sender}, who offers again what was accepted before: {summary}"
                ));
            } else if !asked {
                ctx.note(&format!(
                    "ferry: accepted automatically from {sender}: {summary}"
                ));
            }
            for (item, code) in offer.items.iter().zip(&offer.checks) {
                if *code != OfferResponse::ACCEPTED {
                    ctx.note(&format!(
                        "ferry: not taking {}: {} ({code})",
                        item.path,
                        code.description()
                    ));
                }
            }
            taken.extend(offer.items.iter().map(|item| taken_key(sender, item)));
            offer.accept();
            true
        }
        Some(why) => {
            ctx.note(&format!("ferry: declined an offer of {summary}: {why}"));
            offer.decline(why);
            false
        }
    }
}

/// An item accepted from a sender: who, and the item as offered (path, size, mode, flags,
/// digest).
type Taken = (NodeId, String, u64, u32, u8, [u8; 32]);

fn taken_key(sender: NodeId, item: &OfferItem) -> Taken {
    (
        sender,
        item.path.clone(),
        item.size,
        item.mode,
        item.flags,
        item.digest,
    )
}

/// The bars of the uploads under way, and a total over every accepted offer.
struct Shown {
    progress: Progress,
    /// Under way: each file's bar and the bytes it holds.
    files: Vec<(ProgressBar, Arc<AtomicU64>, OfferItem)>,
    total: Option<ProgressBar>,
    /// Bytes of the files stored, and of their parts that came in this run.
    stored: u64,
    received: u64,
    started: Option<Instant>,
}

impl Shown {
    fn new(ctx: &Context) -> Self {
        Self {
            progress: ctx.progress(),
            files: Vec::new(),
            total: None,
            stored: 0,
            received: 0,
            started: None,
        }
    }

    /// An accepted offer (or set) of `count` items, `bytes` of which are to come.
    fn expect(&mut self, count: u64, bytes: u64) {
        match &self.total {
            Some(total) => total.inc_length(bytes),
            None => {
                let label = format!("total ({count} items)");
                self.total = Some(self.progress.overall(&label, bytes));
            }
        }
    }

    /// Bytes of a set that will not come after all.
    fn refuse(&mut self, bytes: u64) {
        if let Some(total) = &self.total {
            let length = total.length().unwrap_or(0);
            total.set_length(length.saturating_sub(bytes));
        }
    }

    fn start(&mut self, receiving: Receiving) {
        self.started.get_or_insert_with(Instant::now);
        let bar = self
            .progress
            .file(&receiving.item.path, receiving.item.size, receiving.offset);
        self.files.push((bar, receiving.held, receiving.item));
    }

    fn stored(&mut self, stored: &Stored) {
        self.stored += stored.item.size;
        self.received += stored.received;
        if let Some(at) = self
            .files
            .iter()
            .position(|(_, _, item)| item.path == stored.item.path)
        {
            let (bar, _, _) = self.files.swap_remove(at);
            bar.finish_and_clear();
        }
        self.update();
    }

    /// Copies the bytes held to the bars.
    fn update(&self) {
        let mut held = self.stored;
        for (bar, bytes, item) in &self.files {
            let now = bytes.load(Ordering::Relaxed).min(item.size);
            bar.set_position(now);
            held += now;
        }
        if let Some(total) = &self.total {
            total.set_position(held.min(total.length().unwrap_or(held)));
        }
    }

    fn clear(&mut self) {
        self.files.clear();
        if let Some(total) = self.total.take() {
            total.finish_and_clear();
        }
        self.progress.clear();
    }

    /// `: 12.0 MiB in 1.2s (10.0 MiB/s)`, over what came in this run.
    fn summary(&self) -> String {
        match self.started {
            Some(started) if self.received > 0 => {
                format!(": {}", progress::summary(self.received, started.elapsed()))
            }
            _ => String::new(),
        }
    }
}

/// Bytes of the items the checks refuse (they will not come).
fn refused_bytes(items: &[OfferItem], checks: &[ErrorCode]) -> u64 {
    items
        .iter()
        .zip(checks)
        .filter(|(_, c)| **c != OfferResponse::ACCEPTED)
        .map(|(i, _)| i.size)
        .sum()
}

/// `3 files (64.0 MiB): a.bin, b.bin, c.txt`.
fn describe(offer: &Offer) -> String {
    let files = offer.items.iter().filter(|i| !i.is_directory()).count();
    let bytes: u64 = offer.items.iter().map(|i| i.size).sum();
    let mut names: Vec<&str> = offer
        .items
        .iter()
        .take(5)
        .map(|i| i.path.as_str())
        .collect();
    if offer.items.len() > 5 {
        names.push("...");
    }
    // The first offer of a set (spec §3.13 rule 4) speaks for all of it.
    let (files, bytes, what) = match offer.set {
        Some(set) => (set.items as usize, set.bytes, "items"),
        None => (files, bytes, "file"),
    };
    let plural = if files == 1 || what == "items" {
        ""
    } else {
        "s"
    };
    format!(
        "{files} {what}{plural} ({}): {}",
        indicatif::HumanBytes(bytes),
        names.join(", ")
    )
}

/// A y/N question on the terminal; anything but y or yes is no.
async fn ask(question: &str) -> bool {
    let question = question.to_owned();
    tokio::task::spawn_blocking(move || {
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() {
            return false;
        }
        matches!(line.trim().to_lowercase().as_str(), "y" | "yes")
    })
    .await
    .unwrap_or(false)
}

/// The ids in this machine's authorized_clients (the file `ferry-server authorize` edits).
fn authorised_ids() -> HashSet<NodeId> {
    let Some(path) = ferry_server::authorized::default_path() else {
        return HashSet::new();
    };
    match ferry_server::authorized::load(&path) {
        Ok(parsed) => parsed.clients.into_iter().map(|(_, c)| c.id).collect(),
        Err(e) => {
            tracing::warn!("{}: {e}; no sender is authorised", path.display());
            HashSet::new()
        }
    }
}

/// `--from`: a node id, or NAME@HUB resolved at the hub.
async fn sender_id(ctx: &Context, text: &str, me: &Identity) -> Result<NodeId, ClientError> {
    if let Ok(id) = text.parse::<NodeId>() {
        return Ok(id);
    }
    let url = register::parse_target(text).map_err(ClientError::Usage)?;
    let name = url.name.clone().unwrap_or_default();
    let hub_id = hub_id(&url)?;
    let mut hub = HubConn::connect(&url.hints(), hub_id, me)
        .await
        .map_err(hub_error)?;
    let resolved = hub.resolve(&name).await.map_err(hub_error)?;
    ctx.note(&format!(
        "ferry: taking offers from {name} only: {}",
        resolved.id
    ));
    Ok(resolved.id)
}

/// The hub's id to require: the address's, else the one pinned by `ferry register`.
fn hub_id(url: &FerryUrl) -> Result<Option<NodeId>, ClientError> {
    Ok(match url.server_id {
        Some(id) => Some(id),
        None => trust::pin_for(url)?.map(|p| p.id),
    })
}

/// Stays present at the hub as NAME; relayed senders are served like direct ones. Returns
/// once the hub has acknowledged the presence.
async fn present(
    at: &FerryUrl,
    identity: &Identity,
    listening: &[SocketAddr],
    punch: bool,
    receiver: Arc<Receiver>,
) -> Result<ferry_hub::Presence, ClientError> {
    let name = at.name.clone().unwrap_or_default();
    let mut config = PresenceConfig::new(at.hints(), hub_id(at)?, identity.clone(), name.clone());
    // An unspecified address names no host; the hub's reflected address stands for it.
    config.addrs = listening
        .iter()
        .filter(|a| !a.ip().is_unspecified())
        .copied()
        .collect();
    config.punch = punch;
    let (mut acceptor, presence) = ferry_hub::spawn_presence(config);
    tokio::spawn(async move {
        while let Ok((stream, hub)) = acceptor.accept().await {
            let receiver = receiver.clone();
            tokio::spawn(async move { receiver.serve(stream, hub).await });
        }
    });
    let mut status = presence.status.clone();
    let waited = tokio::time::timeout(PRESENT_WITHIN, async {
        loop {
            match &*status.borrow_and_update() {
                Status::Present { hub_id, reflected } => {
                    return Ok((*hub_id, *reflected));
                }
                // Refusals (the name is not ours, unknown) do not get better by waiting.
                Status::Failed(why) if why.contains("refused") => return Err(why.clone()),
                _ => {}
            }
            if status.changed().await.is_err() {
                return Err("the presence ended".to_owned());
            }
        }
    })
    .await;
    match waited {
        Ok(Ok((hub_id, reflected))) => {
            tracing::info!(%hub_id, %reflected, "present at the hub");
            Ok(presence)
        }
        Ok(Err(why)) => Err(ClientError::Local(format!(
            "cannot wait at the hub as {name}: {why} (register the name first: ferry register {name}@HUB)"
        ))),
        Err(_) => Err(ClientError::Timeout {
            what: format!("waiting to be present at the hub as {name}"),
            secs: PRESENT_WITHIN.as_secs(),
        }),
    }
}
