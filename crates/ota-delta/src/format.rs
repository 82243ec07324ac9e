//! The on-disk layout: header, segment headers and control entries (see the crate doc for the table).

use crate::filter::{Filter, Region, RegionMap};
use crate::{Error, Result};

/// The format version this build writes and reads (6: filters per region, a region table for each image
/// after the header, filter ids 5 to 7 (AArch64 branches alone, ARM, Thumb-2); 5: filter ids 3 and 4, x86-64 RIP-relative operands
/// alone and with calls/jumps; 4: the first [`CARRY_BYTES`] changed bytes of each run of changed bytes are a
/// little-endian integer added to old with carry; version 3 started a run at each (zero run, literal run)
/// pair, so a raw-coded diff got no carry; version 2 added every literal bytewise, version 1 coded the diff
/// as one byte stream; none of them is read any more).
pub const FORMAT_VERSION: u16 = 7;
/// Bytes at the start of each run of changed bytes that form one little-endian integer added to the old bytes
/// with carry (rather than byte by byte): a rel32 or pointer that moved by the same distance then gets the
/// same literal bytes whether or not its low byte wrapped, which LZMA2 codes as repeats (15% smaller literal
/// stream on the corpus's executables). 8 covers a 64-bit pointer.
pub const CARRY_BYTES: u64 = 8;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 112;
/// Largest LZMA2 dictionary (log2 bytes) a delta may declare for its literal and extra streams.
pub const MAX_WINDOW_LOG: u8 = 22;
/// Largest LZMA2 dictionary (log2 bytes) for the small side streams: control, zero runs and literal
/// lengths. Two 4 MiB and three 1 MiB dictionaries keep the decoder's peak memory near 13 MiB whatever the
/// image size.
pub const SIDE_MAX_WINDOW_LOG: u8 = 20;
/// Largest decoded control stream of one segment (the decoder buffers it).
pub const SEGMENT_CONTROL_MAX: u32 = 64 * 1024;
/// Largest decoded extra stream of one segment (the decoder buffers it).
pub const SEGMENT_EXTRA_MAX: u32 = 1024 * 1024;
/// Largest decoded zero-run stream, and literal-length stream, of one segment (the decoder buffers both).
pub const SEGMENT_RUNS_MAX: u32 = 64 * 1024;
/// Most filtered regions in one image's region table (ELF files' code in a filesystem image: one each).
pub const MAX_REGIONS: u32 = 16_384;
/// Largest region table (both images'): each region takes at most 3 varints of 10 bytes and an id byte.
pub(crate) const MAX_REGION_TABLE_LEN: u32 = 2 * MAX_REGIONS * 31;
/// Smallest dictionary log LZMA2 accepts (4 KiB).
pub(crate) const MIN_WINDOW_LOG: u8 = 12;

pub(crate) const MAGIC: [u8; 8] = *b"OTADELTA";
pub(crate) const CODEC_XZ: u8 = 1;
pub(crate) const TAG_END: u8 = 0;
pub(crate) const TAG_SEGMENT: u8 = 1;
/// tag + 9 x u32 + u64.
pub(crate) const SEGMENT_HEADER_LEN: usize = 1 + 4 * 9 + 8;

/// What a delta declares about itself: read it with [`crate::read_header`] before applying, to check that
/// the running image is the delta's base (`old_len`, `old_sha256`) and to size the target (`new_len`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    /// Format version (currently always [`FORMAT_VERSION`]).
    pub format_version: u16,
    /// The pre-filter of most of the filtered bytes (each region names its own: see the region table).
    pub filter: Filter,
    /// Length of the base image.
    pub old_len: u64,
    /// sha256 of the base image.
    pub old_sha256: [u8; 32],
    /// Length of the image the delta produces.
    pub new_len: u64,
    /// sha256 of the image the delta produces.
    pub new_sha256: [u8; 32],
    /// LZMA2 dictionary logs of the control (at most [`SIDE_MAX_WINDOW_LOG`]), diff literal and extra
    /// streams (at most [`MAX_WINDOW_LOG`]).
    pub window_logs: [u8; 3],
    /// LZMA2 dictionary log of the zero-run and literal-length streams (at most [`SIDE_MAX_WINDOW_LOG`]).
    pub runs_window_log: u8,
    /// Filtered regions of the old image (at most [`MAX_REGIONS`]).
    pub old_regions: u32,
    /// Filtered regions of the new image (at most [`MAX_REGIONS`]).
    pub new_regions: u32,
    /// Bytes of the region table that follows the header (as stored).
    pub region_table_len: u32,
    /// Bytes of the region table once decompressed, when it is stored as an xz stream; 0 when it is
    /// stored as is (a table of a few regions, which xz would only grow).
    pub region_table_raw_len: u32,
}

