//! The record layer: one direction's protection of frame bodies after the handshake, for any
//! suite, with the sequence numbers and their limits (spec §5.3–§5.5).
//!
//! A [`RecordSealer`] (sending) and a [`RecordOpener`] (receiving) each hold a keyed
//! [`RecordSuite`] and their own sequence counter; the sealer also holds the source of record
//! IVs, an input like every other random choice of the sans-IO core. Before sealing, the caller
//! asks [`RecordSealer::pre_seal_action`] what to do and acts on the answer (the model is rustls's
//! `RecordLayer` and `PreEncryptAction`). A new suite is one more [`RecordSuite`] variant and one
//! more keyed state here; the session and connection code do not change. The suites:
//! AES-256-CBC + HMAC-SHA256 (§5.3.1, every version) and AES-256-GCM (§5.3.2, version 2).

use std::fmt;

use bytes::{Bytes, BytesMut};
use rand::{CryptoRng, RngCore};

use super::cbc_hmac::{self, CbcHmac, IV_LEN};
use super::gcm::{self, Gcm};
use super::key_schedule::DirectionKeys;
use crate::error::CryptoError;
use crate::frame::encode_plain;
use crate::header::Header;
use crate::message::{Mode, SuiteId};

/// Which protection a session's records get; the handshake's mode and negotiated suite pick it
/// (spec §4.3, §4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordSuite {
    /// Bodies travel as they are: no keys, no sequence numbers (plaintext mode).
    Plaintext,
    /// AES-256-CBC with a random IV per record, then HMAC-SHA256 over the implicit sequence
    /// number, the header and the ciphertext (spec §5.3.1). Mandatory to implement.
    Aes256CbcHmacSha256,
    /// AES-256-GCM with the header as associated data and the nonce from the key schedule's
    /// IV and the implicit sequence number (spec §5.3.2). Version 2 only.
    Aes256Gcm,
}

impl RecordSuite {
    /// The encrypted suites this implementation speaks, in its order of preference: what a
    /// client offers and a server accepts unless told otherwise.
    pub const DEFAULT_SUITES: [RecordSuite; 2] = [Self::Aes256Gcm, Self::Aes256CbcHmacSha256];

    /// The handshake mode that selects this suite.
    pub fn mode(self) -> Mode {
        match self {
            Self::Plaintext => Mode::PLAINTEXT,
            Self::Aes256CbcHmacSha256 | Self::Aes256Gcm => Mode::ENCRYPTED,
        }
    }

    /// The suite's wire number (spec §4.2); plaintext has none.
    pub fn id(self) -> Option<SuiteId> {
        match self {
            Self::Plaintext => None,
            Self::Aes256CbcHmacSha256 => Some(SuiteId::AES_256_CBC_HMAC_SHA256),
            Self::Aes256Gcm => Some(SuiteId::AES_256_GCM),
        }
    }

    /// The suite a wire number names, if this implementation speaks it.
    pub fn from_id(id: SuiteId) -> Option<Self> {
        match id {
            SuiteId::AES_256_CBC_HMAC_SHA256 => Some(Self::Aes256CbcHmacSha256),
            SuiteId::AES_256_GCM => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// The name `--suite` takes and logs print: `plaintext`, `cbc-hmac` or `gcm`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Aes256CbcHmacSha256 => "cbc-hmac",
            Self::Aes256Gcm => "gcm",
        }
    }

    /// What a `--suite NAME` flag selects, on either end: `gcm` is the default (GCM preferred,
    /// CBC + HMAC still spoken), `cbc-hmac` the old suite alone (which a client speaks as a
    /// version-1 hello, so that servers from before version 2 understand it).
    pub fn parse_selection(name: &str) -> Result<Vec<RecordSuite>, String> {
        match name {
            "gcm" => Ok(Self::DEFAULT_SUITES.to_vec()),
            "cbc-hmac" => Ok(vec![Self::Aes256CbcHmacSha256]),
            other => Err(format!(
                "unknown record suite {other:?}; expected gcm or cbc-hmac"
            )),
        }
    }

    /// Wire length of the body that carries `len` plaintext bytes.
    pub fn sealed_len(self, len: usize) -> usize {
        match self {
            Self::Plaintext => len,
            Self::Aes256CbcHmacSha256 => cbc_hmac::sealed_len(len),
            Self::Aes256Gcm => gcm::sealed_len(len),
        }
    }

    /// How many bytes a body needs free after it to be sealed where it lies
    /// ([`RecordSealer::seal_in_place`]), for the suites where that saves a copy: GCM (room for
    /// its tag). `None` for the others: plaintext is never copied to be sealed, and CBC + HMAC
    /// records are faster sealed together, by copying ([`RecordSealer::seal_many`]), than one
    /// at a time in place.
    pub fn in_place_room(self) -> Option<usize> {
        match self {
            Self::Aes256Gcm => Some(gcm::TAG_LEN),
            Self::Plaintext | Self::Aes256CbcHmacSha256 => None,
        }
    }

    /// Largest plaintext whose body fits in `max_body` wire bytes.
    pub fn max_plaintext(self, max_body: usize) -> usize {
        match self {
            Self::Plaintext => max_body,
            Self::Aes256CbcHmacSha256 => cbc_hmac::max_plaintext(max_body),
            Self::Aes256Gcm => gcm::max_plaintext(max_body),
        }
    }

