//! Issue 4 must-show: a power-cut sweep of the whole update on simulated NOR flash.
//!
//! One simulated chip holds slot a, slot b and the simulated bootloader's environment, all behind one
//! power-cut budget, so every erase and write of the install (marking the slot bad, streaming the image,
//! starting the trial), of the bootloader's own boot counting, of the commit and of the rollback is a cut
//! point. Each scenario is first run without a cut to count its operations; then, for every operation and
//! every mode (before, after, torn), a fresh device is cut there, rebooted (the bootloader picks a slot),
//! and the real agent core (`device_agent::device::Device`) is run again until it settles. After every
//! boot the running slot must hold a verified image and every image the agent's record claims must be in
//! its slot; at the end the device must have finished the update or still run the old version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use device_agent::config::{HealthCheckConfig, HealthConfig};
use device_agent::device::{provision, Device, DeviceSettings, FactoryImage, SlotPair};
use device_agent::state::{RecordFile, RetryPolicy, UpdateState};
use ota_e2e::{firmware, sha256_hex, TestRepo, CHANNEL, HARDWARE};
use ota_slot::{
    slot_sha256, AbFlashLayout, BootControl, CutMode, FlashMemory, NorFlashSlot, PowerCut, SimBootloader,
    SimFlash, SlotId, SlotWriter,
};

type Flash = SimFlash<4, 4096>;
type FlashSlot = NorFlashSlot<Flash>;
type SimDevice = Device<FlashSlot, SimBootloader<FlashSlot>>;

const V1_LEN: usize = 40_000;
const V2_LEN: usize = 52_000;
/// The delta scenario's images: large enough for repo-tool to offer a delta (it skips small images).
const DELTA_V1_LEN: usize = 96 * 1024;
const DELTA_V2_LEN: usize = 96 * 1024 + 1000;

struct Fixture {
    repo: TestRepo,
    layout: AbFlashLayout,
    v1: Vec<u8>,
    v2: Vec<u8>,
    rt: tokio::runtime::Runtime,
    /// v2 is offered as a delta from v1 (and the uncut run must use it).
    by_delta: bool,
}

/// How one run ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Running the new version, committed.
    Finished,
    /// Running the old version (update failed or rolled back).
    StayedOld,
}

impl Fixture {
    fn new() -> Fixture {
        let repo = TestRepo::new();
        let v1 = firmware("1.0.0", V1_LEN);
        let v2 = firmware("2.0.0", V2_LEN);
        repo.publish("2.0.0", &v2);
        Fixture::with(repo, v1, v2, 64 * 1024, false)
    }

    /// v2 is v1 with 1000 bytes inserted and 500 changed, published with a delta from v1.
    fn with_delta() -> Fixture {
        let repo = TestRepo::new();
        let v1 = firmware("1.0.0", DELTA_V1_LEN);
        let mut v2 = v1.clone();
        v2[70_000..70_500].copy_from_slice(&firmware("patch", 500));
        v2.splice(30_000..30_000, firmware("inserted", 1000));
        assert_eq!(v2.len(), DELTA_V2_LEN);
        repo.publish("1.0.0", &v1);
        repo.publish_with_delta("2.0.0", &v2, |d| d);
        Fixture::with(repo, v1, v2, 128 * 1024, true)
    }

