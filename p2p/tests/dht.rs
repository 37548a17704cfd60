//! The DHT on loopback: real UDP sockets on 127.0.0.1, port 0. A seed and a leecher find each
//! other through one bootstrap node, with no tracker, and a node that restarts rejoins
//! through the routing table it saved.

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_p2p::dht::shell::{self, DhtHandle, ShellConfig};
use ferry_p2p::node::{self, NodeConfig};
use ferry_p2p::pieces::{make_manifest, Storage};
use tokio_util::sync::CancellationToken;

/// Bounds a run that fails; a passing one takes a second or two.
const WITHIN: Duration = Duration::from_secs(120);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn dht_node(
    bootstrap: Vec<SocketAddr>,
    state_file: Option<PathBuf>,
    cancel: &CancellationToken,
) -> DhtHandle {
    shell::spawn(
        ShellConfig {
            listen: loopback(),
            bootstrap,
            state_file,
            core: Default::default(),
        },
        cancel.clone(),
    )
    .await
    .unwrap()
}

fn make_tree(dir: &Path) -> PathBuf {
    let root = dir.join("src/tree");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("big.bin"), ferry_testkit::data(700_000, 1)).unwrap();
    std::fs::write(root.join("sub/small.txt"), ferry_testkit::data(10_000, 2)).unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_leecher_meet_through_a_dht_bootstrap_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    // No tracker, no server: the manifest names no source at all.
    let manifest =
        Arc::new(make_manifest(&tree, Some(64 * 1024), vec![], vec![], &|_| {}).unwrap());
    assert!(manifest.trackers().is_empty());
    let cancel = CancellationToken::new();
    let boot = dht_node(vec![], None, &cancel).await;

    let seed_dht = dht_node(vec![boot.local_addr], None, &cancel).await;
    let storage = Storage::open_existing(&dir.path().join("src"), &manifest).unwrap();
    let have = storage.verify(&manifest, &|| {});
    assert!(have.is_full());
    let seed = node::start(
        manifest.clone(),
        Arc::new(storage),
        have,
        NodeConfig {
            listen: loopback(),
            dht: Some(seed_dht.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let leech_dht = dht_node(vec![boot.local_addr], None, &cancel).await;
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let storage = Arc::new(Storage::create(&out, &manifest).unwrap());
    let have = storage.verify(&manifest, &|| {});
    let mut leecher = node::start(
        manifest.clone(),
        storage.clone(),
        have,
        NodeConfig {
            listen: loopback(),
            dht: Some(leech_dht.clone()),
            seed_after_complete: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let complete = tokio::time::timeout(WITHIN, async {
        loop {
            let s = *leecher.stats.borrow_and_update();
            if s.have == s.pieces {
                break;
            }
            if leecher.stats.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(complete.is_ok(), "no download within {WITHIN:?}");
    let s = *leecher.stats.borrow();
    assert_eq!(s.have, s.pieces);
    leecher.wait().await.unwrap();
    for f in manifest.files() {
        let a = std::fs::read(f.path.under(&dir.path().join("src"))).unwrap();
        let b = std::fs::read(f.path.under(&out)).unwrap();
        assert!(a == b, "{} differs", f.path);
    }
    // Both swarm members found the bootstrap node and each other's DHT node.
    assert!(!leech_dht.nodes().await.unwrap().is_empty());
    seed.shutdown().await.unwrap();
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_through_its_saved_table() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/dht.state");
    let cancel = CancellationToken::new();
    let boot = dht_node(vec![], None, &cancel).await;
    let others = [
        dht_node(vec![boot.local_addr], None, &cancel).await,
        dht_node(vec![boot.local_addr], None, &cancel).await,
    ];
    let first_cancel = CancellationToken::new();
    let first = dht_node(vec![boot.local_addr], Some(state.clone()), &first_cancel).await;
    // Its bootstrap lookup has met the bootstrap node and the others (ask until it has).
    tokio::time::timeout(WITHIN, async {
        loop {
            if first.nodes().await.unwrap().len() >= 3 {
                break;
            }
            let _ = first
                .get_peers(ferry_p2p::dht::NodeId([7; 20]), None, |_| {})
                .await;
            // Paces the retries; the deadline above only bounds failure.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the first node never filled its table");
    first_cancel.cancel();
    first.stopped().await;
    let (id, saved) = shell::load_state(&state).expect("the table was saved");
    assert!(saved.len() >= 3, "{saved:?}");
    assert!(!dir.path().join("state/dht.state.tmp").exists());

    // Restarted with no bootstrap node: the saved table is enough, and the id is kept.
    let again = dht_node(vec![], Some(state.clone()), &cancel).await;
    let known: Vec<SocketAddr> = others.iter().map(|o| o.local_addr).collect();
    tokio::time::timeout(WITHIN, async {
        loop {
            let nodes = again.nodes().await.unwrap();
            if known.iter().all(|a| nodes.iter().any(|n| n.addr == *a)) {
                break;
            }
            let _ = again
                .get_peers(ferry_p2p::dht::NodeId([9; 20]), None, |_| {})
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the restarted node did not rejoin");
    cancel.cancel();
    again.stopped().await;
    assert_eq!(
        shell::load_state(&state).unwrap().0,
        id,
        "the saved id was kept"
    );
}

/// A child process killed on drop, so a failing test leaves nothing running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ferry-peer args…` and returns it with its first stdout line.
fn spawn_with_line(args: &[&str]) -> (Running, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-peer"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    (Running(child), line.trim().to_owned())
}

/// The binary: `make` with no tracker, a `dht` bootstrap node, `seed` and `get` with
/// `--dht-bootstrap` only; each keeps its routing table in the file it is given.
#[test]
fn trackerless_make_seed_get_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let manifest = at("t.ferry");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-peer"))
        .args([
            "make",
            tree.to_str().unwrap(),
            "-o",
            &manifest,
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let (_boot, line) = spawn_with_line(&[
        "dht",
        "--dht-listen",
        "127.0.0.1:0",
        "--dht-state",
        &at("boot.state"),
    ]);
    let boot = line
        .strip_prefix("dht listening on udp://")
        .unwrap()
        .to_owned();
    let (_seed, line) = spawn_with_line(&[
        "seed",
        &manifest,
        "--data",
        &at("src"),
        "--listen",
        "127.0.0.1:0",
        "--dht-bootstrap",
        &boot,
        "--dht-listen",
        "127.0.0.1:0",
        "--dht-state",
        &at("seed.state"),
        "--no-progress",
    ]);
    assert!(line.starts_with("seeding "), "{line}");
    let out = at("out");
    let mut get = Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry-peer"))
            .args([
                "get",
                &manifest,
                "-o",
                &out,
                "--no-seed",
                "--listen",
                "127.0.0.1:0",
                "--dht-bootstrap",
                &boot,
                "--dht-listen",
                "127.0.0.1:0",
                "--dht-state",
                &at("get.state"),
                "--no-progress",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + WITHIN;
    let status = loop {
        if let Some(status) = get.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "get did not finish within {WITHIN:?}"
        );
        // Polls the child's exit; the deadline only bounds failure.
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    for name in ["big.bin", "sub/small.txt"] {
        let a = std::fs::read(tree.join(name)).unwrap();
        let b = std::fs::read(Path::new(&out).join("tree").join(name)).unwrap();
        assert!(a == b, "{name} differs");
    }
    // `get` saved its table (the bootstrap node at least) on the way out.
    let (_, nodes) = shell::load_state(Path::new(&at("get.state"))).unwrap();
    assert!(
        nodes.iter().any(|n| n.addr.to_string() == boot),
        "{nodes:?}"
    );
}
