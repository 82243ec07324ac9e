//! Durable files, written once for the whole workspace.
//!
//! Every crate that keeps state on disk (the publisher's repository, the device's update record and TUF
//! metadata, a GRUB environment, the drill's report) needs the same four things, and each used to write
//! its own, with drift between the copies (ignored directory fsyncs, locks that unlocked differently):
//!
//! - [`write_atomic`]: temp file beside the target, fsync, rename, fsync the directory; after a power
//!   cut the file holds the old bytes or the new, never a mix. [`write_new`] is the no-overwrite variant
//!   for content-addressed files, whose directory fsync the caller batches.
//! - [`create_private`], [`write_private`]: a file readable by its owner only (0600), for keys.
//! - [`FileLock`]: an exclusive, non-waiting lock on a file, released on drop or at process death,
//!   whose error names the holder (what the holder wrote into the file when it took the lock).
//! - [`read_bounded`]: read a whole file only if it is at most a given size, so a file from outside can
//!   never make the caller allocate without bound.
//!
//! Nothing here knows of TUF, slots or reports. Every error says what was being done and to which path;
//! the OS error is its source, not repeated in its message.
#![deny(missing_docs)]

mod atomic;
mod lock;
mod read;

pub use atomic::{
    create_private, parent_dir, sync_dir, sync_file, sync_filesystem, write_atomic, write_new, write_private,
};
pub use lock::FileLock;
pub use read::read_bounded;

use std::path::PathBuf;

/// What went wrong with a file, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done ("fsync directory").
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// [`write_new`] found the file already there.
    #[error("{} already exists", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// Another holder has the lock.
    #[error("{} is held by {holder}", lock_file.display())]
    Locked {
        /// The lock file.
        lock_file: PathBuf,
        /// What the holder wrote when it took the lock (its pid and command), or a placeholder.
        holder: String,
    },
    /// [`read_bounded`] found a file larger than allowed.
    #[error("{} is {len} bytes, more than the {limit} allowed", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The bound.
        limit: u64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A closure turning an `io::Error` into [`Error::Io`] for `action` on `path`, for `map_err`.
pub fn io_error(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { action, path, source }
}
