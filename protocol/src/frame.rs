//! Frames and the sans-IO frame decoder (spec §2.4).
//!
//! The decoder follows tokio-util's contract: `Ok(None)` means "feed me more bytes",
//! `Ok(Some(frame))` consumed exactly one frame from the front of the buffer, and `Err` means the
//! stream is corrupt and the connection must close. Magic, version and the length cap are checked
//! from the header alone, before any body byte is buffered, and memory is only ever reserved for
//! bytes that have arrived.

use std::ops::RangeInclusive;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::header::{FrameType, Header, RequestId, Service, HEADER_LEN, MIN_VERSION, VERSION};
use crate::message::Message;

/// Default cap on a frame's wire body: 1 MiB, comfortably above a 64 KiB data chunk plus crypto
/// overhead and a full list page.
pub const DEFAULT_MAX_BODY: u32 = 1 << 20;

/// The largest cap any implementation may configure (spec §7): 16 MiB.
pub const MAX_BODY_LIMIT: u32 = 16 << 20;

/// One frame: its header and its body bytes, sliced from the read buffer without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub body: Bytes,
}

impl Frame {
    /// Decodes the body as a typed message.
    pub fn message(&self) -> Result<Message, DecodeError> {
        Message::decode(self.header.kind, self.header.service, self.body.clone())
    }

    /// A plaintext frame of the current version carrying `message`.
    pub fn from_message(id: RequestId, message: &Message) -> Self {
        let (kind, service) = message.kind();
        let body = message.to_bytes();
        Self {
            header: Header::new(kind, service, id, body.len() as u32),
            body,
        }
    }

    /// Appends header and body as they go on the wire (no encryption).
    pub fn encode(&self, dst: &mut impl BufMut) {
        self.header.encode(dst);
        dst.put_slice(&self.body);
    }

    /// Length on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }
}

/// Writes one plaintext frame: header then body. `body.len()` must fit the peer's cap; the
/// session checks it against its own.
pub fn encode_plain(
    kind: FrameType,
    service: Service,
    version: u8,
    id: RequestId,
    body: &[u8],
    dst: &mut BytesMut,
) {
    dst.reserve(HEADER_LEN + body.len());
    Header {
        kind,
        version,
        service,
        id,
        length: body.len() as u32,
    }
    .encode(dst);
    dst.put_slice(body);
}

/// Splits a byte stream into frames.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_body: u32,
    versions: RangeInclusive<u8>,
    /// Header of a frame whose body has not fully arrived, so it is checked only once.
    pending: Option<Header>,
    /// The first error, returned again on every later call: after a bad header the stream
    /// cannot be resynchronised, and a caller that kept reading must not loop or misparse.
    failed: Option<DecodeError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY)
    }
}

impl FrameDecoder {
    /// A decoder accepting every version this implementation speaks, with bodies up to
    /// `max_body` bytes (clamped to [`MAX_BODY_LIMIT`]).
    pub fn new(max_body: u32) -> Self {
        Self {
            max_body: max_body.min(MAX_BODY_LIMIT),
            versions: MIN_VERSION..=VERSION,
            pending: None,
            failed: None,
        }
    }

    /// Accept only `version` from now on (after negotiation, spec §4.3).
    pub fn set_version(&mut self, version: u8) {
        self.versions = version..=version;
    }

    /// The body length cap.
    pub fn max_body(&self) -> u32 {
        self.max_body
    }

    /// Whether a frame has started but not finished arriving; used to arm the per-frame read
    /// deadline (slowloris defence).
    pub fn is_mid_frame(&self, buffered: &BytesMut) -> bool {
        self.pending.is_some() || !buffered.is_empty()
    }

