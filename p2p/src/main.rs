//! `ferry-peer`: make manifests, seed, download and run a tracker. CLI parsing only; the work is
//! in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use ferry_p2p::manifest::{MAX_PIECE_SIZE, MIN_PIECE_SIZE};
use ferry_p2p::pieces::make_manifest;

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
