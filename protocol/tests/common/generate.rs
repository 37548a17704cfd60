//! Generates the golden vectors in `spec/vectors/` from the implementation.
//!
//! Run only on purpose (`cargo test -p ferry-protocol --test vectors -- --ignored regenerate`),
//! review the diff, and commit it. A changed vector means the wire format changed: that needs a
//! protocol version bump, not a regeneration.

use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
use bytes::{Bytes, BytesMut};
use ferry_protocol::crypto::{
    derive_keys_for, hmac_sha256, labels, DirectionKeys, RecordSealer, RecordSuite,
};
use ferry_protocol::frame::FrameDecoder;
use ferry_protocol::handshake::{
    handshake_decoder, write_error, ClientHandshake, Randomness, ServerHandshake,
};
use ferry_protocol::message::{
    put_flags, ClientHello, DigestRequest, DigestResponse, Entry, EntryKind, FetchEnd,
    FetchRequest, FetchResponse, Finished, ListEnd, ListPage, ListRequest, PutEnd, PutRequest,
    PutResponse, ServerHello, StatRequest, SuiteId, SuiteOffer, TO_END,
};
use ferry_protocol::{
    ClientHandshakeConfig, ErrorBody, ErrorCode, Frame, FrameType, Header, Key, Message, Mode,
    RequestId, ServerHandshakeConfig, Service, Session,
};
use hkdf::Hkdf;
use hmac::Mac;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use super::Writer;

