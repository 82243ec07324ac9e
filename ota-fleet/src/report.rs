//! The drill's report: per release and outcome, convergence, bytes, the mirror's load, and the
//! invariants; printed as a table ([`DrillReport::table`]), written as JSON, and drawn as an SVG chart of
//! the fleet over time ([`DrillReport::svg`]) wrapped in a self-contained HTML page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::mirror::MirrorStats;
use crate::scenario::Scenario;
use crate::{Error, Result};

/// Where one device stands with respect to one release when the release's window closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Installed, booted, health checks passed, committed.
    Committed,
    /// Installed and booted, then rolled back to the previous image (health checks failed, or the trial
    /// did not come up).
    RolledBack,
    /// Offered but not finished: downloads failing and retrying, or mid-update.
    Retrying,
    /// Offered, still running the version it had, with no attempt recorded.
    OnOldVersion,
    /// Not meant for this device (other board, outside the rollout share).
    NotOffered,
}

impl Outcome {
    /// Every outcome, in table order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Committed,
        Outcome::RolledBack,
        Outcome::Retrying,
        Outcome::OnOldVersion,
        Outcome::NotOffered,
    ];

    /// Column title.
    pub fn title(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled back",
            Outcome::Retrying => "failed, retrying",
            Outcome::OnOldVersion => "still on old",
            Outcome::NotOffered => "not offered",
        }
    }

    /// Column header in the summary table (at most 11 characters: the columns never run together).
    pub fn column(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled back",
            Outcome::Retrying => "retrying",
            Outcome::OnOldVersion => "on old",
            Outcome::NotOffered => "not offered",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Outcome::Committed => "#2e9e5b",
            Outcome::RolledBack => "#e0702b",
            Outcome::Retrying => "#e8c23a",
            Outcome::OnOldVersion => "#9aa3ad",
            Outcome::NotOffered => "#d9dde2",
        }
    }
}

/// One device's outcome of one release: a row of report.json's `device_outcomes`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceOutcome {
    /// The simulated device (`dev-00042`).
    pub device: String,
    /// Its board.
    pub board: String,
    /// The release.
    pub release: String,
    /// Its wave of the release's rollout, from 1 (none: published to everyone at once, or not offered).
    pub wave: Option<usize>,
    /// Where it stood when the release's window closed.
    pub outcome: Outcome,
    /// Why it rolled back, when it did (see [`ReleaseReport::rollback_causes`]).
    pub rollback_cause: Option<String>,
    /// The agent's own reason for the rollback, as its update record has it.
    pub agent_reason: Option<String>,
    /// The last error a step of it returned during the release, if any.
    pub last_error: Option<String>,
}

/// The per-device rows, spooled as JSON lines to an unnamed temporary file while the drill runs and
/// copied into report.json when it is written: a report of 100,000 devices is never held in memory.
#[derive(Clone, Debug, Default)]
pub struct DeviceRows {
    spool: Option<Arc<Mutex<std::io::BufWriter<std::fs::File>>>>,
    /// Rows written.
    pub count: u64,
}

impl PartialEq for DeviceRows {
    /// Equal when both hold the same spool (or none): the rows themselves are in a file.
    fn eq(&self, other: &DeviceRows) -> bool {
        self.count == other.count
            && match (&self.spool, &other.spool) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl DeviceRows {
    /// An empty spool in the system's temporary directory (unlinked: it goes with the process).
    pub fn spool() -> Result<DeviceRows> {
        let file = tempfile::tempfile().map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        Ok(DeviceRows {
            spool: Some(Arc::new(Mutex::new(std::io::BufWriter::new(file)))),
            count: 0,
        })
    }

    /// Appends one row.
    pub fn push(&mut self, row: &DeviceOutcome) -> Result<()> {
        use std::io::Write as _;
        let Some(spool) = &self.spool else {
            return Ok(());
        };
        let mut w = spool.lock().map_err(|_| Error::Poisoned)?;
        serde_json::to_writer(&mut *w, row).map_err(Error::ReportJson)?;
        w.write_all(b"\n").map_err(spool_error)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the rows as the elements of a JSON array (without the brackets), one per line, indented.
    fn copy_into(&self, out: &mut impl std::io::Write) -> Result<()> {
        use std::io::{BufRead as _, Seek as _, Write as _};
        let Some(spool) = &self.spool else {
            return Ok(());
        };
        let mut w = spool.lock().map_err(|_| Error::Poisoned)?;
        w.flush().map_err(spool_error)?;
        let mut file = w.get_ref().try_clone().map_err(spool_error)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(spool_error)?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(spool_error)?;
            let sep = if i == 0 { "\n    " } else { ",\n    " };
            out.write_all(sep.as_bytes()).map_err(spool_error)?;
            out.write_all(line.as_bytes()).map_err(spool_error)?;
        }
        // The spool goes on at its end.
        w.get_mut().seek(std::io::SeekFrom::End(0)).map_err(spool_error)?;
        Ok(())
    }
}

fn spool_error(source: std::io::Error) -> Error {
    Error::Io {
        path: PathBuf::from("per-device rows spool"),
        source,
    }
}

/// One release's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReleaseReport {
    /// Its version.
    pub version: String,
    /// Round it was published in.
    pub published_round: u32,
    /// Round by which every device it was offered to had committed or rolled back; None if the window
    /// closed first.
    pub settled_round: Option<u32>,
    /// Wall-clock seconds from publishing to settling (or to the window's end).
    pub converge_seconds: f64,
    /// Devices it was meant for.
    pub offered: u32,
    /// Devices whose health checks were set to fail on it.
    pub health_fail_injected: u32,
    /// Devices per outcome.
    pub outcomes: BTreeMap<Outcome, u32>,
    /// Body bytes the mirror served to the fleet while this release was the newest.
    pub bytes_downloaded: u64,
    /// Per wave of its rollout plan, who took it; empty when published to everyone at once.
    pub waves: Vec<WaveReport>,
    /// When and why the drill halted it, if it did.
    pub halted: Option<HaltReport>,
    /// Its rollbacks by cause (the counts add up to its `rolled_back` outcome): "health check failed
    /// (injected)", "power cut during the trial" (a cut in the commit phase brought the old slot back),
    /// or the agent's own reason.
    pub rollback_causes: BTreeMap<String, u32>,
}

/// One wave of a release's rollout: the devices it opened to and what they did with the release.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaveReport {
    /// Wave number, from 1.
    pub wave: usize,
    /// Share of the fleet open once this wave is (cumulative), in percent.
    pub percent: f64,
    /// Round the wave opened (or would have) in.
    pub opens_round: u32,
    /// Devices the release was offered to whose place is in this wave.
    pub devices: u32,
    /// Of those, devices that began writing it to a slot.
    pub started: u32,
    /// Devices that wrote and verified it (and asked to boot it).
    pub installed: u32,
    /// Devices that committed it.
    pub committed: u32,
    /// Devices that booted it and rolled back.
    pub rolled_back: u32,
}

