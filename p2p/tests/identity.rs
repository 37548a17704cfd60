//! Peers are known by their node ids, proven inside the swarm session (spec/P2P.md §3.3,
//! issue 11 item 7): a ban outlives a reconnection from a new port, no peer can claim another
//! node's id (not even by relaying that node's own proof), a node that reaches itself drops the
//! connection, and of two connections between two nodes both ends keep the same one.
//!
//! Real nodes and real TCP on 127.0.0.1; the other side is often a hand-driven peer so that the
//! test sees every frame. Real time only bounds failures.

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_p2p::manifest::Manifest;
use ferry_p2p::node::{self, NodeConfig, NodeHandle};
use ferry_p2p::pieces::{make_manifest, Storage};
use ferry_p2p::wire::{self, Greeted, Greeter, PeerMessage};
use ferry_protocol::identity::Identity;
use ferry_protocol::{ErrorCode, Frame, FrameType, RecvHalf, RequestId, SendHalf, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Bounds every wait; a passing test needs a small fraction of it.
const BOUND: Duration = Duration::from_secs(20);

fn manifest(dir: &Path) -> Arc<Manifest> {
    let root = dir.join("src");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("file.bin"), ferry_testkit::data(300_000, 7)).unwrap();
    Arc::new(
        make_manifest(
            &root.join("file.bin"),
            Some(16 * 1024),
            vec![],
            vec![],
            &|_| {},
        )
        .unwrap(),
    )
}

fn config(identity: Option<Identity>, peers: &[SocketAddr]) -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.to_vec(),
        identity,
        ..Default::default()
    }
}

async fn seed(manifest: &Arc<Manifest>, dir: &Path, config: NodeConfig) -> NodeHandle {
    let storage = Storage::open_existing(&dir.join("src"), manifest).unwrap();
    let have = storage.verify(manifest, &|| {});
    assert!(have.is_full());
    node::start(manifest.clone(), Arc::new(storage), have, config)
        .await
        .unwrap()
}

async fn leech(manifest: &Arc<Manifest>, out: &Path, config: NodeConfig) -> NodeHandle {
    let storage = Storage::create(out, manifest).unwrap();
    let have = storage.verify(manifest, &|| {});
    node::start(manifest.clone(), Arc::new(storage), have, config)
        .await
        .unwrap()
}

/// One end of a hand-driven session: frames in and out over a TCP stream.
struct Raw {
    read: OwnedReadHalf,
    recv: RecvHalf,
    buf: BytesMut,
    write: OwnedWriteHalf,
    send: SendHalf,
    binding: [u8; 32],
}

impl Raw {
    fn new(stream: TcpStream, session: ferry_protocol::Session, buf: BytesMut) -> Self {
        let binding = *session.channel_binding().unwrap();
        let (send, recv) = session.into_split();
        let (read, write) = stream.into_split();
        Self {
            read,
            recv,
            buf,
            write,
            send,
            binding,
        }
    }

