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

/// Content under `<dir>/src/tree`: a few files of pseudo-random bytes, one empty, one nested.
fn make_tree(dir: &Path, size: usize) -> PathBuf {
    let root = dir.join("src/tree");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    let mut x: u32 = 0x1234_5678;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    std::fs::write(root.join("big.bin"), bytes(size)).unwrap();
    std::fs::write(root.join("sub/small.txt"), bytes(10_000)).unwrap();
    std::fs::write(root.join("sub/deeper/odd"), bytes(size / 3 + 17)).unwrap();
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
        until_complete(handle, Duration::from_secs(60)).await;
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
    until_complete(&mut leecher, Duration::from_secs(60)).await;
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
        until_complete(handle, Duration::from_secs(60)).await;
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
    until_complete(&mut second, Duration::from_secs(60)).await;
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
    until_complete(&mut only, Duration::from_secs(60)).await;
    only.wait().await.unwrap();
    assert_identical(&manifest, &data, &out);
    // Server and a seed together.
    let seed = seed(&manifest, &data, config(&[], &[], true)).await;
    let out = dir.path().join("out2");
    let mut cfg = config(&[], &[seed.listen_addr], false);
    cfg.servers = vec![source];
    let (mut both, _) = leech(&manifest, &out, cfg).await;
    until_complete(&mut both, Duration::from_secs(60)).await;
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
    use ferry_p2p::wire::{self, PeerId, PeerMessage};
    use ferry_protocol::{ClientConfig, FrameType, Header, RequestId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path(), 200_000);
    let manifest = manifest_for(&tree, 16 * 1024, vec![]);
    let data = dir.path().join("src");
    let seed = seed(&manifest, &data, config(&[], &[], true)).await;

    for attack in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(seed.listen_addr)
            .await
            .unwrap();
        let mut client = ClientConfig::new(wire::swarm_key(&manifest.content_id()));
        client.max_body = wire::MAX_BODY;
        let (mut session, _) = ferry_protocol::tokio::client_handshake(&mut stream, client)
            .await
            .unwrap();
        let mut out = bytes::BytesMut::new();
        let hello = PeerMessage::Handshake {
            content_id: manifest.content_id(),
            peer_id: PeerId([0x42 + attack; 20]),
            listen_port: 0,
        };
        session
            .write_frame(
                hello.kind(),
                wire::SERVICE,
                RequestId(0),
                &hello.to_bytes(),
                &mut out,
            )
            .unwrap();
        if attack == 0 {
            // A header announcing 200 000 bytes: over the 96 KiB cap.
            Header::new(FrameType(0x38), wire::SERVICE, RequestId(0), 200_000).encode(&mut out);
            out.extend_from_slice(&[0u8; 1024]);
        } else {
            // A piece before any bitfield.
            let piece = PeerMessage::Piece {
                piece: 0,
                offset: 0,
                data: vec![1u8; 100].into(),
            };
            session
                .write_frame(
                    piece.kind(),
                    wire::SERVICE,
                    RequestId(0),
                    &piece.to_bytes(),
                    &mut out,
                )
                .unwrap();
        }
        stream.write_all(&out).await.unwrap();
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
