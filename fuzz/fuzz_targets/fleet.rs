#![no_main]

// Fleet release records and gossip datagrams (spec/P2P.md §8.2, §8.3): decode → encode →
// compare, then the gossip core: any datagram is dropped or answered within the amplification
// bound, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_p2p::fleet::gossip::fuzz_fleet(data);
});
