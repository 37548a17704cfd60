//! Fleet updates on loopback (spec/P2P.md §8): real publishers and followers, real UDP gossip,
//! real swarms, real install directories. Every wait is on an event; the deadlines only bound
//! failure.

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_p2p::fleet::channel::ChannelKey;
use ferry_p2p::fleet::follower::{self, FleetConfig, FleetEvent, FleetHandle, Published};
use ferry_p2p::fleet::gossip::GossipConfig;
use ferry_p2p::fleet::record::{Release, SignedRelease};
use ferry_p2p::manifest::Manifest;
use ferry_p2p::pieces::make_manifest;

/// Bounds a wait that fails; a passing run takes a few seconds.
const WITHIN: Duration = Duration::from_secs(60);

fn key() -> ChannelKey {
    ChannelKey::from_seed([0x5e; 32])
}

/// Release `version` under `<dir>/src-V/app`: a few files whose bytes depend on the version.
fn make_release(dir: &Path, version: u64) -> PathBuf {
    let root = dir.join(format!("src-{version}/app"));
    std::fs::create_dir_all(root.join("conf")).unwrap();
    let seed = version;
    std::fs::write(root.join("big.bin"), ferry_testkit::data(700_000, seed)).unwrap();
    std::fs::write(root.join("conf/app.toml"), format!("version = {version}\n")).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    root
}

fn sign(version: u64, manifest: &Manifest) -> SignedRelease {
    sign_with_source(version, manifest, "")
}

fn sign_with_source(version: u64, manifest: &Manifest, source: &str) -> SignedRelease {
    Release {
        channel: key().id(),
        version,
        content_id: manifest.content_id(),
        time_ms: 1_767_225_600_000 + version,
        notes: format!("release {version}"),
        source: source.to_owned(),
    }
    .sign(&key())
    .unwrap()
}

fn config(name: &str, peers: &[SocketAddr]) -> FleetConfig {
    let mut config = FleetConfig::new(key().id(), name);
    config.gossip_listen = "127.0.0.1:0".parse().unwrap();
    config.peers = peers.to_vec();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.gossip = GossipConfig {
        interval: Duration::from_millis(300),
        ..Default::default()
    };
    config.swarm_retry = Duration::from_secs(1);
    config
}

async fn publisher(
    dir: &Path,
    version: u64,
    peers: &[SocketAddr],
    corrupt: bool,
) -> (FleetHandle, PathBuf) {
    let mut config = config("publisher", peers);
    config.node.dangerous_corrupt_uploads = corrupt;
    publisher_with(dir, version, config, "").await
}

/// A publisher of release `version` run with `config`, its record naming `source`.
async fn publisher_with(
    dir: &Path,
    version: u64,
    config: FleetConfig,
    source: &str,
) -> (FleetHandle, PathBuf) {
    let root = make_release(dir, version);
    let manifest = Arc::new(make_manifest(&root, Some(65_536), vec![], vec![], &|_| {}).unwrap());
    let published = Published {
        record: sign_with_source(version, &manifest, source),
        manifest,
        data_root: root.parent().unwrap().to_path_buf(),
    };
    (follower::publish(config, published).await.unwrap(), root)
}

async fn follower(
    dir: &Path,
    name: &str,
    peers: &[SocketAddr],
    apply: Option<&str>,
) -> FleetHandle {
    follower_with(dir, name, config(name, peers), apply).await
}

async fn follower_with(
    dir: &Path,
    name: &str,
    config: FleetConfig,
    apply: Option<&str>,
) -> FleetHandle {
    follower::follow(config, dir.join(name), apply.map(str::to_owned), 2)
        .await
        .unwrap()
}

/// Waits for the first event `pick` accepts, returning what it made of it.
async fn wait_for<T>(
    handle: &mut FleetHandle,
    mut pick: impl FnMut(&FleetEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WITHIN, async {
        loop {
            let event = handle.events.recv().await.expect("the node stopped");
            if let FleetEvent::Error(e) = &event {
                panic!("fleet error: {e}");
            }
            if let Some(out) = pick(&event) {
                return out;
            }
        }
    })
    .await
    .expect("timed out waiting for a fleet event")
}

async fn installed(handle: &mut FleetHandle, version: u64) -> PathBuf {
    wait_for(handle, |e| match e {
        FleetEvent::Installed { version: v, path } if *v == version => Some(path.clone()),
        _ => None,
    })
    .await
}

