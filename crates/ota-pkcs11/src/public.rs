//! The key algorithms a token key may have, its public key as read from the token, and the
//! signature encodings TUF expects.

use p256::pkcs8::EncodePublicKey as _;

/// DER of the P-256 curve's OID (1.2.840.10045.3.1.7): the `CKA_EC_PARAMS` of a P-256 key.
pub(crate) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of Ed25519's OID (1.3.101.112, RFC 8410): the `CKA_EC_PARAMS` of an Ed25519 key.
pub(crate) const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// PKCS#11 3.0 also names the curve by a printable string.
const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";

/// The signature algorithms a token key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA over NIST P-256 with SHA-256 (TUF `ecdsa-sha2-nistp256`; what TPMs and secure elements
    /// offer). The message is hashed in software, the token signs the digest (`CKM_ECDSA`).
    EcdsaP256,
    /// Ed25519 (TUF `ed25519`; `CKM_EDDSA`, SoftHSM2 2.6 and newer HSMs).
    Ed25519,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<KeyAlgorithm, String> {
        match s {
            "ecdsa-p256" | "p256" | "ecdsa-sha2-nistp256" => Ok(KeyAlgorithm::EcdsaP256),
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            _ => Err(format!("unknown key algorithm {s:?} (ecdsa-p256 or ed25519)")),
        }
    }
}

/// A token key's public half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// A P-256 point.
    EcdsaP256(p256::PublicKey),
    /// An Ed25519 public key (32 bytes).
    Ed25519([u8; 32]),
}

impl PublicKey {
    /// The algorithm of the key.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            PublicKey::EcdsaP256(_) => KeyAlgorithm::EcdsaP256,
            PublicKey::Ed25519(_) => KeyAlgorithm::Ed25519,
        }
    }

    /// The public key as TUF writes it in `keyval.public`: PEM SubjectPublicKeyInfo for ECDSA
    /// (as python-tuf and tough write it), hex for Ed25519.
    pub fn tuf_public(&self) -> String {
        match self {
            PublicKey::EcdsaP256(k) => k
                .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                // Encoding a valid point into a fixed-size structure cannot fail; fall back to the
                // hex SEC1 point, which TUF clients accept too, rather than panic.
                .unwrap_or_else(|_| hex_of(k.to_sec1_bytes().as_ref())),
            PublicKey::Ed25519(b) => hex_of(b),
        }
    }

    /// Raw public key bytes: the uncompressed SEC1 point (P-256) or the 32 bytes (Ed25519).
    pub fn raw(&self) -> Vec<u8> {
        match self {
            PublicKey::EcdsaP256(k) => k.to_sec1_bytes().to_vec(),
            PublicKey::Ed25519(b) => b.to_vec(),
        }
    }

    /// Reads the public key from the token's `CKA_EC_PARAMS` and `CKA_EC_POINT`. The point is a DER
    /// OCTET STRING by the standard; some modules return it bare, so both are taken.
    pub(crate) fn from_token(params: &[u8], point: &[u8]) -> Result<PublicKey, String> {
        let bare = unwrap_octet_string(point).unwrap_or(point);
        if params == P256_PARAMS {
            p256::PublicKey::from_sec1_bytes(bare)
                .map(PublicKey::EcdsaP256)
                .map_err(|_| "its EC point is not a P-256 point".to_string())
        } else if params == ED25519_PARAMS || params == ED25519_PARAMS_NAME {
            <[u8; 32]>::try_from(bare)
                .map(PublicKey::Ed25519)
                .map_err(|_| format!("its Ed25519 key is {} bytes, not 32", bare.len()))
        } else {
            Err(format!("curve parameters {}", hex_of(params)))
        }
    }

    /// The signature in the encoding TUF uses for this key type, from what the token returned:
    /// ASN.1 DER for `ecdsa-sha2-nistp256` (tough verifies `ECDSA_P256_SHA256_ASN1`, python-tuf's
    /// securesystemslib verifies DER), the 64 bytes for Ed25519. `CKM_ECDSA` returns r || s.
    pub(crate) fn tuf_signature(&self, token_sig: Vec<u8>) -> Result<Vec<u8>, String> {
        match self {
            PublicKey::EcdsaP256(_) => p256::ecdsa::Signature::from_slice(&token_sig)
                .map(|s| s.to_der().as_bytes().to_vec())
                .map_err(|_| {
                    format!(
                        "the token returned a {}-byte ECDSA signature, not 64",
                        token_sig.len()
                    )
                }),
            PublicKey::Ed25519(_) if token_sig.len() == 64 => Ok(token_sig),
            PublicKey::Ed25519(_) => Err(format!(
                "the token returned a {}-byte Ed25519 signature, not 64",
                token_sig.len()
            )),
        }
    }
}

/// The content of a short DER OCTET STRING (tag 0x04, one length byte), if `der` is one.
fn unwrap_octet_string(der: &[u8]) -> Option<&[u8]> {
    match der {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => Some(rest),
        _ => None,
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_wrapped_and_bare_points() {
        let ed = [7u8; 32];
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(&ed);
        assert_eq!(
            PublicKey::from_token(ED25519_PARAMS, &wrapped).unwrap(),
            PublicKey::Ed25519(ed)
        );
        assert_eq!(
            PublicKey::from_token(ED25519_PARAMS_NAME, &ed).unwrap(),
            PublicKey::Ed25519(ed)
        );
        assert!(PublicKey::from_token(b"\x06\x01\x00", &ed).is_err());
        assert!(PublicKey::from_token(P256_PARAMS, &[0x04, 1, 2]).is_err());
    }

    #[test]
    fn ecdsa_signature_becomes_der() {
        use p256::ecdsa::signature::Signer as _;
        let sk = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        let pk = PublicKey::EcdsaP256(p256::PublicKey::from(sk.verifying_key()));
        let sig: p256::ecdsa::Signature = sk.sign(b"msg");
        let der = pk.tuf_signature(sig.to_bytes().to_vec()).unwrap();
        assert_eq!(p256::ecdsa::Signature::from_der(&der).unwrap(), sig);
        assert!(pk.tuf_signature(vec![0; 10]).is_err());
        assert!(pk.tuf_public().starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
