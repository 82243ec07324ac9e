//! The automatic halt: [`AutoHalt`] judges each rollout by its [`HaltRule`]s after reports are stored
//! (on a timer in `collector serve`, never in a report's own request), and when a rule trips, signs a
//! halt of the release with the rollout-control key (and the snapshot and timestamp keys: exactly what
//! `ota_publish::set_state` needs, as `repo-tool rollout halt` does, under the repository's lock) and
//! publishes it to the repository directory, where devices verify it like any other metadata. Without
//! those keys (or when publishing fails) it only alerts: a WARN log line and a stored alert. Every halt
//! and alert is stored (`rollout_actions`: rule, time, counts, the reports judged) and shown by
//! `summary`; one of each kind per release at most, so a release is never halted twice.
//!
//! A rollout is one release (version) on one channel, over every hardware id it is published for (the
//! rule's `hardware` narrows it). Which wave a device is in comes from the repository's plan for the
//! release (the same placement the devices compute); without a repository the release is one wave.

mod plans;
mod rule;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ota_publish::{KeyRef, KeyRing};
use ota_release::RolloutState;

pub use rule::HaltRule;

use crate::actions::{ActionKind, DeviceStatus, ReportRef, RolloutAction};
use crate::summary::WaveSummary;
use crate::{Error, Result, Store, Summary};
use plans::{channel_plans, LinePlan};

/// The rollout clock (Unix seconds): the wall clock, or a drill's simulated one.
pub type RolloutClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock, in Unix seconds.
pub fn wall_clock() -> RolloutClock {
    Arc::new(|| Utc::now().timestamp())
}

/// Judges rollouts by rules and halts (or alerts about) the bad ones.
pub struct AutoHalt {
    store: Arc<dyn Store>,
    rules: Vec<HaltRule>,
    repo: Option<PathBuf>,
    keys: Option<KeyRing>,
    clock: RolloutClock,
    before_publish: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// A rule that tripped on one rollout: what it saw.
struct Verdict<'a> {
    rule: &'a HaltRule,
    channel: &'a str,
    version: &'a str,
    lines: Vec<String>,
    wave: Option<u32>,
    judged: u64,
    rolled_back: u64,
    reports: Vec<ReportRef>,
}

impl AutoHalt {
    /// Judges `store`'s rollouts by `rules`, reading plans from (and halting into) `repo` when given,
    /// signing with `keys` when given (else alerting only), at the moments `clock` gives.
    pub fn new(
        store: Arc<dyn Store>,
        rules: Vec<HaltRule>,
        repo: Option<PathBuf>,
        keys: Option<KeyRing>,
        clock: RolloutClock,
    ) -> AutoHalt {
        AutoHalt {
            store,
            rules,
            repo,
            keys,
            clock,
            before_publish: None,
        }
    }

    /// Runs `hook` just before each halt is published (a test's mirror keeps the old metadata).
    pub fn before_publish(mut self, hook: Arc<dyn Fn() + Send + Sync>) -> AutoHalt {
        self.before_publish = Some(hook);
        self
    }

    /// Whether it can halt (a repository and keys), rather than only alert.
    pub fn can_halt(&self) -> bool {
        self.repo.is_some() && self.keys.is_some()
    }

    /// Judges every rollout once; returns the halts and alerts issued now (each stored).
    pub fn evaluate(&self) -> Result<Vec<RolloutAction>> {
        if self.rules.is_empty() {
            return Ok(Vec::new());
        }
        let summary = self.store.summary()?;
        let mut done: BTreeSet<(String, String, String)> = summary
            .actions
            .iter()
            .map(|a| (a.hardware.clone(), a.channel.clone(), a.to_version.clone()))
            .collect();
        let mut rollouts: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for r in &summary.releases {
            rollouts
                .entry((r.channel.clone(), r.to_version.clone()))
                .or_default()
                .insert(r.hardware.clone());
        }
        let now = (self.clock)();
        let mut plans_of: BTreeMap<String, BTreeMap<(String, String), LinePlan>> = BTreeMap::new();
        let mut issued = Vec::new();
        for ((channel, version), hardware) in &rollouts {
            let plans = match (&self.repo, plans_of.get(channel)) {
                (Some(_), Some(p)) => Some(p),
                (Some(repo), None) => Some(
                    &*plans_of
                        .entry(channel.clone())
                        .or_insert(channel_plans(repo, channel, now)?),
                ),
                (None, _) => None,
            };
            for rule in self.rules.iter().filter(|r| r.covers(channel, version)) {
                let lines: Vec<String> = hardware
                    .iter()
                    .filter(|h| rule.covers_hardware(h))
                    .filter(|h| !done.contains(&((*h).clone(), channel.clone(), version.clone())))
                    .filter(|h| plans.is_none_or(|p| is_active(p, h, version)))
                    .cloned()
                    .collect();
                if lines.is_empty() {
                    continue;
                }
                let Some(verdict) = self.judge(rule, channel, version, lines, plans)? else {
                    continue;
                };
                for a in self.act(&verdict)? {
                    done.insert((a.hardware.clone(), a.channel.clone(), a.to_version.clone()));
                    issued.push(a);
                }
            }
        }
        Ok(issued)
    }

