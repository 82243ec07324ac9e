//! The device's report of each update outcome: what is known when an update ends ([`OutcomeFacts`],
//! saved in the update record with the state that ends it), the signed [`ota_report::Report`] made from
//! it, and [`IdentitySigner`], which signs with the device's identity wherever its key lives.
//!
//! The facts are numbered (`number` grows by one per outcome) and the queue keeps the highest number it
//! queued, so the report of an outcome is queued exactly once: right after the state is saved, or at the
//! next start when a cut came between the two.

use chrono::{DateTime, Utc};
use ota_release::{Channel, HardwareId, Version};
use ota_report::{DeviceId, InstallMethod, Outcome, PublicKey, Reason, Report, ReportSigner, TargetName};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::IdentityKey;
use crate::state::{DeviceRecord, InstallVia, UpdateState};

/// What the device knows of one update that ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeFacts {
    /// The outcome's number on this device (1, 2, ...): the report of each is queued once.
    pub number: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The version running before.
    pub from_version: Version,
    /// The version it was for.
    pub to_version: Version,
    /// That release's TUF target name.
    pub target: String,
    /// Why, in words (empty for a commit).
    pub reason: String,
    /// When the attempt started (seconds since the Unix epoch, device clock).
    pub started_unix: u64,
    /// When it ended.
    pub finished_unix: u64,
    /// Bytes downloaded for it.
    pub bytes_downloaded: u64,
    /// Delta or full image; `None` when nothing was installed.
    pub install_method: Option<InstallMethod>,
}

impl OutcomeFacts {
    /// The facts of the update `before` that `after` ends (`None` unless `before` is in progress and
    /// `after` final): numbered after the record's last outcome, timed from the attempt's start.
    pub fn of_transition(
        before: &UpdateState,
        after: &UpdateState,
        record: &DeviceRecord,
        now_unix: u64,
    ) -> Option<OutcomeFacts> {
        if before.is_final() || !after.is_final() {
            return None;
        }
        let (image, running) = match before {
            UpdateState::Downloading { image, slot, .. } => (image, slot.other()),
            UpdateState::Installed { image, from, .. } | UpdateState::TrialBoot { image, from, .. } => {
                (image, *from)
            }
            _ => return None,
        };
        let drilled = matches!(
            before,
            UpdateState::TrialBoot {
                purpose: crate::rollout::Purpose::Drill { .. },
                ..
            }
        );
        let (outcome, reason) = match after {
            UpdateState::Committed { .. } => (Outcome::Committed, String::new()),
            // A drill's healthy trial rolls back on purpose; an unhealthy one is a drill that failed.
            UpdateState::DrillRolledBack { drill, .. } => (Outcome::DrillPassed, format!("drill {drill}")),
            UpdateState::RolledBack { reason, .. } if drilled => (Outcome::DrillFailed, reason.clone()),
            UpdateState::RolledBack { reason, .. } => (Outcome::RolledBack, reason.clone()),
            UpdateState::Failed { reason, .. } => (Outcome::Failed, reason.clone()),
            _ => return None,
        };
        let install = record
            .last_install
            .as_ref()
            .filter(|i| i.version == image.version);
        Some(OutcomeFacts {
            number: record
                .last_outcome
                .as_ref()
                .map_or(0, |o| o.number)
                .saturating_add(1),
            outcome,
            from_version: record
                .slot(running)
                .map_or_else(|| record.floor.clone(), |s| s.version.clone()),
            to_version: image.version.clone(),
            target: image.target.clone(),
            reason,
            started_unix: record.attempt_started_unix.unwrap_or(now_unix).min(now_unix),
            finished_unix: now_unix,
            bytes_downloaded: install.map_or(0, |i| i.downloaded_bytes),
            install_method: install.map(|i| match i.via {
                InstallVia::Delta { .. } => InstallMethod::Delta,
                InstallVia::Full => InstallMethod::Full,
            }),
        })
    }

