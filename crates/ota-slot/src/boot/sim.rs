//! `SimBootloader`: a simulated bootloader whose environment lives in a redundant record on any `Slot`.

use super::{BootControl, BootState, TrialBoot};
use crate::error::{Error, Result};
use crate::file::FileSlot;
use crate::slot::{check_geometry, len64, round_up, Slot, SlotId};

/// A simulated bootloader with the same try counting as the U-Boot and GRUB scripts
/// ([`BootState::power_on`]), its environment kept on any [`Slot`]: a [`crate::FileSlot`] for end-to-end
/// tests (a reboot is a process restart) or a [`crate::NorFlashSlot`] over [`crate::SimFlash`] for
/// power-cut sweeps.
///
/// # On-flash layout
///
/// Two copies, each in its own erase block(s) (`span` = the record rounded up to the erase unit; the env
/// slot needs at least `2 * span` bytes, see [`SimBootloader::env_len`]):
///
/// ```text
/// offset 0            copy 0 | record | erased ... |
/// offset span         copy 1 | record | erased ... |
///
/// record (little-endian):
///  0  4  magic "OTAE"
///  4  1  layout version = 1
///  5  8  sequence number (the valid copy with the higher one is current)
/// 13  1  ota_primary        (0 = a, 1 = b)
/// 14  1  ota_trial_slot     (0 = none, 1 = a, 2 = b)
/// 15  1  upgrade_available  (0 / 1)
/// 16  1  bootcount
/// 17  1  bootlimit
/// 18  1  bad flags          (bit 0 = a, bit 1 = b)
/// 19  1  booted slot        (0 = a, 1 = b; what the simulated kernel command line says)
/// 20  4  CRC-32 (IEEE) of bytes 0..20
/// 24     padding with the erased value up to the write unit
/// ```
///
/// A change erases the copy that is NOT current (the erase invalidates it), then writes the new record
/// there with the next sequence number. A cut before, during or after either step leaves the current copy
/// intact: the environment always reads as the old state or the new one.
pub struct SimBootloader<S: Slot> {
    env: S,
    span: u64,
}

const MAGIC: [u8; 4] = *b"OTAE";
const LAYOUT_VERSION: u8 = 1;
const RECORD_LEN: usize = 24;

/// A decoded copy: sequence number, state, booted slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    seq: u64,
    state: BootState,
    booted: SlotId,
}

/// CRC-32/IEEE (reflected, polynomial 0xEDB88320), bitwise: the record is 20 bytes.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

fn slot_code(slot: SlotId) -> u8 {
    match slot {
        SlotId::A => 0,
        SlotId::B => 1,
    }
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let s = &self.state;
        let mut out = [0u8; RECORD_LEN];
        let trial = match s.trial_slot {
            None => 0,
            Some(SlotId::A) => 1,
            Some(SlotId::B) => 2,
        };
        let bad = u8::from(s.bad_a) | (u8::from(s.bad_b) << 1);
        let mut body = Vec::with_capacity(RECORD_LEN);
        body.extend_from_slice(&MAGIC);
        body.push(LAYOUT_VERSION);
        body.extend_from_slice(&self.seq.to_le_bytes());
        body.extend_from_slice(&[
            slot_code(s.primary),
            trial,
            u8::from(s.upgrade_available),
            s.bootcount,
            s.bootlimit,
            bad,
            slot_code(self.booted),
        ]);
        let crc = crc32(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        for (o, b) in out.iter_mut().zip(body) {
            *o = b;
        }
        out
    }

    /// Decodes a copy; Err says why it is not valid (blank, torn, foreign).
    fn decode(bytes: &[u8]) -> std::result::Result<Record, String> {
        let (body, crc) = (bytes.get(..20).ok_or("short")?, bytes.get(20..24).ok_or("short")?);
        let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "short")?);
        if body.get(..4) != Some(&MAGIC[..]) {
            return Err("no magic (blank or erased)".into());
        }
        let expected = crc32(body);
        if crc != expected {
            return Err(format!(
                "CRC mismatch: stored {crc:#010x}, computed {expected:#010x} (torn write?)"
            ));
        }
        let byte = |i: usize| body.get(i).copied().ok_or_else(|| "short".to_owned());
        if byte(4)? != LAYOUT_VERSION {
            return Err(format!("layout version {} (expected {LAYOUT_VERSION})", byte(4)?));
        }
        let seq = u64::from_le_bytes(body.get(5..13).ok_or("short")?.try_into().map_err(|_| "short")?);
        let slot = |v: u8, what: &str| match v {
            0 => Ok(SlotId::A),
            1 => Ok(SlotId::B),
            _ => Err(format!("{what} = {v}, expected 0 or 1")),
        };
        let trial_slot = match byte(14)? {
            0 => None,
            1 => Some(SlotId::A),
            2 => Some(SlotId::B),
            v => return Err(format!("trial slot = {v}, expected 0..=2")),
        };
        let flag = |v: u8, what: &str| match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("{what} = {v}, expected 0 or 1")),
        };
        let bad = byte(18)?;
        if bad > 3 {
            return Err(format!("bad flags = {bad:#04x}, expected bits 0..=1 only"));
        }
        Ok(Record {
            seq,
            state: BootState {
                primary: slot(byte(13)?, "primary")?,
                trial_slot,
                upgrade_available: flag(byte(15)?, "upgrade_available")?,
                bootcount: byte(16)?,
                bootlimit: byte(17)?,
                bad_a: bad & 1 != 0,
                bad_b: bad & 2 != 0,
            },
            booted: slot(byte(19)?, "booted")?,
        })
    }
}

