//! [`Envelope`]: a [`Report`] signed as a DSSE envelope (in-toto's Dead Simple Signing Envelope,
//! <https://github.com/secure-systems-lab/dsse/blob/master/protocol.md>).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};

use crate::report::{check_size, DeviceId, Report};
use crate::{
    Error, Result, MAX_ENVELOPE_BYTES, MAX_KEY_ID_BYTES, MAX_PAYLOAD_BYTES, MAX_SIGNATURES,
    MAX_SIGNATURE_BYTES, PAYLOAD_TYPE,
};

/// DSSE's Pre-Authentication Encoding, the bytes a signature covers:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal. Binding the type into
/// the signed bytes keeps a report's signature from being replayed as some other document.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let head = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len());
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// A device's public key, as the collector enrolled it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKey {
    /// ed25519 (the device's identity key file today); signatures are the 64 raw bytes.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// ECDSA on P-256 with SHA-256 (hardware tokens); signatures are ASN.1 DER.
    EcdsaP256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// An ed25519 key from its 32 bytes.
    pub fn ed25519(bytes: &[u8]) -> Result<PublicKey> {
        let bad = || Error::Key { algorithm: "ed25519" };
        let bytes = <&[u8; 32]>::try_from(bytes).map_err(|_| bad())?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| bad())?;
        Ok(PublicKey::Ed25519(key))
    }

    /// A P-256 key from its SEC1 encoding (compressed or not).
    pub fn ecdsa_p256(sec1: &[u8]) -> Result<PublicKey> {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1).map_err(|_| Error::Key {
            algorithm: "ecdsa-p256",
        })?;
        Ok(PublicKey::EcdsaP256(key))
    }

    /// The key from its algorithm name ([`PublicKey::algorithm`]) and bytes ([`PublicKey::to_bytes`]):
    /// how a collector reads back a key it stored.
    pub fn from_parts(algorithm: &str, bytes: &[u8]) -> Result<PublicKey> {
        match algorithm {
            Self::ED25519 => PublicKey::ed25519(bytes),
            Self::ECDSA_P256 => PublicKey::ecdsa_p256(bytes),
            other => Err(Error::Invalid {
                field: "key algorithm",
                why: format!("{other:?} (known: {}, {})", Self::ED25519, Self::ECDSA_P256),
            }),
        }
    }

    const ED25519: &'static str = "ed25519";
    const ECDSA_P256: &'static str = "ecdsa-p256";

    /// The algorithm's name: `ed25519` or `ecdsa-p256`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => Self::ED25519,
            PublicKey::EcdsaP256(_) => Self::ECDSA_P256,
        }
    }

    /// The key's public bytes: the 32 bytes of an ed25519 key, the compressed SEC1 point of a P-256
    /// key (the bytes [`DeviceId::of_public_key`] hashes).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            PublicKey::Ed25519(k) => k.as_bytes().to_vec(),
            PublicKey::EcdsaP256(k) => k.to_encoded_point(true).as_bytes().to_vec(),
        }
    }

    /// The id of the device holding this key ([`DeviceId::of_public_key`]).
    pub fn device_id(&self) -> DeviceId {
        match self {
            PublicKey::Ed25519(k) => DeviceId::of_public_key(k.as_bytes()),
            PublicKey::EcdsaP256(k) => DeviceId::of_public_key(k.to_encoded_point(true).as_bytes()),
        }
    }

    /// The DSSE `keyid` of this key's signatures: its device id, so the collector can look the
    /// enrolled key up (a hint only: nothing is trusted until the signature verifies).
    pub fn key_id(&self) -> String {
        self.device_id().to_string()
    }

    /// True when `sig` is this key's valid signature over `message`. ed25519 is verified strictly
    /// (no small-order keys or malleable signatures).
    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(k) => {
                ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| k.verify_strict(message, &s).is_ok())
            }
            PublicKey::EcdsaP256(k) => {
                p256::ecdsa::Signature::from_der(sig).is_ok_and(|s| k.verify(message, &s).is_ok())
            }
        }
    }
}

/// Signs reports without this crate seeing where the key lives (a key file, a PKCS#11 token).
pub trait ReportSigner {
    /// The public half of the signing key.
    fn public_key(&self) -> PublicKey;
    /// Signs `message` (the PAE bytes): 64 raw bytes for ed25519, DER for ECDSA P-256 over SHA-256.
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>;
}

impl ReportSigner for ed25519_dalek::SigningKey {
    fn public_key(&self) -> PublicKey {
        PublicKey::Ed25519(self.verifying_key())
    }
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ed25519_dalek::Signer::sign(self, message).to_bytes().to_vec())
    }
}

