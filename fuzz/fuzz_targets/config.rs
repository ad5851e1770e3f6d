//! Bytes as a mesh config file: parse within limits, validate, compile.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remora_proxy::fuzzing::config(data));
