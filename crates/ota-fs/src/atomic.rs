//! Atomic replacement and private creation.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{io_error, Error, Result};

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temp name beside `path`: hidden (a web server serving the directory lists no half-written file)
/// and fixed, so a temp file left by a power cut is found and replaced by the next write. Every writer
/// of one file holds that file's owner's lock, so two writers never share a temp name.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

/// Creates the temp file for `path` with `mode`, writes `bytes` and fsyncs it. A stale temp file from
/// an earlier cut is garbage by construction (its rename never happened) and is removed first.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let tmp = temp_path(path);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove stale temp file", &tmp)(e)),
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error("create temp file", &tmp))
        .and_then(|mut file| {
            file.write_all(bytes).map_err(io_error("write temp file", &tmp))?;
            file.sync_all().map_err(io_error("fsync temp file", &tmp))
        });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Atomically replaces (or creates) `path` with `bytes`, with permission bits `mode` for a new file
/// (the umask applies): temp file, fsync, rename, fsync the directory. When it returns `Ok` the new
/// content survives a power cut; if the cut comes earlier the old content is intact.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = write_temp(path, bytes, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_error("rename temp file over", path)(e));
    }
    sync_dir(parent_dir(path))
}

/// Creates `path` with `bytes`, fsynced, failing with [`Error::AlreadyExists`] if it exists (even in a
/// race: the final step is a hard link, which never overwrites). The directory is *not* fsynced: callers
/// that create many files flush once with [`sync_dir`] or [`sync_filesystem`].
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if path.exists() {
        return Err(Error::AlreadyExists {
            path: path.to_owned(),
        });
    }
    let tmp = write_temp(path, bytes, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
            path: path.to_owned(),
        }),
        Err(e) => Err(io_error("link into place", path)(e)),
    }
}

/// Creates a new file readable and writable by its owner only (0600, whatever the umask), failing if
/// it exists. For private keys: the bits are set at creation, never widened then narrowed.
pub fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create private file", path))
}

/// Creates `path` holding `bytes`, readable by its owner only (0600), fsynced with its directory; fails
/// if it exists (a key is never overwritten). A failed write leaves no file behind.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = create_private(path)?;
    let written = file
        .write_all(bytes)
        .map_err(io_error("write private file", path))
        .and_then(|()| file.sync_all().map_err(io_error("fsync private file", path)));
    if written.is_err() {
        // Ours since create_private succeeded: a half-written key is worse than none.
        let _ = fs::remove_file(path);
    }
    written?;
    sync_dir(parent_dir(path))
}

/// Makes a file's content durable (`fsync`), for files written in place rather than through
/// [`write_atomic`], such as content-addressed files whose directory is flushed in one go later.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .map_err(io_error("open to fsync", path))?
        .sync_all()
        .map_err(io_error("fsync", path))
}

/// Makes a directory's entries (creations, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .map_err(io_error("open directory to fsync", dir))?
        .sync_all()
        .map_err(io_error("fsync directory", dir))
}

/// Flushes the whole file system holding `path` (`syncfs(2)`): every file and directory written so far
/// is durable when it returns. Cheaper than an fsync per file when a command writes thousands.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(io_error("open", path))?;
    rustix::fs::syncfs(&dir).map_err(|e| io_error("syncfs", path)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_content_keeps_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_stale_temp_file_from_a_cut_is_ignored_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"old", 0o600).unwrap();
        fs::write(temp_path(&p), b"half-writ").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"old");
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert!(!temp_path(&p).exists());
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("state.json");
        let err = write_atomic(&p, b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn write_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("target.bin");
        write_new(&p, b"first", 0o644).unwrap();
        let err = write_new(&p, b"second", 0o644).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_files_are_0600_whatever_is_asked_of_the_umask_and_never_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pk8");
        create_private(&p).unwrap().write_all(b"secret").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert!(create_private(&p).is_err(), "an existing key is never truncated");
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        let q = dir.path().join("identity.pk8");
        write_private(&q, b"key").unwrap();
        assert_eq!((mode(&q), fs::read(&q).unwrap()), (0o600, b"key".to_vec()));
        assert!(write_private(&q, b"other").is_err());
        assert_eq!(fs::read(&q).unwrap(), b"key");
    }
}
