//! Happy Eyeballs over real sockets (spec §13.8): an address whose first hint is dead (nothing
//! listening) or silent (accepts, never answers) connects through the second. The schedule
//! itself (the second attempt at 250 ms, connected under 300 ms) is asserted exactly in paused
//! time by the unit tests of `race.rs` and `connect.rs`; here real time only bounds failure, far
//! below the 10 s an attempt may take, so a loaded machine cannot make it flake.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientConfig};
use ferry_common::url::FerryUrl;
use ferry_protocol::identity::Identity;
use ferry_protocol::Key;
use ferry_testkit::{tree, TestServer};

fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_url_whose_first_hint_is_dead_or_silent_connects_through_the_second() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), 10);
    let identity = Identity::from_secret([0x71; 32]);
    let id = identity.id();
    let server = TestServer::start_with(
        dir.path(),
        &Key::generate(),
        "127.0.0.1:0".parse().unwrap(),
        move |config| config.identity = Some(identity),
    );
    // The kernel completes its TCP handshakes; nobody ever reads.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (what, first) in [
        ("dead", dead_port()),
        ("silent", silent.local_addr().unwrap()),
    ] {
        let url: FerryUrl = format!("ferry://{id}@{first},{}/", server.addr)
            .parse()
            .unwrap();
        let start = Instant::now();
        let connected = runtime
            .block_on(Client::connect_url(
                &url,
                ClientConfig::new(Key::generate()),
            ))
            .unwrap();
        let took = start.elapsed();
        assert_eq!(connected.addr, server.addr, "{what}");
        assert_eq!(connected.hint.port, server.addr.port());
        assert_eq!(connected.server_id, Some(id));
        assert_eq!(
            runtime
                .block_on(connected.client.stat("a.txt"))
                .unwrap()
                .size,
            6
        );
        eprintln!("first hint {what}: connected through the second in {took:?}");
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
    }
}
