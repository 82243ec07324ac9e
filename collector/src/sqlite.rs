//! [`SqliteStore`]: the embedded [`Store`], one file in WAL mode.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use chrono::{DateTime, Utc};
use ota_report::{DeviceId, PublicKey};
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};

use crate::actions::{on_sqlite, DeviceStatus, LineDevice, RolloutAction};
use crate::migrations::{Migration, MIGRATIONS, SCHEMA_VERSION_TABLE};
use crate::store::{
    self, sql_to_u64, to_sql_int, DeviceRow, EnrolledDevice, Enrolment, LineEnrolment, ReportDone, Store,
    StoredReport,
};
use crate::summary::{self, OutcomeRow, ReasonRow};
use crate::{Error, Result, Summary};

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The SQLite store. Writes go through one connection (SQLite has one writer at a time anyway), and
/// reports through one writer thread that owns their batches (group commit, see
/// [`Store::queue_report`]); reads (key lookups, the summary) through a small pool, which WAL mode
/// lets run beside the writer.
pub struct SqliteStore {
    path: std::path::PathBuf,
    /// Shared with the writer thread; enrolment and revocation take it between batches.
    writer: Arc<Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    /// Reports for the writer thread; `None` only while the store is dropped (the thread then ends).
    queue: Option<mpsc::Sender<QueuedReport>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The most reports one transaction stores.
pub const MAX_BATCH: usize = 1024;

/// A report queued for the writer thread, and who is told its outcome.
struct QueuedReport {
    report: StoredReport,
    done: ReportDone,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The writer thread stores what is queued, sees the queue closed and ends.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: waits for a report, takes every report queued behind it (up to [`MAX_BATCH`]),
/// stores them in one transaction and tells each caller its outcome once that is durable.
fn write_batches(writer: &Mutex<Connection>, queued: &mpsc::Receiver<QueuedReport>) {
    while let Ok(first) = queued.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        match lock(writer) {
            Ok(mut conn) => commit_batch(&mut conn, batch),
            Err(e) => answer_all(batch, &e),
        }
    }
}

fn answer_all(batch: Vec<QueuedReport>, e: &Error) {
    for queued in batch {
        (queued.done)(Err(Error::CommitFailed {
            why: crate::http::chain(e),
        }));
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
        let writer = Arc::new(Mutex::new(writer));
        let (queue, queued) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn({
                let writer = writer.clone();
                move || write_batches(&writer, &queued)
            })
            .map_err(|e| Error::Task {
                why: format!("start the SQLite writer thread: {e}"),
            })?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer,
            readers: Mutex::new(Vec::new()),
            queue: Some(queue),
            thread: Some(thread),
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
    // WAL with synchronous=FULL: every commit fsyncs the WAL before it returns, so a report acknowledged
    // survives a power cut (the device deletes an acknowledged report from its queue). NORMAL would
    // fsync only at checkpoints: a power cut could lose acknowledged reports. The group commit pays
    // one fsync per batch, not per report.
    conn.pragma_update(None, "synchronous", "FULL")
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
        let mut conn = lock(&self.writer)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::storage("begin enrolment"))?;
        let enrolment = enroll_in(&tx, key, at)?;
        tx.commit().map_err(Error::storage("commit an enrolment"))?;
        Ok(enrolment)
    }

