//! Durable, atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

/// A temp name next to `path` (same directory, so the rename is atomic).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// fsyncs a directory, so a rename or create inside it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// Writes `bytes` to a temp file next to `path` and fsyncs it (not yet renamed).
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = temp_path(path);
    let res = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(io("write", &tmp));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map(|()| tmp)
}

/// Atomically replaces (or creates) `path` with `bytes`. The directory is fsynced too.
pub(crate) fn replace_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Io {
            action: "rename into place",
            path: path.to_owned(),
            source: e,
        });
    }
    sync_dir(parent(path))
}

/// Creates `path` with `bytes` atomically; fails if it exists. The directory is NOT fsynced (callers
/// batch that).
pub(crate) fn write_new_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.exists() {
        return Err(Error::AlreadyExists {
            path: path.to_owned(),
        });
    }
    let tmp = write_temp(path, bytes)?;
    // hard_link fails if the destination exists: no silent overwrite even in a race.
    let res = fs::hard_link(&tmp, path).map_err(io("link into place", path));
    let _ = fs::remove_file(&tmp);
    res
}

/// The parent directory of a path ("." for a bare name).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Above this many new files, one `syncfs` of the repository's file system is cheaper than an fsync
/// per file (each fsync is a journal commit: about 5 ms on the project machine, so 10,000 targets would
/// spend 50 s in fsync alone).
pub(crate) const SYNCFS_ABOVE: usize = 16;

/// Flushes the whole file system holding `repo` (`syncfs`): every file and directory written so far is
/// durable when it returns.
pub(crate) fn sync_filesystem(repo: &Path) -> Result<()> {
    let dir = fs::File::open(repo).map_err(io("open", repo))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::Io {
        action: "syncfs",
        path: repo.to_owned(),
        source: e.into(),
    })
}
