//! Signs with a key that lives in a PKCS#11 token: an HSM, a secure element, a TPM 2.0 through
//! tpm2-pkcs11, or SoftHSM2. The private key never leaves the token; this crate only asks it to sign.
//!
//! A key is named by an RFC 7512 [`Pkcs11Uri`] (`pkcs11:token=ota-root;object=root-1?module-path=...`).
//! [`TokenKey::open`] loads the module at run time (through `cryptoki`, which uses `libloading`:
//! nothing of C is linked at build time), finds the one matching token and key, and logs in with a
//! PIN from a `pin-source` file that only its owner can read, or from the [`PIN_ENV`] environment
//! variable; a PIN is never taken from a URI or a command line, and well-known default PINs are
//! refused. [`TokenKey::sign`] signs ECDSA P-256 (SHA-256 in software, `CKM_ECDSA`, DER-encoded as
//! TUF's `ecdsa-sha2-nistp256` expects) and Ed25519 (`CKM_EDDSA`). [`generate_key_pair`] makes a
//! non-extractable key pair inside the token and returns its [`PublicKey`].
//!
//! Not here: TUF key objects and tough's `KeySource` (ota-publish adapts this crate to them), and
//! verifying signatures (done in pure Rust by whoever checks them).
#![deny(missing_docs)]

mod error;
mod pin;
mod public;
mod token;
mod uri;

pub use error::{Error, Result};
pub use pin::Pin;
pub use public::{KeyAlgorithm, PublicKey};
pub use token::{generate_key_pair, TokenConfig, TokenKey};
pub use uri::Pkcs11Uri;

/// The environment variable a PIN is read from when neither the URI's `pin-source` nor a configured
/// PIN file gives one.
pub const PIN_ENV: &str = "OTA_PKCS11_PIN";
