//! Issue 18: a delegated role reached through two delegators (a "diamond": `targets` delegates to `a` and
//! `b`, both delegate to `release` with their own key and paths). `release` is signed by `a`'s key only,
//! so `a/fw.bin` is authorised and `b/fw.bin` (listed in the same file, under `b`'s paths) is not: the
//! client must verify `release` against `b`'s keys when the search reaches it through `b`, in the same
//! run as well as in a later run from the cached metadata. The repository is built by python-tuf's
//! Metadata API (testdata/python-tuf/make_repo.py diamond), served by nginx, and fetched by the
//! conformance client binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use ota_testbed::Nginx;

/// One run of the client binary downloading `names` (in order, stopping at the first failure).
fn download(nginx: &Nginx, md: &Path, targets: &Path, names: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ota-tuf-client"));
    cmd.args(["--metadata-url", &format!("{}/metadata", nginx.url())])
        .arg("--metadata-dir")
        .arg(md);
    for n in names {
        cmd.args(["--target-name", n]);
    }
    cmd.arg("--target-dir").arg(targets).args([
        "--target-base-url",
        &format!("{}/targets", nginx.url()),
        "download",
    ]);
    cmd.output().unwrap()
}

/// A provisioned metadata directory (init with the initial root).
fn provision(out: &Path) -> tempfile::TempDir {
    let md = tempfile::tempdir().unwrap();
    let root = std::fs::read(out.join("initial_root.json")).unwrap();
    ota_tuf::Client::init(md.path(), &root).unwrap();
    md
}

/// `b/fw.bin` was refused with a message naming the role (`release`) and the delegator (`b`).
fn assert_refused_through_b(result: &Output, targets: &Path) {
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(
        result.status.code(),
        Some(1),
        "b/fw.bin must be refused: {stderr}"
    );
    assert!(
        stderr.contains("release") && stderr.contains("signed by b"),
        "the error names the role and the delegator: {stderr}"
    );
    assert!(!targets.join("b%2Ffw.bin").exists(), "nothing lands for b/fw.bin");
}

#[test]
fn issue_18_diamond_role_is_verified_per_delegator_in_one_run() {
    let fixture = common::python_repo(&["diamond"]);
    let out = common::out(&fixture);
    let nginx = Nginx::serve(&out.join("repo"));
    let md = provision(&out);
    let targets = tempfile::tempdir().unwrap();

    let result = download(&nginx, md.path(), targets.path(), &["a/fw.bin", "b/fw.bin"]);
    assert_eq!(
        std::fs::read(targets.path().join("a%2Ffw.bin")).unwrap(),
        b"authorised through a\n"
    );
    assert_refused_through_b(&result, targets.path());
}

#[test]
fn issue_18_diamond_role_is_verified_per_delegator_across_runs() {
    let fixture = common::python_repo(&["diamond"]);
    let out = common::out(&fixture);
    let nginx = Nginx::serve(&out.join("repo"));
    let md = provision(&out);
    let targets = tempfile::tempdir().unwrap();

    let first = download(&nginx, md.path(), targets.path(), &["a/fw.bin"]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(md.path().join("release.json").exists(), "release is cached");
    let second = download(&nginx, md.path(), targets.path(), &["b/fw.bin"]);
    assert_refused_through_b(&second, targets.path());
    // And the cached copy still serves a/fw.bin through a.
    std::fs::remove_file(targets.path().join("a%2Ffw.bin")).unwrap();
    let third = download(&nginx, md.path(), targets.path(), &["a/fw.bin"]);
    assert_eq!(
        third.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
}

/// The library API: `target` and `all_targets` in one session see `a/fw.bin` only.
#[tokio::test]
async fn issue_18_diamond_library_search_and_listing() {
    let fixture = common::python_repo(&["diamond"]);
    let out = common::out(&fixture);
    let nginx = Nginx::serve(&out.join("repo"));
    let (_md, mut client) = common::client(&out, &nginx.url());
    client.refresh().await.unwrap();
    assert!(client.target("a/fw.bin").await.unwrap().is_some());
    let err = client.target("b/fw.bin").await.unwrap_err().to_string();
    assert!(err.contains("release") && err.contains("signed by b"), "{err}");
    let listed: Vec<String> = client
        .all_targets()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(listed, ["a/fw.bin"]);
}
