//! An established session: framing plus the record layer of both directions, whatever its suite
//! (spec §5.3). Sans-IO: bytes in, frames out; messages in, bytes out.

use bytes::BytesMut;

use crate::crypto::{DirectionKeys, PreSealAction, RecordOpener, RecordSealer, RecordSuite};
use crate::error::{CryptoError, DecodeError, Error};
use crate::frame::{Frame, FrameDecoder, DEFAULT_MAX_BODY};
use crate::header::{FrameType, Header, RequestId, Service};
use crate::message::{Message, Mode};

/// Which end of the connection we are; picks the send and receive keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Framing and record protection for one connection after its handshake.
#[derive(Debug)]
pub struct Session {
    send: SendHalf,
    recv: RecvHalf,
    /// The handshake's channel binding (spec §5.7); `None` for a session made without one.
    binding: Option<[u8; 32]>,
}

/// The sending half: frames messages and seals them with its record layer.
#[derive(Debug)]
pub struct SendHalf {
    version: u8,
    max_payload: usize,
    records: RecordSealer,
    /// The record layer said [`PreSealAction::CloseSoon`]; see [`SendHalf::close_soon`].
    close_soon: bool,
    /// Reused buffer for message bodies before sealing.
    scratch: Vec<u8>,
}

/// The receiving half: splits frames off a byte stream and opens them with its record layer.
#[derive(Debug)]
pub struct RecvHalf {
    decoder: FrameDecoder,
    records: RecordOpener,
    /// A record failure, repeated on every later call: the stream cannot be resynchronised.
    /// (The decoder remembers its own failures.)
    failed: Option<CryptoError>,
}

impl Session {
    /// A plaintext session of `version` accepting bodies up to `max_body`.
    pub fn plaintext(version: u8, max_body: u32) -> Self {
        Self::with_records(
            version,
            max_body,
            RecordSealer::plaintext(),
            RecordOpener::plaintext(),
        )
    }

    /// An encrypted session (AES-256-CBC + HMAC-SHA256, IVs from the thread's CSPRNG); `role`
    /// selects which direction's keys seal and which open.
    pub fn encrypted(
        version: u8,
        max_body: u32,
        role: Role,
        client_to_server: &DirectionKeys,
        server_to_client: &DirectionKeys,
    ) -> Self {
        Self::new(
            version,
            max_body,
            role,
            RecordSuite::Aes256CbcHmacSha256,
            client_to_server,
            server_to_client,
        )
    }

    /// A session whose records use `suite` (IVs, where it needs them, from the thread's
    /// CSPRNG); `role` selects which direction's keys seal and which open. Plaintext ignores
    /// the keys.
    pub fn new(
        version: u8,
        max_body: u32,
        role: Role,
        suite: RecordSuite,
        client_to_server: &DirectionKeys,
        server_to_client: &DirectionKeys,
    ) -> Self {
        let (send, recv) = match role {
            Role::Client => (client_to_server, server_to_client),
            Role::Server => (server_to_client, client_to_server),
        };
        Self::with_records(
            version,
            max_body,
            RecordSealer::new(suite, send),
            RecordOpener::new(suite, recv),
        )
    }

    /// A connected (client, server) pair without a handshake, with fixed, publicly known keys
    /// when `encrypted` (AES-256-CBC + HMAC-SHA256): for tests and benchmarks of the record
    /// layer only, never a network.
    pub fn dangerous_pair_with_fixed_keys(encrypted: bool) -> (Session, Session) {
        Self::dangerous_pair_with_suite(if encrypted {
            RecordSuite::Aes256CbcHmacSha256
        } else {
            RecordSuite::Plaintext
        })
    }

    /// [`Session::dangerous_pair_with_fixed_keys`] for any suite: fixed, publicly known keys,
    /// for tests and benchmarks of the record layer only, never a network.
    pub fn dangerous_pair_with_suite(suite: RecordSuite) -> (Session, Session) {
        let c2s = DirectionKeys {
            enc: [1; 32],
            mac: [2; 32],
            iv: [5; 12],
        };
        let s2c = DirectionKeys {
            enc: [3; 32],
            mac: [4; 32],
            iv: [6; 12],
        };
        // Record-layer tests and benchmarks; the version only goes into headers.
        let version = if suite == RecordSuite::Aes256Gcm {
            2
        } else {
            1
        };
        (
            Self::new(version, DEFAULT_MAX_BODY, Role::Client, suite, &c2s, &s2c),
            Self::new(version, DEFAULT_MAX_BODY, Role::Server, suite, &c2s, &s2c),
        )
    }

