//! Rollout waves: which devices may take a release, and from when.
//!
//! A [`RolloutPlan`] splits the fleet into waves by cumulative share (1 %, then 10 %, ...), each opening
//! at its own time. A device's place is a pure function of its [`RolloutSeed`] (derived from its
//! identity, so it is the same after a reboot, a power cut or a re-provision with the same key) and of
//! the plan; the caller passes the clock in, so the publisher's `status`, the device's choice and a drill
//! all compute the same answer (Bottlerocket's `update_ready(seed, time)` is the model).
//!
//! Within a wave, devices spread evenly over the wave's window (until the next wave opens; for the last
//! wave, [`RolloutPlan::final_spread_secs`]), so the repository never sees a whole wave poll at once.
//!
//! Shares and times are integers (basis points, Unix seconds): TUF's canonical JSON has no floats.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Basis points in the whole fleet (100 %).
pub const WHOLE_FLEET_BP: u16 = 10_000;
/// Most waves one plan may have.
pub const MAX_WAVES: usize = 16;
/// Domain separation for the seed, so it is independent of any other use of the device id's hash.
const SEED_DOMAIN: &[u8] = b"ota-rollout-seed-v1\0";

/// A device's stable position in every rollout: 64 bits of a hash of its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RolloutSeed(pub u64);

impl RolloutSeed {
    /// The seed of the device with this id (the fingerprint of its identity's public key).
    pub fn of_device(device_id: &str) -> RolloutSeed {
        let digest: [u8; 32] = Sha256::new()
            .chain_update(SEED_DOMAIN)
            .chain_update(device_id.as_bytes())
            .finalize()
            .into();
        let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = digest;
        RolloutSeed(u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]))
    }
}

/// When a wave opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WaveOpens {
    /// At this absolute time (Unix seconds, UTC).
    AtUnix(i64),
    /// This many seconds after the release's publication.
    AfterSecs(u64),
}

/// One wave: the fleet share it opens the release to (cumulative, in basis points) and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Share of the fleet that may take the release once this wave is open, counting earlier waves
    /// (basis points: 100 is 1 %, 10,000 everyone).
    pub share_bp: u16,
    /// When it opens.
    pub opens: WaveOpens,
}

/// Why a rollout plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// No waves at all.
    #[error("a rollout plan needs at least one wave")]
    Empty,
    /// More than [`MAX_WAVES`].
    #[error("a rollout plan has {0} waves, more than the {MAX_WAVES} allowed")]
    TooManyWaves(usize),
    /// Shares must grow strictly, wave after wave.
    #[error("wave {wave} opens {share_bp} bp, not more than the wave before it")]
    ShareNotIncreasing {
        /// 1-based wave number.
        wave: usize,
        /// Its share.
        share_bp: u16,
    },
    /// The last wave must open the release to the whole fleet.
    #[error("the last wave opens {0} bp of the fleet, not all of it ({WHOLE_FLEET_BP})")]
    LastWaveNotWhole(u16),
    /// A wave opens before the one before it.
    #[error("wave {0} opens before the wave before it")]
    OpensEarlier(usize),
    /// A time that does not fit the clock's range.
    #[error("wave {0}'s opening time is out of range")]
    TimeOutOfRange(usize),
}

/// A release's rollout: its publication time and its waves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// When the release was published (Unix seconds, UTC); [`WaveOpens::AfterSecs`] counts from here.
    pub published_unix: i64,
    /// The waves, in order.
    pub waves: Vec<Wave>,
    /// The window over which the last wave's devices spread (earlier waves spread until the next opens).
    pub final_spread_secs: u64,
}

/// Where one device stands in one rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WavePlace {
    /// The device's wave, 0-based.
    pub wave: usize,
    /// When the device may start (Unix seconds): its wave's opening plus its spread offset.
    pub eligible_unix: i64,
}

/// One day, in seconds.
const DAY: u64 = 24 * 60 * 60;

impl RolloutPlan {
    /// The default plan: 1 % at publication, 10 % a day later, 50 % after three days, everyone after
    /// a week, the last wave spread over a day.
    pub fn default_from(published_unix: i64) -> RolloutPlan {
        let wave = |share_bp, after_days: u64| Wave {
            share_bp,
            opens: WaveOpens::AfterSecs(after_days * DAY),
        };
        RolloutPlan {
            published_unix,
            waves: vec![
                wave(100, 0),
                wave(1_000, 1),
                wave(5_000, 3),
                wave(WHOLE_FLEET_BP, 7),
            ],
            final_spread_secs: DAY,
        }
    }

    /// Everyone at once (`--waves now`): one wave of the whole fleet at publication, no spread.
    pub fn everyone_now(published_unix: i64) -> RolloutPlan {
        RolloutPlan {
            published_unix,
            waves: vec![Wave {
                share_bp: WHOLE_FLEET_BP,
                opens: WaveOpens::AfterSecs(0),
            }],
            final_spread_secs: 0,
        }
    }

