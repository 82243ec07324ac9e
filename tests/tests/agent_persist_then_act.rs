//! Issue 21, persist then act: the agent saves each update state before the side effect it asks for. A
//! crash right after the verified image is recorded (Installed) and before the bootloader is told to try
//! it must not lose the release: the next start tells the bootloader and the update commits. (The
//! power-cut sweep cuts here too, but accepts either end; this test pins the right one.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use device_agent::config::{HealthCheckConfig, HealthConfig};
use device_agent::device::{provision, Device, DeviceSettings, FactoryImage, SlotPair};
use device_agent::state::{RecordFile, UpdateState};
use ota_e2e::{firmware, TestRepo, CHANNEL, HARDWARE};
use ota_slot::{BootControl, FileSlot, SimBootloader, SlotId, SlotWriter, TrialBoot};

const SLOT_LEN: u64 = 1 << 20;

/// The simulated bootloader, except that a crash (a simulated power loss) can be armed to hit the next
/// `start_trial` before it reaches the environment.
struct CrashingBoot {
    inner: SimBootloader<FileSlot>,
    crash_at_start_trial: bool,
}

impl BootControl for CrashingBoot {
    fn booted(&mut self) -> ota_slot::Result<SlotId> {
        self.inner.booted()
    }
    fn primary(&mut self) -> ota_slot::Result<SlotId> {
        self.inner.primary()
    }
    fn trial(&mut self) -> ota_slot::Result<Option<TrialBoot>> {
        self.inner.trial()
    }
    fn start_trial(&mut self, slot: SlotId, tries: u8) -> ota_slot::Result<()> {
        if self.crash_at_start_trial {
            return Err(ota_slot::Error::PowerLoss {
                op: "write",
                offset: 0,
                step: 0,
            });
        }
        self.inner.start_trial(slot, tries)
    }
    fn mark_good(&mut self, slot: SlotId) -> ota_slot::Result<()> {
        self.inner.mark_good(slot)
    }
    fn mark_bad(&mut self, slot: SlotId) -> ota_slot::Result<()> {
        self.inner.mark_bad(slot)
    }
}

struct Board {
    dir: tempfile::TempDir,
    settings: DeviceSettings,
}

impl Board {
    /// v1 in slot a, booted from a, provisioned against `repo`.
    fn factory(repo: &TestRepo, v1: &[u8]) -> Board {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Board::slots_in(dir.path(), true);
        let mut w = SlotWriter::new(&mut slots.a, v1.len() as u64).unwrap();
        std::io::Write::write_all(&mut w, v1).unwrap();
        w.finish().unwrap();
        let mut boot = SimBootloader::create_file(dir.path().join("env"), SlotId::A).unwrap();
        let factory = FactoryImage {
            version: "1.0.0".parse().unwrap(),
            length: v1.len() as u64,
        };
        let state = dir.path().join("state");
        provision(
            &state,
            &repo.root_json(),
            repo.fingerprint(),
            &factory,
            &mut slots,
            &mut boot,
        )
        .unwrap();
        let url = repo.url();
        let settings = DeviceSettings {
            state_dir: state,
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
                    command: Some(vec!["true".into()]),
                    http: None,
                    expect_status: None,
                    timeout_secs: 5,
                }],
            },
        };
        Board { dir, settings }
    }

    fn slots_in(dir: &std::path::Path, create: bool) -> SlotPair<FileSlot> {
        let open = |name: &str| {
            let path = dir.join(name);
            if create {
                FileSlot::create(&path, SLOT_LEN).unwrap()
            } else {
                FileSlot::open(&path, SLOT_LEN).unwrap()
            }
        };
        SlotPair {
            a: open("a.img"),
            b: open("b.img"),
        }
    }

    /// The agent after a (re)start, its bootloader armed to crash at the next trial request or not.
    fn agent(&self, crash_at_start_trial: bool) -> Device<FileSlot, CrashingBoot> {
        let boot = CrashingBoot {
            inner: SimBootloader::open_file(self.dir.path().join("env")).unwrap(),
            crash_at_start_trial,
        };
        Device::open(
            self.settings.clone(),
            Board::slots_in(self.dir.path(), false),
            boot,
        )
        .unwrap()
    }

    /// Power-on: the simulated bootloader picks the slot.
    fn power_on(&self) -> SlotId {
        SimBootloader::open_file(self.dir.path().join("env"))
            .unwrap()
            .reboot()
            .unwrap()
    }

    fn state(&self) -> UpdateState {
        RecordFile::in_dir(&self.settings.state_dir).load().unwrap().state
    }
}

#[test]
fn a_crash_after_installed_is_saved_and_before_the_trial_is_requested_still_commits() {
    let repo = TestRepo::new();
    let v1 = firmware("1.0.0", 50_000);
    let board = Board::factory(&repo, &v1);
    repo.publish("2.0.0", &firmware("2.0.0", 60_000));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The install runs; the crash hits the bootloader call.
    let mut agent = board.agent(true);
    rt.block_on(agent.on_boot()).unwrap();
    let err = rt.block_on(agent.poll_once()).unwrap_err();
    assert!(err.is_power_loss(), "{err}");
    let (_, mut boot) = agent.into_parts();
    assert_eq!(boot.trial().unwrap(), None, "the bootloader was never told");
    assert!(
        matches!(board.state(), UpdateState::Installed { slot: SlotId::B, .. }),
        "saved before the call: {:?}",
        board.state()
    );

    // Power-on: no trial pending, so the old slot boots. The agent's one way forward from Installed is
    // to tell the bootloader now, not to take this for a failed trial.
    assert_eq!(board.power_on(), SlotId::A);
    let outcome = rt.block_on(board.agent(false).on_boot()).unwrap();
    assert!(outcome.reboot, "{outcome:?}");
    assert!(
        matches!(outcome.state, UpdateState::TrialBoot { slot: SlotId::B, .. }),
        "{outcome:?}"
    );

    // The trial boots, the health checks pass, the release commits.
    assert_eq!(board.power_on(), SlotId::B);
    let mut agent = board.agent(false);
    let outcome = rt.block_on(agent.on_boot()).unwrap();
    assert!(!outcome.reboot, "{outcome:?}");
    assert!(
        matches!(&outcome.state, UpdateState::Committed { slot: SlotId::B, version } if version.to_string() == "2.0.0"),
        "{outcome:?}"
    );
    assert!(agent.record().failed.is_empty(), "{:?}", agent.record().failed);
    assert_eq!(agent.record().floor.to_string(), "2.0.0");
    assert_eq!(agent.boot_mut().primary().unwrap(), SlotId::B);
}
