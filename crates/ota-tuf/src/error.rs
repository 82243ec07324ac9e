//! The one error type of this crate: each variant is one cause and carries what, where, expected and got.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while updating or using trusted metadata.
///
/// Variants are split by cause: bad bytes ([`Error::Malformed`]), valid bytes that break a rule of the
/// specification (threshold, rollback, expiry, mismatches), transport problems, local storage, caller misuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not metadata of the expected shape (not JSON, a missing field, a wrong `_type`, ...).
    #[error("{role}: malformed metadata: {reason}")]
    Malformed {
        /// The role whose metadata was being read.
        role: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// Too few distinct trusted keys produced a valid signature (TUF 5.3.5, 5.4.2, 5.5.3, 5.6.3).
    #[error("{role}: signature threshold not met: {valid} valid signature(s) from distinct trusted keys, {threshold} required (signed by {signer})")]
    Threshold {
        /// The role whose metadata was being verified.
        role: String,
        /// The role whose keys were used (the delegator).
        signer: String,
        /// How many distinct keys signed validly.
        valid: usize,
        /// How many are required.
        threshold: u64,
    },
    /// A version went backwards compared to trusted metadata (rollback attack, TUF 5.4.3, 5.5.5).
    #[error("{role}: rollback refused: trusted version {trusted}, received version {got}")]
    Rollback {
        /// The role (or the role listed in snapshot/timestamp meta) whose version went back.
        role: String,
        /// The trusted version.
        trusted: u64,
        /// The received version.
        got: u64,
    },
    /// A version differs from the one the referring metadata demands (TUF 5.3.5, 5.5.4, 5.6.4).
    #[error("{role}: version mismatch: expected version {expected}, received version {got}")]
    VersionMismatch {
        /// The role.
        role: String,
        /// The version demanded (by the referring role, or the next root version).
        expected: u64,
        /// The version received.
        got: u64,
    },
    /// The metadata has expired at the time the update started (freeze attack, TUF 5.3.10, 5.4.4, 5.5.6, 5.6.5).
    #[error("{role}: expired at {expires} (update started at {reference_time})")]
    Expired {
        /// The role.
        role: String,
        /// Its expiry.
        expires: String,
        /// The time captured at the start of the update.
        reference_time: String,
    },
    /// A file's length differs from the length in signed metadata.
    #[error("{what}: length mismatch: expected {expected} bytes, got {got}")]
    LengthMismatch {
        /// The role or target.
        what: String,
        /// The signed length.
        expected: u64,
        /// The length received.
        got: u64,
    },
    /// A file's digest differs from the one in signed metadata (arbitrary software / mix-and-match).
    #[error("{what}: {algorithm} mismatch: expected {expected}, got {got}")]
    HashMismatch {
        /// The role or target.
        what: String,
        /// The hash algorithm.
        algorithm: String,
        /// The signed digest (hex).
        expected: String,
        /// The digest of what was received (hex).
        got: String,
    },
    /// Signed metadata lists a hash algorithm this client cannot compute, so the file cannot be checked.
    #[error("{what}: unsupported hash algorithm {algorithm:?}")]
    UnsupportedHash {
        /// The role or target.
        what: String,
        /// The algorithm name.
        algorithm: String,
    },
    /// The server sent more bytes than allowed (endless data attack).
    #[error("{url}: more than {limit} bytes received (endless data refused)")]
    TooLarge {
        /// The URL.
        url: String,
        /// The bound (signed length or configured maximum).
        limit: u64,
    },
    /// The server did not deliver in time (slow retrieval attack).
    #[error("{url}: timed out after {after:?} (slow retrieval refused)")]
    Timeout {
        /// The URL.
        url: String,
        /// The budget that ran out.
        after: Duration,
    },
    /// The transfer fell below the minimum average rate over the window (slow retrieval attack).
    #[error(
        "{url}: {got} bytes in the last {}s, below the minimum rate of {min_bytes_per_sec} bytes/s (slow retrieval refused)",
        window.as_secs()
    )]
    SlowRetrieval {
        /// The URL.
        url: String,
        /// Bytes received in the last window.
        got: u64,
        /// The window.
        window: Duration,
        /// The configured minimum rate.
        min_bytes_per_sec: u64,
    },
    /// The server answered with an HTTP error status.
    #[error("{url}: HTTP status {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The request failed below HTTP (connection refused, reset, bad URL, ...).
    #[error("{url}: transport error: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// The cause.
        reason: String,
    },
    /// Referring metadata does not list a role that must be there (TUF 5.6.1), or a snapshot drops one.
    #[error("{role}: not listed in {referrer}")]
    MissingMeta {
        /// The role that should be listed.
        role: String,
        /// The role that should list it.
        referrer: String,
    },
    /// A delegated role was asked for that its named delegator does not delegate.
    #[error("{role}: not delegated by {delegator}")]
    NotDelegated {
        /// The role.
        role: String,
        /// The supposed delegator.
        delegator: String,
    },
    /// A local file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A durable write or bounded read of the metadata directory failed (the action and the path are
    /// in it).
    #[error(transparent)]
    File(#[from] ota_fs::Error),
    /// Writing a target into the caller's sink failed.
    #[error("{target}: writing to the sink failed")]
    Sink {
        /// The target name.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An offline bundle is not a bundle this client reads (not tar, too many members, a link, a name
    /// leaving the archive, a member twice).
    #[error("bundle {bundle}: {reason}")]
    BundleMalformed {
        /// The bundle file.
        bundle: PathBuf,
        /// What is wrong, naming the member.
        reason: String,
    },
    /// An offline bundle ends before a member it declares does (a copy cut short).
    #[error("bundle {bundle} is truncated: member {member} declares {declared} bytes, only {available} are in the file")]
    BundleTruncated {
        /// The bundle file.
        bundle: PathBuf,
        /// The member cut short (or the part of the archive missing).
        member: String,
        /// The size its header declares.
        declared: u64,
        /// The bytes the file holds of it.
        available: u64,
    },
    /// An offline bundle lacks a file the verification needs (TUF 5.4.1, 5.5.1, 5.6.1, 5.7.3).
    #[error("bundle {bundle} holds no {member}")]
    NotInBundle {
        /// The bundle file.
        bundle: PathBuf,
        /// The member looked for.
        member: String,
    },
    /// The caller used the API in a way it does not support (for example a relative base URL).
    #[error("misuse: {0}")]
    Misuse(String),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn malformed(role: &str, reason: impl Into<String>) -> Error {
        Error::Malformed {
            role: role.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
