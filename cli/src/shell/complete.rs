//! Tab completion: command names for the first word, remote paths for commands that take them
//! (listings cached per directory for a short while), local paths for `lcd`, `lls` and a
//! `get`'s destination.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_protocol::message::{Entry, EntryKind};
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::{Context, Helper, Highlighter, Hinter, Validator};
use tokio::runtime::Handle;

use super::help::COMMANDS;
use super::parse::escape;
use ferry_client::client::Client;
use ferry_common::url::join_remote;

/// How long a cached directory listing is trusted.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Completion must not hang the prompt on a slow server.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// A listing and when it was fetched.
type Cached = (Instant, Arc<Vec<Entry>>);

/// Directory listings by remote path, shared between the shell and its completer.
#[derive(Debug, Default)]
pub struct ListCache {
    dirs: Mutex<HashMap<String, Cached>>,
}

impl ListCache {
    pub fn get(&self, dir: &str) -> Option<Arc<Vec<Entry>>> {
        let dirs = self.dirs.lock().ok()?;
        let (at, entries) = dirs.get(dir)?;
        (at.elapsed() < CACHE_TTL).then(|| entries.clone())
    }

    pub fn put(&self, dir: &str, entries: Vec<Entry>) -> Arc<Vec<Entry>> {
        let entries = Arc::new(entries);
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.insert(dir.to_string(), (Instant::now(), entries.clone()));
        }
        entries
    }

    pub fn clear(&self) {
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.clear();
        }
    }
}

/// What the completer reads from the shell.
#[derive(Debug, Clone)]
pub struct CompletionContext {
    pub client: super::ClientSlot,
    pub handle: Handle,
    pub cwd: Arc<Mutex<String>>,
    pub cache: Arc<ListCache>,
}

/// The rustyline helper.
#[derive(Helper, Hinter, Highlighter, Validator)]
pub struct ShellHelper {
    ctx: CompletionContext,
    files: FilenameCompleter,
}

impl std::fmt::Debug for ShellHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellHelper").finish_non_exhaustive()
    }
}

impl ShellHelper {
    pub fn new(ctx: CompletionContext) -> Self {
        Self {
            ctx,
            files: FilenameCompleter::new(),
        }
    }

    /// Entries of remote directory `dir` (relative to the root), from the cache or the server.
    fn entries(&self, dir: &str) -> Option<Arc<Vec<Entry>>> {
        if let Some(entries) = self.ctx.cache.get(dir) {
            return Some(entries);
        }
        let client: Client = match self.ctx.client.lock() {
            Ok(client) => client.clone(),
            Err(_) => return None,
        };
        let path = dir.to_string();
        let listed = self.ctx.handle.block_on(async move {
            tokio::time::timeout(LIST_TIMEOUT, client.list(&path, false, 0)).await
        });
        match listed {
            Ok(Ok(entries)) => Some(self.ctx.cache.put(dir, entries)),
            _ => None,
        }
    }

    /// Candidates for a remote path word as typed (relative to the cwd, or `/`-absolute);
    /// only directories when `dirs_only` (for `cd`).
    pub fn remote_candidates(&self, word: &str, dirs_only: bool) -> Vec<Pair> {
        let (dir_part, prefix) = match word.rfind('/') {
            Some(i) => (&word[..=i], &word[i + 1..]),
            None => ("", word),
        };
        let cwd = self.ctx.cwd.lock().map(|c| c.clone()).unwrap_or_default();
        let dir = join_remote(&cwd, dir_part);
        let Some(entries) = self.entries(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<Pair> = entries
            .iter()
            .filter(|e| e.name.starts_with(prefix) && !e.name.contains('/'))
            .filter(|e| !dirs_only || e.kind == EntryKind::DIRECTORY)
            .map(|e| {
                let is_dir = e.kind == EntryKind::DIRECTORY;
                let shown = if is_dir {
                    format!("{}/", e.name)
                } else {
                    e.name.clone()
                };
                let mut replacement = format!("{}{}", escape(dir_part), escape(&e.name));
                if is_dir {
                    replacement.push('/');
                }
                Pair {
                    display: shown,
                    replacement,
                }
            })
            .collect();
        out.sort_by(|a, b| a.display.cmp(&b.display));
        out
    }
}

/// Which kind of argument the word at `index` (1-based after the command) of `command` is.
fn argument_kind(command: &str, index: usize, words_before: &[&str]) -> ArgKind {
    let positional = words_before.iter().filter(|w| !w.starts_with('-')).count();
    match command {
        "ls" | "cd" | "stat" | "mget" | "dir" => ArgKind::Remote,
        "get" if positional == 0 => ArgKind::Remote,
        "get" => ArgKind::Local,
        "lcd" | "lls" | "mput" => ArgKind::Local,
        "put" if positional == 0 => ArgKind::Local,
        "put" => ArgKind::Remote,
        "help" if index == 1 => ArgKind::Command,
        _ => ArgKind::None,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ArgKind {
    Command,
    Remote,
    Local,
    None,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        // The word being completed starts after the last unescaped space.
        let mut start = 0;
        let mut escaped = false;
        for (i, c) in before.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == ' ' {
                start = i + 1;
            }
        }
        let word = &before[start..];
        let earlier: Vec<&str> = before[..start].split_whitespace().collect();
        let Some((&command, args)) = earlier.split_first() else {
            let mut names: Vec<Pair> = COMMANDS
                .iter()
                .filter(|c| c.name.starts_with(word))
                .map(|c| Pair {
                    display: c.name.to_string(),
                    replacement: format!("{} ", c.name),
                })
                .collect();
            names.dedup_by(|a, b| a.display == b.display);
            return Ok((start, names));
        };
        match argument_kind(command, args.len() + 1, args) {
            ArgKind::Command => Ok((
                start,
                COMMANDS
                    .iter()
                    .filter(|c| c.name.starts_with(word))
                    .map(|c| Pair {
                        display: c.name.to_string(),
                        replacement: c.name.to_string(),
                    })
                    .collect(),
            )),
            ArgKind::Remote => {
                // Unescape what was typed so far to match against real names.
                let typed = super::parse::split(word)
                    .ok()
                    .and_then(|l| l.words.into_iter().next())
                    .unwrap_or_default();
                Ok((start, self.remote_candidates(&typed, command == "cd")))
            }
            ArgKind::Local => self.files.complete(line, pos, ctx),
            ArgKind::None => Ok((pos, Vec::new())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_kinds() {
        assert_eq!(argument_kind("get", 1, &[]), ArgKind::Remote);
        assert_eq!(argument_kind("get", 2, &["a.txt"]), ArgKind::Local);
        assert_eq!(argument_kind("get", 2, &["-r"]), ArgKind::Remote);
        assert_eq!(argument_kind("lcd", 1, &[]), ArgKind::Local);
        assert_eq!(argument_kind("help", 1, &[]), ArgKind::Command);
        assert_eq!(argument_kind("pwd", 1, &[]), ArgKind::None);
    }

    #[test]
    fn cache_expires_and_clears() {
        let cache = ListCache::default();
        assert!(cache.get("a").is_none());
        cache.put("a", Vec::new());
        assert!(cache.get("a").is_some());
        cache.clear();
        assert!(cache.get("a").is_none());
    }
}
