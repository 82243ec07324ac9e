//! The update as an explicit state machine, and the record that persists it.
//!
//! ```text
//!            Chosen                Verified            TrialRequested             Healthy
//!  Idle ───────────────► Downloading ───────► Installed ─────────────► TrialBoot ─────────► Committed
//!  (or any final state)     │ Restarted ↺         │ Restarted ↺            │ Restarted ↺
//!                           │ DownloadFailed      │ BootLoop               │ Unhealthy / FellBack /
//!                           ▼ BootLoop            ▼                        ▼ BootLoop / Abandoned
//!                         Failed ◄────────────────┘                     RolledBack
//! ```
//!
//! [`next`] is the only place a state changes. The agent persists the new state (with the rest of the
//! [`DeviceRecord`]) *before* the side effect it announces (mark the slot bad, write it, start the trial,
//! reboot, commit, roll back), so after a power cut or crash in any state there is exactly one way forward,
//! described on each variant. Every in-progress state counts the agent starts it has seen (`restarts`);
//! past [`MAX_RESTARTS`] the loop breaker gives up on the update (Failed, or RolledBack once the new image
//! has been booted), so a release that crashes the agent or the device cannot cause an endless loop.

use std::fmt;
use std::path::{Path, PathBuf};

use ota_release::{Sha256Digest, Version};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::SlotId;

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
    },
    /// `slot` holds `image`, read back and verified. After a restart: (re)start the trial and reboot; if
    /// the device already runs `slot`, the trial is underway: go to TrialBoot.
    Installed {
        /// The slot holding the new image.
        slot: SlotId,
        /// The verified image.
        image: ImageRef,
        /// The slot running the old image, to come back to.
        from: SlotId,
        /// Agent starts seen in this state.
        restarts: u32,
    },
    /// A trial boot of `slot` was requested. After a restart: if running `slot`, run the health checks;
    /// if the bootloader fell back to `from`, the trial failed: roll back.
    TrialBoot {
        /// The slot on trial.
        slot: SlotId,
        /// Its image.
        image: ImageRef,
        /// The slot running the old image.
        from: SlotId,
        /// Agent starts seen in this state.
        restarts: u32,
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
    /// The install of `version` failed before any trial; the running slot was never touched. Final.
    Failed {
        /// The version that failed (not retried until a newer one appears).
        version: Version,
        /// Why.
        reason: String,
    },
}

/// What happened, as seen by the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Selection chose `image` for the inactive `slot`.
    Chosen {
        /// The inactive slot.
        slot: SlotId,
        /// The release.
        image: ImageRef,
    },
    /// The slot was written, read back and its sha256 matched.
    Verified {
        /// The running slot.
        from: SlotId,
    },
    /// Download, write or verification failed.
    DownloadFailed {
        /// Why.
        reason: String,
    },
    /// The bootloader was told to try the new slot once; a reboot follows.
    TrialRequested,
    /// The agent (re)started in this state.
    Restarted,
    /// Every health check passed in the trial boot.
    Healthy,
    /// A health check failed in the trial boot.
    Unhealthy {
        /// Which check and why.
        reason: String,
    },
    /// After the trial reboot the bootloader runs the old slot: the new image did not come up.
    FellBack,
    /// An operator asked to abandon the trial (`device-agent rollback`).
    Abandoned,
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
            UpdateState::Failed { .. } => "failed",
        }
    }

    /// Whether no update is in progress (a new one may start).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            UpdateState::Idle
                | UpdateState::Committed { .. }
                | UpdateState::RolledBack { .. }
                | UpdateState::Failed { .. }
        )
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateState::Idle => f.write_str("idle"),
            UpdateState::Downloading { slot, image, .. } => {
                write!(f, "downloading {} into slot {slot}", image.version)
            }
            UpdateState::Installed { slot, image, .. } => {
                write!(f, "installed {} in slot {slot}", image.version)
            }
            UpdateState::TrialBoot { slot, image, .. } => {
                write!(f, "trial boot of {} in slot {slot}", image.version)
            }
            UpdateState::Committed { slot, version } => write!(f, "committed {version} in slot {slot}"),
            UpdateState::RolledBack {
                version, to, reason, ..
            } => {
                write!(f, "rolled back {version} to slot {to}: {reason}")
            }
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
        write!(f, ", {} bytes downloaded", self.downloaded_bytes)?;
        if let Some(why) = &self.delta_fallback {
            write!(f, " (delta not used: {why})")?;
        }
        Ok(())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Chosen { slot, image } => write!(f, "chosen {} for slot {slot}", image.version),
            Event::Verified { .. } => f.write_str("verified"),
            Event::DownloadFailed { reason } => write!(f, "download failed ({reason})"),
            Event::TrialRequested => f.write_str("trial requested"),
            Event::Restarted => f.write_str("restarted"),
            Event::Healthy => f.write_str("healthy"),
            Event::Unhealthy { reason } => write!(f, "unhealthy ({reason})"),
            Event::FellBack => f.write_str("fell back"),
            Event::Abandoned => f.write_str("abandoned"),
        }
    }
}

