//! One staged-signing flow for every role, root included (issue 2; TUF 4.5, 5.3.4, 5.6.3): metadata
//! whose threshold is held by different people is written to a stage file, signed there by each
//! holder on their own machine, and published once every threshold is met.
//!
//! 1. [`Stage::create`]: a command that would publish (`add --stage`, `delegate --stage`,
//!    `root stage`) writes the next version of each role it changes, signed with the keys at hand
//!    (maybe none), to a new stage file. Target files are already written under their
//!    content-addressed names (no client asks for one before signed metadata names it).
//! 2. [`Stage::sign`] (`role sign`, `root sign`): each holder adds signatures with the keys they hold
//!    and passes the file on. It holds no secret.
//! 3. [`Stage::publish`] (`role publish`, `root publish`, on the repository's machine, under its
//!    lock) checks against the repository as it is NOW and then publishes: each staged version
//!    exactly follows the published one, nothing has expired, and valid signatures over the staged
//!    bytes meet every threshold the role answers to. Then `V.<role>.json`, snapshot and timestamp
//!    (re-signed with the ring's online keys), timestamp last, atomically.
//!
//! The rules that differ by role, and only those, are [`SignedBy`]: a targets role answers to the
//! threshold its delegator's current metadata sets (a role new to the repository: the staged
//! delegator's); root answers to the threshold of the root it replaces and to its own (TUF 5.3.4),
//! and a published root re-signs targets when the targets keys changed.
//!
//! # The stage file
//! JSON: `{"staged_roles": [{"role", "threshold", "keys", "previous_root"?, "metadata"}]}`, the changed
//! role first. `metadata` is the ordinary signed TUF envelope (`Signed<Root>` for `"role": "root"`,
//! else `Signed<Targets>`). `threshold` and `keys` are the role's own signers as known at stage
//! time (root: the new root's root role); `previous_root` (root only) is the replaced root's. They
//! let a holder without the repository see which keys count; publishing ignores them and reads the
//! repository's. A root is staged alone.

use std::collections::BTreeSet;
use std::num::NonZeroU64;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tough::schema::{RoleType, Root, Signature, Signed, Targets};

use crate::canonical::{canonical, canonical_targets, envelope};
use crate::editor::Publication;
use crate::error::{invalid, io, Error, Result};
use crate::keys::{KeyId, KeyRing};
use crate::loader::RepoState;
use crate::lock::RepoLock;
use crate::meta::{bump, expiry_after, now, Expiries, ROOT_ROLE, TARGETS_ROLE};
use crate::names::check_delegated_role_name;
use crate::store::DirStore;
use crate::trust::{top_role_keys, verify_signature, RoleTrust};

/// Permission bits of a stage file before the umask: it holds no secret and travels between the key
/// holders, so it is as readable as any file they create.
const STAGE_FILE_MODE: u32 = 0o666;

/// What a stage file calls itself in errors (the CLI's tests look for it).
const STAGE_FILE: &str = "staged role file";

/// The signed metadata of one staged role.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum StagedMetadata {
    /// The next root.
    Root(Signed<Root>),
    /// The next version of top-level targets or a delegated role.
    Targets(Signed<Targets>),
}

impl StagedMetadata {
    /// The canonical bytes the signatures cover.
    fn signed_bytes(&self) -> Result<Vec<u8>> {
        match self {
            StagedMetadata::Root(s) => canonical(&s.signed),
            StagedMetadata::Targets(s) => canonical_targets(&s.signed),
        }
    }

    fn signatures(&self) -> &[Signature] {
        match self {
            StagedMetadata::Root(s) => &s.signatures,
            StagedMetadata::Targets(s) => &s.signatures,
        }
    }

    fn signatures_mut(&mut self) -> &mut Vec<Signature> {
        match self {
            StagedMetadata::Root(s) => &mut s.signatures,
            StagedMetadata::Targets(s) => &mut s.signatures,
        }
    }

    fn version(&self) -> NonZeroU64 {
        match self {
            StagedMetadata::Root(s) => s.signed.version,
            StagedMetadata::Targets(s) => s.signed.version,
        }
    }

    fn expires(&self) -> jiff::Timestamp {
        match self {
            StagedMetadata::Root(s) => s.signed.expires,
            StagedMetadata::Targets(s) => s.signed.expires,
        }
    }
}

