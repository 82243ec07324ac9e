//! The agent's TOML configuration (`/etc/ota-agent/agent.toml`; `dist/agent.toml` is the annotated
//! sample). Every table refuses unknown fields, so a typo is an error naming the field rather than a
//! silently ignored setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ota_release::{Channel, HardwareId};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent keeps its trusted metadata, identity key and update state. Must be on persistent
    /// storage that survives reboots (not tmpfs).
    pub state_dir: PathBuf,
    /// This device's hardware compatibility id; only releases listing it are installed.
    pub hardware_id: HardwareId,
    /// The release channel this device follows.
    pub channel: Channel,
    /// Where the TUF repository is.
    pub repository: RepositoryConfig,
    /// The two firmware slots.
    pub slots: SlotsConfig,
    /// How the bootloader is told what to boot, and how to reboot.
    pub boot: BootConfig,
    /// What "healthy" means after booting a new image.
    #[serde(default)]
    pub health: HealthConfig,
    /// How often to look for updates.
    #[serde(default)]
    pub poll: PollConfig,
    /// Where to send the signed report of each update's outcome; absent: reporting is off.
    pub report: Option<ReportConfig>,
    /// The identity key in a PKCS#11 token; absent: the key file in the state directory (the default).
    pub identity: Option<IdentityConfig>,
}

/// The `[identity]` table: the device's identity key in a PKCS#11 token (a secure element, an HSM, a
/// TPM 2.0 through tpm2-pkcs11). `provision` generates the key inside the token (never extractable)
/// and records its public key; every start opens it and checks it is still that key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The key's RFC 7512 URI, `pkcs11:token=LABEL;object=NAME` (`module-path` and `pin-source` may
    /// be in it too; `pin-value` is refused).
    pub key: String,
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`), loaded at run time; not needed when
    /// the URI has `module-path`.
    pub module: Option<PathBuf>,
    /// A file holding the user PIN, mode 0600 (else the URI's `pin-source`, else `OTA_PKCS11_PIN`).
    pub pin_file: Option<PathBuf>,
    /// The key `provision` generates when the token has none by that name: `ecdsa-p256` (default,
    /// what TPMs and secure elements offer) or `ed25519`.
    #[serde(default = "default_identity_algorithm")]
    pub algorithm: String,
}

impl IdentityConfig {
    /// The key's URI, parsed.
    pub fn uri(&self) -> std::result::Result<ota_pkcs11::Pkcs11Uri, ota_pkcs11::Error> {
        self.key.parse()
    }

    /// The algorithm of a key `provision` generates.
    pub fn key_algorithm(&self) -> std::result::Result<ota_pkcs11::KeyAlgorithm, String> {
        self.algorithm.parse()
    }

    /// What the URI leaves out: the module and the PIN file.
    pub fn token_config(&self) -> ota_pkcs11::TokenConfig {
        ota_pkcs11::TokenConfig {
            module_path: self.module.clone(),
            pin_file: self.pin_file.clone(),
        }
    }
}

fn default_identity_algorithm() -> String {
    "ecdsa-p256".into()
}

/// The `[identity]` table's rules: a URI that parses and names its key, and a known algorithm.
fn validate_identity(identity: &IdentityConfig) -> std::result::Result<(), String> {
    let uri = identity.uri().map_err(|e| format!("identity.key: {e}"))?;
    if uri.object.is_none() && uri.id.is_none() {
        return Err(format!(
            "identity.key = {uri}: name the key with object= (and id= if you like)"
        ));
    }
    if uri.module_path.is_none() && identity.module.is_none() {
        return Err("identity.module: the PKCS#11 module is needed (or module-path= in identity.key)".into());
    }
    identity
        .key_algorithm()
        .map_err(|e| format!("identity.algorithm: {e}"))?;
    Ok(())
}

/// The `[report]` section: the collector and the bounds of the on-disk report queue.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// The collector's base URL (`https://collector.example.com`); reports go to `<url>/v1/reports`.
    pub collector_url: String,
    /// The most reports kept waiting; past it the oldest is dropped (and counted).
    #[serde(default = "default_max_reports")]
    pub max_reports: u32,
    /// The most bytes of reports kept waiting; past it the oldest are dropped (and counted). At least
    /// one report's largest size ([`ota_report::MAX_ENVELOPE_BYTES`]).
    #[serde(default = "default_max_report_bytes")]
    pub max_bytes: u64,
    /// Seconds to wait for the collector's TCP (and TLS) connection.
    #[serde(
        rename = "connect_timeout_secs",
        default = "default_report_connect",
        deserialize_with = "seconds"
    )]
    pub connect_timeout: Duration,
    /// Seconds one report's whole exchange may take (request, status, bounded response).
    #[serde(
        rename = "timeout_secs",
        default = "default_report_timeout",
        deserialize_with = "seconds"
    )]
    pub timeout: Duration,
    /// After a failed delivery the daemon waits this long before trying again, doubling with each
    /// further failure up to `retry_max_secs`.
    #[serde(
        rename = "retry_secs",
        default = "default_report_retry",
        deserialize_with = "seconds"
    )]
    pub retry: Duration,
    /// The longest wait between two delivery attempts.
    #[serde(
        rename = "retry_max_secs",
        default = "default_report_retry_max",
        deserialize_with = "seconds"
    )]
    pub retry_max: Duration,
}

