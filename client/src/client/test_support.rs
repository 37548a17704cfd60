//! A tiny in-memory server that the unit tests of several files talk to.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use ferry_protocol::digest::fetch_digest;
use ferry_protocol::message::{Entry, EntryKind, FetchEnd, FetchResponse, ListEnd, ListPage};
use ferry_protocol::{
    ErrorBody, ErrorCode, Key, Message, RequestId, ServerHandshakeConfig, Service,
};
use futures::{SinkExt, StreamExt};

use super::{Client, ClientConfig};

fn entry(name: &str) -> Entry {
    Entry {
        name: name.into(),
        kind: EntryKind::FILE,
        size: 3,
        mtime_secs: 1,
        mtime_nanos: 0,
        mode: 0o644,
        link: None,
    }
}

/// A tiny in-memory server: files are `name -> content`; a fetch of `slow` sends its data in
/// 1-byte chunks only after a stat arrives, to prove requests interleave. `corrupt` sends a
/// wrong hash.
pub(super) async fn fake_server(io: tokio::io::DuplexStream, key: Key) {
    let mut conn = ferry_protocol::tokio::accept(io, ServerHandshakeConfig::new(key))
        .await
        .unwrap();
    let files: HashMap<&str, &[u8]> = [
        ("a.txt", b"abc".as_slice()),
        ("corrupt", b"xyz".as_slice()),
        ("slow", b"0123456789".as_slice()),
        ("overflow", b"abc".as_slice()),
        ("short", b"abc".as_slice()),
    ]
    .into();
    let mut parked: Option<RequestId> = None;
    while let Some(Ok(frame)) = conn.next().await {
        let id = frame.header.id;
        let replies: Vec<Message> = match frame.message().unwrap() {
            Message::Ping(p) => vec![Message::Pong(p)],
            Message::StatRequest(r) => {
                let mut out = vec![match files.get(r.path.as_str()) {
                    Some(_) => Message::StatResponse(entry(&r.path)),
                    None => Message::Error {
                        service: Service::STAT,
                        body: ErrorBody::new(ErrorCode::NOT_FOUND, "no such file"),
                    },
                }];
                // Release the parked slow fetch after answering the stat.
                if let Some(slow) = parked.take() {
                    conn.send((id, out.remove(0))).await.unwrap();
                    for b in files["slow"] {
                        conn.send((slow, Message::Data(Bytes::copy_from_slice(&[*b]))))
                            .await
                            .unwrap();
                    }
                    conn.send((
                        slow,
                        Message::FetchEnd(FetchEnd {
                            bytes: 10,
                            digest: fetch_digest(files["slow"]),
                        }),
                    ))
                    .await
                    .unwrap();
                }
                out
            }
            Message::ListRequest(_) => vec![
                Message::ListPage(ListPage {
                    entries: vec![entry("a"), entry("b")],
                }),
                Message::ListPage(ListPage {
                    entries: vec![entry("c")],
                }),
                Message::ListEnd(ListEnd { entries: 3 }),
            ],
            Message::FetchRequest(r) => {
                let data = files[r.path.as_str()];
                let head = Message::FetchResponse(FetchResponse {
                    size: data.len() as u64,
                    mtime_secs: 1,
                    mtime_nanos: 0,
                    offset: 0,
                    length: data.len() as u64,
                });
                if r.path == "slow" {
                    parked = Some(id);
                    vec![head]
                } else if r.path == "overflow" || r.path == "short" {
                    // Announce 3 bytes, then send 5 (or 2) and an end that agrees with
                    // what was sent: the count must still be checked against the header.
                    let sent: &[u8] = if r.path == "overflow" {
                        b"12345"
                    } else {
                        b"12"
                    };
                    vec![
                        head,
                        Message::Data(Bytes::copy_from_slice(sent)),
                        Message::FetchEnd(FetchEnd {
                            bytes: sent.len() as u64,
                            digest: fetch_digest(sent),
                        }),
                    ]
                } else {
                    let mut sha = fetch_digest(data);
                    if r.path == "corrupt" {
                        sha[0] ^= 1;
                    }
                    vec![
                        head,
                        Message::Data(Bytes::from_static(data)),
                        Message::FetchEnd(FetchEnd {
                            bytes: data.len() as u64,
                            digest: sha,
                        }),
                    ]
                }
            }
            Message::Cancel { .. } => vec![],
            other => panic!("fake server got {other:?}"),
        };
        for reply in replies {
            conn.send((id, reply)).await.unwrap();
        }
    }
}

pub(super) async fn pair() -> Client {
    let key = Key::generate();
    let (a, b) = tokio::io::duplex(1 << 16);
    tokio::spawn(fake_server(b, key.clone()));
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    Client::handshake(a, peer, ClientConfig::new(key))
        .await
        .unwrap()
}
