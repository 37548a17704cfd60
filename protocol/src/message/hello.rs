//! Handshake bodies (spec §4.2), and the two fields version 2 adds to the ClientHello: the
//! record suites the client offers ([`SuiteOffer`]) and an optional [`KeyHint`].

use std::fmt;

use bytes::{BufMut, Bytes};

use super::{expect_empty, get_array, get_u8, need};
use crate::error::DecodeError;

/// Whether bodies after the handshake are encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode(pub u8);

impl Mode {
    /// Every body protected by the negotiated record suite (the default).
    pub const ENCRYPTED: Self = Self(0x00);
    /// Authenticated handshake, then bodies in the clear. Servers refuse it unless configured.
    pub const PLAINTEXT: Self = Self(0x01);

    fn check(self) -> Result<Self, DecodeError> {
        match self {
            Self::ENCRYPTED | Self::PLAINTEXT => Ok(self),
            Self(other) => Err(DecodeError::InvalidValue {
                field: "mode",
                value: other.into(),
            }),
        }
    }
}

/// A record suite's wire number (spec §5.3). Unknown values survive decoding, so a server can
/// skip suites it does not know in an offer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SuiteId(pub u8);

impl SuiteId {
    /// AES-256-CBC with a random IV, then HMAC-SHA256 (spec §5.3.1); mandatory to implement.
    pub const AES_256_CBC_HMAC_SHA256: Self = Self(0x01);
    /// AES-256-GCM with nonces from the key schedule and the sequence number (spec §5.3.2).
    pub const AES_256_GCM: Self = Self(0x02);

    /// The constant's name, if this value has one.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::AES_256_CBC_HMAC_SHA256 => Some("AES_256_CBC_HMAC_SHA256"),
            Self::AES_256_GCM => Some("AES_256_GCM"),
            _ => None,
        }
    }
}

impl fmt::Debug for SuiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "SuiteId(0x{:02x})", self.0),
        }
    }
}

/// The record suites a client offers, most preferred first (spec §4.2):
///
/// ```text
/// count: u8 (1..=16) | suite: u8 × count      no 0x00, no repeats; unknown ids allowed
/// ```
///
/// Public so that any handshake (the PSK one here, an identity handshake) carries the same offer.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct SuiteOffer(Vec<SuiteId>);

impl SuiteOffer {
    /// Most suites one offer may list.
    pub const MAX: usize = 16;

    /// An offer of `suites` in this order; `None` if it is empty, longer than [`SuiteOffer::MAX`],
    /// names 0x00 or names a suite twice.
    pub fn new(suites: impl IntoIterator<Item = SuiteId>) -> Option<Self> {
        let suites: Vec<SuiteId> = suites.into_iter().collect();
        Self::check(&suites).then_some(Self(suites))
    }

    fn check(suites: &[SuiteId]) -> bool {
        !suites.is_empty()
            && suites.len() <= Self::MAX
            && suites
                .iter()
                .enumerate()
                .all(|(i, s)| s.0 != 0 && !suites[..i].contains(s))
    }

    pub fn suites(&self) -> &[SuiteId] {
        &self.0
    }

    /// Whether the offer names no suite: only a version-1 hello's, which has no offer field.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, suite: SuiteId) -> bool {
        self.0.contains(&suite)
    }

    /// The first offered suite that `accept` accepts: the client's preference decides (§4.3).
    pub fn select(&self, accept: impl Fn(SuiteId) -> bool) -> Option<SuiteId> {
        self.0.iter().copied().find(|&s| accept(s))
    }

    pub fn encoded_len(&self) -> usize {
        1 + self.0.len()
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        // At most MAX entries, by construction.
        dst.put_u8(self.0.len() as u8);
        for suite in &self.0 {
            dst.put_u8(suite.0);
        }
    }

    pub fn decode(src: &mut Bytes) -> Result<Self, DecodeError> {
        let count = get_u8(src)? as usize;
        need(src, count)?;
        let suites: Vec<SuiteId> = src.split_to(count).iter().map(|&b| SuiteId(b)).collect();
        if !Self::check(&suites) {
            return Err(DecodeError::InvalidValue {
                field: "suite offer",
                value: count as u64,
            });
        }
        Ok(Self(suites))
    }
}

impl fmt::Debug for SuiteOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

/// A public, one-way name of the pre-shared key a client holds, so that a server with many keys
/// knows which one to prove before it answers (spec §4.2, §5.2): the first 8 bytes of
/// `HMAC-SHA256(PSK, "ferry v2 key hint")`. It reveals nothing about the key, but every
/// connection made with one key carries the same hint, so an observer can link them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHint(pub [u8; 8]);

impl KeyHint {
    pub const LEN: usize = 8;
}

impl fmt::Debug for KeyHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHint({})", hex::encode(self.0))
    }
}

/// ```text
/// min_version: u8 | max_version: u8 | mode: u8 | nonce: [u8; 32] | key_share: [u8; 32]
/// and when max_version >= 2:
///   suites: SuiteOffer | hint_len: u8 (0 or 8) | hint: [u8; hint_len] | rest (only if max_version > 2)
/// ```
///
/// The layout follows `max_version` (spec §4.2): a hello that offers only version 1 is version
/// 1's 67 bytes, which version-1 servers read; one that offers version 2 carries the suite offer
/// and the key hint after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub min_version: u8,
    pub max_version: u8,
    pub mode: Mode,
    pub nonce: [u8; 32],
    /// The client's ephemeral X25519 public key.
    pub key_share: [u8; 32],
    /// The record suites offered, most preferred first. Empty, and not encoded, exactly when
    /// `max_version` is 1 (such a hello offers AES-256-CBC + HMAC-SHA256 alone, see
    /// [`ClientHello::offered_suites`]).
    pub suites: SuiteOffer,
    /// Which key the client holds; optional, and only when `max_version` ≥ 2.
    pub key_hint: Option<KeyHint>,
    /// Bytes after the key hint, which only a hello offering a version above 2 may carry (room
    /// for later versions; a version-2 server ignores them). Kept so that encoding reproduces
    /// the body.
    pub rest: Bytes,
}

