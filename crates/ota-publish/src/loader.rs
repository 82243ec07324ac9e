//! Reading a repository: [`RepoState`] is what a client would find starting at `timestamp.json`,
//! loaded and parsed, with the queries the commands need (a role's metadata, its delegator, the
//! delegations leading to it). It changes nothing on disk; the editor side (`crate::publish`,
//! `crate::staged`, `crate::store`) does.

use std::collections::BTreeMap;
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tough::schema::{DelegatedRole, PathSet, RoleType, Root, Signed, Snapshot, Targets, Timestamp};

use crate::error::{invalid, io, Error, Result};
use crate::hash_bins::{read_targets, Succinct};
use crate::meta::{METADATA_DIR, SPEC_VERSION, TARGETS_ROLE};
use crate::names::path_matches;
use crate::trust::{delegated_role_keys, top_role_keys, RoleKeySet, RoleTrust};

/// One metadata file, parsed, with the exact bytes read.
#[derive(Debug, Clone)]
pub(crate) struct MetaFile<T> {
    pub signed: Signed<T>,
    pub bytes: Vec<u8>,
}

fn read_meta<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<MetaFile<T>> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    let signed = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
        what,
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    Ok(MetaFile { signed, bytes })
}

/// The repository's current published state, as a client would find it starting at `timestamp.json`.
#[derive(Debug, Clone)]
pub(crate) struct RepoState {
    pub dir: PathBuf,
    /// Every root version present, in order (1, 2, ...).
    pub roots: Vec<MetaFile<Root>>,
    pub timestamp: MetaFile<Timestamp>,
    pub snapshot: MetaFile<Snapshot>,
    pub targets: MetaFile<Targets>,
    /// Delegated roles, at any depth of the delegation tree (TUF 4.5), by name.
    pub delegated: BTreeMap<String, MetaFile<Targets>>,
    /// The role that delegates to each delegated role (`targets` or another delegated role).
    pub parents: BTreeMap<String, String>,
    /// Delegations not followed because their role was already visited (TUF 5.6.7.1: clients skip
    /// a visited role, which is what breaks delegation cycles): (delegating role, delegated role).
    pub skipped_delegations: Vec<(String, String)>,
    /// Roles that delegate to succinct hash bins (TAP 15), with their `succinct_roles`; their bins are
    /// in `delegated` like any role (see `crate::hash_bins`).
    pub succinct: BTreeMap<String, Succinct>,
}

/// Every root version on disk, 1..N without gaps.
fn read_root_chain(repo: &Path, mdir: &Path) -> Result<Vec<MetaFile<Root>>> {
    let mut versions = Vec::new();
    for entry in fs::read_dir(mdir).map_err(io("read directory", mdir))? {
        let entry = entry.map_err(io("read directory", mdir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_suffix(".root.json")
            .and_then(|n| n.parse::<u64>().ok())
        {
            versions.push(n);
        }
    }
    versions.sort_unstable();
    if versions.first() != Some(&1) || versions.iter().enumerate().any(|(i, v)| *v != i as u64 + 1) {
        return Err(Error::Repository {
            repo: repo.to_owned(),
            why: format!("root versions on disk are {versions:?}; expected 1..N without gaps"),
        });
    }
    versions
        .iter()
        .map(|v| read_meta(&mdir.join(format!("{v}.root.json")), "root metadata"))
        .collect()
}

/// The metadata files a snapshot lists, to be read from a metadata directory.
struct Listed<'a> {
    repo: &'a Path,
    mdir: &'a Path,
    snapshot: &'a Snapshot,
}

/// The delegated roles found under top-level targets.
struct DelegationTree {
    delegated: BTreeMap<String, MetaFile<Targets>>,
    parents: BTreeMap<String, String>,
    skipped: Vec<(String, String)>,
    succinct: BTreeMap<String, Succinct>,
}

impl Listed<'_> {
    /// The version the snapshot lists for a metadata file.
    fn version_of(&self, file: &str) -> Result<NonZeroU64> {
        self.snapshot
            .meta
            .get(file)
            .map(|m| m.version)
            .ok_or_else(|| Error::Repository {
                repo: self.repo.to_owned(),
                why: format!("snapshot lists no {file}"),
            })
    }

    /// Walks the whole delegation tree. A role is loaded once, under the first role found delegating
    /// to it: a second delegation to the same name, or a cycle back to an ancestor, is not followed.
    fn delegation_tree(&self, targets: &Targets) -> Result<DelegationTree> {
        let mut tree = DelegationTree {
            delegated: BTreeMap::new(),
            parents: BTreeMap::new(),
            skipped: Vec::new(),
            succinct: BTreeMap::new(),
        };
        let mut pending = vec![TARGETS_ROLE.to_owned()];
        while let Some(parent) = pending.pop() {
            let meta = if parent == TARGETS_ROLE {
                Some(targets)
            } else {
                tree.delegated.get(&parent).map(|m| &m.signed.signed)
            };
            let children: Vec<String> = meta
                .and_then(|t| t.delegations.as_ref())
                .map(|d| d.roles.iter().map(|r| r.name.clone()).collect())
                .unwrap_or_default();
            for name in children {
                if name == TARGETS_ROLE || tree.delegated.contains_key(&name) {
                    tree.skipped.push((parent.clone(), name));
                    continue;
                }
                let v = self.version_of(&format!("{name}.json"))?;
                let (m, succinct) = read_targets(
                    &self.mdir.join(format!("{v}.{name}.json")),
                    "delegated targets metadata",
                )?;
                if let Some(s) = succinct {
                    tree.succinct.insert(name.clone(), s);
                }
                tree.delegated.insert(name.clone(), m);
                tree.parents.insert(name.clone(), parent.clone());
                pending.push(name);
            }
        }
        Ok(tree)
    }
}

