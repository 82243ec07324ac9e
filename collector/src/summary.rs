//! [`Summary`]: the fleet per release, each device counted once per release by its latest report.

use std::collections::BTreeMap;

use ota_report::{Outcome, Version};
use serde::Serialize;

use crate::actions::RolloutAction;

/// How many failure reasons a release lists.
pub const TOP_REASONS: usize = 5;

/// Every release some device reported on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// One entry per (hardware, channel, to_version), ordered by hardware, channel, then version.
    pub releases: Vec<ReleaseSummary>,
    /// Reports the devices' queues dropped unsent (full queue, oldest first): the sum of each device's
    /// count as its latest report carries it.
    pub reports_dropped: u64,
    /// Every halt and alert the collector's rules issued, oldest first.
    pub actions: Vec<RolloutAction>,
}

/// One release: how many devices ended where, by their latest report on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReleaseSummary {
    /// The hardware id it is for.
    pub hardware: String,
    /// The channel.
    pub channel: String,
    /// The release's version.
    pub to_version: String,
    /// Devices that reported on it.
    pub devices: u64,
    /// Latest report: committed.
    pub committed: u64,
    /// Latest report: rolled back.
    pub rolled_back: u64,
    /// Latest report: failed before a trial boot.
    pub failed: u64,
    /// Latest report: skipped (rollout halted or release pulled).
    pub skipped: u64,
    /// Latest report: a rollback drill passed.
    pub drill_passed: u64,
    /// Latest report: a rollback drill failed.
    pub drill_failed: u64,
    /// For the newest release of its hardware and channel (the one rolling out): devices (not revoked)
    /// last seen on that hardware and channel that have not reported on it yet. Zero for older releases,
    /// which devices that moved past them are not waiting for.
    pub pending: u64,
    /// The most common reasons among failed, rolled back and failed-drill devices, most devices first.
    pub top_failure_reasons: Vec<ReasonCount>,
    /// Per wave of the release's plan, when the collector reads the repository (`--repo`); else empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<WaveSummary>,
}

/// One wave of a release: its devices by their latest report on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WaveSummary {
    /// Wave number, from 1.
    pub wave: u32,
    /// Whether it is open now.
    pub open: bool,
    /// Latest report: committed.
    pub committed: u64,
    /// Latest report: rolled back.
    pub rolled_back: u64,
    /// Latest report: failed.
    pub failed: u64,
    /// Any other latest report (skipped, drills).
    pub other: u64,
    /// Devices (not revoked) of the release's hardware id and channel placed in this wave that have not
    /// reported on it.
    pub pending: u64,
}

/// A failure reason and how many devices gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    /// The reason as reported (empty when the device gave none).
    pub reason: String,
    /// How many devices.
    pub devices: u64,
}

/// (hardware, channel, to_version) as stored.
pub(crate) type ReleaseKey = (String, String, String);

/// A store's count of devices per release and outcome.
pub(crate) struct OutcomeRow {
    pub release: ReleaseKey,
    pub outcome: String,
    pub devices: i64,
}

/// A store's count of failed devices per release and reason.
pub(crate) struct ReasonRow {
    pub release: ReleaseKey,
    pub reason: String,
    pub devices: i64,
}

