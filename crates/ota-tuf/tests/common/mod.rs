//! Shared test fixtures: python-tuf-built repositories and clients pointed at nginx.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ota_tuf::{Client, ClientConfig};

/// Runs testdata/python-tuf/make_repo.py with python-tuf; returns the output directory.
pub fn python_repo(args: &[&str]) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let script = ota_testbed::workspace_root().join("testdata/python-tuf/make_repo.py");
    let status = Command::new(ota_testbed::python_tuf())
        .arg(&script)
        .arg(args[0])
        .arg(out.path().join("o"))
        .args(&args[1..])
        .status()
        .expect("run make_repo.py");
    assert!(status.success(), "make_repo.py {args:?} failed");
    out
}

/// The directory make_repo.py wrote into.
pub fn out(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("o")
}

/// A fresh metadata directory provisioned with `initial_root.json`, and a client on it.
pub fn client(out: &Path, base_url: &str) -> (tempfile::TempDir, Client) {
    let meta = tempfile::tempdir().unwrap();
    let root = std::fs::read(out.join("initial_root.json")).unwrap();
    Client::init(meta.path(), &root).unwrap();
    let c = Client::load(meta.path(), config(base_url)).unwrap();
    (meta, c)
}

pub fn config(base_url: &str) -> ClientConfig {
    ClientConfig::new(format!("{base_url}/metadata"), format!("{base_url}/targets"))
}

/// Replaces everything in `live` by a copy of `state`.
pub fn serve_state(state: &Path, live: &Path) {
    if live.exists() {
        std::fs::remove_dir_all(live).unwrap();
    }
    copy_dir(state, live);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}
