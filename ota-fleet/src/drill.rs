//! The drill itself: publish, run the fleet round by round, inject power cuts, check the invariants.
//!
//! Time is counted in *rounds*: in one round every device that has not yet settled on the newest release
//! takes one step, as if one poll interval had passed. A step is either a poll (the agent's
//! [`Device::poll_once`]: refresh TUF metadata, choose, download into the inactive slot, request the
//! trial) or, after a reboot or a power cut, a boot (the simulated bootloader's
//! [`SimBootloader::reboot`], then the agent's [`Device::on_boot`]: health checks, commit or rollback). A
//! device has *settled* on a release once a poll after its publication came back with nothing left to do;
//! a settled device sleeps until the next release (its polls would change nothing).
//!
//! Each device owns a simulated NOR flash ([`FlashMemory`], laid out by [`AbFlashLayout`]: slot a, slot b,
//! the bootloader's env) and a state directory; nothing is shared between devices except the mirror, the
//! HTTP client, and the flash pages' storage (a [`PageStore`]: equal pages held once, copied on write,
//! so the fleet's slots cost the distinct images, not devices x 2 slots).
//! A power cut is a [`PowerCut`] budget armed before the step of the phase it targets; when it fires,
//! the device's handles die, and the next step rebuilds them over the same memory and boots.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use device_agent::config::HealthConfig;
use device_agent::device::{provision, Device, DeviceSettings, FactoryImage, SlotPair};
use device_agent::report_queue::ReportQueue;
use device_agent::state::{DeviceRecord, RecordFile, UpdateState};
use ota_release::{
    standing, Channel, HardwareId, Release, ReleaseControl, RolloutPlan, RolloutSeed, RolloutState, Standing,
    Version,
};
use ota_slot::{
    slot_sha256, AbFlashLayout, CutMode, FlashMemory, NorFlashSlot, PageStore, PowerCut, SimBootloader,
    SimFlash, SlotId, SlotWriter,
};

use crate::collector_loop::{self, LoopCollector, WaveCounts};
use crate::mirror::FaultyMirror;
use crate::report::{
    DeviceOutcome, DeviceRows, DrillReport, HaltReport, Invariants, Outcome, PowerCutCounts, ReleaseReport,
    Sample, WaveReport,
};
use crate::rng;
use crate::scenario::{ReleasePlan, Scenario};
use crate::{Error, Result};

/// Flash write unit and erase unit of the simulated chips (a common small NOR geometry).
const WRITE_SIZE: u64 = 4;
const ERASE_SIZE: u64 = 4096;

type Flash = SimFlash<4, 4096>;
type SimSlot = NorFlashSlot<Flash>;
type SimBoot = SimBootloader<SimSlot>;
type SimAgent = Device<SimSlot, SimBoot>;

/// What the caller sees while a drill runs (the binary draws a progress bar from it).
pub trait DrillObserver: Send + Sync {
    /// A release was published; `devices` will have to settle on it.
    fn release_started(&self, version: &str, devices: u32);
    /// After every round: how many devices have settled on the newest release.
    fn round_done(&self, version: &str, round: u32, settled: u32);
}

/// An observer that shows nothing.
pub struct Silent;

impl DrillObserver for Silent {
    fn release_started(&self, _version: &str, _devices: u32) {}
    fn round_done(&self, _version: &str, _round: u32, _settled: u32) {}
}

/// Where the drill keeps its files (repository, keys, images, device state directories).
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// A scratch directory; `None` makes a temporary one (in /dev/shm when it exists: device state is
    /// fsynced on every change, and the drill measures the fleet, not the disk).
    pub work_dir: Option<PathBuf>,
    /// The collector's SQLite file (the drill's output directory, for the binary); `None`: in the
    /// scratch directory.
    pub collector_db: Option<PathBuf>,
}

/// The phases a power cut can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Install,
    Commit,
    Rollback,
}

/// A signed image: which version and board it is.
#[derive(Clone, Debug)]
struct SignedImage {
    version: String,
}

/// Everything a step needs that is the same for every device.
struct Fleet {
    scenario: Scenario,
    layout: AbFlashLayout,
    /// Every device's flash pages, by content: the fleet's slots hold each distinct image once.
    pages: PageStore,
    image_len: u64,
    /// sha256 -> signed image, from what repo-tool reported it signed.
    signed: std::sync::RwLock<HashMap<[u8; 32], SignedImage>>,
    mirror: FaultyMirror,
    request_timeout: Duration,
    /// One HTTP client for the whole fleet. Each agent building its own would load the system's CA
    /// certificates every time a device opens (most of the drill's CPU at 1,000 devices) and keep an
    /// idle connection, two file descriptors, per device; shared, the fleet holds at most
    /// `concurrency` idle connections.
    http: reqwest::Client,
    /// The version of the repository's newest timestamp.json.
    timestamp_version: AtomicU64,
    /// The devices' rollout clock (Unix seconds): `epoch_unix` plus `round_seconds` per round run.
    clock: Arc<AtomicI64>,
    /// The rollout clock before the first round (the wall clock when the drill started).
    epoch_unix: i64,
    /// The bounds of each device's report queue.
    report_limits: device_agent::report_queue::QueueLimits,
}

impl Fleet {
    /// What the devices' rollout clock reads during `round`.
    fn clock_at(&self, round: u32) -> i64 {
        let per_round = i64::try_from(self.scenario.rollout.round_seconds).unwrap_or(i64::MAX);
        self.epoch_unix
            .saturating_add(i64::from(round).saturating_mul(per_round))
    }

    /// The clock a device agent reads for rollout standing: the drill's simulated one.
    fn rollout_clock(&self) -> device_agent::device::RolloutClock {
        let clock = Arc::clone(&self.clock);
        Arc::new(move || clock.load(Ordering::Relaxed))
    }
}

/// How far one device got with one release (sticky: a later state does not undo an earlier one).
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    started: bool,
    installed: bool,
    committed: bool,
    rolled_back: bool,
    /// How its latest attempt ended (what its latest report says): 0 committed, 1 rolled back,
    /// 2 failed (the columns of `collector_loop::WaveCounts`).
    ended: Option<usize>,
}

/// The release being rolled out: what `standing` needs to place a device, and its halt.
struct Current {
    release: Release,
    plan: ReleasePlan,
    control: Option<ReleaseControl>,
    halted: Option<HaltReport>,
}

/// One simulated device: its flash, state directory, and what the drill knows about it.
struct SimDevice {
    index: u32,
    name: String,
    board: usize,
    hardware: HardwareId,
    rollout_bucket: u8,
    /// Its rollout seed (from its identity, as the agent derives it).
    seed: RolloutSeed,
    /// Its identity's public key (ed25519), enrolled in the collector.
    public_key: [u8; 32],
    /// Its place in the current release's rollout is not open yet: it sleeps until it is.
    waiting: bool,
    /// Per release version, how far it got.
    progress: BTreeMap<String, Progress>,
    memory: FlashMemory,
    state_dir: PathBuf,
    /// The agent over live handles; None after a reboot or power cut (rebuilt at the next step).
    live: Option<SimAgent>,
    /// The power budget of the live handles.
    power: PowerCut,
    /// A reboot is due: the next step boots.
    needs_boot: bool,
    /// Version the booted slot holds ("unknown" when it matches no signed image).
    running: String,
    /// Settled on the newest release.
    settled: bool,
    /// Cuts planned for the current release: phase -> (operation number, mode); removed once armed.
    cut_plan: BTreeMap<Phase, (u64, CutMode)>,
    /// The phase of the armed cut, if one is armed.
    armed: Option<Phase>,
    /// The phases whose planned cut fired during the current release (a rollback's cause).
    cuts_fired: Vec<Phase>,
    /// Last error a step returned (for the report of stragglers).
    last_error: Option<String>,
    invariants: Invariants,
    cuts: PowerCutCounts,
}

