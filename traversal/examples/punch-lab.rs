//! The NAT lab's punching rig (issue 12): a tiny rendezvous, a punching peer, and the driver that
//! runs the NAT matrix in `../shared/netlab` (benches/nat/run.sh, traversal/tests/lab.rs).
//!
//! ```text
//! punch-lab rendezvous --listen 198.51.100.130:3478          # in `pub`
//! punch-lab peer --server 198.51.100.130:3478 --room 1-tcp --name peer1 --transport tcp --role dial
//! punch-lab pair fullcone symmetric --attempts 5             # up-nat, attempts, down (needs root)
//! punch-lab matrix --attempts 5                              # every ordered pair, each under the lab lock
//! ```
//!
//! Rendezvous, for one attempt (a room): each peer connects over TCP from a reusable port and
//! sends `REG room name\n`, and sends `\0REG room name` datagrams from its QUIC endpoint's
//! socket every 100 ms. Once both peers of a room are known by both, each gets
//! `GO peer-tcp-address peer-udp-address start-in-ms\n` (the addresses as observed). Both then
//! punch from the same ports at the same moment (spec §14.3, §14.4), the dialer sends one byte
//! and the listener answers one byte (time to first byte, counted from the punch start), and
//! the dialer runs a Ferry PSK handshake and a ping over the stream.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_protocol::{ClientHandshakeConfig, Key, Message, RequestId, ServerHandshakeConfig};
use ferry_traversal::{tcp, QuicEndpoint, Role};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Mutex;
use tokio::time::Instant;

