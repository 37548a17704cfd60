//! Identities end to end (spec §13): `ferry id` creates, prints and rotates this node's id; a
//! server with an identity is reached as `ferry://ID@HOST/` without any key, and an address
//! whose id the server's key does not hash to is refused with exit 3 before anything is sent.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use common::{server_with_identity, tree, Env, TestServer};
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::Key;

#[test]
fn ferry_id_creates_prints_and_rotates_the_identity() {
    let env = Env::new();
    let first = env.run(&["id"]);
    first.ok();
    let id: NodeId = first.stdout.trim().parse().unwrap();
    assert!(first.stderr.contains("created an identity"), "{first:?}");
    let file = env.home.path().join("config/ferry/identity");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = env.run(&["id"]);
    again.ok();
    assert_eq!(again.stdout.trim(), id.to_string());
    assert!(again.stderr.is_empty(), "{again:?}");

    let rotated = env.run(&["id", "--new"]);
    rotated.ok();
    let new: NodeId = rotated.stdout.trim().parse().unwrap();
    assert_ne!(new, id);
    assert!(rotated.stderr.contains(&id.to_string()), "{rotated:?}");
    let kept: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("identity.old-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(env.run(&["id"]).stdout.trim(), new.to_string());
}

#[test]
fn an_address_with_the_servers_id_connects_and_a_wrong_id_is_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root, 10);
    let identity = Identity::from_secret([0x42; 32]);
    let server = server_with_identity(&root, &identity);
    let env = Env::new();

    let url = format!("ferry://{}@{}/", identity.id(), server.addr);
    let run = env.run(&["ls", &url]);
    run.ok();
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["a.txt", "big.bin", "docs/"]
    );

    // The right host and port, the wrong id: refused, and the message says why.
    let wrong = Identity::from_secret([0x43; 32]).id();
    let url = format!("ferry://{wrong}@{}/", server.addr);
    let run = env.run(&["ls", &url]);
    run.code(3);
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("proved identity {}, not {wrong}", identity.id())),
        "{run:?}"
    );
    assert!(run.stderr.contains("impostor"), "{run:?}");

    // The same server still serves PSK clients on the same port.
    let psk = env.ferry(&server.key, dir.path(), &["ls", &server.url("")]);
    psk.ok();
}

#[test]
fn a_psk_only_server_refuses_the_identity_handshake_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root, 10);
    let server = TestServer::start(&root, &Key::generate());
    let env = Env::new();
    let url = format!(
        "ferry://{}@{}/",
        Identity::from_secret([1; 32]).id(),
        server.addr
    );
    let run = env.run(&["ls", &url]);
    run.code(3);
    assert!(run.stderr.contains("authentication failed"), "{run:?}");
}
