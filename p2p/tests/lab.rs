//! Multi-host swarm in netlab namespaces (shaped links, real separate processes). Needs root:
//! `NETLAB=$PWD/../shared/netlab/netlab cargo test -p ferry-p2p --test lab -- --ignored`

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A lab with its own namespace prefix; removed again on drop.
struct Lab {
    bin: PathBuf,
    prefix: String,
}

impl Lab {
    fn up(prefix: &str, args: &[&str]) -> Option<Lab> {
        let bin = PathBuf::from(std::env::var_os("NETLAB")?);
        let lab = Lab {
            bin,
            prefix: prefix.into(),
        };
        let ok = lab
            .cmd()
            .args(args)
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "netlab {args:?} failed");
        Some(lab)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("NETLAB_PREFIX", &self.prefix);
        c
    }

    fn spawn(&self, host: &str, args: &[&str]) -> Child {
        self.cmd()
            .arg("exec")
            .arg(host)
            .arg(env!("CARGO_BIN_EXE_ferry-peer"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cmd().arg("down").stdout(Stdio::null()).status();
    }
}

#[test]
#[ignore = "needs root and NETLAB=path/to/netlab"]
fn three_hosts_fetch_from_one_seed_over_shaped_links() {
    let Some(lab) = Lab::up("p2plab", &["up-swarm", "4", "20mbit"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let content: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    std::fs::write(data.join("file.bin"), &content).unwrap();
    let manifest = dir.path().join("f.ferry");
    let made = Command::new(env!("CARGO_BIN_EXE_ferry-peer"))
        .args([
            "make",
            data.join("file.bin").to_str().unwrap(),
            "-o",
            manifest.to_str().unwrap(),
        ])
        .args(["--tracker", "udp://198.51.100.1:6969", "--no-progress"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let m = manifest.to_str().unwrap();
    let mut tracker = lab.spawn(
        "h1",
        &[
            "tracker",
            "--listen",
            "198.51.100.1:6969",
            "--interval",
            "5s",
        ],
    );
    let mut seed = lab.spawn(
        "h1",
        &[
            "seed",
            m,
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "198.51.100.1:7000",
            "--no-progress",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut leechers = Vec::new();
    for i in 2..=4 {
        let out = dir.path().join(format!("h{i}"));
        let listen = format!("198.51.100.{i}:7000");
        let child = lab.spawn(
            &format!("h{i}"),
            &[
                "get",
                m,
                "--out",
                out.to_str().unwrap(),
                "--listen",
                &listen,
                "--no-seed",
                "--no-progress",
            ],
        );
        leechers.push((child, out));
    }
    // 6 MB at 20 Mbit/s is 2.5 s for one host; allow a generous bound.
    let deadline = Instant::now() + Duration::from_secs(90);
    for (child, out) in leechers.iter_mut() {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "leecher did not finish");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success());
        assert!(std::fs::read(out.join("file.bin")).unwrap() == content);
    }
    let _ = seed.kill();
    let _ = tracker.kill();
    let _ = seed.wait();
    let _ = tracker.wait();
}
