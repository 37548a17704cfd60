//! The receiving end of `ferry send` (spec §3.13): a node that serves only offers and the
//! uploads they accept, into one directory.
//!
//! A sender connects (directly or through a hub's relay) and runs the identity handshake; the
//! receiver takes any client id, because who the sender is decides only what happens to its
//! offer. The sender's OFFER lists names, sizes, modes and digests. Each name is checked here
//! first, as a PUT of it would be (spec §3.12 rules 1 and 5: `../x`, absolute paths and any
//! symbolic link on the way are `INVALID_PATH`; a different file already there is
//! `ALREADY_EXISTS`, the same one `ALREADY_HAVE`). The whole offer then goes to the owner of
//! this [`Receiver`] as an [`Event::Offer`], which accepts or declines it (authorised senders
//! at once, others after a prompt). An accepted item may then be uploaded by PUT on the same
//! connection, exactly as announced and never over an existing file; every other upload is
//! `NOT_OFFERED`. The uploads are the server's own PUT service (`service::put`): partials
//! named after the content and the sender's id, so a re-sent file resumes, and a file takes
//! its name only once its BLAKE3 matches.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::message::{
    EntryKind, OfferItem, OfferRequest, OfferResponse, OfferSet, PutRequest,
};
use ferry_protocol::noise::{AcceptConfig, ServerIdentityConfig};
use ferry_protocol::{
    DecodeError, ErrorBody, ErrorCode, Message, Permissions, Principal, RequestId, Service,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::codec::{Framed, FramedParts};

use crate::buffers::BufferPool;
use crate::config::Limits;
use crate::fs::{FsError, Jail, RelPath, Resolver};
use crate::service::{self, put, Context, Out, Request, Sink, Tree};

/// How long an offer may wait for its owner's answer (a person at a prompt) before it is
/// declined.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Most items of one offer set this receiver keeps grants for (spec §3.13 rule 4).
pub const MAX_SET_ITEMS: u32 = 262_144;

/// What a receiver tells its owner.
#[derive(Debug)]
pub enum Event {
    /// A sender offers files; answer through [`Offer::accept`] or [`Offer::decline`] (dropping
    /// it declines).
    Offer(Offer),
    /// A later offer of a set whose first was accepted: taken as the first was, without
    /// asking (spec §3.13 rule 4).
    Continued(Continued),
    /// An accepted file's upload started (at `offset`, past a resumed partial).
    Receiving(Receiving),
    /// An accepted file (or directory) is stored under its final name.
    Stored(Stored),
    /// A sender's connection ended.
    Ended(Ended),
}

/// An offer waiting for its answer.
#[derive(Debug)]
pub struct Offer {
    /// Who offers, as proven in the handshake.
    pub sender: NodeId,
    pub items: Vec<OfferItem>,
    /// Per item, what the checks found: [`OfferResponse::ACCEPTED`] if it may be taken, else
    /// why not (`INVALID_PATH`, `ALREADY_EXISTS`, `ALREADY_HAVE`, ...).
    pub checks: Vec<ErrorCode>,
    /// The whole set's totals when this is the first offer of a set (rule 4).
    pub set: Option<OfferSet>,
    reply: oneshot::Sender<Verdict>,
}

/// A later offer of an accepted set, already taken.
#[derive(Debug, Clone)]
pub struct Continued {
    pub sender: NodeId,
    pub items: Vec<OfferItem>,
    /// Per item, as in [`Offer::checks`].
    pub checks: Vec<ErrorCode>,
}

/// An upload under way.
#[derive(Debug, Clone)]
pub struct Receiving {
    pub sender: NodeId,
    pub item: OfferItem,
    /// Bytes of the file the receiver held when the upload started (a resumed partial).
    pub offset: u64,
    /// Bytes of the file held now: `offset` plus what arrived since; it stops at the size.
    pub held: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Verdict {
    Accept,
    Decline(String),
}

impl Offer {
    /// Takes every item the checks allow.
    pub fn accept(self) {
        let _ = self.reply.send(Verdict::Accept);
    }

    /// Declines the whole offer; the sender gets `OFFER_DECLINED` with `why`.
    pub fn decline(self, why: impl Into<String>) {
        let _ = self.reply.send(Verdict::Decline(why.into()));
    }

    /// Items the checks allow.
    pub fn acceptable(&self) -> impl Iterator<Item = &OfferItem> {
        self.items
            .iter()
            .zip(&self.checks)
            .filter(|(_, c)| **c == OfferResponse::ACCEPTED)
            .map(|(i, _)| i)
    }
}

/// One item stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sender: NodeId,
    pub item: OfferItem,
    /// Bytes that came in this connection (less than the size after a resume).
    pub received: u64,
}

/// How a sender's connection ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub sender: NodeId,
    pub addr: SocketAddr,
    /// An offer was accepted on it (even one with nothing left to send).
    pub accepted: bool,
    /// Accepted items not stored (the sender stopped, or an upload failed).
    pub missing: Vec<OfferItem>,
}

