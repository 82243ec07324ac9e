//! [`Report`]: what a device tells the collector about one update attempt.

use std::fmt;

use chrono::{DateTime, Utc};
use ota_release::{Channel, HardwareId, Version};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result, MAX_PAYLOAD_BYTES, MAX_REASON_BYTES, MAX_TARGET_NAME_BYTES, SCHEMA_VERSION};

/// One update attempt, as the device saw it. The JSON field names are the wire format; unknown fields
/// are refused. Build one, then seal it with [`crate::Envelope::sign`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The schema version: [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The device that attempted the update.
    pub device_id: DeviceId,
    /// Grows by at least one with each report of this device; the collector refuses a report whose
    /// number is not above the last one it accepted (replay).
    pub sequence: u64,
    /// The device's hardware id.
    pub hardware: HardwareId,
    /// The channel the device follows.
    pub channel: Channel,
    /// The version running before the attempt.
    pub from_version: Version,
    /// The version the attempt was for.
    pub to_version: Version,
    /// The TUF target name of that release.
    pub target: TargetName,
    /// How the attempt ended.
    pub outcome: Outcome,
    /// Why, in words (empty when there is nothing to add).
    pub reason: Reason,
    /// When the attempt started (device clock).
    pub started: DateTime<Utc>,
    /// When it ended (device clock); not before `started`.
    pub finished: DateTime<Utc>,
    /// Bytes downloaded for the attempt.
    pub bytes_downloaded: u64,
    /// How the new image was built; `None` when nothing was installed (skipped).
    pub install_method: Option<InstallMethod>,
    /// Reports of this device that its bounded queue dropped unsent (oldest first, when full), since
    /// provisioning: cumulative, so a dropped report carrying the count loses nothing. Absent (and read
    /// as 0) when none was dropped, so reports from before this field keep their exact bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reports_dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Report {
    /// Checks the rules the types alone do not: the schema version, and the times in order.
    pub fn validate(&self) -> Result<()> {
        if self.schema != SCHEMA_VERSION {
            return Err(Error::Invalid {
                field: "schema",
                why: format!("version {} (this reader knows {SCHEMA_VERSION})", self.schema),
            });
        }
        if self.finished < self.started {
            return Err(Error::Invalid {
                field: "finished",
                why: format!("{} is before started {}", self.finished, self.started),
            });
        }
        Ok(())
    }

    /// The payload bytes: this report as compact JSON, validated and bounded.
    pub fn to_payload(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let bytes = serde_json::to_vec(self).map_err(|source| Error::Malformed {
            what: "report",
            source,
        })?;
        check_size("payload", bytes.len(), MAX_PAYLOAD_BYTES)?;
        Ok(bytes)
    }

    /// Parses and validates payload bytes (bounded, strict: unknown fields refused).
    pub fn from_payload(bytes: &[u8]) -> Result<Report> {
        check_size("payload", bytes.len(), MAX_PAYLOAD_BYTES)?;
        let report: Report = serde_json::from_slice(bytes).map_err(|source| Error::Malformed {
            what: "report",
            source,
        })?;
        report.validate()?;
        Ok(report)
    }
}

pub(crate) fn check_size(what: &'static str, got: usize, limit: usize) -> Result<()> {
    if got > limit {
        return Err(Error::TooLarge { what, got, limit });
    }
    Ok(())
}

/// How an update attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new image booted, passed its health checks and was committed.
    Committed,
    /// The new image was tried and the device went back to the old one.
    RolledBack,
    /// The attempt failed before a trial boot (download, verification, write).
    Failed,
    /// Not attempted: the rollout is halted.
    SkippedHalted,
    /// Not attempted: the release was pulled.
    SkippedPulled,
    /// A rollback drill ran as expected.
    DrillPassed,
    /// A rollback drill did not.
    DrillFailed,
}

impl Outcome {
    /// Every outcome, in the order summaries list them.
    pub const ALL: [Outcome; 7] = [
        Outcome::Committed,
        Outcome::RolledBack,
        Outcome::Failed,
        Outcome::SkippedHalted,
        Outcome::SkippedPulled,
        Outcome::DrillPassed,
        Outcome::DrillFailed,
    ];

