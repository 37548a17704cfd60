#![no_main]

// Both sides: the input's first byte picks mode and suites, so version 1 and 2 hellos and every
// suite negotiation are fuzzed; then the same bytes as the server's frames to a client.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_protocol::fuzzing::server_handshake(data);
    ferry_protocol::fuzzing::client_handshake(data);
});
