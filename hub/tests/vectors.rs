//! The hub's golden vectors, `spec/vectors/hub.txt` (spec/HUB.md §8): every body in the file is
//! what this implementation encodes from the vector's fields, decodes back to them, and every
//! `invalid` body is refused. `cargo test -p ferry-hub --test vectors -- --ignored regenerate`
//! writes the file (only ever for a new wire version: vectors are frozen).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use ferry_hub::content::{
    AnnounceRequest, AnnounceResponse, PeerEntry, PeersRequest, PeersResponse,
};
use ferry_hub::wire::{
    Event, HintSource, NameRequest, PresenceRequest, PresenceResponse, Punch, PunchRequest,
    PunchRole, RegisterRequest, RegisterResponse, RelayRequest, RelayResponse, ResolveResponse,
    UdpTokenResponse,
};
use ferry_protocol::identity::{Identity, NodeId};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/hub.txt");

fn id(seed: u8) -> NodeId {
    Identity::from_secret([seed; 32]).id()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("vector address")
}

fn addrs_text(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("\"{}\"", list.join(" "))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(4).enumerate() {
        if i > 0 {
            out.push(if i % 8 == 0 { '\n' } else { ' ' });
            if i % 8 == 0 {
                out.push_str("  ");
            }
        }
        for b in chunk {
            let _ = write!(out, "{b:02x}");
        }
    }
    out
}

