//! Checks the implementation against every golden vector in `spec/vectors/` (one test per
//! file). The files are frozen: if one of these tests fails, the implementation changed the wire
//! format. See `spec/vectors/README.md`.

mod common;

use bytes::{Bytes, BytesMut};
use common::{load, Vector};
use ferry_protocol::crypto::{
    derive_keys_for, hmac_sha256, labels, DirectionKeys, RecordOpener, RecordSealer, RecordSuite,
};
use ferry_protocol::frame::FrameDecoder;
use ferry_protocol::handshake::{
    handshake_decoder, write_error, ClientHandshake, Randomness, ServerHandshake,
};
use ferry_protocol::message::{
    ClientHello, DigestRequest, DigestResponse, Entry, EntryKind, FetchEnd, FetchRequest,
    FetchResponse, Finished, KeyHint, ListEnd, ListPage, ListRequest, PutEnd, PutRequest,
    PutResponse, ServerHello, StatRequest, SuiteId, SuiteOffer,
};
use ferry_protocol::{
    Category, ClientHandshakeConfig, CryptoError, ErrorBody, ErrorCode, Frame, FrameType, Header,
    Key, Message, Mode, RequestId, ServerHandshakeConfig, Service,
};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

/// Regenerates every vector file. Run only on purpose and review the diff: a changed vector
/// means a protocol version bump.
#[test]
#[ignore = "writes spec/vectors; run explicitly to regenerate"]
fn regenerate() {
    common::generate::all(&common::vectors_dir());
}

fn expect_code(v: &Vector) -> ErrorCode {
    let code = ErrorCode(v.u16("expect_code"));
    assert_eq!(
        code.name(),
        Some(v.raw("expect_name")),
        "vector {}: code and name disagree",
        v.name
    );
    code
}

/// Decodes exactly one whole frame from `bytes` with `decoder`.
fn decode_exactly_one(decoder: &mut FrameDecoder, bytes: &[u8], name: &str) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = decoder
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("vector {name}: {e}"))
        .unwrap_or_else(|| panic!("vector {name}: incomplete frame"));
    assert!(buf.is_empty(), "vector {name}: bytes left after the frame");
    frame
}

#[test]
fn headers() {
    for v in load("headers.txt") {
        let bytes = v.hex("bytes");
        let expected = Header {
            kind: FrameType(v.u8("type")),
            version: v.u8("version"),
            service: Service(v.u8("service")),
            id: RequestId(v.u32("id")),
            length: v.u32("length"),
        };
        assert_eq!(Header::decode(&bytes), Ok(expected), "vector {}", v.name);
        assert_eq!(
            expected.to_bytes().to_vec(),
            bytes,
            "vector {}: encoding",
            v.name
        );
    }
}

fn entry_from(v: &Vector, prefix: &str) -> Entry {
    Entry {
        name: v.string(&format!("{prefix}name")),
        kind: EntryKind(v.u8(&format!("{prefix}kind"))),
        size: v.u64(&format!("{prefix}size")),
        mtime_secs: v.i64(&format!("{prefix}mtime_secs")),
        mtime_nanos: v.u32(&format!("{prefix}mtime_nanos")),
        mode: v.u32(&format!("{prefix}mode")),
        link: v
            .has(&format!("{prefix}link"))
            .then(|| v.string(&format!("{prefix}link"))),
    }
}

