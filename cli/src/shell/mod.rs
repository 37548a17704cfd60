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

pub mod complete;
pub mod help;
pub mod parse;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use ferry_protocol::message::{Entry, EntryKind};
use futures::StreamExt;
use indicatif::HumanBytes;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::commands::{self, print_lines, print_text, Context};
use crate::format;
use crate::progress::{self, Progress};
use complete::{CompletionContext, ListCache, ShellHelper};
use ferry_client::client::{Client, ClientConfig};
use ferry_client::error::ClientError;
use ferry_client::transfer::{self, cancel_pair, remote_name, Cancel, CancelHandle, GetOptions};
use ferry_common::url::{join_remote, FerryUrl};

/// Whether to keep reading commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Exit,
}

/// Lines from finished background jobs, printed before the next prompt (as a Unix shell
/// reports finished jobs). rustyline's `ExternalPrinter` could print them at once, but with it
/// rustyline 14 stalls on typed-ahead or pasted input, which is worse.
type Notices = Arc<Mutex<Vec<(usize, String)>>>;

/// The shell's current connection, shared with the completer.
pub type ClientSlot = Arc<Mutex<Client>>;

/// A job's outcome: `None` while running, then its one-line summary or error.
type JobResult = Arc<Mutex<Option<Result<String, String>>>>;

