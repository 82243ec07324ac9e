//! What a drill rehearses: the fleet, the releases published in order, and the faults injected.
//!
//! A scenario is read from TOML ([`Scenario::from_toml`], unknown fields refused so a typo cannot silently
//! become "no fault") or built from [`Scenario::default`], which is the README's default drill: a fleet of
//! 50 devices on two boards, a good release and a bad one that fails the health check on a third of the
//! devices, with every kind of fault switched on at a low rate. [`Scenario::validate`] checks what serde
//! cannot (shares within 0 to 1, versions strictly increasing, known hardware ids).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Most devices one drill may simulate (what the machine can hold is checked at the start, see
/// [`crate::limits`]).
pub const MAX_DEVICES: u32 = 1_000_000;
/// Largest firmware image a drill may use, in KiB (the fleet's flash holds each distinct image once).
pub const MAX_IMAGE_KIB: u32 = 4096;
/// Most releases one drill may publish.
pub const MAX_RELEASES: usize = 32;
/// Longest simulated round, in seconds (30 days).
pub const MAX_ROUND_SECONDS: u64 = 30 * 24 * 3600;

/// A whole drill: fleet, releases and faults. See the module doc for the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Seeds every random choice (which devices fail, where power is cut, which requests fault), so a
    /// drill can be replayed.
    pub seed: u64,
    /// Number of simulated devices.
    pub devices: u32,
    /// Devices stepped at the same time (tokio tasks in flight).
    pub concurrency: u32,
    /// Size of every firmware image, in KiB (small: the drill rehearses the fleet, not the flash).
    pub image_kib: u32,
    /// The version every device runs from the factory (published and signed like any release).
    pub factory_version: String,
    /// Channel every device follows and every release is published on.
    pub channel: String,
    /// The hardware mix.
    pub hardware: Vec<HardwareShare>,
    /// Releases published one after the other; each waits until the fleet has settled on the one before.
    pub releases: Vec<ReleasePlan>,
    /// Rounds (one step of every device each) a release gets to settle before the drill moves on and
    /// reports the stragglers as still retrying.
    pub max_rounds_per_release: u32,
    /// Faults injected.
    pub faults: Faults,
    /// Staged rollouts: the waves releases are published with, the simulated clock they open by, and
    /// the rule that halts a bad release.
    pub rollout: RolloutSettings,
}

/// Staged rollouts in the drill. Time is counted in rounds; the devices' rollout clock advances
/// `round_seconds` per round, so a wave `round` rounds after publication opens at that round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSettings {
    /// Simulated seconds per round (the devices' clock for waves; one poll interval).
    pub round_seconds: u64,
    /// The waves of every release that names none of its own; empty means everyone at once.
    pub waves: Vec<WaveRound>,
    /// Rounds over which the last wave's devices spread (earlier waves spread until the next opens).
    pub final_spread_rounds: u32,
    /// Halt a release when its open wave rolls back too much; absent, no release is halted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halt: Option<HaltRule>,
}

/// One wave, in the drill's time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveRound {
    /// Share of the fleet open once this wave is, counting earlier waves, in percent (0.01 to 100).
    pub percent: f64,
    /// Rounds after the release's publication at which the wave opens.
    pub round: u32,
}

/// The automatic halt: once at least `min_devices` of the open wave have finished the release
/// (committed or rolled back) and at least `rollback_percent` of those rolled back, the drill halts
/// the release through the rollout-control role, as `repo-tool rollout halt` would.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltRule {
    /// Share of rollbacks among the open wave's finished devices that halts, in percent.
    pub rollback_percent: f64,
    /// Finished devices the open wave needs before the rule judges.
    pub min_devices: u32,
}

/// One board in the hardware mix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareShare {
    /// Hardware id (ota_release naming rule).
    pub id: String,
    /// Relative weight of this board in the fleet (weights need not add up to anything).
    pub weight: u32,
}

/// One release to publish.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePlan {
    /// Semantic version; strictly increasing along the list and above the factory version.
    pub version: String,
    /// Boards it is built for; empty means every board of the mix.
    #[serde(default)]
    pub hardware: Vec<String>,
    /// Staged rollout share in percent.
    #[serde(default = "hundred")]
    pub rollout_percent: u8,
    /// Share (0 to 1) of devices whose health checks fail once they boot this release.
    #[serde(default)]
    pub health_fail: f64,
    /// This release's own waves (empty: everyone at once); absent, `rollout.waves`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Vec<WaveRound>>,
}

