//! Writing a delta from matching steps: the diff cut into (zero run, literal run) pairs (see
//! [`DiffCoding`]), the steps cut into segments under the decoder's caps, and each of the five streams
//! compressed with xz (LZMA2) across segments.

use xz2::stream::{Action, Check, Filters, LzmaOptions, MatchFinder, Mode, MtStreamBuilder, Status, Stream};

use crate::filter::{elf_exec_span, Filtering, RegionMap};
use crate::format::{
    put_varint, varint_len, write_control, write_region_table, ControlEntry, DeltaHeader, RunCarry,
    SegmentHeader, CONTROL, EXTRA, FORMAT_VERSION, LITERALS, LITERAL_LENGTHS, MAX_WINDOW_LOG, MIN_WINDOW_LOG,
    SEGMENT_CONTROL_MAX, SEGMENT_EXTRA_MAX, SEGMENT_RUNS_MAX, SIDE_MAX_WINDOW_LOG, STREAM_NAMES, TAG_END,
    ZERO_RUNS,
};
use crate::matching::{signed, Step};
use crate::{EncodeOptions, Error, Result};

/// A step cut to the segment caps, with its relative seek.
#[derive(Debug, Clone, Copy)]
struct Piece {
    entry: ControlEntry,
    new_start: usize,
    old_start: usize,
}

/// How the encoder splits the diff into (zero run, literal run) pairs. The decoder reads every way alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiffCoding<'a> {
    /// Offset in new where its data starts: the end of its executable segments. Before it (code), zero
    /// runs are cut wherever they start; `usize::MAX` for an image that is no ELF file.
    pub data_from: usize,
    /// How zeros are coded in the data.
    pub data: DataZeros,
    /// How zeros are coded in the code (before `data_from`).
    pub code: CodeZeros,
    /// Spans of new (sorted, disjoint) whose zeros are all literals whatever `data` and `code` say: the
    /// ARM code regions of a filesystem image (see [`raw_spans`]).
    pub raw: &'a [(usize, usize)],
}

/// How a [`DiffCoding`] codes zero diff bytes in the code (before its `data_from`; all of an image that is
/// no ELF file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum CodeZeros {
    /// Every zero ends a literal run: the diff is coded as its (zero run, literal run) pairs. Smaller where
    /// changes are few and far apart (x86-64 systemd: 35,378 bytes against 38,566; numpy 155,926 against
    /// 164,162).
    #[default]
    Runs,
    /// Every diff byte after an add's first change is a literal, zeros too: LZMA2 gets the code's raw
    /// diff, as bsdiff does. Where changed references are dense (AArch64 and ARM code, whose ADRP/ADD and
    /// BL words change all over a library when anything moves), the positions of the changes cost more as
    /// run lengths than as zeros between literals: systemd-arm64 46,714 bytes against 68,463, esbuild-arm64
    /// 170,080 against 198,789.
    Literals,
}

/// How a [`DiffCoding`] codes zero diff bytes in the data (after the executable segments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum DataZeros {
    /// Gaps of at most [`RUN_GAP`] zeros stay inside literal runs; longer ones are zero runs.
    /// Relocations, .rodata, .eh_frame and pointers give fewer, more regular pairs (lightningcss 8,100
    /// bytes smaller); in code the gaps cost bytes (1,600 on lightningcss, 1,800 on numpy).
    #[default]
    Gaps,
    /// Every diff byte of the data is a literal, zeros too: LZMA2 gets the data's raw diff (as bsdiff
    /// does), whose tables repeat multi-byte patterns at fixed strides. On the corpus this wins only on
    /// the Go executable (esbuild: 217,287 bytes against 226,620; its .rodata and .gopclntab), and loses
    /// 2-4% on the C and Rust ones; windows of the data, coded both ways, choose. The literal stream is
    /// then mostly zeros and is compressed in LZMA2's fast mode: 9 extreme took 7 s on esbuild for 10%
    /// less.
    Literals,
}

impl DiffCoding<'_> {
    /// The coding of diffs against `new` (the new image as matched), with `data` in its data.
    pub(crate) fn for_image(new: &[u8], data: DataZeros) -> DiffCoding<'static> {
        let data_from = elf_exec_span(new)
            .and_then(|(_, hi)| usize::try_from(hi).ok())
            .unwrap_or(usize::MAX);
        DiffCoding {
            data_from,
            data,
            code: CodeZeros::Runs,
            raw: &[],
        }
    }

    /// Whether the literal stream holds raw diff bytes, mostly zeros (see [`DataZeros::Literals`]).
    fn raw_literals(self) -> bool {
        self.data == DataZeros::Literals || self.code == CodeZeros::Literals || !self.raw.is_empty()
    }

    /// Whether the literal stream holds a raw diff of code (see [`CodeZeros::Literals`]): compressed in
    /// LZMA2's normal mode, the slowest stream by far.
    fn raw_code(self) -> bool {
        self.code == CodeZeros::Literals || !self.raw.is_empty()
    }

    /// Whether new offset `pos` is in one of the `raw` spans.
    fn in_raw_span(self, pos: usize) -> bool {
        let k = self.raw.partition_point(|&(_, hi)| hi <= pos);
        self.raw.get(k).is_some_and(|&(lo, _)| lo <= pos)
    }
}

/// The spans of `new` coded raw whatever the sampled codings: its ARM code regions (AArch64, 32-bit ARM,
/// Thumb-2), whose diffs were smaller raw on every ARM pair of the corpus (see [`CodeZeros::Literals`]);
/// inside a filesystem image the windows that sample the code's coding mostly see file data, so the
/// regions decide (rootfs-arm64: 356,009 bytes with the whole image raw, 425,745 with none of it).
pub(crate) fn raw_spans(new: &RegionMap) -> Vec<(usize, usize)> {
    new.regions()
        .iter()
        .filter(|r| r.filter.is_arm())
        .filter_map(|r| Some((usize::try_from(r.lo).ok()?, usize::try_from(r.hi).ok()?)))
        .collect()
}