/// A background transfer.
struct Job {
    id: usize,
    label: String,
    started: Instant,
    progress: Progress,
    cancel: CancelHandle,
    task: JoinHandle<()>,
    result: JobResult,
}

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
            "ls" | "dir" | "cd" | "stat" | "get" | "mget" | "ping"
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
            "jobs" => match args.as_slice() {
                [] => self.jobs(),
                ["-w"] => self.watch_jobs(),
                _ => return Err(ClientError::Usage("usage: jobs [-w]".into())),
            },
            "lcd" => lcd(&args)?,
            "lls" => lls(&args)?,
            "lpwd" => {
                let dir = std::env::current_dir().map_err(|e| ClientError::io(".", e))?;
                print_lines([dir.display().to_string()]);
            }
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

    /// Runs a transfer in the foreground; Ctrl-C asks it to stop and waits for it to record
    /// its partial file.
    fn transfer<T, F>(&self, f: impl FnOnce(Cancel) -> F) -> Result<T, ClientError>
    where
        F: std::future::Future<Output = Result<T, ClientError>>,
    {
        let (handle, cancel) = cancel_pair();
        self.handle.block_on(async move {
            let watcher = tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    handle.cancel();
                }
            });
            let result = f(cancel).await;
            watcher.abort();
            result
        })
    }

    fn ls(&self, args: &[&str]) -> Result<(), ClientError> {
        let (flags, paths) = split_flags(args, "lR")?;
        let long = flags.contains('l');
        let recursive = flags.contains('R');
        let target = self.remote(paths.first().copied().unwrap_or(""));
        let client = self.client();
        let path = target.clone();
        let entries = self.block_on(async move {
            commands::ls::listing(&client, &path, recursive, u16::MAX, long).await
        })?;
        if !recursive {
            self.cache.put(&target, entries.clone());
        }
        if long {
            print_lines(entries.iter().map(format::long_line));
        } else {
            print_lines(entries.iter().map(format::display_name));
        }
        Ok(())
    }

    fn cd(&self, args: &[&str]) -> Result<(), ClientError> {
        let target = self.remote(args.first().copied().unwrap_or("/"));
        if !target.is_empty() {
            let client = self.client();
            let path = target.clone();
            let entry = self.block_on(async move { client.stat(&path).await })?;
            if entry.kind != EntryKind::DIRECTORY {
                return Err(ClientError::Local(format!("/{target} is not a directory")));
            }
        }
        self.set_cwd(target);
        Ok(())
    }

    fn stat(&self, args: &[&str]) -> Result<(), ClientError> {
        let [path] = args else {
            return Err(ClientError::Usage("usage: stat PATH".into()));
        };
        let target = self.remote(path);
        let client = self.client();
        let path = target.clone();
        let entry = self.block_on(async move { client.stat(&path).await })?;
        print_text(&format::stat_text(&target, &entry));
        Ok(())
    }

    fn ping(&self, args: &[&str]) -> Result<(), ClientError> {
        let count: u32 = match args.first() {
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ClientError::Usage(format!("not a count: {n}")))?,
            None => 3,
        };
        let client = self.client();
        self.block_on(async move {
            for seq in 1..=count {
                if seq > 1 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let rtt = client.ping(Bytes::from_static(&[0x5a; 32])).await?;
                print_lines([format!(
                    "pong from {}: seq={seq} time={:.3} ms",
                    client.peer(),
                    rtt.as_secs_f64() * 1000.0
                )]);
            }
            Ok(())
        })
    }

    fn get(&mut self, args: &[&str], background: bool) -> Result<(), ClientError> {
        let mut options = GetOptions::default();
        let mut recursive = false;
        let mut positional = Vec::new();
        let mut iter = args.iter();
        let mut flags_done = false;
        let mut out = None;
        while let Some(arg) = iter.next() {
            match *arg {
                "--" if !flags_done => flags_done = true,
                "-r" | "-R" if !flags_done => recursive = true,
                "-f" if !flags_done => options.force = true,
                // As `ferry get -o`: the destination as a flag.
                "-o" | "--out" if !flags_done => {
                    let dest = iter
                        .next()
                        .ok_or_else(|| ClientError::Usage(format!("{arg} takes a destination")))?;
                    out = Some(dest);
                }
                "-j" if !flags_done => {
                    options.jobs = iter
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| (1..=32).contains(n))
                        .ok_or_else(|| ClientError::Usage("-j takes 1 to 32".into()))?;
                }
                flag if flag.starts_with('-') && flag.len() > 1 && !flags_done => {
                    return Err(ClientError::Usage(format!(
                        "get: unknown option {flag}; usage: {}",
                        help::find("get").map_or("", |c| c.usage)
                    )))
                }
                path => positional.push(path),
            }
        }
        let (remote_arg, dest) = match (positional.as_slice(), out) {
            ([remote], None) => (*remote, None),
            ([remote], Some(dest)) | ([remote, dest], None) => {
                (*remote, Some(PathBuf::from(expand_home(dest))))
            }
            _ => {
                return Err(ClientError::Usage(format!(
                    "usage: {}",
                    help::find("get").map_or("", |c| c.usage)
                )))
            }
        };
        let remote = self.remote(remote_arg);
        let label = format!("get {}", args.join(" "));
        // Background jobs must not follow a later lcd: fix local paths now.
        let dest = dest.map(|d| absolute(&d)).transpose()?;
        let client = self.client();
        if recursive {
            let dest = match dest {
                Some(dest) => dest,
                None => absolute(Path::new(
                    remote_name(&remote).unwrap_or(self.server.host.as_str()),
                ))?,
            };
            let run = move |progress: Progress, cancel: Cancel| async move {
                let report =
                    transfer::download_tree(&client, &remote, &dest, &options, &progress, &cancel)
                        .await?;
                let line = summarize_tree(&progress, report)?;
                Ok(format!(
                    "{}/: {line}",
                    commands::get::shown(&dest).display()
                ))
            };
            if background {
                self.spawn_job(label, run);
                return Ok(());
            }
            let progress = self.ctx.progress();
            let result = self.transfer(|cancel| run(progress.clone(), cancel));
            progress.clear();
            self.ctx.note(&result?);
            return Ok(());
        }
        let dest = absolute(&transfer::resolve_dest(&remote, dest.as_deref())?)?;
        let run = move |progress: Progress, cancel: Cancel| async move {
            let done =
                transfer::download_file(&client, &remote, &dest, &options, &progress, &cancel)
                    .await?;
            Ok(commands::get::file_summary(&done))
        };
        if background {
            self.spawn_job(label, run);
            return Ok(());
        }
        let progress = self.ctx.progress();
        let result = self.transfer(|cancel| run(progress.clone(), cancel));
        // Ctrl-C abandons the bar; take it off the screen before the error is printed.
        progress.clear();
        self.ctx.note(&result?);
        Ok(())
    }

    fn mget(&mut self, args: &[&str]) -> Result<(), ClientError> {
        let (flags, patterns) = split_flags(args, "f")?;
        if patterns.is_empty() {
            return Err(ClientError::Usage("usage: mget [-f] GLOB...".into()));
        }
        let options = GetOptions {
            force: flags.contains('f'),
            ..GetOptions::default()
        };
        let mut wanted = Vec::new();
        for pattern in &patterns {
            let full = self.remote(pattern);
            let (dir, name_glob) = match full.rsplit_once('/') {
                Some((dir, name)) => (dir.to_string(), name.to_string()),
                None => (String::new(), full.clone()),
            };
            if dir.contains(['*', '?', '[']) {
                return Err(ClientError::Usage(format!(
                    "{pattern}: patterns match names within one directory"
                )));
            }
            let matcher = glob::Pattern::new(&name_glob)
                .map_err(|e| ClientError::Usage(format!("{pattern}: {e}")))?;
            let client = self.client();
            let listed_dir = dir.clone();
            let entries = self.block_on(async move { client.list(&listed_dir, false, 0).await })?;
            let before = wanted.len();
            for entry in entries {
                // One plain name per entry; anything else could write outside the local
                // directory.
                let plain = transfer::safe_relative(&entry.name)
                    .is_some_and(|p| p.components().count() == 1);
                if entry.kind == EntryKind::FILE && plain && matcher.matches(&entry.name) {
                    let path = if dir.is_empty() {
                        entry.name.clone()
                    } else {
                        format!("{dir}/{}", entry.name)
                    };
                    wanted.push((path, absolute(Path::new(&entry.name))?));
                }
            }
            if wanted.len() == before {
                return Err(ClientError::Local(format!("{pattern}: no matching files")));
            }
        }
        wanted.sort();
        wanted.dedup();
        let label = format!("mget {} ({} files)", patterns.join(" "), wanted.len());
        let client = self.client();
        let run = move |progress: Progress, cancel: Cancel| async move {
            let started = Instant::now();
            let results: Vec<(String, Result<transfer::Downloaded, ClientError>)> =
                futures::stream::iter(wanted.into_iter().map(|(remote, dest)| {
                    let (client, options, progress, cancel) =
                        (&client, &options, &progress, &cancel);
                    async move {
                        let r = transfer::download_file(
                            client, &remote, &dest, options, progress, cancel,
                        )
                        .await;
                        (remote, r)
                    }
                }))
                .buffer_unordered(options.jobs)
                .collect()
                .await;
            let mut report = transfer::TreeReport {
                elapsed: started.elapsed(),
                ..Default::default()
            };
            for (remote, result) in results {
                match result {
                    Ok(done) => {
                        report.bytes += done.fetched;
                        report.files.push(done);
                    }
                    Err(e) => report.failed.push((remote, e)),
                }
            }
            summarize_tree(&progress, report)
        };
        if self.batch {
            let progress = Progress::hidden();
            let line = self.transfer(|cancel| run(progress, cancel))?;
            self.ctx.note(&line);
        } else {
            self.spawn_job(label, run);
        }
        Ok(())
    }

    fn spawn_job<F, Fut>(&mut self, label: String, run: F)
    where
        F: FnOnce(Progress, Cancel) -> Fut,
        Fut: std::future::Future<Output = Result<String, ClientError>> + Send + 'static,
    {
        let id = self.next_job;
        self.next_job += 1;
        let (handle, cancel) = cancel_pair();
        let progress = Progress::hidden();
        let result: JobResult = Arc::default();
        let fut = run(progress.clone(), cancel);
        let slot = result.clone();
        let notices = self.notices.clone();
        let job_label = label.clone();
        let task = self.handle.spawn(async move {
            let outcome = fut.await.map_err(|e| e.to_string());
            let line = match &outcome {
                Ok(summary) => format!("[{id}] done: {job_label}: {summary}"),
                Err(e) => format!("[{id}] failed: {job_label}: {e}"),
            };
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(outcome);
            }
            if let Ok(mut notices) = notices.lock() {
                notices.push((id, line));
            }
        });
        print_lines([format!("[{id}] started: {label}")]);
        self.jobs.push(Job {
            id,
            label,
            started: Instant::now(),
            progress,
            cancel: handle,
            task,
            result,
        });
    }

    /// Reports background jobs that ended since the last prompt.
    fn print_notices(&self) {
        let lines = match self.notices.lock() {
            Ok(mut notices) => std::mem::take(&mut *notices),
            Err(_) => return,
        };
        for (_, line) in lines {
            eprintln!("{line}");
        }
    }

    fn jobs(&mut self) {
        if self.jobs.is_empty() {
            print_lines(["no jobs"]);
            return;
        }
        let mut lines = Vec::new();
        for job in &self.jobs {
            let result = job.result.lock().ok().and_then(|r| r.clone());
            let line = match result {
                Some(Ok(summary)) => format!("[{}] done     {}: {summary}", job.id, job.label),
                Some(Err(e)) => format!("[{}] failed   {}: {e}", job.id, job.label),
                None => {
                    let t = job.progress.totals();
                    let elapsed = job.started.elapsed();
                    let fetched = t.done.saturating_sub(t.resumed);
                    let rate = (fetched as f64 / elapsed.as_secs_f64().max(0.001)) as u64;
                    let remaining = t.total.saturating_sub(t.done);
                    let eta = if rate > 0 {
                        Duration::from_secs_f64(remaining as f64 / rate as f64)
                    } else {
                        Duration::ZERO
                    };
                    let eta = progress::format_eta(eta, remaining);
                    format!(
                        "[{}] running  {}: {}/{} in {} file(s), {}/s, ETA {eta}",
                        job.id,
                        job.label,
                        HumanBytes(t.done),
                        HumanBytes(t.total),
                        t.active,
                        HumanBytes(rate)
                    )
                }
            };
            lines.push(line);
        }
        print_lines(lines);
        // Finished jobs were just reported: no separate notice for them, and they are forgotten.
        let finished: Vec<usize> = self
            .jobs
            .iter()
            .filter(|j| j.result.lock().map(|r| r.is_some()).unwrap_or(true))
            .map(|j| j.id)
            .collect();
        if let Ok(mut notices) = self.notices.lock() {
            notices.retain(|(id, _)| !finished.contains(id));
        }
        self.jobs
            .retain(|j| j.result.lock().map(|r| r.is_none()).unwrap_or(false));
    }

    /// `jobs -w`: live progress bars of every running background transfer until they end or
    /// Ctrl-C (which only stops the watching). The prompt is not shown meanwhile, so the bars
    /// have the terminal to themselves.
    fn watch_jobs(&mut self) {
        let view = self.ctx.progress();
        if !view.is_visible() {
            self.jobs();
            return;
        }
        let jobs: Vec<(usize, Progress, JobResult)> = self
            .jobs
            .iter()
            .filter(|j| !j.task.is_finished())
            .map(|j| (j.id, j.progress.clone(), j.result.clone()))
            .collect();
        if jobs.is_empty() {
            print_lines(["no running jobs"]);
            return;
        }
        self.handle.block_on(async move {
            let mut seen = vec![0usize; jobs.len()];
            let mut mirrors: Vec<(indicatif::ProgressBar, indicatif::ProgressBar)> = Vec::new();
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            loop {
                for (i, (id, progress, _)) in jobs.iter().enumerate() {
                    let bars = progress.bars();
                    for source in &bars[seen[i]..] {
                        if !source.is_finished() {
                            let label = format!("[{id}] {}", source.message());
                            mirrors.push((source.clone(), view.mirror(source, &label)));
                        }
                    }
                    seen[i] = bars.len();
                }
                mirrors.retain(|(source, mirror)| {
                    Progress::sync(source, mirror);
                    if source.is_finished() {
                        mirror.finish_and_clear();
                    }
                    !source.is_finished()
                });
                let all_done = jobs
                    .iter()
                    .all(|(_, _, r)| r.lock().map(|r| r.is_some()).unwrap_or(true));
                if all_done {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = &mut ctrl_c => break,
                }
            }
            for (_, mirror) in mirrors {
                mirror.finish_and_clear();
            }
        });
        self.print_notices();
    }

    /// Waits for background jobs before leaving; Ctrl-C cancels them (partials are kept).
    fn finish_jobs(&mut self) {
        let running: Vec<Job> = self
            .jobs
            .drain(..)
            .filter(|j| !j.task.is_finished())
            .collect();
        if running.is_empty() {
            return;
        }
        eprintln!(
            "waiting for {} background job(s); Ctrl-C cancels them and keeps partial files",
            running.len()
        );
        self.handle.block_on(async {
            let cancels: Vec<CancelHandle> = running.iter().map(|j| j.cancel.clone()).collect();
            let watcher = tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    for c in cancels {
                        c.cancel();
                    }
                }
            });
            for job in running {
                let _ = job.task.await;
            }
            watcher.abort();
        });
    }
}

