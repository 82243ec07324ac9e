//! [`History`]: the fleet's state over time, per release and wave, for the dashboard and
//! `GET /v1/history`.
//!
//! The time axis is the collector's clock (`received_at`), not the devices' clocks, cut into equal
//! buckets from the first stored report to the last. A device's state on a release at the end of a
//! bucket is its latest report on that release up to then, as the summary counts it now. The store does
//! the counting in one query, the same SQL on SQLite and PostgreSQL (a window function, which SQLite has
//! since 3.25): each report is a move of its device from its previous outcome on the release to its new
//! one (`LAG`), grouped into "N devices moved from outcome A to B in bucket i". This module adds those
//! moves up into counts per bucket; the rows read are a few per release, wave, bucket and outcome,
//! however many devices and reports there are. The query itself reads every stored report (about 3 to 5 s
//! of CPU over 1,000,000 on this machine's SQLite), so the dashboard reuses a computed history for a while
//! (see `dashboard.rs`).
//!
//! The collector's own halts and alerts (`rollout_actions`, written by [`crate::halt`]) are joined to
//! their releases: a release the collector halted reads halted, with the time, rule and reason.

use std::collections::BTreeMap;

use ota_report::Outcome;
use serde::Serialize;

use crate::summary::ReleaseKey;
use crate::{ActionKind, Error, Result, RolloutAction, Summary};

/// Buckets when the caller names none.
pub const DEFAULT_BUCKETS: u32 = 60;
/// The most buckets a history has (bounds the answer's size).
pub const MAX_BUCKETS: u32 = 500;

/// The fleet over time: every release some device reported on, each cut by wave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct History {
    /// Start of the first bucket: the first stored report (Unix milliseconds, collector clock).
    pub start_ms: i64,
    /// Width of each bucket in milliseconds.
    pub bucket_ms: i64,
    /// How many buckets each series has.
    pub buckets: u32,
    /// Ordered by hardware, channel, then version (as the summary).
    pub releases: Vec<ReleaseHistory>,
}

/// One release over time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseHistory {
    /// The hardware id it is for.
    pub hardware: String,
    /// The channel.
    pub channel: String,
    /// The release's version.
    pub to_version: String,
    /// Where it stands, from its devices' latest reports.
    pub status: Status,
    /// Devices expected to report on it: those that did, plus the summary's pending ones.
    pub expected: u64,
    /// Per bucket: expected devices that had not reported on it yet by the bucket's end.
    pub pending: Vec<u64>,
    /// Milliseconds from its first report to its last, once nothing is pending; `None` while devices
    /// are still pending.
    pub converged_after_ms: Option<i64>,
    /// One entry per wave, in wave order; devices whose reports name no wave are in `wave: None`.
    pub waves: Vec<WaveHistory>,
    /// The halts and alerts the collector issued for it (its `rollout_actions` rows), oldest first.
    pub actions: Vec<ReleaseAction>,
}

/// A halt or alert the collector issued for a release, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseAction {
    /// Halted (the collector published a halt) or alerted (it could not: only an alert).
    pub action: ActionKind,
    /// When (Unix milliseconds, collector clock).
    pub at_ms: i64,
    /// The rule that tripped, as text.
    pub rule: String,
    /// Why: the published control file, or why it only alerted.
    pub detail: String,
    /// The wave the rule judged, from 1, when known.
    pub wave: Option<u32>,
    /// Devices whose latest report the rule judged.
    pub judged: u64,
    /// Of those, devices that rolled back.
    pub rolled_back: u64,
}

/// One wave of a release over time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveHistory {
    /// The wave's index, `None` for reports that name none.
    pub wave: Option<u32>,
    /// Where the wave stands, from its devices' latest reports.
    pub status: Status,
    /// Its first report (Unix milliseconds, collector clock).
    pub first_report_ms: i64,
    /// Its last report.
    pub last_report_ms: i64,
    /// Per bucket: the wave's devices by their latest report up to the bucket's end.
    pub states: Vec<StateCounts>,
}

