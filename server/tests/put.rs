//! Uploads on the wire (spec §3.12), from a raw client that can lie: a digest that does not
//! match the data leaves nothing under the final name, data past the granted limit ends the
//! upload (the server never buffers past its window), frames for no upload are dropped, and a
//! read-only principal is refused before anything is written.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ferry_protocol::digest::fetch_digest;
use ferry_protocol::message::{put_flags, PutEnd, PutRequest};
use ferry_protocol::{ErrorCode, Message};
use ferry_testkit::fixture::ServerFixture;

async fn upload_server() -> ServerFixture {
    ServerFixture::start_with(|_| {}, |config| config.allow_upload(true)).await
}

fn partials(root: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ferry-up-"))
        .collect()
}

fn request(path: &str, size: usize, digest: [u8; 32]) -> Message {
    Message::PutRequest(PutRequest::new(path, size as u64, 0o644, 0, digest).unwrap())
}

/// The first answer: offset and limit.
async fn first_answer(client: &mut ferry_testkit::fixture::Client) -> (u64, u64) {
    match client.recv().await {
        (_, Message::PutResponse(r)) => (r.offset, r.limit),
        other => panic!("expected the put answer, got {other:?}"),
    }
}

async fn error_code(client: &mut ferry_testkit::fixture::Client) -> ErrorCode {
    loop {
        match client.recv().await {
            (_, Message::Error { body, .. }) => return body.code,
            (_, Message::PutResponse(_)) => continue,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_lying_digest_leaves_nothing_under_the_final_name() {
    let fx = upload_server().await;
    let root = fx.root();
    let mut client = fx.client().await;
    // The request promises the digest of other bytes of the same length.
    let id = client.id();
    client
        .send(id, request("lie.txt", 11, fetch_digest(b"HELLO WORLD")))
        .await;
    assert_eq!(first_answer(&mut client).await, (0, 11));
    client
        .send(id, Message::PutData(Bytes::from_static(b"hello world")))
        .await;
    client
        .send(
            id,
            Message::PutEnd(PutEnd {
                bytes: 11,
                digest: fetch_digest(b"HELLO WORLD"),
            }),
        )
        .await;
    assert_eq!(error_code(&mut client).await, ErrorCode::DIGEST_MISMATCH);
    assert!(!root.join("lie.txt").exists());
    // Bytes that can never match their digest are not kept either.
    assert!(partials(&root).is_empty(), "{:?}", partials(&root));

    // An end that announces another digest than the request: refused, nothing stored.
    let id = client.id();
    client
        .send(id, request("lie2.txt", 5, fetch_digest(b"hello")))
        .await;
    first_answer(&mut client).await;
    client
        .send(id, Message::PutData(Bytes::from_static(b"hello")))
        .await;
    client
        .send(
            id,
            Message::PutEnd(PutEnd {
                bytes: 5,
                digest: fetch_digest(b"jello"),
            }),
        )
        .await;
    assert_eq!(error_code(&mut client).await, ErrorCode::DIGEST_MISMATCH);
    assert!(!root.join("lie2.txt").exists());

    // The honest upload of the same bytes works, and answers with what it stored.
    let id = client.id();
    client
        .send(id, request("true.txt", 5, fetch_digest(b"hello")))
        .await;
    first_answer(&mut client).await;
    client
        .send(id, Message::PutData(Bytes::from_static(b"hello")))
        .await;
    let end = PutEnd {
        bytes: 5,
        digest: fetch_digest(b"hello"),
    };
    client.send(id, Message::PutEnd(end)).await;
    match client.recv().await {
        (got, Message::PutEnd(stored)) => assert_eq!((got, stored), (id, end)),
        other => panic!("expected the end, got {other:?}"),
    }
    assert_eq!(std::fs::read(root.join("true.txt")).unwrap(), b"hello");
    fx.shutdown().await;
}

#[tokio::test]
async fn data_past_the_granted_limit_ends_the_upload() {
    let fx = upload_server().await;
    let mut client = fx.client().await;
    // Smaller than the window, so the first limit is the whole file and never moves on: a
    // larger file's limit moves on as the server writes, which races with a burst sent past
    // the first one (the window itself is checked, in order, by the unit tests of put.rs).
    let size = 1 << 20;
    let id = client.id();
    client.send(id, request("big.bin", size, [0; 32])).await;
    let (offset, limit) = first_answer(&mut client).await;
    assert_eq!((offset, limit), (0, size as u64));
    // Everything the limit allows, then one byte more, without waiting for more credit.
    let chunk = Bytes::from(vec![7u8; 65_536]);
    let mut sent = 0u64;
    while sent + chunk.len() as u64 <= limit {
        client.send(id, Message::PutData(chunk.clone())).await;
        sent += chunk.len() as u64;
    }
    let rest = (limit - sent) as usize + 1;
    client
        .send(id, Message::PutData(Bytes::from(vec![7u8; rest])))
        .await;
    assert_eq!(error_code(&mut client).await, ErrorCode::TOO_LARGE);
    // Frames for an upload no longer in flight are dropped; the connection goes on.
    client.send(id, Message::PutData(chunk.clone())).await;
    client
        .send(
            id,
            Message::PutEnd(PutEnd {
                bytes: 1,
                digest: [0; 32],
            }),
        )
        .await;
    assert_eq!(client.stat("").await.unwrap().name, "");
    assert!(!fx.root().join("big.bin").exists());
    fx.shutdown().await;
}

#[tokio::test]
async fn a_read_only_principal_is_refused_before_anything_is_written() {
    let fx = ServerFixture::start(|_| {}).await;
    let mut client = fx.client().await;
    let id = client.id();
    let flags = put_flags::OVERWRITE | put_flags::PARENTS;
    client
        .send(
            id,
            Message::PutRequest(PutRequest::new("new/x", 3, 0o644, flags, [0; 32]).unwrap()),
        )
        .await;
    match client.recv().await {
        (got, Message::Error { body, service }) => {
            assert_eq!(got, id);
            assert_eq!(service, ferry_protocol::Service::PUT);
            assert_eq!(body.code, ErrorCode::READ_ONLY);
            assert!(body.message.contains("read-only"), "{}", body.message);
        }
        other => panic!("expected READ_ONLY, got {other:?}"),
    }
    assert!(!fx.root().join("new").exists());
    fx.shutdown().await;
}
