//! Entry points for the fuzz targets in `fuzz/` (compiled with `--cfg fuzzing`, and in tests):
//! whatever decodes must re-encode to the same bytes, and nothing may panic.

use bytes::BytesMut;

use crate::crypto::{Key, RecordSuite};
use crate::frame::FrameDecoder;
use crate::handshake::{
    handshake_decoder, ClientHandshake, ClientHandshakeConfig, ServerHandshake,
    ServerHandshakeConfig,
};
use crate::message::Message;
use crate::session::Session;

/// Splits `data` into frames; every frame and every message that decodes re-encodes exactly.
pub fn decode_stream(data: &[u8]) {
    let mut decoder = FrameDecoder::new(4096);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(again.len(), frame.encoded_len());
        if let Ok(message) =
            Message::decode(frame.header.kind, frame.header.service, frame.body.clone())
        {
            assert_eq!(message.encoded_len(), frame.body.len());
            assert_eq!(
                message.to_bytes(),
                frame.body,
                "decode → encode changed the body"
            );
            assert_eq!(message.kind(), (frame.header.kind, frame.header.service));
        }
    }
}

/// The record suites a fuzz input's first byte selects (bits 1 and 2), so that the suite
/// negotiation of every combination is fuzzed: both, GCM alone, CBC + HMAC alone.
fn fuzzed_suites(first: u8) -> Vec<RecordSuite> {
    match (first >> 1) & 3 {
        1 => vec![RecordSuite::Aes256Gcm],
        2 => vec![RecordSuite::Aes256CbcHmacSha256],
        _ => RecordSuite::DEFAULT_SUITES.to_vec(),
    }
}

/// Feeds `data` to a server handshake as if a client sent it; it must fail or succeed cleanly,
/// and after success the session must reject or accept the remaining bytes without panicking.
pub fn server_handshake(data: &[u8]) {
    let mut config = ServerHandshakeConfig::new(Key::from_bytes([7; 32]));
    config.allow_plaintext = data.first().is_some_and(|b| b & 1 == 1);
    config.suites = fuzzed_suites(data.first().copied().unwrap_or(0));
    let mut handshake = ServerHandshake::new(config);
    let mut decoder = handshake_decoder();
    let mut buf = BytesMut::from(data);
    let mut out = BytesMut::new();
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        match handshake.handle_frame(frame, &mut out) {
            Ok(None) => {}
            Ok(Some(mut session)) => {
                while let Ok(Some(frame)) = session.read_frame(&mut buf) {
                    let _ = frame.message();
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// Feeds `data` to a client handshake (version 2 offer, or version 1 when the first byte picks
/// CBC + HMAC alone) as if the server sent it: it must fail or succeed cleanly, never panic.
pub fn client_handshake(data: &[u8]) {
    let first = data.first().copied().unwrap_or(0);
    let config = ClientHandshakeConfig::new(Key::from_bytes([7; 32]))
        .plaintext(first & 1 == 1)
        .with_suites(fuzzed_suites(first));
    let mut out = BytesMut::new();
    let mut handshake = ClientHandshake::start(config, &mut out);
    let mut decoder = handshake_decoder();
    let mut buf = BytesMut::from(data.get(1..).unwrap_or_default());
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        match handshake.handle_frame(frame, &mut out) {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return,
        }
    }
}

/// Records of every encrypted suite: `data` is opened as a stream of records by a session with
/// fixed keys (every failure clean, never a panic), and sealed as a body and opened again (the
/// same bytes come back, and any byte flipped or the record cut short is refused).
pub fn records(data: &[u8]) {
    use crate::header::{FrameType, RequestId, Service};
    for suite in [RecordSuite::Aes256Gcm, RecordSuite::Aes256CbcHmacSha256] {
        let (mut client, mut server) = Session::dangerous_pair_with_suite(suite);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(frame)) = server.read_frame(&mut buf) {
            let _ = frame.message();
        }

        let (_, mut receiver) = Session::dangerous_pair_with_suite(suite);
        let mut wire = BytesMut::new();
        let body = &data[..data.len().min(client.max_payload())];
        client
            .write_frame(
                FrameType::DATA,
                Service::FETCH,
                RequestId(1),
                body,
                &mut wire,
            )
            .expect("a body within max_payload seals");
        let sealed = wire.clone();
        if suite.in_place_room().is_some() {
            // Sealed where it lies (issue 10): the same record, byte for byte.
            let (mut send, _) = Session::dangerous_pair_with_suite(suite).0.into_split();
            let (mut slot, mut head) = (BytesMut::from(body), BytesMut::new());
            send.write_in_place(
                FrameType::DATA,
                Service::FETCH,
                RequestId(1),
                &mut slot,
                &mut head,
            )
            .expect("a body within max_payload seals in place");
            head.extend_from_slice(&slot);
            assert_eq!(head, sealed, "sealing in place changed the record");
        }
        let frame = receiver
            .read_frame(&mut wire)
            .expect("a sealed record opens")
            .expect("a whole record");
        assert_eq!(&frame.body[..], body, "seal then open changed the body");
        // The same record under a fresh receiver, one byte flipped (where the data says) or cut
        // short by one byte with its length adjusted: refused.
        let at = data.first().map_or(0, |&b| b as usize) % sealed.len();
        let mut flipped = sealed.clone();
        flipped[at] ^= 0x01;
        let (_, mut fresh) = Session::dangerous_pair_with_suite(suite);
        assert!(
            !matches!(fresh.read_frame(&mut flipped), Ok(Some(_))),
            "a flipped byte at {at} was accepted"
        );
        let mut cut = sealed.clone();
        cut.truncate(cut.len() - 1);
        let len = u32::try_from(cut.len() - crate::header::HEADER_LEN).expect("small");
        cut[8..12].copy_from_slice(&len.to_be_bytes());
        let (_, mut fresh) = Session::dangerous_pair_with_suite(suite);
        assert!(
            fresh.read_frame(&mut cut).is_err(),
            "a record cut short was accepted"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use crate::header::RequestId;
    use crate::message::tests::examples;

    #[test]
    fn helpers_accept_valid_streams() {
        let mut wire = Vec::new();
        for (i, message) in examples().iter().enumerate() {
            Frame::from_message(RequestId(i as u32), message).encode(&mut wire);
        }
        decode_stream(&wire);
        server_handshake(&wire);
        server_handshake(&[]);
        client_handshake(&wire);
        client_handshake(&[]);
        records(&wire);
        records(&[]);
        records(b"x");
    }
}
