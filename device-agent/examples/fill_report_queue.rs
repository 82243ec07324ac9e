//! Fills a provisioned device's report queue to its bounds, for the idle-RSS benchmark
//! (`scripts/idle-agent-queue.sh`): `fill_report_queue CONFIG`. Each report carries the longest reason the
//! contract allows, and the queue is filled past its bounds, so it is full and has dropped some.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use device_agent::config::AgentConfig;
use device_agent::identity::FileIdentity;
use device_agent::report::{IdentitySigner, OutcomeFacts};
use device_agent::report_queue::ReportQueue;

fn main() {
    let config = std::env::args().nth(1).expect("usage: fill_report_queue CONFIG");
    let config = AgentConfig::load(std::path::Path::new(&config)).unwrap();
    let report = config
        .report
        .as_ref()
        .expect("the config has no [report] section");
    let identity = FileIdentity::load(&FileIdentity::path_in(&config.state_dir)).unwrap();
    let signer = IdentitySigner(&identity);
    let queue = ReportQueue::open(&config.state_dir, report.limits());
    let reason = "x".repeat(ota_report::MAX_REASON_BYTES);
    for n in 1..=u64::from(report.max_reports) + 10 {
        let facts = OutcomeFacts {
            number: n,
            outcome: ota_report::Outcome::RolledBack,
            from_version: "1.0.0".parse().unwrap(),
            to_version: "2.0.0".parse().unwrap(),
            target: "gw/stable/fw-2.0.0.bin".into(),
            reason: reason.clone(),
            started_unix: 1_700_000_000,
            finished_unix: 1_700_000_100,
            bytes_downloaded: 1 << 20,
            install_method: Some(ota_report::InstallMethod::Delta),
        };
        let r = facts
            .to_report(signer.device_id(), &config.hardware_id, &config.channel)
            .unwrap();
        queue.enqueue(n, r, &signer).unwrap();
    }
    let s = queue.status().unwrap();
    println!(
        "queue: {} reports, {} bytes, {} dropped",
        s.count, s.bytes, s.dropped
    );
}