/// (name, service, type, fields, body) of every valid vector, and (name, service, type, body,
/// reason) of every invalid one.
#[allow(clippy::type_complexity)]
fn vectors() -> (
    Vec<(&'static str, u8, u8, Vec<(&'static str, String)>, Bytes)>,
    Vec<(&'static str, u8, u8, Vec<u8>, &'static str)>,
) {
    let (alice, bob) = (id(1), id(2));
    let v4 = addr("192.0.2.10:6789");
    let v6 = addr("[2001:db8::5]:7000");
    let refl = addr("198.51.100.7:40123");
    let udp = addr("198.51.100.7:40200");
    let s = |t: &str| format!("\"{t}\"");
    let valid = vec![
        (
            "register_request",
            0x60,
            0x10,
            vec![
                ("flags", "0".into()),
                ("name", s("alice")),
                ("invite", s("")),
            ],
            RegisterRequest {
                flags: 0,
                name: "alice".into(),
                invite: String::new(),
                to: None,
            }
            .to_bytes(),
        ),
        (
            "register_request_invite",
            0x60,
            0x10,
            vec![
                ("flags", "0".into()),
                ("name", s("alice")),
                ("invite", s("k7tq2mxd9wfp3hzr8cne")),
            ],
            RegisterRequest {
                flags: 0,
                name: "alice".into(),
                invite: "k7tq2mxd9wfp3hzr8cne".into(),
                to: None,
            }
            .to_bytes(),
        ),
        (
            "register_release",
            0x60,
            0x10,
            vec![
                ("flags", "1".into()),
                ("name", s("alice")),
                ("invite", s("")),
            ],
            RegisterRequest {
                flags: 1,
                name: "alice".into(),
                invite: String::new(),
                to: None,
            }
            .to_bytes(),
        ),
        (
            "register_move",
            0x60,
            0x10,
            vec![
                ("flags", "2".into()),
                ("name", s("alice")),
                ("invite", s("")),
                ("to", s(&bob.to_string())),
            ],
            RegisterRequest {
                flags: 0,
                name: "alice".into(),
                invite: String::new(),
                to: Some(bob),
            }
            .to_bytes(),
        ),
        (
            "register_response",
            0x60,
            0x11,
            vec![("name", s("alice")), ("id", s(&alice.to_string()))],
            RegisterResponse {
                name: "alice".into(),
                id: alice,
            }
            .to_bytes(),
        ),
        (
            "resolve_request",
            0x61,
            0x10,
            vec![("name", s("alice"))],
            NameRequest {
                name: "alice".into(),
            }
            .to_bytes(),
        ),
        (
            "resolve_response",
            0x61,
            0x11,
            vec![
                ("id", s(&alice.to_string())),
                ("online", "1".into()),
                ("reported", addrs_text(&[v4, v6])),
                ("reflected", addrs_text(&[refl])),
            ],
            ResolveResponse {
                id: alice,
                online: true,
                hints: vec![
                    (HintSource::Reported, v4),
                    (HintSource::Reported, v6),
                    (HintSource::Reflected, refl),
                ],
            }
            .to_bytes(),
        ),
        (
            "resolve_response_offline",
            0x61,
            0x11,
            vec![
                ("id", s(&alice.to_string())),
                ("online", "0".into()),
                ("reported", s("")),
                ("reflected", s("")),
            ],
            ResolveResponse {
                id: alice,
                online: false,
                hints: vec![],
            }
            .to_bytes(),
        ),
        (
            "presence_request",
            0x62,
            0x10,
            vec![("name", s("alice")), ("addrs", addrs_text(&[v4, v6]))],
            PresenceRequest {
                name: "alice".into(),
                addrs: vec![v4, v6],
            }
            .to_bytes(),
        ),
        (
            "presence_response",
            0x62,
            0x11,
            vec![("reflected", addrs_text(&[refl]))],
            PresenceResponse { reflected: refl }.to_bytes(),
        ),
        (
            "event_relay",
            0x62,
            0x12,
            vec![
                ("event", "1".into()),
                ("token", "000102030405060708090a0b0c0d0e0f".into()),
                ("client", s(&bob.to_string())),
            ],
            Event::Relay {
                token: std::array::from_fn(|i| i as u8),
                client: bob,
            }
            .to_bytes(),
        ),
        (
            "event_punch",
            0x62,
            0x12,
            vec![
                ("event", "2".into()),
                ("peer", s(&bob.to_string())),
                ("delay_ms", "60".into()),
                ("role", "2".into()),
                ("addrs", addrs_text(&[refl])),
                ("udp", addrs_text(&[udp])),
            ],
            Event::Punch(Punch {
                peer: bob,
                delay_ms: 60,
                role: PunchRole::Listen,
                addrs: vec![refl],
                udp: vec![udp],
            })
            .to_bytes(),
        ),
        (
            "relay_connect",
            0x63,
            0x10,
            vec![("role", "1".into()), ("name", s("alice"))],
            RelayRequest::Connect {
                name: "alice".into(),
            }
            .to_bytes(),
        ),
        (
            "relay_accept",
            0x63,
            0x10,
            vec![
                ("role", "2".into()),
                ("token", "000102030405060708090a0b0c0d0e0f".into()),
            ],
            RelayRequest::Accept {
                token: std::array::from_fn(|i| i as u8),
            }
            .to_bytes(),
        ),
        (
            "relay_response",
            0x63,
            0x11,
            vec![("peer", s(&alice.to_string()))],
            RelayResponse { peer: alice }.to_bytes(),
        ),
        (
            "punch_request",
            0x64,
            0x10,
            vec![
                ("name", s("alice")),
                ("rtt_ms", "100".into()),
                ("addrs", addrs_text(&[v4])),
            ],
            PunchRequest {
                name: "alice".into(),
                rtt_ms: 100,
                addrs: vec![v4],
            }
            .to_bytes(),
        ),
        (
            "punch_response",
            0x64,
            0x11,
            vec![
                ("peer", s(&alice.to_string())),
                ("delay_ms", "20".into()),
                ("role", "1".into()),
                ("addrs", addrs_text(&[v4, refl])),
                ("udp", addrs_text(&[])),
            ],
            Punch {
                peer: alice,
                delay_ms: 20,
                role: PunchRole::Dial,
                addrs: vec![v4, refl],
                udp: vec![],
            }
            .to_bytes(),
        ),
        (
            "udp_token_response",
            0x65,
            0x11,
            vec![("token", "000102030405060708090a0b0c0d0e0f".into())],
            UdpTokenResponse {
                token: std::array::from_fn(|i| i as u8),
            }
            .to_bytes(),
        ),
        (
            "announce_request",
            0x68,
            0x10,
            vec![
                ("flags", "0".into()),
                (
                    "content",
                    s(&format!("{} {}", "11".repeat(32), "22".repeat(32))),
                ),
            ],
            AnnounceRequest {
                withdraw: false,
                content: vec![[0x11; 32], [0x22; 32]],
            }
            .to_bytes(),
        ),
        (
            "announce_withdraw",
            0x68,
            0x10,
            vec![("flags", "1".into()), ("content", s(&"22".repeat(32)))],
            AnnounceRequest {
                withdraw: true,
                content: vec![[0x22; 32]],
            }
            .to_bytes(),
        ),
        (
            "announce_response",
            0x68,
            0x11,
            vec![("held", "2".into())],
            AnnounceResponse { held: 2 }.to_bytes(),
        ),
        (
            "peers_request",
            0x69,
            0x10,
            vec![("content", "11".repeat(32))],
            PeersRequest {
                content: [0x11; 32],
            }
            .to_bytes(),
        ),
        (
            "peers_response",
            0x69,
            0x11,
            vec![
                ("id", s(&alice.to_string())),
                ("via", s(&alice.to_string())),
                ("addrs", addrs_text(&[v4, refl])),
            ],
            PeersResponse {
                peers: vec![PeerEntry {
                    id: alice,
                    via: alice.to_string(),
                    addrs: vec![v4, refl],
                }],
            }
            .to_bytes(),
        ),
    ];
    let invalid = vec![
        (
            "register_undefined_flag",
            0x60,
            0x10,
            vec![0x04, 0, 1, b'a', 0, 0],
            "undefined flag",
        ),
        (
            "register_release_and_move",
            0x60,
            0x10,
            vec![0x03, 0, 1, b'a', 0, 0],
            "RELEASE with MOVE",
        ),
        (
            "register_trailing_byte",
            0x60,
            0x10,
            vec![0x00, 0, 1, b'a', 0, 0, 0],
            "trailing byte",
        ),
        (
            "register_move_without_id",
            0x60,
            0x10,
            vec![0x02, 0, 1, b'a', 0, 0],
            "truncated id",
        ),
        (
            "address_family_5",
            0x62,
            0x11,
            vec![5, 192, 0, 2, 1, 0x1a, 0x85],
            "address family",
        ),
        (
            "presence_17_addresses",
            0x62,
            0x10,
            vec![0, 1, b'a', 17],
            "more than 16 addresses",
        ),
        (
            "resolve_online_2",
            0x61,
            0x11,
            [vec![0u8; 20], vec![2, 0]].concat(),
            "online is 0 or 1",
        ),
        (
            "resolve_hint_source_3",
            0x61,
            0x11,
            [vec![0u8; 20], vec![1, 1, 3, 4, 192, 0, 2, 1, 0, 1]].concat(),
            "hint source",
        ),
        ("event_kind_3", 0x62, 0x12, vec![3], "event kind"),
        (
            "punch_role_3",
            0x64,
            0x11,
            [vec![0u8; 24], vec![3, 0, 0]].concat(),
            "punch role",
        ),
        (
            "relay_role_0",
            0x63,
            0x10,
            vec![0, 0, 1, b'a'],
            "relay role",
        ),
        (
            "relay_accept_short_token",
            0x63,
            0x10,
            vec![2, 1, 2, 3],
            "truncated token",
        ),
        (
            "announce_undefined_flag",
            0x68,
            0x10,
            vec![0x02, 0],
            "announce flag",
        ),
        (
            "announce_33_ids",
            0x68,
            0x10,
            vec![0, 33],
            "more than 32 content ids",
        ),
        (
            "announce_truncated_id",
            0x68,
            0x10,
            [vec![0, 1], vec![0x11; 31]].concat(),
            "truncated content id",
        ),
        ("peers_51", 0x69, 0x11, vec![51], "more than 50 peers"),
    ];
    (valid, invalid)
}

