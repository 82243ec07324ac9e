//! Public keys as TUF metadata lists them, and signature checks over the canonical `signed` bytes.
//!
//! Supported (keytype / scheme): `ed25519`/`ed25519` (hex public key), `ecdsa` or `ecdsa-sha2-nistp256` /
//! `ecdsa-sha2-nistp256` (PEM SubjectPublicKeyInfo, or hex SEC1 point; DER or fixed-size signatures), and
//! `rsa`/`rsassa-pss-sha256` (PEM SubjectPublicKeyInfo or PKCS#1; PSS with MGF1-SHA-256 and a 32-byte salt,
//! as securesystemslib and tough sign). A key of another type, or whose public value does not decode, is
//! kept but never verifies anything, so one odd key does not make the metadata that lists it unreadable.

use ed25519_dalek::Verifier as _;
use serde::Deserialize;

/// A key as it appears in `keys` of root or `delegations.keys`.
#[derive(Debug, Deserialize)]
pub(crate) struct KeyJson {
    pub(crate) keytype: String,
    pub(crate) scheme: String,
    pub(crate) keyval: KeyVal,
}

/// The `keyval` object; only `public` is used.
#[derive(Debug, Deserialize)]
pub(crate) struct KeyVal {
    pub(crate) public: String,
}

/// A verifying key, decoded once.
#[derive(Debug, Clone)]
pub(crate) enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    EcdsaP256(p256::ecdsa::VerifyingKey),
    RsaPssSha256(Box<rsa::RsaPublicKey>),
    /// Unknown type or undecodable value: verifies nothing.
    Unusable,
}

/// A key plus its identity (the decoded public value), used to count each distinct key once toward a
/// threshold even when it is listed under several keyids.
#[derive(Debug, Clone)]
pub(crate) struct TrustedKey {
    pub(crate) key: PublicKey,
    pub(crate) identity: Vec<u8>,
}

impl TrustedKey {
    pub(crate) fn from_json(json: &KeyJson) -> TrustedKey {
        let key = decode(json);
        let identity = match &key {
            PublicKey::Ed25519(k) => [b"ed25519:".as_slice(), k.as_bytes()].concat(),
            PublicKey::EcdsaP256(k) => [b"p256:".as_slice(), k.to_encoded_point(true).as_bytes()].concat(),
            PublicKey::RsaPssSha256(k) => {
                use rsa::traits::PublicKeyParts;
                [
                    b"rsa:".as_slice(),
                    &k.n().to_bytes_be(),
                    b":",
                    &k.e().to_bytes_be(),
                ]
                .concat()
            }
            // Unusable keys never verify; their identity only needs to be stable.
            PublicKey::Unusable => {
                format!("unusable:{}:{}:{}", json.keytype, json.scheme, json.keyval.public).into_bytes()
            }
        };
        TrustedKey { key, identity }
    }

    /// True when `sig` (raw bytes) is a valid signature of `message` by this key.
    pub(crate) fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .map(|s| k.verify_strict(message, &s).is_ok())
                .unwrap_or(false),
            PublicKey::EcdsaP256(k) => {
                let parsed = p256::ecdsa::Signature::from_der(sig)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(sig));
                parsed.map(|s| k.verify(message, &s).is_ok()).unwrap_or(false)
            }
            PublicKey::RsaPssSha256(k) => {
                use sha2::Digest as _;
                let digest = sha2::Sha256::digest(message);
                k.verify(rsa::Pss::new::<sha2::Sha256>(), &digest, sig).is_ok()
            }
            PublicKey::Unusable => false,
        }
    }
}

fn decode(json: &KeyJson) -> PublicKey {
    let public = json.keyval.public.trim();
    match (json.keytype.as_str(), json.scheme.as_str()) {
        ("ed25519", "ed25519") => hex::decode(public)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
            .map_or(PublicKey::Unusable, PublicKey::Ed25519),
        ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
            use p256::pkcs8::DecodePublicKey as _;
            p256::ecdsa::VerifyingKey::from_public_key_pem(public)
                .ok()
                .or_else(|| {
                    hex::decode(public)
                        .ok()
                        .and_then(|b| p256::ecdsa::VerifyingKey::from_sec1_bytes(&b).ok())
                })
                .map_or(PublicKey::Unusable, PublicKey::EcdsaP256)
        }
        ("rsa", "rsassa-pss-sha256") => {
            use rsa::pkcs1::DecodeRsaPublicKey as _;
            use rsa::pkcs8::DecodePublicKey as _;
            rsa::RsaPublicKey::from_public_key_pem(public)
                .ok()
                .or_else(|| rsa::RsaPublicKey::from_pkcs1_pem(public).ok())
                .map_or(PublicKey::Unusable, |k| PublicKey::RsaPssSha256(Box::new(k)))
        }
        _ => PublicKey::Unusable,
    }
}
