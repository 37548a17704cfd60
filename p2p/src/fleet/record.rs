//! The signed release record (spec/P2P.md §8.2): the small thing that travels by gossip. It
//! names the content (the manifest's content id) and the version; the data travels by the
//! swarm and is checked against the content id, so the record's signature covers everything.
//!
//! ```text
//!  0        8     9          41         49           81        89
//!  +--------+-----+----------+----------+------------+---------+-----------+------------+-----------+
//!  | magic  | fmt | channel  | version  | content_id | time_ms | notes str | source str | signature |
//!  |FERRYREL| 01  | [32]     | u64      | [32]       | u64     | u16+UTF-8 | u16+UTF-8  | [64]      |
//!  +--------+-----+----------+----------+------------+---------+-----------+------------+-----------+
//!  signature = Ed25519(channel key, "ferry fleet release v1" || every byte before it)
//! ```

use std::fmt;

use bytes::{Buf, BufMut};
use ed25519_dalek::{Signature, Signer};

use super::channel::{ChannelId, ChannelKey};
use crate::manifest::ContentId;

/// First bytes of every record.
pub const MAGIC: &[u8; 8] = b"FERRYREL";
/// The only format defined.
pub const FORMAT: u8 = 1;
/// Domain separator of the signature: a record's signature means nothing anywhere else.
pub const SIGNATURE_CONTEXT: &[u8] = b"ferry fleet release v1";
/// Longest `notes` and `source`, in bytes.
pub const MAX_TEXT: usize = 512;
/// Fixed bytes: magic, format, channel, version, content id, time, two lengths, signature.
pub const FIXED_LEN: usize = 8 + 1 + 32 + 8 + 32 + 8 + 2 + 2 + 64;
/// Longest record.
pub const MAX_LEN: usize = FIXED_LEN + 2 * MAX_TEXT;

/// What a release says, before it is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub channel: ChannelId,
    /// Strictly increasing per channel; never 0 (0 means "none" in gossip, §8.4).
    pub version: u64,
    pub content_id: ContentId,
    /// When it was published: milliseconds since the Unix epoch (informative only).
    pub time_ms: u64,
    /// Free text for people, at most 512 bytes.
    pub notes: String,
    /// A `ferry://` directory holding the manifest's top-level entry, or empty.
    pub source: String,
}

/// A record that decoded and whose signature checks against its channel.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedRelease {
    release: Release,
    /// The exact bytes, signature included: what is stored and forwarded.
    bytes: Vec<u8>,
}

/// Why bytes are not an acceptable record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("release record of {0} bytes is shorter than its layout")]
    Truncated(usize),
    #[error("release record of {0} bytes exceeds {MAX_LEN}")]
    TooLong(usize),
    #[error("release record has {0} bytes after its signature")]
    Trailing(usize),
    #[error("not a release record (bad magic)")]
    Magic,
    #[error("release record format {0} is not 1")]
    Format(u8),
    #[error("release record version is 0")]
    VersionZero,
    #[error("release record {field} of {len} bytes exceeds {MAX_TEXT}")]
    TextTooLong { field: &'static str, len: usize },
    #[error("release record {0} is not UTF-8 text without control characters")]
    BadText(&'static str),
    #[error("release record signature does not verify with its channel key")]
    BadSignature,
}

impl Release {
    /// The bytes the signature covers (and that precede it on the wire).
    fn signed_part(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.notes.len() + self.source.len());
        out.put_slice(MAGIC);
        out.put_u8(FORMAT);
        out.put_slice(&self.channel.0);
        out.put_u64(self.version);
        out.put_slice(&self.content_id.0);
        out.put_u64(self.time_ms);
        out.put_u16(self.notes.len() as u16);
        out.put_slice(self.notes.as_bytes());
        out.put_u16(self.source.len() as u16);
        out.put_slice(self.source.as_bytes());
        out
    }

    /// Signs with `key`, which must be the channel's (checked: a record signed by another key
    /// would be refused by every follower).
    pub fn sign(self, key: &ChannelKey) -> Result<SignedRelease, RecordError> {
        if key.id() != self.channel {
            return Err(RecordError::BadSignature);
        }
        if self.version == 0 {
            return Err(RecordError::VersionZero);
        }
        check_text("notes", &self.notes)?;
        check_text("source", &self.source)?;
        let mut bytes = self.signed_part();
        let signature = key.signing().sign(&with_context(&bytes));
        bytes.put_slice(&signature.to_bytes());
        Ok(SignedRelease {
            release: self,
            bytes,
        })
    }
}

