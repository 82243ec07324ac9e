//! Metadata on disk: file names of the TUF layout, loading the current repository state, canonical
//! JSON, signing with a [`KeyRing`], expiry times, and the atomic [`Publication`] of new files.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    DelegatedRole, Hashes, Metafile, RoleType, Root, Signature, Signed, Snapshot, Target, Targets, Timestamp,
};

use crate::error::{invalid, io, Error, Result};
use crate::keys::{KeyId, KeyRing};

/// The TUF specification version written into every metadata file.
pub const SPEC_VERSION: &str = "1.0.31";
/// The metadata directory inside a repository.
pub const METADATA_DIR: &str = "metadata";
/// The target files directory inside a repository.
pub const TARGETS_DIR: &str = "targets";
/// The top-level targets role's name.
pub const TARGETS_ROLE: &str = "targets";

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiries {
    /// Root metadata lifetime.
    pub root: jiff::SignedDuration,
    /// Top-level and delegated targets metadata lifetime.
    pub targets: jiff::SignedDuration,
    /// Snapshot lifetime.
    pub snapshot: jiff::SignedDuration,
    /// Timestamp lifetime (the `refresh` cron job must run well within it).
    pub timestamp: jiff::SignedDuration,
}

impl Default for Expiries {
    /// Root 365 days, targets 90 days, snapshot 7 days, timestamp 1 day.
    fn default() -> Self {
        let day = jiff::SignedDuration::from_hours(24);
        Expiries {
            root: day * 365,
            targets: day * 90,
            snapshot: day * 7,
            timestamp: day,
        }
    }
}

/// Parses a lifetime such as `90d`, `12h`, `30m`, `45s` or `2w`.
pub fn parse_lifetime(text: &str) -> Result<jiff::SignedDuration> {
    let bad = || {
        invalid(
            format!("lifetime {text:?}"),
            "expected a number and a unit: s, m, h, d or w (e.g. 90d)",
        )
    };
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (num, unit) = (
        text.get(..split).ok_or_else(bad)?,
        text.get(split..).ok_or_else(bad)?,
    );
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        "w" => n.checked_mul(7 * 86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    if !(1..=100 * 366 * 86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(jiff::SignedDuration::from_secs(secs))
}

/// `now + lifetime`, truncated to whole seconds: TUF metadata writes `YYYY-MM-DDTHH:MM:SSZ` and
/// python-tuf refuses fractional seconds.
pub fn expiry_after(now: jiff::Timestamp, lifetime: jiff::SignedDuration) -> Result<jiff::Timestamp> {
    let t = now
        .checked_add(lifetime)
        .map_err(|e| invalid("expiry", format!("now + {lifetime:?} is out of range: {e}")))?;
    whole_seconds(t)
}

/// Drops the fraction of a second.
pub fn whole_seconds(t: jiff::Timestamp) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_second(t.as_second()).map_err(|e| invalid("timestamp", e.to_string()))
}

/// The current time, in whole seconds.
pub(crate) fn now() -> Result<jiff::Timestamp> {
    whole_seconds(jiff::Timestamp::now())
}

/// Canonical JSON (OLPC, as tough and python-tuf sign it).
///
/// Fast path: when every string is printable ASCII and every number an integer (always the case for
/// what repo-tool writes), OLPC canonical JSON is just sorted keys, no whitespace, and `"` and `\` as the
/// only escapes; that is written directly from a `serde_json::Value`, about 10x faster than
/// olpc-cjson's formatter, which buffers and Unicode-normalizes every string. Anything else goes
/// through olpc-cjson. A unit test checks both give the same bytes.
pub(crate) fn canonical<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let v = serde_json::to_value(value).map_err(|e| Error::Tough(format!("canonical JSON: {e}")))?;
    let mut out = Vec::with_capacity(4096);
    if write_canonical_ascii(&v, &mut out) {
        return Ok(out);
    }
    canonical_olpc(value)
}

