//! device-agent: the daemon that installs signed firmware into the inactive A/B slot, trial-boots it, and
//! commits or rolls back.
//!
//! Its one job is the device side of an update. Main types:
//! - [`config::AgentConfig`]: the TOML configuration (`dist/agent.toml` is the annotated sample).
//! - [`identity::IdentityKey`]: the device's identity (ed25519 or ECDSA P-256), whoever holds the
//!   private key; [`identity::FileIdentity`] is the key file made at provisioning (0600, the default),
//!   [`token_identity::TokenIdentity`] a key generated in a PKCS#11 token.
//! - [`state::UpdateState`] and [`state::transition`]: the update as an explicit state machine, persisted
//!   in a [`state::DeviceRecord`] before every side effect ([`state::Action`]).
//! - [`select::select`]: which signed release this device installs next (waves, halts, pull-backs and
//!   field drills by [`rollout`] control).
//! - [`health::run_checks`]: health checks after a trial boot.
//! - [`device::Device`]: the update core, generic over `ota_slot::Slot` and `ota_slot::BootControl`:
//!   [`device::Device::on_boot`] after every start, [`device::Device::poll_once`] to install;
//!   [`provision::provision`] pins the root of trust.
//! - [`daemon::run`]: the daemon's poll loop; [`daemon::open_device`] picks the configured slot and
//!   bootloader backends, [`daemon::reboot`] is the reboot policy.
//! - [`channels`]: the CAs pinned for the repository and the collector, the TLS client certificate
//!   bound to the identity key, and [`channels::CollectorTls`] (mutual TLS to the collector).
//! - [`onboarding`]: the device's card (id and public key) and its QR code, for `device-agent identity`.
//! - [`schedule::PollSchedule`]: polling interval, jitter and backoff.
//! - [`device::Device::install_bundle`]: an offline install from a bundle, verified like an online one;
//!   [`clock`]: the time floor that expiry is judged against on a device without a reliable clock.
//! - [`lock::AgentLock`]: one agent process at a time per state directory.
//! - [`trust`]: the checks of what the agent trusts on disk, at every start.
//! - [`report::OutcomeFacts`]: what is known when an update ends, signed into an `ota_report::Report`;
//!   [`report_queue::ReportQueue`] keeps those reports on disk (bounded, durable) and
//!   [`report_send`] delivers them to the collector, never holding up an update.
//! - [`progress`]: install progress (bytes, total, rate) on a terminal or in the log, and in a file
//!   `status` reads while an install runs.
//! - [`delta`]: installs by binary delta from the running slot, with [`delta::DeltaFallback`] naming
//!   why the full image was used instead.
//!
//! It does not sign or publish anything, does not implement TUF (that is `ota-tuf`) or talk to flash and
//! bootloaders directly (that is `ota-slot`).
#![deny(missing_docs)]

pub mod channels;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod delta;
pub mod device;
mod error;
pub mod health;
pub mod identity;
pub mod lock;
pub mod onboarding;
pub mod progress;
pub mod provision;
pub mod report;
pub mod report_queue;
pub mod report_send;
pub mod rollout;
pub mod schedule;
pub mod select;
pub mod state;
pub mod token_identity;
pub mod trust;

pub use error::{error_chain, Error, Result};

/// Exit status of the agent after a simulated reboot (`boot.backend = "sim"`): the supervisor (a test,
/// a demo script) starts the agent again, as a real reboot would.
pub const REBOOT_EXIT_CODE: i32 = 75;

pub use ota_slot::SlotId;
