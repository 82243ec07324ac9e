//! Targets metadata (top-level `targets` or a delegated role) signed in steps by the holders of its
//! keys on different machines, published only once its threshold is met (issue 2; TUF 4.5, 5.6.3).
//! The same three steps as root rotation (`crate::rotate`):
//!
//! 1. `add --stage FILE` ([`AddOptions::stage`](crate::AddOptions)) or `delegate --stage FILE`
//!    ([`delegate_stage`](crate::delegate_stage)) does everything a publish does except publishing:
//!    target files are written under their content-addressed names (no client asks for one before
//!    signed metadata names it), and the role's next version, signed with the keys at hand (maybe
//!    none), goes to FILE. A `delegate --stage` also carries the new role's first version.
//! 2. Each holder runs [`role_sign`] with the keys they hold and passes FILE on. It holds no secret.
//! 3. [`role_publish`] (on the repository's machine, under its lock) checks against the repository
//!    as it is NOW: each staged role's version is exactly the published one + 1 (otherwise someone
//!    published in between: stage again), and valid signatures over the staged bytes meet the
//!    threshold its delegator's current metadata sets. Then it writes `V.<role>.json`, re-signs
//!    snapshot and timestamp with the online keys, timestamp last, atomically.
//!
//! The staged file is JSON: `{"staged_roles": [{"role", "threshold", "keys", "metadata"}]}`; the
//! first entry is the changed role, `metadata` is the ordinary signed TUF envelope. `threshold` and
//! `keys` are copied from the delegator at stage time so a holder without the repository can see
//! which keys count; publishing ignores them and reads the repository's.

use std::collections::BTreeMap;
use std::fs;
use std::num::NonZeroU64;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tough::schema::key::Key;
use tough::schema::{Signature, Signed, Targets};

use crate::error::{io, Error, Result};
use crate::keys::{KeyId, KeyRing};
use crate::lock::RepoLock;
use crate::meta::{self, Expiries, Publication, RepoState, TARGETS_ROLE};
use crate::names::check_delegated_role_name;
use crate::trust::{verify_signature, RoleTrust};

/// Permission bits of a stage file before the umask: it holds no secret and travels between the key
/// holders, so it is as readable as any file they create.
pub(crate) const STAGE_FILE_MODE: u32 = 0o666;

/// One role's next version, as staged.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StagedRole {
    role: String,
    /// Signatures needed, from the delegator's metadata when staged (informational).
    threshold: u64,
    /// The role's public keys by key id, from the delegator's metadata when staged (informational).
    keys: BTreeMap<KeyId, Key>,
    metadata: Signed<Targets>,
}

/// The staged file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StagedRoles {
    staged_roles: Vec<StagedRole>,
}

/// How far one staged role is from being publishable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSignatures {
    /// The role.
    pub role: String,
    /// Its staged version.
    pub version: u64,
    /// Valid signatures by the role's keys over the staged bytes.
    pub present: u64,
    /// Signatures needed.
    pub threshold: u64,
}

/// The bytes of `role`'s next version signed with the ring's keys of that role (maybe none), as an
/// entry of a staged file.
pub(crate) struct StageEntry {
    pub role: String,
    pub trust: RoleTrust,
    pub metadata: Targets,
}

/// Signs each entry with the keys the ring holds of its role and writes the staged file `out`
/// (which must not exist; written atomically, 0644 under the usual umask: it holds no secret).
pub(crate) fn write_stage(
    out: &Path,
    entries: Vec<StageEntry>,
    ring: &KeyRing,
) -> Result<Vec<RoleSignatures>> {
    if out.exists() {
        return Err(Error::AlreadyExists { path: out.to_owned() });
    }
    let mut staged = StagedRoles {
        staged_roles: Vec::new(),
    };
    for e in entries {
        let mut s = StagedRole {
            role: e.role,
            threshold: e.trust.threshold,
            keys: e.trust.keys,
            metadata: Signed {
                signed: e.metadata,
                signatures: Vec::new(),
            },
        };
        let ids: Vec<KeyId> = s.keys.keys().filter(|id| ring.has(id)).cloned().collect();
        sign_entry(&mut s, &ids, ring)?;
        staged.staged_roles.push(s);
    }
    let status = status(&staged)?;
    ota_fs::write_new(out, &staged_bytes(&staged)?, STAGE_FILE_MODE)?;
    ota_fs::sync_dir(ota_fs::parent_dir(out))?;
    Ok(status)
}

