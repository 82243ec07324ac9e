//! Parsing of received metadata bytes into typed roles, and the signature threshold check over the
//! canonical form of `signed` as received (TUF 4.2, 5.3.5).
//!
//! Unknown fields are allowed anywhere (they are part of the signed bytes and so covered by signatures).
//! Every structural rule python-tuf's Metadata API enforces is enforced here too, so a repository one
//! client reads the other reads the same way.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::keys::{KeyJson, TrustedKey};
use crate::{canonical, Error, Result, TargetInfo};

/// The outer `{"signed": ..., "signatures": [...]}` of one metadata file.
pub(crate) struct Envelope {
    /// Canonical JSON of `signed`: the bytes the signatures are over.
    pub(crate) canonical: Vec<u8>,
    /// keyid -> raw signature bytes (undecodable hex kept as empty, which verifies nothing).
    pub(crate) signatures: HashMap<String, Vec<u8>>,
}

#[derive(Deserialize)]
struct SignatureJson {
    keyid: String,
    sig: String,
}

#[derive(Deserialize)]
struct EnvelopeJson {
    signed: canonical::CanonicalBytes,
    signatures: Vec<SignatureJson>,
}

#[derive(Deserialize)]
struct SignedOnly<T> {
    signed: T,
}

/// Parses the `signed` part of received bytes straight into a typed value (no intermediate JSON tree,
/// which for a 10,000-target role would cost many times the file's size).
fn signed_part<T: serde::de::DeserializeOwned>(role: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice::<SignedOnly<T>>(bytes)
        .map(|s| s.signed)
        .map_err(|e| Error::malformed(role, e.to_string()))
}

/// Parses the envelope of `role`'s metadata: the canonical form of `signed` (computed while parsing,
/// without building a JSON tree) and the signatures. Duplicate keyids among signatures are refused (as
/// python-tuf does): a signature list is a map from keyid to signature.
pub(crate) fn parse_envelope(role: &str, bytes: &[u8]) -> Result<Envelope> {
    let json: EnvelopeJson =
        serde_json::from_slice(bytes).map_err(|e| Error::malformed(role, e.to_string()))?;
    let mut signatures = HashMap::with_capacity(json.signatures.len());
    for s in json.signatures {
        let raw = hex::decode(&s.sig).unwrap_or_default();
        if signatures.insert(s.keyid.clone(), raw).is_some() {
            return Err(Error::malformed(
                role,
                format!("two signatures with keyid {}", s.keyid),
            ));
        }
    }
    let canonical = json.signed.0;
    if canonical.first() != Some(&b'{') {
        return Err(Error::malformed(role, "`signed` is not an object"));
    }
    Ok(Envelope {
        canonical,
        signatures,
    })
}

/// Fields every role has (TUF 4.2).
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub(crate) version: u64,
    pub(crate) expires: DateTime<Utc>,
}

