//! Issue 15, the collector's storage: migrations recorded once, WAL mode, and the replay check and the
//! insert in one transaction (two copies of a report racing: exactly one stored). Each behaviour runs
//! against both stores, SQLite and a real PostgreSQL server (`NAME::sqlite`, `NAME::postgres`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use chrono::Utc;
use collector::{open_store, Enrolment, Error, LineEnrolment, Store, StoredReport, MIGRATIONS};
use common::*;
use ota_report::{Outcome, ReportSigner as _};

fn stored(key: &ed25519_dalek::SigningKey, sequence: u64) -> StoredReport {
    let report = report(key, sequence, "1.1.0", Outcome::Committed, "");
    StoredReport {
        envelope: String::from_utf8(signed(&report, key)).unwrap(),
        report,
        received_at: Utc::now(),
    }
}

on_both_stores!(
    migrations_are_applied_once_and_recorded,
    a_database_from_a_newer_collector_is_refused,
    the_store_itself_refuses_replays_revoked_and_unknown_devices,
    racing_copies_of_one_report_are_stored_once,
    release_counts_match_a_recount_after_outcomes_change,
    migrating_an_older_database_fills_the_counters,
    a_refused_report_in_a_batch_stores_nothing_and_spares_the_others,
    a_factory_line_is_enrolled_in_one_batch_with_its_hardware_and_channel,
);

/// Opened twice, the schema is migrated once; SQLite's file is in WAL mode.
fn migrations_are_applied_once_and_recorded(backend: Backend) {
    let db = StoreDb::new(backend);
    drop(open_store(db.location()).unwrap());
    drop(open_store(db.location()).unwrap());
    let recorded = db.count("SELECT COUNT(*) FROM schema_version");
    assert_eq!(recorded, MIGRATIONS.len() as i64);
    let highest = db.count("SELECT CAST(MAX(version) AS BIGINT) FROM schema_version");
    assert_eq!(highest, MIGRATIONS.len() as i64);
    if let StoreDb::Sqlite(db) = &db {
        let conn = rusqlite::Connection::open(&db.path).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
}

fn a_database_from_a_newer_collector_is_refused(backend: Backend) {
    let db = StoreDb::new(backend);
    drop(open_store(db.location()).unwrap());
    db.exec("INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'future', 0)");
    let err = open_store(db.location()).err().unwrap();
    assert!(matches!(err, Error::SchemaTooNew { found: 99, .. }), "{err}");
}

fn the_store_itself_refuses_replays_revoked_and_unknown_devices(backend: Backend) {
    let db = StoreDb::new(backend);
    let location = match &db {
        StoreDb::Sqlite(file) => format!("sqlite:{}", file.arg()),
        StoreDb::Postgres(pg) => pg.url.clone(),
    };
    let store = open_store(&location).unwrap();
    let (key, other) = (device_key(1), device_key(2));
    store.enroll(&key.public_key(), Utc::now()).unwrap();
    store.insert_report(&stored(&key, 3)).unwrap();
    assert!(matches!(
        store.insert_report(&stored(&key, 3)),
        Err(Error::Replay { last: 3, .. })
    ));
    // An older number never stored (no row to collide with) is a replay too.
    assert!(matches!(
        store.insert_report(&stored(&key, 2)),
        Err(Error::Replay { last: 3, .. })
    ));
    assert!(matches!(
        store.insert_report(&stored(&other, 1)),
        Err(Error::UnknownDevice { .. })
    ));
    store.revoke(&key.public_key().device_id(), Utc::now()).unwrap();
    assert!(matches!(
        store.insert_report(&stored(&key, 4)),
        Err(Error::Revoked { .. })
    ));
    assert_eq!(store.report_count().unwrap(), 1);
    let device = store.device(&key.public_key().device_id()).unwrap().unwrap();
    assert_eq!(device.last_sequence, Some(3));
    assert!(device.revoked_at.is_some());
}

/// The check and the insert are one transaction: of many connections storing the same sequence number
/// at once, exactly one succeeds and every other is a replay.
fn racing_copies_of_one_report_are_stored_once(backend: Backend) {
    let db = StoreDb::new(backend);
    let key = device_key(4);
    open_store(db.location())
        .unwrap()
        .enroll(&key.public_key(), Utc::now())
        .unwrap();
    let report = stored(&key, 1);
    // Each thread with its own store, so its own connection: the database, not a mutex, decides.
    let stores: Vec<Arc<dyn Store>> = (0..8)
        .map(|_| Arc::from(open_store(db.location()).unwrap()))
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(stores.len()));
    let results: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let (report, barrier) = (report.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store.insert_report(&report)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, Error::Replay { .. })));
    assert_eq!(db.rows(), (1, 1, 1));
}