/// Builds the message a `messages.txt` vector describes from its fields.
fn message_from(v: &Vector) -> Message {
    match v.raw("message") {
        "ClientHello" => Message::ClientHello(ClientHello {
            min_version: v.u8("min_version"),
            max_version: v.u8("max_version"),
            mode: Mode(v.u8("mode")),
            nonce: v.array("nonce"),
            key_share: v.array("key_share"),
            suites: if v.has("suites") {
                SuiteOffer::new(v.hex("suites").into_iter().map(SuiteId)).expect("valid offer")
            } else {
                SuiteOffer::default()
            },
            key_hint: v.has("key_hint").then(|| KeyHint(v.array("key_hint"))),
            rest: if v.has("rest") {
                v.hex("rest").into()
            } else {
                Bytes::new()
            },
        }),
        "ServerHello" => Message::ServerHello(ServerHello {
            version: v.u8("version"),
            mode: Mode(v.u8("mode")),
            nonce: v.array("nonce"),
            key_share: v.array("key_share"),
            suite: v.has("suite").then(|| SuiteId(v.u8("suite"))),
        }),
        "ServerFinished" => Message::ServerFinished(Finished {
            mac: v.array("mac"),
        }),
        "ClientFinished" => Message::ClientFinished(Finished {
            mac: v.array("mac"),
        }),
        "ListRequest" => Message::ListRequest(ListRequest {
            path: v.string("path"),
            recursive: v.bool("recursive"),
            max_depth: v.u16("max_depth"),
            links: v.has("links") && v.bool("links"),
        }),
        "StatRequest" => Message::StatRequest(StatRequest {
            path: v.string("path"),
        }),
        "FetchRequest" => Message::FetchRequest(FetchRequest {
            path: v.string("path"),
            offset: v.u64("offset"),
            length: v.u64("length"),
        }),
        "DigestRequest" => Message::DigestRequest(DigestRequest {
            path: v.string("path"),
        }),
        "DigestResponse" => Message::DigestResponse(DigestResponse {
            size: v.u64("size"),
            mtime_secs: v.i64("mtime_secs"),
            mtime_nanos: v.u32("mtime_nanos"),
            digest: v.array("digest"),
        }),
        "ListPage" => Message::ListPage(ListPage {
            entries: (0..v.u64("entries"))
                .map(|i| entry_from(v, &format!("entry{i}.")))
                .collect(),
        }),
        "StatResponse" => Message::StatResponse(entry_from(v, "entry.")),
        "FetchResponse" => Message::FetchResponse(FetchResponse {
            size: v.u64("size"),
            mtime_secs: v.i64("mtime_secs"),
            mtime_nanos: v.u32("mtime_nanos"),
            offset: v.u64("offset"),
            length: v.u64("length"),
        }),
        "Data" => Message::Data(v.hex("payload").into()),
        "ListEnd" => Message::ListEnd(ListEnd {
            entries: v.u64("entries"),
        }),
        "FetchEnd" => Message::FetchEnd(FetchEnd {
            bytes: v.u64("bytes"),
            digest: v.array("digest"),
        }),
        "Error" => Message::Error {
            service: Service(v.u8("error_service")),
            body: ErrorBody {
                category: Category(v.u8("category")),
                code: ErrorCode(v.u16("code")),
                message: v.string("error_message"),
            },
        },
        "Cancel" => Message::Cancel {
            service: Service(v.u8("cancel_service")),
        },
        "PutRequest" => Message::PutRequest(PutRequest {
            path: v.string("path"),
            size: v.u64("size"),
            mode: v.u32("mode"),
            flags: v.u8("flags"),
            digest: v.array("digest"),
        }),
        "PutResponse" => Message::PutResponse(PutResponse {
            offset: v.u64("offset"),
            limit: v.u64("limit"),
            prefix: v.array("prefix"),
        }),
        "PutData" => Message::PutData(v.hex("payload").into()),
        "PutEnd" => Message::PutEnd(PutEnd {
            bytes: v.u64("bytes"),
            digest: v.array("digest"),
        }),
        "Ping" => Message::Ping(v.hex("payload").into()),
        "Pong" => Message::Pong(v.hex("payload").into()),
        other => panic!("vector {}: unknown message kind {other}", v.name),
    }
}

