//! Issue 15, the fleet over time (`Store::history`, `GET /v1/history`, what the dashboard draws): each
//! device counted by its latest report up to each bucket's end, per release and wave, with the pending
//! devices and a status. Each behaviour runs against both stores, SQLite and a real PostgreSQL server
//! (`NAME::sqlite`, `NAME::postgres`), with reports stored at chosen times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use collector::{open_store, History, StateCounts, Status, Store, StoredReport};
use common::*;
use ota_report::{Outcome, ReportSigner as _};

on_both_stores!(
    state_over_time_follows_each_devices_latest_report,
    waves_are_counted_apart,
    a_halted_rollout_reads_halted,
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

fn an_empty_store_has_no_history(backend: Backend) {
    let (_db, store) = enrolled(backend, 1);
    assert_eq!(store.history(60).unwrap(), History::default());
}
