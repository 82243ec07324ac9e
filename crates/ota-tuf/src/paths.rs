//! Which delegated role is trusted for which target path (TUF 5.6.7.2, TAP 15), and role names in URLs and
//! file names.

use sha2::{Digest as _, Sha256};

/// Whether `target` matches the delegation path pattern `pattern` (TUF 4.5 PATHPATTERN), exactly as
/// python-tuf decides it: both are split on `/` and must have as many segments, and each segment must
/// match as Python's `fnmatch.fnmatchcase` matches it (`*` any run, `?` one character, `[seq]`,
/// `[!seq]`), so `*` never crosses a `/`. The one matcher of the workspace: the publisher uses it too.
pub fn path_matches_pattern(target: &str, pattern: &str) -> bool {
    let mut t = target.split('/');
    let mut p = pattern.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let text: Vec<char> = ts.chars().collect();
                if !segment_matches(&text, &tokens(ps)) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// One element of a pattern segment, as `fnmatch.translate` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of characters, the empty one included.
    AnyRun,
    /// `?`: any one character.
    AnyChar,
    /// `[...]`: one character of a set, or (`[!...]`) not of it.
    Class(CharClass),
    /// Any other character, and a `[` without a closing `]`.
    Literal(char),
}

/// A bracket expression after Python's clean-up: inclusive ranges (a lone character is a range of
/// one). Empty and not negated it matches nothing; empty and negated, any character.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CharClass {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl CharClass {
    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

/// Reads a pattern segment into tokens the way `fnmatch.translate` does (Python 3.11).
fn tokens(pattern: &str) -> Vec<Token> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while let Some(&c) = p.get(i) {
        i += 1;
        let token = match c {
            '*' => Token::AnyRun,
            '?' => Token::AnyChar,
            '[' => match bracket(&p, i) {
                Some((class, next)) => {
                    i = next;
                    Token::Class(class)
                }
                None => Token::Literal('['),
            },
            c => Token::Literal(c),
        };
        out.push(token);
    }
    out
}

/// The bracket expression whose body starts at `start` (just after `[`), and the index after its `]`;
/// `None` when no `]` closes it (the `[` is then a literal). A `]` first in the body (after an
/// optional `!`) is a member, not the end.
fn bracket(p: &[char], start: usize) -> Option<(CharClass, usize)> {
    let mut end = start;
    if p.get(end) == Some(&'!') {
        end += 1;
    }
    if p.get(end) == Some(&']') {
        end += 1;
    }
    while p.get(end).is_some_and(|c| *c != ']') {
        end += 1;
    }
    let body = p.get(start..end).filter(|_| end < p.len())?;
    Some((class_of(&range_chunks(body)), end + 1))
}

/// `fnmatch.translate`'s chunks of a bracket body: split at each `-` that makes a range (not the first
/// member's, and not one right after a range), then ranges running backwards removed along with their
/// ends. Between two chunks lies a range from the last character of one to the first of the next; a
/// `-` inside a chunk is a member.
fn range_chunks(body: &[char]) -> Vec<Vec<char>> {
    let mut chunks: Vec<Vec<char>> = Vec::new();
    let mut chunk_start = 0;
    let mut search = if body.first() == Some(&'!') { 2 } else { 1 };
    while let Some(dash) = body
        .get(search..)
        .and_then(|rest| rest.iter().position(|c| *c == '-'))
        .map(|at| search + at)
    {
        chunks.push(body.get(chunk_start..dash).unwrap_or_default().to_vec());
        chunk_start = dash + 1;
        search = dash + 3;
    }
    match (body.get(chunk_start..).unwrap_or_default(), chunks.last_mut()) {
        // A trailing `-` is a member of the last chunk.
        ([], Some(last)) => last.push('-'),
        (rest, _) => chunks.push(rest.to_vec()),
    }
    for k in (1..chunks.len()).rev() {
        let backwards = matches!(
            (chunks.get(k - 1).and_then(|c| c.last()), chunks.get(k).and_then(|c| c.first())),
            (Some(lo), Some(hi)) if lo > hi
        );
        if backwards {
            let next = chunks.remove(k);
            if let Some(prev) = chunks.get_mut(k - 1) {
                prev.pop();
                prev.extend(next.into_iter().skip(1));
            }
        }
    }
    chunks
}

