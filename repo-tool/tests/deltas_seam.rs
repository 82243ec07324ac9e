//! The delta seam: `add_with_deltas` with a trivial encoder (the real one is `ota_delta::encode`)
//! publishes a delta target per earlier release and lists the offers in the release's custom metadata.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::Fixture;
use ota_publish::deltas::{add_with_deltas, DeltaAddReport, DeltaPolicy, Encoder};
use ota_publish::{AddOptions, KeyRing};
use ota_release::OtaTarget;

/// Publishes `image` as `version` for gw-a through the delta seam, with `policy` and `encoder`.
fn add_via_seam(
    f: &Fixture,
    online: &KeyRing,
    image: &Path,
    version: &str,
    policy: &DeltaPolicy,
    encoder: &mut Encoder<'_>,
) -> DeltaAddReport {
    add_with_deltas(
        &f.repo(),
        &[f.release(image, version, "gw-a")],
        &AddOptions::default(),
        online,
        policy,
        encoder,
    )
    .unwrap()
}

#[test]
fn deltas_from_the_last_releases_are_offered_and_published() {
    let f = Fixture::new();
    let online = f.online();
    for (i, v) in ["1.0.0", "1.1.0", "1.2.0"].iter().enumerate() {
        let img = f.image(&format!("fw-{v}.bin"), 1000 + i, i as u8);
        ota_publish::add(
            &f.repo(),
            &[f.release(&img, v, "gw-a")],
            &AddOptions::default(),
            &online,
        )
        .unwrap();
    }
    let new = f.image("fw-2.0.0.bin", 2000, 9);
    // Trivial "encoder": the new image prefixed with the old length, enough to check the plumbing.
    let mut calls = Vec::new();
    let mut encoder = |old: &[u8], new: &[u8]| {
        calls.push(old.len());
        let mut d = (old.len() as u64).to_be_bytes().to_vec();
        d.extend_from_slice(new);
        Ok(d)
    };
    let report = add_via_seam(
        &f,
        &online,
        &new,
        "2.0.0",
        &DeltaPolicy {
            keep: 2,
            max_share_percent: 200,
            min_image_len: 0,
            ..DeltaPolicy::default()
        },
        &mut encoder,
    );
    assert!(report.skipped.is_empty());
    let report = report.add;
    assert_eq!(
        calls,
        vec![1002, 1001],
        "deltas from the two newest older releases, newest first"
    );
    let names: Vec<&str> = report.added.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "gw-a/stable/fw-2.0.0.bin",
            "gw-a/stable/deltas/2.0.0/1.2.0.delta",
            "gw-a/stable/deltas/2.0.0/1.1.0.delta"
        ]
    );
    let report = ota_publish::verify(&f.repo(), jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);

    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.repo().join("metadata/5.targets.json")).unwrap()).unwrap();
    let t = &targets["signed"]["targets"];
    let Some(OtaTarget::Release(r)) =
        OtaTarget::from_custom(&t["gw-a/stable/fw-2.0.0.bin"]["custom"]).unwrap()
    else {
        panic!("not a release")
    };
    assert_eq!(r.deltas.len(), 2);
    assert_eq!(r.deltas[0].base_version.to_string(), "1.2.0");
    assert_eq!(r.deltas[0].length, 2008);
    let Some(OtaTarget::Delta(d)) =
        OtaTarget::from_custom(&t["gw-a/stable/deltas/2.0.0/1.1.0.delta"]["custom"]).unwrap()
    else {
        panic!("not a delta")
    };
    assert_eq!(d.release_target, "gw-a/stable/fw-2.0.0.bin");
    assert_eq!(d.base_version.to_string(), "1.1.0");
}

#[test]
fn no_delta_is_built_for_an_image_under_the_minimum_size() {
    let f = Fixture::new();
    let online = f.online();
    let small = DeltaPolicy::DEFAULT_MIN_IMAGE_LEN as usize - 1;
    let v1 = f.image("fw-1.0.0.bin", small, 1);
    ota_publish::add(
        &f.repo(),
        &[f.release(&v1, "1.0.0", "gw-a")],
        &AddOptions::default(),
        &online,
    )
    .unwrap();
    let mut calls = 0;
    let mut encoder = |_: &[u8], new: &[u8]| {
        calls += 1;
        Ok(new.to_vec())
    };
    let policy = DeltaPolicy {
        max_share_percent: 200,
        ..DeltaPolicy::default()
    };
    let v2 = f.image("fw-2.0.0.bin", small, 2);
    let report = add_via_seam(&f, &online, &v2, "2.0.0", &policy, &mut encoder);
    assert_eq!(report.add.added.len(), 1, "{:?}", report.add.added);
    // At the minimum size deltas are built again.
    let v3 = f.image("fw-3.0.0.bin", small + 1, 3);
    let report = add_via_seam(&f, &online, &v3, "3.0.0", &policy, &mut encoder);
    assert_eq!(calls, 2, "deltas from 2.0.0 and 1.0.0 for the 64 KiB image only");
    assert_eq!(report.add.added.len(), 3, "{:?}", report.add.added);
}

#[test]
fn issue_23_a_failing_or_too_large_encoder_input_never_stops_the_release() {
    use ota_publish::deltas::SkipReason;
    let f = Fixture::new();
    let online = f.online();
    let v1 = f.image("fw-1.0.0.bin", 3000, 1);
    ota_publish::add(
        &f.repo(),
        &[f.release(&v1, "1.0.0", "gw-a")],
        &AddOptions::default(),
        &online,
    )
    .unwrap();
    let mut encoder = |_: &[u8], _: &[u8]| Err("out of ideas".to_owned());
    let policy = DeltaPolicy {
        min_image_len: 0,
        ..DeltaPolicy::default()
    };
    let v2 = f.image("fw-2.0.0.bin", 3000, 2);
    let report = add_via_seam(&f, &online, &v2, "2.0.0", &policy, &mut encoder);
    assert_eq!(report.add.added.len(), 1, "the release only");
    assert_eq!(
        report.skipped[0].reason,
        SkipReason::EncoderFailed("out of ideas".into())
    );
    // Over the input limit: the encoder is not called at all.
    let mut calls = 0;
    let mut encoder = |_: &[u8], new: &[u8]| {
        calls += 1;
        Ok(new.to_vec())
    };
    let v3 = f.image("fw-3.0.0.bin", 3000, 3);
    let report = add_via_seam(
        &f,
        &online,
        &v3,
        "3.0.0",
        &DeltaPolicy {
            max_input_len: 2999,
            ..policy
        },
        &mut encoder,
    );
    assert_eq!(calls, 0);
    assert_eq!(report.add.added.len(), 1);
    assert!(report.skipped.iter().all(|s| s.reason
        == SkipReason::TooLarge {
            what: "old image",
            len: 3000,
            max: 2999
        }));
    let v = ota_publish::verify(&f.repo(), jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
}
