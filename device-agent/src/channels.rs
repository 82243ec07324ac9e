//! Authenticated channels: the CA certificates pinned at provisioning beside the root of trust (one for
//! the repository, one for the report collector), and the TLS client certificate that binds the device's
//! identity key to its connections to the collector (mutual TLS).
//!
//! TLS is defence in depth here: TUF still decides what the device trusts, so a repository server with a
//! valid certificate and tampered metadata is refused all the same. What TLS adds is that only the
//! pinned CA's servers are talked to at all (the system's trust store is not used when a CA is pinned),
//! and that the collector knows which device speaks from the handshake, before it reads a byte.
//!
//! The client certificate is self-signed by the identity key at provisioning (`STATE/identity.crt`): the
//! collector does not need a device CA, it accepts a certificate whose public key is an enrolled,
//! unrevoked device. The handshake's signature is made through [`IdentityKey::sign`], so a key held in a
//! token signs the handshake too. Crypto provider: rustls' `ring` (the one reqwest's rustls already
//! uses on the device; no aws-lc).
//!
//! Plain `http://` stays the embedded default: nothing here is needed for a loopback demo.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::Digest as _;

use ota_report::PublicKey;

use crate::error::{Error, Result};
use crate::identity::IdentityKey;

/// The repository's CA certificate(s), PEM, pinned at provisioning (`provision --repository-ca`).
pub const REPOSITORY_CA_FILE: &str = "repository-ca.pem";
/// The collector's CA certificate(s), PEM, pinned at provisioning (`provision --collector-ca`).
pub const COLLECTOR_CA_FILE: &str = "collector-ca.pem";
/// The TLS client certificate, PEM, self-signed by the identity key at provisioning.
pub const CLIENT_CERT_FILE: &str = "identity.crt";

/// Largest CA bundle accepted (a few certificates).
const MAX_CA_FILE: u64 = 256 * 1024;
/// Largest client certificate file accepted (a self-signed certificate is under 1 KiB).
const MAX_CERT_FILE: u64 = 16 * 1024;

/// Copies the CA certificate(s) at `source` into `state_dir/name` (0644: certificates are public),
/// refusing a file that holds no PEM certificate. Pinning again replaces the earlier CA (a CA rotation
/// is re-provisioning this one file; the root of trust is untouched).
pub fn pin_ca(state_dir: &Path, name: &str, source: &Path) -> Result<()> {
    let pem = ota_fs::read_bounded(source, MAX_CA_FILE)?;
    parse_certificates(source, &pem)?;
    ota_fs::write_atomic(&state_dir.join(name), &pem, 0o644)?;
    Ok(())
}

/// What [`provision_channels`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelsProvisioned {
    /// A repository CA was pinned.
    pub repository_ca: bool,
    /// A collector CA was pinned.
    pub collector_ca: bool,
    /// The client certificate was created (false: the one there carries the identity already).
    pub client_cert_created: bool,
}

/// Provisioning's channel step, after the identity exists: pins the CAs given and creates the client
/// certificate.
pub fn provision_channels(
    state_dir: &Path,
    identity: &dyn IdentityKey,
    repository_ca: Option<&Path>,
    collector_ca: Option<&Path>,
) -> Result<ChannelsProvisioned> {
    if let Some(ca) = repository_ca {
        pin_ca(state_dir, REPOSITORY_CA_FILE, ca)?;
    }
    if let Some(ca) = collector_ca {
        pin_ca(state_dir, COLLECTOR_CA_FILE, ca)?;
    }
    Ok(ChannelsProvisioned {
        repository_ca: repository_ca.is_some(),
        collector_ca: collector_ca.is_some(),
        client_cert_created: create_client_cert(state_dir, identity)?,
    })
}

/// How the TUF client reaches the repository: through the pinned repository CA when one was pinned,
/// else as before (plain HTTP, or HTTPS through the built-in web roots).
pub fn repository_http(state_dir: &Path) -> Result<ota_tuf::Http> {
    let path = state_dir.join(REPOSITORY_CA_FILE);
    match read_if_present(&path, MAX_CA_FILE)? {
        Some(pem) => {
            parse_certificates(&path, &pem)?;
            Ok(ota_tuf::Http::PinnedCa(pem))
        }
        None => Ok(ota_tuf::Http::Default),
    }
}