    /// The wire name (`rolled_back`), as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed => "failed",
            Outcome::SkippedHalted => "skipped_halted",
            Outcome::SkippedPulled => "skipped_pulled",
            Outcome::DrillPassed => "drill_passed",
            Outcome::DrillFailed => "drill_failed",
        }
    }

    /// The outcome with this wire name.
    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == name)
    }
}

/// How the new image was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallMethod {
    /// A delta applied to the running image.
    Delta,
    /// The full image.
    Full,
}

impl InstallMethod {
    /// The wire name (`delta`, `full`), as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            InstallMethod::Delta => "delta",
            InstallMethod::Full => "full",
        }
    }
}

/// A device's id: `dev-` and the first 16 hex digits of the SHA-256 of its public key's bytes (the raw
/// 32 bytes of an ed25519 key, as device-agent's identity computes it; the compressed SEC1 point of a
/// P-256 key).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    const PREFIX: &'static str = "dev-";
    const HEX_DIGITS: usize = 16;

    /// The id of the device holding the key whose public bytes are `public_key`.
    pub fn of_public_key(public_key: &[u8]) -> DeviceId {
        let digest = hex::encode(Sha256::digest(public_key));
        let short = digest.get(..Self::HEX_DIGITS).unwrap_or(&digest);
        DeviceId(format!("{}{short}", Self::PREFIX))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = Error;
    fn try_from(value: String) -> Result<DeviceId> {
        let digits = value.strip_prefix(Self::PREFIX).unwrap_or("");
        let well_formed = digits.len() == Self::HEX_DIGITS
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(Error::Invalid {
                field: "device_id",
                why: format!("{value:?} is not dev- and 16 lowercase hex digits"),
            });
        }
        Ok(DeviceId(value))
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", self.0)
    }
}

/// Refuses control characters: these strings end up in logs and dashboards.
fn check_text(field: &'static str, value: &str, limit: usize) -> Result<()> {
    check_size(field, value.len(), limit)?;
    if value.chars().any(char::is_control) {
        return Err(Error::Invalid {
            field,
            why: "contains a control character".into(),
        });
    }
    Ok(())
}

/// Why an attempt ended as it did: at most [`MAX_REASON_BYTES`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reason(String);

impl Reason {
    /// The text as is, when it fits the rule.
    pub fn new(text: impl Into<String>) -> Result<Reason> {
        Reason::try_from(text.into())
    }

    /// The text, cut at a character boundary to fit and with control characters replaced by spaces:
    /// for a device reporting an error message it does not control.
    pub fn lossy(text: &str) -> Reason {
        let mut out = String::new();
        for c in text.chars() {
            let c = if c.is_control() { ' ' } else { c };
            if out.len() + c.len_utf8() > MAX_REASON_BYTES {
                break;
            }
            out.push(c);
        }
        Reason(out)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Reason {
    type Error = Error;
    fn try_from(value: String) -> Result<Reason> {
        check_text("reason", &value, MAX_REASON_BYTES)?;
        Ok(Reason(value))
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.0
    }
}

/// A TUF target name (`fw/board-a/1.2.0.img`): 1 to [`MAX_TARGET_NAME_BYTES`] bytes, no control
/// characters, not starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetName(String);

impl TargetName {
    /// The name, when it fits the rule.
    pub fn new(name: impl Into<String>) -> Result<TargetName> {
        TargetName::try_from(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TargetName {
    type Error = Error;
    fn try_from(value: String) -> Result<TargetName> {
        check_text("target", &value, MAX_TARGET_NAME_BYTES)?;
        if value.is_empty() || value.starts_with('/') {
            return Err(Error::Invalid {
                field: "target",
                why: format!("{value:?} is empty or absolute"),
            });
        }
        Ok(TargetName(value))
    }
}

impl From<TargetName> for String {
    fn from(t: TargetName) -> String {
        t.0
    }
}
