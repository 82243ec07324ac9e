//! [`verify`] checks a repository the way a client would, and [`list`] shows its releases.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use tough::schema::{PathSet, Root, Signed, Snapshot, Targets, Timestamp};

use crate::error::Result;
use crate::meta::RepoState;
use crate::names::path_matches;
use crate::publish::ota_custom;
use crate::stage::target_file_path;

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Failures: a client would refuse the repository (or a target) because of each.
    pub problems: Vec<String>,
    /// Metadata expiring within the warning window, and delegations a client skips (a cycle back
    /// to a role on the way, a role delegated twice).
    pub warnings: Vec<String>,
    /// Target files whose length and hash were checked.
    pub targets_checked: usize,
    /// Root versions whose chain was checked.
    pub root_versions: u64,
}

impl VerifyReport {
    /// No problems found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn check_expiry(
    report: &mut VerifyReport,
    role: &str,
    expires: jiff::Timestamp,
    now: jiff::Timestamp,
    window: jiff::SignedDuration,
) {
    if expires <= now {
        report.problems.push(format!("{role} expired at {expires}"));
    } else if now.checked_add(window).map(|w| expires <= w).unwrap_or(true) {
        report
            .warnings
            .push(format!("{role} expires at {expires}, within the warning window"));
    }
}

fn check_meta_entry(
    report: &mut VerifyReport,
    listed_in: &str,
    entry: &tough::schema::Metafile,
    version: u64,
    bytes: &[u8],
    file: &str,
) {
    if entry.version.get() != version {
        report.problems.push(format!(
            "{listed_in} lists {file} version {}, the file says {version}",
            entry.version
        ));
    }
    if let Some(len) = entry.length {
        if len != bytes.len() as u64 {
            report.problems.push(format!(
                "{listed_in} lists {file} length {len}, the file has {}",
                bytes.len()
            ));
        }
    }
    if let Some(h) = &entry.hashes {
        if h.sha256.as_ref() != Sha256::digest(bytes).as_slice() {
            report
                .problems
                .push(format!("{listed_in} lists a different sha256 for {file}"));
        }
    }
}

/// Verifies the whole repository as a client would at time `now`: the root chain (each version signed
/// by a threshold of the previous root and of itself, TUF 5.3.4), timestamp → snapshot → targets →
/// delegated roles at any depth (signatures, thresholds, versions, lengths and hashes), every target
/// file's length and sha256 (streamed), delegated targets inside the paths of every delegation leading
/// to their role, and expiries. Anything expiring within
/// `warn_within` is a warning.
pub fn verify(repo: &Path, now: jiff::Timestamp, warn_within: jiff::SignedDuration) -> Result<VerifyReport> {
    let state = RepoState::load(repo)?;
    let mut report = VerifyReport::default();
    let mut trusted: Option<&Root> = None;
    for (i, r) in state.roots.iter().enumerate() {
        let n = i as u64 + 1;
        let root = &r.signed.signed;
        if root.version.get() != n {
            report
                .problems
                .push(format!("{n}.root.json says version {}", root.version));
        }
        if let Some(prev) = trusted {
            if prev.verify_role(&r.signed).is_err() {
                report.problems.push(format!(
                    "{n}.root.json is not signed by a threshold of root version {}",
                    n - 1
                ));
            }
        }
        if root.verify_role(&r.signed).is_err() {
            report.problems.push(format!(
                "{n}.root.json is not signed by a threshold of its own root keys"
            ));
        }
        trusted = Some(root);
    }
    report.root_versions = state.roots.len() as u64;
    let root = &state.root()?.signed.signed;
    check_expiry(&mut report, "root", root.expires, now, warn_within);

    let ts: &Signed<Timestamp> = &state.timestamp.signed;
    if root.verify_role(ts).is_err() {
        report
            .problems
            .push("timestamp.json is not signed by a threshold of the timestamp keys".into());
    }
    check_expiry(&mut report, "timestamp", ts.signed.expires, now, warn_within);
    let snap: &Signed<Snapshot> = &state.snapshot.signed;
    if let Some(e) = ts.signed.meta.get("snapshot.json") {
        check_meta_entry(
            &mut report,
            "timestamp",
            e,
            snap.signed.version.get(),
            &state.snapshot.bytes,
            "snapshot.json",
        );
    }
    if root.verify_role(snap).is_err() {
        report
            .problems
            .push("snapshot is not signed by a threshold of the snapshot keys".into());
    }
    check_expiry(&mut report, "snapshot", snap.signed.expires, now, warn_within);

    let targets: &Signed<Targets> = &state.targets.signed;
    if root.verify_role(targets).is_err() {
        report
            .problems
            .push("targets is not signed by a threshold of the targets keys".into());
    }
    check_expiry(&mut report, "targets", targets.signed.expires, now, warn_within);
    if let Some(e) = snap.signed.meta.get("targets.json") {
        check_meta_entry(
            &mut report,
            "snapshot",
            e,
            targets.signed.version.get(),
            &state.targets.bytes,
            "targets.json",
        );
    }
    // Every delegated role at any depth (loaded once each: the state's walk keeps a visited set),
    // checked against the delegation of the role that delegates to it.
    let no_delegations = tough::schema::Delegations::new();
    for (name, m) in &state.delegated {
        let parent = state.parent_of(name)?;
        let delegations = state
            .role_targets(parent)?
            .delegations
            .as_ref()
            .unwrap_or(&no_delegations);
        if delegations.verify_role(&m.signed, name).is_err() {
            report.problems.push(format!(
                "role {name} is not signed by a threshold of its keys (as delegated by {parent})"
            ));
        }
        check_expiry(&mut report, name, m.signed.signed.expires, now, warn_within);
        if let Some(e) = snap.signed.meta.get(&format!("{name}.json")) {
            check_meta_entry(
                &mut report,
                "snapshot",
                e,
                m.signed.signed.version.get(),
                &m.bytes,
                &format!("{name}.json"),
            );
        }
        // A client looks a target up in this role only if every delegation on the way matches it.
        let chain: Vec<(String, Vec<String>)> = state
            .delegation_chain(name)?
            .into_iter()
            .map(|r| {
                let patterns = match &r.paths {
                    PathSet::Paths(p) => p.iter().map(|p| p.value().to_owned()).collect(),
                    PathSet::PathHashPrefixes(_) => Vec::new(),
                };
                (r.name.clone(), patterns)
            })
            .collect();
        for t in m.signed.signed.targets.keys() {
            if let Some((via, _)) = chain
                .iter()
                .find(|(_, patterns)| !patterns.iter().any(|p| path_matches(p, t.raw())))
            {
                let how = if via == name {
                    String::new()
                } else {
                    format!(" (of role {via})")
                };
                report.problems.push(format!(
                    "role {name} lists {} outside its delegated paths{how}",
                    t.raw()
                ));
            }
        }
    }

    // TUF 5.6.7.1: a client skips a role it has visited, so such a delegation is never followed. Say
    // which kind it is: a cycle (the role leads back to itself) or a second delegation of the name.
    for (parent, child) in &state.skipped_delegations {
        let mut ancestors = vec![parent.as_str()];
        let mut at = parent.as_str();
        while let Some(p) = state
            .parents
            .get(at)
            .filter(|_| ancestors.len() <= state.parents.len())
        {
            ancestors.push(p);
            at = p;
        }
        let why = if child == crate::meta::TARGETS_ROLE || ancestors.contains(&child.as_str()) {
            let path: Vec<&str> = ancestors
                .iter()
                .rev()
                .skip_while(|a| **a != child.as_str())
                .copied()
                .collect();
            format!(
                "delegation cycle: {} -> {child}; clients skip the repeated role (TUF 5.6.7.1), so \
                 the delegation from {parent} to {child} is never followed",
                path.join(" -> ")
            )
        } else {
            format!(
                "role {child} is delegated again by {parent} (first by {}); clients visit it once, \
                 through the first delegation (TUF 5.6.7.1), so the one from {parent} is never followed",
                state.parents.get(child).map_or("?", String::as_str)
            )
        };
        report.warnings.push(why);
    }

    let mut buf = vec![0u8; 256 * 1024];
    for (role, t) in state.all_roles() {
        for (name, target) in &t.targets {
            let Ok(digest) = <[u8; 32]>::try_from(target.hashes.sha256.as_ref()) else {
                report.problems.push(format!(
                    "{role}: target {} has a sha256 that is not 32 bytes",
                    name.raw()
                ));
                continue;
            };
            let path = repo.join(target_file_path(name.raw(), &digest));
            match hash_file(&path, &mut buf) {
                Ok((len, got)) => {
                    if len != target.length {
                        report.problems.push(format!(
                            "{role}: {} has {len} bytes, metadata says {}",
                            path.display(),
                            target.length
                        ));
                    } else if got != digest {
                        report
                            .problems
                            .push(format!("{role}: {} does not match its sha256", path.display()));
                    }
                }
                Err(e) => report.problems.push(format!(
                    "{role}: target {}: cannot read {}: {e}",
                    name.raw(),
                    path.display()
                )),
            }
            report.targets_checked += 1;
        }
    }
    Ok(report)
}

