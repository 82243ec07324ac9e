//! Where an image's machine code is: a bounded parse of ELF headers (32- and 64-bit, little endian) into
//! the image offsets of each file's executable sections, for a lone ELF file or for the ELF files inside a
//! filesystem image (found at block-aligned offsets). Nothing read is trusted: every offset is checked
//! against the image, counts are capped, and a header that does not hold together is skipped.

/// The instruction set of an ELF file's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Machine {
    /// x86-64 (`EM_X86_64`).
    X86_64,
    /// 32-bit x86 (`EM_386`).
    X86,
    /// AArch64 (`EM_AARCH64`).
    Arm64,
    /// 32-bit ARM (`EM_ARM`): ARM or Thumb-2 code.
    Arm32,
}

/// One ELF file's code: image offsets `lo..hi` (the hull of its executable sections) of the file that
/// starts at image offset `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code {
    pub machine: Machine,
    pub base: u64,
    pub lo: u64,
    pub hi: u64,
}

/// Alignment of file data inside the filesystem images searched (ext4 blocks are 1 to 4 KiB; 512 also
/// covers tar archives and FAT).
const FILE_ALIGN: usize = 512;
/// Most section or program headers looked at in one file.
const MAX_HEADERS: usize = 4096;
/// Most ELF files one image yields (the format's cap on regions, see [`crate::format::MAX_REGIONS`]).
const MAX_FILES: usize = crate::format::MAX_REGIONS as usize;
/// Largest code hull believed (a larger one is a header that is not one).
const MAX_CODE_LEN: u64 = 1 << 30;

/// The code of `image`: its own when it is an ELF file; else that of every ELF file starting at a
/// [`FILE_ALIGN`]-aligned offset (a filesystem image), in image order and disjoint; else nothing.
pub(crate) fn code_regions(image: &[u8]) -> Vec<Code> {
    if image.starts_with(b"\x7fELF") {
        return elf_code(image, 0).into_iter().collect();
    }
    let mut out: Vec<Code> = Vec::new();
    let mut at = 0usize;
    while at < image.len() && out.len() < MAX_FILES {
        let inside_last = out.last().is_some_and(|c| (at as u64) < c.hi);
        if !inside_last && image.get(at..at + 4) == Some(b"\x7fELF") {
            if let Some(code) = elf_code(image, at) {
                out.push(code);
            }
        }
        at += FILE_ALIGN;
    }
    out
}

/// Little-endian fields of one ELF file, 32- or 64-bit.
struct Fields<'a> {
    file: &'a [u8],
    wide: bool,
}