    /// Checks what serde cannot: at least one wave and at most [`MAX_WAVES`], shares strictly growing
    /// up to the whole fleet, opening times never earlier than the wave before.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.waves.is_empty() {
            return Err(PlanError::Empty);
        }
        if self.waves.len() > MAX_WAVES {
            return Err(PlanError::TooManyWaves(self.waves.len()));
        }
        let mut last_share = 0u16;
        let mut last_open = i64::MIN;
        for (i, wave) in self.waves.iter().enumerate() {
            if wave.share_bp <= last_share || wave.share_bp > WHOLE_FLEET_BP {
                return Err(PlanError::ShareNotIncreasing {
                    wave: i + 1,
                    share_bp: wave.share_bp,
                });
            }
            let opens = self.opening_unix(i)?;
            if opens < last_open {
                return Err(PlanError::OpensEarlier(i + 1));
            }
            (last_share, last_open) = (wave.share_bp, opens);
        }
        if last_share != WHOLE_FLEET_BP {
            return Err(PlanError::LastWaveNotWhole(last_share));
        }
        Ok(())
    }

    /// When wave `index` (0-based) opens, in Unix seconds.
    pub fn opening_unix(&self, index: usize) -> Result<i64, PlanError> {
        let wave = self
            .waves
            .get(index)
            .ok_or(PlanError::TimeOutOfRange(index + 1))?;
        match wave.opens {
            WaveOpens::AtUnix(t) => Ok(t),
            WaveOpens::AfterSecs(secs) => i64::try_from(secs)
                .ok()
                .and_then(|s| self.published_unix.checked_add(s))
                .ok_or(PlanError::TimeOutOfRange(index + 1)),
        }
    }

    /// The device's wave and the moment it may start. The plan must be [validated](Self::validate).
    pub fn place(&self, seed: RolloutSeed) -> Result<WavePlace, PlanError> {
        let position = u128::from(seed.0);
        let mut lower = 0u128;
        for (wave, w) in self.waves.iter().enumerate() {
            let upper = boundary(w.share_bp);
            if position < upper || w.share_bp >= WHOLE_FLEET_BP {
                let opens = self.opening_unix(wave)?;
                let window = self.window_secs(wave)?;
                // Evenly over the window: the device's share of the way through its wave's seeds.
                let offset = (position - lower) * u128::from(window) / (upper - lower).max(1);
                let offset = i64::try_from(offset).map_err(|_| PlanError::TimeOutOfRange(wave + 1))?;
                let eligible_unix = opens
                    .checked_add(offset)
                    .ok_or(PlanError::TimeOutOfRange(wave + 1))?;
                return Ok(WavePlace { wave, eligible_unix });
            }
            lower = upper;
        }
        Err(PlanError::LastWaveNotWhole(
            self.waves.last().map_or(0, |w| w.share_bp),
        ))
    }

    /// Whether the device may start the release at `now_unix`.
    pub fn is_eligible(&self, seed: RolloutSeed, now_unix: i64) -> Result<bool, PlanError> {
        Ok(self.place(seed)?.eligible_unix <= now_unix)
    }

    /// The seconds over which wave `index`'s devices spread.
    fn window_secs(&self, index: usize) -> Result<u64, PlanError> {
        if index + 1 >= self.waves.len() {
            return Ok(self.final_spread_secs);
        }
        let gap = self.opening_unix(index + 1)? - self.opening_unix(index)?;
        Ok(u64::try_from(gap).unwrap_or(0))
    }
}

