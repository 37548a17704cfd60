//! `ferry-server ROOT --hub NAME@HUB` (spec/HUB.md §4): stays present at a hub as NAME, so
//! clients reach this server as `ferry://NAME@HUB/` directly or, when no hint of it can be
//! dialled, through the hub's relay. Relayed clients arrive through a [`RelayAcceptor`] and get
//! the same admission, identity handshake and services as direct ones.

use std::net::SocketAddr;

use ferry_common::url::FerryUrl;
use ferry_hub::{spawn_presence, Presence, PresenceConfig, RelayAcceptor};
use ferry_protocol::identity::Identity;

/// `NAME@HUB`: HUB is `host[:port]` or `ferry://HUBID@host:port/`.
pub fn parse_hub(text: &str) -> Result<FerryUrl, String> {
    let url = match text.trim().split_once('@') {
        Some((name, hub)) if !name.contains("://") => {
            let hub = hub.strip_prefix("ferry://").unwrap_or(hub);
            format!("ferry://{name}@{hub}")
        }
        _ => text.trim().to_string(),
    };
    let url: FerryUrl = url.parse().map_err(|e| format!("{e}"))?;
    if url.name.is_none() {
        return Err(format!(
            "{text:?} is not NAME@HUB (register the name first: ferry register NAME@HUB)"
        ));
    }
    Ok(url)
}

/// Starts the presence for `hub` as `identity`, reporting the listening addresses; an
/// unspecified one (0.0.0.0:PORT) is reported as this host's address on the route to the hub
/// with PORT (`ferry_hub::node::reported`).
pub fn start(
    hub: &FerryUrl,
    identity: Identity,
    listening: &[SocketAddr],
) -> (RelayAcceptor, Presence) {
    // parse_hub admitted only named addresses.
    let name = hub.name.clone().unwrap_or_default();
    let mut config = PresenceConfig::new(hub.hints(), hub.server_id, identity, name);
    config.addrs = listening.to_vec();
    spawn_presence(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_flags_parse_in_both_forms() {
        let id = Identity::from_secret([1; 32]).id();
        let plain = parse_hub("alice@hub.example.org:6790").unwrap();
        assert_eq!(plain.name.as_deref(), Some("alice"));
        let pinned = parse_hub(&format!("alice@ferry://{id}@10.0.0.1:6790/")).unwrap();
        assert_eq!(pinned.server_id, Some(id));
        assert!(parse_hub("hub.example.org").is_err());
    }
}