/// The drill's halt of a release, by the scenario's rule, through the rollout-control role.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HaltReport {
    /// The round after which it was halted.
    pub round: u32,
    /// The open wave the rule judged, from 1.
    pub wave: usize,
    /// Devices of that wave that had committed or rolled back.
    pub finished: u32,
    /// Of those, devices that rolled back.
    pub rolled_back: u32,
    /// The reason signed into the control file.
    pub reason: String,
}

impl ReleaseReport {
    /// Devices with this outcome.
    pub fn count(&self, o: Outcome) -> u32 {
        self.outcomes.get(&o).copied().unwrap_or(0)
    }
}

/// How many power cuts were injected, by phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PowerCutCounts {
    /// Cuts during download and write of the inactive slot.
    pub install: u32,
    /// Cuts during trial boot and commit.
    pub commit: u32,
    /// Cuts during rollback.
    pub rollback: u32,
}

/// The invariants that gate a release: every device boots, and boots only signed images; and the
/// collector in the loop counted every release and wave as the drill did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Invariants {
    /// Simulated boots whose image was checked against the signed targets.
    pub boots_checked: u64,
    /// Devices whose bootloader found nothing bootable, with the reason.
    pub unbootable: Vec<String>,
    /// Devices that booted an image matching no signed target, with the digest.
    pub unsigned: Vec<String>,
    /// Counts compared between the drill and its collector's summary (per release and wave: committed,
    /// rolled back, failed, pending).
    pub collector_counts_checked: u64,
    /// Where the drill's counts and the collector's summary disagree.
    pub collector_disagreements: Vec<String>,
}

impl Invariants {
    /// True when nothing broke.
    pub fn hold(&self) -> bool {
        self.unbootable.is_empty() && self.unsigned.is_empty() && self.collector_disagreements.is_empty()
    }
}

/// The fleet at the end of one round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Round number (one step of every device).
    pub round: u32,
    /// Wall-clock milliseconds since the drill started.
    pub elapsed_ms: u64,
    /// Devices per running (booted) version; "unknown" for an image matching no release.
    pub running: BTreeMap<String, u32>,
    /// Devices in the middle of an update (downloading, installed, trial) this round.
    pub updating: u32,
}

/// Everything a drill measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrillReport {
    /// The scenario that ran.
    pub scenario: Scenario,
    /// Wall-clock seconds of the whole drill, publishing included.
    pub wall_seconds: f64,
    /// Rounds run.
    pub rounds: u32,
    /// Per release, in publishing order.
    pub releases: Vec<ReleaseReport>,
    /// Devices per version they run at the end.
    pub final_versions: BTreeMap<String, u32>,
    /// The mirror's counters.
    pub mirror: MirrorStats,
    /// Requests the mirror served per second of the fleet's run.
    pub requests_per_second: f64,
    /// The collector in the loop: reports it stored, and how fast.
    pub collector: CollectorStats,
    /// Power cuts injected.
    pub power_cuts: PowerCutCounts,
    /// Did every device stay bootable and signed?
    pub invariants: Invariants,
    /// The fleet round by round, for the chart.
    pub timeline: Vec<Sample>,
    /// Every device's outcome of every release: written into report.json as `device_outcomes`,
    /// streamed from a spool.
    #[serde(skip)]
    pub device_outcomes: DeviceRows,
}

