//! Suffix array of the old image (divsufsort: O(n), 4 bytes per input byte) and the longest-match search
//! bsdiff uses over it.

/// The old image and its sorted suffixes.
pub(crate) struct SuffixIndex<'a> {
    old: &'a [u8],
    sa: Vec<i32>,
}

impl<'a> SuffixIndex<'a> {
    /// `old.len()` must fit in `i32` (checked by the encoder before).
    pub(crate) fn new(old: &'a [u8]) -> Self {
        let mut sa = vec![0i32; old.len()];
        if !old.is_empty() {
            divsufsort::sort_in_place(old, &mut sa);
        }
        SuffixIndex { old, sa }
    }

    fn suffix(&self, rank: usize) -> (usize, &'a [u8]) {
        let start = self
            .sa
            .get(rank)
            .and_then(|&p| usize::try_from(p).ok())
            .unwrap_or(self.old.len());
        (start, self.old.get(start..).unwrap_or(&[]))
    }

    /// The old offset whose suffix shares the longest prefix with `needle` (one of them), and its length.
    pub(crate) fn longest_match(&self, needle: &[u8]) -> (usize, usize) {
        if self.sa.is_empty() || needle.is_empty() {
            return (0, 0);
        }
        let (mut lo, mut hi) = (0usize, self.sa.len() - 1);
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
            let less = matches!((s.get(lcp), needle.get(lcp)), (Some(a), Some(b)) if a < b);
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
}