impl Common {
    /// TUF: expired when the reference time is at or past `expires`.
    pub(crate) fn check_expiry(&self, role: &str, reference_time: DateTime<Utc>) -> Result<()> {
        if reference_time >= self.expires {
            return Err(Error::Expired {
                role: role.to_string(),
                expires: self.expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                reference_time: reference_time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            });
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct CommonJson {
    #[serde(rename = "_type")]
    ty: String,
    spec_version: String,
    version: u64,
    expires: String,
}

fn common(role: &str, expected_type: &str, bytes: &[u8]) -> Result<Common> {
    let c: CommonJson = signed_part(role, bytes)?;
    if c.ty != expected_type {
        return Err(Error::malformed(
            role,
            format!("`_type` is {:?}, expected {expected_type:?}", c.ty),
        ));
    }
    let parts: Vec<&str> = c.spec_version.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !(2..=3).contains(&parts.len()) || !numeric || parts.first() != Some(&"1") {
        return Err(Error::malformed(
            role,
            format!("unsupported spec_version {:?}", c.spec_version),
        ));
    }
    if c.version == 0 {
        return Err(Error::malformed(role, "version must be at least 1"));
    }
    let expires = NaiveDateTime::parse_from_str(&c.expires, "%Y-%m-%dT%H:%M:%SZ")
        .map_err(|e| Error::malformed(role, format!("`expires` {:?}: {e}", c.expires)))?
        .and_utc();
    Ok(Common {
        version: c.version,
        expires,
    })
}

/// Which keys may sign a role and how many must (TUF 4.3 `roles`, 4.5 delegation `keyids`/`threshold`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct RoleKeys {
    pub(crate) keyids: Vec<String>,
    pub(crate) threshold: u64,
}

impl RoleKeys {
    fn validate(&self, role: &str, what: &str) -> Result<()> {
        if self.threshold == 0 {
            return Err(Error::malformed(
                role,
                format!("{what}: threshold must be at least 1"),
            ));
        }
        let unique: HashSet<&String> = self.keyids.iter().collect();
        if unique.len() != self.keyids.len() {
            return Err(Error::malformed(role, format!("{what}: keyids are not unique")));
        }
        Ok(())
    }
}

/// Checks that at least `threshold` distinct keys of `role_keys` signed the canonical bytes (TUF 5.3.5,
/// 5.4.2, 5.5.3, 5.6.3). Keys count once each by keyid AND by key value, so listing one key under two
/// keyids cannot double its weight.
pub(crate) fn verify_threshold(
    role: &str,
    signer: &str,
    envelope: &Envelope,
    role_keys: &RoleKeys,
    keys: &HashMap<String, TrustedKey>,
) -> Result<()> {
    let mut counted: HashSet<&[u8]> = HashSet::new();
    for keyid in &role_keys.keyids {
        let (Some(key), Some(sig)) = (keys.get(keyid), envelope.signatures.get(keyid)) else {
            continue;
        };
        if !counted.contains(key.identity.as_slice()) && key.verifies(&envelope.canonical, sig) {
            counted.insert(key.identity.as_slice());
        }
    }
    if (counted.len() as u64) < role_keys.threshold {
        return Err(Error::Threshold {
            role: role.to_string(),
            signer: signer.to_string(),
            valid: counted.len(),
            threshold: role_keys.threshold,
        });
    }
    Ok(())
}

fn parse_keys(role: &str, keys: BTreeMap<String, KeyJson>) -> HashMap<String, TrustedKey> {
    let _ = role;
    keys.into_iter()
        .map(|(id, k)| (id, TrustedKey::from_json(&k)))
        .collect()
}

/// Verified root metadata (TUF 4.3).
#[derive(Debug, Clone)]
pub(crate) struct Root {
    pub(crate) common: Common,
    pub(crate) consistent_snapshot: bool,
    pub(crate) keys: HashMap<String, TrustedKey>,
    pub(crate) roles: HashMap<String, RoleKeys>,
}

#[derive(Deserialize)]
struct RootJson {
    #[serde(default)]
    consistent_snapshot: Option<bool>,
    keys: BTreeMap<String, KeyJson>,
    roles: BTreeMap<String, RoleKeys>,
}

pub(crate) const TOP_LEVEL: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

impl Root {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Root> {
        let common = common("root", "root", bytes)?;
        let json: RootJson = signed_part("root", bytes)?;
        let names: HashSet<&str> = json.roles.keys().map(String::as_str).collect();
        if names != TOP_LEVEL.into_iter().collect() {
            return Err(Error::malformed(
                "root",
                "`roles` must list exactly root, timestamp, snapshot, targets",
            ));
        }
        for (name, rk) in &json.roles {
            rk.validate("root", &format!("roles.{name}"))?;
        }
        Ok(Root {
            common,
            consistent_snapshot: json.consistent_snapshot.unwrap_or(false),
            keys: parse_keys("root", json.keys),
            roles: json.roles.into_iter().collect(),
        })
    }

    pub(crate) fn role(&self, name: &str) -> Result<&RoleKeys> {
        self.roles.get(name).ok_or_else(|| Error::MissingMeta {
            role: name.to_string(),
            referrer: "root".into(),
        })
    }

    /// Verifies `envelope` as metadata of top-level `role` under this root's keys.
    pub(crate) fn verify(&self, role: &str, envelope: &Envelope) -> Result<()> {
        verify_threshold(role, "root", envelope, self.role(role)?, &self.keys)
    }

    /// The identities of the keys trusted for `role`, to notice a key rotation (TUF 5.3.11).
    pub(crate) fn key_identities(&self, role: &str) -> Vec<Vec<u8>> {
        let mut ids: Vec<Vec<u8>> = self
            .roles
            .get(role)
            .map(|rk| {
                rk.keyids
                    .iter()
                    .filter_map(|id| self.keys.get(id))
                    .map(|k| k.identity.clone())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

/// `meta` entries of timestamp and snapshot (TUF 4.4 METAFILES).
#[derive(Debug, Clone)]
pub(crate) struct MetaFile {
    pub(crate) version: u64,
    pub(crate) length: Option<u64>,
    /// algorithm -> raw digest; None when absent.
    pub(crate) hashes: Option<BTreeMap<String, Vec<u8>>>,
}

#[derive(Deserialize)]
struct MetaFileJson {
    version: u64,
    #[serde(default)]
    length: Option<u64>,
    #[serde(default)]
    hashes: Option<BTreeMap<String, String>>,
}

fn decode_hashes(
    role: &str,
    what: &str,
    hashes: BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    if hashes.is_empty() {
        return Err(Error::malformed(role, format!("{what}: `hashes` is empty")));
    }
    hashes
        .into_iter()
        .map(|(alg, hexd)| match hex::decode(&hexd) {
            Ok(raw) => Ok((alg, raw)),
            Err(e) => Err(Error::malformed(
                role,
                format!("{what}: hash {alg} is not hex: {e}"),
            )),
        })
        .collect()
}

impl MetaFile {
    fn from_json(role: &str, name: &str, j: MetaFileJson) -> Result<MetaFile> {
        if j.version == 0 {
            return Err(Error::malformed(
                role,
                format!("meta {name}: version must be at least 1"),
            ));
        }
        let hashes = j
            .hashes
            .map(|h| decode_hashes(role, &format!("meta {name}"), h))
            .transpose()?;
        Ok(MetaFile {
            version: j.version,
            length: j.length,
            hashes,
        })
    }
}

/// Verified timestamp metadata (TUF 4.6).
#[derive(Debug, Clone)]
pub(crate) struct Timestamp {
    pub(crate) common: Common,
    pub(crate) snapshot: MetaFile,
}

#[derive(Deserialize)]
struct MetaJson {
    meta: BTreeMap<String, MetaFileJson>,
}

impl Timestamp {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Timestamp> {
        let common = common("timestamp", "timestamp", bytes)?;
        let json: MetaJson = signed_part("timestamp", bytes)?;
        let (name, snap) = json
            .meta
            .into_iter()
            .find(|(k, _)| k == "snapshot.json")
            .ok_or_else(|| Error::malformed("timestamp", "`meta` has no snapshot.json"))?;
        Ok(Timestamp {
            common,
            snapshot: MetaFile::from_json("timestamp", &name, snap)?,
        })
    }
}

/// Verified snapshot metadata (TUF 4.4).
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) common: Common,
    /// `<role>.json` -> meta.
    pub(crate) meta: HashMap<String, MetaFile>,
}

impl Snapshot {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Snapshot> {
        let common = common("snapshot", "snapshot", bytes)?;
        let json: MetaJson = signed_part("snapshot", bytes)?;
        let meta = json
            .meta
            .into_iter()
            .map(|(name, m)| MetaFile::from_json("snapshot", &name, m).map(|m| (name, m)))
            .collect::<Result<_>>()?;
        Ok(Snapshot { common, meta })
    }
}

/// Which target paths a delegated role is trusted for (TUF 4.5 `paths` / `path_hash_prefixes`).
#[derive(Debug, Clone)]
pub(crate) enum PathRule {
    Patterns(Vec<String>),
    HashPrefixes(Vec<String>),
}

/// One entry of `delegations.roles`.
#[derive(Debug, Clone)]
pub(crate) struct DelegatedRole {
    pub(crate) name: String,
    pub(crate) keys: RoleKeys,
    pub(crate) terminating: bool,
    pub(crate) paths: PathRule,
}

impl DelegatedRole {
    /// TUF 5.6.7.2: is this role trusted for `target`?
    pub(crate) fn is_delegated_path(&self, target: &str) -> bool {
        match &self.paths {
            PathRule::Patterns(pats) => pats.iter().any(|p| crate::paths::path_matches_pattern(target, p)),
            PathRule::HashPrefixes(prefixes) => {
                let digest = crate::paths::path_hash_hex(target);
                prefixes.iter().any(|p| digest.starts_with(p.as_str()))
            }
        }
    }
}

/// A succinct hash-bin delegation (TAP 15).
#[derive(Debug, Clone)]
pub(crate) struct SuccinctRoles {
    pub(crate) keys: RoleKeys,
    pub(crate) bit_length: u32,
    pub(crate) name_prefix: String,
}

/// `delegations.roles` or `delegations.succinct_roles`: exactly one of them.
#[derive(Debug, Clone)]
pub(crate) enum DelegatedRoles {
    Listed(Vec<DelegatedRole>),
    Succinct(SuccinctRoles),
}

/// `delegations` of a targets role.
#[derive(Debug, Clone)]
pub(crate) struct Delegations {
    pub(crate) keys: HashMap<String, TrustedKey>,
    pub(crate) roles: DelegatedRoles,
}

impl Delegations {
    /// The keys that must sign `role`, when this delegates it.
    pub(crate) fn role_keys(&self, role: &str) -> Option<&RoleKeys> {
        match &self.roles {
            DelegatedRoles::Listed(list) => list.iter().find(|r| r.name == role).map(|r| &r.keys),
            DelegatedRoles::Succinct(s) => {
                crate::paths::succinct_is_bin(role, s.bit_length, &s.name_prefix).then_some(&s.keys)
            }
        }
    }

    /// TUF 5.6.7.2: the roles responsible for `target`, in order, each with its terminating flag. Succinct
    /// bins are all terminating (TAP 15).
    pub(crate) fn roles_for_target(&self, target: &str) -> Vec<(String, bool)> {
        match &self.roles {
            DelegatedRoles::Listed(list) => list
                .iter()
                .filter(|r| r.is_delegated_path(target))
                .map(|r| (r.name.clone(), r.terminating))
                .collect(),
            DelegatedRoles::Succinct(s) => {
                vec![(
                    crate::paths::succinct_bin_for(target, s.bit_length, &s.name_prefix),
                    true,
                )]
            }
        }
    }
}

#[derive(Deserialize)]
struct DelegatedRoleJson {
    name: String,
    keyids: Vec<String>,
    threshold: u64,
    terminating: bool,
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    path_hash_prefixes: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct SuccinctJson {
    keyids: Vec<String>,
    threshold: u64,
    bit_length: u32,
    name_prefix: String,
}

#[derive(Deserialize)]
struct DelegationsJson {
    keys: BTreeMap<String, KeyJson>,
    #[serde(default)]
    roles: Option<Vec<DelegatedRoleJson>>,
    #[serde(default)]
    succinct_roles: Option<SuccinctJson>,
}

#[derive(Deserialize)]
struct TargetJson {
    length: u64,
    hashes: BTreeMap<String, String>,
    #[serde(default)]
    custom: Option<Value>,
}

#[derive(Deserialize)]
struct TargetsJson {
    targets: BTreeMap<String, TargetJson>,
    #[serde(default)]
    delegations: Option<DelegationsJson>,
}

/// Verified targets metadata, top-level or delegated (TUF 4.5).
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub(crate) common: Common,
    pub(crate) targets: HashMap<String, TargetInfo>,
    pub(crate) delegations: Option<Delegations>,
}

impl Targets {
    pub(crate) fn parse(role: &str, bytes: &[u8]) -> Result<Targets> {
        let common = common(role, "targets", bytes)?;
        let json: TargetsJson = signed_part(role, bytes)?;
        let mut targets = HashMap::with_capacity(json.targets.len());
        for (name, t) in json.targets {
            let hashes = decode_hashes(role, &format!("target {name:?}"), t.hashes)?;
            let custom = t.custom.unwrap_or(Value::Null);
            targets.insert(
                name.clone(),
                TargetInfo {
                    name,
                    length: t.length,
                    hashes,
                    custom,
                },
            );
        }
        let delegations = json.delegations.map(|d| delegations(role, d)).transpose()?;
        Ok(Targets {
            common,
            targets,
            delegations,
        })
    }
}

fn delegations(role: &str, d: DelegationsJson) -> Result<Delegations> {
    let roles = match (d.roles, d.succinct_roles) {
        (Some(list), None) => {
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(list.len());
            for r in list {
                if r.name.is_empty() || TOP_LEVEL.contains(&r.name.as_str()) {
                    return Err(Error::malformed(
                        role,
                        format!("delegated role name {:?} is not allowed", r.name),
                    ));
                }
                if !seen.insert(r.name.clone()) {
                    return Err(Error::malformed(
                        role,
                        format!("role {:?} delegated twice", r.name),
                    ));
                }
                let keys = RoleKeys {
                    keyids: r.keyids,
                    threshold: r.threshold,
                };
                keys.validate(role, &format!("delegation {:?}", r.name))?;
                let paths = match (r.paths, r.path_hash_prefixes) {
                    (Some(p), None) => PathRule::Patterns(p),
                    (None, Some(h)) => PathRule::HashPrefixes(h),
                    _ => {
                        return Err(Error::malformed(
                            role,
                            format!(
                                "delegation {:?}: exactly one of paths, path_hash_prefixes",
                                r.name
                            ),
                        ))
                    }
                };
                out.push(DelegatedRole {
                    name: r.name,
                    keys,
                    terminating: r.terminating,
                    paths,
                });
            }
            DelegatedRoles::Listed(out)
        }
        (None, Some(s)) => {
            if !(1..=32).contains(&s.bit_length) {
                return Err(Error::malformed(role, "succinct_roles.bit_length must be 1..=32"));
            }
            let keys = RoleKeys {
                keyids: s.keyids,
                threshold: s.threshold,
            };
            keys.validate(role, "succinct_roles")?;
            DelegatedRoles::Succinct(SuccinctRoles {
                keys,
                bit_length: s.bit_length,
                name_prefix: s.name_prefix,
            })
        }
        _ => {
            return Err(Error::malformed(
                role,
                "delegations: exactly one of roles, succinct_roles",
            ))
        }
    };
    Ok(Delegations {
        keys: parse_keys(role, d.keys),
        roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;
    use serde_json::json;

    fn key_json(k: &ed25519_dalek::SigningKey) -> Value {
        json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": hex::encode(k.verifying_key().as_bytes())}})
    }

    /// A root whose root role lists `keyids` (each mapped to a signing key) with `threshold`, signed by
    /// every listed keyid with its key.
    fn root_bytes(entries: &[(&str, &ed25519_dalek::SigningKey)], threshold: u64) -> Vec<u8> {
        let keys: serde_json::Map<String, Value> = entries
            .iter()
            .map(|(id, k)| (id.to_string(), key_json(k)))
            .collect();
        let ids: Vec<&str> = entries.iter().map(|(id, _)| *id).collect();
        let role = json!({"keyids": ids, "threshold": threshold});
        let signed = json!({
            "_type": "root", "spec_version": "1.0.31", "version": 1, "expires": "2030-01-01T00:00:00Z",
            "consistent_snapshot": true, "keys": keys,
            "roles": {"root": role, "timestamp": role, "snapshot": role, "targets": role},
        });
        let mut canon = Vec::new();
        canonical::encode(&signed, &mut canon).unwrap();
        let sigs: Vec<Value> = entries
            .iter()
            .map(|(id, k)| json!({"keyid": id, "sig": hex::encode(k.sign(&canon).to_bytes())}))
            .collect();
        serde_json::to_vec_pretty(&json!({"signed": signed, "signatures": sigs})).unwrap()
    }

    fn verify_root(bytes: &[u8]) -> Result<()> {
        let env = parse_envelope("root", bytes)?;
        Root::parse(bytes)?.verify("root", &env)
    }

    #[test]
    fn one_key_under_two_keyids_counts_once() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let err = verify_root(&root_bytes(&[("id-1", &k), ("id-2", &k)], 2)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Threshold {
                    valid: 1,
                    threshold: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn two_distinct_keys_meet_threshold_two() {
        let k1 = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let k2 = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        verify_root(&root_bytes(&[("id-1", &k1), ("id-2", &k2)], 2)).unwrap();
    }

    #[test]
    fn duplicate_signature_keyids_are_malformed() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut v: Value = serde_json::from_slice(&root_bytes(&[("id-1", &k)], 1)).unwrap();
        let sig = v["signatures"][0].clone();
        v["signatures"].as_array_mut().unwrap().push(sig);
        let err = verify_root(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
    }

    #[test]
    fn signatures_cover_canonical_form_not_layout() {
        // Re-serialized with other whitespace and key order, the signature still verifies: it covers the
        // canonical form of `signed`.
        let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let v: Value = serde_json::from_slice(&root_bytes(&[("id-1", &k)], 1)).unwrap();
        verify_root(&serde_json::to_vec(&v).unwrap()).unwrap();
        let mut changed = v.clone();
        changed["signed"]["version"] = 2.into();
        assert!(matches!(
            verify_root(&serde_json::to_vec(&changed).unwrap()),
            Err(Error::Threshold { .. })
        ));
    }

    #[test]
    fn zero_threshold_and_float_numbers_are_malformed() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut v: Value = serde_json::from_slice(&root_bytes(&[("id-1", &k)], 1)).unwrap();
        v["signed"]["roles"]["root"]["threshold"] = 0.into();
        assert!(matches!(
            verify_root(&serde_json::to_vec(&v).unwrap()),
            Err(Error::Malformed { .. })
        ));
        let mut v: Value = serde_json::from_slice(&root_bytes(&[("id-1", &k)], 1)).unwrap();
        v["signed"]["x-float"] = json!(1.5);
        assert!(matches!(
            verify_root(&serde_json::to_vec(&v).unwrap()),
            Err(Error::Malformed { .. })
        ));
    }
}
