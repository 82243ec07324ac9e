//! A real TUF repository with rollout control, for the tests where the collector halts by a rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, dead_code)]

use std::path::PathBuf;

use chrono::Utc;

use ota_report::Outcome;

use super::collector;

/// A repository with release 1.2.0 of board-a on stable (one wave: everyone now), its keys in `keys/`.
pub struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        for role in ["root", "targets", "snapshot", "timestamp", "rollout-control"] {
            ota_publish::generate_key(&keys, role).unwrap();
        }
        let ring = ota_publish::KeyRing::from_dir(&keys).unwrap();
        let role = |name: &str| ota_publish::RoleSpec {
            keys: vec![ota_publish::read_public_key(
                &keys.join(format!("{name}{}", ota_publish::PUBLIC_KEY_SUFFIX)),
            )
            .unwrap()],
            threshold: 1,
        };
        let spec = ota_publish::InitSpec {
            root: role("root"),
            targets: role("targets"),
            snapshot: role("snapshot"),
            timestamp: role("timestamp"),
            expiries: ota_publish::Expiries::default(),
        };
        let repo = dir.path().join("repo");
        ota_publish::init(&repo, &spec, &ring).unwrap();
        ota_publish::rollout_init(
            &repo,
            &role("rollout-control"),
            &ota_publish::Expiries::default(),
            &ring,
        )
        .unwrap();
        let image = dir.path().join("fw.img");
        std::fs::write(&image, vec![7u8; 4096]).unwrap();
        let release = ota_publish::ReleaseSpec {
            image,
            version: "1.2.0".into(),
            hardware: vec!["board-a".into()],
            channel: "stable".into(),
            rollout_percent: 100,
            name: None,
        };
        let options = ota_publish::AddOptions {
            waves: Some(ota_publish::WavesSpec::Now),
            ..ota_publish::AddOptions::default()
        };
        ota_publish::add(&repo, &[release], &options, &ring).unwrap();
        Repo { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// The halt's keys: rollout-control, snapshot, timestamp (never root or targets).
    pub fn halt_key_files(&self) -> Vec<PathBuf> {
        ["rollout-control", "snapshot", "timestamp"]
            .iter()
            .map(|r| self.dir.path().join("keys").join(format!("{r}.pk8")))
            .collect()
    }

    pub fn halt_keys(&self) -> ota_publish::KeyRing {
        let refs: Vec<ota_publish::KeyRef> = self
            .halt_key_files()
            .into_iter()
            .map(ota_publish::KeyRef::File)
            .collect();
        collector::halt::load_halt_keys(&refs, None).unwrap()
    }

    /// The state and reason the signed rollout-control file gives 1.2.0 of board-a.
    pub fn standing(&self) -> (ota_release::RolloutState, String) {
        let status = ota_publish::rollout_status(
            &self.path(),
            Some("board-a"),
            Some("stable"),
            None,
            Utc::now().timestamp(),
        )
        .unwrap();
        let release = status.channels[0]
            .releases
            .iter()
            .find(|r| r.version == "1.2.0")
            .unwrap()
            .clone();
        (release.state, release.reason)
    }
}

/// Serves `db` (devices 1-3 enrolled here) with the rule `rollback_percent=60,min_reports=3` ticking
/// every second over `repo`, its halt keys given when `keys`, then sends reports on 1.2.0 numbered
/// `sequence` that trip it: devices 1 and 2 rolled back, 3 committed.
pub async fn serve_and_trip_the_rule(
    db: &super::Db,
    repo: &Repo,
    keys: bool,
    sequence: u64,
) -> super::Server {
    for n in 1..=3 {
        db.enroll(&super::device_key(n));
    }
    let mut args: Vec<String> = [
        "--halt-rule",
        "rollback_percent=60,min_reports=3",
        "--halt-interval-secs",
        "1",
        "--repo",
        repo.path().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if keys {
        for key in repo.halt_key_files() {
            args.push("--halt-key".into());
            args.push(key.display().to_string());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = super::Server::start(&db.path, &args);
    let client = reqwest::Client::new();
    for (n, outcome) in [
        (1, Outcome::RolledBack),
        (2, Outcome::RolledBack),
        (3, Outcome::Committed),
    ] {
        let key = super::device_key(n);
        let body = super::signed(&super::report(&key, sequence, "1.2.0", outcome, "health"), &key);
        assert_eq!(super::post(&client, &server.base, body).await.0, 201);
    }
    server
}

/// `collector summary --json` once it lists an action (the timer's first ticks), at most ~60 s.
pub async fn wait_for_action(db: &std::path::Path) -> serde_json::Value {
    for _ in 0..600 {
        let out = collector(&["summary", "--json", "--db", db.to_str().unwrap()]);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if summary["actions"].as_array().is_some_and(|a| !a.is_empty()) {
            return summary;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no halt recorded");
}
