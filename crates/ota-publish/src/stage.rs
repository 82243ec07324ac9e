//! Target files on their way in. Each image is read once, hashed as it is read, and written under
//! its final, content-addressed name `targets/<dir>/<sha256-hex>.<basename>` (TUF 5.7.3 with
//! consistent snapshots) before any metadata names it.
//!
//! Why no temp name + rename for most files: a client only asks for a target file after signed
//! metadata lists its name and hash, and that metadata is published later, `timestamp.json` last. So
//! a file under its final name that is still being written is never seen by a client. A file whose
//! bytes fit in the read buffer (256 KiB: every small image, every delta) is hashed in memory and
//! created under its final name directly: one create and one write, no rename, no staging directory
//! (for 10,000 small targets that is 10,000 renames and a 10,000-entry directory fewer). A larger
//! image is streamed into a temp file next to its final name (memory stays at one buffer whatever the
//! image size; all-zero blocks become holes, so a sparse file-system image stays sparse) and linked
//! to its final name once its hash is known.
//!
//! A file found already under its final name (same bytes published before, or left by a command that
//! was killed mid-write) is re-hashed and kept only if its bytes match its name; otherwise it is
//! removed and written again (no client asks for it: no published metadata names those bytes).
//!
//! This is the target half of `crate::store::DirStore`. Everything a [`TargetStager`] creates (files
//! and directories) is removed when it is dropped, unless [`TargetStager::keep`] was called after a
//! successful publish. Nothing is fsynced here: `DirStore::flush` makes the new files durable (an
//! fsync each, or one `syncfs` for bulk adds).

use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::digest::{hash_file, read_full};
use crate::error::{io, Error, Result};

/// Read buffer; files up to this size are hashed in memory and written once under their final name.
const BUF_LEN: usize = 256 * 1024;

/// A target file under its final name in the repository.
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// Where the store put it: `<repo>/targets/<dir>/<sha256-hex>.<basename>` for a directory.
    pub path: PathBuf,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
    /// Its length in bytes.
    pub length: u64,
}

/// Writes target files under their final names and removes what it created unless kept.
#[derive(Debug)]
pub(crate) struct TargetStager {
    repo: PathBuf,
    buf: Vec<u8>,
    /// Target files this stager created (removed on drop unless kept).
    new_files: Vec<PathBuf>,
    /// Damaged files this stager replaced (kept: their bytes now match their names).
    replaced_files: Vec<PathBuf>,
    /// Directories this stager created, parents first (removed on drop unless kept).
    new_dirs: Vec<PathBuf>,
    /// Directories known to exist: one `mkdir` per directory per command at most.
    known_dirs: HashSet<PathBuf>,
    kept: bool,
}

impl TargetStager {
    pub fn new(repo: &Path) -> TargetStager {
        TargetStager {
            repo: repo.to_owned(),
            buf: Vec::new(),
            new_files: Vec::new(),
            replaced_files: Vec::new(),
            new_dirs: Vec::new(),
            known_dirs: HashSet::new(),
            kept: false,
        }
    }

    /// Target files written so far (created or replaced): the ones to make durable.
    pub fn written_files(&self) -> Vec<PathBuf> {
        self.new_files
            .iter()
            .chain(&self.replaced_files)
            .cloned()
            .collect()
    }

    /// Directories created so far, parents first.
    pub fn new_dirs(&self) -> &[PathBuf] {
        &self.new_dirs
    }

    /// The publish succeeded: keep every file and directory created.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Removes every file and directory created so far (an aborted publish).
    pub fn remove_written(&mut self) {
        for f in self.new_files.drain(..).rev() {
            let _ = fs::remove_file(f);
        }
        for d in self.new_dirs.drain(..).rev() {
            let _ = fs::remove_dir(&d);
            self.known_dirs.remove(&d);
        }
    }

    /// Copies `image` to the final path of target `name`, hashing as it goes (each byte read once).
    pub fn stage(&mut self, image: &Path, name: &str) -> Result<StagedFile> {
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
        let (dir, base) = self.target_dir(name)?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(BUF_LEN, 0);
        let result = (|| {
            let filled = read_full(&mut src, &mut buf).map_err(unreadable)?;
            let head = buf.get(..filled).unwrap_or_default();
            if filled < BUF_LEN {
                return self.place_bytes(&dir, base, head);
            }
            self.stream_large(&dir, base, &mut src, &mut buf, unreadable)
        })();
        self.buf = buf;
        result
    }

