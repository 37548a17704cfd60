//! Limits and faults: huge directories, many clients, connection and in-flight limits,
//! deadlines, malformed and forged frames, abrupt disconnects.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use ferry_testkit::fixture as common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{pattern, short_limits, Client, ServerFixture};
use ferry_protocol::message::{FetchRequest, TO_END};
use ferry_protocol::{ErrorCode, FrameType, Header, Message, RequestId, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tree(root: &std::path::Path) {
    std::fs::write(root.join("small.bin"), pattern(70_000, 1)).unwrap();
    std::fs::write(root.join("large.bin"), pattern(16 << 20, 2)).unwrap();
}

/// Reads until the server closes the connection; returns the connection-level error code it
/// sent on the way out, if any.
async fn closing_code(client: &mut Client) -> Option<ErrorCode> {
    let mut code = None;
    for _ in 0..10_000 {
        match client.try_recv().await {
            Some(Ok(frame)) => {
                if let Ok(Message::Error { body, .. }) = frame.message() {
                    if frame.header.id == RequestId::CONNECTION {
                        code = Some(body.code);
                    }
                }
            }
            Some(Err(_)) | None => return code,
        }
    }
    panic!("connection not closed");
}

#[tokio::test]
async fn a_directory_of_100k_entries_lists_sorted_in_bounded_batches() {
    const N: usize = 100_000;
    let server = ServerFixture::start_with(
        |root| {
            let dir = root.join("huge");
            std::fs::create_dir(&dir).unwrap();
            for i in 0..N {
                // Creation order differs from name order.
                let n = (i * 7_919) % N;
                std::fs::File::create(dir.join(format!("entry-{n:06}"))).unwrap();
            }
        },
        // A 256 KiB name budget forces many passes over the directory.
        |c| {
            c.limits(ferry_server::Limits {
                list_batch_bytes: 256 << 10,
                ..Default::default()
            })
        },
    )
    .await;
    let mut client = server.client().await;
    let started = Instant::now();
    let entries = client.list("huge", false, 0).await.unwrap();
    eprintln!(
        "listed {} entries in {:?}",
        entries.len(),
        started.elapsed()
    );
    assert_eq!(entries.len(), N);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.name, format!("entry-{i:06}"));
    }
    // The same listing through the recursive path.
    let recursive = client.list("", true, 2).await.unwrap();
    assert_eq!(recursive.len(), N + 1);
    assert_eq!(recursive[0].name, "huge");
    assert_eq!(recursive[N].name, format!("huge/entry-{:06}", N - 1));
    server.shutdown().await;
}

#[tokio::test]
async fn two_hundred_concurrent_clients() {
    let server = ServerFixture::start(tree).await;
    let expected = pattern(70_000, 1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let (addr, key, expected) = (server.addr, server.key.clone(), expected.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr, key, i % 4 == 0)
                .await
                .expect("connect");
            assert_eq!(
                client.ping(&i.to_be_bytes()).await.as_ref(),
                i.to_be_bytes()
            );
            assert_eq!(client.stat("small.bin").await.unwrap().size, 70_000);
            let fetched = client
                .fetch("small.bin", u64::from(i), TO_END)
                .await
                .unwrap();
            assert_eq!(fetched.data, expected[i as usize..]);
            assert_eq!(client.list("", false, 0).await.unwrap().len(), 2);
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    eprintln!("200 clients served in {:?}", started.elapsed());
    server.shutdown().await;
}

#[tokio::test]
async fn connection_limit_refuses_with_busy() {
    let server = ServerFixture::start_with(tree, |c| {
        c.limits(ferry_server::Limits {
            max_connections: 2,
            ..Default::default()
        })
    })
    .await;
    let mut first = server.client().await;
    let _second = server.client().await;
    let err = Client::connect(server.addr, server.key.clone(), false)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), ErrorCode::BUSY, "{err}");
    assert_eq!(first.ping(b"still served").await.as_ref(), b"still served");
    drop(first);
    // A slot frees up once a connection closes.
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(client) = Client::connect(server.addr, server.key.clone(), false).await {
            ok = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok.is_some(), "slot freed");
    server.shutdown().await;
}

