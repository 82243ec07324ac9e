//! `repo-tool init` and `repo-tool add`: a new repository, and firmware releases into it.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ota_publish::deltas::{add_with_deltas, DeltaAddReport, DeltaPolicy, SkipReason, SkippedDelta};

use ota_publish::KeyRef;

use crate::cli::{AddArgs, InitArgs};

/// A role's keys (read from public or private key files, or from tokens through `module`) and
/// threshold.
pub fn role_spec(refs: &[KeyRef], threshold: u64, module: Option<&Path>) -> Result<ota_publish::RoleSpec> {
    let keys = refs
        .iter()
        .map(|r| r.public_key(module))
        .collect::<ota_publish::Result<Vec<_>>>()?;
    Ok(ota_publish::RoleSpec { keys, threshold })
}

/// Runs `init` and prints the new root's fingerprint, as text and (unless `--no-qr`) a QR code.
pub fn init(args: InitArgs) -> Result<()> {
    let module = args.signing.module.path.as_deref();
    let spec = ota_publish::InitSpec {
        root: role_spec(&args.root_keys, args.root_threshold, module)?,
        targets: role_spec(&args.targets_keys, args.targets_threshold, module)?,
        snapshot: role_spec(&args.snapshot_keys, args.snapshot_threshold, module)?,
        timestamp: role_spec(&args.timestamp_keys, args.timestamp_threshold, module)?,
        expiries: args.lifetimes.expiries(),
    };
    let fp = ota_publish::init(&args.repo, &spec, &args.signing.load()?)?;
    println!("created {}", args.repo.display());
    println!("root fingerprint (sha256 of {}):", fp.path.display());
    println!("{}", fp.sha256);
    if !args.no_qr {
        println!("{}", ota_publish::qr_for_terminal(&fp.sha256)?);
    }
    Ok(())
}

/// The releases `add` publishes: one image (`--image`, `--version`) or every file of `--dir`.
fn releases_to_add(args: &AddArgs) -> Result<Vec<ota_publish::ReleaseSpec>> {
    match (&args.image, &args.dir) {
        (Some(image), None) => Ok(vec![ota_publish::ReleaseSpec {
            image: image.clone(),
            version: args
                .version
                .clone()
                .context("--version is required with --image")?,
            hardware: args.hardware.clone(),
            channel: args.channel.clone(),
            rollout_percent: args.rollout,
            name: args.name.clone(),
        }]),
        (None, Some(dir)) => Ok(ota_publish::releases_in_dir(
            dir,
            &args.hardware,
            &args.channel,
            args.rollout,
        )?),
        _ => bail!("give exactly one of --image or --dir"),
    }
}

/// Runs `add`: publishes (or with `--stage`, stages) the releases with their deltas, and prints each
/// target added, each delta not kept, and the role version published or staged.
pub fn add(args: AddArgs) -> Result<()> {
    let releases = releases_to_add(&args)?;
    let opts = ota_publish::AddOptions {
        role: args.role.clone(),
        expiries: args.lifetimes.expiries(),
        stage: args.stage.clone(),
        allow_lower: args.allow_lower,
        waves: Some(args.waves.clone()),
    };
    let policy = DeltaPolicy {
        keep: args.deltas,
        max_share_percent: args.delta_max_share,
        min_image_len: args.delta_min_image,
        max_input_len: delta_input_limit(),
    };
    let report = add_with_deltas(
        &args.repo,
        &releases,
        &opts,
        &args.signing.load()?,
        &policy,
        &mut crate::progress::encode_delta_with_progress_bar,
    )?;
    print_added(&report, &args)
}

fn print_added(report: &DeltaAddReport, args: &AddArgs) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(&added_json(report, args))?);
        return Ok(());
    }
    for s in &report.skipped {
        match &s.reason {
            SkipReason::NotWorthIt { delta_len } => println!(
                "not kept: delta from {} for {} ({} bytes, not under {}% of {} bytes)",
                s.base_version, s.release_target, delta_len, args.delta_max_share, s.image_len
            ),
            other => eprintln!("warning: {}", skipped_delta_warning(s, other)),
        }
    }
    let report = &report.add;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    // One write for all lines, not one per line (a bulk add reports 10,000 targets).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (name, sha, len) in &report.added {
        writeln!(out, "added {name} ({len} bytes, sha256 {sha})")?;
    }
    if args.waves != ota_publish::WavesSpec::Now {
        writeln!(out, "waves: {} (see `repo-tool rollout status`)", args.waves)?;
    }
    match (&report.staged, &args.stage) {
        (Some(s), Some(file)) => crate::staging::print_staged(&mut out, std::slice::from_ref(s), file)?,
        _ => writeln!(out, "{} version {} published", report.role, report.role_version)?,
    }
    out.flush()?;
    Ok(())
}

/// `add --json`: `role`, `role_version`, `published` (false with `--stage`), `staged_file`, `added`
/// [{target, sha256, length}] (images and the deltas kept), `deltas_not_kept` [{base_version,
/// release_target, image_length, delta_length (null when none was built), reason}], `warnings`.
fn added_json(report: &DeltaAddReport, args: &AddArgs) -> serde_json::Value {
    use serde_json::json;
    let not_kept: Vec<_> = report
        .skipped
        .iter()
        .map(|s| {
            let (delta_length, reason) = match &s.reason {
                SkipReason::NotWorthIt { delta_len } => (
                    Some(*delta_len),
                    format!("not under {}% of the image", args.delta_max_share),
                ),
                other => (None, skipped_delta_warning(s, other)),
            };
            json!({
                "base_version": s.base_version,
                "release_target": s.release_target,
                "image_length": s.image_len,
                "delta_length": delta_length,
                "reason": reason,
            })
        })
        .collect();
    let add = &report.add;
    let added: Vec<_> = add
        .added
        .iter()
        .map(|(name, sha, len)| json!({"target": name, "sha256": sha, "length": len}))
        .collect();
    json!({
        "role": add.role,
        "role_version": add.role_version,
        "published": add.staged.is_none(),
        "staged_file": args.stage.as_ref().filter(|_| add.staged.is_some()).map(|f| f.display().to_string()),
        "added": added,
        "deltas_not_kept": not_kept,
        "warnings": add.warnings,
    })
}

/// Why a delta was left out, for a warning: the release was published without it.
fn skipped_delta_warning(s: &SkippedDelta, reason: &SkipReason) -> String {
    let why = match reason {
        SkipReason::TooLarge { what, len, max } => format!(
            "the {what} is {len} bytes, over the delta encoder's limit of {max} bytes (the \
             smaller of its format's {} and a ninth of the memory available)",
            ota_delta::MAX_INPUT_LEN
        ),
        SkipReason::EncoderFailed(e) => format!("the delta encoder failed: {e}"),
        SkipReason::OutsideRole { name, role, needs } => format!(
            "its target name {name} is outside the paths delegated to role {role}; delegate a \
             pattern such as {needs} to publish deltas there"
        ),
        other => format!("{other:?}"),
    };
    format!(
        "no delta from {} for {}: {why}; the release is published without it",
        s.base_version, s.release_target
    )
}

/// The largest image a delta is made from: the encoder's own limit, and no more than a ninth of
/// the memory available (`MemAvailable`), since encoding takes about 7.4x the old image when the
/// images are alike in size (measured: 472 MiB for a 64 MiB pair) and up to 9x when a filter
/// candidate copies both; an encoder out of memory would abort the whole add.
fn delta_input_limit() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    });
    available.map_or(ota_delta::MAX_INPUT_LEN, |bytes| {
        ota_delta::MAX_INPUT_LEN.min(bytes / 9)
    })
}
