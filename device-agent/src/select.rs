//! Release selection: which signed target, if any, this device installs next.
//!
//! A target qualifies when its `custom.ota` object is a [`Release`] for this hardware id and channel,
//! whose rollout includes this device's bucket, newer than the running version, not below the version
//! floor (anti-downgrade), not a version that already failed here, and whose standing
//! (`ota_release::standing`: its waves, and the rollout-control role's halt, pull or replacement plan) is
//! open for this device now. The newest qualifying release wins.
//!
//! Rollout control adds two ways to install, both only by signed instruction: when the running release
//! is pulled (and nothing newer is open), the device goes back to the newest older release that is not
//! pulled, from its other slot when that slot holds it, else by download; and a device in a field
//! drill's cohort installs the drill's release for a trial that rolls back on purpose. Targets under
//! `rollouts/` are the rollout-control role's and never firmware, whatever their fields say.

use ota_release::{
    standing, Channel, HardwareId, OtaTarget, Release, RolloutControl, RolloutSeed, Sha256Digest, Standing,
    Version, CONTROL_DIR,
};

use crate::rollout::Purpose;
use crate::state::{ImageRef, SlotImage};
use crate::SlotId;

/// A target as listed by verified TUF metadata (the agent's view of `ota_tuf::TargetInfo`).
#[derive(Clone, Debug, PartialEq)]
pub struct OfferedTarget {
    /// TUF target name.
    pub name: String,
    /// Length from signed metadata.
    pub length: u64,
    /// sha256 from signed metadata, if listed.
    pub sha256: Option<Sha256Digest>,
    /// The target's `custom` value (`Null` when absent).
    pub custom: serde_json::Value,
}

/// What the device knows about itself, for selection.
#[derive(Clone, Debug)]
pub struct DeviceFacts<'a> {
    /// Its hardware id.
    pub hardware: &'a HardwareId,
    /// Its channel.
    pub channel: &'a Channel,
    /// Its rollout bucket (0 to 99).
    pub bucket: u8,
    /// The version it runs.
    pub running: &'a Version,
    /// Its anti-downgrade floor.
    pub floor: &'a Version,
    /// Versions that failed on it.
    pub failed: &'a [Version],
    /// sha256 of the running image (for choosing a delta), if known.
    pub running_sha256: Option<Sha256Digest>,
    /// Its id (a drill cohort may list it).
    pub device_id: &'a str,
    /// Its place in every rollout, from its identity.
    pub seed: RolloutSeed,
    /// The clock, in Unix seconds.
    pub now_unix: i64,
    /// The verified rollout-control file for its hardware id and channel, if any.
    pub control: Option<&'a RolloutControl>,
    /// The inactive slot and the verified image the record says it holds.
    pub other_slot: Option<(SlotId, &'a SlotImage)>,
    /// The drills it already took part in.
    pub drills_done: &'a [String],
    /// Why the newest rollout-control file was refused, when it was: `control` is then the last
    /// verified one, and no new release or drill starts (the refused file may be a halt kept from it).
    pub control_refused: Option<&'a str>,
}

/// A delta that rebuilds the chosen release from the running image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaChoice {
    /// TUF target name of the delta file.
    pub target: String,
    /// Its length from signed metadata.
    pub length: u64,
}

/// A release target that was not chosen, and why (printed by `device-agent check`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// TUF target name.
    pub target: String,
    /// Why it was passed over.
    pub why: String,
    /// The cause, when rollout control held back a release newer than the running one (reported).
    pub kind: SkipKind,
}

impl Skipped {
    /// A release passed over for a reason that is not reported (not newer, waiting for its wave...).
    fn other(target: String, why: String) -> Skipped {
        Skipped {
            target,
            why,
            kind: SkipKind::Other,
        }
    }
}

/// Why a release was passed over, as far as its outcome report cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipKind {
    /// A newer release this device would start, but its rollout is halted.
    Halted(ImageRef),
    /// A newer release this device would start, but it was pulled.
    Pulled(ImageRef),
    /// Any other reason: nothing to report.
    Other,
}

