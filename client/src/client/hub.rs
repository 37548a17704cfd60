//! Reaching a node by name through a hub (spec/HUB.md §4): `ferry://alice@HUB/` asks the hub
//! for alice's node id and hints, races the hints (Happy Eyeballs, `race.rs`) requiring that
//! id, and when none answers as alice, asks the hub to relay. Every path runs the end-to-end
//! identity handshake with alice's id required, so neither a lying hint nor the hub can stand in
//! for her.

use std::fmt;
use std::time::Duration;

use ferry_common::url::FerryUrl;
use ferry_hub::wire::HintSource;
use ferry_hub::{HubConn, HubError};
use ferry_protocol::identity::{Identity, NodeId};
use tracing::info;

use super::{Client, ClientConfig, Connected};
use crate::error::ClientError;

/// How long the direct hints may take before the relay is tried: dead hints fail at once, and
/// a silent one should not hold the user up for the whole connect timeout.
pub const DIRECT_BUDGET: Duration = Duration::from_secs(2);

/// How the connection reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Dialled one of the node's hints.
    Direct,
    /// Forwarded by the hub (which sees only ciphertext).
    Relayed,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
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

impl Client {
    /// Connects to the node `url` names at its hub (`ferry://NAME@HUB/`). `config.server_id`,
    /// when set, is the hub's id; `config.identity` is ours (a fresh one when unset).
    pub async fn connect_named(
        url: &FerryUrl,
        config: ClientConfig,
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
        if !hints.is_empty() {
            let direct = format!("ferry://{}@{}/", resolved.id, hints.join(","));
            match direct.parse::<FerryUrl>() {
                Ok(direct) => {
                    let attempt = Client::connect_url(&direct, config.clone());
                    match tokio::time::timeout(DIRECT_BUDGET, attempt).await {
                        Ok(Ok(connected)) => {
                            info!(addr = %connected.addr, "direct path");
                            return Ok(NamedConnected {
                                connected,
                                route: Route::Direct,
                                node: resolved.id,
                                hub_id,
                            });
                        }
                        Ok(Err(e)) => info!("no direct path: {e}"),
                        Err(_) => info!("no direct path within {} ms", DIRECT_BUDGET.as_millis()),
                    }
                }
                Err(e) => info!("the hub's hints do not form an address: {e}"),
            }
        }
        info!("asking the hub to relay");
        let hub_addr = hub.hub_addr();
        let (stream, claimed) = hub.relay(name).await.map_err(hub_error)?;
        if claimed != resolved.id {
            info!(%claimed, expected = %resolved.id, "the hub names another node at the relay's end; the handshake decides");
        }
        let timeout = config.connect_timeout;
        let client = tokio::time::timeout(timeout, Client::handshake(stream, hub_addr, config))
            .await
            .map_err(|_| ClientError::Timeout {
                what: format!("handshaking with {name} through the hub"),
                secs: timeout.as_secs(),
            })??;
        info!("relayed path");
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
        })
    }
}