impl<S: Slot> SimBootloader<S> {
    /// Most tries a trial may be given (the simulated counter is a byte; U-Boot's script allows 9).
    pub const MAX_TRIES: u8 = 9;

    /// Bytes an env slot with this erase unit needs (two copies, each rounded up to the erase unit).
    pub fn env_len(erase_size: u64, write_size: u64) -> u64 {
        let record = round_up(len64(RECORD_LEN), write_size.max(1)).unwrap_or(u64::MAX);
        round_up(record, erase_size.max(1))
            .unwrap_or(u64::MAX)
            .saturating_mul(2)
    }

    fn geometry(env: &S) -> Result<u64> {
        check_geometry(env.capacity(), env.erase_size(), env.write_size())?;
        let need = Self::env_len(env.erase_size(), env.write_size());
        if env.capacity() < need {
            return Err(Error::Geometry {
                what: format!("env slot of {} bytes; two env copies need {need}", env.capacity()),
            });
        }
        Ok(need / 2)
    }

    /// Writes a fresh environment (both copies replaced): `primary` boots and is the booted slot.
    pub fn provision(mut env: S, primary: SlotId) -> Result<SimBootloader<S>> {
        let span = Self::geometry(&env)?;
        env.erase(0, span.saturating_mul(2))?;
        let mut boot = SimBootloader { env, span };
        boot.write_copy(
            0,
            &Record {
                seq: 1,
                state: BootState::new(primary),
                booted: primary,
            },
        )?;
        Ok(boot)
    }

    /// Opens an existing environment; fails with [`Error::NoValidEnv`] when neither copy is valid.
    pub fn open(env: S) -> Result<SimBootloader<S>> {
        let span = Self::geometry(&env)?;
        let mut boot = SimBootloader { env, span };
        boot.current()?;
        Ok(boot)
    }

    /// The env slot back.
    pub fn into_inner(self) -> S {
        self.env
    }

    fn read_copy(&mut self, index: u64) -> Result<std::result::Result<Record, String>> {
        let mut buf = [0u8; RECORD_LEN];
        self.env.read(index * self.span, &mut buf)?;
        Ok(Record::decode(&buf))
    }

    /// The current record and the index of the copy holding it.
    fn current(&mut self) -> Result<(Record, u64)> {
        match (self.read_copy(0)?, self.read_copy(1)?) {
            (Ok(r0), Ok(r1)) if r1.seq > r0.seq => Ok((r1, 1)),
            (Ok(r0), _) => Ok((r0, 0)),
            (Err(_), Ok(r1)) => Ok((r1, 1)),
            (Err(copy0), Err(copy1)) => Err(Error::NoValidEnv { copy0, copy1 }),
        }
    }

    fn write_copy(&mut self, index: u64, record: &Record) -> Result<()> {
        let unit = usize::try_from(self.env.write_size()).unwrap_or(1).max(1);
        let mut bytes = record.encode().to_vec();
        let padded = RECORD_LEN.div_ceil(unit) * unit;
        bytes.resize(padded, self.env.erased_value());
        let at = index * self.span;
        self.env.erase(at, self.span)?;
        self.env.write(at, &bytes)?;
        self.env.sync()
    }