impl Fields<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let b = self.file.get(at..at.checked_add(2)?)?;
        Some(u16::from_le_bytes(b.try_into().ok()?))
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let b = self.file.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    fn u64(&self, at: usize) -> Option<u64> {
        let b = self.file.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// A word-sized field (`Elf32_Off`/`Elf64_Off` and the like): at `narrow` or `wide` by class.
    fn word(&self, narrow: usize, wide: usize) -> Option<u64> {
        if self.wide {
            self.u64(wide)
        } else {
            self.u32(narrow).map(u64::from)
        }
    }

    /// The table at (offset field, entry size field, count field), entries at least `min_entry` bytes:
    /// each entry's offset in the file.
    fn table(&self, fields: [(usize, usize); 3], min_entry: usize) -> Option<Vec<usize>> {
        let [off, entsize, num] = fields;
        let off = usize::try_from(self.word(off.0, off.1)?).ok()?;
        let entsize = usize::from(self.u16(if self.wide { entsize.1 } else { entsize.0 })?);
        let num = usize::from(self.u16(if self.wide { num.1 } else { num.0 })?);
        if off == 0 || entsize < min_entry || num == 0 || num > MAX_HEADERS {
            return None;
        }
        let end = off.checked_add(entsize.checked_mul(num)?)?;
        if end > self.file.len() {
            return None;
        }
        Some((0..num).map(|k| off + k * entsize).collect())
    }

    /// File offsets spanned by the executable sections (`SHF_EXECINSTR`, with file bytes).
    fn section_hull(&self) -> Option<(u64, u64)> {
        const SHT_NOBITS: u32 = 8;
        const SHF_EXECINSTR: u64 = 4;
        let min = if self.wide { 64 } else { 40 };
        let table = self.table([(32, 40), (46, 58), (48, 60)], min)?;
        let mut hull: Option<(u64, u64)> = None;
        for sh in table {
            let flags = self.word(sh + 8, sh + 8)?;
            if self.u32(sh + 4)? == SHT_NOBITS || flags & SHF_EXECINSTR == 0 {
                continue;
            }
            let (off, size) = (self.word(sh + 16, sh + 24)?, self.word(sh + 20, sh + 32)?);
            hull = widen(hull, off, off.checked_add(size)?);
        }
        hull
    }

    /// File offsets spanned by the executable `PT_LOAD` segments.
    fn segment_hull(&self) -> Option<(u64, u64)> {
        const PT_LOAD: u32 = 1;
        const PF_X: u32 = 1;
        let min = if self.wide { 56 } else { 32 };
        let table = self.table([(28, 32), (42, 54), (44, 56)], min)?;
        let mut hull: Option<(u64, u64)> = None;
        for ph in table {
            let flags = self.u32(if self.wide { ph + 4 } else { ph + 24 })?;
            if self.u32(ph)? != PT_LOAD || flags & PF_X == 0 {
                continue;
            }
            let (off, size) = (self.word(ph + 4, ph + 8)?, self.word(ph + 16, ph + 32)?);
            hull = widen(hull, off, off.checked_add(size)?);
        }
        hull
    }
}

fn widen(hull: Option<(u64, u64)>, lo: u64, hi: u64) -> Option<(u64, u64)> {
    if hi <= lo {
        return hull;
    }
    Some(hull.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))))
}

/// The code of the ELF file starting at `image[at..]`, if its header holds together: the hull of its
/// executable sections when they lie inside its executable segments (section headers sit at a file's end,
/// which in a filesystem image may be another file's block), else of the segments.
fn elf_code(image: &[u8], at: usize) -> Option<Code> {
    let file = image.get(at..)?;
    let ident = file.get(..7)?;
    let wide = match ident {
        [0x7f, b'E', b'L', b'F', 1, 1, 1] => false,
        [0x7f, b'E', b'L', b'F', 2, 1, 1] => true,
        _ => return None,
    };
    let fields = Fields { file, wide };
    let machine = match fields.u16(18)? {
        0x3E => Machine::X86_64,
        0x03 => Machine::X86,
        0xB7 => Machine::Arm64,
        0x28 => Machine::Arm32,
        _ => return None,
    };
    let sections = fields.section_hull();
    let segments = fields.segment_hull();
    let (lo, hi) = match (sections, segments) {
        (Some(s), Some(g)) if s.0 >= g.0 && s.1 <= g.1 => s,
        (_, Some(g)) => g,
        (Some(s), None) => s,
        (None, None) => return None,
    };
    let hi = hi.min(file.len() as u64);
    if hi <= lo || hi - lo > MAX_CODE_LEN {
        return None;
    }
    let base = at as u64;
    Some(Code {
        machine,
        base,
        lo: base + lo,
        hi: base + hi,
    })
}

