//! Executable-aware pre-filters (after xz's BCJ filters): relative branch targets become absolute, so code
//! that only moved between releases matches byte for byte.
//!
//! Filters run per region ([`RegionMap`]): only over the executable sections of ELF files (a lone file, or
//! the files inside a filesystem image, see [`crate::elf`]), each with its machine's transform and branch
//! arithmetic relative to its file's start; every other byte is left alone.
//!
//! Both directions work on independent aligned blocks of [`FILTER_BLOCK`] bytes (an instruction never spans
//! a block boundary), which lets the decoder filter any block of the old image on its own and undo the
//! filter on the new image with one block of buffer.

use crate::elf::{code_regions, Code, Machine};

/// Filters work on blocks of this size, aligned to offset 0 of the image.
pub(crate) const FILTER_BLOCK: usize = 64 * 1024;

/// The pre-filter a delta was made with. Recorded in the header; the decoder applies it to old reads and
/// undoes it on its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Filter {
    /// Bytes as they are.
    None,
    /// x86 and x86-64: `E8` call / `E9` jmp with a rel32 whose top byte is `00`/`FF` (a near target).
    X86,
    /// ARM64 (AArch64): `BL`/`B` imm26 and `ADRP` (pages within ±512 MiB), on 4-byte aligned words.
    Arm64,
    /// x86-64 RIP-relative disp32 operands only (ModRM `mod=00 rm=101` after the common `lea`/`mov`/ALU,
    /// SSE and VEX/EVEX opcodes, `call`/`jmp [rip]`), top byte `00`/`FF`: on position-independent code
    /// these address `.rodata`/`.data`, which move as a whole between releases.
    X86Rip,
    /// x86-64: both [`Filter::X86`] and [`Filter::X86Rip`] in one pass.
    X86Full,
    /// ARM64 `ADRP` alone (branches left relative): where most calls stay within code that moved as a
    /// whole, as [`Filter::X86Rip`] for x86-64.
    Arm64Page,
    /// 32-bit ARM code: `BL` imm24 (condition "always"), as xz's ARM filter.
    Arm,
    /// Thumb-2 code: `BL` pairs, as xz's ARM-Thumb filter.
    Thumb,
}

impl Filter {
    /// Every filter a delta may name.
    pub const ALL: [Filter; 8] = [
        Filter::None,
        Filter::X86,
        Filter::Arm64,
        Filter::X86Rip,
        Filter::X86Full,
        Filter::Arm64Page,
        Filter::Arm,
        Filter::Thumb,
    ];

    /// Whether this filter is for ARM code (AArch64, 32-bit ARM, Thumb-2).
    pub(crate) fn is_arm(self) -> bool {
        matches!(
            self,
            Filter::Arm64 | Filter::Arm64Page | Filter::Arm | Filter::Thumb
        )
    }

    /// The id stored in the delta header.
    pub fn id(self) -> u8 {
        match self {
            Filter::None => 0,
            Filter::X86 => 1,
            Filter::Arm64 => 2,
            Filter::X86Rip => 3,
            Filter::X86Full => 4,
            Filter::Arm64Page => 5,
            Filter::Arm => 6,
            Filter::Thumb => 7,
        }
    }

    /// The filter for a header id, if known.
    pub fn from_id(id: u8) -> Option<Filter> {
        Filter::ALL.into_iter().find(|f| f.id() == id)
    }

    /// A short lowercase name ("none", "x86", "arm64").
    pub fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::X86 => "x86",
            Filter::Arm64 => "arm64",
            Filter::X86Rip => "x86-rip",
            Filter::X86Full => "x86-full",
            Filter::Arm64Page => "arm64-page",
            Filter::Arm => "arm",
            Filter::Thumb => "thumb",
        }
    }

    /// This filter over all of any image (tests and the fuzz target).
    pub(crate) fn everywhere(self) -> RegionMap {
        RegionMap::new(vec![Region {
            lo: 0,
            hi: u64::MAX,
            base: 0,
            filter: self,
        }])
    }

    #[cfg(test)]
    pub(crate) fn encode_in_place(self, buf: &mut [u8], start: u64) {
        self.everywhere().encode_in_place(buf, start);
    }

    #[cfg(test)]
    pub(crate) fn decode_in_place(self, buf: &mut [u8], start: u64) {
        self.everywhere().decode_in_place(buf, start);
    }
}

/// One stretch of an image a filter runs over: image offsets `lo..hi` (instructions wholly inside), with
/// branch arithmetic relative to `base` (the start of the ELF file holding the code), so a file that moved
/// inside a filesystem image filters to the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub lo: u64,
    pub hi: u64,
    pub base: u64,
    pub filter: Filter,
}

/// The filtered regions of one image, sorted and disjoint; bytes outside them are left alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RegionMap {
    regions: Vec<Region>,
}

impl RegionMap {
    /// The map of `regions` (in any order): empty and unfiltered ones dropped, each region cut where it
    /// would overlap the one before, at most [`crate::format::MAX_REGIONS`] kept.
    pub(crate) fn new(mut regions: Vec<Region>) -> Self {
        regions.retain(|r| r.filter != Filter::None && r.hi > r.lo);
        regions.sort_by_key(|r| (r.lo, r.hi));
        let mut out: Vec<Region> = Vec::with_capacity(regions.len());
        for mut r in regions {
            if let Some(last) = out.last() {
                r.lo = r.lo.max(last.hi);
            }
            if r.hi > r.lo && out.len() < crate::format::MAX_REGIONS as usize {
                out.push(r);
            }
        }
        RegionMap { regions: out }
    }

    /// A map already checked to be sorted, disjoint and filtered (the decoder's, see
    /// [`crate::format::parse_region_table`]).
    pub(crate) fn from_checked(regions: Vec<Region>) -> Self {
        RegionMap { regions }
    }

