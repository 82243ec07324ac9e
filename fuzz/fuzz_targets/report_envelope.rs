//! The signed report a collector receives: no panic on any bytes, and whatever is accepted survives a
//! round trip unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ota_report::fuzzing::parse_envelope(data);
});
