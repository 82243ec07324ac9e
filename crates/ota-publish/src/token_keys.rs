//! Keys in PKCS#11 tokens behind tough's [`KeySource`] and [`Sign`] traits, so a role key can live
//! in an HSM exactly where a key file is accepted; and [`KeyRef`], a key named either way.
//!
//! The signing itself is `ota-pkcs11`'s (module loaded at run time, PIN from a private file or
//! `OTA_PKCS11_PIN`); here the token's public key becomes a TUF key object (`ed25519`, or `ecdsa` /
//! `ecdsa-sha2-nistp256` with a PEM SubjectPublicKeyInfo, as python-tuf writes it).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ota_pkcs11::{KeyAlgorithm, Pkcs11Uri, PublicKey, TokenConfig, TokenKey};
use tough::key_source::KeySource;
use tough::schema::key::Key;
use tough::sign::Sign;

use crate::error::{Error, Result};
use crate::keys::{key_id, KeyId, PUBLIC_KEY_SUFFIX};

/// Environment variable naming the PKCS#11 module when a `pkcs11:` URI has no `module-path`.
pub const MODULE_ENV: &str = "OTA_PKCS11_MODULE";

/// A signing or public key: a file (PKCS#8 private key or TUF public key JSON) or a key in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A key file.
    File(PathBuf),
    /// A key in a PKCS#11 token.
    Pkcs11(Pkcs11Uri),
}

impl FromStr for KeyRef {
    type Err = ota_pkcs11::Error;

    /// `pkcs11:...` is a token key (a `pin-value` is refused here, before anything runs); anything
    /// else a file path.
    fn from_str(s: &str) -> std::result::Result<KeyRef, Self::Err> {
        if s.starts_with("pkcs11:") {
            s.parse().map(KeyRef::Pkcs11)
        } else {
            Ok(KeyRef::File(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::File(p) => write!(f, "{}", p.display()),
            KeyRef::Pkcs11(u) => write!(f, "{u}"),
        }
    }
}

impl KeyRef {
    /// The public key: read from the file, or from the token (which needs its PIN, as signing does).
    pub fn public_key(&self, module: Option<&Path>) -> Result<Key> {
        match self {
            KeyRef::File(p) => crate::keys::read_public_key(p),
            KeyRef::Pkcs11(uri) => {
                let key = open(uri, module)?;
                tuf_key(key.public_key())
            }
        }
    }
}

/// The token configuration: the module from `module` or [`MODULE_ENV`] when the URI has none.
fn token_config(module: Option<&Path>) -> TokenConfig {
    TokenConfig {
        module_path: module
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(MODULE_ENV).map(PathBuf::from)),
        pin_file: None,
    }
}

fn open(uri: &Pkcs11Uri, module: Option<&Path>) -> Result<TokenKey> {
    TokenKey::open(uri, &token_config(module)).map_err(|e| Error::Key {
        source_name: uri.to_string(),
        why: crate::keys::error_chain(&e),
    })
}

/// The TUF key object of a token's public key.
pub fn tuf_key(public: &PublicKey) -> Result<Key> {
    let json = match public.algorithm() {
        KeyAlgorithm::Ed25519 => serde_json::json!({
            "keytype": "ed25519", "scheme": "ed25519", "keyval": { "public": public.tuf_public() }
        }),
        KeyAlgorithm::EcdsaP256 => serde_json::json!({
            "keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "keyval": { "public": public.tuf_public() }
        }),
    };
    serde_json::from_value(json).map_err(|e| Error::Tough(format!("token public key as a TUF key: {e}")))
}

/// A key in a PKCS#11 token as a tough [`KeySource`].
#[derive(Debug)]
pub struct Pkcs11KeySource {
    /// The key.
    pub uri: Pkcs11Uri,
    /// The module when the URI has no `module-path` (else [`MODULE_ENV`]).
    pub module: Option<PathBuf>,
}

#[async_trait::async_trait]
impl KeySource for Pkcs11KeySource {
    async fn as_sign(
        &self,
    ) -> std::result::Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let key = TokenKey::open(&self.uri, &token_config(self.module.as_deref()))?;
        let tuf = tuf_key(key.public_key())?;
        Ok(Box::new(TokenSigner { key, tuf }))
    }

    /// A token key is never written from outside: it is generated inside the token.
    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err(format!(
            "{}: a key in a PKCS#11 token cannot be written, only generated in it",
            self.uri
        )
        .into())
    }
}

/// A token key as a tough [`Sign`]: the token signs, its public key is the TUF key.
struct TokenSigner {
    key: TokenKey,
    tuf: Key,
}

#[async_trait::async_trait]
impl Sign for TokenSigner {
    fn tuf_key(&self) -> Key {
        self.tuf.clone()
    }

    async fn sign(
        &self,
        msg: &[u8],
        _rng: &(dyn aws_lc_rs::rand::SecureRandom + Sync),
    ) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.key.sign(msg)?)
    }
}

/// A key pair generated in a token, and its public key file.
#[derive(Debug, Clone)]
pub struct GeneratedTokenKey {
    /// The key id.
    pub keyid: KeyId,
    /// The TUF public key.
    pub public: Key,
    /// `<dir>/<name>.pub.json`, for `init --root-key` and `root stage --add-key`.
    pub public_path: PathBuf,
}

/// Generates a key pair inside the token `uri` names (never extractable) and writes its public key
/// to `<dir>/<name>.pub.json`. Refuses when the token already holds a key of that label or id, or the
/// file exists.
pub fn generate_token_key(
    uri: &Pkcs11Uri,
    module: Option<&Path>,
    algorithm: KeyAlgorithm,
    dir: &Path,
    name: &str,
) -> Result<GeneratedTokenKey> {
    crate::names::check_file_stem("key name", name)?;
    let public_path = dir.join(format!("{name}{PUBLIC_KEY_SUFFIX}"));
    if public_path.exists() {
        return Err(Error::AlreadyExists { path: public_path });
    }
    let public =
        ota_pkcs11::generate_key_pair(uri, &token_config(module), algorithm).map_err(|e| Error::Key {
            source_name: uri.to_string(),
            why: crate::keys::error_chain(&e),
        })?;
    let public = tuf_key(&public)?;
    let keyid = key_id(&public)?;
    let json = serde_json::to_vec_pretty(&public).map_err(|e| Error::Tough(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(crate::error::io("create directory", dir))?;
    ota_fs::write_new(&public_path, &json, 0o666)?;
    ota_fs::sync_dir(dir)?;
    Ok(GeneratedTokenKey {
        keyid,
        public,
        public_path,
    })
}