/// Largest dictionary (log2 bytes) for a literal stream with [`DataZeros::Literals`]. Its matches are
/// short-range repeats of diff patterns: when all of the diff went raw, 512 KiB coded it as small as 4
/// MiB did (systemd 59,342 bytes against 59,382; esbuild 202,246 against 201,938) with a match finder
/// of ~9 MiB instead of ~37-50 MiB, and the decoder's dictionary shrinks with it. 256 KiB codes the
/// ARM pairs' raw code diffs within 0.2 % of 512 KiB (systemd-arm64 45,586 bytes against 45,487) with
/// 4 MiB of encoder instead of 7: two of them, compressing in blocks (see [`StreamEncoder`]), fit the
/// small pairs' memory budget (systemd-arm64 23.7 MiB of 26.1, against 28.6-29.1 with 512 KiB).
const RAW_LITERAL_WINDOW_LOG: u8 = 18;

/// Splits a diff into (zero run, literal run) pairs: the format codes the diff, mostly zeros, as the two
/// run lengths and the literal bytes, each in its own stream. In the new image's data (see
/// [`DiffCoding`]), a gap of zero bytes between nonzero ones may stay inside the literal run (as zero
/// literals). Zeros after a literal run are pending until a nonzero byte absorbs them, a zero beyond the
/// gap ends the run, or the add ends ([`Self::end_of_add`]), so a piece never leaves zeros of its own
/// undecided.
#[derive(Debug)]
struct RunTokenizer<'a> {
    coding: DiffCoding<'a>,
    zeros: u64,
    literals: u64,
    /// Zero bytes after the literal run, not yet decided.
    pending: u64,
}

/// Longest gap of zero diff bytes kept inside a literal run by [`DataZeros::Gaps`].
const RUN_GAP: u64 = 4;

impl<'a> RunTokenizer<'a> {
    /// A tokenizer that splits as `coding` says, at the start of a diff.
    fn new(coding: DiffCoding<'a>) -> Self {
        RunTokenizer {
            coding,
            zeros: 0,
            literals: 0,
            pending: 0,
        }
    }

    /// A tokenizer like this one, at the start of a segment.
    fn fresh(&self) -> Self {
        RunTokenizer::new(self.coding)
    }

    /// Longest run of zeros at new offset `pos` that stays inside a literal run.
    fn gap(&self, pos: usize) -> u64 {
        if self.coding.in_raw_span(pos) {
            return u64::MAX;
        }
        match (self.coding.code, self.coding.data) {
            (CodeZeros::Runs, _) if pos < self.coding.data_from => 0,
            (CodeZeros::Literals, _) if pos < self.coding.data_from => u64::MAX,
            (_, DataZeros::Gaps) => RUN_GAP,
            (_, DataZeros::Literals) => u64::MAX,
        }
    }

    /// While no literal run is open, takes the unchanged bytes of `new` against `old` from `at` on, 8 at
    /// a time, straight into the zero run: most of an add is where old and new agree, and byte by byte
    /// it took 0.6-0.8 s per stream on rootfs. Returns how many it took (a multiple of 8). No zero is
    /// pending then, and the byte before was unchanged (or none), so the caller has nothing to step.
    fn take_unchanged(&mut self, new: &[u8], old: &[u8], at: usize) -> usize {
        if self.literals != 0 {
            return 0;
        }
        let mut taken = 0;
        while let (Some(a), Some(b)) = (
            new.get(at + taken..at + taken + 8),
            old.get(at + taken..at + taken + 8),
        ) {
            if a != b {
                break;
            }
            taken += 8;
        }
        self.zeros += taken as u64;
        taken
    }

    /// Feeds one diff byte; returns the pair that a zero byte beyond the gap completes (that zero and the
    /// pending ones then start the next zero run).
    /// `pos` is the byte's offset in the new image.
    fn push(&mut self, diff: u8, pos: usize) -> Option<(u64, u64)> {
        if diff != 0 {
            self.literals += self.pending + 1;
            self.pending = 0;
            return None;
        }
        if self.literals == 0 {
            self.zeros += 1;
            return None;
        }
        if self.pending < self.gap(pos) {
            self.pending += 1;
            return None;
        }
        let pair = (self.zeros, self.literals);
        (self.zeros, self.literals, self.pending) = (self.pending + 1, 0, 0);
        Some(pair)
    }

    /// Zero bytes pending after the literal run.
    fn pending(&self) -> u64 {
        self.pending
    }

    /// Ends an add: pending zeros start the next zero run; returns the pair that completes.
    fn end_of_add(&mut self) -> Option<(u64, u64)> {
        if self.pending == 0 {
            return None;
        }
        let pair = (self.zeros, self.literals);
        (self.zeros, self.literals, self.pending) = (self.pending, 0, 0);
        Some(pair)
    }

    /// The last pair (its literal run may be empty), if any byte is left. Every add ends with
    /// [`Self::end_of_add`] before a segment ends, so no zero is pending here; were one, it would stay a
    /// literal (as [`stream_bytes`] does alike).
    fn finish(&mut self) -> Option<(u64, u64)> {
        let pair = (self.zeros, self.literals + self.pending);
        (self.zeros, self.literals, self.pending) = (0, 0, 0);
        (pair != (0, 0)).then_some(pair)
    }
}

/// Upper bound of one control entry's bytes (three varints).
const ENTRY_MAX: usize = 30;
/// Upper bound of the entry count that starts a segment's control bytes.
const COUNT_MAX: usize = 10;
/// Room kept in each run-length stream: the pair being completed and the segment's final pair, plus
/// [`GAP_PAIR_RESERVE`] when gaps may be kept (then an add's end may complete a pair too).
const PAIRS_RESERVE: usize = 2 * 10;
const GAP_PAIR_RESERVE: usize = 10;

/// Cuts steps into segments whose buffered streams (control, extra, zero runs, literal lengths) stay
/// under the decoder's caps, and sums each stream's raw bytes (to size its dictionary).
struct Segmenter<'a> {
    segments: Vec<Vec<Piece>>,
    current: Vec<Piece>,
    /// Raw bytes of the current segment per stream (control counted at [`ENTRY_MAX`] per entry).
    fill: [usize; 5],
    totals: [u64; 5],
    /// The largest segment's literal bytes so far.
    largest_literals: u64,
    runs: RunTokenizer<'a>,
}

