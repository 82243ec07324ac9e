//! The device's identity key held in a PKCS#11 token (a secure element, an HSM, a TPM 2.0 through
//! tpm2-pkcs11, SoftHSM2), named by the config's `[identity]` table.
//!
//! `provision` generates the key pair inside the token (sensitive, never extractable) unless the token
//! already holds a key by that name, and records only its public key (`STATE/identity.pub`); every start
//! opens the token, logs in and checks the key is still the recorded one, so a swapped token is refused
//! rather than speaking as another device. Signing goes through the token ([`ota_pkcs11::TokenKey`]):
//! the reports and the TLS handshake with the collector. The module is loaded at run time: nothing of C
//! is linked into the agent for it.

use std::path::Path;

use ota_pkcs11::{KeyAlgorithm, TokenKey};
use ota_report::PublicKey;

use crate::config::IdentityConfig;
use crate::error::{Error, Result};
use crate::identity::IdentityKey;

/// The public key of a token-held identity, recorded at provisioning (`ecdsa-p256:<hex>`, 0644).
pub const IDENTITY_PUBLIC_FILE: &str = "identity.pub";

/// The most bytes of the recorded public key read (a P-256 key's line is under 100).
const MAX_PUBLIC_FILE: u64 = 4096;

/// The identity key in a token, logged in.
pub struct TokenIdentity {
    key: TokenKey,
    public: PublicKey,
    uri: String,
}

impl std::fmt::Debug for TokenIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIdentity")
            .field("uri", &self.uri)
            .field("device_id", &self.device_id())
            .finish()
    }
}

impl TokenIdentity {
    /// Opens the key `config` names: loads the module, finds the token, logs in with the PIN (refused
    /// when a well-known default or in a file others can read) and finds the key pair.
    pub fn open(config: &IdentityConfig) -> Result<TokenIdentity> {
        let failed = token_error(config);
        let uri = config.uri().map_err(&failed)?;
        let key = TokenKey::open(&uri, &config.token_config()).map_err(&failed)?;
        let public = public_of(key.public_key()).map_err(|source| Error::Report { source })?;
        Ok(TokenIdentity {
            key,
            public,
            uri: config.key.clone(),
        })
    }

    /// Opens the key, or when the token holds none by that name generates it in the token first
    /// (provisioning). Returns whether it was generated.
    pub fn create_or_open(config: &IdentityConfig) -> Result<(TokenIdentity, bool)> {
        match TokenIdentity::open(config) {
            Err(Error::Token {
                source: ota_pkcs11::Error::KeyNotFound { .. },
                ..
            }) => {}
            other => return other.map(|identity| (identity, false)),
        }
        let failed = token_error(config);
        let uri = config.uri().map_err(&failed)?;
        // Validated with the configuration.
        let algorithm = config.key_algorithm().unwrap_or(KeyAlgorithm::EcdsaP256);
        ota_pkcs11::generate_key_pair(&uri, &config.token_config(), algorithm).map_err(&failed)?;
        Ok((TokenIdentity::open(config)?, true))
    }
}

impl IdentityKey for TokenIdentity {
    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.key.sign(message).map_err(|source| Error::Token {
            uri: self.uri.clone(),
            source,
        })
    }
}

fn token_error(config: &IdentityConfig) -> impl Fn(ota_pkcs11::Error) -> Error + '_ {
    move |source| Error::Token {
        uri: config.key.clone(),
        source,
    }
}

/// The token's public key as reports and certificates carry it.
fn public_of(key: &ota_pkcs11::PublicKey) -> ota_report::Result<PublicKey> {
    match key {
        ota_pkcs11::PublicKey::EcdsaP256(_) => PublicKey::ecdsa_p256(&key.raw()),
        ota_pkcs11::PublicKey::Ed25519(bytes) => PublicKey::ed25519(bytes),
    }
}

fn recorded_text(key: &PublicKey) -> String {
    format!("{}:{}\n", key.algorithm(), hex::encode(key.to_bytes()))
}

/// Records `identity`'s public key in `state_dir` at provisioning; refuses when another key is
/// recorded already (the device was provisioned with another token or key name).
pub fn record_public(state_dir: &Path, identity: &dyn IdentityKey) -> Result<()> {
    let path = state_dir.join(IDENTITY_PUBLIC_FILE);
    if path.exists() {
        return check_recorded(state_dir, identity);
    }
    ota_fs::write_atomic(&path, recorded_text(&identity.public_key()).as_bytes(), 0o644)?;
    Ok(())
}

/// Checks that `identity` is the key recorded at provisioning.
pub fn check_recorded(state_dir: &Path, identity: &dyn IdentityKey) -> Result<()> {
    let path = state_dir.join(IDENTITY_PUBLIC_FILE);
    let recorded = match ota_fs::read_bounded(&path, MAX_PUBLIC_FILE) {
        Ok(bytes) => bytes,
        Err(ota_fs::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotProvisioned {
                state_dir: state_dir.to_owned(),
                missing: IDENTITY_PUBLIC_FILE,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let recorded = String::from_utf8_lossy(&recorded);
    let found = recorded_text(&identity.public_key());
    if recorded.trim() != found.trim() {
        return Err(Error::IdentityMismatch {
            path,
            recorded: recorded.trim().to_owned(),
            found: identity.device_id(),
        });
    }
    Ok(())
}
