//! [`Ingest`]: from the bytes a device sent to a stored report, or a refusal naming why.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ota_report::{DeviceId, Envelope};
use serde::Serialize;

use crate::store::{EnrolledDevice, Store, StoredReport};
use crate::{Error, Result};

/// Takes in reports for one store.
#[derive(Clone)]
pub struct Ingest {
    store: Arc<dyn Store>,
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
        Ingest { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Parses `body` (the exact bytes received, already bounded by the caller), finds the enrolled key
    /// its signature names, verifies the signature over those bytes and stores the report; any refusal
    /// stores nothing. Blocking (signature check and database): call it off the async runtime.
    pub fn accept(&self, body: &[u8], received_at: DateTime<Utc>) -> Result<Accepted> {
        let envelope = Envelope::from_json(body).map_err(|source| Error::Report { source })?;
        let device = self.signing_device(&envelope)?;
        if device.revoked_at.is_some() {
            return Err(Error::Revoked {
                device: device.device_id,
            });
        }
        let report = envelope
            .verify(&device.key)
            .map_err(|source| Error::Report { source })?;
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

    /// The enrolled device the first signature whose `keyid` names one belongs to. The key id is only
    /// a hint: the signature is verified with the key enrolled under it.
    fn signing_device(&self, envelope: &Envelope) -> Result<EnrolledDevice> {
        for sig in envelope.signatures() {
            let Ok(id) = DeviceId::try_from(sig.keyid.clone()) else {
                continue;
            };
            if let Some(device) = self.store.device(&id)? {
                return Ok(device);
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
}
