//! Issue 22: `check` (the dry run) verifies what `install` would: an image larger than the inactive slot
//! is reported by `check`, which changes nothing; a release that fits gets the next step. The real
//! `device-agent` binary against a repository served by nginx.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_e2e::{firmware, text, SimDevice, TestRepo, REBOOT};
use ota_slot::SlotId;

#[test]
fn check_refuses_an_image_larger_than_the_slot_and_changes_nothing() {
    let repo = TestRepo::new();
    let slot_len = 64 * 1024;
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 10_000), slot_len, "");
    repo.publish("2.0.0", &firmware("2.0.0", 200_000));
    let before = dev.slot_bytes(SlotId::B);
    let out = dev.agent(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("would install 2.0.0"), "{said}");
    assert!(
        said.contains("is 200000 bytes but slot b holds only 65536"),
        "{said}"
    );
    assert_eq!(dev.slot_bytes(SlotId::B), before, "check wrote the slot");
    assert_eq!(dev.status()["state_name"], "idle", "check changed the state");
}

#[test]
fn check_of_a_release_that_fits_says_the_next_step_and_reboot_says_what_follows() {
    let repo = TestRepo::new();
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 10_000), 1 << 16, "");
    repo.publish("2.0.0", &firmware("2.0.0", 20_000));
    let out = dev.agent(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("fits slot b (65536 bytes)"), "{said}");
    assert!(said.contains("next: `device-agent install`"), "{said}");
    let out = dev.agent(&["install"]);
    assert_eq!(out.status.code(), Some(REBOOT), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exit 75 (reboot needed)"), "{err}");
    assert!(err.contains("start `device-agent run` again"), "{err}");
}

#[test]
fn check_json_gives_the_same_answer_as_stable_fields() {
    let repo = TestRepo::new();
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 10_000), 1 << 16, "");
    repo.publish("2.0.0", &firmware("2.0.0", 20_000));
    let out = dev.agent(&["check", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "install", "{v}");
    assert_eq!(v["release"]["version"], "2.0.0");
    assert_eq!(v["release"]["length"], 20_000);
    assert_eq!(v["release"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["purpose"], "update");
    assert_eq!(v["install_would_accept"], true);
    assert_eq!(v["refused"], serde_json::Value::Null);
    assert_eq!(v["slot"], "b");
    assert_eq!(v["capacity"], 65536);
    assert!(v["skipped"].is_array());
    assert!(v["rollout"]["seed"].is_string(), "{v}");
    assert!(
        v["next"].as_str().unwrap().contains("device-agent install"),
        "{v}"
    );
    assert_eq!(dev.status()["state_name"], "idle", "check changed the state");
}

#[test]
fn check_json_of_an_image_larger_than_the_slot_says_why_and_exits_1() {
    let repo = TestRepo::new();
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 10_000), 64 * 1024, "");
    repo.publish("2.0.0", &firmware("2.0.0", 200_000));
    let out = dev.agent(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "install");
    assert_eq!(v["install_would_accept"], false);
    let refused = v["refused"].as_str().unwrap();
    assert!(
        refused.contains("is 200000 bytes but slot b holds only 65536"),
        "{v}"
    );
    assert_eq!(v["slot"], serde_json::Value::Null);
}