    /// Writes a new record into the non-current copy, unless nothing changed.
    fn commit(&mut self, change: impl FnOnce(&mut Record) -> Result<()>) -> Result<Record> {
        let (old, index) = self.current()?;
        let mut new = old;
        change(&mut new)?;
        if new != old {
            new.seq = old.seq.checked_add(1).ok_or(Error::Refused {
                what: "env sequence number exhausted".to_owned(),
            })?;
            self.write_copy(1 - index, &new)?;
        }
        Ok(new)
    }

    /// The A/B state of the environment.
    pub fn state(&mut self) -> Result<BootState> {
        Ok(self.current()?.0.state)
    }

    /// Plays the bootloader at power-on: picks the slot by the environment ([`BootState::power_on`]:
    /// trial with tries left is counted and booted; tries exhausted or slot bad falls back to the
    /// primary), records it as booted, and returns it.
    pub fn reboot(&mut self) -> Result<SlotId> {
        let record = self.commit(|r| {
            r.booted = r.state.power_on();
            Ok(())
        })?;
        Ok(record.booted)
    }
}

impl SimBootloader<FileSlot> {
    /// Env slot size for a file: two copies of one [`FileSlot::ERASE_SIZE`] page each.
    pub const FILE_LEN: u64 = 2 * FileSlot::ERASE_SIZE;

    /// Creates (or replaces) the env file at `path` with a fresh environment: `primary` boots.
    pub fn create_file(path: impl AsRef<std::path::Path>, primary: SlotId) -> Result<Self> {
        SimBootloader::provision(FileSlot::create(path, Self::FILE_LEN)?, primary)
    }

    /// Opens the env file made by [`SimBootloader::create_file`] (e.g. after a process restart).
    pub fn open_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        SimBootloader::open(FileSlot::open(path, Self::FILE_LEN)?)
    }
}

impl<S: Slot> BootControl for SimBootloader<S> {
    fn booted(&mut self) -> Result<SlotId> {
        Ok(self.current()?.0.booted)
    }
    fn primary(&mut self) -> Result<SlotId> {
        Ok(self.current()?.0.state.primary)
    }
    fn trial(&mut self) -> Result<Option<TrialBoot>> {
        Ok(self.current()?.0.state.trial())
    }
    fn start_trial(&mut self, slot: SlotId, tries: u8) -> Result<()> {
        self.commit(|r| r.state.start_trial(slot, tries, Self::MAX_TRIES))
            .map(drop)
    }
    fn mark_good(&mut self, slot: SlotId) -> Result<()> {
        self.commit(|r| {
            r.state.mark_good(slot);
            Ok(())
        })
        .map(drop)
    }
    fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
        self.commit(|r| {
            r.state.mark_bad(slot);
            Ok(())
        })
        .map(drop)
    }
}

/// Fuzzing entry: decoding arbitrary bytes never panics, and a record that decodes re-encodes to the same
/// bytes (the encoding is canonical).
pub(crate) fn fuzz_record(bytes: &[u8]) {
    if let Ok(record) = Record::decode(bytes) {
        assert_eq!(
            Some(&record.encode()[..]),
            bytes.get(..RECORD_LEN),
            "decode/encode round trip"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panic_and_round_trip(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            fuzz_record(&bytes);
        }

        #[test]
        fn valid_records_round_trip(seq in 0u64.., fields in proptest::prelude::any::<[u8; 7]>()) {
            let mut bytes = Vec::from(MAGIC);
            bytes.push(LAYOUT_VERSION);
            bytes.extend_from_slice(&seq.to_le_bytes());
            // Fold the random fields into their valid ranges.
            let f = fields;
            bytes.extend_from_slice(&[f[0] % 2, f[1] % 3, f[2] % 2, f[3], f[4], f[5] % 4, f[6] % 2]);
            let crc = crc32(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            proptest::prop_assert!(Record::decode(&bytes).is_ok());
            fuzz_record(&bytes);
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn record_round_trips_and_rejects_a_flipped_bit() {
        let mut state = BootState::new(SlotId::B);
        state.start_trial(SlotId::A, 2, 9).unwrap();
        state.bad_b = true;
        let record = Record {
            seq: 7,
            state,
            booted: SlotId::B,
        };
        let bytes = record.encode();
        assert_eq!(Record::decode(&bytes), Ok(record));
        for i in 0..RECORD_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(Record::decode(&bad).is_err(), "flip in byte {i} accepted");
        }
    }
}
