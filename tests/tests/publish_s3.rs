//! Issue 19, publishing to object storage: a repository published to a real S3 server (moto, on
//! 127.0.0.1) is read back over plain HTTP by the real `device-agent` binary and by python-tuf's
//! ngclient; an upload stopped after any object, or the `repo-tool publish` process killed in the
//! middle of a multipart upload, leaves the bucket serving the previous repository; an incremental
//! publish sends only the new objects.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ota_e2e::{firmware, repo_tool_binary, sha256_hex, text, SimDevice, TestRepo};
use ota_publish::{Bucket, BucketSpec, PublishOptions};
use ota_testbed::S3Server;

const SLOT_LEN: u64 = 1 << 20;

/// A moto server and a 0600 credentials file for it (moto takes any keys).
struct S3 {
    server: S3Server,
    dir: tempfile::TempDir,
}

impl S3 {
    fn start() -> S3 {
        let server = S3Server::start();
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        S3 { server, dir }
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// A new public-read bucket, opened for publishing.
    fn bucket(&self, name: &str) -> Bucket {
        self.server.public_bucket(name);
        Bucket::open(&BucketSpec {
            url: format!("s3://{name}"),
            endpoint: Some(self.server.endpoint()),
            region: Some("us-east-1".into()),
            credentials: Some(self.credentials()),
            profile: None,
            request_retries: 2,
        })
        .unwrap()
    }

    /// Where devices and ngclient read bucket `name` (path-style, anonymous).
    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.server.endpoint())
    }

    fn get(&self, bucket: &str, key: &str) -> ota_testbed::HttpResponse {
        self.server.request("GET", &format!("/{bucket}/{key}"), &[])
    }
}

fn publish(
    repo: &TestRepo,
    bucket: &Bucket,
    opts: &PublishOptions,
) -> ota_publish::Result<ota_publish::PublishReport> {
    ota_publish::publish_to_bucket_blocking(&repo.root_dir(), bucket, opts)
}

fn one_at_a_time() -> PublishOptions {
    PublishOptions {
        jobs: 1,
        ..PublishOptions::default()
    }
}

/// python-tuf's ngclient (testdata/ngclient/fetch.py): refresh, then download `targets`.
fn ngclient(url: &str, root: &Path, cache: &Path, targets: &[&str]) -> Output {
    let script = ota_testbed::workspace_root().join("testdata/ngclient/fetch.py");
    Command::new(ota_testbed::python_tuf())
        .arg(script)
        .arg(format!("{url}/metadata/"))
        .arg(format!("{url}/targets/"))
        .arg(root)
        .arg(cache)
        .arg(cache.join("downloads"))
        .args(targets)
        .output()
        .unwrap()
}

/// A device at 1.0.0 reading `url` runs until settled; returns the version it then runs.
fn device_update(repo: &TestRepo, url: &str, v1: &[u8]) -> (String, SimDevice) {
    let dev = SimDevice::new_at(repo, url, "1.0.0", v1, SLOT_LEN, "");
    let (out, _) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    let s = dev.status();
    (s["running_version"].as_str().unwrap().to_owned(), dev)
}