/// A vector file's name and the function producing its text.
type Generator = (&'static str, fn() -> String);
/// name, phase, max_body, input, expected code, note.
type FrameCase = (
    &'static str,
    &'static str,
    u32,
    Vec<u8>,
    ErrorCode,
    &'static str,
);
/// name, type, service, body, expected code, note.
type MessageCase = (&'static str, u8, u8, Vec<u8>, ErrorCode, &'static str);

/// Writes every vector file into `dir`.
pub fn all(dir: &std::path::Path) {
    let files: [Generator; 10] = [
        ("headers.txt", headers),
        ("messages.txt", messages),
        ("handshake.txt", handshake),
        ("records.txt", records),
        ("keys.txt", keys),
        ("negative-frames.txt", negative_frames),
        ("negative-messages.txt", negative_messages),
        ("negative-records.txt", negative_records),
        ("negative-handshake.txt", negative_handshake),
        ("digests.txt", digests),
    ];
    for (name, generate) in files {
        std::fs::write(dir.join(name), generate()).expect("write vector file");
    }
}

fn preamble(w: &mut Writer, title: &str, body: &str) {
    w.comment(&format!("Ferry protocol golden vectors: {title}"));
    w.comment("Format: spec/vectors/README.md. Normative text: spec/PROTOCOL.md.");
    w.comment("Generated from the reference implementation, then frozen: a changed vector");
    w.comment("means a protocol version bump.");
    w.comment("");
    w.comment(body);
}

fn frame_bytes(id: RequestId, message: &Message) -> Vec<u8> {
    let frame = Frame::from_message(id, message);
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

fn code_fields(w: &mut Writer, code: ErrorCode) {
    w.hexint("expect_code", code.0.into(), 4);
    w.field("expect_name", code.name().expect("named code"));
}

// ---------------------------------------------------------------------------------------------
// headers

fn headers() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "frame headers",
        "Each vector is one 12-byte header and its fields. Decoding `bytes` must give the fields;\n\
         encoding the fields must give `bytes`. Unknown type and service values decode\n\
         unchanged: whether they are legal is decided by the message layer, not the header.",
    );
    let cases: [(&str, u8, u8, u32, u32, &str); 8] = [
        (
            "fetch_request",
            0x10,
            0x03,
            1,
            26,
            "REQUEST / FETCH, id 1, 26-byte body",
        ),
        (
            "data_chunk",
            0x12,
            0x03,
            0x0102_0304,
            65_536,
            "DATA / FETCH, a 64 KiB chunk",
        ),
        (
            "client_hello",
            0x01,
            0x00,
            0,
            67,
            "CLIENT_HELLO / HANDSHAKE: the first frame of every connection",
        ),
        (
            "pong_max_id_empty",
            0x21,
            0x04,
            u32::MAX,
            0,
            "PONG / ECHO with the largest id and an empty body",
        ),
        (
            "error_connection",
            0x14,
            0x00,
            0,
            30,
            "ERROR with id 0: connection-level",
        ),
        (
            "unknown_type_private_service",
            0x7F,
            0xF3,
            0x8000_0000,
            16 << 20,
            "unknown type 0x7f, private service 0xf3, length 16 MiB",
        ),
        (
            "tracker_service",
            0x10,
            0x40,
            9,
            0xFFFF_FFFF,
            "first tracker service 0x40, largest length field",
        ),
        (
            "peer_service",
            0x11,
            0x5F,
            0xFFFF_FFFE,
            1,
            "last peer-wire service 0x5f",
        ),
    ];
    for (name, kind, service, id, length, note) in cases {
        let header = Header::new(FrameType(kind), Service(service), RequestId(id), length);
        w.vector(name);
        w.comment(note);
        w.hex("bytes", &header.to_bytes());
        w.hexint("type", kind.into(), 2);
        w.int("version", header.version);
        w.hexint("service", service.into(), 2);
        w.int("id", id);
        w.int("length", length);
    }
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// messages

fn entry(name: &str, kind: EntryKind, size: u64, secs: i64, nanos: u32, mode: u32) -> Entry {
    Entry {
        name: name.into(),
        kind,
        size,
        mtime_secs: secs,
        mtime_nanos: nanos,
        mode,
        link: None,
    }
}

fn entry_fields(w: &mut Writer, prefix: &str, e: &Entry) {
    w.string(&format!("{prefix}name"), &e.name);
    w.int(&format!("{prefix}kind"), e.kind.0);
    w.int(&format!("{prefix}size"), e.size);
    w.int(&format!("{prefix}mtime_secs"), e.mtime_secs);
    w.int(&format!("{prefix}mtime_nanos"), e.mtime_nanos);
    w.field(&format!("{prefix}mode"), format!("0x{:03x}", e.mode));
    if let Some(link) = &e.link {
        w.string(&format!("{prefix}link"), link);
    }
}

/// The semantic fields of a message, as `message_from` in `tests/vectors.rs` reads them.
fn message_fields(w: &mut Writer, message: &Message) {
    match message {
        Message::ClientHello(m) => {
            w.field("message", "ClientHello");
            w.int("min_version", m.min_version);
            w.int("max_version", m.max_version);
            w.int("mode", m.mode.0);
            w.hex("nonce", &m.nonce);
            w.hex("key_share", &m.key_share);
            if m.max_version >= 2 {
                let ids: Vec<u8> = m.suites.suites().iter().map(|s| s.0).collect();
                w.hex("suites", &ids);
                if let Some(hint) = m.key_hint {
                    w.hex("key_hint", &hint.0);
                }
                if !m.rest.is_empty() {
                    w.hex("rest", &m.rest);
                }
            }
        }
        Message::ServerHello(m) => {
            w.field("message", "ServerHello");
            w.int("version", m.version);
            w.int("mode", m.mode.0);
            w.hex("nonce", &m.nonce);
            w.hex("key_share", &m.key_share);
            if let Some(suite) = m.suite {
                w.int("suite", suite.0);
            }
        }
        Message::ServerFinished(m) => {
            w.field("message", "ServerFinished");
            w.hex("mac", &m.mac);
        }
        Message::ClientFinished(m) => {
            w.field("message", "ClientFinished");
            w.hex("mac", &m.mac);
        }
        Message::ListRequest(m) => {
            w.field("message", "ListRequest");
            w.string("path", &m.path);
            w.int("recursive", u8::from(m.recursive));
            w.int("max_depth", m.max_depth);
            if m.links {
                w.int("links", 1);
            }
        }
        Message::StatRequest(m) => {
            w.field("message", "StatRequest");
            w.string("path", &m.path);
        }
        Message::FetchRequest(m) => {
            w.field("message", "FetchRequest");
            w.string("path", &m.path);
            w.int("offset", m.offset);
            w.hexint("length", m.length, 16);
        }
        Message::DigestRequest(m) => {
            w.field("message", "DigestRequest");
            w.string("path", &m.path);
        }
        Message::DigestResponse(m) => {
            w.field("message", "DigestResponse");
            w.int("size", m.size);
            w.int("mtime_secs", m.mtime_secs);
            w.int("mtime_nanos", m.mtime_nanos);
            w.hex("digest", &m.digest);
        }
        Message::ListPage(m) => {
            w.field("message", "ListPage");
            w.int("entries", m.entries.len());
            for (i, e) in m.entries.iter().enumerate() {
                entry_fields(w, &format!("entry{i}."), e);
            }
        }
        Message::StatResponse(e) => {
            w.field("message", "StatResponse");
            entry_fields(w, "entry.", e);
        }
        Message::FetchResponse(m) => {
            w.field("message", "FetchResponse");
            w.int("size", m.size);
            w.int("mtime_secs", m.mtime_secs);
            w.int("mtime_nanos", m.mtime_nanos);
            w.int("offset", m.offset);
            w.int("length", m.length);
        }
        Message::Data(b) => {
            w.field("message", "Data");
            w.hex("payload", b);
        }
        Message::ListEnd(m) => {
            w.field("message", "ListEnd");
            w.int("entries", m.entries);
        }
        Message::FetchEnd(m) => {
            w.field("message", "FetchEnd");
            w.int("bytes", m.bytes);
            w.hex("digest", &m.digest);
        }
        Message::PutRequest(m) => {
            w.field("message", "PutRequest");
            w.string("path", &m.path);
            w.int("size", m.size);
            w.hexint("mode", m.mode.into(), 4);
            w.hexint("flags", m.flags.into(), 2);
            w.hex("digest", &m.digest);
        }
        Message::PutResponse(m) => {
            w.field("message", "PutResponse");
            w.int("offset", m.offset);
            w.int("limit", m.limit);
            w.hex("prefix", &m.prefix);
        }
        Message::PutData(b) => {
            w.field("message", "PutData");
            w.hex("payload", b);
        }
        Message::PutEnd(m) => {
            w.field("message", "PutEnd");
            w.int("bytes", m.bytes);
            w.hex("digest", &m.digest);
        }
        // Enrolment bodies have their own file, enrol.txt (spec §13.11.6), and are not
        // among messages.txt's examples.
        Message::EnrolRequest(_)
        | Message::EnrolResponse(_)
        | Message::EnrolConfirm(_)
        | Message::EnrolEnd(_) => {
            w.field("message", "Enrol");
        }
        // Offers have their own file too, offer.txt (spec §3.13).
        Message::OfferRequest(_) | Message::OfferResponse(_) => {
            w.field("message", "Offer");
        }
        Message::Error { service, body } => {
            w.field("message", "Error");
            w.hexint("error_service", service.0.into(), 2);
            w.hexint("category", body.category.0.into(), 2);
            w.hexint("code", body.code.0.into(), 4);
            w.string("error_message", &body.message);
        }
        Message::Cancel { service } => {
            w.field("message", "Cancel");
            w.hexint("cancel_service", service.0.into(), 2);
        }
        Message::Ping(b) => {
            w.field("message", "Ping");
            w.hex("payload", b);
        }
        Message::Pong(b) => {
            w.field("message", "Pong");
            w.hex("payload", b);
        }
    }
}

fn seq(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn messages() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "every message kind",
        "Each vector is one plaintext frame (header version 1). `message` names the kind, the\n\
         fields below it are the decoded values, `body` is the encoded body and `frame` the whole\n\
         frame. Decoding `frame` must give `type`, `service`, `id` and the fields; encoding the\n\
         fields must give exactly `body` and `frame`. Strings are UTF-8 between the quotes.",
    );
    let notes = entry("notes.txt", EntryKind::FILE, 1234, 1_700_000_000, 5, 0o644);
    let docs = entry("docs", EntryKind::DIRECTORY, 4096, 1_600_000_000, 0, 0o755);
    let link = entry("docs/latest", EntryKind::SYMLINK, 8, -1, 999_999_999, 0o777);
    let fifo = entry(
        "docs/caf\u{e9} \u{65e5}\u{672c}",
        EntryKind::OTHER,
        0,
        0,
        0,
        0o600,
    );
    let hello_digest = ferry_protocol::digest::fetch_digest(b"hello");
    let cases: Vec<(&str, u32, Message, &str)> = vec![
        (
            "client_hello_encrypted",
            0,
            Message::ClientHello(ClientHello {
                min_version: 1,
                max_version: 1,
                mode: Mode::ENCRYPTED,
                nonce: seq(0xA0),
                key_share: seq(0x40),
                suites: SuiteOffer::default(),
                key_hint: None,
                rest: Bytes::new(),
            }),
            "ClientHello offering version 1 only, encrypted mode",
        ),
        (
            "client_hello_plaintext_range",
            0,
            Message::ClientHello(ClientHello {
                min_version: 1,
                max_version: 3,
                mode: Mode::PLAINTEXT,
                nonce: [0x11; 32],
                key_share: [0x22; 32],
                suites: SuiteOffer::new([SuiteId::AES_256_GCM, SuiteId(0x7f)]).expect("valid"),
                key_hint: None,
                rest: Bytes::from_static(&[0xe0, 0xe1]),
            }),
            "ClientHello offering versions 1..=3, asking for plaintext: from version 2 on the \
             offer (GCM, then the unknown suite 0x7f) and the hint length (0: no hint) follow \
             the key share, and above version 2 so may bytes for later versions (here e0 e1)",
        ),
        (
            "server_hello",
            0,
            Message::ServerHello(ServerHello {
                version: 1,
                mode: Mode::ENCRYPTED,
                nonce: seq(0xC0),
                key_share: seq(0x60),
                suite: None,
            }),
            "ServerHello choosing version 1, echoing encrypted mode",
        ),
        (
            "server_finished",
            0,
            Message::ServerFinished(Finished { mac: seq(0x01) }),
            "ServerFinished: a 32-byte MAC",
        ),
        (
            "client_finished",
            0,
            Message::ClientFinished(Finished { mac: seq(0x81) }),
            "ClientFinished: a 32-byte MAC",
        ),
        (
            "list_request_root",
            1,
            Message::ListRequest(ListRequest::new("", false, 0).expect("short path")),
            "list the root, not recursive",
        ),
        (
            "list_request_recursive",
            2,
            Message::ListRequest(ListRequest::new("docs", true, 3).expect("short path")),
            "list docs recursively, 3 levels deep",
        ),
        (
            "list_request_links",
            2,
            Message::ListRequest(
                ListRequest::new("", true, 32)
                    .expect("short path")
                    .with_links(true),
            ),
            "list the root recursively, asking for link targets (flag 0x80)",
        ),
        (
            "stat_request",
            3,
            Message::StatRequest(StatRequest::new("docs/a.txt").expect("short path")),
            "stat one path",
        ),
        (
            "stat_request_utf8",
            4,
            Message::StatRequest(
                StatRequest::new("caf\u{e9}/\u{65e5}\u{672c}.txt").expect("short path"),
            ),
            "a path with non-ASCII UTF-8 (length counts bytes, not characters)",
        ),
        (
            "fetch_request_whole",
            5,
            Message::FetchRequest(FetchRequest::new("big.iso", 0, TO_END).expect("short path")),
            "fetch a whole file: length 0xffffffffffffffff means to the end",
        ),
        (
            "fetch_request_range",
            6,
            Message::FetchRequest(FetchRequest::new("big.iso", 1 << 32, 65_536).expect("path")),
            "fetch 64 KiB from offset 4 GiB",
        ),
        (
            "list_page_empty",
            2,
            Message::ListPage(ListPage::default()),
            "an empty page",
        ),
        (
            "list_page",
            2,
            Message::ListPage(ListPage {
                entries: vec![notes.clone(), docs.clone(), link, fifo],
            }),
            "a page of four entries: file, directory, symlink (negative mtime), other",
        ),
        (
            "list_page_links",
            2,
            Message::ListPage(ListPage {
                entries: vec![
                    Entry {
                        link: Some("notes.txt".into()),
                        ..entry("current", EntryKind::FILE, 1234, 1_700_000_000, 5, 0o644)
                    },
                    Entry {
                        link: Some("../docs".into()),
                        ..entry(
                            "sub/up",
                            EntryKind::DIRECTORY,
                            4096,
                            1_600_000_000,
                            0,
                            0o755,
                        )
                    },
                    entry("escape", EntryKind::SYMLINK, 0, 1_500_000_000, 0, 0o777),
                ],
            }),
            "answer to a list with flag 0x80: links inside the root carry the link flag on \
             the kind byte (0x80 | target kind) and their text after mode; a refused link is \
             kind 2, size 0, no text",
        ),
        (
            "stat_response_file",
            3,
            Message::StatResponse(notes),
            "stat of a regular file",
        ),
        (
            "stat_response_root",
            3,
            Message::StatResponse(entry("", EntryKind::DIRECTORY, 0, 1_600_000_000, 1, 0o755)),
            "stat of the root: empty name",
        ),
        (
            "fetch_response",
            6,
            Message::FetchResponse(FetchResponse {
                size: 10_000_000_000,
                mtime_secs: 1_700_000_000,
                mtime_nanos: 123_456_789,
                offset: 1 << 32,
                length: 65_536,
            }),
            "response header of a range fetch",
        ),
        (
            "data",
            5,
            Message::Data(Bytes::from_static(b"hello")),
            "a data chunk: the body is the raw bytes",
        ),
        (
            "data_empty",
            5,
            Message::Data(Bytes::new()),
            "an empty data chunk is legal",
        ),
        (
            "list_end",
            2,
            Message::ListEnd(ListEnd { entries: 4 }),
            "end of a listing: four entries in all",
        ),
        (
            "fetch_end",
            5,
            Message::FetchEnd(FetchEnd {
                bytes: 5,
                digest: hello_digest,
            }),
            "end of a fetch: byte count and BLAKE3 digest of the bytes sent (\"hello\")",
        ),
        (
            "digest_request",
            7,
            Message::DigestRequest(DigestRequest::new("big.iso").expect("short path")),
            "the client asks for the BLAKE3 of the whole file big.iso (spec §3.11)",
        ),
        (
            "digest_response",
            7,
            Message::DigestResponse(DigestResponse {
                size: 5,
                mtime_secs: 1_700_000_000,
                mtime_nanos: 123_456_789,
                digest: hello_digest,
            }),
            "the file version (size, mtime) and the BLAKE3 of all its bytes (a 5-byte file\n\
             holding \"hello\")",
        ),
        (
            "cancel_digest",
            7,
            Message::Cancel {
                service: Service::DIGEST,
            },
            "the client cancels digest request 7",
        ),
        (
            "error_not_found",
            5,
            Message::Error {
                service: Service::FETCH,
                body: ErrorBody::new(ErrorCode::NOT_FOUND, "no such file: a.txt"),
            },
            "a request-level error answering fetch request 5",
        ),
        (
            "error_connection",
            0,
            Message::Error {
                service: Service::HANDSHAKE,
                body: ErrorBody::from_code(ErrorCode::AUTHENTICATION_FAILED),
            },
            "a connection-level error (id 0, service HANDSHAKE); this is the exact frame a\n\
             failed handshake ends with",
        ),
        (
            "cancel",
            5,
            Message::Cancel {
                service: Service::FETCH,
            },
            "the client cancels fetch request 5; empty body",
        ),
        (
            "ping_token",
            0,
            Message::Ping(Bytes::copy_from_slice(&1u64.to_be_bytes())),
            "keep-alive ping on id 0 with an 8-byte token",
        ),
        (
            "pong_token",
            0,
            Message::Pong(Bytes::copy_from_slice(&1u64.to_be_bytes())),
            "its pong: same id, same payload",
        ),
        (
            "ping_empty",
            9,
            Message::Ping(Bytes::new()),
            "a ping with an empty payload and a non-zero id",
        ),
        (
            "put_request",
            11,
            Message::PutRequest(
                PutRequest::new(
                    "in/hello.txt",
                    5,
                    0o644,
                    put_flags::OVERWRITE | put_flags::PARENTS,
                    hello_digest,
                )
                .expect("short path"),
            ),
            "upload \"hello\" (5 bytes, mode 0644, BLAKE3 announced) to in/hello.txt, replacing\n\
             a file there and creating in/ if missing (spec §3.12)",
        ),
        (
            "put_request_directory",
            12,
            Message::PutRequest(
                PutRequest::directory("in/empty", 0o750, true).expect("short path"),
            ),
            "make the directory in/empty (mode 0750) and in/ if missing: size 0, zero digest\n\
             (spec §3.12, Directories)",
        ),
        (
            "put_response_first",
            11,
            Message::PutResponse(PutResponse {
                offset: 2,
                limit: 5,
                prefix: ferry_protocol::digest::fetch_digest(b"he"),
            }),
            "the server holds the first 2 bytes (\"he\", their BLAKE3 as prefix); the client may\n\
             send up to byte 5",
        ),
        (
            "put_response_new",
            12,
            Message::PutResponse(PutResponse {
                offset: 0,
                limit: 4_194_304,
                prefix: ferry_protocol::digest::fetch_digest(b""),
            }),
            "a new upload: nothing held (prefix is the BLAKE3 of no bytes), a 4 MiB window",
        ),
        (
            "put_data",
            11,
            Message::PutData(Bytes::from_static(b"llo")),
            "the client sends the remaining 3 bytes",
        ),
        (
            "put_end",
            11,
            Message::PutEnd(PutEnd {
                bytes: 5,
                digest: hello_digest,
            }),
            "the client's end, and the same bytes are the server's end: 5 bytes, BLAKE3(\"hello\")",
        ),
        (
            "cancel_put",
            11,
            Message::Cancel {
                service: Service::PUT,
            },
            "the client cancels upload 11; the server keeps its partial",
        ),
        (
            "error_read_only",
            11,
            Message::Error {
                service: Service::PUT,
                body: ErrorBody::from_code(ErrorCode::READ_ONLY),
            },
            "an upload refused: the principal may not write",
        ),
    ];
    for (name, id, message, note) in cases {
        let (kind, service) = message.kind();
        let frame = frame_bytes(RequestId(id), &message);
        w.vector(name);
        w.comment(note);
        w.hexint("type", kind.0.into(), 2);
        w.hexint("service", service.0.into(), 2);
        w.int("id", id);
        message_fields(&mut w, &message);
        w.hex("body", &message.to_bytes());
        w.frame("frame", &frame);
    }
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// handshake

/// RFC 7748 §6.1's Alice and Bob private keys, so the DH output is checkable by hand.
const CLIENT_SECRET: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const SERVER_SECRET: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";

fn arr(hex_text: &str) -> [u8; 32] {
    hex::decode(hex_text)
        .expect("constant hex")
        .try_into()
        .expect("32 bytes")
}

pub fn client_randomness() -> Randomness {
    Randomness {
        nonce: seq(0xA0),
        secret: arr(CLIENT_SECRET),
    }
}

pub fn server_randomness() -> Randomness {
    Randomness {
        nonce: seq(0xC0),
        secret: arr(SERVER_SECRET),
    }
}

pub fn psk() -> Key {
    Key::from_bytes(seq(0x00))
}

fn decode_one(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = handshake_decoder()
        .decode(&mut buf)
        .expect("valid frame")
        .expect("complete frame");
    assert!(buf.is_empty(), "exactly one frame");
    frame
}

/// Splits a byte stream of frames into whole frames.
fn split_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = handshake_decoder();
    let mut out = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).expect("valid frames") {
        let mut raw = Vec::new();
        frame.encode(&mut raw);
        out.push(raw);
    }
    assert!(buf.is_empty());
    out
}

