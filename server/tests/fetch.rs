//! Fetch specifics: ranges at the edges, files that change while being sent, cancellation and
//! fair interleaving of concurrent fetches on one connection.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use std::time::Duration;

use common::{pattern, ServerFixture};
use ferry_protocol::message::{FetchRequest, TO_END};
use ferry_protocol::{ErrorCode, Message, RequestId, Service};

const SMALL: usize = 100_000;
const LARGE: usize = 32 << 20;

fn tree(root: &std::path::Path) {
    std::fs::write(root.join("small.bin"), pattern(SMALL, 3)).unwrap();
    std::fs::write(root.join("large.bin"), pattern(LARGE, 4)).unwrap();
    // Large enough that both fetches are under way for most of their life: with a fast digest
    // a few MiB finish before the other request has even opened its file.
    std::fs::write(root.join("mid.bin"), pattern(32 << 20, 5)).unwrap();
}

#[tokio::test]
async fn ranges_at_zero_at_size_past_size_and_overflowing() {
    let server = ServerFixture::start(tree).await;
    let data = pattern(SMALL, 3);
    for plaintext in [false, true] {
        let mut client = common::Client::connect(server.addr, server.key.clone(), plaintext)
            .await
            .unwrap();
        let size = SMALL as u64;
        let whole = client.fetch("small.bin", 0, TO_END).await.unwrap();
        assert_eq!(whole.data, data);
        assert_eq!((whole.response.offset, whole.response.length), (0, size));
        assert_eq!(
            client.fetch("small.bin", 0, 1).await.unwrap().data,
            &data[..1]
        );
        assert_eq!(client.fetch("small.bin", 0, 0).await.unwrap().data, b"");
        let tail = client.fetch("small.bin", 99_000, TO_END).await.unwrap();
        assert_eq!(tail.data, &data[99_000..]);
        let mid = client.fetch("small.bin", 12_345, 70_000).await.unwrap();
        assert_eq!(mid.data, &data[12_345..82_345]);
        // At size: an empty range, with a valid end frame (hash of nothing).
        let at_end = client.fetch("small.bin", size, TO_END).await.unwrap();
        assert_eq!(
            (
                at_end.response.offset,
                at_end.response.length,
                at_end.end.bytes
            ),
            (size, 0, 0)
        );
        assert_eq!(client.fetch("small.bin", size, 0).await.unwrap().data, b"");
        assert_eq!(
            client
                .fetch("small.bin", size - 1, TO_END)
                .await
                .unwrap()
                .data,
            &data[SMALL - 1..]
        );
        // Past the size, reaching past the size, and overflowing u64.
        for (offset, length) in [
            (size + 1, TO_END),
            (size + 1, 0),
            (size, 1),
            (0, size + 1),
            (1, u64::MAX - 1),
            (u64::MAX, 1),
            (u64::MAX, TO_END),
            (u64::MAX - 5, 10),
        ] {
            let err = client.fetch("small.bin", offset, length).await.unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::INVALID_RANGE,
                "offset {offset} length {length}"
            );
        }
        assert_eq!(client.ping(b"ok").await.as_ref(), b"ok");
    }
    server.shutdown().await;
}

