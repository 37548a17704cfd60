//! `ferry-load`: load-test the Ferry codec and a live server. CLI only; the work is in
//! `ferry_bench::load`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_bench::load::client::Dial;
use ferry_bench::load::workload::{Mix, Targets};
use ferry_bench::load::{codec, hostile, plot, server};
use ferry_common::FerryUrl;
use ferry_common::KeySources;

/// Load-test the Ferry codec in memory, or a live ferry-server.
#[derive(Debug, Parser)]
#[command(
    name = "ferry-load",
    version,
    after_help = "Exit codes: 0 the run completed; 1 it could not start or connect, an answer \
                  failed an integrity check (record authentication, data length or end-to-end \
                  digest), or (hostile) a violation was seen or the server died; 2 usage."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Encode+decode (and encrypt+decrypt) frames in memory; prints frames/s and GB/s.
    Codec(CodecArgs),
    /// Drive a live server with many connections and print throughput and latency.
    Server(ServerArgs),
    /// Attack a live server beside an honest client; report rejections and latency impact.
    Hostile(HostileArgs),
}

#[derive(Debug, Args)]
struct Output {
    /// Print the result as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw throughput over time and the latency distribution to this SVG file,
    /// e.g. load.svg.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CodecArgs {
    /// Worker threads, each with its own sessions [default: number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Body sizes, comma-separated, with K/M suffixes (powers of 1024), e.g. 64,4K,64K.
    #[arg(long, default_value = "64,4K,64K", value_parser = parse_sizes)]
    body: Sizes,
    /// Only plaintext framing (by default both plaintext and encrypted run).
    #[arg(long)]
    plaintext: bool,
    /// How long each (size, mode) pair runs, e.g. 3s, 500ms.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone)]
struct Sizes(Vec<usize>);

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    s.split(',')
        .map(|part| {
            let part = part.trim();
            let (digits, mult) = match part.chars().last() {
                Some('K' | 'k') => (&part[..part.len() - 1], 1024),
                Some('M' | 'm') => (&part[..part.len() - 1], 1024 * 1024),
                _ => (part, 1),
            };
            let n: usize = digits
                .parse()
                .map_err(|_| format!("{part:?} is not a size like 64, 4K or 1M"))?;
            Ok(n * mult)
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Sizes)
}

#[derive(Debug, Args)]
struct Connect {
    /// The server, e.g. ferry://127.0.0.1:6789/ (the path is the directory to list).
    url: FerryUrl,
    /// Key as hex or base64 (from the server's connect line); see also --key-file, FERRY_KEY.
    #[arg(long)]
    key: Option<String>,
    /// File holding the key [default: the FERRY_KEY variable, then the default key file].
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Ask for a plaintext session (the server must allow it).
    #[arg(long)]
    plaintext: bool,
    /// Threads of the load generator, each with its own runtime and share of the connections
    /// [default: number of cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
struct ServerArgs {
    #[command(flatten)]
    connect: Connect,
    /// Connections, e.g. 64.
    #[arg(short = 'c', long, default_value_t = 16)]
    connections: usize,
    /// Requests each connection keeps in flight.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Request mix as NAME=WEIGHT, e.g. list=1,stat=1,fetch-small=8,fetch-large=0,echo=1.
    #[arg(long, default_value_t = Mix::default())]
    mix: Mix,
    /// Run for this long, e.g. 10s [default: 10s unless --requests is given].
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Stop after this many requests in total, e.g. 100000.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: this many requests per second in total, latency measured from each
    /// request's intended send time, e.g. 5000. Without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// File fetched by fetch-small [default: the smallest non-empty file found].
    #[arg(long)]
    small: Option<String>,
    /// File fetched by fetch-large [default: the largest file found].
    #[arg(long)]
    large: Option<String>,
    /// Path for stat [default: the small file].
    #[arg(long)]
    stat: Option<String>,
    /// Accepted for old scripts: every fetch is now always checked against its digest.
    #[arg(long, hide = true)]
    verify: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Args)]
struct HostileArgs {
    #[command(flatten)]
    connect: Connect,
    /// Attacker connections, e.g. 32.
    #[arg(short = 'c', long, default_value_t = 16)]
    connections: usize,
    /// Total run time; the first third is a baseline without attackers, e.g. 30s.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    output: Output,
}

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn dial_for(connect: &Connect) -> Result<Dial> {
    let key = KeySources::from_env(connect.key.clone(), connect.key_file.clone())
        .resolve()
        .context("finding the key")?;
    let addr: SocketAddr = tokio::net::lookup_host(connect.url.authority())
        .await
        .with_context(|| format!("resolving {}", connect.url.authority()))?
        .next()
        .with_context(|| format!("{} has no address", connect.url.host))?;
    Ok(Dial {
        addr,
        key,
        plaintext: connect.plaintext,
        timeout: Duration::from_secs(10),
    })
}

fn main() -> Result<()> {
    ferry_common::logging::init("warn", ferry_common::logging::LogFormat::Text, true);
    match Cli::parse().mode {
        Mode::Codec(args) => {
            let threads = args
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let rows = codec::run(&codec::CodecOptions {
                threads,
                bodies: args.body.0,
                encrypted: !args.plaintext,
                plaintext: true,
                duration: args.duration,
            })
            .map_err(anyhow::Error::msg)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                codec::print(&rows);
            }
        }
        Mode::Server(args) => {
            // The load runs on threads of its own (`server::run`); this runtime only discovers
            // the targets and waits.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let _ = args.verify;
            let failed = rt.block_on(async {
                let dial = dial_for(&args.connect).await?;
                let targets = server::discover(
                    &dial,
                    Targets {
                        list_dir: args.connect.url.path.clone(),
                        stat: args.stat.clone().unwrap_or_default(),
                        small_file: args.small.clone().unwrap_or_default(),
                        large_file: args.large.clone().unwrap_or_default(),
                    },
                )
                .await
                .map_err(anyhow::Error::msg)
                .context("looking for files to request")?;
                if !args.output.json {
                    eprintln!(
                        "targets: list {:?}, stat {:?}, fetch-small {:?}, fetch-large {:?}",
                        targets.list_dir, targets.stat, targets.small_file, targets.large_file
                    );
                }
                let stop = match (args.requests, args.duration) {
                    (Some(n), _) => server::Stop::Requests(n),
                    (None, d) => server::Stop::After(d.unwrap_or(Duration::from_secs(10))),
                };
                if args.connections == 0 || args.in_flight == 0 {
                    bail!("--connections and --in-flight must be at least 1");
                }
                let summary = server::run(server::ServerOptions {
                    dial,
                    connections: args.connections,
                    in_flight: args.in_flight,
                    mix: args.mix.clone(),
                    stop,
                    rate: args.rate,
                    targets,
                    threads: args.connect.threads.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    }),
                    live: !args.output.json,
                })
                .await;
                if args.output.json {
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                } else {
                    summary.print(&format!(
                        "ferry-load server: {} connections × {} in flight, mix {}",
                        args.connections, args.in_flight, args.mix
                    ));
                }
                if let Some(path) = &args.output.plot {
                    plot::write_svg(path, "ferry-load server", &summary)
                        .map_err(anyhow::Error::msg)?;
                    eprintln!("ferry-load: wrote the plot to {}", path.display());
                }
                let (failed, kinds) = server::integrity_failures(&summary);
                anyhow::Ok((failed > 0).then(|| {
                    format!(
                        "{failed} of {} requests failed an integrity check: {}",
                        summary.requests,
                        kinds.join("; ")
                    )
                }))
            })?;
            if let Some(failed) = failed {
                eprintln!("ferry-load: {failed}");
                std::process::exit(1);
            }
        }
        Mode::Hostile(args) => {
            let rt = runtime(args.connect.threads)?;
            let report = rt.block_on(async {
                let dial = dial_for(&args.connect).await?;
                let targets = server::discover(
                    &dial,
                    Targets {
                        list_dir: args.connect.url.path.clone(),
                        ..Targets::default()
                    },
                )
                .await
                .map_err(anyhow::Error::msg)?;
                anyhow::Ok(
                    hostile::run(hostile::HostileOptions {
                        dial,
                        attackers: args.connections,
                        duration: args.duration,
                        targets,
                        live: !args.output.json,
                    })
                    .await,
                )
            })?;
            if args.output.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print();
            }
            if let Some(path) = &args.output.plot {
                plot::write_svg(
                    path,
                    "ferry-load hostile: honest client under attack",
                    &report.under_attack,
                )
                .map_err(anyhow::Error::msg)?;
                eprintln!("ferry-load: wrote the plot to {}", path.display());
            }
            if !report.violations.is_empty() || !report.server_alive_after {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
