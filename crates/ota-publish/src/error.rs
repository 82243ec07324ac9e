//! The one error type of the repo-tool library.

use std::path::PathBuf;

/// Why a repo-tool operation failed. Every variant names what it was working on; when a command fails
/// the repository on disk is exactly as it was before the command started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file or directory failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("read", "create", "rename", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's complaint.
        source: std::io::Error,
    },
    /// A metadata or key file does not parse as what it must be.
    #[error("malformed {what} {path}: {why}")]
    Malformed {
        /// What the file should have been ("timestamp metadata", "public key", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        why: String,
    },
    /// The caller asked for something invalid (bad flag value, unknown role, ...).
    #[error("invalid {what}: {why}")]
    InvalidInput {
        /// Which input.
        what: String,
        /// What is wrong with it and what was expected.
        why: String,
    },
    /// The firmware's OTA fields are invalid (the `ota-release` contract refused them).
    #[error("invalid release for {image}")]
    Release {
        /// The image being added.
        image: PathBuf,
        /// What the contract refused.
        source: ota_release::Error,
    },
    /// The same version is already published for a hardware id and channel.
    #[error(
        "version {version} is already published for hardware {hardware} on channel {channel} \
         (target {existing}); refusing to publish it twice"
    )]
    DuplicateVersion {
        /// The version.
        version: String,
        /// The hardware id it collides on.
        hardware: String,
        /// The channel.
        channel: String,
        /// The target name already carrying that version.
        existing: String,
    },
    /// The version is not above the newest already published for a hardware id and channel.
    #[error(
        "version {version} is not above {newest}, the newest published for hardware {hardware} on \
         channel {channel} (target {existing}); devices never install a lower version: pass \
         --allow-lower to publish it anyway (a hotfix branch)"
    )]
    LowerVersion {
        /// The version being added.
        version: String,
        /// The hardware id.
        hardware: String,
        /// The channel.
        channel: String,
        /// The newest version published there.
        newest: String,
        /// The target carrying it.
        existing: String,
    },
    /// A target with this name already exists in the repository.
    #[error("target {name} already exists in role {role}; pick another name with --name")]
    DuplicateTarget {
        /// The target name.
        name: String,
        /// The role listing it.
        role: String,
    },
    /// Not enough of a role's keys were available to meet its threshold.
    #[error(
        "role {role} needs {threshold} signature(s) but only {available} of its keys were given \
         (its key ids: {keyids}); pass the missing keys with --key"
    )]
    ThresholdNotMet {
        /// The role.
        role: String,
        /// Signatures required.
        threshold: u64,
        /// Matching keys given (or valid signatures found).
        available: u64,
        /// The role's key ids, comma separated.
        keyids: String,
    },
    /// A targets role's threshold cannot be met by the keys given to `add` or `delegate`: its keys are
    /// held by different people, so the change must be staged and signed in steps.
    #[error(
        "role {role} needs {threshold} signature(s) but only {available} of its keys were given \
         (its key ids: {keyids}); pass the missing keys with --key, or, when they are held by \
         different people, stage the change with --stage FILE, have each holder run \
         `repo-tool role sign --file FILE --key ...`, then `repo-tool role publish --file FILE`"
    )]
    ThresholdNeedsStaging {
        /// The role.
        role: String,
        /// Signatures required.
        threshold: u64,
        /// Matching keys given.
        available: u64,
        /// The role's key ids, comma separated.
        keyids: String,
    },
    /// A staged role does not have enough valid signatures yet to be published.
    #[error(
        "staged role {role} version {version} has {present} of the {threshold} valid signature(s) it \
         needs (its key ids: {keyids}); add the missing ones with `repo-tool role sign`"
    )]
    StagedThresholdNotMet {
        /// The role.
        role: String,
        /// Its staged version.
        version: u64,
        /// Valid signatures by the role's current keys over the staged bytes.
        present: u64,
        /// Signatures required by the role's current delegator.
        threshold: u64,
        /// The role's key ids, comma separated.
        keyids: String,
    },
    /// A staged role does not follow the role's published version: someone published in between.
    #[error(
        "staged role {role} has version {staged}, but the repository's is {published} (0: none), and \
         a staged version must be exactly the next one: someone published {role} in between; stage \
         the change again"
    )]
    StaleStage {
        /// The role.
        role: String,
        /// The staged version.
        staged: u64,
        /// The published version (0 when the role does not exist, e.g. someone removed it).
        published: u64,
    },
    /// A key could not be loaded from its key source or could not sign.
    #[error("key {source_name}: {why}")]
    Key {
        /// The key source (a path or a KMS id).
        source_name: String,
        /// What failed.
        why: String,
    },
    /// Refused to overwrite a file that exists (keys, repositories).
    #[error("{path} already exists; refusing to overwrite it")]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The repository is not in the expected state (missing or inconsistent metadata).
    #[error("repository {repo}: {why}")]
    Repository {
        /// The repository directory.
        repo: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A target name is not under any path pattern of the role it is being added to.
    #[error("target {name} is not delegated to role {role} (its paths: {paths})")]
    NotDelegated {
        /// The target name.
        name: String,
        /// The role.
        role: String,
        /// The role's path patterns, comma separated.
        paths: String,
    },
    /// Another repo-tool command holds the repository's lock (see `RepoLock`).
    #[error(
        "repository busy: {lock_file} is locked by {holder}, another repo-tool command on this \
         repository; run this command again when that one has finished"
    )]
    Locked {
        /// The lock file.
        lock_file: PathBuf,
        /// Who holds it, as written in the lock file ("pid 1234 (add)").
        holder: String,
    },
    /// A rollout plan (`--waves`) is refused.
    #[error("invalid rollout plan {what}")]
    Plan {
        /// The plan as given, or the release it was for.
        what: String,
        /// What the plan's rules refused.
        source: ota_release::PlanError,
    },
    /// A rollout-control file (published, or about to be) breaks the `ota-release` contract.
    #[error("rollout-control file {path}")]
    Control {
        /// Its target path (`rollouts/<hardware>/<channel>.json`).
        path: String,
        /// What the contract refused.
        source: ota_release::Error,
    },
    /// A request to the object store failed (after its retries).
    #[error("object store: {action} {key}")]
    ObjectStore {
        /// What was being done ("list", "get", "put", ...).
        action: &'static str,
        /// The object key or prefix.
        key: String,
        /// The store's error (or the I/O error its writer reported it as).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bucket holds something a publish must not overwrite (see `bucket::plan`).
    #[error("bucket object {key}: {why}")]
    BucketConflict {
        /// The object's key relative to the repository.
        key: String,
        /// What is in the way.
        why: String,
    },
    /// A publish stopped on purpose after this many objects (`PublishOptions::interrupt_after`).
    #[error("publish interrupted after {sent} object(s), as asked")]
    Interrupted {
        /// Objects sent before stopping.
        sent: usize,
    },
    /// A durable-file operation failed in a way the variants above do not name.
    #[error("file operation failed")]
    File(#[source] ota_fs::Error),
    /// Serializing or signing metadata failed in tough.
    #[error("tough: {0}")]
    Tough(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<ota_fs::Error> for Error {
    /// Durable-file errors keep their cause: the lock's holder, the file that exists, the OS error.
    fn from(e: ota_fs::Error) -> Error {
        match e {
            ota_fs::Error::Io { action, path, source } => Error::Io { action, path, source },
            ota_fs::Error::AlreadyExists { path } => Error::AlreadyExists { path },
            ota_fs::Error::Locked { lock_file, holder } => Error::Locked { lock_file, holder },
            ota_fs::Error::TooLarge { path, len, limit } => Error::Malformed {
                what: "file",
                path,
                why: format!("{len} bytes, more than the {limit} allowed"),
            },
            other => Error::File(other),
        }
    }
}

/// Shorthand for an [`Error::Io`] mapper.
pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { action, path, source }
}

/// Shorthand for [`Error::InvalidInput`].
pub(crate) fn invalid(what: impl Into<String>, why: impl Into<String>) -> Error {
    Error::InvalidInput {
        what: what.into(),
        why: why.into(),
    }
}
