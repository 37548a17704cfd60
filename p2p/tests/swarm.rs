//! In-process swarms on loopback: real nodes, real TCP, a real tracker, real files.

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_p2p::manifest::Manifest;
use ferry_p2p::node::{self, NodeConfig, NodeHandle};
use ferry_p2p::pieces::{make_manifest, Storage};
use ferry_p2p::tracker::{server, TrackerConfig};
use tokio_util::sync::CancellationToken;

/// Bounds a download that fails: a passing swarm here takes about 12 s on an idle 2-core
/// machine and 50 s when the whole suite runs beside it, so the bound is well above both.
const COMPLETE_WITHIN: Duration = Duration::from_secs(180);

/// Content under `<dir>/src/tree`: a few files of pseudo-random bytes, one empty, one nested.
fn make_tree(dir: &Path, size: usize) -> PathBuf {
    let root = dir.join("src/tree");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("big.bin"), ferry_testkit::data(size, 1)).unwrap();
    std::fs::write(root.join("sub/small.txt"), ferry_testkit::data(10_000, 2)).unwrap();
    std::fs::write(
        root.join("sub/deeper/odd"),
        ferry_testkit::data(size / 3 + 17, 3),
    )
    .unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    root
}

async fn start_tracker() -> (SocketAddr, CancellationToken) {
    let cancel = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let config = TrackerConfig {
        interval: Duration::from_secs(2),
        ..Default::default()
    };
    tokio::spawn(server::serve(
        "127.0.0.1:0".parse().unwrap(),
        config,
        cancel.clone(),
        move |a| {
            let _ = tx.send(a);
        },
    ));
    (rx.await.unwrap(), cancel)
}

fn config(trackers: &[SocketAddr], peers: &[SocketAddr], seed_after: bool) -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        trackers: trackers.to_vec(),
        peers: peers.to_vec(),
        seed_after_complete: seed_after,
        ..Default::default()
    }
}

async fn seed(manifest: &Arc<Manifest>, data_root: &Path, config: NodeConfig) -> NodeHandle {
    let storage = Storage::open_existing(data_root, manifest).unwrap();
    let have = storage.verify(manifest, &|| {});
    assert!(have.is_full());
    node::start(manifest.clone(), Arc::new(storage), have, config)
        .await
        .unwrap()
}

async fn leech(manifest: &Arc<Manifest>, out: &Path, config: NodeConfig) -> (NodeHandle, u32) {
    let storage = Storage::create(out, manifest).unwrap();
    let have = storage.verify(manifest, &|| {});
    let count = have.count();
    let handle = node::start(manifest.clone(), Arc::new(storage), have, config)
        .await
        .unwrap();
    (handle, count)
}

fn assert_identical(manifest: &Manifest, a: &Path, b: &Path) {
    for file in manifest.files() {
        let x = std::fs::read(file.path.under(a)).unwrap();
        let y = std::fs::read(file.path.under(b)).unwrap();
        assert!(x == y, "{} differs", file.path);
    }
}

