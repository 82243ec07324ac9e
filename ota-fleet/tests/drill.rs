//! A small drill with every fault switched on: real device-agent code on simulated flash and bootloader,
//! a repository built by repo-tool, served by the faulty loopback mirror.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_fleet::{
    HaltRule, NetworkFaults, Outcome, PowerFaults, ReleasePlan, RolloutSettings, Scenario, Silent, WaveRound,
};

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
                waves: None,
            },
            ReleasePlan {
                version: "1.2.0".into(),
                hardware: vec![],
                rollout_percent: 100,
                health_fail: 0.4,
                waves: None,
            },
        ],
        max_rounds_per_release: 80,
        // Waves as by default, but no halt: every device must get the bad release here.
        rollout: RolloutSettings {
            halt: None,
            ..RolloutSettings::default()
        },
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
    let report = ota_fleet::run(
        &scenario,
        &ota_fleet::DrillOptions {
            work_dir: None,
            collector_db: None,
        },
        &Silent,
    )
    .await
    .unwrap();
    let table = report.table();
    println!("{table}");

    // The invariants: every device bootable, every device on a signed image, and the collector's
    // summary agreeing with the drill on every count.
    assert!(report.invariants.hold(), "{table}");
    assert!(report.invariants.collector_counts_checked > 0, "{table}");
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
    assert!(std::fs::read_to_string(&written.svg)
        .unwrap()
        .contains("INVARIANTS HOLD"));

    // Every rollback has a cause, and the causes add up (issue 22): per release in the table and the
    // JSON, per device in the JSON's rows.
    for r in &report.releases {
        assert_eq!(
            r.rollback_causes.values().sum::<u32>(),
            r.count(Outcome::RolledBack),
            "{table}"
        );
    }
    assert_eq!(
        bad.rollback_causes.get("health check failed (injected)").copied(),
        Some(bad.health_fail_injected),
        "{table}"
    );
    assert!(table.contains("rollbacks of 1.2.0:"), "{table}");
    // The files are for others to read.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&written.json).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    // One row per device and release, streamed into report.json.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&written.json).unwrap()).unwrap();
    let rows = json["device_outcomes"].as_array().unwrap();
    assert_eq!(rows.len(), 20 * 2);
    for (k, r) in report.releases.iter().enumerate() {
        let of = |outcome: &str| {
            rows.iter()
                .filter(|row| row["release"] == r.version.as_str() && row["outcome"] == outcome)
                .count()
        };
        assert_eq!(
            of("committed"),
            r.count(Outcome::Committed) as usize,
            "release {k}"
        );
        assert_eq!(
            of("rolled_back"),
            r.count(Outcome::RolledBack) as usize,
            "release {k}"
        );
    }
    for row in rows {
        assert!(row["device"].as_str().unwrap().starts_with("dev-"), "{row}");
        assert_eq!(
            row["outcome"] == "rolled_back",
            row["rollback_cause"].is_string(),
            "{row}"
        );
    }
}