/// Counts are `COUNT(*)`, never negative; a bad one counts as zero rather than failing the summary.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Folds a store's grouped rows into the summary (the store does the counting; this only arranges).
pub(crate) fn build(
    outcomes: Vec<OutcomeRow>,
    reasons: Vec<ReasonRow>,
    known: Vec<((String, String), i64)>,
) -> Summary {
    let mut releases: BTreeMap<ReleaseKey, ReleaseSummary> = BTreeMap::new();
    for row in outcomes {
        let entry = releases
            .entry(row.release.clone())
            .or_insert_with(|| ReleaseSummary {
                hardware: row.release.0.clone(),
                channel: row.release.1.clone(),
                to_version: row.release.2.clone(),
                ..ReleaseSummary::default()
            });
        let n = count(row.devices);
        entry.devices += n;
        match Outcome::from_name(&row.outcome) {
            Some(Outcome::Committed) => entry.committed += n,
            Some(Outcome::RolledBack) => entry.rolled_back += n,
            Some(Outcome::Failed) => entry.failed += n,
            Some(Outcome::SkippedHalted | Outcome::SkippedPulled) => entry.skipped += n,
            Some(Outcome::DrillPassed) => entry.drill_passed += n,
            // An outcome name this build does not know is counted as a failed drill would be: visible.
            Some(Outcome::DrillFailed) | None => entry.drill_failed += n,
        }
    }
    let mut by_release: BTreeMap<ReleaseKey, Vec<ReasonCount>> = BTreeMap::new();
    for row in reasons {
        by_release.entry(row.release).or_default().push(ReasonCount {
            reason: row.reason,
            devices: count(row.devices),
        });
    }
    let known: BTreeMap<(String, String), u64> = known.into_iter().map(|(k, n)| (k, count(n))).collect();
    for (key, release) in releases.iter_mut() {
        let mut top = by_release.remove(key).unwrap_or_default();
        top.sort_by(|a, b| b.devices.cmp(&a.devices).then_with(|| a.reason.cmp(&b.reason)));
        top.truncate(TOP_REASONS);
        release.top_failure_reasons = top;
    }
    let mut releases: Vec<ReleaseSummary> = releases.into_values().collect();
    releases.sort_by(|a, b| {
        (a.hardware.as_str(), a.channel.as_str())
            .cmp(&(b.hardware.as_str(), b.channel.as_str()))
            .then_with(|| version_order(&a.to_version, &b.to_version))
    });
    let mut newest = releases.iter_mut().peekable();
    while let Some(release) = newest.next() {
        let line = (release.hardware.clone(), release.channel.clone());
        let is_newest = newest.peek().is_none_or(|next| {
            (next.hardware.as_str(), next.channel.as_str()) != (line.0.as_str(), line.1.as_str())
        });
        if is_newest {
            let on_line = known.get(&line).copied().unwrap_or(0);
            release.pending = on_line.saturating_sub(release.devices);
        }
    }
    Summary {
        releases,
        ..Summary::default()
    }
}

/// Semantic version order (1.10.0 after 1.9.0), text order for anything that does not parse.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (Version::parse(a), Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

impl Summary {
    /// The summary as a table for a terminal.
    pub fn to_text(&self) -> String {
        if self.releases.is_empty() {
            return format!("no reports yet\n{}", self.footer_text());
        }
        let mut out = format!(
            "{:<20} {:<10} {:<12} {:>8} {:>9} {:>11} {:>7} {:>7} {:>7} {:>7}\n",
            "hardware",
            "channel",
            "version",
            "devices",
            "committed",
            "rolled_back",
            "failed",
            "skipped",
            "drills",
            "pending"
        );
        for r in &self.releases {
            out.push_str(&format!(
                "{:<20} {:<10} {:<12} {:>8} {:>9} {:>11} {:>7} {:>7} {:>7} {:>7}\n",
                r.hardware,
                r.channel,
                r.to_version,
                r.devices,
                r.committed,
                r.rolled_back,
                r.failed,
                r.skipped,
                format!("{}/{}", r.drill_passed, r.drill_passed + r.drill_failed),
                r.pending
            ));
            for reason in &r.top_failure_reasons {
                let text = if reason.reason.is_empty() {
                    "(no reason given)"
                } else {
                    &reason.reason
                };
                out.push_str(&format!("    {:>6} x {text}\n", reason.devices));
            }
            for w in &r.waves {
                out.push_str(&format!(
                    "    wave {}{}: committed {}, rolled back {}, failed {}, other {}, pending {}\n",
                    w.wave,
                    if w.open { " (open)" } else { "" },
                    w.committed,
                    w.rolled_back,
                    w.failed,
                    w.other,
                    w.pending
                ));
            }
        }
        out.push_str(&self.footer_text());
        out
    }

    /// The dropped-report count and every halt and alert, for [`Summary::to_text`].
    fn footer_text(&self) -> String {
        let mut out = format!("reports dropped by device queues: {}\n", self.reports_dropped);
        for a in &self.actions {
            let wave = a.wave.map(|w| format!(" in wave {w}")).unwrap_or_default();
            out.push_str(&format!(
                "{} {}/{} {} at {}: {} of {} rolled back{wave} (rule {}; {} reports listed): {}\n",
                a.action.as_str(),
                a.hardware,
                a.channel,
                a.to_version,
                a.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                a.rolled_back,
                a.judged,
                a.rule,
                a.reports.len(),
                a.detail
            ));
        }
        out
    }
}
