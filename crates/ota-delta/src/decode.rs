//! The device side: reads the old image by offset, writes the new one strictly sequentially, in memory
//! bounded by the header's (capped) LZMA2 dictionaries plus one segment's control and extra bytes.

use std::io::{Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};
use xz2::stream::{Action, Status, Stream};

use crate::filter::{RegionMap, FILTER_BLOCK};
use crate::format::{
    parse_region_table, ByteReader, ControlReader, DeltaHeader, RunCarry, SegmentHeader, CONTROL, EXTRA,
    HEADER_LEN, LITERALS, LITERAL_LENGTHS, SEGMENT_HEADER_LEN, STREAM_NAMES, TAG_END, TAG_SEGMENT, ZERO_RUNS,
};
use crate::{Error, Result};

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplySummary {
    /// The delta's header.
    pub header: DeltaHeader,
    /// Bytes written to the new image (equals `header.new_len`).
    pub new_len: u64,
    /// sha256 of the bytes written (equals `header.new_sha256`).
    pub new_sha256: [u8; 32],
    /// Bytes of delta consumed.
    pub delta_len: u64,
    /// Number of segments decoded.
    pub segments: u64,
}

/// Reads and validates the delta's header (magic, version, ids, window caps) from the start of `delta`.
pub fn read_header<R: Read>(mut delta: R) -> Result<DeltaHeader> {
    let mut buf = [0u8; HEADER_LEN];
    read_full(&mut delta, &mut buf, 0, "the 112-byte delta header")?;
    DeltaHeader::parse(&buf)
}

/// Streams `old` through sha256 and compares its length and digest with the header's: the check the
/// device makes before trusting its running image as the base. Err([`Error::BaseMismatch`]) otherwise.
pub fn verify_base<R: Read>(header: &DeltaHeader, mut old: R) -> Result<()> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let got = match old.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Error::Io {
                    what: "reading the base image",
                    source,
                })
            }
        };
        hasher.update(buf.get(..got).unwrap_or(&[]));
        len += got as u64;
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if len != header.old_len || digest != header.old_sha256 {
        return Err(Error::BaseMismatch {
            expected: hex(&header.old_sha256),
            got: hex(&digest),
            expected_len: header.old_len,
            got_len: len,
        });
    }
    Ok(())
}

/// Applies `delta` to `old` (read by offset), writing the new image strictly sequentially to `new`.
/// Does not check old's digest (see [`verify_base`]); does check that the output has the header's length
/// and sha256, failing otherwise, in which case what was written to `new` is garbage. Never reads more
/// of the delta than its structures declare, never reads old outside `0..header.old_len`.
pub fn apply<O: Read + Seek, D: Read, W: Write>(old: O, delta: D, new: W) -> Result<ApplySummary> {
    let mut delta = CountingReader { inner: delta, pos: 0 };
    let mut head = [0u8; HEADER_LEN];
    read_full(&mut delta, &mut head, 0, "the 112-byte delta header")?;
    let header = DeltaHeader::parse(&head)?;
    let (old_regions, new_regions) = read_region_table(&header, &mut delta)?;
    let mut decoder = SegmentDecoder::new(&header, old, old_regions)?;
    let mut out = NewImage::new(new, header.new_len, new_regions);
    let mut segments = 0u64;
    while let Some((seg_offset, seg)) = next_segment(&mut delta)? {
        segments += 1;
        decoder.segment(&seg, seg_offset, &mut delta, &mut out)?;
    }
    let end = delta.pos;
    let mut probe = [0u8; 1];
    if read_some(&mut delta, &mut probe, end)? != 0 {
        return Err(Error::Malformed {
            what: "delta end",
            offset: end,
            detail: "trailing bytes after the end tag".into(),
        });
    }
    let (new_len, new_sha256) = out.finish()?;
    check_digest(&header, &new_sha256)?;
    Ok(ApplySummary {
        header,
        new_len,
        new_sha256,
        delta_len: end,
        segments,
    })
}

/// Reads and checks the region table that follows the header (its length capped by the header's checks).
fn read_region_table<D: Read>(header: &DeltaHeader, delta: &mut D) -> Result<(RegionMap, RegionMap)> {
    let len = usize::try_from(header.region_table_len).unwrap_or(usize::MAX);
    let mut table = vec![0u8; len];
    read_full(delta, &mut table, HEADER_LEN as u64, "the region table")?;
    if header.region_table_raw_len == 0 {
        return parse_region_table(header, &table);
    }
    parse_region_table(header, &decompress_region_table(header, &table)?)
}

