//! The DHT's tokio shell: one UDP socket, the sans-IO [`Dht`] behind it, commands from a
//! [`DhtHandle`], and the routing table saved to a small file (spec/P2P.md §7.8) so that a
//! restarted node rejoins through the nodes it knew.
//!
//! ```text
//!  state file: "FERRYDHT" | version u8 (1) | own id[20] | count u16 | count × node
//!              node = id[20] | family u8 | addr[4 or 16] | port u16
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, BufMut};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{NodeInfo, MAX_DATAGRAM};
use super::{id_for, Dht, DhtConfig, Event, LookupError, LookupId, NodeId, K};
use crate::addr;

const STATE_MAGIC: &[u8; 8] = b"FERRYDHT";
const STATE_VERSION: u8 = 1;
/// Most nodes saved (a full table of a large network is a few hundred).
const MAX_SAVED: usize = 1024;
/// How often the table is saved while running (and once more on exit).
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// How the DHT node runs.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// UDP address to listen on; port 0 picks one.
    pub listen: SocketAddr,
    /// Nodes to join through (any DHT node: a tracker host, a peer, a configured list).
    pub bootstrap: Vec<SocketAddr>,
    /// Where the routing table is kept across restarts; `None` keeps nothing.
    pub state_file: Option<PathBuf>,
    pub core: DhtConfig,
}

/// A DHT request failed.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("the dht node has stopped")]
    Stopped,
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

enum Cmd {
    GetPeers {
        key: NodeId,
        announce: Option<u16>,
        peers: mpsc::UnboundedSender<Vec<SocketAddr>>,
        done: oneshot::Sender<Result<usize, LookupError>>,
    },
    Nodes(oneshot::Sender<Vec<NodeInfo>>),
}

/// Talks to a running DHT node. Cloning is cheap; the node stops when its token is cancelled.
#[derive(Clone, Debug)]
pub struct DhtHandle {
    /// The UDP address the node is bound to.
    pub local_addr: SocketAddr,
    cmds: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::GetPeers { .. } => "GetPeers",
            Cmd::Nodes(_) => "Nodes",
        })
    }
}

impl DhtHandle {
    /// Looks up peers under `key`, calling `found` as they arrive; with `announce`, announces
    /// our address with that TCP port to the closest nodes. Returns the number of announces
    /// sent.
    pub async fn get_peers(
        &self,
        key: NodeId,
        announce: Option<u16>,
        mut found: impl FnMut(Vec<SocketAddr>),
    ) -> Result<usize, DhtError> {
        let (peers_tx, mut peers_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = oneshot::channel();
        self.cmds
            .send(Cmd::GetPeers {
                key,
                announce,
                peers: peers_tx,
                done: done_tx,
            })
            .await
            .map_err(|_| DhtError::Stopped)?;
        // Peers are sent before the lookup's end, so the channel is drained after it.
        while let Some(peers) = peers_rx.recv().await {
            found(peers);
        }
        Ok(done_rx.await.map_err(|_| DhtError::Stopped)??)
    }

    /// Resolves once the node has stopped (and saved its table).
    pub async fn stopped(&self) {
        self.cmds.closed().await
    }

    /// The nodes in the routing table.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Nodes(tx))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)
    }
}

/// How long a swarm that has no peer waits before looking again: 2 s, doubling to a minute.
pub fn lonely_wait(n: u32) -> Duration {
    Duration::from_secs(2u64.saturating_mul(1 << n.min(5))).min(Duration::from_secs(60))
}

/// How often a swarm with peers looks up and announces again (announces live 30 minutes).
pub const REANNOUNCE: Duration = Duration::from_secs(5 * 60);

/// A swarm's use of the DHT: look up `key` and announce `port`, at once and then every
/// [`REANNOUNCE`], or every [`lonely_wait`] while `lonely()` says no peer is connected.
/// Found peers go to `found`. Runs until `cancel` or until the DHT node stops.
///
/// Waits count from the start of the lookup before: they bound how often a lonely swarm asks
/// the network, and a lookup that reached nobody has already spent the hard timeout (2 s)
/// trying, so the next one starts at once rather than 2 s later.
pub async fn discover(
    dht: DhtHandle,
    key: NodeId,
    port: u16,
    cancel: CancellationToken,
    lonely: impl Fn() -> bool,
    mut found: impl FnMut(Vec<SocketAddr>),
) {
    let mut lonely_rounds = 0;
    loop {
        let began = Instant::now();
        let looked = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            looked = dht.get_peers(key, Some(port), &mut found) => looked,
        };
        match looked {
            Ok(announced) => tracing::debug!(announced, "dht lookup done"),
            Err(DhtError::Stopped) => return,
            Err(e) => tracing::debug!(error = %e, "dht lookup refused"),
        }
        let wait = if lonely() {
            lonely_rounds += 1;
            lonely_wait(lonely_rounds - 1)
        } else {
            lonely_rounds = 0;
            REANNOUNCE
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(began + wait) => {}
        }
    }
}

