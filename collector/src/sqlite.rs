//! [`SqliteStore`]: the embedded [`Store`], one file in WAL mode.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use ota_report::{DeviceId, PublicKey};
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};

use crate::actions::{on_sqlite, DeviceStatus, LineDevice, RolloutAction};
use crate::migrations::{Migration, MIGRATIONS, SCHEMA_VERSION_TABLE};
use crate::store::{sql_to_u64, to_sql_int, DeviceRow, EnrolledDevice, Enrolment, Store, StoredReport};
use crate::summary::{self, OutcomeRow, ReasonRow};
use crate::{Error, Result, Summary};

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The SQLite store. Writes go through one connection (SQLite has one writer at a time anyway); reads
/// (key lookups, the summary) through a small pool, which WAL mode lets run beside the writer.
pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Reports waiting for the writer (group commit, see [`SqliteStore::insert_report`]).
    waiting: Mutex<Vec<WaitingReport>>,
}

/// Where a waiting report's outcome is put by whichever thread commits it.
type OutcomeSlot = Arc<Mutex<Option<Result<()>>>>;

/// A report queued for the next batch, and where its outcome goes.
struct WaitingReport {
    report: StoredReport,
    outcome: OutcomeSlot,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens or creates the database at `path`, switches it to WAL mode and applies the migrations it
    /// lacks.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut writer = connect(path)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(Error::storage("switch to WAL mode"))?;
        migrate(&mut writer, MIGRATIONS)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            waiting: Mutex::new(Vec::new()),
        })
    }

    /// The schema version recorded in the database (the highest migration applied).
    pub fn schema_version(&self) -> Result<u32> {
        let conn = lock(&self.writer)?;
        schema_version(&conn)
    }

    /// Runs `f` on a pooled read connection, opening one when none is free.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = lock(&self.readers)?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let out = f(&conn);
        lock(&self.readers)?.push(conn);
        out
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(Error::storage("open the database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(Error::storage("set the busy timeout"))?;
    // WAL with synchronous=NORMAL: a commit survives a crash of the collector; a power cut of its machine
    // may lose the last acknowledged reports but never corrupts the file. Reports are telemetry, and
    // an fsync per report would cap ingest at the disk's flush rate.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(Error::storage("set synchronous mode"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(Error::storage("enable foreign keys"))?;
    Ok(conn)
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    // A panic while holding the lock leaves SQLite's own state consistent (an open transaction is rolled
    // back when dropped), so a poisoned lock is still usable.
    Ok(m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn schema_version(conn: &Connection) -> Result<u32> {
    let v: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .map_err(Error::storage("read the schema version"))?;
    u32::try_from(v.unwrap_or(0)).map_err(|_| Error::CorruptRow {
        what: "schema version",
        why: format!("{v:?}"),
    })
}

/// Applies each migration above the recorded version, each in its own transaction with its record.
fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<()> {
    conn.execute_batch(SCHEMA_VERSION_TABLE)
        .map_err(Error::storage("create the schema_version table"))?;
    let current = schema_version(conn)?;
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        return Err(Error::SchemaTooNew {
            found: current,
            known,
        });
    }
    for m in migrations.iter().filter(|m| m.version > current) {
        let failed = |source| Error::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        tx.execute_batch(m.sql).map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, Utc::now().timestamp_millis()],
        )
        .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(())
}

fn device_row(conn: &Connection, device: &DeviceId) -> Result<Option<DeviceRow>> {
    // Cached: every report looks its device up twice (key, then inside the insert's transaction).
    let mut stmt = conn
        .prepare_cached(
            "SELECT key_algorithm, public_key, enrolled_at, revoked_at, last_sequence
             FROM devices WHERE device_id = ?1",
        )
        .map_err(Error::storage("look up a device"))?;
    stmt.query_row(params![device.as_str()], |r| {
        Ok(DeviceRow {
            algorithm: r.get(0)?,
            key_hex: r.get(1)?,
            enrolled_at: r.get(2)?,
            revoked_at: r.get(3)?,
            last_sequence: r.get(4)?,
        })
    })
    .optional()
    .map_err(Error::storage("look up a device"))
}

impl Store for SqliteStore {
    fn enroll(&self, key: &PublicKey, at: DateTime<Utc>) -> Result<Enrolment> {
        let device = key.device_id();
        let key_hex = hex::encode(key.to_bytes());
        let mut conn = lock(&self.writer)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::storage("begin enrolment"))?;
        if let Some(row) = device_row(&tx, &device)? {
            return row.enrolment_again(key);
        }
        tx.execute(
            "INSERT INTO devices (device_id, key_algorithm, public_key, enrolled_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![device.as_str(), key.algorithm(), key_hex, at.timestamp_millis()],
        )
        .map_err(Error::storage("enrol a device"))?;
        tx.commit().map_err(Error::storage("commit an enrolment"))?;
        Ok(Enrolment::Added)
    }

    fn revoke(&self, device: &DeviceId, at: DateTime<Utc>) -> Result<()> {
        let conn = lock(&self.writer)?;
        let changed = conn
            .execute(
                "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?2) WHERE device_id = ?1",
                params![device.as_str(), at.timestamp_millis()],
            )
            .map_err(Error::storage("revoke a device"))?;
        if changed == 0 {
            return Err(Error::NotEnrolled {
                device: device.clone(),
            });
        }
        Ok(())
    }

    fn device(&self, device: &DeviceId) -> Result<Option<EnrolledDevice>> {
        let row = self.read(|conn| device_row(conn, device))?;
        row.map(|r| r.into_device(device.clone())).transpose()
    }

    /// Group commit: the report joins the queue; whichever thread holds the writer next stores every
    /// queued report in one transaction, each under its own savepoint (its checks and its rows together:
    /// a refused report rolls back alone and stores nothing), then commits once. A commit writes each
    /// changed page once per batch rather than once per report.
    fn insert_report(&self, stored: &StoredReport) -> Result<()> {
        let outcome: OutcomeSlot = Arc::new(Mutex::new(None));
        lock(&self.waiting)?.push(WaitingReport {
            report: stored.clone(),
            outcome: outcome.clone(),
        });
        let mut conn = lock(&self.writer)?;
        // Another thread may have committed this report while we waited for the writer.
        if let Some(done) = lock(&outcome)?.take() {
            return done;
        }
        let batch = std::mem::take(&mut *lock(&self.waiting)?);
        commit_batch(&mut conn, batch)?;
        drop(conn);
        let done = lock(&outcome)?.take();
        done.unwrap_or_else(|| {
            Err(Error::Task {
                why: "a queued report was not committed".into(),
            })
        })
    }

    fn summary(&self) -> Result<Summary> {
        self.read(|conn| {
            let outcomes = outcome_rows(conn)?;
            let reasons = reason_rows(conn)?;
            let known = known_device_rows(conn)?;
            let mut summary = summary::build(outcomes, reasons, known);
            summary.reports_dropped = on_sqlite::dropped(conn)?;
            summary.actions = on_sqlite::actions(conn)?;
            Ok(summary)
        })
    }

    fn report_count(&self) -> Result<u64> {
        self.read(|conn| {
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))
                .map_err(Error::storage("count reports"))?;
            sql_to_u64("report count", n)
        })
    }

    fn release_devices(&self, channel: &str, to_version: &str) -> Result<Vec<DeviceStatus>> {
        self.read(|conn| on_sqlite::release_devices(conn, channel, to_version))
    }

    fn line_devices(&self, channel: &str) -> Result<Vec<LineDevice>> {
        self.read(|conn| on_sqlite::line_devices(conn, channel))
    }

    fn set_device_line(&self, device: &DeviceId, hardware: &str, channel: &str) -> Result<()> {
        on_sqlite::set_line(&*lock(&self.writer)?, device, hardware, channel)
    }

    fn record_action(&self, action: &RolloutAction) -> Result<bool> {
        on_sqlite::record(&*lock(&self.writer)?, action)
    }

    fn actions(&self) -> Result<Vec<RolloutAction>> {
        self.read(on_sqlite::actions)
    }
}

