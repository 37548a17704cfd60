//! The hub over real sockets on 127.0.0.1: names, durability, presence, relay, punch
//! coordination and throttling (spec/HUB.md).

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_common::url::Hint;
use ferry_hub::throttle::Rate;
use ferry_hub::wire::{codes, reflect, Event, HintSource, PunchRole};
use ferry_hub::{
    spawn_presence, Hub, HubConfig, HubConn, HubError, PresenceConfig, Registration, Status,
};
use ferry_protocol::identity::{Identity, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deadline that only bounds a failure.
const LONG: Duration = Duration::from_secs(10);

fn identity(seed: u8) -> Identity {
    Identity::from_secret([seed; 32])
}

struct Running {
    addr: SocketAddr,
    id: NodeId,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    stats: std::sync::Arc<ferry_hub::HubStats>,
    tap: Option<tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>>,
}

impl Running {
    fn hint(&self) -> Vec<Hint> {
        vec![Hint {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
        }]
    }

    async fn conn(&self, who: &Identity) -> HubConn {
        HubConn::connect(&self.hint(), Some(self.id), who)
            .await
            .unwrap()
    }

    /// Stops the hub as a crash would: the task is dropped mid-flight, nothing is flushed.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.task.await;
    }
}

async fn start_with(config: HubConfig) -> Running {
    let hub = Hub::bind(config).await.unwrap();
    let addr = hub.local_addr().unwrap();
    let id = hub.id();
    let stats = hub.stats();
    let tap = Some(hub.tap_relays());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        hub.run(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        id,
        stop: Some(stop),
        task,
        stats,
        tap,
    }
}

fn config(state: Option<&Path>) -> HubConfig {
    let mut config = HubConfig::new(identity(100), "127.0.0.1:0".parse().unwrap());
    config.state = state.map(Path::to_path_buf);
    config
}

async fn start() -> Running {
    start_with(config(None)).await
}

