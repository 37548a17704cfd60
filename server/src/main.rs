//! `ferry-server`: the command line. Parses flags and the optional TOML config file, finds or
//! creates the key, installs logging and signal handling, then hands over to the library.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_common::keys::{KeyOrigin, KeySources};
use ferry_common::logging;
use ferry_protocol::Key;
use ferry_server::{authorized, Config, Limits, Server, DEFAULT_PORT};

mod hub;
use serde::Deserialize;

/// Serve one directory tree over the Ferry protocol.
///
/// Read-only: clients can list, stat and fetch (whole files or byte ranges); there are no
/// uploads. Nothing outside ROOT is ever served, symlinks included. Sessions are authenticated
/// with a pre-shared key and encrypted unless --plaintext allows otherwise.
///
/// Key sources, first found wins: --key, --key-file, FERRY_KEY, the default key file
/// (created with a random key on first start, owner-only). At start the server prints one line
/// a client can paste to connect.
#[derive(Debug, Parser)]
#[command(
    name = "ferry-server",
    version,
    about,
    long_about,
    after_help = "Exit codes: 0 stopped by SIGTERM (after draining), 1 error (bad config, \
                  unreadable key, cannot listen), 2 usage, 130 stopped by SIGINT."
)]
struct Cli {
    /// Directory to serve. Default: `root` from the config file, else the current directory.
    root: Option<PathBuf>,

    /// Edit or list the authorised clients instead of serving.
    #[command(subcommand)]
    command: Option<Command>,

    /// The authorised-clients file: who may connect with the identity handshake (see
    /// `ferry-server authorize --help`). Default: ~/.config/ferry/authorized_clients.
    #[arg(long, value_name = "FILE", global = true)]
    authorized_clients: Option<PathBuf>,

    /// Address to listen on: IP, IP:PORT, [IPv6]:PORT, HOST or HOST:PORT (the port defaults
    /// to 6789; a host name listens on each of its addresses); repeat for several.
    /// Default 127.0.0.1:6789. E.g. --listen 0.0.0.0 --listen [::]:6789
    #[arg(long, short, value_name = "ADDR", value_parser = parse_listen)]
    listen: Vec<ListenAddrs>,

    /// The pre-shared key, 64 hex characters or base64. Visible to other local users in the
    /// process list; prefer --key-file or FERRY_KEY.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,

    /// File holding the key (hex, base64 or 32 raw bytes; must not be group/other readable).
    /// Default: ~/.config/ferry/key, created on first start.
    #[arg(long, value_name = "FILE", env = "FERRY_KEY_FILE")]
    key_file: Option<PathBuf>,

    /// Also serve the identity handshake as this node's identity, so clients can name the
    /// server as ferry://ID@HOST/ (the id is printed at start). --identity alone uses
    /// ~/.config/ferry/identity (shared with ferry and ferry-peer), created on first start;
    /// --identity=FILE another file. Default: off (PSK only). E.g. --identity=/etc/ferry/identity
    // The empty default marks "the default file"; clap's PathBuf parser refuses an empty value,
    // so the value goes through the OsString parser.
    #[arg(
        long,
        value_name = "FILE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "",
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    identity: Option<PathBuf>,

    /// Stay present at a hub as NAME (registered first with `ferry register NAME@HUB`), so
    /// clients reach this server as ferry://NAME@HUB/ even behind a NAT: directly when one of
    /// its addresses can be dialled, else relayed by the hub, which sees only ciphertext. Implies
    /// --identity. HUB is host[:port] or ferry://HUBID@host:port/. E.g. --hub alice@hub.example.org:6790
    #[arg(long, value_name = "NAME@HUB", value_parser = hub::parse_hub)]
    hub: Option<ferry_common::url::FerryUrl>,

    /// Allow clients to choose unencrypted sessions (the handshake is still authenticated).
    /// Off by default; only for trusted networks or benchmarks.
    #[arg(long)]
    plaintext: bool,

    /// Record suites to accept: gcm (default: AES-256-GCM for clients that offer it, and
    /// AES-256-CBC + HMAC-SHA256 for those that do not) or cbc-hmac (the old suite only, as
    /// servers before protocol version 2). E.g. --suite cbc-hmac
    #[arg(long, value_name = "SUITE", value_parser = ["gcm", "cbc-hmac"])]
    suite: Option<String>,

