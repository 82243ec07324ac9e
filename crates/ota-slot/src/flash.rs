//! `SimFlash`: a simulated NOR flash that enforces the `embedded-storage` rules and cuts power on demand.

use std::sync::{Arc, Mutex, MutexGuard};

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};

use crate::error::{Error, Result};
use crate::nor::NorFlashSlot;
use crate::slot::len64;

/// Where the power cut falls relative to the operation that exhausts the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CutMode {
    /// The operation never starts: memory unchanged.
    Before,
    /// The operation completes, then power fails before the caller hears of it.
    After,
    /// The operation is interrupted: the words in flight are left undefined (each fully programmed,
    /// untouched, or partially programmed with random bits), the rest of the memory unchanged.
    Torn,
}

impl CutMode {
    /// All modes, for sweeps.
    pub const ALL: [CutMode; 3] = [CutMode::Before, CutMode::After, CutMode::Torn];
}

#[derive(Debug)]
struct PowerState {
    /// The operation number (0-based) at which power fails; `None`: never.
    cut_at: Option<u64>,
    mode: CutMode,
    /// Erase/write operations started so far (the cut one included).
    ops: u64,
    dead: bool,
    seed: u64,
}

/// A power-cut budget shared by every flash handle built with it (clones share one budget).
///
/// Each erase or write of any sharing handle is one step. With [`PowerCut::after`]`(n, mode)`, steps
/// `0..n` succeed and step `n` is cut as `mode` says; from then on every operation (reads too) of every
/// sharing handle fails with [`Error::PowerLoss`]. A test "reboots" by building new handles over the same
/// [`FlashMemory`] with a fresh `PowerCut`. [`PowerCut::ops`] counts the steps taken, so a sweep first
/// runs with [`PowerCut::never`] to learn how many cut points there are.
#[derive(Debug, Clone)]
pub struct PowerCut(Arc<Mutex<PowerState>>);

/// What the budget says about one operation.
pub(crate) enum Verdict {
    Proceed,
    CutBefore(u64),
    CutAfter(u64),
    /// Torn, with the step number and a seed for the garbage.
    Torn(u64, u64),
}

impl Verdict {
    /// What the operation reports once its effect on the cells is applied: `Ok` or the power loss.
    fn outcome(self, op: &'static str, offset: u64) -> Result<()> {
        match self {
            Verdict::Proceed => Ok(()),
            Verdict::CutBefore(step) | Verdict::CutAfter(step) | Verdict::Torn(step, _) => {
                Err(Error::PowerLoss { op, offset, step })
            }
        }
    }
}

impl PowerCut {
    /// Power never fails (still counts operations).
    pub fn never() -> PowerCut {
        PowerCut::build(None, CutMode::Before)
    }

    /// `n_ops` erase/write operations succeed; the next one is cut as `mode` says.
    pub fn after(n_ops: u64, mode: CutMode) -> PowerCut {
        PowerCut::build(Some(n_ops), mode)
    }

    fn build(cut_at: Option<u64>, mode: CutMode) -> PowerCut {
        PowerCut(Arc::new(Mutex::new(PowerState {
            cut_at,
            mode,
            ops: 0,
            dead: false,
            seed: 0x5eed_f1a5,
        })))
    }

    /// Sets the seed of the garbage a torn operation leaves (default fixed: sweeps are reproducible).
    pub fn with_seed(self, seed: u64) -> PowerCut {
        self.lock().seed = seed;
        self
    }

    fn lock(&self) -> MutexGuard<'_, PowerState> {
        // A panicking test thread cannot leave the counters half-updated; keep going.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Erase/write operations started under this budget so far (including a cut one).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// True once power has been cut.
    pub fn is_cut(&self) -> bool {
        self.lock().dead
    }

    /// Fails with `PowerLoss` if power is already cut (for reads).
    pub(crate) fn check_alive(&self, op: &'static str, offset: u64) -> Result<()> {
        let state = self.lock();
        if state.dead {
            return Err(Error::PowerLoss {
                op,
                offset,
                step: state.ops,
            });
        }
        Ok(())
    }

