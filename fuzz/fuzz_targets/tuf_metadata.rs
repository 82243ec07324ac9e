//! TUF metadata from arbitrary bytes: parse the envelope, canonicalize `signed` (checking the canonical
//! form is stable), parse it as every role, and verify signatures when it parses as a root. No panic, no
//! unbounded allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ota_tuf::fuzzing::parse_and_verify(data);
});