    /// A session of `version` accepting bodies up to `max_body`, with the given record layer:
    /// any suite, any IV source, any starting sequence numbers. Both halves must be the same
    /// suite, keyed for opposite directions.
    pub fn with_records(
        version: u8,
        max_body: u32,
        sealer: RecordSealer,
        opener: RecordOpener,
    ) -> Self {
        debug_assert_eq!(
            sealer.suite(),
            opener.suite(),
            "one suite for both directions"
        );
        let mut decoder = FrameDecoder::new(max_body);
        decoder.set_version(version);
        // Receive caps are not negotiated: every receiver accepts DEFAULT_MAX_BODY (spec §7),
        // so that, not our own receive cap, bounds what we send.
        let cap = decoder.max_body().min(DEFAULT_MAX_BODY) as usize;
        Self {
            send: SendHalf {
                version,
                max_payload: sealer.suite().max_plaintext(cap),
                records: sealer,
                close_soon: false,
                scratch: Vec::new(),
            },
            recv: RecvHalf {
                decoder,
                records: opener,
                failed: None,
            },
            binding: None,
        }
    }

    /// The session with its handshake's channel binding (spec §5.7).
    pub fn with_channel_binding(mut self, binding: [u8; 32]) -> Self {
        self.binding = Some(binding);
        self
    }

    /// A value both ends of this session, and nobody else's session, hold (spec §5.7): another
    /// protocol run inside the session binds itself to it (e.g. the swarm's identity exchange,
    /// spec/P2P.md §3.3). `None` for a session made without a handshake.
    pub fn channel_binding(&self) -> Option<&[u8; 32]> {
        self.binding.as_ref()
    }

    /// Splits into halves that can live in different tasks.
    pub fn into_split(self) -> (SendHalf, RecvHalf) {
        (self.send, self.recv)
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u8 {
        self.send.version
    }

    /// Whether bodies are encrypted.
    pub fn mode(&self) -> Mode {
        self.send.mode()
    }

    /// The record suite both directions use (the negotiated one, or plaintext).
    pub fn suite(&self) -> RecordSuite {
        self.send.suite()
    }

    /// Largest body, before encryption, that fits one frame.
    pub fn max_payload(&self) -> usize {
        self.send.max_payload
    }

    /// See [`SendHalf::close_soon`].
    pub fn close_soon(&self) -> bool {
        self.send.close_soon
    }

    /// See [`SendHalf::write_frame`].
    pub fn write_frame(
        &mut self,
        kind: FrameType,
        service: Service,
        id: RequestId,
        body: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        self.send.write_frame(kind, service, id, body, dst)
    }

    /// See [`SendHalf::write_message`].
    pub fn write_message(
        &mut self,
        id: RequestId,
        message: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        self.send.write_message(id, message, dst)
    }

    /// See [`RecvHalf::read_frame`].
    pub fn read_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        self.recv.read_frame(src)
    }
}

impl SendHalf {
    /// Whether bodies are encrypted.
    pub fn mode(&self) -> Mode {
        self.records.suite().mode()
    }

    /// The record suite bodies are sealed with.
    pub fn suite(&self) -> RecordSuite {
        self.records.suite()
    }

    /// Wire length of the frame (header and body) that carries a `len`-byte body.
    pub fn frame_len(&self, len: usize) -> usize {
        crate::header::HEADER_LEN + self.records.suite().sealed_len(len)
    }

    /// Whether the send sequence is near its end ([`PreSealAction::CloseSoon`]): the shell
    /// should start no new requests and close the connection once those in flight are done.
    /// Frames are still sealed until the last sequence number; past it every write fails with
    /// [`CryptoError::SequenceExhausted`] (spec §5.5).
    pub fn close_soon(&self) -> bool {
        self.close_soon
    }

    /// Tests only: counts `blocks` as already sealed under the key, so that a connection
    /// reaches its usage limit's close-soon point (spec §5.5) after a few records instead of
    /// 1 TiB. Never lowers the limit itself; a connection that uses it is still safe.
    #[doc(hidden)]
    pub fn assume_blocks_used(&mut self, blocks: u64) {
        self.records.set_blocks_used(blocks);
    }

    /// Acts on what the record layer says about sealing `records` more records.
    #[inline]
    fn pre_seal(&mut self, records: usize) -> Result<(), Error> {
        match self.records.pre_seal_action(records) {
            PreSealAction::Proceed => Ok(()),
            PreSealAction::CloseSoon => {
                self.close_soon = true;
                Ok(())
            }
            PreSealAction::Refuse => Err(CryptoError::SequenceExhausted.into()),
        }
    }

    /// Largest body, before encryption, that fits one frame.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Appends one frame with a raw body of at most [`SendHalf::max_payload`] bytes.
    pub fn write_frame(
        &mut self,
        kind: FrameType,
        service: Service,
        id: RequestId,
        body: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        self.check_payload(body.len())?;
        self.pre_seal(1)?;
        self.records
            .seal(self.header(kind, service, id), body, dst)?;
        Ok(())
    }