/// What the collector in the drill's loop ingested.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CollectorStats {
    /// Signed reports it verified and stored.
    pub reports: u64,
    /// Reports stored per second of the fleet's run (the rounds, as `requests_per_second`).
    pub reports_per_second: f64,
}

/// Files [`DrillReport::write_to`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenReport {
    /// report.json
    pub json: PathBuf,
    /// report.svg
    pub svg: PathBuf,
    /// report.html (the chart and the table in one self-contained page)
    pub html: PathBuf,
}

/// Version colours for the chart: the factory image grey, releases in order.
const VERSION_COLOURS: [&str; 8] = [
    "#4c78a8", "#54a24b", "#b279a2", "#f58518", "#72b7b2", "#eeca3b", "#ff9da6", "#9d755d",
];

impl DrillReport {
    /// The human summary: per release and outcome, then mirror load and invariants.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.scenario;
        let _ = writeln!(
            out,
            "drill: {} devices, seed {}, {} rounds, {:.1} s",
            s.devices, s.seed, self.rounds, self.wall_seconds
        );
        self.release_rows(&mut out);
        self.wave_rows(&mut out);
        let finals: Vec<String> = self
            .final_versions
            .iter()
            .map(|(v, n)| format!("{v}: {n}"))
            .collect();
        let _ = writeln!(out, "fleet now runs: {}", finals.join(", "));
        self.load_lines(&mut out);
        self.invariant_lines(&mut out);
        out
    }

    /// The table's header and one row per release (time in rounds: the drill's poll intervals), then
    /// each release's rollbacks by cause.
    fn release_rows(&self, out: &mut String) {
        let _ = write!(out, "{:<9}  {:>7}  {:>11}", "release", "offered", "set to fail");
        for o in Outcome::ALL {
            let _ = write!(out, "  {:>11}", o.column());
        }
        let _ = writeln!(out, "  {:>15}  {:>10}", "settled", "downloaded");
        for r in &self.releases {
            let _ = write!(
                out,
                "{:<9}  {:>7}  {:>11}",
                r.version, r.offered, r.health_fail_injected
            );
            for o in Outcome::ALL {
                let _ = write!(out, "  {:>11}", r.count(o));
            }
            let settled = match r.settled_round {
                Some(round) => format!("in {} rounds", round.saturating_sub(r.published_round)),
                None => "no".to_owned(),
            };
            let _ = writeln!(out, "  {:>15}  {:>10}", settled, human_bytes(r.bytes_downloaded));
        }
        for r in self.releases.iter().filter(|r| !r.rollback_causes.is_empty()) {
            let causes: Vec<String> = r
                .rollback_causes
                .iter()
                .map(|(cause, n)| format!("{n} {cause}"))
                .collect();
            let _ = writeln!(out, "rollbacks of {}: {}", r.version, causes.join("; "));
        }
    }

    /// Per release published in waves: its halt, if any, and one row per wave.
    fn wave_rows(&self, out: &mut String) {
        for r in self.releases.iter().filter(|r| !r.waves.is_empty()) {
            let halt = match &r.halted {
                Some(h) => format!("HALTED after round {}: {}", h.round, h.reason),
                None => "not halted".to_owned(),
            };
            let _ = writeln!(out, "waves of {}: {halt}", r.version);
            let _ = writeln!(
                out,
                "  {:>4} {:>7} {:>6} {:>7} {:>7} {:>9} {:>9} {:>11}",
                "wave", "share", "opens", "devices", "started", "installed", "committed", "rolled back"
            );
            for w in &r.waves {
                let _ = writeln!(
                    out,
                    "  {:>4} {:>6}% {:>6} {:>7} {:>7} {:>9} {:>9} {:>11}",
                    w.wave,
                    w.percent,
                    format!("r{}", w.opens_round),
                    w.devices,
                    w.started,
                    w.installed,
                    w.committed,
                    w.rolled_back
                );
            }
        }
    }

    /// The mirror's load and the power cuts.
    fn load_lines(&self, out: &mut String) {
        let m = &self.mirror;
        let faults: Vec<String> = m
            .faults
            .iter()
            .filter(|(k, n)| k.as_str() != "none" && **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "mirror: {} requests ({:.0}/s), {} served, {} not found; faults injected: {}",
            m.requests,
            self.requests_per_second,
            human_bytes(m.bytes),
            m.not_found,
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "collector: {} signed reports stored ({:.0}/s)",
            self.collector.reports, self.collector.reports_per_second
        );
        let p = &self.power_cuts;
        let _ = writeln!(
            out,
            "power cuts: {} during install, {} during commit, {} during rollback",
            p.install, p.commit, p.rollback
        );
    }

    /// The verdict, and the first devices that broke an invariant.
    fn invariant_lines(&self, out: &mut String) {
        let inv = &self.invariants;
        if inv.hold() {
            let _ = writeln!(
                out,
                "invariants: OK: every device bootable and on a signed image ({} boots checked)",
                inv.boots_checked
            );
        } else {
            let _ = writeln!(
                out,
                "invariants: BROKEN: {} unbootable, {} running unsigned images",
                inv.unbootable.len(),
                inv.unsigned.len()
            );
            for d in inv.unbootable.iter().chain(&inv.unsigned).take(20) {
                let _ = writeln!(out, "  {d}");
            }
        }
        if inv.collector_counts_checked > 0 || !inv.collector_disagreements.is_empty() {
            let verdict = if inv.collector_disagreements.is_empty() {
                "OK: the collector's summary agrees"
            } else {
                "BROKEN: the collector's summary disagrees"
            };
            let _ = writeln!(
                out,
                "collector: {verdict} on all {} counts (per release and wave: committed, rolled back, \
                 failed, pending)",
                inv.collector_counts_checked
            );
            for d in inv.collector_disagreements.iter().take(20) {
                let _ = writeln!(out, "  {d}");
            }
        }
    }

    /// Writes report.json, report.svg and report.html into `dir` (created if missing).
    pub fn write_to(&self, dir: &Path) -> Result<WrittenReport> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let svg = self.svg();
        let html = self.html(&svg);
        let written = WrittenReport {
            json: dir.join("report.json"),
            svg: dir.join("report.svg"),
            html: dir.join("report.html"),
        };
        self.write_json(&written.json)?;
        ota_fs::write_atomic(&written.svg, svg.as_bytes(), 0o644)?;
        ota_fs::write_atomic(&written.html, html.as_bytes(), 0o644)?;
        Ok(written)
    }

    /// report.json, replaced atomically (0644): the aggregates, then `device_outcomes` copied from the
    /// spool row by row.
    fn write_json(&self, path: &Path) -> Result<()> {
        use std::io::Write as _;
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let aggregates = serde_json::to_vec_pretty(self).map_err(Error::ReportJson)?;
        // The aggregates' object without its closing brace, then the rows as one more field.
        let open = aggregates
            .strip_suffix(b"\n}")
            .or_else(|| aggregates.strip_suffix(b"}"))
            .unwrap_or(&aggregates);
        let dir = ota_fs::parent_dir(path);
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        {
            let mut out = std::io::BufWriter::new(tmp.as_file_mut());
            out.write_all(open).map_err(io)?;
            out.write_all(b",\n  \"device_outcomes\": [").map_err(io)?;
            self.device_outcomes.copy_into(&mut out)?;
            out.write_all(b"\n  ]\n}\n").map_err(io)?;
            out.flush().map_err(io)?;
        }
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        ota_fs::sync_dir(dir)?;
        Ok(())
    }

    fn version_colour(&self, version: &str) -> &'static str {
        if version == self.scenario.factory_version {
            return "#8c96a3";
        }
        let i = self.scenario.releases.iter().position(|r| r.version == version);
        match i {
            Some(i) => VERSION_COLOURS
                .get(i % VERSION_COLOURS.len())
                .copied()
                .unwrap_or("#4c78a8"),
            None => "#d62728",
        }
    }

    /// The chart: the fleet by running version over time (stacked), release publications marked, then
    /// one bar per release splitting the devices it was offered to by outcome, and the invariants.
    pub fn svg(&self) -> String {
        let chart = Chart::new(self);
        let mut svg = String::new();
        chart.header(&mut svg);
        chart.areas(&mut svg);
        chart.axes(&mut svg);
        chart.publications(&mut svg);
        chart.halts(&mut svg);
        chart.legend(&mut svg);
        chart.outcome_bars(&mut svg);
        chart.footer(&mut svg);
        svg.push_str("</svg>\n");
        svg
    }

    fn html(&self, svg: &str) -> String {
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Fleet drill report</title>\
             <style>body{{font-family:sans-serif;margin:24px;color:#1f2933}}pre{{background:#f5f7fa;padding:12px;\
             overflow-x:auto}}</style></head><body>\n{svg}<h2>Summary</h2><pre>{}</pre>\
             <p>Machine-readable: report.json.</p></body></html>\n",
            esc(&self.table())
        )
    }
}

