//! Issue 22, offline bundles: `repo-tool bundle` writes one file holding a release and the signed
//! metadata that verifies it; `device-agent install --bundle FILE` installs it on a simulated device
//! whose repository is unreachable (its URLs point at a closed port), verified against the pinned
//! root exactly as online. Both real binaries, the sim boot backend (a reboot is a process restart).
//! - A good bundle (with a delta from the running release) installs, trial-boots and commits, the
//!   trial continued by `run --offline` without network.
//! - A tampered (image or metadata), truncated, wrong-hardware, downgrade or expired bundle is refused
//!   with both slots, the boot state and the update state untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use ota_e2e::{firmware, sha256_hex, text, SimDevice, TestRepo, CHANNEL, HARDWARE, REBOOT};
use ota_slot::SlotId;

const SLOT_LEN: u64 = 1 << 20;
/// The repository as this device's config names it: nothing listens there.
const OFFLINE: &str = "http://127.0.0.1:1";

/// `repo-tool bundle` for `version` of `hardware` into `out`; asserts it succeeded.
fn bundle(repo: &TestRepo, hardware: &str, version: &str, extra: &[&str], out: &Path) -> String {
    let root = repo.root_dir();
    let mut args = vec![
        "bundle",
        "--repo",
        root.to_str().unwrap(),
        "--hardware",
        hardware,
        "--channel",
        CHANNEL,
        "--version",
        version,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let made = repo.repo_tool(&args);
    assert!(made.status.success(), "{}", text(&made));
    text(&made)
}

/// The offset and length of member `name`'s data in the tar at `path`.
fn member(path: &Path, name: &str) -> (usize, usize) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in archive.entries_with_seek().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(name) {
            return (entry.raw_file_position() as usize, entry.size() as usize);
        }
    }
    panic!("no member {name} in {}", path.display())
}

