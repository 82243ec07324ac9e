//! Suffix array of the old image (libsais: O(n), 4 bytes per input byte) and the longest-match search
//! bsdiff uses over it, started in a bucket table of two- or three-byte prefixes; beside it, a filter
//! that tells when a search cannot find a match of [`GRAM_LEN`] bytes or more.

use crate::run_both;

/// The old image and its sorted suffixes.
pub(crate) struct SuffixIndex<'a> {
    old: &'a [u8],
    sa: Vec<i32>,
    /// `buckets[k]`: the rank of the first suffix whose first `prefix_len` bytes (big-endian, padded
    /// with zeros past the end) are `>= k`: the search starts inside the needle's bucket, skipping the
    /// first 16 (or 24) steps of the binary search and their cache misses.
    buckets: Vec<u32>,
    /// Bytes of the bucket key: 2 (a 256 KiB table), or 3 for old images of [`WIDE_BUCKETS_MIN`] bytes
    /// and more (a 64 MiB table, under a quarter of their suffix array), where the two-byte buckets
    /// still left ~10 steps.
    prefix_len: usize,
    grams: GramFilter,
}

/// Length of the strings [`GramFilter`] records: a needle whose first `GRAM_LEN` bytes occur nowhere in
/// old has no match of `GRAM_LEN` bytes or more.
pub(crate) const GRAM_LEN: usize = 17;

/// Which [`GRAM_LEN`]-byte strings occur in old: a Bloom filter with one hash and about 2 bits per old
/// byte (an eighth of the suffix array's memory). It may answer "maybe" for a string old lacks (about
/// 40% of the time at that load), never "no" for one old has. Most of bsdiff's searches land where old
/// and new differ every few bytes and find short matches; there, one probe of this filter replaces a
/// binary search with its cache misses (matching on the corpus's 10 MB pairs: 0.6-0.9 s -> 0.3-0.6 s).
#[derive(Default)]
struct GramFilter {
    words: Vec<u64>,
    /// Right shift that turns a 64-bit hash into a bit index.
    shift: u32,
}

/// Old images from this size on get a [`GramFilter`]: below it matching takes a few hundredths of a
/// second without one, and its 2 bits per byte counted against systemd's memory budget.
const GRAM_FILTER_MIN: usize = 8 << 20;

/// Hash of the first [`GRAM_LEN`] bytes of `bytes` (`None` when shorter).
fn gram_hash(bytes: &[u8]) -> Option<u64> {
    let word =
        |at: usize| -> Option<u64> { Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)) };
    let (a, b, c) = (word(0)?, word(8)?, u64::from(*bytes.get(16)?));
    let mixed = (a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ c;
    Some(mixed.wrapping_mul(0x1656_67B1_9E37_79F9))
}

impl GramFilter {
    fn build(old: &[u8]) -> Self {
        let bits = old.len().saturating_mul(2).max(64).next_power_of_two();
        let shift = 64 - bits.trailing_zeros();
        let mut words = vec![0u64; bits / 64];
        for start in 0..old.len().saturating_sub(GRAM_LEN - 1) {
            let Some(hash) = old.get(start..).and_then(gram_hash) else {
                break;
            };
            // `shift` leaves log2(bits) bits, an index below `bits` (a usize): the conversion never fails.
            let Ok(bit) = usize::try_from(hash >> shift) else {
                continue;
            };
            if let Some(word) = words.get_mut(bit / 64) {
                *word |= 1 << (bit % 64);
            }
        }
        GramFilter { words, shift }
    }

    /// Whether the first [`GRAM_LEN`] bytes of `needle` may occur in old (always, for a shorter needle or
    /// an empty filter).
    fn may_occur(&self, needle: &[u8]) -> bool {
        if self.words.is_empty() {
            return true;
        }
        let Some(hash) = gram_hash(needle) else {
            return true;
        };
        let Ok(bit) = usize::try_from(hash >> self.shift) else {
            return true;
        };
        self.words
            .get(bit / 64)
            .is_none_or(|word| word >> (bit % 64) & 1 == 1)
    }
}

