//! Publishing to object storage (issue 19) against the `object_store` crate's in-memory store: the
//! order of uploads, an interruption after every object, incremental publishes, size mismatches, the
//! HTTP headers, and multipart uploads of images larger than one part. The real S3 server (moto), the
//! device agent and python-tuf's ngclient are in `tests/tests/publish_s3.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use ota_publish::bucket::{Mismatch, CACHE_IMMUTABLE, CACHE_REVALIDATE};
use ota_publish::object_store::memory::InMemory;
use ota_publish::object_store::path::Path as ObjectPath;
use ota_publish::object_store::{Attribute, ObjectStore, PutPayload};
use ota_publish::{AddOptions, Bucket, Error, InitSpec, KeyRing, PublishOptions, ReleaseSpec, RoleSpec};

struct Repo {
    dir: tempfile::TempDir,
    ring: KeyRing,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let mut pubs = Vec::new();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            let k = ota_publish::generate_key(&keys, role).unwrap();
            pubs.push(ota_publish::read_public_key(&k.public_path).unwrap());
        }
        let ring = KeyRing::from_dir(&keys).unwrap();
        let role = |i: usize| RoleSpec {
            keys: vec![pubs[i].clone()],
            threshold: 1,
        };
        let spec = InitSpec {
            root: role(0),
            targets: role(1),
            snapshot: role(2),
            timestamp: role(3),
            expiries: Default::default(),
        };
        let repo = Repo { dir, ring };
        fs::create_dir_all(repo.path()).unwrap();
        ota_publish::init(&repo.path(), &spec, &repo.ring).unwrap();
        repo
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn add(&self, version: &str, len: usize) {
        let image = self.dir.path().join(format!("fw-{version}.bin"));
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + version.len()) as u8).collect();
        fs::write(&image, bytes).unwrap();
        let spec = ReleaseSpec {
            image,
            version: version.into(),
            hardware: vec!["gw-a".into()],
            channel: "stable".into(),
            rollout_percent: 100,
            name: None,
        };
        ota_publish::add(&self.path(), &[spec], &AddOptions::default(), &self.ring).unwrap();
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}

/// Every object in the bucket: key → bytes.
fn contents(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, Vec<u8>> {
    run(async {
        let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for m in metas {
            let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
            out.insert(m.location.to_string(), bytes.to_vec());
        }
        out
    })
}

fn one_at_a_time() -> PublishOptions {
    PublishOptions {
        jobs: 1,
        ..PublishOptions::default()
    }
}

fn memory_bucket(prefix: &str) -> (Arc<dyn ObjectStore>, Bucket) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let bucket = Bucket::from_store(Arc::clone(&store), prefix, true);
    (store, bucket)
}

