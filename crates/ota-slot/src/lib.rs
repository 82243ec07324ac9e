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
//! # Deviations from the agreed interface (docs/contracts)
//! - [`Slot::erased_value`] added (default 0xFF) so padding never assumes 0xFF.
//! - [`SlotWriter::new`] takes the image length: the slot is checked large enough before it is touched,
//!   and a short or long stream is an error.
//! - [`PowerCut::after`]`(n, mode)`: `n` operations succeed, operation `n` (0-based) is cut.
#![deny(missing_docs)]

pub mod boot;
mod error;
mod file;
mod flash;
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
pub use flash::{CutMode, FlashMemory, PowerCut, SimFlash};
pub use layout::AbFlashLayout;
pub use nor::NorFlashSlot;
pub use slot::{
    slot_sha256, ParseSlotIdError, Slot, SlotId, SlotReader, SlotWriter, READ_CHUNK, WRITE_CHUNK,
};
