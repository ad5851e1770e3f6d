//! Bytes as the first bytes of a connection: protocol detection.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remora_proxy::fuzzing::detect(data));
