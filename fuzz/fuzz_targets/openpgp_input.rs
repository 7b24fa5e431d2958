#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signer_openpgp::fuzzing::inspect_input(data));
