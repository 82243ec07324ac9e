//! Offline bundles: one tar file holding a repository's signed metadata and some of its target files,
//! read by the client in place of HTTP ([`BundleSource`]), so an offline install runs the very same
//! verification as an online one (TUF 5.3 to 5.7: root rotation, signatures, thresholds, versions,
//! expiry, lengths and hashes).
//!
//! # Layout (what `repo-tool bundle` writes)
//! ```text
//! metadata/1.root.json .. N.root.json     the whole root chain (the device walks from the one it trusts)
//! metadata/timestamp.json
//! metadata/V.snapshot.json  V.targets.json  V.<role>.json   as a consistent-snapshot repository names them
//! targets/<dir>/<sha256>.<basename>       the release's image, its deltas, the rollout-control file
//! ```
//! Member names are exactly the paths the client would request under its metadata and targets base
//! URLs, so the client asks a bundle for the same names it asks a server.
//!
//! # Untrusted input
//! Nothing in the archive is trusted before TUF verifies it, and every size read from it is bounded:
//! at most [`MAX_MEMBERS`] members, each name at most [`MAX_NAME_LEN`] bytes, only regular files
//! (and directories, ignored), no absolute or `..` names, no duplicates; every member must lie wholly
//! inside the file, and the end-of-archive marker must follow the last one, so a truncated bundle is
//! refused when it is opened, naming the member it cuts. A metadata member is read only up to the
//! client's limit for its role, a target member only up to its signed length.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::{Error, Result};

/// The most members a bundle may hold (metadata files and target files together): room for a
/// repository delegating to 16,384 hash bins, while keeping the index (names of at most
/// [`MAX_NAME_LEN`]) to a few MiB.
pub const MAX_MEMBERS: usize = 20_000;
/// The longest member name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// The directory of metadata members.
pub const METADATA_DIR: &str = "metadata";
/// The directory of target members.
pub const TARGETS_DIR: &str = "targets";

/// Bytes of the end-of-archive marker: two zero blocks.
const END_MARKER: u64 = 1024;
/// A tar block.
const BLOCK: u64 = 512;

/// An opened bundle: its path and the index of its members (name, offset and size of each). The
/// file is opened again for each read, so the index is all that is kept in memory.
#[derive(Debug, Clone)]
pub struct BundleSource {
    path: PathBuf,
    members: HashMap<String, Member>,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    size: u64,
}

impl BundleSource {
    /// Opens `path` and indexes its members (see the module doc for what is refused). Nothing is
    /// verified yet: the client does that, member by member, as it would over HTTP.
    pub fn open(path: &Path) -> Result<BundleSource> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| malformed(path, format!("not a tar archive: {e}")))?;
        let mut members = HashMap::new();
        let mut last: Option<String> = None;
        let mut end = 0u64;
        for entry in entries {
            let entry = entry.map_err(|e| unreadable_after(path, last.as_deref(), &e))?;
            if members.len() >= MAX_MEMBERS {
                return Err(malformed(path, format!("more than {MAX_MEMBERS} members")));
            }
            let name = member_name(path, &entry)?;
            let kind = entry.header().entry_type();
            let (offset, size) = (entry.raw_file_position(), entry.size());
            let member_end = offset
                .checked_add(size)
                .ok_or_else(|| malformed(path, format!("member {name}: size {size} overflows")))?;
            if member_end > file_len {
                return Err(Error::BundleTruncated {
                    bundle: path.to_owned(),
                    member: name,
                    declared: size,
                    available: file_len.saturating_sub(offset),
                });
            }
            end = member_end.div_ceil(BLOCK).saturating_mul(BLOCK);
            if kind.is_dir() {
                last = Some(name);
                continue;
            }
            if !kind.is_file() {
                return Err(malformed(
                    path,
                    format!("member {name} is not a regular file (a bundle holds only files)"),
                ));
            }
            if members.insert(name.clone(), Member { offset, size }).is_some() {
                return Err(malformed(path, format!("member {name} appears twice")));
            }
            last = Some(name);
        }
        let archive_file = archive.into_inner();
        check_end_marker(path, archive_file, end, file_len, last.as_deref())?;
        Ok(BundleSource {
            path: path.to_owned(),
            members,
        })
    }

    /// The bundle's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the bundle holds the member `name` (`metadata/...` or `targets/...`).
    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// How many files the bundle holds.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the bundle holds no file.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Where a member is, for messages: `<bundle>:<member>`.
    pub(crate) fn location(&self, name: &str) -> String {
        format!("{}:{name}", self.path.display())
    }

    /// The member's bytes, at most `limit` of them; `None` when the bundle does not hold it.
    pub(crate) fn read(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some((mut reader, size)) = self.open_member(name, limit)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.check_complete(name, size, bytes.len() as u64)?;
        Ok(Some(bytes))
    }

    /// Streams the member into `sink` (at most `limit` bytes, its signed length), calling `inspect`
    /// on every chunk before it is written; `None` when the bundle does not hold it.
    pub(crate) async fn stream<W: AsyncWrite + Unpin>(
        &self,
        name: &str,
        target: &str,
        limit: u64,
        mut sink: W,
        mut inspect: impl FnMut(&[u8]),
    ) -> Result<Option<u64>> {
        let Some((mut reader, size)) = self.open_member(name, limit)? else {
            return Ok(None);
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::io(&self.path, e))?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            inspect(chunk);
            sink.write_all(chunk).await.map_err(|source| Error::Sink {
                target: target.to_string(),
                source,
            })?;
            written = written.saturating_add(n as u64);
        }
        sink.flush().await.map_err(|source| Error::Sink {
            target: target.to_string(),
            source,
        })?;
        self.check_complete(name, size, written)?;
        Ok(Some(written))
    }

    /// A reader over the member's bytes and its size; refuses one larger than `limit`.
    fn open_member(&self, name: &str, limit: u64) -> Result<Option<(std::io::Take<File>, u64)>> {
        let Some(member) = self.members.get(name).copied() else {
            return Ok(None);
        };
        if member.size > limit {
            return Err(Error::TooLarge {
                url: self.location(name),
                limit,
            });
        }
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        file.seek(SeekFrom::Start(member.offset))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(Some((file.take(member.size), member.size)))
    }

    /// The file shrank since it was indexed: say which member it cuts.
    fn check_complete(&self, name: &str, declared: u64, got: u64) -> Result<()> {
        if got == declared {
            return Ok(());
        }
        Err(Error::BundleTruncated {
            bundle: self.path.clone(),
            member: name.to_owned(),
            declared,
            available: got,
        })
    }
}