/// Serves offers into one directory. Cheap to share: [`Receiver::serve`] takes `&self`.
#[derive(Debug)]
pub struct Receiver {
    tree: Arc<Tree>,
    identity: Identity,
    limits: Limits,
    events: mpsc::Sender<Event>,
}

impl Receiver {
    /// Receives into `out` (which must exist) as `identity`; events go to the returned channel.
    /// No symbolic link is followed beneath `out`.
    pub fn open(
        out: &Path,
        identity: Identity,
        limits: Limits,
    ) -> std::io::Result<(Receiver, mpsc::Receiver<Event>)> {
        let jail = Jail::open(out)?.with_resolver(Resolver::NoFollow);
        let (events, rx) = mpsc::channel(64);
        Ok((
            Receiver {
                tree: Arc::new(Tree::new(jail, limits.clone())),
                identity,
                limits,
                events,
            },
            rx,
        ))
    }

    /// Serves one sender's connection to its end: the handshake, its offer, its uploads.
    pub async fn serve<S>(&self, mut stream: S, addr: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut identity = ServerIdentityConfig::new(self.identity.clone());
        identity.max_body = self.limits.max_body;
        let accept = AcceptConfig {
            psk: None,
            identity: Some(identity),
        };
        let handshake = tokio::time::timeout(
            self.limits.handshake_timeout,
            ferry_protocol::tokio::server_accept(&mut stream, accept),
        )
        .await;
        let (session, principal, leftover) = match handshake {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => {
                tracing::debug!(%addr, %error, "sender handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%addr, "sender handshake timed out");
                return;
            }
        };
        // The identity handshake names the principal by the client's id (AnyIdentity).
        let Ok(sender) = principal.name.parse::<NodeId>() else {
            tracing::debug!(%addr, "a sender without a node id");
            return;
        };
        tracing::info!(%addr, %sender, "sender connected");
        let mut parts = FramedParts::new::<(RequestId, Message)>(
            stream,
            ferry_protocol::tokio::FerryCodec::new(session),
        );
        parts.read_buf = leftover;
        let (mut wire, mut frames) = Framed::from_parts(parts).split();

        let conn = Arc::new(Conn {
            sender,
            grants: Mutex::new(Grants::default()),
        });
        let (queue, mut outgoing) = mpsc::channel::<Out>(16);
        let writer = {
            let conn = conn.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                while let Some((id, message)) = outgoing.recv().await {
                    if let Some(event) = conn.observe(id, &message) {
                        let _ = events.send(event).await;
                    }
                    if wire.send((id, message)).await.is_err() {
                        break;
                    }
                }
                let _ = wire.close().await;
            })
        };
        // Uploads only for what was accepted, in the sender's name (its partials resume only
        // for it): spec §3.13.
        let ctx = Context {
            tree: self.tree.clone(),
            principal: Arc::new(Principal {
                name: sender.to_string(),
                permissions: Permissions {
                    read: false,
                    write: true,
                },
                subtree: None,
            }),
            buffers: BufferPool::new(64 * 1024, 1),
            chunk: 64 * 1024,
            page_bytes: 4096,
            uploads: Default::default(),
            enrol: None,
        };
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<RequestId, tokio::task::AbortHandle> = HashMap::new();
        loop {
            let next = tokio::select! {
                frame = frames.next() => frame,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                _ = tokio::time::sleep(self.limits.idle_timeout), if tasks.is_empty() => {
                    let _ = queue.send((RequestId::CONNECTION, goodbye(ErrorCode::TIMEOUT, "idle"))).await;
                    break;
                }
            };
            let frame = match next {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    tracing::debug!(%sender, %error, "sender connection failed");
                    break;
                }
            };
            let id = frame.header.id;
            let service = frame.header.service;
            let message = match frame.message() {
                Ok(message) => message,
                Err(error @ DecodeError::UnknownMessage { .. }) if id != RequestId::CONNECTION => {
                    let body = ErrorBody::new(ErrorCode::UNKNOWN_REQUEST, error.to_string());
                    let _ = queue.send((id, Message::Error { service, body })).await;
                    continue;
                }
                Err(error) => {
                    let _ = queue
                        .send((
                            RequestId::CONNECTION,
                            goodbye(error.code(), &error.to_string()),
                        ))
                        .await;
                    break;
                }
            };
            running.retain(|_, task| !task.is_finished());
            let refuse = |code: ErrorCode, text: String| {
                (
                    id,
                    Message::Error {
                        service,
                        body: ErrorBody::new(code, text),
                    },
                )
            };
            match message {
                Message::Ping(payload) => {
                    let _ = queue.send((id, Message::Pong(payload))).await;
                }
                Message::Pong(_) => {}
                Message::Error { body, .. } if id == RequestId::CONNECTION => {
                    tracing::debug!(%sender, %body, "sender closed with an error");
                    break;
                }
                Message::Error { .. } => {}
                Message::Cancel { .. } => {
                    if let Some(task) = running.remove(&id) {
                        task.abort();
                        let cancelled = ErrorBody::from_code(ErrorCode::CANCELLED);
                        let _ = queue
                            .send((
                                id,
                                Message::Error {
                                    service,
                                    body: cancelled,
                                },
                            ))
                            .await;
                    }
                }
                _ if id == RequestId::CONNECTION => {
                    let _ = queue
                        .send((
                            RequestId::CONNECTION,
                            goodbye(ErrorCode::UNEXPECTED_MESSAGE, "requests must not use id 0"),
                        ))
                        .await;
                    break;
                }
                Message::OfferRequest(_) | Message::PutRequest(_) if running.contains_key(&id) => {
                    let text = format!("request id {} is already in flight", id.0);
                    let _ = queue.send(refuse(ErrorCode::DUPLICATE_ID, text)).await;
                }
                Message::OfferRequest(offer) => {
                    let first = match conn.start_offer(&offer) {
                        Ok(first) => first,
                        Err(text) => {
                            let _ = queue
                                .send(refuse(ErrorCode::UNEXPECTED_MESSAGE, text))
                                .await;
                            continue;
                        }
                    };
                    let task = tasks.spawn(answer_offer(
                        self.tree.clone(),
                        conn.clone(),
                        self.events.clone(),
                        offer,
                        first,
                        Sink::new(id, queue.clone()),
                    ));
                    running.insert(id, task);
                }
                Message::PutRequest(request) => {
                    if let Err(text) = conn.grant(id, &request) {
                        let _ = queue.send(refuse(ErrorCode::NOT_OFFERED, text)).await;
                        continue;
                    }
                    let (ctx, sink) = (ctx.clone(), Sink::new(id, queue.clone()));
                    let task =
                        tasks.spawn(service::run(ctx, sink, Service::PUT, Request::Put(request)));
                    running.insert(id, task);
                }
                message @ (Message::PutData(_) | Message::PutEnd(_)) => {
                    if let Message::PutData(data) = &message {
                        conn.arrived(id, data.len());
                    }
                    put::deliver(&ctx, id, message)
                }
                Message::ListRequest(_)
                | Message::StatRequest(_)
                | Message::FetchRequest(_)
                | Message::DigestRequest(_) => {
                    let text = "a receiver takes offers and their uploads, nothing else".to_owned();
                    let _ = queue.send(refuse(ErrorCode::PERMISSION_DENIED, text)).await;
                }
                other => {
                    let text = format!("{:?} is not something a sender sends", other.kind().0);
                    let _ = queue
                        .send(refuse(ErrorCode::UNEXPECTED_MESSAGE, text))
                        .await;
                }
            }
        }
        // Uploads waiting for data get none; the partials stay for a resume.
        put::connection_ended(&ctx);
        while tasks.join_next().await.is_some() {}
        drop(queue);
        let _ = writer.await;
        let (accepted, missing) = conn.missing();
        tracing::info!(%sender, accepted, missing = missing.len(), "sender gone");
        let _ = self
            .events
            .send(Event::Ended(Ended {
                sender,
                addr,
                accepted,
                missing,
            }))
            .await;
    }
}

