//! `device-agent check --json`: the dry run's answer as one JSON object with stable fields (listed in
//! the README), for provisioning scripts and fleet tooling; and the next step both forms print.

use device_agent::device::{Preflight, RolloutStatus};
use device_agent::rollout::Purpose;
use device_agent::select::Decision;
use serde_json::{json, Value};

/// What the operator does next, given what `check` found (`Ok(None)`: nothing to install).
pub fn next_step(decision: &Decision, preflight: &Result<Option<Preflight>, String>) -> String {
    match (decision, preflight) {
        (Decision::SwitchBack { slot, .. }, _) => {
            format!("`device-agent install` trial-boots slot {slot}, then commits it when healthy")
        }
        (_, Err(_)) => "nothing: `install` would refuse this release (see `refused`); publish a release \
                        that fits, or give the device larger slots"
            .to_owned(),
        (_, Ok(None)) => "nothing to install; `device-agent run` polls on its schedule".to_owned(),
        (_, Ok(Some(p))) => format!(
            "`device-agent install` writes it into slot {} and reboots into a trial boot",
            p.slot
        ),
    }
}

/// The JSON object: `decision` (`up_to_date`, `install`, `switch_back`), `release` {version, target,
/// length, sha256} or null, `purpose` (`update`, `pull_back`, `drill`) or null, `delta_offered`
/// {target, length} or null, `skipped` [{target, why}], `install_would_accept`, `refused` (why, or
/// null), `slot` and `capacity` (the slot written, or null), `delta_usable` and `delta_not_usable`
/// (why the full image would be downloaded) or null, `rollout` (as in `status --json`), `next`.
pub fn check_json(
    decision: &Decision,
    rollout: &RolloutStatus,
    preflight: &Result<Option<Preflight>, String>,
) -> Value {
    let image = |i: &device_agent::state::ImageRef| {
        json!({"version": i.version.to_string(), "target": i.target, "length": i.length,
               "sha256": i.sha256.to_string()})
    };
    let (name, release, purpose, offered) = match decision {
        Decision::UpToDate { .. } => ("up_to_date", Value::Null, Value::Null, Value::Null),
        Decision::Install {
            image: i,
            delta,
            purpose,
            ..
        } => (
            "install",
            image(i),
            json!(purpose_name(purpose)),
            delta
                .as_ref()
                .map_or(Value::Null, |d| json!({"target": d.target, "length": d.length})),
        ),
        Decision::SwitchBack { image: i, .. } => ("switch_back", image(i), Value::Null, Value::Null),
    };
    let skipped: Vec<Value> = decision
        .skipped()
        .iter()
        .map(|s| json!({"target": s.target, "why": s.why}))
        .collect();
    let fit = preflight.as_ref().ok().and_then(Option::as_ref);
    let delta = fit.and_then(|p| p.delta.as_ref());
    json!({
        "decision": name,
        "release": release,
        "purpose": purpose,
        "delta_offered": offered,
        "skipped": skipped,
        "install_would_accept": preflight.is_ok(),
        "refused": preflight.as_ref().err(),
        "slot": fit.map(|p| p.slot.to_string()),
        "capacity": fit.map(|p| p.capacity),
        "delta_usable": delta.map(Result::is_ok),
        "delta_not_usable": delta.and_then(|d| d.as_ref().err()),
        "rollout": rollout,
        "next": next_step(decision, preflight),
    })
}

fn purpose_name(purpose: &Purpose) -> &'static str {
    match purpose {
        Purpose::Update => "update",
        Purpose::PullBack { .. } => "pull_back",
        Purpose::Drill { .. } => "drill",
    }
}
