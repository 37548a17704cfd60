//! Record suites end to end (spec §4.3, §5.3): a default client and a default server agree on
//! AES-256-GCM in protocol version 2; `--suite cbc-hmac` on either end selects
//! AES-256-CBC + HMAC-SHA256, which a client alone offers as a version-1 hello; ends with no
//! suite in common fail with exit 3 and say so.

// Helpers outside #[test] fns unwrap too: a failed setup step should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, TestServer};
use ferry_protocol::crypto::RecordSuite;
use ferry_protocol::{ClientHandshakeConfig, Key, Message, RequestId};
use futures::{SinkExt, StreamExt};

const GCM: RecordSuite = RecordSuite::Aes256Gcm;
const CBC: RecordSuite = RecordSuite::Aes256CbcHmacSha256;

fn server(root: &std::path::Path, key: &Key, suites: Vec<RecordSuite>) -> TestServer {
    TestServer::start_with(root, key, "127.0.0.1:0".parse().unwrap(), move |config| {
        config.suites = suites;
    })
}

/// Handshakes with the real server as a client offering `suites`, checks that a ping comes back
/// under the agreed suite, and returns it with the version.
fn agreed(server: &TestServer, suites: Vec<RecordSuite>) -> (RecordSuite, u8) {
    let addr = server.addr;
    let key = server.key.clone();
    ferry_testkit::block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let config = ClientHandshakeConfig::new(key).with_suites(suites);
        let mut conn = ferry_protocol::tokio::connect(tcp, config).await.unwrap();
        let session = conn.codec().session();
        let agreed = (session.suite(), session.version());
        conn.send((RequestId(1), Message::Ping("suite".into())))
            .await
            .unwrap();
        let frame = conn.next().await.unwrap().unwrap();
        assert_eq!(frame.message().unwrap(), Message::Pong("suite".into()));
        assert_eq!(
            frame.header.version, agreed.1,
            "every frame carries the version"
        );
        agreed
    })
}

#[test]
fn a_default_pair_agrees_on_gcm_and_the_old_suite_on_either_end_on_cbc_hmac() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let default = server(dir.path(), &key, RecordSuite::DEFAULT_SUITES.to_vec());
    assert_eq!(
        agreed(&default, RecordSuite::DEFAULT_SUITES.to_vec()),
        (GCM, 2)
    );
    // What `ferry --suite cbc-hmac` offers: version 1's hello, so CBC + HMAC in version 1.
    assert_eq!(agreed(&default, vec![CBC]), (CBC, 1));
    // What `ferry-server --suite cbc-hmac` accepts: CBC + HMAC from a default offer.
    let old = server(dir.path(), &key, vec![CBC]);
    assert_eq!(agreed(&old, RecordSuite::DEFAULT_SUITES.to_vec()), (CBC, 2));
}

#[test]
fn the_suite_flag_reaches_the_handshake() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"suites").unwrap();
    let key = Key::generate();
    let gcm_only = server(dir.path(), &key, vec![GCM]);
    let url = gcm_only.url("");
    env.ferry(&key, dir.path(), &["ping", "-c", "1", &url]).ok();
    // Offering the old suite alone leaves nothing in common with a GCM-only server.
    let refused = env.ferry(
        &key,
        dir.path(),
        &["--suite", "cbc-hmac", "ping", "-c", "1", &url],
    );
    refused.code(3);
    assert!(
        refused.stderr.contains("no common"),
        "the server's reason is shown: {refused:?}"
    );
    let cbc_only = server(dir.path(), &key, vec![CBC]);
    let url = cbc_only.url("");
    env.ferry(
        &key,
        dir.path(),
        &["--suite", "cbc-hmac", "ping", "-c", "1", &url],
    )
    .ok();
    let bad = env.ferry(&key, dir.path(), &["--suite", "rot13", "ping", &url]);
    bad.code(2);
}