/// The one transition function. Pure: the caller persists the result before acting on it.
pub fn next(state: UpdateState, event: Event) -> Result<UpdateState> {
    use Event as E;
    use UpdateState as S;
    let over = |restarts: u32| restarts >= MAX_RESTARTS;
    let loop_reason = |n: u32| format!("agent restarted {n} times in this state (reboot loop breaker)");
    Ok(match (state, event) {
        (s, E::Chosen { slot, image }) if s.is_final() => S::Downloading {
            slot,
            image,
            restarts: 0,
        },
        (S::Downloading { slot, image, .. }, E::Verified { from }) => S::Installed {
            slot,
            image,
            from,
            restarts: 0,
        },
        (S::Downloading { image, .. }, E::DownloadFailed { reason }) => S::Failed {
            version: image.version,
            reason,
        },
        (S::Downloading { image, restarts, .. }, E::Restarted) if over(restarts) => S::Failed {
            version: image.version,
            reason: loop_reason(restarts + 1),
        },
        (
            S::Downloading {
                slot,
                image,
                restarts,
            },
            E::Restarted,
        ) => S::Downloading {
            slot,
            image,
            restarts: restarts + 1,
        },
        (
            S::Installed {
                slot, image, from, ..
            },
            E::TrialRequested,
        ) => S::TrialBoot {
            slot,
            image,
            from,
            restarts: 0,
        },
        (S::Installed { image, restarts, .. }, E::Restarted) if over(restarts) => S::Failed {
            version: image.version,
            reason: loop_reason(restarts + 1),
        },
        (
            S::Installed {
                slot,
                image,
                from,
                restarts,
            },
            E::Restarted,
        ) => S::Installed {
            slot,
            image,
            from,
            restarts: restarts + 1,
        },
        (
            S::TrialBoot {
                slot,
                image,
                from,
                restarts,
            },
            E::Restarted,
        ) if over(restarts) => S::RolledBack {
            slot,
            version: image.version,
            to: from,
            reason: loop_reason(restarts + 1),
        },
        (
            S::TrialBoot {
                slot,
                image,
                from,
                restarts,
            },
            E::Restarted,
        ) => S::TrialBoot {
            slot,
            image,
            from,
            restarts: restarts + 1,
        },
        (S::TrialBoot { slot, image, .. }, E::Healthy) => S::Committed {
            slot,
            version: image.version,
        },
        (
            S::TrialBoot {
                slot, image, from, ..
            },
            E::Unhealthy { reason },
        ) => S::RolledBack {
            slot,
            version: image.version,
            to: from,
            reason,
        },
        (
            S::TrialBoot {
                slot, image, from, ..
            },
            E::FellBack,
        ) => S::RolledBack {
            slot,
            version: image.version,
            to: from,
            reason: "the bootloader fell back to the old slot (new image did not come up)".into(),
        },
        (
            S::TrialBoot {
                slot, image, from, ..
            },
            E::Abandoned,
        ) => S::RolledBack {
            slot,
            version: image.version,
            to: from,
            reason: "rolled back by the operator".into(),
        },
        (s, E::Restarted) if s.is_final() => s,
        (state, event) => {
            return Err(Error::Transition {
                state: state.name().to_owned(),
                event: event.to_string(),
            });
        }
    })
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

    fn walk(mut s: UpdateState, events: Vec<Event>) -> UpdateState {
        for e in events {
            s = next(s, e).unwrap();
        }
        s
    }

    #[test]
    fn healthy_update_ends_committed() {
        let s = walk(
            UpdateState::Idle,
            vec![
                Event::Chosen {
                    slot: SlotId::B,
                    image: image("2.0.0"),
                },
                Event::Verified { from: SlotId::A },
                Event::TrialRequested,
                Event::Restarted,
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
                },
                Event::Verified { from: SlotId::B },
                Event::TrialRequested,
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
            },
        )
        .unwrap();
        let installed = next(chosen.clone(), Event::Verified { from: SlotId::A }).unwrap();
        let trial = next(installed.clone(), Event::TrialRequested).unwrap();
        for (start, want) in [(chosen, "failed"), (installed, "failed"), (trial, "rolled back")] {
            let mut s = start;
            for _ in 0..MAX_RESTARTS {
                s = next(s, Event::Restarted).unwrap();
                assert!(!s.is_final(), "{s:?}");
            }
            s = next(s, Event::Restarted).unwrap();
            assert_eq!(s.name(), want);
            assert!(s.to_string().contains("loop breaker"), "{s}");
        }
    }

    #[test]
    fn events_out_of_place_are_errors_naming_both() {
        let cases = [
            (UpdateState::Idle, Event::Healthy),
            (UpdateState::Idle, Event::Verified { from: SlotId::A }),
            (
                UpdateState::Downloading {
                    slot: SlotId::B,
                    image: image("2.0.0"),
                    restarts: 0,
                },
                Event::Chosen {
                    slot: SlotId::B,
                    image: image("3.0.0"),
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
            let err = next(state, event).unwrap_err().to_string();
            assert!(err.contains(sn) && err.contains(&en), "{err}");
        }
    }

    #[test]
    fn a_restart_in_a_final_state_changes_nothing() {
        let s = UpdateState::Failed {
            version: "2.0.0".parse().unwrap(),
            reason: "x".into(),
        };
        assert_eq!(next(s.clone(), Event::Restarted).unwrap(), s);
    }

    #[test]
    fn record_round_trips_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::in_dir(dir.path());
        let mut rec = DeviceRecord::provisioned(
            SlotId::A,
            SlotImage {
                version: "1.0.0".parse().unwrap(),
                sha256: Sha256Digest::of(b"v1"),
                length: 2,
            },
        );
        rec.state = next(
            rec.state,
            Event::Chosen {
                slot: SlotId::B,
                image: image("2.0.0"),
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

    #[test]
    fn failed_versions_are_bounded() {
        let mut rec = DeviceRecord::provisioned(
            SlotId::A,
            SlotImage {
                version: "1.0.0".parse().unwrap(),
                sha256: Sha256Digest::of(b"v1"),
                length: 2,
            },
        );
        for i in 0..40u64 {
            rec.remember_failed(Version::new(2, i, 0));
        }
        assert_eq!(rec.failed.len(), MAX_FAILED_REMEMBERED);
        assert_eq!(rec.failed.first(), Some(&Version::new(2, 8, 0)));
    }
}