impl Segmenter<'_> {
    fn push(&mut self, piece: Piece) {
        self.fill[CONTROL] += ENTRY_MAX;
        self.fill[EXTRA] += in_memory(piece.entry.copy_len);
        self.totals[CONTROL] += ENTRY_MAX as u64;
        self.totals[EXTRA] += piece.entry.copy_len;
        self.current.push(piece);
    }

    fn count_pair(&mut self, (zeros, literals): (u64, u64)) {
        let (z, l) = (varint_len(zeros), varint_len(literals));
        self.fill[ZERO_RUNS] += z;
        self.fill[LITERAL_LENGTHS] += l;
        self.totals[ZERO_RUNS] += z as u64;
        self.totals[LITERAL_LENGTHS] += l as u64;
        self.totals[LITERALS] += literals;
        self.fill[LITERALS] += in_memory(literals);
    }

    fn runs_full(&self) -> bool {
        let cap = SEGMENT_RUNS_MAX as usize;
        let coding = self.runs.coding;
        let no_gaps = coding.code == CodeZeros::Runs && coding.raw.is_empty();
        let reserve = if coding.data_from == usize::MAX && no_gaps {
            PAIRS_RESERVE
        } else {
            PAIRS_RESERVE + GAP_PAIR_RESERVE
        };
        self.fill[ZERO_RUNS] + reserve > cap || self.fill[LITERAL_LENGTHS] + reserve > cap
    }

    /// Ends the current segment (its diff's last pair included).
    fn cut(&mut self) {
        if let Some(pair) = self.runs.finish() {
            self.count_pair(pair);
        }
        if !self.current.is_empty() {
            self.segments.push(std::mem::take(&mut self.current));
        }
        self.largest_literals = self.largest_literals.max(self.fill[LITERALS] as u64);
        self.fill = [0; 5];
    }

    fn add_step(&mut self, step: &Step, seek: i64, o: &[u8], n: &[u8]) {
        let (control_cap, extra_cap) = (SEGMENT_CONTROL_MAX as usize, SEGMENT_EXTRA_MAX as usize);
        // Room for a piece cut inside the add and the next one: no cut may fall between diff bytes
        // already tokenized into this segment and the piece that consumes them.
        if self.fill[CONTROL] + COUNT_MAX + 2 * ENTRY_MAX > control_cap || self.fill[EXTRA] >= extra_cap {
            self.cut();
        }
        let (new_start, old_start, add) = self.tokenize_add(step, o, n);
        self.push_add_and_copy(new_start, old_start, add, step.copy_len, seek);
    }

    /// Tokenizes the step's diff into (zero run, literal run) pairs, cutting the segment where the
    /// run-length streams fill up (each cut ends a piece of the add); returns where the rest of the add
    /// starts in new and old, and its length.
    fn tokenize_add(&mut self, step: &Step, o: &[u8], n: &[u8]) -> (usize, usize, usize) {
        let (mut new_start, mut old_start, mut add) = (step.new_start, step.old_start, step.add_len);
        let news = n
            .get(step.new_start..step.new_start + step.add_len)
            .unwrap_or(&[]);
        let olds = o
            .get(step.old_start..step.old_start + step.add_len)
            .unwrap_or(&[]);
        let mut placed = 0usize;
        let mut next = 0usize;
        while let (Some(a), Some(b)) = (news.get(next), olds.get(next)) {
            let i = next;
            let taken = self.runs.take_unchanged(news, olds, i);
            if taken > 0 {
                next += taken;
                continue;
            }
            next += 1;
            let Some(pair) = self.runs.push(a.wrapping_sub(*b), step.new_start + i) else {
                continue;
            };
            self.count_pair(pair);
            if self.runs_full() {
                // The zeros that ended the literal run (the pending ones and byte i, all pushed since
                // `placed`) start the next segment: the add before them becomes a piece of its own.
                let zeros = usize::try_from(self.runs.zeros).unwrap_or(usize::MAX);
                let at = (i + 1).saturating_sub(zeros).max(placed);
                self.push(Piece {
                    entry: ControlEntry {
                        add_len: (at - placed) as u64,
                        copy_len: 0,
                        seek: 0,
                    },
                    new_start,
                    old_start,
                });
                self.runs = self.runs.fresh();
                self.cut();
                for k in at..=i {
                    self.runs.push(0, step.new_start + k);
                }
                (new_start, old_start, add) = (
                    new_start + at - placed,
                    old_start + at - placed,
                    add - (at - placed),
                );
                placed = at;
            }
        }
        if let Some(pair) = self.runs.end_of_add() {
            self.count_pair(pair);
        }
        (new_start, old_start, add)
    }

    /// Pushes the rest of the add (already tokenized), then the copy, cut where the extra stream reaches
    /// its cap; the last piece carries the step's seek.
    fn push_add_and_copy(
        &mut self,
        mut new_start: usize,
        mut old_start: usize,
        mut add: usize,
        mut copy: usize,
        seek: i64,
    ) {
        let (control_cap, extra_cap) = (SEGMENT_CONTROL_MAX as usize, SEGMENT_EXTRA_MAX as usize);
        loop {
            if self.fill[CONTROL] + COUNT_MAX + ENTRY_MAX > control_cap
                || (self.fill[EXTRA] >= extra_cap && copy > 0)
            {
                self.cut();
            }
            let room = extra_cap.saturating_sub(self.fill[EXTRA]);
            let (this_copy, this_seek, last) = if copy <= room {
                (copy, seek, true)
            } else {
                (room, 0, false)
            };
            self.push(Piece {
                entry: ControlEntry {
                    add_len: add as u64,
                    copy_len: this_copy as u64,
                    seek: this_seek,
                },
                new_start,
                old_start,
            });
            if last {
                return;
            }
            new_start += add + this_copy;
            old_start += add;
            copy -= this_copy;
            add = 0;
        }
    }
}

/// A control entry's length as a usize: entries are made from steps over the in-memory images (usize
/// offsets, under `i32::MAX` bytes by `check_sizes`), so the u64 always fits.
#[allow(clippy::cast_possible_truncation)] // the value came from a usize, see above
#[inline]
fn in_memory(len: u64) -> usize {
    len as usize
}

