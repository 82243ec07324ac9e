//! The collector's one error type.

use ota_report::DeviceId;

/// Why a report was refused, an enrolment failed or the store could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The body is larger than the collector takes (refused before it was read).
    #[error("body is {got} bytes, more than the {limit} allowed")]
    BodyTooLarge {
        /// Its size, as declared or as read so far.
        got: u64,
        /// The bound.
        limit: usize,
    },
    /// The body did not arrive within the read timeout (a slow or stalled client).
    #[error("body not received within {seconds} s")]
    BodyTimeout {
        /// The timeout.
        seconds: u64,
    },
    /// The body did not arrive whole (the client stopped sending, or sent too slowly).
    #[error("body not received: {why}")]
    BodyIncomplete {
        /// What happened.
        why: String,
    },
    /// The envelope or the report in it is refused by the report contract (malformed, too large, bad
    /// signature, wrong device); the source names the rule.
    #[error("report refused")]
    Report {
        /// The contract's complaint.
        #[source]
        source: ota_report::Error,
    },
    /// No signature names a device enrolled here.
    #[error("signed by {key_ids}, no enrolled device")]
    UnknownDevice {
        /// The key ids the envelope named.
        key_ids: String,
    },
    /// The device was enrolled and has been revoked.
    #[error("device {device} is revoked")]
    Revoked {
        /// The device.
        device: DeviceId,
    },
    /// The report's sequence number is not above the last accepted from the device.
    #[error("replay: device {device} sent sequence {sequence}, the last accepted is {last}")]
    Replay {
        /// The device.
        device: DeviceId,
        /// The number sent.
        sequence: u64,
        /// The last one accepted.
        last: u64,
    },
    /// A number too large for the store's signed 64-bit columns.
    #[error("{field} {value} is out of range (at most {max})", max = i64::MAX)]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The text given to `enroll` is not a public key.
    #[error("not a device key: {why}")]
    KeyText {
        /// What is wrong with it.
        why: String,
    },
    /// `enroll` of a device already enrolled with another key, or revoked (revocation is final).
    #[error("device {device} cannot be enrolled: {why}")]
    EnrolmentConflict {
        /// The device.
        device: DeviceId,
        /// Why.
        why: &'static str,
    },
    /// `revoke` of a device never enrolled.
    #[error("device {device} is not enrolled")]
    NotEnrolled {
        /// The device.
        device: DeviceId,
    },
    /// The store location names a backend this build does not have.
    #[error("unsupported store {location:?}: {why}")]
    StoreLocation {
        /// The location given.
        location: String,
        /// Why.
        why: &'static str,
    },
    /// A database operation failed.
    #[error("database: {action}")]
    Storage {
        /// What was being done.
        action: &'static str,
        /// The driver's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A PostgreSQL operation failed.
    #[error("PostgreSQL: {action}")]
    Postgres {
        /// What was being done.
        action: &'static str,
        /// The driver's error.
        #[source]
        source: postgres::Error,
    },
    /// The PostgreSQL URL cannot be used (shown with its password hidden).
    #[error("PostgreSQL store {url}: {why}")]
    PostgresUrl {
        /// The URL, password replaced by `***`.
        url: String,
        /// Why.
        why: &'static str,
        /// The driver's complaint about the URL, if it had one (it names the option, not its value).
        #[source]
        source: Option<postgres::Error>,
    },
    /// No connection to the PostgreSQL server could be opened or taken from the pool.
    #[error("cannot connect to PostgreSQL at {url}")]
    PostgresConnect {
        /// The URL, password replaced by `***`.
        url: String,
        /// The driver's or the pool's error (neither carries the password).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The transaction holding this report (and others committed with it) failed to commit; nothing of
    /// it was stored.
    #[error("storing the report failed at commit: {why}")]
    CommitFailed {
        /// The driver's complaint, as text (it is shared by every report of the batch).
        why: String,
    },
    /// A row read back from the store breaks a rule it was written under (edited by hand, or corrupt).
    #[error("database holds a bad {what}: {why}")]
    CorruptRow {
        /// What was read.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A migration failed; it was rolled back and the ones after it not tried.
    #[error("migration {version} ({name}) failed")]
    Migration {
        /// Its number.
        version: u32,
        /// Its file name.
        name: &'static str,
        /// The driver's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A migration failed on PostgreSQL; it was rolled back and the ones after it not tried.
    #[error("migration {version} ({name}) failed on PostgreSQL")]
    PostgresMigration {
        /// Its number.
        version: u32,
        /// Its file name.
        name: &'static str,
        /// The driver's error.
        #[source]
        source: postgres::Error,
    },
    /// The database was written by a newer collector (its schema has migrations this one lacks).
    #[error("database schema is at version {found}, this collector knows up to {known}")]
    SchemaTooNew {
        /// The highest version recorded.
        found: u32,
        /// The highest this build has.
        known: u32,
    },
    /// A network or file operation failed.
    #[error("{action} {what}")]
    Io {
        /// What was being done ("listen on").
        action: &'static str,
        /// On what (an address, a path).
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The report was signed by another device than the one the TLS client certificate names.
    #[error("report signed by {signer}, but the TLS connection is device {peer}'s")]
    WrongPeer {
        /// The device of the client certificate.
        peer: DeviceId,
        /// The device whose key signed the report.
        signer: DeviceId,
    },
    /// The TLS configuration could not be built (certificate or key files).
    #[error("TLS setup {what}: {why}")]
    Tls {
        /// The files.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// A halt rule (from the command line or a rules file) cannot be used.
    #[error("halt rule {rule}: {why}")]
    HaltRule {
        /// The rule as given, or the file.
        rule: String,
        /// What is wrong.
        why: String,
    },
    /// A key the collector would halt with cannot be used (not private to its owner, unreadable).
    #[error("halt key {key}: {why}")]
    HaltKey {
        /// The file or URI.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// Reading or publishing to the repository failed.
    #[error("repository {repo}: {action}")]
    Repository {
        /// The repository directory.
        repo: String,
        /// What was being done.
        action: &'static str,
        /// The publisher's error (boxed: it is large, and rare).
        #[source]
        source: Box<ota_publish::Error>,
    },
    /// A blocking task (verification, storage) did not finish (it panicked or was cancelled).
    #[error("internal task failed: {why}")]
    Task {
        /// What the runtime said.
        why: String,
    },
}

impl Error {
    /// A [`Error::Storage`] maker for `map_err`.
    pub(crate) fn storage(action: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        move |source| Error::Storage { action, source }
    }

    /// A [`Error::Postgres`] maker for `map_err`.
    pub(crate) fn postgres(action: &'static str) -> impl FnOnce(postgres::Error) -> Error {
        move |source| Error::Postgres { action, source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