impl ClientHello {
    /// Length of a hello offering only version 1: the fields every hello starts with.
    pub const LEN: usize = 3 + 32 + 32;

    /// The key hint, for a [`KeyResolver`](crate::handshake::KeyResolver) that serves many keys.
    pub fn key_hint(&self) -> Option<KeyHint> {
        self.key_hint
    }

    /// The suites offered; a hello offering only version 1 offers AES-256-CBC + HMAC-SHA256.
    pub fn offered_suites(&self) -> SuiteOffer {
        if self.max_version < 2 {
            SuiteOffer(vec![SuiteId::AES_256_CBC_HMAC_SHA256])
        } else {
            self.suites.clone()
        }
    }

    pub fn encoded_len(&self) -> usize {
        if self.max_version < 2 {
            return Self::LEN;
        }
        Self::LEN
            + self.suites.encoded_len()
            + 1
            + self.key_hint.map_or(0, |_| KeyHint::LEN)
            + self.rest.len()
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.min_version);
        dst.put_u8(self.max_version);
        dst.put_u8(self.mode.0);
        dst.put_slice(&self.nonce);
        dst.put_slice(&self.key_share);
        if self.max_version < 2 {
            return;
        }
        self.suites.encode(dst);
        match self.key_hint {
            Some(hint) => {
                dst.put_u8(KeyHint::LEN as u8);
                dst.put_slice(&hint.0);
            }
            None => dst.put_u8(0),
        }
        dst.put_slice(&self.rest);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let min_version = get_u8(&mut src)?;
        let max_version = get_u8(&mut src)?;
        if min_version == 0 || min_version > max_version {
            return Err(DecodeError::InvalidValue {
                field: "version range",
                value: u64::from(min_version) << 8 | u64::from(max_version),
            });
        }
        let mode = Mode(get_u8(&mut src)?).check()?;
        let nonce = get_array(&mut src)?;
        let key_share = get_array(&mut src)?;
        let mut hello = Self {
            min_version,
            max_version,
            mode,
            nonce,
            key_share,
            suites: SuiteOffer::default(),
            key_hint: None,
            rest: Bytes::new(),
        };
        if max_version >= 2 {
            hello.suites = SuiteOffer::decode(&mut src)?;
            hello.key_hint = match get_u8(&mut src)? {
                0 => None,
                8 => Some(KeyHint(get_array(&mut src)?)),
                other => {
                    return Err(DecodeError::InvalidValue {
                        field: "key hint length",
                        value: other.into(),
                    })
                }
            };
            if max_version > 2 {
                hello.rest = std::mem::take(&mut src);
            }
        }
        expect_empty(&src)?;
        Ok(hello)
    }
}

/// ```text
/// version: u8 | mode: u8 | nonce: [u8; 32] | key_share: [u8; 32] | suite: u8 (only if version >= 2)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The version chosen from the client's range; every later frame carries it.
    pub version: u8,
    /// Echo of the client's mode; a different value is a downgrade and fails the handshake.
    pub mode: Mode,
    pub nonce: [u8; 32],
    pub key_share: [u8; 32],
    /// The record suite chosen from the client's offer; present exactly when `version` ≥ 2
    /// (version 1 means AES-256-CBC + HMAC-SHA256).
    pub suite: Option<SuiteId>,
}

impl ServerHello {
    /// Length of a version-1 ServerHello; version 2 adds the suite byte.
    pub const LEN: usize = 2 + 32 + 32;

    pub fn encoded_len(&self) -> usize {
        Self::LEN + usize::from(self.suite.is_some())
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.version);
        dst.put_u8(self.mode.0);
        dst.put_slice(&self.nonce);
        dst.put_slice(&self.key_share);
        if let Some(suite) = self.suite {
            dst.put_u8(suite.0);
        }
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let version = get_u8(&mut src)?;
        let mode = Mode(get_u8(&mut src)?).check()?;
        let nonce = get_array(&mut src)?;
        let key_share = get_array(&mut src)?;
        let suite = if version >= 2 {
            Some(SuiteId(get_u8(&mut src)?))
        } else {
            None
        };
        expect_empty(&src)?;
        Ok(Self {
            version,
            mode,
            nonce,
            key_share,
            suite,
        })
    }

    /// The suite this hello selects: version 1 has only AES-256-CBC + HMAC-SHA256.
    pub fn selected_suite(&self) -> Option<SuiteId> {
        if self.version < 2 {
            Some(SuiteId::AES_256_CBC_HMAC_SHA256)
        } else {
            self.suite
        }
    }
}

/// Key confirmation: `HMAC-SHA256(confirm_key, transcript_hash)` (spec §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub mac: [u8; 32],
}

impl Finished {
    pub const LEN: usize = 32;

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.mac);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let mac = get_array(&mut src)?;
        expect_empty(&src)?;
        Ok(Self { mac })
    }
}
