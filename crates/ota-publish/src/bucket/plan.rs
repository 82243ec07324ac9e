//! The upload plan: which of a repository's files a publish to object storage sends, in which order,
//! and with which HTTP headers. Pure: it compares a listing of the local repository with a listing
//! of the bucket and does no I/O.
//!
//! # Order (a client never sees metadata naming an object not yet uploaded)
//! A client enters a consistent-snapshot repository through `timestamp.json` (TUF 5.4) and, for root,
//! through `N.root.json` (TUF 5.3); everything else it reaches only through names they lead to. So:
//! 1. target files (content-addressed: `targets/<dir>/<sha256>.<basename>`),
//! 2. versioned metadata other than root (`V.snapshot.json`, `V.targets.json`, `V.<role>.json`),
//! 3. new roots (`N.root.json`, ascending: a client walks them one by one),
//! 4. other unversioned files under `metadata/`,
//! 5. `timestamp.json`, last.
//!
//! Until step 5 the bucket's old `timestamp.json` still names the old snapshot, which is still there
//! (nothing is ever deleted): an upload stopped anywhere leaves the previous repository served.
//!
//! # What is sent
//! Versioned and content-addressed names are immutable: present in the bucket means present, unless
//! its size differs (another repository published into the same bucket, or a corrupted object), which
//! is refused, or replaced with [`Mismatch::Repair`]. Unversioned files are sent when their bytes
//! differ. A bucket whose `timestamp.json` is newer than the repository's, or of the same version
//! with other bytes, is refused: publishing would roll its clients back or fork the repository.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::meta::{METADATA_DIR, TARGETS_DIR};

/// `Cache-Control` of objects whose name changes with their content: a CDN may keep them forever.
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of objects replaced in place: a CDN must revalidate them on every request.
pub const CACHE_REVALIDATE: &str = "no-cache";

/// What kind of repository file an object is; it decides its upload phase and its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectClass {
    /// A content-addressed target file (`targets/<dir>/<sha256>.<basename>`).
    Target,
    /// Versioned metadata other than root (`metadata/V.<role>.json`).
    VersionedMetadata,
    /// A root (`metadata/N.root.json`).
    Root,
    /// Any other file (under `metadata/`, or a target file not named by its hash): replaced in place.
    Unversioned,
    /// `metadata/timestamp.json`: the entry point, sent last.
    Timestamp,
}

impl ObjectClass {
    /// The class of the repository file at relative key `key` (`metadata/...` or `targets/...`), or
    /// `None` for a file outside what is served.
    pub fn of(key: &str) -> Option<ObjectClass> {
        if let Some(rest) = key.strip_prefix(&format!("{TARGETS_DIR}/")) {
            let base = rest.rsplit('/').next().unwrap_or(rest);
            return Some(if is_content_addressed(base) {
                ObjectClass::Target
            } else {
                ObjectClass::Unversioned
            });
        }
        let name = key.strip_prefix(&format!("{METADATA_DIR}/"))?;
        Some(match version_prefix(name) {
            _ if name == "timestamp.json" => ObjectClass::Timestamp,
            Some((_, "root.json")) => ObjectClass::Root,
            Some(_) => ObjectClass::VersionedMetadata,
            None => ObjectClass::Unversioned,
        })
    }

    /// Whether the object's name changes whenever its content does (so it may be cached forever).
    pub fn is_immutable(self) -> bool {
        matches!(
            self,
            ObjectClass::Target | ObjectClass::VersionedMetadata | ObjectClass::Root
        )
    }

    /// The `Cache-Control` header the object is stored with.
    pub fn cache_control(self) -> &'static str {
        if self.is_immutable() {
            CACHE_IMMUTABLE
        } else {
            CACHE_REVALIDATE
        }
    }

    /// The `Content-Type` header of the object at `key`.
    pub fn content_type(key: &str) -> &'static str {
        if key.starts_with(&format!("{METADATA_DIR}/")) && key.ends_with(".json") {
            "application/json"
        } else {
            "application/octet-stream"
        }
    }
}

