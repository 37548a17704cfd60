//! Authorised clients over the wire (issue 11 item 4): the identity handshake admits only the
//! clients of the authorized_clients file, rereads it on every connection (a revoked client
//! gets the same AUTHENTICATION_FAILED bytes as any failure), confines a `root=` client to its
//! subtree and lets only `write` clients upload.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use ferry_protocol::digest::fetch_digest;
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::message::{PutEnd, PutRequest, StatRequest};
use ferry_protocol::noise::ClientIdentityConfig;
use ferry_protocol::tokio::FerryCodec;
use ferry_protocol::{ErrorCode, HandshakeError, Message, RequestId, HEADER_LEN};
use ferry_server::authorized::{self, AuthorizedClients, Client};
use ferry_testkit::fixture::{ServerFixture, REPLY_TIMEOUT};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

fn identity(n: u8) -> Identity {
    Identity::from_secret([n; 32])
}

/// The server's identity in every test.
fn server_identity() -> Identity {
    identity(200)
}

/// A server with the identity handshake, whose clients come from `file`.
async fn server(file: &Path, setup: impl FnOnce(&Path)) -> ServerFixture {
    let resolver = Arc::new(AuthorizedClients::new(file));
    ServerFixture::start_with(setup, move |config| {
        config
            .identity(server_identity())
            .identity_resolver(resolver)
    })
    .await
}

fn client(n: u8, name: &str, root: Option<&str>, write: bool) -> Client {
    Client {
        id: identity(n).id(),
        name: name.into(),
        root: root.map(Into::into),
        write,
    }
}

/// A TCP stream that keeps a copy of every byte it reads.
struct Recording {
    inner: TcpStream,
    seen: Vec<u8>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.seen.extend_from_slice(&buf.filled()[before..]);
        poll
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Conn = Framed<Recording, FerryCodec>;

/// Connects as identity `n`, which must be admitted.
async fn connect(fx: &ServerFixture, n: u8) -> Conn {
    connect_to(fx.addr, server_identity().id(), n).await
}

/// The identity handshake as client `n`, and nothing after it.
async fn handshake(addr: SocketAddr, server: NodeId, n: u8) -> Conn {
    let mut io = Recording {
        inner: TcpStream::connect(addr).await.unwrap(),
        seen: Vec::new(),
    };
    let config = ClientIdentityConfig::new(identity(n), Some(server));
    let (session, _, leftover) = tokio::time::timeout(
        REPLY_TIMEOUT,
        ferry_protocol::tokio::client_identity_handshake(&mut io, config),
    )
    .await
    .expect("handshake within the timeout")
    .expect("handshake completes");
    let mut parts = FramedParts::new::<(RequestId, Message)>(io, FerryCodec::new(session));
    parts.read_buf = leftover;
    Framed::from_parts(parts)
}

async fn connect_to(addr: SocketAddr, server: NodeId, n: u8) -> Conn {
    let mut conn = handshake(addr, server, n).await;
    // The server admits the client only after NOISE_3, so an answer proves it did.
    let pong = ask(&mut conn, 9, Message::Ping(Bytes::from_static(b"hi"))).await;
    assert!(matches!(pong, Message::Pong(_)), "{pong:?}");
    conn
}

/// Connects as identity `n`, which must be refused: every byte the server sent after its
/// NOISE_2 frame, read to the end of the stream.
async fn refused(fx: &ServerFixture, n: u8) -> Vec<u8> {
    refused_by(fx.addr, server_identity().id(), n).await
}

async fn refused_by(addr: SocketAddr, server: NodeId, n: u8) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut io = Recording {
        inner: stream,
        seen: Vec::new(),
    };
    let config = ClientIdentityConfig::new(identity(n), Some(server));
    // The client side completes after sending NOISE_3; the refusal follows it.
    let _ = tokio::time::timeout(
        REPLY_TIMEOUT,
        ferry_protocol::tokio::client_identity_handshake(&mut io, config),
    )
    .await
    .expect("handshake within the timeout");
    let mut rest = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, io.read_to_end(&mut rest))
        .await
        .expect("the server closes")
        .unwrap();
    // NOISE_2: a header and e (32) || ENC(s) (48) || ENC(choice) (3 + 16).
    io.seen[HEADER_LEN + 32 + 48 + 19..].to_vec()
}

