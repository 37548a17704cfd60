//! The fleet commands of `ferry-peer`: `channel new`, `publish`, `follow`, `rollback` and
//! `fleet status`. Argument parsing and printing only; the work is in the fleet modules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::channel::{self, ChannelId, ChannelKey};
use super::follower::{self, FleetConfig, FleetEvent, Published};
use super::install::InstallDir;
use super::lan::LanConfig;
use super::record::{Release, SignedRelease};
use crate::pieces::{data_root, make_manifest};
use ferry_common::exit::{CONNECTION, USAGE};

pub const CHANNEL_HELP: &str = "\
Examples:
  ferry-peer channel new app        creates ~/.config/ferry/channels/app.key, prints the id

The key file is owner-only: whoever holds it can publish releases every follower installs.";

pub const PUBLISH_HELP: &str = "\
Examples:
  ferry-peer publish ./build --channel app --peer 10.0.0.5:7070
  ferry-peer publish ./build --channel app --version 12 --notes 'fix the fan curve'

Hashes DIR into a manifest, signs a release record (the next version unless --version says
otherwise; versions only go up), tells the followers given by --peer or found on the LAN by
multicast (they tell the rest) and
seeds the data until Ctrl-C, SIGTERM or --seed-time. Followers fetch from each other, so the
publisher can leave once about one copy has gone out.

Exit codes:
  0    stopped by Ctrl-C, SIGTERM or --seed-time
  1    error (no channel key, unreadable DIR, a version not above the last one)
  2    usage error
  3    cannot listen";

pub const FOLLOW_HELP: &str = "\
Examples:
  ferry-peer follow CHANNEL_ID --dir /opt/app          finds the others on the LAN by multicast
  ferry-peer follow CHANNEL_ID --dir /opt/app --peer 10.0.0.5:7070
  ferry-peer follow CHANNEL_ID --dir /opt/app --apply 'systemctl restart app' --keep 3

Runs in the foreground (see the README for a systemd unit). Each release is downloaded from
the other followers into DIR/versions/V, verified piece by piece, and DIR/current is switched
to it in one rename; then the --apply command runs with the new path as $1 (and in
FERRY_RELEASE_PATH, the version in FERRY_VERSION). If it fails, DIR/current goes back to the
previous version and the failure is shown by `fleet status`; so does a hook still running after
--apply-timeout, which is killed. Killed at any point, the follower resumes.

Exit codes:
  0    stopped by Ctrl-C or SIGTERM
  1    error (DIR unusable)
  2    usage error
  3    cannot listen";

pub const ROLLBACK_HELP: &str = "\
Examples:
  ferry-peer rollback --dir /opt/app

Switches DIR/current to the newest kept version older than the current one. A running
follower does not undo it: it installs again only when a newer release arrives.";

pub const STATUS_HELP: &str = "\
Examples:
  ferry-peer fleet status CHANNEL_ID --peer 10.0.0.5:7070

Asks the given followers, then every follower they know of, and prints one line each: name,
address, version running, newest release held, whether the last apply failed, last heard.";

/// `ferry-peer channel ...`
#[derive(Debug, clap::Args)]
pub struct ChannelArgs {
    #[command(subcommand)]
    pub command: ChannelCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ChannelCommand {
    /// Create a channel signing key and print the channel id.
    New(ChannelNewArgs),
}

#[derive(Debug, clap::Args)]
pub struct ChannelNewArgs {
    /// Channel name (the key file's name), e.g. app
    pub name: String,
    #[command(flatten)]
    pub dir: ChannelDirArg,
}

#[derive(Debug, clap::Args)]
pub struct ChannelDirArg {
    /// Directory of channel keys. Default: channels/ in the ferry configuration directory
    /// (~/.config/ferry/channels). E.g. /etc/ferry/channels
    #[arg(long, value_name = "DIR", env = "FERRY_CHANNEL_DIR")]
    pub channel_dir: Option<PathBuf>,
}

impl ChannelDirArg {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.channel_dir {
            Some(dir) => Ok(dir.clone()),
            None => channel::default_channel_dir()
                .context("no configuration directory for channel keys: pass --channel-dir"),
        }
    }
}

/// `ferry-peer publish ...`
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The directory (or file) to release, e.g. ./build
    pub path: PathBuf,
    /// Channel name, as given to `channel new`, e.g. app
    #[arg(long)]
    pub channel: String,
    #[command(flatten)]
    pub dir: ChannelDirArg,
    /// Release version, above every earlier one. Default: the last published plus 1. E.g. 12
    #[arg(long)]
    pub version: Option<u64>,
    /// Release notes shown to followers (at most 512 bytes), e.g. 'fix the fan curve'
    #[arg(long, default_value = "")]
    pub notes: String,
    /// A ferry server directory that also holds DIR, named in the release for followers given
    /// its key, e.g. ferry://10.0.0.1:6789/pub
    #[arg(long)]
    pub source: Option<String>,
    /// Follower to tell first (gossip address), repeatable, e.g. 10.0.0.5:7070
    #[arg(long = "peer")]
    pub peers: Vec<SocketAddr>,
    /// UDP address for gossip. Default: 0.0.0.0:0. E.g. 0.0.0.0:7071
    #[arg(long, default_value = "0.0.0.0:0", hide_default_value = true)]
    pub gossip_listen: SocketAddr,
    /// TCP address the data is seeded on. Default: 0.0.0.0:0. E.g. 0.0.0.0:7000
    #[arg(long, default_value = "0.0.0.0:0", hide_default_value = true)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub lan: LanArgs,
    /// Stop seeding after this long. Default: until Ctrl-C. E.g. 30m
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub seed_time: Option<Duration>,
}

