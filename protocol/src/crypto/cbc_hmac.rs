//! The AES-256-CBC + HMAC-SHA256 record suite (spec §5.3, §5.4), keyed for one direction.
//!
//! Each sealed body is `IV || AES-256-CBC(PKCS#7(plaintext)) || TAG`, where
//! `TAG = HMAC-SHA256(mac_key, seq_u64_be || header[12] || IV || ciphertext)`. The tag is checked
//! in constant time before anything is decrypted, and every failure is one opaque
//! [`CryptoError::BadRecord`]. The sequence number and the IV are inputs: the record layer
//! ([`super::record`]) owns the counters and their limits and draws the IVs.

use std::fmt;

use aes::cipher::{
    block_padding::Pkcs7, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit,
};
use aes::Aes256;
use bytes::{BufMut, Bytes, BytesMut};
use rand::RngCore;
use ring::hmac;
use subtle::ConstantTimeEq;

use super::key_schedule::DirectionKeys;
use crate::error::CryptoError;
use crate::header::{Header, HEADER_LEN};

/// Size of the random IV that starts every encrypted body.
pub const IV_LEN: usize = 16;
/// Size of the HMAC-SHA256 tag that ends every encrypted body.
pub const TAG_LEN: usize = 32;
/// AES block size.
pub const BLOCK_LEN: usize = 16;
/// Smallest legal encrypted body: IV, one block of padding, tag.
pub const MIN_SEALED_LEN: usize = IV_LEN + BLOCK_LEN + TAG_LEN;

/// How many records [`RecordSealer::seal_many`](super::RecordSealer::seal_many) encrypts side by
/// side with this suite: the AES-NI backend pipelines eight blocks.
pub const PARALLEL_CHAINS: usize = 8;

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

/// The keyed cipher and MAC of one direction; seals or opens, never both.
///
/// The MAC is ring's HMAC-SHA256: its assembly SHA-256 (AVX2 where the CPU has no SHA
/// extensions) measured about 1.75x RustCrypto's portable one on this suite's build machine,
/// and the MAC is most of this suite's cost there.
#[derive(Clone)]
pub(super) struct CbcHmac {
    cipher: Aes256,
    mac: hmac::Key,
}

impl fmt::Debug for CbcHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CbcHmac(<redacted>)")
    }
}

impl CbcHmac {
    pub(super) fn new(keys: &DirectionKeys) -> Self {
        Self {
            cipher: Aes256::new(&keys.enc.into()),
            mac: hmac::Key::new(hmac::HMAC_SHA256, &keys.mac),
        }
    }

    /// A MAC already fed this record's sequence number.
    fn mac_for(&self, seq: u64) -> hmac::Context {
        let mut mac = hmac::Context::with_key(&self.mac);
        mac.update(&seq.to_be_bytes());
        mac
    }

    /// Appends header and encrypted body for `plaintext` as record `seq` with `iv`.
    /// `header.length` is overwritten with the sealed length.
    pub(super) fn seal(
        &self,
        seq: u64,
        mut header: Header,
        plaintext: &[u8],
        iv: &[u8; IV_LEN],
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        let mut mac = self.mac_for(seq);
        let wire_len = sealed_len(plaintext.len());
        header.length =
            u32::try_from(wire_len).map_err(|_| CryptoError::TooLarge(plaintext.len()))?;
        let ct_len = wire_len - IV_LEN - TAG_LEN;

        let start = dst.len();
        dst.reserve(HEADER_LEN + wire_len);
        header.encode(dst);
        dst.put_slice(iv);
        let ct_start = dst.len();
        dst.put_slice(plaintext);
        dst.put_bytes(0, ct_len - plaintext.len());
        cbc::Encryptor::<Aes256>::inner_iv_init(self.cipher.clone(), iv.into())
            .encrypt_padded_mut::<Pkcs7>(&mut dst[ct_start..], plaintext.len())
            .map_err(|_| CryptoError::TooLarge(plaintext.len()))?;

        mac.update(&dst[start..]);
        dst.put_slice(mac.sign().as_ref());
        Ok(())
    }

