//! [`status`]: where each release's rollout stands, and where one device stands in it, computed with
//! the same `ota_release::standing` the device and the fleet drill call.

use std::collections::BTreeMap;
use std::path::Path;

use ota_release::{
    standing, Channel, FieldDrill, HardwareId, Release, ReleaseControl, RolloutPlan, RolloutSeed,
    RolloutState, Standing,
};
use serde::Serialize;

use crate::error::{invalid, Result};
use crate::loader::RepoState;
use crate::publish::ota_custom;

/// Every release's rollout, per hardware id and channel.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// The moment the status was computed for (Unix seconds).
    pub now_unix: i64,
    /// The device asked about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSeed>,
    /// Per hardware id and channel, sorted.
    pub channels: Vec<ChannelRollout>,
}

/// A device's identity and its rollout seed.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSeed {
    /// The device id.
    pub device_id: String,
    /// Its seed, 16 hex digits.
    pub seed: String,
}

/// The releases and drills of one hardware id and channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelRollout {
    /// Hardware id.
    pub hardware: String,
    /// Channel.
    pub channel: String,
    /// The control file's target path, when the rollout-control role published one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_file: Option<String>,
    /// Releases, oldest first.
    pub releases: Vec<ReleaseRollout>,
    /// Field drills in the control file (over or not).
    pub drills: Vec<FieldDrill>,
}

/// Which plan a release follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanSource {
    /// The release carries none: everyone at once.
    None,
    /// Its own (signed by the firmware role).
    Release,
    /// The rollout-control role's replacement.
    Control,
}

/// One release's rollout.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRollout {
    /// Version.
    pub version: String,
    /// Its target name.
    pub target: String,
    /// Active, halted or pulled.
    pub state: RolloutState,
    /// When the control role set the state (absent: never touched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_unix: Option<i64>,
    /// Why.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Which plan applies.
    pub plan_from: PlanSource,
    /// The plan's waves, when it has one.
    pub waves: Vec<WaveStatus>,
    /// Seconds over which the last wave spreads.
    pub final_spread_secs: u64,
    /// The device asked about: its place and standing in this release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceStanding>,
}

/// One wave of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct WaveStatus {
    /// Cumulative share of the fleet, in basis points.
    pub share_bp: u16,
    /// When it opens (Unix seconds).
    pub opens_unix: i64,
    /// Whether it is open now.
    pub open: bool,
}

/// Where one device stands in one release.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStanding {
    /// Its wave, 0-based.
    pub wave: usize,
    /// When it may start (Unix seconds); absent when the release has no plan (everyone at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eligible_unix: Option<i64>,
    /// `open`, `waiting`, `halted` or `pulled`: what `ota_release::standing` says now.
    pub standing: &'static str,
}

/// Where every release of the repository stands at `now_unix` (only those of `hardware` and/or
/// `channel` when given), and with `device_id`, that device's seed, wave, eligible time and standing.
pub fn status(
    repo: &Path,
    hardware: Option<&str>,
    channel: Option<&str>,
    device_id: Option<&str>,
    now_unix: i64,
) -> Result<RolloutStatus> {
    let state = RepoState::load(repo)?;
    let seed = device_id.map(RolloutSeed::of_device);
    let mut by_channel: BTreeMap<(String, String), Vec<(String, Release)>> = BTreeMap::new();
    for (_, targets) in state.all_roles() {
        for (name, target) in &targets.targets {
            let Some(ota_release::OtaTarget::Release(r)) = ota_custom(target) else {
                continue;
            };
            for h in &r.hardware {
                let key = (h.to_string(), r.channel.to_string());
                if hardware.is_some_and(|w| w != key.0) || channel.is_some_and(|w| w != key.1) {
                    continue;
                }
                by_channel
                    .entry(key)
                    .or_default()
                    .push((name.raw().to_owned(), r.clone()));
            }
        }
    }
    let mut channels = Vec::with_capacity(by_channel.len());
    for ((hw, ch), mut releases) in by_channel {
        releases.sort_by(|a, b| a.1.version.cmp(&b.1.version));
        channels.push(channel_rollout(repo, &state, &hw, &ch, releases, seed, now_unix)?);
    }
    Ok(RolloutStatus {
        now_unix,
        device: device_id.zip(seed).map(|(id, s)| DeviceSeed {
            device_id: id.to_owned(),
            seed: format!("{:016x}", s.0),
        }),
        channels,
    })
}

