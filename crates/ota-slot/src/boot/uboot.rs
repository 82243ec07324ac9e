//! `UBootEnv`: boot control through U-Boot's environment with libubootenv's `fw_printenv`/`fw_setenv`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{parse_env_listing, run_tool, BootControl, BootState, KernelCmdline, TrialBoot};
use crate::error::{Error, Result};
use crate::slot::SlotId;

/// Boot control through U-Boot's environment, read with `fw_printenv` and written with `fw_setenv`
/// (libubootenv-tool), both given the config file (`-c`).
///
/// The config should describe a **redundant** environment (two lines: two copies). Every change is staged
/// in memory and written by ONE `fw_setenv -s script` call: libubootenv writes the whole environment into
/// the inactive copy and only then flags it current, so a power cut leaves the old or the new environment,
/// never a mix. Example config for two files (or two MTD/eMMC offsets on a board):
///
/// ```text
/// /var/lib/ota/uboot-env.0  0x0  0x4000
/// /var/lib/ota/uboot-env.1  0x0  0x4000
/// ```
///
/// The variables are those of [`crate::boot`]'s table; the U-Boot boot script that honours them is
/// `boot-scripts/u-boot-ota.cmd` in this crate (compile it with `mkimage -T script`). Its counter uses
/// `setexpr`, which computes in hex, so trials are limited to [`UBootEnv::MAX_TRIES`] (single digits);
/// the board must not also enable `CONFIG_BOOTCOUNT_ENV` (it would count twice). A U-Boot without
/// environment storage or `setexpr` (Debian's QEMU build) uses `boot-scripts/u-boot-ota-qemu-x86.cmd`,
/// which reads and writes the redundant copies itself; the `ota-e2e` test `qemu_boot` boots it for real.
///
/// The running slot comes from the kernel command line (`ota.slot=a`, appended by the script).
#[derive(Debug, Clone)]
pub struct UBootEnv {
    config: PathBuf,
    defaults: Option<PathBuf>,
    cmdline: KernelCmdline,
    printenv: String,
    setenv: String,
}

impl UBootEnv {
    /// Most tries a trial may be given (what the boot script's decimal-in-hex counter can count to).
    pub const MAX_TRIES: u8 = 9;

    /// The environment described by `config` (the `fw_env.config` format), running slot from
    /// `/proc/cmdline`.
    pub fn new(config: impl AsRef<Path>) -> UBootEnv {
        UBootEnv {
            config: config.as_ref().to_owned(),
            defaults: None,
            cmdline: KernelCmdline::default(),
            printenv: "fw_printenv".to_owned(),
            setenv: "fw_setenv".to_owned(),
        }
    }

    /// A default environment file (`-f`), used by the tools when no valid copy exists yet (first boot of
    /// a board whose env partition is blank).
    pub fn with_default_env(mut self, path: impl AsRef<Path>) -> UBootEnv {
        self.defaults = Some(path.as_ref().to_owned());
        self
    }

    /// Reads the running slot from another command-line source (tests: a plain file).
    pub fn with_cmdline(mut self, cmdline: KernelCmdline) -> UBootEnv {
        self.cmdline = cmdline;
        self
    }

    /// Uses other programs than `fw_printenv`/`fw_setenv` from `PATH`.
    pub fn with_tools(mut self, printenv: &str, setenv: &str) -> UBootEnv {
        self.printenv = printenv.to_owned();
        self.setenv = setenv.to_owned();
        self
    }

    fn name(&self) -> String {
        format!("U-Boot env {}", self.config.display())
    }

    fn base_args(&self) -> Vec<&OsStr> {
        let mut args: Vec<&OsStr> = vec![OsStr::new("-c"), self.config.as_os_str()];
        if let Some(defaults) = &self.defaults {
            args.push(OsStr::new("-f"));
            args.push(defaults.as_os_str());
        }
        args
    }

    /// Every variable of the environment.
    pub fn variables(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(parse_env_listing(&run_tool(&self.printenv, &self.base_args())?))
    }

    /// The A/B state the environment holds.
    pub fn state(&self) -> Result<BootState> {
        let vars = self.variables()?;
        BootState::from_vars(&self.name(), |k| vars.get(k).map(String::as_str))
    }

    /// Writes the A/B variables for a fresh device whose `primary` slot holds the running image (other
    /// variables of the environment are kept).
    pub fn provision(&self, primary: SlotId) -> Result<()> {
        self.write_state(&BootState::new(primary))
    }

    /// Writes all A/B variables in one `fw_setenv -s` call (atomic on a redundant environment). The agent
    /// goes through [`BootControl`]; this is for provisioning and for playing the boot script in tests.
    pub fn write_state(&self, state: &BootState) -> Result<()> {
        let mut script =
            tempfile::NamedTempFile::new().map_err(|e| Error::io("create", "fw_setenv script", e))?;
        let mut text = String::new();
        for (name, value) in state.to_vars() {
            // libubootenv's script format: `name=value`; `name=` deletes the variable.
            text.push_str(name);
            text.push('=');
            text.push_str(value.as_deref().unwrap_or(""));
            text.push('\n');
        }
        script
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("write", script.path(), e))?;
        script.flush().map_err(|e| Error::io("write", script.path(), e))?;
        let mut args = self.base_args();
        args.push(OsStr::new("-s"));
        args.push(script.path().as_os_str());
        run_tool(&self.setenv, &args).map(drop)
    }
}

env_boot_control!(UBootEnv);
