//! A small drill with every fault switched on: real device-agent code on simulated flash and bootloader,
//! a repository built by repo-tool, served by the faulty loopback mirror.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_fleet::{NetworkFaults, Outcome, PowerFaults, ReleasePlan, Scenario, Silent};

fn every_fault_scenario() -> Scenario {
    Scenario {
        seed: 20,
        devices: 20,
        concurrency: 8,
        image_kib: 32,
        releases: vec![
            ReleasePlan {
                version: "1.1.0".into(),
                hardware: vec![],
                rollout_percent: 100,
                health_fail: 0.0,
            },
            ReleasePlan {
                version: "1.2.0".into(),
                hardware: vec![],
                rollout_percent: 100,
                health_fail: 0.4,
            },
        ],
        max_rounds_per_release: 80,
        faults: ota_fleet::Faults {
            power: PowerFaults {
                install: 0.4,
                commit: 0.4,
                rollback: 0.5,
                torn: 0.5,
            },
            network: NetworkFaults {
                drop: 0.04,
                stall: 0.03,
                stall_ms: 50,
                truncate: 0.04,
                corrupt: 0.04,
                stale_metadata: 0.05,
                tampered_metadata: 0.05,
            },
        },
        ..Scenario::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_on_the_fleet_converges_and_no_device_is_bricked() {
    let scenario = every_fault_scenario();
    let report = ota_fleet::run(&scenario, &ota_fleet::DrillOptions { work_dir: None }, &Silent)
        .await
        .unwrap();
    let table = report.table();
    println!("{table}");

    // The invariants: every device bootable, every device on a signed image.
    assert!(report.invariants.hold(), "{table}");
    assert!(report.invariants.boots_checked >= 20, "{table}");
    assert!(!report.final_versions.contains_key("unknown"), "{table}");
    assert_eq!(report.final_versions.values().sum::<u32>(), 20);

    // The good release: everyone committed.
    let good = &report.releases[0];
    assert!(good.settled_round.is_some(), "{table}");
    assert_eq!(good.count(Outcome::Committed), 20, "{table}");

    // The bad release: exactly the devices whose health check fails rolled back, the rest committed.
    let bad = &report.releases[1];
    assert!(bad.settled_round.is_some(), "{table}");
    assert!(bad.health_fail_injected > 0, "{table}");
    assert_eq!(
        bad.count(Outcome::RolledBack),
        bad.health_fail_injected,
        "{table}"
    );
    assert_eq!(
        bad.count(Outcome::Committed),
        20 - bad.health_fail_injected,
        "{table}"
    );
    assert_eq!(bad.count(Outcome::Retrying), 0, "{table}");
    assert_eq!(
        report.final_versions.get("1.1.0").copied(),
        Some(bad.health_fail_injected),
        "{table}"
    );
    assert_eq!(
        report.final_versions.get("1.2.0").copied(),
        Some(20 - bad.health_fail_injected),
        "{table}"
    );

    // Every fault really happened.
    for fault in [
        "drop",
        "stall",
        "truncate",
        "corrupt",
        "stale_metadata",
        "tampered_metadata",
    ] {
        assert!(report.mirror.faults[fault] > 0, "no {fault} injected\n{table}");
    }
    assert!(report.power_cuts.install > 0, "{table}");
    assert!(
        report.power_cuts.commit + report.power_cuts.rollback > 0,
        "{table}"
    );

    // The report is written and drawn.
    let dir = tempfile::tempdir().unwrap();
    let written = report.write_to(dir.path()).unwrap();
    assert!(std::fs::read_to_string(written.svg)
        .unwrap()
        .contains("INVARIANTS HOLD"));
}