/// The outcome of selection.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to install.
    UpToDate {
        /// Release targets passed over.
        skipped: Vec<Skipped>,
    },
    /// Install this release.
    Install {
        /// The image to install (name, version, sha256, length from signed metadata).
        image: ImageRef,
        /// The release's OTA fields.
        release: Box<Release>,
        /// A delta from the running image, when one is offered and listed.
        delta: Option<DeltaChoice>,
        /// Why: an update, a pull-back by download, or a field drill.
        purpose: Purpose,
        /// Release targets passed over.
        skipped: Vec<Skipped>,
    },
    /// The running release is pulled and the inactive slot holds the release to go back to: trial-boot
    /// it (once its bytes are hashed again) without downloading anything.
    SwitchBack {
        /// The inactive slot.
        slot: SlotId,
        /// The release it holds, as signed.
        image: ImageRef,
        /// The pulled version running now.
        pulled: Version,
        /// Release targets passed over.
        skipped: Vec<Skipped>,
    },
}

impl Decision {
    /// The release targets passed over, and why.
    pub fn skipped(&self) -> &[Skipped] {
        match self {
            Decision::UpToDate { skipped }
            | Decision::Install { skipped, .. }
            | Decision::SwitchBack { skipped, .. } => skipped,
        }
    }
}

/// A release meant for this hardware id, channel and bucket, with a signed sha256.
struct Candidate<'t> {
    target: &'t OfferedTarget,
    release: Release,
    sha256: Sha256Digest,
}

impl Candidate<'_> {
    fn image(&self) -> ImageRef {
        ImageRef {
            target: self.target.name.clone(),
            version: self.release.version.clone(),
            sha256: self.sha256,
            length: self.target.length,
        }
    }
}

/// Chooses what this device installs next, if anything: a pull-back when the running release is
/// pulled, else a field drill it is drafted into, else the newest open release.
pub fn select(targets: &[OfferedTarget], device: &DeviceFacts<'_>) -> Decision {
    let mut skipped = Vec::new();
    let candidates = candidates(targets, device, &mut skipped);
    let mut upgrade = newest_open(&candidates, device, &mut skipped);
    if let (Some(why), Some(c)) = (device.control_refused, upgrade) {
        skipped.push(Skipped::other(
            c.target.name.clone(),
            format!(
                "{} not started: the rollout-control file was refused ({why}); the last verified one stays \
                 in force and no new release starts until a newer one verifies",
                c.release.version
            ),
        ));
        upgrade = None;
    }
    let pulled = device.control.is_some_and(|c| c.is_pulled(device.running));
    if upgrade.is_none() && pulled {
        if let Some(back) = pull_back(&candidates, device, &mut skipped) {
            return back_decision(targets, back, device, skipped);
        }
    }
    if !pulled && device.control_refused.is_none() {
        if let Some((drilled, id)) = drill(&candidates, device, &mut skipped) {
            let purpose = Purpose::Drill { id };
            return install(targets, drilled, purpose, device, skipped);
        }
    }
    match upgrade {
        None => Decision::UpToDate { skipped },
        Some(c) => install(targets, c, Purpose::Update, device, skipped),
    }
}

/// The releases meant for this device's hardware id, channel and bucket that carry a signed sha256;
/// every other release target is skipped with its reason.
fn candidates<'t>(
    targets: &'t [OfferedTarget],
    device: &DeviceFacts<'_>,
    skipped: &mut Vec<Skipped>,
) -> Vec<Candidate<'t>> {
    let mut out = Vec::new();
    for t in targets {
        let skip = |why: String| Skipped::other(t.name.clone(), why);
        let parsed = OtaTarget::from_custom(&t.custom);
        if is_control_path(&t.name) {
            // The rollout-control role may sign only these paths: whatever it lists there is no image.
            if !matches!(parsed, Ok(None)) {
                skipped.push(skip(format!(
                    "lies under {CONTROL_DIR}/, the rollout-control role's paths, which never hold firmware: refused"
                )));
            }
            continue;
        }
        let release = match parsed {
            Ok(Some(OtaTarget::Release(r))) => r,
            Ok(Some(OtaTarget::Delta(_)) | None) => continue,
            Err(e) => {
                skipped.push(skip(format!("malformed OTA metadata: {e}")));
                continue;
            }
        };
        if let Some(why) = not_for_device(&release, device) {
            skipped.push(skip(why));
            continue;
        }
        let Some(sha256) = t.sha256 else {
            skipped.push(skip(format!(
                "{} has no sha256 in signed metadata",
                release.version
            )));
            continue;
        };
        out.push(Candidate {
            target: t,
            release,
            sha256,
        });
    }
    out
}

/// Whether a target name lies in the rollout-control role's directory.
fn is_control_path(name: &str) -> bool {
    name.split('/').next() == Some(CONTROL_DIR) && name.contains('/')
}

