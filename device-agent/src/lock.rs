//! One agent at a time: an exclusive `flock(2)` on `<state_dir>/lock`, so the daemon and a command-line
//! `install` (or two commands) never drive the slots, the bootloader or the update record at once.
//!
//! The lock belongs to the open file: it is released when [`AgentLock`] is dropped or the process dies
//! (even by SIGKILL or a power cut: nothing stale is left to clean up). The holder writes its pid into the
//! file only so that the next process can name it in its error. Read-only commands (`status`) take no lock:
//! the record they read is replaced atomically.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, Result};

/// Name of the lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct AgentLock {
    // Held for its lock, never read after acquiring.
    _file: File,
    path: PathBuf,
}

impl AgentLock {
    /// Takes the lock without waiting. Fails with [`Error::Locked`] naming the holder's pid when another
    /// process holds it, and with [`Error::NotProvisioned`] when the state directory does not exist.
    pub fn acquire(state_dir: &Path) -> Result<AgentLock> {
        let path = state_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound && !state_dir.is_dir() {
                    Error::NotProvisioned {
                        state_dir: state_dir.to_owned(),
                        missing: "the state directory",
                    }
                } else {
                    Error::io("open lock file", &path)(e)
                }
            })?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(Error::Locked {
                    pid: holder_pid(&mut file),
                    path,
                })
            }
            Err(e) => return Err(Error::io("lock", &path)(e.into())),
        }
        // Only informative (for the next process's error), so not fsynced.
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| std::io::Seek::rewind(&mut file))
            .and_then(|()| file.write_all(format!("{pid}\n").as_bytes()))
            .map_err(Error::io("write pid to lock file", &path))?;
        Ok(AgentLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid the holder wrote, if readable (it may be mid-write).
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentLock::acquire(dir.path()).unwrap();
        // flock locks belong to open files: a second open in this process conflicts like another process.
        let err = AgentLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("another device-agent (pid {})", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&first.path().display().to_string()), "{text}");
        drop(first);
        let again = AgentLock::acquire(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap().trim(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn a_missing_state_directory_is_not_provisioned() {
        let dir = tempfile::tempdir().unwrap();
        let err = AgentLock::acquire(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("not provisioned"), "{err}");
    }
}