    /// The last sequence number a record of one direction may use (spec §5.5: 2⁶⁴ − 2, so a
    /// counter never wraps, and so no GCM nonce repeats).
    pub fn last_sequence(self) -> u64 {
        u64::MAX - 1
    }

    /// How many 16-byte blocks one direction may protect under one key, if the suite has such
    /// a limit (GCM: [`gcm::BLOCK_LIMIT`], spec §5.5).
    pub fn block_limit(self) -> Option<u64> {
        match self {
            Self::Aes256Gcm => Some(gcm::BLOCK_LIMIT),
            Self::Plaintext | Self::Aes256CbcHmacSha256 => None,
        }
    }
}

/// How close to [`RecordSuite::last_sequence`] sealing answers [`PreSealAction::CloseSoon`]:
/// room for in-flight requests to finish before the hard stop (rustls keeps the same margin).
pub const CLOSE_SOON_MARGIN: u64 = 1 << 16;

/// How close to a suite's [`RecordSuite::block_limit`] sealing answers
/// [`PreSealAction::CloseSoon`]: 2²⁶ blocks, 1 GiB of room for requests in flight.
pub const CLOSE_SOON_BLOCKS: u64 = 1 << 26;

/// What to do before sealing records, given how many sequence numbers (and, for GCM, blocks)
/// are left. Ordered from the mildest to the strictest answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PreSealAction {
    /// Seal.
    Proceed,
    /// Seal, but the sequence is near its end: start no new requests and close the connection
    /// once the ones in flight are done; a new connection gets new keys.
    CloseSoon,
    /// Do not seal: a record would need a sequence number past the last (spec §5.5). Close the
    /// connection ([`CryptoError::SequenceExhausted`]).
    Refuse,
}

/// A cryptographically secure generator that may move between threads: what record IVs are
/// drawn from (spec §5.3). Implemented for every such generator.
pub trait IvRng: RngCore + CryptoRng + Send {}

impl<R: RngCore + CryptoRng + Send> IvRng for R {}

/// Where a sealer draws its IVs, one draw of [`IV_LEN`] bytes per record. Boxed so that a
/// session's type does not depend on it.
pub type IvSource = Box<dyn IvRng>;

/// The default [`IvSource`]: the thread's CSPRNG (ChaCha12, seeded and reseeded from the
/// operating system), fetched on every draw so that the source itself is `Send`. Zero-sized, so
/// boxing it allocates nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRngIvs;

impl ThreadRngIvs {
    /// Boxed, as sealers take it.
    pub fn boxed() -> IvSource {
        Box::new(Self)
    }
}

impl RngCore for ThreadRngIvs {
    fn next_u32(&mut self) -> u32 {
        rand::thread_rng().next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        rand::thread_rng().next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::thread_rng().fill_bytes(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        rand::thread_rng().try_fill_bytes(dest)
    }
}

// Every draw comes from `ThreadRng`, which is a CSPRNG.
impl CryptoRng for ThreadRngIvs {}

/// A suite keyed for one direction.
// One per direction per session, never in a collection: boxing the large variant would only add
// an indirection to every record.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Keyed {
    Plaintext,
    Aes256CbcHmacSha256(CbcHmac),
    Aes256Gcm(Gcm),
}

impl Keyed {
    fn new(suite: RecordSuite, keys: &DirectionKeys) -> Self {
        match suite {
            RecordSuite::Plaintext => Self::Plaintext,
            RecordSuite::Aes256CbcHmacSha256 => Self::Aes256CbcHmacSha256(CbcHmac::new(keys)),
            RecordSuite::Aes256Gcm => Self::Aes256Gcm(Gcm::new(keys)),
        }
    }

    #[inline]
    fn suite(&self) -> RecordSuite {
        match self {
            Self::Plaintext => RecordSuite::Plaintext,
            Self::Aes256CbcHmacSha256(_) => RecordSuite::Aes256CbcHmacSha256,
            Self::Aes256Gcm(_) => RecordSuite::Aes256Gcm,
        }
    }
}

/// Seals outgoing bodies for one direction: the suite, the send sequence number, the blocks
/// used under the key and the IV source.
pub struct RecordSealer {
    keyed: Keyed,
    /// The sequence number the next record uses (spec §5.5).
    seq: u64,
    /// Blocks sealed so far, for suites with a [`RecordSuite::block_limit`].
    blocks: u64,
    ivs: IvSource,
}

