//! Interoperability: repositories built by python-tuf's Metadata API (testdata/python-tuf/make_repo.py),
//! served by real nginx. Root rotations with key-type mix (ed25519, ecdsa, rsa) and a threshold change,
//! a timestamp key rotation, nested / terminating / hash-prefix / succinct hash-bin delegations, targets
//! in subdirectories, consistent snapshots on and off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod common;

use std::collections::BTreeSet;

use ota_testbed::Nginx;

async fn check_full_repository(extra: &[&str]) {
    let mut args = vec!["full"];
    args.extend_from_slice(extra);
    let fixture = common::python_repo(&args);
    let out = common::out(&fixture);
    let served = out.join("repo");
    let nginx = Nginx::serve(&served);
    let (meta, mut client) = common::client(&out, &nginx.url());

    client.refresh().await.unwrap();
    assert_eq!(
        client.root_version(),
        3,
        "rotated through 2.root.json (threshold 2) and 3.root.json"
    );

    let expect: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("expect.json")).unwrap()).unwrap();
    for (path, sha) in expect["found"].as_object().unwrap() {
        let info = client
            .target(path)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{path} not found"));
        assert_eq!(
            hex::encode(info.sha256().unwrap()),
            sha.as_str().unwrap(),
            "{path}"
        );
        let mut body = Vec::new();
        let n = client.download_target(&info, &mut body).await.unwrap();
        assert_eq!(n, info.length);
        assert_eq!(common::sha256_hex(&body), sha.as_str().unwrap(), "{path} content");
    }
    for path in expect["absent"].as_array().unwrap() {
        let path = path.as_str().unwrap();
        assert_eq!(
            client.target(path).await.unwrap(),
            None,
            "{path} must not be reachable"
        );
    }

    // Listing agrees with the search: exactly the reachable targets, from the role the search reaches.
    let listed: BTreeSet<String> = client
        .all_targets()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    let expected: BTreeSet<String> = expect["found"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(listed, expected);

    // Persisted metadata: unversioned names, exact received bytes, nothing else.
    for entry in std::fs::read_dir(meta.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name.ends_with(".json") && !name.starts_with('.'),
            "stray file {name}"
        );
        let ours = std::fs::read(meta.path().join(&name)).unwrap();
        let theirs = std::fs::read(served.join("metadata").join(&name)).unwrap();
        assert!(ours == theirs, "{name} is not the exact bytes served");
    }

    // A no-change refresh from the persisted state fetches only 4.root.json (404) and timestamp.json.
    let before = nginx.requests_served();
    let mut again = ota_tuf::Client::load(meta.path(), common::config(&nginx.url())).unwrap();
    again.refresh().await.unwrap();
    assert!(again.target("a/deep/x.txt").await.unwrap().is_some());
    assert_eq!(
        nginx.requests_served() - before,
        2,
        "only root probe and timestamp are fetched"
    );
}

#[tokio::test]
async fn python_tuf_repository_consistent_snapshots() {
    check_full_repository(&[]).await;
}

#[tokio::test]
async fn python_tuf_repository_without_consistent_snapshots() {
    check_full_repository(&["--no-consistent"]).await;
}