fn goodbye(code: ErrorCode, text: &str) -> Message {
    Message::Error {
        service: Service::HANDSHAKE,
        body: ErrorBody::new(code, text),
    }
}

/// One sender's connection: its offer's grants and its uploads' progress.
#[derive(Debug)]
struct Conn {
    sender: NodeId,
    grants: Mutex<Grants>,
}

#[derive(Debug, Default)]
struct Grants {
    offered: bool,
    /// The offer was accepted.
    taken: bool,
    /// An offer is waiting for its answer.
    answering: bool,
    /// The set's totals, when the first offer was of a set, and the items offered so far.
    set: Option<OfferSet>,
    offered_items: u64,
    /// Paths offered on this connection (a repeat is refused, over the whole set).
    seen: HashSet<String>,
    /// The accepted items, each with whether it is stored, and their index by path.
    accepted: Vec<(OfferItem, bool)>,
    by_path: HashMap<String, usize>,
    /// Uploads in flight, by request id.
    uploads: HashMap<RequestId, Upload>,
}

/// An upload: its item's index, and once it started, its first offset and the bytes held.
#[derive(Debug)]
struct Upload {
    index: usize,
    held: Option<Arc<AtomicU64>>,
    first: Option<u64>,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, Grants> {
        // Nothing here leaves the table half-updated, so a poisoned lock is still usable.
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits an offer on this connection (rule 4): the first, or the next of an accepted
    /// set. Returns whether it is the first.
    fn start_offer(&self, offer: &OfferRequest) -> Result<bool, String> {
        let mut grants = self.lock();
        if grants.answering {
            return Err("an offer on this connection is still waiting for its answer".into());
        }
        let count = offer.items.len() as u64;
        if !grants.offered {
            grants.offered = true;
            grants.answering = true;
            grants.set = offer.set;
            grants.offered_items = count;
            return Ok(true);
        }
        let Some(set) = grants.set else {
            return Err("one offer per connection, unless it is split as a set".into());
        };
        if !grants.taken {
            return Err("the set's first offer was declined".into());
        }
        if offer.set != Some(set) {
            return Err(format!(
                "an offer of this set must carry its totals ({} items, {} bytes)",
                set.items, set.bytes
            ));
        }
        if grants.offered_items + count > u64::from(set.items) {
            return Err(format!(
                "the set has {} items and {} were offered already; this offer has {count}",
                set.items, grants.offered_items
            ));
        }
        grants.answering = true;
        grants.offered_items += count;
        Ok(false)
    }

    /// Counts an upload's data as it arrives.
    fn arrived(&self, id: RequestId, len: usize) {
        if let Some(held) = self.lock().uploads.get(&id).and_then(|u| u.held.as_ref()) {
            held.fetch_add(len as u64, Ordering::Relaxed);
        }
    }

    /// An upload may go ahead only for an accepted item, exactly as offered and never over
    /// an existing file.
    fn grant(&self, id: RequestId, request: &PutRequest) -> Result<(), String> {
        let mut grants = self.lock();
        let found = grants.by_path.get(&request.path).copied().filter(|&index| {
            let item = &grants.accepted[index].0;
            item.size == request.size
                && item.digest == request.digest
                && item.is_directory() == request.is_directory()
        });
        match found {
            Some(_) if request.overwrite() => Err(format!(
                "{}: a receiver never overwrites a file",
                request.path
            )),
            Some(index) => {
                grants.uploads.insert(
                    id,
                    Upload {
                        index,
                        held: None,
                        first: None,
                    },
                );
                Ok(())
            }
            None => Err(format!(
                "{} ({} bytes) was not accepted in an offer on this connection",
                request.path, request.size
            )),
        }
    }

    /// Notes what an upload's frames say: its first offset (the upload starts), and its end
    /// (the file stored).
    fn observe(&self, id: RequestId, message: &Message) -> Option<Event> {
        let mut grants = self.lock();
        match message {
            Message::PutResponse(r) => {
                let upload = grants.uploads.get_mut(&id)?;
                if upload.first.is_some() {
                    return None;
                }
                let held = Arc::new(AtomicU64::new(r.offset));
                upload.first = Some(r.offset);
                upload.held = Some(held.clone());
                let index = upload.index;
                let item = grants.accepted.get(index)?.0.clone();
                Some(Event::Receiving(Receiving {
                    sender: self.sender,
                    item,
                    offset: r.offset,
                    held,
                }))
            }
            Message::PutEnd(_) => {
                let upload = grants.uploads.remove(&id)?;
                let (item, stored) = grants.accepted.get_mut(upload.index)?;
                *stored = true;
                Some(Event::Stored(Stored {
                    sender: self.sender,
                    item: item.clone(),
                    received: item.size - upload.first.unwrap_or(0).min(item.size),
                }))
            }
            Message::Error { .. } => {
                grants.uploads.remove(&id);
                None
            }
            _ => None,
        }
    }

    fn missing(&self) -> (bool, Vec<OfferItem>) {
        let grants = self.lock();
        let accepted = grants.taken;
        let missing = grants
            .accepted
            .iter()
            .filter(|(_, stored)| !stored)
            .map(|(item, _)| item.clone())
            .collect();
        (accepted, missing)
    }
}

/// Checks an offer, asks the owner, answers the sender and records the grants.
async fn answer_offer(
    tree: Arc<Tree>,
    conn: Arc<Conn>,
    events: mpsc::Sender<Event>,
    offer: OfferRequest,
    first: bool,
    sink: Sink,
) {
    let items = offer.items;
    let checks = {
        let (tree, items) = (tree.clone(), items.clone());
        let mut seen = std::mem::take(&mut conn.lock().seen);
        let checked = tokio::task::spawn_blocking(move || {
            let checks = check_items(&tree, &items, &mut seen);
            (checks, seen)
        })
        .await;
        match checked {
            Ok((checks, seen)) => {
                conn.lock().seen = seen;
                checks
            }
            Err(error) => {
                tracing::error!(%error, "checking an offer failed");
                let body = ErrorBody::from_code(ErrorCode::INTERNAL);
                let _ = sink
                    .send(Message::Error {
                        service: Service::OFFER,
                        body,
                    })
                    .await;
                return;
            }
        }
    };
    let (reply, verdict) = oneshot::channel();
    let offer = Offer {
        sender: conn.sender,
        items: items.clone(),
        checks: checks.clone(),
        set: offer.set,
        reply,
    };
    let too_many = offer.set.filter(|s| s.items > MAX_SET_ITEMS);
    let verdict = if let Some(set) = too_many {
        Verdict::Decline(format!(
            "the set of {} items is more than this receiver takes at once ({MAX_SET_ITEMS})",
            set.items
        ))
    } else if !first {
        // A later offer of a set taken as its first was (rule 4).
        let continued = Continued {
            sender: conn.sender,
            items: items.clone(),
            checks: checks.clone(),
        };
        let _ = events.send(Event::Continued(continued)).await;
        Verdict::Accept
    } else if events.send(Event::Offer(offer)).await.is_err() {
        Verdict::Decline("the receiver is shutting down".into())
    } else {
        match tokio::time::timeout(ANSWER_TIMEOUT, verdict).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(_)) => Verdict::Decline("the receiver did not take the offer".into()),
            Err(_) => Verdict::Decline(format!(
                "nobody answered the offer within {} s",
                ANSWER_TIMEOUT.as_secs()
            )),
        }
    };
    let message = match verdict {
        Verdict::Decline(why) => {
            tracing::info!(sender = %conn.sender, items = items.len(), %why, "offer declined");
            let mut grants = conn.lock();
            grants.answering = false;
            Message::Error {
                service: Service::OFFER,
                body: ErrorBody::new(ErrorCode::OFFER_DECLINED, why),
            }
        }
        Verdict::Accept => {
            let mut grants = conn.lock();
            grants.taken = true;
            grants.answering = false;
            let taken = items
                .iter()
                .zip(&checks)
                .filter(|(_, c)| **c == OfferResponse::ACCEPTED);
            for (item, _) in taken {
                let index = grants.accepted.len();
                grants.by_path.insert(item.path.clone(), index);
                grants.accepted.push((item.clone(), false));
            }
            tracing::info!(sender = %conn.sender, items = items.len(), accepted = grants.accepted.len(), "offer accepted");
            Message::OfferResponse(OfferResponse { codes: checks })
        }
    };
    let _ = sink.send(message).await;
}

