//! Entry points for `fuzz/` (not a stable API): parse and verify metadata from arbitrary bytes.

use crate::metadata::{self, Root, Snapshot, Targets, Timestamp};

/// Parses `data` as each role's metadata and, when it parses as root, verifies it against itself and
/// checks every other role's signatures under it. Must never panic or allocate without bound.
pub fn parse_and_verify(data: &[u8]) {
    let Ok(envelope) = metadata::parse_envelope("fuzz", data) else {
        return;
    };
    // The canonical form must be stable (encoding it again gives the same bytes) and the one-pass
    // encoder must agree with the sorting one.
    if let Ok(canonical) = envelope.canonical("fuzz") {
        if let Ok(again) = serde_json::from_slice::<serde_json::Value>(&canonical) {
            let mut twice = Vec::new();
            if crate::canonical::encode(&again, &mut twice).is_ok() {
                assert_eq!(twice, canonical, "canonical JSON is not idempotent");
            }
        }
        if let Ok(crate::canonical::CanonicalBytes(sorted)) = serde_json::from_str(envelope.signed) {
            assert_eq!(
                sorted, canonical,
                "one-pass and sorting canonical encoders differ"
            );
        }
    }
    let _ = Timestamp::parse(data);
    let _ = Snapshot::parse(data);
    // As the client does: only metadata whose `signed` has a canonical form (integers only) gets read.
    if let Ok(targets) = Targets::parse("targets", data.to_vec(), |e| e.canonical("fuzz").map(drop)) {
        // Every entry checked at load time must parse when asked for.
        for name in targets.names().take(64) {
            assert!(
                matches!(targets.get("targets", name), Ok(Some(_))),
                "a listed target does not parse: {name:?}"
            );
            if let Some(d) = &targets.delegations {
                let _ = d.roles_for_target(name);
            }
        }
    }
    if let Ok(root) = Root::parse(data) {
        for role in metadata::TOP_LEVEL {
            let _ = root.verify(role, &envelope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_and_verify;

    /// Hostile shapes the fuzz target must survive; findings of `cargo fuzz run tuf_metadata` go here.
    #[test]
    fn hostile_inputs_do_not_panic() {
        let deep = "[".repeat(100_000);
        let deep_obj = format!("{{\"signed\":{}", "{\"a\":".repeat(50_000));
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\xff\xfe".to_vec(),
            deep.into_bytes(),
            deep_obj.into_bytes(),
            br#"{"signed":{},"signatures":[]}"#.to_vec(),
            br#"{"signed":{"_type":"root","version":18446744073709551616},"signatures":[]}"#.to_vec(),
            br#"{"signed":{"_type":"root","spec_version":"1.0","version":1,"expires":"2030-01-01T00:00:00Z","keys":{},"roles":{"root":{"keyids":[],"threshold":1},"timestamp":{"keyids":[],"threshold":1},"snapshot":{"keyids":[],"threshold":1},"targets":{"keyids":[],"threshold":1}}},"signatures":[{"keyid":"x","sig":"zz"}]}"#.to_vec(),
            br#"{"signed":{"_type":"targets","spec_version":"1.0","version":1,"expires":"2030-01-01T00:00:00Z","targets":{"a":{"length":1,"hashes":{"sha256":"00"}}},"delegations":{"keys":{},"succinct_roles":{"keyids":[],"threshold":1,"bit_length":32,"name_prefix":"b"}}},"signatures":[]}"#.to_vec(),
            br#"{"signed":{"_type":"targets","spec_version":"1.0","version":1,"expires":"2030-01-01T00:00:00Z","targets":{"a":{"length":1,"hashes":{"sha256":"00"}}},"delegations":{"keys":{"k":{"keytype":"rsa","scheme":"rsassa-pss-sha256","keyval":{"public":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}}},"roles":[{"name":"r","keyids":["k"],"threshold":1,"terminating":false,"paths":["[[[[[[*?*?*?*?*?*?*?*?*?*?*?*?*?*?*"]}]}},"signatures":[]}"#.to_vec(),
        ];
        for input in inputs {
            parse_and_verify(&input);
        }
    }
}
