//! Issue 23, publisher half (items 3 and 6), through the real `repo-tool` binary: unreferenced files
//! under `targets/` (a killed `add`) are reported by `verify` and removed by `gc`; `add` warns on an
//! empty image and refuses a lower version without `--allow-lower`; an image too large for the delta
//! encoder, or a delta outside the role's delegated paths, never stops a release.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{add_args, fails, ok, repo_tool, tree, INIT};

/// A temp dir with keys and a repository (`repo/`), everything signed by one key per role.
fn setup() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let names = ["root", "targets", "snapshot", "timestamp", "product"];
    let mut args = vec!["keys", "generate", "--dir", "keys"];
    args.extend(names);
    ok(t.path(), &args);
    let mut init = INIT.to_vec();
    init.push("--no-qr");
    ok(t.path(), &init);
    t
}

/// An image of `len` bytes, different for each seed.
fn image(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let p = dir.join(name);
    let bytes: Vec<u8> = (0..len)
        .map(|i| ((i * 7 + i / 251) as u8).wrapping_add(seed))
        .collect();
    fs::write(&p, bytes).unwrap();
    p
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `repo/targets` (relative to it) with its length; files vanishing meanwhile are
/// left out (an `add` may be running).
fn target_files_len(repo: &Path) -> Vec<(PathBuf, u64)> {
    let root = repo.join("targets");
    let mut out = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.is_dir() {
                pending.push(e.path());
            } else {
                out.push((e.path().strip_prefix(&root).unwrap().to_owned(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// Every file under `repo/targets`, relative to it.
fn target_files(repo: &Path) -> Vec<PathBuf> {
    target_files_len(repo).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn issue_23_verify_reports_unreferenced_target_files_and_gc_removes_only_them() {
    let t = setup();
    let d = t.path();
    image(d, "fw-1.0.0.bin", 50_000, 1);
    ok(d, &add_args("fw-1.0.0.bin", "1.0.0", "gw-a", &["--deltas", "0"]));
    let published = target_files(&d.join("repo"));
    assert_eq!(published.len(), 1, "{published:?}");
    ok(d, &["verify", "--repo", "repo"]);

    // What a killed add leaves: a whole image under a content address no metadata names, and a
    // temp file.
    let junk = d
        .join("repo/targets/gw-a/stable")
        .join(format!("{}.fw-2.0.0.bin", "ab".repeat(32)));
    fs::write(&junk, vec![7u8; 40_000]).unwrap();
    let tmp = d.join("repo/targets/gw-b/stable/.fw-3.0.0.bin.tmp-4242");
    fs::create_dir_all(tmp.parent().unwrap()).unwrap();
    fs::write(&tmp, vec![1u8; 1000]).unwrap();

    let out = repo_tool(d, &["verify", "--repo", "repo"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "problem: unreferenced file targets/gw-a/stable/{}.fw-2.0.0.bin (40000 bytes)",
            "ab".repeat(32)
        )),
        "{text}"
    );
    assert!(text.contains(".fw-3.0.0.bin.tmp-4242 (1000 bytes)"), "{text}");
    assert!(text.contains("repo-tool gc"), "{text}");

    // --dry-run lists and changes nothing.
    let before = tree(&d.join("repo"));
    let text = ok(d, &["gc", "--repo", "repo", "--dry-run"]);
    assert!(text.contains("would remove targets/gw-a/stable/"), "{text}");
    assert!(
        text.contains("would remove 2 file(s), 41000 bytes (dry run)"),
        "{text}"
    );
    assert_eq!(tree(&d.join("repo")), before);

    let metadata_before = tree(&d.join("repo/metadata"));
    let text = ok(d, &["gc", "--repo", "repo"]);
    assert!(
        text.contains("removed targets/gw-b/stable/.fw-3.0.0.bin.tmp-4242 (1000 bytes)"),
        "{text}"
    );
    assert!(text.contains("removed 2 file(s), 41000 bytes freed"), "{text}");
    assert!(!junk.exists() && !tmp.exists());
    assert!(
        !d.join("repo/targets/gw-b").exists(),
        "the directory it emptied is gone"
    );
    assert_eq!(
        target_files(&d.join("repo")),
        published,
        "the referenced file stays"
    );
    assert_eq!(
        tree(&d.join("repo/metadata")),
        metadata_before,
        "metadata untouched"
    );
    ok(d, &["verify", "--repo", "repo"]);

    // Nothing left: gc says so, as JSON too.
    let json: serde_json::Value = serde_json::from_str(&ok(d, &["gc", "--repo", "repo", "--json"])).unwrap();
    assert_eq!(json["bytes_freed"], 0);
    assert_eq!(json["removed"], serde_json::json!([]));
}

#[test]
fn issue_23_a_killed_add_leaves_a_file_that_verify_reports_and_gc_removes() {
    let t = setup();
    let d = t.path();
    // 1 GiB, data every MiB (a sparse file: fast, and the copy stays sparse).
    let big = d.join("fw-1.0.0.img");
    let f = fs::File::create(&big).unwrap();
    f.set_len(1 << 30).unwrap();
    for i in 0..1024u64 {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&i.to_le_bytes(), i << 20).unwrap();
    }
    drop(f);
    let mut child = Command::new(env!("CARGO_BIN_EXE_repo-tool"))
        .current_dir(d)
        .args(add_args("fw-1.0.0.img", "1.0.0", "gw-a", &["--deltas", "0"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed (SIGKILL) once it has written part of the image into targets/.
    let deadline = Instant::now() + Duration::from_secs(60);
    let written = loop {
        let files = target_files_len(&d.join("repo"));
        if let Some((p, _)) = files.into_iter().find(|(_, len)| *len >= 4 << 20) {
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "add finished before it was killed"
        );
        assert!(Instant::now() < deadline, "add wrote nothing in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(d.join("repo/targets").join(&written).exists());

    let out = repo_tool(d, &["verify", "--repo", "repo"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("problem: unreferenced file targets/gw-a/stable/"),
        "{}",
        stdout(&out)
    );
    let text = ok(d, &["gc", "--repo", "repo"]);
    assert!(text.contains("removed 1 file(s)"), "{text}");
    assert_eq!(target_files(&d.join("repo")), Vec::<PathBuf>::new());
    ok(d, &["verify", "--repo", "repo"]);
    // The add runs again to its end.
    ok(d, &add_args("fw-1.0.0.img", "1.0.0", "gw-a", &["--deltas", "0"]));
    ok(d, &["verify", "--repo", "repo"]);
}

#[test]
fn issue_23_gc_keeps_the_files_of_a_pending_stage_until_it_is_published() {
    let t = setup();
    let d = t.path();
    image(d, "fw-1.0.0.bin", 5000, 1);
    ok(
        d,
        &add_args(
            "fw-1.0.0.bin",
            "1.0.0",
            "gw-a",
            &["--deltas", "0", "--stage", "add.stage.json"],
        ),
    );
    let out = repo_tool(d, &["verify", "--repo", "repo"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("named only by a pending stage of role targets version 2"),
        "{}",
        stdout(&out)
    );
    let text = ok(d, &["gc", "--repo", "repo"]);
    assert!(text.contains("removed 0 file(s)"), "{text}");
    assert!(text.contains("kept targets/gw-a/stable/"), "{text}");
    ok(
        d,
        &[
            "role",
            "publish",
            "--repo",
            "repo",
            "--file",
            "add.stage.json",
            "--keys-dir",
            "keys",
        ],
    );
    ok(d, &["verify", "--repo", "repo"]);
    let json: serde_json::Value = serde_json::from_str(&ok(d, &["gc", "--repo", "repo", "--json"])).unwrap();
    assert_eq!(json["stale_stage_records"], 1, "{json}");
    assert_eq!(target_files(&d.join("repo")).len(), 1);
    ok(d, &["verify", "--repo", "repo"]);
}

#[test]
fn issue_23_add_warns_on_an_empty_image() {
    let t = setup();
    let d = t.path();
    fs::write(d.join("empty-1.0.0.bin"), b"").unwrap();
    let out = repo_tool(d, &add_args("empty-1.0.0.bin", "1.0.0", "gw-a", &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: image empty-1.0.0.bin is empty (0 bytes)"),
        "{err}"
    );
}

#[test]
fn issue_23_add_refuses_a_version_not_above_the_newest_unless_allow_lower() {
    let t = setup();
    let d = t.path();
    image(d, "fw-2.0.0.bin", 3000, 2);
    image(d, "fw-1.5.0.bin", 3000, 3);
    ok(d, &add_args("fw-2.0.0.bin", "2.0.0", "gw-a", &[]));
    let err = fails(d, &add_args("fw-1.5.0.bin", "1.5.0", "gw-a", &[]));
    assert!(
        err.contains(
            "version 1.5.0 is not above 2.0.0, the newest published for hardware gw-a on channel stable"
        ),
        "{err}"
    );
    assert!(err.contains("--allow-lower"), "{err}");
    // Another hardware id is its own line.
    ok(d, &add_args("fw-1.5.0.bin", "1.5.0", "gw-b", &[]));
    // A hotfix branch, on purpose.
    ok(d, &add_args("fw-1.5.0.bin", "1.5.0", "gw-a", &["--allow-lower"]));
    ok(d, &["verify", "--repo", "repo"]);
}

/// A 2.2 GiB sparse image: a little data, no disk, no time.
fn huge_sparse(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(path).unwrap();
    f.set_len(2_200 * (1 << 20)).unwrap();
    f.write_all_at(b"filesystem superblock", 1024).unwrap();
    f.write_all_at(b"some file data", 1 << 30).unwrap();
}

#[test]
fn issue_23_an_image_too_large_for_the_delta_encoder_is_published_without_a_delta() {
    let t = setup();
    let d = t.path();
    image(d, "rootfs-1.0.0.img", 200_000, 1);
    ok(d, &add_args("rootfs-1.0.0.img", "1.0.0", "gw-a", &[]));
    huge_sparse(&d.join("rootfs-2.0.0.img"));
    // Under 1.5 GiB of address space: reading the 2.2 GiB image for the encoder would fail.
    let bin = env!("CARGO_BIN_EXE_repo-tool");
    let mut args = vec!["-c", "ulimit -v 1572864 && exec \"$0\" \"$@\"", bin];
    args.extend(add_args("rootfs-2.0.0.img", "2.0.0", "gw-a", &["--deltas", "1"]));
    let started = Instant::now();
    let out = Command::new("sh").current_dir(d).args(&args).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: no delta from 1.0.0 for gw-a/stable/rootfs-2.0.0.img: the new image is \
             2306867200 bytes, over the delta encoder's limit of "
        ),
        "{err}"
    );
    assert!(
        err.contains("(the smaller of its format's 2147483647 and a ninth of the memory available); the release is published without it"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("added gw-a/stable/rootfs-2.0.0.img (2306867200 bytes"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains(".delta"), "{}", stdout(&out));
    eprintln!("add of the 2.2 GiB sparse image took {took:?}");
    ok(d, &["verify", "--repo", "repo"]);
}

#[test]
fn issue_23_a_delta_outside_the_roles_paths_is_skipped_with_a_warning_naming_the_pattern() {
    let t = setup();
    let d = t.path();
    let delegate = |role: &str, paths: &[&str]| {
        let mut args = vec![
            "delegate",
            "--repo",
            "repo",
            "--keys-dir",
            "keys",
            "--role",
            role,
            "--role-key",
            "keys/product.pub.json",
        ];
        for p in paths {
            args.extend(["--path", p]);
        }
        ok(d, &args);
    };
    delegate("product", &["product/*/*"]);
    image(d, "fw-2.0.0.bin", 100_000, 1);
    image(d, "fw-2.1.0.bin", 100_000, 1);
    let in_role = |hw: &'static str, role: &'static str| {
        move |img: &'static str, v: &'static str| {
            let mut a = add_args(img, v, hw, &["--role", role, "--deltas", "1"]);
            let pos = a.iter().position(|x| *x == "stable").unwrap();
            a[pos] = "beta";
            a
        }
    };
    let product = in_role("product", "product");
    ok(d, &product("fw-2.0.0.bin", "2.0.0"));
    let out = repo_tool(d, &product("fw-2.1.0.bin", "2.1.0"));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: no delta from 2.0.0 for product/beta/fw-2.1.0.bin: its target name \
             product/beta/deltas/2.1.0/2.0.0.delta is outside the paths delegated to role product; \
             delegate a pattern such as product/*/deltas/*/* to publish deltas there"
        ),
        "{err}"
    );
    assert!(!stdout(&out).contains(".delta"), "{}", stdout(&out));
    ok(d, &["verify", "--repo", "repo"]);

    // With the pattern delegated, the delta is published and verifies.
    delegate("kit", &["kit/*/*", "kit/*/deltas/*/*"]);
    let kit = in_role("kit", "kit");
    ok(d, &kit("fw-2.0.0.bin", "2.0.0"));
    let text = ok(d, &kit("fw-2.1.0.bin", "2.1.0"));
    assert!(text.contains("added kit/beta/deltas/2.1.0/2.0.0.delta"), "{text}");
    ok(d, &["verify", "--repo", "repo"]);
}
