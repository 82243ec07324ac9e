//! Images in and out of slots: SlotWriter, SlotReader and slot_sha256 over files and simulated NOR.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Seek, SeekFrom, Write};

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
use ota_slot::{
    slot_sha256, CutMode, Error, FileSlot, NorFlashSlot, PowerCut, SimFlash, Slot, SlotReader, SlotWriter,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn write_in_chunks<S: Slot>(slot: &mut S, data: &[u8], chunk: usize) -> u64 {
    let mut w = SlotWriter::new(slot, data.len() as u64).unwrap();
    for part in data.chunks(chunk.max(1)) {
        w.write_all(part).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn file_slot_round_trip_with_digest_and_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slot_b");
    let mut slot = FileSlot::create(&path, 1 << 20).unwrap();
    let data = image(700_001, 3);
    assert_eq!(write_in_chunks(&mut slot, &data, 4093), data.len() as u64);
    let digest: [u8; 32] = Sha256::digest(&data).into();
    assert_eq!(slot_sha256(&mut slot, data.len() as u64).unwrap(), digest);

    // Reopen (as after a restart) and read through the Read + Seek view.
    let mut slot = FileSlot::open(&path, 1 << 20).unwrap();
    let mut reader = SlotReader::new(&mut slot, data.len() as u64).unwrap();
    reader.seek(SeekFrom::Start(123_456)).unwrap();
    let mut buf = vec![0u8; 1000];
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(buf, &data[123_456..124_456]);
    reader.seek(SeekFrom::End(-5)).unwrap();
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &data[data.len() - 5..]);
    assert!(reader.seek(SeekFrom::Current(-(data.len() as i64) - 1)).is_err());
}

#[test]
fn file_slot_geometry_and_size_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    assert!(matches!(
        FileSlot::open(&path, 16384),
        Err(Error::Geometry { .. })
    ));
    assert!(matches!(FileSlot::open(&path, 5000), Err(Error::Geometry { .. })));
    assert!(matches!(
        FileSlot::open(dir.path().join("missing"), 4096),
        Err(Error::Io { op: "open", .. })
    ));
    let mut slot = FileSlot::open(&path, 8192).unwrap();
    assert!(matches!(
        slot.write(8190, &[0; 4]),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(slot.erase(0, 100), Err(Error::Unaligned { .. })));
}

#[test]
fn too_large_image_is_refused_before_the_slot_is_touched() {
    let mut flash = SimFlash::<4, 256>::new(4096, 0xFF, PowerCut::never()).unwrap();
    flash.write(0, &[1, 2, 3, 4]).unwrap();
    let power = flash.power();
    let mut slot = flash.slot(0, 4096).unwrap();
    let ops = power.ops();
    assert!(matches!(
        SlotWriter::new(&mut slot, 4097),
        Err(Error::TooLarge {
            len: 4097,
            capacity: 4096
        })
    ));
    assert_eq!(power.ops(), ops, "no erase or write");
    assert_eq!(&flash.memory().snapshot()[..4], &[1, 2, 3, 4]);
}

#[test]
fn writer_refuses_too_many_or_too_few_bytes() {
    let mut slot = SimFlash::<4, 256>::new(4096, 0xFF, PowerCut::never())
        .unwrap()
        .slot(0, 4096)
        .unwrap();
    let mut w = SlotWriter::new(&mut slot, 10).unwrap();
    let err = w.write_all(&[0; 11]).unwrap_err();
    assert!(err.to_string().contains("expected 10 bytes, got 11"), "{err}");
    let mut w = SlotWriter::new(&mut slot, 10).unwrap();
    w.write_all(&[0; 9]).unwrap();
    assert!(matches!(
        w.finish(),
        Err(Error::LengthMismatch { expected: 10, got: 9 })
    ));
}

#[test]
fn writer_pads_with_the_erased_value_and_leaves_the_rest_alone() {
    for erased in [0xFFu8, 0x00] {
        let flash = SimFlash::<8, 256>::new(8192, erased, PowerCut::never()).unwrap();
        let memory = flash.memory();
        // Something already in the second half that a short image must not disturb.
        let mut other = flash.slot(4096, 4096).unwrap();
        other.erase(0, 256).unwrap();
        other.write(0, &[0xAB; 8]).unwrap();
        let mut slot = flash.slot(0, 8192).unwrap();
        let data = image(1001, 9);
        write_in_chunks(&mut slot, &data, 77);
        let mem = memory.snapshot();
        assert_eq!(&mem[..1001], &data[..]);
        assert!(
            mem[1001..1008].iter().all(|&b| b == erased),
            "tail padded with {erased:#x}"
        );
        assert!(mem[1008..4096].iter().all(|&b| b == erased));
        assert_eq!(&mem[4096..4104], &[0xAB; 8]);
    }
}

#[test]
fn rewriting_a_slot_erases_ahead() {
    let mut slot = SimFlash::<4, 256>::new(65536, 0xFF, PowerCut::never())
        .unwrap()
        .slot(0, 65536)
        .unwrap();
    let first = image(60_000, 1);
    write_in_chunks(&mut slot, &first, 1 << 14);
    let second = image(50_003, 2);
    write_in_chunks(&mut slot, &second, 999);
    assert_eq!(
        slot_sha256(&mut slot, 50_003).unwrap(),
        <[u8; 32]>::from(Sha256::digest(&second))
    );
}

#[test]
fn big_writes_pass_through_as_the_same_sector_operations() {
    // Whole chunks handed over with an empty buffer are written from the caller's bytes: the slot must
    // see the same erases and writes (so the same power-cut points) as when the bytes arrive one by one.
    let data = image(10_000, 4);
    let mut runs = Vec::new();
    for pieces in [1usize, 256, 700, 10_000] {
        let power = PowerCut::never();
        let flash = SimFlash::<4, 256>::new(16384, 0xFF, power.clone()).unwrap();
        let mut slot = flash.slot(0, 16384).unwrap();
        assert_eq!(write_in_chunks(&mut slot, &data, pieces), 10_000);
        assert_eq!(&flash.memory().snapshot()[..10_000], &data[..]);
        runs.push(power.ops());
    }
    // 40 sectors: one erase and one write each.
    assert_eq!(runs, vec![80; 4], "operations per chunking (1, 256, 700, whole)");
}

#[test]
fn power_cut_in_writer_surfaces_as_power_loss() {
    let flash = SimFlash::<4, 256>::new(65536, 0xFF, PowerCut::after(3, CutMode::Torn)).unwrap();
    let mut slot = flash.slot(0, 65536).unwrap();
    let mut w = SlotWriter::new(&mut slot, 60_000).unwrap();
    // One sector per erase and per write: erase 0, write 0, erase 1, then write 1 (operation 3) is cut.
    let err = w.write_all(&image(60_000, 5)).unwrap_err();
    let inner = err.into_inner().unwrap().downcast::<Error>().unwrap();
    assert!(
        matches!(
            *inner,
            Error::PowerLoss {
                op: "write",
                offset: 256,
                step: 3
            }
        ),
        "{inner}"
    );
    // The writer is poisoned: no further write reaches the slot, finish fails.
    let again = w.write_all(&[0u8; 512]).unwrap_err();
    assert!(again.to_string().contains("already failed"), "{again}");
    assert!(w.finish().is_err());
}

#[test]
fn nor_flash_slot_regions_are_checked() {
    let flash = SimFlash::<4, 256>::new(4096, 0xFF, PowerCut::never()).unwrap();
    assert!(matches!(flash.slot(100, 256), Err(Error::Geometry { .. })));
    assert!(matches!(flash.slot(3840, 512), Err(Error::Geometry { .. })));
    assert!(matches!(flash.slot(0, 300), Err(Error::Geometry { .. })));
    let mut slot = flash.slot(256, 512).unwrap();
    assert_eq!(slot.capacity(), 512);
    assert!(matches!(slot.erase(512, 256), Err(Error::OutOfBounds { .. })));
    assert!(matches!(slot.write(2, &[0; 4]), Err(Error::Unaligned { .. })));
    slot.erase(0, 256).unwrap();
    slot.write(0, &[9; 4]).unwrap();
    assert_eq!(&flash.memory().snapshot()[256..260], &[9; 4]);
    // u64 offsets beyond u32 are refused without wrapping.
    let mut buf = [0u8; 1];
    assert!(matches!(
        slot.read(u64::from(u32::MAX) + 1, &mut buf),
        Err(Error::OutOfBounds { .. })
    ));
}

/// A foreign NOR driver with 16-byte reads, to prove reads at any offset and error wrapping.
struct WideReadFlash(Vec<u8>);

#[derive(Debug)]
struct WideError;
impl embedded_storage::nor_flash::NorFlashError for WideError {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}
impl ErrorType for WideReadFlash {
    type Error = WideError;
}
impl ReadNorFlash for WideReadFlash {
    const READ_SIZE: usize = 16;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), WideError> {
        let o = offset as usize;
        assert!(
            o.is_multiple_of(16) && bytes.len().is_multiple_of(16),
            "unaligned read reached the driver"
        );
        bytes.copy_from_slice(&self.0[o..o + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.0.len()
    }
}
impl NorFlash for WideReadFlash {
    const WRITE_SIZE: usize = 16;
    const ERASE_SIZE: usize = 64;
    fn erase(&mut self, _from: u32, _to: u32) -> Result<(), WideError> {
        Err(WideError)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), WideError> {
        let o = offset as usize;
        self.0[o..o + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

#[test]
fn foreign_nor_driver_reads_at_any_offset_and_its_errors_are_wrapped() {
    let data = image(1024, 4);
    let mut slot = NorFlashSlot::region(WideReadFlash(data.clone()), 128, 512).unwrap();
    let mut buf = vec![0u8; 37];
    slot.read(5, &mut buf).unwrap();
    assert_eq!(buf, &data[133..170]);
    let err = slot.erase(0, 64).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Flash {
                op: "erase",
                offset: 128,
                kind: NorFlashErrorKind::Other,
                ..
            }
        ),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any image length and any write chunking give back the same bytes and digest, on either erased
    /// value, and the reader agrees at any seek position.
    #[test]
    fn any_chunking_round_trips(
        len in 0usize..20_000,
        chunk in 1usize..5000,
        erased in prop_oneof![Just(0xFFu8), Just(0x00u8)],
        seek in 0usize..20_000,
    ) {
        let flash = SimFlash::<16, 1024>::new(32 * 1024, erased, PowerCut::never()).unwrap();
        let mut slot = flash.slot(0, 32 * 1024).unwrap();
        let data = image(len, 7);
        prop_assert_eq!(write_in_chunks(&mut slot, &data, chunk), len as u64);
        let digest: [u8; 32] = Sha256::digest(&data).into();
        prop_assert_eq!(slot_sha256(&mut slot, len as u64).unwrap(), digest);
        let mut reader = SlotReader::new(&mut slot, len as u64).unwrap();
        let at = seek.min(len);
        reader.seek(SeekFrom::Start(at as u64)).unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        prop_assert_eq!(&rest[..], &data[at..]);
    }
}
