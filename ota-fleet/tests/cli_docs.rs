//! Issue 22: the real `ota-drill` prints shell completions and its man page, generated from its clap
//! definitions, naming every flag `--help` lists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use ota_testbed::cli_docs::{assert_completions_and_man, stdout_of};

fn drill(args: &[&str]) -> String {
    stdout_of(Path::new(env!("CARGO_BIN_EXE_ota-drill")), args)
}

#[test]
fn completions_and_the_man_page_name_every_flag() {
    let help = drill(&["--help"]);
    let flags: Vec<String> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && *w != "--help" && *w != "--version")
        .map(str::to_owned)
        .collect();
    assert!(
        flags.iter().any(|f| f == "--scenario") && flags.iter().any(|f| f == "--out"),
        "{help}"
    );
    assert_completions_and_man(drill, "--completions", "--man", &flags);
}