/// One summary line for a tree or mget; the worst failure becomes the error.
fn summarize_tree(
    progress: &Progress,
    report: transfer::TreeReport,
) -> Result<String, ClientError> {
    let fetched = report.files.iter().filter(|f| !f.skipped).count();
    let skipped = report.files.len() - fetched;
    let mut line = format!(
        "{fetched} file(s), {}",
        progress::summary(report.bytes, report.elapsed)
    );
    if skipped > 0 {
        line.push_str(&format!(", {skipped} already up to date"));
    }
    if report.failed.is_empty() {
        return Ok(line);
    }
    if report
        .failed
        .iter()
        .any(|(_, e)| matches!(e, ClientError::Interrupted))
    {
        return Err(ClientError::Interrupted);
    }
    // The worst failure becomes the error, naming its path; the others are printed here, so
    // each is said once.
    let mut failed = report.failed;
    let count = failed.len();
    let worst = (0..failed.len())
        .rev()
        .max_by_key(|&i| failed[i].1.exit_code())
        .map(|i| failed.remove(i));
    for (path, e) in &failed {
        progress.println(&format!("ferry: {path}: {e}"));
    }
    match worst {
        Some((path, e)) => Err(ClientError::About {
            what: path,
            source: Box::new(e),
            after: format!(" ({count} failed; {line})"),
        }),
        None => Ok(line),
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

/// `path` made absolute against the current local directory.
fn absolute(path: &Path) -> Result<PathBuf, ClientError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| ClientError::io(".", e))?;
    Ok(cwd.join(path))
}