/// Chart geometry (SVG user units).
const W: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 96.0;
const PLOT_H: f64 = 260.0;
const BAR_H: f64 = 26.0;
const BAR_GAP: f64 = 40.0;
/// Height of one line of a release's per-wave numbers under its bar.
const WAVE_LINE_H: f64 = 14.0;

/// Lines of per-wave numbers under a release's bar: one per wave, none without waves.
fn wave_line_count(r: &ReleaseReport) -> usize {
    r.waves.len()
}

/// One drawing of a report: its geometry and the versions stacked, computed once; each method draws
/// one part of [`DrillReport::svg`], in order.
struct Chart<'r> {
    report: &'r DrillReport,
    /// Top of the first outcome bar.
    bars_top: f64,
    /// Width of the plot (and of a bar for the whole fleet).
    plot_w: f64,
    /// Fleet size, at least 1.
    devices: f64,
    /// The last sample's round, at least 1: the right edge of the plot (the x axis counts rounds, the
    /// fleet's own time, not the wall clock of the machine that ran the drill).
    max_round: u32,
    /// Every version stacked, bottom-up: the factory's, the releases in order, then any other seen.
    versions: Vec<String>,
}

impl<'r> Chart<'r> {
    fn new(report: &'r DrillReport) -> Chart<'r> {
        let mut versions: Vec<String> = vec![report.scenario.factory_version.clone()];
        versions.extend(report.scenario.releases.iter().map(|r| r.version.clone()));
        let extra: Vec<String> = report
            .timeline
            .iter()
            .flat_map(|s| s.running.keys())
            .filter(|v| !versions.contains(v))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        versions.extend(extra);
        Chart {
            report,
            bars_top: TOP + PLOT_H + 70.0,
            plot_w: W - LEFT - RIGHT,
            devices: f64::from(report.scenario.devices.max(1)),
            max_round: report.timeline.last().map_or(1, |s| s.round.max(1)),
            versions,
        }
    }

    fn x_of(&self, round: u32) -> f64 {
        LEFT + self.plot_w * f64::from(round) / f64::from(self.max_round)
    }

    /// Up to six evenly spaced whole rounds from 0 to the last, for the x axis.
    fn round_ticks(&self) -> Vec<u32> {
        let step = self.max_round.div_ceil(5).max(1);
        let mut ticks: Vec<u32> = (0..=self.max_round)
            .step_by(usize::try_from(step).unwrap_or(1))
            .collect();
        // The last round gets its own tick unless one sits too close to it to read.
        if ticks.last().is_some_and(|t| self.max_round - t > step / 2) {
            ticks.push(self.max_round);
        }
        ticks
    }

    fn y_of(&self, n: f64) -> f64 {
        TOP + PLOT_H - PLOT_H * n / self.devices
    }

    /// The top of the `i`th outcome bar (`i` = the release count: the outcome legend's row).
    fn bar_y(&self, i: usize) -> f64 {
        let wave_lines: usize = self.report.releases.iter().take(i).map(wave_line_count).sum();
        self.bars_top + (BAR_H + BAR_GAP) * f64_from(i) + WAVE_LINE_H * f64_from(wave_lines)
    }

    /// The root element, the title and the invariants banner.
    fn header(&self, svg: &mut String) {
        let r = self.report;
        let h = self.bar_y(r.releases.len()) + 70.0;
        let plot_w = self.plot_w;
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"##
        );
        let _ = write!(svg, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
        let (banner_fill, banner_text) = if r.invariants.hold() {
            (
                "#2e9e5b",
                format!(
                    "INVARIANTS HOLD: all {} devices bootable, all on signed images",
                    r.scenario.devices
                ),
            )
        } else {
            (
                "#c62828",
                format!(
                    "INVARIANTS BROKEN: {} unbootable, {} on unsigned images",
                    r.invariants.unbootable.len(),
                    r.invariants.unsigned.len()
                ),
            )
        };
        let _ = write!(
            svg,
            r##"<text x="{LEFT}" y="30" font-size="20" font-weight="bold" fill="#1f2933">Fleet drill: {} devices, seed {}, {:.1} s</text>"##,
            r.scenario.devices, r.scenario.seed, r.wall_seconds
        );
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="42" width="{plot_w}" height="28" rx="4" fill="{banner_fill}"/><text x="{}" y="61" font-size="14" font-weight="bold" fill="#ffffff">{}</text>"##,
            LEFT + 10.0,
            esc(&banner_text)
        );
    }

