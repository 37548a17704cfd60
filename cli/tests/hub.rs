//! `ferry` through a hub (spec/HUB.md): `ferry register`, then `ferry get` and `ferry ping` of
//! `ferry://alice@HUB/` reach alice's server directly when a hint works and through the hub's
//! relay when none does, always requiring alice's node id. The hub and the servers run in this
//! process on 127.0.0.1; `ferry` is the binary.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{data, Env};
use ferry_common::url::Hint;
use ferry_hub::{Hub, HubConfig, HubConn, HubLimits, PresenceConfig};
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::Key;

/// A hub and the servers of one test, in a runtime of their own.
struct World {
    runtime: tokio::runtime::Runtime,
    hub: SocketAddr,
    hub_id: NodeId,
    tap: Option<tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>>,
    /// Presences and servers live as long as the world.
    keep: Vec<Box<dyn std::any::Any>>,
}

impl World {
    fn new() -> Self {
        Self::with_limits(HubLimits::default())
    }

    fn with_limits(limits: HubLimits) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = HubConfig::new(
            Identity::from_secret([200; 32]),
            "127.0.0.1:0".parse().unwrap(),
        );
        config.limits = limits;
        let hub = runtime.block_on(Hub::bind(config)).unwrap();
        let addr = hub.local_addr().unwrap();
        let hub_id = hub.id();
        let tap = Some(hub.tap_relays());
        runtime.spawn(hub.run(std::future::pending()));
        Self {
            runtime,
            hub: addr,
            hub_id,
            tap,
            keep: Vec::new(),
        }
    }

    /// `NAME@HOST:PORT` without the hub's id (trusted on first use).
    fn at(&self, name: &str) -> String {
        format!("{name}@127.0.0.1:{}", self.hub.port())
    }

    /// `ferry://NAME@HUBID@HOST:PORT/PATH`.
    fn url(&self, name: &str, path: &str) -> String {
        format!(
            "ferry://{name}@{}@127.0.0.1:{}/{path}",
            self.hub_id,
            self.hub.port()
        )
    }

    /// Serves `root` as `identity` and stays present as `name`, reporting `hints` (the real
    /// listening address when `None`).
    fn serve(
        &mut self,
        root: &Path,
        identity: &Identity,
        name: &str,
        hints: Option<Vec<SocketAddr>>,
    ) {
        self.serve_punching(root, identity, name, hints, true);
    }

    /// [`World::serve`]; `punch` false makes the node ignore the hub's punch instructions.
    fn serve_punching(
        &mut self,
        root: &Path,
        identity: &Identity,
        name: &str,
        hints: Option<Vec<SocketAddr>>,
        punch: bool,
    ) {
        let mut config = ferry_testkit::test_config(root, &Key::generate());
        config.identity = Some(identity.clone());
        let server = self
            .runtime
            .block_on(ferry_server::Server::bind(config))
            .unwrap();
        let listening = server.local_addrs();
        let hub = vec![Hint {
            host: "127.0.0.1".into(),
            port: self.hub.port(),
        }];
        let mut presence =
            PresenceConfig::new(hub, Some(self.hub_id), identity.clone(), name.into());
        presence.addrs = hints.unwrap_or(listening);
        presence.punch = punch;
        let _guard = self.runtime.enter();
        let (acceptor, presence) = ferry_hub::spawn_presence(presence);
        self.runtime
            .spawn(server.run_with(vec![acceptor], std::future::pending()));
        self.keep.push(Box::new(presence));
        // Present once the hub says so.
        let (hub, hub_id) = (self.hub, self.hub_id);
        self.runtime.block_on(async move {
            let asker = Identity::from_secret([201; 32]);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let mut conn = HubConn::connect_addr(hub, Some(hub_id), &asker)
                    .await
                    .unwrap();
                if conn.resolve(name).await.map(|r| r.online).unwrap_or(false) {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{name} never came");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Every byte the hub relayed so far.
    fn relayed(&mut self) -> Vec<u8> {
        let mut seen = Vec::new();
        if let Some(tap) = &mut self.tap {
            while let Ok(chunk) = tap.try_recv() {
                seen.extend_from_slice(&chunk);
            }
        }
        seen
    }
}

/// The identity `ferry` made in `env` (its `ferry register` created it).
fn identity_of(env: &Env) -> Identity {
    ferry_common::identity::load(&env.home.path().join("config/ferry/identity")).unwrap()
}

/// An address nothing listens on: bound, then closed, so a dial is refused at once.
fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn register(world: &World, env: &Env, name: &str) -> Identity {
    let run = env.run(&["register", &world.at(name)]);
    run.ok();
    assert!(
        run.stdout
            .contains(&format!("registered {name} at ferry://{}", world.hub_id)),
        "{run:?}"
    );
    assert!(run.stderr.contains("first contact with the hub"), "{run:?}");
    identity_of(env)
}

#[test]
fn a_server_whose_hints_are_all_dead_is_reached_through_the_relay_and_the_hub_sees_no_plaintext() {
    let mut world = World::new();
    let alice_env = Env::new();
    let alice = register(&world, &alice_env, "alice");
    let root = tempfile::tempdir().unwrap();
    let content = data(300_000, 12);
    std::fs::write(root.path().join("file.bin"), &content).unwrap();
    // The node does not punch, so the client's punch cannot succeed and the relay, asked for
    // beside it, carries the connection once the punch's grace is over.
    world.serve_punching(root.path(), &alice, "alice", Some(vec![dead_addr()]), false);

    let client = Env::new();
    let out = client.home.path().join("got.bin");
    let run = client.run(&[
        "--connect-timeout",
        "3s",
        "get",
        &world.url("alice", "file.bin"),
        out.to_str().unwrap(),
    ]);
    run.ok();
    assert_eq!(std::fs::read(&out).unwrap(), content, "byte-identical");
    let relayed = world.relayed();
    assert!(
        relayed.len() > content.len(),
        "{} bytes relayed",
        relayed.len()
    );
    for probe in content.chunks(4096).take(20) {
        assert!(
            !relayed.windows(32).any(|w| w == &probe[..32]),
            "the hub saw plaintext"
        );
    }

    let ping = client.run(&[
        "-v",
        "--connect-timeout",
        "3s",
        "ping",
        "-c",
        "1",
        &world.url("alice", ""),
    ]);
    ping.ok();
    assert!(ping.stdout.contains("relayed"), "{ping:?}");
    assert!(ping.stderr.contains("no direct path"), "{ping:?}");
    assert!(
        ping.stderr.contains("asking the hub to coordinate a punch"),
        "{ping:?}"
    );
    assert!(ping.stderr.contains("asking the hub to relay"), "{ping:?}");
    assert!(
        ping.stderr
            .contains("relayed path; the punch goes on beside it"),
        "{ping:?}"
    );
}

#[test]
fn dead_hints_and_no_relay_still_reach_the_node_by_a_hub_coordinated_punch() {
    // The hub relays nothing here, so only a punch can reach alice: the test fails if the
    // client goes from the hints to the relay without punching.
    let limits = HubLimits {
        max_relays: 0,
        ..HubLimits::default()
    };
    let mut world = World::with_limits(limits);
    let alice_env = Env::new();
    let alice = register(&world, &alice_env, "alice");
    let root = tempfile::tempdir().unwrap();
    let content = data(300_000, 13);
    std::fs::write(root.path().join("file.bin"), &content).unwrap();
    world.serve(root.path(), &alice, "alice", Some(vec![dead_addr()]));

    let client = Env::new();
    let out = client.home.path().join("got.bin");
    let run = client.run(&[
        "-v",
        "get",
        &world.url("alice", "file.bin"),
        out.to_str().unwrap(),
    ]);
    run.ok();
    assert_eq!(std::fs::read(&out).unwrap(), content, "byte-identical");
    assert!(run.stderr.contains("punched path"), "{run:?}");

    // The ping punches again: the get's punch settled on one transport and closed alice's
    // punch listener at once, so the ping's direct race (her dead hint and the port her hub
    // connection leaves from) finds nothing listening, never a punch listener left up.
    let ping = client.run(&["-v", "ping", "-c", "1", &world.url("alice", "")]);
    ping.ok();
    assert!(ping.stdout.contains("punched ("), "{ping:?}");
    assert!(world.relayed().is_empty(), "nothing went through the relay");
}

#[test]
fn a_lying_hint_cannot_stand_in_for_the_named_node() {
    let mut world = World::new();
    let alice_env = Env::new();
    let alice = register(&world, &alice_env, "alice");
    let mallory = Identity::from_secret([66; 32]);
    let fake = tempfile::tempdir().unwrap();
    std::fs::write(fake.path().join("file.txt"), b"mallory's file").unwrap();
    let mallory_server = common::server_with_identity(fake.path(), &mallory);
    let real = tempfile::tempdir().unwrap();
    std::fs::write(real.path().join("file.txt"), b"alice's file").unwrap();
    // Alice's only hint leads to mallory's server, which answers at once.
    world.serve(
        real.path(),
        &alice,
        "alice",
        Some(vec![mallory_server.addr]),
    );

    let client = Env::new();
    let run = client.run(&["-v", "get", &world.url("alice", "file.txt"), "-"]);
    run.ok();
    assert_eq!(run.stdout, "alice's file");
    assert!(
        run.stderr.contains(&mallory.id().to_string()),
        "the refused hint is named: {run:?}"
    );
}

#[test]
fn a_reachable_hint_is_used_directly_and_the_hub_is_trusted_on_first_use() {
    let mut world = World::new();
    let alice_env = Env::new();
    let alice = register(&world, &alice_env, "alice");
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("a.txt"), b"direct").unwrap();
    world.serve(root.path(), &alice, "alice", None);

    let client = Env::new();
    // No hub id in the address: pinned on first contact, then required.
    let url = format!("ferry://{}/", world.at("alice"));
    let ping = client.run(&["ping", "-c", "1", &url]);
    ping.ok();
    assert!(ping.stdout.contains("direct"), "{ping:?}");
    assert!(
        ping.stderr.contains("first contact with the hub"),
        "{ping:?}"
    );
    let get = client.run(&["get", &format!("{url}a.txt"), "-"]);
    get.ok();
    assert_eq!(get.stdout, "direct");
    assert!(world.relayed().is_empty(), "nothing went through the relay");
}

#[test]
fn register_refuses_a_taken_name_and_only_the_holder_releases_it() {
    let world = World::new();
    let alice_env = Env::new();
    register(&world, &alice_env, "alice");
    let mallory = Env::new();
    let taken = mallory.run(&["register", &world.at("alice")]);
    taken.code(1);
    assert!(taken.stderr.contains("NAME_TAKEN"), "{taken:?}");
    let release = mallory.run(&["register", "--release", &world.at("alice")]);
    release.code(1);
    assert!(release.stderr.contains("NOT_HOLDER"), "{release:?}");
    alice_env
        .run(&["register", "--release", &world.at("alice")])
        .ok();
    mallory.run(&["register", &world.at("alice")]).ok();
    let bad = mallory.run(&["register", &world.at("Bad_Name")]);
    bad.code(2);
}

#[test]
fn a_relayed_session_moves_to_a_punched_path_without_breaking_the_fetch_in_flight() {
    use ferry_client::client::hub::{NamedOptions, NamedSession, Route};
    use ferry_client::{ClientConfig, FerryUrl};

    let mut world = World::new();
    let alice = Identity::from_secret([31; 32]);
    let (hub, hub_id) = (world.hub, world.hub_id);
    world.runtime.block_on(async {
        let mut conn = HubConn::connect_addr(hub, Some(hub_id), &alice)
            .await
            .unwrap();
        conn.register("alice", None).await.unwrap();
    });
    let root = tempfile::tempdir().unwrap();
    let content = data(4 << 20, 14);
    std::fs::write(root.path().join("big.bin"), &content).unwrap();
    world.serve(root.path(), &alice, "alice", Some(vec![dead_addr()]));
    // Alice ignores punches for now, so the session starts on the relay.
    let presence = world.keep.last().unwrap();
    let presence = presence.downcast_ref::<ferry_hub::Presence>().unwrap();
    presence.pause_punching(true);

    let url: FerryUrl = world.url("alice", "").parse().unwrap();
    let config = ClientConfig::new(Key::generate())
        .identity(Identity::from_secret([32; 32]))
        .server_id(hub_id);
    let options = NamedOptions {
        punch_budget: Some(Duration::from_millis(500)),
        upgrade_backoff: (Duration::from_millis(50), Duration::from_millis(200)),
        ..NamedOptions::default()
    };
    let session = world
        .runtime
        .block_on(NamedSession::connect(&url, config, options))
        .unwrap();
    assert_eq!(session.route(), Route::Relayed);

    // A fetch under way on the relay: its first chunk is in.
    let relayed_client = session.client();
    let mut fetch = world
        .runtime
        .block_on(relayed_client.fetch("big.bin", 0, ferry_protocol::message::TO_END))
        .unwrap();
    let mut got = world
        .runtime
        .block_on(fetch.chunk())
        .unwrap()
        .unwrap()
        .to_vec();

    // Alice punches again: the session moves on its next attempt.
    presence.pause_punching(false);
    let mut routes = session.routes();
    let route = world.runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            routes.wait_for(|r| *r != Route::Relayed),
        )
        .await
        .expect("the session moved off the relay within 10 s")
        .map(|r| *r)
        .unwrap()
    });
    assert!(
        matches!(route, Route::PunchedTcp | Route::PunchedQuic),
        "{route}"
    );
    assert_eq!(session.route(), route);

    // The fetch in flight finishes on the relay, whole and verified.
    world.runtime.block_on(async {
        while let Some(chunk) = fetch.chunk().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
    });
    assert_eq!(got.len(), content.len());
    assert!(got == content, "the relayed fetch is byte-identical");
    let relayed_before = world.relayed().len();
    assert!(
        relayed_before > content.len(),
        "{relayed_before} bytes relayed"
    );

    // A new request takes the punched path: the relay carries (almost) nothing more.
    let (_, again) = world
        .runtime
        .block_on(session.client().fetch_all("big.bin"))
        .unwrap();
    assert!(again == content, "the punched fetch is byte-identical");
    let relayed_after = world.relayed().len();
    assert!(
        relayed_after < 64 * 1024,
        "{relayed_after} more bytes went through the relay"
    );
    drop(fetch);
    drop(relayed_client);
    drop(session);
}

