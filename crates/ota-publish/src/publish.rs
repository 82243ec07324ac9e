//! The commands that change a repository: [`init`], [`add`], [`refresh`] and [`delegate`].
//!
//! Each one loads the current state (`crate::loader`), checks every input and that the key ring meets
//! every threshold it will need, puts target files into the store, signs all new metadata in memory,
//! and only then publishes (`crate::editor::Publication` through a `crate::store::RepoStore`): new
//! files first, `timestamp.json` last. With a stage file, `add` and `delegate` hand the signed-in-steps
//! part to `crate::staged` instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use ota_release::{Channel, HardwareId, OtaTarget, Release, Rollout, RolloutPlan};
use tough::schema::decoded::Decoded;
use tough::schema::key::Key;
use tough::schema::{
    DelegatedRole, Delegations, Hashes, PathPattern, PathSet, RoleKeys, RoleType, Root, Snapshot, Target,
    Targets, Timestamp,
};
use tough::TargetName;

use crate::editor::{resign_snapshot_and_timestamp, Publication};
use crate::error::{invalid, Error, Result};
use crate::keys::{key_id, KeyRing};
use crate::loader::{delegated_patterns, RepoState};
use crate::lock::RepoLock;
use crate::meta::{self, bump, expiry_after, metafile, now, Expiries, SPEC_VERSION, TARGETS_ROLE};
use crate::names::{check_delegated_role_name, check_path_pattern, check_target_name, pattern_covers};
use crate::rollout::WavesSpec;
use crate::staged::{RoleSignatures, Stage, StagedRole};
use crate::store::{DirStore, RepoStore};
use crate::trust::{top_role_keys, RoleKeySet, RoleTrust};

/// The keys and threshold of one role.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// Public keys allowed to sign the role.
    pub keys: Vec<Key>,
    /// Signatures needed (1 to the number of keys).
    pub threshold: u64,
}

/// What [`init`] creates.
#[derive(Debug, Clone)]
pub struct InitSpec {
    /// Root role keys.
    pub root: RoleSpec,
    /// Top-level targets role keys.
    pub targets: RoleSpec,
    /// Snapshot role keys.
    pub snapshot: RoleSpec,
    /// Timestamp role keys.
    pub timestamp: RoleSpec,
    /// Lifetimes of each role's metadata.
    pub expiries: Expiries,
}

/// The pinned root of trust of a new repository.
#[derive(Debug, Clone)]
pub struct RootFingerprint {
    /// `metadata/1.root.json`.
    pub path: PathBuf,
    /// SHA-256 of that file's bytes, lowercase hex: what a factory line pins into devices.
    pub sha256: String,
}

/// Key ids and a checked threshold for root metadata.
pub(crate) fn role_keys(
    what: &str,
    spec: &RoleSpec,
    keys: &mut HashMap<Decoded<tough::schema::decoded::Hex>, Key>,
) -> Result<RoleKeys> {
    if spec.keys.is_empty() {
        return Err(invalid(format!("{what} keys"), "a role needs at least one key"));
    }
    let mut ids = Vec::new();
    for k in &spec.keys {
        let id = crate::trust::decoded(&key_id(k)?)?;
        if ids.contains(&id) {
            return Err(invalid(
                format!("{what} keys"),
                format!("key {} is listed twice", hex::encode(&id)),
            ));
        }
        keys.insert(id.clone(), k.clone());
        ids.push(id);
    }
    let threshold = NonZeroU64::new(spec.threshold)
        .filter(|t| t.get() <= ids.len() as u64)
        .ok_or_else(|| {
            invalid(
                format!("{what} threshold {}", spec.threshold),
                format!("expected 1 to {} (the number of {what} keys)", ids.len()),
            )
        })?;
    Ok(RoleKeys {
        keyids: ids,
        threshold,
        _extra: HashMap::new(),
    })
}

/// Creates a new repository in `repo` (which must not hold one yet): root, targets, snapshot and
/// timestamp metadata at version 1, consistent snapshots on (TUF 4.3). The key ring must meet all
/// four thresholds. Returns the fingerprint of `1.root.json`.
pub fn init(repo: &Path, spec: &InitSpec, ring: &KeyRing) -> Result<RootFingerprint> {
    let mdir = repo.join(meta::METADATA_DIR);
    if mdir.exists() {
        return Err(Error::AlreadyExists { path: mdir });
    }
    let now = now()?;
    let root = first_root(spec, now)?;
    let sets: Vec<RoleKeySet> = [
        RoleType::Root,
        RoleType::Targets,
        RoleType::Snapshot,
        RoleType::Timestamp,
    ]
    .into_iter()
    .map(|r| top_role_keys(&root, r))
    .collect::<Result<_>>()?;
    for s in &sets {
        s.check_ring(ring)?;
    }
    let publication = sign_first_versions(&root, &sets, &spec.expiries, now, ring)?;
    let sha256 = publication
        .metadata
        .first()
        .map(|(_, root_bytes)| ota_release::Sha256Digest::of(root_bytes).to_hex())
        .unwrap_or_default();
    // Everything is checked and signed: only now is anything created. Another `init` may have won
    // the race since the check above.
    let _lock = RepoLock::acquire_new(repo, "init")?;
    if mdir.exists() {
        return Err(Error::AlreadyExists { path: mdir });
    }
    publication.commit(&mut DirStore::new(repo))?;
    fs::create_dir_all(repo.join(meta::TARGETS_DIR))
        .map_err(crate::error::io("create", repo.join("targets")))?;
    Ok(RootFingerprint {
        path: crate::loader::meta_path(repo, "1.root.json"),
        sha256,
    })
}

