//! Issue 14 must-show, the device half: rollout control signed with its own online key, obeyed by the
//! real `device-agent` binary over a repository served by a real nginx and edited with the real
//! `repo-tool rollout` commands. A halted release installs on no new device and installs after resume;
//! a pull brings one device back from its other slot (nothing downloaded) and another by download; a
//! rollout-control key that signs firmware is refused and the running slot untouched; a forged or
//! expired halt is refused, naming why, while the last verified control stays in force.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs;
use std::path::PathBuf;

use ota_e2e::{firmware, sha256_hex, text, SimDevice, TestRepo, CHANNEL, HARDWARE};
use ota_slot::SlotId;

const SLOT_LEN: u64 = 1 << 20;

/// Creates the rollout-control delegation (targets key, once) and returns the control key.
fn init_control(repo: &TestRepo) -> PathBuf {
    let control = repo.new_key("rollout-control");
    let root = repo.root_dir();
    ok(
        repo,
        &[
            "rollout",
            "init",
            "--repo",
            root.to_str().unwrap(),
            "--control-key",
            control.to_str().unwrap(),
            "--key",
            repo.key("targets").to_str().unwrap(),
            "--key",
            repo.key("snapshot").to_str().unwrap(),
            "--key",
            repo.key("timestamp").to_str().unwrap(),
        ],
    );
    control
}

fn ok(repo: &TestRepo, args: &[&str]) -> String {
    let out = repo.repo_tool(args);
    assert!(out.status.success(), "repo-tool {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `dev` until it settles, which must succeed after exactly `reboots` reboots.
fn settle(dev: &SimDevice, reboots: usize) {
    let (out, rebooted) = dev.run_until_settled();
    assert!(out.status.success() && rebooted == reboots, "{}", text(&out));
}

/// The standing of `version` in `device status --json`'s rollout section.
fn standing(dev: &SimDevice, version: &str) -> serde_json::Value {
    let s = dev.status();
    s["rollout"]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .cloned()
        .unwrap_or_else(|| panic!("{version} not in {s}"))
}

#[test]
fn a_halted_release_installs_on_no_new_device_and_installs_after_resume() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let devices = [
        SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, ""),
        SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, ""),
    ];
    let control = init_control(&repo);
    repo.publish("2.0.0", &firmware("2.0.0", 250_000));
    repo.rollout(&control, "halt", "2.0.0", &["--reason", "rollbacks in wave 1"]);
    for dev in &devices {
        let (out, reboots) = dev.run_until_settled();
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(reboots, 0, "{}", text(&out));
        let s = dev.status();
        assert_eq!(
            (s["running_version"].as_str(), s["state_name"].as_str()),
            (Some("1.0.0"), Some("idle")),
            "{s}"
        );
        assert!(
            s["slot_b"].is_null(),
            "the inactive slot was not even chosen: {s}"
        );
        let r = standing(dev, "2.0.0");
        assert_eq!(r["standing"], "halted", "{r}");
        assert_eq!(r["reason"], "rollbacks in wave 1");
        assert!(r["since_unix"].as_i64().unwrap() > 0);
        let seed = s["rollout"]["seed"].as_str().unwrap();
        assert_eq!(seed.len(), 16, "{seed}");
        let check = dev.agent(&["check"]);
        assert!(check.status.success(), "{}", text(&check));
        let said = text(&check);
        assert!(said.contains("up to date"), "{said}");
        assert!(
            said.contains("2.0.0: the rollout is halted since") && said.contains("rollbacks in wave 1"),
            "{said}"
        );
        let human = text(&dev.agent(&["status"]));
        assert!(human.contains(&format!("seed        {seed}")), "{human}");
        assert!(human.contains("halted    2.0.0"), "{human}");
    }
    // The seed is the device's own, stable across runs, and differs between devices.
    let seeds: Vec<String> = devices
        .iter()
        .map(|d| d.status()["rollout"]["seed"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(seeds[0], seeds[1]);
    assert_eq!(devices[0].status()["rollout"]["seed"], seeds[0].as_str());

    repo.rollout(&control, "resume", "2.0.0", &[]);
    for dev in &devices {
        let (out, reboots) = dev.run_until_settled();
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(reboots, 1, "{}", text(&out));
        let s = dev.status();
        assert_eq!(
            (s["running_version"].as_str(), s["state_name"].as_str()),
            (Some("2.0.0"), Some("committed")),
            "{s}"
        );
        assert_eq!(standing(dev, "2.0.0")["standing"], "open");
    }
}

#[test]
fn a_release_waits_for_its_wave_until_the_control_role_speeds_it_up() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let control = init_control(&repo);
    let v2 = firmware("2.0.0", 250_000);
    let image = repo.root_dir().join("../fw-2.0.0-waves.bin");
    fs::write(&image, &v2).unwrap();
    let root = repo.root_dir();
    // One wave, opening a day after publication: every device waits.
    ok(
        &repo,
        &[
            "add",
            "--repo",
            root.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--version",
            "2.0.0",
            "--hardware",
            HARDWARE,
            "--channel",
            CHANNEL,
            "--waves",
            "100%@1d",
            "--key",
            repo.key("targets").to_str().unwrap(),
            "--key",
            repo.key("snapshot").to_str().unwrap(),
            "--key",
            repo.key("timestamp").to_str().unwrap(),
        ],
    );
    settle(&dev, 0);
    let r = standing(&dev, "2.0.0");
    assert_eq!(
        (r["standing"].as_str(), r["wave"].as_u64()),
        (Some("waiting"), Some(0)),
        "{r}"
    );
    let eligible = r["eligible_unix"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 86_000..=now + 86_400).contains(&eligible),
        "{eligible} vs now {now}"
    );
    let said = text(&dev.agent(&["check"]));
    assert!(
        said.contains("this device is in wave 1 and becomes eligible at"),
        "{said}"
    );
    assert_eq!(dev.status()["running_version"], "1.0.0");

    // The control role replaces the plan: everyone now.
    repo.rollout(&control, "start", "2.0.0", &["--waves", "now"]);
    settle(&dev, 1);
    assert_eq!(dev.status()["running_version"], "2.0.0");
}

