//! The one-shot commands, one file each, and what they share: the key, connecting, progress
//! and output. Each `run` returns a [`ClientError`] that `main` turns into a message and an
//! exit code.

pub mod demo;
pub mod forget;
pub mod get;
pub mod id;
pub mod join;
pub mod ls;
pub mod ping;
pub mod put;
pub mod receive;
pub mod register;
pub mod send;
pub mod shell;
pub mod stat;
pub mod trust;

use std::io::Write;

use tokio::runtime::Runtime;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::progress::Progress;
use ferry_client::client::{Client, ClientConfig};
use ferry_client::error::ClientError;
use ferry_common::keys::KeySources;
use ferry_common::url::FerryUrl;

/// Settings every command needs, from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub global: GlobalArgs,
}

impl Context {
    pub fn new(global: GlobalArgs) -> Self {
        Self { global }
    }

    /// The key, from the first source that is present.
    pub fn key(&self) -> Result<ferry_protocol::Key, ClientError> {
        KeySources::from_env(self.global.key.clone(), self.global.key_file.clone())
            .resolve()
            .map_err(|e| ClientError::Usage(e.to_string()))
    }

    pub fn client_config(&self) -> Result<ClientConfig, ClientError> {
        Ok(self.client_config_with_key(self.key()?))
    }

    /// Client settings from the flags, with a key found elsewhere (`demo` makes its own).
    pub fn client_config_with_key(&self, key: ferry_protocol::Key) -> ClientConfig {
        // clap admits only the names parse_selection knows.
        let suites = ferry_protocol::crypto::RecordSuite::parse_selection(&self.global.suite)
            .unwrap_or_else(|_| ferry_protocol::crypto::RecordSuite::DEFAULT_SUITES.to_vec());
        ClientConfig::new(key)
            .plaintext(self.global.plaintext)
            .suites(suites)
            .connect_timeout(self.global.connect_timeout)
    }

    /// Connects to the server named by `url`.
    pub async fn connect(&self, url: &FerryUrl) -> Result<Client, ClientError> {
        if url.name.is_some() {
            // ferry://NAME@HUB/: through the hub (spec/HUB.md §4).
            return Ok(register::connect_named(self, url).await?.connected.client);
        }
        let config = self.client_config_for(url)?;
        trust::connect(self, url, config).await
    }

    /// Settings for `url`: an address that names the server's id (`ferry://ID@HOST/`) is
    /// reached with the identity handshake and this node's identity, and needs no key; so is
    /// one without an id when `trust` says (`--identity`, or a pinned hint, whose id is then
    /// required).
    /// This machine's identity (`--identity FILE` or the default file, created on first use).
    pub fn identity(&self) -> Result<ferry_protocol::identity::Identity, ClientError> {
        let path = ferry_common::identity::path_or_default(self.global.identity.as_deref())
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let (identity, _) = ferry_common::identity::load_or_create(&path)
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        Ok(identity)
    }

    pub fn client_config_for(&self, url: &FerryUrl) -> Result<ClientConfig, ClientError> {
        if !trust::uses_identity(self, url)? {
            return self.client_config();
        }
        let server_id = match url.server_id {
            Some(id) => Some(id),
            None => trust::pin_for(url)?.map(|pin| pin.id),
        };
        let identity = self.identity()?;
        // The PSK is unused by the identity handshake; a random one keeps ClientConfig whole.
        let config = self
            .client_config_with_key(ferry_protocol::Key::generate())
            .identity(identity);
        Ok(match server_id {
            Some(id) => config.server_id(id),
            None => config,
        })
    }

    /// Progress bars, unless `--no-progress`, `--quiet` or stderr is not a terminal.
    pub fn progress(&self) -> Progress {
        Progress::new(!self.global.no_progress && !self.global.quiet)
    }

