//! Succinct hash-bin delegations (TAP 15): a role delegates every target name to one of 2^bit_length
//! bins `<name_prefix>-<i in hex>`, where `i` is the first `bit_length` bits of sha256(target name);
//! all bins share one set of keys and a threshold, and the search stops at the bin (terminating).
//!
//! tough 0.24's schema has no `succinct_roles` (its `Delegations` requires `roles` and keeps no
//! unknown fields), so this module is the one place that knows the format:
//! - reading: a targets file with `delegations.succinct_roles` is parsed with that object expanded, in
//!   memory only, into the equivalent list of `path_hash_prefixes` roles (a bin of 10 bits is four
//!   3-hex-digit prefixes), so the loader, `add`, `verify` and `list` walk the bins as ordinary roles;
//!   the delegator's signatures are checked over the canonical form of the bytes as read
//!   ([`signed_canonical`]), never over the expansion.
//! - writing: [`delegate_hash_bins`] writes the delegator's new version as canonical JSON with
//!   `succinct_roles` and signs those canonical bytes; the bins themselves are ordinary targets files.
//!
//! It does not re-sign a delegator through the generic targets writer (that would write the
//! expansion): delegating further from such a role is refused ([`refuse_resign`]).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{Signed, Targets};

use crate::canonical::canonical;
use crate::error::{invalid, io, Error, Result};
use crate::keys::KeyRing;
use crate::loader::{MetaFile, RepoState};
use crate::lock::RepoLock;
use crate::meta::{bump, expiry_after, now, Expiries, SPEC_VERSION};
use crate::publish::{publish_role_files, role_keys, RoleFile, RoleSpec};
use crate::store::DirStore;

/// The most bins `repo-tool delegate --hash-bins` creates (2^14): a snapshot lists every bin.
pub const MAX_BINS: u32 = 1 << 14;

/// The field name, quoted, as it appears in a file that has it.
const SUCCINCT_FIELD: &[u8] = b"\"succinct_roles\"";

/// A `succinct_roles` object (TAP 15).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Succinct {
    pub keyids: Vec<String>,
    pub threshold: u64,
    pub bit_length: u32,
    pub name_prefix: String,
}

impl Succinct {
    /// The bin responsible for a target name: the first `bit_length` bits of sha256(name).
    pub(crate) fn bin_for(&self, name: &str) -> String {
        let digest = Sha256::digest(name.as_bytes());
        let first = digest.first_chunk::<4>().copied().unwrap_or_default();
        let index = u32::from_be_bytes(first) >> (32 - self.bit_length);
        self.bin_name(index)
    }

    fn bin_name(&self, index: u32) -> String {
        let width = format!("{:x}", self.bins() - 1).len();
        format!("{}-{index:0width$x}", self.name_prefix)
    }

    fn bins(&self) -> u32 {
        1 << self.bit_length
    }

    /// The equivalent `path_hash_prefixes` roles, one per bin, all terminating.
    fn expanded_roles(&self) -> Vec<Value> {
        let digits = self.bit_length.div_ceil(4) as usize;
        let spare = digits as u32 * 4 - self.bit_length;
        (0..self.bins())
            .map(|i| {
                let prefixes: Vec<String> = (0..1u32 << spare)
                    .map(|j| format!("{:0digits$x}", (i << spare) | j))
                    .collect();
                json!({
                    "name": self.bin_name(i),
                    "keyids": self.keyids,
                    "threshold": self.threshold,
                    "terminating": true,
                    "path_hash_prefixes": prefixes,
                })
            })
            .collect()
    }
}

