//! Issue 22: the real `collector` prints shell completions and its man page, generated from its clap
//! definitions, both naming every subcommand `--help` lists; `--help` lists the exit statuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

fn collector(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_and_the_man_page_name_every_subcommand() {
    let help = collector(&["--help"]);
    assert!(
        help.contains("Exit status:") && help.contains("2  could not run"),
        "{help}"
    );
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .collect();
    for c in ["enroll", "revoke", "serve", "summary"] {
        assert!(commands.contains(&c), "{help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = collector(&["completions", shell]);
        for c in &commands {
            assert!(script.contains(c), "{shell} completion lacks {c}");
        }
    }
    let man = collector(&["man"]);
    assert!(man.contains(".TH"), "not roff: {man}");
    for c in &commands {
        assert!(man.contains(c), "man page lacks {c}");
    }
}
