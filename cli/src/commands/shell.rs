//! `ferry shell URL [-b FILE]`: connects, then hands over to [`crate::shell::Shell`].

use tokio::runtime::Runtime;

use super::Context;
use crate::cli::ShellArgs;
use crate::shell::Shell;
use ferry_client::error::ClientError;

pub fn run(ctx: &Context, args: ShellArgs, runtime: &Runtime) -> Result<(), ClientError> {
    let client = runtime.block_on(super::interruptible(ctx.connect(&args.url)))?;
    let config = ctx.client_config_for(&args.url)?;
    Shell::new(ctx.clone(), runtime.handle().clone(), client, &args.url)
        .reconnect_with(config)
        .run(args.batch.as_deref())
}
