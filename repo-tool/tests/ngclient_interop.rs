//! Interop (issue 2, "Must show"): python-tuf's ngclient refreshes and downloads every target of a
//! repository built by repo-tool, served by real nginx: top-level and delegated targets, targets in
//! subdirectories and at the top, in a nested delegated role (targets → product → product-beta), after
//! a root rotation that changes keys and thresholds, and after `refresh`; and it refuses an expired
//! timestamp and a tampered target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;

use common::{ngclient, sha256_file, Fixture};
use ota_publish::{AddOptions, DelegateSpec, Expiries, RefreshOptions, RoleType, RootChange};

#[test]
fn ngclient_fetches_every_target_across_delegation_rotation_and_refresh() {
    let f = Fixture::new();
    f.keys(&["gw-b1", "gw-b2", "root2a", "root2b", "timestamp2"]);
    let repo = f.repo();
    let online = f.online();

    // Top-level, in subdirectories (default name) and at the top (--name without a directory).
    let img_a = f.image("fw-a.bin", 70_000, 1);
    let img_top = f.image("plain.bin", 1234, 2);
    let mut top = f.release(&img_top, "1.0.0", "gw-t");
    top.name = Some("plain.bin".into());
    ota_publish::add(
        &repo,
        &[f.release(&img_a, "1.0.0", "gw-a"), top],
        &AddOptions::default(),
        &online,
    )
    .unwrap();
    // A bulk add large enough to take the one-syncfs publishing path.
    let bulk: Vec<_> = (0..20)
        .map(|i| {
            f.release(
                &f.image(&format!("bulk-{i}.bin"), 100 + i, i as u8),
                &format!("0.1.{i}"),
                "gw-c",
            )
        })
        .collect();
    ota_publish::add(&repo, &bulk, &AddOptions::default(), &online).unwrap();

    // A delegated product line with a threshold of 2.
    let spec = DelegateSpec {
        role: "gw-b".into(),
        paths: vec!["gw-b/*/*/*".into()],
        keys: f.role(&["gw-b1", "gw-b2"], 2),
        terminating: true,
    };
    let mut ring = f.online();
    ring.extend(f.ring(&["gw-b1", "gw-b2"]));
    ota_publish::delegate(&repo, &spec, &Expiries::default(), &ring).unwrap();
    let img_b = f.image("fw-b.bin", 5000, 3);
    let opts = AddOptions {
        role: Some("gw-b".into()),
        ..Default::default()
    };
    ota_publish::add(&repo, &[f.release(&img_b, "2.0.0", "gw-b")], &opts, &ring).unwrap();
    assert!(
        ota_publish::verify(&repo, jiff::Timestamp::now(), jiff::SignedDuration::ZERO)
            .unwrap()
            .is_ok()
    );

    let nginx = ota_testbed::Nginx::serve(&repo);
    let root1 = repo.join("metadata/1.root.json");
    let cache = f.dir.path().join("client-cache");
    let downloads = f.dir.path().join("downloads");
    let names = [
        "gw-a/stable/1.0.0/fw-a.bin",
        "plain.bin",
        "gw-b/stable/2.0.0/fw-b.bin",
        "gw-c/stable/0.1.19/bulk-19.bin",
    ];
    let run = ngclient(&nginx.url(), &root1, &cache, &downloads, &names);
    assert!(run.ok, "{}", run.stderr);
    for (name, img) in names.iter().zip([&img_a, &img_top, &img_b, &bulk[19].image]) {
        assert_eq!(run.target(name)["sha256"], sha256_file(img), "{name}");
    }
    assert_eq!(
        run.target("gw-b/stable/2.0.0/fw-b.bin")["custom"]["ota"]["version"],
        "2.0.0"
    );
    assert_eq!(
        run.target("gw-a/stable/1.0.0/fw-a.bin")["custom"]["ota"]["hardware"][0],
        "gw-a"
    );

    // Root rotation: root keys {root1}/1 become {root2a, root2b}/2, timestamp key replaced. Signed in
    // steps: root1's holder (with the repository), then root2a and root2b elsewhere (file only).
    let staged = f.dir.path().join("root-v2.json");
    let change = RootChange {
        add_keys: vec![
            (RoleType::Root, f.public("root2a")),
            (RoleType::Root, f.public("root2b")),
            (RoleType::Timestamp, f.public("timestamp2")),
        ],
        remove_keys: vec![
            (RoleType::Root, f.key_id("root1")),
            (RoleType::Timestamp, f.key_id("timestamp1")),
        ],
        thresholds: vec![(RoleType::Root, 2)],
        expiries: Expiries::default(),
    };
    assert_eq!(ota_publish::root_stage(&repo, &change, &staged).unwrap(), 2);
    let s = ota_publish::root_sign(&staged, Some(&repo), &f.ring(&["root1"])).unwrap();
    assert_eq!((s.current_root, s.new_root), (Some((1, 1)), (0, 2)));
    ota_publish::root_sign(&staged, None, &f.ring(&["root2a"])).unwrap();
    let new_online = f.ring(&["targets1", "snapshot1", "timestamp2"]);
    let err = ota_publish::root_publish(&repo, &staged, &Expiries::default(), &new_online).unwrap_err();
    assert!(err.to_string().contains("needs 2 signature(s)"), "{err}");
    let s = ota_publish::root_sign(&staged, None, &f.ring(&["root2b"])).unwrap();
    assert_eq!(s.new_root, (2, 2));
    assert_eq!(
        ota_publish::root_publish(&repo, &staged, &Expiries::default(), &new_online).unwrap(),
        2
    );
    assert!(repo.join("metadata/1.root.json").exists() && repo.join("metadata/2.root.json").exists());

    // The client that trusted root 1 updates; a new client pinned to root 1 walks the chain too.
    let run = ngclient(&nginx.url(), &root1, &cache, &downloads, &names);
    assert!(run.ok, "after rotation: {}", run.stderr);
    let trusted: serde_json::Value =
        serde_json::from_slice(&fs::read(cache.join("root.json")).unwrap()).unwrap();
    assert_eq!(trusted["signed"]["version"], 2);
    let fresh = ngclient(
        &nginx.url(),
        &root1,
        &f.dir.path().join("cache2"),
        &downloads,
        &names,
    );
    assert!(fresh.ok, "fresh client after rotation: {}", fresh.stderr);

    // After refresh (snapshot too), and a release added with the new keys.
    let opts = RefreshOptions {
        snapshot: true,
        ..Default::default()
    };
    ota_publish::refresh(&repo, &opts, &new_online).unwrap();
    let img_a2 = f.image("fw-a.bin", 80_000, 4);
    ota_publish::add(
        &repo,
        &[f.release(&img_a2, "1.1.0", "gw-a")],
        &AddOptions::default(),
        &new_online,
    )
    .unwrap();
    let mut all = names.to_vec();
    all.push("gw-a/stable/1.1.0/fw-a.bin");
    let run = ngclient(&nginx.url(), &root1, &cache, &downloads, &all);
    assert!(run.ok, "after refresh: {}", run.stderr);
    assert_eq!(
        run.target("gw-a/stable/1.1.0/fw-a.bin")["sha256"],
        sha256_file(&img_a2)
    );
    let report = ota_publish::verify(&repo, jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.root_versions, 2);
}

