//! Root rotation and key revocation with thresholds held by different people (TUF 5.3.4, 6.1).
//!
//! The steps are the one staged-signing flow of every role (`crate::staged`); what is root's own
//! is building the next root from a [`RootChange`] and the thin commands over the flow:
//!
//! 1. [`root_stage`] writes the next root version (keys added or removed, thresholds changed) to a
//!    stage file, unsigned.
//! 2. Each holder runs [`root_sign`] with the keys they hold, on their own machine, and passes the file
//!    on. Only keys of the current root's root role or of the new root's root role may sign.
//! 3. [`root_publish`] checks that the signatures meet BOTH the current root's root threshold and the new
//!    root's own (what every client checks), then publishes `N.root.json` and re-signs targets (if its
//!    keys changed), snapshot and timestamp with the new keys, timestamp last.

use std::collections::HashSet;
use std::path::Path;

use tough::schema::key::Key;
use tough::schema::{RoleKeys, RoleType, Root};

use crate::error::{invalid, Result};
use crate::keys::{key_id, KeyRing};
use crate::loader::RepoState;
use crate::meta::{bump, expiry_after, now, Expiries};
use crate::staged::{Stage, StagedRole, Threshold};
use crate::trust::decoded;

/// The top-level roles, by name.
pub fn parse_role(name: &str) -> Result<RoleType> {
    match name {
        "root" => Ok(RoleType::Root),
        "targets" => Ok(RoleType::Targets),
        "snapshot" => Ok(RoleType::Snapshot),
        "timestamp" => Ok(RoleType::Timestamp),
        _ => Err(invalid(
            format!("role {name:?}"),
            "expected root, targets, snapshot or timestamp",
        )),
    }
}

/// Changes for the next root version.
#[derive(Debug, Clone, Default)]
pub struct RootChange {
    /// Keys to add to a role.
    pub add_keys: Vec<(RoleType, Key)>,
    /// Key ids to remove from a role (revocation).
    pub remove_keys: Vec<(RoleType, String)>,
    /// New thresholds.
    pub thresholds: Vec<(RoleType, u64)>,
    /// Lifetime of the new root.
    pub expiries: Expiries,
}

/// Writes the next root version, unsigned, to the stage file `out` (which must not exist), as the
/// one role of a stage (the staged-signing flow every role shares). Returns its version.
pub fn root_stage(repo: &Path, change: &RootChange, out: &Path) -> Result<u64> {
    Stage::refuse_existing(out)?;
    let state = RepoState::load(repo)?;
    let current = &state.root()?.signed.signed;
    let mut root = current.clone();
    root.version = bump(root.version)?;
    root.expires = expiry_after(now()?, change.expiries.root)?;
    apply_change(&mut root, change)?;
    let version = root.version.get();
    Stage::new(vec![StagedRole::root(root, current)?]).create(out, &KeyRing::new())?;
    Ok(version)
}

/// Adds and removes keys and sets thresholds, then checks every role can still meet its threshold
/// and drops keys no role uses any more (revocation leaves no trace).
fn apply_change(root: &mut Root, change: &RootChange) -> Result<()> {
    for (role, key) in &change.add_keys {
        let id = decoded(&key_id(key)?)?;
        let rk = role_keys_mut(root, role)?;
        if rk.keyids.contains(&id) {
            return Err(invalid(
                format!("key {}", hex::encode(&id)),
                format!("is already a {role} key"),
            ));
        }
        rk.keyids.push(id.clone());
        root.keys.insert(id, key.clone());
    }
    for (role, id) in &change.remove_keys {
        let dec = decoded(id)?;
        let rk = role_keys_mut(root, role)?;
        let before = rk.keyids.len();
        rk.keyids.retain(|k| k != &dec);
        if rk.keyids.len() == before {
            return Err(invalid(format!("key {id}"), format!("is not a {role} key")));
        }
    }
    for (role, t) in &change.thresholds {
        role_keys_mut(root, role)?.threshold = std::num::NonZeroU64::new(*t)
            .ok_or_else(|| invalid(format!("{role} threshold"), "must be at least 1"))?;
    }
    for (role, rk) in &root.roles {
        if rk.keyids.is_empty() || rk.threshold.get() > rk.keyids.len() as u64 {
            return Err(invalid(
                format!("{role} role"),
                format!(
                    "threshold {} with {} key(s): a threshold must be 1 to the number of keys",
                    rk.threshold,
                    rk.keyids.len()
                ),
            ));
        }
    }
    let used: HashSet<_> = root
        .roles
        .values()
        .flat_map(|r| r.keyids.iter().cloned())
        .collect();
    root.keys.retain(|id, _| used.contains(id));
    Ok(())
}

fn role_keys_mut<'r>(root: &'r mut Root, role: &RoleType) -> Result<&'r mut RoleKeys> {
    root.roles
        .get_mut(role)
        .ok_or_else(|| invalid(format!("role {role}"), "not in root"))
}

/// How far a staged root is from being publishable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSignatures {
    /// The staged root's version.
    pub version: u64,
    /// Signatures by keys of the new root's root role, and its threshold.
    pub new_root: (u64, u64),
    /// Signatures by keys of the current root's root role, and its threshold (when the current root
    /// is known: from the repository, or as recorded in the stage file).
    pub current_root: Option<(u64, u64)>,
}

/// Adds signatures to a staged root with every ring key that is a root key of the new root or of the
/// current root (`repo`, when given; else as the stage file records it). Re-signing with a key
/// replaces its earlier signature.
pub fn root_sign(staged_path: &Path, repo: Option<&Path>, ring: &KeyRing) -> Result<RootSignatures> {
    refuse_non_root(staged_path)?;
    let (stage, counts) = Stage::sign(staged_path, repo, ring)?;
    let counts = counts.into_iter().next().unwrap_or_default();
    let find = |which: Threshold| {
        counts
            .iter()
            .find(|(w, _, _)| *w == which)
            .map(|(_, present, threshold)| (*present, *threshold))
    };
    Ok(RootSignatures {
        version: stage
            .roles()
            .first()
            .and_then(|s| s.as_root())
            .map_or(0, |r| r.signed.version.get()),
        new_root: find(Threshold::NewRoot).unwrap_or_default(),
        current_root: find(Threshold::CurrentRoot),
    })
}

/// Publishes a staged root once both thresholds are met (TUF 5.3.4: the new root must be signed by a
/// threshold of the trusted root's keys and by a threshold of its own), then re-signs the top-level
/// metadata with the new root's keys. Needs the snapshot and timestamp keys of the new root, and the
/// targets keys if the targets role's keys changed.
pub fn root_publish(repo: &Path, staged_path: &Path, expiries: &Expiries, ring: &KeyRing) -> Result<u64> {
    refuse_non_root(staged_path)?;
    let published = crate::staged::publish(repo, staged_path, expiries, ring, "root publish")?;
    Ok(published.first().map_or(0, |s| s.version))
}

/// `root sign` and `root publish` take a stage of root only.
fn refuse_non_root(path: &Path) -> Result<()> {
    let stage = Stage::read(path)?;
    if stage.roles().iter().any(|s| s.as_root().is_none()) {
        return Err(invalid(
            format!("staged root {}", path.display()),
            "stages no root; use `repo-tool role sign` or `role publish` for it",
        ));
    }
    Ok(())
}