    pub(crate) fn regions(&self) -> &[Region] {
        &self.regions
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Filters `buf`, whose first byte is at image offset `start` (a multiple of [`FILTER_BLOCK`]).
    pub(crate) fn encode_in_place(&self, buf: &mut [u8], start: u64) {
        self.run(buf, start, true);
    }

    /// Undoes [`RegionMap::encode_in_place`].
    pub(crate) fn decode_in_place(&self, buf: &mut [u8], start: u64) {
        self.run(buf, start, false);
    }

    /// Runs each region's filter over its part of each block: the work is proportional to the filtered
    /// bytes, not to the image.
    fn run(&self, buf: &mut [u8], start: u64, encode: bool) {
        if self.regions.is_empty() {
            return;
        }
        let mut block_start = start;
        for block in buf.chunks_mut(FILTER_BLOCK) {
            let len = block.len() as u64;
            let end = block_start.saturating_add(len);
            let first = self.regions.partition_point(|r| r.hi <= block_start);
            for r in self
                .regions
                .get(first..)
                .unwrap_or(&[])
                .iter()
                .take_while(|r| r.lo < end)
            {
                // Offsets inside the block where instructions may start and must end.
                let from = usize::try_from(r.lo.saturating_sub(block_start)).unwrap_or(block.len());
                let to = usize::try_from(r.hi.saturating_sub(block_start).min(len)).unwrap_or(block.len());
                let origin = block_start.wrapping_sub(r.base);
                filter_block(r.filter, block, origin, from, to, encode);
            }
            block_start = block_start.wrapping_add(FILTER_BLOCK as u64);
        }
    }
}

/// Runs `filter` over `block[from..to]`, whose first byte is at offset `origin` from the code's base.
fn filter_block(filter: Filter, block: &mut [u8], origin: u64, from: usize, to: usize, encode: bool) {
    match filter {
        Filter::None => {}
        Filter::X86 => x86_block(block, origin, from, to, encode, X86Units::CALLS),
        Filter::X86Rip => x86_block(block, origin, from, to, encode, X86Units::RIP),
        Filter::X86Full => x86_block(block, origin, from, to, encode, X86Units::BOTH),
        Filter::Arm64 => arm64_block(block, origin, from, to, encode, Arm64Units::ALL),
        Filter::Arm64Page => arm64_block(block, origin, from, to, encode, Arm64Units::PAGES),
        Filter::Arm => arm_block(block, origin, from, to, encode),
        Filter::Thumb => thumb_block(block, origin, from, to, encode),
    }
}

/// What a delta's filters are: one region map for the old image (applied to its reads) and one for the
/// new (undone on the output), named after the filter of most of new's filtered bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filtering {
    pub filter: Filter,
    pub old: RegionMap,
    pub new: RegionMap,
}

impl Filtering {
    /// No filter anywhere.
    pub(crate) fn none() -> Self {
        Filtering {
            filter: Filter::None,
            old: RegionMap::default(),
            new: RegionMap::default(),
        }
    }

    /// `filter` over all of both images (lengths `old_len`, `new_len`).
    pub(crate) fn everywhere(filter: Filter, old_len: u64, new_len: u64) -> Self {
        let all = |len| {
            RegionMap::new(vec![Region {
                lo: 0,
                hi: len,
                base: 0,
                filter,
            }])
        };
        Filtering {
            filter,
            old: all(old_len),
            new: all(new_len),
        }
    }

    /// The maps, named after the filter covering most of `new`'s filtered bytes.
    pub(crate) fn of_maps(old: RegionMap, new: RegionMap) -> Self {
        let mut bytes: Vec<(Filter, u64)> = Vec::new();
        for r in new.regions().iter().chain(old.regions()) {
            match bytes.iter_mut().find(|(f, _)| *f == r.filter) {
                Some((_, n)) => *n += r.hi - r.lo,
                None => bytes.push((r.filter, r.hi - r.lo)),
            }
        }
        let filter = bytes
            .iter()
            .max_by_key(|(_, n)| *n)
            .map_or(Filter::None, |(f, _)| *f);
        Filtering { filter, old, new }
    }

