//! The `ferry` command line (clap derive). Every flag says what it does, its default and an
//! example; `main.rs` parses this and hands it to [`crate::commands::run`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use ferry_common::url::FerryUrl;

/// The exit codes, as every command's `--help` ends.
pub const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    remote error (not found, permission denied, ...) or a local problem (destination exists)
  2    usage error
  3    connection or authentication failure (unknown host, refused, wrong key, connection lost)
  4    integrity failure (hash mismatch, or the file changed under a resume)
  130  interrupted by Ctrl-C (partial downloads are kept and resume on the next get)";

const AFTER_HELP: &str = "\
Addresses look like ferry://[ID@]HOST[:PORT][,HOST[:PORT]...][/PATH] (default port 6789, IPv6
in brackets: ferry://[::1]:7000/docs; ID@ names the server that must answer; several hints are
raced). The key comes from --key, --key-file, the FERRY_KEY environment
variable, or the default key file (~/.config/ferry/key on Linux), in that order.

Try it locally in one command:  ferry demo
";

/// Browse and fetch files from a Ferry server.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_help = format!("{AFTER_HELP}\n{EXIT_CODES}"))]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, anywhere on the line.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The pre-shared key, hex or base64, as printed in the server's connect line. Write it as
    /// --key=KEY: a base64 key may start with `-` (the separate form --key KEY is accepted too).
    /// Default: not set (falls back to --key-file, FERRY_KEY, then the default key file).
    /// E.g. --key=3q2-7w...
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        allow_hyphen_values = true,
        help_heading = "Global options"
    )]
    pub key: Option<String>,

    /// Read the key from this file (hex or base64 text, mode 0600). Default: not set; the
    /// default key file ~/.config/ferry/key is used last. E.g. --key-file ~/ferry.key
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub key_file: Option<PathBuf>,

    /// Ask for a plaintext session: the handshake is still authenticated, but file data travels
    /// unencrypted (faster; the server must allow it). Default: off (encrypted).
    #[arg(long, global = true, help_heading = "Global options")]
    pub plaintext: bool,

    /// Record suites to offer: gcm (default: AES-256-GCM, then AES-256-CBC + HMAC-SHA256) or
    /// cbc-hmac (the old suite only; speaks protocol version 1, for servers from before
    /// version 2). E.g. --suite cbc-hmac
    #[arg(
        long,
        global = true,
        value_name = "SUITE",
        default_value = "gcm",
        hide_default_value = true,
        value_parser = ["gcm", "cbc-hmac"],
        help_heading = "Global options"
    )]
    pub suite: String,

    /// Do not draw progress bars. Default: bars are drawn when stderr is a terminal.
    #[arg(long, global = true, help_heading = "Global options")]
    pub no_progress: bool,

    /// More log output on stderr: -v info, -vv debug, -vvv trace. Default: warnings only
    /// (RUST_LOG overrides). E.g. -vv
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,

    /// Print only results and errors: no summaries, no bars. Default: off.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,

    /// This node's identity file (an X25519 secret, mode 0600), used by `ferry id` and to prove
    /// who we are to a server named by ferry://ID@HOST/. Default: ~/.config/ferry/identity,
    /// created on first use. E.g. --identity ~/work.identity
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub identity: Option<PathBuf>,

    /// Give up connecting (TCP connect plus handshake) after this long. E.g. --connect-timeout 3s
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, help_heading = "Global options")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List a directory: names, or details with -l, recursively with -R, JSON with --json.
    #[command(
        after_help = format!("Examples:\n  ferry ls ferry://files.example.org/\n  ferry ls -l ferry://127.0.0.1:7000/docs\n  ferry ls -R --json ferry://host/photos > photos.json\n\n{EXIT_CODES}")
    )]
    Ls(LsArgs),
    /// Show one entry's metadata (kind, size, permissions, modification time).
    #[command(
        after_help = format!("Examples:\n  ferry stat ferry://host/docs/report.pdf\n  ferry stat --json ferry://host/docs\n\n{EXIT_CODES}")
    )]
    Stat(StatArgs),
    /// Measure round-trip times to a server.
    #[command(
        after_help = format!("Examples:\n  ferry ping ferry://host\n  ferry ping -c 10 -i 200ms -s 1400 ferry://[::1]:7000\n\n{EXIT_CODES}")
    )]
    Ping(PingArgs),
    /// Download a file, or a directory tree with -r; resumes interrupted downloads.
    #[command(
        after_help = format!("Examples:\n  ferry get ferry://host/docs/report.pdf              (to ./report.pdf)\n  ferry get ferry://host/iso/big.iso ~/Downloads/     (into a directory)\n  ferry get -o ~/Downloads/ ferry://host/iso/big.iso  (the same)\n  ferry get -r -j 8 ferry://host/photos pics          (a tree into ./pics)\n  ferry get ferry://host/a ferry://host/b ~/Downloads/ (several, into a directory)\n  ferry get ferry://host/notes.txt -                  (to stdout)\nAn interrupted download leaves .NAME.ferry-part and .NAME.ferry-part.meta beside NAME; run\nthe same command again to resume (the whole file is then checked against the server's digest).\nThe executable bit of the remote file is kept; other permissions follow your umask.\n\n{EXIT_CODES}")
    )]
    Get(GetArgs),
    /// Upload files, or directory trees with -r, to a server started with --allow-upload.
    #[command(
        after_help = format!("Examples:\n  ferry put report.pdf ferry://host/docs/          (to docs/report.pdf)\n  ferry put report.pdf ferry://host/docs/final.pdf (under another name)\n  ferry put a.iso b.iso ferry://host/iso/          (several, into a directory)\n  ferry put -r photos ferry://host/backup/         (a tree into backup/photos)\n  ferry put -f report.pdf ferry://host/docs/       (replace an existing file)\nA file appears on the server only once it is complete and its BLAKE3 digest matches; an\ninterrupted upload resumes when the same command runs again (the server's part is checked\nagainst the local file first). Nothing is overwritten without -f.\n\n{EXIT_CODES}")
    )]
    Put(PutArgs),
    /// Open an interactive shell (ls, cd, get, mget, ...) on a server, or run a batch file.
    #[command(
        after_help = format!("Examples:\n  ferry shell --key=KEY ferry://host/\n  ferry shell ferry://host/docs -b commands.txt\n  echo 'mget *.pdf' | ferry shell ferry://host/docs\nInside, type help for the commands; Tab completes commands and remote paths. In batch mode\nthe exit code is the first failing command's.\n\n{EXIT_CODES}")
    )]
    Shell(ShellArgs),
    /// Serve a local directory on 127.0.0.1 with a fresh key and open the shell on it.
    #[command(
        after_help = format!("Examples:\n  ferry demo            (serve the current directory and browse it)\n  ferry demo ~/Music\nDownloads go to a new directory under the system's temporary directory (TMPDIR, else /tmp),\nnamed in the banner and kept after the demo ends; lcd changes it.\n\n{EXIT_CODES}")
    )]
    Demo(DemoArgs),
    /// Print this machine's node id (creating the identity on first use), or rotate it with --new.
    #[command(
        after_help = format!("Examples:\n  ferry id           (prints e.g. k3v5...: give it to servers that should know you)\n  ferry id --new     (a new identity; the old file is kept as identity.old-DATE)\nThe identity is an X25519 key pair in ~/.config/ferry/identity (owner-only), shared by\nferry, ferry-server and ferry-peer; the id is the hash of its public key.\n\n{EXIT_CODES}")
    )]
    Id(IdArgs),
    /// Remove servers from the known-servers file, so the next contact trusts whatever id answers.
    #[command(
        after_help = format!("Examples:\n  ferry forget files.example.org          (port 6789)\n  ferry forget 10.0.0.5:7000 '[::1]:7000'\nAn address without ID@ reached with the identity handshake (--identity FILE, or a server\nalready pinned) is pinned on first contact in ~/.config/ferry/known_servers (HOST:PORT ID per\nline); a different id there later is refused with exit 3 until you run ferry forget.\n\n{EXIT_CODES}")
    )]
    Forget(ForgetArgs),
    /// Bind a name at a hub to this machine's id, or release or move it (spec/HUB.md).
    #[command(
        after_help = format!("Examples:\n  ferry register alice@hub.example.org:6790\n  ferry register alice@ferry://HUBID@hub.example.org:6790/ --invite CODE\n  ferry register alice@hub.example.org:6790 --release\nA name is 1 to 32 of a-z, 0-9 and '-', starting with a letter. It is bound to this machine's\nid (ferry id); only a request from that id releases or moves it. A hub named without its id is\npinned on first contact in ~/.config/ferry/known_servers. Then serve with\nferry-server ROOT --hub alice@HUB, and clients reach it as ferry://alice@HUB/PATH.\n\n{EXIT_CODES}")
    )]
    Register(RegisterArgs),
    /// Enrol this machine on a server with a one-time code from `ferry-server invite`.
    #[command(
        after_help = format!("Examples:\n  ferry join 7-crossover-clockwork ferry://ID@files.lan:6789/\nThe code proves, with SPAKE2, that this machine is the one the server's owner invited, and\nthat the server is the one that issued it: the server adds this machine's id (ferry id) to\nits authorised clients, and this machine pins the server's id in\n~/.config/ferry/known_servers, so later commands need no key: ferry ls ferry://files.lan/.\nA code works once: a wrong one is used up too; ask for a new one.\n\n{EXIT_CODES}")
    )]
    Join(JoinArgs),
    /// Offer files to someone waiting with `ferry receive`, by name at a hub or by address.
    #[command(
        after_help = format!("Examples:\n  ferry send report.pdf alice@hub.example.org:6790\n  ferry send -r photos notes.txt alice@hub.example.org:6790\n  ferry send big.iso ferry://ID@10.0.0.5:7000/\nThe receiver sees the names, sizes and digests first and takes the files it wants: at once\nwhen it has authorised this machine's id (ferry id), after asking otherwise. They then go\nas ferry put does: verified end to end, and a send that was interrupted resumes when it runs\nagain. Behind any NAT, through the hub's relay when no direct path works; the receiver's\nid is required on every path, so the hub cannot hand the files to anyone else.\n\n{EXIT_CODES}")
    )]
    Send(SendArgs),
    /// Wait for `ferry send`, at a hub under a registered name and on a local port.
    #[command(
        after_help = format!("Examples:\n  ferry receive alice@hub.example.org:6790              (into the current directory)\n  ferry receive alice@hub.example.org:6790 --from bob@hub.example.org:6790 -o ~/in\n  ferry receive --listen 0.0.0.0:7000                   (direct senders only)\n  ferry receive alice@hub.example.org:6790 --relay-only (through the hub only)\nOffers from ids in ~/.config/ferry/authorized_clients (ferry-server authorize) or from\n--from are taken at once; any other offer is shown with a y/N question, and declined without\none when stdin is not a terminal. Nothing is overwritten; an interrupted send resumes when it\nis sent again. Ends after the first offer taken has arrived whole.\n\n{EXIT_CODES}")
    )]
    Receive(ReceiveArgs),
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The local files (directories with -r), then who receives them: NAME@HUB (the hub as
    /// host[:port] or ferry://HUBID@host:port/) or ferry://ID@HOST:PORT/. E.g. a.pdf alice@hub.lan
    #[arg(value_name = "FILE... RECEIVER", num_args = 2.., required = true)]
    pub args: Vec<String>,
    /// Send directory trees (empty directories too). Default: off.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Files in flight at once (1 to 4, the receiver's limit per connection). E.g. -j 2
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=4))]
    pub jobs: u16,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Wait at this hub under this name (registered first with ferry register NAME@HUB).
    /// Default: no hub; only senders that can dial --listen reach this machine.
    /// E.g. alice@hub.example.org:6790
    #[arg(value_name = "NAME@HUB", value_parser = crate::commands::register::parse_target)]
    pub at: Option<FerryUrl>,
    /// Take offers only from this sender, without asking: NAME@HUB (resolved at the hub) or a
    /// node id. Default: any sender (authorised ones at once, others after asking).
    /// E.g. --from bob@hub.example.org:6790
    #[arg(long, value_name = "SENDER")]
    pub from: Option<String>,
    /// The directory the files go into (created if missing). E.g. -o ~/incoming
    #[arg(short = 'o', long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Listen for direct senders here (repeatable); an address that names a host is also
    /// reported to the hub (the default is any free port). E.g. --listen 192.168.1.5:7000
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Take senders only through the hub's relay: listen on no port and answer no hole punch,
    /// so a sender never learns this machine's address. Default: off (direct, punched or
    /// relayed, whichever works first).
    #[arg(long, requires = "at")]
    pub relay_only: bool,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The code `ferry-server invite` printed, e.g. 7-crossover-clockwork.
    #[arg(value_name = "CODE")]
    pub code: String,
    /// The server, ideally with its id as the invite printed it: ferry://ID@HOST[:PORT]/.
    #[arg(value_name = "ADDRESS")]
    pub url: FerryUrl,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// NAME@HUB: the name, then the hub as host[:port] or ferry://HUBID@host:port/.
    #[arg(value_name = "NAME@HUB", value_parser = crate::commands::register::parse_target)]
    pub target: FerryUrl,
    /// The invite code of an --invite-only hub (from ferry-hub invite).
    #[arg(long, value_name = "CODE")]
    pub invite: Option<String>,
    /// Release the name (only its holder may).
    #[arg(long, conflicts_with_all = ["invite", "move_to"])]
    pub release: bool,
    /// Move the name to another node id (only its holder may).
    #[arg(long, value_name = "ID", conflicts_with = "invite")]
    pub move_to: Option<ferry_protocol::identity::NodeId>,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The servers to forget, as HOST[:PORT] (default port 6789) or a ferry:// address (each
    /// of its hints). E.g. files.example.org:7000
    #[arg(value_name = "HOST[:PORT]", required = true)]
    pub servers: Vec<FerryUrl>,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Replace the identity with a new one; the old file stays beside it as
    /// identity.old-YYYY-MM-DD until you remove it. Default: off (print the current id).
    #[arg(long)]
    pub new: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// What to list. E.g. ferry://files.example.org/docs
    pub url: FerryUrl,
    /// Long format like `ls -l`: kind and permissions, size, modification time, name.
    /// Default: names only.
    #[arg(short = 'l', long)]
    pub long: bool,
    /// Recurse into subdirectories (names are relative to URL). Default: off.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// With -R, descend at most this many levels below URL. Default: no limit. E.g. --depth 2
    #[arg(long, value_name = "N")]
    pub depth: Option<u16>,
    /// One JSON array of entries on stdout, for scripts. Default: text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    /// The entry to describe. E.g. ferry://127.0.0.1:6789/docs/a.txt
    pub url: FerryUrl,
    /// Print one JSON object instead of text. Default: text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// The server. E.g. ferry://127.0.0.1
    pub url: FerryUrl,
    /// Stop after this many pings. E.g. -c 10
    #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Wait this long between pings. E.g. -i 200ms
    #[arg(short = 'i', long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Payload bytes per ping. E.g. -s 1400
    #[arg(short = 's', long, default_value_t = 56)]
    pub size: usize,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The file (or, with -r, directory) to download. E.g. ferry://host/docs/report.pdf
    pub url: FerryUrl,
    /// Where to write. Default: the remote name in the current directory. An existing
    /// directory, or a path ending in /, receives the file under its remote name. With -r,
    /// the directory that receives the tree's contents (default: the remote directory's
    /// name). E.g. ~/Downloads/
    #[arg(conflicts_with = "out")]
    pub dest: Option<PathBuf>,
    /// More URLs, as scp and wget take them: with several, the last argument is the
    /// destination directory unless it is a ferry:// URL (then the current directory, or
    /// -o). Each file (or tree with -r) lands under its remote name.
    /// E.g. ferry get ferry://h/a.iso ferry://h/b.iso ~/Downloads/
    #[arg(value_name = "MORE")]
    pub more: Vec<String>,
    /// The destination, as a flag (like ferry-peer get --out): the same as DEST. E.g. -o pics
    #[arg(short = 'o', long, value_name = "DEST")]
    pub out: Option<PathBuf>,
    /// Download a whole directory tree. Default: off (a single file).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Continue from .NAME.ferry-part if it exists, after checking that the remote file is unchanged
    /// (size and mtime). This is already the default; the flag is for scripts that want to say
    /// it. See also --no-resume.
    #[arg(long, conflicts_with = "no_resume")]
    pub resume: bool,
    /// Ignore an existing .NAME.ferry-part and download from the start. Default: off.
    #[arg(long)]
    pub no_resume: bool,
    /// Files in flight at once with -r (1 to 32; a server answers at most 32 requests at a time
    /// per connection). E.g. -j 8
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub jobs: u16,
    /// Overwrite an existing destination, and start over when a partial file cannot be resumed.
    /// Default: off (refuse).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// End a transfer that moves fewer than BYTES in DURATION (exit 3; the partial file is
    /// kept and resumes). No usable link trips the default (it is 68 bytes/s) but a server
    /// dripping bytes does; 0 or off disables it. E.g. --min-progress 64K/30s
    #[arg(
        long,
        env = "FERRY_MIN_PROGRESS",
        value_name = "BYTES/DURATION",
        default_value = "4K/60s",
        hide_env_values = true
    )]
    pub min_progress: ferry_client::transfer::MinProgress,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The local files (or, with -r, directories) and last the destination URL: a remote
    /// directory (existing, the root, or ending in /) receives them under their local names;
    /// otherwise the one file is stored under that name. E.g. a.txt b.txt ferry://host/in/
    #[arg(value_name = "LOCAL... URL", num_args = 2.., required = true)]
    pub args: Vec<String>,
    /// Upload directory trees (missing remote directories are created). Default: off.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Replace existing remote files. Default: off (refused with ALREADY_EXISTS, exit 1).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Discard a partial upload the server holds and send from the start. Default: off (an
    /// interrupted upload resumes after its part is checked).
    #[arg(long)]
    pub no_resume: bool,
    /// Files in flight at once with -r (1 to 32; a server answers at most 32 requests at a time
    /// per connection). E.g. -j 8
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub jobs: u16,
}

