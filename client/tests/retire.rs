//! Spec §5.5 from the client's side: a connection whose key nears its GCM usage limit is
//! retired (the server refuses new requests `SHUTTING_DOWN`, says a `SHUTTING_DOWN` goodbye, or
//! closes once its key is spent), and a download goes on over new connections to the same
//! server, resuming from the bytes it has and checking the whole file's digest at the end.
//!
//! The server's test-only `Limits::assume_blocks_used` starts each connection's key near its
//! limit, so a few hundred kilobytes spend it; the client's `assume_server_blocks_used` mirrors
//! it (a real client counts the server's 1 TiB itself). Connections are counted where they
//! are dialled. Nothing depends on timing: which request a retiring server still takes may
//! vary, the bytes and the bounds do not.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ferry_client::transfer::{self, Cancel, GetOptions, MAX_IDLE_CONNECTIONS};
use ferry_client::{Client, ClientConfig, NoProgress};
use ferry_protocol::transport::{Connecting, Connector, TcpConnector};
use ferry_protocol::Key;
use ferry_testkit::{block_on, data, TestServer};

/// The blocks a GCM key may protect (spec §5.5).
const LIMIT: u64 = 1 << 36;
/// What one connection may carry before its key is spent: 1 MiB of blocks.
const ROOM: u64 = (1 << 20) / 16;

/// Dials TCP and counts the connections.
#[derive(Debug, Default)]
struct Counting {
    tcp: TcpConnector,
    dials: AtomicUsize,
}

impl Connector for Counting {
    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        self.tcp.connect(addr)
    }
}

/// A server whose connections' keys start `LIMIT - room` blocks in, serving `files`.
fn server(room: u64, files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let key = Key::generate();
    let server = TestServer::start_with(dir.path(), &key, "127.0.0.1:0".parse().unwrap(), |c| {
        let limits = ferry_server::Limits {
            assume_blocks_used: LIMIT - room,
            ..ferry_server::Limits::default()
        };
        *c = c.clone().limits(limits);
    });
    (dir, server)
}

/// A client for `server` that knows where its keys start, and counts its connections.
fn config(server: &TestServer, room: u64) -> (ClientConfig, Arc<Counting>) {
    let dials = Arc::new(Counting::default());
    let mut config = ClientConfig::new(server.key.clone()).connector(dials.clone());
    config.assume_server_blocks_used = LIMIT - room;
    (config, dials)
}

