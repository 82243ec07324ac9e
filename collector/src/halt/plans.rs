//! Where each release stands in the repository (state, plan, open wave), read with the publisher's
//! `rollout status`, and which wave a device is in: the same `ota_release` placement the devices and
//! `repo-tool rollout status` compute.

use std::collections::BTreeMap;
use std::path::Path;

use ota_release::{RolloutPlan, RolloutSeed, RolloutState, Wave, WaveOpens};

use crate::{Error, Result};

/// One release of one hardware id, as the repository says at the moment asked.
#[derive(Debug, Clone)]
pub(crate) struct LinePlan {
    /// Active, halted or pulled.
    pub(crate) state: RolloutState,
    /// Its plan (the control role's replacement, else its own); `None`: everyone at once.
    pub(crate) plan: Option<RolloutPlan>,
    /// Per wave, whether it is open.
    pub(crate) open: Vec<bool>,
}

impl LinePlan {
    /// The open wave the rule judges (0-based): the last open one; 0 without a plan; `None` when no
    /// wave is open yet.
    pub(crate) fn open_wave(&self) -> Option<usize> {
        if self.plan.is_none() {
            return Some(0);
        }
        self.open.iter().rposition(|&o| o)
    }

    /// The wave (0-based) of `device_id`; 0 without a plan.
    pub(crate) fn wave_of(&self, device_id: &str) -> usize {
        self.plan
            .as_ref()
            .and_then(|p| p.place(RolloutSeed::of_device(device_id)).ok())
            .map_or(0, |p| p.wave)
    }
}

/// (hardware, version) -> its standing, for every release of `channel` in the repository at `now_unix`.
pub(crate) fn channel_plans(
    repo: &Path,
    channel: &str,
    now_unix: i64,
) -> Result<BTreeMap<(String, String), LinePlan>> {
    let status =
        ota_publish::rollout_status(repo, None, Some(channel), None, now_unix).map_err(|source| {
            Error::Repository {
                repo: repo.display().to_string(),
                action: "read the rollout status",
                source: Box::new(source),
            }
        })?;
    let mut out = BTreeMap::new();
    for line in status.channels {
        for release in line.releases {
            let plan = (!release.waves.is_empty()).then(|| RolloutPlan {
                published_unix: release.waves.first().map_or(0, |w| w.opens_unix),
                waves: release
                    .waves
                    .iter()
                    .map(|w| Wave {
                        share_bp: w.share_bp,
                        opens: WaveOpens::AtUnix(w.opens_unix),
                    })
                    .collect(),
                final_spread_secs: release.final_spread_secs,
            });
            let entry = LinePlan {
                state: release.state,
                open: release.waves.iter().map(|w| w.open).collect(),
                plan,
            };
            out.insert((line.hardware.clone(), release.version), entry);
        }
    }
    Ok(out)
}
