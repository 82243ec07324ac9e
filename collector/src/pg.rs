//! [`PostgresStore`]: the [`Store`] on a PostgreSQL server, for a fleet that outgrows one machine.
//!
//! **Client and pool.** The `postgres` crate (the synchronous client over `tokio-postgres`) pooled by
//! `r2d2`: [`Store`]'s methods run on blocking threads, so a blocking client and a blocking pool fit
//! them as they are, with no second async runtime to bridge into (`deadpool-postgres` and `sqlx` are
//! async-first). The pool's connection type is this module's own ([`r2d2::ManageConnection`] is a few
//! lines) so that each connection keeps the statements it prepared: a report's statements are parsed
//! once per connection, not once per report.
//!
//! **Same schema, same files.** The migration files SQLite runs, run unchanged, each in its own
//! transaction recorded in `schema_version`, under an advisory lock so that two collectors starting
//! at once migrate one after the other.
//!
//! **Reports: group commit in lanes.** As in SQLite, a report joins a queue and [`WRITE_LANES`] lane
//! threads take it from there: a lane waits for a report, takes every report queued behind it (up to
//! [`MAX_BATCH`]), stores them in one transaction and commits once; every caller is answered only after
//! the commit holding its report (an HTTP request waits on its async task, holding no thread). Unlike
//! SQLite, the lanes' batches commit in parallel. A batch's first report of each device is stored
//! together with the others
//! ([`together`]: the device rows locked by one `SELECT .. FOR UPDATE`, checked, and every accepted
//! report written by one statement over arrays, all under one savepoint), so a batch costs about the
//! same round trips whatever its size; a device's later reports in the batch, or every report when
//! that statement fails, are stored one by one, each under its own savepoint with its sequence claimed
//! by a conditional `UPDATE` of the device row (`.. WHERE revoked_at IS NULL AND last_sequence < $2`).
//! Either way the device row stays locked until commit, so two reports of one device, in two lanes or
//! two collectors, never both pass the sequence check: the second waits, reads the committed row and is
//! refused as a replay. Lock order keeps parallel batches from deadlocking: device rows in device order,
//! and the shared per-release counters (`release_counts`) once, at the end of the batch, in key order,
//! summed over the batch's stored reports.
//!
//! **No TLS.** The server must be on this machine: a loopback address (`127.0.0.1`, `::1`,
//! `localhost`) or a Unix socket, where TLS protects nothing. Any other host is refused rather than
//! sent reports and the password in the clear; TLS to a remote server is not built yet.
//!
//! **The password is never shown.** Every message naming the URL names it with its password replaced by
//! `***` ([`redact_url`]); the driver's own errors do not carry it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ota_report::{DeviceId, PublicKey};
use postgres::config::Host;
use postgres::{Client, GenericClient, NoTls, Statement};

mod together;

use crate::actions::{on_postgres, DeviceStatus, LineDevice, RolloutAction};
use crate::migrations::{Migration, MIGRATIONS, SCHEMA_VERSION_TABLE};
use crate::store::{
    self, redact_url, sql_to_u64, to_sql_int, DeviceRow, EnrolledDevice, Enrolment, ReportDone, Store,
    StoredReport,
};
use crate::summary::{self, OutcomeRow, ReasonRow};
use crate::{Error, Result, Summary};

/// Connections per store: the most batches committing at once, plus readers.
pub const POOL_SIZE: u32 = 8;
/// Batches committing at once. Few, so that reports queue up and batches grow: a batch costs about as
/// many round trips whatever its size (see [`together`]).
pub const WRITE_LANES: usize = 2;
/// The most reports one transaction stores.
pub const MAX_BATCH: usize = 256;
/// How long a caller waits for a connection (a new one, or a free one from the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock migrations hold (any fixed number; this one spells "otacolle").
const MIGRATION_LOCK: i64 = 0x6f74_6163_6f6c_6c65;

