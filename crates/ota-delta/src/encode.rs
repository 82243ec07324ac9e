//! The publisher side's entry points: which filter candidates run (a sample of the pair picks one), each
//! candidate's suffix array built, its steps matched ([`crate::matching`]) and written as a delta
//! ([`crate::coding`]), the smallest kept.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::coding::{write_delta, CodeZeros, DataZeros, DiffCoding};
use crate::filter::{
    elf_exec_span, filtering_for, plausible_filters, Filter, Filtering, RegionMap, FILTER_BLOCK,
};
use crate::format::MAX_WINDOW_LOG;
use crate::matching::{match_parallel, Step};
use crate::suffix::SuffixIndex;
use crate::{run_both, Error, Result};

/// Which pre-filters the encoder tries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FilterChoice {
    /// `None` plus every machine filter whose ELF machine appears in the images (all of them for small
    /// raw blobs). A sample of the pair (four windows) picks the one candidate that runs in full.
    #[default]
    Auto,
    /// Exactly these candidates; the smallest result wins.
    Only(Vec<Filter>),
}

/// Publisher-side knobs. `Default` is what the benchmark measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeOptions {
    /// xz (LZMA2) preset for the three streams, 0..=9 (9 by default).
    pub level: u32,
    /// Use xz's "extreme" variant of the preset (slower, smaller; on by default).
    pub extreme: bool,
    /// Worker threads for matching and compression (default: available cores).
    pub threads: usize,
    /// Filter candidates.
    pub filters: FilterChoice,
    /// LZMA2 dictionary sizes (log2 bytes) of the control, diff literal and extra streams: the decoder's
    /// memory is roughly the sum of the dictionaries. Each is capped at [`MAX_WINDOW_LOG`] (the control's at
    /// [`crate::SIDE_MAX_WINDOW_LOG`]) and shrunk to the stream's size; the run-length streams always get
    /// at most [`crate::SIDE_MAX_WINDOW_LOG`].
    pub window_logs: [u8; 3],
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            level: 9,
            extreme: true,
            threads: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            filters: FilterChoice::Auto,
            window_logs: [20, MAX_WINDOW_LOG, MAX_WINDOW_LOG],
        }
    }
}

/// Progress of [`encode_with_progress`], for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeStage {
    /// Starting on a candidate (`index` of `count`).
    Candidate {
        /// The candidate's filter.
        filter: Filter,
        /// 0-based index.
        index: usize,
        /// Number of candidates.
        count: usize,
    },
    /// Suffix array of the old image being built.
    Indexing(Filter),
    /// Matching new against old.
    Matching(Filter),
    /// Compressing the streams.
    Compressing(Filter),
    /// A candidate finished with this delta size.
    Finished {
        /// The candidate's filter.
        filter: Filter,
        /// Its delta size in bytes.
        delta_len: u64,
    },
}

/// Above this combined input size, candidates run one after the other (memory), each using all threads.
const PARALLEL_CANDIDATES_MAX: usize = 64 << 20;

/// Builds a delta that turns `old` into `new`. Tries the filter candidates and returns the smallest.
/// The unfiltered candidate works on the images as given; each machine-code candidate on a filtered
/// copy of both, so peak memory is about 4 bytes of suffix array per old byte plus, with a filter
/// candidate, copies of both images; [`encode_owned`] filters in place instead of copying.
pub fn encode(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Result<Vec<u8>> {
    encode_with_progress(old, new, opts, &|_| {})
}

/// `old` and `new` through `filter` (on two threads when `threads` allows): borrowed when the filter
/// changes nothing.
fn filtered<'a>(old: &'a [u8], new: &'a [u8], filter: &Filtering, threads: usize) -> [Cow<'a, [u8]>; 2] {
    if filter.is_none() {
        return [Cow::Borrowed(old), Cow::Borrowed(new)];
    }
    let copy = |data: &[u8], map: &RegionMap| {
        let mut copy = data.to_vec();
        map.encode_in_place(&mut copy, 0);
        Cow::Owned(copy)
    };
    let (old, new) = run_both(threads >= 2, || copy(old, &filter.old), || copy(new, &filter.new));
    [old, new]
}

/// Brings `old` and `new`, filtered in place by `from`, to `to` (on two threads when `threads` allows:
/// the filter runs before the suffix sort, on its critical path).
fn refilter(old: &mut [u8], new: &mut [u8], from: &Filtering, to: &Filtering, threads: usize) {
    if from == to {
        return;
    }
    let swap = |image: &mut [u8], from: &RegionMap, to: &RegionMap| {
        from.decode_in_place(image, 0);
        to.encode_in_place(image, 0);
    };
    run_both(
        threads >= 2,
        || swap(old, &from.old, &to.old),
        || swap(new, &from.new, &to.new),
    );
}

/// [`encode`] reporting its stages to `progress` (called from worker threads).
pub fn encode_with_progress(
    old: &[u8],
    new: &[u8],
    opts: &EncodeOptions,
    progress: &(dyn Fn(EncodeStage) + Sync),
) -> Result<Vec<u8>> {
    check_sizes(old, new)?;
    let prepared = prepare(old, new, opts);
    encode_borrowed(old, new, prepared, opts, progress)
}

