//! The release fields a device reads from signed targets metadata: no panic on any JSON, and whatever is
//! accepted survives a round-trip unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let custom = serde_json::json!({ "ota": value });
    if let Ok(Some(target)) = ota_release::OtaTarget::from_custom(&custom) {
        let again = ota_release::OtaTarget::from_custom(&target.to_custom());
        assert_eq!(again.ok().flatten(), Some(target));
    }
});