/// Registers `name` for `identity` at the world's hub, through the library.
fn register_as(world: &World, identity: &Identity, name: &str) {
    let (hub, hub_id) = (world.hub, world.hub_id);
    world.runtime.block_on(async {
        let mut conn = HubConn::connect_addr(hub, Some(hub_id), identity)
            .await
            .unwrap();
        conn.register(name, None).await.unwrap();
    });
}

#[test]
fn a_node_that_never_answers_the_punch_is_relayed_long_before_the_punch_gives_up() {
    use ferry_client::client::hub::{NamedOptions, NamedSession, Route};
    use ferry_client::{ClientConfig, FerryUrl};

    let mut world = World::new();
    let alice = Identity::from_secret([33; 32]);
    register_as(&world, &alice, "alice");
    let root = tempfile::tempdir().unwrap();
    let content = data(200_000, 15);
    std::fs::write(root.path().join("file.bin"), &content).unwrap();
    world.serve(root.path(), &alice, "alice", Some(vec![dead_addr()]));
    // Alice never answers a punch, and the client's punch may run a minute: a client that
    // waits for the punch to fail before it relays cannot connect within the 20 s below.
    let presence = world.keep.last().unwrap();
    let presence = presence.downcast_ref::<ferry_hub::Presence>().unwrap();
    presence.pause_punching(true);

    let url: FerryUrl = world.url("alice", "").parse().unwrap();
    let config = ClientConfig::new(Key::generate())
        .identity(Identity::from_secret([34; 32]))
        .server_id(world.hub_id);
    let options = NamedOptions {
        punch_budget: Some(Duration::from_secs(60)),
        upgrade_backoff: (Duration::from_secs(60), Duration::from_secs(60)),
        ..NamedOptions::default()
    };
    let session = world
        .runtime
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                NamedSession::connect(&url, config, options),
            )
            .await
        })
        .expect("connected within 20 s, while the punch still had most of its minute")
        .unwrap();
    assert_eq!(session.route(), Route::Relayed);
    let (_, got) = world
        .runtime
        .block_on(session.client().fetch_all("file.bin"))
        .unwrap();
    assert!(got == content, "the relayed fetch is byte-identical");
    assert!(world.relayed().len() > content.len());
    drop(session);
}