    /// How many bytes a body needs free after it for [`SendHalf::write_in_place`] to seal it
    /// without a copy; `None` where the suite gains nothing by it
    /// ([`RecordSuite::in_place_room`]).
    pub fn in_place_room(&self) -> Option<usize> {
        self.records.suite().in_place_room()
    }

    /// [`SendHalf::write_frame`] of `body` where it lies: appends the frame's header to `dst`
    /// and turns `body` into the rest of the frame ([`RecordSealer::seal_in_place`]), so that
    /// `dst`'s new bytes and then `body` are exactly what `write_frame` would append.
    pub fn write_in_place(
        &mut self,
        kind: FrameType,
        service: Service,
        id: RequestId,
        body: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        self.check_payload(body.len())?;
        self.pre_seal(1)?;
        let header = self.header(kind, service, id);
        self.records.seal_in_place(header, body, dst)?;
        Ok(())
    }

    /// The header of a frame this half sends; sealing sets its length.
    fn header(&self, kind: FrameType, service: Service, id: RequestId) -> Header {
        Header {
            kind,
            version: self.version,
            service,
            id,
            length: 0,
        }
    }

    /// Refuses a body longer than [`SendHalf::max_payload`].
    fn check_payload(&self, len: usize) -> Result<(), Error> {
        if len > self.max_payload {
            return Err(DecodeError::TooLarge {
                length: u32::try_from(len).unwrap_or(u32::MAX),
                max: self.max_payload as u32,
            }
            .into());
        }
        Ok(())
    }

    /// Appends several frames with raw bodies, in order. Encrypted, they are sealed together
    /// ([`RecordSealer::seal_many`]), which is several times faster than one at a time; the
    /// bytes are those that one [`SendHalf::write_frame`] per frame would produce.
    pub fn write_frames(
        &mut self,
        frames: &[(FrameType, Service, RequestId, &[u8])],
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        if let Some((.., body)) = frames.iter().find(|(.., b)| b.len() > self.max_payload) {
            return Err(DecodeError::TooLarge {
                length: u32::try_from(body.len()).unwrap_or(u32::MAX),
                max: self.max_payload as u32,
            }
            .into());
        }
        self.pre_seal(frames.len())?;
        let headers: Vec<(Header, &[u8])> = frames
            .iter()
            .map(|&(kind, service, id, body)| (self.header(kind, service, id), body))
            .collect();
        self.records.seal_many(&headers, dst)?;
        Ok(())
    }

    /// Appends one frame carrying `message`.
    pub fn write_message(
        &mut self,
        id: RequestId,
        message: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        let (kind, service) = message.kind();
        if let Message::Data(body) | Message::Ping(body) | Message::Pong(body) = message {
            return self.write_frame(kind, service, id, body, dst);
        }
        message.check_encodable()?;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        message.encode(&mut scratch);
        let result = self.write_frame(kind, service, id, &scratch, dst);
        self.scratch = scratch;
        result
    }
}

impl RecvHalf {
    /// The frame decoder, e.g. to ask whether a frame is half-read.
    pub fn decoder(&self) -> &FrameDecoder {
        &self.decoder
    }

