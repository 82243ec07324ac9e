//! Install progress: how many bytes of the image (or of the delta) are written, of how many, and how
//! fast. Shown on a terminal as a progress bar (indicatif, only when stderr is a terminal), otherwise as
//! an INFO log line every [`LOG_INTERVAL`], and kept in [`PROGRESS_FILE`] in the state directory so that
//! `device-agent status` (another process) shows it while an install runs.
//!
//! The file is a view only: nothing decides anything from it. It is replaced atomically
//! ([`ota_fs::write_atomic`]) at most once per [`PERSIST_INTERVAL`] (and at each phase change), and a
//! failure to write it is logged once, never fatal to the install. When the install ends it is marked
//! `done` or `failed`; one left `running` by an agent that died (power cut, kill) is marked
//! `interrupted` at the agent's next start ([`mark_interrupted`]).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::now_unix;

/// Name of the progress file inside the state directory.
pub const PROGRESS_FILE: &str = "progress.json";
/// The most bytes of the progress file read back (a record is ~300 bytes).
const MAX_PROGRESS_BYTES: u64 = 4096;
/// The shortest time between two writes of the progress file while a phase runs.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest time between two progress lines in the log (stderr not a terminal: the journal).
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What the install is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The full image streams into the inactive slot (`bytes` of the image written).
    Download,
    /// The delta streams into the spool file (`bytes` of the delta received).
    DeltaDownload,
    /// The delta is decoded into the inactive slot (`bytes` of the new image written).
    DeltaApply,
    /// The slot is read back and hashed against the signed sha256 (`bytes` not counted: 0).
    Verify,
    /// The image is in the slot, verified.
    Done,
    /// The install stopped with an error (`error`; the update state says whether it resumes).
    Failed,
    /// The agent stopped mid-install (killed, power cut), as found at its next start.
    Interrupted,
}

impl Phase {
    /// Whether an install is (or was, for an agent that died) underway in this phase.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Phase::Download | Phase::DeltaDownload | Phase::DeltaApply | Phase::Verify
        )
    }

    /// Whether this phase's bytes are counted as they go (its rate means something).
    fn is_counted(self) -> bool {
        matches!(self, Phase::Download | Phase::DeltaDownload | Phase::DeltaApply)
    }

    /// The phase in words, for `status` and the log.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Download => "downloading into the slot",
            Phase::DeltaDownload => "downloading the delta",
            Phase::DeltaApply => "applying the delta into the slot",
            Phase::Verify => "verifying the slot",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Interrupted => "interrupted (the agent stopped; the next poll resumes the install)",
        }
    }
}

/// The persisted progress of the current (or last) install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallProgress {
    /// The version being installed.
    pub version: String,
    /// What the install is doing.
    pub phase: Phase,
    /// Bytes done in this phase.
    pub bytes: u64,
    /// Bytes this phase handles in all (the image's signed length; the delta's for `delta_download`).
    pub total: u64,
    /// Average rate of this phase so far, bytes per second (after `verify`, `done` or `failed`: of the last
    /// counted phase, the download or the delta's decoding).
    pub bytes_per_sec: u64,
    /// When the install started (Unix seconds).
    pub started_unix: u64,
    /// When this record was written (Unix seconds).
    pub updated_unix: u64,
    /// Why the install stopped (`failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl InstallProgress {
    /// Percent of this phase done (0-100).
    pub fn percent(&self) -> u64 {
        if self.total == 0 {
            return 100;
        }
        (u128::from(self.bytes) * 100 / u128::from(self.total)).min(100) as u64
    }
}

impl std::fmt::Display for InstallProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.phase == Phase::Verify {
            // The read-back is not counted byte by byte (ota-slot hashes the slot in one call).
            return write!(
                f,
                "{} {} ({})",
                self.version,
                self.phase.describe(),
                mib(self.total)
            );
        }
        write!(
            f,
            "{} {}: {} of {} ({}%), {}/s",
            self.version,
            self.phase.describe(),
            mib(self.bytes),
            mib(self.total),
            self.percent(),
            mib(self.bytes_per_sec)
        )?;
        if let Some(e) = &self.error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The progress file of the state directory `state_dir`.
