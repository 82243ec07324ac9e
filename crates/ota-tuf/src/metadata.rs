//! Parsing of received metadata bytes into typed roles, and the signature threshold check over the
//! canonical form of `signed` as received (TUF 4.2, 5.3.5).
//!
//! Unknown fields are allowed anywhere (they are part of the signed bytes and so covered by signatures).
//! Every structural rule python-tuf's Metadata API enforces is enforced here too, so a repository one
//! client reads the other reads the same way.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::keys::{KeyJson, SignatureCheck, TrustedKey};
use crate::{canonical, Error, Result, TargetInfo};

/// The outer `{"signed": ..., "signatures": [...]}` of one metadata file, borrowed from the received
/// bytes.
pub(crate) struct Envelope<'a> {
    /// The text of `signed` exactly as received; signatures are over its canonical form (TUF 4.2).
    pub(crate) signed: &'a str,
    /// keyid -> raw signature bytes (undecodable hex kept as empty, which verifies nothing).
    pub(crate) signatures: HashMap<String, Vec<u8>>,
}

#[derive(Deserialize)]
struct SignatureJson {
    keyid: String,
    sig: String,
}

#[derive(Deserialize)]
struct EnvelopeJson<'a> {
    #[serde(borrow)]
    signed: &'a RawValue,
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

/// Parses the envelope of `role`'s metadata: `signed` borrowed as raw text (checked to be JSON, not
/// copied) and the signatures. Duplicate keyids among signatures are refused (as python-tuf does): a
/// signature list is a map from keyid to signature.
pub(crate) fn parse_envelope<'a>(role: &str, bytes: &'a [u8]) -> Result<Envelope<'a>> {
    let json: EnvelopeJson<'a> =
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
    let signed = json.signed.get();
    if !signed.starts_with('{') {
        return Err(Error::malformed(role, "`signed` is not an object"));
    }
    Ok(Envelope { signed, signatures })
}

impl Envelope<'_> {
    /// Feeds the canonical form of `signed` to `sink`, in pieces: one streaming pass when its objects'
    /// keys arrive sorted (nothing buffered), else once more from a sorted copy. `restart` is called
    /// before that second pass (the sink must forget what it got). Malformed when `signed` has no
    /// canonical form (a non-integer number).
    pub(crate) fn feed_canonical(
        &self,
        role: &str,
        sink: &mut dyn FnMut(&[u8]),
        restart: &mut dyn FnMut(),
    ) -> Result<()> {
        let not_canonical = |e: canonical::NotCanonical| Error::malformed(role, format!("`signed`: {}", e.0));
        if canonical::stream_if_sorted(self.signed, sink).map_err(not_canonical)? {
            return Ok(());
        }
        restart();
        let canonical::CanonicalBytes(sorted) = serde_json::from_str(self.signed)
            .map_err(|e| Error::malformed(role, format!("`signed`: {e}")))?;
        sink(&sorted);
        Ok(())
    }

    /// The canonical form of `signed` as one buffer (tests and the fuzz target).
    pub(crate) fn canonical(&self, role: &str) -> Result<Vec<u8>> {
        let out = std::cell::RefCell::new(Vec::new());
        self.feed_canonical(
            role,
            &mut |piece| out.borrow_mut().extend_from_slice(piece),
            &mut || out.borrow_mut().clear(),
        )?;
        Ok(out.into_inner())
    }
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
    Common::from_json(role, expected_type, signed_part(role, bytes)?)
}