/// Nested delegation: targets → `product` (product/*/*/*) → `product-beta` (product/beta/*/*), each
/// with its own key; a release added into the nested role is found by ngclient's pre-order search
/// (TUF 5.6.7) through both delegations and downloaded, next to one in `product` itself.
#[test]
fn ngclient_finds_a_target_in_a_nested_delegated_role() {
    let f = Fixture::new();
    f.keys(&["product1", "beta1"]);
    let repo = f.repo();
    let mut ring = f.online();
    ring.extend(f.ring(&["product1", "beta1"]));
    let product = DelegateSpec {
        role: "product".into(),
        paths: vec!["product/*/*/*".into()],
        keys: f.role(&["product1"], 1),
        terminating: false,
    };
    ota_publish::delegate(&repo, &product, &Expiries::default(), &ring).unwrap();
    let beta = DelegateSpec {
        role: "product-beta".into(),
        paths: vec!["product/beta/*/*".into()],
        keys: f.role(&["beta1"], 1),
        terminating: true,
    };
    // Only the parent's key (plus the new role's, snapshot and timestamp) is needed, not targets'.
    let nested_ring = f.ring(&["product1", "beta1", "snapshot1", "timestamp1"]);
    ota_publish::delegate_from(&repo, "product", &beta, &Expiries::default(), &nested_ring).unwrap();
    // The parent got the delegation in a new version; snapshot lists the new role.
    assert!(repo.join("metadata/2.product.json").is_file());
    assert!(repo.join("metadata/1.product-beta.json").is_file());
    let snapshot: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("metadata/3.snapshot.json")).unwrap()).unwrap();
    assert_eq!(snapshot["signed"]["meta"]["product-beta.json"]["version"], 1);
    assert_eq!(snapshot["signed"]["meta"]["product.json"]["version"], 2);

    let img_beta = f.image("fw-beta.bin", 9000, 5);
    let mut rel_beta = f.release(&img_beta, "2.0.0-beta.1", "product");
    rel_beta.channel = "beta".into();
    let opts = AddOptions {
        role: Some("product-beta".into()),
        ..Default::default()
    };
    let report = ota_publish::add(&repo, &[rel_beta], &opts, &nested_ring).unwrap();
    assert_eq!((report.role.as_str(), report.role_version), ("product-beta", 2));
    let img_stable = f.image("fw-stable.bin", 7000, 6);
    let opts = AddOptions {
        role: Some("product".into()),
        ..Default::default()
    };
    ota_publish::add(&repo, &[f.release(&img_stable, "1.0.0", "product")], &opts, &ring).unwrap();

    let report = ota_publish::verify(&repo, jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.targets_checked, 2);
    let listing = ota_publish::list(&repo).unwrap();
    let beta_releases = &listing.releases[&("product".to_owned(), "beta".to_owned())];
    assert_eq!(beta_releases[0].role, "product-beta");
    assert!(listing
        .roles
        .iter()
        .any(|(r, v, _)| r == "product-beta" && *v == 2));

    let nginx = ota_testbed::Nginx::serve(&repo);
    let names = [
        "product/beta/2.0.0-beta.1/fw-beta.bin",
        "product/stable/1.0.0/fw-stable.bin",
    ];
    let run = ngclient(
        &nginx.url(),
        &repo.join("metadata/1.root.json"),
        &f.dir.path().join("cache"),
        &f.dir.path().join("downloads"),
        &names,
    );
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.target(names[0])["sha256"], sha256_file(&img_beta));
    assert_eq!(run.target(names[0])["custom"]["ota"]["channel"], "beta");
    assert_eq!(run.target(names[1])["sha256"], sha256_file(&img_stable));
}