/// The per-release counters kept by each insert equal a recount of every device's latest report.
fn release_counts_match_a_recount_after_outcomes_change(backend: Backend) {
    let db = StoreDb::new(backend);
    let store = open_store(db.location()).unwrap();
    let outcomes = [
        Outcome::Failed,
        Outcome::Committed,
        Outcome::RolledBack,
        Outcome::Committed,
    ];
    for n in 0..6u8 {
        let key = device_key(20 + n);
        store.enroll(&key.public_key(), Utc::now()).unwrap();
        for seq in 1..=u64::from(n % 4) + 1 {
            let to = if seq % 2 == 0 { "1.2.0" } else { "1.1.0" };
            let outcome = outcomes[(seq as usize + usize::from(n)) % outcomes.len()];
            let r = report(&key, seq, to, outcome, "why");
            let envelope = String::from_utf8(signed(&r, &key)).unwrap();
            store
                .insert_report(&StoredReport {
                    report: r,
                    envelope,
                    received_at: Utc::now(),
                })
                .unwrap();
        }
    }
    let kept = db.triples(
        "SELECT to_version, outcome, devices FROM release_counts WHERE devices > 0 ORDER BY to_version, outcome",
    );
    let recount = db.triples(
        "SELECT to_version, outcome, COUNT(*) FROM release_status GROUP BY to_version, outcome
         ORDER BY to_version, outcome",
    );
    assert_eq!(kept, recount);
    assert!(kept.len() >= 4, "{kept:?}");
}

/// A database made by the first migration alone, holding a device's status, gains counters filled from
/// it when the second migration runs.
fn migrating_an_older_database_fills_the_counters(backend: Backend) {
    let db = StoreDb::new(backend);
    db.exec(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL);
         INSERT INTO schema_version VALUES (1, '0001_devices_and_reports.sql', 0);",
    );
    db.exec(MIGRATIONS[0].sql);
    db.exec(
        "INSERT INTO devices (device_id, key_algorithm, public_key, enrolled_at) VALUES ('dev-0000000000000001', 'ed25519', '00', 0);
         INSERT INTO release_status VALUES ('dev-0000000000000001', 'board-a', 'stable', '1.1.0', NULL, 1, 'rolled_back', 'x', 0);",
    );
    let store = open_store(db.location()).unwrap();
    assert_eq!(
        db.count("SELECT COUNT(*) FROM schema_version"),
        MIGRATIONS.len() as i64
    );
    let summary = store.summary().unwrap();
    assert_eq!(summary.releases.len(), 1);
    assert_eq!(summary.releases[0].rolled_back, 1);
    assert_eq!(summary.releases[0].top_failure_reasons[0].reason, "x");
}

/// Through one store (so reports share group-commit batches): of two copies of each device's report sent
/// at once, one is stored and the other refused as a replay, whatever batch each lands in; a refused
/// report in a batch leaves the others of that batch stored.
fn a_refused_report_in_a_batch_stores_nothing_and_spares_the_others(backend: Backend) {
    let db = StoreDb::new(backend);
    let store: Arc<dyn Store> = Arc::from(open_store(db.location()).unwrap());
    let keys: Vec<_> = (30..38).map(device_key).collect();
    for k in &keys {
        store.enroll(&k.public_key(), Utc::now()).unwrap();
    }
    let barrier = Arc::new(std::sync::Barrier::new(keys.len() * 2));
    let threads: Vec<_> = keys
        .iter()
        .flat_map(|k| [stored(k, 1), stored(k, 1)])
        .map(|report| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store.insert_report(&report)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), keys.len());
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, Error::Replay { .. })));
    assert_eq!(db.rows(), (8, 8, 8));
    assert_eq!(store.summary().unwrap().releases[0].committed, 8);
}

/// Every message naming a PostgreSQL URL hides its password: a wrong password (the server refuses it)
/// and a server off this machine (refused before connecting: no TLS).
#[test]
fn postgres_errors_never_show_the_password() {
    let db = PgDb::new();
    let wrong = db.url.replace(common::pg_server::PASSWORD, "wr0ng-Pa55word");
    let chain = |e: &dyn std::error::Error| {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    };
    let refused = chain(&open_store(&wrong).err().unwrap());
    assert!(refused.contains("postgres:***@127.0.0.1"), "{refused}");
    assert!(refused.contains("password authentication failed"), "{refused}");
    assert!(!refused.contains("wr0ng-Pa55word"), "{refused}");

    let remote = chain(
        &open_store("postgresql://ota:s3cret@db.example.net/fleet?password=s3cret")
            .err()
            .unwrap(),
    );
    assert!(
        remote.contains("ota:***@db.example.net/fleet?password=***"),
        "{remote}"
    );
    assert!(remote.contains("TLS"), "{remote}");
    assert!(!remote.contains("s3cret"), "{remote}");
}