    /// Stacked areas: the fleet by running version, bottom-up; then the devices mid-update as a dark
    /// line over them.
    fn areas(&self, svg: &mut String) {
        let timeline = &self.report.timeline;
        let mut below: Vec<f64> = vec![0.0; timeline.len()];
        for v in &self.versions {
            let counts: Vec<f64> = timeline
                .iter()
                .map(|s| f64::from(s.running.get(v).copied().unwrap_or(0)))
                .collect();
            if counts.iter().all(|c| *c == 0.0) {
                continue;
            }
            let mut pts = String::new();
            for (s, (b, c)) in timeline.iter().zip(below.iter().zip(&counts)) {
                let _ = write!(pts, "{:.1},{:.1} ", self.x_of(s.round), self.y_of(b + c));
            }
            for (s, b) in timeline.iter().zip(&below).rev() {
                let _ = write!(pts, "{:.1},{:.1} ", self.x_of(s.round), self.y_of(*b));
            }
            let _ = write!(
                svg,
                r##"<polygon points="{pts}" fill="{}" fill-opacity="0.85" stroke="#ffffff" stroke-width="0.5"><title>running {}</title></polygon>"##,
                self.report.version_colour(v),
                esc(v)
            );
            for (b, c) in below.iter_mut().zip(&counts) {
                *b += c;
            }
        }
        let mut line = String::new();
        for s in timeline {
            let _ = write!(
                line,
                "{:.1},{:.1} ",
                self.x_of(s.round),
                self.y_of(f64::from(s.updating))
            );
        }
        let _ = write!(
            svg,
            r##"<polyline points="{line}" fill="none" stroke="#1f2933" stroke-width="1.5" stroke-dasharray="4 2"/>"##
        );
    }

