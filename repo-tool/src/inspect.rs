//! `repo-tool verify` and `repo-tool list`: read a repository, change nothing.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use crate::cli::VerifyArgs;
use crate::Outcome;

/// Runs `verify`: prints each warning and problem, then a summary line; problems found are an
/// [`Outcome::ProblemsFound`], not an error, so the exit status tells them apart from "could not run".
pub fn verify(args: VerifyArgs) -> Result<Outcome> {
    let now = ota_publish::whole_seconds(jiff::Timestamp::now())?;
    let report = ota_publish::verify(&args.repo, now, args.warn_within)?;
    if args.json {
        let out = json!({
            "ok": report.is_ok(),
            "problems": report.problems,
            "warnings": report.warnings,
            "root_versions": report.root_versions,
            "targets_checked": report.targets_checked,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(if report.is_ok() {
            Outcome::Done
        } else {
            Outcome::ProblemsFound
        });
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    if !report.is_ok() {
        eprintln!(
            "error: {} problem(s) found in {}",
            report.problems.len(),
            args.repo.display()
        );
        return Ok(Outcome::ProblemsFound);
    }
    println!(
        "ok: {} root version(s), {} target file(s) checked",
        report.root_versions, report.targets_checked
    );
    Ok(Outcome::Done)
}

/// Runs `list`: each role's version and expiry, then the releases per hardware id and channel, each
/// with the deltas it offers.
pub fn list(repo: &Path, as_json: bool) -> Result<()> {
    let listing = ota_publish::list(repo)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&listing_json(&listing))?);
        return Ok(());
    }
    println!("{:<12} {:>8}  expires", "role", "version");
    for (role, version, expires) in &listing.roles {
        println!("{role:<12} {version:>8}  {expires}");
    }
    for ((hw, channel), releases) in &listing.releases {
        println!("\n{hw} / {channel}:");
        for r in releases {
            println!(
                "  {:<16} {:>4}%  {:>12} bytes  {}  (role {})",
                r.version.to_string(),
                r.rollout_percent,
                r.length,
                r.target,
                r.role
            );
            if let Some(line) = rollout_line(r) {
                println!("    {line}");
            }
            for d in &r.deltas {
                println!(
                    "    delta from {:<10} {:>12} bytes  {}",
                    d.base_version.to_string(),
                    d.length,
                    d.target
                );
            }
        }
    }
    Ok(())
}

/// `list --json`: `roles` [{role, version, expires}], `releases` [{hardware, channel, version, target,
/// role, length, rollout_percent, waves, control, deltas}], in the text listing's order.
fn listing_json(listing: &ota_publish::Listing) -> Value {
    let roles: Vec<Value> = listing
        .roles
        .iter()
        .map(|(role, version, expires)| {
            json!({"role": role, "version": version, "expires": expires.to_string()})
        })
        .collect();
    let mut releases = Vec::new();
    for ((hw, channel), listed) in &listing.releases {
        for r in listed {
            releases.push(release_json(hw, channel, r));
        }
    }
    json!({ "roles": roles, "releases": releases })
}

fn release_json(hardware: &str, channel: &str, r: &ota_publish::ListedRelease) -> Value {
    let waves = r.waves.as_ref().map(|plan| {
        (0..plan.waves.len())
            .filter_map(|i| {
                let w = plan.waves.get(i)?;
                let opens = plan.opening_unix(i).ok()?;
                Some(json!({"share": ota_publish::share_text(w.share_bp), "opens_unix": opens}))
            })
            .collect::<Vec<_>>()
    });
    let control = r.control.as_ref().map(|c| {
        json!({
            "state": rollout_state_name(c.state),
            "since_unix": c.since_unix,
            "reason": c.reason,
            "replacement_plan": c.waves.is_some(),
        })
    });
    let deltas: Vec<Value> = r
        .deltas
        .iter()
        .map(|d| {
            json!({
                "base_version": d.base_version.to_string(),
                "base_sha256": d.base_sha256.to_string(),
                "base_length": d.base_length,
                "target": d.target,
                "length": d.length,
            })
        })
        .collect();
    json!({
        "hardware": hardware,
        "channel": channel,
        "version": r.version.to_string(),
        "target": r.target,
        "role": r.role,
        "length": r.length,
        "rollout_percent": r.rollout_percent,
        "waves": waves,
        "control": control,
        "deltas": deltas,
    })
}

fn rollout_state_name(state: ota_release::RolloutState) -> &'static str {
    match state {
        ota_release::RolloutState::Active => "active",
        ota_release::RolloutState::Halted => "halted",
        ota_release::RolloutState::Pulled => "pulled",
    }
}

/// A release's waves and rollout-control state, when it has either (releases without keep the
/// listing they always had).
fn rollout_line(r: &ota_publish::ListedRelease) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(plan) = &r.waves {
        let waves: Vec<String> = (0..plan.waves.len())
            .filter_map(|i| {
                let w = plan.waves.get(i)?;
                let opens = plan.opening_unix(i).ok()?;
                let at = jiff::Timestamp::from_second(opens).ok()?;
                Some(format!("{} at {at}", ota_publish::share_text(w.share_bp)))
            })
            .collect();
        parts.push(format!("waves: {}", waves.join(", ")));
    }
    if let Some(c) = &r.control {
        let state = rollout_state_name(c.state);
        let since = jiff::Timestamp::from_second(c.since_unix)
            .map_or_else(|_| c.since_unix.to_string(), |t| t.to_string());
        let mut s = format!("rollout-control: {state} since {since}");
        if !c.reason.is_empty() {
            s.push_str(&format!(" ({})", c.reason));
        }
        if c.waves.is_some() {
            s.push_str(", replacement plan");
        }
        parts.push(s);
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}
