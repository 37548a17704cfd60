#![no_main]

// The server side of an enrolment (spec §13.11): an ENROL request body then a confirmation.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_protocol::enrol::fuzz_enrol(data));
