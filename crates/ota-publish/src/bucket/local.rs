//! What a publish copies from the local repository: every file under `metadata/` and every target
//! file the current signed metadata names (files a killed `add` left behind are not published).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::plan::{LocalObject, ObjectClass};
use crate::error::{io, Error, Result};
use crate::loader::RepoState;
use crate::meta::METADATA_DIR;
use crate::stage::target_file_path;

/// Files replaced in place larger than this are sent without comparing their bytes with the bucket's.
pub(crate) const COMPARE_LIMIT: u64 = 16 << 20;

/// The files to publish from `repo`, whose signed metadata is `state`, sorted by key.
pub(crate) fn local_objects(repo: &Path, state: &RepoState) -> Result<Vec<LocalObject>> {
    let mut files = BTreeMap::new();
    walk(repo, Path::new(METADATA_DIR), &mut files)?;
    for (role, t) in state.all_roles() {
        for (name, target) in &t.targets {
            let digest =
                <[u8; 32]>::try_from(target.hashes.sha256.as_ref()).map_err(|_| Error::Repository {
                    repo: repo.to_owned(),
                    why: format!(
                        "role {role}: target {} has a sha256 that is not 32 bytes",
                        name.raw()
                    ),
                })?;
            let rel = target_file_path(name.raw(), &digest);
            let len = file_len(&repo.join(&rel))?;
            if len != target.length {
                return Err(Error::Repository {
                    repo: repo.to_owned(),
                    why: format!(
                        "{} has {len} bytes, role {role} says {}; run `repo-tool verify`",
                        rel.display(),
                        target.length
                    ),
                });
            }
            files.insert(key_of(&rel)?, len);
        }
    }
    files
        .into_iter()
        .filter_map(|(key, len)| ObjectClass::of(&key).map(|class| (key, len, class)))
        .map(|(key, len, class)| {
            let path = repo.join(&key);
            let bytes = match class.is_immutable() || len > COMPARE_LIMIT {
                true => None,
                false => Some(fs::read(&path).map_err(io("read", &path))?),
            };
            Ok(LocalObject {
                key,
                path,
                len,
                class,
                bytes,
            })
        })
        .collect()
}

/// Every regular file under `repo/rel`, recursively, by key.
fn walk(repo: &Path, rel: &Path, out: &mut BTreeMap<String, u64>) -> Result<()> {
    let dir = repo.join(rel);
    for entry in fs::read_dir(&dir).map_err(io("read directory", &dir))? {
        let entry = entry.map_err(io("read directory", &dir))?;
        let child = rel.join(entry.file_name());
        let path = repo.join(&child);
        let meta = fs::metadata(&path).map_err(io("stat", &path))?;
        if meta.is_dir() {
            walk(repo, &child, out)?;
        } else if meta.is_file() {
            out.insert(key_of(&child)?, meta.len());
        }
    }
    Ok(())
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).map_err(io("stat target file", path))?.len())
}

/// The object key of a relative path: its components joined by `/` (UTF-8 only).
fn key_of(rel: &Path) -> Result<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    parts.map(|p| p.join("/")).ok_or_else(|| Error::InvalidInput {
        what: format!("file name {}", rel.display()),
        why: "not UTF-8: object keys are UTF-8".into(),
    })
}
