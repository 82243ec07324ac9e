//! One agent at a time: while a process holds the state directory's lock, the real `device-agent`
//! binary refuses to act (naming the holder's pid) and changes nothing; `status` still answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use device_agent::lock::AgentLock;
use ota_e2e::{firmware, text, SimDevice, TestRepo};
use ota_slot::SlotId;

#[test]
fn a_second_agent_is_refused_while_one_holds_the_lock() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 50_000);
    let dev = SimDevice::new(&repo, "1.0.0", &v1, 1 << 20, "");
    let v2 = firmware("2.0.0", 60_000);
    repo.publish("2.0.0", &v2);

    // This test process plays the other agent (a daemon mid-poll, or another command).
    let held = AgentLock::acquire(&dev.dir().join("state")).unwrap();
    let slot_b = dev.slot_bytes(SlotId::B);
    let record = std::fs::read(dev.dir().join("state/state.json")).unwrap();
    let holder = format!("another device-agent (pid {})", std::process::id());
    for args in [
        &["install"][..],
        &["run", "--once"],
        &["check"],
        &["mark-good"],
        &["rollback"],
    ] {
        let out = dev.agent(args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(&holder), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("state/lock"), "{args:?}: {}", text(&out));
    }
    assert_eq!(dev.slot_bytes(SlotId::B), slot_b, "nothing written");
    assert_eq!(
        std::fs::read(dev.dir().join("state/state.json")).unwrap(),
        record,
        "record unchanged"
    );
    // Read-only status needs no lock (health checks run it while the daemon holds it).
    assert_eq!(dev.status()["state_name"], "idle");

    // Released: the same command goes through.
    drop(held);
    let (out, reboots) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reboots, 1);
    assert_eq!(dev.status()["running_version"], "2.0.0");
}