fn expand_home(path: &str) -> String {
    match (path.strip_prefix('~'), dirs::home_dir()) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", home.display())
        }
        _ => path.to_string(),
    }
}

fn lcd(args: &[&str]) -> Result<(), ClientError> {
    let target = match args.first() {
        Some(dir) => PathBuf::from(expand_home(dir)),
        None => dirs::home_dir().ok_or_else(|| ClientError::Local("no home directory".into()))?,
    };
    std::env::set_current_dir(&target).map_err(|e| ClientError::io(&target, e))
}

fn lls(args: &[&str]) -> Result<(), ClientError> {
    let (flags, paths) = split_flags(args, "l")?;
    let dir = PathBuf::from(expand_home(paths.first().copied().unwrap_or(".")));
    let read = std::fs::read_dir(&dir).map_err(|e| ClientError::io(&dir, e))?;
    let mut entries: Vec<Entry> = read
        .filter_map(Result::ok)
        .filter_map(|d| {
            let meta = d.metadata().ok()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .unwrap_or_default();
            #[cfg(unix)]
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            #[cfg(not(unix))]
            let mode = 0o644;
            Some(Entry {
                name: d.file_name().to_string_lossy().into_owned(),
                kind: if meta.is_dir() {
                    EntryKind::DIRECTORY
                } else if meta.is_file() {
                    EntryKind::FILE
                } else {
                    EntryKind::OTHER
                },
                size: meta.len(),
                mtime_secs: mtime.as_secs() as i64,
                mtime_nanos: mtime.subsec_nanos(),
                mode,
                link: None,
            })
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    if flags.contains('l') {
        print_lines(entries.iter().map(format::long_line));
    } else {
        print_lines(entries.iter().map(format::display_name));
    }
    Ok(())
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

    #[test]
    fn home_expands() {
        if let Some(home) = dirs::home_dir() {
            assert_eq!(expand_home("~/x"), format!("{}/x", home.display()));
        }
        assert_eq!(expand_home("a~b"), "a~b");
    }
}
