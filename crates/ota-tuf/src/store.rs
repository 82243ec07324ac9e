//! The metadata directory: trusted metadata as the exact bytes received, under unversioned names
//! (`root.json`, `timestamp.json`, `snapshot.json`, `targets.json`, `<url-quoted role>.json`), each
//! written atomically: temp file, fsync, rename, fsync the directory.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The file name of `role`'s trusted metadata.
pub(crate) fn file_name(role: &str) -> String {
    format!("{}.json", crate::paths::quote_name(role))
}

/// Reads at most `limit` bytes of `role`'s trusted metadata; `None` when it is absent or too large.
pub(crate) fn read(dir: &Path, role: &str, limit: u64) -> Option<Vec<u8>> {
    let path = dir.join(file_name(role));
    let len = fs::metadata(&path).ok()?.len();
    if len > limit {
        tracing::warn!(path = %path.display(), len, limit, "trusted metadata file larger than allowed; ignored");
        return None;
    }
    fs::read(&path).ok()
}

/// Writes `bytes` as `role`'s trusted metadata, atomically and durably.
pub(crate) fn write(dir: &Path, role: &str, bytes: &[u8]) -> Result<()> {
    write_atomic(&dir.join(file_name(role)), bytes)
}

/// Removes `role`'s trusted metadata (used after a key rotation, TUF 5.3.11).
pub(crate) fn remove(dir: &Path, role: &str) -> Result<()> {
    let path = dir.join(file_name(role));
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// temp file in the same directory, fsync, rename over `path`, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