fn render() -> String {
    let (valid, invalid) = vectors();
    let mut out = String::from(
        "# Ferry golden vectors: the hub's message bodies (spec/HUB.md §3, §8)\n\
         # Format: spec/vectors/README.md. Generated from the reference implementation, then frozen.\n\
         # Every vector: `service` and `type` of the frame that carries the body, the body's fields\n\
         # and `body` (hex). Ids are node ids in text (PROTOCOL.md §13.1), 20 bytes on the wire;\n\
         # address lists are quoted, space-separated IP:PORT ([IPv6]:PORT), each on the wire as\n\
         # family (4 | 6), the address, the port. With `invalid: 1` the body must be refused\n\
         # (MALFORMED_MESSAGE) for `reason`.\n",
    );
    for (name, service, kind, fields, body) in valid {
        let _ = writeln!(
            out,
            "\nvector: {name}\nservice: 0x{service:02x}\ntype: 0x{kind:02x}"
        );
        for (k, v) in fields {
            let _ = writeln!(out, "{k}: {v}");
        }
        let _ = writeln!(out, "body: {}", hex(&body));
    }
    for (name, service, kind, body, reason) in invalid {
        let _ = writeln!(
            out,
            "\nvector: {name}\nservice: 0x{service:02x}\ntype: 0x{kind:02x}\ninvalid: 1\nreason: \"{reason}\"\nbody: {}",
            hex(&body)
        );
    }
    out
}