fn staged_bytes(staged: &StagedRoles) -> Result<Vec<u8>> {
    serde_json::to_vec(staged).map_err(|e| Error::Tough(format!("staged role file: {e}")))
}

fn read_stage(path: &Path) -> Result<StagedRoles> {
    let bytes = fs::read(path).map_err(io("read staged role file", path))?;
    let staged: StagedRoles = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
        what: "staged role file",
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let malformed = |why: String| Error::Malformed {
        what: "staged role file",
        path: path.to_owned(),
        why,
    };
    if staged.staged_roles.is_empty() {
        return Err(malformed("stages no role".into()));
    }
    let mut roles = std::collections::BTreeSet::new();
    if let Some(s) = staged
        .staged_roles
        .iter()
        .find(|s| !roles.insert(s.role.as_str()))
    {
        return Err(malformed(format!("stages role {} twice", s.role)));
    }
    Ok(staged)
}

/// Adds (or replaces) the signatures of keys `ids` over the entry's canonical signed bytes.
fn sign_entry(s: &mut StagedRole, ids: &[KeyId], ring: &KeyRing) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let msg = crate::canonical::canonical_targets(&s.metadata.signed)?;
    for (id, sig) in ring.sign_with(ids, &msg)? {
        let keyid = crate::trust::decoded(&id)?;
        s.metadata.signatures.retain(|x| x.keyid != keyid);
        s.metadata.signatures.push(Signature {
            keyid,
            sig: sig.into(),
        });
    }
    Ok(())
}

/// Signature counts of each entry against the keys recorded in the file.
fn status(staged: &StagedRoles) -> Result<Vec<RoleSignatures>> {
    staged
        .staged_roles
        .iter()
        .map(|s| {
            let trust = RoleTrust {
                keys: s.keys.clone(),
                threshold: s.threshold,
            };
            let msg = crate::canonical::canonical_targets(&s.metadata.signed)?;
            Ok(RoleSignatures {
                role: s.role.clone(),
                version: s.metadata.signed.version.get(),
                present: trust.count_valid(&msg, &s.metadata.signatures),
                threshold: s.threshold,
            })
        })
        .collect()
}

/// The trust of every staged role: the repository's current one for a role it has, else (a role the
/// file itself delegates) the staged delegator's.
fn current_trust(state: &RepoState, staged: &StagedRoles) -> Result<Vec<RoleTrust>> {
    staged
        .staged_roles
        .iter()
        .map(|s| {
            if s.role == TARGETS_ROLE || state.delegated.contains_key(&s.role) {
                return state.role_trust(&s.role);
            }
            // A role new to the repository: its name comes from the file and becomes a file name.
            check_delegated_role_name(&s.role)?;
            staged
                .staged_roles
                .iter()
                .filter_map(|p| p.metadata.signed.delegations.as_ref())
                .find_map(|d| RoleTrust::of_delegation(d, &s.role))
                .ok_or_else(|| {
                    crate::error::invalid(
                        format!("staged role {:?}", s.role),
                        "is neither in the repository nor delegated by another staged role",
                    )
                })
        })
        .collect()
}

