//! Issue 18: `repo-tool delegate --hash-bins N` creates succinct hash bins (TAP 15) and `add` places each
//! target in its bin (re-signing only that bin, snapshot and timestamp); `verify` and `list` walk them;
//! python-tuf's ngclient and this project's client (ota-tuf) both download targets from the repository
//! served by nginx, with 16 and 1,024 bins. Everything through the real repo-tool binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs;

use common::{ngclient, ok, sha256_file, Fixture};
use ota_testbed::Nginx;

fn check_bins(bins: u32, prefix: &str) {
    let f = Fixture::new();
    f.keys(&["bins"]);
    let dir = f.dir.path();
    let n = bins.to_string();
    let out = ok(
        dir,
        &[
            "delegate",
            "--repo",
            "repo",
            "--role",
            prefix,
            "--hash-bins",
            &n,
            "--role-key",
            "keys/bins.pub.json",
            "--keys-dir",
            "keys",
        ],
    );
    assert!(out.contains(&format!("{bins} hash bins")), "{out}");
    let top: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("repo/metadata/2.targets.json")).unwrap()).unwrap();
    let succinct = &top["signed"]["delegations"]["succinct_roles"];
    assert_eq!(succinct["bit_length"], bins.trailing_zeros());
    assert_eq!(succinct["name_prefix"], prefix);
    assert!(top["signed"]["delegations"].get("roles").is_none());

    // A bulk add spreads over the bins; each lands in the bin sha256 of its name picks.
    fs::create_dir(dir.join("imgs")).unwrap();
    for i in 0..24 {
        fs::write(dir.join(format!("imgs/fw-1.0.{i}.bin")), format!("image {i}\n")).unwrap();
    }
    ok(
        dir,
        &[
            "add",
            "--repo",
            "repo",
            "--dir",
            "imgs",
            "--hardware",
            "gw-a",
            "--channel",
            "stable",
            "--keys-dir",
            "keys",
        ],
    );

    // A single add re-signs one bin, snapshot and timestamp, nothing else.
    let before: Vec<_> = fs::read_dir(dir.join("repo/metadata"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let one = f.image("one.bin", 3000, 7);
    ok(
        dir,
        &[
            "add",
            "--repo",
            "repo",
            "--image",
            one.to_str().unwrap(),
            "--version",
            "2.0.0",
            "--hardware",
            "gw-a",
            "--channel",
            "stable",
            "--keys-dir",
            "keys",
        ],
    );
    let mut new: Vec<String> = fs::read_dir(dir.join("repo/metadata"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !before.contains(n))
        .map(|n| n.into_string().unwrap())
        .collect();
    new.sort();
    assert_eq!(new.len(), 2, "one bin and snapshot: {new:?}");
    assert!(new.iter().any(|n| n.ends_with(".snapshot.json")), "{new:?}");
    assert!(new.iter().any(|n| n.contains(&format!(".{prefix}-"))), "{new:?}");

    let verify = ok(dir, &["verify", "--repo", "repo"]);
    assert!(verify.contains("25 target file(s) checked"), "{verify}");
    let list = ok(dir, &["list", "--repo", "repo"]);
    assert!(
        list.contains(&format!("{prefix}-{:x}", bins - 1)),
        "list walks every bin"
    );
    assert!(list.contains("2.0.0"), "{list}");

    let nginx = Nginx::serve(&dir.join("repo"));
    let root = dir.join("repo/metadata/1.root.json");
    let names = [
        "gw-a/stable/fw-1.0.3.bin",
        "gw-a/stable/fw-1.0.17.bin",
        "gw-a/stable/2.0.0/one.bin",
    ];
    let run = ngclient(&nginx.url(), &root, &dir.join("cache"), &dir.join("dl"), &names);
    assert!(run.ok, "ngclient: {}", run.stderr);
    assert_eq!(run.target(names[2])["sha256"], sha256_file(&one));
    assert_eq!(
        run.target(names[0])["sha256"],
        common::sha256_file(&dir.join("imgs/fw-1.0.3.bin"))
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let md = dir.join("device");
        ota_tuf::Client::init(&md, &fs::read(&root).unwrap()).unwrap();
        let config = ota_tuf::ClientConfig::new(
            format!("{}/metadata", nginx.url()),
            format!("{}/targets", nginx.url()),
        );
        let mut client = ota_tuf::Client::load(&md, config).unwrap();
        client.refresh().await.unwrap();
        for name in names {
            let info = client
                .target(name)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name} not found"));
            let mut body = Vec::new();
            client.download_target(&info, &mut body).await.unwrap();
            assert_eq!(body.len() as u64, info.length);
        }
        assert_eq!(client.target("gw-a/stable/absent.bin").await.unwrap(), None);
    });
}

/// Not a power of two, a second hash-bin delegation, a path delegation from the bins' delegator and
/// `add --stage` into bins are refused, each changing nothing.
#[test]
fn issue_18_hash_bins_refusals() {
    let f = Fixture::new();
    f.keys(&["bins"]);
    let dir = f.dir.path();
    fn bins(n: &str) -> Vec<&str> {
        vec![
            "delegate",
            "--repo",
            "repo",
            "--role",
            "bin",
            "--hash-bins",
            n,
            "--role-key",
            "keys/bins.pub.json",
            "--keys-dir",
            "keys",
        ]
    }
    assert!(common::fails(dir, &bins("12")).contains("power of two"));
    ok(dir, &bins("4"));
    assert!(common::fails(dir, &bins("4")).contains("already delegates"));
    let err = common::fails(
        dir,
        &[
            "delegate",
            "--repo",
            "repo",
            "--role",
            "p",
            "--path",
            "p/*",
            "--role-key",
            "keys/bins.pub.json",
            "--keys-dir",
            "keys",
        ],
    );
    assert!(err.contains("delegates to hash bins"), "{err}");
    let one = f.image("one.bin", 100, 1);
    let err = common::fails(
        dir,
        &[
            "add",
            "--repo",
            "repo",
            "--image",
            one.to_str().unwrap(),
            "--version",
            "1.0.0",
            "--hardware",
            "gw-a",
            "--channel",
            "stable",
            "--keys-dir",
            "keys",
            "--stage",
            "s.stage",
        ],
    );
    assert!(err.contains("hash bins"), "{err}");
}

#[test]
fn issue_18_hash_bins_16_ngclient_and_device_download() {
    check_bins(16, "bin");
}

#[test]
fn issue_18_hash_bins_1024_ngclient_and_device_download() {
    check_bins(1024, "fleet-bin");
}