fn timestamp_version(bytes: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

/// What a client starting from `timestamp.json` would fetch: every name it leads to is present.
fn assert_serves_complete_repository(objects: &BTreeMap<String, Vec<u8>>, prefix: &str, timestamp: u64) {
    let get = |k: &str| {
        objects
            .get(&format!("{prefix}{k}"))
            .unwrap_or_else(|| panic!("{k} missing; bucket has {:?}", objects.keys()))
    };
    let ts: serde_json::Value = serde_json::from_slice(get("metadata/timestamp.json")).unwrap();
    assert_eq!(ts["signed"]["version"], timestamp);
    let sv = ts["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    let snap: serde_json::Value =
        serde_json::from_slice(get(&format!("metadata/{sv}.snapshot.json"))).unwrap();
    let tv = snap["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap();
    let targets: serde_json::Value =
        serde_json::from_slice(get(&format!("metadata/{tv}.targets.json"))).unwrap();
    for (name, t) in targets["signed"]["targets"].as_object().unwrap() {
        let sha = t["hashes"]["sha256"].as_str().unwrap();
        let (dir, base) = name.rsplit_once('/').unwrap();
        let body = get(&format!("targets/{dir}/{sha}.{base}"));
        assert_eq!(body.len() as u64, t["length"].as_u64().unwrap(), "{name}");
    }
}

#[test]
fn first_publish_sends_targets_then_versioned_metadata_then_roots_and_timestamp_last_with_cdn_headers() {
    let repo = Repo::new();
    repo.add("1.0.0", 5000);
    repo.add("1.1.0", 7000);
    let (store, bucket) = memory_bucket("fleet/prod");
    let report = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &one_at_a_time()).unwrap();
    let keys: Vec<&str> = report.sent.iter().map(|o| o.key.as_str()).collect();
    let phase = |k: &str| match k {
        "metadata/timestamp.json" => 4,
        k if k.ends_with(".root.json") => 3,
        k if k.starts_with("metadata/") => 2,
        _ => 1,
    };
    let phases: Vec<u8> = keys.iter().map(|k| phase(k)).collect();
    let mut sorted = phases.clone();
    sorted.sort();
    assert_eq!(phases, sorted, "out of order: {keys:?}");
    assert_eq!(keys.last(), Some(&"metadata/timestamp.json"));
    assert_eq!(keys.iter().filter(|k| k.starts_with("targets/")).count(), 2);
    // init + two adds: 2 images, 3 targets and 3 snapshot versions, 1 root, the timestamp; not the lock.
    assert_eq!(keys.len(), 2 + 3 + 3 + 1 + 1, "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("lock")));
    assert_eq!(report.unchanged, 0);

    let objects = contents(&store);
    assert!(
        objects.keys().all(|k| k.starts_with("fleet/prod/")),
        "{:?}",
        objects.keys()
    );
    assert_serves_complete_repository(&objects, "fleet/prod/", 3);
    for k in &keys {
        let local = fs::read(repo.path().join(k)).unwrap();
        assert_eq!(objects[&format!("fleet/prod/{k}")], local, "{k}");
    }
    let attrs = |k: &str| {
        run(async {
            store
                .get(&ObjectPath::from(format!("fleet/prod/{k}")))
                .await
                .unwrap()
                .attributes
        })
    };
    let ts = attrs("metadata/timestamp.json");
    assert_eq!(
        ts.get(&Attribute::CacheControl).unwrap().as_ref(),
        CACHE_REVALIDATE
    );
    assert_eq!(
        ts.get(&Attribute::ContentType).unwrap().as_ref(),
        "application/json"
    );
    let snap = attrs("metadata/3.snapshot.json");
    assert_eq!(
        snap.get(&Attribute::CacheControl).unwrap().as_ref(),
        CACHE_IMMUTABLE
    );
    let target = attrs(keys[0]);
    assert_eq!(
        target.get(&Attribute::CacheControl).unwrap().as_ref(),
        CACHE_IMMUTABLE
    );
    assert_eq!(
        target.get(&Attribute::ContentType).unwrap().as_ref(),
        "application/octet-stream"
    );
}

#[test]
fn an_incremental_publish_sends_only_the_new_objects_and_a_second_one_nothing() {
    let repo = Repo::new();
    repo.add("1.0.0", 5000);
    let (_, bucket) = memory_bucket("");
    let first = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &one_at_a_time()).unwrap();
    repo.add("2.0.0", 6000);
    let second = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &one_at_a_time()).unwrap();
    let keys: Vec<&str> = second.sent.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys[0].starts_with("targets/gw-a/stable/") && keys[0].ends_with(".fw-2.0.0.bin"));
    assert_eq!(
        &keys[1..],
        [
            "metadata/3.snapshot.json",
            "metadata/3.targets.json",
            "metadata/timestamp.json"
        ]
    );
    assert_eq!(
        second.sent_bytes(),
        second.sent.iter().map(|o| o.len).sum::<u64>()
    );
    assert_eq!(
        second.unchanged,
        first.sent.len() - 1,
        "all but the old timestamp"
    );
    let third = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &one_at_a_time()).unwrap();
    assert!(third.sent.is_empty(), "{:?}", third.sent);
    assert_eq!(third.unchanged, first.sent.len() + 3);
}

#[test]
fn an_upload_interrupted_after_any_object_leaves_the_previous_repository_served() {
    let repo = Repo::new();
    repo.add("1.0.0", 5000);
    let (store, bucket) = memory_bucket("r");
    ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &one_at_a_time()).unwrap();
    let before = contents(&store);
    repo.add("2.0.0", 6000);
    let dry = PublishOptions {
        dry_run: true,
        ..one_at_a_time()
    };
    let plan = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &dry).unwrap();
    assert_eq!(contents(&store), before, "a dry run sends nothing");
    let n = plan.sent.len();
    assert!(n >= 4);
    for k in 0..n {
        // Fresh copy of the published bucket, then stop after object k.
        let (store_k, bucket_k) = memory_bucket("r");
        run(async {
            for (key, bytes) in &before {
                store_k
                    .put(&ObjectPath::from(key.as_str()), PutPayload::from(bytes.clone()))
                    .await
                    .unwrap();
            }
        });
        let opts = PublishOptions {
            interrupt_after: Some(k),
            ..one_at_a_time()
        };
        if k > 0 {
            let err = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket_k, &opts).unwrap_err();
            assert!(matches!(err, Error::Interrupted { sent } if sent == k), "{err}");
        }
        let objects = contents(&store_k);
        let new: Vec<&String> = objects.keys().filter(|key| !before.contains_key(*key)).collect();
        let mut expected: Vec<String> = plan.sent[..k].iter().map(|o| format!("r/{}", o.key)).collect();
        expected.sort();
        assert_eq!(new, expected.iter().collect::<Vec<_>>(), "after {k} object(s)");
        assert_serves_complete_repository(&objects, "r/", 2);
        assert_eq!(timestamp_version(&objects["r/metadata/timestamp.json"]), 2);
        // Publishing again finishes the job.
        ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket_k, &one_at_a_time()).unwrap();
        assert_serves_complete_repository(&contents(&store_k), "r/", 3);
    }
}

