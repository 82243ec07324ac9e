//! Targets roles signed in steps by holders on different machines (issue 2: "a root or role can be
//! signed in steps ... and is published only once its threshold is met"): `add --stage` /
//! `delegate --stage`, `role sign`, `role publish`, through the real binary, each holder's key in
//! its own key directory; and python-tuf's ngclient downloading what was published that way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{fails, ngclient, ok, repo_tool, sha256_file};

/// A repository whose top-level targets role needs 2 signatures, of `alice/targets-a` and
/// `bob/targets-b`; the online keys (snapshot, timestamp) and root live in `online/`.
fn setup() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(
        d,
        &[
            "keys",
            "generate",
            "--dir",
            "online",
            "root",
            "snapshot",
            "timestamp",
        ],
    );
    ok(d, &["keys", "generate", "--dir", "alice", "targets-a", "gw-b-a"]);
    ok(d, &["keys", "generate", "--dir", "bob", "targets-b", "gw-b-b"]);
    let mut init = vec![
        "init",
        "--repo",
        "repo",
        "--no-qr",
        "--root-key",
        "online/root.pub.json",
        "--targets-key",
        "alice/targets-a.pub.json",
        "--targets-key",
        "bob/targets-b.pub.json",
        "--targets-threshold",
        "2",
        "--snapshot-key",
        "online/snapshot.pub.json",
        "--timestamp-key",
        "online/timestamp.pub.json",
    ];
    init.extend([
        "--keys-dir",
        "online",
        "--key",
        "alice/targets-a.pk8",
        "--key",
        "bob/targets-b.pk8",
    ]);
    ok(d, &init);
    fs::create_dir(d.join("img")).unwrap();
    t
}

/// `add` of one gw-a stable image, staged to `stage` when given, signing with key files `keys`.
fn add_args<'a>(image: &'a str, version: &'a str, stage: Option<&'a str>, keys: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "add",
        "--repo",
        "repo",
        "--image",
        image,
        "--version",
        version,
        "--hardware",
        "gw-a",
        "--channel",
        "stable",
    ];
    if let Some(s) = stage {
        v.extend(["--stage", s]);
    }
    for k in keys {
        v.extend(["--key", k]);
    }
    v
}

/// The stage file `d/stage.json` as JSON, to tamper with.
fn read_stage_json(d: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(d.join("stage.json")).unwrap()).unwrap()
}

/// Writes `v` back as `d/stage.json`.
fn write_stage_json(d: &Path, v: &serde_json::Value) {
    fs::write(d.join("stage.json"), serde_json::to_vec(v).unwrap()).unwrap();
}

const ALICE: &str = "alice/targets-a.pk8";
const BOB: &str = "bob/targets-b.pk8";
const SNAPSHOT: &str = "online/snapshot.pk8";
const TIMESTAMP: &str = "online/timestamp.pk8";
const PUBLISH: &[&str] = &[
    "role",
    "publish",
    "--repo",
    "repo",
    "--file",
    "stage.json",
    "--keys-dir",
    "online",
];