    /// Dials `addr` and completes the swarm's session handshake.
    async fn dial(addr: SocketAddr, manifest: &Manifest) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut config =
            ferry_protocol::ClientHandshakeConfig::new(wire::swarm_key(&manifest.content_id()));
        config.max_body = wire::MAX_BODY;
        let (session, buf) = ferry_protocol::tokio::client_handshake(&mut stream, config)
            .await
            .unwrap();
        Self::new(stream, session, buf)
    }

    /// Answers the session handshake of a connection a node dialled.
    async fn accept(mut stream: TcpStream, manifest: &Manifest) -> Self {
        let mut config =
            ferry_protocol::ServerHandshakeConfig::new(wire::swarm_key(&manifest.content_id()));
        config.max_body = wire::MAX_BODY;
        let (session, buf) = ferry_protocol::tokio::server_handshake(&mut stream, config)
            .await
            .unwrap();
        Self::new(stream, session, buf)
    }

    /// The next frame; `None` at the end of the stream (or a reset), bounded.
    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(BOUND, async {
            loop {
                if let Some(frame) = self.recv.read_frame(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                match self.read.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("no frame and no end of stream within the bound")
    }

    async fn next_msg(&mut self) -> Option<PeerMessage> {
        let frame = self.next().await?;
        Some(PeerMessage::decode(frame.header.kind, frame.header.service, frame.body).unwrap())
    }

    async fn frame(&mut self, kind: FrameType, service: Service, id: u32, body: &[u8]) {
        let mut out = BytesMut::new();
        self.send
            .write_frame(kind, service, RequestId(id), body, &mut out)
            .unwrap();
        // The node may already have closed; the reads tell.
        let _ = self.write.write_all(&out).await;
    }

    async fn msg(&mut self, msg: &PeerMessage) {
        self.frame(msg.kind(), wire::SERVICE, 0, &msg.to_bytes())
            .await;
    }

    /// The peer handshake as the dialer proving `identity`.
    async fn greet(&mut self, manifest: &Manifest, identity: &Identity) -> Greeted {
        let (mut greeter, hello) =
            Greeter::dial(identity, manifest.content_id(), Some(&self.binding), 0).unwrap();
        self.msg(&hello).await;
        let answer = self.next_msg().await.expect("no HANDSHAKE in answer");
        let (third, greeted) = greeter.handle(answer).unwrap();
        self.msg(&third.unwrap()).await;
        greeted.unwrap()
    }

    /// Reads until an ERROR (on the peer service) and the end of stream after it; every frame
    /// before it must pass `check`. Returns the code.
    async fn error_then_eof(&mut self, mut check: impl FnMut(&Frame)) -> ErrorCode {
        let code = loop {
            let frame = self.next().await.expect("closed without an error frame");
            if frame.header.kind == FrameType::ERROR {
                assert_eq!(frame.header.service, wire::SERVICE);
                break ferry_protocol::ErrorBody::decode(frame.body).unwrap().code;
            }
            check(&frame);
        };
        assert!(self.next().await.is_none(), "a frame after the error");
        code
    }
}

/// Waits, bounded, until `f` holds for the node's counters.
async fn until(handle: &mut NodeHandle, what: &str, f: impl Fn(&ferry_p2p::swarm::Stats) -> bool) {
    let done = tokio::time::timeout(BOUND, async {
        loop {
            if f(&handle.stats.borrow()) {
                return;
            }
            if handle.stats.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok(), "{what}: {:?}", *handle.stats.borrow());
}

/// spec/P2P.md §4.6 with §3.3: a node banned for bad data that comes back from another port
/// (here: another process, no listen port) with the same identity is refused with BANNED before
/// the swarm sees it, so none of its pieces is ever requested; another identity from the same
/// machine is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_node_is_refused_when_it_returns_from_a_new_port() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let liar_secret = [0xb1; 32];
    let mut liar_config = config(Some(Identity::from_secret(liar_secret)), &[]);
    liar_config.dangerous_corrupt_uploads = true;
    let liar = seed(&manifest, dir.path(), liar_config).await;
    let mut leecher = leech(
        &manifest,
        &dir.path().join("out"),
        config(None, &[liar.listen_addr]),
    )
    .await;
    until(&mut leecher, "the liar is not banned", |s| s.banned == 1).await;
    liar.shutdown().await.unwrap();
    until(&mut leecher, "the liar is still connected", |s| {
        s.peers == 0
    })
    .await;

    // The same identity from a new port: BANNED, nothing else, then a clean close.
    let mut back = Raw::dial(leecher.listen_addr, &manifest).await;
    back.greet(&manifest, &Identity::from_secret(liar_secret))
        .await;
    back.msg(&PeerMessage::Bitfield(
        ferry_p2p::pieces::Bitfield::full(manifest.piece_count())
            .as_bytes()
            .to_vec()
            .into(),
    ))
    .await;
    back.msg(&PeerMessage::Unchoke).await;
    let code = back
        .error_then_eof(|frame| panic!("the banned node got {:?}", frame.header))
        .await;
    assert_eq!(code, ErrorCode::BANNED);
    assert_eq!(leecher.stats.borrow().peers, 0);

    // Another identity from the same address is welcome: its first message is a BITFIELD.
    let mut other = Raw::dial(leecher.listen_addr, &manifest).await;
    other
        .greet(&manifest, &Identity::from_secret([0xc2; 32]))
        .await;
    let first = other.next_msg().await;
    assert!(matches!(first, Some(PeerMessage::Bitfield(_))), "{first:?}");
    leecher.shutdown().await.unwrap();
}

/// spec/P2P.md §3.3: a peer that holds the manifest (and so the swarm key) relays a real node's
/// identity proof into its own session with a victim, to be taken for that node (and get it
/// banned with bad data). The proof is bound to the session it was made in, so the victim
/// refuses it with AUTHENTICATION_FAILED and never counts the relay as a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_pass_for_another_node_by_relaying_its_proof() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let honest = seed(
        &manifest,
        dir.path(),
        config(Some(Identity::from_secret([0x11; 32])), &[]),
    )
    .await;
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let victim = leech(
        &manifest,
        &dir.path().join("out"),
        config(None, &[relay.local_addr().unwrap()]),
    )
    .await;
    let (stream, _) = tokio::time::timeout(BOUND, relay.accept())
        .await
        .unwrap()
        .unwrap();
    let mut to_victim = Raw::accept(stream, &manifest).await;
    let mut to_honest = Raw::dial(honest.listen_addr, &manifest).await;
    assert_ne!(to_victim.binding, to_honest.binding);

    // The victim's HANDSHAKE (Noise message 1) to the honest node, its answer (message 2,
    // which proves the honest node's id) back to the victim.
    let hello = to_victim.next_msg().await.unwrap();
    assert!(matches!(hello, PeerMessage::Handshake { .. }), "{hello:?}");
    to_honest.msg(&hello).await;
    let answer = to_honest.next_msg().await.unwrap();
    assert!(
        matches!(answer, PeerMessage::Handshake { .. }),
        "{answer:?}"
    );
    to_victim.msg(&answer).await;
    let code = to_victim
        .error_then_eof(|frame| panic!("the victim sent {:?}", frame.header))
        .await;
    assert_eq!(code, ErrorCode::AUTHENTICATION_FAILED);
    assert_eq!(victim.stats.borrow().peers, 0);
    victim.shutdown().await.unwrap();
    honest.shutdown().await.unwrap();
}

/// spec/P2P.md §3.3: the peer handshake from before identities (a claimed 20-byte id, nothing
/// proven) is refused with UNSUPPORTED_VERSION and a message that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_without_an_identity_is_refused_as_an_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let node = seed(&manifest, dir.path(), config(None, &[])).await;
    let mut old = Raw::dial(node.listen_addr, &manifest).await;
    let mut body = manifest.content_id().0.to_vec();
    body.extend([0x42; 20]);
    body.extend(6881u16.to_be_bytes());
    old.frame(wire::kind::HANDSHAKE, wire::SERVICE, 0, &body)
        .await;
    let code = old
        .error_then_eof(|frame| panic!("the node sent {:?}", frame.header))
        .await;
    assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION);
    node.shutdown().await.unwrap();
}