/// The error for a directory without `metadata/`.
pub(crate) fn not_a_repository(repo: &Path) -> Error {
    Error::Repository {
        repo: repo.to_owned(),
        why: "no metadata/ directory: not a repository (run `repo-tool init` first)".into(),
    }
}

/// Path of a metadata file by name inside a repository.
pub(crate) fn meta_path(repo: &Path, file: &str) -> PathBuf {
    repo.join(METADATA_DIR).join(file)
}

impl RepoState {
    /// Loads the current state (TUF 5.3-5.6 order: root chain, timestamp, snapshot, targets, delegated).
    pub fn load(repo: &Path) -> Result<RepoState> {
        let mdir = repo.join(METADATA_DIR);
        if !mdir.is_dir() {
            return Err(not_a_repository(repo));
        }
        let roots = read_root_chain(repo, &mdir)?;
        let timestamp: MetaFile<Timestamp> = read_meta(&mdir.join("timestamp.json"), "timestamp metadata")?;
        let snap_version = timestamp
            .signed
            .signed
            .meta
            .get("snapshot.json")
            .map(|m| m.version)
            .ok_or_else(|| Error::Repository {
                repo: repo.to_owned(),
                why: "timestamp.json lists no snapshot.json".into(),
            })?;
        let snapshot: MetaFile<Snapshot> = read_meta(
            &mdir.join(format!("{snap_version}.snapshot.json")),
            "snapshot metadata",
        )?;
        let listed = Listed {
            repo,
            mdir: &mdir,
            snapshot: &snapshot.signed.signed,
        };
        let tv = listed.version_of("targets.json")?;
        let (targets, top_succinct) =
            read_targets(&mdir.join(format!("{tv}.targets.json")), "targets metadata")?;
        let mut tree = listed.delegation_tree(&targets.signed.signed)?;
        if let Some(s) = top_succinct {
            tree.succinct.insert(TARGETS_ROLE.to_owned(), s);
        }
        Ok(RepoState {
            dir: repo.to_owned(),
            roots,
            timestamp,
            snapshot,
            targets,
            delegated: tree.delegated,
            parents: tree.parents,
            skipped_delegations: tree.skipped,
            succinct: tree.succinct,
        })
    }

    /// The newest root.
    pub fn root(&self) -> Result<&MetaFile<Root>> {
        self.roots.last().ok_or_else(|| Error::Repository {
            repo: self.dir.clone(),
            why: "no root metadata".into(),
        })
    }

    /// Key set of a targets role (top-level `targets` or a delegated role).
    pub fn targets_role_keys(&self, role: &str) -> Result<RoleKeySet> {
        if role == TARGETS_ROLE {
            top_role_keys(&self.root()?.signed.signed, RoleType::Targets)
        } else {
            delegated_role_keys(self.role_targets(self.parent_of(role)?)?, role)
        }
    }

    /// The role delegating to a delegated role.
    pub fn parent_of(&self, role: &str) -> Result<&str> {
        self.parents
            .get(role)
            .map(String::as_str)
            .ok_or_else(|| invalid(format!("role {role:?}"), "no such delegated role"))
    }

    /// The delegation entries leading to `role`, from the role's own up to the one in top-level
    /// targets (empty for `targets`). A client reaches a target of `role` only through all of them.
    pub fn delegation_chain(&self, role: &str) -> Result<Vec<&DelegatedRole>> {
        let mut chain = Vec::new();
        let mut name = role;
        // At most one entry per delegated role: the parents map is a tree by construction.
        while name != TARGETS_ROLE && chain.len() <= self.parents.len() {
            let parent = self.parent_of(name)?;
            let entry = self
                .role_targets(parent)?
                .delegations
                .as_ref()
                .and_then(|d| d.roles.iter().find(|r| r.name == name))
                .ok_or_else(|| invalid(format!("role {name:?}"), format!("not delegated by {parent}")))?;
            chain.push(entry);
            name = parent;
        }
        Ok(chain)
    }