    /// Writes `bytes` (a generated file such as a delta) to the final path of target `name`.
    pub fn stage_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<StagedFile> {
        let (dir, base) = self.target_dir(name)?;
        self.place_bytes(&dir, base, bytes)
    }

    /// The (created if missing) directory of target `name` and its basename.
    fn target_dir<'n>(&mut self, name: &'n str) -> Result<(PathBuf, &'n str)> {
        let (dir, base) = match name.rsplit_once('/') {
            Some((d, b)) => (self.repo.join(crate::meta::TARGETS_DIR).join(d), b),
            None => (self.repo.join(crate::meta::TARGETS_DIR), name),
        };
        self.ensure_dir(&dir)?;
        Ok((dir, base))
    }

    /// `mkdir -p`, recording what it created. The common case (parent exists, directory new) is a
    /// single `mkdir` call.
    fn ensure_dir(&mut self, dir: &Path) -> Result<()> {
        if self.known_dirs.contains(dir) {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut d = dir;
        loop {
            match fs::create_dir(d) {
                Ok(()) => {
                    self.new_dirs.push(d.to_owned());
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => break,
                Err(e) if e.kind() == ErrorKind::NotFound => match d.parent() {
                    Some(p) if !p.as_os_str().is_empty() => {
                        missing.push(d);
                        d = p;
                    }
                    _ => return Err(io("create directory", d)(e)),
                },
                Err(e) => return Err(io("create directory", d)(e)),
            }
        }
        for m in missing.into_iter().rev() {
            fs::create_dir(m).map_err(io("create directory", m))?;
            self.new_dirs.push(m.to_owned());
        }
        self.known_dirs.insert(dir.to_owned());
        Ok(())
    }

    /// Creates `dir/<sha256>.<base>` holding `bytes` (fully in memory, so the hash is known first).
    fn place_bytes(&mut self, dir: &Path, base: &str, bytes: &[u8]) -> Result<StagedFile> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let staged = StagedFile {
            path: dir.join(format!("{}.{base}", hex::encode(sha256))),
            sha256,
            length: bytes.len() as u64,
        };
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged.path)
        {
            Ok(mut f) => {
                // Recorded before writing, so a failed write leaves nothing behind.
                self.new_files.push(staged.path.clone());
                f.write_all(bytes).map_err(io("write", &staged.path))?;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.reuse_or_replace(&staged, |dest| fs::write(dest, bytes).map_err(io("write", dest)))?;
            }
            Err(e) => return Err(io("create", &staged.path)(e)),
        }
        Ok(staged)
    }

    /// Streams the rest of a large image into a temp file in `dir` (the first `BUF_LEN` bytes are in
    /// `buf`), then links it to its content-addressed name.
    fn stream_large(
        &mut self,
        dir: &Path,
        base: &str,
        src: &mut fs::File,
        buf: &mut [u8],
        unreadable: impl Fn(std::io::Error) -> Error,
    ) -> Result<StagedFile> {
        let tmp = TempFile::create(dir, base)?;
        let mut hasher = Sha256::new();
        let mut length = 0u64;
        let mut n = buf.len();
        let mut dst = &tmp.file;
        while n > 0 {
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            // All-zero blocks become holes: a file-system image is mostly empty space, and a
            // sparse copy of it costs only its data on disk (the bytes served are the same).
            if chunk.iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(n as i64))
                    .map_err(io("seek", &tmp.path))?;
            } else {
                dst.write_all(chunk).map_err(io("write", &tmp.path))?;
            }
            length += n as u64;
            n = read_full(src, buf).map_err(&unreadable)?;
        }
        // A trailing hole has no bytes written: the length is set explicitly.
        tmp.file.set_len(length).map_err(io("write", &tmp.path))?;
        let sha256: [u8; 32] = hasher.finalize().into();
        let staged = StagedFile {
            path: dir.join(format!("{}.{base}", hex::encode(sha256))),
            sha256,
            length,
        };
        // hard_link refuses to replace an existing file: the same bytes may be published already.
        match fs::hard_link(&tmp.path, &staged.path) {
            Ok(()) => self.new_files.push(staged.path.clone()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.reuse_or_replace(&staged, |dest| {
                    fs::hard_link(&tmp.path, dest).map_err(io("link", dest))
                })?;
            }
            Err(e) => return Err(io("link target file into place", &staged.path)(e)),
        }
        Ok(staged)
    }

    /// `staged.path` exists already. Kept if its bytes are what its name says (published before);
    /// otherwise (a leftover of a command killed mid-write) removed and written again by `fill`. No
    /// client reads it in between: no published metadata names a file with the wrong bytes.
    fn reuse_or_replace(
        &mut self,
        staged: &StagedFile,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let buf = &mut self.buf;
        buf.resize(BUF_LEN, 0);
        let found = hash_file(&staged.path, buf).map_err(io("read", &staged.path))?;
        if found == (staged.length, staged.sha256) {
            return Ok(());
        }
        fs::remove_file(&staged.path).map_err(io("remove a damaged target file", &staged.path))?;
        fill(&staged.path)?;
        self.replaced_files.push(staged.path.clone());
        Ok(())
    }
}