/// The five streams, in the order their chunks follow each segment header.
pub(crate) const STREAM_NAMES: [&str; 5] = ["control", "extra", "zero-run", "literal-length", "literal"];
/// Indexes into [`STREAM_NAMES`].
pub(crate) const CONTROL: usize = 0;
pub(crate) const EXTRA: usize = 1;
pub(crate) const ZERO_RUNS: usize = 2;
pub(crate) const LITERAL_LENGTHS: usize = 3;
pub(crate) const LITERALS: usize = 4;

impl DeltaHeader {
    pub(crate) fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = SliceWriter {
            buf: &mut out,
            pos: 0,
        };
        w.put(&MAGIC);
        w.put(&self.format_version.to_le_bytes());
        w.put(&[self.filter.id(), CODEC_XZ]);
        w.put(&self.old_len.to_le_bytes());
        w.put(&self.old_sha256);
        w.put(&self.new_len.to_le_bytes());
        w.put(&self.new_sha256);
        w.put(&self.window_logs);
        w.put(&[self.runs_window_log]);
        w.put(&self.old_regions.to_le_bytes());
        w.put(&self.new_regions.to_le_bytes());
        w.put(&self.region_table_len.to_le_bytes());
        w.put(&self.region_table_raw_len.to_le_bytes());
        out
    }

    /// Parses and validates the fixed header; every field is checked before anything is trusted.
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> Result<DeltaHeader> {
        let mut r = ByteReader::new(bytes);
        let magic: [u8; 8] = r.array().ok_or(Error::Truncated {
            what: "magic",
            offset: 0,
        })?;
        if magic != MAGIC {
            return Err(Error::BadMagic { got: magic });
        }
        let version = u16::from_le_bytes(r.array().ok_or(Error::Truncated {
            what: "version",
            offset: 8,
        })?);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                got: version,
                supported: FORMAT_VERSION,
            });
        }
        let [filter_id, codec]: [u8; 2] = r.array().ok_or(Error::Truncated {
            what: "ids",
            offset: 10,
        })?;
        let filter = Filter::from_id(filter_id).ok_or(Error::UnknownFilter { id: filter_id })?;
        if codec != CODEC_XZ {
            return Err(Error::UnknownCodec { id: codec });
        }
        let truncated = |what| Error::Truncated { what, offset: 12 };
        let old_len = u64::from_le_bytes(r.array().ok_or(truncated("old_len"))?);
        let old_sha256 = r.array().ok_or(truncated("old_sha256"))?;
        let new_len = u64::from_le_bytes(r.array().ok_or(truncated("new_len"))?);
        let new_sha256 = r.array().ok_or(truncated("new_sha256"))?;
        let window_logs: [u8; 3] = r.array().ok_or(truncated("window logs"))?;
        let [runs_window_log]: [u8; 1] = r.array().ok_or(truncated("runs window log"))?;
        let old_regions = u32::from_le_bytes(r.array().ok_or(truncated("old region count"))?);
        let new_regions = u32::from_le_bytes(r.array().ok_or(truncated("new region count"))?);
        let region_table_len = u32::from_le_bytes(r.array().ok_or(truncated("region table length"))?);
        let region_table_raw_len = u32::from_le_bytes(r.array().ok_or(truncated("region table raw length"))?);
        check_window_logs(window_logs, runs_window_log)?;
        check_region_counts(old_regions, new_regions, region_table_len, region_table_raw_len)?;
        Ok(DeltaHeader {
            format_version: version,
            filter,
            old_len,
            old_sha256,
            new_len,
            new_sha256,
            window_logs,
            runs_window_log,
            old_regions,
            new_regions,
            region_table_len,
            region_table_raw_len,
        })
    }
}