#[test]
fn a_punch_under_way_is_not_beaten_by_a_relay_that_is_ready_first() {
    use ferry_client::client::hub::{NamedOptions, NamedSession, Route};
    use ferry_client::{ClientConfig, FerryUrl};

    let mut world = World::new();
    let alice = Identity::from_secret([35; 32]);
    register_as(&world, &alice, "alice");
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("a.txt"), b"punched").unwrap();
    world.serve(root.path(), &alice, "alice", Some(vec![dead_addr()]));

    let url: FerryUrl = world.url("alice", "").parse().unwrap();
    let config = ClientConfig::new(Key::generate())
        .identity(Identity::from_secret([36; 32]))
        .server_id(world.hub_id);
    // On 127.0.0.1 the relay is up within milliseconds, before the punch's start time; a
    // grace longer than any punch here takes timing out of the outcome.
    let options = NamedOptions {
        relay_grace: Duration::from_secs(20),
        punch_budget: Some(Duration::from_secs(10)),
        ..NamedOptions::default()
    };
    let session = world
        .runtime
        .block_on(NamedSession::connect(&url, config, options))
        .unwrap();
    assert!(
        matches!(session.route(), Route::PunchedTcp | Route::PunchedQuic),
        "{}",
        session.route()
    );
    let (_, got) = world
        .runtime
        .block_on(session.client().fetch_all("a.txt"))
        .unwrap();
    assert_eq!(got, b"punched");
    drop(session);
}