#[test]
fn messages() {
    let vectors = load("messages.txt");
    let mut kinds = std::collections::BTreeSet::new();
    for v in &vectors {
        let message = message_from(v);
        kinds.insert(v.raw("message").to_string());
        let (kind, service) = message.kind();
        assert_eq!(
            (kind.0, service.0),
            (v.u8("type"), v.u8("service")),
            "{}",
            v.name
        );
        let body = v.hex("body");
        let frame = v.hex("frame");
        let id = RequestId(v.u32("id"));

        // Encode: fields -> identical bytes.
        assert_eq!(message.to_bytes().to_vec(), body, "vector {}: body", v.name);
        assert_eq!(
            message.encoded_len(),
            body.len(),
            "vector {}: encoded_len",
            v.name
        );
        let mut encoded = Vec::new();
        Frame::from_message(id, &message).encode(&mut encoded);
        assert_eq!(encoded, frame, "vector {}: frame", v.name);

        // Decode: bytes -> identical fields, through the real frame decoder.
        let decoded = decode_exactly_one(&mut FrameDecoder::default(), &frame, &v.name);
        assert_eq!(decoded.header.id, id, "vector {}", v.name);
        assert_eq!(decoded.body.to_vec(), body, "vector {}", v.name);
        assert_eq!(decoded.message(), Ok(message), "vector {}", v.name);
    }
    // Every Message variant has at least one vector.
    for kind in [
        "ClientHello",
        "ServerHello",
        "ServerFinished",
        "ClientFinished",
        "ListRequest",
        "StatRequest",
        "FetchRequest",
        "DigestRequest",
        "DigestResponse",
        "ListPage",
        "StatResponse",
        "FetchResponse",
        "Data",
        "ListEnd",
        "FetchEnd",
        "Error",
        "Cancel",
        "Ping",
        "Pong",
        "PutRequest",
        "PutResponse",
        "PutData",
        "PutEnd",
    ] {
        assert!(kinds.contains(kind), "no vector for {kind}");
    }
}

fn randomness(v: &Vector, side: &str) -> Randomness {
    Randomness {
        nonce: v.array(&format!("{side}_nonce")),
        secret: v.array(&format!("{side}_secret")),
    }
}