/// Starts a fetch of `path`, reads its header, then lets the server fill every buffer.
async fn start_stalled_fetch(client: &mut common::Client, id: RequestId, path: &str) {
    client
        .send(
            id,
            Message::FetchRequest(FetchRequest::new(path, 0, TO_END).unwrap()),
        )
        .await;
    match client.recv().await {
        (got, Message::FetchResponse(_)) if got == id => {}
        other => panic!("expected fetch response, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Reads the rest of fetch `id` and returns its terminal frame and the data bytes seen.
async fn drain(client: &mut common::Client, id: RequestId) -> (Message, u64) {
    let mut bytes = 0u64;
    loop {
        match client.recv().await {
            (got, Message::Data(chunk)) if got == id => bytes += chunk.len() as u64,
            (got, end @ (Message::FetchEnd(_) | Message::Error { .. })) if got == id => {
                return (end, bytes)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_file_changing_during_the_send_ends_in_file_changed() {
    let server = ServerFixture::start(tree).await;
    let path = server.root().join("large.bin");
    let mut client = server.plaintext_client().await;

    // Grows while being sent.
    start_stalled_fetch(&mut client, RequestId(1), "large.bin").await;
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"appended").unwrap();
    }
    match drain(&mut client, RequestId(1)).await {
        (Message::Error { body, .. }, bytes) => {
            assert_eq!(body.code, ErrorCode::FILE_CHANGED);
            assert!(bytes < LARGE as u64, "stopped early");
        }
        (other, _) => panic!("expected FILE_CHANGED, got {other:?}"),
    }

    // Rewritten in place with the same size.
    start_stalled_fetch(&mut client, RequestId(2), "large.bin").await;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_at(b"XXXXXXXX", (LARGE - 100) as u64).unwrap();
    }
    match drain(&mut client, RequestId(2)).await {
        (Message::Error { body, .. }, _) => assert_eq!(body.code, ErrorCode::FILE_CHANGED),
        (other, _) => panic!("expected FILE_CHANGED, got {other:?}"),
    }

    // Shrunk (truncated) while being sent.
    start_stalled_fetch(&mut client, RequestId(3), "large.bin").await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    match drain(&mut client, RequestId(3)).await {
        (Message::Error { body, .. }, _) => assert_eq!(body.code, ErrorCode::FILE_CHANGED),
        (other, _) => panic!("expected FILE_CHANGED, got {other:?}"),
    }
    assert_eq!(client.ping(b"fine").await.as_ref(), b"fine");
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_stops_a_running_fetch() {
    let server = ServerFixture::start(tree).await;
    let mut client = server.plaintext_client().await;
    start_stalled_fetch(&mut client, RequestId(9), "large.bin").await;
    client
        .send(
            RequestId(9),
            Message::Cancel {
                service: Service::FETCH,
            },
        )
        .await;
    match drain(&mut client, RequestId(9)).await {
        (Message::Error { body, .. }, bytes) => {
            assert_eq!(body.code, ErrorCode::CANCELLED);
            assert!(
                bytes < LARGE as u64 / 2,
                "cancel stopped the stream after {bytes} bytes"
            );
        }
        (other, _) => panic!("expected CANCELLED, got {other:?}"),
    }
    // The id is free again and the connection healthy.
    let again = client.fetch("small.bin", 0, TO_END).await.unwrap();
    assert_eq!(again.data.len(), SMALL);
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_fetches_on_one_connection_interleave() {
    let server = ServerFixture::start(tree).await;
    let mut client = server.plaintext_client().await;
    let (a, b) = (RequestId(1), RequestId(2));
    for id in [a, b] {
        client
            .send(
                id,
                Message::FetchRequest(FetchRequest::new("mid.bin", 0, TO_END).unwrap()),
            )
            .await;
    }
    let total = 32u64 << 20;
    let (mut got_a, mut got_b) = (0u64, 0u64);
    let mut b_when_a_ended = None;
    let mut a_when_b_ended = None;
    let mut ended = 0;
    while ended < 2 {
        match client.recv().await {
            (id, Message::Data(chunk)) if id == a => got_a += chunk.len() as u64,
            (id, Message::Data(chunk)) if id == b => got_b += chunk.len() as u64,
            (id, Message::FetchEnd(end)) => {
                assert_eq!(end.bytes, total);
                ended += 1;
                if id == a {
                    b_when_a_ended = Some(got_b);
                } else {
                    a_when_b_ended = Some(got_a);
                }
            }
            (_, Message::FetchResponse(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((got_a, got_b), (total, total));
    // Whichever finished first, the other was already under way: the two streams share the
    // connection rather than queue behind each other. How evenly they share it depends on when
    // the OS runs each fetch's blocking reads (on a loaded machine one lagged to 7 of 32 MiB),
    // so the test asks for interleaving, not for an even split.
    let other_progress = b_when_a_ended
        .filter(|_| a_when_b_ended == Some(total))
        .or(a_when_b_ended)
        .unwrap();
    assert!(
        other_progress > 0,
        "the other fetch had {other_progress} of {total} bytes when the first ended"
    );
    server.shutdown().await;
}
