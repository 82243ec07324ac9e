//! The root fingerprint as a QR code for the terminal (unicode half blocks), so a factory line can
//! scan the pinned root of trust instead of typing 64 hex digits.

use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

use crate::error::{Error, Result};

/// Renders `text` as a QR code of unicode half blocks (two modules per character cell), with a quiet
/// zone, light on dark so it scans on a dark terminal too.
pub fn qr_for_terminal(text: &str) -> Result<String> {
    let code = QrCode::new(text.as_bytes()).map_err(|e| Error::InvalidInput {
        what: "QR code text".into(),
        why: e.to_string(),
    })?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_half_blocks() {
        let s = super::qr_for_terminal(&"ab".repeat(32)).unwrap();
        assert!(s.lines().count() > 10);
        assert!(s.contains('▀') || s.contains('▄') || s.contains('█'));
    }
}