/// Collectors starting at once on a fresh database migrate it once (the migration lock).
#[test]
fn postgres_collectors_starting_together_migrate_once() {
    let db = PgDb::new();
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (db.url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                open_store(&url).map(drop)
            })
        })
        .collect();
    for open in opens {
        open.join().unwrap().unwrap();
    }
    let recorded: i64 = db
        .client()
        .query_one("SELECT COUNT(*) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(recorded, MIGRATIONS.len() as i64);
}

on_both_stores!(a_report_the_database_refuses_spares_the_others_of_its_batch);

/// A report whose row the database itself refuses (a row with its key is already there, written
/// behind the store's back) fails alone: the other reports sent at the same time, whatever batch they
/// share with it, are stored, and the refused one changes nothing.
fn a_report_the_database_refuses_spares_the_others_of_its_batch(backend: Backend) {
    let db = StoreDb::new(backend);
    let store: Arc<dyn Store> = Arc::from(open_store(db.location()).unwrap());
    let keys: Vec<_> = (40..48).map(device_key).collect();
    for k in &keys {
        store.enroll(&k.public_key(), Utc::now()).unwrap();
    }
    let blocked = keys[0].public_key().device_id();
    db.exec(&format!(
        "INSERT INTO reports (device_id, sequence, received_at, hardware, channel, from_version, to_version,
             target, outcome, reason, started_at, finished_at, bytes_downloaded, envelope)
         VALUES ('{blocked}', 1, 0, 'board-a', 'stable', '1.0.0', '1.1.0', 't', 'committed', '', 0, 0, 0, '{{}}')"
    ));
    let barrier = Arc::new(std::sync::Barrier::new(keys.len()));
    let threads: Vec<_> = keys
        .iter()
        .map(|k| {
            let (store, barrier, report) = (store.clone(), barrier.clone(), stored(k, 1));
            std::thread::spawn(move || {
                barrier.wait();
                store.insert_report(&report)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results[0].is_err(), "{:?}", results[0]);
    assert!(results[1..].iter().all(Result::is_ok), "{results:?}");
    // Seven stored, plus the row written by hand; the blocked device's sequence untouched.
    assert_eq!(db.rows(), (8, 7, 7));
    let device = store.device(&blocked).unwrap().unwrap();
    assert_eq!(device.last_sequence, None);
    assert_eq!(store.summary().unwrap().releases[0].committed, 7);
}

/// A factory line enrols its devices in one batch, each with its hardware id and channel (counted as
/// pending before any report); a batch holding a revoked device is refused naming it, and SQLite's
/// (one transaction for the batch) has then enrolled none of the others.
fn a_factory_line_is_enrolled_in_one_batch_with_its_hardware_and_channel(backend: Backend) {
    let db = StoreDb::new(backend);
    let store = open_store(db.location()).unwrap();
    let line = |seeds: &[u8]| -> Vec<LineEnrolment> {
        seeds
            .iter()
            .map(|s| LineEnrolment {
                key: device_key(*s).public_key(),
                hardware: format!("board-{}", s % 2),
                channel: "stable".into(),
            })
            .collect()
    };
    let enrolled = store.enroll_line_batch(&line(&[1, 2, 3]), Utc::now()).unwrap();
    assert_eq!(enrolled, vec![Enrolment::Added; 3]);
    let again = store.enroll_line_batch(&line(&[3]), Utc::now()).unwrap();
    assert_eq!(again, vec![Enrolment::AlreadyEnrolled]);
    let mut devices = store.line_devices("stable").unwrap();
    devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    assert_eq!(devices.len(), 3);
    let hardware_of = |seed: u8| {
        let id = device_key(seed).public_key().device_id();
        devices
            .iter()
            .find(|d| d.device_id == id.as_str())
            .map(|d| d.hardware.clone())
    };
    assert_eq!(hardware_of(2).as_deref(), Some("board-0"));
    assert_eq!(hardware_of(3).as_deref(), Some("board-1"));

    let revoked = device_key(2).public_key().device_id();
    store.revoke(&revoked, Utc::now()).unwrap();
    let err = store.enroll_line_batch(&line(&[4, 2]), Utc::now()).unwrap_err();
    assert!(
        matches!(&err, Error::EnrolmentConflict { device, .. } if *device == revoked),
        "{err}"
    );
    if matches!(backend, Backend::Sqlite) {
        let newcomer = device_key(4).public_key().device_id();
        assert!(
            store.device(&newcomer).unwrap().is_none(),
            "a refused batch enrolled a device"
        );
    }
}