/// The region table from its xz stream: exactly the header's decompressed length (capped by the header's
/// checks), the stream ending with the stored bytes; the dictionary bounded by liblzma's memory limit.
fn decompress_region_table(header: &DeltaHeader, stored: &[u8]) -> Result<Vec<u8>> {
    let raw_len = usize::try_from(header.region_table_raw_len).unwrap_or(usize::MAX);
    let bad = |detail: String| Error::Malformed {
        what: "region table",
        offset: HEADER_LEN as u64,
        detail,
    };
    let mut xz =
        Stream::new_stream_decoder(REGION_TABLE_MEMLIMIT, 0).map_err(|e| bad(format!("xz decoder: {e}")))?;
    // One byte more than declared: a stream that decodes to more is refused, not cut.
    let mut table = Vec::with_capacity(raw_len + 1);
    let status = xz
        .process_vec(stored, &mut table, Action::Finish)
        .map_err(|e| bad(format!("not a valid xz stream: {e}")))?;
    if status != Status::StreamEnd || xz.total_in() != stored.len() as u64 || table.len() != raw_len {
        return Err(bad(format!(
            "xz stream of {} bytes does not decode to exactly {raw_len} bytes",
            stored.len()
        )));
    }
    Ok(table)
}

/// liblzma's memory limit for the region table's stream (its dictionary is at most 64 KiB).
const REGION_TABLE_MEMLIMIT: u64 = 2 << 20;

/// Reads the next segment tag and, unless it is the end tag, the segment's header and its offset.
fn next_segment<D: Read>(delta: &mut CountingReader<D>) -> Result<Option<(u64, SegmentHeader)>> {
    let seg_offset = delta.pos;
    let mut tag = [0u8; 1];
    read_full(delta, &mut tag, seg_offset, "a segment or end tag")?;
    match tag[0] {
        TAG_END => return Ok(None),
        TAG_SEGMENT => {}
        other => {
            return Err(Error::Malformed {
                what: "segment tag",
                offset: seg_offset,
                detail: format!("expected {TAG_SEGMENT} (segment) or {TAG_END} (end), got {other}"),
            })
        }
    }
    let mut body = [0u8; SEGMENT_HEADER_LEN - 1];
    read_full(delta, &mut body, seg_offset, "a segment header")?;
    Ok(Some((seg_offset, SegmentHeader::parse(&body, seg_offset)?)))
}

/// What carries over from segment to segment: the five xz streams (their dictionaries span the delta), the
/// buffers of the four streams a segment holds whole, and the cursor in old.
struct SegmentDecoder<O> {
    /// Control, extra, zero runs, literal lengths: each segment's share decoded whole into `buffers`.
    buffered: [StreamDecoder; 4],
    buffers: [Vec<u8>; 4],
    /// The literal stream, read as the add steps need it.
    literals: StreamDecoder,
    old: OldCursor<O>,
}

impl<O: Read + Seek> SegmentDecoder<O> {
    fn new(header: &DeltaHeader, old: O, old_regions: RegionMap) -> Result<Self> {
        let [control_log, literal_log, extra_log] = header.window_logs;
        Ok(SegmentDecoder {
            buffered: [
                StreamDecoder::new(CONTROL, control_log)?,
                StreamDecoder::new(EXTRA, extra_log)?,
                StreamDecoder::new(ZERO_RUNS, header.runs_window_log)?,
                StreamDecoder::new(LITERAL_LENGTHS, header.runs_window_log)?,
            ],
            buffers: Default::default(),
            literals: StreamDecoder::new(LITERALS, literal_log)?,
            old: OldCursor {
                image: OldImage::new(old, header.old_len, old_regions),
                pos: 0,
                old_buf: vec![0u8; 32 * 1024],
                diff_buf: vec![0u8; 32 * 1024],
            },
        })
    }