/// Old images from this size on get three-byte buckets.
const WIDE_BUCKETS_MIN: usize = 32 << 20;

/// The bucket key of `bytes` (its first `prefix_len` bytes, zero-padded).
fn bucket_key(bytes: &[u8], prefix_len: usize) -> usize {
    (0..prefix_len).fold(0, |key, i| {
        key << 8 | usize::from(bytes.get(i).copied().unwrap_or(0))
    })
}

/// Start rank of every bucket (`256^prefix_len + 1` entries); a suffix shorter than the key sorts first
/// in the bucket of its zero-padded key.
fn bucket_starts(old: &[u8], prefix_len: usize) -> Vec<u32> {
    let mut counts = vec![0u32; (1usize << (8 * prefix_len)) + 1];
    let mask = (1usize << (8 * prefix_len)) - 1;
    // The key of the suffix at i, rolled from the one at i + 1.
    let mut key = 0usize;
    for &b in old.iter().rev() {
        key = (key >> 8) | usize::from(b) << (8 * (prefix_len - 1));
        if let Some(c) = counts.get_mut((key & mask) + 1) {
            *c += 1;
        }
    }
    let mut sum = 0u32;
    for c in &mut counts {
        sum += *c;
        *c = sum;
    }
    counts
}

/// Old images from this size on get their bucket table counted on a second thread while libsais sorts.
const PARALLEL_BUCKETS_MIN: usize = 4 << 20;

/// The sorted suffixes of `old`.
fn sort_suffixes(old: &[u8]) -> Vec<i32> {
    let mut sa = vec![0i32; old.len()];
    if !old.is_empty() {
        // libsais, single-threaded: 30% faster than divsufsort on the corpus; its OpenMP build spins
        // badly when the cores are shared (10x slower under load). An error only reports bad
        // arguments (lengths checked above), which would leave an unsorted array: fall back then.
        let sorted = libsais::SuffixArrayConstruction::for_text(old)
            .in_borrowed_buffer(&mut sa)
            .single_threaded()
            .run()
            .is_ok();
        if !sorted {
            divsufsort::sort_in_place(old, &mut sa);
        }
    }
    sa
}

impl<'a> SuffixIndex<'a> {
    /// `old.len()` must fit in `i32` (checked by the encoder before).
    pub(crate) fn new(old: &'a [u8]) -> Self {
        Self::build(old, false)
    }

    /// [`SuffixIndex::new`] with the bucket table counted on a second thread when `parallel` and `old` is
    /// large (and the [`GramFilter`] with it).
    pub(crate) fn build(old: &'a [u8], parallel: bool) -> Self {
        let prefix_len = if old.len() >= WIDE_BUCKETS_MIN { 3 } else { 2 };
        Self::with_prefix_len(old, prefix_len, parallel && old.len() >= PARALLEL_BUCKETS_MIN)
    }

    fn with_prefix_len(old: &'a [u8], prefix_len: usize, parallel: bool) -> Self {
        let tables = || {
            let grams = if old.len() >= GRAM_FILTER_MIN {
                GramFilter::build(old)
            } else {
                GramFilter::default()
            };
            (bucket_starts(old, prefix_len), grams)
        };
        let ((buckets, grams), sa) = run_both(parallel, tables, || sort_suffixes(old));
        SuffixIndex {
            old,
            sa,
            buckets,
            prefix_len,
            grams,
        }
    }

    fn suffix(&self, rank: usize) -> (usize, &'a [u8]) {
        let start = self
            .sa
            .get(rank)
            .and_then(|&p| usize::try_from(p).ok())
            .unwrap_or(self.old.len());
        (start, self.old.get(start..).unwrap_or(&[]))
    }

