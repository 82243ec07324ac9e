//! A batch's reports stored with a few statements for the whole batch rather than a few per report:
//! the devices locked in one `SELECT .. FOR UPDATE` (in device order), checked here, and every accepted
//! report's rows written by one statement over arrays. All under one savepoint: when a statement fails
//! (a report the server refuses, whichever it is), the savepoint is rolled back and the caller stores
//! each report alone under its own savepoint, so the one that fails stores nothing and spares the others.

use std::collections::HashMap;

use postgres::{Statement, Transaction};

use super::{prepared, OutcomeChange};
use crate::store::{sql_to_u64, to_sql_int, StoredReport};
use crate::{Error, Result};

/// Locks the batch's devices until commit, in one order for every batch (no deadlock between lanes).
const LOCK_DEVICES: &str = "SELECT device_id, revoked_at, last_sequence FROM devices
     WHERE device_id = ANY($1) ORDER BY device_id COLLATE \"C\" FOR UPDATE";

/// Every accepted report: its row, its device's last sequence, its status on its release; returns the
/// outcomes the statuses replace (read in the statement's snapshot, before the upsert).
const WRITE_TOGETHER: &str = "WITH v AS (
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
             $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[],
             $13::bigint[], $14::text[], $15::text[], $16::bigint[])
         AS v(id, seq, received, hardware, channel, from_version, to_version, target, outcome, reason,
             started, finished, bytes, method, envelope, dropped)),
     previous AS (
         SELECT s.device_id, s.outcome FROM release_status s JOIN v ON s.device_id = v.id
             AND s.hardware = v.hardware AND s.channel = v.channel AND s.to_version = v.to_version),
     claimed AS (
         UPDATE devices d SET last_sequence = v.seq, hardware = v.hardware, channel = v.channel,
             reports_dropped = v.dropped
         FROM v WHERE d.device_id = v.id),
     report AS (
         INSERT INTO reports (device_id, sequence, received_at, hardware, channel, from_version,
             to_version, target, outcome, reason, started_at, finished_at, bytes_downloaded,
             install_method, wave, envelope, reports_dropped)
         SELECT id, seq, received, hardware, channel, from_version, to_version, target, outcome, reason,
             started, finished, bytes, method, NULL, envelope, dropped FROM v),
     status AS (
         INSERT INTO release_status (device_id, hardware, channel, to_version, wave, sequence,
             outcome, reason, updated_at)
         SELECT id, hardware, channel, to_version, NULL, seq, outcome, reason, received FROM v
         ON CONFLICT (device_id, hardware, channel, to_version) DO UPDATE SET
             wave = excluded.wave, sequence = excluded.sequence, outcome = excluded.outcome,
             reason = excluded.reason, updated_at = excluded.updated_at)
     SELECT device_id, outcome FROM previous";

/// Stores `reports` (at most one per device) together under one savepoint. `None`: a statement failed
/// and nothing of them is stored (the caller stores each alone); else each report's outcome.
pub(super) fn store_together(
    statements: &mut HashMap<&'static str, Statement>,
    tx: &mut Transaction<'_>,
    reports: &[&StoredReport],
) -> Result<Option<Vec<Result<OutcomeChange>>>> {
    if reports.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let mut savepoint = tx
        .savepoint("together")
        .map_err(Error::postgres("open the batch's savepoint"))?;
    match write_together(statements, &mut savepoint, reports) {
        Ok(outcomes) => {
            savepoint
                .commit()
                .map_err(Error::postgres("release the batch's savepoint"))?;
            Ok(Some(outcomes))
        }
        Err(_) => {
            savepoint
                .rollback()
                .map_err(Error::postgres("roll back the batch's savepoint"))?;
            Ok(None)
        }
    }
}

/// A device row as locked: revoked or not, its last sequence.
type DeviceState = (bool, Option<i64>);