/// What [`segment`] cuts: the segments and their streams' sizes.
struct Segments {
    segments: Vec<Vec<Piece>>,
    /// Each stream's total raw bytes (to size its dictionary).
    totals: [u64; 5],
    /// The literal bytes of the segment that holds the most (to size the literal stream's blocks).
    largest_literals: u64,
}

/// Cuts steps into segments under the decoder's caps.
fn segment(steps: &[Step], o: &[u8], n: &[u8], coding: DiffCoding<'_>) -> Segments {
    let mut segmenter = Segmenter {
        segments: Vec::new(),
        current: Vec::new(),
        fill: [0; 5],
        totals: [0; 5],
        largest_literals: 0,
        runs: RunTokenizer::new(coding),
    };
    for (k, step) in steps.iter().enumerate() {
        let next_old = steps
            .get(k + 1)
            .map_or(step.old_start + step.add_len, |s| s.old_start);
        let seek = signed(next_old) - signed(step.old_start + step.add_len);
        segmenter.add_step(step, seek, o, n);
    }
    segmenter.cut();
    Segments {
        segments: segmenter.segments,
        totals: segmenter.totals,
        largest_literals: segmenter.largest_literals,
    }
}

/// Raw bytes handed to xz at a time: with [`DataZeros::Literals`] a segment's literal stream holds its
/// data's whole diff (megabytes), which is not built in one buffer beside the encoder.
const FEED_CHUNK: usize = 64 << 10;

/// The raw bytes one stream gets from one segment, handed to `feed` in pieces of about [`FEED_CHUNK`]
/// bytes (`buf` holds a piece); returns their total length.
#[allow(clippy::too_many_arguments)]
fn stream_bytes(
    which: usize,
    pieces: &[Piece],
    o: &[u8],
    n: &[u8],
    coding: DiffCoding<'_>,
    buf: &mut Vec<u8>,
    feed: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<usize> {
    buf.clear();
    let mut total = 0usize;
    let mut flush = |buf: &mut Vec<u8>, at_least: usize| -> std::io::Result<()> {
        if buf.len() >= at_least && !buf.is_empty() {
            total += buf.len();
            feed(buf)?;
            buf.clear();
        }
        Ok(())
    };
    if which == CONTROL {
        write_control(pieces.iter().map(|p| p.entry), buf);
        flush(buf, 0)?;
        return Ok(total);
    }
    let mut diff = DiffStream::new(which, coding);
    for p in pieces {
        if which == EXTRA {
            let start = p.new_start + in_memory(p.entry.add_len);
            buf.extend_from_slice(n.get(start..start + in_memory(p.entry.copy_len)).unwrap_or(&[]));
        } else {
            // The diff's streams: zero runs, literal lengths, literals (control returned above).
            let len = in_memory(p.entry.add_len);
            let new_part = n.get(p.new_start..p.new_start + len).unwrap_or(&[]);
            let old_part = o.get(p.old_start..p.old_start + len).unwrap_or(&[]);
            let mut pos = p.new_start;
            for (new_piece, old_piece) in new_part.chunks(FEED_CHUNK).zip(old_part.chunks(FEED_CHUNK)) {
                pos = diff.chunk(new_piece, old_piece, pos, buf);
                flush(buf, FEED_CHUNK)?;
            }
            diff.end_of_add(buf);
        }
        flush(buf, FEED_CHUNK)?;
    }
    diff.finish(buf);
    flush(buf, 0)?;
    Ok(total)
}

/// One of the diff's three streams (zero runs, literal lengths or literals) written from the add steps'
/// bytes: the run tokenizer and, for the literals, the carry and the zeros pending inside a literal run.
struct DiffStream<'a> {
    which: usize,
    runs: RunTokenizer<'a>,
    carry: RunCarry,
    pending: Vec<(u8, u8)>,
}

impl<'a> DiffStream<'a> {
    fn new(which: usize, coding: DiffCoding<'a>) -> Self {
        DiffStream {
            which,
            runs: RunTokenizer::new(coding),
            carry: RunCarry::default(),
            pending: Vec::new(),
        }
    }

    fn emit(&self, (zeros, literals): (u64, u64), out: &mut Vec<u8>) {
        match self.which {
            ZERO_RUNS => put_varint(out, zeros),
            LITERAL_LENGTHS => put_varint(out, literals),
            _ => {}
        }
    }

    /// Appends this stream's bytes for a chunk of an add: new and old bytes from new offset `pos`; returns
    /// the offset after the chunk.
    fn chunk(&mut self, new_piece: &[u8], old_piece: &[u8], mut pos: usize, buf: &mut Vec<u8>) -> usize {
        let mut next = 0usize;
        while let (Some(a), Some(b)) = (new_piece.get(next), old_piece.get(next)) {
            let taken = self.runs.take_unchanged(new_piece, old_piece, next);
            if taken > 0 {
                debug_assert!(self.pending.is_empty());
                (next, pos) = (next + taken, pos + taken);
                continue;
            }
            next += 1;
            let diff = a.wrapping_sub(*b);
            let pair = self.runs.push(diff, pos);
            pos += 1;
            if self.which != LITERALS {
                if let Some(pair) = pair {
                    self.emit(pair, buf);
                }
                continue;
            }
            // Pending zeros become literals when a nonzero byte absorbs them, unchanged bytes
            // otherwise; the carry steps through them in order either way.
            if self.runs.pending() > self.pending.len() as u64 {
                self.pending.push((*b, *a));
            } else if diff != 0 {
                for (ob, nb) in self.pending.drain(..) {
                    buf.push(self.carry.literal(ob, nb));
                }
                buf.push(self.carry.literal(*b, *a));
            } else {
                for _ in self.pending.drain(..) {
                    self.carry.unchanged();
                }
                self.carry.unchanged();
            }
        }
        pos
    }

    /// At the end of an add, the last pair and the pending zeros (unchanged bytes, the add being over).
    fn end_of_add(&mut self, buf: &mut Vec<u8>) {
        if let Some(pair) = self.runs.end_of_add() {
            self.emit(pair, buf);
        }
        for _ in self.pending.drain(..) {
            self.carry.unchanged();
        }
    }

