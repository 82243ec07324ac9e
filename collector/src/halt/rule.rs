//! [`HaltRule`]: when the collector halts a rollout, read from a TOML file (`[[rule]]` tables) or from
//! a `key=value,...` text on the command line, and checked before the collector starts.

use std::fmt;

use ota_release::{Channel, HardwareId};
use serde::Deserialize;

use crate::{Error, Result};

/// Halt a rollout once at least `min_reports` devices of its open wave have reported an end (committed,
/// rolled back or failed) and at least `rollback_percent` of those rolled back. A rollout is one release
/// (version) on one channel, over every hardware id it is published for; `hardware`, `channel` and
/// `release` narrow the rule (absent: any).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltRule {
    /// Only this hardware id.
    #[serde(default)]
    pub hardware: Option<String>,
    /// Only this channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// Only this release version.
    #[serde(default)]
    pub release: Option<String>,
    /// Share of rollbacks among the open wave's ended devices that halts, in percent (above 0, at most
    /// 100).
    pub rollback_percent: f64,
    /// Ended devices of the open wave needed before the rule judges (at least 1).
    pub min_reports: u32,
}

/// A rules file: `[[rule]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<HaltRule>,
}

impl HaltRule {
    /// Parses `rollback_percent=20,min_reports=3[,hardware=..][,channel=..][,release=..]` and checks it.
    pub fn parse_spec(spec: &str) -> Result<HaltRule> {
        let bad = |why: String| Error::HaltRule {
            rule: spec.to_owned(),
            why,
        };
        let mut table = toml::Table::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            let value = match key {
                "rollback_percent" => toml::Value::Float(
                    value
                        .trim_end_matches('%')
                        .parse()
                        .map_err(|_| bad(format!("rollback_percent {value:?} is not a number")))?,
                ),
                "min_reports" => toml::Value::Integer(
                    value
                        .parse()
                        .map_err(|_| bad(format!("min_reports {value:?} is not a whole number")))?,
                ),
                _ => toml::Value::String(value.to_owned()),
            };
            if table.insert(key.to_owned(), value).is_some() {
                return Err(bad(format!("{key} given twice")));
            }
        }
        let rule: HaltRule = table
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().to_owned()))?;
        rule.validate()?;
        Ok(rule)
    }

    /// Parses a rules file's text (`[[rule]]` tables) and checks every rule.
    pub fn parse_file(text: &str, path: &str) -> Result<Vec<HaltRule>> {
        let file: RulesFile = toml::from_str(text).map_err(|e| Error::HaltRule {
            rule: path.to_owned(),
            why: e.to_string().trim().replace('\n', " "),
        })?;
        for rule in &file.rule {
            rule.validate()?;
        }
        Ok(file.rule)
    }

    /// Checks the share (above 0, at most 100), the count (at least 1) and the names.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Error::HaltRule {
            rule: self.to_string(),
            why,
        };
        let p = self.rollback_percent;
        if !p.is_finite() || p <= 0.0 || p > 100.0 {
            return Err(bad(format!(
                "rollback_percent {p} must be above 0 and at most 100"
            )));
        }
        if self.min_reports == 0 {
            return Err(bad("min_reports must be at least 1".into()));
        }
        if let Some(h) = &self.hardware {
            HardwareId::new(h).map_err(|e| bad(format!("hardware: {e}")))?;
        }
        if let Some(c) = &self.channel {
            Channel::new(c).map_err(|e| bad(format!("channel: {e}")))?;
        }
        if let Some(v) = &self.release {
            ota_release::parse_version(v).map_err(|e| bad(format!("release: {e}")))?;
        }
        Ok(())
    }

    /// Whether the rule covers the release `version` of `channel` (any of its hardware ids).
    pub fn covers(&self, channel: &str, version: &str) -> bool {
        self.channel.as_deref().is_none_or(|c| c == channel)
            && self.release.as_deref().is_none_or(|v| v == version)
    }

    /// Whether the rule covers hardware id `hardware`.
    pub fn covers_hardware(&self, hardware: &str) -> bool {
        self.hardware.as_deref().is_none_or(|h| h == hardware)
    }

    /// Whether `rolled_back` of `judged` trips the rule.
    pub fn trips(&self, judged: u64, rolled_back: u64) -> bool {
        judged >= u64::from(self.min_reports)
            && (rolled_back as f64) * 100.0 >= self.rollback_percent * (judged as f64)
    }
}

impl fmt::Display for HaltRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rollback_percent={},min_reports={}",
            self.rollback_percent, self.min_reports
        )?;
        for (key, value) in [
            ("hardware", &self.hardware),
            ("channel", &self.channel),
            ("release", &self.release),
        ] {
            if let Some(v) = value {
                write!(f, ",{key}={v}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_parses_and_prints_back() {
        let rule = HaltRule::parse_spec("rollback_percent=20%, min_reports=3,channel=stable").unwrap();
        assert_eq!(rule.min_reports, 3);
        assert_eq!(
            rule.to_string(),
            "rollback_percent=20,min_reports=3,channel=stable"
        );
        assert!(rule.trips(5, 1));
        assert!(!rule.trips(2, 2));
        assert!(!rule.trips(10, 1));
    }

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        for (spec, says) in [
            ("rollback_percent=0,min_reports=3", "rollback_percent"),
            ("rollback_percent=120,min_reports=3", "rollback_percent"),
            ("rollback_percent=20,min_reports=0", "min_reports"),
            ("rollback_percent=20", "min_reports"),
            ("rollback_percent=20,min_reports=3,wave=2", "wave"),
            ("rollback_percent=x,min_reports=3", "not a number"),
            ("rollback_percent=20,min_reports=3,release=one", "release"),
            ("rollback_percent=20,min_reports=3,channel=a/b", "channel"),
        ] {
            let err = HaltRule::parse_spec(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }

    #[test]
    fn a_rules_file_is_read_and_checked() {
        let text = "[[rule]]\nrollback_percent = 25.0\nmin_reports = 4\nhardware = \"gw\"\n";
        let rules = HaltRule::parse_file(text, "rules.toml").unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].covers_hardware("gw") && !rules[0].covers_hardware("hub"));
        let err = HaltRule::parse_file("[[rule]]\nrollback_percent = 25.0\n", "rules.toml").unwrap_err();
        assert!(err.to_string().contains("min_reports"), "{err}");
    }
}
