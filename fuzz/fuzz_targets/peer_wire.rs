#![no_main]

// Message decoding round trips, and the session's classification of whole frames (which are
// answered, ignored, passed on, or close the connection with which code: spec/P2P.md §3.2).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_p2p::wire::fuzz_peer_message(data);
    ferry_p2p::wire::fuzz_inbound(data);
    ferry_p2p::wire::fuzz_greeting(data);
});
