#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_protocol::noise::fuzz_identity_handshake(data));