/// Suite names as `--suite` and the vectors spell them, space-separated.
fn suite_names(suites: &[RecordSuite]) -> String {
    suites
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One handshake vector: `client_suites` offered (CBC + HMAC alone is version 1's hello),
/// `server_suites` accepted (`None`: the default).
fn handshake_vector(
    w: &mut Writer,
    name: &str,
    mode: Mode,
    client_suites: &[RecordSuite],
    server_suites: Option<&[RecordSuite]>,
    note: &str,
) {
    let key = psk();
    let client_config = ClientHandshakeConfig::new(key.clone()).with_suites(client_suites.to_vec());
    let mut client_config = client_config.plaintext(mode == Mode::PLAINTEXT);
    client_config.mode = mode;
    let mut server_config = ServerHandshakeConfig::new(key.clone());
    server_config.allow_plaintext = mode == Mode::PLAINTEXT;
    if let Some(suites) = server_suites {
        server_config.suites = suites.to_vec();
    }

    let mut c2s = BytesMut::new();
    let mut client = ClientHandshake::start_with(client_config, client_randomness(), &mut c2s);
    let client_hello = c2s.to_vec();
    let mut server = ServerHandshake::with_randomness(server_config, server_randomness());
    let mut s2c = BytesMut::new();
    assert!(server
        .handle_frame(decode_one(&client_hello), &mut s2c)
        .expect("server accepts")
        .is_none());
    let server_frames = split_frames(&s2c);
    let [server_hello, server_finished] = &server_frames[..] else {
        panic!("server sends ServerHello and ServerFinished")
    };
    let mut c2s = BytesMut::new();
    assert!(client
        .handle_frame(decode_one(server_hello), &mut c2s)
        .expect("client accepts hello")
        .is_none());
    let mut client_session: Session = client
        .handle_frame(decode_one(server_finished), &mut c2s)
        .expect("client accepts finished")
        .expect("client done");
    let client_finished = c2s.to_vec();
    let mut server_session = server
        .handle_frame(decode_one(&client_finished), &mut BytesMut::new())
        .expect("server accepts finished")
        .expect("server done");
    let version = client_session.version();
    let suite = server_session.suite();
    assert_eq!(suite, client_session.suite());
    // The suite chosen, whatever the mode (plaintext runs none of them).
    let chosen = match decode_one(server_hello).message().expect("decodes") {
        Message::ServerHello(hello) => hello
            .selected_suite()
            .and_then(RecordSuite::from_id)
            .expect("a suite we speak"),
        other => panic!("expected ServerHello, got {other:?}"),
    };

    let client_secret = StaticSecret::from(client_randomness().secret);
    let server_secret = StaticSecret::from(server_randomness().secret);
    let client_public = PublicKey::from(&client_secret).to_bytes();
    let server_public = PublicKey::from(&server_secret).to_bytes();
    let dh = client_secret
        .diffie_hellman(&PublicKey::from(server_public))
        .to_bytes();
    let th: [u8; 32] = Sha256::new()
        .chain_update(&client_hello)
        .chain_update(server_hello)
        .finalize()
        .into();
    let mut ikm = key.as_bytes().to_vec();
    ikm.extend_from_slice(&dh);
    let (prk, hkdf) = Hkdf::<Sha256>::extract(Some(&th), &ikm);
    let expand = |label: &[u8]| {
        let mut out = [0u8; 32];
        hkdf.expand(label, &mut out).expect("32 bytes");
        out
    };
    let keys = derive_keys_for(version, &key, &dh, &th);
    let (k_sf, k_cf, c2s_enc) = if version >= 2 {
        (
            expand(labels::v2::SERVER_FINISHED),
            expand(labels::v2::CLIENT_FINISHED),
            expand(labels::v2::C2S_ENC),
        )
    } else {
        (
            expand(labels::SERVER_FINISHED),
            expand(labels::CLIENT_FINISHED),
            expand(labels::C2S_ENC),
        )
    };
    assert_eq!(hmac_sha256(&k_sf, &[&th]), keys.server_confirm);
    assert_eq!(hmac_sha256(&k_cf, &[&th]), keys.client_confirm);
    assert_eq!(c2s_enc, keys.client_to_server.enc);

    w.vector(name);
    w.comment(note);
    w.hex("psk", key.as_bytes());
    w.int("mode", mode.0);
    w.int("allow_plaintext", u8::from(mode == Mode::PLAINTEXT));
    if version >= 2 {
        w.comment(
            "Version 2: the suites the client offers and the server accepts (names as --suite\n\
             spells them, most preferred first), the version and suite agreed, and the key\n\
             hint, HMAC-SHA256(psk, \"ferry v2 key hint\")[0..8], which the client sends.",
        );
        w.int("version", version);
        w.string("client_suites", &suite_names(client_suites));
        if let Some(suites) = server_suites {
            w.string("server_suites", &suite_names(suites));
        }
        w.string("suite", chosen.name());
        w.hex("key_hint", &key.hint().0);
    }
    w.comment("Ephemeral randomness; the X25519 secrets are RFC 7748 section 6.1's Alice and Bob.");
    w.hex("client_nonce", &client_randomness().nonce);
    w.hex("client_secret", &client_randomness().secret);
    w.hex("server_nonce", &server_randomness().nonce);
    w.hex("server_secret", &server_randomness().secret);
    w.comment("X25519(secret, 9): the key shares");
    w.hex("client_public", &client_public);
    w.hex("server_public", &server_public);
    w.comment("Frames 1 and 2, exactly as sent (header version 1, id 0)");
    w.frame("client_hello", &client_hello);
    w.frame("server_hello", server_hello);
    w.comment("TH = SHA-256(client_hello || server_hello)");
    w.hex("transcript_hash", &th);
    w.comment("X25519(client_secret, server_public) = X25519(server_secret, client_public)");
    w.hex("dh_shared", &dh);
    w.comment("PRK = HKDF-Extract(salt = TH, IKM = psk || dh_shared)");
    w.hex("prk", &prk);
    w.comment("HKDF-Expand(PRK, label, 32) for each label");
    w.hex("c2s_enc", &keys.client_to_server.enc);
    w.hex("c2s_mac", &keys.client_to_server.mac);
    w.hex("s2c_enc", &keys.server_to_client.enc);
    w.hex("s2c_mac", &keys.server_to_client.mac);
    if version >= 2 {
        w.comment("HKDF-Expand(PRK, \"ferry v2 c2s iv\" / \"ferry v2 s2c iv\", 12): the GCM IVs");
        w.hex("c2s_gcm_iv", &keys.client_to_server.iv);
        w.hex("s2c_gcm_iv", &keys.server_to_client.iv);
    }
    w.hex("server_finished_key", &k_sf);
    w.hex("client_finished_key", &k_cf);
    w.comment("HMAC-SHA256(finished_key, TH)");
    w.hex("server_finished_mac", &keys.server_confirm);
    w.hex("client_finished_mac", &keys.client_confirm);
    w.comment("Frames 3 and 4");
    w.frame("server_finished", server_finished);
    w.frame("client_finished", &client_finished);

    // The first frame each way after the handshake, with a fixed IV.
    let c2s_message = Message::StatRequest(StatRequest::new("docs/a.txt").expect("short path"));
    let s2c_message = Message::Error {
        service: Service::STAT,
        body: ErrorBody::new(ErrorCode::NOT_FOUND, "not found"),
    };
    let c2s_iv: [u8; 16] = std::array::from_fn(|i| 0xE0 + i as u8);
    let s2c_iv: [u8; 16] = std::array::from_fn(|i| 0xF0 + i as u8);
    let c2s_record = first_record(
        &keys.client_to_server,
        suite,
        version,
        1,
        &c2s_message,
        c2s_iv,
    );
    let s2c_record = first_record(
        &keys.server_to_client,
        suite,
        version,
        1,
        &s2c_message,
        s2c_iv,
    );
    // The sessions the handshake produced must accept them.
    let got = server_session
        .read_frame(&mut BytesMut::from(&c2s_record[..]))
        .expect("server opens")
        .expect("whole frame");
    assert_eq!(got.message().expect("decodes"), c2s_message);
    let got = client_session
        .read_frame(&mut BytesMut::from(&s2c_record[..]))
        .expect("client opens")
        .expect("whole frame");
    assert_eq!(got.message().expect("decodes"), s2c_message);

    if suite == RecordSuite::Aes256Gcm {
        w.comment(
            "The first frame in each direction after the handshake (sequence number 0, header\n\
             version 2), a stat request with id 1 and its error answer, sealed with AES-256-GCM:\n\
             the direction's key, nonce = its GCM IV (sequence number 0), the header as AAD.",
        );
    } else {
        w.comment(
            "The first frame in each direction after the handshake (sequence number 0), a stat\n\
             request with id 1 and its error answer. In encrypted mode the body is sealed with the\n\
             direction's keys and the given IV; in plaintext mode the IV is unused.",
        );
        w.hex("c2s_iv", &c2s_iv);
    }
    w.hex("c2s_plaintext", &c2s_message.to_bytes());
    w.frame("c2s_record", &c2s_record);
    if suite != RecordSuite::Aes256Gcm {
        w.hex("s2c_iv", &s2c_iv);
    }
    w.hex("s2c_plaintext", &s2c_message.to_bytes());
    w.frame("s2c_record", &s2c_record);
}

fn first_record(
    keys: &DirectionKeys,
    suite: RecordSuite,
    version: u8,
    id: u32,
    message: &Message,
    iv: [u8; 16],
) -> Vec<u8> {
    let (kind, service) = message.kind();
    let mut header = Header::new(kind, service, RequestId(id), 0);
    header.version = version;
    let mut out = BytesMut::new();
    RecordSealer::new(suite, keys)
        .dangerous_seal_with_iv(header, &message.to_bytes(), iv, &mut out)
        .expect("seal");
    out.to_vec()
}

fn handshake() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "handshake transcripts",
        "Each vector is a whole handshake with fixed PSK, nonces and X25519 secrets: the four\n\
         frames, every intermediate value of the key schedule, and the first record each way.\n\
         A client started with (psk, mode, client_nonce, client_secret) must send exactly\n\
         `client_hello`; a server with (psk, allow_plaintext, server_nonce, server_secret) that\n\
         receives it must send exactly `server_hello` then `server_finished`; the client must\n\
         then send exactly `client_finished`.",
    );
    let cbc = [RecordSuite::Aes256CbcHmacSha256];
    let both = RecordSuite::DEFAULT_SUITES;
    handshake_vector(
        &mut w,
        "encrypted",
        Mode::ENCRYPTED,
        &cbc,
        None,
        "A complete handshake in encrypted mode between a client and a server sharing `psk`.",
    );
    handshake_vector(
        &mut w,
        "plaintext",
        Mode::PLAINTEXT,
        &cbc,
        None,
        "A complete handshake in plaintext (the server allows it) mode between a client and a \
         server sharing `psk`.",
    );
    handshake_vector(
        &mut w,
        "v2_gcm",
        Mode::ENCRYPTED,
        &both,
        None,
        "Version 2: a default client (offers GCM, then CBC + HMAC, and its key hint) and a\n\
         default server agree on AES-256-GCM.",
    );
    handshake_vector(
        &mut w,
        "v2_cbc_chosen_by_server",
        Mode::ENCRYPTED,
        &both,
        Some(&cbc),
        "Version 2: a default client and a server that accepts only CBC + HMAC\n\
         (`--suite cbc-hmac`) agree on it, in version 2.",
    );
    handshake_vector(
        &mut w,
        "v2_plaintext",
        Mode::PLAINTEXT,
        &both,
        None,
        "Version 2 in plaintext mode: the suite is still chosen (and goes unused).",
    );
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// records

pub fn record_keys() -> DirectionKeys {
    DirectionKeys {
        iv: [0; 12],
        enc: seq(0x00),
        mac: seq(0x20),
    }
}

/// The GCM record vectors' keys: the same AES key, and an IV instead of the MAC key.
pub fn gcm_record_keys() -> DirectionKeys {
    DirectionKeys {
        enc: seq(0x00),
        mac: [0; 32],
        iv: std::array::from_fn(|i| 0x60 + i as u8),
    }
}

fn seal_at(
    keys: &DirectionKeys,
    seq_no: u64,
    header: Header,
    plaintext: &[u8],
    iv: [u8; 16],
) -> Vec<u8> {
    let mut out = BytesMut::new();
    RecordSealer::new(RecordSuite::Aes256CbcHmacSha256, keys)
        .with_sequence(seq_no)
        .dangerous_seal_with_iv(header, plaintext, iv, &mut out)
        .expect("seal");
    out.to_vec()
}

fn records() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "encrypted records",
        "Each vector seals `plaintext` with the file-wide keys at sequence number `seq` and IV\n\
         `iv`. `header` is the 12-byte header as sent (its length field is the sealed length),\n\
         `ciphertext` is AES-256-CBC(enc_key, iv, PKCS#7(plaintext)), `tag` is\n\
         HMAC-SHA256(mac_key, seq as u64 big-endian || header || iv || ciphertext), and `record`\n\
         is the whole frame: header || iv || ciphertext || tag. Opening `record` at `seq` must\n\
         give `plaintext`.",
    );
    let keys = record_keys();
    w.hex("enc_key", &keys.enc);
    w.hex("mac_key", &keys.mac);
    let iv: [u8; 16] = std::array::from_fn(|i| 0x40 + i as u8);
    let long: Vec<u8> = (0..100u8).collect();
    let ping = Header::new(FrameType::PING, Service::ECHO, RequestId(0), 0);
    let data = Header::new(FrameType::DATA, Service::FETCH, RequestId(7), 0);
    let cases: Vec<(&str, u64, Header, Vec<u8>, &str)> = vec![
        (
            "empty",
            0,
            ping,
            Vec::new(),
            "empty body: one whole block of padding (0x10 x 16)",
        ),
        (
            "one_byte",
            1,
            ping,
            vec![0x2A],
            "1 byte: 15 bytes of padding",
        ),
        (
            "fifteen_bytes",
            2,
            data,
            b"fifteen bytes!!".to_vec(),
            "15 bytes: 1 byte of padding",
        ),
        (
            "one_block",
            3,
            data,
            b"exactly 16 bytes".to_vec(),
            "exactly one block: a second block of padding follows",
        ),
        (
            "multi_block",
            4,
            data,
            long,
            "100 bytes: 7 blocks, 12 bytes of padding",
        ),
        (
            "large_sequence",
            0x0000_0001_0000_0005,
            data,
            b"seq above 2^32".to_vec(),
            "a sequence number above 2^32",
        ),
        (
            "last_sequence",
            u64::MAX - 1,
            ping,
            b"last".to_vec(),
            "the last sequence number a sender may use (2^64 - 2)",
        ),
    ];
    for (name, seq_no, header, plaintext, note) in cases {
        let record = seal_at(&keys, seq_no, header, &plaintext, iv);
        let header_bytes = &record[..12];
        let ct = &record[12 + 16..record.len() - 32];
        let tag = &record[record.len() - 32..];
        w.vector(name);
        w.comment(note);
        w.int("seq", seq_no);
        w.hex("iv", &iv);
        w.hex("plaintext", &plaintext);
        w.hex("header", header_bytes);
        w.hex("ciphertext", ct);
        w.hex("tag", tag);
        w.hex_parts("record", &[header_bytes, &iv, ct, tag]);
    }

    w.comment(
        "AES_256_GCM (version 2, spec §5.3.2): `suite: gcm` vectors seal with `enc_key` and the\n\
         direction IV `gcm_iv` (file-wide here, no MAC key): nonce = gcm_iv XOR (0^4 || seq as\n\
         u64 big-endian), associated data = `header` (version 2, length = |plaintext| + 16),\n\
         `ciphertext` || `tag` = AES-256-GCM(enc_key, nonce, header, plaintext), and `record` =\n\
         header || ciphertext || tag.",
    );
    let gcm_keys = gcm_record_keys();
    let v2 = |mut h: Header| {
        h.version = 2;
        h
    };
    let gcm_cases: Vec<(&str, u64, Header, Vec<u8>, &str)> = vec![
        (
            "gcm_empty",
            0,
            v2(ping),
            Vec::new(),
            "empty body: the tag alone",
        ),
        ("gcm_one_byte", 1, v2(ping), vec![0x2A], "1 byte"),
        (
            "gcm_one_block",
            3,
            v2(data),
            b"exactly 16 bytes".to_vec(),
            "exactly one block: no padding in GCM",
        ),
        (
            "gcm_seventeen_bytes",
            4,
            v2(data),
            b"seventeen bytes!!".to_vec(),
            "17 bytes: a partial second block",
        ),
        (
            "gcm_multi_block",
            5,
            v2(data),
            (0..100u8).collect(),
            "100 bytes",
        ),
        (
            "gcm_large_sequence",
            0x0102_0304_0506_0708,
            v2(data),
            b"seq xored into the iv".to_vec(),
            "a sequence number that changes every byte of the nonce's last 8",
        ),
        (
            "gcm_last_sequence",
            u64::MAX - 1,
            v2(ping),
            b"last".to_vec(),
            "the last sequence number a sender may use (2^64 - 2)",
        ),
    ];
    for (name, seq_no, header, plaintext, note) in gcm_cases {
        let mut out = BytesMut::new();
        RecordSealer::new(RecordSuite::Aes256Gcm, &gcm_keys)
            .with_sequence(seq_no)
            .seal(header, &plaintext, &mut out)
            .expect("seal");
        let record = out.to_vec();
        let header_bytes = &record[..12];
        let ct = &record[12..record.len() - 16];
        let tag = &record[record.len() - 16..];
        w.vector(name);
        w.comment(note);
        w.string("suite", "gcm");
        w.hex("gcm_iv", &gcm_keys.iv);
        w.int("seq", seq_no);
        w.hex("plaintext", &plaintext);
        w.hex("header", header_bytes);
        w.hex("ciphertext", ct);
        w.hex("tag", tag);
        w.hex_parts("record", &[header_bytes, ct, tag]);
    }
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// keys