impl fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSealer")
            .field("suite", &self.keyed.suite())
            .field("seq", &self.seq)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl RecordSealer {
    /// Plaintext: frames are written as they are.
    pub fn plaintext() -> Self {
        Self::new(RecordSuite::Plaintext, &DirectionKeys::unused())
    }

    /// `suite` keyed with this direction's `keys`, from sequence number 0, with IVs from
    /// [`ThreadRngIvs`]. Plaintext ignores the keys.
    pub fn new(suite: RecordSuite, keys: &DirectionKeys) -> Self {
        Self {
            keyed: Keyed::new(suite, keys),
            seq: 0,
            blocks: 0,
            ivs: ThreadRngIvs::boxed(),
        }
    }

    /// Draws IVs from `ivs` instead, e.g. a seeded generator for a reproducible test.
    pub fn with_ivs(mut self, ivs: IvSource) -> Self {
        self.ivs = ivs;
        self
    }

    /// Starts at sequence number `seq` (tests and vectors).
    pub fn with_sequence(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    /// Starts as if `blocks` had already been sealed under the key (tests of the usage limit).
    pub fn with_blocks_used(mut self, blocks: u64) -> Self {
        self.blocks = blocks;
        self
    }

    /// Counts `blocks` as sealed under the key so far (tests of the usage limit through a
    /// whole connection: see [`crate::SendHalf::assume_blocks_used`]).
    #[doc(hidden)]
    pub fn set_blocks_used(&mut self, blocks: u64) {
        self.blocks = blocks;
    }

    #[inline]
    pub fn suite(&self) -> RecordSuite {
        self.keyed.suite()
    }

    /// The sequence number the next record will use.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// What to do before sealing `records` more records: by the sequence numbers left and, for
    /// GCM, the blocks left under the key (each record counts at least one; the exact count is
    /// checked when sealing). Plaintext has no limits and always proceeds.
    #[inline]
    pub fn pre_seal_action(&self, records: usize) -> PreSealAction {
        let suite = self.keyed.suite();
        if suite == RecordSuite::Plaintext || records == 0 {
            return PreSealAction::Proceed;
        }
        let last = suite.last_sequence();
        let by_sequence = match self.seq.checked_add(records as u64 - 1) {
            Some(final_seq) if final_seq <= last - CLOSE_SOON_MARGIN => PreSealAction::Proceed,
            Some(final_seq) if final_seq <= last => PreSealAction::CloseSoon,
            _ => PreSealAction::Refuse,
        };
        let Some(limit) = suite.block_limit() else {
            return by_sequence;
        };
        let by_blocks = match self.blocks.checked_add(records as u64) {
            Some(used) if used <= limit - CLOSE_SOON_BLOCKS => PreSealAction::Proceed,
            Some(used) if used <= limit => PreSealAction::CloseSoon,
            _ => PreSealAction::Refuse,
        };
        by_sequence.max(by_blocks)
    }

    /// Counts `records`' blocks against the suite's usage limit, or refuses them all (spec
    /// §5.5): a key is never used past it.
    fn charge_blocks<'a>(
        &mut self,
        records: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), CryptoError> {
        let Some(limit) = self.keyed.suite().block_limit() else {
            return Ok(());
        };
        let mut used = self.blocks;
        for plaintext in records {
            used = used.saturating_add(gcm::blocks(plaintext.len()));
        }
        if used > limit {
            return Err(CryptoError::SequenceExhausted);
        }
        self.blocks = used;
        Ok(())
    }

    /// Appends header and body for `plaintext`, sealed with a fresh IV.
    /// `header.length` is overwritten with the body's wire length.
    #[inline]
    pub fn seal(
        &mut self,
        header: Header,
        plaintext: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        if let Keyed::Plaintext = self.keyed {
            encode_plain_header(header, plaintext, dst);
            return Ok(());
        }
        let mut iv = [0u8; IV_LEN];
        self.ivs.fill_bytes(&mut iv);
        self.seal_with_iv(header, plaintext, &iv, dst)
    }

    /// [`RecordSealer::seal`] with a caller-chosen IV. Only for test vectors: a predictable IV
    /// breaks CBC's confidentiality.
    pub fn dangerous_seal_with_iv(
        &mut self,
        header: Header,
        plaintext: &[u8],
        iv: [u8; IV_LEN],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        self.seal_with_iv(header, plaintext, &iv, dst)
    }

    fn seal_with_iv(
        &mut self,
        header: Header,
        plaintext: &[u8],
        iv: &[u8; IV_LEN],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        match &self.keyed {
            Keyed::Plaintext => encode_plain_header(header, plaintext, dst),
            Keyed::Aes256CbcHmacSha256(suite) => {
                // Never wrap, whatever the caller did with pre_seal_action.
                if self.pre_seal_action(1) == PreSealAction::Refuse {
                    return Err(CryptoError::SequenceExhausted);
                }
                suite.seal(self.seq, header, plaintext, iv, dst)?;
                self.seq += 1;
            }
            Keyed::Aes256Gcm(_) => {
                // A nonce is never reused and a key never used past its limit, whatever the
                // caller did with pre_seal_action.
                if self.pre_seal_action(1) == PreSealAction::Refuse {
                    return Err(CryptoError::SequenceExhausted);
                }
                self.charge_blocks(std::iter::once(plaintext))?;
                let Keyed::Aes256Gcm(suite) = &self.keyed else {
                    unreachable!("matched above")
                };
                suite.seal(self.seq, header, plaintext, dst)?;
                self.seq += 1;
            }
        }
        Ok(())
    }

    /// [`RecordSealer::seal`] of `body` where it lies: appends the record's header to `dst` and
    /// turns `body` into the rest of the record, so that `dst`'s new bytes and then `body` are
    /// exactly what `seal` would append. With GCM the body is encrypted in place and its tag
    /// appended, so nothing is copied if `body` has [`RecordSuite::in_place_room`] free after
    /// it (else appending the tag grows it); plaintext leaves the body as it is. CBC + HMAC,
    /// which has no in-place form worth its cost, is sealed by copying: the whole record goes
    /// to `dst` and `body` is left empty. `header.length` is overwritten as by `seal`.
    pub fn seal_in_place(
        &mut self,
        header: Header,
        body: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        match &self.keyed {
            Keyed::Plaintext => {
                let header = Header {
                    length: u32::try_from(body.len())
                        .map_err(|_| CryptoError::TooLarge(body.len()))?,
                    ..header
                };
                header.encode(dst);
            }
            Keyed::Aes256CbcHmacSha256(_) => {
                self.seal(header, body, dst)?;
                body.clear();
            }
            Keyed::Aes256Gcm(_) => {
                // As in `seal_with_iv`: never a reused nonce, never past the key's limit.
                if self.pre_seal_action(1) == PreSealAction::Refuse {
                    return Err(CryptoError::SequenceExhausted);
                }
                self.charge_blocks(std::iter::once(&body[..]))?;
                let Keyed::Aes256Gcm(suite) = &self.keyed else {
                    unreachable!("matched above")
                };
                suite.seal_in_place(self.seq, header, body, dst)?;
                self.seq += 1;
            }
        }
        Ok(())
    }

    /// Appends several records at once, exactly as that many [`RecordSealer::seal`] calls would
    /// (the bytes are identical for the same IVs), but several times faster for the CBC suite
    /// (chains of several records are encrypted side by side). A batch that would pass the last
    /// sequence number is refused whole, before anything is written. Each header's `length` is
    /// overwritten with its body's wire length.
    pub fn seal_many(
        &mut self,
        frames: &[(Header, &[u8])],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        match &self.keyed {
            Keyed::Plaintext => {
                for &(header, plaintext) in frames {
                    self.seal_with_iv(header, plaintext, &[0; IV_LEN], dst)?;
                }
            }
            Keyed::Aes256CbcHmacSha256(suite) => {
                if self.pre_seal_action(frames.len()) == PreSealAction::Refuse {
                    return Err(CryptoError::SequenceExhausted);
                }
                suite.seal_many(self.seq, frames, &mut *self.ivs, dst)?;
                self.seq += frames.len() as u64;
            }
            Keyed::Aes256Gcm(_) => {
                if self.pre_seal_action(frames.len()) == PreSealAction::Refuse {
                    return Err(CryptoError::SequenceExhausted);
                }
                self.charge_blocks(frames.iter().map(|&(_, p)| p))?;
                let Keyed::Aes256Gcm(suite) = &self.keyed else {
                    unreachable!("matched above")
                };
                // GCM is parallel within a record already: one record after the other.
                for (i, &(header, plaintext)) in frames.iter().enumerate() {
                    suite.seal(self.seq + i as u64, header, plaintext, dst)?;
                }
                self.seq += frames.len() as u64;
            }
        }
        Ok(())
    }
}

