//! [`Store`]: where enrolled devices and accepted reports live, behind one trait.

use chrono::{DateTime, Utc};
use ota_report::{DeviceId, PublicKey, Report};

use crate::actions::{DeviceStatus, LineDevice, RolloutAction};
use crate::{Error, PostgresStore, Result, SqliteStore, Summary};

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

/// One device of a factory line's batch ([`Store::enroll_line_batch`]): its key, hardware id and
/// channel.
#[derive(Debug, Clone)]
pub struct LineEnrolment {
    /// The device's identity key.
    pub key: PublicKey,
    /// Its hardware id.
    pub hardware: String,
    /// Its channel.
    pub channel: String,
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

/// Told a queued report's outcome (see [`Store::queue_report`]).
pub type ReportDone = Box<dyn FnOnce(Result<()>) + Send>;

/// [`Store::insert_report`] for a store that queues reports ([`Store::queues_reports`]): queues it and
/// waits for its outcome. `writer` names what stores the queue (for the error when it ended first).
pub(crate) fn insert_by_queue(store: &impl Store, stored: &StoredReport, writer: &str) -> Result<()> {
    let (answer, outcome) = std::sync::mpsc::sync_channel(1);
    store.queue_report(
        stored.clone(),
        Box::new(move |done| {
            // The caller waits on `outcome`; it can only be gone if the caller panicked.
            let _ = answer.send(done);
        }),
    );
    outcome.recv().unwrap_or_else(|_| {
        Err(Error::Task {
            why: format!("the {writer} ended"),
        })
    })
}

/// The collector's storage. Every method is one transaction; implementations are shared between the
/// HTTP server's tasks (`Send + Sync`) and called from blocking threads, never on the async runtime.
pub trait Store: Send + Sync {
    /// Adds a device's key; enrolling the same key again changes nothing, while another key for the
    /// same id or a revoked device is refused ([`Error::EnrolmentConflict`]).
    fn enroll(&self, key: &PublicKey, at: DateTime<Utc>) -> Result<Enrolment>;

    /// Enrols a factory line's batch of devices with their hardware id and channel
    /// ([`Store::enroll`] then [`Store::set_device_line`] for each). The default takes one transaction
    /// per device; a store may take one for the whole batch, so that a line of ten thousand devices
    /// costs one commit (one fsync), not twenty thousand. On a conflict the error names the device; a
    /// store that batches has then written nothing.
    fn enroll_line_batch(&self, devices: &[LineEnrolment], at: DateTime<Utc>) -> Result<Vec<Enrolment>> {
        devices
            .iter()
            .map(|d| {
                let enrolment = self.enroll(&d.key, at)?;
                self.set_device_line(&d.key.device_id(), &d.hardware, &d.channel)?;
                Ok(enrolment)
            })
            .collect()
    }

    /// Marks a device revoked: its reports are refused from now on. Revoking twice keeps the first time.
    fn revoke(&self, device: &DeviceId, at: DateTime<Utc>) -> Result<()>;

    /// The device enrolled under `device`, revoked or not.
    fn device(&self, device: &DeviceId) -> Result<Option<EnrolledDevice>>;

    /// Stores an accepted report atomically with its checks: the device is enrolled and not revoked and
    /// the sequence number is above its last ([`Error::Replay`]); nothing is written when a check fails.
    /// An implementation may commit several reports together (each under its own savepoint) but returns
    /// only once this one is committed or refused.
    fn insert_report(&self, report: &StoredReport) -> Result<()>;

    /// [`Store::insert_report`] without waiting: `done` is called with the outcome once the report's
    /// batch is committed (or the report refused), possibly on another thread. The default stores it
    /// right here, blocking; a store whose [`Store::queues_reports`] is true returns at once, so the
    /// HTTP server may call it from its async workers.
    fn queue_report(&self, report: StoredReport, done: ReportDone) {
        done(self.insert_report(&report));
    }

    /// Whether [`Store::queue_report`] returns without blocking (it hands the report to a writer
    /// thread of the store's own).
    fn queues_reports(&self) -> bool {
        false
    }

    /// The fleet per release: each device counted once per release, by its latest report.
    fn summary(&self) -> Result<Summary>;

    /// How many reports are stored (for tests and operators).
    fn report_count(&self) -> Result<u64>;

    /// The fleet over time in `buckets` buckets (see [`crate::history`]).
    fn history(&self, buckets: u32) -> Result<crate::History>;

    /// Every device's latest report on the release `to_version` of `channel`, on any hardware id.
    fn release_devices(&self, channel: &str, to_version: &str) -> Result<Vec<DeviceStatus>>;

    /// The devices (not revoked) whose hardware id is known, on `channel`.
    fn line_devices(&self, channel: &str) -> Result<Vec<LineDevice>>;

