//! Property tests: every message kind round-trips with an exact `encoded_len`; any chunking of a
//! byte stream decodes to the same frames, plaintext or encrypted; arbitrary, truncated and
//! bit-flipped input yields `Err`, never a panic; any tampered byte of a record is rejected.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use ferry_protocol::crypto::RecordSuite;
use ferry_protocol::message::{
    ClientHello, Entry, EntryKind, ErrorBody, FetchEnd, FetchRequest, FetchResponse, Finished,
    KeyHint, ListEnd, ListPage, ListRequest, Mode, ServerHello, StatRequest, SuiteId, SuiteOffer,
};
use ferry_protocol::{
    ErrorCode, Frame, FrameDecoder, FrameType, Message, RequestId, Service, Session,
};
use proptest::prelude::*;

fn arb_path() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_./ é-]{0,64}"
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        arb_path(),
        any::<u8>(),
        any::<u64>(),
        any::<i64>(),
        0u32..1_000_000_000,
        any::<u32>(),
        proptest::option::of(arb_path()),
    )
        .prop_map(
            |(name, kind, size, mtime_secs, mtime_nanos, mode, link)| Entry {
                name,
                // Bit 0x80 of the wire kind is the link flag, driven by `link`.
                kind: EntryKind(kind & !EntryKind::LINK_FLAG),
                size,
                mtime_secs,
                mtime_nanos,
                mode,
                link,
            },
        )
}

fn arb_service() -> impl Strategy<Value = Service> {
    any::<u8>().prop_map(Service)
}

/// 1 to 16 distinct non-zero suite ids, known or not.
fn arb_offer() -> impl Strategy<Value = SuiteOffer> {
    proptest::collection::btree_set(1u8..=255, 1..=SuiteOffer::MAX)
        .prop_map(|ids| SuiteOffer::new(ids.into_iter().map(SuiteId)).unwrap())
}

/// Every suite a session can run, for the session and record properties.
fn arb_suite() -> impl Strategy<Value = RecordSuite> {
    prop_oneof![
        Just(RecordSuite::Plaintext),
        Just(RecordSuite::Aes256CbcHmacSha256),
        Just(RecordSuite::Aes256Gcm),
    ]
}

