//! Bad input (issue 2, "Must show"): each is refused with a clear error and leaves the repository
//! byte-for-byte as it was (every file and directory hashed before and after).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;

use common::{tree, Fixture};
use ota_publish::{AddOptions, DelegateSpec, Error, Expiries, RefreshOptions, RoleType, RootChange};

/// Runs `op`, expects an error whose text contains `needle`, and checks the repository is unchanged.
fn refused<T: std::fmt::Debug>(
    f: &Fixture,
    needle: &str,
    op: impl FnOnce() -> ota_publish::Result<T>,
) -> Error {
    let before = tree(&f.repo());
    let err = op().expect_err("the command must be refused");
    // The message with its causes, as the binary prints it (`{:#}`): a cause is not repeated in the
    // message of the error that wraps it.
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    assert!(chain.contains(needle), "error {err:?} should mention {needle:?}");
    assert_eq!(
        tree(&f.repo()),
        before,
        "repository changed by a refused command ({err})"
    );
    err
}

#[test]
fn a_missing_key_for_a_role_is_refused() {
    let f = Fixture::new();
    let img = f.image("fw.bin", 10, 1);
    let rel = [f.release(&img, "1.0.0", "gw-a")];
    let err = refused(&f, "role targets needs 1 signature(s) but only 0", || {
        ota_publish::add(
            &f.repo(),
            &rel,
            &AddOptions::default(),
            &f.ring(&["snapshot1", "timestamp1"]),
        )
    });
    assert!(matches!(err, Error::ThresholdNeedsStaging { .. }));
    assert!(err.to_string().contains("--stage FILE"), "{err}");
    refused(&f, "role timestamp needs 1", || {
        ota_publish::add(
            &f.repo(),
            &rel,
            &AddOptions::default(),
            &f.ring(&["targets1", "snapshot1"]),
        )
    });
    refused(&f, "role timestamp needs 1", || {
        ota_publish::refresh(&f.repo(), &RefreshOptions::default(), &f.ring(&["snapshot1"]))
    });
}

#[test]
fn a_wrong_key_for_a_role_is_refused() {
    let f = Fixture::new();
    f.keys(&["stranger"]);
    let img = f.image("fw.bin", 10, 1);
    refused(
        &f,
        "role targets needs 1 signature(s) but only 0 of its keys",
        || {
            ota_publish::add(
                &f.repo(),
                &[f.release(&img, "1.0.0", "gw-a")],
                &AddOptions::default(),
                &f.ring(&["stranger", "snapshot1", "timestamp1"]),
            )
        },
    );
    // A root key that belongs to neither the current nor the staged root cannot sign a staged root.
    let staged = f.dir.path().join("staged.json");
    ota_publish::root_stage(&f.repo(), &RootChange::default(), &staged).unwrap();
    refused(&f, "none of the given keys is a root key", || {
        ota_publish::root_sign(&staged, Some(&f.repo()), &f.ring(&["stranger"]))
    });
}

#[test]
fn a_threshold_that_is_not_met_is_refused() {
    let f = Fixture::new();
    f.keys(&["gw1", "gw2", "root2"]);
    let mut ring = f.online();
    ring.extend(f.ring(&["gw1", "gw2"]));
    let spec = DelegateSpec {
        role: "gw".into(),
        paths: vec!["gw/*/*/*".into()],
        keys: f.role(&["gw1", "gw2"], 2),
        terminating: false,
    };
    ota_publish::delegate(&f.repo(), &spec, &Expiries::default(), &ring).unwrap();
    let img = f.image("fw.bin", 10, 1);
    let opts = AddOptions {
        role: Some("gw".into()),
        ..Default::default()
    };
    let mut one_of_two = f.online();
    one_of_two.extend(f.ring(&["gw1"]));
    refused(&f, "role gw needs 2 signature(s) but only 1", || {
        ota_publish::add(&f.repo(), &[f.release(&img, "1.0.0", "gw")], &opts, &one_of_two)
    });

    // Root rotation to a new key, signed only by the new key: the current root's threshold is unmet.
    let staged = f.dir.path().join("staged.json");
    let change = RootChange {
        add_keys: vec![(RoleType::Root, f.public("root2"))],
        remove_keys: vec![(RoleType::Root, f.key_id("root1"))],
        ..Default::default()
    };
    ota_publish::root_stage(&f.repo(), &change, &staged).unwrap();
    ota_publish::root_sign(&staged, None, &f.ring(&["root2"])).unwrap();
    refused(&f, "the current root's threshold", || {
        ota_publish::root_publish(&f.repo(), &staged, &Expiries::default(), &f.online())
    });
    // Threshold larger than the number of keys.
    let bad = RootChange {
        thresholds: vec![(RoleType::Targets, 2)],
        ..Default::default()
    };
    refused(&f, "a threshold must be 1 to the number of keys", || {
        ota_publish::root_stage(&f.repo(), &bad, &f.dir.path().join("bad.json"))
    });
}