const KINDS: [&str; 4] = ["fullcone", "restricted", "portrestricted", "symmetric"];
const RENDEZVOUS: &str = "198.51.100.130:3478";
/// Each punch gives up this long after its start in `pair`: 1 s plus 3 RTT is the issue's
/// target for the time to first byte, so 3 s leaves room at any lab delay.
const PAIR_DEADLINE_MS: &str = "3000";
/// When both peers are to start, after the GO: the hub's job in Ferry proper (from RTTs).
const START_IN: Duration = Duration::from_millis(100);

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pairs peers by room (TCP and UDP on one port) and tells each the other's observed address.
    Rendezvous {
        #[arg(long, default_value = RENDEZVOUS)]
        listen: SocketAddr,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 900)]
        lifetime: u64,
    },
    /// One side of one punch; prints one JSON line; exit 0 punched, 3 not.
    Peer {
        #[arg(long, default_value = RENDEZVOUS)]
        server: SocketAddr,
        #[arg(long)]
        room: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        transport: Transport,
        #[arg(long, value_enum)]
        role: PeerRole,
        /// Give up this long after the punch starts, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        deadline_ms: u64,
    },
    /// One ordered pair of NAT kinds: up-nat, ATTEMPTS punches per transport, down. Root.
    Pair {
        kind1: String,
        kind2: String,
        #[arg(long, default_value_t = 5)]
        attempts: u32,
        #[arg(long, env = "NETLAB", default_value = "../shared/netlab/netlab")]
        netlab: PathBuf,
        /// One-way delay across the lab's switch (netlab --delay), e.g. 20ms: RTT 40 ms.
        #[arg(long)]
        delay: Option<String>,
    },
    /// Every ordered pair, each pair under `flock /tmp/netlab.lock`; prints the table. Root.
    Matrix {
        #[arg(long, default_value_t = 5)]
        attempts: u32,
        #[arg(long, env = "NETLAB", default_value = "../shared/netlab/netlab")]
        netlab: PathBuf,
        /// Only these kinds (comma-separated), e.g. fullcone,symmetric.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// One-way delay across the lab's switch (netlab --delay), e.g. 20ms: RTT 40 ms.
        #[arg(long)]
        delay: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Transport {
    Tcp,
    Quic,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum PeerRole {
    Dial,
    Listen,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Rendezvous { listen, lifetime } => runtime().and_then(|rt| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(lifetime), rendezvous(listen))
                    .await
                    .unwrap_or(Ok(()))
            })
        }),
        Cmd::Peer {
            server,
            room,
            name,
            transport,
            role,
            deadline_ms,
        } => {
            return match runtime() {
                Ok(rt) => {
                    let outcome =
                        rt.block_on(peer(server, &room, &name, transport, role, deadline_ms));
                    let ok = outcome.get("ok") == Some(&json!(true));
                    println!("{outcome}");
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(3)
                    }
                }
                Err(error) => {
                    eprintln!("punch-lab: {error:#}");
                    ExitCode::from(1)
                }
            };
        }
        Cmd::Pair {
            kind1,
            kind2,
            attempts,
            netlab,
            delay,
        } => pair(&netlab, &kind1, &kind2, attempts, delay.as_deref()),
        Cmd::Matrix {
            attempts,
            netlab,
            kinds,
            delay,
        } => matrix(&netlab, attempts, kinds, delay.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("punch-lab: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------- rendezvous

#[derive(Default)]
struct Member {
    tcp: Option<(SocketAddr, tokio::sync::mpsc::Sender<String>)>,
    udp: Option<SocketAddr>,
}

type Rooms = Arc<Mutex<HashMap<String, HashMap<String, Member>>>>;

async fn rendezvous(listen: SocketAddr) -> anyhow::Result<()> {
    let tcp = TcpListener::bind(listen)
        .await
        .context("rendezvous tcp bind")?;
    let udp = UdpSocket::bind(listen)
        .await
        .context("rendezvous udp bind")?;
    let rooms: Rooms = Arc::default();
    println!("ready {listen}");
    let udp_rooms = rooms.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let text = String::from_utf8_lossy(&buf[..n]);
            let mut words = text.trim_start_matches('\0').split_whitespace();
            if let (Some("REG"), Some(room), Some(name)) =
                (words.next(), words.next(), words.next())
            {
                let mut rooms = udp_rooms.lock().await;
                let members = rooms.entry(room.to_owned()).or_default();
                members.entry(name.to_owned()).or_default().udp = Some(from);
                go_if_ready(members).await;
            }
        }
    });
    loop {
        let (stream, from) = tcp.accept().await?;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            let Ok(Some(line)) = lines.next_line().await else {
                return;
            };
            let mut words = line.split_whitespace();
            let (Some("REG"), Some(room), Some(name)) = (words.next(), words.next(), words.next())
            else {
                return;
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
            {
                let mut rooms = rooms.lock().await;
                let members = rooms.entry(room.to_owned()).or_default();
                members.entry(name.to_owned()).or_default().tcp = Some((from, tx));
                go_if_ready(members).await;
            }
            if let Some(go) = rx.recv().await {
                let _ = write.write_all(go.as_bytes()).await;
            }
            // Hold the connection (and so the peer's NAT mapping) until the peer closes it.
            while let Ok(Some(_)) = lines.next_line().await {}
        });
    }
}

async fn go_if_ready(members: &mut HashMap<String, Member>) {
    let ready: Vec<(SocketAddr, SocketAddr)> = members
        .values()
        .filter_map(|m| Some((m.tcp.as_ref()?.0, m.udp?)))
        .collect();
    if members.len() != 2 || ready.len() != 2 {
        return;
    }
    let all: Vec<&Member> = members.values().collect();
    for (i, member) in all.iter().enumerate() {
        let (tcp, udp) = ready[1 - i];
        if let Some((_, tx)) = &member.tcp {
            let _ = tx.try_send(format!("GO {tcp} {udp} {}\n", START_IN.as_millis()));
        }
    }
}

// ---------------------------------------------------------------- peer

