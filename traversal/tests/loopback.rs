//! Both ends of every traversal on 127.0.0.1 (port 0): TCP simultaneous open, QUIC punches
//! carrying full Ferry sessions, the raw datagrams beside QUIC, and failures within the
//! deadline. Deadlines here only bound failure; nothing waits on timing luck.

// Test helpers fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::identity::Identity;
use ferry_protocol::noise::{AcceptConfig, ClientIdentityConfig, ServerIdentityConfig};
use ferry_protocol::session::Session;
use ferry_protocol::tokio::FerryCodec;
use ferry_protocol::{ClientHandshakeConfig, Key, Message, RequestId, ServerHandshakeConfig};
use ferry_traversal::quic::PUNCH;
use ferry_traversal::{tcp, QuicEndpoint, Role};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedParts};

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Bounds a test that should finish in milliseconds; only a failure waits this long.
const GENEROUS: Duration = Duration::from_secs(20);

fn framed<S: AsyncRead + AsyncWrite>(
    io: S,
    session: Session,
    leftover: BytesMut,
) -> Framed<S, FerryCodec> {
    let mut parts = FramedParts::new::<(RequestId, Message)>(io, FerryCodec::new(session));
    parts.read_buf = leftover;
    Framed::from_parts(parts)
}

/// Serves pings on a framed connection until the peer closes it.
async fn pong<S: AsyncRead + AsyncWrite + Unpin>(mut conn: Framed<S, FerryCodec>) {
    while let Some(Ok(frame)) = conn.next().await {
        if let Ok(Message::Ping(payload)) = frame.message() {
            if conn
                .send((frame.header.id, Message::Pong(payload)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Sends pings of 1 KiB to 256 KiB (larger than one QUIC packet and than the initial windows)
/// and checks every pong.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Framed<S, FerryCodec>) {
    for (i, len) in [1_024usize, 65_000, 262_144].into_iter().enumerate() {
        let id = RequestId(i as u32 + 1);
        let payload = Bytes::from((0..len).map(|b| (b % 251) as u8).collect::<Vec<u8>>());
        conn.send((id, Message::Ping(payload.clone())))
            .await
            .unwrap();
        let frame = conn.next().await.unwrap().unwrap();
        assert_eq!(frame.header.id, id);
        assert_eq!(frame.message().unwrap(), Message::Pong(payload));
    }
}

async fn punched_quic_pair() -> (ferry_traversal::QuicStream, ferry_traversal::QuicStream) {
    let a = QuicEndpoint::bind(LOOPBACK).unwrap();
    let b = QuicEndpoint::bind(LOOPBACK).unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let start = Instant::now();
    let deadline = start + GENEROUS;
    let (dialer, listener) = tokio::join!(
        a.punch_and_connect(b_addr, Role::Dialer, start, deadline),
        b.punch_and_connect(a_addr, Role::Listener, start, deadline),
    );
    (dialer.unwrap(), listener.unwrap())
}

#[tokio::test]
async fn tcp_simultaneous_open_connects_two_sockets() {
    // Each side holds its port the way its hub connection would, then punches from it.
    let a_port = tcp::reusable_socket(LOOPBACK).unwrap();
    let b_port = tcp::reusable_socket(LOOPBACK).unwrap();
    let (a, b) = (a_port.local_addr().unwrap(), b_port.local_addr().unwrap());
    let start = Instant::now();
    let deadline = start + GENEROUS;
    let (mut x, mut y) = tokio::try_join!(
        tcp::simultaneous_open(a, b, start, deadline),
        tcp::simultaneous_open(b, a, start, deadline),
    )
    .unwrap();
    // One connection, from the ports the hub would have observed.
    assert_eq!(x.local_addr().unwrap(), a);
    assert_eq!(x.peer_addr().unwrap(), b);
    assert_eq!(y.local_addr().unwrap(), b);
    x.write_all(b"from a").await.unwrap();
    y.write_all(b"from b").await.unwrap();
    let mut buf = [0u8; 6];
    y.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"from a");
    x.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"from b");
}

#[tokio::test]
async fn tcp_simultaneous_open_carries_a_psk_session() {
    let a_port = tcp::reusable_socket(LOOPBACK).unwrap();
    let b_port = tcp::reusable_socket(LOOPBACK).unwrap();
    let (a, b) = (a_port.local_addr().unwrap(), b_port.local_addr().unwrap());
    let start = Instant::now();
    let deadline = start + GENEROUS;
    let (x, y) = tokio::try_join!(
        tcp::simultaneous_open(a, b, start, deadline),
        tcp::simultaneous_open(b, a, start, deadline),
    )
    .unwrap();
    let key = Key::from_bytes([7; 32]);
    let server_key = key.clone();
    let server = tokio::spawn(async move {
        pong(
            ferry_protocol::tokio::accept(y, ServerHandshakeConfig::new(server_key))
                .await
                .unwrap(),
        )
        .await
    });
    let mut conn = ferry_protocol::tokio::connect(x, ClientHandshakeConfig::new(key))
        .await
        .unwrap();
    ping(&mut conn).await;
    drop(conn);
    server.await.unwrap();
}

#[tokio::test]
async fn tcp_simultaneous_open_to_a_closed_port_fails_at_the_deadline() {
    // Bound but never listening: every SYN is answered with a reset.
    let closed = tcp::reusable_socket(LOOPBACK).unwrap();
    let remote = closed.local_addr().unwrap();
    let start = Instant::now();
    let error = tcp::simultaneous_open(LOOPBACK, remote, start, start + Duration::from_millis(600))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    let text = error.to_string();
    assert!(text.contains("did not connect within 600 ms"), "{text}");
    assert!(text.contains(&remote.to_string()), "{text}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn quic_punch_carries_a_noise_identity_session() {
    let (dialer, listener) = punched_quic_pair().await;
    let client_identity = Identity::from_secret([1; 32]);
    let server_identity = Identity::from_secret([2; 32]);
    let server_id = server_identity.id();
    let client_id = client_identity.id();
    let server = tokio::spawn(async move {
        let mut io = listener;
        let config = AcceptConfig {
            psk: None,
            identity: Some(ServerIdentityConfig::new(server_identity)),
        };
        let (session, principal, leftover) = ferry_protocol::tokio::server_accept(&mut io, config)
            .await
            .unwrap();
        pong(framed(io, session, leftover)).await;
        principal
    });
    let mut io = dialer;
    let (session, proven, leftover) = ferry_protocol::tokio::client_identity_handshake(
        &mut io,
        ClientIdentityConfig::new(client_identity, Some(server_id)),
    )
    .await
    .unwrap();
    assert_eq!(proven, server_id);
    let mut conn = framed(io, session, leftover);
    ping(&mut conn).await;
    drop(conn);
    let principal = server.await.unwrap();
    assert!(
        format!("{principal:?}").contains(&client_id.to_string()),
        "{principal:?}"
    );
}

#[tokio::test]
async fn quic_stream_shutdown_is_end_of_file_for_the_peer() {
    let (mut dialer, mut listener) = punched_quic_pair().await;
    dialer.write_all(b"last words").await.unwrap();
    dialer.shutdown().await.unwrap();
    let mut got = Vec::new();
    listener.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last words");
    // The other direction is still open.
    listener.write_all(b"reply").await.unwrap();
    drop(listener);
    let mut got = Vec::new();
    dialer.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"reply");
}

#[tokio::test]
async fn quic_punch_to_a_silent_address_fails_at_the_deadline() {
    // A socket that takes every datagram and never answers.
    let silent = UdpSocket::bind(LOOPBACK).unwrap();
    let remote = silent.local_addr().unwrap();
    let endpoint = QuicEndpoint::bind(LOOPBACK).unwrap();
    let start = Instant::now();
    let error = endpoint
        .punch_and_connect(
            remote,
            Role::Dialer,
            start,
            start + Duration::from_millis(800),
        )
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    let text = error.to_string();
    assert!(
        text.contains("did not connect within 800 ms (no punch arrived)"),
        "{text}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The punches did go out.
    let mut buf = [0u8; 64];
    silent.set_read_timeout(Some(GENEROUS)).unwrap();
    let (n, from) = silent.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], PUNCH);
    assert_eq!(from, endpoint.local_addr().unwrap());
}

#[tokio::test]
async fn raw_datagrams_share_the_socket_with_a_live_quic_connection() {
    let a = QuicEndpoint::bind(LOOPBACK).unwrap();
    let b = QuicEndpoint::bind(LOOPBACK).unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let start = Instant::now();
    let deadline = start + GENEROUS;
    let (dialer, listener) = tokio::join!(
        a.punch_and_connect(b_addr, Role::Dialer, start, deadline),
        b.punch_and_connect(a_addr, Role::Listener, start, deadline),
    );
    let (mut dialer, mut listener) = (dialer.unwrap(), listener.unwrap());
    // The punch showed each side where the other's datagrams come from.
    assert_eq!(a.punch_source(b_addr.ip()), Some(b_addr));
    a.send_raw(b_addr, b"\x00hub keep-alive").await.unwrap();
    let (datagram, from) = b.recv_raw().await.unwrap();
    assert_eq!(
        (datagram.as_slice(), from),
        (&b"\x00hub keep-alive"[..], a_addr)
    );
    // A datagram that would look like QUIC is refused before it is sent.
    let error = a.send_raw(b_addr, b"\x40not mine").await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    // And the stream still works.
    dialer.write_all(b"ok").await.unwrap();
    let mut buf = [0u8; 2];
    listener.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
}

#[tokio::test]
async fn quic_listener_refuses_a_stranger_while_it_punches() {
    let listener = QuicEndpoint::bind(LOOPBACK).unwrap();
    let stranger = QuicEndpoint::bind(LOOPBACK).unwrap();
    // The expected peer is on another address of the loopback network.
    let expected: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let start = Instant::now();
    let waiting = listener.punch_and_connect(expected, Role::Listener, start, start + GENEROUS);
    let intruding = stranger.connect(listener.local_addr().unwrap(), start + GENEROUS);
    tokio::select! {
        stream = waiting => panic!("the listener took a stranger: {stream:?}"),
        result = intruding => {
            let error = result.unwrap_err();
            assert!(error.to_string().contains("quic handshake with"), "{error}");
        }
    }
}