pub fn progress_path(state_dir: &Path) -> PathBuf {
    state_dir.join(PROGRESS_FILE)
}

/// Reads the progress file: `None` when there is none, or (logged) when it cannot be read or parsed: it
/// is a view, and `status` must work without it.
pub fn load(state_dir: &Path) -> Option<InstallProgress> {
    let path = progress_path(state_dir);
    let bytes = match ota_fs::read_bounded(&path, MAX_PROGRESS_BYTES) {
        Ok(bytes) => bytes,
        Err(ota_fs::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %crate::error_chain(&e), "cannot read the install progress");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(progress) => Some(progress),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot parse the install progress");
            None
        }
    }
}

/// At the agent's start (it holds the lock: no install runs): a progress file still `running` was left
/// by an agent that died mid-install; mark it `interrupted` so `status` does not show a stalled install
/// as running.
pub fn mark_interrupted(state_dir: &Path) {
    let Some(mut progress) = load(state_dir) else {
        return;
    };
    if !progress.phase.is_running() {
        return;
    }
    progress.phase = Phase::Interrupted;
    progress.updated_unix = now_unix();
    let mut file = ProgressFile::new(progress_path(state_dir), PERSIST_INTERVAL);
    file.force(Instant::now(), &progress);
}

/// The progress file, written at most once per interval ([`ProgressFile::offer`]) unless forced.
#[derive(Debug)]
pub struct ProgressFile {
    path: PathBuf,
    interval: Duration,
    last: Option<Instant>,
    /// A write failed: logged once, then no more tries for this install.
    broken: bool,
}

impl ProgressFile {
    /// Writes to `path`, at most once per `interval` through [`ProgressFile::offer`].
    pub fn new(path: PathBuf, interval: Duration) -> ProgressFile {
        ProgressFile {
            path,
            interval,
            last: None,
            broken: false,
        }
    }

    /// Writes `progress` when the last write is at least the interval before `now` (or there was none).
    /// Returns whether it wrote.
    pub fn offer(&mut self, now: Instant, progress: &InstallProgress) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            self.force(now, progress);
        }
        due
    }

    /// Writes `progress` now (a phase change, the end).
    pub fn force(&mut self, now: Instant, progress: &InstallProgress) {
        self.last = Some(now);
        if self.broken {
            return;
        }
        let written = serde_json::to_vec_pretty(progress)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                ota_fs::write_atomic(&self.path, &bytes, 0o600).map_err(|e| crate::error_chain(&e))
            });
        if let Err(why) = written {
            self.broken = true;
            tracing::warn!(path = %self.path.display(), error = %why, "cannot write the install progress; the install goes on");
        }
    }
}

/// Where progress is shown besides the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressDisplay {
    /// A progress bar on stderr.
    Bar,
    /// An INFO log line every [`LOG_INTERVAL`].
    Log,
}

impl ProgressDisplay {
    /// A bar when stderr is a terminal, log lines otherwise (under systemd stderr is the journal).
    pub fn for_stderr() -> ProgressDisplay {
        use std::io::IsTerminal as _;
        if std::io::stderr().is_terminal() {
            ProgressDisplay::Bar
        } else {
            ProgressDisplay::Log
        }
    }
}

/// What the meter shows progress on.
enum View {
    Bar(indicatif::ProgressBar),
    Log { last: Option<Instant> },
    Quiet,
}

/// Counts the bytes of one install's phases and shows them: the file, and a bar or log lines.
/// [`InstallMeter::off`] does nothing (library users that did not ask for progress: tests, the drill).
pub struct InstallMeter {
    file: Option<ProgressFile>,
    view: View,
    progress: InstallProgress,
    phase_started: Instant,
}

impl InstallMeter {
    /// A meter that neither writes nor shows anything.
    pub fn off() -> InstallMeter {
        InstallMeter {
            file: None,
            view: View::Quiet,
            progress: InstallProgress {
                version: String::new(),
                phase: Phase::Download,
                bytes: 0,
                total: 0,
                bytes_per_sec: 0,
                started_unix: 0,
                updated_unix: 0,
                error: None,
            },
            phase_started: Instant::now(),
        }
    }

