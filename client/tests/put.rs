//! Uploads (spec §3.12) through the library against a real server: a round trip that fetches
//! back identical bytes, refusals (read-only, existing file, a path that leaves the root, a
//! planted link, quota), a resume from exactly what the server holds, a corrupted partial that
//! is detected and started over, and uploads killed at seeded random points that resume and end
//! byte-identical without the final name ever appearing early.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_client::progress::{FileProgress, NoProgress, TransferProgress};
use ferry_client::transfer::{cancel_pair, upload_file, upload_tree, Cancel, PutOptions};
use ferry_client::{Client, ClientConfig, ClientError};
use ferry_protocol::digest::fetch_digest;
use ferry_protocol::message::PutRequest;
use ferry_protocol::{ErrorCode, Key};
use ferry_testkit::{block_on, data, wait_for, TestServer};

/// A served root (inside `outer`, beside a canary) and a local directory with `big.bin`.
struct Setup {
    outer: tempfile::TempDir,
    local: tempfile::TempDir,
}

impl Setup {
    fn new(big: usize) -> Self {
        let outer = tempfile::tempdir().unwrap();
        std::fs::create_dir(outer.path().join("root")).unwrap();
        std::fs::create_dir(outer.path().join("outside")).unwrap();
        std::fs::write(outer.path().join("canary.txt"), b"CANARY").unwrap();
        let local = tempfile::tempdir().unwrap();
        std::fs::write(local.path().join("big.bin"), data(big, 42)).unwrap();
        Self { outer, local }
    }

    fn root(&self) -> PathBuf {
        self.outer.path().join("root")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.local.path().join(name)
    }

    fn server(&self, tweak: impl FnOnce(&mut ferry_server::Config)) -> TestServer {
        TestServer::start_with(
            &self.root(),
            &Key::generate(),
            "127.0.0.1:0".parse().unwrap(),
            |config| {
                config.allow_upload = true;
                tweak(config);
            },
        )
    }

    /// Names in the served directory `dir` that are partial uploads.
    fn partials(&self, dir: &str) -> Vec<PathBuf> {
        let mut out: Vec<_> = std::fs::read_dir(self.root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".ferry-up-"))
            .collect();
        out.sort();
        out
    }
}

async fn connect(server: &TestServer) -> Client {
    Client::connect(server.addr, ClientConfig::new(server.key.clone()))
        .await
        .unwrap()
}

async fn put(
    client: &Client,
    local: &Path,
    remote: &str,
    options: &PutOptions,
) -> Result<ferry_client::transfer::Uploaded, ClientError> {
    upload_file(
        client,
        local,
        remote,
        options,
        &NoProgress,
        &Cancel::never(),
    )
    .await
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    let err = result.unwrap_err();
    (err.remote_code().expect("a remote error"), err.to_string())
}

#[test]
fn an_upload_fetches_back_byte_identical() {
    let size = 3 * (1 << 20) + 123;
    let setup = Setup::new(size);
    let server = setup.server(|_| {});
    block_on(async {
        let client = connect(&server).await;
        let done = put(
            &client,
            &setup.file("big.bin"),
            "big.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            (done.size, done.sent, done.resumed_from),
            (size as u64, size as u64, 0)
        );
        let (_, back) = client.fetch_all("big.bin").await.unwrap();
        assert!(back == data(size, 42), "fetched bytes differ");
        assert_eq!(done.digest, fetch_digest(&back));
        // An empty file, and the mode bits travel.
        std::fs::write(setup.file("empty"), b"").unwrap();
        std::fs::set_permissions(
            setup.file("empty"),
            std::os::unix::fs::PermissionsExt::from_mode(0o751),
        )
        .unwrap();
        put(
            &client,
            &setup.file("empty"),
            "empty",
            &PutOptions::default(),
        )
        .await
        .unwrap();
        let entry = client.stat("empty").await.unwrap();
        assert_eq!((entry.size, entry.mode), (0, 0o751));
    });
    assert!(setup.partials("").is_empty());
}

