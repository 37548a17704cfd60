//! 500 connections that declare a maximum-length frame and then stall: memory stays bounded,
//! deadlines close every one of them, and an honest client is served meanwhile. In its own
//! test binary so that nothing else moves this process's RSS while it is measured.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{rss_bytes, short_limits, ServerFixture};
use ferry_protocol::message::TO_END;
use ferry_protocol::{ClientHandshakeConfig, FrameType, Header, RequestId, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;
const PER_KIND: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_stalled_connections() {
    let server = ServerFixture::start_with(
        |root| std::fs::write(root.join("f.txt"), b"honest content").unwrap(),
        |c| c.limits(short_limits()),
    )
    .await;
    let max_body = ferry_server::Limits::default().max_body;
    let baseline = rss_bytes();
    let started = Instant::now();
    let mut stalled = Vec::new();

    // Half stall inside the handshake: a ClientHello header declaring the largest handshake
    // body, a few bytes of it, then nothing.
    for _ in 0..PER_KIND {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut header = BytesMut::new();
        Header::new(
            FrameType::CLIENT_HELLO,
            Service::HANDSHAKE,
            RequestId::CONNECTION,
            2048,
        )
        .encode(&mut header);
        stream.write_all(&header).await.unwrap();
        stream.write_all(&[1, 1, 0]).await.unwrap();
        stalled.push(stream);
    }
    // Half complete the handshake, then declare a maximum-length frame and stall in its body.
    for _ in 0..PER_KIND {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let (_session, _) = ferry_protocol::tokio::client_handshake(
            &mut stream,
            ClientHandshakeConfig::new(server.key.clone()),
        )
        .await
        .unwrap();
        let mut header = BytesMut::new();
        Header::new(FrameType::REQUEST, Service::FETCH, RequestId(1), max_body).encode(&mut header);
        stream.write_all(&header).await.unwrap();
        stream.write_all(&[0u8; 1000]).await.unwrap();
        stalled.push(stream);
    }
    let opened = started.elapsed();
    let during = rss_bytes();

    // An honest client is served while all of them hang.
    let mut honest = server.client().await;
    assert_eq!(
        honest.fetch("f.txt", 0, TO_END).await.unwrap().data,
        b"honest content"
    );

    // Every stalled connection is closed by a deadline (2 s in this config).
    let mut tasks = Vec::new();
    for mut stream in stalled {
        tasks.push(tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            loop {
                match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut sink)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
                    Ok(Ok(_)) => continue,
                    Err(_) => panic!("a stalled connection stayed open"),
                }
            }
        }));
    }
    let mut last_close = started;
    for task in tasks {
        last_close = last_close.max(task.await.unwrap());
    }
    eprintln!(
        "opened {} stalled connections in {opened:?}; rss {} MiB -> {} MiB while stalled; \
         all closed {:?} after the first connect",
        2 * PER_KIND,
        baseline / MIB,
        during / MIB,
        last_close - started
    );
    assert!(
        during < baseline + 64 * MIB,
        "rss grew from {baseline} to {during}"
    );
    assert!(last_close - started < opened + Duration::from_secs(10));

    // And the honest client is still fine afterwards.
    assert_eq!(honest.ping(b"still here").await.as_ref(), b"still here");
    server.shutdown().await;
}