    /// A meter for installing `version`, writing the progress file of `state_dir` and showing on
    /// `display`. Nothing is written before the first [`InstallMeter::phase`].
    pub fn new(state_dir: &Path, display: ProgressDisplay, version: &str) -> InstallMeter {
        let mut meter = InstallMeter::off();
        meter.file = Some(ProgressFile::new(progress_path(state_dir), PERSIST_INTERVAL));
        meter.view = match display {
            ProgressDisplay::Bar => View::Bar(indicatif::ProgressBar::hidden()),
            ProgressDisplay::Log => View::Log { last: None },
        };
        meter.progress.version = version.to_owned();
        meter.progress.started_unix = now_unix();
        meter
    }

    /// Starts `phase`, which handles `total` bytes (written at once).
    pub fn phase(&mut self, phase: Phase, total: u64) {
        self.progress.phase = phase;
        self.progress.bytes = 0;
        self.progress.total = total;
        if phase.is_counted() {
            self.progress.bytes_per_sec = 0;
            self.phase_started = Instant::now();
        }
        if let View::Bar(bar) = &mut self.view {
            bar.finish_and_clear();
            *bar = new_bar(total, phase);
        }
        self.write(true);
    }

    /// `n` more bytes done in the current phase.
    pub fn advance(&mut self, n: u64) {
        if self.file.is_none() {
            return;
        }
        self.progress.bytes = self.progress.bytes.saturating_add(n);
        if let View::Bar(bar) = &self.view {
            bar.inc(n);
        }
        self.write(false);
    }

    /// The install ended: `Done`, or `Failed` with `error` (written at once).
    pub fn end(&mut self, error: Option<String>) {
        if self.file.is_none() {
            return;
        }
        if let View::Bar(bar) = &self.view {
            bar.finish_and_clear();
        }
        if error.is_none() {
            self.progress.phase = Phase::Done;
            self.progress.bytes = self.progress.total;
        } else {
            self.progress.phase = Phase::Failed;
        }
        self.progress.error = error;
        self.write(true);
    }

    /// The progress as last counted.
    pub fn progress(&self) -> &InstallProgress {
        &self.progress
    }

    /// Updates the rate, writes the file (when forced or due) and the log line (when due).
    fn write(&mut self, force: bool) {
        let Some(file) = &mut self.file else {
            return;
        };
        let now = Instant::now();
        let secs = now.saturating_duration_since(self.phase_started).as_secs_f64();
        if secs > 0.0 && self.progress.phase.is_counted() {
            self.progress.bytes_per_sec = (self.progress.bytes as f64 / secs) as u64;
        }
        self.progress.updated_unix = now_unix();
        if force {
            file.force(now, &self.progress);
        } else {
            file.offer(now, &self.progress);
        }
        if let View::Log { last } = &mut self.view {
            if last.is_none_or(|l| now.saturating_duration_since(l) >= LOG_INTERVAL) {
                *last = Some(now);
                let p = &self.progress;
                tracing::info!(version = %p.version, phase = p.phase.describe(), bytes = p.bytes, total = p.total,
                    percent = p.percent(), bytes_per_sec = p.bytes_per_sec, "install progress");
            }
        }
    }
}

impl Drop for InstallMeter {
    fn drop(&mut self) {
        if let View::Bar(bar) = &self.view {
            bar.finish_and_clear();
        }
    }
}

/// A bar on stderr for `total` bytes of `phase` (a line without a bar for the uncounted read-back).
fn new_bar(total: u64, phase: Phase) -> indicatif::ProgressBar {
    if phase == Phase::Verify {
        let line = indicatif::ProgressBar::new_spinner();
        line.set_message(format!("{} ({})", phase.describe(), mib(total)));
        line.tick();
        return line;
    }
    let bar = indicatif::ProgressBar::new(total);
    let template = "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}";
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(phase.describe());
    bar
}