#[test]
fn a_pull_brings_devices_back_from_the_other_slot_and_by_download() {
    let repo = TestRepo::new();
    let v05 = firmware("0.5.0", 150_000);
    let v1 = firmware("1.0.0", 200_000);
    let v2 = firmware("2.0.0", 250_000);
    let v1_name = repo.publish("1.0.0", &v1);
    // One device still holds 1.0.0 in its other slot after the update; the other came from 0.5.0.
    let from_slot = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let by_download = SimDevice::new(&repo, "0.5.0", &v05, SLOT_LEN, "");
    repo.publish("2.0.0", &v2);
    for dev in [&from_slot, &by_download] {
        settle(dev, 1);
        let s = dev.status();
        assert_eq!(
            (s["running_version"].as_str(), s["floor"].as_str()),
            (Some("2.0.0"), Some("2.0.0")),
            "{s}"
        );
    }
    let control = init_control(&repo);
    repo.rollout(&control, "pull", "2.0.0", &["--reason", "boot loop"]);

    // 1.0.0's image is taken off the server: going back from the other slot downloads nothing.
    let served = repo.target_file(&v1_name, &v1);
    let hidden = served.with_extension("hidden");
    fs::rename(&served, &hidden).unwrap();
    let said = text(&from_slot.agent(&["check"]));
    assert!(
        said.contains("would go back to 1.0.0 in slot a (2.0.0 is pulled)"),
        "{said}"
    );
    let (out, reboots) = from_slot.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        reboots,
        1,
        "one reboot into the trial of the old slot: {}",
        text(&out)
    );
    let s = from_slot.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    assert_eq!(
        (
            s["running_version"].as_str(),
            s["booted"].as_str(),
            s["primary"].as_str()
        ),
        (Some("1.0.0"), Some("a"), Some("a")),
        "{s}"
    );
    assert_eq!(s["floor"], "1.0.0", "the floor follows a signed pull-back: {s}");
    assert_eq!(
        s["last_install"]["version"], "2.0.0",
        "nothing was installed for the pull-back: {s}"
    );
    assert_eq!(from_slot.slot_sha256(SlotId::A, v1.len()), sha256_hex(&v1));
    assert_eq!(standing(&from_slot, "2.0.0")["standing"], "pulled");
    fs::rename(&hidden, &served).unwrap();

    // The other device's other slot holds 0.5.0: it downloads 1.0.0.
    settle(&by_download, 1);
    let s = by_download.status();
    assert_eq!(
        (
            s["running_version"].as_str(),
            s["floor"].as_str(),
            s["booted"].as_str()
        ),
        (Some("1.0.0"), Some("1.0.0"), Some("a")),
        "{s}"
    );
    assert_eq!(s["last_install"]["version"], "1.0.0", "{s}");
    assert_eq!(by_download.slot_sha256(SlotId::A, v1.len()), sha256_hex(&v1));

    // Settled: the pulled release is not taken again; resumed, it is an ordinary update once more.
    for dev in [&from_slot, &by_download] {
        settle(dev, 0);
        assert!(text(&dev.agent(&["check"])).contains("2.0.0 is pulled since"));
    }
    repo.rollout(&control, "resume", "2.0.0", &[]);
    for dev in [&from_slot, &by_download] {
        settle(dev, 1);
        let s = dev.status();
        assert_eq!(
            (s["running_version"].as_str(), s["floor"].as_str()),
            (Some("2.0.0"), Some("2.0.0")),
            "{s}"
        );
    }
}

