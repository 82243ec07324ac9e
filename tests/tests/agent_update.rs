//! Issue 4 must-show: a repository built by repo-tool and served by a real nginx; a simulated device
//! (file slots, simulated bootloader) running the real `device-agent` binary, where a reboot is a
//! process restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_e2e::{firmware, sha256_hex, text, SimDevice, TestRepo};
use ota_slot::SlotId;

const SLOT_LEN: u64 = 1 << 20;

/// A health check that fails while firmware 3.0.0 runs (as if 3.0.0's own self-test failed).
fn checks(dev_config: &str) -> String {
    let bin = ota_e2e::agent_binary();
    format!(
        r#"[[health.checks]]
name = "self-test"
command = ["sh", "-c", "! '{bin}' --config '{dev_config}' status --json | grep -q '\"running_version\": \"3.0.0\"'"]
timeout_secs = 10
"#,
        bin = bin.display()
    )
}

fn device(repo: &TestRepo, v1: &[u8]) -> SimDevice {
    // The config path is only known once the device's temp dir exists; the check reads it from the
    // environment-independent path written below.
    let dev = SimDevice::new(repo, "1.0.0", v1, SLOT_LEN, "");
    let config = dev.config();
    // A failing check is retried until the deadline: a short one keeps the test quick.
    let mut toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("deadline_secs = 20", "deadline_secs = 3\nretry_interval_secs = 1");
    toml.push_str(&checks(config.to_str().unwrap()));
    std::fs::write(&config, toml).unwrap();
    dev
}

#[test]
fn healthy_update_commits_and_a_failing_release_rolls_back_and_is_not_retried() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 300_000);
    let dev = device(&repo, &v1);
    let s = dev.status();
    assert_eq!(s["running_version"], "1.0.0");
    assert_eq!(s["state_name"], "idle");

    // v1 -> v2, healthy: installed into B, trial boot, health checks pass, committed.
    let v2 = firmware("2.0.0", 400_000);
    repo.publish("2.0.0", &v2);
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 1, "one reboot into the trial: {}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    assert_eq!(s["running_version"], "2.0.0");
    assert_eq!(s["booted"], "b");
    assert_eq!(s["primary"], "b");
    assert!(s["trial"].is_null());
    assert_eq!(s["floor"], "2.0.0");
    assert_eq!(dev.slot_sha256(SlotId::B, v2.len()), sha256_hex(&v2));
    assert_eq!(
        dev.slot_sha256(SlotId::A, v1.len()),
        sha256_hex(&v1),
        "old slot kept for rollback"
    );

    // v3 fails its health check: trial boot of A, rollback to B, A marked bad.
    let v3 = firmware("3.0.0", 350_000);
    repo.publish("3.0.0", &v3);
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 2, "into the trial, then back: {}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "rolled back", "{s}");
    assert!(s["state_text"].as_str().unwrap().contains("self-test"), "{s}");
    assert_eq!(s["running_version"], "2.0.0");
    assert_eq!(s["booted"], "b");
    assert_eq!(s["primary"], "b");
    assert_eq!(s["floor"], "2.0.0", "the floor advances only at commit");
    assert_eq!(s["failed"], serde_json::json!(["3.0.0"]));

    // Not retried: polling again installs nothing and touches no slot.
    let before = dev.slot_bytes(SlotId::A);
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 0);
    assert!(text(&out).contains("up to date"), "{}", text(&out));
    assert_eq!(dev.slot_bytes(SlotId::A), before);
    let check = dev.agent(&["check"]);
    assert!(check.status.success());
    assert!(
        text(&check).contains("3.0.0 failed on this device"),
        "{}",
        text(&check)
    );

    // A newer release is taken again.
    let v4 = firmware("3.0.1", 320_000);
    repo.publish("3.0.1", &v4);
    let (out, _) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    assert_eq!(s["running_version"], "3.0.1");
    assert_eq!(s["booted"], "a");
}

#[test]
fn tampered_image_is_refused_and_the_running_slot_is_untouched() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = device(&repo, &v1);
    let v2 = firmware("2.0.0", 250_000);
    let name = repo.publish("2.0.0", &v2);
    // The attacker (or a corrupt mirror) swaps the served image for one of the same length.
    let served = repo.target_file(&name, &v2);
    let mut evil = v2.clone();
    evil[123_456] ^= 0x5a;
    std::fs::write(&served, &evil).unwrap();

    let running_before = dev.slot_bytes(SlotId::A);
    let (out, reboots) = dev.run_until_settled();
    assert!(
        !out.status.success(),
        "a tampered image must be an error: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("sha256 mismatch") || text(&out).contains("mismatch"),
        "{}",
        text(&out)
    );
    assert_eq!(reboots, 0);
    assert_eq!(
        dev.slot_bytes(SlotId::A),
        running_before,
        "running slot untouched"
    );
    let s = dev.status();
    assert_eq!(s["state_name"], "failed", "{s}");
    assert_eq!(s["booted"], "a");
    assert_eq!(s["primary"], "a");
    assert!(s["trial"].is_null(), "no trial of a refused image: {s}");
    assert_eq!(s["running_version"], "1.0.0");

    // Restored on the server: the next poll installs it (a refused download is not a failed release).
    std::fs::write(&served, &v2).unwrap();
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 1);
    assert_eq!(dev.status()["running_version"], "2.0.0");
}

#[test]
fn agent_refuses_to_run_unprovisioned_or_with_a_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 10_000);
    let dev = device(&repo, &v1);
    let key = dev.dir().join("state/identity.pk8");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dev.agent(&["run", "--once"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    std::fs::remove_file(&key).unwrap();
    let out = dev.agent(&["status"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not provisioned"), "{}", text(&out));

    // A root that does not match the fingerprint is refused at provisioning.
    let other = TestRepo::new();
    let out = dev.provision(&other.root_json(), repo.fingerprint(), "1.0.0", "10000", &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("refusing to trust it"), "{}", text(&out));
}
