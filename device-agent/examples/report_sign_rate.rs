//! Benchmark helper for `scripts/bench-pkcs11.sh`: device reports signed per second by the agent's
//! identity, through each identity given: a key file (ed25519, in process) or a key in a PKCS#11
//! token (`[identity]`, signed by the token). Each signs N report envelopes (DSSE, as the agent queues
//! them: PAE bytes signed, then the signature checked in pure Rust) after one warm-up.
//!
//! usage: report_sign_rate N KEY_FILE MODULE PIN_FILE PKCS11_URI...
//! Prints one line per identity: its name, signatures per second, microseconds per signature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::time::Instant;

use chrono::TimeZone as _;
use device_agent::config::IdentityConfig;
use device_agent::identity::{FileIdentity, IdentityKey};
use device_agent::report::IdentitySigner;
use device_agent::token_identity::TokenIdentity;
use ota_report::{Channel, Envelope, HardwareId, InstallMethod, Outcome, Reason, Report, TargetName};

fn report(device: &dyn IdentityKey) -> Report {
    Report {
        schema: ota_report::SCHEMA_VERSION,
        device_id: device.device_id().try_into().unwrap(),
        sequence: 1,
        hardware: HardwareId::new("board-a").unwrap(),
        channel: Channel::new("stable").unwrap(),
        from_version: ota_report::Version::new(1, 0, 0),
        to_version: ota_report::Version::new(2, 0, 0),
        target: TargetName::new("board-a/stable/fw-2.0.0.bin").unwrap(),
        outcome: Outcome::Committed,
        reason: Reason::new("").unwrap(),
        started: chrono::Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap(),
        finished: chrono::Utc.with_ymd_and_hms(2026, 12, 7, 9, 3, 0).unwrap(),
        bytes_downloaded: 4096,
        install_method: Some(InstallMethod::Full),
        reports_dropped: 0,
    }
}

fn measure(name: &str, identity: &dyn IdentityKey, n: u32) {
    let report = report(identity);
    let signer = IdentitySigner(identity);
    Envelope::sign(&report, &signer).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        Envelope::sign(&report, &signer).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name}\t{:.0}\t{:.0}",
        f64::from(n) / secs,
        secs * 1e6 / f64::from(n)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args[1].parse().unwrap();
    let (file_key, _) = FileIdentity::create_or_load(&PathBuf::from(&args[2])).unwrap();
    measure(&args[2], &file_key, n);
    for uri in &args[5..] {
        let config = IdentityConfig {
            key: uri.clone(),
            module: Some(PathBuf::from(&args[3])),
            pin_file: Some(PathBuf::from(&args[4])),
            algorithm: if uri.contains("ed25519") {
                "ed25519".into()
            } else {
                "ecdsa-p256".into()
            },
        };
        let (token_key, _) = TokenIdentity::create_or_open(&config).unwrap();
        measure(uri, &token_key, n);
    }
}
