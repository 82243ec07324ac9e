//! Names that end up in file paths and URLs: target names, role names, key names, and the TUF path
//! patterns of delegations.

use crate::error::{invalid, Result};

/// Longest target name accepted, in bytes.
pub const MAX_TARGET_NAME_LEN: usize = 512;

fn segment_ok(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && !seg.starts_with('.')
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Checks a target name: `/`-separated segments of ASCII letters, digits, `.`, `_`, `-`, `+`, none
/// empty or starting with `.`. Names map to paths under `targets/` and to URLs, so anything that
/// could escape the directory or need escaping is refused.
pub fn check_target_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TARGET_NAME_LEN {
        return Err(invalid(
            format!("target name {name:?}"),
            format!("must be 1 to {MAX_TARGET_NAME_LEN} bytes"),
        ));
    }
    if !name.split('/').all(segment_ok) {
        return Err(invalid(
            format!("target name {name:?}"),
            "expected '/'-separated segments of ASCII letters, digits, '.', '_', '-', '+', \
             none empty or starting with '.'",
        ));
    }
    Ok(())
}

/// Checks a role or key name: one segment of ASCII letters, digits, `.`, `_`, `-`, at most 64 bytes.
pub fn check_file_stem(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("{what} {name:?}"),
            "expected 1 to 64 ASCII letters, digits, '.', '_', '-', not starting with '.' or '-'",
        ))
    }
}

/// Checks a delegation path pattern: like a target name, but segments may use `*` and `?`.
pub fn check_path_pattern(pattern: &str) -> Result<()> {
    let ok = !pattern.is_empty()
        && pattern.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'*' | b'?')
                })
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("path pattern {pattern:?}"),
            "expected '/'-separated segments of ASCII letters, digits, '.', '_', '-', '+', '*', '?' \
             ('[...]' classes are not supported)",
        ))
    }
}

/// Whether a target name matches a delegation path pattern the way python-tuf matches it (TUF 4.5
/// PATHPATTERN): segment by segment, so `*` and `?` never cross a `/`, and the segment counts must
/// be equal.
pub fn path_matches(pattern: &str, name: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let got: Vec<&str> = name.split('/').collect();
    pat.len() == got.len()
        && pat
            .iter()
            .zip(&got)
            .all(|(p, n)| glob_segment(p.as_bytes(), n.as_bytes()))
}

/// fnmatch of one segment with `*` (any run) and `?` (one byte).
fn glob_segment(pat: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with one backtrack point: linear-ish, no recursion on hostile input.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == s.get(i) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pat.get(p..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_does_not_cross_slashes() {
        assert!(path_matches("gw-a/*/*/*", "gw-a/stable/1.0.0/fw.bin"));
        assert!(!path_matches("gw-a/*", "gw-a/stable/1.0.0/fw.bin"));
        assert!(path_matches("*.bin", "fw.bin"));
        assert!(!path_matches("*.bin", "x/fw.bin"));
        assert!(path_matches("fw-?.bin", "fw-2.bin"));
        assert!(!path_matches("fw-?.bin", "fw-22.bin"));
        assert!(path_matches("a*b*c", "aXXbYYc"));
        assert!(!path_matches("a*b*c", "aXXbYY"));
        assert!(path_matches("*", "anything"));
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["", "/abs", "a//b", "../x", "a/./b", ".hidden", "sp ace", "a\\b"] {
            assert!(check_target_name(bad).is_err(), "{bad}");
        }
        check_target_name("gw-a/stable/1.2.3+build.4/fw.bin").unwrap();
        assert!(check_path_pattern("gw-[ab]/*").is_err());
        check_path_pattern("gw-a/*/*/*").unwrap();
    }
}