/// `ferry-peer follow ...`
#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// The channel id printed by `channel new`.
    pub channel: ChannelId,
    /// Install directory: versions/ and the `current` link go here, e.g. /opt/app
    #[arg(long)]
    pub dir: PathBuf,
    /// Command run (by sh) after each switch, the new path as $1; failure switches back.
    /// E.g. 'systemctl restart app'
    #[arg(long)]
    pub apply: Option<String>,
    /// Versions kept on disk (the current one always). Default: 3
    #[arg(long, default_value_t = 3, hide_default_value = true)]
    pub keep: usize,
    /// A hook still running after this long is killed (with what it started) and counts as
    /// failed. Default: 5m. E.g. 30s
    #[arg(long, value_name = "DURATION", default_value = "5m", hide_default_value = true, value_parser = humantime::parse_duration)]
    pub apply_timeout: Duration,
    /// Another follower's gossip address, repeatable, e.g. 10.0.0.5:7070
    #[arg(long = "peer")]
    pub peers: Vec<SocketAddr>,
    /// UDP address for gossip. Default: 0.0.0.0:7070. E.g. 0.0.0.0:7171
    #[arg(
        long,
        env = "FERRY_FLEET_LISTEN",
        default_value = "0.0.0.0:7070",
        hide_default_value = true
    )]
    pub gossip_listen: SocketAddr,
    /// TCP address releases are fetched and seeded on. Default: 0.0.0.0:0 (a free port).
    #[arg(long, default_value = "0.0.0.0:0", hide_default_value = true)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub lan: LanArgs,
    /// Name shown by `fleet status`. Default: the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// Key of a ferry server a release names as its source, as `ferry --key`. Default:
    /// --key-file, FERRY_KEY, the default key file; none: the source is not used.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// File holding that key, e.g. ~/ferry.key
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// LAN discovery (spec/P2P.md §8.9), on unless turned off.
#[derive(Debug, clap::Args)]
pub struct LanArgs {
    /// Do not announce this member to the LAN's multicast group nor listen for others there
    /// (then only --peer and remembered members are contacted).
    #[arg(long)]
    pub no_lan_discovery: bool,
    /// Multicast group and port of LAN discovery. Default: 239.255.70.77:7077 (IPv4 gossip),
    /// [ff02::f1ee:7077]:7077 (IPv6). E.g. 239.255.70.77:7177
    #[arg(long, value_name = "GROUP:PORT")]
    pub lan_group: Option<SocketAddr>,
}

impl LanArgs {
    fn config(&self, gossip: SocketAddr) -> Option<LanConfig> {
        if self.no_lan_discovery {
            return None;
        }
        let mut config = LanConfig::for_gossip(gossip);
        if let Some(group) = self.lan_group {
            config.group = group;
        }
        Some(config)
    }
}

/// `ferry-peer rollback ...`
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// Install directory of the follower, e.g. /opt/app
    #[arg(long)]
    pub dir: PathBuf,
}

/// `ferry-peer fleet ...`
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Show every follower of a channel that can be found from the given ones.
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    pub channel: ChannelId,
    /// Follower to start from (gossip address), repeatable, e.g. 10.0.0.5:7070
    #[arg(long = "peer", required = true)]
    pub peers: Vec<SocketAddr>,
    /// Longest time to spend asking. Default: 5s.
    #[arg(long, default_value = "5s", hide_default_value = true, value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

