//! The update core: a device's slots, bootloader, trusted metadata and persisted record, and the two
//! entry points that drive the state machine: [`Device::on_boot`] after every start, and
//! [`Device::poll_once`] to look for and install a release.
//!
//! [`Device`] is generic over [`Slot`] and [`BootControl`] so the daemon (file slots, U-Boot or GRUB), the
//! end-to-end tests (file slots, simulated bootloader), the power-cut sweep (simulated NOR flash) and the
//! fleet drill all run this same code. It never reboots by itself: an [`Outcome`] with `reboot: true`
//! tells the caller to reboot now (the daemon runs the configured command; simulations call
//! `SimBootloader::reboot` and start a fresh `Device`). Provisioning, which makes the state directory
//! this opens, is [`crate::provision`] (re-exported here).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use ota_release::{
    control_target_path, Channel, HardwareId, OtaTarget, Release, RolloutControl, RolloutSeed, Sha256Digest,
    Version, CONTROL_DIR, MAX_CONTROL_BYTES,
};
use ota_slot::{slot_sha256, BootControl, Slot, SlotWriter, TrialBoot};
use ota_tuf::{BundleSource, Client, ClientConfig, TargetInfo};
use serde::Serialize;

use crate::clock::{now_unix, FlooredClock, TimeFloor};
use crate::config::{AgentConfig, HealthConfig};
use crate::delta::{
    apply_spooled, check_base, remove_spool, ApplyFailure, DeltaFallback, DeltaPlan, SpoolSink,
};
use crate::error::{Error, Result};
use crate::health::{run_checks, HealthReport};
use crate::identity::{FileIdentity, IdentityKey};
use crate::progress::{InstallMeter, InstallProgress, MeteredSink, Phase, ProgressDisplay};
use crate::report::{IdentitySigner, OutcomeFacts};
use crate::report_queue::{QueueStatus, ReportQueue, SendError};
use crate::rollout::{DrillResult, Purpose, ReleaseStanding, RolloutView, ViewFile};
use crate::select::{select, Decision, DeviceFacts, OfferedTarget, SkipKind};
use crate::state::{
    transition, Action, DeviceRecord, DownloadRetry, Event, ImageRef, InstallReport, InstallSource,
    InstallVia, RecordFile, RetryPolicy, SkipReported, SlotImage, UpdateState,
};
use crate::SlotId;

/// Name of the TUF metadata directory inside the state directory.
pub const METADATA_DIR: &str = "metadata";
/// Name of the file holding the pinned root's sha256 (hex) inside the state directory.
pub const PINNED_ROOT_FILE: &str = "root.sha256";
/// The two slots.
#[derive(Debug)]
pub struct SlotPair<S> {
    /// Slot A.
    pub a: S,
    /// Slot B.
    pub b: S,
}

impl<S> SlotPair<S> {
    /// The slot with this id.
    pub fn get_mut(&mut self, id: SlotId) -> &mut S {
        match id {
            SlotId::A => &mut self.a,
            SlotId::B => &mut self.b,
        }
    }

    /// Both slots at once: `(first, the other)` (a delta reads one while writing the other).
    pub fn split_mut(&mut self, first: SlotId) -> (&mut S, &mut S) {
        match first {
            SlotId::A => (&mut self.a, &mut self.b),
            SlotId::B => (&mut self.b, &mut self.a),
        }
    }
}

/// What the core needs from the configuration (tests build it directly).
#[derive(Clone, Debug)]
pub struct DeviceSettings {
    /// The state directory (identity, metadata, record).
    pub state_dir: PathBuf,
    /// This device's hardware id.
    pub hardware_id: HardwareId,
    /// Its channel.
    pub channel: Channel,
    /// The repository.
    pub repository: ClientConfig,
    /// Health checks after a trial boot.
    pub health: HealthConfig,
}

impl DeviceSettings {
    /// The settings of a configuration file.
    pub fn from_config(config: &AgentConfig) -> DeviceSettings {
        let mut repository = ClientConfig::new(
            config.repository.metadata_url.clone(),
            config.repository.targets_url.clone(),
        );
        repository.request_timeout = config.request_timeout();
        repository.min_rate = config.min_rate();
        DeviceSettings {
            state_dir: config.state_dir.clone(),
            hardware_id: config.hardware_id.clone(),
            channel: config.channel.clone(),
            repository,
            health: config.health.clone(),
        }
    }
}

/// What a step did, and whether the caller must reboot now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The state after the step (already persisted).
    pub state: UpdateState,
    /// Reboot now (the state is persisted; the next start continues from it).
    pub reboot: bool,
    /// One line for the log or the terminal.
    pub note: String,
}

pub use crate::provision::{create_state_dir, provision, FactoryImage, ProvisionReport};

/// What provisioning leaves in the state directory besides the identity key.
const PROVISIONED_FILES: &[&str] = &[PINNED_ROOT_FILE, "metadata/root.json", "state.json"];

/// Refuses a state directory missing one of `files`, naming the first missing.
fn require(dir: &Path, files: &[&'static str]) -> Result<()> {
    match files.iter().find(|name| !dir.join(name).exists()) {
        Some(missing) => Err(Error::NotProvisioned {
            state_dir: dir.to_owned(),
            missing,
        }),
        None => Ok(()),
    }
}

/// Everything `status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The device id.
    pub device_id: String,
    /// Hardware id.
    pub hardware_id: String,
    /// Channel.
    pub channel: String,
    /// The slot running now.
    pub booted: SlotId,
    /// The slot that boots by default.
    pub primary: SlotId,
    /// A pending or running trial boot.
    pub trial: Option<TrialBoot>,
    /// The version running now, if known.
    pub running_version: Option<Version>,
    /// The anti-downgrade floor.
    pub floor: Version,
    /// The update state's name.
    pub state_name: &'static str,
    /// The update state, in words.
    pub state_text: String,
    /// The update state with its data.
    pub state: UpdateState,
    /// What slot A holds.
    pub slot_a: Option<SlotImage>,
    /// What slot B holds.
    pub slot_b: Option<SlotImage>,
    /// Versions that failed here.
    pub failed: Vec<Version>,
    /// How the last install got its bytes (delta or full image, bytes downloaded).
    pub last_install: Option<InstallReport>,
    /// Attempts at a release that ended before its image was verified, and when the next may start.
    pub retry: Option<DownloadRetry>,
    /// The signed reports waiting for the collector; `None` when reporting is off.
    pub reports: Option<QueueStatus>,
    /// Where this device stands in each offered release's rollout.
    pub rollout: RolloutStatus,
    /// The field drills this device took part in, and how each ended.
    pub drills: Vec<DrillResult>,
    /// The running install's progress (or how the last one ended), from the progress file.
    pub install_progress: Option<InstallProgress>,
}