/// Runs a whole drill and returns its report. An invariant breaking is reported, not an error.
pub async fn run(
    scenario: &Scenario,
    options: &DrillOptions,
    observer: &dyn DrillObserver,
) -> Result<DrillReport> {
    scenario.validate()?;
    crate::limits::check(scenario, &scratch_parent(options))?;
    let started = Instant::now();
    let scratch = scratch_dir(options)?;
    let collector_db = match &options.collector_db {
        Some(db) => db.clone(),
        None => scratch.path().join("collector.db"),
    };
    // Made only now, after the limits check: a refused drill leaves nothing behind.
    if let Some(parent) = collector_db.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let mut drill = Drill::set_up(scenario, scratch.path(), &collector_db, started).await?;
    let requests_before = drill.fleet.mirror.stats().requests;
    drill.sample();
    let mut releases = Vec::with_capacity(scenario.releases.len());
    for (rel_index, plan) in scenario.releases.iter().enumerate() {
        releases.push(drill.run_release(rel_index, plan, observer).await?);
    }
    let (final_versions, mut invariants, power_cuts) = drill.final_power_cycle().await?;
    drill.collector.stop();
    invariants.collector_counts_checked = drill.collector_checked;
    invariants.collector_disagreements = std::mem::take(&mut drill.collector_disagreements);
    let mirror = drill.fleet.mirror.stats();
    let secs = drill.fleet_time.as_secs_f64();
    let per_second = |n: u64| {
        if secs > 0.0 {
            crate::report::f64_from_u64(n) / secs
        } else {
            0.0
        }
    };
    let requests_per_second = per_second(mirror.requests.saturating_sub(requests_before));
    let reports = drill.collector.report_count()?;
    let collector = crate::report::CollectorStats {
        reports,
        reports_per_second: per_second(reports),
    };
    let Drill {
        round,
        timeline,
        devices,
        rows,
        ..
    } = drill;
    drop(devices);
    Ok(DrillReport {
        scenario: scenario.clone(),
        wall_seconds: started.elapsed().as_secs_f64(),
        rounds: round,
        releases,
        final_versions,
        mirror,
        requests_per_second,
        collector,
        power_cuts,
        invariants,
        timeline,
        device_outcomes: rows,
    })
}

/// Where the drill's scratch directory goes: `options.work_dir`, else /dev/shm when it exists, else the
/// system's temporary directory.
fn scratch_parent(options: &DrillOptions) -> PathBuf {
    match &options.work_dir {
        Some(dir) => dir.clone(),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    }
}

/// The drill's scratch directory: under `options.work_dir`, else in /dev/shm when it exists, else a
/// temporary directory.
fn scratch_dir(options: &DrillOptions) -> Result<tempfile::TempDir> {
    match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            tempfile::Builder::new().prefix("drill-").tempdir_in(dir)
        }
        None if Path::new("/dev/shm").is_dir() => tempfile::Builder::new()
            .prefix("ota-drill-")
            .tempdir_in("/dev/shm"),
        None => tempfile::Builder::new().prefix("ota-drill-").tempdir(),
    }
    .map_err(|source| Error::Io {
        path: PathBuf::from("drill scratch directory"),
        source,
    })
}

/// A drill in progress: the repository and its keys, the fleet, and what has been measured so far.
struct Drill {
    fleet: Arc<Fleet>,
    ring: ota_publish::KeyRing,
    /// The collector the devices report to; it holds the rollout-control, snapshot and timestamp keys
    /// (all a halt may use) and halts a bad release by its rule.
    collector: Arc<LoopCollector>,
    /// Counts compared between the drill and the collector's summary, and where they disagreed.
    collector_checked: u64,
    collector_disagreements: Vec<String>,
    work: PathBuf,
    repo: PathBuf,
    devices: Vec<Option<SimDevice>>,
    started: Instant,
    /// Rounds run so far.
    round: u32,
    /// Time spent stepping the fleet (publishing excluded), for the request rate.
    fleet_time: Duration,
    timeline: Vec<Sample>,
    /// Every device's outcome of every release, spooled for the report.
    rows: DeviceRows,
}

impl Drill {
    /// A fresh repository with freshly generated keys, the factory image published into it, the mirror
    /// serving it, and the fleet provisioned: factory image in slot a, bootloader env, the agent's state
    /// directory.
    async fn set_up(
        scenario: &Scenario,
        work: &Path,
        collector_db: &Path,
        started: Instant,
    ) -> Result<Drill> {
        let repo = work.join("repo");
        let keys_dir = work.join("keys");
        let (ring, control_ring) = make_keys(&keys_dir)?;
        let spec = init_spec(&keys_dir)?;
        let fingerprint = ota_publish::init(&repo, &spec, &ring).map_err(Error::Publish)?;
        let control_keys = ota_publish::RoleSpec {
            keys: vec![read_public(&keys_dir, ota_release::CONTROL_ROLE)?],
            threshold: 1,
        };
        ota_publish::rollout_init(&repo, &control_keys, &ota_publish::Expiries::default(), &ring)
            .map_err(Error::Publish)?;
        let epoch_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        let image_len = scenario.image_bytes();
        let mirror = FaultyMirror::start(&repo, scenario.faults.network.clone(), scenario.seed).await?;
        let layout = AbFlashLayout::new(image_len, ERASE_SIZE, WRITE_SIZE).map_err(Error::Slot)?;
        let request_timeout = Duration::from_millis((scenario.faults.network.stall_ms * 4).max(2000));
        let fleet = Arc::new(Fleet {
            scenario: scenario.clone(),
            layout,
            pages: PageStore::new(),
            image_len,
            signed: std::sync::RwLock::new(HashMap::new()),
            mirror,
            request_timeout,
            http: fleet_http_client(request_timeout, scenario.concurrency)?,
            timestamp_version: AtomicU64::new(0),
            clock: Arc::new(AtomicI64::new(epoch_unix)),
            epoch_unix,
            report_limits: collector_loop::queue_limits()?,
        });
        let factory = Publication {
            version: &scenario.factory_version,
            hardware: &[],
            rollout_percent: 100,
            plan: None,
        };
        let factory_images = publish(&fleet, &repo, work, &factory, &ring)?;
        let collector = Arc::new(start_collector(&fleet, &repo, collector_db, control_ring).await?);
        let devices = provision_fleet(&fleet, work, &factory_images, &fingerprint)?;
        let line = devices
            .iter()
            .flatten()
            .map(|d| (d.name.as_str(), &d.public_key, d.hardware.as_str()));
        collector.enroll_line(line, &scenario.channel)?;
        Ok(Drill {
            fleet,
            ring,
            collector,
            collector_checked: 0,
            collector_disagreements: Vec::new(),
            work: work.to_owned(),
            repo,
            devices,
            started,
            round: 0,
            fleet_time: Duration::ZERO,
            timeline: Vec::new(),
            rows: DeviceRows::spool()?,
        })
    }