    /// Never follow symbolic links, not even those that stay inside ROOT (by default links
    /// inside ROOT are followed and links leaving it are refused).
    #[arg(long)]
    no_symlinks: bool,

    /// Serve read-only: no uploads (the default; the flag exists so scripts can say so).
    #[arg(long, conflicts_with = "allow_upload")]
    read_only: bool,

    /// Let key holders upload (`ferry put`) beneath ROOT: files appear only once complete and
    /// verified, and never replace a file unless the client asks (--force). Default: off.
    #[arg(long)]
    allow_upload: bool,

    /// Largest file one upload may be (K/M/G/T suffixes, binary). Default: no limit. E.g. 4G
    #[arg(long, value_name = "SIZE", value_parser = parse_upload_size)]
    max_upload_size: Option<u64>,

    /// Bytes each client identity may upload per server run, finished or not (K/M/G/T).
    /// Default: no limit. E.g. 100G
    #[arg(long, value_name = "SIZE", value_parser = parse_upload_size)]
    upload_quota: Option<u64>,

    /// TOML config file with the same settings (flags win). E.g. --config /etc/ferry/server.toml
    #[arg(long, short, value_name = "FILE", env = "FERRY_CONFIG")]
    config: Option<PathBuf>,

    /// Most concurrent connections. When all are taken, a newcomer evicts a connection still
    /// in its handshake; only when all are authenticated is it refused with BUSY. Default 512.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Most connections still in their handshake (like OpenSSH's MaxStartups); when full, a
    /// newcomer evicts the oldest that has sent nothing. Default 256.
    #[arg(long, value_name = "N")]
    max_pending: Option<usize>,

    /// Most connections in their handshake from one address (IPv6: one /64). Default 64.
    #[arg(long, value_name = "N")]
    max_pending_per_address: Option<usize>,

    /// Most requests in flight per connection; more get BUSY. Default 32.
    #[arg(long, value_name = "N")]
    max_in_flight: Option<usize>,

    /// Time allowed for a connection's handshake. Default 10s. E.g. 5s
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    handshake_timeout: Option<Duration>,

    /// Close connections with nothing in flight after this long without a frame. Default 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,

    /// A frame that has started arriving must complete within this (slowloris defence).
    /// Default 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    frame_timeout: Option<Duration>,

    /// Close a connection whose client reads nothing for this long. Default 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    write_timeout: Option<Duration>,

    /// Largest frame body accepted, in bytes, up to 16M. Default 1M. E.g. 256K
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_frame: Option<u32>,

    /// On SIGINT/SIGTERM, how long in-flight transfers may finish before connections are cut.
    /// Default 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    shutdown_grace: Option<Duration>,

    /// More log output (-v info with one line per request, -vv debug, -vvv trace). RUST_LOG
    /// overrides. Default: warnings only.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Less log output (-q errors only, -qq nothing).
    #[arg(short, long, action = clap::ArgAction::Count)]
    quiet: u8,