    /// Takes one step of the budget for an erase or write.
    pub(crate) fn step(&self, op: &'static str, offset: u64) -> Result<Verdict> {
        let mut state = self.lock();
        if state.dead {
            return Err(Error::PowerLoss {
                op,
                offset,
                step: state.ops,
            });
        }
        let step = state.ops;
        state.ops += 1;
        if state.cut_at != Some(step) {
            return Ok(Verdict::Proceed);
        }
        state.dead = true;
        Ok(match state.mode {
            CutMode::Before => Verdict::CutBefore(step),
            CutMode::After => Verdict::CutAfter(step),
            CutMode::Torn => Verdict::Torn(step, state.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        })
    }
}

/// splitmix64: a tiny deterministic generator for torn-operation garbage.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// Bytes per page of a [`FlashMemory`]: the unit its contents are shared in.
const PAGE: usize = 4096;

/// One page of cells: the bytes, and per byte whether it was written since its last erase (or left
/// undefined by a torn operation), one bit each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Page {
    data: Box<[u8]>,
    programmed: Box<[u64]>,
}

impl Page {
    fn erased(len: usize, erased_value: u8) -> Page {
        Page {
            data: vec![erased_value; len].into_boxed_slice(),
            programmed: vec![0; len.div_ceil(64)].into_boxed_slice(),
        }
    }

    fn set_programmed(&mut self, i: usize, on: bool) {
        if let Some(w) = self.programmed.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            *w = if on { *w | bit } else { *w & !bit };
        }
    }

    /// Sets the flags of `from..to` from `flags`, a word at a time where they are all equal (an erase
    /// or a whole write: the usual case), else byte by byte.
    fn set_programmed_from(&mut self, from: usize, flags: &[bool]) {
        let uniform = flags.first().filter(|&&f| flags.iter().all(|&g| g == f));
        let Some(&on) = uniform else {
            for (k, &f) in flags.iter().enumerate() {
                self.set_programmed(from + k, f);
            }
            return;
        };
        let mut i = from;
        let to = from + flags.len();
        while i < to {
            if i.is_multiple_of(64) && i + 64 <= to {
                if let Some(w) = self.programmed.get_mut(i / 64) {
                    *w = if on { u64::MAX } else { 0 };
                }
                i += 64;
            } else {
                self.set_programmed(i, on);
                i += 1;
            }
        }
    }

    /// The first programmed byte of `from..to`, skipping clear words whole.
    fn first_programmed(&self, from: usize, to: usize) -> Option<usize> {
        let mut i = from;
        while i < to {
            let word = self.programmed.get(i / 64).copied().unwrap_or(0);
            if i.is_multiple_of(64) && i + 64 <= to && word == 0 {
                i += 64;
            } else if word >> (i % 64) & 1 == 1 {
                return Some(i);
            } else {
                i += 1;
            }
        }
        None
    }

    /// Appends the flags of `from..to` to `out`, a word at a time where a word is all one value.
    fn programmed_into(&self, from: usize, to: usize, out: &mut Vec<bool>) {
        let mut i = from;
        while i < to {
            let word = self.programmed.get(i / 64).copied().unwrap_or(0);
            if i.is_multiple_of(64) && i + 64 <= to && (word == 0 || word == u64::MAX) {
                out.extend(std::iter::repeat_n(word != 0, 64));
                i += 64;
            } else {
                out.push(word >> (i % 64) & 1 == 1);
                i += 1;
            }
        }
    }
}

/// Pages by content, so that memories holding the same image hold it once (copy on write: a page is
/// copied when one of its holders changes it, and the changed page is looked up again).
///
/// Clones share one store. A fleet simulation gives every device's [`FlashMemory`] the same store
/// ([`FlashMemory::in_store`]): 10,000 devices running a handful of images then cost a handful of
/// images, plus each device's own bootloader env pages where they differ.
#[derive(Debug, Clone, Default)]
pub struct PageStore(Arc<Mutex<StoreMap>>);

#[derive(Debug, Default)]
struct StoreMap {
    pages: std::collections::HashMap<u64, std::sync::Weak<Page>>,
    /// Entries after the last sweep of dead ones (the next sweep is due at twice as many).
    swept_len: usize,
}

impl PageStore {
    /// An empty store.
    pub fn new() -> PageStore {
        PageStore::default()
    }

    /// Distinct pages held by some memory now.
    pub fn live_pages(&self) -> usize {
        let map = self.lock();
        map.pages.values().filter(|w| w.strong_count() > 0).count()
    }

