//! The update as an explicit state machine, and the record that persists it.
//!
//! ```text
//!            Chosen                Verified             TrialStarted              Healthy
//!  Idle ───────────────► Downloading ───────► Installed ─────────────► TrialBoot ─────────► Committed
//!  (or any final state)     │ Started ↺           │ Started ↺              │ Started ↺
//!                           │ DownloadFailed      │ loop breaker           │ Unhealthy / fell back /
//!                           ▼ Unfit, loop breaker ▼                        ▼ loop breaker / Abandoned
//!                         Failed ◄────────────────┘                     RolledBack
//!
//!  Idle / final ── OtherSlotHolds (pull-back, no download) ──► Installed
//!  TrialBoot (field drill) ── Healthy ──► DrillRolledBack (rolled back on purpose)
//! ```
//!
//! Rollout control adds no way around this machine: an update carries its [`Purpose`]. A pull-back (the
//! running release was pulled by signed rollout control) reaches Installed by download or, when the other
//! slot still holds the release to go back to, directly ([`Event::OtherSlotHolds`]); its commit lowers the
//! floor to its version ([`Transition::lower_floor`], the only way the floor goes down). A field drill's
//! healthy trial ends in [`UpdateState::DrillRolledBack`] instead of a commit; its outcome is kept in
//! [`DeviceRecord::drills`].
//!
//! [`transition`] is the only place a state changes, and it returns everything that changes with it
//! ([`Transition`]: the floor raised at commit, the failed version remembered, what a slot holds) and the
//! one side effect ([`Action`]) the new state asks for. The agent saves the new [`DeviceRecord`] *before*
//! performing that action (write the slot, start the trial, reboot, mark good, mark bad): persist, then
//! act. So after a power cut or crash in any state there is exactly one way forward, described on each
//! variant, found by the [`Event::Started`] arm from what the bootloader shows. Every in-progress state
//! counts the agent starts it has seen (`restarts`); past [`MAX_RESTARTS`] the loop breaker gives up on
//! the update (Failed, or RolledBack once the new image has been booted), so a release that crashes the
//! agent or the device cannot cause an endless loop. That rule is written once ([`transition`]'s
//! `Started` arm). Only a verified image that fails its trial (RolledBack) condemns a release
//! ([`Transition::failed`]); an install stopped before that (a failed download, kills, power cuts, the loop
//! breaker in Downloading or Installed) leaves it eligible, retried with the full image after a backoff
//! ([`DeviceRecord::retry`], [`RetryPolicy`]).
//!
//! Why the trial is started *from* Installed rather than after saving TrialBoot: the bootloader shows the
//! same thing (old slot running, no trial) when a trial was never started and when it was started and
//! fell back. Installed means "tell the bootloader" and TrialBoot means "the bootloader was told", so a
//! start in the old slot with no trial pending retries the request in Installed and is a fallback, a
//! rollback, only in TrialBoot.

use std::fmt;
use std::path::{Path, PathBuf};

use ota_release::{Sha256Digest, Version};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::rollout::{DrillOutcome, DrillResult, Purpose, MAX_DRILLS_REMEMBERED};
use crate::SlotId;
use ota_slot::TrialBoot;

/// Agent starts an in-progress state may see before the loop breaker ends the update.
pub const MAX_RESTARTS: u32 = 3;

/// Most failed versions remembered (oldest forgotten first).
pub const MAX_FAILED_REMEMBERED: usize = 32;

/// A firmware image as named by signed TUF metadata: what the agent installs and later verifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// The release's TUF target name.
    pub target: String,
    /// The release's version.
    pub version: Version,
    /// The image's sha256 from signed targets metadata.
    pub sha256: Sha256Digest,
    /// The image's length from signed targets metadata.
    pub length: u64,
}

impl ImageRef {
    /// What a slot holds once this image is written and verified in it.
    pub fn slot_image(&self) -> SlotImage {
        SlotImage {
            version: self.version.clone(),
            sha256: self.sha256,
            length: self.length,
        }
    }
}

/// Where one update stands. Each variant carries only what is valid in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum UpdateState {
    /// No update in progress and none finished since provisioning.
    Idle,
    /// Writing `image` into `slot`. The slot has been (or is about to be) marked bad, so its content does
    /// not matter. After a restart: start the download over (same release) or, past the restart limit, fail.
    Downloading {
        /// The inactive slot being written.
        slot: SlotId,
        /// The release being installed.
        image: ImageRef,
        /// Agent starts seen in this state.
        restarts: u32,
        /// Why this image is installed (an update unless said otherwise).
        #[serde(default, skip_serializing_if = "Purpose::is_update")]
        purpose: Purpose,
        /// Where the image comes from: the repository, or an offline bundle (then a restart resumes
        /// from the bundle, without the network).
        #[serde(default, skip_serializing_if = "InstallSource::is_repository")]
        source: InstallSource,
    },
    /// `slot` holds `image`, read back and verified; saved before the bootloader is told to try it. After
    /// a restart: (re)start the trial and reboot; if the device already runs `slot`, the trial is
    /// underway: go to TrialBoot.
    Installed {
        /// The slot holding the new image.
        slot: SlotId,
        /// The verified image.
        image: ImageRef,
        /// The slot running the old image, to come back to.
        from: SlotId,
        /// Agent starts seen in this state.
        restarts: u32,
        /// Why this image is installed (an update unless said otherwise).
        #[serde(default, skip_serializing_if = "Purpose::is_update")]
        purpose: Purpose,
    },
    /// The bootloader was told to try `slot` once (saved before the reboot). After a restart: if running
    /// `slot`, run the health checks; if the trial is still pending, reboot; if the bootloader fell back
    /// to `from`, the trial failed: roll back.
    TrialBoot {
        /// The slot on trial.
        slot: SlotId,
        /// Its image.
        image: ImageRef,
        /// The slot running the old image.
        from: SlotId,
        /// Agent starts seen in this state.
        restarts: u32,
        /// Why this image is on trial: a drill's healthy trial ends in [`UpdateState::DrillRolledBack`],
        /// a pull-back's commit lowers the floor to its version.
        #[serde(default, skip_serializing_if = "Purpose::is_update")]
        purpose: Purpose,
    },
    /// `slot` passed its health checks and is (being made) the primary slot; the version floor is
    /// `version`. After a restart: make sure the bootloader agrees (mark good), rebooting into `slot` if a
    /// cut made it fall back.
    Committed {
        /// The committed slot.
        slot: SlotId,
        /// The committed version.
        version: Version,
    },
    /// `slot`'s image failed its trial; it is (being) marked bad and the device returns to `to`. After a
    /// restart: make sure `slot` is marked bad and the device runs `to`.
    RolledBack {
        /// The rejected slot.
        slot: SlotId,
        /// The rejected version (never retried).
        version: Version,
        /// The slot returned to.
        to: SlotId,
        /// Why.
        reason: String,
    },
    /// A field drill's trial of `version` in `slot` passed its health checks, and the device rolls back to
    /// `to` on purpose (the release is not condemned). After a restart: make sure `slot` is marked bad
    /// and the device runs `to`. Final.
    DrillRolledBack {
        /// The drilled slot.
        slot: SlotId,
        /// The drilled version.
        version: Version,
        /// The slot returned to.
        to: SlotId,
        /// The drill's id.
        drill: String,
    },
    /// The install of `version` failed before any trial; the running slot was never touched. Final.
    /// Remembered as failed (never retried) only when the image can never fit the slot; an interrupted
    /// or failed download leaves the release eligible, retried after [`DeviceRecord::retry`]'s backoff.
    Failed {
        /// The version whose install failed.
        version: Version,
        /// Why.
        reason: String,
    },
}

