//! Enrolment with a one-time code (spec §13.11, issue 11 item 5): `ferry-server invite` makes
//! a code (here through the same library call), `ferry join CODE ferry://ID@HOST/` enrols this
//! machine's identity with it and pins the server, and then plain commands work without a key.
//! A wrong, expired or used code fails clearly and leaves the invite burned.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{tree, Env, TestServer};
use ferry_protocol::identity::Identity;
use ferry_protocol::Key;
use ferry_server::authorized::AuthorizedClients;
use ferry_server::invite::{self, Enrolment, Invite};

/// A server with an identity that admits its authorised-clients file and takes enrolments
/// from the invites directory beside it.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    clients: PathBuf,
    invites: PathBuf,
    identity: Identity,
    server: TestServer,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        tree(&root, 10_000);
        let config = dir.path().join("server");
        let clients = config.join("authorized_clients");
        let identity = Identity::from_secret([0x51; 32]);
        let server = {
            let (identity, clients) = (identity.clone(), clients.clone());
            TestServer::start_with(
                &root,
                &Key::generate(),
                "127.0.0.1:0".parse().unwrap(),
                move |config| {
                    config.identity = Some(identity);
                    config.identity_resolver = Some(Arc::new(AuthorizedClients::new(&clients)));
                    config.enrolment = Some(Enrolment::beside(&clients));
                },
            )
        };
        Self {
            invites: invite::dir_beside(&clients),
            _dir: dir,
            root,
            clients,
            identity,
            server,
        }
    }

    /// What `ferry-server invite` does: a new invite lasting `ttl`.
    fn invite(&self, name: &str, write: bool, ttl: Duration) -> Invite {
        invite::create(
            &self.invites,
            Some(name.into()),
            None,
            write,
            ttl,
            SystemTime::now(),
        )
        .unwrap()
    }

    /// The address the invite prints: `ferry://ID@HOST:PORT/`.
    fn url(&self) -> String {
        format!("ferry://{}@{}/", self.identity.id(), self.server.addr)
    }

    fn pending(&self) -> usize {
        std::fs::read_dir(&self.invites).unwrap().count()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_new_user_enrols_with_a_code_then_lists_fetches_and_uploads() {
    let s = Setup::new();
    let env = Env::new();
    let invite = s.invite("bob", true, Duration::from_secs(600));

    let run = env.run(&["join", &invite.code.to_string(), &s.url()]);
    run.ok();
    assert!(run.stdout.contains("enrolled on"), "{run:?}");
    assert!(
        run.stdout.contains("as bob (read-write, root /)"),
        "{run:?}"
    );
    // The client's id is authorised as bob, with write access, and the invite is gone.
    let me = env.run(&["id"]).stdout.trim().to_owned();
    assert!(
        read(&s.clients).contains(&format!("{me} bob write")),
        "{}",
        read(&s.clients)
    );
    assert_eq!(s.pending(), 0);
    // The server's id is pinned, so an address without ID@ needs neither a key nor a flag.
    let known = read(&env.home.path().join("config/ferry/known_servers"));
    assert!(
        known.contains(&format!("{} {}", s.server.addr, s.identity.id())),
        "{known}"
    );
    let plain = format!("ferry://{}/", s.server.addr);

    let ls = env.run(&["ls", &plain]);
    ls.ok();
    assert_eq!(
        ls.stdout.lines().collect::<Vec<_>>(),
        ["a.txt", "big.bin", "docs/"]
    );
    let get = env.run(&["get", &format!("{plain}docs/readme.md"), "-"]);
    get.ok();
    assert_eq!(get.stdout, "# docs\n");
    std::fs::write(env.home.path().join("up.txt"), b"uploaded by bob\n").unwrap();
    env.run(&["put", "up.txt", &plain]).ok();
    assert_eq!(read(&s.root.join("up.txt")), "uploaded by bob\n");
}

#[test]
fn a_wrong_code_fails_clearly_and_burns_the_code() {
    let s = Setup::new();
    let env = Env::new();
    let invite = s.invite("eve", false, Duration::from_secs(600));
    let mut wrong = invite.code;
    wrong.words[1] = wrong.words[1].wrapping_add(1);

    let run = env.run(&["join", &wrong.to_string(), &s.url()]);
    run.code(1);
    assert!(run.stderr.contains("did not match"), "{run:?}");
    assert!(run.stderr.contains("ask for a new one"), "{run:?}");
    assert!(!run.stderr.contains(&wrong.to_string()), "{run:?}");
    assert_eq!(s.pending(), 0, "a wrong guess burns the invite");

    // The right code afterwards is refused too: one online guess per code.
    let run = env.run(&["join", &invite.code.to_string(), &s.url()]);
    run.code(1);
    assert!(run.stderr.contains("no invite"), "{run:?}");
    assert!(!read(&s.clients).contains("eve"), "{}", read(&s.clients));
    // And the stranger is still a stranger.
    env.run(&["ls", &s.url()]).code(3);
}

#[test]
fn an_expired_or_used_code_fails_and_a_mistyped_one_costs_nothing() {
    let s = Setup::new();
    let env = Env::new();

    // Made a minute ago for 30 seconds: expired, without waiting.
    let expired = invite::create(
        &s.invites,
        None,
        None,
        false,
        Duration::from_secs(30),
        SystemTime::now() - Duration::from_secs(60),
    )
    .unwrap();
    let run = env.run(&["join", &expired.code.to_string(), &s.url()]);
    run.code(1);
    assert!(run.stderr.contains("expired"), "{run:?}");

    let used = s.invite("carol", false, Duration::from_secs(600));
    env.run(&["join", &used.code.to_string(), &s.url()]).ok();
    let again = Env::new();
    let run = again.run(&["join", &used.code.to_string(), &s.url()]);
    run.code(1);
    assert!(run.stderr.contains("no invite"), "{run:?}");

    // Not a code at all: a usage error before any connection, the invite untouched.
    let kept = s.invite("dave", false, Duration::from_secs(600));
    let run = env.run(&["join", "7-clockwork-crossover", &s.url()]);
    run.code(2);
    assert!(run.stderr.contains("not an enrolment code"), "{run:?}");
    assert_eq!(s.pending(), 1);
    drop(kept);
}