/// The device's place in the rollouts, from the last verified rollout view (`status`, `check`).
#[derive(Clone, Debug, Serialize)]
pub struct RolloutStatus {
    /// The device's rollout seed (hex), derived from its identity: the same after every reboot.
    pub seed: String,
    /// When the rollout view was last verified (Unix seconds); `None` before the first poll.
    pub checked_unix: Option<i64>,
    /// Why the newest rollout-control file was refused at the last poll, if it was.
    pub control_error: Option<String>,
    /// Whether the repository has a rollout-control file for this hardware id and channel.
    pub controlled: bool,
    /// Each offered release, newest first.
    pub releases: Vec<ReleaseStanding>,
}

/// What `install` would do with a chosen release, checked without writing ([`Device::preflight`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preflight {
    /// The inactive slot it would be written into.
    pub slot: SlotId,
    /// That slot's capacity (the image fits).
    pub capacity: u64,
    /// The offered delta: `Ok(name)` when its base is the running image, `Err(why)` when the full image
    /// would be downloaded instead; `None` when no delta is offered.
    pub delta: Option<std::result::Result<String, String>>,
}

/// A provisioned device: its slots, bootloader, identity, trusted metadata and update record.
pub struct Device<S: Slot, B: BootControl> {
    settings: DeviceSettings,
    slots: SlotPair<S>,
    boot: B,
    identity: Box<dyn IdentityKey>,
    file: RecordFile,
    record: DeviceRecord,
    client: Client,
    retry_policy: RetryPolicy,
    reports: Option<ReportQueue>,
    rollout_clock: RolloutClock,
    /// The time floor (Unix seconds) read at open; the TUF clock never reads earlier ([`crate::clock`]).
    time_floor: i64,
    /// Where install progress is shown and persisted; `None`: not at all ([`Device::set_progress`]).
    progress: Option<ProgressDisplay>,
}

/// The clock rollout standing is read against (waves opening, drills ending), in Unix seconds: the
/// system clock unless [`Device::set_rollout_clock`] says otherwise (a fleet drill's simulated time).
pub type RolloutClock = std::sync::Arc<dyn Fn() -> i64 + Send + Sync>;

impl<S: Slot, B: BootControl> Device<S, B> {
    /// Opens a provisioned device whose identity key is the file in the state directory; refuses when
    /// the key, the pinned root or the update record is missing, the state directory or the key (its
    /// target, symlinks resolved) is open to group or others, or the pinned root does not match the
    /// trusted root ([`crate::trust`]).
    pub fn open(settings: DeviceSettings, slots: SlotPair<S>, boot: B) -> Result<Device<S, B>> {
        let dir = &settings.state_dir;
        require(dir, &[crate::identity::IDENTITY_FILE])?;
        require(dir, PROVISIONED_FILES)?;
        crate::trust::check_state_dir(dir)?;
        crate::trust::check_key_file(&FileIdentity::path_in(dir))?;
        let identity = FileIdentity::load(&FileIdentity::path_in(dir))?;
        Device::open_with_identity(settings, slots, boot, Box::new(identity))
    }

    /// Opens a provisioned device whose identity key is held elsewhere (a token): the state directory
    /// holds only the pinned root, the trusted metadata and the update record.
    pub fn open_with_identity(
        settings: DeviceSettings,
        slots: SlotPair<S>,
        boot: B,
        identity: Box<dyn IdentityKey>,
    ) -> Result<Device<S, B>> {
        let dir = &settings.state_dir;
        require(dir, PROVISIONED_FILES)?;
        crate::trust::check_state_dir(dir)?;
        crate::trust::check_pinned_root(
            &dir.join(PINNED_ROOT_FILE),
            &dir.join(METADATA_DIR).join("root.json"),
        )?;
        let file = RecordFile::in_dir(dir);
        let record = file.load()?;
        let time_floor = TimeFloor::in_dir(dir).load();
        let mut settings = settings;
        settings.repository.clock = std::sync::Arc::new(FlooredClock::new(
            std::sync::Arc::clone(&settings.repository.clock),
            time_floor,
        ));
        let client = Client::load(
            &settings.state_dir.join(METADATA_DIR),
            settings.repository.clone(),
        )?;
        Ok(Device {
            time_floor,
            settings,
            slots,
            boot,
            identity,
            file,
            record,
            client,
            retry_policy: RetryPolicy::default(),
            reports: None,
            rollout_clock: std::sync::Arc::new(now_unix_i64),
            progress: None,
        })
    }

    /// Sets how attempts at a release that keep failing before verification wait (the default:
    /// [`RetryPolicy::default`]).
    pub fn set_retry_policy(&mut self, policy: RetryPolicy) {
        self.retry_policy = policy;
    }

    /// Queues the signed report of every update outcome into `queue` (default: no reports).
    pub fn set_report_queue(&mut self, queue: ReportQueue) {
        self.reports = Some(queue);
    }

    /// Shows install progress on `display` and keeps it in the state directory's progress file
    /// ([`crate::progress`]), which `status` reads. Off by default.
    pub fn set_progress(&mut self, display: ProgressDisplay) {
        self.progress = Some(display);
    }

    /// A meter for installing `version`: off unless [`Device::set_progress`] turned progress on.
    fn meter(&self, version: &Version) -> InstallMeter {
        match self.progress {
            Some(display) => InstallMeter::new(&self.settings.state_dir, display, &version.to_string()),
            None => InstallMeter::off(),
        }
    }

    /// Sets the clock waves and drills are judged by (the default: the system clock). A fleet drill
    /// feeds its simulated time here, so waves open round after round; backoff stays on the system clock.
    pub fn set_rollout_clock(&mut self, clock: RolloutClock) {
        self.rollout_clock = clock;
    }

    /// The persisted record.
    pub fn record(&self) -> &DeviceRecord {
        &self.record
    }

    /// The device's identity.
    pub fn identity(&self) -> &dyn IdentityKey {
        self.identity.as_ref()
    }

    /// The bootloader (simulations use it to play the reboot).
    pub fn boot_mut(&mut self) -> &mut B {
        &mut self.boot
    }

    /// The slots and the bootloader back (simulations rebuild the device after a reboot).
    pub fn into_parts(self) -> (SlotPair<S>, B) {
        (self.slots, self.boot)
    }

    /// Applies `event` to the record and saves it (temp file, fsync, rename, fsync dir) before returning
    /// the side effect the new state asks for: persist, then act.
    fn apply(&mut self, event: Event) -> Result<Action> {
        self.apply_with(event, None)
    }