    /// The rule's verdict on the open wave of `version` on `channel` over `lines`: `Some` when it trips.
    fn judge<'a>(
        &self,
        rule: &'a HaltRule,
        channel: &'a str,
        version: &'a str,
        lines: Vec<String>,
        plans: Option<&BTreeMap<(String, String), LinePlan>>,
    ) -> Result<Option<Verdict<'a>>> {
        let devices = self.store.release_devices(channel, version)?;
        let (mut judged, mut rolled_back, mut reports, mut wave) = (0u64, 0u64, Vec::new(), None);
        for d in devices.iter().filter(|d| lines.contains(&d.hardware)) {
            let line = plans.and_then(|p| p.get(&(d.hardware.clone(), version.to_owned())));
            let (open, mine) = match line {
                Some(l) => (l.open_wave(), l.wave_of(&d.device_id)),
                None => (Some(0), 0),
            };
            if open != Some(mine) || !is_end(d) {
                continue;
            }
            if line.is_some_and(|l| l.plan.is_some()) {
                wave = Some(u32::try_from(mine + 1).unwrap_or(u32::MAX));
            }
            judged += 1;
            rolled_back += u64::from(d.outcome == "rolled_back");
            reports.push(ReportRef {
                device_id: d.device_id.clone(),
                sequence: d.sequence,
            });
        }
        if !rule.trips(judged, rolled_back) {
            return Ok(None);
        }
        reports.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(Some(Verdict {
            rule,
            channel,
            version,
            lines,
            wave,
            judged,
            rolled_back,
            reports,
        }))
    }

    /// Halts the verdict's release on each of its hardware ids (or alerts), stores and returns each.
    fn act(&self, v: &Verdict<'_>) -> Result<Vec<RolloutAction>> {
        let wave = v.wave.map(|w| format!(" in wave {w}")).unwrap_or_default();
        let reason = format!(
            "collector rule {}: {} of {} rolled back{wave}",
            v.rule, v.rolled_back, v.judged
        );
        // Milliseconds, as stored: what is returned equals what is read back.
        let at = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default();
        let mut out = Vec::new();
        for hardware in &v.lines {
            let (action, detail) = self.halt_line(hardware, v.channel, v.version, &reason);
            let record = RolloutAction {
                hardware: hardware.clone(),
                channel: v.channel.to_owned(),
                to_version: v.version.to_owned(),
                action,
                rule: v.rule.to_string(),
                at,
                wave: v.wave,
                judged: v.judged,
                rolled_back: v.rolled_back,
                reports: v.reports.clone(),
                detail,
            };
            match action {
                ActionKind::Halted => tracing::warn!(
                    hardware, channel = v.channel, release = v.version, %reason, "rollout halted"
                ),
                ActionKind::Alerted => tracing::warn!(
                    hardware, channel = v.channel, release = v.version, %reason, detail = %record.detail,
                    "rollout should halt: alert only"
                ),
            }
            if self.store.record_action(&record)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Publishes the halt of one release line, or says why it only alerts.
    fn halt_line(&self, hardware: &str, channel: &str, version: &str, reason: &str) -> (ActionKind, String) {
        let (Some(repo), Some(keys)) = (&self.repo, &self.keys) else {
            return (
                ActionKind::Alerted,
                "no rollout-control key: not halted".to_owned(),
            );
        };
        let release = ota_publish::ReleaseRef {
            hardware: hardware.to_owned(),
            channel: channel.to_owned(),
            version: version.to_owned(),
        };
        let expiries = ota_publish::Expiries::default();
        if let Some(hook) = &self.before_publish {
            hook();
        }
        match ota_publish::set_state(repo, &release, RolloutState::Halted, reason, &expiries, keys) {
            Ok(report) => (
                ActionKind::Halted,
                format!(
                    "published {} (rollout-control version {})",
                    report.path, report.role_version
                ),
            ),
            Err(e) => (
                ActionKind::Alerted,
                format!("halt not published: {}", crate::http::chain(&e)),
            ),
        }
    }

    /// Runs [`AutoHalt::evaluate`] every `interval` on a blocking thread, logging what it could not do;
    /// never returns (the server drops it when it stops).
    pub async fn run_every(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.evaluate()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %crate::http::chain(&e), "halt rules not evaluated"),
                Err(e) => tracing::warn!(error = %e, "halt rules not evaluated"),
            }
        }
    }
}

/// Whether the repository says `version` of `hardware` is still active (not halted or pulled already).
fn is_active(plans: &BTreeMap<(String, String), LinePlan>, hardware: &str, version: &str) -> bool {
    plans
        .get(&(hardware.to_owned(), version.to_owned()))
        .is_some_and(|l| l.state == RolloutState::Active)
}

