//! The identity vectors (spec §13.10): node ids (`identities.txt`) and complete identity
//! handshakes with fixed keys (`identity-handshake.txt`). Each handshake is replayed twice:
//! through the reference state machines (the frames must match byte for byte) and through
//! `snow` directly, which recovers the payloads, the handshake hash and the split keys, from
//! which the record keys must follow (§13.5). The files are frozen: regenerate only on purpose.

// Helpers outside #[test] fns unwrap too: a vector that does not load should fail loudly.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod common;

use bytes::BytesMut;
use common::{load, Vector, Writer};
use ferry_protocol::crypto::{DirectionKeys, RecordOpener, RecordSuite};
use ferry_protocol::handshake::handshake_decoder;
use ferry_protocol::identity::{Identity, NodeId, NodeIdError};
use ferry_protocol::message::SuiteId;
use ferry_protocol::noise::{
    derive_record_keys, ClientIdentityConfig, ClientIdentityHandshake, ServerIdentityConfig,
    ServerIdentityHandshake, NOISE_PARAMS, PROLOGUE,
};
use ferry_protocol::{Frame, Message, Mode, RequestId, Session};

/// Regenerates both files. Run only on purpose and review the diff.
#[test]
#[ignore = "writes spec/vectors; run explicitly to regenerate"]
fn regenerate_identity_vectors() {
    let dir = common::vectors_dir();
    std::fs::write(dir.join("identities.txt"), identities_file()).unwrap();
    std::fs::write(dir.join("identity-handshake.txt"), handshake_file()).unwrap();
}

#[test]
fn identity_vector_files_are_current() {
    // A changed generator must not silently disagree with the frozen files.
    let dir = common::vectors_dir();
    let on_disk = std::fs::read_to_string(dir.join("identities.txt")).unwrap();
    assert_eq!(on_disk, identities_file(), "identities.txt");
    let on_disk = std::fs::read_to_string(dir.join("identity-handshake.txt")).unwrap();
    assert_eq!(on_disk, handshake_file(), "identity-handshake.txt");
}

fn counting(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn identities_file() -> String {
    let mut w = Writer::default();
    w.comment(
        "Ferry protocol golden vectors: node identities and ids (PROTOCOL.md §13.1)\n\
         Format: spec/vectors/README.md. Generated from the reference implementation, then frozen.\n\
         A valid vector: `secret` (X25519) -> `public` = X25519(secret, 9) ->\n\
         `id_hash` = SHA-256(\"ferry node id v1\" || public)[0..20] -> `id` (34 characters).\n\
         An invalid vector: `text` must be refused, for `reason` (length, character or checksum).",
    );
    let secrets = [
        ("counting", counting(0x00)),
        ("all_ones", [0xff; 32]),
        (
            "rfc7748_alice",
            hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
        ),
    ];
    for (name, secret) in secrets {
        let identity = Identity::from_secret(secret);
        w.vector(name)
            .hex("secret", &secret)
            .hex("public", identity.public_key())
            .hex("id_hash", identity.id().as_bytes())
            .string("id", &identity.id().to_string());
    }
    let good = Identity::from_secret(counting(0x00)).id().to_string();
    let mut typo = good.clone().into_bytes();
    // A substitution the 10-bit check catches (most do; this one is fixed by the vector).
    typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(typo.parse::<NodeId>(), Err(NodeIdError::Checksum));
    let invalid = [
        ("too_short", good[..33].to_string(), "length"),
        ("too_long", format!("{good}a"), "length"),
        ("digit_one", format!("1{}", &good[1..]), "character"),
        ("one_character_changed", typo, "checksum"),
    ];
    for (name, text, reason) in invalid {
        w.vector(name)
            .string("text", &text)
            .int("invalid", 1)
            .field("reason", reason);
    }
    w.finish()
}

fn hex32(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

/// One handshake's fixed inputs.
struct Case {
    name: &'static str,
    note: &'static str,
    mode: Mode,
    suites: Vec<u8>,
    server_suites: Vec<u8>,
    allow_plaintext: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "encrypted",
            note: "Both identities proven; version 2, the client's first suite (AES-256-GCM).",
            mode: Mode::ENCRYPTED,
            suites: vec![0x02, 0x01],
            server_suites: vec![0x02, 0x01],
            allow_plaintext: false,
        },
        Case {
            name: "cbc_hmac_server",
            note: "The server accepts only AES-256-CBC + HMAC-SHA256: it skips the client's first choice.",
            mode: Mode::ENCRYPTED,
            suites: vec![0x02, 0x01],
            server_suites: vec![0x01],
            allow_plaintext: false,
        },
        Case {
            name: "plaintext",
            note: "Plaintext mode, allowed by the server: the Choice names suite 0x00.",
            mode: Mode::PLAINTEXT,
            suites: vec![0x02, 0x01],
            server_suites: vec![0x02, 0x01],
            allow_plaintext: true,
        },
    ]
}