/// One role's next version, as staged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RawStagedRole")]
pub(crate) struct StagedRole {
    role: String,
    /// The role's own signers when staged (informational; see the module doc).
    #[serde(flatten)]
    trust: RoleTrust,
    /// Root only: the signers of the root it replaces, when staged (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_root: Option<RoleTrust>,
    metadata: StagedMetadata,
}

/// A stage file entry before its metadata is parsed as the kind its role says.
#[derive(Deserialize)]
struct RawStagedRole {
    role: String,
    #[serde(flatten)]
    trust: RoleTrust,
    #[serde(default)]
    previous_root: Option<RoleTrust>,
    metadata: serde_json::Value,
}

impl TryFrom<RawStagedRole> for StagedRole {
    type Error = serde_json::Error;

    fn try_from(raw: RawStagedRole) -> std::result::Result<StagedRole, serde_json::Error> {
        let metadata = if raw.role == ROOT_ROLE {
            StagedMetadata::Root(serde_json::from_value(raw.metadata)?)
        } else {
            StagedMetadata::Targets(serde_json::from_value(raw.metadata)?)
        };
        Ok(StagedRole {
            role: raw.role,
            trust: raw.trust,
            previous_root: raw.previous_root,
            metadata,
        })
    }
}

impl StagedRole {
    /// A targets role's next version, with its signers as the delegator sets them now.
    pub(crate) fn targets(role: &str, trust: RoleTrust, metadata: Targets) -> StagedRole {
        StagedRole {
            role: role.to_owned(),
            trust,
            previous_root: None,
            metadata: StagedMetadata::Targets(Signed {
                signed: metadata,
                signatures: Vec::new(),
            }),
        }
    }

    /// The next root, to be signed by a threshold of `previous` (the root it replaces) and its own.
    pub(crate) fn root(root: Root, previous: &Root) -> Result<StagedRole> {
        Ok(StagedRole {
            role: ROOT_ROLE.to_owned(),
            trust: RoleTrust::of_root(&root)?,
            previous_root: Some(RoleTrust::of_root(previous)?),
            metadata: StagedMetadata::Root(Signed {
                signed: root,
                signatures: Vec::new(),
            }),
        })
    }

    /// The staged root, when this entry is one.
    pub(crate) fn as_root(&self) -> Option<&Signed<Root>> {
        match &self.metadata {
            StagedMetadata::Root(s) => Some(s),
            StagedMetadata::Targets(_) => None,
        }
    }
}

/// Whose threshold a staged role must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threshold {
    /// A targets role's, as its delegator sets it.
    Role,
    /// A staged root's own root role's.
    NewRoot,
    /// The root role's of the root a staged root replaces.
    CurrentRoot,
}

/// A threshold one staged role must meet, with the keys that count and the order they sign in.
#[derive(Debug, Clone)]
pub(crate) struct SignedBy {
    pub which: Threshold,
    pub trust: RoleTrust,
    /// Key ids in signing order (root: the order its metadata lists them; targets: by id).
    order: Vec<KeyId>,
}

impl SignedBy {
    fn by_id(which: Threshold, trust: RoleTrust) -> SignedBy {
        let order = trust.keys.keys().cloned().collect();
        SignedBy { which, trust, order }
    }

    fn of_root(which: Threshold, root: &Root) -> Result<SignedBy> {
        Ok(SignedBy {
            which,
            trust: RoleTrust::of_root(root)?,
            order: top_role_keys(root, RoleType::Root)?.keyids,
        })
    }
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

/// Valid signatures against one [`SignedBy`]: (which, present, threshold).
pub(crate) type Count = (Threshold, u64, u64);

/// A stage file's content: the staged roles, the changed one first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stage {
    staged_roles: Vec<StagedRole>,
}

impl Stage {
    /// A stage of these roles (unsigned).
    pub(crate) fn new(staged_roles: Vec<StagedRole>) -> Stage {
        Stage { staged_roles }
    }

    /// The staged roles, in file order.
    pub(crate) fn roles(&self) -> &[StagedRole] {
        &self.staged_roles
    }