fn hundred() -> u8 {
    100
}

/// Every fault the drill can inject.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Power cuts on the devices' flash.
    pub power: PowerFaults,
    /// Faults of the mirror, drawn per HTTP request.
    pub network: NetworkFaults,
}

/// Power cuts: the share of devices that lose power at a random flash operation of each phase, once per
/// release. A cut is torn (half the words written) in `torn` of the cases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerFaults {
    /// Share of devices cut while downloading and writing the inactive slot.
    pub install: f64,
    /// Share of devices cut while booting a trial and committing it.
    pub commit: f64,
    /// Share of devices cut while rolling back a failed trial.
    pub rollback: f64,
    /// Share of cuts that tear the interrupted write.
    pub torn: f64,
}

/// Mirror faults, each a probability per HTTP request (they are exclusive: at most one per request).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkFaults {
    /// Close the connection without answering.
    pub drop: f64,
    /// Wait `stall_ms` before answering.
    pub stall: f64,
    /// How long a stall lasts, in milliseconds.
    pub stall_ms: u64,
    /// Answer with only the first half of the body (and a matching Content-Length).
    pub truncate: f64,
    /// Answer with some body bytes flipped.
    pub corrupt: f64,
    /// For metadata: serve the version published before the current one (a stale mirror).
    pub stale_metadata: f64,
    /// For metadata: serve it with a byte of the signed part changed (a tampering mirror).
    pub tampered_metadata: f64,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            seed: 6,
            devices: 50,
            concurrency: 64,
            image_kib: 128,
            factory_version: "1.0.0".into(),
            channel: "stable".into(),
            hardware: vec![
                HardwareShare {
                    id: "gateway-rev-c".into(),
                    weight: 3,
                },
                HardwareShare {
                    id: "sensor-hub-2".into(),
                    weight: 1,
                },
            ],
            releases: vec![
                ReleasePlan {
                    version: "1.1.0".into(),
                    hardware: Vec::new(),
                    rollout_percent: 100,
                    health_fail: 0.0,
                    waves: None,
                },
                ReleasePlan {
                    version: "1.2.0".into(),
                    hardware: Vec::new(),
                    rollout_percent: 100,
                    health_fail: 0.3,
                    waves: None,
                },
            ],
            max_rounds_per_release: 60,
            faults: Faults::default(),
            rollout: RolloutSettings::default(),
        }
    }
}

impl Default for RolloutSettings {
    fn default() -> RolloutSettings {
        let wave = |percent, round| WaveRound { percent, round };
        RolloutSettings {
            round_seconds: 3600,
            waves: vec![wave(20.0, 0), wave(60.0, 8), wave(100.0, 12)],
            final_spread_rounds: 2,
            halt: Some(HaltRule {
                rollback_percent: 20.0,
                min_devices: 3,
            }),
        }
    }
}

impl Default for PowerFaults {
    fn default() -> PowerFaults {
        PowerFaults {
            install: 0.1,
            commit: 0.05,
            rollback: 0.1,
            torn: 0.5,
        }
    }
}

impl Default for NetworkFaults {
    fn default() -> NetworkFaults {
        NetworkFaults {
            drop: 0.02,
            stall: 0.01,
            stall_ms: 200,
            truncate: 0.02,
            corrupt: 0.02,
            stale_metadata: 0.02,
            tampered_metadata: 0.02,
        }
    }
}

impl NetworkFaults {
    /// No network fault at all.
    pub fn none() -> NetworkFaults {
        NetworkFaults {
            drop: 0.0,
            stall: 0.0,
            stall_ms: 0,
            truncate: 0.0,
            corrupt: 0.0,
            stale_metadata: 0.0,
            tampered_metadata: 0.0,
        }
    }