/// The header's region counts and table lengths (stored, decompressed) within their caps.
fn check_region_counts(old: u32, new: u32, table_len: u32, raw_len: u32) -> Result<()> {
    let malformed = |offset, detail| Error::Malformed {
        what: "header region table fields",
        offset,
        detail,
    };
    if old > MAX_REGIONS || new > MAX_REGIONS {
        return Err(malformed(
            96,
            format!("{old} old and {new} new regions, at most {MAX_REGIONS} each"),
        ));
    }
    if table_len > MAX_REGION_TABLE_LEN {
        return Err(malformed(
            104,
            format!("region table of {table_len} bytes, at most {MAX_REGION_TABLE_LEN}"),
        ));
    }
    if raw_len > MAX_REGION_TABLE_LEN {
        return Err(malformed(
            108,
            format!("decompressed region table of {raw_len} bytes, at most {MAX_REGION_TABLE_LEN}"),
        ));
    }
    Ok(())
}

/// The region table: for the old image's regions then the new's, each region as varints (gap since the
/// previous region's end, length, offset from the file's base back to the region's start) and a filter id.
pub(crate) fn write_region_table(old: &RegionMap, new: &RegionMap, out: &mut Vec<u8>) {
    for map in [old, new] {
        let mut prev = 0u64;
        for r in map.regions() {
            put_varint(out, r.lo - prev);
            put_varint(out, r.hi - r.lo);
            put_varint(out, r.lo - r.base);
            out.push(r.filter.id());
            prev = r.hi;
        }
    }
}

/// Parses the region table the header declares (at delta offset [`HEADER_LEN`]): every region known,
/// filtered, non-empty, in order, disjoint and inside its image; every byte consumed.
pub(crate) fn parse_region_table(header: &DeltaHeader, table: &[u8]) -> Result<(RegionMap, RegionMap)> {
    let mut r = ByteReader::new(table);
    let mut maps = Vec::with_capacity(2);
    for (count, image_len, which) in [
        (header.old_regions, header.old_len, "old"),
        (header.new_regions, header.new_len, "new"),
    ] {
        let mut regions = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut prev = 0u64;
        for k in 0..count {
            let at = HEADER_LEN as u64 + (table.len() - r.remaining()) as u64;
            let bad = |detail: String| Error::Malformed {
                what: "region table",
                offset: at,
                detail: format!("{which} region {k}: {detail}"),
            };
            let fields = (r.varint(), r.varint(), r.varint(), r.array::<1>());
            let (Some(gap), Some(len), Some(back), Some([id])) = fields else {
                return Err(bad("truncated or overlong varint".into()));
            };
            let filter = Filter::from_id(id).ok_or_else(|| bad(format!("unknown filter id {id}")))?;
            let lo = prev.checked_add(gap);
            let hi = lo.and_then(|lo| lo.checked_add(len));
            let (Some(lo), Some(hi)) = (lo, hi) else {
                return Err(bad("offsets overflow".into()));
            };
            if filter == Filter::None || len == 0 || hi > image_len || back > lo {
                return Err(bad(format!(
                    "{filter} over {lo}..{hi} (base {back} before), image of {image_len} bytes"
                )));
            }
            regions.push(Region {
                lo,
                hi,
                base: lo - back,
                filter,
            });
            prev = hi;
        }
        maps.push(RegionMap::from_checked(regions));
    }
    if !r.is_empty() {
        return Err(Error::Malformed {
            what: "region table",
            offset: HEADER_LEN as u64,
            detail: format!("{} bytes after the last region", r.remaining()),
        });
    }
    let new = maps.pop().unwrap_or_default();
    let old = maps.pop().unwrap_or_default();
    Ok((old, new))
}