/// The input of a digest vector: byte `i` is `i % 251`, as in BLAKE3's own test vectors.
pub fn digest_input(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn digests() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "fetch digests (BLAKE3)",
        "Each vector gives `input_len`; the input is that many bytes, byte i being i mod 251\n\
         (BLAKE3's own test-vector input). `digest` is the FetchEnd digest of it (PROTOCOL.md\n\
         §3.7): BLAKE3's default 32-byte hash. BLAKE3 hashes 1024-byte chunks and merges them\n\
         in a binary tree, so lengths around 1024-byte boundaries and several KiB exercise the\n\
         chunk tree (`seven_chunks` is not a power of two; `eight_chunks_and_one` adds a level).",
    );
    let cases: [(&str, usize); 9] = [
        ("empty", 0),
        ("one_byte", 1),
        ("one_block", 64),
        ("one_chunk", 1024),
        ("two_chunks_partial", 1025),
        ("three_chunks_and_one", 3073),
        ("seven_chunks", 7168),
        ("eight_chunks_and_one", 8193),
        ("thirty_one_kib_and_odd", 31_744 + 7),
    ];
    for (name, len) in cases {
        w.vector(name).int("input_len", len).hex(
            "digest",
            &ferry_protocol::digest::fetch_digest(&digest_input(len)),
        );
    }
    w.finish()
}

