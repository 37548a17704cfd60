//! The offer vectors (spec §3.13, `spec/vectors/offer.txt`): OfferRequest and OfferResponse
//! bodies built from their fields, and bodies a receiver must refuse as `MALFORMED_MESSAGE`.
//! Checked both ways: encoding the fields gives the body, decoding the body gives the fields.
//! The file is frozen: regenerate only on purpose.

// Helpers outside #[test] fns unwrap too: a vector that does not load should fail loudly.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod common;

use bytes::Bytes;
use common::{Vector, Writer};
use ferry_protocol::message::{offer_flags, OfferItem, OfferRequest, OfferResponse, OfferSet};
use ferry_protocol::{DecodeError, ErrorCode, FrameType, Message, Service};

/// Regenerates the file. Run only on purpose and review the diff.
#[test]
#[ignore = "writes spec/vectors; run explicitly to regenerate"]
fn regenerate_offer_vectors() {
    std::fs::write(common::vectors_dir().join("offer.txt"), file()).unwrap();
}

#[test]
fn offer_vector_file_is_current() {
    let on_disk = std::fs::read_to_string(common::vectors_dir().join("offer.txt")).unwrap();
    assert_eq!(on_disk, file(), "offer.txt");
}

/// Every vector, read back from the file alone: the fields build the body, and the body
/// decodes to the fields; refused bodies fail with the code the file names.
#[test]
fn offer_vectors_decode_and_encode() {
    let vectors = common::load("offer.txt");
    assert!(vectors.len() >= 10, "{} vectors", vectors.len());
    for v in &vectors {
        let kind = FrameType(v.u8("type"));
        let service = Service(v.u8("service"));
        assert_eq!(service, Service::OFFER, "{}", v.name);
        let body = Bytes::from(v.hex("body"));
        if v.has("expect_code") {
            let error = Message::decode(kind, service, body).unwrap_err();
            assert_eq!(error.code(), ErrorCode(v.u16("expect_code")), "{}", v.name);
            continue;
        }
        let built = from_fields(v);
        assert_eq!(built.kind(), (kind, service), "{}", v.name);
        assert_eq!(built.to_bytes(), body, "{}: encoding the fields", v.name);
        assert_eq!(
            Message::decode(kind, service, body).unwrap(),
            built,
            "{}: decoding the body",
            v.name
        );
    }
}

fn from_fields(v: &Vector) -> Message {
    match v.raw("message") {
        "OfferRequest" => Message::OfferRequest(OfferRequest {
            items: (0..v.u16("count"))
                .map(|i| OfferItem {
                    path: v.string(&format!("item{i}.path")),
                    size: v.u64(&format!("item{i}.size")),
                    mode: v.u32(&format!("item{i}.mode")),
                    flags: v.u8(&format!("item{i}.flags")),
                    digest: v.array(&format!("item{i}.digest")),
                })
                .collect(),
            set: v.has("set.items").then(|| OfferSet {
                items: v.u32("set.items"),
                bytes: v.u64("set.bytes"),
            }),
        }),
        "OfferResponse" => Message::OfferResponse(OfferResponse {
            codes: (0..v.u16("count"))
                .map(|i| ErrorCode(v.u16(&format!("code{i}"))))
                .collect(),
        }),
        other => panic!("{}: unknown message {other}", v.name),
    }
}