/// Devices by the outcome of their latest report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// Committed.
    pub committed: u64,
    /// Rolled back.
    pub rolled_back: u64,
    /// Failed before a trial boot.
    pub failed: u64,
    /// Skipped: the rollout was halted.
    pub skipped_halted: u64,
    /// Skipped: the release was pulled.
    pub skipped_pulled: u64,
    /// A rollback drill passed.
    pub drill_passed: u64,
    /// A rollback drill failed (and any outcome this build does not know, so it stays visible).
    pub drill_failed: u64,
}

/// Where a release or wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The collector halted it by a rule, or devices report the rollout halted (their latest report is
    /// "skipped: halted").
    Halted,
    /// Devices report the release pulled.
    Pulled,
    /// Every expected device has reported on it.
    Converged,
    /// Devices are still to report.
    Active,
}

impl StateCounts {
    fn slot(&mut self, outcome: &str) -> &mut u64 {
        match Outcome::from_name(outcome) {
            Some(Outcome::Committed) => &mut self.committed,
            Some(Outcome::RolledBack) => &mut self.rolled_back,
            Some(Outcome::Failed) => &mut self.failed,
            Some(Outcome::SkippedHalted) => &mut self.skipped_halted,
            Some(Outcome::SkippedPulled) => &mut self.skipped_pulled,
            Some(Outcome::DrillPassed) => &mut self.drill_passed,
            Some(Outcome::DrillFailed) | None => &mut self.drill_failed,
        }
    }

    fn get(self, outcome: &str) -> u64 {
        let mut counts = self;
        *counts.slot(outcome)
    }

    /// Devices counted.
    pub fn devices(&self) -> u64 {
        self.committed
            + self.rolled_back
            + self.failed
            + self.skipped_halted
            + self.skipped_pulled
            + self.drill_passed
            + self.drill_failed
    }
}

/// First and last report of one (release, wave), as the store groups them.
pub(crate) struct SpanRow {
    pub release: ReleaseKey,
    pub wave: Option<i64>,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// `devices` devices of one (release, wave) moved from `before` (`None`: their first report on it) to
/// `outcome` in `bucket`.
pub(crate) struct ChangeRow {
    pub release: ReleaseKey,
    pub wave: Option<i64>,
    pub bucket: i64,
    pub outcome: String,
    pub before: Option<String>,
    pub devices: i64,
}

/// The first and last report of each release and wave. `$`-numbered parameters (none here) are
/// written `?N` for SQLite by [`for_sqlite`].
pub(crate) const SPAN_ROWS: &str =
    "SELECT hardware, channel, to_version, wave, MIN(received_at), MAX(received_at)
     FROM reports GROUP BY hardware, channel, to_version, wave";

/// The moves between outcomes per bucket: every report moves its device on its release (and wave) from
/// the outcome of its previous report there (`LAG`; none for the first) to its own. Within a bucket the
/// moves add up to the net change (a -> b then b -> c is a -> c), so no report needs to be dropped first.
/// `$1`: the first bucket's start, `$2`: bucket width, `$3`: the last time counted (reports stored after
/// the spans were read are left out, so every bucket is in range).
pub(crate) const CHANGE_ROWS: &str =
    "SELECT hardware, channel, to_version, wave, bucket, outcome, before, COUNT(*)
     FROM (
         SELECT hardware, channel, to_version, wave, outcome, (received_at - $1) / $2 AS bucket,
                LAG(outcome) OVER (
                    PARTITION BY device_id, hardware, channel, to_version, wave ORDER BY sequence) AS before
         FROM reports WHERE received_at <= $3
     ) moves
     WHERE before IS NULL OR before <> outcome
     GROUP BY hardware, channel, to_version, wave, bucket, outcome, before";

/// The same SQL with SQLite's numbered parameters (`?1` for `$1`).
pub(crate) fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

/// The time axis: buckets of equal width from the first report to the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
    pub bucket_ms: i64,
    pub buckets: u32,
}