fn keys() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "pre-shared key encodings",
        "Each vector gives `input`, the exact bytes of a --key argument / FERRY_KEY value\n\
         (`source: text`) or of a key file (`source: file`), and either the 32-byte `key` it\n\
         must parse to or `invalid: 1`. Valid vectors also give the canonical hex and base64\n\
         forms and the log fingerprint (first 8 bytes of SHA-256(key)).",
    );
    let key = Key::from_bytes(seq(0xF0));
    let raw = *key.as_bytes();
    let std_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(raw)
    };
    let cases: Vec<(&str, &str, Vec<u8>, bool)> = vec![
        ("hex_lower", "text", key.to_hex().into_bytes(), true),
        (
            "hex_upper",
            "text",
            key.to_hex().to_uppercase().into_bytes(),
            true,
        ),
        (
            "base64url_unpadded",
            "text",
            key.to_base64().into_bytes(),
            true,
        ),
        (
            "base64_standard_padded",
            "text",
            std_b64.clone().into_bytes(),
            true,
        ),
        (
            "base64_standard_unpadded",
            "text",
            std_b64.trim_end_matches('=').as_bytes().to_vec(),
            true,
        ),
        (
            "surrounding_whitespace",
            "text",
            format!("  {}\n", key.to_hex()).into_bytes(),
            true,
        ),
        (
            "file_hex_with_newline",
            "file",
            format!("{}\n", key.to_hex()).into_bytes(),
            true,
        ),
        ("file_raw_32_bytes", "file", raw.to_vec(), true),
        (
            "too_short_hex",
            "text",
            key.to_hex().as_bytes()[..62].to_vec(),
            false,
        ),
        (
            "not_hex",
            "text",
            format!("{}zz", &key.to_hex()[..62]).into_bytes(),
            false,
        ),
        (
            "base64_31_bytes",
            "text",
            {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .encode(&raw[..31])
                    .into_bytes()
            },
            false,
        ),
        ("file_31_raw_bytes", "file", raw[..31].to_vec(), false),
    ];
    for (name, source, input, valid) in cases {
        let parsed = match source {
            "text" => std::str::from_utf8(&input)
                .ok()
                .and_then(|s| s.parse::<Key>().ok()),
            _ => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("key");
                std::fs::write(&path, &input).expect("write");
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .expect("chmod");
                }
                Key::from_file_bytes(&std::fs::read(&path).expect("read key file")).ok()
            }
        };
        assert_eq!(parsed.is_some(), valid, "{name}");
        w.vector(name);
        w.field("source", source);
        w.hex("input", &input);
        match parsed {
            Some(k) => {
                w.hex("key", k.as_bytes());
                w.field("hex", k.to_hex());
                w.field("base64", k.to_base64());
                w.field("fingerprint", k.fingerprint());
            }
            None => {
                w.int("invalid", 1);
            }
        }
    }
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// negative vectors

fn negative_frames() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "malformed frame headers",
        "Each vector is a byte stream fed to a frame decoder whose body cap is `max_body`\n\
         (clamped to 16 MiB) and which accepts version 1. The decoder must fail with\n\
         `expect_code` as soon as it has the bytes given, before reading any body, and the\n\
         connection must close. `phase: handshake` vectors are the first bytes a server receives;\n\
         it must answer with exactly `expect_reply` (the opaque AUTHENTICATION_FAILED error frame)\n\
         and close.",
    );
    let ok = |kind: u8, version: u8, service: u8, id: u32, length: u32| {
        let mut h = Header::new(FrameType(kind), Service(service), RequestId(id), length);
        h.version = version;
        h.to_bytes().to_vec()
    };
    let mut auth_failed = BytesMut::new();
    write_error(
        &ferry_protocol::HandshakeError::AuthenticationFailed,
        &mut auth_failed,
    );
    let mut bad_magic = ok(0x10, 1, 0x03, 1, 0);
    bad_magic[1] = 0x00;
    let mut flipped_magic = ok(0x01, 1, 0x00, 0, 67);
    flipped_magic[1] = 0xEF;
    let mut huge_body = ok(0x12, 1, 0x03, 1, (16 << 20) + 1);
    huge_body.extend_from_slice(&[0; 4]);
    let cases: Vec<FrameCase> = vec![
        (
            "bad_magic",
            "session",
            1 << 20,
            bad_magic,
            ErrorCode::BAD_FRAME,
            "magic 0x00 instead of 0xfe",
        ),
        (
            "bad_magic_early",
            "session",
            1 << 20,
            vec![0x10, 0x00],
            ErrorCode::BAD_FRAME,
            "only two bytes: a wrong magic is rejected as soon as it arrives",
        ),
        (
            "version_zero",
            "session",
            1 << 20,
            ok(0x20, 0, 0x04, 1, 0),
            ErrorCode::UNSUPPORTED_VERSION,
            "version 0 does not exist",
        ),
        (
            "version_two",
            "session",
            1 << 20,
            ok(0x20, 2, 0x04, 1, 0),
            ErrorCode::UNSUPPORTED_VERSION,
            "version 2 is not spoken by a version-1 decoder",
        ),
        (
            "version_checked_before_length",
            "session",
            1 << 20,
            ok(0x20, 9, 0x04, 1, u32::MAX),
            ErrorCode::UNSUPPORTED_VERSION,
            "bad version and bad length: the version is checked first",
        ),
        (
            "length_over_default_cap",
            "session",
            1 << 20,
            ok(0x12, 1, 0x03, 1, (1 << 20) + 1),
            ErrorCode::TOO_LARGE,
            "1 MiB + 1 with the default cap of 1 MiB",
        ),
        (
            "length_over_hard_limit",
            "session",
            32 << 20,
            huge_body,
            ErrorCode::TOO_LARGE,
            "a cap configured above 16 MiB is clamped to 16 MiB",
        ),
        (
            "length_max_u32",
            "session",
            1 << 20,
            ok(0x12, 1, 0x03, 1, u32::MAX),
            ErrorCode::TOO_LARGE,
            "the largest length field",
        ),
        (
            "handshake_bad_magic",
            "handshake",
            2048,
            flipped_magic,
            ErrorCode::AUTHENTICATION_FAILED,
            "a ClientHello header with a flipped magic byte",
        ),
        (
            "handshake_version_two",
            "handshake",
            2048,
            ok(0x01, 2, 0x00, 0, 67),
            ErrorCode::AUTHENTICATION_FAILED,
            "handshake frames always carry version 1",
        ),
        (
            "handshake_too_large",
            "handshake",
            2048,
            ok(0x01, 1, 0x00, 0, 2049),
            ErrorCode::AUTHENTICATION_FAILED,
            "handshake bodies are capped at 2048 bytes",
        ),
    ];
    for (name, phase, max_body, input, code, note) in cases {
        // Check the implementation agrees before freezing.
        let mut decoder = if phase == "handshake" {
            handshake_decoder()
        } else {
            FrameDecoder::new(max_body)
        };
        let err = decoder
            .decode(&mut BytesMut::from(&input[..]))
            .expect_err("must be rejected");
        if phase == "session" {
            assert_eq!(err.code(), code, "{name}");
        }
        w.vector(name);
        w.comment(note);
        w.field("phase", phase);
        w.int("max_body", max_body);
        w.hex("input", &input);
        code_fields(&mut w, code);
        if phase == "handshake" {
            w.frame("expect_reply", &auth_failed);
        }
    }
    w.finish()
}

