//! Carries out an [`UploadPlan`]: lists the bucket, then sends objects phase by phase (a phase starts
//! only when the one before has finished), a few at a time, each streamed from its file in parts of
//! bounded size, each retried.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::plan::{BucketListing, LocalObject, UploadPlan};
use super::{local::COMPARE_LIMIT, Bucket, PublishOptions, SentObject};
use crate::error::{io, Error, Result};

/// Lists everything under the bucket's prefix, and fetches its copies of the files in `local` that
/// are replaced in place (to compare their bytes).
pub(crate) async fn list_bucket(bucket: &Bucket, local: &[LocalObject]) -> Result<BucketListing> {
    let mut listing = BucketListing::default();
    let prefix = (!bucket.prefix.as_ref().is_empty()).then_some(&bucket.prefix);
    let mut objects = bucket.store.list(prefix);
    while let Some(meta) = objects
        .try_next()
        .await
        .map_err(store_error("list", bucket.prefix.as_ref()))?
    {
        if let Some(key) = relative_key(&bucket.prefix, &meta.location) {
            listing.sizes.insert(key, meta.size);
        }
    }
    let wanted = local.iter().filter(|o| o.bytes.is_some());
    for obj in wanted {
        match listing.sizes.get(&obj.key) {
            Some(&size) if size <= COMPARE_LIMIT => {
                let location = bucket.location(&obj.key);
                let got = bucket
                    .store
                    .get(&location)
                    .await
                    .map_err(store_error("get", location.as_ref()))?;
                let bytes = got.bytes().await.map_err(store_error("get", location.as_ref()))?;
                listing.replaced_in_place.insert(obj.key.clone(), bytes.to_vec());
            }
            _ => {}
        }
    }
    Ok(listing)
}

/// `location` relative to `prefix`, or `None` when it is not under it.
fn relative_key(prefix: &ObjectPath, location: &ObjectPath) -> Option<String> {
    let parts: Vec<String> = location
        .prefix_match(prefix)?
        .map(|p| p.as_ref().to_owned())
        .collect();
    Some(parts.join("/"))
}

/// Sends the plan's objects in order, phase by phase; stops at the first object that fails (after its
/// retries), or after `opts.interrupt_after` objects. Returns what was sent.
pub(crate) async fn send(
    bucket: &Bucket,
    plan: &UploadPlan,
    opts: &PublishOptions,
) -> Result<Vec<SentObject>> {
    let mut phases: Vec<Vec<&LocalObject>> = Vec::new();
    for obj in &plan.uploads {
        match phases.last_mut() {
            Some(p) if p.first().is_some_and(|f| f.class == obj.class) => p.push(obj),
            _ => phases.push(vec![obj]),
        }
    }
    let mut sent = Vec::new();
    for phase in phases {
        let mut uploads = stream::iter(phase)
            .map(|obj| async move { send_with_retries(bucket, obj, opts).await.map(|()| obj) })
            .buffered(opts.jobs.max(1));
        while let Some(done) = uploads.next().await {
            let obj = done?;
            sent.push(SentObject {
                key: obj.key.clone(),
                len: obj.len,
            });
            if opts.interrupt_after.is_some_and(|k| sent.len() >= k) {
                return Err(Error::Interrupted { sent: sent.len() });
            }
        }
    }
    Ok(sent)
}

/// One object, tried up to `opts.attempts` times (the store's client also retries each request).
async fn send_with_retries(bucket: &Bucket, obj: &LocalObject, opts: &PublishOptions) -> Result<()> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match send_one(bucket, obj, opts).await {
            Err(Error::ObjectStore { .. }) if attempt < opts.attempts => {
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Streams one file into its object: a single put when it fits in one part, else a multipart upload
/// (visible only once complete, so a reader never sees half an object).
async fn send_one(bucket: &Bucket, obj: &LocalObject, opts: &PublishOptions) -> Result<()> {
    let location = bucket.location(&obj.key);
    let mut writer = BufWriter::with_capacity(Arc::clone(&bucket.store), location.clone(), opts.part_size)
        .with_max_concurrency(opts.parts_in_flight);
    if bucket.stores_headers {
        writer = writer.with_attributes(headers(obj));
    }
    let copied = copy_file(obj, &location, &mut writer, opts.part_size).await;
    if let Err(e) = copied {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer.shutdown().await.map_err(put_error(&location))
}

/// Copies the file into the writer in reads of at most 1 MiB; refuses a file whose length changed
/// since it was listed.
async fn copy_file(
    obj: &LocalObject,
    location: &ObjectPath,
    writer: &mut BufWriter,
    part: usize,
) -> Result<()> {
    let mut file = tokio::fs::File::open(&obj.path)
        .await
        .map_err(io("open", &obj.path))?;
    let mut buf = vec![0u8; part.min(1 << 20)];
    let mut copied = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(io("read", &obj.path))?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        writer.write_all(chunk).await.map_err(put_error(location))?;
        copied += n as u64;
    }
    if copied != obj.len {
        return Err(Error::Repository {
            repo: obj.path.clone(),
            why: format!(
                "changed while it was uploaded: {copied} bytes read, {} listed",
                obj.len
            ),
        });
    }
    Ok(())
}

/// Maps a failed write into an object (the writer reports the store's error as an I/O error).
fn put_error(location: &ObjectPath) -> impl FnOnce(std::io::Error) -> Error {
    let key = location.to_string();
    move |source| Error::ObjectStore {
        action: "put",
        key,
        source: Box::new(source),
    }
}

/// `Content-Type` and `Cache-Control` for a CDN in front of the bucket.
fn headers(obj: &LocalObject) -> Attributes {
    let mut attrs = Attributes::new();
    attrs.insert(
        Attribute::ContentType,
        super::plan::ObjectClass::content_type(&obj.key).into(),
    );
    attrs.insert(Attribute::CacheControl, obj.class.cache_control().into());
    attrs
}

/// Maps an object-store error, naming the object.
pub(crate) fn store_error(action: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> Error {
    let key = key.to_owned();
    move |source| Error::ObjectStore {
        action,
        key,
        source: Box::new(source),
    }
}