/// Version 1 of root: the four roles' keys and thresholds, consistent snapshots on.
fn first_root(spec: &InitSpec, now: jiff::Timestamp) -> Result<Root> {
    let mut keys = HashMap::new();
    let mut roles = HashMap::new();
    roles.insert(RoleType::Root, role_keys("root", &spec.root, &mut keys)?);
    roles.insert(RoleType::Targets, role_keys("targets", &spec.targets, &mut keys)?);
    roles.insert(
        RoleType::Snapshot,
        role_keys("snapshot", &spec.snapshot, &mut keys)?,
    );
    roles.insert(
        RoleType::Timestamp,
        role_keys("timestamp", &spec.timestamp, &mut keys)?,
    );
    Ok(Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: expiry_after(now, spec.expiries.root)?,
        keys,
        roles,
        _extra: HashMap::new(),
    })
}

/// Version 1 of every top-level role, signed by its keys (`sets`: root, targets, snapshot,
/// timestamp): `1.root.json` first.
fn sign_first_versions(
    root: &Root,
    sets: &[RoleKeySet],
    expiries: &Expiries,
    now: jiff::Timestamp,
    ring: &KeyRing,
) -> Result<Publication> {
    let [root_keys, targets_keys, snapshot_keys, timestamp_keys] = sets else {
        return Err(Error::Tough("four top-level roles expected".into()));
    };
    let one = NonZeroU64::MIN;
    let targets = Targets {
        spec_version: SPEC_VERSION.to_owned(),
        version: one,
        expires: expiry_after(now, expiries.targets)?,
        targets: HashMap::new(),
        delegations: Some(Delegations::new()),
        _extra: HashMap::new(),
    };
    let root_bytes = root_keys.sign_to_file(root, ring)?;
    let targets_bytes = targets_keys.sign_to_file(&targets, ring)?;
    let mut snapshot = Snapshot::new(
        SPEC_VERSION.to_owned(),
        one,
        expiry_after(now, expiries.snapshot)?,
    );
    snapshot
        .meta
        .insert("targets.json".into(), metafile(one, &targets_bytes));
    let snapshot_bytes = snapshot_keys.sign_to_file(&snapshot, ring)?;
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.to_owned(),
        one,
        expiry_after(now, expiries.timestamp)?,
    );
    timestamp
        .meta
        .insert("snapshot.json".into(), metafile(one, &snapshot_bytes));
    Ok(Publication {
        metadata: vec![
            ("1.root.json".into(), root_bytes),
            ("1.targets.json".into(), targets_bytes),
            ("1.snapshot.json".into(), snapshot_bytes),
        ],
        timestamp: Some(timestamp_keys.sign_to_file(&timestamp, ring)?),
    })
}

/// One firmware image to publish.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    /// The image file (streamed, hashed once).
    pub image: PathBuf,
    /// Semantic version.
    pub version: String,
    /// Compatible hardware ids (at least one).
    pub hardware: Vec<String>,
    /// Channel.
    pub channel: String,
    /// Rollout share in percent (100 = everyone).
    pub rollout_percent: u8,
    /// Target name; `None` picks [`default_target_name`].
    pub name: Option<String>,
}

/// Options of [`add`].
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// The targets role to add into: `None` is top-level `targets`, else a delegated role's name.
    pub role: Option<String>,
    /// Lifetimes for the re-signed metadata.
    pub expiries: Expiries,
    /// Stage instead of publishing: write the target files (invisible to clients until signed
    /// metadata names them) and the role's next version, signed with the ring's keys of the role
    /// (maybe fewer than its threshold), to this new file, for `role sign` and `role publish`
    /// (`crate::staged`). Snapshot and timestamp keys are not needed.
    pub stage: Option<PathBuf>,
    /// Publish a version not above the newest already published for its hardware id and channel
    /// (a hotfix branch); refused otherwise ([`Error::LowerVersion`]).
    pub allow_lower: bool,
    /// The releases' rollout waves, counted from the moment of publication. `None` (the library's
    /// default) and [`WavesSpec::Now`] write no plan: everyone at once, readable by devices older than
    /// waves. `repo-tool add` passes [`WavesSpec::Default`] unless told otherwise.
    pub waves: Option<WavesSpec>,
}

/// What [`add`] published.
#[derive(Debug, Clone)]
pub struct AddReport {
    /// The role the targets went into.
    pub role: String,
    /// (target name, sha256 hex, length) of each new target.
    pub added: Vec<(String, String, u64)>,
    /// The new version of the role's metadata.
    pub role_version: u64,
    /// With [`AddOptions::stage`]: the staged role's signatures so far (nothing was published).
    pub staged: Option<RoleSignatures>,
    /// Published anyway, but worth a look: each names the image (an empty image, ...).
    pub warnings: Vec<String>,
}

