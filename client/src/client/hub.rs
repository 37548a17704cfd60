//! Reaching a node by name through a hub (spec/HUB.md §4): `ferry://alice@HUB/` asks the hub
//! for alice's node id and hints, races the hints (Happy Eyeballs, `race.rs`) requiring that
//! id, and then asks the hub, beside the race, both to coordinate a hole punch (TCP
//! simultaneous open and QUIC raced) and to relay. A direct or punched path wins whenever it
//! proves alice within a short grace of the punch's start ([`relay_grace`]); otherwise the
//! relay does, and a [`NamedSession`] keeps the punch going and moves to it when it lands.
//! Every path runs the end-to-end identity handshake with alice's id required, so neither a
//! lying hint nor the hub can stand in for her.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::url::{FerryUrl, Hint};
use ferry_hub::traversal::Path;
use ferry_hub::wire::{HintSource, Punch, PunchRole};
use ferry_hub::{HubConn, HubError};
use ferry_protocol::identity::{Identity, NodeId};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::info;

use super::{Client, ClientConfig, Connected};
use crate::error::ClientError;

/// Bound on the direct race: dead hints fail at once, and a silent one should not hold the
/// user up for the whole connect timeout.
pub const DIRECT_BUDGET: Duration = Duration::from_millis(1500);

/// How long the first punch may run: punches that work at all work within a few round trips
/// (about 100-300 ms in the NAT lab). The relay does not wait for it to end, only for its
/// grace ([`relay_grace`]); a relayed [`NamedSession`] lets it run on, then keeps punching
/// with the full [`ferry_hub::punch::PUNCH_BUDGET`].
pub const FIRST_PUNCH_BUDGET: Duration = Duration::from_secs(1);

/// The relay's grace, before the round trips [`relay_grace`] adds: one TCP punch re-attempt
/// ([`ferry_hub::traversal::tcp::ATTEMPT`]), so a punch whose first SYN a NAT dropped still
/// beats a relay that is ready sooner.
pub const RELAY_GRACE: Duration = Duration::from_millis(250);

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
    /// The first punch, still running when the relay won: a [`NamedSession`] moves to its path
    /// the moment it lands.
    pending: Option<PendingPunch>,
}

/// A punch still running (owning its hub connection), as a future to await.
struct PendingPunch(Attempt<'static>);

impl fmt::Debug for PendingPunch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingPunch")
    }
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
    /// Also ask the hub to relay, beside the punch (HUB.md §3.5, §4.1).
    pub relay: bool,
    /// How long a relay that proved the node's id still waits, from the punch's start time,
    /// for the punch (or the direct race) to win; see [`relay_grace`]. The round trips
    /// [`relay_grace`] adds come on top.
    pub relay_grace: Duration,
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
            relay_grace: RELAY_GRACE,
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
    /// Eyeballs), then, once the race failed or after [`NamedOptions::punch_after`], a
    /// hub-coordinated punch and the relay together beside it; the relay wins only after its
    /// grace ([`relay_grace`]) or once the others failed (HUB.md §4.1). Each step is logged.
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
        let paths = Paths {
            hub_hints: url.hints(),
            hub_id,
            name,
            node: resolved.id,
            config: &config,
            options: &options,
        };
        let (connected, route, pending) = paths.find(hub, &hints).await?;
        let retry = (route == Route::Relayed && options.punch).then(|| Retry {
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
            connected,
            route,
            node: resolved.id,
            hub_id,
            retry,
            pending,
        })
    }
}

/// The relay's grace (HUB.md §4.1): a relay that proved the node's id wins only once the punch
/// has failed, or `base` plus two round trips to the hub have passed since the punch's start
/// time. A punch that works at all connects within a SYN's round trip and the handshake's
/// first flight of its start (about 100-300 ms in the NAT lab), so the common punch is never
/// beaten by a relay that happened to be ready first; a punch that cannot work costs the relay
/// only this, not the punch's whole budget.
pub fn relay_grace(base: Duration, rtt: Duration) -> Duration {
    base + rtt * 2
}

/// One named connect's search for a path: the direct race, then the punch and the relay beside
/// it (HUB.md §4.1).
struct Paths<'a> {
    hub_hints: Vec<Hint>,
    hub_id: NodeId,
    name: &'a str,
    node: NodeId,
    config: &'a ClientConfig,
    options: &'a NamedOptions,
}

type Attempt<'a> = Pin<Box<dyn Future<Output = Result<(Connected, Route), String>> + Send + 'a>>;
type RelayAttempt<'a> = Pin<Box<dyn Future<Output = Result<Connected, ClientError>> + Send + 'a>>;

