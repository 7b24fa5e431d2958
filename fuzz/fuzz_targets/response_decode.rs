#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signer_protocol::fuzzing::response(data));
