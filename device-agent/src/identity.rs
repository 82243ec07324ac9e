//! The device's identity key and the root-of-trust fingerprint check.
//!
//! The identity is a key pair (ed25519, or ECDSA P-256 in a token); its public half names the device
//! (its [`IdentityKey::device_id`] also decides the device's rollout bucket) and its private half signs
//! what the device reports and its TLS handshakes with the collector. Callers see it only through the
//! [`IdentityKey`] trait, so where the private key lives is the implementation's business:
//! [`FileIdentity`] by default (an ed25519 key made on the device at provisioning, PKCS#8 DER, mode
//! 0600, never overwritten and never logged; the agent refuses to start when it is missing,
//! unreadable, or readable by group or others), or [`crate::token_identity::TokenIdentity`], a key
//! generated inside a PKCS#11 token that never leaves it (the `[identity]` table of the config).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use ota_report::PublicKey;
use sha2::{Digest, Sha256};

use crate::config::AgentConfig;
use crate::error::{Error, Result};

/// File name of the identity key in the state directory.
pub const IDENTITY_FILE: &str = "identity.pk8";

/// A PKCS#8 document for an ed25519 key is 48 bytes; anything much larger is not one.
const MAX_KEY_FILE: u64 = 4096;

/// The device's unique identity: a key whose private half may live anywhere (a file, a token).
pub trait IdentityKey: Send + Sync {
    /// The public key (ed25519 or ECDSA P-256).
    fn public_key(&self) -> PublicKey;

    /// Signs `message` (device reports, the TLS handshake, the client certificate): the 64 raw bytes
    /// for ed25519, ASN.1 DER over SHA-256 for ECDSA P-256 (as DSSE reports and TLS both carry it).
    /// Fallible: a token may be absent or refuse.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;

    /// A stable, printable device id: `dev-` and the first 16 hex digits of sha256(public key bytes).
    /// The same for every implementation: the id follows the key, not where it is stored.
    fn device_id(&self) -> String {
        self.public_key().device_id().to_string()
    }

    /// The public key's bytes, hex (32 bytes for ed25519, the 33-byte compressed point for P-256):
    /// what `collector enroll --key` takes.
    fn public_key_hex(&self) -> String {
        hex::encode(self.public_key().to_bytes())
    }
}

/// A shared identity is the identity (the daemon's report sender and its device hold the same key).
impl<K: IdentityKey + ?Sized> IdentityKey for Arc<K> {
    fn public_key(&self) -> PublicKey {
        self.as_ref().public_key()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.as_ref().sign(message)
    }
}

/// Opens the identity the configuration names: the key file in the state directory (checked as
/// [`crate::trust::check_key_file`] does), or the key in a PKCS#11 token, checked against the public
/// key recorded at provisioning. A token that is missing, locked or refuses the PIN is an error that
/// says which.
pub fn open_configured(config: &AgentConfig) -> Result<Arc<dyn IdentityKey>> {
    match &config.identity {
        None => {
            let path = FileIdentity::path_in(&config.state_dir);
            crate::trust::check_key_file(&path)?;
            Ok(Arc::new(FileIdentity::load(&path)?))
        }
        Some(token) => {
            let identity = crate::token_identity::TokenIdentity::open(token)?;
            crate::token_identity::check_recorded(&config.state_dir, &identity)?;
            Ok(Arc::new(identity))
        }
    }
}

/// The identity key in a file in the state directory.
pub struct FileIdentity {
    key: SigningKey,
}

impl std::fmt::Debug for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("FileIdentity")
            .field("device_id", &self.device_id())
            .finish()
    }
}

impl IdentityKey for FileIdentity {
    fn public_key(&self) -> PublicKey {
        PublicKey::Ed25519(self.key.verifying_key())
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        use ed25519_dalek::Signer;
        Ok(self.key.sign(message).to_bytes().to_vec())
    }
}