/// Opens incoming bodies for one direction: the suite and the receive sequence number.
#[derive(Clone, Debug)]
pub struct RecordOpener {
    keyed: Keyed,
    /// The sequence number the next record must carry (spec §5.5).
    seq: u64,
}

impl RecordOpener {
    /// Plaintext: bodies are taken as they are.
    pub fn plaintext() -> Self {
        Self::new(RecordSuite::Plaintext, &DirectionKeys::unused())
    }

    /// `suite` keyed with this direction's `keys`, from sequence number 0. Plaintext ignores
    /// the keys.
    pub fn new(suite: RecordSuite, keys: &DirectionKeys) -> Self {
        Self {
            keyed: Keyed::new(suite, keys),
            seq: 0,
        }
    }

    /// Starts at sequence number `seq` (tests and vectors).
    pub fn with_sequence(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    pub fn suite(&self) -> RecordSuite {
        self.keyed.suite()
    }

    /// The sequence number the next record must carry.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// Verifies and decrypts one body in place; returns the plaintext. Every failure of a
    /// record is [`CryptoError::BadRecord`] (spec §5.4); a record past the last sequence number
    /// is [`CryptoError::SequenceExhausted`] (§5.5).
    #[inline]
    pub fn open(&mut self, header: &Header, body: BytesMut) -> Result<Bytes, CryptoError> {
        match &self.keyed {
            Keyed::Plaintext => Ok(body.freeze()),
            Keyed::Aes256CbcHmacSha256(suite) => {
                if !CbcHmac::plausible_len(body.len()) {
                    return Err(CryptoError::BadRecord);
                }
                if self.seq > self.keyed.suite().last_sequence() {
                    return Err(CryptoError::SequenceExhausted);
                }
                let plaintext = suite.open(self.seq, header, body)?;
                self.seq += 1;
                Ok(plaintext)
            }
            Keyed::Aes256Gcm(suite) => {
                if !Gcm::plausible_len(body.len()) {
                    return Err(CryptoError::BadRecord);
                }
                if self.seq > self.keyed.suite().last_sequence() {
                    return Err(CryptoError::SequenceExhausted);
                }
                let plaintext = suite.open(self.seq, header, body)?;
                self.seq += 1;
                Ok(plaintext)
            }
        }
    }
}

/// A plaintext frame: the header as given, with `length` set, then the body.
#[inline]
fn encode_plain_header(header: Header, body: &[u8], dst: &mut BytesMut) {
    encode_plain(
        header.kind,
        header.service,
        header.version,
        header.id,
        body,
        dst,
    )
}

impl DirectionKeys {
    /// Zeroes, for the plaintext suite, which uses no keys.
    fn unused() -> Self {
        Self {
            enc: [0; 32],
            mac: [0; 32],
            iv: [0; 12],
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::crypto::cbc_hmac::sealed_len;
    use crate::crypto::SessionKeys;
    use crate::header::{FrameType, RequestId, Service, HEADER_LEN};

    const CBC: RecordSuite = RecordSuite::Aes256CbcHmacSha256;
    const LAST: u64 = u64::MAX - 1;

    fn keys() -> DirectionKeys {
        DirectionKeys {
            enc: [0x11; 32],
            mac: [0x22; 32],
            iv: [0x33; 12],
        }
    }

    fn header() -> Header {
        Header::new(FrameType::DATA, Service::FETCH, RequestId(7), 0)
    }

    fn sealed(plaintext: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        RecordSealer::new(CBC, &keys())
            .seal(header(), plaintext, &mut out)
            .unwrap();
        out
    }

    fn open(record: &[u8], seq: u64) -> Result<Bytes, CryptoError> {
        let header = Header::decode(&record[..HEADER_LEN]).unwrap();
        RecordOpener::new(CBC, &keys())
            .with_sequence(seq)
            .open(&header, BytesMut::from(&record[HEADER_LEN..]))
    }

    fn seeded(seed: u64) -> IvSource {
        Box::new(StdRng::seed_from_u64(seed))
    }

    #[test]
    fn seal_open_round_trips_every_length_around_block_edges() {
        for len in 0..70 {
            let plaintext: Vec<u8> = (0..len as u8).collect();
            let record = sealed(&plaintext);
            assert_eq!(record.len(), HEADER_LEN + sealed_len(len));
            assert_eq!(record.len(), HEADER_LEN + CBC.sealed_len(len));
            assert_eq!(open(&record, 0).unwrap(), plaintext);
        }
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let record = sealed(b"attack at dawn, bring snacks");
        for i in 0..record.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = record.to_vec();
                bad[i] ^= bit;
                // A flipped magic byte is caught by the header parser, before the MAC.
                if i == 1 {
                    continue;
                }
                assert_eq!(
                    open(&bad, 0),
                    Err(CryptoError::BadRecord),
                    "byte {i} bit {bit:#x}"
                );
            }
        }
    }