#[test]
fn a_duplicate_version_is_refused_even_under_another_name_or_role() {
    let f = Fixture::new();
    let img = f.image("fw.bin", 10, 1);
    ota_publish::add(
        &f.repo(),
        &[f.release(&img, "1.0.0", "gw-a")],
        &AddOptions::default(),
        &f.online(),
    )
    .unwrap();
    let other = f.image("other.bin", 20, 2);
    let err = refused(
        &f,
        "version 1.0.0 is already published for hardware gw-a on channel stable",
        || {
            ota_publish::add(
                &f.repo(),
                &[f.release(&other, "1.0.0", "gw-a")],
                &AddOptions::default(),
                &f.online(),
            )
        },
    );
    assert!(err.to_string().contains("gw-a/stable/1.0.0/fw.bin"), "{err}");
    // The same version twice within one bulk add.
    let a = f.image("a.bin", 5, 3);
    refused(&f, "version 2.0.0 is already published", || {
        ota_publish::add(
            &f.repo(),
            &[f.release(&a, "2.0.0", "gw-a"), f.release(&other, "2.0.0", "gw-a")],
            &AddOptions::default(),
            &f.online(),
        )
    });
    // The same version on another channel is a different release.
    let mut beta = f.release(&other, "1.0.0", "gw-a");
    beta.channel = "beta".into();
    ota_publish::add(&f.repo(), &[beta], &AddOptions::default(), &f.online()).unwrap();
}

#[test]
fn malformed_versions_names_and_fields_are_refused() {
    let f = Fixture::new();
    let img = f.image("fw.bin", 10, 1);
    let add = |spec| ota_publish::add(&f.repo(), &[spec], &AddOptions::default(), &f.online());
    refused(&f, "invalid version \"1.x\"", || {
        add(f.release(&img, "1.x", "gw-a"))
    });
    refused(&f, "invalid hardware id", || {
        add(f.release(&img, "1.0.0", "../etc"))
    });
    let mut r = f.release(&img, "1.0.0", "gw-a");
    r.rollout_percent = 101;
    refused(&f, "over 100", || add(r));
    let mut r = f.release(&img, "1.0.0", "gw-a");
    r.name = Some("a/../../etc/passwd".into());
    refused(&f, "invalid target name", || add(r));
    let mut r = f.release(&img, "1.0.0", "gw-a");
    r.channel = String::new();
    refused(&f, "invalid channel", || add(r));
}

#[test]
fn an_unreadable_image_is_refused_even_after_others_were_staged() {
    let f = Fixture::new();
    let good = f.image("good.bin", 100_000, 1);
    let missing = f.dir.path().join("images/missing.bin");
    let err = refused(&f, "read image", || {
        ota_publish::add(
            &f.repo(),
            &[
                f.release(&good, "1.0.0", "gw-a"),
                f.release(&missing, "1.0.1", "gw-a"),
            ],
            &AddOptions::default(),
            &f.online(),
        )
    });
    assert!(err.to_string().contains("missing.bin"), "{err}");
    let dir = f.dir.path().join("images");
    refused(&f, "not a regular file", || {
        ota_publish::add(
            &f.repo(),
            &[f.release(&dir, "1.0.0", "gw-a")],
            &AddOptions::default(),
            &f.online(),
        )
    });
}

#[test]
fn a_target_outside_the_delegated_paths_is_refused() {
    let f = Fixture::new();
    f.keys(&["gw"]);
    let mut ring = f.online();
    ring.extend(f.ring(&["gw"]));
    let spec = DelegateSpec {
        role: "gw".into(),
        paths: vec!["gw/*/*/*".into()],
        keys: f.role(&["gw"], 1),
        terminating: false,
    };
    ota_publish::delegate(&f.repo(), &spec, &Expiries::default(), &ring).unwrap();
    let img = f.image("fw.bin", 10, 1);
    let opts = AddOptions {
        role: Some("gw".into()),
        ..Default::default()
    };
    refused(&f, "is not delegated to role gw", || {
        ota_publish::add(&f.repo(), &[f.release(&img, "1.0.0", "other")], &opts, &ring)
    });
    let opts = AddOptions {
        role: Some("nope".into()),
        ..Default::default()
    };
    refused(&f, "no such delegated role", || {
        ota_publish::add(&f.repo(), &[f.release(&img, "1.0.0", "gw")], &opts, &ring)
    });
}