/// Reads a targets metadata file; with `succinct_roles`, also returns them, the delegations expanded.
pub(crate) fn read_targets(path: &Path, what: &'static str) -> Result<(MetaFile<Targets>, Option<Succinct>)> {
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    let malformed = |why: String| Error::Malformed {
        what,
        path: path.to_owned(),
        why,
    };
    // Without the field, parse as before (no JSON value built for a large targets map; duplicate keys
    // refused by the typed parser).
    if !bytes.windows(SUCCINCT_FIELD.len()).any(|w| w == SUCCINCT_FIELD) {
        let signed = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        return Ok((MetaFile { signed, bytes }, None));
    }
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    let succinct = match value
        .pointer_mut("/signed/delegations")
        .and_then(Value::as_object_mut)
    {
        Some(delegations) => match delegations.remove("succinct_roles") {
            Some(s) => {
                let s: Succinct =
                    serde_json::from_value(s).map_err(|e| malformed(format!("succinct_roles: {e}")))?;
                if !(1..=32).contains(&s.bit_length) || delegations.contains_key("roles") {
                    return Err(malformed(
                        "succinct_roles: bit_length must be 1 to 32, and no `roles` beside it".into(),
                    ));
                }
                delegations.insert("roles".into(), Value::Array(s.expanded_roles()));
                Some(s)
            }
            None => None,
        },
        None => None,
    };
    let signed: Signed<Targets> = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
    Ok((MetaFile { signed, bytes }, succinct))
}

/// The canonical form of the `signed` part of metadata bytes as read: what its signatures sign.
pub(crate) fn signed_canonical(bytes: &[u8]) -> Result<Vec<u8>> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid("metadata", format!("not JSON: {e}")))?;
    let signed = value
        .get("signed")
        .ok_or_else(|| invalid("metadata", "no `signed` object"))?;
    canonical(signed)
}

/// Refuses to re-sign a role that delegates to hash bins through the generic writer.
pub(crate) fn refuse_resign(state: &RepoState, role: &str, why: &str) -> Result<()> {
    if state.succinct.contains_key(role) {
        return Err(invalid(
            format!("role {role:?}"),
            format!("delegates to hash bins: {why}"),
        ));
    }
    Ok(())
}

/// What [`delegate_hash_bins`] creates.
#[derive(Debug, Clone)]
pub struct HashBinSpec {
    /// The bins' name prefix: bins are `<prefix>-<i in hex>`.
    pub name_prefix: String,
    /// How many bins: a power of two, 2 to [`MAX_BINS`].
    pub bins: u32,
    /// The keys and threshold every bin is signed with.
    pub keys: RoleSpec,
}

/// Delegates everything under `from` (a role without delegations yet) to `spec.bins` empty hash-bin
/// roles, signed with the ring's keys of `from` and of the bins; publishes `from`'s next version, every
/// bin's first, snapshot and timestamp. Returns the bins' names.
pub fn delegate_hash_bins(
    repo: &Path,
    from: &str,
    spec: &HashBinSpec,
    expiries: &Expiries,
    ring: &KeyRing,
) -> Result<Vec<String>> {
    if !spec.bins.is_power_of_two() || !(2..=MAX_BINS).contains(&spec.bins) {
        return Err(invalid(
            format!("--hash-bins {}", spec.bins),
            format!("expected a power of two from 2 to {MAX_BINS}"),
        ));
    }
    crate::names::check_delegated_role_name(&spec.name_prefix)?;
    let _lock = RepoLock::acquire(repo, "delegate")?;
    let state = RepoState::load(repo)?;
    let parent_keys = state.targets_role_keys(from)?;
    parent_keys.check_ring_or_stage(ring)?;
    let mut parent = state.role_targets(from)?.clone();
    if parent.delegations.as_ref().is_some_and(|d| !d.roles.is_empty()) {
        return Err(invalid(
            format!("role {from:?}"),
            "already delegates: hash bins take every target under a role without other delegations",
        ));
    }
    let mut keys = HashMap::new();
    let rk = role_keys("hash-bin", &spec.keys, &mut keys)?;
    let succinct = Succinct {
        keyids: crate::trust::hex_ids(&rk.keyids),
        threshold: rk.threshold.get(),
        bit_length: spec.bins.trailing_zeros(),
        name_prefix: spec.name_prefix.clone(),
    };
    let now = now()?;
    parent.version = bump(parent.version)?;
    parent.expires = expiry_after(now, expiries.targets)?;
    parent.delegations = None;
    let value = delegator_json(&parent, &keys, &succinct)?;
    let (mut files, names) = sign_empty_bins(&state, &succinct, expiry_after(now, expiries.targets)?, ring)?;
    // The delegator last: every bin file exists before anything names it.
    files.push(RoleFile::from_bytes(
        from,
        parent.version,
        parent_keys.sign_to_file(&value, ring)?,
    ));
    publish_role_files(&state, files, expiries, ring, &mut DirStore::new(repo))?;
    Ok(names)
}

