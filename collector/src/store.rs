//! [`Store`]: where enrolled devices and accepted reports live, behind one trait.

use chrono::{DateTime, Utc};
use ota_report::{DeviceId, PublicKey, Report};

use crate::{Error, Result, SqliteStore, Summary};

/// A device as enrolled.
#[derive(Debug, Clone)]
pub struct EnrolledDevice {
    /// Its id (derived from its key).
    pub device_id: DeviceId,
    /// Its public key.
    pub key: PublicKey,
    /// When it was enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The sequence number of its last accepted report.
    pub last_sequence: Option<u64>,
}

/// What `enroll` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolment {
    /// The device was added.
    Added,
    /// The device was already enrolled with this very key; nothing changed.
    AlreadyEnrolled,
}

/// An accepted report, ready to store: the verified report, the envelope exactly as received, when.
#[derive(Debug, Clone)]
pub struct StoredReport {
    /// The report (its signature verified by the device's enrolled key).
    pub report: Report,
    /// The envelope's bytes as received (UTF-8 JSON).
    pub envelope: String,
    /// When the collector received it.
    pub received_at: DateTime<Utc>,
}

/// The collector's storage. Every method is one transaction; implementations are shared between the
/// HTTP server's tasks (`Send + Sync`) and called from blocking threads, never on the async runtime.
pub trait Store: Send + Sync {
    /// Adds a device's key; enrolling the same key again changes nothing, while another key for the
    /// same id or a revoked device is refused ([`Error::EnrolmentConflict`]).
    fn enroll(&self, key: &PublicKey, at: DateTime<Utc>) -> Result<Enrolment>;

    /// Marks a device revoked: its reports are refused from now on. Revoking twice keeps the first time.
    fn revoke(&self, device: &DeviceId, at: DateTime<Utc>) -> Result<()>;

    /// The device enrolled under `device`, revoked or not.
    fn device(&self, device: &DeviceId) -> Result<Option<EnrolledDevice>>;

    /// Stores an accepted report atomically with its checks: the device is enrolled and not revoked and
    /// the sequence number is above its last ([`Error::Replay`]); nothing is written when a check fails.
    /// An implementation may commit several reports together (each under its own savepoint) but returns
    /// only once this one is committed or refused.
    fn insert_report(&self, report: &StoredReport) -> Result<()>;

    /// The fleet per release: each device counted once per release, by its latest report.
    fn summary(&self) -> Result<Summary>;

    /// How many reports are stored (for tests and operators).
    fn report_count(&self) -> Result<u64>;
}

/// Opens (creating and migrating as needed) the store at `location`: a file path or a `sqlite:` URL.
/// `postgres://` URLs are recognised and refused until the PostgreSQL implementation lands.
pub fn open_store(location: &str) -> Result<Box<dyn Store>> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Err(Error::StoreLocation {
            location: location.to_string(),
            why: "PostgreSQL is not built yet (SQLite only in this version)",
        });
    }
    let path = location
        .strip_prefix("sqlite://")
        .or_else(|| location.strip_prefix("sqlite:"))
        .unwrap_or(location);
    if path.is_empty() || path.contains("://") {
        return Err(Error::StoreLocation {
            location: location.to_string(),
            why: "expected a file path, a sqlite: URL or a postgres:// URL",
        });
    }
    Ok(Box::new(SqliteStore::open(std::path::Path::new(path))?))
}