#[test]
fn a_nested_delegation_from_an_unknown_role_or_outside_the_parent_is_refused() {
    let f = Fixture::new();
    f.keys(&["product1", "beta1"]);
    let mut ring = f.online();
    ring.extend(f.ring(&["product1", "beta1"]));
    let spec = |role: &str, path: &str, key: &str| f.delegate_spec(role, path, key);
    ota_publish::delegate(
        &f.repo(),
        &spec("product", "product/*/*/*", "product1"),
        &Expiries::default(),
        &ring,
    )
    .unwrap();
    let nested = |from: &str, s: &DelegateSpec, ring: &ota_publish::KeyRing| {
        ota_publish::delegate_from(&f.repo(), from, s, &Expiries::default(), ring)
    };
    let beta = spec("product-beta", "product/beta/*/*", "beta1");
    refused(&f, "--from role \"nope\": no such role to delegate from", || {
        nested("nope", &beta, &ring)
    });
    for outside in [
        "other/beta/*/*",
        "product/beta/*",
        "*/beta/*/*",
        "product/beta/*/*/*",
    ] {
        refused(
            &f,
            "is not inside role product's delegated paths (product/*/*/*)",
            || nested("product", &spec("product-beta", outside, "beta1"), &ring),
        );
    }
    // The parent signs: without its key nothing changes.
    refused(&f, "role product needs 1 signature(s) but only 0", || {
        nested("product", &beta, &f.online())
    });
    refused(&f, "is already delegated (by targets)", || {
        nested("product", &spec("product", "product/x/*/*", "beta1"), &ring)
    });

    nested("product", &beta, &ring).unwrap();
    // Deeper still: the grandchild must lie inside both ancestors' paths.
    refused(&f, "is not inside role product-beta's delegated paths", || {
        nested("product-beta", &spec("rc", "product/stable/*/*", "beta1"), &ring)
    });
    // `add` into the nested role: outside its paths, or without its key, is refused.
    let img = f.image("fw.bin", 10, 1);
    let opts = AddOptions {
        role: Some("product-beta".into()),
        ..Default::default()
    };
    refused(&f, "is not delegated to role product-beta", || {
        ota_publish::add(&f.repo(), &[f.release(&img, "1.0.0", "product")], &opts, &ring)
    });
    let mut rel = f.release(&img, "1.0.0", "product");
    rel.channel = "beta".into();
    refused(&f, "role product-beta needs 1 signature(s) but only 0", || {
        ota_publish::add(
            &f.repo(),
            std::slice::from_ref(&rel),
            &opts,
            &f.ring(&["product1", "snapshot1", "timestamp1"]),
        )
    });
    ota_publish::add(&f.repo(), &[rel], &opts, &ring).unwrap();
    let report = ota_publish::verify(&f.repo(), jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn keys_and_repositories_are_never_overwritten() {
    let f = Fixture::new();
    let before = fs::read(f.private("root1")).unwrap();
    let err = ota_publish::generate_key(&f.key_dir(), "root1").unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read(f.private("root1")).unwrap(), before);
    let spec = ota_publish::InitSpec {
        root: f.role(&["root1"], 1),
        targets: f.role(&["targets1"], 1),
        snapshot: f.role(&["snapshot1"], 1),
        timestamp: f.role(&["timestamp1"], 1),
        expiries: Expiries::default(),
    };
    refused(&f, "already exists", || {
        ota_publish::init(
            &f.repo(),
            &spec,
            &f.ring(&["root1", "targets1", "snapshot1", "timestamp1"]),
        )
    });
}

#[test]
fn a_publish_that_fails_halfway_is_rolled_back() {
    let f = Fixture::new();
    // A stray file where the next targets version will go: target files are already renamed into
    // targets/ when writing the metadata fails, so this exercises the undo of every step.
    fs::write(f.repo().join("metadata/2.targets.json"), b"stray").unwrap();
    let img = f.image("fw.bin", 300_000, 1);
    refused(&f, "2.targets.json already exists", || {
        ota_publish::add(
            &f.repo(),
            &[f.release(&img, "1.0.0", "gw-a")],
            &AddOptions::default(),
            &f.online(),
        )
    });
    assert!(!f.repo().join("targets/gw-a").exists());
}
