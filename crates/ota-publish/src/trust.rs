//! Who may sign a role, and signing: the key ids and threshold of a role ([`RoleKeySet`], read from
//! root or the delegating targets metadata), the public keys behind them ([`RoleTrust`], to count
//! valid signatures over staged bytes), and signing canonical bytes with a [`KeyRing`].
//!
//! Every module that signs or checks signatures depends on this one; it depends on none of them.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;

use serde::Serialize;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{EcdsaScheme, Key};
use tough::schema::{
    DelegatedRole, Delegations, PathSet, RoleKeys, RoleType, Root, Signature, Signed, Targets,
};

use crate::canonical::{canonical, canonical_targets, envelope};
use crate::error::{invalid, Error, Result};
use crate::keys::{KeyId, KeyRing};

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

/// A role's public keys (by id) and threshold: what counting valid signatures needs. Serialized
/// as is into stage files (`{"threshold": N, "keys": {...}}`) so a holder without the repository
/// sees which keys count.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RoleTrust {
    pub threshold: u64,
    pub keys: BTreeMap<KeyId, Key>,
}

impl RoleTrust {
    pub fn from_ids(
        ids: &[tough::schema::decoded::Decoded<tough::schema::decoded::Hex>],
        all: &HashMap<tough::schema::decoded::Decoded<tough::schema::decoded::Hex>, Key>,
        threshold: NonZeroU64,
    ) -> RoleTrust {
        let keys = ids
            .iter()
            .filter_map(|id| all.get(id).map(|k| (hex::encode(id.as_ref()), k.clone())))
            .collect();
        RoleTrust {
            keys,
            threshold: threshold.get(),
        }
    }

    pub(crate) fn of_delegation(delegations: &Delegations, role: &str) -> Option<RoleTrust> {
        let entry: &DelegatedRole = delegations.roles.iter().find(|r| r.name == role)?;
        Some(RoleTrust::from_ids(
            &entry.keyids,
            &delegations.keys,
            entry.threshold,
        ))
    }

    /// The root role's trust in a root.
    pub(crate) fn of_root(root: &Root) -> Result<RoleTrust> {
        let rk = root
            .roles
            .get(&RoleType::Root)
            .ok_or_else(|| invalid("root metadata", "lists no root role"))?;
        Ok(RoleTrust::from_ids(&rk.keyids, &root.keys, rk.threshold))
    }

    /// The role's key ids, comma separated (for messages).
    pub fn key_ids(&self) -> String {
        self.keys.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Valid signatures by distinct keys of this role over `msg` (the canonical signed part).
    pub fn count_valid(&self, msg: &[u8], signatures: &[Signature]) -> u64 {
        let mut seen = std::collections::BTreeSet::new();
        for s in signatures {
            let id = hex::encode(s.keyid.as_ref());
            if let Some(key) = self.keys.get(&id) {
                if !seen.contains(&id) && verify_signature(key, msg, s.sig.as_ref()) {
                    seen.insert(id);
                }
            }
        }
        seen.len() as u64
    }
}

/// Checks one signature with one key over canonical signed bytes `msg`. Ed25519 (what `repo-tool keys
/// generate` makes) is checked here; other key types through tough's own check, with the key as the
/// only key of a role of threshold 1 (tough keeps its per-key check private), for the two kinds of
/// metadata that are staged: targets and root.
pub(crate) fn verify_signature(key: &Key, msg: &[u8], sig: &[u8]) -> bool {
    if let Key::Ed25519 { keyval, .. } = key {
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ED25519,
            keyval.public.as_ref(),
        );
        return public.verify(msg, sig).is_ok();
    }
    // ECDSA P-256 (keys in PKCS#11 tokens): DER signatures, as tough checks them. Checked here, not
    // by parsing `msg` back: canonical root bytes with a PEM key hold raw newlines no parser takes.
    if let Key::Ecdsa {
        keyval,
        scheme: EcdsaScheme::EcdsaSha2Nistp256,
        ..
    }
    | Key::EcdsaOld {
        keyval,
        scheme: EcdsaScheme::EcdsaSha2Nistp256,
        ..
    } = key
    {
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            keyval.public.as_ref(),
        );
        return public.verify(msg, sig).is_ok();
    }
    let Ok(id) = key.key_id() else {
        return false;
    };
    let signatures = vec![Signature {
        keyid: id.clone(),
        sig: sig.to_vec().into(),
    }];
    if let Ok(signed) = serde_json::from_slice::<Targets>(msg) {
        let mut delegations = Delegations::new();
        delegations.keys.insert(id.clone(), key.clone());
        delegations.roles.push(DelegatedRole {
            name: "one-key".into(),
            keyids: vec![id],
            threshold: NonZeroU64::MIN,
            paths: PathSet::Paths(Vec::new()),
            terminating: false,
            targets: None,
        });
        return delegations
            .verify_role(&Signed { signed, signatures }, "one-key")
            .is_ok();
    }
    if let Ok(signed) = serde_json::from_slice::<Root>(msg) {
        let mut one_key = signed.clone();
        one_key.keys = HashMap::from([(id.clone(), key.clone())]);
        one_key.roles.insert(
            RoleType::Root,
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
        return one_key.verify_role(&Signed { signed, signatures }).is_ok();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::file_bytes;
    use crate::meta::{now, SPEC_VERSION};

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
}
