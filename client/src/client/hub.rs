//! Reaching a node by name through a hub (spec/HUB.md §4): `ferry://alice@HUB/` asks the hub
//! for alice's node id and hints, races the hints (Happy Eyeballs, `race.rs`) requiring that
//! id, asks the hub to coordinate a hole punch (TCP simultaneous open and QUIC raced) beside
//! the race, and when neither answers as alice, asks the hub to relay. Every path runs the end-to-end
//! identity handshake with alice's id required, so neither a lying hint nor the hub can stand in
//! for her.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::url::{FerryUrl, Hint};
use ferry_hub::punch::REFLECT_WAIT;
use ferry_hub::traversal::{Path, QuicEndpoint};
use ferry_hub::wire::{HintSource, Punch, PunchRole};
use ferry_hub::{HubConn, HubError};
use ferry_protocol::identity::{Identity, NodeId};
use tokio::sync::watch;
use tracing::info;

use super::{Client, ClientConfig, Connected};
use crate::error::ClientError;

/// How long the direct hints may take before the relay is tried: dead hints fail at once, and
/// a silent one should not hold the user up for the whole connect timeout.
pub const DIRECT_BUDGET: Duration = Duration::from_millis(1500);

/// How long the first punch may run before the relay is used: punches that work at all work
/// within a few round trips (about 100-300 ms in the NAT lab), and a relayed
/// [`NamedSession`] keeps punching afterwards with the full [`ferry_hub::punch::PUNCH_BUDGET`].
pub const FIRST_PUNCH_BUDGET: Duration = Duration::from_secs(1);

/// How the connection reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Dialled one of the node's hints.
    Direct,
    /// Forwarded by the hub (which sees only ciphertext).
    Relayed,
    /// TCP simultaneous open, coordinated by the hub (PROTOCOL.md §14.3).
    PunchedTcp,
    /// QUIC over a punched UDP path, coordinated by the hub (PROTOCOL.md §14.4).
    PunchedQuic,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
            Self::PunchedTcp => "punched (tcp)",
            Self::PunchedQuic => "punched (quic)",
        })
    }
}

/// What [`Client::connect_named`] reached.
#[derive(Debug)]
pub struct NamedConnected {
    pub connected: Connected,
    pub route: Route,
    /// The node the name resolved to (proven in the handshake).
    pub node: NodeId,
    /// The hub's proven id (for trust on first use).
    pub hub_id: NodeId,
    /// What [`NamedSession`] needs to punch again later, when the route is the relay.
    retry: Option<Retry>,
}

/// Everything a later punch to the same node needs (a relayed session's upgrade).
#[derive(Debug, Clone)]
struct Retry {
    hub: Vec<Hint>,
    hub_id: NodeId,
    name: String,
    node: NodeId,
    config: ClientConfig,
    budget: Duration,
    backoff: (Duration, Duration),
}

/// A hub failure as the client reports it: a refusal exits 1, the rest are connection
/// problems (exit 3).
pub fn hub_error(e: HubError) -> ClientError {
    match e {
        HubError::Refused { .. } => ClientError::Local(e.to_string()),
        HubError::WrongHub {
            addr,
            expected,
            proven,
        } => ClientError::WrongServer {
            addr,
            expected,
            proven,
        },
        HubError::Timeout { what, secs } => ClientError::Timeout { what, secs },
        HubError::Connect { addr, source } => match addr.parse() {
            Ok(addr) => ClientError::Connect { addr, source },
            Err(_) => ClientError::Protocol(format!("cannot reach the hub at {addr}: {source}")),
        },
        other => ClientError::Protocol(other.to_string()),
    }
}

/// How long the direct race runs alone before the punch starts beside it: dead hints fail at
/// once and end it sooner; a silent one should not hold up the punch.
pub const PUNCH_AFTER: Duration = Duration::from_millis(250);