    /// Refuses early (before a command does any work) a stage file that already exists.
    pub(crate) fn refuse_existing(out: &Path) -> Result<()> {
        if out.exists() {
            return Err(Error::AlreadyExists { path: out.to_owned() });
        }
        Ok(())
    }

    /// Signs each role with the keys the ring holds of it (maybe none) and writes the new stage file
    /// `out` (never overwriting one: it may hold someone's signatures). Returns each role's counts.
    pub(crate) fn create(mut self, out: &Path, ring: &KeyRing) -> Result<Vec<Vec<Count>>> {
        Stage::refuse_existing(out)?;
        let signers = self.recorded_signers();
        self.sign_with(&signers, ring)?;
        let counts = self.counts(&signers)?;
        ota_fs::write_new(out, &self.to_bytes()?, STAGE_FILE_MODE)?;
        ota_fs::sync_dir(ota_fs::parent_dir(out))?;
        Ok(counts)
    }

    /// Reads and checks a stage file (outside input: it travels between machines).
    pub(crate) fn read(path: &Path) -> Result<Stage> {
        let bytes = std::fs::read(path).map_err(io("read staged role file", path))?;
        let malformed = |why: String| Error::Malformed {
            what: STAGE_FILE,
            path: path.to_owned(),
            why,
        };
        let stage: Stage = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        if stage.staged_roles.is_empty() {
            return Err(malformed("stages no role".into()));
        }
        let mut roles = BTreeSet::new();
        if let Some(s) = stage.staged_roles.iter().find(|s| !roles.insert(s.role.as_str())) {
            return Err(malformed(format!("stages role {} twice", s.role)));
        }
        if roles.contains(ROOT_ROLE) && roles.len() > 1 {
            return Err(malformed("stages root together with other roles".into()));
        }
        Ok(stage)
    }

