//! Issue 22: install progress. The real `device-agent` binary installs from a repository served by
//! nginx; its stderr is a pipe (not a terminal), so progress goes to the log as plain INFO lines, and
//! the progress file in the state directory is what `status` shows: `done` with the image's length
//! after an install, `failed` with the cause after a failed one, and `interrupted` when an agent died
//! mid-install and the next one starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt;

use ota_e2e::{firmware, text, SimDevice, TestRepo, REBOOT};

const IMAGE_LEN: usize = 6 << 20;
const SLOT_LEN: u64 = 8 << 20;

fn progress_file(dev: &SimDevice) -> std::path::PathBuf {
    dev.dir()
        .join("state")
        .join(device_agent::progress::PROGRESS_FILE)
}

#[test]
fn a_multi_mib_install_ends_with_a_done_record_of_the_image_length() {
    let repo = TestRepo::new();
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 4096), SLOT_LEN, "");
    repo.publish("2.0.0", &firmware("2.0.0", IMAGE_LEN));
    assert!(dev.status()["install_progress"].is_null(), "no install yet");

    let out = dev.agent(&["install"]);
    assert_eq!(out.status.code(), Some(REBOOT), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    // Not a terminal: log lines, no bar and no escape codes.
    assert!(err.contains("install progress"), "{err}");
    assert!(err.contains(&format!("total={IMAGE_LEN}")), "{err}");
    assert!(!err.contains('\u{1b}'), "escape codes on a pipe: {err:?}");

    let s = dev.status();
    let p = &s["install_progress"];
    assert_eq!(p["version"], "2.0.0", "{s}");
    assert_eq!(p["phase"], "done", "{s}");
    assert_eq!(p["total"], IMAGE_LEN as u64, "{s}");
    assert_eq!(p["bytes"], IMAGE_LEN as u64, "{s}");
    assert!(p["bytes_per_sec"].as_u64().unwrap() > 0, "{s}");
    assert!(p.get("error").is_none(), "{s}");
    let mode = std::fs::metadata(progress_file(&dev))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let human = text(&dev.agent(&["status"]));
    assert!(
        human.contains("progress    2.0.0 done: 6.0 MiB of 6.0 MiB (100%)"),
        "{human}"
    );
}

#[test]
fn a_failed_download_is_recorded_as_failed_with_its_cause() {
    let repo = TestRepo::new();
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 4096), SLOT_LEN, "");
    let image = firmware("2.0.0", IMAGE_LEN);
    let name = repo.publish("2.0.0", &image);
    std::fs::remove_file(repo.target_file(&name, &image)).unwrap();

    let out = dev.agent(&["install"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = dev.status();
    let p = &s["install_progress"];
    assert_eq!(p["phase"], "failed", "{s}");
    assert_eq!(p["total"], IMAGE_LEN as u64, "{s}");
    assert_eq!(p["bytes"], 0, "{s}");
    assert!(p["error"].as_str().unwrap().contains("404"), "{s}");
}

#[test]
fn a_record_left_running_by_a_dead_agent_is_marked_interrupted_at_the_next_start() {
    let repo = TestRepo::new();
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 4096), SLOT_LEN, "");
    // What an agent killed mid-download leaves behind.
    let left = serde_json::json!({
        "version": "2.0.0", "phase": "download", "bytes": 1024, "total": 4096,
        "bytes_per_sec": 10, "started_unix": 1, "updated_unix": 2
    });
    std::fs::write(progress_file(&dev), left.to_string()).unwrap();
    assert_eq!(dev.status()["install_progress"]["phase"], "download");

    let out = dev.agent(&["run", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = dev.status();
    assert_eq!(s["install_progress"]["phase"], "interrupted", "{s}");
    assert_eq!(s["install_progress"]["bytes"], 1024, "{s}");
    let human = text(&dev.agent(&["status"]));
    assert!(human.contains("interrupted (the agent stopped"), "{human}");
}