/// An async sink that counts what `inner` accepts into a meter.
pub struct MeteredSink<'m, W> {
    /// The sink written to.
    pub inner: W,
    /// The meter counting its bytes.
    pub meter: &'m mut InstallMeter,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for MeteredSink<'_, W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.meter.advance(u64::try_from(*n).unwrap_or(u64::MAX));
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A blocking writer that counts what `inner` accepts into a meter (the delta decoder's output).
pub struct MeteredWrite<'m, W> {
    /// The writer written to.
    pub inner: W,
    /// The meter counting its bytes.
    pub meter: &'m mut InstallMeter,
}

impl<W: std::io::Write> std::io::Write for MeteredWrite<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.meter.advance(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bytes: u64) -> InstallProgress {
        InstallProgress {
            version: "2.0.0".to_owned(),
            phase: Phase::Download,
            bytes,
            total: 1000,
            bytes_per_sec: 10,
            started_unix: 1,
            updated_unix: 2,
            error: None,
        }
    }

    #[test]
    fn the_file_is_written_at_most_once_per_interval_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ProgressFile::new(progress_path(dir.path()), Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(file.offer(t0, &record(1)), "the first offer writes");
        assert_eq!(load(dir.path()).unwrap().bytes, 1);
        assert!(!file.offer(t0 + Duration::from_millis(500), &record(2)));
        assert!(!file.offer(t0 + Duration::from_millis(999), &record(3)));
        assert_eq!(
            load(dir.path()).unwrap().bytes,
            1,
            "written before the interval ran out"
        );
        assert!(file.offer(t0 + Duration::from_millis(1000), &record(4)));
        assert_eq!(load(dir.path()).unwrap().bytes, 4);
        // A forced write goes through at once, and the interval counts from it.
        file.force(t0 + Duration::from_millis(1100), &record(5));
        assert_eq!(load(dir.path()).unwrap().bytes, 5);
        assert!(!file.offer(t0 + Duration::from_millis(2050), &record(6)));
        assert!(file.offer(t0 + Duration::from_millis(2100), &record(7)));
        assert_eq!(load(dir.path()).unwrap(), record(7));
    }

    #[test]
    fn a_meter_counts_phases_and_ends_done_or_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut meter = InstallMeter::new(dir.path(), ProgressDisplay::Log, "2.0.0");
        assert!(
            load(dir.path()).is_none(),
            "nothing written before the first phase"
        );
        meter.phase(Phase::Download, 300);
        let first = load(dir.path()).unwrap();
        assert_eq!((first.phase, first.bytes, first.total), (Phase::Download, 0, 300));
        meter.advance(100);
        meter.advance(100);
        assert_eq!(meter.progress().bytes, 200);
        assert_eq!(meter.progress().percent(), 66);
        meter.phase(Phase::Verify, 300);
        assert_eq!(load(dir.path()).unwrap().phase, Phase::Verify);
        meter.end(None);
        let done = load(dir.path()).unwrap();
        assert_eq!((done.phase, done.bytes, done.total), (Phase::Done, 300, 300));
        let mut failing = InstallMeter::new(dir.path(), ProgressDisplay::Log, "3.0.0");
        failing.phase(Phase::Download, 10);
        failing.end(Some("connection refused".to_owned()));
        let failed = load(dir.path()).unwrap();
        assert_eq!(failed.phase, Phase::Failed);
        assert_eq!(failed.error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn a_running_file_is_marked_interrupted_and_a_finished_one_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ProgressFile::new(progress_path(dir.path()), PERSIST_INTERVAL);
        file.force(Instant::now(), &record(7));
        mark_interrupted(dir.path());
        assert_eq!(load(dir.path()).unwrap().phase, Phase::Interrupted);
        let done = InstallProgress {
            phase: Phase::Done,
            ..record(1000)
        };
        file.force(Instant::now(), &done);
        mark_interrupted(dir.path());
        assert_eq!(load(dir.path()).unwrap(), done);
    }

    #[test]
    fn an_unreadable_file_reads_as_none_and_an_off_meter_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(progress_path(dir.path()), b"{not json").unwrap();
        assert!(load(dir.path()).is_none());
        std::fs::remove_file(progress_path(dir.path())).unwrap();
        let mut off = InstallMeter::off();
        off.phase(Phase::Download, 10);
        off.advance(5);
        off.end(None);
        assert!(!progress_path(dir.path()).exists());
    }
}