    /// Decodes one segment (its header already read): buffers its four streams, then runs its control
    /// entries, each an add, a copy and a seek, and checks that they used every byte the segment declares.
    fn segment<D: Read, W: Write>(
        &mut self,
        seg: &SegmentHeader,
        seg_offset: u64,
        delta: &mut CountingReader<D>,
        out: &mut NewImage<W>,
    ) -> Result<()> {
        self.read_buffers(seg, seg_offset, delta)?;
        let SegmentDecoder {
            buffers: [control, extra, zeros, lengths],
            literals,
            old,
            ..
        } = self;
        literals.begin(u64::from(seg.literals_xz));
        let mut diff = DiffRuns::new(zeros, lengths, seg.diff_raw);
        let entries = ControlReader::new(control).ok_or_else(|| Error::Malformed {
            what: "control stream",
            offset: seg_offset,
            detail: "entry count or field varints truncated or overlong, or bytes after the last seek".into(),
        })?;
        let (mut diff_left, mut extra_at) = (seg.diff_raw, 0usize);
        let mut add = AddStep {
            diff: &mut diff,
            literals: &mut *literals,
            delta: &mut *delta,
            seg_offset,
        };
        for entry in entries {
            if entry.add_len > diff_left {
                return Err(Error::Malformed {
                    what: "control entry",
                    offset: seg_offset,
                    detail: format!(
                        "adds {} bytes but the segment has {diff_left} diff bytes left",
                        entry.add_len
                    ),
                });
            }
            diff_left -= entry.add_len;
            old.add(entry.add_len, &mut add, out)?;
            extra_at = copy_extra(extra, extra_at, entry.copy_len, seg_offset, out)?;
            old.seek(entry.seek, seg_offset)?;
        }
        if diff_left != 0 || extra_at != extra.len() {
            return Err(Error::Malformed {
                what: "segment",
                offset: seg_offset,
                detail: format!(
                    "control entries leave {diff_left} diff and {} extra bytes unused",
                    extra.len() - extra_at
                ),
            });
        }
        diff.finish(seg_offset)?;
        literals.end(delta, seg_offset)
    }

    /// Decodes the segment's share of the control, extra, zero-run and literal-length streams whole (their
    /// raw sizes are capped by [`SegmentHeader::parse`]).
    fn read_buffers<D: Read>(&mut self, seg: &SegmentHeader, seg_offset: u64, delta: &mut D) -> Result<()> {
        let raw = [seg.control_raw, seg.extra_raw, seg.zeros_raw, seg.lengths_raw];
        let streams = self.buffered.iter_mut().zip(&mut self.buffers).zip(raw);
        for (which, ((dec, buf), raw)) in streams.enumerate() {
            buf.resize(raw as usize, 0);
            dec.begin(u64::from(seg.compressed_len(which)));
            dec.read_exact(delta, buf, seg_offset)?;
            dec.end(delta, seg_offset)?;
        }
        Ok(())
    }
}

/// Where an add step's diff bytes come from: the segment's runs and the literal stream in the delta.
struct AddStep<'s, 'a, D> {
    diff: &'s mut DiffRuns<'a>,
    literals: &'s mut StreamDecoder,
    delta: &'s mut D,
    seg_offset: u64,
}

/// The cursor in old: it may leave the image between steps (a seek), but every read is checked.
struct OldCursor<O> {
    image: OldImage<O>,
    pos: i64,
    old_buf: Vec<u8>,
    diff_buf: Vec<u8>,
}

