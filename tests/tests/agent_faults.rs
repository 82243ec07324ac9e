//! Issue 23, the device's faults, each driving the real `device-agent` binary against a repository built
//! by repo-tool and served by nginx: an aliased slot, downloads killed again and again, a drip-feeding
//! mirror, and local trust taken on faith (permissions, a zeroed pinned root, a hand-edited record).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota_e2e::{agent_binary, firmware, sha256_hex, SimDevice, TestRepo, REBOOT};
use ota_slot::SlotId;

const SLOT_LEN: u64 = 1 << 20;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Rewrites the device's agent.toml: each `(from, to)` replaced, then `extra` appended.
fn edit_config(dev: &SimDevice, swaps: &[(&str, &str)], extra: &str) {
    let mut toml = std::fs::read_to_string(dev.config()).unwrap();
    for (from, to) in swaps {
        assert!(toml.contains(from), "{from} not in {toml}");
        toml = toml.replace(from, to);
    }
    toml.push_str(extra);
    std::fs::write(dev.config(), toml).unwrap();
}

/// A mirror serving the repository's files at a throttled rate (bytes per second, changeable while it
/// runs; 0 = as fast as it can), one thread per connection.
struct DripMirror {
    url: String,
    rate: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
}

impl DripMirror {
    fn start(root: PathBuf, bytes_per_sec: u64) -> DripMirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let served = Arc::new(AtomicU64::new(0));
        let (r, s) = (rate.clone(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, r, s) = (root.clone(), r.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &root, &r, &s));
            }
        });
        DripMirror { url, rate, served }
    }
}

fn serve(mut stream: TcpStream, root: &Path, rate: &AtomicU64, served: &AtomicU64) {
    let mut line = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/');
    let Ok(body) = std::fs::read(root.join(path)) else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    // Ten slices a second at the current rate.
    let mut at = 0;
    while at < body.len() {
        let r = rate.load(Ordering::Relaxed);
        let step = if r == 0 {
            body.len()
        } else {
            (r / 10).max(1) as usize
        };
        let end = (at + step).min(body.len());
        if stream.write_all(&body[at..end]).is_err() {
            return;
        }
        served.fetch_add((end - at) as u64, Ordering::Relaxed);
        at = end;
        if r != 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Item 1: a slot B that is slot A by another path, or through a symlink, is refused at config load
/// with both paths named, and slot A is never written.
#[test]
fn issue_23_a_slot_b_that_is_slot_a_is_refused_at_load() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    repo.publish("2.0.0", &firmware("2.0.0", 200_000));
    let d = dev.dir().display().to_string();
    std::fs::create_dir(dev.dir().join("alias")).unwrap();
    std::os::unix::fs::symlink(dev.dir().join("slot-a.img"), dev.dir().join("link-a.img")).unwrap();
    let slot_a_before = dev.slot_bytes(SlotId::A);
    let real_b = format!("path = \"{d}/slot-b.img\"");
    let mut current = real_b.clone();
    for alias in [
        format!("{d}/alias/../alias/../slot-a.img"),
        format!("{d}/link-a.img"),
    ] {
        let next = format!("path = \"{alias}\"");
        edit_config(&dev, &[(&current, &next)], "");
        current = next;
        for args in [&["run", "--once"][..], &["status"][..]] {
            let out = dev.agent(args);
            let t = text(&out);
            assert!(!out.status.success(), "{args:?} accepted slot b = {alias}: {t}");
            assert!(
                t.contains(&alias) && t.contains(&format!("{d}/slot-a.img")),
                "{t}"
            );
            assert!(t.contains("same file"), "{t}");
        }
        assert!(dev.slot_bytes(SlotId::A) == slot_a_before, "slot A was written");
    }
    edit_config(&dev, &[(&current, &real_b)], "");
    let (out, _) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dev.status()["running_version"], "2.0.0");
}

