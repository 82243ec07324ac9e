//! The crate's one error type.

use std::path::PathBuf;

/// Why the agent refused or failed. Variants are grouped by cause: bad configuration or saved state (what
/// and where), a broken rule (provisioning, selection, verification), storage and boot control, the
/// repository, and caller misuse (a state machine event that does not fit the current state).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read (missing, unreadable, or implausibly large).
    #[error("cannot read configuration {path}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// What failed, and where.
        #[source]
        source: ota_fs::Error,
    },
    /// The configuration file is not valid (TOML syntax, unknown field, bad value).
    #[error("invalid configuration {path}: {why}")]
    Config {
        /// The file (or `<string>` when parsed from memory).
        path: PathBuf,
        /// What is wrong, with the field's place.
        why: String,
    },
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done ("write state file", "read root", ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A durable-file operation failed (atomic write, private create, lock file, bounded read); the
    /// source names the action and the path.
    #[error(transparent)]
    File(#[from] ota_fs::Error),
    /// The root of trust offered at provisioning does not hash to the pinned fingerprint.
    #[error("root {path} has sha256 {got}, expected the fingerprint {expected}: refusing to trust it")]
    RootFingerprint {
        /// The root.json given.
        path: PathBuf,
        /// The fingerprint given by the operator (normalised hex).
        expected: String,
        /// The root's actual sha256.
        got: String,
    },
    /// A fingerprint is not 64 hex digits.
    #[error("invalid root fingerprint {value:?}: expected 64 hex digits (':' and spaces allowed)")]
    FingerprintSyntax {
        /// The text given.
        value: String,
    },
    /// The device is already provisioned with a different root of trust.
    #[error("device already provisioned with root sha256 {pinned}; refusing to replace it with {offered}")]
    AlreadyProvisioned {
        /// The pinned root's sha256.
        pinned: String,
        /// The offered root's sha256.
        offered: String,
    },
    /// The agent was asked to run on a device that has not been provisioned (or lost part of it).
    #[error("device not provisioned: {missing} is missing in {state_dir} (run `device-agent provision`)")]
    NotProvisioned {
        /// The state directory.
        state_dir: PathBuf,
        /// The file that is missing.
        missing: &'static str,
    },
    /// The identity key file is readable by group or others.
    #[error("identity key {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Something the agent trusts on disk (state directory, identity key) is open to group or others.
    #[error("{what} {path} has mode {mode:o}: it must not be readable or writable by group or others (chmod {fix})")]
    UnsafePermissions {
        /// What it is.
        what: &'static str,
        /// The path, symlinks resolved.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode to set.
        fix: &'static str,
    },
    /// The pinned root fingerprint file is unreadable or does not match the trusted root.
    #[error("pinned root {path}: {why}; refusing to trust the metadata (re-provision the device)")]
    PinnedRoot {
        /// The pinned-root file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The identity key file does not hold a valid PKCS#8 ed25519 key.
    #[error("identity key {path} is not a PKCS#8 ed25519 private key: {why}")]
    KeyFormat {
        /// The key file.
        path: PathBuf,
        /// The parser's complaint (never the key material).
        why: String,
    },
    /// A CA certificate file to pin, or pinned, that is missing or holds no usable certificate.
    #[error("CA certificate {path}: {why}")]
    CaCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The TLS client certificate is missing, malformed, or does not carry the identity key.
    #[error("TLS client certificate {path}: {why}")]
    ClientCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The identity key in a PKCS#11 token could not be opened, generated or used; the source says
    /// which: the module or the token missing, the PIN wrong, a default or readable by others, the
    /// token locked, the key absent.
    #[error("cannot use the identity key {uri}")]
    Token {
        /// The key's `pkcs11:` URI (never a PIN: `pin-value` is refused).
        uri: String,
        /// What the token or the PIN check said.
        source: ota_pkcs11::Error,
    },
    /// The token holds another key than the one recorded at provisioning.
    #[error(
        "the identity key in the token is device {found}, but {path} records {recorded}: wrong token, or \
         its key was replaced; refusing to speak as another device (re-provision to change the identity)"
    )]
    IdentityMismatch {
        /// The recorded public key file.
        path: PathBuf,
        /// The recorded key (`algorithm:hex`).
        recorded: String,
        /// The device id of the key found in the token.
        found: String,
    },
    /// The onboarding card or its QR code could not be made.
    #[error("onboarding: {why}")]
    Onboarding {
        /// Why.
        why: String,
    },
    /// A TLS client could not be set up.
    #[error("cannot set up TLS to {what}: {why}")]
    TlsSetup {
        /// The peer: the repository or the collector.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The persisted update state could not be parsed.
    #[error("saved state {path} is corrupt: {why}")]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An event does not apply to the current update state (a caller bug or a stale command).
    #[error("event {event} is not allowed in state {state}")]
    Transition {
        /// The state, as shown by `status`.
        state: String,
        /// The event.
        event: String,
    },
    /// A command was refused in the current state (for example `mark-good` outside a trial boot).
    #[error("cannot {action} now: {why}")]
    Refused {
        /// The command.
        action: &'static str,
        /// Why not.
        why: String,
    },
    /// An offline bundle verified, but holds no release this device may install (another hardware id or
    /// channel, not above the running version or the floor, failed here, halted or pulled, its wave not
    /// open yet); nothing was written.
    #[error("bundle {bundle} refused: {why}")]
    BundleRefused {
        /// The bundle file.
        bundle: PathBuf,
        /// Why each release in it was passed over.
        why: String,
    },
    /// A target's OTA metadata is malformed.
    #[error("target {target}")]
    Release {
        /// The TUF target name.
        target: String,
        /// The contract crate's complaint.
        source: ota_release::Error,
    },
    /// The repository could not be reached, or its metadata or a target was refused (TUF). Transparent:
    /// the TUF error names the URL or role, and callers that only print `Display` keep its words.
    #[error(transparent)]
    Tuf(#[from] ota_tuf::Error),
    /// A slot or the bootloader environment failed (including a simulated power loss).
    #[error(transparent)]
    Storage(#[from] ota_slot::Error),
    /// The image read back from a slot does not hash to the signed sha256.
    #[error("slot {slot} holds {got} after writing {target}, expected the signed sha256 {expected}")]
    ImageMismatch {
        /// The slot written.
        slot: crate::SlotId,
        /// The target written.
        target: String,
        /// The signed sha256.
        expected: String,
        /// What was read back.
        got: String,
    },
    /// A release is larger than the slot it would go into; the slot was not touched.
    #[error("{target} is {length} bytes but slot {slot} holds only {capacity}")]
    SlotTooSmall {
        /// The target.
        target: String,
        /// Its signed length.
        length: u64,
        /// The slot.
        slot: crate::SlotId,
        /// The slot's capacity.
        capacity: u64,
    },
    /// The agent does not know which image runs in the booted slot (its record is missing the entry).
    #[error("no record of the image running in slot {slot}; re-provision with its version and length")]
    UnknownRunningImage {
        /// The booted slot.
        slot: crate::SlotId,
    },
    /// Another agent process holds the state directory's lock (see `lock::AgentLock`).
    #[error("another device-agent (pid {}) holds {path}; wait for it to finish or stop it", pid_text(*pid))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, when it could be read.
        pid: Option<u32>,
    },
    /// The configured reboot command could not run, or failed.
    #[error("reboot command {program:?}: {why}")]
    RebootCommand {
        /// The program (`boot.reboot_command`'s first word).
        program: String,
        /// What went wrong.
        why: String,
    },
    /// A report could not be made or signed (the report contract refused a field, or the signer failed).
    #[error("device report")]
    Report {
        /// The report contract's complaint.
        #[source]
        source: ota_report::Error,
    },
    /// The HTTP client for the collector could not be built (its TLS setup).
    #[error("report client: {why}")]
    ReportClient {
        /// What failed.
        why: String,
    },
    /// A health check failed to run at all (a misconfigured check, not an unhealthy device).
    #[error("health check {check}: {why}")]
    HealthCheck {
        /// The check's name.
        check: String,
        /// What went wrong.
        why: String,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

/// An error and its sources, `: `-separated, as anyhow's `{:#}` prints them: for a reason kept as text
/// (a health check's cause, a delta fallback, a drill's per-device note) that must not lose the OS error.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// True when the error is a (simulated) power loss: the agent must stop at once, as a real device
    /// would, and persist nothing more.
    pub fn is_power_loss(&self) -> bool {
        matches!(self, Error::Storage(e) if e.is_power_loss())
    }

    /// An [`Error::Io`] for `what` on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