/// [`canonical`] of targets metadata without building one `serde_json::Value` for the whole target map
/// (the cost of a single add to a 10,000-target repository): the map is written entry by entry in
/// sorted order and spliced into the canonical form of the rest. Falls back to [`canonical`] whenever
/// the fast form does not apply.
pub(crate) fn canonical_targets(t: &Targets) -> Result<Vec<u8>> {
    if !t._extra.is_empty() {
        return canonical(t);
    }
    let shell = Targets {
        spec_version: t.spec_version.clone(),
        version: t.version,
        expires: t.expires,
        targets: HashMap::new(),
        delegations: t.delegations.clone(),
        _extra: HashMap::new(),
    };
    let head = canonical(&shell)?;
    // With no extra fields the canonical object ends with `"targets":{},"version":N}`.
    let tail = format!("\"targets\":{{}},\"version\":{}}}", t.version);
    let Some(prefix) = head.len().checked_sub(tail.len()).and_then(|at| {
        (head.get(at..) == Some(tail.as_bytes()))
            .then(|| head.get(..at))
            .flatten()
    }) else {
        return canonical(t);
    };
    let mut entries: Vec<_> = t.targets.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.raw().as_bytes().cmp(b.0.raw().as_bytes()));
    let mut out = Vec::with_capacity(head.len() + t.targets.len() * 400);
    out.extend_from_slice(prefix);
    out.extend_from_slice(b"\"targets\":{");
    for (i, (name, target)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if !write_canonical_target(name.raw(), target, &mut out) {
            return canonical(t);
        }
    }
    out.extend_from_slice(format!("}},\"version\":{}}}", t.version).as_bytes());
    Ok(out)
}

/// Writes one entry of a targets map, `"name":{"custom":{...},"hashes":{...},"length":N}`, in canonical
/// form straight from the typed target (keys in sorted order; no intermediate JSON value, which was
/// most of the cost for 10,000 targets). False when the fast form does not apply (extra fields,
/// non-ASCII or non-integer values); then `out` holds garbage.
fn write_canonical_target(name: &str, t: &Target, out: &mut Vec<u8>) -> bool {
    if !t._extra.is_empty() || !t.hashes._extra.is_empty() {
        return false;
    }
    // `Decoded` serializes the hex text it was read from; only plain hex digits are copied as they are.
    let Ok(sha256) = serde_json::to_string(&t.hashes.sha256) else {
        return false;
    };
    let hex_text = sha256
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(hex_text) = hex_text else {
        return false;
    };
    if !write_canonical_str(name, out) {
        return false;
    }
    out.extend_from_slice(b":{");
    if !t.custom.is_empty() {
        out.extend_from_slice(b"\"custom\":");
        if !write_canonical_object(t.custom.iter(), out) {
            return false;
        }
        out.push(b',');
    }
    out.extend_from_slice(b"\"hashes\":{\"sha256\":\"");
    out.extend_from_slice(hex_text.as_bytes());
    out.extend_from_slice(b"\"},\"length\":");
    out.extend_from_slice(t.length.to_string().as_bytes());
    out.push(b'}');
    true
}

/// Writes a JSON string in canonical form if it is printable ASCII (`"` and `\` the only escapes);
/// false otherwise.
fn write_canonical_str(s: &str, out: &mut Vec<u8>) -> bool {
    out.push(b'"');
    for &b in s.as_bytes() {
        if !(0x20..=0x7e).contains(&b) {
            return false;
        }
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    true
}

/// Writes `v` as canonical JSON if it holds only printable-ASCII strings and integers; false otherwise
/// (then `out` holds garbage).
fn write_canonical_ascii(v: &serde_json::Value, out: &mut Vec<u8>) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return false;
            }
        }
        Value::String(s) => return write_canonical_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !write_canonical_ascii(item, out) {
                    return false;
                }
            }
            out.push(b']');
        }
        Value::Object(map) => return write_canonical_object(map.iter(), out),
    }
    true
}

