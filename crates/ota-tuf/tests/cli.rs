//! The conformance client binary (tuf-conformance CLIENT-CLI): init / refresh / download, exit codes,
//! stable target paths, and no second fetch of a target already present.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod common;

use std::process::Command;

use ota_testbed::Nginx;

fn client_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ota-tuf-client"))
}

#[test]
fn conformance_cli_init_refresh_download() {
    let fixture = common::python_repo(&["full"]);
    let out = common::out(&fixture);
    let nginx = Nginx::serve(&out.join("repo"));
    let meta = tempfile::tempdir().unwrap();
    let targets = tempfile::tempdir().unwrap();
    let md = meta.path().join("md");
    let meta_url = format!("{}/metadata", nginx.url());
    let target_url = format!("{}/targets", nginx.url());

    let status = client_bin()
        .arg("--metadata-dir")
        .arg(&md)
        .arg("init")
        .arg(out.join("initial_root.json"))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(nginx.requests_served(), 0, "init makes no request");

    let status = client_bin()
        .args(["--metadata-url", &meta_url])
        .arg("--metadata-dir")
        .arg(&md)
        .arg("refresh")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));

    let download = |names: &[&str]| {
        let mut cmd = client_bin();
        cmd.args(["--metadata-url", &meta_url])
            .arg("--metadata-dir")
            .arg(&md);
        for n in names {
            cmd.args(["--target-name", n]);
        }
        cmd.arg("--target-dir")
            .arg(targets.path())
            .args(["--target-base-url", &target_url, "download"]);
        cmd.output().unwrap()
    };
    let result = download(&["a/deep/x.txt", "bins/f3"]);
    assert_eq!(
        result.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let landed = targets.path().join("a%2Fdeep%2Fx.txt");
    assert_eq!(std::fs::read(&landed).unwrap(), b"nested delegation\n");
    assert_eq!(
        std::fs::read(targets.path().join("bins%2Ff3")).unwrap(),
        b"hash-binned 3\n"
    );

    // Present with matching hashes: not fetched again (only the root probe and timestamp are requested).
    let before = nginx.requests_served();
    let result = download(&["a/deep/x.txt"]);
    assert_eq!(result.status.code(), Some(0));
    assert_eq!(nginx.requests_served() - before, 2);

    // A corrupted local copy is replaced at the same path.
    std::fs::write(&landed, b"tampered").unwrap();
    assert_eq!(download(&["a/deep/x.txt"]).status.code(), Some(0));
    assert_eq!(std::fs::read(&landed).unwrap(), b"nested delegation\n");

    // An unknown target fails with exit 1 and a message; the first failure stops the list.
    let result = download(&["missing/everywhere.txt", "top.txt"]);
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stderr).contains("missing/everywhere.txt"));
    assert!(!targets.path().join("top.txt").exists());

    // Bad arguments are exit 1 too.
    assert_eq!(client_bin().arg("refresh").status().unwrap().code(), Some(1));
}
