//! Key material, the key schedule and the record layer (spec §5).
//!
//! Each encrypted body is `IV || AES-256-CBC(PKCS#7(plaintext)) || TAG`, where
//! `TAG = HMAC-SHA256(mac_key, seq_u64_be || header[12] || IV || ciphertext)`. The tag is checked
//! in constant time before anything is decrypted, and every failure is one opaque
//! [`CryptoError::BadRecord`]. Sequence numbers are implicit and per direction, so replayed,
//! reordered, dropped or reflected records fail the tag.

use std::fmt;
use std::str::FromStr;

use aes::cipher::{
    block_padding::Pkcs7, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit,
};
use aes::Aes256;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::CryptoError;
use crate::header::{Header, HEADER_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Size of the random IV that starts every encrypted body.
pub const IV_LEN: usize = 16;
/// Size of the HMAC-SHA256 tag that ends every encrypted body.
pub const TAG_LEN: usize = 32;
/// AES block size.
pub const BLOCK_LEN: usize = 16;
/// Smallest legal encrypted body: IV, one block of padding, tag.
pub const MIN_SEALED_LEN: usize = IV_LEN + BLOCK_LEN + TAG_LEN;

/// Wire length of the encrypted body for a plaintext of `len` bytes. PKCS#7 always adds 1..=16.
pub const fn sealed_len(len: usize) -> usize {
    IV_LEN + (len / BLOCK_LEN + 1) * BLOCK_LEN + TAG_LEN
}

/// Largest plaintext whose encrypted body fits in `max_body` wire bytes.
pub const fn max_plaintext(max_body: usize) -> usize {
    if max_body < MIN_SEALED_LEN {
        return 0;
    }
    // Ciphertext is whole blocks and always has at least one byte of padding.
    ((max_body - IV_LEN - TAG_LEN) / BLOCK_LEN) * BLOCK_LEN - 1
}

/// A pre-shared key that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key is not 32 bytes of hex (64 characters) or base64 (43 or 44 characters)")]
    InvalidEncoding,
}

/// A 256-bit pre-shared key. Never hard-coded; generate one with [`Key::generate`].
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// 32 bytes from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// URL-safe base64 without padding, 43 characters; what connect lines print.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// A short, non-secret fingerprint for logs: the first 8 bytes of SHA-256(key), in hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }

    /// Parses a key file's contents: either exactly 32 raw bytes, or hex/base64 text (spec §5).
    /// Reading the file and checking who may read it is the caller's job (`ferry_common`), so
    /// this crate stays free of I/O.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
            return Ok(Self(raw));
        }
        std::str::from_utf8(bytes)
            .map_err(|_| KeyError::InvalidEncoding)?
            .parse()
    }
}

impl FromStr for Key {
    type Err = KeyError;

    /// Accepts 64 hex characters, or standard or URL-safe base64 with or without padding.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bytes = if s.len() == 64 {
            hex::decode(s).map_err(|_| KeyError::InvalidEncoding)?
        } else {
            use base64::engine::general_purpose as b64;
            // Exactly one padding style per engine, so stray '=' are rejected.
            b64::STANDARD
                .decode(s)
                .or_else(|_| b64::STANDARD_NO_PAD.decode(s))
                .or_else(|_| b64::URL_SAFE.decode(s))
                .or_else(|_| b64::URL_SAFE_NO_PAD.decode(s))
                .map_err(|_| KeyError::InvalidEncoding)?
        };
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Self)
            .map_err(|_| KeyError::InvalidEncoding)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(fingerprint {})", self.fingerprint())
    }
}

/// Encryption and MAC key for one direction.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionKeys {
    pub enc: [u8; 32],
    pub mac: [u8; 32],
}

impl fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirectionKeys(<redacted>)")
    }
}

/// Everything the key schedule produces (spec §5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    pub client_to_server: DirectionKeys,
    pub server_to_client: DirectionKeys,
    /// `HMAC(k_server_finished, TH)`, sent in ServerFinished.
    pub server_confirm: [u8; 32],
    /// `HMAC(k_client_finished, TH)`, sent in ClientFinished.
    pub client_confirm: [u8; 32],
}

