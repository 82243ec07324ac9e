//! Fixtures shared by the end-to-end suites in `tests/`: a TUF repository built in-process with
//! repo-tool's library and served by a real nginx ([`TestRepo`]), deterministic firmware images
//! ([`firmware`]), and a simulated device that runs the real `device-agent` binary over file slots and the
//! simulated bootloader, where a reboot is a process restart ([`SimDevice`]); the collector and the
//! misbehaving servers of the report suites ([`collector`]).
//!
//! Test-only: it panics with a clear message instead of returning errors.
#![deny(missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod collector;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ota_publish::{AddOptions, InitSpec, KeyRing, ReleaseSpec, RoleSpec};
use ota_slot::{FileSlot, SimBootloader, SlotId, SlotWriter};
use ota_testbed::Nginx;
use sha2::{Digest, Sha256};

/// The hardware id the simulated devices report.
pub const HARDWARE: &str = "gw-sim";
/// The channel they follow.
pub const CHANNEL: &str = "stable";

/// A deterministic pseudo-random firmware image of `len` bytes, different for every version.
pub fn firmware(version: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block: [u8; 32] = Sha256::digest(format!("firmware {version}")).into();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block).into();
    }
    out.truncate(len);
    out
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A TUF repository made with repo-tool's library (one key per top-level role), served by nginx.
pub struct TestRepo {
    dir: tempfile::TempDir,
    ring: KeyRing,
    fingerprint: String,
    nginx: Nginx,
}

