//! Offline bundles ([`write_bundle`]): one file holding a release (its full image, optionally deltas
//! from named base versions, and its hardware id and channel's rollout-control file) with every piece
//! of signed metadata a device needs to verify it, for `device-agent install --bundle` on a device
//! without network (a USB stick, a technician's laptop).
//!
//! A bundle is a tar archive laid out as the repository is served (see `ota_tuf::bundle`):
//! `metadata/` holds the whole root chain, `timestamp.json`, and the snapshot, targets and delegated
//! targets files under their consistent-snapshot names; `targets/` holds the chosen target files under
//! their content-addressed names. Nothing is re-signed: the bundle carries the repository's current
//! metadata as published, so it is exactly as fresh as the repository's `timestamp.json` (a device
//! refuses it once that expires; run `repo-tool refresh --timestamp-expires ...` first for a bundle
//! that must last longer on the shelf). It reads the repository under its lock and writes the bundle
//! to a temporary name, renamed into place once complete and flushed.

use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use ota_release::{control_target_path, Channel, HardwareId, OtaTarget, Release, Version};
use tough::schema::Target;

use crate::error::{invalid, io, Error, Result};
use crate::loader::RepoState;
use crate::lock::RepoLock;
use crate::meta::{METADATA_DIR, TARGETS_ROLE};
use crate::publish::ota_custom;
use crate::stage::target_file_path;

/// What to put in a bundle.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The hardware id the release is for.
    pub hardware: HardwareId,
    /// Its channel.
    pub channel: Channel,
    /// The release's version.
    pub version: Version,
    /// Base versions whose deltas to this release go in too (each must be offered by the release).
    pub delta_from: Vec<Version>,
    /// The bundle file to write (refused when it exists).
    pub out: PathBuf,
}

/// What [`write_bundle`] wrote.
#[derive(Debug, Clone)]
pub struct BundleReport {
    /// The bundle file.
    pub out: PathBuf,
    /// The release's target name.
    pub release_target: String,
    /// Its image length.
    pub release_length: u64,
    /// The delta target names included.
    pub deltas: Vec<String>,
    /// The rollout-control file included, when the repository has one for the hardware id and channel.
    pub control: Option<String>,
    /// Metadata files included.
    pub metadata_files: usize,
    /// Size of the bundle in bytes.
    pub bytes: u64,
    /// When the bundled timestamp expires: devices refuse the bundle from then on.
    pub timestamp_expires: jiff::Timestamp,
    /// Things the release engineer should know (a rollout plan not yet open to every device).
    pub warnings: Vec<String>,
}

/// One file going into the bundle: its member name and where its bytes come from.
struct MemberFile {
    name: String,
    source: PathBuf,
}

/// Writes the bundle `spec` describes from the repository at `repo` (see the module doc).
pub fn write_bundle(repo: &Path, spec: &BundleSpec) -> Result<BundleReport> {
    let _lock = RepoLock::acquire(repo, "bundle")?;
    let state = RepoState::load(repo)?;
    if spec.out.exists() {
        return Err(invalid(
            format!("bundle {}", spec.out.display()),
            "exists already; choose a new file name",
        ));
    }
    let (release_target, release_name) = find_release(&state, spec)?;
    let mut targets = vec![target_member(repo, &release_name, release_target)?];
    let release = release_fields(release_target, &release_name)?;
    let mut deltas = Vec::new();
    for base in &spec.delta_from {
        let offer = release
            .deltas
            .iter()
            .find(|d| d.base_version == *base)
            .ok_or_else(|| no_delta(spec, base, &release))?;
        let target = find_target(&state, &offer.target).ok_or_else(|| no_delta(spec, base, &release))?;
        targets.push(target_member(repo, &offer.target, target)?);
        deltas.push(offer.target.clone());
    }
    let control_name = control_target_path(&spec.hardware, &spec.channel);
    let control = match find_target(&state, &control_name) {
        Some(t) => {
            targets.push(target_member(repo, &control_name, t)?);
            Some(control_name)
        }
        None => None,
    };
    let metadata = metadata_members(repo, &state)?;
    let metadata_files = metadata.len();
    let bytes = write_tar(&spec.out, metadata.iter().chain(&targets))?;
    Ok(BundleReport {
        out: spec.out.clone(),
        release_length: release_target.length,
        release_target: release_name,
        deltas,
        control,
        metadata_files,
        bytes,
        timestamp_expires: state.timestamp.signed.signed.expires,
        warnings: plan_warnings(&release),
    })
}

/// The release target for the spec's hardware id, channel and version.
fn find_release<'s>(state: &'s RepoState, spec: &BundleSpec) -> Result<(&'s Target, String)> {
    let mut offered = Vec::new();
    for (_, role) in state.all_roles() {
        for (name, target) in &role.targets {
            let Some(OtaTarget::Release(r)) = ota_custom(target) else {
                continue;
            };
            if r.channel != spec.channel || !r.hardware.contains(&spec.hardware) {
                continue;
            }
            if r.version == spec.version {
                return Ok((target, name.raw().to_owned()));
            }
            offered.push(r.version.to_string());
        }
    }
    offered.sort();
    Err(invalid(
        format!("release {}", spec.version),
        format!(
            "the repository offers no {} for hardware {} on channel {} (offered: {})",
            spec.version,
            spec.hardware,
            spec.channel,
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            }
        ),
    ))
}