#[tokio::test]
async fn in_flight_limit_refuses_with_busy_for_that_id() {
    let server = ServerFixture::start_with(tree, |c| {
        c.limits(ferry_server::Limits {
            max_in_flight_per_connection: 2,
            ..Default::default()
        })
    })
    .await;
    let mut client = server.plaintext_client().await;
    for id in 1..=3 {
        client
            .send(
                RequestId(id),
                Message::FetchRequest(FetchRequest::new("large.bin", 0, TO_END).unwrap()),
            )
            .await;
    }
    let mut busy = false;
    let mut ends = 0;
    while ends < 2 {
        match client.recv().await {
            (RequestId(3), Message::Error { body, .. }) => {
                assert_eq!(body.code, ErrorCode::BUSY);
                busy = true;
            }
            (_, Message::FetchEnd(_)) => ends += 1,
            (_, Message::FetchResponse(_) | Message::Data(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(busy);
    server.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let server = ServerFixture::start_with(tree, |c| {
        c.limits(ferry_server::Limits {
            idle_timeout: Duration::from_millis(500),
            ..Default::default()
        })
    })
    .await;
    let mut client = server.client().await;
    assert_eq!(client.ping(b"a").await.as_ref(), b"a");
    let started = Instant::now();
    assert_eq!(closing_code(&mut client).await, Some(ErrorCode::TIMEOUT));
    assert!(started.elapsed() < Duration::from_secs(5));
    server.shutdown().await;
}

/// Issue 9 item 5, the server's half: a byte flipped in a record's length field ends the
/// connection with a connection-level error the client can map to its exit code 3: a shorter
/// length fails the record (`BAD_RECORD`), a longer one leaves the frame incomplete until the
/// frame deadline (`TIMEOUT`), one over the cap is refused from the header (`TOO_LARGE`).
#[tokio::test]
async fn a_flipped_record_length_closes_with_a_clear_code() {
    let server = ServerFixture::start_with(tree, |c| c.limits(short_limits())).await;
    type Flip = fn(u32) -> u32;
    let cases: [(Flip, ErrorCode); 3] = [
        (|len| len - 16, ErrorCode::BAD_RECORD),
        (|len| len + 16, ErrorCode::TIMEOUT),
        (|len| len | 0x0100_0000, ErrorCode::TOO_LARGE),
    ];
    for (flip, expected) in cases {
        let mut client = server.client().await;
        let mut frame = seal(
            &mut client,
            RequestId(1),
            &Message::Ping(bytes::Bytes::from_static(b"x")),
        );
        let len = u32::from_be_bytes(frame[8..12].try_into().unwrap());
        frame[8..12].copy_from_slice(&flip(len).to_be_bytes());
        let started = Instant::now();
        client.conn.get_mut().write_all(&frame).await.unwrap();
        assert_eq!(closing_code(&mut client).await, Some(expected));
        // The frame deadline is 2 s in this configuration; nothing waits much longer.
        assert!(started.elapsed() < Duration::from_secs(15), "{expected}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_forged_and_malformed_frames_close_the_connection() {
    let server = ServerFixture::start_with(tree, |c| c.limits(short_limits())).await;

    // A header declaring more than the frame limit.
    let mut client = server.client().await;
    let mut header = BytesMut::new();
    let mut oversized = Header::new(
        FrameType::REQUEST,
        Service::FETCH,
        RequestId(1),
        (1 << 20) + 1,
    );
    // In the session's version, so that the length, not the version, is what is refused.
    oversized.version = client.conn.codec().session().version();
    oversized.encode(&mut header);
    client.conn.get_mut().write_all(&header).await.unwrap();
    assert_eq!(closing_code(&mut client).await, Some(ErrorCode::TOO_LARGE));

    // A forged (bit-flipped) encrypted record.
    let mut client = server.client().await;
    let mut frame = seal(
        &mut client,
        RequestId(1),
        &Message::Ping(bytes::Bytes::from_static(b"x")),
    );
    let last = frame.len() - 1;
    frame[last] ^= 1;
    client.conn.get_mut().write_all(&frame).await.unwrap();
    assert_eq!(closing_code(&mut client).await, Some(ErrorCode::BAD_RECORD));

    // A well-sealed request whose body does not decode.
    let mut client = server.client().await;
    let frame = seal_raw(
        &mut client,
        FrameType::REQUEST,
        Service::STAT,
        RequestId(1),
        &[0, 1, b'a', 0xFF],
    );
    client.conn.get_mut().write_all(&frame).await.unwrap();
    assert_eq!(
        closing_code(&mut client).await,
        Some(ErrorCode::MALFORMED_MESSAGE)
    );

    // Bad magic after the handshake.
    let mut client = server.plaintext_client().await;
    client
        .conn
        .get_mut()
        .write_all(&[0x10, 0x00, 1, 1])
        .await
        .unwrap();
    assert_eq!(closing_code(&mut client).await, Some(ErrorCode::BAD_FRAME));

    // Garbage instead of a handshake: closed without a session.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut sink))
        .await
        .unwrap()
        .ok();

    // Silence after connecting: closed by the handshake deadline.
    let started = Instant::now();
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
        .await
        .expect("closed by deadline");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(1_500));

    // The server still serves an honest client.
    let mut client = server.client().await;
    assert_eq!(client.ping(b"fine").await.as_ref(), b"fine");
    server.shutdown().await;
}

#[tokio::test]
async fn abrupt_disconnects_mid_stream_leave_nothing_behind() {
    let server = ServerFixture::start_with(tree, |c| {
        c.limits(ferry_server::Limits {
            shutdown_grace: Duration::from_secs(20),
            ..Default::default()
        })
    })
    .await;
    for i in 0..20u32 {
        let mut client = Client::connect(server.addr, server.key.clone(), i % 2 == 0)
            .await
            .unwrap();
        for id in 1..=3 {
            client
                .send(
                    RequestId(id),
                    Message::FetchRequest(FetchRequest::new("large.bin", 0, TO_END).unwrap()),
                )
                .await;
        }
        // Read a little of the interleaved streams, then vanish (RST when i is odd).
        for _ in 0..(i % 5) * 10 {
            let _ = client.recv().await;
        }
        let stream = client.conn.into_inner();
        if i % 2 == 1 {
            #[allow(deprecated)] // blocking on drop is what we want: an immediate RST
            stream.set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(stream);
    }
    let mut client = server.client().await;
    let fetched = client.fetch("small.bin", 0, TO_END).await.unwrap();
    assert_eq!(fetched.data.len(), 70_000);
    drop(client);
    // No connection task is stuck on a dead peer: shutdown finishes long before the grace.
    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain took {:?}",
        started.elapsed()
    );
}

fn seal(client: &mut Client, id: RequestId, message: &Message) -> BytesMut {
    let (kind, service) = message.kind();
    seal_raw(client, kind, service, id, &message.to_bytes())
}

/// Seals an arbitrary frame with the client's live session (the codec has no raw-frame API).
fn seal_raw(
    client: &mut Client,
    kind: FrameType,
    service: Service,
    id: RequestId,
    body: &[u8],
) -> BytesMut {
    use ferry_protocol::tokio::FerryCodec;
    let codec = client.conn.codec_mut();
    let placeholder = FerryCodec::new(ferry_protocol::Session::plaintext(1, 1 << 20));
    let mut session = std::mem::replace(codec, placeholder).into_session();
    let mut dst = BytesMut::new();
    session
        .write_frame(kind, service, id, body, &mut dst)
        .unwrap();
    *codec = FerryCodec::new(session);
    dst
}

/// Spec §5.5: a connection whose send key nears its GCM usage limit finishes the requests in
/// flight, starts no more (`SHUTTING_DOWN`) and closes with a `SHUTTING_DOWN` goodbye; a new
/// connection (new keys) continues. The test-only `assume_blocks_used` puts the close-soon
/// point 100 blocks (1.6 KB) into each connection, so a 70,000-byte fetch crosses it midway.
#[tokio::test]
async fn a_connection_near_its_key_usage_limit_finishes_its_requests_then_closes() {
    let blocks = (1u64 << 36) - ferry_protocol::crypto::CLOSE_SOON_BLOCKS - 100;
    let server = ServerFixture::start_with(tree, |c| {
        c.limits(ferry_server::Limits {
            assume_blocks_used: blocks,
            ..Default::default()
        })
    })
    .await;
    let want = pattern(70_000, 1);
    for _ in 0..2 {
        let mut client = server.client().await;
        // In flight when the point is crossed: finished, whole and verified.
        let fetched = client.fetch("small.bin", 0, TO_END).await.unwrap();
        assert_eq!(fetched.data, want);
        // Sent after its end was seen: refused, and the connection closes.
        let id = client.id();
        let stat = Message::StatRequest(ferry_protocol::message::StatRequest {
            path: "small.bin".into(),
        });
        client.send(id, stat).await;
        let (got, reply) = client.recv().await;
        match reply {
            Message::Error { body, .. } if got == id || got == RequestId::CONNECTION => {
                assert_eq!(body.code, ErrorCode::SHUTTING_DOWN, "{body:?}");
                assert!(body.message.contains("usage limit"), "{body:?}");
            }
            other => panic!("{got}: {other:?}"),
        }
        if got == id {
            assert_eq!(
                closing_code(&mut client).await,
                Some(ErrorCode::SHUTTING_DOWN)
            );
        }
    }
    server.shutdown().await;
}

/// Spec §5.5: a fetch still in flight when the key reaches its hard usage limit ends with a
/// `SHUTTING_DOWN` error on its own id that gives the numbers, then the `SHUTTING_DOWN`
/// goodbye, then the close; both are sealed from room the server keeps for them, so no record
/// takes the key past the limit. The key starts `ROOM` blocks (1.6 MB) short of its limit,
/// and the 16 MiB fetch is cut by the key alone, wherever the chunks fall.
#[tokio::test]
async fn a_fetch_cut_at_the_key_usage_limit_ends_with_shutting_down_then_the_goodbye() {
    use ferry_protocol::crypto::gcm;
    const ROOM: u64 = 100_000;
    let server = ServerFixture::start_with(tree, |c| {
        c.limits(ferry_server::Limits {
            assume_blocks_used: gcm::BLOCK_LIMIT - ROOM,
            ..Default::default()
        })
    })
    .await;
    let want = pattern(16 << 20, 2);
    let mut client = server.client().await;
    let id = client.id();
    let fetch = FetchRequest::new("large.bin", 0, TO_END).unwrap();
    client.send(id, Message::FetchRequest(fetch)).await;
    // Every record the server sealed, counted as it counts them: the blocks its key spent.
    let mut blocks = 0u64;
    let mut data = 0usize;
    let (mut cut, mut goodbye) = (None, None);
    while let Some(frame) = client.try_recv().await {
        let frame = frame.expect("every record opens");
        blocks += gcm::blocks(frame.body.len());
        match (frame.header.id, frame.message().unwrap()) {
            (got, Message::FetchResponse(_)) if got == id && data == 0 => {}
            (got, Message::Data(chunk)) if got == id && cut.is_none() => {
                assert!(chunk[..] == want[data..data + chunk.len()], "bytes differ");
                data += chunk.len();
            }
            (got, Message::Error { body, .. }) if got == id && cut.is_none() => cut = Some(body),
            (got, Message::Error { body, .. })
                if got == RequestId::CONNECTION && cut.is_some() && goodbye.is_none() =>
            {
                goodbye = Some(body)
            }
            (got, other) => panic!("{got}: {other:?} (cut: {cut:?}, goodbye: {goodbye:?})"),
        }
    }
    assert!(
        blocks <= ROOM,
        "{blocks} blocks sealed, {ROOM} left under the key"
    );
    // Cut near the end of the room: the server keeps a little for the final frames.
    assert!(
        ROOM - blocks < 10_000,
        "{blocks} blocks sealed, {ROOM} left"
    );
    assert!(data > 0 && data < want.len(), "{data} bytes");
    let cut = cut.expect("the fetch ends with an error frame");
    assert_eq!(cut.code, ErrorCode::SHUTTING_DOWN, "{cut:?}");
    let limit = gcm::BLOCK_LIMIT.to_string();
    assert!(
        cut.message.contains("usage limit") && cut.message.contains(&limit),
        "{cut:?}"
    );
    let goodbye = goodbye.expect("a goodbye after the error");
    assert_eq!(goodbye.code, ErrorCode::SHUTTING_DOWN, "{goodbye:?}");
    server.shutdown().await;
}
