//! Issue 21: the one TUF path-pattern matcher ([`ota_tuf::path_matches_pattern`], used by the device
//! and the publisher) agrees with python-tuf's own (`DelegatedRole.is_delegated_path`, fnmatch per
//! segment) on generated patterns and names with `*`, `?`, `[...]`, `[!...]` and `/`.
//!
//! python-tuf runs as one real subprocess for the whole test: a JSON line per case in, a JSON answer
//! per line out, so thousands of cases take about a second. A missing python-tuf fails the test
//! (`ota_testbed::python_tuf` panics), it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Reads `{"pattern": ..., "name": ...}` lines and answers each with `true` or `false`.
const PYTHON_MATCHER: &str = r#"
import json, sys
from tuf.api.metadata import DelegatedRole
for line in sys.stdin:
    case = json.loads(line)
    role = DelegatedRole("r", [], 1, False, paths=[case["pattern"]])
    sys.stdout.write(json.dumps(role.is_delegated_path(case["name"])) + "\n")
    sys.stdout.flush()
"#;

/// python-tuf's matcher in a subprocess, asked one case at a time over pipes.
struct PythonTuf {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PythonTuf {
    fn start() -> PythonTuf {
        let mut child = Command::new(ota_testbed::python_tuf())
            .args(["-W", "ignore", "-c", PYTHON_MATCHER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python-tuf");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        PythonTuf { child, stdin, stdout }
    }

    fn matches(&mut self, pattern: &str, name: &str) -> bool {
        let case = serde_json::json!({ "pattern": pattern, "name": name });
        writeln!(self.stdin, "{case}").expect("write a case to python-tuf");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read python-tuf's answer");
        serde_json::from_str(&answer).unwrap_or_else(|e| {
            panic!("python-tuf answered {answer:?} for pattern {pattern:?}, name {name:?}: {e}")
        })
    }
}

impl Drop for PythonTuf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Characters that make brackets, ranges and negations likely, a few plain ones so matches happen,
/// and one non-ASCII character.
const PATTERN_CHARS: &[char] = &['a', 'b', 'z', '-', '!', '[', ']', '*', '?', '^', '\\', 'é'];
const NAME_CHARS: &[char] = &['a', 'b', 'z', '-', '!', '[', ']', '^', '\\', 'é', '*', '?'];

fn segment(chars: &'static [char], max_len: usize) -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(prop::sample::select(chars), 0..=max_len).prop_map(|c| c.into_iter().collect())
}

fn path(chars: &'static [char], max_len: usize, segments: usize) -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(segment(chars, max_len), segments).prop_map(|s| s.join("/"))
}

/// Characters of bracket bodies: ranges forwards and backwards, `-` and `]` and `!` in every place.
const BRACKET_CHARS: &[char] = &['a', 'b', 'z', '0', '-', '!', ']', '^'];

/// A pattern segment built from whole pieces: literals, `*`, `?`, and `[` + body + `]` (so bracket
/// expressions, the part the two matchers disagreed on, are common).
fn pattern_segment() -> impl Strategy<Value = String> + Clone {
    let piece = prop_oneof![
        2 => prop::sample::select(&['a', 'b', 'z', '-', '!', '^', ']'][..]).prop_map(String::from),
        1 => Just("*".to_owned()),
        1 => Just("?".to_owned()),
        3 => prop::collection::vec(prop::sample::select(BRACKET_CHARS), 1..=5)
            .prop_map(|body| format!("[{}]", body.into_iter().collect::<String>())),
    ];
    prop::collection::vec(piece, 0..=4).prop_map(|p| p.concat())
}

/// A pattern of `segments` segments, from characters (any syntax, unclosed brackets included) or
/// from whole pieces.
fn pattern(segments: usize) -> impl Strategy<Value = String> + Clone {
    let segment = prop_oneof![segment(PATTERN_CHARS, 7), pattern_segment()];
    prop::collection::vec(segment, segments).prop_map(|s| s.join("/"))
}

/// A name most likely to match `pattern`, made by walking it with one random edit per character:
/// a literal kept (or, now and then, replaced), `*` as zero to two characters, `?` as any character,
/// a bracket as its first member (or, negated, any character).
fn name_like(pattern: &str, edits: &[(u8, char)]) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let mut name = String::new();
    let mut i = 0;
    while let Some(&c) = p.get(i) {
        let (edit, other) = edits.get(i).copied().unwrap_or((0, 'a'));
        i += 1;
        match c {
            '/' => name.push('/'),
            '*' => name.extend([other, 'a'].iter().take(usize::from(edit % 3))),
            '?' => name.push(other),
            '[' => {
                let close = (i + 1..p.len()).find(|&k| p[k] == ']');
                match (close, p.get(i)) {
                    (Some(k), Some('!')) => {
                        name.push(other);
                        i = k + 1;
                    }
                    (Some(k), Some(&first)) => {
                        name.push(first);
                        i = k + 1;
                    }
                    _ => name.push('['),
                }
            }
            c if edit < 5 => name.push(c),
            _ => name.push(other),
        }
    }
    name
}

/// A pattern of 1 to 3 segments and a name: mostly one made to look like the pattern (see
/// [`name_like`]), else one of as many segments, else one of any count up to 3.
fn case() -> impl Strategy<Value = (String, String)> {
    (1usize..=3).prop_flat_map(|n| {
        let pattern = pattern(n);
        let edits = prop::collection::vec((0u8..6, prop::sample::select(NAME_CHARS)), 24);
        prop_oneof![
            4 => (pattern.clone(), edits).prop_map(|(p, e)| {
                let name = name_like(&p, &e);
                (p, name)
            }),
            1 => (pattern.clone(), path(NAME_CHARS, 4, n)),
            1 => (pattern, (1usize..=3).prop_flat_map(|m| path(NAME_CHARS, 4, m))),
        ]
    })
}

#[test]
fn issue_21_path_matcher_agrees_with_python_tuf() {
    let python = RefCell::new(PythonTuf::start());
    let (cases, matched) = (Cell::new(0u32), Cell::new(0u32));
    let config = Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&case(), |(pattern, name)| {
        let expected = python.borrow_mut().matches(&pattern, &name);
        let got = ota_tuf::path_matches_pattern(&name, &pattern);
        cases.set(cases.get() + 1);
        matched.set(matched.get() + u32::from(expected));
        prop_assert_eq!(got, expected, "pattern {:?}, name {:?}", pattern, name);
        Ok(())
    });
    if let Err(e) = result {
        panic!("the matcher disagrees with python-tuf: {e}");
    }
    // The generator must reach both answers often, or agreeing would prove little.
    let (cases, matched) = (cases.get(), matched.get());
    eprintln!("{matched} of {cases} generated cases match");
    assert!(
        matched * 10 >= cases && matched * 10 <= cases * 9,
        "{matched} of {cases} generated cases match"
    );
}

/// Hand-picked corners the generator may miss, all through python-tuf as well.
#[test]
fn issue_21_bracket_corners_agree_with_python_tuf() {
    let mut python = PythonTuf::start();
    let patterns = [
        "[b-a]", "[!b-a]", "[b-a-0]", "[b-a!x]", "[-a]", "[a-]", "[!-a]", "[]-a]", "[!]]", "[!]", "[[]",
        "[a-c-e]", "[a--c]", "[--a]", "[!--]", "[z-a-c]", "[a-c]*/?", "*[!a]", "[\\-a]", "[^a]", "[&&]",
    ];
    let names = [
        "a", "b", "c", "d", "x", "-", "0", "]", "[", "!", "^", "&", "\\", "[!]", "", "ab/c", "é",
    ];
    for pattern in patterns {
        for name in names {
            let expected = python.matches(pattern, name);
            let got = ota_tuf::path_matches_pattern(name, pattern);
            assert_eq!(got, expected, "pattern {pattern:?}, name {name:?}");
        }
    }
}