impl<O: Read + Seek> OldCursor<O> {
    /// The add step: `len` bytes of old from the cursor plus as many diff bytes, to `out`.
    fn add<D: Read, W: Write>(
        &mut self,
        len: u64,
        from: &mut AddStep<'_, '_, D>,
        out: &mut NewImage<W>,
    ) -> Result<()> {
        out.reserve(len)?;
        let old_len = self.image.len;
        let add_end = i64::try_from(len).ok().and_then(|a| self.pos.checked_add(a));
        // Both ends as unsigned offsets: a negative start or an end past old is refused here.
        let span = add_end.and_then(|end| {
            let start = u64::try_from(self.pos).ok()?;
            (u64::try_from(end).ok()? <= old_len).then_some((start, end))
        });
        let Some((mut at, end)) = span else {
            return Err(Error::OldOutOfBounds {
                offset: self.pos,
                end: add_end.unwrap_or(i64::MAX),
                old_len,
            });
        };
        let mut left = len;
        while left > 0 {
            let k = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.old_buf.len());
            let (ob, db) = (
                self.old_buf.get_mut(..k).unwrap_or(&mut []),
                self.diff_buf.get_mut(..k).unwrap_or(&mut []),
            );
            self.image.read_at(at, ob)?;
            from.diff
                .add_to(ob, db, from.literals, from.delta, from.seg_offset)?;
            out.push(db)?;
            at += k as u64;
            left -= k as u64;
        }
        self.pos = end;
        Ok(())
    }

    /// The seek step: moves the cursor by `by`, anywhere an i64 reaches.
    fn seek(&mut self, by: i64, seg_offset: u64) -> Result<()> {
        self.pos = self.pos.checked_add(by).ok_or_else(|| Error::Malformed {
            what: "control entry",
            offset: seg_offset,
            detail: format!("seek {by} overflows the old cursor {}", self.pos),
        })?;
        Ok(())
    }
}

/// The copy step: `len` literal bytes of the segment's extra stream from `extra_at` to `out`; returns the
/// new position in `extra`.
fn copy_extra<W: Write>(
    extra: &[u8],
    extra_at: usize,
    len: u64,
    seg_offset: u64,
    out: &mut NewImage<W>,
) -> Result<usize> {
    let copy_end = usize::try_from(len).ok().and_then(|c| extra_at.checked_add(c));
    let literal = copy_end
        .and_then(|end| extra.get(extra_at..end))
        .ok_or_else(|| Error::Malformed {
            what: "control entry",
            offset: seg_offset,
            detail: format!(
                "copies {len} extra bytes but the segment has {} left",
                extra.len() - extra_at
            ),
        })?;
    out.reserve(len)?;
    out.push(literal)?;
    Ok(extra_at + literal.len())
}

/// One segment's diff bytes, rebuilt from its (zero run, literal run) pairs and the literal stream.
struct DiffRuns<'a> {
    zeros: ByteReader<'a>,
    lengths: ByteReader<'a>,
    zeros_left: u64,
    literals_left: u64,
    /// Diff bytes of the segment that no pair read so far covers.
    uncovered: u64,
    /// Carry state of the current literal run (see [`crate::CARRY_BYTES`]).
    carry: RunCarry,
}

impl<'a> DiffRuns<'a> {
    /// The runs of a segment of `diff_raw` diff bytes, from its zero-run and literal-length streams.
    fn new(zeros: &'a [u8], lengths: &'a [u8], diff_raw: u64) -> Self {
        DiffRuns {
            zeros: ByteReader::new(zeros),
            lengths: ByteReader::new(lengths),
            zeros_left: 0,
            literals_left: 0,
            uncovered: diff_raw,
            carry: RunCarry::default(),
        }
    }

    /// Writes to `out` the next `out.len()` bytes of the new image: `old` (as long as `out`) plus the
    /// segment's next diff bytes.
    fn add_to<D: Read>(
        &mut self,
        old: &[u8],
        out: &mut [u8],
        literals: &mut StreamDecoder,
        delta: &mut D,
        seg_offset: u64,
    ) -> Result<()> {
        let mut at = 0usize;
        while at < out.len() {
            let want = out.len() - at;
            if self.zeros_left > 0 {
                let k = usize::try_from(self.zeros_left).unwrap_or(usize::MAX).min(want);
                let (dst, src) = (out.get_mut(at..at + k), old.get(at..at + k));
                if let (Some(dst), Some(src)) = (dst, src) {
                    dst.copy_from_slice(src);
                }
                self.carry.unchanged();
                self.zeros_left -= k as u64;
                at += k;
            } else if self.literals_left > 0 {
                let k = usize::try_from(self.literals_left)
                    .unwrap_or(usize::MAX)
                    .min(want);
                let dst = out.get_mut(at..at + k).unwrap_or(&mut []);
                literals.read_exact(delta, dst, seg_offset)?;
                for (d, o) in dst.iter_mut().zip(old.get(at..at + k).unwrap_or(&[])) {
                    *d = self.carry.apply(*o, *d);
                }
                self.literals_left -= k as u64;
                at += k;
            } else {
                self.next_pair(seg_offset)?;
            }
        }
        Ok(())
    }

