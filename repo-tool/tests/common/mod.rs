//! Shared fixtures for repo-tool's integration tests: keys, a fresh repository, a tree fingerprint.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ota_publish::{DelegateSpec, Expiries, InitSpec, KeyRing, ReleaseSpec, RoleSpec};
use sha2::{Digest, Sha256};

/// A temp dir with a `keys/` directory and a repository in `repo/`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// Keys root1, targets1, snapshot1, timestamp1 and a repository (all thresholds 1).
    pub fn new() -> Fixture {
        let f = Fixture::empty();
        f.keys(&["root1", "targets1", "snapshot1", "timestamp1"]);
        let spec = InitSpec {
            root: f.role(&["root1"], 1),
            targets: f.role(&["targets1"], 1),
            snapshot: f.role(&["snapshot1"], 1),
            timestamp: f.role(&["timestamp1"], 1),
            expiries: Expiries::default(),
        };
        ota_publish::init(
            &f.repo(),
            &spec,
            &f.ring(&["root1", "targets1", "snapshot1", "timestamp1"]),
        )
        .unwrap();
        f
    }

    pub fn empty() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn key_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub fn keys(&self, names: &[&str]) {
        for n in names {
            ota_publish::generate_key(&self.key_dir(), n).unwrap();
        }
    }

    pub fn private(&self, name: &str) -> PathBuf {
        self.key_dir().join(format!("{name}.pk8"))
    }

    pub fn public(&self, name: &str) -> ota_publish::Key {
        ota_publish::read_public_key(&self.key_dir().join(format!("{name}.pub.json"))).unwrap()
    }

    pub fn key_id(&self, name: &str) -> String {
        ota_publish::key_id(&self.public(name)).unwrap()
    }

    pub fn role(&self, names: &[&str], threshold: u64) -> RoleSpec {
        RoleSpec {
            keys: names.iter().map(|n| self.public(n)).collect(),
            threshold,
        }
    }

    /// A non-terminating delegation of one path pattern to `role`, signed by one key (threshold 1).
    pub fn delegate_spec(&self, role: &str, path: &str, key: &str) -> DelegateSpec {
        DelegateSpec {
            role: role.into(),
            paths: vec![path.into()],
            keys: self.role(&[key], 1),
            terminating: false,
        }
    }

    pub fn ring(&self, names: &[&str]) -> KeyRing {
        KeyRing::from_files(&names.iter().map(|n| self.private(n)).collect::<Vec<_>>()).unwrap()
    }

    /// The usual online ring: targets, snapshot and timestamp keys.
    pub fn online(&self) -> KeyRing {
        self.ring(&["targets1", "snapshot1", "timestamp1"])
    }

    /// Writes a deterministic image of `len` bytes.
    pub fn image(&self, name: &str, len: usize, seed: u8) -> PathBuf {
        let p = self.dir.path().join("images").join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        fs::write(&p, bytes).unwrap();
        p
    }

    pub fn release(&self, image: &Path, version: &str, hw: &str) -> ReleaseSpec {
        ReleaseSpec {
            image: image.to_owned(),
            version: version.into(),
            hardware: vec![hw.into()],
            channel: "stable".into(),
            rollout_percent: 100,
            name: None,
        }
    }
}

/// Every file and directory under `dir` with the sha256 of each file: equal fingerprints mean the tree
/// is byte-for-byte the same. The lock file is left out: every command that changes a repository
/// writes its own pid and name into it, and it is not part of what is served.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<String>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Option<String>>) {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            if rel == Path::new(ota_publish::LOCK_FILE) {
                continue;
            }
            if p.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(hex::encode(Sha256::digest(fs::read(&p).unwrap()))));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Result of one ngclient run.
pub struct NgRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl NgRun {
    /// The JSON line printed for a downloaded target.
    pub fn target(&self, name: &str) -> serde_json::Value {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["target"] == name)
            .unwrap_or_else(|| {
                panic!(
                    "{name} not downloaded; stdout: {}\nstderr: {}",
                    self.stdout, self.stderr
                )
            })
    }
}

/// Runs python-tuf's ngclient (testdata/ngclient/fetch.py) against `url`.
pub fn ngclient(url: &str, trusted_root: &Path, cache: &Path, downloads: &Path, targets: &[&str]) -> NgRun {
    let python = ota_testbed::python_tuf();
    let script = ota_testbed::workspace_root().join("testdata/ngclient/fetch.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("{url}/metadata/"))
        .arg(format!("{url}/targets/"))
        .arg(trusted_root)
        .arg(cache)
        .arg(downloads)
        .args(targets)
        .output()
        .unwrap();
    NgRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

/// Runs the real `repo-tool` binary in `dir`.
pub fn repo_tool(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_repo-tool"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    succeeded(args, repo_tool(dir, args))
}

/// Checks that the run of `args` that gave `out` succeeded; returns stdout.
pub fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns stderr and checks `repo` did not change.
pub fn fails(dir: &Path, args: &[&str]) -> String {
    let before = tree(&dir.join("repo"));
    let out = repo_tool(dir, args);
    assert!(!out.status.success(), "{args:?} should have failed");
    assert_eq!(tree(&dir.join("repo")), before, "{args:?} changed the repository");
    String::from_utf8(out.stderr).unwrap()
}

/// `init` of `repo/` from the keys in `keys/`, one key per top-level role.
pub const INIT: &[&str] = &[
    "init",
    "--repo",
    "repo",
    "--keys-dir",
    "keys",
    "--root-key",
    "keys/root.pub.json",
    "--targets-key",
    "keys/targets.pub.json",
    "--snapshot-key",
    "keys/snapshot.pub.json",
    "--timestamp-key",
    "keys/timestamp.pub.json",
];

/// `add` arguments for one image on `hw`/stable with the keys in `keys/`, plus `extra`.
pub fn add_args<'a>(image: &'a str, version: &'a str, hw: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "add",
        "--repo",
        "repo",
        "--keys-dir",
        "keys",
        "--image",
        image,
        "--version",
        version,
        "--hardware",
        hw,
        "--channel",
        "stable",
    ];
    args.extend(extra);
    args
}
