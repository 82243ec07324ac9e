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

use crate::device::{SlotPair, METADATA_DIR, PINNED_ROOT_FILE};
use crate::error::{Error, Result};
use crate::identity::{check_root_fingerprint, parse_fingerprint, FileIdentity, IdentityKey};
use crate::state::{DeviceRecord, RecordFile, SlotImage};
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

/// Pins the root of trust, creates the identity key and records the running image.
///
/// Refuses a root whose sha256 is not `fingerprint`, and a device already pinned to another root.
/// Running it again with the same root is harmless: the key, the (possibly rotated) trusted metadata and
/// the update record are kept.
pub fn provision<S: Slot, B: BootControl>(
    state_dir: &Path,
    root_path: &Path,
    fingerprint: &str,
    factory: &FactoryImage,
    slots: &mut SlotPair<S>,
    boot: &mut B,
) -> Result<ProvisionReport> {
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

    let (identity, key_created) = FileIdentity::create_or_load(&FileIdentity::path_in(state_dir))?;
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
