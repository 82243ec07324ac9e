//! Issue 22: repo-tool for scripts and shells, through the real binary: `--json` on `add`, `list` and
//! `verify` (stable fields, parsed here), `list` showing each release's deltas, and shell completions
//! and the man page generated from the clap definitions, naming every subcommand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;

use common::{add_args, ok, Fixture};
use ota_testbed::cli_docs::{assert_completions_and_man, subcommands};
use ota_testbed::noise;
use serde_json::Value;

/// A repository with 1.0.0 and 2.0.0 (a few bytes apart: a delta is kept) on gw-a/stable; returns the
/// fixture and `add --json` of 2.0.0.
fn two_releases() -> (Fixture, Value) {
    let f = Fixture::new();
    let images = f.dir.path().join("images");
    fs::create_dir_all(&images).unwrap();
    let v1 = noise(1, 256 << 10);
    let mut v2 = v1.clone();
    for at in [10usize, 4096, 100_000, 200_000] {
        v2[at] ^= 0x5a;
    }
    fs::write(images.join("fw-1.0.0.bin"), &v1).unwrap();
    fs::write(images.join("fw-2.0.0.bin"), &v2).unwrap();
    let add = |image: &str, version: &str| {
        let args = add_args(image, version, "gw-a", &["--waves", "now", "--json"]);
        let out = ok(f.dir.path(), &args);
        serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    add("images/fw-1.0.0.bin", "1.0.0");
    let added = add("images/fw-2.0.0.bin", "2.0.0");
    (f, added)
}

#[test]
fn add_json_names_the_targets_added_and_the_role_version() {
    let (_f, added) = two_releases();
    assert_eq!(added["role"], "targets");
    assert_eq!(added["role_version"], 3);
    assert_eq!(added["published"], true);
    assert_eq!(added["staged_file"], Value::Null);
    let targets: Vec<&str> = added["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains(&"gw-a/stable/fw-2.0.0.bin"), "{added}");
    assert!(
        targets.contains(&"gw-a/stable/deltas/2.0.0/1.0.0.delta"),
        "{added}"
    );
    let image = added["added"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "gw-a/stable/fw-2.0.0.bin");
    assert_eq!(image.unwrap()["length"], 256 << 10);
    assert_eq!(image.unwrap()["sha256"].as_str().unwrap().len(), 64);
    assert!(added["deltas_not_kept"].as_array().unwrap().is_empty(), "{added}");
    assert!(added["warnings"].is_array());
}

#[test]
fn list_shows_deltas_in_text_and_json() {
    let (f, _) = two_releases();
    let text = ok(f.dir.path(), &["list", "--repo", "repo"]);
    assert!(text.contains("delta from 1.0.0"), "{text}");
    assert!(text.contains("gw-a/stable/deltas/2.0.0/1.0.0.delta"), "{text}");
    let out = ok(f.dir.path(), &["list", "--repo", "repo", "--json"]);
    let listing: Value = serde_json::from_str(&out).unwrap();
    let roles: Vec<&str> = listing["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["root", "timestamp", "snapshot", "targets"]);
    assert_eq!(listing["roles"][3]["version"], 3);
    let releases = listing["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 2, "{listing}");
    let v2 = &releases[1];
    assert_eq!(v2["hardware"], "gw-a");
    assert_eq!(v2["channel"], "stable");
    assert_eq!(v2["version"], "2.0.0");
    assert_eq!(v2["target"], "gw-a/stable/fw-2.0.0.bin");
    assert_eq!(v2["role"], "targets");
    assert_eq!(v2["length"], 256 << 10);
    assert_eq!(v2["rollout_percent"], 100);
    assert_eq!(v2["control"], Value::Null);
    let delta = &v2["deltas"][0];
    assert_eq!(delta["base_version"], "1.0.0");
    assert_eq!(delta["target"], "gw-a/stable/deltas/2.0.0/1.0.0.delta");
    assert_eq!(delta["base_length"], 256 << 10);
    assert!(delta["length"].as_u64().unwrap() < 128 << 10, "{delta}");
    assert!(releases[0]["deltas"].as_array().unwrap().is_empty());
}

#[test]
fn verify_json_reports_ok_and_problems_with_the_same_exit_status() {
    let (f, _) = two_releases();
    let out = ok(f.dir.path(), &["verify", "--repo", "repo", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["problems"].as_array().unwrap().len(), 0);
    assert_eq!(report["root_versions"], 1);
    assert_eq!(report["targets_checked"], 3);
    assert!(report["warnings"].is_array());
    // A target file whose bytes changed: a problem, exit status 1, still one JSON object.
    let file = fs::read_dir(f.repo().join("targets/gw-a/stable"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("fw-2.0.0.bin"))
        .unwrap();
    fs::write(&file, b"tampered").unwrap();
    let out = common::repo_tool(f.dir.path(), &["verify", "--repo", "repo", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(!report["problems"].as_array().unwrap().is_empty(), "{report}");
}

#[test]
fn completions_and_the_man_page_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ok(dir.path(), args);
    let commands = subcommands(&run(&["--help"]));
    assert!(commands.len() >= 12, "{commands:?}");
    let man = assert_completions_and_man(run, "completions", "man", &commands);
    let bash = ok(dir.path(), &["completions", "bash"]);
    assert!(
        bash.contains("complete -F") && bash.contains("--warn-within"),
        "{bash}"
    );
    assert!(man.starts_with(".ie") || man.contains(".TH"), "not roff: {man}");
    assert!(man.contains("repo\\-tool"), "{man}");
    assert!(
        !commands.contains(&"completions".to_owned()),
        "completions is hidden: {commands:?}"
    );
}