    /// Records the fleet as it stands now in the timeline.
    fn sample(&mut self) {
        sample(
            &self.fleet,
            &self.devices,
            self.round,
            self.started,
            &mut self.timeline,
        );
    }

    /// Publishes one release (with its waves, counted on the devices' rollout clock from this round),
    /// runs rounds until the fleet settles on it or its window closes, and reports where each device
    /// stands, per outcome and per wave.
    async fn run_release(
        &mut self,
        rel_index: usize,
        plan: &ReleasePlan,
        observer: &dyn DrillObserver,
    ) -> Result<ReleaseReport> {
        let fleet = Arc::clone(&self.fleet);
        let scenario = &fleet.scenario;
        let published_round = self.round;
        let waves = scenario.rollout_plan(scenario.waves_of(plan), fleet.clock_at(published_round))?;
        fleet.mirror.remember_stale_timestamp()?;
        let publication = Publication {
            version: &plan.version,
            hardware: &plan.hardware,
            rollout_percent: plan.rollout_percent,
            plan: waves.as_ref(),
        };
        publish(&fleet, &self.repo, &self.work, &publication, &self.ring)?;
        let mut current = Current {
            release: release_of(scenario, plan, waves)?,
            plan: plan.clone(),
            control: None,
            halted: None,
        };
        let published_at = Instant::now();
        let bytes_before = fleet.mirror.stats().bytes;
        let rel = u64::try_from(rel_index).unwrap_or(u64::MAX);
        for d in self.devices.iter_mut().flatten() {
            d.settled = false;
            d.cut_plan = plan_cuts(scenario, d.index, rel);
            d.cuts_fired.clear();
            d.last_error = None;
        }
        observer.release_started(&plan.version, scenario.devices);
        let settled_round = self.run_rounds(&mut current, rel, observer).await?;
        let converge_seconds = published_at.elapsed().as_secs_f64();
        let tally = self.tally(&current, rel)?;
        self.check_collector(&current)?;
        let waves = self.wave_reports(&current, published_round);
        Ok(ReleaseReport {
            version: plan.version.clone(),
            published_round,
            settled_round,
            converge_seconds,
            offered: tally.offered,
            health_fail_injected: tally.health_fail_injected,
            outcomes: tally.outcomes,
            rollback_causes: tally.rollback_causes,
            bytes_downloaded: fleet.mirror.stats().bytes.saturating_sub(bytes_before),
            waves,
            halted: current.halted,
        })
    }

    /// Steps the fleet round by round, up to the release's window, advancing the devices' rollout
    /// clock and ticking the collector's halt rule after each round; the round by which every device settled, if
    /// it did.
    async fn run_rounds(
        &mut self,
        current: &mut Current,
        rel: u64,
        observer: &dyn DrillObserver,
    ) -> Result<Option<u32>> {
        let devices_total = self.fleet.scenario.devices;
        let version = current.plan.version.clone();
        for _ in 0..self.fleet.scenario.max_rounds_per_release {
            self.round += 1;
            let now = self.fleet.clock_at(self.round);
            self.fleet.clock.store(now, Ordering::Relaxed);
            self.mark_waiting(current, now);
            let t = Instant::now();
            step_round(&self.fleet, &self.collector, &mut self.devices, rel).await?;
            self.fleet_time += t.elapsed();
            self.sample();
            if current.halted.is_none() {
                self.collector_tick(current, now).await?;
            }
            let settled = self.devices.iter().flatten().filter(|d| d.settled).count();
            let settled = u32::try_from(settled).unwrap_or(u32::MAX);
            observer.round_done(&version, self.round, settled);
            if settled == devices_total {
                return Ok(Some(self.round));
            }
        }
        Ok(None)
    }

    /// Puts to sleep the devices whose place in the current rollout is not open at `now` (by the same
    /// `ota_release::standing` the agent uses): their polls would change nothing until it is.
    fn mark_waiting(&mut self, current: &Current, now: i64) {
        let scenario = &self.fleet.scenario;
        for d in self.devices.iter_mut().flatten() {
            d.waiting = !d.settled
                && offered_to(scenario, &current.plan, d)
                && matches!(
                    standing(&current.release, current.control.as_ref(), d.seed, now),
                    Ok(Standing::Waiting(_))
                );
        }
    }

    /// One tick of the collector's halt rule, after the round's reports are stored: when it halted the
    /// current release, the devices' standing and the newest timestamp follow.
    async fn collector_tick(&mut self, current: &mut Current, now: i64) -> Result<()> {
        let actions = self.collector.tick().await?;
        let Some(a) = actions
            .iter()
            .find(|a| a.to_version == current.plan.version && a.action == collector::ActionKind::Halted)
        else {
            return Ok(());
        };
        let wave = a.wave.map_or(1, |w| usize::try_from(w).unwrap_or(usize::MAX));
        let reason = format!(
            "collector rule {}: {} of {} rolled back in wave {wave}",
            a.rule, a.rolled_back, a.judged
        );
        current.control = Some(ReleaseControl {
            state: RolloutState::Halted,
            since_unix: now,
            reason: reason.clone(),
            waves: None,
        });
        current.halted = Some(HaltReport {
            round: self.round,
            wave,
            finished: u32::try_from(a.judged).unwrap_or(u32::MAX),
            rolled_back: u32::try_from(a.rolled_back).unwrap_or(u32::MAX),
            reason,
        });
        let newest = timestamp_version(&self.repo.join("metadata").join("timestamp.json"));
        self.fleet.timestamp_version.store(newest, Ordering::Relaxed);
        Ok(())
    }

    /// Compares, per wave, the drill's own counts of the current release (committed, rolled back,
    /// failed, pending: by each device's latest attempt) with the collector's summary.
    fn check_collector(&mut self, current: &Current) -> Result<()> {
        let version = &current.plan.version;
        let boards = boards_of(&self.fleet.scenario, &current.plan.hardware);
        let mut mine = WaveCounts::new();
        for d in self.devices.iter().flatten() {
            if !boards.iter().any(|b| b == d.hardware.as_str()) {
                continue;
            }
            let wave = current
                .release
                .waves
                .as_ref()
                .and_then(|p| p.place(d.seed).ok())
                .map_or(0, |p| p.wave);
            let ended = d.progress.get(version).and_then(|p| p.ended);
            if let Some(count) = mine.entry(wave).or_default().get_mut(ended.unwrap_or(3)) {
                *count += 1;
            }
        }
        let theirs = self.collector.wave_counts(version)?;
        let (checked, disagreements) = collector_loop::compare(version, &mine, &theirs);
        self.collector_checked += checked;
        self.collector_disagreements.extend(disagreements);
        Ok(())
    }

    /// Per wave of the current release's plan: the devices it was offered to there and how far they got.
    fn wave_reports(&self, current: &Current, published_round: u32) -> Vec<WaveReport> {
        let scenario = &self.fleet.scenario;
        let Some(rollout) = current.release.waves.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<WaveReport> = scenario
            .waves_of(&current.plan)
            .iter()
            .enumerate()
            .map(|(i, w)| WaveReport {
                wave: i + 1,
                percent: w.percent,
                opens_round: published_round.saturating_add(w.round),
                devices: 0,
                started: 0,
                installed: 0,
                committed: 0,
                rolled_back: 0,
            })
            .collect();
        for d in self.devices.iter().flatten() {
            if !offered_to(scenario, &current.plan, d) {
                continue;
            }
            let Some(w) = rollout.place(d.seed).ok().and_then(|p| out.get_mut(p.wave)) else {
                continue;
            };
            let p = d.progress.get(&current.plan.version).copied().unwrap_or_default();
            w.devices += 1;
            w.started += u32::from(p.started);
            w.installed += u32::from(p.installed);
            w.committed += u32::from(p.committed);
            w.rolled_back += u32::from(p.rolled_back);
        }
        out
    }

