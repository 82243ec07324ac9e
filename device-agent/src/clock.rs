//! The device's best knowledge of the time, for judging metadata expiry: the system clock, but never
//! earlier than the time floor (`STATE/time-floor`), the latest time at which this device verified
//! metadata. A device without a real-time clock, or whose clock was reset, then judges expiry at the
//! last moment it knew, not in 1970: a bundle or a server that expired before then is refused. What it
//! cannot know is how much time passed since; README "Offline install" says what that means.
//!
//! The floor only moves forward, and only to a time at which verification succeeded (so never past
//! the expiry of metadata the device accepted); it is written at most once an hour of progress, to
//! spare the flash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ota_tuf::Clock;

use crate::error::Result;

/// Seconds since the Unix epoch by the system clock (0 on a clock before it: every backoff then looks
/// run out). Not floored: for stamps and backoffs, not for judging expiry.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The time floor's file in the state directory.
pub const TIME_FLOOR_FILE: &str = "time-floor";

/// The floor is rewritten only when it advances by at least this much (seconds).
const MIN_STEP_SECS: i64 = 3600;

/// The time floor's file: Unix seconds as decimal text.
#[derive(Clone, Debug)]
pub struct TimeFloor {
    path: PathBuf,
}

impl TimeFloor {
    /// The floor of the state directory `state_dir`.
    pub fn in_dir(state_dir: &Path) -> TimeFloor {
        TimeFloor {
            path: state_dir.join(TIME_FLOOR_FILE),
        }
    }

    /// The floor in Unix seconds; 0 when none was recorded yet, or the file is unreadable (logged: a
    /// lost floor only weakens the protection back to the system clock's).
    pub fn load(&self) -> i64 {
        match ota_fs::read_bounded(&self.path, 64) {
            Ok(bytes) => match std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                Some(unix) => unix,
                None => {
                    tracing::warn!(path = %self.path.display(), "time floor unreadable; using the system clock alone");
                    0
                }
            },
            Err(ota_fs::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "time floor unreadable; using the system clock alone");
                0
            }
        }
    }

    /// Records that metadata verified at `unix` (written when it moves the floor by an hour or more).
    pub fn advance(&self, unix: i64) -> Result<()> {
        let floor = self.load();
        if unix < floor.saturating_add(MIN_STEP_SECS) && floor != 0 {
            return Ok(());
        }
        if unix <= floor {
            return Ok(());
        }
        ota_fs::write_atomic(&self.path, unix.to_string().as_bytes(), 0o644)?;
        Ok(())
    }
}

/// A clock that never reads earlier than a floor.
#[derive(Debug)]
pub struct FlooredClock {
    inner: Arc<dyn Clock>,
    floor: DateTime<Utc>,
}

impl FlooredClock {
    /// `inner`, never earlier than `floor_unix`.
    pub fn new(inner: Arc<dyn Clock>, floor_unix: i64) -> FlooredClock {
        FlooredClock {
            inner,
            floor: DateTime::from_timestamp(floor_unix, 0).unwrap_or_default(),
        }
    }

    /// Whether the inner clock reads earlier than the floor now (no clock, or one reset).
    pub fn behind(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let now = self.inner.now();
        (now < self.floor).then_some((now, self.floor))
    }
}

impl Clock for FlooredClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.now().max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ota_tuf::FixedClock;

    #[test]
    fn a_clock_behind_the_floor_reads_the_floor_and_the_floor_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let floor = TimeFloor::in_dir(dir.path());
        assert_eq!(floor.load(), 0);
        floor.advance(1_800_000_000).unwrap();
        assert_eq!(floor.load(), 1_800_000_000);
        floor.advance(1_700_000_000).unwrap();
        floor.advance(1_800_000_100).unwrap();
        assert_eq!(floor.load(), 1_800_000_000, "back, or less than an hour on: kept");
        floor.advance(1_800_004_000).unwrap();
        assert_eq!(floor.load(), 1_800_004_000);

        // A device with no clock (1970 at boot) judges at the floor; a good clock reads itself.
        let epoch = Arc::new(FixedClock(DateTime::from_timestamp(0, 0).unwrap()));
        let clock = FlooredClock::new(epoch, floor.load());
        assert_eq!(clock.now().timestamp(), 1_800_004_000);
        assert!(clock.behind().is_some());
        let later = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let clock = FlooredClock::new(Arc::new(FixedClock(later)), floor.load());
        assert_eq!(clock.now(), later);
        assert!(clock.behind().is_none());
    }
}
