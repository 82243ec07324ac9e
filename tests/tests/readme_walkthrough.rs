//! Issue 22: the README's local walkthrough for a device integrator runs as written. The shell blocks
//! between `<!-- walkthrough:begin -->` and `<!-- walkthrough:end -->` are run by bash in an empty
//! directory with the built `repo-tool`, `device-agent` and `sim_device` on `PATH` (what the README's
//! build step before the markers provides), against a python3 `http.server` on a free port: a simulated
//! device commits 2.0.0 and rolls back 3.0.0 whose health check fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use ota_e2e::{agent_binary, example_binary, repo_tool_binary};

const BEGIN: &str = "<!-- walkthrough:begin -->";
const END: &str = "<!-- walkthrough:end -->";

/// The fenced `sh` blocks between the markers, joined into one script.
fn walkthrough_script(readme: &str) -> String {
    let start = readme
        .find(BEGIN)
        .expect("README has no walkthrough:begin marker");
    let len = readme[start..]
        .find(END)
        .expect("README has no walkthrough:end marker");
    let mut script = String::new();
    let mut in_block = false;
    for line in readme[start..start + len].lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, _) => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!in_block, "unclosed fenced block in the walkthrough");
    script
}

fn readme() -> String {
    std::fs::read_to_string(ota_testbed::workspace_root().join("README.md")).unwrap()
}

#[test]
fn the_readme_walkthrough_commits_an_update_and_rolls_back_a_bad_one() {
    let readme = readme();
    let script = walkthrough_script(&readme);
    assert!(script.contains("device-agent install"), "{script}");
    // The build step the README gives before the markers puts exactly these programs on PATH.
    let setup = &readme[..readme.find(BEGIN).unwrap()];
    assert!(
        setup.contains(
            "cargo build -p repo-tool -p device-agent && cargo build -p ota-slot --example sim_device"
        ),
        "the README's build step changed: update this test's PATH"
    );
    let bins = [
        agent_binary(),
        repo_tool_binary(),
        example_binary("ota-slot", "sim_device"),
    ];
    let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    for b in &bins {
        path.insert(0, b.parent().unwrap().to_path_buf());
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", std::env::join_paths(path).unwrap())
        .env("PORT", port.to_string())
        .env_remove("OTA_AGENT_CONFIG")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the walkthrough failed:\n{said}");
    assert!(said.contains("committed slot b"), "{said}");
    assert!(said.contains("rolled back 3.0.0 to slot b"), "{said}");
    assert!(Path::new(&dir.path().join("dev/state")).is_dir());
}

#[test]
fn the_walkthrough_extractor_takes_only_the_blocks_between_the_markers() {
    let text = format!("```sh\nbefore\n```\n{BEGIN}\nprose\n```sh\none\n```\nmore\n```sh\ntwo\n```\n{END}\n```sh\nafter\n```\n");
    assert_eq!(walkthrough_script(&text), "one\ntwo\n");
}