/// The default target name of a release: `<first-hardware-id>/<channel>/<basename>` when the image's
/// file name already carries the version (always so in a bulk add: `<name>-<semver>[.<ext>]`, see
/// [`version_from_file_name`]), else `<first-hardware-id>/<channel>/<version>/<basename>`.
///
/// "Carries the version" means the version appears as a whole token: not preceded by a letter, digit
/// or `.`, and followed by the end, a `.` that starts a non-numeric extension, or a character that
/// cannot continue a version (so `fw-1.0.0-rc.1.bin` does not carry `1.0.0`, and `fw-11.0.0.bin` does
/// not carry `1.0.0`). Leaving out the version directory saves a directory (an inode) per release:
/// half the file system work of a 10,000-target bulk add. Names stay unique per hardware id and
/// channel: a version is published once per (hardware, channel).
///
/// Delegation-friendly: a product line (hardware id) or a channel is delegated with path patterns
/// such as `gw-a/*/*` and `gw-a/*/*/*` (both layouts), or `*/beta/*` and `*/beta/*/*` (`*` never
/// crosses `/` in TUF path patterns).
pub fn default_target_name(hardware: &str, channel: &str, version: &str, image: &Path) -> Result<String> {
    let base = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| invalid(format!("image {}", image.display()), "has no file name"))?;
    if name_carries_version(&base, version) {
        Ok(format!("{hardware}/{channel}/{base}"))
    } else {
        Ok(format!("{hardware}/{channel}/{version}/{base}"))
    }
}

/// Whether `version` occurs in file name `base` as a whole token (see [`default_target_name`]).
fn name_carries_version(base: &str, version: &str) -> bool {
    if version.is_empty() {
        return false;
    }
    base.match_indices(version).any(|(at, _)| {
        let before = base.get(..at).and_then(|b| b.chars().next_back());
        let after = base.get(at + version.len()..).unwrap_or_default();
        let starts_token = before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '.'));
        let mut rest = after.chars();
        let ends_token = match rest.next() {
            None => true,
            Some('.') => rest.next().is_some_and(|c| !c.is_ascii_digit()),
            Some(c) => !(c.is_ascii_alphanumeric() || c == '-' || c == '+'),
        };
        starts_token && ends_token
    })
}

/// A release's OTA custom metadata, validated against the `ota-release` contract.
pub(crate) fn build_release(spec: &ReleaseSpec, waves: Option<&RolloutPlan>) -> Result<Release> {
    let err = |source| Error::Release {
        image: spec.image.clone(),
        source,
    };
    let release = Release {
        version: ota_release::parse_version(&spec.version).map_err(err)?,
        hardware: spec
            .hardware
            .iter()
            .map(HardwareId::new)
            .collect::<std::result::Result<_, _>>()
            .map_err(err)?,
        channel: Channel::new(spec.channel.as_str()).map_err(err)?,
        rollout: Rollout {
            percent: spec.rollout_percent,
        },
        waves: waves.cloned(),
        deltas: Vec::new(),
    };
    release.validate().map_err(err)?;
    Ok(release)
}

/// A (hardware, channel, version) key: `\n` never occurs in a valid hardware id, channel or version, so
/// distinct triples give distinct keys.
fn release_key(out: &mut String, hardware: &str, channel: &str, version: &str) {
    out.clear();
    for (i, part) in [hardware, channel, version].into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(part);
    }
}

/// Refuses the first release (in the order given) of `new` (release key → (index, target name)) whose
/// (hardware, channel, version) is already published in any role. One pass over every target, reading
/// the few fields it needs straight from the JSON values (versions as written: semver's canonical text,
/// which `add` always writes), allocating nothing per target: a single add to a 10,000-target
/// repository stays fast.
fn refuse_published(state: &RepoState, new: &HashMap<String, (usize, String)>) -> Result<()> {
    let mut key = String::new();
    let mut first: Option<(usize, Error)> = None;
    for (_, t) in state.all_roles() {
        for (name, target) in &t.targets {
            let Some(ota) = target.custom.get(ota_release::CUSTOM_KEY) else {
                continue;
            };
            if ota.get("kind").and_then(|k| k.as_str()) != Some("release") {
                continue;
            }
            let field = |k: &str| ota.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            let (channel, version) = (field("channel"), field("version"));
            let hardware = ota.get("hardware").and_then(|h| h.as_array());
            for h in hardware.into_iter().flatten().filter_map(|h| h.as_str()) {
                release_key(&mut key, h, channel, version);
                let Some((index, _)) = new.get(&key) else {
                    continue;
                };
                if first.as_ref().is_none_or(|(i, _)| index < i) {
                    let err = Error::DuplicateVersion {
                        version: version.to_owned(),
                        hardware: h.to_owned(),
                        channel: channel.to_owned(),
                        existing: name.raw().to_owned(),
                    };
                    first = Some((*index, err));
                }
            }
        }
    }
    match first {
        Some((_, err)) => Err(err),
        None => Ok(()),
    }
}

/// The `ota` object of a target, when present and valid (as `OtaTarget::from_custom` reads it,
/// without copying the target's whole `custom` map into a new JSON value first).
pub(crate) fn ota_custom(target: &Target) -> Option<OtaTarget> {
    use serde::Deserialize;
    let ota = OtaTarget::deserialize(target.custom.get(ota_release::CUSTOM_KEY)?).ok()?;
    match &ota {
        OtaTarget::Release(r) => r.validate().ok().map(|()| ota),
        OtaTarget::Delta(_) => Some(ota),
    }
}

/// A prepared target: name, TUF entry, staged file.
pub(crate) struct NewTarget {
    pub name: String,
    pub target: Target,
    pub staged: crate::stage::StagedFile,
}

/// Publishes firmware images as targets of one role and re-signs that role, snapshot and timestamp.
///
/// Refused before anything is written: a malformed version or name, a version already published for
/// one of the hardware ids on that channel (in any role), an existing target name, a target outside
/// the role's delegated paths, a version not above the newest published for its hardware id and
/// channel (unless [`AddOptions::allow_lower`]), an unreadable image, or keys that do not meet a
/// threshold. An empty image is published with a warning ([`AddReport::warnings`]).
pub fn add(repo: &Path, releases: &[ReleaseSpec], opts: &AddOptions, ring: &KeyRing) -> Result<AddReport> {
    add_with(repo, releases, opts, ring, |_, _, _| Ok(Vec::new()))
}

