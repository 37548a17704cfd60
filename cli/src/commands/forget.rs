//! `ferry forget HOST[:PORT]...`: removes pins from the known-servers file, so that the next
//! contact trusts whatever id answers there (spec §13.8), like `ssh-keygen -R`.

use super::{trust, Context};
use crate::cli::ForgetArgs;
use ferry_client::error::ClientError;
use ferry_common::known_servers;

pub fn run(ctx: &Context, args: ForgetArgs) -> Result<(), ClientError> {
    let file = trust::path()?;
    for url in &args.servers {
        for hint in url.hints() {
            let removed = known_servers::forget(&file, &hint)
                .map_err(|e| ClientError::Local(e.to_string()))?;
            let key = known_servers::pin_key(&hint);
            if removed == 0 {
                ctx.note(&format!("ferry: {} has no pin for {key}", file.display()));
            } else {
                ctx.note(&format!(
                    "ferry: forgot {key} ({removed} line{} removed from {})",
                    if removed == 1 { "" } else { "s" },
                    file.display()
                ));
            }
        }
    }
    Ok(())
}