    /// Takes one frame off the front of `src` if it has fully arrived.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        Ok(self.decode_raw(src)?.map(|(header, body)| Frame {
            header,
            body: body.freeze(),
        }))
    }

    /// Like [`FrameDecoder::decode`], but hands the body back mutable so it can be decrypted
    /// in place.
    pub fn decode_raw(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<(Header, BytesMut)>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.decode_inner(src)
            .inspect_err(|e| self.failed = Some(e.clone()))
    }

    fn decode_inner(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<(Header, BytesMut)>, DecodeError> {
        let header = match self.pending {
            Some(header) => header,
            None => {
                if src.len() < HEADER_LEN {
                    // A bad magic byte is reported as soon as it arrives.
                    if src.len() >= 2 && src[1] != crate::header::MAGIC {
                        return Err(DecodeError::BadMagic(src[1]));
                    }
                    return Ok(None);
                }
                let header = Header::decode(&src[..HEADER_LEN])?;
                if !self.versions.contains(&header.version) {
                    return Err(DecodeError::UnsupportedVersion {
                        got: header.version,
                        min: *self.versions.start(),
                        max: *self.versions.end(),
                    });
                }
                if header.length > self.max_body {
                    return Err(DecodeError::TooLarge {
                        length: header.length,
                        max: self.max_body,
                    });
                }
                let _ = src.split_to(HEADER_LEN);
                self.pending = Some(header);
                header
            }
        };
        let length = header.length as usize;
        if src.len() < length {
            // Reserve at most what a typical read brings, never the declared length.
            src.reserve((length - src.len()).min(64 * 1024));
            return Ok(None);
        }
        self.pending = None;
        Ok(Some((header, src.split_to(length))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::examples;

    fn stream_of_examples() -> (Vec<Frame>, BytesMut) {
        let frames: Vec<Frame> = examples()
            .iter()
            .enumerate()
            .map(|(i, m)| Frame::from_message(RequestId(i as u32), m))
            .collect();
        let mut bytes = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut bytes);
        }
        (frames, bytes)
    }

    #[test]
    fn many_frames_in_one_read() {
        let (frames, mut bytes) = stream_of_examples();
        let mut decoder = FrameDecoder::default();
        let mut got = Vec::new();
        while let Some(frame) = decoder.decode(&mut bytes).unwrap() {
            got.push(frame);
        }
        assert_eq!(got, frames);
        assert!(bytes.is_empty());
    }

    #[test]
    fn split_at_every_byte_decodes_identically() {
        let (frames, bytes) = stream_of_examples();
        for split in 0..=bytes.len() {
            let mut decoder = FrameDecoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                buf.extend_from_slice(part);
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames, "split at {split}");
        }
    }

    #[test]
    fn byte_at_a_time_decodes_identically() {
        let (frames, bytes) = stream_of_examples();
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in bytes.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut decoder = FrameDecoder::new(1000);
        let mut buf = BytesMut::new();
        Header::new(FrameType::DATA, Service::FETCH, RequestId(1), 1001).encode(&mut buf);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(DecodeError::TooLarge {
                length: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn declared_length_is_not_reserved() {
        let mut decoder = FrameDecoder::new(MAX_BODY_LIMIT);
        let mut buf = BytesMut::new();
        Header::new(
            FrameType::DATA,
            Service::FETCH,
            RequestId(1),
            MAX_BODY_LIMIT,
        )
        .encode(&mut buf);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.capacity() <= 128 * 1024, "reserved {}", buf.capacity());
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = FrameDecoder::new(1000);
        let mut buf = BytesMut::new();
        Header::new(FrameType::DATA, Service::FETCH, RequestId(1), 5000).encode(&mut buf);
        let first = decoder.decode(&mut buf).unwrap_err();
        // Even a valid frame afterwards is not parsed: the stream position is lost.
        Frame::from_message(RequestId(2), &Message::Ping("x".into())).encode(&mut buf);
        assert_eq!(decoder.decode(&mut buf).unwrap_err(), first);
    }

    #[test]
    fn bad_magic_and_version_are_rejected_early() {
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::from(&[0x10, 0x00][..]);
        assert_eq!(decoder.decode(&mut buf), Err(DecodeError::BadMagic(0)));

        let mut decoder = FrameDecoder::default();
        let mut header = Header::new(FrameType::PING, Service::ECHO, RequestId(1), 0);
        header.version = 9;
        let mut buf = BytesMut::new();
        header.encode(&mut buf);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(DecodeError::UnsupportedVersion { got: 9, .. })
        ));
    }
}