async fn peer(
    server: SocketAddr,
    room: &str,
    name: &str,
    transport: Transport,
    role: PeerRole,
    deadline_ms: u64,
) -> serde_json::Value {
    let base = json!({"transport": format!("{transport:?}").to_lowercase(), "role": format!("{role:?}").to_lowercase(), "name": name});
    match punch(server, room, name, transport, role, deadline_ms).await {
        Ok(mut fields) => {
            merge(&mut fields, base);
            fields
        }
        Err(error) => {
            let mut fields = json!({"ok": false, "error": format!("{error:#}")});
            merge(&mut fields, base);
            fields
        }
    }
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

async fn punch(
    server: SocketAddr,
    room: &str,
    name: &str,
    transport: Transport,
    role: PeerRole,
    deadline_ms: u64,
) -> anyhow::Result<serde_json::Value> {
    let any: SocketAddr = "0.0.0.0:0".parse()?;
    // The hub connection: its local port is the one the TCP punch reuses.
    let mut control = tcp::connect_reusable(any, server)
        .await
        .context("rendezvous connect")?;
    let tcp_local = control.local_addr()?;
    let endpoint = QuicEndpoint::bind(any)?;
    control
        .write_all(format!("REG {room} {name}\n").as_bytes())
        .await?;
    let registering = {
        let endpoint = endpoint.clone();
        let datagram = format!("\0REG {room} {name}");
        tokio::spawn(async move {
            loop {
                let _ = endpoint.send_raw(server, datagram.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut line = String::new();
    let (read, _write) = control.split();
    let mut reader = tokio::io::BufReader::new(read);
    tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
        .await
        .context("no GO from the rendezvous within 30 s")??;
    let got = Instant::now();
    registering.abort();
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["GO", peer_tcp, peer_udp, start_in] = words[..] else {
        bail!("unexpected rendezvous line {line:?}");
    };
    let (peer_tcp, peer_udp): (SocketAddr, SocketAddr) = (peer_tcp.parse()?, peer_udp.parse()?);
    let start_at = got + Duration::from_millis(start_in.parse()?);
    let deadline = start_at + Duration::from_millis(deadline_ms);
    let key = Key::from_bytes([0x42; 32]);
    let result = match transport {
        Transport::Tcp => {
            let stream = tcp::simultaneous_open(tcp_local, peer_tcp, start_at, deadline).await?;
            let remote = stream.peer_addr()?;
            exchange(stream, role, start_at, key)
                .await
                .map(|r| (r, remote))
        }
        Transport::Quic => {
            let quic_role = if role == PeerRole::Dial {
                Role::Dialer
            } else {
                Role::Listener
            };
            let stream = endpoint
                .punch_and_connect(peer_udp, quic_role, start_at, deadline)
                .await?;
            let remote = stream.remote_address();
            exchange(stream, role, start_at, key)
                .await
                .map(|r| (r, remote))
        }
    };
    let ((connected_ms, ttfb_ms, session_ms), remote) = result?;
    drop(control);
    Ok(json!({
        "ok": true,
        "connect_ms": connected_ms,
        "ttfb_ms": ttfb_ms,
        "session_ms": session_ms,
        "remote": remote.to_string(),
        "observed_peer_tcp": peer_tcp.to_string(),
        "observed_peer_udp": peer_udp.to_string(),
    }))
}

/// The first byte each way, then a Ferry PSK session with one ping. Returns milliseconds from
/// the punch start to: connected, first byte from the peer, and the ping's answer (dialer).
async fn exchange<S>(
    mut stream: S,
    role: PeerRole,
    start_at: Instant,
    key: Key,
) -> anyhow::Result<(f64, f64, f64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ms = |at: Instant| at.saturating_duration_since(start_at).as_secs_f64() * 1e3;
    let connected = ms(Instant::now());
    let mut byte = [0u8; 1];
    let ttfb;
    let deadline = Duration::from_secs(10);
    if role == PeerRole::Dial {
        stream.write_all(b"x").await?;
        tokio::time::timeout(deadline, stream.read_exact(&mut byte)).await??;
        ttfb = ms(Instant::now());
        let mut conn = tokio::time::timeout(
            deadline,
            ferry_protocol::tokio::connect(stream, ClientHandshakeConfig::new(key)),
        )
        .await??;
        let payload = bytes::Bytes::from_static(b"through the nat");
        conn.send((RequestId(1), Message::Ping(payload.clone())))
            .await?;
        let frame = tokio::time::timeout(deadline, conn.next())
            .await?
            .context("closed before the pong")??;
        if frame.message()? != Message::Pong(payload) {
            bail!("wrong answer to the ping");
        }
        let session = ms(Instant::now());
        // Close our side and wait for the listener's close, so both exit cleanly.
        let mut io = conn.into_inner();
        io.shutdown().await?;
        let _ = tokio::time::timeout(deadline, io.read(&mut byte)).await;
        Ok((connected, ttfb, session))
    } else {
        tokio::time::timeout(deadline, stream.read_exact(&mut byte)).await??;
        ttfb = ms(Instant::now());
        stream.write_all(b"y").await?;
        let mut conn = tokio::time::timeout(
            deadline,
            ferry_protocol::tokio::accept(stream, ServerHandshakeConfig::new(key)),
        )
        .await??;
        while let Some(frame) = tokio::time::timeout(deadline, conn.next()).await? {
            if let Message::Ping(payload) = frame?.message()? {
                conn.send((RequestId(1), Message::Pong(payload))).await?;
            }
        }
        let session = ms(Instant::now());
        let mut io = conn.into_inner();
        io.shutdown().await?;
        Ok((connected, ttfb, session))
    }
}

// ---------------------------------------------------------------- lab driver

fn netlab(netlab: &PathBuf) -> Command {
    let mut command = Command::new(netlab);
    command.env("NETLAB_PREFIX", "trav");
    command
}

/// One ordered pair; prints one JSON line per attempt and transport. The caller holds the lock.
fn pair(
    lab: &PathBuf,
    kind1: &str,
    kind2: &str,
    attempts: u32,
    delay: Option<&str>,
) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let mut up = netlab(lab);
    up.args(["up-nat", kind1, kind2]);
    if let Some(delay) = delay {
        up.args(["--delay", delay]);
    }
    let status = up.stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("netlab up-nat {kind1} {kind2} failed");
    }
    let result = (|| -> anyhow::Result<()> {
        let mut server = netlab(lab)
            .args(["exec", "pub"])
            .arg(&me)
            .args(["rendezvous", "--lifetime", "900"])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut ready = String::new();
        BufReader::new(server.stdout.take().context("rendezvous stdout")?).read_line(&mut ready)?;
        if !ready.starts_with("ready") {
            bail!("rendezvous did not start: {ready:?}");
        }
        for attempt in 1..=attempts {
            for transport in ["tcp", "quic"] {
                let room = format!("{attempt}-{transport}");
                let side = |host: &str, role: &str| {
                    netlab(lab)
                        .args(["exec", host])
                        .arg(&me)
                        .args([
                            "peer",
                            "--room",
                            &room,
                            "--name",
                            host,
                            "--transport",
                            transport,
                            "--role",
                            role,
                            "--deadline-ms",
                            PAIR_DEADLINE_MS,
                        ])
                        .stdout(Stdio::piped())
                        .spawn()
                };
                let dialer = side("peer1", "dial")?;
                let listener = side("peer2", "listen")?;
                let (dialer, listener) = (dialer.wait_with_output()?, listener.wait_with_output()?);
                let parse = |out: &[u8]| -> serde_json::Value {
                    serde_json::from_slice(out).unwrap_or_else(
                        |_| json!({"ok": false, "error": String::from_utf8_lossy(out)}),
                    )
                };
                let line = json!({
                    "kind1": kind1, "kind2": kind2, "attempt": attempt, "transport": transport,
                    "dialer": parse(&dialer.stdout), "listener": parse(&listener.stdout),
                });
                println!("{line}");
            }
        }
        let _ = server.kill();
        let _ = server.wait();
        Ok(())
    })();
    let _ = netlab(lab).arg("down").stdout(Stdio::null()).status();
    result
}

fn matrix(
    lab: &PathBuf,
    attempts: u32,
    kinds: Vec<String>,
    delay: Option<&str>,
) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let kinds: Vec<String> = if kinds.is_empty() {
        KINDS.iter().map(|k| k.to_string()).collect()
    } else {
        kinds
    };
    let mut rows = Vec::new();
    for k1 in &kinds {
        for k2 in &kinds {
            // The lock covers up, every attempt and down (common.md: one lab user at a time).
            let mut command = Command::new("flock");
            command
                .args(["/tmp/netlab.lock"])
                .arg(&me)
                .args([
                    "pair",
                    k1,
                    k2,
                    "--attempts",
                    &attempts.to_string(),
                    "--netlab",
                ])
                .arg(lab);
            if let Some(delay) = delay {
                command.args(["--delay", delay]);
            }
            let output = command.stderr(Stdio::inherit()).output()?;
            if !output.status.success() {
                bail!("pair {k1} {k2} failed");
            }
            let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            for line in &lines {
                eprintln!("{line}");
            }
            rows.push((k1.clone(), k2.clone(), lines));
        }
    }
    let delay = delay.map_or("no added delay".to_owned(), |d| format!("--delay {d}"));
    println!("\nNAT matrix ({delay}): {attempts} attempts per pair and transport; peer1 (behind KIND1) dials, peer2 (behind KIND2) listens");
    println!("ttfb: median ms from the punch start to the first byte back at the dialer; session: to a Ferry PSK ping's answer\n");
    println!("| KIND1 | KIND2 | expected | TCP direct | TCP ttfb | TCP session | QUIC direct | QUIC ttfb | QUIC session |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut totals = HashMap::new();
    for (k1, k2, lines) in rows {
        let expected = punchable(&k1, &k2);
        let mut cells = Vec::new();
        for transport in ["tcp", "quic"] {
            let dialers: Vec<&serde_json::Value> = lines
                .iter()
                .filter(|l| l["transport"] == transport)
                .map(|l| &l["dialer"])
                .collect();
            let ok: Vec<&&serde_json::Value> =
                dialers.iter().filter(|d| d["ok"] == json!(true)).collect();
            let median = |field: &str| {
                let mut v: Vec<f64> = ok.iter().filter_map(|d| d[field].as_f64()).collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2)
                    .map_or("—".to_owned(), |m| format!("{m:.1}"))
            };
            let entry = totals
                .entry(transport)
                .or_insert((0usize, 0usize, Vec::new()));
            if expected {
                entry.0 += ok.len();
                entry.1 += dialers.len();
                entry
                    .2
                    .extend(ok.iter().filter_map(|d| d["ttfb_ms"].as_f64()));
            }
            cells.push(format!("{}/{}", ok.len(), dialers.len()));
            cells.push(median("ttfb_ms"));
            cells.push(median("session_ms"));
        }
        println!(
            "| {k1} | {k2} | {} | {} |",
            if expected { "punch" } else { "relay" },
            cells.join(" | ")
        );
    }
    println!();
    for transport in ["tcp", "quic"] {
        if let Some((ok, all, mut ttfb)) = totals.remove(transport) {
            ttfb.sort_by(f64::total_cmp);
            let median = ttfb.get(ttfb.len() / 2).copied().unwrap_or(f64::NAN);
            println!("{transport}: {ok}/{all} direct where a punch is expected; median ttfb {median:.1} ms");
        }
    }
    Ok(())
}

/// Where mapping behaviour allows a punch (issue 12): every pair without a symmetric NAT, and
/// symmetric with full-cone or restricted.
fn punchable(k1: &str, k2: &str) -> bool {
    let easy = |k: &str| k == "fullcone" || k == "restricted";
    match (k1 == "symmetric", k2 == "symmetric") {
        (false, false) => true,
        (true, true) => false,
        (true, false) => easy(k2),
        (false, true) => easy(k1),
    }
}
