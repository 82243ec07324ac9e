//! What the agent trusts on disk, checked at every start before it is used: the state directory and the
//! identity key closed to group and others (symlinks resolved, the target checked), and the pinned root
//! fingerprint still matching the trusted root. It does not repair anything (that is re-provisioning).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::identity::parse_fingerprint;

/// Largest pinned-root file accepted (64 hex digits and a newline).
const MAX_PINNED_FILE: u64 = 4096;
/// Largest trusted root read for the fingerprint check (TUF 5.3.3's suggested bound).
const MAX_ROOT_FILE: u64 = 512 * 1024;

/// Refuses a state directory that group or others may read or write.
pub fn check_state_dir(dir: &Path) -> Result<()> {
    check_private(dir, "state directory", "700").map(drop)
}

/// Refuses an identity key file that group or others may read or write, or that lives (symlinks
/// resolved) in a directory they may write (they could swap it).
pub fn check_key_file(path: &Path) -> Result<()> {
    let real = check_private(path, "identity key", "600")?;
    let parent = ota_fs::parent_dir(&real);
    let mode = mode_of(parent)?;
    if mode & 0o022 != 0 {
        return Err(Error::UnsafePermissions {
            what: "identity key's directory",
            path: parent.to_owned(),
            mode,
            fix: "go-w",
        });
    }
    Ok(())
}

/// Re-verifies the pinned root: `pinned` must hold a fingerprint, and while the trusted root
/// `root_json` is still version 1 (no rotation since provisioning) its sha256 must be that fingerprint.
pub fn check_pinned_root(pinned: &Path, root_json: &Path) -> Result<()> {
    let bad = |why: String| Error::PinnedRoot {
        path: pinned.to_owned(),
        why,
    };
    let bytes = ota_fs::read_bounded(pinned, MAX_PINNED_FILE)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not text (corrupt or overwritten)".into()))?;
    let fingerprint = parse_fingerprint(text).map_err(|_| bad("not a sha256 fingerprint".into()))?;
    let root = ota_fs::read_bounded(root_json, MAX_ROOT_FILE)?;
    let version = serde_json::from_slice::<serde_json::Value>(&root)
        .ok()
        .and_then(|v| v.pointer("/signed/version").and_then(serde_json::Value::as_u64));
    if version == Some(1) {
        let got = ota_release::Sha256Digest::of(&root);
        if got.0 != fingerprint {
            return Err(bad(format!(
                "holds {}, but the trusted root {} has sha256 {}",
                hex::encode(fingerprint),
                root_json.display(),
                got.to_hex()
            )));
        }
    }
    Ok(())
}

/// Resolves `path` and refuses its target when group or others have any access; returns the target.
fn check_private(path: &Path, what: &'static str, fix: &'static str) -> Result<PathBuf> {
    let real = std::fs::canonicalize(path).map_err(Error::io("resolve", path))?;
    let mode = mode_of(&real)?;
    if mode & 0o077 != 0 {
        return Err(Error::UnsafePermissions {
            what,
            path: real,
            mode,
            fix,
        });
    }
    Ok(real)
}

fn mode_of(path: &Path) -> Result<u32> {
    let meta = std::fs::metadata(path).map_err(Error::io("inspect", path))?;
    Ok(meta.mode() & 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn open_state_dirs_and_keys_are_refused_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o700);
        check_state_dir(&state).unwrap();
        chmod(&state, 0o777);
        let err = check_state_dir(&state).unwrap_err().to_string();
        assert!(err.contains("state directory") && err.contains("777"), "{err}");
        chmod(&state, 0o700);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o777);
        let key = shared.join("key");
        std::fs::write(&key, b"k").unwrap();
        chmod(&key, 0o600);
        let link = state.join("identity.key");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        let err = check_key_file(&link).unwrap_err().to_string();
        assert!(err.contains("directory") && err.contains("shared"), "{err}");
        chmod(&shared, 0o700);
        check_key_file(&link).unwrap();
        chmod(&key, 0o644);
        assert!(check_key_file(&link).unwrap_err().to_string().contains("644"));
    }

    #[test]
    fn a_zeroed_or_foreign_pinned_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.json");
        std::fs::write(&root, br#"{"signed":{"version":1}}"#).unwrap();
        let pinned = dir.path().join("root.sha256");
        let good = ota_release::Sha256Digest::of(&std::fs::read(&root).unwrap()).to_hex();
        std::fs::write(&pinned, format!("{good}\n")).unwrap();
        check_pinned_root(&pinned, &root).unwrap();
        std::fs::write(&pinned, [0u8; 65]).unwrap();
        let err = check_pinned_root(&pinned, &root).unwrap_err().to_string();
        assert!(err.contains("root.sha256"), "{err}");
        std::fs::write(&pinned, "0".repeat(64)).unwrap();
        let err = check_pinned_root(&pinned, &root).unwrap_err().to_string();
        assert!(err.contains("has sha256"), "{err}");
    }
}
