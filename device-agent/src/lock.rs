//! One agent at a time: an exclusive lock on `<state_dir>/lock` ([`ota_fs::FileLock`]), so the daemon and
//! a command-line `install` (or two commands) never drive the slots, the bootloader or the update record
//! at once.
//!
//! The lock belongs to the open file: it is released when [`AgentLock`] is dropped or the process dies
//! (even by SIGKILL or a power cut: nothing stale is left to clean up). The holder writes its pid into the
//! file only so that the next process can name it in its error. Read-only commands (`status`) take no lock:
//! the record they read is replaced atomically.

use std::path::Path;

use ota_fs::FileLock;

use crate::error::{Error, Result};

/// Name of the lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct AgentLock {
    lock: FileLock,
}

impl AgentLock {
    /// Takes the lock without waiting. Fails with [`Error::Locked`] naming the holder's pid when another
    /// process holds it, and with [`Error::NotProvisioned`] when the state directory does not exist.
    pub fn acquire(state_dir: &Path) -> Result<AgentLock> {
        let path = state_dir.join(LOCK_FILE);
        // The note is the bare pid, as the agent has always written it (an older agent can still read it).
        match FileLock::acquire(&path, 0o600, &std::process::id().to_string()) {
            Ok(lock) => Ok(AgentLock { lock }),
            Err(ota_fs::Error::Locked { lock_file, holder }) => Err(Error::Locked {
                path: lock_file,
                pid: holder.parse().ok(),
            }),
            Err(ota_fs::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && !state_dir.is_dir() =>
            {
                Err(Error::NotProvisioned {
                    state_dir: state_dir.to_owned(),
                    missing: "the state directory",
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        self.lock.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentLock::acquire(dir.path()).unwrap();
        // Locks belong to open files: a second open in this process conflicts like another process.
        let err = AgentLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(err, Error::Locked { pid: Some(p), .. } if p == std::process::id()),
            "{err}"
        );
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
        let mode = std::fs::metadata(again.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_state_directory_is_not_provisioned() {
        let dir = tempfile::tempdir().unwrap();
        let err = AgentLock::acquire(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("not provisioned"), "{err}");
    }
}
