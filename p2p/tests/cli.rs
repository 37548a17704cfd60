//! The `ferry-peer` binary end to end: make, tracker, seed, get, and a hostile manifest.

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferry-peer");

/// A child process killed on drop, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ferry-peer args…` and returns it with its first stdout line.
fn spawn_with_line(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (Running(child), line.trim().to_owned())
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("docs")).unwrap();
    let data: Vec<u8> = (0..700_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("data.bin"), &data).unwrap();
    std::fs::write(root.join("docs/readme"), b"ferry swarm test\n").unwrap();
}

#[test]
fn make_tracker_seed_get_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_tree(&tree);
    let (_tracker, line) =
        spawn_with_line(&["tracker", "--listen", "127.0.0.1:0", "--interval", "2s"]);
    let tracker_url = line
        .strip_prefix("tracker listening on ")
        .unwrap()
        .to_owned();
    let manifest = dir.path().join("tree.ferry");
    let made = Command::new(BIN)
        .args([
            "make",
            tree.to_str().unwrap(),
            "-o",
            manifest.to_str().unwrap(),
        ])
        .args(["--tracker", &tracker_url, "--piece-size", "65536"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let (_seed, line) = spawn_with_line(&[
        "seed",
        manifest.to_str().unwrap(),
        "--data",
        tree.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(line.starts_with("seeding "), "{line}");
    let out = dir.path().join("out");
    let mut get = Command::new(BIN)
        .args([
            "get",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--no-seed", "--no-progress", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded wait: the download is well under a second on loopback.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = get.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = get.kill();
            panic!("get did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    for file in ["data.bin", "docs/readme"] {
        assert_eq!(
            std::fs::read(tree.join(file)).unwrap(),
            std::fs::read(out.join("tree").join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn seed_refuses_data_that_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_tree(&tree);
    let manifest = dir.path().join("t.ferry");
    let made = Command::new(BIN)
        .args([
            "make",
            tree.to_str().unwrap(),
            "-o",
            manifest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(made.status.success());
    std::fs::write(tree.join("docs/readme"), b"ferry swarm tesT\n").unwrap();
    let seed = Command::new(BIN)
        .args([
            "seed",
            manifest.to_str().unwrap(),
            "--data",
            tree.to_str().unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(seed.status.code(), Some(4), "{seed:?}");
}

#[test]
fn hostile_manifest_is_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // A canonical-looking manifest whose one file is "../escape".
    let mut m = b"FERRYMF1".to_vec();
    m.extend_from_slice(&[1, 1]);
    m.extend_from_slice(&16_384u32.to_be_bytes());
    m.extend_from_slice(&1u32.to_be_bytes());
    let path = b"../escape";
    m.extend_from_slice(&(path.len() as u16).to_be_bytes());
    m.extend_from_slice(path);
    m.extend_from_slice(&5u64.to_be_bytes());
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&[0; 32]);
    m.extend_from_slice(&[0, 0]);
    let manifest = dir.path().join("evil.ferry");
    std::fs::write(&manifest, m).unwrap();
    let out = dir.path().join("out/inner");
    let get = Command::new(BIN)
        .args([
            "get",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--no-seed", "--no-progress", "--peer", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(get.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(stderr.contains("dot component"), "{stderr}");
    assert!(!dir.path().join("out/escape").exists());
    assert!(!out.exists());
}

/// `get --server`: a running ferry-server is the only source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_from_a_ferry_server() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("pub/tree");
    write_tree(&tree);
    let manifest = dir.path().join("tree.ferry");
    let made = Command::new(BIN)
        .args([
            "make",
            tree.to_str().unwrap(),
            "-o",
            manifest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(made.status.success());
    let key = ferry_protocol::Key::generate();
    let server = ferry_server::Server::bind(
        ferry_server::Config::new(dir.path().join("pub"), key.clone())
            .listen(["127.0.0.1:0".parse().unwrap()]),
    )
    .await
    .unwrap();
    let addr = server.local_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let out = dir.path().join("out");
    let mut get = tokio::process::Command::new(BIN)
        .args([
            "get",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--no-seed", "--no-progress", "--listen", "127.0.0.1:0"])
        .args([
            "--server",
            &format!("ferry://{addr}/"),
            // The old name, kept as a hidden alias of --key.
            "--server-key",
            &key.to_hex(),
        ])
        .env_remove("FERRY_KEY")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), get.wait())
        .await
        .expect("get finished")
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read(tree.join("data.bin")).unwrap(),
        std::fs::read(out.join("tree/data.bin")).unwrap()
    );
    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
}

/// Collects a child's stderr lines on a thread, so tests can wait for one with a deadline.
fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `limit` for a line containing `needle`; returns it, or panics with what came.
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    limit: Duration,
) -> String {
    let deadline = std::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?} within {limit:?}; got {seen:?}"),
        }
    }
}

/// Waits up to `limit` for the child to exit; kills it and panics past that.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A loopback TCP port that refuses connections for as long as the socket is held: bound but
/// not listening, so no other test can take the port meanwhile.
fn refusing_port() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// The peers a tracker lists for `content_id`, asked as a leecher that only queries.
async fn listed(
    query: &mut ferry_p2p::tracker::client::TrackerClient,
    content_id: ferry_p2p::manifest::ContentId,
) -> Vec<std::net::SocketAddr> {
    // Port 0 only asks; `left` 1 so that seeds are listed.
    query
        .announce(
            content_id,
            ferry_p2p::wire::PeerId([9; 20]),
            0,
            0,
            0,
            1,
            ferry_p2p::tracker::AnnounceEvent::None,
            50,
        )
        .await
        .unwrap()
        .peers
}

/// Writes the test tree under `dir/tree` and its manifest `dir/tree.ferry`, with `extra` make
/// flags (e.g. a tracker).
fn tree_and_manifest(dir: &Path, extra: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let tree = dir.join("tree");
    write_tree(&tree);
    let manifest = dir.join("tree.ferry");
    let made = Command::new(BIN)
        .args([
            "make",
            tree.to_str().unwrap(),
            "-o",
            manifest.to_str().unwrap(),
        ])
        .args(["--piece-size", "65536", "--no-progress"])
        .args(extra)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    (tree, manifest)
}

/// `ferry-peer seed` on loopback; returns it and its listen address.
fn start_seed(manifest: &Path, tree: &Path) -> (Running, String) {
    let (seed, line) = spawn_with_line(&[
        "seed",
        manifest.to_str().unwrap(),
        "--data",
        tree.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--no-progress",
    ]);
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (seed, addr)
}

/// `ferry-peer get MANIFEST -o OUT --listen 127.0.0.1:0 --no-progress ARGS…`, stderr piped.
fn spawn_get(manifest: &Path, out: &Path, args: &[&str]) -> Running {
    let child = Command::new(BIN)
        .args([
            "get",
            manifest.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0", "--no-progress"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running(child)
}

/// A tracker that receives and never answers: `get` must say so rather than wait in silence.
#[test]
fn an_unreachable_tracker_is_reported_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tracker = silent.local_addr().unwrap();
    let (_, manifest) = tree_and_manifest(dir.path(), &["--tracker", &format!("udp://{tracker}")]);
    let start = std::time::Instant::now();
    let mut get = spawn_get(&manifest, &dir.path().join("out"), &["--no-seed"]);
    let lines = stderr_lines(&mut get.0);
    let line = wait_for_line(&lines, "no peer after", Duration::from_secs(20));
    println!("after {:?}: {line}", start.elapsed());
    assert!(
        line.contains(&format!("tracker {tracker} did not answer")),
        "{line}"
    );
    assert!(line.contains("no peer address known"), "{line}");
}

/// The tracker lists a peer that refuses connections: the message names it and the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_peers_that_cannot_be_reached_are_reported() {
    use ferry_p2p::tracker::client::{Backoff, TrackerClient};
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, line) = spawn_with_line(&["tracker", "--listen", "127.0.0.1:0"]);
    let url = line
        .strip_prefix("tracker listening on ")
        .unwrap()
        .to_owned();
    let (_, manifest) = tree_and_manifest(dir.path(), &["--tracker", &url]);
    let content_id = ferry_p2p::manifest::Manifest::load(&manifest)
        .unwrap()
        .content_id();
    let (_held, dead) = refusing_port();
    let tracker_addr = url.strip_prefix("udp://").unwrap().parse().unwrap();
    let mut fake = TrackerClient::new(tracker_addr, Backoff::default())
        .await
        .unwrap();
    fake.announce(
        content_id,
        ferry_p2p::wire::PeerId([7; 20]),
        dead.port(),
        0,
        0,
        0,
        ferry_p2p::tracker::AnnounceEvent::Started,
        0,
    )
    .await
    .unwrap();
    let mut get = spawn_get(&manifest, &dir.path().join("out"), &["--no-seed"]);
    let lines = stderr_lines(&mut get.0);
    let line = tokio::task::spawn_blocking(move || {
        wait_for_line(&lines, "no peer after", Duration::from_secs(20))
    })
    .await
    .unwrap();
    println!("{line}");
    assert!(
        line.contains(&format!("tracker {tracker_addr} listed 1 peer")),
        "{line}"
    );
    assert!(
        line.contains(&format!("none reachable ({dead}: connection refused)")),
        "{line}"
    );
}

/// A tracker restarts and forgets its seed; a leecher that starts right after must still find
/// the seed within seconds (before the fix: at the seed's next 60 s announce).
#[test]
fn a_restarted_tracker_relearns_its_seed_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, line) = spawn_with_line(&["tracker", "--listen", "127.0.0.1:0"]);
    let url = line
        .strip_prefix("tracker listening on ")
        .unwrap()
        .to_owned();
    let listen = url.strip_prefix("udp://").unwrap().to_owned();
    let (tree, manifest) = tree_and_manifest(dir.path(), &["--tracker", &url]);
    let (_seed, _) = start_seed(&manifest, &tree);
    // A first download proves the seed is known to the tracker.
    let mut first = spawn_get(&manifest, &dir.path().join("out1"), &["--no-seed"]);
    assert!(wait_exit(&mut first.0, Duration::from_secs(60)).success());
    drop(tracker);
    let (_tracker, _) = spawn_with_line(&["tracker", "--listen", &listen]);
    let start = std::time::Instant::now();
    let mut second = spawn_get(&manifest, &dir.path().join("out2"), &["--no-seed"]);
    let status = wait_exit(&mut second.0, Duration::from_secs(30));
    let took = start.elapsed();
    println!("leecher after the tracker restart finished in {took:?}");
    assert!(status.success());
    // The target is 5 s; the bound leaves room for a loaded machine, and still fails the old
    // behaviour (about 60 s).
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn make_refuses_to_overwrite_a_manifest_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, manifest) = tree_and_manifest(dir.path(), &[]);
    let before = std::fs::read(&manifest).unwrap();
    let again = Command::new(BIN)
        .args([
            "make",
            tree.to_str().unwrap(),
            "--out",
            manifest.to_str().unwrap(),
        ])
        .args(["--piece-size", "16384", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists; use --force"), "{stderr}");
    assert_eq!(std::fs::read(&manifest).unwrap(), before);
    let forced = Command::new(BIN)
        .args([
            "make",
            tree.to_str().unwrap(),
            "-o",
            manifest.to_str().unwrap(),
        ])
        .args(["--piece-size", "16384", "--no-progress", "--force"])
        .output()
        .unwrap();
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(std::fs::read(&manifest).unwrap(), before);
}

/// A node that may hold no connection can never download or upload: `--max-peers 0` is a
/// usage error (exit 2) naming the flag, before a port is bound or a file touched.
#[test]
fn max_peers_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_tree, manifest) = tree_and_manifest(dir.path(), &[]);
    let out = dir.path().join("out");
    // A peer to dial, so that nothing but the flag stops the download from starting.
    let (_held, peer) = refusing_port();
    let peer = peer.to_string();
    let mut get = spawn_get(&manifest, &out, &["--max-peers", "0", "--peer", &peer]);
    let status = wait_exit(&mut get.0, Duration::from_secs(20));
    let stderr = std::io::read_to_string(get.0.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-peers"), "{stderr}");
    assert!(stderr.contains("at least 1"), "{stderr}");
    assert!(!out.exists());
}

/// An interrupted download never carries the final name; the next `get` resumes the `.part`
/// file and renames it once verified.
#[test]
fn an_interrupted_get_leaves_part_files_and_resumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, manifest) = tree_and_manifest(dir.path(), &[]);
    let out = dir.path().join("out");
    // A peer that refuses: nothing can be downloaded.
    let (_held, dead) = refusing_port();
    let dead = dead.to_string();
    let mut get = spawn_get(&manifest, &out, &["--no-seed", "--peer", &dead]);
    let lines = stderr_lines(&mut get.0);
    // By the time it explains it has no peer, its files are prepared.
    wait_for_line(&lines, "no peer after", Duration::from_secs(20));
    signal(&get.0, "INT");
    assert_eq!(
        wait_exit(&mut get.0, Duration::from_secs(20)).code(),
        Some(130)
    );
    assert!(out.join("tree/data.bin.part").exists());
    assert!(
        !out.join("tree/data.bin").exists(),
        "a half file has the final name"
    );
    // Put half the data in the part file, as an earlier, longer run would have.
    let data = std::fs::read(tree.join("data.bin")).unwrap();
    let part = std::fs::OpenOptions::new()
        .write(true)
        .open(out.join("tree/data.bin.part"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&part, &data[..350_000], 0).unwrap();
    drop(part);
    let (_seed, addr) = start_seed(&manifest, &tree);
    let resumed = Command::new(BIN)
        .args([
            "get",
            manifest.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args([
            "--no-seed",
            "--no-progress",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            &addr,
        ])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{resumed:?}");
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    // Durations print rounded: "in 0.4s", never "in 0.41234s".
    let took = stdout.trim().rsplit(' ').next().unwrap();
    let secs = took.strip_suffix('s').unwrap();
    assert!(
        secs.parse::<f64>().is_ok() && secs.split('.').nth(1).is_none_or(|d| d.len() == 1),
        "{stdout}"
    );
    assert_eq!(std::fs::read(out.join("tree/data.bin")).unwrap(), data);
    assert!(out.join("tree/docs/readme").exists());
    assert!(!out.join("tree/data.bin.part").exists());
    assert!(!out.join("tree/docs/readme.part").exists());
}

/// A user who asked `get` to keep seeding and then stops it has not failed: exit 0.
#[test]
fn stopping_a_seeding_get_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, manifest) = tree_and_manifest(dir.path(), &[]);
    let (_seed, addr) = start_seed(&manifest, &tree);
    let mut get = spawn_get(&manifest, &dir.path().join("out"), &["--peer", &addr]);
    let lines = stderr_lines(&mut get.0);
    wait_for_line(&lines, "seeding on", Duration::from_secs(60));
    signal(&get.0, "INT");
    assert_eq!(
        wait_exit(&mut get.0, Duration::from_secs(20)).code(),
        Some(0)
    );
}

/// `--seed-time` ends seeding by itself.
#[test]
fn seed_time_stops_seeding_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, manifest) = tree_and_manifest(dir.path(), &[]);
    let (_seed, addr) = start_seed(&manifest, &tree);
    let mut get = spawn_get(
        &manifest,
        &dir.path().join("out"),
        &["--peer", &addr, "--seed-time", "1s"],
    );
    let lines = stderr_lines(&mut get.0);
    let line = wait_for_line(&lines, "seeding on", Duration::from_secs(60));
    assert!(line.contains("for 1s"), "{line}");
    assert_eq!(
        wait_exit(&mut get.0, Duration::from_secs(30)).code(),
        Some(0)
    );
}

/// `--seed-ratio 1`: A downloads from the seed, the seed goes away, B downloads everything
/// from A, and A stops by itself once it has uploaded the content once.
#[test]
fn seed_ratio_stops_seeding_once_reached() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, manifest) = tree_and_manifest(dir.path(), &[]);
    let (seed, addr) = start_seed(&manifest, &tree);
    let mut a = spawn_get(
        &manifest,
        &dir.path().join("a"),
        &["--peer", &addr, "--seed-ratio", "1"],
    );
    let lines = stderr_lines(&mut a.0);
    let line = wait_for_line(&lines, "seeding on", Duration::from_secs(60));
    let a_addr = line.split(' ').nth(2).unwrap().to_owned();
    drop(seed);
    let mut b = spawn_get(
        &manifest,
        &dir.path().join("b"),
        &["--no-seed", "--peer", &a_addr],
    );
    assert!(wait_exit(&mut b.0, Duration::from_secs(60)).success());
    assert_eq!(wait_exit(&mut a.0, Duration::from_secs(30)).code(), Some(0));
}