    #[test]
    fn replayed_or_reordered_records_fail() {
        let record = sealed(b"once");
        assert!(open(&record, 0).is_ok());
        assert_eq!(open(&record, 1), Err(CryptoError::BadRecord));
    }

    #[test]
    fn reflected_records_fail() {
        let keys = SessionKeys {
            client_to_server: keys(),
            server_to_client: DirectionKeys {
                enc: [0x33; 32],
                mac: [0x44; 32],
                iv: [0x55; 12],
            },
            server_confirm: [0; 32],
            client_confirm: [0; 32],
        };
        let mut record = BytesMut::new();
        RecordSealer::new(CBC, &keys.client_to_server)
            .seal(header(), b"to the server", &mut record)
            .unwrap();
        let header = Header::decode(&record[..HEADER_LEN]).unwrap();
        // The client's own receive key is the server-to-client one.
        let result = RecordOpener::new(CBC, &keys.server_to_client)
            .open(&header, BytesMut::from(&record[HEADER_LEN..]));
        assert_eq!(result, Err(CryptoError::BadRecord));
    }

    #[test]
    fn bad_lengths_fail_like_bad_tags() {
        for len in [0, 1, 47, 48, 63, 65] {
            let header = Header::new(FrameType::DATA, Service::FETCH, RequestId(7), len as u32);
            let result =
                RecordOpener::new(CBC, &keys()).open(&header, BytesMut::from(&vec![0u8; len][..]));
            assert_eq!(result, Err(CryptoError::BadRecord), "len {len}");
        }
    }

    #[test]
    fn seal_many_is_byte_identical_to_sealing_one_at_a_time() {
        // Uneven lengths, more records than parallel chains, an empty body, a one-block body.
        let bodies: Vec<Vec<u8>> = [0usize, 1, 15, 16, 17, 100, 65_536, 4096, 3, 64, 33, 0]
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let headers: Vec<Header> = (0..bodies.len())
            .map(|i| Header::new(FrameType::DATA, Service::FETCH, RequestId(i as u32), 0))
            .collect();
        // The same IVs on both sides: two sources with one seed.
        let mut one_by_one = BytesMut::new();
        let mut serial = RecordSealer::new(CBC, &keys())
            .with_sequence(5)
            .with_ivs(seeded(9));
        for (header, body) in headers.iter().zip(&bodies) {
            serial.seal(*header, body, &mut one_by_one).unwrap();
        }
        let mut batched = BytesMut::from(&b"prefix"[..]);
        let mut many = RecordSealer::new(CBC, &keys())
            .with_sequence(5)
            .with_ivs(seeded(9));
        let frames: Vec<(Header, &[u8])> = headers
            .iter()
            .zip(&bodies)
            .map(|(h, b)| (*h, &b[..]))
            .collect();
        many.seal_many(&frames, &mut batched).unwrap();
        assert_eq!(&batched[..6], b"prefix");
        assert_eq!(&batched[6..], &one_by_one[..]);
        assert_eq!(many.sequence(), serial.sequence());

        // And the receiver opens them in order.
        let mut open = RecordOpener::new(CBC, &keys()).with_sequence(5);
        let mut wire = BytesMut::from(&batched[6..]);
        for body in &bodies {
            let header = Header::decode(&wire[..HEADER_LEN]).unwrap();
            let _ = wire.split_to(HEADER_LEN);
            let record = wire.split_to(header.length as usize);
            assert_eq!(open.open(&header, record).unwrap(), &body[..]);
        }
        assert_eq!(open.sequence(), 5 + bodies.len() as u64);
    }

