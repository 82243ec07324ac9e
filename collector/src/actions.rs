//! What the automatic halt reads and writes in the store: each device's latest outcome on a rollout,
//! the devices of a channel, and the halts and alerts issued ([`RolloutAction`], table
//! `rollout_actions`), with the SQL both stores run (kept portable, like the migrations).

use chrono::{DateTime, Utc};
use ota_report::DeviceId;
use serde::{Deserialize, Serialize};

use crate::store::{millis_to_time, sql_to_u64, to_sql_int};
use crate::{Error, Result};

/// Most report references one action keeps (the rest are counted in `judged`, not listed).
pub const MAX_ACTION_REPORTS: usize = 1_000;

/// One device's latest report on a release (its row in `release_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// The device.
    pub device_id: String,
    /// Its hardware id.
    pub hardware: String,
    /// The outcome of its latest report on the release.
    pub outcome: String,
    /// That report's sequence number.
    pub sequence: u64,
}

/// A device not revoked, on the hardware id it last reported (or was enrolled with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineDevice {
    /// The device.
    pub device_id: String,
    /// Its hardware id.
    pub hardware: String,
}

/// What the collector did when a rule tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// It signed and published a halt of the release.
    Halted,
    /// It could not halt (no keys, or the publish failed): it alerted.
    Alerted,
}

impl ActionKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Halted => "halted",
            ActionKind::Alerted => "alerted",
        }
    }

    fn from_name(name: &str) -> Option<ActionKind> {
        match name {
            "halted" => Some(ActionKind::Halted),
            "alerted" => Some(ActionKind::Alerted),
            _ => None,
        }
    }
}

/// A report a rule judged: its device and sequence number (the row in `reports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRef {
    /// The device that sent it.
    pub device_id: String,
    /// Its sequence number.
    pub sequence: u64,
}

/// A halt or alert the collector issued for one release (hardware, channel, version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutAction {
    /// Hardware id.
    pub hardware: String,
    /// Channel.
    pub channel: String,
    /// The release's version.
    pub to_version: String,
    /// Halted or alerted.
    pub action: ActionKind,
    /// The rule that tripped, as text.
    pub rule: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The open wave the rule judged, from 1 (absent: the release has no waves, or they are unknown).
    pub wave: Option<u32>,
    /// Devices whose latest report the rule judged (committed, rolled back or failed).
    pub judged: u64,
    /// Of those, devices that rolled back.
    pub rolled_back: u64,
    /// The reports judged (at most [`MAX_ACTION_REPORTS`]).
    pub reports: Vec<ReportRef>,
    /// What happened: the published control file, or why it only alerted.
    pub detail: String,
}

pub(crate) const RELEASE_DEVICES: &str = "SELECT device_id, hardware, outcome, sequence FROM release_status
     WHERE channel = $1 AND to_version = $2";
pub(crate) const LINE_DEVICES: &str = "SELECT device_id, hardware FROM devices
     WHERE revoked_at IS NULL AND hardware IS NOT NULL AND channel = $1";
pub(crate) const SET_LINE: &str = "UPDATE devices SET hardware = COALESCE(hardware, $2),
     channel = COALESCE(channel, $3) WHERE device_id = $1";
pub(crate) const INSERT_ACTION: &str = "INSERT INTO rollout_actions (hardware, channel, to_version,
     action, rule, at, wave, judged, rolled_back, reports, detail)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (hardware, channel, to_version, action) DO NOTHING";
pub(crate) const SELECT_ACTIONS: &str = "SELECT hardware, channel, to_version, action, rule, at, wave,
     judged, rolled_back, reports, detail FROM rollout_actions ORDER BY at, hardware, channel, to_version";
pub(crate) const DROPPED_TOTAL: &str =
    "SELECT CAST(COALESCE(SUM(reports_dropped), 0) AS BIGINT) FROM devices";

/// A `rollout_actions` row as read, before it is checked.
pub(crate) struct ActionRow {
    pub(crate) hardware: String,
    pub(crate) channel: String,
    pub(crate) to_version: String,
    pub(crate) action: String,
    pub(crate) rule: String,
    pub(crate) at: i64,
    pub(crate) wave: Option<i32>,
    pub(crate) judged: i64,
    pub(crate) rolled_back: i64,
    pub(crate) reports: String,
    pub(crate) detail: String,
}