/// Writes an object's members as canonical JSON: keys sorted by their bytes, values as in
/// [`write_canonical_ascii`]; false (and garbage in `out`) if any key or value is not printable ASCII.
fn write_canonical_object<'a>(
    members: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
    out: &mut Vec<u8>,
) -> bool {
    let mut entries: Vec<(&String, &serde_json::Value)> = members.collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if !write_canonical_str(k, out) {
            return false;
        }
        out.push(b':');
        if !write_canonical_ascii(v, out) {
            return false;
        }
    }
    out.push(b'}');
    true
}

/// Canonical JSON through olpc-cjson (any input).
pub(crate) fn canonical_olpc<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut data, olpc_cjson::CanonicalFormatter::new());
    value
        .serialize(&mut ser)
        .map_err(|e| Error::Tough(format!("canonical JSON: {e}")))?;
    Ok(data)
}

/// Key ids as hex strings.
pub(crate) fn hex_ids(ids: &[Decoded<Hex>]) -> Vec<KeyId> {
    ids.iter().map(|id| hex::encode(id.as_ref())).collect()
}

/// Key id hex to tough's decoded form.
pub(crate) fn decoded(id: &str) -> Result<Decoded<Hex>> {
    hex::decode(id)
        .map(Decoded::from)
        .map_err(|_| invalid(format!("key id {id:?}"), "expected hexadecimal"))
}

/// A role's signing keys and threshold.
#[derive(Debug, Clone)]
pub(crate) struct RoleKeySet {
    pub name: String,
    pub keyids: Vec<KeyId>,
    pub threshold: u64,
}

impl RoleKeySet {
    /// Fails (before any work is done) when the ring cannot meet the threshold.
    pub fn check_ring(&self, ring: &KeyRing) -> Result<()> {
        let held = self.keyids.iter().filter(|id| ring.has(id)).count() as u64;
        if held < self.threshold {
            return Err(Error::ThresholdNotMet {
                role: self.name.clone(),
                threshold: self.threshold,
                available: held,
                keyids: self.keyids.join(", "),
            });
        }
        Ok(())
    }

    /// [`RoleKeySet::check_ring`] for a targets role being changed by `add` or `delegate`: when the
    /// threshold is not met, the error says how to stage the change and sign it in steps.
    pub fn check_ring_or_stage(&self, ring: &KeyRing) -> Result<()> {
        self.check_ring(ring).map_err(|e| match e {
            Error::ThresholdNotMet {
                role,
                threshold,
                available,
                keyids,
            } => Error::ThresholdNeedsStaging {
                role,
                threshold,
                available,
                keyids,
            },
            other => other,
        })
    }

    /// Signs `signed` with every key of the role held in the ring.
    #[cfg(test)]
    pub fn sign<T: Serialize>(&self, signed: T, ring: &KeyRing) -> Result<Signed<T>> {
        let msg = canonical(&signed)?;
        let signatures = self.signatures(&msg, ring)?;
        Ok(Signed { signed, signatures })
    }

    /// Signs `signed` and returns the metadata file's bytes, serializing the (large) role only once:
    /// the canonical envelope is `{"signatures":[...],"signed":<canonical role>}` ("signatures" sorts
    /// before "signed"), so the signed bytes are spliced in as they are.
    pub fn sign_to_file<T: Serialize>(&self, signed: &T, ring: &KeyRing) -> Result<Vec<u8>> {
        self.sign_canonical_to_file(canonical(signed)?, ring)
    }

    /// [`RoleKeySet::sign_to_file`] for targets metadata, using [`canonical_targets`].
    pub fn sign_targets_to_file(&self, signed: &Targets, ring: &KeyRing) -> Result<Vec<u8>> {
        self.sign_canonical_to_file(canonical_targets(signed)?, ring)
    }

    fn sign_canonical_to_file(&self, msg: Vec<u8>, ring: &KeyRing) -> Result<Vec<u8>> {
        let signatures = self.signatures(&msg, ring)?;
        envelope(&msg, &signatures)
    }

    fn signatures(&self, msg: &[u8], ring: &KeyRing) -> Result<Vec<Signature>> {
        self.check_ring(ring)?;
        ring.sign_with(&self.keyids, msg)?
            .into_iter()
            .map(|(id, sig)| {
                Ok(Signature {
                    keyid: decoded(&id)?,
                    sig: Decoded::from(sig),
                })
            })
            .collect::<Result<Vec<_>>>()
    }
}