#[test]
fn a_threshold_2_targets_role_is_staged_signed_on_two_machines_and_published() {
    let t = setup();
    let d = t.path();
    fs::write(d.join("img/fw.bin"), b"firmware 1.0.0").unwrap();

    // Without --stage, alice alone cannot publish, and the error says what to do.
    let err = fails(
        d,
        &add_args("img/fw.bin", "1.0.0", None, &[ALICE, SNAPSHOT, TIMESTAMP]),
    );
    assert!(
        err.contains("role targets needs 2 signature(s) but only 1") && err.contains("--stage FILE"),
        "{err}"
    );

    // Alice stages with her key: target file written, nothing a client sees changes.
    let ts_before = fs::read(d.join("repo/metadata/timestamp.json")).unwrap();
    let out = ok(d, &add_args("img/fw.bin", "1.0.0", Some("stage.json"), &[ALICE]));
    assert!(
        out.contains("staged role targets version 2 in stage.json: 1 of 2 signature(s) present"),
        "{out}"
    );
    assert_eq!(
        fs::read(d.join("repo/metadata/timestamp.json")).unwrap(),
        ts_before
    );
    assert!(!d.join("repo/metadata/2.targets.json").exists());
    let mode = fs::metadata(d.join("stage.json")).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o644,
        0o644,
        "staged file readable by the other holders: {mode:o}"
    );
    let sha = sha256_file(&d.join("img/fw.bin"));
    assert!(d
        .join(format!("repo/targets/gw-a/stable/1.0.0/{sha}.fw.bin"))
        .is_file());
    // A second stage never overwrites a file holding someone's signatures.
    let err = fails(d, &add_args("img/fw.bin", "1.0.0", Some("stage.json"), &[ALICE]));
    assert!(err.contains("stage.json already exists"), "{err}");

    // Publishing now is refused and names how many of how many.
    let err = fails(d, PUBLISH);
    assert!(
        err.contains("staged role targets version 2 has 1 of the 2 valid signature(s)"),
        "{err}"
    );

    // Bob signs on his machine, without the repository, then publish works.
    let out = ok(d, &["role", "sign", "--file", "stage.json", "--keys-dir", "bob"]);
    assert!(
        out.contains("role targets version 2: 2 of 2 signature(s) present"),
        "{out}"
    );
    let out = ok(d, PUBLISH);
    assert!(
        out.contains("published role targets version 2 (2 of 2 signatures)"),
        "{out}"
    );
    let out = ok(d, &["verify", "--repo", "repo"]);
    assert!(out.contains("1 target file(s) checked"), "{out}");
    let out = ok(d, &["list", "--repo", "repo"]);
    assert!(out.contains("gw-a/stable/1.0.0/fw.bin"), "{out}");

    // The same file cannot be published twice: its version is no longer the next one.
    let err = fails(d, PUBLISH);
    assert!(err.contains("someone published targets in between"), "{err}");
}

