//! Where bytes land and which slot boots.
//!
//! One job: give the device agent A/B slots it can write, read back and verify, and a bootloader it can
//! ask for a trial boot, commit or roll back. It does not download, verify signatures, decode deltas or
//! decide *when* to update (that is `ota-tuf`, `ota-delta` and `device-agent`).
//!
//! # Storage
//! - [`Slot`]: a region holding one image, `u64` offsets, erase and write units (NOR rules, which files
//!   also accept). [`SlotWriter`] streams an image in (erase-ahead, write-unit buffering, tail padded with
//!   the erased value), [`SlotReader`] is a `Read + Seek` view (the delta decoder's base image),
//!   [`slot_sha256`] reads back and hashes.
//! - [`FileSlot`]: a file or block device. [`NorFlashSlot`]: any `embedded_storage` `NorFlash` (its `u32`
//!   offsets adapted with checked conversions), whole or a region.
//! - [`SimFlash`]: a simulated NOR flash enforcing the `embedded-storage` rules (alignment, erase before
//!   write, each word written once; erased value 0xFF or anything else) with a shared [`PowerCut`] budget
//!   that cuts power before, after, or in the middle of ([`CutMode::Torn`]) any erase or write.
//!   Memory ([`FlashMemory`]) survives the cut; a "reboot" is new handles over it. [`AbFlashLayout`]
//!   partitions one simulated chip into slot a, slot b and the bootloader env, for power-cut sweeps.
//!
//! # Boot control
//! - [`BootControl`]: booted slot, primary slot, [`TrialBoot`] with a try count, mark good, mark bad. All
//!   backends share the [`BootState`] model and rules (U-Boot's bootcount scheme, see [`boot`]).
//! - [`UBootEnv`] (`fw_printenv`/`fw_setenv` on a redundant environment), [`GrubEnv`] (`grub-editenv`),
//!   [`SimBootloader`] (the same rules, redundant two-copy env on any [`Slot`], `reboot()` plays the
//!   bootloader). The scripts a real board runs are in `boot-scripts/`.
//!
//! # Example: an A/B install on a simulated chip
//!
//! ```
//! use std::io::Write;
//! use ota_slot::{slot_sha256, AbFlashLayout, BootControl, PowerCut, SimBootloader, SimFlash, SlotId, SlotWriter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layout = AbFlashLayout::new(64 * 1024, 4096, 4)?;
//! let flash = SimFlash::<4, 4096>::new(usize::try_from(layout.capacity())?, 0xFF, PowerCut::never())?;
//! let mut boot = SimBootloader::provision(layout.env(&flash)?, SlotId::A)?;
//!
//! let image = vec![0x42u8; 10_000];
//! let target = boot.booted()?.other();
//! boot.mark_bad(target)?; // the slot is garbage until verified
//! let mut slot = layout.slot(&flash, target)?;
//! let mut writer = SlotWriter::new(&mut slot, 10_000)?; // refuses an image that does not fit
//! writer.write_all(&image)?;
//! writer.finish()?;
//! let _digest: [u8; 32] = slot_sha256(&mut slot, 10_000)?; // compare with the signed sha256
//! boot.start_trial(target, 1)?;
//! assert_eq!(boot.reboot()?, target); // the bootloader tries the new slot once
//! boot.mark_good(target)?; // health checks passed: commit
//! assert_eq!(boot.primary()?, target);
//! # Ok(())
//! # }
//! ```
//!
//! # Deviations from the interface first agreed with device-agent
//! - [`Slot::erased_value`] added (default 0xFF) so padding never assumes 0xFF.
//! - [`SlotWriter::new`] takes the image length: the slot is checked large enough before it is touched,
//!   and a short or long stream is an error.
//! - [`PowerCut::after`]`(n, mode)`: `n` operations succeed, operation `n` (0-based) is cut;
//!   [`PowerCut::ops`] counts the operations started.
//! - [`Slot::preferred_chunk`] added (default [`WRITE_CHUNK`]; NOR: one sector per write).
//! - Additions: [`BootState`] (the shared model, for status output), [`KernelCmdline`] (where U-Boot and
//!   GRUB backends read the running slot), [`AbFlashLayout`], [`SimBootloader::create_file`] /
//!   [`SimBootloader::open_file`], [`UBootEnv::provision`], [`GrubEnv::create`].
//! - [`FileSlot`] capacities must be multiples of [`FileSlot::ERASE_SIZE`] (4096); its erase changes
//!   nothing (files are rewritten in place).
//!
//! Benchmark: `cargo run --release -p ota-slot --example slot_throughput -- 1024` (table of write and
//! read-back speed against plain `std::fs`, and peak RSS).
#![deny(missing_docs)]

pub mod boot;
mod error;
mod file;
mod flash;
mod identity;
mod layout;
mod nor;
mod slot;

/// Entry points for the `fuzz/` targets (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes one copy of the simulated bootloader's saved environment; panics only on a broken
    /// round trip.
    pub fn sim_env_record(bytes: &[u8]) {
        crate::boot::fuzz_record(bytes);
    }
}

pub use boot::{BootControl, BootState, GrubEnv, KernelCmdline, SimBootloader, TrialBoot, UBootEnv};
pub use error::{Error, Result};
pub use file::FileSlot;
pub use flash::{CutMode, FlashMemory, PageStore, PowerCut, SimFlash};
pub use identity::same_object;
pub use layout::AbFlashLayout;
pub use nor::NorFlashSlot;
pub use slot::{
    slot_sha256, ParseSlotIdError, Slot, SlotId, SlotReader, SlotWriter, READ_CHUNK, WRITE_CHUNK,
};
