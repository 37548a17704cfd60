//! Trust on first use (spec §13.8): an address without `ID@` reached with the identity
//! handshake is checked against, or pinned in, the known-servers file
//! (`ferry_common::known_servers`), as OpenSSH does with `known_hosts`.
//!
//! When: an address without an id uses the identity handshake when `--identity FILE` is given,
//! or when the known-servers file already pins one of its hints (that server is then always
//! held to its id, key or no key). Otherwise it uses the pre-shared key, and the file is not
//! read. An address with `ID@` never reads or writes the file: the id in it rules.

use std::path::PathBuf;

use super::Context;
use ferry_client::client::{Client, ClientConfig};
use ferry_client::error::ClientError;
use ferry_common::known_servers::{self, KnownServers, Pin};
use ferry_common::url::FerryUrl;

/// `<config dir>/ferry/known_servers`.
pub fn path() -> Result<PathBuf, ClientError> {
    known_servers::default_path()
        .ok_or_else(|| ClientError::Local("no config directory for the known-servers file".into()))
}

fn local(e: known_servers::KnownServersError) -> ClientError {
    ClientError::Local(e.to_string())
}

/// The pin that holds `url` to an id: the first of its hints that is pinned. `None` for an
/// address with `ID@`, or when no hint is pinned.
pub fn pin_for(url: &FerryUrl) -> Result<Option<Pin>, ClientError> {
    if url.server_id.is_some() {
        return Ok(None);
    }
    let known = KnownServers::load(&path()?).map_err(local)?;
    Ok(known.first_pinned(&url.hints()).map(|(_, pin)| pin.clone()))
}

/// Whether `url` is reached with the identity handshake (the module doc says when).
pub fn uses_identity(ctx: &Context, url: &FerryUrl) -> Result<bool, ClientError> {
    Ok(url.server_id.is_some() || ctx.global.identity.is_some() || pin_for(url)?.is_some())
}

/// Connects with `config` (from [`Context::client_config_for`], which requires a pinned id);
/// on first contact pins the id the answering hint proved, with a notice on stderr; a pinned
/// server that proves another id is refused with [`ClientError::KnownServerChanged`].
pub async fn connect(
    ctx: &Context,
    url: &FerryUrl,
    config: ClientConfig,
) -> Result<Client, ClientError> {
    if url.server_id.is_some() || config.identity.is_none() {
        return Client::connect(url, config).await;
    }
    let file = path()?;
    let pin = pin_for(url)?;
    match Client::connect_url(url, config).await {
        Ok(connected) => {
            let known = KnownServers::load(&file).map_err(local)?;
            if let (Some(id), None) = (connected.server_id, known.lookup(&connected.hint)) {
                let line = known_servers::add(&file, &connected.hint, &id).map_err(local)?;
                ctx.note(&format!(
                    "ferry: first contact with {}: pinned its id {id} in {} (line {line}); a different id there will be refused",
                    known_servers::pin_key(&connected.hint),
                    file.display()
                ));
            }
            Ok(connected.client)
        }
        Err(e) => match (e, pin) {
            (ClientError::WrongServer { proven, .. }, Some(pin)) => {
                Err(ClientError::KnownServerChanged {
                    authority: pin.authority,
                    proven,
                    known: pin.id,
                    file: file.display().to_string(),
                    line: pin.line,
                })
            }
            (e, _) => Err(e),
        },
    }
}
