//! Issue 15 must-show: the device's report queue survives a power cut at every write.
//!
//! The power-cut sweep's approach (`power_cut_sweep.rs`), applied to the queue's files: a scenario
//! (reports queued past the cap, delivered, refused, retried) is first run uncut through a disk that
//! counts the queue's writes (atomic replace, new file, remove); then, for every write and every mode
//! (before: not done; after: done, then the power fails; torn: a half-written temp file left, the write
//! not done), a fresh queue is cut there, "rebooted" (opened again on the real disk), and the scenario
//! run again from the start as the device would after a restart (each outcome queued again, a no-op when
//! it is queued already), then drained. A model collector applies the real one's sequence rule.
//!
//! After every cut: the queue loads; no sequence number is ever used for two different reports (a
//! number the collector has seen is only ever resent with the same bytes, and refused as a replay);
//! every outcome reaches the collector at most once; and delivered plus dropped accounts for every
//! outcome.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use device_agent::identity::FileIdentity;
use device_agent::report::{IdentitySigner, OutcomeFacts};
use device_agent::report_queue::{Delivery, QueueDisk, QueueLimits, RealDisk, ReportQueue};
use device_agent::Error;
use ota_report::{Envelope, Outcome, Report};
use ota_slot::CutMode;

#[derive(Debug)]
struct Budget {
    ops: u64,
    cut_at: Option<u64>,
    mode: CutMode,
    dead: bool,
}

/// The real disk, with a power-cut budget over its writes (each write is one step).
#[derive(Clone)]
struct CuttingDisk(Arc<Mutex<Budget>>);

enum Verdict {
    Proceed,
    Cut(CutMode),
}

impl CuttingDisk {
    fn new(cut_at: Option<u64>, mode: CutMode) -> CuttingDisk {
        CuttingDisk(Arc::new(Mutex::new(Budget {
            ops: 0,
            cut_at,
            mode,
            dead: false,
        })))
    }

    fn ops(&self) -> u64 {
        self.0.lock().unwrap().ops
    }

    fn is_cut(&self) -> bool {
        self.0.lock().unwrap().dead
    }

    fn step(&self) -> Result<Verdict, Error> {
        let mut b = self.0.lock().unwrap();
        if b.dead {
            return Err(power_loss(b.ops));
        }
        let step = b.ops;
        b.ops += 1;
        if b.cut_at != Some(step) {
            return Ok(Verdict::Proceed);
        }
        b.dead = true;
        Ok(Verdict::Cut(b.mode))
    }

    /// One write under the budget: `write` does it; a torn write leaves half of `bytes` in the temp
    /// file a cut write would leave (`.NAME.tmp`).
    fn write(
        &self,
        path: &Path,
        bytes: &[u8],
        write: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self.step()? {
            Verdict::Proceed => write(),
            Verdict::Cut(CutMode::Before) => Err(power_loss(0)),
            Verdict::Cut(CutMode::After) => {
                write()?;
                Err(power_loss(0))
            }
            Verdict::Cut(CutMode::Torn) => {
                let name = format!(".{}.tmp", path.file_name().unwrap().to_string_lossy());
                std::fs::write(path.with_file_name(name), &bytes[..bytes.len() / 2]).unwrap();
                Err(power_loss(0))
            }
        }
    }
}

fn power_loss(step: u64) -> Error {
    Error::Storage(ota_slot::Error::PowerLoss {
        op: "queue write",
        offset: 0,
        step,
    })
}

impl QueueDisk for CuttingDisk {
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        self.write(path, bytes, || RealDisk.write_atomic(path, bytes))
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        self.write(path, bytes, || RealDisk.write_new(path, bytes))
    }

    fn remove(&self, path: &Path) -> Result<(), Error> {
        // A remove is all or nothing: torn is the same as before.
        match self.step()? {
            Verdict::Proceed => RealDisk.remove(path),
            Verdict::Cut(CutMode::After) => {
                RealDisk.remove(path)?;
                Err(power_loss(0))
            }
            Verdict::Cut(_) => Err(power_loss(0)),
        }
    }
}

/// The collector's rule, and what it took.
#[derive(Default)]
struct ModelCollector {
    last: u64,
    /// Sequence number -> the bytes accepted under it.
    accepted: BTreeMap<u64, Vec<u8>>,
    /// Outcome numbers accepted (carried in the test reports' `bytes_downloaded`).
    outcomes: Vec<u64>,
}

