//! Root rotation and key revocation with thresholds held by different people (TUF 5.3.4, 6.1).
//!
//! 1. [`root_stage`] writes the next root version (keys added or removed, thresholds changed) as an
//!    ordinary TUF root file with no signatures.
//! 2. Each holder runs [`root_sign`] with the keys they hold, on their own machine, and passes the file
//!    on. Only keys of the current root's root role or of the new root's root role may sign.
//! 3. [`root_publish`] checks that the signatures meet BOTH the current root's root threshold and the new
//!    root's own (what every client checks), then publishes `N.root.json` and re-signs targets (if its
//!    keys changed), snapshot and timestamp with the new keys, timestamp last.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use tough::schema::key::Key;
use tough::schema::{RoleType, Root, Signed};

use crate::canonical::file_bytes;
use crate::error::{invalid, io, Error, Result};
use crate::keys::{key_id, KeyRing};
use crate::meta::{self, bump, expiry_after, now, Expiries, Publication, RepoState};
use crate::staged_role::STAGE_FILE_MODE;
use crate::trust::top_role_keys;

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

/// Writes the next root version, unsigned, to `out` (which must not exist). Returns its version.
pub fn root_stage(repo: &Path, change: &RootChange, out: &Path) -> Result<u64> {
    let state = RepoState::load(repo)?;
    let mut root = state.root()?.signed.signed.clone();
    root.version = bump(root.version)?;
    root.expires = expiry_after(now()?, change.expiries.root)?;
    for (role, key) in &change.add_keys {
        let id = crate::trust::decoded(&key_id(key)?)?;
        let rk = root
            .roles
            .get_mut(role)
            .ok_or_else(|| invalid(format!("role {role}"), "not in root"))?;
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
        let dec = crate::trust::decoded(id)?;
        let rk = root
            .roles
            .get_mut(role)
            .ok_or_else(|| invalid(format!("role {role}"), "not in root"))?;
        let before = rk.keyids.len();
        rk.keyids.retain(|k| k != &dec);
        if rk.keyids.len() == before {
            return Err(invalid(format!("key {id}"), format!("is not a {role} key")));
        }
    }
    for (role, t) in &change.thresholds {
        let rk = root
            .roles
            .get_mut(role)
            .ok_or_else(|| invalid(format!("role {role}"), "not in root"))?;
        rk.threshold = std::num::NonZeroU64::new(*t)
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
    // Keys no role uses any more are dropped from the key list (revocation leaves no trace).
    let used: HashSet<_> = root
        .roles
        .values()
        .flat_map(|r| r.keyids.iter().cloned())
        .collect();
    root.keys.retain(|id, _| used.contains(id));
    let version = root.version.get();
    let staged = Signed {
        signed: root,
        signatures: Vec::new(),
    };
    ota_fs::write_new(out, &file_bytes(&staged)?, STAGE_FILE_MODE)?;
    ota_fs::sync_dir(ota_fs::parent_dir(out))?;
    Ok(version)
}

/// How far a staged root is from being publishable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSignatures {
    /// The staged root's version.
    pub version: u64,
    /// Signatures by keys of the new root's root role, and its threshold.
    pub new_root: (u64, u64),
    /// Signatures by keys of the current root's root role, and its threshold (when the current root
    /// was available).
    pub current_root: Option<(u64, u64)>,
}