impl Common {
    fn from_json(role: &str, expected_type: &str, c: CommonJson) -> Result<Common> {
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

/// Checks that at least `threshold` distinct keys of `role_keys` signed the canonical form of `signed`
/// (TUF 5.3.5, 5.4.2, 5.5.3, 5.6.3). Keys count once each by keyid AND by key value, so listing one key
/// under two keyids cannot double its weight. Every candidate signature is checked in the one pass that
/// produces the canonical form.
pub(crate) fn verify_threshold(
    role: &str,
    signer: &str,
    envelope: &Envelope<'_>,
    role_keys: &RoleKeys,
    keys: &HashMap<String, TrustedKey>,
) -> Result<()> {
    let start = || -> Vec<(&[u8], SignatureCheck<'_>)> {
        role_keys
            .keyids
            .iter()
            .filter_map(|keyid| {
                let (key, sig) = (keys.get(keyid)?, envelope.signatures.get(keyid)?);
                Some((key.identity.as_slice(), key.start_check(sig)?))
            })
            .collect()
    };
    let checks = std::cell::RefCell::new(start());
    envelope.feed_canonical(
        role,
        &mut |piece| {
            for (_, check) in checks.borrow_mut().iter_mut() {
                check.update(piece);
            }
        },
        &mut || *checks.borrow_mut() = start(),
    )?;
    let counted: HashSet<&[u8]> = checks
        .into_inner()
        .into_iter()
        .filter_map(|(identity, check)| check.finish().then_some(identity))
        .collect();
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
    pub(crate) fn verify(&self, role: &str, envelope: &Envelope<'_>) -> Result<()> {
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

/// One target entry, parsed in full when a caller asks for it.
#[derive(Deserialize)]
struct TargetJson {
    length: u64,
    hashes: BTreeMap<String, String>,
    #[serde(default)]
    custom: Option<Value>,
}

/// One target entry, checked when the role is loaded without keeping or allocating anything, so that
/// [`TargetJson`] is sure to parse later: the same fields, duplicates and value types.
#[derive(Deserialize)]
#[allow(dead_code)] // Only parsed: parsing is the check.
struct TargetCheck {
    length: u64,
    hashes: HashesCheck,
    #[serde(default)]
    custom: Option<serde::de::IgnoredAny>,
}

/// `hashes` of a target entry: a non-empty object of hex strings (what [`decode_hashes`] accepts).
struct HashesCheck;

impl<'de> Deserialize<'de> for HashesCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<HashesCheck, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HashesCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of hex digests")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<HashesCheck, A::Error> {
                use serde::de::Error as _;
                let mut any = false;
                while let Some((JsonStr(alg), JsonStr(digest))) =
                    map.next_entry::<JsonStr<'de>, JsonStr<'de>>()?
                {
                    if digest.len() % 2 != 0 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(A::Error::custom(format!("hash {alg} is not hex")));
                    }
                    any = true;
                }
                if !any {
                    return Err(A::Error::custom("`hashes` is empty"));
                }
                Ok(HashesCheck)
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON string, borrowed from the input when it has no escapes.
struct JsonStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for JsonStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<JsonStr<'de>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<JsonStr<'de>, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<JsonStr<'de>, E> {
                Ok(JsonStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<JsonStr<'de>, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A range of the received bytes (u32: metadata is bounded far below 4 GiB).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// Where `part` (borrowed from `body`) lies in `body`.
    fn of(body: &[u8], part: &str) -> Option<Span> {
        let start = part.as_ptr().addr().checked_sub(body.as_ptr().addr())?;
        if start.checked_add(part.len())? > body.len() {
            return None;
        }
        Some(Span {
            start: u32::try_from(start).ok()?,
            len: u32::try_from(part.len()).ok()?,
        })
    }

    fn text(self, body: &[u8]) -> &str {
        let range = || {
            let start = usize::try_from(self.start).ok()?;
            Some(start..start.checked_add(usize::try_from(self.len).ok()?)?)
        };
        range()
            .and_then(|r| body.get(r))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

/// A target's name: its text in the body, or (when it had JSON escapes) an index into the decoded names.
#[derive(Debug, Clone, Copy)]
enum NameRef {
    InBody(Span),
    Decoded(u32),
}

/// One target of a role: its name and where its entry is in the received bytes.
#[derive(Debug, Clone, Copy)]
struct TargetEntry {
    name: NameRef,
    entry: Span,
}

/// Verified targets metadata, top-level or delegated (TUF 4.5).
///
/// Compact: the received bytes are kept (they are the trusted copy anyway) with a sorted index of where
/// each target's name and entry are in them, 16-20 bytes per target; a [`TargetInfo`] is parsed from
/// its entry only when asked for. Every entry is checked when the role is loaded.
pub(crate) struct Targets {
    pub(crate) common: Common,
    body: Vec<u8>,
    /// Sorted by name, one entry per name (the last, when the JSON object repeats a name).
    index: Vec<TargetEntry>,
    decoded_names: Vec<Box<str>>,
    pub(crate) delegations: Option<Delegations>,
}

impl std::fmt::Debug for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Targets")
            .field("common", &self.common)
            .field("bytes", &self.body.len())
            .field("targets", &self.index.len())
            .field("delegations", &self.delegations)
            .finish()
    }
}

/// The fields of a targets role's `signed` this client reads; `targets` as an index into the bytes.
struct TargetsSigned {
    common: CommonJson,
    index: Vec<TargetEntry>,
    decoded_names: Vec<Box<str>>,
    delegations: Option<DelegationsJson>,
}

/// Reads a targets role's `signed` object (borrowed from `body`) in one pass.
struct TargetsSignedSeed<'b> {
    body: &'b [u8],
}

impl<'de> serde::de::DeserializeSeed<'de> for TargetsSignedSeed<'_> {
    type Value = TargetsSigned;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<TargetsSigned, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TargetsSignedSeed<'_> {
    type Value = TargetsSigned;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the `signed` object of targets metadata")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<TargetsSigned, A::Error> {
        use serde::de::Error as _;
        fn once<T, E: serde::de::Error>(
            slot: &mut Option<T>,
            value: T,
            field: &'static str,
        ) -> std::result::Result<(), E> {
            if slot.replace(value).is_some() {
                return Err(E::duplicate_field(field));
            }
            Ok(())
        }
        let (mut ty, mut spec_version, mut version, mut expires) = (None, None, None, None);
        let (mut targets, mut delegations) = (None, None);
        while let Some(JsonStr(key)) = map.next_key::<JsonStr<'de>>()? {
            match key.as_ref() {
                "_type" => once(&mut ty, map.next_value::<String>()?, "_type")?,
                "spec_version" => once(&mut spec_version, map.next_value::<String>()?, "spec_version")?,
                "version" => once(&mut version, map.next_value::<u64>()?, "version")?,
                "expires" => once(&mut expires, map.next_value::<String>()?, "expires")?,
                "targets" => once(
                    &mut targets,
                    map.next_value_seed(TargetIndexSeed { body: self.body })?,
                    "targets",
                )?,
                "delegations" => once(
                    &mut delegations,
                    map.next_value::<Option<DelegationsJson>>()?,
                    "delegations",
                )?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let (index, decoded_names) = targets.ok_or_else(|| A::Error::missing_field("targets"))?;
        Ok(TargetsSigned {
            common: CommonJson {
                ty: ty.ok_or_else(|| A::Error::missing_field("_type"))?,
                spec_version: spec_version.ok_or_else(|| A::Error::missing_field("spec_version"))?,
                version: version.ok_or_else(|| A::Error::missing_field("version"))?,
                expires: expires.ok_or_else(|| A::Error::missing_field("expires"))?,
            },
            index,
            decoded_names,
            delegations: delegations.flatten(),
        })
    }
}

/// Reads the `targets` object: checks each entry and records where it is.
struct TargetIndexSeed<'b> {
    body: &'b [u8],
}

