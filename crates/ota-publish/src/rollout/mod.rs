//! Staged rollouts on the publisher's side: the rollout-control role and the file it signs.
//!
//! [`rollout_init`] delegates `rollouts/*/*.json` (and nothing else) from top-level targets to the role
//! `rollout-control`, with its own online key, listed first and terminating: signed once with the
//! offline targets key. After that, [`set_state`] (halt, resume, pull), [`set_plan`] (a replacement
//! plan: speed a rollout up or slow it down) and [`add_drill`] rewrite one control file
//! (`rollouts/<hardware>/<channel>.json`, the `ota-release` contract) and sign it with only the
//! rollout-control, snapshot and timestamp keys: never the targets or root key. Each is one atomic
//! publish (`crate::editor::Publication`, `timestamp.json` last) under the repository's lock.
//! [`status`] says where every release stands, and where one device stands, through the same
//! `ota_release::standing` the device calls.
//!
//! What the control key can do is bounded by its delegation: it can only list `rollouts/*/*.json`, so
//! a client never takes a firmware image from it (`verify` reports one it lists, ngclient and the
//! device ignore it). What it cannot do is in the README ("Staged rollouts").

mod spec;
mod status;

use std::path::Path;

use ota_release::{
    control_target_path, Channel, FieldDrill, HardwareId, Release, ReleaseControl, RolloutControl,
    RolloutState, Version, CONTROL_PATH_PATTERN, CONTROL_ROLE, MAX_CONTROL_BYTES,
};
use tough::schema::Target;
use tough::TargetName;

use crate::error::{invalid, Error, Result};
use crate::keys::KeyRing;
use crate::loader::RepoState;
use crate::lock::RepoLock;
use crate::meta::{bump, expiry_after, now, Expiries};
use crate::publish::{check_online_keys, ota_custom, DelegateSpec, RoleFile, RoleSpec};
use crate::stage::target_file_path;
use crate::store::{DirStore, RepoStore};

pub use spec::{parse_duration_secs, parse_share_bp, share_text, WavesSpec};
pub use status::{
    status, ChannelRollout, DeviceSeed, DeviceStanding, PlanSource, ReleaseRollout, RolloutStatus, WaveStatus,
};

/// Creates the rollout-control delegation: top-level targets (signed with the targets keys, which
/// the ring must hold, with the snapshot and timestamp keys) delegates [`CONTROL_PATH_PATTERN`] to
/// [`CONTROL_ROLE`] with `keys`, terminating and listed first; the role's empty first version is
/// signed with its own keys. Refused when the role exists already.
pub fn rollout_init(repo: &Path, keys: &RoleSpec, expiries: &Expiries, ring: &KeyRing) -> Result<()> {
    let spec = DelegateSpec {
        role: CONTROL_ROLE.to_owned(),
        paths: vec![CONTROL_PATH_PATTERN.to_owned()],
        keys: keys.clone(),
        terminating: true,
    };
    crate::publish::delegate_first(repo, &spec, expiries, ring)
}

/// One release of one hardware id and channel, as a rollout command names it.
#[derive(Debug, Clone)]
pub struct ReleaseRef {
    /// Hardware id.
    pub hardware: String,
    /// Channel.
    pub channel: String,
    /// The release's version.
    pub version: String,
}

/// What a rollout command published.
#[derive(Debug, Clone)]
pub struct ControlReport {
    /// The control file's target path.
    pub path: String,
    /// The new version of `rollout-control.json`.
    pub role_version: u64,
    /// The control file as published.
    pub control: RolloutControl,
    /// Published, but worth a look (a pull that leaves no release to go back to).
    pub warnings: Vec<String>,
}

/// Sets a release's state (halt, resume, pull) with `reason`, `since` now; keeps its replacement plan.
/// Needs only the rollout-control, snapshot and timestamp keys. Refuses a version the repository
/// does not offer for that hardware id and channel.
pub fn set_state(
    repo: &Path,
    release: &ReleaseRef,
    state: RolloutState,
    reason: &str,
    expiries: &Expiries,
    ring: &KeyRing,
) -> Result<ControlReport> {
    edit_release(repo, release, expiries, ring, |edit, version| {
        let since_unix = edit.now_unix;
        let waves = edit.control.release(&version).and_then(|e| e.waves.clone());
        if state == RolloutState::Pulled && !edit.has_fallback(&version) {
            edit.warnings.push(format!(
                "no release older than {version} is left un-pulled for {}/{}: devices running it have \
                 no release to go back to",
                release.hardware, release.channel
            ));
        }
        let entry = ReleaseControl {
            state,
            since_unix,
            reason: reason.to_owned(),
            waves,
        };
        edit.control.releases.insert(version, entry);
        Ok(())
    })
}