    /// Takes one frame off `src` if it has fully arrived, verifying and decrypting its body.
    /// Any error means the connection must close; it is returned again on every later call.
    pub fn read_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if let Some(e) = self.failed {
            return Err(e.into());
        }
        let Some((header, body)) = self.decoder.decode_raw(src)? else {
            return Ok(None);
        };
        let body = self
            .records
            .open(&header, body)
            .inspect_err(|e| self.failed = Some(*e))?;
        Ok(Some(Frame { header, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::examples;

    const SUITES: [RecordSuite; 3] = [
        RecordSuite::Plaintext,
        RecordSuite::Aes256CbcHmacSha256,
        RecordSuite::Aes256Gcm,
    ];

    #[test]
    fn every_message_crosses_both_ways_in_every_suite() {
        for suite in SUITES {
            let (mut client, mut server) = Session::dangerous_pair_with_suite(suite);
            for client_sends in [true, false] {
                let (a, b) = if client_sends {
                    (&mut client, &mut server)
                } else {
                    (&mut server, &mut client)
                };
                let mut wire = BytesMut::new();
                for (i, message) in examples().iter().enumerate() {
                    a.write_message(RequestId(i as u32), message, &mut wire)
                        .unwrap();
                }
                for (i, message) in examples().iter().enumerate() {
                    let frame = b.read_frame(&mut wire).unwrap().unwrap();
                    assert_eq!(frame.header.id, RequestId(i as u32));
                    assert_eq!(&frame.message().unwrap(), message);
                }
                assert!(wire.is_empty());
            }
        }
    }

    #[test]
    fn frames_written_together_read_back_in_order_in_every_suite() {
        for suite in SUITES {
            let (client, mut server) = Session::dangerous_pair_with_suite(suite);
            let (mut send, _) = client.into_split();
            let bodies: Vec<Vec<u8>> = (0..11).map(|i| vec![i as u8; i * 1000]).collect();
            let frames: Vec<_> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| (FrameType::DATA, Service::FETCH, RequestId(i as u32), &b[..]))
                .collect();
            let mut wire = BytesMut::new();
            send.write_frames(&frames, &mut wire).unwrap();
            for (i, body) in bodies.iter().enumerate() {
                let frame = server.read_frame(&mut wire).unwrap().unwrap();
                assert_eq!(frame.header.id, RequestId(i as u32));
                assert_eq!(&frame.body[..], &body[..]);
            }
            assert!(wire.is_empty());
        }
    }

    #[test]
    fn max_payload_fits_the_cap() {
        for suite in SUITES {
            let (mut client, mut server) = Session::dangerous_pair_with_suite(suite);
            let body = vec![0x5a; client.max_payload()];
            let mut wire = BytesMut::new();
            client
                .write_frame(
                    FrameType::DATA,
                    Service::FETCH,
                    RequestId(1),
                    &body,
                    &mut wire,
                )
                .unwrap();
            assert_eq!(server.read_frame(&mut wire).unwrap().unwrap().body, body);
        }
    }

    #[test]
    fn the_session_acts_on_the_record_layers_limits() {
        use crate::crypto::CLOSE_SOON_MARGIN;
        let keys = DirectionKeys {
            enc: [5; 32],
            mac: [6; 32],
            iv: [7; 12],
        };
        let suite = RecordSuite::Aes256CbcHmacSha256;
        let last = u64::MAX - 1;
        let start = last - CLOSE_SOON_MARGIN;
        let mut sender = Session::with_records(
            1,
            DEFAULT_MAX_BODY,
            RecordSealer::new(suite, &keys).with_sequence(start),
            RecordOpener::new(suite, &keys),
        );
        let mut receiver = Session::with_records(
            1,
            DEFAULT_MAX_BODY,
            RecordSealer::new(suite, &keys),
            RecordOpener::new(suite, &keys).with_sequence(start),
        );
        let mut wire = BytesMut::new();
        let send = |s: &mut Session, wire: &mut BytesMut| {
            s.write_frame(FrameType::DATA, Service::FETCH, RequestId(1), b"x", wire)
        };
        send(&mut sender, &mut wire).unwrap();
        assert!(!sender.close_soon());
        send(&mut sender, &mut wire).unwrap();
        assert!(
            sender.close_soon(),
            "within the margin of the last sequence number"
        );
        for _ in 0..2 {
            assert_eq!(
                &receiver.read_frame(&mut wire).unwrap().unwrap().body[..],
                b"x"
            );
        }

        // At the last sequence number: one more record, then every write is refused.
        let (mut send_half, _) = Session::with_records(
            1,
            DEFAULT_MAX_BODY,
            RecordSealer::new(suite, &keys).with_sequence(last),
            RecordOpener::new(suite, &keys),
        )
        .into_split();
        let frame = (FrameType::DATA, Service::FETCH, RequestId(1), &b"y"[..]);
        let mut wire = BytesMut::new();
        assert!(matches!(
            send_half.write_frames(&[frame, frame], &mut wire),
            Err(Error::Crypto(CryptoError::SequenceExhausted))
        ));
        assert!(wire.is_empty());
        send_half.write_frames(&[frame], &mut wire).unwrap();
        assert!(send_half.close_soon());
        assert!(matches!(
            send_half.write_frame(frame.0, frame.1, frame.2, frame.3, &mut wire),
            Err(Error::Crypto(CryptoError::SequenceExhausted))
        ));
        assert!(matches!(
            send_half.write_message(
                RequestId(1),
                &Message::Ping(bytes::Bytes::from_static(b"p")),
                &mut wire
            ),
            Err(Error::Crypto(CryptoError::SequenceExhausted))
        ));
    }

    #[test]
    fn frame_len_is_what_write_frame_appends() {
        for suite in SUITES {
            let (client, _) = Session::dangerous_pair_with_suite(suite);
            let (mut send, _) = client.into_split();
            assert_eq!(send.suite().mode(), send.mode());
            for len in [0, 1, 15, 16, 17, 4096] {
                let mut wire = BytesMut::new();
                send.write_frame(
                    FrameType::DATA,
                    Service::FETCH,
                    RequestId(1),
                    &vec![1; len],
                    &mut wire,
                )
                .unwrap();
                assert_eq!(wire.len(), send.frame_len(len), "len {len}");
            }
        }
    }
}
