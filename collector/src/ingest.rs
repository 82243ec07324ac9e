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
        let envelope = Envelope::from_json(body).map_err(|source| Error::Report { source })?;
        let key = self.signing_key(&envelope)?;
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
        let accepted = Accepted {
            device_id: report.device_id.clone(),
            sequence: report.sequence,
        };
        self.store.insert_report(&StoredReport {
            report,
            envelope,
            received_at,
        })?;
        Ok(accepted)
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
