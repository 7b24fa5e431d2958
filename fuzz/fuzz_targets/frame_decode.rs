#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signer_frame::fuzzing::decode_stream(data));
