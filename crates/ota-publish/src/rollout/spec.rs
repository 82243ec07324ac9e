//! `--waves SPEC`: a rollout plan as written on the command line, before its publication time is
//! known. `default`, `now`, or `SHARE@WHEN,...[,spread=DURATION]` (`1%@0,10%@1d,100%@3d,spread=12h`).

use std::str::FromStr;

use ota_release::{PlanError, RolloutPlan, Wave, WaveOpens, WHOLE_FLEET_BP};

use crate::error::{invalid, Error, Result};

/// A rollout plan whose offsets count from a publication time given later ([`WavesSpec::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WavesSpec {
    /// [`RolloutPlan::default_from`]: 1 %, 10 % after a day, 50 % after three, everyone after a week.
    Default,
    /// Everyone at once.
    Now,
    /// These waves, and the spread of the last one.
    Waves {
        /// The waves, in order (shares cumulative, in basis points).
        waves: Vec<Wave>,
        /// Seconds over which the last wave's devices spread.
        final_spread_secs: u64,
    },
}

impl WavesSpec {
    /// The plan for a release (or a replacement plan) published at `published_unix`, validated.
    pub fn plan(&self, published_unix: i64) -> Result<RolloutPlan> {
        let plan = match self {
            WavesSpec::Default => RolloutPlan::default_from(published_unix),
            WavesSpec::Now => RolloutPlan::everyone_now(published_unix),
            WavesSpec::Waves {
                waves,
                final_spread_secs,
            } => RolloutPlan {
                published_unix,
                waves: waves.clone(),
                final_spread_secs: *final_spread_secs,
            },
        };
        plan.validate().map_err(|source| self.refused(source))?;
        Ok(plan)
    }

    /// The plan a release carries: none for [`WavesSpec::Now`] (no `waves` field means everyone at
    /// once, and devices older than waves still read the release), else [`WavesSpec::plan`].
    pub fn release_plan(&self, published_unix: i64) -> Result<Option<RolloutPlan>> {
        match self {
            WavesSpec::Now => Ok(None),
            _ => self.plan(published_unix).map(Some),
        }
    }

    fn refused(&self, source: PlanError) -> Error {
        Error::Plan {
            what: format!("--waves {self}"),
            source,
        }
    }
}

impl std::fmt::Display for WavesSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WavesSpec::Default => f.write_str("default"),
            WavesSpec::Now => f.write_str("now"),
            WavesSpec::Waves {
                waves,
                final_spread_secs,
            } => {
                for w in waves {
                    let when = match w.opens {
                        WaveOpens::AtUnix(t) => {
                            jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string())
                        }
                        WaveOpens::AfterSecs(s) => format!("{s}s"),
                    };
                    write!(f, "{}@{when},", share_text(w.share_bp))?;
                }
                write!(f, "spread={final_spread_secs}s")
            }
        }
    }
}

impl FromStr for WavesSpec {
    type Err = Error;

    /// `default`, `now`, or comma-separated `SHARE@WHEN` (SHARE a percent with up to two decimals,
    /// WHEN an offset from publication such as `0`, `90s`, `30m`, `6h`, `1d`, `2w`, or an RFC 3339
    /// UTC time), optionally ending with `spread=DURATION` (the last wave's spread, default 0).
    fn from_str(text: &str) -> Result<WavesSpec> {
        match text {
            "default" => return Ok(WavesSpec::Default),
            "now" => return Ok(WavesSpec::Now),
            _ => {}
        }
        let bad = |why: String| invalid(format!("--waves {text:?}"), why);
        let mut items: Vec<&str> = text.split(',').map(str::trim).collect();
        let mut final_spread_secs = 0;
        if let Some(spread) = items.last().and_then(|last| last.strip_prefix("spread=")) {
            final_spread_secs = parse_duration_secs(spread)
                .ok_or_else(|| bad(format!("spread {spread:?} is not a duration such as 12h")))?;
            items.pop();
        }
        let mut waves = Vec::with_capacity(items.len());
        for item in items {
            let (share, when) = item.split_once('@').ok_or_else(|| {
                bad(format!(
                    "{item:?} is not SHARE@WHEN (e.g. 10%@1d); expected `default`, `now` or items like \
                     1%@0,10%@1d,100%@3d,spread=12h"
                ))
            })?;
            let share_bp = parse_share_bp(share)
                .ok_or_else(|| bad(format!("{share:?} is not a share such as 1%, 0.5% or 100%")))?;
            let opens = parse_opens(when).ok_or_else(|| {
                bad(format!(
                    "{when:?} is neither an offset (0, 90s, 30m, 6h, 1d) nor an RFC 3339 UTC time"
                ))
            })?;
            waves.push(Wave { share_bp, opens });
        }
        Ok(WavesSpec::Waves {
            waves,
            final_spread_secs,
        })
    }
}