/// Creates `state_dir/identity.crt`, self-signed by `identity`, unless one carrying that key is there
/// already. Returns whether it was created. The certificate is valid from 1975 to 9999: a device's
/// clock may be wrong before its first sync, and what the collector checks is the key, not the dates.
pub fn create_client_cert(state_dir: &Path, identity: &dyn IdentityKey) -> Result<bool> {
    let path = state_dir.join(CLIENT_CERT_FILE);
    if read_client_cert(&path, identity).is_ok() {
        return Ok(false);
    }
    let bad = |why: String| Error::ClientCertificate {
        path: path.clone(),
        why,
    };
    let device_id = identity.device_id();
    let mut params =
        rcgen::CertificateParams::new(vec![device_id.clone()]).map_err(|e| bad(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device_id);
    params.not_before = rcgen::date_time_ymd(1975, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    // The serial number only has to be unique per issuer, and the issuer is the key itself: a digest of
    // the key (positive: top bit clear) is as good as random, and needs no random source here.
    let public = identity.public_key();
    let mut serial: [u8; 16] = sha2::Sha256::digest(public.to_bytes())
        .get(..16)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([1; 16]);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params
        .self_signed(&CertSigner {
            identity,
            raw_public_key: raw_public_key(&public),
            algorithm: cert_algorithm(&public),
        })
        .map_err(|e| bad(format!("cannot make it: {e}")))?;
    ota_fs::write_atomic(&path, cert.pem().as_bytes(), 0o644)?;
    Ok(true)
}

/// The device's TLS settings for the report collector: the pinned collector CA, and the client
/// certificate whose handshake signature the identity key makes. Built once per process (from the
/// state directory), then [`CollectorTls::http_client`] for each client.
#[derive(Clone)]
pub struct CollectorTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for CollectorTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorTls").finish_non_exhaustive()
    }
}

impl CollectorTls {
    /// Reads the pinned collector CA and the client certificate from `state_dir`; refuses a missing CA
    /// (the collector's channel must be pinned: no fallback to the system's roots) and a certificate
    /// that does not carry `identity`'s key.
    pub fn load(state_dir: &Path, identity: Arc<dyn IdentityKey>) -> Result<CollectorTls> {
        let ca_path = state_dir.join(COLLECTOR_CA_FILE);
        let ca_pem = read_if_present(&ca_path, MAX_CA_FILE)?.ok_or_else(|| Error::CaCertificate {
            path: ca_path.clone(),
            why: "missing: pin the collector's CA with `device-agent provision --collector-ca FILE`".into(),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in parse_certificates(&ca_path, &ca_pem)? {
            roots.add(cert).map_err(|e| Error::CaCertificate {
                path: ca_path.clone(),
                why: format!("not a CA certificate rustls can use ({e})"),
            })?;
        }
        let cert = read_client_cert(&state_dir.join(CLIENT_CERT_FILE), identity.as_ref())?;
        let certified = rustls::sign::CertifiedKey::new(vec![cert], Arc::new(HandshakeSigner(identity)));
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::TlsSetup {
                    what: "the collector",
                    why: e.to_string(),
                })?
                .with_root_certificates(roots)
                .with_client_cert_resolver(Arc::new(ClientIdentity(Arc::new(certified))));
        Ok(CollectorTls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration (for a caller that builds its own connector).
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// An HTTP client speaking mutual TLS to the collector, with `timeout` for connecting and reading.
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .use_preconfigured_tls((*self.config).clone())
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| Error::TlsSetup {
                what: "the collector",
                why: e.to_string(),
            })
    }
}

/// Reads the client certificate at `path`, refusing one that does not carry `identity`'s public key
/// (a certificate left from another identity would be refused by the collector, or worse, name another
/// device).
fn read_client_cert(path: &Path, identity: &dyn IdentityKey) -> Result<CertificateDer<'static>> {
    let bad = |why: String| Error::ClientCertificate {
        path: path.to_owned(),
        why,
    };
    let pem = ota_fs::read_bounded(path, MAX_CERT_FILE)?;
    let cert = parse_certificates(path, &pem)?
        .into_iter()
        .next()
        .ok_or_else(|| bad("no certificate in it".into()))?;
    let spki = spki_of(&identity.public_key());
    // The SubjectPublicKeyInfo is a contiguous run of the certificate's DER: finding the identity's
    // exact SPKI in it is enough to tell the certificate carries that key (an issuer's key would be in
    // the signature's place only as a signature, never as an SPKI).
    if !cert.windows(spki.len()).any(|w| w == spki.as_slice()) {
        return Err(bad(format!(
            "it does not carry the identity key of {} (re-provision to make a new one)",
            identity.device_id()
        )));
    }
    Ok(cert)
}

