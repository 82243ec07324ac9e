//! Issue 16, onboarding by QR code: `device-agent identity` prints the device id, the key's fingerprint
//! and the device card as a QR code, and writes it as PNG and SVG for a label printer; a real QR decoder
//! (zbar's `zbarimg`, Debian `zbar-tools`) reads the card back from the files, and the real
//! `collector enroll` takes what it read, the card as printed, and the whole printed text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use ota_e2e::{collector_binary, firmware, text, SimDevice, TestRepo};

/// What zbarimg decodes from `image` (one QR code, its text only).
fn zbar(image: &std::path::Path) -> String {
    let zbarimg = ota_testbed::require_program("zbarimg", "zbar-tools");
    let out = Command::new(zbarimg)
        .args(["--quiet", "--raw", "-Sdisable", "-Sqrcode.enable"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zbarimg {}: {}",
        image.display(),
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

/// `collector enroll --db DB ARGS...`: its stdout, asserting success.
fn enroll(db: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(collector_binary())
        .args(["enroll", "--db", db.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_identity_qr_code_decodes_to_the_card_that_enroll_takes() {
    let repo = TestRepo::new();
    let dev = SimDevice::new(&repo, "1.0.0", &firmware("1.0.0", 4096), 1 << 16, "");
    let (png, svg) = (dev.dir().join("label.png"), dev.dir().join("label.svg"));
    let out = dev.agent(&[
        "identity",
        "--png",
        png.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} line in {printed}"))
    };
    let (id, card, fingerprint) = (field("device id"), field("card"), field("fingerprint"));
    assert_eq!(dev.status()["device_id"], id.as_str());
    assert!(
        card.starts_with(&format!("ota-device:v1?id={id}&key=ed25519:")),
        "{card}"
    );
    assert!(
        fingerprint.starts_with(&format!("sha256:{}", &id[4..])),
        "{fingerprint}"
    );
    assert!(printed.contains('█'), "a QR code in the terminal: {printed}");

    assert_eq!(zbar(&png), card, "the PNG label decodes to the card");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg_text.starts_with("<?xml") && svg_text.contains("<svg"),
        "{svg_text}"
    );

    // The decoded text, the card line and the whole printed text all enrol the same device.
    let dir = tempfile::tempdir().unwrap();
    let decoded = zbar(&png);
    assert_eq!(
        enroll(&dir.path().join("a.db"), &["--key", &decoded]),
        format!("enrolled {id} (ed25519)\n")
    );
    let whole = dir.path().join("identity.txt");
    std::fs::write(&whole, &printed).unwrap();
    assert_eq!(
        enroll(&dir.path().join("b.db"), &["--key-file", whole.to_str().unwrap()]),
        format!("enrolled {id} (ed25519)\n")
    );
    assert_eq!(
        enroll(&dir.path().join("a.db"), &["--key", &card]),
        format!("already enrolled {id} (ed25519)\n")
    );
}
