//! The device's TUF client: the specification's client workflow (TUF 1.0.x, section 5 "Detailed client
//! workflow") in pure Rust, with targets streamed into any async sink while their length and hashes are
//! checked.
//!
//! **What it does.** Starting from a root provisioned on the device ([`Client::init`]), [`Client::refresh`]
//! rotates root (TUF 5.3), then updates timestamp (5.4), snapshot (5.5) and top-level targets (5.6), judging
//! expiry against one time captured at the start from the caller's [`Clock`]. [`Client::target`] searches the delegation tree lazily in
//! pre-order depth-first order (5.6.7), loading only the roles that target needs; [`Client::all_targets`]
//! lists every visible target. [`Client::download_target`] streams a target into any
//! [`tokio::io::AsyncWrite`], bounded by its signed length and checked against every signed hash.
//!
//! Signatures are checked over the canonical JSON of `signed` as received, and trusted metadata is
//! persisted as the exact bytes received, under unversioned names (`root.json`, `timestamp.json`,
//! `snapshot.json`, `targets.json`, `<url-quoted role>.json`), each written atomically (temp file, fsync,
//! rename, fsync the directory). Nothing else is kept in the metadata directory. Keys: ed25519,
//! ecdsa-sha2-nistp256, rsassa-pss-sha256, rsa-pkcs1v15-sha256; hashes: sha256, sha512. Thresholds count
//! distinct keys (by keyid and by key value). Every fetch is bounded ([`Limits`]) and has a timeout.
//!
//! **What it does not do.** It never writes or signs metadata (the publisher uses tough for that), never
//! picks which firmware to install (that is the device agent's job, reading [`TargetInfo::custom`]), and
//! never writes to a slot: the caller passes the sink.
//!
//! **Main types.** [`Client`] (the trusted state: metadata directory plus verified roles in memory),
//! [`ClientConfig`] and [`Limits`] (where and how much), [`Clock`] and [`Http`] (the time and the HTTP
//! client, passed in by the caller; [`ClientConfig::new`] picks the system clock and a client built here),
//! [`TargetInfo`] (one verified target), [`Error`]; [`BundleSource`], an offline bundle read in place of
//! HTTP by [`Client::load_bundle`] (see [`bundle`]).
//! [`path_matches_pattern`] is the workspace's one TUF path-pattern matcher (python-tuf's, segment by
//! segment fnmatch), public so the publisher checks delegations with the same rule the device applies.
//!
//! **Deviations from the agreed interface**: [`ClientConfig`] and [`Limits`] are `#[non_exhaustive]`; build
//! them with [`ClientConfig::new`] / [`Limits::default`] and set fields. [`TargetInfo::verify_local`] is an
//! addition (is a file already on disk this target?).
#![deny(missing_docs)]
// Lossy `as` casts: this crate parses bytes from outside, so every narrowing or sign change is a
// try_from with an error, or allowed one by one with the reason.
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]

pub mod bundle;
mod canonical;
mod client;
mod error;
mod fetch;
mod keys;
mod metadata;
mod paths;
mod store;

#[doc(hidden)]
pub mod fuzzing;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use bundle::BundleSource;
pub use client::Client;
pub use error::{Error, Result};
pub use paths::{path_matches_pattern, quote_name};

/// Bounds on everything the client downloads or walks. Defaults follow the specification's suggestions
/// and python-tuf's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Maximum size of a root file (TUF 5.3.3): 512 KiB.
    pub root_max: u64,
    /// Maximum size of timestamp.json (TUF 5.4.1): 16 KiB.
    pub timestamp_max: u64,
    /// Maximum size of snapshot.json when timestamp does not give its length (TUF 5.5.1): 2 MiB.
    pub snapshot_max: u64,
    /// Maximum size of a targets file when snapshot does not give its length (TUF 5.6.1): 5 MiB.
    pub targets_max: u64,
    /// How many new root versions one refresh may step through (TUF 5.3.3): 32.
    pub max_root_rotations: u32,
    /// How many roles one target search may visit (TUF 5.6.7): 32.
    pub max_delegations: u32,
    /// How many roles [`Client::all_targets`] may load: 1024.
    pub max_roles_listed: u32,
    /// Slowest average rate a target download may keep before it is abandoned (slow retrieval): 4 KiB/s,
    /// after one request timeout of grace.
    pub min_target_bytes_per_sec: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            root_max: 512 * 1024,
            timestamp_max: 16 * 1024,
            snapshot_max: 2 * 1024 * 1024,
            targets_max: 5 * 1024 * 1024,
            max_root_rotations: 32,
            max_delegations: 32,
            max_roles_listed: 1024,
            min_target_bytes_per_sec: 4096,
        }
    }
}

