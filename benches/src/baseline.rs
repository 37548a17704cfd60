//! Baselines that benchmarks measure beside Ferry in the same run.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

/// AES-256-CBC encrypt + HMAC-SHA256, then HMAC verify + decrypt of `body`, with the crates and
/// no framing: the single-core floor for an encrypted frame's round trip. `buf` is scratch.
/// Returns the decrypted length plus 1 if the tag verified, so the work cannot be optimised out.
pub fn raw_cipher_mac(body: &[u8], buf: &mut Vec<u8>) -> usize {
    let key = [1u8; 32];
    let iv = [9u8; 16];
    let padded = (body.len() / 16 + 1) * 16;
    buf.clear();
    buf.extend_from_slice(body);
    buf.resize(padded, 0);
    let ct_len = Enc::new(&key.into(), &iv.into())
        .encrypt_padded_mut::<Pkcs7>(buf, body.len())
        .map(|ct| ct.len())
        .unwrap_or(0);
    let tag = mac(&buf[..ct_len]);
    let ok = mac(&buf[..ct_len]) == tag;
    let plain = Dec::new(&key.into(), &iv.into())
        .decrypt_padded_mut::<Pkcs7>(&mut buf[..ct_len])
        .map(|p| p.len())
        .unwrap_or(0);
    plain + usize::from(ok)
}

fn mac(data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[2; 32])
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Bytes per second of [`raw_cipher_mac`] on `chunk`-byte bodies, measured on this thread for
/// about `duration`.
pub fn cipher_mac_rate(chunk: usize, duration: std::time::Duration) -> f64 {
    let mut buf = Vec::with_capacity(chunk + 32);
    rate(chunk, duration, |body| raw_cipher_mac(body, &mut buf))
}

/// Bytes per second of `round_trip` (one seal and open of a `chunk`-byte body, returning
/// something that depends on the result) on this thread for about `duration`. Lets a bench
/// measure the baseline of the suite it measures (e.g. AES-256-GCM with the bench's `ring`).
pub fn rate(
    chunk: usize,
    duration: std::time::Duration,
    mut round_trip: impl FnMut(&[u8]) -> usize,
) -> f64 {
    let body = vec![0xA5u8; chunk];
    let start = std::time::Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration {
        for _ in 0..16 {
            std::hint::black_box(round_trip(std::hint::black_box(&body)));
            bytes += chunk as u64;
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_recovers_the_body_and_verifies() {
        let mut buf = Vec::new();
        assert_eq!(raw_cipher_mac(&[7; 100], &mut buf), 101);
        assert!(cipher_mac_rate(4096, std::time::Duration::from_millis(20)) > 0.0);
        let mut calls = 0;
        let r = rate(4096, std::time::Duration::from_millis(5), |body| {
            calls += 1;
            body.len()
        });
        assert!(r > 0.0 && calls % 16 == 0 && calls > 0, "{r} {calls}");
    }
}
