//! The library against a real server: many requests multiplexed on one connection, ranges,
//! cancellation by dropping a stream (the connection stays usable), recursive listings, ping,
//! and plaintext sessions.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use ferry_client::{Client, ClientConfig, ClientError, FerryUrl};
use ferry_protocol::digest::fetch_digest;
use ferry_protocol::message::TO_END;
use ferry_protocol::{ErrorCode, Key};
use ferry_testkit::{block_on, data, tree, TestServer};

fn server(big: usize) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), big);
    let key = Key::generate();
    let server = TestServer::start(dir.path(), &key);
    (dir, server)
}

#[test]
fn concurrent_fetches_share_one_connection() {
    let size = 2 << 20;
    let (_dir, server) = server(size);
    block_on(async {
        let client = Client::connect(server.addr, ClientConfig::new(server.key.clone()))
            .await
            .unwrap();
        let expected = data(size, 42);
        // Eight ranges of the same file at once, plus listings and pings interleaved.
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let offset = i * (size as u64 / 8);
                let mut stream = client
                    .fetch("big.bin", offset, size as u64 / 8)
                    .await
                    .unwrap();
                let mut got = Vec::new();
                while let Some(chunk) = stream.chunk().await.unwrap() {
                    got.extend_from_slice(&chunk);
                }
                assert_eq!(stream.digest(), Some(fetch_digest(&got)));
                (offset as usize, got)
            }));
        }
        let listing = client.list("", true, 8).await.unwrap();
        assert!(listing.iter().any(|e| e.name == "docs/deep/x.bin"));
        client.ping(Bytes::from_static(b"x")).await.unwrap();
        for task in tasks {
            let (offset, got) = task.await.unwrap();
            assert_eq!(got, expected[offset..offset + size / 8]);
        }
    });
}

#[test]
fn dropping_a_fetch_cancels_it_and_the_connection_goes_on() {
    let (_dir, server) = server(8 << 20);
    block_on(async {
        let client = Client::connect(server.addr, ClientConfig::new(server.key.clone()))
            .await
            .unwrap();
        for _ in 0..3 {
            let mut stream = client.fetch("big.bin", 0, TO_END).await.unwrap();
            assert_eq!(stream.response().size, 8 << 20);
            let first = stream.chunk().await.unwrap().unwrap();
            assert!(!first.is_empty());
            drop(stream);
        }
        // Whatever was still in flight for the cancelled fetches is discarded; new requests work.
        let (_, small) = client.fetch_all("a.txt").await.unwrap();
        assert_eq!(small, b"alpha\n");
        assert_eq!(client.stat("docs").await.unwrap().name, "docs");
        assert!(!client.is_closed());
    });
}

#[test]
fn remote_errors_keep_their_code() {
    let (_dir, server) = server(100);
    block_on(async {
        let client = Client::connect(server.addr, ClientConfig::new(server.key.clone()))
            .await
            .unwrap();
        let err = client.fetch("missing", 0, TO_END).await.unwrap_err();
        assert_eq!(err.remote_code(), Some(ErrorCode::NOT_FOUND));
        assert_eq!(err.exit_code(), 1);
        let err = client.list("a.txt", false, 0).await.unwrap_err();
        assert_eq!(err.remote_code(), Some(ErrorCode::NOT_A_DIRECTORY));
        let err = client.fetch("big.bin", 1000, 10).await.unwrap_err();
        assert_eq!(err.remote_code(), Some(ErrorCode::INVALID_RANGE));
        let err = client.stat("../etc").await.unwrap_err();
        assert!(matches!(err, ClientError::Remote(_)), "{err}");
    });
}

#[test]
fn plaintext_sessions_and_urls() {
    let (_dir, server) = server(100_000);
    block_on(async {
        let url: FerryUrl = server.url("").parse().unwrap();
        let client = Client::connect(&url, ClientConfig::new(server.key.clone()).plaintext(true))
            .await
            .unwrap();
        let (head, body) = client.fetch_all("big.bin").await.unwrap();
        assert_eq!(head.size, 100_000);
        assert_eq!(body, data(100_000, 42));
        let rtt = client.ping(Bytes::from(vec![7u8; 4096])).await.unwrap();
        assert!(rtt < Duration::from_secs(5));
    });
}

