//! Publishing a repository to object storage ([`publish_to_bucket`]): an S3 bucket (AWS or any
//! S3-compatible server), a local directory (`file://`), or any store of the `object_store` crate.
//!
//! The repository directory stays the source of truth (every other command writes there, under its
//! lock; a `RepoStore` writing straight into the bucket would split an aborted edit between two
//! places); publishing copies it into the bucket, sending only the objects the bucket lacks, in an order
//! that keeps the bucket serving a complete repository at every moment: the previous one until
//! `timestamp.json`, the last object, lands (see [`plan`]). It holds the repository's lock while it
//! runs, so no `add` changes the files being copied.
//!
//! Objects carry `Content-Type` and a `Cache-Control` fit for a CDN in front of the bucket
//! ([`CACHE_IMMUTABLE`] for names that never change content, [`CACHE_REVALIDATE`] for
//! `timestamp.json` and other files replaced in place). Files are streamed in parts of
//! [`PublishOptions::part_size`] (a multipart upload above one part), so memory stays below
//! `jobs × (parts_in_flight + 1) × part_size` whatever the images weigh.

mod local;
pub mod plan;
mod upload;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreScheme, RetryConfig};

pub use plan::{Mismatch, ObjectClass, UploadPlan, CACHE_IMMUTABLE, CACHE_REVALIDATE};

use crate::error::{invalid, io, Error, Result};
use crate::loader::RepoState;
use crate::lock::RepoLock;

/// Where and how to reach a bucket (what `repo-tool publish` parses from its flags).
#[derive(Debug, Clone, Default)]
pub struct BucketSpec {
    /// `s3://BUCKET[/PREFIX]`, `file:///DIR`, or `memory:///` (tests).
    pub url: String,
    /// An S3-compatible server's URL (`http://127.0.0.1:9000`, MinIO, Ceph, R2...); default: AWS,
    /// or `AWS_ENDPOINT_URL`/`AWS_ENDPOINT` from the environment. Path-style requests are used.
    pub endpoint: Option<String>,
    /// The region; default `AWS_REGION`/`AWS_DEFAULT_REGION` from the environment, else `us-east-1`.
    pub region: Option<String>,
    /// An AWS shared-credentials file (`[profile]` with `aws_access_key_id`, `aws_secret_access_key`,
    /// optionally `aws_session_token`); must not be readable by group or others. Without it the
    /// standard `AWS_*` environment variables are used (then instance or container credentials).
    pub credentials: Option<PathBuf>,
    /// The profile to read from `credentials` (default `default`).
    pub profile: Option<String>,
    /// Retries of each HTTP request by the store's client (with exponential backoff).
    pub request_retries: usize,
}

/// An opened bucket: the store, the prefix the repository lives under, and whether the store keeps
/// HTTP headers with objects (a local directory does not: its web server sets them).
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    stores_headers: bool,
}

impl Bucket {
    /// Opens the bucket `spec` names (no request is made yet).
    pub fn open(spec: &BucketSpec) -> Result<Bucket> {
        let url = url::Url::parse(&spec.url)
            .map_err(|e| invalid(format!("bucket URL {}", spec.url), e.to_string()))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&url)
            .map_err(|e| invalid(format!("bucket URL {}", spec.url), e.to_string()))?;
        let bad_scheme = || {
            invalid(
                format!("bucket URL {}", spec.url),
                "expected s3://BUCKET[/PREFIX] or file:///DIR",
            )
        };
        let (store, stores_headers): (Arc<dyn ObjectStore>, bool) = match scheme {
            ObjectStoreScheme::AmazonS3 => (Arc::new(s3_store(spec)?), true),
            ObjectStoreScheme::Local => {
                let (store, _) = object_store::parse_url(&url)
                    .map_err(|e| invalid(format!("bucket URL {}", spec.url), e.to_string()))?;
                (Arc::from(store), false)
            }
            ObjectStoreScheme::Memory => (Arc::new(object_store::memory::InMemory::new()), true),
            _ => return Err(bad_scheme()),
        };
        Ok(Bucket {
            store,
            prefix,
            stores_headers,
        })
    }

    /// A bucket over an already built store (tests, or a store this crate does not build).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, stores_headers: bool) -> Bucket {
        Bucket {
            store,
            prefix: ObjectPath::from(prefix),
            stores_headers,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where the repository file with relative key `key` lives in the bucket.
    pub fn location(&self, key: &str) -> ObjectPath {
        let mut parts: Vec<&str> = Vec::new();
        if !self.prefix.as_ref().is_empty() {
            parts.push(self.prefix.as_ref());
        }
        parts.push(key);
        ObjectPath::from(parts.join("/"))
    }
}