    fn with(repo: TestRepo, v1: Vec<u8>, v2: Vec<u8>, slot_len: u64, by_delta: bool) -> Fixture {
        let layout = AbFlashLayout::new(slot_len, 4096, 4).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            repo,
            layout,
            v1,
            v2,
            rt,
            by_delta,
        }
    }

    fn handles(
        &self,
        memory: &FlashMemory,
        power: PowerCut,
    ) -> (SlotPair<FlashSlot>, ota_slot::Result<SimBootloader<FlashSlot>>) {
        let flash = Flash::with_memory(memory.clone(), power).unwrap();
        let slots = SlotPair {
            a: self.layout.slot(&flash, SlotId::A).unwrap(),
            b: self.layout.slot(&flash, SlotId::B).unwrap(),
        };
        (slots, SimBootloader::open(self.layout.env(&flash).unwrap()))
    }

    fn settings(&self, state_dir: &std::path::Path, healthy: bool) -> DeviceSettings {
        let url = self.repo.url();
        DeviceSettings {
            state_dir: state_dir.to_owned(),
            hardware_id: HARDWARE.parse().unwrap(),
            channel: CHANNEL.parse().unwrap(),
            repository: ota_tuf::ClientConfig::new(format!("{url}/metadata"), format!("{url}/targets")),
            // A failing check is retried until the deadline: short ones keep the simulation fast.
            health: HealthConfig {
                deadline: std::time::Duration::from_millis(300),
                retry_interval: std::time::Duration::from_millis(100),
                settle: std::time::Duration::ZERO,
                checks: vec![HealthCheckConfig {
                    name: "self-test".into(),
                    command: Some(vec![if healthy { "true" } else { "false" }.into()]),
                    http: None,
                    expect_status: None,
                    timeout_secs: 5,
                }],
            },
        }
    }

    /// A factory-fresh device: v1 in slot a, booted from a, provisioned.
    fn factory_device(&self, state_dir: &std::path::Path) -> FlashMemory {
        let memory = FlashMemory::new(usize::try_from(self.layout.capacity()).unwrap(), 0xFF);
        let flash = Flash::with_memory(memory.clone(), PowerCut::never()).unwrap();
        let mut a = self.layout.slot(&flash, SlotId::A).unwrap();
        let mut w = SlotWriter::new(&mut a, self.v1.len() as u64).unwrap();
        std::io::Write::write_all(&mut w, &self.v1).unwrap();
        w.finish().unwrap();
        let mut boot = SimBootloader::provision(self.layout.env(&flash).unwrap(), SlotId::A).unwrap();
        let mut slots = SlotPair {
            a,
            b: self.layout.slot(&flash, SlotId::B).unwrap(),
        };
        let factory = FactoryImage {
            version: "1.0.0".parse().unwrap(),
            length: self.v1.len() as u64,
        };
        provision(
            state_dir,
            &self.repo.root_json(),
            self.repo.fingerprint(),
            &factory,
            &mut slots,
            &mut boot,
        )
        .unwrap();
        memory
    }

    /// Runs the scenario under `power`: boots until the agent settles. Returns how it ended.
    fn run(&self, power: PowerCut, healthy: bool, label: &str) -> End {
        self.run_cuts(&[power], healthy, label, RetryPolicy::default()).0
    }

    /// Runs the scenario under each of `cuts` in turn (the next budget once the current one has cut),
    /// then uncut, until the agent settles. Returns how it ended, and the saved state at each cut.
    fn run_cuts(
        &self,
        cuts: &[PowerCut],
        healthy: bool,
        label: &str,
        retry: RetryPolicy,
    ) -> (End, Vec<&'static str>) {
        let mut cut_in = Vec::new();
        let state = tempfile::tempdir().unwrap();
        let memory = self.factory_device(state.path());
        let settings = self.settings(state.path(), healthy);
        let (h1, h2) = (sha256_hex(&self.v1), sha256_hex(&self.v2));
        let mut cuts = cuts.iter();
        let mut power = cuts.next().cloned().unwrap_or_else(PowerCut::never);
        for boot_no in 0..12 + 2 * cuts.len() {
            if power.is_cut() {
                power = cuts.next().cloned().unwrap_or_else(PowerCut::never);
            }
            let budget = if power.is_cut() {
                PowerCut::never()
            } else {
                power.clone()
            };
            let (mut slots, boot) = self.handles(&memory, budget);
            let mut boot = boot.unwrap_or_else(|e| panic!("{label}: boot env unreadable after a cut: {e}"));
            if boot_no > 0 {
                // Power-on: the bootloader picks the slot (and may itself be cut while counting tries).
                match boot.reboot() {
                    Ok(_) => {}
                    Err(e) if e.is_power_loss() => continue,
                    Err(e) => panic!("{label}: bootloader failed: {e}"),
                }
            }
            // After every (re)boot: a verified image runs, and the record matches the slots.
            let booted = boot.booted().unwrap();
            let record = RecordFile::in_dir(state.path())
                .load()
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let running = [(self.v1.len(), &h1), (self.v2.len(), &h2)]
                .iter()
                .any(|(len, h)| hex::encode(slot_sha256(slots.get_mut(booted), *len as u64).unwrap()) == **h);
            assert!(
                running,
                "{label}: boot {boot_no} runs slot {booted}, which holds neither v1 nor v2"
            );
            for id in [SlotId::A, SlotId::B] {
                if let Some(img) = record.slot(id) {
                    let got = slot_sha256(slots.get_mut(id), img.length).unwrap();
                    assert_eq!(
                        got, img.sha256.0,
                        "{label}: record says slot {id} holds {}",
                        img.version
                    );
                }
            }
            assert!(
                record.slot(booted).is_some(),
                "{label}: the running image is unknown to the record"
            );
            let mut dev: SimDevice =
                Device::open(settings.clone(), slots, boot).unwrap_or_else(|e| panic!("{label}: {e}"));
            dev.set_retry_policy(retry);
            let result = self.rt.block_on(async {
                let outcome = dev.on_boot().await?;
                if outcome.reboot {
                    return Ok(outcome);
                }
                dev.poll_once().await
            });
            match result {
                Ok(o) if o.reboot => continue,
                Ok(o) => {
                    let booted = dev.boot_mut().booted().unwrap();
                    let primary = dev.boot_mut().primary().unwrap();
                    let trial = dev.boot_mut().trial().unwrap();
                    assert!(trial.is_none(), "{label}: settled with a trial pending: {o:?}");
                    assert_eq!(primary, booted, "{label}: settled off the primary slot");
                    let end = match o.state {
                        UpdateState::Committed { slot, version } => {
                            assert_eq!((slot, version.to_string().as_str()), (booted, "2.0.0"), "{label}");
                            assert_eq!(dev.record().floor.to_string(), "2.0.0", "{label}");
                            if self.by_delta && label == "uncut" {
                                let last = dev.record().last_install.clone().unwrap();
                                assert!(
                                    matches!(last.via, device_agent::state::InstallVia::Delta { .. }),
                                    "{label}: the uncut run must install by delta: {last}"
                                );
                            }
                            End::Finished
                        }
                        UpdateState::RolledBack { to, .. } => {
                            assert_eq!(to, booted, "{label}");
                            assert_eq!(dev.record().slot(booted).unwrap().version.to_string(), "1.0.0");
                            End::StayedOld
                        }
                        UpdateState::Failed { .. } | UpdateState::Idle => {
                            assert_eq!(dev.record().slot(booted).unwrap().version.to_string(), "1.0.0");
                            End::StayedOld
                        }
                        other => panic!("{label}: settled in {other:?}"),
                    };
                    return (end, cut_in);
                }
                Err(e) if e.is_power_loss() => {
                    cut_in.push(dev.record().state.name());
                    continue;
                }
                Err(e) => panic!("{label}: boot {boot_no}: agent error: {e}"),
            }
        }
        panic!("{label}: did not settle within 12 boots");
    }

    /// Counts the scenario's flash operations, then cuts at each one in each mode.
    fn sweep(&self, healthy: bool, want: End) -> (u64, usize, usize) {
        let counter = PowerCut::never();
        assert_eq!(self.run(counter.clone(), healthy, "uncut"), want);
        let ops = counter.ops();
        assert!(
            ops > 20,
            "the scenario should take many flash operations, took {ops}"
        );
        let mut tried = 0;
        let mut finished = 0;
        for n in 0..ops {
            for mode in CutMode::ALL {
                let label = format!("cut at op {n}/{ops} ({mode:?})");
                // Either end is allowed (the issue: "finishes the update or stays on the old version"); a
                // cut while the bootloader counts the single trial boot consumes that try, as U-Boot's
                // bootcount does, and the release is then rolled back. Both ends were checked above.
                let end = self.run(PowerCut::after(n, mode), healthy, &label);
                if end == End::Finished {
                    finished += 1;
                }
                if !healthy {
                    assert_eq!(
                        end,
                        End::StayedOld,
                        "{label}: an unhealthy release must never be committed"
                    );
                }
                tried += 1;
            }
        }
        (ops, tried, finished)
    }
}

