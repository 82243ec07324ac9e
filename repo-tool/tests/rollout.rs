//! Staged rollouts (issue 14, publisher half) with the real `repo-tool` binary: `add --waves`, the
//! rollout-control role (`rollout init`), halt, resume, pull, start and drill signed with only the
//! rollout-control, snapshot and timestamp keys, `rollout status` (text and JSON), and the security
//! boundary: a control key that lists a firmware target is refused by `verify` and ignored by
//! python-tuf's ngclient; a control file edited after signing fails `verify`; ngclient still reads
//! the repository and downloads the control file (real nginx).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::path::Path;

use aws_lc_rs::signature::Ed25519KeyPair;
use common::{add_args, fails, ngclient, ok, repo_tool, sha256_file, Fixture, INIT};
use ota_release::{Channel, HardwareId, RolloutControl, RolloutPlan, RolloutSeed, RolloutState};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The rollout-control commands' common flags, signed with `online/` (control, snapshot and
/// timestamp keys only: no targets or root key anywhere in it).
fn control_args<'a>(command: &'a str, version: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "rollout",
        command,
        "--repo",
        "repo",
        "--hardware",
        "gw-a",
        "--channel",
        "stable",
        "--version",
        version,
        "--keys-dir",
        "online",
    ];
    args.extend(extra);
    args
}

/// `repo-tool keys generate --dir keys NAMES...` in `d`.
fn generate_keys(d: &Path, names: &[&str]) {
    ok(d, &[&["keys", "generate", "--dir", "keys"][..], names].concat());
}

/// Keys, a repository with 1.0.0 (`--waves now`) and 2.0.0 (the default plan) for gw-a/stable, the
/// rollout-control role, and `online/` holding copies of only the control, snapshot and timestamp keys.
fn setup() -> Fixture {
    let f = Fixture::empty();
    let d = f.dir.path();
    let names = ["root", "targets", "snapshot", "timestamp", "control"];
    generate_keys(d, &names);
    ok(d, &[INIT, &["--no-qr"]].concat());
    f.image("fw-1.0.0.bin", 3000, 1);
    f.image("fw-2.0.0.bin", 3000, 2);
    ok(
        d,
        &add_args("images/fw-1.0.0.bin", "1.0.0", "gw-a", &["--waves", "now"]),
    );
    let out = ok(d, &add_args("images/fw-2.0.0.bin", "2.0.0", "gw-a", &[]));
    assert!(out.contains("waves: default"), "{out}");
    let out = ok(
        d,
        &[
            "rollout",
            "init",
            "--repo",
            "repo",
            "--control-key",
            "keys/control.pk8",
            "--key",
            "keys/targets.pk8",
            "--key",
            "keys/snapshot.pk8",
            "--key",
            "keys/timestamp.pk8",
        ],
    );
    assert!(out.contains("rollouts/*/*.json to role rollout-control"), "{out}");
    fs::create_dir(d.join("online")).unwrap();
    for k in ["control", "snapshot", "timestamp"] {
        fs::copy(d.join(format!("keys/{k}.pk8")), d.join(format!("online/{k}.pk8"))).unwrap();
    }
    f
}

fn status_json(d: &Path, extra: &[&str]) -> Value {
    let args = [&["rollout", "status", "--repo", "repo", "--json"][..], extra].concat();
    serde_json::from_str(&ok(d, &args)).unwrap()
}

/// The JSON status of release `version` of gw-a/stable.
fn release_status(status: &Value, version: &str) -> Value {
    let channel = status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["hardware"] == "gw-a" && c["channel"] == "stable")
        .unwrap();
    channel["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .unwrap()
        .clone()
}

fn verify_ok(d: &Path) {
    let out = ok(d, &["verify", "--repo", "repo"]);
    assert!(out.contains("ok:"), "{out}");
}