    /// [`Device::apply`], saving how the install went in the same write.
    fn apply_with(&mut self, event: Event, last_install: Option<InstallReport>) -> Result<Action> {
        let mut record = self.record.clone();
        let before = record.state.clone();
        let counted = attempt_ended(&before, &event);
        let verified = matches!(event, Event::Verified { .. });
        let chosen = matches!(event, Event::Chosen { .. });
        let action = record.apply(transition(before.clone(), event)?);
        let now = now_unix();
        if chosen {
            record.attempt_started_unix = Some(now);
        }
        let ended = OutcomeFacts::of_transition(&before, &record.state, &record, now);
        let new_outcome = ended.is_some();
        if let Some(facts) = ended {
            record.last_outcome = Some(facts);
        }
        if let Some((version, reason)) = counted {
            record.count_attempt(&version, reason, now, &self.retry_policy);
        }
        if verified {
            record.retry = None;
        }
        if let Some(report) = last_install {
            record.last_install = Some(report);
        }
        if record.state != self.record.state {
            // A release undone or refused is worth a look in the journal; the other steps are routine.
            if matches!(
                record.state,
                UpdateState::RolledBack { .. } | UpdateState::Failed { .. }
            ) {
                tracing::warn!(state = %record.state, "update state");
            } else {
                tracing::info!(state = %record.state, "update state");
            }
        }
        self.save(record)?;
        if new_outcome {
            self.queue_report();
        }
        Ok(action)
    }

    /// Records an outcome that is not the end of an install (a release skipped because its rollout is
    /// halted or it was pulled, a rollback drill's result) and queues its report: numbered after the
    /// last outcome and saved in the record first, so a cut before the queue has it queues it at the
    /// next start, once.
    pub fn record_outcome(
        &mut self,
        outcome: ota_report::Outcome,
        image: &ImageRef,
        reason: &str,
    ) -> Result<()> {
        let facts = self.outcome_facts(outcome, image, reason)?;
        self.update_record(|rec| rec.last_outcome = Some(facts))?;
        self.queue_report();
        Ok(())
    }

    /// The next numbered outcome for `image`, ended now, without an install.
    fn outcome_facts(
        &mut self,
        outcome: ota_report::Outcome,
        image: &ImageRef,
        reason: &str,
    ) -> Result<OutcomeFacts> {
        let now = now_unix();
        let running = self.boot.booted()?;
        let from_version = self
            .record
            .slot(running)
            .map_or_else(|| self.record.floor.clone(), |s| s.version.clone());
        let number = self
            .record
            .last_outcome
            .as_ref()
            .map_or(0, |o| o.number)
            .saturating_add(1);
        Ok(OutcomeFacts {
            number,
            outcome,
            from_version,
            to_version: image.version.clone(),
            target: image.target.clone(),
            reason: reason.to_owned(),
            started_unix: now,
            finished_unix: now,
            bytes_downloaded: 0,
            install_method: None,
        })
    }

    /// Reports the newest release newer than the running one (and than the one being installed) that
    /// rollout control holds back, halted or pulled: what the device would otherwise have installed.
    /// Once per release and cause: the record keeps what was reported, in the same write as the
    /// outcome, so neither the next poll nor a restart reports it again.
    fn report_skip(&mut self, decision: &Decision) -> Result<()> {
        let held = decision
            .skipped()
            .iter()
            .filter_map(|s| match &s.kind {
                SkipKind::Halted(image) => Some((ota_report::Outcome::SkippedHalted, image, &s.why)),
                SkipKind::Pulled(image) => Some((ota_report::Outcome::SkippedPulled, image, &s.why)),
                SkipKind::Other => None,
            })
            .max_by(|a, b| a.1.version.cmp(&b.1.version));
        let Some((outcome, image, why)) = held else {
            return Ok(());
        };
        if let Decision::Install { image: chosen, .. } = decision {
            if chosen.version >= image.version {
                return Ok(());
            }
        }
        let reported = SkipReported {
            version: image.version.clone(),
            outcome,
        };
        if self.record.skip_reported.as_ref() == Some(&reported) {
            return Ok(());
        }
        tracing::info!(version = %image.version, outcome = %outcome.as_str(), "{why}");
        let facts = self.outcome_facts(outcome, image, why)?;
        self.update_record(|rec| {
            rec.last_outcome = Some(facts);
            rec.skip_reported = Some(reported);
        })?;
        self.queue_report();
        Ok(())
    }