const CLIENT_STATIC: u8 = 0x10;
const SERVER_STATIC: u8 = 0x30;
const CLIENT_EPHEMERAL: u8 = 0x50;
const SERVER_EPHEMERAL: u8 = 0x70;

/// Everything one handshake produces.
struct Transcript {
    frames: [Vec<u8>; 3],
    payloads: [Vec<u8>; 3],
    hash: [u8; 32],
    k1: [u8; 32],
    k2: [u8; 32],
    sessions: (Session, Session),
}

fn frame_body(frame: &[u8]) -> &[u8] {
    &frame[12..]
}

/// Runs the reference state machines with the fixed secrets, and snow beside them.
/// `secrets`: client static, server static, client ephemeral, server ephemeral.
fn transcript(
    secrets: [[u8; 32]; 4],
    mode: Mode,
    suites: &[u8],
    server_suites: &[u8],
    allow_plaintext: bool,
) -> Transcript {
    let [client_static, server_static, client_e, server_e] = secrets;
    let record_suites = |ids: &[u8]| -> Vec<RecordSuite> {
        ids.iter()
            .map(|&id| RecordSuite::from_id(SuiteId(id)).unwrap())
            .collect()
    };
    let mut client_config = ClientIdentityConfig::new(Identity::from_secret(client_static), None);
    client_config.mode = mode;
    client_config.suites = record_suites(suites);
    let mut server_config = ServerIdentityConfig::new(Identity::from_secret(server_static));
    server_config.allow_plaintext = allow_plaintext;
    server_config.suites = record_suites(server_suites);

    let mut c2s = BytesMut::new();
    let mut s2c = BytesMut::new();
    let mut client =
        ClientIdentityHandshake::start_with(client_config, Some(client_e), &mut c2s).unwrap();
    let mut server = ServerIdentityHandshake::with_ephemeral(server_config, Some(server_e));
    let noise_1 = c2s.to_vec();
    let frame = handshake_decoder().decode(&mut c2s).unwrap().unwrap();
    assert!(server.handle_frame(frame, &mut s2c).unwrap().is_none());
    let noise_2 = s2c.to_vec();
    let frame = handshake_decoder().decode(&mut s2c).unwrap().unwrap();
    let client_session = client.handle_frame(frame, &mut c2s).unwrap().unwrap();
    let noise_3 = c2s.to_vec();
    let frame = handshake_decoder().decode(&mut c2s).unwrap().unwrap();
    let server_session = server.handle_frame(frame, &mut s2c).unwrap().unwrap();

    // The same exchange through snow alone: payloads, h and the split.
    fn build<'a>(secret: &'a [u8; 32], e: &'a [u8; 32]) -> snow::Builder<'a> {
        snow::Builder::new(NOISE_PARAMS.parse().unwrap())
            .local_private_key(secret)
            .prologue(PROLOGUE)
            .fixed_ephemeral_key_for_testing_only(e)
    }
    let mut initiator = build(&client_static, &client_e).build_initiator().unwrap();
    let mut responder = build(&server_static, &server_e).build_responder().unwrap();
    let mut payloads: [Vec<u8>; 3] = Default::default();
    let frames = [&noise_1, &noise_2, &noise_3];
    for (i, frame) in frames.into_iter().enumerate() {
        // Message 2 goes from the responder to the initiator; 1 and 3 the other way.
        let (writer, reader) = if i == 1 {
            (&mut responder, &mut initiator)
        } else {
            (&mut initiator, &mut responder)
        };
        let mut buf = vec![0u8; 65_535];
        let n = reader.read_message(frame_body(frame), &mut buf).unwrap();
        payloads[i] = buf[..n].to_vec();
        let mut out = vec![0u8; 65_535];
        let m = writer.write_message(&payloads[i], &mut out).unwrap();
        assert_eq!(
            &out[..m],
            frame_body(frame),
            "message {} as snow writes it",
            i + 1
        );
    }
    assert_eq!(
        initiator.get_handshake_hash(),
        responder.get_handshake_hash()
    );
    let hash: [u8; 32] = responder.get_handshake_hash().try_into().unwrap();
    let (k1, k2) = responder.dangerously_get_raw_split();
    assert_eq!(initiator.dangerously_get_raw_split(), (k1, k2));
    Transcript {
        frames: [noise_1, noise_2, noise_3],
        payloads,
        hash,
        k1,
        k2,
        sessions: (client_session, server_session),
    }
}

