//! [`Ingest`]: from the bytes a device sent to a stored report, or a refusal naming why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use ota_report::{DeviceId, Envelope, PublicKey};
use serde::Serialize;

use crate::store::{EnrolledDevice, Store, StoredReport};
use crate::{Error, Result};

/// The most enrolled keys kept decoded in memory; past it the cache starts over.
const MAX_CACHED_KEYS: usize = 100_000;

/// Takes in reports for one store.
#[derive(Clone)]
pub struct Ingest {
    store: Arc<dyn Store>,
    /// Enrolled keys already read and decoded (decoding an ed25519 key costs about as much as half a
    /// verification). Safe to keep past a revocation: the store re-checks revocation in the report's own
    /// transaction, and a device's key never changes (enrolling another key is refused).
    keys: Arc<Mutex<HashMap<DeviceId, PublicKey>>>,
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    /// The device that sent it.
    pub device_id: DeviceId,
    /// Its sequence number (the device may drop the report from its queue).
    pub sequence: u64,
}

impl Accepted {
    /// What storing `stored` accepts.
    pub fn of(stored: &StoredReport) -> Accepted {
        Accepted {
            device_id: stored.report.device_id.clone(),
            sequence: stored.report.sequence,
        }
    }
}

/// The peer check and the signature check of `envelope` (parsed from `body`) with `key`.
fn verified(
    envelope: Envelope,
    key: PublicKey,
    body: &[u8],
    received_at: DateTime<Utc>,
    peer: Option<&PublicKey>,
) -> Result<StoredReport> {
    if let Some(peer) = peer.filter(|peer| **peer != key) {
        return Err(Error::WrongPeer {
            peer: peer.device_id(),
            signer: key.device_id(),
        });
    }
    let report = envelope.verify(&key).map_err(|source| Error::Report { source })?;
    // from_json parsed the body as JSON, so it is UTF-8; kept as text for a portable column.
    let envelope = String::from_utf8(body.to_vec()).map_err(|e| Error::BodyIncomplete {
        why: format!("not UTF-8 ({e})"),
    })?;
    Ok(StoredReport {
        report,
        envelope,
        received_at,
    })
}

impl Ingest {
    /// Takes in reports into `store`.
    pub fn new(store: Arc<dyn Store>) -> Ingest {
        Ingest {
            store,
            keys: Arc::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Parses `body` (the exact bytes received, already bounded by the caller), finds the enrolled key
    /// its signature names, verifies the signature over those bytes and stores the report; any refusal
    /// stores nothing. Blocking (signature check and database): call it off the async runtime.
    pub fn accept(&self, body: &[u8], received_at: DateTime<Utc>) -> Result<Accepted> {
        self.accept_from(body, received_at, None)
    }

    /// [`Ingest::accept`] for a report that came over mutual TLS from the device whose key is `peer`:
    /// a report signed by any other device is refused ([`Error::WrongPeer`]) before its signature is
    /// checked. `None`: no TLS peer (plain HTTP), as [`Ingest::accept`].
    pub fn accept_from(
        &self,
        body: &[u8],
        received_at: DateTime<Utc>,
        peer: Option<&PublicKey>,
    ) -> Result<Accepted> {
        let stored = self.verify(body, received_at, peer)?;
        let accepted = Accepted::of(&stored);
        self.store.insert_report(&stored)?;
        Ok(accepted)
    }

    /// The first half of [`Ingest::accept_from`]: parses `body`, finds the enrolled key its signature
    /// names (reading the store when that key is not in memory yet: blocking), refuses another device
    /// than `peer` and verifies the signature. The report is not stored yet.
    pub fn verify(
        &self,
        body: &[u8],
        received_at: DateTime<Utc>,
        peer: Option<&PublicKey>,
    ) -> Result<StoredReport> {
        let envelope = Envelope::from_json(body).map_err(|source| Error::Report { source })?;
        let key = self.signing_key(&envelope)?;
        verified(envelope, key, body, received_at, peer)
    }

    /// [`Ingest::verify`] when the signing key is already in memory: no store read, so it does not
    /// block (an async worker may call it). `None` when the key is not in memory: call
    /// [`Ingest::verify`] off the async runtime instead, which decides exactly as it always does.
    pub fn verify_cached(
        &self,
        body: &[u8],
        received_at: DateTime<Utc>,
        peer: Option<&PublicKey>,
    ) -> Option<Result<StoredReport>> {
        let envelope = match Envelope::from_json(body) {
            Ok(envelope) => envelope,
            Err(source) => return Some(Err(Error::Report { source })),
        };
        // The key Ingest::verify would pick: the first signature whose keyid is a device id.
        let id = envelope
            .signatures()
            .iter()
            .find_map(|sig| DeviceId::try_from(sig.keyid.clone()).ok())?;
        let key = self.cached_key(&id)?;
        Some(verified(envelope, key, body, received_at, peer))
    }

    /// The enrolled key of the first signature whose `keyid` names an enrolled device, refused when that
    /// device is revoked. The key id is only a hint: the signature is verified with the key enrolled
    /// under it.
    fn signing_key(&self, envelope: &Envelope) -> Result<PublicKey> {
        for sig in envelope.signatures() {
            let Ok(id) = DeviceId::try_from(sig.keyid.clone()) else {
                continue;
            };
            if let Some(key) = self.cached_key(&id) {
                return Ok(key);
            }
            if let Some(device) = self.store.device(&id)? {
                return self.remember(device);
            }
        }
        let key_ids: Vec<String> = envelope
            .signatures()
            .iter()
            .map(|s| format!("{:?}", s.keyid))
            .collect();
        Err(Error::UnknownDevice {
            key_ids: key_ids.join(", "),
        })
    }

    fn cached_key(&self, id: &DeviceId) -> Option<PublicKey> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.get(id).cloned()
    }

    /// Keeps an enrolled device's key for next time; a revoked device is refused here (and not kept).
    fn remember(&self, device: EnrolledDevice) -> Result<PublicKey> {
        if device.revoked_at.is_some() {
            return Err(Error::Revoked {
                device: device.device_id,
            });
        }
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(device.device_id, device.key.clone());
        Ok(device.key)
    }
}