impl ActionRow {
    pub(crate) fn into_action(self) -> Result<RolloutAction> {
        let corrupt = |why: String| Error::CorruptRow {
            what: "rollout action",
            why,
        };
        Ok(RolloutAction {
            action: ActionKind::from_name(&self.action)
                .ok_or_else(|| corrupt(format!("unknown action {:?}", self.action)))?,
            reports: serde_json::from_str(&self.reports).map_err(|e| corrupt(e.to_string()))?,
            at: millis_to_time("action time", self.at)?,
            wave: self
                .wave
                .map(|w| u32::try_from(w).map_err(|_| corrupt(format!("wave {w}"))))
                .transpose()?,
            judged: sql_to_u64("judged reports", self.judged)?,
            rolled_back: sql_to_u64("rolled back reports", self.rolled_back)?,
            hardware: self.hardware,
            channel: self.channel,
            to_version: self.to_version,
            rule: self.rule,
            detail: self.detail,
        })
    }
}

/// The values of [`INSERT_ACTION`], in order.
pub(crate) struct ActionValues {
    pub(crate) at: i64,
    pub(crate) wave: Option<i32>,
    pub(crate) judged: i64,
    pub(crate) rolled_back: i64,
    pub(crate) reports: String,
}

impl ActionValues {
    pub(crate) fn of(action: &RolloutAction) -> Result<ActionValues> {
        let reports = action
            .reports
            .get(..MAX_ACTION_REPORTS)
            .unwrap_or(&action.reports);
        Ok(ActionValues {
            at: action.at.timestamp_millis(),
            wave: action.wave.map(|w| i32::try_from(w).unwrap_or(i32::MAX)),
            judged: to_sql_int("judged", action.judged)?,
            rolled_back: to_sql_int("rolled_back", action.rolled_back)?,
            reports: serde_json::to_string(reports).map_err(|e| Error::CorruptRow {
                what: "rollout action",
                why: e.to_string(),
            })?,
        })
    }
}

/// The same statements on SQLite, whose numbered parameters are written `?N`.
fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

/// The SQLite side, called with a connection of [`crate::SqliteStore`].
pub(crate) mod on_sqlite {
    use rusqlite::{params, Connection};

    use super::*;

    pub(crate) fn release_devices(
        conn: &Connection,
        channel: &str,
        to_version: &str,
    ) -> Result<Vec<DeviceStatus>> {
        let action = "read a release's devices";
        let mut stmt = conn
            .prepare(&for_sqlite(RELEASE_DEVICES))
            .map_err(Error::storage(action))?;
        let rows = stmt
            .query_map(params![channel, to_version], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?))
            })
            .map_err(Error::storage(action))?;
        let mut out = Vec::new();
        for row in rows {
            let (device_id, hardware, outcome, sequence) = row.map_err(Error::storage(action))?;
            let sequence = sql_to_u64("sequence", sequence)?;
            out.push(DeviceStatus {
                device_id,
                hardware,
                outcome,
                sequence,
            });
        }
        Ok(out)
    }

    pub(crate) fn line_devices(conn: &Connection, channel: &str) -> Result<Vec<LineDevice>> {
        let action = "read a channel's devices";
        let mut stmt = conn
            .prepare(&for_sqlite(LINE_DEVICES))
            .map_err(Error::storage(action))?;
        let rows = stmt
            .query_map(params![channel], |r| {
                Ok(LineDevice {
                    device_id: r.get(0)?,
                    hardware: r.get(1)?,
                })
            })
            .map_err(Error::storage(action))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(Error::storage(action))
    }

    pub(crate) fn set_line(
        conn: &Connection,
        device: &DeviceId,
        hardware: &str,
        channel: &str,
    ) -> Result<()> {
        let changed = conn
            .execute(&for_sqlite(SET_LINE), params![device.as_str(), hardware, channel])
            .map_err(Error::storage("record a device's hardware and channel"))?;
        if changed == 0 {
            return Err(Error::NotEnrolled {
                device: device.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn record(conn: &Connection, a: &RolloutAction) -> Result<bool> {
        let v = ActionValues::of(a)?;
        let changed = conn
            .execute(
                &for_sqlite(INSERT_ACTION),
                params![
                    a.hardware,
                    a.channel,
                    a.to_version,
                    a.action.as_str(),
                    a.rule,
                    v.at,
                    v.wave,
                    v.judged,
                    v.rolled_back,
                    v.reports,
                    a.detail
                ],
            )
            .map_err(Error::storage("record a rollout action"))?;
        Ok(changed == 1)
    }

    pub(crate) fn actions(conn: &Connection) -> Result<Vec<RolloutAction>> {
        let action = "read the rollout actions";
        let mut stmt = conn.prepare(SELECT_ACTIONS).map_err(Error::storage(action))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ActionRow {
                    hardware: r.get(0)?,
                    channel: r.get(1)?,
                    to_version: r.get(2)?,
                    action: r.get(3)?,
                    rule: r.get(4)?,
                    at: r.get(5)?,
                    wave: r.get(6)?,
                    judged: r.get(7)?,
                    rolled_back: r.get(8)?,
                    reports: r.get(9)?,
                    detail: r.get(10)?,
                })
            })
            .map_err(Error::storage(action))?;
        let rows: Vec<ActionRow> = rows
            .collect::<rusqlite::Result<_>>()
            .map_err(Error::storage(action))?;
        rows.into_iter().map(ActionRow::into_action).collect()
    }

    pub(crate) fn dropped(conn: &Connection) -> Result<u64> {
        let n: i64 = conn
            .query_row(DROPPED_TOTAL, [], |r| r.get(0))
            .map_err(Error::storage("count dropped reports"))?;
        sql_to_u64("dropped reports", n)
    }
}