fn negative_messages() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "malformed message bodies",
        "Each vector is a complete frame whose header is fine but whose (type, service, body) is\n\
         not a legal message. Decoding it must fail with `expect_code`. What the receiver then\n\
         does is in PROTOCOL.md section 9: UNKNOWN_REQUEST on a non-zero id is answered on that\n\
         id and the connection continues; BAD_FRAME and MALFORMED_MESSAGE close the connection\n\
         (ERROR with id 0). During the handshake every one of them is AUTHENTICATION_FAILED.",
    );
    let entry_ok = {
        let mut b = Vec::new();
        entry("a", EntryKind::FILE, 1, 0, 0, 0o644).encode(&mut b);
        b
    };
    let mut bad_nanos = entry_ok.clone();
    let n = bad_nanos.len();
    bad_nanos[n - 8..n - 4].copy_from_slice(&1_000_000_000u32.to_be_bytes());
    let fetch_response = |size: u64, offset: u64, length: u64| {
        let mut b = Vec::new();
        FetchResponse {
            size,
            mtime_secs: 0,
            mtime_nanos: 0,
            offset,
            length,
        }
        .encode(&mut b);
        b
    };
    let digest_ok = {
        let mut b = Vec::new();
        DigestResponse {
            size: 1,
            mtime_secs: 0,
            mtime_nanos: 0,
            digest: [0; 32],
        }
        .encode(&mut b);
        b
    };
    let put_request = {
        let mut b = Vec::new();
        PutRequest::new("a", 1, 0o644, 0, [0; 32])
            .expect("short path")
            .encode(&mut b);
        b
    };
    let put_response = |offset: u64, limit: u64| {
        let mut b = Vec::new();
        PutResponse {
            offset,
            limit,
            prefix: [0; 32],
        }
        .encode(&mut b);
        b
    };
    let mut digest_bad_nanos = digest_ok.clone();
    digest_bad_nanos[16..20].copy_from_slice(&1_000_000_000u32.to_be_bytes());
    let mut hello = Vec::new();
    ClientHello {
        min_version: 1,
        max_version: 1,
        mode: Mode::ENCRYPTED,
        nonce: [1; 32],
        key_share: [9; 32],
        suites: SuiteOffer::default(),
        key_hint: None,
        rest: Bytes::new(),
    }
    .encode(&mut hello);
    let with = |base: &[u8], at: usize, byte: u8| {
        let mut b = base.to_vec();
        b[at] = byte;
        b
    };
    let mut trailing = Vec::new();
    ListEnd { entries: 1 }.encode(&mut trailing);
    trailing.push(0);
    let mut page_short = vec![0x00, 0x02];
    page_short.extend_from_slice(&entry_ok);
    let cases: Vec<MessageCase> = vec![
        (
            "unknown_type",
            0x7F,
            0x03,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
            "type 0x7f does not exist",
        ),
        (
            "unknown_service",
            0x10,
            0x09,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
            "REQUEST to service 0x09, which does not exist",
        ),
        (
            "tracker_service_on_file_server",
            0x10,
            0x40,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
            "a reserved tracker service is not part of the core protocol",
        ),
        (
            "data_for_list",
            0x12,
            0x01,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
            "DATA is only legal for FETCH",
        ),
        (
            "request_for_echo",
            0x10,
            0x04,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
            "ECHO takes PING, not REQUEST",
        ),
        (
            "ping_for_fetch",
            0x20,
            0x03,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
            "PING is only legal for ECHO",
        ),
        (
            "hello_for_list",
            0x01,
            0x01,
            hello.clone(),
            ErrorCode::UNKNOWN_REQUEST,
            "handshake types are only legal for HANDSHAKE",
        ),
        (
            "cancel_for_echo",
            0x15,
            0x04,
            vec![],
            ErrorCode::UNKNOWN_REQUEST,
            "only list, stat and fetch requests can be cancelled",
        ),
        (
            "cancel_with_body",
            0x15,
            0x03,
            vec![0],
            ErrorCode::MALFORMED_MESSAGE,
            "CANCEL has an empty body",
        ),
        (
            "trailing_byte",
            0x13,
            0x01,
            trailing,
            ErrorCode::MALFORMED_MESSAGE,
            "ListEnd with one byte too many",
        ),
        (
            "string_truncated",
            0x10,
            0x02,
            vec![0x00, 0x05, b'a', b'b'],
            ErrorCode::MALFORMED_MESSAGE,
            "StatRequest path claims 5 bytes, has 2 (a truncated body is MALFORMED_MESSAGE)",
        ),
        (
            "body_truncated",
            0x10,
            0x03,
            vec![0x00, 0x01, b'a', 0, 0, 0, 0, 0, 0, 0, 0],
            ErrorCode::MALFORMED_MESSAGE,
            "FetchRequest without its length field",
        ),
        (
            "empty_body",
            0x13,
            0x03,
            vec![],
            ErrorCode::MALFORMED_MESSAGE,
            "FetchEnd with no body",
        ),
        (
            "bad_utf8",
            0x10,
            0x02,
            vec![0x00, 0x02, 0xC3, 0x28],
            ErrorCode::MALFORMED_MESSAGE,
            "path is not UTF-8",
        ),
        (
            "overlong_utf8",
            0x10,
            0x02,
            vec![0x00, 0x02, 0xC0, 0xAF],
            ErrorCode::MALFORMED_MESSAGE,
            "overlong encoding of '/' is not UTF-8",
        ),
        (
            "list_unknown_flag",
            0x10,
            0x01,
            vec![0x00, 0x00, 0x02, 0x00, 0x00],
            ErrorCode::MALFORMED_MESSAGE,
            "ListRequest flag 0x02 is undefined",
        ),
        (
            "digest_response_bad_nanos",
            0x11,
            0x05,
            digest_bad_nanos,
            ErrorCode::MALFORMED_MESSAGE,
            "DigestResponse with mtime_nanos = 10^9",
        ),
        (
            "digest_response_truncated",
            0x11,
            0x05,
            digest_ok[..51].to_vec(),
            ErrorCode::MALFORMED_MESSAGE,
            "DigestResponse one byte short of its 52",
        ),
        (
            "entry_bad_nanos",
            0x11,
            0x02,
            bad_nanos,
            ErrorCode::MALFORMED_MESSAGE,
            "StatResponse with mtime_nanos = 10^9",
        ),
        (
            "list_page_count_too_high",
            0x11,
            0x01,
            page_short,
            ErrorCode::MALFORMED_MESSAGE,
            "ListPage says 2 entries, holds 1",
        ),
        (
            "fetch_response_past_end",
            0x11,
            0x03,
            fetch_response(100, 50, 51),
            ErrorCode::MALFORMED_MESSAGE,
            "offset + length > size",
        ),
        (
            "fetch_response_overflow",
            0x11,
            0x03,
            fetch_response(u64::MAX, u64::MAX, 1),
            ErrorCode::MALFORMED_MESSAGE,
            "offset + length overflows u64",
        ),
        (
            "client_hello_min_version_zero",
            0x01,
            0x00,
            with(&hello, 0, 0),
            ErrorCode::MALFORMED_MESSAGE,
            "min_version 0",
        ),
        (
            "client_hello_min_above_max",
            0x01,
            0x00,
            with(&with(&hello, 0, 3), 1, 2),
            ErrorCode::MALFORMED_MESSAGE,
            "min_version 3 > max_version 2",
        ),
        (
            "client_hello_bad_mode",
            0x01,
            0x00,
            with(&hello, 2, 2),
            ErrorCode::MALFORMED_MESSAGE,
            "mode 2 is undefined",
        ),
        (
            "finished_short",
            0x03,
            0x00,
            vec![0; 31],
            ErrorCode::MALFORMED_MESSAGE,
            "ServerFinished MAC of 31 bytes",
        ),
        (
            "error_truncated",
            0x14,
            0x03,
            vec![0x03, 0x03],
            ErrorCode::MALFORMED_MESSAGE,
            "error body cut inside the code",
        ),
        (
            "put_request_unknown_flag",
            0x10,
            0x06,
            with(&put_request, put_request.len() - 33, 0x10),
            ErrorCode::MALFORMED_MESSAGE,
            "PutRequest flag 0x10 is undefined",
        ),
        (
            "put_request_directory_with_size",
            0x10,
            0x06,
            // The base request's size is 1.
            with(&put_request, put_request.len() - 33, 0x08),
            ErrorCode::MALFORMED_MESSAGE,
            "PutRequest DIRECTORY with size 1: a directory carries no content",
        ),
        (
            "put_request_mode_too_large",
            0x10,
            0x06,
            with(&put_request, put_request.len() - 35, 0x10),
            ErrorCode::MALFORMED_MESSAGE,
            "PutRequest mode 0x10a4 has a bit above 0o7777 (0xfff)",
        ),
        (
            "put_request_truncated",
            0x10,
            0x06,
            put_request[..put_request.len() - 1].to_vec(),
            ErrorCode::MALFORMED_MESSAGE,
            "PutRequest one byte short of its digest",
        ),
        (
            "put_response_limit_below_offset",
            0x11,
            0x06,
            put_response(10, 9),
            ErrorCode::MALFORMED_MESSAGE,
            "PutResponse limit 9 below offset 10",
        ),
        (
            "put_end_trailing",
            0x13,
            0x06,
            [vec![0; 40], vec![0]].concat(),
            ErrorCode::MALFORMED_MESSAGE,
            "PutEnd of 41 bytes",
        ),
    ];
    for (name, kind, service, body, code, note) in cases {
        let err = Message::decode(FrameType(kind), Service(service), Bytes::from(body.clone()))
            .expect_err("must be rejected");
        assert_eq!(err.code(), code, "{name}: {err}");
        let mut frame = Header::new(
            FrameType(kind),
            Service(service),
            RequestId(u32::from(kind != 0x01 && kind != 0x03)),
            body.len() as u32,
        )
        .to_bytes()
        .to_vec();
        frame.extend_from_slice(&body);
        w.vector(name);
        w.comment(note);
        w.frame("frame", &frame);
        code_fields(&mut w, code);
    }
    w.finish()
}

fn raw_record(
    keys: &DirectionKeys,
    seq_no: u64,
    header: Header,
    iv: [u8; 16],
    blocks: &[u8],
) -> Vec<u8> {
    // Encrypts whole blocks without padding and MACs them correctly: a record whose tag is
    // valid but whose padding is not.
    assert_eq!(blocks.len() % 16, 0);
    let mut ct = blocks.to_vec();
    cbc::Encryptor::<aes::Aes256>::new(&keys.enc.into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut ct, blocks.len())
        .expect("whole blocks");
    let mut header = header;
    header.length = (16 + ct.len() + 32) as u32;
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&iv);
    out.extend_from_slice(&ct);
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&keys.mac).expect("any length");
    mac.update(&seq_no.to_be_bytes());
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

