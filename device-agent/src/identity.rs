//! The device's identity key and the root-of-trust fingerprint check.
//!
//! The identity is an ed25519 key pair; its public half names the device (its [`IdentityKey::device_id`]
//! also decides the device's rollout bucket) and its private half signs what the device reports. Callers
//! see it only through the [`IdentityKey`] trait, so where the private key lives is the implementation's
//! business: [`FileIdentity`] today (made on the device at provisioning, PKCS#8 DER, mode 0600, never
//! overwritten and never logged; the agent refuses to start when it is missing, unreadable, or readable
//! by group or others), a PKCS#11 token later, without touching the callers.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File name of the identity key in the state directory.
pub const IDENTITY_FILE: &str = "identity.pk8";

/// A PKCS#8 document for an ed25519 key is 48 bytes; anything much larger is not one.
const MAX_KEY_FILE: u64 = 4096;

/// The device's unique identity: an ed25519 key whose private half may live anywhere (a file, a token).
pub trait IdentityKey: Send + Sync {
    /// The public key.
    fn public_key(&self) -> VerifyingKey;

    /// Signs `message` (device reports, enrolment). Fallible: a token may be absent or refuse.
    fn sign(&self, message: &[u8]) -> Result<Signature>;

    /// A stable, printable device id: `dev-` and the first 16 hex digits of sha256(public key). The same
    /// for every implementation: the id follows the key, not where it is stored.
    fn device_id(&self) -> String {
        device_id_of(&self.public_key())
    }

    /// The public key, hex.
    fn public_key_hex(&self) -> String {
        hex::encode(self.public_key().as_bytes())
    }
}

/// The device id of `public_key` (see [`IdentityKey::device_id`]).
pub fn device_id_of(public_key: &VerifyingKey) -> String {
    let hex = hex::encode(Sha256::digest(public_key.as_bytes()));
    format!("dev-{}", hex.get(..16).unwrap_or(&hex))
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
    fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    fn sign(&self, message: &[u8]) -> Result<Signature> {
        use ed25519_dalek::Signer;
        Ok(self.key.sign(message))
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
        fn public_key(&self) -> VerifyingKey {
            self.0.verifying_key()
        }
        fn sign(&self, message: &[u8]) -> Result<Signature> {
            use ed25519_dalek::Signer;
            Ok(self.0.sign(message))
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
        let digest = hex::encode(Sha256::digest(file_key.public_key().as_bytes()));
        let want = format!("dev-{}", &digest[..16]);
        for key in keys {
            assert_eq!(key.device_id(), want);
            let sig = key.sign(b"report").unwrap();
            key.public_key().verify_strict(b"report", &sig).unwrap();
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