/// Waits (bounded) until the node has every piece.
async fn until_complete(handle: &mut NodeHandle, limit: Duration) {
    let pieces = handle.stats.borrow().pieces;
    let done = tokio::time::timeout(limit, async {
        loop {
            if handle.stats.borrow().have == pieces {
                return;
            }
            if handle.stats.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "not complete after {limit:?}: {:?}",
        *handle.stats.borrow()
    );
}

fn manifest_for(tree: &Path, piece_size: u32, trackers: Vec<String>) -> Arc<Manifest> {
    Arc::new(make_manifest(tree, Some(piece_size), trackers, vec![], &|_| {}).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_five_leechers_byte_identical_via_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 3 << 20);
    let manifest = manifest_for(&tree, 64 * 1024, vec![]);
    let (tracker, tracker_cancel) = start_tracker().await;
    let seed = seed(
        &manifest,
        &dir.path().join("src"),
        config(&[tracker], &[], true),
    )
    .await;
    let mut leechers = Vec::new();
    for i in 0..5 {
        let out = dir.path().join(format!("out{i}"));
        let (handle, had) = leech(&manifest, &out, config(&[tracker], &[], true)).await;
        assert_eq!(had, 0);
        leechers.push((handle, out));
    }
    for (handle, _) in leechers.iter_mut() {
        until_complete(handle, COMPLETE_WITHIN).await;
    }
    let uploaded_by_leechers: u64 = leechers
        .iter()
        .map(|(h, _)| h.stats.borrow().uploaded)
        .sum();
    for (handle, out) in leechers {
        assert_identical(&manifest, &dir.path().join("src"), &out);
        assert_eq!(handle.stats.borrow().hash_failures, 0);
        handle.shutdown().await.unwrap();
    }
    // The swarm shared the load: leechers served each other, not only the seed.
    assert!(uploaded_by_leechers > 0);
    seed.shutdown().await.unwrap();
    tracker_cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_peer_is_banned_and_download_completes() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 2 << 20);
    let manifest = manifest_for(&tree, 16 * 1024, vec![]);
    let data = dir.path().join("src");
    let honest = seed(&manifest, &data, config(&[], &[], true)).await;
    let mut bad_config = config(&[], &[], true);
    bad_config.dangerous_corrupt_uploads = true;
    let bad = seed(&manifest, &data, bad_config).await;
    let out = dir.path().join("out");
    let (mut leecher, _) = leech(
        &manifest,
        &out,
        config(&[], &[bad.listen_addr, honest.listen_addr], true),
    )
    .await;
    until_complete(&mut leecher, COMPLETE_WITHIN).await;
    assert_identical(&manifest, &data, &out);
    let stats = *leecher.stats.borrow();
    // Exactly one ban: the liar, never the honest seed.
    assert_eq!(stats.banned, 1, "{stats:?}");
    assert!(stats.hash_failures >= 2, "{stats:?}");
    leecher.shutdown().await.unwrap();
    honest.shutdown().await.unwrap();
    bad.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_peers_leave_and_join() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 3 << 20);
    let manifest = manifest_for(&tree, 32 * 1024, vec![]);
    let (tracker, tracker_cancel) = start_tracker().await;
    let data = dir.path().join("src");
    let seed = seed(&manifest, &data, config(&[tracker], &[], true)).await;
    let mut stayers = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("stay{i}"));
        stayers.push((
            leech(&manifest, &out, config(&[tracker], &[], true))
                .await
                .0,
            out,
        ));
    }
    // Two peers that leave part-way.
    let mut leavers = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("leave{i}"));
        leavers.push(
            leech(&manifest, &out, config(&[tracker], &[], true))
                .await
                .0,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for l in leavers {
        l.abort();
    }
    // Two newcomers join after the departures.
    for i in 0..2 {
        let out = dir.path().join(format!("join{i}"));
        stayers.push((
            leech(&manifest, &out, config(&[tracker], &[], true))
                .await
                .0,
            out,
        ));
    }
    for (handle, _) in stayers.iter_mut() {
        until_complete(handle, COMPLETE_WITHIN).await;
    }
    for (handle, out) in stayers {
        assert_identical(&manifest, &data, &out);
        handle.shutdown().await.unwrap();
    }
    seed.shutdown().await.unwrap();
    tracker_cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_keeps_verified_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 4 << 20);
    let manifest = manifest_for(&tree, 16 * 1024, vec![]);
    let data = dir.path().join("src");
    let mut seed_config = config(&[], &[], true);
    // A slow seed, so the kill lands mid-download: one unchoked peer, short pipeline.
    seed_config.swarm.pipeline = 2;
    let seed = seed(&manifest, &data, seed_config).await;
    let out = dir.path().join("out");
    let mut leech_config = config(&[], &[seed.listen_addr], false);
    leech_config.swarm.pipeline = 2;
    let (mut first, had) = leech(&manifest, &out, leech_config.clone()).await;
    assert_eq!(had, 0);
    let total = manifest.piece_count();
    tokio::time::timeout(Duration::from_secs(30), async {
        while first.stats.borrow().have < total / 10 {
            first.stats.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let before = first.stats.borrow().have;
    first.abort();
    // Let the aborted tasks finish their in-flight piece writes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut second, had) = leech(&manifest, &out, config(&[], &[seed.listen_addr], false)).await;
    assert!(
        had >= before.saturating_sub(2) && had > 0,
        "resumed with {had}, had {before}"
    );
    assert!(
        had < total,
        "download finished before the kill; test proves nothing"
    );
    until_complete(&mut second, COMPLETE_WITHIN).await;
    second.wait().await.unwrap();
    assert_identical(&manifest, &data, &out);
    seed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_manifest_cannot_join_the_swarm() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 100_000);
    let manifest = manifest_for(&tree, 16 * 1024, vec![]);
    let data = dir.path().join("src");
    let seed = seed(&manifest, &data, config(&[], &[], true)).await;
    // Same files, different piece size: a different content id, hence a different key.
    let other = manifest_for(&tree, 32 * 1024, vec![]);
    assert_ne!(other.content_id(), manifest.content_id());
    let out = dir.path().join("out");
    let (handle, _) = leech(&other, &out, config(&[], &[seed.listen_addr], true)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = *handle.stats.borrow();
    assert_eq!((stats.peers, stats.have), (0, 0));
    handle.shutdown().await.unwrap();
    seed.shutdown().await.unwrap();
}

/// A running ferry-server as the only source, then beside a seed: the download completes from
/// byte-range fetches, verified piece by piece like any peer's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_server_as_a_source() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 1 << 20);
    let manifest = manifest_for(&tree, 32 * 1024, vec![]);
    let data = dir.path().join("src");
    let key = ferry_protocol::Key::generate();
    let server = ferry_server::Server::bind(
        ferry_server::Config::new(&data, key.clone()).listen(["127.0.0.1:0".parse().unwrap()]),
    )
    .await
    .unwrap();
    let addr = server.local_addrs()[0];
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let served = tokio::spawn(server.run(async move { stopped.cancelled().await }));
    let source = ferry_p2p::source::ServerSource {
        url: ferry_client::FerryUrl::from_socket_addr(addr),
        key,
    };
    // Server only.
    let out = dir.path().join("out1");
    let mut cfg = config(&[], &[], false);
    cfg.servers = vec![source.clone()];
    let (mut only, _) = leech(&manifest, &out, cfg).await;
    until_complete(&mut only, COMPLETE_WITHIN).await;
    only.wait().await.unwrap();
    assert_identical(&manifest, &data, &out);
    // Server and a seed together.
    let seed = seed(&manifest, &data, config(&[], &[], true)).await;
    let out = dir.path().join("out2");
    let mut cfg = config(&[], &[seed.listen_addr], false);
    cfg.servers = vec![source];
    let (mut both, _) = leech(&manifest, &out, cfg).await;
    until_complete(&mut both, COMPLETE_WITHIN).await;
    both.wait().await.unwrap();
    assert_identical(&manifest, &data, &out);
    seed.shutdown().await.unwrap();
    stop.cancel();
    served.await.unwrap().unwrap();
}

/// A peer that completes the handshake and then sends an over-long frame, and one that sends
/// data before its bitfield, are dropped; the seed keeps serving an honest leecher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_dropped_and_others_still_served() {
    use ferry_p2p::wire::{self, PeerMessage};
    use ferry_protocol::{FrameType, Header, RequestId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 200_000);
    let manifest = manifest_for(&tree, 16 * 1024, vec![]);
    let data = dir.path().join("src");
    let seed = seed(&manifest, &data, config(&[], &[], true)).await;

    for attack in 0..2 {
        let (reader, mut writer) = raw_greeted(seed.listen_addr, &manifest, 0x42 + attack).await;
        let mut out = bytes::BytesMut::new();
        if attack == 0 {
            // A header announcing 200 000 bytes: over the 96 KiB cap.
            let mut header = Header::new(FrameType(0x38), wire::SERVICE, RequestId(0), 200_000);
            header.version = ferry_protocol::handshake::MAX_VERSION;
            header.encode(&mut out);
            out.extend_from_slice(&[0u8; 1024]);
        } else {
            // A piece before any bitfield.
            let piece = PeerMessage::Piece {
                piece: 0,
                offset: 0,
                data: vec![1u8; 100].into(),
            };
            writer
                .send
                .write_frame(
                    piece.kind(),
                    wire::SERVICE,
                    RequestId(0),
                    &piece.to_bytes(),
                    &mut out,
                )
                .unwrap();
        }
        writer.write.write_all(&out).await.unwrap();
        let mut stream = reader.read;
        // The seed closes the connection: reads end (EOF or reset) within the bound.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "attack {attack}: connection not dropped");
    }
    let out = dir.path().join("out");
    let (mut leecher, _) = leech(&manifest, &out, config(&[], &[seed.listen_addr], false)).await;
    until_complete(&mut leecher, Duration::from_secs(30)).await;
    leecher.wait().await.unwrap();
    assert_identical(&manifest, &data, &out);
    seed.shutdown().await.unwrap();
}