/// Every bin's first version, empty, signed with the ring's bin keys (all bins share them). Returns
/// the files and the bins' names.
fn sign_empty_bins(
    state: &RepoState,
    succinct: &Succinct,
    expires: jiff::Timestamp,
    ring: &KeyRing,
) -> Result<(Vec<RoleFile>, Vec<String>)> {
    let bin_keys = crate::trust::RoleKeySet {
        name: succinct.name_prefix.clone(),
        keyids: succinct.keyids.clone(),
        threshold: succinct.threshold,
    };
    bin_keys.check_ring_or_stage(ring)?;
    let empty = Targets {
        spec_version: SPEC_VERSION.to_owned(),
        version: NonZeroU64::MIN,
        expires,
        targets: HashMap::new(),
        delegations: None,
        _extra: HashMap::new(),
    };
    let mut files = Vec::with_capacity(succinct.bins() as usize + 1);
    let mut names = Vec::with_capacity(succinct.bins() as usize);
    for i in 0..succinct.bins() {
        let name = succinct.bin_name(i);
        if state.delegated.contains_key(&name) {
            return Err(invalid(format!("role {name:?}"), "exists already"));
        }
        files.push(RoleFile::sign(&name, &empty, &bin_keys, ring)?);
        names.push(name);
    }
    Ok((files, names))
}

/// The delegator's `signed` object: its targets metadata with `delegations` of `keys` and `succinct_roles`.
fn delegator_json(parent: &Targets, keys: &HashMap<Decoded<Hex>, Key>, succinct: &Succinct) -> Result<Value> {
    let json_error = |e: serde_json::Error| invalid("targets metadata", e.to_string());
    let mut value = serde_json::to_value(parent).map_err(json_error)?;
    let keys_json: serde_json::Map<String, Value> = keys
        .iter()
        .map(|(id, k)| Ok((hex::encode(id), serde_json::to_value(k).map_err(json_error)?)))
        .collect::<Result<_>>()?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| invalid("targets metadata", "not a JSON object"))?;
    object.insert(
        "delegations".into(),
        json!({
            "keys": keys_json,
            "succinct_roles": {
                "keyids": succinct.keyids,
                "threshold": succinct.threshold,
                "bit_length": succinct.bit_length,
                "name_prefix": succinct.name_prefix,
            },
        }),
    );
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn bins(bit_length: u32) -> Succinct {
        Succinct {
            keyids: vec![],
            threshold: 1,
            bit_length,
            name_prefix: "bin".into(),
        }
    }

    /// TAP 15's example names and python-tuf's `SuccinctRoles.get_role_for_target` arithmetic.
    #[test]
    fn bin_names_and_placement_follow_tap_15() {
        let b = bins(10);
        assert_eq!(b.bin_name(0), "bin-000");
        assert_eq!(b.bin_name(1023), "bin-3ff");
        assert_eq!(bins(4).bin_name(15), "bin-f");
        let name = "fw/board-1/image-1.bin";
        let digest = hex::encode(Sha256::digest(name.as_bytes()));
        let first = u32::from_str_radix(&digest[..8], 16).unwrap();
        assert_eq!(b.bin_for(name), format!("bin-{:03x}", first >> 22));
    }

    /// Each bin's expanded prefixes are exactly the digests that place a name in that bin.
    #[test]
    fn expanded_prefixes_cover_exactly_the_bin() {
        let b = bins(10);
        let roles = b.expanded_roles();
        assert_eq!(roles.len(), 1024);
        for n in 0..200 {
            let name = format!("t/{n}");
            let digest = hex::encode(Sha256::digest(name.as_bytes()));
            let holders: Vec<&str> = roles
                .iter()
                .filter(|r| {
                    r["path_hash_prefixes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| digest.starts_with(p.as_str().unwrap()))
                })
                .map(|r| r["name"].as_str().unwrap())
                .collect();
            assert_eq!(holders, [b.bin_for(&name)]);
        }
    }
}