impl PutArgs {
    /// The local paths and the destination URL (the last argument).
    pub fn targets(&self) -> Result<(Vec<PathBuf>, FerryUrl), String> {
        let (last, locals) = self
            .args
            .split_last()
            .ok_or("put needs LOCAL... and a ferry:// URL")?;
        if locals.is_empty() {
            return Err("put needs at least one local file before the URL".into());
        }
        let url: FerryUrl = last.parse().map_err(|e| {
            format!("the last argument must be the ferry:// URL to upload to: {last}: {e}")
        })?;
        Ok((locals.iter().map(PathBuf::from).collect(), url))
    }
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The server, and optionally the directory to start in. E.g. ferry://host/docs
    pub url: FerryUrl,
    /// Run the commands in FILE (one per line) instead of reading the terminal, like `sftp -b`:
    /// stop at the first failing command unless its line starts with `-`. Default: interactive
    /// when stdin is a terminal, batch from stdin otherwise. E.g. -b fetch.txt
    #[arg(short = 'b', long, value_name = "FILE")]
    pub batch: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The directory to serve (read-only). Default: the current directory. E.g. ~/Music
    pub dir: Option<PathBuf>,
    /// Run shell commands from FILE instead of the interactive shell (as `shell -b`).
    /// Default: interactive.
    #[arg(short = 'b', long, value_name = "FILE")]
    pub batch: Option<PathBuf>,
}

