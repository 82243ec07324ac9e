//! The attack suite (TUF spec section 1.5.2 threats): each case over real HTTP — nginx serving a crafted
//! python-tuf repository, or a small tokio server on 127.0.0.1 for endless data and slow retrieval — and
//! each refused with an error that names the cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use ota_testbed::Nginx;
use ota_tuf::{Client, Error, FixedClock};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The attack fixture's states and a live directory nginx serves; starts serving `v2`.
struct Attack {
    _fixture: tempfile::TempDir,
    out: PathBuf,
    live: tempfile::TempDir,
    nginx: Nginx,
}

impl Attack {
    fn new() -> Attack {
        let fixture = common::python_repo(&["attacks"]);
        let out = common::out(&fixture);
        let live = tempfile::tempdir().unwrap();
        common::serve_state(&out.join("v2"), &live.path().join("r"));
        let nginx = Nginx::serve(live.path());
        Attack {
            _fixture: fixture,
            out,
            live,
            nginx,
        }
    }
    fn serve(&self, state: &str) {
        common::serve_state(&self.out.join(state), &self.root());
    }
    fn root(&self) -> PathBuf {
        self.live.path().join("r")
    }
    fn url(&self) -> String {
        format!("{}/r", self.nginx.url())
    }
    fn client(&self) -> (tempfile::TempDir, Client) {
        common::client(&self.out, &self.url())
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[tokio::test]
async fn rollback_to_an_older_timestamp_is_refused() {
    let a = Attack::new();
    let (_meta, mut client) = a.client();
    client.refresh().await.unwrap();
    a.serve("v1");
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Rollback { role, trusted: 2, got: 1 } if role == "timestamp"),
        "{err}"
    );
    assert!(err.to_string().contains("rollback"));
}

#[tokio::test]
async fn freeze_with_expired_timestamp_is_refused() {
    let a = Attack::new();
    let (_meta, mut client) = a.client();
    client.refresh().await.unwrap();
    a.serve("expired");
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Expired { role, .. } if role == "timestamp"),
        "{err}"
    );
}

/// The reference time comes from the caller's clock: the same timestamp is accepted one second before
/// its expiry and refused one second after, without sleeping. (The "expired" state's timestamp expired
/// in the past; every other role there expires a year from now.)
#[tokio::test]
async fn expiry_is_judged_at_the_time_the_caller_passes() {
    let a = Attack::new();
    a.serve("expired");
    let served = std::fs::read(a.root().join("metadata/timestamp.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&served).unwrap();
    let expires: DateTime<Utc> = v["signed"]["expires"].as_str().unwrap().parse().unwrap();
    let at = |time: DateTime<Utc>| {
        let meta = tempfile::tempdir().unwrap();
        Client::init(
            meta.path(),
            &std::fs::read(a.out.join("initial_root.json")).unwrap(),
        )
        .unwrap();
        let mut config = common::config(&a.url());
        config.clock = Arc::new(FixedClock(time));
        let client = Client::load(meta.path(), config).unwrap();
        (meta, client)
    };

    let (_meta, mut before) = at(expires - TimeDelta::seconds(1));
    before.refresh().await.unwrap();
    let (_meta, mut after) = at(expires + TimeDelta::seconds(1));
    let err = after.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Expired { role, .. } if role == "timestamp"),
        "{err}"
    );
}

#[tokio::test]
async fn mix_and_match_of_targets_versions_is_refused() {
    let a = Attack::new();
    // Snapshot v2 names targets v2; the attacker serves the validly signed targets v1 in its place.
    std::fs::copy(
        a.out.join("v1/metadata/1.targets.json"),
        a.root().join("metadata/2.targets.json"),
    )
    .unwrap();
    let (_meta, mut client) = a.client();
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::VersionMismatch { role, expected: 2, got: 1 } if role == "targets"),
        "{err}"
    );
}

#[tokio::test]
async fn snapshot_not_matching_timestamp_hash_is_refused() {
    let a = Attack::new();
    edit_json(&a.root().join("metadata/2.snapshot.json"), |v| {
        v["signed"]["expires"] = "2099-01-01T00:00:00Z".into()
    });
    let (_meta, mut client) = a.client();
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::LengthMismatch { what, .. } | Error::HashMismatch { what, .. } if what == "snapshot"),
        "{err}"
    );
}

#[tokio::test]
async fn arbitrary_software_with_wrong_hash_is_refused() {
    let a = Attack::new();
    let (_meta, mut client) = a.client();
    client.refresh().await.unwrap();
    let info = client.target("fw/image.bin").await.unwrap().unwrap();
    let stored = a.root().join(format!(
        "targets/fw/{}.image.bin",
        hex::encode(info.sha256().unwrap())
    ));
    // Same length, other bytes.
    std::fs::write(&stored, vec![b'X'; usize::try_from(info.length).unwrap()]).unwrap();
    let err = client.download_target(&info, &mut Vec::new()).await.unwrap_err();
    assert!(
        matches!(&err, Error::HashMismatch { what, algorithm, .. } if what == "fw/image.bin" && algorithm == "sha256"),
        "{err}"
    );
    // Longer than signed: cut off at the signed length.
    std::fs::write(
        &stored,
        vec![b'X'; usize::try_from(info.length).unwrap() + 10_000],
    )
    .unwrap();
    let err = client.download_target(&info, &mut Vec::new()).await.unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { limit, .. } if *limit == info.length),
        "{err}"
    );
    // Shorter than signed.
    std::fs::write(&stored, b"short").unwrap();
    let err = client.download_target(&info, &mut Vec::new()).await.unwrap_err();
    assert!(matches!(&err, Error::LengthMismatch { got: 5, .. }), "{err}");
}

