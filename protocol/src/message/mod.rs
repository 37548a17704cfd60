//! Typed message bodies (spec §3) and the table of legal (type, service) pairs.
//!
//! Every body type has `decode(Bytes)`, `encode(&mut impl BufMut)` and `encoded_len()`. Integers
//! are big-endian, strings are a u16 byte length then UTF-8, and nothing is padded. A body must be
//! consumed exactly: trailing bytes are an error.

mod digest;
mod enrol;
mod entry;
mod error;
mod fetch;
mod hello;
mod list;
mod offer;
mod put;
mod stat;

pub use digest::{DigestRequest, DigestResponse};
pub use enrol::{
    EnrolConfirm, EnrolEnd, EnrolRequest, EnrolResponse, CONFIRM_LEN, ENROL_WRITE, PAKE_LEN,
    SIDE_A, SIDE_B,
};
pub use entry::{Entry, EntryKind};
pub use error::ErrorBody;
pub use fetch::{FetchEnd, FetchRequest, FetchResponse, TO_END};
pub use hello::{ClientHello, Finished, KeyHint, Mode, ServerHello, SuiteId, SuiteOffer};
pub use list::{ListEnd, ListPage, ListRequest};
pub use offer::{offer_flags, OfferItem, OfferRequest, OfferResponse, OfferSet};
pub use put::{put_flags, PutEnd, PutRequest, PutResponse, MAX_MODE};
pub use stat::StatRequest;

use bytes::{Buf, BufMut, Bytes};

use crate::error::DecodeError;
use crate::header::{FrameType, Service};

/// One decoded message. The request id and version live in the frame header, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    ClientHello(ClientHello),
    ServerHello(ServerHello),
    ServerFinished(Finished),
    ClientFinished(Finished),
    ListRequest(ListRequest),
    StatRequest(StatRequest),
    FetchRequest(FetchRequest),
    DigestRequest(DigestRequest),
    ListPage(ListPage),
    StatResponse(Entry),
    FetchResponse(FetchResponse),
    DigestResponse(DigestResponse),
    /// A chunk of fetched file content.
    Data(Bytes),
    ListEnd(ListEnd),
    FetchEnd(FetchEnd),
    /// An upload's request, its flow-control answers, its data and its end (spec §3.12).
    PutRequest(PutRequest),
    PutResponse(PutResponse),
    PutData(Bytes),
    PutEnd(PutEnd),
    /// An enrolment's request, the server's answer, the client's confirmation and the end
    /// (spec §13.11).
    EnrolRequest(EnrolRequest),
    EnrolResponse(EnrolResponse),
    EnrolConfirm(EnrolConfirm),
    EnrolEnd(EnrolEnd),
    /// An offer of files and the receiver's answer (spec §3.13).
    OfferRequest(OfferRequest),
    OfferResponse(OfferResponse),
    /// An error; `service` is that of the request it answers.
    Error {
        service: Service,
        body: ErrorBody,
    },
    /// The client abandons request `id` of this service.
    Cancel {
        service: Service,
    },
    /// Keep-alive probe; the payload is arbitrary.
    Ping(Bytes),
    /// Echo of a ping payload.
    Pong(Bytes),
}

impl Message {
    /// The header's type and service for this message.
    pub fn kind(&self) -> (FrameType, Service) {
        use FrameType as T;
        match self {
            Self::ClientHello(_) => (T::CLIENT_HELLO, Service::HANDSHAKE),
            Self::ServerHello(_) => (T::SERVER_HELLO, Service::HANDSHAKE),
            Self::ServerFinished(_) => (T::SERVER_FINISHED, Service::HANDSHAKE),
            Self::ClientFinished(_) => (T::CLIENT_FINISHED, Service::HANDSHAKE),
            Self::ListRequest(_) => (T::REQUEST, Service::LIST),
            Self::StatRequest(_) => (T::REQUEST, Service::STAT),
            Self::FetchRequest(_) => (T::REQUEST, Service::FETCH),
            Self::DigestRequest(_) => (T::REQUEST, Service::DIGEST),
            Self::ListPage(_) => (T::RESPONSE, Service::LIST),
            Self::StatResponse(_) => (T::RESPONSE, Service::STAT),
            Self::FetchResponse(_) => (T::RESPONSE, Service::FETCH),
            Self::DigestResponse(_) => (T::RESPONSE, Service::DIGEST),
            Self::Data(_) => (T::DATA, Service::FETCH),
            Self::ListEnd(_) => (T::END, Service::LIST),
            Self::FetchEnd(_) => (T::END, Service::FETCH),
            Self::PutRequest(_) => (T::REQUEST, Service::PUT),
            Self::PutResponse(_) => (T::RESPONSE, Service::PUT),
            Self::PutData(_) => (T::DATA, Service::PUT),
            Self::PutEnd(_) => (T::END, Service::PUT),
            Self::EnrolRequest(_) => (T::REQUEST, Service::ENROL),
            Self::EnrolResponse(_) => (T::RESPONSE, Service::ENROL),
            Self::EnrolConfirm(_) => (T::DATA, Service::ENROL),
            Self::EnrolEnd(_) => (T::END, Service::ENROL),
            Self::OfferRequest(_) => (T::REQUEST, Service::OFFER),
            Self::OfferResponse(_) => (T::RESPONSE, Service::OFFER),
            Self::Error { service, .. } => (T::ERROR, *service),
            Self::Cancel { service } => (T::CANCEL, *service),
            Self::Ping(_) => (T::PING, Service::ECHO),
            Self::Pong(_) => (T::PONG, Service::ECHO),
        }
    }