    /// Adds signatures to the stage file `path` with every ring key that counts for a staged role:
    /// as the repository says now (`repo`, when given: what publishing will check, also recorded in
    /// the file) or as the file records. A ring with no such key is refused. Re-signing with a key
    /// replaces its earlier signature. Returns the stage and each role's counts.
    pub(crate) fn sign(path: &Path, repo: Option<&Path>, ring: &KeyRing) -> Result<(Stage, Vec<Vec<Count>>)> {
        let mut stage = Stage::read(path)?;
        let signers = match repo {
            Some(r) => {
                let signers = stage.current_signers(&RepoState::load(r)?)?;
                stage.record(&signers);
                signers
            }
            None => stage.recorded_signers(),
        };
        if !signers
            .iter()
            .flatten()
            .any(|s| s.order.iter().any(|id| ring.has(id)))
        {
            return Err(stage.no_usable_key(&signers, ring, repo.is_some()));
        }
        stage.sign_with(&signers, ring)?;
        let counts = stage.counts(&signers)?;
        ota_fs::write_atomic(path, &stage.to_bytes()?, STAGE_FILE_MODE)?;
        Ok((stage, counts))
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Tough(format!("{STAGE_FILE}: {e}")))
    }

    /// Signs each role with the ring's keys among its signers, in their signing order. A key that
    /// counts twice (a root key kept by the new root) signs twice; its last signature stays.
    fn sign_with(&mut self, signers: &[Vec<SignedBy>], ring: &KeyRing) -> Result<()> {
        for (s, by) in self.staged_roles.iter_mut().zip(signers) {
            let order: Vec<KeyId> = by.iter().flat_map(|b| b.order.iter().cloned()).collect();
            let usable: Vec<KeyId> = order.into_iter().filter(|id| ring.has(id)).collect();
            if usable.is_empty() {
                continue;
            }
            let msg = s.metadata.signed_bytes()?;
            for (id, sig) in ring.sign_with(&usable, &msg)? {
                let keyid = crate::trust::decoded(&id)?;
                let sigs = s.metadata.signatures_mut();
                sigs.retain(|x| x.keyid != keyid);
                sigs.push(Signature {
                    keyid,
                    sig: sig.into(),
                });
            }
        }
        Ok(())
    }

    /// Valid signatures of each role against each of its thresholds.
    pub(crate) fn counts(&self, signers: &[Vec<SignedBy>]) -> Result<Vec<Vec<Count>>> {
        self.staged_roles
            .iter()
            .zip(signers)
            .map(|(s, by)| {
                let msg = s.metadata.signed_bytes()?;
                let sigs = s.metadata.signatures();
                Ok(by
                    .iter()
                    .map(|b| (b.which, b.trust.count_valid(&msg, sigs), b.trust.threshold))
                    .collect())
            })
            .collect()
    }

    /// Each role's counts as one line of status: the threshold furthest from being met (a targets
    /// role has one).
    pub(crate) fn status(&self, counts: &[Vec<Count>]) -> Vec<RoleSignatures> {
        self.staged_roles
            .iter()
            .zip(counts)
            .map(|(s, c)| {
                let (present, threshold) = c
                    .iter()
                    .map(|(_, p, t)| (*p, *t))
                    .max_by_key(|(p, t)| t.saturating_sub(*p))
                    .unwrap_or_default();
                RoleSignatures {
                    role: s.role.clone(),
                    version: s.metadata.version().get(),
                    present,
                    threshold,
                }
            })
            .collect()
    }

    /// The signers each role answers to, as the file records them.
    fn recorded_signers(&self) -> Vec<Vec<SignedBy>> {
        self.staged_roles
            .iter()
            .map(|s| match (&s.metadata, &s.previous_root) {
                (StagedMetadata::Root(root), previous) => {
                    let mut by = vec![SignedBy::of_root(Threshold::NewRoot, &root.signed)
                        .unwrap_or_else(|_| SignedBy::by_id(Threshold::NewRoot, s.trust.clone()))];
                    by.extend(
                        previous
                            .clone()
                            .map(|p| SignedBy::by_id(Threshold::CurrentRoot, p)),
                    );
                    by
                }
                (StagedMetadata::Targets(_), _) => vec![SignedBy::by_id(Threshold::Role, s.trust.clone())],
            })
            .collect()
    }

    /// The signers each role answers to in the repository as it is now: a targets role's delegator
    /// (for a role new to the repository, the staged delegator), root's own keys and the current
    /// root's (TUF 5.3.4).
    pub(crate) fn current_signers(&self, state: &RepoState) -> Result<Vec<Vec<SignedBy>>> {
        self.staged_roles
            .iter()
            .map(|s| match &s.metadata {
                StagedMetadata::Root(root) => Ok(vec![
                    SignedBy::of_root(Threshold::NewRoot, &root.signed)?,
                    SignedBy::of_root(Threshold::CurrentRoot, &state.root()?.signed.signed)?,
                ]),
                StagedMetadata::Targets(_) => Ok(vec![SignedBy::by_id(
                    Threshold::Role,
                    self.targets_trust(state, s)?,
                )]),
            })
            .collect()
    }

    /// A targets role's trust: the repository's for a role it has, else (a role the file itself
    /// delegates) the staged delegator's.
    fn targets_trust(&self, state: &RepoState, s: &StagedRole) -> Result<RoleTrust> {
        if s.role == TARGETS_ROLE || state.delegated.contains_key(&s.role) {
            return state.role_trust(&s.role);
        }
        // A role new to the repository: its name comes from the file and becomes a file name.
        check_delegated_role_name(&s.role)?;
        self.staged_roles
            .iter()
            .filter_map(|p| match &p.metadata {
                StagedMetadata::Targets(t) => t.signed.delegations.as_ref(),
                StagedMetadata::Root(_) => None,
            })
            .find_map(|d| RoleTrust::of_delegation(d, &s.role))
            .ok_or_else(|| {
                invalid(
                    format!("staged role {:?}", s.role),
                    "is neither in the repository nor delegated by another staged role",
                )
            })
    }

    /// Records the repository's signers in the file, for the holders who sign without it.
    fn record(&mut self, signers: &[Vec<SignedBy>]) {
        for (s, by) in self.staged_roles.iter_mut().zip(signers) {
            for b in by {
                match b.which {
                    Threshold::CurrentRoot => s.previous_root = Some(b.trust.clone()),
                    Threshold::Role | Threshold::NewRoot => s.trust = b.trust.clone(),
                }
            }
        }
    }

    /// The refusal of a ring holding no key that counts, naming the keys that do.
    fn no_usable_key(&self, signers: &[Vec<SignedBy>], ring: &KeyRing, with_repo: bool) -> Error {
        let why = if self.staged_roles.iter().any(|s| s.as_root().is_some()) {
            let ids: Vec<&str> = signers
                .iter()
                .flatten()
                .flat_map(|b| b.order.iter().map(String::as_str))
                .collect();
            let current = signers
                .iter()
                .flatten()
                .any(|b| b.which == Threshold::CurrentRoot);
            format!(
                "none of the given keys is a root key of the staged root{} (root key ids: {})",
                if current && with_repo {
                    " or the current root"
                } else if current {
                    " or the root it replaces"
                } else {
                    ""
                },
                ids.join(", ")
            )
        } else {
            let roles: Vec<String> = self
                .staged_roles
                .iter()
                .zip(signers)
                .map(|(s, by)| {
                    let ids: Vec<&str> = by
                        .iter()
                        .flat_map(|b| b.order.iter().map(String::as_str))
                        .collect();
                    format!("{} ({})", s.role, ids.join(", "))
                })
                .collect();
            format!(
                "none of the given keys is a key of a staged role; the roles and their key ids: {}",
                roles.join("; ")
            )
        };
        Error::Key {
            source_name: ring.key_ids().join(", "),
            why,
        }
    }
}