#[test]
fn ngclient_refuses_an_expired_timestamp() {
    let f = Fixture::new();
    let img = f.image("fw.bin", 100, 1);
    ota_publish::add(
        &f.repo(),
        &[f.release(&img, "1.0.0", "gw-a")],
        &AddOptions::default(),
        &f.online(),
    )
    .unwrap();
    let opts = RefreshOptions {
        snapshot: false,
        expiries: Expiries {
            timestamp: jiff::SignedDuration::from_secs(1),
            ..Default::default()
        },
    };
    ota_publish::refresh(&f.repo(), &opts, &f.online()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let nginx = ota_testbed::Nginx::serve(&f.repo());
    let root = f.repo().join("metadata/1.root.json");
    let run = ngclient(
        &nginx.url(),
        &root,
        &f.dir.path().join("c"),
        &f.dir.path().join("d"),
        &["gw-a/stable/1.0.0/fw.bin"],
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("ExpiredMetadataError") && run.stderr.contains("timestamp"),
        "{}",
        run.stderr
    );
    let report = ota_publish::verify(&f.repo(), jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("timestamp expired")),
        "{:?}",
        report.problems
    );
}

#[test]
fn ngclient_refuses_a_tampered_target() {
    let f = Fixture::new();
    let img = f.image("fw.bin", 4096, 1);
    let report = ota_publish::add(
        &f.repo(),
        &[f.release(&img, "1.0.0", "gw-a")],
        &AddOptions::default(),
        &f.online(),
    )
    .unwrap();
    let (name, sha, _) = &report.added[0];
    let path = f.repo().join(format!("targets/gw-a/stable/1.0.0/{sha}.fw.bin"));
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let nginx = ota_testbed::Nginx::serve(&f.repo());
    let root = f.repo().join("metadata/1.root.json");
    let run = ngclient(
        &nginx.url(),
        &root,
        &f.dir.path().join("c"),
        &f.dir.path().join("d"),
        &[name],
    );
    assert!(!run.ok);
    assert!(run.stderr.contains("LengthOrHashMismatchError"), "{}", run.stderr);
    let report = ota_publish::verify(&f.repo(), jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("does not match its sha256")),
        "{:?}",
        report.problems
    );
}