/// The header's dictionary logs, each within LZMA2's minimum and its stream's cap (checked before any
/// decoder allocates a dictionary).
fn check_window_logs(window_logs: [u8; 3], runs_window_log: u8) -> Result<()> {
    let [control_log, literal_log, extra_log] = window_logs;
    let declared = [
        ("control", control_log, SIDE_MAX_WINDOW_LOG),
        ("literal", literal_log, MAX_WINDOW_LOG),
        ("extra", extra_log, MAX_WINDOW_LOG),
        (
            "zero-run and literal-length",
            runs_window_log,
            SIDE_MAX_WINDOW_LOG,
        ),
    ];
    for (name, log, max) in declared {
        if log > max {
            return Err(Error::WindowTooLarge {
                stream: name,
                declared: log,
                max,
            });
        }
        if log < MIN_WINDOW_LOG {
            return Err(Error::Malformed {
                what: "header window log",
                offset: 92,
                detail: format!("{name} window log {log} is below LZMA2's minimum {MIN_WINDOW_LOG}"),
            });
        }
    }
    Ok(())
}

/// One segment's sizes, as written before its five compressed chunks: `raw` is the decoded length,
/// `xz` the compressed one. The literal stream's decoded length is implied by the run tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub control_raw: u32,
    pub control_xz: u32,
    pub extra_raw: u32,
    pub extra_xz: u32,
    pub zeros_raw: u32,
    pub zeros_xz: u32,
    pub lengths_raw: u32,
    pub lengths_xz: u32,
    /// Diff bytes the segment's add steps consume (zero runs plus literals).
    pub diff_raw: u64,
    pub literals_xz: u32,
}

impl SegmentHeader {
    pub(crate) fn to_bytes(self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        let mut w = SliceWriter {
            buf: &mut out,
            pos: 0,
        };
        w.put(&[TAG_SEGMENT]);
        for v in [
            self.control_raw,
            self.control_xz,
            self.extra_raw,
            self.extra_xz,
            self.zeros_raw,
            self.zeros_xz,
            self.lengths_raw,
            self.lengths_xz,
        ] {
            w.put(&v.to_le_bytes());
        }
        w.put(&self.diff_raw.to_le_bytes());
        w.put(&self.literals_xz.to_le_bytes());
        out
    }

    /// The compressed length of stream `which` (an index into [`STREAM_NAMES`]) in this segment.
    pub(crate) fn compressed_len(&self, which: usize) -> u32 {
        match which {
            CONTROL => self.control_xz,
            EXTRA => self.extra_xz,
            ZERO_RUNS => self.zeros_xz,
            LITERAL_LENGTHS => self.lengths_xz,
            _ => self.literals_xz,
        }
    }

    /// Parses the bytes after a segment tag and checks the buffered streams' caps.
    pub(crate) fn parse(body: &[u8; SEGMENT_HEADER_LEN - 1], offset: u64) -> Result<SegmentHeader> {
        let u32_at = |at: usize| u32::from_le_bytes(field(body, at));
        let seg = SegmentHeader {
            control_raw: u32_at(0),
            control_xz: u32_at(4),
            extra_raw: u32_at(8),
            extra_xz: u32_at(12),
            zeros_raw: u32_at(16),
            zeros_xz: u32_at(20),
            lengths_raw: u32_at(24),
            lengths_xz: u32_at(28),
            diff_raw: u64::from_le_bytes(field(body, 32)),
            literals_xz: u32_at(40),
        };
        let caps = [
            ("control", seg.control_raw, SEGMENT_CONTROL_MAX),
            ("extra", seg.extra_raw, SEGMENT_EXTRA_MAX),
            ("zero-run", seg.zeros_raw, SEGMENT_RUNS_MAX),
            ("literal-length", seg.lengths_raw, SEGMENT_RUNS_MAX),
        ];
        for (name, raw, cap) in caps {
            if raw > cap {
                return Err(Error::Malformed {
                    what: "segment header",
                    offset,
                    detail: format!("{name} stream of {raw} bytes exceeds the cap {cap}"),
                });
            }
        }
        Ok(seg)
    }
}

