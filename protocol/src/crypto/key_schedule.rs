//! The key schedule (spec §5.2): HKDF-SHA256 from the PSK, the X25519 secret and the transcript
//! hash to the record keys of both directions and the two Finished MACs, plus the HMAC and
//! constant-time comparison the handshake uses.

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::key::Key;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// The keys of one direction: what each suite takes from them (spec §5.2, §5.3).
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionKeys {
    /// The AES-256 key (both suites).
    pub enc: [u8; 32],
    /// The HMAC-SHA256 key (CBC + HMAC only).
    pub mac: [u8; 32],
    /// The IV that GCM nonces are made from (version 2; zeros in version 1, which has no GCM).
    pub iv: [u8; 12],
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

    /// Version 2's labels (spec §5.2): every key is bound to the version, and each direction
    /// also gets the 12-byte IV that AES-256-GCM nonces are made from (§5.3.2).
    pub mod v2 {
        pub const C2S_ENC: &[u8] = b"ferry v2 c2s enc";
        pub const C2S_MAC: &[u8] = b"ferry v2 c2s mac";
        pub const C2S_IV: &[u8] = b"ferry v2 c2s iv";
        pub const S2C_ENC: &[u8] = b"ferry v2 s2c enc";
        pub const S2C_MAC: &[u8] = b"ferry v2 s2c mac";
        pub const S2C_IV: &[u8] = b"ferry v2 s2c iv";
        pub const SERVER_FINISHED: &[u8] = b"ferry v2 server finished";
        pub const CLIENT_FINISHED: &[u8] = b"ferry v2 client finished";
        /// Not an HKDF label: the key hint is `HMAC-SHA256(PSK, KEY_HINT)`, first 8 bytes.
        pub const KEY_HINT: &[u8] = b"ferry v2 key hint";
    }
}

/// Version 1's key schedule:
/// `PRK = HKDF-Extract(salt = TH, IKM = PSK || DH)`, each key `HKDF-Expand(PRK, label, 32)`.
pub fn derive_keys(psk: &Key, dh_shared: &[u8; 32], transcript_hash: &[u8; 32]) -> SessionKeys {
    derive_keys_for(1, psk, dh_shared, transcript_hash)
}

/// The key schedule of protocol `version` (spec §5.2): version 1's labels say `v1`; version 2's
/// say `v2` and add each direction's 12-byte GCM IV, `HKDF-Expand(PRK, label, 12)`.
pub fn derive_keys_for(
    version: u8,
    psk: &Key,
    dh_shared: &[u8; 32],
    transcript_hash: &[u8; 32],
) -> SessionKeys {
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
    if version >= 2 {
        let iv = |label: &[u8]| {
            let mut out = [0u8; 12];
            hkdf.expand(label, &mut out)
                .expect("12 bytes is a valid HKDF-SHA256 output length");
            out
        };
        return SessionKeys {
            client_to_server: DirectionKeys {
                enc: expand(labels::v2::C2S_ENC),
                mac: expand(labels::v2::C2S_MAC),
                iv: iv(labels::v2::C2S_IV),
            },
            server_to_client: DirectionKeys {
                enc: expand(labels::v2::S2C_ENC),
                mac: expand(labels::v2::S2C_MAC),
                iv: iv(labels::v2::S2C_IV),
            },
            server_confirm: confirm(labels::v2::SERVER_FINISHED),
            client_confirm: confirm(labels::v2::CLIENT_FINISHED),
        };
    }
    SessionKeys {
        client_to_server: DirectionKeys {
            enc: expand(labels::C2S_ENC),
            mac: expand(labels::C2S_MAC),
            iv: [0; 12],
        },
        server_to_client: DirectionKeys {
            enc: expand(labels::S2C_ENC),
            mac: expand(labels::S2C_MAC),
            iv: [0; 12],
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