fn channel_rollout(
    repo: &Path,
    state: &RepoState,
    hw: &str,
    ch: &str,
    releases: Vec<(String, Release)>,
    seed: Option<RolloutSeed>,
    now_unix: i64,
) -> Result<ChannelRollout> {
    let hardware = HardwareId::new(hw).map_err(|e| invalid("hardware", e.to_string()))?;
    let channel = Channel::new(ch).map_err(|e| invalid("channel", e.to_string()))?;
    let control = super::read_control(repo, state, &hardware, &channel)?.map(|(c, _)| c);
    let mut out = Vec::with_capacity(releases.len());
    for (target, release) in releases {
        let entry = control.as_ref().and_then(|c| c.release(&release.version));
        out.push(release_rollout(target, &release, entry, seed, now_unix)?);
    }
    Ok(ChannelRollout {
        control_file: control
            .as_ref()
            .map(|_| ota_release::control_target_path(&hardware, &channel)),
        drills: control.map(|c| c.drills).unwrap_or_default(),
        hardware: hw.to_owned(),
        channel: ch.to_owned(),
        releases: out,
    })
}

fn release_rollout(
    target: String,
    release: &Release,
    entry: Option<&ReleaseControl>,
    seed: Option<RolloutSeed>,
    now_unix: i64,
) -> Result<ReleaseRollout> {
    let (plan_from, plan) = match (entry.and_then(|e| e.waves.as_ref()), &release.waves) {
        (Some(p), _) => (PlanSource::Control, Some(p)),
        (None, Some(p)) => (PlanSource::Release, Some(p)),
        (None, None) => (PlanSource::None, None),
    };
    let plan_error = |source| crate::error::Error::Plan {
        what: format!("of release {}", release.version),
        source,
    };
    let mut waves = Vec::new();
    for (i, w) in plan
        .map(|p| p.waves.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let opens_unix = plan.map_or(Ok(0), |p| p.opening_unix(i)).map_err(plan_error)?;
        waves.push(WaveStatus {
            share_bp: w.share_bp,
            opens_unix,
            open: opens_unix <= now_unix,
        });
    }
    let device = match seed {
        Some(seed) => Some(device_standing(release, entry, plan, seed, now_unix)?),
        None => None,
    };
    Ok(ReleaseRollout {
        version: release.version.to_string(),
        target,
        state: entry.map_or(RolloutState::Active, |e| e.state),
        since_unix: entry.map(|e| e.since_unix),
        reason: entry.map(|e| e.reason.clone()).unwrap_or_default(),
        plan_from,
        final_spread_secs: plan.map_or(0, |p| p.final_spread_secs),
        waves,
        device,
    })
}

fn device_standing(
    release: &Release,
    entry: Option<&ReleaseControl>,
    plan: Option<&RolloutPlan>,
    seed: RolloutSeed,
    now_unix: i64,
) -> Result<DeviceStanding> {
    let plan_error = |source| crate::error::Error::Plan {
        what: format!("of release {}", release.version),
        source,
    };
    let everyone = RolloutPlan::everyone_now(i64::MIN);
    // The place is shown even while halted or pulled: where the device resumes.
    let place = plan.unwrap_or(&everyone).place(seed).map_err(plan_error)?;
    let now = standing(release, entry, seed, now_unix).map_err(|source| crate::error::Error::Control {
        path: format!("release {}", release.version),
        source,
    })?;
    Ok(DeviceStanding {
        wave: place.wave,
        eligible_unix: plan.map(|_| place.eligible_unix),
        standing: match now {
            Standing::Open(_) => "open",
            Standing::Waiting(_) => "waiting",
            Standing::Halted { .. } => "halted",
            Standing::Pulled { .. } => "pulled",
        },
    })
}