/// Starts `run --once` and SIGKILLs it once the mirror has served `bytes` more of the image.
fn kill_during_download(dev: &SimDevice, mirror: &DripMirror, bytes: u64) {
    let before = mirror.served.load(Ordering::Relaxed);
    let mut child = Command::new(agent_binary())
        .arg("--config")
        .arg(dev.config())
        .args(["run", "--once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while mirror.served.load(Ordering::Relaxed) < before + bytes {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the download never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the agent ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Item 2: `run --once` killed (SIGKILL) four times during the download of a good release: the release
/// stays eligible, the attempts are counted with the next try time in `status` and `status --json`,
/// the loop breaker backs off instead of condemning it, and an honest run installs it.
#[test]
fn issue_23_killed_downloads_leave_the_release_eligible() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let v2 = firmware("2.0.0", 400_000);
    repo.publish("2.0.0", &v2);
    let mirror = DripMirror::start(repo.root_dir(), 40_000);
    let targets = format!("targets_url = \"{}/targets\"", repo.url());
    edit_config(
        &dev,
        &[(&targets, &format!("targets_url = \"{}/targets\"", mirror.url))],
        "\n[poll]\nretry_backoff_secs = 2\nretry_backoff_max_secs = 4\n",
    );
    for _ in 0..4 {
        kill_during_download(&dev, &mirror, 40_000);
    }
    // The start after the fourth kill: the loop breaker stops the attempt and backs off.
    let out = dev.agent(&["run", "--once"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("next try in"), "{t}");
    let s = dev.status();
    assert_eq!(
        s["failed"],
        serde_json::json!([]),
        "the release is not condemned: {s}"
    );
    assert_eq!(s["retry"]["version"], "2.0.0", "{s}");
    assert_eq!(s["retry"]["attempts"], 4, "{s}");
    assert!(s["retry"]["next_try_unix"].as_u64().unwrap() > 0, "{s}");
    let out = dev.agent(&["status"]);
    assert!(
        text(&out).contains("retry       4 attempts at 2.0.0"),
        "{}",
        text(&out)
    );
    // An honest mirror, once the backoff has run out.
    mirror.rate.store(0, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 1, "{}", text(&out));
    let s = dev.status();
    assert_eq!(
        (s["state_name"].as_str(), s["running_version"].as_str()),
        (Some("committed"), Some("2.0.0")),
        "{s}"
    );
    assert_eq!(dev.slot_sha256(SlotId::B, v2.len()), sha256_hex(&v2));
    assert!(s["retry"].is_null(), "a verified image clears the count: {s}");
}

/// Item 4: a mirror dripping 100 bytes/s is cut within the rate window, with a message naming the
/// rate, not after its total timeout.
#[test]
fn issue_23_a_drip_feed_is_cut_within_the_rate_window() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    repo.publish("2.0.0", &firmware("2.0.0", 400_000));
    let mirror = DripMirror::start(repo.root_dir(), 100);
    let targets = format!("targets_url = \"{}/targets\"", repo.url());
    edit_config(
        &dev,
        &[
            (&targets, &format!("targets_url = \"{}/targets\"", mirror.url)),
            (
                "request_timeout_secs = 10",
                "request_timeout_secs = 60\nmin_rate_bytes_per_sec = 1024\nrate_window_secs = 5",
            ),
        ],
        "",
    );
    let start = Instant::now();
    let out = dev.agent(&["run", "--once"]);
    let took = start.elapsed();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("below the minimum rate of 1024 bytes/s"), "{t}");
    assert!(
        took < Duration::from_secs(15),
        "cut after {took:?}, not within the 5 s window: {t}"
    );
    let s = dev.status();
    assert_eq!(s["failed"], serde_json::json!([]), "{s}");
    assert_eq!(s["retry"]["attempts"], 1, "{s}");
    eprintln!("drip feed at 100 B/s cut after {took:?}");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Item 5a: an open state directory, a symlinked identity key in a shared directory and a pinned root
/// overwritten with zeros are each refused at start, naming the file.
#[test]
fn issue_23_local_trust_is_checked_at_start() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let state = dev.dir().join("state");
    let refused = |what: &str| {
        for args in [&["run", "--once"][..], &["status"][..]] {
            let out = dev.agent(args);
            assert!(!out.status.success(), "{args:?} accepted {what}: {}", text(&out));
            assert!(text(&out).contains(what), "{}", text(&out));
        }
    };
    chmod(&state, 0o777);
    refused("state directory");
    chmod(&state, 0o700);

    let key = state.join("identity.pk8");
    let shared = dev.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    std::fs::rename(&key, shared.join("identity.pk8")).unwrap();
    std::os::unix::fs::symlink(shared.join("identity.pk8"), &key).unwrap();
    refused("identity key's directory");
    std::fs::remove_file(&key).unwrap();
    std::fs::rename(shared.join("identity.pk8"), &key).unwrap();

    let pinned = state.join("root.sha256");
    let good = std::fs::read(&pinned).unwrap();
    std::fs::write(&pinned, vec![0u8; good.len()]).unwrap();
    refused("root.sha256");
    std::fs::write(&pinned, format!("{}\n", "0".repeat(64))).unwrap();
    refused("root.sha256");
    std::fs::write(&pinned, good).unwrap();
    assert!(dev.agent(&["status"]).status.success());
}

/// Item 5b: a hand-edited state.json claiming 2.0.0 is installed in slot B (which holds nothing of
/// it) must not commit: the slot is hashed again, the trial rolled back saying why, the floor left
/// alone, and the release then installed for real.
#[test]
fn issue_23_a_hand_edited_record_does_not_commit() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let v2 = firmware("2.0.0", 300_000);
    let target = repo.publish("2.0.0", &v2);
    let file = dev.dir().join("state/state.json");
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let image = serde_json::json!({
        "target": target, "version": "2.0.0", "sha256": sha256_hex(&v2), "length": v2.len(),
    });
    record["state"] = serde_json::json!({
        "state": "installed", "slot": "b", "image": image, "from": "a", "restarts": 0,
    });
    record["slot_b"] = serde_json::json!({"version": "2.0.0", "sha256": sha256_hex(&v2), "length": v2.len()});
    std::fs::write(&file, serde_json::to_vec_pretty(&record).unwrap()).unwrap();

    let mut log = String::new();
    let mut rolled_back = false;
    for _ in 0..10 {
        let out = dev.agent(&["run", "--once"]);
        log.push_str(&text(&out));
        let s = dev.status();
        if s["state_name"] == "rolled back" {
            rolled_back = true;
            assert_eq!(s["floor"], "1.0.0", "the floor did not rise: {s}");
            assert_eq!(
                s["failed"],
                serde_json::json!([]),
                "the release stays eligible: {s}"
            );
        }
        assert!(
            s["state_name"] != "committed" || dev.slot_sha256(SlotId::B, v2.len()) == sha256_hex(&v2),
            "committed a slot that does not hold 2.0.0: {log}"
        );
        if out.status.code() != Some(REBOOT) && s["state_name"] == "committed" {
            break;
        }
    }
    assert!(rolled_back, "{log}");
    assert!(log.contains("does not hold"), "{log}");
    let s = dev.status();
    assert_eq!(
        (s["state_name"].as_str(), s["floor"].as_str()),
        (Some("committed"), Some("2.0.0")),
        "{s}\n{log}"
    );
}
