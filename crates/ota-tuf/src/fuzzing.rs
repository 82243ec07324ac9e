//! Entry points for `fuzz/` (not a stable API): parse and verify metadata from arbitrary bytes.

use crate::metadata::{self, Root, Snapshot, Targets, Timestamp};

/// Parses `data` as each role's metadata and, when it parses as root, verifies it against itself and
/// checks every other role's signatures under it. Must never panic or allocate without bound.
pub fn parse_and_verify(data: &[u8]) {
    let Ok(envelope) = metadata::parse_envelope("fuzz", data) else {
        return;
    };
    // The canonical form must be stable: encoding it again gives the same bytes.
    if let Ok(again) = serde_json::from_slice::<serde_json::Value>(&envelope.canonical) {
        let mut twice = Vec::new();
        if crate::canonical::encode(&again, &mut twice).is_ok() {
            assert_eq!(twice, envelope.canonical, "canonical JSON is not idempotent");
        }
    }
    let _ = Timestamp::parse(&envelope);
    let _ = Snapshot::parse(&envelope);
    if let Ok(targets) = Targets::parse("targets", &envelope) {
        if let Some(d) = &targets.delegations {
            for name in targets.targets.keys().take(16) {
                let _ = d.roles_for_target(name);
            }
        }
    }
    if let Ok(root) = Root::parse(&envelope) {
        for role in metadata::TOP_LEVEL {
            let _ = root.verify(role, &envelope);
        }
    }
}
