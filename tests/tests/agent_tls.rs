//! Issue 16, authenticated channels: the repository over HTTPS served by a real nginx, its CA pinned at
//! provisioning beside the root of trust (test CA and certificates made at test time). The real agent
//! binary installs through it, and refuses, naming the reason, a server whose certificate is from
//! another CA, expired, or for another name; a valid TLS server with tampered metadata is still refused
//! by TUF.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs;

use ota_e2e::{firmware, text, SimDevice, TestRepo};
use ota_testbed::tls::{ClientCerts, TestCa, Validity};
use ota_testbed::Nginx;

const SLOT_LEN: u64 = 1 << 20;

/// Points the device at `url` (both metadata and targets).
fn point_at(dev: &SimDevice, url: &str) {
    let config = fs::read_to_string(dev.config()).unwrap();
    let mut out = String::new();
    for line in config.lines() {
        if line.starts_with("metadata_url") {
            out.push_str(&format!("metadata_url = \"{url}/metadata\"\n"));
        } else if line.starts_with("targets_url") {
            out.push_str(&format!("targets_url = \"{url}/targets\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    fs::write(dev.config(), out).unwrap();
}

/// Provisions `dev` again (same root: harmless) pinning `ca_pem` for the repository.
fn pin_repository_ca(dev: &SimDevice, repo: &TestRepo, ca_pem: &str) {
    let ca = dev.dir().join("repository-ca.pem");
    fs::write(&ca, ca_pem).unwrap();
    let out = dev.provision(
        &repo.root_json(),
        repo.fingerprint(),
        "1.0.0",
        "200000",
        &["--repository-ca", ca.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pinned repository CA"), "{}", text(&out));
}

/// `device-agent check` against a server, which must fail naming `reason`.
fn refused(dev: &SimDevice, server: &Nginx, reason: &str) {
    point_at(dev, &server.url());
    let out = dev.agent(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(reason), "expected {reason:?} in: {said}");
    assert_eq!(
        server.requests_served(),
        0,
        "no request reached the server: {said}"
    );
}

#[test]
fn https_with_the_pinned_ca_installs_and_every_bad_server_is_refused_by_name() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let ca = TestCa::new("ota test repository CA");
    let good = Nginx::serve_tls(
        &repo.root_dir(),
        &ca.issue(&["127.0.0.1", "localhost"], Validity::Current),
        ClientCerts::Ignored,
    );
    point_at(&dev, &good.url());

    // Before the CA is pinned, the system's roots do not know the test CA: refused.
    let out = dev.agent(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("UnknownIssuer"), "{}", text(&out));

    pin_repository_ca(&dev, &repo, ca.pem());
    let v2 = firmware("2.0.0", 250_000);
    repo.publish("2.0.0", &v2);
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 1, "{}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    assert_eq!(s["running_version"], "2.0.0");

    let other_ca = TestCa::new("someone else's CA");
    let wrong_ca = Nginx::serve_tls(
        &repo.root_dir(),
        &other_ca.issue(&["127.0.0.1"], Validity::Current),
        ClientCerts::Ignored,
    );
    refused(&dev, &wrong_ca, "UnknownIssuer");
    let expired = Nginx::serve_tls(
        &repo.root_dir(),
        &ca.issue(&["127.0.0.1"], Validity::Expired),
        ClientCerts::Ignored,
    );
    refused(&dev, &expired, "certificate expired");
    let other_name = Nginx::serve_tls(
        &repo.root_dir(),
        &ca.issue(&["updates.example.com"], Validity::Current),
        ClientCerts::Ignored,
    );
    refused(&dev, &other_name, "not valid for name \"127.0.0.1\"");
}

#[test]
fn a_valid_tls_server_with_tampered_metadata_is_still_refused_by_tuf() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let ca = TestCa::new("ota test repository CA");
    let server = Nginx::serve_tls(
        &repo.root_dir(),
        &ca.issue(&["127.0.0.1"], Validity::Current),
        ClientCerts::Ignored,
    );
    point_at(&dev, &server.url());
    pin_repository_ca(&dev, &repo, ca.pem());
    repo.publish("2.0.0", &firmware("2.0.0", 250_000));

    // The server's operator (or whoever holds its TLS key) rewrites the timestamp: TLS is valid, the
    // signature is not.
    let timestamp = repo.root_dir().join("metadata/timestamp.json");
    let json = fs::read_to_string(&timestamp).unwrap();
    let tampered = json.replacen("\"version\":", "\"version\": 9999, \"was\":", 1);
    assert_ne!(json, tampered);
    fs::write(&timestamp, tampered).unwrap();

    let out = dev.agent(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("timestamp"), "{said}");
    assert!(
        server.requests_served() > 0,
        "the TLS handshake succeeded: {said}"
    );
    let s = dev.status();
    assert_eq!(s["running_version"], "1.0.0", "{s}");
    assert_eq!(s["state_name"], "idle", "{s}");
}