/// [`encode_with_progress`] over chosen candidates.
fn encode_borrowed(
    old: &[u8],
    new: &[u8],
    prepared: Prepared,
    opts: &EncodeOptions,
    progress: &(dyn Fn(EncodeStage) + Sync),
) -> Result<Vec<u8>> {
    let threads = opts.threads.max(1);
    let Prepared {
        candidates,
        old_sha,
        new_sha,
        codings,
    } = prepared;
    let candidates = candidates.as_slice();
    let count = candidates.len();
    let (old_sha, new_sha) = (&old_sha, &new_sha);
    // Small pairs: one thread per candidate (the suffix array build is single-threaded and dominates).
    let side_by_side =
        threads >= 2 && count >= 2 && old.len().saturating_add(new.len()) <= PARALLEL_CANDIDATES_MAX;
    let per = if side_by_side {
        (threads / count).max(1)
    } else {
        threads
    };
    let run = |k: usize, filter: &Filtering| {
        progress(EncodeStage::Candidate {
            filter: filter.filter,
            index: k,
            count,
        });
        let [o, n] = filtered(old, new, filter, per);
        let codings = codings.per_candidate(count);
        encode_core(
            &o,
            &n,
            old_sha,
            new_sha,
            filter.clone(),
            opts,
            per,
            codings,
            progress,
        )
    };
    let mut best: Option<Candidate> = None;
    if side_by_side {
        let results: Vec<Result<Candidate>> = std::thread::scope(|scope| {
            let handles: Vec<_> = candidates
                .iter()
                .enumerate()
                .map(|(index, filter)| scope.spawn(move || run(index, filter)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        for r in results {
            keep_smaller(&mut best, r?);
        }
    } else {
        for (index, filter) in candidates.iter().enumerate() {
            keep_smaller(&mut best, run(index, filter)?);
        }
    }
    let best = best.ok_or_else(no_candidate)?;
    let Some(other) = codings.left_after(best.tried) else {
        return Ok(best.delta);
    };
    let [o, n] = filtered(old, new, &best.filter, threads);
    try_other_coding(best, other, &o, &n, old_sha, new_sha, opts, progress)
}

/// [`encode`] taking ownership of the images, so candidates are filtered in place instead of copied: peak
/// memory about 4x the old image plus 1x the new (plus xz's match finders while compressing) for large
/// pairs, whose candidates run one after the other, each using all threads, and for any pair left with
/// one candidate. Small pairs (under 64 MiB together) with several candidates run them side by side on
/// copies, as [`encode_with_progress`] does.
pub fn encode_owned(
    mut old: Vec<u8>,
    mut new: Vec<u8>,
    opts: &EncodeOptions,
    progress: &(dyn Fn(EncodeStage) + Sync),
) -> Result<Vec<u8>> {
    check_sizes(&old, &new)?;
    let prepared = prepare(&old, &new, opts);
    let candidates = prepared.candidates.clone();
    let unfiltered_only = matches!(candidates.as_slice(), [c] if c.is_none());
    if unfiltered_only
        || (candidates.len() >= 2 && old.len().saturating_add(new.len()) <= PARALLEL_CANDIDATES_MAX)
    {
        // Nothing to filter, or small enough to copy: candidates run side by side.
        return encode_borrowed(&old, &new, prepared, opts, progress);
    }
    let Prepared {
        old_sha,
        new_sha,
        codings,
        ..
    } = prepared;
    let mut best: Option<Candidate> = None;
    let count = candidates.len();
    let threads = opts.threads.max(1);
    // What the images are filtered with now: restored only for another candidate, not after the last.
    let mut current = Filtering::none();
    for (index, filter) in candidates.iter().enumerate() {
        progress(EncodeStage::Candidate {
            filter: filter.filter,
            index,
            count,
        });
        refilter(&mut old, &mut new, &current, filter, threads);
        current = filter.clone();
        let delta = encode_core(
            &old,
            &new,
            &old_sha,
            &new_sha,
            filter.clone(),
            opts,
            threads,
            codings.per_candidate(count),
            progress,
        );
        keep_smaller(&mut best, delta?);
    }
    let best = best.ok_or_else(no_candidate)?;
    let Some(other) = codings.left_after(best.tried) else {
        return Ok(best.delta);
    };
    refilter(&mut old, &mut new, &current, &best.filter, threads);
    try_other_coding(best, other, &old, &new, &old_sha, &new_sha, opts, progress)
}

/// One filter candidate's delta, with the matching that produced it.
struct Candidate {
    filter: Filtering,
    delta: Vec<u8>,
    steps: Vec<Step>,
    /// The codings `delta` is the smallest of.
    tried: Codings,
}

/// The diff codings a candidate writes, keeping the smallest delta: where the new image's code and data
/// start (found on the image as given: a filter may rewrite its ELF header) and how zeros are coded in
/// each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Codings {
    /// Whether new is an ELF file (else `code_from` is 0 and the whole image is sampled as code).
    elf: bool,
    code_from: usize,
    data_from: usize,
    which: DataCodings,
    /// How the code's zeros are coded; `None` until [`Codings::sampled`] settles it on the candidate's
    /// own images (see [`sample_code_zeros`]).
    code: Option<CodeZeros>,
}

/// Which codings of the data's zeros (see [`DataZeros`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataCodings {
    /// This one: windows of the data chose it, or the image has no data to code either way.
    One(DataZeros),
    /// Both, keeping the smaller delta: the data is too small to sample. When the code is coded raw,
    /// the data alone is coded both ways instead (see [`Codings::sampled`]).
    Both,
    /// The one [`PROBE_WINDOWS`] windows of the data say is smaller, sampled on the candidate's own
    /// images (see [`sample_data_zeros`]; where, see [`SAMPLE_BESIDE_SORT_MIN`]).
    Sample,
}

impl Codings {
    /// The codings for `new`, the image as given.
    fn for_image(new: &[u8]) -> Self {
        let data_from = DiffCoding::for_image(new, DataZeros::Gaps).data_from;
        let exec = elf_exec_span(new);
        let code_from = exec.and_then(|(lo, _)| usize::try_from(lo).ok()).unwrap_or(0);
        let which = match new.len().checked_sub(data_from) {
            None | Some(0) => DataCodings::One(DataZeros::Gaps),
            Some(data_len) if data_len > PROBE_NEW * 2 => DataCodings::Sample,
            Some(_) => DataCodings::Both,
        };
        Codings {
            elf: exec.is_some(),
            code_from,
            data_from,
            which,
            code: None,
        }
    }

    /// These codings for a candidate with `filter`: an ARM filter over an ELF file settles the code's
    /// coding as raw without sampling it. Its ARM regions are coded raw whatever the sample says (see
    /// [`crate::coding::raw_spans`]), and the sample picked raw on every ARM executable of the corpus;
    /// it cost small pairs 0.1-0.3 s before their suffix sort. A filesystem image's code (all of it) is
    /// still sampled: there the windows mostly see file data.
    fn for_filter(self, filter: Filter) -> Codings {
        match self.code {
            None if self.elf && filter.is_arm() => Codings {
                code: Some(CodeZeros::Literals),
                ..self
            },
            _ => self,
        }
    }

    fn coding(self, data: DataZeros) -> DiffCoding<'static> {
        DiffCoding {
            data_from: self.data_from,
            data,
            code: self.code.unwrap_or_default(),
            raw: &[],
        }
    }

    /// Whether [`Codings::sampled`] has anything to settle.
    fn to_sample(self) -> bool {
        match (self.which, self.code) {
            (DataCodings::Sample, _) | (_, None) => true,
            // The data alone coded both ways (see `Codings::sampled`).
            (DataCodings::Both, Some(code)) => code == CodeZeros::Literals,
            (DataCodings::One(_), Some(_)) => false,
        }
    }

    /// These codings with a [`DataCodings::Sample`] and the code's coding settled on `o` and `n` (the
    /// candidate's images).
    fn sampled(self, o: &[u8], n: &[u8], opts: &EncodeOptions) -> Codings {
        let code = self
            .code
            .unwrap_or_else(|| sample_code_zeros(o, n, (self.code_from, self.data_from), opts));
        let which = match self.which {
            DataCodings::Sample => DataCodings::One(sample_data_zeros(o, n, self.data_from, opts)),
            // Not written both ways over a raw code diff (see `Codings::second`).
            DataCodings::Both if code == CodeZeros::Literals => {
                DataCodings::One(sample_small_data_zeros(o, n, self.data_from, opts))
            }
            other => other,
        };
        Codings {
            which,
            code: Some(code),
            ..self
        }
    }

    /// The coding written first, or alone: gaps when both are to be tried (smaller on most of the
    /// corpus).
    fn first(self) -> DiffCoding<'static> {
        match self.which {
            DataCodings::One(zeros) => self.coding(zeros),
            DataCodings::Both | DataCodings::Sample => self.coding(DataZeros::Gaps),
        }
    }

    /// The coding written after [`Codings::first`], when both are to be tried: never over a raw code
    /// diff, which a second write would compress twice, the slowest stream (systemd-arm64: 2.4 s against
    /// 1.4); the data alone is coded both ways then (see [`Codings::sampled`]).
    fn second(self) -> Option<DiffCoding<'static>> {
        let raw_code = self.code == Some(CodeZeros::Literals);
        (self.which == DataCodings::Both && !raw_code).then(|| self.coding(DataZeros::Literals))
    }

    /// What one of `count` candidates writes: all of these when alone; else only the first (or the
    /// sampled one), and the winner writes the second after (see [`Codings::left_after`]).
    fn per_candidate(self, count: usize) -> Codings {
        match self.which {
            DataCodings::Both if count > 1 => Codings {
                which: DataCodings::One(self.first().data),
                ..self
            },
            _ => self,
        }
    }

    /// The coding left to try after a candidate wrote `tried`.
    fn left_after(self, tried: Codings) -> Option<DiffCoding<'static>> {
        let settled = Codings {
            code: tried.code,
            ..self
        };
        settled.second().filter(|_| tried.second().is_none())
    }
}