/// The bytes of a metadata file from the canonical signed part and its signatures: the canonical
/// envelope is `{"signatures":[...],"signed":<canonical role>}` ("signatures" sorts before "signed"),
/// so the signed bytes are spliced in as they are, never serialized twice.
pub(crate) fn envelope(msg: &[u8], signatures: &[Signature]) -> Result<Vec<u8>> {
    let sigs = canonical(&signatures)?;
    let mut out = Vec::with_capacity(msg.len() + sigs.len() + 32);
    out.extend_from_slice(b"{\"signatures\":");
    out.extend_from_slice(&sigs);
    out.extend_from_slice(b",\"signed\":");
    out.extend_from_slice(msg);
    out.push(b'}');
    Ok(out)
}

/// The key set of a top-level role in a root.
pub(crate) fn top_role_keys(root: &Root, role: RoleType) -> Result<RoleKeySet> {
    let keys = root
        .roles
        .get(&role)
        .ok_or_else(|| invalid("root metadata", format!("lists no {role} role")))?;
    Ok(RoleKeySet {
        name: role.to_string(),
        keyids: hex_ids(&keys.keyids),
        threshold: keys.threshold.get(),
    })
}

/// The key set of a delegated role, from its delegating targets metadata.
pub(crate) fn delegated_role_keys(parent: &Targets, role: &str) -> Result<RoleKeySet> {
    let r = parent
        .delegations
        .as_ref()
        .and_then(|d| d.roles.iter().find(|r| r.name == role))
        .ok_or_else(|| {
            invalid(
                format!("role {role:?}"),
                "no such delegated role in targets metadata",
            )
        })?;
    Ok(RoleKeySet {
        name: role.to_owned(),
        keyids: hex_ids(&r.keyids),
        threshold: r.threshold.get(),
    })
}

/// The bytes of a metadata file: canonical JSON of the whole signed envelope (deterministic and what
/// every client parses).
pub(crate) fn file_bytes<T: Serialize>(signed: &Signed<T>) -> Result<Vec<u8>> {
    canonical(signed)
}

/// A snapshot/timestamp `meta` entry describing these file bytes.
pub(crate) fn metafile(version: NonZeroU64, bytes: &[u8]) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::from(Sha256::digest(bytes).to_vec()),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// `version + 1`.
pub(crate) fn bump(v: NonZeroU64) -> Result<NonZeroU64> {
    v.checked_add(1)
        .ok_or_else(|| invalid("metadata version", "overflows u64"))
}

/// One metadata file, parsed, with the exact bytes read.
#[derive(Debug, Clone)]
pub(crate) struct MetaFile<T> {
    pub signed: Signed<T>,
    pub bytes: Vec<u8>,
}

fn read_meta<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<MetaFile<T>> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    let signed = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
        what,
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    Ok(MetaFile { signed, bytes })
}

/// The repository's current published state, as a client would find it starting at `timestamp.json`.
#[derive(Debug, Clone)]
pub(crate) struct RepoState {
    pub dir: PathBuf,
    /// Every root version present, in order (1, 2, ...).
    pub roots: Vec<MetaFile<Root>>,
    pub timestamp: MetaFile<Timestamp>,
    pub snapshot: MetaFile<Snapshot>,
    pub targets: MetaFile<Targets>,
    /// Delegated roles, at any depth of the delegation tree (TUF 4.5), by name.
    pub delegated: BTreeMap<String, MetaFile<Targets>>,
    /// The role that delegates to each delegated role (`targets` or another delegated role).
    pub parents: BTreeMap<String, String>,
    /// Delegations not followed because their role was already visited (TUF 5.6.7.1: clients skip
    /// a visited role, which is what breaks delegation cycles): (delegating role, delegated role).
    pub skipped_delegations: Vec<(String, String)>,
}

/// The error for a directory without `metadata/`.
pub(crate) fn not_a_repository(repo: &Path) -> Error {
    Error::Repository {
        repo: repo.to_owned(),
        why: "no metadata/ directory: not a repository (run `repo-tool init` first)".into(),
    }
}

