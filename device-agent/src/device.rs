//! The update core: a device's slots, bootloader, trusted metadata and persisted record, and the two
//! entry points that drive the state machine: [`Device::on_boot`] after every start, and
//! [`Device::poll_once`] to look for and install a release.
//!
//! [`Device`] is generic over [`Slot`] and [`BootControl`] so the daemon (file slots, U-Boot or GRUB), the
//! end-to-end tests (file slots, simulated bootloader), the power-cut sweep (simulated NOR flash) and the
//! fleet drill all run this same code. It never reboots by itself: an [`Outcome`] with `reboot: true`
//! tells the caller to reboot now (the daemon runs the configured command; simulations call
//! `SimBootloader::reboot` and start a fresh `Device`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use ota_release::{Channel, HardwareId, Sha256Digest, Version};
use ota_slot::{slot_sha256, BootControl, Slot, SlotWriter, TrialBoot};
use ota_tuf::{Client, ClientConfig, TargetInfo};
use serde::Serialize;

use crate::config::{AgentConfig, HealthConfig};
use crate::error::{Error, Result};
use crate::health::{run_checks, HealthReport};
use crate::identity::{check_root_fingerprint, parse_fingerprint, DeviceIdentity};
use crate::persist::write_atomic;
use crate::select::{select, Decision, DeviceFacts, OfferedTarget};
use crate::state::{next, DeviceRecord, Event, ImageRef, RecordFile, SlotImage, UpdateState};
use crate::SlotId;

/// Name of the TUF metadata directory inside the state directory.
pub const METADATA_DIR: &str = "metadata";
/// Name of the file holding the pinned root's sha256 (hex) inside the state directory.
pub const PINNED_ROOT_FILE: &str = "root.sha256";
/// Largest root.json accepted at provisioning (TUF 5.3.3's suggested bound).
const MAX_ROOT_FILE: u64 = 512 * 1024;

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

/// The image running now and the factory facts given at provisioning.
#[derive(Clone, Debug)]
pub struct FactoryImage {
    /// Version of the image in the booted slot.
    pub version: Version,
    /// Its length in bytes (its sha256 is measured from the slot).
    pub length: u64,
}

/// What provisioning did.
#[derive(Clone, Debug, Serialize)]
pub struct ProvisionReport {
    /// The device id derived from the identity key.
    pub device_id: String,
    /// The identity's public key (hex).
    pub public_key: String,
    /// False when an identity key already existed and was kept.
    pub key_created: bool,
    /// sha256 of the pinned root.
    pub root_sha256: String,
    /// The booted slot.
    pub booted: SlotId,
    /// The running image's sha256 as measured.
    pub running_sha256: String,
}

