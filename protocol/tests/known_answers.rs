//! Known-answer tests for the primitives, exercised through Ferry's own record layer and MAC
//! helper rather than the crates directly: NIST SP 800-38A F.2.5 (AES-256-CBC), the GCM
//! specification's AES-256 test cases 15 and 16 (the NIST GCM submission, McGrew and Viega) and
//! RFC 4231 (HMAC-SHA256).

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use ferry_protocol::crypto::{
    gcm, hmac_sha256, DirectionKeys, RecordOpener, RecordSealer, RecordSuite, IV_LEN, TAG_LEN,
};
use ferry_protocol::{FrameType, Header, RequestId, Service, HEADER_LEN};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

#[test]
fn nist_sp800_38a_f25_cbc_aes256_through_the_record_layer() {
    let key: [u8; 32] = unhex("603deb1015ca71be2b73aef0857d7781 1f352c073b6108d72d9810a30914dff4")
        .try_into()
        .unwrap();
    let iv: [u8; 16] = unhex("000102030405060708090a0b0c0d0e0f")
        .try_into()
        .unwrap();
    let plaintext = unhex(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
         30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
    );
    let expected = unhex(
        "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
         39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
    );
    let keys = DirectionKeys {
        enc: key,
        mac: [0; 32],
        iv: [0; 12],
    };
    let mut record = BytesMut::new();
    RecordSealer::new(RecordSuite::Aes256CbcHmacSha256, &keys)
        .dangerous_seal_with_iv(
            Header::new(FrameType::DATA, Service::FETCH, RequestId(1), 0),
            &plaintext,
            iv,
            &mut record,
        )
        .unwrap();
    let body = &record[HEADER_LEN..];
    assert_eq!(&body[..IV_LEN], &iv);
    let ciphertext = &body[IV_LEN..body.len() - TAG_LEN];
    // CBC is prefix-consistent: PKCS#7 only appends one block of padding after the NIST blocks.
    assert_eq!(ciphertext.len(), expected.len() + 16);
    assert_eq!(&ciphertext[..expected.len()], &expected[..]);
}

#[test]
fn record_tag_is_hmac_over_sequence_header_iv_and_ciphertext() {
    let keys = DirectionKeys {
        enc: [7; 32],
        mac: [9; 32],
        iv: [0; 12],
    };
    let mut sealing = RecordSealer::new(RecordSuite::Aes256CbcHmacSha256, &keys).with_sequence(41);
    let mut record = BytesMut::new();
    sealing
        .dangerous_seal_with_iv(
            Header::new(FrameType::RESPONSE, Service::STAT, RequestId(3), 0),
            b"abc",
            [5; 16],
            &mut record,
        )
        .unwrap();
    let (authenticated, tag) = record.split_at(record.len() - TAG_LEN);
    let expected = hmac_sha256(&keys.mac, &[&41u64.to_be_bytes(), authenticated]);
    assert_eq!(tag, expected);
}

/// GCM test cases 15 (64 bytes) and 16 (60 bytes, a partial last block): key
/// `feffe992…` (AES-256), IV `cafebabefacedbaddecaf888`. Ferry's associated data is always the
/// 12-byte header, so the cases' own AAD cannot go through the record layer; their ciphertext
/// (the counter-mode keystream from the IV) does not depend on it and must match exactly. The tag
/// with a header as AAD is checked independently by `spec/check/verify_vectors.py` against
/// `records.txt`. The IV given to the key schedule is XORed with the sequence number, so the
/// record at sequence number 0x0102030405060708 uses the cases' IV when the direction's IV is
/// theirs XOR that number: the nonce construction of spec §5.3.2 is checked too.
#[test]
fn gcm_spec_cases_15_and_16_aes256_through_the_record_layer() {
    let key: [u8; 32] = unhex("feffe9928665731c6d6a8f9467308308 feffe9928665731c6d6a8f9467308308")
        .try_into()
        .unwrap();
    let nonce = unhex("cafebabefacedbaddecaf888");
    let plaintext = unhex(
        "d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
         1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b391aafd255",
    );
    let expected = unhex(
        "522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
         8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662898015ad",
    );
    for (seq, len) in [(0u64, 64), (0x0102_0304_0506_0708, 64), (7, 60)] {
        let mut iv: [u8; 12] = nonce.clone().try_into().unwrap();
        for (b, s) in iv[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        let keys = DirectionKeys {
            enc: key,
            mac: [0; 32],
            iv,
        };
        let header = Header::new(FrameType::DATA, Service::FETCH, RequestId(1), 0);
        let mut record = BytesMut::new();
        RecordSealer::new(RecordSuite::Aes256Gcm, &keys)
            .with_sequence(seq)
            .seal(header, &plaintext[..len], &mut record)
            .unwrap();
        let body = &record[HEADER_LEN..];
        assert_eq!(body.len(), len + gcm::TAG_LEN, "seq {seq:#x}");
        assert_eq!(&body[..len], &expected[..len], "seq {seq:#x}: ciphertext");
        // And it opens under the same sequence number, and no other.
        let header = Header::decode(&record[..HEADER_LEN]).unwrap();
        let opened = RecordOpener::new(RecordSuite::Aes256Gcm, &keys)
            .with_sequence(seq)
            .open(&header, BytesMut::from(body))
            .unwrap();
        assert_eq!(&opened[..], &plaintext[..len]);
        assert!(RecordOpener::new(RecordSuite::Aes256Gcm, &keys)
            .with_sequence(seq + 1)
            .open(&header, BytesMut::from(body))
            .is_err());
    }
}

/// RFC 4231 section 4, all seven cases (case 5 compares the 128-bit truncation).
#[test]
fn rfc4231_hmac_sha256() {
    let cases: [(Vec<u8>, Vec<u8>, &str); 7] = [
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        ),
        (
            (1..=25).collect(),
            vec![0xcd; 50],
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        ),
        (
            vec![0x0c; 20],
            b"Test With Truncation".to_vec(),
            "a3b6167473100ee06e0c796c2955552b",
        ),
        (
            vec![0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
        (
            vec![0xaa; 131],
            b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ),
    ];
    for (i, (key, data, expected)) in cases.iter().enumerate() {
        let expected = unhex(expected);
        // Feed the data in two parts to also exercise the multi-part interface.
        let (a, b) = data.split_at(data.len() / 2);
        let mac = hmac_sha256(key, &[a, b]);
        assert_eq!(
            &mac[..expected.len()],
            &expected[..],
            "RFC 4231 case {}",
            i + 1
        );
    }
}
