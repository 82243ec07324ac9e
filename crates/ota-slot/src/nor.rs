//! `NorFlashSlot`: any `embedded_storage` NOR flash (u32 offsets) as a [`Slot`] (u64 offsets).

use std::any::Any;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, ReadNorFlash};

use crate::error::{Error, Result};
use crate::slot::{check_geometry, check_range, len64, Slot};

/// A [`Slot`] over a region of any [`NorFlash`] (whole device by default).
///
/// Slot offsets are relative to the region and `u64`; they are converted to the flash's `u32` offsets with
/// checked arithmetic (no narrowing casts), after a bounds check against the region. The region must start
/// and end on erase boundaries (checked at construction). Reads at any offset are supported even when the
/// flash's `READ_SIZE` is larger than one byte (aligned bounce reads).
///
/// Errors from the flash keep their meaning: the simulated flash's [`Error`]s (power loss, not erased)
/// pass through unchanged; any other driver's error becomes [`Error::Flash`] with its kind and text.
pub struct NorFlashSlot<F> {
    flash: F,
    base: u64,
    capacity: u64,
    erased_value: u8,
}

impl<F> NorFlashSlot<F>
where
    F: NorFlash + ReadNorFlash,
    F::Error: 'static,
{
    /// The whole flash as one slot. Erased value 0xFF, as `embedded-storage` specifies ("all 1s").
    pub fn new(flash: F) -> Result<Self> {
        let capacity = len64(flash.capacity());
        Self::region(flash, 0, capacity)
    }

    /// `len` bytes of the flash starting at `offset` (both multiples of the erase unit).
    pub fn region(flash: F, offset: u64, len: u64) -> Result<Self> {
        let device = len64(flash.capacity());
        let (erase, write, read) = (len64(F::ERASE_SIZE), len64(F::WRITE_SIZE), len64(F::READ_SIZE));
        check_geometry(len, erase, write)?;
        if read == 0 || erase % read != 0 {
            return Err(Error::Geometry {
                what: format!("erase unit {erase} is not a multiple of the read unit {read}"),
            });
        }
        if !offset.is_multiple_of(erase) {
            return Err(Error::Geometry {
                what: format!("region offset {offset} is not a multiple of the erase unit {erase}"),
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= device && u32::try_from(end).is_ok() => {}
            _ => {
                return Err(Error::Geometry {
                    what: format!("region {offset}+{len} does not fit the {device}-byte flash"),
                })
            }
        }
        Ok(NorFlashSlot {
            flash,
            base: offset,
            capacity: len,
            erased_value: 0xFF,
        })
    }

    /// Declares the value this flash's erased bytes read as (for flashes that do not erase to 0xFF).
    pub fn with_erased_value(mut self, erased_value: u8) -> Self {
        self.erased_value = erased_value;
        self
    }

    /// The flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// Absolute flash offset of slot offset `offset` (already bounds-checked against the region).
    fn abs(&self, op: &'static str, offset: u64) -> Result<u32> {
        self.base
            .checked_add(offset)
            .and_then(|a| u32::try_from(a).ok())
            .ok_or(Error::OutOfBounds {
                op,
                offset,
                len: 0,
                capacity: self.capacity,
            })
    }
}

/// Keeps our own errors (the simulated flash's) as they are; wraps any other driver's.
fn flash_error<E: NorFlashError + 'static>(e: E, op: &'static str, offset: u32) -> Error {
    let kind = e.kind();
    let detail = format!("{e:?}");
    let boxed: Box<dyn Any> = Box::new(e);
    match boxed.downcast::<Error>() {
        Ok(ours) => *ours,
        Err(_) => Error::Flash {
            op,
            offset: u64::from(offset),
            kind,
            detail,
        },
    }
}

impl<F> Slot for NorFlashSlot<F>
where
    F: NorFlash + ReadNorFlash,
    F::Error: 'static,
{
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn erase_size(&self) -> u64 {
        len64(F::ERASE_SIZE)
    }
    fn write_size(&self) -> u64 {
        len64(F::WRITE_SIZE)
    }
    fn erased_value(&self) -> u8 {
        self.erased_value
    }
    fn preferred_chunk(&self) -> u64 {
        len64(F::ERASE_SIZE)
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range("read", offset, len64(buf.len()), self.capacity, 1)?;
        let unit = F::READ_SIZE;
        let start = self.abs("read", offset)?;
        if unit <= 1 {
            return self
                .flash
                .read(start, buf)
                .map_err(|e| flash_error(e, "read", start));
        }
        // Bounce through an aligned buffer: the region is erase-aligned, so aligned reads stay inside it.
        let unit64 = len64(unit);
        let mut bounce = vec![0u8; unit];
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + len64(done);
            let aligned = pos - pos % unit64;
            let skip = usize::try_from(pos - aligned).unwrap_or(0);
            let abs = self.abs("read", aligned)?;
            self.flash
                .read(abs, &mut bounce)
                .map_err(|e| flash_error(e, "read", abs))?;
            let src = bounce.get(skip..).unwrap_or_default();
            let n = src.len().min(buf.len() - done);
            if let (Some(dst), Some(src)) = (buf.get_mut(done..done + n), src.get(..n)) {
                dst.copy_from_slice(src);
            }
            done += n;
        }
        Ok(())
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        check_range("erase", offset, len, self.capacity, len64(F::ERASE_SIZE))?;
        let from = self.abs("erase", offset)?;
        let to = self.abs("erase", offset + len)?;
        self.flash
            .erase(from, to)
            .map_err(|e| flash_error(e, "erase", from))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        check_range(
            "write",
            offset,
            len64(data.len()),
            self.capacity,
            len64(F::WRITE_SIZE),
        )?;
        let at = self.abs("write", offset)?;
        self.flash
            .write(at, data)
            .map_err(|e| flash_error(e, "write", at))
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
}
