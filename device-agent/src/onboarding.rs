//! The device's side of QR onboarding (`device-agent identity`): its [`DeviceCard`] (device id and
//! public key, versioned: the format is in `ota_report::DeviceCard`), the key's fingerprint, and the
//! card as a QR code for the terminal, and as SVG or PNG files for a label printer. The owner scans
//! it and hands the text to the collector's `enroll`; the pinned root fingerprint (`repo-tool init`'s
//! QR code) is the other half.

use ota_report::DeviceCard;
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, EcLevel, QrCode};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::identity::IdentityKey;

/// Pixels per QR module in the PNG (a 41-module code with its quiet zone is 392 px square: sharp on a
/// 203 dpi label printer at about 5 cm).
const PNG_MODULE_PX: usize = 8;
/// The quiet zone the QR specification asks for, in modules, on each side.
const QUIET_ZONE: usize = 4;

/// The identity's card.
pub fn card_of(identity: &dyn IdentityKey) -> Result<DeviceCard> {
    Ok(DeviceCard::new(identity.public_key()))
}

/// The public key's fingerprint: `sha256:` and the sha256 of its bytes, hex (the device id is `dev-`
/// and its first 16 digits).
pub fn fingerprint(card: &DeviceCard) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(card.key().to_bytes())))
}

/// A card's QR code (error correction level M: a label may get scratched).
pub struct CardQr {
    code: QrCode,
}

impl CardQr {
    /// The QR code of `card`'s text.
    pub fn new(card: &DeviceCard) -> Result<CardQr> {
        let code =
            QrCode::with_error_correction_level(card.to_text().as_bytes(), EcLevel::M).map_err(|e| {
                Error::Onboarding {
                    why: format!("cannot encode the card as a QR code: {e}"),
                }
            })?;
        Ok(CardQr { code })
    }

    /// Unicode half blocks (two modules per character cell) with a quiet zone, light on dark so it
    /// scans from a dark terminal too.
    pub fn to_terminal(&self) -> String {
        self.code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build()
    }

    /// An SVG document (dark modules on white, quiet zone included).
    pub fn to_svg(&self) -> String {
        self.code
            .render::<qrcode::render::svg::Color<'_>>()
            .quiet_zone(true)
            .min_dimensions(256, 256)
            .build()
    }

    /// A grayscale PNG, [`PNG_MODULE_PX`] pixels per module, quiet zone included.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let width = self.code.width();
        let side = (width + 2 * QUIET_ZONE) * PNG_MODULE_PX;
        let mut pixels = vec![0xffu8; side * side];
        let modules = self.code.to_colors();
        for (y, row) in modules.chunks(width).enumerate() {
            for (x, _) in row.iter().enumerate().filter(|(_, c)| **c == Color::Dark) {
                paint_module(&mut pixels, side, x + QUIET_ZONE, y + QUIET_ZONE);
            }
        }
        let bad = |e: png::EncodingError| Error::Onboarding {
            why: format!("cannot encode the PNG: {e}"),
        };
        let side = u32::try_from(side).map_err(|_| Error::Onboarding {
            why: "the QR code is too large for a PNG".into(),
        })?;
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(bad)?;
        writer.write_image_data(&pixels).map_err(bad)?;
        writer.finish().map_err(bad)?;
        Ok(out)
    }
}

/// Blackens module (`mx`, `my`) of a `side`-pixel square image.
fn paint_module(pixels: &mut [u8], side: usize, mx: usize, my: usize) {
    for py in my * PNG_MODULE_PX..(my + 1) * PNG_MODULE_PX {
        let start = py * side + mx * PNG_MODULE_PX;
        if let Some(run) = pixels.get_mut(start..start + PNG_MODULE_PX) {
            run.fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_report::PublicKey;

    struct Fixed(ed25519_dalek::SigningKey);

    impl IdentityKey for Fixed {
        fn public_key(&self) -> PublicKey {
            PublicKey::Ed25519(self.0.verifying_key())
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
            use ed25519_dalek::Signer as _;
            Ok(self.0.sign(message).to_bytes().to_vec())
        }
    }

    #[test]
    fn the_card_names_the_identity_and_renders_three_ways() {
        let id = Fixed(ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
        let card = card_of(&id).unwrap();
        assert_eq!(card.device_id().as_str(), id.device_id());
        assert!(fingerprint(&card).starts_with(&format!("sha256:{}", &id.device_id()[4..])));
        let qr = CardQr::new(&card).unwrap();
        assert!(qr.to_terminal().contains('█'));
        assert!(qr.to_svg().starts_with("<?xml"));
        let png = qr.to_png().unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