    /// One transaction for the whole batch: one commit however many devices.
    fn enroll_line_batch(&self, devices: &[LineEnrolment], at: DateTime<Utc>) -> Result<Vec<Enrolment>> {
        let mut conn = lock(&self.writer)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::storage("begin a line's enrolment"))?;
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            out.push(enroll_in(&tx, &d.key, at)?);
            on_sqlite::set_line(&tx, &d.key.device_id(), &d.hardware, &d.channel)?;
        }
        tx.commit().map_err(Error::storage("commit a line's enrolment"))?;
        Ok(out)
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

    /// Queues the report for the writer thread and waits for its outcome.
    fn insert_report(&self, stored: &StoredReport) -> Result<()> {
        store::insert_by_queue(self, stored, "SQLite writer thread")
    }

    /// Group commit: the report joins the writer thread's queue; the thread stores every report queued
    /// behind the one it waited for in one transaction, each under its own savepoint (its checks and its
    /// rows together: a refused report rolls back alone and stores nothing), commits once (one fsync),
    /// then calls each report's `done`.
    fn queue_report(&self, stored: StoredReport, done: ReportDone) {
        let queued = QueuedReport { report: stored, done };
        let Some(queue) = &self.queue else {
            return answer_all(
                vec![queued],
                &Error::Task {
                    why: "the store is closing".into(),
                },
            );
        };
        if let Err(mpsc::SendError(queued)) = queue.send(queued) {
            answer_all(
                vec![queued],
                &Error::Task {
                    why: "the SQLite writer thread ended".into(),
                },
            );
        }
    }

    fn queues_reports(&self) -> bool {
        true
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

    fn history(&self, buckets: u32) -> Result<crate::History> {
        let summary = self.summary()?;
        let history = self.read(|conn| crate::history::read_sqlite(conn, &summary, buckets))?;
        Ok(crate::history::with_actions(history, self.actions()?))
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

/// Enrols `key` inside the caller's transaction (see [`Store::enroll`]).
fn enroll_in(conn: &Connection, key: &PublicKey, at: DateTime<Utc>) -> Result<Enrolment> {
    let device = key.device_id();
    if let Some(row) = device_row(conn, &device)? {
        return row.enrolment_again(key);
    }
    conn.execute(
        "INSERT INTO devices (device_id, key_algorithm, public_key, enrolled_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            device.as_str(),
            key.algorithm(),
            hex::encode(key.to_bytes()),
            at.timestamp_millis()
        ],
    )
    .map_err(Error::storage("enrol a device"))?;
    Ok(Enrolment::Added)
}

/// Stores `batch` in one transaction, each report under its own savepoint, and calls each one's `done`
/// once the transaction is committed. When the commit fails, every report of the batch gets the error
/// (none was stored).
fn commit_batch(conn: &mut Connection, batch: Vec<QueuedReport>) {
    match store_batch(conn, &batch) {
        Ok(outcomes) => {
            for (queued, outcome) in batch.into_iter().zip(outcomes) {
                (queued.done)(outcome);
            }
        }
        Err(e) => {
            tracing::error!("storing a batch of {} reports failed: {e}", batch.len());
            answer_all(batch, &e);
        }
    }
}

/// One transaction: each report's checks and rows under its own savepoint, then one commit. Returns
/// each report's outcome (meaningful only once this returns `Ok`: the batch is committed).
fn store_batch(conn: &mut Connection, batch: &[QueuedReport]) -> Result<Vec<Result<()>>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Error::storage("begin storing reports"))?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for queued in batch {
        outcomes.push(store_under_savepoint(&tx, &queued.report)?);
    }
    tx.commit().map_err(Error::storage("commit reports"))?;
    Ok(outcomes)
}

/// One report's checks and rows under its own savepoint: kept (released into the transaction) when
/// accepted, rolled back when refused, so a refused report stores nothing. The savepoint statements
/// are prepared once (rusqlite's `Savepoint` parses them again for every report). The outer `Err`:
/// the savepoint itself failed, and the batch with it.
fn store_under_savepoint(conn: &Connection, report: &StoredReport) -> Result<Result<()>> {
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]).map(|_| ()))
    };
    run("SAVEPOINT report").map_err(Error::storage("open a report's savepoint"))?;
    let stored = check_report_allowed(conn, report).and_then(|row| write_report(conn, report, &row));
    let closed = match stored {
        Ok(()) => run("RELEASE report"),
        Err(_) => run("ROLLBACK TO report").and_then(|()| run("RELEASE report")),
    };
    closed.map_err(Error::storage("close a report's savepoint"))?;
    Ok(stored)
}

/// What the report's transaction reads of its device: revoked or not, its last sequence, the
/// hardware and channel of its last report.
struct DeviceState {
    revoked: bool,
    last_sequence: Option<i64>,
    line: (Option<String>, Option<String>),
}

fn device_state(conn: &Connection, device: &DeviceId) -> Result<Option<DeviceState>> {
    conn.prepare_cached(
        "SELECT revoked_at IS NOT NULL, last_sequence, hardware, channel FROM devices
         WHERE device_id = ?1",
    )
    .and_then(|mut s| {
        s.query_row(params![device.as_str()], |r| {
            Ok(DeviceState {
                revoked: r.get(0)?,
                last_sequence: r.get(1)?,
                line: (r.get(2)?, r.get(3)?),
            })
        })
        .optional()
    })
    .map_err(Error::storage("look up a device"))
}

/// Inside the report's transaction: the device is enrolled, not revoked, and the sequence is new.
fn check_report_allowed(conn: &Connection, stored: &StoredReport) -> Result<DeviceState> {
    let device = &stored.report.device_id;
    let row = device_state(conn, device)?.ok_or_else(|| Error::UnknownDevice {
        key_ids: device.to_string(),
    })?;
    if row.revoked {
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
    Ok(row)
}

/// Inside the report's transaction: the report row, the device's status and counters for the release,
/// its last sequence.
fn write_report(conn: &Connection, stored: &StoredReport, device: &DeviceState) -> Result<()> {
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
    // The hardware and channel only when they change: setting them rewrites `devices_by_line` too.
    let same_line =
        device.line.0.as_deref() == Some(release.0) && device.line.1.as_deref() == Some(release.1);
    let id = r.device_id.as_str();
    let recorded = if same_line {
        conn.prepare_cached(
            "UPDATE devices SET last_sequence = ?2, reports_dropped = ?3 WHERE device_id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, sequence, dropped]))
    } else {
        conn.prepare_cached(
            "UPDATE devices SET last_sequence = ?2, hardware = ?3, channel = ?4, reports_dropped = ?5
             WHERE device_id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, sequence, release.0, release.1, dropped]))
    };
    recorded.map_err(Error::storage("record the last sequence"))?;
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
