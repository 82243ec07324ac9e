//! The signed report, end to end: a round trip with each key type, then every way an envelope can be
//! wrong, each refused with an error naming the cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{TimeZone as _, Utc};
use ota_report::{
    pae, Channel, DeviceId, Envelope, Error, HardwareId, InstallMethod, Outcome, PublicKey, Reason, Report,
    ReportSigner, TargetName, Version, MAX_ENVELOPE_BYTES, PAYLOAD_TYPE,
};

fn device_key(n: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[n; 32])
}

fn report_of(signer: &dyn ReportSigner) -> Report {
    Report {
        schema: ota_report::SCHEMA_VERSION,
        device_id: signer.public_key().device_id(),
        sequence: 7,
        hardware: HardwareId::new("gateway-rev-c").unwrap(),
        channel: Channel::new("stable").unwrap(),
        from_version: Version::new(1, 0, 0),
        to_version: Version::new(1, 1, 0),
        target: TargetName::new("gateway-rev-c/stable/1.1.0/fw.img").unwrap(),
        outcome: Outcome::RolledBack,
        reason: Reason::new("health check \"network\" failed").unwrap(),
        started: Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap(),
        finished: Utc.with_ymd_and_hms(2026, 12, 7, 9, 4, 30).unwrap(),
        bytes_downloaded: 1_234_567,
        install_method: Some(InstallMethod::Delta),
        reports_dropped: 0,
    }
}

/// An envelope around any payload bytes, signed by `key` as a device would (for payloads
/// [`Envelope::sign`] would refuse to make).
fn seal(payload: &[u8], key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let sig = ReportSigner::sign(key, &pae(PAYLOAD_TYPE, payload)).unwrap();
    serde_json::to_vec(&serde_json::json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": BASE64.encode(payload),
        "signatures": [{"keyid": key.public_key().key_id(), "sig": BASE64.encode(sig)}],
    }))
    .unwrap()
}

fn received(bytes: &[u8], key: &PublicKey) -> Result<Report, Error> {
    Envelope::from_json(bytes)?.verify(key)
}

/// The `Display` of an error and of its sources, as `anyhow`'s `{:#}` would print it.
fn chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[test]
fn round_trip_with_an_ed25519_key() {
    let key = device_key(1);
    let report = report_of(&key);
    let sent = Envelope::sign(&report, &key).unwrap().to_json();
    assert_eq!(received(&sent, &key.public_key()).unwrap(), report);
}

/// The queue's drop count travels in the report; a report with none keeps the bytes it had before the
/// field existed (absent, read back as 0).
#[test]
fn the_drop_count_round_trips_and_is_absent_when_zero() {
    let key = device_key(1);
    let mut report = report_of(&key);
    let payload = String::from_utf8(report.to_payload().unwrap()).unwrap();
    assert!(!payload.contains("reports_dropped"), "{payload}");
    report.reports_dropped = 7;
    let sent = Envelope::sign(&report, &key).unwrap().to_json();
    let got = received(&sent, &key.public_key()).unwrap();
    assert_eq!(got.reports_dropped, 7);
    assert_eq!(got, report);
}

#[test]
fn round_trip_with_a_p256_key() {
    let key = p256::ecdsa::SigningKey::from_slice(&[3; 32]).unwrap();
    let report = report_of(&key);
    let sent = Envelope::sign(&report, &key).unwrap().to_json();
    let public = PublicKey::ecdsa_p256(&key.verifying_key().to_sec1_bytes()).unwrap();
    assert_eq!(received(&sent, &public).unwrap(), report);
}

#[test]
fn the_device_id_is_device_agents_definition() {
    // device-agent: "dev-" and the first 16 hex digits of sha256(ed25519 public key bytes).
    use sha2::Digest as _;
    let key = device_key(1);
    let digest = hex::encode(sha2::Sha256::digest(key.verifying_key().as_bytes()));
    assert_eq!(
        key.public_key().device_id().as_str(),
        format!("dev-{}", &digest[..16])
    );
}