fn with_context(signed: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + signed.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(signed);
    message
}

/// Notes may hold line breaks and tabs; nothing else below 0x20 nor DEL.
fn check_text(field: &'static str, text: &str) -> Result<(), RecordError> {
    if text.len() > MAX_TEXT {
        return Err(RecordError::TextTooLong {
            field,
            len: text.len(),
        });
    }
    let allowed = |c: char| !c.is_control() || (field == "notes" && (c == '\n' || c == '\t'));
    if text.chars().all(allowed) {
        Ok(())
    } else {
        Err(RecordError::BadText(field))
    }
}

fn take_text(src: &mut &[u8], field: &'static str, total: usize) -> Result<String, RecordError> {
    if src.len() < 2 {
        return Err(RecordError::Truncated(total));
    }
    let len = usize::from(src.get_u16());
    if len > MAX_TEXT {
        return Err(RecordError::TextTooLong { field, len });
    }
    if src.len() < len {
        return Err(RecordError::Truncated(total));
    }
    let (text, rest) = src.split_at(len);
    *src = rest;
    let text = std::str::from_utf8(text).map_err(|_| RecordError::BadText(field))?;
    check_text(field, text)?;
    Ok(text.to_owned())
}

impl SignedRelease {
    /// Decodes `bytes` and checks the signature against the channel key the record names.
    /// Whether that channel is the one followed is the caller's check (§8.4).
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let total = bytes.len();
        if total > MAX_LEN {
            return Err(RecordError::TooLong(total));
        }
        if total < FIXED_LEN {
            return Err(RecordError::Truncated(total));
        }
        let mut src = bytes;
        if &src[..8] != MAGIC {
            return Err(RecordError::Magic);
        }
        src.advance(8);
        let format = src.get_u8();
        if format != FORMAT {
            return Err(RecordError::Format(format));
        }
        let mut channel = [0u8; 32];
        src.copy_to_slice(&mut channel);
        let version = src.get_u64();
        if version == 0 {
            return Err(RecordError::VersionZero);
        }
        let mut content_id = [0u8; 32];
        src.copy_to_slice(&mut content_id);
        let time_ms = src.get_u64();
        let notes = take_text(&mut src, "notes", total)?;
        let source = take_text(&mut src, "source", total)?;
        if src.len() < 64 {
            return Err(RecordError::Truncated(total));
        }
        if src.len() > 64 {
            return Err(RecordError::Trailing(src.len() - 64));
        }
        let signature =
            Signature::from_bytes(src.try_into().map_err(|_| RecordError::Truncated(total))?);
        let channel = ChannelId(channel);
        let key = channel.verifying_key().ok_or(RecordError::BadSignature)?;
        // Strict verification refuses small-order keys and non-canonical signatures, so one
        // release has exactly one accepted encoding.
        key.verify_strict(&with_context(&bytes[..total - 64]), &signature)
            .map_err(|_| RecordError::BadSignature)?;
        Ok(Self {
            release: Release {
                channel,
                version,
                content_id: ContentId(content_id),
                time_ms,
                notes,
                source,
            },
            bytes: bytes.to_vec(),
        })
    }

    pub fn release(&self) -> &Release {
        &self.release
    }

    pub fn version(&self) -> u64 {
        self.release.version
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for SignedRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedRelease")
            .field("channel", &self.release.channel)
            .field("version", &self.release.version)
            .field("content_id", &self.release.content_id)
            .finish_non_exhaustive()
    }
}

