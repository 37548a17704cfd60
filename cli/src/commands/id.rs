//! `ferry id [--new]`: this node's id, from the identity file (created on first use), or a new
//! identity with the old one kept aside (spec §13.1).

use std::time::SystemTime;

use super::{print_lines, Context};
use crate::cli::IdArgs;
use ferry_client::error::ClientError;
use ferry_common::identity::{self, IdentityOrigin};

pub fn run(ctx: &Context, args: IdArgs) -> Result<(), ClientError> {
    let path = identity::path_or_default(ctx.global.identity.as_deref())
        .map_err(|e| ClientError::Local(e.to_string()))?;
    let local = |e: identity::IdentityFileError| ClientError::Local(e.to_string());
    if args.new {
        let rotated = identity::rotate(&path, SystemTime::now()).map_err(local)?;
        match &rotated.old {
            Some((old, aside)) => ctx.note(&format!(
                "ferry: new identity in {}; the old one ({old}) is kept in {} until you remove it",
                path.display(),
                aside.display()
            )),
            None => ctx.note(&format!("ferry: created an identity in {}", path.display())),
        }
        print_lines([rotated.new.id().to_string()]);
        return Ok(());
    }
    let (identity, origin) = identity::load_or_create(&path).map_err(local)?;
    if origin == IdentityOrigin::Created {
        ctx.note(&format!("ferry: created an identity in {}", path.display()));
    }
    print_lines([identity.id().to_string()]);
    Ok(())
}