    /// Decodes a body given its header's type and service (spec §3, table of legal pairs).
    pub fn decode(kind: FrameType, service: Service, body: Bytes) -> Result<Self, DecodeError> {
        use FrameType as T;
        Ok(match (kind, service) {
            (T::CLIENT_HELLO, Service::HANDSHAKE) => Self::ClientHello(ClientHello::decode(body)?),
            (T::SERVER_HELLO, Service::HANDSHAKE) => Self::ServerHello(ServerHello::decode(body)?),
            (T::SERVER_FINISHED, Service::HANDSHAKE) => {
                Self::ServerFinished(Finished::decode(body)?)
            }
            (T::CLIENT_FINISHED, Service::HANDSHAKE) => {
                Self::ClientFinished(Finished::decode(body)?)
            }
            (T::REQUEST, Service::LIST) => Self::ListRequest(ListRequest::decode(body)?),
            (T::REQUEST, Service::STAT) => Self::StatRequest(StatRequest::decode(body)?),
            (T::REQUEST, Service::FETCH) => Self::FetchRequest(FetchRequest::decode(body)?),
            (T::REQUEST, Service::DIGEST) => Self::DigestRequest(DigestRequest::decode(body)?),
            (T::RESPONSE, Service::LIST) => Self::ListPage(ListPage::decode(body)?),
            (T::RESPONSE, Service::STAT) => Self::StatResponse(Entry::decode_body(body)?),
            (T::RESPONSE, Service::FETCH) => Self::FetchResponse(FetchResponse::decode(body)?),
            (T::RESPONSE, Service::DIGEST) => Self::DigestResponse(DigestResponse::decode(body)?),
            (T::DATA, Service::FETCH) => Self::Data(body),
            (T::END, Service::LIST) => Self::ListEnd(ListEnd::decode(body)?),
            (T::END, Service::FETCH) => Self::FetchEnd(FetchEnd::decode(body)?),
            (T::REQUEST, Service::PUT) => Self::PutRequest(PutRequest::decode(body)?),
            (T::RESPONSE, Service::PUT) => Self::PutResponse(PutResponse::decode(body)?),
            (T::DATA, Service::PUT) => Self::PutData(body),
            (T::END, Service::PUT) => Self::PutEnd(PutEnd::decode(body)?),
            (T::REQUEST, Service::ENROL) => Self::EnrolRequest(EnrolRequest::decode(body)?),
            (T::RESPONSE, Service::ENROL) => Self::EnrolResponse(EnrolResponse::decode(body)?),
            (T::DATA, Service::ENROL) => Self::EnrolConfirm(EnrolConfirm::decode(body)?),
            (T::END, Service::ENROL) => Self::EnrolEnd(EnrolEnd::decode(body)?),
            (T::REQUEST, Service::OFFER) => Self::OfferRequest(OfferRequest::decode(body)?),
            (T::RESPONSE, Service::OFFER) => Self::OfferResponse(OfferResponse::decode(body)?),
            (T::ERROR, service) => Self::Error {
                service,
                body: ErrorBody::decode(body)?,
            },
            (T::CANCEL, service) if is_request_service(service) => {
                expect_empty(&body)?;
                Self::Cancel { service }
            }
            (T::PING, Service::ECHO) => Self::Ping(body),
            (T::PONG, Service::ECHO) => Self::Pong(body),
            (kind, service) => return Err(DecodeError::UnknownMessage { kind, service }),
        })
    }