/// Which coding of the zeros in new's data (from `data_from` on) codes [`PROBE_WINDOWS`] windows of it
/// smaller (see [`second_is_smaller`]). On the corpus it picks literals for esbuild's Go tables only (4%
/// smaller in full), and gaps for the C and Rust files, where literals are 2-4% larger in full: the same
/// picks as coding all of the data both ways.
fn sample_data_zeros(o: &[u8], n: &[u8], data_from: usize, opts: &EncodeOptions) -> DataZeros {
    let windows = windows_over(o, n, data_from as u64, n.len() as u64);
    data_zeros_over(o, n, &windows, opts)
}

/// Which coding of the zeros in new's data (from `data_from` on, too little of it for
/// [`sample_data_zeros`]' windows) codes the whole data smaller, matched against old's bytes from the same
/// relative offset on.
fn sample_small_data_zeros(o: &[u8], n: &[u8], data_from: usize, opts: &EncodeOptions) -> DataZeros {
    let new_start = data_from.min(n.len());
    let old_middle = u128::try_from(new_start).unwrap_or(0) * o.len() as u128 / n.len().max(1) as u128;
    let old_start = usize::try_from(old_middle)
        .unwrap_or(0)
        .saturating_sub(PROBE_OLD / 2);
    data_zeros_over(o, n, &[(old_start, o.len(), new_start, n.len())], opts)
}