/// spec/P2P.md §3.3: a connection whose other end proves our own node id is ourselves (or a
/// copy of us): dropped before the swarm sees it, without a BITFIELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_our_own_node_id_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let secret = [0x5e; 32];
    let node = seed(
        &manifest,
        dir.path(),
        config(Some(Identity::from_secret(secret)), &[]),
    )
    .await;
    assert_eq!(node.node_id, Identity::from_secret(secret).id());
    let mut us = Raw::dial(node.listen_addr, &manifest).await;
    let greeted = us.greet(&manifest, &Identity::from_secret(secret)).await;
    assert_eq!(greeted.peer_id, node.peer_id);
    let next = us.next().await;
    assert!(next.is_none(), "{:?}", next.map(|f| f.header));
    assert_eq!(node.stats.borrow().peers, 0);
    node.shutdown().await.unwrap();
}

/// spec/P2P.md §3.3: of two connections between the same two nodes, both ends keep the one
/// with the smaller Noise handshake hash, whichever completed first; the other is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_connections_to_one_node_the_smaller_tiebreak_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let node = seed(&manifest, dir.path(), config(None, &[])).await;
    let me = Identity::from_secret([0x77; 32]);
    let zeros = vec![0u8; manifest.piece_count().div_ceil(8) as usize];
    let mut first = Raw::dial(node.listen_addr, &manifest).await;
    let one = first.greet(&manifest, &me).await;
    first
        .msg(&PeerMessage::Bitfield(zeros.clone().into()))
        .await;
    let mut second = Raw::dial(node.listen_addr, &manifest).await;
    let two = second.greet(&manifest, &me).await;
    second.msg(&PeerMessage::Bitfield(zeros.into())).await;
    assert_eq!(one.peer_id, two.peer_id);
    assert_ne!(one.tiebreak, two.tiebreak);
    let (mut kept, mut closed) = if one.tiebreak < two.tiebreak {
        (first, second)
    } else {
        (second, first)
    };
    // The loser ends (after its BITFIELD, if it was registered first); the winner answers.
    while closed.next().await.is_some() {}
    kept.frame(FrameType::PING, Service::ECHO, 9, b"still here")
        .await;
    loop {
        let frame = kept.next().await.expect("the kept connection was closed");
        assert_ne!(frame.header.kind, FrameType::ERROR);
        if frame.header.kind == FrameType::PONG {
            assert_eq!(frame.body.as_ref(), b"still here");
            break;
        }
    }
    assert_eq!(node.stats.borrow().peers, 1);
    node.shutdown().await.unwrap();
}