#[test]
fn the_signature_covers_the_exact_bytes_sent() {
    let key = device_key(1);
    let envelope = Envelope::sign(&report_of(&key), &key).unwrap();
    let message = pae(PAYLOAD_TYPE, envelope.payload());
    let sig = ed25519_dalek::Signature::from_slice(&envelope.signatures()[0].sig).unwrap();
    key.verifying_key().verify_strict(&message, &sig).unwrap();
    assert!(message.starts_with(format!("DSSEv1 {} {PAYLOAD_TYPE} ", PAYLOAD_TYPE.len()).as_bytes()));
}

#[test]
fn a_forged_signature_is_refused() {
    let key = device_key(1);
    let mut sent: serde_json::Value =
        serde_json::from_slice(&Envelope::sign(&report_of(&key), &key).unwrap().to_json()).unwrap();
    sent["signatures"][0]["sig"] = BASE64.encode([0x5a; 64]).into();
    let err = received(&serde_json::to_vec(&sent).unwrap(), &key.public_key()).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains("no valid signature"), "{err}");
}

#[test]
fn a_tampered_payload_is_refused() {
    let key = device_key(1);
    let envelope = Envelope::sign(&report_of(&key), &key).unwrap();
    let tampered = String::from_utf8(envelope.payload().to_vec())
        .unwrap()
        .replace("rolled_back", "committed");
    let mut sent: serde_json::Value = serde_json::from_slice(&envelope.to_json()).unwrap();
    sent["payload"] = BASE64.encode(tampered).into();
    let err = received(&serde_json::to_vec(&sent).unwrap(), &key.public_key()).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn a_report_signed_by_another_key_is_refused() {
    let (key, other) = (device_key(1), device_key(2));
    let sent = Envelope::sign(&report_of(&other), &other).unwrap().to_json();
    let err = received(&sent, &key.public_key()).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn a_report_claiming_another_device_is_refused() {
    let (key, other) = (device_key(1), device_key(2));
    // Validly signed by `other`, but naming `key`'s device.
    let claimed = report_of(&key);
    let sent = seal(&serde_json::to_vec(&claimed).unwrap(), &other);
    let err = received(&sent, &other.public_key()).unwrap_err();
    assert!(matches!(err, Error::WrongDevice { .. }), "{err}");
    assert!(err.to_string().contains(claimed.device_id.as_str()), "{err}");
}

#[test]
fn a_truncated_envelope_is_refused() {
    let key = device_key(1);
    let sent = Envelope::sign(&report_of(&key), &key).unwrap().to_json();
    let err = received(&sent[..sent.len() / 2], &key.public_key()).unwrap_err();
    assert!(matches!(err, Error::Malformed { what: "envelope", .. }), "{err}");
    assert!(chain(&err).contains("EOF"), "{}", chain(&err));
}

#[test]
fn a_truncated_payload_is_refused_after_its_signature() {
    let key = device_key(1);
    let payload = serde_json::to_vec(&report_of(&key)).unwrap();
    let sent = seal(&payload[..payload.len() - 1], &key);
    let err = received(&sent, &key.public_key()).unwrap_err();
    assert!(matches!(err, Error::Malformed { what: "report", .. }), "{err}");
}

#[test]
fn an_oversized_envelope_is_refused_before_parsing() {
    let key = device_key(1);
    let sent = vec![b' '; MAX_ENVELOPE_BYTES + 1];
    let err = received(&sent, &key.public_key()).unwrap_err();
    assert!(matches!(err, Error::TooLarge { what: "envelope", .. }), "{err}");
}

#[test]
fn an_oversized_reason_is_refused() {
    let key = device_key(1);
    let mut payload = serde_json::to_value(report_of(&key)).unwrap();
    payload["reason"] = "x".repeat(ota_report::MAX_REASON_BYTES + 1).into();
    let sent = seal(&serde_json::to_vec(&payload).unwrap(), &key);
    let err = received(&sent, &key.public_key()).unwrap_err();
    assert!(chain(&err).contains("reason is 513 bytes"), "{}", chain(&err));
    assert!(Reason::lossy(&"é".repeat(400)).as_str().len() <= ota_report::MAX_REASON_BYTES);
}

#[test]
fn malformed_envelopes_are_refused() {
    let key = device_key(1);
    let public = key.public_key();
    let err = received(b"not json", &public).unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");

    let mut sent: serde_json::Value =
        serde_json::from_slice(&Envelope::sign(&report_of(&key), &key).unwrap().to_json()).unwrap();
    let mut bad_base64 = sent.clone();
    bad_base64["payload"] = "***".into();
    let err = received(&serde_json::to_vec(&bad_base64).unwrap(), &public).unwrap_err();
    assert!(matches!(err, Error::Base64 { field: "payload", .. }), "{err}");

    let mut other_type = sent.clone();
    other_type["payloadType"] = "application/vnd.in-toto+json".into();
    let err = received(&serde_json::to_vec(&other_type).unwrap(), &public).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid {
                field: "payloadType",
                ..
            }
        ),
        "{err}"
    );

    sent["signatures"] = serde_json::json!([]);
    let err = received(&serde_json::to_vec(&sent).unwrap(), &public).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid {
                field: "signatures",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unknown_fields_are_refused_in_the_envelope_and_in_the_report() {
    let key = device_key(1);
    let public = key.public_key();
    let mut sent: serde_json::Value =
        serde_json::from_slice(&Envelope::sign(&report_of(&key), &key).unwrap().to_json()).unwrap();
    sent["comment"] = "hi".into();
    let err = received(&serde_json::to_vec(&sent).unwrap(), &public).unwrap_err();
    assert!(chain(&err).contains("unknown field `comment`"), "{}", chain(&err));

    let mut payload = serde_json::to_value(report_of(&key)).unwrap();
    payload["priority"] = "high".into();
    let err = received(&seal(&serde_json::to_vec(&payload).unwrap(), &key), &public).unwrap_err();
    assert!(matches!(err, Error::Malformed { what: "report", .. }), "{err}");
    assert!(
        chain(&err).contains("unknown field `priority`"),
        "{}",
        chain(&err)
    );
}

#[test]
fn reports_breaking_a_rule_are_refused() {
    let key = device_key(1);
    let public = key.public_key();
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("schema", 2.into(), "schema"),
        ("device_id", "dev-XYZ".into(), "device_id"),
        ("hardware", "../etc".into(), "hardware id"),
        ("finished", "2026-12-07T08:00:00Z".into(), "before started"),
        ("outcome", "exploded".into(), "unknown variant"),
    ];
    for (field, value, expected) in cases {
        let mut payload = serde_json::to_value(report_of(&key)).unwrap();
        payload[field] = value;
        let err = received(&seal(&serde_json::to_vec(&payload).unwrap(), &key), &public).unwrap_err();
        assert!(chain(&err).contains(expected), "{field}: {}", chain(&err));
    }
    // Nor does the device make one.
    let mut backwards = report_of(&key);
    backwards.finished = backwards.started - chrono::TimeDelta::seconds(1);
    assert!(matches!(
        Envelope::sign(&backwards, &key),
        Err(Error::Invalid {
            field: "finished",
            ..
        })
    ));
    assert!(DeviceId::try_from("dev-0123456789abcdef".to_string()).is_ok());
}

/// A collector stores a key as (algorithm, bytes) and an outcome by its wire name; both read back.
#[test]
fn key_and_outcome_names_round_trip() {
    let ed = device_key(3).public_key();
    assert_eq!(ed.algorithm(), "ed25519");
    assert_eq!(PublicKey::from_parts(ed.algorithm(), &ed.to_bytes()).unwrap(), ed);
    let p = p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
    let p = ReportSigner::public_key(&p);
    assert_eq!(p.algorithm(), "ecdsa-p256");
    assert_eq!(PublicKey::from_parts(p.algorithm(), &p.to_bytes()).unwrap(), p);
    assert_eq!(p.device_id(), DeviceId::of_public_key(&p.to_bytes()));
    assert!(PublicKey::from_parts("rsa", &[1, 2]).is_err());
    for o in Outcome::ALL {
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(json, format!("\"{}\"", o.as_str()));
        assert_eq!(Outcome::from_name(o.as_str()), Some(o));
    }
    assert_eq!(InstallMethod::Delta.as_str(), "delta");
}
