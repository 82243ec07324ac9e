//! `repo-tool delegate`: a new delegated targets role, published at once or staged for signing.

use anyhow::Result;

use crate::cli::DelegateArgs;

/// Runs `delegate`: publishes the delegation, or with `--stage` writes it to a staged file and
/// prints its signatures and the next steps.
pub fn run(args: DelegateArgs) -> Result<()> {
    if let Some(bins) = args.hash_bins {
        let spec = ota_publish::HashBinSpec {
            name_prefix: args.role.clone(),
            bins,
            keys: crate::release::role_spec(
                &args.role_keys,
                args.threshold,
                args.signing.module.path.as_deref(),
            )?,
        };
        let names = ota_publish::delegate_hash_bins(
            &args.repo,
            &args.from,
            &spec,
            &args.lifetimes.expiries(),
            &args.signing.load()?,
        )?;
        let (first, last) = (names.first(), names.last());
        println!(
            "delegated to {bins} hash bins from {}: {} .. {}",
            args.from,
            first.map_or("", String::as_str),
            last.map_or("", String::as_str)
        );
        return Ok(());
    }
    let spec = ota_publish::DelegateSpec {
        role: args.role.clone(),
        paths: args.paths,
        keys: crate::release::role_spec(
            &args.role_keys,
            args.threshold,
            args.signing.module.path.as_deref(),
        )?,
        terminating: args.terminating,
    };
    let expiries = args.lifetimes.expiries();
    match args.stage {
        Some(file) => {
            let keys = args.signing.load()?;
            let status = ota_publish::delegate_stage(&args.repo, &args.from, &spec, &expiries, &keys, &file)?;
            crate::staging::print_staged(&mut std::io::stdout().lock(), &status, &file)?;
        }
        None => {
            ota_publish::delegate_from(&args.repo, &args.from, &spec, &expiries, &args.signing.load()?)?;
            println!("delegated to role {} from {}", args.role, args.from);
        }
    }
    Ok(())
}
