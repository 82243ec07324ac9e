//! What an operator enrols: a device's public key, in the forms a factory line or a device hands over.

use ota_report::{DeviceCard, DeviceId, PublicKey};

use crate::{Error, Result};

/// How a device card (the onboarding QR code's text) starts, whatever its version.
const DEVICE_CARD_SCHEME: &str = "ota-device:";

/// The longest key text accepted (the provision output is a few hundred bytes; `device-agent identity`
/// prints about 4 KiB, most of it the QR code in UTF-8 half blocks).
const MAX_KEY_TEXT: usize = 16 * 1024;

/// Reads a device's public key from `text`, which is one of:
/// - hex: 64 digits for an ed25519 key, 66 or 130 for a P-256 key (SEC1, compressed or not);
/// - `ed25519:<hex>` or `ecdsa-p256:<hex>`;
/// - what `device-agent provision` prints (the `public key` line is read, and the `device id` line,
///   when there is one, must be that key's id: a typo or a mixed-up device is caught at enrolment);
/// - a device card, what the device's onboarding QR code carries (`ota-device:v1?id=..&key=..`,
///   [`DeviceCard`]), alone or in what `device-agent identity` prints (its id is checked likewise).
pub fn parse_device_key(text: &str) -> Result<PublicKey> {
    if text.len() > MAX_KEY_TEXT {
        return Err(bad(format!(
            "{} bytes of text (at most {MAX_KEY_TEXT})",
            text.len()
        )));
    }
    let mut key_field = None;
    let mut claimed_id = None;
    let mut card = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(at) = line.find(DEVICE_CARD_SCHEME) {
            card = line.get(at..);
        } else if let Some(rest) = line.strip_prefix("public key") {
            key_field = Some(rest.trim());
        } else if let Some(rest) = line.strip_prefix("device id") {
            claimed_id = Some(rest.trim());
        }
    }
    let key = match card {
        Some(card) => DeviceCard::parse(card)
            .map_err(|e| bad(e.to_string()))?
            .key()
            .clone(),
        None => parse_key_field(key_field.unwrap_or(text.trim()))?,
    };
    if let Some(claimed) = claimed_id {
        let claimed = DeviceId::try_from(claimed.to_string()).map_err(|e| bad(e.to_string()))?;
        if claimed != key.device_id() {
            return Err(bad(format!(
                "the text says device id {claimed}, but its key is device {}",
                key.device_id()
            )));
        }
    }
    Ok(key)
}

fn parse_key_field(field: &str) -> Result<PublicKey> {
    let (algorithm, digits) = match field.split_once(':') {
        Some((alg, digits)) => (Some(alg.trim()), digits.trim()),
        None => (None, field),
    };
    let bytes = hex::decode(digits).map_err(|e| bad(format!("{digits:?} is not hex ({e})")))?;
    let algorithm = match (algorithm, bytes.len()) {
        (Some(alg), _) => alg,
        (None, 32) => "ed25519",
        (None, 33 | 65) => "ecdsa-p256",
        (None, n) => {
            return Err(bad(format!(
                "{n} bytes: an ed25519 key is 32, a P-256 key 33 or 65"
            )))
        }
    };
    PublicKey::from_parts(algorithm, &bytes).map_err(|e| bad(e.to_string()))
}

fn bad(why: String) -> Error {
    Error::KeyText { why }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> PublicKey {
        PublicKey::ed25519(
            ed25519_dalek::SigningKey::from_bytes(&[9; 32])
                .verifying_key()
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn reads_hex_prefixed_hex_and_provision_output() {
        let k = key();
        let hex = hex::encode(k.to_bytes());
        assert_eq!(parse_device_key(&hex).unwrap(), k);
        assert_eq!(parse_device_key(&format!("ed25519:{hex}\n")).unwrap(), k);
        let printed = format!(
            "device id     {}\npublic key    {hex}\nidentity      created\npinned root   abc\n",
            k.device_id()
        );
        assert_eq!(parse_device_key(&printed).unwrap(), k);
    }

    #[test]
    fn reads_a_device_card_alone_or_in_the_identity_output() {
        let k = key();
        let card = DeviceCard::new(k.clone()).to_text();
        assert_eq!(parse_device_key(&card).unwrap(), k);
        let printed = format!(
            "device id     {}\nfingerprint   sha256:00\ncard          {card}\n\u{2588}\u{2580} \u{2584}\n",
            k.device_id()
        );
        assert_eq!(parse_device_key(&printed).unwrap(), k);
        let wrong = printed.replacen(k.device_id().as_str(), "dev-0000000000000000", 1);
        assert!(parse_device_key(&wrong)
            .unwrap_err()
            .to_string()
            .contains("says device id"));
        let err = parse_device_key(&card.replace("v1?", "v9?"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a device key") && err.contains("v1"), "{err}");
    }

    #[test]
    fn refuses_a_mismatched_id_bad_hex_and_wrong_lengths() {
        let hex = hex::encode(key().to_bytes());
        let wrong = format!("device id dev-0000000000000000\npublic key {hex}\n");
        assert!(parse_device_key(&wrong)
            .unwrap_err()
            .to_string()
            .contains("says device id"));
        assert!(parse_device_key("zz").is_err());
        assert!(parse_device_key("abcd")
            .unwrap_err()
            .to_string()
            .contains("2 bytes"));
        assert!(parse_device_key(&format!("rsa:{hex}")).is_err());
    }
}