/// What happened, as seen by the agent: a choice it made, a side effect it finished, or what it found
/// at a start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Selection chose `image` for the inactive `slot`.
    Chosen {
        /// The inactive slot.
        slot: SlotId,
        /// The release.
        image: ImageRef,
        /// Why: an update, a pull-back or a drill.
        purpose: Purpose,
        /// Where its bytes come from.
        source: InstallSource,
    },
    /// The running release is pulled, and the inactive `slot` was hashed and holds `image`, the release
    /// to go back to: no download, its trial starts from Installed.
    OtherSlotHolds {
        /// The inactive slot.
        slot: SlotId,
        /// The release it holds (as signed).
        image: ImageRef,
        /// The running slot.
        from: SlotId,
        /// The pulled version running now.
        pulled: Version,
    },
    /// The slot was written, read back and its sha256 matched.
    Verified {
        /// The running slot.
        from: SlotId,
    },
    /// Download, write or verification failed; a later poll may choose the release again.
    DownloadFailed {
        /// Why.
        reason: String,
    },
    /// The release can never be installed here (it is larger than the slot): remembered as failed.
    Unfit {
        /// Why.
        reason: String,
    },
    /// The bootloader was told to try the new slot once (the Installed state, saved before, asked it).
    TrialStarted,
    /// The agent started (after a reboot, a crash or a cut) and found the bootloader so.
    Started {
        /// The slot running now.
        booted: SlotId,
        /// The bootloader's pending or running trial.
        trial: Option<TrialBoot>,
    },
    /// Every health check passed in the trial boot (or the operator said so: `mark-good`).
    Healthy,
    /// A health check failed in the trial boot.
    Unhealthy {
        /// Which check and why.
        reason: String,
    },
    /// An operator asked to abandon the trial (`device-agent rollback`).
    Abandoned,
    /// Before a commit, the trial slot was hashed again and does not hold the recorded image.
    SlotMismatch {
        /// What the slot holds instead.
        reason: String,
    },
}

impl UpdateState {
    /// The state's name as `status` prints it.
    pub fn name(&self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Downloading { .. } => "downloading",
            UpdateState::Installed { .. } => "installed",
            UpdateState::TrialBoot { .. } => "trial boot",
            UpdateState::Committed { .. } => "committed",
            UpdateState::RolledBack { .. } => "rolled back",
            UpdateState::DrillRolledBack { .. } => "drill rolled back",
            UpdateState::Failed { .. } => "failed",
        }
    }

    /// The same state having seen one more agent start (final states count none).
    fn counting_start(mut self) -> UpdateState {
        if let UpdateState::Downloading { restarts, .. }
        | UpdateState::Installed { restarts, .. }
        | UpdateState::TrialBoot { restarts, .. } = &mut self
        {
            *restarts = restarts.saturating_add(1);
        }
        self
    }

    fn downloading(slot: SlotId, image: ImageRef, purpose: Purpose, source: InstallSource) -> UpdateState {
        UpdateState::Downloading {
            slot,
            image,
            restarts: 0,
            purpose,
            source,
        }
    }

    fn installed(slot: SlotId, image: ImageRef, from: SlotId, purpose: Purpose) -> UpdateState {
        UpdateState::Installed {
            slot,
            image,
            from,
            restarts: 0,
            purpose,
        }
    }

    fn trial_boot(slot: SlotId, image: ImageRef, from: SlotId, purpose: Purpose) -> UpdateState {
        UpdateState::TrialBoot {
            slot,
            image,
            from,
            restarts: 0,
            purpose,
        }
    }

    /// Why the update in progress installs its image (an update for the final states).
    pub fn purpose(&self) -> Purpose {
        match self {
            UpdateState::Downloading { purpose, .. }
            | UpdateState::Installed { purpose, .. }
            | UpdateState::TrialBoot { purpose, .. } => purpose.clone(),
            _ => Purpose::Update,
        }
    }

    /// Agent starts seen in this state (`None` for the final states, which count none).
    pub fn restarts(&self) -> Option<u32> {
        match self {
            UpdateState::Downloading { restarts, .. }
            | UpdateState::Installed { restarts, .. }
            | UpdateState::TrialBoot { restarts, .. } => Some(*restarts),
            _ => None,
        }
    }

    /// Whether no update is in progress (a new one may start).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            UpdateState::Idle
                | UpdateState::Committed { .. }
                | UpdateState::RolledBack { .. }
                | UpdateState::DrillRolledBack { .. }
                | UpdateState::Failed { .. }
        )
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateState::Idle => f.write_str("idle"),
            UpdateState::Downloading {
                slot,
                image,
                purpose,
                source,
                ..
            } => {
                write!(f, "downloading {} into slot {slot}{purpose}{source}", image.version)
            }
            UpdateState::Installed { slot, image, .. } => {
                write!(f, "installed {} in slot {slot}", image.version)
            }
            UpdateState::TrialBoot {
                slot,
                image,
                purpose,
                ..
            } => {
                write!(f, "trial boot of {} in slot {slot}{purpose}", image.version)
            }
            UpdateState::Committed { slot, version } => write!(f, "committed {version} in slot {slot}"),
            UpdateState::RolledBack {
                version, to, reason, ..
            } => {
                write!(f, "rolled back {version} to slot {to}: {reason}")
            }
            UpdateState::DrillRolledBack {
                version, to, drill, ..
            } => write!(
                f,
                "field drill {drill}: {version} passed its health checks and was rolled back to slot {to} on purpose"
            ),
            UpdateState::Failed { version, reason } => write!(f, "failed to install {version}: {reason}"),
        }
    }
}

impl fmt::Display for InstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.via {
            InstallVia::Delta { target } => write!(f, "{} by delta {target}", self.version)?,
            InstallVia::Full => write!(f, "{} by full image", self.version)?,
        }
        match &self.source {
            InstallSource::Repository => write!(f, ", {} bytes downloaded", self.downloaded_bytes)?,
            InstallSource::Bundle { path } => write!(
                f,
                ", {} bytes read from bundle {}",
                self.downloaded_bytes,
                path.display()
            )?,
        }
        if let Some(why) = &self.delta_fallback {
            write!(f, " (delta not used: {why})")?;
        }
        Ok(())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Chosen {
                slot,
                image,
                purpose,
                source,
            } => {
                write!(f, "chosen {} for slot {slot}{purpose}{source}", image.version)
            }
            Event::OtherSlotHolds { slot, image, .. } => {
                write!(f, "slot {slot} holds {} already", image.version)
            }
            Event::Verified { .. } => f.write_str("verified"),
            Event::DownloadFailed { reason } => write!(f, "download failed ({reason})"),
            Event::Unfit { reason } => write!(f, "unfit ({reason})"),
            Event::TrialStarted => f.write_str("trial started"),
            Event::Started { booted, .. } => write!(f, "started in slot {booted}"),
            Event::Healthy => f.write_str("healthy"),
            Event::Unhealthy { reason } => write!(f, "unhealthy ({reason})"),
            Event::Abandoned => f.write_str("abandoned"),
            Event::SlotMismatch { reason } => write!(f, "slot mismatch ({reason})"),
        }
    }
}

