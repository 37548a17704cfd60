//! Cryptography (spec §5), one room per job:
//! - `key`: the pre-shared [`Key`], its text forms and fingerprint (§5.6);
//! - `key_schedule`: HKDF from PSK, X25519 secret and transcript hash to the record keys and
//!   Finished MACs (§5.2);
//! - `record`: the record layer, for any suite: sealing and opening state, sequence numbers and
//!   their limits, the IV source (§5.3–§5.5);
//! - `cbc_hmac`: AES-256-CBC + HMAC-SHA256, encrypt-then-MAC, every version (§5.3.1, §5.4);
//! - `gcm`: AES-256-GCM, version 2 (§5.3.2, §5.4).
//!
//! Everything is re-exported here, so `ferry_protocol::crypto::X` is the one path to use.

mod cbc_hmac;
pub mod gcm;
mod key;
mod key_schedule;
mod record;

pub use cbc_hmac::{
    max_plaintext, sealed_len, BLOCK_LEN, IV_LEN, MIN_SEALED_LEN, PARALLEL_CHAINS, TAG_LEN,
};
pub use key::{Key, KeyError};
pub use key_schedule::{
    derive_keys, derive_keys_for, hmac_sha256, labels, mac_eq, DirectionKeys, SessionKeys,
};
pub use record::{
    IvRng, IvSource, PreSealAction, RecordOpener, RecordSealer, RecordSuite, ThreadRngIvs,
    CLOSE_SOON_BLOCKS, CLOSE_SOON_MARGIN,
};
