//! Rollout control: the signed instructions that halt, resume, speed up, pull back or drill releases.
//!
//! The firmware (targets) key signs what a device may install and stays offline. Stopping a bad rollout
//! must be fast, so a separate, online *rollout-control* role signs one small file per hardware id and
//! channel, [`control_target_path`] (`rollouts/<hardware>/<channel>.json`). Its delegation covers only
//! [`CONTROL_PATH_PATTERN`], never firmware, so whatever that key signs can only change *when* and *whether*
//! a device installs a release the firmware role signed; it can never make a device install anything else.
//!
//! What this module decides is pure: given a release, its control entry, the device's seed and the clock,
//! [`standing`] says whether the device may start it. The publisher's `rollout status`, the device's
//! choice and the drill all call it, so they cannot disagree.
//!
//! What it does not do: fetch or verify the file (the caller hands over bytes TUF already verified), or
//! decide where a pulled device goes back to (the device knows its slots and its floor).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::waves::{RolloutPlan, RolloutSeed, WavePlace, WHOLE_FLEET_BP};
use crate::{check_name, Channel, Error, HardwareId, Release, Result, Version};

/// The directory of rollout-control files in the repository's target namespace.
pub const CONTROL_DIR: &str = "rollouts";
/// The TUF path pattern the rollout-control role is delegated (one file per hardware id and channel).
pub const CONTROL_PATH_PATTERN: &str = "rollouts/*/*.json";
/// The name of the delegated role that signs rollout-control files.
pub const CONTROL_ROLE: &str = "rollout-control";
/// Largest rollout-control file a device downloads, in bytes.
pub const MAX_CONTROL_BYTES: u64 = 64 * 1024;
/// The schema version this crate writes and reads.
pub const CONTROL_SCHEMA: u32 = 1;
/// Longest `reason` text kept in a control entry, in bytes.
pub const MAX_REASON_LEN: usize = 256;
/// Most device ids one drill cohort may list.
pub const MAX_DRILL_DEVICES: usize = 1_000;
/// Most drills one control file may carry.
pub const MAX_DRILLS: usize = 16;

/// The target path of the rollout-control file for this hardware id and channel.
pub fn control_target_path(hardware: &HardwareId, channel: &Channel) -> String {
    format!("{CONTROL_DIR}/{hardware}/{channel}.json")
}

/// The signed rollout-control file for one hardware id and channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutControl {
    /// Always [`CONTROL_SCHEMA`]; a newer schema is refused rather than half understood.
    pub schema: u32,
    /// The hardware id this file is for (must match its path).
    pub hardware: HardwareId,
    /// The channel this file is for (must match its path).
    pub channel: Channel,
    /// Instructions per release version; a release not listed follows its own plan.
    #[serde(default)]
    pub releases: BTreeMap<Version, ReleaseControl>,
    /// Field drills: cohorts that install a release in trial mode and roll back on purpose.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<FieldDrill>,
}

/// What the rollout-control role says about one release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseControl {
    /// Whether the rollout proceeds, is halted, or the release is withdrawn.
    pub state: RolloutState,
    /// When the state was set (Unix seconds, UTC).
    pub since_unix: i64,
    /// Why, for the people reading `status` and the reports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A plan replacing the release's own (to speed a rollout up or slow it down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<RolloutPlan>,
}

/// The state of one release's rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Proceeding by its plan.
    Active,
    /// Devices that have not installed it do not start it; devices running it keep it.
    Halted,
    /// Withdrawn: devices running it go back to the newest release that is not pulled.
    Pulled,
}

/// A signed field drill: the cohort installs `release` in trial mode and rolls back on purpose after its
/// health checks pass, so the real rollback path is exercised on real hardware.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDrill {
    /// The drill's name, reported back by the devices (the naming rule of channels).
    pub id: String,
    /// The release the cohort installs in trial mode.
    pub release: Version,
    /// Who takes part.
    pub cohort: DrillCohort,
    /// After this moment (Unix seconds) the drill is over and no device starts it.
    pub until_unix: i64,
}

