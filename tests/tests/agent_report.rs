//! Issue 15, device side: the real `device-agent` binary reports every update outcome to the real
//! `collector` binary (SQLite) on 127.0.0.1, through its bounded on-disk queue; a collector that is
//! down, stalls or answers without end costs the device nothing but the queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ota_e2e::collector::{Collector, Misbehaviour, RawServer};
use ota_e2e::{agent_binary, firmware, text, SimDevice, TestRepo, REBOOT};
use ota_report::{Envelope, Outcome, Report};

const SLOT_LEN: u64 = 1 << 20;
/// Only a hang runs into this (each exchange with the collector is bounded by a few seconds).
const HANG: Duration = Duration::from_secs(120);

/// A device on 1.0.0 reporting to `collector_url` (short timeouts and retries), whose health check
/// fails while 3.0.0 runs; attempts at a release are retried at once (a test makes several).
fn device(repo: &TestRepo, collector_url: &str) -> SimDevice {
    let dev = SimDevice::new(repo, "1.0.0", &firmware("1.0.0", 100_000), SLOT_LEN, "");
    let config = dev.config();
    let bin = agent_binary();
    let mut toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("deadline_secs = 20", "deadline_secs = 3\nretry_interval_secs = 1");
    toml.push_str(&format!(
        r#"[[health.checks]]
name = "self-test"
command = ["sh", "-c", "! '{bin}' --config '{config}' status --json | grep -q '\"running_version\": \"3.0.0\"'"]
timeout_secs = 10

[poll]
retry_backoff_secs = 0

[report]
collector_url = "{collector_url}"
max_reports = 2
connect_timeout_secs = 1
timeout_secs = 2
retry_secs = 1
retry_max_secs = 2
"#,
        bin = bin.display(),
        config = config.display()
    ));
    std::fs::write(&config, toml).unwrap();
    dev
}

/// Points the device at another collector.
fn report_to(dev: &SimDevice, url: &str) {
    let toml = std::fs::read_to_string(dev.config()).unwrap();
    let start = toml.find("collector_url = ").unwrap();
    let end = start + toml[start..].find('\n').unwrap();
    let toml = format!("{}collector_url = \"{url}\"{}", &toml[..start], &toml[end..]);
    std::fs::write(dev.config(), toml).unwrap();
}

