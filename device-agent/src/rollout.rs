//! The device's side of staged rollouts and rollout control: why an update in progress installs its
//! image ([`Purpose`]: an update, a pull-back, a field drill), how a drill ended ([`DrillResult`]), and
//! the last verified rollout view ([`RolloutView`], `rollout.json` in the state directory) that `status`
//! reads without the network and that stays in force when a newer control file cannot be verified.
//!
//! Whether a device may start a release is `ota_release::standing`, the one rule the publisher's
//! `rollout status` and the drill share; this module only keeps its inputs and prints its answers.

use std::fmt;
use std::path::{Path, PathBuf};

use ota_release::{standing, Release, RolloutControl, RolloutSeed, Standing, Version};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most drill outcomes remembered in the record (oldest forgotten first).
pub const MAX_DRILLS_REMEMBERED: usize = 16;
/// Name of the last verified rollout view inside the state directory.
pub const VIEW_FILE: &str = "rollout.json";
/// Largest rollout view accepted: the control file's bound plus the offered releases' fields.
const MAX_VIEW_FILE: u64 = 1024 * 1024;

/// Why an update in progress installs its image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Purpose {
    /// A newer release, by its rollout plan: committed when healthy, the floor rises.
    #[default]
    Update,
    /// The running release `pulled` was withdrawn by signed rollout control: going back to an older
    /// signed release, whose commit lowers the floor to it (the only way the version goes down).
    PullBack {
        /// The withdrawn version.
        pulled: Version,
    },
    /// A signed field drill: the trial runs the health checks, then rolls back on purpose.
    Drill {
        /// The drill's id.
        id: String,
    },
}

impl Purpose {
    /// Whether this is a plain update (the default, not written in the record).
    pub fn is_update(&self) -> bool {
        *self == Purpose::Update
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Purpose::Update => Ok(()),
            Purpose::PullBack { pulled } => write!(f, " (going back: {pulled} is pulled)"),
            Purpose::Drill { id } => write!(f, " (field drill {id})"),
        }
    }
}

/// How a field drill ended on this device (the names are `ota_report::Outcome`'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillOutcome {
    /// The trial passed its health checks and the device rolled back on purpose.
    DrillPassed,
    /// The trial did not pass (the release is condemned here, as after any failed trial).
    DrillFailed,
}

/// One drill's outcome, kept in the device record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillResult {
    /// The drill's id.
    pub id: String,
    /// The release drilled.
    pub version: Version,
    /// How it ended.
    pub outcome: DrillOutcome,
    /// Why it failed (empty when it passed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl DrillResult {
    /// The drill's trial was healthy and rolled back on purpose.
    pub fn passed(id: String, version: Version) -> DrillResult {
        DrillResult {
            id,
            version,
            outcome: DrillOutcome::DrillPassed,
            reason: String::new(),
        }
    }

    /// The drill's trial failed.
    pub fn failed(id: String, version: Version, reason: String) -> DrillResult {
        DrillResult {
            id,
            version,
            outcome: DrillOutcome::DrillFailed,
            reason,
        }
    }
}

/// What the device last verified about rollouts for its hardware id and channel: the control file and
/// the releases offered, saved at each poll so `status` needs no network, and so a control file that
/// fails verification later leaves the last verified one in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutView {
    /// When it was saved (Unix seconds).
    pub checked_unix: i64,
    /// The last verified rollout-control file (`None`: the repository has none).
    pub control: Option<RolloutControl>,
    /// Why the newest control file was refused at the last poll (the last verified one stays in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_error: Option<String>,
    /// The releases offered to this hardware id and channel, as signed.
    pub releases: Vec<Release>,
}

/// One offered release's standing for this device, as `status` and `check` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReleaseStanding {
    /// The release.
    pub version: Version,
    /// `open`, `waiting`, `halted` or `pulled`.
    pub standing: &'static str,
    /// The device's wave (0-based), when the rollout proceeds.
    pub wave: Option<usize>,
    /// When the device may start it (Unix seconds), when the rollout proceeds.
    pub eligible_unix: Option<i64>,
    /// When the rollout was halted or the release pulled.
    pub since_unix: Option<i64>,
    /// Why it was halted or pulled (or why its plan could not be read).
    pub reason: String,
}

impl RolloutView {
    /// Each offered release's standing for the device with `seed` at `now_unix`, newest first.
    pub fn standings(&self, seed: RolloutSeed, now_unix: i64) -> Vec<ReleaseStanding> {
        let mut out: Vec<ReleaseStanding> = self
            .releases
            .iter()
            .map(|r| {
                let entry = self.control.as_ref().and_then(|c| c.release(&r.version));
                release_standing(r, standing(r, entry, seed, now_unix))
            })
            .collect();
        out.sort_by(|a, b| b.version.cmp(&a.version));
        out
    }
}

/// `standing`'s answer (or its error) in the form `status` prints.
pub fn release_standing(release: &Release, answer: ota_release::Result<Standing>) -> ReleaseStanding {
    let mut s = ReleaseStanding {
        version: release.version.clone(),
        standing: "open",
        wave: None,
        eligible_unix: None,
        since_unix: None,
        reason: String::new(),
    };
    match answer {
        // A release without a plan goes to everyone at once: no moment to show.
        Ok(Standing::Open(place)) if place.eligible_unix == i64::MIN => s.wave = Some(place.wave),
        Ok(Standing::Open(place)) => {
            (s.wave, s.eligible_unix) = (Some(place.wave), Some(place.eligible_unix))
        }
        Ok(Standing::Waiting(place)) => {
            s.standing = "waiting";
            (s.wave, s.eligible_unix) = (Some(place.wave), Some(place.eligible_unix));
        }
        Ok(Standing::Halted { since_unix, reason }) => {
            (s.standing, s.since_unix, s.reason) = ("halted", Some(since_unix), reason);
        }
        Ok(Standing::Pulled { since_unix, reason }) => {
            (s.standing, s.since_unix, s.reason) = ("pulled", Some(since_unix), reason);
        }
        Err(e) => (s.standing, s.reason) = ("waiting", e.to_string()),
    }
    s
}

/// The file holding the last verified [`RolloutView`].
#[derive(Clone, Debug)]
pub struct ViewFile {
    path: PathBuf,
}

impl ViewFile {
    /// The view file in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> ViewFile {
        ViewFile {
            path: state_dir.join(VIEW_FILE),
        }
    }

    /// The last saved view; `None` before the first poll.
    pub fn load(&self) -> Result<Option<RolloutView>> {
        let bytes = match ota_fs::read_bounded(&self.path, MAX_VIEW_FILE) {
            Ok(bytes) => bytes,
            Err(ota_fs::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::StateCorrupt {
                path: self.path.clone(),
                why: e.to_string(),
            })
    }

    /// Saves `view` atomically.
    pub fn save(&self, view: &RolloutView) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(view).map_err(|e| Error::StateCorrupt {
            path: self.path.clone(),
            why: format!("cannot serialize: {e}"),
        })?;
        Ok(ota_fs::write_atomic(&self.path, &bytes, 0o600)?)
    }
}

/// A Unix time as RFC 3339 UTC (the number itself when out of chrono's range).
pub fn format_unix(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(
        || format!("unix time {unix}"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}
