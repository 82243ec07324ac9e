//! Executable-aware pre-filters (after xz's BCJ filters): relative branch targets become absolute, so code
//! that only moved between releases matches byte for byte.
//!
//! Both directions work on independent aligned blocks of [`FILTER_BLOCK`] bytes (an instruction never spans
//! a block boundary), which lets the decoder filter any block of the old image on its own and undo the
//! filter on the new image with one block of buffer.

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
}

impl Filter {
    /// Every filter, in the order the encoder tries them.
    pub const ALL: [Filter; 3] = [Filter::None, Filter::X86, Filter::Arm64];

    /// The id stored in the delta header.
    pub fn id(self) -> u8 {
        match self {
            Filter::None => 0,
            Filter::X86 => 1,
            Filter::Arm64 => 2,
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
        }
    }

    /// This filter over the whole image.
    pub(crate) fn everywhere(self) -> Filtering {
        Filtering {
            filter: self,
            lo: 0,
            hi: u64::MAX,
        }
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

/// A filter restricted to the image offsets `lo..hi` (instructions wholly inside): for a single ELF
/// file, the hull of the executable segments of both images, so data sections are left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Filtering {
    pub filter: Filter,
    pub lo: u64,
    pub hi: u64,
}

impl Filtering {
    /// Filters `buf`, whose first byte is at image offset `start` (a multiple of [`FILTER_BLOCK`]).
    pub(crate) fn encode_in_place(self, buf: &mut [u8], start: u64) {
        self.run(buf, start, true);
    }

    /// Undoes [`Filtering::encode_in_place`].
    pub(crate) fn decode_in_place(self, buf: &mut [u8], start: u64) {
        self.run(buf, start, false);
    }