/// Awaits the future in `slot`; never ready while the slot is empty (a `select!` guard keeps
/// it from being polled then).
async fn run<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Paths<'_> {
    /// The direct race alone for [`NamedOptions::punch_after`] (or until it fails), then the
    /// punch on `hub` and the relay on a second hub connection, both beside the race. The
    /// first direct or punched path to prove the node wins; the relay wins when it proved the
    /// node and the grace ([`relay_grace`]) is over. When the relay wins while the punch still
    /// runs, the punch comes back as the pending one.
    async fn find(
        &self,
        hub: HubConn,
        hints: &[String],
    ) -> Result<(Connected, Route, Option<PendingPunch>), ClientError> {
        let options = self.options;
        let direct = self.direct(hints);
        tokio::pin!(direct);
        let mut direct_done = false;
        tokio::select! {
            result = &mut direct => match result {
                Ok(found) => return Ok((found.0, found.1, None)),
                Err(e) => {
                    info!("no direct path: {e}");
                    direct_done = true;
                }
            },
            () = tokio::time::sleep(options.punch_after) => {}
        }
        let phase = Instant::now();
        let (started_tx, started) = oneshot::channel();
        let mut started = Some(started);
        // The punch keeps the first hub connection: it is ready now, and the punch's TCP side
        // leaves from its port (PROTOCOL.md §14.3). The relay, which needs a connection of its
        // own (it becomes the relayed stream), opens a second one.
        let (mut punch, relay_hub): (Option<Attempt<'static>>, Option<HubConn>) = if options.punch {
            let budget = punch_budget(options, self.config);
            let (name, node, config) = (self.name.to_owned(), self.node, self.config.clone());
            let punching: Attempt<'static> = Box::pin(async move {
                let mut hub = hub;
                punch(&mut hub, &name, node, &config, budget, Some(started_tx)).await
            });
            (Some(punching), None)
        } else {
            (None, Some(hub))
        };
        let mut relay: Option<RelayAttempt<'_>> = options
            .relay
            .then(|| Box::pin(self.relay(relay_hub)) as RelayAttempt<'_>);
        let mut relay_error: Option<ClientError> = None;
        let mut relayed: Option<Connected> = None;
        // Without a punch, the grace runs from the start of this phase.
        let mut gate: Option<Instant> = punch.is_none().then(|| phase + options.relay_grace);
        loop {
            if let Some(connected) = relayed.take() {
                let open =
                    (direct_done && punch.is_none()) || gate.is_some_and(|at| Instant::now() >= at);
                if open {
                    if punch.is_some() {
                        info!("relayed path; the punch goes on beside it");
                    } else {
                        info!("relayed path");
                    }
                    return Ok((connected, Route::Relayed, punch.take().map(PendingPunch)));
                }
                relayed = Some(connected);
            }
            if direct_done && punch.is_none() && relay.is_none() && relayed.is_none() {
                return Err(match relay_error {
                    Some(e) => e,
                    None if !options.relay => ClientError::Local(format!(
                        "no direct or punched path to {}, and the relay is not to be used",
                        self.name
                    )),
                    None => ClientError::Local(format!("no path to {}", self.name)),
                });
            }
            let wait_gate = relayed.is_some() && gate.is_some();
            let gate_at = gate.unwrap_or_else(Instant::now);
            tokio::select! {
                result = &mut direct, if !direct_done => match result {
                    Ok(found) => return Ok((found.0, found.1, None)),
                    Err(e) => {
                        info!("no direct path: {e}");
                        direct_done = true;
                    }
                },
                result = run(&mut punch), if punch.is_some() => {
                    punch = None;
                    match result {
                        Ok((connected, route)) => return Ok((connected, route, None)),
                        Err(e) => {
                            info!("no punched path: {e}");
                            // Nothing left to wait for: the relay may win at once.
                            gate = Some(Instant::now());
                        }
                    }
                },
                result = run(&mut started), if started.is_some() => {
                    started = None;
                    if let Ok((start, rtt)) = result {
                        gate = gate.or(Some(start + relay_grace(options.relay_grace, rtt)));
                    }
                },
                result = run(&mut relay), if relay.is_some() => {
                    relay = None;
                    match result {
                        Ok(connected) => relayed = Some(connected),
                        Err(e) => {
                            info!("no relayed path: {e}");
                            relay_error = Some(e);
                        }
                    }
                },
                () = tokio::time::sleep_until(gate_at), if wait_gate => {}
            }
        }
    }

    /// The direct race over the node's hints, bounded by [`NamedOptions::direct_budget`].
    async fn direct(&self, hints: &[String]) -> Result<(Connected, Route), String> {
        if hints.is_empty() {
            return Err("the node has no hints".to_owned());
        }
        let direct: FerryUrl = format!("ferry://{}@{}/", self.node, hints.join(","))
            .parse()
            .map_err(|e| format!("the hub's hints do not form an address: {e}"))?;
        let budget = self.options.direct_budget;
        match tokio::time::timeout(budget, Client::connect_url(&direct, self.config.clone())).await
        {
            Ok(Ok(connected)) => {
                info!(addr = %connected.addr, "direct path");
                Ok((connected, Route::Direct))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("nothing answered within {} ms", budget.as_millis())),
        }
    }

    /// The relay (HUB.md §3.5) on `hub`, or on a new connection to the hub when `None`, and
    /// the end-to-end handshake through it requiring the node's id.
    async fn relay(&self, hub: Option<HubConn>) -> Result<Connected, ClientError> {
        info!("asking the hub to relay");
        let hub = match hub {
            Some(hub) => hub,
            None => {
                let identity = self
                    .config
                    .identity
                    .clone()
                    .unwrap_or_else(Identity::generate);
                HubConn::connect(&self.hub_hints, Some(self.hub_id), &identity)
                    .await
                    .map_err(hub_error)?
            }
        };
        let hub_addr = hub.hub_addr();
        let (stream, claimed) = hub.relay(self.name).await.map_err(hub_error)?;
        if claimed != self.node {
            info!(%claimed, expected = %self.node, "the hub names another node at the relay's end; the handshake decides");
        }
        let timeout = self.config.connect_timeout;
        let client = tokio::time::timeout(
            timeout,
            Client::handshake(stream, hub_addr, self.config.clone()),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            what: format!("handshaking with {} through the hub", self.name),
            secs: timeout.as_secs(),
        })??;
        Ok(Connected {
            client,
            hint: self.hub_hints[0].clone(),
            addr: hub_addr,
            server_id: Some(self.node),
        })
    }
}