/// The newest candidate this device may install as an update now; the others are skipped.
fn newest_open<'c, 't>(
    candidates: &'c [Candidate<'t>],
    device: &DeviceFacts<'_>,
    skipped: &mut Vec<Skipped>,
) -> Option<&'c Candidate<'t>> {
    let mut best: Option<&Candidate<'_>> = None;
    for c in candidates {
        let skip = |why: String| Skipped::other(c.target.name.clone(), why);
        if let Some(why) = ineligible(&c.release, device) {
            skipped.push(skip(why));
            continue;
        }
        if let Some((why, kind)) = not_open(c, device) {
            skipped.push(Skipped {
                target: c.target.name.clone(),
                why,
                kind,
            });
            continue;
        }
        let newer = best.is_none_or(|b| {
            c.release.version > b.release.version
                || (c.release.version == b.release.version && c.target.name < b.target.name)
        });
        if newer {
            if let Some(b) = best.take() {
                skipped.push(Skipped::other(
                    b.target.name.clone(),
                    format!("{} is not the newest", b.release.version),
                ));
            }
            best = Some(c);
        } else {
            skipped.push(skip(format!("{} is not the newest", c.release.version)));
        }
    }
    best
}

/// Why candidate `c` is not open for this device now (its wave, a halt, a pull), with the cause a
/// report names, or `None` when it is open.
fn not_open(c: &Candidate<'_>, device: &DeviceFacts<'_>) -> Option<(String, SkipKind)> {
    let release = &c.release;
    let entry = device.control.and_then(|ctl| ctl.release(&release.version));
    let v = &release.version;
    match standing(release, entry, device.seed, device.now_unix) {
        Ok(Standing::Open(_)) => None,
        Ok(Standing::Waiting(place)) => Some((
            format!(
                "{v}: this device is in wave {} and becomes eligible at {}",
                place.wave + 1,
                crate::rollout::format_unix(place.eligible_unix)
            ),
            SkipKind::Other,
        )),
        Ok(Standing::Halted { since_unix, reason }) => Some((
            format!(
                "{v}: the rollout is halted since {}{}",
                crate::rollout::format_unix(since_unix),
                because(&reason)
            ),
            SkipKind::Halted(c.image()),
        )),
        Ok(Standing::Pulled { since_unix, reason }) => Some((
            format!(
                "{v} is pulled since {}{}",
                crate::rollout::format_unix(since_unix),
                because(&reason)
            ),
            SkipKind::Pulled(c.image()),
        )),
        Err(e) => Some((format!("{v}: its rollout plan is unusable: {e}"), SkipKind::Other)),
    }
}

fn because(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

/// The release to go back to from the pulled running one: the newest older candidate that is not
/// pulled and did not fail here. Waves and halts do not hold it back: it is where the device came from.
fn pull_back<'c, 't>(
    candidates: &'c [Candidate<'t>],
    device: &DeviceFacts<'_>,
    skipped: &mut Vec<Skipped>,
) -> Option<&'c Candidate<'t>> {
    let pulled = |v: &Version| device.control.is_some_and(|c| c.is_pulled(v));
    let back = candidates
        .iter()
        .filter(|c| c.release.version < *device.running)
        .filter(|c| !pulled(&c.release.version) && !device.failed.contains(&c.release.version))
        .max_by(|a, b| (&a.release.version, &b.target.name).cmp(&(&b.release.version, &a.target.name)));
    if back.is_none() {
        skipped.push(Skipped::other(
            device.running.to_string(),
            format!(
                "the running {} is pulled, but no older release that is not pulled is offered: staying",
                device.running
            ),
        ));
    }
    back
}

/// Going back to `back`: from the other slot when the record says it holds exactly that signed image
/// (the device hashes it again before trusting it), else by download.
fn back_decision(
    targets: &[OfferedTarget],
    back: &Candidate<'_>,
    device: &DeviceFacts<'_>,
    skipped: Vec<Skipped>,
) -> Decision {
    let image = back.image();
    match device.other_slot {
        Some((slot, held)) if *held == image.slot_image() => Decision::SwitchBack {
            slot,
            image,
            pulled: device.running.clone(),
            skipped,
        },
        _ => {
            let purpose = Purpose::PullBack {
                pulled: device.running.clone(),
            };
            install(targets, back, purpose, device, skipped)
        }
    }
}

