//! Entry points for the fuzz targets in `fuzz/` (compiled with `--cfg fuzzing`, and in tests):
//! whatever decodes must re-encode to the same bytes, and nothing may panic.

use bytes::BytesMut;

use crate::crypto::Key;
use crate::frame::FrameDecoder;
use crate::handshake::{handshake_decoder, ServerHandshake, ServerHandshakeConfig};
use crate::message::Message;

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

/// Feeds `data` to a server handshake as if a client sent it; it must fail or succeed cleanly,
/// and after success the session must reject or accept the remaining bytes without panicking.
pub fn server_handshake(data: &[u8]) {
    let mut config = ServerHandshakeConfig::new(Key::from_bytes([7; 32]));
    config.allow_plaintext = data.first().is_some_and(|b| b & 1 == 1);
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
    }
}