    /// Both axes with their ticks and titles.
    fn axes(&self, svg: &mut String) {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#52606d"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="#52606d"/>"##,
            TOP + PLOT_H,
            LEFT + self.plot_w,
            TOP + PLOT_H,
            TOP + PLOT_H
        );
        for k in 0..=4u32 {
            let n = self.devices * f64::from(k) / 4.0;
            let y = self.y_of(n);
            let _ = write!(
                svg,
                r##"<line x1="{}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="#52606d"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#52606d">{:.0}</text>"##,
                LEFT - 4.0,
                LEFT - 7.0,
                y + 4.0,
                n
            );
        }
        for round in self.round_ticks() {
            let x = self.x_of(round);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#52606d"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle" fill="#52606d">{round}</text>"##,
                TOP + PLOT_H,
                TOP + PLOT_H + 4.0,
                TOP + PLOT_H + 17.0,
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="12" text-anchor="middle" fill="#52606d">round (every device polls once; {} of the fleet's clock each)</text>"##,
            LEFT + self.plot_w / 2.0,
            TOP + PLOT_H + 32.0,
            esc(&human_duration(self.report.scenario.rollout.round_seconds))
        );
        let _ = write!(
            svg,
            r##"<text x="18" y="{:.1}" font-size="12" fill="#52606d" transform="rotate(-90 18 {:.1})" text-anchor="middle">devices</text>"##,
            TOP + PLOT_H / 2.0,
            TOP + PLOT_H / 2.0
        );
        let _ = write!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold" fill="#1f2933">Fleet by running firmware over time</text>"##,
            TOP - 8.0
        );
    }

    /// A dashed line where each release was published.
    fn publications(&self, svg: &mut String) {
        for r in &self.report.releases {
            let x = self.x_of(r.published_round);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#1f2933" stroke-dasharray="2 3"/><text x="{:.1}" y="{}" font-size="11" fill="#1f2933">{} published</text>"##,
                TOP + PLOT_H,
                x + 3.0,
                TOP + 12.0,
                esc(&r.version)
            );
        }
    }

    /// A solid red line at the round each halted release was halted, labelled.
    fn halts(&self, svg: &mut String) {
        for r in &self.report.releases {
            let Some(h) = &r.halted else { continue };
            let x = self.x_of(h.round);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#c62828" stroke-width="2"><title>{} halted after round {}: {}</title></line><text x="{:.1}" y="{}" font-size="11" font-weight="bold" fill="#c62828">{} halted (round {})</text>"##,
                TOP + PLOT_H,
                esc(&r.version),
                h.round,
                esc(&h.reason),
                x + 3.0,
                TOP + 26.0,
                esc(&r.version),
                h.round
            );
        }
    }

    /// The versions' colours and the mid-update line, right of the plot.
    fn legend(&self, svg: &mut String) {
        let mut ly = TOP + 6.0;
        let lx = LEFT + self.plot_w + 16.0;
        for v in &self.versions {
            let _ = write!(
                svg,
                r##"<rect x="{lx}" y="{ly}" width="14" height="14" fill="{}"/><text x="{}" y="{}" font-size="12" fill="#1f2933">running {}</text>"##,
                self.report.version_colour(v),
                lx + 20.0,
                ly + 11.0,
                esc(v)
            );
            ly += 20.0;
        }
        let _ = write!(
            svg,
            r##"<line x1="{lx}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#1f2933" stroke-width="1.5" stroke-dasharray="4 2"/><text x="{}" y="{}" font-size="12" fill="#1f2933">mid-update</text>"##,
            ly + 7.0,
            lx + 14.0,
            ly + 7.0,
            lx + 20.0,
            ly + 11.0
        );
    }

    /// One bar per release, split by outcome, with its version and a line of numbers under it.
    fn outcome_bars(&self, svg: &mut String) {
        let _ = write!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold" fill="#1f2933">Outcome per release (devices it was offered to, and the rest)</text>"##,
            self.bars_top - 14.0
        );
        for (i, r) in self.report.releases.iter().enumerate() {
            let y = self.bar_y(i);
            self.outcome_segments(svg, r, y);
            let _ = write!(
                svg,
                r##"<text x="{}" y="{:.1}" font-size="13" font-weight="bold" text-anchor="end" fill="#1f2933">{}</text>"##,
                LEFT - 6.0,
                y + 17.0,
                esc(&r.version)
            );
            let converged = match r.settled_round {
                Some(round) => format!("settled in {} rounds", round.saturating_sub(r.published_round)),
                None => "did not settle".to_owned(),
            };
            let halted = match &r.halted {
                Some(h) => format!("; halted after round {}", h.round),
                None => String::new(),
            };
            let _ = write!(
                svg,
                r##"<text x="{LEFT}" y="{:.1}" font-size="11" fill="#52606d">{} health failures injected; {}; {} downloaded{}</text>"##,
                y + BAR_H + 14.0,
                r.health_fail_injected,
                converged,
                human_bytes(r.bytes_downloaded),
                esc(&halted)
            );
            wave_lines(svg, r, y + BAR_H + 14.0);
        }
    }

    /// The segments of one release's bar at height `y`, each labelled when wide enough.
    fn outcome_segments(&self, svg: &mut String, r: &ReleaseReport, y: f64) {
        let mut x = LEFT;
        for o in Outcome::ALL {
            let n = r.count(o);
            if n == 0 {
                continue;
            }
            let w = self.plot_w * f64::from(n) / self.devices;
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{}"><title>{}: {n}</title></rect>"##,
                o.colour(),
                o.title()
            );
            if w > 28.0 {
                let _ = write!(
                    svg,
                    r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#1f2933">{n}</text>"##,
                    x + w / 2.0,
                    y + 17.0
                );
            }
            x += w;
        }
    }

    /// The outcomes' colours, then the mirror's load and the power cuts.
    fn footer(&self, svg: &mut String) {
        let mut lx = LEFT;
        let ly = self.bar_y(self.report.releases.len()) + 4.0;
        for o in Outcome::ALL {
            let _ = write!(
                svg,
                r##"<rect x="{lx}" y="{ly}" width="14" height="14" fill="{}"/><text x="{}" y="{}" font-size="12" fill="#1f2933">{}</text>"##,
                o.colour(),
                lx + 19.0,
                ly + 11.0,
                o.title()
            );
            lx += 140.0;
        }
        let m = &self.report.mirror;
        let p = &self.report.power_cuts;
        let _ = write!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-size="11" fill="#52606d">mirror: {} requests ({:.0}/s), {} served, {} faulted; power cuts: {} install, {} commit, {} rollback</text>"##,
            ly + 36.0,
            m.requests,
            self.report.requests_per_second,
            human_bytes(m.bytes),
            m.faults
                .iter()
                .filter(|(k, _)| k.as_str() != "none")
                .map(|(_, n)| n)
                .sum::<u64>(),
            p.install,
            p.commit,
            p.rollback
        );
    }
}