/// The first seed past a cumulative share: `share_bp / 10,000` of the 2^64 seeds.
fn boundary(share_bp: u16) -> u128 {
    (u128::from(share_bp) << 64) / u128::from(WHOLE_FLEET_BP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PUBLISHED: i64 = 1_780_000_000;

    fn ids(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| hex::encode(Sha256::digest(format!("device-{i}"))))
    }

    /// Pearson's chi-square statistic of observed counts against expected ones.
    fn chi_square(observed: &[u64], expected: &[f64]) -> f64 {
        observed
            .iter()
            .zip(expected)
            .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
            .sum()
    }

    #[test]
    fn the_default_plan_is_valid_and_opens_to_everyone_in_a_week() {
        let plan = RolloutPlan::default_from(PUBLISHED);
        plan.validate().unwrap();
        assert_eq!(plan.opening_unix(3).unwrap(), PUBLISHED + 7 * 86_400);
        RolloutPlan::everyone_now(PUBLISHED).validate().unwrap();
    }

    /// 100,000 identities over the default plan's four waves (1 %, 9 %, 40 %, 50 %). Chi-square with
    /// 3 degrees of freedom; 16.27 is its 0.1 % critical value: a fair assignment exceeds it once in a
    /// thousand identity sets, and these identities are fixed, so the test is deterministic.
    #[test]
    fn waves_get_their_share_of_100000_identities() {
        let plan = RolloutPlan::default_from(PUBLISHED);
        let mut counts = [0u64; 4];
        for id in ids(100_000) {
            let place = plan.place(RolloutSeed::of_device(&id)).unwrap();
            counts[place.wave] += 1;
        }
        let expected = [1_000.0, 9_000.0, 40_000.0, 50_000.0];
        let chi2 = chi_square(&counts, &expected);
        assert!(chi2 < 16.27, "chi-square {chi2:.2} over {counts:?}");
    }

    /// Within a wave, devices spread evenly over its window: the 40 % wave's devices over 20 equal slices
    /// of its four days. 19 degrees of freedom, 0.1 % critical value 43.82.
    #[test]
    fn devices_spread_evenly_over_their_waves_window() {
        let plan = RolloutPlan::default_from(PUBLISHED);
        let (opens, window) = (plan.opening_unix(2).unwrap(), 4 * 86_400);
        let mut slices = [0u64; 20];
        for id in ids(100_000) {
            let place = plan.place(RolloutSeed::of_device(&id)).unwrap();
            if place.wave == 2 {
                let at = place.eligible_unix - opens;
                assert!((0..window).contains(&at), "{at} outside the window");
                slices[usize::try_from(at * 20 / window).unwrap()] += 1;
            }
        }
        let total: u64 = slices.iter().sum();
        let expected = vec![total as f64 / 20.0; 20];
        let chi2 = chi_square(&slices, &expected);
        assert!(chi2 < 43.82, "chi-square {chi2:.2} over {slices:?}");
    }

    #[test]
    fn a_device_waits_for_its_moment_and_not_longer() {
        let plan = RolloutPlan::default_from(PUBLISHED);
        let seed = RolloutSeed::of_device("some-device");
        let place = plan.place(seed).unwrap();
        assert!(!plan.is_eligible(seed, place.eligible_unix - 1).unwrap());
        assert!(plan.is_eligible(seed, place.eligible_unix).unwrap());
        let now = RolloutPlan::everyone_now(PUBLISHED);
        assert!(now.is_eligible(seed, PUBLISHED).unwrap());
    }

    #[test]
    fn bad_plans_are_refused_naming_the_wave() {
        let mut plan = RolloutPlan::default_from(PUBLISHED);
        plan.waves[2].share_bp = 500;
        assert_eq!(
            plan.validate(),
            Err(PlanError::ShareNotIncreasing {
                wave: 3,
                share_bp: 500
            })
        );
        let mut plan = RolloutPlan::default_from(PUBLISHED);
        plan.waves[3].share_bp = 9_999;
        assert_eq!(plan.validate(), Err(PlanError::LastWaveNotWhole(9_999)));
        let mut plan = RolloutPlan::default_from(PUBLISHED);
        plan.waves[1].opens = WaveOpens::AtUnix(PUBLISHED - 1);
        assert_eq!(plan.validate(), Err(PlanError::OpensEarlier(2)));
        let mut plan = RolloutPlan::default_from(PUBLISHED);
        plan.waves.clear();
        assert_eq!(plan.validate(), Err(PlanError::Empty));
        let mut plan = RolloutPlan::default_from(i64::MAX - 10);
        assert!(plan.validate().is_err());
        plan.published_unix = 0;
        plan.waves = vec![plan.waves[0]; MAX_WAVES + 1];
        assert_eq!(plan.validate(), Err(PlanError::TooManyWaves(MAX_WAVES + 1)));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = r#"{"published_unix":0,"waves":[{"share_bp":10000,"opens":{"after_secs":0}}],"final_spread_secs":0,"x":1}"#;
        assert!(serde_json::from_str::<RolloutPlan>(text).is_err());
        let ok = text.replace(r#","x":1"#, "");
        let plan: RolloutPlan = serde_json::from_str(&ok).unwrap();
        assert_eq!(plan, RolloutPlan::everyone_now(0));
    }

    proptest! {
        /// The same identity lands in the same wave at the same moment, however often it asks, and a
        /// device in an earlier wave never becomes eligible after one in a later wave of the same plan.
        #[test]
        fn the_same_identity_always_gets_the_same_place(id in "[0-9a-f]{1,64}", other in "[0-9a-f]{1,64}") {
            let plan = RolloutPlan::default_from(PUBLISHED);
            let a = plan.place(RolloutSeed::of_device(&id)).unwrap();
            prop_assert_eq!(a, plan.place(RolloutSeed::of_device(&id)).unwrap());
            let b = plan.place(RolloutSeed::of_device(&other)).unwrap();
            if a.wave < b.wave {
                prop_assert!(a.eligible_unix <= b.eligible_unix);
            }
        }
    }
}