#[test]
fn devices_and_ngclient_read_the_bucket_and_a_publish_stopped_after_any_object_serves_the_previous_repository(
) {
    let s3 = S3::start();
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let v2 = firmware("2.0.0", 250_000);
    let name2 = repo.publish("2.0.0", &v2);
    let bucket = s3.bucket("ota");
    let first = publish(&repo, &bucket, &PublishOptions::default()).unwrap();
    assert_eq!(first.unchanged, 0);

    // Read back over HTTP, anonymously, with headers a CDN can use.
    let ts = s3.get("ota", "metadata/timestamp.json");
    assert_eq!(ts.status, 200);
    assert_eq!(ts.header("cache-control"), Some("no-cache"));
    assert_eq!(ts.header("content-type"), Some("application/json"));
    let target_key = &first.sent[0].key;
    let target = s3.get("ota", target_key);
    assert_eq!(
        target.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(target.header("content-type"), Some("application/octet-stream"));
    assert_eq!(sha256_hex(&target.body), sha256_hex(&v2));
    let snap = s3.get("ota", "metadata/2.snapshot.json");
    assert_eq!(
        snap.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );

    let url = s3.url("ota");
    let (running, dev) = device_update(&repo, &url, &v1);
    assert_eq!(running, "2.0.0");
    assert_eq!(dev.slot_sha256(ota_slot::SlotId::B, v2.len()), sha256_hex(&v2));
    let cache = tempfile::tempdir().unwrap();
    let out = ngclient(&url, &repo.root_json(), cache.path(), &[&name2]);
    assert!(out.status.success(), "{}", text(&out));

    // Release 3.0.0 is added; its publish is stopped after object k, for every k, each time into a
    // fresh copy of the bucket as it was: a new device still updates to 2.0.0, ngclient still
    // refreshes (and does not see 3.0.0).
    let at_two = tempfile::tempdir().unwrap();
    copy_dir(&repo.root_dir(), at_two.path());
    let v3 = firmware("3.0.0", 260_000);
    let name3 = repo.publish("3.0.0", &v3);
    let dry = PublishOptions {
        dry_run: true,
        ..one_at_a_time()
    };
    let planned = publish(&repo, &bucket, &dry).unwrap().sent;
    let keys: Vec<&str> = planned.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys.len(), 4, "one image, targets, snapshot, timestamp: {keys:?}");
    assert_eq!(keys.last(), Some(&"metadata/timestamp.json"));
    for k in 1..keys.len() {
        let name = format!("ota-stop-{k}");
        let b = s3.bucket(&name);
        ota_publish::publish_to_bucket_blocking(at_two.path(), &b, &PublishOptions::default()).unwrap();
        let err = ota_publish::publish_to_bucket_blocking(
            &repo.root_dir(),
            &b,
            &PublishOptions {
                interrupt_after: Some(k),
                ..one_at_a_time()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, ota_publish::Error::Interrupted { sent } if sent == k),
            "{err}"
        );
        let url_k = s3.url(&name);
        let (running, _) = device_update(&repo, &url_k, &v1);
        assert_eq!(running, "2.0.0", "stopped after {k} of {keys:?}");
        let cache_k = tempfile::tempdir().unwrap();
        let out = ngclient(&url_k, &repo.root_json(), cache_k.path(), &[&name2]);
        assert!(out.status.success(), "stopped after {k}: {}", text(&out));
        let out = ngclient(&url_k, &repo.root_json(), cache_k.path(), &[&name3]);
        assert!(
            text(&out).contains("not found"),
            "stopped after {k}: {}",
            text(&out)
        );
    }

    // The incremental publish sends exactly the planned objects; the device and ngclient move on.
    let second = publish(&repo, &bucket, &PublishOptions::default()).unwrap();
    let sent: Vec<&str> = second.sent.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(sent, keys);
    assert_eq!(
        second.unchanged,
        first.sent.len() - 1,
        "all but the old timestamp.json"
    );
    let (out, _) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dev.status()["running_version"], "3.0.0");
    let out = ngclient(&url, &repo.root_json(), cache.path(), &[&name3]);
    assert!(out.status.success(), "{}", text(&out));
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Multipart uploads in progress in `bucket` (moto's ListMultipartUploads).
fn uploads_in_progress(s3: &S3, bucket: &str) -> usize {
    let r = s3.server.request("GET", &format!("/{bucket}?uploads"), &[]);
    String::from_utf8_lossy(&r.body).matches("<UploadId>").count()
}

#[test]
fn repo_tool_publish_killed_in_the_middle_of_a_big_image_leaves_the_previous_repository_served() {
    let s3 = S3::start();
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 200_000);
    let v2 = firmware("2.0.0", 250_000);
    let name2 = repo.publish("2.0.0", &v2);
    s3.server.public_bucket("ota");
    let publish_cmd = |extra: &[&str]| {
        let mut cmd = Command::new(repo_tool_binary());
        cmd.arg("publish")
            .arg("--repo")
            .arg(repo.root_dir())
            .args([
                "--to",
                "s3://ota",
                "--endpoint",
                &s3.server.endpoint(),
                "--region",
                "us-east-1",
            ])
            .arg("--credentials")
            .arg(s3.credentials())
            .args(["--jobs", "1", "--part-mib", "5"])
            .args(extra)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        cmd
    };
    let out = publish_cmd(&[]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let before = s3.get("ota", "metadata/timestamp.json").body;

    // A 40 MiB release: 8 parts of 5 MiB. Killed once its multipart upload has begun.
    let big = firmware("3.0.0", 40 << 20);
    let name3 = repo.publish("3.0.0", &big);
    drop(big);
    let mut child = publish_cmd(&[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while uploads_in_progress(&s3, "ota") == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "publish ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "no multipart upload began within 120 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        s3.get("ota", "metadata/timestamp.json").body,
        before,
        "timestamp.json unchanged"
    );
    let url = s3.url("ota");
    let (running, _) = device_update(&repo, &url, &v1);
    assert_eq!(running, "2.0.0");
    let cache = tempfile::tempdir().unwrap();
    let out = ngclient(&url, &repo.root_json(), cache.path(), &[&name2]);
    assert!(out.status.success(), "{}", text(&out));

    // Run again: it finishes, sending the image, the new metadata and timestamp.json last.
    let out = publish_cmd(&["--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent: Vec<&str> = report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(sent[0].ends_with(name3.rsplit('/').next().unwrap()), "{sent:?}");
    assert_eq!(sent[3], "metadata/timestamp.json");
    assert!(report["bytes_sent"].as_u64().unwrap() > 40 << 20);
    let out = ngclient(&url, &repo.root_json(), cache.path(), &[&name2]);
    assert!(out.status.success(), "{}", text(&out));
    let ts: serde_json::Value =
        serde_json::from_slice(&s3.get("ota", "metadata/timestamp.json").body).unwrap();
    assert_eq!(ts["signed"]["version"], 3);
}