/// `device-agent run --once`, failing the test if it has not exited within [`HANG`].
fn run_once(dev: &SimDevice) -> Output {
    let out_path = dev.dir().join("run.out");
    let err_path = dev.dir().join("run.err");
    let mut child = Command::new(agent_binary())
        .arg("--config")
        .arg(dev.config())
        .args(["run", "--once"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HANG {
            child.kill().ok();
            panic!(
                "device-agent hung: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(out_path).unwrap(),
        stderr: std::fs::read(err_path).unwrap(),
    }
}

/// `run --once` again after every simulated reboot, until the agent settles; asserts it succeeded.
fn settle(dev: &SimDevice) -> Output {
    for _ in 0..10 {
        let out = run_once(dev);
        if out.status.code() != Some(REBOOT) {
            assert!(out.status.success(), "{}", text(&out));
            return out;
        }
    }
    panic!("reboot loop");
}

/// The queue as `status --json` shows it.
fn queue(dev: &SimDevice) -> serde_json::Value {
    dev.status()["reports"].clone()
}

/// The reports waiting in the device's queue, oldest first, as signed.
fn queued_reports(state_dir: &Path) -> Vec<Report> {
    let mut files: Vec<_> = std::fs::read_dir(state_dir.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dsse"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let envelope = Envelope::from_json(&std::fs::read(p).unwrap()).unwrap();
            Report::from_payload(envelope.payload()).unwrap()
        })
        .collect()
}

#[test]
fn outcomes_reach_the_collector_once_and_in_order_after_it_was_down() {
    let repo = TestRepo::new();
    let mut collector = Collector::new();
    let dev = device(&repo, &collector.url());

    // The collector is down: the update is not held up, its report waits in the queue.
    repo.publish("2.0.0", &firmware("2.0.0", 200_000));
    settle(&dev);
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    let q = &s["reports"];
    assert_eq!(
        (q["count"].as_u64(), q["delivered"].as_u64()),
        (Some(1), Some(0)),
        "{q}"
    );
    assert!(!q["last_error"].is_null(), "the failed send is shown: {q}");
    let human = text(&dev.agent(&["status"]));
    assert!(human.contains("reports     1 queued"), "{human}");
    assert!(human.contains("last send error"), "{human}");

    // A release that fails its health check: rolled back, reported too.
    repo.publish("3.0.0", &firmware("3.0.0", 150_000));
    settle(&dev);
    assert_eq!(dev.status()["state_name"], "rolled back");
    assert_eq!(queue(&dev)["count"], 2);

    // The collector comes up and enrols the device: both arrive, in order (a report sent after a
    // later one would be refused as a replay), once.
    collector.start();
    collector.enroll(&dev.public_key());
    settle(&dev);
    let q = queue(&dev);
    assert_eq!(q["count"], 0, "{q}");
    assert_eq!(
        (q["delivered"].as_u64(), q["refused"].as_u64()),
        (Some(2), Some(0)),
        "{q}"
    );
    assert!(q["last_error"].is_null(), "{q}");
    let v2 = collector.release("2.0.0");
    assert_eq!(
        (v2["devices"].as_u64(), v2["committed"].as_u64()),
        (Some(1), Some(1)),
        "{v2}"
    );
    let v3 = collector.release("3.0.0");
    assert_eq!(
        (v3["devices"].as_u64(), v3["rolled_back"].as_u64()),
        (Some(1), Some(1)),
        "{v3}"
    );
    let reason = v3["top_failure_reasons"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("self-test"), "{v3}");

    // Nothing is sent twice: another run finds the queue empty.
    settle(&dev);
    let q = queue(&dev);
    assert_eq!(
        (q["delivered"].as_u64(), q["refused"].as_u64()),
        (Some(2), Some(0)),
        "{q}"
    );
}

#[test]
fn a_stalling_or_endless_collector_does_not_hang_the_agent_or_hold_up_the_update() {
    let repo = TestRepo::new();
    let stall = RawServer::start(Misbehaviour::Stall);
    let dev = device(&repo, &stall.url());

    repo.publish("2.0.0", &firmware("2.0.0", 200_000));
    settle(&dev);
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "the update went through: {s}");
    assert_eq!(s["reports"]["count"], 1, "{s}");
    assert!(!s["reports"]["last_error"].is_null(), "{s}");

    for (how, says) in [
        (Misbehaviour::EndlessBody, "503"),
        (Misbehaviour::Slowloris, ""),
        (Misbehaviour::Stall, ""),
    ] {
        let server = RawServer::start(how);
        report_to(&dev, &server.url());
        settle(&dev);
        let q = queue(&dev);
        assert_eq!(q["count"], 1, "{how:?}: the report waits: {q}");
        let error = q["last_error"]["text"].as_str().unwrap();
        assert!(error.contains(says), "{how:?}: {error}");
        assert!(error.len() < 1024, "{how:?}: the answer is read bounded: {error}");
    }

    // A 201 followed by an endless body: delivered, the body never read.
    let accepting = RawServer::start(Misbehaviour::EndlessAccepted);
    report_to(&dev, &accepting.url());
    settle(&dev);
    let q = queue(&dev);
    assert_eq!(
        (q["count"].as_u64(), q["delivered"].as_u64()),
        (Some(0), Some(1)),
        "{q}"
    );
}

#[test]
fn a_full_queue_drops_the_oldest_and_the_next_report_counts_it() {
    let repo = TestRepo::new();
    let mut collector = Collector::new();
    let dev = device(&repo, &collector.url());

    // Three failed attempts (the served image is not the signed one), then a good one: four outcomes
    // into a queue of two while the collector is down.
    let v2 = firmware("2.0.0", 200_000);
    let name = repo.publish("2.0.0", &v2);
    let served = repo.target_file(&name, &v2);
    let mut wrong = v2.clone();
    wrong[1000] ^= 0xff;
    std::fs::write(&served, &wrong).unwrap();
    for n in 1..=3 {
        let out = run_once(&dev);
        assert!(!out.status.success(), "attempt {n}: {}", text(&out));
        assert_eq!(dev.status()["state_name"], "failed");
    }
    std::fs::write(&served, &v2).unwrap();
    settle(&dev);
    assert_eq!(dev.status()["state_name"], "committed");

    let q = queue(&dev);
    assert_eq!(
        (q["count"].as_u64(), q["dropped"].as_u64()),
        (Some(2), Some(2)),
        "{q}"
    );
    let kept = queued_reports(&dev.dir().join("state"));
    let seen: Vec<(u64, Outcome, u64)> = kept
        .iter()
        .map(|r| (r.sequence, r.outcome, r.reports_dropped))
        .collect();
    // Reports 1 and 2 were dropped: 3 was signed before its own enqueue dropped 1, 4 after that drop
    // (its own enqueue dropping 2, which the next report would count).
    assert_eq!(seen, [(3, Outcome::Failed, 0), (4, Outcome::Committed, 1)]);
    assert!(!kept[0].reason.as_str().is_empty(), "a failure says why");
    assert_eq!(kept[1].to_version.to_string(), "2.0.0");

    collector.start();
    collector.enroll(&dev.public_key());
    settle(&dev);
    let q = queue(&dev);
    assert_eq!(
        (q["count"].as_u64(), q["delivered"].as_u64()),
        (Some(0), Some(2)),
        "{q}"
    );
    let v2 = collector.release("2.0.0");
    assert_eq!(
        (v2["devices"].as_u64(), v2["committed"].as_u64()),
        (Some(1), Some(1)),
        "{v2}"
    );
}

/// `repo-tool rollout init` (once), then `repo-tool rollout <verb> --version V` for each `(verb, V)`:
/// signed with the rollout-control key, as the operator does.
fn rollout_control(repo: &TestRepo, steps: &[(&str, &str)]) {
    let control = repo.key("rollout-control");
    let root = repo.root_dir();
    let root = root.to_str().unwrap();
    let (targets, snapshot, timestamp) = (repo.key("targets"), repo.key("snapshot"), repo.key("timestamp"));
    let [targets, snapshot, timestamp] = [&targets, &snapshot, &timestamp].map(|k| k.to_str().unwrap());
    let run = |args: &[&str]| {
        let out = repo.repo_tool(args);
        assert!(out.status.success(), "repo-tool {args:?}: {}", text(&out));
    };
    if !control.exists() {
        let control = repo.new_key("rollout-control");
        let control = control.to_str().unwrap();
        let init = [
            "rollout",
            "init",
            "--repo",
            root,
            "--control-key",
            control,
            "--key",
            targets,
        ];
        run(&[&init[..], &["--key", snapshot, "--key", timestamp]].concat());
    }
    for (verb, version) in steps {
        repo.rollout(&control, verb, version, &[]);
    }
}

#[test]
fn a_halted_or_pulled_release_is_reported_skipped_once() {
    let repo = TestRepo::new();
    let mut collector = Collector::new();
    let dev = device(&repo, &collector.url());
    repo.publish("2.0.0", &firmware("2.0.0", 200_000));
    rollout_control(&repo, &[("halt", "2.0.0")]);

    // The collector is down: the skip waits in the queue, signed, once however often the device polls.
    for _ in 0..2 {
        settle(&dev);
        assert_eq!(dev.status()["running_version"], "1.0.0");
        let seen: Vec<(u64, Outcome, String)> = queued_reports(&dev.dir().join("state"))
            .iter()
            .map(|r| (r.sequence, r.outcome, r.to_version.to_string()))
            .collect();
        assert_eq!(seen, [(1, Outcome::SkippedHalted, "2.0.0".into())]);
    }
    let halted = &queued_reports(&dev.dir().join("state"))[0];
    assert!(
        halted
            .reason
            .as_str()
            .contains("2.0.0: the rollout is halted since"),
        "{halted:?}"
    );
    assert_eq!(halted.from_version.to_string(), "1.0.0");

    // Pulled next: reported once more, for the new cause.
    rollout_control(&repo, &[("pull", "2.0.0")]);
    settle(&dev);
    settle(&dev);
    let seen: Vec<(u64, Outcome)> = queued_reports(&dev.dir().join("state"))
        .iter()
        .map(|r| (r.sequence, r.outcome))
        .collect();
    assert_eq!(seen, [(1, Outcome::SkippedHalted), (2, Outcome::SkippedPulled)]);

    // The collector counts the device as skipped (its latest report), not pending.
    collector.start();
    collector.enroll(&dev.public_key());
    settle(&dev);
    assert_eq!(numbers(&queue(&dev), &["count", "delivered"]), [0, 2]);
    let v2 = collector.release("2.0.0");
    assert_eq!(numbers(&v2, &["devices", "skipped", "pending"]), [1, 1, 0]);

    // Resumed and installed: its ordinary outcome, and nothing more about the skip.
    rollout_control(&repo, &[("resume", "2.0.0")]);
    settle(&dev);
    settle(&dev);
    assert_eq!(dev.status()["running_version"], "2.0.0");
    assert_eq!(numbers(&queue(&dev), &["count", "delivered"]), [0, 3]);
    let v2 = collector.release("2.0.0");
    assert_eq!(numbers(&v2, &["devices", "committed", "skipped"]), [1, 1, 0]);
}

/// The named counts of a JSON object (a queue's status, a release's summary); panics naming the object
/// when one is missing or not a count.
fn numbers(object: &serde_json::Value, names: &[&str]) -> Vec<u64> {
    names
        .iter()
        .map(|name| {
            object[*name]
                .as_u64()
                .unwrap_or_else(|| panic!("no count {name:?} in {object}"))
        })
        .collect()
}