/// The side effect a state asks for. The caller performs it only once the state is saved (persist, then
/// act), so a cut before or during it leaves the state that asks for it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do now; the note says why.
    Wait(&'static str),
    /// Mark `slot` bad, then write the chosen release into it and read it back (the caller holds the
    /// download); report [`Event::Verified`], [`Event::DownloadFailed`] or [`Event::Unfit`].
    Install {
        /// The inactive slot.
        slot: SlotId,
    },
    /// Tell the bootloader to try `slot` once; report [`Event::TrialStarted`].
    StartTrial {
        /// The slot to try.
        slot: SlotId,
    },
    /// Reboot into the pending trial of `slot`.
    Reboot {
        /// The slot on trial.
        slot: SlotId,
    },
    /// The trial slot runs: run the health checks; report [`Event::Healthy`] or [`Event::Unhealthy`].
    CheckHealth {
        /// The slot on trial.
        slot: SlotId,
    },
    /// Make the bootloader agree with the commit of `slot` (mark it good; reboot into it if a cut made
    /// the bootloader fall back).
    FinishCommit {
        /// The committed slot.
        slot: SlotId,
    },
    /// Make the bootloader agree with the rejection of `slot` (mark it bad; reboot off it).
    FinishRollback {
        /// The rejected slot.
        slot: SlotId,
    },
}

/// One step of the machine: the new state, what changes with it in the rest of the [`DeviceRecord`],
/// and the side effect to perform once the record is saved ([`DeviceRecord::apply`] does the changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub state: UpdateState,
    /// The anti-downgrade floor rises to this version (at commit; it never goes down).
    pub raise_floor: Option<Version>,
    /// This version failed here and is never retried.
    pub failed: Option<Version>,
    /// What a slot holds from now on: nothing known while it is rewritten, the image once verified.
    pub slot: Option<(SlotId, Option<SlotImage>)>,
    /// The floor goes down to this version: only at the commit of a pull-back, which only a signed
    /// rollout-control instruction starts.
    pub lower_floor: Option<Version>,
    /// A field drill ended here, with this outcome.
    pub drill: Option<DrillResult>,
    /// The side effect that follows, once saved.
    pub action: Action,
}

impl Transition {
    fn to(state: UpdateState, action: Action) -> Transition {
        Transition {
            state,
            raise_floor: None,
            failed: None,
            slot: None,
            lower_floor: None,
            drill: None,
            action,
        }
    }

    fn holding(self, slot: SlotId, image: Option<SlotImage>) -> Transition {
        Transition {
            slot: Some((slot, image)),
            ..self
        }
    }
}

/// What the agent does after the loop breaker stopped an install whose image never ran.
pub const INTERRUPTED: &str =
    "the install kept being interrupted; the release stays eligible and is retried after a backoff";

/// Why an update ends when the bootloader fell back from the trial slot.
const FELL_BACK: &str = "the bootloader fell back to the old slot (new image did not come up)";

/// The one transition function: one arm per allowed (state, event) pair, the rest an error naming both.
/// Pure: the caller saves the result before performing its [`Transition::action`].
pub fn transition(state: UpdateState, event: Event) -> Result<Transition> {
    let drill = match &state {
        UpdateState::TrialBoot {
            image,
            purpose: Purpose::Drill { id },
            ..
        } => Some((id.clone(), image.version.clone())),
        _ => None,
    };
    let t = step(state, event)?;
    // A drill's trial that ends any other way than on purpose is the drill's failure, recorded once.
    Ok(match (drill, &t.state) {
        (Some((id, version)), UpdateState::RolledBack { reason, .. }) => Transition {
            drill: Some(DrillResult::failed(id, version, reason.clone())),
            ..t
        },
        _ => t,
    })
}

fn step(state: UpdateState, event: Event) -> Result<Transition> {
    use Action as A;
    use Event as E;
    use UpdateState as S;
    let to = Transition::to;
    Ok(match (state, event) {
        (state, E::Started { booted, trial }) => restart(state, booted, trial),
        (
            s,
            E::Chosen {
                slot,
                image,
                purpose,
                source,
            },
        ) if s.is_final() => {
            to(S::downloading(slot, image, purpose, source), A::Install { slot }).holding(slot, None)
        }
        (
            s,
            E::OtherSlotHolds {
                slot,
                image,
                from,
                pulled,
            },
        ) if s.is_final() => {
            let held = image.slot_image();
            let purpose = Purpose::PullBack { pulled };
            to(S::installed(slot, image, from, purpose), A::StartTrial { slot }).holding(slot, Some(held))
        }
        (
            S::Downloading {
                slot, image, purpose, ..
            },
            E::Verified { from },
        ) => {
            let written = image.slot_image();
            to(S::installed(slot, image, from, purpose), A::StartTrial { slot }).holding(slot, Some(written))
        }
        (S::Downloading { image, .. }, E::DownloadFailed { reason }) => {
            let failed = S::Failed {
                version: image.version,
                reason,
            };
            to(failed, A::Wait("the install failed; a later poll may try again"))
        }
        (S::Downloading { image, .. }, E::Unfit { reason }) => failed(image, reason),
        (
            S::Installed {
                slot,
                image,
                from,
                purpose,
                ..
            },
            E::TrialStarted,
        ) => to(S::trial_boot(slot, image, from, purpose), A::Reboot { slot }),
        (
            S::TrialBoot {
                slot,
                image,
                from,
                purpose,
                ..
            },
            event,
        ) => return judged(slot, image, from, purpose, event),
        (state, event) => {
            return Err(Error::Transition {
                state: state.name().to_owned(),
                event: event.to_string(),
            })
        }
    })
}

/// The end of a trial boot: judged by the health checks, the operator, or a stale record.
fn judged(slot: SlotId, image: ImageRef, from: SlotId, purpose: Purpose, event: Event) -> Result<Transition> {
    Ok(match event {
        Event::Healthy => healthy(slot, image.version, from, purpose),
        Event::Unhealthy { reason } => rolled_back(slot, image, from, reason),
        Event::Abandoned => rolled_back(slot, image, from, "rolled back by the operator".into()),
        // The slot does not hold the image the record names (a hand-edited or stale record): that says
        // nothing about the release, which stays eligible.
        Event::SlotMismatch { reason } => Transition {
            failed: None,
            ..rolled_back(slot, image, from, reason)
        }
        .holding(slot, None),
        event => {
            return Err(Error::Transition {
                state: UpdateState::trial_boot(slot, image, from, purpose)
                    .name()
                    .to_owned(),
                event: event.to_string(),
            })
        }
    })
}