impl GetArgs {
    /// Every URL to fetch and the destination: `URL [DEST]`, or `URL URL... [DEST]` where a
    /// last argument that is not a `ferry://` URL is the destination.
    pub fn targets(&self) -> Result<(Vec<FerryUrl>, Option<PathBuf>), String> {
        let mut rest: Vec<String> = self
            .dest
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .chain(self.more.iter().cloned())
            .collect();
        if rest.len() <= 1 && !rest.iter().any(|r| r.starts_with("ferry://")) {
            return Ok((vec![self.url.clone()], self.dest()));
        }
        let dest = match rest.last() {
            Some(last) if !last.starts_with("ferry://") => {
                if self.out.is_some() {
                    return Err(format!(
                        "two destinations: {last} and -o {}; give one",
                        self.out
                            .as_deref()
                            .unwrap_or(std::path::Path::new(""))
                            .display()
                    ));
                }
                rest.pop().map(PathBuf::from)
            }
            _ => self.out.clone(),
        };
        let mut urls = vec![self.url.clone()];
        for text in rest {
            urls.push(text.parse().map_err(|e| format!("{text}: {e}"))?);
        }
        Ok((urls, dest))
    }

    /// The destination, given positionally or with `-o/--out`.
    pub fn dest(&self) -> Option<PathBuf> {
        self.dest.clone().or_else(|| self.out.clone())
    }
}

