//! The contract between the publisher (repo-tool) and the device (device-agent).
//!
//! A firmware image is an ordinary TUF target. What makes it a *release* is the object stored under the
//! [`CUSTOM_KEY`] (`"ota"`) key of the target's `custom` field in signed targets metadata. That object is
//! one of two kinds ([`OtaTarget`]):
//!
//! - [`Release`]: a full firmware image: its semantic version, the hardware ids it runs on, its channel,
//!   its rollout share, and the [`DeltaOffer`]s that can rebuild it from earlier releases.
//! - [`DeltaTarget`]: a binary delta file, naming the base image it applies to and the release it builds.
//!
//! This crate only defines the types, parses them strictly (unknown fields are refused, so a typo in a
//! publisher cannot silently become "no constraint" on the device) and validates them. It does no I/O and
//! knows nothing of TUF signatures: the caller hands it the `custom` value of a target whose signature,
//! length and hashes it has already checked.
//!
//! Selection helpers ([`Release::is_for`], [`rollout_bucket`]) live here too, so that the publisher's
//! `list` and the device's choice can never disagree on what "meant for this device" means.
#![deny(missing_docs)]
// Lossy `as` casts: this crate parses bytes from outside, so every narrowing or sign change is a
// try_from with an error, or allowed one by one with the reason.
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

pub use semver::Version;

mod control;
mod waves;
pub use control::{
    control_target_path, standing, DrillCohort, FieldDrill, ReleaseControl, RolloutControl, RolloutState,
    Standing, CONTROL_DIR, CONTROL_PATH_PATTERN, CONTROL_ROLE, CONTROL_SCHEMA, MAX_CONTROL_BYTES, MAX_DRILLS,
    MAX_DRILL_DEVICES, MAX_REASON_LEN,
};
pub use waves::{PlanError, RolloutPlan, RolloutSeed, Wave, WaveOpens, WavePlace, MAX_WAVES, WHOLE_FLEET_BP};

/// The key under a TUF target's `custom` object that holds an [`OtaTarget`].
pub const CUSTOM_KEY: &str = "ota";

/// Longest hardware id or channel name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most hardware ids one release may list.
pub const MAX_HARDWARE_IDS: usize = 64;
/// Most delta offers one release may list.
pub const MAX_DELTA_OFFERS: usize = 32;

/// Why a release's custom metadata was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The custom object is not valid JSON of the expected shape.
    #[error("malformed OTA metadata: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A name (hardware id or channel) breaks the naming rule.
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        /// "hardware id" or "channel".
        what: &'static str,
        /// The offending value (already bounded by the JSON limits of the caller).
        value: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// The fields parse but contradict each other or a limit.
    #[error("invalid release {version}: {why}")]
    Invalid {
        /// The release's version.
        version: Version,
        /// What is wrong.
        why: String,
    },
    /// A version string is not semantic versioning 2.0.
    #[error("invalid version {value:?}: {why}")]
    Version {
        /// The text given.
        value: String,
        /// The parser's complaint (kept as text, not as a source: every caller shows it, and the
        /// parser's error has no cause of its own).
        why: String,
    },
    /// A rollout plan (a release's own, or a control entry's replacement) breaks a rule.
    #[error("invalid rollout plan for release {version}")]
    Plan {
        /// The release the plan is for.
        version: Version,
        /// The rule it breaks.
        source: PlanError,
    },
    /// A rollout-control file is well-formed JSON but breaks a rule.
    #[error("invalid rollout-control file: {why}")]
    Control {
        /// What is wrong.
        why: String,
    },
    /// A sha256 string is not 64 hexadecimal digits.
    #[error("invalid sha256 {value:?}: expected 64 hex digits")]
    Digest {
        /// The text given.
        value: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A SHA-256 digest, written in JSON as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(bytes).into())
    }
    /// Lowercase hex, as TUF metadata writes it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| Error::Digest { value: s.to_owned() })?;
        Ok(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks the shared naming rule for hardware ids and channels: 1 to [`MAX_NAME_LEN`] bytes of ASCII
/// letters, digits, `.`, `_` and `-`, not starting with `.` or `-`. Names end up in file paths, logs and
/// path patterns, so they are kept boring.
fn check_name(what: &'static str, value: &str) -> Result<()> {
    let bad = |why| {
        Err(Error::InvalidName {
            what,
            value: value.to_owned(),
            why,
        })
    };
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > MAX_NAME_LEN {
        return bad("longer than 64 bytes");
    }
    if value.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                check_name($what, &value)?;
                Ok($name(value))
            }
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A hardware compatibility id, such as `gateway-rev-c`. A device runs only releases listing its id.
    HardwareId,
    "hardware id"
);
name_type!(
    /// A release channel, such as `stable` or `beta`. A device follows exactly one channel.
    Channel,
    "channel"
);

/// Parses a semantic version with a message that names the input.
pub fn parse_version(value: &str) -> Result<Version> {
    Version::parse(value).map_err(|e| Error::Version {
        value: value.to_owned(),
        why: e.to_string(),
    })
}