/// Stores `batch` in one transaction, each report under its own savepoint, and puts each one's outcome
/// in its slot. When the commit fails, every report of the batch gets the error (none was stored).
fn commit_batch(conn: &mut Connection, batch: Vec<WaitingReport>) -> Result<()> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Error::storage("begin storing reports"))?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for waiting in &batch {
        let savepoint = tx
            .savepoint()
            .map_err(Error::storage("open a report's savepoint"))?;
        let stored = check_report_allowed(&savepoint, &waiting.report)
            .and_then(|()| write_report(&savepoint, &waiting.report));
        // Kept: released into the transaction; refused: rolled back to the savepoint, then released.
        let closed = if stored.is_ok() {
            savepoint.commit()
        } else {
            savepoint.finish()
        };
        closed.map_err(Error::storage("close a report's savepoint"))?;
        outcomes.push(stored);
    }
    let committed = tx.commit();
    for (waiting, stored) in batch.into_iter().zip(outcomes) {
        let outcome = match (&committed, stored) {
            (Ok(()), stored) => stored,
            (Err(e), _) => Err(Error::CommitFailed { why: e.to_string() }),
        };
        *lock(&waiting.outcome)? = Some(outcome);
    }
    committed.map_err(Error::storage("commit reports"))
}

/// Inside the report's transaction: the device is enrolled, not revoked, and the sequence is new.
fn check_report_allowed(conn: &Connection, stored: &StoredReport) -> Result<()> {
    let device = &stored.report.device_id;
    let row = device_row(conn, device)?.ok_or_else(|| Error::UnknownDevice {
        key_ids: device.to_string(),
    })?;
    if row.revoked_at.is_some() {
        return Err(Error::Revoked {
            device: device.clone(),
        });
    }
    let sequence = stored.report.sequence;
    to_sql_int("sequence", sequence)?;
    if let Some(last) = row.last_sequence {
        let last = sql_to_u64("last sequence", last)?;
        if sequence <= last {
            return Err(Error::Replay {
                device: device.clone(),
                sequence,
                last,
            });
        }
    }
    Ok(())
}

