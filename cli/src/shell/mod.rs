//! The interactive shell (`ferry shell`, `ferry demo`) and its batch mode.
//!
//! Interactive: rustyline with tab completion ([`complete`]), persistent history in
//! `dirs::data_dir()/ferry/history`, and a prompt showing the remote directory. A foreground
//! command runs while the prompt waits; Ctrl-C cancels it (a transfer keeps its `.part`) and the
//! shell goes on. `get ... &` and `mget` run as background jobs: the prompt stays usable, `jobs`
//! shows their progress, and a line reports each one's end before the next prompt.
//!
//! Batch (stdin not a terminal, or `-b FILE`): like `sftp -b`, commands run one after another
//! with no bars, and the first failure stops the run unless its line starts with `-`.
//!
//! The pieces: this file is the loop (read a line, dispatch it) and the [`Shell`] itself;
//! `remote.rs` holds the commands that ask the server (ls, cd, stat, ping, get, mget),
//! `local.rs` those that only touch this machine (lcd, lls, lpwd), and `jobs.rs` how
//! transfers run: in the foreground with Ctrl-C, or as background jobs (`jobs`, `jobs -w`,
//! waiting for them at exit).

pub mod complete;
pub mod help;
mod jobs;
mod local;
pub mod parse;
mod remote;
mod upload;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor};
use tokio::runtime::Handle;

use crate::commands::{self, print_lines, print_text, Context};
use complete::{CompletionContext, ListCache, ShellHelper};
use ferry_client::client::{Client, ClientConfig};
use ferry_client::error::ClientError;
use ferry_common::url::{join_remote, FerryUrl};
use jobs::{Job, Notices};

/// Whether to keep reading commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Exit,
}

/// The shell's current connection, shared with the completer.
pub type ClientSlot = Arc<Mutex<Client>>;

/// One shell session on one connection.
pub struct Shell {
    ctx: Context,
    handle: Handle,
    /// The connection; replaced when it is lost and a command needs the server again.
    client: ClientSlot,
    /// How to connect again, if the shell may.
    reconnect: Option<ClientConfig>,
    server: FerryUrl,
    cwd: Arc<Mutex<String>>,
    cache: Arc<ListCache>,
    jobs: Vec<Job>,
    next_job: usize,
    batch: bool,
    notices: Notices,
    /// Set by Ctrl-C in batch mode, where there is no prompt to come back to.
    interrupted: Arc<AtomicBool>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("server", &self.server)
            .field("cwd", &self.cwd())
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

/// Where history is kept: `dirs::data_dir()/ferry/history`.
pub fn history_file() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("ferry").join("history"))
}

impl Shell {
    /// A shell on `client`, starting in `url.path`.
    pub fn new(ctx: Context, handle: Handle, client: Client, url: &FerryUrl) -> Self {
        Self {
            ctx,
            handle,
            client: Arc::new(Mutex::new(client)),
            reconnect: None,
            server: url.with_path(""),
            cwd: Arc::new(Mutex::new(url.path.clone())),
            cache: Arc::default(),
            jobs: Vec::new(),
            next_job: 1,
            batch: false,
            notices: Arc::default(),
            interrupted: Arc::default(),
        }
    }

    /// Lets the shell reconnect with `config` when the connection is lost.
    pub fn reconnect_with(mut self, config: ClientConfig) -> Self {
        self.reconnect = Some(config);
        self
    }

