//! `FileSlot`: a slot in a regular file or a Linux block device.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::slot::{check_geometry, check_range, len64, Slot};

/// A slot in a file or a block device (`/dev/mmcblk0p2`), with positional I/O (`pread`/`pwrite`).
///
/// Geometry: erase unit [`FileSlot::ERASE_SIZE`] (a page), write unit 1 byte. Files and block devices are
/// rewritten in place, so `erase` only checks bounds and alignment and changes nothing: reading an
/// "erased" range returns the old bytes (code that followed the [`Slot`] rules never reads it).
/// `sync` is `fdatasync`, which is what makes a written image durable before a trial boot is requested.
pub struct FileSlot {
    file: File,
    path: PathBuf,
    capacity: u64,
}

impl FileSlot {
    /// Erase unit of a file slot; capacities must be multiples of it.
    pub const ERASE_SIZE: u64 = 4096;

    /// Opens an existing file or block device as a slot of `capacity` bytes. Fails when the file or
    /// device is smaller than `capacity` or `capacity` is not a multiple of [`FileSlot::ERASE_SIZE`].
    pub fn open(path: impl AsRef<Path>, capacity: u64) -> Result<FileSlot> {
        let path = path.as_ref();
        check_geometry(capacity, Self::ERASE_SIZE, 1)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        // Block devices report size 0 in metadata; seeking to the end works for both.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("seek", path, e))?;
        if size < capacity {
            return Err(Error::Geometry {
                what: format!(
                    "{} holds {size} bytes, less than the slot capacity {capacity}",
                    path.display()
                ),
            });
        }
        Ok(FileSlot {
            file,
            path: path.to_owned(),
            capacity,
        })
    }

    /// Creates (or truncates) a regular file of `capacity` bytes, reading as zeros, and opens it (file and
    /// directory fsynced).
    pub fn create(path: impl AsRef<Path>, capacity: u64) -> Result<FileSlot> {
        let path = path.as_ref();
        check_geometry(capacity, Self::ERASE_SIZE, 1)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        file.set_len(capacity)
            .map_err(|e| Error::io("set_len", path, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
        // The new directory entry must survive a power cut too.
        ota_fs::sync_dir(ota_fs::parent_dir(path))?;
        Ok(FileSlot {
            file,
            path: path.to_owned(),
            capacity,
        })
    }

    /// The file or device path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Slot for FileSlot {
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn erase_size(&self) -> u64 {
        Self::ERASE_SIZE
    }
    fn write_size(&self) -> u64 {
        1
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range("read", offset, len64(buf.len()), self.capacity, 1)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("pread", &self.path, e))
    }
    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        check_range("erase", offset, len, self.capacity, Self::ERASE_SIZE)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        check_range("write", offset, len64(data.len()), self.capacity, 1)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("pwrite", &self.path, e))
    }
    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &self.path, e))
    }
}