/// Inside the report's transaction: the report row, the device's status and counters for the release,
/// its last sequence.
fn write_report(conn: &Connection, stored: &StoredReport) -> Result<()> {
    let r = &stored.report;
    let sequence = to_sql_int("sequence", r.sequence)?;
    let received = stored.received_at.timestamp_millis();
    insert_report_row(conn, stored, sequence, received)?;
    let release = (
        r.hardware.as_str(),
        r.channel.as_str(),
        &*r.to_version.to_string(),
    );
    let previous = upsert_release_status(conn, r, release, sequence, received)?;
    let dropped = to_sql_int("reports_dropped", r.reports_dropped)?;
    count_outcome_change(conn, release, previous.as_deref(), r.outcome.as_str())?;
    conn.prepare_cached(
        "UPDATE devices SET last_sequence = ?2, hardware = ?3, channel = ?4, reports_dropped = ?5
         WHERE device_id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            r.device_id.as_str(),
            sequence,
            release.0,
            release.1,
            dropped
        ])
    })
    .map_err(Error::storage("record the last sequence"))?;
    Ok(())
}

fn insert_report_row(conn: &Connection, stored: &StoredReport, sequence: i64, received: i64) -> Result<()> {
    let r = &stored.report;
    let bytes_downloaded = to_sql_int("bytes_downloaded", r.bytes_downloaded)?;
    let dropped = to_sql_int("reports_dropped", r.reports_dropped)?;
    conn.prepare_cached(
        "INSERT INTO reports (device_id, sequence, received_at, hardware, channel, from_version,
             to_version, target, outcome, reason, started_at, finished_at, bytes_downloaded,
             install_method, wave, envelope, reports_dropped)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, NULL, ?15, ?16)",
    )
    .and_then(|mut s| {
        s.execute(params![
            r.device_id.as_str(),
            sequence,
            received,
            r.hardware.as_str(),
            r.channel.as_str(),
            r.from_version.to_string(),
            r.to_version.to_string(),
            r.target.as_str(),
            r.outcome.as_str(),
            r.reason.as_str(),
            r.started.timestamp_millis(),
            r.finished.timestamp_millis(),
            bytes_downloaded,
            r.install_method.map(|m| m.as_str()),
            stored.envelope,
            dropped,
        ])
    })
    .map_err(Error::storage("insert a report"))?;
    Ok(())
}