impl TestRepo {
    /// Generates keys, initialises the repository and starts nginx on it.
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let mut spec_keys = Vec::new();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            let k = ota_publish::generate_key(&keys, role).unwrap();
            spec_keys.push(ota_publish::read_public_key(&k.public_path).unwrap());
        }
        let ring = KeyRing::from_dir(&keys).unwrap();
        let role = |i: usize| RoleSpec {
            keys: vec![spec_keys[i].clone()],
            threshold: 1,
        };
        let spec = InitSpec {
            root: role(0),
            targets: role(1),
            snapshot: role(2),
            timestamp: role(3),
            expiries: Default::default(),
        };
        let repo = dir.path().join("repo");
        fs::create_dir_all(&repo).unwrap();
        let fp = ota_publish::init(&repo, &spec, &ring).unwrap();
        let nginx = Nginx::serve(&repo);
        TestRepo {
            dir,
            ring,
            fingerprint: fp.sha256,
            nginx,
        }
    }

    /// The repository directory nginx serves.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// The first root (what devices pin).
    pub fn root_json(&self) -> PathBuf {
        self.root_dir().join("metadata/1.root.json")
    }

    /// sha256 of the first root, as repo-tool prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.nginx.url()
    }

    /// Writes `image` beside the repository and describes it as release `version` for [`HARDWARE`] on
    /// [`CHANNEL`], fully rolled out.
    fn release_spec(&self, version: &str, image: &[u8]) -> ReleaseSpec {
        let file = self.dir.path().join(format!("fw-{version}.bin"));
        fs::write(&file, image).unwrap();
        ReleaseSpec {
            image: file,
            version: version.into(),
            hardware: vec![HARDWARE.into()],
            channel: CHANNEL.into(),
            rollout_percent: 100,
            name: None,
        }
    }

    /// Publishes `image` as release `version` for [`HARDWARE`] on [`CHANNEL`]; returns the target name.
    pub fn publish(&self, version: &str, image: &[u8]) -> String {
        let spec = self.release_spec(version, image);
        let report = ota_publish::add(&self.root_dir(), &[spec], &AddOptions::default(), &self.ring).unwrap();
        report.added[0].0.clone()
    }

    /// Publishes `image` as release `version` with a delta from the newest older release, made by
    /// `ota_delta` and then passed through `tamper` (identity for an honest delta; the result is what
    /// gets signed). Returns the release's target name and the delta's (name, bytes as published).
    pub fn publish_with_delta(
        &self,
        version: &str,
        image: &[u8],
        tamper: impl Fn(Vec<u8>) -> Vec<u8>,
    ) -> (String, String, Vec<u8>) {
        let spec = self.release_spec(version, image);
        let policy = ota_publish::deltas::DeltaPolicy {
            keep: 1,
            max_share_percent: 50,
            ..ota_publish::deltas::DeltaPolicy::default()
        };
        // Fast settings: the tests need a real, small delta, not the smallest one.
        let opts = ota_delta::EncodeOptions {
            level: 6,
            extreme: false,
            // One thread: with two, a single candidate's delta came out 9x larger (83870 vs 9686 bytes
            // on agent_delta's images; reported to ota-delta's owner).
            threads: 1,
            filters: ota_delta::FilterChoice::Only(vec![ota_delta::Filter::None]),
            ..ota_delta::EncodeOptions::default()
        };
        let mut made = None;
        let mut encoder = |old: &[u8], new: &[u8]| {
            let delta = tamper(ota_delta::encode(old, new, &opts).map_err(|e| e.to_string())?);
            made = Some(delta.clone());
            Ok(delta)
        };
        let report = ota_publish::deltas::add_with_deltas(
            &self.root_dir(),
            &[spec],
            &AddOptions::default(),
            &self.ring,
            &policy,
            &mut encoder,
        )
        .unwrap();
        assert!(report.skipped.is_empty(), "delta not kept: {:?}", report.skipped);
        let delta = made.expect("no older release to make a delta from");
        let names: Vec<&String> = report.add.added.iter().map(|(n, _, _)| n).collect();
        let release = names.iter().find(|n| !n.ends_with(".delta")).unwrap();
        let delta_name = names.iter().find(|n| n.ends_with(".delta")).unwrap();
        ((*release).clone(), (*delta_name).clone(), delta)
    }

    /// The private key file of `name` (a top-level role, or a key made by [`TestRepo::new_key`]).
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("keys")
            .join(format!("{name}{}", ota_publish::PRIVATE_KEY_SUFFIX))
    }

    /// Generates another key (for example a rollout-control key) beside the role keys; returns its
    /// private key file.
    pub fn new_key(&self, name: &str) -> PathBuf {
        ota_publish::generate_key(&self.dir.path().join("keys"), name).unwrap();
        self.key(name)
    }

    /// Runs the real `repo-tool` binary with `args` (the tests pass `--repo`, [`TestRepo::root_dir`]).
    pub fn repo_tool(&self, args: &[&str]) -> Output {
        Command::new(built_binary("repo-tool"))
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .unwrap()
    }

    /// `repo-tool rollout <verb> --version V <extra>` for the test hardware id and channel, signed with
    /// only the `control` key and the snapshot and timestamp keys, as the operator does; its stdout.
    pub fn rollout(&self, control: &Path, verb: &str, version: &str, extra: &[&str]) -> String {
        let root = self.root_dir();
        let (snapshot, timestamp) = (self.key("snapshot"), self.key("timestamp"));
        let mut args = vec![
            "rollout",
            verb,
            "--repo",
            root.to_str().unwrap(),
            "--hardware",
            HARDWARE,
            "--channel",
            CHANNEL,
            "--version",
            version,
            "--key",
            control.to_str().unwrap(),
            "--key",
            snapshot.to_str().unwrap(),
            "--key",
            timestamp.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = self.repo_tool(&args);
        assert!(out.status.success(), "repo-tool {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The file nginx serves for target `name` whose content hashes to `sha256`.
    pub fn target_file(&self, name: &str, image: &[u8]) -> PathBuf {
        let digest: [u8; 32] = Sha256::digest(image).into();
        self.root_dir().join(ota_publish::target_file_path(name, &digest))
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        TestRepo::new()
    }
}

/// The `device-agent` binary, built once per test process (`cargo build -p device-agent`), so the
/// suites run the real program even when only this crate's tests were asked for.
pub fn agent_binary() -> PathBuf {
    built_binary("device-agent")
}

/// The `collector` binary, built once per test process like [`agent_binary`].
pub fn collector_binary() -> PathBuf {
    built_binary("collector")
}

/// The `repo-tool` binary, built once per test process like [`agent_binary`].
pub fn repo_tool_binary() -> PathBuf {
    built_binary("repo-tool")
}

/// The example `name` of workspace package `package` (`cargo build -p PACKAGE --example NAME`), built
/// in the profile of the running test.
pub fn example_binary(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(ota_testbed::workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        package,
        "--example",
        name,
    ]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("run cargo build").success(),
        "building example {name} failed"
    );
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.is_file(), "example {name} not found at {}", bin.display());
    bin
}

/// The binary `name` of the workspace package of the same name, built once per test process.
fn built_binary(name: &'static str) -> PathBuf {
    static BINS: std::sync::Mutex<Vec<(&'static str, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut bins = BINS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, bin)) = bins.iter().find(|(n, _)| *n == name) {
        return bin.clone();
    }
    let bin = build_binary(name);
    bins.push((name, bin.clone()));
    bin
}

fn build_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(ota_testbed::workspace_root())
        .args(["build", "--quiet", "-p", name, "--bin", name]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building {name} failed");
    let bin = profile_dir.join(name);
    assert!(bin.is_file(), "{name} binary not found at {}", bin.display());
    bin
}

/// Exit status of the agent after a simulated reboot.
pub const REBOOT: i32 = device_agent::REBOOT_EXIT_CODE;

/// A simulated device: two file slots, the simulated bootloader's env file, a state directory and a
/// config, driven by running the real `device-agent` binary (a reboot is a process restart).
pub struct SimDevice {
    dir: tempfile::TempDir,
    /// Capacity of each slot.
    pub slot_len: u64,
    /// What `provision` printed (device id, public key, ...).
    pub provisioned: String,
    /// Environment variables every `device-agent` run gets (a token's `SOFTHSM2_CONF`).
    pub env: Vec<(String, PathBuf)>,
}

