//! The `Slot` trait and what works over any slot: sequential writer, reader, digest.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One of the two A/B slots. Displays and parses as `a` / `b` (the spelling used in bootloader
/// environments and on the kernel command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotId {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl SlotId {
    /// The other slot: the inactive one when `self` is running.
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    /// `"a"` or `"b"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotId::A => "a",
            SlotId::B => "b",
        }
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`SlotId`]: the text that is neither `a` nor `b`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a slot (expected `a` or `b`)")]
pub struct ParseSlotIdError(pub String);

impl FromStr for SlotId {
    type Err = ParseSlotIdError;
    fn from_str(s: &str) -> std::result::Result<SlotId, ParseSlotIdError> {
        match s {
            "a" | "A" => Ok(SlotId::A),
            "b" | "B" => Ok(SlotId::B),
            other => Err(ParseSlotIdError(other.to_owned())),
        }
    }
}

/// A region that holds one firmware image.
///
/// Offsets are `u64` (images and block devices outgrow `u32`). Reads work at any offset and length.
/// `erase` takes ranges aligned to [`Slot::erase_size`]; `write` takes ranges aligned to
/// [`Slot::write_size`] and, on NOR flash, only erased memory, each word once between erases. Code written
/// against this trait follows the NOR rules, so it is correct on files (which forgive more) as well.
pub trait Slot {
    /// Size of the slot in bytes (a multiple of `erase_size`).
    fn capacity(&self) -> u64;
    /// Erase unit in bytes (a multiple of `write_size`).
    fn erase_size(&self) -> u64;
    /// Write unit in bytes.
    fn write_size(&self) -> u64;
    /// The byte value erased memory reads as (0xFF on most NOR; never assume it: ask).
    fn erased_value(&self) -> u8 {
        0xFF
    }
    /// Bytes per write [`SlotWriter`] gathers before writing (rounded to the write unit; capped at
    /// [`WRITE_CHUNK`]). Files want big writes (few syscalls); NOR flash works sector by sector, so
    /// [`crate::NorFlashSlot`] answers its erase unit, which also makes every sector one power-cut point.
    fn preferred_chunk(&self) -> u64 {
        len64(WRITE_CHUNK)
    }
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Erases `offset..offset + len` (both aligned to `erase_size`).
    fn erase(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Writes `data` at `offset` (both aligned to `write_size`; erased memory only).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// Makes everything written so far durable (fsync for files; a no-op for flash).
    fn sync(&mut self) -> Result<()>;
}

impl<S: Slot + ?Sized> Slot for &mut S {
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn erase_size(&self) -> u64 {
        (**self).erase_size()
    }
    fn write_size(&self) -> u64 {
        (**self).write_size()
    }
    fn erased_value(&self) -> u8 {
        (**self).erased_value()
    }
    fn preferred_chunk(&self) -> u64 {
        (**self).preferred_chunk()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read(offset, buf)
    }
    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        (**self).erase(offset, len)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        (**self).write(offset, data)
    }
    fn sync(&mut self) -> Result<()> {
        (**self).sync()
    }
}

impl<S: Slot + ?Sized> Slot for Box<S> {
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn erase_size(&self) -> u64 {
        (**self).erase_size()
    }
    fn write_size(&self) -> u64 {
        (**self).write_size()
    }
    fn erased_value(&self) -> u8 {
        (**self).erased_value()
    }
    fn preferred_chunk(&self) -> u64 {
        (**self).preferred_chunk()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read(offset, buf)
    }
    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        (**self).erase(offset, len)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        (**self).write(offset, data)
    }
    fn sync(&mut self) -> Result<()> {
        (**self).sync()
    }
}

/// Checks a slot geometry: units non-zero, erase a multiple of write, capacity a multiple of erase.
pub(crate) fn check_geometry(capacity: u64, erase_size: u64, write_size: u64) -> Result<()> {
    let bad = |what: String| Err(Error::Geometry { what });
    if write_size == 0 || erase_size == 0 {
        return bad(format!(
            "erase unit {erase_size} and write unit {write_size} must be non-zero"
        ));
    }
    if !erase_size.is_multiple_of(write_size) {
        return bad(format!(
            "erase unit {erase_size} is not a multiple of the write unit {write_size}"
        ));
    }
    if !capacity.is_multiple_of(erase_size) {
        return bad(format!(
            "capacity {capacity} is not a multiple of the erase unit {erase_size}"
        ));
    }
    Ok(())
}

/// Checks that `offset..offset+len` lies inside `capacity` and, when `unit` is given, is aligned to it.
pub(crate) fn check_range(op: &'static str, offset: u64, len: u64, capacity: u64, unit: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => {}
        _ => {
            return Err(Error::OutOfBounds {
                op,
                offset,
                len,
                capacity,
            })
        }
    }
    if unit > 1 && (!offset.is_multiple_of(unit) || !len.is_multiple_of(unit)) {
        return Err(Error::Unaligned {
            op,
            offset,
            len,
            unit,
        });
    }
    Ok(())
}

