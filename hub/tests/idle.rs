//! Memory per idle connection (spec/HUB.md §7): the `ferry-hub` binary in its own process, N
//! authenticated connections from this one (each did the identity handshake and one request,
//! then stays idle); the hub's resident memory grows by at most a bound per connection.
//! `HUB_IDLE_CONNECTIONS=5000 cargo test --release -p ferry-hub --test idle -- --nocapture`
//! (`benches/hub/idle.sh`) measures at scale.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ferry_hub::HubConn;
use ferry_protocol::identity::{Identity, NodeId};

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_the_hub_bounded_memory() {
    let n: usize = std::env::var("HUB_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let state = tempfile::tempdir().unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_ferry-hub"))
            .args(["--listen", "127.0.0.1:0", "--state"])
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // ferry://ID@127.0.0.1:PORT
    let rest = line.trim().strip_prefix("ferry://").unwrap();
    let (id, addr) = rest.split_once('@').unwrap();
    let hub_id: NodeId = id.parse().unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();

    let me = Identity::from_secret([7; 32]);
    // Warm up: the first connections allocate the runtime's and allocator's pools.
    let mut conns = Vec::with_capacity(n + 20);
    for _ in 0..20 {
        conns.push(
            HubConn::connect_addr(addr, Some(hub_id), &me)
                .await
                .unwrap(),
        );
    }
    let before = rss(pid);
    for i in 0..n {
        let mut conn = HubConn::connect_addr(addr, Some(hub_id), &me)
            .await
            .unwrap();
        if i % 50 == 0 {
            // A request now and then: the connections are served, not just accepted.
            assert!(conn.resolve("nobody").await.is_err());
        }
        conns.push(conn);
    }
    // Let the hub settle (the last handshakes' tasks park).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let after = rss(pid);
    let per = after.saturating_sub(before) / n as u64;
    println!(
        "hub RSS: {} KiB before, {} KiB after {n} idle connections: {per} bytes each",
        before / 1024,
        after / 1024
    );
    // A session, two 8 KiB codec buffers and a task: well under 64 KiB.
    assert!(per < 64 * 1024, "{per} bytes per idle connection");
    drop(conns);
}