/// Binds the socket, loads the saved table, joins the network and serves until `cancel`.
pub async fn spawn(config: ShellConfig, cancel: CancellationToken) -> std::io::Result<DhtHandle> {
    let socket = UdpSocket::bind(config.listen).await?;
    let local_addr = socket.local_addr()?;
    let saved = config.state_file.as_deref().and_then(load_state);
    let now = Instant::now().into_std();
    // A saved id is kept while it suits the address we bind (a restart keeps our place in the
    // key space); otherwise one is made for it (§7.5).
    let id = match &saved {
        Some((id, _)) if super::id_matches(id, local_addr.ip()) => *id,
        _ => id_for(local_addr.ip(), rand::random()),
    };
    let mut dht = Dht::new(config.core.clone(), id, rand::random(), now);
    let mut seeds = config.bootstrap.clone();
    if let Some((_, nodes)) = &saved {
        seeds.extend(nodes.iter().map(|n| n.addr));
    }
    seeds.retain(|a| *a != local_addr);
    if !seeds.is_empty() {
        let _ = dht.bootstrap(&seeds, now);
    }
    let (cmds, rx) = mpsc::channel(64);
    tokio::spawn(run(dht, socket, config, seeds, rx, cancel));
    Ok(DhtHandle { local_addr, cmds })
}

type Waiting = (
    mpsc::UnboundedSender<Vec<SocketAddr>>,
    oneshot::Sender<Result<usize, LookupError>>,
);

async fn run(
    mut dht: Dht,
    socket: UdpSocket,
    config: ShellConfig,
    seeds: Vec<SocketAddr>,
    mut cmds: mpsc::Receiver<Cmd>,
    cancel: CancellationToken,
) {
    // Larger than MAX_DATAGRAM so an oversized datagram is seen as such (and dropped), not cut.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut waiting: HashMap<LookupId, Waiting> = HashMap::new();
    let mut save = tokio::time::interval_at(Instant::now() + SAVE_EVERY, SAVE_EVERY);
    let mut commands_open = true;
    loop {
        while let Some((to, bytes)) = dht.poll_transmit() {
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!(error = %e, %to, "dht send failed");
            }
        }
        while let Some(event) = dht.poll_event() {
            match event {
                Event::Peers { lookup, peers } => {
                    if let Some((tx, _)) = waiting.get(&lookup) {
                        let _ = tx.send(peers);
                    }
                }
                Event::Done {
                    lookup, announced, ..
                } => {
                    if let Some((_, done)) = waiting.remove(&lookup) {
                        let _ = done.send(Ok(announced));
                    }
                }
                Event::IdChanged(id) => {
                    tracing::info!(?id, "dht id changed to suit our public address");
                    persist(&dht, &config);
                }
            }
        }
        let deadline = Instant::from_std(dht.poll_timeout());
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => dht.handle_datagram(&buf[..len], from, Instant::now().into_std()),
                // ICMP errors from earlier sends surface here on some systems; keep serving.
                Err(e) => tracing::debug!(error = %e, "dht recv failed"),
            },
            cmd = cmds.recv(), if commands_open => match cmd {
                Some(Cmd::GetPeers { key, announce, peers, done }) => {
                    let now = Instant::now().into_std();
                    // With a thin table (a first start, a bootstrap node that was down),
                    // the bootstrap nodes are asked again.
                    let extra: &[SocketAddr] = if dht.table().len() < K { &seeds } else { &[] };
                    match dht.get_peers_via(key, announce, extra, now) {
                        Ok(lookup) => {
                            waiting.insert(lookup, (peers, done));
                        }
                        Err(e) => {
                            let _ = done.send(Err(e));
                        }
                    }
                }
                Some(Cmd::Nodes(reply)) => {
                    let _ = reply.send(dht.nodes());
                }
                // Every handle dropped: keep serving others until cancelled.
                None => commands_open = false,
            },
            _ = tokio::time::sleep_until(deadline) => dht.handle_timeout(Instant::now().into_std()),
            _ = save.tick() => persist(&dht, &config),
        }
    }
    persist(&dht, &config);
}

fn persist(dht: &Dht, config: &ShellConfig) {
    let Some(path) = &config.state_file else {
        return;
    };
    if let Err(e) = save_state(path, dht.id(), &dht.nodes()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the dht routing table");
    }
}