#[test]
fn connect_failures_are_classified() {
    let (_dir, server) = server(100);
    block_on(async {
        let err = Client::connect(server.addr, ClientConfig::new(Key::generate()))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Auth { .. }), "{err}");
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = Client::connect(free, ClientConfig::new(Key::generate()))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert_eq!(err.exit_code(), 3);
    });
}

#[test]
fn keep_alive_pings_keep_an_idle_connection_open() {
    let (_dir, server) = server(100);
    block_on(async {
        // Ping after 100 ms of silence and give up 400 ms after an unanswered ping: if the
        // server did not answer id-0 pings, two seconds of idling would close the connection.
        let config = ClientConfig::new(server.key.clone())
            .keepalive(Duration::from_millis(100), Duration::from_millis(400));
        let client = Client::connect(server.addr, config).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!client.is_closed());
        assert_eq!(client.stat("a.txt").await.unwrap().size, 6);
    });
}

#[test]
fn trees_wait_out_a_busy_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for i in 0..12 {
        std::fs::create_dir_all(root.join("t")).unwrap();
        std::fs::write(root.join(format!("t/f{i:02}")), data(50_000 + i, i as u64)).unwrap();
    }
    let key = Key::generate();
    // Two requests in flight per connection; the tree asks for eight at a time.
    let server = TestServer::start_with(&root, &key, "127.0.0.1:0".parse().unwrap(), |c| {
        c.limits.max_in_flight_per_connection = 2;
    });
    let dest = dir.path().join("out");
    block_on(async {
        let client = Client::connect(server.addr, ClientConfig::new(key.clone()))
            .await
            .unwrap();
        let options = ferry_client::transfer::GetOptions {
            jobs: 8,
            ..Default::default()
        };
        let report = ferry_client::transfer::download_tree(
            &client,
            "t",
            &dest,
            &options,
            &ferry_client::NoProgress,
            &ferry_client::transfer::Cancel::never(),
        )
        .await
        .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.files.len(), 12);
    });
    for i in 0..12 {
        let got = std::fs::read(dest.join(format!("f{i:02}"))).unwrap();
        assert_eq!(got, data(50_000 + i, i as u64));
    }
}

/// Issue 9 item 2: a full server answers the handshake with BUSY; the client tries again with
/// a bounded backoff and gets in once a slot frees.
#[test]
fn a_busy_server_is_tried_again_until_a_slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), 1024);
    let key = Key::generate();
    let server = TestServer::start_with(dir.path(), &key, "127.0.0.1:0".parse().unwrap(), |c| {
        let limits = ferry_server::Limits {
            max_connections: 1,
            max_pending: 1,
            max_pending_per_address: 1,
            ..ferry_server::Limits::default()
        };
        *c = c.clone().limits(limits);
    });
    block_on(async {
        let holder = Client::connect(server.addr, ClientConfig::new(key.clone()))
            .await
            .unwrap();
        holder.ping(Bytes::from_static(b"x")).await.unwrap();

        // With the only slot held throughout, the retries run out and the error says BUSY.
        let config = ClientConfig::new(key.clone()).busy_retries(2);
        let started = std::time::Instant::now();
        let err = Client::connect(server.addr, config).await.unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("refused the connection: too many connections"),
            "{said}"
        );
        assert!(
            !said.contains("peer refused the handshake"),
            "said twice: {said}"
        );
        // Two pauses of at least 100 ms and 200 ms show both retries happened.
        assert!(started.elapsed() >= Duration::from_millis(300));

        // Freed while the newcomer is still retrying (its pauses add up to over 3 s): it gets in.
        let waiting = tokio::spawn(Client::connect(
            server.addr,
            ClientConfig::new(key.clone()).busy_retries(5),
        ));
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(holder);
        let client = waiting.await.unwrap().unwrap();
        client.ping(Bytes::from_static(b"y")).await.unwrap();
    });
}