    /// Queues the signed report of the record's last outcome unless the queue has it already (after a
    /// cut between saving the outcome and queueing it, the next start queues it). Never fails the
    /// update: a queue that cannot be written is logged, and the outcome is queued at the next start.
    fn queue_report(&self) {
        let (Some(queue), Some(facts)) = (&self.reports, &self.record.last_outcome) else {
            return;
        };
        let signer = IdentitySigner(self.identity.as_ref());
        let queued = facts
            .to_report(
                signer.device_id(),
                &self.settings.hardware_id,
                &self.settings.channel,
            )
            .and_then(|report| queue.enqueue(facts.number, report, &signer));
        match queued {
            Ok(Some(sequence)) => {
                tracing::info!(sequence, outcome = %facts.outcome.as_str(), "report queued")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "report not queued; tried again at the next start")
            }
        }
    }

    /// Changes the record outside the state machine (what the install is doing) and persists it.
    fn update_record(&mut self, change: impl FnOnce(&mut DeviceRecord)) -> Result<()> {
        let mut record = self.record.clone();
        change(&mut record);
        self.save(record)
    }

    fn save(&mut self, record: DeviceRecord) -> Result<()> {
        if record != self.record {
            self.file.save(&record)?;
            self.record = record;
        }
        Ok(())
    }

    fn outcome(&self, reboot: bool, note: impl Into<String>) -> Outcome {
        Outcome {
            state: self.record.state.clone(),
            reboot,
            note: note.into(),
        }
    }

    /// Continues whatever the last run left, after every start of the agent (the one defined way
    /// forward of each state; see [`UpdateState`]). Runs the health checks when booted into a trial.
    pub async fn on_boot(&mut self) -> Result<Outcome> {
        if self.progress.is_some() {
            crate::progress::mark_interrupted(&self.settings.state_dir);
        }
        self.queue_report();
        let booted = self.boot.booted()?;
        let trial = self.boot.trial()?;
        let action = self.apply(Event::Started { booted, trial })?;
        self.drive(action, None).await
    }

    /// Performs `action`, then the action of each state it leads to (each saved before its own action),
    /// until the caller must reboot or nothing is left to do. `why` explains a commit (health summary or
    /// the operator) in the outcome's note.
    async fn drive(&mut self, mut action: Action, mut why: Option<String>) -> Result<Outcome> {
        loop {
            let event = match action {
                Action::Wait(note) => return Ok(self.outcome(false, note)),
                Action::Install { slot } => {
                    return Ok(self.outcome(false, format!("install into slot {slot} pending")))
                }
                Action::StartTrial { slot } => {
                    self.boot.start_trial(slot, 1)?;
                    Event::TrialStarted
                }
                Action::Reboot { slot } => {
                    let note = format!("trial boot of slot {slot} requested: rebooting");
                    return Ok(self.outcome(true, note));
                }
                Action::CheckHealth { slot } => {
                    if let Some(reason) = self.trial_slot_mismatch(slot)? {
                        action = self.apply(Event::SlotMismatch { reason })?;
                        continue;
                    }
                    let report: HealthReport = run_checks(&self.settings.health).await;
                    why = Some(report.summary());
                    if report.healthy() {
                        Event::Healthy
                    } else {
                        Event::Unhealthy {
                            reason: report.summary(),
                        }
                    }
                }
                Action::FinishCommit { slot } => return self.finish_commit(slot, why.as_deref()),
                Action::FinishRollback { slot } => return self.finish_rollback(slot),
            };
            action = self.apply(event)?;
        }
    }

    /// Hashes the trial slot again before a commit raises the version floor: `Some(why)` when it does not
    /// hold the image the record names (a hand-edited or stale record must never commit).
    fn trial_slot_mismatch(&mut self, slot: SlotId) -> Result<Option<String>> {
        let UpdateState::TrialBoot { image, .. } = &self.record.state else {
            return Ok(None);
        };
        let image = image.clone();
        let capacity = self.slots.get_mut(slot).capacity();
        if image.length > capacity {
            return Ok(Some(format!(
                "slot {slot} cannot hold {} ({} bytes, the slot has {capacity}): not committing",
                image.target, image.length
            )));
        }
        let got = slot_sha256(&mut *self.slots.get_mut(slot), image.length)?;
        if got == image.sha256.0 {
            return Ok(None);
        }
        let why = format!(
            "slot {slot} does not hold {} {} (sha256 {} expected, {} found): not committing",
            image.target,
            image.version,
            image.sha256.to_hex(),
            hex::encode(got)
        );
        tracing::warn!("{why}");
        Ok(Some(why))
    }

    /// Makes the bootloader agree with a persisted commit.
    fn finish_commit(&mut self, slot: SlotId, why: Option<&str>) -> Result<Outcome> {
        let booted = self.boot.booted()?;
        if self.boot.primary()? != slot || self.boot.trial()?.is_some() {
            self.boot.mark_good(slot)?;
        }
        if booted != slot {
            return Ok(self.outcome(
                true,
                format!("committed slot {slot} but running {booted}: rebooting into it"),
            ));
        }
        Ok(match why {
            Some(why) => self.outcome(false, format!("committed slot {slot} ({why})")),
            None => self.outcome(false, format!("running committed slot {slot}")),
        })
    }

    /// Makes the bootloader agree with a persisted rollback, and gets off the rejected slot.
    fn finish_rollback(&mut self, slot: SlotId) -> Result<Outcome> {
        let booted = self.boot.booted()?;
        let trial_of_slot = self.boot.trial()?.is_some_and(|t| t.slot == slot);
        if booted == slot || trial_of_slot {
            self.boot.mark_bad(slot)?;
        }
        if booted == slot {
            return Ok(self.outcome(true, format!("slot {slot} rejected: rebooting into the old slot")));
        }
        Ok(self.outcome(
            false,
            format!("running the old slot {booted}; slot {slot} is marked bad"),
        ))
    }

    /// Operator's commit of a running trial without waiting for the health checks (`mark-good`).
    pub async fn mark_good(&mut self) -> Result<Outcome> {
        let booted = self.boot.booted()?;
        match self.record.state.clone() {
            UpdateState::TrialBoot { slot, .. } if slot == booted => {
                if let Some(reason) = self.trial_slot_mismatch(slot)? {
                    let action = self.apply(Event::SlotMismatch { reason })?;
                    return self.drive(action, None).await;
                }
                let action = self.apply(Event::Healthy)?;
                self.drive(action, Some("marked good by the operator".to_owned()))
                    .await
            }
            UpdateState::Committed { slot, .. } if slot == booted => self.finish_commit(slot, None),
            other => Err(Error::Refused {
                action: "mark good",
                why: format!(
                    "state is {other}, running slot {booted}; only a running trial can be committed"
                ),
            }),
        }
    }

    /// Operator's rollback of a trial (`rollback`): the trial slot is marked bad and the old slot booted.
    pub async fn rollback(&mut self) -> Result<Outcome> {
        match self.record.state.clone() {
            UpdateState::TrialBoot { .. } => {
                let action = self.apply(Event::Abandoned)?;
                self.drive(action, None).await
            }
            other => Err(Error::Refused {
                action: "roll back",
                why: format!(
                    "state is {other}; only a trial boot can be rolled back (a committed release is replaced \
                     by publishing a newer one)"
                ),
            }),
        }
    }

    /// The device's status.
    pub fn status(&mut self) -> Result<Status> {
        let booted = self.boot.booted()?;
        let r = &self.record;
        Ok(Status {
            device_id: self.identity.device_id(),
            hardware_id: self.settings.hardware_id.to_string(),
            channel: self.settings.channel.to_string(),
            booted,
            primary: self.boot.primary()?,
            trial: self.boot.trial()?,
            running_version: r.slot(booted).map(|i| i.version.clone()),
            floor: r.floor.clone(),
            state_name: r.state.name(),
            state_text: r.state.to_string(),
            state: r.state.clone(),
            slot_a: r.slot_a.clone(),
            slot_b: r.slot_b.clone(),
            failed: r.failed.clone(),
            last_install: r.last_install.clone(),
            retry: r.retry.clone(),
            reports: self.reports.as_ref().map(queue_status),
            drills: r.drills.clone(),
            rollout: self.rollout_status()?,
            install_progress: crate::progress::load(&self.settings.state_dir),
        })
    }

    /// Where this device stands in each offered release's rollout now, from the last verified view.
    pub fn rollout_status(&self) -> Result<RolloutStatus> {
        let seed = self.seed();
        let view = ViewFile::in_dir(&self.settings.state_dir).load()?;
        let view_ref = view.as_ref();
        Ok(RolloutStatus {
            seed: format!("{:016x}", seed.0),
            checked_unix: view_ref.map(|v| v.checked_unix),
            control_error: view_ref.and_then(|v| v.control_error.clone()),
            controlled: view_ref.is_some_and(|v| v.control.is_some()),
            releases: view_ref.map_or_else(Vec::new, |v| v.standings(seed, (self.rollout_clock)())),
        })
    }

    /// This device's rollout seed.
    fn seed(&self) -> RolloutSeed {
        RolloutSeed::of_device(&self.identity.device_id())
    }

    /// Fetches and verifies the rollout-control file for this hardware id and channel through TUF
    /// (bounded by [`MAX_CONTROL_BYTES`]): `Ok(None)` when the repository has none, `Err(why)` when it
    /// cannot be verified or read.
    async fn fetch_control(&mut self) -> std::result::Result<Option<RolloutControl>, String> {
        let (hardware, channel) = (&self.settings.hardware_id, &self.settings.channel);
        let path = control_target_path(hardware, channel);
        let info = match self.client.target(&path).await {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(None),
            Err(e) => return Err(anyhow_like(&e)),
        };
        if info.length > MAX_CONTROL_BYTES {
            return Err(format!(
                "{path} is {} bytes, more than the {MAX_CONTROL_BYTES} allowed",
                info.length
            ));
        }
        let mut bytes = Vec::new();
        self.client
            .download_target(&info, &mut bytes)
            .await
            .map_err(|e| anyhow_like(&e))?;
        RolloutControl::parse(&bytes, hardware, channel)
            .map(Some)
            .map_err(|e| anyhow_like(&e))
    }

    /// Refreshes the rollout view: the newest control file when it verifies, else the last verified one
    /// (naming why), and the releases offered to this hardware id and channel; saved for `status`.
    async fn refresh_view(&mut self, targets: &[TargetInfo]) -> Result<RolloutView> {
        let file = ViewFile::in_dir(&self.settings.state_dir);
        let (control, control_error) = match self.fetch_control().await {
            Ok(control) => (control, None),
            Err(why) => {
                tracing::warn!("rollout-control file refused; the last verified one stays in force: {why}");
                let last = file.load().ok().flatten().and_then(|v| v.control);
                (last, Some(why))
            }
        };
        let view = RolloutView {
            checked_unix: now_unix_i64(),
            control,
            control_error,
            releases: offered_releases(targets, &self.settings.hardware_id, &self.settings.channel),
        };
        file.save(&view)?;
        Ok(view)
    }

    /// Refreshes the trusted metadata and decides, changing nothing (`check`).
    pub async fn check(&mut self) -> Result<Decision> {
        let (_, decision) = self.refresh_and_select().await?;
        Ok(decision)
    }

    /// What `install` would check before writing, without writing (`check` after [`Device::check`]):
    /// the image must fit the inactive slot ([`Error::SlotTooSmall`] otherwise, as `install` would
    /// refuse it), and an offered delta's base must be the running image (else the full image is used).
    pub fn preflight(&mut self, decision: &Decision) -> Result<Option<Preflight>> {
        let Decision::Install {
            image,
            release,
            delta,
            ..
        } = decision
        else {
            return Ok(None);
        };
        let from = self.boot.booted()?;
        let slot = from.other();
        let capacity = self.slots.get_mut(slot).capacity();
        if image.length > capacity {
            return Err(Error::SlotTooSmall {
                target: image.target.clone(),
                length: image.length,
                slot,
                capacity,
            });
        }
        let offer = delta
            .as_ref()
            .and_then(|choice| release.deltas.iter().find(|d| d.target == choice.target));
        let delta = match offer {
            Some(offer) => Some(
                crate::delta::check_base(self.slots.get_mut(from), offer)?
                    .map(|()| offer.target.clone())
                    .map_err(|reason| reason.to_string()),
            ),
            None => None,
        };
        Ok(Some(Preflight {
            slot,
            capacity,
            delta,
        }))
    }

    async fn refresh_and_select(&mut self) -> Result<(Vec<TargetInfo>, Decision)> {
        let reference = self.settings.repository.clock.now();
        self.client.refresh().await?;
        TimeFloor::in_dir(&self.settings.state_dir).advance(reference.timestamp())?;
        let mut targets = self.client.all_targets().await?;
        if let Some(bundle) = self.client.bundle() {
            // Only what the bundle carries can be installed from it; the signed metadata may name more.
            let held = |t: &TargetInfo| {
                bundle.contains(&format!(
                    "{}/{}",
                    ota_tuf::bundle::TARGETS_DIR,
                    self.client.target_path(t)
                ))
            };
            targets.retain(held);
        }
        let offered: Vec<OfferedTarget> = targets.iter().map(offered).collect();
        let booted = self.boot.booted()?;
        let running = self
            .record
            .slot(booted)
            .cloned()
            .ok_or(Error::UnknownRunningImage { slot: booted })?;
        let view = self.refresh_view(&targets).await?;
        let device_id = self.identity.device_id();
        let drills_done: Vec<String> = self.record.drills.iter().map(|d| d.id.clone()).collect();
        let other = booted.other();
        let facts = DeviceFacts {
            hardware: &self.settings.hardware_id,
            channel: &self.settings.channel,
            bucket: ota_release::rollout_bucket(&device_id),
            running: &running.version,
            floor: &self.record.floor,
            failed: &self.record.failed,
            running_sha256: Some(running.sha256),
            device_id: &device_id,
            seed: RolloutSeed::of_device(&device_id),
            now_unix: self.rollout_now(),
            control: view.control.as_ref(),
            other_slot: self.record.slot(other).map(|image| (other, image)),
            drills_done: &drills_done,
            control_refused: view.control_error.as_deref(),
        };
        let decision = select(&offered, &facts);
        Ok((targets, decision))
    }

    /// One poll: refresh the metadata, choose a release, and install it into the inactive slot (by delta
    /// when one from the running image is offered and usable, else the full image). On success the
    /// outcome asks for a reboot into the trial. Also resumes an install a restart cut short.
    pub async fn poll_once(&mut self) -> Result<Outcome> {
        let state = self.record.state.clone();
        if let UpdateState::Downloading {
            source: InstallSource::Bundle { path },
            ..
        } = &state
        {
            // Started from a bundle: finished from it, without the network.
            tracing::info!(bundle = %path.display(), "resuming the interrupted install from its bundle");
            return self.install_bundle(&path.clone()).await;
        }
        refuse_unless_idle(&state, "poll")?;
        let (targets, decision) = self.refresh_and_select().await?;
        self.report_skip(&decision)?;
        if let Some(wait) = self.retry_wait(&state, &decision) {
            return Ok(wait);
        }
        self.act(state, targets, decision).await
    }

    /// An offline install (`install --bundle`): reads metadata and targets from the bundle at `path`
    /// and verifies them against the pinned root exactly as a poll does (root rotation, signatures,
    /// thresholds, rollback, expiry judged at the floored clock: see [`crate::clock`]), chooses among
    /// the releases it carries by the same rules (hardware, channel, version floor, failed versions,
    /// rollout control), checks the image's signed length and hashes in the bundle before anything is
    /// written, then takes the same A/B path as an online install. Refused ([`Error::BundleRefused`]
    /// or the TUF error) with the state and both slots untouched. The state records the bundle, so an
    /// install cut short is resumed from it by the next poll or `run --offline`.
    pub async fn install_bundle(&mut self, path: &Path) -> Result<Outcome> {
        let state = self.record.state.clone();
        refuse_unless_idle(&state, "install a bundle")?;
        let opened = std::fs::canonicalize(path)
            .map_err(|e| ota_tuf::Error::Io {
                path: path.to_owned(),
                source: e,
            })
            .and_then(|p| BundleSource::open(&p));
        let bundle = match opened {
            Ok(bundle) => bundle,
            Err(e) => {
                if matches!(state, UpdateState::Downloading { .. }) {
                    let reason = format!("the bundle cannot be read: {}", anyhow_like(&e));
                    self.apply(Event::DownloadFailed { reason })?;
                }
                return Err(Error::Tuf(e));
            }
        };
        let bundle_path = bundle.path().to_owned();
        if let Some(clock) = self.floored_clock_behind() {
            tracing::warn!("{clock}");
        }
        let metadata = self.settings.state_dir.join(METADATA_DIR);
        self.client = Client::load_bundle(&metadata, self.settings.repository.clone(), bundle)?;
        let (targets, decision) = self.refresh_and_select().await?;
        if let Decision::UpToDate { skipped } = &decision {
            return Err(Error::BundleRefused {
                bundle: bundle_path,
                why: refused_why(skipped),
            });
        }
        self.check_bundled_image(&decision, &targets).await?;
        self.act(state, targets, decision).await
    }

    /// Reads the chosen image from the bundle once, checking its signed length and hashes, before the
    /// state machine starts: a tampered or damaged bundle is refused with both slots untouched.
    async fn check_bundled_image(&self, decision: &Decision, targets: &[TargetInfo]) -> Result<()> {
        let image = match decision {
            Decision::Install { image, .. } => image,
            _ => return Ok(()),
        };
        if let Some(info) = targets.iter().find(|t| t.name == image.target) {
            self.client.download_target(info, tokio::io::sink()).await?;
        }
        Ok(())
    }

    /// A warning when the system clock reads earlier than the time floor (no clock, or one reset).
    fn floored_clock_behind(&self) -> Option<String> {
        let floored = FlooredClock::new(std::sync::Arc::new(ota_tuf::SystemClock), self.time_floor);
        floored.behind().map(|(now, floor)| {
            format!(
                "the system clock reads {now}, before the last time this device verified metadata ({floor}): \
                 expiry is judged at {floor}"
            )
        })
    }

    /// The time waves and drills are judged at: the rollout clock, never before the time floor when
    /// installing from a bundle (an offline device's clock may be unset).
    fn rollout_now(&self) -> i64 {
        let now = (self.rollout_clock)();
        if self.client.bundle().is_some() {
            now.max(self.time_floor)
        } else {
            now
        }
    }

    /// Where the current client reads from, as the record keeps it.
    fn install_source(&self) -> InstallSource {
        match self.client.bundle() {
            Some(b) => InstallSource::Bundle {
                path: b.path().to_owned(),
            },
            None => InstallSource::Repository,
        }
    }

    /// The rest of a poll or a bundle install, once the decision is made: resume an interrupted
    /// install, go back from a pulled release, or choose and install.
    async fn act(
        &mut self,
        state: UpdateState,
        targets: Vec<TargetInfo>,
        decision: Decision,
    ) -> Result<Outcome> {
        if let UpdateState::Downloading { slot, image, .. } = state {
            let same = targets.iter().find(|t| {
                t.name == image.target && t.length == image.length && t.sha256() == Some(image.sha256.0)
            });
            if let Some(info) = same.cloned() {
                tracing::info!(target = %image.target, "resuming the interrupted install");
                let delta = self.delta_plan(&decision, &image, &targets);
                return self.install(slot, image, &info, delta).await;
            }
            let reason = format!("{} is no longer offered", image.target);
            self.apply(Event::DownloadFailed { reason })?;
        }
        let (image, purpose) = match &decision {
            Decision::UpToDate { .. } => return Ok(self.outcome(false, "up to date")),
            Decision::Install { image, purpose, .. } => (image.clone(), purpose.clone()),
            Decision::SwitchBack {
                slot, image, pulled, ..
            } => match self.switch_back(*slot, image, pulled).await? {
                Some(outcome) => return Ok(outcome),
                None => (
                    image.clone(),
                    Purpose::PullBack {
                        pulled: pulled.clone(),
                    },
                ),
            },
        };
        let Some(info) = targets.iter().find(|t| t.name == image.target).cloned() else {
            return Ok(self.outcome(false, "up to date"));
        };
        let slot = self.boot.booted()?.other();
        self.choose(slot, &image, purpose)?;
        let delta = self.delta_plan(&decision, &image, &targets);
        self.install(slot, image, &info, delta).await
    }

    /// The running release is pulled and the record says the inactive `slot` holds `image`, the release
    /// to go back to: hash the slot again and, when it holds exactly the signed image, trial-boot it with
    /// no download (Installed is saved before the bootloader is told). `None` when it does not hold it:
    /// the record forgets the slot's content and the caller downloads the image instead.
    async fn switch_back(
        &mut self,
        slot: SlotId,
        image: &ImageRef,
        pulled: &Version,
    ) -> Result<Option<Outcome>> {
        let from = self.boot.booted()?;
        let fits = image.length <= self.slots.get_mut(slot).capacity();
        let held = fits && slot_sha256(&mut *self.slots.get_mut(slot), image.length)? == image.sha256.0;
        if !held {
            tracing::warn!(%slot, version = %image.version, "the other slot does not hold the release to go back to; downloading it");
            self.update_record(|rec| *rec.slot_mut(slot) = None)?;
            return Ok(None);
        }
        tracing::info!(%slot, version = %image.version, %pulled, "going back from the pulled release to the other slot");
        let action = self.apply(Event::OtherSlotHolds {
            slot,
            image: image.clone(),
            from,
            pulled: pulled.clone(),
        })?;
        let mut outcome = self.drive(action, None).await?;
        outcome.note = format!(
            "{pulled} is pulled: going back to {} in slot {slot} (verified, no download); {}",
            image.version, outcome.note
        );
        Ok(Some(outcome))
    }

    /// The outcome of a poll that must wait: the release it would (re)start has failed attempts whose
    /// backoff has not run out.
    fn retry_wait(&self, state: &UpdateState, decision: &Decision) -> Option<Outcome> {
        let version = match (state, decision) {
            (UpdateState::Downloading { image, .. }, _) | (_, Decision::Install { image, .. }) => {
                &image.version
            }
            _ => return None,
        };
        let now = now_unix();
        let r = self.record.retry_wait(version, now)?;
        let note = format!(
            "{} attempts at {} ended before the image was verified (last: {}); next try in {} s",
            r.attempts,
            r.version,
            r.last_reason,
            r.next_try_unix.saturating_sub(now)
        );
        Some(self.outcome(false, note))
    }

    /// Records the choice of `image` for `slot` (the slot's old content is forgotten), refusing an image
    /// that can never fit the slot (remembered as failed).
    fn choose(&mut self, slot: SlotId, image: &ImageRef, purpose: Purpose) -> Result<()> {
        self.apply(Event::Chosen {
            slot,
            image: image.clone(),
            purpose,
            source: self.install_source(),
        })?;
        let capacity = self.slots.get_mut(slot).capacity();
        if image.length > capacity {
            let err = Error::SlotTooSmall {
                target: image.target.clone(),
                length: image.length,
                slot,
                capacity,
            };
            self.apply(Event::Unfit {
                reason: err.to_string(),
            })?;
            return Err(err);
        }
        Ok(())
    }

    /// The delta to try for `image`: `None` when the decision offers none from the running image, an
    /// immediate fallback when the offered one cannot be used (see [`crate::delta::plan`]).
    fn delta_plan(
        &self,
        decision: &Decision,
        image: &ImageRef,
        targets: &[TargetInfo],
    ) -> Option<std::result::Result<DeltaPlan, DeltaFallback>> {
        let Decision::Install {
            image: chosen,
            release,
            delta: Some(choice),
            ..
        } = decision
        else {
            return None;
        };
        if chosen != image {
            return None;
        }
        let offer = release.deltas.iter().find(|d| d.target == choice.target)?;
        Some(crate::delta::plan(
            offer,
            image,
            targets,
            self.record.last_install.as_ref(),
        ))
    }

    /// Marks `slot` bad, then fills it: by delta when `delta` is a usable plan (falling back to the full
    /// image for any reason the delta cannot be used), else by streaming the full target into it. Reads
    /// it back and checks the signed sha256, then requests the trial. Storage and network errors of the
    /// full image leave the state at Downloading (resumed by the next poll or start); a refused image
    /// (hash or length mismatch) ends the update as Failed.
    async fn install(
        &mut self,
        slot: SlotId,
        image: ImageRef,
        info: &TargetInfo,
        delta: Option<std::result::Result<DeltaPlan, DeltaFallback>>,
    ) -> Result<Outcome> {
        let from = self.boot.booted()?;
        if slot == from {
            return Err(Error::Refused {
                action: "install",
                why: format!("slot {slot} is the running slot; only the inactive slot is ever written"),
            });
        }
        self.boot.mark_bad(slot)?;
        let mut meter = self.meter(&image.version);
        let filled = self
            .fill_slot((slot, from), &image, info, delta, &mut meter)
            .await;
        meter.end(filled.as_ref().err().map(|e| crate::error_chain(e)));
        drop(meter);
        self.installed(from, filled?).await
    }

    /// Fills `slot` (the running one is `from`) with `image` and reads it back: the delta first when
    /// `delta` is a usable plan, else (or when it fails) the full image. How it came, for the record.
    async fn fill_slot(
        &mut self,
        (slot, from): (SlotId, SlotId),
        image: &ImageRef,
        info: &TargetInfo,
        delta: Option<std::result::Result<DeltaPlan, DeltaFallback>>,
        meter: &mut InstallMeter,
    ) -> Result<InstallReport> {
        let mut report = InstallReport {
            version: image.version.clone(),
            via: InstallVia::Full,
            downloaded_bytes: 0,
            delta_fallback: None,
            source: self.install_source(),
        };
        if let Some(plan) = delta {
            let target = plan
                .as_ref()
                .map_or_else(|_| String::new(), |p| p.target.name.clone());
            let tried = match plan {
                Ok(plan) => {
                    self.install_delta((slot, from), image, &plan, &mut report, meter)
                        .await?
                }
                Err(reason) => Err(reason),
            };
            match tried {
                Ok(()) => return Ok(report),
                Err(reason) => {
                    tracing::warn!(delta = %target, %reason, "delta not used; installing the full image");
                    report.via = InstallVia::Full;
                    report.delta_fallback = Some(reason.to_string());
                    self.update_record(|rec| rec.last_install = Some(report.clone()))?;
                }
            }
        }
        self.install_full(slot, image, info, &mut report, meter).await?;
        Ok(report)
    }

    /// Streams the full target into `slot` and reads it back. A refused image (wrong bytes from the
    /// server, or a read-back mismatch) ends the update as Failed; other errors leave it Downloading.
    async fn install_full(
        &mut self,
        slot: SlotId,
        image: &ImageRef,
        info: &TargetInfo,
        report: &mut InstallReport,
        meter: &mut InstallMeter,
    ) -> Result<()> {
        let target_slot = self.slots.get_mut(slot);
        let mut writer = SlotWriter::new(&mut *target_slot, image.length)?;
        let mut sink = SlotSink {
            writer: &mut writer,
            failure: None,
        };
        meter.phase(Phase::Download, image.length);
        let metered = MeteredSink {
            inner: &mut sink,
            meter: &mut *meter,
        };
        let downloaded = self.client.download_target(info, metered).await;
        let failure = sink.failure.take();
        report.downloaded_bytes = report.downloaded_bytes.saturating_add(writer.position());
        if let Some(storage) = failure {
            return Err(Error::Storage(storage));
        }
        if let Err(e) = downloaded {
            if is_refused_image(&e) {
                self.apply(Event::DownloadFailed {
                    reason: e.to_string(),
                })?;
            } else {
                // The state stays Downloading (resumed by the next poll); the attempt still counts.
                let (policy, reason) = (self.retry_policy, anyhow_like(&e));
                self.update_record(|rec| rec.count_attempt(&image.version, reason, now_unix(), &policy))?;
            }
            return Err(Error::Tuf(e));
        }
        writer.finish()?;
        meter.phase(Phase::Verify, image.length);
        let got = slot_sha256(&mut *self.slots.get_mut(slot), image.length)?;
        if got != image.sha256.0 {
            let err = Error::ImageMismatch {
                slot,
                target: image.target.clone(),
                expected: image.sha256.to_hex(),
                got: hex::encode(got),
            };
            self.apply(Event::DownloadFailed {
                reason: err.to_string(),
            })?;
            return Err(err);
        }
        Ok(())
    }

    /// Tries the delta: checks the running slot is its base, downloads it into the spool, decodes it
    /// into `slot` and reads `slot` back. `Ok(Err(reason))`: fall back to the full image. `Err`: storage
    /// or persistence failed (the full image would not fare better; the state stays Downloading).
    async fn install_delta(
        &mut self,
        (slot, from): (SlotId, SlotId),
        image: &ImageRef,
        plan: &DeltaPlan,
        report: &mut InstallReport,
        meter: &mut InstallMeter,
    ) -> Result<std::result::Result<(), DeltaFallback>> {
        if let Err(reason) = check_base(self.slots.get_mut(from), &plan.offer)? {
            return Ok(Err(reason));
        }
        let spool = self.settings.state_dir.join(crate::delta::SPOOL_FILE);
        let mut sink = match SpoolSink::create(&spool) {
            Ok(sink) => sink,
            Err(reason) => return Ok(Err(reason)),
        };
        // Bounded by the signed length, checked against the signed hashes (TUF 5.7).
        meter.phase(Phase::DeltaDownload, plan.target.length);
        let metered = MeteredSink {
            inner: &mut sink,
            meter: &mut *meter,
        };
        let fetched = self.client.download_target(&plan.target, metered).await;
        report.downloaded_bytes = report.downloaded_bytes.saturating_add(sink.written);
        drop(sink);
        if let Err(e) = fetched {
            remove_spool(&spool);
            return Ok(Err(DeltaFallback::Download(e)));
        }
        // Persisted before the inactive slot is written: a restart from here on installs the full image.
        report.via = InstallVia::Delta {
            target: plan.target.name.clone(),
        };
        self.update_record(|rec| rec.last_install = Some(report.clone()))?;
        let (running, inactive) = self.slots.split_mut(from);
        meter.phase(Phase::DeltaApply, image.length);
        let applied = apply_spooled(&spool, &plan.offer, image, (running, inactive), meter);
        remove_spool(&spool);
        match applied {
            Ok(summary) => tracing::info!(
                delta = %plan.target.name,
                segments = summary.segments,
                bytes = summary.new_len,
                "delta applied"
            ),
            Err(ApplyFailure::Storage(e)) => return Err(Error::Storage(e)),
            Err(ApplyFailure::Fallback(reason)) => return Ok(Err(reason)),
        }
        meter.phase(Phase::Verify, image.length);
        let got = slot_sha256(&mut *self.slots.get_mut(slot), image.length)?;
        if got != image.sha256.0 {
            return Ok(Err(DeltaFallback::ReadBack {
                expected: image.sha256.to_hex(),
                got: hex::encode(got),
            }));
        }
        Ok(Ok(()))
    }

    /// The chosen slot holds the image, read back and verified: record it and how it came (one write),
    /// then take the Installed state's way forward: start the trial and ask for the reboot.
    async fn installed(&mut self, from: SlotId, report: InstallReport) -> Result<Outcome> {
        let how = report.to_string();
        tracing::info!("installed {how}");
        let action = self.apply_with(Event::Verified { from }, Some(report))?;
        let mut outcome = self.drive(action, None).await?;
        outcome.note = format!("installed {how}; {}", outcome.note);
        Ok(outcome)
    }
}