/// A good release and a bad one (most devices fail its health checks), each in two waves far apart,
/// and a rule that halts once half of at least 3 finished devices of the open wave rolled back. No
/// faults: the test is about who gets what.
fn halt_scenario() -> Scenario {
    let release = |version: &str, health_fail| ReleasePlan {
        version: version.into(),
        hardware: vec![],
        rollout_percent: 100,
        health_fail,
        waves: None,
    };
    Scenario {
        seed: 14,
        devices: 30,
        concurrency: 8,
        image_kib: 16,
        releases: vec![release("1.1.0", 0.0), release("1.2.0", 0.8)],
        max_rounds_per_release: 40,
        faults: ota_fleet::Faults {
            power: PowerFaults {
                install: 0.0,
                commit: 0.0,
                rollback: 0.0,
                torn: 0.0,
            },
            network: NetworkFaults::none(),
        },
        rollout: RolloutSettings {
            round_seconds: 600,
            waves: vec![
                WaveRound {
                    percent: 30.0,
                    round: 0,
                },
                WaveRound {
                    percent: 100.0,
                    round: 12,
                },
            ],
            final_spread_rounds: 2,
            halt: Some(HaltRule {
                rollback_percent: 50.0,
                min_devices: 3,
            }),
        },
        ..Scenario::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_release_reaches_no_device_past_its_first_wave() {
    let out = tempfile::tempdir().unwrap();
    let collector_db = out.path().join("collector.db");
    let report = ota_fleet::run(
        &halt_scenario(),
        &ota_fleet::DrillOptions {
            work_dir: None,
            collector_db: Some(collector_db.clone()),
        },
        &Silent,
    )
    .await
    .unwrap();
    let table = report.table();
    println!("{table}");
    assert!(report.invariants.hold(), "{table}");

    // The good release: not halted, and every wave, the later ones included, committed it.
    let good = &report.releases[0];
    assert!(good.halted.is_none(), "{table}");
    assert_eq!(good.waves.len(), 2, "{table}");
    assert!(good.waves[1].devices > 0, "{table}");
    for w in &good.waves {
        assert_eq!(w.committed, w.devices, "wave {}\n{table}", w.wave);
    }
    assert_eq!(good.count(Outcome::Committed), 30, "{table}");

    // The bad release: halted by the rule, in wave 1, before wave 2 opened.
    let bad = &report.releases[1];
    let halt = bad.halted.as_ref().expect("the bad release was halted");
    assert_eq!(halt.wave, 1, "{table}");
    assert!(
        halt.rolled_back * 2 >= halt.finished && halt.finished >= 3,
        "{table}"
    );
    assert!(halt.round < bad.waves[1].opens_round, "{table}");
    // ... by the collector's rule, from the devices' signed reports.
    assert!(
        halt.reason
            .starts_with("collector rule rollback_percent=50,min_reports=3"),
        "{table}"
    );
    let store = collector::open_store(collector_db.to_str().unwrap()).unwrap();
    let summary = store.summary().unwrap();
    let halts: Vec<_> = summary
        .actions
        .iter()
        .filter(|a| a.to_version == "1.2.0")
        .collect();
    assert!(!halts.is_empty(), "{summary:?}");
    for a in &halts {
        assert_eq!(a.action, collector::ActionKind::Halted, "{a:?}");
        assert_eq!(a.wave, Some(1), "{a:?}");
        assert_eq!(a.judged, u64::from(halt.finished), "{a:?}");
        assert_eq!(a.reports.len() as u64, a.judged, "{a:?}");
    }
    assert!(
        summary.actions.iter().all(|a| a.to_version != "1.1.0"),
        "{summary:?}"
    );
    // The drill's counts and the collector's summary agree, per release and wave.
    assert!(report.invariants.collector_counts_checked >= 2 * 2 * 4, "{table}");
    assert!(report.invariants.collector_disagreements.is_empty(), "{table}");
    assert!(table.contains("collector: OK"), "{table}");
    assert!(bad.waves[0].rolled_back > 0, "{table}");
    // No device outside the first wave started, installed or runs it.
    for w in bad.waves.iter().skip(1) {
        assert!(w.devices > 0, "{table}");
        assert_eq!(
            (w.started, w.installed, w.committed, w.rolled_back),
            (0, 0, 0, 0),
            "{table}"
        );
    }
    assert_eq!(
        report.final_versions.get("1.2.0").copied().unwrap_or(0),
        bad.waves[0].committed,
        "{table}"
    );
    // Every device of the later wave settled (it saw the halt) rather than running out of rounds.
    assert!(bad.settled_round.is_some(), "{table}");

    // The halt is in the JSON and the chart.
    let dir = tempfile::tempdir().unwrap();
    let written = report.write_to(dir.path()).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&written.json).unwrap()).unwrap();
    assert_eq!(json["releases"][1]["halted"]["round"], halt.round);
    assert_eq!(json["releases"][1]["waves"][1]["installed"], 0);
    let svg = std::fs::read_to_string(&written.svg).unwrap();
    assert!(
        svg.contains(&format!("1.2.0 halted (round {})", halt.round)),
        "{svg}"
    );
}
