//! Keys: generating ed25519 key pairs, reading public keys, and a [`KeyRing`] of signing keys loaded
//! through tough's [`KeySource`] trait: key files, and keys in PKCS#11 tokens (`token_keys`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::key::Key;
use tough::sign::Sign;

use crate::error::{io, Error, Result};

/// File name suffix of a private key (PKCS#8 DER, as tough's `parse_keypair` reads it).
pub const PRIVATE_KEY_SUFFIX: &str = ".pk8";
/// File name suffix of a public key (the TUF key object as JSON).
pub const PUBLIC_KEY_SUFFIX: &str = ".pub.json";

/// Permission bits of a public key file before the umask (it is meant to be handed around).
const PUBLIC_KEY_MODE: u32 = 0o666;

/// A key id: lowercase hex of the SHA-256 of the key's canonical JSON (TUF 4.2).
pub type KeyId = String;

/// A generated key pair's files and id.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The key id.
    pub keyid: KeyId,
    /// The private key file (mode 0600).
    pub private_path: PathBuf,
    /// The public key file.
    pub public_path: PathBuf,
}

/// Generates an ed25519 key pair into `dir` as `<name>.pk8` (PKCS#8 v2 DER, mode 0600) and
/// `<name>.pub.json` (the TUF public key). Refuses to overwrite either file.
pub fn generate_key(dir: &Path, name: &str) -> Result<GeneratedKey> {
    crate::names::check_file_stem("key name", name)?;
    fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let private_path = dir.join(format!("{name}{PRIVATE_KEY_SUFFIX}"));
    let public_path = dir.join(format!("{name}{PUBLIC_KEY_SUFFIX}"));
    for p in [&private_path, &public_path] {
        if p.exists() {
            return Err(Error::AlreadyExists { path: p.clone() });
        }
    }
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| Error::Key {
        source_name: private_path.display().to_string(),
        why: format!("generating an ed25519 key failed: {e}"),
    })?;
    let pair = tough::sign::parse_keypair(pkcs8.as_ref()).map_err(|e| Error::Key {
        source_name: private_path.display().to_string(),
        why: format!("tough cannot read the generated key: {e}"),
    })?;
    let public = pair.tuf_key();
    let keyid = key_id(&public)?;
    let public_json = serde_json::to_vec_pretty(&public).map_err(|e| Error::Tough(e.to_string()))?;

    // Never overwrites a key silently, even if one appeared since the check above.
    ota_fs::write_private(&private_path, pkcs8.as_ref())?;
    if let Err(e) = ota_fs::write_new(&public_path, &public_json, PUBLIC_KEY_MODE) {
        let _ = fs::remove_file(&private_path);
        return Err(e.into());
    }
    ota_fs::sync_dir(dir)?;
    Ok(GeneratedKey {
        keyid,
        private_path,
        public_path,
    })
}

/// The key id of a public key.
pub fn key_id(key: &Key) -> Result<KeyId> {
    key.key_id()
        .map(|id| hex::encode(id.as_ref()))
        .map_err(|e| Error::Tough(format!("computing a key id: {e}")))
}

/// Reads a public key: a `.pub.json` TUF key object, or a private key file (its public half is used).
pub fn read_public_key(path: &Path) -> Result<Key> {
    let bytes = fs::read(path).map_err(io("read key", path))?;
    if let Ok(key) = serde_json::from_slice::<Key>(&bytes) {
        return Ok(key);
    }
    tough::sign::parse_keypair(&bytes)
        .map(|pair| pair.tuf_key())
        .map_err(|e| Error::Malformed {
            what: "key (expected a TUF public key JSON or a PKCS#8 private key)",
            path: path.to_owned(),
            why: e.to_string(),
        })
}

/// An error and its causes as one line (`a: b: c`): a key source's error arrives boxed, and its chain
/// would be lost in a `String`.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// One signing key: its id, its public key and the signer.
struct Signer {
    name: String,
    public: Key,
    sign: Box<dyn Sign>,
}

/// The signing keys a command may use, by key id. Loaded once per command from [`KeySource`]s.
///
/// Which of them sign a role is decided by the role's key ids in root or delegating metadata: a key
/// that is not listed for a role never signs it.
#[derive(Default)]
pub struct KeyRing {
    signers: BTreeMap<KeyId, Signer>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material: ids and sources only.
        f.debug_map()
            .entries(self.signers.iter().map(|(id, s)| (id, &s.name)))
            .finish()
    }
}