impl ModelCollector {
    fn receive(&mut self, sequence: u64, body: &[u8], label: &str) -> Delivery {
        if sequence <= self.last {
            // Only a resend of a report already taken may come back with a number seen before.
            assert_eq!(
                self.accepted.get(&sequence).map(Vec::as_slice),
                Some(body),
                "{label}: sequence {sequence} reused (or sent out of order) after the collector took {}",
                self.last
            );
            return Delivery::Refused("409 replay".into());
        }
        let report = Report::from_payload(Envelope::from_json(body).unwrap().payload()).unwrap();
        self.last = sequence;
        self.accepted.insert(sequence, body.to_vec());
        self.outcomes.push(report.bytes_downloaded);
        Delivery::Delivered
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Queue(u64),
    Deliver,
    CollectorDown,
}

/// Reports queued past the cap of 3 (2 and 3 are dropped), delivered, one kept by a failed send.
const SCENARIO: [Step; 13] = [
    Step::Queue(1),
    Step::Queue(2),
    Step::Deliver,
    Step::Queue(3),
    Step::Queue(4),
    Step::Queue(5),
    Step::Queue(6),
    Step::CollectorDown,
    Step::Deliver,
    Step::Deliver,
    Step::Queue(7),
    Step::Deliver,
    Step::Deliver,
];
const OUTCOMES: u64 = 7;
const LIMITS: QueueLimits = QueueLimits {
    max_reports: 3,
    max_bytes: 1 << 20,
};

struct Fixture {
    dir: tempfile::TempDir,
    identity: FileIdentity,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = FileIdentity::create_or_load(&dir.path().join("identity.pk8")).unwrap();
        Fixture { dir, identity }
    }

    /// The report of outcome `n`, its number carried in `bytes_downloaded` so the model can tell.
    fn report(&self, n: u64) -> Report {
        let signer = IdentitySigner(&self.identity);
        let facts = OutcomeFacts {
            number: n,
            outcome: Outcome::Committed,
            from_version: "1.0.0".parse().unwrap(),
            to_version: "2.0.0".parse().unwrap(),
            target: "gw/stable/fw-2.0.0.bin".into(),
            reason: String::new(),
            started_unix: 1_700_000_000,
            finished_unix: 1_700_000_100,
            bytes_downloaded: n,
            install_method: None,
        };
        facts
            .to_report(
                signer.device_id(),
                &"gw".parse().unwrap(),
                &"stable".parse().unwrap(),
            )
            .unwrap()
    }

    /// Plays `steps` on `queue`; stops at the first error (the power cut).
    fn play(&self, queue: &ReportQueue, collector: &mut ModelCollector, label: &str) -> Result<(), Error> {
        let signer = IdentitySigner(&self.identity);
        for step in SCENARIO {
            match step {
                Step::Queue(n) => {
                    queue.enqueue(n, self.report(n), &signer)?;
                }
                Step::Deliver => {
                    if let Some(r) = queue.oldest()? {
                        let delivery = collector.receive(r.sequence, &r.body, label);
                        queue.settle(r.sequence, &delivery, 1)?;
                    }
                }
                Step::CollectorDown => {
                    if let Some(r) = queue.oldest()? {
                        queue.settle(r.sequence, &Delivery::RetryLater("down".into()), 1)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Delivers everything left.
    fn drain(&self, queue: &ReportQueue, collector: &mut ModelCollector, label: &str) {
        while let Some(r) = queue.oldest().unwrap() {
            let delivery = collector.receive(r.sequence, &r.body, label);
            queue.settle(r.sequence, &delivery, 2).unwrap();
        }
    }
}

/// Runs the scenario cut at write `cut_at` (uncut: `None`), reboots, runs it again and drains; checks
/// the rules. Returns the writes the cut run made.
fn run(cut_at: Option<u64>, mode: CutMode) -> u64 {
    let label = format!("cut at write {cut_at:?} ({mode:?})");
    let f = Fixture::new();
    let mut collector = ModelCollector::default();
    let disk = CuttingDisk::new(cut_at, mode);
    let cut_queue = ReportQueue::with_disk(f.dir.path(), LIMITS, Box::new(disk.clone()));
    let played = f.play(&cut_queue, &mut collector, &label);
    match &played {
        Err(e) => assert!(e.is_power_loss() && disk.is_cut(), "{label}: {e}"),
        Ok(()) => assert!(cut_at.is_none() || !disk.is_cut(), "{label}: cut but no error"),
    }

    // Reboot: the queue loads from what the cut left, and the device catches up.
    let queue = ReportQueue::open(f.dir.path(), LIMITS);
    let status = queue
        .status()
        .unwrap_or_else(|e| panic!("{label}: queue does not load: {e}"));
    assert!(
        status.count <= u64::from(LIMITS.max_reports) + 1,
        "{label}: {status:?}"
    );
    f.play(&queue, &mut collector, &label)
        .unwrap_or_else(|e| panic!("{label}: after the reboot: {e}"));
    f.drain(&queue, &mut collector, &label);

    let status = queue.status().unwrap();
    let distinct: BTreeSet<u64> = collector.outcomes.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        collector.outcomes.len(),
        "{label}: an outcome reached the collector twice: {:?}",
        collector.outcomes
    );
    assert_eq!(
        collector.outcomes.len() as u64 + status.dropped,
        OUTCOMES,
        "{label}: delivered {:?} and {} dropped do not account for every outcome",
        collector.outcomes,
        status.dropped
    );
    assert_eq!(status.count, 0, "{label}");
    disk.ops()
}

#[test]
fn the_report_queue_survives_a_power_cut_at_every_write() {
    let writes = run(None, CutMode::Before);
    assert!(writes > 20, "the scenario makes {writes} writes");
    let mut tried = 0;
    for n in 0..writes {
        for mode in CutMode::ALL {
            run(Some(n), mode);
            tried += 1;
        }
    }
    println!("report queue: {writes} writes, {tried} cut points tried (before/after/torn)");
}
