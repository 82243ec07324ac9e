//! Target files on their way in: each image is streamed once (fixed 256 KiB buffer, so memory does
//! not grow with image size) into a temp file inside the repository while its SHA-256 and length are
//! computed. The staging directory is removed when the [`TargetStager`] is dropped, published or not.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io, Error, Result};

const BUF_LEN: usize = 256 * 1024;

/// An image copied into the staging directory.
#[derive(Debug, Clone)]
pub(crate) struct StagedFile {
    pub temp: PathBuf,
    pub sha256: [u8; 32],
    pub length: u64,
}

/// A temp directory inside the repository (same file system, so publishing is a rename).
#[derive(Debug)]
pub(crate) struct TargetStager {
    dir: PathBuf,
    count: usize,
    buf: Vec<u8>,
}

impl TargetStager {
    pub fn new(repo: &Path) -> Result<TargetStager> {
        let dir = repo.join(format!(".repo-tool-staging-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io("remove stale staging directory", &dir))?;
        }
        fs::create_dir(&dir).map_err(io("create staging directory", &dir))?;
        Ok(TargetStager {
            dir,
            count: 0,
            buf: vec![0; BUF_LEN],
        })
    }

    /// Copies `image` into staging, hashing as it goes (each byte read once).
    pub fn stage(&mut self, image: &Path) -> Result<StagedFile> {
        let unreadable = |source| Error::Io {
            action: "read image",
            path: image.to_owned(),
            source,
        };
        let mut src = fs::File::open(image).map_err(unreadable)?;
        if !src.metadata().map_err(unreadable)?.is_file() {
            return Err(Error::InvalidInput {
                what: format!("image {}", image.display()),
                why: "not a regular file".into(),
            });
        }
        self.count += 1;
        let temp = self.dir.join(format!("{}", self.count));
        let mut dst = fs::File::create(&temp).map_err(io("create", &temp))?;
        let mut hasher = Sha256::new();
        let mut length = 0u64;
        loop {
            let n = src.read(&mut self.buf).map_err(unreadable)?;
            if n == 0 {
                break;
            }
            let chunk = self.buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            dst.write_all(chunk).map_err(io("write", &temp))?;
            length += n as u64;
        }
        // Not fsynced here: `Publication::commit` makes all staged files durable at once.
        Ok(StagedFile {
            temp,
            sha256: hasher.finalize().into(),
            length,
        })
    }

    /// Writes `bytes` (a generated file such as a delta) into staging.
    pub fn stage_bytes(&mut self, bytes: &[u8]) -> Result<StagedFile> {
        self.count += 1;
        let temp = self.dir.join(format!("{}", self.count));
        fs::File::create(&temp)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(io("write", &temp))?;
        Ok(StagedFile {
            temp,
            sha256: Sha256::digest(bytes).into(),
            length: bytes.len() as u64,
        })
    }
}

impl Drop for TargetStager {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Where a target file lives: `targets/<dir>/<sha256-hex>.<basename>` (TUF 5.7.3 with consistent
/// snapshots: the hash prefixes the file name, not the whole path).
pub fn target_file_path(name: &str, sha256: &[u8; 32]) -> PathBuf {
    let (dir, base) = match name.rsplit_once('/') {
        Some((d, b)) => (Some(d), b),
        None => (None, name),
    };
    let mut p = PathBuf::from(crate::meta::TARGETS_DIR);
    if let Some(d) = dir {
        p.push(d);
    }
    p.push(format!("{}.{base}", hex::encode(sha256)));
    p
}