/// Which coding of the data's zeros codes `windows` (all data) smaller.
fn data_zeros_over(o: &[u8], n: &[u8], windows: &[Window], opts: &EncodeOptions) -> DataZeros {
    let coding = |data| DiffCoding {
        data_from: 0,
        data,
        code: CodeZeros::Runs,
        raw: &[],
    };
    let pair = [coding(DataZeros::Gaps), coding(DataZeros::Literals)];
    if second_is_smaller(o, n, windows, opts, pair) {
        DataZeros::Literals
    } else {
        DataZeros::Gaps
    }
}

/// Which coding of the zeros in new's code (`code` = (start, end) in new; all of new when it is no ELF
/// file) codes [`PROBE_WINDOWS`] windows of it smaller (see [`second_is_smaller`]). On the corpus it
/// picks literals for every ARM executable and for esbuild (x86-64 Go), and runs for the x86-64 C and
/// Rust files.
fn sample_code_zeros(o: &[u8], n: &[u8], code: (usize, usize), opts: &EncodeOptions) -> CodeZeros {
    // The whole window is code.
    let coding = |code| DiffCoding {
        data_from: usize::MAX,
        data: DataZeros::Gaps,
        code,
        raw: &[],
    };
    let (lo, hi) = (code.0.min(n.len()), code.1.min(n.len()));
    let (lo, hi) = if hi > lo { (lo, hi) } else { (0, n.len()) };
    let windows = windows_over(o, n, lo as u64, hi as u64);
    let pair = [coding(CodeZeros::Runs), coding(CodeZeros::Literals)];
    if second_is_smaller(o, n, &windows, opts, pair) {
        CodeZeros::Literals
    } else {
        CodeZeros::Runs
    }
}

/// Whether the second of two codings codes `windows` smaller in total, each window matched against old
/// at the same relative offset and coded both ways at xz preset 6, unfiltered. A window that cannot be
/// coded counts for neither: the first (the default) is kept.
fn second_is_smaller(
    o: &[u8],
    n: &[u8],
    windows: &[Window],
    opts: &EncodeOptions,
    pair: [DiffCoding<'_>; 2],
) -> bool {
    let opts = EncodeOptions {
        level: 6,
        extreme: false,
        ..opts.clone()
    };
    let window_sizes = |&(old_start, old_end, new_start, new_end): &Window| -> Option<[usize; 2]> {
        let (ow, nw) = (o.get(old_start..old_end)?, n.get(new_start..new_end)?);
        let index = SuffixIndex::new(ow);
        let steps = match_parallel(&index, ow, nw, 1);
        let zero = [0u8; 32];
        let filter = Filtering::none();
        let size = |coding: DiffCoding<'_>| {
            write_delta(ow, nw, &steps, &zero, &zero, &filter, &opts, coding, false)
                .map(|d| d.len())
                .ok()
        };
        let [first, second] = pair;
        Some([size(first)?, size(second)?])
    };
    let totals = windows
        .iter()
        .map(window_sizes)
        .try_fold([0, 0], |[a, b], s| s.map(|[sa, sb]| [a + sa, b + sb]));
    matches!(totals, Some([first, second]) if second < first)
}

/// Writes the winner's diff with the `other` coding of its data too and keeps the smaller delta. `o` and
/// `n` are the images through the candidate's filter.
#[allow(clippy::too_many_arguments)]
fn try_other_coding(
    best: Candidate,
    other: DiffCoding<'_>,
    o: &[u8],
    n: &[u8],
    old_sha: &[u8; 32],
    new_sha: &[u8; 32],
    opts: &EncodeOptions,
    progress: &(dyn Fn(EncodeStage) + Sync),
) -> Result<Vec<u8>> {
    progress(EncodeStage::Compressing(best.filter.filter));
    let delta = write_delta(
        o,
        n,
        &best.steps,
        old_sha,
        new_sha,
        &best.filter,
        opts,
        other,
        true,
    )?;
    let delta = smaller(best.delta, delta);
    progress(EncodeStage::Finished {
        filter: best.filter.filter,
        delta_len: delta.len() as u64,
    });
    Ok(delta)
}

/// The smaller of two deltas (the first on a tie).
fn smaller(first: Vec<u8>, second: Vec<u8>) -> Vec<u8> {
    if second.len() < first.len() {
        second
    } else {
        first
    }
}

/// Keeps the smaller of the best candidate so far and a new one (the first on a tie).
fn keep_smaller(best: &mut Option<Candidate>, candidate: Candidate) {
    if best
        .as_ref()
        .is_none_or(|b| candidate.delta.len() < b.delta.len())
    {
        *best = Some(candidate);
    }
}

/// The error for an empty candidate list (`candidates` always yields at least the unfiltered one).
fn no_candidate() -> Error {
    Error::TooLarge {
        what: "filter candidate list (empty)",
        len: 0,
        max: 0,
    }
}

/// What the encoder settles before running candidates.
struct Prepared {
    /// The candidates to run.
    candidates: Vec<Filtering>,
    /// The codings to write.
    codings: Codings,
    /// sha256 of the images as given.
    old_sha: [u8; 32],
    new_sha: [u8; 32],
}

/// From this combined input size on, the probe's samples run on both threads. Below it, on one thread of
/// its own: samples taken on this thread too left up to 1.5 MiB of its heap resident beside the suffix
/// array (systemd).
const PARALLEL_PROBE_MIN: usize = 16 << 20;