fn read_staged(path: &Path) -> Result<Signed<Root>> {
    let bytes = fs::read(path).map_err(io("read staged root", path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
        what: "staged root metadata",
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn count(root: &Root, staged: &Signed<Root>) -> (u64, u64) {
    let ids: HashSet<String> = root
        .roles
        .get(&RoleType::Root)
        .map(|r| crate::trust::hex_ids(&r.keyids).into_iter().collect())
        .unwrap_or_default();
    let threshold = root.roles.get(&RoleType::Root).map_or(0, |r| r.threshold.get());
    let n = staged
        .signatures
        .iter()
        .filter(|s| ids.contains(&hex::encode(s.keyid.as_ref())))
        .count() as u64;
    (n, threshold)
}

/// Adds signatures to a staged root with every ring key that is a root key of the new root or of the
/// current root (`repo`, when given). Re-signing with a key replaces its earlier signature.
pub fn root_sign(staged_path: &Path, repo: Option<&Path>, ring: &KeyRing) -> Result<RootSignatures> {
    let mut staged = read_staged(staged_path)?;
    let current = match repo {
        Some(r) => Some(RepoState::load(r)?.root()?.signed.signed.clone()),
        None => None,
    };
    let mut allowed: Vec<String> = top_role_keys(&staged.signed, RoleType::Root)?.keyids;
    if let Some(c) = &current {
        allowed.extend(top_role_keys(c, RoleType::Root)?.keyids);
    }
    let usable: Vec<String> = allowed.iter().filter(|id| ring.has(id)).cloned().collect();
    if usable.is_empty() {
        return Err(Error::Key {
            source_name: ring.key_ids().join(", "),
            why: format!(
                "none of the given keys is a root key of the staged root{} (root key ids: {})",
                if current.is_some() {
                    " or the current root"
                } else {
                    ""
                },
                allowed.join(", ")
            ),
        });
    }
    let msg = crate::canonical::canonical(&staged.signed)?;
    for (id, sig) in ring.sign_with(&usable, &msg)? {
        let keyid = crate::trust::decoded(&id)?;
        staged.signatures.retain(|s| s.keyid != keyid);
        staged.signatures.push(tough::schema::Signature {
            keyid,
            sig: sig.into(),
        });
    }
    ota_fs::write_atomic(staged_path, &file_bytes(&staged)?, STAGE_FILE_MODE)?;
    Ok(RootSignatures {
        version: staged.signed.version.get(),
        new_root: count(&staged.signed, &staged),
        current_root: current.as_ref().map(|c| count(c, &staged)),
    })
}

/// Publishes a staged root once both thresholds are met (TUF 5.3.4: the new root must be signed by a
/// threshold of the trusted root's keys and by a threshold of its own), then re-signs the top-level
/// metadata with the new root's keys. Needs the snapshot and timestamp keys of the new root, and the
/// targets keys if the targets role's keys changed.
pub fn root_publish(repo: &Path, staged_path: &Path, expiries: &Expiries, ring: &KeyRing) -> Result<u64> {
    let _lock = crate::lock::RepoLock::acquire(repo, "root publish")?;
    let state = RepoState::load(repo)?;
    let current = state.root()?.signed.signed.clone();
    let staged = read_staged(staged_path)?;
    let new = staged.signed.clone();
    if Some(new.version) != current.version.checked_add(1) {
        return Err(invalid(
            format!("staged root {}", staged_path.display()),
            format!(
                "has version {}; expected {} (the current root is {})",
                new.version,
                current.version.get() + 1,
                current.version
            ),
        ));
    }
    let threshold_err = |which: &str, root: &Root| {
        let (n, t) = count(root, &staged);
        Error::ThresholdNotMet {
            role: format!("root (the {which} root's threshold for version {})", new.version),
            threshold: t,
            available: n,
            keyids: top_role_keys(root, RoleType::Root)
                .map(|k| k.keyids.join(", "))
                .unwrap_or_default(),
        }
    };
    current
        .verify_role(&staged)
        .map_err(|_| threshold_err("current", &current))?;
    new.verify_role(&staged).map_err(|_| threshold_err("new", &new))?;

    let targets_changed = current.roles.get(&RoleType::Targets) != new.roles.get(&RoleType::Targets);
    let mut publication = Publication::default();
    let mut changed = Vec::new();
    if targets_changed {
        let keys = top_role_keys(&new, RoleType::Targets)?;
        keys.check_ring(ring)?;
        let mut targets = state.targets.signed.signed.clone();
        targets.version = bump(targets.version)?;
        targets.expires = expiry_after(now()?, expiries.targets)?;
        let v = targets.version;
        let bytes = keys.sign_to_file(&targets, ring)?;
        publication
            .metadata
            .push((format!("{v}.targets.json"), bytes.clone()));
        changed.push((meta::TARGETS_ROLE.to_owned(), v, bytes));
    }
    let (snap_name, snap_bytes, ts) =
        crate::editor::resign_snapshot_and_timestamp(&state, &new, &changed, expiries, ring)?;
    let root_bytes = file_bytes(&staged)?;
    // Root goes before snapshot and timestamp in the write order; all are new files except timestamp.
    publication
        .metadata
        .insert(0, (format!("{}.root.json", new.version), root_bytes));
    publication.metadata.push((snap_name, snap_bytes));
    publication.timestamp = Some(ts);
    publication.commit(repo)?;
    Ok(new.version.get())
}