    /// Whether old may hold a match of [`GRAM_LEN`] bytes or more for `needle` (false: it has none).
    pub(crate) fn may_match_long(&self, needle: &[u8]) -> bool {
        self.grams.may_occur(needle)
    }

    /// The old offset whose suffix shares the longest prefix with `needle` (one of them), and its length.
    pub(crate) fn longest_match(&self, needle: &[u8]) -> (usize, usize) {
        if self.sa.is_empty() || needle.is_empty() {
            return (0, 0);
        }
        let last = self.sa.len() - 1;
        let (mut lo, mut hi) = (0usize, last);
        if needle.len() >= self.prefix_len {
            // Every suffix ranked before the bucket is smaller than the needle and every one from its
            // end on is larger, so the binary search below ends on the same neighbours from here.
            let key = bucket_key(needle, self.prefix_len);
            let start = |k: usize| self.buckets.get(k).map_or(0, |&r| r as usize);
            lo = start(key).max(1) - 1;
            hi = start(key + 1).max(lo + 1).min(last);
        }
        let (pl, sl) = self.suffix(lo);
        let (ph, sh) = self.suffix(hi);
        let (mut lcp_lo, mut lcp_hi) = (common_prefix(sl, needle), common_prefix(sh, needle));
        let (mut pos_lo, mut pos_hi) = (pl, ph);
        // Binary search narrowing to two neighbouring suffixes, as bsdiff's `search`, but every suffix
        // between lo and hi shares min(lcp_lo, lcp_hi) bytes with the needle, so comparisons start there
        // (Manber and Myers): long matches no longer cost their length at every step.
        while hi - lo >= 2 {
            let mid = lo + (hi - lo) / 2;
            let (pm, s) = self.suffix(mid);
            let skip = lcp_lo.min(lcp_hi);
            let lcp = skip + common_prefix(s.get(skip..).unwrap_or(&[]), needle.get(skip..).unwrap_or(&[]));
            // A suffix that is a proper prefix of the needle sorts before it: counting it as larger (as
            // bsdiff does) breaks the order the search relies on and can miss the longest match.
            let less = match (s.get(lcp), needle.get(lcp)) {
                (Some(a), Some(b)) => a < b,
                (None, Some(_)) => true,
                _ => false,
            };
            if less {
                (lo, lcp_lo, pos_lo) = (mid, lcp, pm);
            } else {
                (hi, lcp_hi, pos_hi) = (mid, lcp, pm);
            }
        }
        if lcp_lo >= lcp_hi {
            (pos_lo, lcp_lo)
        } else {
            (pos_hi, lcp_hi)
        }
    }
}