/// The read side of a hand-driven peer: frames in, and how the stream ended.
struct RawReader {
    read: tokio::net::tcp::OwnedReadHalf,
    recv: ferry_protocol::RecvHalf,
    buf: bytes::BytesMut,
}

impl RawReader {
    /// The next frame; `Ok(None)` at a clean end of stream (FIN), `Err` on a reset.
    async fn next(&mut self) -> std::io::Result<Option<ferry_protocol::Frame>> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(frame) = self.recv.read_frame(&mut self.buf).unwrap() {
                return Ok(Some(frame));
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                assert!(self.buf.is_empty(), "stream ended inside a frame");
                return Ok(None);
            }
        }
    }

    /// Skips the node's ordinary messages up to its ERROR (on the peer service, id 0), checks
    /// that a clean end of stream follows, and returns the code. Bounded.
    async fn error_then_eof(&mut self) -> ferry_protocol::ErrorCode {
        use ferry_p2p::wire;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let code = loop {
                let frame = match self.next().await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => panic!("closed without an error frame"),
                    Err(e) => panic!("reset instead of an error frame: {e}"),
                };
                if frame.header.kind == ferry_protocol::FrameType::ERROR {
                    assert_eq!(frame.header.service, wire::SERVICE);
                    assert_eq!(frame.header.id, ferry_protocol::RequestId(0));
                    break ferry_protocol::ErrorBody::decode(frame.body).unwrap().code;
                }
            };
            match self.next().await {
                Ok(None) => {}
                Ok(Some(frame)) => panic!("frame after the error: {:?}", frame.header),
                Err(e) => panic!("reset after the error frame: {e}"),
            }
            code
        })
        .await;
        ended.expect("no error frame and end of stream within 10 s")
    }
}

/// The write side of a hand-driven peer.
struct RawWriter {
    write: tokio::net::tcp::OwnedWriteHalf,
    send: ferry_protocol::SendHalf,
}

impl RawWriter {
    async fn frame(
        &mut self,
        kind: ferry_protocol::FrameType,
        service: ferry_protocol::Service,
        id: u32,
        body: &[u8],
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        self.send
            .write_frame(kind, service, ferry_protocol::RequestId(id), body, &mut out)
            .unwrap();
        self.write.write_all(&out).await
    }