/// `name -> body hex` from the file.
fn bodies(text: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut name = String::new();
    let mut key = String::new();
    let mut value = String::new();
    let flush = |name: &str, key: &str, value: &str, out: &mut BTreeMap<String, Vec<u8>>| {
        if key == "body" {
            let digits: String = value.split_whitespace().collect();
            let bytes = (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
                .collect();
            out.insert(name.to_string(), bytes);
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        flush(&name, &key, &value, &mut out);
        let (k, v) = line.split_once(':').expect("key: value");
        key = k.trim().to_string();
        value = v.trim().to_string();
        if key == "vector" {
            name = value.clone();
        }
    }
    flush(&name, &key, &value, &mut out);
    out
}

fn decodes(service: u8, kind: u8, body: Bytes) -> bool {
    match (service, kind) {
        (0x60, 0x10) => RegisterRequest::decode(body).is_ok(),
        (0x60, 0x11) => RegisterResponse::decode(body).is_ok(),
        (0x61, 0x10) => NameRequest::decode(body).is_ok(),
        (0x61, 0x11) => ResolveResponse::decode(body).is_ok(),
        (0x62, 0x10) => PresenceRequest::decode(body).is_ok(),
        (0x62, 0x11) => PresenceResponse::decode(body).is_ok(),
        (0x62, 0x12) => Event::decode(body).is_ok(),
        (0x63, 0x10) => RelayRequest::decode(body).is_ok(),
        (0x63, 0x11) => RelayResponse::decode(body).is_ok(),
        (0x64, 0x10) => PunchRequest::decode(body).is_ok(),
        (0x64, 0x11) => Punch::decode(body).is_ok(),
        (0x65, 0x11) => UdpTokenResponse::decode(body).is_ok(),
        (0x68, 0x10) => AnnounceRequest::decode(body).is_ok(),
        (0x68, 0x11) => AnnounceResponse::decode(body).is_ok(),
        (0x69, 0x10) => PeersRequest::decode(body).is_ok(),
        (0x69, 0x11) => PeersResponse::decode(body).is_ok(),
        _ => false,
    }
}

#[test]
fn the_spec_vectors_are_what_this_implementation_encodes_and_refuses() {
    let text = std::fs::read_to_string(PATH).expect("spec/vectors/hub.txt");
    assert_eq!(
        text,
        render(),
        "spec/vectors/hub.txt differs from the encoder"
    );
    let file = bodies(&text);
    let (valid, invalid) = vectors();
    for (name, service, kind, _, body) in valid {
        assert_eq!(file[name], body.to_vec(), "{name}");
        assert!(decodes(service, kind, body), "{name} decodes");
    }
    for (name, service, kind, body, reason) in invalid {
        assert!(
            !decodes(service, kind, Bytes::from(body)),
            "{name}: {reason}"
        );
    }
}

#[test]
#[ignore = "rewrites spec/vectors/hub.txt; vectors are frozen, run only for a new wire version"]
fn regenerate() {
    std::fs::write(PATH, render()).expect("write spec/vectors/hub.txt");
}
