//! Release selection: which signed target, if any, this device installs next.
//!
//! A target qualifies when its `custom.ota` object is a [`Release`] for this hardware id and channel,
//! whose rollout includes this device's bucket, newer than the running version, not below the version
//! floor (anti-downgrade), and not a version that already failed here. The newest qualifying release
//! wins. The rules for "meant for this device" are `ota_release`'s, shared with the publisher.

use ota_release::{Channel, HardwareId, OtaTarget, Release, Sha256Digest, Version};

use crate::state::ImageRef;

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
        /// Release targets passed over.
        skipped: Vec<Skipped>,
    },
}

/// Chooses the newest release meant for this device, if any.
pub fn select(targets: &[OfferedTarget], device: &DeviceFacts<'_>) -> Decision {
    let mut skipped = Vec::new();
    let mut best: Option<(&OfferedTarget, Release, Sha256Digest)> = None;
    for t in targets {
        let skip = |why: String| Skipped {
            target: t.name.clone(),
            why,
        };
        let release = match OtaTarget::from_custom(&t.custom) {
            Ok(Some(OtaTarget::Release(r))) => r,
            Ok(Some(OtaTarget::Delta(_)) | None) => continue,
            Err(e) => {
                skipped.push(skip(format!("malformed OTA metadata: {e}")));
                continue;
            }
        };
        let why = ineligible(&release, device);
        if let Some(why) = why {
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
        let newer = best.as_ref().is_none_or(|(b, br, _)| {
            release.version > br.version || (release.version == br.version && t.name < b.name)
        });
        if newer {
            if let Some((b, br, _)) = best.take() {
                skipped.push(Skipped {
                    target: b.name.clone(),
                    why: format!("{} is not the newest", br.version),
                });
            }
            best = Some((t, release, sha256));
        } else {
            skipped.push(skip(format!("{} is not the newest", release.version)));
        }
    }
    match best {
        None => Decision::UpToDate { skipped },
        Some((t, release, sha256)) => install(targets, t, release, sha256, device, skipped),
    }
}

/// Why `release` is not for this device now, or `None` when it is eligible.
fn ineligible(release: &Release, device: &DeviceFacts<'_>) -> Option<String> {
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
    } else if release.version <= *device.running {
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

/// The decision to install `release` (target `t`), with the delta from the running image when one is
/// offered and listed.
fn install(
    targets: &[OfferedTarget],
    t: &OfferedTarget,
    release: Release,
    sha256: Sha256Digest,
    device: &DeviceFacts<'_>,
    skipped: Vec<Skipped>,
) -> Decision {
    let delta = device.running_sha256.and_then(|base| {
        let offer = release.delta_from(&base)?;
        let listed = targets.iter().find(|d| d.name == offer.target)?;
        Some(DeltaChoice {
            target: listed.name.clone(),
            length: listed.length,
        })
    });
    Decision::Install {
        image: ImageRef {
            target: t.name.clone(),
            version: release.version.clone(),
            sha256,
            length: t.length,
        },
        release: Box::new(release),
        delta,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_release::{DeltaOffer, DeltaTarget, Rollout};

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
    }

    impl Facts {
        fn new(running: &str) -> Facts {
            Facts {
                hw: "gw".parse().unwrap(),
                ch: "stable".parse().unwrap(),
                running: running.parse().unwrap(),
                floor: running.parse().unwrap(),
                failed: vec![],
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
            }
        }
    }

    fn chosen(d: &Decision) -> Option<String> {
        match d {
            Decision::Install { image, .. } => Some(image.version.to_string()),
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
}
