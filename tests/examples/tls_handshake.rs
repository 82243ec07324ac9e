//! The TLS handshake's cost on a poll (issue 16): GET /metadata/timestamp.json from a real nginx over a
//! fresh connection each time (as a device's hourly poll is), plain HTTP, HTTPS with the pinned CA, and
//! mutual TLS with the device's own client (`CollectorTls`: the identity key signs the handshake).
//! Prints a table. `bash scripts/bench-tls.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use device_agent::channels::{provision_channels, CollectorTls};
use device_agent::identity::{FileIdentity, IDENTITY_FILE};
use ota_testbed::tls::{ClientCerts, TestCa, Validity};
use ota_testbed::Nginx;

async fn polls(make: &dyn Fn() -> reqwest::Client, url: &str, n: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        // A new client per poll: a new connection and a full handshake (nginx keeps no session cache).
        let body = make().get(url).send().await.unwrap().bytes().await.unwrap();
        assert!(!body.is_empty());
    }
    start.elapsed() / n
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u32 = std::env::args().nth(1).map_or(200, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    ota_testbed::write_file(&root.join("metadata/timestamp.json"), &[b'x'; 1500]);
    let ca = TestCa::new("bench CA");
    let cert = ca.issue(&["127.0.0.1"], Validity::Current);
    let plain = Nginx::serve(&root);
    let tls = Nginx::serve_tls(&root, &cert, ClientCerts::Ignored);
    let mtls = Nginx::serve_tls(&root, &cert, ClientCerts::Asked);
    let ca_pem = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let (identity, _) = FileIdentity::create_or_load(&state.join(IDENTITY_FILE)).unwrap();
    provision_channels(&state, &identity, None, Some(&ca_path)).unwrap();
    let device_tls = CollectorTls::load(&state, Arc::new(identity)).unwrap();

    let path = "/metadata/timestamp.json";
    let plain_client = || reqwest::Client::new();
    let tls_client = || {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca_pem.clone())
            .build()
            .unwrap()
    };
    let mtls_client = || device_tls.http_client(Duration::from_secs(10)).unwrap();
    let rows = [
        (
            "plain HTTP",
            polls(&plain_client, &format!("{}{path}", plain.url()), n).await,
        ),
        (
            "HTTPS (pinned CA, P-256 server)",
            polls(&tls_client, &format!("{}{path}", tls.url()), n).await,
        ),
        (
            "mutual TLS (+ ed25519 client cert)",
            polls(&mtls_client, &format!("{}{path}", mtls.url()), n).await,
        ),
    ];
    println!("| poll: fresh connection + GET timestamp.json (1.5 KB), {n} each | ms per poll | vs plain |");
    println!("|---|---|---|");
    let base = rows[0].1.as_secs_f64();
    for (name, d) in rows {
        println!(
            "| {name} | {:.2} | {:.1}x |",
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() / base
        );
    }
}