impl KeyRing {
    /// An empty key ring (commands that only read).
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Loads keys from any tough key sources (files, KMS, SSM, ...). `name` of each is used in messages.
    pub fn from_sources(sources: Vec<(String, Box<dyn KeySource>)>) -> Result<KeyRing> {
        let loaded = crate::block::block_on(async move {
            let mut out = Vec::new();
            for (name, source) in sources {
                let sign = source.as_sign().await.map_err(|e| Error::Key {
                    source_name: name.clone(),
                    why: error_chain(e.as_ref()),
                })?;
                out.push((name, sign));
            }
            Ok::<_, Error>(out)
        })??;
        let mut ring = KeyRing::new();
        for (name, sign) in loaded {
            let public = sign.tuf_key();
            let id = key_id(&public)?;
            ring.signers.insert(id, Signer { name, public, sign });
        }
        Ok(ring)
    }

    /// Loads private key files (PKCS#8; the files tough's `LocalKeySource` reads).
    pub fn from_files(paths: &[PathBuf]) -> Result<KeyRing> {
        let mut sources: Vec<(String, Box<dyn KeySource>)> = Vec::new();
        for p in paths {
            if !p.is_file() {
                return Err(Error::Key {
                    source_name: p.display().to_string(),
                    why: "no such key file".into(),
                });
            }
            sources.push((
                p.display().to_string(),
                Box::new(LocalKeySource { path: p.clone() }),
            ));
        }
        KeyRing::from_sources(sources)
    }

    /// Loads keys named by file or by `pkcs11:` URI; `module` is the PKCS#11 module for URIs without
    /// `module-path` (else `OTA_PKCS11_MODULE`).
    pub fn from_refs(refs: &[crate::KeyRef], module: Option<&Path>) -> Result<KeyRing> {
        let mut files = Vec::new();
        let mut sources: Vec<(String, Box<dyn KeySource>)> = Vec::new();
        for r in refs {
            match r {
                crate::KeyRef::File(p) => files.push(p.clone()),
                crate::KeyRef::Pkcs11(uri) => sources.push((
                    uri.to_string(),
                    Box::new(crate::token_keys::Pkcs11KeySource {
                        uri: uri.clone(),
                        module: module.map(Path::to_path_buf),
                    }),
                )),
            }
        }
        let mut ring = KeyRing::from_files(&files)?;
        ring.extend(KeyRing::from_sources(sources)?);
        Ok(ring)
    }

    /// Loads every `*.pk8` private key in a directory.
    pub fn from_dir(dir: &Path) -> Result<KeyRing> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(io("read key directory", dir))? {
            let entry = entry.map_err(io("read key directory", dir))?;
            let p = entry.path();
            if p.to_string_lossy().ends_with(PRIVATE_KEY_SUFFIX) {
                paths.push(p);
            }
        }
        paths.sort();
        KeyRing::from_files(&paths)
    }

    /// Adds all keys of `other` to this ring.
    pub fn extend(&mut self, other: KeyRing) {
        self.signers.extend(other.signers);
    }

    /// Whether the ring holds the private key with this id.
    pub fn has(&self, keyid: &str) -> bool {
        self.signers.contains_key(keyid)
    }

    /// Ids of the keys in this ring.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.signers.keys().cloned().collect()
    }

    /// The public key with this id, if held.
    pub fn public_key(&self, keyid: &str) -> Option<&Key> {
        self.signers.get(keyid).map(|s| &s.public)
    }

    /// Signs `msg` with each listed key that is in the ring; returns (key id, signature) pairs.
    pub(crate) fn sign_with(&self, keyids: &[KeyId], msg: &[u8]) -> Result<Vec<(KeyId, Vec<u8>)>> {
        let chosen: Vec<(&KeyId, &Signer)> = keyids
            .iter()
            .filter_map(|id| self.signers.get_key_value(id.as_str()))
            .collect();
        crate::block::block_on(async move {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let mut out = Vec::new();
            for (id, signer) in chosen {
                let sig = signer.sign.sign(msg, &rng).await.map_err(|e| Error::Key {
                    source_name: signer.name.clone(),
                    why: format!("signing failed: {e}"),
                })?;
                out.push((id.clone(), sig));
            }
            Ok(out)
        })?
    }
}
