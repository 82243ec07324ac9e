//! Issue 16, device identity in hardware: the real `device-agent` binary with its identity key in a
//! SoftHSM2 token (`[identity]` in its config). `provision` generates the key in the token and records
//! only its public key; the device's update report is signed by the token and sent over mutual TLS to
//! the real `collector serve --tls-cert` (rustls), the handshake signed by the token too; the report is
//! stored, and a client without a certificate is turned away. A token that is missing, refuses the PIN,
//! or a PIN that is a default or readable by others stops the agent with a message that says which.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use ota_e2e::collector::{assert_tls_refusal, client_without_certificate};
use ota_e2e::{collector_binary, firmware, text, SimDevice, TestRepo};
use ota_testbed::tls::{TestCa, Validity};
use ota_testbed::{spawn_listening, SoftHsm};

const SLOT_LEN: u64 = 1 << 20;
const USER_PIN: &str = "k7-Rq2vw-device";

/// A device on 1.0.0 whose identity is key `object` in token `token` of `hsm` (`algorithm`), not
/// provisioned yet.
fn token_device(repo: &TestRepo, hsm: &SoftHsm, token: &str, algorithm: &str) -> SimDevice {
    hsm.init_token(token, "so-pin-for-tests", USER_PIN);
    let mut dev = SimDevice::unprovisioned(&repo.url(), &firmware("1.0.0", 100_000), SLOT_LEN, "");
    let pin = hsm.pin_file(&format!("{token}.pin"), USER_PIN, 0o600);
    let identity = format!(
        "\n[identity]\nkey = \"pkcs11:token={token};object=device-identity\"\nmodule = \"{}\"\n\
         pin_file = \"{}\"\nalgorithm = \"{algorithm}\"\n",
        SoftHsm::module().display(),
        pin.display()
    );
    append(&dev.config(), &identity);
    let (name, value) = hsm.env();
    dev.env.push((name.into(), value.to_owned()));
    dev
}

fn append(path: &Path, text: &str) {
    let mut toml = std::fs::read_to_string(path).unwrap();
    toml.push_str(text);
    std::fs::write(path, toml).unwrap();
}

fn provision(dev: &mut SimDevice, repo: &TestRepo, extra: &[&str]) {
    let len = firmware("1.0.0", 100_000).len().to_string();
    let out = dev.provision(&repo.root_json(), repo.fingerprint(), "1.0.0", &len, extra);
    assert!(out.status.success(), "provision: {}", text(&out));
    dev.provisioned = String::from_utf8_lossy(&out.stdout).into_owned();
}

/// `collector serve` over mutual TLS on a port of its own, killed on drop.
struct TlsCollector {
    child: Child,
    url: String,
}

impl Drop for TlsCollector {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn collector(args: &[&str]) -> String {
    let out = Command::new(collector_binary()).args(args).output().unwrap();
    assert!(out.status.success(), "collector {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The collector's CA and server certificate, written to `dir`: (ca.pem, cert.pem, key.pem).
fn collector_certs(dir: &Path) -> (TestCa, [PathBuf; 3]) {
    let ca = TestCa::new("ota test collector CA");
    let server = ca.issue(&["127.0.0.1"], Validity::Current);
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|n| dir.join(n));
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], &server.cert_pem).unwrap();
    std::fs::write(&paths[2], &server.key_pem).unwrap();
    (ca, paths)
}

