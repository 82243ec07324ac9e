//! [`RepoLock`]: one repo-tool command at a time per repository.
//!
//! Two commands publishing at once would both read version N and both write version N+1; the second
//! would then fail on the taken file names and roll back, but only after doing all its work, and two
//! `refresh` runs could interleave their `timestamp.json` switches. So every command that changes a
//! repository first takes an exclusive advisory lock (`flock`) on `<repo>/.repo-tool.lock`, without
//! waiting: a second command fails at once with [`Error::Locked`], naming the lock file and the pid
//! and command of the holder.
//!
//! The lock file sits in the repository's working directory, next to `metadata/` and `targets/`,
//! never inside them (those are what a web server serves). It is never deleted: deleting a lock
//! file while another process waits on it would let two processes hold "the" lock on two different
//! files. The kernel drops the lock when its holder exits, however it exits, so a crashed command
//! never leaves the repository locked; the pid written in the file only names the holder in the
//! message.

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{io, Error, Result};

/// The lock file's name inside a repository directory.
pub const LOCK_FILE: &str = ".repo-tool.lock";

/// An exclusive lock on a repository, held until dropped.
#[derive(Debug)]
pub struct RepoLock {
    path: PathBuf,
    file: fs::File,
}

impl Drop for RepoLock {
    /// Unlocks explicitly instead of relying on the close: a `flock` belongs to the open file
    /// description, and a child forked by another thread of this process (a test spawning nginx or
    /// python, a caller running a hook) shares it until it execs, so closing our descriptor alone
    /// could leave the lock held for that moment and the next command would find it taken.
    fn drop(&mut self) {
        let _ = flock(&self.file, FlockOperation::Unlock);
    }
}

impl RepoLock {
    /// Locks the existing repository `repo` for `command` (creating the lock file if needed), or
    /// fails at once with [`Error::Locked`] if another command (in this or another process) holds it.
    /// A directory that holds no repository is refused before anything is created in it.
    pub fn acquire(repo: &Path, command: &str) -> Result<RepoLock> {
        if !repo.join(crate::meta::METADATA_DIR).is_dir() {
            return Err(crate::meta::not_a_repository(repo));
        }
        RepoLock::lock(repo, command)
    }

    /// Locks the directory of a repository about to be created (`init`), creating the directory.
    pub fn acquire_new(repo: &Path, command: &str) -> Result<RepoLock> {
        fs::create_dir_all(repo).map_err(io("create repository directory", repo))?;
        RepoLock::lock(repo, command)
    }

    fn lock(repo: &Path, command: &str) -> Result<RepoLock> {
        let path = repo.join(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io("open lock file", &path))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                return Err(Error::Locked {
                    holder: holder(&mut file),
                    lock_file: path,
                });
            }
            Err(e) => return Err(io("lock", &path)(e.into())),
        }
        // Only a name for the message of a command that finds the lock taken: not fsynced.
        let note = format!("pid {} ({command})\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(note.as_bytes()))
            .map_err(io("write lock file", &path))?;
        Ok(RepoLock { path, file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Who holds the lock, as its holder wrote it ("pid 1234 (add)").
fn holder(file: &mut fs::File) -> String {
    let mut text = String::new();
    // At most one line of a short note; anything else is not ours to print.
    let _ = file.take(200).read_to_string(&mut text);
    let line = text.lines().next().unwrap_or_default().trim();
    let printable = !line.is_empty() && line.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if printable {
        line.to_owned()
    } else {
        "a process that has not written its pid yet".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