/// The S3 client: environment first, then the flags, then the credentials file.
fn s3_store(spec: &BucketSpec) -> Result<object_store::aws::AmazonS3> {
    let retry = RetryConfig {
        max_retries: spec.request_retries,
        retry_timeout: Duration::from_secs(180),
        ..RetryConfig::default()
    };
    // from_env reads AWS_ENDPOINT_URL (or AWS_ENDPOINT) too; plain HTTP only to an endpoint named so.
    let env_endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
    let endpoint = spec.endpoint.clone().or(env_endpoint.ok());
    let mut b = AmazonS3Builder::from_env()
        .with_url(spec.url.clone())
        .with_retry(retry);
    if let Some(endpoint) = endpoint {
        let http = endpoint.starts_with("http://");
        b = b.with_endpoint(endpoint).with_allow_http(http);
    }
    if let Some(region) = &spec.region {
        b = b.with_region(region);
    }
    if let Some(file) = &spec.credentials {
        let c = read_credentials(file, spec.profile.as_deref().unwrap_or("default"))?;
        b = b
            .with_access_key_id(c.access_key_id)
            .with_secret_access_key(c.secret_access_key);
        if let Some(token) = c.session_token {
            b = b.with_token(token);
        }
    }
    b.build().map_err(|e| Error::ObjectStore {
        action: "configure S3 client for",
        key: spec.url.clone(),
        source: Box::new(e),
    })
}

/// Keys read from a shared-credentials file.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// Reads `profile` from an AWS shared-credentials file (INI), refusing a file group or others can read.
fn read_credentials(path: &Path, profile: &str) -> Result<Credentials> {
    let mode = fs::metadata(path)
        .map_err(io("stat credentials file", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(invalid(
            format!("credentials file {}", path.display()),
            format!(
                "mode {:o} lets group or others read it; chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    let text = fs::read_to_string(path).map_err(io("read credentials file", path))?;
    let mut section = String::new();
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().trim_start_matches("profile ").to_owned();
        } else if let (true, Some((k, v))) = (section == profile, line.split_once('=')) {
            let v = Some(v.trim().to_owned());
            match k.trim() {
                "aws_access_key_id" => id = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        _ => Err(invalid(
            format!("credentials file {}", path.display()),
            format!("profile [{profile}] lacks aws_access_key_id or aws_secret_access_key"),
        )),
    }
}

/// How a publish runs.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// What to do with an immutable object of the wrong size in the bucket.
    pub mismatch: Mismatch,
    /// Objects uploaded at once (within one phase of the plan).
    pub jobs: usize,
    /// Bytes buffered per upload request: a file up to this size is one put, a larger one a multipart
    /// upload in parts of this size (S3 needs at least 5 MiB).
    pub part_size: usize,
    /// Parts of one file in flight at once.
    pub parts_in_flight: usize,
    /// Tries of each object (each HTTP request is retried by the store's client too).
    pub attempts: u32,
    /// Only plan: list the bucket and report what would be sent, sending nothing.
    pub dry_run: bool,
    /// Fault injection for tests: stop with [`Error::Interrupted`] once this many objects are sent,
    /// as a killed process would (later objects of the same phase may be sent too).
    pub interrupt_after: Option<usize>,
}

impl Default for PublishOptions {
    /// 4 objects at once, 8 MiB parts, 2 parts in flight (at most 96 MiB buffered), 3 tries.
    fn default() -> Self {
        PublishOptions {
            mismatch: Mismatch::Refuse,
            jobs: 4,
            part_size: 8 << 20,
            parts_in_flight: 2,
            attempts: 3,
            dry_run: false,
            interrupt_after: None,
        }
    }
}

/// An object sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentObject {
    /// Its key relative to the repository (and to the bucket prefix).
    pub key: String,
    /// Its length.
    pub len: u64,
}

/// What a publish did.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// Objects sent, in order (with `dry_run`: the objects that would be sent).
    pub sent: Vec<SentObject>,
    /// Keys among `sent` that replaced an object of the wrong size.
    pub repaired: Vec<String>,
    /// Files of the repository the bucket already held.
    pub unchanged: usize,
    /// Their bytes.
    pub unchanged_bytes: u64,
}

impl PublishReport {
    /// Bytes sent.
    pub fn sent_bytes(&self) -> u64 {
        self.sent.iter().map(|o| o.len).sum()
    }
}

/// Publishes the repository at `repo` to `bucket` (see the module doc). Holds the repository's lock
/// while it runs. On error the bucket still serves the repository it served before (plus, at most,
/// objects no metadata it serves names yet).
pub async fn publish_to_bucket(repo: &Path, bucket: &Bucket, opts: &PublishOptions) -> Result<PublishReport> {
    if opts.jobs == 0 || opts.part_size == 0 || opts.parts_in_flight == 0 || opts.attempts == 0 {
        return Err(invalid(
            "publish options",
            "jobs, part size, parts in flight and attempts must be above 0",
        ));
    }
    let _lock = RepoLock::acquire(repo, "publish")?;
    let state = RepoState::load(repo)?;
    let local = local::local_objects(repo, &state)?;
    let listing = upload::list_bucket(bucket, &local).await?;
    let plan = plan::plan(local, &listing, opts.mismatch)?;
    let sent = if opts.dry_run {
        plan.uploads
            .iter()
            .map(|o| SentObject {
                key: o.key.clone(),
                len: o.len,
            })
            .collect()
    } else {
        upload::send(bucket, &plan, opts).await?
    };
    Ok(PublishReport {
        sent,
        repaired: plan.repaired,
        unchanged: plan.unchanged,
        unchanged_bytes: plan.unchanged_bytes,
    })
}

/// [`publish_to_bucket`] on a runtime of its own, for callers without one (the command line).
pub fn publish_to_bucket_blocking(
    repo: &Path,
    bucket: &Bucket,
    opts: &PublishOptions,
) -> Result<PublishReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("start the async runtime for", repo))?;
    runtime.block_on(publish_to_bucket(repo, bucket, opts))
}