/// `spec/vectors/peer-identity.txt` is what the code produces (spec/P2P.md §3.3).
#[test]
fn peer_identity_vectors_are_current() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../spec/vectors/peer-identity.txt"
    );
    let frozen = std::fs::read_to_string(path).unwrap();
    assert!(
        frozen == vectors::file(),
        "spec/vectors/peer-identity.txt differs from the code: a changed vector is a wire change"
    );
}

/// Writes `spec/vectors/peer-identity.txt` afresh; only for a deliberate wire change.
#[test]
#[ignore = "rewrites spec/vectors/peer-identity.txt; run only for a deliberate wire change"]
fn regenerate_peer_identity_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../spec/vectors/peer-identity.txt"
    );
    std::fs::write(path, vectors::file()).unwrap();
}

/// The peer-identity vectors, from the wire encodings and the bound Noise XX of the code.
mod vectors {
    use std::fmt::Write;

    use ferry_p2p::manifest::ContentId;
    use ferry_p2p::wire::{identity_prologue, PeerId, PeerMessage};
    use ferry_protocol::identity::Identity;
    use ferry_protocol::noise::bound::BoundXx;

    fn counting(start: u8) -> [u8; 32] {
        std::array::from_fn(|i| start + i as u8)
    }

    /// Hex in 4-byte groups, 16 bytes a line, continuation lines indented.
    fn hex(bytes: &[u8]) -> String {
        let lines: Vec<String> = bytes
            .chunks(16)
            .map(|line| {
                line.chunks(4)
                    .map(hex::encode)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        lines.join("\n  ")
    }

    fn public(secret: [u8; 32]) -> [u8; 32] {
        *Identity::from_secret(secret).public_key()
    }

    pub fn file() -> String {
        let content_id = ContentId(counting(0xc0));
        let (ds, ls) = (counting(0x10), counting(0x30));
        let (de, le) = (counting(0x50), counting(0x70));
        let (dialer, listener) = (Identity::from_secret(ds), Identity::from_secret(ls));
        let (dport, lport) = (6881u16, 7000u16);
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# Ferry swarm golden vectors: the identity proof inside a swarm session (P2P.md §3.3)"
        );
        let _ = writeln!(w, "# Format: spec/vectors/README.md. Generated from the reference implementation, then frozen.");
        let _ = writeln!(
            w,
            "# Noise_XX_25519_ChaChaPoly_SHA256 with empty payloads and the prologue"
        );
        let _ = writeln!(
            w,
            "# \"ferry p2p identity v1\" || content_id || binding, where binding is the session's"
        );
        let _ = writeln!(
            w,
            "# channel binding (PROTOCOL.md §5.7). The dialer is the initiator. handshake_1 and"
        );
        let _ = writeln!(
            w,
            "# handshake_2 are HANDSHAKE bodies (content_id | listen_port | Noise message 1 or 2),"
        );
        let _ = writeln!(
            w,
            "# identity_3 the IDENTITY body (Noise message 3); handshake_hash is h after message 3"
        );
        let _ = writeln!(
            w,
            "# (the tiebreak of two connections); dialer_peer_id and listener_peer_id are the ids"
        );
        let _ = writeln!(
            w,
            "# the other side learns (the id hashes of PROTOCOL.md §13.1)."
        );
        let _ = writeln!(w, "noise_params: \"Noise_XX_25519_ChaChaPoly_SHA256\"");
        let _ = writeln!(w, "content_id: {}", hex(&content_id.0));
        for (name, secret, e, identity, port) in [
            ("dialer", ds, de, &dialer, dport),
            ("listener", ls, le, &listener, lport),
        ] {
            let _ = writeln!(w, "{name}_static_secret: {}", hex(&secret));
            let _ = writeln!(w, "{name}_static_public: {}", hex(&public(secret)));
            let _ = writeln!(w, "{name}_id: \"{}\"", identity.id());
            let _ = writeln!(w, "{name}_peer_id: {}", hex(&PeerId::from(identity.id()).0));
            let _ = writeln!(w, "{name}_ephemeral_secret: {}", hex(&e));
            let _ = writeln!(w, "{name}_ephemeral_public: {}", hex(&public(e)));
            let _ = writeln!(w, "{name}_listen_port: {port}");
        }
        let cases = [
            ("bound", "Both sides in one session: each learns the other's id; the same h.", counting(0xe0), counting(0xe0)),
            ("relayed", "The listener answers in another session (a relay between two sessions): the dialer's read of message 2 fails its AEAD check and it refuses with AUTHENTICATION_FAILED.", counting(0xe0), counting(0xa0)),
        ];
        for (name, comment, dbind, lbind) in cases {
            let _ = writeln!(w);
            let _ = writeln!(w, "vector: {name}");
            let _ = writeln!(w, "# {comment}");
            let _ = writeln!(w, "binding: {}", hex(&dbind));
            if dbind != lbind {
                let _ = writeln!(w, "listener_binding: {}", hex(&lbind));
            }
            let dprologue = identity_prologue(&content_id, &dbind);
            let lprologue = identity_prologue(&content_id, &lbind);
            let _ = writeln!(w, "prologue: {}", hex(&dprologue));
            let mut d = BoundXx::dangerous_with_ephemeral(&dialer, &dprologue, true, de).unwrap();
            let mut l =
                BoundXx::dangerous_with_ephemeral(&listener, &lprologue, false, le).unwrap();
            let m1 = d.write().unwrap();
            let h1 = PeerMessage::Handshake {
                content_id,
                listen_port: dport,
                noise: m1.clone().into(),
            };
            let _ = writeln!(w, "handshake_1: {}", hex(&h1.to_bytes()));
            l.read(&m1).unwrap();
            let m2 = l.write().unwrap();
            let h2 = PeerMessage::Handshake {
                content_id,
                listen_port: lport,
                noise: m2.clone().into(),
            };
            let _ = writeln!(w, "handshake_2: {}", hex(&h2.to_bytes()));
            if d.read(&m2).is_err() {
                let _ = writeln!(w, "expect_name: AUTHENTICATION_FAILED");
                continue;
            }
            let m3 = d.write().unwrap();
            let _ = writeln!(
                w,
                "identity_3: {}",
                hex(&PeerMessage::Identity(m3.clone().into()).to_bytes())
            );
            l.read(&m3).unwrap();
            assert_eq!(d.remote_id(), Some(listener.id()));
            assert_eq!(l.remote_id(), Some(dialer.id()));
            assert_eq!(d.handshake_hash(), l.handshake_hash());
            let _ = writeln!(w, "handshake_hash: {}", hex(d.handshake_hash().unwrap()));
        }
        out
    }
}

/// `ferry-peer --identity=FILE` and bare `--identity` (the default file in the config
/// directory) create the identity files owner-only on first use, and two nodes proving them
/// complete a download byte-identical.
#[test]
fn ferry_peer_identity_flags_create_and_use_identity_files() {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    const BIN: &str = env!("CARGO_BIN_EXE_ferry-peer");
    /// Kills the child on drop, so a failing test leaves nothing running.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("data.bin"), ferry_testkit::data(500_000, 9)).unwrap();
    let manifest = dir.path().join("tree.ferry");
    let made = Command::new(BIN)
        .args([
            "make",
            tree.to_str().unwrap(),
            "-o",
            manifest.to_str().unwrap(),
        ])
        .args(["--piece-size", "65536", "--no-progress"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    let seed_identity = dir.path().join("seed-identity");
    let mut seed = Running(
        Command::new(BIN)
            .args(["seed", manifest.to_str().unwrap(), "--data"])
            .arg(&tree)
            .args(["--listen", "127.0.0.1:0", "--no-progress"])
            .arg(format!("--identity={}", seed_identity.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(seed.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();

    let config = dir.path().join("config");
    let out = dir.path().join("out");
    let mut get = Running(
        Command::new(BIN)
            .args([
                "get",
                manifest.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ])
            .args(["--listen", "127.0.0.1:0", "--no-progress", "--no-seed"])
            .args(["--peer", &addr, "--identity"])
            .env("XDG_CONFIG_HOME", &config)
            .env("HOME", dir.path().join("home"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = get.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "get did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    get.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    let default_file = config.join("ferry/identity");
    assert!(
        stderr.contains(&format!(
            "created a new identity in {}",
            default_file.display()
        )),
        "{stderr}"
    );
    for file in [&seed_identity, &default_file] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{}: {mode:o}", file.display());
    }
    assert_eq!(
        std::fs::read(out.join("tree/data.bin")).unwrap(),
        std::fs::read(tree.join("data.bin")).unwrap()
    );
}