#[test]
fn a_get_five_times_a_connections_key_allowance_completes_over_several_connections() {
    let want = data(5 << 20, 11);
    let (_dir, server) = server(ROOM, &[("big.bin", want.clone())]);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("big.bin");
    block_on(async {
        let (config, dials) = config(&server, ROOM);
        let client = Client::connect(server.addr, config).await.unwrap();
        let done = transfer::download_file(
            &client,
            "big.bin",
            &dest,
            &GetOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        assert_eq!(done.digest, ferry_protocol::digest::fetch_digest(&want));
        assert_eq!(
            (done.size, done.fetched, done.resumed_from),
            (5 << 20, 5 << 20, 0)
        );
        let dials = dials.dials.load(Ordering::SeqCst);
        // At most 1 MiB a connection: at least five carried data; some only refused or stated
        // the digest.
        eprintln!("whole file: {dials} connections");
        assert!((6..=20).contains(&dials), "{dials} connections");
    });
    assert!(std::fs::read(&dest).unwrap() == want, "the file differs");
}

#[test]
fn a_parallel_get_of_a_tree_completes_over_several_connections() {
    let files: Vec<(String, Vec<u8>)> = (0..3u64)
        .map(|i| {
            (
                format!("t/f{i}.bin"),
                data((2 << 20) + 1000 * i as usize, 20 + i),
            )
        })
        .collect();
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let (_dir, server) = server(ROOM, &named);
    let out = tempfile::tempdir().unwrap();
    block_on(async {
        let (config, dials) = config(&server, ROOM);
        let client = Client::connect(server.addr, config).await.unwrap();
        let options = GetOptions {
            jobs: 3,
            ..GetOptions::default()
        };
        let report = transfer::download_tree(
            &client,
            "t",
            &out.path().join("t"),
            &options,
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.files.len(), 3);
        let dials = dials.dials.load(Ordering::SeqCst);
        eprintln!("tree: {dials} connections");
        assert!((6..=60).contains(&dials), "{dials} connections");
    });
    for (name, bytes) in &files {
        let got = std::fs::read(out.path().join(name)).unwrap();
        assert!(got == *bytes, "{name} differs");
    }
}

/// A server that retires every connection before it can answer anything (its key is spent by
/// the first answer) is dialled a bounded number of times, and the error says so.
#[test]
fn reconnects_stop_after_connections_that_answer_nothing() {
    let (_dir, server) = server(1, &[("a.bin", data(1000, 1))]);
    let out = tempfile::tempdir().unwrap();
    block_on(async {
        let (config, dials) = config(&server, 1);
        let client = Client::connect(server.addr, config).await.unwrap();
        let err = transfer::download_file(
            &client,
            "a.bin",
            &out.path().join("a.bin"),
            &GetOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap_err();
        assert!(err.is_connection_error(), "{err}");
        let said = err.to_string();
        assert!(
            said.contains(&format!(
                "retired {MAX_IDLE_CONNECTIONS} connections in a row without answering anything"
            )),
            "{said}"
        );
        assert_eq!(
            dials.dials.load(Ordering::SeqCst),
            MAX_IDLE_CONNECTIONS as usize
        );
    });
}

/// Spec §5.5 for our own key: once our send direction passes its close-soon point, no new
/// request starts on the connection (it is refused here, unsent), and a download goes on over a
/// new connection.
#[test]
fn a_client_whose_own_key_nears_its_limit_starts_no_new_requests_there() {
    let want = data(300_000, 5);
    let (_dir, server) = server(LIMIT, &[("f.bin", want.clone())]);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("f.bin");
    block_on(async {
        let (mut config, dials) = config(&server, LIMIT);
        // The first record we seal crosses the point.
        config.assume_blocks_used = LIMIT - ferry_protocol::crypto::CLOSE_SOON_BLOCKS;
        let client = Client::connect(server.addr, config.clone()).await.unwrap();
        client.stat("f.bin").await.unwrap();
        let err = client.stat("f.bin").await.unwrap_err();
        assert!(err.is_retired(), "{err}");
        assert!(err.to_string().contains("near its usage limit"), "{err}");
        assert!(!client.is_closed());

        let dials_before = dials.dials.load(Ordering::SeqCst);
        let client = Client::connect(server.addr, config).await.unwrap();
        transfer::download_file(
            &client,
            "f.bin",
            &dest,
            &GetOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        // The stat on the first connection, the fetch on a second.
        assert_eq!(dials.dials.load(Ordering::SeqCst) - dials_before, 2);
    });
    assert!(std::fs::read(&dest).unwrap() == want, "the file differs");
}

/// A server that serves `files` and takes uploads, with its keys starting `LIMIT - room`
/// blocks in; what it stores lands in the returned directory.
fn upload_server(room: u64, files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let server = TestServer::start_with(
        dir.path(),
        &Key::generate(),
        "127.0.0.1:0".parse().unwrap(),
        |c| {
            c.allow_upload = true;
            let limits = ferry_server::Limits {
                assume_blocks_used: LIMIT - room,
                ..ferry_server::Limits::default()
            };
            *c = c.clone().limits(limits);
        },
    );
    (dir, server)
}

/// A put on a connection the server has retired (its key passed the close-soon point after a
/// stat, so the put is refused `SHUTTING_DOWN` or meets the goodbye) goes on over a new
/// connection, where it runs whole.
#[test]
fn a_put_on_a_connection_the_server_retired_continues_on_a_new_one() {
    let want = data(3 << 20, 31);
    let room = ferry_protocol::crypto::CLOSE_SOON_BLOCKS;
    let (dir, server) = upload_server(room, &[("seed.txt", b"seed".to_vec())]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("up.bin");
    std::fs::write(&src, &want).unwrap();
    block_on(async {
        let (config, dials) = config(&server, room);
        let client = Client::connect(server.addr, config).await.unwrap();
        // The answer crosses the server's close-soon point: it takes nothing new here.
        client.stat("seed.txt").await.unwrap();
        let done = transfer::upload_file(
            &client,
            &src,
            "up.bin",
            &transfer::PutOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        assert_eq!(
            (done.size, done.sent, done.resumed_from),
            (3 << 20, 3 << 20, 0)
        );
        assert_eq!(dials.dials.load(Ordering::SeqCst), 2);
    });
    assert!(
        std::fs::read(dir.path().join("up.bin")).unwrap() == want,
        "the file differs"
    );
}

/// Spec §5.5 for our own key during an upload: once our send direction passes its close-soon
/// point the upload stops sending there (the server keeps what it has), and goes on over a
/// new connection from the server's partial, checked against its prefix digest, until the
/// file is stored byte for byte. Each connection's key starts 1 MiB short of the point.
#[test]
fn a_put_longer_than_a_connections_key_allowance_continues_on_new_connections() {
    let want = data(4 << 20, 32);
    let (dir, server) = upload_server(LIMIT, &[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("up.bin");
    std::fs::write(&src, &want).unwrap();
    block_on(async {
        let (mut config, dials) = config(&server, LIMIT);
        config.assume_blocks_used = LIMIT - ferry_protocol::crypto::CLOSE_SOON_BLOCKS - ROOM;
        let client = Client::connect(server.addr, config).await.unwrap();
        let done = transfer::upload_file(
            &client,
            &src,
            "up.bin",
            &transfer::PutOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        assert_eq!(
            (done.size, done.sent, done.resumed_from),
            (4 << 20, 4 << 20, 0)
        );
        let dials = dials.dials.load(Ordering::SeqCst);
        eprintln!("put: {dials} connections");
        // Each connection carries at most 1 MiB, so at least 4. Each new one re-sends what the
        // server had not stored when the last retired, which on a loaded machine can be most of
        // the socket buffers (13 connections seen once in a full suite run on 2 cores), so the
        // upper bound only catches churn: a connection per few blocks would be hundreds.
        assert!((4..=64).contains(&dials), "{dials} connections");
    });
    assert!(
        std::fs::read(dir.path().join("up.bin")).unwrap() == want,
        "the file differs"
    );
}

/// `get URL -`: a download to a writer (stdout) has no partial file, so when its connection is
/// retired mid-stream it goes on over a new connection with a range fetch from the bytes
/// already written, and the bytes written, hashed as they went, are checked against the
/// server's digest of the whole file.
#[test]
fn a_get_to_a_writer_continues_over_new_connections_from_the_bytes_written() {
    let want = data(3 << 20, 41);
    let (_dir, server) = server(ROOM, &[("big.bin", want.clone())]);
    let mut out = Vec::new();
    block_on(async {
        let (config, dials) = config(&server, ROOM);
        let client = Client::connect(server.addr, config).await.unwrap();
        let done = transfer::download_to_writer(
            &client,
            "big.bin",
            &mut out,
            &GetOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        assert_eq!(done.digest, ferry_protocol::digest::fetch_digest(&want));
        assert_eq!(
            (done.size, done.fetched, done.resumed_from),
            (3 << 20, 3 << 20, 0)
        );
        let dials = dials.dials.load(Ordering::SeqCst);
        eprintln!("to a writer: {dials} connections");
        // At most 1 MiB a connection.
        assert!((4..=14).contains(&dials), "{dials} connections");
    });
    assert!(out == want, "the bytes written differ");
}

/// A put whose end the server carried out (the file took its name) but whose answer was cut
/// by the key's limit: on the next connection the server says the file exists, and the client
/// finds it is this file (the whole-file digest, spec §3.11) rather than failing. The server's
/// key has room for exactly the first answer, not the end, beyond what it keeps to close.
#[test]
fn a_put_whose_end_was_cut_by_the_key_limit_finds_its_file_stored() {
    let want = data(100_000, 33);
    // A 48-byte PutResponse costs 4 blocks and so does the 40-byte PutEnd; the 76-byte
    // ALREADY_EXISTS refusal costs 6 and a 52-byte digest answer 5: 7 takes each of those
    // but not the answer and the end together.
    let reserve = ferry_server::key_reserve_blocks(&ferry_server::Limits::default());
    let room = reserve + 7;
    let (dir, server) = upload_server(room, &[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("up.bin");
    std::fs::write(&src, &want).unwrap();
    block_on(async {
        let (config, dials) = config(&server, room);
        let client = Client::connect(server.addr, config).await.unwrap();
        let done = transfer::upload_file(
            &client,
            &src,
            "up.bin",
            &transfer::PutOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap();
        assert_eq!(done.digest, ferry_protocol::digest::fetch_digest(&want));
        // The upload, the refusal, the digest.
        assert_eq!(dials.dials.load(Ordering::SeqCst), 3);
    });
    assert!(
        std::fs::read(dir.path().join("up.bin")).unwrap() == want,
        "the file differs"
    );
}

/// A writer that runs `swap` once, before it takes its first bytes.
struct SwapOnFirstWrite {
    out: Vec<u8>,
    swap: Option<Box<dyn FnOnce() + Send>>,
}

impl tokio::io::AsyncWrite for SwapOnFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(swap) = self.swap.take() {
            swap();
        }
        self.out.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// `get URL -` continued over a new connection checks the bytes it wrote against the whole
/// file's digest, not only each range's: here the file is replaced (same size, same mtime)
/// once the first chunk is written, so every range checks out but the whole does not. Each
/// connection's key has room for one 64 KiB chunk beyond what the server keeps to close, so the
/// first connection is cut after exactly that chunk, whenever the swap lands.
#[test]
fn a_get_to_a_writer_continued_over_a_replaced_file_fails_the_whole_file_check() {
    use ferry_protocol::crypto::gcm;
    let old = data(256 << 10, 42);
    // Seeds differ above the lowest bit (`data` sets it).
    let new = data(256 << 10, 44);
    let reserve = ferry_server::key_reserve_blocks(&ferry_server::Limits::default());
    // The fetch's 36-byte header, one chunk, and less than another.
    let room = reserve + gcm::blocks(36) + gcm::blocks(64 << 10) + 100;
    let (dir, server) = server(room, &[("f.bin", old.clone())]);
    let path = dir.path().join("f.bin");
    let staged = dir.path().join("staged");
    let new2 = new.clone();
    let swap = move || {
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&staged, &new2).unwrap();
        let file = std::fs::File::options().write(true).open(&staged).unwrap();
        file.set_modified(mtime).unwrap();
        std::fs::rename(&staged, &path).unwrap();
    };
    let mut out = SwapOnFirstWrite {
        out: Vec::new(),
        swap: Some(Box::new(swap)),
    };
    block_on(async {
        let (config, dials) = config(&server, room);
        let client = Client::connect(server.addr, config).await.unwrap();
        let err = transfer::download_to_writer(
            &client,
            "f.bin",
            &mut out,
            &GetOptions::default(),
            &NoProgress,
            &Cancel::never(),
        )
        .await
        .unwrap_err();
        // The first connection took the chunk, three more one each, one the digest.
        assert_eq!(dials.dials.load(Ordering::SeqCst), 5);
        assert!(
            matches!(err, ferry_client::ClientError::Integrity(_))
                && err.to_string().contains("do not match the server's digest"),
            "{err}"
        );
    });
    assert!(
        out.out[..64 << 10] == old[..64 << 10],
        "the first chunk is the old file's"
    );
    assert!(
        out.out[64 << 10..] == new[64 << 10..],
        "the rest is the new file's"
    );
}
