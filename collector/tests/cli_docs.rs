//! Issue 22: the real `collector` prints shell completions and its man page, generated from its clap
//! definitions, both naming every subcommand `--help` lists; `--help` lists the exit statuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use ota_testbed::cli_docs::{assert_completions_and_man, stdout_of, subcommands};

fn collector(args: &[&str]) -> String {
    stdout_of(Path::new(env!("CARGO_BIN_EXE_collector")), args)
}

#[test]
fn completions_and_the_man_page_name_every_subcommand() {
    let help = collector(&["--help"]);
    assert!(
        help.contains("Exit status:") && help.contains("2  could not run"),
        "{help}"
    );
    let commands = subcommands(&help);
    for c in ["enroll", "revoke", "serve", "summary"] {
        assert!(commands.iter().any(|x| x == c), "{help}");
    }
    assert_completions_and_man(collector, "completions", "man", &commands);
}
