//! [`ReportQueue`]: signed reports waiting for the collector, in `STATE/reports/`, bounded and durable.
//!
//! ```text
//! STATE/reports/
//!   queue.json                         QueueMeta: next sequence, drops, deliveries, last send error
//!   00000000000000000007-…0003.dsse    one signed envelope per file: <sequence>-<outcome number>.dsse
//!   lock                               one writer at a time (the device enqueueing, the sender settling)
//! ```
//!
//! **Durability.** An enqueue is three writes, each durable before the next: `queue.json` with the
//! sequence number taken (so a power cut can never hand the same number out twice: the collector would
//! refuse the second report as a replay), the envelope (written whole under a temp name, linked into
//! place, directory fsynced), then `queue.json` again with the outcome marked queued and any drops. A
//! cut between them leaves a queue that loads: a number taken and never used is only a gap, an envelope
//! whose outcome is not yet marked is found by its file name, files under the drop mark are removed.
//!
//! **Bounds.** At most `max_reports` envelopes and `max_bytes` bytes: an enqueue past either drops the
//! oldest first (never the new one) and counts them; the count travels in every later report
//! ([`ota_report::Report::reports_dropped`]). Dropping raises a mark (`drop_below`) in the same write
//! that counts it, so a cut never counts a drop twice or loses one.
//!
//! **Delivery.** The sender takes the oldest envelope ([`ReportQueue::oldest`]) and settles it
//! ([`ReportQueue::settle`]) after the collector's answer; the lock is never held over the network.
//! Every change goes through a [`QueueDisk`] so tests can cut the power at each write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ota_report::{Envelope, Report, ReportSigner};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The queue's directory inside the state directory.
pub const QUEUE_DIR: &str = "reports";
const META_FILE: &str = "queue.json";
const LOCK_FILE: &str = "lock";
const ENTRY_SUFFIX: &str = ".dsse";
/// `queue.json` is a few hundred bytes; anything much larger is not ours.
const MAX_META_FILE: u64 = 64 * 1024;
/// The longest a send error kept for `status` may be.
const MAX_ERROR_TEXT: usize = 512;
/// How long an enqueue or a settle waits for the other side's lock (held for a few fsyncs at most).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The changes the queue makes on disk, one step each: the real file system ([`RealDisk`]) or a test's
/// wrapper that cuts the power at a chosen step.
pub trait QueueDisk: Send + Sync {
    /// Replaces `path` atomically (temp file, fsync, rename, fsync the directory).
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()>;
    /// Creates `path` whole (temp file, fsync, link), then fsyncs its directory.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> Result<()>;
    /// Removes `path` (already gone is fine).
    fn remove(&self, path: &Path) -> Result<()>;
}

/// The real file system, through `ota-fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealDisk;

impl QueueDisk for RealDisk {
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        Ok(ota_fs::write_atomic(path, bytes, 0o600)?)
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        ota_fs::write_new(path, bytes, 0o600)?;
        Ok(ota_fs::sync_dir(ota_fs::parent_dir(path))?)
    }

    fn remove(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove queued report", path)(e)),
        }
    }
}

/// The queue's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// The most reports kept.
    pub max_reports: u32,
    /// The most bytes of reports kept.
    pub max_bytes: u64,
}

/// A send that did not deliver, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendError {
    /// When (seconds since the Unix epoch).
    pub unix: u64,
    /// What happened (the collector's status and message, or the network error).
    pub text: String,
}

/// `queue.json`: the counters that must survive a power cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueMeta {
    /// The sequence number the next report gets (the collector refuses any not above the last it took).
    next_sequence: u64,
    /// Reports dropped unsent because the queue was full (or unreadable), since provisioning.
    dropped: u64,
    /// Every report numbered below this was dropped (its file, if a cut left one, is removed at load).
    drop_below: u64,
    /// The highest outcome number already queued (an outcome is queued once, even across cuts).
    queued_through: u64,
    /// Reports the collector took.
    delivered: u64,
    /// Reports the collector refused for good (malformed, replayed), dropped rather than retried.
    refused: u64,
    /// When the collector last took one.
    #[serde(default)]
    last_delivered_unix: Option<u64>,
    /// The last failed send, cleared by the next delivery.
    #[serde(default)]
    last_error: Option<SendError>,
}