/// Fuzzing entry: whatever decodes re-encodes to the same bytes; nothing panics.
#[cfg(any(fuzzing, test))]
pub fn fuzz_record(data: &[u8]) {
    if let Ok(record) = SignedRelease::decode(data) {
        assert_eq!(record.as_bytes(), data);
        assert_eq!(record.release().signed_part(), data[..data.len() - 64]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The test channel of spec/vectors/fleet.txt: seed 00 01 02 .. 1f.
    pub(crate) fn test_key() -> ChannelKey {
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = i as u8;
        }
        ChannelKey::from_seed(seed)
    }

    pub(crate) fn release(key: &ChannelKey, version: u64) -> SignedRelease {
        Release {
            channel: key.id(),
            version,
            content_id: ContentId([0xc1; 32]),
            time_ms: 1_767_225_600_000,
            notes: "first release".into(),
            source: String::new(),
        }
        .sign(key)
        .unwrap()
    }

    #[test]
    fn a_signed_record_decodes_to_itself() {
        let record = release(&test_key(), 3);
        let again = SignedRelease::decode(record.as_bytes()).unwrap();
        assert_eq!(again, record);
        assert_eq!(record.as_bytes().len(), FIXED_LEN + "first release".len());
        fuzz_record(record.as_bytes());
    }

    #[test]
    fn a_forged_signature_is_refused() {
        // A record made by someone else's key but naming the channel: signed by the forger,
        // with the channel id patched in.
        let forger = ChannelKey::from_seed([0x66; 32]);
        let mut forged = release(&forger, 9).as_bytes().to_vec();
        forged[9..41].copy_from_slice(&test_key().id().0);
        assert_eq!(
            SignedRelease::decode(&forged),
            Err(RecordError::BadSignature)
        );
    }

    #[test]
    fn every_modified_byte_is_refused() {
        let bytes = release(&test_key(), 4).as_bytes().to_vec();
        // One byte in each field (first and last of the long ones): a verification costs
        // milliseconds in a debug build, so not every byte.
        let n = bytes.len();
        for i in [
            0,
            7,
            8,
            9,
            40,
            41,
            48,
            49,
            80,
            81,
            88,
            89,
            90,
            91,
            100,
            n - 66,
            n - 65,
            n - 64,
            n - 1,
        ] {
            let mut modified = bytes.clone();
            modified[i] ^= 0x01;
            assert!(
                SignedRelease::decode(&modified).is_err(),
                "byte {i} flipped"
            );
        }
    }

    #[test]
    fn signing_with_another_key_than_the_channel_is_refused() {
        let mut r = release(&test_key(), 1).release().clone();
        r.version = 2;
        assert!(r.sign(&ChannelKey::from_seed([5; 32])).is_err());
    }

    #[test]
    fn truncated_and_extended_records_are_refused() {
        let bytes = release(&test_key(), 4).as_bytes().to_vec();
        for len in 0..bytes.len() {
            assert!(SignedRelease::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            SignedRelease::decode(&longer),
            Err(RecordError::Trailing(1))
        );
    }

    #[test]
    fn text_fields_are_bounded_and_clean() {
        let key = test_key();
        let mut r = release(&key, 1).release().clone();
        r.notes = "x".repeat(MAX_TEXT + 1);
        assert!(matches!(
            r.clone().sign(&key),
            Err(RecordError::TextTooLong { .. })
        ));
        r.notes = "line one\nline two\ttab".into();
        assert!(r.clone().sign(&key).is_ok());
        r.source = "ferry://h/\n".into();
        assert_eq!(r.sign(&key), Err(RecordError::BadText("source")));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            fuzz_record(&data);
        }
    }
}