    async fn msg(&mut self, msg: &ferry_p2p::wire::PeerMessage) -> std::io::Result<()> {
        self.frame(msg.kind(), ferry_p2p::wire::SERVICE, 0, &msg.to_bytes())
            .await
    }
}

/// Dials a node, completes the session and peer handshakes as peer `id`, and sends `bitfield`.
async fn raw_peer(
    addr: SocketAddr,
    manifest: &Manifest,
    id: u8,
    bitfield: Vec<u8>,
) -> (RawReader, RawWriter) {
    let (reader, mut writer) = raw_greeted(addr, manifest, id).await;
    writer
        .msg(&ferry_p2p::wire::PeerMessage::Bitfield(bitfield.into()))
        .await
        .unwrap();
    (reader, writer)
}

/// Dials a node and completes the session and peer handshakes (spec/P2P.md §3.3) as the node
/// whose identity secret is `id` repeated.
async fn raw_greeted(addr: SocketAddr, manifest: &Manifest, id: u8) -> (RawReader, RawWriter) {
    use ferry_p2p::wire::{self, Greeter, PeerMessage};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut client =
        ferry_protocol::ClientHandshakeConfig::new(wire::swarm_key(&manifest.content_id()));
    client.max_body = wire::MAX_BODY;
    let (session, buf) = ferry_protocol::tokio::client_handshake(&mut stream, client)
        .await
        .unwrap();
    let identity = ferry_protocol::identity::Identity::from_secret([id; 32]);
    let (mut greeter, hello) = Greeter::dial(
        &identity,
        manifest.content_id(),
        session.channel_binding(),
        0,
    )
    .unwrap();
    let (send, recv) = session.into_split();
    let (read, write) = stream.into_split();
    let (mut reader, mut writer) = (RawReader { read, recv, buf }, RawWriter { write, send });
    writer.msg(&hello).await.unwrap();
    let theirs = reader.next().await.unwrap().unwrap();
    assert_eq!(theirs.header.kind, wire::kind::HANDSHAKE);
    let theirs = PeerMessage::decode(theirs.header.kind, theirs.header.service, theirs.body);
    let (identity_msg, greeted) = greeter.handle(theirs.unwrap()).unwrap();
    assert!(greeted.is_some());
    writer.msg(&identity_msg.unwrap()).await.unwrap();
    (reader, writer)
}

/// issue 17 item 1: every malformed frame gets one ERROR frame with the code spec/P2P.md §3.2
/// names, then a clean close (FIN, not a reset), and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_wire_violation_gets_its_error_frame_then_a_clean_close() {
    use ferry_p2p::wire;
    use ferry_protocol::{ErrorCode, FrameType, Header, RequestId, Service};
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 200_000);
    let manifest = manifest_for(&tree, 16 * 1024, vec![]);
    let data = dir.path().join("src");
    let seed = seed(&manifest, &data, config(&[], &[], true)).await;
    let zeros = vec![0u8; manifest.piece_count().div_ceil(8) as usize];

    let mut request = vec![0u8; 8];
    request.extend(16_385u32.to_be_bytes());
    let mut pex51 = vec![51u8];
    pex51.extend([4, 10, 0, 0, 1, 0x1a, 0xe1].repeat(51));
    let peer = wire::SERVICE;
    let cases: Vec<(&str, FrameType, Service, Vec<u8>, ErrorCode)> = vec![
        (
            "have of 5 bytes",
            wire::kind::HAVE,
            peer,
            vec![0; 5],
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "unknown type",
            FrameType(0x3F),
            peer,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
        ),
        (
            "request of length 0",
            wire::kind::REQUEST,
            peer,
            vec![0; 12],
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "request of 16385",
            wire::kind::REQUEST,
            peer,
            request,
            ErrorCode::TOO_LARGE,
        ),
        (
            "pex family 5",
            wire::kind::PEX,
            peer,
            vec![1, 5],
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "pex of 51",
            wire::kind::PEX,
            peer,
            pex51,
            ErrorCode::TOO_LARGE,
        ),
        (
            "a list request",
            FrameType::REQUEST,
            Service::LIST,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
        ),
        (
            "have out of range",
            wire::kind::HAVE,
            peer,
            9_999u32.to_be_bytes().to_vec(),
            ErrorCode::INVALID_RANGE,
        ),
    ];
    for (i, (what, kind, service, body, want)) in cases.into_iter().enumerate() {
        let (mut reader, mut writer) =
            raw_peer(seed.listen_addr, &manifest, 0x40 + i as u8, zeros.clone()).await;
        writer.frame(kind, service, 0, &body).await.unwrap();
        assert_eq!(reader.error_then_eof().await, want, "{what}");
    }

    // A frame header over the 96 KiB cap, body never sent in full.
    let (mut reader, mut writer) = raw_peer(seed.listen_addr, &manifest, 0x60, zeros).await;
    let mut out = bytes::BytesMut::new();
    let mut header = Header::new(wire::kind::PIECE, wire::SERVICE, RequestId(0), 200_000);
    // In the session's version (a default pair negotiates the newest), so that the length, not
    // the version, is what the peer refuses.
    header.version = ferry_protocol::handshake::MAX_VERSION;
    header.encode(&mut out);
    out.extend_from_slice(&[0u8; 1024]);
    writer.write.write_all(&out).await.unwrap();
    assert_eq!(
        reader.error_then_eof().await,
        ErrorCode::TOO_LARGE,
        "frame over the cap"
    );

    // The node still serves.
    let out = dir.path().join("out");
    let (mut leecher, _) = leech(&manifest, &out, config(&[], &[seed.listen_addr], false)).await;
    until_complete(&mut leecher, Duration::from_secs(30)).await;
    leecher.wait().await.unwrap();
    assert_identical(&manifest, &data, &out);
    seed.shutdown().await.unwrap();
}