/// The one AUTHENTICATION_FAILED frame every handshake failure sends (spec §4.4, §13.4).
fn auth_failed() -> Vec<u8> {
    let mut out = BytesMut::new();
    ferry_protocol::handshake::write_error(&HandshakeError::AuthenticationFailed, &mut out);
    out.to_vec()
}

async fn ask(conn: &mut Conn, id: u32, message: Message) -> Message {
    conn.send((RequestId(id), message)).await.unwrap();
    let frame = tokio::time::timeout(REPLY_TIMEOUT, conn.next())
        .await
        .expect("reply within the timeout")
        .expect("connection open")
        .expect("frame decodes");
    assert_eq!(frame.header.id, RequestId(id));
    frame.message().unwrap()
}

async fn stat(conn: &mut Conn, path: &str) -> Result<u64, ErrorCode> {
    match ask(
        conn,
        1,
        Message::StatRequest(StatRequest { path: path.into() }),
    )
    .await
    {
        Message::StatResponse(entry) => Ok(entry.size),
        Message::Error { body, .. } => Err(body.code),
        other => panic!("unexpected {other:?}"),
    }
}

/// Uploads `data` as `path`: the stored length, or the error code.
async fn put(conn: &mut Conn, path: &str, data: &'static [u8]) -> Result<u64, ErrorCode> {
    let request = PutRequest::new(path, data.len() as u64, 0o644, 0, fetch_digest(data)).unwrap();
    match ask(conn, 3, Message::PutRequest(request)).await {
        Message::PutResponse(_) => {}
        Message::Error { body, .. } => return Err(body.code),
        other => panic!("unexpected {other:?}"),
    }
    conn.send((RequestId(3), Message::PutData(Bytes::from_static(data))))
        .await
        .unwrap();
    let end = PutEnd {
        bytes: data.len() as u64,
        digest: fetch_digest(data),
    };
    match ask(conn, 3, Message::PutEnd(end)).await {
        Message::PutEnd(stored) => Ok(stored.bytes),
        Message::Error { body, .. } => Err(body.code),
        other => panic!("unexpected {other:?}"),
    }
}

fn file_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join(authorized::FILE_NAME)
}

#[tokio::test]
async fn a_revoked_client_is_refused_on_its_next_connection_like_any_failure() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir);
    let fx = server(&file, |root| {
        std::fs::write(root.join("a"), b"hello").unwrap()
    })
    .await;

    // No file: nobody is authorised.
    let nobody = refused(&fx, 1).await;
    assert_eq!(nobody, auth_failed());

    authorized::authorize(&file, &client(1, "alice", None, false)).unwrap();
    let mut alice = connect(&fx, 1).await;
    assert_eq!(stat(&mut alice, "a").await, Ok(5));

    // Revoked: the next connection fails at NOISE_3 with the very bytes a stranger gets.
    authorized::revoke(&file, "alice").unwrap();
    let revoked = refused(&fx, 1).await;
    let stranger = refused(&fx, 9).await;
    assert_eq!(revoked, auth_failed());
    assert_eq!(stranger, auth_failed());
    drop(alice);
    fx.shutdown().await;
}