/// The devices a drill applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DrillCohort {
    /// These device ids.
    Devices(Vec<String>),
    /// This share of the hardware id and channel, in basis points, by rollout seed.
    ShareBp(u16),
}

/// Whether a device may start a release now, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The device's wave is open and its moment has come.
    Open(WavePlace),
    /// The device's moment is still to come.
    Waiting(WavePlace),
    /// The rollout is halted: a device that has not installed the release does not start it.
    Halted {
        /// When it was halted.
        since_unix: i64,
        /// Why.
        reason: String,
    },
    /// The release is withdrawn.
    Pulled {
        /// When it was pulled.
        since_unix: i64,
        /// Why.
        reason: String,
    },
}

impl RolloutControl {
    /// An empty control file (every release follows its own plan).
    pub fn new(hardware: HardwareId, channel: Channel) -> RolloutControl {
        RolloutControl {
            schema: CONTROL_SCHEMA,
            hardware,
            channel,
            releases: BTreeMap::new(),
            drills: Vec::new(),
        }
    }

    /// Parses and validates the bytes of the file TUF verified at `control_target_path(hardware, channel)`.
    /// A file over [`MAX_CONTROL_BYTES`], of another schema, or naming another hardware id or channel
    /// than its path is refused: a file copied from another path must not steer this fleet.
    pub fn parse(bytes: &[u8], hardware: &HardwareId, channel: &Channel) -> Result<RolloutControl> {
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_CONTROL_BYTES {
            return invalid(format!(
                "{} bytes, more than the {MAX_CONTROL_BYTES} allowed",
                bytes.len()
            ));
        }
        let control: RolloutControl = serde_json::from_slice(bytes)?;
        if &control.hardware != hardware || &control.channel != channel {
            return invalid(format!(
                "it is for {}/{}, but was found at {}",
                control.hardware,
                control.channel,
                control_target_path(hardware, channel)
            ));
        }
        control.validate()?;
        Ok(control)
    }

    /// Checks what serde cannot: the schema, reason lengths, plans, drills.
    pub fn validate(&self) -> Result<()> {
        if self.schema != CONTROL_SCHEMA {
            return invalid(format!(
                "schema {} is not the supported {CONTROL_SCHEMA}",
                self.schema
            ));
        }
        for (version, entry) in &self.releases {
            if entry.reason.len() > MAX_REASON_LEN {
                return invalid(format!(
                    "release {version}: reason longer than {MAX_REASON_LEN} bytes"
                ));
            }
            if let Some(plan) = &entry.waves {
                plan.validate().map_err(|source| Error::Plan {
                    version: version.clone(),
                    source,
                })?;
            }
        }
        self.validate_drills()
    }