/// Flips one hex digit of the first signature of the newest `rollout-control.json` the repository
/// serves; returns the file and its original bytes.
fn forge_newest_control(repo: &TestRepo) -> (PathBuf, Vec<u8>) {
    let dir = repo.root_dir().join("metadata");
    let newest = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(".rollout-control.json")
        })
        .max_by_key(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            name.split('.').next().unwrap().parse::<u64>().unwrap()
        })
        .unwrap();
    let original = fs::read(&newest).unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let sig = doc["signatures"][0]["sig"].as_str().unwrap().to_owned();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    doc["signatures"][0]["sig"] = format!("{flipped}{}", &sig[1..]).into();
    fs::write(&newest, serde_json::to_vec(&doc).unwrap()).unwrap();
    (newest, original)
}

#[test]
fn a_forged_or_expired_halt_is_refused_naming_why() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let control = init_control(&repo);
    repo.publish("2.0.0", &firmware("2.0.0", 250_000));
    // The last verified word of the control role: 2.0.0 opens in a day.
    repo.rollout(&control, "start", "2.0.0", &["--waves", "100%@1d"]);
    let (out, _) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(standing(&dev, "2.0.0")["standing"], "waiting");
    assert!(dev.status()["rollout"]["control_error"].is_null());

    // A halt whose signature is not the control key's.
    repo.rollout(&control, "halt", "2.0.0", &["--reason", "forged"]);
    let (forged, original) = forge_newest_control(&repo);
    settle(&dev, 0);
    let s = dev.status();
    let why = s["rollout"]["control_error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error named: {s}"));
    assert!(why.contains("rollout-control"), "{why}");
    let r = standing(&dev, "2.0.0");
    assert_eq!(
        r["standing"], "waiting",
        "the forged halt is not believed; the last verified plan holds: {r}"
    );
    assert_eq!(
        (s["running_version"].as_str(), s["state_name"].as_str()),
        (Some("1.0.0"), Some("idle"))
    );
    let said = text(&dev.agent(&["check"]));
    assert!(
        said.contains("refused") && said.contains("rollout-control"),
        "{said}"
    );
    fs::write(&forged, original).unwrap();

    // A halt signed by the control key but expired: refused too, the last verified plan still holds.
    repo.rollout(
        &control,
        "halt",
        "2.0.0",
        &["--reason", "stale", "--targets-expires", "1s"],
    );
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    settle(&dev, 0);
    let s = dev.status();
    let why = s["rollout"]["control_error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error named: {s}"));
    assert!(why.contains("expired"), "{why}");
    assert_eq!(standing(&dev, "2.0.0")["standing"], "waiting");

    // A fresh, verified instruction is obeyed again.
    repo.rollout(&control, "resume", "2.0.0", &[]);
    repo.rollout(&control, "start", "2.0.0", &["--waves", "now"]);
    settle(&dev, 1);
    let s = dev.status();
    assert!(s["rollout"]["control_error"].is_null(), "{s}");
    assert_eq!(s["running_version"], "2.0.0");
}