/// Cuts during a delta install (the decoder reading the running slot and writing the inactive one): the
/// running slot is never written, and the restart after a cut mid-apply installs the full image.
#[test]
fn power_cut_at_every_flash_operation_of_a_delta_install() {
    let f = Fixture::with_delta();
    let (ops, tried, done) = f.sweep(true, End::Finished);
    assert!(
        done * 2 > tried,
        "most cuts of a delta update must still finish it"
    );
    println!("| v1 -> v2 by delta (install+commit) | {ops:>7} | {tried:>36} |");
    println!("  delta update finished after {done} of {tried} cuts, stayed on v1 after the rest");
}

#[test]
fn power_cut_at_every_flash_operation_of_install_commit_and_rollback() {
    let f = Fixture::new();
    let (ops_commit, tried_commit, done_commit) = f.sweep(true, End::Finished);
    let (ops_rollback, tried_rollback, _) = f.sweep(false, End::StayedOld);
    assert!(
        done_commit * 2 > tried_commit,
        "most cuts of a healthy update must still finish it"
    );
    println!("| scenario                         | flash ops | cut points tried (before/after/torn) |");
    println!("|----------------------------------|-----------|--------------------------------------|");
    println!("| v1 -> v2 healthy (install+commit) | {ops_commit:>9} | {tried_commit:>36} |");
    println!(
        "  healthy update finished after {done_commit} of {tried_commit} cuts, stayed on v1 after the rest"
    );
    println!("| v1 -> v2 unhealthy (install+rollback) | {ops_rollback:>5} | {tried_rollback:>36} |");
    println!("total cut points: {}", tried_commit + tried_rollback);
}

/// Issue 23: a download cut by power loss five times in a row (past the restart loop breaker) still
/// ends with the release installed: the cuts are counted as attempts, not held against the release.
#[test]
fn issue_23_a_download_cut_again_and_again_is_installed_in_the_end() {
    let f = Fixture::new();
    let no_wait = RetryPolicy {
        first_backoff: std::time::Duration::ZERO,
        max_backoff: std::time::Duration::ZERO,
    };
    for first in [4, 9] {
        // Each boot's budget counts from that boot: cut a few writes into each attempt's download.
        let cuts: Vec<PowerCut> = (0..5)
            .map(|i| PowerCut::after(first + i, CutMode::ALL[usize::try_from(i).unwrap() % 3]))
            .collect();
        let label = format!("five cuts from op {first}");
        let (end, cut_in) = f.run_cuts(&cuts, true, &label, no_wait);
        assert_eq!(end, End::Finished, "{label}");
        assert!(cuts.iter().all(PowerCut::is_cut), "{label}: every cut happened");
        assert_eq!(
            cut_in, ["downloading"; 5],
            "{label}: every cut interrupted the download"
        );
    }
}
