//! The visited set that guards delegation cycles (TUF 5.6.7.1). repo-tool never creates a cycle, so
//! the test builds one by hand: the nested role `product-beta` (delegated by `product`, itself
//! delegated by `targets`) is edited to delegate back to `product`, re-signed with its own key, and
//! snapshot and timestamp are re-signed over it. `verify`, `list` and `add --role` must visit each
//! role once, finish, and `verify` must name the cycle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::sync::mpsc;
use std::time::Duration;

use aws_lc_rs::signature::Ed25519KeyPair;
use common::Fixture;
use ota_publish::{AddOptions, Expiries};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    v.serialize(&mut ser).unwrap();
    out
}

/// Signs `signed` with the fixture's key `key` and writes the metadata file `metadata/<file>`;
/// returns its bytes.
fn write_signed(f: &Fixture, file: &str, signed: Value, key: &str) -> Vec<u8> {
    let pair = Ed25519KeyPair::from_pkcs8(&fs::read(f.private(key)).unwrap()).unwrap();
    let keyid = f.key_id(key);
    let sig = pair.sign(&canonical(&signed));
    let bytes = canonical(&json!({
        "signatures": [{"keyid": keyid, "sig": hex::encode(sig.as_ref())}],
        "signed": signed,
    }));
    fs::write(f.repo().join("metadata").join(file), &bytes).unwrap();
    bytes
}

fn read_json(f: &Fixture, file: &str) -> Value {
    serde_json::from_slice(&fs::read(f.repo().join("metadata").join(file)).unwrap()).unwrap()
}

fn meta_entry(version: u64, bytes: &[u8]) -> Value {
    json!({"version": version, "length": bytes.len(), "hashes": {"sha256": hex::encode(Sha256::digest(bytes))}})
}

/// Runs `work` on another thread and fails the test if it takes more than 30 s (a walk that follows
/// a cycle never ends).
fn finishes<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} did not finish: a delegation cycle was followed"))
}

#[test]
fn a_delegation_cycle_is_visited_once_and_reported_by_verify() {
    let f = Fixture::new();
    f.keys(&["product1", "beta1"]);
    let repo = f.repo();
    let mut ring = f.online();
    ring.extend(f.ring(&["product1", "beta1"]));
    let spec = |role: &str, path: &str, key: &str| f.delegate_spec(role, path, key);
    ota_publish::delegate(
        &repo,
        &spec("product", "product/*/*", "product1"),
        &Expiries::default(),
        &ring,
    )
    .unwrap();
    ota_publish::delegate_from(
        &repo,
        "product",
        &spec("product-beta", "product/beta/*", "beta1"),
        &Expiries::default(),
        &ring,
    )
    .unwrap();

    // product-beta v2 delegates back to product (its own parent), signed with beta1.
    let mut beta = read_json(&f, "1.product-beta.json")["signed"].clone();
    beta["version"] = json!(2);
    let product_key = serde_json::to_value(f.public("product1")).unwrap();
    beta["delegations"] = json!({
        "keys": {f.key_id("product1"): product_key},
        "roles": [{
            "name": "product",
            "keyids": [f.key_id("product1")],
            "threshold": 1,
            "paths": ["product/beta/*"],
            "terminating": false,
        }],
    });
    let beta_bytes = write_signed(&f, "2.product-beta.json", beta, "beta1");
    // Snapshot and timestamp re-signed over it, timestamp last.
    let ts = read_json(&f, "timestamp.json")["signed"].clone();
    let snap_version = ts["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    let mut snap = read_json(&f, &format!("{snap_version}.snapshot.json"))["signed"].clone();
    snap["version"] = json!(snap_version + 1);
    snap["meta"]["product-beta.json"] = meta_entry(2, &beta_bytes);
    let snap_bytes = write_signed(
        &f,
        &format!("{}.snapshot.json", snap_version + 1),
        snap,
        "snapshot1",
    );
    let mut ts = ts;
    ts["version"] = json!(ts["version"].as_u64().unwrap() + 1);
    ts["meta"]["snapshot.json"] = meta_entry(snap_version + 1, &snap_bytes);
    write_signed(&f, "timestamp.json", ts, "timestamp1");

    // verify finishes, checks every role once, and names the cycle (a warning: clients skip the
    // repeated role, so the repository still works).
    let r = repo.clone();
    let report = finishes("verify", move || {
        ota_publish::verify(&r, jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap()
    });
    assert!(report.is_ok(), "{:?}", report.problems);
    let cycle: Vec<_> = report
        .warnings
        .iter()
        .filter(|w| w.contains("delegation cycle"))
        .collect();
    assert_eq!(cycle.len(), 1, "{:?}", report.warnings);
    assert!(
        cycle[0].contains("product -> product-beta -> product")
            && cycle[0].contains("the delegation from product-beta to product is never followed"),
        "{}",
        cycle[0]
    );

    // list shows each role once.
    let r = repo.clone();
    let listing = finishes("list", move || ota_publish::list(&r).unwrap());
    let mut roles: Vec<&str> = listing.roles.iter().map(|(r, _, _)| r.as_str()).collect();
    roles.sort_unstable();
    roles.dedup();
    assert_eq!(roles.len(), listing.roles.len(), "{:?}", listing.roles);
    assert!(roles.contains(&"product") && roles.contains(&"product-beta"));

    // add --role into the role that closes the cycle, and into the one it points back to.
    for (role, version, name) in [
        ("product-beta", "2.0.0-beta.1", "fw-2.0.0-beta.1.bin"),
        ("product", "1.0.0", "fw-1.0.0.bin"),
    ] {
        let img = f.image(name, 500, 7);
        let mut rel = f.release(&img, version, "product");
        rel.channel = if role == "product" { "stable" } else { "beta" }.into();
        let opts = AddOptions {
            role: Some(role.into()),
            ..Default::default()
        };
        let (r, ring) = (
            repo.clone(),
            f.ring(&["product1", "beta1", "snapshot1", "timestamp1"]),
        );
        let report = finishes("add --role", move || {
            ota_publish::add(&r, &[rel], &opts, &ring).unwrap()
        });
        assert_eq!(report.role, role);
    }
    let report = ota_publish::verify(&repo, jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.targets_checked, 2);
}
