//! Bytes as the start of an HTTP/1 connection: hyper's parser, then the
//! proxy's request admission.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remora_proxy::fuzzing::http1_head(data));
