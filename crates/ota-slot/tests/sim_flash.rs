//! The simulated NOR flash keeps the `embedded-storage` rules and cuts power as asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use ota_slot::{CutMode, Error, FlashMemory, PageStore, PowerCut, SimFlash};
use proptest::prelude::*;

type Flash = SimFlash<4, 256>;
const CAP: usize = 4096;

fn read_all(flash: &mut Flash) -> Vec<u8> {
    let mut out = vec![0u8; CAP];
    flash.read(0, &mut out).unwrap();
    out
}

#[test]
fn fresh_flash_reads_as_its_erased_value() {
    for erased in [0xFF, 0x00] {
        let mut flash = Flash::new(CAP, erased, PowerCut::never()).unwrap();
        assert!(read_all(&mut flash).iter().all(|&b| b == erased));
    }
}

#[test]
fn geometry_is_checked_at_construction() {
    assert!(matches!(
        SimFlash::<4, 256>::new(1000, 0xFF, PowerCut::never()),
        Err(Error::Geometry { .. })
    ));
    assert!(matches!(
        SimFlash::<3, 256>::new(1024, 0xFF, PowerCut::never()),
        Err(Error::Geometry { .. })
    ));
    assert!(matches!(
        SimFlash::<0, 256>::new(1024, 0xFF, PowerCut::never()),
        Err(Error::Geometry { .. })
    ));
}

#[test]
fn word_written_twice_is_refused_until_erased() {
    let mut flash = Flash::new(CAP, 0xFF, PowerCut::never()).unwrap();
    flash.write(8, &[1, 2, 3, 4]).unwrap();
    // Even writing the erased value again counts as a second write.
    let err = flash.write(8, &[0xFF; 4]).unwrap_err();
    assert!(matches!(err, Error::NotErased { offset: 8 }), "{err}");
    // Overlapping a written word from a larger write is refused too, and writes nothing.
    let err = flash.write(0, &[9; 12]).unwrap_err();
    assert!(matches!(err, Error::NotErased { offset: 8 }), "{err}");
    assert_eq!(
        &read_all(&mut flash)[0..12],
        &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]
    );
    flash.erase(0, 256).unwrap();
    flash.write(8, &[5, 6, 7, 8]).unwrap();
    assert_eq!(&read_all(&mut flash)[8..12], &[5, 6, 7, 8]);
}

#[test]
fn misaligned_and_out_of_bounds_operations_are_refused() {
    let mut flash = Flash::new(CAP, 0xFF, PowerCut::never()).unwrap();
    assert!(matches!(
        flash.write(2, &[0; 4]),
        Err(Error::Unaligned {
            op: "write",
            unit: 4,
            ..
        })
    ));
    assert!(matches!(
        flash.write(0, &[0; 3]),
        Err(Error::Unaligned { op: "write", .. })
    ));
    assert!(matches!(
        flash.erase(0, 100),
        Err(Error::Unaligned {
            op: "erase",
            unit: 256,
            ..
        })
    ));
    assert!(matches!(flash.erase(256, 0), Err(Error::OutOfBounds { .. })));
    assert!(matches!(flash.erase(0, 8192), Err(Error::OutOfBounds { .. })));
    assert!(matches!(
        flash.write(4092, &[0; 8]),
        Err(Error::OutOfBounds { .. })
    ));
    let mut buf = [0u8; 2];
    assert!(matches!(
        flash.read(4095, &mut buf),
        Err(Error::OutOfBounds { .. })
    ));
    // Refused operations do not consume power steps.
    assert_eq!(flash.power().ops(), 0);
}