#[test]
fn handshake() {
    for v in load("handshake.txt") {
        let name = &v.name;
        let psk = Key::from_bytes(v.array("psk"));
        let mode = Mode(v.u8("mode"));
        // Version-1 vectors predate suites: their client offers CBC + HMAC alone.
        let version = if v.has("version") { v.u8("version") } else { 1 };
        let suites = |field: &str| {
            let names = if v.has(field) {
                v.string(field)
            } else {
                "cbc-hmac".into()
            };
            names
                .split_whitespace()
                .map(suite_named)
                .collect::<Vec<_>>()
        };
        let suite = *suites("suite").first().expect("one suite");
        let mut client_config =
            ClientHandshakeConfig::new(psk.clone()).with_suites(suites("client_suites"));
        client_config.mode = mode;
        client_config.send_key_hint = v.has("key_hint");
        let mut server_config = ServerHandshakeConfig::new(psk.clone());
        server_config.allow_plaintext = v.bool("allow_plaintext");
        if v.has("server_suites") {
            server_config.suites = suites("server_suites");
        }
        if v.has("key_hint") {
            assert_eq!(psk.hint().0, v.array("key_hint"), "{name}: key_hint");
        }

        // Replay both state machines with the fixed randomness: identical frames.
        let mut out = BytesMut::new();
        let mut client =
            ClientHandshake::start_with(client_config, randomness(&v, "client"), &mut out);
        assert_eq!(out.to_vec(), v.hex("client_hello"), "{name}: ClientHello");

        let mut server = ServerHandshake::with_randomness(server_config, randomness(&v, "server"));
        let mut out = BytesMut::new();
        let hello = decode_exactly_one(&mut handshake_decoder(), &v.hex("client_hello"), name);
        assert!(server
            .handle_frame(hello, &mut out)
            .expect("server accepts")
            .is_none());
        let mut server_flight = v.hex("server_hello");
        server_flight.extend(v.hex("server_finished"));
        assert_eq!(
            out.to_vec(),
            server_flight,
            "{name}: ServerHello + ServerFinished"
        );

        let mut out = BytesMut::new();
        let frame = decode_exactly_one(&mut handshake_decoder(), &v.hex("server_hello"), name);
        assert!(client
            .handle_frame(frame, &mut out)
            .expect("client accepts")
            .is_none());
        assert!(out.is_empty(), "{name}: nothing to send after ServerHello");
        let frame = decode_exactly_one(&mut handshake_decoder(), &v.hex("server_finished"), name);
        let mut client_session = client
            .handle_frame(frame, &mut out)
            .expect("client accepts ServerFinished")
            .expect("client established");
        assert_eq!(
            out.to_vec(),
            v.hex("client_finished"),
            "{name}: ClientFinished"
        );

        let frame = decode_exactly_one(&mut handshake_decoder(), &v.hex("client_finished"), name);
        let mut server_session = server
            .handle_frame(frame, &mut BytesMut::new())
            .expect("server accepts ClientFinished")
            .expect("server established");
        assert_eq!(client_session.mode(), mode, "{name}");
        assert_eq!(server_session.mode(), mode, "{name}");
        assert_eq!(client_session.version(), version, "{name}");
        assert_eq!(server_session.version(), version, "{name}");
        let expected_suite = if mode == Mode::ENCRYPTED {
            suite
        } else {
            RecordSuite::Plaintext
        };
        assert_eq!(client_session.suite(), expected_suite, "{name}");
        assert_eq!(server_session.suite(), expected_suite, "{name}");

        // Every intermediate value of the key schedule.
        let client_secret = StaticSecret::from(v.array::<32>("client_secret"));
        let server_secret = StaticSecret::from(v.array::<32>("server_secret"));
        let client_public = PublicKey::from(&client_secret);
        let server_public = PublicKey::from(&server_secret);
        assert_eq!(client_public.to_bytes(), v.array("client_public"), "{name}");
        assert_eq!(server_public.to_bytes(), v.array("server_public"), "{name}");
        let dh = client_secret.diffie_hellman(&server_public).to_bytes();
        assert_eq!(dh, server_secret.diffie_hellman(&client_public).to_bytes());
        assert_eq!(dh, v.array("dh_shared"), "{name}: DH");
        let th: [u8; 32] = Sha256::new()
            .chain_update(v.hex("client_hello"))
            .chain_update(v.hex("server_hello"))
            .finalize()
            .into();
        assert_eq!(th, v.array("transcript_hash"), "{name}: TH");
        let mut ikm = psk.as_bytes().to_vec();
        ikm.extend_from_slice(&dh);
        let (prk, hkdf) = Hkdf::<Sha256>::extract(Some(&th), &ikm);
        assert_eq!(prk.to_vec(), v.hex("prk"), "{name}: PRK");
        let keys = derive_keys_for(version, &psk, &dh, &th);
        let l = if version >= 2 {
            [
                labels::v2::C2S_ENC,
                labels::v2::C2S_MAC,
                labels::v2::S2C_ENC,
                labels::v2::S2C_MAC,
                labels::v2::SERVER_FINISHED,
                labels::v2::CLIENT_FINISHED,
            ]
        } else {
            [
                labels::C2S_ENC,
                labels::C2S_MAC,
                labels::S2C_ENC,
                labels::S2C_MAC,
                labels::SERVER_FINISHED,
                labels::CLIENT_FINISHED,
            ]
        };
        let fields = [
            ("c2s_enc", l[0], keys.client_to_server.enc),
            ("c2s_mac", l[1], keys.client_to_server.mac),
            ("s2c_enc", l[2], keys.server_to_client.enc),
            ("s2c_mac", l[3], keys.server_to_client.mac),
        ];
        for (field, label, derived) in fields {
            let mut expanded = [0u8; 32];
            hkdf.expand(label, &mut expanded).expect("32 bytes");
            assert_eq!(derived, v.array(field), "{name}: {field}");
            assert_eq!(
                expanded, derived,
                "{name}: {field} is HKDF-Expand(PRK, label)"
            );
        }
        if version >= 2 {
            for (field, label, derived) in [
                ("c2s_gcm_iv", labels::v2::C2S_IV, keys.client_to_server.iv),
                ("s2c_gcm_iv", labels::v2::S2C_IV, keys.server_to_client.iv),
            ] {
                let mut expanded = [0u8; 12];
                hkdf.expand(label, &mut expanded).expect("12 bytes");
                assert_eq!(derived, v.array(field), "{name}: {field}");
                assert_eq!(
                    expanded, derived,
                    "{name}: {field} is HKDF-Expand(PRK, label, 12)"
                );
            }
        }
        for (field, label, mac_field, derived) in [
            (
                "server_finished_key",
                l[4],
                "server_finished_mac",
                keys.server_confirm,
            ),
            (
                "client_finished_key",
                l[5],
                "client_finished_mac",
                keys.client_confirm,
            ),
        ] {
            let mut finished_key = [0u8; 32];
            hkdf.expand(label, &mut finished_key).expect("32 bytes");
            assert_eq!(finished_key, v.array(field), "{name}: {field}");
            assert_eq!(
                hmac_sha256(&finished_key, &[&th]),
                derived,
                "{name}: {mac_field}"
            );
            assert_eq!(derived, v.array(mac_field), "{name}: {mac_field}");
        }

        // The first record each way: sealed with the fixed IV, opened by the real sessions.
        for (dir, keys, session) in [
            ("c2s", &keys.client_to_server, &mut server_session),
            ("s2c", &keys.server_to_client, &mut client_session),
        ] {
            let record = v.hex(&format!("{dir}_record"));
            let plaintext = v.hex(&format!("{dir}_plaintext"));
            let header = Header::decode(&record[..12]).expect("header");
            if mode == Mode::ENCRYPTED {
                let mut sealed = BytesMut::new();
                // GCM needs no IV per record: the nonce comes from the key schedule.
                let iv = if suite == RecordSuite::Aes256CbcHmacSha256 {
                    v.array(&format!("{dir}_iv"))
                } else {
                    [0; 16]
                };
                RecordSealer::new(suite, keys)
                    .dangerous_seal_with_iv(header, &plaintext, iv, &mut sealed)
                    .expect("seal");
                assert_eq!(sealed.to_vec(), record, "{name}: {dir}_record");
            } else {
                assert_eq!(record[12..].to_vec(), plaintext, "{name}: plaintext record");
            }
            let frame = session
                .read_frame(&mut BytesMut::from(&record[..]))
                .unwrap_or_else(|e| panic!("{name}: {dir}_record: {e}"))
                .expect("whole frame");
            assert_eq!(frame.body.to_vec(), plaintext, "{name}: {dir}_record opens");
            assert!(frame.message().is_ok(), "{name}: {dir} message decodes");
        }
    }
}