/// spec/P2P.md §3.1: a PING on the peer service is a keep-alive (no answer); a base-protocol
/// PING on the echo service gets its PONG (same id and payload) and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_ping_gets_a_pong_and_peer_ping_is_a_keepalive() {
    use ferry_p2p::wire;
    use ferry_protocol::{FrameType, RequestId, Service};

    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 100_000);
    let manifest = manifest_for(&tree, 16 * 1024, vec![]);
    let seed = seed(&manifest, &dir.path().join("src"), config(&[], &[], true)).await;
    let zeros = vec![0u8; manifest.piece_count().div_ceil(8) as usize];
    let (mut reader, mut writer) = raw_peer(seed.listen_addr, &manifest, 0x70, zeros).await;
    for id in [7u32, 8] {
        writer
            .frame(FrameType::PING, wire::SERVICE, 0, &[])
            .await
            .unwrap();
        writer
            .frame(FrameType::PING, Service::ECHO, id, b"hello")
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let frame = reader
                    .next()
                    .await
                    .unwrap()
                    .expect("closed instead of a pong");
                assert_ne!(frame.header.kind, FrameType::ERROR, "{:?}", frame.header);
                assert!(
                    !(frame.header.kind == FrameType::PONG
                        && frame.header.service == wire::SERVICE),
                    "a peer-service ping was answered"
                );
                if frame.header.kind == FrameType::PONG {
                    break frame;
                }
            }
        })
        .await
        .expect("no pong within 10 s");
        assert_eq!(pong.header.service, Service::ECHO);
        assert_eq!(pong.header.id, RequestId(id));
        assert_eq!(pong.body.as_ref(), b"hello");
    }
    seed.shutdown().await.unwrap();
}