/// The candidates and codings to run, and the images' hashes (taken while the probe runs). Only the
/// winner's suffix array is built, after the probe: building the unfiltered one beside the probe, in case
/// it won, cost the filesystem images 1.5 s (rootfs: 4.5 s in all against 3.0), since a filter wins on
/// both.
fn prepare(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Prepared {
    let combined = old.len().saturating_add(new.len());
    let prepared = |candidates, (old_sha, new_sha)| Prepared {
        codings: Codings::for_image(new),
        candidates,
        old_sha,
        new_sha,
    };
    let auto = opts.filters == FilterChoice::Auto && opts.threads >= 2;
    if !auto {
        let candidates = candidates(old, new, opts);
        return prepared(candidates, (sha256(old), sha256(new)));
    }
    match Probe::plan(old, new, plausible_filters(old, new), opts) {
        Choice::Decided(list) => prepared(list, (sha256(old), sha256(new))),
        Choice::Probe(probe) => {
            let ((), hashes) = run_both(
                true,
                || probe.work(),
                || {
                    let hashes = (sha256(old), sha256(new));
                    if combined >= PARALLEL_PROBE_MIN {
                        probe.work();
                    }
                    hashes
                },
            );
            prepared(probe.decide(), hashes)
        }
    }
}

/// The candidates to run, on this thread: for `Auto`, the plausible filters narrowed by the probe.
fn candidates(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Vec<Filtering> {
    match &opts.filters {
        FilterChoice::Auto => match Probe::plan(old, new, plausible_filters(old, new), opts) {
            Choice::Decided(list) => list,
            Choice::Probe(probe) => {
                probe.work();
                probe.decide()
            }
        },
        FilterChoice::Only(list) => {
            // Same spans as Auto would pick for these filters.
            let mut out: Vec<Filtering> = list.iter().map(|&f| filtering_for(old, new, f)).collect();
            if out.is_empty() {
                out.push(Filtering::none());
            }
            out
        }
    }
}

/// Bytes of new each probe window matches, and of old around the same relative offset it matches against.
/// Halving them from 256 and 512 KiB halved the probe's time and kept every pick of the corpus, though
/// closer: lightningcss's x86-rip 1.1% smaller than none in the sample (1% before, 0.8% in full).
const PROBE_NEW: usize = 128 << 10;
const PROBE_OLD: usize = 256 << 10;
/// Windows the probe samples in the filtered span (and [`sample_data_zeros`] in the data).
const PROBE_WINDOWS: usize = 4;

/// (old start, old end, new start, new end).
type Window = (usize, usize, usize, usize);

/// The candidates, or the probe that will pick them.
enum Choice<'a> {
    /// No probe needed.
    Decided(Vec<Filtering>),
    /// To sample first.
    Probe(Probe<'a>),
}

/// A sample that picks what runs in full. Each filter candidate encodes [`PROBE_WINDOWS`] windows of new
/// ([`PROBE_NEW`] bytes, spread over the filtered span) against the old bytes at the same relative offset
/// ([`PROBE_OLD`] bytes), xz at preset 6 (same sizes as 9 extreme on these windows); the smallest total
/// wins alone. On the corpus the margins were 20% (systemd), 5.3% (esbuild), 1.1% (lightningcss, x86-rip
/// against none; 0.8% in full), 5.8% (numpy) and 65% (rootfs), all on the side the full run picks.
/// Jobs (one per candidate and window) are taken in turn by every thread that calls [`Probe::work`].
struct Probe<'a> {
    old: &'a [u8],
    new: &'a [u8],
    candidates: Vec<Filtering>,
    windows: Vec<Window>,
    opts: EncodeOptions,
    next_job: AtomicUsize,
    /// Each job's sample delta size (`None`: not done, or it failed).
    sizes: Mutex<Vec<Option<usize>>>,
}

/// [`PROBE_WINDOWS`] window pairs spread over new[lo..hi), with old at the same relative offsets.
fn windows_over(old: &[u8], new: &[u8], lo: u64, hi: u64) -> Vec<Window> {
    let block = FILTER_BLOCK;
    (0..PROBE_WINDOWS)
        .map(|k| {
            let at = lo + (hi - lo) * (2 * k as u64 + 1) / (2 * PROBE_WINDOWS as u64);
            let middle = usize::try_from(at).unwrap_or(0);
            let new_start = middle.saturating_sub(PROBE_NEW / 2) / block * block;
            let new_end = (new_start + PROBE_NEW).min(new.len());
            let old_middle =
                usize::try_from(middle as u128 * old.len() as u128 / new.len().max(1) as u128).unwrap_or(0);
            let old_start = old_middle.saturating_sub(PROBE_OLD / 2) / block * block;
            let old_end = (old_start + PROBE_OLD).min(old.len());
            (old_start, old_end, new_start, new_end)
        })
        .collect()
}

impl<'a> Probe<'a> {
    /// The probe over `candidates`' windows, or the candidates themselves when there is nothing to
    /// choose (one candidate, or new too small for the windows).
    fn plan(old: &'a [u8], new: &'a [u8], candidates: Vec<Filtering>, opts: &EncodeOptions) -> Choice<'a> {
        if candidates.len() < 2 || new.len() <= PROBE_NEW * 2 {
            return Choice::Decided(candidates);
        }
        // The hull of new's filtered regions.
        let (lo, hi) = candidates
            .iter()
            .flat_map(|c| c.new.regions())
            .map(|r| (r.lo, r.hi))
            .fold((u64::MAX, 0u64), |(a, b), (l, h)| (a.min(l), b.max(h)));
        let new_len = new.len() as u64;
        let (lo, hi) = (lo.min(new_len), hi.min(new_len));
        let (lo, hi) = if hi > lo { (lo, hi) } else { (0, new_len) };
        let windows = windows_over(old, new, lo, hi);
        let jobs = candidates.len() * windows.len();
        Choice::Probe(Probe {
            old,
            new,
            candidates,
            windows,
            opts: EncodeOptions {
                level: 6,
                extreme: false,
                ..opts.clone()
            },
            next_job: AtomicUsize::new(0),
            sizes: Mutex::new(vec![None; jobs]),
        })
    }

    /// One window's sample delta size through one candidate's filter.
    fn sample(&self, filter: &Filtering, window: Window) -> Option<usize> {
        let (old_start, old_end, new_start, new_end) = window;
        let mut o = self.old.get(old_start..old_end)?.to_vec();
        let mut n = self.new.get(new_start..new_end)?.to_vec();
        filter.old.encode_in_place(&mut o, old_start as u64);
        filter.new.encode_in_place(&mut n, new_start as u64);
        let index = SuffixIndex::new(&o);
        let steps = match_parallel(&index, &o, &n, 1);
        let zero = [0u8; 32];
        // A window of code is coded as the full run codes code.
        let coding = DiffCoding {
            data_from: usize::MAX,
            data: DataZeros::Gaps,
            code: CodeZeros::Runs,
            raw: &[],
        };
        // The header alone, without the region table: a window's sample counts the table once per window.
        let delta = write_delta(
            &o,
            &n,
            &steps,
            &zero,
            &zero,
            &Filtering::none(),
            &self.opts,
            coding,
            false,
        );
        delta.ok().map(|d| d.len())
    }

    /// Takes jobs until none is left.
    fn work(&self) {
        let per = self.windows.len().max(1);
        loop {
            let job = self.next_job.fetch_add(1, Ordering::Relaxed);
            let (Some(filter), Some(&window)) = (self.candidates.get(job / per), self.windows.get(job % per))
            else {
                return;
            };
            let size = self.sample(filter, window);
            if let Ok(mut sizes) = self.sizes.lock() {
                if let Some(slot) = sizes.get_mut(job) {
                    *slot = size;
                }
            }
        }
    }

    /// The candidates left once every job is done (every thread that worked has returned).
    fn decide(self) -> Vec<Filtering> {
        let candidates = self.candidates;
        let per = self.windows.len().max(1);
        let Ok(jobs) = self.sizes.into_inner() else {
            return candidates;
        };
        let sizes: Option<Vec<usize>> = jobs.chunks(per).map(|c| c.iter().copied().sum()).collect();
        let Some(sizes) = sizes else {
            return candidates;
        };
        let Some((best, _)) = sizes.iter().enumerate().min_by_key(|&(_, &s)| s) else {
            return candidates;
        };
        // The best sample's candidate runs alone, however close the others came: running several side by
        // side doubles the time and the memory for a few percent at most.
        candidates
            .get(best)
            .map_or(candidates.clone(), |c| vec![c.clone()])
    }
}