/// Labels for HKDF-Expand; distinct per key and direction (spec §5.2).
pub mod labels {
    pub const C2S_ENC: &[u8] = b"ferry v1 c2s enc";
    pub const C2S_MAC: &[u8] = b"ferry v1 c2s mac";
    pub const S2C_ENC: &[u8] = b"ferry v1 s2c enc";
    pub const S2C_MAC: &[u8] = b"ferry v1 s2c mac";
    pub const SERVER_FINISHED: &[u8] = b"ferry v1 server finished";
    pub const CLIENT_FINISHED: &[u8] = b"ferry v1 client finished";
}

/// The key schedule:
/// `PRK = HKDF-Extract(salt = TH, IKM = PSK || DH)`, each key `HKDF-Expand(PRK, label, 32)`.
pub fn derive_keys(psk: &Key, dh_shared: &[u8; 32], transcript_hash: &[u8; 32]) -> SessionKeys {
    let mut ikm = [0u8; 64];
    ikm[..32].copy_from_slice(psk.as_bytes());
    ikm[32..].copy_from_slice(dh_shared);
    let hkdf = Hkdf::<Sha256>::new(Some(transcript_hash), &ikm);
    let expand = |label: &[u8]| {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so this cannot fail.
        hkdf.expand(label, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    };
    let confirm = |label: &[u8]| hmac_sha256(&expand(label), &[transcript_hash]);
    SessionKeys {
        client_to_server: DirectionKeys {
            enc: expand(labels::C2S_ENC),
            mac: expand(labels::C2S_MAC),
        },
        server_to_client: DirectionKeys {
            enc: expand(labels::S2C_ENC),
            mac: expand(labels::S2C_MAC),
        },
        server_confirm: confirm(labels::SERVER_FINISHED),
        client_confirm: confirm(labels::CLIENT_FINISHED),
    }
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time comparison of two MACs.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Sequence numbers stop one short of wrapping; the connection must then be re-established.
const LAST_SEQUENCE: u64 = u64::MAX - 1;

/// What both record directions hold: the keyed cipher and MAC, and the sequence number.
#[derive(Clone)]
struct RecordKey {
    cipher: Aes256,
    mac: HmacSha256,
    seq: u64,
}

impl RecordKey {
    fn new(keys: &DirectionKeys, seq: u64) -> Self {
        Self {
            cipher: Aes256::new(&keys.enc.into()),
            mac: <HmacSha256 as Mac>::new_from_slice(&keys.mac)
                .expect("HMAC accepts any key length"),
            seq,
        }
    }

    /// A MAC already fed this record's sequence number, or the error that ends the connection
    /// before the sequence number could wrap.
    fn mac_for_next(&self) -> Result<HmacSha256, CryptoError> {
        if self.seq > LAST_SEQUENCE {
            return Err(CryptoError::SequenceExhausted);
        }
        let mut mac = self.mac.clone();
        mac.update(&self.seq.to_be_bytes());
        Ok(mac)
    }
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordKey")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Encrypts outgoing bodies for one direction.
#[derive(Clone, Debug)]
pub struct SealingKey {
    key: RecordKey,
}

impl SealingKey {
    pub fn new(keys: &DirectionKeys) -> Self {
        Self::with_sequence(keys, 0)
    }

    /// Starts at sequence number `seq` (tests and vectors).
    pub fn with_sequence(keys: &DirectionKeys, seq: u64) -> Self {
        Self {
            key: RecordKey::new(keys, seq),
        }
    }

    /// The sequence number the next record will use.
    pub fn sequence(&self) -> u64 {
        self.key.seq
    }

    /// Appends header and encrypted body for `plaintext`, with a fresh random IV.
    /// `header.length` is overwritten with the sealed length.
    pub fn seal(
        &mut self,
        header: Header,
        plaintext: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        let mut iv = [0u8; IV_LEN];
        rand::thread_rng().fill_bytes(&mut iv);
        self.seal_with_iv(header, plaintext, iv, dst)
    }

    /// [`SealingKey::seal`] with a caller-chosen IV. Only for test vectors: a predictable IV
    /// breaks CBC's confidentiality.
    pub fn dangerous_seal_with_iv(
        &mut self,
        header: Header,
        plaintext: &[u8],
        iv: [u8; IV_LEN],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        self.seal_with_iv(header, plaintext, iv, dst)
    }

    fn seal_with_iv(
        &mut self,
        mut header: Header,
        plaintext: &[u8],
        iv: [u8; IV_LEN],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        let mut mac = self.key.mac_for_next()?;
        let wire_len = sealed_len(plaintext.len());
        header.length =
            u32::try_from(wire_len).map_err(|_| CryptoError::TooLarge(plaintext.len()))?;
        let ct_len = wire_len - IV_LEN - TAG_LEN;

        let start = dst.len();
        dst.reserve(HEADER_LEN + wire_len);
        header.encode(dst);
        dst.put_slice(&iv);
        let ct_start = dst.len();
        dst.put_slice(plaintext);
        dst.put_bytes(0, ct_len - plaintext.len());
        cbc::Encryptor::<Aes256>::inner_iv_init(self.key.cipher.clone(), &iv.into())
            .encrypt_padded_mut::<Pkcs7>(&mut dst[ct_start..], plaintext.len())
            .map_err(|_| CryptoError::TooLarge(plaintext.len()))?;

        mac.update(&dst[start..]);
        dst.put_slice(&mac.finalize().into_bytes());
        self.key.seq += 1;
        Ok(())
    }

    /// Appends several records at once, exactly as that many [`SealingKey::seal`] calls would
    /// (the bytes are identical for the same IVs), but faster: CBC encryption is serial within
    /// a record, so one record keeps the AES unit waiting on each block's result, while the
    /// chains of up to [`PARALLEL_CHAINS`] records are independent and are encrypted a block of
    /// each at a time. Each header's `length` is overwritten with its sealed length.
    pub fn seal_many(
        &mut self,
        frames: &[(Header, &[u8])],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        let mut ivs = vec![[0u8; IV_LEN]; frames.len()];
        let mut rng = rand::thread_rng();
        for iv in &mut ivs {
            rng.fill_bytes(iv);
        }
        self.seal_many_with_ivs(frames, &ivs, dst)
    }

    fn seal_many_with_ivs(
        &mut self,
        frames: &[(Header, &[u8])],
        ivs: &[[u8; IV_LEN]],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        // Every record must get a sequence number at most LAST_SEQUENCE (= u64::MAX - 1), i.e.
        // seq + n must not overflow: refuse the batch before writing any of it.
        if self.key.seq.checked_add(frames.len() as u64).is_none() {
            return Err(CryptoError::SequenceExhausted);
        }
        // 1. Lay out each record: header, IV, plaintext with its PKCS#7 padding, room for the tag.
        struct Record {
            start: usize,
            ct: usize,
            ct_len: usize,
        }
        let mut records = Vec::with_capacity(frames.len());
        dst.reserve(
            frames
                .iter()
                .map(|(_, p)| HEADER_LEN + sealed_len(p.len()))
                .sum(),
        );
        for ((header, plaintext), iv) in frames.iter().zip(ivs) {
            let wire_len = sealed_len(plaintext.len());
            let mut header = *header;
            header.length =
                u32::try_from(wire_len).map_err(|_| CryptoError::TooLarge(plaintext.len()))?;
            let ct_len = wire_len - IV_LEN - TAG_LEN;
            let pad = ct_len - plaintext.len();
            let start = dst.len();
            header.encode(dst);
            dst.put_slice(iv);
            let ct = dst.len();
            dst.put_slice(plaintext);
            // PKCS#7: 1..=16 bytes, each holding the count.
            dst.put_bytes(pad as u8, pad);
            dst.put_bytes(0, TAG_LEN);
            records.push(Record { start, ct, ct_len });
        }
        // 2. CBC over groups of records, one block of every record in the group per step.
        let buf = &mut dst[..];
        for group in records.chunks(PARALLEL_CHAINS) {
            let mut prev = [0u128; PARALLEL_CHAINS];
            for (chain, record) in group.iter().enumerate() {
                prev[chain] = load_block(buf, record.ct - IV_LEN);
            }
            let steps = group
                .iter()
                .map(|r| r.ct_len / BLOCK_LEN)
                .max()
                .unwrap_or(0);
            let mut blocks = [aes::Block::default(); PARALLEL_CHAINS];
            let mut chains = [0usize; PARALLEL_CHAINS];
            for step in 0..steps {
                let mut active = 0;
                for (chain, record) in group.iter().enumerate() {
                    if step * BLOCK_LEN < record.ct_len {
                        let x = load_block(buf, record.ct + step * BLOCK_LEN) ^ prev[chain];
                        blocks[active].copy_from_slice(&x.to_ne_bytes());
                        chains[active] = chain;
                        active += 1;
                    }
                }
                self.key.cipher.encrypt_blocks(&mut blocks[..active]);
                for (block, &chain) in blocks[..active].iter().zip(&chains[..active]) {
                    let at = group[chain].ct + step * BLOCK_LEN;
                    buf[at..at + BLOCK_LEN].copy_from_slice(block);
                    prev[chain] = load_block(buf, at);
                }
            }
        }
        // 3. A tag for each record under its own sequence number, in order.
        for record in &records {
            let mut mac = self.key.mac_for_next()?;
            let tag_at = record.ct + record.ct_len;
            mac.update(&dst[record.start..tag_at]);
            dst[tag_at..tag_at + TAG_LEN].copy_from_slice(&mac.finalize().into_bytes());
            self.key.seq += 1;
        }
        Ok(())
    }
}

/// How many records [`SealingKey::seal_many`] encrypts side by side: the AES-NI backend
/// pipelines eight blocks.
pub const PARALLEL_CHAINS: usize = 8;

fn load_block(buf: &[u8], at: usize) -> u128 {
    let mut bytes = [0u8; BLOCK_LEN];
    bytes.copy_from_slice(&buf[at..at + BLOCK_LEN]);
    u128::from_ne_bytes(bytes)
}

/// Authenticates and decrypts incoming bodies for one direction.
#[derive(Clone, Debug)]
pub struct OpeningKey {
    key: RecordKey,
}

impl OpeningKey {
    pub fn new(keys: &DirectionKeys) -> Self {
        Self::with_sequence(keys, 0)
    }

    /// Starts at sequence number `seq` (tests and vectors).
    pub fn with_sequence(keys: &DirectionKeys, seq: u64) -> Self {
        Self {
            key: RecordKey::new(keys, seq),
        }
    }

    /// Verifies and decrypts one body in place; returns the plaintext.
    pub fn open(&mut self, header: &Header, mut body: BytesMut) -> Result<Bytes, CryptoError> {
        let len = body.len();
        if len < MIN_SEALED_LEN || (len - IV_LEN - TAG_LEN) % BLOCK_LEN != 0 {
            return Err(CryptoError::BadRecord);
        }
        let mut mac = self.key.mac_for_next()?;
        mac.update(&header.to_bytes());
        mac.update(&body[..len - TAG_LEN]);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&body[len - TAG_LEN..])
            .map_err(|_| CryptoError::BadRecord)?;

        body.truncate(len - TAG_LEN);
        let mut ciphertext = body.split_off(IV_LEN);
        let iv: [u8; IV_LEN] = body[..].try_into().map_err(|_| CryptoError::BadRecord)?;
        let plain_len =
            cbc::Decryptor::<Aes256>::inner_iv_init(self.key.cipher.clone(), &iv.into())
                .decrypt_padded_mut::<Pkcs7>(&mut ciphertext)
                .map_err(|_| CryptoError::BadRecord)?
                .len();
        ciphertext.truncate(plain_len);
        self.key.seq += 1;
        Ok(ciphertext.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{FrameType, RequestId, Service};

    fn keys() -> DirectionKeys {
        DirectionKeys {
            enc: [0x11; 32],
            mac: [0x22; 32],
        }
    }

    fn header() -> Header {
        Header::new(FrameType::DATA, Service::FETCH, RequestId(7), 0)
    }

    fn sealed(plaintext: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        SealingKey::new(&keys())
            .seal(header(), plaintext, &mut out)
            .unwrap();
        out
    }

    fn open(record: &[u8], seq: u64) -> Result<Bytes, CryptoError> {
        let header = Header::decode(&record[..HEADER_LEN]).unwrap();
        OpeningKey::with_sequence(&keys(), seq).open(&header, BytesMut::from(&record[HEADER_LEN..]))
    }

    #[test]
    fn seal_open_round_trips_every_length_around_block_edges() {
        for len in 0..70 {
            let plaintext: Vec<u8> = (0..len as u8).collect();
            let record = sealed(&plaintext);
            assert_eq!(record.len(), HEADER_LEN + sealed_len(len));
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
            },
            server_confirm: [0; 32],
            client_confirm: [0; 32],
        };
        let mut record = BytesMut::new();
        SealingKey::new(&keys.client_to_server)
            .seal(header(), b"to the server", &mut record)
            .unwrap();
        let header = Header::decode(&record[..HEADER_LEN]).unwrap();
        // The client's own receive key is the server-to-client one.
        let result = OpeningKey::new(&keys.server_to_client)
            .open(&header, BytesMut::from(&record[HEADER_LEN..]));
        assert_eq!(result, Err(CryptoError::BadRecord));
    }

    #[test]
    fn bad_lengths_fail_like_bad_tags() {
        for len in [0, 1, 47, 48, 63, 65] {
            let header = Header::new(FrameType::DATA, Service::FETCH, RequestId(7), len as u32);
            let result =
                OpeningKey::new(&keys()).open(&header, BytesMut::from(&vec![0u8; len][..]));
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
        let ivs: Vec<[u8; IV_LEN]> = (0..bodies.len()).map(|i| [i as u8 + 1; IV_LEN]).collect();
        let headers: Vec<Header> = (0..bodies.len())
            .map(|i| Header::new(FrameType::DATA, Service::FETCH, RequestId(i as u32), 0))
            .collect();
        let mut one_by_one = BytesMut::new();
        let mut serial = SealingKey::with_sequence(&keys(), 5);
        for ((header, body), iv) in headers.iter().zip(&bodies).zip(&ivs) {
            serial
                .dangerous_seal_with_iv(*header, body, *iv, &mut one_by_one)
                .unwrap();
        }
        let mut batched = BytesMut::from(&b"prefix"[..]);
        let mut many = SealingKey::with_sequence(&keys(), 5);
        let frames: Vec<(Header, &[u8])> = headers
            .iter()
            .zip(&bodies)
            .map(|(h, b)| (*h, &b[..]))
            .collect();
        many.seal_many_with_ivs(&frames, &ivs, &mut batched)
            .unwrap();
        assert_eq!(&batched[..6], b"prefix");
        assert_eq!(&batched[6..], &one_by_one[..]);
        assert_eq!(many.sequence(), serial.sequence());

        // And the receiver opens them in order.
        let mut open = OpeningKey::with_sequence(&keys(), 5);
        let mut wire = BytesMut::from(&batched[6..]);
        for body in &bodies {
            let header = Header::decode(&wire[..HEADER_LEN]).unwrap();
            let _ = wire.split_to(HEADER_LEN);
            let record = wire.split_to(header.length as usize);
            assert_eq!(open.open(&header, record).unwrap(), &body[..]);
        }
    }

    #[test]
    fn seal_many_refuses_a_batch_that_would_exhaust_the_sequence() {
        let mut key = SealingKey::with_sequence(&keys(), LAST_SEQUENCE);
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
        let mut key = SealingKey::with_sequence(&keys(), LAST_SEQUENCE);
        let mut out = BytesMut::new();
        key.seal(header(), b"last", &mut out).unwrap();
        assert_eq!(
            key.seal(header(), b"wraps", &mut out),
            Err(CryptoError::SequenceExhausted)
        );
    }

    #[test]
    fn max_plaintext_fits_exactly() {
        for max_body in [48usize, 64, 65, 1000, 65_536 + 48, 1 << 20] {
            let p = max_plaintext(max_body);
            if max_body >= MIN_SEALED_LEN {
                assert!(sealed_len(p) <= max_body, "{max_body}");
                assert!(sealed_len(p + 1) > max_body, "{max_body}");
            }
        }
    }

    #[test]
    fn keys_parse_from_hex_and_base64() {
        let key = Key::from_bytes([0xAB; 32]);
        assert_eq!(key.to_hex().parse::<Key>().unwrap(), key);
        assert_eq!(key.to_base64().parse::<Key>().unwrap(), key);
        let padded = base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
        assert_eq!(padded.parse::<Key>().unwrap(), key);
        assert!("abcd".parse::<Key>().is_err());
        assert!(!format!("{key:?}").contains("abab"));
    }

    #[test]
    fn key_file_contents_are_raw_bytes_or_text() {
        let key = Key::generate();
        assert_eq!(Key::from_file_bytes(key.as_bytes()).unwrap(), key);
        let text = format!("{}\n", key.to_hex());
        assert_eq!(Key::from_file_bytes(text.as_bytes()).unwrap(), key);
        assert!(Key::from_file_bytes(&[0xff; 31]).is_err());
        assert!(Key::from_file_bytes(&[0xff; 40]).is_err());
    }
}
