//! Entry points for `fuzz/` (not a stable API): parse envelopes and reports from arbitrary bytes.

use crate::{Envelope, PublicKey, Report};

/// Parses `data` as an envelope and as a report payload. Must never panic or allocate without bound;
/// whatever is accepted survives a round trip unchanged, and verifying an accepted envelope with some
/// key must refuse cleanly, not panic.
pub fn parse_envelope(data: &[u8]) {
    if let Ok(envelope) = Envelope::from_json(data) {
        let again = Envelope::from_json(&envelope.to_json());
        assert_eq!(again.ok().as_ref(), Some(&envelope), "envelope round trip");
        if let Ok(key) = PublicKey::ed25519(&[0x42; 32]) {
            let _ = envelope.verify(&key);
        }
    }
    if let Ok(report) = Report::from_payload(data) {
        let bytes = report.to_payload();
        let again = bytes.and_then(|b| Report::from_payload(&b));
        assert_eq!(again.ok().as_ref(), Some(&report), "report round trip");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_fuzz_entry_point_takes_garbage_and_a_real_envelope() {
        super::parse_envelope(b"");
        super::parse_envelope(b"{\"payloadType\":1}");
        super::parse_envelope(&[0xff; 64]);
        let envelope = br#"{"payloadType":"application/vnd.ota.report.v1+json","payload":"e30=","signatures":[{"keyid":"k","sig":"AAAA"}]}"#;
        super::parse_envelope(envelope);
    }
}