/// The restart rule, once: an in-progress state counts the agent starts it sees; one that has seen
/// [`MAX_RESTARTS`] gives up on the update (Failed before the trial boot, RolledBack once the new image
/// may have run), so a release that crashes the agent or the device cannot loop forever. Otherwise the
/// state takes its one way forward.
fn restart(state: UpdateState, booted: SlotId, trial: Option<TrialBoot>) -> Transition {
    use UpdateState as S;
    let why = |n: u32| {
        format!(
            "agent restarted {} times in this state (reboot loop breaker)",
            n + 1
        )
    };
    match state {
        // The new image never ran: the release is not to blame. Give up on this attempt only; the
        // next one installs the full image (see `DeviceRecord::last_install`) after a backoff
        // (`DeviceRecord::retry`).
        S::Downloading { image, restarts, .. } | S::Installed { image, restarts, .. }
            if restarts >= MAX_RESTARTS =>
        {
            let stopped = S::Failed {
                version: image.version,
                reason: why(restarts),
            };
            Transition::to(stopped, Action::Wait(INTERRUPTED))
        }
        S::TrialBoot {
            slot,
            image,
            from,
            restarts,
            ..
        } if restarts >= MAX_RESTARTS => rolled_back(slot, image, from, why(restarts)),
        state => way_forward(state.counting_start(), booted, trial),
    }
}

/// Each state's one way forward after a start (each variant's doc says the same in words).
fn way_forward(state: UpdateState, booted: SlotId, trial: Option<TrialBoot>) -> Transition {
    use Action as A;
    use UpdateState as S;
    let action = match &state {
        S::Idle | S::Failed { .. } => A::Wait("nothing pending"),
        S::Downloading {
            source: InstallSource::Repository,
            ..
        } => A::Wait("download interrupted; the next poll starts it over"),
        S::Downloading { .. } => A::Wait(
            "bundle install interrupted; the next poll (or `run --offline`) starts it over from the bundle",
        ),
        S::Committed { slot, .. } => A::FinishCommit { slot: *slot },
        S::RolledBack { slot, .. } | S::DrillRolledBack { slot, .. } => A::FinishRollback { slot: *slot },
        // The bootloader was told and booted the trial, but the cut came before TrialBoot was saved.
        S::Installed {
            slot,
            image,
            from,
            purpose,
            ..
        } if booted == *slot => {
            let trial = S::trial_boot(*slot, image.clone(), *from, purpose.clone());
            return Transition::to(trial, A::CheckHealth { slot: *slot });
        }
        // Saved before the bootloader call: (re)tell it; telling it twice is harmless.
        S::Installed { slot, .. } => A::StartTrial { slot: *slot },
        S::TrialBoot { slot, .. } if booted == *slot => A::CheckHealth { slot: *slot },
        S::TrialBoot { slot, .. } if trial.is_some_and(|t| t.slot == *slot && t.tries_left > 0) => {
            A::Reboot { slot: *slot }
        }
        S::TrialBoot {
            slot, image, from, ..
        } => return rolled_back(*slot, image.clone(), *from, FELL_BACK.into()),
    };
    Transition::to(state, action)
}

/// The trial of `slot` passed. An update or a pull-back commits (a pull-back's version becomes the floor
/// even though it is lower); a drill rolls back to `from` on purpose and records that it passed.
fn healthy(slot: SlotId, version: Version, from: SlotId, purpose: Purpose) -> Transition {
    match purpose {
        Purpose::Update => committed(slot, version),
        Purpose::PullBack { .. } => Transition {
            lower_floor: Some(version.clone()),
            ..committed(slot, version)
        },
        Purpose::Drill { id } => Transition {
            drill: Some(DrillResult::passed(id.clone(), version.clone())),
            ..Transition::to(
                UpdateState::DrillRolledBack {
                    slot,
                    version,
                    to: from,
                    drill: id,
                },
                Action::FinishRollback { slot },
            )
        },
    }
}

/// The trial of `slot` passed: it becomes the primary and its version the floor.
fn committed(slot: SlotId, version: Version) -> Transition {
    Transition {
        raise_floor: Some(version.clone()),
        ..Transition::to(
            UpdateState::Committed { slot, version },
            Action::FinishCommit { slot },
        )
    }
}

/// The install of `image` ends before any trial; the version is never retried.
fn failed(image: ImageRef, reason: String) -> Transition {
    Transition {
        failed: Some(image.version.clone()),
        ..Transition::to(
            UpdateState::Failed {
                version: image.version,
                reason,
            },
            Action::Wait("the release failed here and will not be retried"),
        )
    }
}

/// The trial of `image` in `slot` ends: back to `to`; the version is never retried.
fn rolled_back(slot: SlotId, image: ImageRef, to: SlotId, reason: String) -> Transition {
    Transition {
        failed: Some(image.version.clone()),
        ..Transition::to(
            UpdateState::RolledBack {
                slot,
                version: image.version,
                to,
                reason,
            },
            Action::FinishRollback { slot },
        )
    }
}

/// Where the bytes of an install come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InstallSource {
    /// The configured repository, over the network.
    #[default]
    Repository,
    /// An offline bundle (`device-agent install --bundle`), verified against the pinned root like the
    /// repository; an install it starts is resumed from it, never from the network.
    Bundle {
        /// The bundle file.
        path: PathBuf,
    },
}

impl InstallSource {
    /// Whether this is the configured repository (the default, not written to the record).
    pub fn is_repository(&self) -> bool {
        matches!(self, InstallSource::Repository)
    }
}

impl fmt::Display for InstallSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallSource::Repository => Ok(()),
            InstallSource::Bundle { path } => write!(f, " from bundle {}", path.display()),
        }
    }
}

/// What one slot holds, as far as the agent knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotImage {
    /// Version of the image.
    pub version: Version,
    /// Its sha256.
    pub sha256: Sha256Digest,
    /// Its length in bytes.
    pub length: u64,
}

/// Everything the agent persists about updates, written as one file so it changes atomically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// Where the current (or last) update stands.
    pub state: UpdateState,
    /// Anti-downgrade floor: no release below it is ever installed. Advances only at commit.
    pub floor: Version,
    /// The image in slot A, when known to be a complete verified image.
    pub slot_a: Option<SlotImage>,
    /// The image in slot B, when known to be a complete verified image.
    pub slot_b: Option<SlotImage>,
    /// Versions whose install or trial failed; not retried (bounded, oldest forgotten first).
    #[serde(default)]
    pub failed: Vec<Version>,
    /// How the last (or current) install got its bytes: by delta or full image, and how many were
    /// downloaded. Also the restart rule for deltas: an install interrupted while applying a delta
    /// starts over with the full image (the delta may be what stopped it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_install: Option<InstallReport>,
    /// Failed or interrupted attempts at installing one release, and when the next may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<DownloadRetry>,
    /// When the current (or last) attempt started (seconds since the Unix epoch), for its report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_started_unix: Option<u64>,
    /// The last update that ended, numbered: saved with the state that ended it, so its signed report
    /// is queued even when a cut comes between the two ([`crate::report`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<crate::report::OutcomeFacts>,
    /// The field drills this device took part in and how each ended (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<DrillResult>,
    /// The last release reported as skipped (halted or pulled), so each is reported once, not at
    /// every poll; saved in the same write as its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reported: Option<SkipReported>,
}

/// A release reported as skipped, and why (`skipped_halted` or `skipped_pulled`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkipReported {
    /// The release skipped.
    pub version: Version,
    /// The outcome reported.
    pub outcome: ota_report::Outcome,
}

