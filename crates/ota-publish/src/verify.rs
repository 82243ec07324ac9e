//! [`verify`] checks a repository the way a client would, and [`list`] shows its releases.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use tough::schema::{Root, Signed, Snapshot, Target, Targets, Timestamp};

use crate::digest::hash_file;
use crate::error::Result;
use crate::loader::{MetaFile, RepoState};
use crate::publish::ota_custom;
use crate::rollout::read_control;
use crate::stage::target_file_path;
use ota_release::{Channel, HardwareId};

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

/// The checks [`verify`] runs, each adding to one report; `now` and the warning window are the
/// same for all.
struct Checks {
    report: VerifyReport,
    now: jiff::Timestamp,
    warn_within: jiff::SignedDuration,
}

impl Checks {
    fn problem(&mut self, what: String) {
        self.report.problems.push(what);
    }

    /// Expired is a problem; expiring within the warning window a warning.
    fn expiry(&mut self, role: &str, expires: jiff::Timestamp) {
        if expires <= self.now {
            self.problem(format!("{role} expired at {expires}"));
        } else if self
            .now
            .checked_add(self.warn_within)
            .map(|w| expires <= w)
            .unwrap_or(true)
        {
            self.report
                .warnings
                .push(format!("{role} expires at {expires}, within the warning window"));
        }
    }

    /// The entry `listed_in` (timestamp or snapshot) has for `file` agrees with the file read:
    /// version, and length and sha256 where listed (TUF 5.5.2, 5.6.2).
    fn listed_entry(
        &mut self,
        listed_in: &str,
        entry: &tough::schema::Metafile,
        version: u64,
        bytes: &[u8],
        file: &str,
    ) {
        if entry.version.get() != version {
            self.problem(format!(
                "{listed_in} lists {file} version {}, the file says {version}",
                entry.version
            ));
        }
        if let Some(len) = entry.length {
            if len != bytes.len() as u64 {
                self.problem(format!(
                    "{listed_in} lists {file} length {len}, the file has {}",
                    bytes.len()
                ));
            }
        }
        if let Some(h) = &entry.hashes {
            if h.sha256.as_ref() != Sha256::digest(bytes).as_slice() {
                self.problem(format!("{listed_in} lists a different sha256 for {file}"));
            }
        }
    }

    /// TUF 5.3.4: each root version numbered in order, signed by a threshold of the previous root's
    /// keys and of its own.
    fn root_chain(&mut self, state: &RepoState) {
        let mut trusted: Option<&Root> = None;
        for (n, r) in (1u64..).zip(&state.roots) {
            let root = &r.signed.signed;
            if root.version.get() != n {
                self.problem(format!("{n}.root.json says version {}", root.version));
            }
            if let Some(prev) = trusted {
                if prev.verify_role(&r.signed).is_err() {
                    self.problem(format!(
                        "{n}.root.json is not signed by a threshold of root version {}",
                        n - 1
                    ));
                }
            }
            if root.verify_role(&r.signed).is_err() {
                self.problem(format!(
                    "{n}.root.json is not signed by a threshold of its own root keys"
                ));
            }
            trusted = Some(root);
        }
        self.report.root_versions = state.roots.len() as u64;
    }

    /// Timestamp: its signatures, its expiry, and the snapshot it lists is the snapshot present.
    fn timestamp(&mut self, state: &RepoState, root: &Root) {
        let ts: &Signed<Timestamp> = &state.timestamp.signed;
        if root.verify_role(ts).is_err() {
            self.problem("timestamp.json is not signed by a threshold of the timestamp keys".into());
        }
        self.expiry("timestamp", ts.signed.expires);
        if let Some(e) = ts.signed.meta.get("snapshot.json") {
            let snap = &state.snapshot;
            self.listed_entry(
                "timestamp",
                e,
                snap.signed.signed.version.get(),
                &snap.bytes,
                "snapshot.json",
            );
        }
    }

    /// Snapshot: its signatures and its expiry.
    fn snapshot(&mut self, state: &RepoState, root: &Root) {
        let snap: &Signed<Snapshot> = &state.snapshot.signed;
        if root.verify_role(snap).is_err() {
            self.problem("snapshot is not signed by a threshold of the snapshot keys".into());
        }
        self.expiry("snapshot", snap.signed.expires);
    }

    /// Top-level targets: its signatures, its expiry, and the version snapshot lists.
    fn top_level_targets(&mut self, state: &RepoState, root: &Root) {
        let targets: &Signed<Targets> = &state.targets.signed;
        let signed_ok = match state.succinct.contains_key("targets") {
            true => hash_bin_delegator_signed(state, "targets", &state.targets),
            false => root.verify_role(targets).is_ok(),
        };
        if !signed_ok {
            self.problem("targets is not signed by a threshold of the targets keys".into());
        }
        self.expiry("targets", targets.signed.expires);
        if let Some(e) = state.snapshot.signed.signed.meta.get("targets.json") {
            self.listed_entry(
                "snapshot",
                e,
                targets.signed.version.get(),
                &state.targets.bytes,
                "targets.json",
            );
        }
    }

