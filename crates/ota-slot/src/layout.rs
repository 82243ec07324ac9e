//! `AbFlashLayout`: one simulated flash chip partitioned for an A/B device.

use crate::boot::SimBootloader;
use crate::error::{Error, Result};
use crate::flash::SimFlash;
use crate::nor::NorFlashSlot;
use crate::slot::{round_up, SlotId};

/// One flash chip holding an A/B device: slot a, slot b, then the simulated bootloader's environment.
///
/// ```text
/// 0            slot_len       2*slot_len     2*slot_len + env_len
/// | slot a      | slot b       | env (2 copies) |
/// ```
///
/// Power-cut sweeps build every handle from one [`crate::FlashMemory`] and one [`crate::PowerCut`], so a
/// single budget counts the operations of the install, the boot-control changes and the reboots alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbFlashLayout {
    /// Bytes per slot (a multiple of the erase unit).
    pub slot_len: u64,
    /// Bytes of the env partition (two copies).
    pub env_len: u64,
}

impl AbFlashLayout {
    /// The layout for slots of at least `min_slot_len` bytes on a flash with these units.
    pub fn new(min_slot_len: u64, erase_size: u64, write_size: u64) -> Result<AbFlashLayout> {
        let slot_len = round_up(min_slot_len, erase_size.max(1)).ok_or(Error::Geometry {
            what: format!("slot length {min_slot_len} overflows when rounded to the erase unit {erase_size}"),
        })?;
        let env_len = SimBootloader::<NorFlashSlot<SimFlash>>::env_len(erase_size, write_size);
        Ok(AbFlashLayout { slot_len, env_len })
    }

    /// Total flash bytes the layout needs.
    pub fn capacity(&self) -> u64 {
        self.slot_len.saturating_mul(2).saturating_add(self.env_len)
    }

    /// A handle on slot `id` of `flash`.
    pub fn slot<const W: usize, const E: usize>(
        &self,
        flash: &SimFlash<W, E>,
        id: SlotId,
    ) -> Result<NorFlashSlot<SimFlash<W, E>>> {
        let offset = match id {
            SlotId::A => 0,
            SlotId::B => self.slot_len,
        };
        flash.slot(offset, self.slot_len)
    }

    /// A handle on the env partition of `flash` (for [`SimBootloader`]).
    pub fn env<const W: usize, const E: usize>(
        &self,
        flash: &SimFlash<W, E>,
    ) -> Result<NorFlashSlot<SimFlash<W, E>>> {
        flash.slot(self.slot_len.saturating_mul(2), self.env_len)
    }
}
