//! `ferry-peer`: make manifests, seed, download and run a tracker. CLI parsing only; the work is
//! in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ferry_p2p::fleet::cli as fleet;
use ferry_p2p::manifest::{Manifest, MAX_PIECE_SIZE, MIN_PIECE_SIZE};
use ferry_p2p::node::{self, NodeConfig};
use ferry_p2p::pieces::{data_root, make_manifest, Storage};
use ferry_p2p::tracker::{server, TrackerConfig};

const AFTER_HELP: &str = "\
Quick start:
  ferry-peer tracker --listen 0.0.0.0:6969
  ferry-peer make ./release -o release.ferry --tracker udp://tracker-host:6969
  ferry-peer seed release.ferry --data ./release
  ferry-peer get release.ferry -o .

Peers listen on all interfaces by default: the other peers of a swarm dial in, so a peer
reachable only on 127.0.0.1 serves nobody else. Use --listen ADDRESS to choose.

Exit codes:
  0    success; also seeding stopped on purpose (Ctrl-C, SIGTERM, --seed-time, --seed-ratio)
  1    error (unreadable manifest or data, manifest exists without --force, ...)
  2    usage error
  3    connection failure (cannot listen, no source, no server key)
  4    integrity failure (data does not match the manifest)
  130  Ctrl-C before a download completed (143: SIGTERM); partial files stay NAME.part";

const MAKE_HELP: &str = "\
Examples:
  ferry-peer make ./release -o release.ferry --tracker udp://10.0.0.1:6969
  ferry-peer make big.iso --server ferry://10.0.0.1:6789/pub
  ferry-peer make big.iso       (no source listed: peers meet through --dht-bootstrap)

Exit codes:
  0    the manifest was written
  1    error (unreadable input, the manifest exists and --force was not given)
  2    usage error";

const SEED_HELP: &str = "\
Examples:
  ferry-peer seed release.ferry --data ./release
  ferry-peer seed release.ferry --data . --listen 10.0.0.2:7000
  ferry-peer seed app.ferry docs.ferry --data ./app --data ./docs --listen 0.0.0.0:7000

Peers listen on all interfaces by default: the other peers of a swarm dial in, so a peer
reachable only on 127.0.0.1 serves nobody else. Use --listen ADDRESS to choose.
Several manifests are seeded on one port: each connection names its swarm's key (a peer
that offers only --suite cbc-hmac cannot, and is served only when one manifest is seeded).
Ctrl-C or SIGTERM stops seeding and tells the trackers (`stopped`).

Exit codes:
  0    stopped by Ctrl-C or SIGTERM
  1    error (unreadable manifest or data)
  2    usage error
  3    cannot listen
  4    the data does not match the manifest";

const GET_HELP: &str = "\
Examples:
  ferry-peer get release.ferry -o ~/Downloads
  ferry-peer get release.ferry --no-seed --peer 10.0.0.2:7000
  ferry-peer get release.ferry --seed-time 10m --seed-ratio 2

Files are written as NAME.part until every piece is verified, then renamed; running the same
command again resumes them. With no peer for a few seconds, get says on stderr what it tried
and what failed, and again every 30 s while that lasts. After the download it keeps seeding
until Ctrl-C or SIGTERM (which tell the trackers `stopped`), --seed-time or --seed-ratio.
Peers listen on all interfaces by default: the other peers of a swarm dial in, so a peer
reachable only on 127.0.0.1 serves nobody else. Use --listen ADDRESS to choose.

Exit codes:
  0    complete (including seeding stopped by Ctrl-C, SIGTERM, --seed-time or --seed-ratio)
  1    error (unreadable manifest, cannot write the download directory)
  2    usage error
  3    connection failure (cannot listen, no source given, no key for the servers)
  130  Ctrl-C before the download completed (143: SIGTERM); partial files stay NAME.part";

const DHT_HELP: &str = "\
Examples:
  ferry-peer dht --dht-listen 0.0.0.0:6881
  ferry-peer dht --dht-listen 0.0.0.0:6881 --dht-bootstrap 10.0.0.1:6881
  ferry-peer get release.ferry --dht-bootstrap 10.0.0.1:6881

Exit codes:
  0    stopped by Ctrl-C or SIGTERM
  2    usage error
  3    cannot listen";

const TRACKER_HELP: &str = "\
Examples:
  ferry-peer tracker --listen 0.0.0.0:6969
  ferry-peer tracker --listen [::]:6969 --interval 30s