/// issue 17 item 2: a peer banned for bad data that keeps sending still receives the BANNED
/// error frame and a clean end of stream, not a reset (spec/P2P.md §3.10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_peer_that_keeps_sending_gets_banned_not_a_reset() {
    use ferry_p2p::wire::{self, PeerMessage};
    use ferry_protocol::{ErrorCode, FrameType};

    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 200_000);
    let manifest = manifest_for(&tree, 16 * 1024, vec![]);
    let out = dir.path().join("out");
    let (leecher, _) = leech(&manifest, &out, config(&[], &[], true)).await;
    let full = ferry_p2p::pieces::Bitfield::full(manifest.piece_count())
        .as_bytes()
        .to_vec();
    let (mut reader, mut writer) = raw_peer(leecher.listen_addr, &manifest, 0x77, full).await;
    writer.msg(&PeerMessage::Unchoke).await.unwrap();

    // The writer answers every request with a corrupt block and sends keep-alives in between,
    // until the reader has seen the end of the stream.
    let (requests_tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = sent.clone();
    let keeps_sending = tokio::spawn(async move {
        let mut keepalives = 0u32;
        loop {
            tokio::select! {
                _ = stopped.cancelled() => return keepalives,
                block = requests.recv() => {
                    let Some(block): Option<wire::BlockRef> = block else { return keepalives };
                    let bad = PeerMessage::Piece {
                        piece: block.piece,
                        offset: block.offset,
                        data: vec![0xa5; block.length as usize].into(),
                    };
                    if writer.msg(&bad).await.is_err() {
                        return keepalives;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(2)) => {
                    if writer.msg(&PeerMessage::KeepAlive).await.is_err() {
                        return keepalives;
                    }
                    keepalives += 1;
                    counter.store(keepalives, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let frame = match reader.next().await {
                Ok(Some(frame)) => frame,
                Ok(None) => panic!("closed without an error frame"),
                Err(e) => panic!("reset instead of the BANNED frame: {e}"),
            };
            if frame.header.kind == FrameType::ERROR {
                break ferry_protocol::ErrorBody::decode(frame.body).unwrap().code;
            }
            if frame.header.kind == wire::kind::REQUEST {
                let msg = PeerMessage::decode(frame.header.kind, frame.header.service, frame.body)
                    .unwrap();
                if let PeerMessage::Request(block) = msg {
                    let _ = requests_tx.send(block);
                }
            }
        }
    })
    .await
    .expect("not banned within 20 s");
    assert_eq!(code, ErrorCode::BANNED);
    let end = tokio::time::timeout(Duration::from_secs(10), reader.next())
        .await
        .expect("no end of stream within 10 s");
    assert!(matches!(end, Ok(None)), "after BANNED: {end:?}");
    // It kept sending after the ban too: a few more keep-alives after the end of stream, while
    // the node drains (bounded by the test's own timeout).
    let after = sent.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(10), async {
        while sent.load(std::sync::atomic::Ordering::Relaxed) < after + 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the banned peer could not keep sending");
    stop.cancel();
    keeps_sending.await.unwrap();
    assert_eq!(leecher.stats.borrow().banned, 1);
    leecher.shutdown().await.unwrap();
}

/// issue 17 item 4: a leecher that stops at completion (`get --no-seed`) sends HAVE for every
/// piece, the last one included, to the seed that served it and to a neighbour that has
/// nothing, then closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_seed_leecher_sends_have_for_every_piece_before_exiting() {
    use ferry_p2p::wire::PeerMessage;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir_all(&root).unwrap();
    let content: Vec<u8> = (0..128 * 16_384u32).map(|i| (i * 7 / 13) as u8).collect();
    std::fs::write(root.join("file.bin"), &content).unwrap();
    let manifest = manifest_for(&root.join("file.bin"), 16 * 1024, vec![]);
    assert_eq!(manifest.piece_count(), 128);
    let out = dir.path().join("out");
    let (leecher, _) = leech(&manifest, &out, config(&[], &[], false)).await;

    /// Counts HAVE messages until a clean end of stream; answers requests from `content`.
    async fn count_haves(
        mut reader: RawReader,
        mut writer: RawWriter,
        content: Option<Vec<u8>>,
    ) -> usize {
        let mut haves = std::collections::HashSet::new();
        loop {
            let frame = match reader.next().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return haves.len(),
                Err(e) => panic!("reset: {e}"),
            };
            let msg =
                PeerMessage::decode(frame.header.kind, frame.header.service, frame.body).unwrap();
            match (msg, &content) {
                (PeerMessage::Have(p), _) => assert!(haves.insert(p), "HAVE {p} twice"),
                (PeerMessage::Request(b), Some(content)) => {
                    let start = (b.piece * 16_384 + b.offset) as usize;
                    let data = content[start..start + b.length as usize].to_vec();
                    let piece = PeerMessage::Piece {
                        piece: b.piece,
                        offset: b.offset,
                        data: data.into(),
                    };
                    // The leecher may close right after its last block.
                    let _ = writer.msg(&piece).await;
                }
                (PeerMessage::Error(e), _) => panic!("error from the leecher: {e}"),
                _ => {}
            }
        }
    }

    let bits = manifest.piece_count().div_ceil(8) as usize;
    // A neighbour with nothing connects first, then the seed.
    let (reader, writer) = raw_peer(leecher.listen_addr, &manifest, 0x31, vec![0; bits]).await;
    let neighbour = tokio::spawn(count_haves(reader, writer, None));
    let (reader, mut writer) =
        raw_peer(leecher.listen_addr, &manifest, 0x32, vec![0xff; bits]).await;
    writer.msg(&PeerMessage::Unchoke).await.unwrap();
    let seed = tokio::spawn(count_haves(reader, writer, Some(content)));
    let (seed_haves, neighbour_haves) = tokio::time::timeout(Duration::from_secs(30), async {
        (seed.await.unwrap(), neighbour.await.unwrap())
    })
    .await
    .expect("the leecher did not finish and close within 30 s");
    tokio::time::timeout(Duration::from_secs(10), leecher.wait())
        .await
        .expect("the leecher did not exit")
        .unwrap();
    assert_eq!(seed_haves, 128, "HAVEs to the seed");
    assert_eq!(neighbour_haves, 128, "HAVEs to the neighbour");
}

/// spec/P2P.md §2.1, §2.2, §2.4: paths start with the top-level name, are ordered by the bytes
/// of the whole path (not per component), empty directories are dropped and a symlink anywhere
/// in the tree is refused.
#[test]
fn make_lists_paths_from_the_top_name_in_byte_order_and_refuses_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("t");
    std::fs::create_dir_all(top.join("a")).unwrap();
    std::fs::create_dir_all(top.join("empty/nested")).unwrap();
    std::fs::write(top.join("a/z"), b"1").unwrap();
    std::fs::write(top.join("a.b"), b"22").unwrap();
    std::fs::write(top.join("a-b"), b"").unwrap();
    let manifest = make_manifest(&top, None, vec![], vec![], &|_| {}).unwrap();
    let paths: Vec<String> = manifest
        .files()
        .iter()
        .map(|f| f.path.to_string())
        .collect();
    // '-' (0x2D) < '.' (0x2E) < '/' (0x2F); a per-component sort would put t/a/z first.
    assert_eq!(paths, ["t/a-b", "t/a.b", "t/a/z"]);
    assert_eq!(manifest.piece_size(), 64 * 1024);

    let single = make_manifest(&top.join("a.b"), None, vec![], vec![], &|_| {}).unwrap();
    assert_eq!(single.files()[0].path.to_string(), "a.b");

    std::os::unix::fs::symlink("a.b", top.join("a/link")).unwrap();
    let err = make_manifest(&top, None, vec![], vec![], &|_| {}).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
}

/// Starts a seed of `manifest` on `host`'s port.
fn seed_on(host: &node::Host, manifest: &Arc<Manifest>, data_root: &Path) -> NodeHandle {
    let storage = Storage::open_existing(data_root, manifest).unwrap();
    let have = storage.verify(manifest, &|| {});
    assert!(have.is_full());
    node::start_on(
        host,
        manifest.clone(),
        Arc::new(storage),
        have,
        config(&[], &[], true),
    )
    .unwrap()
}

/// A second tree, same names as [`make_tree`]'s, other bytes: another content id.
fn make_other_tree(dir: &Path) -> PathBuf {
    let root = make_tree(dir, 150_000);
    std::fs::write(root.join("big.bin"), ferry_testkit::data(150_000, 9)).unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_swarms_are_seeded_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a = manifest_for(&make_tree(&a_dir, 150_000), 16 * 1024, vec![]);
    let b = manifest_for(&make_other_tree(&b_dir), 16 * 1024, vec![]);
    assert_ne!(a.content_id(), b.content_id());
    let host = node::Host::bind(&config(&[], &[], true)).await.unwrap();
    let seed_a = seed_on(&host, &a, &a_dir.join("src"));
    let seed_b = seed_on(&host, &b, &b_dir.join("src"));
    assert_eq!(seed_a.listen_addr, host.listen_addr());
    assert_eq!(seed_b.listen_addr, host.listen_addr());
    // A swarm is hosted once.
    let again = Storage::open_existing(&a_dir.join("src"), &a).unwrap();
    let have = again.verify(&a, &|| {});
    let twice = node::start_on(
        &host,
        a.clone(),
        Arc::new(again),
        have,
        config(&[], &[], true),
    );
    assert!(matches!(twice, Err(node::NodeError::AlreadyHosted(_))));

    let peers = [host.listen_addr()];
    let (mut leech_a, _) = leech(&a, &dir.path().join("out-a"), config(&[], &peers, true)).await;
    let (mut leech_b, _) = leech(&b, &dir.path().join("out-b"), config(&[], &peers, true)).await;
    until_complete(&mut leech_a, COMPLETE_WITHIN).await;
    until_complete(&mut leech_b, COMPLETE_WITHIN).await;
    assert_identical(&a, &a_dir.join("src"), &dir.path().join("out-a"));
    assert_identical(&b, &b_dir.join("src"), &dir.path().join("out-b"));
    for handle in [leech_a, leech_b, seed_a, seed_b] {
        handle.shutdown().await.unwrap();
    }
    host.shutdown().await;
}

/// Runs a bare session handshake against `addr` with the swarm key of `manifest`.
async fn session_handshake(
    addr: SocketAddr,
    manifest: &Manifest,
    send_key_hint: bool,
) -> Result<(), ferry_protocol::Error> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut config = ferry_protocol::ClientHandshakeConfig::new(ferry_p2p::wire::swarm_key(
        &manifest.content_id(),
    ));
    config.send_key_hint = send_key_hint;
    ferry_protocol::tokio::client_handshake(&mut stream, config)
        .await
        .map(drop)
}

fn auth_failed(result: Result<(), ferry_protocol::Error>) -> bool {
    matches!(
        result,
        Err(ref e) if e.code() == ferry_protocol::ErrorCode::AUTHENTICATION_FAILED
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_routes_by_key_hint_and_is_no_oracle_for_its_swarms() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a = manifest_for(&make_tree(&a_dir, 150_000), 16 * 1024, vec![]);
    let b = manifest_for(&make_other_tree(&b_dir), 16 * 1024, vec![]);
    let stranger = manifest_for(&make_tree(&a_dir, 150_000), 32 * 1024, vec![]);
    let host = node::Host::bind(&config(&[], &[], true)).await.unwrap();
    let addr = host.listen_addr();
    let seed_a = seed_on(&host, &a, &a_dir.join("src"));

    // One swarm: a version-1 style hello without a hint can only mean it.
    session_handshake(addr, &a, true).await.unwrap();
    session_handshake(addr, &a, false).await.unwrap();
    // A swarm the host does not serve is answered as a wrong key.
    assert!(auth_failed(session_handshake(addr, &stranger, true).await));

    // Two swarms: the hint decides; without one the host cannot tell, and says only
    // "authentication failed".
    let seed_b = seed_on(&host, &b, &b_dir.join("src"));
    session_handshake(addr, &a, true).await.unwrap();
    session_handshake(addr, &b, true).await.unwrap();
    assert!(auth_failed(session_handshake(addr, &b, false).await));
    assert!(auth_failed(session_handshake(addr, &stranger, true).await));

    // A stopped swarm is no longer routed to.
    seed_b.shutdown().await.unwrap();
    assert!(auth_failed(session_handshake(addr, &b, true).await));
    seed_a.shutdown().await.unwrap();
    host.shutdown().await;
}

/// Waits (bounded) until the node's published peer ids are `want`, sorted.
async fn until_peer_ids(handle: &mut NodeHandle, mut want: Vec<ferry_p2p::wire::PeerId>) {
    want.sort_unstable();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if *handle.peer_ids.borrow() == want {
                return;
            }
            if handle.peer_ids.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        seen.is_ok() && *handle.peer_ids.borrow() == want,
        "peer ids {:?}, want {want:?}",
        *handle.peer_ids.borrow()
    );
}

/// The connected peers' ids (what the hub's presence reports) follow connections and
/// departures, although they are republished only when the peer set changes. Three leechers
/// with nothing, so that no one completes and closes: B and C dial A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_ids_follow_joins_and_departures() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 1 << 20);
    let manifest = manifest_for(&tree, 32 * 1024, vec![]);
    let (mut a, _) = leech(&manifest, &dir.path().join("a"), config(&[], &[], true)).await;
    let at_a = [a.listen_addr];
    let (mut b, _) = leech(&manifest, &dir.path().join("b"), config(&[], &at_a, true)).await;
    until_peer_ids(&mut a, vec![b.peer_id]).await;
    until_peer_ids(&mut b, vec![a.peer_id]).await;
    let (c, _) = leech(&manifest, &dir.path().join("c"), config(&[], &at_a, true)).await;
    until_peer_ids(&mut a, vec![b.peer_id, c.peer_id]).await;
    c.abort();
    until_peer_ids(&mut a, vec![b.peer_id]).await;
    b.shutdown().await.unwrap();
    until_peer_ids(&mut a, vec![]).await;
    a.shutdown().await.unwrap();
}

