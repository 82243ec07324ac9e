//! The simulated bootloader: try counting across reboots on a file (reboot = reopen, as after a process
//! restart) and on simulated NOR flash, and its redundant environment under a power cut at every step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_slot::{
    BootControl, BootState, CutMode, Error, FileSlot, FlashMemory, PowerCut, SimBootloader, SimFlash, Slot,
    SlotId, TrialBoot,
};

#[test]
fn file_backed_bootloader_counts_tries_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootenv");
    let open = || SimBootloader::open(FileSlot::open(&path, 8192).unwrap()).unwrap();
    SimBootloader::provision(FileSlot::create(&path, 8192).unwrap(), SlotId::A).unwrap();

    let mut boot = open();
    assert_eq!(
        (
            boot.booted().unwrap(),
            boot.primary().unwrap(),
            boot.trial().unwrap()
        ),
        (SlotId::A, SlotId::A, None)
    );
    boot.mark_bad(SlotId::B).unwrap();
    boot.start_trial(SlotId::B, 2).unwrap();
    drop(boot);

    // Each "reboot" is a fresh process: reopen, let the bootloader choose.
    assert_eq!(open().reboot().unwrap(), SlotId::B);
    assert_eq!(
        open().trial().unwrap(),
        Some(TrialBoot {
            slot: SlotId::B,
            tries_left: 1
        })
    );
    assert_eq!(open().booted().unwrap(), SlotId::B);
    assert_eq!(open().reboot().unwrap(), SlotId::B);
    assert_eq!(
        open().reboot().unwrap(),
        SlotId::A,
        "tries exhausted: back to the primary"
    );
    assert_eq!(open().trial().unwrap(), None);

    let mut boot = open();
    boot.start_trial(SlotId::B, 1).unwrap();
    assert_eq!(boot.reboot().unwrap(), SlotId::B);
    boot.mark_good(SlotId::B).unwrap();
    assert_eq!(open().reboot().unwrap(), SlotId::B);
    assert_eq!(open().primary().unwrap(), SlotId::B);

    // Rollback of a running trial.
    let mut boot = open();
    boot.start_trial(SlotId::A, 1).unwrap();
    assert_eq!(boot.reboot().unwrap(), SlotId::A);
    boot.mark_bad(SlotId::A).unwrap();
    assert_eq!(boot.trial().unwrap(), None);
    assert_eq!(boot.reboot().unwrap(), SlotId::B);
    assert!(boot.state().unwrap().is_bad(SlotId::A));
}

#[test]
fn env_geometry_and_blank_env_are_errors() {
    let flash = SimFlash::<4, 256>::new(1024, 0xFF, PowerCut::never()).unwrap();
    let small = flash.slot(0, 256).unwrap();
    assert!(matches!(
        SimBootloader::provision(small, SlotId::A),
        Err(Error::Geometry { .. })
    ));
    let blank = flash.slot(0, 512).unwrap();
    let err = SimBootloader::open(blank).err().unwrap();
    assert!(
        matches!(&err, Error::NoValidEnv { copy0, .. } if copy0.contains("no magic")),
        "{err}"
    );
    assert_eq!(SimBootloader::<FileSlot>::env_len(4096, 1), 8192);
}

#[test]
fn both_erased_values_work() {
    for erased in [0xFF, 0x00] {
        let flash = SimFlash::<8, 512>::new(2048, erased, PowerCut::never()).unwrap();
        let mut boot = SimBootloader::provision(flash.slot(0, 1024).unwrap(), SlotId::B).unwrap();
        boot.start_trial(SlotId::A, 1).unwrap();
        assert_eq!(boot.reboot().unwrap(), SlotId::A);
        let mut again = SimBootloader::open(flash.slot(0, 1024).unwrap()).unwrap();
        assert_eq!(
            again.trial().unwrap(),
            Some(TrialBoot {
                slot: SlotId::A,
                tries_left: 0
            })
        );
    }
}

/// What the environment says: the A/B state and the booted slot.
type Seen = (BootState, SlotId);

#[derive(Debug, Clone, Copy)]
enum Step {
    Reboot,
    StartTrial(SlotId, u8),
    MarkGood(SlotId),
    MarkBad(SlotId),
}