impl ReportConfig {
    /// The queue's bounds.
    pub fn limits(&self) -> crate::report_queue::QueueLimits {
        crate::report_queue::QueueLimits {
            max_reports: self.max_reports,
            max_bytes: self.max_bytes,
        }
    }
}

fn default_max_reports() -> u32 {
    256
}
fn default_max_report_bytes() -> u64 {
    512 * 1024
}
fn default_report_connect() -> Duration {
    Duration::from_secs(5)
}
fn default_report_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_report_retry() -> Duration {
    Duration::from_secs(30)
}
fn default_report_retry_max() -> Duration {
    Duration::from_secs(3600)
}

/// The `[report]` section's rules: an http(s) URL, room for at least one report, timeouts and waits
/// that are not zero and in order.
fn validate_report(report: &ReportConfig) -> std::result::Result<(), String> {
    let url = &report.collector_url;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "report.collector_url = {url:?}: expected an http:// or https:// URL"
        ));
    }
    if report.max_reports == 0 {
        return Err("report.max_reports must be at least 1".into());
    }
    let one = ota_report::MAX_ENVELOPE_BYTES as u64;
    if report.max_bytes < one {
        return Err(format!(
            "report.max_bytes = {} is less than one report's largest size ({one} bytes)",
            report.max_bytes
        ));
    }
    for (field, d) in [
        ("report.connect_timeout_secs", report.connect_timeout),
        ("report.timeout_secs", report.timeout),
        ("report.retry_secs", report.retry),
    ] {
        if d.is_zero() {
            return Err(format!("{field} must be at least 1"));
        }
    }
    if report.retry_max < report.retry {
        return Err("report.retry_max_secs must be at least report.retry_secs".into());
    }
    Ok(())
}

/// The TUF repository's location.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Base URL of the metadata (`.../metadata`, without trailing `/root.json`).
    pub metadata_url: String,
    /// Base URL of the targets (`.../targets`).
    pub targets_url: String,
    /// Timeout of one HTTP request, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Slow retrieval protection: a download (metadata or image) whose average rate over the last
    /// `rate_window_secs` falls below this many bytes per second is cut, whatever its total timeout.
    #[serde(default = "default_min_rate")]
    pub min_rate_bytes_per_sec: u64,
    /// The sliding window, in seconds, over which the minimum rate is averaged.
    #[serde(default = "default_rate_window")]
    pub rate_window_secs: u64,
}

fn default_request_timeout() -> u64 {
    30
}
fn default_min_rate() -> u64 {
    1024
}
fn default_rate_window() -> u64 {
    30
}

/// The A and B slots.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsConfig {
    /// Slot A: a file or a block device.
    pub a: SlotConfig,
    /// Slot B: a file or a block device.
    pub b: SlotConfig,
}

/// One slot: a file or block device of a fixed size.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// The file or block device (`/dev/mmcblk0p2`).
    pub path: PathBuf,
    /// The slot's size in bytes; an image longer than this is refused before the slot is touched.
    pub capacity: u64,
}

/// The bootloader backend and the reboot method.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Which bootloader holds the A/B state.
    pub backend: BootBackend,
    /// U-Boot: the `fw_env.config` that `fw_printenv`/`fw_setenv` read (default `/etc/fw_env.config`).
    /// GRUB and sim: the environment file.
    pub env: PathBuf,
    /// The command that reboots the machine (ignored by the `sim` backend, whose "reboot" is the
    /// simulated bootloader's boot selection followed by the agent's exit with [`crate::REBOOT_EXIT_CODE`]).
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
}

fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}

/// Bootloader backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootBackend {
    /// U-Boot environment through `fw_printenv`/`fw_setenv` (libubootenv).
    UBoot,
    /// GRUB environment block through `grub-editenv`.
    Grub,
    /// The simulated bootloader of `ota-slot` (tests, demos, drills).
    Sim,
}

/// Health checks run after booting a trial image. A check that fails is tried again every
/// `retry_interval` until it passes or the deadline passes: a service that takes a while to come up
/// after boot is waited for, and only a check still failing at the deadline rolls the release back.
/// The file gives whole seconds (`deadline_secs`, `settle_secs`, `retry_interval_secs`); the fields are
/// durations so simulations (the fleet drill, the power-cut sweep) can use shorter ones.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// All checks must have passed this long after the agent starts checking (settle time included),
    /// or the image is unhealthy. It bounds how long an undecided trial runs.
    #[serde(
        rename = "deadline_secs",
        default = "default_health_deadline",
        deserialize_with = "seconds"
    )]
    pub deadline: Duration,
    /// How long to wait before the first try (a board whose services are known to need a moment).
    #[serde(rename = "settle_secs", default, deserialize_with = "seconds")]
    pub settle: Duration,
    /// The wait between two tries of a failing check.
    #[serde(
        rename = "retry_interval_secs",
        default = "default_retry_interval",
        deserialize_with = "seconds"
    )]
    pub retry_interval: Duration,
    /// The checks, tried in order; every one must pass.
    #[serde(default)]
    pub checks: Vec<HealthCheckConfig>,
}

fn default_health_deadline() -> Duration {
    Duration::from_secs(120)
}

fn default_retry_interval() -> Duration {
    Duration::from_secs(5)
}

/// A whole number of seconds in the file, a [`Duration`] in memory.
fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_secs)
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            deadline: default_health_deadline(),
            settle: Duration::ZERO,
            retry_interval: default_retry_interval(),
            checks: Vec::new(),
        }
    }
}

/// One health check: exactly one of `command` and `http`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// A name for logs and status.
    pub name: String,
    /// A program and its arguments; healthy when it exits 0 within the timeout.
    pub command: Option<Vec<String>>,
    /// An `http://` URL; healthy when a GET answers within the timeout with `expect_status` (any 2xx
    /// when absent).
    pub http: Option<String>,
    /// The expected HTTP status.
    pub expect_status: Option<u16>,
    /// Per-check timeout in seconds.
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
}

fn default_check_timeout() -> u64 {
    10
}

/// Polling schedule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Seconds between polls when all is well.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Each wait is randomly shortened or lengthened by up to this percentage, so a fleet does not poll
    /// in lockstep.
    #[serde(default = "default_jitter")]
    pub jitter_percent: u8,
    /// Upper bound of the exponential backoff after failed polls, in seconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// After a release's first few attempts ended before its image was verified (failed downloads,
    /// kills, power cuts), the next attempt waits this many seconds, doubling with each further one.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff_secs: u64,
    /// The longest such wait, in seconds; the release is never given up for an interruption.
    #[serde(default = "default_max_backoff")]
    pub retry_backoff_max_secs: u64,
}

fn default_interval() -> u64 {
    3600
}
fn default_jitter() -> u8 {
    20
}
fn default_max_backoff() -> u64 {
    6 * 3600
}
fn default_retry_backoff() -> u64 {
    600
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval_secs: default_interval(),
            jitter_percent: default_jitter(),
            max_backoff_secs: default_max_backoff(),
            retry_backoff_secs: default_retry_backoff(),
            retry_backoff_max_secs: default_max_backoff(),
        }
    }
}

/// Largest configuration file accepted (the annotated sample is a few KiB).
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