/// Path of a metadata file by name inside a repository.
pub(crate) fn meta_path(repo: &Path, file: &str) -> PathBuf {
    repo.join(METADATA_DIR).join(file)
}

impl RepoState {
    /// Loads the current state (TUF 5.3-5.6 order: root chain, timestamp, snapshot, targets, delegated).
    pub fn load(repo: &Path) -> Result<RepoState> {
        let mdir = repo.join(METADATA_DIR);
        if !mdir.is_dir() {
            return Err(not_a_repository(repo));
        }
        let mut versions = Vec::new();
        for entry in fs::read_dir(&mdir).map_err(io("read directory", &mdir))? {
            let entry = entry.map_err(io("read directory", &mdir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_suffix(".root.json")
                .and_then(|n| n.parse::<u64>().ok())
            {
                versions.push(n);
            }
        }
        versions.sort_unstable();
        if versions.first() != Some(&1) || versions.iter().enumerate().any(|(i, v)| *v != i as u64 + 1) {
            return Err(Error::Repository {
                repo: repo.to_owned(),
                why: format!("root versions on disk are {versions:?}; expected 1..N without gaps"),
            });
        }
        let roots = versions
            .iter()
            .map(|v| read_meta(&mdir.join(format!("{v}.root.json")), "root metadata"))
            .collect::<Result<Vec<_>>>()?;
        let timestamp: MetaFile<Timestamp> = read_meta(&mdir.join("timestamp.json"), "timestamp metadata")?;
        let snap_version = timestamp
            .signed
            .signed
            .meta
            .get("snapshot.json")
            .map(|m| m.version)
            .ok_or_else(|| Error::Repository {
                repo: repo.to_owned(),
                why: "timestamp.json lists no snapshot.json".into(),
            })?;
        let snapshot: MetaFile<Snapshot> = read_meta(
            &mdir.join(format!("{snap_version}.snapshot.json")),
            "snapshot metadata",
        )?;
        let version_of = |file: &str| {
            snapshot
                .signed
                .signed
                .meta
                .get(file)
                .map(|m| m.version)
                .ok_or_else(|| Error::Repository {
                    repo: repo.to_owned(),
                    why: format!("snapshot lists no {file}"),
                })
        };
        let tv = version_of("targets.json")?;
        let targets: MetaFile<Targets> =
            read_meta(&mdir.join(format!("{tv}.targets.json")), "targets metadata")?;
        // Walk the whole delegation tree. A role is loaded once, under the first role found delegating
        // to it: a second delegation to the same name, or a cycle back to an ancestor, is not followed.
        let mut delegated: BTreeMap<String, MetaFile<Targets>> = BTreeMap::new();
        let mut parents = BTreeMap::new();
        let mut skipped_delegations = Vec::new();
        let mut pending = vec![TARGETS_ROLE.to_owned()];
        while let Some(parent) = pending.pop() {
            let meta = if parent == TARGETS_ROLE {
                Some(&targets.signed.signed)
            } else {
                delegated.get(&parent).map(|m| &m.signed.signed)
            };
            let children: Vec<String> = meta
                .and_then(|t| t.delegations.as_ref())
                .map(|d| d.roles.iter().map(|r| r.name.clone()).collect())
                .unwrap_or_default();
            for name in children {
                if name == TARGETS_ROLE || delegated.contains_key(&name) {
                    skipped_delegations.push((parent.clone(), name));
                    continue;
                }
                let v = version_of(&format!("{name}.json"))?;
                let m = read_meta(
                    &mdir.join(format!("{v}.{name}.json")),
                    "delegated targets metadata",
                )?;
                delegated.insert(name.clone(), m);
                parents.insert(name.clone(), parent.clone());
                pending.push(name);
            }
        }
        Ok(RepoState {
            dir: repo.to_owned(),
            roots,
            timestamp,
            snapshot,
            targets,
            delegated,
            parents,
            skipped_delegations,
        })
    }

    /// The newest root.
    pub fn root(&self) -> Result<&MetaFile<Root>> {
        self.roots.last().ok_or_else(|| Error::Repository {
            repo: self.dir.clone(),
            why: "no root metadata".into(),
        })
    }

    /// Key set of a targets role (top-level `targets` or a delegated role).
    pub fn targets_role_keys(&self, role: &str) -> Result<RoleKeySet> {
        if role == TARGETS_ROLE {
            top_role_keys(&self.root()?.signed.signed, RoleType::Targets)
        } else {
            delegated_role_keys(self.role_targets(self.parent_of(role)?)?, role)
        }
    }

    /// The role delegating to a delegated role.
    pub fn parent_of(&self, role: &str) -> Result<&str> {
        self.parents
            .get(role)
            .map(String::as_str)
            .ok_or_else(|| invalid(format!("role {role:?}"), "no such delegated role"))
    }

    /// The delegation entries leading to `role`, from the role's own up to the one in top-level
    /// targets (empty for `targets`). A client reaches a target of `role` only through all of them.
    pub fn delegation_chain(&self, role: &str) -> Result<Vec<&DelegatedRole>> {
        let mut chain = Vec::new();
        let mut name = role;
        // At most one entry per delegated role: the parents map is a tree by construction.
        while name != TARGETS_ROLE && chain.len() <= self.parents.len() {
            let parent = self.parent_of(name)?;
            let entry = self
                .role_targets(parent)?
                .delegations
                .as_ref()
                .and_then(|d| d.roles.iter().find(|r| r.name == name))
                .ok_or_else(|| invalid(format!("role {name:?}"), format!("not delegated by {parent}")))?;
            chain.push(entry);
            name = parent;
        }
        Ok(chain)
    }

    /// The targets metadata of a role.
    pub fn role_targets(&self, role: &str) -> Result<&Targets> {
        if role == TARGETS_ROLE {
            Ok(&self.targets.signed.signed)
        } else {
            self.delegated
                .get(role)
                .map(|m| &m.signed.signed)
                .ok_or_else(|| invalid(format!("role {role:?}"), "no such delegated role"))
        }
    }

    /// Moves a targets role's metadata out (left empty in the state): no copy of a 10,000-target map.
    pub fn take_role_targets(&mut self, role: &str) -> Result<Targets> {
        let empty = || {
            Targets::new(
                SPEC_VERSION.to_owned(),
                NonZeroU64::MIN,
                jiff::Timestamp::UNIX_EPOCH,
            )
        };
        if role == TARGETS_ROLE {
            Ok(std::mem::replace(&mut self.targets.signed.signed, empty()))
        } else {
            self.delegated
                .get_mut(role)
                .map(|m| std::mem::replace(&mut m.signed.signed, empty()))
                .ok_or_else(|| invalid(format!("role {role:?}"), "no such delegated role"))
        }
    }

    /// Every targets role: top-level first, then delegated in name order.
    pub fn all_roles(&self) -> Vec<(&str, &Targets)> {
        let mut v = vec![(TARGETS_ROLE, &self.targets.signed.signed)];
        v.extend(self.delegated.iter().map(|(n, m)| (n.as_str(), &m.signed.signed)));
        v
    }
}

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

/// Permission bits of new metadata files before the umask: what `File::create` gives, so a published
/// file is readable by the web server whatever user runs repo-tool.
pub(crate) const METADATA_MODE: u32 = 0o666;

/// Above this many new files, one `syncfs` of the repository's file system is cheaper than an fsync
/// per file (each fsync is a journal commit: about 5 ms on the project machine, so 10,000 targets would
/// spend 50 s in fsync alone).
pub(crate) const SYNCFS_ABOVE: usize = 16;

/// Files a command publishes: target files already under their final names (see `crate::stage`),
/// new versioned metadata files, and last the new `timestamp.json`. [`Publication::commit`] makes the
/// target files durable, writes the metadata (each file temp + fsync + rename, directories fsynced)
/// and `timestamp.json` last; if anything fails, it removes the metadata it created, so the
/// repository is left exactly as it was (the `TargetStager` removes the target files).
#[derive(Debug, Default)]
pub(crate) struct Publication {
    /// New target files (absolute or relative to the working directory), not yet fsynced.
    pub target_files: Vec<PathBuf>,
    /// Directories created for them, parents first.
    pub target_dirs: Vec<PathBuf>,
    /// (file name in metadata/, bytes); must not exist yet.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// New timestamp.json bytes.
    pub timestamp: Option<Vec<u8>>,
}

#[derive(Default)]
struct Undo {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    timestamp: Option<(PathBuf, Option<Vec<u8>>)>,
}

impl Undo {
    fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.as_os_str().is_empty() && !d.exists() {
            missing.push(d.to_owned());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for m in missing.into_iter().rev() {
            fs::create_dir(&m).map_err(io("create directory", &m))?;
            self.dirs.push(m);
        }
        Ok(())
    }

    fn roll_back(self) {
        if let Some((path, old)) = self.timestamp {
            match old {
                Some(bytes) => {
                    let _ = ota_fs::write_atomic(&path, &bytes, METADATA_MODE);
                }
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for f in self.files.iter().rev() {
            let _ = fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

impl Publication {
    /// Publishes into `repo`; on error nothing of it remains.
    pub fn commit(self, repo: &Path) -> Result<()> {
        let mut undo = Undo::default();
        match self.commit_inner(repo, &mut undo) {
            Ok(()) => Ok(()),
            Err(e) => {
                undo.roll_back();
                Err(e)
            }
        }
    }

    fn commit_inner(self, repo: &Path, undo: &mut Undo) -> Result<()> {
        // Small publishes fsync each new file and directory; bulk ones (thousands of files, each fsync a
        // disk flush) flush the whole file system once instead, before timestamp.json is switched.
        let bulk = self.target_files.len() > SYNCFS_ABOVE;
        let mut synced_dirs = std::collections::BTreeSet::new();
        if !bulk {
            for f in &self.target_files {
                fs::File::open(f)
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsync", f))?;
                synced_dirs.insert(ota_fs::parent_dir(f).to_owned());
            }
            // A new directory's entry lives in its parent, which must be synced too.
            for d in &self.target_dirs {
                synced_dirs.insert(ota_fs::parent_dir(d).to_owned());
            }
        }
        let mdir = repo.join(METADATA_DIR);
        undo.create_dir_all(&mdir)?;
        for (name, bytes) in &self.metadata {
            let path = mdir.join(name);
            ota_fs::write_new(&path, bytes, METADATA_MODE)?;
            undo.files.push(path);
        }
        if bulk {
            ota_fs::sync_filesystem(repo)?;
        } else {
            synced_dirs.insert(mdir.clone());
            for d in &undo.dirs {
                synced_dirs.insert(ota_fs::parent_dir(d).to_owned());
            }
            for d in &synced_dirs {
                ota_fs::sync_dir(d)?;
            }
        }
        if let Some(ts) = &self.timestamp {
            let path = mdir.join("timestamp.json");
            let old = if path.exists() {
                Some(fs::read(&path).map_err(io("read", &path))?)
            } else {
                None
            };
            undo.timestamp = Some((path.clone(), old));
            ota_fs::write_atomic(&path, ts, METADATA_MODE)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spliced_file_bytes_equal_the_canonical_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let k = crate::keys::generate_key(dir.path(), "k").unwrap();
        let ring = KeyRing::from_files(&[k.private_path]).unwrap();
        let set = RoleKeySet {
            name: "targets".into(),
            keyids: vec![k.keyid],
            threshold: 1,
        };
        let t = Targets::new(SPEC_VERSION.into(), NonZeroU64::MIN, now().unwrap());
        let spliced = set.sign_to_file(&t, &ring).unwrap();
        // ed25519 is deterministic: signing again gives the same signature.
        assert_eq!(spliced, file_bytes(&set.sign(t, &ring).unwrap()).unwrap());
        let parsed: Signed<Targets> = serde_json::from_slice(&spliced).unwrap();
        assert_eq!(parsed.signatures.len(), 1);
    }

    #[test]
    fn the_fast_canonical_writer_matches_olpc_cjson() {
        let v = serde_json::json!({
            "z": [1, -2, {"b": "q\"uote", "a": "back\\slash"}],
            "a": {"ota": {"kind": "release", "version": "1.2.3-rc.1+b.5", "hardware": ["gw-a"]}},
            "m": null, "t": true, "f": false, "n": 18446744073709551615u64, "": "",
        });
        let mut fast = Vec::new();
        assert!(write_canonical_ascii(&v, &mut fast));
        assert_eq!(fast, canonical_olpc(&v).unwrap());
        // Non-ASCII and floats take the olpc-cjson path.
        for other in [
            serde_json::json!({"k": "caf\u{e9}"}),
            serde_json::json!({"k": "tab\there"}),
        ] {
            assert!(!write_canonical_ascii(&other, &mut Vec::new()));
            assert_eq!(canonical(&other).unwrap(), canonical_olpc(&other).unwrap());
        }
    }

    #[test]
    fn spliced_targets_canonical_form_matches_the_generic_one() {
        let mut t = Targets::new(SPEC_VERSION.into(), NonZeroU64::new(42).unwrap(), now().unwrap());
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        for (i, name) in ["b/x.bin", "a/y.bin", "a/x.bin", "a+b/c-1.0.0+z.bin"]
            .iter()
            .enumerate()
        {
            let target = tough::schema::Target {
                length: i as u64,
                hashes: Hashes {
                    sha256: Decoded::from(vec![i as u8; 32]),
                    _extra: HashMap::new(),
                },
                custom: [("ota".to_owned(), serde_json::json!({"kind": "release", "n": i}))]
                    .into_iter()
                    .collect(),
                _extra: HashMap::new(),
            };
            t.targets.insert(tough::TargetName::new(*name).unwrap(), target);
        }
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        // No custom object, extra fields in a target or its hashes, a non-ASCII custom value: each
        // entry form (and the fallback) gives olpc-cjson's bytes.
        let mut plain = t.targets.values().next().unwrap().clone();
        plain.custom.clear();
        t.targets
            .insert(tough::TargetName::new("plain").unwrap(), plain.clone());
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        let mut extra = plain.clone();
        extra
            .hashes
            ._extra
            .insert("sha512".into(), serde_json::json!("00"));
        t.targets
            .insert(tough::TargetName::new("extra-hash").unwrap(), extra);
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        t.targets.remove(&tough::TargetName::new("extra-hash").unwrap());
        let mut extra = plain.clone();
        extra._extra.insert("zz".into(), serde_json::json!([1, 2]));
        t.targets.insert(tough::TargetName::new("extra").unwrap(), extra);
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        t.targets.remove(&tough::TargetName::new("extra").unwrap());
        let mut accent = plain;
        accent
            .custom
            .insert("note".into(), serde_json::json!("caf\u{e9}"));
        t.targets
            .insert(tough::TargetName::new("accent").unwrap(), accent);
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        t.delegations = None;
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
        t._extra.insert("zz".into(), serde_json::json!(1));
        assert_eq!(canonical_targets(&t).unwrap(), canonical_olpc(&t).unwrap());
    }

    #[test]
    fn lifetimes_parse_and_expiries_have_whole_seconds() {
        assert_eq!(
            parse_lifetime("90d").unwrap(),
            jiff::SignedDuration::from_hours(90 * 24)
        );
        assert_eq!(parse_lifetime("1s").unwrap(), jiff::SignedDuration::from_secs(1));
        for bad in ["", "d", "5x", "-1d", "0s", "99999999999w"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
        let t: jiff::Timestamp = "2026-01-01T00:00:00.75Z".parse().unwrap();
        let e = expiry_after(t, jiff::SignedDuration::from_secs(10)).unwrap();
        assert_eq!(e.subsec_nanosecond(), 0);
        let json = serde_json::to_string(&Timestamp::new(SPEC_VERSION.into(), NonZeroU64::MIN, e)).unwrap();
        assert!(json.contains("\"expires\":\"2026-01-01T00:00:10Z\""), "{json}");
    }
}