/// `len` rounded up to a multiple of `unit` (`None` on overflow).
pub(crate) fn round_up(len: u64, unit: u64) -> Option<u64> {
    let rem = len.checked_rem(unit)?;
    if rem == 0 {
        Some(len)
    } else {
        len.checked_add(unit - rem)
    }
}

/// usize → u64 without `as` (lossless on every platform Rust supports, but say so once).
pub(crate) fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// How many bytes [`SlotWriter`] gathers before one `write` to the slot (rounded to the write unit).
/// Bounded memory for any image size; big enough that a file slot sees few syscalls.
pub const WRITE_CHUNK: usize = 256 * 1024;

/// Sequential image writer over a [`Slot`]: the way an image gets into a slot.
///
/// Created for an exact image length, which is checked against the slot's capacity before anything is
/// touched. Bytes are gathered into a bounded buffer ([`Slot::preferred_chunk`], at most [`WRITE_CHUNK`]
/// or one write unit if that is larger) and written one chunk at a time; a whole chunk the caller hands
/// over while the buffer is empty is written straight from the caller's bytes (no copy). Each
/// erase block is erased just before the first write into it (never beyond the image), and
/// [`SlotWriter::finish`] pads the last write unit with the slot's erased value and syncs. Memory past the
/// image is left as it was.
///
/// A failed write leaves the slot holding garbage: callers mark the slot bad *before* writing and verify
/// it with [`slot_sha256`] after.
pub struct SlotWriter<'a, S: Slot + ?Sized> {
    slot: &'a mut S,
    expected: u64,
    /// Bytes accepted from the caller.
    received: u64,
    /// Bytes written to the slot (a multiple of the write unit).
    flushed: u64,
    /// Everything below this offset has been erased by this writer.
    erased_to: u64,
    /// Erase target: the image length rounded up to the erase unit.
    erase_end: u64,
    buf: Vec<u8>,
    chunk: usize,
    /// Set when an erase or write failed: the slot's content is unknown, so the writer refuses more work.
    failed: bool,
}

impl<'a, S: Slot + ?Sized> SlotWriter<'a, S> {
    /// Starts writing an image of exactly `image_len` bytes at offset 0 of `slot`.
    /// Fails with [`Error::TooLarge`] (slot untouched) when it does not fit.
    pub fn new(slot: &'a mut S, image_len: u64) -> Result<SlotWriter<'a, S>> {
        let capacity = slot.capacity();
        let (erase, write) = (slot.erase_size(), slot.write_size());
        check_geometry(capacity, erase, write)?;
        let erase_end = round_up(image_len, erase)
            .filter(|&e| e <= capacity)
            .ok_or(Error::TooLarge {
                len: image_len,
                capacity,
            })?;
        let write_unit = usize::try_from(write).map_err(|_| Error::Geometry {
            what: format!("write unit {write} does not fit in memory"),
        })?;
        // The chunk: a multiple of the write unit, at least one unit, at most about WRITE_CHUNK.
        let preferred = usize::try_from(slot.preferred_chunk())
            .unwrap_or(WRITE_CHUNK)
            .clamp(1, WRITE_CHUNK);
        let chunk = (preferred / write_unit).max(1).saturating_mul(write_unit);
        Ok(SlotWriter {
            slot,
            expected: image_len,
            received: 0,
            flushed: 0,
            erased_to: 0,
            erase_end,
            buf: Vec::with_capacity(chunk),
            chunk,
            failed: false,
        })
    }

    /// Bytes accepted so far.
    pub fn position(&self) -> u64 {
        self.received
    }

    /// Writes `data` (a multiple of the write unit, at most one chunk) at the end of what was written,
    /// after erasing what it covers. Any failure poisons the writer.
    fn put(&mut self, data: &[u8]) -> Result<()> {
        if self.failed {
            return Err(Error::Refused {
                what: "the slot writer already failed; the slot must be rewritten from the start".to_owned(),
            });
        }
        let result = self.put_once(data);
        self.failed = result.is_err();
        result
    }

    fn put_once(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = self
            .flushed
            .checked_add(len64(data.len()))
            .ok_or(Error::TooLarge {
                len: u64::MAX,
                capacity: self.slot.capacity(),
            })?;
        if end > self.erased_to {
            // Erase ahead: every erase block this chunk touches, never past the image's last block.
            let erase_to = round_up(end, self.slot.erase_size())
                .unwrap_or(self.erase_end)
                .min(self.erase_end);
            self.slot.erase(self.erased_to, erase_to - self.erased_to)?;
            self.erased_to = erase_to;
        }
        self.slot.write(self.flushed, data)?;
        self.flushed = end;
        Ok(())
    }

    /// Writes out the gathered bytes (a multiple of the write unit) and empties the buffer.
    fn flush_buf(&mut self) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let result = self.put(&buf);
        self.buf = buf;
        self.buf.clear();
        result
    }

