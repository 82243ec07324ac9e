//! The simulated bootloader's saved environment, read back after any power cut: no panic on any bytes,
//! and an accepted record round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ota_slot::fuzzing::sim_env_record(data));