/// Refuses to start an install while another is underway (an interrupted download may be resumed).
fn refuse_unless_idle(state: &UpdateState, action: &'static str) -> Result<()> {
    if !state.is_final() && !matches!(state, UpdateState::Downloading { .. }) {
        return Err(Error::Refused {
            action,
            why: format!("state is {state}; the pending update must finish first (restart the agent)"),
        });
    }
    Ok(())
}

/// Why a bundle holds nothing to install, from the reasons each release in it was passed over.
fn refused_why(skipped: &[crate::select::Skipped]) -> String {
    if skipped.is_empty() {
        return "it holds no release for this device's hardware id and channel newer than the running one"
            .to_owned();
    }
    let reasons: Vec<String> = skipped
        .iter()
        .map(|s| format!("{}: {}", s.target, s.why))
        .collect();
    reasons.join("; ")
}

/// The attempt at a release that `event` ends in `state` before its image was verified, and why: a
/// start that interrupted a download (or the loop breaker stopping an install), or a failed download.
fn attempt_ended(state: &UpdateState, event: &Event) -> Option<(Version, String)> {
    match (state, event) {
        (UpdateState::Downloading { image, .. }, Event::Started { .. }) => Some((
            image.version.clone(),
            "interrupted (the agent restarted during the download)".to_owned(),
        )),
        (UpdateState::Installed { image, restarts, .. }, Event::Started { .. })
            if *restarts >= crate::state::MAX_RESTARTS =>
        {
            Some((image.version.clone(), crate::state::INTERRUPTED.to_owned()))
        }
        (UpdateState::Downloading { image, .. }, Event::DownloadFailed { reason }) => {
            Some((image.version.clone(), reason.clone()))
        }
        _ => None,
    }
}

