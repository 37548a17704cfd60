//! `ferry-peer`: make manifests, seed, download and run a tracker. CLI parsing only; the work is
//! in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use ferry_p2p::manifest::{Manifest, MAX_PIECE_SIZE, MIN_PIECE_SIZE};
use ferry_p2p::node::{self, NodeConfig};
use ferry_p2p::pieces::{data_root, make_manifest, Storage};
use ferry_p2p::tracker::{server, TrackerConfig};

/// Swarm download on the Ferry codec.
#[derive(Debug, Parser)]
#[command(name = "ferry-peer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hash a file or directory tree into a manifest (FILE.ferry).
    Make(MakeArgs),
    /// Verify local data against a manifest, then serve it to the swarm until Ctrl-C.
    Seed(SeedArgs),
    /// Download a manifest's files from the swarm (resuming what is on disk), then keep seeding.
    Get(GetArgs),
    /// Run a UDP tracker.
    Tracker(TrackerArgs),
}

/// Flags shared by `seed` and `get`.
#[derive(Debug, clap::Args)]
struct SwarmArgs {
    /// TCP address to accept peers on, e.g. 0.0.0.0:7000. Default: all interfaces, a free port.
    #[arg(long, env = "FERRY_PEER_LISTEN", default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// Extra tracker besides the manifest's, repeatable, e.g. udp://10.0.0.1:6969
    #[arg(long = "tracker")]
    trackers: Vec<String>,
    /// Peer to connect to directly, repeatable, e.g. 10.0.0.2:7000
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Most simultaneous peer connections. Default 40.
    #[arg(long, default_value_t = 40)]
    max_peers: usize,
    /// Hide the progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, clap::Args)]
struct SeedArgs {
    /// The manifest, e.g. release.ferry
    manifest: PathBuf,
    /// The data: the directory holding the manifest's top-level entry, or that entry itself.
    /// Default: the current directory.
    #[arg(long, default_value = ".")]
    data: PathBuf,
    #[command(flatten)]
    swarm: SwarmArgs,
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// The manifest, e.g. release.ferry
    manifest: PathBuf,
    /// Download directory; nothing is written outside it. Default: the current directory.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Exit when the download is complete instead of seeding.
    #[arg(long)]
    no_seed: bool,
    /// Ferry server that also holds the files, besides the manifest's, repeatable: the
    /// directory containing the manifest's top-level entry, e.g. ferry://10.0.0.1:6789/pub
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Key of the ferry servers, hex or base64. Default: --server-key-file, FERRY_KEY, then
    /// the default key file (~/.config/ferry/key)
    #[arg(long)]
    server_key: Option<String>,
    /// File holding the ferry servers' key (mode 0600), e.g. ~/ferry.key
    #[arg(long)]
    server_key_file: Option<PathBuf>,
    #[command(flatten)]
    swarm: SwarmArgs,
}

#[derive(Debug, clap::Args)]
struct TrackerArgs {
    /// UDP address to listen on. Default 0.0.0.0:6969, e.g. [::]:6969
    #[arg(long, env = "FERRY_TRACKER_LISTEN", default_value = "0.0.0.0:6969")]
    listen: SocketAddr,
    /// Announce interval told to peers; peers silent for two intervals are dropped.
    /// Default 60s, e.g. 30s
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

#[derive(Debug, clap::Args)]
struct MakeArgs {
    /// File or directory to describe, e.g. ./release-1.2
    path: PathBuf,
    /// Where to write the manifest. Default: PATH's name plus `.ferry` in the current directory.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Tracker to list, repeatable, e.g. udp://10.0.0.1:6969
    #[arg(long = "tracker")]
    trackers: Vec<String>,
    /// Ferry server that also has the files, repeatable, e.g. ferry://10.0.0.1:6789/pub
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Piece size in bytes, a power of two in 16384..=16777216. Default: chosen from the total
    /// size (256 KiB to 4 MiB), e.g. 1048576
    #[arg(long)]
    piece_size: Option<u32>,
    /// Hide the progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Make(args) => make(args),
        Command::Seed(args) => runtime().and_then(|rt| rt.block_on(seed(args))),
        Command::Get(args) => runtime().and_then(|rt| rt.block_on(get(args))),
        Command::Tracker(args) => runtime().and_then(|rt| rt.block_on(tracker(args))),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry-peer: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn progress_bar(len: u64, hidden: bool, template: &str) -> ProgressBar {
    if hidden || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn make(args: MakeArgs) -> anyhow::Result<ExitCode> {
    if let Some(size) = args.piece_size {
        if !size.is_power_of_two() || !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&size) {
            anyhow::bail!("--piece-size {size} is not a power of two in 16384..=16777216");
        }
    }
    let total = ferry_p2p::pieces::scan(&args.path)
        .with_context(|| format!("reading {}", args.path.display()))?
        .1
        .iter()
        .map(|(e, _)| e.size)
        .sum();
    let bar = progress_bar(
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
    let output = match args.output {
        Some(o) => o,
        None => {
            let name = args
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("content");
            PathBuf::from(format!("{name}.ferry"))
        }
    };
    std::fs::write(&output, manifest.encode())
        .with_context(|| format!("writing {}", output.display()))?;
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

const EXIT_CONNECTION: u8 = 3;
const EXIT_INTEGRITY: u8 = 4;
const EXIT_INTERRUPTED: u8 = 130;

fn load(path: &std::path::Path) -> anyhow::Result<Arc<Manifest>> {
    let manifest =
        Manifest::load(path).with_context(|| format!("reading manifest {}", path.display()))?;
    Ok(Arc::new(manifest))
}

/// Resolves `udp://HOST:PORT` tracker URLs (manifest's and extra ones).
async fn resolve_trackers(manifest: &Manifest, extra: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for url in manifest.trackers().iter().chain(extra) {
        let Some(hostport) = url.strip_prefix("udp://") else {
            tracing::warn!(%url, "ignoring tracker that is not udp://HOST:PORT");
            continue;
        };
        let hostport = hostport.trim_end_matches('/');
        match tokio::net::lookup_host(hostport).await {
            Ok(addrs) => out.extend(addrs.take(1)),
            Err(e) => tracing::warn!(%url, error = %e, "cannot resolve tracker"),
        }
    }
    out
}

fn verify_bar(storage: &Storage, manifest: &Manifest, hidden: bool) -> ferry_p2p::pieces::Bitfield {
    let bar = progress_bar(
        manifest.piece_count() as u64,
        hidden,
        "verifying {bar:40} {pos}/{len} pieces",
    );
    let have = storage.verify(manifest, &|| bar.inc(1));
    bar.finish_and_clear();
    have
}

fn trackers_and_peers_empty(config: &NodeConfig) -> bool {
    config.trackers.is_empty() && config.peers.is_empty() && config.servers.is_empty()
}

fn node_config(args: &SwarmArgs, trackers: Vec<SocketAddr>, seed_after: bool) -> NodeConfig {
    NodeConfig {
        listen: args.listen,
        peers: args.peers.clone(),
        trackers,
        seed_after_complete: seed_after,
        max_peers: args.max_peers,
        ..Default::default()
    }
}

async fn seed(args: SeedArgs) -> anyhow::Result<ExitCode> {
    let manifest = load(&args.manifest)?;
    let root = data_root(&args.data, &manifest);
    let storage = Storage::open_existing(&root, &manifest)
        .with_context(|| format!("opening data under {}", root.display()))?;
    let have = verify_bar(&storage, &manifest, args.swarm.no_progress);
    if !have.is_full() {
        eprintln!(
            "ferry-peer: {} of {} pieces under {} do not match the manifest",
            manifest.piece_count() - have.count(),
            manifest.piece_count(),
            root.display()
        );
        return Ok(ExitCode::from(EXIT_INTEGRITY));
    }
    let trackers = resolve_trackers(&manifest, &args.swarm.trackers).await;
    let handle = match node::start(
        manifest.clone(),
        Arc::new(storage),
        have,
        node_config(&args.swarm, trackers, true),
    )
    .await
    {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("ferry-peer: {e}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
    };
    println!(
        "seeding {} on {}",
        manifest.content_id(),
        handle.listen_addr
    );
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await?;
    Ok(ExitCode::from(EXIT_INTERRUPTED))
}

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let manifest = load(&args.manifest)?;
    let storage = Storage::create(&args.out, &manifest)
        .with_context(|| format!("preparing {}", args.out.display()))?;
    // Whatever is already on disk and matches is kept: this is how `get` resumes.
    let have = verify_bar(&storage, &manifest, args.swarm.no_progress);
    let trackers = resolve_trackers(&manifest, &args.swarm.trackers).await;
    let mut config = node_config(&args.swarm, trackers, !args.no_seed);
    let urls: Vec<&String> = manifest.servers().iter().chain(&args.servers).collect();
    if !urls.is_empty() && !have.is_full() {
        let key = match ferry_client::key::KeySources::from_env(
            args.server_key.clone(),
            args.server_key_file.clone(),
        )
        .resolve()
        {
            Ok(key) => key,
            Err(e) => {
                eprintln!("ferry-peer: servers listed but {e}");
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        };
        for url in urls {
            match url.parse::<ferry_client::FerryUrl>() {
                Ok(url) => config.servers.push(ferry_p2p::source::ServerSource {
                    url,
                    key: key.clone(),
                }),
                Err(e) => tracing::warn!(%url, error = %e, "ignoring server source"),
            }
        }
    }
    if trackers_and_peers_empty(&config) && !have.is_full() {
        eprintln!("ferry-peer: no tracker, --peer or --server: nowhere to find the data");
        return Ok(ExitCode::from(EXIT_CONNECTION));
    }
    let handle = match node::start(manifest.clone(), Arc::new(storage), have, config).await {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("ferry-peer: {e}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
    };
    let bar = progress_bar(
        manifest.piece_count() as u64,
        args.swarm.no_progress,
        "{bar:40} {pos}/{len} pieces {msg}",
    );
    let mut last = *handle.stats.borrow();
    let mut stats = handle.stats.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let interrupted = loop {
        // Completion is noticed as soon as it happens; the display refreshes once a second.
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break true,
            changed = stats.changed() => {
                let s = *stats.borrow_and_update();
                if s.have == s.pieces || changed.is_err() {
                    break false;
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
            indicatif::HumanBytes(s.downloaded.saturating_sub(last.downloaded)),
            indicatif::HumanBytes(s.uploaded.saturating_sub(last.uploaded)),
        ));
        last = s;
        if s.have == s.pieces {
            break false;
        }
    };
    bar.finish_and_clear();
    if interrupted {
        handle.shutdown().await?;
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    let s = *handle.stats.borrow();
    if s.have != s.pieces {
        // The node stopped on its own before finishing: report why.
        handle.wait().await?;
        anyhow::bail!("stopped with {} of {} pieces", s.have, s.pieces);
    }
    println!(
        "complete {} -> {}",
        manifest.content_id(),
        args.out.display()
    );
    if args.no_seed {
        handle.wait().await?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("seeding on {} until Ctrl-C", handle.listen_addr);
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await?;
    Ok(ExitCode::from(EXIT_INTERRUPTED))
}

async fn tracker(args: TrackerArgs) -> anyhow::Result<ExitCode> {
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
        _ = tokio::signal::ctrl_c() => {
            cancel.cancel();
            (&mut task).await??;
            Ok(ExitCode::from(EXIT_INTERRUPTED))
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