impl SimDevice {
    /// A device whose slot A holds `factory` (version `version`), booted from A, with health checks
    /// `checks_toml` (TOML `[[health.checks]]` tables), provisioned against `repo`.
    pub fn new(
        repo: &TestRepo,
        version: &str,
        factory: &[u8],
        slot_len: u64,
        checks_toml: &str,
    ) -> SimDevice {
        SimDevice::new_at(repo, &repo.url(), version, factory, slot_len, checks_toml)
    }

    /// [`SimDevice::new`], reading the repository from `url` (`metadata/` and `targets/` under it:
    /// an object store's bucket) instead of the repository's nginx.
    pub fn new_at(
        repo: &TestRepo,
        url: &str,
        version: &str,
        factory: &[u8],
        slot_len: u64,
        checks_toml: &str,
    ) -> SimDevice {
        let mut dev = SimDevice::unprovisioned(url, factory, slot_len, checks_toml);
        let out = dev.provision(
            &repo.root_json(),
            repo.fingerprint(),
            version,
            &factory.len().to_string(),
            &[],
        );
        assert!(
            out.status.success(),
            "provision failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dev.provisioned = String::from_utf8_lossy(&out.stdout).into_owned();
        dev
    }

    /// A device as [`SimDevice::new_at`] makes it, not provisioned yet (its config may be changed
    /// first: an identity in a token, say).
    pub fn unprovisioned(url: &str, factory: &[u8], slot_len: u64, checks_toml: &str) -> SimDevice {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for id in [SlotId::A, SlotId::B] {
            FileSlot::create(d.join(format!("slot-{id}.img")), slot_len).unwrap();
        }
        let mut a = FileSlot::open(d.join("slot-a.img"), slot_len).unwrap();
        let mut w = SlotWriter::new(&mut a, factory.len() as u64).unwrap();
        std::io::Write::write_all(&mut w, factory).unwrap();
        w.finish().unwrap();
        SimBootloader::create_file(d.join("bootenv"), SlotId::A).unwrap();
        let config = format!(
            r#"state_dir = "{d}/state"
hardware_id = "{HARDWARE}"
channel = "{CHANNEL}"

[repository]
metadata_url = "{url}/metadata"
targets_url = "{url}/targets"
request_timeout_secs = 10

[slots.a]
path = "{d}/slot-a.img"
capacity = {slot_len}
[slots.b]
path = "{d}/slot-b.img"
capacity = {slot_len}

[boot]
backend = "sim"
env = "{d}/bootenv"

[health]
deadline_secs = 20
{checks_toml}
"#,
            d = d.display()
        );
        fs::write(d.join("agent.toml"), config).unwrap();
        SimDevice {
            dir,
            slot_len,
            provisioned: String::new(),
            env: Vec::new(),
        }
    }

    /// The device's public key, hex, as `provision` printed it (what a collector enrols).
    pub fn public_key(&self) -> String {
        let line = self.provisioned.lines().find(|l| l.starts_with("public key"));
        line.and_then(|l| l.split_whitespace().last())
            .expect("provision printed no public key")
            .to_owned()
    }

    /// The device's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// Runs `device-agent provision` trusting `root` (checked against `fingerprint`), with the running
    /// firmware's `version` and `length`, and any `extra` arguments.
    pub fn provision(
        &self,
        root: &Path,
        fingerprint: &str,
        version: &str,
        length: &str,
        extra: &[&str],
    ) -> Output {
        let mut args = vec![
            "provision",
            "--root",
            root.to_str().unwrap(),
            "--fingerprint",
            fingerprint,
            "--running-version",
            version,
            "--running-length",
            length,
        ];
        args.extend_from_slice(extra);
        self.agent(&args)
    }

    /// Runs `device-agent --config <config> args...`.
    pub fn agent(&self, args: &[&str]) -> Output {
        Command::new(agent_binary())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// Runs `device-agent run --once`, restarting it after every simulated reboot, until it exits
    /// without asking for one. Returns the final run's output and how many reboots happened.
    pub fn run_until_settled(&self) -> (Output, usize) {
        let mut reboots = 0;
        loop {
            let out = self.agent(&["run", "--once"]);
            if out.status.code() != Some(REBOOT) {
                return (out, reboots);
            }
            reboots += 1;
            assert!(
                reboots < 10,
                "reboot loop: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// `device-agent status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.agent(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The raw bytes of slot `id` (whole file).
    pub fn slot_bytes(&self, id: SlotId) -> Vec<u8> {
        fs::read(self.dir.path().join(format!("slot-{id}.img"))).unwrap()
    }

    /// sha256 of the first `len` bytes of slot `id`.
    pub fn slot_sha256(&self, id: SlotId, len: usize) -> String {
        sha256_hex(&self.slot_bytes(id)[..len])
    }
}

/// A command's stdout then stderr, as one text for assertions on what the agent said.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
