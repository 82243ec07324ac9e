//! The start-up limits check, through the real `ota-drill` binary under a low open-file limit (set with
//! the shell's `ulimit -n` for the child alone).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

/// `ota-drill ARGS` with its open-file limit (soft and hard) at `limit`.
fn drill_under_limit(limit: u32, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_ota-drill"))
        .args(args)
        .output()
        .expect("run sh")
}

#[test]
fn a_fleet_over_the_open_file_limit_is_refused_at_the_start_with_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let work = dir.path().join("work");
    let run = drill_under_limit(
        100,
        &[
            "--devices",
            "10000",
            "--concurrency",
            "64",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
            "--work-dir",
            work.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    // What it needs, what the machine gives, and both ways to get there.
    assert!(stderr.contains("this drill needs 544 open files"), "{stderr}");
    assert!(stderr.contains("the open-file limit is 100"), "{stderr}");
    assert!(stderr.contains("`ulimit -n 544`"), "{stderr}");
    assert!(stderr.contains("lower --concurrency to 8 or less"), "{stderr}");
    // Refused before any work: nothing published, no device provisioned, no report.
    assert!(!work.exists(), "the scratch directory was made");
    assert!(!out.exists(), "a report was written");
}

#[test]
fn a_drill_within_the_limit_runs_to_the_end_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    // 32 + 8 x 8 = 96 open files needed: the estimate must hold for a whole drill, faults included.
    let run = drill_under_limit(
        100,
        &[
            "--devices",
            "20",
            "--concurrency",
            "8",
            "--image-kib",
            "16",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(out.join("report.json").is_file());
}