impl<'de> serde::de::DeserializeSeed<'de> for TargetIndexSeed<'_> {
    type Value = (Vec<TargetEntry>, Vec<Box<str>>);
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TargetIndexSeed<'_> {
    type Value = (Vec<TargetEntry>, Vec<Box<str>>);
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of target entries")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let outside = || A::Error::custom("target entry outside the received bytes");
        let mut index = Vec::with_capacity(map.size_hint().unwrap_or(0));
        let mut decoded_names: Vec<Box<str>> = Vec::new();
        while let Some(JsonStr(name)) = map.next_key::<JsonStr<'de>>()? {
            let raw: &'de RawValue = map.next_value()?;
            serde_json::from_str::<TargetCheck>(raw.get())
                .map_err(|e| A::Error::custom(format!("target {name:?}: {e}")))?;
            let entry = Span::of(self.body, raw.get()).ok_or_else(outside)?;
            let name = match name {
                Cow::Borrowed(n) => NameRef::InBody(Span::of(self.body, n).ok_or_else(outside)?),
                Cow::Owned(n) => {
                    decoded_names.push(n.into_boxed_str());
                    NameRef::Decoded(u32::try_from(decoded_names.len() - 1).map_err(|_| outside())?)
                }
            };
            index.push(TargetEntry { name, entry });
        }
        Ok((index, decoded_names))
    }
}

