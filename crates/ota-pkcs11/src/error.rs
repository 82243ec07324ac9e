//! The crate's one error type: each variant names the cause a user can act on (module, token, PIN,
//! key), and what it was looking for.

use std::path::PathBuf;

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a token key could not be found, opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `pkcs11:` URI does not parse (RFC 7512).
    #[error("malformed pkcs11 URI {uri:?}: {why}")]
    MalformedUri {
        /// The URI, with any `pin-value` removed.
        uri: String,
        /// What is wrong.
        why: String,
    },
    /// The URI carries the PIN itself: a URI ends up on command lines, in shell history and in
    /// process listings.
    #[error(
        "refusing a pkcs11 URI with pin-value: a PIN never goes on a command line or in a config \
         file; give it with pin-source=FILE (mode 0600) or the {env} environment variable",
        env = crate::PIN_ENV
    )]
    PinValueInUri,
    /// No module path: neither `module-path` in the URI nor a configured one.
    #[error("no PKCS#11 module for {uri:?}: add module-path=/path/to/module.so to the URI or configure it")]
    NoModulePath {
        /// The URI.
        uri: String,
    },
    /// The module file does not exist.
    #[error("PKCS#11 module {path} is missing (is the token's package installed?)")]
    ModuleMissing {
        /// The module path.
        path: PathBuf,
    },
    /// The module exists but could not be loaded or initialised.
    #[error("PKCS#11 module {path} could not be loaded")]
    ModuleLoad {
        /// The module path.
        path: PathBuf,
        /// What the loader or the module said.
        source: cryptoki::error::Error,
    },
    /// No token in any slot matches the URI.
    #[error("PKCS#11 token {token} is missing (not present in any slot of {module})")]
    TokenMissing {
        /// The token attributes asked for.
        token: String,
        /// The module path.
        module: PathBuf,
    },
    /// The token went away while in use (unplugged, or the slot reports it absent).
    #[error("PKCS#11 token {token} is missing (removed from its slot)")]
    TokenRemoved {
        /// The token label.
        token: String,
    },
    /// Several tokens match the URI: which one to use would be a guess.
    #[error("{count} PKCS#11 tokens match {token}: name one with token=, serial= or model=")]
    AmbiguousToken {
        /// The token attributes asked for.
        token: String,
        /// How many matched.
        count: usize,
    },
    /// The user PIN is locked (too many wrong PINs).
    #[error("PKCS#11 token {token} is locked: its user PIN was blocked after too many wrong PINs")]
    TokenLocked {
        /// The token label.
        token: String,
    },
    /// The token refused the PIN.
    #[error("wrong PIN for PKCS#11 token {token}")]
    WrongPin {
        /// The token label.
        token: String,
    },
    /// The token's user PIN was never set (the token was initialised without `--pin`).
    #[error("PKCS#11 token {token} has no user PIN set: initialise it with a user PIN first")]
    PinNotInitialized {
        /// The token label.
        token: String,
    },
    /// No PIN was given.
    #[error(
        "no PIN for PKCS#11 token {token}: give pin-source=FILE in the URI (or the configured PIN \
         file), or set {env}",
        env = crate::PIN_ENV
    )]
    NoPin {
        /// The token label.
        token: String,
    },
    /// The PIN is a well-known default: anybody who holds the token could sign.
    #[error("refusing a well-known default PIN for PKCS#11 token {token}: set a PIN of your own")]
    DefaultPin {
        /// The token label.
        token: String,
    },
    /// The PIN file can be read or changed by other users.
    #[error("PIN file {path} is accessible to group or others (mode {mode:o}): chmod 600 it")]
    PinFileAccessible {
        /// The PIN file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The PIN file could not be read.
    #[error("cannot read PIN file {path}")]
    PinFileRead {
        /// The PIN file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No key in the token matches the URI.
    #[error("no {class} key {object} in PKCS#11 token {token}")]
    KeyNotFound {
        /// The token label.
        token: String,
        /// The object attributes asked for (label, id).
        object: String,
        /// `private` or `public`.
        class: &'static str,
    },
    /// Several keys match the URI.
    #[error("{count} keys match {object} in PKCS#11 token {token}: name one with object= and id=")]
    AmbiguousKey {
        /// The token label.
        token: String,
        /// The object attributes asked for.
        object: String,
        /// How many matched.
        count: usize,
    },
    /// `generate` found a key already named so: a key is never replaced or duplicated.
    #[error("PKCS#11 token {token} already holds a key {object}")]
    KeyExists {
        /// The token label.
        token: String,
        /// The object attributes asked for.
        object: String,
    },
    /// The key is of a type or curve this crate does not sign with.
    #[error("key {object} in PKCS#11 token {token} is not ECDSA P-256 or Ed25519 ({why})")]
    UnsupportedKey {
        /// The token label.
        token: String,
        /// The object attributes.
        object: String,
        /// What was found.
        why: String,
    },
    /// A PKCS#11 call failed for another reason.
    #[error("PKCS#11 {what} failed on token {token}")]
    Token {
        /// The token label.
        token: String,
        /// What was being done.
        what: &'static str,
        /// The module's answer.
        source: cryptoki::error::Error,
    },
}