    /// A delegated role: signed by a threshold of the keys its delegating role gives it, its
    /// expiry, and the version snapshot lists.
    fn delegated_role(&mut self, state: &RepoState, name: &str, m: &MetaFile<Targets>) -> Result<()> {
        let parent = state.parent_of(name)?;
        let no_delegations = tough::schema::Delegations::new();
        let delegations = state
            .role_targets(parent)?
            .delegations
            .as_ref()
            .unwrap_or(&no_delegations);
        let signed_ok = match state.succinct.contains_key(name) {
            true => hash_bin_delegator_signed(state, name, m),
            false => delegations.verify_role(&m.signed, name).is_ok(),
        };
        if !signed_ok {
            self.problem(format!(
                "role {name} is not signed by a threshold of its keys (as delegated by {parent})"
            ));
        }
        self.expiry(name, m.signed.signed.expires);
        let file = format!("{name}.json");
        if let Some(e) = state.snapshot.signed.signed.meta.get(&file) {
            self.listed_entry("snapshot", e, m.signed.signed.version.get(), &m.bytes, &file);
        }
        Ok(())
    }

    /// A client looks a target up in a delegated role only if every delegation on the way matches
    /// its name (TUF 5.6.7.2), so each target a role lists must lie inside all their paths.
    fn delegated_paths(&mut self, state: &RepoState, name: &str, m: &MetaFile<Targets>) -> Result<()> {
        let chain = state.delegation_chain(name)?;
        for t in m.signed.signed.targets.keys() {
            if let Some(via) = chain
                .iter()
                .map(|r| r.name.as_str())
                .zip(chain.iter())
                .find(|(_, r)| !crate::loader::delegation_matches(r, t.raw()))
                .map(|(n, _)| n)
            {
                let how = if via == name {
                    String::new()
                } else {
                    format!(" (of role {via})")
                };
                self.problem(format!(
                    "role {name} lists {} outside its delegated paths{how}",
                    t.raw()
                ));
            }
        }
        Ok(())
    }

    /// TUF 5.6.7.1: a client skips a role it has visited, so such a delegation is never followed; a
    /// warning for each.
    fn skipped_delegations(&mut self, state: &RepoState) {
        for (parent, child) in &state.skipped_delegations {
            let why = skipped_delegation_warning(state, parent, child);
            self.report.warnings.push(why);
        }
    }

    /// Every target file of every role: its length and sha256 as listed (streamed).
    fn target_files(&mut self, repo: &Path, state: &RepoState) {
        let mut buf = vec![0u8; 256 * 1024];
        for (role, t) in state.all_roles() {
            for (name, target) in &t.targets {
                self.target_file(repo, role, name.raw(), target, &mut buf);
                self.report.targets_checked += 1;
            }
        }
    }

    /// Files under `targets/` no signed metadata names: a problem (disk spent on junk, often left by
    /// an interrupted `add`), or a warning while a pending stage names them.
    fn unreferenced_files(&mut self, repo: &Path, state: &RepoState) -> Result<()> {
        for f in crate::gc::unreferenced_files(repo, state)? {
            let path = f.path.display();
            match f.pending_stage {
                Some((role, version)) => self.report.warnings.push(format!(
                    "{path} ({} bytes) is named only by a pending stage of role {role} version {version}",
                    f.len
                )),
                None => self.problem(format!(
                    "unreferenced file {path} ({} bytes): no signed targets metadata names it (left by an \
                     interrupted add?); `repo-tool gc` removes it",
                    f.len
                )),
            }
        }
        Ok(())
    }

    /// Every file the rollout-control role lists is a control file a device accepts: at its own
    /// `rollouts/<hardware>/<channel>.json` path, within the size limit, by the contract. (Its hash is
    /// checked with the other target files; a file failing that is not parsed again here.)
    fn control_files(&mut self, repo: &Path, state: &RepoState) {
        let Some(role) = state.delegated.get(ota_release::CONTROL_ROLE) else {
            return;
        };
        for name in role.signed.signed.targets.keys() {
            let parts: Vec<&str> = name.raw().split('/').collect();
            let [_, hw, file] = parts.as_slice() else {
                continue; // outside the delegation: reported by delegated_paths
            };
            let ch = file.strip_suffix(".json").unwrap_or(file);
            let (Ok(hardware), Ok(channel)) = (HardwareId::new(*hw), Channel::new(ch)) else {
                self.problem(format!(
                    "{}: {} is not rollouts/<hardware id>/<channel>.json",
                    ota_release::CONTROL_ROLE,
                    name.raw()
                ));
                continue;
            };
            match read_control(repo, state, &hardware, &channel) {
                Ok(_) => {}
                Err(crate::Error::Malformed { .. }) => {} // length or hash: reported by target_files
                Err(e) => self.problem(format!("{}: {}", ota_release::CONTROL_ROLE, error_chain(&e))),
            }
        }
    }