    /// Appends the body bytes.
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::ClientHello(m) => m.encode(dst),
            Self::ServerHello(m) => m.encode(dst),
            Self::ServerFinished(m) | Self::ClientFinished(m) => m.encode(dst),
            Self::ListRequest(m) => m.encode(dst),
            Self::StatRequest(m) => m.encode(dst),
            Self::FetchRequest(m) => m.encode(dst),
            Self::DigestRequest(m) => m.encode(dst),
            Self::ListPage(m) => m.encode(dst),
            Self::StatResponse(m) => m.encode(dst),
            Self::FetchResponse(m) => m.encode(dst),
            Self::DigestResponse(m) => m.encode(dst),
            Self::Data(b) | Self::Ping(b) | Self::Pong(b) => dst.put_slice(b),
            Self::ListEnd(m) => m.encode(dst),
            Self::FetchEnd(m) => m.encode(dst),
            Self::PutRequest(m) => m.encode(dst),
            Self::PutResponse(m) => m.encode(dst),
            Self::PutData(b) => dst.put_slice(b),
            Self::PutEnd(m) => m.encode(dst),
            Self::EnrolRequest(m) => m.encode(dst),
            Self::EnrolResponse(m) => m.encode(dst),
            Self::EnrolConfirm(m) => m.encode(dst),
            Self::EnrolEnd(m) => m.encode(dst),
            Self::OfferRequest(m) => m.encode(dst),
            Self::OfferResponse(m) => m.encode(dst),
            Self::Error { body, .. } => body.encode(dst),
            Self::Cancel { .. } => {}
        }
    }

    /// Exact length of [`Message::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::ClientHello(m) => m.encoded_len(),
            Self::ServerHello(m) => m.encoded_len(),
            Self::ServerFinished(_) | Self::ClientFinished(_) => Finished::LEN,
            Self::ListRequest(m) => m.encoded_len(),
            Self::StatRequest(m) => m.encoded_len(),
            Self::FetchRequest(m) => m.encoded_len(),
            Self::DigestRequest(m) => m.encoded_len(),
            Self::ListPage(m) => m.encoded_len(),
            Self::StatResponse(m) => m.encoded_len(),
            Self::FetchResponse(_) => FetchResponse::LEN,
            Self::DigestResponse(_) => DigestResponse::LEN,
            Self::Data(b) | Self::Ping(b) | Self::Pong(b) => b.len(),
            Self::ListEnd(_) => ListEnd::LEN,
            Self::FetchEnd(_) => FetchEnd::LEN,
            Self::PutRequest(m) => m.encoded_len(),
            Self::PutResponse(_) => PutResponse::LEN,
            Self::PutData(b) => b.len(),
            Self::PutEnd(_) => PutEnd::LEN,
            Self::EnrolRequest(_) => EnrolRequest::LEN,
            Self::EnrolResponse(_) => EnrolResponse::LEN,
            Self::EnrolConfirm(_) => EnrolConfirm::LEN,
            Self::EnrolEnd(m) => m.encoded_len(),
            Self::OfferRequest(m) => m.encoded_len(),
            Self::OfferResponse(m) => m.encoded_len(),
            Self::Error { body, .. } => body.encoded_len(),
            Self::Cancel { .. } => 0,
        }
    }

    /// Checks that the message fits the wire format: strings of at most 65 535 bytes and list
    /// pages of at most 65 535 entries. Public fields make it possible to build one that does
    /// not, and encoding it would silently corrupt the body.
    pub fn check_encodable(&self) -> Result<(), DecodeError> {
        match self {
            Self::ListRequest(m) => check_str(&m.path),
            Self::StatRequest(m) => check_str(&m.path),
            Self::FetchRequest(m) => check_str(&m.path),
            Self::DigestRequest(m) => check_str(&m.path),
            Self::PutRequest(m) => check_str(&m.path),
            Self::StatResponse(entry) => check_str(&entry.name),
            Self::ListPage(page) => {
                if page.entries.len() > u16::MAX as usize {
                    return Err(DecodeError::InvalidValue {
                        field: "list page entry count",
                        value: page.entries.len() as u64,
                    });
                }
                page.entries.iter().try_for_each(|e| check_str(&e.name))
            }
            Self::Error { body, .. } => check_str(&body.message),
            Self::EnrolEnd(m) => check_str(&m.name).and_then(|()| check_str(&m.root)),
            Self::OfferRequest(m) => m.check_encodable(),
            Self::OfferResponse(m) => m.check_encodable(),
            _ => Ok(()),
        }
    }

    /// The body as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.into()
    }
}

/// Services that take requests (and so can be cancelled or answered with errors).
pub fn is_request_service(service: Service) -> bool {
    matches!(
        service,
        Service::LIST
            | Service::STAT
            | Service::FETCH
            | Service::DIGEST
            | Service::PUT
            | Service::ENROL
            | Service::OFFER
    )
}

