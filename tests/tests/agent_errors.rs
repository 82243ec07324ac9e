//! Issue 22: what the real `device-agent` binary says when it cannot run: each cause once, in order,
//! down to the OS error; plain log text (no terminal escapes) when stderr is not a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use ota_e2e::{agent_binary, firmware, SimDevice, TestRepo, REBOOT};

#[test]
fn a_missing_config_file_prints_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let out = Command::new(agent_binary())
        .arg("--config")
        .arg(&config)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.matches("No such file or directory (os error 2)").count(),
        1,
        "{err}"
    );
    assert!(err.contains(config.to_str().unwrap()), "names the file: {err}");
    assert!(err.starts_with("device-agent: "), "{err}");
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let repo = TestRepo::new();
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 10_000), 1 << 16, "");
    repo.publish("2.0.0", &firmware("2.0.0", 20_000));
    let out = dev.agent(&["run", "--once"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(REBOOT), "{err}");
    assert!(err.contains("INFO"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in a non-terminal log: {err:?}"
    );
}