fn arb_encrypted_suite() -> impl Strategy<Value = RecordSuite> {
    prop_oneof![
        Just(RecordSuite::Aes256CbcHmacSha256),
        Just(RecordSuite::Aes256Gcm),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    let mode = prop_oneof![Just(Mode::ENCRYPTED), Just(Mode::PLAINTEXT)];
    prop_oneof![
        (
            (1u8..=255, any::<u8>()),
            mode.clone(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            arb_offer(),
            proptest::option::of(any::<[u8; 8]>()),
            arb_bytes(8),
        )
            .prop_map(
                |((min, extra), mode, nonce, key_share, offer, hint, rest)| {
                    let max_version = min.saturating_add(extra);
                    // The offer, the hint and what follows them exist only from version 2 on, and
                    // bytes after the hint only above it (spec §4.2).
                    let v2 = max_version >= 2;
                    Message::ClientHello(ClientHello {
                        min_version: min,
                        max_version,
                        mode,
                        nonce,
                        key_share,
                        suites: if v2 { offer } else { SuiteOffer::default() },
                        key_hint: hint.filter(|_| v2).map(KeyHint),
                        rest: if max_version > 2 { rest } else { Bytes::new() },
                    })
                }
            ),
        (
            any::<u8>(),
            mode,
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            1u8..=255
        )
            .prop_map(
                |(version, mode, nonce, key_share, suite)| Message::ServerHello(ServerHello {
                    version,
                    mode,
                    nonce,
                    key_share,
                    suite: (version >= 2).then_some(SuiteId(suite)),
                })
            ),
        any::<[u8; 32]>().prop_map(|mac| Message::ServerFinished(Finished { mac })),
        any::<[u8; 32]>().prop_map(|mac| Message::ClientFinished(Finished { mac })),
        (arb_path(), any::<bool>(), any::<u16>())
            .prop_map(|(p, r, d)| Message::ListRequest(ListRequest::new(p, r, d).unwrap())),
        arb_path().prop_map(|p| Message::StatRequest(StatRequest::new(p).unwrap())),
        (arb_path(), any::<u64>(), any::<u64>())
            .prop_map(|(p, o, l)| Message::FetchRequest(FetchRequest::new(p, o, l).unwrap())),
        proptest::collection::vec(arb_entry(), 0..8)
            .prop_map(|entries| Message::ListPage(ListPage { entries })),
        arb_entry().prop_map(Message::StatResponse),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            0u32..1_000_000_000
        )
            .prop_map(|(size, a, b, mtime_secs, mtime_nanos)| {
                // Any valid range within the file.
                let offset = if size == 0 { 0 } else { a % (size + 1) };
                let length = if size - offset == 0 {
                    0
                } else {
                    b % (size - offset + 1)
                };
                Message::FetchResponse(FetchResponse {
                    size,
                    mtime_secs,
                    mtime_nanos,
                    offset,
                    length,
                })
            }),
        arb_bytes(300).prop_map(Message::Data),
        any::<u64>().prop_map(|entries| Message::ListEnd(ListEnd { entries })),
        (any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(bytes, digest)| Message::FetchEnd(FetchEnd { bytes, digest })),
        (arb_service(), any::<u16>(), "[ -~]{0,80}").prop_map(|(service, code, msg)| {
            Message::Error {
                service,
                body: ErrorBody::new(ErrorCode(code), msg),
            }
        }),
        prop_oneof![
            Just(Service::LIST),
            Just(Service::STAT),
            Just(Service::FETCH)
        ]
        .prop_map(|service| Message::Cancel { service }),
        arb_bytes(100).prop_map(Message::Ping),
        arb_bytes(100).prop_map(Message::Pong),
    ]
}

/// Cuts `bytes` at the given points (taken modulo the length) and feeds the pieces in order.
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if bytes.is_empty() {
                0
            } else {
                c % (bytes.len() + 1)
            }
        })
        .collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip_with_exact_length(message in arb_message()) {
        let body = message.to_bytes();
        prop_assert_eq!(body.len(), message.encoded_len());
        let (kind, service) = message.kind();
        prop_assert_eq!(Message::decode(kind, service, body).unwrap(), message);
    }

    #[test]
    fn any_chunking_decodes_to_the_same_frames(
        messages in proptest::collection::vec(arb_message(), 1..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let frames: Vec<Frame> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Frame::from_message(RequestId(i as u32), m))
            .collect();
        let mut wire = Vec::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in chunks(&wire, &cuts) {
            buf.extend_from_slice(&chunk);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn sessions_round_trip_under_any_chunking(
        suite in arb_suite(),
        messages in proptest::collection::vec(arb_message(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let (mut client, mut server) = Session::dangerous_pair_with_suite(suite);
        let mut wire = BytesMut::new();
        for (i, message) in messages.iter().enumerate() {
            client.write_message(RequestId(i as u32), message, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in chunks(&wire, &cuts) {
            buf.extend_from_slice(&chunk);
            while let Some(frame) = server.read_frame(&mut buf).unwrap() {
                got.push(frame.message().unwrap());
            }
        }
        prop_assert_eq!(got, messages);
    }

    #[test]
    fn arbitrary_bodies_never_panic(kind in any::<u8>(), service in any::<u8>(), body in arb_bytes(200)) {
        let _ = Message::decode(FrameType(kind), Service(service), body);
    }

    #[test]
    fn arbitrary_streams_never_panic(
        suite in arb_encrypted_suite(),
        stream in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut decoder = FrameDecoder::new(256);
        let mut buf = BytesMut::from(&stream[..]);
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            let _ = frame.message();
        }
        let (_, mut server) = Session::dangerous_pair_with_suite(suite);
        let mut buf = BytesMut::from(&stream[..]);
        while let Ok(Some(_)) = server.read_frame(&mut buf) {}
    }

    #[test]
    fn truncated_or_flipped_bodies_are_errors_or_different_messages(
        message in arb_message(),
        cut in any::<usize>(),
        flip in any::<(usize, u8)>(),
    ) {
        let body = message.to_bytes();
        let (kind, service) = message.kind();
        if !body.is_empty() {
            // A strict prefix of a fixed-layout body never decodes to the same message.
            let truncated = body.slice(..cut % body.len());
            if let Ok(decoded) = Message::decode(kind, service, truncated) {
                prop_assert_ne!(decoded, message.clone());
            }
            let mut flipped = body.to_vec();
            let (at, mask) = flip;
            flipped[at % body.len()] ^= mask | 1;
            if let Ok(decoded) = Message::decode(kind, service, flipped.into()) {
                prop_assert_ne!(decoded, message);
            }
        }
    }

    #[test]
    fn any_tampered_record_byte_is_rejected(
        suite in arb_encrypted_suite(),
        message in arb_message(),
        at in any::<usize>(),
        mask in 1u8..=255,
    ) {
        let (mut client, mut server) = Session::dangerous_pair_with_suite(suite);
        let mut wire = BytesMut::new();
        client.write_message(RequestId(9), &message, &mut wire).unwrap();
        let at = at % wire.len();
        wire[at] ^= mask;
        let result = server.read_frame(&mut wire);
        // A tampered length may leave the decoder waiting for bytes that never come, which a
        // real connection turns into a read deadline; it must never yield a frame.
        prop_assert!(!matches!(result, Ok(Some(_))), "byte {} accepted", at);
    }

    #[test]
    fn truncated_records_are_rejected(
        suite in arb_encrypted_suite(),
        message in arb_message(),
        cut in 1usize..=64,
    ) {
        // A record shortened by `cut` body bytes, with its header's length saying so (what an
        // attacker who drops bytes and rewrites the length sends): never accepted.
        let (mut client, mut server) = Session::dangerous_pair_with_suite(suite);
        let mut wire = BytesMut::new();
        client.write_message(RequestId(9), &message, &mut wire).unwrap();
        let body_len = wire.len() - ferry_protocol::HEADER_LEN;
        let cut = cut.min(body_len);
        wire.truncate(wire.len() - cut);
        wire[8..12].copy_from_slice(&((body_len - cut) as u32).to_be_bytes());
        let result = server.read_frame(&mut wire);
        prop_assert!(
            matches!(result, Err(ferry_protocol::Error::Crypto(ferry_protocol::CryptoError::BadRecord))),
            "cut {} bytes: {:?}", cut, result
        );
    }

    /// Issue 10: a data body sealed where it lies (what the server's writer does with its
    /// read slots under AES-256-GCM) is byte for byte the record that sealing by copying
    /// gives, for any body, id and position in the sequence, and opens to the same body.
    #[test]
    fn sealing_in_place_gives_the_record_sealing_by_copying_gives(
        body in arb_bytes(5_000),
        id in any::<u32>(),
        earlier in 0usize..4,
    ) {
        let suite = RecordSuite::Aes256Gcm;
        let (copying, mut server) = Session::dangerous_pair_with_suite(suite);
        let (in_place, _) = Session::dangerous_pair_with_suite(suite);
        let (mut copying, mut in_place) = (copying.into_split().0, in_place.into_split().0);
        let body = &body[..body.len().min(copying.max_payload())];
        let (mut wire, mut head) = (BytesMut::new(), BytesMut::new());
        let (kind, service, id) = (FrameType::DATA, Service::FETCH, RequestId(id));
        for _ in 0..earlier {
            copying.write_frame(kind, service, id, b"x", &mut wire).unwrap();
            in_place.write_frame(kind, service, id, b"x", &mut head).unwrap();
        }
        copying.write_frame(kind, service, id, body, &mut wire).unwrap();
        let room = in_place.in_place_room().unwrap();
        let mut slot = BytesMut::with_capacity(body.len() + room);
        slot.extend_from_slice(body);
        in_place.write_in_place(kind, service, id, &mut slot, &mut head).unwrap();
        head.extend_from_slice(&slot);
        prop_assert_eq!(&head, &wire);
        for _ in 0..earlier {
            server.read_frame(&mut head).unwrap().unwrap();
        }
        let frame = server.read_frame(&mut head).unwrap().unwrap();
        prop_assert_eq!(&frame.body[..], body);
    }
}
