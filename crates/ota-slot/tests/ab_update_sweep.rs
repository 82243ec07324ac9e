//! The power-cut machinery end to end on one simulated chip (`AbFlashLayout`): a minimal A/B update
//! (mark bad, stream, verify, trial, reboot, commit) cut before, after and in the middle of every erase
//! and write. After each cut the bootloader boots a slot holding a verified image, and rerunning the
//! update finishes it. This is the pattern the device agent's sweep follows with the real agent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;

use ota_slot::{
    slot_sha256, AbFlashLayout, BootControl, CutMode, Error, FlashMemory, PowerCut, SimBootloader, SimFlash,
    SlotId, SlotWriter,
};
use sha2::{Digest, Sha256};

type Flash = SimFlash<4, 512>;

fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

struct Device {
    layout: AbFlashLayout,
    v1: Vec<u8>,
    v2: Vec<u8>,
}

impl Device {
    fn flash(&self, memory: &FlashMemory, power: PowerCut) -> Flash {
        Flash::with_memory(memory.clone(), power).unwrap()
    }

    /// Factory state: v1 in slot a, env says a.
    fn factory(&self, erased: u8) -> FlashMemory {
        let flash = Flash::new(self.layout.capacity() as usize, erased, PowerCut::never()).unwrap();
        let mut a = self.layout.slot(&flash, SlotId::A).unwrap();
        let mut w = SlotWriter::new(&mut a, self.v1.len() as u64).unwrap();
        w.write_all(&self.v1).unwrap();
        w.finish().unwrap();
        SimBootloader::provision(self.layout.env(&flash).unwrap(), SlotId::A).unwrap();
        flash.memory()
    }

    /// A minimal agent: finish the update to v2 in slot b from whatever state the env shows.
    fn update(&self, flash: &Flash) -> Result<(), Error> {
        let mut boot = SimBootloader::open(self.layout.env(flash)?)?;
        let (state, booted) = (boot.state()?, boot.booted()?);
        if state.primary == SlotId::B && booted == SlotId::B {
            return Ok(());
        }
        if state.trial().is_some_and(|t| t.slot == SlotId::B) && booted == SlotId::B {
            return boot.mark_good(SlotId::B);
        }
        boot.mark_bad(SlotId::B)?;
        let mut slot = self.layout.slot(flash, SlotId::B)?;
        let mut w = SlotWriter::new(&mut slot, self.v2.len() as u64)?;
        w.write_all(&self.v2)
            .map_err(|e| *e.into_inner().unwrap().downcast::<Error>().unwrap())?;
        w.finish()?;
        let digest: [u8; 32] = Sha256::digest(&self.v2).into();
        assert_eq!(
            slot_sha256(&mut slot, self.v2.len() as u64)?,
            digest,
            "read-back verify"
        );
        boot.start_trial(SlotId::B, 1)?;
        if boot.reboot()? == SlotId::B {
            boot.mark_good(SlotId::B)?;
        }
        Ok(())
    }

    /// The image the booted slot must hold.
    fn check_booted(&self, flash: &Flash, booted: SlotId, context: &str) {
        let want = match booted {
            SlotId::A => &self.v1,
            SlotId::B => &self.v2,
        };
        let mut slot = self.layout.slot(flash, booted).unwrap();
        let digest: [u8; 32] = Sha256::digest(want).into();
        assert_eq!(
            slot_sha256(&mut slot, want.len() as u64).unwrap(),
            digest,
            "{context}: slot {booted} boots garbage"
        );
    }
}

#[test]
fn ab_update_survives_a_power_cut_at_every_operation() {
    let device = Device {
        layout: AbFlashLayout::new(8 * 512, 512, 4).unwrap(),
        v1: image(3001, 1),
        v2: image(3500, 2),
    };
    for erased in [0xFF, 0x00] {
        let memory = device.factory(erased);
        let power = PowerCut::never();
        device.update(&device.flash(&memory, power.clone())).unwrap();
        let ops = power.ops();
        let mut tried = 0;
        for cut in 0..ops {
            for mode in CutMode::ALL {
                tried += 1;
                let context = format!("erased {erased:#04x}, cut {cut} {mode:?}");
                let memory = device.factory(erased);
                let power = PowerCut::after(cut, mode).with_seed(cut);
                let err = device.update(&device.flash(&memory, power)).unwrap_err();
                assert!(err.is_power_loss(), "{context}: {err}");
                // Power comes back: the bootloader picks a slot, which must hold a verified image.
                let flash = device.flash(&memory, PowerCut::never());
                let booted = SimBootloader::open(device.layout.env(&flash).unwrap())
                    .unwrap()
                    .reboot()
                    .unwrap();
                device.check_booted(&flash, booted, &context);
                // The agent runs again and finishes the update.
                device.update(&flash).unwrap();
                let mut boot = SimBootloader::open(device.layout.env(&flash).unwrap()).unwrap();
                assert_eq!(
                    (boot.primary().unwrap(), boot.booted().unwrap()),
                    (SlotId::B, SlotId::B),
                    "{context}"
                );
                device.check_booted(&flash, SlotId::B, &context);
                device.check_booted(&flash, SlotId::A, &context);
            }
        }
        assert!(ops >= 20, "{ops} operations");
        println!("erased {erased:#04x}: {tried} cut points ({ops} operations x 3 modes)");
    }
}