impl AgentConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig> {
        let read_error = |source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        };
        let bytes = ota_fs::read_bounded(path, MAX_CONFIG_FILE).map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|e| Error::Config {
            path: path.to_owned(),
            why: format!("not UTF-8: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig> {
        let bad = |why: String| Error::Config {
            path: path.to_owned(),
            why,
        };
        let config: AgentConfig = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        config.validate().map_err(bad)?;
        config.check_slots_distinct().map_err(bad)?;
        Ok(config)
    }

    /// Checks what serde cannot: URLs, non-empty commands, sane numbers.
    fn validate(&self) -> std::result::Result<(), String> {
        for (field, url) in [
            ("repository.metadata_url", &self.repository.metadata_url),
            ("repository.targets_url", &self.repository.targets_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{field} = {url:?}: expected an http:// or https:// URL"));
            }
        }
        if self.repository.request_timeout_secs == 0 {
            return Err("repository.request_timeout_secs must be at least 1".into());
        }
        if self.repository.rate_window_secs == 0 {
            return Err("repository.rate_window_secs must be at least 1".into());
        }
        for (name, slot) in [("slots.a", &self.slots.a), ("slots.b", &self.slots.b)] {
            if slot.capacity == 0 {
                return Err(format!("{name}.capacity must be more than 0 bytes"));
            }
        }
        if self.slots.a.path == self.slots.b.path {
            return Err(format!(
                "slots.a and slots.b are the same path {}",
                self.slots.a.path.display()
            ));
        }
        if self.boot.backend != BootBackend::Sim && self.boot.reboot_command.is_empty() {
            return Err("boot.reboot_command must name a program".into());
        }
        validate_health(&self.health)?;
        if let Some(report) = &self.report {
            validate_report(report)?;
        }
        if let Some(identity) = &self.identity {
            validate_identity(identity)?;
        }
        if self.poll.interval_secs == 0 {
            return Err("poll.interval_secs must be at least 1".into());
        }
        if self.poll.jitter_percent > 50 {
            return Err(format!(
                "poll.jitter_percent = {} is over 50",
                self.poll.jitter_percent
            ));
        }
        if self.poll.max_backoff_secs < self.poll.interval_secs {
            return Err("poll.max_backoff_secs must be at least poll.interval_secs".into());
        }
        if self.poll.retry_backoff_max_secs < self.poll.retry_backoff_secs {
            return Err("poll.retry_backoff_max_secs must be at least poll.retry_backoff_secs".into());
        }
        Ok(())
    }

    /// Refuses two slots that are one object (the same file through another path or a symlink, or the
    /// same block device), naming both paths: writing "the inactive slot" would overwrite the running one.
    fn check_slots_distinct(&self) -> std::result::Result<(), String> {
        let (a, b) = (&self.slots.a.path, &self.slots.b.path);
        match ota_slot::same_object(a, b) {
            Ok(Some(what)) => Err(format!(
                "slots.a ({}) and slots.b ({}) are the same {what}: the running slot would be overwritten",
                a.display(),
                b.display()
            )),
            Ok(None) => Ok(()),
            Err(e) => Err(format!("cannot compare slots.a and slots.b: {e}")),
        }
    }

    /// The minimum transfer rate and its window (slow retrieval protection).
    pub fn min_rate(&self) -> ota_tuf::MinRate {
        ota_tuf::MinRate {
            bytes_per_sec: self.repository.min_rate_bytes_per_sec,
            window: Duration::from_secs(self.repository.rate_window_secs),
        }
    }

    /// How attempts at a release that keep ending before verification wait.
    pub fn retry_policy(&self) -> crate::state::RetryPolicy {
        crate::state::RetryPolicy {
            first_backoff: Duration::from_secs(self.poll.retry_backoff_secs),
            max_backoff: Duration::from_secs(self.poll.retry_backoff_max_secs),
        }
    }

    /// The HTTP request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.repository.request_timeout_secs)
    }
}