    /// A summary line on stderr, unless `--quiet`.
    pub fn note(&self, line: &str) {
        if !self.global.quiet {
            eprintln!("{line}");
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli, runtime: &Runtime) -> Result<(), ClientError> {
    let ctx = Context::new(cli.global);
    match cli.command {
        Command::Ls(args) => runtime.block_on(interruptible(ls::run(&ctx, args))),
        Command::Stat(args) => runtime.block_on(interruptible(stat::run(&ctx, args))),
        Command::Ping(args) => runtime.block_on(interruptible(ping::run(&ctx, args))),
        // `get` handles Ctrl-C itself, to keep the partial file consistent.
        Command::Get(args) => on_a_worker(runtime, async move { get::run(&ctx, args).await }),
        // `put` handles Ctrl-C itself, so the server keeps a clean partial to resume.
        Command::Put(args) => on_a_worker(runtime, async move { put::run(&ctx, args).await }),
        Command::Shell(args) => shell::run(&ctx, args, runtime),
        Command::Demo(args) => demo::run(&ctx, args, runtime),
        Command::Id(args) => id::run(&ctx, args),
        Command::Forget(args) => forget::run(&ctx, args),
        Command::Register(args) => runtime.block_on(interruptible(register::run(&ctx, args))),
        Command::Join(args) => runtime.block_on(interruptible(join::run(&ctx, args))),
        // Both handle Ctrl-C themselves: the partials stay consistent for a resume.
        Command::Send(args) => runtime.block_on(send::run(&ctx, args)),
        Command::Receive(args) => runtime.block_on(receive::run(&ctx, args)),
    }
}

/// Runs a transfer command as a task on the runtime's worker threads instead of under
/// `block_on` on the main thread: every frame its connection's reader task queues for it then
/// wakes a worker that is already running, not the parked main thread through a futex
/// (issue 10: a 1 GiB get awaited on the main thread made 11k futex calls). A panic in the
/// command is raised again here, as if it had run on this thread.
fn on_a_worker<T: Send + 'static>(
    runtime: &Runtime,
    command: impl std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
) -> Result<T, ClientError> {
    match runtime.block_on(runtime.spawn(command)) {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ClientError::Local(format!("the command was stopped: {e}"))),
    }
}

/// Ends `fut` with [`ClientError::Interrupted`] on Ctrl-C.
pub async fn interruptible<T>(
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::select! {
        result = fut => result,
        _ = tokio::signal::ctrl_c() => Err(ClientError::Interrupted),
    }
}

/// Writes result lines to stdout. A closed pipe (`ferry ls | head`) is not an error.
pub fn print_lines<I, S>(lines: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in lines {
        if writeln!(out, "{}", line.as_ref()).is_err() {
            return;
        }
    }
    let _ = out.flush();
}

/// Writes text that already ends its lines to stdout, like [`print_lines`].
pub fn print_text(text: &str) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// One leg of a transfer over a named session: its `cancel` fires when the user cancels or the
/// session's route changes (`get` and `send` then continue on the new path). The watcher stops
/// with the leg.
pub(crate) struct Leg {
    pub cancel: ferry_client::transfer::Cancel,
    /// The route the leg started on.
    pub route: ferry_client::client::hub::Route,
    moved: std::sync::Arc<std::sync::atomic::AtomicBool>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Leg {
    pub fn start(
        session: &ferry_client::client::hub::NamedSession,
        user: &ferry_client::transfer::Cancel,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let route = session.route();
        let (stop, cancel) = ferry_client::transfer::cancel_pair();
        let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let mut user = user.clone();
            let mut routes = session.routes();
            let moved = moved.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = user.cancelled() => {}
                    Ok(_) = routes.wait_for(|r| *r != route) => moved.store(true, Ordering::SeqCst),
                }
                stop.cancel();
            })
        };
        Self {
            cancel,
            route,
            moved,
            watcher,
        }
    }

    /// Whether the leg stopped because the route changed (not because the user cancelled).
    pub fn moved(&self, user: &ferry_client::transfer::Cancel) -> bool {
        self.moved.load(std::sync::atomic::Ordering::SeqCst) && !user.is_cancelled()
    }
}

impl Drop for Leg {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}