fn hash_file(path: &Path, buf: &mut [u8]) -> std::io::Result<(u64, [u8; 32])> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut len = 0u64;
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
    }
    Ok((len, h.finalize().into()))
}

/// One release as [`list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRelease {
    /// Semantic version.
    pub version: ota_release::Version,
    /// Target name.
    pub target: String,
    /// The role that signed it.
    pub role: String,
    /// Image length in bytes.
    pub length: u64,
    /// Rollout share in percent.
    pub rollout_percent: u8,
}

/// What [`list`] returns: releases per (hardware id, channel), newest last, and each role's expiry.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Releases by (hardware id, channel), sorted by version.
    pub releases: BTreeMap<(String, String), Vec<ListedRelease>>,
    /// (role, version, expiry) of every metadata file in use.
    pub roles: Vec<(String, u64, jiff::Timestamp)>,
}

/// Lists releases per hardware id and channel, with each role's version and expiry.
pub fn list(repo: &Path) -> Result<Listing> {
    let state = RepoState::load(repo)?;
    let mut out = Listing::default();
    let root = &state.root()?.signed.signed;
    out.roles.push(("root".into(), root.version.get(), root.expires));
    let ts = &state.timestamp.signed.signed;
    out.roles.push(("timestamp".into(), ts.version.get(), ts.expires));
    let sn = &state.snapshot.signed.signed;
    out.roles.push(("snapshot".into(), sn.version.get(), sn.expires));
    for (role, t) in state.all_roles() {
        out.roles.push((role.to_owned(), t.version.get(), t.expires));
        for (name, target) in &t.targets {
            if let Some(ota_release::OtaTarget::Release(r)) = ota_custom(target) {
                for h in &r.hardware {
                    out.releases
                        .entry((h.to_string(), r.channel.to_string()))
                        .or_default()
                        .push(ListedRelease {
                            version: r.version.clone(),
                            target: name.raw().to_owned(),
                            role: role.to_owned(),
                            length: target.length,
                            rollout_percent: r.rollout.percent,
                        });
                }
            }
        }
    }
    for v in out.releases.values_mut() {
        v.sort_by(|a, b| a.version.cmp(&b.version));
    }
    Ok(out)
}