/// The health section's rules: a deadline longer than the settle time, a retry interval, unique named checks, each a command or an http probe.
fn validate_health(health: &HealthConfig) -> std::result::Result<(), String> {
    if health.deadline.is_zero() {
        return Err("health.deadline_secs must be at least 1".into());
    }
    if health.retry_interval.is_zero() {
        return Err("health.retry_interval_secs must be at least 1".into());
    }
    if health.settle >= health.deadline {
        return Err(format!(
            "health.settle_secs ({}) must be less than health.deadline_secs ({}): no check could run",
            health.settle.as_secs(),
            health.deadline.as_secs()
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, check) in health.checks.iter().enumerate() {
        let at = format!("health.checks[{i}] ({:?})", check.name);
        if check.name.is_empty() {
            return Err(format!("health.checks[{i}].name must not be empty"));
        }
        if !names.insert(&check.name) {
            return Err(format!("{at}: name used twice"));
        }
        validate_check(&at, check)?;
    }
    Ok(())
}

/// One health check's rules; `at` names it in the message.
fn validate_check(at: &str, check: &HealthCheckConfig) -> std::result::Result<(), String> {
    match (&check.command, &check.http) {
        (Some(cmd), None) => {
            if cmd.first().is_none_or(|p| p.is_empty()) {
                return Err(format!("{at}: command must name a program"));
            }
            if check.expect_status.is_some() {
                return Err(format!("{at}: expect_status only applies to http checks"));
            }
        }
        (None, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{at}: http = {url:?} is not an http:// or https:// URL"));
            }
        }
        _ => return Err(format!("{at}: give exactly one of `command` and `http`")),
    }
    if check.timeout_secs == 0 {
        return Err(format!("{at}: timeout_secs must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = include_str!("../dist/agent.toml");

    fn parse(text: &str) -> Result<AgentConfig> {
        AgentConfig::parse(text, Path::new("agent.toml"))
    }

    #[test]
    fn shipped_sample_parses() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.hardware_id.as_str(), "gateway-rev-c");
        assert_eq!(c.boot.backend, BootBackend::UBoot);
        assert_eq!(c.health.checks.len(), 2);
        assert_eq!(c.poll.interval_secs, 3600);
        assert_eq!(c.health.deadline, Duration::from_secs(120));
        assert_eq!(c.health.retry_interval, Duration::from_secs(5));
        assert_eq!(c.health.settle, Duration::ZERO);
    }

    #[test]
    fn health_timing_has_defaults_and_is_checked() {
        let without = SAMPLE
            .replace("deadline_secs = 120\n", "")
            .replace("settle_secs = 0\n", "")
            .replace("retry_interval_secs = 5\n", "");
        let c = parse(&without).unwrap();
        assert_eq!(c.health.deadline, Duration::from_secs(120));
        assert_eq!(c.health.retry_interval, Duration::from_secs(5));
        assert_eq!(c.health.settle, Duration::ZERO);
        let err = parse(&SAMPLE.replace("settle_secs = 0", "settle_secs = 120"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("settle_secs"), "{err}");
        let err = parse(&SAMPLE.replace("retry_interval_secs = 5", "retry_interval_secs = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retry_interval_secs"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let text = SAMPLE.replace("channel = ", "chanel = ");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("chanel"), "{err}");
        assert!(err.contains("agent.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let cases = [
            (
                "metadata_url = \"https://",
                "metadata_url = \"ftp://",
                "metadata_url",
            ),
            (
                "hardware_id = \"gateway-rev-c\"",
                "hardware_id = \"../x\"",
                "hardware id",
            ),
            ("backend = \"u-boot\"", "backend = \"lilo\"", "lilo"),
            ("interval_secs = 3600", "interval_secs = 0", "interval_secs"),
            ("timeout_secs = 5", "timeout_secs = 0", "timeout_secs"),
        ];
        for (from, to, needle) in cases {
            assert!(SAMPLE.contains(from), "sample lacks {from}");
            let err = parse(&SAMPLE.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(err.contains(needle), "{to}: {err}");
        }
    }

    #[test]
    fn no_report_section_is_reporting_off_and_the_section_is_strict() {
        assert!(parse(SAMPLE).unwrap().report.is_none());
        let with = |body: &str| parse(&format!("{SAMPLE}\n[report]\n{body}\n"));
        let c = with("collector_url = \"http://127.0.0.1:8470\"").unwrap();
        let r = c.report.unwrap();
        assert_eq!((r.max_reports, r.max_bytes), (256, 512 * 1024));
        assert_eq!(
            (r.timeout, r.connect_timeout),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
        let url = "collector_url = \"http://c\"\n";
        for (body, needle) in [
            ("collector_url = \"ftp://c\"".to_owned(), "collector_url"),
            (format!("{url}max_reports = 0"), "max_reports"),
            (format!("{url}max_bytes = 100"), "max_bytes"),
            (format!("{url}timeout_secs = 0"), "timeout_secs"),
            (
                format!("{url}retry_secs = 60\nretry_max_secs = 30"),
                "retry_max_secs",
            ),
            (format!("{url}max_report = 3"), "max_report"),
            ("max_reports = 3".to_owned(), "collector_url"),
        ] {
            let err = with(&body).unwrap_err().to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn a_check_needs_exactly_one_kind() {
        let text = format!(
            "{SAMPLE}\n[[health.checks]]\nname = \"both\"\ncommand = [\"true\"]\nhttp = \"http://x\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("exactly one"), "{err}");
        let text = format!("{SAMPLE}\n[[health.checks]]\nname = \"none\"\n");
        assert!(parse(&text).unwrap_err().to_string().contains("exactly one"));
    }
}