/// `N` bytes of a fixed-layout array at a constant offset (zeros if the layout constant were wrong).
fn field<const N: usize>(body: &[u8], at: usize) -> [u8; N] {
    body.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}

/// One bsdiff step: add `add_len` diff bytes to old at the cursor, copy `copy_len` extra bytes, then move
/// the old cursor by `seek`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ControlEntry {
    pub add_len: u64,
    pub copy_len: u64,
    pub seek: i64,
}

/// The carry state of a segment's diff, stepped once per diff byte in order by encoder and decoder alike.
/// A run of changed bytes (new != old) starts after an unchanged byte or at the segment start; its bytes
/// `0..CARRY_BYTES` are added with carry, later ones bytewise. Runs are defined by the bytes themselves,
/// not by the (zero run, literal run) pairs, so a raw-coded diff (every byte a literal) gets the carry too.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RunCarry {
    /// Index of the next byte in its run of changed bytes.
    index: u64,
    carry: u8,
    /// Whether the previous byte changed (so the next one continues its run).
    prev_changed: bool,
}

impl RunCarry {
    /// A byte of a zero run (copied from old, unchanged).
    pub(crate) fn unchanged(&mut self) {
        self.prev_changed = false;
    }

    /// The new byte for literal `lit` over `old` (decoder side).
    pub(crate) fn apply(&mut self, old: u8, lit: u8) -> u8 {
        self.start_if_new_run();
        let sum = u16::from(old) + u16::from(lit) + u16::from(self.carry);
        let [new, _] = sum.to_le_bytes();
        self.step(sum, new != old);
        new
    }

    /// The literal that turns `old` into `new` (encoder side; the inverse of [`RunCarry::apply`]).
    pub(crate) fn literal(&mut self, old: u8, new: u8) -> u8 {
        self.start_if_new_run();
        let lit = new.wrapping_sub(old).wrapping_sub(self.carry);
        let sum = u16::from(old) + u16::from(lit) + u16::from(self.carry);
        self.step(sum, new != old);
        lit
    }

    fn start_if_new_run(&mut self) {
        if !self.prev_changed {
            (self.index, self.carry) = (0, 0);
        }
    }

    fn step(&mut self, sum: u16, changed: bool) {
        self.prev_changed = changed;
        self.index = self.index.saturating_add(1);
        let [_, carry_out] = sum.to_le_bytes();
        self.carry = if self.index < CARRY_BYTES { carry_out } else { 0 };
    }
}

/// Writes a segment's control entries grouped by field: their count, then every `add_len`, every
/// `copy_len`, every zigzag `seek` (alike values side by side compress 5% smaller than entry by entry).
pub(crate) fn write_control(entries: impl Iterator<Item = ControlEntry> + Clone, out: &mut Vec<u8>) {
    put_varint(out, entries.clone().count() as u64);
    for e in entries.clone() {
        put_varint(out, e.add_len);
    }
    for e in entries.clone() {
        put_varint(out, e.copy_len);
    }
    for e in entries {
        put_varint(out, zigzag(e.seek));
    }
}

/// The entries [`write_control`] wrote, validated up front and then yielded in order.
pub(crate) struct ControlReader<'a> {
    adds: ByteReader<'a>,
    copies: ByteReader<'a>,
    seeks: ByteReader<'a>,
    left: u64,
}

impl<'a> ControlReader<'a> {
    /// None when the count or any field's varints are truncated or overlong, or bytes follow the seeks.
    pub(crate) fn new(buf: &'a [u8]) -> Option<Self> {
        let mut r = ByteReader::new(buf);
        let count = r.varint()?;
        // Each varint read consumes a byte or fails: at most buf.len() iterations whatever `count` says.
        let skip = |r: &mut ByteReader<'a>| -> Option<ByteReader<'a>> {
            let start = r.clone();
            for _ in 0..count {
                r.varint()?;
            }
            Some(start)
        };
        let adds = skip(&mut r)?;
        let copies = skip(&mut r)?;
        let seeks = skip(&mut r)?;
        r.is_empty().then_some(ControlReader {
            adds,
            copies,
            seeks,
            left: count,
        })
    }
}

