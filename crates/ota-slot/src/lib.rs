//! Where bytes land and which slot boots: A/B slots over files, block devices and NOR flash, and boot control over U-Boot, GRUB and a simulated bootloader.
#![deny(missing_docs)]