/// `<64 hex>.<rest>`: the name repo-tool gives every target file (TUF 5.7.3, consistent snapshots).
fn is_content_addressed(base: &str) -> bool {
    match base.split_once('.') {
        Some((hash, rest)) => {
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !rest.is_empty()
        }
        None => false,
    }
}

/// `N.<rest>` with N a positive decimal version: (N, rest).
fn version_prefix(name: &str) -> Option<(u64, &str)> {
    let (n, rest) = name.split_once('.')?;
    let v: u64 = n.parse().ok()?;
    (v > 0 && n.bytes().all(|b| b.is_ascii_digit())).then_some((v, rest))
}

/// One file of the local repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalObject {
    /// Its key relative to the repository (and to the bucket prefix): `metadata/3.snapshot.json`.
    pub key: String,
    /// The file.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Its class.
    pub class: ObjectClass,
    /// Its bytes, for files replaced in place (compared with the bucket's copy); `None` otherwise, or
    /// when too large to compare (then it is always sent).
    pub bytes: Option<Vec<u8>>,
}

/// What the bucket holds under the repository's prefix.
#[derive(Debug, Clone, Default)]
pub struct BucketListing {
    /// Size of every object, by relative key.
    pub sizes: HashMap<String, u64>,
    /// The bytes of the bucket's copies of files replaced in place (unversioned metadata present on
    /// both sides), by relative key.
    pub replaced_in_place: HashMap<String, Vec<u8>>,
}

/// What to do with an immutable object whose size in the bucket differs from the local file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mismatch {
    /// Stop before sending anything (the default: the bucket may hold another repository).
    #[default]
    Refuse,
    /// Send the local file over it.
    Repair,
}

/// The objects to send, in order, and what was left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadPlan {
    /// To send, in this order (phases by [`ObjectClass`], each sorted).
    pub uploads: Vec<LocalObject>,
    /// Keys among `uploads` that replace an object of the wrong size ([`Mismatch::Repair`]).
    pub repaired: Vec<String>,
    /// Local files the bucket already holds.
    pub unchanged: usize,
    /// Their bytes.
    pub unchanged_bytes: u64,
}

/// Plans the upload of `local` into a bucket holding `bucket` (see the module doc for the rules).
pub fn plan(local: Vec<LocalObject>, bucket: &BucketListing, mismatch: Mismatch) -> Result<UploadPlan> {
    check_timestamp_not_newer(&local, bucket)?;
    let mut out = UploadPlan::default();
    for obj in local {
        match (bucket.sizes.get(&obj.key), obj.class.is_immutable()) {
            (None, _) => out.uploads.push(obj),
            (Some(&size), true) if size == obj.len => {
                out.unchanged += 1;
                out.unchanged_bytes += obj.len;
            }
            (Some(&size), true) => {
                if mismatch == Mismatch::Refuse {
                    return Err(Error::BucketConflict {
                        key: obj.key,
                        why: format!(
                            "the bucket's object is {size} bytes, the repository's file {} bytes, and \
                             this name never changes content: the bucket holds another repository or a \
                             damaged object (pass --repair to replace it)",
                            obj.len
                        ),
                    });
                }
                out.repaired.push(obj.key.clone());
                out.uploads.push(obj);
            }
            (Some(_), false) => match (&obj.bytes, bucket.replaced_in_place.get(&obj.key)) {
                (Some(ours), Some(theirs)) if ours == theirs => {
                    out.unchanged += 1;
                    out.unchanged_bytes += obj.len;
                }
                _ => out.uploads.push(obj),
            },
        }
    }
    out.uploads.sort_by(|a, b| upload_order(a).cmp(&upload_order(b)));
    Ok(out)
}

