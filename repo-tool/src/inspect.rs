//! `repo-tool verify` and `repo-tool list`: read a repository, change nothing.

use std::path::Path;

use anyhow::Result;

use crate::cli::VerifyArgs;
use crate::Outcome;

/// Runs `verify`: prints each warning and problem, then a summary line; problems found are an
/// [`Outcome::ProblemsFound`], not an error, so the exit status tells them apart from "could not run".
pub fn verify(args: VerifyArgs) -> Result<Outcome> {
    let now = ota_publish::whole_seconds(jiff::Timestamp::now())?;
    let report = ota_publish::verify(&args.repo, now, args.warn_within)?;
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

/// Runs `list`: each role's version and expiry, then the releases per hardware id and channel.
pub fn list(repo: &Path) -> Result<()> {
    let listing = ota_publish::list(repo)?;
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
        }
    }
    Ok(())
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
        let state = match c.state {
            ota_release::RolloutState::Active => "active",
            ota_release::RolloutState::Halted => "halted",
            ota_release::RolloutState::Pulled => "pulled",
        };
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
