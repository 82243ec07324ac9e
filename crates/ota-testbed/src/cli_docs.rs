//! The issue-22 check shared by every binary's test: its shell completions and man page, generated from
//! its clap definitions, name every subcommand (or flag) its `--help` lists.

use std::path::Path;
use std::process::Command;

/// Runs `program` with `args`; asserts it succeeded and returns its stdout.
pub fn stdout_of(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The visible subcommands of a clap `--help` text (those between `Commands:` and `Options:`), without
/// `help`.
pub fn subcommands(help: &str) -> Vec<String> {
    let commands = help
        .split("Commands:")
        .nth(1)
        .expect("--help lists no Commands:")
        .split("Options:")
        .next()
        .unwrap_or_default();
    commands
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_owned)
        .collect()
}

/// Asserts that `run([completions, shell])` for bash, zsh and fish names every one of `names` (without
/// leading dashes), and that `run([man])` is roff naming every one (dashes escaped as roff writes them);
/// returns the man page, for the caller's own checks.
pub fn assert_completions_and_man(
    run: impl Fn(&[&str]) -> String,
    completions: &str,
    man: &str,
    names: &[String],
) -> String {
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&[completions, shell]);
        for n in names {
            assert!(
                script.contains(n.trim_start_matches('-')),
                "{shell} completion lacks {n}"
            );
        }
    }
    let page = run(&[man]);
    assert!(page.contains(".TH"), "not roff: {page}");
    for n in names {
        assert!(page.contains(&n.replace('-', "\\-")), "man page lacks {n}");
    }
    page
}