/// Every file under `a` equals the one under `b`, and both hold the same names.
fn same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path.strip_prefix(root).unwrap().to_path_buf());
                }
            }
        }
        out.sort();
        out
    };
    assert_eq!(list(a), list(b));
    for rel in list(a) {
        assert!(
            std::fs::read(a.join(&rel)).unwrap() == std::fs::read(b.join(&rel)).unwrap(),
            "{} differs",
            rel.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_followers_apply_the_same_bytes_from_one_publish() {
    let tmp = tempfile::tempdir().unwrap();
    // No hub, no tracker: every follower knows only the first one.
    let mut first = follower(tmp.path(), "f0", &[], None).await;
    let seed = first.gossip_addr;
    let mut followers = vec![];
    for i in 1..5 {
        followers.push(follower(tmp.path(), &format!("f{i}"), &[seed], None).await);
    }
    let (publisher, source) = publisher(tmp.path(), 1, &[seed], false).await;
    followers.insert(0, {
        let path = installed(&mut first, 1).await;
        same_tree(&path, &source);
        first
    });
    for f in followers.iter_mut().skip(1) {
        let path = installed(f, 1).await;
        same_tree(&path, &source);
    }
    for i in 0..5 {
        same_tree(&tmp.path().join(format!("f{i}/current")), &source);
    }
    // Fleet status sees all five and the publisher.
    let seen = ferry_p2p::fleet::status::crawl(key().id(), &[seed], Duration::from_secs(10))
        .await
        .unwrap();
    let answered: Vec<_> = seen.iter().filter_map(|s| s.status.as_ref()).collect();
    assert_eq!(
        answered.len(),
        6,
        "{}",
        ferry_p2p::fleet::status::render(&seen)
    );
    assert!(answered.iter().all(|s| s.latest == 1));
    assert_eq!(answered.iter().filter(|s| s.running == 1).count(), 5);
    publisher.shutdown().await;
    for f in followers {
        f.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_offline_during_the_publish_catches_up_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = follower(tmp.path(), "a", &[], None).await;
    let b = follower(tmp.path(), "b", &[a.gossip_addr], None).await;
    // b has met a (and saved it); then b goes down hard.
    tokio::time::timeout(WITHIN, async {
        while !tmp.path().join("b/.fleet/members").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    b.abort();
    let (publisher, source) = publisher(tmp.path(), 1, &[a.gossip_addr], false).await;
    installed(&mut a, 1).await;
    // The publisher leaves too: b can only get the release from a.
    publisher.shutdown().await;
    // b returns with no --peer at all: it remembers a.
    let mut b = follower(tmp.path(), "b", &[], None).await;
    let path = installed(&mut b, 1).await;
    same_tree(&path, &source);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_modified_and_replayed_records_are_rejected_by_a_follower() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = follower(tmp.path(), "a", &[], None).await;
    let (publisher, _) = publisher(tmp.path(), 2, &[a.gossip_addr], false).await;
    installed(&mut a, 2).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let manifest =
        make_manifest(&make_release(tmp.path(), 7), None, vec![], vec![], &|_| {}).unwrap();
    // 1. Signed by another key but naming the channel.
    let forger = ChannelKey::from_seed([0x66; 32]);
    let mut forged = Release {
        channel: forger.id(),
        version: 9,
        content_id: manifest.content_id(),
        time_ms: 0,
        notes: String::new(),
        source: String::new(),
    }
    .sign(&forger)
    .unwrap()
    .as_bytes()
    .to_vec();
    forged[9..41].copy_from_slice(&key().id().0);
    // 2. A genuine record with its version changed.
    let mut modified = sign(3, &manifest).as_bytes().to_vec();
    modified[41 + 7] = 9;
    // 3. A genuine but older record, replayed.
    let replayed = sign(1, &manifest).as_bytes().to_vec();
    for (bytes, expect) in [
        (forged, "signature"),
        (modified, "signature"),
        (replayed, "older"),
    ] {
        socket
            .send_to(&record_datagram(&bytes), a.gossip_addr)
            .await
            .unwrap();
        let why = wait_for(&mut a, |e| match e {
            FleetEvent::Rejected { why, .. } => Some(why.clone()),
            FleetEvent::Accepted { version, .. } => panic!("accepted {version}"),
            _ => None,
        })
        .await;
        assert!(why.contains(expect), "{why}");
    }
    // Still at 2, and a restart does not change that (the record is kept).
    assert_eq!(
        std::fs::read_link(tmp.path().join("a/current")).unwrap(),
        Path::new("versions/2/app")
    );
    publisher.shutdown().await;
    a.shutdown().await;
}

/// A RECORD datagram (spec §8.3) carrying `body`, whatever it holds.
fn record_datagram(body: &[u8]) -> Vec<u8> {
    let mut header = ferry_protocol::Header::new(
        ferry_protocol::FrameType::REQUEST,
        ferry_protocol::Service(0x71),
        ferry_protocol::RequestId(9),
        body.len() as u32,
    );
    header.version = 1;
    let mut out = bytes::BytesMut::new();
    header.encode(&mut out);
    out.extend_from_slice(body);
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_keeps_the_previous_version_and_status_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    // The hook fails for version 2 only, after seeing the new path as $1.
    let log = tmp.path().join("hook.log");
    let hook = format!(
        "echo \"$FERRY_VERSION $1\" >> {}; test \"$FERRY_VERSION\" != 2",
        log.display()
    );
    let mut a = follower(tmp.path(), "a", &[], Some(&hook)).await;
    let (p1, source1) = publisher(tmp.path(), 1, &[a.gossip_addr], false).await;
    installed(&mut a, 1).await;
    p1.shutdown().await;
    let (p2, _) = publisher(tmp.path(), 2, &[a.gossip_addr], false).await;
    let restored = wait_for(&mut a, |e| match e {
        FleetEvent::ApplyFailed {
            version: 2,
            restored,
            ..
        } => Some(*restored),
        FleetEvent::Installed { version: 2, .. } => panic!("version 2 installed"),
        _ => None,
    })
    .await;
    assert_eq!(restored, Some(1));
    same_tree(&tmp.path().join("a/current"), &source1);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("2 ") && log.contains("versions/2/app"),
        "{log}"
    );
    let seen =
        ferry_p2p::fleet::status::crawl(key().id(), &[a.gossip_addr], Duration::from_secs(5))
            .await
            .unwrap();
    let me = seen.iter().find(|s| s.addr == a.gossip_addr).unwrap();
    let status = me.status.as_ref().unwrap();
    assert_eq!((status.running, status.latest, status.failed), (1, 2, 2));
    assert!(ferry_p2p::fleet::status::render(&seen).contains("failed v2"));
    // By hand: back to 1 is where it is; version 2 stays kept for a later try.
    assert!(tmp.path().join("a/versions/2/app").is_dir());
    p2.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_piece_is_rejected_and_the_release_still_installs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = follower(tmp.path(), "a", &[], None).await;
    // The only source at first flips a byte in every block it uploads.
    let (evil, _) = publisher(tmp.path(), 1, &[a.gossip_addr], true).await;
    let failures = wait_for(&mut a, |e| match e {
        FleetEvent::PiecesFailed { hash_failures, .. } => Some(*hash_failures),
        FleetEvent::Installed { .. } => panic!("installed tampered data"),
        _ => None,
    })
    .await;
    assert!(failures > 0);
    assert!(!tmp.path().join("a/current").exists());
    // An honest holder of the same release appears; the follower finishes from it.
    let (honest, source) = publisher(tmp.path(), 1, &[a.gossip_addr], false).await;
    let path = installed(&mut a, 1).await;
    same_tree(&path, &source);
    evil.shutdown().await;
    honest.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_mid_download_resumes_and_never_half_installs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = follower(tmp.path(), "a", &[], None).await;
    let (publisher, source) = publisher(tmp.path(), 1, &[a.gossip_addr], false).await;
    installed(&mut a, 1).await;
    publisher.shutdown().await;
    // What kill -9 during b's download leaves: the record and manifest saved, a partial
    // version directory with one file cut short and another damaged, no `current`.
    let b = tmp.path().join("b");
    std::fs::create_dir_all(b.join(".fleet")).unwrap();
    std::fs::create_dir_all(b.join("versions")).unwrap();
    for name in ["record", "manifest-1"] {
        std::fs::copy(
            tmp.path().join("a/.fleet").join(name),
            b.join(".fleet").join(name),
        )
        .unwrap();
    }
    std::fs::write(b.join(".fleet/members"), format!("{}\n", a.gossip_addr)).unwrap();
    let partial = b.join("versions/.1.partial/app");
    std::fs::create_dir_all(partial.join("conf")).unwrap();
    let big = std::fs::read(source.join("big.bin")).unwrap();
    let mut damaged = big[..big.len() / 2].to_vec();
    damaged[1000] ^= 0xff;
    std::fs::write(partial.join("big.bin"), &damaged).unwrap();
    std::fs::write(partial.join("conf/app.toml"), b"version = 0\n").unwrap();
    std::os::unix::fs::symlink("versions/.1.partial/app", b.join(".current.new")).unwrap();
    let mut b_node = follower(tmp.path(), "b", &[], None).await;
    let path = installed(&mut b_node, 1).await;
    same_tree(&path, &source);
    same_tree(&b.join("current"), &source);
    assert!(!b.join("versions/.1.partial").exists());
    a.shutdown().await;
    b_node.shutdown().await;
}

/// A release that names a ferry-server as its source: the only member holding it uploads
/// nothing but corrupt blocks, so every verified byte comes from the server (§8.5 step 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_fetches_from_the_releases_ferry_server_when_no_member_has_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    // The server holds the directory above the release's top-level entry, as publish does.
    let served_dir = tmp.path().join("src-1");
    make_release(tmp.path(), 1);
    let server_key = ferry_protocol::Key::generate();
    let server = ferry_server::Server::bind(
        ferry_server::Config::new(&served_dir, server_key.clone())
            .listen(["127.0.0.1:0".parse().unwrap()]),
    )
    .await
    .unwrap();
    let server_addr = server.local_addrs()[0];
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let served = tokio::spawn(server.run(async move { stopped.cancelled().await }));

    let mut follower_config = config("a", &[]);
    follower_config.server_key = Some(server_key);
    let mut a = follower_with(tmp.path(), "a", follower_config, None).await;
    let mut publisher_config = config("publisher", &[a.gossip_addr]);
    publisher_config.node.dangerous_corrupt_uploads = true;
    let (publisher, source) = publisher_with(
        tmp.path(),
        1,
        publisher_config,
        &format!("ferry://{server_addr}/"),
    )
    .await;
    let path = wait_for(&mut a, |e| match e {
        FleetEvent::Installed { version: 1, path } => Some(path.clone()),
        _ => None,
    })
    .await;
    same_tree(&path, &source);
    publisher.shutdown().await;
    a.shutdown().await;
    stop.cancel();
    served.await.unwrap().unwrap();
}

/// A free UDP port for a test's LAN group, so that concurrent runs do not hear each other.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether IPv4 multicast sent from 127.0.0.1 comes back on the loopback interface here
/// (some sandboxes and kernels refuse it).
async fn loopback_multicast_works(group: SocketAddr) -> Result<(), String> {
    use ferry_p2p::fleet::lan;
    let receiver = lan::open(group, "127.0.0.1".parse().unwrap())
        .map_err(|e| format!("cannot join {group} on 127.0.0.1: {e}"))?;
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    lan::prepare_sender(&sender, group).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        sender
            .send_to(b"probe", group)
            .await
            .map_err(|e| format!("cannot send to {group}: {e}"))?;
        let got = tokio::time::timeout(Duration::from_millis(500), receiver.recv_from(&mut buf));
        if let Ok(Ok((len, _))) = got.await {
            if &buf[..len] == b"probe" {
                return Ok(());
            }
        }
    }
    Err(format!("nothing sent to {group} came back within 1.5 s"))
}

/// No --peer anywhere: two followers and a publisher on one (loopback) link find each other by
/// their multicast announcements (§8.8), and the release reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_with_no_peers_find_the_publisher_and_each_other_on_the_lan() {
    use ferry_p2p::fleet::lan::{LanConfig, GROUP_V4};
    let group = SocketAddr::from((GROUP_V4, free_udp_port()));
    if let Err(why) = loopback_multicast_works(group).await {
        eprintln!("skipped: multicast is not available on loopback here: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let with_lan = |name: &str| {
        let mut config = config(name, &[]);
        config.lan = Some(LanConfig {
            group,
            interval: Duration::from_millis(300),
        });
        config
    };
    let mut a = follower_with(tmp.path(), "a", with_lan("a"), None).await;
    let mut b = follower_with(tmp.path(), "b", with_lan("b"), None).await;
    let (publisher, source) = publisher_with(tmp.path(), 1, with_lan("publisher"), "").await;
    for f in [&mut a, &mut b] {
        let path = installed(f, 1).await;
        same_tree(&path, &source);
    }
    // Each follower learnt both others by itself: their members files name them.
    for (me, others) in [
        ("a", [b.gossip_addr, publisher.gossip_addr]),
        ("b", [a.gossip_addr, publisher.gossip_addr]),
    ] {
        let file = tmp.path().join(me).join(".fleet/members");
        tokio::time::timeout(WITHIN, async {
            loop {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if others.iter().all(|o| text.contains(&o.to_string())) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{me} did not learn {others:?}"));
    }
    publisher.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}