impl Default for QueueMeta {
    fn default() -> QueueMeta {
        QueueMeta {
            next_sequence: 1,
            dropped: 0,
            drop_below: 0,
            queued_through: 0,
            delivered: 0,
            refused: 0,
            last_delivered_unix: None,
            last_error: None,
        }
    }
}

/// One queued report, as its file name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    sequence: u64,
    outcome: u64,
    bytes: u64,
}

/// What `status` shows of the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// Reports waiting.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The bounds.
    pub max_reports: u32,
    /// The bounds.
    pub max_bytes: u64,
    /// Reports dropped unsent since provisioning (queue full).
    pub dropped: u64,
    /// Reports the collector took.
    pub delivered: u64,
    /// Reports the collector refused for good.
    pub refused: u64,
    /// The sequence number the next report gets.
    pub next_sequence: u64,
    /// When the collector last took one.
    pub last_delivered_unix: Option<u64>,
    /// The last failed send (cleared by a delivery), or why the queue could not be read.
    pub last_error: Option<SendError>,
}

/// The oldest waiting report, for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedReport {
    /// Its sequence number.
    pub sequence: u64,
    /// The envelope's JSON, as signed and sent.
    pub body: Vec<u8>,
}

/// What the collector (or the network) made of one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The collector took it: remove it.
    Delivered,
    /// The collector refused it for good (malformed, a replay, too large): remove it, never resend.
    Refused(String),
    /// Not delivered now (network, timeout, 5xx, not yet enrolled): keep it and try again later.
    RetryLater(String),
}

/// The queue in `STATE/reports/`.
pub struct ReportQueue {
    dir: PathBuf,
    limits: QueueLimits,
    disk: Box<dyn QueueDisk>,
}

impl std::fmt::Debug for ReportQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportQueue")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The queue's state as loaded under its lock.
struct Loaded {
    meta: QueueMeta,
    entries: Vec<Entry>,
}

impl ReportQueue {
    /// The queue in `state_dir` on the real file system (the directory is made on first use).
    pub fn open(state_dir: &Path, limits: QueueLimits) -> ReportQueue {
        ReportQueue::with_disk(state_dir, limits, Box::new(RealDisk))
    }