    fn target_file(&mut self, repo: &Path, role: &str, name: &str, target: &Target, buf: &mut [u8]) {
        let Ok(digest) = <[u8; 32]>::try_from(target.hashes.sha256.as_ref()) else {
            self.problem(format!("{role}: target {name} has a sha256 that is not 32 bytes"));
            return;
        };
        let path = repo.join(target_file_path(name, &digest));
        match hash_file(&path, buf) {
            Ok((len, _)) if len != target.length => self.problem(format!(
                "{role}: {} has {len} bytes, metadata says {}",
                path.display(),
                target.length
            )),
            Ok((_, got)) if got != digest => {
                self.problem(format!("{role}: {} does not match its sha256", path.display()))
            }
            Ok(_) => {}
            Err(e) => self.problem(format!(
                "{role}: target {name}: cannot read {}: {e}",
                path.display()
            )),
        }
    }
}

/// An error and its causes, one line (the report's problems are plain strings).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Says which kind a skipped delegation is: a cycle (the role leads back to itself) or a second
/// delegation of the name.
/// A role that delegates to hash bins is signed over the canonical form of its bytes as read (its
/// `succinct_roles`), not over the in-memory expansion tough's check would serialize.
fn hash_bin_delegator_signed(state: &RepoState, role: &str, m: &MetaFile<Targets>) -> bool {
    let (Ok(trust), Ok(msg)) = (
        state.role_trust(role),
        crate::hash_bins::signed_canonical(&m.bytes),
    ) else {
        return false;
    };
    trust.count_valid(&msg, &m.signed.signatures) >= trust.threshold
}

fn skipped_delegation_warning(state: &RepoState, parent: &str, child: &str) -> String {
    let mut ancestors = vec![parent];
    let mut at = parent;
    while let Some(p) = state
        .parents
        .get(at)
        .filter(|_| ancestors.len() <= state.parents.len())
    {
        ancestors.push(p);
        at = p;
    }
    if child == crate::meta::TARGETS_ROLE || ancestors.contains(&child) {
        let path: Vec<&str> = ancestors
            .iter()
            .rev()
            .skip_while(|a| **a != child)
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
    }
}

/// Verifies the whole repository as a client would at time `now`: the root chain (each version signed
/// by a threshold of the previous root and of itself, TUF 5.3.4), timestamp → snapshot → targets →
/// delegated roles at any depth (signatures, thresholds, versions, lengths and hashes), every target
/// file's length and sha256 (streamed), delegated targets inside the paths of every delegation leading
/// to their role, files under `targets/` that no signed metadata names, and expiries. Anything
/// expiring within
/// `warn_within` is a warning.
pub fn verify(repo: &Path, now: jiff::Timestamp, warn_within: jiff::SignedDuration) -> Result<VerifyReport> {
    let state = RepoState::load(repo)?;
    let mut checks = Checks {
        report: VerifyReport::default(),
        now,
        warn_within,
    };
    checks.root_chain(&state);
    let root = &state.root()?.signed.signed;
    checks.expiry("root", root.expires);
    checks.timestamp(&state, root);
    checks.snapshot(&state, root);
    checks.top_level_targets(&state, root);
    // Every delegated role at any depth (loaded once each: the state's walk keeps a visited set),
    // checked against the delegation of the role that delegates to it.
    for (name, m) in &state.delegated {
        checks.delegated_role(&state, name, m)?;
        checks.delegated_paths(&state, name, m)?;
    }
    checks.skipped_delegations(&state);
    checks.target_files(repo, &state);
    checks.control_files(repo, &state);
    checks.unreferenced_files(repo, &state)?;
    Ok(checks.report)
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
    /// The rollout waves the release carries (`None`: everyone at once).
    pub waves: Option<ota_release::RolloutPlan>,
    /// What the rollout-control role says about it (state, reason, since, replacement plan).
    pub control: Option<ota_release::ReleaseControl>,
    /// The deltas the release offers (from which base versions, as which targets, how long).
    pub deltas: Vec<ota_release::DeltaOffer>,
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
                            waves: r.waves.clone(),
                            control: None,
                            deltas: r.deltas.clone(),
                        });
                }
            }
        }
    }
    for ((hw, ch), v) in out.releases.iter_mut() {
        v.sort_by(|a, b| a.version.cmp(&b.version));
        let (Ok(hardware), Ok(channel)) = (HardwareId::new(hw.as_str()), Channel::new(ch.as_str())) else {
            continue;
        };
        if let Some((control, _)) = read_control(repo, &state, &hardware, &channel)? {
            for r in v.iter_mut() {
                r.control = control.release(&r.version).cloned();
            }
        }
    }
    Ok(out)
}