#[tokio::test]
async fn threshold_not_met_is_refused() {
    let a = Attack::new();
    edit_json(&a.root().join("metadata/timestamp.json"), |v| {
        v["signatures"] = serde_json::json!([])
    });
    let (_meta, mut client) = a.client();
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Threshold { role, valid: 0, threshold: 1, .. } if role == "timestamp"),
        "{err}"
    );
}

#[tokio::test]
async fn a_signature_over_other_content_does_not_count() {
    let a = Attack::new();
    // Valid signature, content changed afterwards (the canonical bytes no longer match).
    edit_json(&a.root().join("metadata/timestamp.json"), |v| {
        v["signed"]["version"] = 99.into()
    });
    let (_meta, mut client) = a.client();
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Threshold { role, valid: 0, .. } if role == "timestamp"),
        "{err}"
    );
}

#[tokio::test]
async fn a_signature_from_a_revoked_key_is_refused() {
    let a = Attack::new();
    let (_meta, mut client) = a.client();
    client.refresh().await.unwrap();
    // Root v2 revokes the timestamp key; the new timestamp is signed with the revoked key only.
    a.serve("revoked");
    let err = client.refresh().await.unwrap_err();
    assert_eq!(client.root_version(), 2, "the new root itself was accepted");
    assert!(
        matches!(&err, Error::Threshold { role, valid: 0, .. } if role == "timestamp"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_and_truncated_metadata_are_refused() {
    let a = Attack::new();
    let ts = a.root().join("metadata/timestamp.json");
    let full = std::fs::read(&ts).unwrap();
    std::fs::write(&ts, &full[..full.len() / 2]).unwrap();
    let (_meta, mut client) = a.client();
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Malformed { role, .. } if role == "timestamp"),
        "{err}"
    );

    std::fs::write(&ts, &full).unwrap();
    edit_json(&ts, |v| v["signed"]["_type"] = "snapshot".into());
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Malformed { role, reason } if role == "timestamp" && reason.contains("_type")),
        "{err}"
    );

    std::fs::write(&ts, &full).unwrap();
    edit_json(&ts, |v| v["signed"]["meta"] = serde_json::json!({}));
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Malformed { role, reason } if role == "timestamp" && reason.contains("snapshot.json")),
        "{err}"
    );

    // A malformed new root stops the update and the trusted root stays.
    std::fs::write(a.root().join("metadata/2.root.json"), b"{\"signed\": 1}").unwrap();
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Malformed { role, .. } if role == "root"),
        "{err}"
    );
    assert_eq!(client.root_version(), 1);
}

/// A real HTTP server on 127.0.0.1:0 that answers every request with `respond`.
async fn hostile_server<F, Fut>(respond: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let respond = std::sync::Arc::new(respond);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                respond(stream).await;
            });
        }
    });
    format!("http://{addr}")
}

fn provisioned_client(out: &Path, base: &str, timeout: Duration) -> (tempfile::TempDir, Client) {
    let meta = tempfile::tempdir().unwrap();
    Client::init(
        meta.path(),
        &std::fs::read(out.join("initial_root.json")).unwrap(),
    )
    .unwrap();
    let mut config = common::config(base);
    config.request_timeout = timeout;
    let c = Client::load(meta.path(), config).unwrap();
    (meta, c)
}

#[tokio::test]
async fn endless_data_is_refused() {
    let fixture = common::python_repo(&["attacks"]);
    let url = hostile_server(|mut s| async move {
        // No length, then bytes until the client hangs up.
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await;
        let chunk = vec![b' '; 4096];
        while s.write_all(&chunk).await.is_ok() {}
    })
    .await;
    let (_meta, mut client) = provisioned_client(&common::out(&fixture), &url, Duration::from_secs(10));
    let err = client.refresh().await.unwrap_err();
    // The first request is the root probe (2.root.json): bounded by the 512 KiB root maximum.
    assert!(
        matches!(&err, Error::TooLarge { limit, url } if *limit == 512 * 1024 && url.ends_with("2.root.json")),
        "{err}"
    );
}

#[tokio::test]
async fn slow_retrieval_is_refused() {
    let fixture = common::python_repo(&["attacks"]);
    // Stalls after the headers.
    let url = hostile_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let (_meta, mut client) = provisioned_client(&common::out(&fixture), &url, Duration::from_secs(1));
    let started = std::time::Instant::now();
    let err = client.refresh().await.unwrap_err();
    assert!(matches!(&err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Drip-feeds one byte every 200 ms: each read is quick, the whole request is not.
    let url = hostile_server(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            .await;
        for _ in 0..1000 {
            if s.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let (_meta, mut client) = provisioned_client(&common::out(&fixture), &url, Duration::from_secs(1));
    let err = client.refresh().await.unwrap_err();
    assert!(matches!(&err, Error::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn same_version_timestamp_with_other_content_is_not_adopted() {
    let a = Attack::new();
    let (meta, mut client) = a.client();
    client.refresh().await.unwrap();
    let trusted = std::fs::read(meta.path().join("timestamp.json")).unwrap();
    a.serve("samever");
    let served = std::fs::read(a.root().join("metadata/timestamp.json")).unwrap();
    assert_ne!(trusted, served);
    // Not an error (nothing new to apply), but the trusted timestamp stays the one first seen.
    client.refresh().await.unwrap();
    assert_eq!(
        std::fs::read(meta.path().join("timestamp.json")).unwrap(),
        trusted
    );
}
