//! spec/vectors/fleet.txt against the code: the file is regenerated here from the fleet module
//! and must equal the frozen one byte for byte (FERRY_WRITE_VECTORS=1 writes it instead, for a
//! deliberate format change). spec/check/verify_vectors.py checks the same file from the spec.

// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use ferry_p2p::fleet::channel::{ChannelId, ChannelKey};
use ferry_p2p::fleet::record::{Release, SignedRelease};
use ferry_p2p::fleet::wire::{MemberAddr, Message, Role, Status, UNKNOWN_RELEASE};
use ferry_p2p::manifest::ContentId;
use ferry_protocol::ErrorBody;

fn vector_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors/fleet.txt")
}

/// Hex in groups of 4 bytes, 8 groups a line, continuation lines indented.
fn hex(bytes: &[u8]) -> String {
    let groups: Vec<String> = bytes.chunks(4).map(hex::encode).collect();
    let lines: Vec<String> = groups.chunks(8).map(|l| l.join(" ")).collect();
    if lines.is_empty() {
        return String::new();
    }
    lines.join("\n  ")
}

fn counting_key() -> ChannelKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = i as u8;
    }
    ChannelKey::from_seed(seed)
}

fn record(version: u64, notes: &str, source: &str) -> SignedRelease {
    Release {
        channel: counting_key().id(),
        version,
        content_id: ContentId([0x11; 32]),
        time_ms: 1_767_225_600_000,
        notes: notes.into(),
        source: source.into(),
    }
    .sign(&counting_key())
    .unwrap()
}