impl FileIdentity {
    /// The key file's path in `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(IDENTITY_FILE)
    }

    /// Creates the identity key at `path` (0600, created exclusively, fsynced), or, when a key is already
    /// there, loads it: an identity is never overwritten.
    pub fn create_or_load(path: &Path) -> Result<(FileIdentity, bool)> {
        if path.exists() {
            return Ok((FileIdentity::load(path)?, false));
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key.to_pkcs8_der().map_err(|e| Error::KeyFormat {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        ota_fs::write_private(path, der.as_bytes())?;
        Ok((FileIdentity { key }, true))
    }

    /// Loads the identity key, refusing a missing, unreadable, group- or world-readable, or malformed file.
    pub fn load(path: &Path) -> Result<FileIdentity> {
        let meta = std::fs::metadata(path).map_err(Error::io("read identity key", path))?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let der = ota_fs::read_bounded(path, MAX_KEY_FILE)?;
        let key = SigningKey::from_pkcs8_der(&der).map_err(|e| Error::KeyFormat {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        Ok(FileIdentity { key })
    }
}

/// Parses a root fingerprint: 64 hex digits, any case, with optional `:` or whitespace separators (as
/// printed by `repo-tool`, or read off its QR code).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32]> {
    let compact: String = text
        .chars()
        .filter(|c| !(c.is_whitespace() || *c == ':'))
        .collect();
    let compact = compact
        .strip_prefix("sha256:")
        .unwrap_or(&compact)
        .to_ascii_lowercase();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&compact, &mut out).map_err(|_| Error::FingerprintSyntax {
        value: text.to_owned(),
    })?;
    Ok(out)
}

/// Checks that `root_json` (read from `path`) hashes to `fingerprint`.
pub fn check_root_fingerprint(path: &Path, root_json: &[u8], fingerprint: &[u8; 32]) -> Result<()> {
    let got: [u8; 32] = Sha256::digest(root_json).into();
    if &got != fingerprint {
        return Err(Error::RootFingerprint {
            path: path.to_owned(),
            expected: hex::encode(fingerprint),
            got: hex::encode(got),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_created_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(IDENTITY_FILE);
        let (first, created) = FileIdentity::create_or_load(&p).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let bytes = std::fs::read(&p).unwrap();
        let (second, created) = FileIdentity::create_or_load(&p).unwrap();
        assert!(!created);
        assert_eq!(first.public_key_hex(), second.public_key_hex());
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        assert!(first.device_id().starts_with("dev-") && first.device_id().len() == 20);
        assert!(!format!("{first:?}").contains(&hex::encode(&bytes)));
    }

    /// A key held elsewhere (a token): only the trait's required methods.
    struct HeldElsewhere(SigningKey);

    impl IdentityKey for HeldElsewhere {
        fn public_key(&self) -> PublicKey {
            PublicKey::Ed25519(self.0.verifying_key())
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
            use ed25519_dalek::Signer;
            Ok(self.0.sign(message).to_bytes().to_vec())
        }
    }

    #[test]
    fn the_device_id_follows_the_key_wherever_it_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(IDENTITY_FILE);
        let (file_key, _) = FileIdentity::create_or_load(&p).unwrap();
        let der = std::fs::read(&p).unwrap();
        let elsewhere = HeldElsewhere(SigningKey::from_pkcs8_der(&der).unwrap());
        let keys: [&dyn IdentityKey; 2] = [&file_key, &elsewhere];
        // The definition, spelled out: dev- and 16 hex digits of sha256(public key).
        let digest = hex::encode(Sha256::digest(file_key.public_key().to_bytes()));
        let want = format!("dev-{}", &digest[..16]);
        let PublicKey::Ed25519(public) = file_key.public_key() else {
            panic!("a key file is ed25519");
        };
        for key in keys {
            assert_eq!(key.device_id(), want);
            let sig = ed25519_dalek::Signature::from_slice(&key.sign(b"report").unwrap()).unwrap();
            public.verify_strict(b"report", &sig).unwrap();
        }
    }

    #[test]
    fn two_devices_get_different_identities() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = FileIdentity::create_or_load(&dir.path().join("a")).unwrap();
        let (b, _) = FileIdentity::create_or_load(&dir.path().join("b")).unwrap();
        assert_ne!(a.device_id(), b.device_id());
    }

    #[test]
    fn readable_missing_or_garbage_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(IDENTITY_FILE);
        let err = FileIdentity::load(&p).unwrap_err().to_string();
        assert!(err.contains("identity key"), "{err}");
        FileIdentity::create_or_load(&p).unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = FileIdentity::load(&p).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        FileIdentity::load(&p).unwrap();
        let g = dir.path().join("garbage");
        std::fs::write(&g, b"not a key").unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(FileIdentity::load(&g).unwrap_err().to_string().contains("PKCS#8"));
        // A file far larger than any key is refused before it is read whole.
        std::fs::write(&g, vec![0u8; 1 << 20]).unwrap();
        let err = FileIdentity::load(&g).unwrap_err();
        assert!(
            matches!(err, Error::File(ota_fs::Error::TooLarge { .. })),
            "{err}"
        );
    }

    #[test]
    fn fingerprints_parse_leniently_and_check_strictly() {
        let root = br#"{"signed":{}}"#;
        let hex = hex::encode(Sha256::digest(root));
        let spaced: String = hex
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(" ");
        let fp = parse_fingerprint(&spaced).unwrap();
        check_root_fingerprint(Path::new("root.json"), root, &fp).unwrap();
        let err = check_root_fingerprint(Path::new("root.json"), b"{}", &fp)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&hex) && err.contains("refusing"), "{err}");
        assert!(parse_fingerprint("abc")
            .unwrap_err()
            .to_string()
            .contains("64 hex"));
    }
}