    /// Reads the next (zero run, literal run) pair, which must lie within the segment's diff bytes.
    fn next_pair(&mut self, seg_offset: u64) -> Result<()> {
        let bad = |detail: String| Error::Malformed {
            what: "diff run lengths",
            offset: seg_offset,
            detail,
        };
        let zeros = self
            .zeros
            .varint()
            .ok_or_else(|| bad("zero-run stream ended or holds an overlong varint".into()))?;
        let literals = self
            .lengths
            .varint()
            .ok_or_else(|| bad("literal-length stream ended or holds an overlong varint".into()))?;
        let covered = zeros.checked_add(literals).filter(|&c| c <= self.uncovered);
        let Some(covered) = covered else {
            return Err(bad(format!(
                "a run of {zeros} zeros and {literals} literals exceeds the segment's {} diff bytes left",
                self.uncovered
            )));
        };
        self.uncovered -= covered;
        (self.zeros_left, self.literals_left) = (zeros, literals);
        Ok(())
    }

    /// Every pair must have been used up by the segment's add steps.
    fn finish(&self, seg_offset: u64) -> Result<()> {
        let unused = (self.zeros.remaining(), self.lengths.remaining());
        if unused != (0, 0) || self.zeros_left != 0 || self.literals_left != 0 || self.uncovered != 0 {
            return Err(Error::Malformed {
                what: "diff run lengths",
                offset: seg_offset,
                detail: format!(
                    "{} zero-run and {} literal-length bytes, {} zeros and {} literals left unused",
                    unused.0, unused.1, self.zeros_left, self.literals_left
                ),
            });
        }
        Ok(())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct CountingReader<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let got = self.inner.read(buf)?;
        self.pos += got as u64;
        Ok(got)
    }
}

fn read_some<R: Read>(r: &mut R, buf: &mut [u8], offset: u64) -> Result<usize> {
    loop {
        match r.read(buf) {
            Ok(got) => return Ok(got),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                let _ = offset;
                return Err(Error::Io {
                    what: "reading the delta",
                    source,
                });
            }
        }
    }
}

/// Fills `buf` or reports where the delta ended.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8], offset: u64, what: &'static str) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let got = read_some(r, buf.get_mut(filled..).unwrap_or(&mut []), offset)?;
        if got == 0 {
            return Err(Error::Truncated {
                what,
                offset: offset + filled as u64,
            });
        }
        filled += got;
    }
    Ok(())
}

/// One of the three xz streams, fed exactly the compressed bytes each segment assigns to it.
struct StreamDecoder {
    name: &'static str,
    xz: Stream,
    input: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    /// Compressed bytes of the current segment not yet read from the delta.
    remaining: u64,
}

impl StreamDecoder {
    fn new(which: usize, window_log: u8) -> Result<Self> {
        let name = STREAM_NAMES.get(which).copied().unwrap_or("stream");
        // liblzma refuses a stream whose dictionary exceeds the header's declared size (plus its own small
        // state): the memory bound holds for any input.
        let memlimit = (1u64 << window_log) + (1 << 20);
        let xz = Stream::new_stream_decoder(memlimit, 0).map_err(|e| Error::Decompress {
            stream: name,
            offset: 0,
            source: std::io::Error::other(e),
        })?;
        Ok(StreamDecoder {
            name,
            xz,
            input: vec![0u8; 16 * 1024],
            in_pos: 0,
            in_len: 0,
            remaining: 0,
        })
    }

    fn begin(&mut self, compressed_len: u64) {
        self.remaining = compressed_len;
    }

    fn refill<D: Read>(&mut self, delta: &mut D, seg_offset: u64) -> Result<bool> {
        if self.in_pos < self.in_len {
            return Ok(true);
        }
        if self.remaining == 0 {
            return Ok(false);
        }
        let k = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(self.input.len());
        let buf = self.input.get_mut(..k).unwrap_or(&mut []);
        read_full(
            delta,
            buf,
            seg_offset,
            "compressed stream bytes declared by the segment header",
        )?;
        self.remaining -= k as u64;
        self.in_pos = 0;
        self.in_len = k;
        Ok(true)
    }

