//! `repo-tool gc`: removes the files under `targets/` that no signed metadata names.

use anyhow::Result;

use crate::cli::GcArgs;

/// Runs `gc` and prints each file removed (or, with `--dry-run`, that would be), the files kept for
/// pending stages, and the bytes freed; with `--json`, one JSON object instead.
pub fn run(args: &GcArgs) -> Result<()> {
    let report = ota_publish::gc(&args.repo, args.dry_run)?;
    if args.json {
        let removed: Vec<_> = report
            .removed
            .iter()
            .map(|(p, len)| serde_json::json!({"path": p, "bytes": len}))
            .collect();
        let kept: Vec<_> = report
            .kept_for_stages
            .iter()
            .map(|f| {
                let (role, version) = f.pending_stage.clone().unwrap_or_default();
                serde_json::json!({"path": f.path, "bytes": f.len, "role": role, "version": version})
            })
            .collect();
        let out = serde_json::json!({
            "dry_run": report.dry_run,
            "removed": removed,
            "bytes_freed": report.bytes_freed,
            "kept_for_pending_stages": kept,
            "stale_stage_records": report.stale_stage_records,
        });
        println!("{out}");
        return Ok(());
    }
    let verb = if report.dry_run { "would remove" } else { "removed" };
    for (path, len) in &report.removed {
        println!("{verb} {} ({len} bytes)", path.display());
    }
    for f in &report.kept_for_stages {
        if let Some((role, version)) = &f.pending_stage {
            println!(
                "kept {} ({} bytes): named by a pending stage of role {role} version {version}",
                f.path.display(),
                f.len
            );
        }
    }
    println!(
        "{verb} {} file(s), {} bytes{}",
        report.removed.len(),
        report.bytes_freed,
        if report.dry_run { " (dry run)" } else { " freed" }
    );
    Ok(())
}