fn run_case(case: &Case) -> Transcript {
    transcript(
        [
            counting(CLIENT_STATIC),
            counting(SERVER_STATIC),
            counting(CLIENT_EPHEMERAL),
            counting(SERVER_EPHEMERAL),
        ],
        case.mode,
        &case.suites,
        &case.server_suites,
        case.allow_plaintext,
    )
}

fn handshake_file() -> String {
    let mut w = Writer::default();
    w.comment(
        "Ferry protocol golden vectors: identity handshakes (PROTOCOL.md §13)\n\
         Format: spec/vectors/README.md. Generated from the reference implementation, then frozen.\n\
         Noise_XX_25519_ChaChaPoly_SHA256 with the prologue below, fixed static and ephemeral\n\
         X25519 secrets. A client with (client_static_secret, client_ephemeral_secret, mode,\n\
         suites) sends exactly noise_1; a server with (server_static_secret,\n\
         server_ephemeral_secret, server_suites, allow_plaintext) answers exactly noise_2; the\n\
         client then sends\n\
         exactly noise_3. payload_N is message N's Noise payload; handshake_hash is h after\n\
         message 3; k1, k2 are Split()'s two cipher keys; the six keys follow by §13.5.",
    );
    w.string("noise_params", NOISE_PARAMS);
    w.hex("prologue", PROLOGUE);
    let client = Identity::from_secret(counting(CLIENT_STATIC));
    let server = Identity::from_secret(counting(SERVER_STATIC));
    w.hex("client_static_secret", client.secret_bytes())
        .hex("client_static_public", client.public_key())
        .string("client_id", &client.id().to_string())
        .hex("server_static_secret", server.secret_bytes())
        .hex("server_static_public", server.public_key())
        .string("server_id", &server.id().to_string());
    let public = |secret: [u8; 32]| *Identity::from_secret(secret).public_key();
    w.hex("client_ephemeral_secret", &counting(CLIENT_EPHEMERAL))
        .hex(
            "client_ephemeral_public",
            &public(counting(CLIENT_EPHEMERAL)),
        )
        .hex("server_ephemeral_secret", &counting(SERVER_EPHEMERAL))
        .hex(
            "server_ephemeral_public",
            &public(counting(SERVER_EPHEMERAL)),
        );
    for case in cases() {
        let t = run_case(&case);
        let (c2s, s2c) = derive_record_keys(&t.hash, &t.k1, &t.k2);
        w.vector(case.name);
        w.comment(case.note);
        w.int("mode", case.mode.0)
            .hex("suites", &case.suites)
            .hex("server_suites", &case.server_suites)
            .int("allow_plaintext", u8::from(case.allow_plaintext))
            .hex("payload_1", &t.payloads[0])
            .frame("noise_1", &t.frames[0])
            .hex("payload_2", &t.payloads[1])
            .frame("noise_2", &t.frames[1])
            .hex("payload_3", &t.payloads[2])
            .frame("noise_3", &t.frames[2])
            .hex("handshake_hash", &t.hash)
            .hex("k1", &t.k1)
            .hex("k2", &t.k2)
            .hex("c2s_enc", &c2s.enc)
            .hex("c2s_mac", &c2s.mac)
            .hex("c2s_iv", &c2s.iv)
            .hex("s2c_enc", &s2c.enc)
            .hex("s2c_mac", &s2c.mac)
            .hex("s2c_iv", &s2c.iv);
    }
    w.finish()
}

