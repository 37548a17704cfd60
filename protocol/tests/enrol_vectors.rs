//! The enrolment vectors (spec §13.11.6, `spec/vectors/enrol.txt`): codes, the word lists'
//! hashes, complete exchanges with fixed keys and SPAKE2 scalars, and bodies a receiver must
//! refuse. Each exchange is produced by the reference state machines and cross-checked against
//! `spake2` used directly (the key `K`) and the confirmation formula. The file is frozen:
//! regenerate only on purpose.

// Helpers outside #[test] fns unwrap too: a vector that does not load should fail loudly.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod common;

use bytes::Bytes;
use common::Writer;
use ferry_protocol::enrol::{
    confirmations, Binding, ClientEnrol, Code, EnrolError, FixedRng, ServerEnrol, EVEN_WORDS,
    ODD_WORDS,
};
use ferry_protocol::identity::Identity;
use ferry_protocol::message::{EnrolEnd, ENROL_WRITE};
use ferry_protocol::{FrameType, Message, Service};
use sha2::{Digest, Sha256};

/// Regenerates the file. Run only on purpose and review the diff.
#[test]
#[ignore = "writes spec/vectors; run explicitly to regenerate"]
fn regenerate_enrol_vectors() {
    std::fs::write(common::vectors_dir().join("enrol.txt"), file()).unwrap();
}

#[test]
fn enrol_vector_file_is_current() {
    let on_disk = std::fs::read_to_string(common::vectors_dir().join("enrol.txt")).unwrap();
    assert_eq!(on_disk, file(), "enrol.txt");
}