    fn client(&self) -> Client {
        match self.client.lock() {
            Ok(client) => client.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Before a command that needs the server: if the connection was lost, connect again.
    fn ensure_connected(&self) -> Result<(), ClientError> {
        if !self.client().is_closed() {
            return Ok(());
        }
        let Some(config) = self.reconnect.clone() else {
            return Err(ClientError::ConnectionLost(
                "the connection to the server is closed".into(),
            ));
        };
        let server = self.server.clone();
        let client = self
            .handle
            .block_on(commands::interruptible(Client::connect(&server, config)))?;
        eprintln!("reconnected to {}", self.server.authority());
        self.cache.clear();
        if let Ok(mut slot) = self.client.lock() {
            *slot = client;
        }
        Ok(())
    }

    fn cwd(&self) -> String {
        self.cwd.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn set_cwd(&self, path: String) {
        if let Ok(mut cwd) = self.cwd.lock() {
            *cwd = path;
        }
    }

    fn remote(&self, path: &str) -> String {
        join_remote(&self.cwd(), path)
    }

    /// Chooses interactive or batch mode from `batch_file` and whether stdin is a terminal.
    pub fn run(self, batch_file: Option<&Path>) -> Result<(), ClientError> {
        // Take over SIGINT for the whole session now (tokio keeps the handler installed), so a
        // Ctrl-C between two commands can never kill the shell with its default action.
        #[cfg(unix)]
        {
            let installed = self.handle.block_on(async {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            });
            if let Err(e) = installed {
                tracing::debug!(error = %e, "cannot install the Ctrl-C handler");
            }
        }
        match batch_file {
            Some(path) => {
                let file = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
                self.run_batch(std::io::BufReader::new(file))
            }
            None if std::io::stdin().is_terminal() => self.run_interactive(),
            None => self.run_batch(std::io::stdin().lock()),
        }
    }

    /// Reads commands with rustyline until `exit` or Ctrl-D.
    pub fn run_interactive(mut self) -> Result<(), ClientError> {
        let config = Config::builder()
            .completion_type(CompletionType::List)
            .auto_add_history(true)
            .max_history_size(2000)
            .map_err(|e| ClientError::Local(format!("line editor: {e}")))?
            .build();
        let mut editor: Editor<ShellHelper, DefaultHistory> = Editor::with_config(config)
            .map_err(|e| ClientError::Local(format!("cannot start the line editor: {e}")))?;
        editor.set_helper(Some(ShellHelper::new(CompletionContext {
            client: self.client.clone(),
            handle: self.handle.clone(),
            cwd: self.cwd.clone(),
            cache: self.cache.clone(),
        })));
        let history = history_file();
        if let Some(path) = &history {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.load_history(path);
        }
        print_lines([format!(
            "Connected to {}. Type help for commands, Tab to complete, Ctrl-D to leave.",
            self.server.authority()
        )]);
        loop {
            self.print_notices();
            let prompt = format!("ferry:/{}> ", self.cwd());
            match editor.readline(&prompt) {
                Ok(line) => {
                    if let Some(path) = &history {
                        let _ = editor.save_history(path);
                    }
                    match self.execute(&line) {
                        Ok(Outcome::Exit) => break,
                        Ok(Outcome::Continue) => {}
                        // An error that ends the shell is printed once, by `main`.
                        Err(e) if e.is_connection_error() && self.reconnect.is_none() => {
                            self.finish_jobs();
                            return Err(e);
                        }
                        Err(e) => eprintln!("ferry: {e}"),
                    }
                }
                // Ctrl-C at the prompt clears the line, like a shell.
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(ClientError::Local(format!("reading input: {e}"))),
            }
        }
        self.finish_jobs();
        Ok(())
    }

    /// Runs commands from `input`, one per line, like `sftp -b`.
    pub fn run_batch(mut self, input: impl BufRead) -> Result<(), ClientError> {
        self.batch = true;
        let flag = self.interrupted.clone();
        let watcher = self.handle.spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        let result = self.batch_lines(input);
        watcher.abort();
        result
    }

    fn batch_lines(&mut self, input: impl BufRead) -> Result<(), ClientError> {
        for line in input.lines() {
            let line = line.map_err(|e| ClientError::io("<batch input>", e))?;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (tolerant, command) = match trimmed.strip_prefix('-') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, trimmed),
            };
            eprintln!("ferry> {trimmed}");
            match self.execute(command) {
                Ok(Outcome::Exit) => return Ok(()),
                Ok(Outcome::Continue) => {}
                // The error that stops the run is printed once, by `main`, as the exit reason.
                Err(e) if !tolerant || matches!(e, ClientError::Interrupted) => return Err(e),
                Err(e) => eprintln!("ferry: {e}"),
            }
            if self.interrupted.load(Ordering::SeqCst) {
                return Err(ClientError::Interrupted);
            }
        }
        Ok(())
    }

    /// Runs one command line.
    pub fn execute(&mut self, line: &str) -> Result<Outcome, ClientError> {
        let parsed = parse::split(line).map_err(|e| ClientError::Usage(e.to_string()))?;
        let Some((command, args)) = parsed.words.split_first() else {
            return Ok(Outcome::Continue);
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let background = parsed.background && !self.batch;
        if matches!(
            command.as_str(),
            "ls" | "dir" | "cd" | "stat" | "get" | "mget" | "ping" | "put" | "mput"
        ) {
            self.ensure_connected()?;
        }
        if parsed.background && !matches!(command.as_str(), "get" | "mget") {
            return Err(ClientError::Usage(format!(
                "only get and mget can run in the background, not {command}"
            )));
        }
        match command.as_str() {
            "ls" | "dir" => self.retrying(|shell| shell.ls(&args))?,
            "cd" => self.retrying(|shell| shell.cd(&args))?,
            "pwd" => print_lines([format!("/{}", self.cwd())]),
            "stat" => self.retrying(|shell| shell.stat(&args))?,
            "get" => self.get(&args, background)?,
            "mget" => self.mget(&args)?,
            "put" => self.put(&args)?,
            "mput" => self.mput(&args)?,
            "jobs" => match args.as_slice() {
                [] => self.jobs(),
                ["-w"] => self.watch_jobs(),
                _ => return Err(ClientError::Usage("usage: jobs [-w]".into())),
            },
            "lcd" => local::lcd(&args)?,
            "lls" => local::lls(&args)?,
            "lpwd" => local::lpwd()?,
            "ping" => self.retrying(|shell| shell.ping(&args))?,
            "help" | "?" => match args.first() {
                None => print_text(&help::overview()),
                Some(name) => match help::find(name) {
                    Some(c) => print_text(&help::about(c)),
                    None => {
                        return Err(ClientError::Usage(format!(
                            "no command {name}; type help for the list"
                        )))
                    }
                },
            },
            "exit" | "quit" | "bye" => return Ok(Outcome::Exit),
            other => {
                return Err(ClientError::Usage(format!(
                    "unknown command {other}; type help for the list"
                )))
            }
        }
        Ok(Outcome::Continue)
    }

    /// Runs a command that only reads; if the connection turns out to have died under it,
    /// reconnects and runs it once more.
    fn retrying(&self, f: impl Fn(&Self) -> Result<(), ClientError>) -> Result<(), ClientError> {
        match f(self) {
            Err(e)
                if e.is_connection_error()
                    && self.reconnect.is_some()
                    && self.client().is_closed() =>
            {
                self.ensure_connected()?;
                f(self)
            }
            other => other,
        }
    }

    /// Runs `fut` in the foreground; Ctrl-C abandons it.
    fn block_on<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        self.handle.block_on(commands::interruptible(fut))
    }
}

/// Splits leading `-xyz` flags (from `allowed`) from the other words.
fn split_flags<'a>(args: &[&'a str], allowed: &str) -> Result<(String, Vec<&'a str>), ClientError> {
    let mut flags = String::new();
    let mut rest = Vec::new();
    let mut done = false;
    for arg in args {
        if !done && *arg == "--" {
            done = true;
        } else if !done && arg.starts_with('-') && arg.len() > 1 {
            for c in arg[1..].chars() {
                if !allowed.contains(c) {
                    return Err(ClientError::Usage(format!("unknown option -{c}")));
                }
                flags.push(c);
            }
        } else {
            rest.push(*arg);
        }
    }
    Ok((flags, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_split_from_words() {
        let (flags, rest) = split_flags(&["-lR", "docs", "--", "-x"], "lR").unwrap();
        assert_eq!(flags, "lR");
        assert_eq!(rest, ["docs", "-x"]);
        assert!(split_flags(&["-z"], "l").is_err());
    }
}
