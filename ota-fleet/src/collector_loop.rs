//! The collector in the drill's loop: a real collector (the `collector` library: SQLite file, HTTP on
//! 127.0.0.1 with an ephemeral port) that every simulated device is enrolled in at provisioning and
//! reports to through the agent's real queue and sender; its automatic halt, configured from the
//! scenario's `[rollout.halt]`, is what halts a bad release. The drill ticks the rule after each round
//! (after the round's reports are stored), on the devices' simulated clock, and checks at the end of
//! each release that its own counts and the collector's summary agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use collector::halt::{AutoHalt, HaltRule};
use collector::{RolloutAction, SqliteStore, Store};
use device_agent::config::ReportConfig;
use device_agent::report_queue::ReportQueue;

use crate::{Error, Result};

/// Per wave (0-based): committed, rolled back, failed, pending.
pub(crate) type WaveCounts = BTreeMap<usize, [u64; 4]>;

/// The names of [`WaveCounts`]' columns.
pub(crate) const COUNT_NAMES: [&str; 4] = ["committed", "rolled back", "failed", "pending"];

/// A running collector and how the devices reach it.
pub(crate) struct LoopCollector {
    store: Arc<dyn Store>,
    auto_halt: Arc<AutoHalt>,
    repo: PathBuf,
    clock: Arc<AtomicI64>,
    report: ReportConfig,
    /// One HTTP client for every device's sends (building one per send costs more than the send).
    client: reqwest::Client,
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl LoopCollector {
    /// Opens the store at `db`, serves it on 127.0.0.1, and arms the halt `rule` (none: never halts)
    /// with `keys` (rollout-control, snapshot, timestamp) on `repo`, reading `clock`; `before_publish`
    /// runs just before a halt is published.
    pub(crate) async fn start(
        db: &Path,
        repo: &Path,
        rule: Option<HaltRule>,
        keys: ota_publish::KeyRing,
        clock: Arc<AtomicI64>,
        before_publish: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<LoopCollector> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(db).map_err(collector_error)?);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Mirror {
            what: "listen for the collector".into(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Mirror {
            what: "read the collector's address".into(),
            source,
        })?;
        let timeouts = collector::http::ReadTimeouts {
            headers: Duration::from_secs(10),
            body: Duration::from_secs(10),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        serve_on_own_thread(listener, store.clone(), timeouts, stopped)?;
        let ticks = Arc::clone(&clock);
        let auto_halt = AutoHalt::new(
            store.clone(),
            rule.into_iter().collect(),
            Some(repo.to_owned()),
            Some(keys),
            Arc::new(move || ticks.load(Ordering::Relaxed)),
        )
        .before_publish(before_publish);
        let report = report_config(&format!("http://{addr}"))?;
        let client = device_agent::report_send::http_client(&report, None).map_err(|e| Error::Agent {
            device: "drill".into(),
            source: Box::new(e),
        })?;
        Ok(LoopCollector {
            client,
            store,
            auto_halt: Arc::new(auto_halt),
            repo: repo.to_owned(),
            clock,
            report,
            stop: std::sync::Mutex::new(Some(stop)),
        })
    }

    /// Enrols the fleet's devices (name, identity key, hardware id) on `channel`, as a factory line
    /// would: in batches, each one transaction.
    pub(crate) fn enroll_line<'d>(
        &self,
        devices: impl Iterator<Item = (&'d str, &'d [u8; 32], &'d str)>,
        channel: &str,
    ) -> Result<()> {
        const BATCH: usize = 5_000;
        let mut batch = Vec::with_capacity(BATCH);
        let mut devices = devices.peekable();
        while let Some((name, public_key, hardware)) = devices.next() {
            let key = ota_report::PublicKey::ed25519(public_key).map_err(|e| Error::ScenarioInvalid {
                field: "devices".into(),
                why: format!("identity key of {name}: {e}"),
            })?;
            batch.push(collector::LineEnrolment {
                key,
                hardware: hardware.to_owned(),
                channel: channel.to_owned(),
            });
            if batch.len() == BATCH || devices.peek().is_none() {
                self.store
                    .enroll_line_batch(&batch, chrono::Utc::now())
                    .map_err(collector_error)?;
                batch.clear();
            }
        }
        Ok(())
    }

    /// The queue a device's agent writes its reports into (the agent's default bounds).
    fn queue(&self, state_dir: &Path) -> ReportQueue {
        ReportQueue::open(state_dir, self.report.limits())
    }

    /// Sends what the device's queue holds, as the agent's sender does; what it could not send waits
    /// for the device's next step.
    pub(crate) async fn deliver(&self, state_dir: &Path) {
        let queue = self.queue(state_dir);
        if matches!(queue.oldest(), Ok(None)) {
            return;
        }
        if let Err(e) =
            device_agent::report_send::deliver_queued_with(&self.client, &queue, &self.report).await
        {
            // A queue the agent cannot read is the device's fault to report, not the drill's to stop.
            eprintln!(
                "drill: reports of {} wait: {}",
                state_dir.display(),
                device_agent::error_chain(&e)
            );
        }
    }

    /// One tick of the collector's halt rule (after the round's reports are stored): the halts and
    /// alerts it issued.
    pub(crate) async fn tick(&self) -> Result<Vec<RolloutAction>> {
        let auto_halt = Arc::clone(&self.auto_halt);
        tokio::task::spawn_blocking(move || auto_halt.evaluate())
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(collector_error)
    }

    /// The collector's counts of release `version` per wave (0-based), over every hardware id.
    pub(crate) fn wave_counts(&self, version: &str) -> Result<WaveCounts> {
        let now = self.clock.load(Ordering::Relaxed);
        let summary =
            collector::halt::summary_with_waves(&*self.store, &self.repo, now).map_err(collector_error)?;
        let mut out = WaveCounts::new();
        for release in summary.releases.iter().filter(|r| r.to_version == version) {
            for w in &release.waves {
                let i = usize::try_from(w.wave.saturating_sub(1)).unwrap_or(usize::MAX);
                let counts = out.entry(i).or_default();
                for (c, n) in counts
                    .iter_mut()
                    // A device whose latest report is a skip (halted, pulled) has not ended the
                    // release: pending, as the drill counts it.
                    .zip([w.committed, w.rolled_back, w.failed, w.pending + w.other])
                {
                    *c += n;
                }
            }
        }
        Ok(out)
    }

    /// How many reports the collector stored.
    pub(crate) fn report_count(&self) -> Result<u64> {
        self.store.report_count().map_err(collector_error)
    }

    /// Stops the HTTP server (it finishes the requests in flight).
    pub(crate) fn stop(&self) {
        if let Some(stop) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            stop.send(()).ok();
        }
    }
}

/// Serves the collector on a runtime of its own, on its own thread, until `stopped`: the fleet's
/// tasks keep the drill's runtime busy, and a report's round trip should not wait behind them.
fn serve_on_own_thread(
    listener: std::net::TcpListener,
    store: Arc<dyn Store>,
    timeouts: collector::http::ReadTimeouts,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let io = |source| Error::Mirror {
        what: "start the collector".into(),
        source,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    std::thread::Builder::new()
        .name("drill-collector".into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = collector::http::router(collector::Ingest::new(store), timeouts);
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let shutdown = async {
                            stopped.await.ok();
                        };
                        collector::http::serve(listener, app, timeouts, shutdown).await
                    }
                    Err(source) => Err(collector::Error::Io {
                        action: "listen on",
                        what: "127.0.0.1".into(),
                        source,
                    }),
                };
                if let Err(e) = served {
                    eprintln!("drill collector: {}", collector::http::chain(&e));
                }
            });
        })
        .map_err(io)?;
    Ok(())
}