fn counting(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn body(message: &Message) -> Vec<u8> {
    message.to_bytes().to_vec()
}

fn file() -> String {
    let mut w = Writer::default();
    w.comment(
        "Ferry protocol golden vectors: enrolment with a one-time code (PROTOCOL.md §13.11)\n\
         Format: spec/vectors/README.md. Generated from the reference implementation, then frozen.\n\
         word_lists: SHA-256 of each list's words, lowercase, joined by one space, in byte order.\n\
         A code vector: `text` <-> `nameplate` and `words` (w0 = odd word, w1 = even word);\n\
         `password` is SPAKE2's password. `invalid: 1` marks a text that must be refused.\n\
         An exchange: static public keys, handshake hash h and each side's 64 SPAKE2 random\n\
         bytes (the scalar is those bytes read little-endian, reduced mod the group order);\n\
         the client sends enrol_request then enrol_confirm, the server enrol_response then\n\
         enrol_end; key is SPAKE2's K; confirm_a/confirm_b follow from K, h and T (§13.11.3).\n\
         With `client_refuses: 1` the server holds `server_code`, so the client's check of\n\
         confirm_b fails and it sends nothing more. A refused body: `type`, `service`, `body`.",
    );
    let joined = |words: &[&str; 256]| Sha256::digest(words.join(" ").as_bytes()).to_vec();
    w.vector("word_lists")
        .hex("even_sha256", &joined(&EVEN_WORDS))
        .hex("odd_sha256", &joined(&ODD_WORDS));

    for text in [
        "7-crossover-clockwork",
        "1-adroitness-aardvark",
        "999-yucatan-zulu",
    ] {
        let code: Code = text.parse().unwrap();
        w.vector(&format!("code_{}", text.replace('-', "_")))
            .string("text", text)
            .int("nameplate", code.nameplate)
            .hex("words", &code.words)
            .hex("password", &code.password());
    }
    for (name, text) in [
        ("swapped_words", "7-clockwork-crossover"),
        ("zero_nameplate", "0-crossover-clockwork"),
        ("one_word", "7-crossover"),
        ("unknown_word", "7-crossover-clockwerk"),
    ] {
        assert!(text.parse::<Code>().is_err(), "{text}");
        w.vector(name).string("text", text).int("invalid", 1);
    }

    let client = Identity::from_secret(counting(0x10));
    let server = Identity::from_secret(counting(0x30));
    let binding = Binding {
        client_static: *client.public_key(),
        server_static: *server.public_key(),
        handshake_hash: counting(0x90),
    };
    let cases = [
        (
            "exchange_read_write",
            "7-crossover-clockwork",
            "7-crossover-clockwork",
            true,
        ),
        (
            "exchange_read_only",
            "42-adroitness-zulu",
            "42-adroitness-zulu",
            false,
        ),
        (
            "exchange_wrong_code",
            "7-crossover-clockwork",
            "7-crossover-cobra",
            true,
        ),
    ];
    for (name, client_code, server_code, write) in cases {
        let (client_code, server_code): (Code, Code) =
            (client_code.parse().unwrap(), server_code.parse().unwrap());
        let (client_seed, server_seed) = (counting(0x50), counting(0x70));
        let (enrol, request) =
            ClientEnrol::start_with_rng(&client_code, binding, FixedRng(client_seed));
        let (server_side, response) =
            ServerEnrol::respond_with_rng(&server_code, binding, &request, FixedRng(server_seed))
                .unwrap();
        // K, by the spake2 crate directly (side B's view, the server's code).
        let (spake, _) = spake2::Spake2::<spake2::Ed25519Group>::start_b_with_rng(
            &spake2::Password::new(server_code.password()),
            &spake2::Identity::new(&binding.client_static),
            &spake2::Identity::new(&binding.server_static),
            FixedRng(server_seed),
        );
        let key = spake.finish(&request.pake).unwrap();
        let (confirm_b, confirm_a) = confirmations(
            &key,
            &binding.handshake_hash,
            request.nameplate,
            &request.pake,
            &response.pake,
        );
        assert_eq!(response.confirm, confirm_b);
        let both = |seed: [u8; 32]| [seed, seed].concat();
        w.vector(name)
            .string("client_code", &client_code.to_string())
            .string("server_code", &server_code.to_string())
            .hex("client_static_public", &binding.client_static)
            .hex("server_static_public", &binding.server_static)
            .hex("handshake_hash", &binding.handshake_hash)
            .hex("client_random", &both(client_seed))
            .hex("server_random", &both(server_seed))
            .hex(
                "enrol_request",
                &body(&Message::EnrolRequest(request.clone())),
            )
            .hex(
                "enrol_response",
                &body(&Message::EnrolResponse(response.clone())),
            )
            .hex("key", &key)
            .hex("confirm_b", &confirm_b)
            .hex("confirm_a", &confirm_a);
        if client_code == server_code {
            let confirm = enrol.handle_response(&response).unwrap();
            assert_eq!(confirm.confirm, confirm_a);
            server_side.check(&confirm).unwrap();
            let end = EnrolEnd {
                flags: if write { ENROL_WRITE } else { 0 },
                name: if write { "bob" } else { "client-n4nk5xio" }.into(),
                root: if write { "team/bob" } else { "" }.into(),
            };
            w.hex("enrol_confirm", &body(&Message::EnrolConfirm(confirm)))
                .hex("enrol_end", &body(&Message::EnrolEnd(end)));
        } else {
            assert_eq!(
                enrol.handle_response(&response).unwrap_err(),
                EnrolError::Mismatch
            );
            w.int("client_refuses", 1);
        }
    }

    let request = |nameplate: u32, side: u8| {
        let mut b = nameplate.to_be_bytes().to_vec();
        b.push(side);
        b.extend_from_slice(&[0x11; 32]);
        b
    };
    let refused: [(&str, FrameType, Vec<u8>); 6] = [
        (
            "refused_nameplate_zero",
            FrameType::REQUEST,
            request(0, 0x41),
        ),
        (
            "refused_request_side_b",
            FrameType::REQUEST,
            request(7, 0x42),
        ),
        (
            "refused_response_side_a",
            FrameType::RESPONSE,
            [vec![0x41; 33], vec![0; 32]].concat(),
        ),
        ("refused_confirm_short", FrameType::DATA, vec![0; 31]),
        ("refused_end_flags", FrameType::END, vec![0x02, 0, 0, 0, 0]),
        (
            "refused_end_trailing",
            FrameType::END,
            vec![0x01, 0, 0, 0, 0, 0],
        ),
    ];
    for (name, kind, bytes) in refused {
        assert!(Message::decode(kind, Service::ENROL, Bytes::from(bytes.clone())).is_err());
        w.vector(name)
            .hexint("type", kind.0.into(), 2)
            .hexint("service", Service::ENROL.0.into(), 2)
            .hex("body", &bytes);
    }
    w.finish()
}