/// Whether the device's latest report ends its update of the release (what a rule judges).
fn is_end(d: &DeviceStatus) -> bool {
    matches!(d.outcome.as_str(), "committed" | "rolled_back" | "failed")
}

/// Loads the keys a halt signs with (rollout-control, snapshot, timestamp): files must be private to
/// their owner (no group or other permission bits); `pkcs11:` URIs take their PIN from their
/// `pin-source` file or `OTA_PKCS11_PIN`, never the command line.
pub fn load_halt_keys(refs: &[KeyRef], module: Option<&Path>) -> Result<KeyRing> {
    for r in refs {
        if let KeyRef::File(path) = r {
            check_private(path)?;
        }
    }
    KeyRing::from_refs(refs, module).map_err(|e| Error::HaltKey {
        key: refs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        why: crate::http::chain(&e),
    })
}

fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| Error::HaltKey {
        key: path.display().to_string(),
        why: e.to_string(),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::HaltKey {
            key: path.display().to_string(),
            why: format!("mode {mode:o} lets others read it; chmod 600 it"),
        });
    }
    Ok(())
}

/// The store's summary with each release's waves filled from the repository's plans at `now_unix`
/// (per wave: committed, rolled back, failed, other, pending; a release without a plan is one wave).
/// A rollout (version on a channel) published for a hardware id none of whose devices reported on it
/// yet is listed too, its devices all pending.
pub fn summary_with_waves(store: &dyn Store, repo: &Path, now_unix: i64) -> Result<Summary> {
    let mut summary = store.summary()?;
    let channels: BTreeSet<String> = summary.releases.iter().map(|r| r.channel.clone()).collect();
    for channel in channels {
        let plans = channel_plans(repo, &channel, now_unix)?;
        add_unreported_lines(&mut summary, &channel, &plans);
        let line_devices = store.line_devices(&channel)?;
        let mut by_version: BTreeMap<String, Vec<DeviceStatus>> = BTreeMap::new();
        for release in summary.releases.iter_mut().filter(|r| r.channel == channel) {
            let Some(line) = plans.get(&(release.hardware.clone(), release.to_version.clone())) else {
                continue;
            };
            if !by_version.contains_key(&release.to_version) {
                let devices = store.release_devices(&channel, &release.to_version)?;
                by_version.insert(release.to_version.clone(), devices);
            }
            let devices = by_version.get(&release.to_version).map_or(&[][..], Vec::as_slice);
            let on_line = line_devices
                .iter()
                .filter(|d| d.hardware == release.hardware)
                .map(|d| d.device_id.as_str());
            release.waves = wave_counts(line, &release.hardware, devices, on_line);
        }
    }
    Ok(summary)
}

/// Adds an empty entry for each hardware id the repository publishes a reported-on version of
/// `channel` for, when no device of that hardware reported on it.
fn add_unreported_lines(summary: &mut Summary, channel: &str, plans: &BTreeMap<(String, String), LinePlan>) {
    let reported: BTreeSet<(String, String)> = summary
        .releases
        .iter()
        .filter(|r| r.channel == channel)
        .map(|r| (r.hardware.clone(), r.to_version.clone()))
        .collect();
    let versions: BTreeSet<&String> = reported.iter().map(|(_, v)| v).collect();
    let mut added = Vec::new();
    for (hardware, version) in plans.keys() {
        if versions.contains(version) && !reported.contains(&(hardware.clone(), version.clone())) {
            added.push(crate::ReleaseSummary {
                hardware: hardware.clone(),
                channel: channel.to_owned(),
                to_version: version.clone(),
                ..crate::ReleaseSummary::default()
            });
        }
    }
    summary.releases.extend(added);
}

/// Per wave of `line`'s plan: the devices of `hardware` by their latest report, and those of
/// `on_line` that have not reported (pending).
fn wave_counts<'a>(
    line: &LinePlan,
    hardware: &str,
    devices: &[DeviceStatus],
    on_line: impl Iterator<Item = &'a str>,
) -> Vec<WaveSummary> {
    let open = if line.plan.is_some() {
        line.open.clone()
    } else {
        vec![true]
    };
    let mut waves: Vec<WaveSummary> = open
        .iter()
        .zip(1u32..)
        .map(|(&open, wave)| WaveSummary {
            wave,
            open,
            ..WaveSummary::default()
        })
        .collect();
    let mut reported = BTreeSet::new();
    for d in devices.iter().filter(|d| d.hardware == hardware) {
        reported.insert(d.device_id.as_str());
        let Some(w) = waves.get_mut(line.wave_of(&d.device_id)) else {
            continue;
        };
        match d.outcome.as_str() {
            "committed" => w.committed += 1,
            "rolled_back" => w.rolled_back += 1,
            "failed" => w.failed += 1,
            _ => w.other += 1,
        }
    }
    for id in on_line.filter(|id| !reported.contains(id)) {
        if let Some(w) = waves.get_mut(line.wave_of(id)) {
            w.pending += 1;
        }
    }
    waves
}