    /// The report of these facts for `device` (hardware and channel from the configuration); the queue
    /// sets its sequence number and drop count.
    pub fn to_report(&self, device: DeviceId, hardware: &HardwareId, channel: &Channel) -> Result<Report> {
        let target = TargetName::new(self.target.clone()).map_err(|source| Error::Report { source })?;
        let time = |unix: u64| {
            DateTime::<Utc>::from_timestamp(i64::try_from(unix).unwrap_or(i64::MAX), 0).unwrap_or_default()
        };
        Ok(Report {
            schema: ota_report::SCHEMA_VERSION,
            device_id: device,
            sequence: 0,
            hardware: hardware.clone(),
            channel: channel.clone(),
            from_version: self.from_version.clone(),
            to_version: self.to_version.clone(),
            target,
            outcome: self.outcome,
            reason: Reason::lossy(&self.reason),
            started: time(self.started_unix.min(self.finished_unix)),
            finished: time(self.finished_unix),
            bytes_downloaded: self.bytes_downloaded,
            install_method: self.install_method,
            reports_dropped: 0,
        })
    }
}

/// Signs reports with the device's identity key ([`IdentityKey`]: a key file or a token).
pub struct IdentitySigner<'a>(pub &'a dyn IdentityKey);

impl IdentitySigner<'_> {
    /// The device id the collector knows this key by.
    pub fn device_id(&self) -> DeviceId {
        self.public_key().device_id()
    }
}

impl ReportSigner for IdentitySigner<'_> {
    fn public_key(&self) -> PublicKey {
        self.0.public_key()
    }

    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.sign(message)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ImageRef, InstallReport, InstallSource};
    use crate::SlotId;
    use ota_release::Sha256Digest;

    fn image(v: &str) -> ImageRef {
        ImageRef {
            target: format!("fw/{v}.img"),
            version: v.parse().unwrap(),
            sha256: Sha256Digest::of(v.as_bytes()),
            length: 3,
        }
    }

    #[test]
    fn an_update_that_ends_gives_numbered_facts_and_one_in_progress_gives_none() {
        let old = image("1.0.0");
        let mut record = DeviceRecord::provisioned(SlotId::A, old.slot_image());
        record.attempt_started_unix = Some(100);
        record.last_install = Some(InstallReport {
            version: "2.0.0".parse().unwrap(),
            via: InstallVia::Delta {
                target: "fw/2.0.0.delta".into(),
            },
            downloaded_bytes: 4096,
            delta_fallback: None,
            source: InstallSource::Repository,
        });
        let trial = UpdateState::TrialBoot {
            slot: SlotId::B,
            image: image("2.0.0"),
            from: SlotId::A,
            restarts: 0,
            purpose: crate::rollout::Purpose::default(),
        };
        let rolled_back = UpdateState::RolledBack {
            slot: SlotId::B,
            version: "2.0.0".parse().unwrap(),
            to: SlotId::A,
            reason: "app: exit 1".into(),
        };
        let facts = OutcomeFacts::of_transition(&trial, &rolled_back, &record, 160).unwrap();
        assert_eq!(facts.number, 1);
        assert_eq!(
            (facts.outcome, facts.reason.as_str()),
            (Outcome::RolledBack, "app: exit 1")
        );
        assert_eq!(
            (facts.from_version.to_string(), facts.to_version.to_string()),
            ("1.0.0".into(), "2.0.0".into())
        );
        assert_eq!((facts.started_unix, facts.finished_unix), (100, 160));
        assert_eq!(
            (facts.bytes_downloaded, facts.install_method),
            (4096, Some(InstallMethod::Delta))
        );
        record.last_outcome = Some(facts);
        let committed = UpdateState::Committed {
            slot: SlotId::B,
            version: "2.0.0".parse().unwrap(),
        };
        assert_eq!(
            OutcomeFacts::of_transition(&trial, &committed, &record, 170)
                .unwrap()
                .number,
            2
        );
        // Not an end: a step in progress, or a restart in a final state.
        assert!(OutcomeFacts::of_transition(&UpdateState::Idle, &trial, &record, 1).is_none());
        assert!(OutcomeFacts::of_transition(&committed, &committed, &record, 1).is_none());
    }
}
