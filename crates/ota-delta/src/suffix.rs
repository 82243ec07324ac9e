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
        // Binary search narrowing to two neighbouring suffixes, as bsdiff's `search`.
        while hi - lo >= 2 {
            let mid = lo + (hi - lo) / 2;
            let (_, s) = self.suffix(mid);
            let k = s.len().min(needle.len());
            if s.get(..k) < needle.get(..k) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (pl, sl) = self.suffix(lo);
        let (ph, sh) = self.suffix(hi);
        let (ll, lh) = (common_prefix(sl, needle), common_prefix(sh, needle));
        if ll >= lh {
            (pl, ll)
        } else {
            (ph, lh)
        }
    }
}

/// Length of the common prefix of two slices, compared 16 bytes at a time.
pub(crate) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (a.get(..n).unwrap_or(&[]), b.get(..n).unwrap_or(&[]));
    let mut i = 0;
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        if ca != cb {
            break;
        }
        i += 16;
    }
    i + a
        .get(i..)
        .unwrap_or(&[])
        .iter()
        .zip(b.get(i..).unwrap_or(&[]))
        .take_while(|(x, y)| x == y)
        .count()
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
}