/// A suite by the name `--suite` and the vectors give it.
fn suite_named(name: &str) -> RecordSuite {
    match name {
        "gcm" => RecordSuite::Aes256Gcm,
        "cbc-hmac" => RecordSuite::Aes256CbcHmacSha256,
        other => panic!("unknown suite {other}"),
    }
}

/// A record vector's suite: `suite: "gcm"`, or CBC + HMAC when absent (version 1's vectors).
fn record_suite(v: &Vector) -> RecordSuite {
    if v.has("suite") {
        suite_named(&v.string("suite"))
    } else {
        RecordSuite::Aes256CbcHmacSha256
    }
}

fn record_keys(v: &Vector) -> DirectionKeys {
    DirectionKeys {
        enc: v.array("enc_key"),
        mac: if v.has("mac_key") {
            v.array("mac_key")
        } else {
            [0; 32]
        },
        iv: if v.has("gcm_iv") {
            v.array("gcm_iv")
        } else {
            [0; 12]
        },
    }
}

#[test]
fn records() {
    for v in load("records.txt") {
        let name = &v.name;
        let keys = record_keys(&v);
        let seq = v.u64("seq");
        let plaintext = v.hex("plaintext");
        let record = v.hex("record");
        let header_bytes = v.hex("header");
        let suite = record_suite(&v);
        // GCM records carry no IV: the nonce comes from the direction's IV and `seq`.
        let iv: [u8; 16] = if v.has("iv") { v.array("iv") } else { [0; 16] };
        let mut parts = header_bytes.clone();
        if v.has("iv") {
            parts.extend(iv);
        }
        parts.extend(v.hex("ciphertext"));
        parts.extend(v.hex("tag"));
        assert_eq!(
            parts, record,
            "{name}: record = header || [iv] || ciphertext || tag"
        );

        // Seal: the header's length field is overwritten with the sealed length.
        let mut header = Header::decode(&header_bytes).expect("header");
        header.length = 0;
        let mut sealing = RecordSealer::new(suite, &keys).with_sequence(seq);
        let mut sealed = BytesMut::new();
        sealing
            .dangerous_seal_with_iv(header, &plaintext, iv, &mut sealed)
            .expect("seal");
        assert_eq!(sealed.to_vec(), record, "{name}: seal");
        assert_eq!(sealing.sequence(), seq + 1, "{name}: sequence advances");

        // Open through a full session-style decode: frame decoder, then the record layer.
        let mut buf = BytesMut::from(&record[..]);
        let mut decoder = FrameDecoder::default();
        decoder.set_version(header.version);
        let (header, body) = decoder
            .decode_raw(&mut buf)
            .expect("frame")
            .expect("whole frame");
        let mut opening = RecordOpener::new(suite, &keys).with_sequence(seq);
        let opened = opening.open(&header, body).expect("opens");
        assert_eq!(opened.to_vec(), plaintext, "{name}: open");

        if seq == u64::MAX - 1 {
            // Nothing may be sealed after the last sequence number.
            assert_eq!(
                sealing.dangerous_seal_with_iv(header, b"", [0; 16], &mut BytesMut::new()),
                Err(CryptoError::SequenceExhausted),
                "{name}"
            );
        }
    }
}

