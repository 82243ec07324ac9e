//! The repository's fixed names (TUF layout, spec version), metadata lifetimes and versions. A leaf:
//! it depends on no other module of the crate (it re-exports the loader's `RepoState` under its old
//! path for `verify`).

use std::collections::HashMap;
use std::num::NonZeroU64;

use sha2::{Digest, Sha256};
use tough::schema::decoded::Decoded;
use tough::schema::{Hashes, Metafile};

use crate::error::{invalid, Result};
// `verify` reads the repository through the loader under these names.

/// The TUF specification version written into every metadata file.
pub const SPEC_VERSION: &str = "1.0.31";
/// The metadata directory inside a repository.
pub const METADATA_DIR: &str = "metadata";
/// The target files directory inside a repository.
pub const TARGETS_DIR: &str = "targets";
/// The root role's name (its metadata file is `V.root.json`).
pub const ROOT_ROLE: &str = "root";
/// The top-level targets role's name.
pub const TARGETS_ROLE: &str = "targets";

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiries {
    /// Root metadata lifetime.
    pub root: jiff::SignedDuration,
    /// Top-level and delegated targets metadata lifetime.
    pub targets: jiff::SignedDuration,
    /// Snapshot lifetime.
    pub snapshot: jiff::SignedDuration,
    /// Timestamp lifetime (the `refresh` cron job must run well within it).
    pub timestamp: jiff::SignedDuration,
}

impl Default for Expiries {
    /// Root 365 days, targets 90 days, snapshot 7 days, timestamp 1 day.
    fn default() -> Self {
        let day = jiff::SignedDuration::from_hours(24);
        Expiries {
            root: day * 365,
            targets: day * 90,
            snapshot: day * 7,
            timestamp: day,
        }
    }
}

/// Parses a lifetime such as `90d`, `12h`, `30m`, `45s` or `2w`.
pub fn parse_lifetime(text: &str) -> Result<jiff::SignedDuration> {
    let bad = || {
        invalid(
            format!("lifetime {text:?}"),
            "expected a number and a unit: s, m, h, d or w (e.g. 90d)",
        )
    };
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (num, unit) = (
        text.get(..split).ok_or_else(bad)?,
        text.get(split..).ok_or_else(bad)?,
    );
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        "w" => n.checked_mul(7 * 86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    if !(1..=100 * 366 * 86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(jiff::SignedDuration::from_secs(secs))
}

/// `now + lifetime`, truncated to whole seconds: TUF metadata writes `YYYY-MM-DDTHH:MM:SSZ` and
/// python-tuf refuses fractional seconds.
pub fn expiry_after(now: jiff::Timestamp, lifetime: jiff::SignedDuration) -> Result<jiff::Timestamp> {
    let t = now
        .checked_add(lifetime)
        .map_err(|e| invalid("expiry", format!("now + {lifetime:?} is out of range: {e}")))?;
    whole_seconds(t)
}

/// Drops the fraction of a second.
pub fn whole_seconds(t: jiff::Timestamp) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_second(t.as_second()).map_err(|e| invalid("timestamp", e.to_string()))
}

/// The current time, in whole seconds.
pub(crate) fn now() -> Result<jiff::Timestamp> {
    whole_seconds(jiff::Timestamp::now())
}

/// A snapshot/timestamp `meta` entry describing these file bytes.
pub(crate) fn metafile(version: NonZeroU64, bytes: &[u8]) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::from(Sha256::digest(bytes).to_vec()),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// `version + 1`.
pub(crate) fn bump(v: NonZeroU64) -> Result<NonZeroU64> {
    v.checked_add(1)
        .ok_or_else(|| invalid("metadata version", "overflows u64"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tough::schema::Timestamp;

    #[test]
    fn lifetimes_parse_and_expiries_have_whole_seconds() {
        assert_eq!(
            parse_lifetime("90d").unwrap(),
            jiff::SignedDuration::from_hours(90 * 24)
        );
        assert_eq!(parse_lifetime("1s").unwrap(), jiff::SignedDuration::from_secs(1));
        for bad in ["", "d", "5x", "-1d", "0s", "99999999999w"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
        let t: jiff::Timestamp = "2026-01-01T00:00:00.75Z".parse().unwrap();
        let e = expiry_after(t, jiff::SignedDuration::from_secs(10)).unwrap();
        assert_eq!(e.subsec_nanosecond(), 0);
        let json = serde_json::to_string(&Timestamp::new(SPEC_VERSION.into(), NonZeroU64::MIN, e)).unwrap();
        assert!(json.contains("\"expires\":\"2026-01-01T00:00:10Z\""), "{json}");
    }
}
