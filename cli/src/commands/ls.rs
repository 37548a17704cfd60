//! `ferry ls URL [-l] [-R] [--json]`.

use ferry_protocol::message::Entry;
use ferry_protocol::ErrorCode;

use super::{print_lines, Context};
use crate::cli::LsArgs;
use crate::format;
use ferry_client::client::Client;
use ferry_client::error::ClientError;
use ferry_client::transfer::remote_name;

pub async fn run(ctx: &Context, args: LsArgs) -> Result<(), ClientError> {
    let client = ctx.connect(&args.url).await?;
    let depth = args.depth.unwrap_or(u16::MAX);
    // Pages are printed as they arrive (each sorted; the server sends names in order), so a
    // listing of any size costs one page of memory. --json is one array, streamed.
    let mut out = Output::new(&args);
    // Link targets only where they are shown.
    let links = args.long;
    let mut stream = client.list_stream_with(&args.url.path, args.recursive, depth, links)?;
    loop {
        match stream.next_page().await {
            Ok(Some(mut page)) => {
                page.sort_by(|a, b| a.name.cmp(&b.name));
                out.page(&page);
            }
            Ok(None) => break,
            Err(ClientError::Remote(body))
                if body.code == ErrorCode::NOT_A_DIRECTORY && out.is_empty() =>
            {
                let path = &args.url.path;
                let mut entry = client.stat(path).await?;
                entry.name = remote_name(path).unwrap_or(path).to_string();
                out.page(&[entry]);
                break;
            }
            Err(e) => {
                out.finish();
                return Err(e);
            }
        }
    }
    out.finish();
    Ok(())
}

/// Writes entries to stdout in the chosen format as they come.
struct Output {
    json: bool,
    long: bool,
    written: u64,
}

impl Output {
    fn new(args: &LsArgs) -> Self {
        Self {
            json: args.json,
            long: args.long,
            written: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.written == 0
    }

    fn page(&mut self, entries: &[Entry]) {
        if self.json {
            let mut text = String::new();
            for entry in entries {
                text.push(if self.written == 0 { '[' } else { ',' });
                text.push_str(&format::json_text(&format::entry_json(entry)));
                self.written += 1;
            }
            super::print_text(&text);
        } else if self.long {
            self.written += entries.len() as u64;
            print_lines(entries.iter().map(format::long_line));
        } else {
            self.written += entries.len() as u64;
            print_lines(entries.iter().map(format::display_name));
        }
    }

    /// Closes the JSON array.
    fn finish(&mut self) {
        if self.json {
            super::print_text(if self.written == 0 { "[]\n" } else { "]\n" });
        }
    }
}

/// Lists a directory sorted by name; a file lists as itself, like `ls FILE`.
/// With `links`, symlinks inside the root carry their text (for `ls -l`).
pub async fn listing(
    client: &Client,
    path: &str,
    recursive: bool,
    depth: u16,
    links: bool,
) -> Result<Vec<Entry>, ClientError> {
    let mut entries = match client.list_with(path, recursive, depth, links).await {
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