    fn run(self, buf: &mut [u8], start: u64, encode: bool) {
        if self.filter == Filter::None {
            return;
        }
        let mut block_start = start;
        for block in buf.chunks_mut(FILTER_BLOCK) {
            let len = block.len() as u64;
            let end = block_start.saturating_add(len);
            if end > self.lo && block_start < self.hi {
                // Offsets inside the block where instructions may start and must end.
                let from = usize::try_from(self.lo.saturating_sub(block_start)).unwrap_or(block.len());
                let to = usize::try_from(self.hi.saturating_sub(block_start).min(len)).unwrap_or(block.len());
                match self.filter {
                    Filter::None => {}
                    Filter::X86 => x86_block(block, block_start, from, to, encode),
                    Filter::Arm64 => arm64_block(block, block_start, from, to, encode),
                }
            }
            block_start = block_start.wrapping_add(FILTER_BLOCK as u64);
        }
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The low 32 bits of an image offset: branch arithmetic is modulo 2^32 on purpose.
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

/// Every `E8`/`E9` byte the parse reaches starts a 5-byte unit that the parse skips whether or not it is
/// converted, so no later conversion can change the bytes an earlier decision looked at; the converted
/// value keeps the `00`/`FF` top byte (sign extension from 25 bits, as xz does), so the decoder reaches
/// exactly the same decisions on filtered bytes.
fn x86_block(block: &mut [u8], block_start: u64, from: usize, to: usize, encode: bool) {
    let mut i = from;
    while i + 5 <= to.min(block.len()) {
        let op = block.get(i).copied().unwrap_or(0);
        if op != 0xE8 && op != 0xE9 {
            i += 1;
            continue;
        }
        if let Some(rel) = word_at(block, i + 1) {
            let top = rel >> 24;
            if top == 0 || top == 0xFF {
                let pc = low32(block_start.wrapping_add(i as u64 + 5));
                let v = if encode {
                    rel.wrapping_add(pc)
                } else {
                    rel.wrapping_sub(pc)
                };
                let v = (((v << 7) as i32) >> 7) as u32;
                put_word(block, i + 1, v);
            }
        }
        i += 5;
    }
}

fn arm64_block(block: &mut [u8], block_start: u64, from: usize, to: usize, encode: bool) {
    // Instructions are 4-aligned in the image.
    let mut i = from.next_multiple_of(4);
    while i + 4 <= to.min(block.len()) {
        let pos = block_start.wrapping_add(i as u64);
        let Some(w) = word_at(block, i) else { break };
        if w & 0x7C00_0000 == 0x1400_0000 {
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
            // ADRP: 21-bit page offset immhi:immlo; converted only within ±2^17 pages so the result keeps
            // the same property (decoder decides alike).
            let src = ((w >> 29) & 3) | ((w >> 3) & 0x001F_FFFC);
            if src.wrapping_add(0x0002_0000) & 0x001C_0000 == 0 {
                let pc = low32(pos >> 12);
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
        i += 4;
    }
}

/// Which filters are worth trying on this pair: `None` always; a machine-code filter when an ELF header
/// for that machine appears in either image (also inside a filesystem image), or on raw blobs when both
/// images are small enough that trying costs little. When both images are themselves ELF files, the
/// machine filter is restricted to the hull of their executable segments.
pub(crate) fn plausible_filters(old: &[u8], new: &[u8]) -> Vec<Filtering> {
    let mut found = elf_machines(new);
    for f in elf_machines(old) {
        if !found.contains(&f) {
            found.push(f);
        }
    }
    let mut out = vec![Filter::None.everywhere()];
    let machine_filters: Vec<Filter> = if found.is_empty() && old.len().saturating_add(new.len()) <= 8 << 20 {
        vec![Filter::X86, Filter::Arm64]
    } else {
        [Filter::X86, Filter::Arm64]
            .into_iter()
            .filter(|f| found.contains(f))
            .collect()
    };
    for filter in machine_filters {
        match (elf_exec_span(old), elf_exec_span(new)) {
            (Some((a_lo, a_hi)), Some((b_lo, b_hi))) => {
                out.push(Filtering {
                    filter,
                    lo: a_lo.min(b_lo),
                    hi: a_hi.max(b_hi),
                });
            }
            _ => out.push(filter.everywhere()),
        }
    }
    out
}

/// File offsets spanned by the executable PT_LOAD segments of a 64-bit little-endian ELF file.
fn elf_exec_span(data: &[u8]) -> Option<(u64, u64)> {
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

/// Machines of the 64-bit little-endian ELF headers found in `data`.
fn elf_machines(data: &[u8]) -> Vec<Filter> {
    const ELF64_LE: &[u8] = b"\x7fELF\x02\x01\x01";
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(rel) = data
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == 0x7f))
    {
        let p = at + rel;
        if data.get(p..p + ELF64_LE.len()) == Some(ELF64_LE) {
            let machine = data.get(p + 18..p + 20);
            let f = match machine {
                Some([0x3e, 0]) => Some(Filter::X86),
                Some([0xb7, 0]) => Some(Filter::Arm64),
                _ => None,
            };
            if let Some(f) = f {
                if !out.contains(&f) {
                    out.push(f);
                    if out.len() == 2 {
                        break;
                    }
                }
            }
        }
        at = p + 1;
    }
    out
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
        assert_eq!(
            candidates,
            vec![
                Filter::None.everywhere(),
                Filtering {
                    filter: Filter::X86,
                    lo: 4096,
                    hi: 16_096
                }
            ]
        );
        // Truncated or absurd program headers are ignored, not trusted.
        assert_eq!(elf_exec_span(&old[..100]), None);
        let mut bad = old.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_exec_span(&bad), None);
    }

    #[test]
    fn restricted_filter_leaves_bytes_outside_its_span_alone_and_inverts() {
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| [0xE8, i as u8, 0, 0, 0]).collect();
        let f = Filtering {
            filter: Filter::X86,
            lo: 70_001,
            hi: 200_003,
        };
        let mut buf = data.clone();
        f.encode_in_place(&mut buf, 0);
        assert_eq!(buf[..70_001], data[..70_001]);
        assert_eq!(buf[200_003..], data[200_003..]);
        assert_ne!(buf, data);
        f.decode_in_place(&mut buf, 0);
        assert_eq!(buf, data);
        let g = Filtering {
            filter: Filter::Arm64,
            lo: 65_534,
            hi: 131_077,
        };
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

    #[test]
    fn elf_detection_finds_x86_64_header_inside_an_image() {
        let mut img = vec![0u8; 10_000];
        img[4096..4103].copy_from_slice(b"\x7fELF\x02\x01\x01");
        img[4096 + 18] = 0x3e;
        assert_eq!(
            plausible_filters(&img, &img[..100]),
            vec![Filter::None.everywhere(), Filter::X86.everywhere()]
        );
        assert_eq!(Filter::from_id(2), Some(Filter::Arm64));
        assert_eq!(Filter::from_id(9), None);
    }
}