/// The target `name` as the first targets role listing it signs it.
fn find_target<'s>(state: &'s RepoState, name: &str) -> Option<&'s Target> {
    state
        .all_roles()
        .into_iter()
        .find_map(|(_, role)| role.targets.iter().find(|(n, _)| n.raw() == name).map(|(_, t)| t))
}

fn release_fields(target: &Target, name: &str) -> Result<Release> {
    match ota_custom(target) {
        Some(OtaTarget::Release(r)) => Ok(r),
        _ => Err(invalid(format!("target {name}"), "is not a release")),
    }
}

fn no_delta(spec: &BundleSpec, base: &Version, release: &Release) -> Error {
    let offered: Vec<String> = release
        .deltas
        .iter()
        .map(|d| d.base_version.to_string())
        .collect();
    invalid(
        format!("--delta-from {base}"),
        format!(
            "{} offers no delta from {base} (deltas from: {})",
            spec.version,
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            }
        ),
    )
}

/// A target file's member: `targets/<dir>/<sha256>.<basename>`, checked to be on disk at its signed
/// length (a device would refuse anything else).
fn target_member(repo: &Path, name: &str, target: &Target) -> Result<MemberFile> {
    let digest: [u8; 32] = target
        .hashes
        .sha256
        .as_ref()
        .try_into()
        .map_err(|_| invalid(format!("target {name}"), "its sha256 is not 32 bytes"))?;
    let rel = target_file_path(name, &digest);
    let source = repo.join(&rel);
    let len = fs::metadata(&source).map_err(io("read", &source))?.len();
    if len != target.length {
        return Err(invalid(
            format!("target file {}", source.display()),
            format!("is {len} bytes, signed metadata says {}", target.length),
        ));
    }
    Ok(MemberFile {
        name: rel.to_string_lossy().into_owned(),
        source,
    })
}

/// Every metadata file a device needs, under the names it asks for: the root chain, timestamp, and the
/// snapshot, targets and delegated targets files of the current snapshot.
fn metadata_members(repo: &Path, state: &RepoState) -> Result<Vec<MemberFile>> {
    let mdir = repo.join(METADATA_DIR);
    let file = |name: String, on_disk: String| MemberFile {
        name: format!("{METADATA_DIR}/{name}"),
        source: mdir.join(on_disk),
    };
    let mut out: Vec<MemberFile> = (1..=state.roots.len())
        .map(|v| file(format!("{v}.root.json"), format!("{v}.root.json")))
        .collect();
    out.push(file("timestamp.json".into(), "timestamp.json".into()));
    let snapshot = &state.snapshot.signed.signed;
    let snap_name = format!("{}.snapshot.json", snapshot.version);
    out.push(file(snap_name.clone(), snap_name));
    let roles = std::iter::once(TARGETS_ROLE).chain(state.delegated.keys().map(String::as_str));
    for role in roles {
        let meta = snapshot
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| Error::Repository {
                repo: repo.to_owned(),
                why: format!("snapshot lists no {role}.json"),
            })?;
        let v = meta.version;
        out.push(file(
            format!("{v}.{}.json", ota_tuf::quote_name(role)),
            format!("{v}.{role}.json"),
        ));
    }
    Ok(out)
}

/// Writes the members into a tar at `out` (through a temporary name, flushed, then renamed); returns
/// its size. GNU headers, so long content-addressed names need no ustar name splitting.
fn write_tar<'m>(out: &Path, members: impl Iterator<Item = &'m MemberFile>) -> Result<u64> {
    let partial = out.with_extension("partial");
    let file = File::create(&partial).map_err(io("create", &partial))?;
    let written = (|| {
        let mut builder = tar::Builder::new(BufWriter::new(file));
        for m in members {
            let src = File::open(&m.source).map_err(io("read", &m.source))?;
            let len = src.metadata().map_err(io("read", &m.source))?.len();
            let mut header = tar::Header::new_gnu();
            header.set_size(len);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, &m.name, src)
                .map_err(io("write", &partial))?;
        }
        let mut writer = builder.into_inner().map_err(io("write", &partial))?;
        writer.flush().map_err(io("write", &partial))?;
        let file = writer
            .into_inner()
            .map_err(|e| io("write", &partial)(e.into_error()))?;
        file.sync_all().map_err(io("flush", &partial))?;
        file.metadata().map_err(io("read", &partial)).map(|m| m.len())
    })();
    let bytes = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    fs::rename(&partial, out).map_err(io("rename", &partial))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        ota_fs::sync_dir(dir)?;
    }
    Ok(bytes)
}

/// A release whose waves are not all open yet is refused by devices outside the open ones: say so.
fn plan_warnings(release: &Release) -> Vec<String> {
    let Some(plan) = &release.waves else {
        return Vec::new();
    };
    let now = jiff::Timestamp::now().as_second();
    let last = plan.waves.len().saturating_sub(1);
    match plan.opening_unix(last) {
        Ok(opens) if opens > now => vec![format!(
            "{}'s rollout waves open to every device only at {}: until then a device outside the open \
             waves refuses this bundle as it would refuse the release online (`repo-tool rollout start \
             --waves now` opens it)",
            release.version,
            jiff::Timestamp::from_second(opens).map_or_else(|_| opens.to_string(), |t| t.to_string())
        )],
        _ => Vec::new(),
    }
}
