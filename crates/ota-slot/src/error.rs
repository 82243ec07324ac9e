//! The crate's one error type.

use std::path::PathBuf;

use embedded_storage::nor_flash::{NorFlashError, NorFlashErrorKind};

/// Everything that can go wrong in `ota-slot`, by cause.
///
/// Storage rule violations (`Unaligned`, `OutOfBounds`, `NotErased`) are caller bugs or corrupt geometry;
/// `PowerLoss` is the simulated flash losing power; `BootEnv*` come from the bootloader environment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed on a file, block device or tool.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done ("open", "pwrite", "fsync", ...).
        op: &'static str,
        /// The file, device or program concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A durable write or bounded read failed (the action and the path are in it).
    #[error(transparent)]
    File(#[from] ota_fs::Error),
    /// The geometry of a slot or flash is impossible (zero units, capacity not a multiple of the erase
    /// unit, erase unit not a multiple of the write unit, region outside the device, ...).
    #[error("bad geometry: {what}")]
    Geometry {
        /// What is wrong, with the numbers.
        what: String,
    },
    /// An operation's offset or length is not a multiple of the device's unit for it.
    #[error("{op} at offset {offset} length {len} is not aligned to the {unit}-byte unit")]
    Unaligned {
        /// "erase", "write" or "read".
        op: &'static str,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The unit it must be a multiple of.
        unit: u64,
    },
    /// An operation reaches past the end of the slot or device.
    #[error("{op} at offset {offset} length {len} is out of bounds (capacity {capacity})")]
    OutOfBounds {
        /// "erase", "write" or "read".
        op: &'static str,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The slot's or device's capacity.
        capacity: u64,
    },
    /// A NOR write to a word that was already written since its last erase.
    #[error(
        "write to offset {offset}: word already written since its last erase (NOR needs an erase first)"
    )]
    NotErased {
        /// Offset of the first offending word.
        offset: u64,
    },
    /// The simulated power was cut: the operation (and every later one until a reboot) failed.
    #[error("power lost during {op} at offset {offset} (operation #{step})")]
    PowerLoss {
        /// "erase", "write" or "read".
        op: &'static str,
        /// Offset of the operation.
        offset: u64,
        /// Number of the operation in the power budget (0-based), for reproducing a sweep point.
        step: u64,
    },
    /// A NOR flash driver (other than the simulated one) reported an error.
    #[error("flash {op} at offset {offset} failed: {kind:?} ({detail})")]
    Flash {
        /// "erase", "write" or "read".
        op: &'static str,
        /// Offset of the operation, relative to the device.
        offset: u64,
        /// The generic kind reported by the driver.
        kind: NorFlashErrorKind,
        /// The driver's error, as it prints itself.
        detail: String,
    },
    /// An image does not fit in the slot (checked before anything is touched).
    #[error("image of {len} bytes does not fit in a slot of {capacity} bytes")]
    TooLarge {
        /// The image length.
        len: u64,
        /// The slot capacity.
        capacity: u64,
    },
    /// A [`crate::SlotWriter`] received a different number of bytes than it was created for.
    #[error("image length mismatch: expected {expected} bytes, got {got}")]
    LengthMismatch {
        /// Length announced at creation.
        expected: u64,
        /// Bytes received (so far, when too many).
        got: u64,
    },
    /// A bootloader tool (`fw_setenv`, `grub-editenv`, ...) failed or could not be run.
    #[error("{tool} {args} failed ({status}): {stderr}")]
    BootEnv {
        /// The program.
        tool: String,
        /// Its arguments, space separated.
        args: String,
        /// Exit status, or `not started: <why>`.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A boot environment variable is missing or has a value this crate does not accept.
    #[error("boot environment {source_name}: variable {name}: {problem}")]
    BootEnvValue {
        /// Which environment ("U-Boot env /etc/fw_env.config", "GRUB env /boot/grub/grubenv", ...).
        source_name: String,
        /// The variable.
        name: String,
        /// What is wrong with it (missing, "got `x`, expected a or b", ...).
        problem: String,
    },
    /// Neither copy of the simulated bootloader's redundant environment is valid.
    #[error("no valid boot environment copy in the env slot (copy 0: {copy0}; copy 1: {copy1})")]
    NoValidEnv {
        /// Why copy 0 was rejected.
        copy0: String,
        /// Why copy 1 was rejected.
        copy1: String,
    },
    /// The kernel command line (or the file standing for it) does not say which slot booted.
    #[error("{}: no `{key}=a|b` on the kernel command line (got `{got}`)", path.display())]
    BootedUnknown {
        /// The command-line file read.
        path: PathBuf,
        /// The key looked for.
        key: String,
        /// The line read (trimmed).
        got: String,
    },
    /// A request that breaks the boot-control rules (tries 0, too many tries for the backend, ...).
    #[error("refused: {what}")]
    Refused {
        /// What was asked and why it is refused.
        what: String,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when this is a (simulated) power loss: the caller should stop and "reboot".
    pub fn is_power_loss(&self) -> bool {
        matches!(self, Error::PowerLoss { .. })
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Lets the simulated flash use this error as its `embedded_storage` error type.
impl NorFlashError for Error {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Error::Unaligned { .. } => NorFlashErrorKind::NotAligned,
            Error::OutOfBounds { .. } => NorFlashErrorKind::OutOfBounds,
            Error::Flash { kind, .. } => *kind,
            _ => NorFlashErrorKind::Other,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        match e {
            // Keep the OS error kind visible to io::Write users (e.g. ENOSPC).
            Error::Io { ref source, .. } => std::io::Error::new(source.kind(), e),
            other => std::io::Error::other(other),
        }
    }
}