impl Targets {
    /// Parses `role`'s targets metadata from the received `bytes` (kept), after `verify` accepted its
    /// envelope (the signature check runs before anything of `signed` is read).
    pub(crate) fn parse(
        role: &str,
        bytes: Vec<u8>,
        verify: impl FnOnce(&Envelope<'_>) -> Result<()>,
    ) -> Result<Targets> {
        let envelope = parse_envelope(role, &bytes)?;
        verify(&envelope)?;
        let mut de = serde_json::Deserializer::from_str(envelope.signed);
        let signed = serde::de::DeserializeSeed::deserialize(TargetsSignedSeed { body: &bytes }, &mut de)
            .and_then(|s| de.end().map(|()| s))
            .map_err(|e| Error::malformed(role, e.to_string()))?;
        drop(envelope);
        let common = Common::from_json(role, "targets", signed.common)?;
        let delegations = signed.delegations.map(|d| delegations(role, d)).transpose()?;
        let mut targets = Targets {
            common,
            body: bytes,
            index: signed.index,
            decoded_names: signed.decoded_names,
            delegations,
        };
        targets.sort_index();
        Ok(targets)
    }

    /// Sorts the index by name; of repeated names the last one stays (as a JSON object read into a map).
    fn sort_index(&mut self) {
        let Targets {
            body,
            index,
            decoded_names,
            ..
        } = self;
        let name = |e: &TargetEntry| entry_name(body, decoded_names, e.name);
        // Stable, and nearly free on the sorted input repositories write.
        index.sort_by(|a, b| name(a).cmp(name(b)));
        index.dedup_by(|later, kept| {
            let same = name(later) == name(kept);
            if same {
                *kept = *later;
            }
            same
        });
    }

    /// The received bytes (what is persisted).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// Every target name this role lists, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.index
            .iter()
            .map(|e| entry_name(&self.body, &self.decoded_names, e.name))
    }

    /// The target `name` as this role lists it.
    pub(crate) fn get(&self, role: &str, name: &str) -> Result<Option<TargetInfo>> {
        let Ok(at) = self
            .index
            .binary_search_by(|e| entry_name(&self.body, &self.decoded_names, e.name).cmp(name))
        else {
            return Ok(None);
        };
        let Some(entry) = self.index.get(at) else {
            return Ok(None);
        };
        let what = format!("target {name:?}");
        let t: TargetJson = serde_json::from_str(entry.entry.text(&self.body))
            .map_err(|e| Error::malformed(role, format!("{what}: {e}")))?;
        Ok(Some(TargetInfo {
            name: name.to_string(),
            length: t.length,
            hashes: decode_hashes(role, &what, t.hashes)?,
            custom: t.custom.unwrap_or(Value::Null),
        }))
    }
}

fn entry_name<'t>(body: &'t [u8], decoded: &'t [Box<str>], name: NameRef) -> &'t str {
    match name {
        NameRef::InBody(span) => span.text(body),
        NameRef::Decoded(i) => usize::try_from(i)
            .ok()
            .and_then(|i| decoded.get(i))
            .map_or("", |n| n),
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