/// [`add`] with a hook that may contribute extra targets per release (the seam for deltas, see
/// [`crate::deltas`]). The hook gets the state, the release and its staged image, and returns
/// extra targets to publish in the same role.
pub(crate) fn add_with<F>(
    repo: &Path,
    releases: &[ReleaseSpec],
    opts: &AddOptions,
    ring: &KeyRing,
    mut extra: F,
) -> Result<AddReport>
where
    F: FnMut(&RepoState, &mut NewTarget, &mut dyn RepoStore) -> Result<Vec<NewTarget>>,
{
    if releases.is_empty() {
        return Err(invalid("add", "no image given"));
    }
    if let Some(out) = &opts.stage {
        Stage::refuse_existing(out)?;
    }
    let _lock = RepoLock::acquire(repo, "add")?;
    let mut state = RepoState::load(repo)?;
    let role = opts.role.clone().unwrap_or_else(|| TARGETS_ROLE.to_owned());
    let role_keys = state.targets_role_keys(&role)?;
    if opts.stage.is_some() {
        crate::hash_bins::refuse_resign(&state, &role, "`add --stage` into hash bins is not supported")?;
    }
    if opts.stage.is_none() {
        // Into hash bins, the bins' keys sign (all bins share them), not the delegator's.
        let signer = state.placement(&role, "");
        state.targets_role_keys(&signer)?.check_ring_or_stage(ring)?;
        check_online_keys(&state, ring)?;
    }
    let plan = match &opts.waves {
        Some(spec) => spec.release_plan(now()?.as_second())?,
        None => None,
    };
    let prepared = check_releases(&state, &role, releases, plan.as_ref())?;
    if !opts.allow_lower {
        let new: Vec<&Release> = prepared.iter().map(|(_, r, _)| r).collect();
        crate::order::refuse_lower(&state, &new)?;
    }
    let mut warnings = Vec::new();

    // Every check passed: now read each image once, writing it under its final name.
    let mut store = DirStore::new(repo);
    let mut new_targets = Vec::with_capacity(prepared.len());
    for (spec, release, name) in prepared {
        let staged = store.put_target_file(&name, &spec.image)?;
        if staged.length == 0 {
            warnings.push(format!(
                "image {} is empty (0 bytes); published as {name} anyway",
                spec.image.display()
            ));
        }
        let target = tuf_target(&staged, &OtaTarget::Release(release))?;
        let mut nt = NewTarget { name, target, staged };
        let more = extra(&state, &mut nt, &mut store)?;
        new_targets.push(nt);
        new_targets.extend(more);
    }
    if state.succinct.contains_key(&role) {
        let report = publish_into_bins(&mut state, &role, new_targets, opts, ring, &mut store)?;
        return Ok(AddReport { warnings, ..report });
    }
    let mut targets = state.take_role_targets(&role)?;
    targets.version = bump(targets.version)?;
    targets.expires = expiry_after(now()?, opts.expiries.targets)?;
    let files: Vec<PathBuf> = new_targets.iter().map(|t| t.staged.path.clone()).collect();
    let added = insert_targets(&mut targets, new_targets)?;
    let role_version = targets.version.get();
    let staged = match &opts.stage {
        Some(out) => {
            // Recorded first: `gc` must keep these files until the stage is published.
            let record = crate::gc::record_stage(repo, &role, role_version, out, &files)?;
            match stage_targets(&state, &role, targets, out, ring, &mut store) {
                Ok(signatures) => Some(signatures),
                Err(e) => {
                    let _ = fs::remove_file(record);
                    return Err(e);
                }
            }
        }
        None => {
            let role_file = RoleFile::sign(&role, &targets, &role_keys, ring)?;
            publish_roles(&state, vec![role_file], &opts.expiries, ring, &mut store)?;
            None
        }
    };
    Ok(AddReport {
        role,
        added,
        role_version,
        staged,
        warnings,
    })
}

/// `add` into a role that delegates to hash bins: each target into its bin, each changed bin re-signed
/// (only those), then snapshot and timestamp. Returns the bin's name and new version when one bin
/// changed, else `<role> (N hash bins)` and 0.
fn publish_into_bins(
    state: &mut RepoState,
    role: &str,
    new_targets: Vec<NewTarget>,
    opts: &AddOptions,
    ring: &KeyRing,
    store: &mut dyn RepoStore,
) -> Result<AddReport> {
    if opts.stage.is_some() {
        return Err(invalid(
            "add --stage",
            format!("role {role:?} delegates to hash bins: publish instead"),
        ));
    }
    let mut by_bin: BTreeMap<String, Vec<NewTarget>> = BTreeMap::new();
    for nt in new_targets {
        by_bin
            .entry(state.placement(role, &nt.name))
            .or_default()
            .push(nt);
    }
    let expires = expiry_after(now()?, opts.expiries.targets)?;
    let (mut files, mut added) = (Vec::with_capacity(by_bin.len()), Vec::new());
    let mut last = (String::new(), 0);
    for (bin, targets_of_bin) in by_bin {
        let keys = state.targets_role_keys(&bin)?;
        keys.check_ring(ring)?;
        let mut targets = state.take_role_targets(&bin)?;
        targets.version = bump(targets.version)?;
        targets.expires = expires;
        added.extend(insert_targets(&mut targets, targets_of_bin)?);
        files.push(RoleFile::sign(&bin, &targets, &keys, ring)?);
        last = (bin, targets.version.get());
    }
    let (role, role_version) = match files.len() {
        1 => last,
        n => (format!("{role} ({n} hash bins)"), 0),
    };
    publish_roles(state, files, &opts.expiries, ring, store)?;
    Ok(AddReport {
        role,
        added,
        role_version,
        staged: None,
        warnings: Vec::new(),
    })
}