fn refused(result: Result<impl std::fmt::Debug, HubError>) -> ferry_protocol::ErrorCode {
    match result {
        Err(HubError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn register_resolve_and_release() {
    let hub = start().await;
    let alice = identity(1);
    let mut conn = hub.conn(&alice).await;
    assert_eq!(conn.hub_id(), hub.id);
    assert_eq!(conn.register("alice", None).await.unwrap(), alice.id());
    // Registering again is idempotent for the holder.
    assert_eq!(conn.register("alice", None).await.unwrap(), alice.id());
    let resolved = conn.resolve("alice").await.unwrap();
    assert_eq!(resolved.id, alice.id());
    assert!(!resolved.online);
    assert!(resolved.hints.is_empty());
    assert_eq!(conn.release("alice").await.unwrap(), alice.id());
    assert_eq!(refused(conn.resolve("alice").await), codes::UNKNOWN_NAME);
    assert_eq!(
        refused(conn.register("Alice", None).await),
        codes::INVALID_NAME
    );
    assert_eq!(
        refused(conn.register(&"a".repeat(33), None).await),
        codes::INVALID_NAME
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_name_cannot_be_taken_over_by_another_key() {
    let hub = start().await;
    let (alice, mallory) = (identity(1), identity(2));
    let mut a = hub.conn(&alice).await;
    a.register("alice", None).await.unwrap();
    let mut m = hub.conn(&mallory).await;
    assert_eq!(refused(m.register("alice", None).await), codes::NAME_TAKEN);
    assert_eq!(refused(m.release("alice").await), codes::NOT_HOLDER);
    assert_eq!(
        refused(m.move_to("alice", mallory.id()).await),
        codes::NOT_HOLDER
    );
    assert_eq!(
        refused(m.presence("alice", vec![]).await),
        codes::NOT_HOLDER
    );
    assert_eq!(m.resolve("alice").await.unwrap().id, alice.id());
    // The holder may move it; then the old key has no say.
    let bob = identity(3);
    assert_eq!(a.move_to("alice", bob.id()).await.unwrap(), bob.id());
    assert_eq!(refused(a.release("alice").await), codes::NOT_HOLDER);
    assert_eq!(m.resolve("alice").await.unwrap().id, bob.id());
    hub.stop().await;
}

#[tokio::test]
async fn registrations_survive_a_killed_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_with(config(Some(dir.path()))).await;
    let alice = identity(1);
    let bob = identity(2);
    {
        let mut a = hub.conn(&alice).await;
        a.register("alice", None).await.unwrap();
        let mut b = hub.conn(&bob).await;
        b.register("bob", None).await.unwrap();
        b.release("bob").await.unwrap();
        b.register("bobby", None).await.unwrap();
    }
    // Acknowledged means fsynced: a crash right after loses nothing.
    hub.kill().await;
    let hub = start_with(config(Some(dir.path()))).await;
    let mut c = hub.conn(&identity(9)).await;
    assert_eq!(c.resolve("alice").await.unwrap().id, alice.id());
    assert_eq!(c.resolve("bobby").await.unwrap().id, bob.id());
    assert_eq!(refused(c.resolve("bob").await), codes::UNKNOWN_NAME);
    assert_eq!(refused(c.register("alice", None).await), codes::NAME_TAKEN);
    hub.stop().await;
}

#[tokio::test]
async fn an_invite_only_hub_takes_each_code_once() {
    let dir = tempfile::tempdir().unwrap();
    let code = ferry_hub::names::issue_invite(dir.path()).unwrap();
    let mut config = config(Some(dir.path()));
    config.registration = Registration::InviteOnly;
    let hub = start_with(config).await;
    let mut a = hub.conn(&identity(1)).await;
    assert_eq!(
        refused(a.register("alice", None).await),
        codes::INVITE_REQUIRED
    );
    assert_eq!(
        refused(a.register("alice", Some("made-up-code-1234")).await),
        codes::INVITE_REQUIRED
    );
    a.register("alice", Some(&code)).await.unwrap();
    let mut b = hub.conn(&identity(2)).await;
    assert_eq!(
        refused(b.register("bob", Some(&code)).await),
        codes::INVITE_REQUIRED
    );
    // A code issued while the hub runs works at once.
    let second = ferry_hub::names::issue_invite(dir.path()).unwrap();
    b.register("bob", Some(&second)).await.unwrap();
    hub.stop().await;
}

async fn wait_present(presence: &mut ferry_hub::Presence) -> SocketAddr {
    let status = tokio::time::timeout(
        LONG,
        presence
            .status
            .wait_for(|s| matches!(s, Status::Present { .. })),
    )
    .await
    .expect("present in time")
    .unwrap()
    .clone();
    match status {
        Status::Present { reflected, .. } => reflected,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn presence_reflects_the_address_and_resolve_lists_the_hints() {
    let hub = start().await;
    let alice = identity(1);
    hub.conn(&alice)
        .await
        .register("alice", None)
        .await
        .unwrap();
    let reported: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut config = PresenceConfig::new(hub.hint(), Some(hub.id), alice.clone(), "alice".into());
    config.addrs = vec![reported];
    let (_relays, mut presence) = spawn_presence(config);
    let reflected = wait_present(&mut presence).await;
    assert_eq!(
        reflected.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    let resolved = hub.conn(&identity(2)).await.resolve("alice").await.unwrap();
    assert!(resolved.online);
    assert_eq!(
        resolved.hints,
        vec![
            (HintSource::Reported, reported),
            (HintSource::Reflected, reflected)
        ]
    );
    // Gone when the node goes.
    drop(presence);
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let r = hub.conn(&identity(2)).await.resolve("alice").await.unwrap();
        if !r.online {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_node_reconnects_by_itself_after_the_hub_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Some(dir.path()));
    let hub = start_with(cfg.clone()).await;
    let port = hub.addr.port();
    let alice = identity(1);
    hub.conn(&alice)
        .await
        .register("alice", None)
        .await
        .unwrap();
    let mut config = PresenceConfig::new(hub.hint(), Some(hub.id), alice.clone(), "alice".into());
    config.backoff = (Duration::from_millis(20), Duration::from_millis(200));
    let (_relays, mut presence) = spawn_presence(config);
    wait_present(&mut presence).await;
    hub.kill().await;
    tokio::time::timeout(
        LONG,
        presence
            .status
            .wait_for(|s| !matches!(s, Status::Present { .. })),
    )
    .await
    .expect("notices the hub is gone")
    .unwrap();
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], port));
    let hub = start_with(cfg).await;
    wait_present(&mut presence).await;
    assert!(
        hub.conn(&identity(2))
            .await
            .resolve("alice")
            .await
            .unwrap()
            .online
    );
    hub.stop().await;
}

/// Alice present; the client asks for a relay; the node side comes out of the acceptor; the
/// two run the Noise XX handshake end to end over the splice and exchange a message.
#[tokio::test]
async fn a_relay_carries_the_end_to_end_handshake_and_the_hub_sees_only_ciphertext() {
    use ferry_protocol::transport::Acceptor;
    let mut hub = start().await;
    let mut tap = hub.tap.take().unwrap();
    let (alice, client) = (identity(1), identity(2));
    hub.conn(&alice)
        .await
        .register("alice", None)
        .await
        .unwrap();
    let config = PresenceConfig::new(hub.hint(), Some(hub.id), alice.clone(), "alice".into());
    let (mut relays, mut presence) = spawn_presence(config);
    wait_present(&mut presence).await;

    let secret = b"the plaintext the hub must never see, twice over".repeat(20);
    let node_secret = secret.clone();
    let alice_for_node = alice.clone();
    let node = tokio::spawn(async move {
        let (mut stream, _) = relays.accept().await.unwrap();
        let accept = ferry_protocol::noise::AcceptConfig {
            psk: None,
            identity: Some(ferry_protocol::noise::ServerIdentityConfig::new(
                alice_for_node,
            )),
        };
        let (session, principal, leftover) =
            ferry_protocol::tokio::server_accept(&mut stream, accept)
                .await
                .unwrap();
        assert!(leftover.is_empty());
        let mut out = bytes::BytesMut::new();
        let (mut send, _) = session.into_split();
        send.write_frame(
            ferry_protocol::FrameType::DATA,
            ferry_protocol::Service::FETCH,
            ferry_protocol::RequestId(1),
            &node_secret,
            &mut out,
        )
        .unwrap();
        stream.write_all(&out).await.unwrap();
        stream.shutdown().await.unwrap();
        principal.name
    });

    let conn = hub.conn(&client).await;
    let (mut stream, claimed) = conn.relay("alice").await.unwrap();
    assert_eq!(claimed, alice.id());
    let proto = ferry_protocol::noise::ClientIdentityConfig::new(client.clone(), Some(alice.id()));
    let (session, proven, mut buf) =
        ferry_protocol::tokio::client_identity_handshake(&mut stream, proto)
            .await
            .unwrap();
    assert_eq!(proven, alice.id());
    let (_, mut recv) = session.into_split();
    let frame = loop {
        if let Some(frame) = recv.read_frame(&mut buf).unwrap() {
            break frame;
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
    };
    assert_eq!(frame.body.as_ref(), &secret[..]);
    assert_eq!(node.await.unwrap(), client.id().to_string());

    let mut seen = Vec::new();
    while let Ok(chunk) = tap.try_recv() {
        seen.extend_from_slice(&chunk);
    }
    assert!(
        seen.len() > secret.len(),
        "the hub relayed {} bytes",
        seen.len()
    );
    assert!(
        !seen.windows(16).any(|w| w == &secret[..16]),
        "plaintext crossed the hub"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_relay_to_an_absent_node_or_past_the_cap_is_refused() {
    let mut config = config(None);
    config.limits.max_relays_per_id = 1;
    config.limits.relay_wait = Duration::from_secs(1);
    let hub = start_with(config).await;
    let (alice, client) = (identity(1), identity(2));
    hub.conn(&alice)
        .await
        .register("alice", None)
        .await
        .unwrap();
    assert_eq!(
        refused(hub.conn(&client).await.relay("alice").await),
        codes::NOT_ONLINE
    );
    assert_eq!(
        refused(hub.conn(&client).await.relay("nobody").await),
        codes::UNKNOWN_NAME
    );
    // A node that is present but never accepts: the first relay waits, the second is refused.
    let mut node = hub.conn(&alice).await;
    let (id, _) = node.presence("alice", vec![]).await.unwrap();
    let first = tokio::spawn({
        let c = hub.conn(&client).await;
        async move { c.relay("alice").await.map(|_| ()) }
    });
    let Event::Relay { token, client: who } = node.next_event(id).await.unwrap() else {
        panic!("expected a relay event")
    };
    assert_eq!(who, client.id());
    assert_eq!(
        refused(hub.conn(&client).await.relay("alice").await),
        codes::RELAY_LIMIT
    );
    // A token is good only for the node it was issued to.
    assert_eq!(
        refused(hub.conn(&client).await.relay_accept(token).await),
        codes::BAD_TOKEN
    );
    // The node never comes: the client hears so.
    assert_eq!(refused(first.await.unwrap()), codes::RELAY_TIMEOUT);
    hub.stop().await;
}

#[tokio::test]
async fn a_punch_tells_both_sides_where_and_when() {
    let hub = start().await;
    let (alice, client) = (identity(1), identity(2));
    let mut node = hub.conn(&alice).await;
    node.register("alice", None).await.unwrap();
    let reported: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let (id, node_reflected) = node.presence("alice", vec![reported]).await.unwrap();
    let mut c = hub.conn(&client).await;
    let mine: SocketAddr = "127.0.0.1:7002".parse().unwrap();
    let punch = c
        .punch("alice", Duration::from_millis(200), vec![mine])
        .await
        .unwrap();
    assert_eq!(punch.peer, alice.id());
    assert_eq!(punch.addrs, vec![reported, node_reflected]);
    let Event::Punch(theirs) = node.next_event(id).await.unwrap() else {
        panic!("expected a punch event")
    };
    assert_eq!(theirs.peer, client.id());
    assert_eq!(theirs.addrs, vec![mine, c.local_addr()]);
    // The tie-break: exactly one side dials, and it is the one that asked (the Ferry client).
    assert_eq!(punch.role, PunchRole::Dial);
    assert_eq!(theirs.role, PunchRole::Listen);
    // Neither side showed the hub a UDP socket, so no QUIC address is offered.
    assert!(punch.udp.is_empty() && theirs.udp.is_empty());
    // Both dial at the same moment: the node's instruction arrives after half its RTT (about
    // 0 here), the client's after 100 ms, so the node waits ~100 ms longer.
    assert!(
        theirs.delay_ms >= punch.delay_ms + 90,
        "{theirs:?} {punch:?}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_flooding_identity_is_throttled_without_starving_another() {
    let mut config = config(None);
    config.limits.per_id = Rate {
        burst: 5,
        per_second: 1,
    };
    config.limits.per_ip = Rate {
        burst: 1000,
        per_second: 1000,
    };
    let hub = start_with(config).await;
    let alice = identity(1);
    hub.conn(&alice)
        .await
        .register("alice", None)
        .await
        .unwrap();
    let mut flood = hub.conn(&identity(2)).await;
    let mut throttled = 0;
    for _ in 0..50 {
        match flood.resolve("alice").await {
            Ok(_) => {}
            Err(HubError::Refused { code, .. }) if code == codes::THROTTLED => throttled += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // One token may come back during the loop.
    assert!(throttled >= 43, "only {throttled} of 50 throttled");
    let mut other = hub.conn(&identity(3)).await;
    for _ in 0..5 {
        assert_eq!(other.resolve("alice").await.unwrap().id, alice.id());
    }
    assert!(
        hub.stats
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 43
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_flooding_address_is_throttled_over_all_its_identities() {
    let mut config = config(None);
    config.limits.per_ip = Rate {
        burst: 10,
        per_second: 1,
    };
    let hub = start_with(config).await;
    let mut refusals = 0;
    for seed in 0..20 {
        let mut c = hub.conn(&identity(seed)).await;
        if let Err(HubError::Refused { code, .. }) = c.resolve("nobody").await {
            if code == codes::THROTTLED {
                refusals += 1;
            }
        }
    }
    assert!(refusals >= 9, "only {refusals} of 20 throttled");
    hub.stop().await;
}

#[tokio::test]
async fn a_wrong_hub_id_is_refused() {
    let hub = start().await;
    let err = HubConn::connect(&hub.hint(), Some(identity(55).id()), &identity(1))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::WrongHub { .. }), "{err}");
    hub.stop().await;
}

#[tokio::test]
async fn a_relay_stops_at_the_identity_byte_budget() {
    use ferry_protocol::transport::Acceptor;
    let mut config = config(None);
    config.limits.relay_bytes_per_hour = 64 * 1024;
    let hub = start_with(config).await;
    let (alice, client) = (identity(1), identity(2));
    hub.conn(&alice)
        .await
        .register("alice", None)
        .await
        .unwrap();
    let presence = PresenceConfig::new(hub.hint(), Some(hub.id), alice.clone(), "alice".into());
    let (mut relays, mut presence) = spawn_presence(presence);
    wait_present(&mut presence).await;
    // The node side swallows everything it gets and counts it.
    let node = tokio::spawn(async move {
        let (mut stream, _) = relays.accept().await.unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got).await;
        got.len()
    });
    let (mut stream, _) = hub.conn(&client).await.relay("alice").await.unwrap();
    let chunk = vec![7u8; 16 * 1024];
    let mut sent = 0;
    // Writing stops being possible once the hub cut the relay; bounded by the deadline.
    let _ = tokio::time::timeout(LONG, async {
        while stream.write_all(&chunk).await.is_ok() && sent < 1 << 20 {
            sent += chunk.len();
        }
    })
    .await;
    let received = tokio::time::timeout(LONG, node).await.unwrap().unwrap();
    assert!(
        received <= 64 * 1024,
        "{received} bytes crossed a 64 KiB budget"
    );
    // The next relay of that identity is refused up front.
    assert_eq!(
        refused(hub.conn(&client).await.relay("alice").await),
        codes::RELAY_LIMIT
    );
    hub.stop().await;
}

/// Sends one datagram to the hub's UDP port and returns the reply, if one comes within 300 ms.
async fn udp_exchange(
    socket: &tokio::net::UdpSocket,
    hub: SocketAddr,
    datagram: &[u8],
) -> Option<Vec<u8>> {
    socket.send_to(datagram, hub).await.unwrap();
    let mut buf = [0u8; 128];
    match tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            assert_eq!(from, hub);
            Some(buf[..n].to_vec())
        }
        _ => None,
    }
}

#[tokio::test]
async fn udp_reflect_is_token_bound_never_amplifies_and_feeds_the_punch() {
    let hub = start().await;
    let (alice, client) = (identity(1), identity(2));
    let mut node = hub.conn(&alice).await;
    node.register("alice", None).await.unwrap();
    let token = node.udp_token().await.unwrap();
    let (id, _) = node.presence("alice", vec![]).await.unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mine = socket.local_addr().unwrap();

    // A forged token and a malformed request get no answer at all.
    let forged = reflect::request(&[0xAA; 16]);
    assert_eq!(udp_exchange(&socket, hub.addr, &forged).await, None);
    let short = &reflect::request(&token)[..20];
    assert_eq!(udp_exchange(&socket, hub.addr, short).await, None);

    // The connection's own token: the reply names this socket and is no larger than the
    // request.
    let request = reflect::request(&token);
    let reply = udp_exchange(&socket, hub.addr, &request)
        .await
        .expect("a reply");
    assert!(
        reply.len() <= request.len(),
        "{} > {}",
        reply.len(),
        request.len()
    );
    assert_eq!(reflect::parse_reply(&reply, &token), Some(mine));

    // A client that showed no UDP socket punching the node is told the node's UDP address;
    // the node is told none of the client's.
    let mut c = hub.conn(&client).await;
    let punch = c.punch("alice", Duration::ZERO, vec![]).await.unwrap();
    assert_eq!(punch.udp, vec![mine]);
    let Event::Punch(theirs) = node.next_event(id).await.unwrap() else {
        panic!("expected a punch event")
    };
    assert!(theirs.udp.is_empty(), "{theirs:?}");

    // The token dies with its connection.
    drop(node);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if udp_exchange(&socket, hub.addr, &request).await.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token outlived its connection"
        );
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_stalling_first_hub_hint_loses_the_race_to_the_next_one() {
    let hub = start().await;
    // Accepts TCP and never says a word: tried in order, it would hold the client for the
    // whole 10 s handshake timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hints = vec![
        Hint {
            host: "127.0.0.1".into(),
            port: silent.local_addr().unwrap().port(),
        },
        Hint {
            host: "127.0.0.1".into(),
            port: hub.addr.port(),
        },
    ];
    let started = tokio::time::Instant::now();
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        HubConn::connect(&hints, Some(hub.id), &identity(9)),
    )
    .await
    .expect("the race did not wait for the silent hint")
    .unwrap();
    assert_eq!(conn.hub_addr(), hub.addr);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
    hub.stop().await;
}

/// Waits until the hub holds `n` connections (so a dropped one's presence has ended).
async fn wait_connections(hub: &Running, n: u64) {
    let stats = hub.stats.clone();
    tokio::time::timeout(LONG, async move {
        while stats.connections.load(std::sync::atomic::Ordering::Relaxed) != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the hub saw the connection close in time");
}

#[tokio::test]
async fn a_node_that_left_is_never_listed_and_its_entries_go_after_the_grace() {
    // (grace, whether a node back on a new connection is listed without announcing again)
    for (grace, kept) in [(Duration::from_secs(600), true), (Duration::ZERO, false)] {
        let mut config = config(None);
        config.limits.index_grace = grace;
        let hub = start_with(config).await;
        let seed = identity(7);
        let key = seed.id().to_string();
        let mut other = hub.conn(&identity(8)).await;
        let mut first = hub.conn(&seed).await;
        first.presence(&key, vec![]).await.unwrap();
        assert_eq!(first.announce(&[[1; 32]], false).await.unwrap(), 1);
        let ids = |peers: Vec<ferry_hub::content::PeerEntry>| -> Vec<NodeId> {
            peers.into_iter().map(|p| p.id).collect()
        };
        assert_eq!(ids(other.peers(&[1; 32]).await.unwrap()), vec![seed.id()]);

        drop(first);
        wait_connections(&hub, 1).await;
        assert_eq!(
            ids(other.peers(&[1; 32]).await.unwrap()),
            vec![],
            "grace {grace:?}"
        );

        // Back on a new connection (a new port), not announcing again.
        let mut second = hub.conn(&seed).await;
        second.presence(&key, vec![]).await.unwrap();
        let listed = ids(other.peers(&[1; 32]).await.unwrap());
        assert_eq!(
            listed == vec![seed.id()],
            kept,
            "grace {grace:?}: {listed:?}"
        );
        hub.stop().await;
    }
}