    pub(crate) fn is_none(&self) -> bool {
        self.old.is_empty() && self.new.is_empty()
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The low 32 bits of an offset: branch arithmetic is modulo 2^32 on purpose.
fn low32(v: u64) -> u32 {
    let b = v.to_le_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn word_at(block: &[u8], at: usize) -> Option<u32> {
    block
        .get(at..at.checked_add(4)?)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

fn put_word(block: &mut [u8], at: usize, word: u32) {
    if let Some(dst) = block.get_mut(at..at + 4) {
        dst.copy_from_slice(&word.to_le_bytes());
    }
}

/// Which x86 units a filter converts.
#[derive(Clone, Copy)]
struct X86Units {
    calls: bool,
    rip: bool,
}

impl X86Units {
    const CALLS: X86Units = X86Units {
        calls: true,
        rip: false,
    };
    const RIP: X86Units = X86Units {
        calls: false,
        rip: true,
    };
    const BOTH: X86Units = X86Units {
        calls: true,
        rip: true,
    };
}

/// Whether a one-byte opcode takes a ModRM byte whose memory operand is commonly RIP-relative.
fn rip_opcode(op: u8) -> bool {
    matches!(
        op,
        0x01 | 0x03
            | 0x09
            | 0x0B
            | 0x21
            | 0x23
            | 0x29
            | 0x2B
            | 0x31
            | 0x33
            | 0x39
            | 0x3B
            | 0x63
            | 0x69
            | 0x6B
            | 0x80
            | 0x81
            | 0x83
            | 0x84
            | 0x85
            | 0x88
            | 0x89
            | 0x8A
            | 0x8B
            | 0x8D
            | 0xC6
            | 0xC7
            | 0xF6
            | 0xF7
            | 0xFF
    )
}

/// Whether a `0F xx` opcode takes a ModRM byte (SSE moves and arithmetic, cmov, movzx/movsx, imul).
fn rip_opcode_0f(op: u8) -> bool {
    matches!(
        op,
        0x10..=0x17 | 0x28..=0x2F | 0x40..=0x4F | 0x51..=0x7F | 0xAF | 0xB6 | 0xB7 | 0xBE | 0xBF | 0xC2 | 0xC6
            | 0xD0..=0xFF
    )
}

/// The offset of the ModRM byte of an instruction whose opcode (or VEX/EVEX escape) starts at `i`, if it
/// is one of the forms [`x86_block`] looks at for RIP-relative operands.
fn rip_modrm_at(block: &[u8], i: usize) -> Option<usize> {
    let op = *block.get(i)?;
    match op {
        0x0F => {
            let op2 = *block.get(i + 1)?;
            if op2 == 0x38 || op2 == 0x3A {
                Some(i + 3)
            } else if rip_opcode_0f(op2) {
                Some(i + 2)
            } else {
                None
            }
        }
        // VEX (2- and 3-byte) and EVEX prefixes: in 64-bit code these bytes are never LDS/LES/BOUND.
        0xC5 => Some(i + 3),
        // Opcode maps 0F, 0F 38, 0F 3A only; EVEX's fixed bits (P0 bits 3:2 zero, P1 bit 2 one): other
        // values are ModRM bytes of the previous instruction (`mov rbp, rax` is `48 89 C5`).
        0xC4 => matches!(block.get(i + 1)? & 0x1F, 1..=3).then_some(i + 4),
        0x62 => (block.get(i + 1)? & 0x0C == 0 && block.get(i + 2)? & 0x04 != 0).then_some(i + 5),
        _ if rip_opcode(op) => Some(i + 1),
        _ => None,
    }
}

/// Whether ModRM byte `m` after opcode `op` is a RIP-relative operand worth converting: `FF /3`, `/5`
/// and `/7` (far or undefined forms) are more often bytes of other instructions.
fn rip_operand(op: u8, m: u8) -> bool {
    m & 0xC7 == 0x05 && (op != 0xFF || matches!((m >> 3) & 7, 0 | 1 | 2 | 4 | 6))
}

/// Adds (`encode`) or subtracts `pc` from the rel32 at `at` when its top byte is `00`/`FF`; the result is
/// sign-extended from 25 bits (as xz does) so it keeps that property and the decoder decides alike.
fn convert_rel32(block: &mut [u8], at: usize, pc: u32, encode: bool) {
    if let Some(rel) = word_at(block, at) {
        let top = rel >> 24;
        if top == 0 || top == 0xFF {
            let v = if encode {
                rel.wrapping_add(pc)
            } else {
                rel.wrapping_sub(pc)
            };
            // Sign extension from bit 24: reinterpret, shift arithmetically, reinterpret back.
            let v = ((v << 7).cast_signed() >> 7).cast_unsigned();
            put_word(block, at, v);
        }
    }
}

/// Every unit the parse reaches (an `E8`/`E9` byte and its rel32; an opcode with a RIP-relative ModRM
/// and its disp32) is skipped whether or not its field is converted, and each decision looks at bytes ahead
/// of the cursor (opcode, ModRM) plus the field's top byte, which conversion preserves. The encoder sees
/// original bytes ahead and the decoder filtered ones, so no byte a check has read may later become part of
/// a converted field: `guard` is the first offset not yet read, and a unit whose field would start before it
/// is not a unit (a failed RIP check at `0F`/VEX/EVEX reads up to 5 bytes ahead). Then both directions read
/// only bytes that are never converted and reach exactly the same decisions. A RIP-relative displacement is
/// made absolute against the end of the disp32 field rather than of the instruction (an immediate may
/// follow): the same constant error for the same instruction form, so moved code still matches.
fn x86_block(block: &mut [u8], origin: u64, from: usize, to: usize, encode: bool, units: X86Units) {
    let end = to.min(block.len());
    let mut i = from;
    let mut guard = from;
    while i + 5 <= end {
        guard = guard.max(i + 1);
        let op = block.get(i).copied().unwrap_or(0);
        if units.calls && (op == 0xE8 || op == 0xE9) && i + 1 >= guard {
            let pc = low32(origin.wrapping_add(i as u64 + 5));
            convert_rel32(block, i + 1, pc, encode);
            i += 5;
            guard = i;
            continue;
        }
        if units.rip {
            if let Some(modrm) = rip_modrm_at(block, i) {
                let fits = modrm + 5 <= end;
                if fits && modrm + 1 >= guard && block.get(modrm).is_some_and(|&m| rip_operand(op, m)) {
                    let pc = low32(origin.wrapping_add(modrm as u64 + 5));
                    convert_rel32(block, modrm + 1, pc, encode);
                    i = modrm + 5;
                    guard = i;
                    continue;
                }
                guard = guard.max(modrm + 1);
            } else if op == 0x0F || op == 0xC4 {
                // The byte after the opcode or escape was read.
                guard = guard.max(i + 2);
            } else if op == 0x62 {
                guard = guard.max(i + 3);
            }
        }
        i += 1;
    }
}

/// Which AArch64 units a filter converts.
#[derive(Clone, Copy)]
struct Arm64Units {
    branches: bool,
}

impl Arm64Units {
    const ALL: Arm64Units = Arm64Units { branches: true };
    const PAGES: Arm64Units = Arm64Units { branches: false };
}

/// The first offset at or after `from` that is `align`-aligned relative to the code's base.
fn aligned_from(origin: u64, from: usize, align: u64) -> usize {
    let mis = origin.wrapping_add(from as u64) % align;
    // Below `align` (at most 4): the conversion cannot fail.
    from + usize::try_from((align - mis) % align).unwrap_or(0)
}

fn arm64_block(block: &mut [u8], origin: u64, from: usize, to: usize, encode: bool, units: Arm64Units) {
    // Instructions are 4-aligned in the file.
    let mut i = aligned_from(origin, from, 4);
    let end = to.min(block.len());
    while i + 4 <= end {
        let pos = origin.wrapping_add(i as u64);
        let Some(w) = word_at(block, i) else { break };
        if units.branches && w & 0x7C00_0000 == 0x1400_0000 {
            // B / BL imm26: word offset.
            let pc = low32(pos >> 2);
            let imm = w & 0x03FF_FFFF;
            let imm = if encode {
                imm.wrapping_add(pc)
            } else {
                imm.wrapping_sub(pc)
            } & 0x03FF_FFFF;
            put_word(block, i, (w & 0xFC00_0000) | imm);
        } else if w & 0x9F00_0000 == 0x9000_0000 {
            let second = word_at(block, i + 4).filter(|_| i + 8 <= end);
            if let Some((low_op, scale)) = second.and_then(|next| low_half(w, next).map(|s| (next, s))) {
                let (w0, w1) = fuse_adrp_pair(w, low_op, scale, low32(pos >> 12), encode);
                put_word(block, i, w0);
                put_word(block, i + 4, w1);
                i += 8;
                continue;
            }
            convert_adrp(block, i, w, low32(pos >> 12), encode);
        }
        i += 4;
    }
}

/// When `op` completes the address the `ADRP` word `adrp` started (`ADD Xd, Xn, #imm12` unshifted, on the
/// register the `ADRP` set): the log2 scale of its imm12 (0). Reads only bits neither word's conversion
/// changes. Loads and stores with a scaled imm12 (`0x39000000` class, scale = size) fuse alike but made no
/// difference on the AArch64 pairs (esbuild -180 bytes, lightningcss +36, systemd 0, curl +8, ssh -8), so
/// they stay apart.
fn low_half(adrp: u32, op: u32) -> Option<u32> {
    ((op >> 5) & 31 == adrp & 31 && op & 0xFFC0_0000 == 0x9100_0000).then_some(0)
}

/// An `ADRP` + `ADD`/load/store pair as one address: `encode` makes the 21-bit page offset absolute (adding
/// `page`, the pair's own page) and stores the address in units of the imm12's scale, (page << (12 -
/// scale)) | low (12 - scale) bits of imm12, with its low 21 bits in the `ADRP` word (bits 5-23, then 29-30)
/// and the rest in those imm12 bits: data that moved by `d` bytes changes the `ADRP` word by a multiple of
/// `d` and the second word not at all. `!encode` undoes it. Only the fields change (the opcodes,
/// registers and imm12's top `scale` bits, which the decisions read or nothing uses, stay).
fn fuse_adrp_pair(adrp: u32, op: u32, scale: u32, page: u32, encode: bool) -> (u32, u32) {
    const ADRP_KEEP: u32 = 0x9F00_001F;
    let low_bits = 12 - scale;
    let low_mask = (1u32 << low_bits) - 1;
    let op_keep = !(low_mask << 10);
    let imm = u64::from((op >> 10) & low_mask);
    if encode {
        let rel = ((adrp >> 29) & 3) | ((adrp >> 3) & 0x001F_FFFC);
        let abs = u64::from(rel.wrapping_add(page) & 0x001F_FFFF);
        let address = (abs << low_bits) | imm;
        let low = low32(address) & 0x001F_FFFF;
        let high = low32(address >> 21) & low_mask;
        let w0 = (adrp & ADRP_KEEP) | ((low & 0x7_FFFF) << 5) | ((low >> 19) << 29);
        (w0, (op & op_keep) | (high << 10))
    } else {
        let low = u64::from(((adrp >> 5) & 0x7_FFFF) | (((adrp >> 29) & 3) << 19));
        let address = (imm << 21) | low;
        let abs = low32(address >> low_bits) & 0x001F_FFFF;
        let rel = abs.wrapping_sub(page) & 0x001F_FFFF;
        let imm = low32(address) & low_mask;
        let w0 = (adrp & ADRP_KEEP) | ((rel & 3) << 29) | ((rel >> 2) << 5);
        (w0, (op & op_keep) | (imm << 10))
    }
}

/// A lone `ADRP`: its 21-bit page offset made absolute (or back), only within ±2^17 pages so the result
/// keeps the same property (the decoder decides alike).
fn convert_adrp(block: &mut [u8], i: usize, w: u32, pc: u32, encode: bool) {
    let src = ((w >> 29) & 3) | ((w >> 3) & 0x001F_FFFC);
    if src.wrapping_add(0x0002_0000) & 0x001C_0000 == 0 {
        let dest = if encode {
            src.wrapping_add(pc)
        } else {
            src.wrapping_sub(pc)
        };
        let mut out = w & 0x9000_001F;
        out |= (dest & 3) << 29;
        out |= (dest & 0x0003_FFFC) << 3;
        out |= 0u32.wrapping_sub(dest & 0x0002_0000) & 0x00E0_0000;
        put_word(block, i, out);
    }
}

/// 32-bit ARM `BL` (condition "always", top byte `EB`): the imm24 word offset from pc + 8 made absolute.
/// The top byte is never changed, so both directions make the same decisions.
fn arm_block(block: &mut [u8], origin: u64, from: usize, to: usize, encode: bool) {
    let mut i = aligned_from(origin, from, 4);
    while i + 4 <= to.min(block.len()) {
        if let Some(w) = word_at(block, i).filter(|w| w >> 24 == 0xEB) {
            let pc = low32(origin.wrapping_add(i as u64 + 8) >> 2);
            let imm = if encode {
                w.wrapping_add(pc)
            } else {
                w.wrapping_sub(pc)
            } & 0x00FF_FFFF;
            put_word(block, i, 0xEB00_0000 | imm);
        }
        i += 4;
    }
}

/// Thumb-2 `BL` (a `F000` halfword then an `F800` one, xz's ARM-Thumb form): the 22-bit halfword offset
/// from pc + 4 made absolute. The checked top bits are never changed and a converted pair is skipped whole,
/// so both directions make the same decisions.
fn thumb_block(block: &mut [u8], origin: u64, from: usize, to: usize, encode: bool) {
    let mut i = aligned_from(origin, from, 2);
    while i + 4 <= to.min(block.len()) {
        let Some(w) = word_at(block, i) else { break };
        // Little-endian halfwords: the first in the low 16 bits.
        if w & 0xF800_F800 != 0xF800_F000 {
            i += 2;
            continue;
        }
        let src = ((w & 0x7FF) << 11) | ((w >> 16) & 0x7FF);
        let pc = low32(origin.wrapping_add(i as u64 + 4) >> 1);
        let dest = if encode {
            src.wrapping_add(pc)
        } else {
            src.wrapping_sub(pc)
        };
        put_word(
            block,
            i,
            0xF800_F000 | ((dest >> 11) & 0x7FF) | ((dest & 0x7FF) << 16),
        );
        i += 4;
    }
}

/// The candidates worth trying on this pair: no filter, and when either image holds ELF code (its own, or
/// that of the files inside a filesystem image), that code filtered by machine, two ways: data references
/// alone (x86-64 RIP-relative operands, AArch64 `ADRP`), or with branches too. Branches alone
/// ([`Filter::X86`]) lost to both on every corpus pair (x86-64 systemd 59,342 bytes against 35,726 with
/// both); data references alone win where most calls stay within code that moved as a whole (numpy:
/// 166,584 unfiltered, 181,152 calls alone, 172,528 both, 156,832 RIP-relative alone). Bytes that are no
/// ELF file's code are never filtered.
pub(crate) fn plausible_filters(old: &[u8], new: &[u8]) -> Vec<Filtering> {
    let (old_code, new_code) = (code_regions(old), code_regions(new));
    let mut out = vec![Filtering::none()];
    if old_code.is_empty() && new_code.is_empty() {
        return out;
    }
    let two_ways = old_code
        .iter()
        .chain(&new_code)
        .any(|c| matches!(c.machine, Machine::X86_64 | Machine::Arm64));
    let ways: &[(Filter, Filter)] = if two_ways {
        &[
            (Filter::X86Rip, Filter::Arm64Page),
            (Filter::X86Full, Filter::Arm64),
        ]
    } else {
        &[(Filter::X86Full, Filter::Arm64)]
    };
    for &(x86, arm64) in ways {
        let pick = |c: &Code, image: &[u8]| machine_filter(c, image, x86, arm64);
        out.push(plan(old, &old_code, new, &new_code, pick));
    }
    out
}

/// `filter` alone (the caller's choice): over the code of every ELF file in either image, or over all of
/// both images when neither holds any.
pub(crate) fn filtering_for(old: &[u8], new: &[u8], filter: Filter) -> Filtering {
    if filter == Filter::None {
        return Filtering::none();
    }
    let (old_code, new_code) = (code_regions(old), code_regions(new));
    if old_code.is_empty() && new_code.is_empty() {
        return Filtering::everywhere(filter, old.len() as u64, new.len() as u64);
    }
    plan(old, &old_code, new, &new_code, |_, _| filter)
}

/// Both images' maps: each code region with the filter `pick` gives it.
fn plan(
    old: &[u8],
    old_code: &[Code],
    new: &[u8],
    new_code: &[Code],
    pick: impl Fn(&Code, &[u8]) -> Filter,
) -> Filtering {
    let map = |image: &[u8], code: &[Code]| {
        RegionMap::new(
            code.iter()
                .map(|c| Region {
                    lo: c.lo,
                    hi: c.hi,
                    base: c.base,
                    filter: pick(c, image),
                })
                .collect(),
        )
    };
    Filtering::of_maps(map(old, old_code), map(new, new_code))
}

/// The filter for one file's code: by machine, x86-64 and AArch64 as the candidate says.
fn machine_filter(code: &Code, image: &[u8], x86_64: Filter, arm64: Filter) -> Filter {
    match code.machine {
        Machine::X86_64 => x86_64,
        Machine::X86 => Filter::X86,
        Machine::Arm64 => arm64,
        Machine::Arm32 => {
            let lo = usize::try_from(code.lo).unwrap_or(usize::MAX);
            let hi = usize::try_from(code.hi).unwrap_or(usize::MAX);
            arm32_filter(image.get(lo..hi).unwrap_or(&[]))
        }
    }
}

/// ARM or Thumb-2 for 32-bit ARM code: whichever `BL` form is denser in (up to 1 MiB of) it, per
/// position it may start at (4-byte words, 2-byte halfwords).
fn arm32_filter(code: &[u8]) -> Filter {
    let code = code.get(..code.len().min(1 << 20)).unwrap_or(code);
    let arm = code
        .chunks_exact(4)
        .filter(|w| matches!(w, [_, _, _, 0xEB]))
        .count();
    let thumb = code
        .windows(4)
        .step_by(2)
        .filter(|w| matches!(w, [_, a, _, b] if a & 0xF8 == 0xF0 && b & 0xF8 == 0xF8))
        .count();
    if thumb > 2 * arm {
        Filter::Thumb
    } else {
        Filter::Arm
    }
}

/// File offsets spanned by the executable PT_LOAD segments of a 64-bit little-endian ELF file.
pub(crate) fn elf_exec_span(data: &[u8]) -> Option<(u64, u64)> {
    if data.get(..7)? != b"\x7fELF\x02\x01\x01" {
        return None;
    }
    let u16_at = |at: usize| {
        data.get(at..at.checked_add(2)?)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let u32_at = |at: usize| {
        data.get(at..at.checked_add(4)?)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at: usize| {
        data.get(at..at.checked_add(8)?)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    let mut span: Option<(u64, u64)> = None;
    for k in 0..phnum.min(256) {
        let ph = phoff.checked_add(k.checked_mul(phentsize)?)?;
        let (p_type, p_flags) = (u32_at(ph)?, u32_at(ph.checked_add(4)?)?);
        const PT_LOAD: u32 = 1;
        const PF_X: u32 = 1;
        if p_type == PT_LOAD && p_flags & PF_X != 0 {
            let (off, size) = (u64_at(ph.checked_add(8)?)?, u64_at(ph.checked_add(32)?)?);
            let end = off.checked_add(size)?;
            span = Some(span.map_or((off, end), |(lo, hi)| (lo.min(off), hi.max(end))));
        }
    }
    span
}

/// Writes an ELF64 x86-64 header over the start of `image` with one executable PT_LOAD over bytes
/// `0..exec_len`: what follows is the image's data.
#[cfg(test)]
pub(crate) fn write_test_elf_header(image: &mut [u8], exec_len: u64) {
    image[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    image[18] = 0x3e;
    image[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    image[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    image[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    image[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    image[68..72].copy_from_slice(&5u32.to_le_bytes()); // R+X
    image[72..80].copy_from_slice(&0u64.to_le_bytes()); // p_offset
    image[96..104].copy_from_slice(&exec_len.to_le_bytes()); // p_filesz
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 x86-64 file with one executable PT_LOAD at `text_off..text_off + text_len`.
    fn fake_elf(text_off: u64, text_len: u64, len: usize) -> Vec<u8> {
        let mut elf = vec![0u8; len];
        elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        elf[18] = 0x3e;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
                                                          // PT_LOAD R (not executable), then PT_LOAD R+X.
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        elf[68..72].copy_from_slice(&4u32.to_le_bytes());
        elf[64 + 32..64 + 40].copy_from_slice(&4096u64.to_le_bytes());
        let ph = 64 + 56;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        elf[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
        elf[ph + 8..ph + 16].copy_from_slice(&text_off.to_le_bytes());
        elf[ph + 32..ph + 40].copy_from_slice(&text_len.to_le_bytes());
        elf
    }

    #[test]
    fn elf_files_get_the_filter_on_their_executable_segments_only() {
        let old = fake_elf(4096, 10_000, 20_000);
        let new = fake_elf(4096, 12_000, 22_000);
        assert_eq!(elf_exec_span(&old), Some((4096, 14_096)));
        let candidates = plausible_filters(&old, &new);
        let code = |hi, filter| {
            RegionMap::new(vec![Region {
                lo: 4096,
                hi,
                base: 0,
                filter,
            }])
        };
        let expect = |filter| Filtering {
            filter,
            old: code(14_096, filter),
            new: code(16_096, filter),
        };
        assert_eq!(
            candidates,
            vec![Filtering::none(), expect(Filter::X86Rip), expect(Filter::X86Full)]
        );
        // Truncated or absurd program headers are ignored, not trusted.
        assert_eq!(elf_exec_span(&old[..100]), None);
        let mut bad = old.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_exec_span(&bad), None);
    }

    #[test]
    fn restricted_filter_leaves_bytes_outside_its_span_alone_and_inverts() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| [0xE8, i.to_le_bytes()[0], 0, 0, 0])
            .collect();
        let region = |lo, hi, filter| {
            RegionMap::new(vec![Region {
                lo,
                hi,
                base: 0,
                filter,
            }])
        };
        let f = region(70_001, 200_003, Filter::X86);
        let mut buf = data.clone();
        f.encode_in_place(&mut buf, 0);
        assert_eq!(buf[..70_001], data[..70_001]);
        assert_eq!(buf[200_003..], data[200_003..]);
        assert_ne!(buf, data);
        f.decode_in_place(&mut buf, 0);
        assert_eq!(buf, data);
        let g = region(65_534, 131_077, Filter::Arm64);
        let mut buf = data.clone();
        g.encode_in_place(&mut buf, 0);
        g.decode_in_place(&mut buf, 0);
        assert_eq!(buf, data);
    }

    fn round_trip(filter: Filter, data: &[u8], start: u64) {
        let mut buf = data.to_vec();
        filter.encode_in_place(&mut buf, start);
        filter.decode_in_place(&mut buf, start);
        assert_eq!(buf, data, "{filter} does not invert");
    }

    #[test]
    fn filters_invert_on_dense_opcodes() {
        let mut data = Vec::new();
        for i in 0..200_000u32 {
            data.extend_from_slice(&[0xE8, (i % 7) as u8, 0xFF, 0xE9, 0x00]);
            data.extend_from_slice(&(0x9400_0000u32 | i).to_le_bytes());
            data.extend_from_slice(&(0x9000_0000u32 | (i << 5) | 3).to_le_bytes());
        }
        for f in Filter::ALL {
            round_trip(f, &data, 0);
            round_trip(f, &data[..data.len() - 3], 0);
        }
    }

    #[test]
    fn x86_call_moved_by_insertion_matches_after_filtering() {
        // A call to absolute 0x1000 at offset 100, and the same call shifted by 16 bytes.
        let call_at = |pos: u32| {
            let mut v = vec![0x90u8; 300];
            let rel = 0x1000u32.wrapping_sub(pos + 5);
            v[pos as usize] = 0xE8;
            v[pos as usize + 1..pos as usize + 5].copy_from_slice(&rel.to_le_bytes());
            v
        };
        let (mut a, mut b) = (call_at(100), call_at(116));
        Filter::X86.encode_in_place(&mut a, 0);
        Filter::X86.encode_in_place(&mut b, 0);
        assert_eq!(a[101..105], b[117..121]);
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    fn pseudo_random(len: usize, mut seed: u64, alphabet: &[u8]) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let r = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
                if alphabet.is_empty() {
                    r.to_le_bytes()[0]
                } else {
                    alphabet[r as usize % alphabet.len()]
                }
            })
            .collect()
    }

    /// Every filter inverts on arbitrary bytes, on bytes dense in the opcodes, ModRM bytes and top bytes the
    /// x86 parse looks at (overlapping units, units cut by the span's or a block's end), at unaligned spans
    /// and block starts other than 0.
    #[test]
    fn filters_invert_on_random_and_opcode_dense_bytes() {
        let dense: &[u8] = &[
            0x48, 0x4C, 0x8D, 0x8B, 0x89, 0x05, 0x15, 0x25, 0x0F, 0x10, 0x38, 0xC5, 0xC4, 0x62, 0xE8, 0xE9,
            0xFF, 0x00, 0x83, 0x3B,
        ];
        for (seed, alphabet) in [(1u64, &[][..]), (2, dense), (3, &dense[..6]), (4, &dense[12..])] {
            let data = pseudo_random(3 * FILTER_BLOCK + 1234, seed, alphabet);
            for f in Filter::ALL {
                round_trip(f, &data, 0);
                round_trip(f, &data, 5 * FILTER_BLOCK as u64);
                for (lo, hi) in [(0, u64::MAX), (17, 70_001), (65_531, 65_539), (100_000, 100_003)] {
                    let span = RegionMap::new(vec![Region {
                        lo,
                        hi,
                        base: lo / 3,
                        filter: f,
                    }]);
                    let mut buf = data.clone();
                    span.encode_in_place(&mut buf, 0);
                    span.decode_in_place(&mut buf, 0);
                    assert!(buf == data, "{f} over {lo}..{hi} does not invert (seed {seed})");
                }
            }
        }
    }

    /// On real x86-64 machine code (this test's own executable) each x86 filter changes bytes and inverts.
    #[test]
    fn x86_filters_invert_on_this_executable() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let span = elf_exec_span(&exe).expect("the test binary is an ELF64 file with executable segments");
        for filter in [Filter::X86, Filter::X86Rip, Filter::X86Full] {
            let f = RegionMap::new(vec![Region {
                lo: span.0,
                hi: span.1,
                base: 0,
                filter,
            }]);
            let mut buf = exe.clone();
            f.encode_in_place(&mut buf, 0);
            let changed = buf.iter().zip(&exe).filter(|(a, b)| a != b).count();
            assert!(
                changed > 1000,
                "{filter} changed only {changed} bytes of {}",
                exe.len()
            );
            f.decode_in_place(&mut buf, 0);
            assert!(
                buf == exe,
                "{filter} does not invert on {} bytes of code",
                exe.len()
            );
        }
    }

    #[test]
    fn x86_rip_relative_load_moved_by_insertion_matches_after_filtering() {
        // `lea rax, [rip + d]` then `movups xmm0, [rip + d]` addressing absolute 0x9000, at offsets 100 and
        // 132 (a 32-byte insertion before them).
        let code_at = |pos: usize| {
            let mut v = vec![0x90u8; 400];
            let disp = |end: usize| 0x9000u32.wrapping_sub(u32::try_from(end).unwrap()).to_le_bytes();
            v[pos..pos + 3].copy_from_slice(&[0x48, 0x8D, 0x05]);
            v[pos + 3..pos + 7].copy_from_slice(&disp(pos + 7));
            v[pos + 7..pos + 10].copy_from_slice(&[0x0F, 0x10, 0x05]);
            v[pos + 10..pos + 14].copy_from_slice(&disp(pos + 14));
            v
        };
        for filter in [Filter::X86Rip, Filter::X86Full] {
            let (mut a, mut b) = (code_at(100), code_at(132));
            filter.encode_in_place(&mut a, 0);
            filter.encode_in_place(&mut b, 0);
            assert_eq!(a[100..114], b[132..146], "{filter}");
            assert_ne!(a[100..114], code_at(100)[100..114], "{filter}");
        }
        // The calls-only filter leaves them alone.
        let mut a = code_at(100);
        Filter::X86.encode_in_place(&mut a, 0);
        assert_eq!(a, code_at(100));
    }

    #[test]
    fn elf_detection_finds_x86_64_header_inside_an_image() {
        let mut img = vec![0u8; 10_000];
        crate::elf::write_test_elf(&mut img[4096..], true, 0x3E, 1024, 3072);
        let code = |filter| {
            RegionMap::new(vec![Region {
                lo: 5120,
                hi: 7168,
                base: 4096,
                filter,
            }])
        };
        let expect = |filter| Filtering {
            filter,
            old: code(filter),
            new: RegionMap::default(),
        };
        assert_eq!(
            plausible_filters(&img, &img[..100]),
            vec![Filtering::none(), expect(Filter::X86Rip), expect(Filter::X86Full)]
        );
        // No ELF file at a block offset: no filter at all, however much the bytes look like code.
        let code_like: Vec<u8> = (0..100_000u32)
            .flat_map(|i| [0xE8, i.to_le_bytes()[0], 0, 0, 0])
            .collect();
        assert_eq!(plausible_filters(&code_like, &code_like), vec![Filtering::none()]);
        for f in Filter::ALL {
            assert_eq!(Filter::from_id(f.id()), Some(f));
        }
        assert_eq!(Filter::from_id(2), Some(Filter::Arm64));
        assert_eq!(Filter::from_id(9), None);
    }

    /// The files of [`mixed_image`]: (offset, ELF machine, 64-bit, the filter its code gets).
    const MIXED_FILES: [(usize, u16, bool, Filter); 4] = [
        (65_536, 0xB7, true, Filter::Arm64),
        (262_144, 0x3E, true, Filter::X86Rip),
        (524_288, 0x28, false, Filter::Arm),
        (786_432, 0x28, false, Filter::Thumb),
    ];

    /// A filesystem-like image of 1 MiB: an AArch64 file, an x86-64 file, a 32-bit ARM file and a Thumb-2
    /// file among data, each file's 64 KiB of code (at 4 KiB into it) dense in every machine's branch
    /// patterns: BL/B/ADRP to AArch64, BL to ARM, E8/E9 rel32 to x86; the Thumb-2 file's BL pairs only.
    fn mixed_image() -> Vec<u8> {
        let alphabet = [0x94, 0x90, 0xEB, 0xF0, 0xF8, 0xE8, 0xE9, 0x00, 0x05, 0x8D];
        let mut img = pseudo_random(1 << 20, 9, &alphabet);
        for &(at, machine, wide, _) in &MIXED_FILES {
            img[at..at + 4096].fill(0);
            crate::elf::write_test_elf(&mut img[at..], wide, machine, 4096, 4096 + 65_536);
        }
        for k in (0..65_536).step_by(8) {
            let at = 786_432 + 4096 + k;
            img[at..at + 8].copy_from_slice(&[0x12, 0xF0, 0x34, 0xF8, 0x00, 0xBF, 0x00, 0xBF]);
        }
        img
    }

    /// On [`mixed_image`], every candidate filters each file's code with its own machine's transform (never
    /// x86 over ARM code) and leaves every other byte alone.
    #[test]
    fn filters_never_touch_bytes_they_do_not_apply_to() {
        let img = mixed_image();
        let files = MIXED_FILES;
        let code_of = |at: usize| at + 4096..at + 4096 + 65_536;
        let candidates = plausible_filters(&img, &img);
        assert_eq!(candidates.len(), 3, "none, x86-rip and x86-full");
        let ways = [
            (Filter::X86Rip, Filter::Arm64Page),
            (Filter::X86Full, Filter::Arm64),
        ];
        for (candidate, (x86, arm64)) in candidates[1..].iter().zip(ways) {
            let regions = candidate.new.regions();
            assert_eq!(regions.len(), files.len());
            for (r, &(at, _, _, filter)) in regions.iter().zip(&files) {
                let want = match filter {
                    Filter::X86Rip => x86,
                    Filter::Arm64 => arm64,
                    other => other,
                };
                assert_eq!(
                    (r.lo, r.hi, r.base, r.filter),
                    (code_of(at).start as u64, code_of(at).end as u64, at as u64, want)
                );
            }
            let mut buf = img.clone();
            candidate.new.encode_in_place(&mut buf, 0);
            let mut outside = 0;
            for (k, (a, b)) in buf.iter().zip(&img).enumerate() {
                let inside = files.iter().any(|&(at, ..)| code_of(at).contains(&k));
                assert!(inside || a == b, "byte {k} outside every file's code changed");
                outside += usize::from(!inside);
            }
            assert!(outside > 700_000);
            // Each file's code is what its own filter alone makes of it, nothing else.
            for &(at, _, _, _) in &files {
                let r = candidate
                    .new
                    .regions()
                    .iter()
                    .find(|r| r.base == at as u64)
                    .unwrap();
                // The file alone (at a block offset, so its blocks split it alike).
                let mut alone = img[at..code_of(at).end].to_vec();
                RegionMap::new(vec![Region {
                    lo: 4096,
                    hi: u64::MAX,
                    base: 0,
                    filter: r.filter,
                }])
                .encode_in_place(&mut alone, 0);
                assert!(
                    alone[4096..] == buf[code_of(at)],
                    "{} over the file at {at}",
                    r.filter
                );
                assert!(
                    alone[4096..] != img[code_of(at)],
                    "{} changed nothing at {at}",
                    r.filter
                );
            }
            candidate.new.decode_in_place(&mut buf, 0);
            assert!(buf == img);
        }
    }

    /// `ADRP x3, page; ADD x3, x3, #lo12` addressing `target` from instruction offset `at`.
    fn adrp_add(at: u64, target: u64) -> [u8; 8] {
        let rel = low32((target >> 12).wrapping_sub(at >> 12)) & 0x1F_FFFF;
        let adrp = 0x9000_0003 | ((rel & 3) << 29) | ((rel >> 2) << 5);
        let add = 0x9100_0063 | ((low32(target) & 0xFFF) << 10);
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&adrp.to_le_bytes());
        out[4..].copy_from_slice(&add.to_le_bytes());
        out
    }

    /// An `ADRP` + `ADD` pair is one address after the arm64 filters: data that moved by 0x1238 bytes
    /// (across a page boundary or not) changes only the `ADRP` word, always by the same amount, wherever the
    /// code moved; and pairs with every field value invert.
    #[test]
    fn arm64_address_pairs_fuse_so_moved_data_changes_one_word_alike() {
        for filter in [Filter::Arm64, Filter::Arm64Page] {
            let mut diffs = Vec::new();
            for (code_at, target) in [
                (0x1000u64, 0x40_0F00u64),
                (0x2344, 0x41_0010),
                (0x9_0008, 0x40_0000),
            ] {
                let filtered = |at: u64, target: u64| {
                    let mut buf = vec![0u8; 0xA_0000];
                    let i = usize::try_from(at).unwrap();
                    buf[i..i + 8].copy_from_slice(&adrp_add(at, target));
                    filter.encode_in_place(&mut buf, 0);
                    let word = |k: usize| u32::from_le_bytes(buf[k..k + 4].try_into().unwrap());
                    (word(i), word(i + 4))
                };
                let (a0, a1) = filtered(code_at, target);
                let (b0, b1) = filtered(code_at + 0x400, target + 0x1238);
                assert_eq!(a1, b1, "{filter}: the ADD word changed");
                diffs.push(b0.wrapping_sub(a0));
            }
            assert!(diffs.iter().all(|&d| d == 0x1238 << 5), "{filter}: {diffs:x?}");
        }
        let pairs: Vec<u8> = (0..50_000u64)
            .flat_map(|k| adrp_add(k * 8, k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 31))
            .collect();
        for filter in [Filter::Arm64, Filter::Arm64Page] {
            round_trip(filter, &pairs, 0);
            round_trip(filter, &pairs[4..], 3 * FILTER_BLOCK as u64);
        }
    }

    proptest::proptest! {
        /// Every transform inverts exactly on arbitrary bytes, over an arbitrary region with an arbitrary
        /// base, at an arbitrary block-aligned start.
        #[test]
        fn every_transform_inverts_on_arbitrary_input(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3 * FILTER_BLOCK),
            lo in 0u64..200_000,
            len in 0u64..200_000,
            back in 0u64..5000,
            block in 0u64..4,
        ) {
            let start = block * FILTER_BLOCK as u64;
            for filter in Filter::ALL {
                let map = RegionMap::new(vec![Region { lo: start + lo, hi: start + lo + len, base: (start + lo).saturating_sub(back), filter }]);
                let mut buf = data.clone();
                map.encode_in_place(&mut buf, start);
                map.decode_in_place(&mut buf, start);
                proptest::prop_assert!(buf == data, "{} does not invert", filter);
            }
        }
    }
}
