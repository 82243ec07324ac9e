//! The three boot-control backends answer the same scenario identically: U-Boot (real fw_setenv), GRUB
//! (real grub-editenv) and the simulated bootloader (on a file). The bootloader's power-on decision is
//! played by `SimBootloader::reboot` for the simulation and by the boot scripts' logic
//! (`BootState::power_on`, saved through the backend, slot written to the kernel command line) for the
//! real environments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use ota_slot::{BootControl, FileSlot, GrubEnv, KernelCmdline, SimBootloader, SlotId, TrialBoot, UBootEnv};

/// A backend plus the way its bootloader runs at power-on.
trait Machine {
    fn control(&mut self) -> &mut dyn BootControl;
    fn power_on(&mut self) -> SlotId;
}

struct Sim(SimBootloader<FileSlot>);

impl Machine for Sim {
    fn control(&mut self) -> &mut dyn BootControl {
        &mut self.0
    }
    fn power_on(&mut self) -> SlotId {
        self.0.reboot().unwrap()
    }
}

fn write_cmdline(path: &Path, slot: SlotId) {
    std::fs::write(path, format!("quiet ota.slot={slot}\n")).unwrap();
}

struct UBoot(UBootEnv, PathBuf);

impl Machine for UBoot {
    fn control(&mut self) -> &mut dyn BootControl {
        &mut self.0
    }
    fn power_on(&mut self) -> SlotId {
        let mut state = self.0.state().unwrap();
        let slot = state.power_on();
        self.0.write_state(&state).unwrap();
        write_cmdline(&self.1, slot);
        slot
    }
}

struct Grub(GrubEnv, PathBuf);

impl Machine for Grub {
    fn control(&mut self) -> &mut dyn BootControl {
        &mut self.0
    }
    fn power_on(&mut self) -> SlotId {
        let mut state = self.0.state().unwrap();
        let slot = state.power_on();
        self.0.write_state(&state).unwrap();
        write_cmdline(&self.1, slot);
        slot
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Observed {
    booted: SlotId,
    primary: SlotId,
    trial: Option<TrialBoot>,
}

fn observe(m: &mut dyn Machine) -> Observed {
    let c = m.control();
    Observed {
        booted: c.booted().unwrap(),
        primary: c.primary().unwrap(),
        trial: c.trial().unwrap(),
    }
}

/// Update committed, update failing its health check (rolled back), update never confirmed (fallback by
/// try count), then a second successful update back to slot a.
fn scenario(m: &mut dyn Machine) -> Vec<Observed> {
    let mut log = vec![observe(m)];
    let mut step = |m: &mut dyn Machine, f: &dyn Fn(&mut dyn Machine)| {
        f(m);
        log.push(observe(m));
    };
    step(m, &|m| m.control().mark_bad(SlotId::B).unwrap());
    step(m, &|m| m.control().start_trial(SlotId::B, 1).unwrap());
    step(m, &|m| assert_eq!(m.power_on(), SlotId::B));
    step(m, &|m| m.control().mark_good(SlotId::B).unwrap());
    step(m, &|m| assert_eq!(m.power_on(), SlotId::B));
    step(m, &|m| m.control().start_trial(SlotId::A, 1).unwrap());
    step(m, &|m| assert_eq!(m.power_on(), SlotId::A));
    step(m, &|m| m.control().mark_bad(SlotId::A).unwrap());
    step(m, &|m| assert_eq!(m.power_on(), SlotId::B));
    step(m, &|m| m.control().start_trial(SlotId::A, 2).unwrap());
    step(m, &|m| assert_eq!(m.power_on(), SlotId::A));
    step(m, &|m| assert_eq!(m.power_on(), SlotId::A));
    step(m, &|m| assert_eq!(m.power_on(), SlotId::B));
    step(m, &|m| m.control().start_trial(SlotId::A, 3).unwrap());
    step(m, &|m| assert_eq!(m.power_on(), SlotId::A));
    step(m, &|m| m.control().mark_good(SlotId::A).unwrap());
    step(m, &|m| assert_eq!(m.power_on(), SlotId::A));
    log
}

#[test]
fn uboot_grub_and_sim_backends_behave_identically() {
    ota_testbed::require_program("fw_setenv", "libubootenv-tool");
    ota_testbed::require_program("fw_printenv", "libubootenv-tool");
    ota_testbed::require_program("grub-editenv", "grub-common");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let mut sim = Sim(SimBootloader::create_file(d.join("sim.env"), SlotId::A).unwrap());

    for copy in ["u.0", "u.1"] {
        std::fs::write(d.join(copy), vec![0u8; 0x2000]).unwrap();
    }
    std::fs::write(
        d.join("fw_env.config"),
        format!("{p}/u.0 0x0 0x2000\n{p}/u.1 0x0 0x2000\n", p = d.display()),
    )
    .unwrap();
    std::fs::write(d.join("defaults"), "").unwrap();
    let ucmd = d.join("u.cmdline");
    write_cmdline(&ucmd, SlotId::A);
    let uenv = UBootEnv::new(d.join("fw_env.config"))
        .with_default_env(d.join("defaults"))
        .with_cmdline(KernelCmdline::new(&ucmd, "ota.slot"));
    uenv.provision(SlotId::A).unwrap();
    let mut uboot = UBoot(uenv, ucmd);

    let gcmd = d.join("g.cmdline");
    write_cmdline(&gcmd, SlotId::A);
    let genv = GrubEnv::create(d.join("grubenv"), SlotId::A)
        .unwrap()
        .with_cmdline(KernelCmdline::new(&gcmd, "ota.slot"));
    let mut grub = Grub(genv, gcmd);

    let expected = scenario(&mut sim);
    assert_eq!(expected.len(), 18);
    assert_eq!(
        expected.last().unwrap(),
        &Observed {
            booted: SlotId::A,
            primary: SlotId::A,
            trial: None
        }
    );
    assert_eq!(
        scenario(&mut uboot),
        expected,
        "U-Boot differs from the simulation"
    );
    assert_eq!(scenario(&mut grub), expected, "GRUB differs from the simulation");
}
