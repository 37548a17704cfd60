//! Graceful shutdown: stop accepting, let in-flight transfers finish within the grace period,
//! then close whatever remains.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use std::time::{Duration, Instant};

use common::{pattern, Client, ServerFixture};
use ferry_protocol::digest::FetchDigest;
use ferry_protocol::message::{FetchRequest, StatRequest, TO_END};
use ferry_protocol::{ErrorCode, Message, RequestId};

const SIZE: usize = 16 << 20;

fn tree(root: &std::path::Path) {
    std::fs::write(root.join("large.bin"), pattern(SIZE, 7)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_transfers_finish_and_new_work_is_refused() {
    let mut server = ServerFixture::start_with(tree, |c| {
        c.limits(ferry_server::Limits {
            shutdown_grace: Duration::from_secs(30),
            ..Default::default()
        })
    })
    .await;
    let addr = server.addr;
    let key = server.key.clone();
    let mut busy = server.plaintext_client().await;
    let mut idle = server.client().await;
    busy.send(
        RequestId(1),
        Message::FetchRequest(FetchRequest::new("large.bin", 0, TO_END).unwrap()),
    )
    .await;
    let mut hasher = FetchDigest::new();
    let mut received = 0usize;
    // Part of the file arrives before the shutdown starts.
    while received < SIZE / 8 {
        match busy.recv().await {
            (_, Message::Data(chunk)) => {
                received += chunk.len();
                hasher.update(&chunk);
            }
            (_, Message::FetchResponse(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    server.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The idle connection is told and closed.
    let mut idle_code = None;
    while let Some(Ok(frame)) = idle.try_recv().await {
        if let Ok(Message::Error { body, .. }) = frame.message() {
            idle_code = Some(body.code);
        }
    }
    assert_eq!(idle_code, Some(ErrorCode::SHUTTING_DOWN));
    // No new connections.
    assert!(
        Client::connect(addr, key, false).await.is_err(),
        "listener still open"
    );

    // A new request on the busy connection is refused; the running fetch completes intact.
    busy.send(
        RequestId(2),
        Message::StatRequest(StatRequest::new("large.bin").unwrap()),
    )
    .await;
    let mut refused = false;
    loop {
        match busy.recv().await {
            (RequestId(1), Message::Data(chunk)) => {
                received += chunk.len();
                hasher.update(&chunk);
            }
            (RequestId(2), Message::Error { body, .. }) => {
                assert_eq!(body.code, ErrorCode::SHUTTING_DOWN);
                refused = true;
            }
            (RequestId(1), Message::FetchEnd(end)) => {
                assert_eq!(end.bytes, SIZE as u64);
                assert_eq!(received, SIZE);
                assert_eq!(end.digest, hasher.finalize());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused);
    let started = Instant::now();
    server.join().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "returned once drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_a_stuck_transfer() {
    let mut server = ServerFixture::start_with(tree, |c| {
        c.limits(ferry_server::Limits {
            shutdown_grace: Duration::from_secs(1),
            ..Default::default()
        })
    })
    .await;
    let mut stuck = server.client().await;
    // Requested and never read.
    stuck
        .send(
            RequestId(1),
            Message::FetchRequest(FetchRequest::new("large.bin", 0, TO_END).unwrap()),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.trigger_shutdown();
    server.join().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited for the grace period ({took:?})"
    );
    assert!(
        took < Duration::from_secs(8),
        "but not much longer ({took:?})"
    );
    // The stuck client's stream ends without a FetchEnd.
    let mut ended_cleanly = false;
    while let Some(Ok(frame)) = stuck.try_recv().await {
        if matches!(frame.message(), Ok(Message::FetchEnd(_))) {
            ended_cleanly = true;
        }
    }
    assert!(!ended_cleanly);
}