#[test]
fn keys() {
    for v in load("keys.txt") {
        let name = &v.name;
        let input = v.hex("input");
        let parsed = match v.raw("source") {
            "text" => std::str::from_utf8(&input)
                .ok()
                .and_then(|s| s.parse::<Key>().ok()),
            "file" => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("key");
                std::fs::write(&path, &input).expect("write key file");
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .expect("chmod");
                }
                Key::from_file_bytes(&std::fs::read(&path).expect("read key file")).ok()
            }
            other => panic!("vector {name}: unknown source {other}"),
        };
        if v.has("invalid") {
            assert!(parsed.is_none(), "vector {name} must be rejected");
            continue;
        }
        let key = parsed.unwrap_or_else(|| panic!("vector {name} must parse"));
        assert_eq!(key.as_bytes(), &v.array::<32>("key"), "{name}");
        assert_eq!(key.to_hex(), v.raw("hex"), "{name}");
        assert_eq!(key.to_base64(), v.raw("base64"), "{name}");
        assert_eq!(key.fingerprint(), v.raw("fingerprint"), "{name}");
    }
}

#[test]
fn negative_frames() {
    for v in load("negative-frames.txt") {
        let name = &v.name;
        let input = v.hex("input");
        let code = expect_code(&v);
        match v.raw("phase") {
            "session" => {
                let mut decoder = FrameDecoder::new(v.u32("max_body"));
                let before = input.len();
                let mut buf = BytesMut::from(&input[..]);
                let err = decoder
                    .decode(&mut buf)
                    .expect_err(&format!("vector {name} must be rejected"));
                assert_eq!(err.code(), code, "vector {name}: {err}");
                assert!(buf.len() == before, "vector {name}: nothing consumed");
            }
            "handshake" => {
                // The real async server handshake: it must answer with the opaque error frame.
                let reply = server_handshake_reply(&input, Key::from_bytes([7; 32]));
                assert_eq!(reply, v.hex("expect_reply"), "vector {name}: reply");
                let err = handshake_decoder()
                    .decode(&mut BytesMut::from(&input[..]))
                    .expect_err("handshake decoder rejects");
                assert_ne!(err.code(), ErrorCode(0), "{name}");
                assert_eq!(code, ErrorCode::AUTHENTICATION_FAILED, "{name}");
            }
            other => panic!("vector {name}: unknown phase {other}"),
        }
    }
}