/// The DER SubjectPublicKeyInfo of an ed25519 key before its 32 bytes (RFC 8410: SEQUENCE { SEQUENCE
/// { OID 1.3.101.112 }, BIT STRING key }).
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The DER SubjectPublicKeyInfo of a P-256 key before its 65-byte uncompressed point (RFC 5480: OIDs
/// id-ecPublicKey and prime256v1).
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The key as a certificate carries it inside its SubjectPublicKeyInfo: the 32 bytes of an ed25519
/// key, the uncompressed point of a P-256 key.
fn raw_public_key(key: &PublicKey) -> Vec<u8> {
    match key {
        PublicKey::EcdsaP256(k) => k.to_encoded_point(false).as_bytes().to_vec(),
        _ => key.to_bytes(),
    }
}

fn is_p256(key: &PublicKey) -> bool {
    matches!(key, PublicKey::EcdsaP256(_))
}

/// The DER SubjectPublicKeyInfo of the identity's key.
fn spki_of(key: &PublicKey) -> Vec<u8> {
    let prefix = if is_p256(key) {
        P256_SPKI_PREFIX
    } else {
        ED25519_SPKI_PREFIX
    };
    [prefix, raw_public_key(key).as_slice()].concat()
}

fn cert_algorithm(key: &PublicKey) -> &'static rcgen::SignatureAlgorithm {
    if is_p256(key) {
        &rcgen::PKCS_ECDSA_P256_SHA256
    } else {
        &rcgen::PKCS_ED25519
    }
}

/// Every PEM certificate in `pem` (at least one).
fn parse_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |why: String| Error::CaCertificate {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_if_present(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    match ota_fs::read_bounded(path, max) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ota_fs::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The identity key as rcgen's signer: it signs the client certificate at provisioning (through the
/// token when the key is in one). rcgen wants the raw public key (it wraps it in the SPKI itself) by
/// reference, so it is copied here.
struct CertSigner<'a> {
    identity: &'a dyn IdentityKey,
    raw_public_key: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for CertSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.raw_public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for CertSigner<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        // ed25519's 64 bytes, or ECDSA's DER: what an X.509 signature holds for each.
        self.identity.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// Always the one client certificate: the device has a single identity.
#[derive(Debug)]
struct ClientIdentity(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The identity key as rustls' handshake signer (TLS 1.3 CertificateVerify, or TLS 1.2's client
/// CertificateVerify): ed25519, or ECDSA P-256 with SHA-256, signed wherever the key lives (a token).
struct HandshakeSigner(Arc<dyn IdentityKey>);

impl HandshakeSigner {
    fn scheme_of(&self) -> SignatureScheme {
        if is_p256(&self.0.public_key()) {
            SignatureScheme::ECDSA_NISTP256_SHA256
        } else {
            SignatureScheme::ED25519
        }
    }
}

impl std::fmt::Debug for HandshakeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never key material: the device id only.
        f.debug_tuple("HandshakeSigner")
            .field(&self.0.device_id())
            .finish()
    }
}

impl rustls::sign::SigningKey for HandshakeSigner {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&self.scheme_of())
            .then(|| Box::new(HandshakeSigner(self.0.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        if is_p256(&self.0.public_key()) {
            SignatureAlgorithm::ECDSA
        } else {
            SignatureAlgorithm::ED25519
        }
    }
}

impl rustls::sign::Signer for HandshakeSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        self.0.sign(message).map_err(|e| {
            rustls::Error::General(format!(
                "the identity key cannot sign: {}",
                crate::error::error_chain(&e)
            ))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme_of()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::{Signer as _, Verifier as _};
    use rustls::sign::SigningKey as _;

    /// A P-256 identity in memory (a token's key, as far as these functions can tell).
    struct SoftP256(p256::ecdsa::SigningKey);

    impl IdentityKey for SoftP256 {
        fn public_key(&self) -> PublicKey {
            PublicKey::EcdsaP256(*self.0.verifying_key())
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
            let sig: p256::ecdsa::Signature = self.0.sign(message);
            Ok(sig.to_der().as_bytes().to_vec())
        }
    }

    fn p256_identity(seed: u8) -> SoftP256 {
        SoftP256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap())
    }

    #[test]
    fn a_p256_identity_gets_a_certificate_with_its_key_and_signs_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let id = p256_identity(7);
        assert!(create_client_cert(dir.path(), &id).unwrap());
        assert!(!create_client_cert(dir.path(), &id).unwrap(), "kept");
        let path = dir.path().join(CLIENT_CERT_FILE);
        let cert = read_client_cert(&path, &id).unwrap();
        assert!(cert
            .windows(P256_SPKI_PREFIX.len())
            .any(|w| w == P256_SPKI_PREFIX));
        let err = read_client_cert(&path, &p256_identity(8))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not carry the identity key"), "{err}");

        let signer = HandshakeSigner(Arc::new(id));
        assert_eq!(signer.algorithm(), SignatureAlgorithm::ECDSA);
        assert!(signer.choose_scheme(&[SignatureScheme::ED25519]).is_none());
        let chosen = signer
            .choose_scheme(&[SignatureScheme::ED25519, SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        assert_eq!(chosen.scheme(), SignatureScheme::ECDSA_NISTP256_SHA256);
        let der = chosen.sign(b"handshake transcript").unwrap();
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        p256_identity(7)
            .0
            .verifying_key()
            .verify(b"handshake transcript", &sig)
            .unwrap();
    }
}
