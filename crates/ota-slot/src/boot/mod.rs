//! Boot control: which slot runs, which boots by default, the trial boot and its try count.
//!
//! All backends share one model, [`BootState`], and one set of rules (its methods), so U-Boot, GRUB and the
//! simulated bootloader behave the same. The model follows U-Boot's bootcount scheme:
//!
//! | variable            | values        | meaning                                                       |
//! |---------------------|---------------|---------------------------------------------------------------|
//! | `ota_primary`       | `a` / `b`     | the slot that boots by default (the committed one)            |
//! | `ota_trial_slot`    | `a` / `b` / unset | the slot under trial                                      |
//! | `upgrade_available` | `0` / `1`     | a trial is pending or running                                 |
//! | `bootcount`         | `0..=bootlimit` | trial boots already attempted (the bootloader increments)   |
//! | `bootlimit`         | `1..`         | trial boots allowed                                           |
//! | `ota_bad_a/b`       | `0` / `1`     | slot must not boot until re-installed                         |
//!
//! Bootloader at power-on ([`BootState::power_on`]): with a trial pending on a good slot and
//! `bootcount < bootlimit`, increment `bootcount`, save, boot the trial slot; with the tries exhausted (or the
//! trial slot bad), clear the trial, save, boot the primary. The primary boots otherwise (the other slot if
//! the primary is marked bad and the other is not). The OS says which slot it booted from on the kernel
//! command line (`ota.slot=a`). The scripts a real board runs are in `boot-scripts/` of this crate.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::slot::SlotId;

/// The U-Boot and GRUB backends keep a [`BootState`] as environment variables, so their [`BootControl`] is
/// the same: read the state, change it in memory, write it once if anything changed (one `fw_setenv -s` or
/// one file replacement, so a change is all or nothing). Written once here; the backend type provides
/// `state()`, `write_state(&BootState)`, a `cmdline: KernelCmdline` field and `MAX_TRIES`.
macro_rules! env_boot_control {
    ($backend:ty) => {
        impl $backend {
            /// Reads, changes in memory, and writes once if anything changed.
            fn update(&self, change: impl FnOnce(&mut BootState) -> Result<()>) -> Result<()> {
                let old = self.state()?;
                let mut new = old;
                change(&mut new)?;
                if new != old {
                    self.write_state(&new)?;
                }
                Ok(())
            }
        }

        impl BootControl for $backend {
            fn booted(&mut self) -> Result<SlotId> {
                self.cmdline.booted()
            }
            fn primary(&mut self) -> Result<SlotId> {
                Ok(self.state()?.primary)
            }
            fn trial(&mut self) -> Result<Option<TrialBoot>> {
                Ok(self.state()?.trial())
            }
            fn start_trial(&mut self, slot: SlotId, tries: u8) -> Result<()> {
                self.update(|s| s.start_trial(slot, tries, Self::MAX_TRIES))
            }
            fn mark_good(&mut self, slot: SlotId) -> Result<()> {
                self.update(|s| {
                    s.mark_good(slot);
                    Ok(())
                })
            }
            fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
                self.update(|s| {
                    s.mark_bad(slot);
                    Ok(())
                })
            }
        }
    };
}

mod grub;
mod sim;
mod uboot;

pub use grub::GrubEnv;
pub use sim::SimBootloader;
pub use uboot::UBootEnv;

pub(crate) use sim::fuzz_record;

/// A trial boot of a slot: pending (not yet booted) or running (booted, not yet committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrialBoot {
    /// The slot under trial.
    pub slot: SlotId,
    /// Boots of it the bootloader will still attempt before falling back to the primary.
    pub tries_left: u8,
}

/// The bootloader's side of A/B updates.
///
/// Each mutating call computes the whole new environment and writes it once (one `fw_setenv` script, one
/// renamed GRUB env file, one redundant env copy), so a power cut leaves either the old or the new state.
pub trait BootControl {
    /// The slot running now (from the kernel command line or the simulated bootloader's record).
    fn booted(&mut self) -> Result<SlotId>;
    /// The slot that boots by default.
    fn primary(&mut self) -> Result<SlotId>;
    /// `Some` while a trial of a slot is pending or running.
    fn trial(&mut self) -> Result<Option<TrialBoot>>;
    /// The next boots try `slot` (`tries` times at most), then fall back to the primary. Clears the
    /// slot's bad mark (it was just re-installed). `tries` must be at least 1.
    fn start_trial(&mut self, slot: SlotId, tries: u8) -> Result<()>;
    /// Commit: `slot` becomes the primary, the trial is cleared, its bad mark too.
    fn mark_good(&mut self, slot: SlotId) -> Result<()>;
    /// `slot` is never booted again until re-installed ([`BootControl::start_trial`]); a trial of it ends.
    fn mark_bad(&mut self, slot: SlotId) -> Result<()>;
}

