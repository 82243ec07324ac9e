//! The publisher side: bsdiff-style matching over a suffix array, per filter candidate, streams compressed
//! separately with xz (LZMA2), smallest candidate kept.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};
use xz2::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};

use crate::filter::{elf_exec_span, filtering_for, plausible_filters, Filter, Filtering, FILTER_BLOCK};
use crate::format::{
    put_varint, varint_len, write_control, ControlEntry, DeltaHeader, RunCarry, SegmentHeader, CONTROL,
    EXTRA, FORMAT_VERSION, LITERALS, LITERAL_LENGTHS, MAX_WINDOW_LOG, MIN_WINDOW_LOG, SEGMENT_CONTROL_MAX,
    SEGMENT_EXTRA_MAX, SEGMENT_RUNS_MAX, SIDE_MAX_WINDOW_LOG, STREAM_NAMES, TAG_END, ZERO_RUNS,
};
use crate::suffix::SuffixIndex;
use crate::{Error, Result};

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

/// `data` through `filter`: borrowed when the filter changes nothing.
fn filtered(data: &[u8], filter: Filtering) -> Cow<'_, [u8]> {
    if filter.filter == Filter::None {
        return Cow::Borrowed(data);
    }
    let mut copy = data.to_vec();
    filter.encode_in_place(&mut copy, 0);
    Cow::Owned(copy)
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
    prepared: Prepared<'_>,
    opts: &EncodeOptions,
    progress: &(dyn Fn(EncodeStage) + Sync),
) -> Result<Vec<u8>> {
    let threads = opts.threads.max(1);
    let Prepared {
        candidates,
        index,
        old_sha,
        new_sha,
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
    let unfiltered = candidates.iter().any(|c| c.filter == Filter::None);
    let index = Mutex::new(index);
    let run = |k: usize, filter: Filtering| {
        progress(EncodeStage::Candidate {
            filter: filter.filter,
            index: k,
            count,
        });
        let (o, n) = (filtered(old, filter), filtered(new, filter));
        // The unfiltered index serves `None`, or lends its array to the first filtered candidate.
        let taken = match (filter.filter, unfiltered) {
            (Filter::None, _) | (_, false) => index.lock().ok().and_then(|mut i| i.take()),
            _ => None,
        };
        let source = match taken {
            Some(built) if filter.filter == Filter::None => IndexSource::Built(built),
            Some(other) => IndexSource::Buffer(other.into_buffer()),
            None => IndexSource::Buffer(Vec::new()),
        };
        // A lone candidate codes its diff both ways at once (see `encode_core`).
        let raw_too = count == 1 && raw_coding_may_pay(filter.filter);
        encode_core(
            &o, &n, old_sha, new_sha, filter, source, opts, per, raw_too, progress,
        )
    };
    let mut best: Option<Candidate> = None;
    if side_by_side {
        let results: Vec<Result<Candidate>> = std::thread::scope(|scope| {
            let handles: Vec<_> = candidates
                .iter()
                .enumerate()
                .map(|(index, &filter)| scope.spawn(move || run(index, filter)))
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
        for (index, &filter) in candidates.iter().enumerate() {
            keep_smaller(&mut best, run(index, filter)?);
        }
    }
    let best = best.ok_or_else(no_candidate)?;
    if best.raw_tried || !raw_coding_may_pay(best.filter.filter) {
        return Ok(best.delta);
    }
    let (o, n) = (filtered(old, best.filter), filtered(new, best.filter));
    try_raw_coding(best, &o, &n, old_sha, new_sha, opts, progress)
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
    let unfiltered_only = matches!(candidates.as_slice(), [c] if c.filter == Filter::None);
    if unfiltered_only
        || (candidates.len() >= 2 && old.len().saturating_add(new.len()) <= PARALLEL_CANDIDATES_MAX)
    {
        // Nothing to filter, or small enough to copy: candidates run side by side.
        return encode_borrowed(&old, &new, prepared, opts, progress);
    }
    let Prepared {
        index,
        old_sha,
        new_sha,
        ..
    } = prepared;
    // The images are filtered in place below: the unfiltered index (if any) only lends its array.
    let mut spare = index.map(SuffixIndex::into_buffer).unwrap_or_default();
    let mut best: Option<Candidate> = None;
    let count = candidates.len();
    for (index, &filter) in candidates.iter().enumerate() {
        progress(EncodeStage::Candidate {
            filter: filter.filter,
            index,
            count,
        });
        filter.encode_in_place(&mut old, 0);
        filter.encode_in_place(&mut new, 0);
        let delta = encode_core(
            &old,
            &new,
            &old_sha,
            &new_sha,
            filter,
            IndexSource::Buffer(std::mem::take(&mut spare)),
            opts,
            opts.threads.max(1),
            count == 1 && raw_coding_may_pay(filter.filter),
            progress,
        );
        filter.decode_in_place(&mut old, 0);
        filter.decode_in_place(&mut new, 0);
        keep_smaller(&mut best, delta?);
    }
    let best = best.ok_or_else(no_candidate)?;
    let filter = best.filter;
    if best.raw_tried || !raw_coding_may_pay(filter.filter) {
        return Ok(best.delta);
    }
    filter.encode_in_place(&mut old, 0);
    filter.encode_in_place(&mut new, 0);
    try_raw_coding(best, &old, &new, &old_sha, &new_sha, opts, progress)
}

/// One filter candidate's run-length-coded delta, with the matching that produced it.
struct Candidate {
    filter: Filtering,
    delta: Vec<u8>,
    steps: Vec<Step>,
    /// Whether `delta` is already the smaller of the run-length and the raw coding.
    raw_tried: bool,
}

/// When a machine-code filter won, codes its diff raw as well and keeps the smaller delta: after such a
/// filter the diff keeps repeating multi-byte patterns that LZMA2 on the raw diff codes ~10% smaller (on
/// the corpus's executables), at the cost of compressing every diff byte. `o` and `n` are the images
/// through the candidate's filter.
fn try_raw_coding(
    best: Candidate,
    o: &[u8],
    n: &[u8],
    old_sha: &[u8; 32],
    new_sha: &[u8; 32],
    opts: &EncodeOptions,
    progress: &(dyn Fn(EncodeStage) + Sync),
) -> Result<Vec<u8>> {
    progress(EncodeStage::Compressing(best.filter.filter));
    let raw = write_delta(
        o,
        n,
        &best.steps,
        old_sha,
        new_sha,
        best.filter,
        opts,
        DiffCoding::Raw,
        true,
    )?;
    let delta = if raw.len() < best.delta.len() {
        raw
    } else {
        best.delta
    };
    progress(EncodeStage::Finished {
        filter: best.filter.filter,
        delta_len: delta.len() as u64,
    });
    Ok(delta)
}

/// Whether [`try_raw_coding`] is worth its time after `filter`: after filters that make calls absolute
/// (systemd, esbuild: raw 15% smaller); not unfiltered, nor after RIP-relative operands alone (numpy: raw
/// larger, 5 s more).
fn raw_coding_may_pay(filter: Filter) -> bool {
    !matches!(filter, Filter::None | Filter::X86Rip)
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
struct Prepared<'a> {
    /// The candidates to run.
    candidates: Vec<Filtering>,
    /// The unfiltered old image's suffix array, when built while the probe ran.
    index: Option<SuffixIndex<'a>>,
    /// sha256 of the images as given.
    old_sha: [u8; 32],
    new_sha: [u8; 32],
}

/// From this combined input size on, the unfiltered suffix array is built beside the probe (rootfs: 2.4 s
/// against the probe's ~1 s; `None` wins there). Below it the array takes about as long as the probe
/// (~0.5 s on the 10 MB pairs) and a filter wins on every ELF pair of the corpus, so the array was built
/// for nothing: the probe gets both cores instead (see [`PARALLEL_PROBE_MIN`]).
const SPECULATIVE_INDEX_MIN: usize = 64 << 20;
/// From this combined input size on (and below [`SPECULATIVE_INDEX_MIN`]), the probe's samples run on
/// both threads. Below it, on one thread of its own: the unfiltered array or the samples of a second
/// thread on top of the probe's buffers broke the 4x-inputs memory budget (systemd: 27-30 MB for 6.4
/// MiB of input).
const PARALLEL_PROBE_MIN: usize = 16 << 20;

/// The candidates to run, their hashes, and the unfiltered old image's suffix array when it was built
/// while the probe ran (on a core the probe leaves idle: the array is needed whenever the probe keeps
/// `None`, three pairs out of five on the corpus, and otherwise lends its allocation to the filtered
/// candidate). The images are hashed meanwhile too.
fn prepare<'a>(old: &'a [u8], new: &[u8], opts: &EncodeOptions) -> Prepared<'a> {
    let combined = old.len().saturating_add(new.len());
    let auto = opts.filters == FilterChoice::Auto && opts.threads >= 2;
    if auto && (PARALLEL_PROBE_MIN..SPECULATIVE_INDEX_MIN).contains(&combined) {
        // The probe's samples on both threads, then only the winner's array is built.
        let (candidates, (old_sha, new_sha)) = match Probe::plan(old, new, plausible_filters(old, new), opts)
        {
            Choice::Decided(list) => (list, (sha256(old), sha256(new))),
            Choice::Probe(probe) => {
                let hashes = std::thread::scope(|scope| {
                    let shared = &probe;
                    let helper = scope.spawn(move || shared.work());
                    let hashes = (sha256(old), sha256(new));
                    shared.work();
                    helper
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    hashes
                });
                (probe.decide(), hashes)
            }
        };
        return Prepared {
            candidates,
            index: None,
            old_sha,
            new_sha,
        };
    }
    if !(auto && combined >= SPECULATIVE_INDEX_MIN) {
        let (candidates, (old_sha, new_sha)) = if opts.threads >= 2 {
            // The probe on a thread of its own, whose allocator arena keeps what it freed for the
            // matching threads that reuse it: on this thread that memory stayed beside the suffix
            // array (systemd's peak +4 MiB).
            std::thread::scope(|scope| {
                let candidates = scope.spawn(|| candidates(old, new, opts));
                let hashes = (sha256(old), sha256(new));
                let candidates = candidates
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (candidates, hashes)
            })
        } else {
            (candidates(old, new, opts), (sha256(old), sha256(new)))
        };
        return Prepared {
            candidates,
            index: None,
            old_sha,
            new_sha,
        };
    }
    // The probe (if any) is set up here while the other thread sorts; that thread then takes the
    // probe's samples left, if any (on the 10 MB pairs the array takes ~0.5 s, the probe's 12 samples
    // ~0.8 s on one thread).
    let probe: OnceLock<Probe<'_>> = OnceLock::new();
    let (decided, index, old_sha, new_sha) = std::thread::scope(|scope| {
        let shared = &probe;
        let index = scope.spawn(move || {
            let index = SuffixIndex::build(old, Vec::new(), true);
            if let Some(probe) = shared.get() {
                probe.work();
            }
            index
        });
        let decided = match Probe::plan(old, new, plausible_filters(old, new), opts) {
            Choice::Decided(list) => Some(list),
            Choice::Probe(p) => {
                shared.get_or_init(|| p).work();
                None
            }
        };
        let (old_sha, new_sha) = (sha256(old), sha256(new));
        let index = index
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (decided, index, old_sha, new_sha)
    });
    // Every sample is done: both threads that took jobs have returned from `work`.
    let candidates = match (decided, probe.into_inner()) {
        (Some(list), _) => list,
        (None, Some(probe)) => probe.decide(),
        (None, None) => vec![Filter::None.everywhere()],
    };
    Prepared {
        candidates,
        index: Some(index),
        old_sha,
        new_sha,
    }
}

/// The candidates to run: for `Auto`, the plausible filters narrowed by the probe.
fn candidates(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Vec<Filtering> {
    match &opts.filters {
        FilterChoice::Auto => probe_candidates(old, new, plausible_filters(old, new), opts),
        FilterChoice::Only(list) => {
            // Same spans as Auto would pick for these filters.
            let mut out: Vec<Filtering> = list.iter().map(|&f| filtering_for(old, new, f)).collect();
            if out.is_empty() {
                out.push(Filter::None.everywhere());
            }
            out
        }
    }
}

/// Bytes of new each probe window matches, and of old around the same relative offset it matches against.
const PROBE_NEW: usize = 256 << 10;
const PROBE_OLD: usize = 512 << 10;
/// Windows the probe samples.
const PROBE_WINDOWS: usize = 4;
/// Narrows `candidates` to the one a sample says wins: each candidate encodes a
/// window of new (in the middle of the filtered span, [`PROBE_NEW`] bytes) against the old bytes at
/// the same relative offset ([`PROBE_OLD`] bytes), xz at preset 6 (same sizes as 9 extreme on these
/// windows). On the corpus the sample's margins (x86 vs none, runs coding) were 20% (systemd), 5.3%
/// (esbuild), 12.8% (lightningcss), 5.8% (numpy), 65% (rootfs), all on the side the full run picks; with
/// the x86-64 RIP-relative filters (x86-full, x86-rip and none) the closest call is lightningcss, x86-rip
/// 1% smaller than none in the sample and 0.9% in full.
fn probe_candidates(
    old: &[u8],
    new: &[u8],
    candidates: Vec<Filtering>,
    opts: &EncodeOptions,
) -> Vec<Filtering> {
    match Probe::plan(old, new, candidates, opts) {
        Choice::Decided(list) => list,
        Choice::Probe(probe) => {
            probe.work();
            probe.decide()
        }
    }
}

/// The candidates, or the probe that will pick them.
enum Choice<'a> {
    /// No probe needed.
    Decided(Vec<Filtering>),
    /// To sample first.
    Probe(Probe<'a>),
}

/// The probe's samples, one job per (candidate, window), taken in turn by every thread that calls
/// [`Probe::work`]: the probe's own, and the thread that built the unfiltered suffix array once it is
/// done (see `prepare`).
struct Probe<'a> {
    old: &'a [u8],
    new: &'a [u8],
    candidates: Vec<Filtering>,
    /// (old start, old end, new start, new end).
    windows: Vec<(usize, usize, usize, usize)>,
    opts: EncodeOptions,
    next_job: AtomicUsize,
    /// Each job's sample delta size (`None`: not done, or it failed).
    sizes: Mutex<Vec<Option<usize>>>,
}

impl<'a> Probe<'a> {
    /// The probe over `candidates`' windows, or the candidates themselves when there is nothing to
    /// choose (one candidate, or new too small for the windows).
    fn plan(old: &'a [u8], new: &'a [u8], candidates: Vec<Filtering>, opts: &EncodeOptions) -> Choice<'a> {
        if candidates.len() < 2 || new.len() <= PROBE_NEW * 2 {
            return Choice::Decided(candidates);
        }
        let block = FILTER_BLOCK;
        // Middle of the widest filtered span, inside new.
        let (lo, hi) = candidates
            .iter()
            .filter(|c| c.filter != Filter::None)
            .map(|c| (c.lo, c.hi))
            .fold((u64::MAX, 0u64), |(a, b), (l, h)| (a.min(l), b.max(h)));
        let new_len = new.len() as u64;
        let (lo, hi) = (lo.min(new_len), hi.min(new_len));
        let (lo, hi) = if hi > lo { (lo, hi) } else { (0, new_len) };
        // Window pairs (old start, old end, new start, new end), spread over the span.
        let windows: Vec<(usize, usize, usize, usize)> = (0..PROBE_WINDOWS)
            .map(|k| {
                let at = lo + (hi - lo) * (2 * k as u64 + 1) / (2 * PROBE_WINDOWS as u64);
                let middle = usize::try_from(at).unwrap_or(0);
                let new_start = middle.saturating_sub(PROBE_NEW / 2) / block * block;
                let new_end = (new_start + PROBE_NEW).min(new.len());
                let old_middle =
                    usize::try_from(middle as u128 * old.len() as u128 / new.len() as u128).unwrap_or(0);
                let old_start = old_middle.saturating_sub(PROBE_OLD / 2) / block * block;
                let old_end = (old_start + PROBE_OLD).min(old.len());
                (old_start, old_end, new_start, new_end)
            })
            .collect();
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
    fn sample(&self, filter: Filtering, window: (usize, usize, usize, usize)) -> Option<usize> {
        let (old_start, old_end, new_start, new_end) = window;
        let mut o = self.old.get(old_start..old_end)?.to_vec();
        let mut n = self.new.get(new_start..new_end)?.to_vec();
        filter.encode_in_place(&mut o, old_start as u64);
        filter.encode_in_place(&mut n, new_start as u64);
        let index = SuffixIndex::new(&o);
        let steps = match_parallel(&index, &o, &n, 1);
        let zero = [0u8; 32];
        let delta = write_delta(
            &o,
            &n,
            &steps,
            &zero,
            &zero,
            filter,
            &self.opts,
            DiffCoding::Runs,
            false,
        );
        delta.ok().map(|d| d.len())
    }

    /// Takes jobs until none is left.
    fn work(&self) {
        let per = self.windows.len().max(1);
        loop {
            let job = self.next_job.fetch_add(1, Ordering::Relaxed);
            let (Some(&filter), Some(&window)) =
                (self.candidates.get(job / per), self.windows.get(job % per))
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
        // side doubles the time and the memory for a few percent at most (lightningcss: x86-rip 1%
        // smaller than unfiltered in the sample, 0.9% in full).
        candidates.get(best).map_or(candidates.clone(), |&c| vec![c])
    }
}

fn check_sizes(old: &[u8], new: &[u8]) -> Result<()> {
    // divsufsort indexes with i32.
    let max = i32::MAX as u64;
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

/// One bsdiff step in absolute coordinates (the relative seek is derived when serializing).
#[derive(Debug, Clone, Copy)]
struct Step {
    new_start: usize,
    old_start: usize,
    add_len: usize,
    copy_len: usize,
}

/// Where a candidate's suffix array comes from.
enum IndexSource<'a> {
    /// Already built over the candidate's old image.
    Built(SuffixIndex<'a>),
    /// To be built, in this allocation (empty: a new one).
    Buffer(Vec<i32>),
}

#[allow(clippy::too_many_arguments)]
fn encode_core(
    o: &[u8],
    n: &[u8],
    old_sha: &[u8; 32],
    new_sha: &[u8; 32],
    filter: Filtering,
    index: IndexSource<'_>,
    opts: &EncodeOptions,
    threads: usize,
    raw_too: bool,
    progress: &(dyn Fn(EncodeStage) + Sync),
) -> Result<Candidate> {
    progress(EncodeStage::Indexing(filter.filter));
    let steps = {
        let index = match index {
            IndexSource::Built(index) => index,
            IndexSource::Buffer(buffer) => SuffixIndex::build(o, buffer, threads >= 2),
        };
        progress(EncodeStage::Matching(filter.filter));
        match_parallel(&index, o, n, threads)
    };
    progress(EncodeStage::Compressing(filter.filter));
    let write = |coding: DiffCoding, parallel: bool| {
        write_delta(o, n, &steps, old_sha, new_sha, filter, opts, coding, parallel)
    };
    if raw_too && threads >= 2 {
        // The raw coding's literal stream (one xz stream over the whole diff) takes seconds on one
        // thread: the run-length coding is compressed on another meanwhile, its streams one after the
        // other (one more xz encoder alive, not five), instead of before it.
        let (runs, raw) = std::thread::scope(|scope| {
            let raw = scope.spawn(|| write(DiffCoding::Raw, true));
            let runs = write(DiffCoding::Runs, false);
            let raw = raw
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (runs, raw)
        });
        let (runs, raw) = (runs?, raw?);
        // The same choice as `try_raw_coding`.
        let delta = if raw.len() < runs.len() { raw } else { runs };
        progress(EncodeStage::Finished {
            filter: filter.filter,
            delta_len: delta.len() as u64,
        });
        return Ok(Candidate {
            filter,
            delta,
            steps,
            raw_tried: true,
        });
    }
    // Run-length coding wins on most pairs and compresses in a fraction of the time; the winner may
    // still try the raw coding (see `try_raw_coding`).
    let delta = write(DiffCoding::Runs, true)?;
    progress(EncodeStage::Finished {
        filter: filter.filter,
        delta_len: delta.len() as u64,
    });
    Ok(Candidate {
        filter,
        delta,
        steps,
        raw_tried: false,
    })
}

/// Bytes of new per matching range, at least, when there are more ranges than threads.
const MATCH_RANGE_MIN: usize = 2 << 20;
/// Ranges per thread, at most.
const MATCH_RANGES_PER_THREAD: usize = 8;

/// Matches new against old on `threads` threads with exactly the steps of one thread: new is split into
/// ranges (up to [`MATCH_RANGES_PER_THREAD`] per thread, each thread taking the next one left), each
/// scanned from its own start while recording its scanner state after each step it emits; then the scan
/// of each range is carried on past its end until it reaches a state the next range recorded (from there
/// the next range's steps are the sequential ones) or that range's end.
fn match_parallel(index: &SuffixIndex<'_>, o: &[u8], n: &[u8], threads: usize) -> Vec<Step> {
    match_in_ranges(index, o, n, threads, MATCH_RANGE_MIN)
}

/// [`match_parallel`] with ranges of at least `range_min` bytes (when there are more than `threads`).
fn match_in_ranges(
    index: &SuffixIndex<'_>,
    o: &[u8],
    n: &[u8],
    threads: usize,
    range_min: usize,
) -> Vec<Step> {
    let threads = threads.max(1);
    let parts = if n.len() < (1 << 20) || threads == 1 {
        1
    } else {
        (n.len() / range_min.max(1)).clamp(threads, threads * MATCH_RANGES_PER_THREAD)
    };
    let chunk = n.len().div_ceil(parts).max(1);
    let ranges: Vec<(usize, usize)> = (0..parts)
        .map(|i| (i * chunk, ((i + 1) * chunk).min(n.len())))
        .filter(|(a, b)| a < b)
        .collect();
    // Each worker takes the next range left: how long a range takes varies a lot (rootfs: 2.1 s for the
    // first half, 0.35 s for the second), so a fixed half per thread left a core idle.
    let next_range = AtomicUsize::new(0);
    let mut done: Vec<(usize, RangeScan)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.min(ranges.len()))
            .map(|_| {
                let (ranges, next_range) = (&ranges, &next_range);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let k = next_range.fetch_add(1, Ordering::Relaxed);
                        let Some(&(lo, hi)) = ranges.get(k) else {
                            return mine;
                        };
                        mine.push((k, RangeScan::run(index, o, n, lo, hi, k > 0)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    // Popped in range order below.
    done.sort_unstable_by_key(|&(k, _)| std::cmp::Reverse(k));
    let mut scans: Vec<RangeScan> = done.into_iter().map(|(_, scan)| scan).collect();
    let Some(mut merged) = scans.pop() else {
        return Vec::new();
    };
    while let Some(next) = scans.pop() {
        loop {
            if merged.scanner.done(n.len()) {
                return merged.steps;
            }
            if let Some(&at) = next.states.get(&merged.scanner.key()) {
                merged
                    .steps
                    .extend_from_slice(next.steps.get(at..).unwrap_or(&[]));
                merged.scanner = next.scanner;
                break;
            }
            if merged.scanner.scan >= next.hi {
                break;
            }
            merged.scanner.step(index, o, n, &mut merged.steps);
        }
    }
    while !merged.scanner.done(n.len()) {
        merged.scanner.step(index, o, n, &mut merged.steps);
    }
    merged.steps
}

/// One range's scan: its steps, the scanner paused at the range's end, and (for all but the first
/// range) the step count at each scanner state it reached by emitting a step.
struct RangeScan {
    hi: usize,
    steps: Vec<Step>,
    scanner: Scanner,
    states: HashMap<ScanKey, usize>,
}

impl RangeScan {
    fn run(index: &SuffixIndex<'_>, o: &[u8], n: &[u8], lo: usize, hi: usize, record: bool) -> Self {
        let mut scanner = Scanner::start(lo, o.len());
        let mut steps = Vec::new();
        let mut states = HashMap::new();
        while scanner.scan < hi && !scanner.done(n.len()) {
            let before = steps.len();
            scanner.step(index, o, n, &mut steps);
            // Only the states right after a step: once the previous range's scan reaches one of this
            // range's states, its next step lands on a recorded one, a few KiB further on. Every state
            // made the table ~60x larger (4.5 MiB on lightningcss, alive at the generation's peak).
            if record && steps.len() > before {
                states.entry(scanner.key()).or_insert(steps.len());
            }
        }
        RangeScan {
            hi,
            steps,
            scanner,
            states,
        }
    }
}

fn byte(data: &[u8], i: usize) -> Option<u8> {
    data.get(i).copied()
}

/// How many more bytes a new exact match must cover than the current alignment matches over the same
/// span before the scan switches to it. bsdiff uses 8; every switch costs a control entry (about 2.5
/// compressed bytes, mostly the seek), and 16 gave 3-5% smaller deltas on the corpus's shared libraries.
const NEW_MATCH_GAIN: usize = 16;

/// bsdiff's scan (Colin Percival, "Naive differences of executable code"), over new[lo..hi): find exact
/// matches with the suffix array, accept one when it beats the current alignment by more than
/// [`NEW_MATCH_GAIN`] bytes,
/// extend the previous alignment forwards and this one backwards approximately (more than half the bytes
/// equal), and emit a step for the gap.
/// The scan's state between two iterations of bsdiff's outer loop: the same state always leads to the
/// same steps, which lets [`match_parallel`] splice ranges scanned from different starts.
#[derive(Debug, Clone, Copy)]
struct Scanner {
    scan: usize,
    len: usize,
    pos: usize,
    lastscan: usize,
    lastpos: usize,
    lastoffset: i64,
}

/// What decides a [`Scanner`]'s future steps: where the next search starts (`scan + len`) and the
/// current alignment.
type ScanKey = (usize, usize, usize, i64);

impl Scanner {
    fn start(lo: usize, old_len: usize) -> Self {
        // A range starts aligned with the same offset in old (offset 0, as bsdiff starts), so `lastpos`
        // must be `lo` too: starting it at 0 made a later range's first stretch a diff against old's
        // beginning.
        let start_pos = lo.min(old_len);
        Scanner {
            scan: lo,
            len: 0,
            pos: 0,
            lastscan: lo,
            lastpos: start_pos,
            lastoffset: start_pos as i64 - lo as i64,
        }
    }

    fn done(&self, new_len: usize) -> bool {
        self.scan >= new_len
    }

    fn key(&self) -> ScanKey {
        (self.scan + self.len, self.lastscan, self.lastpos, self.lastoffset)
    }

    /// One iteration of the outer loop over all of `n`; pushes at most one step.
    fn step(&mut self, index: &SuffixIndex<'_>, o: &[u8], n: &[u8], steps: &mut Vec<Step>) {
        let Scanner {
            mut scan,
            mut len,
            mut pos,
            mut lastscan,
            mut lastpos,
            mut lastoffset,
        } = *self;
        let (old_len, hi) = (o.len(), n.len());
        let same_at = |new_i: usize, offset: i64| -> bool {
            let old_i = new_i as i64 + offset;
            old_i >= 0 && (old_i as usize) < old_len && byte(o, old_i as usize) == byte(n, new_i)
        };
        let mut oldscore = 0usize;
        scan += len;
        let mut scsc = scan;
        while scan < hi {
            (pos, len) = index.longest_match(n.get(scan..).unwrap_or(&[]));
            while scsc < scan + len {
                if same_at(scsc, lastoffset) {
                    oldscore += 1;
                }
                scsc += 1;
            }
            if (len == oldscore && len != 0) || len > oldscore + NEW_MATCH_GAIN {
                break;
            }
            if same_at(scan, lastoffset) {
                oldscore = oldscore.saturating_sub(1);
            }
            scan += 1;
        }
        if len != oldscore || scan == hi {
            // Forward extension of the previous match.
            let (mut s, mut sf, mut lenf) = (0i64, 0i64, 0usize);
            let mut i = 0usize;
            while lastscan + i < scan && lastpos + i < old_len {
                if byte(o, lastpos + i) == byte(n, lastscan + i) {
                    s += 1;
                }
                i += 1;
                if s * 2 - i as i64 > sf * 2 - lenf as i64 {
                    sf = s;
                    lenf = i;
                }
            }
            // Backward extension of the new match.
            let mut lenb = 0usize;
            if scan < hi {
                let (mut s, mut sb) = (0i64, 0i64);
                let mut i = 1usize;
                while scan >= lastscan + i && pos >= i {
                    if byte(o, pos - i) == byte(n, scan - i) {
                        s += 1;
                    }
                    if s * 2 - i as i64 > sb * 2 - lenb as i64 {
                        sb = s;
                        lenb = i;
                    }
                    i += 1;
                }
            }
            // Resolve an overlap between the two extensions at the best split.
            if lastscan + lenf > scan - lenb {
                let overlap = (lastscan + lenf) - (scan - lenb);
                let (mut s, mut ss, mut lens) = (0i64, 0i64, 0usize);
                for i in 0..overlap {
                    if byte(n, lastscan + lenf - overlap + i) == byte(o, lastpos + lenf - overlap + i) {
                        s += 1;
                    }
                    if byte(n, scan - lenb + i) == byte(o, pos - lenb + i) {
                        s -= 1;
                    }
                    if s > ss {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf = lenf + lens - overlap;
                lenb -= lens;
            }
            steps.push(Step {
                new_start: lastscan,
                old_start: lastpos,
                add_len: lenf,
                copy_len: (scan - lenb) - (lastscan + lenf),
            });
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos as i64 - scan as i64;
        }
        *self = Scanner {
            scan,
            len,
            pos,
            lastscan,
            lastpos,
            lastoffset,
        };
    }
}

/// A step cut to the segment caps, with its relative seek.
#[derive(Debug, Clone, Copy)]
struct Piece {
    entry: ControlEntry,
    new_start: usize,
    old_start: usize,
}

/// How the encoder splits the diff into (zero run, literal run) pairs. The decoder reads both alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum DiffCoding {
    /// Zero runs and nonzero literals: few bytes left for LZMA2 to code.
    #[default]
    Runs,
    /// One pair per segment, every diff byte a literal: the raw diff goes to LZMA2 (as bsdiff does).
    Raw,
}

/// Largest dictionary (log2 bytes) for a raw-coded literal stream. Its matches are short-range repeats of
/// diff patterns: on the corpus's x86 pairs 512 KiB codes it as small as 4 MiB does (systemd 59,342 bytes
/// against 59,382; esbuild 202,246 against 201,938) while the encoder's match finder shrinks from ~37-50
/// MiB to ~9 MiB, and the decoder's dictionary with it.
const RAW_LITERAL_WINDOW_LOG: u8 = 19;

/// Splits a diff into (zero run, literal run) pairs: the format codes the diff, mostly zeros, as the two
/// run lengths and the literal bytes, each in its own stream. With [`DiffCoding::Runs`], a gap of at most
/// [`RUN_GAP`] zero bytes between nonzero ones stays inside the literal run (as zero literals) in the new
/// image's data (after its executable segments): fewer, more regular pairs. Zeros after a literal run are
/// pending until a nonzero byte absorbs them, a zero beyond the gap ends the run, or the add ends
/// ([`Self::end_of_add`]), so a piece never leaves zeros of its own undecided.
#[derive(Debug, Default)]
struct RunTokenizer {
    coding: DiffCoding,
    /// New-image offset from which gaps are kept in literal runs: the end of the new image's executable
    /// segments (gaps help relocations, .rodata, .eh_frame and pointers: lightningcss 8,100 bytes smaller
    /// with x86-rip; in code they cost: 1,600 bytes on lightningcss, 1,800 on numpy); never for images
    /// that are no ELF file.
    gap_from: usize,
    zeros: u64,
    literals: u64,
    /// Zero bytes after the literal run, not yet decided.
    pending: u64,
}

/// Longest gap of zero diff bytes kept inside a literal run by [`DiffCoding::Runs`].
const RUN_GAP: u64 = 4;

impl RunTokenizer {
    /// A tokenizer for diffs of `new` (the new image as matched).
    fn new(coding: DiffCoding, new: &[u8]) -> Self {
        let gap_from = match coding {
            DiffCoding::Runs => elf_exec_span(new)
                .and_then(|(_, hi)| usize::try_from(hi).ok())
                .unwrap_or(usize::MAX),
            DiffCoding::Raw => usize::MAX,
        };
        RunTokenizer {
            coding,
            gap_from,
            ..RunTokenizer::default()
        }
    }

    /// A tokenizer like this one, at the start of a segment.
    fn fresh(&self) -> Self {
        RunTokenizer {
            coding: self.coding,
            gap_from: self.gap_from,
            ..RunTokenizer::default()
        }
    }

    fn gap(&self, pos: usize) -> u64 {
        if pos >= self.gap_from {
            RUN_GAP
        } else {
            0
        }
    }

    /// Feeds one diff byte; returns the pair that a zero byte beyond the gap completes (that zero and the
    /// pending ones then start the next zero run).
    /// `pos` is the byte's offset in the new image.
    fn push(&mut self, diff: u8, pos: usize) -> Option<(u64, u64)> {
        if diff != 0 || self.coding == DiffCoding::Raw {
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
#[derive(Default)]
struct Segmenter {
    segments: Vec<Vec<Piece>>,
    current: Vec<Piece>,
    /// Raw bytes of the current segment per stream (control counted at [`ENTRY_MAX`] per entry).
    fill: [usize; 5],
    totals: [u64; 5],
    runs: RunTokenizer,
}

impl Segmenter {
    fn push(&mut self, piece: Piece) {
        self.fill[CONTROL] += ENTRY_MAX;
        self.fill[EXTRA] += piece.entry.copy_len as usize;
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
    }

    fn runs_full(&self) -> bool {
        let cap = SEGMENT_RUNS_MAX as usize;
        let reserve = if self.runs.gap_from == usize::MAX {
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
        self.fill = [0; 5];
    }

    fn add_step(&mut self, step: &Step, seek: i64, o: &[u8], n: &[u8]) {
        let (control_cap, extra_cap) = (SEGMENT_CONTROL_MAX as usize, SEGMENT_EXTRA_MAX as usize);
        // Room for a piece cut inside the add and the next one: no cut may fall between diff bytes
        // already tokenized into this segment and the piece that consumes them.
        if self.fill[CONTROL] + COUNT_MAX + 2 * ENTRY_MAX > control_cap || self.fill[EXTRA] >= extra_cap {
            self.cut();
        }
        let (mut new_start, mut old_start, mut add) = (step.new_start, step.old_start, step.add_len);
        let news = n
            .get(step.new_start..step.new_start + step.add_len)
            .unwrap_or(&[]);
        let olds = o
            .get(step.old_start..step.old_start + step.add_len)
            .unwrap_or(&[]);
        let mut placed = 0usize;
        for (i, (a, b)) in news.iter().zip(olds).enumerate() {
            let diff = a.wrapping_sub(*b);
            let Some(pair) = self.runs.push(diff, step.new_start + i) else {
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
        // The rest of the add, then the copy, cut where the extra stream reaches its cap.
        let mut copy = step.copy_len;
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

/// Cuts steps into segments under the decoder's caps; also returns each stream's total raw bytes.
fn segment(steps: &[Step], o: &[u8], n: &[u8], coding: DiffCoding) -> (Vec<Vec<Piece>>, [u64; 5]) {
    let mut segmenter = Segmenter {
        runs: RunTokenizer::new(coding, n),
        ..Segmenter::default()
    };
    for (k, step) in steps.iter().enumerate() {
        let next_old = steps
            .get(k + 1)
            .map_or(step.old_start + step.add_len, |s| s.old_start);
        let seek = next_old as i64 - (step.old_start + step.add_len) as i64;
        segmenter.add_step(step, seek, o, n);
    }
    segmenter.cut();
    (segmenter.segments, segmenter.totals)
}

/// Raw bytes handed to xz at a time: a raw-coded segment's literal stream is its whole diff (3.3 MB on
/// systemd), which is no longer built in one buffer beside the encoder.
const FEED_CHUNK: usize = 64 << 10;

/// The raw bytes one stream gets from one segment, handed to `feed` in pieces of about [`FEED_CHUNK`]
/// bytes (`buf` holds a piece); returns their total length.
#[allow(clippy::too_many_arguments)]
fn stream_bytes(
    which: usize,
    pieces: &[Piece],
    o: &[u8],
    n: &[u8],
    coding: DiffCoding,
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
    let mut runs = RunTokenizer::new(coding, n);
    let mut carry = RunCarry::default();
    let mut pending: Vec<(u8, u8)> = Vec::new();
    let emit = |(zeros, literals): (u64, u64), out: &mut Vec<u8>| match which {
        ZERO_RUNS => put_varint(out, zeros),
        LITERAL_LENGTHS => put_varint(out, literals),
        _ => {}
    };
    for p in pieces {
        match which {
            CONTROL => {}
            EXTRA => {
                let start = p.new_start + p.entry.add_len as usize;
                buf.extend_from_slice(n.get(start..start + p.entry.copy_len as usize).unwrap_or(&[]));
            }
            _ => {
                let len = p.entry.add_len as usize;
                let new_part = n.get(p.new_start..p.new_start + len).unwrap_or(&[]);
                let old_part = o.get(p.old_start..p.old_start + len).unwrap_or(&[]);
                let mut pos = p.new_start;
                for (new_piece, old_piece) in new_part.chunks(FEED_CHUNK).zip(old_part.chunks(FEED_CHUNK)) {
                    for (a, b) in new_piece.iter().zip(old_piece) {
                        let diff = a.wrapping_sub(*b);
                        let pair = runs.push(diff, pos);
                        pos += 1;
                        if which != LITERALS {
                            if let Some(pair) = pair {
                                emit(pair, buf);
                            }
                            continue;
                        }
                        // Pending zeros become literals when a nonzero byte absorbs them, unchanged bytes
                        // otherwise; the carry steps through them in order either way.
                        if runs.pending() > pending.len() as u64 {
                            pending.push((*b, *a));
                        } else if diff != 0 || runs.coding == DiffCoding::Raw {
                            for (ob, nb) in pending.drain(..) {
                                buf.push(carry.literal(ob, nb));
                            }
                            buf.push(carry.literal(*b, *a));
                        } else {
                            for _ in pending.drain(..) {
                                carry.unchanged();
                            }
                            carry.unchanged();
                        }
                    }
                    flush(buf, FEED_CHUNK)?;
                }
                if let Some(pair) = runs.end_of_add() {
                    emit(pair, buf);
                }
                for _ in pending.drain(..) {
                    carry.unchanged();
                }
            }
        }
        flush(buf, FEED_CHUNK)?;
    }
    if let Some(pair) = runs.finish() {
        emit(pair, buf);
    }
    for (ob, nb) in pending.drain(..) {
        buf.push(carry.literal(ob, nb));
    }
    flush(buf, 0)?;
    Ok(total)
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

/// Compresses one stream across all segments as one xz (LZMA2) stream, sync-flushed at each segment end
/// so the decoder can finish a segment from its bytes alone while keeping the dictionary. Returns each
/// segment's raw length and compressed chunk.
fn compress_stream(
    which: usize,
    segments: &[Vec<Piece>],
    o: &[u8],
    n: &[u8],
    opts: &EncodeOptions,
    window_log: u8,
    coding: DiffCoding,
) -> Result<StreamChunks> {
    let stream_name = STREAM_NAMES.get(which).copied().unwrap_or("stream");
    let err = |source: std::io::Error| Error::Compress {
        stream: stream_name,
        source,
    };
    let xz_err = |e: xz2::stream::Error| err(std::io::Error::other(e));
    let mut preset = opts.level.min(9);
    if opts.extreme {
        preset |= 1 << 31; // LZMA_PRESET_EXTREME
    }
    let mut lzma = LzmaOptions::new_preset(preset).map_err(xz_err)?;
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
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    let mut stream = Stream::new_stream_encoder(&filters, Check::None).map_err(xz_err)?;
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
            if last { Action::Finish } else { Action::SyncFlush },
            &mut out,
        )
        .map_err(err)?;
        chunks.push((raw_len, out));
    }
    Ok(chunks)
}

/// Serializes `steps` as a delta; the five streams are compressed on one thread each when `parallel`,
/// else one after the other on this thread (the probe: one xz encoder alive at a time).
#[allow(clippy::too_many_arguments)]
fn write_delta(
    o: &[u8],
    n: &[u8],
    steps: &[Step],
    old_sha: &[u8; 32],
    new_sha: &[u8; 32],
    filter: Filtering,
    opts: &EncodeOptions,
    coding: DiffCoding,
    parallel: bool,
) -> Result<Vec<u8>> {
    let (segments, totals) = segment(steps, o, n, coding);
    let [control_log, literal_log, extra_log] = opts.window_logs;
    let runs_total = totals[ZERO_RUNS].max(totals[LITERAL_LENGTHS]);
    let mut window_logs = [0u8; 5];
    window_logs[CONTROL] = window_log_for(totals[CONTROL], control_log.min(SIDE_MAX_WINDOW_LOG));
    window_logs[EXTRA] = window_log_for(totals[EXTRA], extra_log);
    window_logs[ZERO_RUNS] = window_log_for(runs_total, SIDE_MAX_WINDOW_LOG);
    window_logs[LITERAL_LENGTHS] = window_logs[ZERO_RUNS];
    let literal_log = match coding {
        DiffCoding::Runs => literal_log,
        DiffCoding::Raw => literal_log.min(RAW_LITERAL_WINDOW_LOG),
    };
    window_logs[LITERALS] = window_log_for(totals[LITERALS], literal_log);
    let compressed: Vec<Result<StreamChunks>> = if !parallel {
        (0..STREAM_NAMES.len())
            .zip(window_logs)
            .map(|(which, log)| compress_stream(which, &segments, o, n, opts, log, coding))
            .collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..STREAM_NAMES.len())
                .zip(window_logs)
                .map(|(which, log)| {
                    let segments = &segments;
                    scope.spawn(move || compress_stream(which, segments, o, n, opts, log, coding))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    };
    let mut streams = Vec::with_capacity(STREAM_NAMES.len());
    for c in compressed {
        streams.push(c?);
    }
    let header = DeltaHeader {
        format_version: FORMAT_VERSION,
        filter: filter.filter,
        filter_start: filter.lo,
        filter_end: filter.hi,
        old_len: o.len() as u64,
        old_sha256: *old_sha,
        new_len: n.len() as u64,
        new_sha256: *new_sha,
        window_logs: [window_logs[CONTROL], window_logs[LITERALS], window_logs[EXTRA]],
        runs_window_log: window_logs[ZERO_RUNS],
    };
    let mut out = header.to_bytes().to_vec();
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
    out.push(TAG_END);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Matching on several threads gives exactly the one-thread steps (ranges spliced where their scans
    /// meet), on an image large enough to be split.
    #[test]
    fn parallel_matching_equals_sequential() {
        let old: Vec<u8> = (0..1_600_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x3f)
            .collect();
        let mut new = old.clone();
        for i in (0..new.len()).step_by(1013) {
            new[i] = new[i].wrapping_add(1);
        }
        for at in [700_000, 500_000, 1000] {
            new.splice(at..at, (0..300u32).map(|i| (i * 7) as u8));
        }
        let index = SuffixIndex::new(&old);
        let one = format!("{:?}", match_parallel(&index, &old, &new, 1));
        for threads in [2, 3] {
            let many = format!("{:?}", match_parallel(&index, &old, &new, threads));
            assert!(one == many, "{threads} threads differ from one");
            // Many short ranges (24 of ~67 KB on 3 threads), taken from the queue in any order.
            let short = format!("{:?}", match_in_ranges(&index, &old, &new, threads, 64 << 10));
            assert!(
                one == short,
                "{threads} threads with short ranges differ from one"
            );
        }
    }

    /// A lone machine-code candidate codes its diff both ways at once on two threads: the same delta as
    /// one thread, which codes them one after the other, and it applies.
    #[test]
    fn lone_candidate_writes_both_codings_at_once_with_the_same_result() {
        // Call-like bytes (E8 rel32) whose targets move by 0x40 in new, among noise.
        let old: Vec<u8> = (0..400_000u32)
            .flat_map(|i| {
                let x = i.wrapping_mul(2_654_435_761) >> 20;
                [
                    0xe8,
                    x as u8,
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
        let mut new = old.clone();
        for i in (0..new.len() - 8).step_by(8) {
            if new[i] == 0xe8 {
                new[i + 1] = new[i + 1].wrapping_sub(0x40);
            }
        }
        new.splice(5000..5000, *b"inserted bytes");
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

    /// Both diff codings decode to the new image (the decoder does not know which one was used).
    #[test]
    fn both_diff_codings_round_trip() {
        let old: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut new = old.clone();
        for i in (0..new.len()).step_by(97) {
            new[i] = new[i].wrapping_add(3);
        }
        new.splice(1000..1000, *b"inserted bytes");
        let (old_sha, new_sha) = (sha256(&old), sha256(&new));
        let index = SuffixIndex::new(&old);
        let steps = match_parallel(&index, &old, &new, 1);
        let opts = EncodeOptions {
            level: 3,
            ..EncodeOptions::default()
        };
        for coding in [DiffCoding::Runs, DiffCoding::Raw] {
            let filter = Filter::None.everywhere();
            let delta = write_delta(
                &old, &new, &steps, &old_sha, &new_sha, filter, &opts, coding, true,
            )
            .unwrap();
            let mut out = Vec::new();
            crate::apply(std::io::Cursor::new(&old), delta.as_slice(), &mut out).unwrap();
            assert!(out == new, "{coding:?} does not round-trip");
        }
    }

    /// In an ELF file's data (after its executable segments) short zero gaps stay inside literal runs: the
    /// delta round-trips, including segments cut where zeros were pending (the run-length streams of this
    /// pair exceed a segment's cap several times), and codes fewer pairs than without gaps.
    #[test]
    fn zero_gaps_in_elf_data_round_trip_across_segment_cuts() {
        let mut old: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        // ELF64 x86-64 header with one executable PT_LOAD over bytes 0..4096.
        old[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        old[18] = 0x3e;
        old[32..40].copy_from_slice(&64u64.to_le_bytes());
        old[54..56].copy_from_slice(&56u16.to_le_bytes());
        old[56..58].copy_from_slice(&1u16.to_le_bytes());
        old[64..68].copy_from_slice(&1u32.to_le_bytes());
        old[68..72].copy_from_slice(&5u32.to_le_bytes());
        old[72..80].copy_from_slice(&0u64.to_le_bytes());
        old[96..104].copy_from_slice(&4096u64.to_le_bytes());
        let mut new = old.clone();
        // Changed bytes with gaps of 1 to 9 unchanged bytes, in code and in data.
        let mut at = 200;
        let mut k = 0usize;
        while at < new.len() {
            new[at] = new[at].wrapping_add(1 + (k % 5) as u8);
            at += 2 + k % 9;
            k += 1;
        }
        let (old_sha, new_sha) = (sha256(&old), sha256(&new));
        let index = SuffixIndex::new(&old);
        let steps = match_parallel(&index, &old, &new, 1);
        let (segments, totals) = segment(&steps, &old, &new, DiffCoding::Runs);
        assert!(segments.len() >= 2, "{} segments", segments.len());
        let mut plain = RunTokenizer::new(DiffCoding::Runs, &new);
        plain.gap_from = usize::MAX;
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
        let filter = Filter::None.everywhere();
        let delta = write_delta(
            &old,
            &new,
            &steps,
            &old_sha,
            &new_sha,
            filter,
            &opts,
            DiffCoding::Runs,
            true,
        )
        .unwrap();
        let mut out = Vec::new();
        crate::apply(std::io::Cursor::new(&old), delta.as_slice(), &mut out).unwrap();
        assert!(out == new, "gapped runs do not round-trip");
    }
}
