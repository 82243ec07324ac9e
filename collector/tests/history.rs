//! Issue 15, the fleet over time (`Store::history`, `GET /v1/history`, what the dashboard draws): each
//! device counted by its latest report up to each bucket's end, per release and wave, with the pending
//! devices and a status. Each behaviour runs against both stores, SQLite and a real PostgreSQL server
//! (`NAME::sqlite`, `NAME::postgres`), with reports stored at chosen times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use collector::halt::{AutoHalt, HaltRule};
use collector::{open_store, ActionKind, History, StateCounts, Status, Store, StoredReport};
use common::*;
use ota_report::{Outcome, ReportSigner as _};

on_both_stores!(
    state_over_time_follows_each_devices_latest_report,
    waves_are_counted_apart,
    a_halted_rollout_reads_halted,
    a_release_the_collector_halted_reads_halted,
    an_alert_alone_is_marked_but_changes_no_status,
    an_empty_store_has_no_history,
);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap()
}

/// Stores `key`'s report number `sequence` on `to` as received at `t0 + minutes`.
fn store_at(store: &dyn Store, key: u8, sequence: u64, to: &str, outcome: Outcome, minutes: i64) {
    let key = device_key(key);
    let reason = if outcome == Outcome::Committed {
        ""
    } else {
        "boot check failed"
    };
    let report = report(&key, sequence, to, outcome, reason);
    store
        .insert_report(&StoredReport {
            envelope: String::from_utf8(signed(&report, &key)).unwrap(),
            report,
            received_at: t0() + Duration::minutes(minutes),
        })
        .unwrap();
}

fn enrolled(backend: Backend, devices: u8) -> (StoreDb, Box<dyn Store>) {
    let db = StoreDb::new(backend);
    let store = open_store(db.location()).unwrap();
    for n in 1..=devices {
        store.enroll(&device_key(n).public_key(), t0()).unwrap();
    }
    (db, store)
}

fn counts(committed: u64, rolled_back: u64, failed: u64) -> StateCounts {
    StateCounts {
        committed,
        rolled_back,
        failed,
        ..StateCounts::default()
    }
}

/// Five devices on board-a/stable. In three buckets of 400 s over 0..20 minutes: device 1 fails then
/// commits, device 2 fails and commits within one bucket, device 3 rolls back, device 4 commits late,
/// device 5 only ever reported on 1.0.0 (so it is pending on 1.1.0).
fn the_rollout(store: &dyn Store) {
    store_at(store, 5, 1, "1.0.0", Outcome::Committed, 0);
    store_at(store, 1, 1, "1.1.0", Outcome::Failed, 0);
    store_at(store, 2, 1, "1.1.0", Outcome::Failed, 1);
    store_at(store, 2, 2, "1.1.0", Outcome::Committed, 2);
    store_at(store, 1, 2, "1.1.0", Outcome::Committed, 10);
    store_at(store, 3, 1, "1.1.0", Outcome::RolledBack, 10);
    store_at(store, 4, 1, "1.1.0", Outcome::Committed, 20);
}

fn state_over_time_follows_each_devices_latest_report(backend: Backend) {
    let (_db, store) = enrolled(backend, 5);
    the_rollout(&*store);
    let history = store.history(3).unwrap();
    assert_eq!(history.start_ms, t0().timestamp_millis());
    assert_eq!(history.buckets, 3);
    assert_eq!(history.bucket_ms, 20 * 60 * 1000 / 3 + 1);
    let names: Vec<&str> = history.releases.iter().map(|r| r.to_version.as_str()).collect();
    assert_eq!(names, ["1.0.0", "1.1.0"]);

    let old = &history.releases[0];
    assert_eq!(old.status, Status::Converged);
    assert_eq!(old.pending, [0, 0, 0]);
    assert_eq!(old.converged_after_ms, Some(0));
    assert_eq!(old.waves[0].status, Status::Converged);

    let new = &history.releases[1];
    assert_eq!(new.waves.len(), 1);
    let wave = &new.waves[0];
    assert_eq!(wave.wave, None);
    assert_eq!(
        wave.states,
        [counts(1, 0, 1), counts(2, 1, 0), counts(3, 1, 0)],
        "device 2's failure and commit in one bucket count once, as committed"
    );
    assert_eq!(new.expected, 5);
    assert_eq!(new.pending, [3, 2, 1]);
    assert_eq!(new.status, Status::Active);
    assert_eq!(wave.status, Status::Active);
    assert_eq!(new.converged_after_ms, None, "device 5 is still pending");
    assert_eq!(wave.first_report_ms, t0().timestamp_millis());
    assert_eq!(
        wave.last_report_ms,
        (t0() + Duration::minutes(20)).timestamp_millis()
    );

    // The last bucket agrees with the summary.
    let summary = store.summary().unwrap();
    let now = wave.states[2];
    let s = &summary.releases[1];
    assert_eq!(
        (now.committed, now.rolled_back, now.failed, new.pending[2]),
        (s.committed, s.rolled_back, s.failed, s.pending)
    );
}