    /// After the last piece: the last pair and any pending bytes as literals.
    fn finish(&mut self, buf: &mut Vec<u8>) {
        if let Some(pair) = self.runs.finish() {
            self.emit(pair, buf);
        }
        for (ob, nb) in self.pending.drain(..) {
            buf.push(self.carry.literal(ob, nb));
        }
    }
}

fn window_log_for(total: u64, wanted: u8) -> u8 {
    let mut log = MIN_WINDOW_LOG;
    while log < wanted.min(MAX_WINDOW_LOG) && (1u64 << log) < total {
        log += 1;
    }
    log
}

/// Feeds `input` (or only flushes, when empty and `action` is not `Run`) through an xz encoder.
fn pump(stream: &mut Stream, mut input: &[u8], action: Action, out: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        if out.capacity() - out.len() < 64 * 1024 {
            out.reserve(256 * 1024);
        }
        let before = stream.total_in();
        let status = stream
            .process_vec(input, out, action)
            .map_err(std::io::Error::other)?;
        let used = usize::try_from(stream.total_in() - before).unwrap_or(input.len());
        input = input.get(used..).unwrap_or(&[]);
        match action {
            Action::Run if input.is_empty() => return Ok(()),
            Action::Run => {}
            _ if status == Status::StreamEnd => return Ok(()),
            _ => {}
        }
    }
}

/// One stream's chunks, one per segment: (raw length, compressed bytes).
type StreamChunks = Vec<(usize, Vec<u8>)>;

/// How a stream's xz encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEncoder {
    /// On the calling thread, one LZMA2 block across every segment.
    One,
    /// On `workers` threads of liblzma's, in blocks of up to `block_size` raw bytes.
    Blocks { workers: u32, block_size: u64 },
}

/// From this many raw bytes on, a raw literal stream (the one stream that takes seconds: LZMA2's normal
/// mode over megabytes of mostly zeros) is compressed in blocks on every thread. Each block starts with an
/// empty dictionary: 0.3-1.2 % larger deltas on the ARM pairs, 1.4-1.7x faster generation.
const BLOCKS_MIN: u64 = 2 << 20;
/// Bytes of the images per worker of a stream compressed in blocks (see [`StreamEncoder::for_stream`]).
const BLOCK_WORKER_INPUTS: usize = 4 << 20;

impl StreamEncoder {
    /// The encoder for stream `which` of `cut` (from images of `inputs` bytes together), with `threads`
    /// to spare.
    fn for_stream(
        which: usize,
        cut: &Segments,
        inputs: usize,
        coding: DiffCoding<'_>,
        threads: usize,
    ) -> StreamEncoder {
        // Each worker holds an encoder and its block buffers (about 6 MiB): one per 4 MiB of the images
        // keeps generation within 4x their size on a machine of many cores; two always (systemd-arm64's
        // 6.5 MiB fit with two: 23.2 MiB of 26.1).
        let workers = threads.min(2.max(inputs / BLOCK_WORKER_INPUTS));
        let workers = u32::try_from(workers).unwrap_or(1);
        let total = cut.totals[LITERALS];
        if which != LITERALS || !coding.raw_code() || workers < 2 || total < BLOCKS_MIN {
            return StreamEncoder::One;
        }
        // A block ends at each segment's end (the flush there waits for every block of the segment): the
        // largest segment is what the threads share.
        StreamEncoder::Blocks {
            workers,
            block_size: cut
                .largest_literals
                .div_ceil(u64::from(workers))
                .max(BLOCKS_MIN / 2),
        }
    }
}

/// Compresses one stream across all segments as one xz (LZMA2) stream, sync-flushed at each segment end
/// so the decoder can finish a segment from its bytes alone while keeping the dictionary (in blocks, see
/// [`StreamEncoder`], a block ends there instead). Returns each segment's raw length and compressed chunk.
#[allow(clippy::too_many_arguments)]
fn compress_stream(
    which: usize,
    segments: &[Vec<Piece>],
    o: &[u8],
    n: &[u8],
    opts: &EncodeOptions,
    window_log: u8,
    coding: DiffCoding<'_>,
    encoder: StreamEncoder,
) -> Result<StreamChunks> {
    let stream_name = STREAM_NAMES.get(which).copied().unwrap_or("stream");
    let err = |source: std::io::Error| Error::Compress {
        stream: stream_name,
        source,
    };
    let xz_err = |e: xz2::stream::Error| err(std::io::Error::other(e));
    let lzma = stream_options(which, opts, window_log, coding).map_err(xz_err)?;
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    let (mut stream, flush) = match encoder {
        StreamEncoder::One => (
            Stream::new_stream_encoder(&filters, Check::None).map_err(xz_err)?,
            Action::SyncFlush,
        ),
        // liblzma's threads cut the stream into blocks (each with a fresh dictionary) and end one at
        // each segment: the decoder reads them as any .xz stream. They take no sync flush.
        StreamEncoder::Blocks { workers, block_size } => (
            MtStreamBuilder::new()
                .threads(workers)
                .block_size(block_size)
                .filters(filters)
                .check(Check::None)
                .encoder()
                .map_err(xz_err)?,
            Action::FullFlush,
        ),
    };
    let mut raw = Vec::new();
    let mut chunks = Vec::with_capacity(segments.len());
    for (k, seg) in segments.iter().enumerate() {
        let mut out = Vec::new();
        let raw_len = stream_bytes(which, seg, o, n, coding, &mut raw, &mut |piece| {
            pump(&mut stream, piece, Action::Run, &mut out)
        })
        .map_err(err)?;
        let last = k + 1 == segments.len();
        pump(
            &mut stream,
            &[],
            if last { Action::Finish } else { flush },
            &mut out,
        )
        .map_err(err)?;
        chunks.push((raw_len, out));
    }
    Ok(chunks)
}