/// SIGTERM stops a seed like Ctrl-C does: the tracker hears `stopped` and forgets it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_the_tracker_stopped() {
    use ferry_p2p::tracker::client::{Backoff, TrackerClient};
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, line) = spawn_with_line(&["tracker", "--listen", "127.0.0.1:0"]);
    let url = line
        .strip_prefix("tracker listening on ")
        .unwrap()
        .to_owned();
    let tracker_addr = url.strip_prefix("udp://").unwrap().parse().unwrap();
    let (tree, manifest) = tree_and_manifest(dir.path(), &["--tracker", &url]);
    let content_id = ferry_p2p::manifest::Manifest::load(&manifest)
        .unwrap()
        .content_id();
    let (mut seed, seed_addr) = start_seed(&manifest, &tree);
    let mut query = TrackerClient::new(tracker_addr, Backoff::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while listed(&mut query, content_id).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "seed never announced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&seed.0, "TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut seed.0, Duration::from_secs(20));
        drop(seed);
        status
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    let left = listed(&mut query, content_id).await;
    assert!(left.is_empty(), "seed {seed_addr} still listed: {left:?}");
}

/// Every subcommand's help lists the exit codes, prints each default once (in the flag's own
/// words), uses the flag names of the other binaries, and says why peers listen everywhere.
#[test]
fn help_lists_exit_codes_and_each_default_once() {
    for sub in ["make", "seed", "get", "tracker"] {
        let help = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("Exit codes:"), "{sub}: {text}");
        assert!(!text.contains("[default:"), "{sub}: {text}");
        if sub == "seed" || sub == "get" {
            assert!(text.contains("listen on all interfaces"), "{sub}: {text}");
        }
        if sub == "make" || sub == "get" {
            assert!(text.contains("-o, --out"), "{sub}: {text}");
        }
        if sub == "get" {
            assert!(text.contains("--key <KEY>"), "{text}");
            assert!(text.contains("--key-file <FILE>"), "{text}");
            assert!(!text.contains("--server-key"), "{text}");
        }
    }
}

