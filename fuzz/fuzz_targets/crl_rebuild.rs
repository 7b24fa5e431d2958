#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signer_x509::fuzzing::crl_rebuild(data));