pub fn channel(args: ChannelArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ChannelCommand::New(args) => {
            if let Err(e) = channel::check_name(&args.name) {
                eprintln!("ferry-peer: {e}");
                return Ok(ExitCode::from(USAGE));
            }
            let path = args.dir.resolve()?.join(format!("{}.key", args.name));
            let key = ChannelKey::generate();
            key.save_new(&path)?;
            eprintln!("channel {} key written to {}", args.name, path.display());
            println!("{}", key.id());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The last record this machine published on a channel, kept beside its key.
fn last_published(path: &Path, channel: ChannelId) -> anyhow::Result<u64> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let record = SignedRelease::decode(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            anyhow::ensure!(
                record.release().channel == channel,
                "{} holds a release of another channel",
                path.display()
            );
            Ok(record.version())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = channel::check_name(&args.channel) {
        eprintln!("ferry-peer: {e}");
        return Ok(ExitCode::from(USAGE));
    }
    let dir = args.dir.resolve()?;
    let key = ChannelKey::load(&dir.join(format!("{}.key", args.channel)))?;
    let last_path = dir.join(format!("{}.last", args.channel));
    let last = last_published(&last_path, key.id())?;
    let version = args.version.unwrap_or(last + 1);
    if version <= last {
        anyhow::bail!(
            "version {version} is not above version {last}, the last published on {}; \
             followers would reject it",
            args.channel
        );
    }
    let path = args.path.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        make_manifest(&path, None, Vec::new(), Vec::new(), &|_| {})
    })
    .await??;
    let manifest = Arc::new(manifest);
    let time_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let record = Release {
        channel: key.id(),
        version,
        content_id: manifest.content_id(),
        time_ms,
        notes: args.notes.clone(),
        source: args.source.clone().unwrap_or_default(),
    }
    .sign(&key)?;
    // Saved before announcing: a crash after it cannot lead to the same version twice.
    let tmp = last_path.with_extension("last.new");
    std::fs::write(&tmp, record.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, &last_path))
        .with_context(|| format!("writing {}", last_path.display()))?;
    let mut config = FleetConfig::new(key.id(), &format!("publisher {}", args.channel));
    config.gossip_listen = args.gossip_listen;
    config.peers = args.peers.clone();
    config.node.listen = args.listen;
    config.lan = args.lan.config(args.gossip_listen);
    let published = Published {
        record,
        data_root: data_root(&args.path, &manifest),
        manifest: manifest.clone(),
    };
    let mut handle = match follower::publish(config, published).await {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("ferry-peer: cannot publish: {e}");
            return Ok(ExitCode::from(CONNECTION));
        }
    };
    println!(
        "published version {version} of {} ({}), content {}; gossip on udp {}",
        args.channel,
        key.id(),
        manifest.content_id(),
        handle.gossip_addr
    );
    let deadline = args.seed_time.map(|t| tokio::time::Instant::now() + t);
    let mut signals = Signals::install()?;
    loop {
        tokio::select! {
            biased;
            _ = signals.recv() => break,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => break,
            event = handle.events.recv() => match event {
                Some(event) => print_event(&event),
                None => break,
            },
        }
    }
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn follow(args: FollowArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.clone().unwrap_or_else(host_name);
    let mut config = FleetConfig::new(args.channel, &name);
    config.gossip_listen = args.gossip_listen;
    config.peers = args.peers.clone();
    config.node.listen = args.listen;
    config.hook_timeout = args.apply_timeout;
    config.lan = args.lan.config(args.gossip_listen);
    config.server_key = ferry_common::KeySources::from_env(args.key.clone(), args.key_file.clone())
        .resolve()
        .ok();
    let mut signals = Signals::install()?;
    let mut handle =
        match follower::follow(config, args.dir.clone(), args.apply.clone(), args.keep).await {
            Ok(handle) => handle,
            Err(e) => {
                eprintln!(
                    "ferry-peer: cannot follow on udp {}: {e}",
                    args.gossip_listen
                );
                return Ok(ExitCode::from(CONNECTION));
            }
        };
    eprintln!(
        "following {} into {} as {name:?}; gossip on udp {}",
        args.channel,
        args.dir.display(),
        handle.gossip_addr
    );
    loop {
        tokio::select! {
            biased;
            _ = signals.recv() => break,
            event = handle.events.recv() => match event {
                Some(event) => print_event(&event),
                None => break,
            },
        }
    }
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn print_event(event: &FleetEvent) {
    match event {
        FleetEvent::Accepted { version, .. } => println!("release {version} accepted"),
        FleetEvent::Rejected { from, why } => eprintln!("ferry-peer: rejected from {from}: {why}"),
        FleetEvent::Downloading { version, peers } => {
            println!("release {version} downloading from {peers} peers")
        }
        FleetEvent::PiecesFailed {
            version,
            hash_failures,
            banned,
        } => eprintln!(
            "ferry-peer: release {version}: {hash_failures} pieces failed verification, {banned} peers banned"
        ),
        FleetEvent::Installed { version, path } => {
            println!("release {version} installed: {}", path.display())
        }
        FleetEvent::ApplyFailed {
            version,
            status,
            restored,
        } => match restored {
            Some(v) => eprintln!(
                "ferry-peer: release {version}: apply hook failed ({status}); current is back at {v}"
            ),
            None => eprintln!(
                "ferry-peer: release {version}: apply hook failed ({status}); no previous version"
            ),
        },
        FleetEvent::Seeding { version, port } => println!("release {version} seeding on tcp port {port}"),
        FleetEvent::Error(e) => eprintln!("ferry-peer: {e}"),
    }
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let dir = InstallDir::open(&args.dir)?;
    let (from, to) = dir.rollback()?;
    println!("{}: current {from} -> {to}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn fleet(args: FleetArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        FleetCommand::Status(args) => {
            let seen = super::status::crawl(args.channel, &args.peers, args.wait).await?;
            print!("{}", super::status::render(&seen));
            let answered = seen.iter().filter(|s| s.status.is_some()).count();
            if answered == 0 {
                eprintln!(
                    "ferry-peer: no follower of {} answered from {} addresses",
                    args.channel,
                    seen.len()
                );
                return Ok(ExitCode::from(CONNECTION));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "follower".to_owned())
}

/// Ctrl-C and SIGTERM, installed before anything long-running starts.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signals")
    }
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
