//! Every service end to end through the real codec, encrypted and plaintext; handshake
//! refusals; per-request errors that leave the connection usable.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use bytes::Bytes;
use common::{pattern, Client, ServerFixture};
use ferry_protocol::message::{EntryKind, FetchRequest, ListRequest, StatRequest, TO_END};
use ferry_protocol::tokio::FerryCodec;
use ferry_protocol::{ErrorCode, FrameType, Key, Message, RequestId, Service};

fn tree(root: &std::path::Path) {
    std::fs::create_dir_all(root.join("docs/sub")).unwrap();
    std::fs::write(root.join("docs/a.txt"), b"alpha").unwrap();
    std::fs::write(root.join("docs/b.txt"), b"bravo!").unwrap();
    std::fs::write(root.join("docs/sub/c.txt"), b"charlie").unwrap();
    std::fs::write(root.join("big.bin"), pattern(300_000, 1)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("docs/a.txt", root.join("link-to-a")).unwrap();
}

async fn exercise(client: &mut Client, server: &ServerFixture) {
    assert_eq!(client.ping(b"hello").await, Bytes::from_static(b"hello"));
    assert_eq!(client.ping(b"").await, Bytes::new());

    let entry = client.stat("docs/a.txt").await.unwrap();
    assert_eq!(
        (entry.name.as_str(), entry.kind, entry.size),
        ("a.txt", EntryKind::FILE, 5)
    );
    assert_eq!(
        entry.mode & 0o777,
        std::fs::metadata(server.root().join("docs/a.txt"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap()
    );
    let root = client.stat("").await.unwrap();
    assert_eq!((root.name.as_str(), root.kind), ("", EntryKind::DIRECTORY));
    // A link inside the root is described by its target (spec §3.4).
    let link = client.stat("link-to-a").await.unwrap();
    assert_eq!(
        (link.name.as_str(), link.kind, link.size),
        ("link-to-a", EntryKind::FILE, 5)
    );
    assert_eq!(
        client.stat("nope").await.unwrap_err().code,
        ErrorCode::NOT_FOUND
    );

    let names: Vec<_> = client
        .list("", false, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["big.bin", "docs", "empty", "link-to-a"]);
    let entries = client.list("docs", true, 8).await.unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.txt", "b.txt", "sub", "sub/c.txt"]);
    assert_eq!(entries[2].kind, EntryKind::DIRECTORY);
    assert_eq!(entries[3].size, 7);
    assert_eq!(
        client.list("docs/a.txt", false, 0).await.unwrap_err().code,
        ErrorCode::NOT_A_DIRECTORY
    );

    let fetched = client.fetch("big.bin", 0, TO_END).await.unwrap();
    assert_eq!(fetched.data, pattern(300_000, 1));
    assert_eq!(fetched.response.size, 300_000);
    let fetched = client.fetch("docs/b.txt", 2, 3).await.unwrap();
    assert_eq!(fetched.data, b"avo");
    let fetched = client.fetch("link-to-a", 0, TO_END).await.unwrap();
    assert_eq!(
        fetched.data, b"alpha",
        "symlinks inside the root are followed"
    );
    assert_eq!(client.fetch("empty", 0, TO_END).await.unwrap().data, b"");
    assert_eq!(
        client.fetch("docs", 0, TO_END).await.unwrap_err().code,
        ErrorCode::NOT_A_FILE
    );
    // The connection is still fine after every error.
    assert_eq!(
        client.ping(b"still here").await,
        Bytes::from_static(b"still here")
    );
}

#[tokio::test]
async fn every_service_encrypted() {
    let server = ServerFixture::start(tree).await;
    let mut client = server.client().await;
    exercise(&mut client, &server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn every_service_plaintext() {
    let server = ServerFixture::start(tree).await;
    let mut client = server.plaintext_client().await;
    exercise(&mut client, &server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn plaintext_is_refused_unless_allowed() {
    let server = ServerFixture::start_with(tree, |c| c.allow_plaintext(false)).await;
    let err = Client::connect(server.addr, server.key.clone(), true)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), ErrorCode::PLAINTEXT_REFUSED);
    // Encrypted still works.
    let mut client = server.client().await;
    assert_eq!(client.ping(b"x").await, Bytes::from_static(b"x"));
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_key_fails_authentication() {
    let server = ServerFixture::start(tree).await;
    for plaintext in [false, true] {
        let err = Client::connect(server.addr, Key::generate(), plaintext)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), ErrorCode::AUTHENTICATION_FAILED);
    }
    let mut client = server.client().await;
    assert_eq!(client.ping(b"ok").await, Bytes::from_static(b"ok"));
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_requests_and_duplicate_ids_fail_only_their_id() {
    let server = ServerFixture::start(tree).await;
    for plaintext in [false, true] {
        let mut client = Client::connect(server.addr, server.key.clone(), plaintext)
            .await
            .unwrap();
        // Cancel of an id that is not in flight is ignored.
        client
            .send(
                RequestId(76),
                Message::Cancel {
                    service: Service::FETCH,
                },
            )
            .await;
        // An unknown (type, service) pair, sealed with the live session: an authentic frame
        // the server cannot interpret.
        let id = RequestId(77);
        let frame_bytes = seal_raw(
            &mut client,
            FrameType::REQUEST,
            Service(0x33),
            id,
            b"whatever",
        );
        use tokio::io::AsyncWriteExt;
        client.conn.get_mut().write_all(&frame_bytes).await.unwrap();
        match client.recv().await {
            (got, Message::Error { body, .. }) => {
                assert_eq!(got, id);
                assert_eq!(body.code, ErrorCode::UNKNOWN_REQUEST);
            }
            other => panic!("expected UNKNOWN_REQUEST, got {other:?}"),
        }
        assert_eq!(client.ping(b"alive").await, Bytes::from_static(b"alive"));

        // Duplicate id: a fetch of a big file and a stat with the same id while it runs.
        let id = RequestId(500);
        client
            .send(
                id,
                Message::FetchRequest(FetchRequest::new("big.bin", 0, TO_END).unwrap()),
            )
            .await;
        client
            .send(id, Message::StatRequest(StatRequest::new("docs").unwrap()))
            .await;
        let mut saw_duplicate = false;
        let mut saw_end = false;
        for _ in 0..1000 {
            match client.recv().await {
                (got, Message::Error { body, .. })
                    if got == id && body.code == ErrorCode::DUPLICATE_ID =>
                {
                    saw_duplicate = true
                }
                (got, Message::FetchEnd(end)) if got == id => {
                    assert_eq!(end.bytes, 300_000);
                    saw_end = true;
                }
                (got, Message::FetchResponse(_) | Message::Data(_)) if got == id => {}
                other => panic!("unexpected {other:?}"),
            }
            if saw_end {
                break;
            }
        }
        // The duplicate may race with the fetch's completion; if the fetch had already ended,
        // the stat is a fresh request and succeeds.
        if !saw_duplicate {
            match client.recv().await {
                (got, Message::StatResponse(_)) if got == id => {}
                (got, Message::Error { body, .. }) if got == id => {
                    assert_eq!(body.code, ErrorCode::DUPLICATE_ID)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(saw_end);

        // A list request on id 0 is a protocol violation: connection-level error, then close.
        client
            .send(
                RequestId::CONNECTION,
                Message::ListRequest(ListRequest::new("", false, 0).unwrap()),
            )
            .await;
        match client.recv().await {
            (RequestId::CONNECTION, Message::Error { body, .. }) => {
                assert_eq!(body.code, ErrorCode::UNEXPECTED_MESSAGE)
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            client.try_recv().await.is_none_or(|r| r.is_err()),
            "closed after the error"
        );
    }
    server.shutdown().await;
}

/// Seals an arbitrary frame with the client's live session (the codec has no raw-frame API).
fn seal_raw(
    client: &mut Client,
    kind: FrameType,
    service: Service,
    id: RequestId,
    body: &[u8],
) -> bytes::BytesMut {
    let codec = client.conn.codec_mut();
    let placeholder = FerryCodec::new(ferry_protocol::Session::plaintext(1, 1 << 20));
    let mut session = std::mem::replace(codec, placeholder).into_session();
    let mut dst = bytes::BytesMut::new();
    session
        .write_frame(kind, service, id, body, &mut dst)
        .unwrap();
    *codec = FerryCodec::new(session);
    dst
}

/// Spec §8.2/§9 rows 11, 16, 17, 20, 21: wrong-direction messages, errors and pongs from the
/// client, unknown pairs on id 0.
#[tokio::test]
async fn dispatch_follows_the_spec_table() {
    let server = ServerFixture::start(tree).await;
    let mut client = server.client().await;
    // Row 16: a server-to-client message from the client, id != 0: refused, connection kept.
    client
        .send(RequestId(5), Message::Data(Bytes::from_static(b"nope")))
        .await;
    match client.recv().await {
        (RequestId(5), Message::Error { body, service }) => {
            assert_eq!(body.code, ErrorCode::UNEXPECTED_MESSAGE);
            assert_eq!(service, Service::FETCH);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Rows 20, 21: an error on a request id and an unsolicited pong are ignored.
    client
        .send(
            RequestId(6),
            Message::Error {
                service: Service::FETCH,
                body: ferry_protocol::ErrorBody::from_code(ErrorCode::INTERNAL),
            },
        )
        .await;
    client
        .send(RequestId(7), Message::Pong(Bytes::from_static(b"?")))
        .await;
    // Pings on id 0 (keep-alive) are answered on id 0.
    client
        .send(
            RequestId::CONNECTION,
            Message::Ping(Bytes::from_static(b"ka")),
        )
        .await;
    match client.recv().await {
        (RequestId::CONNECTION, Message::Pong(p)) => assert_eq!(p.as_ref(), b"ka"),
        other => panic!("unexpected {other:?}"),
    }
    // Row 17: the same wrong-direction message on id 0 closes the connection.
    client
        .send(RequestId::CONNECTION, Message::Data(Bytes::new()))
        .await;
    match client.recv().await {
        (RequestId::CONNECTION, Message::Error { body, .. }) => {
            assert_eq!(body.code, ErrorCode::UNEXPECTED_MESSAGE)
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(client.try_recv().await.is_none_or(|r| r.is_err()));

    // Row 11: an unknown pair on id 0 closes the connection.
    let mut client = server.client().await;
    let frame = seal_raw(
        &mut client,
        FrameType(0x77),
        Service::FETCH,
        RequestId::CONNECTION,
        b"",
    );
    use tokio::io::AsyncWriteExt;
    client.conn.get_mut().write_all(&frame).await.unwrap();
    match client.recv().await {
        (RequestId::CONNECTION, Message::Error { body, .. }) => {
            assert_eq!(body.code, ErrorCode::UNKNOWN_REQUEST)
        }
        other => panic!("unexpected {other:?}"),
    }

    // Row 20: an error on id 0 from the client closes without a reply.
    let mut client = server.client().await;
    client
        .send(
            RequestId::CONNECTION,
            Message::Error {
                service: Service::HANDSHAKE,
                body: ferry_protocol::ErrorBody::from_code(ErrorCode::INTERNAL),
            },
        )
        .await;
    assert!(
        client.try_recv().await.is_none_or(|r| r.is_err()),
        "closed without a reply"
    );
    server.shutdown().await;
}

/// Several listen addresses at once, IPv4 and IPv6 (when the host has IPv6 loopback).
#[tokio::test]
async fn listens_on_ipv4_and_ipv6_together() {
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !ipv6 {
        eprintln!("no IPv6 loopback here; testing two IPv4 listeners");
    }
    let second = if ipv6 { "[::1]:0" } else { "127.0.0.1:0" };
    // The fixture provides the tree; the server under test serves it on two addresses.
    let fixture = ServerFixture::start(tree).await;
    let key = fixture.key.clone();
    let config = ferry_server::Config::new(fixture.root(), key.clone())
        .listen(["127.0.0.1:0".parse().unwrap(), second.parse().unwrap()]);
    let server = ferry_server::Server::bind(config).await.unwrap();
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert!(addrs.iter().all(|a| a.port() != 0));
    assert_eq!(addrs[1].is_ipv6(), ipv6);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    for addr in &addrs {
        let mut client = Client::connect(*addr, key.clone(), false).await.unwrap();
        assert_eq!(client.stat("docs/a.txt").await.unwrap().size, 5);
    }
    let _ = stop.send(());
    run.await.unwrap().unwrap();
    fixture.shutdown().await;
}

/// A resolver that admits the key's holder as a principal who may read nothing.
#[derive(Debug)]
struct ReadNothing(Key);

impl ferry_protocol::KeyResolver for ReadNothing {
    fn resolve(
        &self,
        _hello: &ferry_protocol::message::ClientHello,
    ) -> Option<(Key, ferry_protocol::Principal)> {
        let principal = ferry_protocol::Principal {
            name: "guest".into(),
            permissions: ferry_protocol::Permissions::NONE,
            subtree: None,
        };
        Some((self.0.clone(), principal))
    }
}

#[tokio::test]
async fn a_configured_resolver_decides_what_a_client_may_do() {
    let server = ServerFixture::start_with(tree, |config| {
        let key = config.key.clone();
        config.key_resolver(std::sync::Arc::new(ReadNothing(key)))
    })
    .await;
    let mut client = server.client().await;
    // The connection stands and answers pings; every read is refused, and nothing leaks.
    assert_eq!(client.ping(b"hi").await, Bytes::from_static(b"hi"));
    assert_eq!(
        client.stat("docs/a.txt").await.unwrap_err().code,
        ErrorCode::PERMISSION_DENIED
    );
    assert_eq!(
        client.list("docs", false, 0).await.unwrap_err().code,
        ErrorCode::PERMISSION_DENIED
    );
    assert!(!client.saw_canary());
    server.shutdown().await;
}
