//! Which delegated role is trusted for which target path (TUF 5.6.7.2, TAP 15), and role names in URLs and
//! file names.

use sha2::{Digest as _, Sha256};

/// Shell-style pattern match of one path against one delegation pattern, segment by segment, so that `*`
/// never crosses `/` (as python-tuf does): both are split on `/`, must have as many segments, and each
/// segment must match with `*`, `?`, `[...]` and `[!...]`.
pub(crate) fn path_matches_pattern(target: &str, pattern: &str) -> bool {
    let mut t = target.split('/');
    let mut p = pattern.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let tc: Vec<char> = ts.chars().collect();
                let pc: Vec<char> = ps.chars().collect();
                if !fnmatch(&tc, &pc) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// `fnmatch.fnmatchcase` on one segment. Iterative with one backtrack point for `*`, so it is linear-ish and
/// cannot recurse deeply on hostile patterns.
fn fnmatch(text: &[char], pattern: &[char]) -> bool {
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        let step = match pattern.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class_match(pattern, pi, text.get(ti).copied()) {
                ClassMatch::Matched(len) => Some(len),
                ClassMatch::NotMatched => None,
                ClassMatch::Literal => (text.get(ti) == Some(&'[')).then_some(1),
            },
            Some(c) => (text.get(ti) == Some(c)).then_some(1),
            None => None,
        };
        match step {
            Some(len) => {
                ti += 1;
                pi += len;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

enum ClassMatch {
    /// The class matched; the pattern advances by this many chars.
    Matched(usize),
    NotMatched,
    /// No closing `]`: the `[` is an ordinary character (as in Python's fnmatch).
    Literal,
}

fn class_match(pattern: &[char], start: usize, c: Option<char>) -> ClassMatch {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let body_start = i;
    // A `]` right after `[` or `[!` is a member, not the end.
    if pattern.get(i) == Some(&']') {
        i += 1;
    }
    while pattern.get(i).is_some_and(|ch| *ch != ']') {
        i += 1;
    }
    if pattern.get(i).is_none() {
        return ClassMatch::Literal;
    }
    let body = pattern.get(body_start..i).unwrap_or_default();
    let Some(c) = c else { return ClassMatch::NotMatched };
    let mut found = false;
    let mut j = 0;
    while let Some(&lo) = body.get(j) {
        if body.get(j + 1) == Some(&'-') && body.get(j + 2).is_some() {
            let hi = body.get(j + 2).copied().unwrap_or(lo);
            if lo <= c && c <= hi {
                found = true;
            }
            j += 3;
        } else {
            if lo == c {
                found = true;
            }
            j += 1;
        }
    }
    if found != negate {
        ClassMatch::Matched(i + 1 - start)
    } else {
        ClassMatch::NotMatched
    }
}

/// Lower-case hex SHA-256 of the target path, as `path_hash_prefixes` compares against.
pub(crate) fn path_hash_hex(target: &str) -> String {
    hex::encode(Sha256::digest(target.as_bytes()))
}

/// The succinct hash-bin role responsible for `target` (TAP 15): the leftmost `bit_length` bits of the
/// path's SHA-256 as the bin number, zero-padded lower-case hex as wide as the last bin's number.
pub(crate) fn succinct_bin_for(target: &str, bit_length: u32, name_prefix: &str) -> String {
    let digest = Sha256::digest(target.as_bytes());
    let mut first = [0u8; 4];
    first.copy_from_slice(digest.get(..4).unwrap_or(&[0; 4]));
    let bits = bit_length.clamp(1, 32);
    let bin = u64::from(u32::from_be_bytes(first)) >> (32 - bits);
    format!("{name_prefix}-{bin:0width$x}", width = succinct_suffix_len(bits))
}

/// True when `role` is one of the bins a succinct delegation describes.
pub(crate) fn succinct_is_bin(role: &str, bit_length: u32, name_prefix: &str) -> bool {
    let Some(suffix) = role.strip_prefix(name_prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let bits = bit_length.clamp(1, 32);
    suffix.len() == succinct_suffix_len(bits)
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < (1u64 << bits))
}

fn succinct_suffix_len(bits: u32) -> usize {
    format!("{:x}", (1u64 << bits) - 1).len()
}

/// Percent-encodes a role name for URLs and file names like Python's `urllib.parse.quote(name, "")`:
/// everything but ASCII letters, digits and `_.-~` becomes `%XX`, so `/` and `..` cannot escape a directory.
pub fn quote_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_does_not_cross_slash() {
        assert!(path_matches_pattern("a/b.txt", "a/*.txt"));
        assert!(!path_matches_pattern("a/c/b.txt", "a/*.txt"));
        assert!(!path_matches_pattern("a/c/b.txt", "*"));
        assert!(path_matches_pattern("file.txt", "*"));
        assert!(path_matches_pattern("a/c/b.txt", "a/*/*"));
    }

    #[test]
    fn question_and_classes() {
        assert!(path_matches_pattern("v1.bin", "v?.bin"));
        assert!(!path_matches_pattern("v10.bin", "v?.bin"));
        assert!(path_matches_pattern("v3.bin", "v[0-4].bin"));
        assert!(!path_matches_pattern("v5.bin", "v[0-4].bin"));
        assert!(path_matches_pattern("v5.bin", "v[!0-4].bin"));
        assert!(path_matches_pattern("a[b", "a[b"));
        assert!(path_matches_pattern("]", "[]]"));
        assert!(path_matches_pattern("abcabd", "*ab?"));
        assert!(!path_matches_pattern("", "?"));
        assert!(path_matches_pattern("", "*"));
    }

    #[test]
    fn succinct_bins_match_python_tuf() {
        // python-tuf: SuccinctRoles([], 1, 8, "bin").get_role_for_target("hello") == "bin-2c"
        // (sha256("hello") starts 2cf24dba...).
        assert_eq!(succinct_bin_for("hello", 8, "bin"), "bin-2c");
        assert_eq!(succinct_bin_for("hello", 4, "b"), "b-2");
        assert_eq!(succinct_bin_for("hello", 10, "b"), "b-0b3");
        assert!(succinct_is_bin("b-0b3", 10, "b"));
        assert!(!succinct_is_bin("b-b3", 10, "b"));
        assert!(!succinct_is_bin("b-400", 10, "b"));
        assert!(!succinct_is_bin("c-0b3", 10, "b"));
    }

    #[test]
    fn quoting_like_python() {
        assert_eq!(quote_name("a/b c.json"), "a%2Fb%20c.json");
        assert_eq!(quote_name("..%"), "..%25");
        assert_eq!(quote_name("é"), "%C3%A9");
    }
}
