//! Field rollback drills: a simulated fleet running the real device-agent code against one repository
//! served over loopback HTTP, with the field's faults injected on purpose, and a report a release engineer
//! can act on.
//!
//! **Its one job.** Rehearse what a sequence of releases does to a fleet before the fleet finds out: publish
//! them into a fresh repository, let every simulated device poll, install, reboot, check health and commit
//! or roll back, while the mirror drops, stalls, truncates, corrupts and serves stale or tampered metadata,
//! and power fails mid-install, mid-commit and mid-rollback. Then say, per release, who committed, who
//! rolled back, who is still retrying, how long it took and what it cost, and whether the invariants held:
//! no device unbootable, no device running an image that was not signed.
//!
//! **What it does not do.** It implements no update logic of its own: installing, trial boot, health
//! checks and rollback are the device-agent library's, slots and the bootloader are ota-slot's simulated
//! ones, the repository is repo-tool's. It never touches the network beyond 127.0.0.1.
//!
//! **Main types.** [`Scenario`] (the fleet, releases and faults; TOML or defaults), [`FaultyMirror`] (the
//! loopback HTTP/1.1 server injecting network faults and counting requests and bytes), [`DrillReport`]
//! (per release and outcome, convergence, bytes, invariants; table, JSON, SVG/HTML), [`Error`].
#![deny(missing_docs)]

mod collector_loop;
pub mod drill;
pub mod limits;
pub mod mirror;
pub mod report;
mod rng;
pub mod scenario;

use std::path::PathBuf;

pub use drill::{run, DrillObserver, DrillOptions, Silent};
pub use mirror::{Fault, FaultyMirror, MirrorStats};
pub use report::{
    CollectorStats, DeviceOutcome, DeviceRows, DrillReport, HaltReport, Invariants, Outcome, ReleaseReport,
    Sample, WaveReport, WrittenReport,
};
pub use scenario::{
    Faults, HaltRule, HardwareShare, NetworkFaults, PowerFaults, ReleasePlan, RolloutSettings, Scenario,
    WaveRound,
};

/// Why a drill could not run (an invariant breaking is not an error: it is in the [`DrillReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The scenario file is not valid TOML of the scenario's shape (unknown fields included).
    #[error("scenario{}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    ScenarioSyntax {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The parser's complaint (names the field and line).
        source: Box<toml::de::Error>,
    },
    /// The scenario parses but a value is out of bounds or contradicts another.
    #[error("scenario field {field}: {why}")]
    ScenarioInvalid {
        /// The field, dotted (`faults.network.drop`).
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// A file or directory of the drill could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A report file could not be written durably (the action and the path are in it).
    #[error(transparent)]
    File(#[from] ota_fs::Error),
    /// The loopback mirror could not start.
    #[error("mirror: could not {what}")]
    Mirror {
        /// What it was doing.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// repo-tool refused to build or publish the drill's repository.
    #[error("publishing the drill's repository")]
    Publish(#[source] ota_publish::Error),
    /// A simulated flash or bootloader could not be set up.
    #[error("simulated flash")]
    Slot(#[source] ota_slot::Error),
    /// The device agent refused to provision or open a device (a drill setup failure, not a field fault).
    #[error("device {device}")]
    Agent {
        /// The simulated device.
        device: String,
        /// The agent's error.
        source: Box<device_agent::Error>,
    },
    /// The drill's collector refused to start, enrol, store or summarize.
    #[error("collector")]
    Collector(#[source] Box<collector::Error>),
    /// A device task panicked or was cancelled.
    #[error("device task: {0}")]
    Task(String),
    /// A lock was poisoned by a panicking task.
    #[error("a shared table was poisoned by a panicking task")]
    Poisoned,
    /// The machine cannot hold this drill (open files, memory, scratch space): checked before any work.
    #[error("this drill needs {what}; {how}")]
    Limit {
        /// What the drill needs and what the machine gives.
        what: String,
        /// How to get it.
        how: String,
    },
    /// The report could not be serialized.
    #[error("report JSON")]
    ReportJson(#[source] serde_json::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