fn write_together(
    statements: &mut HashMap<&'static str, Statement>,
    tx: &mut Transaction<'_>,
    reports: &[&StoredReport],
) -> Result<Vec<Result<OutcomeChange>>> {
    let ids: Vec<&str> = reports.iter().map(|s| s.report.device_id.as_str()).collect();
    let lock = prepared(statements, tx, LOCK_DEVICES)?;
    let mut devices: HashMap<String, DeviceState> = HashMap::new();
    for row in tx
        .query(&lock, &[&ids])
        .map_err(Error::postgres("lock the devices"))?
    {
        let read = |row: &postgres::Row| -> Result<_, postgres::Error> {
            let revoked: Option<i64> = row.try_get(1)?;
            Ok((row.try_get(0)?, (revoked.is_some(), row.try_get(2)?)))
        };
        let (id, state) = read(&row).map_err(Error::postgres("read the devices"))?;
        devices.insert(id, state);
    }
    let mut columns = Columns::default();
    let checked: Vec<Result<()>> = reports
        .iter()
        .map(|stored| {
            let state = devices.get(stored.report.device_id.as_str()).copied();
            check(stored, state).and_then(|()| columns.push(stored))
        })
        .collect();
    let previous = if columns.ids.is_empty() {
        HashMap::new()
    } else {
        columns.write(statements, tx)?
    };
    Ok(reports
        .iter()
        .zip(checked)
        .map(|(stored, checked)| {
            checked.map(|()| OutcomeChange::of(stored, previous.get(stored.report.device_id.as_str())))
        })
        .collect())
}

/// The device is enrolled, not revoked, and the sequence is above its last.
fn check(stored: &StoredReport, state: Option<DeviceState>) -> Result<()> {
    let device = &stored.report.device_id;
    match state {
        None => Err(Error::UnknownDevice {
            key_ids: device.to_string(),
        }),
        Some((true, _)) => Err(Error::Revoked {
            device: device.clone(),
        }),
        Some((false, Some(last))) if i128::from(last) >= i128::from(stored.report.sequence) => {
            Err(Error::Replay {
                device: device.clone(),
                sequence: stored.report.sequence,
                last: sql_to_u64("last sequence", last)?,
            })
        }
        Some((false, _)) => Ok(()),
    }
}

/// The accepted reports as one array per column (the parameters of [`WRITE_TOGETHER`]).
#[derive(Default)]
struct Columns {
    ids: Vec<String>,
    sequences: Vec<i64>,
    received: Vec<i64>,
    hardware: Vec<String>,
    channels: Vec<String>,
    from_versions: Vec<String>,
    to_versions: Vec<String>,
    targets: Vec<String>,
    outcomes: Vec<String>,
    reasons: Vec<String>,
    started: Vec<i64>,
    finished: Vec<i64>,
    bytes: Vec<i64>,
    methods: Vec<Option<String>>,
    envelopes: Vec<String>,
    dropped: Vec<i64>,
}

impl Columns {
    /// Adds a report; refused (nothing added) when a number does not fit its column.
    fn push(&mut self, stored: &StoredReport) -> Result<()> {
        let r = &stored.report;
        let sequence = to_sql_int("sequence", r.sequence)?;
        let bytes = to_sql_int("bytes_downloaded", r.bytes_downloaded)?;
        let dropped = to_sql_int("reports_dropped", r.reports_dropped)?;
        self.ids.push(r.device_id.to_string());
        self.sequences.push(sequence);
        self.received.push(stored.received_at.timestamp_millis());
        self.hardware.push(r.hardware.as_str().to_string());
        self.channels.push(r.channel.as_str().to_string());
        self.from_versions.push(r.from_version.to_string());
        self.to_versions.push(r.to_version.to_string());
        self.targets.push(r.target.as_str().to_string());
        self.outcomes.push(r.outcome.as_str().to_string());
        self.reasons.push(r.reason.as_str().to_string());
        self.started.push(r.started.timestamp_millis());
        self.finished.push(r.finished.timestamp_millis());
        self.bytes.push(bytes);
        self.methods
            .push(r.install_method.map(|m| m.as_str().to_string()));
        self.envelopes.push(stored.envelope.clone());
        self.dropped.push(dropped);
        Ok(())
    }

    /// Runs [`WRITE_TOGETHER`]; the previous outcome of each device that had one on its release.
    fn write(
        &self,
        statements: &mut HashMap<&'static str, Statement>,
        tx: &mut Transaction<'_>,
    ) -> Result<HashMap<String, String>> {
        let write = prepared(statements, tx, WRITE_TOGETHER)?;
        let rows = tx
            .query(
                &write,
                &[
                    &self.ids,
                    &self.sequences,
                    &self.received,
                    &self.hardware,
                    &self.channels,
                    &self.from_versions,
                    &self.to_versions,
                    &self.targets,
                    &self.outcomes,
                    &self.reasons,
                    &self.started,
                    &self.finished,
                    &self.bytes,
                    &self.methods,
                    &self.envelopes,
                    &self.dropped,
                ],
            )
            .map_err(Error::postgres("insert reports"))?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, postgres::Error>>()
            .map_err(Error::postgres("read the previous outcomes"))
    }
}
