//! What a drill needs from the machine (open files, memory, scratch space), checked before any work
//! starts: a fleet too large for the machine is refused in its first millisecond with what it needs and
//! how to get it, not after minutes of publishing and stepping.
//!
//! The figures are upper estimates measured on the drill itself (`scripts/bench-drill.sh`,
//! BENCHMARKS.md): a device costs a few KiB of memory (its flash pages are shared by content, its agent
//! is dropped while it sleeps) and a state directory of about 48 KiB; open files grow with the devices
//! stepping at once (`concurrency`), not with the fleet, since the fleet shares one HTTP client.

use std::path::Path;

use crate::scenario::Scenario;
use crate::{Error, Result};

/// Open files the process needs besides the devices stepping: the runtime, the mirror's listener,
/// stdio, the repository being published.
const BASE_FILES: u64 = 32;
/// Open files per device stepping at once: its connection (both ends: the mirror is in-process), a
/// file the mirror reads, the state file being replaced and its directory, a health check's pipes.
const FILES_PER_STEP: u64 = 8;
/// Memory of the process before any device.
const BASE_MEMORY: u64 = 64 << 20;
/// Memory per device while it sleeps (its record in the drill, its flash's page table).
const MEMORY_PER_DEVICE: u64 = 8 << 10;
/// Scratch space per device: its agent's state directory (identity, pinned root, trusted metadata,
/// update record), in 4 KiB blocks.
const SCRATCH_PER_DEVICE: u64 = 48 << 10;

/// What one drill needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Open file descriptors at once.
    pub open_files: u64,
    /// Bytes of memory (the scratch directory's too when it is in memory, as /dev/shm is).
    pub memory: u64,
    /// Bytes in the scratch directory.
    pub scratch: u64,
}

impl Needs {
    /// The estimate for `s`.
    pub fn of(s: &Scenario) -> Needs {
        let devices = u64::from(s.devices);
        let stepping = u64::from(s.concurrency.min(s.devices).max(1));
        let image = s.image_bytes();
        let versions = u64::try_from(s.releases.len())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let boards = u64::try_from(s.hardware.len()).unwrap_or(u64::MAX);
        // Each published image is kept as the input file, the repository's target, and in the
        // flash pages; a stepping device holds a download and a decoded image at most.
        let images = versions.saturating_mul(boards).saturating_mul(image);
        Needs {
            open_files: BASE_FILES.saturating_add(FILES_PER_STEP.saturating_mul(stepping)),
            memory: BASE_MEMORY
                .saturating_add(devices.saturating_mul(MEMORY_PER_DEVICE))
                .saturating_add(stepping.saturating_mul(image).saturating_mul(4))
                .saturating_add(images),
            scratch: devices
                .saturating_mul(SCRATCH_PER_DEVICE)
                .saturating_add(images.saturating_mul(2)),
        }
    }
}

/// Refuses the drill when the open-file limit, the available memory or the scratch directory's free
/// space is below what it needs. `scratch` is the directory the drill's scratch goes into; when it is
/// in memory (tmpfs), its need counts against memory too.
pub fn check(s: &Scenario, scratch: &Path) -> Result<()> {
    let needs = Needs::of(s);
    let stepping = u64::from(s.concurrency.min(s.devices).max(1));
    if let Some(limit) = open_file_limit() {
        if limit < needs.open_files {
            let fits = limit.saturating_sub(BASE_FILES) / FILES_PER_STEP;
            return Err(Error::Limit {
                what: format!(
                    "{} open files ({BASE_FILES} + {FILES_PER_STEP} per device stepping at once, \
                     {stepping} at --concurrency {}), but the open-file limit is {limit}",
                    needs.open_files, s.concurrency
                ),
                how: format!(
                    "raise the limit (`ulimit -n {}` in this shell, or LimitNOFILE= for a service), or \
                     lower --concurrency to {} or less",
                    needs.open_files,
                    fits.max(1)
                ),
            });
        }
    }
    let in_memory = is_tmpfs(scratch);
    let memory = needs.memory + if in_memory { needs.scratch } else { 0 };
    if let Some(available) = available_memory() {
        if available < memory {
            return Err(Error::Limit {
                what: format!(
                    "about {} of memory for {} devices{}, but {} is available",
                    crate::report::human_bytes(memory),
                    s.devices,
                    if in_memory {
                        format!(" (its scratch directory {} is in memory)", scratch.display())
                    } else {
                        String::new()
                    },
                    crate::report::human_bytes(available)
                ),
                how: "lower --devices (or --image-kib, --concurrency), or give a --work-dir on disk".into(),
            });
        }
    }
    if let Some(free) = free_space(scratch) {
        if free < needs.scratch {
            return Err(Error::Limit {
                what: format!(
                    "about {} of scratch space in {} for {} devices, but {} is free",
                    crate::report::human_bytes(needs.scratch),
                    scratch.display(),
                    s.devices,
                    crate::report::human_bytes(free)
                ),
                how: "give a --work-dir with more free space, or lower --devices".into(),
            });
        }
    }
    Ok(())
}

/// The soft limit on open files; None when unlimited.
fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// MemAvailable from /proc/meminfo (Linux); None where it cannot be read (then it is not checked).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes free to an unprivileged user in the file system of `dir` (or of its nearest existing parent).
fn free_space(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    st.f_bavail.checked_mul(st.f_frsize)
}

/// Whether `dir` (or its nearest existing parent) is in memory.
// `f_type` is an i64 on x86_64 Linux but narrower on other targets: the conversion is not useless there.
#[allow(clippy::useless_conversion)]
fn is_tmpfs(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    dir.ancestors()
        .find(|p| p.exists())
        .and_then(|p| rustix::fs::statfs(p).ok())
        .is_some_and(|st| i64::from(st.f_type) == TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_grow_with_concurrency_not_with_the_fleet() {
        let small = Scenario {
            devices: 1_000,
            concurrency: 64,
            ..Scenario::default()
        };
        let large = Scenario {
            devices: 100_000,
            ..small.clone()
        };
        assert_eq!(Needs::of(&small).open_files, Needs::of(&large).open_files);
        let wider = Scenario {
            concurrency: 256,
            ..small.clone()
        };
        assert!(Needs::of(&wider).open_files > Needs::of(&small).open_files);
        assert!(Needs::of(&large).memory > Needs::of(&small).memory);
    }
}
