//! `ferry-load` checks what it measures: against a server on 127.0.0.1:0 that answers a fetch
//! with a wrong end-to-end digest, a wrong length or a record that fails authentication, the
//! binary exits 1 and says how many answers failed and why. A correct server gives exit 0.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Output;

use bytes::{Bytes, BytesMut};
use ferry_protocol::digest::fetch_digest;
use ferry_protocol::message::{Entry, EntryKind, FetchEnd, FetchResponse, ListEnd, ListPage};
use ferry_protocol::{Key, Message, ServerHandshakeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake server does wrong in each fetch answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// FetchEnd carries the digest of other bytes.
    WrongDigest,
    /// FetchEnd counts one byte more than the data frames carried.
    WrongLength,
    /// The last byte of the answer (FetchEnd's authentication tag) is flipped.
    CorruptRecord,
}

const FILE: [u8; 1024] = [7; 1024];

/// Serves one connection: a one-file listing for the load generator's discovery, and every
/// fetch answered with `fault`.
async fn serve(mut stream: TcpStream, key: Key, fault: Fault) {
    let Ok((mut session, mut buf)) =
        ferry_protocol::tokio::server_handshake(&mut stream, ServerHandshakeConfig::new(key)).await
    else {
        return;
    };
    let mut out = BytesMut::new();
    loop {
        while let Ok(Some(frame)) = session.read_frame(&mut buf) {
            let id = frame.header.id;
            let answers = match frame.message() {
                Ok(Message::ListRequest(_)) => vec![
                    Message::ListPage(ListPage {
                        entries: vec![Entry {
                            name: "small.bin".into(),
                            kind: EntryKind::FILE,
                            size: FILE.len() as u64,
                            mtime_secs: 0,
                            mtime_nanos: 0,
                            mode: 0o644,
                            link: None,
                        }],
                    }),
                    Message::ListEnd(ListEnd { entries: 1 }),
                ],
                Ok(Message::FetchRequest(_)) => vec![
                    Message::FetchResponse(FetchResponse {
                        size: FILE.len() as u64,
                        mtime_secs: 0,
                        mtime_nanos: 0,
                        offset: 0,
                        length: FILE.len() as u64,
                    }),
                    Message::Data(Bytes::from_static(&FILE)),
                    Message::FetchEnd(FetchEnd {
                        bytes: FILE.len() as u64 + u64::from(fault == Fault::WrongLength),
                        digest: if fault == Fault::WrongDigest {
                            fetch_digest(b"other bytes")
                        } else {
                            fetch_digest(&FILE)
                        },
                    }),
                ],
                _ => Vec::new(),
            };
            let is_fetch = matches!(answers.first(), Some(Message::FetchResponse(_)));
            for answer in &answers {
                session.write_message(id, answer, &mut out).unwrap();
            }
            if is_fetch && fault == Fault::CorruptRecord {
                if let Some(last) = out.last_mut() {
                    *last ^= 0x01;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn fake_server(fault: Fault) -> (SocketAddr, Key) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = Key::from_bytes([0x5A; 32]);
    let server_key = key.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, server_key.clone(), fault));
        }
    });
    (addr, key)
}

/// Runs `ferry-load server` for 6 fetches over one connection against a fake server.
async fn load(fault: Fault) -> Output {
    let (addr, key) = fake_server(fault).await;
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-load"))
        .args([
            "server",
            &format!("ferry://{addr}/"),
            "--key",
            &key.to_hex(),
        ])
        .args([
            "-c",
            "1",
            "--in-flight",
            "1",
            "--requests",
            "6",
            "--threads",
            "1",
        ])
        .args(["--mix", "fetch-small=1", "--small", "small.bin", "--json"])
        .env_remove("FERRY_KEY")
        .kill_on_drop(true)
        .output();
    // Bounds only a failure (a hung load generator); a good run takes milliseconds.
    tokio::time::timeout(std::time::Duration::from_secs(60), command)
        .await
        .expect("ferry-load finished within 60 s")
        .unwrap()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn answers_from_a_correct_server_pass() {
    let out = load(Fault::None).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["requests"], 6, "{}", describe(&out));
    assert_eq!(
        summary["errors"],
        serde_json::json!({}),
        "{}",
        describe(&out)
    );
}

/// The run against `fault` exits 1 and its stderr says `count` and `detail`.
async fn fails_with(fault: Fault, count: &str, detail: &str) {
    let out = load(fault).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(count), "{}", describe(&out));
    assert!(stderr.contains(detail), "{}", describe(&out));
}

#[tokio::test]
async fn a_wrong_digest_fails_the_run() {
    fails_with(
        Fault::WrongDigest,
        "6 of 6 requests failed an integrity check",
        "digest mismatch",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_length_fails_the_run() {
    fails_with(
        Fault::WrongLength,
        "6 of 6 requests failed an integrity check",
        "byte count mismatch",
    )
    .await;
}

#[tokio::test]
async fn a_record_that_fails_authentication_fails_the_run() {
    fails_with(
        Fault::CorruptRecord,
        "requests failed an integrity check",
        "connection error",
    )
    .await;
}