/// Sort key: phase, then (roots) version, then name.
fn upload_order(o: &LocalObject) -> (ObjectClass, u64, &str) {
    let version = match o.class {
        ObjectClass::Root => o
            .key
            .rsplit('/')
            .next()
            .and_then(version_prefix)
            .map_or(0, |(v, _)| v),
        _ => 0,
    };
    (o.class, version, o.key.as_str())
}

/// Refuses to replace the bucket's `timestamp.json` by an older one, or by another of the same version.
fn check_timestamp_not_newer(local: &[LocalObject], bucket: &BucketListing) -> Result<()> {
    let key = format!("{METADATA_DIR}/timestamp.json");
    let Some(remote) = bucket.replaced_in_place.get(&key) else {
        return Ok(());
    };
    let Some(ours) = local.iter().find(|o| o.key == key).and_then(|o| o.bytes.as_ref()) else {
        return Ok(());
    };
    let (theirs_v, ours_v) = (timestamp_version(remote), timestamp_version(ours));
    let why = match (theirs_v, ours_v) {
        (Some(t), Some(o)) if t > o => format!(
            "the bucket's timestamp.json is version {t}, newer than the repository's {o}: another copy \
             of the repository was published there; publishing this one would roll its clients back"
        ),
        (Some(t), Some(o)) if t == o && remote != ours => format!(
            "the bucket's timestamp.json is version {t} like the repository's, with other bytes: \
             another copy of the repository was published there"
        ),
        (None, _) => "the bucket's timestamp.json is not TUF timestamp metadata".to_owned(),
        _ => return Ok(()),
    };
    Err(Error::BucketConflict { key, why })
}