/// Refuses, before any work, a ring without the snapshot and timestamp keys a publish needs.
pub(crate) fn check_online_keys(state: &RepoState, ring: &KeyRing) -> Result<()> {
    let root = &state.root()?.signed.signed;
    top_role_keys(root, RoleType::Snapshot)?.check_ring(ring)?;
    top_role_keys(root, RoleType::Timestamp)?.check_ring(ring)
}

/// Checks every release before anything is written: a valid release, a valid target name that
/// `role` may hold and that is new, and a (hardware, channel, version) published nowhere yet nor
/// twice in this add. Returns each with its release fields and target name.
fn check_releases<'r>(
    state: &RepoState,
    role: &str,
    releases: &'r [ReleaseSpec],
    plan: Option<&RolloutPlan>,
) -> Result<Vec<(&'r ReleaseSpec, Release, String)>> {
    // (hardware, channel, version) of each new release → (its index, its target name).
    let mut new_versions: HashMap<String, (usize, String)> = HashMap::new();
    let mut key = String::new();
    let mut prepared = Vec::with_capacity(releases.len());
    let mut names = BTreeSet::new();
    for (index, spec) in releases.iter().enumerate() {
        let release = build_release(spec, plan)?;
        let name = release_target_name(spec, &release)?;
        check_target_name(&name)?;
        // Into a role that delegates to hash bins: the target's bin (crate::hash_bins).
        let dest = state.placement(role, &name);
        state.check_delegated(&dest, &name)?;
        let version = release.version.to_string();
        for h in &release.hardware {
            release_key(&mut key, h.as_str(), release.channel.as_str(), &version);
            if let Some((_, existing)) = new_versions.get(&key) {
                return Err(Error::DuplicateVersion {
                    version,
                    hardware: h.to_string(),
                    channel: release.channel.to_string(),
                    existing: existing.clone(),
                });
            }
            new_versions.insert(key.clone(), (index, name.clone()));
        }
        let tname = TargetName::new(name.as_str())
            .map_err(|e| invalid(format!("target name {name:?}"), e.to_string()))?;
        if state.role_targets(&dest)?.targets.contains_key(&tname) || !names.insert(name.clone()) {
            return Err(Error::DuplicateTarget { name, role: dest });
        }
        prepared.push((spec, release, name));
    }
    refuse_published(state, &new_versions)?;
    Ok(prepared)
}

/// The target name of a release: the one given, else [`default_target_name`].
fn release_target_name(spec: &ReleaseSpec, release: &Release) -> Result<String> {
    if let Some(n) = &spec.name {
        return Ok(n.clone());
    }
    let first = release
        .hardware
        .first()
        .ok_or_else(|| invalid("hardware", "at least one hardware id is required"))?;
    default_target_name(
        first.as_str(),
        release.channel.as_str(),
        &spec.version,
        &spec.image,
    )
}

/// Adds the new targets to a role's metadata; returns (name, sha256 hex, length) of each.
fn insert_targets(targets: &mut Targets, new_targets: Vec<NewTarget>) -> Result<Vec<(String, String, u64)>> {
    let mut added = Vec::with_capacity(new_targets.len());
    for nt in new_targets {
        let tname = TargetName::new(nt.name.as_str()).map_err(|e| invalid("target name", e.to_string()))?;
        added.push((nt.name, hex::encode(nt.staged.sha256), nt.staged.length));
        targets.targets.insert(tname, nt.target);
    }
    Ok(added)
}

/// `add --stage`: the target files are made durable, then the stage file that names them is
/// written; the files stay only if it was.
fn stage_targets(
    state: &RepoState,
    role: &str,
    targets: Targets,
    out: &Path,
    ring: &KeyRing,
    store: &mut dyn RepoStore,
) -> Result<RoleSignatures> {
    let trust = state.role_trust(role)?;
    store.flush()?;
    let stage = Stage::new(vec![StagedRole::targets(role, trust, targets)]);
    let counts = stage.clone().create(out, ring)?;
    store.keep();
    stage
        .status(&counts)
        .into_iter()
        .next()
        .ok_or_else(|| Error::Tough("a stage of one role reports no role".into()))
}

/// A targets role's next metadata file, signed.
pub(crate) struct RoleFile {
    role: String,
    version: NonZeroU64,
    bytes: Vec<u8>,
}

impl RoleFile {
    /// Signs `targets` as role `role` with the ring's keys of `keys`.
    pub(crate) fn sign(role: &str, targets: &Targets, keys: &RoleKeySet, ring: &KeyRing) -> Result<RoleFile> {
        Ok(RoleFile {
            role: role.to_owned(),
            version: targets.version,
            bytes: keys.sign_targets_to_file(targets, ring)?,
        })
    }

    /// A role file already signed (the hash-bin delegator, written in its own canonical form).
    pub(crate) fn from_bytes(role: &str, version: NonZeroU64, bytes: Vec<u8>) -> RoleFile {
        RoleFile {
            role: role.to_owned(),
            version,
            bytes,
        }
    }
}

