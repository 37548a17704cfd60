#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_p2p::manifest::fuzz_manifest(data));