/// The PostgreSQL side, called with a client of [`crate::PostgresStore`].
pub(crate) mod on_postgres {
    use postgres::GenericClient;

    use super::*;

    pub(crate) fn release_devices(
        client: &mut impl GenericClient,
        channel: &str,
        to_version: &str,
    ) -> Result<Vec<DeviceStatus>> {
        let action = "read a release's devices";
        let rows = client
            .query(RELEASE_DEVICES, &[&channel, &to_version])
            .map_err(Error::postgres(action))?;
        rows.iter()
            .map(|r| {
                let sequence: i64 = r.try_get(3).map_err(Error::postgres(action))?;
                Ok(DeviceStatus {
                    device_id: r.try_get(0).map_err(Error::postgres(action))?,
                    hardware: r.try_get(1).map_err(Error::postgres(action))?,
                    outcome: r.try_get(2).map_err(Error::postgres(action))?,
                    sequence: sql_to_u64("sequence", sequence)?,
                })
            })
            .collect()
    }

    pub(crate) fn line_devices(client: &mut impl GenericClient, channel: &str) -> Result<Vec<LineDevice>> {
        let action = "read a channel's devices";
        let rows = client
            .query(LINE_DEVICES, &[&channel])
            .map_err(Error::postgres(action))?;
        rows.iter()
            .map(|r| {
                Ok(LineDevice {
                    device_id: r.try_get(0).map_err(Error::postgres(action))?,
                    hardware: r.try_get(1).map_err(Error::postgres(action))?,
                })
            })
            .collect()
    }

    pub(crate) fn set_line(
        client: &mut impl GenericClient,
        device: &DeviceId,
        hardware: &str,
        channel: &str,
    ) -> Result<()> {
        let changed = client
            .execute(SET_LINE, &[&device.as_str(), &hardware, &channel])
            .map_err(Error::postgres("record a device's hardware and channel"))?;
        if changed == 0 {
            return Err(Error::NotEnrolled {
                device: device.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn record(client: &mut impl GenericClient, a: &RolloutAction) -> Result<bool> {
        let v = ActionValues::of(a)?;
        let changed = client
            .execute(
                INSERT_ACTION,
                &[
                    &a.hardware,
                    &a.channel,
                    &a.to_version,
                    &a.action.as_str(),
                    &a.rule,
                    &v.at,
                    &v.wave,
                    &v.judged,
                    &v.rolled_back,
                    &v.reports,
                    &a.detail,
                ],
            )
            .map_err(Error::postgres("record a rollout action"))?;
        Ok(changed == 1)
    }

    pub(crate) fn actions(client: &mut impl GenericClient) -> Result<Vec<RolloutAction>> {
        let action = "read the rollout actions";
        let rows = client
            .query(SELECT_ACTIONS, &[])
            .map_err(Error::postgres(action))?;
        rows.iter()
            .map(|r| {
                let get = |e| Error::postgres(action)(e);
                ActionRow {
                    hardware: r.try_get(0).map_err(get)?,
                    channel: r.try_get(1).map_err(get)?,
                    to_version: r.try_get(2).map_err(get)?,
                    action: r.try_get(3).map_err(get)?,
                    rule: r.try_get(4).map_err(get)?,
                    at: r.try_get(5).map_err(get)?,
                    wave: r.try_get(6).map_err(get)?,
                    judged: r.try_get(7).map_err(get)?,
                    rolled_back: r.try_get(8).map_err(get)?,
                    reports: r.try_get(9).map_err(get)?,
                    detail: r.try_get(10).map_err(get)?,
                }
                .into_action()
            })
            .collect()
    }

    pub(crate) fn dropped(client: &mut impl GenericClient) -> Result<u64> {
        let n: i64 = client
            .query_one(DROPPED_TOTAL, &[])
            .and_then(|r| r.try_get(0))
            .map_err(Error::postgres("count dropped reports"))?;
        sql_to_u64("dropped reports", n)
    }
}
