//! `GrubEnv`: boot control through GRUB's environment block with `grub-editenv`.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{parse_env_listing, run_tool, BootControl, BootState, KernelCmdline, TrialBoot};
use crate::error::{Error, Result};
use crate::slot::SlotId;

/// Boot control through GRUB's environment block (`/boot/grub/grubenv`), read with
/// `grub-editenv FILE list` and written with `grub-editenv FILE set/unset`.
///
/// `grub-editenv` rewrites its file in place, so a power cut in the middle could leave a broken block.
/// Every change is therefore staged: the file is copied next to itself, edited there (set, then unset),
/// and the edited block replaces the original through `ota_fs::write_atomic` (temp file, fsync, rename,
/// fsync the directory); the old or the new block survives.
/// GRUB finds the file's blocks anew at each boot, so the rename is safe for its `save_env`.
///
/// The variables are those of [`crate::boot`]'s table; the grub.cfg snippet that honours them is
/// `boot-scripts/grub-ota.cfg` in this crate. GRUB's script has no arithmetic, so the counter is an
/// if-chain and trials are limited to [`GrubEnv::MAX_TRIES`].
///
/// The running slot comes from the kernel command line (`ota.slot=a`, appended by grub.cfg).
#[derive(Debug, Clone)]
pub struct GrubEnv {
    file: PathBuf,
    cmdline: KernelCmdline,
    tool: String,
}

impl GrubEnv {
    /// Most tries a trial may be given (what the grub.cfg if-chain counts to).
    pub const MAX_TRIES: u8 = 3;

    /// The largest block this reads back (GRUB's is 1 KiB; anything far larger is not a grubenv).
    const MAX_BLOCK_BYTES: u64 = 64 * 1024;

    /// The environment block at `file` (must exist; see [`GrubEnv::create`]). Running slot from
    /// `/proc/cmdline`.
    pub fn new(file: impl AsRef<Path>) -> GrubEnv {
        GrubEnv {
            file: file.as_ref().to_owned(),
            cmdline: KernelCmdline::default(),
            tool: "grub-editenv".into(),
        }
    }

    /// Reads the running slot from another command-line source (tests: a plain file).
    pub fn with_cmdline(mut self, cmdline: KernelCmdline) -> GrubEnv {
        self.cmdline = cmdline;
        self
    }

    /// Creates a new environment block at `file` (replacing any) for a device whose `primary` slot holds
    /// the running image.
    pub fn create(file: impl AsRef<Path>, primary: SlotId) -> Result<GrubEnv> {
        let env = GrubEnv::new(file);
        env.write(None, &BootState::new(primary))?;
        Ok(env)
    }

    fn name(&self) -> String {
        format!("GRUB env {}", self.file.display())
    }

    /// Every variable of the block.
    pub fn variables(&self) -> Result<std::collections::BTreeMap<String, String>> {
        // grub-editenv lists a missing file as empty: check it exists so a wrong path is an error.
        File::open(&self.file).map_err(|e| Error::io("open", &self.file, e))?;
        let out = run_tool(&self.tool, &[self.file.as_os_str(), OsStr::new("list")])?;
        Ok(parse_env_listing(&out))
    }

    /// The A/B state the block holds.
    pub fn state(&self) -> Result<BootState> {
        let vars = self.variables()?;
        BootState::from_vars(&self.name(), |k| vars.get(k).map(String::as_str))
    }

    /// Writes all A/B variables as one replacement of the block (atomic, see the type's doc). The agent
    /// goes through [`BootControl`]; this is for provisioning and for playing grub.cfg in tests.
    pub fn write_state(&self, state: &BootState) -> Result<()> {
        self.write(Some(&self.file), state)
    }

    /// Writes the state: edit a scratch copy of the block (or a new one) with `grub-editenv`, then
    /// replace the block with it in one atomic write (`ota_fs::write_atomic`). The scratch copy is only
    /// a workspace for the tool; a power cut leaves it behind harmlessly and the next write replaces it.
    fn write(&self, existing: Option<&Path>, state: &BootState) -> Result<()> {
        let scratch = ota_fs::parent_dir(&self.file).join(format!(
            ".{}.ota-edit",
            self.file.file_name().unwrap_or_default().to_string_lossy()
        ));
        let result = self.edit(&scratch, existing, state).and_then(|()| {
            let block = ota_fs::read_bounded(&scratch, Self::MAX_BLOCK_BYTES)?;
            Ok(ota_fs::write_atomic(&self.file, &block, 0o644)?)
        });
        let _ = std::fs::remove_file(&scratch);
        result
    }

    /// Leaves at `scratch` a copy of `existing` (or a new block) with `state`'s variables set and the
    /// others unset.
    fn edit(&self, scratch: &Path, existing: Option<&Path>, state: &BootState) -> Result<()> {
        match existing {
            Some(src) => std::fs::copy(src, scratch)
                .map(drop)
                .map_err(|e| Error::io("copy", scratch, e))?,
            None => {
                let _ = std::fs::remove_file(scratch);
                run_tool(&self.tool, &[scratch.as_os_str(), OsStr::new("create")])?;
            }
        }
        let vars = state.to_vars();
        let sets: Vec<String> = vars
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        let mut args: Vec<&OsStr> = vec![scratch.as_os_str(), OsStr::new("set")];
        args.extend(sets.iter().map(OsStr::new));
        run_tool(&self.tool, &args)?;
        let unsets: Vec<&str> = vars
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !unsets.is_empty() {
            let mut args: Vec<&OsStr> = vec![scratch.as_os_str(), OsStr::new("unset")];
            args.extend(unsets.iter().map(OsStr::new));
            run_tool(&self.tool, &args)?;
        }
        Ok(())
    }
}

env_boot_control!(GrubEnv);
