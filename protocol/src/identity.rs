//! Node identities (spec §13.1): a long-term X25519 key pair per user or machine, and the node
//! id that names it: a short, typeable, checksummed encoding of a hash of the public key, like a
//! Foolscap TubID. Pure: the files live in `ferry-common`.
//!
//! ```text
//! hash   = SHA-256("ferry node id v1" || public key)[0..20]        (160 bits)
//! check  = SHA-256("ferry node id check v1" || hash)[0..2] >> 6    (10 bits)
//! id     = base32(hash || check), RFC 4648 alphabet, lowercase     (34 characters)
//! ```
//!
//! X25519 rather than Ed25519 because the identity handshake (Noise XX, [`crate::noise`]) proves
//! a static key by Diffie-Hellman, which needs an X25519 key; signing keys are a later, separate
//! thing.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

/// Bytes of the public-key hash a node id carries (160 bits).
pub const ID_HASH_LEN: usize = 20;

/// Characters of a node id: 32 for the hash, 2 for the 10-bit checksum.
pub const ID_LEN: usize = 34;

/// Domain separator of the id hash.
pub const ID_LABEL: &[u8] = b"ferry node id v1";

/// Domain separator of the id checksum.
pub const CHECK_LABEL: &[u8] = b"ferry node id check v1";

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A node's long-term key pair. The secret never leaves this struct except to the handshake
/// and the identity file; `Debug` shows only the id.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
    public: [u8; 32],
}

impl Identity {
    /// A fresh identity from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self::from_secret(secret)
    }

    /// The identity whose X25519 secret is `secret` (RFC 7748 clamps it when used).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let public = PublicKey::from(&StaticSecret::from(secret)).to_bytes();
        Self { secret, public }
    }

    /// The X25519 secret, for the handshake and the identity file only.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The X25519 public key, as the handshake sends it.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// The node id of this identity.
    pub fn id(&self) -> NodeId {
        NodeId::from_public_key(&self.public)
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public
    }
}

impl Eq for Identity {}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.id())
    }
}

/// The name of a node: 160 bits of the hash of its public key. Public; fine in URLs and logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; ID_HASH_LEN]);

/// A string that is not a node id. Each message is one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("a node id has {ID_LEN} characters, not {0}")]
    Length(usize),
    #[error("a node id holds only the letters a-z and the digits 2-7, not {0:?}")]
    Character(char),
    #[error("the node id's checksum does not match: a character is mistyped")]
    Checksum,
}

impl NodeId {
    /// The id of the X25519 public key `public`.
    pub fn from_public_key(public: &[u8; 32]) -> Self {
        let mut hash = Sha256::new();
        hash.update(ID_LABEL);
        hash.update(public);
        let digest = hash.finalize();
        let mut id = [0u8; ID_HASH_LEN];
        id.copy_from_slice(&digest[..ID_HASH_LEN]);
        Self(id)
    }

    /// An id from its 20 hash bytes (as a resolver or a file stores it).
    pub fn from_bytes(bytes: [u8; ID_HASH_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; ID_HASH_LEN] {
        &self.0
    }

    /// The 10-bit checksum, in the low bits.
    fn check(&self) -> u16 {
        let mut hash = Sha256::new();
        hash.update(CHECK_LABEL);
        hash.update(self.0);
        let digest = hash.finalize();
        u16::from_be_bytes([digest[0], digest[1]]) >> 6
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 160 hash bits are exactly 32 characters; the checksum's 10 bits are 2 more.
        let mut out = String::with_capacity(ID_LEN);
        for chunk in self.0.chunks(5) {
            let mut acc = 0u64;
            for &byte in chunk {
                acc = (acc << 8) | u64::from(byte);
            }
            for i in (0..8).rev() {
                out.push(ALPHABET[((acc >> (i * 5)) & 31) as usize] as char);
            }
        }
        let check = self.check();
        out.push(ALPHABET[usize::from(check >> 5)] as char);
        out.push(ALPHABET[usize::from(check & 31)] as char);
        f.write_str(&out)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    /// Case-insensitive; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, NodeIdError> {
        let s = s.trim();
        let count = s.chars().count();
        if count != ID_LEN {
            return Err(NodeIdError::Length(count));
        }
        let mut values = [0u8; ID_LEN];
        for (value, c) in values.iter_mut().zip(s.chars()) {
            let lower = c.to_ascii_lowercase();
            *value = ALPHABET
                .iter()
                .position(|&a| a as char == lower)
                .ok_or(NodeIdError::Character(c))? as u8;
        }
        let mut id = [0u8; ID_HASH_LEN];
        for (group, out) in values[..32].chunks(8).zip(id.chunks_mut(5)) {
            let acc = group.iter().fold(0u64, |acc, &v| (acc << 5) | u64::from(v));
            out.copy_from_slice(&acc.to_be_bytes()[3..]);
        }
        let id = Self(id);
        let check = (u16::from(values[32]) << 5) | u16::from(values[33]);
        if check != id.check() {
            return Err(NodeIdError::Checksum);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_34_lowercase_characters() {
        for seed in 0..50u8 {
            let id = Identity::from_secret([seed; 32]).id();
            let text = id.to_string();
            assert_eq!(text.len(), ID_LEN);
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
            assert_eq!(text.parse::<NodeId>().unwrap(), id);
            assert_eq!(text.to_uppercase().parse::<NodeId>().unwrap(), id);
        }
    }

    #[test]
    fn the_id_is_the_hash_of_the_public_key() {
        let identity = Identity::from_secret([7; 32]);
        let mut hash = Sha256::new();
        hash.update(b"ferry node id v1");
        hash.update(identity.public_key());
        assert_eq!(identity.id().as_bytes()[..], hash.finalize()[..20]);
    }

    #[test]
    fn mistyped_ids_are_refused() {
        let text = Identity::from_secret([1; 32]).id().to_string();
        assert_eq!(
            text[1..].parse::<NodeId>(),
            Err(NodeIdError::Length(ID_LEN - 1))
        );
        let mut bad = text.clone().into_bytes();
        bad[3] = b'1';
        assert_eq!(
            String::from_utf8(bad).unwrap().parse::<NodeId>(),
            Err(NodeIdError::Character('1'))
        );
        // Every single-character substitution in the hash part: the 10-bit check catches all
        // but about one in a thousand; count them rather than hope.
        let mut missed = 0;
        let mut tried = 0;
        for position in 0..ID_LEN {
            for &replacement in ALPHABET {
                let mut typo = text.clone().into_bytes();
                if typo[position] == replacement {
                    continue;
                }
                typo[position] = replacement;
                tried += 1;
                if String::from_utf8(typo).unwrap().parse::<NodeId>().is_ok() {
                    missed += 1;
                }
            }
        }
        assert!(missed * 200 < tried, "{missed} of {tried} typos accepted");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let identity = Identity::from_secret([0xab; 32]);
        let text = format!("{identity:?}");
        assert!(!text.contains("abab"), "{text}");
        assert!(text.contains(&identity.id().to_string()));
    }
}