    /// Log line format on stderr. Default text.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Authorise a client identity (or change what an authorised one may do).
    ///
    /// With --identity, only the clients in the authorised-clients file may connect with the
    /// identity handshake (a missing or empty file admits nobody). Edits apply from each
    /// client's next connection, without a restart. The file (default
    /// ~/.config/ferry/authorized_clients, owner-only) has one client a line, `#` comments:
    ///
    ///   ID NAME [root=DIR/] [write]
    ///
    /// ID is the client's node id (`ferry id` prints it), NAME names it in logs. root=DIR/
    /// confines it to DIR beneath the served root, which it then sees as /; write lets it
    /// upload (otherwise it may only read). A malformed line is reported with its number and
    /// skipped.
    #[command(
        after_help = "E.g. ferry-server authorize abcd…wxyz --name bob --root team/bob/ --write"
    )]
    Authorize {
        /// The client's node id (34 characters, from `ferry id` on the client).
        #[arg(value_parser = parse_node_id)]
        id: ferry_protocol::identity::NodeId,
        /// Its name in logs and for `revoke` (letters, digits, . _ - @).
        #[arg(long, value_parser = parse_client_name)]
        name: String,
        /// Confine it to this directory beneath the served root. Default: the whole root.
        #[arg(long, value_name = "DIR/", value_parser = parse_client_root)]
        root: Option<String>,
        /// Let it upload. Default: read-only.
        #[arg(long)]
        write: bool,
    },
    /// Remove a client, by id or name; its next connection is refused.
    Revoke {
        /// The client's node id or name.
        #[arg(value_name = "ID-OR-NAME")]
        who: String,
    },
    /// List the authorised clients: name, id, root and access.
    Clients,
    /// Make a one-time code that enrols one client: prints the code and the line to run on
    /// the client (`ferry join CODE ferry://ID@HOST:PORT/`).
    ///
    /// The client proves the code with SPAKE2 over the identity handshake, and is added to the
    /// authorised clients with this name, root and access; it also learns this server's id in
    /// the same step. A code works once: a wrong guess, a use or its expiry burns it. Invites
    /// wait in the invites directory beside the authorised-clients file (owner-only); the
    /// running server (started with --identity) reads it at each enrolment, so no restart is
    /// needed. Top-level flags choose the identity and address: ferry-server
    /// --identity[=FILE] [--listen ADDR] invite ...
    #[command(
        after_help = "E.g. ferry-server invite --name bob --root team/bob/ --write --expires 1h"
    )]
    Invite {
        /// The enrolled client's name in logs and for `revoke`. Default: client- and the
        /// first 8 characters of its id.
        #[arg(long, value_parser = parse_client_name)]
        name: Option<String>,
        /// Confine it to this directory beneath the served root. Default: the whole root.
        #[arg(long, value_name = "DIR/", value_parser = parse_client_root)]
        root: Option<String>,
        /// Let it upload. Default: read-only.
        #[arg(long)]
        write: bool,
        /// How long the code stays valid. Default 10m. E.g. 30s, 1h
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<Duration>,
        /// Where clients reach this server, for the printed line: HOST[:PORT]. Default: the
        /// first --listen address, else 127.0.0.1:6789. E.g. files.lan:7000
        #[arg(long, value_name = "HOST[:PORT]")]
        address: Option<String>,
    },
}

fn parse_node_id(s: &str) -> Result<ferry_protocol::identity::NodeId, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_client_name(s: &str) -> Result<String, String> {
    authorized::check_name(s).map(|()| s.to_owned())
}

fn parse_client_root(s: &str) -> Result<String, String> {
    authorized::check_root(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

/// The config file. Every field is optional; flags override it.
///
/// ```toml
/// root = "/srv/share"                 # default: current directory
/// listen = ["0.0.0.0", "[::]:6789"]   # as --listen; default: ["127.0.0.1:6789"]
/// key_file = "/etc/ferry/key"         # default: ~/.config/ferry/key
/// plaintext = false                   # default: false
/// no_symlinks = false                 # default: false (links inside root are followed)
/// allow_upload = false                # default: false (as --allow-upload)
/// max_upload_size = "4G"              # default: no limit
/// upload_quota = "100G"               # default: no limit
/// suite = "gcm"                       # or "cbc-hmac"; default "gcm"
/// identity = "/etc/ferry/identity"    # as --identity=FILE; "" is the default file; default: off
/// authorized_clients = "/etc/ferry/authorized_clients"  # default: beside the default identity
/// hub = "alice@hub.example.org:6790"  # as --hub; default: none
/// log_format = "json"                 # default: "text"
///
/// [limits]
/// max_connections = 512               # default 512
/// max_pending = 256                   # default 256
/// max_pending_per_address = 64        # default 64
/// max_in_flight = 32                  # default 32
/// handshake_timeout = "10s"           # default 10s
/// idle_timeout = "5m"                 # default 5m
/// frame_timeout = "30s"               # default 30s
/// write_timeout = "60s"               # default 60s
/// max_frame = "1M"                    # default 1M
/// shutdown_grace = "10s"              # default 10s
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    root: Option<PathBuf>,
    /// Same syntax as --listen.
    listen: Option<Vec<String>>,
    key_file: Option<PathBuf>,
    plaintext: Option<bool>,
    no_symlinks: Option<bool>,
    read_only: Option<bool>,
    allow_upload: Option<bool>,
    max_upload_size: Option<String>,
    upload_quota: Option<String>,
    suite: Option<String>,
    identity: Option<PathBuf>,
    authorized_clients: Option<PathBuf>,
    hub: Option<String>,
    log_format: Option<LogFormat>,
    limits: FileLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    max_pending: Option<usize>,
    max_pending_per_address: Option<usize>,
    max_in_flight: Option<usize>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    frame_timeout: Option<String>,
    write_timeout: Option<String>,
    max_frame: Option<String>,
    shutdown_grace: Option<String>,
}

/// The addresses one `--listen` value stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListenAddrs(Vec<SocketAddr>);

/// `IP`, `IP:PORT`, `[IPv6]`, `[IPv6]:PORT`, `HOST` or `HOST:PORT`; the port defaults to
/// 6789 and a host name stands for every address of this machine it resolves to.
fn parse_listen(s: &str) -> Result<ListenAddrs, String> {
    use std::net::ToSocketAddrs;
    let expected = "expected IP, IP:PORT, [IPv6]:PORT, HOST or HOST:PORT (default port 6789), \
                    e.g. 0.0.0.0:6789";
    let t = s.trim();
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(ListenAddrs(vec![addr]));
    }
    let bare = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ListenAddrs(vec![SocketAddr::new(ip, DEFAULT_PORT)]));
    }
    let (host, port) = match t.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: port {port:?} is not a number 0-65535; {expected}"))?;
            (host, port)
        }
        None => (t, DEFAULT_PORT),
    };
    if host.is_empty() || host.contains(['[', ']', ':', '/', ' ']) {
        return Err(format!("{s:?} is not an address; {expected}"));
    }
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}; {expected}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    // Only addresses this machine has: `localhost` names ::1 even where IPv6 is off.
    addrs.retain(|a| std::net::TcpListener::bind(SocketAddr::new(a.ip(), 0)).is_ok());
    if addrs.is_empty() {
        return Err(format!(
            "{host:?} resolves to no address of this machine; {expected}"
        ));
    }
    Ok(ListenAddrs(addrs))
}