/// How [`Client::connect_named_with`] goes about it (HUB.md §4.1). [`Default`] is what
/// [`Client::connect_named`] does.
#[derive(Debug, Clone)]
pub struct NamedOptions {
    /// Bound on the direct race.
    pub direct_budget: Duration,
    /// When the punch starts if the direct race has not ended.
    pub punch_after: Duration,
    /// Bound on the first punch from its start time; `None`: the smaller of
    /// [`FIRST_PUNCH_BUDGET`] and a third of the connect timeout. Later punches of a relayed
    /// [`NamedSession`] get [`ferry_hub::punch::PUNCH_BUDGET`] (or this, when set).
    pub punch_budget: Option<Duration>,
    /// Try a hub-coordinated punch (HUB.md §3.6).
    pub punch: bool,
    /// Fall back to the hub's relay (HUB.md §3.5).
    pub relay: bool,
    /// A relayed [`NamedSession`] punches again after the first delay, doubling to the
    /// second, until a punch succeeds.
    pub upgrade_backoff: (Duration, Duration),
}

impl Default for NamedOptions {
    fn default() -> Self {
        Self {
            direct_budget: DIRECT_BUDGET,
            punch_after: PUNCH_AFTER,
            punch_budget: None,
            punch: true,
            relay: true,
            upgrade_backoff: (Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// Checks a punch instruction before acting on it (HUB.md §3.6, §4.2): it must name the node
/// the name resolved to and make this side the dialer. A hub that says otherwise is lying or
/// broken, and the punch is not attempted.
pub fn check_punch(punch: &Punch, resolved: NodeId) -> Result<(), String> {
    if punch.peer != resolved {
        return Err(format!(
            "the hub's punch names node {}, not {resolved} that the name resolved to; refused",
            punch.peer
        ));
    }
    if punch.role != PunchRole::Dial {
        return Err(
            "the hub's punch makes this client the listener, but the client must dial; refused"
                .into(),
        );
    }
    Ok(())
}

impl Client {
    /// Connects to the node `url` names at its hub (`ferry://NAME@HUB/`). `config.server_id`,
    /// when set, is the hub's id; `config.identity` is ours (a fresh one when unset).
    pub async fn connect_named(
        url: &FerryUrl,
        config: ClientConfig,
    ) -> Result<NamedConnected, ClientError> {
        Self::connect_named_with(url, config, NamedOptions::default()).await
    }

    /// [`Client::connect_named`] with explicit budgets and stages: direct hints (Happy
    /// Eyeballs), then a hub-coordinated punch beside the direct race once it failed or after
    /// [`NamedOptions::punch_after`], then the relay (HUB.md §4.1). Each step is logged.
    pub async fn connect_named_with(
        url: &FerryUrl,
        config: ClientConfig,
        options: NamedOptions,
    ) -> Result<NamedConnected, ClientError> {
        let Some(name) = url.name.as_deref() else {
            return Err(ClientError::Usage(format!(
                "{url} names no node: expected ferry://NAME@HUB/"
            )));
        };
        let identity = config.identity.clone().unwrap_or_else(Identity::generate);
        let mut hub = HubConn::connect(&url.hints(), config.server_id, &identity)
            .await
            .map_err(hub_error)?;
        let hub_id = hub.hub_id();
        let resolved = hub.resolve(name).await.map_err(hub_error)?;
        info!(%name, node = %resolved.id, hints = resolved.hints.len(), online = resolved.online, "resolved at the hub");
        if !resolved.online {
            return Err(ClientError::Local(format!(
                "{name} is registered at the hub but not connected to it now, so there is no path to it"
            )));
        }
        let mut config = config;
        config.identity = Some(identity);
        // From here on the node's id is required of every path (spec/HUB.md §4.2).
        config.server_id = Some(resolved.id);
        let hints: Vec<String> = resolved
            .hints
            .iter()
            .filter(|(_, addr)| !addr.ip().is_unspecified() && addr.port() != 0)
            .map(|(source, addr)| {
                let source = match source {
                    HintSource::Reported => "reported",
                    HintSource::Reflected => "reflected",
                };
                info!(%addr, source, "direct hint");
                addr.to_string()
            })
            .collect();
        let found = direct_or_punch(&mut hub, name, resolved.id, &hints, &config, &options).await;
        if let Some((connected, route)) = found {
            return Ok(NamedConnected {
                connected,
                route,
                node: resolved.id,
                hub_id,
                retry: None,
            });
        }
        if !options.relay {
            return Err(ClientError::Local(format!(
                "no direct or punched path to {name}, and the relay is not to be used"
            )));
        }
        info!("asking the hub to relay");
        let hub_addr = hub.hub_addr();
        let (stream, claimed) = hub.relay(name).await.map_err(hub_error)?;
        if claimed != resolved.id {
            info!(%claimed, expected = %resolved.id, "the hub names another node at the relay's end; the handshake decides");
        }
        let timeout = config.connect_timeout;
        let client =
            tokio::time::timeout(timeout, Client::handshake(stream, hub_addr, config.clone()))
                .await
                .map_err(|_| ClientError::Timeout {
                    what: format!("handshaking with {name} through the hub"),
                    secs: timeout.as_secs(),
                })??;
        info!("relayed path");
        let retry = options.punch.then(|| Retry {
            hub: url.hints(),
            hub_id,
            name: name.to_owned(),
            node: resolved.id,
            budget: options
                .punch_budget
                .unwrap_or_else(|| ferry_hub::punch::PUNCH_BUDGET.min(config.connect_timeout / 3)),
            config: config.clone(),
            backoff: options.upgrade_backoff,
        });
        Ok(NamedConnected {
            connected: Connected {
                client,
                hint: url.hints()[0].clone(),
                addr: hub_addr,
                server_id: Some(resolved.id),
            },
            route: Route::Relayed,
            node: resolved.id,
            hub_id,
            retry,
        })
    }
}

fn punch_budget(options: &NamedOptions, config: &ClientConfig) -> Duration {
    options
        .punch_budget
        .unwrap_or_else(|| FIRST_PUNCH_BUDGET.min(config.connect_timeout / 3))
}

/// A connection to a named node that moves from the relay to a punched path when one appears
/// (as iroh and Tailscale do). While the route is [`Route::Relayed`], a background task asks
/// the hub for a punch again, with exponential back-off ([`NamedOptions::upgrade_backoff`]);
/// when one succeeds (the identity handshake requiring the node's id included), [`client`]
/// returns the punched connection from then on.
///
/// Nothing in flight is moved or cut: requests started on the relayed [`Client`] keep it, and
/// it closes when the last of them ends (a [`Client`] closes with its last handle), so a fetch
/// under way finishes on the relay, byte for byte, with its digest check, and the next request
/// goes direct. Dropping the session stops the background punching.
///
/// [`client`]: NamedSession::client
#[derive(Debug)]
pub struct NamedSession {
    current: Arc<Mutex<(Client, Route)>>,
    routes: watch::Receiver<Route>,
    /// The node the name resolved to.
    pub node: NodeId,
    /// The hub's proven id.
    pub hub_id: NodeId,
    task: Option<tokio::task::AbortHandle>,
}

impl NamedSession {
    /// Takes over a connection made by [`Client::connect_named_with`]; when it is relayed
    /// (and punching was allowed), starts punching again in the background.
    pub fn new(named: NamedConnected) -> Self {
        let route = named.route;
        let current = Arc::new(Mutex::new((named.connected.client, route)));
        let (tx, routes) = watch::channel(route);
        let task = match (route, named.retry) {
            (Route::Relayed, Some(retry)) => {
                let current = current.clone();
                Some(tokio::spawn(upgrade(retry, current, tx)).abort_handle())
            }
            _ => None,
        };
        Self {
            current,
            routes,
            node: named.node,
            hub_id: named.hub_id,
            task,
        }
    }

    /// Connects as [`Client::connect_named_with`] does and keeps upgrading.
    pub async fn connect(
        url: &FerryUrl,
        config: ClientConfig,
        options: NamedOptions,
    ) -> Result<Self, ClientError> {
        Ok(Self::new(
            Client::connect_named_with(url, config, options).await?,
        ))
    }

    /// The connection new requests should use: the punched one once the upgrade happened.
    pub fn client(&self) -> Client {
        lock(&self.current).0.clone()
    }

    /// The route of [`NamedSession::client`].
    pub fn route(&self) -> Route {
        lock(&self.current).1
    }

    /// Changes of route, for a caller that waits for the upgrade.
    pub fn routes(&self) -> watch::Receiver<Route> {
        self.routes.clone()
    }
}

impl Drop for NamedSession {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is one assignment, so a poisoned lock still holds a consistent value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The background half of [`NamedSession`]: punch again until a punch succeeds.
async fn upgrade(retry: Retry, current: Arc<Mutex<(Client, Route)>>, routes: watch::Sender<Route>) {
    let mut delay = retry.backoff.0;
    let mut attempt = 1u32;
    loop {
        tokio::time::sleep(delay).await;
        info!(attempt, "trying to move from the relay to a punched path");
        let identity = retry
            .config
            .identity
            .clone()
            .unwrap_or_else(Identity::generate);
        let outcome = match HubConn::connect(&retry.hub, Some(retry.hub_id), &identity).await {
            Ok(mut hub) => {
                punch(
                    &mut hub,
                    &retry.name,
                    retry.node,
                    &retry.config,
                    retry.budget,
                )
                .await
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok((connected, route)) => {
                info!(%route, attempt, "moved from the relay to a punched path; new requests use it");
                *lock(&current) = (connected.client, route);
                let _ = routes.send(route);
                return;
            }
            Err(e) => info!(attempt, "still relayed: {e}"),
        }
        delay = (delay * 2).min(retry.backoff.1);
        attempt += 1;
    }
}

/// The direct race, and the punch beside it once the race failed or ran
/// [`NamedOptions::punch_after`]; the first to succeed wins. `None` when neither did.
async fn direct_or_punch(
    hub: &mut HubConn,
    name: &str,
    node: NodeId,
    hints: &[String],
    config: &ClientConfig,
    options: &NamedOptions,
) -> Option<(Connected, Route)> {
    let direct = async {
        if hints.is_empty() {
            return Err("the node has no hints".to_owned());
        }
        let direct: FerryUrl = format!("ferry://{node}@{}/", hints.join(","))
            .parse()
            .map_err(|e| format!("the hub's hints do not form an address: {e}"))?;
        match tokio::time::timeout(
            options.direct_budget,
            Client::connect_url(&direct, config.clone()),
        )
        .await
        {
            Ok(Ok(connected)) => Ok(connected),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "nothing answered within {} ms",
                options.direct_budget.as_millis()
            )),
        }
    };
    tokio::pin!(direct);
    let mut direct_done = false;
    tokio::select! {
        result = &mut direct => match result {
            Ok(connected) => {
                info!(addr = %connected.addr, "direct path");
                return Some((connected, Route::Direct));
            }
            Err(e) => {
                info!("no direct path: {e}");
                direct_done = true;
            }
        },
        () = tokio::time::sleep(options.punch_after) => {}
    }
    if !options.punch {
        if direct_done {
            return None;
        }
        return match direct.await {
            Ok(connected) => {
                info!(addr = %connected.addr, "direct path");
                Some((connected, Route::Direct))
            }
            Err(e) => {
                info!("no direct path: {e}");
                None
            }
        };
    }
    let budget = punch_budget(options, config);
    let punch = punch(hub, name, node, config, budget);
    tokio::pin!(punch);
    let mut punch_done = false;
    while !(direct_done && punch_done) {
        tokio::select! {
            result = &mut direct, if !direct_done => match result {
                Ok(connected) => {
                    info!(addr = %connected.addr, "direct path");
                    return Some((connected, Route::Direct));
                }
                Err(e) => {
                    info!("no direct path: {e}");
                    direct_done = true;
                }
            },
            result = &mut punch, if !punch_done => match result {
                Ok(found) => return Some(found),
                Err(e) => {
                    info!("no punched path: {e}");
                    punch_done = true;
                }
            },
        }
    }
    None
}

/// The dialer's side of a hub-coordinated punch (HUB.md §3.6): measures the RTT to the hub,
/// shows the hub this client's UDP socket (§3.7), asks for the punch, checks the answer, races
/// TCP simultaneous open and QUIC, and runs the identity handshake requiring `node` over the
/// winner. A punched path is never trusted on first use.
async fn punch(
    hub: &mut HubConn,
    name: &str,
    node: NodeId,
    config: &ClientConfig,
    budget: Duration,
) -> Result<(Connected, Route), String> {
    info!("asking the hub to coordinate a punch");
    let rtt = hub.rtt().await.map_err(|e| e.to_string())?;
    let hub_addr = hub.hub_addr();
    let any = if hub_addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let quic = match QuicEndpoint::bind(any) {
        Ok(endpoint) => match hub.udp_token().await {
            Ok(token) => {
                match ferry_hub::punch::reflect(&endpoint, hub_addr, token, REFLECT_WAIT).await {
                    Some(seen) => {
                        info!(%seen, "the hub sees this client's udp socket");
                        Some(endpoint)
                    }
                    None => {
                        info!("no udp reflect answer from the hub; punching over tcp only");
                        None
                    }
                }
            }
            Err(e) => {
                info!("no udp token from the hub ({e}); punching over tcp only");
                None
            }
        },
        Err(e) => {
            info!("no udp socket ({e}); punching over tcp only");
            None
        }
    };
    let instruction = hub
        .punch(name, rtt, Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    check_punch(&instruction, node)?;
    info!(
        rtt_ms = rtt.as_millis() as u64,
        delay_ms = instruction.delay_ms,
        tcp = ?ferry_hub::punch::tcp_target(&instruction),
        udp = ?instruction.udp,
        budget_ms = budget.as_millis() as u64,
        "punching"
    );
    let punched = ferry_hub::punch::dial(&instruction, hub.local_addr(), quic.as_ref(), budget)
        .await
        .map_err(|e| e.to_string())?;
    let route = match punched.path {
        Path::PunchedQuic => Route::PunchedQuic,
        _ => Route::PunchedTcp,
    };
    info!(path = %punched.path, remote = %punched.remote, "punched; running the handshake");
    let remote = punched.remote;
    let client = tokio::time::timeout(
        config.connect_timeout,
        Client::handshake(punched.stream, remote, config.clone()),
    )
    .await
    .map_err(|_| {
        format!(
            "the handshake over the punched path to {remote} took over {} s",
            config.connect_timeout.as_secs()
        )
    })?
    .map_err(|e| format!("the handshake over the punched path to {remote} failed: {e}"))?;
    info!(%route, %remote, "punched path");
    let hint = Hint {
        host: remote.ip().to_string(),
        port: remote.port(),
    };
    Ok((
        Connected {
            client,
            hint,
            addr: remote,
            server_id: Some(node),
        },
        route,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: u8) -> NodeId {
        Identity::from_secret([seed; 32]).id()
    }

    #[test]
    fn a_punch_naming_another_node_or_making_the_client_listen_is_refused() {
        let good = Punch {
            peer: id(1),
            delay_ms: 20,
            role: PunchRole::Dial,
            addrs: vec!["127.0.0.1:9".parse().unwrap()],
            udp: vec![],
        };
        assert_eq!(check_punch(&good, id(1)), Ok(()));
        let other = Punch {
            peer: id(2),
            ..good.clone()
        };
        let refused = check_punch(&other, id(1)).unwrap_err();
        assert!(
            refused.contains("not") && refused.contains("refused"),
            "{refused}"
        );
        let listen = Punch {
            role: PunchRole::Listen,
            ..good
        };
        assert!(check_punch(&listen, id(1)).is_err());
    }
}