/// Pins the root of trust, creates the identity key and records the running image.
///
/// Refuses a root whose sha256 is not `fingerprint`, and a device already pinned to another root.
/// Running it again with the same root is harmless: the key, the (possibly rotated) trusted metadata and
/// the update record are kept.
pub fn provision<S: Slot, B: BootControl>(
    state_dir: &Path,
    root_path: &Path,
    fingerprint: &str,
    factory: &FactoryImage,
    slots: &mut SlotPair<S>,
    boot: &mut B,
) -> Result<ProvisionReport> {
    use std::io::Read;
    let expected = parse_fingerprint(fingerprint)?;
    let file = std::fs::File::open(root_path).map_err(Error::io("read root", root_path))?;
    let mut root = Vec::new();
    file.take(MAX_ROOT_FILE)
        .read_to_end(&mut root)
        .map_err(Error::io("read root", root_path))?;
    check_root_fingerprint(root_path, &root, &expected)?;
    let root_hex = hex::encode(expected);

    create_private_dir(state_dir)?;
    let pinned_path = state_dir.join(PINNED_ROOT_FILE);
    match std::fs::read_to_string(&pinned_path) {
        Ok(pinned) if pinned.trim() == root_hex => {}
        Ok(pinned) => {
            return Err(Error::AlreadyProvisioned {
                pinned: pinned.trim().to_owned(),
                offered: root_hex,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Client::init(&state_dir.join(METADATA_DIR), &root)?;
            write_atomic(&pinned_path, format!("{root_hex}\n").as_bytes(), 0o644)?;
        }
        Err(e) => return Err(Error::io("read pinned root", &pinned_path)(e)),
    }

    let (identity, key_created) = DeviceIdentity::create_or_load(&DeviceIdentity::path_in(state_dir))?;
    let booted = boot.booted()?;
    let running = Sha256Digest(slot_sha256(slots.get_mut(booted), factory.length)?);
    let record_file = RecordFile::in_dir(state_dir);
    if !record_file.exists() {
        let image = SlotImage {
            version: factory.version.clone(),
            sha256: running,
            length: factory.length,
        };
        record_file.save(&DeviceRecord::provisioned(booted, image))?;
    }
    Ok(ProvisionReport {
        device_id: identity.device_id(),
        public_key: identity.public_key_hex(),
        key_created,
        root_sha256: root_hex,
        booted,
        running_sha256: running.to_hex(),
    })
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Error::io("create state directory", dir))
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
}

/// A provisioned device: its slots, bootloader, identity, trusted metadata and update record.
pub struct Device<S: Slot, B: BootControl> {
    settings: DeviceSettings,
    slots: SlotPair<S>,
    boot: B,
    identity: DeviceIdentity,
    file: RecordFile,
    record: DeviceRecord,
    client: Client,
}

impl<S: Slot, B: BootControl> Device<S, B> {
    /// Opens a provisioned device; refuses when the identity key, the pinned root or the update record is
    /// missing, or the key is readable by others.
    pub fn open(settings: DeviceSettings, slots: SlotPair<S>, boot: B) -> Result<Device<S, B>> {
        let dir = &settings.state_dir;
        let need = |name: &'static str| {
            if dir.join(name).exists() {
                Ok(())
            } else {
                Err(Error::NotProvisioned {
                    state_dir: dir.clone(),
                    missing: name,
                })
            }
        };
        need(crate::identity::IDENTITY_FILE)?;
        need(PINNED_ROOT_FILE)?;
        need("metadata/root.json")?;
        need("state.json")?;
        let identity = DeviceIdentity::load(&DeviceIdentity::path_in(dir))?;
        let file = RecordFile::in_dir(dir);
        let record = file.load()?;
        let client = Client::load(&dir.join(METADATA_DIR), settings.repository.clone())?;
        Ok(Device {
            settings,
            slots,
            boot,
            identity,
            file,
            record,
            client,
        })
    }

    /// The persisted record.
    pub fn record(&self) -> &DeviceRecord {
        &self.record
    }

    /// The device's identity.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// The bootloader (simulations use it to play the reboot).
    pub fn boot_mut(&mut self) -> &mut B {
        &mut self.boot
    }

    /// The slots and the bootloader back (simulations rebuild the device after a reboot).
    pub fn into_parts(self) -> (SlotPair<S>, B) {
        (self.slots, self.boot)
    }

    /// Applies `event`, lets `change` adjust the rest of the record, and persists the result before the
    /// caller performs the side effect that follows.
    fn advance(&mut self, event: Event, change: impl FnOnce(&mut DeviceRecord)) -> Result<()> {
        let mut record = self.record.clone();
        record.state = next(record.state, event)?;
        if let UpdateState::RolledBack { version, .. } = &record.state {
            record.remember_failed(version.clone());
        }
        change(&mut record);
        if record != self.record {
            self.file.save(&record)?;
            tracing::info!(state = %record.state, "update state");
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
        let booted = self.boot.booted()?;
        if !self.record.state.is_final() {
            self.advance(Event::Restarted, |rec| {
                // The loop breaker gave up on this install: do not try the release again.
                if let UpdateState::Failed { version, .. } = &rec.state {
                    let v = version.clone();
                    rec.remember_failed(v);
                }
            })?;
        }
        match self.record.state.clone() {
            UpdateState::Idle | UpdateState::Failed { .. } => Ok(self.outcome(false, "nothing pending")),
            UpdateState::Downloading { .. } => {
                Ok(self.outcome(false, "download interrupted; the next poll starts it over"))
            }
            UpdateState::Committed { slot, .. } => self.finish_commit(slot, booted),
            UpdateState::RolledBack { slot, .. } => self.finish_rollback(slot, booted),
            UpdateState::Installed { slot, .. } if booted == slot => {
                // The trial was requested and booted, but the cut came before TrialBoot was saved.
                self.advance(Event::TrialRequested, |_| {})?;
                self.judge_trial(slot, booted).await
            }
            UpdateState::Installed { slot, .. } => self.request_trial(slot),
            UpdateState::TrialBoot { slot, .. } => self.judge_trial(slot, booted).await,
        }
    }

    /// Makes the bootloader agree with a persisted commit.
    fn finish_commit(&mut self, slot: SlotId, booted: SlotId) -> Result<Outcome> {
        if self.boot.primary()? != slot || self.boot.trial()?.is_some() {
            self.boot.mark_good(slot)?;
        }
        if booted != slot {
            return Ok(self.outcome(
                true,
                format!("committed slot {slot} but running {booted}: rebooting into it"),
            ));
        }
        Ok(self.outcome(false, format!("running committed slot {slot}")))
    }

    /// Makes the bootloader agree with a persisted rollback, and gets off the rejected slot.
    fn finish_rollback(&mut self, slot: SlotId, booted: SlotId) -> Result<Outcome> {
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

    /// Tells the bootloader to try `slot` once, then asks for the reboot.
    fn request_trial(&mut self, slot: SlotId) -> Result<Outcome> {
        self.boot.start_trial(slot, 1)?;
        self.advance(Event::TrialRequested, |_| {})?;
        Ok(self.outcome(true, format!("trial boot of slot {slot} requested: rebooting")))
    }

    /// In the trial state after a start: check health if the new slot runs, otherwise find out why not.
    async fn judge_trial(&mut self, slot: SlotId, booted: SlotId) -> Result<Outcome> {
        if booted == slot {
            let report: HealthReport = run_checks(&self.settings.health).await;
            if report.healthy() {
                return self.commit(slot, &report.summary());
            }
            self.advance(
                Event::Unhealthy {
                    reason: report.summary(),
                },
                |_| {},
            )?;
            return self.finish_rollback(slot, booted);
        }
        match self.boot.trial()? {
            Some(t) if t.slot == slot && t.tries_left > 0 => {
                Ok(self.outcome(true, format!("trial of slot {slot} still pending: rebooting")))
            }
            _ => {
                self.advance(Event::FellBack, |_| {})?;
                self.finish_rollback(slot, booted)
            }
        }
    }

    fn commit(&mut self, slot: SlotId, why: &str) -> Result<Outcome> {
        self.advance(Event::Healthy, |rec| {
            if let UpdateState::Committed { version, .. } = &rec.state {
                if *version > rec.floor {
                    rec.floor = version.clone();
                }
            }
        })?;
        self.boot.mark_good(slot)?;
        Ok(self.outcome(false, format!("committed slot {slot} ({why})")))
    }

    /// Operator's commit of a running trial without waiting for the health checks (`mark-good`).
    pub fn mark_good(&mut self) -> Result<Outcome> {
        let booted = self.boot.booted()?;
        match self.record.state.clone() {
            UpdateState::TrialBoot { slot, .. } if slot == booted => {
                self.commit(slot, "marked good by the operator")
            }
            UpdateState::Committed { slot, .. } if slot == booted => self.finish_commit(slot, booted),
            other => Err(Error::Refused {
                action: "mark good",
                why: format!(
                    "state is {other}, running slot {booted}; only a running trial can be committed"
                ),
            }),
        }
    }

    /// Operator's rollback of a trial (`rollback`): the trial slot is marked bad and the old slot booted.
    pub fn rollback(&mut self) -> Result<Outcome> {
        let booted = self.boot.booted()?;
        match self.record.state.clone() {
            UpdateState::TrialBoot { slot, .. } => {
                self.advance(Event::Abandoned, |_| {})?;
                self.finish_rollback(slot, booted)
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
        })
    }

    /// Refreshes the trusted metadata and decides, changing nothing (`check`).
    pub async fn check(&mut self) -> Result<Decision> {
        let (_, decision) = self.refresh_and_select().await?;
        Ok(decision)
    }

    async fn refresh_and_select(&mut self) -> Result<(Vec<TargetInfo>, Decision)> {
        self.client.refresh().await?;
        let targets = self.client.all_targets().await?;
        let offered: Vec<OfferedTarget> = targets.iter().map(offered).collect();
        let booted = self.boot.booted()?;
        let running = self
            .record
            .slot(booted)
            .cloned()
            .ok_or(Error::UnknownRunningImage { slot: booted })?;
        let bucket = ota_release::rollout_bucket(&self.identity.device_id());
        let facts = DeviceFacts {
            hardware: &self.settings.hardware_id,
            channel: &self.settings.channel,
            bucket,
            running: &running.version,
            floor: &self.record.floor,
            failed: &self.record.failed,
            running_sha256: Some(running.sha256),
        };
        let decision = select(&offered, &facts);
        Ok((targets, decision))
    }

    /// One poll: refresh the metadata, choose a release, and install it into the inactive slot. On
    /// success the outcome asks for a reboot into the trial. Also resumes a download a restart cut short.
    pub async fn poll_once(&mut self) -> Result<Outcome> {
        let state = self.record.state.clone();
        if !state.is_final() && !matches!(state, UpdateState::Downloading { .. }) {
            return Err(Error::Refused {
                action: "poll",
                why: format!("state is {state}; the pending update must finish first (restart the agent)"),
            });
        }
        let (targets, decision) = self.refresh_and_select().await?;
        if let UpdateState::Downloading { slot, image, .. } = state {
            let same = targets.iter().find(|t| {
                t.name == image.target && t.length == image.length && t.sha256() == Some(image.sha256.0)
            });
            if let Some(info) = same {
                tracing::info!(target = %image.target, "resuming the interrupted install");
                let info = info.clone();
                return self.install(slot, image, &info).await;
            }
            self.advance(
                Event::DownloadFailed {
                    reason: format!("{} is no longer offered", image.target),
                },
                |_| {},
            )?;
        }
        let Decision::Install { image, .. } = decision else {
            return Ok(self.outcome(false, "up to date"));
        };
        let Some(info) = targets.iter().find(|t| t.name == image.target).cloned() else {
            return Ok(self.outcome(false, "up to date"));
        };
        let slot = self.boot.booted()?.other();
        self.advance(
            Event::Chosen {
                slot,
                image: image.clone(),
            },
            |rec| *rec.slot_mut(slot) = None,
        )?;
        let capacity = self.slots.get_mut(slot).capacity();
        if image.length > capacity {
            let err = Error::SlotTooSmall {
                target: image.target.clone(),
                length: image.length,
                slot,
                capacity,
            };
            let version = image.version.clone();
            self.advance(
                Event::DownloadFailed {
                    reason: err.to_string(),
                },
                |rec| rec.remember_failed(version),
            )?;
            return Err(err);
        }
        self.install(slot, image, &info).await
    }

    /// Marks `slot` bad, streams the target into it, reads it back and checks the signed sha256, then
    /// requests the trial. Storage and network errors leave the state at Downloading (resumed by the
    /// next poll or start); a refused image (hash or length mismatch) ends the update as Failed.
    async fn install(&mut self, slot: SlotId, image: ImageRef, info: &TargetInfo) -> Result<Outcome> {
        let from = self.boot.booted()?;
        self.boot.mark_bad(slot)?;
        let target_slot = self.slots.get_mut(slot);
        let mut writer = SlotWriter::new(&mut *target_slot, image.length)?;
        let mut sink = SlotSink {
            writer: &mut writer,
            failure: None,
        };
        let downloaded = self.client.download_target(info, &mut sink).await;
        let failure = sink.failure.take();
        if let Some(storage) = failure {
            return Err(Error::Storage(storage));
        }
        if let Err(e) = downloaded {
            if is_refused_image(&e) {
                self.advance(
                    Event::DownloadFailed {
                        reason: e.to_string(),
                    },
                    |_| {},
                )?;
            }
            return Err(Error::Tuf(e));
        }
        writer.finish()?;
        let got = slot_sha256(&mut *self.slots.get_mut(slot), image.length)?;
        if got != image.sha256.0 {
            let err = Error::ImageMismatch {
                slot,
                target: image.target.clone(),
                expected: image.sha256.to_hex(),
                got: hex::encode(got),
            };
            self.advance(
                Event::DownloadFailed {
                    reason: err.to_string(),
                },
                |_| {},
            )?;
            return Err(err);
        }
        let written = SlotImage {
            version: image.version.clone(),
            sha256: image.sha256,
            length: image.length,
        };
        self.advance(Event::Verified { from }, |rec| {
            *rec.slot_mut(slot) = Some(written)
        })?;
        self.request_trial(slot)
    }
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