impl<B: BootControl + ?Sized> BootControl for &mut B {
    fn booted(&mut self) -> Result<SlotId> {
        (**self).booted()
    }
    fn primary(&mut self) -> Result<SlotId> {
        (**self).primary()
    }
    fn trial(&mut self) -> Result<Option<TrialBoot>> {
        (**self).trial()
    }
    fn start_trial(&mut self, slot: SlotId, tries: u8) -> Result<()> {
        (**self).start_trial(slot, tries)
    }
    fn mark_good(&mut self, slot: SlotId) -> Result<()> {
        (**self).mark_good(slot)
    }
    fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
        (**self).mark_bad(slot)
    }
}

impl<B: BootControl + ?Sized> BootControl for Box<B> {
    fn booted(&mut self) -> Result<SlotId> {
        (**self).booted()
    }
    fn primary(&mut self) -> Result<SlotId> {
        (**self).primary()
    }
    fn trial(&mut self) -> Result<Option<TrialBoot>> {
        (**self).trial()
    }
    fn start_trial(&mut self, slot: SlotId, tries: u8) -> Result<()> {
        (**self).start_trial(slot, tries)
    }
    fn mark_good(&mut self, slot: SlotId) -> Result<()> {
        (**self).mark_good(slot)
    }
    fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
        (**self).mark_bad(slot)
    }
}

/// The boot environment every backend stores (see the module table for the variable names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootState {
    /// `ota_primary`.
    pub primary: SlotId,
    /// `ota_trial_slot`.
    pub trial_slot: Option<SlotId>,
    /// `upgrade_available`.
    pub upgrade_available: bool,
    /// `bootcount`: trial boots attempted.
    pub bootcount: u8,
    /// `bootlimit`: trial boots allowed.
    pub bootlimit: u8,
    /// `ota_bad_a`.
    pub bad_a: bool,
    /// `ota_bad_b`.
    pub bad_b: bool,
}

impl BootState {
    /// A fresh environment: `primary` boots, no trial, nothing bad.
    pub fn new(primary: SlotId) -> BootState {
        BootState {
            primary,
            trial_slot: None,
            upgrade_available: false,
            bootcount: 0,
            bootlimit: 0,
            bad_a: false,
            bad_b: false,
        }
    }

    /// Whether `slot` is marked bad.
    pub fn is_bad(&self, slot: SlotId) -> bool {
        match slot {
            SlotId::A => self.bad_a,
            SlotId::B => self.bad_b,
        }
    }

    fn set_bad(&mut self, slot: SlotId, bad: bool) {
        match slot {
            SlotId::A => self.bad_a = bad,
            SlotId::B => self.bad_b = bad,
        }
    }

    fn clear_trial(&mut self) {
        self.trial_slot = None;
        self.upgrade_available = false;
        self.bootcount = 0;
    }

    /// The pending or running trial, if any.
    pub fn trial(&self) -> Option<TrialBoot> {
        match (self.upgrade_available, self.trial_slot) {
            (true, Some(slot)) => Some(TrialBoot {
                slot,
                tries_left: self.bootlimit.saturating_sub(self.bootcount),
            }),
            _ => None,
        }
    }

    /// See [`BootControl::start_trial`]. `max_tries` is what the backend's boot script can count to.
    pub fn start_trial(&mut self, slot: SlotId, tries: u8, max_tries: u8) -> Result<()> {
        if tries == 0 || tries > max_tries {
            return Err(Error::Refused {
                what: format!("trial of slot {slot} with {tries} tries: this backend allows 1..={max_tries}"),
            });
        }
        self.trial_slot = Some(slot);
        self.upgrade_available = true;
        self.bootcount = 0;
        self.bootlimit = tries;
        self.set_bad(slot, false);
        Ok(())
    }

    /// See [`BootControl::mark_good`].
    pub fn mark_good(&mut self, slot: SlotId) {
        self.primary = slot;
        self.set_bad(slot, false);
        self.clear_trial();
    }

    /// See [`BootControl::mark_bad`].
    pub fn mark_bad(&mut self, slot: SlotId) {
        self.set_bad(slot, true);
        if self.trial_slot == Some(slot) {
            self.clear_trial();
        }
    }

    /// The bootloader's decision at power-on, exactly as the shipped U-Boot and GRUB scripts make it:
    /// changes the state (try counting, fallback) and returns the slot to boot.
    pub fn power_on(&mut self) -> SlotId {
        if self.upgrade_available {
            match self.trial_slot {
                Some(slot) if !self.is_bad(slot) && self.bootcount < self.bootlimit => {
                    self.bootcount += 1;
                    return slot;
                }
                _ => self.clear_trial(),
            }
        }
        let other = self.primary.other();
        if self.is_bad(self.primary) && !self.is_bad(other) {
            other
        } else {
            self.primary
        }
    }