/// The state file's bytes.
pub fn encode_state(id: NodeId, nodes: &[NodeInfo]) -> Vec<u8> {
    let nodes = &nodes[..nodes.len().min(MAX_SAVED)];
    let mut out = Vec::with_capacity(31 + nodes.len() * 39);
    out.put_slice(STATE_MAGIC);
    out.put_u8(STATE_VERSION);
    out.put_slice(&id.0);
    out.put_u16(nodes.len() as u16);
    for n in nodes {
        out.put_slice(&n.id.0);
        addr::encode(&n.addr, &mut out);
    }
    out
}

/// Parses a state file; `None` if it is not exactly one.
pub fn decode_state(mut src: &[u8]) -> Option<(NodeId, Vec<NodeInfo>)> {
    if src.len() < 31 || &src[..8] != STATE_MAGIC || src[8] != STATE_VERSION {
        return None;
    }
    src.advance(9);
    let id = NodeId(src[..20].try_into().ok()?);
    src.advance(20);
    let count = src.get_u16() as usize;
    if count > MAX_SAVED {
        return None;
    }
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        if src.len() < 20 {
            return None;
        }
        let nid = NodeId(src[..20].try_into().ok()?);
        src.advance(20);
        nodes.push(NodeInfo {
            id: nid,
            addr: addr::decode(&mut src).ok()?,
        });
    }
    src.is_empty().then_some((id, nodes))
}

/// Writes the state file atomically: a temporary file beside it, synced, then renamed over it.
pub fn save_state(path: &Path, id: NodeId, nodes: &[NodeInfo]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&encode_state(id, nodes))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Reads the state file; a missing or damaged one is as good as none (logged).
pub fn load_state(path: &Path) -> Option<(NodeId, Vec<NodeInfo>)> {
    // The file is small; anything larger than a full one is not ours.
    let limit = 31 + MAX_SAVED as u64 * 39;
    match std::fs::metadata(path) {
        Ok(m) if m.len() > limit => {
            tracing::warn!(path = %path.display(), "dht state file is too large; ignored");
            return None;
        }
        Err(_) => return None,
        Ok(_) => {}
    }
    let bytes = std::fs::read(path).ok()?;
    let state = decode_state(&bytes);
    if state.is_none() {
        tracing::warn!(path = %path.display(), "dht state file is damaged; ignored");
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue 14: a lookup that reaches nobody ends at the hard timeout (2 s), and the swarm then
    /// waited its lonely wait (2 s) on top. The wait now counts from the lookup's start: a
    /// failed lookup is followed by the next one at once, while lookups that end quickly (and
    /// empty) still come one per wait, the wait doubling.
    #[tokio::test(start_paused = true)]
    async fn a_lonely_swarm_looks_again_a_wait_after_its_last_lookup_began() {
        let (cmds, mut rx) = mpsc::channel(4);
        let dht = DhtHandle {
            local_addr: "127.0.0.1:1".parse().unwrap(),
            cmds,
        };
        let cancel = CancellationToken::new();
        let start = Instant::now();
        tokio::spawn(discover(
            dht,
            NodeId([1; 20]),
            7000,
            cancel.clone(),
            || true,
            |_| {},
        ));
        let mut began = Vec::new();
        for i in 0..4 {
            let Some(Cmd::GetPeers { peers, done, .. }) = rx.recv().await else {
                panic!("no lookup")
            };
            began.push(start.elapsed().as_secs_f64());
            // The first two reach nobody until the hard timeout; the others answer at once.
            if i < 2 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            drop(peers);
            done.send(Ok(0)).unwrap();
        }
        cancel.cancel();
        assert_eq!(began, [0.0, 2.0, 6.0, 14.0]);
    }

    #[test]
    fn state_roundtrips_and_damage_is_refused() {
        let nodes = vec![
            NodeInfo {
                id: NodeId([1; 20]),
                addr: "10.0.0.1:6881".parse().unwrap(),
            },
            NodeInfo {
                id: NodeId([2; 20]),
                addr: "[2001:db8::2]:7".parse().unwrap(),
            },
        ];
        let bytes = encode_state(NodeId([9; 20]), &nodes);
        assert_eq!(decode_state(&bytes), Some((NodeId([9; 20]), nodes.clone())));
        for cut in 0..bytes.len() {
            assert_eq!(decode_state(&bytes[..cut]), None, "cut at {cut}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dht.state");
        save_state(&path, NodeId([9; 20]), &nodes).unwrap();
        assert_eq!(load_state(&path), Some((NodeId([9; 20]), nodes)));
        std::fs::write(&path, b"junk").unwrap();
        assert_eq!(load_state(&path), None);
        assert!(!dir.path().join("sub/dht.state.tmp").exists());
    }
}