/// Replaces a release's plan with `waves`, counted from now (speed a rollout up or slow it down). The
/// release's state is kept: a halted or pulled release stays so until `resume`.
pub fn set_plan(
    repo: &Path,
    release: &ReleaseRef,
    waves: &WavesSpec,
    expiries: &Expiries,
    ring: &KeyRing,
) -> Result<ControlReport> {
    edit_release(repo, release, expiries, ring, |edit, version| {
        let plan = waves.plan(edit.now_unix)?;
        let now_unix = edit.now_unix;
        let entry = edit
            .control
            .releases
            .entry(version)
            .or_insert_with(|| ReleaseControl {
                state: RolloutState::Active,
                since_unix: now_unix,
                reason: String::new(),
                waves: None,
            });
        entry.waves = Some(plan);
        Ok(())
    })
}

/// Adds a field drill (replacing one of the same id); drills already over are dropped. Its release
/// must be offered for that hardware id and channel, and it must end in the future.
pub fn add_drill(
    repo: &Path,
    hardware: &str,
    channel: &str,
    drill: FieldDrill,
    expiries: &Expiries,
    ring: &KeyRing,
) -> Result<ControlReport> {
    edit_control(repo, hardware, channel, expiries, ring, |edit| {
        edit.offered_version(&drill.release.to_string())?;
        if drill.until_unix <= edit.now_unix {
            return Err(invalid(
                format!("drill {}", drill.id),
                "its end (--until) is not in the future",
            ));
        }
        let now_unix = edit.now_unix;
        edit.control
            .drills
            .retain(|d| d.id != drill.id && d.until_unix > now_unix);
        edit.control.drills.push(drill);
        Ok(())
    })
}

/// A control file being edited, with what the edit may check against.
struct ControlEdit {
    hardware: HardwareId,
    channel: Channel,
    /// The releases the repository offers for this hardware id and channel.
    offered: Vec<Release>,
    control: RolloutControl,
    now_unix: i64,
    warnings: Vec<String>,
}

impl ControlEdit {
    /// The version, if the repository offers it for this hardware id and channel.
    fn offered_version(&self, text: &str) -> Result<Version> {
        let version = ota_release::parse_version(text)
            .map_err(|e| invalid(format!("version {text:?}"), e.to_string()))?;
        if self.offered.iter().any(|r| r.version == version) {
            return Ok(version);
        }
        let mut have: Vec<String> = self.offered.iter().map(|r| r.version.to_string()).collect();
        have.sort();
        Err(invalid(
            format!("version {version}"),
            format!(
                "the repository offers no release {version} for hardware {} on channel {} (it offers: {})",
                self.hardware,
                self.channel,
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ),
        ))
    }

    /// Whether an older release than `version` is offered and not pulled.
    fn has_fallback(&self, version: &Version) -> bool {
        self.offered
            .iter()
            .any(|r| &r.version < version && !self.control.is_pulled(&r.version))
    }
}

/// [`edit_control`] for one release the repository offers: `change` gets the edit and its version.
fn edit_release(
    repo: &Path,
    release: &ReleaseRef,
    expiries: &Expiries,
    ring: &KeyRing,
    change: impl FnOnce(&mut ControlEdit, Version) -> Result<()>,
) -> Result<ControlReport> {
    edit_control(
        repo,
        &release.hardware,
        &release.channel,
        expiries,
        ring,
        |edit| {
            let version = edit.offered_version(&release.version)?;
            change(edit, version)
        },
    )
}

/// Loads the repository and the current control file, lets `change` edit it, then publishes the new
/// file, `rollout-control` metadata, snapshot and timestamp. Any failure leaves the repository as it
/// was. The superseded control file is removed after the publish (a client holding the previous
/// metadata gets a 404 and reads the new file at its next check).
fn edit_control(
    repo: &Path,
    hardware: &str,
    channel: &str,
    expiries: &Expiries,
    ring: &KeyRing,
    change: impl FnOnce(&mut ControlEdit) -> Result<()>,
) -> Result<ControlReport> {
    let hardware = HardwareId::new(hardware).map_err(|e| invalid("--hardware", e.to_string()))?;
    let channel = Channel::new(channel).map_err(|e| invalid("--channel", e.to_string()))?;
    let path = control_target_path(&hardware, &channel);
    let _lock = RepoLock::acquire(repo, "rollout")?;
    let mut state = RepoState::load(repo)?;
    let keys = control_role_keys(&state)?;
    keys.check_ring(ring)?;
    check_online_keys(&state, ring)?;
    let old = read_control(repo, &state, &hardware, &channel)?;
    let mut edit = ControlEdit {
        offered: offered_releases(&state, &hardware, &channel),
        control: old.as_ref().map_or_else(
            || RolloutControl::new(hardware.clone(), channel.clone()),
            |(c, _)| c.clone(),
        ),
        now_unix: now()?.as_second(),
        warnings: Vec::new(),
        hardware,
        channel,
    };
    change(&mut edit)?;
    let bytes = checked_bytes(&edit.control, &path)?;
    let mut store = DirStore::new(repo);
    let stored = store.put_target_bytes(&path, &bytes)?;
    let mut targets = state.take_role_targets(CONTROL_ROLE)?;
    targets.version = bump(targets.version)?;
    targets.expires = expiry_after(now()?, expiries.targets)?;
    let name = TargetName::new(path.as_str()).map_err(|e| invalid("control path", e.to_string()))?;
    targets.targets.insert(name, plain_target(&stored));
    let role_version = targets.version.get();
    let file = RoleFile::sign(CONTROL_ROLE, &targets, &keys, ring)?;
    crate::publish::publish_role_files(&state, vec![file], expiries, ring, &mut store)?;
    // The same bytes again (same content-addressed name) are the new file: keep it.
    if let Some((_, old_file)) = old.filter(|(_, f)| f.file_name() != stored.path.file_name()) {
        // Best effort: a file left behind is only unreferenced (`verify` names it, `gc` removes it).
        let _ = std::fs::remove_file(old_file);
    }
    Ok(ControlReport {
        path,
        role_version,
        control: edit.control,
        warnings: edit.warnings,
    })
}