/// A copy of `good` at `out` with `edit` applied to its bytes.
fn altered(good: &Path, out: PathBuf, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(good).unwrap();
    edit(&mut bytes);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// What must not change when a bundle is refused.
fn snapshot(dev: &SimDevice) -> (Vec<u8>, Vec<u8>, serde_json::Value) {
    let s = dev.status();
    let kept = serde_json::json!({
        "state": s["state"], "booted": s["booted"], "primary": s["primary"], "trial": s["trial"],
        "floor": s["floor"], "running_version": s["running_version"],
    });
    (dev.slot_bytes(SlotId::A), dev.slot_bytes(SlotId::B), kept)
}

fn assert_refused(dev: &SimDevice, bundle: &Path, expected: &[&str]) {
    let before = snapshot(dev);
    let out = dev.agent(&["install", "--bundle", bundle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for words in expected {
        assert!(
            text(&out).contains(words),
            "expected {words:?} in: {}",
            text(&out)
        );
    }
    assert!(
        before == snapshot(dev),
        "slots or state changed by a refused bundle: {}",
        text(&out)
    );
}

#[test]
fn a_good_bundle_installs_trial_boots_and_commits_without_network() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 300_000);
    let mut v2 = v1.clone();
    v2[100_000..104_096].copy_from_slice(&firmware("patch", 4096));
    repo.publish("1.0.0", &v1);
    let (release, delta, _) = repo.publish_with_delta("2.0.0", &v2, |d| d);
    let dev = SimDevice::new_at(&repo, OFFLINE, "1.0.0", &v1, SLOT_LEN, "");
    let file = dev.dir().join("fw-2.0.0.bundle");
    let said = bundle(&repo, HARDWARE, "2.0.0", &["--delta-from", "1.0.0"], &file);
    assert!(said.contains(&delta) && said.contains("expires"), "{said}");

    let out = dev.agent(&["install", "--bundle", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(REBOOT), "{}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "trial boot", "{s}");
    assert_eq!(s["last_install"]["source"]["kind"], "bundle", "{s}");
    assert_eq!(
        s["last_install"]["via"]["target"],
        delta.as_str(),
        "by delta: {s}"
    );

    // After the reboot into the trial: health checks and commit, no network.
    let out = dev.agent(&["run", "--offline"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    assert_eq!(s["running_version"], "2.0.0");
    assert_eq!(
        (&s["booted"], &s["primary"], &s["floor"]),
        (&"b".into(), &"b".into(), &"2.0.0".into())
    );
    assert_eq!(dev.slot_sha256(SlotId::B, v2.len()), sha256_hex(&v2));
    assert_eq!(
        dev.slot_sha256(SlotId::A, v1.len()),
        sha256_hex(&v1),
        "old slot kept"
    );
    assert!(release.contains("2.0.0"));
    assert!(
        dev.dir().join("state/time-floor").is_file(),
        "the time floor is recorded"
    );

    // The same bundle again: nothing newer in it.
    let again = dev.agent(&["install", "--bundle", file.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("not newer than the running 2.0.0"),
        "{}",
        text(&again)
    );
}

#[test]
fn tampered_truncated_wrong_hardware_downgrade_and_expired_bundles_are_refused() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let v2 = firmware("2.0.0", 250_000);
    repo.publish("1.0.0", &v1);
    let name = repo.publish("2.0.0", &v2);
    // A release for other hardware, published with the real repo-tool.
    let other = repo.root_dir().parent().unwrap().join("fw-other-2.1.0.bin");
    std::fs::write(&other, firmware("other", 10_000)).unwrap();
    let keys = repo.key("root").parent().unwrap().to_owned();
    let root = repo.root_dir();
    let added = repo.repo_tool(&[
        "add",
        "--repo",
        root.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
        "--image",
        other.to_str().unwrap(),
        "--version",
        "2.1.0",
        "--hardware",
        "gw-other",
        "--channel",
        CHANNEL,
        "--waves",
        "now",
        "--deltas",
        "0",
    ]);
    assert!(added.status.success(), "{}", text(&added));

    let dev = SimDevice::new_at(&repo, OFFLINE, "1.0.0", &v1, SLOT_LEN, "");
    let dir = dev.dir().to_owned();
    let good = dir.join("good.bundle");
    bundle(&repo, HARDWARE, "2.0.0", &[], &good);

    // Tampered image: one byte of the image member flipped (the tar stays well-formed).
    let digest: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&v2)).into();
    let image_member = ota_publish::target_file_path(&name, &digest);
    let (at, len) = member(&good, image_member.to_str().unwrap());
    assert_eq!(len, v2.len());
    let bad = altered(&good, dir.join("tampered.bundle"), |b| b[at + 1234] ^= 0x40);
    assert_refused(&dev, &bad, &["sha256 mismatch", &name]);

    // Tampered metadata: a hex digit of the timestamp's signature changed.
    let (at, len) = member(&good, "metadata/timestamp.json");
    let bad = altered(&good, dir.join("tampered-meta.bundle"), |b| {
        let sig = std::str::from_utf8(&b[at..at + len])
            .unwrap()
            .find("\"sig\":\"")
            .unwrap()
            + 7;
        b[at + sig] = if b[at + sig] == b'0' { b'1' } else { b'0' };
    });
    assert_refused(&dev, &bad, &["timestamp", "threshold"]);

    // Truncated: cut inside the image; the error names the member.
    let (at, _) = member(&good, image_member.to_str().unwrap());
    let bad = altered(&good, dir.join("truncated.bundle"), |b| b.truncate(at + 1000));
    assert_refused(&dev, &bad, &["truncated", image_member.to_str().unwrap()]);

    // Wrong hardware: a verified bundle, but its release is for gw-other.
    let wrong = dir.join("other.bundle");
    bundle(&repo, "gw-other", "2.1.0", &[], &wrong);
    assert_refused(&dev, &wrong, &["refused", "2.1.0 is not for hardware gw-sim"]);

    // Downgrade: a device running 2.0.0 is offered 1.0.0.
    let newer = SimDevice::new_at(&repo, OFFLINE, "2.0.0", &v2, SLOT_LEN, "");
    let old = dir.join("old.bundle");
    bundle(&repo, HARDWARE, "1.0.0", &[], &old);
    assert_refused(
        &newer,
        &old,
        &["refused", "1.0.0 is not newer than the running 2.0.0"],
    );

    // Expired: the repository's timestamp re-signed to last one second, bundled, then let expire.
    let refreshed = repo.repo_tool(&[
        "refresh",
        "--repo",
        root.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
        "--timestamp-expires",
        "1s",
    ]);
    assert!(refreshed.status.success(), "{}", text(&refreshed));
    let stale = dir.join("stale.bundle");
    bundle(&repo, HARDWARE, "2.0.0", &[], &stale);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_refused(&dev, &stale, &["timestamp: expired at"]);

    // None of that harmed the device: the good bundle still installs.
    let out = dev.agent(&["install", "--bundle", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(REBOOT), "{}", text(&out));
    let out = dev.agent(&["run", "--offline"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dev.status()["running_version"], "2.0.0");
}