/// The PostgreSQL store.
pub struct PostgresStore {
    /// The URL as shown: password hidden.
    url: String,
    pool: r2d2::Pool<Connector>,
    /// Reports for the lane threads (group commit, see [`Store::queue_report`]); `None` only
    /// while the store is dropped (the lanes then end).
    queue: Option<mpsc::Sender<WaitingReport>>,
    lanes: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("url", &self.url).finish()
    }
}

/// A report queued for the next batch, and who is told its outcome.
struct WaitingReport {
    report: StoredReport,
    done: ReportDone,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Each lane stores what is queued, sees the queue closed and ends.
        drop(self.queue.take());
        for lane in self.lanes.drain(..) {
            let _ = lane.join();
        }
    }
}

/// Opens the pool's connections.
struct Connector {
    config: postgres::Config,
}

/// A pooled connection and the statements prepared on it.
struct PgConnection {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl r2d2::ManageConnection for Connector {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConnection, postgres::Error> {
        Ok(PgConnection {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.client.is_closed()
    }
}

impl PostgresStore {
    /// Connects to the server at `url` (a `postgres://` or `postgresql://` URL on this machine), applies
    /// the migrations it lacks and keeps a pool of up to [`POOL_SIZE`] connections.
    pub fn open(url: &str) -> Result<PostgresStore> {
        let shown = redact_url(url);
        let config: postgres::Config = url.parse().map_err(|source| Error::PostgresUrl {
            url: shown.clone(),
            why: "not a PostgreSQL URL",
            source: Some(source),
        })?;
        require_local(&config, &shown)?;
        let connector = Connector { config };
        let mut first =
            r2d2::ManageConnection::connect(&connector).map_err(|source| Error::PostgresConnect {
                url: shown.clone(),
                source: Box::new(source),
            })?;
        migrate(&mut first.client, MIGRATIONS)?;
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            // A closed connection is noticed by has_broken; a round trip per checkout would cost more.
            .test_on_check_out(false)
            .connection_timeout(CONNECT_TIMEOUT)
            .build_unchecked(connector);
        let (queue, queued) = mpsc::channel();
        let queued = Arc::new(Mutex::new(queued));
        let lanes = (0..WRITE_LANES)
            .map(|i| {
                let (pool, queued) = (pool.clone(), queued.clone());
                std::thread::Builder::new()
                    .name(format!("pg-lane-{i}"))
                    .spawn(move || write_batches(&pool, &queued))
                    .map_err(|e| Error::Task {
                        why: format!("start a PostgreSQL write lane: {e}"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PostgresStore {
            url: shown,
            pool,
            queue: Some(queue),
            lanes,
        })
    }

    /// The schema version recorded in the database (the highest migration applied).
    pub fn schema_version(&self) -> Result<u32> {
        schema_version(&mut self.connection()?.client)
    }

    fn connection(&self) -> Result<r2d2::PooledConnection<Connector>> {
        self.pool.get().map_err(|source| Error::PostgresConnect {
            url: self.url.clone(),
            source: Box::new(source),
        })
    }
}

/// A write lane: waits for a report, takes every report queued behind it (up to [`MAX_BATCH`]), stores
/// them in one transaction on a pooled connection and tells each caller its outcome after the commit.
/// [`WRITE_LANES`] lanes commit in parallel; the queue's lock is held only while taking a batch.
fn write_batches(pool: &r2d2::Pool<Connector>, queued: &Mutex<mpsc::Receiver<WaitingReport>>) {
    loop {
        let batch = {
            let queued = lock(queued);
            let Ok(first) = queued.recv() else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queued.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        match pool.get() {
            Ok(mut conn) => commit_batch(&mut conn, batch),
            // No connection: nothing of the batch is stored, and every caller is told why.
            Err(e) => {
                let why = error_chain(&e);
                for waiting in batch {
                    (waiting.done)(Err(Error::CommitFailed { why: why.clone() }));
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The queue is a Vec pushed and drained whole: a panic elsewhere cannot leave it half changed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Refuses a server off this machine (no TLS, see the module doc).
fn require_local(config: &postgres::Config, shown: &str) -> Result<()> {
    let local = |host: &Host| match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    if hosts.is_empty() || !hosts.iter().all(local) || !addrs.iter().all(IpAddr::is_loopback) {
        return Err(Error::PostgresUrl {
            url: shown.to_string(),
            why: "the server must be on this machine (a loopback address or a Unix socket): \
                  TLS to PostgreSQL is not built in",
            source: None,
        });
    }
    Ok(())
}

fn schema_version(client: &mut impl GenericClient) -> Result<u32> {
    let v: Option<i32> = client
        .query_one("SELECT MAX(version) FROM schema_version", &[])
        .and_then(|row| row.try_get(0))
        .map_err(Error::postgres("read the schema version"))?;
    u32::try_from(v.unwrap_or(0)).map_err(|_| Error::CorruptRow {
        what: "schema version",
        why: format!("{v:?}"),
    })
}

/// Applies each migration above the recorded version, each in its own transaction with its record, all
/// under the migration lock (the version is read again inside it).
fn migrate(client: &mut Client, migrations: &[Migration]) -> Result<()> {
    let known = migrations.last().map_or(0, |m| m.version);
    let mut steps = migrations.iter().map(Some).collect::<Vec<_>>();
    // A first step that applies nothing: creates schema_version and refuses a newer schema.
    steps.insert(0, None);
    for step in steps {
        let failed = |source| match step {
            Some(m) => Error::PostgresMigration {
                version: m.version,
                name: m.name,
                source,
            },
            None => Error::Postgres {
                action: "create the schema_version table",
                source,
            },
        };
        let mut tx = client.transaction().map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(failed)?;
        tx.batch_execute(SCHEMA_VERSION_TABLE).map_err(failed)?;
        let current = schema_version(&mut tx)?;
        if current > known {
            return Err(Error::SchemaTooNew {
                found: current,
                known,
            });
        }
        if let Some(m) = step.filter(|m| m.version > current) {
            tx.batch_execute(m.sql).map_err(failed)?;
            let version = i32::try_from(m.version).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                &[&version, &m.name, &Utc::now().timestamp_millis()],
            )
            .map_err(failed)?;
        }
        tx.commit().map_err(failed)?;
    }
    Ok(())
}

/// The statement for `sql` prepared on this connection, preparing it the first time.
fn prepared(
    statements: &mut HashMap<&'static str, Statement>,
    client: &mut impl GenericClient,
    sql: &'static str,
) -> Result<Statement> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = client
        .prepare(sql)
        .map_err(Error::postgres("prepare a statement"))?;
    statements.insert(sql, s.clone());
    Ok(s)
}

const DEVICE_ROW: &str = "SELECT key_algorithm, public_key, enrolled_at, revoked_at, last_sequence
     FROM devices WHERE device_id = $1";

fn device_row(
    statements: &mut HashMap<&'static str, Statement>,
    client: &mut impl GenericClient,
    device: &DeviceId,
) -> Result<Option<DeviceRow>> {
    let stmt = prepared(statements, client, DEVICE_ROW)?;
    let row = client
        .query_opt(&stmt, &[&device.as_str()])
        .map_err(Error::postgres("look up a device"))?;
    row.map(|r| {
        Ok(DeviceRow {
            algorithm: r.try_get(0)?,
            key_hex: r.try_get(1)?,
            enrolled_at: r.try_get(2)?,
            revoked_at: r.try_get(3)?,
            last_sequence: r.try_get(4)?,
        })
    })
    .transpose()
    .map_err(Error::postgres("read a device"))
}

impl Store for PostgresStore {
    fn enroll(&self, key: &PublicKey, at: DateTime<Utc>) -> Result<Enrolment> {
        let device = key.device_id();
        let mut conn = self.connection()?;
        let PgConnection { client, statements } = &mut *conn;
        let added = client
            .execute(
                "INSERT INTO devices (device_id, key_algorithm, public_key, enrolled_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (device_id) DO NOTHING",
                &[
                    &device.as_str(),
                    &key.algorithm(),
                    &hex::encode(key.to_bytes()),
                    &at.timestamp_millis(),
                ],
            )
            .map_err(Error::postgres("enrol a device"))?;
        if added == 1 {
            return Ok(Enrolment::Added);
        }
        match device_row(statements, client, &device)? {
            Some(row) => row.enrolment_again(key),
            None => Err(Error::CorruptRow {
                what: "device",
                why: format!("{device} neither inserted nor found"),
            }),
        }
    }

    fn revoke(&self, device: &DeviceId, at: DateTime<Utc>) -> Result<()> {
        let changed = self
            .connection()?
            .client
            .execute(
                "UPDATE devices SET revoked_at = COALESCE(revoked_at, $2) WHERE device_id = $1",
                &[&device.as_str(), &at.timestamp_millis()],
            )
            .map_err(Error::postgres("revoke a device"))?;
        if changed == 0 {
            return Err(Error::NotEnrolled {
                device: device.clone(),
            });
        }
        Ok(())
    }

    fn device(&self, device: &DeviceId) -> Result<Option<EnrolledDevice>> {
        let mut conn = self.connection()?;
        let PgConnection { client, statements } = &mut *conn;
        let row = device_row(statements, client, device)?;
        row.map(|r| r.into_device(device.clone())).transpose()
    }

    /// Queues the report for a write lane and waits for its outcome.
    fn insert_report(&self, stored: &StoredReport) -> Result<()> {
        store::insert_by_queue(self, stored, "PostgreSQL write lanes")
    }

    /// Group commit (see the module doc): the report joins the queue; a write lane takes it with every
    /// report queued behind it, stores them in one transaction and calls each report's `done` once its
    /// batch is committed (or the report refused).
    fn queue_report(&self, stored: StoredReport, done: ReportDone) {
        let waiting = WaitingReport { report: stored, done };
        let refused = match &self.queue {
            Some(queue) => queue.send(waiting).err().map(|mpsc::SendError(w)| w),
            None => Some(waiting),
        };
        if let Some(waiting) = refused {
            (waiting.done)(Err(Error::Task {
                why: "the PostgreSQL write lanes ended".into(),
            }));
        }
    }

    fn queues_reports(&self) -> bool {
        true
    }

    fn summary(&self) -> Result<Summary> {
        let mut conn = self.connection()?;
        // One snapshot for the three reads, so the counts and reasons agree.
        let mut tx = conn
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(Error::postgres("begin the summary"))?;
        let outcomes = query_rows(&mut tx, OUTCOME_ROWS, "read the summary", |r| {
            Ok(OutcomeRow {
                release: (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                outcome: r.try_get(3)?,
                devices: r.try_get(4)?,
            })
        })?;
        let reasons = query_rows(&mut tx, REASON_ROWS, "read the failure reasons", |r| {
            Ok(ReasonRow {
                release: (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                reason: r.try_get(3)?,
                devices: r.try_get(4)?,
            })
        })?;
        let known = query_rows(&mut tx, KNOWN_DEVICE_ROWS, "count devices", |r| {
            Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?))
        })?;
        let reports_dropped = on_postgres::dropped(&mut tx)?;
        let actions = on_postgres::actions(&mut tx)?;
        tx.commit().map_err(Error::postgres("end the summary"))?;
        let mut summary = summary::build(outcomes, reasons, known);
        summary.reports_dropped = reports_dropped;
        summary.actions = actions;
        Ok(summary)
    }

    fn report_count(&self) -> Result<u64> {
        let n: i64 = self
            .connection()?
            .client
            .query_one("SELECT COUNT(*) FROM reports", &[])
            .and_then(|r| r.try_get(0))
            .map_err(Error::postgres("count reports"))?;
        sql_to_u64("report count", n)
    }

    fn history(&self, buckets: u32) -> Result<crate::History> {
        let summary = self.summary()?;
        let history = crate::history::read_postgres(&mut self.connection()?.client, &summary, buckets)?;
        Ok(crate::history::with_actions(history, self.actions()?))
    }

    fn release_devices(&self, channel: &str, to_version: &str) -> Result<Vec<DeviceStatus>> {
        on_postgres::release_devices(&mut self.connection()?.client, channel, to_version)
    }

    fn line_devices(&self, channel: &str) -> Result<Vec<LineDevice>> {
        on_postgres::line_devices(&mut self.connection()?.client, channel)
    }

    fn set_device_line(&self, device: &DeviceId, hardware: &str, channel: &str) -> Result<()> {
        on_postgres::set_line(&mut self.connection()?.client, device, hardware, channel)
    }

    fn record_action(&self, action: &RolloutAction) -> Result<bool> {
        on_postgres::record(&mut self.connection()?.client, action)
    }

    fn actions(&self) -> Result<Vec<RolloutAction>> {
        on_postgres::actions(&mut self.connection()?.client)
    }
}

const OUTCOME_ROWS: &str = "SELECT hardware, channel, to_version, outcome, devices FROM release_counts
     WHERE devices > 0";
const REASON_ROWS: &str = "SELECT hardware, channel, to_version, reason, COUNT(*) FROM release_status
     WHERE outcome IN ('failed', 'rolled_back', 'drill_failed')
     GROUP BY hardware, channel, to_version, reason";
/// Devices not revoked, per (hardware, channel) of their latest report: who could report on a release.
const KNOWN_DEVICE_ROWS: &str = "SELECT hardware, channel, COUNT(*) FROM devices
     WHERE revoked_at IS NULL AND hardware IS NOT NULL AND channel IS NOT NULL
     GROUP BY hardware, channel";

fn query_rows<T>(
    client: &mut impl GenericClient,
    sql: &str,
    action: &'static str,
    read: impl Fn(&postgres::Row) -> Result<T, postgres::Error>,
) -> Result<Vec<T>> {
    let rows = client.query(sql, &[]).map_err(Error::postgres(action))?;
    rows.iter()
        .map(|r| read(r).map_err(Error::postgres(action)))
        .collect()
}

/// (hardware, channel, to_version, outcome): one `release_counts` row.
type CountKey = (String, String, String, String);

/// How one stored report moves its device between outcomes on its release.
struct OutcomeChange {
    release: (String, String, String),
    previous: Option<String>,
    now: String,
}

impl OutcomeChange {
    /// `stored` moves its device from `previous` (its outcome on the release before, if any).
    fn of(stored: &StoredReport, previous: Option<&String>) -> OutcomeChange {
        let r = &stored.report;
        OutcomeChange {
            release: (
                r.hardware.as_str().to_string(),
                r.channel.as_str().to_string(),
                r.to_version.to_string(),
            ),
            previous: previous.cloned(),
            now: r.outcome.as_str().to_string(),
        }
    }

    fn add_to(self, counts: &mut BTreeMap<CountKey, i64>) {
        if self.previous.as_deref() == Some(self.now.as_str()) {
            return;
        }
        let (hardware, channel, version) = self.release;
        let key = |outcome| (hardware.clone(), channel.clone(), version.clone(), outcome);
        if let Some(previous) = self.previous {
            *counts.entry(key(previous)).or_default() -= 1;
        }
        *counts.entry(key(self.now)).or_default() += 1;
    }
}

/// Stores `batch` (see [`store_batch`]) and answers every caller: its report's own outcome once the
/// batch committed, or the commit's failure (nothing of the batch stored).
fn commit_batch(conn: &mut PgConnection, mut batch: Vec<WaitingReport>) {
    // Device rows are locked in this order in every batch: parallel batches cannot deadlock on them.
    batch.sort_by(|a, b| {
        let key = |w: &WaitingReport| (w.report.report.device_id.to_string(), w.report.report.sequence);
        key(a).cmp(&key(b))
    });
    match store_batch(conn, &batch) {
        Ok(outcomes) => {
            for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                (waiting.done)(outcome);
            }
        }
        Err(e) => {
            let why = error_chain(&e);
            for waiting in batch {
                (waiting.done)(Err(Error::CommitFailed { why: why.clone() }));
            }
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// One transaction: the first report of each device in the batch stored together ([`together`]), the
/// rest (a device's later reports, or all of them when storing together failed) each under its own
/// savepoint (a refused one rolls back alone and stores nothing), then the batch's counter changes, then
/// one commit. Returns each report's outcome.
fn store_batch(conn: &mut PgConnection, batch: &[WaitingReport]) -> Result<Vec<Result<()>>> {
    let PgConnection { client, statements } = conn;
    let mut tx = client
        .transaction()
        .map_err(Error::postgres("begin storing reports"))?;
    let mut counts = BTreeMap::new();
    let mut outcomes: Vec<Option<Result<()>>> = batch.iter().map(|_| None).collect();
    // The batch is in device order: a report whose device differs from the one before is its first.
    let (first, later): (Vec<usize>, Vec<usize>) = (0..batch.len()).partition(|&i| {
        let device = |i: usize| batch.get(i).map(|w| &w.report.report.device_id);
        i == 0 || device(i) != device(i - 1)
    });
    let firsts: Vec<&StoredReport> = first
        .iter()
        .filter_map(|&i| batch.get(i))
        .map(|w| &w.report)
        .collect();
    let one_by_one = match together::store_together(statements, &mut tx, &firsts)? {
        Some(stored) => {
            for (&i, outcome) in first.iter().zip(stored) {
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = Some(outcome.map(|change| change.add_to(&mut counts)));
                }
            }
            later
        }
        None => (0..batch.len()).collect(),
    };
    for i in one_by_one {
        let (Some(waiting), Some(slot)) = (batch.get(i), outcomes.get_mut(i)) else {
            continue;
        };
        let mut savepoint = tx
            .savepoint("report")
            .map_err(Error::postgres("open a report's savepoint"))?;
        let stored = store_one(statements, &mut savepoint, &waiting.report);
        let closed = if stored.is_ok() {
            savepoint.commit()
        } else {
            savepoint.rollback()
        };
        closed.map_err(Error::postgres("close a report's savepoint"))?;
        *slot = Some(stored.map(|change| change.add_to(&mut counts)));
    }
    count_outcome_changes(statements, &mut tx, &counts)?;
    tx.commit().map_err(Error::postgres("commit reports"))?;
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(Error::Task {
                    why: "a report of the batch was not stored".into(),
                })
            })
        })
        .collect())
}

/// In key order, once per batch: these rows are shared by every lane (see the module doc).
fn count_outcome_changes(
    statements: &mut HashMap<&'static str, Statement>,
    tx: &mut postgres::Transaction<'_>,
    counts: &BTreeMap<CountKey, i64>,
) -> Result<()> {
    let count = prepared(statements, tx, COUNT_CHANGE)?;
    for ((hardware, channel, version, outcome), change) in counts.iter().filter(|(_, n)| **n != 0) {
        tx.execute(&count, &[hardware, channel, version, outcome, change])
            .map_err(Error::postgres("count outcomes"))?;
    }
    Ok(())
}

/// Takes the next sequence number of an enrolled device not revoked; locks the device row until commit.
const CLAIM_SEQUENCE: &str = "UPDATE devices SET last_sequence = $2, hardware = $3, channel = $4,
         reports_dropped = $5
     WHERE device_id = $1 AND revoked_at IS NULL AND (last_sequence IS NULL OR last_sequence < $2)";

/// The report row and the device's latest status on the release, in one round trip; returns the
/// outcome the status replaces (read before the upsert: a statement's parts share one snapshot).
const WRITE_REPORT: &str = "WITH previous AS (
         SELECT outcome FROM release_status
         WHERE device_id = $1 AND hardware = $4 AND channel = $5 AND to_version = $7),
     report AS (
         INSERT INTO reports (device_id, sequence, received_at, hardware, channel, from_version,
             to_version, target, outcome, reason, started_at, finished_at, bytes_downloaded,
             install_method, wave, envelope, reports_dropped)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL, $15, $16)),
     status AS (
         INSERT INTO release_status (device_id, hardware, channel, to_version, wave, sequence,
             outcome, reason, updated_at)
         VALUES ($1, $4, $5, $7, NULL, $2, $9, $10, $3)
         ON CONFLICT (device_id, hardware, channel, to_version) DO UPDATE SET
             wave = excluded.wave, sequence = excluded.sequence, outcome = excluded.outcome,
             reason = excluded.reason, updated_at = excluded.updated_at)
     SELECT outcome FROM previous";

const COUNT_CHANGE: &str = "INSERT INTO release_counts (hardware, channel, to_version, outcome, devices)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (hardware, channel, to_version, outcome) DO UPDATE SET
         devices = release_counts.devices + excluded.devices";

/// Inside the report's savepoint: claims the sequence (refusing an unknown or revoked device and a
/// replay), then writes the report and the device's status on the release.
fn store_one(
    statements: &mut HashMap<&'static str, Statement>,
    tx: &mut postgres::Transaction<'_>,
    stored: &StoredReport,
) -> Result<OutcomeChange> {
    let r = &stored.report;
    let sequence = to_sql_int("sequence", r.sequence)?;
    let bytes_downloaded = to_sql_int("bytes_downloaded", r.bytes_downloaded)?;
    let dropped = to_sql_int("reports_dropped", r.reports_dropped)?;
    let (device, hardware, channel) = (r.device_id.as_str(), r.hardware.as_str(), r.channel.as_str());
    let claim = prepared(statements, tx, CLAIM_SEQUENCE)?;
    let claimed = tx
        .execute(&claim, &[&device, &sequence, &hardware, &channel, &dropped])
        .map_err(Error::postgres("record the last sequence"))?;
    if claimed == 0 {
        return Err(refusal(statements, tx, stored)?);
    }
    let to_version = r.to_version.to_string();
    let write = prepared(statements, tx, WRITE_REPORT)?;
    let previous = tx
        .query_opt(
            &write,
            &[
                &device,
                &sequence,
                &stored.received_at.timestamp_millis(),
                &hardware,
                &channel,
                &r.from_version.to_string(),
                &to_version,
                &r.target.as_str(),
                &r.outcome.as_str(),
                &r.reason.as_str(),
                &r.started.timestamp_millis(),
                &r.finished.timestamp_millis(),
                &bytes_downloaded,
                &r.install_method.map(|m| m.as_str()),
                &stored.envelope,
                &dropped,
            ],
        )
        .and_then(|row| row.map(|row| row.try_get::<_, String>(0)).transpose())
        .map_err(Error::postgres("insert a report"))?;
    Ok(OutcomeChange::of(stored, previous.as_ref()))
}

/// Why the sequence was not claimed: read after the claim, so it sees what the claim saw.
fn refusal(
    statements: &mut HashMap<&'static str, Statement>,
    tx: &mut postgres::Transaction<'_>,
    stored: &StoredReport,
) -> Result<Error> {
    let device = &stored.report.device_id;
    let Some(row) = device_row(statements, tx, device)? else {
        return Ok(Error::UnknownDevice {
            key_ids: device.to_string(),
        });
    };
    if row.revoked_at.is_some() {
        return Ok(Error::Revoked {
            device: device.clone(),
        });
    }
    Ok(Error::Replay {
        device: device.clone(),
        sequence: stored.report.sequence,
        last: sql_to_u64("last sequence", row.last_sequence.unwrap_or(0))?,
    })
}