impl ReportSigner for p256::ecdsa::SigningKey {
    fn public_key(&self) -> PublicKey {
        PublicKey::EcdsaP256(*self.verifying_key())
    }
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        let sig: p256::ecdsa::Signature = self.try_sign(message)?;
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Which key made it (a hint for lookup; see [`PublicKey::key_id`]).
    pub keyid: String,
    /// The signature bytes (decoded from base64).
    pub sig: Vec<u8>,
}

/// A signed report as sent: the payload exactly as signed, and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    payload: Vec<u8>,
    signatures: Vec<Signature>,
}

/// The JSON form (field names per the DSSE protocol).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    keyid: String,
    sig: String,
}

impl Envelope {
    /// Validates `report`, serializes it and signs `PAE(PAYLOAD_TYPE, payload)` with `signer`; the
    /// signature is checked before the envelope is returned, so a signer returning the wrong format is
    /// caught on the device rather than at the collector.
    pub fn sign(report: &Report, signer: &dyn ReportSigner) -> Result<Envelope> {
        let payload = report.to_payload()?;
        let message = pae(PAYLOAD_TYPE, &payload);
        let sig = signer.sign(&message).map_err(|source| Error::Signer { source })?;
        let key = signer.public_key();
        if !key.verifies(&message, &sig) {
            return Err(Error::BadSignature { key_id: key.key_id() });
        }
        Ok(Envelope {
            payload,
            signatures: vec![Signature {
                keyid: key.key_id(),
                sig,
            }],
        })
    }

    /// The envelope's JSON, as sent.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireEnvelope {
            payload_type: PAYLOAD_TYPE.to_string(),
            payload: BASE64.encode(&self.payload),
            signatures: self
                .signatures
                .iter()
                .map(|s| WireSignature {
                    keyid: s.keyid.clone(),
                    sig: BASE64.encode(&s.sig),
                })
                .collect(),
        };
        // A struct of strings always serializes.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses received bytes: bounded, strict (unknown fields refused), the payload type a report's,
    /// one to [`MAX_SIGNATURES`] signatures. Nothing in the payload is read yet: see [`Envelope::verify`].
    pub fn from_json(bytes: &[u8]) -> Result<Envelope> {
        check_size("envelope", bytes.len(), MAX_ENVELOPE_BYTES)?;
        let wire: WireEnvelope = serde_json::from_slice(bytes).map_err(|source| Error::Malformed {
            what: "envelope",
            source,
        })?;
        if wire.payload_type != PAYLOAD_TYPE {
            return Err(Error::Invalid {
                field: "payloadType",
                why: format!("{:?} (expected {PAYLOAD_TYPE:?})", wire.payload_type),
            });
        }
        let payload = decode("payload", &wire.payload, MAX_PAYLOAD_BYTES)?;
        if wire.signatures.is_empty() || wire.signatures.len() > MAX_SIGNATURES {
            return Err(Error::Invalid {
                field: "signatures",
                why: format!(
                    "{} of them (1 to {MAX_SIGNATURES} allowed)",
                    wire.signatures.len()
                ),
            });
        }
        let signatures = wire
            .signatures
            .into_iter()
            .map(|s| {
                check_size("keyid", s.keyid.len(), MAX_KEY_ID_BYTES)?;
                let sig = decode("sig", &s.sig, MAX_SIGNATURE_BYTES)?;
                Ok(Signature { keyid: s.keyid, sig })
            })
            .collect::<Result<_>>()?;
        Ok(Envelope { payload, signatures })
    }

    /// The report, once a signature by `key` verifies over the payload as received and the report's
    /// device id is `key`'s. The caller still refuses a sequence number it has seen (replay).
    pub fn verify(&self, key: &PublicKey) -> Result<Report> {
        let message = pae(PAYLOAD_TYPE, &self.payload);
        if !self.signatures.iter().any(|s| key.verifies(&message, &s.sig)) {
            return Err(Error::BadSignature { key_id: key.key_id() });
        }
        let report = Report::from_payload(&self.payload)?;
        let signer = key.device_id();
        if report.device_id != signer {
            return Err(Error::WrongDevice {
                claimed: report.device_id,
                signer,
            });
        }
        Ok(report)
    }

    /// The payload bytes exactly as signed (unverified until [`Envelope::verify`] says so).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signatures.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }
}

/// Decodes standard base64 (padded) into at most `limit` bytes. The text itself is already bounded by
/// [`MAX_ENVELOPE_BYTES`].
fn decode(field: &'static str, text: &str, limit: usize) -> Result<Vec<u8>> {
    let bytes = BASE64
        .decode(text)
        .map_err(|source| Error::Base64 { field, source })?;
    check_size(field, bytes.len(), limit)?;
    Ok(bytes)
}