Exit codes:
  0    stopped by Ctrl-C or SIGTERM
  2    usage error
  3    cannot listen";

/// Swarm download on the Ferry codec.
#[derive(Debug, Parser)]
#[command(name = "ferry-peer", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hash a file or directory tree into a manifest (FILE.ferry).
    #[command(after_help = MAKE_HELP)]
    Make(MakeArgs),
    /// Verify local data against a manifest, then serve it to the swarm until Ctrl-C.
    #[command(after_help = SEED_HELP)]
    Seed(SeedArgs),
    /// Download a manifest's files from the swarm (resuming what is on disk), then keep seeding.
    #[command(after_help = GET_HELP)]
    Get(GetArgs),
    /// Run a UDP tracker.
    #[command(after_help = TRACKER_HELP)]
    Tracker(TrackerArgs),
    /// Run a DHT node only (e.g. a bootstrap node for trackerless swarms).
    #[command(after_help = DHT_HELP)]
    Dht(DhtArgs),
    /// Fleet updates: create a release channel's signing key.
    #[command(after_help = fleet::CHANNEL_HELP)]
    Channel(fleet::ChannelArgs),
    /// Fleet updates: sign and announce DIR as a channel's next release, and seed it.
    #[command(after_help = fleet::PUBLISH_HELP)]
    Publish(fleet::PublishArgs),
    /// Fleet updates: follow a channel, installing each release atomically into --dir.
    #[command(after_help = fleet::FOLLOW_HELP)]
    Follow(fleet::FollowArgs),
    /// Fleet updates: switch a follower's --dir back to its previous version.
    #[command(after_help = fleet::ROLLBACK_HELP)]
    Rollback(fleet::RollbackArgs),
    /// Fleet updates: what the followers of a channel run.
    Fleet(fleet::FleetArgs),
}

/// Flags shared by `seed` and `get`.
#[derive(Debug, clap::Args)]
struct SwarmArgs {
    /// TCP address to accept peers on. Default: 0.0.0.0:0, all interfaces (other peers must be
    /// able to dial in) on a free port. E.g. 10.0.0.2:7000
    #[arg(
        long,
        env = "FERRY_PEER_LISTEN",
        default_value = "0.0.0.0:0",
        hide_default_value = true
    )]
    listen: SocketAddr,
    /// Extra tracker besides the manifest's, repeatable, e.g. udp://10.0.0.1:6969
    #[arg(long = "tracker")]
    trackers: Vec<String>,
    /// Peer to connect to directly, repeatable, e.g. 10.0.0.2:7000
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Most simultaneous peer connections; ferry-peer dials up to half of them and keeps the
    /// rest for peers that dial it. Default: 40. E.g. 100
    #[arg(
        long,
        default_value_t = ferry_p2p::node::DEFAULT_MAX_PEERS,
        hide_default_value = true,
        value_parser = parse_max_peers
    )]
    max_peers: usize,
    /// Record suites to offer and accept: gcm (default: AES-256-GCM, then AES-256-CBC +
    /// HMAC-SHA256) or cbc-hmac (the old suite only, for peers from before protocol version 2).
    /// E.g. --suite cbc-hmac
    #[arg(
        long,
        value_name = "SUITE",
        default_value = "gcm",
        hide_default_value = true,
        value_parser = ["gcm", "cbc-hmac"]
    )]
    suite: String,
    /// Prove this node identity to peers: peers know it by its node id, so a ban outlives a
    /// reconnection from another port or address (spec/P2P.md §3.3). --identity alone uses
    /// ~/.config/ferry/identity (shared with ferry and ferry-server), created on first start;
    /// --identity=FILE another file. Default: a fresh identity for this run.
    /// E.g. --identity=/etc/ferry/identity
    // The empty default marks "the default file", as ferry-server's flag does.
    #[arg(
        long,
        value_name = "FILE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "",
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), std::path::PathBuf::from)
    )]
    identity: Option<std::path::PathBuf>,
    /// Find peers and be found through a ferry-hub (spec/P2P.md §3.12): stay present there
    /// (as NAME, or as this node's id), announce the content and ask it for peers; peers that
    /// cannot be dialled are reached through the hub's relay. HUB is HOST[:PORT] or
    /// ferry://HUBID@HOST:PORT/. E.g. --hub 203.0.113.5:6790
    #[arg(long, value_name = "[NAME@]HUB")]
    hub: Option<ferry_p2p::hubpeer::HubAddr>,
    /// Hide the progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    dht: DhtArgs,
}