    fn lock(&self) -> MutexGuard<'_, StoreMap> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The stored page equal to `page`, or `page` itself, now stored.
    fn intern(&self, page: Arc<Page>) -> Arc<Page> {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        page.hash(&mut hasher);
        let key = hasher.finish();
        let mut map = self.lock();
        if let Some(stored) = map.pages.get(&key).and_then(std::sync::Weak::upgrade) {
            // A hash collision keeps its own copy: rare, and still correct.
            return if stored == page { stored } else { page };
        }
        map.pages.insert(key, Arc::downgrade(&page));
        if map.pages.len() > map.swept_len.saturating_mul(2).max(1024) {
            map.pages.retain(|_, w| w.strong_count() > 0);
            map.swept_len = map.pages.len();
        }
        page
    }
}

#[derive(Debug)]
struct Cells {
    /// `PAGE` bytes each, the last one possibly shorter.
    pages: Vec<Arc<Page>>,
    capacity: usize,
    erased_value: u8,
    store: PageStore,
}

impl Cells {
    /// Bytes `start..end` (in bounds) and whether each is programmed, copied out.
    fn range(&self, start: usize, end: usize) -> (Vec<u8>, Vec<bool>) {
        let mut data = Vec::with_capacity(end - start);
        let mut programmed = Vec::with_capacity(end - start);
        self.for_each_page(start, end, |page, from, to| {
            data.extend_from_slice(page.data.get(from..to).unwrap_or_default());
            page.programmed_into(from, to, &mut programmed);
        });
        (data, programmed)
    }

    /// Copies `data` into the bytes from `start` (in bounds), bytes and programmed flags, each touched
    /// page copied if shared and looked up in the store once changed.
    fn store_range(&mut self, start: usize, data: &[u8], programmed: &[bool]) {
        let end = start + data.len();
        let mut pos = start;
        while pos < end {
            let index = pos / PAGE;
            let page_start = index * PAGE;
            let to = end.min(page_start + PAGE);
            if let Some(slot) = self.pages.get_mut(index) {
                let page = Arc::make_mut(slot);
                let (src, flags) = (pos - start..to - start, pos - page_start..to - page_start);
                if let (Some(dst), Some(src)) = (page.data.get_mut(flags.clone()), data.get(src.clone())) {
                    dst.copy_from_slice(src);
                }
                page.set_programmed_from(flags.start, programmed.get(src).unwrap_or_default());
                *slot = self.store.intern(Arc::clone(slot));
            }
            pos = to;
        }
    }

    /// Calls `f(page, from, to)` for each page overlapping `start..end`, with the page-relative range.
    fn for_each_page(&self, start: usize, end: usize, mut f: impl FnMut(&Page, usize, usize)) {
        let mut pos = start;
        while pos < end {
            let index = pos / PAGE;
            let page_start = index * PAGE;
            let to = end.min(page_start + PAGE);
            if let Some(page) = self.pages.get(index) {
                f(page, pos - page_start, to - page_start);
            }
            pos = to;
        }
    }

    /// The first programmed byte of `start..end`, if any.
    fn first_programmed(&self, start: usize, end: usize) -> Option<usize> {
        let mut found = None;
        let mut pos = start;
        self.for_each_page(start, end, |page, from, to| {
            if found.is_none() {
                found = page.first_programmed(from, to).map(|i| pos + (i - from));
            }
            pos += to - from;
        });
        found
    }
}

/// The memory of a simulated flash: survives "reboots" (clones share it).
///
/// Held in pages shared by content through a [`PageStore`] and copied on write, so equal contents in
/// many memories (the same image in a fleet's slots) are held once.
#[derive(Debug, Clone)]
pub struct FlashMemory(Arc<Mutex<Cells>>);

impl FlashMemory {
    /// A fully erased memory of `capacity` bytes. `erased_value` is 0xFF for common NOR; use 0x00 to
    /// prove code does not assume 0xFF.
    pub fn new(capacity: usize, erased_value: u8) -> FlashMemory {
        FlashMemory::in_store(capacity, erased_value, &PageStore::new())
    }

