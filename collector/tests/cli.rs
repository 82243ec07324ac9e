//! Issue 15, the collector's command line: `enroll`, `revoke` and `summary` run as the real binary; the
//! summary's counts match what devices sent over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write as _;
use std::process::Stdio;

use common::*;
use ota_report::{Outcome, ReportSigner as _};

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn enroll_reads_the_provision_output_and_refuses_conflicts() {
    let db = Db::new();
    let key = device_key(7);
    let id = key.public_key().device_id().to_string();
    let printed = format!(
        "device id     {id}\npublic key    {}\nidentity      created\n",
        hex::encode(key.verifying_key().as_bytes())
    );
    let mut child = collector_bin()
        .args(["enroll", "--db", db.arg(), "--key-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(printed.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out).0, format!("enrolled {id} (ed25519)\n"));

    let hex = hex::encode(key.verifying_key().as_bytes());
    let again = collector(&["enroll", "--db", db.arg(), "--key", &hex]);
    assert!(again.status.success());
    assert!(text(&again).0.starts_with("already enrolled"));

    // A typo in the key: refused by a rule (exit 1), the cause printed once.
    let bad = collector(&["enroll", "--db", db.arg(), "--key", "abcd"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad).1;
    assert!(
        err.contains("2 bytes") && err.matches("not a device key").count() == 1,
        "{err}"
    );

    let revoke = collector(&["revoke", "--db", db.arg(), "--device", &id]);
    assert!(revoke.status.success(), "{:?}", text(&revoke));
    let re_enrol = collector(&["enroll", "--db", db.arg(), "--key", &hex]);
    assert_eq!(re_enrol.status.code(), Some(1));
    assert!(text(&re_enrol).1.contains("revoked"), "{:?}", text(&re_enrol));
    let unknown = collector(&["revoke", "--db", db.arg(), "--device", "dev-0123456789abcdef"]);
    assert_eq!(unknown.status.code(), Some(1));
}

/// A PostgreSQL server off this machine is refused (no TLS yet), before any connection, and the
/// password given in the URL is not printed.
#[test]
fn a_remote_postgres_url_is_refused_without_showing_its_password() {
    let out = collector_bin()
        .args(["summary"])
        .env("COLLECTOR_DB", "postgres://collector:s3cret@db.example.net/fleet")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out).1;
    assert!(
        err.contains("postgres://collector:***@db.example.net/fleet") && err.contains("TLS"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

on_both_stores!(summary_counts_each_device_once_by_its_latest_report);

/// Six devices on 1.1.0: three commit, one rolls back, one fails then commits (counted once, by its
/// latest report), one fails twice for the same reason; a seventh reported only on 1.0.1 and is
/// pending on 1.1.0, the newest release of its line.
/// Through the real binary (`enroll`, `serve`, `summary`) on either store.
fn summary_counts_each_device_once_by_its_latest_report(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(summary_counts(StoreDb::new(backend)));
}

async fn summary_counts(db: StoreDb) {
    let keys: Vec<_> = (10..17).map(device_key).collect();
    for k in &keys {
        let hex = hex::encode(k.verifying_key().as_bytes());
        let out = collector(&["enroll", "--db", db.location(), "--key", &hex]);
        assert!(out.status.success(), "{:?}", text(&out));
    }
    let server = Server::start(db.location(), &[]);
    let client = reqwest::Client::new();
    let sent = [
        (0, 1, "1.1.0", Outcome::Committed, ""),
        (1, 1, "1.1.0", Outcome::Committed, ""),
        (2, 1, "1.1.0", Outcome::Committed, ""),
        (3, 1, "1.1.0", Outcome::RolledBack, "health check network failed"),
        (4, 1, "1.1.0", Outcome::Failed, "download timed out"),
        (4, 2, "1.1.0", Outcome::Committed, ""),
        (5, 1, "1.1.0", Outcome::Failed, "download timed out"),
        (5, 2, "1.1.0", Outcome::Failed, "hash mismatch"),
        (6, 1, "1.0.1", Outcome::Committed, ""),
    ];
    for (k, seq, to, outcome, reason) in sent {
        let body = signed(&report(&keys[k], seq, to, outcome, reason), &keys[k]);
        let (status, answer) = post(&client, &server.base, body).await;
        assert_eq!(status, 201, "{answer}");
    }
    // The PostgreSQL client blocks: off the async workers.
    assert_eq!(tokio::task::block_in_place(|| db.rows()).0, 9);

    let out = collector(&["summary", "--db", db.location(), "--json"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let api: serde_json::Value = client
        .get(format!("{}/v1/summary", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cli, api);

    let releases = cli["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 2);
    let (old, new) = (&releases[0], &releases[1]);
    assert_eq!(
        (
            old["to_version"].as_str(),
            old["devices"].as_u64(),
            old["committed"].as_u64()
        ),
        (Some("1.0.1"), Some(1), Some(1))
    );
    assert_eq!(
        old["pending"], 0,
        "only the newest release of a line has devices pending"
    );
    assert_eq!(new["to_version"], "1.1.0");
    for (field, n) in [
        ("devices", 6),
        ("committed", 4),
        ("rolled_back", 1),
        ("failed", 1),
        ("skipped", 0),
        ("pending", 1),
    ] {
        assert_eq!(new[field], n, "{field}: {new}");
    }
    let reasons = new["top_failure_reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().all(|r| r["devices"] == 1));
    assert!(reasons.iter().any(|r| r["reason"] == "hash mismatch"));
    assert!(
        !reasons.iter().any(|r| r["reason"] == "download timed out"),
        "superseded by later reports"
    );

    let table = collector(&["summary", "--db", db.location()]);
    let (stdout, _) = text(&table);
    let line = stdout.lines().find(|l| l.contains("1.1.0")).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols,
        ["board-a", "stable", "1.1.0", "6", "4", "1", "1", "0", "0/0", "1"]
    );
    assert!(stdout.contains("1 x health check network failed"), "{stdout}");
}
