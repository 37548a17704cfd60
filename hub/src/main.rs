//! `ferry-hub`: the command line. Parses flags, loads or creates the hub's identity and state
//! directory, prints the connect line, and runs the hub until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry_common::identity;
use ferry_common::logging;
use ferry_hub::{Hub, HubConfig, Registration};

/// Names, presence, rendezvous and relay for Ferry servers behind NATs.
///
/// Run it on a host every node can dial. Servers register a name (`ferry register
/// alice@HUB`), stay present (`ferry-server ROOT --hub alice@HUB`), and clients reach them as
/// `ferry://alice@HUB/PATH`: directly when a hint works, else relayed through the hub, which
/// sees only ciphertext.
#[derive(Debug, Parser)]
#[command(
    name = "ferry-hub",
    version,
    about,
    long_about,
    after_help = "Exit codes: 0 stopped, 1 error (cannot listen, unreadable state), 2 usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on (TCP), IP:PORT. Default 0.0.0.0:6790.
    #[arg(long, short, value_name = "ADDR", default_value = "0.0.0.0:6790")]
    listen: SocketAddr,

    /// Directory of the hub's identity, names and invites. Default ~/.config/ferry/hub.
    #[arg(long, value_name = "DIR", global = true)]
    state: Option<PathBuf>,

    /// Names are first come, first served (the default).
    #[arg(long, conflicts_with = "invite_only")]
    open: bool,

    /// Names are registered only with an invite code (`ferry-hub invite`).
    #[arg(long)]
    invite_only: bool,

    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a new one-time invite code (for an --invite-only hub; works while it runs).
    Invite {
        /// How long the code stays good, e.g. 1h, 2d (default 7d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<std::time::Duration>,
    },
}

fn main() {
    let cli = Cli::parse();
    logging::init(
        logging::level(cli.verbose, false),
        logging::LogFormat::Text,
        true,
    );
    match run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("ferry-hub: {e:#}");
            std::process::exit(1);
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30m, 12h, 7d)"))
}

fn state_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    let identity = identity::default_identity_file()
        .context("no config directory for the hub's state: pass --state DIR")?;
    // `default_identity_file` is <config>/ferry/identity.
    Ok(identity.with_file_name("hub"))
}

fn run(cli: Cli) -> Result<()> {
    let state = state_dir(cli.state)?;
    if let Some(Command::Invite { expires }) = cli.command {
        let ttl = expires.unwrap_or(ferry_hub::names::DEFAULT_INVITE_TTL);
        let code = ferry_hub::names::issue_invite_for(&state, ttl, std::time::SystemTime::now())
            .with_context(|| format!("cannot write {}", state.join("invites").display()))?;
        println!("{code}");
        eprintln!(
            "ferry-hub: one-time invite, good for {}; the user runs: ferry register NAME@HUB --invite {code}",
            humantime::format_duration(ttl)
        );
        return Ok(());
    }
    let (identity, _) = identity::load_or_create(&state.join("identity"))?;
    let mut config = HubConfig::new(identity, cli.listen);
    config.state = Some(state.clone());
    config.registration = if cli.invite_only {
        Registration::InviteOnly
    } else {
        Registration::Open
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let hub = Hub::bind(config).await?;
        let addr = hub.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            "HOST".to_string()
        } else {
            addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        println!("ferry://{}@{host}:{}", hub.id(), addr.port());
        eprintln!(
            "ferry-hub: listening on {addr} ({}, state in {}); name this hub as the line above{}",
            if cli.invite_only {
                "invite-only"
            } else {
                "open registration"
            },
            state.display(),
            if addr.ip().is_unspecified() {
                ", HOST being this machine's public name or address"
            } else {
                ""
            }
        );
        hub.run(shutdown()).await?;
        Ok(())
    })
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
