//! `repo-tool rollout`: the rollout-control role's commands (init, halt, resume, pull, start, drill,
//! status) over `ota_publish`'s rollout functions; prints what each published.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use ota_publish::{share_text, ControlReport, KeyRing, ReleaseRef, RolloutStatus, PRIVATE_KEY_SUFFIX};
use ota_release::{DrillCohort, FieldDrill, RolloutState};

use crate::cli::{RolloutCommand, RolloutDrillArgs, RolloutInitArgs, RolloutRelease, RolloutStateArgs};

/// Runs one `rollout` subcommand.
pub fn run(command: RolloutCommand) -> Result<()> {
    match command {
        RolloutCommand::Init(args) => init(args),
        RolloutCommand::Halt(args) => set_state(args, RolloutState::Halted),
        RolloutCommand::Resume(args) => set_state(args, RolloutState::Active),
        RolloutCommand::Pull(args) => set_state(args, RolloutState::Pulled),
        RolloutCommand::Start(args) => {
            let report = ota_publish::set_plan(
                &args.release.repo,
                &release_ref(&args.release),
                &args.waves,
                &args.lifetimes.expiries(),
                &args.signing.load()?,
            )?;
            print_report(
                &report,
                &format!("new plan for {}: {}", args.release.version, args.waves),
            )
        }
        RolloutCommand::Drill(args) => drill(args),
        RolloutCommand::Status(args) => {
            let now = jiff::Timestamp::now().as_second();
            let status = ota_publish::rollout_status(
                &args.repo,
                args.hardware.as_deref(),
                args.channel.as_deref(),
                args.device_id.as_deref(),
                now,
            )?;
            match args.json {
                true => println!("{}", serde_json::to_string_pretty(&status)?),
                false => print!("{}", status_text(&status)),
            }
            Ok(())
        }
    }
}

fn init(args: RolloutInitArgs) -> Result<()> {
    let mut ring = args.signing.load()?;
    // A private control key given as --control-key also signs the role's first version.
    let private: Vec<_> = args
        .control_keys
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(PRIVATE_KEY_SUFFIX))
        .cloned()
        .collect();
    ring.extend(KeyRing::from_files(&private)?);
    let keys = crate::release::role_spec(&args.control_keys, args.threshold)?;
    ota_publish::rollout_init(&args.repo, &keys, &args.lifetimes.expiries(), &ring)?;
    println!(
        "delegated {} to role {} (threshold {})",
        ota_release::CONTROL_PATH_PATTERN,
        ota_release::CONTROL_ROLE,
        args.threshold
    );
    Ok(())
}

fn release_ref(r: &RolloutRelease) -> ReleaseRef {
    ReleaseRef {
        hardware: r.hardware.clone(),
        channel: r.channel.clone(),
        version: r.version.clone(),
    }
}

fn set_state(args: RolloutStateArgs, state: RolloutState) -> Result<()> {
    let report = ota_publish::set_state(
        &args.release.repo,
        &release_ref(&args.release),
        state,
        &args.reason,
        &args.lifetimes.expiries(),
        &args.signing.load()?,
    )?;
    let what = match state {
        RolloutState::Halted => "halted",
        RolloutState::Active => "resumed",
        RolloutState::Pulled => "pulled",
    };
    print_report(&report, &format!("{what} {}", args.release.version))
}

fn drill(args: RolloutDrillArgs) -> Result<()> {
    let now = jiff::Timestamp::now().as_second();
    let until_unix = match ota_publish::parse_duration_secs(&args.until) {
        Some(secs) => now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)),
        None => args
            .until
            .parse::<jiff::Timestamp>()
            .with_context(|| {
                format!(
                    "--until {:?}: neither a duration (1d) nor an RFC 3339 time",
                    args.until
                )
            })?
            .as_second(),
    };
    let cohort = match &args.share {
        Some(share) => DrillCohort::ShareBp(
            ota_publish::parse_share_bp(share)
                .with_context(|| format!("--share {share:?}: expected a percent such as 1% or 0.5%"))?,
        ),
        None => DrillCohort::Devices(args.devices.clone()),
    };
    let release = ota_release::parse_version(&args.release.version)?;
    let drill = FieldDrill {
        id: args.id.clone(),
        release,
        cohort,
        until_unix,
    };
    let report = ota_publish::add_drill(
        &args.release.repo,
        &args.release.hardware,
        &args.release.channel,
        drill,
        &args.lifetimes.expiries(),
        &args.signing.load()?,
    )?;
    print_report(
        &report,
        &format!(
            "drill {} on {} until {}",
            args.id,
            args.release.version,
            time(until_unix)
        ),
    )
}

fn print_report(report: &ControlReport, what: &str) -> Result<()> {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{what}: {} published ({} version {})",
        report.path,
        ota_release::CONTROL_ROLE,
        report.role_version
    );
    Ok(())
}

/// A Unix time as RFC 3339 UTC.
fn time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

/// The human `status`: per hardware id and channel, each release's state and plan.
fn status_text(status: &RolloutStatus) -> String {
    let mut out = String::new();
    if let Some(d) = &status.device {
        let _ = writeln!(out, "device {}: seed {}", d.device_id, d.seed);
    }
    for ch in &status.channels {
        let control = ch.control_file.as_deref().unwrap_or("no control file");
        let _ = writeln!(out, "{} / {} ({control}):", ch.hardware, ch.channel);
        for r in &ch.releases {
            let state = match r.state {
                RolloutState::Active => "active",
                RolloutState::Halted => "halted",
                RolloutState::Pulled => "pulled",
            };
            let _ = write!(out, "  {:<12} {state}", r.version);
            if let Some(since) = r.since_unix {
                let _ = write!(out, " since {}", time(since));
            }
            if !r.reason.is_empty() {
                let _ = write!(out, ": {}", r.reason);
            }
            let _ = writeln!(out, "\n    {}", plan_text(r, status.now_unix));
            if let Some(d) = &r.device {
                let _ = writeln!(
                    out,
                    "    device: wave {}, eligible {}, {}",
                    d.wave + 1,
                    d.eligible_unix.map_or_else(|| "at once".into(), time),
                    d.standing
                );
            }
        }
        for d in &ch.drills {
            let cohort = match &d.cohort {
                DrillCohort::Devices(ids) => format!("devices {}", ids.join(",")),
                DrillCohort::ShareBp(bp) => format!("{} of the fleet", share_text(*bp)),
            };
            let over = if d.until_unix <= status.now_unix {
                " (over)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  drill {} on {}: {cohort}, until {}{over}",
                d.id,
                d.release,
                time(d.until_unix)
            );
        }
    }
    out
}

fn plan_text(r: &ota_publish::ReleaseRollout, now: i64) -> String {
    let from = match r.plan_from {
        ota_publish::PlanSource::None => return "plan: everyone at once".into(),
        ota_publish::PlanSource::Release => "release",
        ota_publish::PlanSource::Control => "rollout-control",
    };
    let waves: Vec<String> = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let when = if w.opens_unix <= now {
                "open since"
            } else {
                "opens"
            };
            format!(
                "wave {} {} {when} {}",
                i + 1,
                share_text(w.share_bp),
                time(w.opens_unix)
            )
        })
        .collect();
    format!(
        "plan ({from}): {}; last wave spread over {}s",
        waves.join(", "),
        r.final_spread_secs
    )
}
