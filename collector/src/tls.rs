//! Mutual TLS: the collector serves HTTPS and requires a client certificate whose public key is an
//! enrolled, unrevoked device, so it knows which device speaks from the handshake, before it reads a
//! byte of the request.
//!
//! Devices have no CA of their own: each presents a certificate self-signed by its identity key (made
//! at provisioning). What vouches for it is the enrolment, not an issuer: [`DeviceCertVerifier`] looks
//! the certificate's key up in the [`Store`] and refuses, with the TLS alert that names the reason, a
//! client without a certificate (`certificate_required`), with an unknown key (`unknown_ca`: no
//! enrolment vouches for it) or a revoked one (`certificate_revoked`). The handshake's own signature
//! (TLS 1.3 CertificateVerify) proves the client holds that key. The certificate's dates are not
//! checked: a device's clock may be unset, and what is trusted is the key.
//!
//! A report on such a connection must then be signed by that same device ([`crate::Error::WrongPeer`]).
//! Crypto provider: rustls' `ring` (no aws-lc).

use std::path::Path;
use std::sync::Arc;

use ota_report::{DeviceId, PublicKey};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{Error, Result, Store};

/// The DER SubjectPublicKeyInfo of an ed25519 key, before its 32 bytes (RFC 8410).
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The DER SubjectPublicKeyInfo of an uncompressed P-256 key, before its 65 bytes (RFC 5480).
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Largest certificate or key file read.
const MAX_PEM_FILE: u64 = 256 * 1024;

/// The device a TLS client certificate names: the public key of its SubjectPublicKeyInfo (ed25519 or
/// P-256), parsed by webpki. `None` for a certificate that does not parse or carries another kind of key.
pub fn certificate_key(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let spki: &[u8] = spki.as_ref();
    if let Some(key) = spki.strip_prefix(ED25519_SPKI_PREFIX) {
        return PublicKey::ed25519(key).ok();
    }
    spki.strip_prefix(P256_SPKI_PREFIX)
        .and_then(|key| PublicKey::ecdsa_p256(key).ok())
}

/// The server's TLS configuration: its certificate chain and key (PEM files), and client certificates
/// checked against `store`'s enrolment.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    store: Arc<dyn Store>,
) -> Result<rustls::ServerConfig> {
    let cert_pem = read_pem_file(cert_path)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_file(cert_path, format!("not PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad_file(cert_path, "no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read_pem_file(key_path)?)
        .map_err(|e| bad_file(key_path, format!("no PEM private key in it ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = DeviceCertVerifier {
        store,
        algorithms: provider.signature_verification_algorithms,
    };
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_client_cert_verifier(Arc::new(verifier))
                .with_single_cert(certs, key)
        })
        .map_err(|e| Error::Tls {
            what: format!("{} and {}", cert_path.display(), key_path.display()),
            why: e.to_string(),
        })
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE).read_to_end(&mut bytes))
        .map_err(|source| Error::Io {
            action: "read",
            what: path.display().to_string(),
            source,
        })?;
    Ok(bytes)
}

fn bad_file(path: &Path, why: String) -> Error {
    Error::Tls {
        what: path.display().to_string(),
        why,
    }
}

/// Accepts a client certificate when its key is an enrolled, unrevoked device (see the module doc).
pub struct DeviceCertVerifier {
    store: Arc<dyn Store>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for DeviceCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCertVerifier").finish_non_exhaustive()
    }
}

impl DeviceCertVerifier {
    /// The enrolment check of a certificate's key, as a TLS certificate error (whose alert the client
    /// sees), logged with the device id so the operator sees who was turned away.
    fn check_enrolled(&self, key: &PublicKey) -> std::result::Result<(), CertificateError> {
        let id: DeviceId = key.device_id();
        match self.store.device(&id) {
            Ok(Some(device)) if device.key != *key => {
                tracing::info!("TLS client refused: {id}'s certificate carries another key than enrolled");
                Err(CertificateError::UnknownIssuer)
            }
            Ok(Some(device)) if device.revoked_at.is_some() => {
                tracing::info!("TLS client refused: device {id} is revoked");
                Err(CertificateError::Revoked)
            }
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                tracing::info!("TLS client refused: device {id} is not enrolled");
                Err(CertificateError::UnknownIssuer)
            }
            Err(e) => {
                tracing::error!(
                    "TLS client {id}: cannot read its enrolment: {}",
                    crate::http::chain(&e)
                );
                Err(CertificateError::ApplicationVerificationFailure)
            }
        }
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA: devices send their one certificate whatever the hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let Some(key) = certificate_key(end_entity) else {
            tracing::info!("TLS client refused: its certificate carries no ed25519 or P-256 key");
            return Err(CertificateError::BadEncoding.into());
        };
        self.check_enrolled(&key)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