fn generate() -> String {
    let mut out = String::new();
    out.push_str(
        "# Ferry golden vectors: fleet channels, release records and gossip datagrams (P2P.md §8)\n\
         # Format: spec/vectors/README.md. Generated from the reference implementation, then frozen.\n\
         # kind channel: Ed25519 `seed` -> `public` -> channel `id` (54 characters, §8.1);\n\
         #   with `invalid: 1`, `text` must be refused for `reason` (length, character, checksum).\n\
         # kind record: the fields, `signed` (the bytes the signature covers, without the context\n\
         #   string), `signature` = Ed25519(seed, \"ferry fleet release v1\" || signed), `record`\n\
         #   = signed || signature (§8.2), signed with the channel key whose seed is `seed`.\n\
         # kind datagram: a gossip datagram (§8.3): `message` name, `id` the transaction id, the\n\
         #   fields, `datagram` hex; `member` repeats as \"ADDRESS\" AGE_S pairs, in order.\n",
    );
    let channel = |out: &mut String, name: &str, seed: [u8; 32]| {
        let key = ChannelKey::from_seed(seed);
        writeln!(out, "\nvector: {name}\nkind: channel").unwrap();
        writeln!(out, "seed: {}", hex(&seed)).unwrap();
        writeln!(out, "public: {}", hex(&key.id().0)).unwrap();
        writeln!(out, "id: \"{}\"", key.id()).unwrap();
    };
    channel(&mut out, "channel_counting", *counting_key().seed());
    channel(&mut out, "channel_all_ones", [0xff; 32]);
    let id = counting_key().id().to_string();
    let mut typo = id.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    for (name, text, reason) in [
        ("channel_typo", typo.as_str(), "checksum"),
        ("channel_short", &id[..53], "length"),
        ("channel_digit_one", &format!("{}1", &id[..53]), "character"),
    ] {
        assert!(text.parse::<ChannelId>().is_err(), "{name}");
        writeln!(
            out,
            "\nvector: {name}\nkind: channel\ntext: \"{text}\"\ninvalid: 1\nreason: {reason}"
        )
        .unwrap();
    }
    for (name, r) in [
        ("record_first", record(1, "first release", "")),
        (
            "record_with_source",
            record(7, "fix the fan curve", "ferry://10.0.0.1:6789/pub"),
        ),
    ] {
        let release = r.release();
        let bytes = r.as_bytes();
        writeln!(out, "\nvector: {name}\nkind: record").unwrap();
        writeln!(out, "seed: {}", hex(counting_key().seed())).unwrap();
        writeln!(out, "channel: {}", hex(&release.channel.0)).unwrap();
        writeln!(out, "version: {}", release.version).unwrap();
        writeln!(out, "content_id: {}", hex(&release.content_id.0)).unwrap();
        writeln!(out, "time_ms: {}", release.time_ms).unwrap();
        writeln!(out, "notes: \"{}\"", release.notes).unwrap();
        writeln!(out, "source: \"{}\"", release.source).unwrap();
        writeln!(out, "signed: {}", hex(&bytes[..bytes.len() - 64])).unwrap();
        writeln!(out, "signature: {}", hex(&bytes[bytes.len() - 64..])).unwrap();
        writeln!(out, "record: {}", hex(bytes)).unwrap();
    }
    let v4: SocketAddr = "192.0.2.1:7070".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::7]:7070".parse().unwrap();
    let status = |role, members: Vec<MemberAddr>| Status {
        channel: counting_key().id(),
        role,
        latest: 7,
        running: 6,
        failed: 7,
        swarm_port: 7000,
        name: "rack-3".into(),
        members,
    };
    let datagrams = [
        (
            "status_request",
            0x0000_0001,
            Message::status_request(status(Role::Follower, vec![])),
        ),
        (
            "status_response",
            0x0000_0001,
            Message::StatusResponse(status(
                Role::Follower,
                vec![
                    MemberAddr { addr: v4, age_s: 5 },
                    MemberAddr {
                        addr: v6,
                        age_s: u32::MAX,
                    },
                ],
            )),
        ),
        (
            "record_push",
            0x0000_0002,
            Message::Record(record(1, "first release", "")),
        ),
        (
            "manifest_request",
            0x0000_0003,
            Message::manifest_request(ContentId([0x11; 32]), 1024),
        ),
        (
            "manifest_chunk",
            0x0000_0003,
            Message::ManifestChunk {
                content_id: ContentId([0x11; 32]),
                offset: 1024,
                total: 1040,
                data: Bytes::from(vec![0xab; 16]),
            },
        ),
        (
            "manifest_error",
            0x0000_0004,
            Message::ManifestError(ErrorBody::new(UNKNOWN_RELEASE, "unknown release")),
        ),
        (
            "announce",
            0x0000_0000,
            Message::announce(counting_key().id(), Role::Follower),
        ),
    ];
    for (name, tx, message) in datagrams {
        writeln!(out, "\nvector: {name}\nkind: datagram\nid: 0x{tx:08x}").unwrap();
        match &message {
            Message::StatusRequest { status: s, .. } | Message::StatusResponse(s) => {
                let kind = if matches!(message, Message::StatusRequest { .. }) {
                    "StatusRequest"
                } else {
                    "StatusResponse"
                };
                writeln!(out, "message: {kind}").unwrap();
                writeln!(out, "channel: {}", hex(&s.channel.0)).unwrap();
                writeln!(out, "role: {}", s.role as u8).unwrap();
                writeln!(out, "latest: {}", s.latest).unwrap();
                writeln!(out, "running: {}", s.running).unwrap();
                writeln!(out, "failed: {}", s.failed).unwrap();
                writeln!(out, "swarm_port: {}", s.swarm_port).unwrap();
                writeln!(out, "name: \"{}\"", s.name).unwrap();
                for m in &s.members {
                    writeln!(out, "member: \"{}\" {}", m.addr, m.age_s).unwrap();
                }
            }
            Message::Record(r) => {
                writeln!(out, "message: Record").unwrap();
                writeln!(out, "record: {}", hex(r.as_bytes())).unwrap();
            }
            Message::ManifestRequest {
                content_id, offset, ..
            } => {
                writeln!(out, "message: ManifestRequest").unwrap();
                writeln!(out, "content_id: {}", hex(&content_id.0)).unwrap();
                writeln!(out, "offset: {offset}").unwrap();
            }
            Message::ManifestChunk {
                content_id,
                offset,
                total,
                data,
            } => {
                writeln!(out, "message: ManifestChunk").unwrap();
                writeln!(out, "content_id: {}", hex(&content_id.0)).unwrap();
                writeln!(out, "offset: {offset}").unwrap();
                writeln!(out, "total: {total}").unwrap();
                writeln!(out, "data: {}", hex(data)).unwrap();
            }
            Message::ManifestError(e) => {
                writeln!(out, "message: ManifestError").unwrap();
                writeln!(out, "code: 0x{:04x}", e.code.0).unwrap();
                writeln!(out, "text: \"{}\"", e.message).unwrap();
            }
            Message::Announce { channel, role, .. } => {
                writeln!(out, "message: Announce").unwrap();
                writeln!(out, "channel: {}", hex(&channel.0)).unwrap();
                writeln!(out, "role: {}", *role as u8).unwrap();
            }
        }
        let datagram = message.to_datagram(tx);
        // Every vector decodes back to itself.
        assert_eq!(
            Message::from_datagram(&datagram).unwrap().unwrap(),
            (tx, message.clone())
        );
        writeln!(out, "datagram: {}", hex(&datagram)).unwrap();
    }
    out
}

#[test]
fn the_fleet_vectors_match_the_code() {
    let generated = generate();
    if std::env::var("FERRY_WRITE_VECTORS").is_ok_and(|v| v == "1") {
        std::fs::write(vector_file(), &generated).unwrap();
    }
    let frozen = std::fs::read_to_string(vector_file()).unwrap();
    assert!(
        frozen == generated,
        "spec/vectors/fleet.txt differs from what the code produces: a wire change needs a \
         new record format or service version, not a silent regeneration"
    );
}
