//! Issue 22: the real `device-agent` prints shell completions and its man page, generated from its clap
//! definitions, without a configuration file; both name every subcommand `--help` lists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_e2e::agent_binary;
use ota_testbed::cli_docs::{assert_completions_and_man, stdout_of, subcommands};

fn agent(args: &[&str]) -> String {
    let args = [&["--config", "/nonexistent/agent.toml"][..], args].concat();
    stdout_of(&agent_binary(), &args)
}

#[test]
fn completions_and_the_man_page_name_every_subcommand() {
    let commands = subcommands(&agent(&["--help"]));
    assert!(commands.len() >= 8, "{commands:?}");
    assert!(
        !commands.contains(&"completions".to_owned()),
        "hidden: {commands:?}"
    );
    let man = assert_completions_and_man(agent, "completions", "man", &commands);
    assert!(agent(&["completions", "bash"]).contains("complete -F"));
    assert!(
        man.contains("Exit status"),
        "the man page carries the exit statuses: {man}"
    );
}