/// The LZMA2 options of stream `which`: the preset, the dictionary, and what suits the stream's bytes.
fn stream_options(
    which: usize,
    opts: &EncodeOptions,
    window_log: u8,
    coding: DiffCoding<'_>,
) -> std::result::Result<LzmaOptions, xz2::stream::Error> {
    let mut preset = opts.level.min(9);
    if opts.extreme {
        preset |= 1 << 31; // LZMA_PRESET_EXTREME
    }
    let mut lzma = LzmaOptions::new_preset(preset)?;
    lzma.dict_size(1u32 << window_log);
    match which {
        // Run lengths and bytewise differences: the position predicts nothing; the previous byte only
        // helps zero runs (a varint's continuation byte), by 1-4% on the corpus.
        // Control fields grouped (see `write_control`) behave alike.
        ZERO_RUNS | CONTROL => {
            lzma.literal_context_bits(1).position_bits(0);
        }
        LITERAL_LENGTHS | LITERALS => {
            lzma.literal_context_bits(0).position_bits(0);
        }
        _ => {}
    }
    if which == LITERALS && coding.data == DataZeros::Literals && !coding.raw_code() {
        // Mostly zeros (see `DataZeros::Literals`): on esbuild's 2.6 MB, 124,001 bytes in 0.28 s,
        // against 106,810 in 1.9 s at 9 extreme and 117,756 in 0.7 s at 6.
        lzma.mode(Mode::Fast)
            .match_finder(MatchFinder::HashChain4)
            .nice_len(273);
    } else if which == LITERALS && coding.raw_code() {
        // The code's raw diff (see `CodeZeros::Literals`): long zero runs between changed words, which
        // only a long `nice_len` codes cheaply (systemd-arm64: 46,702 bytes in 3.9 s against 60,966 in
        // 0.9 s in fast mode, 60,298 with `nice_len` 64, 58,602 with the binary tree's depth at 8).
        lzma.mode(Mode::Normal)
            .match_finder(MatchFinder::BinaryTree4)
            .nice_len(273);
    }
    Ok(lzma)
}

/// Serializes `steps` as a delta; the five streams are compressed on one thread each when `parallel`,
/// else one after the other on this thread (the probe: one xz encoder alive at a time).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_delta(
    o: &[u8],
    n: &[u8],
    steps: &[Step],
    old_sha: &[u8; 32],
    new_sha: &[u8; 32],
    filter: &Filtering,
    opts: &EncodeOptions,
    coding: DiffCoding<'_>,
    parallel: bool,
) -> Result<Vec<u8>> {
    let raw = raw_spans(&filter.new);
    let coding = DiffCoding { raw: &raw, ..coding };
    let cut = segment(steps, o, n, coding);
    let window_logs = stream_window_logs(&cut.totals, opts, coding);
    let threads = if parallel { opts.threads.max(1) } else { 1 };
    let streams = compress_streams(&cut, o, n, opts, window_logs, coding, threads)?;
    let mut table = Vec::new();
    write_region_table(&filter.old, &filter.new, &mut table);
    let (table, table_raw_len) = compress_region_table(table, opts)?;
    let count = |map: &crate::filter::RegionMap| u32::try_from(map.regions().len()).unwrap_or(u32::MAX);
    let header = DeltaHeader {
        format_version: FORMAT_VERSION,
        filter: filter.filter,
        old_regions: count(&filter.old),
        new_regions: count(&filter.new),
        region_table_len: u32::try_from(table.len()).unwrap_or(u32::MAX),
        region_table_raw_len: table_raw_len,
        old_len: o.len() as u64,
        old_sha256: *old_sha,
        new_len: n.len() as u64,
        new_sha256: *new_sha,
        window_logs: [window_logs[CONTROL], window_logs[LITERALS], window_logs[EXTRA]],
        runs_window_log: window_logs[ZERO_RUNS],
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&table);
    write_segments(&cut.segments, &streams, &mut out)?;
    out.push(TAG_END);
    Ok(out)
}

/// Largest dictionary (log2 bytes) for the region table's xz stream: its repeats are the same files' entries
/// in the old and new tables, a few KiB apart.
const REGION_TABLE_WINDOW_LOG: u8 = 16;

/// The region table as stored, and its decompressed length: an xz stream when that is smaller (0 then
/// means stored as is). The varints of a filesystem image's 219 files x 2 tables: 3,842 bytes raw, 1,440
/// as xz (rootfs).
fn compress_region_table(table: Vec<u8>, opts: &EncodeOptions) -> Result<(Vec<u8>, u32)> {
    let err = |e: xz2::stream::Error| Error::Compress {
        stream: "region table",
        source: std::io::Error::other(e),
    };
    let lzma = stream_options(
        CONTROL,
        opts,
        REGION_TABLE_WINDOW_LOG,
        DiffCoding::for_image(&[], DataZeros::Gaps),
    )
    .map_err(err)?;
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    let mut stream = Stream::new_stream_encoder(&filters, Check::None).map_err(err)?;
    let mut xz = Vec::new();
    pump(&mut stream, &table, Action::Run, &mut xz).map_err(|source| Error::Compress {
        stream: "region table",
        source,
    })?;
    pump(&mut stream, &[], Action::Finish, &mut xz).map_err(|source| Error::Compress {
        stream: "region table",
        source,
    })?;
    match u32::try_from(table.len()) {
        Ok(raw_len) if xz.len() < table.len() => Ok((xz, raw_len)),
        _ => Ok((table, 0)),
    }
}

/// Each stream's dictionary log: as small as its total raw bytes allow, within the caps.
fn stream_window_logs(totals: &[u64; 5], opts: &EncodeOptions, coding: DiffCoding<'_>) -> [u8; 5] {
    let [control_log, literal_log, extra_log] = opts.window_logs;
    let runs_total = totals[ZERO_RUNS].max(totals[LITERAL_LENGTHS]);
    let mut window_logs = [0u8; 5];
    window_logs[CONTROL] = window_log_for(totals[CONTROL], control_log.min(SIDE_MAX_WINDOW_LOG));
    window_logs[EXTRA] = window_log_for(totals[EXTRA], extra_log);
    window_logs[ZERO_RUNS] = window_log_for(runs_total, SIDE_MAX_WINDOW_LOG);
    window_logs[LITERAL_LENGTHS] = window_logs[ZERO_RUNS];
    let literal_log = if coding.raw_literals() {
        literal_log.min(RAW_LITERAL_WINDOW_LOG)
    } else {
        literal_log
    };
    window_logs[LITERALS] = window_log_for(totals[LITERALS], literal_log);
    window_logs
}