#[test]
fn identities() {
    for v in load("identities.txt") {
        if v.has("invalid") {
            let text = v.string("text");
            let err = text.parse::<NodeId>().unwrap_err();
            let reason = match err {
                NodeIdError::Length(_) => "length",
                NodeIdError::Character(_) => "character",
                NodeIdError::Checksum => "checksum",
            };
            assert_eq!(reason, v.raw("reason"), "vector {}", v.name);
            continue;
        }
        let identity = Identity::from_secret(v.array("secret"));
        assert_eq!(
            identity.public_key(),
            &v.array::<32>("public"),
            "{}",
            v.name
        );
        assert_eq!(
            identity.id().as_bytes(),
            &v.array::<20>("id_hash"),
            "{}",
            v.name
        );
        assert_eq!(identity.id().to_string(), v.string("id"), "{}", v.name);
        assert_eq!(v.string("id").parse::<NodeId>().unwrap(), identity.id());
    }
}

fn keys(v: &Vector, dir: &str) -> DirectionKeys {
    DirectionKeys {
        enc: v.array(&format!("{dir}_enc")),
        mac: v.array(&format!("{dir}_mac")),
        iv: v.array(&format!("{dir}_iv")),
    }
}

#[test]
fn identity_handshakes() {
    let vectors = load("identity-handshake.txt");
    assert!(!vectors.is_empty());
    for v in vectors {
        assert_eq!(v.string("noise_params"), NOISE_PARAMS);
        assert_eq!(v.hex("prologue"), PROLOGUE);
        let client = Identity::from_secret(v.array("client_static_secret"));
        assert_eq!(client.id().to_string(), v.string("client_id"));
        let server = Identity::from_secret(v.array("server_static_secret"));
        assert_eq!(server.id().to_string(), v.string("server_id"));
        let mut t = transcript(
            [
                v.array("client_static_secret"),
                v.array("server_static_secret"),
                v.array("client_ephemeral_secret"),
                v.array("server_ephemeral_secret"),
            ],
            Mode(v.u8("mode")),
            &v.hex("suites"),
            &v.hex("server_suites"),
            v.bool("allow_plaintext"),
        );
        for (i, name) in ["noise_1", "noise_2", "noise_3"].into_iter().enumerate() {
            assert_eq!(t.frames[i], v.hex(name), "vector {}: {name}", v.name);
            let payload = format!("payload_{}", i + 1);
            assert_eq!(
                t.payloads[i],
                v.hex(&payload),
                "vector {}: {payload}",
                v.name
            );
        }
        assert_eq!(t.hash, v.array("handshake_hash"), "vector {}", v.name);
        assert_eq!(
            (t.k1, t.k2),
            (v.array("k1"), v.array("k2")),
            "vector {}",
            v.name
        );
        let (c2s, s2c) = derive_record_keys(&t.hash, &t.k1, &t.k2);
        assert_eq!(c2s, keys(&v, "c2s"), "vector {}", v.name);
        assert_eq!(s2c, keys(&v, "s2c"), "vector {}", v.name);
        // The sessions the state machines built use exactly these keys.
        if Mode(v.u8("mode")) == Mode::ENCRYPTED {
            let mut wire = BytesMut::new();
            t.sessions
                .0
                .write_message(RequestId(1), &Message::Ping("hi".into()), &mut wire)
                .unwrap();
            let frame = handshake_free_frame(&mut wire);
            let suite = RecordSuite::from_id(SuiteId(v.hex("payload_2")[2])).unwrap();
            let mut opener = RecordOpener::new(suite, &c2s);
            let body = opener.open(&frame.header, BytesMut::from(&frame.body[..]));
            assert_eq!(&body.unwrap()[..], b"hi", "vector {}", v.name);
        }
    }
}

/// Splits one frame off `wire` without opening it.
fn handshake_free_frame(wire: &mut BytesMut) -> Frame {
    let mut decoder = ferry_protocol::FrameDecoder::new(ferry_protocol::DEFAULT_MAX_BODY);
    // Session frames carry the negotiated version (here 2), not the handshake's.
    decoder.set_version(wire[2]);
    decoder.decode(wire).unwrap().unwrap()
}
