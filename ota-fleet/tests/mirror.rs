//! The loopback mirror over real HTTP (reqwest as the client): files served, counted, and each fault
//! doing what it says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_fleet::{FaultyMirror, NetworkFaults};

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("metadata")).unwrap();
    std::fs::create_dir_all(dir.path().join("targets")).unwrap();
    std::fs::write(
        dir.path().join("metadata/timestamp.json"),
        br#"{"signed":{"expires":"2030-01-01T00:00:00Z","version":2},"signatures":[]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("targets/fw.img"), vec![7u8; 10_000]).unwrap();
    dir
}

#[tokio::test]
async fn serves_files_and_counts_requests_and_bytes() {
    let dir = repo();
    let mirror = FaultyMirror::start(dir.path(), NetworkFaults::none(), 1)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/targets/fw.img", mirror.device_base_url("dev-1"));
    let body = client.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), 10_000);
    let missing = client
        .get(format!("{}/metadata/9.root.json", mirror.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let escape = client
        .get(format!("{}/d/x/..%2F..%2Fetc%2Fpasswd", mirror.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(escape.status(), 400);
    let stats = mirror.stats();
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.not_found, 1);
    assert!(stats.bytes >= 10_000);
    assert_eq!(mirror.device_bytes("dev-1"), 10_000);
}

#[tokio::test]
async fn dropped_connection_is_an_error_for_the_client() {
    let dir = repo();
    let faults = NetworkFaults {
        drop: 1.0,
        ..NetworkFaults::none()
    };
    let mirror = FaultyMirror::start(dir.path(), faults, 1).await.unwrap();
    let r = reqwest::get(format!("{}/targets/fw.img", mirror.base_url())).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(mirror.stats().faults["drop"], 1);
}

#[tokio::test]
async fn truncated_and_corrupted_bodies() {
    let dir = repo();
    let faults = NetworkFaults {
        truncate: 1.0,
        ..NetworkFaults::none()
    };
    let mirror = FaultyMirror::start(dir.path(), faults, 1).await.unwrap();
    let body = reqwest::get(format!("{}/targets/fw.img", mirror.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 5_000);

    let faults = NetworkFaults {
        corrupt: 1.0,
        ..NetworkFaults::none()
    };
    let mirror = FaultyMirror::start(dir.path(), faults, 1).await.unwrap();
    let body = reqwest::get(format!("{}/targets/fw.img", mirror.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 10_000);
    assert!(body.iter().any(|b| *b != 7));
}

#[tokio::test]
async fn stale_and_tampered_metadata() {
    let dir = repo();
    let faults = NetworkFaults {
        stale_metadata: 1.0,
        ..NetworkFaults::none()
    };
    let mirror = FaultyMirror::start(dir.path(), faults, 1).await.unwrap();
    mirror.remember_stale_timestamp().unwrap();
    let fresh = br#"{"signed":{"expires":"2030-01-01T00:00:00Z","version":3},"signatures":[]}"#;
    std::fs::write(dir.path().join("metadata/timestamp.json"), fresh).unwrap();
    let body = reqwest::get(format!("{}/metadata/timestamp.json", mirror.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("\"version\":2"),
        "stale copy expected"
    );
    // A target is never "stale": it is served as is.
    let img = reqwest::get(format!("{}/targets/fw.img", mirror.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(img.len(), 10_000);

    let faults = NetworkFaults {
        tampered_metadata: 1.0,
        ..NetworkFaults::none()
    };
    let mirror = FaultyMirror::start(dir.path(), faults, 1).await.unwrap();
    let body = reqwest::get(format!("{}/metadata/timestamp.json", mirror.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_ne!(&body[..], &fresh[..]);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
        "tampered but still JSON"
    );
}

#[tokio::test]
async fn stall_delays_the_answer() {
    let dir = repo();
    let faults = NetworkFaults {
        stall: 1.0,
        stall_ms: 300,
        ..NetworkFaults::none()
    };
    let mirror = FaultyMirror::start(dir.path(), faults, 1).await.unwrap();
    let t = std::time::Instant::now();
    let body = reqwest::get(format!("{}/targets/fw.img", mirror.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(body.len(), 10_000);
}