#[test]
fn cut_before_changes_nothing_and_kills_every_sharing_handle() {
    let power = PowerCut::after(1, CutMode::Before);
    let mut flash = Flash::new(CAP, 0xFF, power.clone()).unwrap();
    let mut twin = Flash::with_memory(flash.memory(), power.clone()).unwrap();
    flash.write(0, &[1; 4]).unwrap();
    let err = twin.write(4, &[2; 4]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PowerLoss {
                op: "write",
                step: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(power.is_cut());
    let mut buf = [0u8; 4];
    assert!(flash.read(0, &mut buf).unwrap_err().is_power_loss());
    assert!(flash.erase(0, 256).unwrap_err().is_power_loss());
    // Reboot: new handle, fresh budget, same memory.
    let mut rebooted = Flash::with_memory(flash.memory(), PowerCut::never()).unwrap();
    let mem = read_all(&mut rebooted);
    assert_eq!(&mem[0..8], &[1, 1, 1, 1, 0xFF, 0xFF, 0xFF, 0xFF]);
    // The word that was never written is still writable.
    rebooted.write(4, &[3; 4]).unwrap();
}

#[test]
fn cut_after_completes_the_operation_but_reports_the_loss() {
    let power = PowerCut::after(0, CutMode::After);
    let mut flash = Flash::new(CAP, 0x00, power).unwrap();
    assert!(flash.write(0, &[7; 8]).unwrap_err().is_power_loss());
    let memory = flash.memory();
    assert_eq!(&memory.snapshot()[0..9], &[7, 7, 7, 7, 7, 7, 7, 7, 0]);
    let mut rebooted = Flash::with_memory(memory, PowerCut::never()).unwrap();
    assert!(matches!(rebooted.write(0, &[1; 4]), Err(Error::NotErased { .. })));
}

#[test]
fn operation_counter_counts_erases_and_writes_only() {
    let power = PowerCut::never();
    let mut flash = Flash::new(CAP, 0xFF, power.clone()).unwrap();
    flash.erase(0, 512).unwrap();
    flash.write(0, &[0; 16]).unwrap();
    let mut buf = [0u8; 16];
    flash.read(0, &mut buf).unwrap();
    assert_eq!(power.ops(), 2);
    assert!(!power.is_cut());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A model of NOR rules: random operations on the simulator agree with a plain model, and every
    /// refused operation is refused for the model's reason.
    #[test]
    fn random_operations_follow_the_nor_rules(
        erased in prop_oneof![Just(0xFFu8), Just(0x00u8)],
        ops in proptest::collection::vec((0u8..3, 0u32..4200, 0usize..300, any::<u8>()), 1..60),
    ) {
        let mut flash = Flash::new(CAP, erased, PowerCut::never()).unwrap();
        let mut model = vec![erased; CAP];
        let mut written = vec![false; CAP];
        for (kind, offset, len, fill) in ops {
            let (start, end) = (offset as usize, offset as usize + len);
            let in_bounds = end <= CAP;
            match kind {
                0 => {
                    let to = offset.saturating_add(len as u32);
                    let result = flash.erase(offset, to);
                    let ok = in_bounds && start % 256 == 0 && end % 256 == 0;
                    prop_assert_eq!(result.is_ok(), ok, "erase {}..{}: {:?}", start, end, result);
                    if ok {
                        model[start..end].fill(erased);
                        written[start..end].fill(false);
                    }
                }
                1 => {
                    let data = vec![fill; len];
                    let result = flash.write(offset, &data);
                    let aligned = start % 4 == 0 && len % 4 == 0;
                    let fresh = in_bounds && written[start..end].iter().all(|w| !w);
                    let ok = in_bounds && aligned && fresh;
                    prop_assert_eq!(result.is_ok(), ok, "write {}..{}: {:?}", start, end, result);
                    if in_bounds && aligned && !fresh {
                        prop_assert!(matches!(result, Err(Error::NotErased { .. })), "write {}..{}: {:?}", start, end, result);
                    }
                    if ok {
                        model[start..end].copy_from_slice(&data);
                        written[start..end].fill(true);
                    }
                }
                _ => {
                    let mut buf = vec![0u8; len];
                    let result = flash.read(offset, &mut buf);
                    prop_assert_eq!(result.is_ok(), in_bounds);
                    if in_bounds {
                        prop_assert_eq!(&buf[..], &model[start..end]);
                    }
                }
            }
        }
        prop_assert_eq!(flash.memory().snapshot(), model);
    }

    /// A torn write leaves only the words in flight undefined; every other byte is unchanged, and the
    /// torn words need an erase before they can be written again.
    #[test]
    fn torn_write_touches_only_the_words_in_flight(
        erased in prop_oneof![Just(0xFFu8), Just(0x00u8)],
        seed in any::<u64>(),
        word in 0usize..900,
        words in 1usize..64,
    ) {
        let start = (word * 4).min(CAP - 4);
        let len = (words * 4).min(CAP - start);
        let setup = Flash::new(CAP, erased, PowerCut::never()).unwrap();
        let memory = setup.memory();
        let mut flash = Flash::with_memory(memory.clone(), PowerCut::after(0, CutMode::Torn).with_seed(seed)).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(37) ^ 0x5A).collect();
        let err = flash.write(start as u32, &data).unwrap_err();
        prop_assert!(err.is_power_loss());
        let after = memory.snapshot();
        prop_assert!(after[..start].iter().all(|&b| b == erased));
        prop_assert!(after[start + len..].iter().all(|&b| b == erased));
        // Partially programmed bits only move from the erased state toward the target.
        for (i, (&got, &want)) in after[start..start + len].iter().zip(&data).enumerate() {
            prop_assert_eq!((got ^ want) & !(erased ^ want), 0, "byte {} got {:#x} want {:#x}", i, got, want);
        }
        let mut rebooted = Flash::with_memory(memory, PowerCut::never()).unwrap();
        let retry = rebooted.write(start as u32, &data);
        prop_assert!(matches!(retry, Err(Error::NotErased { .. })), "{:?}", retry);
    }

    /// A torn erase only touches its own blocks, and leaves each word erased, unchanged or in between.
    #[test]
    fn torn_erase_touches_only_its_blocks(seed in any::<u64>(), block in 0usize..16) {
        let setup = Flash::new(CAP, 0xFF, PowerCut::never()).unwrap();
        let memory = setup.memory();
        let mut writer = Flash::with_memory(memory.clone(), PowerCut::never()).unwrap();
        writer.write(0, &[0x0F; CAP]).unwrap();
        let mut flash = Flash::with_memory(memory.clone(), PowerCut::after(0, CutMode::Torn).with_seed(seed)).unwrap();
        let from = (block * 256) as u32;
        prop_assert!(flash.erase(from, from + 256).unwrap_err().is_power_loss());
        let after = memory.snapshot();
        for (i, &b) in after.iter().enumerate() {
            let inside = i / 256 == block;
            if inside {
                // Bits can only have gone from programmed (0) toward erased (1).
                prop_assert_eq!(b & 0x0F, 0x0F, "byte {} = {:#x}", i, b);
            } else {
                prop_assert_eq!(b, 0x0F, "byte {} outside the torn block changed", i);
            }
        }
    }
}

#[test]
fn flash_memory_survives_reboot_with_a_fresh_budget() {
    let memory = FlashMemory::new(CAP, 0xFF);
    let mut a = Flash::with_memory(memory.clone(), PowerCut::after(2, CutMode::Before)).unwrap();
    a.write(0, &[1; 4]).unwrap();
    a.write(4, &[2; 4]).unwrap();
    assert!(a.write(8, &[3; 4]).unwrap_err().is_power_loss());
    let mut b = Flash::with_memory(memory, PowerCut::never()).unwrap();
    b.write(8, &[3; 4]).unwrap();
    let mut buf = [0u8; 12];
    b.read(0, &mut buf).unwrap();
    assert_eq!(buf, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
}

/// A fleet's flashes in one store hold an image once; a change is seen only by the memory that made it.
#[test]
fn memories_in_one_store_share_equal_pages_and_copy_on_write() {
    let store = PageStore::new();
    let image: Vec<u8> = (0..16_384u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut flashes: Vec<SimFlash<4, 4096>> = (0..10)
        .map(|_| {
            SimFlash::with_memory(FlashMemory::in_store(32_768, 0xFF, &store), PowerCut::never()).unwrap()
        })
        .collect();
    for f in &mut flashes {
        f.write(0, &image).unwrap();
    }
    // Four image pages and the erased page, for ten memories of eight pages each.
    assert_eq!(store.live_pages(), 5);

    flashes[0].erase(0, 4096).unwrap();
    flashes[1].write(16_384, &[1, 2, 3, 4]).unwrap();
    assert!(flashes[0].memory().snapshot()[..4096].iter().all(|&b| b == 0xFF));
    assert_eq!(&flashes[2].memory().snapshot()[..16_384], &image[..]);
    assert_eq!(&flashes[1].memory().snapshot()[16_384..16_388], &[1, 2, 3, 4]);
    assert!(flashes[2].memory().snapshot()[16_384..]
        .iter()
        .all(|&b| b == 0xFF));
    // The NOR rules still hold on shared pages: a programmed word cannot be written again.
    assert!(matches!(
        flashes[2].write(0, &[0; 4]),
        Err(Error::NotErased { offset: 0 })
    ));
    // One new page: the one flashes[1] wrote its four bytes into.
    assert_eq!(store.live_pages(), 6);
}