    fn validate_drills(&self) -> Result<()> {
        if self.drills.len() > MAX_DRILLS {
            return invalid(format!("more than {MAX_DRILLS} drills"));
        }
        for drill in &self.drills {
            check_name("drill id", &drill.id)?;
            match &drill.cohort {
                DrillCohort::Devices(ids) if ids.is_empty() || ids.len() > MAX_DRILL_DEVICES => {
                    return invalid(format!(
                        "drill {}: a cohort lists 1 to {MAX_DRILL_DEVICES} devices",
                        drill.id
                    ));
                }
                DrillCohort::ShareBp(bp) if *bp == 0 || *bp > WHOLE_FLEET_BP => {
                    return invalid(format!(
                        "drill {}: a share of {bp} bp is not 1 to {WHOLE_FLEET_BP}",
                        drill.id
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The entry for this release, if the control role said anything about it.
    pub fn release(&self, version: &Version) -> Option<&ReleaseControl> {
        self.releases.get(version)
    }

    /// Whether this release is withdrawn.
    pub fn is_pulled(&self, version: &Version) -> bool {
        self.release(version)
            .is_some_and(|e| e.state == RolloutState::Pulled)
    }

    /// The drill this device takes part in at `now_unix`, if any (the first listed wins).
    pub fn drill_for(&self, device_id: &str, seed: RolloutSeed, now_unix: i64) -> Option<&FieldDrill> {
        self.drills
            .iter()
            .filter(|d| now_unix < d.until_unix)
            .find(|d| match &d.cohort {
                DrillCohort::Devices(ids) => ids.iter().any(|id| id == device_id),
                DrillCohort::ShareBp(bp) => seed_below_share(seed, *bp),
            })
    }

    /// The canonical bytes of this file (sorted keys, as it is signed and published).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain types with string keys: serializing cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// Whether a device may start `release` at `now_unix`, by the release's plan (or the control role's
/// replacement plan) and the control role's state. A release without a plan goes to everyone at once.
pub fn standing(
    release: &Release,
    control: Option<&ReleaseControl>,
    seed: RolloutSeed,
    now_unix: i64,
) -> Result<Standing> {
    if let Some(entry) = control {
        let (since_unix, reason) = (entry.since_unix, entry.reason.clone());
        match entry.state {
            RolloutState::Halted => return Ok(Standing::Halted { since_unix, reason }),
            RolloutState::Pulled => return Ok(Standing::Pulled { since_unix, reason }),
            RolloutState::Active => {}
        }
    }
    let everyone = RolloutPlan::everyone_now(i64::MIN);
    let plan = control
        .and_then(|e| e.waves.as_ref())
        .or(release.waves.as_ref())
        .unwrap_or(&everyone);
    let place = plan.place(seed).map_err(|source| Error::Plan {
        version: release.version.clone(),
        source,
    })?;
    Ok(if place.eligible_unix <= now_unix {
        Standing::Open(place)
    } else {
        Standing::Waiting(place)
    })
}

/// Whether the seed falls in the first `share_bp` of all seeds (the same measure waves use).
fn seed_below_share(seed: RolloutSeed, share_bp: u16) -> bool {
    (u128::from(seed.0) * u128::from(WHOLE_FLEET_BP)) >> 64 < u128::from(share_bp)
}

fn invalid<T>(why: String) -> Result<T> {
    Err(Error::Control { why })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rollout, WaveOpens};

    const NOW: i64 = 1_780_000_000;

    fn hw() -> HardwareId {
        HardwareId::new("gw-a").unwrap()
    }
    fn stable() -> Channel {
        Channel::new("stable").unwrap()
    }
    fn release(waves: Option<RolloutPlan>) -> Release {
        Release {
            version: Version::new(2, 0, 0),
            hardware: vec![hw()],
            channel: stable(),
            rollout: Rollout::default(),
            waves,
            deltas: vec![],
        }
    }
    fn entry(state: RolloutState) -> ReleaseControl {
        ReleaseControl {
            state,
            since_unix: NOW,
            reason: "rollbacks in wave 1".into(),
            waves: None,
        }
    }

    #[test]
    fn a_file_round_trips_and_must_sit_at_its_own_path() {
        let mut control = RolloutControl::new(hw(), stable());
        control
            .releases
            .insert(Version::new(2, 0, 0), entry(RolloutState::Halted));
        let bytes = control.to_bytes();
        assert_eq!(RolloutControl::parse(&bytes, &hw(), &stable()).unwrap(), control);
        let err = RolloutControl::parse(&bytes, &hw(), &Channel::new("beta").unwrap()).unwrap_err();
        assert!(err.to_string().contains("rollouts/gw-a/beta.json"), "{err}");
    }

    #[test]
    fn bad_files_are_refused_naming_why() {
        let mut control = RolloutControl::new(hw(), stable());
        control.schema = 2;
        let err = RolloutControl::parse(&control.to_bytes(), &hw(), &stable()).unwrap_err();
        assert!(err.to_string().contains("schema 2"), "{err}");
        let big = vec![b' '; usize::try_from(MAX_CONTROL_BYTES).unwrap() + 1];
        let err = RolloutControl::parse(&big, &hw(), &stable()).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        let unknown = br#"{"schema":1,"hardware":"gw-a","channel":"stable","halt":true}"#;
        let err = RolloutControl::parse(unknown, &hw(), &stable()).unwrap_err();
        assert!(err.to_string().contains("halt"), "{err}");
        let mut control = RolloutControl::new(hw(), stable());
        control.drills.push(FieldDrill {
            id: "d1".into(),
            release: Version::new(2, 0, 0),
            cohort: DrillCohort::ShareBp(0),
            until_unix: NOW,
        });
        assert!(control.validate().unwrap_err().to_string().contains("share of 0"));
    }

    #[test]
    fn halted_and_pulled_releases_are_not_started_whatever_the_plan() {
        let seed = RolloutSeed::of_device("dev-0");
        let r = release(None);
        assert!(matches!(
            standing(&r, None, seed, NOW).unwrap(),
            Standing::Open(_)
        ));
        let halted = standing(&r, Some(&entry(RolloutState::Halted)), seed, NOW).unwrap();
        assert!(matches!(halted, Standing::Halted { since_unix: NOW, .. }));
        let pulled = standing(&r, Some(&entry(RolloutState::Pulled)), seed, NOW).unwrap();
        assert!(matches!(pulled, Standing::Pulled { .. }));
        let resumed = standing(&r, Some(&entry(RolloutState::Active)), seed, NOW).unwrap();
        assert!(matches!(resumed, Standing::Open(_)));
    }

    #[test]
    fn the_control_plan_replaces_the_releases_own() {
        // A device in the last wave of the default plan waits; the control role speeds it up to now.
        let plan = RolloutPlan::default_from(NOW);
        let seed = (0..)
            .map(|i| RolloutSeed::of_device(&format!("dev-{i}")))
            .find(|s| plan.place(*s).unwrap().wave == 3)
            .unwrap();
        let r = release(Some(plan));
        assert!(matches!(
            standing(&r, None, seed, NOW).unwrap(),
            Standing::Waiting(_)
        ));
        let mut faster = entry(RolloutState::Active);
        faster.waves = Some(RolloutPlan::everyone_now(NOW));
        assert!(matches!(
            standing(&r, Some(&faster), seed, NOW).unwrap(),
            Standing::Open(_)
        ));
        let mut broken = RolloutPlan::everyone_now(NOW);
        broken.waves[0].opens = WaveOpens::AfterSecs(0);
        broken.waves[0].share_bp = 10;
        faster.waves = Some(broken);
        let mut control = RolloutControl::new(hw(), stable());
        control.releases.insert(Version::new(2, 0, 0), faster);
        assert!(control.validate().is_err());
    }

    #[test]
    fn drills_pick_their_cohort_until_they_end() {
        let mut control = RolloutControl::new(hw(), stable());
        control.drills.push(FieldDrill {
            id: "spring".into(),
            release: Version::new(2, 0, 0),
            cohort: DrillCohort::Devices(vec!["dev-7".into()]),
            until_unix: NOW + 10,
        });
        let seed = RolloutSeed::of_device("dev-7");
        assert!(control.drill_for("dev-7", seed, NOW).is_some());
        assert!(control.drill_for("dev-8", seed, NOW).is_none());
        assert!(control.drill_for("dev-7", seed, NOW + 10).is_none());
        control.drills[0].cohort = DrillCohort::ShareBp(WHOLE_FLEET_BP);
        assert!(control
            .drill_for("dev-8", RolloutSeed::of_device("dev-8"), NOW)
            .is_some());
        assert!(!seed_below_share(RolloutSeed(u64::MAX), 9_999));
        assert!(seed_below_share(RolloutSeed(0), 1));
    }
}