// Field helpers shared by the body types. `Bytes` is the reader so that data can be sliced out
// without copying.

pub(crate) fn need(src: &Bytes, n: usize) -> Result<(), DecodeError> {
    if src.remaining() < n {
        Err(DecodeError::Truncated {
            needed: n,
            got: src.remaining(),
        })
    } else {
        Ok(())
    }
}

pub(crate) fn get_u8(src: &mut Bytes) -> Result<u8, DecodeError> {
    need(src, 1)?;
    Ok(src.get_u8())
}

pub(crate) fn get_u16(src: &mut Bytes) -> Result<u16, DecodeError> {
    need(src, 2)?;
    Ok(src.get_u16())
}

/// A timestamp's nanoseconds are below one second, wherever a message carries one.
pub(crate) fn check_mtime_nanos(mtime_nanos: u32) -> Result<(), DecodeError> {
    if mtime_nanos >= 1_000_000_000 {
        return Err(DecodeError::InvalidValue {
            field: "mtime_nanos",
            value: mtime_nanos.into(),
        });
    }
    Ok(())
}

pub(crate) fn get_u32(src: &mut Bytes) -> Result<u32, DecodeError> {
    need(src, 4)?;
    Ok(src.get_u32())
}

pub(crate) fn get_u64(src: &mut Bytes) -> Result<u64, DecodeError> {
    need(src, 8)?;
    Ok(src.get_u64())
}

pub(crate) fn get_i64(src: &mut Bytes) -> Result<i64, DecodeError> {
    need(src, 8)?;
    Ok(src.get_i64())
}

pub(crate) fn get_array<const N: usize>(src: &mut Bytes) -> Result<[u8; N], DecodeError> {
    need(src, N)?;
    let mut out = [0u8; N];
    src.copy_to_slice(&mut out);
    Ok(out)
}

/// A u16 length, then that many bytes of UTF-8.
pub(crate) fn get_str(src: &mut Bytes) -> Result<String, DecodeError> {
    let len = get_u16(src)? as usize;
    need(src, len)?;
    let raw = src.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
}

