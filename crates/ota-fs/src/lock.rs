//! [`FileLock`]: one holder at a time, named in the refusal.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{io_error, Error, Result};

/// How much of a lock file is read back to name its holder: a short note, nothing more.
const HOLDER_NOTE_MAX: u64 = 200;

/// An exclusive advisory lock on a file, taken without waiting and held until dropped.
///
/// The kernel releases it when its holder exits however it exits (SIGKILL, power cut): nothing stale is
/// left behind. The lock file is never deleted: deleting it while another process waits on it would let
/// two processes hold "the" lock on two different files. The holder writes a one-line note (its pid and
/// what it is doing) into the file, only so that a refused process can say who holds it.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock on `path` (creating it with `mode` if needed), or fails at once with
    /// [`Error::Locked`] naming the holder when another open file (in this or another process) holds it.
    pub fn acquire(path: &Path, mode: u32, note: &str) -> Result<FileLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(path)
            .map_err(io_error("open lock file", path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    holder: holder_note(&mut file),
                    lock_file: path.to_owned(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io_error("lock", path)(e)),
        }
        // Only a name for a refused process's message: not fsynced.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(format!("{note}\n").as_bytes()))
            .map_err(io_error("write lock file", path))?;
        Ok(FileLock {
            file,
            path: path.to_owned(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    /// Unlocks explicitly instead of relying on the close: the lock belongs to the open file description,
    /// which a child forked by another thread shares until it execs, so closing our descriptor alone could
    /// leave the lock held for that moment.
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// The holder's note, if it is one short printable line (it may be mid-write, or not ours to print).
fn holder_note(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.take(HOLDER_NOTE_MAX).read_to_string(&mut text);
    let line = text.lines().next().unwrap_or_default().trim();
    if !line.is_empty() && line.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        line.to_owned()
    } else {
        "a process that has not written its note yet".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_note_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = FileLock::acquire(&path, 0o600, "pid 1 (add)").unwrap();
        // Locks belong to open files: a second open in this process conflicts like another process.
        let err = FileLock::acquire(&path, 0o600, "pid 2 (refresh)").unwrap_err();
        assert!(
            matches!(&err, Error::Locked { holder, lock_file } if holder == "pid 1 (add)" && *lock_file == path),
            "{err}"
        );
        assert!(err.to_string().contains("pid 1 (add)"), "{err}");
        drop(first);
        let again = FileLock::acquire(&path, 0o600, "pid 2 (refresh)").unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap(),
            "pid 2 (refresh)\n"
        );
    }

    #[test]
    fn an_unprintable_note_is_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let _first = FileLock::acquire(&path, 0o600, "\u{1b}[31mred").unwrap();
        let err = FileLock::acquire(&path, 0o600, "x").unwrap_err();
        assert!(!err.to_string().contains('\u{1b}'), "{err}");
    }
}
