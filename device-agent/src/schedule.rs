//! When to poll next: the configured interval after a good poll, exponential backoff after failures
//! (doubling up to a ceiling), and random jitter on every wait so a fleet spreads its load instead of
//! polling in lockstep after an outage.

use std::time::Duration;

use rand::Rng;

use crate::config::PollConfig;

/// The polling schedule's state: how many polls in a row have failed.
#[derive(Clone, Debug)]
pub struct PollSchedule {
    interval: Duration,
    max_backoff: Duration,
    jitter_percent: u8,
    failures: u32,
}

impl PollSchedule {
    /// A schedule with no failures yet.
    pub fn new(config: &PollConfig) -> PollSchedule {
        PollSchedule {
            interval: Duration::from_secs(config.interval_secs),
            max_backoff: Duration::from_secs(config.max_backoff_secs),
            jitter_percent: config.jitter_percent,
            failures: 0,
        }
    }

    /// Records a poll's outcome and returns how long to wait before the next one.
    pub fn after_poll(&mut self, succeeded: bool, rng: &mut impl Rng) -> Duration {
        if succeeded {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        with_jitter(self.base_delay(), self.jitter_percent, rng)
    }

    /// The delay before jitter: the interval, or after `n` failures `interval * 2^(n-1)` capped at the
    /// ceiling (the first retry comes after one interval, then backs off).
    pub fn base_delay(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(30);
        self.interval
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff.max(self.interval))
    }

    /// Polls failed in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// `base` moved up or down at random by up to `percent` percent.
pub fn with_jitter(base: Duration, percent: u8, rng: &mut impl Rng) -> Duration {
    let millis = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    let spread = millis / 100 * u64::from(percent);
    if spread == 0 {
        return base;
    }
    let offset = rng.gen_range(0..=spread.saturating_mul(2));
    Duration::from_millis(millis.saturating_sub(spread).saturating_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn config() -> PollConfig {
        PollConfig {
            interval_secs: 60,
            jitter_percent: 20,
            max_backoff_secs: 600,
            ..PollConfig::default()
        }
    }

    #[test]
    fn backs_off_exponentially_to_the_ceiling_and_resets() {
        let mut s = PollSchedule::new(&config());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut bases = Vec::new();
        for _ in 0..6 {
            s.after_poll(false, &mut rng);
            bases.push(s.base_delay().as_secs());
        }
        assert_eq!(bases, [60, 120, 240, 480, 600, 600]);
        s.after_poll(true, &mut rng);
        assert_eq!(s.base_delay().as_secs(), 60);
        assert_eq!(s.failures(), 0);
        for _ in 0..100 {
            s.after_poll(false, &mut rng);
        }
        assert_eq!(s.base_delay().as_secs(), 600);
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let base = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..200).map(|_| with_jitter(base, 20, &mut rng)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= Duration::from_secs(80) && *d <= Duration::from_secs(120)));
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50);
        assert_eq!(with_jitter(base, 0, &mut rng), base);
    }
}
