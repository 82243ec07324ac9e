//! `repo-tool publish`: copies the repository to object storage through `ota_publish::bucket`.

use std::time::Instant;

use anyhow::Result;
use ota_publish::bucket::Mismatch;
use ota_publish::{Bucket, BucketSpec, PublishOptions};

use crate::cli::PublishArgs;

/// Runs `publish` and prints each object sent (or, with `--dry-run`, to send) and a summary line;
/// with `--json`, one JSON object instead.
pub fn run(args: &PublishArgs) -> Result<()> {
    let spec = BucketSpec {
        url: args.to.clone(),
        endpoint: args.endpoint.clone(),
        region: args.region.clone(),
        credentials: args.credentials.clone(),
        profile: Some(args.profile.clone()),
        request_retries: args.retries.into(),
    };
    let bucket = Bucket::open(&spec)?;
    let opts = PublishOptions {
        mismatch: if args.repair {
            Mismatch::Repair
        } else {
            Mismatch::Refuse
        },
        jobs: args.jobs.into(),
        part_size: usize::from(args.part_mib) << 20,
        dry_run: args.dry_run,
        ..PublishOptions::default()
    };
    let started = Instant::now();
    let report = ota_publish::publish_to_bucket_blocking(&args.repo, &bucket, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let sent: Vec<_> = report
            .sent
            .iter()
            .map(|o| serde_json::json!({"key": o.key, "bytes": o.len}))
            .collect();
        let out = serde_json::json!({
            "dry_run": args.dry_run,
            "sent": sent,
            "objects_sent": report.sent.len(),
            "bytes_sent": report.sent_bytes(),
            "repaired": report.repaired,
            "unchanged": report.unchanged,
            "unchanged_bytes": report.unchanged_bytes,
            "seconds": secs,
        });
        println!("{out}");
        return Ok(());
    }
    let verb = if args.dry_run { "would send" } else { "sent" };
    for o in &report.sent {
        let repaired = if report.repaired.contains(&o.key) {
            " (repaired)"
        } else {
            ""
        };
        println!("{verb} {} ({} bytes){repaired}", o.key, o.len);
    }
    println!(
        "{verb} {} object(s), {} bytes to {}; {} already there ({} bytes); {secs:.2} s",
        report.sent.len(),
        report.sent_bytes(),
        args.to,
        report.unchanged,
        report.unchanged_bytes
    );
    Ok(())
}
