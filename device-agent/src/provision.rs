//! Provisioning: pins the root of trust, creates the device's identity key and records the image the
//! device runs, so that [`crate::device::Device::open`] finds a provisioned state directory.
//!
//! It does not talk to the repository (the root comes from the operator with its fingerprint) and does
//! not update anything.

use std::path::Path;

use ota_release::{Sha256Digest, Version};
use ota_slot::{slot_sha256, BootControl, Slot};
use ota_tuf::Client;
use serde::Serialize;

use crate::config::IdentityConfig;
use crate::device::{SlotPair, METADATA_DIR, PINNED_ROOT_FILE};
use crate::error::{Error, Result};
use crate::identity::{check_root_fingerprint, parse_fingerprint, FileIdentity, IdentityKey};
use crate::state::{DeviceRecord, RecordFile, SlotImage};
use crate::token_identity::{record_public, TokenIdentity};
use crate::SlotId;

/// Largest root.json accepted at provisioning (TUF 5.3.3's suggested bound).
const MAX_ROOT_FILE: u64 = 512 * 1024;
/// Largest pinned-root file accepted (64 hex digits and a newline; more is not ours).
const MAX_PINNED_FILE: u64 = 4096;

/// The image running now and the factory facts given at provisioning.
#[derive(Clone, Debug)]
pub struct FactoryImage {
    /// Version of the image in the booted slot.
    pub version: Version,
    /// Its length in bytes (its sha256 is measured from the slot).
    pub length: u64,
}

/// What provisioning did.
#[derive(Clone, Debug, Serialize)]
pub struct ProvisionReport {
    /// The device id derived from the identity key.
    pub device_id: String,
    /// The identity's public key (hex).
    pub public_key: String,
    /// False when an identity key already existed and was kept.
    pub key_created: bool,
    /// sha256 of the pinned root.
    pub root_sha256: String,
    /// The booted slot.
    pub booted: SlotId,
    /// The running image's sha256 as measured.
    pub running_sha256: String,
}

/// Where provisioning makes (or finds) the identity key.
#[derive(Clone, Copy, Debug)]
pub enum IdentitySource<'a> {
    /// The ed25519 key file in the state directory (the default).
    File,
    /// A key in a PKCS#11 token, generated there when the token has none by that name.
    Token(&'a IdentityConfig),
}

impl<'a> IdentitySource<'a> {
    /// The source the configuration's `[identity]` table names.
    pub fn of(identity: Option<&'a IdentityConfig>) -> IdentitySource<'a> {
        identity.map_or(IdentitySource::File, IdentitySource::Token)
    }
}

/// Pins the root of trust, creates the identity key file and records the running image
/// ([`provision_with`] and [`IdentitySource::File`]).
pub fn provision<S: Slot, B: BootControl>(
    state_dir: &Path,
    root_path: &Path,
    fingerprint: &str,
    factory: &FactoryImage,
    slots: &mut SlotPair<S>,
    boot: &mut B,
) -> Result<ProvisionReport> {
    let pinned = pin_root(state_dir, root_path, fingerprint)?;
    finish(state_dir, IdentitySource::File, pinned, factory, slots, boot)
}

/// Pins the root of trust, creates the identity key where `identity` says (a key made in a token
/// never leaves it: only its public key is recorded) and records the running image.
///
/// Refuses a root whose sha256 is not `fingerprint`, and a device already pinned to another root.
/// Running it again with the same root is harmless: the key, the (possibly rotated) trusted metadata and
/// the update record are kept.
pub fn provision_with<S: Slot, B: BootControl>(
    state_dir: &Path,
    identity: IdentitySource<'_>,
    (root_path, fingerprint): (&Path, &str),
    factory: &FactoryImage,
    slots: &mut SlotPair<S>,
    boot: &mut B,
) -> Result<ProvisionReport> {
    let pinned = pin_root(state_dir, root_path, fingerprint)?;
    finish(state_dir, identity, pinned, factory, slots, boot)
}

/// Checks the root against the fingerprint and pins it (or finds it pinned already); returns the
/// root's sha256, hex.
fn pin_root(state_dir: &Path, root_path: &Path, fingerprint: &str) -> Result<String> {
    let expected = parse_fingerprint(fingerprint)?;
    let root = ota_fs::read_bounded(root_path, MAX_ROOT_FILE)?;
    check_root_fingerprint(root_path, &root, &expected)?;
    let root_hex = hex::encode(expected);

    create_private_dir(state_dir)?;
    let pinned_path = state_dir.join(PINNED_ROOT_FILE);
    match ota_fs::read_bounded(&pinned_path, MAX_PINNED_FILE) {
        Ok(pinned) => {
            let pinned = String::from_utf8_lossy(&pinned).trim().to_owned();
            if pinned != root_hex {
                return Err(Error::AlreadyProvisioned {
                    pinned,
                    offered: root_hex,
                });
            }
        }
        Err(ota_fs::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Client::init(&state_dir.join(METADATA_DIR), &root)?;
            ota_fs::write_atomic(&pinned_path, format!("{root_hex}\n").as_bytes(), 0o644)?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(root_hex)
}

/// The identity key, made where `source` says or found there.
fn create_identity(state_dir: &Path, source: IdentitySource<'_>) -> Result<(Box<dyn IdentityKey>, bool)> {
    match source {
        IdentitySource::File => {
            let (key, created) = FileIdentity::create_or_load(&FileIdentity::path_in(state_dir))?;
            Ok((Box::new(key), created))
        }
        IdentitySource::Token(config) => {
            let (key, created) = TokenIdentity::create_or_open(config)?;
            record_public(state_dir, &key)?;
            Ok((Box::new(key), created))
        }
    }
}

/// Provisioning after the root is pinned: the identity, and the record of the running image.
fn finish<S: Slot, B: BootControl>(
    state_dir: &Path,
    source: IdentitySource<'_>,
    root_hex: String,
    factory: &FactoryImage,
    slots: &mut SlotPair<S>,
    boot: &mut B,
) -> Result<ProvisionReport> {
    let (identity, key_created) = create_identity(state_dir, source)?;
    let booted = boot.booted()?;
    let running = Sha256Digest(slot_sha256(slots.get_mut(booted), factory.length)?);
    let record_file = RecordFile::in_dir(state_dir);
    if !record_file.exists() {
        let image = SlotImage {
            version: factory.version.clone(),
            sha256: running,
            length: factory.length,
        };
        record_file.save(&DeviceRecord::provisioned(booted, image))?;
    }
    Ok(ProvisionReport {
        device_id: identity.device_id(),
        public_key: identity.public_key_hex(),
        key_created,
        root_sha256: root_hex,
        booted,
        running_sha256: running.to_hex(),
    })
}

/// Creates the state directory (0700) if it does not exist yet, or closes an existing one to group and
/// others (provisioning's first step; the agent lock lives in it, and every start refuses it open).
pub fn create_state_dir(dir: &Path) -> Result<()> {
    create_private_dir(dir)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io("close state directory", dir));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Error::io("create state directory", dir))
}