/// The release of the field drill this device is drafted into now and has not run yet, with the
/// drill's id. A drill never starts a halted or pulled release, the running one, one below the floor,
/// or one that failed here.
fn drill<'c, 't>(
    candidates: &'c [Candidate<'t>],
    device: &DeviceFacts<'_>,
    skipped: &mut Vec<Skipped>,
) -> Option<(&'c Candidate<'t>, String)> {
    let d = device
        .control?
        .drill_for(device.device_id, device.seed, device.now_unix)?;
    if device.drills_done.contains(&d.id) {
        return None;
    }
    let mut skip = |why: String| {
        skipped.push(Skipped::other(format!("drill {}", d.id), why));
        None
    };
    let Some(c) = candidates.iter().find(|c| c.release.version == d.release) else {
        return skip(format!("{} is not offered to this device", d.release));
    };
    let entry = device.control.and_then(|ctl| ctl.release(&d.release));
    let why = if d.release == *device.running {
        Some(format!("{} is the running release", d.release))
    } else if d.release < *device.floor {
        Some(format!(
            "{} is below the version floor {}",
            d.release, device.floor
        ))
    } else if device.failed.contains(&d.release) {
        Some(format!("{} failed on this device", d.release))
    } else {
        match standing(&c.release, entry, device.seed, device.now_unix) {
            Ok(Standing::Halted { .. }) => Some(format!("{}: the rollout is halted", d.release)),
            Ok(Standing::Pulled { .. }) => Some(format!("{} is pulled", d.release)),
            _ => None,
        }
    };
    match why {
        Some(why) => skip(why),
        None => Some((c, d.id.clone())),
    }
}

/// Why `release` is not for this device at all (hardware id, channel, bucket), or `None`.
fn not_for_device(release: &Release, device: &DeviceFacts<'_>) -> Option<String> {
    if release.channel != *device.channel {
        Some(format!("{} is on channel {}", release.version, release.channel))
    } else if !release.hardware.contains(device.hardware) {
        Some(format!(
            "{} is not for hardware {}",
            release.version, device.hardware
        ))
    } else if !release.is_for(device.hardware, device.channel, device.bucket) {
        Some(format!(
            "{} is rolled out to {} % and this device is in bucket {}",
            release.version, release.rollout.percent, device.bucket
        ))
    } else {
        None
    }
}

/// Why `release` is not an update for this device (not newer, below the floor, failed here), or `None`.
fn ineligible(release: &Release, device: &DeviceFacts<'_>) -> Option<String> {
    if release.version <= *device.running {
        Some(format!(
            "{} is not newer than the running {}",
            release.version, device.running
        ))
    } else if release.version < *device.floor {
        Some(format!(
            "{} is below the version floor {}",
            release.version, device.floor
        ))
    } else if device.failed.contains(&release.version) {
        Some(format!(
            "{} failed on this device; waiting for a newer release",
            release.version
        ))
    } else {
        None
    }
}

