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

/// Checks the name of a delegated role: a file name stem (it names `V.<role>.json`) that is not a
/// top-level role's name (TUF 5.6.7: top-level roles are never delegated).
pub(crate) fn check_delegated_role_name(name: &str) -> Result<()> {
    check_file_stem("role name", name)?;
    if ["root", "targets", "snapshot", "timestamp"].contains(&name) {
        return Err(invalid(
            format!("role name {name:?}"),
            "is a top-level role's name",
        ));
    }
    Ok(())
}

/// Checks a delegation path pattern: like a target name, but segments may use `*` and `?`. Classes
/// (`[...]`) match (see [`path_matches`]) but are refused here, because [`pattern_covers`] cannot yet
/// tell whether a class pattern lies inside its parent's.
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
/// be equal. This is the device's matcher ([`ota_tuf::path_matches_pattern`]), so publisher and
/// device agree on every pattern, `[...]` included (patterns from other tools may carry classes).
pub fn path_matches(pattern: &str, name: &str) -> bool {
    ota_tuf::path_matches_pattern(name, pattern)
}

/// Whether every target name matching path pattern `child` also matches `parent` (TUF 4.5: a role
/// delegated by a delegated role is only reached for names its parent's patterns match). Segment by
/// segment, like [`path_matches`]. Conservative: when this says no, the child may still be covered in
/// some contrived case (`?*` under `*?`), and such a pattern is refused rather than trusted.
pub fn pattern_covers(parent: &str, child: &str) -> bool {
    let pat: Vec<&str> = parent.split('/').collect();
    let sub: Vec<&str> = child.split('/').collect();
    pat.len() == sub.len()
        && pat
            .iter()
            .zip(&sub)
            .all(|(p, c)| glob_covers(p.as_bytes(), c.as_bytes()))
}

/// Whether glob `p` matches glob `c` read as a string of tokens: a `*` of `p` takes any run of tokens
/// (wildcards included), a `?` of `p` one token other than `*`, a literal only itself. Dynamic
/// programming over (rest of `p`, rest of `c`): quadratic in two short patterns, no recursion.
fn glob_covers(p: &[u8], c: &[u8]) -> bool {
    let m = c.len();
    let at = |v: &[bool], k: usize| v.get(k).copied().unwrap_or(false);
    // next[j]: whether the rest of `p` after the current token covers c[j..]; the empty rest covers
    // only the empty rest.
    let mut next: Vec<bool> = (0..=m).map(|j| j == m).collect();
    for &pc in p.iter().rev() {
        let mut cur = vec![false; m + 1];
        for j in (0..=m).rev() {
            let covered = match (pc, c.get(j)) {
                (b'*', _) => at(&next, j) || (j < m && at(&cur, j + 1)),
                (_, None) => false,
                (b'?', Some(&cc)) => cc != b'*' && at(&next, j + 1),
                (lit, Some(&cc)) => cc == lit && at(&next, j + 1),
            };
            if let Some(slot) = cur.get_mut(j) {
                *slot = covered;
            }
        }
        next = cur;
    }
    at(&next, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_patterns_are_covered_only_by_wider_parent_patterns() {
        assert!(pattern_covers("gw-a/*/*/*", "gw-a/beta/*/*"));
        assert!(pattern_covers("gw-a/*/*/*", "gw-a/*/*/*"));
        assert!(pattern_covers("*/*/*/*", "gw-a/beta/1.?.*/fw-*.bin"));
        assert!(pattern_covers("a*", "a?*"));
        assert!(pattern_covers("fw-?.bin", "fw-1.bin"));
        assert!(!pattern_covers("gw-a/*/*/*", "gw-b/*/*/*"));
        assert!(!pattern_covers("gw-a/*/*/*", "gw-a/*/*"));
        assert!(!pattern_covers("gw-a/beta/*/*", "gw-a/*/*/*"));
        assert!(!pattern_covers("fw-?.bin", "fw-*.bin"));
        assert!(!pattern_covers("a*b", "a*"));
    }

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
        // Classes as python-tuf reads them, for patterns written by other tools.
        assert!(path_matches("gw-[ab]/*", "gw-b/fw.bin"));
        assert!(!path_matches("gw-[!ab]/*", "gw-b/fw.bin"));
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
