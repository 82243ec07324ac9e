//! The real `repo-tool` binary in temp directories: the release engineer's commands end to end,
//! exit codes and messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{add_args, fails, ok, repo_tool, sha256_file, tree, INIT};

fn setup() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    ok(
        t.path(),
        &[
            "keys",
            "generate",
            "--dir",
            "keys",
            "root",
            "targets",
            "snapshot",
            "timestamp",
        ],
    );
    t
}

#[test]
fn keys_are_private_and_never_overwritten() {
    let t = setup();
    let d = t.path();
    let mode = fs::metadata(d.join("keys/root.pk8"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = fs::read(d.join("keys/root.pk8")).unwrap();
    let out = repo_tool(d, &["keys", "generate", "--dir", "keys", "root"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(fs::read(d.join("keys/root.pk8")).unwrap(), before);
}

#[test]
fn init_prints_the_root_fingerprint_and_its_qr_code() {
    let t = setup();
    let out = ok(t.path(), INIT);
    let fp = sha256_file(&t.path().join("repo/metadata/1.root.json"));
    assert!(out.lines().any(|l| l == fp), "{out}");
    assert!(out.contains('▀') || out.contains('▄'), "no QR code in: {out}");
    let root = fs::read_to_string(t.path().join("repo/metadata/1.root.json")).unwrap();
    assert!(root.contains("\"consistent_snapshot\":true"));
    // Whole seconds only.
    let v: serde_json::Value = serde_json::from_str(&root).unwrap();
    let expires = v["signed"]["expires"].as_str().unwrap();
    assert_eq!(expires.len(), "2027-01-01T00:00:00Z".len(), "{expires}");
}

#[test]
fn add_list_verify_refresh_through_the_binary() {
    let t = setup();
    let d = t.path();
    ok(d, INIT);
    fs::write(d.join("fw.bin"), vec![7u8; 3000]).unwrap();
    let out = ok(
        d,
        &[
            "add",
            "--repo",
            "repo",
            "--keys-dir",
            "keys",
            "--image",
            "fw.bin",
            "--version",
            "1.2.3",
            "--hardware",
            "gw-a",
            "--hardware",
            "gw-b",
            "--channel",
            "stable",
            "--rollout",
            "25",
        ],
    );
    assert!(out.contains("added gw-a/stable/1.2.3/fw.bin"), "{out}");
    let sha = sha256_file(&d.join("fw.bin"));
    assert!(d
        .join(format!("repo/targets/gw-a/stable/1.2.3/{sha}.fw.bin"))
        .is_file());

    // Bulk add of a directory.
    fs::create_dir(d.join("bulk")).unwrap();
    for v in ["2.0.0", "2.1.0-rc.1"] {
        fs::write(d.join(format!("bulk/gw-{v}.img")), v.as_bytes()).unwrap();
    }
    ok(
        d,
        &[
            "add",
            "--repo",
            "repo",
            "--keys-dir",
            "keys",
            "--dir",
            "bulk",
            "--hardware",
            "gw-a",
            "--channel",
            "beta",
        ],
    );

    let list = ok(d, &["list", "--repo", "repo"]);
    for needle in [
        "gw-a / stable:",
        "gw-b / stable:",
        "gw-a / beta:",
        "1.2.3",
        "2.1.0-rc.1",
        "25%",
        "timestamp",
    ] {
        assert!(list.contains(needle), "{needle} missing from:\n{list}");
    }
    let verify = ok(d, &["verify", "--repo", "repo"]);
    assert!(verify.contains("3 target file(s) checked"), "{verify}");
    let warn = ok(d, &["verify", "--repo", "repo", "--warn-within", "2d"]);
    assert!(warn.contains("warning: timestamp expires"), "{warn}");

    let before = fs::read(d.join("repo/metadata/timestamp.json")).unwrap();
    ok(d, &["refresh", "--repo", "repo", "--key", "keys/timestamp.pk8"]);
    assert_ne!(fs::read(d.join("repo/metadata/timestamp.json")).unwrap(), before);
    ok(
        d,
        &[
            "refresh",
            "--repo",
            "repo",
            "--snapshot",
            "--key",
            "keys/timestamp.pk8",
            "--key",
            "keys/snapshot.pk8",
        ],
    );
    ok(d, &["verify", "--repo", "repo"]);
}

/// Issue 21: `verify` exits 1 when it ran and found problems, 2 when it could not run at all, so a
/// script can tell a damaged repository from a wrong path.
#[test]
fn issue_21_verify_exit_status_tells_problems_found_from_could_not_run() {
    let t = setup();
    let d = t.path();
    ok(d, INIT);
    fs::write(d.join("fw.bin"), vec![7u8; 3000]).unwrap();
    let add = add_args("fw.bin", "1.0.0", "gw-a", &[]);
    ok(d, &add);
    assert_eq!(repo_tool(d, &["verify", "--repo", "repo"]).status.code(), Some(0));

    // Damaged: one byte of the published image changed.
    let sha = sha256_file(&d.join("fw.bin"));
    let image = d.join(format!("repo/targets/gw-a/stable/1.0.0/{sha}.fw.bin"));
    let mut bytes = fs::read(&image).unwrap();
    bytes[0] ^= 1;
    fs::write(&image, bytes).unwrap();
    let damaged = repo_tool(d, &["verify", "--repo", "repo"]);
    let stdout = String::from_utf8_lossy(&damaged.stdout);
    assert_eq!(damaged.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("problem: "), "{stdout}");
    assert!(String::from_utf8_lossy(&damaged.stderr).contains("1 problem(s) found"));

    // Missing: nothing to check.
    let missing = repo_tool(d, &["verify", "--repo", "no-such-repo"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-repo"));

    // A usage error is "could not run" too, and `--help` documents the statuses.
    assert_eq!(repo_tool(d, &["verify"]).status.code(), Some(2));
    let help = ok(d, &["verify", "--help"]);
    assert!(
        help.contains("Exit status:") && help.contains("1  verify found problems"),
        "{help}"
    );
}

#[test]
fn nested_delegation_through_the_binary() {
    let t = setup();
    let d = t.path();
    ok(d, &["keys", "generate", "--dir", "keys", "product", "beta"]);
    ok(d, INIT);
    fn delegate<'a>(from: Option<&'a str>, role: &'a str, path: &'a str, key: &'a str) -> Vec<&'a str> {
        let mut args = vec![
            "delegate",
            "--repo",
            "repo",
            "--keys-dir",
            "keys",
            "--role",
            role,
            "--path",
            path,
            "--role-key",
            key,
        ];
        if let Some(from) = from {
            args.extend(["--from", from]);
        }
        args
    }
    let out = ok(
        d,
        &delegate(None, "product", "product/*/*/*", "keys/product.pub.json"),
    );
    assert!(out.contains("delegated to role product from targets"), "{out}");
    let err = fails(
        d,
        &delegate(
            Some("nope"),
            "product-beta",
            "product/beta/*/*",
            "keys/beta.pub.json",
        ),
    );
    assert!(err.contains("no such role to delegate from"), "{err}");
    let err = fails(
        d,
        &delegate(
            Some("product"),
            "product-beta",
            "other/beta/*/*",
            "keys/beta.pub.json",
        ),
    );
    assert!(
        err.contains("is not inside role product's delegated paths"),
        "{err}"
    );
    let out = ok(
        d,
        &delegate(
            Some("product"),
            "product-beta",
            "product/beta/*/*",
            "keys/beta.pub.json",
        ),
    );
    assert!(
        out.contains("delegated to role product-beta from product"),
        "{out}"
    );
    fs::write(d.join("fw.bin"), vec![3u8; 500]).unwrap();
    ok(
        d,
        &[
            "add",
            "--repo",
            "repo",
            "--keys-dir",
            "keys",
            "--role",
            "product-beta",
            "--image",
            "fw.bin",
            "--version",
            "0.9.0",
            "--hardware",
            "product",
            "--channel",
            "beta",
        ],
    );
    let list = ok(d, &["list", "--repo", "repo"]);
    assert!(list.contains("(role product-beta)"), "{list}");
    let verify = ok(d, &["verify", "--repo", "repo"]);
    assert!(verify.contains("1 target file(s) checked"), "{verify}");
}

#[test]
fn refresh_without_the_timestamp_key_exits_non_zero_with_a_clear_message() {
    let t = setup();
    let d = t.path();
    ok(d, INIT);
    let err = fails(d, &["refresh", "--repo", "repo", "--key", "keys/snapshot.pk8"]);
    assert!(
        err.contains("role timestamp needs 1 signature(s) but only 0"),
        "{err}"
    );
    let err = fails(d, &["refresh", "--repo", "repo", "--key", "keys/missing.pk8"]);
    assert!(
        err.contains("keys/missing.pk8") && err.contains("no such key file"),
        "{err}"
    );
}

/// Runs a command that must fail without waiting for anything: a command that blocked on the lock
/// instead of failing is killed after a minute and fails the test.
fn fails_without_waiting(dir: &Path, args: &[&str]) -> String {
    let before = tree(&dir.join("repo"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_repo-tool"))
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{args:?} waited for the lock instead of failing");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{args:?} should have failed");
    assert_eq!(tree(&dir.join("repo")), before, "{args:?} changed the repository");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_second_command_on_a_locked_repository_fails_at_once_naming_the_lock_and_its_holder() {
    let t = setup();
    let d = t.path();
    ok(d, INIT);
    fs::write(d.join("fw.bin"), vec![7u8; 3000]).unwrap();
    let add = add_args("fw.bin", "1.0.0", "gw-a", &[]);
    // This test process holds the lock, as a long bulk add in another terminal would.
    let held = ota_publish::RepoLock::acquire(&d.join("repo"), "test holder").unwrap();
    let holder = format!("pid {} (test holder)", std::process::id());
    for args in [
        add.as_slice(),
        &["refresh", "--repo", "repo", "--keys-dir", "keys"],
    ] {
        let err = fails_without_waiting(d, args);
        assert!(err.contains("repo/.repo-tool.lock is locked by"), "{err}");
        assert!(err.contains(&holder), "{err}");
    }
    drop(held);
    ok(d, &add);
    ok(d, &["verify", "--repo", "repo"]);
    // The lock file is beside the served directories, never inside them.
    assert!(d.join("repo").join(ota_publish::LOCK_FILE).is_file());
}

#[test]
fn malformed_flags_are_refused_and_change_nothing() {
    let t = setup();
    let d = t.path();
    ok(d, INIT);
    fs::write(d.join("fw.bin"), b"x").unwrap();
    let add = [
        "add",
        "--repo",
        "repo",
        "--keys-dir",
        "keys",
        "--image",
        "fw.bin",
        "--hardware",
        "gw-a",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--channel", "stable"], "--version"),
        (&["--version", "1.0.0"], "--channel"),
        (
            &["--version", "1.0.0", "--channel", "stable", "--rollout", "101"],
            "101",
        ),
        (
            &[
                "--version",
                "1.0.0",
                "--channel",
                "stable",
                "--targets-expires",
                "5x",
            ],
            "lifetime",
        ),
        (
            &["--version", "1.0.0", "--channel", "stable", "--name", "../x.bin"],
            "invalid target name",
        ),
        (&["--version", "v1", "--channel", "stable"], "invalid version"),
        (
            &["--version", "1.0.0", "--channel", "stable", "--dir", "."],
            "cannot be used with",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = add.to_vec();
        args.extend_from_slice(extra);
        let err = fails(d, &args);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    let err = fails(
        d,
        &[
            "root",
            "stage",
            "--repo",
            "repo",
            "--out",
            "s.json",
            "--threshold",
            "root",
        ],
    );
    assert!(err.contains("expected ROLE=VALUE"), "{err}");
    let err = fails(
        d,
        &[
            "root",
            "stage",
            "--repo",
            "repo",
            "--out",
            "s.json",
            "--threshold",
            "admin=1",
        ],
    );
    assert!(
        err.contains("expected root, targets, snapshot or timestamp"),
        "{err}"
    );
}

#[test]
fn root_rotation_signed_in_steps_through_the_binary() {
    let t = setup();
    let d = t.path();
    ok(d, INIT);
    ok(d, &["keys", "generate", "--dir", "other", "root2"]);
    ok(
        d,
        &[
            "root",
            "stage",
            "--repo",
            "repo",
            "--out",
            "root-v2.json",
            "--add-key",
            "root=other/root2.pub.json",
            "--threshold",
            "root=2",
        ],
    );
    let err = fails(
        d,
        &[
            "root",
            "publish",
            "--repo",
            "repo",
            "root-v2.json",
            "--keys-dir",
            "keys",
        ],
    );
    assert!(err.contains("needs 1 signature(s) but only 0"), "{err}");
    let out = ok(
        d,
        &[
            "root",
            "sign",
            "root-v2.json",
            "--repo",
            "repo",
            "--key",
            "keys/root.pk8",
        ],
    );
    assert!(out.contains("1/2 signatures of the new root's keys"), "{out}");
    let err = fails(
        d,
        &[
            "root",
            "publish",
            "--repo",
            "repo",
            "root-v2.json",
            "--keys-dir",
            "keys",
        ],
    );
    assert!(err.contains("new root's threshold"), "{err}");
    let out = ok(d, &["root", "sign", "root-v2.json", "--key", "other/root2.pk8"]);
    assert!(out.contains("2/2"), "{out}");
    ok(
        d,
        &[
            "root",
            "publish",
            "--repo",
            "repo",
            "root-v2.json",
            "--keys-dir",
            "keys",
        ],
    );
    assert!(d.join("repo/metadata/2.root.json").is_file());
    let verify = ok(d, &["verify", "--repo", "repo"]);
    assert!(verify.contains("2 root version(s)"), "{verify}");
}

#[test]
fn an_error_prints_each_cause_once_down_to_the_os_error() {
    let t = setup();
    let d = t.path();
    ok(d, INIT);
    let out = repo_tool(
        d,
        &[
            "add",
            "--repo",
            "repo",
            "--keys-dir",
            "keys",
            "--image",
            "missing.bin",
            "--version",
            "1.0.0",
            "--hardware",
            "gw",
            "--channel",
            "stable",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.matches("No such file or directory (os error 2)").count(),
        1,
        "{err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("missing.bin"), "names the file: {err}");
}
