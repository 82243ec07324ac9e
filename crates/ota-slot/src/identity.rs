//! Slot identity: whether two configured slot paths are one object on disk, whatever their spelling.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

/// What two paths both name, when they name one object: `"file (device D, inode I)"` or
/// `"block device (major:minor M:m)"`. `Ok(None)` when they differ or either does not exist yet (a
/// missing slot cannot alias one that exists; it is refused when opened). Symlinks and `..` are
/// followed (the kernel resolves them, so this compares what a write would reach).
pub fn same_object(a: &Path, b: &Path) -> std::io::Result<Option<String>> {
    let (Some(ma), Some(mb)) = (metadata(a)?, metadata(b)?) else {
        return Ok(None);
    };
    if ma.file_type().is_block_device() && mb.file_type().is_block_device() && ma.rdev() == mb.rdev() {
        let (major, minor) = (libc_major(ma.rdev()), libc_minor(ma.rdev()));
        return Ok(Some(format!("block device (major:minor {major}:{minor})")));
    }
    if ma.dev() == mb.dev() && ma.ino() == mb.ino() {
        return Ok(Some(format!("file (device {}, inode {})", ma.dev(), ma.ino())));
    }
    Ok(None)
}

fn metadata(path: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// The major number of a Linux `dev_t` (glibc's `gnu_dev_major` encoding).
fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff)
}

/// The minor number of a Linux `dev_t`.
fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_symlinks_are_one_object() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("slot-a.img");
        let b = dir.path().join("slot-b.img");
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        std::fs::create_dir(dir.path().join("alias")).unwrap();
        assert_eq!(same_object(&a, &b).unwrap(), None);
        let dotted = dir.path().join("alias/../alias/../slot-a.img");
        assert!(same_object(&a, &dotted).unwrap().unwrap().starts_with("file"));
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(same_object(&a, &link).unwrap().is_some());
        assert_eq!(same_object(&a, &dir.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn dev_t_splits_like_glibc() {
        // makedev(179, 2) (mmcblk0p2) and makedev(259, 65537).
        assert_eq!((libc_major(0xb302), libc_minor(0xb302)), (179, 2));
        let dev: u64 = (259 & 0xfff) << 8 | (65537 & 0xff) | ((65537 & !0xff) << 12);
        assert_eq!((libc_major(dev), libc_minor(dev)), (259, 65537));
    }
}