/// `signed.version` of timestamp metadata.
fn timestamp_version(bytes: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("signed")?.get("version")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn obj(key: &str, len: u64) -> LocalObject {
        let class = ObjectClass::of(key).unwrap();
        let bytes = (!class.is_immutable()).then(|| vec![b'x'; len as usize]);
        LocalObject {
            key: key.into(),
            path: PathBuf::from("/repo").join(key),
            len,
            class,
            bytes,
        }
    }

    fn timestamp(version: u64, pad: &str) -> LocalObject {
        let bytes = format!(r#"{{"signed":{{"version":{version}}},"pad":"{pad}"}}"#).into_bytes();
        LocalObject {
            len: bytes.len() as u64,
            bytes: Some(bytes),
            ..obj("metadata/timestamp.json", 0)
        }
    }

    fn keys(p: &UploadPlan) -> Vec<&str> {
        p.uploads.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn classes_follow_the_names_repo_tool_writes() {
        let t = format!("targets/gw-a/stable/{SHA}.fw-2.0.0.bin");
        assert_eq!(ObjectClass::of(&t), Some(ObjectClass::Target));
        assert_eq!(
            ObjectClass::of(&format!("targets/{SHA}.plain.bin")),
            Some(ObjectClass::Target)
        );
        assert_eq!(
            ObjectClass::of("targets/readme.txt"),
            Some(ObjectClass::Unversioned)
        );
        assert_eq!(
            ObjectClass::of("metadata/12.snapshot.json"),
            Some(ObjectClass::VersionedMetadata)
        );
        assert_eq!(
            ObjectClass::of("metadata/3.bin-0a.json"),
            Some(ObjectClass::VersionedMetadata)
        );
        assert_eq!(ObjectClass::of("metadata/2.root.json"), Some(ObjectClass::Root));
        assert_eq!(
            ObjectClass::of("metadata/timestamp.json"),
            Some(ObjectClass::Timestamp)
        );
        assert_eq!(
            ObjectClass::of("metadata/root.json"),
            Some(ObjectClass::Unversioned)
        );
        assert_eq!(
            ObjectClass::of("metadata/0.root.json"),
            Some(ObjectClass::Unversioned)
        );
        assert_eq!(ObjectClass::of(".repo-tool.lock"), None);
        assert_eq!(ObjectClass::of(&t).unwrap().cache_control(), CACHE_IMMUTABLE);
        assert_eq!(ObjectClass::Timestamp.cache_control(), "no-cache");
        assert_eq!(
            ObjectClass::content_type("metadata/timestamp.json"),
            "application/json"
        );
        assert_eq!(ObjectClass::content_type(&t), "application/octet-stream");
    }

    #[test]
    fn targets_then_versioned_metadata_then_roots_then_unversioned_and_timestamp_last() {
        let local = vec![
            timestamp(3, ""),
            obj("metadata/root.json", 5),
            obj("metadata/10.root.json", 5),
            obj("metadata/2.root.json", 5),
            obj("metadata/3.snapshot.json", 5),
            obj(&format!("targets/b/{SHA}.fw.bin"), 9),
            obj("metadata/3.targets.json", 5),
            obj(&format!("targets/a/{SHA}.fw.bin"), 9),
        ];
        let p = plan(local, &BucketListing::default(), Mismatch::Refuse).unwrap();
        assert_eq!(
            keys(&p),
            [
                format!("targets/a/{SHA}.fw.bin").as_str(),
                &format!("targets/b/{SHA}.fw.bin"),
                "metadata/3.snapshot.json",
                "metadata/3.targets.json",
                "metadata/2.root.json",
                "metadata/10.root.json",
                "metadata/root.json",
                "metadata/timestamp.json",
            ]
        );
    }

    #[test]
    fn only_what_the_bucket_lacks_is_sent() {
        let old = timestamp(2, "old");
        let new = timestamp(3, "new");
        let mut bucket = BucketListing::default();
        bucket.sizes.insert(format!("targets/a/{SHA}.fw.bin"), 9);
        bucket.sizes.insert("metadata/2.snapshot.json".into(), 5);
        bucket.sizes.insert(old.key.clone(), old.len);
        bucket
            .replaced_in_place
            .insert(old.key.clone(), old.bytes.clone().unwrap());
        let local = vec![
            obj(&format!("targets/a/{SHA}.fw.bin"), 9),
            obj("metadata/2.snapshot.json", 5),
            obj("metadata/3.snapshot.json", 5),
            new.clone(),
        ];
        let p = plan(local.clone(), &bucket, Mismatch::Refuse).unwrap();
        assert_eq!(keys(&p), ["metadata/3.snapshot.json", "metadata/timestamp.json"]);
        assert_eq!((p.unchanged, p.unchanged_bytes), (2, 14));

        // Published already: nothing to send, not even the timestamp.
        bucket.sizes.insert("metadata/3.snapshot.json".into(), 5);
        bucket
            .replaced_in_place
            .insert(new.key.clone(), new.bytes.clone().unwrap());
        let p = plan(local, &bucket, Mismatch::Refuse).unwrap();
        assert!(p.uploads.is_empty(), "{p:?}");
        assert_eq!(p.unchanged, 4);
    }

    #[test]
    fn a_size_mismatch_is_refused_unless_repair_is_asked() {
        let mut bucket = BucketListing::default();
        bucket.sizes.insert("metadata/2.targets.json".into(), 4);
        let local = vec![obj("metadata/2.targets.json", 5)];
        let err = plan(local.clone(), &bucket, Mismatch::Refuse).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("metadata/2.targets.json") && msg.contains("4 bytes"),
            "{msg}"
        );
        let p = plan(local, &bucket, Mismatch::Repair).unwrap();
        assert_eq!(keys(&p), ["metadata/2.targets.json"]);
        assert_eq!(p.repaired, ["metadata/2.targets.json"]);
    }

    #[test]
    fn a_newer_or_forked_timestamp_in_the_bucket_is_refused() {
        for (theirs, why) in [(timestamp(4, ""), "newer"), (timestamp(3, "fork"), "other bytes")] {
            let mut bucket = BucketListing::default();
            bucket.sizes.insert(theirs.key.clone(), theirs.len);
            bucket
                .replaced_in_place
                .insert(theirs.key.clone(), theirs.bytes.clone().unwrap());
            let err = plan(vec![timestamp(3, "")], &bucket, Mismatch::Repair).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}