/// Under a release's bar, one line per wave: who installed, committed and rolled back.
fn wave_lines(svg: &mut String, r: &ReleaseReport, above: f64) {
    for (k, w) in r.waves.iter().enumerate() {
        let y = above + WAVE_LINE_H * f64_from(k + 1);
        let _ = write!(
            svg,
            r##"<text x="{}" y="{y:.1}" font-size="11" fill="#52606d">wave {} ({}% from round {}): {} devices, {} started, {} installed, <tspan fill="{}">{} committed</tspan>, <tspan fill="{}">{} rolled back</tspan></text>"##,
            LEFT + 12.0,
            w.wave,
            w.percent,
            w.opens_round,
            w.devices,
            w.started,
            w.installed,
            Outcome::Committed.colour(),
            w.committed,
            Outcome::RolledBack.colour(),
            w.rolled_back
        );
    }
}

/// XML/HTML text escaping.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bytes for people: B, KiB, MiB, GiB.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = f64_from_u64(n);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    let name = units.get(unit).copied().unwrap_or("B");
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {name}")
    }
}

/// A count as f64 for drawing (precision loss above 2^53 is irrelevant on a chart).
#[allow(clippy::cast_precision_loss)]
pub(crate) fn f64_from_u64(n: u64) -> f64 {
    n as f64
}

fn f64_from(n: usize) -> f64 {
    f64_from_u64(u64::try_from(n).unwrap_or(u64::MAX))
}

