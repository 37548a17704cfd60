//! A client that stops reading while fetching a large file gets backpressure: the server's
//! memory stays flat instead of buffering the file. In its own test binary so that nothing
//! else moves this process's RSS while it is measured.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use std::time::Duration;

use common::{pattern, rss_bytes, ServerFixture};
use ferry_protocol::digest::{fetch_digest, FetchDigest};
use ferry_protocol::message::{FetchRequest, TO_END};
use ferry_protocol::{Message, RequestId};

const SIZE: usize = 64 << 20;
const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_bounded_memory() {
    let server = ServerFixture::start(|root| {
        std::fs::write(root.join("large.bin"), pattern(SIZE, 9)).unwrap();
    })
    .await;
    let expected = fetch_digest(&pattern(SIZE, 9));
    let mut clients = Vec::new();
    for plaintext in [true, false] {
        clients.push(
            common::Client::connect(server.addr, server.key.clone(), plaintext)
                .await
                .unwrap(),
        );
    }
    let baseline = rss_bytes();
    // Two connections (plaintext and encrypted), each with three fetches of the whole file,
    // none of which is read.
    for client in &mut clients {
        for id in 1..=3 {
            client
                .send(
                    RequestId(id),
                    Message::FetchRequest(FetchRequest::new("large.bin", 0, TO_END).unwrap()),
                )
                .await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let stalled_early = rss_bytes();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let stalled_late = rss_bytes();
    eprintln!(
        "rss baseline {} MiB, after 1s {} MiB, after 2s {} MiB (33 fetches of {} MiB unread)",
        baseline / MIB,
        stalled_early / MIB,
        stalled_late / MIB,
        SIZE as u64 / MIB
    );
    // 6 x 64 MiB were requested; buffering even one of them would add 64 MiB.
    assert!(
        stalled_late < baseline + 40 * MIB,
        "grew from {baseline} to {stalled_late}"
    );
    assert!(
        stalled_late < stalled_early + 8 * MIB,
        "still growing: {stalled_early} -> {stalled_late}"
    );

    // Backpressure, not loss: the plaintext client now reads all three streams to the end
    // and each one verifies.
    let client = &mut clients[0];
    let mut hashers = [FetchDigest::new(), FetchDigest::new(), FetchDigest::new()];
    let mut done = 0;
    while done < 3 {
        match client.recv().await {
            (RequestId(id), Message::Data(chunk)) => {
                hashers[id as usize - 1].update(&chunk);
            }
            (RequestId(id), Message::FetchEnd(end)) => {
                let hash = std::mem::take(&mut hashers[id as usize - 1]).finalize();
                assert_eq!(end.bytes, SIZE as u64);
                assert_eq!(end.digest, expected);
                assert_eq!(hash, expected);
                done += 1;
            }
            (_, Message::FetchResponse(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(clients);
    server.shutdown().await;
}
