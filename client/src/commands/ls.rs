//! `ferry ls URL [-l] [-R] [--json]`.

use ferry_protocol::message::Entry;
use ferry_protocol::ErrorCode;

use super::{print_lines, Context};
use crate::cli::LsArgs;
use crate::client::Client;
use crate::error::ClientError;
use crate::format;
use crate::transfer::remote_name;

pub async fn run(ctx: &Context, args: LsArgs) -> Result<(), ClientError> {
    let client = ctx.connect(&args.url).await?;
    let depth = args.depth.unwrap_or(u16::MAX);
    let entries = listing(&client, &args.url.path, args.recursive, depth).await?;
    if args.json {
        let json: Vec<_> = entries.iter().map(format::entry_json).collect();
        print_lines([serde_json::Value::Array(json).to_string()]);
    } else if args.long {
        print_lines(entries.iter().map(format::long_line));
    } else {
        print_lines(entries.iter().map(format::display_name));
    }
    Ok(())
}

/// Lists a directory sorted by name; a file lists as itself, like `ls FILE`.
pub async fn listing(
    client: &Client,
    path: &str,
    recursive: bool,
    depth: u16,
) -> Result<Vec<Entry>, ClientError> {
    let mut entries = match client.list(path, recursive, depth).await {
        Ok(entries) => entries,
        Err(ClientError::Remote(body)) if body.code == ErrorCode::NOT_A_DIRECTORY => {
            let mut entry = client.stat(path).await?;
            entry.name = remote_name(path).unwrap_or(path).to_string();
            vec![entry]
        }
        Err(e) => return Err(e),
    };
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}
