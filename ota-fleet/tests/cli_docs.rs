//! Issue 22: the real `ota-drill` prints shell completions and its man page, generated from its clap
//! definitions, naming every flag `--help` lists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

fn drill(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ota-drill"))
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
fn completions_and_the_man_page_name_every_flag() {
    let help = drill(&["--help"]);
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && *w != "--help" && *w != "--version")
        .collect();
    assert!(
        flags.contains(&"--scenario") && flags.contains(&"--out"),
        "{help}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = drill(&["--completions", shell]);
        for f in &flags {
            assert!(
                script.contains(f.trim_start_matches('-')),
                "{shell} completion lacks {f}"
            );
        }
    }
    let man = drill(&["--man"]);
    assert!(man.contains(".TH"), "not roff: {man}");
    for f in &flags {
        assert!(man.contains(&f.replace('-', "\\-")), "man page lacks {f}");
    }
}