/// The bounds of every simulated device's report queue: the agent's defaults.
pub(crate) fn queue_limits() -> Result<device_agent::report_queue::QueueLimits> {
    Ok(report_config("http://127.0.0.1")?.limits())
}

/// What the drill's devices send with: the agent's `[report]` settings, pointed at the loop collector.
fn report_config(url: &str) -> Result<ReportConfig> {
    toml::from_str(&format!(
        "collector_url = \"{url}\"\nconnect_timeout_secs = 5\ntimeout_secs = 10\n"
    ))
    .map_err(|e| Error::ScenarioInvalid {
        field: "collector".into(),
        why: e.to_string(),
    })
}

fn collector_error(e: collector::Error) -> Error {
    Error::Collector(Box::new(e))
}

/// Compares the drill's counts with the collector's, per wave: one line per disagreement, and the
/// number of counts compared.
pub(crate) fn compare(version: &str, drill: &WaveCounts, collector: &WaveCounts) -> (u64, Vec<String>) {
    let mut checked = 0;
    let mut out = Vec::new();
    let waves: std::collections::BTreeSet<usize> = drill.keys().chain(collector.keys()).copied().collect();
    for wave in waves {
        let mine = drill.get(&wave).copied().unwrap_or_default();
        let theirs = collector.get(&wave).copied().unwrap_or_default();
        for ((name, a), b) in COUNT_NAMES.iter().zip(mine).zip(theirs) {
            checked += 1;
            if a != b {
                out.push(format!(
                    "release {version} wave {}: {name}: drill {a}, collector {b}",
                    wave + 1
                ));
            }
        }
    }
    (checked, out)
}
