//! The contract between the device (device-agent) and the fleet collector: the update report a device
//! sends after each update attempt, and the signed envelope it travels in.
//!
//! **What it does.** [`Report`] is the schema: who ([`DeviceId`], hardware, channel), which attempt (a
//! per-device [`Report::sequence`] number, so the collector can refuse a replay), what (from and to
//! versions, target name), how it ended ([`Outcome`], a bounded [`Reason`]), when, how many bytes and by
//! which [`InstallMethod`]. [`Envelope`] is its signed form, a DSSE envelope (the in-toto "Dead Simple
//! Signing Envelope": `payloadType`, base64 `payload`, `signatures: [{keyid, sig}]`), whose signature
//! covers `PAE(payloadType, payload)`, the exact bytes sent, never a re-serialization. Verification is
//! pure Rust: ed25519 (the device's identity key today) and ECDSA P-256 (what hardware tokens offer).
//!
//! Parsing is validation: every size is bounded before anything is decoded ([`MAX_ENVELOPE_BYTES`],
//! [`MAX_PAYLOAD_BYTES`], [`MAX_REASON_BYTES`]), unknown fields are refused at every level, and the
//! payload is parsed only after a signature by the enrolled key has verified over it; the device id it
//! claims must then be that key's ([`Error::WrongDevice`]).
//!
//! **What it does not do.** No I/O and no key storage: the device signs through the [`ReportSigner`]
//! trait (a key file or a PKCS#11 token behind it); the collector hands [`Envelope::verify`] the
//! [`PublicKey`] it enrolled for the device, and keeps the last accepted sequence number itself.
//!
//! [`DeviceCard`] is what a device's onboarding QR code carries (its id and public key, versioned), read
//! by the collector's enrolment.
//!
//! **Main types.** [`Report`], [`Envelope`], [`PublicKey`], [`ReportSigner`], [`DeviceCard`], [`Error`].
//!
//! **Dependencies.** Of ours, only `ota-release`, for [`HardwareId`] and [`Channel`]: a report names the
//! hardware and channel a release was for, so it uses the very types (and naming rule) releases use.
#![deny(missing_docs)]
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]

mod card;
mod envelope;
mod report;

#[doc(hidden)]
pub mod fuzzing;

pub use card::{DeviceCard, DEVICE_CARD_PREFIX, MAX_DEVICE_CARD_BYTES};
pub use envelope::{pae, Envelope, PublicKey, ReportSigner, Signature};
pub use ota_release::{Channel, HardwareId, Version};
pub use report::{DeviceId, InstallMethod, Outcome, Reason, Report, TargetName};

/// The schema version this crate writes and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;
/// The DSSE `payloadType` of a report.
pub const PAYLOAD_TYPE: &str = "application/vnd.ota.report.v1+json";
/// The largest envelope accepted, in bytes (checked before any JSON is read).
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024;
/// The largest payload (the report's JSON) accepted, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024;
/// The longest [`Reason`], in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// The longest [`TargetName`], in bytes.
pub const MAX_TARGET_NAME_BYTES: usize = 255;
/// The most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 4;
/// The longest `keyid`, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 128;
/// The longest decoded signature, in bytes (an ed25519 signature is 64, a DER P-256 one at most 72).
pub const MAX_SIGNATURE_BYTES: usize = 128;

/// Why a report or an envelope was refused, or could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes larger than their bound (refused before they were decoded).
    #[error("{what} is {got} bytes, more than the {limit} allowed")]
    TooLarge {
        /// What was too large ("envelope", "payload", "reason", ...).
        what: &'static str,
        /// Its size.
        got: usize,
        /// The bound.
        limit: usize,
    },
    /// Not JSON of the expected shape: a syntax error, a missing or unknown field, a wrong type, a
    /// value breaking its type's rule (a hardware id, a version); the source names it.
    #[error("malformed {what}")]
    Malformed {
        /// "envelope" or "report".
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A base64 field does not decode.
    #[error("{field} is not valid base64")]
    Base64 {
        /// The field ("payload", "sig").
        field: &'static str,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// Well-formed, but a rule of the contract is broken (an unknown payload type, a schema version
    /// this crate does not read, no signature, a report finishing before it started, ...).
    #[error("invalid {field}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The rule it breaks, with the value.
        why: String,
    },
    /// No signature in the envelope verifies with the given key over the envelope's PAE bytes (forged,
    /// tampered with, or signed by another key).
    #[error("no valid signature by key {key_id}")]
    BadSignature {
        /// The key tried.
        key_id: String,
    },
    /// The signature verifies, but the report claims to come from another device than the key's.
    #[error("report claims device {claimed} but is signed by device {signer}")]
    WrongDevice {
        /// The device id in the report.
        claimed: DeviceId,
        /// The device id of the key that signed it.
        signer: DeviceId,
    },
    /// A public key's bytes are not a key of its algorithm.
    #[error("invalid {algorithm} public key")]
    Key {
        /// "ed25519" or "ecdsa-p256".
        algorithm: &'static str,
    },
    /// The [`ReportSigner`] failed.
    #[error("the report signer failed")]
    Signer {
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
