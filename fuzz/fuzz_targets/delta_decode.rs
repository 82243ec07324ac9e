//! The delta decoder on arbitrary bytes (an old image and a delta cut from the input): no panic, no
//! unbounded allocation, no read outside the old image; and for short inputs, encode → apply round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ota_delta::fuzzing::fuzz_decode(data);
});
