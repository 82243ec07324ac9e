//! `repo-tool refresh`: re-sign timestamp (and snapshot) with a new expiry.

use anyhow::Result;

use crate::cli::RefreshArgs;

/// Runs `refresh` and says which repository it refreshed.
pub fn run(args: RefreshArgs) -> Result<()> {
    let opts = ota_publish::RefreshOptions {
        snapshot: args.snapshot,
        expiries: args.lifetimes.expiries(),
    };
    ota_publish::refresh(&args.repo, &opts, &args.signing.load()?)?;
    println!("refreshed {}", args.repo.display());
    Ok(())
}