/// `1%` → 100, `0.5%` → 50, `100%` → 10,000; at most two decimals, more than 0 and at most 100 %.
pub fn parse_share_bp(text: &str) -> Option<u16> {
    let number = text.strip_suffix('%')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(fraction.is_empty() || digits(fraction)) || fraction.len() > 2 {
        return None;
    }
    let hundredths: u32 = format!("{fraction:0<2}").parse().ok()?;
    let bp = whole
        .parse::<u32>()
        .ok()?
        .checked_mul(100)?
        .checked_add(hundredths)?;
    u16::try_from(bp)
        .ok()
        .filter(|bp| (1..=WHOLE_FLEET_BP).contains(bp))
}

/// `0`, `90s`, `30m`, `6h`, `1d`, `2w` → seconds (a bare number is seconds).
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let n: u64 = number.parse().ok()?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn parse_opens(text: &str) -> Option<WaveOpens> {
    if let Some(secs) = parse_duration_secs(text) {
        return Some(WaveOpens::AfterSecs(secs));
    }
    let at: jiff::Timestamp = text.parse().ok()?;
    Some(WaveOpens::AtUnix(at.as_second()))
}

/// Basis points as a percent (`50` → `0.5%`).
pub fn share_text(bp: u16) -> String {
    match bp % 100 {
        0 => format!("{}%", bp / 100),
        r if r % 10 == 0 => format!("{}.{}%", bp / 100, r / 10),
        r => format!("{}.{r:02}%", bp / 100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_the_plans_they_say() {
        let spec: WavesSpec = "1%@0,10%@1d,100%@3d,spread=12h".parse().unwrap();
        let plan = spec.plan(1_000).unwrap();
        assert_eq!(plan.waves.len(), 3);
        assert_eq!(plan.waves[1].share_bp, 1_000);
        assert_eq!(plan.waves[2].opens, WaveOpens::AfterSecs(3 * 86_400));
        assert_eq!(plan.final_spread_secs, 12 * 3_600);
        assert_eq!(plan.published_unix, 1_000);
        let abs: WavesSpec = "0.5%@0,100%@2026-12-08T00:00:00Z".parse().unwrap();
        let plan = abs.plan(1_000).unwrap();
        assert_eq!(plan.waves[0].share_bp, 50);
        assert_eq!(plan.waves[1].opens, WaveOpens::AtUnix(1_796_688_000));
        assert_eq!(plan.final_spread_secs, 0);
        assert_eq!("now".parse::<WavesSpec>().unwrap().release_plan(5).unwrap(), None);
        assert_eq!(
            "default".parse::<WavesSpec>().unwrap().plan(5).unwrap(),
            RolloutPlan::default_from(5)
        );
    }

    #[test]
    fn bad_specs_are_refused_naming_the_item() {
        for (bad, says) in [
            ("10%", "SHARE@WHEN"),
            ("10@1d", "share"),
            ("0.125%@0", "share"),
            ("101%@0", "share"),
            ("0%@0", "share"),
            ("100%@tomorrow", "offset"),
            ("100%@0,spread=soon", "spread"),
        ] {
            let err = bad.parse::<WavesSpec>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        // Parses, but the plan's rules refuse it: not ending at 100 %, shares not growing.
        let err = "10%@0,50%@1d".parse::<WavesSpec>().unwrap().plan(0).unwrap_err();
        assert!(matches!(err, Error::Plan { .. }), "{err}");
        let err = "50%@0,10%@1d,100%@2d".parse::<WavesSpec>().unwrap().plan(0);
        assert!(err.is_err());
    }

    #[test]
    fn shares_and_durations_read_as_written() {
        assert_eq!(parse_share_bp("1%"), Some(100));
        assert_eq!(parse_share_bp("0.5%"), Some(50));
        assert_eq!(parse_share_bp("0.01%"), Some(1));
        assert_eq!(parse_share_bp("100%"), Some(10_000));
        assert_eq!(parse_share_bp(".5%"), None);
        assert_eq!(parse_duration_secs("0"), Some(0));
        assert_eq!(parse_duration_secs("90s"), Some(90));
        assert_eq!(parse_duration_secs("30m"), Some(1_800));
        assert_eq!(parse_duration_secs("1d"), Some(86_400));
        assert_eq!(parse_duration_secs("d"), None);
        assert_eq!(parse_duration_secs("-1d"), None);
        assert_eq!(share_text(50), "0.5%");
        assert_eq!(share_text(1), "0.01%");
        assert_eq!(share_text(10_000), "100%");
    }
}