    fn shares(&self) -> [(&'static str, f64); 6] {
        [
            ("faults.network.drop", self.drop),
            ("faults.network.stall", self.stall),
            ("faults.network.truncate", self.truncate),
            ("faults.network.corrupt", self.corrupt),
            ("faults.network.stale_metadata", self.stale_metadata),
            ("faults.network.tampered_metadata", self.tampered_metadata),
        ]
    }
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Scenario::from_toml(&text).map_err(|e| match e {
            Error::ScenarioSyntax { source, .. } => Error::ScenarioSyntax {
                path: Some(path.to_owned()),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates a scenario from TOML text; absent fields take the defaults.
    pub fn from_toml(text: &str) -> Result<Scenario> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| Error::ScenarioSyntax {
            path: None,
            source: Box::new(source),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks what serde cannot: counts within bounds, shares within 0 to 1, versions parse and strictly
    /// increase from the factory version, hardware ids valid and known to the mix.
    pub fn validate(&self) -> Result<()> {
        self.check_counts()?;
        ota_release::Channel::new(&self.channel).map_err(|e| Error::ScenarioInvalid {
            field: "channel".into(),
            why: e.to_string(),
        })?;
        let boards = self.check_hardware_mix()?;
        self.check_releases(&boards)?;
        self.check_faults()?;
        self.check_rollout()
    }

    /// The waves release `release` is published with (empty: everyone at once).
    pub fn waves_of<'a>(&'a self, release: &'a ReleasePlan) -> &'a [WaveRound] {
        release.waves.as_deref().unwrap_or(&self.rollout.waves)
    }

    /// The signed rollout plan of `waves` for a release published when the devices' clock reads
    /// `published_unix`: each wave opens at an absolute time, `round` rounds of `round_seconds` later.
    /// `None` for no waves (everyone at once).
    pub fn rollout_plan(
        &self,
        waves: &[WaveRound],
        published_unix: i64,
    ) -> Result<Option<ota_release::RolloutPlan>> {
        if waves.is_empty() {
            return Ok(None);
        }
        let r = &self.rollout;
        let seconds =
            |rounds: u32| i64::from(rounds).saturating_mul(i64::try_from(r.round_seconds).unwrap_or(0));
        let mut plan_waves = Vec::with_capacity(waves.len());
        for w in waves {
            plan_waves.push(ota_release::Wave {
                share_bp: percent_to_bp("waves.percent", w.percent)?,
                opens: ota_release::WaveOpens::AtUnix(published_unix.saturating_add(seconds(w.round))),
            });
        }
        let plan = ota_release::RolloutPlan {
            published_unix,
            waves: plan_waves,
            final_spread_secs: u64::from(r.final_spread_rounds).saturating_mul(r.round_seconds),
        };
        plan.validate().map_err(|e| Error::ScenarioInvalid {
            field: "waves".into(),
            why: e.to_string(),
        })?;
        Ok(Some(plan))
    }

    /// The simulated clock within bounds, every release's waves a valid plan, the halt rule's share a
    /// percent and its device count at least 1.
    fn check_rollout(&self) -> Result<()> {
        let r = &self.rollout;
        if r.round_seconds == 0 || r.round_seconds > MAX_ROUND_SECONDS {
            let why = format!("{} is not within 1 to {MAX_ROUND_SECONDS}", r.round_seconds);
            return invalid("rollout.round_seconds", why);
        }
        self.rollout_plan(&r.waves, 0)
            .map_err(|e| rename(e, "rollout.waves"))?;
        for release in &self.releases {
            let last = self.waves_of(release).last().map_or(0, |w| w.round);
            if last.saturating_add(r.final_spread_rounds) >= self.max_rounds_per_release {
                let why = format!(
                    "release {}'s last wave opens and spreads until round {}, past its window of {} rounds \
                     (max_rounds_per_release)",
                    release.version,
                    last.saturating_add(r.final_spread_rounds),
                    self.max_rounds_per_release
                );
                return invalid("rollout.waves", why);
            }
            if let Some(waves) = &release.waves {
                self.rollout_plan(waves, 0)
                    .map_err(|e| rename(e, &format!("releases.waves (release {})", release.version)))?;
            }
        }
        if let Some(h) = &r.halt {
            if !(0.0..=100.0).contains(&h.rollback_percent) {
                let why = format!("{} is not a percent between 0 and 100", h.rollback_percent);
                return invalid("rollout.halt.rollback_percent", why);
            }
            if h.min_devices == 0 {
                return invalid("rollout.halt.min_devices", "must be at least 1".into());
            }
        }
        Ok(())
    }

    /// Devices, concurrency, image size and rounds within their bounds.
    fn check_counts(&self) -> Result<()> {
        if self.devices == 0 || self.devices > MAX_DEVICES {
            let why = format!("{} is not within 1 to {MAX_DEVICES}", self.devices);
            return invalid("devices", why);
        }
        if self.concurrency == 0 {
            return invalid("concurrency", "must be at least 1".into());
        }
        if self.image_kib < 4 || self.image_kib > MAX_IMAGE_KIB {
            let why = format!("{} is not within 4 to {MAX_IMAGE_KIB}", self.image_kib);
            return invalid("image_kib", why);
        }
        if self.max_rounds_per_release == 0 {
            return invalid("max_rounds_per_release", "must be at least 1".into());
        }
        Ok(())
    }

    /// At least one board, each id valid and listed once, some board with a weight: the ids, for the
    /// releases to name.
    fn check_hardware_mix(&self) -> Result<BTreeSet<&str>> {
        if self.hardware.is_empty() {
            return invalid("hardware", "the fleet needs at least one board".into());
        }
        let mut ids = BTreeSet::new();
        for h in &self.hardware {
            ota_release::HardwareId::new(&h.id).map_err(|e| Error::ScenarioInvalid {
                field: "hardware.id".into(),
                why: e.to_string(),
            })?;
            if !ids.insert(h.id.as_str()) {
                return invalid("hardware.id", format!("{} is listed twice", h.id));
            }
        }
        if self.hardware.iter().all(|h| h.weight == 0) {
            let why = "at least one board needs a weight above 0".into();
            return invalid("hardware.weight", why);
        }
        Ok(ids)
    }

    /// Releases in version order after the factory version, for boards in the mix, with valid shares.
    fn check_releases(&self, boards: &BTreeSet<&str>) -> Result<()> {
        if self.releases.len() > MAX_RELEASES {
            return invalid("releases", format!("more than {MAX_RELEASES} releases"));
        }
        let mut previous = parse_version("factory_version", &self.factory_version)?;
        for r in &self.releases {
            let v = parse_version("releases.version", &r.version)?;
            if v <= previous {
                let why = format!("{v} does not come after {previous}: releases are published in order");
                return invalid("releases.version", why);
            }
            previous = v;
            if let Some(h) = r.hardware.iter().find(|h| !boards.contains(h.as_str())) {
                let why = format!(
                    "release {} names {h}, which is not in the hardware mix",
                    r.version
                );
                return invalid("releases.hardware", why);
            }
            if r.rollout_percent > 100 {
                let why = format!("{} % is over 100 % (release {})", r.rollout_percent, r.version);
                return invalid("releases.rollout_percent", why);
            }
            check_share("releases.health_fail", r.health_fail)?;
        }
        Ok(())
    }

    /// Power-cut shares within 0 to 1; network faults within 0 to 1 each and at most half of all
    /// requests together; stalls under 10 s.
    fn check_faults(&self) -> Result<()> {
        let p = &self.faults.power;
        for (field, share) in [
            ("faults.power.install", p.install),
            ("faults.power.commit", p.commit),
            ("faults.power.rollback", p.rollback),
            ("faults.power.torn", p.torn),
        ] {
            check_share(field, share)?;
        }
        let n = &self.faults.network;
        let mut total = 0.0;
        for (field, share) in n.shares() {
            check_share(field, share)?;
            total += share;
        }
        if total > 0.5 {
            let why = format!(
                "the faults add up to {total:.2} of all requests; above 0.5 no device would converge"
            );
            return invalid("faults.network", why);
        }
        if n.stall_ms > 10_000 {
            return invalid(
                "faults.network.stall_ms",
                format!("{} ms is over 10 s", n.stall_ms),
            );
        }
        Ok(())
    }

    /// The firmware image size in bytes.
    pub fn image_bytes(&self) -> u64 {
        u64::from(self.image_kib) * 1024
    }
}

fn parse_version(field: &str, value: &str) -> Result<ota_release::Version> {
    ota_release::parse_version(value).map_err(|e| Error::ScenarioInvalid {
        field: field.to_owned(),
        why: e.to_string(),
    })
}

/// A scenario refused for `field`, and why.
fn invalid<T>(field: &str, why: String) -> Result<T> {
    Err(Error::ScenarioInvalid {
        field: field.to_owned(),
        why,
    })
}

/// A scenario error moved to `field` (the same complaint, said of the field the user wrote).
fn rename(e: Error, field: &str) -> Error {
    match e {
        Error::ScenarioInvalid { why, .. } => Error::ScenarioInvalid {
            field: field.to_owned(),
            why,
        },
        other => other,
    }
}

/// A wave's percent in basis points (0.01 % to 100 %).
fn percent_to_bp(field: &str, percent: f64) -> Result<u16> {
    if !(0.01..=100.0).contains(&percent) {
        return invalid(field, format!("{percent} is not a percent between 0.01 and 100"));
    }
    // Within 1 to 10,000 after the check above: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((percent * 100.0).round() as u16)
}

fn check_share(field: &str, share: f64) -> Result<()> {
    if (0.0..=1.0).contains(&share) {
        Ok(())
    } else {
        Err(Error::ScenarioInvalid {
            field: field.to_owned(),
            why: format!("{share} is not a share between 0 and 1"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_round_trips_through_toml() {
        let s = Scenario::default();
        s.validate().unwrap();
        let text = toml::to_string(&s).unwrap();
        assert_eq!(Scenario::from_toml(&text).unwrap(), s);
    }

    #[test]
    fn shipped_default_file_matches_the_built_in_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/default.toml");
        assert_eq!(Scenario::from_file(&path).unwrap(), Scenario::default());
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let err = Scenario::from_toml("devices = 3\n[faults.network]\ndorp = 0.1\n").unwrap_err();
        // The parser's words are the cause, printed after the message (`{:#}` in ota-drill).
        let chain = device_agent::error_chain(&err);
        assert!(chain.contains("dorp"), "{chain}");
    }

    #[test]
    fn versions_must_increase() {
        let err =
            Scenario::from_toml("[[releases]]\nversion = \"1.2.0\"\n[[releases]]\nversion = \"1.1.0\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("does not come after"), "{err}");
    }

    #[test]
    fn share_out_of_range_is_refused() {
        let err = Scenario::from_toml("[faults.power]\ninstall = 1.5\n").unwrap_err();
        assert!(err.to_string().contains("faults.power.install"), "{err}");
    }

    #[test]
    fn release_for_unknown_board_is_refused() {
        let err =
            Scenario::from_toml("[[releases]]\nversion = \"2.0.0\"\nhardware = [\"toaster\"]\n").unwrap_err();
        assert!(err.to_string().contains("toaster"), "{err}");
    }

    #[test]
    fn unknown_key_in_the_halt_rule_is_refused_with_line_and_column() {
        let text = "[rollout.halt]\nrollback_percent = 20.0\nmin_devices = 3\nmin_device = 4\n";
        let err = Scenario::from_toml(text).unwrap_err();
        let chain = device_agent::error_chain(&err);
        assert!(
            chain.contains("min_device") && chain.contains("line 4, column 1"),
            "{chain}"
        );
        let err = Scenario::from_toml("[[rollout.waves]]\npercent = 100.0\nround = 0\nat = 3\n").unwrap_err();
        let chain = device_agent::error_chain(&err);
        assert!(
            chain.contains("`at`") && chain.contains("line 4, column 1"),
            "{chain}"
        );
    }

    #[test]
    fn waves_must_make_a_valid_plan_within_the_window() {
        let not_whole = "[[rollout.waves]]\npercent = 50.0\nround = 0\n";
        let err = Scenario::from_toml(&format!("{not_whole}[rollout]\n")).unwrap_err();
        assert!(err.to_string().contains("rollout.waves"), "{err}");
        let too_late = "max_rounds_per_release = 10\n[[rollout.waves]]\npercent = 100.0\nround = 9\n";
        let err = Scenario::from_toml(too_late).unwrap_err();
        assert!(err.to_string().contains("past its window"), "{err}");
        let own = "[[releases]]\nversion = \"2.0.0\"\nwaves = [{ percent = 10.0, round = 3 }, { percent = 5.0, round = 4 }]\n";
        let err = Scenario::from_toml(own).unwrap_err();
        assert!(err.to_string().contains("release 2.0.0"), "{err}");
        let halt = "[rollout.halt]\nrollback_percent = 120.0\nmin_devices = 1\n";
        let err = Scenario::from_toml(halt).unwrap_err();
        assert!(err.to_string().contains("rollout.halt.rollback_percent"), "{err}");
        let everyone = Scenario::from_toml("[[releases]]\nversion = \"2.0.0\"\nwaves = []\n").unwrap();
        assert!(everyone.rollout_plan(&[], 0).unwrap().is_none());
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let s = Scenario::from_toml("devices = 1000\n").unwrap();
        assert_eq!(s.devices, 1000);
        assert_eq!(s.releases, Scenario::default().releases);
    }
}
