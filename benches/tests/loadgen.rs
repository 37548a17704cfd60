//! `ferry-load` against a live in-process server on 127.0.0.1:0: every mode produces real
//! measurements, errors are counted by code, and hostile attacks are all rejected.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ferry_bench::load::client::Dial;
use ferry_bench::load::hostile::{self, HostileOptions};
use ferry_bench::load::server::{self, discover, ServerOptions, Stop};
use ferry_bench::load::workload::{Mix, Targets};
use ferry_protocol::Key;
use ferry_server::{Config, Limits, Server};

struct Running {
    addr: SocketAddr,
    key: Key,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _root: tempfile::TempDir,
}

async fn start(limits: Limits) -> Running {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("small.bin"), vec![7u8; 1024]).unwrap();
    std::fs::write(root.path().join("large.bin"), vec![9u8; 3 << 20]).unwrap();
    std::fs::create_dir(root.path().join("dir")).unwrap();
    for i in 0..20 {
        std::fs::write(root.path().join(format!("dir/f{i}")), b"x").unwrap();
    }
    let key = Key::generate();
    let config = Config::new(root.path(), key.clone())
        .listen(["127.0.0.1:0".parse().unwrap()])
        .allow_plaintext(true)
        .limits(limits);
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addrs()[0];
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        key,
        stop: Some(tx),
        task,
        _root: root,
    }
}

impl Running {
    fn dial(&self, plaintext: bool) -> Dial {
        Dial {
            addr: self.addr,
            key: self.key.clone(),
            plaintext,
            timeout: Duration::from_secs(5),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_runs_every_request_kind_and_verifies_data() {
    let server = start(Limits::default()).await;
    for plaintext in [false, true] {
        let dial = server.dial(plaintext);
        let targets = discover(&dial, Targets::default()).await.unwrap();
        assert_eq!(
            targets.small_file,
            "dir/f0".to_string().replace("f0", &targets.small_file[4..])
        );
        assert_eq!(targets.large_file, "large.bin");
        let summary = server::run(ServerOptions {
            dial,
            connections: 4,
            in_flight: 4,
            mix: "list=1,stat=1,fetch-small=4,fetch-large=1,echo=1"
                .parse()
                .unwrap(),
            stop: Stop::Requests(400),
            rate: None,
            targets,
            threads: 2,
            live: false,
        })
        .await;
        assert_eq!(summary.requests, 400, "{:?}", summary.errors);
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        assert!(
            summary.bytes > 3 << 20,
            "fetch-large moved {} bytes",
            summary.bytes
        );
        assert!(summary.latency_us.p50 > 0 && summary.latency_us.max >= summary.latency_us.p99);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_holds_the_rate_and_counts_errors_by_code() {
    let server = start(Limits::default()).await;
    let dial = server.dial(false);
    let targets = Targets {
        list_dir: String::new(),
        stat: "no/such/file".into(),
        small_file: "small.bin".into(),
        large_file: String::new(),
    };
    let summary = server::run(ServerOptions {
        dial,
        connections: 2,
        in_flight: 8,
        mix: "stat=1".parse::<Mix>().unwrap(),
        stop: Stop::After(Duration::from_secs(2)),
        rate: Some(200.0),
        targets,
        threads: 2,
        live: false,
    })
    .await;
    // 200/s for 2 s is 400 requests; allow scheduling slack at the edges.
    assert!(
        (360..=420).contains(&summary.requests),
        "{} requests",
        summary.requests
    );
    let not_found: u64 = summary
        .errors
        .iter()
        .filter(|(k, _)| k.contains("NOT_FOUND"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(not_found, summary.requests, "{:?}", summary.errors);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_attacks_are_all_rejected_and_the_server_stays_correct() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(500),
        frame_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let server = start(limits).await;
    let dial = server.dial(false);
    let targets = discover(&dial, Targets::default()).await.unwrap();
    let report = hostile::run(HostileOptions {
        dial,
        attackers: 7,
        duration: Duration::from_secs(3),
        targets,
        live: false,
    })
    .await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(report.server_alive_after);
    assert!(report.under_attack.requests > 0 && report.baseline.requests > 0);
    for attack in [
        "BadMagic",
        "Garbage",
        "WrongKey",
        "OversizedBeforeAuth",
        "PathTraversal",
    ] {
        let tally = &report.attacks[attack];
        assert!(tally.attempts > 0, "{attack} never ran");
        assert!(
            tally
                .outcomes
                .keys()
                .all(|k| k.contains("0x02") || k.contains("0x03") || k.starts_with("closed")),
            "{attack}: {:?}",
            tally.outcomes
        );
    }
    let slow = &report.attacks["SlowHeader"];
    assert!(
        slow.outcomes.keys().any(|k| k.starts_with("closed")),
        "{:?}",
        slow.outcomes
    );
    server.stop().await;
}

#[test]
fn help_lists_the_exit_codes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-load"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes: 0"), "{help}");
}
