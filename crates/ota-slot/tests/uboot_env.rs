//! `UBootEnv` against the real `fw_printenv`/`fw_setenv` (libubootenv-tool) on a redundant environment
//! kept in two files. Missing tools fail these tests (never skip).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ota_slot::{BootControl, BootState, Error, KernelCmdline, SlotId, TrialBoot, UBootEnv};

const ENV_SIZE: usize = 0x4000;

struct Board {
    dir: tempfile::TempDir,
    env: UBootEnv,
}

impl Board {
    /// Two blank env copies (as on a freshly flashed board) and a config describing them.
    fn new() -> Board {
        ota_testbed::require_program("fw_printenv", "libubootenv-tool");
        ota_testbed::require_program("fw_setenv", "libubootenv-tool");
        let dir = tempfile::tempdir().unwrap();
        for copy in ["env.0", "env.1"] {
            std::fs::write(dir.path().join(copy), vec![0u8; ENV_SIZE]).unwrap();
        }
        let config = dir.path().join("fw_env.config");
        std::fs::write(
            &config,
            format!(
                "{d}/env.0 0x0 {ENV_SIZE:#x}\n{d}/env.1 0x0 {ENV_SIZE:#x}\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        // The board's default environment, used only while no valid copy exists.
        let defaults = dir.path().join("defaults.env");
        std::fs::write(&defaults, "bootdelay=3\nbootcmd=run ota_boot\n").unwrap();
        let cmdline = dir.path().join("cmdline");
        let env = UBootEnv::new(&config)
            .with_default_env(&defaults)
            .with_cmdline(KernelCmdline::new(&cmdline, "ota.slot"));
        let board = Board { dir, env };
        board.set_cmdline(SlotId::A);
        board
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("fw_env.config")
    }

    fn set_cmdline(&self, slot: SlotId) {
        std::fs::write(
            self.dir.path().join("cmdline"),
            format!("console=ttyS0 root=/dev/x ota.slot={slot} quiet\n"),
        )
        .unwrap();
    }

    /// Plays `boot-scripts/u-boot-ota.cmd` at power-on: the same decision, saved with fw_setenv.
    fn power_on(&self) -> SlotId {
        let mut state = self.env.state().unwrap();
        let before = state;
        let slot = state.power_on();
        if state != before {
            self.env.write_state(&state).unwrap();
        }
        self.set_cmdline(slot);
        slot
    }

    fn printenv(&self, name: &str) -> String {
        let out = Command::new("fw_printenv")
            .arg("-c")
            .arg(self.config())
            .arg("-n")
            .arg(name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fw_printenv {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// Flag byte (offset 4) of each copy: libubootenv marks the current copy with the higher flag.
fn flags(dir: &Path) -> (u8, u8) {
    let a = std::fs::read(dir.join("env.0")).unwrap();
    let b = std::fs::read(dir.join("env.1")).unwrap();
    (a[4], b[4])
}

#[test]
fn uboot_trial_boot_then_commit() {
    let board = Board::new();
    let mut env = board.env.clone();
    env.provision(SlotId::A).unwrap();
    assert_eq!(board.printenv("ota_primary"), "a");
    assert_eq!(board.printenv("bootdelay"), "3", "board defaults kept");
    assert_eq!(
        (
            env.booted().unwrap(),
            env.primary().unwrap(),
            env.trial().unwrap()
        ),
        (SlotId::A, SlotId::A, None)
    );

    env.mark_bad(SlotId::B).unwrap();
    assert_eq!(board.printenv("ota_bad_b"), "1");
    env.start_trial(SlotId::B, 1).unwrap();
    // The variables the boot script reads, exactly.
    for (name, value) in [
        ("ota_trial_slot", "b"),
        ("upgrade_available", "1"),
        ("bootcount", "0"),
        ("bootlimit", "1"),
        ("ota_bad_b", "0"),
        ("ota_primary", "a"),
    ] {
        assert_eq!(board.printenv(name), value, "{name}");
    }
    assert_eq!(
        env.trial().unwrap(),
        Some(TrialBoot {
            slot: SlotId::B,
            tries_left: 1
        })
    );

    assert_eq!(board.power_on(), SlotId::B);
    assert_eq!(env.booted().unwrap(), SlotId::B);
    assert_eq!(board.printenv("bootcount"), "1");
    assert_eq!(
        env.trial().unwrap(),
        Some(TrialBoot {
            slot: SlotId::B,
            tries_left: 0
        })
    );

    env.mark_good(SlotId::B).unwrap();
    assert_eq!(env.primary().unwrap(), SlotId::B);
    assert_eq!(env.trial().unwrap(), None);
    assert_eq!(board.printenv("upgrade_available"), "0");
    assert_eq!(board.power_on(), SlotId::B);
}

#[test]
fn uboot_trial_falls_back_when_tries_run_out_and_rollback_marks_bad() {
    let board = Board::new();
    let mut env = board.env.clone();
    env.provision(SlotId::A).unwrap();
    env.start_trial(SlotId::B, 2).unwrap();
    assert_eq!(board.power_on(), SlotId::B);
    assert_eq!(board.power_on(), SlotId::B);
    // Third boot: the tries are used up, the bootloader ends the trial and boots the primary.
    assert_eq!(board.power_on(), SlotId::A);
    assert_eq!(env.trial().unwrap(), None);
    assert_eq!(board.printenv("upgrade_available"), "0");
    env.mark_bad(SlotId::B).unwrap();
    assert_eq!(board.power_on(), SlotId::A);

    // An explicit rollback during a running trial: mark bad ends it, the next boot is the primary.
    env.start_trial(SlotId::B, 1).unwrap();
    assert_eq!(board.power_on(), SlotId::B);
    env.mark_bad(SlotId::B).unwrap();
    assert_eq!(env.trial().unwrap(), None);
    assert_eq!(board.power_on(), SlotId::A);
    assert_eq!(env.primary().unwrap(), SlotId::A);
}

#[test]
fn uboot_changes_go_to_the_other_copy_and_a_broken_current_copy_leaves_the_previous_state() {
    let board = Board::new();
    let mut env = board.env.clone();
    env.provision(SlotId::A).unwrap();
    let f1 = flags(board.dir.path());
    env.start_trial(SlotId::B, 1).unwrap();
    let f2 = flags(board.dir.path());
    // One fw_setenv call wrote one copy: exactly one flag moved.
    assert!((f1.0 != f2.0) ^ (f1.1 != f2.1), "flags {f1:?} -> {f2:?}");
    // Tear the copy just written (as a power cut in the middle of fw_setenv would).
    let current = if f2.0 > f2.1 { "env.0" } else { "env.1" };
    let path = board.dir.path().join(current);
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[10..200] {
        *b ^= 0x55;
    }
    std::fs::write(&path, bytes).unwrap();
    // The previous environment is read back whole: no trial, primary a.
    let state = env.state().unwrap();
    assert_eq!(state, BootState::new(SlotId::A));
}

#[test]
fn uboot_refuses_bad_values_and_reports_tool_failures() {
    let board = Board::new();
    let mut env = board.env.clone();
    // Not provisioned: ota_primary missing is named.
    let err = env.primary().unwrap_err();
    assert!(
        matches!(&err, Error::BootEnvValue { name, .. } if name == "ota_primary"),
        "{err}"
    );
    env.provision(SlotId::A).unwrap();
    let status = Command::new("fw_setenv")
        .arg("-c")
        .arg(board.config())
        .args(["bootcount", "x7"])
        .status()
        .unwrap();
    assert!(status.success());
    let err = env.trial().unwrap_err();
    assert!(
        matches!(&err, Error::BootEnvValue { name, problem, .. } if name == "bootcount" && problem.contains("x7")),
        "{err}"
    );

    // A damaged environment is not written over either.
    assert!(matches!(
        env.start_trial(SlotId::B, 1),
        Err(Error::BootEnvValue { .. })
    ));
    let status = Command::new("fw_setenv")
        .arg("-c")
        .arg(board.config())
        .args(["bootcount", "0"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(matches!(
        env.start_trial(SlotId::B, 0),
        Err(Error::Refused { .. })
    ));
    assert!(matches!(
        env.start_trial(SlotId::B, UBootEnv::MAX_TRIES + 1),
        Err(Error::Refused { .. })
    ));

    // A config naming a device that does not exist: the tool's own complaint comes back.
    let broken = board.dir.path().join("broken.config");
    std::fs::write(
        &broken,
        "/nonexistent/env 0x0 0x4000\n/nonexistent/env2 0x0 0x4000\n",
    )
    .unwrap();
    let err = UBootEnv::new(&broken).primary().unwrap_err();
    assert!(
        matches!(&err, Error::BootEnv { tool, .. } if tool == "fw_printenv"),
        "{err}"
    );

    // The command line without the key.
    std::fs::write(board.dir.path().join("cmdline"), "console=ttyS0\n").unwrap();
    assert!(matches!(env.booted(), Err(Error::BootedUnknown { .. })));
}

/// The layout of a real board: both copies in one device at two offsets (like `/dev/mmcblk0` or an MTD
/// partition), the second copy taking over when the first is destroyed.
#[test]
fn uboot_redundant_copies_at_two_offsets_of_one_device() {
    ota_testbed::require_program("fw_setenv", "libubootenv-tool");
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("mmcblk0");
    std::fs::write(&device, vec![0u8; 0x8000]).unwrap();
    let config = dir.path().join("fw_env.config");
    std::fs::write(
        &config,
        format!("{d} 0x0 0x2000\n{d} 0x4000 0x2000\n", d = device.display()),
    )
    .unwrap();
    let defaults = dir.path().join("defaults");
    std::fs::write(&defaults, "").unwrap();
    let mut env = UBootEnv::new(&config).with_default_env(&defaults);
    env.provision(SlotId::A).unwrap();
    env.start_trial(SlotId::B, 3).unwrap();
    env.mark_good(SlotId::B).unwrap();
    assert_eq!(env.primary().unwrap(), SlotId::B);
    // Destroy whichever copy is current: the other one holds the state before the commit.
    let mut bytes = std::fs::read(&device).unwrap();
    let current = if bytes[4] > bytes[0x4004] { 0 } else { 0x4000 };
    bytes[current..current + 0x2000].fill(0);
    std::fs::write(&device, bytes).unwrap();
    assert_eq!(env.primary().unwrap(), SlotId::A);
    assert_eq!(
        env.trial().unwrap(),
        Some(TrialBoot {
            slot: SlotId::B,
            tries_left: 3
        })
    );
}