fn punch_budget(options: &NamedOptions, config: &ClientConfig) -> Duration {
    options
        .punch_budget
        .unwrap_or_else(|| FIRST_PUNCH_BUDGET.min(config.connect_timeout / 3))
}

/// A connection to a named node that moves from the relay to a punched path when one appears
/// (as iroh and Tailscale do). While the route is [`Route::Relayed`], a background task first
/// lets the connect's own punch finish when the relay won before it did, then asks the hub for
/// a punch again, with exponential back-off ([`NamedOptions::upgrade_backoff`]);
/// when one succeeds (the identity handshake requiring the node's id included), [`client`]
/// returns the punched connection from then on.
///
/// Nothing in flight is moved or cut: requests started on the relayed [`Client`] keep it, and
/// it closes when the last of them ends (a [`Client`] closes with its last handle), so a fetch
/// under way finishes on the relay, byte for byte, with its digest check, and the next request
/// goes direct. A caller that wants a long fetch to move as well stops it when
/// [`NamedSession::routes`] changes and fetches the rest from the byte reached on the new
/// connection (HUB.md §4.1; `ferry get` does). Dropping the session stops the background
/// punching.
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
                Some(tokio::spawn(upgrade(retry, named.pending, current, tx)).abort_handle())
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

/// The background half of [`NamedSession`]: the first punch, when it was still running as the
/// relay won, then punches again until one succeeds.
async fn upgrade(
    retry: Retry,
    pending: Option<PendingPunch>,
    current: Arc<Mutex<(Client, Route)>>,
    routes: watch::Sender<Route>,
) {
    if let Some(PendingPunch(first)) = pending {
        match first.await {
            Ok((connected, route)) => {
                info!(%route, "the first punch landed after the relay; new requests use it");
                *lock(&current) = (connected.client, route);
                let _ = routes.send(route);
                return;
            }
            Err(e) => info!("no punched path: {e}"),
        }
    }
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
                    None,
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

/// The dialer's side of a hub-coordinated punch (HUB.md §3.6): measures the RTT to the hub,
/// shows the hub this client's UDP socket (§3.7), asks for the punch, checks the answer, races
/// TCP simultaneous open and QUIC, and runs the identity handshake requiring `node` over the
/// winner. A punched path is never trusted on first use. `started`, when given, learns the
/// punch's start time and the hub's RTT as soon as the hub's answer is checked (the relay's
/// grace runs from them).
async fn punch(
    hub: &mut HubConn,
    name: &str,
    node: NodeId,
    config: &ClientConfig,
    budget: Duration,
    started: Option<oneshot::Sender<(Instant, Duration)>>,
) -> Result<(Connected, Route), String> {
    info!("asking the hub to coordinate a punch");
    let rtt = hub.rtt().await.map_err(|e| e.to_string())?;
    let quic = ferry_hub::punch::udp_endpoint(hub).await;
    let instruction = hub
        .punch(name, rtt, Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    check_punch(&instruction, node)?;
    if let Some(started) = started {
        let start = Instant::now() + Duration::from_millis(u64::from(instruction.delay_ms));
        let _ = started.send((start, rtt));
    }
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