/// Where the repository is and how the client talks to it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Base URL of the metadata (`<base>/timestamp.json`, `<base>/3.root.json`, ...).
    pub metadata_base_url: String,
    /// Base URL of the targets (`<base>/<dir>/<hash>.<basename>` with consistent snapshots).
    pub targets_base_url: String,
    /// Size and count bounds.
    pub limits: Limits,
    /// Timeout for connecting, for each whole metadata request, and for each stall during a target
    /// download: 30 s.
    pub request_timeout: Duration,
    /// Where the reference time of each refresh comes from (TUF 5.1: "fixed update start time"):
    /// [`SystemClock`] by default; a drill or a test passes its own, so expiry is judged at a time it
    /// chooses, without sleeping.
    pub clock: Arc<dyn Clock>,
    /// The HTTP client, or the TLS settings to build it with: [`Http::Default`] by default.
    pub http: Http,
    /// The slowest transfer kept, metadata and targets alike (slow retrieval, TUF 5.x): 1 KiB/s
    /// averaged over 30 s by default.
    pub min_rate: MinRate,
}

/// Slow retrieval protection: a transfer whose average rate over the last `window` falls below
/// `bytes_per_sec` is cut, whatever its total timeout (the first `window` of a transfer is its grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// The minimum average rate; 0 turns the check off.
    pub bytes_per_sec: u64,
    /// The sliding window the rate is averaged over.
    pub window: Duration,
}

impl Default for MinRate {
    fn default() -> MinRate {
        MinRate {
            bytes_per_sec: 1024,
            window: Duration::from_secs(30),
        }
    }
}

/// The source of the time an update judges expiry against, read once at the start of each
/// [`Client::refresh`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock ([`Utc::now`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock stopped at one instant: for tests and drills that judge expiry at a chosen time.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// How the client gets its HTTP client. Whatever the choice, every request still has the deadlines of
/// [`ClientConfig::request_timeout`] and every body the bounds of [`Limits`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Http {
    /// Built here: [`ClientConfig::request_timeout`] as connect and read timeout, the built-in web PKI
    /// roots.
    #[default]
    Default,
    /// Built here like [`Http::Default`], but trusting only these CA certificates (PEM, one or more)
    /// for HTTPS: the built-in roots are off, so only a server whose chain ends at one of them is
    /// accepted.
    PinnedCa(Vec<u8>),
    /// The caller's client, used as it is (its TLS roots, client identity, proxy and timeouts).
    Client(reqwest::Client),
}

impl ClientConfig {
    /// A configuration with default limits and timeout.
    pub fn new(metadata_base_url: impl Into<String>, targets_base_url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            metadata_base_url: metadata_base_url.into(),
            targets_base_url: targets_base_url.into(),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
            http: Http::Default,
            min_rate: MinRate::default(),
        }
    }
}

/// One target as signed targets metadata describes it (TUF 4.5 TARGETS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// The target path (TUF TARGETPATH), e.g. `fw/board-a/1.2.0.img`.
    pub name: String,
    /// Exact length in bytes.
    pub length: u64,
    /// Hash algorithm name (`sha256`, `sha512`) -> raw digest.
    pub hashes: BTreeMap<String, Vec<u8>>,
    /// The `custom` object, or `Null` when absent.
    pub custom: serde_json::Value,
}

impl TargetInfo {
    /// The signed SHA-256 digest, when the metadata lists one.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.hashes
            .get("sha256")
            .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
    }

    /// True when the file at `path` has exactly this target's length and every signed hash (so it need
    /// not be downloaded again). False when it is absent or differs; Err when a hash algorithm is
    /// unsupported or the file cannot be read.
    pub fn verify_local(&self, path: &Path) -> Result<bool> {
        use std::io::Read as _;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(path, e)),
        };
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len != self.length {
            return Ok(false);
        }
        let mut digests = client::Digests::new(&self.name, &self.hashes)?;
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, file).take(self.length);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            digests.update(buf.get(..n).unwrap_or_default());
        }
        Ok(digests.check(&self.name).is_ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pinned_ca_that_is_not_a_certificate_is_refused_at_load() {
        let mut config = ClientConfig::new("http://127.0.0.1:1/m", "http://127.0.0.1:1/t");
        config.http = Http::PinnedCa(b"not a certificate".to_vec());
        let err = fetch::Fetcher::new(config.request_timeout, &config.http).unwrap_err();
        assert!(
            matches!(err, Error::Misuse(ref m) if m.contains("pinned CA")),
            "{err}"
        );
    }
}