/// Attempts at one release that ended before its image was verified (a failed download, a kill, a power
/// cut). They say nothing about the release, so it stays eligible; past [`MAX_RESTARTS`] attempts the
/// next ones wait, doubling from [`RetryPolicy::first_backoff`] up to [`RetryPolicy::max_backoff`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRetry {
    /// The release being attempted.
    pub version: Version,
    /// Attempts that ended before the image was verified.
    pub attempts: u32,
    /// The next attempt starts no earlier than this (seconds since the Unix epoch).
    pub next_try_unix: u64,
    /// Why the last attempt ended.
    pub last_reason: String,
}

/// How long attempts at one release wait after the first [`MAX_RESTARTS`] have failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first attempt past [`MAX_RESTARTS`]; it doubles with each further attempt.
    pub first_backoff: std::time::Duration,
    /// The longest wait (hours, not forever: the release is never given up for an interruption).
    pub max_backoff: std::time::Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_backoff: std::time::Duration::from_secs(600),
            max_backoff: std::time::Duration::from_secs(6 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempts + 1`: none for the first [`MAX_RESTARTS`] (a flaky link is
    /// retried at the next poll), then doubling up to the maximum.
    pub fn wait_after(&self, attempts: u32) -> std::time::Duration {
        let Some(past) = attempts.checked_sub(MAX_RESTARTS + 1) else {
            return std::time::Duration::ZERO;
        };
        let factor = 1u32.checked_shl(past.min(20)).unwrap_or(u32::MAX);
        self.first_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Where the bytes of an install came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InstallVia {
    /// The full image, streamed into the inactive slot.
    Full,
    /// A binary delta applied to the running slot's image (issue 5).
    Delta {
        /// The delta's TUF target name.
        target: String,
    },
}

/// How one install went, for `status` and for the restart rule of [`DeviceRecord::last_install`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallReport {
    /// The version installed.
    pub version: Version,
    /// The path used (while in progress: the path being tried).
    pub via: InstallVia,
    /// Bytes downloaded for this install (a delta that was tried and given up counts too).
    pub downloaded_bytes: u64,
    /// Why an offered delta was not used, when the full image was installed instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_fallback: Option<String>,
    /// Where the bytes came from (the repository unless said otherwise).
    #[serde(default, skip_serializing_if = "InstallSource::is_repository")]
    pub source: InstallSource,
}

impl DeviceRecord {
    /// The record of a freshly provisioned device running `image` from `slot`.
    pub fn provisioned(slot: SlotId, image: SlotImage) -> DeviceRecord {
        let floor = image.version.clone();
        let mut record = DeviceRecord {
            state: UpdateState::Idle,
            floor,
            slot_a: None,
            slot_b: None,
            failed: Vec::new(),
            last_install: None,
            retry: None,
            attempt_started_unix: None,
            last_outcome: None,
            drills: Vec::new(),
            skip_reported: None,
        };
        *record.slot_mut(slot) = Some(image);
        record
    }

    /// What `slot` holds.
    pub fn slot(&self, slot: SlotId) -> Option<&SlotImage> {
        match slot {
            SlotId::A => self.slot_a.as_ref(),
            SlotId::B => self.slot_b.as_ref(),
        }
    }

    /// What `slot` holds, for changing.
    pub fn slot_mut(&mut self, slot: SlotId) -> &mut Option<SlotImage> {
        match slot {
            SlotId::A => &mut self.slot_a,
            SlotId::B => &mut self.slot_b,
        }
    }

    /// Takes a [`Transition`]'s changes (state, floor, failed versions, slot contents) and returns the
    /// side effect to perform once this record is saved.
    pub fn apply(&mut self, transition: Transition) -> Action {
        let Transition {
            state,
            raise_floor,
            failed,
            slot,
            lower_floor,
            drill,
            action,
        } = transition;
        self.state = state;
        if let Some(version) = raise_floor {
            if version > self.floor {
                self.floor = version;
            }
        }
        if let Some(version) = lower_floor {
            self.floor = version;
        }
        if let Some(result) = drill {
            self.remember_drill(result);
        }
        if let Some(version) = failed {
            self.remember_failed(version);
        }
        if let Some((id, image)) = slot {
            *self.slot_mut(id) = image;
        }
        action
    }

    /// Counts an attempt at `version` that ended before its image was verified, and sets when the next
    /// may start (`now_unix` plus the policy's wait).
    pub fn count_attempt(&mut self, version: &Version, reason: String, now_unix: u64, policy: &RetryPolicy) {
        let attempts = match &self.retry {
            Some(r) if r.version == *version => r.attempts.saturating_add(1),
            _ => 1,
        };
        self.retry = Some(DownloadRetry {
            version: version.clone(),
            attempts,
            next_try_unix: now_unix.saturating_add(policy.wait_after(attempts).as_secs()),
            last_reason: reason,
        });
    }

    /// When an attempt at `version` may start, if it must wait past `now_unix`.
    pub fn retry_wait(&self, version: &Version, now_unix: u64) -> Option<&DownloadRetry> {
        self.retry
            .as_ref()
            .filter(|r| r.version == *version && r.next_try_unix > now_unix)
    }

    /// Remembers a drill's outcome (bounded, oldest forgotten first; a drill id is run once).
    pub fn remember_drill(&mut self, result: DrillResult) {
        self.drills.retain(|d| d.id != result.id);
        self.drills.push(result);
        while self.drills.len() > MAX_DRILLS_REMEMBERED {
            self.drills.remove(0);
        }
    }

    /// Remembers a failed version.
    pub fn remember_failed(&mut self, version: Version) {
        if !self.failed.contains(&version) {
            self.failed.push(version);
        }
        while self.failed.len() > MAX_FAILED_REMEMBERED {
            self.failed.remove(0);
        }
    }
}

/// The record's file: `<state_dir>/state.json`.
#[derive(Clone, Debug)]
pub struct RecordFile {
    path: PathBuf,
}

/// Largest state file accepted (it is a few hundred bytes; anything bigger is corruption).
const MAX_STATE_FILE: u64 = 64 * 1024;

impl RecordFile {
    /// The record file in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> RecordFile {
        RecordFile {
            path: state_dir.join("state.json"),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file exists.
    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// Reads the record (bounded), refusing corrupt or unknown content.
    pub fn load(&self) -> Result<DeviceRecord> {
        let bytes = match ota_fs::read_bounded(&self.path, MAX_STATE_FILE) {
            Ok(bytes) => bytes,
            Err(ota_fs::Error::TooLarge { .. }) => {
                return Err(Error::StateCorrupt {
                    path: self.path.clone(),
                    why: format!("larger than {MAX_STATE_FILE} bytes"),
                })
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::StateCorrupt {
            path: self.path.clone(),
            why: e.to_string(),
        })
    }

    /// Persists the record: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, record: &DeviceRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::StateCorrupt {
            path: self.path.clone(),
            why: format!("cannot serialize: {e}"),
        })?;
        Ok(ota_fs::write_atomic(&self.path, &bytes, 0o600)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(v: &str) -> ImageRef {
        ImageRef {
            target: format!("fw/{v}.img"),
            version: v.parse().unwrap(),
            sha256: Sha256Digest::of(v.as_bytes()),
            length: 3,
        }
    }

    fn version(v: &str) -> Version {
        v.parse().unwrap()
    }

    fn next(s: UpdateState, e: Event) -> Result<UpdateState> {
        transition(s, e).map(|t| t.state)
    }

    fn started(booted: SlotId, trial: Option<(SlotId, u8)>) -> Event {
        Event::Started {
            booted,
            trial: trial.map(|(slot, tries_left)| TrialBoot { slot, tries_left }),
        }
    }

    fn walk(mut s: UpdateState, events: Vec<Event>) -> UpdateState {
        for e in events {
            s = next(s, e).unwrap();
        }
        s
    }

    fn provisioned() -> DeviceRecord {
        DeviceRecord::provisioned(
            SlotId::A,
            SlotImage {
                version: version("1.0.0"),
                sha256: Sha256Digest::of(b"v1"),
                length: 2,
            },
        )
    }

    /// The states of one update of 2.0.0 into slot B from slot A, each with the action it asked for.
    fn states_of_an_update() -> Vec<(UpdateState, Action)> {
        let mut out = Vec::new();
        let mut s = UpdateState::Idle;
        for e in [
            Event::Chosen {
                slot: SlotId::B,
                image: image("2.0.0"),
                purpose: Purpose::Update,
                source: InstallSource::Repository,
            },
            Event::Verified { from: SlotId::A },
            Event::TrialStarted,
        ] {
            let t = transition(s, e).unwrap();
            out.push((t.state.clone(), t.action));
            s = t.state;
        }
        out
    }

    #[test]
    fn healthy_update_ends_committed() {
        let s = walk(
            UpdateState::Idle,
            vec![
                Event::Chosen {
                    slot: SlotId::B,
                    image: image("2.0.0"),
                    purpose: Purpose::Update,
                    source: InstallSource::Repository,
                },
                Event::Verified { from: SlotId::A },
                Event::TrialStarted,
                started(SlotId::B, Some((SlotId::B, 0))),
                Event::Healthy,
            ],
        );
        assert_eq!(
            s,
            UpdateState::Committed {
                slot: SlotId::B,
                version: "2.0.0".parse().unwrap()
            }
        );
    }

    #[test]
    fn unhealthy_trial_rolls_back_to_the_old_slot() {
        let s = walk(
            UpdateState::Committed {
                slot: SlotId::B,
                version: "2.0.0".parse().unwrap(),
            },
            vec![
                Event::Chosen {
                    slot: SlotId::A,
                    image: image("3.0.0"),
                    purpose: Purpose::Update,
                    source: InstallSource::Repository,
                },
                Event::Verified { from: SlotId::B },
                Event::TrialStarted,
                Event::Unhealthy {
                    reason: "app: exit 1".into(),
                },
            ],
        );
        match s {
            UpdateState::RolledBack {
                slot,
                to,
                version,
                reason,
            } => {
                assert_eq!((slot, to), (SlotId::A, SlotId::B));
                assert_eq!(version, "3.0.0".parse::<Version>().unwrap());
                assert!(reason.contains("app"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loop_breaker_ends_every_in_progress_state() {
        let chosen = next(
            UpdateState::Idle,
            Event::Chosen {
                slot: SlotId::B,
                image: image("2.0.0"),
                purpose: Purpose::Update,
                source: InstallSource::Repository,
            },
        )
        .unwrap();
        let installed = next(chosen.clone(), Event::Verified { from: SlotId::A }).unwrap();
        let trial = next(installed.clone(), Event::TrialStarted).unwrap();
        // Starts that keep each state where it is: old slot running; for the trial, the new one.
        for (start, booted, want) in [
            (chosen, SlotId::A, "failed"),
            (installed, SlotId::A, "failed"),
            (trial, SlotId::B, "rolled back"),
        ] {
            let mut s = start;
            for n in 1..=MAX_RESTARTS {
                s = next(s, started(booted, None)).unwrap();
                assert!(!s.is_final(), "{s:?}");
                assert_eq!(s.restarts(), Some(n), "{s:?}");
            }
            let t = transition(s, started(booted, None)).unwrap();
            assert_eq!(t.state.name(), want);
            assert!(t.state.to_string().contains("loop breaker"), "{}", t.state);
            // Issue 23: an image that never ran does not condemn the release; a trial that keeps
            // crashing does.
            let remembered = (want == "rolled back").then(|| version("2.0.0"));
            assert_eq!(t.failed, remembered, "{want}");
        }
    }

    #[test]
    fn attempts_are_counted_and_back_off_after_the_loop_breaker() {
        let policy = RetryPolicy {
            first_backoff: std::time::Duration::from_secs(60),
            max_backoff: std::time::Duration::from_secs(300),
        };
        let waits: Vec<u64> = (1..=8).map(|n| policy.wait_after(n).as_secs()).collect();
        assert_eq!(waits, [0, 0, 0, 60, 120, 240, 300, 300]);
        let mut rec = provisioned();
        let v2 = version("2.0.0");
        for n in 1..=4 {
            rec.count_attempt(&v2, format!("cut {n}"), 1000, &policy);
        }
        let r = rec.retry.clone().unwrap();
        assert_eq!(
            (r.attempts, r.next_try_unix, r.last_reason.as_str()),
            (4, 1060, "cut 4")
        );
        assert!(rec.retry_wait(&v2, 1059).is_some());
        assert!(rec.retry_wait(&v2, 1060).is_none());
        assert!(rec.retry_wait(&version("3.0.0"), 0).is_none());
        rec.count_attempt(&version("3.0.0"), "other".into(), 1000, &policy);
        assert_eq!(
            rec.retry.unwrap().attempts,
            1,
            "a new release starts its own count"
        );
    }

    #[test]
    fn a_trial_slot_not_holding_its_image_rolls_back_without_condemning_the_release() {
        let [_, _, (trial, _)] = states_of_an_update().try_into().unwrap();
        let t = transition(
            trial,
            Event::SlotMismatch {
                reason: "slot b does not hold 2.0.0".into(),
            },
        )
        .unwrap();
        assert_eq!(t.state.name(), "rolled back");
        assert_eq!((t.failed, t.raise_floor), (None, None));
        assert_eq!(t.slot, Some((SlotId::B, None)));
        assert_eq!(t.action, Action::FinishRollback { slot: SlotId::B });
    }

    #[test]
    fn each_state_has_one_way_forward_after_a_start() {
        let [(downloading, _), (installed, _), (trial, _)] = states_of_an_update().try_into().unwrap();
        let action = |s: &UpdateState, booted, trial| transition(s.clone(), started(booted, trial)).unwrap();
        assert_eq!(
            action(&downloading, SlotId::A, None).action,
            Action::Wait("download interrupted; the next poll starts it over")
        );
        // Installed, the bootloader not told (or told and not yet rebooted): tell it.
        assert_eq!(
            action(&installed, SlotId::A, None).action,
            Action::StartTrial { slot: SlotId::B }
        );
        // Installed, but the trial booted before TrialBoot was saved: the trial is underway.
        let t = action(&installed, SlotId::B, Some((SlotId::B, 0)));
        assert_eq!(t.state.name(), "trial boot");
        assert_eq!(t.action, Action::CheckHealth { slot: SlotId::B });
        assert_eq!(t.state.restarts(), Some(0));
        // TrialBoot: running the new slot: judge it; trial still pending: reboot; else it fell back.
        assert_eq!(
            action(&trial, SlotId::B, Some((SlotId::B, 0))).action,
            Action::CheckHealth { slot: SlotId::B }
        );
        assert_eq!(
            action(&trial, SlotId::A, Some((SlotId::B, 1))).action,
            Action::Reboot { slot: SlotId::B }
        );
        let t = action(&trial, SlotId::A, None);
        assert!(t.state.to_string().contains("fell back"), "{}", t.state);
        assert_eq!(t.action, Action::FinishRollback { slot: SlotId::B });
        assert_eq!(t.failed, Some(version("2.0.0")));
        for (s, want) in [
            (
                UpdateState::Committed {
                    slot: SlotId::B,
                    version: version("2.0.0"),
                },
                Action::FinishCommit { slot: SlotId::B },
            ),
            (
                UpdateState::RolledBack {
                    slot: SlotId::B,
                    version: version("2.0.0"),
                    to: SlotId::A,
                    reason: "x".into(),
                },
                Action::FinishRollback { slot: SlotId::B },
            ),
            (UpdateState::Idle, Action::Wait("nothing pending")),
        ] {
            let t = action(&s, SlotId::A, None);
            assert_eq!((t.state, t.action), (s, want));
        }
    }

    /// Persist, then act: the agent saves each state before performing its action. A crash (or a cut)
    /// after the save and before the action leaves the bootloader as it was, and the next start must ask
    /// for the same action again, never skip it or give up on the release.
    #[test]
    fn a_crash_between_saving_a_state_and_its_action_repeats_the_action() {
        for (saved, action) in states_of_an_update() {
            // What the bootloader shows when the action never happened.
            let found = match &action {
                Action::Install { .. } | Action::StartTrial { .. } => started(SlotId::A, None),
                Action::Reboot { slot } => started(SlotId::A, Some((*slot, 1))),
                other => panic!("unexpected action {other:?}"),
            };
            let t = transition(saved.clone(), found).unwrap();
            assert_eq!(t.state.name(), saved.name(), "{saved:?}");
            assert_eq!(t.failed, None, "{saved:?}");
            match action {
                // The interrupted download is started over by the next poll.
                Action::Install { .. } => {
                    assert!(matches!(t.action, Action::Wait(n) if n.contains("next poll")))
                }
                _ => assert_eq!(t.action, action, "{saved:?}"),
            }
        }
        // In particular: Installed is saved before the bootloader is told to try the slot; a crash right
        // there, then a start in the old slot with no trial pending, starts the trial: not a rollback.
        let (installed, action) = states_of_an_update().swap_remove(1);
        assert_eq!(action, Action::StartTrial { slot: SlotId::B });
        let again = transition(installed, started(SlotId::A, None)).unwrap();
        assert_eq!(again.action, Action::StartTrial { slot: SlotId::B });
        let trial = transition(again.state, Event::TrialStarted).unwrap();
        assert_eq!(trial.action, Action::Reboot { slot: SlotId::B });
    }

    #[test]
    fn the_floor_failed_versions_and_slot_contents_come_from_the_transition() {
        let mut rec = provisioned();
        let action = rec.apply(
            transition(
                rec.state.clone(),
                Event::Chosen {
                    slot: SlotId::B,
                    image: image("2.0.0"),
                    purpose: Purpose::Update,
                    source: InstallSource::Repository,
                },
            )
            .unwrap(),
        );
        assert_eq!(action, Action::Install { slot: SlotId::B });
        rec.slot_b = Some(image("0.9.0").slot_image());
        let t = transition(rec.state.clone(), Event::Verified { from: SlotId::A }).unwrap();
        assert_eq!(t.slot, Some((SlotId::B, Some(image("2.0.0").slot_image()))));
        rec.apply(t);
        assert_eq!(rec.slot(SlotId::B), Some(&image("2.0.0").slot_image()));
        rec.apply(transition(rec.state.clone(), Event::TrialStarted).unwrap());
        let t = transition(rec.state.clone(), Event::Healthy).unwrap();
        assert_eq!(
            (t.raise_floor.clone(), t.failed.clone()),
            (Some(version("2.0.0")), None)
        );
        rec.apply(t);
        assert_eq!(rec.floor, version("2.0.0"));
        // The floor never goes down, even if a transition names an older version.
        rec.apply(Transition {
            raise_floor: Some(version("1.5.0")),
            ..Transition::to(rec.state.clone(), Action::Wait("x"))
        });
        assert_eq!(rec.floor, version("2.0.0"));

        // Chosen forgets what the slot held; a download failure is retried later, an unfit release never.
        let chosen = |rec: &DeviceRecord| {
            transition(
                rec.state.clone(),
                Event::Chosen {
                    slot: SlotId::A,
                    image: image("3.0.0"),
                    purpose: Purpose::Update,
                    source: InstallSource::Repository,
                },
            )
            .unwrap()
        };
        let t = chosen(&rec);
        assert_eq!(t.slot, Some((SlotId::A, None)));
        let downloading = t.state;
        let t = transition(
            downloading.clone(),
            Event::DownloadFailed { reason: "net".into() },
        )
        .unwrap();
        assert_eq!((t.state.name(), t.failed), ("failed", None));
        let t = transition(
            downloading,
            Event::Unfit {
                reason: "too big".into(),
            },
        )
        .unwrap();
        assert_eq!(
            (t.state.name(), t.failed.clone()),
            ("failed", Some(version("3.0.0")))
        );
        rec.apply(t);
        assert_eq!(rec.failed, vec![version("3.0.0")]);
        assert_eq!(rec.floor, version("2.0.0"), "a failure leaves the floor alone");
    }

    #[test]
    fn events_out_of_place_are_errors_naming_both() {
        let cases = [
            (UpdateState::Idle, Event::Healthy),
            (UpdateState::Idle, Event::Verified { from: SlotId::A }),
            (UpdateState::Idle, Event::TrialStarted),
            (
                UpdateState::Downloading {
                    slot: SlotId::B,
                    image: image("2.0.0"),
                    restarts: 0,
                    purpose: Purpose::Update,
                    source: InstallSource::Repository,
                },
                Event::Chosen {
                    slot: SlotId::B,
                    image: image("3.0.0"),
                    purpose: Purpose::Update,
                    source: InstallSource::Repository,
                },
            ),
            (
                UpdateState::Committed {
                    slot: SlotId::B,
                    version: "2.0.0".parse().unwrap(),
                },
                Event::Abandoned,
            ),
        ];
        for (state, event) in cases {
            let (sn, en) = (state.name(), event.to_string());
            let err = transition(state, event).unwrap_err().to_string();
            assert!(err.contains(sn) && err.contains(&en), "{err}");
        }
    }

    #[test]
    fn a_restart_in_a_final_state_changes_nothing() {
        let s = UpdateState::Failed {
            version: "2.0.0".parse().unwrap(),
            reason: "x".into(),
        };
        assert_eq!(next(s.clone(), started(SlotId::A, None)).unwrap(), s);
    }

    #[test]
    fn record_round_trips_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::in_dir(dir.path());
        let mut rec = provisioned();
        rec.state = next(
            rec.state,
            Event::Chosen {
                slot: SlotId::B,
                image: image("2.0.0"),
                purpose: Purpose::Update,
                source: InstallSource::Repository,
            },
        )
        .unwrap();
        file.save(&rec).unwrap();
        assert_eq!(file.load().unwrap(), rec);
        std::fs::write(file.path(), br#"{"state":{"state":"idle"},"flor":"1.0.0"}"#).unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        std::fs::write(file.path(), vec![b' '; 70_000]).unwrap();
        assert!(file.load().unwrap_err().to_string().contains("larger"));
    }

    /// A device upgraded in the field reads the record its previous agent wrote (state.json as written
    /// before issue 21; the format did not change).
    #[test]
    fn a_record_written_by_the_previous_agent_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::in_dir(dir.path());
        std::fs::write(file.path(), OLD_TRIAL_BOOT_RECORD).unwrap();
        let rec = file.load().unwrap();
        assert_eq!(rec.state.name(), "trial boot");
        assert_eq!(rec.state.restarts(), Some(1));
        assert_eq!(rec.failed, vec![version("1.5.0")]);
        assert_eq!(
            serde_json::to_string_pretty(&rec).unwrap(),
            OLD_TRIAL_BOOT_RECORD,
            "written back byte for byte"
        );
        let t = transition(rec.state, started(SlotId::B, None)).unwrap();
        assert_eq!(t.action, Action::CheckHealth { slot: SlotId::B });
    }

    const OLD_TRIAL_BOOT_RECORD: &str = r#"{
  "state": {
    "state": "trial_boot",
    "slot": "b",
    "image": {
      "target": "fw/2.0.0.img",
      "version": "2.0.0",
      "sha256": "f22abd6773ab232869321ad4b1e47ac0c908febf4f3a2bd10c8066140f741261",
      "length": 3
    },
    "from": "a",
    "restarts": 1
  },
  "floor": "1.0.0",
  "slot_a": {
    "version": "1.0.0",
    "sha256": "3bfc269594ef649228e9a74bab00f042efc91d5acc6fbee31a382e80d42388fe",
    "length": 2
  },
  "slot_b": {
    "version": "2.0.0",
    "sha256": "f22abd6773ab232869321ad4b1e47ac0c908febf4f3a2bd10c8066140f741261",
    "length": 3
  },
  "failed": [
    "1.5.0"
  ],
  "last_install": {
    "version": "2.0.0",
    "via": {
      "kind": "delta",
      "target": "fw/2.0.0.delta"
    },
    "downloaded_bytes": 1234
  }
}"#;

    #[test]
    fn failed_versions_are_bounded() {
        let mut rec = provisioned();
        for i in 0..40u64 {
            rec.remember_failed(Version::new(2, i, 0));
        }
        assert_eq!(rec.failed.len(), MAX_FAILED_REMEMBERED);
        assert_eq!(rec.failed.first(), Some(&Version::new(2, 8, 0)));
    }

    #[test]
    fn a_pull_back_from_the_other_slot_trials_it_without_download_and_lowers_the_floor() {
        let mut rec = provisioned();
        rec.floor = version("2.0.0");
        let t = transition(
            UpdateState::Committed {
                slot: SlotId::A,
                version: version("2.0.0"),
            },
            Event::OtherSlotHolds {
                slot: SlotId::B,
                image: image("1.5.0"),
                from: SlotId::A,
                pulled: version("2.0.0"),
            },
        )
        .unwrap();
        // Installed (saved) before the bootloader is told, so a cut there retries the request.
        assert_eq!(t.state.name(), "installed");
        assert_eq!(t.action, Action::StartTrial { slot: SlotId::B });
        assert_eq!(t.slot, Some((SlotId::B, Some(image("1.5.0").slot_image()))));
        let pulled = Purpose::PullBack {
            pulled: version("2.0.0"),
        };
        assert_eq!(t.state.purpose(), pulled);
        let again = transition(t.state.clone(), started(SlotId::A, None)).unwrap();
        assert_eq!(again.action, Action::StartTrial { slot: SlotId::B });
        let trial = next(t.state, Event::TrialStarted).unwrap();
        assert_eq!(trial.purpose(), pulled);
        assert!(trial.to_string().contains("2.0.0 is pulled"), "{trial}");
        let t = transition(trial.clone(), Event::Healthy).unwrap();
        assert_eq!(t.state.name(), "committed");
        assert_eq!(t.lower_floor, Some(version("1.5.0")));
        rec.apply(t);
        assert_eq!(
            rec.floor,
            version("1.5.0"),
            "the floor follows a signed pull-back"
        );
        // An unhealthy pull-back trial rolls back like any other, floor untouched.
        let t = transition(trial, Event::Unhealthy { reason: "x".into() }).unwrap();
        assert_eq!((t.state.name(), t.lower_floor), ("rolled back", None));
        // Only from a final state.
        let busy = next(
            UpdateState::Idle,
            Event::Chosen {
                slot: SlotId::B,
                image: image("3.0.0"),
                purpose: Purpose::Update,
                source: InstallSource::Repository,
            },
        )
        .unwrap();
        let held = Event::OtherSlotHolds {
            slot: SlotId::B,
            image: image("1.5.0"),
            from: SlotId::A,
            pulled: version("2.0.0"),
        };
        assert!(transition(busy, held).is_err());
    }

    #[test]
    fn a_drill_rolls_back_on_purpose_when_healthy_and_records_its_outcome() {
        let drill = Purpose::Drill { id: "spring".into() };
        let chosen = next(
            UpdateState::Idle,
            Event::Chosen {
                slot: SlotId::B,
                image: image("2.0.0"),
                purpose: drill.clone(),
                source: InstallSource::Repository,
            },
        )
        .unwrap();
        let trial = walk(
            chosen,
            vec![Event::Verified { from: SlotId::A }, Event::TrialStarted],
        );
        assert_eq!(trial.purpose(), drill);
        let t = transition(trial.clone(), Event::Healthy).unwrap();
        assert_eq!(t.state.name(), "drill rolled back");
        assert_eq!(t.action, Action::FinishRollback { slot: SlotId::B });
        assert_eq!((t.raise_floor.clone(), t.failed.clone()), (None, None));
        assert_eq!(
            t.drill,
            Some(DrillResult::passed("spring".into(), version("2.0.0")))
        );
        let mut rec = provisioned();
        rec.apply(t.clone());
        assert_eq!(rec.floor, version("1.0.0"), "a drill never moves the floor");
        assert_eq!(rec.drills.len(), 1);
        // A cut after saving it: the rollback is finished again, wherever the device came up.
        for booted in [SlotId::A, SlotId::B] {
            let again = transition(t.state.clone(), started(booted, None)).unwrap();
            assert_eq!(again.action, Action::FinishRollback { slot: SlotId::B });
        }
        // An unhealthy drill, or one the bootloader fell back from, is the drill's failure.
        let failed = transition(trial.clone(), Event::Unhealthy { reason: "app".into() }).unwrap();
        assert_eq!(failed.state.name(), "rolled back");
        assert_eq!(failed.drill.map(|d| d.outcome), Some(DrillOutcome::DrillFailed));
        let fell = transition(trial, started(SlotId::A, None)).unwrap();
        assert_eq!(fell.drill.map(|d| d.outcome), Some(DrillOutcome::DrillFailed));
    }
}
