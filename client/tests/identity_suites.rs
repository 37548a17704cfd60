//! The record suites a client chooses reach the identity handshake too (spec §13.4): a client
//! that offers only AES-256-CBC + HMAC-SHA256 is refused by an identity server that accepts
//! only AES-256-GCM, and agrees with one that accepts it.

#![allow(clippy::unwrap_used)]

use ferry_client::{Client, ClientConfig};
use ferry_common::url::FerryUrl;
use ferry_protocol::crypto::RecordSuite;
use ferry_protocol::identity::Identity;
use ferry_protocol::Key;
use ferry_testkit::{tree, TestServer};

fn identity_server(root: &std::path::Path, suites: Vec<RecordSuite>) -> (TestServer, FerryUrl) {
    let identity = Identity::from_secret([0x42; 32]);
    let id = identity.id();
    let server = TestServer::start_with(root, &Key::generate(), "127.0.0.1:0".parse().unwrap(), {
        move |config| {
            config.identity = Some(identity);
            config.suites = suites;
        }
    });
    let url = format!("ferry://{id}@{}/", server.addr).parse().unwrap();
    (server, url)
}

#[test]
fn the_clients_suites_reach_the_identity_handshake() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), 10);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let old_only =
        || ClientConfig::new(Key::generate()).suites(vec![RecordSuite::Aes256CbcHmacSha256]);

    let (gcm_only, url) = identity_server(dir.path(), vec![RecordSuite::Aes256Gcm]);
    let refused = runtime.block_on(Client::connect_url(&url, old_only()));
    assert!(refused.is_err(), "a GCM-only server took a CBC-only offer");
    drop(gcm_only);

    let (both, url) = identity_server(dir.path(), RecordSuite::DEFAULT_SUITES.to_vec());
    let connected = runtime
        .block_on(Client::connect_url(&url, old_only()))
        .unwrap();
    assert_eq!(
        runtime
            .block_on(connected.client.stat("a.txt"))
            .unwrap()
            .size,
        6
    );
    drop(both);
}
