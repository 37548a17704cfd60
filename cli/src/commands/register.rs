//! `ferry register NAME@HUB [--invite CODE] [--release | --move-to ID]`, and reaching
//! `ferry://NAME@HUB/` addresses (spec/HUB.md): both talk to a hub with this machine's identity,
//! and a hub named without its id is trusted on first use like a server (its id pinned in
//! known_servers, a different one later refused).

use super::{print_lines, trust, Context};
use crate::cli::RegisterArgs;
use ferry_client::client::hub::{hub_error, NamedConnected};
use ferry_client::client::Client;
use ferry_client::error::ClientError;
use ferry_common::known_servers::{self, KnownServers};
use ferry_common::url::FerryUrl;
use ferry_hub::{HubConn, HubError};
use ferry_protocol::identity::NodeId;

/// `NAME@HUB` as `ferry register` takes it: HUB is a `ferry://` address of the hub
/// (`ferry://HUBID@host:port/`) or `host[:port]`; `ferry://NAME@HUB/` is accepted too.
pub fn parse_target(text: &str) -> Result<FerryUrl, String> {
    let text = text.trim();
    let url = match text.split_once('@') {
        Some((name, hub)) if !name.contains("://") => {
            let hub = hub.strip_prefix("ferry://").unwrap_or(hub);
            format!("ferry://{}@{hub}", name.to_lowercase())
        }
        _ => text.to_string(),
    };
    let url: FerryUrl = url.parse().map_err(|e| format!("{e}"))?;
    if url.name.is_none() {
        return Err(format!(
            "{text:?} names no one: expected NAME@HUB, a name being 1 to 32 of a-z, 0-9 and '-' starting with a letter"
        ));
    }
    Ok(url)
}

/// The hub's id to require: the address's, else a pinned one.
fn hub_pin(url: &FerryUrl) -> Result<Option<known_servers::Pin>, ClientError> {
    trust::pin_for(url)
}

/// After a first contact with a hub named without its id, pins the id it proved.
fn pin_first_contact(ctx: &Context, url: &FerryUrl, hub_id: NodeId) -> Result<(), ClientError> {
    if url.server_id.is_some() {
        return Ok(());
    }
    let file = trust::path()?;
    let local = |e: known_servers::KnownServersError| ClientError::Local(e.to_string());
    let known = KnownServers::load(&file).map_err(local)?;
    let hint = &url.hints()[0];
    if known.lookup(hint).is_none() {
        let line = known_servers::add(&file, hint, &hub_id).map_err(local)?;
        ctx.note(&format!(
            "ferry: first contact with the hub {}: pinned its id {hub_id} in {} (line {line}); a different id there will be refused",
            known_servers::pin_key(hint),
            file.display()
        ));
    }
    Ok(())
}

/// A pinned hub that proved another id is refused like a changed server.
fn changed_server(pin: &known_servers::Pin, proven: NodeId) -> ClientError {
    ClientError::KnownServerChanged {
        authority: pin.authority.clone(),
        proven,
        known: pin.id,
        file: trust::path()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        line: pin.line,
    }
}

fn changed(e: HubError, pin: Option<&known_servers::Pin>) -> ClientError {
    match (e, pin) {
        (HubError::WrongHub { proven, .. }, Some(pin)) => changed_server(pin, proven),
        (e, _) => hub_error(e),
    }
}

/// Connects to the node `url` names (`ferry://NAME@HUB/`): direct hints first, else the
/// hub's relay; the node's id is required either way.
pub async fn connect_named(ctx: &Context, url: &FerryUrl) -> Result<NamedConnected, ClientError> {
    let pin = hub_pin(url)?;
    let mut config = ctx
        .client_config_with_key(ferry_protocol::Key::generate())
        .identity(ctx.identity()?);
    if let Some(id) = url.server_id.or(pin.as_ref().map(|p| p.id)) {
        config = config.server_id(id);
    }
    let connected = match (Client::connect_named(url, config).await, &pin) {
        (Ok(connected), _) => connected,
        (
            Err(ClientError::WrongServer {
                expected, proven, ..
            }),
            Some(pin),
        ) if expected == pin.id => return Err(changed_server(pin, proven)),
        (Err(e), _) => return Err(e),
    };
    if pin.is_none() {
        pin_first_contact(ctx, url, connected.hub_id)?;
    }
    Ok(connected)
}

pub async fn run(ctx: &Context, args: RegisterArgs) -> Result<(), ClientError> {
    let url = &args.target;
    // Validated by parse_target.
    let name = url.name.clone().unwrap_or_default();
    let me = ctx.identity()?;
    let pin = hub_pin(url)?;
    let hub_id = url.server_id.or(pin.as_ref().map(|p| p.id));
    let mut hub = HubConn::connect(&url.hints(), hub_id, &me)
        .await
        .map_err(|e| changed(e, pin.as_ref()))?;
    if pin.is_none() {
        pin_first_contact(ctx, url, hub.hub_id())?;
    }
    let hub_line = format!("ferry://{}@{}", hub.hub_id(), url.hints()[0].authority());
    if args.release {
        hub.release(&name).await.map_err(hub_error)?;
        print_lines([format!("released {name} at {hub_line}")]);
    } else if let Some(to) = args.move_to {
        hub.move_to(&name, to).await.map_err(hub_error)?;
        print_lines([format!("moved {name} at {hub_line} to {to}")]);
    } else {
        let id = hub
            .register(&name, args.invite.as_deref())
            .await
            .map_err(hub_error)?;
        print_lines([format!("registered {name} at {hub_line} as {id}")]);
        ctx.note(&format!(
            "ferry: serve as {name} with: ferry-server ROOT --hub {name}@{hub_line}; clients reach it as ferry://{name}@{}/",
            &hub_line["ferry://".len()..]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::identity::Identity;

    #[test]
    fn targets_take_a_hub_address_in_every_form() {
        let id = Identity::from_secret([1; 32]).id();
        let plain = parse_target("alice@hub.example.org:7000").unwrap();
        assert_eq!(plain.name.as_deref(), Some("alice"));
        assert_eq!(plain.authority(), "hub.example.org:7000");
        let with_id = parse_target(&format!("Alice@ferry://{id}@10.0.0.1:7000/")).unwrap();
        assert_eq!(with_id.name.as_deref(), Some("alice"));
        assert_eq!(with_id.server_id, Some(id));
        let url = parse_target(&format!("ferry://bob@{id}@h/")).unwrap();
        assert_eq!(url.name.as_deref(), Some("bob"));
        assert!(parse_target("hub.example.org").is_err());
        assert!(parse_target("a_b@hub").is_err());
    }
}