    fn step(&mut self, out: &mut [u8], seg_offset: u64) -> Result<(usize, usize)> {
        let input = self.input.get(self.in_pos..self.in_len).unwrap_or(&[]);
        let (before_in, before_out) = (self.xz.total_in(), self.xz.total_out());
        self.xz
            .process(input, out, Action::Run)
            .map_err(|e| Error::Decompress {
                stream: self.name,
                offset: seg_offset,
                source: std::io::Error::other(e),
            })?;
        let read = usize::try_from(self.xz.total_in() - before_in).unwrap_or(0);
        let written = usize::try_from(self.xz.total_out() - before_out).unwrap_or(0);
        self.in_pos += read;
        Ok((read, written))
    }

    /// Decodes exactly `out.len()` bytes from this segment's share of the stream.
    fn read_exact<D: Read>(&mut self, delta: &mut D, out: &mut [u8], seg_offset: u64) -> Result<()> {
        let mut filled = 0;
        while filled < out.len() {
            self.refill(delta, seg_offset)?;
            let (read, written) = self.step(out.get_mut(filled..).unwrap_or(&mut []), seg_offset)?;
            filled += written;
            // No progress: either out of input, or the xz stream ended (or stalled) early. Both are errors;
            // looping on would hang on a crafted delta.
            if read == 0 && written == 0 {
                return Err(Error::Malformed {
                    what: "compressed stream",
                    offset: seg_offset,
                    detail: format!(
                        "the {} stream ended after {filled} of the {} bytes the segment declares",
                        self.name,
                        out.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Consumes the rest of this segment's compressed bytes, which must decode to nothing more.
    fn end<D: Read>(&mut self, delta: &mut D, seg_offset: u64) -> Result<()> {
        let mut probe = [0u8; 1];
        loop {
            if !self.refill(delta, seg_offset)? {
                return Ok(());
            }
            let (read, written) = self.step(&mut probe, seg_offset)?;
            if written != 0 {
                return Err(Error::Malformed {
                    what: "compressed stream",
                    offset: seg_offset,
                    detail: format!(
                        "the {} stream holds more bytes than the segment declares",
                        self.name
                    ),
                });
            }
            if read == 0 {
                return Err(Error::Malformed {
                    what: "compressed stream",
                    offset: seg_offset,
                    detail: format!("the {} stream has bytes the decoder does not consume", self.name),
                });
            }
        }
    }
}

/// The old image seen through the delta's filter, a few aligned blocks cached.
struct OldImage<O> {
    reader: O,
    len: u64,
    regions: RegionMap,
    /// (block index, filtered bytes); most recently used first.
    cache: Vec<(u64, Vec<u8>)>,
}

/// Blocks of the old image kept (filtered): 16 (1 MiB) cut lightningcss's apply from 0.40 to 0.32 s against
/// 4, its x86-rip blocks being filtered again less often, for 0.8 MiB more; 64 gave 0.21 s at 8.3 MiB.
/// With format 7 (filters per region), 32 (2 MiB): lightningcss 0.16 s at 6.4 MiB against 0.18-0.19 s at
/// 5.3 MiB with 16 (its ~550 block misses had filtered old four times over); 48 was no faster.
const OLD_CACHE_BLOCKS: usize = 32;

impl<O: Read + Seek> OldImage<O> {
    fn new(reader: O, len: u64, regions: RegionMap) -> Self {
        OldImage {
            reader,
            len,
            regions,
            cache: Vec::with_capacity(OLD_CACHE_BLOCKS),
        }
    }

    /// Fills `out` from filtered old at `pos` (the caller checked `pos + out.len() <= len`).
    fn read_at(&mut self, mut pos: u64, out: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        while filled < out.len() {
            let (block, at) = block_and_offset(pos);
            let data = self.block(block)?;
            let avail = data.get(at..).unwrap_or(&[]);
            let want = out.len() - filled;
            let k = avail.len().min(want);
            if k == 0 {
                return Err(Error::OldTooShort {
                    expected: self.len,
                    got: pos,
                });
            }
            if let (Some(dst), Some(src)) = (out.get_mut(filled..filled + k), avail.get(..k)) {
                dst.copy_from_slice(src);
            }
            filled += k;
            pos += k as u64;
        }
        Ok(())
    }

    fn block(&mut self, index: u64) -> Result<&[u8]> {
        if let Some(hit) = self.cache.iter().position(|(i, _)| *i == index) {
            if hit != 0 {
                let entry = self.cache.remove(hit);
                self.cache.insert(0, entry);
            }
        } else {
            let start = index * FILTER_BLOCK as u64;
            let len = block_len(self.len.saturating_sub(start));
            let mut buf = if self.cache.len() >= OLD_CACHE_BLOCKS {
                self.cache.pop().map(|(_, b)| b).unwrap_or_default()
            } else {
                Vec::with_capacity(FILTER_BLOCK)
            };
            buf.resize(len, 0);
            self.reader
                .seek(SeekFrom::Start(start))
                .map_err(|source| Error::Io {
                    what: "seeking in the old image",
                    source,
                })?;
            let mut filled = 0;
            while filled < len {
                match self.reader.read(buf.get_mut(filled..).unwrap_or(&mut [])) {
                    Ok(0) => {
                        return Err(Error::OldTooShort {
                            expected: self.len,
                            got: start + filled as u64,
                        })
                    }
                    Ok(got) => filled += got,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(Error::Io {
                            what: "reading the old image",
                            source,
                        })
                    }
                }
            }
            self.regions.encode_in_place(&mut buf, start);
            self.cache.insert(0, (index, buf));
        }
        Ok(self.cache.first().map(|(_, b)| b.as_slice()).unwrap_or(&[]))
    }
}

/// The filter block holding old offset `pos`, and `pos`'s offset in it.
fn block_and_offset(pos: u64) -> (u64, usize) {
    let block = FILTER_BLOCK as u64;
    // The remainder is below FILTER_BLOCK, itself a usize: the conversion cannot fail.
    (pos / block, usize::try_from(pos % block).unwrap_or(0))
}

/// Bytes of a block that starts `left` bytes before the end of old: `left`, capped at FILTER_BLOCK.
fn block_len(left: u64) -> usize {
    usize::try_from(left).map_or(FILTER_BLOCK, |left| left.min(FILTER_BLOCK))
}

/// The new image: one filter block buffered, unfiltered, hashed and written in order.
struct NewImage<W> {
    writer: W,
    expected_len: u64,
    regions: RegionMap,
    block: Vec<u8>,
    block_start: u64,
    hasher: Sha256,
}

impl<W: Write> NewImage<W> {
    fn new(writer: W, expected_len: u64, regions: RegionMap) -> Self {
        NewImage {
            writer,
            expected_len,
            regions,
            block: Vec::with_capacity(FILTER_BLOCK),
            block_start: 0,
            hasher: Sha256::new(),
        }
    }

    fn produced(&self) -> u64 {
        self.block_start + self.block.len() as u64
    }

    /// Refuses, before doing the work, output beyond the declared length.
    fn reserve(&self, len: u64) -> Result<()> {
        match self.produced().checked_add(len) {
            Some(total) if total <= self.expected_len => Ok(()),
            total => Err(Error::NewLengthMismatch {
                expected: self.expected_len,
                got: total.unwrap_or(u64::MAX),
            }),
        }
    }

    fn push(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = FILTER_BLOCK - self.block.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.block.extend_from_slice(now);
            data = rest;
            if self.block.len() == FILTER_BLOCK {
                self.flush_block()?;
            }
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        self.regions.decode_in_place(&mut self.block, self.block_start);
        self.hasher.update(&self.block);
        self.writer.write_all(&self.block).map_err(|source| Error::Io {
            what: "writing the new image",
            source,
        })?;
        self.block_start += self.block.len() as u64;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(u64, [u8; 32])> {
        if !self.block.is_empty() {
            self.flush_block()?;
        }
        self.writer.flush().map_err(|source| Error::Io {
            what: "flushing the new image",
            source,
        })?;
        let len = self.block_start;
        if len != self.expected_len {
            return Err(Error::NewLengthMismatch {
                expected: self.expected_len,
                got: len,
            });
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        Ok((len, digest))
    }
}

/// Checks the produced digest against the header (kept apart so `apply` reads top-down).
fn check_digest(header: &DeltaHeader, got: &[u8; 32]) -> Result<()> {
    if *got != header.new_sha256 {
        return Err(Error::NewDigestMismatch {
            expected: hex(&header.new_sha256),
            got: hex(got),
        });
    }
    Ok(())
}
