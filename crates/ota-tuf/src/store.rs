//! The metadata directory: trusted metadata as the exact bytes received, under unversioned names
//! (`root.json`, `timestamp.json`, `snapshot.json`, `targets.json`, `<url-quoted role>.json`), each
//! written atomically through `ota_fs::write_atomic` and read back bounded by `ota_fs::read_bounded`.

use std::fs;
use std::path::Path;

use crate::{Error, Result};

/// The file name of `role`'s trusted metadata.
pub(crate) fn file_name(role: &str) -> String {
    format!("{}.json", crate::paths::quote_name(role))
}

/// Reads at most `limit` bytes of `role`'s trusted metadata; `None` when it is absent, too large or
/// unreadable (the caller then downloads it anew).
pub(crate) fn read(dir: &Path, role: &str, limit: u64) -> Option<Vec<u8>> {
    let path = dir.join(file_name(role));
    match ota_fs::read_bounded(&path, limit) {
        Ok(bytes) => Some(bytes),
        Err(e @ ota_fs::Error::TooLarge { .. }) => {
            tracing::warn!("trusted metadata ignored: {e}");
            None
        }
        Err(ota_fs::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            tracing::warn!(cause, "trusted metadata unreadable: {e}");
            None
        }
    }
}

/// Writes `bytes` as `role`'s trusted metadata, atomically and durably.
pub(crate) fn write(dir: &Path, role: &str, bytes: &[u8]) -> Result<()> {
    Ok(ota_fs::write_atomic(&dir.join(file_name(role)), bytes, 0o644)?)
}

/// Removes `role`'s trusted metadata (used after a key rotation, TUF 5.3.11).
pub(crate) fn remove(dir: &Path, role: &str) -> Result<()> {
    let path = dir.join(file_name(role));
    match fs::remove_file(&path) {
        Ok(()) => Ok(ota_fs::sync_dir(dir)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