    /// Appends several records, numbered from `first_seq`, exactly as that many
    /// [`CbcHmac::seal`] calls with IVs drawn in order from `ivs` would, but faster: CBC
    /// encryption is serial within a record, so one record keeps the AES unit waiting on each
    /// block's result, while the chains of up to [`PARALLEL_CHAINS`] records are independent and
    /// are encrypted a block of each at a time. The caller has checked that every sequence number
    /// is usable. Each header's `length` is overwritten with its sealed length.
    pub(super) fn seal_many<R: RngCore + ?Sized>(
        &self,
        first_seq: u64,
        frames: &[(Header, &[u8])],
        ivs: &mut R,
        dst: &mut BytesMut,
    ) -> Result<(), CryptoError> {
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
        for (header, plaintext) in frames {
            let wire_len = sealed_len(plaintext.len());
            let mut header = *header;
            header.length =
                u32::try_from(wire_len).map_err(|_| CryptoError::TooLarge(plaintext.len()))?;
            let ct_len = wire_len - IV_LEN - TAG_LEN;
            let pad = ct_len - plaintext.len();
            let start = dst.len();
            header.encode(dst);
            let mut iv = [0u8; IV_LEN];
            ivs.fill_bytes(&mut iv);
            dst.put_slice(&iv);
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
                self.cipher.encrypt_blocks(&mut blocks[..active]);
                for (block, &chain) in blocks[..active].iter().zip(&chains[..active]) {
                    let at = group[chain].ct + step * BLOCK_LEN;
                    buf[at..at + BLOCK_LEN].copy_from_slice(block);
                    prev[chain] = load_block(buf, at);
                }
            }
        }
        // 3. A tag for each record under its own sequence number, in order.
        for (i, record) in records.iter().enumerate() {
            // The caller checked that the last of these is at most the last sequence number; a
            // `first_seq..` range would overflow stepping past it.
            let mut mac = self.mac_for(first_seq + i as u64);
            let tag_at = record.ct + record.ct_len;
            mac.update(&dst[record.start..tag_at]);
            dst[tag_at..tag_at + TAG_LEN].copy_from_slice(mac.sign().as_ref());
        }
        Ok(())
    }

    /// Verifies and decrypts one body, record `seq`, in place; returns the plaintext.
    pub(super) fn open(
        &self,
        seq: u64,
        header: &Header,
        mut body: BytesMut,
    ) -> Result<Bytes, CryptoError> {
        let len = body.len();
        let mut mac = self.mac_for(seq);
        mac.update(&header.to_bytes());
        mac.update(&body[..len - TAG_LEN]);
        let tag = mac.sign();
        if !bool::from(tag.as_ref().ct_eq(&body[len - TAG_LEN..])) {
            return Err(CryptoError::BadRecord);
        }

        body.truncate(len - TAG_LEN);
        let mut ciphertext = body.split_off(IV_LEN);
        let iv: [u8; IV_LEN] = body[..].try_into().map_err(|_| CryptoError::BadRecord)?;
        let plain_len = cbc::Decryptor::<Aes256>::inner_iv_init(self.cipher.clone(), &iv.into())
            .decrypt_padded_mut::<Pkcs7>(&mut ciphertext)
            .map_err(|_| CryptoError::BadRecord)?
            .len();
        ciphertext.truncate(plain_len);
        Ok(ciphertext.freeze())
    }

    /// Step 1 of opening (spec §5.4): whether a body of `len` bytes can be a sealed record.
    pub(super) fn plausible_len(len: usize) -> bool {
        len >= MIN_SEALED_LEN && (len - IV_LEN - TAG_LEN) % BLOCK_LEN == 0
    }
}

fn load_block(buf: &[u8], at: usize) -> u128 {
    let mut bytes = [0u8; BLOCK_LEN];
    bytes.copy_from_slice(&buf[at..at + BLOCK_LEN]);
    u128::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
