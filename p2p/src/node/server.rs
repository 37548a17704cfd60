//! A ferry-server as a peer: it holds every piece, so the swarm core sees a seed that never
//! chokes; each block request becomes a byte-range fetch.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Event, PeerCmd};
use crate::manifest::Manifest;
use crate::source::{ServerSource, SourceClient};
use crate::status::Sources;
use crate::swarm::ConnId;
use crate::wire::PeerMessage;

/// Most byte-range fetches in flight to one server: below the server's per-connection limit
/// (32), so it never answers BUSY.
const SERVER_FETCHES_IN_FLIGHT: usize = 16;

/// Runs a ferry-server as a peer: greets the core with a full bitfield and an unchoke, turns
/// each block request into a byte-range fetch, and disconnects on the first failed fetch so its
/// outstanding requests go back to the swarm at once.
#[tracing::instrument(skip_all, fields(conn = conn.0, server = %source.url.host))]
pub(super) async fn run_server_source(
    source: ServerSource,
    conn: ConnId,
    manifest: Arc<Manifest>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    sources: Arc<Sources>,
) {
    let client = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        c = SourceClient::connect(&source, manifest) => match c {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use server source");
                sources.server(&source.url.to_string(), Some(e.to_string()));
                return;
            }
        },
    };
    let (cmds_tx, mut cmds) = mpsc::unbounded_channel();
    let registered = Event::Connected {
        conn,
        peer_id: source.peer_id(),
        listen_addr: None,
        dialed: None,
        tiebreak: None,
        relayed: false,
        cmds: cmds_tx,
        cancel: cancel.clone(),
    };
    if events.send(registered).await.is_err() {
        return;
    }
    for msg in client.greeting() {
        if events.send(Event::Message(conn, msg)).await.is_err() {
            return;
        }
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(SERVER_FETCHES_IN_FLIGHT));
    let mut fetches = tokio::task::JoinSet::new();
    let mut keepalive = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            cmd = cmds.recv() => match cmd {
                None | Some(PeerCmd::Close(_)) => break,
                Some(PeerCmd::Send(PeerMessage::Request(block))) => {
                    let (client, events, permits, cancel) =
                        (client.clone(), events.clone(), permits.clone(), cancel.clone());
                    fetches.spawn(async move {
                        let Ok(_permit) = permits.acquire().await else { return };
                        match client.fetch_block(block).await {
                            Ok(msg) => {
                                let _ = events.send(Event::Message(conn, msg)).await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "server fetch failed; dropping the source");
                                cancel.cancel();
                            }
                        }
                    });
                }
                Some(_) => {}
            },
            _ = keepalive.tick() => {
                let _ = events.send(Event::Message(conn, PeerMessage::KeepAlive)).await;
            }
            Some(_) = fetches.join_next(), if !fetches.is_empty() => {}
        }
    }
    fetches.abort_all();
    let _ = events.send(Event::Disconnected(conn)).await;
}