/// Feeds `input` to a real `server_handshake` over an in-memory pipe and returns everything it
/// writes before closing.
fn server_handshake_reply(input: &[u8], key: Key) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            ferry_protocol::tokio::server_handshake(&mut server, ServerHandshakeConfig::new(key))
                .await
        });
        client.write_all(input).await.expect("write");
        let mut reply = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_to_end(&mut reply),
        )
        .await
        .expect("server closes within 10 s")
        .expect("read");
        let result = task.await.expect("task");
        assert!(result.is_err(), "the handshake must fail");
        reply
    })
}

#[test]
fn negative_messages() {
    for v in load("negative-messages.txt") {
        let name = &v.name;
        let code = expect_code(&v);
        assert_eq!(code.category(), Category::PROTOCOL, "{name}");
        let frame = decode_exactly_one(&mut FrameDecoder::default(), &v.hex("frame"), name);
        let err = frame
            .message()
            .expect_err(&format!("vector {name} must be rejected"));
        assert_eq!(err.code(), code, "vector {name}: {err}");
    }
}

#[test]
fn negative_records() {
    for v in load("negative-records.txt") {
        let name = &v.name;
        assert_eq!(expect_code(&v), ErrorCode::BAD_RECORD, "{name}");
        let keys = record_keys(&v);
        let record = v.hex("record");
        let mut buf = BytesMut::from(&record[..]);
        let mut decoder = FrameDecoder::default();
        // A record layer must reject what a session's framing (which takes one version) lets
        // through, so frame with the vector's own header version.
        decoder.set_version(record[2]);
        let (header, body) = decoder
            .decode_raw(&mut buf)
            .expect("the frame itself is well formed")
            .expect("whole frame");
        let result = RecordOpener::new(record_suite(&v), &keys)
            .with_sequence(v.u64("seq"))
            .open(&header, body);
        assert_eq!(result, Err(CryptoError::BadRecord), "vector {name}");
        let error: ferry_protocol::Error = CryptoError::BadRecord.into();
        assert_eq!(error.code(), ErrorCode::BAD_RECORD);
    }
}

#[test]
fn negative_handshake() {
    for v in load("negative-handshake.txt") {
        let name = &v.name;
        let code = expect_code(&v);
        let psk = Key::from_bytes(v.array("psk"));
        let plaintext = v.bool("plaintext");
        let frames: Vec<Frame> = v
            .all("recv")
            .iter()
            .map(|hex| {
                let bytes = common::parse_hex(hex).expect("hex");
                decode_exactly_one(&mut handshake_decoder(), &bytes, name)
            })
            .collect();
        let (last, rest) = frames.split_last().expect("at least one frame");
        let mut out = BytesMut::new();
        let error = match v.raw("role") {
            "server" => {
                let server_psk = if v.has("server_psk") {
                    Key::from_bytes(v.array("server_psk"))
                } else {
                    psk
                };
                let mut config = ServerHandshakeConfig::new(server_psk);
                config.allow_plaintext = plaintext;
                let mut server = ServerHandshake::with_randomness(config, randomness(&v, "server"));
                for frame in rest {
                    let done = server
                        .handle_frame(frame.clone(), &mut out)
                        .unwrap_or_else(|e| panic!("vector {name}: early failure {e}"));
                    assert!(done.is_none(), "{name}");
                }
                server.handle_frame(last.clone(), &mut out)
            }
            "client" => {
                // Version-1 cases predate suites: their client offers CBC + HMAC alone.
                let suites = if v.has("client_suites") {
                    v.string("client_suites")
                        .split_whitespace()
                        .map(suite_named)
                        .collect()
                } else {
                    vec![RecordSuite::Aes256CbcHmacSha256]
                };
                let config = ClientHandshakeConfig::new(psk)
                    .plaintext(plaintext)
                    .with_suites(suites);
                let mut client =
                    ClientHandshake::start_with(config, randomness(&v, "client"), &mut out);
                for frame in rest {
                    let done = client
                        .handle_frame(frame.clone(), &mut out)
                        .unwrap_or_else(|e| panic!("vector {name}: early failure {e}"));
                    assert!(done.is_none(), "{name}");
                }
                client.handle_frame(last.clone(), &mut out)
            }
            other => panic!("vector {name}: unknown role {other}"),
        }
        .expect_err(&format!("vector {name} must fail"));
        assert_eq!(error.code(), code, "vector {name}: {error}");
        if v.has("expect_error_frame") {
            let mut error_frame = BytesMut::new();
            write_error(&error, &mut error_frame);
            assert_eq!(
                error_frame.to_vec(),
                v.hex("expect_error_frame"),
                "vector {name}"
            );
        }
    }
}