#[tokio::test]
async fn a_client_with_a_root_sees_only_its_subtree() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir);
    authorized::authorize(&file, &client(2, "bob", Some("team/bob"), false)).unwrap();
    let fx = server(&file, |root| {
        std::fs::create_dir_all(root.join("team/bob/docs")).unwrap();
        std::fs::write(root.join("team/bob/docs/mine.txt"), b"bob's").unwrap();
        std::fs::write(root.join("team/other.txt"), b"not bob's").unwrap();
        std::fs::write(root.join("top.txt"), b"top secret").unwrap();
        // Links inside the subtree that leave it: to the root and beyond, relative and absolute.
        std::os::unix::fs::symlink("../other.txt", root.join("team/bob/up")).unwrap();
        std::os::unix::fs::symlink("../../top.txt", root.join("team/bob/top")).unwrap();
        std::os::unix::fs::symlink(root.join("top.txt"), root.join("team/bob/abs")).unwrap();
        std::os::unix::fs::symlink("..", root.join("team/bob/dotdot")).unwrap();
    })
    .await;
    let mut bob = connect(&fx, 2).await;
    assert_eq!(
        stat(&mut bob, "docs/mine.txt").await,
        Ok(5),
        "its root is /"
    );
    for path in ["top.txt", "team/other.txt", "other.txt"] {
        assert_eq!(
            stat(&mut bob, path).await,
            Err(ErrorCode::NOT_FOUND),
            "{path}"
        );
    }
    for path in [
        "/top.txt",
        "../other.txt",
        "../../top.txt",
        "docs/../../other.txt",
    ] {
        assert_eq!(
            stat(&mut bob, path).await,
            Err(ErrorCode::INVALID_PATH),
            "{path}"
        );
    }
    for path in ["up", "top", "abs", "dotdot/other.txt"] {
        let answer = stat(&mut bob, path).await;
        assert!(
            answer.is_err(),
            "{path}: a link out of the subtree must not be followed, got {answer:?}"
        );
    }
    drop(bob);
    fx.shutdown().await;
}