#[test]
fn a_relayed_get_moves_to_the_punched_path_mid_file_and_is_byte_identical() {
    // 500 kB/s through the relay: the 8 MiB file would need about 16 s there, many times the
    // ~2 s the session takes to punch once alice answers again, even on a loaded machine.
    let limits = HubLimits {
        relay_rate: 500_000,
        ..HubLimits::default()
    };
    let mut world = World::with_limits(limits);
    let alice_env = Env::new();
    let alice = register(&world, &alice_env, "alice");
    let root = tempfile::tempdir().unwrap();
    let content = data(8 << 20, 16);
    std::fs::write(root.path().join("big.bin"), &content).unwrap();
    world.serve(root.path(), &alice, "alice", Some(vec![dead_addr()]));
    let mut tap = world.tap.take().unwrap();
    let mut drain = move || {
        let mut n = 0;
        while let Ok(chunk) = tap.try_recv() {
            n += chunk.len();
        }
        n
    };
    let presence = world.keep.last().unwrap();
    let presence = presence.downcast_ref::<ferry_hub::Presence>().unwrap();
    presence.pause_punching(true);

    let client = Env::new();
    let out = client.home.path().join("got.bin");
    let child = client
        .command()
        .args(["-v", "get", &world.url("alice", "big.bin")])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the file is coming through the relay, alice answers punches again.
    let mut relayed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while relayed < 256 * 1024 {
        assert!(std::time::Instant::now() < deadline, "nothing relayed");
        std::thread::sleep(Duration::from_millis(20));
        relayed += drain();
    }
    presence.pause_punching(false);
    let run = common::Run::from(child.wait_with_output().unwrap());
    run.ok();
    relayed += drain();
    assert!(std::fs::read(&out).unwrap() == content, "byte-identical");
    let moved = run
        .stderr
        .lines()
        .find(|l| l.contains("moved from the relayed path to the punched"))
        .unwrap_or_else(|| panic!("the get never moved: {run:?}"));
    let at: u64 = moved
        .split("at byte ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte offset in {moved:?}"));
    assert!(0 < at && at < content.len() as u64, "moved at byte {at}");
    // The new path continues exactly where the relayed leg stopped: nothing the client kept is
    // fetched again (what was still in flight on the relay is dropped, never written twice).
    let resumed: u64 = run
        .stderr
        .lines()
        .find(|l| l.contains("resuming"))
        .and_then(|l| l.split("offset=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the rest did not resume: {run:?}"));
    assert_eq!(resumed, at, "the rest resumes at the byte the move reached");
    // The relay never carried the whole file: the rest came over the punched path.
    assert!(
        relayed < content.len(),
        "{relayed} bytes relayed for a {} byte file moved at byte {at}",
        content.len()
    );
}