/// An upload size: bytes with an optional K/M/G/T suffix (binary), e.g. `4G`.
fn parse_upload_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let shift = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        Some('T') => 40,
        _ => 0,
    };
    let digits = if shift == 0 { t } else { &t[..t.len() - 1] };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1000000, 512M, 4G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 10s, 1m30s, 500ms)"))
}

/// Bytes with an optional K/M suffix (binary), capped at the protocol's 16 MiB limit.
fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (digits, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1u64 << 20),
        _ => (t, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65536, 256K, 1M)"))?;
    let bytes = n.saturating_mul(mult);
    let max = u64::from(ferry_protocol::MAX_BODY_LIMIT);
    if !(4096..=max).contains(&bytes) {
        return Err(format!("{bytes} is outside 4096..={max}"));
    }
    Ok(bytes as u32)
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry-server: {error:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    if let Some(Command::Invite {
        name,
        root,
        write,
        expires,
        address,
    }) = &cli.command
    {
        let path = authorized_clients_path(&cli)?;
        let identity = load_identity(Some(cli.identity.as_deref().unwrap_or(Path::new(""))))?
            .context("no identity")?;
        let invite = ferry_server::invite::create(
            &ferry_server::invite::dir_beside(&path),
            name.clone(),
            root.clone(),
            *write,
            expires.unwrap_or(ferry_server::invite::DEFAULT_TTL),
            std::time::SystemTime::now(),
        )?;
        let address = match address {
            Some(address) if address.contains(':') => address.clone(),
            Some(host) => format!("{host}:{DEFAULT_PORT}"),
            None => cli
                .listen
                .first()
                .and_then(|l| l.0.first())
                .map_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"), |a| connect_host(*a)),
        };
        let access = if *write { "read-write" } else { "read-only" };
        let root = root.as_deref().map_or("/".to_owned(), |r| format!("{r}/"));
        let ttl = humantime::format_duration(expires.unwrap_or(ferry_server::invite::DEFAULT_TTL));
        println!(
            "invite {} for {}: {access}, root {root}, valid for {ttl}, once",
            invite.code.nameplate,
            name.as_deref().unwrap_or("a new client"),
        );
        println!("on the client, run:");
        println!(
            "  {} join {} ferry://{}@{address}/",
            client_program(),
            invite.code,
            identity.id()
        );
        return Ok(0);
    }
    if let Some(command) = &cli.command {
        return edit_clients(command, &authorized_clients_path(&cli)?);
    }
    let file = match &cli.config {
        Some(path) => load_file_config(path)?,
        None => FileConfig::default(),
    };
    // What the file says where no flag does: from here on `cli` holds the merged settings.
    let mut cli = cli;
    cli.suite = cli.suite.or(file.suite.clone());
    cli.identity = cli.identity.or(file.identity.clone());
    cli.authorized_clients = cli.authorized_clients.or(file.authorized_clients.clone());
    if cli.hub.is_none() {
        if let Some(text) = &file.hub {
            cli.hub = Some(hub::parse_hub(text).map_err(|e| anyhow::anyhow!("config hub: {e}"))?);
        }
    }
    let size = |text: &Option<String>, name: &str| -> Result<Option<u64>> {
        text.as_deref()
            .map(parse_upload_size)
            .transpose()
            .map_err(|e| anyhow::anyhow!("config {name}: {e}"))
    };
    cli.max_upload_size = cli
        .max_upload_size
        .or(size(&file.max_upload_size, "max_upload_size")?);
    cli.upload_quota = cli
        .upload_quota
        .or(size(&file.upload_quota, "upload_quota")?);
    init_logging(&cli, file.log_format.unwrap_or(LogFormat::Text));
    let allow_upload = cli.allow_upload || file.allow_upload.unwrap_or(false);
    if allow_upload && (cli.read_only || file.read_only == Some(true)) {
        bail!("allow_upload and read_only contradict each other; choose one");
    }
    if file.read_only == Some(false) && !allow_upload {
        bail!("read_only = false needs allow_upload = true (or --allow-upload) to mean anything");
    }

    let root = match cli.root.clone().or(file.root.clone()) {
        Some(root) => root,
        None => std::env::current_dir().context("current directory")?,
    };
    if !root.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let listen = if !cli.listen.is_empty() {
        cli.listen
            .iter()
            .flat_map(|l| l.0.iter().copied())
            .collect()
    } else if let Some(listen) = &file.listen {
        let mut addrs = Vec::new();
        for text in listen {
            let parsed = parse_listen(text).map_err(|e| anyhow::anyhow!("config listen: {e}"))?;
            addrs.extend(parsed.0);
        }
        addrs
    } else {
        vec![SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT))]
    };
    let key = resolve_key(&cli, &file)?;
    let limits = limits(&cli, &file.limits)?;
    let config = Config::new(root, key.clone())
        .listen(listen)
        .allow_plaintext(cli.plaintext || file.plaintext.unwrap_or(false))
        .follow_symlinks(!(cli.no_symlinks || file.no_symlinks.unwrap_or(false)))
        .allow_upload(allow_upload)
        .suites(
            ferry_protocol::crypto::RecordSuite::parse_selection(
                cli.suite.as_deref().unwrap_or("gcm"),
            )
            .map_err(|e| anyhow::anyhow!("suite: {e}"))?,
        )
        .limits(limits);
    // --hub proves this server's id to its clients, so it needs an identity.
    let identity = load_identity(
        cli.identity
            .as_deref()
            .or(cli.hub.as_ref().map(|_| Path::new(""))),
    )?;
    let config = match &identity {
        Some(identity) => {
            let path = authorized_clients_path(&cli)?;
            config
                .identity(identity.clone())
                .identity_resolver(authorized_clients(&path)?)
                // `ferry-server invite` codes enrol clients into the same file (spec §13.11).
                .enrolment(ferry_server::invite::Enrolment::beside(path))
        }
        None => config,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let signals = Signals::install()?;
        let server = Server::bind(config).await?;
        let addrs = server.local_addrs();
        if let Some(first) = addrs.first() {
            // `--key=`: a base64 key may start with `-`, which would read as a flag.
            println!(
                "{} shell --key={} ferry://{}/",
                client_program(),
                key.to_base64(),
                connect_host(*first)
            );
            if let Some(identity) = &identity {
                println!(
                    "{} shell ferry://{}@{}/",
                    client_program(),
                    identity.id(),
                    connect_host(*first)
                );
            }
        }
        let (acceptors, _presence) = match (&cli.hub, &identity) {
            (Some(url), Some(identity)) => {
                let (acceptor, presence) = hub::start(url, identity.clone(), &addrs);
                println!("{} shell {url}", client_program());
                (vec![acceptor], Some(presence))
            }
            _ => (Vec::new(), None),
        };
        let exit = Arc::new(AtomicI32::new(0));
        let signalled = exit.clone();
        server
            .run_with(acceptors, async move {
                let code = signals.wait().await;
                signalled.store(code, Ordering::SeqCst);
            })
            .await?;
        Ok(exit.load(Ordering::SeqCst))
    })
}