    /// The environment variables, as the U-Boot and GRUB backends store them (`None`: unset).
    pub fn to_vars(&self) -> Vec<(&'static str, Option<String>)> {
        let flag = |b: bool| Some(if b { "1" } else { "0" }.to_owned());
        vec![
            ("ota_primary", Some(self.primary.to_string())),
            ("ota_trial_slot", self.trial_slot.map(|s| s.to_string())),
            ("upgrade_available", flag(self.upgrade_available)),
            ("bootcount", Some(self.bootcount.to_string())),
            ("bootlimit", Some(self.bootlimit.to_string())),
            ("ota_bad_a", flag(self.bad_a)),
            ("ota_bad_b", flag(self.bad_b)),
        ]
    }

    /// Reads the variables back. `ota_primary` must be set (a board without it was not provisioned for
    /// A/B); the others default to "no trial, nothing bad". Bad values are errors naming the variable.
    pub fn from_vars<'a>(source_name: &str, get: impl Fn(&str) -> Option<&'a str>) -> Result<BootState> {
        let problem = |name: &str, problem: String| Error::BootEnvValue {
            source_name: source_name.to_owned(),
            name: name.to_owned(),
            problem,
        };
        let slot = |name: &str| -> Result<Option<SlotId>> {
            match get(name).map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .parse::<SlotId>()
                    .map(Some)
                    .map_err(|_| problem(name, format!("got `{v}`, expected `a` or `b`"))),
            }
        };
        let flag = |name: &str| -> Result<bool> {
            match get(name).map(str::trim) {
                None | Some("") | Some("0") => Ok(false),
                Some("1") => Ok(true),
                Some(v) => Err(problem(name, format!("got `{v}`, expected 0 or 1"))),
            }
        };
        let count = |name: &str| -> Result<u8> {
            match get(name).map(str::trim) {
                None | Some("") => Ok(0),
                Some(v) => v
                    .parse::<u8>()
                    .map_err(|_| problem(name, format!("got `{v}`, expected 0..=255"))),
            }
        };
        let primary = slot("ota_primary")?.ok_or_else(|| {
            problem(
                "ota_primary",
                "missing (provision the environment with ota_primary=a)".to_owned(),
            )
        })?;
        Ok(BootState {
            primary,
            trial_slot: slot("ota_trial_slot")?,
            upgrade_available: flag("upgrade_available")?,
            bootcount: count("bootcount")?,
            bootlimit: count("bootlimit")?,
            bad_a: flag("ota_bad_a")?,
            bad_b: flag("ota_bad_b")?,
        })
    }
}

/// Where the running slot is read from on a real device: the kernel command line's `ota.slot=a|b`, which
/// the boot script appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCmdline {
    /// The file holding the command line (`/proc/cmdline`; a plain file in tests).
    pub path: PathBuf,
    /// The parameter name (`ota.slot`).
    pub key: String,
}

impl Default for KernelCmdline {
    fn default() -> Self {
        KernelCmdline {
            path: PathBuf::from("/proc/cmdline"),
            key: "ota.slot".to_owned(),
        }
    }
}

impl KernelCmdline {
    /// `key` in the file at `path`.
    pub fn new(path: impl AsRef<Path>, key: &str) -> KernelCmdline {
        KernelCmdline {
            path: path.as_ref().to_owned(),
            key: key.to_owned(),
        }
    }

    /// The slot the command line names.
    pub fn booted(&self) -> Result<SlotId> {
        let line = std::fs::read_to_string(&self.path).map_err(|e| Error::io("read", &self.path, e))?;
        let found = line.split_whitespace().find_map(|word| {
            let (k, v) = word.split_once('=')?;
            (k == self.key).then(|| v.parse::<SlotId>().ok()).flatten()
        });
        found.ok_or_else(|| Error::BootedUnknown {
            path: self.path.clone(),
            key: self.key.clone(),
            got: line.trim().to_owned(),
        })
    }
}

/// Runs a bootloader tool; Err with its stderr when it cannot start or exits non-zero. Returns stdout.
pub(crate) fn run_tool(tool: &str, args: &[&std::ffi::OsStr]) -> Result<String> {
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output();
    let out = out.map_err(|e| Error::BootEnv {
        tool: tool.to_owned(),
        args: shown.clone(),
        status: format!("not started: {e}"),
        stderr: String::new(),
    })?;
    if !out.status.success() {
        return Err(Error::BootEnv {
            tool: tool.to_owned(),
            args: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `name=value` lines (as `fw_printenv` and `grub-editenv list` print them).
pub(crate) fn parse_env_listing(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
