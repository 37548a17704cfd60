//! Trust on first use and several hints end to end (spec §13.8): an address without an id,
//! reached with `--identity`, pins the id that answers in `known_servers`; a later different id
//! there is refused with exit 3 and a message that says what to run; `ferry forget` removes the
//! pin. An address with a wrong id is refused with exit 3 even when one of its hints is right.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{server_with_identity, tree, Env};
use ferry_common::known_servers;
use ferry_protocol::identity::Identity;

/// A port with nothing listening: bound, then let go.
fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn trust_on_first_use_pins_the_id_refuses_another_and_forget_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root, 10);
    let identity = Identity::from_secret([0x51; 32]);
    let server = server_with_identity(&root, &identity);
    let env = Env::new();
    let mine = env.home.path().join("mine.identity");
    let mine = mine.to_str().unwrap();
    let file = env.home.path().join("config/ferry/known_servers");
    let url = format!("ferry://{}/", server.addr);
    let authority = server.addr.to_string();

    // First contact: listed, pinned, and said once.
    let first = env.run(&["--identity", mine, "ls", &url]);
    first.ok();
    assert_eq!(first.stdout.lines().count(), 3, "{first:?}");
    assert!(
        first.stderr.contains(&format!(
            "first contact with {authority}: pinned its id {}",
            identity.id()
        )),
        "{first:?}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!("\n{authority} {}\n", identity.id())),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // Later contacts: the pin alone selects the identity handshake (no key, no --identity),
    // and nothing more is said or written.
    let again = env.run(&["ls", &url]);
    again.ok();
    assert!(again.stderr.is_empty(), "{again:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // The identity at that address changed (here: the pin says another id): refused.
    known_servers::forget(&file, &authority.parse().unwrap()).unwrap();
    let other = Identity::from_secret([0x52; 32]).id();
    let line = known_servers::add(&file, &authority.parse().unwrap(), &other).unwrap();
    let refused = env.run(&["--identity", mine, "ls", &url]);
    refused.code(3);
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let expect = format!(
        "the server at {authority} presents id {}, but {} (line {line}) says {other}: it may be an impostor, or its identity changed; if you trust the change, run: ferry forget {authority}",
        identity.id(),
        file.display()
    );
    assert!(refused.stderr.contains(&expect), "{refused:?}\n{expect}");

    // Forgotten: the next contact is a first contact again.
    let forgot = env.run(&["forget", &authority]);
    forgot.ok();
    assert!(
        forgot.stderr.contains(&format!("forgot {authority}")),
        "{forgot:?}"
    );
    let none = env.run(&["forget", &authority]);
    none.ok();
    assert!(none.stderr.contains("has no pin"), "{none:?}");
    let repinned = env.run(&["--identity", mine, "ls", &url]);
    repinned.ok();
    assert!(repinned.stderr.contains("first contact"), "{repinned:?}");

    // Without --identity, a pin or an id, a key is still needed, as before.
    let unpinned = format!("ferry://{}/", dead_port());
    let run = env.run(&["ls", &unpinned]);
    run.code(2);
    assert!(run.stderr.contains("no key given"), "{run:?}");
}

#[test]
fn several_hints_dead_first_connect_and_a_wrong_id_is_exit_3_even_with_a_right_hint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root, 10);
    let identity = Identity::from_secret([0x61; 32]);
    let server = server_with_identity(&root, &identity);
    // Accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = Env::new();

    for first in [dead_port(), silent.local_addr().unwrap()] {
        let url = format!("ferry://{}@{first},{}/", identity.id(), server.addr);
        let run = env.run(&["ls", &url]);
        run.ok();
        assert_eq!(run.stdout.lines().count(), 3, "{run:?}");
    }

    let wrong = Identity::from_secret([0x62; 32]).id();
    let url = format!("ferry://{wrong}@{},{}/", dead_port(), server.addr);
    let run = env.run(&["ls", &url]);
    run.code(3);
    assert!(
        run.stderr
            .contains(&format!("proved identity {}, not {wrong}", identity.id())),
        "{run:?}"
    );
    assert!(
        !env.home.path().join("config/ferry/known_servers").exists(),
        "an address with an id never writes known_servers"
    );
}