/// `--authorized-clients`, else the default beside the default identity.
fn authorized_clients_path(cli: &Cli) -> Result<PathBuf> {
    match &cli.authorized_clients {
        Some(path) => Ok(path.clone()),
        None => authorized::default_path().context(
            "no config directory for the authorised-clients file: pass --authorized-clients FILE",
        ),
    }
}

/// The identity handshake's resolver: the authorised-clients file, checked once here so that
/// its problems are said at start (the resolver rereads it at every handshake).
fn authorized_clients(path: &Path) -> Result<Arc<dyn ferry_protocol::noise::IdentityResolver>> {
    let parsed = authorized::load(path)?;
    for error in &parsed.errors {
        eprintln!("ferry-server: {}: skipping {error}", path.display());
    }
    if parsed.clients.is_empty() {
        eprintln!(
            "ferry-server: no client is authorised yet ({} has none), so every identity is \
             refused; authorise one with: ferry-server authorize ID --name NAME [--root DIR/] [--write]",
            path.display()
        );
    }
    Ok(Arc::new(authorized::AuthorizedClients::new(path)))
}

/// `authorize`, `revoke` and `clients`.
fn edit_clients(command: &Command, path: &Path) -> Result<i32> {
    match command {
        Command::Authorize {
            id,
            name,
            root,
            write,
        } => {
            let client = authorized::Client {
                id: *id,
                name: name.clone(),
                root: root.clone(),
                write: *write,
            };
            authorized::authorize(path, &client)?;
            println!("authorised: {} (in {})", client.line(), path.display());
        }
        Command::Revoke { who } => {
            let client = authorized::revoke(path, who)?;
            println!("revoked: {} (in {})", client.line(), path.display());
        }
        // Handled in `run`, which needs the identity and the listen address too.
        Command::Invite { .. } => {}
        Command::Clients => {
            let parsed = authorized::load(path)?;
            for error in &parsed.errors {
                eprintln!("ferry-server: {}: skipping {error}", path.display());
            }
            print!("{}", authorized::table(&parsed.clients));
        }
    }
    Ok(0)
}