/// Compresses the five streams, each on a thread of its own when `threads` > 1 (see [`StreamEncoder`]
/// for the one that gets them all), else one after the other on this thread (the probe: one xz encoder
/// alive at a time).
#[allow(clippy::too_many_arguments)]
fn compress_streams(
    cut: &Segments,
    o: &[u8],
    n: &[u8],
    opts: &EncodeOptions,
    window_logs: [u8; 5],
    coding: DiffCoding<'_>,
    threads: usize,
) -> Result<Vec<StreamChunks>> {
    let segments = cut.segments.as_slice();
    let inputs = o.len().saturating_add(n.len());
    let jobs = (0..STREAM_NAMES.len()).zip(window_logs).map(|(which, log)| {
        (
            which,
            log,
            StreamEncoder::for_stream(which, cut, inputs, coding, threads),
        )
    });
    let compressed: Vec<Result<StreamChunks>> = if threads < 2 {
        jobs.map(|(which, log, encoder)| compress_stream(which, segments, o, n, opts, log, coding, encoder))
            .collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .map(|(which, log, encoder)| {
                    scope.spawn(move || compress_stream(which, segments, o, n, opts, log, coding, encoder))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    };
    compressed.into_iter().collect()
}

/// Appends each segment: its header (every stream's raw and compressed sizes), then its five chunks.
fn write_segments(segments: &[Vec<Piece>], streams: &[StreamChunks], out: &mut Vec<u8>) -> Result<()> {
    let empty = (0, Vec::new());
    let size = |len: usize| {
        u32::try_from(len).map_err(|_| Error::TooLarge {
            what: "segment stream chunk",
            len: len as u64,
            max: u64::from(u32::MAX),
        })
    };
    for (k, seg) in segments.iter().enumerate() {
        let chunk = |s: usize| streams.get(s).and_then(|c| c.get(k)).unwrap_or(&empty);
        let seg_header = SegmentHeader {
            control_raw: size(chunk(CONTROL).0)?,
            control_xz: size(chunk(CONTROL).1.len())?,
            extra_raw: size(chunk(EXTRA).0)?,
            extra_xz: size(chunk(EXTRA).1.len())?,
            zeros_raw: size(chunk(ZERO_RUNS).0)?,
            zeros_xz: size(chunk(ZERO_RUNS).1.len())?,
            lengths_raw: size(chunk(LITERAL_LENGTHS).0)?,
            lengths_xz: size(chunk(LITERAL_LENGTHS).1.len())?,
            diff_raw: seg.iter().map(|p| p.entry.add_len).sum(),
            literals_xz: size(chunk(LITERALS).1.len())?,
        };
        out.extend_from_slice(&seg_header.to_bytes());
        for which in 0..STREAM_NAMES.len() {
            out.extend_from_slice(&chunk(which).1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::sha256;
    use crate::filter::{write_test_elf_header, Filter, Filtering};
    use crate::matching::match_parallel;
    use crate::suffix::SuffixIndex;

    /// Writes `steps` as a delta with `coding` and checks that it turns `old` into `new`.
    fn assert_round_trips(
        old: &[u8],
        new: &[u8],
        steps: &[Step],
        opts: &EncodeOptions,
        coding: DiffCoding<'_>,
    ) {
        let (old_sha, new_sha) = (sha256(old), sha256(new));
        let filter = Filtering::none();
        let delta = write_delta(old, new, steps, &old_sha, &new_sha, &filter, opts, coding, true).unwrap();
        let mut out = Vec::new();
        crate::apply(std::io::Cursor::new(old), delta.as_slice(), &mut out).unwrap();
        assert!(out == new, "{coding:?} does not round-trip");
    }

    /// Every diff coding decodes to the new image (the decoder does not know which one was used).
    #[test]
    fn every_diff_coding_round_trips() {
        let old: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let mut new = old.clone();
        for i in (0..new.len()).step_by(97) {
            new[i] = new[i].wrapping_add(3);
        }
        new.splice(1000..1000, *b"inserted bytes");
        let index = SuffixIndex::new(&old);
        let steps = match_parallel(&index, &old, &new, 1);
        let opts = EncodeOptions {
            level: 3,
            ..EncodeOptions::default()
        };
        let codings = [CodeZeros::Runs, CodeZeros::Literals]
            .into_iter()
            .flat_map(|code| {
                [DataZeros::Gaps, DataZeros::Literals]
                    .into_iter()
                    .flat_map(move |data| {
                        [0, 100_000, usize::MAX].map(|data_from| DiffCoding {
                            data_from,
                            data,
                            code,
                            raw: &[],
                        })
                    })
            });
        for coding in codings {
            assert_round_trips(&old, &new, &steps, &opts, coding);
        }
    }

    /// In an ELF file's data (after its executable segments) short zero gaps stay inside literal runs: the
    /// delta round-trips, including segments cut where zeros were pending (the run-length streams of this
    /// pair exceed a segment's cap several times), and codes fewer pairs than without gaps. With every
    /// data zero a literal, it round-trips too and codes fewer pairs still.
    #[test]
    fn zero_gaps_in_elf_data_round_trip_across_segment_cuts() {
        let mut old: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        write_test_elf_header(&mut old, 4096);
        let mut new = old.clone();
        // Changed bytes with gaps of 1 to 9 unchanged bytes, in code and in data.
        let mut at = 200;
        let mut k = 0usize;
        while at < new.len() {
            new[at] = new[at].wrapping_add(1 + u8::try_from(k % 5).unwrap());
            at += 2 + k % 9;
            k += 1;
        }
        let index = SuffixIndex::new(&old);
        let steps = match_parallel(&index, &old, &new, 1);
        let gaps = DiffCoding::for_image(&new, DataZeros::Gaps);
        assert_eq!(gaps.data_from, 4096);
        let Segments { segments, totals, .. } = segment(&steps, &old, &new, gaps);
        assert!(segments.len() >= 2, "{} segments", segments.len());
        let mut plain = RunTokenizer::new(DiffCoding {
            data_from: usize::MAX,
            data: DataZeros::Gaps,
            code: CodeZeros::Runs,
            raw: &[],
        });
        let mut pairs = 0u64;
        for (i, (a, b)) in new.iter().zip(&old).enumerate() {
            pairs += u64::from(plain.push(a.wrapping_sub(*b), i).is_some());
        }
        assert!(
            totals[ZERO_RUNS] < pairs,
            "{} zero-run bytes with gaps, {pairs} pairs without",
            totals[ZERO_RUNS]
        );
        let opts = EncodeOptions {
            level: 1,
            ..EncodeOptions::default()
        };
        let literals = DiffCoding::for_image(&new, DataZeros::Literals);
        let literal_totals = segment(&steps, &old, &new, literals).totals;
        assert!(literal_totals[ZERO_RUNS] < totals[ZERO_RUNS]);
        for coding in [gaps, literals] {
            assert_round_trips(&old, &new, &steps, &opts, coding);
        }
    }

    /// Only ARM code regions are coded raw: a zero after a change ends the literal run in an x86 region
    /// and outside any region, and stays pending inside an AArch64 or Thumb-2 one.
    #[test]
    fn arm_regions_are_coded_raw_and_others_are_not() {
        use crate::filter::Region;
        let region = |lo, hi, filter| Region {
            lo,
            hi,
            base: lo,
            filter,
        };
        let map = RegionMap::new(vec![
            region(0, 100, Filter::X86Full),
            region(200, 300, Filter::Arm64),
            region(400, 500, Filter::Thumb),
        ]);
        let spans = raw_spans(&map);
        assert_eq!(spans, [(200, 300), (400, 500)]);
        let coding = DiffCoding {
            raw: &spans,
            ..DiffCoding::for_image(&[], DataZeros::Gaps)
        };
        for (at, raw) in [
            (50, false),
            (150, false),
            (250, true),
            (299, true),
            (300, false),
            (450, true),
        ] {
            let mut runs = RunTokenizer::new(coding);
            assert_eq!(runs.push(7, at - 1), None);
            assert_eq!(runs.push(0, at).is_none(), raw, "zero at {at}");
        }
    }

    /// A raw code diff of megabytes over several segments is compressed in blocks on two threads, one
    /// segment's blocks ending where it does, and decodes to the new image as one xz stream.
    #[test]
    fn raw_code_diff_in_blocks_across_segments_round_trips() {
        let len = 7 << 20;
        let old: Vec<u8> = (0..len)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        // A changed byte every 61, and a byte inserted every 1,000 (a new control entry each: several
        // segments).
        let mut new = Vec::with_capacity(old.len() + old.len() / 1000);
        for (i, &b) in old.iter().enumerate() {
            new.push(if i % 61 == 5 { b.wrapping_add(3) } else { b });
            if i % 1000 == 999 {
                new.push(0x5a);
            }
        }
        let index = SuffixIndex::new(&old);
        let steps = match_parallel(&index, &old, &new, 2);
        let raw = DiffCoding {
            data_from: usize::MAX,
            data: DataZeros::Gaps,
            code: CodeZeros::Literals,
            raw: &[],
        };
        let cut = segment(&steps, &old, &new, raw);
        assert!(cut.segments.len() >= 2, "{} segments", cut.segments.len());
        let inputs = old.len() + new.len();
        let encoder = StreamEncoder::for_stream(LITERALS, &cut, inputs, raw, 2);
        let StreamEncoder::Blocks { workers, block_size } = encoder else {
            panic!("{encoder:?} for {} literal bytes", cut.totals[LITERALS]);
        };
        assert_eq!(workers, 2);
        assert!(
            block_size < cut.largest_literals,
            "{block_size} of {}",
            cut.largest_literals
        );
        let opts = EncodeOptions {
            level: 6,
            extreme: false,
            threads: 2,
            ..EncodeOptions::default()
        };
        assert_round_trips(&old, &new, &steps, &opts, raw);
        // The other streams, and one thread, keep one encoder.
        assert_eq!(
            StreamEncoder::for_stream(EXTRA, &cut, inputs, raw, 2),
            StreamEncoder::One
        );
        assert_eq!(
            StreamEncoder::for_stream(LITERALS, &cut, inputs, raw, 1),
            StreamEncoder::One
        );
        // Many cores: one worker per 4 MiB of the images (these 14 MiB: 3), two for small images.
        let workers_for =
            |inputs, threads| match StreamEncoder::for_stream(LITERALS, &cut, inputs, raw, threads) {
                StreamEncoder::Blocks { workers, .. } => workers,
                StreamEncoder::One => 1,
            };
        assert_eq!(workers_for(inputs, 64), 3);
        assert_eq!(workers_for(6 << 20, 64), 2);
        assert_eq!(workers_for(1 << 30, 8), 8);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 16, ..Default::default() })]

        /// Every coding of the code's and the data's zeros, split anywhere, turns any old image into any
        /// edited copy of it: the decoder reads every split alike.
        #[test]
        fn every_split_of_zeros_round_trips_on_edited_copies(
            old in proptest::collection::vec(0u8..8, 1..6000),
            edits in proptest::collection::vec((proptest::prelude::any::<u16>(), 0usize..24, proptest::prelude::any::<u8>()), 0..24),
            data_from in 0usize..7000,
            raw_span in (0usize..7000, 0usize..3000),
        ) {
            let mut new = old.clone();
            for (at, len, byte) in edits {
                let at = usize::from(at) % new.len().max(1);
                let end = (at + len).min(new.len());
                for b in &mut new[at..end] {
                    *b = b.wrapping_add(byte);
                }
            }
            let index = SuffixIndex::new(&old);
            let steps = match_parallel(&index, &old, &new, 1);
            let opts = EncodeOptions {
                level: 0,
                ..EncodeOptions::default()
            };
            let spans = [(raw_span.0, raw_span.0 + raw_span.1)];
            for code in [CodeZeros::Runs, CodeZeros::Literals] {
                for data in [DataZeros::Gaps, DataZeros::Literals] {
                    for raw in [&[][..], &spans[..]] {
                        assert_round_trips(&old, &new, &steps, &opts, DiffCoding { data_from, data, code, raw });
                    }
                }
            }
        }
    }
}