#[test]
fn a_token_held_p256_identity_signs_reports_and_the_mtls_handshake() {
    let repo = TestRepo::new();
    let hsm = SoftHsm::new();
    let scratch = tempfile::tempdir().unwrap();
    let (ca, [ca_pem, cert_pem, key_pem]) = collector_certs(scratch.path());
    let mut dev = token_device(&repo, &hsm, "device-1", "ecdsa-p256");
    provision(&mut dev, &repo, &["--collector-ca", ca_pem.to_str().unwrap()]);

    // The key was made in the token: no key file, only the recorded public key (a P-256 point).
    let state = dev.dir().join("state");
    assert!(!state.join("identity.pk8").exists());
    let recorded = std::fs::read_to_string(state.join("identity.pub")).unwrap();
    assert!(recorded.starts_with("ecdsa-p256:"), "{recorded}");
    let public = dev.public_key();
    assert_eq!(public.len(), 66, "a compressed P-256 point: {}", dev.provisioned);
    assert!(
        dev.provisioned.contains("identity      created"),
        "{}",
        dev.provisioned
    );
    // Provisioning again keeps the key in the token.
    provision(&mut dev, &repo, &[]);
    assert!(dev.provisioned.contains("kept"), "{}", dev.provisioned);
    assert_eq!(dev.public_key(), public);

    // The QR card names the P-256 key; the collector enrols what it carries.
    let identity = text(&dev.agent(&["identity"]));
    let card = identity
        .lines()
        .find_map(|l| l.strip_prefix("card"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(card.contains("&key=ecdsa-p256:"), "{identity}");
    let db = scratch.path().join("fleet.db");
    let db_arg = db.to_str().unwrap();
    collector(&["enroll", "--db", db_arg, "--key", &card]);

    let (child, addr) = spawn_listening(
        Command::new(collector_binary())
            .args(["serve", "--db", db_arg, "--listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(&cert_pem)
            .arg("--tls-key")
            .arg(&key_pem),
    );
    let server = TlsCollector {
        child,
        url: format!("https://{addr}"),
    };
    append(
        &dev.config(),
        &format!(
            "\n[report]\ncollector_url = \"{}\"\nconnect_timeout_secs = 2\ntimeout_secs = 5\n\
             retry_secs = 1\nretry_max_secs = 2\n",
            server.url
        ),
    );

    repo.publish("2.0.0", &firmware("2.0.0", 200_000));
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success() && reboots > 0, "{}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    let q = &s["reports"];
    assert_eq!(
        (q["count"].as_u64(), q["delivered"].as_u64()),
        (Some(0), Some(1)),
        "the report went over mutual TLS: {q}\n{}",
        text(&out)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&collector(&["summary", "--db", db_arg, "--json"])).unwrap();
    let release = &summary["releases"][0];
    assert_eq!(
        (release["to_version"].as_str(), release["committed"].as_u64()),
        (Some("2.0.0"), Some(1)),
        "{summary}"
    );

    // The same server refuses a client that shows no certificate, before any request is read.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare = || client_without_certificate(ca.pem());
    let url = format!("{}/v1/reports", server.url);
    runtime.block_on(assert_tls_refusal(
        &bare,
        &url,
        b"{}".to_vec(),
        "CertificateRequired",
    ));
}

#[test]
fn an_ed25519_identity_in_a_token_provisions_and_runs() {
    let repo = TestRepo::new();
    let hsm = SoftHsm::new();
    let mut dev = token_device(&repo, &hsm, "device-ed", "ed25519");
    provision(&mut dev, &repo, &[]);
    assert_eq!(dev.public_key().len(), 64, "{}", dev.provisioned);
    let recorded = std::fs::read_to_string(dev.dir().join("state/identity.pub")).unwrap();
    assert!(recorded.starts_with("ed25519:"), "{recorded}");
    repo.publish("2.0.0", &firmware("2.0.0", 200_000));
    let (out, _) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dev.status()["state_name"], "committed");
}

/// Replaces `from` with `to` in the device's config.
fn edit_config(dev: &SimDevice, from: &str, to: &str) {
    let toml = std::fs::read_to_string(dev.config()).unwrap();
    assert!(toml.contains(from), "{from} not in {toml}");
    std::fs::write(dev.config(), toml.replace(from, to)).unwrap();
}

/// Runs `run --once` and `status`; both must fail, saying `needle`.
fn refused(dev: &SimDevice, needle: &str) {
    for args in [&["run", "--once"][..], &["status"][..]] {
        let out = dev.agent(args);
        let said = text(&out);
        assert!(!out.status.success(), "{args:?} ran: {said}");
        assert!(said.contains(needle), "{args:?}: wanted {needle:?} in: {said}");
        assert!(!said.contains(USER_PIN), "the PIN is never printed: {said}");
    }
}

#[test]
fn a_missing_token_or_a_bad_pin_stops_the_agent_saying_which() {
    let repo = TestRepo::new();
    let hsm = SoftHsm::new();
    let mut dev = token_device(&repo, &hsm, "device-2", "ecdsa-p256");
    provision(&mut dev, &repo, &[]);
    assert!(dev.agent(&["status"]).status.success());
    let module = SoftHsm::module().display().to_string();
    let pin = hsm.dir().join("device-2.pin").display().to_string();

    // The module is not there (the token's package is not installed).
    edit_config(&dev, &module, "/usr/lib/no-such/libpkcs11.so");
    refused(&dev, "PKCS#11 module /usr/lib/no-such/libpkcs11.so is missing");
    edit_config(&dev, "/usr/lib/no-such/libpkcs11.so", &module);

    // No token by that label (unplugged, or another board's).
    edit_config(&dev, "token=device-2", "token=device-9");
    refused(&dev, "PKCS#11 token token=device-9 is missing");
    edit_config(&dev, "token=device-9", "token=device-2");

    // A PIN the token refuses.
    let wrong = hsm.pin_file("wrong.pin", "not-the-pin-42", 0o600);
    edit_config(&dev, &pin, wrong.to_str().unwrap());
    refused(&dev, "wrong PIN for PKCS#11 token device-2");

    // A PIN file others can read.
    let open = hsm.pin_file("open.pin", USER_PIN, 0o644);
    edit_config(&dev, wrong.to_str().unwrap(), open.to_str().unwrap());
    refused(&dev, "accessible to group or others (mode 644)");

    // A well-known default PIN.
    let default = hsm.pin_file("default.pin", "1234", 0o600);
    edit_config(&dev, open.to_str().unwrap(), default.to_str().unwrap());
    refused(
        &dev,
        "refusing a well-known default PIN for PKCS#11 token device-2",
    );
    edit_config(&dev, default.to_str().unwrap(), &pin);
    assert!(dev.agent(&["status"]).status.success());

    // Another token holding a key by the same name: not this device's identity.
    hsm.init_token("device-3", "so-pin-for-tests", USER_PIN);
    edit_config(&dev, "token=device-2", "token=device-3");
    let generated = {
        let mut other = token_device(&repo, &hsm, "device-4", "ecdsa-p256");
        edit_config(&other, "token=device-4", "token=device-3");
        provision(&mut other, &repo, &[]);
        other.public_key()
    };
    assert_ne!(generated, dev.public_key());
    refused(&dev, "wrong token, or its key was replaced");

    // The PIN file is private to its owner even when the agent reads it.
    let mode = std::fs::metadata(&pin).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