/// `secs` as the largest whole unit that divides it: "90 s", "15 min", "6 h", "2 d".
fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report(broken: bool) -> DrillReport {
        let scenario = Scenario::default();
        let timeline = (0..10u32)
            .map(|round| {
                let mut running = BTreeMap::new();
                let moved = (round * 5).min(50);
                running.insert("1.0.0".to_owned(), 50 - moved);
                running.insert("1.1.0".to_owned(), moved);
                Sample {
                    round,
                    elapsed_ms: u64::from(round) * 100,
                    running,
                    updating: 5,
                }
            })
            .collect();
        let release = |v: &str, committed, rolled| ReleaseReport {
            version: v.into(),
            published_round: 0,
            settled_round: Some(9),
            converge_seconds: 0.9,
            offered: 50,
            health_fail_injected: rolled,
            outcomes: [(Outcome::Committed, committed), (Outcome::RolledBack, rolled)].into(),
            bytes_downloaded: 50 * 131072,
            waves: Vec::new(),
            halted: None,
            rollback_causes: BTreeMap::new(),
        };
        let mut invariants = Invariants {
            boots_checked: 120,
            ..Invariants::default()
        };
        if broken {
            invariants
                .unsigned
                .push("dev-3: booted 00ff.. which no signed target has".into());
        }
        DrillReport {
            scenario,
            wall_seconds: 1.0,
            rounds: 10,
            releases: vec![release("1.1.0", 50, 0), release("1.2.0", 35, 15)],
            final_versions: [("1.1.0".to_owned(), 15), ("1.2.0".to_owned(), 35)].into(),
            mirror: MirrorStats::default(),
            collector: CollectorStats::default(),
            requests_per_second: 100.0,
            power_cuts: PowerCutCounts::default(),
            invariants,
            timeline,
            device_outcomes: DeviceRows::default(),
        }
    }

    #[test]
    fn table_lists_every_release_and_the_verdict() {
        let t = sample_report(false).table();
        assert!(t.contains("1.1.0") && t.contains("1.2.0"), "{t}");
        assert!(t.contains("invariants: OK"), "{t}");
        let t = sample_report(true).table();
        assert!(
            t.contains("invariants: BROKEN: 0 unbootable, 1 running unsigned"),
            "{t}"
        );
    }

    #[test]
    fn written_report_is_valid_json_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let w = sample_report(false).write_to(dir.path()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&w.json).unwrap()).unwrap();
        assert_eq!(v["releases"][1]["outcomes"]["rolled_back"], 15);
        let svg = std::fs::read_to_string(&w.svg).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("INVARIANTS HOLD"));
        let html = std::fs::read_to_string(&w.html).unwrap();
        assert!(html.contains("<svg") && html.contains("rolled back"));
    }

    /// A report touching every branch of the chart: a broken invariant, an image matching no release,
    /// a release published late that never settled, a zero outcome, injected faults.
    fn chart_fixture() -> DrillReport {
        let mut r = sample_report(true);
        r.invariants.unbootable.push("dev-7: both slots empty".into());
        for s in r.timeline.iter_mut().skip(6) {
            s.running.insert("unknown".into(), 1);
            s.updating = s.round;
        }
        if let Some(late) = r.releases.get_mut(1) {
            late.published_round = 4;
            late.settled_round = None;
            late.converge_seconds = 2.25;
            late.outcomes.insert(Outcome::Retrying, 3);
            late.outcomes.insert(Outcome::NotOffered, 0);
            late.bytes_downloaded = 5 << 30;
            let wave = |wave, percent, opens_round, devices, installed, rolled_back| WaveReport {
                wave,
                percent,
                opens_round,
                devices,
                started: installed,
                installed,
                committed: installed - rolled_back,
                rolled_back,
            };
            late.waves = vec![wave(1, 20.0, 4, 10, 10, 4), wave(2, 100.0, 8, 40, 0, 0)];
            late.halted = Some(HaltReport {
                round: 6,
                wave: 1,
                finished: 10,
                rolled_back: 4,
                reason: "drill rule: 4 of 10 rolled back in wave 1 (>= 20% over >= 3 devices) <&>".into(),
            });
        }
        r.mirror = MirrorStats {
            requests: 1234,
            bytes: 987_654_321,
            not_found: 17,
            faults: [
                ("none".to_owned(), 1000),
                ("drop".to_owned(), 200),
                ("stall".to_owned(), 34),
            ]
            .into(),
        };
        r.power_cuts = PowerCutCounts {
            install: 3,
            commit: 2,
            rollback: 1,
        };
        r
    }

    /// The chart and the page are byte for byte what they were before the SVG writer was split into
    /// functions (issue 21); the every-branch fixture also has waves and a halt (issue 14), so its
    /// files were rewritten then, and again when the x axis became rounds (issue 22).
    /// `OTA_UPDATE_GOLDEN=1` rewrites the golden files after an intended
    /// change.
    #[test]
    fn svg_and_html_match_the_golden_files() {
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        for (name, report) in [
            ("sample", sample_report(false)),
            ("every-branch", chart_fixture()),
        ] {
            let svg = report.svg();
            let html = report.html(&svg);
            for (ext, got) in [("svg", svg), ("html", html)] {
                let path = golden.join(format!("report-{name}.{ext}"));
                if std::env::var_os("OTA_UPDATE_GOLDEN").is_some() {
                    std::fs::create_dir_all(&golden).unwrap();
                    std::fs::write(&path, &got).unwrap();
                }
                let want = std::fs::read_to_string(&path).unwrap();
                assert!(got == want, "{} differs from the chart drawn now", path.display());
            }
        }
    }

    /// The x axis counts rounds, the fleet's own time: the same drill on a slower machine draws the
    /// same chart, and a release's publication sits at its round.
    #[test]
    fn chart_time_axis_is_in_rounds() {
        let mut r = sample_report(false);
        let svg = r.svg();
        for s in r.timeline.iter_mut() {
            s.elapsed_ms *= 7;
        }
        assert_eq!(r.svg(), svg, "the wall clock moved the chart");
        assert!(svg.contains("round (every device polls once; "), "{svg}");
        // Rounds 0 to 9: ticks every 2 rounds, the last one (9) too close to 8 to get its own.
        assert!(svg.contains(">8</text>") && !svg.contains(">9</text>"), "{svg}");
        assert!(!svg.contains(" s</text><line"), "a wall-clock tick is left");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(90), "90 s");
        assert_eq!(human_duration(900), "15 min");
        assert_eq!(human_duration(6 * 3600), "6 h");
        assert_eq!(human_duration(2 * 86_400), "2 d");
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