/// The member's name, normalised (`./` dropped), refusing absolute, `..`, non-UTF-8 and long names.
fn member_name<R: Read>(bundle: &Path, entry: &tar::Entry<'_, R>) -> Result<String> {
    let raw = entry.path_bytes();
    if raw.len() > MAX_NAME_LEN {
        return Err(malformed(
            bundle,
            format!("a member name is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    let text =
        std::str::from_utf8(&raw).map_err(|_| malformed(bundle, "a member name is not UTF-8".to_owned()))?;
    let mut parts = Vec::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::CurDir => {}
            _ => {
                return Err(malformed(
                    bundle,
                    format!("member {text:?} is absolute or leaves the archive (`..`)"),
                ))
            }
        }
    }
    Ok(parts.join("/"))
}

/// The archive must end with its end-of-archive marker right after the last member: a file cut at a
/// member boundary would otherwise look like a smaller, complete bundle.
fn check_end_marker(
    bundle: &Path,
    mut file: File,
    end: u64,
    file_len: u64,
    last: Option<&str>,
) -> Result<()> {
    let after = last.map_or_else(|| "at its start".to_owned(), |m| format!("after member {m}"));
    let missing = || Error::BundleTruncated {
        bundle: bundle.to_owned(),
        member: format!("(end-of-archive marker {after})"),
        declared: END_MARKER,
        available: file_len.saturating_sub(end),
    };
    if file_len < end.saturating_add(END_MARKER) {
        return Err(missing());
    }
    let mut marker = [0u8; 1024];
    file.seek(SeekFrom::Start(end))
        .and_then(|_| file.read_exact(&mut marker))
        .map_err(|e| Error::io(bundle, e))?;
    if marker.iter().any(|b| *b != 0) {
        return Err(missing());
    }
    Ok(())
}

fn malformed(bundle: &Path, reason: String) -> Error {
    Error::BundleMalformed {
        bundle: bundle.to_owned(),
        reason,
    }
}

/// A header that cannot be read: cut short (truncated), or not tar at all.
fn unreadable_after(bundle: &Path, last: Option<&str>, e: &std::io::Error) -> Error {
    let after = last.map_or_else(|| "its first member".to_owned(), |m| format!("member {m}"));
    if e.kind() == std::io::ErrorKind::UnexpectedEof || e.to_string().contains("entire block") {
        return Error::BundleTruncated {
            bundle: bundle.to_owned(),
            member: format!("(the header after {after})"),
            declared: BLOCK,
            available: 0,
        };
    }
    malformed(bundle, format!("unreadable header after {after}: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn bundle(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn open(bytes: &[u8]) -> Result<BundleSource> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar");
        std::fs::write(&path, bytes).unwrap();
        let opened = BundleSource::open(&path);
        drop(dir);
        opened
    }

    #[test]
    fn members_are_indexed_and_read_within_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar");
        let big = vec![7u8; 3000];
        std::fs::write(
            &path,
            bundle(&[("metadata/timestamp.json", b"{}"), ("./targets/x/a.bin", &big)]),
        )
        .unwrap();
        let b = BundleSource::open(&path).unwrap();
        assert_eq!(b.len(), 2);
        assert!(b.contains("targets/x/a.bin"));
        assert_eq!(b.read("metadata/timestamp.json", 10).unwrap().unwrap(), b"{}");
        assert!(b.read("metadata/1.root.json", 10).unwrap().is_none());
        let err = b.read("targets/x/a.bin", 2999).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 2999, .. }), "{err}");
    }

    #[test]
    fn a_truncated_bundle_is_refused_naming_the_member() {
        let bytes = bundle(&[
            ("metadata/timestamp.json", b"{}"),
            ("targets/fw.bin", &[1u8; 5000]),
        ]);
        // Cut inside the image's data.
        let err = open(&bytes[..2048]).unwrap_err().to_string();
        assert!(
            err.contains("targets/fw.bin") && err.contains("truncated"),
            "{err}"
        );
        // Cut at a member boundary: the end-of-archive marker is missing.
        let err = open(&bytes[..1024]).unwrap_err().to_string();
        assert!(err.contains("after member metadata/timestamp.json"), "{err}");
        // Not a tar at all.
        let err = open(&[0x55u8; 4096]).unwrap_err();
        assert!(matches!(err, Error::BundleMalformed { .. }), "{err}");
    }

    #[test]
    fn escaping_names_and_links_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "metadata/timestamp.json", "/etc/passwd")
            .unwrap();
        let err = open(&b.into_inner().unwrap()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let mut raw = bundle(&[("metadata/aa", b"{}")]);
        raw[..11].copy_from_slice(b"../etc/pass");
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        let err = open(&raw).unwrap_err().to_string();
        assert!(err.contains("leaves the archive"), "{err}");
    }
}
