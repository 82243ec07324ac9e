//! `GrubEnv` against the real `grub-editenv`, and the shipped grub.cfg snippet against
//! `grub-script-check`. Missing tools fail these tests (never skip).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use ota_slot::{BootControl, BootState, Error, GrubEnv, KernelCmdline, SlotId, TrialBoot};

struct Machine {
    dir: tempfile::TempDir,
    env: GrubEnv,
}

impl Machine {
    fn new() -> Machine {
        ota_testbed::require_program("grub-editenv", "grub-common");
        let dir = tempfile::tempdir().unwrap();
        let env = GrubEnv::create(dir.path().join("grubenv"), SlotId::A)
            .unwrap()
            .with_cmdline(KernelCmdline::new(dir.path().join("cmdline"), "ota.slot"));
        let m = Machine { dir, env };
        m.set_cmdline(SlotId::A);
        m
    }

    fn set_cmdline(&self, slot: SlotId) {
        std::fs::write(
            self.dir.path().join("cmdline"),
            format!("BOOT_IMAGE=/boot/vmlinuz ota.slot={slot}\n"),
        )
        .unwrap();
    }

    /// Plays `boot-scripts/grub-ota.cfg`: the same decision, saved like `save_env`.
    fn power_on(&self) -> SlotId {
        let mut state = self.env.state().unwrap();
        let slot = state.power_on();
        self.env.write_state(&state).unwrap();
        self.set_cmdline(slot);
        slot
    }

    fn listing(&self) -> String {
        let out = Command::new("grub-editenv")
            .arg(self.dir.path().join("grubenv"))
            .arg("list")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }
}

#[test]
fn grub_trial_commit_and_fallback() {
    let m = Machine::new();
    let mut env = m.env.clone();
    assert_eq!(
        (
            env.booted().unwrap(),
            env.primary().unwrap(),
            env.trial().unwrap()
        ),
        (SlotId::A, SlotId::A, None)
    );
    env.start_trial(SlotId::B, 1).unwrap();
    let listing = m.listing();
    for line in [
        "ota_primary=a",
        "ota_trial_slot=b",
        "upgrade_available=1",
        "bootcount=0",
        "bootlimit=1",
    ] {
        assert!(
            listing.lines().any(|l| l == line),
            "{line} missing from:\n{listing}"
        );
    }
    // The env block stays the fixed 1024 bytes GRUB's save_env rewrites in place.
    assert_eq!(
        std::fs::metadata(m.dir.path().join("grubenv")).unwrap().len(),
        1024
    );
    assert_eq!(m.power_on(), SlotId::B);
    assert_eq!(
        env.trial().unwrap(),
        Some(TrialBoot {
            slot: SlotId::B,
            tries_left: 0
        })
    );
    // Not committed: the next boot falls back.
    assert_eq!(m.power_on(), SlotId::A);
    assert_eq!(env.trial().unwrap(), None);
    assert!(
        !m.listing().contains("ota_trial_slot="),
        "unset, not empty:\n{}",
        m.listing()
    );

    env.start_trial(SlotId::B, 3).unwrap();
    assert_eq!(m.power_on(), SlotId::B);
    env.mark_good(SlotId::B).unwrap();
    let state = env.state().unwrap();
    // bootlimit keeps its last value, as U-Boot's does; it means nothing without upgrade_available.
    assert_eq!(
        state,
        BootState {
            bootlimit: 3,
            ..BootState::new(SlotId::B)
        }
    );
    assert_eq!(m.power_on(), SlotId::B);
    // A primary marked bad gives way to the other slot.
    env.mark_bad(SlotId::B).unwrap();
    assert_eq!(m.power_on(), SlotId::A);
}

#[test]
fn grub_refuses_what_its_script_cannot_count_and_missing_files() {
    let m = Machine::new();
    let mut env = m.env.clone();
    assert!(matches!(
        env.start_trial(SlotId::B, GrubEnv::MAX_TRIES + 1),
        Err(Error::Refused { .. })
    ));
    let err = GrubEnv::new(m.dir.path().join("nope")).primary().unwrap_err();
    assert!(matches!(err, Error::Io { op: "open", .. }), "{err}");
    let status = Command::new("grub-editenv")
        .arg(m.dir.path().join("grubenv"))
        .args(["set", "ota_primary=c"])
        .status()
        .unwrap();
    assert!(status.success());
    let err = env.primary().unwrap_err();
    assert!(
        matches!(&err, Error::BootEnvValue { name, .. } if name == "ota_primary"),
        "{err}"
    );
    // No temp file left behind by the staged writes.
    let names: Vec<_> = std::fs::read_dir(m.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn shipped_grub_cfg_snippet_parses() {
    let check = ota_testbed::require_program("grub-script-check", "grub-common");
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boot-scripts/grub-ota.cfg");
    let out = Command::new(check).arg(&cfg).output().unwrap();
    assert!(
        out.status.success(),
        "grub-script-check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