/// Issue 14: `max_peers` bounds dialled and accepted connections together; a leecher dials up
/// to half of it and takes diallers up to the other half, a seed (which dials nobody) takes
/// diallers up to all of it. (Before, it dialled up to `max_peers` and accepted up to twice
/// that: a hundred-peer swarm settled at 60-80 connections a peer, each carrying a HAVE per
/// piece; then a leecher took diallers up to `max_peers`, so the first peers of a swarm filled
/// up with the dials of all that came after, and the last found them full: 48 connections on
/// average against 29.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_peers_bounds_all_connections_and_a_node_dials_half() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 1 << 20);
    let manifest = manifest_for(&tree, 32 * 1024, vec![]);
    let limited = |peers: &[SocketAddr]| NodeConfig {
        max_peers: 4,
        maintenance_interval: Duration::from_millis(50),
        handshake_timeout: Duration::from_secs(60),
        ..config(&[], peers, true)
    };

    // Accepting: a leecher takes two diallers and closes the third before its session
    // handshake ends; a seed takes four and closes the fifth.
    let (a, _) = leech(&manifest, &dir.path().join("a"), limited(&[])).await;
    assert_takes_diallers(a, &manifest, 2).await;
    let s = seed(&manifest, &dir.path().join("src"), limited(&[])).await;
    assert_takes_diallers(s, &manifest, 4).await;

    // Dialling: of four listeners that never answer the handshake, the node dials two, and
    // keeps to two over many maintenance rounds while those dials are pending.
    let mut listeners = Vec::new();
    for _ in 0..4 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let (z, _) = leech(&manifest, &dir.path().join("z"), limited(&addrs)).await;
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    for listener in listeners {
        let accepted_tx = accepted_tx.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Held open and silent: the dial stays pending.
                let _ = accepted_tx.send(stream);
            }
        });
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = tokio::time::timeout(Duration::from_secs(30), accepted.recv())
            .await
            .expect("the node dials")
            .unwrap();
        held.push(stream);
    }
    // Twenty maintenance rounds: a node allowed to dial more would have dialled at the first.
    let third = tokio::time::timeout(Duration::from_secs(1), accepted.recv()).await;
    assert!(
        third.is_err(),
        "the node dialled a third peer with max_peers 4"
    );
    z.abort();
}

