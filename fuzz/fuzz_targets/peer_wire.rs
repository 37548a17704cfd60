#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_p2p::wire::fuzz_peer_message(data));
