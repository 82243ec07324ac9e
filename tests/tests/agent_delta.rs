//! Issue 5 must-show, device side: a repository built by repo-tool (with a real `ota_delta` delta from
//! v1 to v2) and served by a real nginx; simulated devices run the real `device-agent` binary.
//! - A device on v1 updates to v2 by delta (the full image is not even on the server while it does).
//! - A device whose running slot was modified after provisioning gets the full image instead.
//! - A delta whose bytes on the server differ from the signed hash is refused: full image.
//! - A delta signed as published but unusable (corrupt streams) fails in the decoder: full image.
//!
//! In every case the device ends committed on v2 with slot B's bytes hashing to the signed sha256.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_e2e::{sha256_hex, text, SimDevice, TestRepo};
use ota_slot::SlotId;

const IMAGE_LEN: usize = 1 << 20;
const SLOT_LEN: u64 = 2 << 20;

/// v1: 1 MiB of pseudo-random bytes; v2: the same with a few KiB changed in three places and 3 KiB
/// inserted (a real, small delta).
fn images() -> (Vec<u8>, Vec<u8>) {
    let v1 = ota_e2e::firmware("1.0.0", IMAGE_LEN);
    let mut v2 = v1.clone();
    for (at, seed) in [(10_000usize, "a"), (400_000, "b"), (900_000, "c")] {
        let patch = ota_e2e::firmware(seed, 2048);
        v2[at..at + patch.len()].copy_from_slice(&patch);
    }
    let inserted = ota_e2e::firmware("inserted", 3072);
    v2.splice(600_000..600_000, inserted);
    (v1, v2)
}

/// Runs the device until it settles and checks it ends committed on v2 in slot B, verified.
fn assert_committed_on_v2(dev: &SimDevice, v2: &[u8]) -> serde_json::Value {
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 1, "one reboot into the trial: {}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    assert_eq!(s["running_version"], "2.0.0", "{s}");
    assert_eq!(s["booted"], "b");
    assert_eq!(s["primary"], "b");
    assert_eq!(
        dev.slot_sha256(SlotId::B, v2.len()),
        sha256_hex(v2),
        "slot B holds the signed v2"
    );
    s
}

#[test]
fn v1_updates_to_v2_by_delta_and_a_modified_base_gets_the_full_image() {
    let repo = TestRepo::new();
    let (v1, v2) = images();
    repo.publish("1.0.0", &v1);
    let by_delta = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let modified = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    // After provisioning (which recorded v1's sha256), one byte of the running image changes; the
    // device still boots, but its slot is no longer the delta's base.
    let slot_a = modified.dir().join("slot-a.img");
    let mut bytes = std::fs::read(&slot_a).unwrap();
    bytes[512_345] ^= 0x01;
    std::fs::write(&slot_a, &bytes).unwrap();

    let (release, delta_name, delta) = repo.publish_with_delta("2.0.0", &v2, |d| d);
    assert!(
        delta.len() < v2.len() / 20,
        "a small change makes a small delta: {} bytes",
        delta.len()
    );
    let check = by_delta.agent(&["check"]);
    assert!(text(&check).contains("delta offered"), "{}", text(&check));

    // The full image is taken off the server: the only way to v2 is the delta.
    let full = repo.target_file(&release, &v2);
    let hidden = full.with_extension("hidden");
    std::fs::rename(&full, &hidden).unwrap();
    let s = assert_committed_on_v2(&by_delta, &v2);
    let last = &s["last_install"];
    assert_eq!(last["version"], "2.0.0", "{s}");
    assert_eq!(last["via"]["kind"], "delta", "{s}");
    assert_eq!(last["via"]["target"], delta_name.as_str(), "{s}");
    assert_eq!(
        last["downloaded_bytes"],
        delta.len() as u64,
        "downloaded the delta only: {s}"
    );
    assert!(last.get("delta_fallback").is_none(), "{s}");
    // Install progress (issue 22): the delta was decoded into the slot, which ended verified.
    let progress = &s["install_progress"];
    assert_eq!(progress["phase"], "done", "{s}");
    assert_eq!(progress["total"], v2.len() as u64, "{s}");
    assert_eq!(
        by_delta.slot_sha256(SlotId::A, v1.len()),
        sha256_hex(&v1),
        "the running slot was only read"
    );
    let human = by_delta.agent(&["status"]);
    assert!(text(&human).contains("by delta"), "{}", text(&human));
    std::fs::rename(&hidden, &full).unwrap();

    // The modified device: base mismatch found before downloading the delta; full image.
    let s = assert_committed_on_v2(&modified, &v2);
    let last = &s["last_install"];
    assert_eq!(last["via"]["kind"], "full", "{s}");
    assert!(
        last["delta_fallback"].as_str().unwrap().contains("base mismatch"),
        "{s}"
    );
    assert_eq!(
        last["downloaded_bytes"],
        v2.len() as u64,
        "no delta downloaded for a mismatching base: {s}"
    );
}

#[test]
fn a_delta_not_matching_its_signed_hash_is_refused_and_the_full_image_installed() {
    let repo = TestRepo::new();
    let (v1, v2) = images();
    repo.publish("1.0.0", &v1);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    let (_, delta_name, delta) = repo.publish_with_delta("2.0.0", &v2, |d| d);
    // A corrupt mirror: same length, one byte changed.
    let served = repo.target_file(&delta_name, &delta);
    let mut evil = delta.clone();
    let at = evil.len() / 2;
    evil[at] ^= 0x80;
    std::fs::write(&served, &evil).unwrap();

    let s = assert_committed_on_v2(&dev, &v2);
    let last = &s["last_install"];
    assert_eq!(last["via"]["kind"], "full", "{s}");
    let why = last["delta_fallback"].as_str().unwrap();
    assert!(
        why.contains("delta download refused") && why.contains("mismatch"),
        "{s}"
    );
    assert_eq!(
        last["downloaded_bytes"],
        (delta.len() + v2.len()) as u64,
        "the refused delta, then the full image: {s}"
    );
}

#[test]
fn a_signed_but_corrupt_delta_fails_in_the_decoder_and_the_full_image_is_installed() {
    let repo = TestRepo::new();
    let (v1, v2) = images();
    repo.publish("1.0.0", &v1);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, SLOT_LEN, "");
    // The publisher's delta is damaged past its header before signing: TUF accepts it, the decoder must
    // not (its streams or its result digest are wrong), and the garbage it wrote into slot B must not
    // survive.
    let (_, _, delta) = repo.publish_with_delta("2.0.0", &v2, |mut d| {
        let at = ota_delta::HEADER_LEN + (d.len() - ota_delta::HEADER_LEN) / 2;
        d[at] ^= 0xff;
        d
    });

    let s = assert_committed_on_v2(&dev, &v2);
    let last = &s["last_install"];
    assert_eq!(last["via"]["kind"], "full", "{s}");
    assert!(
        last["delta_fallback"]
            .as_str()
            .unwrap()
            .contains("refused by the decoder"),
        "{s}"
    );
    assert_eq!(last["downloaded_bytes"], (delta.len() + v2.len()) as u64, "{s}");
    assert!(
        !dev.dir().join("state/delta.spool").exists(),
        "the spool is removed"
    );
}