/// Dials `node` as `taken` peers, each let in, then once more: that one is closed before its
/// session handshake ends. Shuts the node down.
async fn assert_takes_diallers(mut node: NodeHandle, manifest: &Manifest, taken: u8) {
    let mut raws = Vec::new();
    let mut ids = Vec::new();
    for id in 1..=taken {
        raws.push(raw_greeted(node.listen_addr, manifest, id).await);
        let identity = ferry_protocol::identity::Identity::from_secret([id; 32]);
        ids.push(ferry_p2p::wire::PeerId::from(identity.id()));
        until_peer_ids(&mut node, ids.clone()).await;
    }
    let mut stream = tokio::net::TcpStream::connect(node.listen_addr)
        .await
        .unwrap();
    let mut client = ferry_protocol::ClientHandshakeConfig::new(ferry_p2p::wire::swarm_key(
        &manifest.content_id(),
    ));
    client.max_body = ferry_p2p::wire::MAX_BODY;
    let next = tokio::time::timeout(
        Duration::from_secs(30),
        ferry_protocol::tokio::client_handshake(&mut stream, client),
    )
    .await
    .expect("the node answers or closes");
    assert!(next.is_err(), "dialler {} was let in", taken + 1);
    drop(raws);
    node.shutdown().await.unwrap();
}
