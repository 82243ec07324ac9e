//! Issue 16, authenticated channels: mutual TLS from the device to the report collector. The real
//! `collector serve --tls-cert --tls-key` (rustls) and the device's own TLS client
//! (`device_agent::channels::CollectorTls`: the collector CA pinned at provisioning, the client
//! certificate self-signed by the identity key). An enrolled device's report is stored; a client
//! without a certificate, with an unknown key's certificate or a revoked one is turned away in the
//! handshake with the TLS alert that names the reason; a report signed by another device than the
//! connection's is refused; nothing refused is stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use device_agent::channels::{provision_channels, CollectorTls};
use device_agent::identity::{FileIdentity, IdentityKey, IDENTITY_FILE};
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use ota_e2e::collector::{assert_tls_refusal, client_without_certificate, post};
use ota_e2e::collector_binary;
use ota_report::{
    Channel, Envelope, HardwareId, InstallMethod, Outcome, Reason, Report, TargetName, Version,
};
use ota_testbed::spawn_listening;
use ota_testbed::tls::{TestCa, Validity};

/// A provisioned device: its state directory (identity key, pinned collector CA, client certificate).
struct Device {
    dir: tempfile::TempDir,
    identity: Arc<FileIdentity>,
}

impl Device {
    fn new(collector_ca: &Path) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = FileIdentity::create_or_load(&dir.path().join(IDENTITY_FILE)).unwrap();
        let done = provision_channels(dir.path(), &identity, None, Some(collector_ca)).unwrap();
        assert!(done.collector_ca && done.client_cert_created);
        Device {
            dir,
            identity: Arc::new(identity),
        }
    }

    fn id(&self) -> String {
        self.identity.device_id()
    }

    fn client(&self) -> reqwest::Client {
        CollectorTls::load(self.dir.path(), self.identity.clone())
            .unwrap()
            .http_client(Duration::from_secs(10))
            .unwrap()
    }

    /// A report signed by this device's identity key.
    fn report(&self, sequence: u64) -> Vec<u8> {
        let der = std::fs::read(self.dir.path().join(IDENTITY_FILE)).unwrap();
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(&der).unwrap();
        let report = Report {
            schema: ota_report::SCHEMA_VERSION,
            device_id: self.id().try_into().unwrap(),
            sequence,
            hardware: HardwareId::new("board-a").unwrap(),
            channel: Channel::new("stable").unwrap(),
            from_version: Version::new(1, 0, 0),
            to_version: Version::new(2, 0, 0),
            target: TargetName::new("board-a/stable/fw-2.0.0.bin").unwrap(),
            outcome: Outcome::Committed,
            reason: Reason::new("").unwrap(),
            started: Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap(),
            finished: Utc.with_ymd_and_hms(2026, 12, 7, 9, 3, 0).unwrap(),
            bytes_downloaded: 4096,
            install_method: Some(InstallMethod::Full),
            reports_dropped: 0,
        };
        Envelope::sign(&report, &key).unwrap().to_json()
    }
}

/// `collector serve` over mutual TLS, killed on drop.
struct Collector {
    child: Child,
    url: String,
}

impl Collector {
    fn start(db: &Path, cert: &Path, key: &Path) -> Collector {
        let (child, addr) = spawn_listening(
            Command::new(collector_binary())
                .args(["serve", "--db", db.to_str().unwrap(), "--listen", "127.0.0.1:0"])
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key),
        );
        Collector {
            child,
            url: format!("https://{addr}/v1/reports"),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn collector(args: &[&str]) -> String {
    let out = Command::new(collector_binary()).args(args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn enroll(db: &str, device: &Device) {
    let key = device.identity.public_key_hex();
    collector(&["enroll", "--db", db, "--key", &key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_enrolled_unrevoked_devices_speak_and_only_for_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ota test collector CA");
    let server = ca.issue(&["127.0.0.1"], Validity::Current);
    let (ca_path, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("c.pem"),
        dir.path().join("k.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let db = dir.path().join("fleet.db");
    let db_arg = db.to_str().unwrap();

    let [enrolled, other, unknown, revoked] = [(); 4].map(|()| Device::new(&ca_path));
    for d in [&enrolled, &other, &revoked] {
        enroll(db_arg, d);
    }
    collector(&["revoke", "--db", db_arg, "--device", &revoked.id()]);
    let server = Collector::start(&db, &cert, &key);

    let (status, body) = post(&enrolled.client(), &server.url, enrolled.report(1))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    // Another enrolled device's report, sent over this device's connection.
    let (status, body) = post(&enrolled.client(), &server.url, other.report(1))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("wrong_peer") && body.contains(&other.id()),
        "{body}"
    );

    // No client certificate: the pinned CA alone.
    let bare = || client_without_certificate(ca.pem());
    assert_tls_refusal(&bare, &server.url, enrolled.report(2), "CertificateRequired").await;
    assert_tls_refusal(&|| unknown.client(), &server.url, unknown.report(1), "UnknownCA").await;
    assert_tls_refusal(
        &|| revoked.client(),
        &server.url,
        revoked.report(1),
        "CertificateRevoked",
    )
    .await;

    drop(server);
    let summary: serde_json::Value =
        serde_json::from_str(&collector(&["summary", "--db", db_arg, "--json"])).unwrap();
    let releases = summary["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1, "{summary}");
    assert_eq!(
        releases[0]["devices"], 1,
        "only the enrolled device's report: {summary}"
    );
    assert_eq!(releases[0]["committed"], 1, "{summary}");
}
