//! The repository's fixed names (TUF layout, spec version), metadata lifetimes and versions, and
//! (until the store takes it) the atomic [`Publication`] of new files. A leaf: it depends on no
//! other module of the crate, except that it re-exports the loader's `RepoState` under its old path.

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tough::schema::decoded::Decoded;
use tough::schema::{Hashes, Metafile};

use crate::error::{invalid, io, Result};
// `verify` reads the repository through the loader under these names.
pub(crate) use crate::loader::RepoState;

/// The TUF specification version written into every metadata file.
pub const SPEC_VERSION: &str = "1.0.31";
/// The metadata directory inside a repository.
pub const METADATA_DIR: &str = "metadata";
/// The target files directory inside a repository.
pub const TARGETS_DIR: &str = "targets";
/// The root role's name (its metadata file is `V.root.json`).
pub const ROOT_ROLE: &str = "root";
/// The top-level targets role's name.
pub const TARGETS_ROLE: &str = "targets";

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiries {
    /// Root metadata lifetime.
    pub root: jiff::SignedDuration,
    /// Top-level and delegated targets metadata lifetime.
    pub targets: jiff::SignedDuration,
    /// Snapshot lifetime.
    pub snapshot: jiff::SignedDuration,
    /// Timestamp lifetime (the `refresh` cron job must run well within it).
    pub timestamp: jiff::SignedDuration,
}

impl Default for Expiries {
    /// Root 365 days, targets 90 days, snapshot 7 days, timestamp 1 day.
    fn default() -> Self {
        let day = jiff::SignedDuration::from_hours(24);
        Expiries {
            root: day * 365,
            targets: day * 90,
            snapshot: day * 7,
            timestamp: day,
        }
    }
}

