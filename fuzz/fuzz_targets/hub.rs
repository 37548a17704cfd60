#![no_main]

// The hub's request, response and event bodies (spec/HUB.md §3): decode → encode → decode,
// never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_hub::fuzz::fuzz_wire(data);
});
