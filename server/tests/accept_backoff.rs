//! Running out of file descriptors makes `accept` fail with EMFILE until something closes. The
//! server must log and back off, not spin, and must resume serving once descriptors free up.
//! In its own test binary: it lowers this process's descriptor limit.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use std::time::Duration;

use common::{Client, ServerFixture};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// User + system CPU seconds of this whole process, from an already open `/proc/self/stat`
/// (no descriptor is free to open it while the limit is exhausted).
fn cpu_seconds(proc_stat: &std::fs::File) -> f64 {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let n = proc_stat.read_at(&mut buf, 0).unwrap();
    let stat = String::from_utf8_lossy(&buf[..n]).into_owned();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_instead_of_spinning() {
    let server = ServerFixture::start(|root| std::fs::write(root.join("f"), b"x").unwrap()).await;
    let proc_stat = std::fs::File::open("/proc/self/stat").unwrap();
    let original = getrlimit(Resource::Nofile);
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_now + 64),
            maximum: original.maximum,
        },
    )
    .unwrap();

    // Use up every descriptor, then free exactly one for the client's socket.
    let mut hogs = Vec::new();
    for _ in 0..10_000 {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(_) => break,
        }
    }
    assert!(!hogs.is_empty() && hogs.len() < 10_000);
    hogs.pop();
    let connecting = tokio::spawn(Client::connect(server.addr, server.key.clone(), false));

    // The server cannot accept it (EMFILE). Over a second it must stay nearly idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_seconds(&proc_stat);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(&proc_stat) - before;
    eprintln!("cpu used during 1 s of EMFILE: {used:.2} s");
    assert!(used < 0.25, "accept loop spun: {used} s of cpu in 1 s");
    assert!(
        !connecting.is_finished(),
        "handshake cannot complete before accept"
    );

    // Free the descriptors: the pending connection is accepted and served.
    drop(hogs);
    let mut client = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("accepted after descriptors freed")
        .unwrap()
        .expect("handshake");
    assert_eq!(client.ping(b"back").await.as_ref(), b"back");
    setrlimit(Resource::Nofile, original).unwrap();
    drop(client);
    server.shutdown().await;
}