/// Parses a lifetime such as `90d`, `12h`, `30m`, `45s` or `2w`.
pub fn parse_lifetime(text: &str) -> Result<jiff::SignedDuration> {
    let bad = || {
        invalid(
            format!("lifetime {text:?}"),
            "expected a number and a unit: s, m, h, d or w (e.g. 90d)",
        )
    };
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (num, unit) = (
        text.get(..split).ok_or_else(bad)?,
        text.get(split..).ok_or_else(bad)?,
    );
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        "w" => n.checked_mul(7 * 86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    if !(1..=100 * 366 * 86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(jiff::SignedDuration::from_secs(secs))
}

/// `now + lifetime`, truncated to whole seconds: TUF metadata writes `YYYY-MM-DDTHH:MM:SSZ` and
/// python-tuf refuses fractional seconds.
pub fn expiry_after(now: jiff::Timestamp, lifetime: jiff::SignedDuration) -> Result<jiff::Timestamp> {
    let t = now
        .checked_add(lifetime)
        .map_err(|e| invalid("expiry", format!("now + {lifetime:?} is out of range: {e}")))?;
    whole_seconds(t)
}

/// Drops the fraction of a second.
pub fn whole_seconds(t: jiff::Timestamp) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_second(t.as_second()).map_err(|e| invalid("timestamp", e.to_string()))
}

/// The current time, in whole seconds.
pub(crate) fn now() -> Result<jiff::Timestamp> {
    whole_seconds(jiff::Timestamp::now())
}

/// A snapshot/timestamp `meta` entry describing these file bytes.
pub(crate) fn metafile(version: NonZeroU64, bytes: &[u8]) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::from(Sha256::digest(bytes).to_vec()),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// `version + 1`.
pub(crate) fn bump(v: NonZeroU64) -> Result<NonZeroU64> {
    v.checked_add(1)
        .ok_or_else(|| invalid("metadata version", "overflows u64"))
}

/// Permission bits of new metadata files before the umask: what `File::create` gives, so a published
/// file is readable by the web server whatever user runs repo-tool.
pub(crate) const METADATA_MODE: u32 = 0o666;

/// Above this many new files, one `syncfs` of the repository's file system is cheaper than an fsync
/// per file (each fsync is a journal commit: about 5 ms on the project machine, so 10,000 targets would
/// spend 50 s in fsync alone).
pub(crate) const SYNCFS_ABOVE: usize = 16;

/// Files a command publishes: target files already under their final names (see `crate::stage`),
/// new versioned metadata files, and last the new `timestamp.json`. [`Publication::commit`] makes the
/// target files durable, writes the metadata (each file temp + fsync + rename, directories fsynced)
/// and `timestamp.json` last; if anything fails, it removes the metadata it created, so the
/// repository is left exactly as it was (the `TargetStager` removes the target files).
#[derive(Debug, Default)]
pub(crate) struct Publication {
    /// New target files (absolute or relative to the working directory), not yet fsynced.
    pub target_files: Vec<PathBuf>,
    /// Directories created for them, parents first.
    pub target_dirs: Vec<PathBuf>,
    /// (file name in metadata/, bytes); must not exist yet.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// New timestamp.json bytes.
    pub timestamp: Option<Vec<u8>>,
}

#[derive(Default)]
struct Undo {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    timestamp: Option<(PathBuf, Option<Vec<u8>>)>,
}

impl Undo {
    fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.as_os_str().is_empty() && !d.exists() {
            missing.push(d.to_owned());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for m in missing.into_iter().rev() {
            fs::create_dir(&m).map_err(io("create directory", &m))?;
            self.dirs.push(m);
        }
        Ok(())
    }

    fn roll_back(self) {
        if let Some((path, old)) = self.timestamp {
            match old {
                Some(bytes) => {
                    let _ = ota_fs::write_atomic(&path, &bytes, METADATA_MODE);
                }
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for f in self.files.iter().rev() {
            let _ = fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

impl Publication {
    /// Publishes into `repo`; on error nothing of it remains.
    pub fn commit(self, repo: &Path) -> Result<()> {
        let mut undo = Undo::default();
        match self.commit_inner(repo, &mut undo) {
            Ok(()) => Ok(()),
            Err(e) => {
                undo.roll_back();
                Err(e)
            }
        }
    }

    fn commit_inner(self, repo: &Path, undo: &mut Undo) -> Result<()> {
        // Small publishes fsync each new file and directory; bulk ones (thousands of files, each fsync a
        // disk flush) flush the whole file system once instead, before timestamp.json is switched.
        let bulk = self.target_files.len() > SYNCFS_ABOVE;
        let mut synced_dirs = std::collections::BTreeSet::new();
        if !bulk {
            for f in &self.target_files {
                fs::File::open(f)
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsync", f))?;
                synced_dirs.insert(ota_fs::parent_dir(f).to_owned());
            }
            // A new directory's entry lives in its parent, which must be synced too.
            for d in &self.target_dirs {
                synced_dirs.insert(ota_fs::parent_dir(d).to_owned());
            }
        }
        let mdir = repo.join(METADATA_DIR);
        undo.create_dir_all(&mdir)?;
        for (name, bytes) in &self.metadata {
            let path = mdir.join(name);
            ota_fs::write_new(&path, bytes, METADATA_MODE)?;
            undo.files.push(path);
        }
        if bulk {
            ota_fs::sync_filesystem(repo)?;
        } else {
            synced_dirs.insert(mdir.clone());
            for d in &undo.dirs {
                synced_dirs.insert(ota_fs::parent_dir(d).to_owned());
            }
            for d in &synced_dirs {
                ota_fs::sync_dir(d)?;
            }
        }
        if let Some(ts) = &self.timestamp {
            let path = mdir.join("timestamp.json");
            let old = if path.exists() {
                Some(fs::read(&path).map_err(io("read", &path))?)
            } else {
                None
            };
            undo.timestamp = Some((path.clone(), old));
            ota_fs::write_atomic(&path, ts, METADATA_MODE)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tough::schema::Timestamp;

    #[test]
    fn lifetimes_parse_and_expiries_have_whole_seconds() {
        assert_eq!(
            parse_lifetime("90d").unwrap(),
            jiff::SignedDuration::from_hours(90 * 24)
        );
        assert_eq!(parse_lifetime("1s").unwrap(), jiff::SignedDuration::from_secs(1));
        for bad in ["", "d", "5x", "-1d", "0s", "99999999999w"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
        let t: jiff::Timestamp = "2026-01-01T00:00:00.75Z".parse().unwrap();
        let e = expiry_after(t, jiff::SignedDuration::from_secs(10)).unwrap();
        assert_eq!(e.subsec_nanosecond(), 0);
        let json = serde_json::to_string(&Timestamp::new(SPEC_VERSION.into(), NonZeroU64::MIN, e)).unwrap();
        assert!(json.contains("\"expires\":\"2026-01-01T00:00:10Z\""), "{json}");
    }
}