    #[test]
    fn ivs_come_from_the_sealers_source() {
        let mut expected = StdRng::seed_from_u64(3);
        let mut sealer = RecordSealer::new(CBC, &keys()).with_ivs(seeded(3));
        for _ in 0..3 {
            let mut iv = [0u8; IV_LEN];
            expected.fill_bytes(&mut iv);
            let mut record = BytesMut::new();
            sealer.seal(header(), b"iv", &mut record).unwrap();
            assert_eq!(record[HEADER_LEN..HEADER_LEN + IV_LEN], iv);
        }
        // The default source gives a different IV every time.
        let (a, b) = (sealed(b"same"), sealed(b"same"));
        assert_ne!(
            a[HEADER_LEN..HEADER_LEN + IV_LEN],
            b[HEADER_LEN..HEADER_LEN + IV_LEN]
        );
    }

    #[test]
    fn dangerous_seal_with_iv_uses_that_iv_and_the_sequence() {
        let mut sealer = RecordSealer::new(CBC, &keys()).with_sequence(41);
        let mut record = BytesMut::new();
        sealer
            .dangerous_seal_with_iv(header(), b"fixed", [0x5a; IV_LEN], &mut record)
            .unwrap();
        assert_eq!(record[HEADER_LEN..HEADER_LEN + IV_LEN], [0x5a; IV_LEN]);
        assert_eq!(sealer.sequence(), 42);
        assert_eq!(open(&record, 41).unwrap(), &b"fixed"[..]);
    }

    #[test]
    fn pre_seal_action_proceeds_then_says_close_soon_then_refuses() {
        let at = |seq: u64, records: usize| {
            RecordSealer::new(CBC, &keys())
                .with_sequence(seq)
                .pre_seal_action(records)
        };
        let soft = LAST - CLOSE_SOON_MARGIN;
        assert_eq!(at(0, 1), PreSealAction::Proceed);
        assert_eq!(at(soft, 1), PreSealAction::Proceed);
        assert_eq!(at(soft + 1, 1), PreSealAction::CloseSoon);
        assert_eq!(at(soft, 2), PreSealAction::CloseSoon);
        assert_eq!(at(LAST, 1), PreSealAction::CloseSoon);
        assert_eq!(at(LAST, 2), PreSealAction::Refuse);
        assert_eq!(at(u64::MAX, 1), PreSealAction::Refuse);
        assert_eq!(at(u64::MAX, 0), PreSealAction::Proceed, "nothing to seal");
        // Plaintext has no sequence numbers to run out of.
        let plain = RecordSealer::plaintext().with_sequence(u64::MAX);
        assert_eq!(plain.pre_seal_action(8), PreSealAction::Proceed);
    }

    #[test]
    fn seal_many_refuses_a_batch_that_would_exhaust_the_sequence() {
        let mut key = RecordSealer::new(CBC, &keys()).with_sequence(LAST);
        let mut out = BytesMut::new();
        let frames = [(header(), &b"a"[..]), (header(), &b"b"[..])];
        assert_eq!(
            key.seal_many(&frames, &mut out),
            Err(CryptoError::SequenceExhausted)
        );
        assert!(out.is_empty(), "nothing half-sealed is left behind");
        key.seal_many(&frames[..1], &mut out).unwrap();
    }

    #[test]
    fn sequence_exhaustion_closes_before_wrap() {
        let mut key = RecordSealer::new(CBC, &keys()).with_sequence(LAST);
        let mut out = BytesMut::new();
        key.seal(header(), b"last", &mut out).unwrap();
        assert_eq!(key.sequence(), u64::MAX);
        assert_eq!(
            key.seal(header(), b"wraps", &mut out),
            Err(CryptoError::SequenceExhausted)
        );
        assert_eq!(key.sequence(), u64::MAX, "the counter never wraps");
    }

    #[test]
    fn opening_past_the_last_sequence_number_fails() {
        let mut record = BytesMut::new();
        RecordSealer::new(CBC, &keys())
            .with_sequence(LAST)
            .seal(header(), b"last", &mut record)
            .unwrap();
        assert_eq!(open(&record, LAST).unwrap(), &b"last"[..]);
        // A well-formed record at 2^64 - 1 is refused before its tag is even checked.
        assert_eq!(open(&record, u64::MAX), Err(CryptoError::SequenceExhausted));
    }

    #[test]
    fn plaintext_frames_pass_through_unchanged() {
        let mut sealer = RecordSealer::plaintext();
        let mut wire = BytesMut::new();
        sealer.seal(header(), b"clear", &mut wire).unwrap();
        sealer
            .seal_many(&[(header(), &b"one"[..]), (header(), &b""[..])], &mut wire)
            .unwrap();
        assert_eq!(sealer.sequence(), 0, "plaintext counts nothing");
        let mut opener = RecordOpener::plaintext();
        for body in [&b"clear"[..], b"one", b""] {
            let header = Header::decode(&wire[..HEADER_LEN]).unwrap();
            assert_eq!(header.length as usize, body.len());
            let _ = wire.split_to(HEADER_LEN);
            let record = wire.split_to(body.len());
            assert_eq!(opener.open(&header, record).unwrap(), body);
        }
        assert!(wire.is_empty());
        assert_eq!(RecordSuite::Plaintext.sealed_len(5), 5);
    }