/// Makes `r` the device's latest report on its release; returns the outcome it replaces, if any.
fn upsert_release_status(
    conn: &Connection,
    r: &ota_report::Report,
    (hardware, channel, to_version): (&str, &str, &str),
    sequence: i64,
    received: i64,
) -> Result<Option<String>> {
    let device = r.device_id.as_str();
    let previous: Option<String> = conn
        .prepare_cached(
            "SELECT outcome FROM release_status
             WHERE device_id = ?1 AND hardware = ?2 AND channel = ?3 AND to_version = ?4",
        )
        .and_then(|mut s| {
            s.query_row(params![device, hardware, channel, to_version], |row| row.get(0))
                .optional()
        })
        .map_err(Error::storage("read the release status"))?;
    conn.prepare_cached(
        "INSERT INTO release_status (device_id, hardware, channel, to_version, wave, sequence, outcome,
             reason, updated_at)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8)
         ON CONFLICT (device_id, hardware, channel, to_version) DO UPDATE SET
             wave = excluded.wave, sequence = excluded.sequence, outcome = excluded.outcome,
             reason = excluded.reason, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            device,
            hardware,
            channel,
            to_version,
            sequence,
            r.outcome.as_str(),
            r.reason.as_str(),
            received
        ])
    })
    .map_err(Error::storage("update the release status"))?;
    Ok(previous)
}

/// Moves the device in `release_counts` from its previous outcome on the release (if any) to `now`.
fn count_outcome_change(
    conn: &Connection,
    (hardware, channel, to_version): (&str, &str, &str),
    previous: Option<&str>,
    now: &str,
) -> Result<()> {
    if previous == Some(now) {
        return Ok(());
    }
    if let Some(previous) = previous {
        conn.prepare_cached(
            "UPDATE release_counts SET devices = devices - 1
             WHERE hardware = ?1 AND channel = ?2 AND to_version = ?3 AND outcome = ?4",
        )
        .and_then(|mut s| s.execute(params![hardware, channel, to_version, previous]))
        .map_err(Error::storage("count down the previous outcome"))?;
    }
    conn.prepare_cached(
        "INSERT INTO release_counts (hardware, channel, to_version, outcome, devices)
         VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT (hardware, channel, to_version, outcome) DO UPDATE SET
             devices = release_counts.devices + 1",
    )
    .and_then(|mut s| s.execute(params![hardware, channel, to_version, now]))
    .map_err(Error::storage("count the outcome"))?;
    Ok(())
}

fn outcome_rows(conn: &Connection) -> Result<Vec<OutcomeRow>> {
    let mut stmt = conn
        .prepare(
            "SELECT hardware, channel, to_version, outcome, devices FROM release_counts
             WHERE devices > 0",
        )
        .map_err(Error::storage("prepare the summary"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(OutcomeRow {
                release: (r.get(0)?, r.get(1)?, r.get(2)?),
                outcome: r.get(3)?,
                devices: r.get(4)?,
            })
        })
        .map_err(Error::storage("read the summary"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(Error::storage("read the summary"))
}

fn reason_rows(conn: &Connection) -> Result<Vec<ReasonRow>> {
    let mut stmt = conn
        .prepare(
            "SELECT hardware, channel, to_version, reason, COUNT(*) FROM release_status
             WHERE outcome IN ('failed', 'rolled_back', 'drill_failed')
             GROUP BY hardware, channel, to_version, reason",
        )
        .map_err(Error::storage("prepare the failure reasons"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(ReasonRow {
                release: (r.get(0)?, r.get(1)?, r.get(2)?),
                reason: r.get(3)?,
                devices: r.get(4)?,
            })
        })
        .map_err(Error::storage("read the failure reasons"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(Error::storage("read the failure reasons"))
}

/// Devices not revoked, per (hardware, channel) of their latest report: who could report on a release.
fn known_device_rows(conn: &Connection) -> Result<Vec<((String, String), i64)>> {
    let mut stmt = conn
        .prepare(
            "SELECT hardware, channel, COUNT(*) FROM devices
             WHERE revoked_at IS NULL AND hardware IS NOT NULL AND channel IS NOT NULL
             GROUP BY hardware, channel",
        )
        .map_err(Error::storage("prepare the device count"))?;
    let rows = stmt
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .map_err(Error::storage("count devices"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(Error::storage("count devices"))
}