/// The queue's status; one that cannot be read says why in `last_error` rather than failing `status`
/// (health checks run `status`).
fn queue_status(queue: &ReportQueue) -> QueueStatus {
    queue.status().unwrap_or_else(|e| QueueStatus {
        count: 0,
        bytes: 0,
        max_reports: 0,
        max_bytes: 0,
        dropped: 0,
        delivered: 0,
        refused: 0,
        next_sequence: 0,
        last_delivered_unix: None,
        last_error: Some(SendError {
            unix: now_unix(),
            text: format!("cannot read the report queue: {}", crate::error_chain(&e)),
        }),
    })
}

/// Seconds since the Unix epoch, signed (as rollout plans count them).
fn now_unix_i64() -> i64 {
    i64::try_from(now_unix()).unwrap_or(i64::MAX)
}

/// The releases offered to this hardware id and channel (not those under the rollout-control role's
/// paths, which never hold firmware), as `status` shows them.
fn offered_releases(targets: &[TargetInfo], hardware: &HardwareId, channel: &Channel) -> Vec<Release> {
    targets
        .iter()
        .filter(|t| !t.name.starts_with(&format!("{CONTROL_DIR}/")))
        .filter_map(|t| match OtaTarget::from_custom(&t.custom) {
            Ok(Some(OtaTarget::Release(r))) => Some(r),
            _ => None,
        })
        .filter(|r| r.channel == *channel && r.hardware.contains(hardware))
        .collect()
}