/// `--identity[=FILE]`: the node identity, created on first use (`ferry_common::identity`).
fn load_identity(flag: Option<&Path>) -> Result<Option<ferry_protocol::identity::Identity>> {
    use ferry_common::identity;
    let Some(flag) = flag else {
        return Ok(None);
    };
    let path = identity::path_or_default((!flag.as_os_str().is_empty()).then_some(flag))?;
    let (found, origin) = identity::load_or_create(&path)?;
    if origin == identity::IdentityOrigin::Created {
        eprintln!(
            "ferry-server: created a new identity in {} (id {})",
            path.display(),
            found.id()
        );
    }
    Ok(Some(found))
}

fn load_file_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

fn limits(cli: &Cli, file: &FileLimits) -> Result<Limits> {
    let defaults = Limits::default();
    let duration =
        |flag: Option<Duration>, text: &Option<String>, name: &str, default| match (flag, text) {
            (Some(d), _) => Ok(d),
            (None, Some(t)) => parse_duration(t).map_err(|e| anyhow::anyhow!("limits.{name}: {e}")),
            (None, None) => Ok(default),
        };
    let max_body = match (cli.max_frame, &file.max_frame) {
        (Some(n), _) => n,
        (None, Some(t)) => parse_size(t).map_err(|e| anyhow::anyhow!("limits.max_frame: {e}"))?,
        (None, None) => defaults.max_body,
    };
    let limits = Limits {
        max_connections: cli
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.max_connections),
        max_pending: cli
            .max_pending
            .or(file.max_pending)
            .unwrap_or(defaults.max_pending),
        max_pending_per_address: cli
            .max_pending_per_address
            .or(file.max_pending_per_address)
            .unwrap_or(defaults.max_pending_per_address),
        max_in_flight_per_connection: cli
            .max_in_flight
            .or(file.max_in_flight)
            .unwrap_or(defaults.max_in_flight_per_connection),
        handshake_timeout: duration(
            cli.handshake_timeout,
            &file.handshake_timeout,
            "handshake_timeout",
            defaults.handshake_timeout,
        )?,
        idle_timeout: duration(
            cli.idle_timeout,
            &file.idle_timeout,
            "idle_timeout",
            defaults.idle_timeout,
        )?,
        frame_read_timeout: duration(
            cli.frame_timeout,
            &file.frame_timeout,
            "frame_timeout",
            defaults.frame_read_timeout,
        )?,
        write_timeout: duration(
            cli.write_timeout,
            &file.write_timeout,
            "write_timeout",
            defaults.write_timeout,
        )?,
        shutdown_grace: duration(
            cli.shutdown_grace,
            &file.shutdown_grace,
            "shutdown_grace",
            defaults.shutdown_grace,
        )?,
        max_body,
        max_upload_size: cli.max_upload_size.unwrap_or(defaults.max_upload_size),
        upload_quota: cli.upload_quota.unwrap_or(defaults.upload_quota),
        ..defaults
    };
    if limits.max_connections == 0 || limits.max_in_flight_per_connection == 0 {
        bail!("max_connections and max_in_flight must be at least 1");
    }
    Ok(limits)
}

