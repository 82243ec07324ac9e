//! Matching new against old: bsdiff's scan over the suffix array, with approximate extension forwards and
//! backwards, on several threads with exactly the one-thread result. It yields the steps; `coding` turns
//! them into a delta.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::suffix::{common_prefix, SuffixIndex, GRAM_LEN};

/// One bsdiff step in absolute coordinates (the relative seek is derived when serializing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    /// Where in new the step starts (its add, then its copy).
    pub new_start: usize,
    /// Where in old its add reads.
    pub old_start: usize,
    /// Bytes of diff: new minus old.
    pub add_len: usize,
    /// Literal bytes of new after the add.
    pub copy_len: usize,
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
pub(crate) fn match_parallel(index: &SuffixIndex<'_>, o: &[u8], n: &[u8], threads: usize) -> Vec<Step> {
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

/// An offset or length in an image as i64, for bsdiff's signed offset arithmetic. Never wraps: the
/// encoder refuses images of more than `i32::MAX` bytes (`check_sizes`, for divsufsort's i32 indexes), and
/// a checked conversion would add a branch to the extension loops.
#[allow(clippy::cast_possible_wrap)] // at most i32::MAX, see above
#[inline]
pub(crate) fn signed(offset: usize) -> i64 {
    offset as i64
}

fn byte(data: &[u8], i: usize) -> Option<u8> {
    data.get(i).copied()
}

/// How far the previous match (at `last` = (new, old)) extends forwards and the new one (at `next`)
/// backwards, approximately (bsdiff: while more than half the bytes match), their overlap resolved at
/// the best split.
fn extensions(o: &[u8], n: &[u8], last: (usize, usize), next: (usize, usize)) -> (usize, usize) {
    let ((lastscan, lastpos), (scan, pos)) = (last, next);
    let mut lenf = forward_extension(o, n, last, scan);
    let mut lenb = if scan < n.len() {
        backward_extension(o, n, lastscan, next)
    } else {
        0
    };
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
    (lenf, lenb)
}

/// Forward extension of the previous match at `(lastscan, lastpos)`, up to the new match at `scan`.
fn forward_extension(o: &[u8], n: &[u8], (lastscan, lastpos): (usize, usize), scan: usize) -> usize {
    let (mut s, mut sf, mut lenf) = (0i64, 0i64, 0usize);
    let mut i = 0usize;
    while lastscan + i < scan && lastpos + i < o.len() {
        if byte(o, lastpos + i) == byte(n, lastscan + i) {
            s += 1;
        }
        i += 1;
        if s * 2 - signed(i) > sf * 2 - signed(lenf) {
            sf = s;
            lenf = i;
        }
    }
    lenf
}

/// Backward extension of the new match at `(scan, pos)`, down to the previous one at `lastscan`.
fn backward_extension(o: &[u8], n: &[u8], lastscan: usize, (scan, pos): (usize, usize)) -> usize {
    let (mut s, mut sb, mut lenb) = (0i64, 0i64, 0usize);
    let mut i = 1usize;
    while scan >= lastscan + i && pos >= i {
        if byte(o, pos - i) == byte(n, scan - i) {
            s += 1;
        }
        if s * 2 - signed(i) > sb * 2 - signed(lenb) {
            sb = s;
            lenb = i;
        }
        i += 1;
    }
    lenb
}

/// How many more bytes a new exact match must cover than the current alignment matches over the same
/// span before the scan switches to it. bsdiff uses 8; every switch costs a control entry (about 2.5
/// compressed bytes, mostly the seek), and 16 gave 3-5% smaller deltas on the corpus's shared libraries.
/// A switch needs a match of more than this many bytes: where the index's gram filter rules out one of
/// [`GRAM_LEN`] bytes, the scan skips the search.
const NEW_MATCH_GAIN: usize = GRAM_LEN - 1;

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
            lastoffset: signed(start_pos) - signed(lo),
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
            let old_i = signed(new_i) + offset;
            usize::try_from(old_i).is_ok_and(|old_i| old_i < old_len && byte(o, old_i) == byte(n, new_i))
        };
        let mut oldscore = 0usize;
        scan += len;
        let mut scsc = scan;
        while scan < hi {
            let needle = n.get(scan..).unwrap_or(&[]);
            (pos, len) = if index.may_match_long(needle) {
                index.longest_match(needle)
            } else {
                // No match here could beat the alignment by NEW_MATCH_GAIN bytes, so only one the
                // alignment covers exactly could stop the scan: take the alignment's own (shorter than
                // GRAM_LEN) instead of searching for the longest.
                let aligned = usize::try_from(signed(scan) + lastoffset).unwrap_or(old_len);
                let len = common_prefix(o.get(aligned..).unwrap_or(&[]), needle);
                (aligned.min(old_len), len)
            };
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
            let (lenf, lenb) = extensions(o, n, (lastscan, lastpos), (scan, pos));
            steps.push(Step {
                new_start: lastscan,
                old_start: lastpos,
                add_len: lenf,
                copy_len: (scan - lenb) - (lastscan + lenf),
            });
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = signed(pos) - signed(scan);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Matching on several threads gives exactly the one-thread steps (ranges spliced where their scans
    /// meet), on an image large enough to be split.
    #[test]
    fn parallel_matching_equals_sequential() {
        let old: Vec<u8> = (0..1_600_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0] & 0x3f)
            .collect();
        let mut new = old.clone();
        for i in (0..new.len()).step_by(1013) {
            new[i] = new[i].wrapping_add(1);
        }
        for at in [700_000, 500_000, 1000] {
            new.splice(at..at, (0..300u32).map(|i| (i * 7).to_le_bytes()[0]));
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
}
