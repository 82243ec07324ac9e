//! Issue 22: the real `device-agent` prints shell completions and its man page, generated from its clap
//! definitions, without a configuration file; both name every subcommand `--help` lists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use ota_e2e::agent_binary;

fn agent(args: &[&str]) -> String {
    let out = Command::new(agent_binary())
        .args(["--config", "/nonexistent/agent.toml"])
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

/// The visible subcommands, from `--help`.
fn subcommands() -> Vec<String> {
    let help = agent(&["--help"]);
    let commands = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap();
    commands
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_and_the_man_page_name_every_subcommand() {
    let commands = subcommands();
    assert!(commands.len() >= 8, "{commands:?}");
    assert!(
        !commands.contains(&"completions".to_owned()),
        "hidden: {commands:?}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = agent(&["completions", shell]);
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
    }
    assert!(agent(&["completions", "bash"]).contains("complete -F"));
    let man = agent(&["man"]);
    assert!(man.contains(".TH"), "not roff: {man}");
    assert!(
        man.contains("Exit status"),
        "the man page carries the exit statuses: {man}"
    );
    for c in &commands {
        assert!(man.contains(&c.replace('-', "\\-")), "man page lacks {c}");
    }
}