/// Flags of the DHT (spec/P2P.md §7), shared by `seed`, `get` and `dht`.
#[derive(Debug, clap::Args)]
struct DhtArgs {
    /// Also find peers through the DHT and announce to it (implied by --dht-bootstrap).
    #[arg(long)]
    dht: bool,
    /// DHT node to join through, repeatable (implies --dht), e.g. 10.0.0.1:6881
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    dht_bootstrap: Vec<String>,
    /// UDP address of our DHT node. Default: 0.0.0.0:0, all interfaces on a free port.
    /// E.g. 0.0.0.0:6881
    #[arg(long, default_value = "0.0.0.0:0", hide_default_value = true)]
    dht_listen: SocketAddr,
    /// File keeping the DHT routing table across restarts. Default: dht.state in the ferry
    /// configuration directory (~/.config/ferry/dht.state)
    #[arg(long, value_name = "FILE")]
    dht_state: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SeedArgs {
    /// The manifests, e.g. release.ferry; several are seeded on one port.
    #[arg(required = true)]
    manifests: Vec<PathBuf>,
    /// The data: the directory holding the manifest's top-level entry, or that entry itself.
    /// Once for every manifest, or once per manifest in the same order. Default: the current
    /// directory.
    #[arg(long, default_value = ".", hide_default_value = true)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    swarm: SwarmArgs,
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// The manifest, e.g. release.ferry
    manifest: PathBuf,
    /// Download directory; nothing is written outside it. Default: the current directory.
    /// E.g. -o ~/Downloads
    #[arg(short = 'o', long, default_value = ".", hide_default_value = true)]
    out: PathBuf,
    /// Exit when the download is complete instead of seeding.
    #[arg(long, conflicts_with_all = ["seed_time", "seed_ratio"])]
    no_seed: bool,
    /// Stop seeding this long after the download completes. Default: seed until Ctrl-C.
    /// E.g. 30m, 2h
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    seed_time: Option<Duration>,
    /// Stop seeding once this many times the content's size has been uploaded. Default: no
    /// limit. E.g. 1.5
    #[arg(long, value_name = "R", value_parser = parse_ratio)]
    seed_ratio: Option<f64>,
    /// Ferry server that also holds the files, besides the manifest's, repeatable: the
    /// directory containing the manifest's top-level entry, e.g. ferry://10.0.0.1:6789/pub
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Key of the ferry servers, hex or base64, as in `ferry --key`. Default: --key-file,
    /// FERRY_KEY, then the default key file (~/.config/ferry/key)
    #[arg(long, alias = "server-key", value_name = "KEY")]
    key: Option<String>,
    /// File holding the ferry servers' key (mode 0600), as in `ferry --key-file`, e.g.
    /// ~/ferry.key
    #[arg(long, alias = "server-key-file", value_name = "FILE")]
    key_file: Option<PathBuf>,
    #[command(flatten)]
    swarm: SwarmArgs,
}

#[derive(Debug, clap::Args)]
struct TrackerArgs {
    /// UDP address to listen on. Default: 0.0.0.0:6969. E.g. [::]:6969
    #[arg(
        long,
        env = "FERRY_TRACKER_LISTEN",
        default_value = "0.0.0.0:6969",
        hide_default_value = true
    )]
    listen: SocketAddr,
    /// Announce interval told to peers; peers silent for two intervals are dropped.
    /// Default: 60s. E.g. 30s
    #[arg(long, default_value = "60s", hide_default_value = true, value_parser = humantime::parse_duration)]
    interval: Duration,
}

#[derive(Debug, clap::Args)]
struct MakeArgs {
    /// File or directory to describe, e.g. ./release-1.2
    path: PathBuf,
    /// Where to write the manifest. Default: PATH's name plus `.ferry` in the current directory.
    /// E.g. -o release.ferry
    #[arg(short = 'o', long = "out", alias = "output")]
    out: Option<PathBuf>,
    /// Replace the manifest if it exists. Default: refuse to overwrite.
    #[arg(short = 'f', long)]
    force: bool,
    /// Tracker to list, repeatable, e.g. udp://10.0.0.1:6969
    #[arg(long = "tracker")]
    trackers: Vec<String>,
    /// Ferry server that also has the files, repeatable, e.g. ferry://10.0.0.1:6789/pub
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Piece size in bytes, a power of two in 16384..=16777216. Default: chosen from the total
    /// size (64 KiB to 4 MiB), e.g. 1048576
    #[arg(long)]
    piece_size: Option<u32>,
    /// Hide the progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{text:?} is not a ratio like 1.5")),
    }
}