/// What share of the fleet a release is offered to, in percent (0 to 100).
///
/// A device belongs to the first [`rollout_bucket`] percent of the fleet or not; the bucket depends only
/// on the device id, so raising the share from 10 to 50 keeps the first 10 % in and adds more, the way a
/// staged rollout (waves) is expected to behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Percent of devices (by [`rollout_bucket`]) that may take the release. 100 is everyone.
    pub percent: u8,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout { percent: 100 }
    }
}

impl Rollout {
    /// Whether the device with this rollout bucket (0 to 99) is in the rollout.
    pub fn includes(&self, bucket: u8) -> bool {
        bucket < self.percent
    }
}

/// The device's stable rollout bucket, 0 to 99, derived from its unique id.
pub fn rollout_bucket(device_id: &str) -> u8 {
    let d: [u8; 32] = Sha256::digest(device_id.as_bytes()).into();
    let [b0, b1, ..] = d;
    let v = u16::from_be_bytes([b0, b1]);
    // 65536 values onto 100 buckets: the bias is under 0.2 %, irrelevant for rollout waves.
    u8::try_from(u32::from(v) * 100 / 65536).unwrap_or(99)
}

/// A delta that rebuilds this release's image from an earlier one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaOffer {
    /// The version of the base release.
    pub base_version: Version,
    /// SHA-256 of the base image: the device uses the delta only if its running slot hashes to this.
    pub base_sha256: Sha256Digest,
    /// Length of the base image in bytes.
    pub base_length: u64,
    /// The TUF target name of the delta file (its length and hashes are in the signed targets metadata).
    pub target: String,
    /// Length of the delta file in bytes (repeated here for selection; the TUF length is authoritative).
    pub length: u64,
}

/// A full firmware image: what a device may install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The firmware's version. Devices never install a version at or below their committed one.
    pub version: Version,
    /// Hardware ids this image runs on; never empty.
    pub hardware: Vec<HardwareId>,
    /// The channel this release is published on.
    pub channel: Channel,
    /// Staged rollout share; absent means everyone.
    #[serde(default)]
    pub rollout: Rollout,
    /// Rollout waves: who may start the release, and from when. Absent means everyone at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<RolloutPlan>,
    /// Deltas that rebuild this image from earlier releases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<DeltaOffer>,
}

/// A binary delta file's own description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaTarget {
    /// Version of the base image the delta applies to.
    pub base_version: Version,
    /// SHA-256 of the base image.
    pub base_sha256: Sha256Digest,
    /// Version of the image the delta produces.
    pub version: Version,
    /// TUF target name of the full image the delta produces.
    pub release_target: String,
}

/// What an OTA target is, as stored under `custom.ota`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OtaTarget {
    /// A full firmware image.
    Release(Release),
    /// A binary delta between two images.
    Delta(DeltaTarget),
}

