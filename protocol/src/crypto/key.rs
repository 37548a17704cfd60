//! The pre-shared key: generation, text forms, key-file contents and the log fingerprint
//! (spec §5.6). Reading and writing key files is `ferry_common`'s job; this stays free of I/O.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::message::KeyHint;

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

    /// The key's public hint for a version-2 ClientHello (spec §4.2): the first 8 bytes of
    /// `HMAC-SHA256(key, "ferry v2 key hint")`. One-way, but the same for every connection made
    /// with this key, so it links them for an observer.
    pub fn hint(&self) -> KeyHint {
        let mac = super::key_schedule::hmac_sha256(&self.0, &[super::labels::v2::KEY_HINT]);
        let mut hint = [0u8; KeyHint::LEN];
        hint.copy_from_slice(&mac[..KeyHint::LEN]);
        KeyHint(hint)
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_hint_is_a_truncated_hmac_and_differs_per_key() {
        let key = Key::from_bytes([0x42; 32]);
        let full = super::super::hmac_sha256(key.as_bytes(), &[b"ferry v2 key hint"]);
        assert_eq!(key.hint().0, full[..8]);
        assert_ne!(key.hint(), Key::from_bytes([0x43; 32]).hint());
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