    /// Devices the release was offered to, those among them set to fail health checks, every device's
    /// outcome and every rollback's cause; one row per device into the report's spool.
    fn tally(&mut self, current: &Current, rel: u64) -> Result<Tally> {
        let scenario = &self.fleet.scenario;
        let plan = &current.plan;
        let version = ota_release::parse_version(&plan.version).map_err(|e| Error::ScenarioInvalid {
            field: "releases.version".into(),
            why: e.to_string(),
        })?;
        let mut tally = Tally::default();
        for d in self.devices.iter().flatten() {
            let is_offered = offered_to(scenario, plan, d);
            let injected = is_offered && health_fails(scenario, d.index, rel);
            tally.offered += u32::from(is_offered);
            tally.health_fail_injected += u32::from(injected);
            let (outcome, agent_reason) = classify(d, &version, is_offered)?;
            *tally.outcomes.entry(outcome).or_default() += 1;
            let cause = (outcome == Outcome::RolledBack)
                .then(|| rollback_cause(d, injected, agent_reason.as_deref()));
            if let Some(c) = &cause {
                *tally.rollback_causes.entry(c.clone()).or_default() += 1;
            }
            let wave = current
                .release
                .waves
                .as_ref()
                .filter(|_| is_offered)
                .and_then(|w| w.place(d.seed).ok())
                .map(|p| p.wave + 1);
            self.rows.push(&DeviceOutcome {
                device: d.name.clone(),
                board: scenario
                    .hardware
                    .get(d.board)
                    .map(|h| h.id.clone())
                    .unwrap_or_default(),
                release: plan.version.clone(),
                wave,
                outcome,
                rollback_cause: cause,
                agent_reason,
                last_error: d.last_error.clone(),
            })?;
        }
        Ok(tally)
    }

    /// Final power cycle of every device, no cut: it must boot a signed image. Returns the versions
    /// the fleet runs, the invariants and the power cuts injected over the whole drill.
    async fn final_power_cycle(&mut self) -> Result<(BTreeMap<String, u32>, Invariants, PowerCutCounts)> {
        on_devices(
            &self.fleet,
            &mut self.devices,
            |_| true,
            |fleet, mut d| async move {
                d.live = None;
                d.needs_boot = true;
                if let Err(e) = boot_and_check(&fleet, &mut d, PowerCut::never()).await {
                    d.last_error = Some(e);
                }
                d
            },
        )
        .await?;
        let mut invariants = Invariants::default();
        let mut power_cuts = PowerCutCounts::default();
        let mut final_versions: BTreeMap<String, u32> = BTreeMap::new();
        for d in self.devices.iter().flatten() {
            *final_versions.entry(d.running.clone()).or_default() += 1;
            invariants.boots_checked += d.invariants.boots_checked;
            invariants
                .unbootable
                .extend(d.invariants.unbootable.iter().cloned());
            invariants.unsigned.extend(d.invariants.unsigned.iter().cloned());
            power_cuts.install += d.cuts.install;
            power_cuts.commit += d.cuts.commit;
            power_cuts.rollback += d.cuts.rollback;
        }
        Ok((final_versions, invariants, power_cuts))
    }
}

/// The drill's collector: its SQLite file at `db`, halting into `repo` with `control_ring` by the
/// scenario's `[rollout.halt]` (on the drill's channel), on the devices' clock; before it publishes a
/// halt the mirror keeps the old timestamp for its stale-metadata fault, as before any publication.
async fn start_collector(
    fleet: &Arc<Fleet>,
    repo: &Path,
    db: &Path,
    control_ring: ota_publish::KeyRing,
) -> Result<LoopCollector> {
    let s = &fleet.scenario;
    let rule = s.rollout.halt.map(|h| collector::halt::HaltRule {
        hardware: None,
        channel: Some(s.channel.clone()),
        release: None,
        rollback_percent: h.rollback_percent,
        min_reports: h.min_devices,
    });
    if let Some(rule) = &rule {
        rule.validate().map_err(|e| Error::Collector(Box::new(e)))?;
    }
    let mirror_fleet = Arc::clone(fleet);
    let before_publish = Arc::new(move || {
        if let Err(e) = mirror_fleet.mirror.remember_stale_timestamp() {
            eprintln!("drill: stale timestamp not kept: {e}");
        }
    });
    LoopCollector::start(
        db,
        repo,
        rule,
        control_ring,
        Arc::clone(&fleet.clock),
        before_publish,
    )
    .await
}

/// One key per top-level role and one for rollout-control (threshold 1), generated for this drill
/// only: the ring of them all, and the ring a halt may use (rollout-control, snapshot, timestamp).
fn make_keys(dir: &Path) -> Result<(ota_publish::KeyRing, ota_publish::KeyRing)> {
    let mut control = Vec::new();
    for role in [
        "root",
        "targets",
        "snapshot",
        "timestamp",
        ota_release::CONTROL_ROLE,
    ] {
        let key = ota_publish::generate_key(dir, role).map_err(Error::Publish)?;
        if role != "root" && role != "targets" {
            control.push(key.private_path);
        }
    }
    let all = ota_publish::KeyRing::from_dir(dir).map_err(Error::Publish)?;
    let halt = ota_publish::KeyRing::from_files(&control).map_err(Error::Publish)?;
    Ok((all, halt))
}

/// The public key `name` generated into `dir`.
fn read_public(dir: &Path, name: &str) -> Result<ota_publish::Key> {
    ota_publish::read_public_key(&dir.join(format!("{name}{}", ota_publish::PUBLIC_KEY_SUFFIX)))
        .map_err(Error::Publish)
}