/// Adds signatures to a staged role file with every ring key that belongs to a staged role: its keys
/// in the repository (`repo`, when given: what publishing will check) or, without it, the keys
/// recorded in the file. Keys of no staged role are refused. Re-signing with a key replaces its
/// earlier signature. Returns how many valid signatures each role now has, of how many needed.
pub fn role_sign(staged_path: &Path, repo: Option<&Path>, ring: &KeyRing) -> Result<Vec<RoleSignatures>> {
    let mut staged = read_stage(staged_path)?;
    if let Some(r) = repo {
        let trusts = current_trust(&RepoState::load(r)?, &staged)?;
        for (s, t) in staged.staged_roles.iter_mut().zip(trusts) {
            s.keys = t.keys;
            s.threshold = t.threshold;
        }
    }
    let mut signed_any = false;
    for s in &mut staged.staged_roles {
        let ids: Vec<KeyId> = s.keys.keys().filter(|id| ring.has(id)).cloned().collect();
        signed_any |= !ids.is_empty();
        sign_entry(s, &ids, ring)?;
    }
    if !signed_any {
        let roles: Vec<String> = staged
            .staged_roles
            .iter()
            .map(|s| {
                format!(
                    "{} ({})",
                    s.role,
                    s.keys.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        return Err(Error::Key {
            source_name: ring.key_ids().join(", "),
            why: format!(
                "none of the given keys is a key of a staged role; the roles and their key ids: {}",
                roles.join("; ")
            ),
        });
    }
    let status = status(&staged)?;
    ota_fs::write_atomic(staged_path, &staged_bytes(&staged)?, STAGE_FILE_MODE)?;
    Ok(status)
}

/// Publishes a staged role file once every staged role's threshold is met by valid signatures over
/// the staged bytes (keys and thresholds as the repository's current delegators set them, TUF 5.6.3)
/// and each staged version is exactly the published version + 1 (a new role: not yet in the
/// repository). Then writes `V.<role>.json` for each, and re-signs snapshot and timestamp with the
/// ring's online keys, timestamp last. Refused before anything is written otherwise. Returns the
/// published roles.
pub fn role_publish(
    repo: &Path,
    staged_path: &Path,
    expiries: &Expiries,
    ring: &KeyRing,
) -> Result<Vec<RoleSignatures>> {
    let _lock = RepoLock::acquire(repo, "role publish")?;
    let state = RepoState::load(repo)?;
    let staged = read_stage(staged_path)?;
    let root = state.root()?.signed.signed.clone();
    let trusts = current_trust(&state, &staged)?;
    let now = meta::now()?;
    let mut published = Vec::new();
    let mut changed = Vec::new();
    let mut files = Vec::new();
    for (s, trust) in staged.staged_roles.iter().zip(&trusts) {
        let version = s.metadata.signed.version;
        let current = if s.role == TARGETS_ROLE || state.delegated.contains_key(&s.role) {
            Some(state.role_targets(&s.role)?.version)
        } else {
            None
        };
        if current.and_then(|c| c.checked_add(1)) != Some(version)
            && !(current.is_none() && version == NonZeroU64::MIN)
        {
            return Err(Error::StaleStage {
                role: s.role.clone(),
                staged: version.get(),
                published: current.map_or(0, NonZeroU64::get),
            });
        }
        // The delegations leading to the role may have narrowed since it was staged: every target the
        // stage adds must still be one a client would look up in this role (TUF 5.6.7.2).
        if let Some(c) = current.and(state.role_targets(&s.role).ok()) {
            for name in s.metadata.signed.targets.keys() {
                if !c.targets.contains_key(name) {
                    state.check_delegated(&s.role, name.raw())?;
                }
            }
        }
        if s.metadata.signed.expires <= now {
            return Err(crate::error::invalid(
                format!("staged role {} version {version}", s.role),
                format!("expired at {}; stage it again", s.metadata.signed.expires),
            ));
        }
        let msg = crate::canonical::canonical_targets(&s.metadata.signed)?;
        let present = trust.count_valid(&msg, &s.metadata.signatures);
        if present < trust.threshold {
            return Err(Error::StagedThresholdNotMet {
                role: s.role.clone(),
                version: version.get(),
                present,
                threshold: trust.threshold,
                keyids: trust.key_ids(),
            });
        }
        // Only the valid signatures of the role's keys are published (TUF clients ignore others,
        // but there is no reason to serve them).
        let signatures: Vec<Signature> = s
            .metadata
            .signatures
            .iter()
            .filter(|sig| {
                trust
                    .keys
                    .get(&hex::encode(sig.keyid.as_ref()))
                    .is_some_and(|k| verify_signature(k, &msg, sig.sig.as_ref()))
            })
            .cloned()
            .collect();
        let bytes = crate::canonical::envelope(&msg, &signatures)?;
        changed.push((s.role.clone(), version, bytes.clone()));
        files.push((format!("{version}.{}.json", s.role), bytes));
        published.push(RoleSignatures {
            role: s.role.clone(),
            version: version.get(),
            present,
            threshold: trust.threshold,
        });
    }
    let (snap_name, snap_bytes, ts) =
        crate::editor::resign_snapshot_and_timestamp(&state, &root, &changed, expiries, ring)?;
    // Children (listed after their delegator) first: every file is new until timestamp.json.
    files.reverse();
    files.push((snap_name, snap_bytes));
    Publication {
        metadata: files,
        timestamp: Some(ts),
        ..Publication::default()
    }
    .commit(repo)?;
    Ok(published)
}