#[test]
fn a_stale_stage_is_refused_and_leaves_the_repository_unchanged() {
    let t = setup();
    let d = t.path();
    fs::write(d.join("img/fw-1.bin"), b"firmware 1").unwrap();
    fs::write(d.join("img/fw-2.bin"), b"firmware 2").unwrap();
    ok(
        d,
        &add_args("img/fw-1.bin", "1.0.0", Some("stage.json"), &[ALICE]),
    );
    let out = ok(
        d,
        &[
            "role",
            "sign",
            "--file",
            "stage.json",
            "--key",
            BOB,
            "--repo",
            "repo",
        ],
    );
    assert!(out.contains("2 of 2"), "{out}");
    // Meanwhile another release goes out with both keys.
    ok(
        d,
        &add_args("img/fw-2.bin", "2.0.0", None, &[ALICE, BOB, SNAPSHOT, TIMESTAMP]),
    );
    let err = fails(d, PUBLISH);
    assert!(
        err.contains("staged role targets has version 2, but the repository's is 2")
            && err.contains("someone published targets in between; stage the change again"),
        "{err}"
    );
    // The overtaken stage's target file is junk now (issue 23): verify reports it, gc removes it.
    let out = repo_tool(d, &["verify", "--repo", "repo"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("problem: unreferenced file targets/gw-a/stable/1.0.0/"),
        "{text}"
    );
    let out = ok(d, &["gc", "--repo", "repo"]);
    assert!(out.contains("removed 1 file(s), 10 bytes freed"), "{out}");
    let out = ok(d, &["verify", "--repo", "repo"]);
    assert!(out.contains("1 target file(s) checked"), "{out}");
}

#[test]
fn a_signature_from_a_wrong_key_is_refused() {
    let t = setup();
    let d = t.path();
    fs::write(d.join("img/fw.bin"), b"firmware").unwrap();
    ok(d, &add_args("img/fw.bin", "1.0.0", Some("stage.json"), &[ALICE]));
    let staged = fs::read(d.join("stage.json")).unwrap();

    // A key of no staged role is refused by `role sign`, naming the role's keys; the file is kept.
    let out = repo_tool(d, &["role", "sign", "--file", "stage.json", "--key", SNAPSHOT]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("none of the given keys is a key of a staged role"),
        "{err}"
    );
    assert_eq!(fs::read(d.join("stage.json")).unwrap(), staged);

    // A forged signature under bob's key id (alice's signature bytes) does not count at publish.
    let mut v: serde_json::Value = serde_json::from_slice(&staged).unwrap();
    let bob_key = ota_publish::read_public_key(&d.join("bob/targets-b.pub.json")).unwrap();
    let bob_id = ota_publish::key_id(&bob_key).unwrap();
    let sigs = v["staged_roles"][0]["metadata"]["signatures"]
        .as_array_mut()
        .unwrap();
    let mut forged = sigs[0].clone();
    forged["keyid"] = bob_id.into();
    sigs.push(forged);
    write_stage_json(d, &v);
    let err = fails(d, PUBLISH);
    assert!(err.contains("has 1 of the 2 valid signature(s)"), "{err}");
}

/// ngclient (python-tuf over nginx) downloads targets published through stages: one in top-level
/// targets (threshold 2), and one in a delegated role of threshold 2 that was itself created by a
/// staged `delegate` (the delegator's next version and the new role's first, each signed in steps).
#[test]
fn ngclient_downloads_targets_published_through_staged_roles() {
    let t = setup();
    let d = t.path();
    let ring = |keys: &[&str]| {
        ota_publish::KeyRing::from_files(&keys.iter().map(|k| d.join(k)).collect::<Vec<_>>()).unwrap()
    };
    let online = ring(&[SNAPSHOT, TIMESTAMP]);
    let repo = d.join("repo");
    let expiries = ota_publish::Expiries::default();

    // Top-level targets, threshold 2: alice stages, bob signs, publish.
    fs::write(d.join("img/fw-a.bin"), b"gateway a firmware").unwrap();
    let stage_a = d.join("stage-a.json");
    let release = ota_publish::ReleaseSpec {
        image: d.join("img/fw-a.bin"),
        version: "1.0.0".into(),
        hardware: vec!["gw-a".into()],
        channel: "stable".into(),
        rollout_percent: 100,
        name: None,
    };
    let opts = ota_publish::AddOptions {
        stage: Some(stage_a.clone()),
        ..Default::default()
    };
    let report = ota_publish::add(&repo, std::slice::from_ref(&release), &opts, &ring(&[ALICE])).unwrap();
    let staged = report.staged.unwrap();
    assert_eq!((staged.present, staged.threshold), (1, 2));
    ota_publish::role_sign(&stage_a, None, &ring(&[BOB])).unwrap();
    ota_publish::role_publish(&repo, &stage_a, &expiries, &online).unwrap();

    // A delegated role gw-b of threshold 2 (keys gw-b-a with alice, gw-b-b with bob), delegated by
    // targets (threshold 2) in a staged `delegate`.
    let spec = ota_publish::DelegateSpec {
        role: "gw-b".into(),
        paths: vec!["gw-b/*/*/*".into(), "gw-b/*/*".into()],
        keys: ota_publish::RoleSpec {
            keys: vec![
                ota_publish::read_public_key(&d.join("alice/gw-b-a.pub.json")).unwrap(),
                ota_publish::read_public_key(&d.join("bob/gw-b-b.pub.json")).unwrap(),
            ],
            threshold: 2,
        },
        terminating: true,
    };
    let stage_d = d.join("stage-d.json");
    let status = ota_publish::delegate_stage(
        &repo,
        "targets",
        &spec,
        &expiries,
        &ring(&[ALICE, "alice/gw-b-a.pk8"]),
        &stage_d,
    )
    .unwrap();
    let counts: Vec<_> = status
        .iter()
        .map(|s| (s.role.as_str(), s.version, s.present))
        .collect();
    assert_eq!(counts, [("targets", 3, 1), ("gw-b", 1, 1)]);
    let err = ota_publish::role_publish(&repo, &stage_d, &expiries, &online).unwrap_err();
    assert!(
        err.to_string().contains("targets version 3 has 1 of the 2"),
        "{err}"
    );
    let status = ota_publish::role_sign(&stage_d, Some(&repo), &ring(&[BOB, "bob/gw-b-b.pk8"])).unwrap();
    assert!(
        status.iter().all(|s| s.present == 2 && s.threshold == 2),
        "{status:?}"
    );
    ota_publish::role_publish(&repo, &stage_d, &expiries, &online).unwrap();

    // A release into gw-b, staged by bob this time, signed by alice.
    fs::write(d.join("img/fw-b.bin"), b"gateway b firmware").unwrap();
    let stage_b = d.join("stage-b.json");
    let release_b = ota_publish::ReleaseSpec {
        image: d.join("img/fw-b.bin"),
        hardware: vec!["gw-b".into()],
        ..release
    };
    let opts = ota_publish::AddOptions {
        role: Some("gw-b".into()),
        stage: Some(stage_b.clone()),
        ..Default::default()
    };
    let err = ota_publish::add(
        &repo,
        std::slice::from_ref(&release_b),
        &ota_publish::AddOptions {
            stage: None,
            ..opts.clone()
        },
        &ring(&["bob/gw-b-b.pk8", SNAPSHOT, TIMESTAMP]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("role gw-b needs 2 signature(s) but only 1"),
        "{err}"
    );
    ota_publish::add(&repo, &[release_b], &opts, &ring(&["bob/gw-b-b.pk8"])).unwrap();
    ota_publish::role_sign(&stage_b, None, &ring(&["alice/gw-b-a.pk8"])).unwrap();
    let published = ota_publish::role_publish(&repo, &stage_b, &expiries, &online).unwrap();
    assert_eq!((published[0].role.as_str(), published[0].version), ("gw-b", 2));
    let report = ota_publish::verify(&repo, jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);

    let nginx = ota_testbed::Nginx::serve(&repo);
    let names = ["gw-a/stable/1.0.0/fw-a.bin", "gw-b/stable/1.0.0/fw-b.bin"];
    let run = ngclient(
        &nginx.url(),
        &repo.join("metadata/1.root.json"),
        &d.join("client-cache"),
        &d.join("downloads"),
        &names,
    );
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.target(names[0])["sha256"],
        sha256_file(&d.join("img/fw-a.bin"))
    );
    assert_eq!(
        run.target(names[1])["sha256"],
        sha256_file(&d.join("img/fw-b.bin"))
    );
}

/// A staged file is outside input (it travels between machines): a truncated, malformed or tampered
/// one gets an error naming the file and what is wrong, never a panic, and changes nothing.
#[test]
fn a_malformed_truncated_or_tampered_stage_file_is_refused_naming_the_file() {
    let t = setup();
    let d = t.path();
    fs::write(d.join("img/fw.bin"), b"firmware").unwrap();
    fs::write(d.join("img/fw-2.bin"), b"firmware 2").unwrap();
    ok(d, &add_args("img/fw.bin", "1.0.0", Some("stage.json"), &[ALICE]));
    let staged = fs::read(d.join("stage.json")).unwrap();

    // Staging into an existing file is refused before any target file is written.
    let err = fails(
        d,
        &add_args("img/fw-2.bin", "2.0.0", Some("stage.json"), &[ALICE]),
    );
    assert!(err.contains("stage.json already exists"), "{err}");

    let sign = ["role", "sign", "--file", "stage.json", "--key", BOB];
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", staged[..staged.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("not JSON", b"\x00\xffnot json".to_vec()),
        ("no roles", br#"{"staged_roles":[]}"#.to_vec()),
        (
            "wrong shape",
            br#"{"staged_roles":[{"role":"targets"}]}"#.to_vec(),
        ),
    ];
    let mut v: serde_json::Value = serde_json::from_slice(&staged).unwrap();
    let entry = v["staged_roles"][0].clone();
    v["staged_roles"].as_array_mut().unwrap().push(entry);
    cases.push(("role twice", serde_json::to_vec(&v).unwrap()));
    for (what, bytes) in &cases {
        fs::write(d.join("stage.json"), bytes).unwrap();
        for args in [&sign[..], PUBLISH] {
            let out = repo_tool(d, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}: {args:?} succeeded");
            assert!(
                err.contains("staged role file stage.json") && !err.contains("panicked"),
                "{what}: {err}"
            );
        }
        let err = fails(d, PUBLISH);
        assert!(err.contains("stage.json"), "{what}: {err}");
    }

    // Tampered after signing (another target added to the signed part): both signatures are
    // present, neither covers the bytes that would be published, so publish refuses.
    fs::write(d.join("stage.json"), &staged).unwrap();
    ok(d, &["role", "sign", "--file", "stage.json", "--key", BOB]);
    let mut v = read_stage_json(d);
    v["staged_roles"][0]["metadata"]["signed"]["version"] = 7.into();
    write_stage_json(d, &v);
    let err = fails(d, PUBLISH);
    assert!(err.contains("staged role targets has version 7"), "{err}");
    v["staged_roles"][0]["metadata"]["signed"]["version"] = 2.into();
    let targets = v["staged_roles"][0]["metadata"]["signed"]["targets"]
        .as_object_mut()
        .unwrap();
    let (name, target) = targets
        .iter()
        .next()
        .map(|(n, t)| (n.clone(), t.clone()))
        .unwrap();
    targets.insert(format!("{name}.evil"), target);
    write_stage_json(d, &v);
    let err = fails(d, PUBLISH);
    assert!(err.contains("has 0 of the 2 valid signature(s)"), "{err}");
}

/// A role new to the repository takes its name from the staged file, and the name becomes a metadata
/// file name: even signed by the delegator's threshold, a top-level role's name or one that is no
/// plain file name stem is refused at publish, before anything is written.
#[test]
fn a_staged_new_role_with_a_top_level_or_path_like_name_is_refused() {
    let t = setup();
    let d = t.path();
    ok(
        d,
        &[
            "delegate",
            "--repo",
            "repo",
            "--role",
            "gw-b",
            "--path",
            "gw-b/*/*",
            "--role-key",
            "alice/gw-b-a.pub.json",
            "--stage",
            "stage.json",
            "--key",
            ALICE,
            "--key",
            "alice/gw-b-a.pk8",
        ],
    );
    let staged = read_stage_json(d);
    for name in ["snapshot", "../x", "a/b"] {
        // Rename the new role in its delegation and its own entry, then have both holders sign.
        let mut v = staged.clone();
        v["staged_roles"][0]["metadata"]["signed"]["delegations"]["roles"][0]["name"] = name.into();
        v["staged_roles"][1]["role"] = name.into();
        for s in v["staged_roles"].as_array_mut().unwrap() {
            s["metadata"]["signatures"] = serde_json::json!([]);
        }
        write_stage_json(d, &v);
        ok(
            d,
            &["role", "sign", "--file", "stage.json", "--keys-dir", "alice"],
        );
        ok(d, &["role", "sign", "--file", "stage.json", "--key", BOB]);
        let err = fails(d, PUBLISH);
        assert!(err.contains(&format!("role name {name:?}")), "{name}: {err}");
    }
}