/// Reports that name a wave (filled in by the rollout work; set here straight in the table) are
/// counted per wave; the release's pending devices are counted over all its waves.
fn waves_are_counted_apart(backend: Backend) {
    let (db, store) = enrolled(backend, 5);
    the_rollout(&*store);
    let ids: Vec<String> = [1u8, 2]
        .iter()
        .map(|n| format!("'{}'", device_key(*n).public_key().device_id()))
        .collect();
    db.exec(&format!(
        "UPDATE reports SET wave = 0 WHERE device_id IN ({}); UPDATE reports SET wave = 1 WHERE wave IS NULL",
        ids.join(", ")
    ));
    let history = store.history(3).unwrap();
    let new = &history.releases[1];
    let waves: Vec<(Option<u32>, StateCounts)> = new.waves.iter().map(|w| (w.wave, w.states[2])).collect();
    assert_eq!(waves, [(Some(0), counts(2, 0, 0)), (Some(1), counts(1, 1, 0))]);
    assert_eq!(new.waves[0].states[0], counts(1, 0, 1));
    assert_eq!(new.waves[1].states[0], counts(0, 0, 0));
    assert_eq!(new.pending, [3, 2, 1]);
}

/// A device that reports the rollout halted makes its release and wave read "halted".
fn a_halted_rollout_reads_halted(backend: Backend) {
    let (_db, store) = enrolled(backend, 2);
    store_at(&*store, 1, 1, "1.1.0", Outcome::RolledBack, 0);
    store_at(&*store, 2, 1, "1.1.0", Outcome::SkippedHalted, 5);
    let history = store.history(10).unwrap();
    let release = &history.releases[0];
    assert_eq!(release.status, Status::Halted);
    assert_eq!(release.waves[0].status, Status::Halted);
    assert_eq!(release.waves[0].states[9].skipped_halted, 1);
    assert_eq!(release.pending[9], 0);
}

/// Devices 1..=4 on 1.2.0 (the release `Repo` publishes): the first two roll back, the others commit.
/// Every enrolled device reported, so the devices alone would make it read "converged".
fn half_rolled_back(backend: Backend) -> (StoreDb, Arc<dyn Store>) {
    let (db, store) = enrolled(backend, 4);
    for n in 1..=4 {
        let outcome = if n <= 2 {
            Outcome::RolledBack
        } else {
            Outcome::Committed
        };
        store_at(&*store, n, 1, "1.2.0", outcome, i64::from(n));
    }
    (db, Arc::from(store))
}

fn auto_halt(store: &Arc<dyn Store>, repo: &Repo, keys: bool) -> AutoHalt {
    AutoHalt::new(
        store.clone(),
        vec![HaltRule::parse_spec("rollback_percent=50,min_reports=4").unwrap()],
        Some(repo.path()),
        keys.then(|| repo.halt_keys()),
        collector::halt::wall_clock(),
    )
}

/// The collector's rule halts the release (signed and published, no device has reported "skipped"
/// yet): the history reads it halted, with when, the rule and why.
fn a_release_the_collector_halted_reads_halted(backend: Backend) {
    let (_db, store) = half_rolled_back(backend);
    assert_eq!(store.history(10).unwrap().releases[0].status, Status::Converged);
    let repo = Repo::new();
    let before = Utc::now().timestamp_millis();
    let issued = auto_halt(&store, &repo, true).evaluate().unwrap();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].action, ActionKind::Halted);

    let history = store.history(10).unwrap();
    let release = &history.releases[0];
    assert_eq!(release.to_version, "1.2.0");
    assert_eq!(release.status, Status::Halted);
    assert_eq!(release.waves[0].states[9].skipped_halted, 0, "no device said so");
    assert_eq!(release.actions.len(), 1);
    let halt = &release.actions[0];
    assert_eq!(halt.action, ActionKind::Halted);
    assert_eq!(halt.at_ms, issued[0].at.timestamp_millis());
    assert!(halt.at_ms >= before - 1000, "{halt:?}");
    assert!(halt.rule.contains("rollback_percent"), "{}", halt.rule);
    assert_eq!(halt.rule, issued[0].rule);
    assert_eq!(halt.detail, issued[0].detail);
    assert!(!halt.detail.is_empty());
    assert_eq!((halt.judged, halt.rolled_back), (4, 2));
    // The JSON `GET /v1/history` serves names it so.
    let json = serde_json::to_value(&history).unwrap();
    assert_eq!(json["releases"][0]["status"], "halted");
    assert_eq!(json["releases"][0]["actions"][0]["action"], "halted");
}

/// Without the halt keys the rule only alerts: the alert is listed, the release still reads as its
/// devices make it.
fn an_alert_alone_is_marked_but_changes_no_status(backend: Backend) {
    let (_db, store) = half_rolled_back(backend);
    let repo = Repo::new();
    let issued = auto_halt(&store, &repo, false).evaluate().unwrap();
    assert_eq!(issued.len(), 1, "{issued:?}");
    let history = store.history(10).unwrap();
    let release = &history.releases[0];
    assert_eq!(release.status, Status::Converged);
    assert_eq!(release.actions.len(), 1);
    assert_eq!(release.actions[0].action, ActionKind::Alerted);
    assert!(
        release.actions[0].detail.contains("no rollout-control key"),
        "{}",
        release.actions[0].detail
    );
}

fn an_empty_store_has_no_history(backend: Backend) {
    let (_db, store) = enrolled(backend, 1);
    assert_eq!(store.history(60).unwrap(), History::default());
}
