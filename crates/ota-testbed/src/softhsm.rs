//! SoftHSM2 tokens for the PKCS#11 tests: a private configuration and token directory per
//! [`SoftHsm`], so tests never see each other's tokens or the machine's.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::require_program;

/// Where Debian's `softhsm2` package installs the module.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

/// A SoftHSM2 configuration of its own (`SOFTHSM2_CONF`) with an empty token directory, removed on
/// drop. Pass [`SoftHsm::env`] to every process that should see its tokens.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl SoftHsm {
    /// A fresh configuration and token directory. Panics when SoftHSM2 is not installed.
    pub fn new() -> SoftHsm {
        require_program("softhsm2-util", "softhsm2");
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        fs::create_dir(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        );
        fs::write(&conf, text).expect("write softhsm2.conf");
        SoftHsm { dir, conf }
    }

    /// The SoftHSM2 module (panics with an install hint when missing).
    pub fn module() -> PathBuf {
        MODULE_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "libsofthsm2.so not found; run `bash scripts/test.sh` or `apt-get install -y softhsm2`"
                )
            })
    }

    /// The environment variable and value that point SoftHSM2 at this configuration.
    pub fn env(&self) -> (&'static str, &Path) {
        ("SOFTHSM2_CONF", &self.conf)
    }

    /// A scratch directory that lives as long as this token set.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Initialises a token labelled `label` in the next free slot, with its user PIN set.
    pub fn init_token(&self, label: &str, so_pin: &str, user_pin: &str) {
        let out = Command::new(require_program("softhsm2-util", "softhsm2"))
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", so_pin, "--pin", user_pin])
            .output()
            .expect("run softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token {label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes `pin` to a new file with `mode` in the scratch directory and returns its path.
    pub fn pin_file(&self, name: &str, pin: &str, mode: u32) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, format!("{pin}\n")).expect("write pin file");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod pin file");
        p
    }
}

impl Default for SoftHsm {
    fn default() -> SoftHsm {
        SoftHsm::new()
    }
}