/// The NAT lab through the real binaries (benches/nat/fullstack.sh): a punch where the NATs
/// allow one, the relay where they do not, every attempt connected and a 1 MiB get
/// byte-identical. Needs root and ../shared/netlab; run it with
/// `cargo test -p ferry-cli --test hub -- --ignored nat_lab`.
#[test]
#[ignore = "needs root and the network lab (../shared/netlab); builds release binaries; about 1 minute"]
fn nat_lab_punches_where_the_nats_allow_and_relays_elsewhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("benches/nat/fullstack.sh");
    let run = std::process::Command::new("bash")
        .arg(&script)
        .env("KINDS", "fullcone,symmetric")
        .env("ATTEMPTS", "2")
        .env("PHASES", "matrix")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    if stderr.contains("skipped") {
        eprintln!("nat lab test skipped: {}", stderr.trim());
        return;
    }
    let row = |k1: &str, k2: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {k1} | {k2} |")))
            .unwrap_or_else(|| panic!("no row for {k1}/{k2}:\n{stdout}\n{stderr}"))
            .to_owned()
    };
    for (k1, k2, direct) in [
        ("fullcone", "fullcone", "| 2/2 |"),
        ("fullcone", "symmetric", "| 2/2 |"),
        ("symmetric", "fullcone", "| 2/2 |"),
        ("symmetric", "symmetric", "| 0/2 |"),
    ] {
        let line = row(k1, k2);
        assert!(
            line.contains(&format!("| {k1} | {k2} | 2/2 {direct}")),
            "{line}"
        );
        assert!(line.contains("1 MiB get ok"), "{line}");
    }
    assert!(
        row("symmetric", "symmetric").contains("relayed ×2"),
        "{stdout}"
    );
}
