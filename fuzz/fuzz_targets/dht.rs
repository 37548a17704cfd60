#![no_main]

// DHT datagrams (spec/P2P.md §7.2): decode → encode → compare, then the whole core: any
// datagram from anywhere is dropped or answered within the amplification bound, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_p2p::dht::fuzz_datagram(data);
});
