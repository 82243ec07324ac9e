//! The end of every command that changes a repository: signing the new top of the repository
//! (snapshot and timestamp over the changed targets files, TUF 5.5, 5.4) and committing a
//! [`Publication`] through a [`RepoStore`]: new metadata files, flush, `timestamp.json` last, or
//! nothing at all if any step fails.

use std::num::NonZeroU64;

use tough::schema::{RoleType, Root, Snapshot, Timestamp};

use crate::error::Result;
use crate::keys::KeyRing;
use crate::loader::RepoState;
use crate::meta::{bump, expiry_after, metafile, now, Expiries, SPEC_VERSION};
use crate::store::RepoStore;
use crate::trust::{top_role_keys, RoleKeySet};

/// Builds new snapshot and timestamp metadata on top of `state`, with these targets files replaced
/// (role name → new bytes and version), and returns their (file name, bytes) plus timestamp bytes.
pub(crate) fn resign_snapshot_and_timestamp(
    state: &RepoState,
    root: &Root,
    changed: &[(String, NonZeroU64, Vec<u8>)],
    expiries: &Expiries,
    ring: &KeyRing,
) -> Result<(String, Vec<u8>, Vec<u8>)> {
    let now = now()?;
    let old = &state.snapshot.signed.signed;
    let mut snapshot = Snapshot::new(
        SPEC_VERSION.to_owned(),
        bump(old.version)?,
        expiry_after(now, expiries.snapshot)?,
    );
    snapshot.meta = old.meta.clone();
    for (role, version, bytes) in changed {
        snapshot
            .meta
            .insert(format!("{role}.json"), metafile(*version, bytes));
    }
    let snapshot_keys = top_role_keys(root, RoleType::Snapshot)?;
    let timestamp_keys = top_role_keys(root, RoleType::Timestamp)?;
    // Check both before signing either, so a missing timestamp key fails before any work.
    snapshot_keys.check_ring(ring)?;
    timestamp_keys.check_ring(ring)?;
    let snapshot_version = snapshot.version;
    let snapshot_bytes = snapshot_keys.sign_to_file(&snapshot, ring)?;
    let timestamp_bytes = sign_timestamp(
        &state.timestamp.signed.signed,
        snapshot_version,
        &snapshot_bytes,
        expiries,
        &timestamp_keys,
        ring,
    )?;
    Ok((
        format!("{snapshot_version}.snapshot.json"),
        snapshot_bytes,
        timestamp_bytes,
    ))
}

/// A new timestamp (version + 1) pointing at this snapshot.
pub(crate) fn sign_timestamp(
    old: &Timestamp,
    snapshot_version: NonZeroU64,
    snapshot_bytes: &[u8],
    expiries: &Expiries,
    keys: &RoleKeySet,
    ring: &KeyRing,
) -> Result<Vec<u8>> {
    let mut ts = Timestamp::new(
        SPEC_VERSION.to_owned(),
        bump(old.version)?,
        expiry_after(now()?, expiries.timestamp)?,
    );
    ts.meta
        .insert("snapshot.json".into(), metafile(snapshot_version, snapshot_bytes));
    keys.sign_to_file(&ts, ring)
}

/// The metadata a command publishes, once every check passed and everything is signed: new
/// versioned metadata files, in write order, and the new `timestamp.json`. Target files are already
/// in the store (put while the command ran).
#[derive(Debug, Default)]
pub(crate) struct Publication {
    /// (file name in metadata/, bytes); must not exist yet.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// New timestamp.json bytes.
    pub timestamp: Option<Vec<u8>>,
}

impl Publication {
    /// Writes the metadata, makes everything durable, then switches `timestamp.json`; on error the
    /// store rolls back everything it wrote, target files included. On success the store keeps it.
    pub fn commit(self, store: &mut dyn RepoStore) -> Result<()> {
        let written = self.write(store);
        match written {
            Ok(()) => store.keep(),
            Err(_) => store.roll_back(),
        }
        written
    }

    fn write(self, store: &mut dyn RepoStore) -> Result<()> {
        for (name, bytes) in &self.metadata {
            store.put_metadata(name, bytes)?;
        }
        store.flush()?;
        if let Some(ts) = &self.timestamp {
            store.replace_timestamp(ts)?;
        }
        Ok(())
    }
}
