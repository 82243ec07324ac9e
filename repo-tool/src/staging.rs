//! `repo-tool root` and `repo-tool role`: metadata signed in steps by several key holders (stage,
//! sign, publish), and what a staging command prints.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cli::{Lifetimes, RoleCommand, RootCommand};

/// Runs a `root` subcommand and prints the staged, signed or published root version.
pub fn root(command: RootCommand) -> Result<()> {
    match command {
        RootCommand::Stage {
            repo,
            out,
            add_keys,
            remove_keys,
            thresholds,
            lifetimes,
        } => {
            let change = root_change(&add_keys, &remove_keys, &thresholds, &lifetimes)?;
            let v = ota_publish::root_stage(&repo, &change, &out)?;
            println!(
                "staged root version {v} in {}; sign it with `repo-tool root sign`",
                out.display()
            );
        }
        RootCommand::Sign {
            staged,
            repo,
            signing,
        } => {
            let s = ota_publish::root_sign(&staged, repo.as_deref(), &signing.load()?)?;
            println!(
                "root version {}: {}/{} signatures of the new root's keys",
                s.version, s.new_root.0, s.new_root.1
            );
            if let Some((n, t)) = s.current_root {
                println!(
                    "root version {}: {n}/{t} signatures of the current root's keys",
                    s.version
                );
            }
        }
        RootCommand::Publish {
            repo,
            staged,
            lifetimes,
            signing,
        } => {
            let v = ota_publish::root_publish(&repo, &staged, &lifetimes.expiries(), &signing.load()?)?;
            println!("published root version {v}");
        }
    }
    Ok(())
}

/// The root change `root stage` asks for, from its `ROLE=VALUE` flags.
fn root_change(
    add_keys: &[String],
    remove_keys: &[String],
    thresholds: &[String],
    lifetimes: &Lifetimes,
) -> Result<ota_publish::RootChange> {
    let mut change = ota_publish::RootChange {
        expiries: lifetimes.expiries(),
        ..Default::default()
    };
    for s in add_keys {
        let (role, key) = split_pair("add-key", s)?;
        let key: ota_publish::KeyRef = key.parse()?;
        change.add_keys.push((role, key.public_key(None)?));
    }
    for s in remove_keys {
        let (role, id) = split_pair("remove-key", s)?;
        change.remove_keys.push((role, id.to_owned()));
    }
    for s in thresholds {
        let (role, n) = split_pair("threshold", s)?;
        let n: u64 = n
            .parse()
            .with_context(|| format!("--threshold {s:?}: not a number"))?;
        change.thresholds.push((role, n));
    }
    Ok(change)
}

fn split_pair<'a>(flag: &str, s: &'a str) -> Result<(ota_publish::RoleType, &'a str)> {
    let Some((role, value)) = s.split_once('=') else {
        bail!("--{flag} {s:?}: expected ROLE=VALUE, e.g. timestamp=keys/ts2.pub.json");
    };
    Ok((ota_publish::parse_role(role)?, value))
}

/// Runs a `role` subcommand and prints each staged role's signatures.
pub fn role(command: RoleCommand) -> Result<()> {
    match command {
        RoleCommand::Sign { file, repo, signing } => {
            let status = ota_publish::role_sign(&file, repo.as_deref(), &signing.load()?)?;
            for s in &status {
                let ready = if s.present >= s.threshold {
                    "; ready for `repo-tool role publish`"
                } else {
                    ""
                };
                println!(
                    "role {} version {}: {} of {} signature(s) present{ready}",
                    s.role, s.version, s.present, s.threshold
                );
            }
        }
        RoleCommand::Publish {
            repo,
            file,
            lifetimes,
            signing,
        } => {
            for s in ota_publish::role_publish(&repo, &file, &lifetimes.expiries(), &signing.load()?)? {
                println!(
                    "published role {} version {} ({} of {} signatures)",
                    s.role, s.version, s.present, s.threshold
                );
            }
        }
    }
    Ok(())
}

/// What a staging command tells the user: each staged role's signatures and the next steps.
pub fn print_staged(out: &mut impl Write, status: &[ota_publish::RoleSignatures], file: &Path) -> Result<()> {
    for s in status {
        writeln!(
            out,
            "staged role {} version {} in {}: {} of {} signature(s) present",
            s.role,
            s.version,
            file.display(),
            s.present,
            s.threshold
        )?;
    }
    writeln!(
        out,
        "next: each key holder runs `repo-tool role sign --file {0} --key KEY`, then \
         `repo-tool role publish --repo REPO --file {0}` with the snapshot and timestamp keys",
        file.display()
    )?;
    Ok(())
}