/// --key, --key-file (flag, then config file), FERRY_KEY, then the default key file, created
/// on the first start (`ferry_common::keys`, the order every Ferry command uses).
fn resolve_key(cli: &Cli, file: &FileConfig) -> Result<Key> {
    let sources = KeySources::from_env(
        cli.key.clone(),
        cli.key_file.clone().or_else(|| file.key_file.clone()),
    );
    let (key, origin) = sources.resolve_or_create()?;
    if let KeyOrigin::Created(path) = origin {
        eprintln!(
            "ferry-server: created a new key in {} (fingerprint {})",
            path.display(),
            key.fingerprint()
        );
    }
    Ok(key)
}

/// How the connect line names the client so that it runs as printed: `ferry` when it is on
/// PATH, else the `ferry` built beside this binary (target/release/ after a cargo build), else
/// `ferry` all the same.
fn client_program() -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ferry").is_file()));
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("ferry")))
        .filter(|p| p.is_file());
    match sibling {
        Some(path) if !on_path => {
            let path = path.display().to_string();
            let plain = path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@=".contains(c));
            if plain {
                path
            } else {
                format!("'{}'", path.replace('\'', r"'\''"))
            }
        }
        _ => "ferry".into(),
    }
}

/// The host a client should dial: the bound address, or for a wildcard bind this machine's
/// host name.
fn connect_host(addr: SocketAddr) -> String {
    let port = addr.port();
    if addr.ip().is_unspecified() {
        let name = rustix::system::uname();
        let host = name.nodename().to_string_lossy().into_owned();
        if !host.is_empty() {
            return format!("{host}:{port}");
        }
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        return SocketAddr::new(ip, port).to_string();
    }
    addr.to_string()
}

/// SIGINT and SIGTERM handlers, installed before the connect line is printed so that a
/// signal sent right after it is handled rather than killing the process.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Waits for either; returns the exit code to use afterwards. A second SIGINT during the
    /// drain exits at once.
    async fn wait(mut self) -> i32 {
        let code = tokio::select! {
            _ = self.interrupt.recv() => 130,
            _ = self.terminate.recv() => 0,
        };
        tokio::spawn(async move {
            self.interrupt.recv().await;
            std::process::exit(130);
        });
        code
    }
}