/// A stolen rollout-control key (with the online snapshot and timestamp keys) signs `name`, a firmware
/// image with release fields for this device's hardware id and channel (tests/python).
fn control_key_signs_firmware(repo: &TestRepo, control: &std::path::Path, name: &str, image: &[u8]) {
    let file = repo.root_dir().join("../evil.bin");
    fs::write(&file, image).unwrap();
    let release = ota_release::Release {
        version: "9.0.0".parse().unwrap(),
        hardware: vec![HARDWARE.parse().unwrap()],
        channel: CHANNEL.parse().unwrap(),
        rollout: ota_release::Rollout::default(),
        waves: None,
        deltas: vec![],
    };
    let custom = ota_release::OtaTarget::Release(release).to_custom().to_string();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/control_signs_firmware.py");
    let out = std::process::Command::new(ota_testbed::python_tuf())
        .arg(script)
        .arg(repo.root_dir())
        .args([control, &repo.key("snapshot"), &repo.key("timestamp")])
        .arg(name)
        .arg(&file)
        .arg(custom)
        .output()
        .unwrap();
    assert!(out.status.success(), "forging failed: {}", text(&out));
}

#[test]
fn a_rollout_control_key_that_signs_firmware_is_refused_and_the_running_slot_is_untouched() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let control = init_control(&repo);
    let evil = firmware("9.0.0", 210_000);
    let slots_before = (dev.slot_bytes(SlotId::A), dev.slot_bytes(SlotId::B));
    // Outside its delegation (where firmware lives): the device never looks for it in that role.
    // Inside it (under rollouts/): listed, but never taken as firmware.
    for (name, said) in [
        ("gw-sim/stable/fw-9.0.0.bin", "up to date"),
        ("rollouts/gw-sim/evil.json", "never hold firmware: refused"),
    ] {
        control_key_signs_firmware(&repo, &control, name, &evil);
        let (out, reboots) = dev.run_until_settled();
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert_eq!(reboots, 0, "{name}: {}", text(&out));
        let s = dev.status();
        assert_eq!(
            (s["running_version"].as_str(), s["state_name"].as_str()),
            (Some("1.0.0"), Some("idle")),
            "{name}: {s}"
        );
        assert!(
            s["rollout"]["control_error"].is_null(),
            "{name}: the control role itself verifies: {s}"
        );
        assert_eq!(
            (dev.slot_bytes(SlotId::A), dev.slot_bytes(SlotId::B)),
            slots_before,
            "{name}: a slot was written"
        );
        let check = text(&dev.agent(&["check"]));
        assert!(
            check.contains("up to date") && check.contains(said),
            "{name}: {check}"
        );
        assert!(!check.contains("would install"), "{name}: {check}");
    }
    // A release the firmware (targets) key signs is installed as usual: the refusal was the role's.
    // (The publisher refuses 9.0.0 itself: the control role's listing already claims that version.)
    let good = firmware("9.0.1", 210_000);
    repo.publish("9.0.1", &good);
    settle(&dev, 1);
    assert_eq!(dev.status()["running_version"], "9.0.1");
}

#[test]
fn a_field_drill_installs_in_trial_rolls_back_on_purpose_and_records_it() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let drilled = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let other = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let control = init_control(&repo);
    repo.publish("2.0.0", &firmware("2.0.0", 250_000));
    // Not open to anyone for a day: only the drill's cohort takes it, and only for the trial.
    repo.rollout(&control, "start", "2.0.0", &["--waves", "100%@1d"]);
    let id = drilled.status()["device_id"].as_str().unwrap().to_owned();
    let cohort = ["--id", "spring", "--devices", id.as_str(), "--until", "1d"];
    repo.rollout(&control, "drill", "2.0.0", &cohort);
    let (out, reboots) = drilled.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 2, "into the trial, then back on purpose: {}", text(&out));
    let s = drilled.status();
    assert_eq!(s["state_name"], "drill rolled back", "{s}");
    assert_eq!(
        (
            s["running_version"].as_str(),
            s["booted"].as_str(),
            s["floor"].as_str()
        ),
        (Some("1.0.0"), Some("a"), Some("1.0.0")),
        "{s}"
    );
    assert_eq!(
        s["failed"],
        serde_json::json!([]),
        "a drill does not condemn its release: {s}"
    );
    assert_eq!(s["drills"][0]["id"], "spring");
    assert_eq!(s["drills"][0]["version"], "2.0.0");
    assert_eq!(s["drills"][0]["outcome"], "drill_passed", "{s}");
    assert!(text(&drilled.agent(&["status"])).contains("drill       spring on 2.0.0: passed"));
    // Once only; and a device outside the cohort never took part.
    settle(&drilled, 0);
    settle(&other, 0);
    let s = other.status();
    assert_eq!(
        (s["state_name"].as_str(), s["drills"].as_array().map(Vec::len)),
        (Some("idle"), Some(0)),
        "{s}"
    );
}