#[test]
fn digests() {
    let vectors = load("digests.txt");
    assert!(vectors.iter().any(|v| v.u64("input_len") > 4 * 1024));
    for v in &vectors {
        let input = common::generate::digest_input(v.u64("input_len") as usize);
        let expected = v.hex("digest");
        assert_eq!(
            ferry_protocol::digest::fetch_digest(&input).as_slice(),
            expected,
            "vector {}",
            v.name
        );
        // Fed in uneven pieces, as a fetch's chunks arrive.
        let mut streaming = ferry_protocol::digest::FetchDigest::new();
        for piece in input.chunks(1000) {
            streaming.update(piece);
        }
        assert_eq!(
            streaming.finalize().as_slice(),
            expected,
            "vector {}",
            v.name
        );
    }
}

/// Every file in `spec/vectors/` has a test above; a new file without one fails here.
#[test]
fn every_vector_file_is_checked() {
    const CHECKED: &[&str] = &[
        // Checked in identity_vectors.rs.
        "identities.txt",
        "identity-handshake.txt",
        // Checked in enrol_vectors.rs.
        "enrol.txt",
        // protocol/tests/offer_vectors.rs.
        "offer.txt",
        // Checked where their messages live: p2p/tests/fleet_vectors.rs, p2p/tests/identity.rs
        // and hub/tests/vectors.rs.
        "fleet.txt",
        "peer-identity.txt",
        "hub.txt",
        "digests.txt",
        "headers.txt",
        "messages.txt",
        "handshake.txt",
        "records.txt",
        "keys.txt",
        "negative-frames.txt",
        "negative-messages.txt",
        "negative-records.txt",
        "negative-handshake.txt",
    ];
    let mut found: Vec<String> = std::fs::read_dir(common::vectors_dir())
        .expect("spec/vectors exists")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "README.md")
        .collect();
    found.sort();
    let mut expected: Vec<String> = CHECKED.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(found, expected);
}

/// The parser itself: continuation lines, defaults, comments, typed values.
#[test]
fn vector_format_parses_as_documented() {
    let text = "# comment\nenc_key: 00 01\n\nvector: one\nframe: 0102\n  0304\n# inner\n\
                name: \"a b\"\nn: -0x10\nvector: two\nenc_key: ff\nempty:\n";
    let vectors = common::parse(text).expect("parses");
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].hex("frame"), vec![1, 2, 3, 4]);
    assert_eq!(vectors[0].hex("enc_key"), vec![0, 1]);
    assert_eq!(vectors[0].string("name"), "a b");
    assert_eq!(vectors[0].int("n"), -16);
    assert_eq!(vectors[1].hex("enc_key"), vec![0xff]);
    assert_eq!(vectors[1].hex("empty"), Vec::<u8>::new());
    assert!(common::parse("  orphan continuation\n").is_err());
    assert!(common::parse("Bad Key: 1\n").is_err());
}
