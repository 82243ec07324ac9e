//! ota-tuf's client against a repository built by repo-tool's library and served by a real nginx: top-level
//! and delegated targets in subdirectories found, downloaded and checked; a root rotation that adds a key,
//! raises the root threshold to 2 and replaces the timestamp key is followed (the trusted timestamp and
//! snapshot are dropped, TUF 5.3.11); releases published after it are seen; an expired timestamp is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs;
use std::path::Path;

use ota_e2e::{firmware, sha256_hex};
use ota_publish::{AddOptions, DelegateSpec, Expiries, InitSpec, KeyRing, ReleaseSpec, RoleSpec, RootChange};
use ota_testbed::Nginx;
use ota_tuf::{Client, ClientConfig, Error};

fn release(dir: &Path, version: &str, channel: &str, image: &[u8], name: Option<&str>) -> ReleaseSpec {
    let file = dir.join(format!("fw-{channel}-{version}.bin"));
    fs::write(&file, image).unwrap();
    ReleaseSpec {
        image: file,
        version: version.into(),
        hardware: vec!["gw-a".into()],
        channel: channel.into(),
        rollout_percent: 100,
        name: name.map(str::to_string),
    }
}

/// The target `name` is visible, has the image's length and sha256, and downloads to exactly the image.
async fn check_target(client: &mut Client, name: &str, image: &[u8]) {
    let info = client
        .target(name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{name} not found"));
    assert_eq!(info.length, image.len() as u64, "{name}");
    assert_eq!(hex::encode(info.sha256().unwrap()), sha256_hex(image), "{name}");
    let mut body = Vec::new();
    assert_eq!(
        client.download_target(&info, &mut body).await.unwrap(),
        info.length
    );
    assert!(
        body == image,
        "{name}: downloaded bytes differ from the published image"
    );
}

#[tokio::test]
async fn ota_tuf_client_follows_a_repo_tool_repository() {
    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("keys");
    let public = |name: &str| {
        let k = ota_publish::generate_key(&keys, name).unwrap();
        (k.keyid, ota_publish::read_public_key(&k.public_path).unwrap())
    };
    let (_, root1) = public("root1");
    let (_, targets_key) = public("targets");
    let (_, snapshot_key) = public("snapshot");
    let (ts1_id, ts1) = public("timestamp1");
    let (_, beta_key) = public("beta");
    let one = |k: &ota_publish::Key| RoleSpec {
        keys: vec![k.clone()],
        threshold: 1,
    };
    let repo = work.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    let ring = KeyRing::from_dir(&keys).unwrap();
    let spec = InitSpec {
        root: one(&root1),
        targets: one(&targets_key),
        snapshot: one(&snapshot_key),
        timestamp: one(&ts1),
        expiries: Expiries::default(),
    };
    ota_publish::init(&repo, &spec, &ring).unwrap();

    // Top-level releases: one under the default `<hardware>/<channel>/<file>` name, one at the
    // repository's top directory.
    let stable = firmware("1.0.0", 70_000);
    let top = firmware("top", 1_000);
    let added = ota_publish::add(
        &repo,
        &[
            release(work.path(), "1.0.0", "stable", &stable, None),
            release(work.path(), "0.1.0", "stable", &top, Some("recovery.bin")),
        ],
        &AddOptions::default(),
        &ring,
    )
    .unwrap();
    let stable_name = added.added[0].0.clone();
    assert_eq!(stable_name, "gw-a/stable/fw-stable-1.0.0.bin");
    // The beta channel is delegated to its own key, and a release goes into that role.
    ota_publish::delegate(
        &repo,
        &DelegateSpec {
            role: "beta".into(),
            paths: vec!["*/beta/*".into()],
            keys: one(&beta_key),
            terminating: true,
        },
        &Expiries::default(),
        &ring,
    )
    .unwrap();
    let beta = firmware("2.0.0-rc1", 50_000);
    let beta_opts = AddOptions {
        role: Some("beta".into()),
        ..AddOptions::default()
    };
    let beta_name = ota_publish::add(
        &repo,
        &[release(work.path(), "2.0.0-rc1", "beta", &beta, None)],
        &beta_opts,
        &ring,
    )
    .unwrap()
    .added[0]
        .0
        .clone();

    let nginx = Nginx::serve(&repo);
    let meta_dir = work.path().join("device-metadata");
    Client::init(&meta_dir, &fs::read(repo.join("metadata/1.root.json")).unwrap()).unwrap();
    let config = || {
        ClientConfig::new(
            format!("{}/metadata", nginx.url()),
            format!("{}/targets", nginx.url()),
        )
    };
    let mut client = Client::load(&meta_dir, config()).unwrap();
    client.refresh().await.unwrap();
    assert_eq!(client.root_version(), 1);
    check_target(&mut client, &stable_name, &stable).await;
    check_target(&mut client, "recovery.bin", &top).await;
    check_target(&mut client, &beta_name, &beta).await;
    assert_eq!(client.target("gw-a/stable/9.9.9/none.bin").await.unwrap(), None);
    let listed: Vec<String> = client
        .all_targets()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        listed,
        [
            "gw-a/beta/fw-beta-2.0.0-rc1.bin",
            stable_name.as_str(),
            "recovery.bin"
        ]
    );
    let mut stored: Vec<String> = fs::read_dir(&meta_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        [
            "beta.json",
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );

    // Root rotation: a second root key, root threshold 2, and the timestamp key replaced.
    let (_, root2) = public("root2");
    let (_, ts2) = public("timestamp2");
    let ring = KeyRing::from_dir(&keys).unwrap();
    let root_role = ota_publish::parse_role("root").unwrap();
    let timestamp_role = ota_publish::parse_role("timestamp").unwrap();
    let change = RootChange {
        add_keys: vec![(root_role, root2), (timestamp_role, ts2)],
        remove_keys: vec![(timestamp_role, ts1_id)],
        thresholds: vec![(root_role, 2)],
        expiries: Expiries::default(),
    };
    let staged = work.path().join("2.root.staged.json");
    assert_eq!(ota_publish::root_stage(&repo, &change, &staged).unwrap(), 2);
    ota_publish::root_sign(&staged, Some(&repo), &ring).unwrap();
    fs::remove_file(keys.join("timestamp1.pk8")).unwrap();
    let ring = KeyRing::from_dir(&keys).unwrap();
    assert_eq!(
        ota_publish::root_publish(&repo, &staged, &Expiries::default(), &ring).unwrap(),
        2
    );
    let stable2 = firmware("1.1.0", 80_000);
    let stable2_name = ota_publish::add(
        &repo,
        &[release(work.path(), "1.1.0", "stable", &stable2, None)],
        &AddOptions::default(),
        &ring,
    )
    .unwrap()
    .added[0]
        .0
        .clone();

    // A new process on the device: it reads the persisted state and follows the new root.
    let mut client = Client::load(&meta_dir, config()).unwrap();
    client.refresh().await.unwrap();
    assert_eq!(client.root_version(), 2);
    let persisted_root: serde_json::Value =
        serde_json::from_slice(&fs::read(meta_dir.join("root.json")).unwrap()).unwrap();
    assert_eq!(persisted_root["signed"]["version"], 2);
    assert_eq!(persisted_root["signed"]["roles"]["root"]["threshold"], 2);
    check_target(&mut client, &stable2_name, &stable2).await;
    check_target(&mut client, &stable_name, &stable).await;
    check_target(&mut client, &beta_name, &beta).await;

    // Freeze: a timestamp that expires a second after signing, read after it expired, is refused.
    let short = Expiries {
        timestamp: ota_publish::parse_lifetime("1s").unwrap(),
        ..Expiries::default()
    };
    ota_publish::refresh(
        &repo,
        &ota_publish::RefreshOptions {
            snapshot: false,
            expiries: short,
        },
        &ring,
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let mut client = Client::load(&meta_dir, config()).unwrap();
    let err = client.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::Expired { role, .. } if role == "timestamp"),
        "expected an expired timestamp, got: {err}"
    );
    // A fresh timestamp makes the repository usable again.
    ota_publish::refresh(&repo, &ota_publish::RefreshOptions::default(), &ring).unwrap();
    client.refresh().await.unwrap();
    check_target(&mut client, &stable2_name, &stable2).await;
}