/// The set the chunks stand for, read as Python's `re` reads `[...]` built from them: a leading `!`
/// negates (even one a removed range brought to the front, as in Python), a lone `!` matches any
/// character, nothing at all matches nothing.
fn class_of(chunks: &[Vec<char>]) -> CharClass {
    // `None` is a range-making `-` between two chunks; `Some(c)` a member character.
    let mut items: Vec<Option<char>> = Vec::new();
    for (n, chunk) in chunks.iter().enumerate() {
        if n > 0 {
            items.push(None);
        }
        items.extend(chunk.iter().copied().map(Some));
    }
    let negated = items.first() == Some(&Some('!'));
    let members = if negated {
        items.get(1..).unwrap_or_default()
    } else {
        &items[..]
    };
    let mut ranges = Vec::new();
    let mut at = 0;
    while let Some(item) = members.get(at) {
        match (item, members.get(at + 1), members.get(at + 2)) {
            (Some(lo), Some(None), Some(Some(hi))) => {
                ranges.push((*lo, *hi));
                at += 3;
            }
            (Some(c), _, _) => {
                ranges.push((*c, *c));
                at += 1;
            }
            // A `-` with no range around it is a member.
            (None, _, _) => {
                ranges.push(('-', '-'));
                at += 1;
            }
        }
    }
    CharClass { negated, ranges }
}

/// Whether `text` (one segment) matches the tokens in full. Every token but `*` takes exactly one
/// character, so one backtrack point (the last `*`) is enough: linear-ish, no recursion on hostile
/// patterns.
fn segment_matches(text: &[char], pattern: &[Token]) -> bool {
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(ti) {
        let step = match pattern.get(pi) {
            Some(Token::AnyRun) => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(Token::AnyChar) => true,
            Some(Token::Class(class)) => class.contains(c),
            Some(Token::Literal(l)) => *l == c,
            None => false,
        };
        if step {
            ti += 1;
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern
        .get(pi..)
        .is_some_and(|rest| rest.iter().all(|t| *t == Token::AnyRun))
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

    /// Corners of Python's `fnmatch.translate`, each checked against Python 3.11.
    #[test]
    fn brackets_like_python_fnmatch() {
        // A backward range is dropped with its ends: `[b-a]` matches nothing, `[!b-a]` anything.
        assert!(!path_matches_pattern("a", "[b-a]"));
        assert!(!path_matches_pattern("b", "[b-a]"));
        assert!(path_matches_pattern("x", "[!b-a]"));
        // ... and what follows it joins the previous chunk: `[b-a-0]` is {'-', '0'}.
        assert!(path_matches_pattern("-", "[b-a-0]"));
        assert!(path_matches_pattern("0", "[b-a-0]"));
        assert!(!path_matches_pattern("a", "[b-a-0]"));
        // A `!` a dropped range brings to the front negates.
        assert!(path_matches_pattern("y", "[b-a!x]"));
        assert!(!path_matches_pattern("x", "[b-a!x]"));
        // First and last `-` are members; `]` first is a member.
        assert!(path_matches_pattern("-", "[-a]"));
        assert!(path_matches_pattern("-", "[a-]"));
        assert!(path_matches_pattern("-", "[!a]"));
        assert!(!path_matches_pattern("-", "[!-a]"));
        assert!(path_matches_pattern("^", "[]-a]"));
        assert!(path_matches_pattern("b", "[!]]"));
        assert!(!path_matches_pattern("]", "[!]]"));
        // `[!]` is not closed: literal characters.
        assert!(path_matches_pattern("[!]", "[!]"));
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