impl Window {
    /// `buckets` (bounded to 1..=[`MAX_BUCKETS`]) over the reports `spans` cover; `None` when there
    /// are none.
    pub(crate) fn over(spans: &[SpanRow], buckets: u32) -> Option<Window> {
        let start_ms = spans.iter().map(|s| s.first_ms).min()?;
        let end_ms = spans.iter().map(|s| s.last_ms).max()?;
        let buckets = buckets.clamp(1, MAX_BUCKETS);
        // One more than the even share, so that (end - start) / width is below `buckets`.
        let bucket_ms = end_ms.saturating_sub(start_ms).max(0) / i64::from(buckets) + 1;
        Some(Window {
            start_ms,
            end_ms,
            bucket_ms,
            buckets,
        })
    }
}

/// Adds the store's moves up into counts per bucket, and joins the summary's pending devices.
pub(crate) fn build(
    window: Window,
    spans: Vec<SpanRow>,
    changes: Vec<ChangeRow>,
    summary: &Summary,
) -> History {
    let n = window.buckets as usize;
    let mut groups: BTreeMap<(ReleaseKey, Option<i64>), Group> = spans
        .into_iter()
        .map(|s| ((s.release, s.wave), Group::new(s.first_ms, s.last_ms, n)))
        .collect();
    for change in changes {
        let Some(group) = groups.get_mut(&(change.release, change.wave)) else {
            continue; // a (release, wave) first reported after the spans were read
        };
        group.apply(
            &change.outcome,
            change.before.as_deref(),
            change.bucket,
            change.devices,
        );
    }
    let mut releases: BTreeMap<ReleaseKey, Vec<(Option<i64>, Group)>> = BTreeMap::new();
    for ((release, wave), group) in groups {
        releases.entry(release).or_default().push((wave, group));
    }
    let releases = summary
        .releases
        .iter()
        .filter_map(|r| {
            let key = (r.hardware.clone(), r.channel.clone(), r.to_version.clone());
            let waves = releases.remove(&key)?;
            Some(release_history(key, r.devices + r.pending, waves))
        })
        .collect();
    History {
        start_ms: window.start_ms,
        bucket_ms: window.bucket_ms,
        buckets: window.buckets,
        releases,
    }
}

/// One (release, wave) while its moves are added up: per bucket, the change in each count.
struct Group {
    first_ms: i64,
    last_ms: i64,
    moves: Vec<Moves>,
}

/// The moves within one bucket: into and out of each outcome (counts that only grow, so no signs).
#[derive(Default, Clone, Copy)]
struct Moves {
    into: StateCounts,
    out_of: StateCounts,
    first_reports: u64,
}

impl Group {
    fn new(first_ms: i64, last_ms: i64, buckets: usize) -> Group {
        Group {
            first_ms,
            last_ms,
            moves: vec![Moves::default(); buckets],
        }
    }

    fn apply(&mut self, outcome: &str, before: Option<&str>, bucket: i64, devices: i64) {
        let devices = u64::try_from(devices).unwrap_or(0);
        let Some(moves) = usize::try_from(bucket).ok().and_then(|b| self.moves.get_mut(b)) else {
            return; // outside the window: the query's bound keeps this from happening
        };
        *moves.into.slot(outcome) += devices;
        match before {
            Some(before) => *moves.out_of.slot(before) += devices,
            None => moves.first_reports += devices,
        }
    }

    /// Counts at each bucket's end, and devices reported by then.
    fn cumulate(&self) -> (Vec<StateCounts>, Vec<u64>) {
        let mut now = StateCounts::default();
        let mut reported = 0u64;
        let mut states = Vec::with_capacity(self.moves.len());
        let mut reported_by = Vec::with_capacity(self.moves.len());
        for m in &self.moves {
            for outcome in Outcome::ALL {
                let name = outcome.as_str();
                let slot = now.slot(name);
                *slot = (*slot + m.into.get(name)).saturating_sub(m.out_of.get(name));
            }
            reported += m.first_reports;
            states.push(now);
            reported_by.push(reported);
        }
        (states, reported_by)
    }
}