/// The release fields `standing` reads: version and waves (board and channel as published).
fn release_of(s: &Scenario, plan: &ReleasePlan, waves: Option<RolloutPlan>) -> Result<Release> {
    let invalid = |field: &str, why: String| Error::ScenarioInvalid {
        field: field.into(),
        why,
    };
    let hardware = boards_of(s, &plan.hardware)
        .iter()
        .map(|b| HardwareId::new(b).map_err(|e| invalid("hardware.id", e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    Ok(Release {
        version: ota_release::parse_version(&plan.version)
            .map_err(|e| invalid("releases.version", e.to_string()))?,
        hardware,
        channel: Channel::new(&s.channel).map_err(|e| invalid("channel", e.to_string()))?,
        rollout: ota_release::Rollout {
            percent: plan.rollout_percent,
        },
        waves,
        deltas: Vec::new(),
    })
}

/// The boards a release is for: the ones it names, or every board of the mix.
fn boards_of(s: &Scenario, hardware: &[String]) -> Vec<String> {
    if hardware.is_empty() {
        s.hardware.iter().map(|h| h.id.clone()).collect()
    } else {
        hardware.to_vec()
    }
}

fn init_spec(dir: &Path) -> Result<ota_publish::InitSpec> {
    let role = |name: &str| -> Result<ota_publish::RoleSpec> {
        let key =
            ota_publish::read_public_key(&dir.join(format!("{name}{}", ota_publish::PUBLIC_KEY_SUFFIX)))
                .map_err(Error::Publish)?;
        Ok(ota_publish::RoleSpec {
            keys: vec![key],
            threshold: 1,
        })
    };
    Ok(ota_publish::InitSpec {
        root: role("root")?,
        targets: role("targets")?,
        snapshot: role("snapshot")?,
        timestamp: role("timestamp")?,
        expiries: ota_publish::Expiries::default(),
    })
}

/// The image of `version` for `board`: deterministic bytes from the seed, so every board and version
/// differ and a drill replays byte for byte.
fn image_bytes(seed: u64, board: &str, version: &str, len: u64) -> Vec<u8> {
    let key = rng::hash(seed, &[rng::hash_str(board), rng::hash_str(version)]);
    let words = len.div_ceil(8);
    let mut out = Vec::with_capacity(usize::try_from(words * 8).unwrap_or(0));
    for i in 0..words {
        out.extend_from_slice(&rng::hash(key, &[i]).to_le_bytes());
    }
    out.truncate(usize::try_from(len).unwrap_or(0));
    out
}

/// What one publication adds: a version, for some boards (none: all), its share and its waves.
struct Publication<'a> {
    version: &'a str,
    hardware: &'a [String],
    rollout_percent: u8,
    /// The waves (absolute opening times on the devices' rollout clock); `None`: everyone at once.
    plan: Option<&'a RolloutPlan>,
}

/// Builds the images of a publication (one per board it is for) and publishes them with repo-tool's
/// library, with its waves; records the signed digests. Returns board id -> image bytes.
fn publish(
    fleet: &Fleet,
    repo: &Path,
    work: &Path,
    publication: &Publication<'_>,
    ring: &ota_publish::KeyRing,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let s = &fleet.scenario;
    let version = publication.version;
    let rollout_percent = publication.rollout_percent;
    let boards = boards_of(s, publication.hardware);
    let mut specs = Vec::new();
    let mut images = BTreeMap::new();
    for board in &boards {
        let dir = work.join("images").join(board).join(version);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("firmware.img");
        let bytes = image_bytes(s.seed, board, version, fleet.image_len);
        std::fs::write(&path, &bytes).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        specs.push(ota_publish::ReleaseSpec {
            image: path,
            version: version.to_owned(),
            hardware: vec![board.clone()],
            channel: s.channel.clone(),
            rollout_percent,
            name: None,
        });
        images.insert(board.clone(), bytes);
    }
    let options = ota_publish::AddOptions {
        waves: Some(match publication.plan {
            Some(plan) => ota_publish::WavesSpec::Waves {
                waves: plan.waves.clone(),
                final_spread_secs: plan.final_spread_secs,
            },
            None => ota_publish::WavesSpec::Now,
        }),
        ..ota_publish::AddOptions::default()
    };
    let report = ota_publish::add(repo, &specs, &options, ring).map_err(Error::Publish)?;
    let newest = timestamp_version(&repo.join("metadata").join("timestamp.json"));
    fleet.timestamp_version.store(newest, Ordering::Relaxed);
    let mut signed = fleet.signed.write().map_err(|_| Error::Poisoned)?;
    for (name, sha_hex, _len) in report.added {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&sha_hex, &mut digest).map_err(|_| Error::ScenarioInvalid {
            field: "published target".into(),
            why: format!("{name}: bad sha256 {sha_hex}"),
        })?;
        signed.insert(
            digest,
            SignedImage {
                version: version.to_owned(),
            },
        );
    }
    Ok(images)
}

fn flash_handles(
    fleet: &Fleet,
    memory: &FlashMemory,
    power: PowerCut,
) -> Result<(SlotPair<SimSlot>, SimSlot)> {
    let flash = Flash::with_memory(memory.clone(), power).map_err(Error::Slot)?;
    let a = fleet.layout.slot(&flash, SlotId::A).map_err(Error::Slot)?;
    let b = fleet.layout.slot(&flash, SlotId::B).map_err(Error::Slot)?;
    let env = fleet.layout.env(&flash).map_err(Error::Slot)?;
    Ok((SlotPair { a, b }, env))
}

/// The fleet's HTTP client: the timeouts an agent's own would have, and an idle pool no larger than
/// the devices stepping at once.
fn fleet_http_client(timeout: Duration, concurrency: u32) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .pool_max_idle_per_host(usize::try_from(concurrency).unwrap_or(usize::MAX))
        .build()
        .map_err(|e| Error::Mirror {
            what: "build the fleet's HTTP client".into(),
            source: std::io::Error::other(e),
        })
}

fn device_name(index: u32) -> String {
    format!("dev-{index:05}")
}

