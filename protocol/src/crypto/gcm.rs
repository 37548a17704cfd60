//! The AES-256-GCM record suite (spec §5.3.2), keyed for one direction.
//!
//! Each sealed body is `C || TAG`, the AEAD's ciphertext and 16-byte tag, with the frame's 12
//! header bytes as associated data and the nonce `IV XOR (0^32 || seq_u64_be)` (RFC 8446 §5.3),
//! so every record of a direction has its own nonce and nothing but the body travels. The IV
//! comes from the key schedule, the sequence number from the record layer (`super::record`),
//! which also enforces the key's usage limit ([`BLOCK_LIMIT`]).
//!
//! The AEAD is `ring`'s (BoringSSL's assembly, CPU features detected at run time): in the codec
//! bench it sealed and opened 64 KiB records several times faster than RustCrypto's `aes-gcm`
//! built without `-C target-cpu`, as fast as `aws-lc-rs`, and builds with a C compiler alone.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

use super::key_schedule::DirectionKeys;
use crate::error::CryptoError;
use crate::header::{Header, HEADER_LEN};

/// Size of the tag that ends every GCM body.
pub const TAG_LEN: usize = 16;
/// Size of the per-direction IV and of every nonce.
pub const NONCE_LEN: usize = 12;

/// How many 16-byte AES blocks one direction may protect under one key: 2³⁶ (1 TiB), which
/// keeps an attacker's advantage against GCM's confidentiality below 2⁻⁵⁷ (the margin of
/// RFC 8446 §5.5). A record of `n` plaintext bytes counts `⌈n/16⌉ + 1` blocks ([`blocks`]).
pub const BLOCK_LIMIT: u64 = 1 << 36;

/// Wire length of the body for a plaintext of `len` bytes.
pub const fn sealed_len(len: usize) -> usize {
    len + TAG_LEN
}

/// Largest plaintext whose body fits in `max_body` wire bytes.
pub const fn max_plaintext(max_body: usize) -> usize {
    max_body.saturating_sub(TAG_LEN)
}

/// The blocks a record of `len` plaintext bytes counts against [`BLOCK_LIMIT`]: its counter
/// blocks and the one that masks the tag.
pub const fn blocks(len: usize) -> u64 {
    (len as u64).div_ceil(16) + 1
}

/// The header bytes of a record with `len` plaintext bytes: `header` with its `length` set to the
/// sealed length. They are the record's associated data.
fn sealed_header(mut header: Header, len: usize) -> Result<[u8; HEADER_LEN], CryptoError> {
    header.length = u32::try_from(sealed_len(len)).map_err(|_| CryptoError::TooLarge(len))?;
    Ok(header.to_bytes())
}

/// The keyed AEAD and the IV of one direction; seals or opens, never both.
pub(super) struct Gcm {
    aead: LessSafeKey,
    /// Kept to clone the key (ring's keys are not `Clone`).
    raw_key: [u8; 32],
    iv: [u8; NONCE_LEN],
}

impl Clone for Gcm {
    fn clone(&self) -> Self {
        Self {
            aead: Self::key(&self.raw_key),
            raw_key: self.raw_key,
            iv: self.iv,
        }
    }
}

impl fmt::Debug for Gcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gcm(<redacted>)")
    }
}

impl Gcm {
    pub(super) fn new(keys: &DirectionKeys) -> Self {
        Self {
            aead: Self::key(&keys.enc),
            raw_key: keys.enc,
            iv: keys.iv,
        }
    }

    fn key(raw: &[u8; 32]) -> LessSafeKey {
        // 32 bytes is AES-256-GCM's key length, so this cannot fail.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw).expect("a 32-byte AES-256 key"))
    }

    /// Record `seq`'s nonce: the IV with the sequence number XORed into its last 8 bytes.
    /// Unique per direction because sequence numbers never repeat (spec §5.5).
    fn nonce(&self, seq: u64) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        Nonce::assume_unique_for_key(nonce)
    }

    /// Appends header and sealed body for `plaintext` as record `seq`.
    /// `header.length` is overwritten with the sealed length.
    pub(super) fn seal(
        &self,
        seq: u64,
        header: Header,
        plaintext: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        let aad = sealed_header(header, plaintext.len())?;
        dst.reserve(HEADER_LEN + sealed_len(plaintext.len()));
        dst.put_slice(&aad);
        let ct = dst.len();
        dst.put_slice(plaintext);
        let tag = self.encrypt(seq, aad, &mut dst[ct..])?;
        dst.put_slice(tag.as_ref());
        Ok(())
    }

    /// [`Gcm::seal`] of `body` where it lies: appends the header to `dst`, encrypts `body` in
    /// place and appends the tag to it, so that `dst`'s new bytes and then `body` are exactly
    /// what `seal` appends. Nothing is copied if `body` has room for the tag.
    pub(super) fn seal_in_place(
        &self,
        seq: u64,
        header: Header,
        body: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        let aad = sealed_header(header, body.len())?;
        let tag = self.encrypt(seq, aad, &mut body[..])?;
        dst.put_slice(&aad);
        body.put_slice(tag.as_ref());
        Ok(())
    }

    /// Encrypts `in_out` in place as record `seq` with the header bytes `aad`; returns the tag.
    fn encrypt(
        &self,
        seq: u64,
        aad: [u8; HEADER_LEN],
        in_out: &mut [u8],
    ) -> Result<Tag, CryptoError> {
        self.aead
            .seal_in_place_separate_tag(self.nonce(seq), Aad::from(aad), in_out)
            .map_err(|_| CryptoError::TooLarge(in_out.len()))
    }

    /// Verifies and decrypts one body, record `seq`, in place; returns the plaintext. Nothing
    /// is released unless the tag verifies.
    pub(super) fn open(
        &self,
        seq: u64,
        header: &Header,
        mut body: BytesMut,
    ) -> Result<Bytes, CryptoError> {
        let Some(ct_len) = body.len().checked_sub(TAG_LEN) else {
            return Err(CryptoError::BadRecord);
        };
        let tag = Tag::try_from(&body[ct_len..]).map_err(|_| CryptoError::BadRecord)?;
        body.truncate(ct_len);
        self.aead
            .open_in_place_separate_tag(
                self.nonce(seq),
                Aad::from(header.to_bytes()),
                tag,
                &mut body,
                0..,
            )
            .map_err(|_| CryptoError::BadRecord)?;
        Ok(body.freeze())
    }

    /// Step 1 of opening (spec §5.4): whether a body of `len` bytes can be a sealed record.
    pub(super) fn plausible_len(len: usize) -> bool {
        len >= TAG_LEN
    }
}
