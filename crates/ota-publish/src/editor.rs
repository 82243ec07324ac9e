//! Signing the new top of a repository after a change: snapshot and timestamp metadata over the
//! changed targets files (TUF 5.5, 5.4). Every command that publishes ends here.

use std::num::NonZeroU64;

use tough::schema::{RoleType, Root, Snapshot, Timestamp};

use crate::error::Result;
use crate::keys::KeyRing;
use crate::loader::RepoState;
use crate::meta::{bump, expiry_after, metafile, now, Expiries, SPEC_VERSION};
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
