//! Public keys as TUF metadata lists them, and signature checks over the canonical `signed` bytes.
//!
//! Supported (keytype / scheme): `ed25519`/`ed25519` (hex public key), `ecdsa` or `ecdsa-sha2-nistp256` /
//! `ecdsa-sha2-nistp256` (PEM SubjectPublicKeyInfo, or hex SEC1 point; DER or fixed-size signatures), and
//! `rsa`/`rsassa-pss-sha256` (PEM SubjectPublicKeyInfo or PKCS#1; PSS with MGF1-SHA-256 and a 32-byte salt,
//! as securesystemslib and tough sign) and `rsa`/`rsa-pkcs1v15-sha256` (securesystemslib's other RSA scheme,
//! the default of the tuf-conformance suite's simulator). A key of another type, or whose public value
//! does not decode, is kept but never verifies anything, so one odd key does not make the metadata that
//! lists it unreadable.

use serde::Deserialize;
use sha2::Digest as _;

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
    RsaPkcs1v15Sha256(Box<rsa::RsaPublicKey>),
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
            // One RSA key under two schemes is still one key.
            PublicKey::RsaPssSha256(k) | PublicKey::RsaPkcs1v15Sha256(k) => {
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

    /// Starts checking `sig` (raw bytes) as this key's signature over a message that will be fed in
    /// pieces (the canonical JSON as it is produced). None when the signature cannot be valid whatever the
    /// message (wrong size or encoding, unusable key, a weak ed25519 key or a small-order R, as
    /// ed25519-dalek's `verify_strict` refuses).
    pub(crate) fn start_check(&self, sig: &[u8]) -> Option<SignatureCheck<'_>> {
        match &self.key {
            PublicKey::Ed25519(k) => {
                let s = ed25519_dalek::Signature::from_slice(sig).ok()?;
                let r = curve25519_dalek::edwards::CompressedEdwardsY(*s.r_bytes()).decompress()?;
                if r.is_small_order() || k.is_weak() {
                    return None;
                }
                k.verify_stream(&s)
                    .ok()
                    .map(|v| SignatureCheck::Ed25519(Box::new(v)))
            }
            PublicKey::EcdsaP256(k) => {
                let s = p256::ecdsa::Signature::from_der(sig)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(sig))
                    .ok()?;
                Some(SignatureCheck::EcdsaP256(k, s, sha2::Sha256::new()))
            }
            PublicKey::RsaPssSha256(k) => {
                Some(SignatureCheck::RsaPssSha256(k, sig.to_vec(), sha2::Sha256::new()))
            }
            PublicKey::RsaPkcs1v15Sha256(k) => Some(SignatureCheck::RsaPkcs1v15Sha256(
                k,
                sig.to_vec(),
                sha2::Sha256::new(),
            )),
            PublicKey::Unusable => None,
        }
    }
}

/// One signature being checked over a message fed in pieces: ed25519 (its SHA-512 runs over the message,
/// RFC 8032 5.1.7), ecdsa-sha2-nistp256, rsassa-pss-sha256 and rsa-pkcs1v15-sha256 (over the message's
/// SHA-256).
pub(crate) enum SignatureCheck<'k> {
    Ed25519(Box<ed25519_dalek::StreamVerifier>),
    EcdsaP256(
        &'k p256::ecdsa::VerifyingKey,
        p256::ecdsa::Signature,
        sha2::Sha256,
    ),
    RsaPssSha256(&'k rsa::RsaPublicKey, Vec<u8>, sha2::Sha256),
    RsaPkcs1v15Sha256(&'k rsa::RsaPublicKey, Vec<u8>, sha2::Sha256),
}

/// The DER DigestInfo prefix of a SHA-256 digest in a PKCS#1 v1.5 signature (RFC 8017 9.2, note 1).
const PKCS1_SHA256_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0x04, 0x20,
];

impl SignatureCheck<'_> {
    pub(crate) fn update(&mut self, piece: &[u8]) {
        match self {
            SignatureCheck::Ed25519(v) => v.update(piece),
            SignatureCheck::EcdsaP256(_, _, h)
            | SignatureCheck::RsaPssSha256(_, _, h)
            | SignatureCheck::RsaPkcs1v15Sha256(_, _, h) => h.update(piece),
        }
    }

    /// True when the signature is valid over everything fed in.
    pub(crate) fn finish(self) -> bool {
        match self {
            SignatureCheck::Ed25519(v) => v.finalize_and_verify().is_ok(),
            SignatureCheck::EcdsaP256(k, s, h) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
                k.verify_prehash(&h.finalize(), &s).is_ok()
            }
            SignatureCheck::RsaPssSha256(k, s, h) => k
                .verify(rsa::Pss::new::<sha2::Sha256>(), &h.finalize(), &s)
                .is_ok(),
            SignatureCheck::RsaPkcs1v15Sha256(k, s, h) => {
                let padding = rsa::Pkcs1v15Sign {
                    hash_len: Some(32),
                    prefix: Box::new(PKCS1_SHA256_PREFIX),
                };
                k.verify(padding, &h.finalize(), &s).is_ok()
            }
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
        ("rsa", scheme @ ("rsassa-pss-sha256" | "rsa-pkcs1v15-sha256")) => {
            use rsa::pkcs1::DecodeRsaPublicKey as _;
            use rsa::pkcs8::DecodePublicKey as _;
            let key = rsa::RsaPublicKey::from_public_key_pem(public)
                .ok()
                .or_else(|| rsa::RsaPublicKey::from_pkcs1_pem(public).ok());
            match (key, scheme) {
                (None, _) => PublicKey::Unusable,
                (Some(k), "rsassa-pss-sha256") => PublicKey::RsaPssSha256(Box::new(k)),
                (Some(k), _) => PublicKey::RsaPkcs1v15Sha256(Box::new(k)),
            }
        }
        _ => PublicKey::Unusable,
    }
}
