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
use ferry_hub::{Hub, HubConfig, HubConn, PresenceConfig};
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = HubConfig::new(
            Identity::from_secret([200; 32]),
            "127.0.0.1:0".parse().unwrap(),
        );
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
    world.serve(root.path(), &alice, "alice", Some(vec![dead_addr()]));

    let client = Env::new();
    let out = client.home.path().join("got.bin");
    let run = client.run(&[
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

    let ping = client.run(&["-v", "ping", "-c", "1", &world.url("alice", "")]);
    ping.ok();
    assert!(ping.stdout.contains("relayed"), "{ping:?}");
    assert!(ping.stderr.contains("no direct path"), "{ping:?}");
    assert!(ping.stderr.contains("asking the hub to relay"), "{ping:?}");
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