    const GCM: RecordSuite = RecordSuite::Aes256Gcm;

    fn gcm_sealed(plaintext: &[u8], seq: u64) -> BytesMut {
        let mut out = BytesMut::new();
        RecordSealer::new(GCM, &keys())
            .with_sequence(seq)
            .seal(header(), plaintext, &mut out)
            .unwrap();
        out
    }

    fn gcm_open(record: &[u8], seq: u64) -> Result<Bytes, CryptoError> {
        let header = Header::decode(&record[..HEADER_LEN]).unwrap();
        RecordOpener::new(GCM, &keys())
            .with_sequence(seq)
            .open(&header, BytesMut::from(&record[HEADER_LEN..]))
    }

    #[test]
    fn gcm_round_trips_and_adds_only_the_tag() {
        for len in [0usize, 1, 15, 16, 17, 100, 4096, 65_536] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let record = gcm_sealed(&plaintext, 3);
            assert_eq!(record.len(), HEADER_LEN + len + 16);
            assert_eq!(GCM.sealed_len(len), len + 16);
            if len > 0 {
                assert_ne!(
                    &record[HEADER_LEN..HEADER_LEN + len],
                    &plaintext[..],
                    "encrypted"
                );
            }
            assert_eq!(gcm_open(&record, 3).unwrap(), plaintext);
        }
        assert_eq!(GCM.max_plaintext(1 << 20), (1 << 20) - 16);
    }

    #[test]
    fn gcm_rejects_any_flipped_bit_replays_reflections_and_short_bodies() {
        let record = gcm_sealed(b"attack at dawn, bring snacks", 0);
        for i in (0..record.len()).filter(|&i| i != 1) {
            let mut bad = record.to_vec();
            bad[i] ^= 0x01;
            assert_eq!(gcm_open(&bad, 0), Err(CryptoError::BadRecord), "byte {i}");
        }
        assert_eq!(
            gcm_open(&record, 1),
            Err(CryptoError::BadRecord),
            "replayed"
        );
        let other = DirectionKeys {
            iv: [0x34; 12],
            ..keys()
        };
        let header = Header::decode(&record[..HEADER_LEN]).unwrap();
        let reflected =
            RecordOpener::new(GCM, &other).open(&header, BytesMut::from(&record[HEADER_LEN..]));
        assert_eq!(
            reflected,
            Err(CryptoError::BadRecord),
            "another direction's IV"
        );
        for len in [0, 1, 15] {
            let header = Header::new(FrameType::DATA, Service::FETCH, RequestId(7), len as u32);
            let result =
                RecordOpener::new(GCM, &keys()).open(&header, BytesMut::from(&vec![0u8; len][..]));
            assert_eq!(result, Err(CryptoError::BadRecord), "len {len}");
        }
    }

    #[test]
    fn gcm_nonces_are_the_iv_xor_the_sequence_number() {
        // Two records whose nonces coincide would encrypt with the same keystream: sealing the
        // same plaintext at sequence numbers 0 and 1 must give different bodies, and the one
        // at 2^64 - 2 must differ from both.
        let a = gcm_sealed(b"same", 0);
        let b = gcm_sealed(b"same", 1);
        let c = gcm_sealed(b"same", LAST);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(gcm_open(&c, LAST).unwrap(), &b"same"[..]);
        assert_eq!(gcm_open(&c, u64::MAX), Err(CryptoError::SequenceExhausted));
    }

    #[test]
    fn gcm_seal_many_is_sealing_one_at_a_time() {
        let bodies: Vec<Vec<u8>> = [0usize, 1, 100, 65_536, 17]
            .iter()
            .map(|&len| vec![0x42; len])
            .collect();
        let frames: Vec<(Header, &[u8])> = bodies.iter().map(|b| (header(), &b[..])).collect();
        let mut one_by_one = BytesMut::new();
        let mut serial = RecordSealer::new(GCM, &keys()).with_sequence(9);
        for &(h, b) in &frames {
            serial.seal(h, b, &mut one_by_one).unwrap();
        }
        let mut batched = BytesMut::new();
        let mut many = RecordSealer::new(GCM, &keys()).with_sequence(9);
        many.seal_many(&frames, &mut batched).unwrap();
        assert_eq!(batched, one_by_one);
        assert_eq!(many.sequence(), 9 + frames.len() as u64);
    }