/// Logs written to a pipe carry no colour escapes.
#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let (_, manifest) = tree_and_manifest(dir.path(), &[]);
    // Everything is already on disk, so this finishes at once, warning about the bad tracker.
    let get = Command::new(BIN)
        .args([
            "get",
            manifest.to_str().unwrap(),
            "-o",
            dir.path().to_str().unwrap(),
        ])
        .args(["--no-seed", "--no-progress", "--listen", "127.0.0.1:0"])
        .args(["--tracker", "http://example.invalid/announce"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(get.status.success(), "{get:?}");
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(stderr.contains("ignoring tracker"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// Two manifests seeded by one `ferry-peer seed` share one port; a `get` of each finds its own
/// swarm there.
#[test]
fn two_manifests_are_seeded_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (tree_a, manifest_a) = tree_and_manifest(&a, &[]);
    let (tree_b, manifest_b) = tree_and_manifest(&b, &[]);
    // Other bytes under the same names: another content id.
    std::fs::write(tree_b.join("docs/readme"), b"the other swarm\n").unwrap();
    let made = Command::new(BIN)
        .args(["make", tree_b.to_str().unwrap(), "-o"])
        .arg(&manifest_b)
        .args(["--piece-size", "65536", "--no-progress", "--force"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    let mismatched = Command::new(BIN)
        .arg("seed")
        .args([&manifest_a, &manifest_b])
        .args(["--data", tree_a.to_str().unwrap()])
        .args(["--data", tree_b.to_str().unwrap()])
        .args(["--data", tree_b.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(mismatched.status.code(), Some(2), "{mismatched:?}");

    let mut seed = Command::new(BIN)
        .arg("seed")
        .args([&manifest_a, &manifest_b])
        .args(["--data", tree_a.to_str().unwrap()])
        .args(["--data", tree_b.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(seed.stdout.take().unwrap());
    let seed = Running(seed);
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("seeding "), "{line}");
        addrs.push(line.trim().rsplit(' ').next().unwrap().to_owned());
    }
    assert_eq!(addrs[0], addrs[1], "one port for both swarms");

    for (manifest, tree, out) in [
        (&manifest_a, &tree_a, a.join("out")),
        (&manifest_b, &tree_b, b.join("out")),
    ] {
        let mut get = spawn_get(manifest, &out, &["--no-seed", "--peer", &addrs[0]]);
        let status = wait_exit(&mut get.0, Duration::from_secs(60));
        assert!(status.success(), "{status:?}");
        for file in ["data.bin", "docs/readme"] {
            assert_eq!(
                std::fs::read(tree.join(file)).unwrap(),
                std::fs::read(out.join("tree").join(file)).unwrap(),
                "{file}"
            );
        }
    }
    drop(seed);
}