    /// Records an enrolled device's hardware id and channel before its first report (the factory knows
    /// them), so the summary counts it as pending; a report's own values replace them.
    fn set_device_line(&self, device: &DeviceId, hardware: &str, channel: &str) -> Result<()>;

    /// Stores a halt or alert; `false` (nothing written) when the release already has one of its kind.
    fn record_action(&self, action: &RolloutAction) -> Result<bool>;

    /// Every halt and alert stored, oldest first.
    fn actions(&self) -> Result<Vec<RolloutAction>>;
}

/// Opens (creating and migrating as needed) the store at `location`: a file path or a `sqlite:` URL for
/// SQLite, a `postgres://` or `postgresql://` URL for PostgreSQL.
pub fn open_store(location: &str) -> Result<Box<dyn Store>> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Ok(Box::new(PostgresStore::open(location)?));
    }
    let path = location
        .strip_prefix("sqlite://")
        .or_else(|| location.strip_prefix("sqlite:"))
        .unwrap_or(location);
    if path.is_empty() || path.contains("://") {
        return Err(Error::StoreLocation {
            location: redact_url(location),
            why: "expected a file path, a sqlite: URL or a postgres:// URL",
        });
    }
    Ok(Box::new(SqliteStore::open(std::path::Path::new(path))?))
}

/// `url` with its password replaced by `***` (in the user part and in a `password=` parameter), for
/// every message that names a store location.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    // The user part ends at the last '@' before the query: a password may hold '/' or '@' unescaped.
    let authority = match before_query.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => before_query.to_string(),
        },
        None => before_query.to_string(),
    };
    let query = query.map(|q| {
        let params: Vec<&str> = q
            .split('&')
            .map(|p| {
                if p.to_ascii_lowercase().starts_with("password=") {
                    "password=***"
                } else {
                    p
                }
            })
            .collect();
        format!("?{}", params.join("&"))
    });
    format!("{scheme}://{authority}{}", query.unwrap_or_default())
}

/// A u64 into a BIGINT column.
pub(crate) fn to_sql_int(field: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::OutOfRange { field, value })
}

pub(crate) fn millis_to_time(what: &'static str, ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| Error::CorruptRow {
        what,
        why: format!("time {ms} ms is out of range"),
    })
}

pub(crate) fn sql_to_u64(what: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::CorruptRow {
        what,
        why: format!("negative {v}"),
    })
}

/// The raw device row, before its key and times are checked.
pub(crate) struct DeviceRow {
    pub(crate) algorithm: String,
    pub(crate) key_hex: String,
    pub(crate) enrolled_at: i64,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_sequence: Option<i64>,
}

impl DeviceRow {
    /// What enrolling `key` again does to this existing row: nothing when it is the same key on a
    /// device not revoked, refused otherwise.
    pub(crate) fn enrolment_again(&self, key: &PublicKey) -> Result<Enrolment> {
        let why = if self.revoked_at.is_some() {
            "it is revoked (revocation is final)"
        } else if self.algorithm != key.algorithm() || self.key_hex != hex::encode(key.to_bytes()) {
            "it is enrolled with another key"
        } else {
            return Ok(Enrolment::AlreadyEnrolled);
        };
        Err(Error::EnrolmentConflict {
            device: key.device_id(),
            why,
        })
    }

    pub(crate) fn into_device(self, device_id: DeviceId) -> Result<EnrolledDevice> {
        let corrupt = |why: String| Error::CorruptRow {
            what: "device key",
            why,
        };
        let bytes = hex::decode(&self.key_hex).map_err(|e| corrupt(e.to_string()))?;
        let key = PublicKey::from_parts(&self.algorithm, &bytes).map_err(|e| corrupt(e.to_string()))?;
        if key.device_id() != device_id {
            return Err(corrupt(format!(
                "key of {} stored under {device_id}",
                key.device_id()
            )));
        }
        Ok(EnrolledDevice {
            device_id,
            key,
            enrolled_at: millis_to_time("enrolment time", self.enrolled_at)?,
            revoked_at: self
                .revoked_at
                .map(|ms| millis_to_time("revocation time", ms))
                .transpose()?,
            last_sequence: self
                .last_sequence
                .map(|s| sql_to_u64("last sequence", s))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_wherever_a_url_carries_them() {
        for (url, shown) in [
            (
                "postgres://ota:s3cret@127.0.0.1:5432/fleet",
                "postgres://ota:***@127.0.0.1:5432/fleet",
            ),
            (
                "postgresql://ota:s3/c@r@et@localhost/fleet",
                "postgresql://ota:***@localhost/fleet",
            ),
            (
                "postgres://ota@127.0.0.1/fleet?password=s3cret&sslmode=disable",
                "postgres://ota@127.0.0.1/fleet?password=***&sslmode=disable",
            ),
            ("postgres://127.0.0.1/fleet", "postgres://127.0.0.1/fleet"),
            ("/var/lib/collector.db", "/var/lib/collector.db"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