/// One staged role checked against the repository: the bytes of its metadata file to publish.
#[derive(Debug)]
pub(crate) struct CheckedRole {
    pub role: String,
    pub version: NonZeroU64,
    /// `V.<role>.json`'s bytes: the staged signed part and its valid signatures.
    pub bytes: Vec<u8>,
    pub status: RoleSignatures,
}

impl Stage {
    /// Checks every staged role against the repository as it is now (version, expiry, paths,
    /// thresholds) and returns the metadata files to publish, or the first refusal.
    pub(crate) fn check(&self, state: &RepoState, path: &Path) -> Result<Vec<CheckedRole>> {
        let signers = self.current_signers(state)?;
        let now = now()?;
        self.staged_roles
            .iter()
            .zip(&signers)
            .map(|(s, by)| {
                check_version(state, s, path)?;
                if let StagedMetadata::Targets(t) = &s.metadata {
                    check_paths(state, &s.role, &t.signed)?;
                }
                let version = s.metadata.version();
                if s.metadata.expires() <= now {
                    return Err(invalid(
                        format!("staged role {} version {version}", s.role),
                        format!("expired at {}; stage it again", s.metadata.expires()),
                    ));
                }
                check_thresholds(s, by)
            })
            .collect()
    }
}

/// A staged version must be exactly the next one: targets roles and root each say so their way.
fn check_version(state: &RepoState, s: &StagedRole, path: &Path) -> Result<()> {
    let version = s.metadata.version();
    if s.as_root().is_some() {
        let current = state.root()?.signed.signed.version;
        if Some(version) != current.checked_add(1) {
            return Err(invalid(
                format!("staged root {}", path.display()),
                format!(
                    "has version {version}; expected {} (the current root is {current})",
                    current.get().saturating_add(1)
                ),
            ));
        }
        return Ok(());
    }
    let current = if s.role == TARGETS_ROLE || state.delegated.contains_key(&s.role) {
        Some(state.role_targets(&s.role)?.version)
    } else {
        None
    };
    let follows = current.and_then(|c| c.checked_add(1)) == Some(version)
        || (current.is_none() && version == NonZeroU64::MIN);
    if !follows {
        return Err(Error::StaleStage {
            role: s.role.clone(),
            staged: version.get(),
            published: current.map_or(0, NonZeroU64::get),
        });
    }
    Ok(())
}

/// The delegations leading to a role may have narrowed since it was staged: every target the stage
/// adds must still be one a client would look up in this role (TUF 5.6.7.2).
fn check_paths(state: &RepoState, role: &str, staged: &Targets) -> Result<()> {
    let Some(published) = (role == TARGETS_ROLE || state.delegated.contains_key(role))
        .then(|| state.role_targets(role).ok())
        .flatten()
    else {
        return Ok(());
    };
    for name in staged.targets.keys() {
        if !published.targets.contains_key(name) {
            state.check_delegated(role, name.raw())?;
        }
    }
    Ok(())
}

