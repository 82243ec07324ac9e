//! Files under `targets/` that no signed targets metadata names: found by [`unreferenced_files`]
//! (which `verify` reports) and removed by [`gc`].
//!
//! Such files are left by an `add` killed mid-way (a whole image under its content address, or a
//! `.<name>.tmp-<pid>` file), or by an abandoned stage. A client never asks for them, but they cost
//! disk and hide real problems. Files an `add --stage` wrote are unreferenced until the stage is
//! published, possibly days later: `add --stage` records them in `.repo-tool.staged/` (next to the
//! lock file, outside what is served), and while the staged role version is still ahead of the
//! published one they are "pending", never removed. Once the role has reached that version (the
//! stage was published, or overtaken and so can never be) the record is stale and `gc` drops it.
//!
//! It does not look at `metadata/` (every metadata version is kept) and never follows symlinks.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};
use crate::loader::RepoState;
use crate::lock::RepoLock;
use crate::meta::TARGETS_DIR;
use crate::stage::target_file_path;

/// Directory (in the repository's working directory, beside the lock file) of pending stage records.
pub const STAGED_DIR: &str = ".repo-tool.staged";

/// A file under `targets/` that no signed targets metadata names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreferencedFile {
    /// Path relative to the repository directory (`targets/...`).
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// `Some((role, version))` when a stage not yet published names it: kept by [`gc`].
    pub pending_stage: Option<(String, u64)>,
}

/// What [`gc`] removed (or with `dry_run`, would remove).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Files removed, relative to the repository, with their lengths.
    pub removed: Vec<(PathBuf, u64)>,
    /// Bytes freed (the sum of the lengths removed).
    pub bytes_freed: u64,
    /// Unreferenced files kept because a pending stage names them.
    pub kept_for_stages: Vec<UnreferencedFile>,
    /// Stage records dropped (their stage was published or overtaken).
    pub stale_stage_records: usize,
    /// Nothing was removed: only reported.
    pub dry_run: bool,
}

/// A record of the target files one `add --stage` wrote.
#[derive(Debug, Serialize, Deserialize)]
struct StageRecord {
    role: String,
    version: u64,
    stage_file: PathBuf,
    /// Paths relative to the repository.
    files: Vec<PathBuf>,
}

/// Records that a stage of `role` at `version` (written to `stage_file`) names `files` (absolute or
/// relative to `repo`), so `gc` keeps them until it is published. Called under the repository lock.
/// Returns the record's path.
pub(crate) fn record_stage(
    repo: &Path,
    role: &str,
    version: u64,
    stage_file: &Path,
    files: &[PathBuf],
) -> Result<PathBuf> {
    let dir = repo.join(STAGED_DIR);
    fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    let files = files
        .iter()
        .map(|f| f.strip_prefix(repo).unwrap_or(f).to_owned())
        .collect();
    let record = StageRecord {
        role: role.to_owned(),
        version,
        stage_file: stage_file.to_owned(),
        files,
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| Error::Tough(e.to_string()))?;
    let digest = ota_release::Sha256Digest::of(&bytes).to_hex();
    let name = format!("{role}.{version}.{}.json", digest.get(..16).unwrap_or(&digest));
    let path = dir.join(name);
    ota_fs::write_atomic(&path, &bytes, 0o644)?;
    Ok(path)
}

/// The stage records of `repo`: (record file, record, pending). A record that does not parse is
/// treated as pending (its files are kept: better a leftover than a broken stage).
fn stage_records(repo: &Path, state: &RepoState) -> Result<Vec<(PathBuf, Option<StageRecord>, bool)>> {
    let dir = repo.join(STAGED_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read directory", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io("read directory", &dir))?.path();
        let record: Option<StageRecord> = ota_fs::read_bounded(&path, 64 << 20)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let pending = record.as_ref().is_none_or(|r| {
            state
                .role_targets(&r.role)
                .map_or(true, |t| t.version.get() < r.version)
        });
        out.push((path, record, pending));
    }
    Ok(out)
}

/// Every file under `targets/` whose path is not that of a target listed by the current signed
/// metadata of any role, sorted by path.
pub(crate) fn unreferenced_files(repo: &Path, state: &RepoState) -> Result<Vec<UnreferencedFile>> {
    let mut referenced = HashSet::new();
    for (_, t) in state.all_roles() {
        for (name, target) in &t.targets {
            if let Ok(digest) = <[u8; 32]>::try_from(target.hashes.sha256.as_ref()) {
                referenced.insert(target_file_path(name.raw(), &digest));
            }
        }
    }
    let mut pending = std::collections::HashMap::new();
    for (_, record, is_pending) in stage_records(repo, state)? {
        if let (Some(r), true) = (record, is_pending) {
            for f in r.files {
                pending.insert(f, (r.role.clone(), r.version));
            }
        }
    }
    let mut out = Vec::new();
    for (path, len) in files_under(repo, Path::new(TARGETS_DIR))? {
        if !referenced.contains(&path) {
            let pending_stage = pending.get(&path).cloned();
            out.push(UnreferencedFile {
                path,
                len,
                pending_stage,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Every non-directory entry under `repo/rel` (symlinks not followed): (path relative to `repo`,
/// length).
fn files_under(repo: &Path, rel: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut pending = vec![rel.to_owned()];
    while let Some(d) = pending.pop() {
        let abs = repo.join(&d);
        let entries = match fs::read_dir(&abs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == rel => continue,
            Err(e) => return Err(io("read directory", &abs)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("read directory", &abs))?;
            let meta = entry.metadata().map_err(io("stat", entry.path()))?;
            let p = d.join(entry.file_name());
            if meta.is_dir() {
                pending.push(p);
            } else {
                out.push((p, meta.len()));
            }
        }
    }
    Ok(out)
}

/// Removes (with `dry_run`, only lists) every file under `targets/` that no signed targets metadata
/// names and no pending stage needs, under the repository lock (so no `add` is writing), then the
/// directories that leaves empty and the stale stage records. Never touches a referenced file or
/// anything under `metadata/`.
pub fn gc(repo: &Path, dry_run: bool) -> Result<GcReport> {
    let _lock = RepoLock::acquire(repo, "gc")?;
    let state = RepoState::load(repo)?;
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let mut dirs = BTreeSet::new();
    for f in unreferenced_files(repo, &state)? {
        if f.pending_stage.is_some() {
            report.kept_for_stages.push(f);
            continue;
        }
        if !dry_run {
            let abs = repo.join(&f.path);
            fs::remove_file(&abs).map_err(io("remove", &abs))?;
            dirs.extend(f.path.ancestors().skip(1).map(Path::to_owned));
        }
        report.bytes_freed += f.len;
        report.removed.push((f.path, f.len));
    }
    // Deepest first; a directory still holding something stays (remove_dir refuses).
    for d in dirs
        .iter()
        .rev()
        .filter(|d| d.starts_with(TARGETS_DIR) && *d != Path::new(TARGETS_DIR))
    {
        let _ = fs::remove_dir(repo.join(d));
    }
    for (path, _, pending) in stage_records(repo, &state)? {
        if !pending {
            report.stale_stage_records += 1;
            if !dry_run {
                fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
    }
    if !dry_run && !report.removed.is_empty() {
        ota_fs::sync_dir(&repo.join(TARGETS_DIR))?;
    }
    Ok(report)
}