/// The decision to install candidate `c`, with the delta from the running image when one is offered
/// and listed.
fn install(
    targets: &[OfferedTarget],
    c: &Candidate<'_>,
    purpose: Purpose,
    device: &DeviceFacts<'_>,
    skipped: Vec<Skipped>,
) -> Decision {
    let delta = device.running_sha256.and_then(|base| {
        let offer = c.release.delta_from(&base)?;
        let listed = targets.iter().find(|d| d.name == offer.target)?;
        Some(DeltaChoice {
            target: listed.name.clone(),
            length: listed.length,
        })
    });
    Decision::Install {
        image: c.image(),
        release: Box::new(c.release.clone()),
        delta,
        purpose,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_release::{
        DeltaOffer, DeltaTarget, DrillCohort, FieldDrill, ReleaseControl, Rollout, RolloutPlan, RolloutState,
        Wave, WaveOpens, WHOLE_FLEET_BP,
    };

    const DEVICE: &str = "dev-test";
    const NOW: i64 = 1_780_000_000;

    /// `t` with this rollout plan.
    fn with_plan(mut t: OfferedTarget, plan: RolloutPlan) -> OfferedTarget {
        let Ok(Some(OtaTarget::Release(mut r))) = OtaTarget::from_custom(&t.custom) else {
            unreachable!()
        };
        r.waves = Some(plan);
        t.custom = OtaTarget::Release(r).to_custom();
        t
    }

    /// One wave of everyone, opening at `at`.
    fn opens_at(at: i64) -> RolloutPlan {
        RolloutPlan {
            published_unix: NOW - 100,
            waves: vec![Wave {
                share_bp: WHOLE_FLEET_BP,
                opens: WaveOpens::AtUnix(at),
            }],
            final_spread_secs: 0,
        }
    }

    fn control_with(entries: &[(&str, RolloutState)]) -> RolloutControl {
        let mut c = RolloutControl::new("gw".parse().unwrap(), "stable".parse().unwrap());
        for (v, state) in entries {
            c.releases.insert(
                v.parse().unwrap(),
                ReleaseControl {
                    state: *state,
                    since_unix: NOW - 50,
                    reason: "rollbacks in wave 1".into(),
                    waves: None,
                },
            );
        }
        c
    }

    fn held(version: &str) -> SlotImage {
        SlotImage {
            version: version.parse().unwrap(),
            sha256: Sha256Digest::of(version.as_bytes()),
            length: 10,
        }
    }

    fn whys(d: &Decision) -> Vec<String> {
        d.skipped()
            .iter()
            .map(|s| format!("{}: {}", s.target, s.why))
            .collect()
    }

    fn release_target(version: &str, hw: &str, channel: &str, percent: u8) -> OfferedTarget {
        let r = Release {
            version: version.parse().unwrap(),
            hardware: vec![hw.parse().unwrap()],
            channel: channel.parse().unwrap(),
            rollout: Rollout { percent },
            waves: None,
            deltas: vec![],
        };
        OfferedTarget {
            name: format!("{hw}/{version}.img"),
            length: 10,
            sha256: Some(Sha256Digest::of(version.as_bytes())),
            custom: OtaTarget::Release(r).to_custom(),
        }
    }

    struct Facts {
        hw: HardwareId,
        ch: Channel,
        running: Version,
        floor: Version,
        failed: Vec<Version>,
        control: Option<RolloutControl>,
        other_slot: Option<(SlotId, SlotImage)>,
        drills_done: Vec<String>,
        control_refused: Option<String>,
    }

    impl Facts {
        fn new(running: &str) -> Facts {
            Facts {
                hw: "gw".parse().unwrap(),
                ch: "stable".parse().unwrap(),
                running: running.parse().unwrap(),
                floor: running.parse().unwrap(),
                failed: vec![],
                control: None,
                other_slot: None,
                drills_done: vec![],
                control_refused: None,
            }
        }
        fn facts(&self) -> DeviceFacts<'_> {
            DeviceFacts {
                hardware: &self.hw,
                channel: &self.ch,
                bucket: 42,
                running: &self.running,
                floor: &self.floor,
                failed: &self.failed,
                running_sha256: Some(Sha256Digest::of(self.running.to_string().as_bytes())),
                device_id: DEVICE,
                seed: RolloutSeed::of_device(DEVICE),
                now_unix: NOW,
                control: self.control.as_ref(),
                other_slot: self.other_slot.as_ref().map(|(s, i)| (*s, i)),
                drills_done: &self.drills_done,
                control_refused: self.control_refused.as_deref(),
            }
        }
    }

    fn chosen(d: &Decision) -> Option<String> {
        match d {
            Decision::Install { image, .. } | Decision::SwitchBack { image, .. } => {
                Some(image.version.to_string())
            }
            Decision::UpToDate { .. } => None,
        }
    }

    #[test]
    fn newest_matching_release_wins() {
        let f = Facts::new("1.0.0");
        let targets = vec![
            release_target("2.0.0", "gw", "stable", 100),
            release_target("2.1.0", "gw", "stable", 100),
            release_target("3.0.0", "other", "stable", 100),
            release_target("4.0.0", "gw", "beta", 100),
            release_target("5.0.0", "gw", "stable", 10),
            release_target("0.9.0", "gw", "stable", 100),
        ];
        let d = select(&targets, &f.facts());
        assert_eq!(chosen(&d).as_deref(), Some("2.1.0"));
        let Decision::Install { skipped, .. } = d else {
            unreachable!()
        };
        let whys: Vec<_> = skipped.iter().map(|s| s.why.as_str()).collect();
        assert!(
            whys.iter()
                .any(|w| w.contains("hardware other") || w.contains("not for hardware")),
            "{whys:?}"
        );
        assert!(whys.iter().any(|w| w.contains("channel beta")), "{whys:?}");
        assert!(whys.iter().any(|w| w.contains("bucket 42")), "{whys:?}");
        assert!(whys.iter().any(|w| w.contains("not newer")), "{whys:?}");
    }

    #[test]
    fn floor_and_failed_versions_are_respected() {
        let mut f = Facts::new("1.0.0");
        f.floor = "2.0.0".parse().unwrap();
        f.failed = vec!["3.0.0".parse().unwrap()];
        let targets = vec![
            release_target("1.5.0", "gw", "stable", 100),
            release_target("3.0.0", "gw", "stable", 100),
        ];
        let d = select(&targets, &f.facts());
        assert_eq!(chosen(&d), None);
        let Decision::UpToDate { skipped } = d else {
            unreachable!()
        };
        assert!(skipped
            .iter()
            .any(|s| s.why.contains("below the version floor 2.0.0")));
        assert!(skipped.iter().any(|s| s.why.contains("failed on this device")));
        // A newer release is taken again.
        let mut targets = targets;
        targets.push(release_target("3.0.1", "gw", "stable", 100));
        assert_eq!(chosen(&select(&targets, &f.facts())).as_deref(), Some("3.0.1"));
    }

    #[test]
    fn malformed_release_is_skipped_not_fatal() {
        let f = Facts::new("1.0.0");
        let mut bad = release_target("9.0.0", "gw", "stable", 100);
        bad.custom["ota"]["rollout"] = serde_json::json!({"percent": 300});
        let targets = vec![bad, release_target("2.0.0", "gw", "stable", 100)];
        let d = select(&targets, &f.facts());
        assert_eq!(chosen(&d).as_deref(), Some("2.0.0"));
        let Decision::Install { skipped, .. } = d else {
            unreachable!()
        };
        assert!(skipped.iter().any(|s| s.why.contains("malformed")));
    }

    #[test]
    fn delta_is_offered_only_from_the_running_image() {
        let f = Facts::new("1.0.0");
        let mut t = release_target("2.0.0", "gw", "stable", 100);
        let base = Sha256Digest::of(b"1.0.0");
        let mut r = match OtaTarget::from_custom(&t.custom).unwrap() {
            Some(OtaTarget::Release(r)) => r,
            _ => unreachable!(),
        };
        r.deltas.push(DeltaOffer {
            base_version: "1.0.0".parse().unwrap(),
            base_sha256: base,
            base_length: 5,
            target: "gw/1.0.0-2.0.0.delta".into(),
            length: 3,
        });
        t.custom = OtaTarget::Release(r).to_custom();
        let delta = OfferedTarget {
            name: "gw/1.0.0-2.0.0.delta".into(),
            length: 3,
            sha256: Some(Sha256Digest::of(b"d")),
            custom: OtaTarget::Delta(DeltaTarget {
                base_version: "1.0.0".parse().unwrap(),
                base_sha256: base,
                version: "2.0.0".parse().unwrap(),
                release_target: t.name.clone(),
            })
            .to_custom(),
        };
        let d = select(&[t.clone(), delta.clone()], &f.facts());
        let Decision::Install {
            delta: Some(choice), ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(choice.target, "gw/1.0.0-2.0.0.delta");
        // Delta file not listed: full image.
        let Decision::Install { delta: None, .. } = select(&[t.clone()], &f.facts()) else {
            panic!()
        };
        // Running something else: full image.
        let mut other = Facts::new("1.0.0");
        other.running = "1.0.1".parse().unwrap();
        let Decision::Install { delta: None, .. } = select(&[t, delta], &other.facts()) else {
            panic!()
        };
    }

    #[test]
    fn a_release_waits_for_the_devices_wave_and_the_control_plan_can_open_it() {
        let mut f = Facts::new("1.0.0");
        let later = with_plan(release_target("2.0.0", "gw", "stable", 100), opens_at(NOW + 3600));
        let d = select(std::slice::from_ref(&later), &f.facts());
        assert_eq!(chosen(&d), None);
        assert!(
            whys(&d)
                .iter()
                .any(|w| w.contains("wave 1") && w.contains("becomes eligible at 2026-")),
            "{:?}",
            whys(&d)
        );
        // Open once the moment has come.
        let open = with_plan(release_target("2.0.0", "gw", "stable", 100), opens_at(NOW));
        assert_eq!(chosen(&select(&[open], &f.facts())).as_deref(), Some("2.0.0"));
        // The rollout-control role speeds it up: its plan replaces the release's own.
        let mut c = control_with(&[("2.0.0", RolloutState::Active)]);
        c.releases
            .values_mut()
            .for_each(|e| e.waves = Some(RolloutPlan::everyone_now(NOW)));
        f.control = Some(c);
        assert_eq!(chosen(&select(&[later], &f.facts())).as_deref(), Some("2.0.0"));
    }

    #[test]
    fn a_halted_release_is_not_started_until_resumed() {
        let mut f = Facts::new("1.0.0");
        let targets = vec![
            release_target("1.5.0", "gw", "stable", 100),
            release_target("2.0.0", "gw", "stable", 100),
        ];
        f.control = Some(control_with(&[("2.0.0", RolloutState::Halted)]));
        let d = select(&targets, &f.facts());
        // The halted newest is passed over; an older open release still goes ahead.
        assert_eq!(chosen(&d).as_deref(), Some("1.5.0"));
        assert!(
            whys(&d)
                .iter()
                .any(|w| w.contains("2.0.0: the rollout is halted since") && w.contains("rollbacks")),
            "{:?}",
            whys(&d)
        );
        f.control = Some(control_with(&[("2.0.0", RolloutState::Active)]));
        assert_eq!(chosen(&select(&targets, &f.facts())).as_deref(), Some("2.0.0"));
    }

    #[test]
    fn a_halted_or_pulled_newer_release_is_skipped_with_its_cause() {
        let mut f = Facts::new("1.5.0");
        let targets = vec![
            release_target("1.0.0", "gw", "stable", 100),
            release_target("2.0.0", "gw", "stable", 100),
        ];
        let kinds = |d: &Decision| -> Vec<(String, SkipKind)> {
            d.skipped()
                .iter()
                .map(|s| (s.target.clone(), s.kind.clone()))
                .collect()
        };
        for (state, halted) in [(RolloutState::Halted, true), (RolloutState::Pulled, false)] {
            // 1.0.0 is pulled too: older than the running release, it is skipped for that, unreported.
            f.control = Some(control_with(&[("2.0.0", state), ("1.0.0", RolloutState::Pulled)]));
            let d = select(&targets, &f.facts());
            assert_eq!(chosen(&d), None);
            let mut found = kinds(&d);
            found.sort_by(|a, b| a.0.cmp(&b.0));
            let [(old, old_kind), (new, new_kind)] = &found[..] else {
                panic!("{found:?}")
            };
            assert_eq!((old.as_str(), old_kind), ("gw/1.0.0.img", &SkipKind::Other));
            assert_eq!(new, "gw/2.0.0.img");
            match (new_kind, halted) {
                (SkipKind::Halted(image), true) | (SkipKind::Pulled(image), false) => {
                    assert_eq!(image.version.to_string(), "2.0.0")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_pulled_running_release_goes_back_from_the_other_slot_or_by_download() {
        let mut f = Facts::new("2.0.0");
        let targets = vec![
            release_target("1.0.0", "gw", "stable", 100),
            release_target("1.5.0", "gw", "stable", 100),
            release_target("2.0.0", "gw", "stable", 100),
        ];
        // Not pulled: the version never goes down.
        f.other_slot = Some((SlotId::B, held("1.5.0")));
        assert_eq!(chosen(&select(&targets, &f.facts())), None);
        // Pulled, the other slot holds the newest release that is not pulled: no download.
        f.control = Some(control_with(&[("2.0.0", RolloutState::Pulled)]));
        let d = select(&targets, &f.facts());
        let Decision::SwitchBack {
            slot, image, pulled, ..
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!(
            (*slot, image.version.to_string(), pulled.to_string()),
            (SlotId::B, "1.5.0".into(), "2.0.0".into())
        );
        // The other slot holds something else (an older release, or other bytes): download 1.5.0.
        for other in [
            held("1.0.0"),
            SlotImage {
                length: 11,
                ..held("1.5.0")
            },
        ] {
            f.other_slot = Some((SlotId::B, other));
            let d = select(&targets, &f.facts());
            let Decision::Install { image, purpose, .. } = &d else {
                panic!("{d:?}")
            };
            assert_eq!(image.version.to_string(), "1.5.0");
            assert_eq!(
                purpose,
                &Purpose::PullBack {
                    pulled: "2.0.0".parse().unwrap()
                }
            );
        }
        // 1.5.0 pulled too, or failed here: back to 1.0.0.
        f.control = Some(control_with(&[
            ("2.0.0", RolloutState::Pulled),
            ("1.5.0", RolloutState::Pulled),
        ]));
        assert_eq!(chosen(&select(&targets, &f.facts())).as_deref(), Some("1.0.0"));
        f.control = Some(control_with(&[("2.0.0", RolloutState::Pulled)]));
        f.failed = vec!["1.5.0".parse().unwrap()];
        assert_eq!(chosen(&select(&targets, &f.facts())).as_deref(), Some("1.0.0"));
        // A newer open release is an update instead (the floor rises as usual).
        let mut newer = targets.clone();
        newer.push(release_target("2.0.1", "gw", "stable", 100));
        let d = select(&newer, &f.facts());
        assert!(
            matches!(&d, Decision::Install { purpose: Purpose::Update, image, .. } if image.version.to_string() == "2.0.1"),
            "{d:?}"
        );
        // Nothing older offered: stay, and say why.
        let d = select(&targets[2..], &f.facts());
        assert_eq!(chosen(&d), None);
        assert!(
            whys(&d).iter().any(|w| w.contains("no older release")),
            "{:?}",
            whys(&d)
        );
    }

    #[test]
    fn a_drill_cohort_installs_the_drill_release_once() {
        let mut f = Facts::new("1.0.0");
        // 2.0.0 is not open to this device yet: only the drill installs it.
        let targets = vec![with_plan(
            release_target("2.0.0", "gw", "stable", 100),
            opens_at(NOW + 3600),
        )];
        let drill = |cohort, until_unix| FieldDrill {
            id: "spring".into(),
            release: "2.0.0".parse().unwrap(),
            cohort,
            until_unix,
        };
        let mut c = control_with(&[]);
        c.drills
            .push(drill(DrillCohort::Devices(vec![DEVICE.into()]), NOW + 10));
        f.control = Some(c.clone());
        let d = select(&targets, &f.facts());
        assert!(
            matches!(&d, Decision::Install { purpose: Purpose::Drill { id }, .. } if id == "spring"),
            "{d:?}"
        );
        // Once done, never again; another device, an ended drill, a halted release: none.
        f.drills_done = vec!["spring".into()];
        assert_eq!(chosen(&select(&targets, &f.facts())), None);
        f.drills_done.clear();
        for other in [
            drill(DrillCohort::Devices(vec!["dev-other".into()]), NOW + 10),
            drill(DrillCohort::ShareBp(WHOLE_FLEET_BP), NOW),
        ] {
            c.drills = vec![other];
            f.control = Some(c.clone());
            assert_eq!(chosen(&select(&targets, &f.facts())), None);
        }
        c.drills = vec![drill(DrillCohort::ShareBp(WHOLE_FLEET_BP), NOW + 10)];
        f.control = Some(c.clone());
        assert!(chosen(&select(&targets, &f.facts())).is_some());
        c.releases = control_with(&[("2.0.0", RolloutState::Halted)]).releases;
        f.control = Some(c);
        let d = select(&targets, &f.facts());
        assert_eq!(chosen(&d), None);
        assert!(
            whys(&d)
                .iter()
                .any(|w| w.contains("drill spring: 2.0.0: the rollout is halted")),
            "{:?}",
            whys(&d)
        );
    }

    #[test]
    fn a_refused_control_file_starts_nothing_new_but_a_verified_pull_still_holds() {
        let mut f = Facts::new("2.0.0");
        let targets = vec![
            release_target("1.0.0", "gw", "stable", 100),
            release_target("2.0.0", "gw", "stable", 100),
            release_target("3.0.0", "gw", "stable", 100),
        ];
        f.control_refused = Some("signature threshold not met".into());
        let d = select(&targets, &f.facts());
        assert_eq!(chosen(&d), None);
        assert!(
            whys(&d)
                .iter()
                .any(|w| w.contains("3.0.0 not started") && w.contains("threshold")),
            "{:?}",
            whys(&d)
        );
        // The last verified control pulled 2.0.0 and 3.0.0: going back is still done.
        f.control = Some(control_with(&[
            ("2.0.0", RolloutState::Pulled),
            ("3.0.0", RolloutState::Pulled),
        ]));
        assert_eq!(chosen(&select(&targets, &f.facts())).as_deref(), Some("1.0.0"));
    }

    #[test]
    fn firmware_under_the_rollout_control_paths_is_refused() {
        let f = Facts::new("1.0.0");
        let mut evil = release_target("9.0.0", "gw", "stable", 100);
        evil.name = "rollouts/gw/stable.json".into();
        let d = select(&[evil, release_target("2.0.0", "gw", "stable", 100)], &f.facts());
        assert_eq!(chosen(&d).as_deref(), Some("2.0.0"));
        assert!(
            whys(&d).iter().any(|w| w.contains("never hold firmware")),
            "{:?}",
            whys(&d)
        );
    }
}
