//! Issue 15, the automatic halt: a rule that trips makes the collector sign a halt with the
//! rollout-control, snapshot and timestamp keys and publish it to a real repository (read back through
//! the publisher's `rollout status`, which verifies the signed metadata); without the keys it only
//! alerts; each halt or alert is stored once, with the reports that tripped it, on SQLite and on a real
//! PostgreSQL server; `collector serve` runs the rule on its timer; `summary` shows it and the dropped
//! report count. The devices' side (the real agent verifying the halt and skipping the release) is in
//! the drill (`ota-fleet/tests/drill.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use chrono::Utc;
use collector::halt::{AutoHalt, HaltRule};
use collector::{open_store, ActionKind, Store, StoredReport};
use common::*;
use ota_report::{Outcome, ReportSigner as _};

fn rule(spec: &str) -> Vec<HaltRule> {
    vec![HaltRule::parse_spec(spec).unwrap()]
}

/// Enrols devices 1..=n and stores one report each on 1.2.0: the first `rolled_back` roll back.
fn fleet_reports(store: &dyn Store, n: u8, rolled_back: u8) {
    for i in 1..=n {
        let key = device_key(i);
        store.enroll(&key.public_key(), Utc::now()).unwrap();
        let outcome = if i <= rolled_back {
            Outcome::RolledBack
        } else {
            Outcome::Committed
        };
        store_report(store, &key, 1, outcome);
    }
}

fn store_report(store: &dyn Store, key: &ed25519_dalek::SigningKey, sequence: u64, outcome: Outcome) {
    let mut report = report(key, sequence, "1.2.0", outcome, "health check failed");
    report.reports_dropped = 2;
    store
        .insert_report(&StoredReport {
            envelope: String::from_utf8(signed(&report, key)).unwrap(),
            report,
            received_at: Utc::now(),
        })
        .unwrap();
}

on_both_stores!(
    a_tripped_rule_halts_once_and_records_the_reports,
    without_keys_the_collector_only_alerts,
);

fn a_tripped_rule_halts_once_and_records_the_reports(backend: Backend) {
    let db = StoreDb::new(backend);
    let repo = Repo::new();
    let store: Arc<dyn Store> = Arc::from(open_store(db.location()).unwrap());
    let auto = AutoHalt::new(
        store.clone(),
        rule("rollback_percent=50,min_reports=4,channel=stable"),
        Some(repo.path()),
        Some(repo.halt_keys()),
        collector::halt::wall_clock(),
    );
    // Three reports: below min_reports, nothing happens even at 2 of 3 rolled back.
    fleet_reports(&*store, 3, 2);
    assert!(auto.evaluate().unwrap().is_empty());
    assert_eq!(repo.standing().0, ota_release::RolloutState::Active);

    // The fourth makes 2 of 4 rolled back: 50 %, the rule trips.
    let fourth = device_key(4);
    store.enroll(&fourth.public_key(), Utc::now()).unwrap();
    store_report(&*store, &fourth, 1, Outcome::Committed);
    let issued = auto.evaluate().unwrap();
    assert_eq!(issued.len(), 1, "{issued:?}");
    let halt = &issued[0];
    assert_eq!(halt.action, ActionKind::Halted, "{halt:?}");
    assert_eq!((halt.judged, halt.rolled_back), (4, 2));
    assert_eq!(halt.reports.len(), 4);
    assert!(halt.reports.iter().all(|r| r.sequence == 1));
    let (state, reason) = repo.standing();
    assert_eq!(state, ota_release::RolloutState::Halted);
    assert!(
        reason.contains("collector rule") && reason.contains("2 of 4"),
        "{reason}"
    );

    // Never twice: more rollbacks, another evaluation, nothing new; the one halt is stored and listed.
    let fifth = device_key(5);
    store.enroll(&fifth.public_key(), Utc::now()).unwrap();
    store_report(&*store, &fifth, 1, Outcome::RolledBack);
    assert!(auto.evaluate().unwrap().is_empty());
    let summary = store.summary().unwrap();
    assert_eq!(summary.actions.len(), 1);
    assert_eq!(summary.actions[0], *halt);
    assert_eq!(db.count("SELECT COUNT(*) FROM rollout_actions"), 1);
    // Each device's latest count of dropped reports (2 each), summed.
    assert_eq!(summary.reports_dropped, 10);
    assert_eq!(
        db.count("SELECT CAST(SUM(reports_dropped) AS BIGINT) FROM reports"),
        10
    );
}

fn without_keys_the_collector_only_alerts(backend: Backend) {
    let db = StoreDb::new(backend);
    let repo = Repo::new();
    let store: Arc<dyn Store> = Arc::from(open_store(db.location()).unwrap());
    let auto = AutoHalt::new(
        store.clone(),
        rule("rollback_percent=30,min_reports=3"),
        Some(repo.path()),
        None,
        collector::halt::wall_clock(),
    );
    assert!(!auto.can_halt());
    fleet_reports(&*store, 3, 1);
    let issued = auto.evaluate().unwrap();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].action, ActionKind::Alerted);
    assert!(
        issued[0].detail.contains("no rollout-control key"),
        "{}",
        issued[0].detail
    );
    // Nothing was published: the release still rolls out.
    assert_eq!(repo.standing().0, ota_release::RolloutState::Active);
    assert!(auto.evaluate().unwrap().is_empty());
    assert_eq!(store.actions().unwrap().len(), 1);
}

/// The server's timer runs the rule after reports are stored: reports sent over HTTP, the halt
/// published, and `summary` (text and JSON) lists it with its reports and the dropped count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_serve_halts_by_its_rule_and_summary_shows_it() {
    let db = Db::new();
    let repo = Repo::new();
    let server = serve_and_trip_the_rule(&db, &repo, true, 7).await;
    let summary = wait_for_action(&db.path).await;
    let action = &summary["actions"][0];
    assert_eq!(action["action"], "halted", "{summary}");
    assert_eq!(action["judged"], 3);
    assert_eq!(action["rolled_back"], 2);
    assert_eq!(action["reports"].as_array().unwrap().len(), 3);
    assert_eq!(action["reports"][0]["sequence"], 7);
    assert_eq!(summary["reports_dropped"], 0);
    assert_eq!(repo.standing().0, ota_release::RolloutState::Halted);
    let text = collector(&[
        "summary",
        "--db",
        db.arg(),
        "--repo",
        repo.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("halted board-a/stable 1.2.0"), "{text}");
    assert!(text.contains("2 of 3 rolled back"), "{text}");
    assert!(text.contains("reports dropped by device queues: 0"), "{text}");
    assert!(
        text.contains("wave 1 (open): committed 1, rolled back 2, failed 0"),
        "{text}"
    );
    drop(server);
}

#[test]
fn bad_rules_and_open_keys_are_refused_before_serving() {
    let db = Db::new();
    let out = collector(&[
        "serve",
        "--db",
        db.arg(),
        "--halt-rule",
        "rollback_percent=150,min_reports=3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rollback_percent 150 must be above 0 and at most 100"),
        "{err}"
    );

    let repo = Repo::new();
    let open = &repo.halt_key_files()[0];
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = collector(&[
        "serve",
        "--db",
        db.arg(),
        "--halt-rule",
        "rollback_percent=20,min_reports=3",
        "--repo",
        repo.path().to_str().unwrap(),
        "--halt-key",
        open.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mode 644") && err.contains("chmod 600"), "{err}");
}