    /// The queue in `state_dir`, changed through `disk`.
    pub fn with_disk(state_dir: &Path, limits: QueueLimits, disk: Box<dyn QueueDisk>) -> ReportQueue {
        ReportQueue {
            dir: state_dir.join(QUEUE_DIR),
            limits,
            disk,
        }
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `report` as the report of outcome number `outcome` (0: not numbered, always queued):
    /// gives it the next sequence number and the drop count, signs it, writes it, and drops the oldest
    /// reports past the bounds. `Ok(None)` when that outcome is queued already (a restart after a cut).
    pub fn enqueue(
        &self,
        outcome: u64,
        mut report: Report,
        signer: &dyn ReportSigner,
    ) -> Result<Option<u64>> {
        let _lock = self.lock()?;
        let Loaded {
            mut meta,
            mut entries,
        } = self.load()?;
        if outcome != 0 && outcome <= meta.queued_through {
            return Ok(None);
        }
        let sequence = meta.next_sequence;
        meta.next_sequence = sequence.saturating_add(1);
        self.save_meta(&meta)?;
        report.sequence = sequence;
        report.reports_dropped = meta.dropped;
        let body = Envelope::sign(&report, signer)
            .map_err(|source| Error::Report { source })?
            .to_json();
        self.disk.write_new(&self.entry_path(sequence, outcome), &body)?;
        entries.push(Entry {
            sequence,
            outcome,
            bytes: len64(&body),
        });
        let drop = self.oldest_over_limits(&entries);
        meta.queued_through = meta.queued_through.max(outcome);
        if let Some(kept) = entries.get(drop) {
            meta.dropped = meta
                .dropped
                .saturating_add(len64(entries.get(..drop).unwrap_or_default()));
            meta.drop_below = kept.sequence;
        }
        self.save_meta(&meta)?;
        for e in entries.get(..drop).unwrap_or_default() {
            tracing::warn!(
                sequence = e.sequence,
                "report queue full: dropped the oldest report"
            );
            self.disk.remove(&self.entry_path(e.sequence, e.outcome))?;
        }
        Ok(Some(sequence))
    }

    /// How many of the oldest `entries` must go for the rest to fit the bounds (never the newest).
    fn oldest_over_limits(&self, entries: &[Entry]) -> usize {
        let mut count = len64(entries);
        let mut bytes: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut drop = 0;
        for e in entries.iter().take(entries.len().saturating_sub(1)) {
            if count <= u64::from(self.limits.max_reports) && bytes <= self.limits.max_bytes {
                break;
            }
            count -= 1;
            bytes = bytes.saturating_sub(e.bytes);
            drop += 1;
        }
        drop
    }

    /// The oldest waiting report, if any. One whose file cannot be read back (bounded by the report
    /// contract's size) is dropped and counted, so it cannot block the queue.
    pub fn oldest(&self) -> Result<Option<QueuedReport>> {
        let _lock = self.lock()?;
        let Loaded { mut meta, entries } = self.load()?;
        for e in entries {
            let path = self.entry_path(e.sequence, e.outcome);
            match ota_fs::read_bounded(&path, ota_report::MAX_ENVELOPE_BYTES as u64) {
                Ok(body) => {
                    return Ok(Some(QueuedReport {
                        sequence: e.sequence,
                        body,
                    }))
                }
                Err(err) => {
                    tracing::warn!(error = %crate::error_chain(&err), "unreadable queued report dropped");
                    meta.dropped = meta.dropped.saturating_add(1);
                    self.save_meta(&meta)?;
                    self.disk.remove(&path)?;
                }
            }
        }
        Ok(None)
    }

    /// Records what became of report `sequence`: removed when delivered or refused for good, kept
    /// otherwise; the error (or its clearing) is what `status` shows. `now_unix` stamps it.
    pub fn settle(&self, sequence: u64, delivery: &Delivery, now_unix: u64) -> Result<()> {
        let _lock = self.lock()?;
        let Loaded { mut meta, entries } = self.load()?;
        let entry = entries.iter().find(|e| e.sequence == sequence);
        let error = |text: &str| {
            let mut text = text.to_owned();
            truncate_at_char(&mut text, MAX_ERROR_TEXT);
            Some(SendError { unix: now_unix, text })
        };
        match delivery {
            Delivery::Delivered => {
                meta.delivered = meta.delivered.saturating_add(1);
                meta.last_delivered_unix = Some(now_unix);
                meta.last_error = None;
            }
            Delivery::Refused(why) => {
                meta.refused = meta.refused.saturating_add(1);
                meta.last_error = error(&format!("report {sequence} refused for good: {why}"));
            }
            Delivery::RetryLater(why) => meta.last_error = error(why),
        }
        if let (Some(e), Delivery::Delivered | Delivery::Refused(_)) = (entry, delivery) {
            self.disk.remove(&self.entry_path(e.sequence, e.outcome))?;
        }
        self.save_meta(&meta)
    }

    /// What `status` shows. Reads without the lock (a report may be settling meanwhile).
    pub fn status(&self) -> Result<QueueStatus> {
        let meta = self.read_meta()?;
        let entries: Vec<Entry> = self
            .list()?
            .into_iter()
            .filter(|e| e.sequence >= meta.drop_below)
            .collect();
        Ok(QueueStatus {
            count: len64(&entries),
            bytes: entries.iter().map(|e| e.bytes).sum(),
            max_reports: self.limits.max_reports,
            max_bytes: self.limits.max_bytes,
            dropped: meta.dropped,
            delivered: meta.delivered,
            refused: meta.refused,
            next_sequence: meta.next_sequence,
            last_delivered_unix: meta.last_delivered_unix,
            last_error: meta.last_error,
        })
    }

    /// The highest outcome number queued (numbered outcomes at or below it are not queued again).
    pub fn queued_through(&self) -> Result<u64> {
        let _lock = self.lock()?;
        Ok(self.load()?.meta.queued_through)
    }

    /// Takes the queue's lock, waiting a little for the other side (it holds it for a few fsyncs).
    fn lock(&self) -> Result<ota_fs::FileLock> {
        match std::fs::create_dir(&self.dir) {
            Ok(()) => ota_fs::sync_dir(ota_fs::parent_dir(&self.dir))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create report queue directory", &self.dir)(e)),
        }
        let path = self.dir.join(LOCK_FILE);
        let note = format!("pid {} (report queue)", std::process::id());
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match ota_fs::FileLock::acquire(&path, 0o600, &note) {
                Err(ota_fs::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return Ok(other?),
            }
        }
    }

    /// The meta file and the entries at or above the drop mark, oldest first; the fix-ups after a cut:
    /// files under the mark and stale temp files are removed, an entry's outcome counts as queued, and
    /// the next sequence number is above every file's.
    fn load(&self) -> Result<Loaded> {
        let mut meta = self.read_meta()?;
        let mut entries = Vec::new();
        let (listed, stale) = self.scan()?;
        for path in stale {
            self.disk.remove(&path)?;
        }
        for e in listed {
            if e.sequence < meta.drop_below {
                self.disk.remove(&self.entry_path(e.sequence, e.outcome))?;
                continue;
            }
            meta.queued_through = meta.queued_through.max(e.outcome);
            meta.next_sequence = meta.next_sequence.max(e.sequence.saturating_add(1));
            entries.push(e);
        }
        Ok(Loaded { meta, entries })
    }

    fn read_meta(&self) -> Result<QueueMeta> {
        let path = self.dir.join(META_FILE);
        let bytes = match ota_fs::read_bounded(&path, MAX_META_FILE) {
            Ok(bytes) => bytes,
            Err(ota_fs::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(QueueMeta::default())
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::StateCorrupt {
            path,
            why: e.to_string(),
        })
    }

    fn save_meta(&self, meta: &QueueMeta) -> Result<()> {
        let path = self.dir.join(META_FILE);
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| Error::StateCorrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        self.disk.write_atomic(&path, &bytes)
    }

    /// The entries on disk, oldest first (names that are not `<sequence>-<outcome>.dsse` are ignored).
    fn list(&self) -> Result<Vec<Entry>> {
        Ok(self.scan()?.0)
    }

    /// One read of the directory: the entries, oldest first, and the temp files a cut left behind
    /// (`.NAME.tmp`, see `ota_fs::write_atomic`: garbage by construction).
    fn scan(&self) -> Result<(Vec<Entry>, Vec<PathBuf>)> {
        let read = match std::fs::read_dir(&self.dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(Error::io("list report queue", &self.dir)(e)),
        };
        let mut entries = Vec::new();
        let mut stale = Vec::new();
        for item in read {
            let item = item.map_err(Error::io("list report queue", &self.dir))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                stale.push(item.path());
                continue;
            }
            let Some((sequence, outcome)) = parse_entry_name(&name) else {
                continue;
            };
            let bytes = item
                .metadata()
                .map_err(Error::io("stat queued report", item.path()))?
                .len();
            entries.push(Entry {
                sequence,
                outcome,
                bytes,
            });
        }
        entries.sort_by_key(|e| e.sequence);
        Ok((entries, stale))
    }

    fn entry_path(&self, sequence: u64, outcome: u64) -> PathBuf {
        self.dir
            .join(format!("{sequence:020}-{outcome:020}{ENTRY_SUFFIX}"))
    }
}

/// `<sequence>-<outcome>.dsse` as numbers.
fn parse_entry_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(ENTRY_SUFFIX)?;
    let (sequence, outcome) = stem.split_once('-')?;
    Some((sequence.parse().ok()?, outcome.parse().ok()?))
}