#[test]
fn a_read_only_server_refuses_uploads_with_read_only() {
    let setup = Setup::new(10);
    let server = TestServer::start(&setup.root(), &Key::generate());
    block_on(async {
        let client = connect(&server).await;
        let (code, text) = refusal(
            put(
                &client,
                &setup.file("big.bin"),
                "big.bin",
                &PutOptions::default(),
            )
            .await,
        );
        assert_eq!(code, ErrorCode::READ_ONLY);
        assert_eq!(code.0, 0x030A);
        assert!(text.contains("read-only"), "{text}");
    });
    assert!(!setup.root().join("big.bin").exists());
    assert!(setup.partials("").is_empty());
}

#[test]
fn an_existing_file_is_replaced_only_with_force() {
    let setup = Setup::new(1000);
    std::fs::write(setup.root().join("big.bin"), b"old").unwrap();
    let server = setup.server(|_| {});
    block_on(async {
        let client = connect(&server).await;
        let (code, _) = refusal(
            put(
                &client,
                &setup.file("big.bin"),
                "big.bin",
                &PutOptions::default(),
            )
            .await,
        );
        assert_eq!(code, ErrorCode::ALREADY_EXISTS);
        assert_eq!(std::fs::read(setup.root().join("big.bin")).unwrap(), b"old");
        let force = PutOptions {
            force: true,
            ..PutOptions::default()
        };
        put(&client, &setup.file("big.bin"), "big.bin", &force)
            .await
            .unwrap();
    });
    assert_eq!(
        std::fs::read(setup.root().join("big.bin")).unwrap(),
        data(1000, 42)
    );
}

#[test]
fn paths_leaving_the_root_and_planted_links_are_refused() {
    let setup = Setup::new(100);
    let root = setup.root();
    std::os::unix::fs::symlink("../outside", root.join("linkdir")).unwrap();
    std::os::unix::fs::symlink("../canary.txt", root.join("escape")).unwrap();
    std::os::unix::fs::symlink(setup.outer.path().join("canary.txt"), root.join("abs")).unwrap();
    let server = setup.server(|_| {});
    block_on(async {
        let client = connect(&server).await;
        let force = PutOptions {
            force: true,
            parents: true,
            ..PutOptions::default()
        };
        for remote in [
            "../evil.bin",
            "linkdir/evil.bin",
            "linkdir/new/evil.bin",
            "escape",
            "abs",
            ".evil.ferry-up-0011223344556677",
        ] {
            let (code, text) = refusal(put(&client, &setup.file("big.bin"), remote, &force).await);
            assert_eq!(code, ErrorCode::INVALID_PATH, "{remote}: {text}");
        }
        // Without parents, a missing directory is not made.
        let (code, _) = refusal(
            put(
                &client,
                &setup.file("big.bin"),
                "no/such/dir.bin",
                &PutOptions::default(),
            )
            .await,
        );
        assert_eq!(code, ErrorCode::NOT_FOUND);
    });
    let outer = setup.outer.path();
    assert_eq!(std::fs::read(outer.join("canary.txt")).unwrap(), b"CANARY");
    assert_eq!(std::fs::read_dir(outer.join("outside")).unwrap().count(), 0);
    assert!(!outer.join("evil.bin").exists());
    assert!(std::fs::symlink_metadata(root.join("escape"))
        .unwrap()
        .is_symlink());
    assert!(!root.join("no").exists());
}

#[test]
fn a_tree_lands_under_new_directories() {
    let setup = Setup::new(10);
    let tree = setup.local.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/c.txt"), b"c").unwrap();
    std::fs::write(tree.join("top.txt"), b"top").unwrap();
    let server = setup.server(|_| {});
    block_on(async {
        let client = connect(&server).await;
        let report = upload_tree(
            &client,
            &tree,
            "in/tree",
            &PutOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.files.len(), 2);
    });
    assert_eq!(
        std::fs::read(setup.root().join("in/tree/a/b/c.txt")).unwrap(),
        b"c"
    );
    assert_eq!(
        std::fs::read(setup.root().join("in/tree/top.txt")).unwrap(),
        b"top"
    );
}