/// Every threshold met by valid signatures over the staged bytes; the file's bytes keep only those
/// (TUF clients ignore others, but there is no reason to serve them), in the order they were made.
fn check_thresholds(s: &StagedRole, by: &[SignedBy]) -> Result<CheckedRole> {
    let msg = s.metadata.signed_bytes()?;
    let version = s.metadata.version();
    let sigs = s.metadata.signatures();
    // Root: the current root's threshold first, as a client checks it (TUF 5.3.4).
    for b in by.iter().rev() {
        let present = b.trust.count_valid(&msg, sigs);
        if present >= b.trust.threshold {
            continue;
        }
        let root_threshold = |which: &str| Error::ThresholdNotMet {
            role: format!("root (the {which} root's threshold for version {version})"),
            threshold: b.trust.threshold,
            available: present,
            keyids: b.order.join(", "),
        };
        return Err(match b.which {
            Threshold::CurrentRoot => root_threshold("current"),
            Threshold::NewRoot => root_threshold("new"),
            Threshold::Role => Error::StagedThresholdNotMet {
                role: s.role.clone(),
                version: version.get(),
                present,
                threshold: b.trust.threshold,
                keyids: b.trust.key_ids(),
            },
        });
    }
    let valid: Vec<Signature> = sigs
        .iter()
        .filter(|sig| {
            let id = hex::encode(sig.keyid.as_ref());
            by.iter().any(|b| {
                b.trust
                    .keys
                    .get(&id)
                    .is_some_and(|k| verify_signature(k, &msg, sig.sig.as_ref()))
            })
        })
        .cloned()
        .collect();
    let own = by
        .first()
        .map_or((0, 0), |b| (b.trust.count_valid(&msg, sigs), b.trust.threshold));
    Ok(CheckedRole {
        role: s.role.clone(),
        version,
        bytes: envelope(&msg, &valid)?,
        status: RoleSignatures {
            role: s.role.clone(),
            version: version.get(),
            present: own.0,
            threshold: own.1,
        },
    })
}

/// Publishes the stage file `path` into `repo` under its lock for `command`, once [`Stage::check`]
/// passes: the staged roles' metadata files (children, listed after their delegator, first; a
/// root first of all), targets re-signed when a new root changed its keys, then snapshot and
/// timestamp signed with the ring's online keys of the (new) root, timestamp last. Refused before
/// anything is written otherwise. Returns each published role's signatures.
pub(crate) fn publish(
    repo: &Path,
    path: &Path,
    expiries: &Expiries,
    ring: &KeyRing,
    command: &str,
) -> Result<Vec<RoleSignatures>> {
    let _lock = RepoLock::acquire(repo, command)?;
    let state = RepoState::load(repo)?;
    let stage = Stage::read(path)?;
    let checked = stage.check(&state, path)?;
    let mut root = state.root()?.signed.signed.clone();
    let mut files = Vec::new();
    let mut changed = Vec::new();
    let mut published = Vec::new();
    for (s, c) in stage.roles().iter().zip(checked) {
        files.push((format!("{}.{}.json", c.version, c.role), c.bytes.clone()));
        if let Some(new_root) = s.as_root() {
            root = new_root.signed.clone();
        } else {
            changed.push((c.role.clone(), c.version, c.bytes));
        }
        published.push(c.status);
    }
    files.reverse();
    if stage.roles().iter().any(|s| s.as_root().is_some()) {
        resign_targets_for_new_root(&state, &root, expiries, ring, &mut files, &mut changed)?;
    }
    let (snap_name, snap_bytes, ts) =
        crate::editor::resign_snapshot_and_timestamp(&state, &root, &changed, expiries, ring)?;
    files.push((snap_name, snap_bytes));
    Publication {
        metadata: files,
        timestamp: Some(ts),
    }
    .commit(&mut DirStore::new(repo))?;
    Ok(published)
}

