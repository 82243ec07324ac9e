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
//!
//! Issue 14: the same sweep over a pull-back. The device starts committed on v2 (slot b) and v2 is pulled
//! by signed rollout control (`repo-tool rollout pull`): it goes back to v1 from slot a (no download), or,
//! when slot a holds an older factory image, by downloading v1 into it. Every boot must run a signed
//! release, and the device ends on v1 (the floor following it down) or still on v2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use device_agent::config::{HealthCheckConfig, HealthConfig};
use device_agent::device::{provision, Device, DeviceSettings, FactoryImage, SlotPair};
use device_agent::state::{RecordFile, RetryPolicy, SlotImage, UpdateState};
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
    /// Where the device starts.
    start: Start,
}

/// Where a scenario's device starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// Factory-fresh on v1 in slot a; v2 is the update.
    Factory,
    /// Committed on v2 in slot b, which is pulled; slot a holds v1 (`v1_in_slot_a`) or the factory
    /// image v0, and the device must go back to v1.
    PulledV2 { v1_in_slot_a: bool },
}

/// The factory image of a pull-back by download (slot a holds it, not v1).
fn v0() -> Vec<u8> {
    firmware("0.5.0", V1_LEN - 4_000)
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

    /// v1 and v2 published, then v2 pulled with the rollout-control key (the real `repo-tool`); the
    /// device starts committed on v2.
    fn pulled(v1_in_slot_a: bool) -> Fixture {
        let repo = TestRepo::new();
        let v1 = firmware("1.0.0", V1_LEN);
        let v2 = firmware("2.0.0", V2_LEN);
        repo.publish("1.0.0", &v1);
        repo.publish("2.0.0", &v2);
        let control = repo.new_key("rollout-control");
        let root = repo.root_dir();
        let (root, control) = (root.to_str().unwrap(), control.to_str().unwrap());
        let (targets, snapshot, timestamp) =
            (repo.key("targets"), repo.key("snapshot"), repo.key("timestamp"));
        let keys = [
            "--key",
            snapshot.to_str().unwrap(),
            "--key",
            timestamp.to_str().unwrap(),
        ];
        let mut init = vec!["rollout", "init", "--repo", root, "--control-key", control];
        init.extend(["--key", targets.to_str().unwrap()]);
        init.extend(keys);
        let mut pull = vec![
            "rollout",
            "pull",
            "--repo",
            root,
            "--hardware",
            HARDWARE,
            "--channel",
            CHANNEL,
        ];
        pull.extend(["--version", "2.0.0", "--reason", "pulled", "--key", control]);
        pull.extend(keys);
        for args in [init, pull] {
            let out = repo.repo_tool(&args);
            assert!(
                out.status.success(),
                "repo-tool {args:?}: {}",
                ota_e2e::text(&out)
            );
        }
        Fixture {
            start: Start::PulledV2 { v1_in_slot_a },
            ..Fixture::with(repo, v1, v2, 64 * 1024, false)
        }
    }

    /// The versions the scenario goes from and to.
    fn versions(&self) -> (&'static str, &'static str) {
        match self.start {
            Start::Factory => ("1.0.0", "2.0.0"),
            Start::PulledV2 { .. } => ("2.0.0", "1.0.0"),
        }
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
            start: Start::Factory,
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

    /// A factory-fresh device: v1 (or, for a pull-back by download, v0) in slot a, booted from a,
    /// provisioned; for a pull-back, then committed on v2 in slot b.
    fn factory_device(&self, state_dir: &std::path::Path) -> FlashMemory {
        let memory = FlashMemory::new(usize::try_from(self.layout.capacity()).unwrap(), 0xFF);
        let flash = Flash::with_memory(memory.clone(), PowerCut::never()).unwrap();
        let mut a = self.layout.slot(&flash, SlotId::A).unwrap();
        let (factory_version, factory_image) = match self.start {
            Start::PulledV2 { v1_in_slot_a: false } => ("0.5.0", v0()),
            _ => ("1.0.0", self.v1.clone()),
        };
        let mut w = SlotWriter::new(&mut a, factory_image.len() as u64).unwrap();
        std::io::Write::write_all(&mut w, &factory_image).unwrap();
        w.finish().unwrap();
        let mut boot = SimBootloader::provision(self.layout.env(&flash).unwrap(), SlotId::A).unwrap();
        let mut slots = SlotPair {
            a,
            b: self.layout.slot(&flash, SlotId::B).unwrap(),
        };
        let factory = FactoryImage {
            version: factory_version.parse().unwrap(),
            length: factory_image.len() as u64,
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
        if matches!(self.start, Start::PulledV2 { .. }) {
            self.commit_v2(state_dir, &mut slots.b, &mut boot);
        }
        memory
    }

    /// Leaves the device as an uncut update to v2 does: v2 in slot b, committed, booted from b.
    fn commit_v2(&self, state_dir: &std::path::Path, b: &mut FlashSlot, boot: &mut SimBootloader<FlashSlot>) {
        let mut w = SlotWriter::new(b, self.v2.len() as u64).unwrap();
        std::io::Write::write_all(&mut w, &self.v2).unwrap();
        w.finish().unwrap();
        boot.mark_good(SlotId::B).unwrap();
        assert_eq!(boot.reboot().unwrap(), SlotId::B);
        let file = RecordFile::in_dir(state_dir);
        let mut record = file.load().unwrap();
        record.slot_b = Some(SlotImage {
            version: "2.0.0".parse().unwrap(),
            sha256: ota_release::Sha256Digest::of(&self.v2),
            length: self.v2.len() as u64,
        });
        record.state = UpdateState::Committed {
            slot: SlotId::B,
            version: "2.0.0".parse().unwrap(),
        };
        record.floor = "2.0.0".parse().unwrap();
        file.save(&record).unwrap();
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
        let v0 = v0();
        let (h0, h1, h2) = (sha256_hex(&v0), sha256_hex(&self.v1), sha256_hex(&self.v2));
        let (from, to) = self.versions();
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
            let running = [(v0.len(), &h0), (self.v1.len(), &h1), (self.v2.len(), &h2)]
                .iter()
                .any(|(len, h)| hex::encode(slot_sha256(slots.get_mut(booted), *len as u64).unwrap()) == **h);
            assert!(
                running,
                "{label}: boot {boot_no} runs slot {booted}, which holds no signed release"
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
                        // A pull-back whose trial was cut short: still committed on the pulled v2.
                        UpdateState::Committed { slot, version } if version.to_string() == from => {
                            assert_eq!(slot, booted, "{label}");
                            End::StayedOld
                        }
                        UpdateState::Committed { slot, version } => {
                            assert_eq!((slot, version.to_string().as_str()), (booted, to), "{label}");
                            assert_eq!(dev.record().floor.to_string(), to, "{label}");
                            self.check_pull_back_path(dev.record(), label);
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
                            assert_eq!(dev.record().slot(booted).unwrap().version.to_string(), from);
                            End::StayedOld
                        }
                        UpdateState::Failed { .. } | UpdateState::Idle => {
                            assert_eq!(dev.record().slot(booted).unwrap().version.to_string(), from);
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

    /// A finished pull-back came the expected way: from slot a with nothing downloaded, or by download.
    fn check_pull_back_path(&self, record: &device_agent::state::DeviceRecord, label: &str) {
        match (self.start, &record.last_install) {
            (Start::Factory, _) => {}
            (Start::PulledV2 { v1_in_slot_a: true }, last) => {
                assert!(
                    last.is_none(),
                    "{label}: going back from slot a downloaded: {last:?}"
                )
            }
            (Start::PulledV2 { v1_in_slot_a: false }, last) => assert_eq!(
                last.as_ref().map(|l| l.version.to_string()).as_deref(),
                Some("1.0.0"),
                "{label}: v1 must be downloaded"
            ),
        }
    }

    /// Counts the scenario's flash operations, then cuts at each one in each mode.
    fn sweep(&self, healthy: bool, want: End) -> (u64, usize, usize) {
        let counter = PowerCut::never();
        assert_eq!(self.run(counter.clone(), healthy, "uncut"), want);
        let ops = counter.ops();
        // Going back from the other slot writes no image: only the bootloader's environment changes.
        let least = match self.start {
            Start::PulledV2 { v1_in_slot_a: true } => 4,
            _ => 20,
        };
        assert!(
            ops > least,
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

/// Issue 14: cuts at every flash operation of a pull-back, from the other slot (nothing downloaded)
/// and by download: every boot runs a signed release, and the device ends on v1 with the floor
/// following it, or still on the pulled v2.
#[test]
fn power_cut_at_every_flash_operation_of_a_pull_back() {
    for v1_in_slot_a in [true, false] {
        let f = Fixture::pulled(v1_in_slot_a);
        let (ops, tried, done) = f.sweep(true, End::Finished);
        assert!(done * 2 > tried, "most cuts of a pull-back must still finish it");
        let how = if v1_in_slot_a {
            "from the other slot"
        } else {
            "by download"
        };
        println!("| v2 pulled -> v1 {how} | {ops:>9} | {tried:>36} |");
        println!("  pull-back finished after {done} of {tried} cuts, stayed on v2 after the rest");
    }
}