#[test]
fn the_quota_counts_bytes_per_principal_and_refuses_past_it() {
    let setup = Setup::new(600);
    let server = setup.server(|config| config.limits.upload_quota = 1000);
    block_on(async {
        let client = connect(&server).await;
        put(
            &client,
            &setup.file("big.bin"),
            "one.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap();
        // 600 used; another 600 would make 1200 > 1000.
        let (code, text) = refusal(
            put(
                &client,
                &setup.file("big.bin"),
                "two.bin",
                &PutOptions::default(),
            )
            .await,
        );
        assert_eq!(code, ErrorCode::QUOTA_EXCEEDED);
        assert!(
            text.contains("quota of 1000 bytes") && text.contains("600"),
            "{text}"
        );
        // Another connection is the same principal.
        let other = connect(&server).await;
        let (code, _) = refusal(
            put(
                &other,
                &setup.file("big.bin"),
                "two.bin",
                &PutOptions::default(),
            )
            .await,
        );
        assert_eq!(code, ErrorCode::QUOTA_EXCEEDED);
    });
    assert!(!setup.root().join("two.bin").exists());
}

#[test]
fn a_larger_file_than_the_servers_limit_is_refused() {
    let setup = Setup::new(5000);
    let server = setup.server(|config| config.limits.max_upload_size = 4096);
    block_on(async {
        let client = connect(&server).await;
        let (code, text) = refusal(
            put(
                &client,
                &setup.file("big.bin"),
                "big.bin",
                &PutOptions::default(),
            )
            .await,
        );
        assert_eq!(code, ErrorCode::TOO_LARGE);
        assert!(text.contains("5000") && text.contains("4096"), "{text}");
    });
}

/// The first attempt sends `sent` bytes of `content` under the digest of `announced`, waits
/// until the server has written them all, and drops the connection.
async fn partial_attempt(
    server: &TestServer,
    setup: &Setup,
    remote: &str,
    announced: &[u8],
    content: &[u8],
    sent: usize,
) {
    let client = connect(server).await;
    let request = PutRequest::new(
        remote,
        announced.len() as u64,
        0o644,
        0,
        fetch_digest(announced),
    )
    .unwrap();
    let mut upload = client.put(request).await.unwrap();
    assert_eq!(upload.offset(), 0);
    for chunk in content[..sent].chunks(65_536) {
        upload.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    // The server writes what it received; wait for the partial to hold all of it.
    let held = || {
        setup
            .partials("")
            .first()
            .is_some_and(|p| std::fs::metadata(p).unwrap().len() == sent as u64)
    };
    assert!(
        wait_for(Duration::from_secs(20), held),
        "the server wrote the partial"
    );
    drop(upload);
    drop(client);
}

#[test]
fn a_resume_continues_from_exactly_what_the_server_holds() {
    let size = 2 * (1 << 20) + 7;
    let setup = Setup::new(size);
    let server = setup.server(|_| {});
    let content = data(size, 42);
    block_on(async {
        partial_attempt(&server, &setup, "big.bin", &content, &content, 700_000).await;
        assert!(!setup.root().join("big.bin").exists());
        let client = connect(&server).await;
        let done = put(
            &client,
            &setup.file("big.bin"),
            "big.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            (done.resumed_from, done.sent),
            (700_000, size as u64 - 700_000)
        );
    });
    assert!(std::fs::read(setup.root().join("big.bin")).unwrap() == content);
    assert!(setup.partials("").is_empty());
}

/// Records what a transfer prints.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl TransferProgress for Lines {
    fn file(&self, _name: &str, _total: u64, _done: u64) -> Box<dyn FileProgress> {
        Box::new(NoProgress)
    }

    fn println(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

#[test]
fn a_partial_that_does_not_match_the_local_file_is_started_over() {
    let size = 1 << 20;
    let setup = Setup::new(size);
    let server = setup.server(|_| {});
    let content = data(size, 42);
    let mut wrong = content.clone();
    wrong[10] ^= 0xff;
    block_on(async {
        // The server holds 300 000 bytes that claim to be the start of `content` but are not.
        partial_attempt(&server, &setup, "big.bin", &content, &wrong, 300_000).await;
        let client = connect(&server).await;
        let lines = Lines::default();
        let done = upload_file(
            &client,
            &setup.file("big.bin"),
            "big.bin",
            &PutOptions::default(),
            &lines,
            &Cancel::never(),
        )
        .await
        .unwrap();
        assert_eq!((done.resumed_from, done.sent), (0, size as u64));
        let lines = lines.0.lock().unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("does not match") && l.contains("300000")),
            "{lines:?}"
        );
    });
    assert!(std::fs::read(setup.root().join("big.bin")).unwrap() == content);
}

/// Kills the transfer after `kill_after` chunks, and checks at every chunk that the final name
/// does not exist yet.
struct Killer {
    chunks: Arc<AtomicUsize>,
    kill_after: usize,
    kill: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
    final_path: PathBuf,
}

impl TransferProgress for Killer {
    fn file(&self, _name: &str, _total: u64, _done: u64) -> Box<dyn FileProgress> {
        Box::new(KillerFile {
            chunks: self.chunks.clone(),
            kill_after: self.kill_after,
            kill: self.kill.clone(),
            final_path: self.final_path.clone(),
        })
    }

    fn println(&self, _line: &str) {}
}

struct KillerFile {
    chunks: Arc<AtomicUsize>,
    kill_after: usize,
    kill: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
    final_path: PathBuf,
}

impl FileProgress for KillerFile {
    fn inc(&self, _bytes: u64) {
        assert!(
            !self.final_path.exists(),
            "the final name exists mid-upload"
        );
        if self.chunks.fetch_add(1, Ordering::SeqCst) + 1 == self.kill_after {
            if let Some(kill) = self.kill.lock().unwrap().take() {
                let _ = kill.send(());
                // Die here, as kill -9 would: without this the task went on sending until the
                // abort reached it and, on a fast run, could finish the file before it did.
                std::panic::resume_unwind(Box::new("killed at the kill point"));
            }
        }
    }

    fn finish(&self) {}

    fn abandon(&self) {}
}

#[test]
fn an_upload_killed_at_random_points_resumes_and_ends_byte_identical() {
    let size: usize = 5 * (1 << 20) + 4321;
    let chunks = size.div_ceil(65_536);
    let setup = Setup::new(size);
    let server = setup.server(|_| {});
    let final_path = setup.root().join("in/big.bin");
    // Seeded kill points: xorshift from 2024, each within the chunks still to send.
    let mut x: u64 = 2024;
    let mut kill_points = Vec::new();
    for _ in 0..5 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        kill_points.push(1 + (x % (chunks as u64 / 8)) as usize);
    }
    let options = PutOptions {
        parents: true,
        ..PutOptions::default()
    };
    block_on(async {
        for &kill_after in &kill_points {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let killer = Killer {
                chunks: Arc::default(),
                kill_after,
                kill: Arc::new(Mutex::new(Some(tx))),
                final_path: final_path.clone(),
            };
            let client = connect(&server).await;
            let local = setup.file("big.bin");
            let options = options.clone();
            let (_handle, cancel) = cancel_pair();
            let task = tokio::spawn(async move {
                upload_file(&client, &local, "in/big.bin", &options, &killer, &cancel).await
            });
            let abort = task.abort_handle();
            tokio::select! {
                biased;
                _ = rx => abort.abort(),
                done = task => panic!("the upload ended before its kill point: {done:?}"),
            }
            // The task, and with it the only client, is gone: the connection is dropped.
            assert!(!final_path.exists(), "the final name exists after a kill");
        }
        let client = connect(&server).await;
        let done = put(&client, &setup.file("big.bin"), "in/big.bin", &options)
            .await
            .unwrap();
        assert_eq!(done.size, size as u64);
    });
    assert!(std::fs::read(&final_path).unwrap() == data(size, 42));
    assert!(
        setup.partials("in").is_empty(),
        "{:?}",
        setup.partials("in")
    );
}