/// A connection limit: a node that may hold none could never download or upload.
fn parse_max_peers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err(format!("{text:?} is not a number of connections like 50")),
    }
}

/// A duration for people: tenths of a second below 10 s, whole seconds above.
fn rounded(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs_f64().round() as u64)).to_string()
    }
}

/// Ctrl-C and SIGTERM, installed before anything is printed so that a signal sent right after
/// is handled (the tracker hears `stopped`) rather than killing the process.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Interrupt,
    Terminate,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.interrupt.recv() => Stop::Interrupt,
            _ = self.terminate.recv() => Stop::Terminate,
        }
    }
}

impl Stop {
    /// The exit code of a download stopped before it completed.
    fn code(self) -> ExitCode {
        ExitCode::from(match self {
            Stop::Interrupt => EXIT_INTERRUPTED,
            Stop::Terminate => EXIT_TERMINATED,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_common::logging::init("warn", ferry_common::logging::LogFormat::Text, true);
    let result = match cli.command {
        Command::Make(args) => make(args),
        Command::Seed(args) => runtime().and_then(|rt| rt.block_on(seed(args))),
        Command::Get(args) => runtime().and_then(|rt| rt.block_on(get(args))),
        Command::Tracker(args) => runtime().and_then(|rt| rt.block_on(tracker(args))),
        Command::Dht(args) => runtime().and_then(|rt| rt.block_on(dht(args))),
        Command::Channel(args) => fleet::channel(args),
        Command::Publish(args) => runtime().and_then(|rt| rt.block_on(fleet::publish(args))),
        Command::Follow(args) => runtime().and_then(|rt| rt.block_on(fleet::follow(args))),
        Command::Rollback(args) => fleet::rollback(args),
        Command::Fleet(args) => runtime().and_then(|rt| rt.block_on(fleet::fleet(args))),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry-peer: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn make(args: MakeArgs) -> anyhow::Result<ExitCode> {
    if let Some(size) = args.piece_size {
        if !size.is_power_of_two() || !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&size) {
            anyhow::bail!("--piece-size {size} is not a power of two in 16384..=16777216");
        }
    }
    let output = match &args.out {
        Some(o) => o.clone(),
        None => {
            let name = args
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("content");
            PathBuf::from(format!("{name}.ferry"))
        }
    };
    // Checked before hashing, which can take minutes; the write below refuses again.
    if !args.force && std::fs::symlink_metadata(&output).is_ok() {
        anyhow::bail!(
            "{} already exists; use --force to replace it",
            output.display()
        );
    }
    let total = ferry_p2p::pieces::scan(&args.path)
        .with_context(|| format!("reading {}", args.path.display()))?
        .1
        .iter()
        .map(|(e, _)| e.size)
        .sum();
    let bar = ferry_common::progress::stderr_bar(
        total,
        args.no_progress,
        "hashing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    );
    let manifest = make_manifest(
        &args.path,
        args.piece_size,
        args.trackers,
        args.servers,
        &|n| bar.inc(n),
    )?;
    bar.finish_and_clear();
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let written = options
        .open(&output)
        .and_then(|mut file| std::io::Write::write_all(&mut file, &manifest.encode()));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "{} already exists; use --force to replace it",
            output.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("writing {}", output.display())),
    }
    println!(
        "{} {} files, {} bytes, {} pieces of {} bytes -> {}",
        manifest.content_id(),
        manifest.files().len(),
        manifest.total_size(),
        manifest.piece_count(),
        manifest.piece_size(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

use ferry_common::exit::{
    CONNECTION as EXIT_CONNECTION, INTEGRITY as EXIT_INTEGRITY, INTERRUPTED as EXIT_INTERRUPTED,
    TERMINATED as EXIT_TERMINATED, USAGE as EXIT_USAGE,
};

/// How long a download may have no peer before it says why.
const NO_PEER_GRACE: Duration = Duration::from_secs(5);
/// How often it says so again while it still has none.
const NO_PEER_REPEAT: Duration = Duration::from_secs(30);

fn load(path: &std::path::Path) -> anyhow::Result<Arc<Manifest>> {
    let manifest =
        Manifest::load(path).with_context(|| format!("reading manifest {}", path.display()))?;
    Ok(Arc::new(manifest))
}

/// Resolves `udp://HOST:PORT` tracker URLs (manifest's and extra ones).
async fn resolve_trackers(manifest: &Manifest, extra: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for url in manifest.trackers().iter().chain(extra) {
        let tracker = match url.parse::<ferry_common::TrackerUrl>() {
            Ok(tracker) => tracker,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring tracker");
                continue;
            }
        };
        match tokio::net::lookup_host(tracker.authority()).await {
            Ok(addrs) => out.extend(addrs.take(1)),
            Err(e) => tracing::warn!(%url, error = %e, "cannot resolve tracker"),
        }
    }
    out
}

fn verify_bar(storage: &Storage, manifest: &Manifest, hidden: bool) -> ferry_p2p::pieces::Bitfield {
    let bar = ferry_common::progress::stderr_bar(
        manifest.piece_count() as u64,
        hidden,
        "verifying {bar:40} {pos}/{len} pieces",
    );
    let have = storage.verify(manifest, &|| bar.inc(1));
    bar.finish_and_clear();
    have
}

fn trackers_and_peers_empty(config: &NodeConfig) -> bool {
    config.trackers.is_empty()
        && config.peers.is_empty()
        && config.servers.is_empty()
        && config.dht.is_none()
}

/// Starts our DHT node if asked (`--dht` or `--dht-bootstrap`); `force` starts it regardless.
async fn start_dht(
    args: &DhtArgs,
    force: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<ferry_p2p::dht::shell::DhtHandle>> {
    if !force && !args.dht && args.dht_bootstrap.is_empty() {
        return Ok(None);
    }
    let mut bootstrap = Vec::new();
    for host in &args.dht_bootstrap {
        match tokio::net::lookup_host(host.as_str()).await {
            Ok(addrs) => bootstrap.extend(addrs.take(1)),
            Err(e) => tracing::warn!(%host, error = %e, "cannot resolve dht bootstrap node"),
        }
    }
    let state_file = args.dht_state.clone().or_else(|| {
        ferry_common::keys::default_key_file()
            .and_then(|key| key.parent().map(|dir| dir.join("dht.state")))
    });
    let config = ferry_p2p::dht::shell::ShellConfig {
        listen: args.dht_listen,
        bootstrap,
        state_file,
        core: Default::default(),
    };
    let handle = ferry_p2p::dht::shell::spawn(config, cancel.clone())
        .await
        .with_context(|| format!("cannot listen for the dht on udp {}", args.dht_listen))?;
    Ok(Some(handle))
}

/// Stops our DHT node and waits until it has saved its routing table.
async fn stop_dht(
    dht: Option<ferry_p2p::dht::shell::DhtHandle>,
    cancel: &tokio_util::sync::CancellationToken,
) {
    cancel.cancel();
    if let Some(dht) = dht {
        let _ = tokio::time::timeout(Duration::from_secs(2), dht.stopped()).await;
    }
}

fn node_config(
    args: &SwarmArgs,
    trackers: Vec<SocketAddr>,
    seed_after: bool,
) -> anyhow::Result<NodeConfig> {
    Ok(NodeConfig {
        listen: args.listen,
        peers: args.peers.clone(),
        trackers,
        seed_after_complete: seed_after,
        max_peers: args.max_peers,
        // clap admits only the names parse_selection knows.
        suites: ferry_protocol::crypto::RecordSuite::parse_selection(&args.suite)
            .unwrap_or_else(|_| ferry_protocol::crypto::RecordSuite::DEFAULT_SUITES.to_vec()),
        identity: load_identity(args.identity.as_deref())?,
        ..Default::default()
    })
}

/// The identity of `--identity[=FILE]` (the default file when empty), created on first use;
/// `None` without the flag.
fn load_identity(
    flag: Option<&std::path::Path>,
) -> anyhow::Result<Option<ferry_protocol::identity::Identity>> {
    use ferry_common::identity;
    let Some(flag) = flag else {
        return Ok(None);
    };
    let path = identity::path_or_default((!flag.as_os_str().is_empty()).then_some(flag))?;
    let (found, origin) = identity::load_or_create(&path)?;
    if origin == identity::IdentityOrigin::Created {
        eprintln!(
            "ferry-peer: created a new identity in {} (id {})",
            path.display(),
            found.id()
        );
    }
    Ok(Some(found))
}

/// Keeps `handle`'s swarm present at the hub (spec/P2P.md §3.12) until the result is dropped.
async fn start_hub(
    handle: &node::NodeHandle,
    manifest: &Manifest,
    hub: &ferry_p2p::hubpeer::HubAddr,
) -> ferry_p2p::hubpeer::HubPeer {
    let config = ferry_p2p::hubpeer::HubPeerConfig::new(hub.clone());
    let started = ferry_p2p::hubpeer::start(handle, manifest.content_id(), config).await;
    let key = hub
        .name
        .clone()
        .unwrap_or_else(|| handle.node_id.to_string());
    eprintln!("ferry-peer: announcing through the hub as {key}");
    started
}

async fn seed(args: SeedArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    if args.data.len() != 1 && args.data.len() != args.manifests.len() {
        eprintln!(
            "ferry-peer: {} manifests but {} --data directories; give --data once for all of \
             them or once per manifest",
            args.manifests.len(),
            args.data.len()
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let mut swarms = Vec::new();
    for (i, path) in args.manifests.iter().enumerate() {
        let manifest = load(path)?;
        let root = data_root(args.data.get(i).unwrap_or(&args.data[0]), &manifest);
        let storage = Storage::open_existing(&root, &manifest)
            .with_context(|| format!("opening data under {}", root.display()))?;
        let have = verify_bar(&storage, &manifest, args.swarm.no_progress);
        if !have.is_full() {
            eprintln!(
                "ferry-peer: {} of {} pieces of {} under {} do not match the manifest",
                manifest.piece_count() - have.count(),
                manifest.piece_count(),
                path.display(),
                root.display()
            );
            return Ok(ExitCode::from(EXIT_INTEGRITY));
        }
        swarms.push((manifest, storage, have));
    }
    let dht_cancel = tokio_util::sync::CancellationToken::new();
    let dht = match start_dht(&args.swarm.dht, false, &dht_cancel).await {
        Ok(dht) => dht,
        Err(e) => {
            eprintln!("ferry-peer: {e:#}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
    };
    // One manifest listens on its own; several share one port through a host, which tells
    // their connections apart by the key each hello names.
    let host_config = node_config(&args.swarm, Vec::new(), true)?;
    let host = if swarms.len() > 1 {
        match node::Host::bind(&host_config).await {
            Ok(host) => Some(host),
            Err(e) => {
                eprintln!("ferry-peer: {e}");
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        }
    } else {
        None
    };
    let mut handles = Vec::new();
    let mut hubs = Vec::new();
    // Behind one presence at the hub the swarms are one node: one identity for them all.
    let shared_identity = match (&args.swarm.hub, &host_config.identity) {
        (Some(_), None) if host.is_some() => Some(ferry_protocol::identity::Identity::generate()),
        (_, identity) => identity.clone(),
    };
    let mut contents = Vec::new();
    for (manifest, storage, have) in swarms {
        let trackers = resolve_trackers(&manifest, &args.swarm.trackers).await;
        let mut config = node_config(&args.swarm, trackers, true)?;
        config.dht = dht.clone();
        config.identity = shared_identity.clone();
        let started = match &host {
            Some(host) => node::start_on(host, manifest.clone(), Arc::new(storage), have, config),
            None => node::start(manifest.clone(), Arc::new(storage), have, config).await,
        };
        match started {
            Ok(handle) => {
                println!(
                    "seeding {} on {}",
                    manifest.content_id(),
                    handle.listen_addr
                );
                match &args.swarm.hub {
                    Some(hub) if host.is_none() => {
                        hubs.push(start_hub(&handle, &manifest, hub).await);
                    }
                    _ => {}
                }
                contents.push(manifest.content_id());
                handles.push(handle);
            }
            Err(e) => {
                eprintln!("ferry-peer: {e}");
                for handle in handles {
                    let _ = handle.shutdown().await;
                }
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        }
    }
    if let (Some(hub), Some(host)) = (&args.swarm.hub, &host) {
        // Several manifests: one presence and one announce for all of them.
        let nodes: Vec<_> = handles.iter().zip(contents.iter().copied()).collect();
        let config = ferry_p2p::hubpeer::HubPeerConfig::new(hub.clone());
        match ferry_p2p::hubpeer::start_hosted(host, &nodes, config).await {
            Ok(started) => {
                let key = hub
                    .name
                    .clone()
                    .unwrap_or_else(|| handles[0].node_id.to_string());
                eprintln!(
                    "ferry-peer: announcing {} manifests through the hub as {key}",
                    nodes.len()
                );
                hubs.push(started);
            }
            Err(e) => {
                eprintln!("ferry-peer: {e}");
                for handle in handles {
                    let _ = handle.shutdown().await;
                }
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        }
    }
    // Seeding until stopped is the whole point of `seed`: stopping it is a success.
    signals.recv().await;
    for handle in handles {
        handle.shutdown().await?;
    }
    if let Some(host) = host {
        host.shutdown().await;
    }
    stop_dht(dht, &dht_cancel).await;
    Ok(ExitCode::SUCCESS)
}

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let started = std::time::Instant::now();
    let manifest = load(&args.manifest)?;
    let storage = Arc::new(
        Storage::create_partial(&args.out, &manifest)
            .with_context(|| format!("preparing {}", args.out.display()))?,
    );
    // Whatever is already on disk and matches is kept: this is how `get` resumes.
    let have = verify_bar(&storage, &manifest, args.swarm.no_progress);
    let trackers = resolve_trackers(&manifest, &args.swarm.trackers).await;
    let mut config = node_config(&args.swarm, trackers, !args.no_seed)?;
    let dht_cancel = tokio_util::sync::CancellationToken::new();
    // Dropped on every return: the DHT node stops with `get`.
    let _dht_guard = dht_cancel.clone().drop_guard();
    config.dht = match start_dht(&args.swarm.dht, false, &dht_cancel).await {
        Ok(dht) => dht,
        Err(e) => {
            eprintln!("ferry-peer: {e:#}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
    };
    let dht = config.dht.clone();
    let urls: Vec<&String> = manifest.servers().iter().chain(&args.servers).collect();
    if !urls.is_empty() && !have.is_full() {
        let key = match ferry_common::KeySources::from_env(args.key.clone(), args.key_file.clone())
            .resolve()
        {
            Ok(key) => key,
            Err(e) => {
                eprintln!("ferry-peer: servers listed but {e}");
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        };
        for url in urls {
            match url.parse::<ferry_common::FerryUrl>() {
                Ok(url) => config.servers.push(ferry_p2p::source::ServerSource {
                    url,
                    key: key.clone(),
                }),
                Err(e) => tracing::warn!(%url, error = %e, "ignoring server source"),
            }
        }
    }
    if trackers_and_peers_empty(&config) && args.swarm.hub.is_none() && !have.is_full() {
        eprintln!(
            "ferry-peer: no tracker, --peer, --server, --dht or --hub: nowhere to find the data"
        );
        return Ok(ExitCode::from(EXIT_CONNECTION));
    }
    let handle = match node::start(manifest.clone(), storage.clone(), have, config).await {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("ferry-peer: {e}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
    };
    let _hub = match &args.swarm.hub {
        Some(hub) => Some(start_hub(&handle, &manifest, hub).await),
        None => None,
    };
    let bar = ferry_common::progress::stderr_bar(
        manifest.piece_count() as u64,
        args.swarm.no_progress,
        "{bar:40} {pos}/{len} pieces {msg}",
    );
    let mut last = *handle.stats.borrow();
    let mut stats = handle.stats.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Since when no peer is connected, and when that was last explained.
    let mut alone_since = Some(std::time::Instant::now());
    let mut explained: Option<std::time::Instant> = None;
    let stopped = loop {
        // Completion is noticed as soon as it happens; the display refreshes once a second.
        tokio::select! {
            biased;
            stop = signals.recv() => break Some(stop),
            changed = stats.changed() => {
                let s = *stats.borrow_and_update();
                if s.have == s.pieces || changed.is_err() {
                    break None;
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let s = *handle.stats.borrow();
        bar.set_position(s.have as u64);
        bar.set_message(format!(
            "{} peers, down {}/s, up {}/s",
            s.peers,
            ferry_common::text::human_bytes(s.downloaded.saturating_sub(last.downloaded)),
            ferry_common::text::human_bytes(s.uploaded.saturating_sub(last.uploaded)),
        ));
        last = s;
        if s.have == s.pieces {
            break None;
        }
        if s.peers > 0 {
            alone_since = None;
            explained = None;
            continue;
        }
        let since = *alone_since.get_or_insert_with(std::time::Instant::now);
        let due = match explained {
            None => since.elapsed() >= NO_PEER_GRACE,
            Some(at) => at.elapsed() >= NO_PEER_REPEAT,
        };
        if due {
            let line = format!(
                "ferry-peer: {}no peer after {}: {}",
                if explained.is_some() { "still " } else { "" },
                rounded(since.elapsed()),
                handle.sources.describe()
            );
            bar.suspend(|| eprintln!("{line}"));
            explained = Some(std::time::Instant::now());
        }
    };
    bar.finish_and_clear();
    if let Some(stop) = stopped {
        handle.shutdown().await?;
        stop_dht(dht, &dht_cancel).await;
        return Ok(stop.code());
    }
    let s = *handle.stats.borrow();
    if s.have != s.pieces {
        // The node stopped on its own before finishing: report why.
        handle.wait().await?;
        anyhow::bail!("stopped with {} of {} pieces", s.have, s.pieces);
    }
    // Every piece is verified and written: the .part files take their final names.
    let finishing = storage.clone();
    tokio::task::spawn_blocking(move || finishing.finish())
        .await
        .context("finishing the download")?
        .context("renaming the finished files")?;
    println!(
        "complete {} -> {} in {}",
        manifest.content_id(),
        args.out.display(),
        rounded(started.elapsed())
    );
    if args.no_seed {
        handle.wait().await?;
        stop_dht(dht, &dht_cancel).await;
        return Ok(ExitCode::SUCCESS);
    }
    let mut limits = Vec::new();
    if let Some(t) = args.seed_time {
        limits.push(format!("for {}", humantime::format_duration(t)));
    }
    if let Some(r) = args.seed_ratio {
        limits.push(format!("until {r} times the content is uploaded"));
    }
    limits.push("until Ctrl-C".into());
    eprintln!("seeding on {} {}", handle.listen_addr, limits.join(" or "));
    let total = manifest.total_size().max(1) as f64;
    let ratio_reached = |s: &ferry_p2p::swarm::Stats| {
        args.seed_ratio
            .is_some_and(|r| s.uploaded as f64 / total >= r)
    };
    let deadline = args.seed_time.map(|t| tokio::time::Instant::now() + t);
    let mut stats = handle.stats.clone();
    let limited = loop {
        if ratio_reached(&stats.borrow_and_update()) {
            break true;
        }
        tokio::select! {
            biased;
            _ = signals.recv() => break false,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => break true,
            changed = stats.changed() => if changed.is_err() { break false },
        }
    };
    if limited {
        // Blocks already handed to the sockets should reach their peers before the connections
        // are cut: stop once uploads have been quiet for a second (at most 10 s, or a signal).
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut uploaded = stats.borrow_and_update().uploaded;
        let mut quiet_at = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            tokio::select! {
                biased;
                _ = signals.recv() => break,
                _ = tokio::time::sleep_until(quiet_at.min(give_up)) => break,
                changed = stats.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Counters are republished often; only new uploads restart the wait.
                    let now_uploaded = stats.borrow_and_update().uploaded;
                    if now_uploaded != uploaded {
                        uploaded = now_uploaded;
                        quiet_at = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
            }
        }
    }
    // The user asked to seed and then stopped it (or a limit did): that is not an error.
    handle.shutdown().await?;
    stop_dht(dht, &dht_cancel).await;
    Ok(ExitCode::SUCCESS)
}

async fn dht(args: DhtArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let dht = match start_dht(&args, true, &cancel).await {
        Ok(dht) => dht,
        Err(e) => {
            eprintln!("ferry-peer: {e:#}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
    };
    if let Some(dht) = &dht {
        println!("dht listening on udp://{}", dht.local_addr);
    }
    signals.recv().await;
    stop_dht(dht, &cancel).await;
    Ok(ExitCode::SUCCESS)
}

async fn tracker(args: TrackerArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let config = TrackerConfig {
        interval: args.interval,
        ..Default::default()
    };
    let mut task = tokio::spawn(server::serve(args.listen, config, cancel.clone(), |addr| {
        println!("tracker listening on udp://{addr}");
    }));
    tokio::select! {
        biased;
        _ = signals.recv() => {
            cancel.cancel();
            (&mut task).await??;
            Ok(ExitCode::SUCCESS)
        }
        served = &mut task => match served? {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("ferry-peer: cannot serve on {}: {e}", args.listen);
                Ok(ExitCode::from(EXIT_CONNECTION))
            }
        },
    }
}
