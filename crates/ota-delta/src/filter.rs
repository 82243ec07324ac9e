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

    /// Filters `buf`, whose first byte is at image offset `start` (a multiple of [`FILTER_BLOCK`]).
    pub(crate) fn encode_in_place(self, buf: &mut [u8], start: u64) {
        self.run(buf, start, true);
    }

    /// Undoes [`Filter::encode_in_place`].
    pub(crate) fn decode_in_place(self, buf: &mut [u8], start: u64) {
        self.run(buf, start, false);
    }

    fn run(self, buf: &mut [u8], start: u64, encode: bool) {
        if self == Filter::None {
            return;
        }
        let mut block_start = start;
        for block in buf.chunks_mut(FILTER_BLOCK) {
            match self {
                Filter::None => {}
                Filter::X86 => x86_block(block, block_start, encode),
                Filter::Arm64 => arm64_block(block, block_start, encode),
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
fn x86_block(block: &mut [u8], block_start: u64, encode: bool) {
    let mut i = 0usize;
    while i + 5 <= block.len() {
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

fn arm64_block(block: &mut [u8], block_start: u64, encode: bool) {
    let mut i = 0usize;
    while i + 4 <= block.len() {
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
/// images are small enough that trying costs little.
pub(crate) fn plausible_filters(old: &[u8], new: &[u8]) -> Vec<Filter> {
    let mut found = elf_machines(new);
    for f in elf_machines(old) {
        if !found.contains(&f) {
            found.push(f);
        }
    }
    let mut out = vec![Filter::None];
    if found.is_empty() && old.len().saturating_add(new.len()) <= 8 << 20 {
        out.extend([Filter::X86, Filter::Arm64]);
    } else {
        for f in [Filter::X86, Filter::Arm64] {
            if found.contains(&f) {
                out.push(f);
            }
        }
    }
    out
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
            vec![Filter::None, Filter::X86]
        );
        assert_eq!(Filter::from_id(2), Some(Filter::Arm64));
        assert_eq!(Filter::from_id(9), None);
    }
}