/// The largest old or new image [`encode`] takes, in bytes (`i32::MAX`: the suffix array indexes
/// with i32). Callers check sizes against it before reading images into memory.
pub const MAX_INPUT_LEN: u64 = i32::MAX as u64;

fn check_sizes(old: &[u8], new: &[u8]) -> Result<()> {
    // divsufsort indexes with i32.
    let max = MAX_INPUT_LEN;
    for (what, data) in [("old image", old), ("new image", new)] {
        let len = data.len() as u64;
        if len > max {
            return Err(Error::TooLarge { what, len, max });
        }
    }
    Ok(())
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// From this old-image size on, a candidate's data is sampled beside its suffix sort (numpy: 0.05 s
/// sooner); below it, before the sort, on a thread of its own. On systemd, whose memory budget is 4x
/// its 6.4 MiB of input, the samples' buffers cost: beside the sort 27.2 MiB at the peak; before it on
/// this thread (or on two) 24.9-26.7 MB in a third of the runs, where the freed samples stayed resident
/// in this thread's heap; on a thread of its own 23.1-23.4 MB in 14 runs out of 14.
const SAMPLE_BESIDE_SORT_MIN: usize = 8 << 20;

#[allow(clippy::too_many_arguments)]
fn encode_core(
    o: &[u8],
    n: &[u8],
    old_sha: &[u8; 32],
    new_sha: &[u8; 32],
    filter: Filtering,
    opts: &EncodeOptions,
    threads: usize,
    codings: Codings,
    progress: &(dyn Fn(EncodeStage) + Sync),
) -> Result<Candidate> {
    progress(EncodeStage::Indexing(filter.filter));
    let codings = codings.for_filter(filter.filter);
    let (steps, codings) = {
        let build = || SuffixIndex::build(o, threads >= 2);
        let beside = threads >= 2 && o.len() >= SAMPLE_BESIDE_SORT_MIN;
        let (index, codings) = match codings.to_sample() {
            // The data and code are sampled while old is sorted: the sort keeps one core, the tables
            // beside it a fraction of the other.
            true if beside => {
                let (codings, index) = run_both(true, || codings.sampled(o, n, opts), build);
                (index, codings)
            }
            // Before the sort, on a thread of its own: see `SAMPLE_BESIDE_SORT_MIN`.
            true => {
                let codings = std::thread::scope(|scope| {
                    scope
                        .spawn(|| codings.sampled(o, n, opts))
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                });
                (build(), codings)
            }
            false => (build(), codings),
        };
        progress(EncodeStage::Matching(filter.filter));
        (match_parallel(&index, o, n, threads), codings)
    };
    progress(EncodeStage::Compressing(filter.filter));
    let write = |coding: DiffCoding<'_>, parallel: bool| {
        write_delta(o, n, &steps, old_sha, new_sha, &filter, opts, coding, parallel)
    };
    let parallel = threads >= 2;
    let delta = match codings.second() {
        Some(second) => {
            // Both codings at once: the first's streams one after the other on this thread (one more
            // xz encoder alive, not five), the second's on threads of their own.
            let (second, first) = run_both(
                parallel,
                || write(second, parallel),
                || write(codings.first(), false),
            );
            smaller(first?, second?)
        }
        None => write(codings.first(), parallel)?,
    };
    progress(EncodeStage::Finished {
        filter: filter.filter,
        delta_len: delta.len() as u64,
    });
    Ok(Candidate {
        filter,
        delta,
        steps,
        tried: codings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delta of `new` from `old` over `steps`, unfiltered, its diff written with `coding`.
    fn whole_delta(
        old: &[u8],
        new: &[u8],
        steps: &[Step],
        opts: &EncodeOptions,
        coding: DiffCoding<'_>,
    ) -> Vec<u8> {
        let (old_sha, new_sha) = (sha256(old), sha256(new));
        let none = Filtering::none();
        write_delta(old, new, steps, &old_sha, &new_sha, &none, opts, coding, true).unwrap()
    }

    /// A lone machine-code candidate with no probe to pick the data's coding codes its diff both ways at
    /// once on two threads: the same delta as one thread, which codes them one after the other, and it
    /// applies.
    /// An ARM candidate settles an ELF file's code as raw (no sample), and a small data span is then
    /// coded both ways alone rather than the whole delta twice; other filters, and filesystem images,
    /// still sample the code.
    #[test]
    fn arm_candidates_code_an_elf_files_code_raw_without_sampling() {
        let mut elf = vec![0u8; 300_000];
        crate::filter::write_test_elf_header(&mut elf, 200_000);
        let codings = Codings::for_image(&elf);
        assert_eq!(codings.which, DataCodings::Both, "100,000 bytes of data");
        let arm = codings.for_filter(Filter::Arm64);
        assert_eq!(arm.code, Some(CodeZeros::Literals));
        assert!(arm.to_sample(), "the data is still sampled");
        let sampled = arm.sampled(&elf, &elf, &EncodeOptions::default());
        assert!(matches!(sampled.which, DataCodings::One(_)), "{sampled:?}");
        assert_eq!(sampled.second(), None, "one coding written");
        assert_eq!(codings.left_after(sampled), None, "and none after");
        for filter in [Filter::None, Filter::X86Full] {
            assert_eq!(codings.for_filter(filter).code, None, "{filter:?}");
        }
        let image = vec![0u8; 300_000];
        assert_eq!(Codings::for_image(&image).for_filter(Filter::Arm64).code, None);
    }

    #[test]
    fn lone_candidate_writes_both_codings_at_once_with_the_same_result() {
        // Call-like bytes (E8 rel32) whose targets move by 0x40 in new, among noise.
        let old: Vec<u8> = (0..400_000u32)
            .flat_map(|i| {
                let x = i.wrapping_mul(2_654_435_761) >> 20;
                [
                    0xe8,
                    x.to_le_bytes()[0],
                    (x >> 8) as u8 & 0x0f,
                    0,
                    0,
                    (i % 7) as u8,
                    0x90,
                    0x48,
                ]
            })
            .take(400_000)
            .collect();
        let mut old = old;
        crate::filter::write_test_elf_header(&mut old, 200_000);
        let mut new = old.clone();
        for i in (0..200_000).step_by(8) {
            if new[i] == 0xe8 {
                new[i + 1] = new[i + 1].wrapping_sub(0x40);
            }
        }
        // A table in the data whose entries all move by the same amount.
        for i in (200_000..new.len()).step_by(24) {
            new[i] = new[i].wrapping_add(0x18);
        }
        new.splice(5000..5000, *b"inserted bytes");
        let codings = Codings::for_image(&new);
        assert_eq!(codings.which, DataCodings::Both, "no data to code both ways");
        for filter in [Filter::X86, Filter::X86Full] {
            let opts = |threads| EncodeOptions {
                level: 3,
                threads,
                filters: FilterChoice::Only(vec![filter]),
                ..EncodeOptions::default()
            };
            let one = encode(&old, &new, &opts(1)).unwrap();
            let two = encode(&old, &new, &opts(2)).unwrap();
            assert!(one == two, "{filter:?}: two threads give another delta");
            let owned = encode_owned(old.clone(), new.clone(), &opts(2), &|_| {}).unwrap();
            assert!(one == owned, "{filter:?}: encode_owned gives another delta");
            let mut out = Vec::new();
            crate::apply(std::io::Cursor::new(&old), two.as_slice(), &mut out).unwrap();
            assert!(out == new, "{filter:?} does not round-trip");
        }
    }

    /// The probe keeps the candidate with the smallest total over its windows (not the one that wins
    /// most windows), and keeps every candidate when a sample failed.
    #[test]
    fn probe_keeps_the_smallest_total() {
        let (old, new) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        let candidates = vec![
            Filtering::none(),
            Filtering::everywhere(Filter::X86Rip, 1 << 20, 1 << 20),
            Filtering::everywhere(Filter::X86Full, 1 << 20, 1 << 20),
        ];
        let probe = |sizes: Vec<Option<usize>>| Probe {
            old: &old,
            new: &new,
            candidates: candidates.clone(),
            windows: vec![(0, 0, 0, 0); 2],
            opts: EncodeOptions::default(),
            next_job: AtomicUsize::new(0),
            sizes: Mutex::new(sizes),
        };
        // None wins one window by a little, x86-rip the other by a lot.
        let sizes = vec![Some(100), Some(500), Some(101), Some(300), Some(150), Some(400)];
        assert_eq!(probe(sizes.clone()).decide(), vec![candidates[1].clone()]);
        let mut failed = sizes;
        failed[4] = None;
        assert_eq!(probe(failed).decide(), candidates);
    }

    /// Windows of an ELF file's data pick the coding of its zeros that is smaller on the whole data:
    /// gaps for single changed bytes at a fixed or varying stride, literals for a table of fields that
    /// grow by a few different amounts.
    #[test]
    fn data_windows_pick_the_coding_that_is_smaller_in_full() {
        let code_len = 64 << 10;
        let old: Vec<u8> = (0..(2u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let mut old = old;
        crate::filter::write_test_elf_header(&mut old, code_len as u64);
        let strided = |stride: usize, step: usize| {
            let mut new = old.clone();
            let mut at = code_len;
            let mut k = 0usize;
            while at < new.len() {
                new[at] = new[at].wrapping_add(0x18);
                at += stride + (k * step) % 61;
                k += 1;
            }
            new
        };
        let opts = EncodeOptions {
            level: 6,
            ..EncodeOptions::default()
        };
        // A table of 32-bit fields every 16 bytes, each grown by one of 7 amounts.
        let mut table = old.clone();
        for (k, at) in (code_len..table.len() - 4).step_by(16).enumerate() {
            let field = u32::from_le_bytes([table[at], table[at + 1], table[at + 2], table[at + 3]]);
            let grown = field.wrapping_add(0x10000 + (u32::try_from(k % 7).unwrap()) * 8);
            table[at..at + 4].copy_from_slice(&grown.to_le_bytes());
        }
        let mut picks = Vec::new();
        for new in [strided(24, 0), strided(40, 7), table] {
            let codings = Codings::for_image(&new);
            assert_eq!(codings.which, DataCodings::Sample);
            let index = SuffixIndex::new(&old);
            let steps = match_parallel(&index, &old, &new, 1);
            let full = |data| whole_delta(&old, &new, &steps, &opts, codings.coding(data)).len();
            let (gaps, literals) = (full(DataZeros::Gaps), full(DataZeros::Literals));
            let smaller = if literals < gaps {
                DataZeros::Literals
            } else {
                DataZeros::Gaps
            };
            let picked = sample_data_zeros(&old, &new, codings.data_from, &opts);
            assert_eq!(picked, smaller, "gaps {gaps}, literals {literals}");
            picks.push(picked);
        }
        assert_eq!(
            picks,
            [DataZeros::Gaps, DataZeros::Gaps, DataZeros::Literals],
            "the cases no longer cover both codings"
        );
    }

    /// Windows of an image's code pick the coding of its zeros that is smaller on the whole image: runs
    /// for single changed bytes far apart, literals for 32-bit words changed every few words, as
    /// branch and address words change in AArch64 code when the code they point at moves.
    #[test]
    fn code_windows_pick_the_coding_that_is_smaller_in_full() {
        let old: Vec<u8> = (0..(2u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let changed = |every: usize, spread: usize, word: bool| {
            let mut new = old.clone();
            let (mut at, mut k) = (64usize, 0usize);
            while at + 4 < new.len() {
                if word {
                    let w = u32::from_le_bytes([new[at], new[at + 1], new[at + 2], new[at + 3]]);
                    let moved = w.wrapping_add(u32::try_from(1 + k % 3).unwrap() << 2);
                    new[at..at + 4].copy_from_slice(&moved.to_le_bytes());
                } else {
                    new[at] = new[at].wrapping_add(0x18);
                }
                at += every + 4 * ((k * 7) % spread);
                k += 1;
            }
            new
        };
        let opts = EncodeOptions {
            level: 6,
            ..EncodeOptions::default()
        };
        let mut picks = Vec::new();
        for new in [changed(4096, 61, false), changed(8, 5, true)] {
            let codings = Codings::for_image(&new);
            assert_eq!(codings.code, None, "the code's coding is sampled");
            let index = SuffixIndex::new(&old);
            let steps = match_parallel(&index, &old, &new, 1);
            let full = |code| {
                let coding = Codings {
                    code: Some(code),
                    ..codings
                };
                let delta = whole_delta(&old, &new, &steps, &opts, coding.first());
                let mut out = Vec::new();
                crate::apply(std::io::Cursor::new(&old), delta.as_slice(), &mut out).unwrap();
                assert!(out == new, "{code:?} does not round-trip");
                delta.len()
            };
            let (runs, literals) = (full(CodeZeros::Runs), full(CodeZeros::Literals));
            let smaller = if literals < runs {
                CodeZeros::Literals
            } else {
                CodeZeros::Runs
            };
            let picked = sample_code_zeros(&old, &new, (codings.code_from, codings.data_from), &opts);
            assert_eq!(picked, smaller, "runs {runs}, literals {literals}");
            picks.push(picked);
        }
        assert_eq!(
            picks,
            [CodeZeros::Runs, CodeZeros::Literals],
            "the cases no longer cover both codings"
        );
    }
}
