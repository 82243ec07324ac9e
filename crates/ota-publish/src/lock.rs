//! One command at a time per repository: [`RepoLock`].
//!
//! Every command that changes a repository takes an exclusive lock on `<repo>/.repo-tool.lock`
//! ([`ota_fs::FileLock`]), without waiting: a second command fails at once with [`Error::Locked`],
//! naming the lock file and the pid and command of the holder.
//!
//! The lock file sits in the repository's working directory, next to `metadata/` and `targets/`,
//! never inside them (those are what a web server serves). `ota_fs::FileLock` never deletes it and
//! the kernel drops the lock when its holder exits, however it exits.

use std::fs;
use std::path::Path;

use ota_fs::FileLock;

use crate::error::{io, Result};

/// The lock file's name inside a repository directory.
pub const LOCK_FILE: &str = ".repo-tool.lock";

/// An exclusive lock on a repository, held until dropped.
#[derive(Debug)]
pub struct RepoLock {
    lock: FileLock,
}

impl RepoLock {
    /// Locks the existing repository `repo` for `command` (creating the lock file if needed), or
    /// fails at once with [`Error::Locked`](crate::Error::Locked) if another command (in this or
    /// another process) holds it. A directory that holds no repository is refused before anything is
    /// created in it.
    pub fn acquire(repo: &Path, command: &str) -> Result<RepoLock> {
        if !repo.join(crate::meta::METADATA_DIR).is_dir() {
            return Err(crate::loader::not_a_repository(repo));
        }
        RepoLock::lock(repo, command)
    }

    /// Locks the directory of a repository about to be created (`init`), creating the directory.
    pub fn acquire_new(repo: &Path, command: &str) -> Result<RepoLock> {
        fs::create_dir_all(repo).map_err(io("create repository directory", repo))?;
        RepoLock::lock(repo, command)
    }

    fn lock(repo: &Path, command: &str) -> Result<RepoLock> {
        let note = format!("pid {} ({command})", std::process::id());
        let lock = FileLock::acquire(&repo.join(LOCK_FILE), 0o644, &note)?;
        Ok(RepoLock { lock })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        self.lock.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_second_lock_fails_at_once_naming_the_holder_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let err = RepoLock::acquire(&repo, "add").unwrap_err();
        assert!(err.to_string().contains("not a repository"), "{err}");
        assert!(
            !repo.exists(),
            "nothing created for a command on a missing repository"
        );
        let first = RepoLock::acquire_new(&repo, "add").unwrap();
        fs::create_dir(repo.join(crate::meta::METADATA_DIR)).unwrap();
        assert_eq!(first.path(), repo.join(LOCK_FILE));
        let err = RepoLock::acquire(&repo, "refresh").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, Error::Locked { lock_file, .. } if *lock_file == repo.join(LOCK_FILE)),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("pid {} (add)", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(".repo-tool.lock"), "{msg}");
        drop(first);
        let again = RepoLock::acquire(&repo, "refresh").unwrap();
        assert_eq!(
            fs::read_to_string(again.path()).unwrap(),
            format!("pid {} (refresh)\n", std::process::id())
        );
    }
}