impl Iterator for ControlReader<'_> {
    type Item = ControlEntry;

    fn next(&mut self) -> Option<ControlEntry> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(ControlEntry {
            add_len: self.adds.varint()?,
            copy_len: self.copies.varint()?,
            seek: unzigzag(self.seeks.varint()?),
        })
    }
}

/// Bytes [`put_varint`] writes for `v`.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

// Zigzag maps signed to unsigned bit for bit (`cast_signed`/`cast_unsigned` reinterpret, never clamp).
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)).cast_unsigned()
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1).cast_signed() ^ -(v & 1).cast_signed()
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(low_byte(v) | 0x80);
        v >>= 7;
    }
    out.push(low_byte(v));
}

/// The low 8 bits of `v`: a varint byte's 7 payload bits (the caller sets the continuation bit).
fn low_byte(v: u64) -> u8 {
    let [low, ..] = v.to_le_bytes();
    low
}

/// A bounds-checked cursor over untrusted bytes: every read returns `Option`.
#[derive(Clone)]
pub(crate) struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        ByteReader { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let bytes: [u8; N] = self.buf.get(self.pos..end)?.try_into().ok()?;
        self.pos = end;
        Some(bytes)
    }

    /// LEB128, at most 10 bytes, and the 10th may only carry the top bit.
    pub(crate) fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let byte = *self.buf.get(self.pos)?;
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return None;
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl SliceWriter<'_> {
    /// Only used on fixed-size arrays whose layout is a compile-time constant.
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_entries_and_zigzag_round_trip_extremes() {
        let entries: Vec<ControlEntry> = [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN, 1 << 40]
            .into_iter()
            .enumerate()
            .map(|(i, seek)| ControlEntry {
                add_len: u64::MAX - i as u64,
                copy_len: i as u64,
                seek,
            })
            .collect();
        let mut buf = Vec::new();
        write_control(entries.iter().copied(), &mut buf);
        let read: Vec<ControlEntry> = ControlReader::new(&buf).unwrap().collect();
        assert_eq!(read, entries);
        // A count larger than the entries present, and trailing bytes, are refused.
        let mut more = buf.clone();
        more[0] += 1;
        assert!(ControlReader::new(&more).is_none());
        buf.push(0);
        assert!(ControlReader::new(&buf).is_none());
        assert!(ControlReader::new(&[]).is_none());
        assert!(ControlReader::new(&[0xff; 11]).is_none());
    }

    #[test]
    fn varint_len_matches_what_is_written() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(varint_len(v), buf.len(), "{v}");
        }
    }

    #[test]
    fn overlong_varint_is_refused() {
        let mut r = ByteReader::new(&[0xff; 11]);
        assert_eq!(r.varint(), None);
        let mut r = ByteReader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(r.varint(), None);
    }

    /// The carry makes a rel32 that moved by the same distance code as the same literals whether or not
    /// its low byte wraps, and the decoder inverts the encoder on every byte pair for every run position.
    #[test]
    fn run_carry_round_trips_and_repeats_moved_displacements() {
        let literals = |old: &[u8], new: &[u8]| -> Vec<u8> {
            let mut carry = RunCarry::default();
            old.iter().zip(new).map(|(o, n)| carry.literal(*o, *n)).collect()
        };
        // 0x75e4 - 0x0890 and 0x7567 - 0x0890: bytewise diffs 70 f8 and 70 f7, one integer difference.
        assert_eq!(literals(&[0xe4, 0x75], &[0x54, 0x6d]), vec![0x70, 0xf7]);
        assert_eq!(literals(&[0x67, 0x75], &[0xd7, 0x6c]), vec![0x70, 0xf7]);
        let old: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(97).wrapping_add(13)).collect();
        let new: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(31).wrapping_add(250)).collect();
        for len in 1..old.len() {
            let lits = literals(&old[..len], &new[..len]);
            let mut carry = RunCarry::default();
            let back: Vec<u8> = old[..len]
                .iter()
                .zip(&lits)
                .map(|(o, l)| carry.apply(*o, *l))
                .collect();
            assert_eq!(back, new[..len], "run of {len}");
        }
    }
}