/// Writes a minimal ELF header for `machine` at the start of `file`: one executable `PT_LOAD` and one
/// `SHF_EXECINSTR` section over `code_lo..code_hi`, its tables after the first 64 bytes.
#[cfg(test)]
pub(crate) fn write_test_elf(file: &mut [u8], wide: bool, machine: u16, code_lo: u64, code_hi: u64) {
    file[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', if wide { 2 } else { 1 }, 1, 1]);
    file[18..20].copy_from_slice(&machine.to_le_bytes());
    let put = |file: &mut [u8], at: usize, v: u64, len: usize| {
        file[at..at + len].copy_from_slice(&v.to_le_bytes()[..len])
    };
    let w = if wide { 8 } else { 4 };
    let (ph, sh) = (64u64, 160u64);
    if wide {
        put(file, 32, ph, 8);
        put(file, 40, sh, 8);
        put(file, 54, 56, 2);
        put(file, 56, 1, 2);
        put(file, 58, 64, 2);
        put(file, 60, 1, 2);
        put(file, 64, 1, 4);
        put(file, 68, 5, 4);
        put(file, 72, code_lo, w);
        put(file, 96, code_hi - code_lo, w);
        put(file, 164, 1, 4);
        put(file, 168, 6, w);
        put(file, 184, code_lo, w);
        put(file, 192, code_hi - code_lo, w);
    } else {
        put(file, 28, ph, 4);
        put(file, 32, sh, 4);
        put(file, 42, 32, 2);
        put(file, 44, 1, 2);
        put(file, 46, 40, 2);
        put(file, 48, 1, 2);
        put(file, 64, 1, 4);
        put(file, 68, code_lo, w);
        put(file, 80, code_hi - code_lo, w);
        put(file, 88, 5, 4);
        put(file, 164, 1, 4);
        put(file, 168, 6, w);
        put(file, 176, code_lo, w);
        put(file, 180, code_hi - code_lo, w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_elf_files_of_both_classes_give_their_code() {
        for (wide, machine, want) in [
            (true, 0x3E, Machine::X86_64),
            (true, 0xB7, Machine::Arm64),
            (false, 0x28, Machine::Arm32),
            (false, 0x03, Machine::X86),
        ] {
            let mut file = vec![0u8; 20_000];
            write_test_elf(&mut file, wide, machine, 4096, 12_000);
            assert_eq!(
                code_regions(&file),
                vec![Code {
                    machine: want,
                    base: 0,
                    lo: 4096,
                    hi: 12_000
                }]
            );
        }
    }

    #[test]
    fn elf_files_inside_an_image_are_found_at_block_offsets_only() {
        let mut image = vec![0u8; 200_000];
        write_test_elf(&mut image[8192..], true, 0xB7, 4096, 10_000);
        // Inside the first file's code: its data, not a file.
        write_test_elf(&mut image[12_288..], true, 0x3E, 64, 4096);
        write_test_elf(&mut image[40_960..], false, 0x28, 1024, 2048);
        // Not block-aligned: not a file of the filesystem.
        write_test_elf(&mut image[60_001..], true, 0x3E, 64, 4096);
        let found = code_regions(&image);
        assert_eq!(
            found,
            vec![
                Code {
                    machine: Machine::Arm64,
                    base: 8192,
                    lo: 12_288,
                    hi: 18_192
                },
                Code {
                    machine: Machine::Arm32,
                    base: 40_960,
                    lo: 41_984,
                    hi: 43_008
                }
            ]
        );
    }

    #[test]
    fn broken_headers_are_skipped_not_trusted() {
        let mut file = vec![0u8; 20_000];
        write_test_elf(&mut file, true, 0x3E, 4096, 12_000);
        for (at, value) in [(32usize, u64::MAX), (40, u64::MAX)] {
            let mut bad = file.clone();
            bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
            // One table broken: the other still gives the code.
            assert_eq!(code_regions(&bad).len(), 1);
        }
        let mut bad = file.clone();
        bad[32..48].copy_from_slice(&[0xFF; 16]);
        assert_eq!(code_regions(&bad), vec![]);
        assert_eq!(code_regions(&file[..100]), vec![]);
        let mut other = file.clone();
        other[18] = 0x08; // MIPS
        assert_eq!(code_regions(&other), vec![]);
        // A section outside the executable segments is not believed.
        let mut shifted = file.clone();
        shifted[184..192].copy_from_slice(&15_000u64.to_le_bytes());
        assert_eq!(code_regions(&shifted)[0].lo, 4096);
        assert_eq!(code_regions(&shifted)[0].hi, 12_000);
    }
}