fn len64<T>(items: &[T]) -> u64 {
    u64::try_from(items.len()).unwrap_or(u64::MAX)
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ota_report::{Outcome, Reason, TargetName};

    fn report(key: &ed25519_dalek::SigningKey) -> Report {
        Report {
            schema: ota_report::SCHEMA_VERSION,
            device_id: key.public_key().device_id(),
            sequence: 0,
            hardware: "gw".parse().unwrap(),
            channel: "stable".parse().unwrap(),
            from_version: "1.0.0".parse().unwrap(),
            to_version: "2.0.0".parse().unwrap(),
            target: TargetName::new("gw/stable/fw-2.0.0.bin").unwrap(),
            outcome: Outcome::Committed,
            reason: Reason::default(),
            started: Utc::now(),
            finished: Utc::now(),
            bytes_downloaded: 1,
            install_method: None,
            reports_dropped: 0,
        }
    }

    fn payload(body: &[u8]) -> Report {
        Report::from_payload(Envelope::from_json(body).unwrap().payload()).unwrap()
    }

    #[test]
    fn the_oldest_are_dropped_past_the_cap_and_counted_in_the_next_report() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let limits = QueueLimits {
            max_reports: 3,
            max_bytes: 1 << 20,
        };
        let q = ReportQueue::open(dir.path(), limits);
        for n in 1..=5 {
            assert_eq!(q.enqueue(n, report(&key), &key).unwrap(), Some(n));
        }
        let s = q.status().unwrap();
        assert_eq!((s.count, s.dropped, s.next_sequence), (3, 2, 6));
        let oldest = q.oldest().unwrap().unwrap();
        assert_eq!(oldest.sequence, 3, "1 and 2 were dropped");
        assert_eq!(
            payload(&oldest.body).reports_dropped,
            0,
            "dropped after report 3 was made"
        );
        q.enqueue(6, report(&key), &key).unwrap();
        let s = q.status().unwrap();
        assert_eq!((s.count, s.dropped), (3, 3));
        // Report 6 was signed when 2 had been dropped; the drop its own enqueue caused goes in the next.
        q.settle(4, &Delivery::Delivered, 1).unwrap();
        q.settle(5, &Delivery::Refused("409".into()), 2).unwrap();
        let last = q.oldest().unwrap().unwrap();
        assert_eq!((last.sequence, payload(&last.body).reports_dropped), (6, 2));
        let s = q.status().unwrap();
        assert_eq!((s.count, s.delivered, s.refused), (1, 1, 1));
        assert!(s.last_error.unwrap().text.contains("refused"));
    }

    #[test]
    fn an_outcome_is_queued_once_and_a_retry_keeps_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let q = ReportQueue::open(
            dir.path(),
            QueueLimits {
                max_reports: 10,
                max_bytes: 1 << 20,
            },
        );
        assert_eq!(q.enqueue(1, report(&key), &key).unwrap(), Some(1));
        assert_eq!(q.enqueue(1, report(&key), &key).unwrap(), None);
        q.settle(1, &Delivery::RetryLater("down".into()), 5).unwrap();
        let s = q.status().unwrap();
        assert_eq!((s.count, s.last_error.unwrap().text.as_str()), (1, "down"));
        q.settle(1, &Delivery::Delivered, 6).unwrap();
        assert_eq!(
            q.enqueue(1, report(&key), &key).unwrap(),
            None,
            "delivered, still once"
        );
        let s = q.status().unwrap();
        assert_eq!((s.count, s.delivered, s.last_error), (0, 1, None));
    }

    #[test]
    fn the_byte_cap_drops_too_and_never_the_new_report() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let one = {
            let q = ReportQueue::open(
                dir.path(),
                QueueLimits {
                    max_reports: 100,
                    max_bytes: 1 << 20,
                },
            );
            q.enqueue(0, report(&key), &key).unwrap();
            q.status().unwrap().bytes
        };
        let q = ReportQueue::open(
            dir.path(),
            QueueLimits {
                max_reports: 100,
                max_bytes: one * 2 + one / 2,
            },
        );
        for _ in 0..4 {
            q.enqueue(0, report(&key), &key).unwrap();
        }
        let s = q.status().unwrap();
        assert_eq!((s.count, s.dropped), (2, 3));
        assert!(s.bytes <= one * 2 + one / 2);
    }
}