impl Release {
    /// Checks the invariants serde cannot: at least one hardware id, no duplicates, a rollout share of at
    /// most 100, delta offers from strictly older, distinct bases, within the limits above.
    pub fn validate(&self) -> Result<()> {
        let invalid = |why: String| {
            Err(Error::Invalid {
                version: self.version.clone(),
                why,
            })
        };
        if self.hardware.is_empty() {
            return invalid("lists no hardware id".into());
        }
        if self.hardware.len() > MAX_HARDWARE_IDS {
            return invalid(format!("lists more than {MAX_HARDWARE_IDS} hardware ids"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for h in &self.hardware {
            if !seen.insert(h) {
                return invalid(format!("lists hardware id {h} twice"));
            }
        }
        if self.rollout.percent > 100 {
            return invalid(format!("rollout of {} % is over 100 %", self.rollout.percent));
        }
        if let Some(plan) = &self.waves {
            plan.validate().map_err(|source| Error::Plan {
                version: self.version.clone(),
                source,
            })?;
        }
        if self.deltas.len() > MAX_DELTA_OFFERS {
            return invalid(format!("offers more than {MAX_DELTA_OFFERS} deltas"));
        }
        let mut bases = std::collections::BTreeSet::new();
        for d in &self.deltas {
            if d.base_version >= self.version {
                return invalid(format!(
                    "offers a delta from {}, which is not older",
                    d.base_version
                ));
            }
            if !bases.insert(d.base_sha256) {
                return invalid(format!("offers two deltas from base {}", d.base_sha256));
            }
        }
        Ok(())
    }

    /// Whether this release is meant for a device with this hardware id, channel and rollout bucket.
    /// (Version comparison is the caller's: it knows the device's committed version and floor.)
    pub fn is_for(&self, hardware: &HardwareId, channel: &Channel, bucket: u8) -> bool {
        &self.channel == channel && self.hardware.contains(hardware) && self.rollout.includes(bucket)
    }

    /// The delta offer whose base is the image with this digest, if any.
    pub fn delta_from(&self, base: &Sha256Digest) -> Option<&DeltaOffer> {
        self.deltas.iter().find(|d| &d.base_sha256 == base)
    }
}

impl OtaTarget {
    /// Reads the OTA object from a TUF target's whole `custom` value.
    ///
    /// Returns `Ok(None)` when the target carries no `ota` key (an ordinary file, not for the agent), and
    /// an error when the key is present but malformed or invalid: such a target must not be installed, and
    /// the publisher should hear about it.
    pub fn from_custom(custom: &serde_json::Value) -> Result<Option<OtaTarget>> {
        let Some(value) = custom.get(CUSTOM_KEY) else {
            return Ok(None);
        };
        let target = OtaTarget::deserialize(value)?;
        if let OtaTarget::Release(r) = &target {
            r.validate()?;
        }
        Ok(Some(target))
    }

    /// This object wrapped as a TUF `custom` value: `{"ota": {...}}`.
    pub fn to_custom(&self) -> serde_json::Value {
        // Serializing these plain types cannot fail: no maps with non-string keys, no custom errors.
        let inner = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        serde_json::json!({ CUSTOM_KEY: inner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn release() -> Release {
        Release {
            version: Version::new(2, 1, 0),
            hardware: vec![HardwareId::new("gw-a").unwrap(), HardwareId::new("gw-b").unwrap()],
            channel: Channel::new("stable").unwrap(),
            rollout: Rollout { percent: 50 },
            waves: None,
            deltas: vec![DeltaOffer {
                base_version: Version::new(2, 0, 0),
                base_sha256: Sha256Digest::of(b"old"),
                base_length: 3,
                target: "deltas/gw/2.0.0-2.1.0.delta".into(),
                length: 1,
            }],
        }
    }

    #[test]
    fn round_trips_through_custom() {
        let t = OtaTarget::Release(release());
        let custom = t.to_custom();
        assert_eq!(custom["ota"]["kind"], "release");
        assert_eq!(custom["ota"]["version"], "2.1.0");
        assert_eq!(OtaTarget::from_custom(&custom).unwrap(), Some(t));
    }

    #[test]
    fn target_without_ota_key_is_not_a_release() {
        assert_eq!(OtaTarget::from_custom(&json!({"other": 1})).unwrap(), None);
        assert_eq!(OtaTarget::from_custom(&json!(null)).unwrap(), None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut custom = OtaTarget::Release(release()).to_custom();
        custom["ota"]["hardwre"] = json!(["x"]);
        let err = OtaTarget::from_custom(&custom).unwrap_err();
        assert!(err.to_string().contains("hardwre"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_their_reason() {
        let cases = [
            (json!({"version": "2.x"}), "version"),
            (json!({"hardware": []}), "no hardware id"),
            (json!({"hardware": ["gw-a", "gw-a"]}), "twice"),
            (json!({"hardware": ["../etc"]}), "hardware id"),
            (json!({"channel": ""}), "channel"),
            (json!({"rollout": {"percent": 101}}), "over 100"),
        ];
        for (patch, needle) in cases {
            let mut custom = OtaTarget::Release(release()).to_custom();
            for (k, v) in patch.as_object().unwrap() {
                custom["ota"][k] = v.clone();
            }
            let err = OtaTarget::from_custom(&custom).unwrap_err().to_string();
            assert!(err.contains(needle), "{patch}: {err}");
        }
    }

    #[test]
    fn delta_from_a_newer_base_is_refused() {
        let mut r = release();
        r.deltas[0].base_version = Version::new(3, 0, 0);
        assert!(r.validate().unwrap_err().to_string().contains("not older"));
    }

    #[test]
    fn selection_needs_hardware_channel_and_bucket() {
        let r = release();
        let hw = HardwareId::new("gw-b").unwrap();
        let stable = Channel::new("stable").unwrap();
        assert!(r.is_for(&hw, &stable, 49));
        assert!(!r.is_for(&hw, &stable, 50));
        assert!(!r.is_for(&HardwareId::new("gw-z").unwrap(), &stable, 0));
        assert!(!r.is_for(&hw, &Channel::new("beta").unwrap(), 0));
        assert_eq!(r.delta_from(&Sha256Digest::of(b"old")).map(|d| d.length), Some(1));
        assert!(r.delta_from(&Sha256Digest::of(b"other")).is_none());
    }

    #[test]
    fn digest_parsing_is_strict() {
        assert!("zz".parse::<Sha256Digest>().is_err());
        let d = Sha256Digest::of(b"x");
        assert_eq!(d.to_hex().parse::<Sha256Digest>().unwrap(), d);
    }

    proptest! {
        #[test]
        fn any_json_is_parsed_without_panic(s in ".{0,200}") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                let _ = OtaTarget::from_custom(&json!({"ota": v}));
            }
        }

        #[test]
        fn buckets_are_in_range_and_stable(id in "[a-z0-9-]{1,40}") {
            let b = rollout_bucket(&id);
            prop_assert!(b < 100);
            prop_assert_eq!(b, rollout_bucket(&id));
        }

        #[test]
        fn a_larger_rollout_keeps_earlier_devices(id in "[a-z0-9-]{1,40}", lo in 0u8..=100, hi in 0u8..=100) {
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let b = rollout_bucket(&id);
            let (small, large) = (Rollout { percent: lo }, Rollout { percent: hi });
            prop_assert!(!small.includes(b) || large.includes(b));
        }
    }
}