/// Metadata files of the targets and root roles: rollout commands must never write one.
fn offline_metadata(d: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(d.join("repo/metadata"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".targets.json") || n.ends_with(".root.json"))
        .collect();
    names.sort();
    names
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[test]
fn halt_resume_and_pull_need_only_the_online_keys_and_status_shows_them() {
    let f = setup();
    let d = f.dir.path();
    let offline_before = offline_metadata(d);
    let before = now();
    let out = ok(
        d,
        &control_args("halt", "2.0.0", &["--reason", "rollbacks in wave 1"]),
    );
    assert!(
        out.contains("halted 2.0.0: rollouts/gw-a/stable.json published"),
        "{out}"
    );
    let after = now();
    let r = release_status(&status_json(d, &[]), "2.0.0");
    assert_eq!(r["state"], "halted");
    assert_eq!(r["reason"], "rollbacks in wave 1");
    let since = r["since_unix"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&since),
        "{since} not in {before}..={after}"
    );
    assert_eq!(r["plan_from"], "release");
    assert_eq!(r["waves"].as_array().unwrap().len(), 4, "{r}");
    let text = ok(d, &["rollout", "status", "--repo", "repo"]);
    assert!(
        text.contains("halted since") && text.contains("rollbacks in wave 1"),
        "{text}"
    );
    // The release without a plan is untouched: active, everyone at once.
    let r1 = release_status(&status_json(d, &[]), "1.0.0");
    assert_eq!(
        (r1["state"].as_str(), r1["plan_from"].as_str()),
        (Some("active"), Some("none"))
    );
    verify_ok(d);

    ok(
        d,
        &control_args("resume", "2.0.0", &["--reason", "fixed upstream"]),
    );
    let r = release_status(&status_json(d, &[]), "2.0.0");
    assert_eq!(
        (r["state"].as_str(), r["reason"].as_str()),
        (Some("active"), Some("fixed upstream"))
    );
    verify_ok(d);

    let out = ok(
        d,
        &control_args("pull", "2.0.0", &["--reason", "bricks gw-a rev 3"]),
    );
    assert!(out.contains("pulled 2.0.0"), "{out}");
    let r = release_status(&status_json(d, &[]), "2.0.0");
    assert_eq!(r["state"], "pulled");
    let listing = ok(d, &["list", "--repo", "repo"]);
    assert!(
        listing.contains("rollout-control: pulled since") && listing.contains("bricks gw-a rev 3"),
        "{listing}"
    );
    assert!(listing.contains("waves: 1% at "), "{listing}");
    // Pulling the only release left to go back to is published, with a warning.
    let out = repo_tool(d, &control_args("pull", "1.0.0", &[]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no release to go back to"));
    // Every superseded control file was removed: nothing unreferenced, and no targets or root
    // metadata was signed (the online directory has no such key).
    verify_ok(d);
    assert_eq!(offline_metadata(d), offline_before);
    let files = fs::read_dir(d.join("repo/targets/rollouts/gw-a"))
        .unwrap()
        .count();
    assert_eq!(files, 1);
}

#[test]
fn a_device_waiting_in_the_last_wave_is_opened_by_a_faster_plan() {
    let f = setup();
    let d = f.dir.path();
    // A device in the default plan's last wave (everyone after a week).
    let device = (0..)
        .map(|i| format!("dev-{i}"))
        .find(|id| {
            let place = RolloutPlan::default_from(0).place(RolloutSeed::of_device(id));
            place.unwrap().wave == 3
        })
        .unwrap();
    let status = status_json(d, &["--device-id", &device]);
    assert_eq!(
        status["device"]["seed"],
        format!("{:016x}", RolloutSeed::of_device(&device).0)
    );
    let r = release_status(&status, "2.0.0");
    assert_eq!(r["device"]["wave"], 3);
    assert_eq!(r["device"]["standing"], "waiting");
    assert!(r["device"]["eligible_unix"].as_i64().unwrap() > now() + 6 * 86_400);
    let text = ok(
        d,
        &["rollout", "status", "--repo", "repo", "--device-id", &device],
    );
    assert!(
        text.contains("device: wave 4") && text.contains("waiting"),
        "{text}"
    );

    let out = ok(d, &control_args("start", "2.0.0", &["--waves", "10%@0,100%@0"]));
    assert!(out.contains("new plan for 2.0.0"), "{out}");
    let r = release_status(&status_json(d, &["--device-id", &device]), "2.0.0");
    assert_eq!(r["plan_from"], "control");
    assert_eq!(r["device"]["standing"], "open");
    assert_eq!(r["waves"].as_array().unwrap().len(), 2);
    // A plan the rules refuse (not reaching 100 %) changes nothing.
    let err = fails(d, &control_args("start", "2.0.0", &["--waves", "10%@0,50%@1d"]));
    assert!(err.contains("invalid rollout plan"), "{err}");
    verify_ok(d);
}

#[test]
fn drills_are_signed_into_the_control_file() {
    let f = setup();
    let d = f.dir.path();
    let drill = |extra: &[&'static str]| {
        let mut args = control_args("drill", "1.0.0", &["--id", "spring", "--until", "2h"]);
        args.extend(extra);
        args
    };
    let out = ok(d, &drill(&["--devices", "dev-1,dev-2"]));
    assert!(out.contains("drill spring on 1.0.0"), "{out}");
    let status = status_json(d, &[]);
    let drills = &status["channels"][0]["drills"];
    assert_eq!(drills[0]["id"], "spring");
    assert_eq!(drills[0]["cohort"]["devices"], json!(["dev-1", "dev-2"]));
    let until = drills[0]["until_unix"].as_i64().unwrap();
    assert!((now() + 7000..=now() + 7200).contains(&until), "{until}");
    // The same id again replaces it: now a share of the fleet.
    ok(d, &drill(&["--share", "0.5%"]));
    let status = status_json(d, &[]);
    let drills = status["channels"][0]["drills"].as_array().unwrap().clone();
    assert_eq!(drills.len(), 1);
    assert_eq!(drills[0]["cohort"]["share_bp"], 50);
    let text = ok(d, &["rollout", "status", "--repo", "repo"]);
    assert!(
        text.contains("drill spring on 1.0.0: 0.5% of the fleet"),
        "{text}"
    );
    let err = fails(
        d,
        &control_args(
            "drill",
            "9.9.9",
            &["--id", "x", "--until", "1h", "--devices", "a"],
        ),
    );
    assert!(err.contains("offers no release 9.9.9"), "{err}");
    verify_ok(d);
}

#[test]
fn commands_for_a_version_not_offered_or_without_the_control_key_are_refused() {
    let f = setup();
    let d = f.dir.path();
    let err = fails(d, &control_args("halt", "3.0.0", &[]));
    assert!(
        err.contains("offers no release 3.0.0 for hardware gw-a on channel stable (it offers: 1.0.0, 2.0.0)"),
        "{err}"
    );
    let mut other_channel = control_args("halt", "2.0.0", &[]);
    other_channel[7] = "beta";
    let err = fails(d, &other_channel);
    assert!(err.contains("offers no release 2.0.0"), "{err}");
    // The targets key cannot stand in for the control key.
    let mut offline = control_args("halt", "2.0.0", &[]);
    offline.truncate(offline.len() - 2);
    offline.extend([
        "--key",
        "keys/targets.pk8",
        "--key",
        "keys/snapshot.pk8",
        "--key",
        "keys/timestamp.pk8",
    ]);
    let err = fails(d, &offline);
    assert!(err.contains("rollout-control"), "{err}");
    let err = fails(
        d,
        &add_args(
            "images/fw-2.0.0.bin",
            "2.0.1",
            "gw-a",
            &["--waves", "10%@0,5%@1d,100%@2d"],
        ),
    );
    assert!(err.contains("invalid rollout plan"), "{err}");
}

#[test]
fn rollout_commands_before_init_say_how_to_start() {
    let f = Fixture::empty();
    let d = f.dir.path();
    generate_keys(d, &["root", "targets", "snapshot", "timestamp"]);
    ok(d, &[INIT, &["--no-qr"]].concat());
    f.image("fw-1.0.0.bin", 100, 1);
    ok(d, &add_args("images/fw-1.0.0.bin", "1.0.0", "gw-a", &[]));
    let mut args = control_args("halt", "1.0.0", &[]);
    args.truncate(args.len() - 2);
    args.extend(["--keys-dir", "keys"]);
    let err = fails(d, &args);
    assert!(err.contains("repo-tool rollout init"), "{err}");
}

#[test]
fn a_control_file_edited_after_signing_fails_verify() {
    let f = setup();
    let d = f.dir.path();
    ok(d, &control_args("halt", "2.0.0", &["--reason", "bad"]));
    let dir = d.join("repo/targets/rollouts/gw-a");
    let file = fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let forged = fs::read_to_string(&file).unwrap().replace("halted", "active");
    fs::write(&file, forged).unwrap();
    let out = repo_tool(d, &["verify", "--repo", "repo"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stable.json does not match its sha256"),
        "{stdout}"
    );
    // Nothing is built on a forged file: status and the next halt refuse it.
    let err = fails(d, &["rollout", "status", "--repo", "repo"]);
    assert!(err.contains("does not match the length and sha256"), "{err}");
    fails(d, &control_args("resume", "2.0.0", &[]));
}

fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    v.serialize(&mut ser).unwrap();
    out
}

/// Signs `signed` with key `key` into `metadata/<file>`; returns the bytes.
fn write_signed(f: &Fixture, file: &str, signed: Value, key: &str) -> Vec<u8> {
    let pair = Ed25519KeyPair::from_pkcs8(&fs::read(f.private(key)).unwrap()).unwrap();
    let sig = pair.sign(&canonical(&signed));
    let bytes = canonical(&json!({
        "signatures": [{"keyid": f.key_id(key), "sig": hex::encode(sig.as_ref())}],
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

/// What a thief with the control (and snapshot and timestamp) keys could do: re-sign rollout-control
/// listing a firmware image of their own under a firmware path, and publish it.
fn forge_firmware_in_control_role(f: &Fixture, name: &str, image: &[u8]) {
    let sha = hex::encode(Sha256::digest(image));
    let (dir, base) = name.rsplit_once('/').unwrap();
    let target_dir = f.repo().join("targets").join(dir);
    fs::write(target_dir.join(format!("{sha}.{base}")), image).unwrap();
    let snapshot_version = read_json(f, "timestamp.json")["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let mut snapshot = read_json(f, &format!("{snapshot_version}.snapshot.json"))["signed"].clone();
    let control_version = snapshot["meta"]["rollout-control.json"]["version"]
        .as_u64()
        .unwrap();
    let mut control = read_json(f, &format!("{control_version}.rollout-control.json"))["signed"].clone();
    let custom = json!({"ota": {"kind": "release", "version": "9.0.0", "hardware": ["gw-a"],
        "channel": "stable", "rollout": {"percent": 100}}});
    control["targets"][name] = json!({"length": image.len(), "hashes": {"sha256": sha}, "custom": custom});
    control["version"] = json!(control_version + 1);
    let control_bytes = write_signed(
        f,
        &format!("{}.rollout-control.json", control_version + 1),
        control,
        "control",
    );
    snapshot["meta"]["rollout-control.json"] = meta_entry(control_version + 1, &control_bytes);
    snapshot["version"] = json!(snapshot_version + 1);
    let snapshot_bytes = write_signed(
        f,
        &format!("{}.snapshot.json", snapshot_version + 1),
        snapshot,
        "snapshot",
    );
    let mut timestamp = read_json(f, "timestamp.json")["signed"].clone();
    timestamp["meta"]["snapshot.json"] = meta_entry(snapshot_version + 1, &snapshot_bytes);
    timestamp["version"] = json!(timestamp["version"].as_u64().unwrap() + 1);
    write_signed(f, "timestamp.json", timestamp, "timestamp");
}

#[test]
fn a_control_role_listing_firmware_is_refused_by_verify_and_ignored_by_ngclient() {
    let f = setup();
    let d = f.dir.path();
    ok(d, &control_args("halt", "2.0.0", &[]));
    let evil = "gw-a/stable/fw-9.0.0.bin";
    forge_firmware_in_control_role(&f, evil, b"not signed by the firmware role");
    let out = repo_tool(d, &["verify", "--repo", "repo"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "role rollout-control lists {evil} outside its delegated paths"
        )),
        "{stdout}"
    );

    let nginx = ota_testbed::Nginx::serve(&f.repo());
    let root = f.repo().join("metadata/1.root.json");
    let (cache, downloads) = (d.join("cache"), d.join("downloads"));
    // The repository still reads: the real release and the control file.
    let run = ngclient(
        &nginx.url(),
        &root,
        &cache,
        &downloads,
        &["gw-a/stable/fw-2.0.0.bin"],
    );
    assert!(run.ok, "{}", run.stderr);
    // The forged image is never resolved: the delegation of rollout-control does not cover it.
    let run = ngclient(&nginx.url(), &root, &cache, &downloads, &[evil]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains(&format!("target {evil} not found by ngclient")),
        "{}",
        run.stderr
    );
}

#[test]
fn ngclient_reads_the_repository_and_downloads_the_control_file() {
    let f = setup();
    let d = f.dir.path();
    ok(
        d,
        &control_args("halt", "2.0.0", &["--reason", "wave 1 rollbacks"]),
    );
    let nginx = ota_testbed::Nginx::serve(&f.repo());
    let root = f.repo().join("metadata/1.root.json");
    let (cache, downloads) = (d.join("cache"), d.join("downloads"));
    let names = [
        "gw-a/stable/fw-1.0.0.bin",
        "gw-a/stable/fw-2.0.0.bin",
        "rollouts/gw-a/stable.json",
    ];
    let (hw, ch) = (HardwareId::new("gw-a").unwrap(), Channel::new("stable").unwrap());
    let read = |run: &common::NgRun| {
        let path = run.target("rollouts/gw-a/stable.json")["path"]
            .as_str()
            .unwrap()
            .to_owned();
        RolloutControl::parse(&fs::read(&path).unwrap(), &hw, &ch).unwrap()
    };
    let run = ngclient(&nginx.url(), &root, &cache, &downloads, &names);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.target("gw-a/stable/fw-2.0.0.bin")["custom"]["ota"]["waves"]["waves"][0]["share_bp"],
        100
    );
    let control = read(&run);
    let entry = control.release(&"2.0.0".parse().unwrap()).unwrap();
    assert_eq!(
        (entry.state, entry.reason.as_str()),
        (RolloutState::Halted, "wave 1 rollbacks")
    );
    let on_disk = fs::read_dir(d.join("repo/targets/rollouts/gw-a"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        run.target("rollouts/gw-a/stable.json")["sha256"],
        sha256_file(&on_disk.path())
    );

    // The same client, after a resume: it updates and reads the new file.
    ok(d, &control_args("resume", "2.0.0", &[]));
    let run = ngclient(&nginx.url(), &root, &cache, &d.join("downloads2"), &names[2..]);
    assert!(run.ok, "{}", run.stderr);
    let control = read(&run);
    assert_eq!(
        control.release(&"2.0.0".parse().unwrap()).unwrap().state,
        RolloutState::Active
    );
}

#[test]
fn the_control_delegation_is_listed_first_covers_only_control_files_and_is_made_once() {
    let f = Fixture::empty();
    let d = f.dir.path();
    generate_keys(
        d,
        &["root", "targets", "snapshot", "timestamp", "control", "wide"],
    );
    ok(d, &[INIT, &["--no-qr"]].concat());
    // A delegation made before, whose pattern also matches control paths: clients must ask
    // rollout-control first and stop there.
    ok(
        d,
        &[
            "delegate",
            "--repo",
            "repo",
            "--keys-dir",
            "keys",
            "--role",
            "wide",
            "--path",
            "*/*/*",
            "--role-key",
            "keys/wide.pub.json",
        ],
    );
    let init = [
        "rollout",
        "init",
        "--repo",
        "repo",
        "--control-key",
        "keys/control.pub.json",
        "--keys-dir",
        "keys",
    ];
    ok(d, &init);
    let version = read_json(&f, "timestamp.json");
    let snapshot_version = version["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let snapshot = read_json(&f, &format!("{snapshot_version}.snapshot.json"));
    let targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap();
    let targets = read_json(&f, &format!("{targets_version}.targets.json"));
    let first = &targets["signed"]["delegations"]["roles"][0];
    assert_eq!(first["name"], "rollout-control");
    assert_eq!(first["paths"], json!(["rollouts/*/*.json"]));
    assert_eq!(first["terminating"], true);
    assert_eq!(targets["signed"]["delegations"]["roles"][1]["name"], "wide");
    let err = fails(d, &init);
    assert!(err.contains("already delegated"), "{err}");
    verify_ok(d);
}
