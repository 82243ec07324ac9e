//! Issue 5 (publisher side): `repo-tool add --deltas` through the real binary and the real
//! `ota-delta` encoder. The signed release lists the offer, the delta target holds the signed bytes,
//! applying it to v1 gives v2 exactly, and a delta not worth it is not kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::io::Cursor;
use std::path::Path;

use common::Fixture;
use ota_release::OtaTarget;
use ota_testbed::noise;
use sha2::{Digest, Sha256};

fn add(f: &Fixture, image: &Path, version: &str) -> String {
    let (repo, image) = (f.repo().display().to_string(), image.display().to_string());
    let keys: Vec<String> = ["targets1", "snapshot1", "timestamp1"]
        .iter()
        .map(|k| f.private(k).display().to_string())
        .collect();
    let mut args = vec!["add", "--repo", &repo, "--image", &image, "--version", version];
    args.extend([
        "--hardware",
        "gw-a",
        "--channel",
        "stable",
        "--deltas",
        "2",
        "--delta-max-share",
        "50",
    ]);
    for k in &keys {
        args.extend(["--key", k.as_str()]);
    }
    common::ok(f.dir.path(), &args)
}

/// The `signed.targets` map of the newest top-level targets metadata.
fn latest_targets(repo: &Path) -> serde_json::Value {
    let newest = fs::read_dir(repo.join("metadata"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".targets.json")?.parse::<u64>().ok()
        })
        .max()
        .unwrap();
    let bytes = fs::read(repo.join(format!("metadata/{newest}.targets.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["signed"]["targets"].clone()
}

fn release_of(targets: &serde_json::Value, name: &str) -> ota_release::Release {
    match OtaTarget::from_custom(&targets[name]["custom"]).unwrap() {
        Some(OtaTarget::Release(r)) => r,
        other => panic!("{name} is not a release: {other:?}"),
    }
}

#[test]
fn issue5_add_publishes_a_signed_delta_that_rebuilds_the_new_image() {
    let f = Fixture::new();
    let images = f.dir.path().join("images");
    fs::create_dir_all(&images).unwrap();
    let v1 = noise(1, 256 << 10);
    let mut v2 = v1.clone();
    for at in [10usize, 4096, 100_000, 200_000, 262_000] {
        v2[at] ^= 0x5a;
    }
    let (p1, p2) = (images.join("fw-1.0.0.bin"), images.join("fw-2.0.0.bin"));
    fs::write(&p1, &v1).unwrap();
    fs::write(&p2, &v2).unwrap();
    add(&f, &p1, "1.0.0");
    let out = add(&f, &p2, "2.0.0");
    assert!(out.contains("gw-a/stable/deltas/2.0.0/1.0.0.delta"), "{out}");

    let targets = latest_targets(&f.repo());
    let release = release_of(&targets, "gw-a/stable/fw-2.0.0.bin");
    assert_eq!(release.deltas.len(), 1, "{:?}", release.deltas);
    let offer = &release.deltas[0];
    assert_eq!(offer.base_version.to_string(), "1.0.0");
    assert_eq!(offer.base_sha256.0, <[u8; 32]>::from(Sha256::digest(&v1)));
    assert_eq!(offer.base_length, v1.len() as u64);
    assert_eq!(offer.target, "gw-a/stable/deltas/2.0.0/1.0.0.delta");

    // The delta target: signed length and sha256 match the file at the spec's path.
    let entry = &targets[offer.target.as_str()];
    let signed_len = entry["length"].as_u64().unwrap();
    let signed_sha = hex::decode(entry["hashes"]["sha256"].as_str().unwrap()).unwrap();
    let signed_sha: [u8; 32] = signed_sha.try_into().unwrap();
    assert_eq!(offer.length, signed_len);
    match OtaTarget::from_custom(&entry["custom"]).unwrap() {
        Some(OtaTarget::Delta(d)) => {
            assert_eq!(d.base_version.to_string(), "1.0.0");
            assert_eq!(d.base_sha256.0, offer.base_sha256.0);
            assert_eq!(d.release_target, "gw-a/stable/fw-2.0.0.bin");
        }
        other => panic!("not a delta target: {other:?}"),
    }
    let delta = fs::read(
        f.repo()
            .join(ota_publish::target_file_path(&offer.target, &signed_sha)),
    )
    .unwrap();
    assert_eq!(delta.len() as u64, signed_len);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&delta)), signed_sha);
    assert!(
        delta.len() < v2.len() / 10,
        "delta of {} bytes for 5 changed bytes",
        delta.len()
    );

    // The real decoder, reading v1 from the published file, rebuilds v2 byte for byte.
    let old = fs::File::open(&p1).unwrap();
    let mut rebuilt = Vec::new();
    ota_delta::apply(old, Cursor::new(&delta), &mut rebuilt).unwrap();
    assert!(rebuilt == v2, "applying the delta did not reproduce v2");

    // v3 shares nothing with v1 or v2: both deltas are about the image's size, over 50%, not kept.
    let p3 = images.join("fw-3.0.0.bin");
    fs::write(&p3, noise(99, 256 << 10)).unwrap();
    let out = add(&f, &p3, "3.0.0");
    assert_eq!(out.matches("not kept: delta from").count(), 2, "{out}");
    let targets = latest_targets(&f.repo());
    let release = release_of(&targets, "gw-a/stable/fw-3.0.0.bin");
    assert!(release.deltas.is_empty(), "{:?}", release.deltas);
    let delta_targets: Vec<&String> = targets
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("gw-a/stable/deltas/3.0.0/"))
        .collect();
    assert!(delta_targets.is_empty(), "{delta_targets:?}");
    assert!(!f.repo().join("targets/gw-a/stable/deltas/3.0.0").exists());
}