    /// A fully erased memory whose pages are shared with every other memory of `store`.
    pub fn in_store(capacity: usize, erased_value: u8, store: &PageStore) -> FlashMemory {
        let pages = (0..capacity.div_ceil(PAGE))
            .map(|i| {
                let len = PAGE.min(capacity - i * PAGE);
                store.intern(Arc::new(Page::erased(len, erased_value)))
            })
            .collect();
        FlashMemory(Arc::new(Mutex::new(Cells {
            pages,
            capacity,
            erased_value,
            store: store.clone(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Cells> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Size in bytes.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// The value erased bytes read as.
    pub fn erased_value(&self) -> u8 {
        self.lock().erased_value
    }

    /// A copy of the whole memory (for assertions; ignores power).
    pub fn snapshot(&self) -> Vec<u8> {
        let cells = self.lock();
        cells.range(0, cells.capacity).0
    }
}

/// A simulated NOR flash implementing `embedded_storage`'s [`NorFlash`] and [`ReadNorFlash`] (not
/// `MultiwriteNorFlash`), with write unit `WRITE_SIZE` and erase unit `ERASE_SIZE` bytes.
///
/// Rules enforced (each an error, never a panic): offsets and lengths aligned (writes to `WRITE_SIZE`,
/// erases to `ERASE_SIZE`), in bounds, and no byte written twice between erases (so writing to unerased
/// memory fails with [`Error::NotErased`]). Erased memory reads as the [`FlashMemory`]'s erased value.
/// Every erase and write takes one step of the shared [`PowerCut`] budget. Handles are cheap clones
/// sharing memory and budget.
#[derive(Debug, Clone)]
pub struct SimFlash<const WRITE_SIZE: usize = 4, const ERASE_SIZE: usize = 4096> {
    memory: FlashMemory,
    power: PowerCut,
}

impl<const WRITE_SIZE: usize, const ERASE_SIZE: usize> SimFlash<WRITE_SIZE, ERASE_SIZE> {
    /// A new, fully erased flash of `capacity` bytes.
    pub fn new(capacity: usize, erased_value: u8, power: PowerCut) -> Result<Self> {
        Self::with_memory(FlashMemory::new(capacity, erased_value), power)
    }

    /// A handle over existing memory: how a test "reboots" after a power cut (pass a fresh budget).
    pub fn with_memory(memory: FlashMemory, power: PowerCut) -> Result<Self> {
        let capacity = memory.capacity();
        let bad = |what: String| Err(Error::Geometry { what });
        if WRITE_SIZE == 0 || ERASE_SIZE == 0 || !ERASE_SIZE.is_multiple_of(WRITE_SIZE) {
            return bad(format!(
                "erase unit {ERASE_SIZE} must be a non-zero multiple of write unit {WRITE_SIZE}"
            ));
        }
        if !capacity.is_multiple_of(ERASE_SIZE) {
            return bad(format!(
                "capacity {capacity} is not a multiple of the erase unit {ERASE_SIZE}"
            ));
        }
        if u32::try_from(capacity).is_err() {
            return bad(format!("capacity {capacity} does not fit NorFlash's u32 offsets"));
        }
        Ok(SimFlash { memory, power })
    }

    /// The shared memory (keep it to rebuild handles after a power cut).
    pub fn memory(&self) -> FlashMemory {
        self.memory.clone()
    }

    /// The shared power budget.
    pub fn power(&self) -> PowerCut {
        self.power.clone()
    }

    /// The value erased bytes read as.
    pub fn erased_value(&self) -> u8 {
        self.memory.erased_value()
    }

    /// A [`NorFlashSlot`] over `len` bytes at `offset` of this flash (a new handle sharing memory and
    /// power), with the right erased value.
    pub fn slot(&self, offset: u64, len: u64) -> Result<NorFlashSlot<Self>> {
        Ok(NorFlashSlot::region(self.clone(), offset, len)?.with_erased_value(self.erased_value()))
    }

    fn check(
        op: &'static str,
        offset: u32,
        len: usize,
        capacity: usize,
        unit: usize,
    ) -> Result<(usize, usize)> {
        let (off64, len64v) = (u64::from(offset), len64(len));
        let start = usize::try_from(offset).map_err(|_| Error::OutOfBounds {
            op,
            offset: off64,
            len: len64v,
            capacity: len64(capacity),
        })?;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= capacity)
            .ok_or(Error::OutOfBounds {
                op,
                offset: off64,
                len: len64v,
                capacity: len64(capacity),
            })?;
        if start % unit != 0 || !len.is_multiple_of(unit) {
            return Err(Error::Unaligned {
                op,
                offset: off64,
                len: len64v,
                unit: len64(unit),
            });
        }
        Ok((start, end))
    }
}

impl<const W: usize, const E: usize> ErrorType for SimFlash<W, E> {
    type Error = Error;
}

impl<const W: usize, const E: usize> ReadNorFlash for SimFlash<W, E> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<()> {
        self.power.check_alive("read", u64::from(offset))?;
        let cells = self.memory.lock();
        let (start, end) = Self::check("read", offset, bytes.len(), cells.capacity, 1)?;
        let mut done = 0;
        cells.for_each_page(start, end, |page, from, to| {
            let n = to - from;
            if let (Some(dst), Some(src)) = (bytes.get_mut(done..done + n), page.data.get(from..to)) {
                dst.copy_from_slice(src);
            }
            done += n;
        });
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.memory.capacity()
    }
}

impl<const W: usize, const E: usize> NorFlash for SimFlash<W, E> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    fn erase(&mut self, from: u32, to: u32) -> Result<()> {
        let off = u64::from(from);
        self.power.check_alive("erase", off)?;
        let mut cells = self.memory.lock();
        let len = usize::try_from(to.checked_sub(from).ok_or(Error::OutOfBounds {
            op: "erase",
            offset: off,
            len: 0,
            capacity: len64(cells.capacity),
        })?)
        .unwrap_or(usize::MAX);
        let (start, end) = Self::check("erase", from, len, cells.capacity, E)?;
        let verdict = self.power.step("erase", off)?;
        let erased = cells.erased_value;
        let (mut data, mut programmed) = cells.range(start, end);
        let (data, programmed) = (data.as_mut_slice(), programmed.as_mut_slice());
        match verdict {
            Verdict::Proceed | Verdict::CutAfter(_) => {
                data.fill(erased);
                programmed.fill(false);
            }
            Verdict::CutBefore(_) => {}
            Verdict::Torn(_, seed) => {
                // Per write word: erased, untouched, or partially erased (some bits moved toward erased).
                let mut rng = Garbage(seed);
                for (word, flags) in data.chunks_mut(W).zip(programmed.chunks_mut(W)) {
                    match rng.next() % 3 {
                        0 => {
                            word.fill(erased);
                            flags.fill(false);
                        }
                        1 => flags.fill(true),
                        _ => {
                            for b in word.iter_mut() {
                                *b ^= rng.byte() & (*b ^ erased);
                            }
                            flags.fill(true);
                        }
                    }
                }
            }
        }
        cells.store_range(start, data, programmed);
        verdict.outcome("erase", off)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<()> {
        let off = u64::from(offset);
        self.power.check_alive("write", off)?;
        let mut cells = self.memory.lock();
        let (start, end) = Self::check("write", offset, bytes.len(), cells.capacity, W)?;
        if let Some(at) = cells.first_programmed(start, end) {
            return Err(Error::NotErased {
                offset: len64(at - at % W),
            });
        }
        let verdict = self.power.step("write", off)?;
        let erased = cells.erased_value;
        let (mut data, mut programmed) = cells.range(start, end);
        let (data, programmed) = (data.as_mut_slice(), programmed.as_mut_slice());
        match verdict {
            Verdict::Proceed | Verdict::CutAfter(_) => {
                data.copy_from_slice(bytes);
                programmed.fill(true);
            }
            Verdict::CutBefore(_) => {}
            Verdict::Torn(_, seed) => {
                // Per word: programmed, left erased, or partially programmed; all need an erase now.
                let mut rng = Garbage(seed);
                for (word, src) in data.chunks_mut(W).zip(bytes.chunks(W)) {
                    match rng.next() % 3 {
                        0 => word.copy_from_slice(src),
                        1 => {}
                        _ => {
                            for (b, &target) in word.iter_mut().zip(src) {
                                *b = target ^ (rng.byte() & (target ^ erased));
                            }
                        }
                    }
                }
                programmed.fill(true);
            }
        }
        cells.store_range(start, data, programmed);
        verdict.outcome("write", off)
    }
}