#[test]
fn an_object_of_the_wrong_size_is_refused_unless_repair_and_an_older_repository_never_replaces_a_newer() {
    let repo = Repo::new();
    repo.add("1.0.0", 5000);
    let (store, bucket) = memory_bucket("");
    ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &one_at_a_time()).unwrap();
    let snap = ObjectPath::from("metadata/2.snapshot.json");
    run(store.put(&snap, PutPayload::from_static(b"damaged"))).unwrap();
    let err = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &one_at_a_time()).unwrap_err();
    assert!(
        err.to_string().contains("metadata/2.snapshot.json") && err.to_string().contains("--repair"),
        "{err}"
    );
    let repair = PublishOptions {
        mismatch: Mismatch::Repair,
        ..one_at_a_time()
    };
    let report = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &repair).unwrap();
    assert_eq!(report.repaired, ["metadata/2.snapshot.json"]);
    assert_eq!(
        contents(&store)["metadata/2.snapshot.json"],
        fs::read(repo.path().join("metadata/2.snapshot.json")).unwrap()
    );

    // A copy of the repository made now, then the original moves on and is published: the stale
    // copy must not roll the bucket back.
    let stale = tempfile::tempdir().unwrap();
    copy_dir(&repo.path(), stale.path());
    repo.add("2.0.0", 6000);
    ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &one_at_a_time()).unwrap();
    let err = ota_publish::publish_to_bucket_blocking(stale.path(), &bucket, &one_at_a_time()).unwrap_err();
    assert!(err.to_string().contains("newer than the repository's"), "{err}");
}

#[test]
fn an_image_larger_than_a_part_goes_up_in_parts_and_arrives_whole() {
    let repo = Repo::new();
    repo.add("1.0.0", 300_000);
    let (store, bucket) = memory_bucket("");
    let opts = PublishOptions {
        part_size: 64 * 1024,
        ..PublishOptions::default()
    };
    let report = ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &opts).unwrap();
    let target = &report.sent[0];
    assert_eq!(target.len, 300_000);
    assert_eq!(
        contents(&store)[&target.key],
        fs::read(repo.path().join(&target.key)).unwrap()
    );
}

#[test]
fn a_file_url_mirrors_the_repository_into_a_directory() {
    let repo = Repo::new();
    repo.add("1.0.0", 5000);
    let out = tempfile::tempdir().unwrap();
    let spec = ota_publish::BucketSpec {
        url: format!("file://{}", out.path().display()),
        ..Default::default()
    };
    let bucket = Bucket::open(&spec).unwrap();
    let report =
        ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &PublishOptions::default()).unwrap();
    for o in &report.sent {
        assert_eq!(
            fs::read(out.path().join(&o.key)).unwrap(),
            fs::read(repo.path().join(&o.key)).unwrap()
        );
    }
    let again =
        ota_publish::publish_to_bucket_blocking(&repo.path(), &bucket, &PublishOptions::default()).unwrap();
    assert!(again.sent.is_empty());
}

#[test]
fn a_credentials_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    fs::write(
        &file,
        "[default]\naws_access_key_id = a\naws_secret_access_key = b\n",
    )
    .unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let spec = ota_publish::BucketSpec {
        url: "s3://bucket/prefix".into(),
        endpoint: Some("http://127.0.0.1:9".into()),
        region: Some("us-east-1".into()),
        credentials: Some(file.clone()),
        ..Default::default()
    };
    let err = Bucket::open(&spec).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    Bucket::open(&spec).unwrap();
    let other = ota_publish::BucketSpec {
        profile: Some("ci".into()),
        ..spec
    };
    assert!(Bucket::open(&other).unwrap_err().to_string().contains("[ci]"));
}

fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            fs::create_dir_all(&dest).unwrap();
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}