impl Drop for TargetStager {
    fn drop(&mut self) {
        if !self.kept {
            self.remove_written();
        }
    }
}

/// A temp file next to a target file's final path, removed when dropped.
struct TempFile {
    path: PathBuf,
    file: fs::File,
}

impl TempFile {
    fn create(dir: &Path, base: &str) -> Result<TempFile> {
        // Target names never start with '.', so this cannot collide with a target file.
        let path = dir.join(format!(".{base}.tmp-{}", std::process::id()));
        let file = fs::File::create(&path).map_err(io("create", &path))?;
        Ok(TempFile { path, file })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_files_land_under_their_content_address_and_are_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        fs::create_dir(&repo).unwrap();
        let small = dir.path().join("small.bin");
        fs::write(&small, b"small image").unwrap();
        let large = dir.path().join("large.bin");
        let big: Vec<u8> = (0..BUF_LEN * 2 + 7).map(|i| (i % 251) as u8).collect();
        fs::write(&large, &big).unwrap();

        let mut stager = TargetStager::new(&repo);
        let s = stager.stage(&small, "hw/stable/1.0.0/small.bin").unwrap();
        let l = stager.stage(&large, "hw/stable/2.0.0/large.bin").unwrap();
        let d = stager
            .stage_bytes("hw/stable/2.0.0/deltas/1.0.0.delta", b"delta")
            .unwrap();
        for (f, bytes, name) in [
            (&s, &b"small image"[..], "hw/stable/1.0.0/small.bin"),
            (&l, &big[..], "hw/stable/2.0.0/large.bin"),
            (&d, &b"delta"[..], "hw/stable/2.0.0/deltas/1.0.0.delta"),
        ] {
            assert_eq!(f.sha256, <[u8; 32]>::from(Sha256::digest(bytes)));
            assert_eq!(f.length, bytes.len() as u64);
            assert_eq!(f.path, repo.join(target_file_path(name, &f.sha256)));
            assert_eq!(fs::read(&f.path).unwrap(), bytes);
        }
        assert_eq!(
            stager.written_files(),
            [s.path.clone(), l.path.clone(), d.path.clone()]
        );
        // No temp file is left next to the large one.
        assert_eq!(fs::read_dir(l.path.parent().unwrap()).unwrap().count(), 2);
        drop(stager);
        assert_eq!(
            fs::read_dir(&repo).unwrap().count(),
            0,
            "everything created was removed"
        );

        let mut stager = TargetStager::new(&repo);
        let s = stager.stage(&small, "hw/stable/1.0.0/small.bin").unwrap();
        stager.keep();
        assert_eq!(fs::read(&s.path).unwrap(), b"small image");
    }

    #[test]
    fn a_damaged_file_under_a_target_name_is_replaced_and_a_good_one_reused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().to_owned();
        let image = dir.path().join("fw.bin");
        fs::write(&image, b"firmware").unwrap();
        let sha: [u8; 32] = Sha256::digest(b"firmware").into();
        let dest = repo.join(target_file_path("a/fw.bin", &sha));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();

        // A torn write left by a killed command: replaced.
        fs::write(&dest, b"firm").unwrap();
        let mut stager = TargetStager::new(&repo);
        stager.stage(&image, "a/fw.bin").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"firmware");
        assert_eq!(
            stager.written_files(),
            std::slice::from_ref(&dest),
            "replaced, not created"
        );
        drop(stager);
        // The same bytes published before: reused and left in place when the stager is dropped.
        let mut stager = TargetStager::new(&repo);
        stager.stage(&image, "a/fw.bin").unwrap();
        drop(stager);
        assert_eq!(fs::read(&dest).unwrap(), b"firmware");
    }
}