/// Length of the common prefix of two slices, compared 8 bytes at a time (the first differing byte is
/// the lowest set byte of the XOR of two little-endian words).
pub(crate) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
    };
    let mut i = 0;
    while i + 8 <= n {
        match (word(a, i), word(b, i)) {
            (Some(x), Some(y)) if x == y => i += 8,
            (Some(x), Some(y)) => return i + (x ^ y).trailing_zeros() as usize / 8,
            _ => break,
        }
    }
    while i < n && a.get(i) == b.get(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_longest_match() {
        let old = b"the quick brown fox jumps over the lazy dog";
        let idx = SuffixIndex::new(old);
        let (pos, len) = idx.longest_match(b"lazy cat");
        assert_eq!((pos, len), (35, 5));
        let (pos, len) = idx.longest_match(b"the l");
        assert_eq!((pos, len), (31, 5));
        assert_eq!(idx.longest_match(b"QQQ").1, 0);
        assert_eq!(common_prefix(&[1; 40], &[1; 33]), 33);
    }

    /// The LCP-skipping search finds a match as long as a brute-force scan does, on repetitive data.
    #[test]
    fn longest_match_agrees_with_brute_force() {
        let old: Vec<u8> = (0..4000u32)
            .map(|i| [0u8, 0, 1, 0, 2][(i * i % 7 % 5) as usize])
            .collect();
        let idx = SuffixIndex::new(&old);
        for start in (0..old.len()).step_by(37) {
            let mut needle = old[start..(start + 300).min(old.len())].to_vec();
            needle.push(9);
            needle.extend_from_slice(&old[..50]);
            let best = (0..old.len())
                .map(|p| common_prefix(&old[p..], &needle))
                .max()
                .unwrap();
            let (pos, len) = idx.longest_match(&needle);
            assert_eq!(len, best, "needle from {start}");
            assert_eq!(common_prefix(&old[pos..], &needle), len);
        }
    }

    /// An index with its bucket table counted on a second thread is the same index as one built on one.
    #[test]
    fn parallel_buckets_give_the_same_index() {
        let old: Vec<u8> = (0..(u32::try_from(PARALLEL_BUCKETS_MIN).unwrap() + 4099))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 21).to_le_bytes()[0])
            .collect();
        let fresh = SuffixIndex::new(&old);
        let reused = SuffixIndex::build(&old, true);
        assert!(fresh.sa == reused.sa, "suffix arrays differ");
        assert!(fresh.buckets == reused.buckets, "bucket tables differ");
        assert!(fresh.grams.words == reused.grams.words, "gram filters differ");
        assert_eq!(fresh.prefix_len, reused.prefix_len);
    }

    /// The gram filter never rules out a string old holds (every window of old, and needles that run
    /// past old's end), and rules out most strings old lacks.
    #[test]
    fn gram_filter_has_no_false_negatives() {
        let old: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0] & 0x3f)
            .collect();
        let grams = GramFilter::build(&old);
        for start in 0..old.len() {
            assert!(grams.may_occur(&old[start..]), "window at {start} ruled out");
        }
        let mut ruled_out = 0;
        for start in 0..10_000 {
            let mut needle = old[start..start + GRAM_LEN].to_vec();
            needle[GRAM_LEN / 2] ^= 0x80; // old's bytes are all below 0x40: nowhere in old
            if !grams.may_occur(&needle) {
                ruled_out += 1;
            }
        }
        assert!(
            ruled_out > 5_000,
            "only {ruled_out} of 10000 absent strings ruled out"
        );
    }

    /// Needles around the two-byte bucket edges (first and last bucket, empty buckets, one-byte suffix,
    /// one-byte needles) still find the longest match.
    #[test]
    fn bucket_edges_agree_with_brute_force() {
        let old: Vec<u8> = (0..3000u32)
            .map(|i| [0u8, 1, 255, 7][(i * 31 % 11 % 4) as usize])
            .collect();
        let needles: Vec<Vec<u8>> = vec![
            vec![0],
            vec![255],
            vec![0, 0],
            vec![255, 255, 255],
            vec![0, 0, 0, 0, 0, 0, 9],
            vec![7, 9],
            vec![1, 255, 7, 0, 1],
            old[old.len() - 2..].to_vec(),
            [&old[old.len() - 2..], &[0u8, 0][..]].concat(),
            vec![8, 8],
            vec![old[old.len() - 1], 0],
            old[old.len() - 5..].to_vec(),
            [&old[old.len() - 5..], &[255u8][..]].concat(),
        ];
        for prefix_len in [2, 3] {
            let idx = SuffixIndex::with_prefix_len(&old, prefix_len, false);
            for needle in &needles {
                let best = (0..old.len())
                    .map(|p| common_prefix(&old[p..], needle))
                    .max()
                    .unwrap();
                let (pos, len) = idx.longest_match(needle);
                assert_eq!(len, best, "needle {needle:?}, {prefix_len}-byte buckets");
                assert_eq!(common_prefix(&old[pos..], needle), len);
            }
            let two = SuffixIndex::with_prefix_len(b"ab", prefix_len, false);
            assert_eq!(two.longest_match(b"abc"), (0, 2));
        }
        let single = SuffixIndex::new(b"x");
        assert_eq!(single.longest_match(b"xy"), (0, 1));
    }
}