/// Parses `10s`, `1.5s`, `200ms`, `1m` (humantime) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    if let Some(secs) = s.strip_suffix('s').and_then(|n| n.parse::<f64>().ok()) {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 10s, 250ms, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from(["ferry", "ls", "ferry://h/x", "--key", "k", "-l"]).unwrap();
        assert_eq!(cli.global.key.as_deref(), Some("k"));
        let cli =
            Cli::try_parse_from(["ferry", "--key", "k", "get", "h/x", "-r", "-j", "2"]).unwrap();
        let Command::Get(get) = cli.command else {
            panic!("expected get")
        };
        assert_eq!((get.recursive, get.jobs), (true, 2));
        assert_eq!(get.url.path, "x");
    }

    /// Every command's help ends with the exit codes, and no flag states its default twice (its
    /// doc and clap's `[default: ...]`).
    #[test]
    fn help_lists_exit_codes_and_each_default_once() {
        let mut cli = Cli::command();
        cli.build();
        let mut commands = vec![cli.clone()];
        // clap's own `help` subcommand only prints other commands' help.
        commands.extend(
            cli.get_subcommands()
                .filter(|c| c.get_name() != "help")
                .cloned(),
        );
        for mut cmd in commands {
            let name = cmd.get_name().to_string();
            let help = cmd.render_long_help().to_string();
            assert!(help.contains("Exit codes:"), "{name} --help:\n{help}");
            assert!(help.contains("130"), "{name} --help:\n{help}");
            for arg in cmd.get_arguments() {
                let doc = arg
                    .get_long_help()
                    .or(arg.get_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                // clap prints `[default: ...]` for options that take a value.
                let shown = arg.get_action().takes_values()
                    && !arg.get_default_values().is_empty()
                    && !arg.is_hide_default_value_set();
                if shown {
                    assert!(
                        !doc.contains("Default:"),
                        "{name} --{}: default said twice: {doc}",
                        arg.get_id()
                    );
                }
            }
        }
    }

    #[test]
    fn get_takes_its_destination_either_way() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(args)?;
            let Command::Get(get) = cli.command else {
                panic!("expected get")
            };
            Ok::<_, clap::Error>(get.dest())
        };
        assert_eq!(
            parse(&["ferry", "get", "h/x", "d"]).unwrap(),
            Some(PathBuf::from("d"))
        );
        assert_eq!(
            parse(&["ferry", "get", "-o", "d", "h/x"]).unwrap(),
            Some(PathBuf::from("d"))
        );
        assert_eq!(
            parse(&["ferry", "get", "h/x", "--out", "d"]).unwrap(),
            Some(PathBuf::from("d"))
        );
        assert_eq!(parse(&["ferry", "get", "h/x"]).unwrap(), None);
        assert!(parse(&["ferry", "get", "h/x", "d", "-o", "e"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
    }
}

/// The connect line a server prints (`ferry_common::keys::connect_line`) must parse with this
/// command line for every key: a base64 key may start with `-` (issue 9).
#[cfg(test)]
mod connect_line_tests {
    use ferry_common::keys::connect_line;
    use ferry_protocol::Key;

    /// The base64 alphabet of [`Key::to_base64`], in index order.
    const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// A key whose base64 text starts with `BASE64[first]`: the first character is the top six
    /// bits of the first byte.
    fn key_starting_with(first: u8, rest: [u8; 32]) -> Key {
        let mut bytes = rest;
        bytes[0] = (first << 2) | (rest[0] & 0b11);
        Key::from_bytes(bytes)
    }

    /// Parses a printed connect line with the real `ferry` command line and returns its key.
    fn key_from_line(line: &str) -> Key {
        use clap::Parser;
        let words = crate::shell::parse::split(line).unwrap().words;
        let cli = crate::cli::Cli::try_parse_from(&words)
            .unwrap_or_else(|e| panic!("{line:?} does not parse: {e}"));
        assert!(
            matches!(cli.command, crate::cli::Command::Shell(_)),
            "{line}"
        );
        cli.global.key.unwrap().parse().unwrap()
    }

    #[test]
    fn every_first_character_round_trips_through_the_connect_line() {
        let url = "ferry://127.0.0.1:6789/";
        for (first, c) in BASE64.iter().enumerate() {
            let key = key_starting_with(first as u8, [0x5a; 32]);
            assert!(key.to_base64().starts_with(*c as char));
            let line = connect_line("ferry", &key, &url);
            assert_eq!(key_from_line(&line), key, "{line}");
        }
    }

    #[test]
    fn a_program_path_with_spaces_stays_one_word() {
        let key = key_starting_with(62, [7; 32]);
        let line = connect_line("/tmp/my builds/ferry's/ferry", &key, &"ferry://h/");
        let words = crate::shell::parse::split(&line).unwrap().words;
        assert_eq!(words[0], "/tmp/my builds/ferry's/ferry");
        assert_eq!(key_from_line(&line), key);
    }

    /// Lines printed before the fix put the key in its own word; they must keep working.
    #[test]
    fn old_connect_lines_with_a_leading_dash_still_parse() {
        let key = key_starting_with(62, [1; 32]);
        assert!(key.to_base64().starts_with('-'));
        let line = format!(
            "ferry shell --key {} ferry://127.0.0.1:6789/",
            key.to_base64()
        );
        assert_eq!(key_from_line(&line), key);
        let line = format!("ferry --key {} ls ferry://h/", key.to_base64());
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(line.split(' ')).unwrap();
        assert_eq!(cli.global.key.unwrap().parse::<Key>().unwrap(), key);
    }

    proptest::proptest! {
        // Each case parses 64 lines with clap; 32 cases are 2,048 lines.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Random keys and ports, each case with every possible first character, so the cases
        /// proptest happens to draw cannot miss the one that matters.
        #[test]
        fn connect_lines_round_trip(rest in proptest::prelude::any::<[u8; 32]>(), port in 1u16..) {
            let url = format!("ferry://127.0.0.1:{port}/");
            for first in 0..64 {
                let key = key_starting_with(first, rest);
                let line = connect_line("ferry", &key, &url);
                proptest::prop_assert_eq!(key_from_line(&line), key);
            }
        }
    }
}
