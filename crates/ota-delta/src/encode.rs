//! The publisher side's entry points: which filter candidates run (a sample of the pair picks one), each
//! candidate's suffix array built, its steps matched ([`crate::matching`]) and written as a delta
//! ([`crate::coding`]), the smallest kept.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::coding::{write_delta, DiffCoding};
use crate::filter::{filtering_for, plausible_filters, Filter, Filtering, FILTER_BLOCK};
use crate::format::MAX_WINDOW_LOG;
use crate::matching::{match_parallel, Step};
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
    let delta = smaller_coding(best.delta, raw);
    progress(EncodeStage::Finished {
        filter: best.filter.filter,
        delta_len: delta.len() as u64,
    });
    Ok(delta)
}

/// The smaller of a candidate's run-length and raw codings (the run-length one on a tie).
fn smaller_coding(runs: Vec<u8>, raw: Vec<u8>) -> Vec<u8> {
    if raw.len() < runs.len() {
        raw
    } else {
        runs
    }
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
        let delta = smaller_coding(runs, raw);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