    /// The targets metadata of a role.
    pub fn role_targets(&self, role: &str) -> Result<&Targets> {
        if role == TARGETS_ROLE {
            Ok(&self.targets.signed.signed)
        } else {
            self.delegated
                .get(role)
                .map(|m| &m.signed.signed)
                .ok_or_else(|| invalid(format!("role {role:?}"), "no such delegated role"))
        }
    }

    /// Moves a targets role's metadata out (left empty in the state): no copy of a 10,000-target map.
    pub fn take_role_targets(&mut self, role: &str) -> Result<Targets> {
        let empty = || {
            Targets::new(
                SPEC_VERSION.to_owned(),
                NonZeroU64::MIN,
                jiff::Timestamp::UNIX_EPOCH,
            )
        };
        if role == TARGETS_ROLE {
            Ok(std::mem::replace(&mut self.targets.signed.signed, empty()))
        } else {
            self.delegated
                .get_mut(role)
                .map(|m| std::mem::replace(&mut m.signed.signed, empty()))
                .ok_or_else(|| invalid(format!("role {role:?}"), "no such delegated role"))
        }
    }

    /// Every targets role: top-level first, then delegated in name order.
    pub fn all_roles(&self) -> Vec<(&str, &Targets)> {
        let mut v = vec![(TARGETS_ROLE, &self.targets.signed.signed)];
        v.extend(self.delegated.iter().map(|(n, m)| (n.as_str(), &m.signed.signed)));
        v
    }

    /// The current keys and threshold of a targets role in the repository (top-level targets from
    /// root, a delegated role from its delegator).
    pub fn role_trust(&self, role: &str) -> Result<RoleTrust> {
        if role == TARGETS_ROLE {
            let root = &self.root()?.signed.signed;
            let rk = root
                .roles
                .get(&RoleType::Targets)
                .ok_or_else(|| invalid("root metadata", "lists no targets role"))?;
            return Ok(RoleTrust::from_ids(&rk.keyids, &root.keys, rk.threshold));
        }
        let parent = self.parent_of(role)?;
        self.role_targets(parent)?
            .delegations
            .as_ref()
            .and_then(|d| RoleTrust::of_delegation(d, role))
            .ok_or_else(|| invalid(format!("role {role:?}"), format!("not delegated by {parent}")))
    }

    /// Refuses a target name that a client would not look up in `role`: it must match a path pattern of
    /// every delegation on the way from top-level targets to the role (TUF 5.6.7.2).
    pub fn check_delegated(&self, role: &str, name: &str) -> Result<()> {
        if role == TARGETS_ROLE {
            return Ok(());
        }
        if !self.delegated.contains_key(role) {
            return Err(invalid(
                format!("role {role:?}"),
                "no such delegated role (see `repo-tool delegate`)",
            ));
        }
        for entry in self.delegation_chain(role)? {
            if let PathSet::PathHashPrefixes(_) = entry.paths {
                if !delegation_matches(entry, name) {
                    return Err(Error::NotDelegated {
                        name: name.to_owned(),
                        role: entry.name.clone(),
                        paths: "its hash bin".into(),
                    });
                }
                continue;
            }
            let patterns = delegated_patterns(entry)?;
            if !patterns.iter().any(|p| path_matches(p, name)) {
                return Err(Error::NotDelegated {
                    name: name.to_owned(),
                    role: entry.name.clone(),
                    paths: patterns.join(", "),
                });
            }
        }
        Ok(())
    }
}

impl RepoState {
    /// The role a target named `name` added into `role` goes to: its hash bin when `role` delegates to
    /// succinct hash bins, else `role` itself.
    pub fn placement(&self, role: &str, name: &str) -> String {
        match self.succinct.get(role) {
            Some(s) => s.bin_for(name),
            None => role.to_owned(),
        }
    }
}

/// Whether a delegation entry covers a target name: a path pattern matches it, or (hash bins) a
/// `path_hash_prefixes` entry starts its sha256 in hex.
pub(crate) fn delegation_matches(entry: &DelegatedRole, name: &str) -> bool {
    match &entry.paths {
        PathSet::Paths(p) => p.iter().any(|p| path_matches(p.value(), name)),
        PathSet::PathHashPrefixes(prefixes) => {
            use sha2::Digest as _;
            let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
            prefixes
                .iter()
                .any(|p| digest.starts_with(&p.value().to_ascii_lowercase()))
        }
    }
}

/// The path patterns of a delegation (hash-prefix delegations are refused).
pub(crate) fn delegated_patterns(entry: &DelegatedRole) -> Result<Vec<&str>> {
    match &entry.paths {
        PathSet::Paths(p) => Ok(p.iter().map(|p| p.value()).collect()),
        PathSet::PathHashPrefixes(_) => Err(invalid(
            format!("role {:?}", entry.name),
            "hash-prefix delegations are not supported",
        )),
    }
}