    #[test]
    fn gcm_keys_are_retired_before_their_block_limit() {
        let limit = gcm::BLOCK_LIMIT;
        let at = |blocks: u64, records: usize| {
            RecordSealer::new(GCM, &keys())
                .with_blocks_used(blocks)
                .pre_seal_action(records)
        };
        assert_eq!(at(0, 1), PreSealAction::Proceed);
        assert_eq!(at(limit - CLOSE_SOON_BLOCKS - 1, 1), PreSealAction::Proceed);
        assert_eq!(at(limit - CLOSE_SOON_BLOCKS, 1), PreSealAction::CloseSoon);
        assert_eq!(at(limit - 1, 1), PreSealAction::CloseSoon);
        assert_eq!(at(limit, 1), PreSealAction::Refuse);
        // CBC + HMAC counts no blocks.
        let cbc = RecordSealer::new(CBC, &keys()).with_blocks_used(limit);
        assert_eq!(cbc.pre_seal_action(1), PreSealAction::Proceed);

        // The exact count is checked when sealing: 16 bytes are 2 blocks (data and tag).
        let mut sealer = RecordSealer::new(GCM, &keys()).with_blocks_used(limit - 2);
        let mut out = BytesMut::new();
        assert_eq!(
            sealer.seal(header(), &[0; 17], &mut out),
            Err(CryptoError::SequenceExhausted),
            "17 bytes are 3 blocks"
        );
        assert!(out.is_empty());
        sealer.seal(header(), &[0; 16], &mut out).unwrap();
        assert_eq!(
            sealer.seal(header(), b"", &mut out),
            Err(CryptoError::SequenceExhausted),
            "the key is spent"
        );
        let frames = [(header(), &b""[..])];
        assert_eq!(
            sealer.seal_many(&frames, &mut BytesMut::new()),
            Err(CryptoError::SequenceExhausted)
        );
    }

    /// Issue 10: sealing a body where it lies gives the bytes of sealing it by copying, in
    /// every suite, at every length around the block and chunk edges and at the first and last
    /// sequence numbers; with the tag's room free after the body, GCM moves nothing.
    #[test]
    fn sealing_in_place_is_byte_identical_to_sealing_by_copying() {
        for suite in [RecordSuite::Plaintext, CBC, GCM] {
            for seq in [0, 7, LAST] {
                for len in [0usize, 1, 15, 16, 17, 100, 4095, 4096, 65_535, 65_536] {
                    let plaintext: Vec<u8> = (0..len).map(|i| (i * 31) as u8 ^ seq as u8).collect();
                    let sealer = || {
                        RecordSealer::new(suite, &keys())
                            .with_sequence(seq)
                            .with_ivs(seeded(len as u64))
                    };
                    let mut copied = BytesMut::from(&b"earlier"[..]);
                    let mut by_copy = sealer();
                    by_copy.seal(header(), &plaintext, &mut copied).unwrap();

                    let room = suite.in_place_room().unwrap_or(0);
                    let mut body = BytesMut::with_capacity(len + room);
                    body.extend_from_slice(&plaintext);
                    let (at, capacity) = (body.as_ptr(), body.capacity());
                    let mut dst = BytesMut::from(&b"earlier"[..]);
                    let mut in_place = sealer();
                    in_place
                        .seal_in_place(header(), &mut body, &mut dst)
                        .unwrap();
                    dst.extend_from_slice(&body);
                    assert_eq!(dst, copied, "{suite:?} seq {seq} len {len}");
                    assert_eq!(in_place.sequence(), by_copy.sequence());
                    assert_eq!(in_place.blocks, by_copy.blocks);
                    if suite == GCM {
                        assert_eq!(
                            (body.as_ptr(), body.capacity()),
                            (at, capacity),
                            "sealed where it lay, len {len}"
                        );
                    }
                }
            }
        }
        assert_eq!(GCM.in_place_room(), Some(16));
        assert_eq!(CBC.in_place_room(), None);
        assert_eq!(RecordSuite::Plaintext.in_place_room(), None);
    }

    /// The limits hold in place as when copying: no record past the last sequence number or
    /// the key's block limit, and a refusal leaves the body and the output as they were.
    #[test]
    fn sealing_in_place_keeps_the_sequence_and_block_limits() {
        let mut body = BytesMut::from(&b"last"[..]);
        let mut dst = BytesMut::new();
        let mut sealer = RecordSealer::new(GCM, &keys()).with_sequence(u64::MAX);
        assert_eq!(
            sealer.seal_in_place(header(), &mut body, &mut dst),
            Err(CryptoError::SequenceExhausted)
        );
        assert_eq!((&body[..], dst.len()), (&b"last"[..], 0));

        let mut sealer = RecordSealer::new(GCM, &keys()).with_blocks_used(gcm::BLOCK_LIMIT - 2);
        let mut body = BytesMut::from(&[0u8; 17][..]);
        assert_eq!(
            sealer.seal_in_place(header(), &mut body, &mut dst),
            Err(CryptoError::SequenceExhausted),
            "17 bytes are 3 blocks"
        );
        assert_eq!((body.len(), dst.len(), sealer.sequence()), (17, 0, 0));
        body.truncate(16);
        sealer.seal_in_place(header(), &mut body, &mut dst).unwrap();
        assert_eq!(
            (body.len(), dst.len(), sealer.sequence()),
            (32, HEADER_LEN, 1)
        );
    }

    #[test]
    fn suites_map_to_their_wire_numbers_and_names() {
        for suite in RecordSuite::DEFAULT_SUITES {
            assert_eq!(RecordSuite::from_id(suite.id().unwrap()), Some(suite));
        }
        assert_eq!(RecordSuite::Plaintext.id(), None);
        assert_eq!(RecordSuite::from_id(SuiteId(0x7f)), None);
        assert_eq!(RecordSuite::parse_selection("cbc-hmac").unwrap(), vec![CBC]);
        assert_eq!(RecordSuite::parse_selection("gcm").unwrap(), vec![GCM, CBC]);
        let error = RecordSuite::parse_selection("rot13").unwrap_err();
        assert!(error.contains("rot13"), "{error}");
    }
}