/// Install-commit, failed trial with rollback, exhausted tries, repeated marks.
const SCENARIO: [Step; 14] = [
    Step::MarkBad(SlotId::B),
    Step::StartTrial(SlotId::B, 1),
    Step::Reboot,
    Step::MarkGood(SlotId::B),
    Step::Reboot,
    Step::MarkBad(SlotId::A),
    Step::StartTrial(SlotId::A, 1),
    Step::Reboot,
    Step::MarkBad(SlotId::A),
    Step::Reboot,
    Step::StartTrial(SlotId::A, 2),
    Step::Reboot,
    Step::Reboot,
    Step::Reboot,
];

const ENV_LEN: u64 = 1024;

fn open(memory: &FlashMemory, power: PowerCut) -> SimBootloader<ota_slot::NorFlashSlot<SimFlash<4, 512>>> {
    let flash = SimFlash::<4, 512>::with_memory(memory.clone(), power).unwrap();
    SimBootloader::open(flash.slot(0, ENV_LEN).unwrap()).unwrap()
}

fn seen<S: Slot>(boot: &mut SimBootloader<S>) -> Seen {
    (boot.state().unwrap(), boot.booted().unwrap())
}

fn apply<S: Slot>(boot: &mut SimBootloader<S>, step: Step) -> Result<(), Error> {
    match step {
        Step::Reboot => boot.reboot().map(drop),
        Step::StartTrial(slot, tries) => boot.start_trial(slot, tries),
        Step::MarkGood(slot) => boot.mark_good(slot),
        Step::MarkBad(slot) => boot.mark_bad(slot),
    }
}

fn provisioned(erased: u8) -> FlashMemory {
    let flash = SimFlash::<4, 512>::new(ENV_LEN as usize, erased, PowerCut::never()).unwrap();
    SimBootloader::provision(flash.slot(0, ENV_LEN).unwrap(), SlotId::A).unwrap();
    flash.memory()
}

/// Cut power before, after and in the middle of every erase and write of the scenario. After each cut:
/// reboot (fresh handles over the same memory), the env opens, and it holds exactly the state before the
/// interrupted step or the state after it; then the step is redone and the rest of the scenario runs to
/// the same end as without a cut.
#[test]
fn env_survives_a_power_cut_at_every_step() {
    for erased in [0xFF, 0x00] {
        // Reference run: the state after each step, and how many flash operations the scenario takes.
        let memory = provisioned(erased);
        let power = PowerCut::never();
        let mut boot = open(&memory, power.clone());
        let mut expected: Vec<Seen> = vec![seen(&mut boot)];
        for step in SCENARIO {
            apply(&mut boot, step).unwrap();
            expected.push(seen(&mut boot));
        }
        let total_ops = power.ops();
        assert!(
            total_ops >= 20,
            "scenario too short to mean anything: {total_ops} ops"
        );

        let mut tried = 0;
        for cut in 0..total_ops {
            for mode in CutMode::ALL {
                tried += 1;
                let memory = provisioned(erased);
                let power = PowerCut::after(cut, mode).with_seed(cut * 7 + tried);
                let mut boot = open(&memory, power.clone());
                let mut failed_at = None;
                for (i, step) in SCENARIO.iter().enumerate() {
                    if let Err(e) = apply(&mut boot, *step) {
                        assert!(e.is_power_loss(), "cut {cut} {mode:?}: step {i} failed with {e}");
                        failed_at = Some(i);
                        break;
                    }
                }
                let i = failed_at.unwrap_or_else(|| panic!("cut {cut} {mode:?} never happened"));
                assert!(power.is_cut());

                // Reboot: new handles, the old budget stays dead.
                let mut boot = open(&memory, PowerCut::never());
                let now = seen(&mut boot);
                assert!(
                    now == expected[i] || now == expected[i + 1],
                    "cut {cut} {mode:?} in step {i} ({:?}): env holds {now:?}, expected old {:?} or new {:?}",
                    SCENARIO[i],
                    expected[i],
                    expected[i + 1]
                );
                // Redo the interrupted step unless it landed, then finish the scenario.
                if now == expected[i] {
                    apply(&mut boot, SCENARIO[i]).unwrap();
                }
                for step in &SCENARIO[i + 1..] {
                    apply(&mut boot, *step).unwrap();
                }
                assert_eq!(
                    seen(&mut boot),
                    *expected.last().unwrap(),
                    "cut {cut} {mode:?}: end state"
                );
            }
        }
        assert_eq!(tried, total_ops * 3);
        println!("erased {erased:#04x}: {tried} cut points tried ({total_ops} operations x 3 modes)");
    }
}