pub(crate) fn put_str(dst: &mut impl BufMut, s: &str) {
    // `Message::check_encodable` runs before anything reaches the wire, so the cast cannot
    // truncate there.
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

pub(crate) fn str_len(s: &str) -> usize {
    2 + s.len()
}

/// Strings travel with a u16 length, so they hold at most 65 535 bytes.
pub(crate) fn check_str(s: &str) -> Result<(), DecodeError> {
    if s.len() > u16::MAX as usize {
        Err(DecodeError::StringTooLong(s.len()))
    } else {
        Ok(())
    }
}

pub(crate) fn expect_empty(src: &Bytes) -> Result<(), DecodeError> {
    if src.has_remaining() {
        Err(DecodeError::TrailingBytes(src.remaining()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every message kind, one example each; reused by property tests and vectors.
    pub fn examples() -> Vec<Message> {
        let entry = Entry {
            name: "notes.txt".into(),
            kind: EntryKind::FILE,
            size: 1234,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 5,
            mode: 0o644,
            link: None,
        };
        vec![
            Message::ClientHello(ClientHello {
                min_version: 1,
                max_version: 1,
                mode: Mode::ENCRYPTED,
                nonce: [1; 32],
                key_share: [2; 32],
                suites: SuiteOffer::default(),
                key_hint: None,
                rest: Bytes::new(),
            }),
            Message::ClientHello(ClientHello {
                min_version: 1,
                max_version: 2,
                mode: Mode::ENCRYPTED,
                nonce: [1; 32],
                key_share: [2; 32],
                suites: SuiteOffer::new([SuiteId::AES_256_GCM, SuiteId(0x7f)]).unwrap(),
                key_hint: Some(KeyHint([9; 8])),
                rest: Bytes::new(),
            }),
            Message::ServerHello(ServerHello {
                version: 1,
                mode: Mode::PLAINTEXT,
                nonce: [3; 32],
                key_share: [4; 32],
                suite: None,
            }),
            Message::ServerHello(ServerHello {
                version: 2,
                mode: Mode::ENCRYPTED,
                nonce: [3; 32],
                key_share: [4; 32],
                suite: Some(SuiteId::AES_256_GCM),
            }),
            Message::ServerFinished(Finished { mac: [5; 32] }),
            Message::ClientFinished(Finished { mac: [6; 32] }),
            Message::ListRequest(ListRequest::new("docs", true, 3).unwrap()),
            Message::StatRequest(StatRequest::new("docs/a.txt").unwrap()),
            Message::FetchRequest(FetchRequest::new("big.iso", 10, TO_END).unwrap()),
            Message::ListPage(ListPage {
                entries: vec![entry.clone(), entry.clone()],
            }),
            Message::StatResponse(entry),
            Message::DigestRequest(DigestRequest::new("big.iso").unwrap()),
            Message::DigestResponse(DigestResponse {
                size: 100,
                mtime_secs: -1,
                mtime_nanos: 999_999_999,
                digest: [8; 32],
            }),
            Message::FetchResponse(FetchResponse {
                size: 100,
                mtime_secs: -1,
                mtime_nanos: 999_999_999,
                offset: 10,
                length: 90,
            }),
            Message::Data(Bytes::from_static(b"hello")),
            Message::ListEnd(ListEnd { entries: 2 }),
            Message::FetchEnd(FetchEnd {
                bytes: 90,
                digest: [7; 32],
            }),
            Message::Error {
                service: Service::FETCH,
                body: ErrorBody::new(crate::ErrorCode::NOT_FOUND, "no such file: a.txt"),
            },
            Message::Cancel {
                service: Service::FETCH,
            },
            Message::Ping(Bytes::from_static(b"\x00\x01")),
            Message::Pong(Bytes::new()),
            Message::PutRequest(
                PutRequest::new("in/new.bin", 100, 0o644, put_flags::PARENTS, [9; 32]).unwrap(),
            ),
            Message::PutResponse(PutResponse {
                offset: 40,
                limit: 4_194_344,
                prefix: [10; 32],
            }),
            Message::PutData(Bytes::from_static(b"bytes")),
            Message::PutEnd(PutEnd {
                bytes: 100,
                digest: [9; 32],
            }),
            Message::EnrolRequest(EnrolRequest {
                nameplate: 7,
                pake: [SIDE_A; PAKE_LEN],
            }),
            Message::EnrolResponse(EnrolResponse {
                pake: [SIDE_B; PAKE_LEN],
                confirm: [11; 32],
            }),
            Message::EnrolConfirm(EnrolConfirm { confirm: [12; 32] }),
            Message::EnrolEnd(EnrolEnd {
                flags: ENROL_WRITE,
                name: "bob".into(),
                root: "team/bob".into(),
            }),
            Message::OfferRequest(OfferRequest {
                items: vec![
                    OfferItem {
                        path: "photos/a.jpg".into(),
                        size: 100,
                        mode: 0o644,
                        flags: 0,
                        digest: [13; 32],
                    },
                    OfferItem {
                        path: "photos/empty".into(),
                        size: 0,
                        mode: 0o755,
                        flags: offer_flags::DIRECTORY,
                        digest: [0; 32],
                    },
                ],
                set: None,
            }),
            Message::OfferRequest(OfferRequest {
                items: vec![OfferItem {
                    path: "b.bin".into(),
                    size: 7,
                    mode: 0o600,
                    flags: 0,
                    digest: [14; 32],
                }],
                set: Some(OfferSet {
                    items: 40_000,
                    bytes: 1 << 33,
                }),
            }),
            Message::OfferResponse(OfferResponse {
                codes: vec![OfferResponse::ACCEPTED, crate::ErrorCode::ALREADY_EXISTS],
            }),
        ]
    }

    #[test]
    fn every_example_round_trips_with_exact_length() {
        for message in examples() {
            let bytes = message.to_bytes();
            assert_eq!(bytes.len(), message.encoded_len(), "{message:?}");
            let (kind, service) = message.kind();
            assert_eq!(Message::decode(kind, service, bytes).unwrap(), message);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for message in examples() {
            let bytes = message.to_bytes();
            let (kind, service) = message.kind();
            for cut in 0..bytes.len() {
                // Payload-only messages accept any length; everything else must fail.
                let result = Message::decode(kind, service, bytes.slice(..cut));
                if !matches!(
                    message,
                    Message::Data(_) | Message::PutData(_) | Message::Ping(_) | Message::Pong(_)
                ) {
                    assert!(result.is_err(), "{message:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = Message::ListEnd(ListEnd { entries: 1 }).to_bytes().to_vec();
        bytes.push(0);
        assert_eq!(
            Message::decode(FrameType::END, Service::LIST, bytes.into()),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn unknown_pairs_are_rejected() {
        assert!(matches!(
            Message::decode(FrameType::DATA, Service::LIST, Bytes::new()),
            Err(DecodeError::UnknownMessage { .. })
        ));
        assert!(matches!(
            Message::decode(FrameType(0x77), Service::FETCH, Bytes::new()),
            Err(DecodeError::UnknownMessage { .. })
        ));
    }
}