/// [`publish_roles`] for other modules of the editor (hash bins).
pub(crate) fn publish_role_files(
    state: &RepoState,
    files: Vec<RoleFile>,
    expiries: &Expiries,
    ring: &KeyRing,
    store: &mut dyn RepoStore,
) -> Result<()> {
    publish_roles(state, files, expiries, ring, store)
}

/// Publishes new targets role files (in write order) with new snapshot and timestamp.
fn publish_roles(
    state: &RepoState,
    files: Vec<RoleFile>,
    expiries: &Expiries,
    ring: &KeyRing,
    store: &mut dyn RepoStore,
) -> Result<()> {
    let root = &state.root()?.signed.signed;
    let changed: Vec<_> = files
        .iter()
        .map(|f| (f.role.clone(), f.version, f.bytes.clone()))
        .collect();
    let (snap_name, snap_bytes, ts) = resign_snapshot_and_timestamp(state, root, &changed, expiries, ring)?;
    let mut metadata: Vec<_> = files
        .into_iter()
        .map(|f| (format!("{}.{}.json", f.version, f.role), f.bytes))
        .collect();
    metadata.push((snap_name, snap_bytes));
    Publication {
        metadata,
        timestamp: Some(ts),
    }
    .commit(store)
}

/// A TUF target entry for a staged file with this OTA custom object.
pub(crate) fn tuf_target(staged: &crate::stage::StagedFile, ota: &OtaTarget) -> Result<Target> {
    let custom = match ota.to_custom() {
        serde_json::Value::Object(m) => m.into_iter().collect(),
        _ => return Err(Error::Tough("OTA custom metadata is not an object".into())),
    };
    Ok(Target {
        length: staged.length,
        hashes: Hashes {
            sha256: Decoded::from(staged.sha256.to_vec()),
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    })
}

/// Finds the semantic version in a bulk file name `<stem>-<semver>[.<ext>]` (for example
/// `gateway-2.1.0.img` or `fw-1.0.0-rc.1.bin`): the first `-` after which the rest, with or without its
/// last extension, parses as semver.
pub fn version_from_file_name(file_name: &str) -> Option<String> {
    for (i, _) in file_name.match_indices('-') {
        let rest = file_name.get(i + 1..)?;
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        if let Some((without_ext, _)) = rest.rsplit_once('.') {
            if ota_release::parse_version(without_ext).is_ok() {
                return Some(without_ext.to_owned());
            }
        }
        if ota_release::parse_version(rest).is_ok() {
            return Some(rest.to_owned());
        }
    }
    None
}

/// Release specs for every regular file directly in `dir`, named `<stem>-<semver>[.<ext>]`, all for the
/// same hardware ids, channel and rollout. Files not following the convention are refused (listed).
pub fn releases_in_dir(
    dir: &Path,
    hardware: &[String],
    channel: &str,
    rollout_percent: u8,
) -> Result<Vec<ReleaseSpec>> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let entries = fs::read_dir(dir).map_err(crate::error::io("read image directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(crate::error::io("read image directory", dir))?;
        let path = entry.path();
        // The directory entry's type costs no system call; only symlinks are followed with a stat.
        let is_file = match entry.file_type() {
            Ok(t) if t.is_symlink() => path.is_file(),
            Ok(t) => t.is_file(),
            Err(e) => return Err(crate::error::io("read image directory", &path)(e)),
        };
        if !is_file {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match version_from_file_name(&name) {
            Some(version) => out.push(ReleaseSpec {
                image: path,
                version,
                hardware: hardware.to_vec(),
                channel: channel.to_owned(),
                rollout_percent,
                name: None,
            }),
            None => bad.push(name),
        }
    }
    if !bad.is_empty() {
        bad.sort();
        bad.truncate(5);
        return Err(invalid(
            format!("image directory {}", dir.display()),
            format!(
                "file names must be <name>-<semver>[.<ext>]; these are not: {}",
                bad.join(", ")
            ),
        ));
    }
    if out.is_empty() {
        return Err(invalid(
            format!("image directory {}", dir.display()),
            "holds no files",
        ));
    }
    out.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(out)
}

/// Options of [`refresh`].
#[derive(Debug, Clone, Default)]
pub struct RefreshOptions {
    /// Re-sign snapshot too (new version and expiry), not only timestamp.
    pub snapshot: bool,
    /// Lifetimes.
    pub expiries: Expiries,
}

/// Re-signs timestamp (and snapshot when asked) with a new expiry: the cron job that keeps a repository
/// fresh. Fails before writing when a needed key is missing.
pub fn refresh(repo: &Path, opts: &RefreshOptions, ring: &KeyRing) -> Result<()> {
    let _lock = RepoLock::acquire(repo, "refresh")?;
    let state = RepoState::load(repo)?;
    let root = state.root()?.signed.signed.clone();
    let ts_keys = top_role_keys(&root, RoleType::Timestamp)?;
    ts_keys.check_ring(ring)?;
    let mut publication = Publication::default();
    if opts.snapshot {
        let (name, bytes, ts) = resign_snapshot_and_timestamp(&state, &root, &[], &opts.expiries, ring)?;
        publication.metadata.push((name, bytes));
        publication.timestamp = Some(ts);
    } else {
        let snap = &state.snapshot;
        publication.timestamp = Some(crate::editor::sign_timestamp(
            &state.timestamp.signed.signed,
            snap.signed.signed.version,
            &snap.bytes,
            &opts.expiries,
            &ts_keys,
            ring,
        )?);
    }
    publication.commit(&mut DirStore::new(repo))
}

/// A delegation from top-level targets to a new role (TUF 4.5 delegations).
#[derive(Debug, Clone)]
pub struct DelegateSpec {
    /// The new role's name (also its metadata file name).
    pub role: String,
    /// Path patterns the role is trusted for (`*` and `?` within one path segment).
    pub paths: Vec<String>,
    /// The role's keys and threshold.
    pub keys: RoleSpec,
    /// Whether the search stops at this role for matching targets.
    pub terminating: bool,
}

/// Delegates path patterns to a new role: top-level targets gains the delegation (signed by the targets
/// keys), the role gets an empty `1.<role>.json` (signed by its own keys), then snapshot and timestamp.
pub fn delegate(repo: &Path, spec: &DelegateSpec, expiries: &Expiries, ring: &KeyRing) -> Result<()> {
    delegate_from(repo, TARGETS_ROLE, spec, expiries, ring)
}

/// Delegates path patterns from role `from` (`targets` or a delegated role at any depth, TUF 4.5) to a
/// new role: `from` gains the delegation and a new version (signed by `from`'s keys, which the ring
/// must hold), the new role gets an empty `1.<role>.json` (signed by its own keys), snapshot lists
/// both, timestamp last.
///
/// Refused before anything is written: an unknown `from`, a role name already used anywhere in the
/// tree, and a path pattern of the new role that the delegations leading to `from` do not cover (a
/// client would never look for such a target in the new role).
pub fn delegate_from(
    repo: &Path,
    from: &str,
    spec: &DelegateSpec,
    expiries: &Expiries,
    ring: &KeyRing,
) -> Result<()> {
    delegate_with(repo, from, spec, expiries, ring, None, false).map(|_| ())
}

/// [`delegate`], with the new delegation listed first among top-level targets' delegations, so a
/// client's search (in delegation order, TUF 5.6.7.2) asks this role before any other: the
/// rollout-control role (`crate::rollout`).
pub(crate) fn delegate_first(
    repo: &Path,
    spec: &DelegateSpec,
    expiries: &Expiries,
    ring: &KeyRing,
) -> Result<()> {
    delegate_with(repo, TARGETS_ROLE, spec, expiries, ring, None, true).map(|_| ())
}

/// [`delegate_from`], staged instead of published (`crate::staged`): `from`'s next version (with
/// the delegation) and the new role's first version, each signed with the ring's keys of that role
/// (maybe fewer than its threshold), go to the new file `out` for `role sign` and `role publish`.
/// Snapshot and timestamp keys are not needed. Returns each staged role's signatures so far.
pub fn delegate_stage(
    repo: &Path,
    from: &str,
    spec: &DelegateSpec,
    expiries: &Expiries,
    ring: &KeyRing,
    out: &Path,
) -> Result<Vec<RoleSignatures>> {
    delegate_with(repo, from, spec, expiries, ring, Some(out), false)
}

fn delegate_with(
    repo: &Path,
    from: &str,
    spec: &DelegateSpec,
    expiries: &Expiries,
    ring: &KeyRing,
    stage: Option<&Path>,
    first: bool,
) -> Result<Vec<RoleSignatures>> {
    check_delegate_spec(spec)?;
    if let Some(out) = stage {
        Stage::refuse_existing(out)?;
    }
    let _lock = RepoLock::acquire(repo, "delegate")?;
    let state = RepoState::load(repo)?;
    crate::hash_bins::refuse_resign(&state, from, "it cannot delegate further")?;
    check_delegation_fits(&state, from, spec)?;
    let parent_keys = state.targets_role_keys(from)?;
    if stage.is_none() {
        parent_keys.check_ring_or_stage(ring)?;
    }
    let mut parent = state.role_targets(from)?.clone();
    add_delegation(&mut parent, from, spec, first)?;
    let new_role_keys = crate::trust::delegated_role_keys(&parent, &spec.role)?;
    if stage.is_none() {
        new_role_keys.check_ring_or_stage(ring)?;
    }
    let now = now()?;
    parent.version = bump(parent.version)?;
    parent.expires = expiry_after(now, expiries.targets)?;
    let role_meta = Targets {
        spec_version: SPEC_VERSION.to_owned(),
        version: NonZeroU64::MIN,
        expires: expiry_after(now, expiries.targets)?,
        targets: HashMap::new(),
        delegations: None,
        _extra: HashMap::new(),
    };
    if let Some(out) = stage {
        let new_trust = parent
            .delegations
            .as_ref()
            .and_then(|d| RoleTrust::of_delegation(d, &spec.role))
            .ok_or_else(|| invalid(format!("role {:?}", spec.role), "lost its delegation"))?;
        let stage = Stage::new(vec![
            StagedRole::targets(from, state.role_trust(from)?, parent),
            StagedRole::targets(&spec.role, new_trust, role_meta),
        ]);
        let counts = stage.clone().create(out, ring)?;
        return Ok(stage.status(&counts));
    }
    // The new role's file first: every file is new until timestamp.json.
    let files = vec![
        RoleFile::sign(&spec.role, &role_meta, &new_role_keys, ring)?,
        RoleFile::sign(from, &parent, &parent_keys, ring)?,
    ];
    publish_roles(&state, files, expiries, ring, &mut DirStore::new(repo))?;
    Ok(Vec::new())
}

/// A valid role name and path patterns, at least one.
fn check_delegate_spec(spec: &DelegateSpec) -> Result<()> {
    check_delegated_role_name(&spec.role)?;
    if spec.paths.is_empty() {
        return Err(invalid("delegation paths", "give at least one path pattern"));
    }
    for p in &spec.paths {
        check_path_pattern(p)?;
    }
    Ok(())
}

/// Refuses an unknown `from`, a role name already used anywhere in the tree, and a path pattern the
/// delegations leading to `from` do not cover (a client would never look for such a target there).
fn check_delegation_fits(state: &RepoState, from: &str, spec: &DelegateSpec) -> Result<()> {
    if from != TARGETS_ROLE && !state.delegated.contains_key(from) {
        let known: Vec<&str> = state.delegated.keys().map(String::as_str).collect();
        return Err(invalid(
            format!("--from role {from:?}"),
            format!(
                "no such role to delegate from; the repository has targets{}{}",
                if known.is_empty() { "" } else { ", " },
                known.join(", ")
            ),
        ));
    }
    if let Some(parent) = state.parents.get(&spec.role) {
        return Err(invalid(
            format!("role {:?}", spec.role),
            format!("is already delegated (by {parent})"),
        ));
    }
    for entry in state.delegation_chain(from)? {
        let covering = delegated_patterns(entry)?;
        if let Some(p) = spec
            .paths
            .iter()
            .find(|p| !covering.iter().any(|c| pattern_covers(c, p)))
        {
            return Err(invalid(
                format!("path pattern {p:?} of role {:?}", spec.role),
                format!(
                    "is not inside role {}'s delegated paths ({}): a client would never look for \
                     such a target in {}",
                    entry.name,
                    covering.join(", "),
                    spec.role
                ),
            ));
        }
    }
    Ok(())
}

/// Adds the delegation to `spec.role` (its keys, threshold and paths) to `from`'s metadata.
fn add_delegation(parent: &mut Targets, from: &str, spec: &DelegateSpec, first: bool) -> Result<()> {
    let delegations = parent.delegations.get_or_insert_with(Delegations::new);
    if delegations.roles.iter().any(|r| r.name == spec.role) {
        return Err(invalid(
            format!("role {:?}", spec.role),
            format!("is already delegated (by {from})"),
        ));
    }
    let mut keys = HashMap::new();
    let rk = role_keys(&spec.role, &spec.keys, &mut keys)?;
    delegations.keys.extend(keys);
    let paths = spec
        .paths
        .iter()
        .map(|p| {
            PathPattern::new(p.as_str()).map_err(|e| invalid(format!("path pattern {p:?}"), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let role = DelegatedRole {
        name: spec.role.clone(),
        keyids: rk.keyids,
        threshold: rk.threshold,
        paths: PathSet::Paths(paths),
        terminating: spec.terminating,
        targets: None,
    };
    match first {
        true => delegations.roles.insert(0, role),
        false => delegations.roles.push(role),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_leave_out_the_version_directory_when_the_file_name_carries_the_version() {
        let name = |v: &str, f: &str| default_target_name("gw-a", "stable", v, Path::new(f)).unwrap();
        assert_eq!(name("2.1.0", "img/gw-2.1.0.img"), "gw-a/stable/gw-2.1.0.img");
        assert_eq!(
            name("1.0.0-rc.1", "fw-1.0.0-rc.1.bin"),
            "gw-a/stable/fw-1.0.0-rc.1.bin"
        );
        assert_eq!(name("3.0.0", "my-fw-3.0.0"), "gw-a/stable/my-fw-3.0.0");
        assert_eq!(
            name("1.0.0", "fw_1.0.0_signed.bin"),
            "gw-a/stable/fw_1.0.0_signed.bin"
        );
        // Not carried: no version, a longer version, another version that contains it.
        assert_eq!(name("1.2.3", "fw.bin"), "gw-a/stable/1.2.3/fw.bin");
        assert_eq!(
            name("1.0.0", "fw-1.0.0-rc.1.bin"),
            "gw-a/stable/1.0.0/fw-1.0.0-rc.1.bin"
        );
        assert_eq!(name("1.0.0", "fw-11.0.0.bin"), "gw-a/stable/1.0.0/fw-11.0.0.bin");
        assert_eq!(
            name("1.0.0", "fw-1.0.0.1.bin"),
            "gw-a/stable/1.0.0/fw-1.0.0.1.bin"
        );
        assert_eq!(
            name("1.0.0", "fw-1.0.0+b.bin"),
            "gw-a/stable/1.0.0/fw-1.0.0+b.bin"
        );
        // Every bulk file name carries the version found in it.
        for f in [
            "gw-2.1.0.img",
            "fw-1.0.0-rc.1.bin",
            "my-fw-3.0.0",
            "a-1.0.0+build.5.tar.gz",
        ] {
            let v = version_from_file_name(f).unwrap();
            assert_eq!(name(&v, f), format!("gw-a/stable/{f}"), "{f}");
        }
    }

    #[test]
    fn versions_are_found_in_bulk_file_names() {
        assert_eq!(version_from_file_name("gw-2.1.0.img").as_deref(), Some("2.1.0"));
        assert_eq!(
            version_from_file_name("fw-1.0.0-rc.1.bin").as_deref(),
            Some("1.0.0-rc.1")
        );
        assert_eq!(version_from_file_name("my-fw-3.0.0").as_deref(), Some("3.0.0"));
        assert_eq!(version_from_file_name("fw.bin"), None);
        assert_eq!(version_from_file_name("fw-x.bin"), None);
    }
}
