//! The fleet commands of the `ferry-peer` binary end to end on loopback: channel new, follow,
//! publish (twice), a refused version, fleet status and rollback.

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferry-peer");
/// Bounds a wait that fails; a passing run takes a few seconds.
const WITHIN: Duration = Duration::from_secs(60);

/// A child process killed on drop, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ferry-peer args…`, its stdout and stderr lines coming through one channel.
fn spawn(args: &[&str]) -> (Running, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("HOME", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    (Running(child), rx)
}

/// The first line containing `needle`.
fn line_with(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

fn write_release(root: &Path, text: &str) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("bin/tool"), &data).unwrap();
    std::fs::write(root.join("VERSION"), text).unwrap();
}

#[test]
fn channel_follow_publish_status_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let channels = dir.path().join("channels");
    let channels = channels.to_str().unwrap();
    let made = Command::new(BIN)
        .args(["channel", "new", "app", "--channel-dir", channels])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let id = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert_eq!(id.len(), 54, "{id}");
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join("channels/app.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600);

    let install = dir.path().join("opt-app");
    let install_arg = install.to_str().unwrap();
    let (_follower, follower_out) = spawn(&[
        "follow",
        &id,
        "--dir",
        install_arg,
        "--gossip-listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "rack-1",
    ]);
    let line = line_with(&follower_out, "gossip on udp ");
    let gossip = line.rsplit(' ').next().unwrap().to_owned();

    let release = dir.path().join("build");
    write_release(&release, "one\n");
    let publish = |extra: &[&str]| {
        let mut args = vec![
            "publish",
            release.to_str().unwrap(),
            "--channel",
            "app",
            "--channel-dir",
            channels,
            "--peer",
            &gossip,
            "--gossip-listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        spawn(&args)
    };
    let (first, first_out) = publish(&[]);
    assert!(line_with(&first_out, "published version 1 of app").contains(&id));
    line_with(&follower_out, "release 1 installed");
    assert_eq!(
        std::fs::read_to_string(install.join("current/VERSION")).unwrap(),
        "one\n"
    );
    drop(first);

    // The next publish is version 2 by itself; asking for version 1 again is refused.
    let refused = Command::new(BIN)
        .args([
            "publish",
            release.to_str().unwrap(),
            "--channel",
            "app",
            "--channel-dir",
            channels,
            "--version",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not above version 1"));
    write_release(&release, "two\n");
    let (_second, second_out) = publish(&["--notes", "second"]);
    line_with(&second_out, "published version 2 of app");
    line_with(&follower_out, "release 2 installed");
    assert_eq!(
        std::fs::read_to_string(install.join("current/VERSION")).unwrap(),
        "two\n"
    );

    let status = Command::new(BIN)
        .args(["fleet", "status", &id, "--peer", &gossip])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let table = String::from_utf8(status.stdout).unwrap();
    let row = table.lines().find(|l| l.starts_with("rack-1")).unwrap();
    assert!(row.contains(" 2 ") && row.contains(" ok "), "{table}");

    let rolled = Command::new(BIN)
        .args(["rollback", "--dir", install_arg])
        .output()
        .unwrap();
    assert!(rolled.status.success(), "{rolled:?}");
    assert!(String::from_utf8_lossy(&rolled.stdout).contains("current 2 -> 1"));
    assert_eq!(
        std::fs::read_to_string(install.join("current/VERSION")).unwrap(),
        "one\n"
    );
}