/// Picks the device's board from the weighted mix.
fn pick_board(s: &Scenario, index: u32) -> usize {
    let total: u64 = s.hardware.iter().map(|h| u64::from(h.weight)).sum();
    let mut x = rng::below(rng::hash(s.seed, &[u64::from(index), 0x626f_6172]), total.max(1));
    for (i, h) in s.hardware.iter().enumerate() {
        let w = u64::from(h.weight);
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}

/// A fresh flash chip for device `name`: `image` in slot a, the bootloader provisioned to boot it, and
/// booted once.
fn factory_flash(
    fleet: &Fleet,
    name: &str,
    image: &[u8],
) -> Result<(FlashMemory, SlotPair<SimSlot>, SimBoot)> {
    let capacity = usize::try_from(fleet.layout.capacity()).map_err(|_| Error::ScenarioInvalid {
        field: "image_kib".into(),
        why: "flash too large".into(),
    })?;
    let memory = FlashMemory::in_store(capacity, 0xFF, &fleet.pages);
    let (mut slots, env) = flash_handles(fleet, &memory, PowerCut::never())?;
    {
        let mut writer = SlotWriter::new(&mut slots.a, fleet.image_len).map_err(Error::Slot)?;
        writer.write_all(image).map_err(|source| Error::Io {
            path: PathBuf::from(format!("{name} slot a")),
            source,
        })?;
        writer.finish().map_err(Error::Slot)?;
    }
    let mut boot = SimBootloader::provision(env, SlotId::A).map_err(Error::Slot)?;
    boot.reboot().map_err(Error::Slot)?;
    Ok((memory, slots, boot))
}

/// What every device runs from the factory, as provisioning records it.
fn factory_image(fleet: &Fleet) -> Result<FactoryImage> {
    let s = &fleet.scenario;
    Ok(FactoryImage {
        version: ota_release::parse_version(&s.factory_version).map_err(|e| Error::ScenarioInvalid {
            field: "factory_version".into(),
            why: e.to_string(),
        })?,
        length: fleet.image_len,
    })
}

/// Every device of the fleet provisioned, in index order, on as many threads as the machine has
/// cores: provisioning is each device's own files and flash, so devices do not wait for each other.
fn provision_fleet(
    fleet: &Fleet,
    work: &Path,
    factory_images: &BTreeMap<String, Vec<u8>>,
    fingerprint: &ota_publish::RootFingerprint,
) -> Result<Vec<Option<SimDevice>>> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let threads = u32::try_from(threads).unwrap_or(1);
    let devices = fleet.scenario.devices;
    let per_thread = devices.div_ceil(threads).max(1);
    let provisioned: Vec<Result<Vec<SimDevice>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..devices)
            .step_by(usize::try_from(per_thread).unwrap_or(1))
            .map(|first| {
                let last = first.saturating_add(per_thread).min(devices);
                scope.spawn(move || {
                    (first..last)
                        .map(|index| provision_device(fleet, work, index, factory_images, fingerprint))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::Task("a provisioning thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(usize::try_from(devices).unwrap_or(0));
    for chunk in provisioned {
        out.extend(chunk?.into_iter().map(Some));
    }
    Ok(out)
}

/// Device `index`: its board, its flash with the factory image, and its agent's state directory
/// provisioned (root of trust, identity, record).
fn provision_device(
    fleet: &Fleet,
    work: &Path,
    index: u32,
    factory_images: &BTreeMap<String, Vec<u8>>,
    fingerprint: &ota_publish::RootFingerprint,
) -> Result<SimDevice> {
    let s = &fleet.scenario;
    let name = device_name(index);
    let board = pick_board(s, index);
    let board_id = s.hardware.get(board).map(|h| h.id.clone()).unwrap_or_default();
    let hardware = HardwareId::new(&board_id).map_err(|e| Error::ScenarioInvalid {
        field: "hardware.id".into(),
        why: e.to_string(),
    })?;
    let image = factory_images
        .get(&board_id)
        .ok_or_else(|| Error::ScenarioInvalid {
            field: "hardware".into(),
            why: format!("no factory image for {board_id}"),
        })?;
    let (memory, mut slots, mut boot) = factory_flash(fleet, &name, image)?;
    let state_dir = work.join("devices").join(&name);
    let public_key = write_identity(&state_dir, s.seed, index)?;
    let factory = factory_image(fleet)?;
    let report = provision(
        &state_dir,
        &fingerprint.path,
        &fingerprint.sha256,
        &factory,
        &mut slots,
        &mut boot,
    )
    .map_err(|e| Error::Agent {
        device: name.clone(),
        source: Box::new(e),
    })?;
    Ok(SimDevice {
        index,
        rollout_bucket: ota_release::rollout_bucket(&report.device_id),
        seed: RolloutSeed::of_device(&report.device_id),
        public_key,
        waiting: false,
        progress: BTreeMap::new(),
        name,
        board,
        hardware,
        memory,
        state_dir,
        live: None,
        power: PowerCut::never(),
        needs_boot: false,
        running: s.factory_version.clone(),
        settled: true,
        cut_plan: BTreeMap::new(),
        armed: None,
        cuts_fired: Vec::new(),
        last_error: None,
        invariants: Invariants::default(),
        cuts: PowerCutCounts::default(),
    })
}

/// Writes device `index`'s identity key, derived from the drill's seed, where provisioning keeps an
/// existing one: its device id, and so its rollout seed and wave, replay with the drill. Returns its
/// public key.
fn write_identity(state_dir: &Path, seed: u64, index: u32) -> Result<[u8; 32]> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let mut secret = [0u8; 32];
    for (k, chunk) in (0u64..).zip(secret.chunks_exact_mut(8)) {
        chunk.copy_from_slice(&rng::hash(seed, &[u64::from(index), 0x6964_656e, k]).to_le_bytes());
    }
    let signing = ed25519_dalek::SigningKey::from_bytes(&secret);
    let der = signing.to_pkcs8_der().map_err(|e| Error::ScenarioInvalid {
        field: "devices".into(),
        why: format!("identity key of device {index}: {e}"),
    })?;
    std::fs::create_dir_all(state_dir).map_err(|source| Error::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    let path = device_agent::identity::FileIdentity::path_in(state_dir);
    ota_fs::write_private(&path, der.as_bytes())?;
    Ok(signing.verifying_key().to_bytes())
}

/// Whether device `index` fails its health checks on release number `rel`.
fn health_fails(s: &Scenario, index: u32, rel: u64) -> bool {
    let share = usize::try_from(rel)
        .ok()
        .and_then(|r| s.releases.get(r))
        .map_or(0.0, |r| r.health_fail);
    rng::chance(s.seed, &[u64::from(index), rel, 0x6865_616c], share)
}

/// The power cuts planned for device `index` during release `rel`.
fn plan_cuts(s: &Scenario, index: u32, rel: u64) -> BTreeMap<Phase, (u64, CutMode)> {
    let p = &s.faults.power;
    let sectors = s.image_bytes().div_ceil(ERASE_SIZE);
    let mut plan = BTreeMap::new();
    // Operation counts per phase: an install marks the slot bad (env: erase + write), erases and writes
    // every sector, and starts the trial; a commit or rollback is a reboot plus one env change.
    for (phase, share, ops, tag) in [
        (Phase::Install, p.install, 2 * sectors + 6, 1u64),
        (Phase::Commit, p.commit, 6, 2),
        (Phase::Rollback, p.rollback, 6, 3),
    ] {
        let words = [u64::from(index), rel, 0x0063_7574, tag];
        if rng::chance(s.seed, &words, share) {
            let h = rng::hash(s.seed, &words);
            let op = rng::below(h, ops);
            let mode = if rng::chance(s.seed ^ 0x746f_726e, &words, p.torn) {
                CutMode::Torn
            } else if h & 1 == 0 {
                CutMode::Before
            } else {
                CutMode::After
            };
            plan.insert(phase, (op, mode));
        }
    }
    plan
}

fn offered_to(s: &Scenario, plan: &crate::scenario::ReleasePlan, d: &SimDevice) -> bool {
    let board = s.hardware.get(d.board).map(|h| h.id.as_str()).unwrap_or_default();
    let for_board = plan.hardware.is_empty() || plan.hardware.iter().any(|h| h == board);
    for_board && d.rollout_bucket < plan.rollout_percent
}

/// What one release did to the fleet, counted at its window's end.
#[derive(Default)]
struct Tally {
    offered: u32,
    health_fail_injected: u32,
    outcomes: BTreeMap<Outcome, u32>,
    rollback_causes: BTreeMap<String, u32>,
}

/// Why `d` rolled back: the failure the drill injected, else a power cut during the trial (a cut in the
/// commit phase: the bootloader's try count ran out, or the agent found the trial interrupted), else
/// the agent's own reason.
fn rollback_cause(d: &SimDevice, injected: bool, agent_reason: Option<&str>) -> String {
    if injected {
        "health check failed (injected)".into()
    } else if d.cuts_fired.contains(&Phase::Commit) {
        "power cut during the trial".into()
    } else {
        format!("agent: {}", agent_reason.unwrap_or("no reason recorded"))
    }
}

/// Where `d` stands with `version`, and the agent's reason when it rolled it back.
fn classify(d: &SimDevice, version: &Version, offered: bool) -> Result<(Outcome, Option<String>)> {
    if !offered {
        return Ok((Outcome::NotOffered, None));
    }
    let record = RecordFile::in_dir(&d.state_dir)
        .load()
        .map_err(|e| Error::Agent {
            device: d.name.clone(),
            source: Box::new(e),
        })?;
    Ok(match &record.state {
        _ if !d.settled => (Outcome::Retrying, None),
        UpdateState::Committed { version: v, .. } if v == version => (Outcome::Committed, None),
        UpdateState::RolledBack {
            version: v, reason, ..
        } if v == version => (Outcome::RolledBack, Some(reason.clone())),
        _ => (Outcome::OnOldVersion, None),
    })
}

/// One round: every unsettled device takes one step, at most `concurrency` at a time.
async fn step_round(
    fleet: &Arc<Fleet>,
    collector: &Arc<LoopCollector>,
    devices: &mut [Option<SimDevice>],
    rel: u64,
) -> Result<()> {
    let pick = |d: &SimDevice| !d.settled && !d.waiting;
    on_devices(fleet, devices, pick, |fleet, mut d| {
        let collector = Arc::clone(collector);
        async move {
            step(&fleet, &mut d, rel).await;
            collector.deliver(&d.state_dir).await;
            d
        }
    })
    .await
}

/// Runs `job` on every device `pick` selects, at most the scenario's concurrency at a time: each
/// device moves into its task and back into its place.
async fn on_devices<J, F>(
    fleet: &Arc<Fleet>,
    devices: &mut [Option<SimDevice>],
    pick: impl Fn(&SimDevice) -> bool,
    job: J,
) -> Result<()>
where
    J: Fn(Arc<Fleet>, SimDevice) -> F,
    F: std::future::Future<Output = SimDevice> + Send + 'static,
{
    let limit = usize::try_from(fleet.scenario.concurrency).unwrap_or(1).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = devices
        .iter_mut()
        .enumerate()
        .filter(|(_, d)| d.as_ref().is_some_and(&pick));
    let mut back: Vec<(usize, SimDevice)> = Vec::new();
    loop {
        while tasks.len() < limit {
            let Some((i, slot)) = pending.next() else { break };
            let Some(d) = slot.take() else { continue };
            let work = job(Arc::clone(fleet), d);
            tasks.spawn(async move { (i, work.await) });
        }
        match tasks.join_next().await {
            Some(Ok(done)) => back.push(done),
            Some(Err(e)) => return Err(Error::Task(e.to_string())),
            None => break,
        }
    }
    drop(pending);
    for (i, d) in back {
        if let Some(slot) = devices.get_mut(i) {
            *slot = Some(d);
        }
    }
    Ok(())
}

/// The phase the next step of `d` belongs to, from its persisted record.
fn next_phase(d: &SimDevice, rel: u64, fleet: &Fleet) -> Option<Phase> {
    if !d.needs_boot {
        return Some(Phase::Install);
    }
    let record = RecordFile::in_dir(&d.state_dir).load().ok()?;
    match record.state {
        UpdateState::Installed { .. } | UpdateState::TrialBoot { .. } => {
            if health_fails(&fleet.scenario, d.index, rel) {
                Some(Phase::Rollback)
            } else {
                Some(Phase::Commit)
            }
        }
        UpdateState::Committed { .. } => Some(Phase::Commit),
        UpdateState::RolledBack { .. } => Some(Phase::Rollback),
        _ => None,
    }
}

/// One step of one device (see [`step_device`]), then how far it got with each release, from its
/// persisted record. (Its queued reports are sent after the step, as the agent's sender would.)
async fn step(fleet: &Fleet, d: &mut SimDevice, rel: u64) {
    step_device(fleet, d, rel).await;
    note_progress(d);
}

/// Records, from the device's persisted record, that it started, installed, committed or rolled back
/// the release its record names, or that its latest report skipped a release (halted or pulled): that
/// device is pending on the release again, as the collector counts it.
fn note_progress(d: &mut SimDevice) {
    let Ok(record) = RecordFile::in_dir(&d.state_dir).load() else {
        return;
    };
    note_state(d, &record);
    if let Some(last) = &record.last_outcome {
        if matches!(
            last.outcome,
            ota_report::Outcome::SkippedHalted | ota_report::Outcome::SkippedPulled
        ) {
            d.progress.entry(last.to_version.to_string()).or_default().ended = None;
        }
    }
}

/// How far the device got with the release its record's state names.
fn note_state(d: &mut SimDevice, record: &DeviceRecord) {
    let (version, installed, committed, rolled_back) = match &record.state {
        UpdateState::Downloading { image, .. } => (&image.version, false, false, false),
        UpdateState::Installed { image, .. } | UpdateState::TrialBoot { image, .. } => {
            (&image.version, true, false, false)
        }
        UpdateState::Committed { version, .. } => (version, true, true, false),
        UpdateState::RolledBack { version, .. } => (version, true, false, true),
        UpdateState::Failed { version, .. } => {
            d.progress.entry(version.to_string()).or_default().ended = Some(2);
            return;
        }
        _ => return,
    };
    let p = d.progress.entry(version.to_string()).or_default();
    if committed || rolled_back {
        p.ended = Some(usize::from(rolled_back));
    }
    p.started = true;
    p.installed |= installed;
    p.committed |= committed;
    p.rolled_back |= rolled_back;
}

/// One step of one device: a boot if one is due, else a poll. Errors are the device's business (the
/// field's): they are recorded and the device tries again next round.
async fn step_device(fleet: &Fleet, d: &mut SimDevice, rel: u64) {
    // A planned cut is armed when its phase begins (fresh handles over a budget that dies at the planned
    // operation) and stays armed while the phase lasts, across reopened handles and rollback reboots; a
    // cut that did not fire before its phase ended is spent.
    let phase = next_phase(d, rel, fleet);
    if d.armed.is_some() && d.armed != phase {
        d.armed = None;
        d.power = PowerCut::never();
        d.live = None;
    }
    if let (None, Some(phase)) = (d.armed, phase) {
        if let Some((op, mode)) = d.cut_plan.remove(&phase) {
            d.live = None;
            let garbage_seed = rng::hash(fleet.scenario.seed, &[u64::from(d.index), rel]);
            d.power = PowerCut::after(op, mode).with_seed(garbage_seed);
            d.armed = Some(phase);
        }
    }
    let result = if d.needs_boot {
        let power = d.power.clone();
        boot_and_check(fleet, d, power).await
    } else {
        poll(fleet, d).await
    };
    if d.power.is_cut() {
        // Power failed somewhere in this step: every handle is dead; the device restarts from its
        // persisted state at the next step.
        if let Some(phase) = d.armed {
            d.cuts_fired.push(phase);
        }
        match d.armed.take() {
            Some(Phase::Install) => d.cuts.install += 1,
            Some(Phase::Commit) => d.cuts.commit += 1,
            Some(Phase::Rollback) => d.cuts.rollback += 1,
            None => {}
        }
        d.live = None;
        d.power = PowerCut::never();
        d.needs_boot = true;
        d.last_error = Some("power cut".into());
        return;
    }
    match result {
        Ok(StepEnd::Reboot) => {
            d.live = None;
            d.needs_boot = true;
        }
        Ok(StepEnd::Continue) => {}
        Ok(StepEnd::Settled) => {
            // A settled device sleeps until the next release: its agent (trusted metadata, record) is
            // reopened then, so the fleet's memory holds only the agents of devices mid-update.
            d.settled = true;
            d.live = None;
        }
        Err(e) => {
            d.last_error = Some(e);
            // A failed step may leave the agent's in-memory view behind its record: reopen next time.
            d.live = None;
        }
    }
}

enum StepEnd {
    /// The agent asked for a reboot.
    Reboot,
    /// More to do next round.
    Continue,
    /// Nothing to do until a newer release: settled.
    Settled,
}

fn settings(fleet: &Fleet, d: &SimDevice, failing: bool) -> Result<DeviceSettings> {
    let base = fleet.mirror.device_base_url(&d.name);
    let mut repository = ota_tuf::ClientConfig::new(format!("{base}/metadata"), format!("{base}/targets"));
    repository.request_timeout = fleet.request_timeout;
    repository.http = ota_tuf::Http::Client(fleet.http.clone());
    // A failing check is retried until the deadline: a short one keeps the drill fast.
    let mut health = HealthConfig {
        deadline: std::time::Duration::from_millis(200),
        settle: std::time::Duration::ZERO,
        retry_interval: std::time::Duration::from_millis(50),
        checks: Vec::new(),
    };
    if failing {
        // The injected failure is a real health check that fails: the command `false`.
        let check: device_agent::config::HealthCheckConfig = toml::from_str(
            "name = \"drill-injected\"\ncommand = [\"false\"]\ntimeout_secs = 5\n",
        )
        .map_err(|e| Error::ScenarioInvalid {
            field: "health check".into(),
            why: e.to_string(),
        })?;
        health.checks.push(check);
    }
    Ok(DeviceSettings {
        state_dir: d.state_dir.clone(),
        hardware_id: d.hardware.clone(),
        channel: Channel::new(&fleet.scenario.channel).map_err(|e| Error::ScenarioInvalid {
            field: "channel".into(),
            why: e.to_string(),
        })?,
        repository,
        health,
    })
}

/// Whether the version the device runs fails its health checks (its release's injected share).
fn running_fails(fleet: &Fleet, d: &SimDevice) -> bool {
    fleet
        .scenario
        .releases
        .iter()
        .position(|r| r.version == d.running)
        .and_then(|i| u64::try_from(i).ok())
        .is_some_and(|rel| health_fails(&fleet.scenario, d.index, rel))
}

fn open_agent(fleet: &Fleet, d: &SimDevice) -> std::result::Result<SimAgent, String> {
    let (slots, env) = flash_handles(fleet, &d.memory, d.power.clone()).map_err(|e| e.to_string())?;
    let boot = SimBootloader::open(env).map_err(|e| format!("bootloader env: {e}"))?;
    let settings = settings(fleet, d, running_fails(fleet, d)).map_err(|e| e.to_string())?;
    let mut agent = Device::open(settings, slots, boot)
        .map_err(|e| format!("open agent: {}", device_agent::error_chain(&e)))?;
    agent.set_rollout_clock(fleet.rollout_clock());
    agent.set_report_queue(ReportQueue::open(&d.state_dir, fleet.report_limits));
    Ok(agent)
}

/// A poll: the agent refreshes metadata and installs what it chooses.
async fn poll(fleet: &Fleet, d: &mut SimDevice) -> std::result::Result<StepEnd, String> {
    let mut agent = match d.live.take() {
        Some(a) => a,
        None => open_agent(fleet, d)?,
    };
    let outcome = agent.poll_once().await;
    d.live = Some(agent);
    let outcome = outcome.map_err(|e| format!("poll: {}", device_agent::error_chain(&e)))?;
    if outcome.reboot {
        return Ok(StepEnd::Reboot);
    }
    // "Up to date" only counts once the device trusts the newest timestamp: a stale mirror can make an
    // older one look current (TUF cannot tell before it expires), and the device simply polls again.
    // Nor while the rollout-control file could not be read: the agent starts no release then.
    let newest = fleet.timestamp_version.load(Ordering::Relaxed);
    if outcome.state.is_final()
        && trusted_timestamp_version(&d.state_dir) >= newest
        && control_was_read(d.live.as_ref())
    {
        return Ok(StepEnd::Settled);
    }
    Ok(StepEnd::Continue)
}

/// Whether the agent's last poll read (or found no) rollout-control file, rather than failing to.
fn control_was_read(agent: Option<&SimAgent>) -> bool {
    agent
        .and_then(|a| a.rollout_status().ok())
        .is_some_and(|s| s.control_error.is_none())
}

/// The `version` of a timestamp.json file (0 when unreadable).
fn timestamp_version(path: &Path) -> u64 {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("signed")?.get("version")?.as_u64())
        .unwrap_or(0)
}

fn trusted_timestamp_version(state_dir: &Path) -> u64 {
    timestamp_version(
        &state_dir
            .join(device_agent::device::METADATA_DIR)
            .join("timestamp.json"),
    )
}

/// A boot: the simulated bootloader picks the slot, the drill checks the booted image is signed, the
/// agent continues from its record (health checks, commit, rollback).
async fn boot_and_check(
    fleet: &Fleet,
    d: &mut SimDevice,
    power: PowerCut,
) -> std::result::Result<StepEnd, String> {
    d.live = None;
    let (slots, env) = flash_handles(fleet, &d.memory, power.clone()).map_err(|e| e.to_string())?;
    let mut boot = match SimBootloader::open(env) {
        Ok(b) => b,
        Err(e) if power.is_cut() => return Err(format!("boot: {e}")),
        Err(e) => {
            d.invariants
                .unbootable
                .push(format!("{}: bootloader env unreadable: {e}", d.name));
            return Err(format!("boot: {e}"));
        }
    };
    let booted = match boot.reboot() {
        Ok(slot) => slot,
        Err(e) if power.is_cut() => return Err(format!("boot: {e}")),
        Err(e) => {
            d.invariants
                .unbootable
                .push(format!("{}: bootloader could not boot: {e}", d.name));
            return Err(format!("boot: {e}"));
        }
    };
    d.needs_boot = false;
    // The invariant: the booted slot holds exactly an image the repository signed.
    let digest = {
        let (mut check_slots, _) =
            flash_handles(fleet, &d.memory, PowerCut::never()).map_err(|e| e.to_string())?;
        slot_sha256(check_slots.get_mut(booted), fleet.image_len).map_err(|e| e.to_string())?
    };
    d.invariants.boots_checked += 1;
    let version = fleet
        .signed
        .read()
        .ok()
        .and_then(|m| m.get(&digest).map(|i| i.version.clone()));
    match version {
        Some(v) => d.running = v,
        None => {
            d.running = "unknown".into();
            d.invariants.unsigned.push(format!(
                "{}: booted slot {booted} holding {}, which no signed target has",
                d.name,
                hex::encode(digest)
            ));
        }
    }
    let settings = settings(fleet, d, running_fails(fleet, d)).map_err(|e| e.to_string())?;
    let mut agent = Device::open(settings, slots, boot)
        .map_err(|e| format!("open agent: {}", device_agent::error_chain(&e)))?;
    agent.set_rollout_clock(fleet.rollout_clock());
    agent.set_report_queue(ReportQueue::open(&d.state_dir, fleet.report_limits));
    let outcome = agent.on_boot().await;
    d.live = Some(agent);
    let outcome = outcome.map_err(|e| format!("on boot: {}", device_agent::error_chain(&e)))?;
    if outcome.reboot {
        return Ok(StepEnd::Reboot);
    }
    Ok(StepEnd::Continue)
}

fn sample(fleet: &Fleet, devices: &[Option<SimDevice>], round: u32, started: Instant, out: &mut Vec<Sample>) {
    let _ = fleet;
    let mut running: BTreeMap<String, u32> = BTreeMap::new();
    let mut updating = 0;
    for d in devices.iter().flatten() {
        *running.entry(d.running.clone()).or_default() += 1;
        let in_progress = d.needs_boot || d.live.as_ref().is_some_and(|a| !a.record().state.is_final());
        if in_progress {
            updating += 1;
        }
    }
    out.push(Sample {
        round,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        running,
        updating,
    });
}
