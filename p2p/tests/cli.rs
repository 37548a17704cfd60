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