fn negative_records() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "records that must be rejected",
        "Each vector is a whole frame (`record`) received at sequence number `seq` by a session\n\
         using the file-wide keys. Opening it must fail with BAD_RECORD (0x0203), one opaque\n\
         error whatever the cause, and the connection must close.",
    );
    let keys = record_keys();
    w.hex("enc_key", &keys.enc);
    w.hex("mac_key", &keys.mac);
    let iv: [u8; 16] = std::array::from_fn(|i| 0x40 + i as u8);
    let header = Header::new(FrameType::DATA, Service::FETCH, RequestId(7), 0);
    let good = seal_at(&keys, 0, header, b"attack at dawn", iv);
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x01;
        b
    };
    let n = good.len();
    let other = DirectionKeys {
        iv: [0; 12],
        enc: keys.mac,
        mac: keys.enc,
    };
    let reflected = seal_at(&other, 0, header, b"attack at dawn", iv);
    let with_len = |body: Vec<u8>| {
        let mut h = header;
        h.length = body.len() as u32;
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    let mut truncated_block = good[12..n - 32 - 16].to_vec();
    truncated_block.extend_from_slice(&good[n - 32..]);
    let mut zero_pad = [0u8; 16];
    zero_pad[15] = 0x00;
    let mut pad_17 = [0u8; 16];
    pad_17[15] = 17;
    let mut pad_mixed = [0x04u8; 16];
    pad_mixed[12] = 0x05;
    let cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        ("tag_bit_flipped", 0, flip(n - 1), "last bit of the tag"),
        (
            "ciphertext_bit_flipped",
            0,
            flip(12 + 16),
            "first ciphertext byte",
        ),
        ("iv_bit_flipped", 0, flip(12), "first IV byte"),
        (
            "header_id_changed",
            0,
            flip(7),
            "request id 7 became 6: the header is authenticated",
        ),
        (
            "header_type_changed",
            0,
            flip(0),
            "type DATA (0x12) became 0x13",
        ),
        (
            "replayed",
            1,
            good.clone(),
            "a valid record for seq 0 received again at seq 1",
        ),
        (
            "wrong_direction",
            0,
            reflected,
            "sealed with other keys (e.g. reflected back to its sender)",
        ),
        (
            "block_removed",
            0,
            with_len(truncated_block),
            "last ciphertext block removed, header length adjusted",
        ),
        ("empty_body", 0, with_len(Vec::new()), "length 0"),
        (
            "too_short",
            0,
            with_len(vec![0; 47]),
            "47 bytes: shorter than IV + one block + tag (64)",
        ),
        (
            "no_ciphertext",
            0,
            with_len(vec![0; 48]),
            "IV and tag but no ciphertext block",
        ),
        (
            "not_block_aligned",
            0,
            with_len(vec![0; 65]),
            "ciphertext of 17 bytes",
        ),
        (
            "valid_tag_zero_padding",
            0,
            raw_record(&keys, 0, header, iv, &zero_pad),
            "tag verifies, last plaintext byte is 0x00",
        ),
        (
            "valid_tag_padding_17",
            0,
            raw_record(&keys, 0, header, iv, &pad_17),
            "tag verifies, padding byte 17 > 16",
        ),
        (
            "valid_tag_inconsistent_padding",
            0,
            raw_record(&keys, 0, header, iv, &pad_mixed),
            "tag verifies, padding 04 04 04 04 claims four bytes but one is 05",
        ),
    ];
    for (name, seq_no, record, note) in cases {
        let header = Header::decode(&record[..12]).expect("header parses");
        let result =
            ferry_protocol::crypto::RecordOpener::new(RecordSuite::Aes256CbcHmacSha256, &keys)
                .with_sequence(seq_no)
                .open(&header, BytesMut::from(&record[12..]));
        assert_eq!(
            result,
            Err(ferry_protocol::CryptoError::BadRecord),
            "{name}"
        );
        w.vector(name);
        w.comment(note);
        w.int("seq", seq_no);
        w.frame("record", &record);
        code_fields(&mut w, ErrorCode::BAD_RECORD);
    }

    // AES_256_GCM (spec §5.3.2, §5.4): the GCM record keys of records.txt.
    let gcm_keys = gcm_record_keys();
    let mut gcm_header = header;
    gcm_header.version = 2;
    let mut good = BytesMut::new();
    RecordSealer::new(RecordSuite::Aes256Gcm, &gcm_keys)
        .seal(gcm_header, b"attack at dawn", &mut good)
        .expect("seal");
    let good = good.to_vec();
    let n = good.len();
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x01;
        b
    };
    let gcm_len = |body: Vec<u8>| {
        let mut h = gcm_header;
        h.length = body.len() as u32;
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    let mut other_iv = gcm_keys.clone();
    other_iv.iv[0] ^= 0x80;
    let mut reflected = BytesMut::new();
    RecordSealer::new(RecordSuite::Aes256Gcm, &other_iv)
        .seal(gcm_header, b"attack at dawn", &mut reflected)
        .expect("seal");
    let mut byte_removed = good[12..n - 17].to_vec();
    byte_removed.extend_from_slice(&good[n - 16..]);
    let gcm_cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        ("gcm_tag_bit_flipped", 0, flip(n - 1), "last bit of the tag"),
        (
            "gcm_ciphertext_bit_flipped",
            0,
            flip(12),
            "first ciphertext byte",
        ),
        (
            "gcm_header_id_changed",
            0,
            flip(7),
            "request id 7 became 6: the header is the associated data",
        ),
        (
            "gcm_header_version_changed",
            0,
            {
                let mut b = good.clone();
                b[2] = 1;
                b
            },
            "header version 2 became 1 (a receiver's framing rejects that first; the record \n\
             layer alone must too)",
        ),
        (
            "gcm_replayed",
            1,
            good.clone(),
            "a valid record for seq 0 received again at seq 1: another nonce",
        ),
        (
            "gcm_wrong_direction",
            0,
            reflected.to_vec(),
            "sealed under another IV (the other direction's), e.g. reflected back",
        ),
        (
            "gcm_byte_removed",
            0,
            gcm_len(byte_removed),
            "last ciphertext byte removed, header length adjusted",
        ),
        (
            "gcm_tag_truncated",
            0,
            gcm_len(good[12..n - 1].to_vec()),
            "the tag's last byte removed, header length adjusted",
        ),
        ("gcm_empty_body", 0, gcm_len(Vec::new()), "length 0"),
        (
            "gcm_too_short",
            0,
            gcm_len(vec![0; 15]),
            "15 bytes: shorter than a tag",
        ),
    ];
    for (name, seq_no, record, note) in gcm_cases {
        let header = Header::decode(&record[..12]).expect("header parses");
        let result = ferry_protocol::crypto::RecordOpener::new(RecordSuite::Aes256Gcm, &gcm_keys)
            .with_sequence(seq_no)
            .open(&header, BytesMut::from(&record[12..]));
        assert_eq!(
            result,
            Err(ferry_protocol::CryptoError::BadRecord),
            "{name}"
        );
        w.vector(name);
        w.comment(note);
        w.string("suite", "gcm");
        w.hex("gcm_iv", &gcm_keys.iv);
        w.int("seq", seq_no);
        w.frame("record", &record);
        code_fields(&mut w, ErrorCode::BAD_RECORD);
    }
    w.finish()
}

/// A role and what it receives, for one negative handshake vector.
struct HandshakeCase {
    name: String,
    note: &'static str,
    role: &'static str,
    /// Client: the mode it asks for. Server: whether it allows plaintext.
    plaintext: bool,
    /// The server's PSK (the client always uses [`psk`]).
    server_psk: Key,
    recv: Vec<Vec<u8>>,
    code: ErrorCode,
}

fn client_hello_frame(mutate: impl FnOnce(&mut ClientHello)) -> Vec<u8> {
    let secret = StaticSecret::from(client_randomness().secret);
    let mut hello = ClientHello {
        min_version: 1,
        max_version: 1,
        mode: Mode::ENCRYPTED,
        nonce: client_randomness().nonce,
        key_share: PublicKey::from(&secret).to_bytes(),
        suites: SuiteOffer::default(),
        key_hint: None,
        rest: Bytes::new(),
    };
    mutate(&mut hello);
    frame_bytes(RequestId(0), &Message::ClientHello(hello))
}

/// What a server with `server_psk` sends in reply to the standard ClientHello.
fn server_flight(server_psk: Key, mutate: impl FnOnce(&mut ServerHello)) -> Vec<Vec<u8>> {
    let mut server = ServerHandshake::with_randomness(
        ServerHandshakeConfig::new(server_psk.clone()),
        server_randomness(),
    );
    let mut out = BytesMut::new();
    server
        .handle_frame(decode_one(&client_hello_frame(|_| {})), &mut out)
        .expect("server accepts");
    let frames = split_frames(&out);
    let mut hello = match decode_one(&frames[0]).message().expect("decodes") {
        Message::ServerHello(h) => h,
        other => panic!("expected ServerHello, got {other:?}"),
    };
    mutate(&mut hello);
    vec![
        frame_bytes(RequestId(0), &Message::ServerHello(hello)),
        frames[1].clone(),
    ]
}