fn release_history(key: ReleaseKey, expected: u64, groups: Vec<(Option<i64>, Group)>) -> ReleaseHistory {
    let buckets = groups.first().map_or(0, |(_, g)| g.moves.len());
    let first_ms = groups.iter().map(|(_, g)| g.first_ms).min().unwrap_or(0);
    let last_ms = groups.iter().map(|(_, g)| g.last_ms).max().unwrap_or(0);
    let mut reported = vec![0u64; buckets];
    let mut total = StateCounts::default();
    let mut waves = Vec::with_capacity(groups.len());
    for (wave, group) in groups {
        let (states, reported_by) = group.cumulate();
        for (sum, n) in reported.iter_mut().zip(reported_by) {
            *sum += n;
        }
        let now = states.last().copied().unwrap_or_default();
        for outcome in Outcome::ALL {
            *total.slot(outcome.as_str()) += now.get(outcome.as_str());
        }
        waves.push(WaveHistory {
            wave: wave.and_then(|w| u32::try_from(w).ok()),
            status: Status::Active, // set below, once the release's pending devices are known
            first_report_ms: group.first_ms,
            last_report_ms: group.last_ms,
            states,
        });
    }
    let pending: Vec<u64> = reported.iter().map(|r| expected.saturating_sub(*r)).collect();
    let pending_now = pending.last().copied().unwrap_or(expected);
    for wave in &mut waves {
        // A wave's own pending devices are not known (the collector cannot place a device that has not
        // reported): it converges with its release.
        wave.status = status_of(wave.states.last().copied().unwrap_or_default(), pending_now);
    }
    let (hardware, channel, to_version) = key;
    ReleaseHistory {
        hardware,
        channel,
        to_version,
        status: status_of(total, pending_now),
        expected,
        pending,
        converged_after_ms: (pending_now == 0).then(|| last_ms.saturating_sub(first_ms)),
        waves,
        actions: Vec::new(),
    }
}

/// Halted or pulled when any device says so; converged when nothing is pending.
fn status_of(now: StateCounts, pending: u64) -> Status {
    if now.skipped_halted > 0 {
        Status::Halted
    } else if now.skipped_pulled > 0 {
        Status::Pulled
    } else if pending == 0 {
        Status::Converged
    } else {
        Status::Active
    }
}

/// `history` with the collector's own halts and alerts joined to their releases: a release the
/// collector halted reads halted, whatever its devices report yet (an alert alone changes no status).
pub(crate) fn with_actions(mut history: History, actions: Vec<RolloutAction>) -> History {
    for action in actions {
        let Some(release) = history.releases.iter_mut().find(|r| {
            r.hardware == action.hardware && r.channel == action.channel && r.to_version == action.to_version
        }) else {
            continue; // no report on it was stored before the history was read
        };
        if action.action == ActionKind::Halted {
            release.status = Status::Halted;
        }
        release.actions.push(ReleaseAction {
            action: action.action,
            at_ms: action.at.timestamp_millis(),
            rule: action.rule,
            detail: action.detail,
            wave: action.wave,
            judged: action.judged,
            rolled_back: action.rolled_back,
        });
    }
    history
}