fn counting(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn file() -> String {
    let mut w = Writer::default();
    w.comment(
        "Ferry protocol golden vectors: offers (PROTOCOL.md §3.13)\n\
         Format: spec/vectors/README.md. Generated from the reference implementation, then frozen.\n\
         Each vector: `type` and `service` of the frame, `message`, the fields, and `body`.\n\
         OfferRequest: `count`, then per item i `itemI.path`, `.size`, `.mode`, `.flags`,\n\
         `.digest`, then `set.items` and `set.bytes` for an offer of a set (rule 4).\n\
         OfferResponse: `count`, then `codeI` per item (0x0000 = taken).\n\
         A vector with `expect_code` is a body a receiver must refuse with that code.",
    );
    let file = OfferItem {
        path: "report.pdf".into(),
        size: 1_048_576,
        mode: 0o644,
        flags: 0,
        digest: counting(0x10),
    };
    let tree = [
        OfferItem {
            path: "photos/2024/a.jpg".into(),
            size: 5,
            mode: 0o600,
            flags: 0,
            digest: counting(0x40),
        },
        OfferItem {
            path: "photos/empty".into(),
            size: 0,
            mode: 0o755,
            flags: offer_flags::DIRECTORY,
            digest: [0; 32],
        },
        OfferItem {
            path: "é.txt".into(),
            size: 0,
            mode: 0o7777,
            flags: 0,
            digest: counting(0xf0),
        },
    ];
    let set = OfferSet {
        items: 40_000,
        bytes: 5_368_709_120,
    };
    let requests = [
        ("offer_one_file", vec![file.clone()], None),
        ("offer_tree", tree.to_vec(), None),
        ("offer_part_of_a_set", vec![file.clone()], Some(set)),
    ];
    for (name, items, set) in requests {
        let message = Message::OfferRequest(OfferRequest {
            items: items.clone(),
            set,
        });
        w.vector(name)
            .hexint("type", FrameType::REQUEST.0.into(), 2)
            .hexint("service", Service::OFFER.0.into(), 2)
            .field("message", "OfferRequest")
            .int("count", items.len());
        for (i, item) in items.iter().enumerate() {
            w.string(&format!("item{i}.path"), &item.path)
                .int(&format!("item{i}.size"), item.size)
                .hexint(&format!("item{i}.mode"), item.mode.into(), 4)
                .hexint(&format!("item{i}.flags"), item.flags.into(), 2)
                .hex(&format!("item{i}.digest"), &item.digest);
        }
        if let Some(set) = set {
            w.int("set.items", set.items).int("set.bytes", set.bytes);
        }
        w.hex("body", &message.to_bytes());
    }
    let responses = [
        ("answer_taken", vec![OfferResponse::ACCEPTED]),
        (
            "answer_mixed",
            vec![
                OfferResponse::ACCEPTED,
                ErrorCode::INVALID_PATH,
                ErrorCode::ALREADY_EXISTS,
                ErrorCode::ALREADY_HAVE,
                ErrorCode::OFFER_DECLINED,
            ],
        ),
        ("answer_empty", vec![]),
    ];
    for (name, codes) in responses {
        let message = Message::OfferResponse(OfferResponse {
            codes: codes.clone(),
        });
        w.vector(name)
            .hexint("type", FrameType::RESPONSE.0.into(), 2)
            .hexint("service", Service::OFFER.0.into(), 2)
            .field("message", "OfferResponse")
            .int("count", codes.len());
        for (i, code) in codes.iter().enumerate() {
            w.hexint(&format!("code{i}"), code.0.into(), 4);
        }
        w.hex("body", &message.to_bytes());
    }

    // Refused: each breaks one rule of §3.13 (or §3.1's exact consumption).
    let good = Message::OfferRequest(OfferRequest {
        items: vec![file.clone()],
        set: None,
    })
    .to_bytes()
    .to_vec();
    let with = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    // Offsets in `good`: count 0..2, path length 2..4, path 4..14, size 14..22, mode 22..26,
    // flags 26, digest 27..59.
    let dir_with_size = {
        let mut b = with(26, &[offer_flags::DIRECTORY]);
        b[27..59].fill(0);
        b
    };
    let dir_with_digest = {
        let mut b = with(26, &[offer_flags::DIRECTORY]);
        b[14..22].fill(0);
        b
    };
    let refused: [(&str, FrameType, Vec<u8>); 12] = [
        ("refused_no_items", FrameType::REQUEST, vec![0, 0]),
        (
            "refused_mode",
            FrameType::REQUEST,
            with(22, &[0, 0, 0x10, 0]),
        ),
        ("refused_flags", FrameType::REQUEST, with(26, &[0x02])),
        ("refused_directory_size", FrameType::REQUEST, dir_with_size),
        (
            "refused_directory_digest",
            FrameType::REQUEST,
            dir_with_digest,
        ),
        (
            "refused_count_past_body",
            FrameType::REQUEST,
            with(0, &[0, 2]),
        ),
        (
            "refused_trailing",
            FrameType::REQUEST,
            [good.clone(), vec![0]].concat(),
        ),
        ("refused_bad_utf8", FrameType::REQUEST, with(4, &[0xff])),
        (
            "refused_answer_short",
            FrameType::RESPONSE,
            vec![0, 2, 0, 0, 0x03],
        ),
        // A set of fewer items than this offer alone carries.
        (
            "refused_set_smaller_than_offer",
            FrameType::REQUEST,
            [vec![0; 14], good.clone()].concat(),
        ),
        // The set's totals cut short.
        (
            "refused_set_short",
            FrameType::REQUEST,
            vec![0, 0, 0, 0, 0x9c, 0x40, 0, 0],
        ),
        // A set marker where the offer's count belongs: a set of nothing.
        (
            "refused_set_of_nothing",
            FrameType::REQUEST,
            [vec![0, 0, 0, 0, 0, 1], vec![0; 8], vec![0, 0]].concat(),
        ),
    ];
    for (name, kind, bytes) in refused {
        let error = Message::decode(kind, Service::OFFER, Bytes::from(bytes.clone())).unwrap_err();
        assert!(
            !matches!(error, DecodeError::UnknownMessage { .. }),
            "{name}"
        );
        let code = error.code();
        w.vector(name)
            .hexint("type", kind.0.into(), 2)
            .hexint("service", Service::OFFER.0.into(), 2)
            .hex("body", &bytes)
            .hexint("expect_code", code.0.into(), 4)
            .field("expect_name", code.name().unwrap());
    }
    w.finish()
}