/// Each item's fate before anyone is asked: a name a PUT would refuse is refused here with the
/// same code; an existing file is never replaced.
fn check_items(tree: &Tree, items: &[OfferItem], seen: &mut HashSet<String>) -> Vec<ErrorCode> {
    items
        .iter()
        .map(|item| match check_item(tree, item, seen) {
            Ok(()) => OfferResponse::ACCEPTED,
            Err(code) => code,
        })
        .collect()
}

fn check_item(tree: &Tree, item: &OfferItem, seen: &mut HashSet<String>) -> Result<(), ErrorCode> {
    let path = RelPath::parse(&item.path, tree.limits.max_path_depth)
        .map_err(|e| FsError::from(e).code())?;
    if path.is_root() || path.file_name().contains(put::PART_TAG) {
        return Err(ErrorCode::INVALID_PATH);
    }
    // Two items for one name would race for it.
    if !seen.insert(path.as_str().to_owned()) {
        return Err(ErrorCode::INVALID_PATH);
    }
    match tree.jail.stat(&path) {
        // New here: parents that are missing are made with the file.
        Err(FsError::NotFound(_)) => Ok(()),
        Err(error) => Err(error.code()),
        Ok(meta) if item.is_directory() => match meta.kind {
            EntryKind::DIRECTORY => Err(ErrorCode::ALREADY_HAVE),
            _ => Err(ErrorCode::NOT_A_DIRECTORY),
        },
        Ok(meta) if meta.kind != EntryKind::FILE => Err(ErrorCode::NOT_A_FILE),
        Ok(meta) if meta.size != item.size => Err(ErrorCode::ALREADY_EXISTS),
        Ok(_) => match tree.digests.digest(&tree.jail, &path) {
            Ok(have) if have.digest == item.digest => Err(ErrorCode::ALREADY_HAVE),
            Ok(_) => Err(ErrorCode::ALREADY_EXISTS),
            Err(error) => Err(error.code()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::digest::fetch_digest;

    fn item(path: &str, data: &[u8]) -> OfferItem {
        OfferItem {
            path: path.into(),
            size: data.len() as u64,
            mode: 0o644,
            flags: 0,
            digest: fetch_digest(data),
        }
    }

    /// Hostile names are refused with the code a PUT of them would get; existing files are
    /// never taken over; a link anywhere on the way is refused, not followed.
    #[test]
    fn offered_names_are_checked_like_uploads() {
        let out = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("have.txt"), b"same").unwrap();
        std::fs::write(out.path().join("other.txt"), b"different").unwrap();
        std::os::unix::fs::symlink(outside.path(), out.path().join("link")).unwrap();
        let jail = Jail::open(out.path())
            .unwrap()
            .with_resolver(Resolver::NoFollow);
        let tree = Tree::new(jail, Limits::default());
        let items = [
            item("new.txt", b"x"),
            item("../x", b"x"),
            item("/etc/passwd", b"x"),
            item("link/x", b"x"),
            item("link", b"x"),
            item("have.txt", b"same"),
            item("other.txt", b"same"),
            item("new.txt", b"x"),
            item(".a.ferry-up-0011223344556677", b"x"),
            item("", b"x"),
            item("dir/sub/new.bin", b"x"),
        ];
        let codes = check_items(&tree, &items, &mut HashSet::new());
        assert_eq!(
            codes,
            [
                OfferResponse::ACCEPTED,
                ErrorCode::INVALID_PATH,
                ErrorCode::INVALID_PATH,
                ErrorCode::INVALID_PATH,
                ErrorCode::INVALID_PATH,
                ErrorCode::ALREADY_HAVE,
                ErrorCode::ALREADY_EXISTS,
                ErrorCode::INVALID_PATH,
                ErrorCode::INVALID_PATH,
                ErrorCode::INVALID_PATH,
                OfferResponse::ACCEPTED,
            ]
        );
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