/// Reads the history from a SQLite connection.
pub(crate) fn read_sqlite(conn: &rusqlite::Connection, summary: &Summary, buckets: u32) -> Result<History> {
    let mut stmt = conn
        .prepare(SPAN_ROWS)
        .map_err(Error::storage("prepare the history"))?;
    let spans = stmt
        .query_map([], |r| {
            Ok(SpanRow {
                release: (r.get(0)?, r.get(1)?, r.get(2)?),
                wave: r.get(3)?,
                first_ms: r.get(4)?,
                last_ms: r.get(5)?,
            })
        })
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(Error::storage("read the history"))?;
    let Some(window) = Window::over(&spans, buckets) else {
        return Ok(History::default());
    };
    let mut stmt = conn
        .prepare(&for_sqlite(CHANGE_ROWS))
        .map_err(Error::storage("prepare the history"))?;
    let changes = stmt
        .query_map(
            rusqlite::params![window.start_ms, window.bucket_ms, window.end_ms],
            |r| {
                Ok(ChangeRow {
                    release: (r.get(0)?, r.get(1)?, r.get(2)?),
                    wave: r.get(3)?,
                    bucket: r.get(4)?,
                    outcome: r.get(5)?,
                    before: r.get(6)?,
                    devices: r.get(7)?,
                })
            },
        )
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(Error::storage("read the history"))?;
    Ok(build(window, spans, changes, summary))
}

/// Reads the history from a PostgreSQL connection, in one read-only snapshot.
pub(crate) fn read_postgres(
    client: &mut postgres::Client,
    summary: &Summary,
    buckets: u32,
) -> Result<History> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(Error::postgres("begin the history"))?;
    let spans = tx
        .query(SPAN_ROWS, &[])
        .and_then(|rows| {
            rows.iter()
                .map(|r| {
                    Ok(SpanRow {
                        release: (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                        wave: r.try_get::<_, Option<i32>>(3)?.map(i64::from),
                        first_ms: r.try_get(4)?,
                        last_ms: r.try_get(5)?,
                    })
                })
                .collect::<Result<Vec<_>, postgres::Error>>()
        })
        .map_err(Error::postgres("read the history"))?;
    let Some(window) = Window::over(&spans, buckets) else {
        return Ok(History::default());
    };
    let changes = tx
        .query(
            CHANGE_ROWS,
            &[&window.start_ms, &window.bucket_ms, &window.end_ms],
        )
        .and_then(|rows| {
            rows.iter()
                .map(|r| {
                    Ok(ChangeRow {
                        release: (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                        wave: r.try_get::<_, Option<i32>>(3)?.map(i64::from),
                        bucket: r.try_get(4)?,
                        outcome: r.try_get(5)?,
                        before: r.try_get(6)?,
                        devices: r.try_get(7)?,
                    })
                })
                .collect::<Result<Vec<_>, postgres::Error>>()
        })
        .map_err(Error::postgres("read the history"))?;
    tx.commit().map_err(Error::postgres("end the history"))?;
    Ok(build(window, spans, changes, summary))
}

#[cfg(test)]
mod tests {
    use super::{SpanRow, Window, MAX_BUCKETS};

    fn span(first_ms: i64, last_ms: i64) -> SpanRow {
        SpanRow {
            release: ("board-a".into(), "stable".into(), "1.0.0".into()),
            wave: None,
            first_ms,
            last_ms,
        }
    }

    #[test]
    fn every_report_falls_in_a_bucket_and_the_count_is_bounded() {
        assert_eq!(Window::over(&[], 60), None);
        for (first, last, asked) in [
            (0, 0, 60),
            (5, 5, 1),
            (0, 1_199_999, 3),
            (0, 1_200_000, 3),
            (7, 1_000_007, 0),
        ] {
            let w = Window::over(&[span(first, last)], asked).unwrap();
            assert!((1..=MAX_BUCKETS).contains(&w.buckets));
            assert_eq!((w.start_ms, w.end_ms), (first, last));
            let last_bucket = (last - first) / w.bucket_ms;
            assert!(
                last_bucket < i64::from(w.buckets),
                "{first}..{last} in {asked}: {w:?}"
            );
        }
        assert_eq!(Window::over(&[span(0, 10)], 10_000).unwrap().buckets, MAX_BUCKETS);
        let two = Window::over(&[span(100, 200), span(50, 150)], 10).unwrap();
        assert_eq!((two.start_ms, two.end_ms), (50, 200));
    }
}