/// An error and its sources, `: `-separated.
fn anyhow_like(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether a TUF error means the server's bytes were wrong (as opposed to unreachable).
fn is_refused_image(e: &ota_tuf::Error) -> bool {
    matches!(
        e,
        ota_tuf::Error::HashMismatch { .. }
            | ota_tuf::Error::LengthMismatch { .. }
            | ota_tuf::Error::TooLarge { .. }
    )
}

fn offered(t: &TargetInfo) -> OfferedTarget {
    OfferedTarget {
        name: t.name.clone(),
        length: t.length,
        sha256: t.sha256().map(Sha256Digest),
        custom: t.custom.clone(),
    }
}

/// An async sink over a [`SlotWriter`]: the bytes go straight into the slot (no temporary copy), and a
/// storage failure is kept aside so it is not mistaken for a bad download.
struct SlotSink<'w, 'a, S: Slot> {
    writer: &'w mut SlotWriter<'a, S>,
    failure: Option<ota_slot::Error>,
}

impl<S: Slot> tokio::io::AsyncWrite for SlotSink<'_, '_, S> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match this.writer.write(buf) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => {
                let message = e.to_string();
                if let Some(inner) = e.into_inner() {
                    if let Ok(slot_error) = inner.downcast::<ota_slot::Error>() {
                        this.failure = Some(*slot_error);
                    }
                }
                Poll::Ready(Err(std::io::Error::other(message)))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
