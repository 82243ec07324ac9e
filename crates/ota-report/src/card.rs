//! The device card: what a device's onboarding QR code carries (`device-agent identity` prints it, the
//! collector's `enroll` reads it), the device's side of QR onboarding, the pinned root fingerprint
//! being the other.
//!
//! Format, version 1 (one line of ASCII, URI-like so a phone's scanner shows it as one token):
//!
//! ```text
//! ota-device:v1?id=dev-0123456789abcdef&key=ed25519:<64 hex digits>
//! ```
//!
//! `key` is the algorithm and the public key's bytes in lowercase hex ([`PublicKey::algorithm`],
//! [`PublicKey::to_bytes`]: `ed25519` or `ecdsa-p256`); `id` is that key's [`DeviceId`], repeated so a
//! person can match the label to the device, and checked against the key on reading (a mixed-up or
//! mistyped card is refused). A reader refuses another version, a missing or repeated field and any
//! unknown field: a later version that adds fields says so by its number.

use crate::{DeviceId, Error, PublicKey, Result};

/// The scheme and version prefix of a version 1 card.
pub const DEVICE_CARD_PREFIX: &str = "ota-device:v1?";
/// The longest card text read (a P-256 key's card is under 200 bytes).
pub const MAX_DEVICE_CARD_BYTES: usize = 512;

/// A device's public identity as its QR code carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCard {
    key: PublicKey,
}

impl DeviceCard {
    /// The card of the device holding `key`.
    pub fn new(key: PublicKey) -> DeviceCard {
        DeviceCard { key }
    }

    /// The device's public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The device's id.
    pub fn device_id(&self) -> DeviceId {
        self.key.device_id()
    }

    /// The card as text: what the QR code encodes.
    pub fn to_text(&self) -> String {
        format!(
            "{DEVICE_CARD_PREFIX}id={}&key={}:{}",
            self.device_id(),
            self.key.algorithm(),
            hex::encode(self.key.to_bytes())
        )
    }

    /// Reads a card (surrounding whitespace ignored), refusing any other version, a malformed or
    /// unknown field, a key that is not one, and an `id` that is not the key's.
    pub fn parse(text: &str) -> Result<DeviceCard> {
        let bad = |why: String| Error::Invalid {
            field: "device card",
            why,
        };
        let text = text.trim();
        if text.len() > MAX_DEVICE_CARD_BYTES {
            return Err(Error::TooLarge {
                what: "device card",
                got: text.len(),
                limit: MAX_DEVICE_CARD_BYTES,
            });
        }
        let query = text.strip_prefix(DEVICE_CARD_PREFIX).ok_or_else(|| {
            bad(format!(
                "{text:?} does not start with {DEVICE_CARD_PREFIX:?} (another version or not a card)"
            ))
        })?;
        let (mut id, mut key) = (None, None);
        for field in query.split('&') {
            let (name, value) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("field {field:?} is not name=value")))?;
            let slot = match name {
                "id" => &mut id,
                "key" => &mut key,
                other => return Err(bad(format!("unknown field {other:?}"))),
            };
            if slot.replace(value).is_some() {
                return Err(bad(format!("field {name:?} given twice")));
            }
        }
        let (Some(id), Some(key)) = (id, key) else {
            return Err(bad("needs both id and key".into()));
        };
        let (algorithm, digits) = key
            .split_once(':')
            .ok_or_else(|| bad(format!("key {key:?} is not algorithm:hex")))?;
        let bytes = hex::decode(digits).map_err(|e| bad(format!("key is not hex ({e})")))?;
        let key = PublicKey::from_parts(algorithm, &bytes)?;
        let claimed = DeviceId::try_from(id.to_string())?;
        if claimed != key.device_id() {
            return Err(bad(format!(
                "it says device {claimed}, but its key is device {}",
                key.device_id()
            )));
        }
        Ok(DeviceCard { key })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn card() -> DeviceCard {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key();
        DeviceCard::new(PublicKey::ed25519(key.as_bytes()).unwrap())
    }

    #[test]
    fn round_trips_and_reads_as_printed() {
        let c = card();
        let text = c.to_text();
        assert!(text.starts_with("ota-device:v1?id=dev-"), "{text}");
        assert!(text.contains("&key=ed25519:"), "{text}");
        assert_eq!(DeviceCard::parse(&format!("  {text}\n")).unwrap(), c);
        let p256 = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let p =
            DeviceCard::new(PublicKey::ecdsa_p256(p256.verifying_key().to_sec1_bytes().as_ref()).unwrap());
        assert_eq!(DeviceCard::parse(&p.to_text()).unwrap(), p);
    }

    #[test]
    fn refuses_other_versions_unknown_fields_and_a_mismatched_id() {
        let text = card().to_text();
        let cases = [
            (text.replace("v1?", "v2?"), "another version"),
            (format!("{text}&name=x"), "unknown field"),
            (format!("{text}&id=dev-0000000000000000"), "twice"),
            (text.replacen("id=dev-", "id=dev-0", 1), "16 lowercase hex"),
            (
                text.replace(&card().device_id().to_string(), "dev-0000000000000000"),
                "but its key is device",
            ),
            (text.replace("ed25519:", "rsa:"), "key algorithm"),
            (text.split("&key").next().unwrap().to_string(), "needs both"),
        ];
        for (bad, needle) in cases {
            let err = DeviceCard::parse(&bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert!(matches!(
            DeviceCard::parse(&"x".repeat(600)),
            Err(Error::TooLarge { .. })
        ));
    }
}
