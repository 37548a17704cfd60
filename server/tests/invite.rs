//! `ferry-server invite` and a running `ferry-server --identity` (spec §13.11): the invite is
//! an owner-only file that the running server picks up without a restart; a client enrols with
//! the printed code over the wire; the code never appears in the server's log (at -vv) or in
//! its command line; a stranger that does not ask to enrol is still refused at the handshake.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::BytesMut;
use ferry_protocol::enrol::{ClientEnrol, Code};
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::message::ENROL_WRITE;
use ferry_protocol::noise::ClientIdentityConfig;
use ferry_protocol::{ErrorCode, HandshakeError, Message, RequestId};
use ferry_testkit::fixture::REPLY_TIMEOUT;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `ferry-server ARGS` with its config directory in `dir`: exit code, stdout, stderr.
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

/// The next message of the session.
async fn next(
    stream: &mut TcpStream,
    recv: &mut ferry_protocol::RecvHalf,
    rx: &mut BytesMut,
) -> Message {
    loop {
        if let Some(frame) = recv.read_frame(rx).unwrap() {
            return frame.message().unwrap();
        }
        let n = tokio::time::timeout(REPLY_TIMEOUT, stream.read_buf(rx))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed the connection");
    }
}

/// Enrols `me` with `code` at `addr`, which must prove `server`: the END's name and flags.
async fn enrol(addr: SocketAddr, server: NodeId, me: &Identity, code: &Code) -> (String, u8) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (session, _, binding, mut rx) = ferry_protocol::tokio::client_enrol_handshake(
        &mut stream,
        ClientIdentityConfig::new(me.clone(), Some(server)),
    )
    .await
    .unwrap();
    let (mut send, mut recv) = session.into_split();
    let (enrol, request) = ClientEnrol::start(code, binding);
    let mut out = BytesMut::new();
    send.write_message(RequestId(1), &Message::EnrolRequest(request), &mut out)
        .unwrap();
    stream.write_all(&out).await.unwrap();
    let Message::EnrolResponse(response) = next(&mut stream, &mut recv, &mut rx).await else {
        panic!("expected the server's SPAKE2 answer");
    };
    let confirm = enrol.handle_response(&response).unwrap();
    out.clear();
    send.write_message(RequestId(1), &Message::EnrolConfirm(confirm), &mut out)
        .unwrap();
    stream.write_all(&out).await.unwrap();
    match next(&mut stream, &mut recv, &mut rx).await {
        Message::EnrolEnd(end) => (end.name, end.flags),
        other => panic!("expected the end of the enrolment, got {other:?}"),
    }
}

#[tokio::test]
async fn an_invite_made_while_the_server_runs_enrols_a_client_and_the_code_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("share")).unwrap();
    let identity_flag = format!("--identity={}", dir.path().join("identity").display());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .arg(dir.path().join("share"))
        .args(["--listen", "127.0.0.1:0", "-vv", &identity_flag])
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("HOME", dir.path())
        .env_remove("FERRY_KEY")
        .env_remove("FERRY_KEY_FILE")
        .env_remove("FERRY_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
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

    // A stranger that does not ask to enrol is refused at the handshake, as before.
    let stranger = Identity::from_secret([0x77; 32]);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The client's side completes with NOISE_3; the server's answer is the one
    // AUTHENTICATION_FAILED frame of spec §4.4, byte for byte, then the end of the stream.
    ferry_protocol::tokio::client_identity_handshake(
        &mut stream,
        ClientIdentityConfig::new(stranger.clone(), Some(server)),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let mut expected = BytesMut::new();
    ferry_protocol::handshake::write_error(&HandshakeError::AuthenticationFailed, &mut expected);
    assert_eq!(answer, expected.to_vec());
    assert_eq!(ErrorCode::AUTHENTICATION_FAILED.0, 0x0201);

    // An enrolment session may only enrol, and an unknown nameplate ends it with
    // ENROLMENT_FAILED on id 0 (spec §13.11.2, §13.11.4).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (session, _, binding, mut rx) = ferry_protocol::tokio::client_enrol_handshake(
        &mut stream,
        ClientIdentityConfig::new(stranger.clone(), Some(server)),
    )
    .await
    .unwrap();
    let (mut send, mut recv) = session.into_split();
    let mut out = BytesMut::new();
    let stat = ferry_protocol::message::StatRequest::new("a").unwrap();
    send.write_message(RequestId(5), &Message::StatRequest(stat), &mut out)
        .unwrap();
    stream.write_all(&out).await.unwrap();
    match next(&mut stream, &mut recv, &mut rx).await {
        Message::Error { body, .. } => assert_eq!(body.code, ErrorCode::PERMISSION_DENIED),
        other => panic!("{other:?}"),
    }
    let unknown: Code = "1000-crossover-clockwork".parse().unwrap();
    let (_, request) = ClientEnrol::start(&unknown, binding);
    out.clear();
    send.write_message(RequestId(6), &Message::EnrolRequest(request), &mut out)
        .unwrap();
    stream.write_all(&out).await.unwrap();
    match next(&mut stream, &mut recv, &mut rx).await {
        Message::Error { body, .. } => {
            assert_eq!(body.code, ErrorCode::ENROLMENT_FAILED);
            assert!(body.message.contains("no invite 1000"), "{body:?}");
        }
        other => panic!("{other:?}"),
    }
    drop(stream);

    // The invite, made by a second process while the server runs.
    let port = addr.to_string();
    let (status, printed, err) = ferry_server(
        dir.path(),
        &[
            &identity_flag,
            "invite",
            "--name",
            "bob",
            "--write",
            "--address",
            &port,
        ],
    );
    assert_eq!(status, 0, "{err}");
    let join = printed
        .lines()
        .find(|l| l.contains(" join "))
        .unwrap_or_else(|| panic!("{printed}"));
    let mut words = join.split_whitespace().skip_while(|w| *w != "join").skip(1);
    let code: Code = words.next().unwrap().parse().unwrap();
    assert_eq!(
        words.next().unwrap(),
        format!("ferry://{server}@{addr}/"),
        "{printed}"
    );
    let invites = dir.path().join("config/ferry/invites");
    let file = invites.join(code.nameplate.to_string());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&invites), 0o700);

    let (name, flags) = enrol(addr, server, &stranger, &code).await;
    assert_eq!((name.as_str(), flags), ("bob", ENROL_WRITE));
    assert!(!file.exists());
    let clients =
        std::fs::read_to_string(dir.path().join("config/ferry/authorized_clients")).unwrap();
    assert!(
        clients.contains(&format!("{} bob write", stranger.id())),
        "{clients}"
    );
    // Now the former stranger is a client.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    ferry_protocol::tokio::client_identity_handshake(
        &mut stream,
        ClientIdentityConfig::new(stranger, Some(server)),
    )
    .await
    .unwrap();
    drop(stream);

    // Nothing secret in the process list or the log, though the enrolment is logged.
    let pid = child.id().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&code.to_string()));
    child.start_kill().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    child.wait().await.unwrap();
    assert!(log.contains("enrolled=bob"), "{log}");
    let secret = code.to_string();
    let words: Vec<&str> = secret.split('-').skip(1).collect();
    for word in words {
        assert!(!log.contains(word), "{word} in the log:\n{log}");
    }
}