fn init_logging(cli: &Cli, file_format: LogFormat) {
    let level = match (cli.verbose, cli.quiet) {
        (0, 0) => "warn",
        (1, _) => "info",
        (2, _) => "debug",
        (v, _) if v >= 3 => "trace",
        (_, 1) => "error",
        _ => "off",
    };
    let format = match cli.log_format.unwrap_or(file_format) {
        LogFormat::Json => logging::LogFormat::Json,
        LogFormat::Text => logging::LogFormat::Text,
    };
    logging::init(level, format, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("256k"), Ok(256 << 10));
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert!(parse_size("17M").is_err());
        assert!(parse_size("10").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn config_file_merges_under_flags() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = ["[::1]:7000"]
            plaintext = true
            [limits]
            max_connections = 9
            idle_timeout = "2m"
            max_frame = "256K"
            "#,
        )
        .unwrap();
        let cli = Cli::parse_from(["ferry-server", "--max-connections", "3"]);
        let limits = limits(&cli, &file.limits).unwrap();
        assert_eq!(limits.max_connections, 3, "flag wins");
        assert_eq!(limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(limits.max_body, 256 << 10);
        assert!(toml::from_str::<FileConfig>("nonsense = 1").is_err());
    }

    #[test]
    fn listen_accepts_addresses_hosts_and_missing_ports() {
        let one = |s: &str| parse_listen(s).unwrap().0;
        let v4: SocketAddr = "127.0.0.1:6789".parse().unwrap();
        assert_eq!(one("127.0.0.1"), [v4]);
        assert_eq!(one("127.0.0.1:7002"), ["127.0.0.1:7002".parse().unwrap()]);
        assert_eq!(one("[::1]"), ["[::1]:6789".parse().unwrap()]);
        assert_eq!(one("::1"), ["[::1]:6789".parse().unwrap()]);
        assert_eq!(one("[::]:7002"), ["[::]:7002".parse().unwrap()]);
        let localhost = one("localhost:7002");
        assert!(!localhost.is_empty());
        assert!(localhost
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 7002));
        assert!(one("localhost").iter().all(|a| a.port() == DEFAULT_PORT));
        for bad in ["127.0.0.1:99999", "host:port", "", "[::1", "a b:1"] {
            let error = parse_listen(bad).unwrap_err();
            assert!(error.contains("expected IP, IP:PORT"), "{bad:?}: {error}");
        }
    }

    /// `ferry-server ROOT` serves as before; a subcommand name edits the clients instead.
    #[test]
    fn a_root_and_the_subcommands_both_parse() {
        let serve = Cli::try_parse_from(["ferry-server", "/srv/share", "-v"]).unwrap();
        assert_eq!(serve.root, Some(PathBuf::from("/srv/share")));
        assert!(serve.command.is_none());
        let none = Cli::try_parse_from(["ferry-server"]).unwrap();
        assert!(none.root.is_none() && none.command.is_none());
        // --identity alone means the default identity file; with =FILE, that file.
        let default = Cli::try_parse_from(["ferry-server", "/srv", "--identity"]).unwrap();
        assert_eq!(default.identity, Some(PathBuf::new()));
        assert_eq!(default.root, Some(PathBuf::from("/srv")));
        let file = Cli::try_parse_from(["ferry-server", "--identity=/etc/id", "/srv"]).unwrap();
        assert_eq!(file.identity, Some(PathBuf::from("/etc/id")));
        let id = ferry_protocol::identity::Identity::from_secret([1; 32]).id();
        let text = id.to_string();
        let authorize = Cli::try_parse_from([
            "ferry-server",
            "authorize",
            &text,
            "--name",
            "bob",
            "--root",
            "team/bob/",
            "--write",
            "--authorized-clients",
            "/tmp/f",
        ])
        .unwrap();
        assert_eq!(authorize.authorized_clients, Some(PathBuf::from("/tmp/f")));
        match authorize.command {
            Some(Command::Authorize {
                id: got,
                name,
                root,
                write,
            }) => assert_eq!(
                (got, name.as_str(), root.as_deref(), write),
                (id, "bob", Some("team/bob"), true)
            ),
            other => panic!("{other:?}"),
        }
        let bad_id = ["ferry-server", "authorize", "nonsense", "--name", "x"];
        assert!(Cli::try_parse_from(bad_id).is_err());
        let climbs = [
            "ferry-server",
            "authorize",
            &text,
            "--name",
            "x",
            "--root",
            "../up",
        ];
        assert!(Cli::try_parse_from(climbs).is_err());
        assert!(matches!(
            Cli::try_parse_from(["ferry-server", "revoke", "bob"]).unwrap().command,
            Some(Command::Revoke { who }) if who == "bob"
        ));
        assert!(matches!(
            Cli::try_parse_from(["ferry-server", "clients"])
                .unwrap()
                .command,
            Some(Command::Clients)
        ));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
