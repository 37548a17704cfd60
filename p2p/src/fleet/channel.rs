//! Channels (spec/P2P.md §8.1): an Ed25519 key pair whose holder alone can sign releases, and
//! the channel id that names its public key: a typeable, checksummed encoding in the style of
//! node ids (PROTOCOL.md §13.1), but of the whole key, since a follower verifies signatures
//! with it and has nothing else to go on.
//!
//! ```text
//! check = u16_be(SHA-256("ferry channel id check v1" || public)[0..2]) >> 2   (14 bits)
//! id    = base32(public || check), RFC 4648 alphabet, lowercase              (54 characters)
//! ```
//!
//! The signing key lives in a key file (32-byte seed as hex, owner-only), the same format and
//! permission rules as Ferry's other secrets ([`ferry_common::key_file`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Characters of a channel id: 256 key bits and 14 check bits are exactly 54 × 5.
pub const CHANNEL_ID_LEN: usize = 54;
/// Domain separator of the checksum.
pub const CHECK_LABEL: &[u8] = b"ferry channel id check v1";

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A channel's public name: its Ed25519 public key. Public; fine in logs and unit files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub [u8; 32]);

/// A string that is not a channel id. Each message is one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelIdError {
    #[error("a channel id has {CHANNEL_ID_LEN} characters, not {0}")]
    Length(usize),
    #[error("a channel id holds only the letters a-z and the digits 2-7, not {0:?}")]
    Character(char),
    #[error("the channel id's checksum does not match: a character is mistyped")]
    Checksum,
    #[error("the channel id is not a valid Ed25519 public key")]
    Key,
}

impl ChannelId {
    /// The 14-bit checksum, in the low bits.
    fn check(&self) -> u16 {
        let digest = Sha256::new()
            .chain_update(CHECK_LABEL)
            .chain_update(self.0)
            .finalize();
        u16::from_be_bytes([digest[0], digest[1]]) >> 2
    }

    /// The key signatures are checked with; `None` if the bytes are not a curve point.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 270 bits, most significant first: the key, then the check.
        let mut bits = [0u8; 34];
        bits[..32].copy_from_slice(&self.0);
        let check = self.check() << 2;
        bits[32..].copy_from_slice(&check.to_be_bytes());
        let mut out = String::with_capacity(CHANNEL_ID_LEN);
        for i in 0..CHANNEL_ID_LEN {
            let mut v = 0u8;
            for b in 0..5 {
                let bit = i * 5 + b;
                v = (v << 1) | ((bits[bit / 8] >> (7 - bit % 8)) & 1);
            }
            out.push(ALPHABET[usize::from(v)] as char);
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({self})")
    }
}

impl FromStr for ChannelId {
    type Err = ChannelIdError;

    /// Case-insensitive; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, ChannelIdError> {
        let s = s.trim();
        let count = s.chars().count();
        if count != CHANNEL_ID_LEN {
            return Err(ChannelIdError::Length(count));
        }
        let mut bits = [0u8; 34];
        for (i, c) in s.chars().enumerate() {
            let lower = c.to_ascii_lowercase();
            let v = ALPHABET
                .iter()
                .position(|&a| a as char == lower)
                .ok_or(ChannelIdError::Character(c))? as u8;
            for b in 0..5 {
                let bit = i * 5 + b;
                if (v >> (4 - b)) & 1 == 1 {
                    bits[bit / 8] |= 1 << (7 - bit % 8);
                }
            }
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bits[..32]);
        let id = Self(key);
        // The two low bits of the last byte are past the 270 encoded ones: always zero.
        let check = u16::from_be_bytes([bits[32], bits[33]]) >> 2;
        if check != id.check() {
            return Err(ChannelIdError::Checksum);
        }
        if id.verifying_key().is_none() {
            return Err(ChannelIdError::Key);
        }
        Ok(id)
    }
}

/// A channel's signing key. `Debug` shows only the channel id.
#[derive(Clone)]
pub struct ChannelKey {
    signing: SigningKey,
}

impl ChannelKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Self::from_seed(seed)
    }

    /// The key whose RFC 8032 secret seed is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    pub fn seed(&self) -> &[u8; 32] {
        self.signing.as_bytes()
    }

    pub fn id(&self) -> ChannelId {
        ChannelId(self.signing.verifying_key().to_bytes())
    }

    pub(crate) fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// Reads a channel key file (refusing one others can read).
    pub fn load(path: &Path) -> Result<Self, ferry_common::key_file::KeyFileError> {
        let key = ferry_common::key_file::load(path)?;
        Ok(Self::from_seed(*key.as_bytes()))
    }

    /// Writes the key to a new owner-only file; never overwrites one.
    pub fn save_new(&self, path: &Path) -> Result<(), ferry_common::key_file::KeyFileError> {
        let key = ferry_protocol::Key::from_bytes(*self.seed());
        ferry_common::key_file::save_new(&key, path)
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelKey({})", self.id())
    }
}

/// Where `channel new NAME` keeps its files: `<config dir>/ferry/channels/`.
pub fn default_channel_dir() -> Option<PathBuf> {
    ferry_common::keys::default_key_file()
        .and_then(|key| key.parent().map(|dir| dir.join("channels")))
}

/// A channel name usable as a file name: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "channel name {name:?} must be 1 to 64 of a-z, A-Z, 0-9, '.', '_', '-' and not start with '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn channel_ids_round_trip_and_are_54_lowercase_characters() {
        for seed in 0..40u8 {
            let id = ChannelKey::from_seed([seed; 32]).id();
            let text = id.to_string();
            assert_eq!(text.len(), CHANNEL_ID_LEN);
            assert!(text.bytes().all(|b| ALPHABET.contains(&b)));
            assert_eq!(text.parse::<ChannelId>().unwrap(), id);
            assert_eq!(text.to_uppercase().parse::<ChannelId>().unwrap(), id);
            assert_eq!(format!("  {text}\n").parse::<ChannelId>().unwrap(), id);
        }
    }

    #[test]
    fn a_mistyped_character_is_caught_by_the_checksum() {
        let text = ChannelKey::from_seed([7; 32]).id().to_string();
        let mut caught = 0;
        let mut tried = 0;
        for i in 0..CHANNEL_ID_LEN {
            for &c in ALPHABET {
                if text.as_bytes()[i] == c {
                    continue;
                }
                let mut typo = text.clone().into_bytes();
                typo[i] = c;
                tried += 1;
                if String::from_utf8(typo)
                    .unwrap()
                    .parse::<ChannelId>()
                    .is_err()
                {
                    caught += 1;
                }
            }
        }
        // 14 check bits: about 1 in 16 384 typos slips through, and none in this sample.
        assert_eq!(caught, tried);
    }

    #[test]
    fn bad_lengths_and_characters_are_refused() {
        let text = ChannelKey::from_seed([1; 32]).id().to_string();
        assert_eq!(
            text[..53].parse::<ChannelId>(),
            Err(ChannelIdError::Length(53))
        );
        let bad = format!("{}1", &text[..53]);
        assert_eq!(
            bad.parse::<ChannelId>(),
            Err(ChannelIdError::Character('1'))
        );
    }

    #[test]
    fn the_key_file_is_owner_only_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channels/app.key");
        let key = ChannelKey::from_seed([9; 32]);
        key.save_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ChannelKey::load(&path).unwrap().id(), key.id());
        assert!(key.save_new(&path).is_err(), "never overwrites a key");
    }

    #[test]
    fn names_are_file_names() {
        assert!(check_name("app-prod.v2").is_ok());
        for bad in ["", ".hidden", "a/b", "x y", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