/// The rollout-control role's keys, or why there is no such role yet.
fn control_role_keys(state: &RepoState) -> Result<crate::trust::RoleKeySet> {
    if !state.delegated.contains_key(CONTROL_ROLE) {
        return Err(invalid(
            "rollout command",
            format!(
                "the repository has no {CONTROL_ROLE} role; create it once with `repo-tool rollout init` \
                 (signed with the targets key)"
            ),
        ));
    }
    state.targets_role_keys(CONTROL_ROLE)
}

/// The control file's canonical bytes, validated and within [`MAX_CONTROL_BYTES`].
fn checked_bytes(control: &RolloutControl, path: &str) -> Result<Vec<u8>> {
    let refused = |source| Error::Control {
        path: path.to_owned(),
        source,
    };
    control.validate().map_err(refused)?;
    let bytes = control.to_bytes();
    // Parsing it back checks the size limit and the path exactly as a device will.
    RolloutControl::parse(&bytes, &control.hardware, &control.channel).map_err(refused)?;
    Ok(bytes)
}

/// A TUF target entry (length and sha256, no custom fields) for a stored file.
fn plain_target(stored: &crate::store::StoredTarget) -> Target {
    Target {
        length: stored.length,
        hashes: tough::schema::Hashes {
            sha256: stored.sha256.to_vec().into(),
            _extra: Default::default(),
        },
        custom: Default::default(),
        _extra: Default::default(),
    }
}

/// The releases any role offers for this hardware id and channel.
pub(crate) fn offered_releases(state: &RepoState, hardware: &HardwareId, channel: &Channel) -> Vec<Release> {
    let mut out = Vec::new();
    for (_, targets) in state.all_roles() {
        for target in targets.targets.values() {
            if let Some(ota_release::OtaTarget::Release(r)) = ota_custom(target) {
                if &r.channel == channel && r.hardware.contains(hardware) {
                    out.push(r);
                }
            }
        }
    }
    out.sort_by(|a, b| a.version.cmp(&b.version));
    out
}

/// The published control file for this hardware id and channel, as the rollout-control role signed
/// it, with its path on disk; `None` when the role lists none (every release follows its own plan).
/// A file whose length or sha256 differs from the signed ones, or that breaks the contract, is an
/// error: nothing is built on top of it.
pub(crate) fn read_control(
    repo: &Path,
    state: &RepoState,
    hardware: &HardwareId,
    channel: &Channel,
) -> Result<Option<(RolloutControl, std::path::PathBuf)>> {
    let Some(role) = state.delegated.get(CONTROL_ROLE) else {
        return Ok(None);
    };
    let path = control_target_path(hardware, channel);
    let Some(target) = role
        .signed
        .signed
        .targets
        .iter()
        .find(|(name, _)| name.raw() == path)
        .map(|(_, t)| t)
    else {
        return Ok(None);
    };
    let malformed = |why: String, file: &Path| Error::Malformed {
        what: "rollout-control file",
        path: file.to_owned(),
        why,
    };
    let digest = <[u8; 32]>::try_from(target.hashes.sha256.as_ref())
        .map_err(|_| malformed("its signed sha256 is not 32 bytes".into(), Path::new(&path)))?;
    let file = repo.join(target_file_path(&path, &digest));
    let bytes = ota_fs::read_bounded(&file, MAX_CONTROL_BYTES)?;
    if bytes.len() as u64 != target.length
        || <sha2::Sha256 as sha2::Digest>::digest(&bytes).as_slice() != digest
    {
        return Err(malformed(
            format!("does not match the length and sha256 {CONTROL_ROLE} signed for {path}"),
            &file,
        ));
    }
    let control =
        RolloutControl::parse(&bytes, hardware, channel).map_err(|source| Error::Control { path, source })?;
    Ok(Some((control, file)))
}
