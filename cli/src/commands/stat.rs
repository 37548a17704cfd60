//! `ferry stat URL [--json]`.

use super::{print_lines, print_text, Context};
use crate::cli::StatArgs;
use crate::format;
use ferry_client::error::ClientError;

pub async fn run(ctx: &Context, args: StatArgs) -> Result<(), ClientError> {
    let client = ctx.connect(&args.url).await?;
    let entry = client.stat(&args.url.path).await?;
    if args.json {
        let mut json = format::entry_json(&entry);
        json["path"] = args.url.path.clone().into();
        print_lines([format::json_text(&json)]);
    } else {
        print_text(&format::stat_text(&args.url.path, &entry));
    }
    Ok(())
}