/// A new root that changes the targets role's keys needs targets signed by them: the next targets
/// version, same content, signed with the ring's new targets keys.
fn resign_targets_for_new_root(
    state: &RepoState,
    new_root: &Root,
    expiries: &Expiries,
    ring: &KeyRing,
    files: &mut Vec<(String, Vec<u8>)>,
    changed: &mut Vec<(String, NonZeroU64, Vec<u8>)>,
) -> Result<()> {
    let current = &state.root()?.signed.signed;
    if current.roles.get(&RoleType::Targets) == new_root.roles.get(&RoleType::Targets) {
        return Ok(());
    }
    let keys = top_role_keys(new_root, RoleType::Targets)?;
    keys.check_ring(ring)?;
    let mut targets = state.targets.signed.signed.clone();
    targets.version = bump(targets.version)?;
    targets.expires = expiry_after(now()?, expiries.targets)?;
    let version = targets.version;
    let bytes = keys.sign_to_file(&targets, ring)?;
    files.push((format!("{version}.targets.json"), bytes.clone()));
    changed.push((TARGETS_ROLE.to_owned(), version, bytes));
    Ok(())
}

/// Adds signatures to a staged role file with every ring key that belongs to a staged role: its keys
/// in the repository (`repo`, when given: what publishing will check) or, without it, the keys
/// recorded in the file. Keys of no staged role are refused. Re-signing with a key replaces its
/// earlier signature. Returns how many valid signatures each role now has, of how many needed.
pub fn role_sign(staged_path: &Path, repo: Option<&Path>, ring: &KeyRing) -> Result<Vec<RoleSignatures>> {
    let (stage, counts) = Stage::sign(staged_path, repo, ring)?;
    Ok(stage.status(&counts))
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
    publish(repo, staged_path, expiries, ring, "role publish")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{init, read_public_key, root_publish, root_sign, root_stage, InitSpec, RoleSpec, RootChange};

    fn key(dir: &Path, name: &str) -> (tough::schema::key::Key, KeyRing) {
        let k = crate::keys::generate_key(dir, name).unwrap();
        (
            read_public_key(&k.public_path).unwrap(),
            KeyRing::from_files(&[k.private_path]).unwrap(),
        )
    }

    /// A root stage is an ordinary stage file: one `"role": "root"` entry recording the new root's
    /// signers and the replaced root's, so the holder of an old root key signs without the repository.
    #[test]
    fn a_root_stage_uses_the_one_format_and_records_the_replaced_roots_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (root1, root1_ring) = key(d, "root1");
        let (root2, root2_ring) = key(d, "root2");
        let (online, mut ring) = key(d, "online");
        ring.extend(KeyRing::from_files(&[d.join("root1.pk8")]).unwrap());
        let one = |k: &tough::schema::key::Key| RoleSpec {
            keys: vec![k.clone()],
            threshold: 1,
        };
        let spec = InitSpec {
            root: one(&root1),
            targets: one(&online),
            snapshot: one(&online),
            timestamp: one(&online),
            expiries: Expiries::default(),
        };
        let repo = d.join("repo");
        init(&repo, &spec, &ring).unwrap();
        let change = RootChange {
            add_keys: vec![(RoleType::Root, root2)],
            remove_keys: vec![(RoleType::Root, crate::key_id(&root1).unwrap())],
            ..Default::default()
        };
        let out = d.join("root-v2.json");
        assert_eq!(root_stage(&repo, &change, &out).unwrap(), 2);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let entry = &v["staged_roles"][0];
        assert_eq!(entry["role"], "root");
        assert_eq!(entry["threshold"], 1);
        assert_eq!(entry["previous_root"]["threshold"], 1);
        assert_eq!(entry["metadata"]["signed"]["version"], 2);

        // root1 only counts for the replaced root: signed without the repository, from the record.
        let s = root_sign(&out, None, &root1_ring).unwrap();
        assert_eq!((s.new_root, s.current_root), ((0, 1), Some((1, 1))));
        let s = root_sign(&out, None, &root2_ring).unwrap();
        assert_eq!((s.new_root, s.current_root), ((1, 1), Some((1, 1))));
        // The same file through the generic commands: one flow.
        let status = crate::role_sign(&out, Some(&repo), &root2_ring).unwrap();
        assert_eq!(
            (status[0].role.as_str(), status[0].present, status[0].threshold),
            ("root", 1, 1)
        );
        let online_ring = KeyRing::from_files(&[d.join("online.pk8")]).unwrap();
        assert_eq!(
            root_publish(&repo, &out, &Expiries::default(), &online_ring).unwrap(),
            2
        );
        let report = crate::verify(&repo, jiff::Timestamp::now(), jiff::SignedDuration::ZERO).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    }
}