    fn accept(&mut self, mut data: &[u8]) -> Result<()> {
        let total = self.received.saturating_add(len64(data.len()));
        if total > self.expected {
            return Err(Error::LengthMismatch {
                expected: self.expected,
                got: total,
            });
        }
        while !data.is_empty() {
            if self.buf.is_empty() && data.len() >= self.chunk {
                // Whole chunks go to the slot straight from the caller's buffer (no copy): the same
                // chunk-sized writes, at the same chunk-aligned offsets, as when gathered.
                let (now, rest) = data.split_at(self.chunk);
                self.put(now)?;
                self.received += len64(now.len());
                data = rest;
                continue;
            }
            let room = self.chunk - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            self.received += len64(now.len());
            data = rest;
            if self.buf.len() == self.chunk {
                self.flush_buf()?;
            }
        }
        Ok(())
    }

    /// Pads the tail to the write unit with the erased value, writes it, syncs the slot, and returns the
    /// image length. Fails with [`Error::LengthMismatch`] if fewer bytes than announced were written.
    pub fn finish(mut self) -> Result<u64> {
        if self.received != self.expected {
            return Err(Error::LengthMismatch {
                expected: self.expected,
                got: self.received,
            });
        }
        let unit = usize::try_from(self.slot.write_size()).unwrap_or(1);
        let rem = self.buf.len() % unit;
        if rem != 0 {
            let pad = self.slot.erased_value();
            self.buf.resize(self.buf.len() + (unit - rem), pad);
        }
        self.flush_buf()?;
        self.slot.sync()?;
        Ok(self.received)
    }
}

impl<S: Slot + ?Sized> Write for SlotWriter<'_, S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.accept(data)?;
        Ok(data.len())
    }

    /// Does not write a partial write unit (that would break NOR rules); `finish` does.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Size of the buffer [`slot_sha256`] and [`SlotReader`] read through.
pub const READ_CHUNK: usize = 64 * 1024;

/// Reads back the first `len` bytes of the slot and returns their SHA-256 (bounded buffer).
pub fn slot_sha256<S: Slot + ?Sized>(slot: &mut S, len: u64) -> Result<[u8; 32]> {
    check_range("read", 0, len, slot.capacity(), 1)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from(len - offset)
            .unwrap_or(READ_CHUNK)
            .min(READ_CHUNK);
        let part = buf.get_mut(..n).unwrap_or_default();
        slot.read(offset, part)?;
        hasher.update(&*part);
        offset += len64(n);
    }
    Ok(hasher.finalize().into())
}

/// A `Read + Seek` view of the first `len` bytes of a slot (the delta decoder's base image).
///
/// Reads go through a [`READ_CHUNK`] buffer, so small scattered reads cost few slot reads. Reading at or
/// past `len` returns end of file; seeking before 0 is an error.
pub struct SlotReader<'a, S: Slot + ?Sized> {
    slot: &'a mut S,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    /// Slot offset of `buf`'s first byte.
    buf_start: u64,
}

impl<'a, S: Slot + ?Sized> SlotReader<'a, S> {
    /// A view of `slot[0..len]`. Fails when `len` exceeds the capacity.
    pub fn new(slot: &'a mut S, len: u64) -> Result<SlotReader<'a, S>> {
        check_range("read", 0, len, slot.capacity(), 1)?;
        Ok(SlotReader {
            slot,
            len,
            pos: 0,
            buf: Vec::new(),
            buf_start: 0,
        })
    }

    /// The length of the view.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<S: Slot + ?Sized> Read for SlotReader<'_, S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let buf_end = self.buf_start + len64(self.buf.len());
        if self.pos < self.buf_start || self.pos >= buf_end {
            let n = usize::try_from(self.len - self.pos)
                .unwrap_or(READ_CHUNK)
                .min(READ_CHUNK);
            self.buf.resize(n, 0);
            self.slot.read(self.pos, &mut self.buf)?;
            self.buf_start = self.pos;
        }
        let skip = usize::try_from(self.pos - self.buf_start).map_err(io::Error::other)?;
        let avail = self.buf.get(skip..).unwrap_or_default();
        let n = avail.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), avail.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += len64(n);
        Ok(n)
    }
}

impl<S: Slot + ?Sized> Seek for SlotReader<'_, S> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the slot (or overflow)",
            )
        })?;
        self.pos = target;
        Ok(target)
    }
}