#[tokio::test]
async fn a_client_whose_root_is_missing_is_told_why_the_connection_ends() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir);
    authorized::authorize(&file, &client(2, "bob", Some("team/bob"), false)).unwrap();
    let fx = server(&file, |root| {
        std::fs::create_dir_all(root.join("team")).unwrap()
    })
    .await;
    let mut bob = handshake(fx.addr, server_identity().id(), 2).await;
    let frame = tokio::time::timeout(REPLY_TIMEOUT, bob.next())
        .await
        .expect("a goodbye within the timeout")
        .expect("an error frame before the close")
        .expect("frame decodes");
    assert_eq!(frame.header.id, RequestId::CONNECTION);
    match frame.message().unwrap() {
        Message::Error { body, .. } => {
            assert_eq!(body.code, ErrorCode::INTERNAL);
            assert!(
                body.message.contains("team/bob"),
                "the message names the root: {}",
                body.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // The server goes on serving others.
    drop(bob);
    let resolver_ok = client(3, "carol", None, false);
    authorized::authorize(&file, &resolver_ok).unwrap();
    let mut carol = connect(&fx, 3).await;
    assert_eq!(stat(&mut carol, "team").await.map(|_| ()), Ok(()));
}

#[tokio::test]
async fn only_a_write_client_may_upload_and_within_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_in(&dir);
    authorized::authorize(&file, &client(3, "reader", None, false)).unwrap();
    authorized::authorize(&file, &client(4, "writer", Some("drop"), true)).unwrap();
    let fx = server(&file, |root| {
        std::fs::create_dir(root.join("drop")).unwrap()
    })
    .await;

    let mut reader = connect(&fx, 3).await;
    assert_eq!(
        put(&mut reader, "x.txt", b"hello").await,
        Err(ErrorCode::READ_ONLY)
    );
    assert!(!fx.root().join("x.txt").exists());

    let mut writer = connect(&fx, 4).await;
    assert_eq!(put(&mut writer, "x.txt", b"hello").await, Ok(5));
    assert_eq!(
        std::fs::read(fx.root().join("drop/x.txt")).unwrap(),
        b"hello"
    );
    assert!(!fx.root().join("x.txt").exists());
    drop((reader, writer));
    fx.shutdown().await;
}

/// Runs `ferry-server ARGS` with its config directory in `dir`: exit code, stdout, stderr.
fn ferry_server(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .args(args)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("HOME", dir)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
fn the_subcommands_edit_and_list_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients");
    let f = file.to_str().unwrap();
    let (bob, carol) = (identity(1).id().to_string(), identity(2).id().to_string());
    let args = [
        "authorize",
        &bob,
        "--name",
        "bob",
        "--root",
        "team/bob/",
        "--write",
    ];
    let (code, out, err) = ferry_server(
        dir.path(),
        &[&args[..], &["--authorized-clients", f]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("authorised: "), "{out}");
    let (code, _, err) = ferry_server(
        dir.path(),
        &[
            "--authorized-clients",
            f,
            "authorize",
            &carol,
            "--name",
            "carol",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, table, _) = ferry_server(dir.path(), &["clients", "--authorized-clients", f]);
    assert_eq!(code, 0);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "ID", "ROOT", "ACCESS"],
            vec!["bob", &bob, "team/bob/", "read-write"],
            vec!["carol", &carol, "/", "read-only"],
        ]
    );
    // A name already taken by another id is refused; revoking by name, then by id.
    let (code, _, err) = ferry_server(
        dir.path(),
        &[
            "authorize",
            &carol,
            "--name",
            "bob",
            "--authorized-clients",
            f,
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("already belongs"), "{err}");
    assert_eq!(
        ferry_server(dir.path(), &["revoke", "bob", "--authorized-clients", f]).0,
        0
    );
    assert_eq!(
        ferry_server(dir.path(), &["revoke", &carol, "--authorized-clients", f]).0,
        0
    );
    let (code, _, err) = ferry_server(dir.path(), &["revoke", "bob", "--authorized-clients", f]);
    assert_eq!(code, 1);
    assert!(err.contains("no client bob"), "{err}");
    let (_, table, _) = ferry_server(dir.path(), &["clients", "--authorized-clients", f]);
    assert_eq!(table.lines().count(), 1, "{table}");
    // The file is owner-only, and one others may write is refused with the chmod hint.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, err) = ferry_server(dir.path(), &["clients", "--authorized-clients", f]);
    assert_eq!(code, 1);
    assert!(err.contains("chmod 600"), "{err}");
}

/// The binary with --identity: nobody is authorised at first (and it says how to change
/// that); `ferry-server authorize` on the default file admits a client from its next
/// connection, whose requests are logged with its name, and `revoke` refuses it again,
/// without a restart.
#[tokio::test]
async fn the_server_binary_admits_exactly_the_clients_of_the_default_file() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("share")).unwrap();
    std::fs::write(dir.path().join("share/a"), b"hello").unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .arg(dir.path().join("share"))
        .args(["--listen", "127.0.0.1:0", "-v"])
        .arg(format!(
            "--identity={}",
            dir.path().join("identity").display()
        ))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("HOME", dir.path())
        .env_remove("FERRY_KEY")
        .env_remove("FERRY_KEY_FILE")
        .env_remove("FERRY_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said_nobody = false;
    while let Some(line) = tokio::time::timeout(REPLY_TIMEOUT, stderr.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        if line.contains("no client is authorised") {
            assert!(
                line.contains("ferry-server authorize ID --name NAME"),
                "{line}"
            );
            said_nobody = true;
            break;
        }
    }
    assert!(said_nobody);
    // The second connect line names the server: `ferry shell ferry://ID@HOST:PORT/`.
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = String::new();
    for _ in 0..2 {
        line = tokio::time::timeout(REPLY_TIMEOUT, stdout.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let (id, addr) = line
        .split_whitespace()
        .last()
        .and_then(|url| {
            url.strip_prefix("ferry://")?
                .strip_suffix('/')?
                .split_once('@')
        })
        .unwrap();
    let (server, addr): (NodeId, SocketAddr) = (id.parse().unwrap(), addr.parse().unwrap());

    assert_eq!(refused_by(addr, server, 1).await, auth_failed());
    let alice = identity(1).id().to_string();
    assert_eq!(
        ferry_server(dir.path(), &["authorize", &alice, "--name", "alice"]).0,
        0
    );
    let mut conn = connect_to(addr, server, 1).await;
    assert_eq!(stat(&mut conn, "a").await, Ok(5));
    // The request's log line carries the client's name (the connection span's field).
    let logged = loop {
        let line = tokio::time::timeout(REPLY_TIMEOUT, stderr.next_line())
            .await
            .expect("the request is logged")
            .unwrap()
            .expect("a log line");
        if line.contains("request") && line.contains("\"a\"") {
            break line;
        }
    };
    assert!(logged.contains("client=alice"), "{logged}");
    assert_eq!(ferry_server(dir.path(), &["revoke", "alice"]).0, 0);
    assert_eq!(refused_by(addr, server, 1).await, auth_failed());
    drop(conn);
    child.kill().await.unwrap();
}
