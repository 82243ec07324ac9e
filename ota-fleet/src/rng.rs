//! Reproducible randomness without a generator's state: every random choice of a drill is a pure hash of
//! the scenario's seed and what the choice is about (device number, request number, purpose), so the same
//! seed gives the same drill whatever order the tasks happen to run in.

/// SplitMix64's finaliser: a fast, well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit hash of the seed and the given words.
pub(crate) fn hash(seed: u64, words: &[u64]) -> u64 {
    words.iter().fold(mix(seed), |acc, w| mix(acc ^ mix(*w)))
}

/// A hash of a string (FNV-1a, then mixed), for keying choices on names.
pub(crate) fn hash_str(s: &str) -> u64 {
    let fnv = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(fnv)
}

/// A number in [0, 1) from the seed and words.
pub(crate) fn unit_interval(seed: u64, words: &[u64]) -> f64 {
    // The top 53 bits fill an f64 mantissa exactly.
    let top = hash(seed, words) >> 11;
    // Exact: 2^53 values, each below 2^53, convert to f64 without rounding.
    #[allow(clippy::cast_precision_loss)]
    let x = top as f64 / (1u64 << 53) as f64;
    x
}

/// A number in [0, n) (0 when n is 0) from the seed alone.
pub(crate) fn below(seed: u64, n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        hash(seed, &[0x6265_6c6f]) % n
    }
}

/// Whether a choice with probability `p` happens, for these words.
pub(crate) fn chance(seed: u64, words: &[u64], p: f64) -> bool {
    unit_interval(seed, words) < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_interval_is_in_range_and_spread() {
        let xs: Vec<f64> = (0..1000).map(|i| unit_interval(3, &[i])).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let low = xs.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&low), "{low}");
    }

    #[test]
    fn different_words_give_different_hashes() {
        assert_ne!(hash(1, &[1, 2]), hash(1, &[2, 1]));
        assert_ne!(hash_str("dev-1"), hash_str("dev-2"));
    }
}
