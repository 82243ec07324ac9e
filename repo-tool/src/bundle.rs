//! `repo-tool bundle`: writes an offline bundle (see `ota_publish::write_bundle`) and says what is in
//! it and until when devices accept it.

use anyhow::Result;

use crate::cli::BundleArgs;

/// Runs `bundle` and prints the bundle's content, size and expiry.
pub fn run(args: &BundleArgs) -> Result<()> {
    let spec = ota_publish::BundleSpec {
        hardware: args.hardware.clone(),
        channel: args.channel.clone(),
        version: args.version.clone(),
        delta_from: args.delta_from.clone(),
        out: args.out.clone(),
    };
    let report = ota_publish::write_bundle(&args.repo, &spec)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    println!("wrote {} ({} bytes)", report.out.display(), report.bytes);
    println!(
        "release   {} {} ({} bytes)",
        args.version, report.release_target, report.release_length
    );
    for delta in &report.deltas {
        println!("delta     {delta}");
    }
    if let Some(control) = &report.control {
        println!("control   {control}");
    }
    println!("metadata  {} signed files", report.metadata_files);
    println!(
        "expires   {} (the repository's timestamp: devices refuse the bundle from then on)",
        report.timestamp_expires
    );
    Ok(())
}