fn negative_handshake() -> String {
    let mut w = Writer::default();
    preamble(
        &mut w,
        "handshakes that must fail",
        "Each vector runs one side of the handshake (`role`) with `psk` and that side's fixed\n\
         randomness (the same as handshake.txt), then feeds it the `recv` frames in order. Every\n\
         frame but the last must be accepted; the last must fail the handshake with\n\
         `expect_code`. The failing side then sends exactly `expect_error_frame` (plaintext,\n\
         version 1, id 0) and closes. `plaintext` is the mode a client asks for, or whether a\n\
         server allows plaintext.",
    );
    w.hex("psk", psk().as_bytes());
    w.hex("client_nonce", &client_randomness().nonce);
    w.hex("client_secret", &client_randomness().secret);
    w.hex("server_nonce", &server_randomness().nonce);
    w.hex("server_secret", &server_randomness().secret);

    let low_order: [(&str, &str); 5] = [
        (
            "zero",
            "0000000000000000000000000000000000000000000000000000000000000000",
        ),
        (
            "one",
            "0100000000000000000000000000000000000000000000000000000000000000",
        ),
        (
            "order_8",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        ),
        (
            "order_8_b",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        ),
        (
            "p_minus_1",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ),
    ];
    let other_psk = Key::from_bytes([0x55; 32]);
    let guess = frame_bytes(
        RequestId(0),
        &Message::ClientFinished(Finished { mac: [0x42; 32] }),
    );
    let mut cases = vec![
        HandshakeCase {
            name: "server_wrong_client_finished".into(),
            note: "a client without the key guesses ClientFinished",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![client_hello_frame(|_| {}), guess.clone()],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "server_plaintext_refused".into(),
            note: "the client asks for plaintext; the server does not allow it",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![client_hello_frame(|h| h.mode = Mode::PLAINTEXT)],
            code: ErrorCode::PLAINTEXT_REFUSED,
        },
        HandshakeCase {
            name: "server_no_common_version".into(),
            note:
                "the client speaks only versions 3..=4 (with a suite offer, as versions from 2 on\n\
                   carry one); the server speaks 1..=2",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![client_hello_frame(|h| {
                h.min_version = 3;
                h.max_version = 4;
                h.suites = SuiteOffer::new([SuiteId::AES_256_GCM]).expect("valid offer");
            })],
            code: ErrorCode::UNSUPPORTED_VERSION,
        },
        HandshakeCase {
            name: "server_newer_client_is_fine_then_bad_finished".into(),
            note: "a client offering 1..=5 (and GCM) gets version 2 (accepted); a wrong\n\
                   ClientFinished follows",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![
                client_hello_frame(|h| {
                    h.max_version = 5;
                    h.suites = SuiteOffer::new([SuiteId::AES_256_GCM]).expect("valid offer");
                }),
                guess.clone(),
            ],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "server_malformed_hello".into(),
            note: "ClientHello with mode 2: malformed input looks exactly like a wrong key",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![client_hello_frame(|h| h.mode = Mode(2))],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "server_finished_first".into(),
            note: "ClientFinished before ClientHello (out of order)",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![guess.clone()],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "server_request_first".into(),
            note: "a request before the handshake",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![frame_bytes(
                RequestId(1),
                &Message::StatRequest(StatRequest::new("a").expect("short")),
            )],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "server_hello_twice".into(),
            note: "a second ClientHello instead of ClientFinished",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![client_hello_frame(|_| {}), client_hello_frame(|_| {})],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "client_wrong_psk".into(),
            note: "the server holds a different key: ServerFinished does not verify",
            role: "client",
            plaintext: false,
            server_psk: other_psk.clone(),
            recv: server_flight(other_psk.clone(), |_| {}),
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "client_mode_downgrade".into(),
            note: "ServerHello says plaintext although the client asked for encryption",
            role: "client",
            plaintext: false,
            server_psk: psk(),
            recv: vec![server_flight(psk(), |h| h.mode = Mode::PLAINTEXT).remove(0)],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "client_version_not_offered".into(),
            note: "ServerHello picks version 2, which the client did not offer",
            role: "client",
            plaintext: false,
            server_psk: psk(),
            recv: vec![server_flight(psk(), |h| h.version = 2).remove(0)],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "client_tampered_server_nonce".into(),
            note:
                "an attacker changed the server nonce: the transcript differs, ServerFinished fails",
            role: "client",
            plaintext: false,
            server_psk: psk(),
            recv: server_flight(psk(), |h| h.nonce[0] ^= 1),
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "client_finished_first".into(),
            note: "ServerFinished before ServerHello",
            role: "client",
            plaintext: false,
            server_psk: psk(),
            recv: vec![server_flight(psk(), |_| {}).remove(1)],
            code: ErrorCode::AUTHENTICATION_FAILED,
        },
        HandshakeCase {
            name: "client_refused_plaintext".into(),
            note: "the server's PLAINTEXT_REFUSED error frame ends the client's handshake",
            role: "client",
            plaintext: true,
            server_psk: psk(),
            recv: vec![{
                let mut out = BytesMut::new();
                write_error(&ferry_protocol::HandshakeError::PlaintextRefused, &mut out);
                out.to_vec()
            }],
            code: ErrorCode::PLAINTEXT_REFUSED,
        },
    ];
    // Version 2 (the client offers GCM, then CBC + HMAC, and its hint): what a server chooses
    // is covered by the Finished MACs.
    let v2_hello = {
        let mut out = BytesMut::new();
        ClientHandshake::start_with(
            ClientHandshakeConfig::new(psk()),
            client_randomness(),
            &mut out,
        );
        out.to_vec()
    };
    let mut rewritten = match decode_one(&v2_hello).message().expect("decodes") {
        Message::ClientHello(h) => h,
        other => panic!("expected ClientHello, got {other:?}"),
    };
    rewritten.suites = SuiteOffer::new([SuiteId::AES_256_CBC_HMAC_SHA256]).expect("valid offer");
    let rewritten = frame_bytes(RequestId(0), &Message::ClientHello(rewritten));
    let answer_to = |hello: &[u8]| {
        let mut server = ServerHandshake::with_randomness(
            ServerHandshakeConfig::new(psk()),
            server_randomness(),
        );
        let mut out = BytesMut::new();
        server
            .handle_frame(decode_one(hello), &mut out)
            .expect("server accepts");
        split_frames(&out)
    };
    cases.push(HandshakeCase {
        name: "client_v2_rewritten_suite_offer".into(),
        note: "a man in the middle rewrote the client's offer (GCM, CBC + HMAC) to CBC + HMAC\n\
               alone; the server's answer chooses CBC + HMAC, which the client offered, so the\n\
               ServerHello is accepted, but the server's TH covers the rewritten hello: its\n\
               ServerFinished does not verify",
        role: "client",
        plaintext: false,
        server_psk: psk(),
        recv: answer_to(&rewritten),
        code: ErrorCode::AUTHENTICATION_FAILED,
    });
    cases.push(HandshakeCase {
        name: "client_v2_suite_not_offered".into(),
        note: "a ServerHello choosing suite 0x7f, which the client did not offer",
        role: "client",
        plaintext: false,
        server_psk: psk(),
        recv: vec![{
            let mut hello = match decode_one(&answer_to(&v2_hello)[0])
                .message()
                .expect("decodes")
            {
                Message::ServerHello(h) => h,
                other => panic!("expected ServerHello, got {other:?}"),
            };
            hello.suite = Some(SuiteId(0x7f));
            frame_bytes(RequestId(0), &Message::ServerHello(hello))
        }],
        code: ErrorCode::AUTHENTICATION_FAILED,
    });
    cases.push(HandshakeCase {
        name: "server_v2_no_common_suite".into(),
        note: "a version-2 hello offering only suite 0x7f, unknown to the server",
        role: "server",
        plaintext: false,
        server_psk: psk(),
        recv: vec![client_hello_frame(|h| {
            h.max_version = 2;
            h.suites = SuiteOffer::new([SuiteId(0x7f)]).expect("valid offer");
        })],
        code: ErrorCode::UNSUPPORTED_VERSION,
    });
    for (label, share) in low_order {
        let share = arr(share);
        cases.push(HandshakeCase {
            name: format!("server_low_order_share_{label}"),
            note: "a ClientHello whose key share makes the X25519 output all zeros",
            role: "server",
            plaintext: false,
            server_psk: psk(),
            recv: vec![client_hello_frame(|h| h.key_share = share)],
            code: ErrorCode::AUTHENTICATION_FAILED,
        });
        cases.push(HandshakeCase {
            name: format!("client_low_order_share_{label}"),
            note: "a ServerHello whose key share makes the X25519 output all zeros",
            role: "client",
            plaintext: false,
            server_psk: psk(),
            recv: vec![server_flight(psk(), |h| h.key_share = share).remove(0)],
            code: ErrorCode::AUTHENTICATION_FAILED,
        });
    }
    for case in cases {
        let error = run_handshake_case(&case);
        assert_eq!(error.code(), case.code, "{}", case.name);
        let mut error_frame = BytesMut::new();
        write_error(&error, &mut error_frame);
        w.vector(&case.name);
        w.comment(case.note);
        w.field("role", case.role);
        w.int("plaintext", u8::from(case.plaintext));
        if case.name.starts_with("client_v2_") {
            w.comment("the client offers, most preferred first:");
            w.string("client_suites", "gcm cbc-hmac");
        }
        if case.server_psk != psk() {
            w.comment("the server's key differs from `psk`:");
            w.hex("server_psk", case.server_psk.as_bytes());
        }
        for frame in &case.recv {
            w.frame("recv", frame);
        }
        code_fields(&mut w, case.code);
        // A side whose handshake ends because it received an ERROR frame does not answer it.
        let got_error = case.recv.last().is_some_and(|f| f[0] == FrameType::ERROR.0);
        if !got_error {
            w.frame("expect_error_frame", &error_frame);
        }
    }
    w.finish()
}

fn run_handshake_case(case: &HandshakeCase) -> ferry_protocol::HandshakeError {
    let mut out = BytesMut::new();
    let frames: Vec<Frame> = case.recv.iter().map(|f| decode_one(f)).collect();
    let (last, rest) = frames.split_last().expect("at least one frame");
    if case.role == "server" {
        let mut config = ServerHandshakeConfig::new(case.server_psk.clone());
        config.allow_plaintext = case.plaintext;
        let mut server = ServerHandshake::with_randomness(config, server_randomness());
        for frame in rest {
            server
                .handle_frame(frame.clone(), &mut out)
                .expect("accepted");
        }
        server
            .handle_frame(last.clone(), &mut out)
            .expect_err("fails")
    } else {
        // Clients of the version-1 cases offer CBC + HMAC alone: version 1's hello.
        let suites = if case.name.starts_with("client_v2_") {
            RecordSuite::DEFAULT_SUITES.to_vec()
        } else {
            vec![RecordSuite::Aes256CbcHmacSha256]
        };
        let config = ClientHandshakeConfig::new(psk())
            .plaintext(case.plaintext)
            .with_suites(suites);
        let mut client = ClientHandshake::start_with(config, client_randomness(), &mut out);
        for frame in rest {
            client
                .handle_frame(frame.clone(), &mut out)
                .expect("accepted");
        }
        client
            .handle_frame(last.clone(), &mut out)
            .expect_err("fails")
    }
}
