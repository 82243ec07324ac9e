//! The daemon and what every command shares: opening the configured slots and bootloader
//! ([`open_parts`], [`open_device`]), the reboot policy ([`reboot`]), and the poll loop ([`run`]).
//!
//! It does not parse the command line or print (that is `main.rs`), and it holds the agent lock only
//! while it drives the device, so an operator's command can run between polls.

use rand::Rng;

use crate::config::{AgentConfig, BootBackend, SlotConfig};
use crate::device::{Device, DeviceSettings, Outcome, SlotPair};
use crate::error::{Error, Result};
use crate::lock::AgentLock;
use crate::report_queue::ReportQueue;
use crate::report_send::{deliver_once, send_forever};
use crate::schedule::PollSchedule;
use crate::SlotId;
use ota_slot::{BootControl, FileSlot, GrubEnv, SimBootloader, UBootEnv};

/// The device as the configuration describes it: file or block-device slots, the configured bootloader.
pub type ConfiguredDevice = Device<FileSlot, Box<dyn BootControl>>;

/// Opens the configured slots and the configured bootloader backend.
pub fn open_parts(config: &AgentConfig) -> Result<(SlotPair<FileSlot>, Box<dyn BootControl>)> {
    let open = |s: &SlotConfig| FileSlot::open(&s.path, s.capacity);
    let slots = SlotPair {
        a: open(&config.slots.a)?,
        b: open(&config.slots.b)?,
    };
    let env = &config.boot.env;
    let boot: Box<dyn BootControl> = match config.boot.backend {
        BootBackend::UBoot => Box::new(UBootEnv::new(env)),
        BootBackend::Grub => Box::new(GrubEnv::new(env)),
        BootBackend::Sim => Box::new(SimBootloader::open_file(env)?),
    };
    Ok((slots, boot))
}

/// Opens the provisioned device the configuration describes, with install progress on stderr (a bar on
/// a terminal, log lines otherwise) and in the state directory's progress file.
pub fn open_device(config: &AgentConfig) -> Result<ConfiguredDevice> {
    let (slots, boot) = open_parts(config)?;
    let mut settings = DeviceSettings::from_config(config);
    settings.repository.http = crate::channels::repository_http(&config.state_dir)?;
    let mut device = match &config.identity {
        None => Device::open(settings, slots, boot)?,
        Some(_) => {
            let identity = crate::identity::open_configured(config)?;
            Device::open_with_identity(settings, slots, boot, Box::new(identity))?
        }
    };
    device.set_retry_policy(config.retry_policy());
    device.set_progress(crate::progress::ProgressDisplay::for_stderr());
    if let Some(report) = &config.report {
        device.set_report_queue(ReportQueue::open(&config.state_dir, report.limits()));
    }
    Ok(device)
}

/// How a reboot was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reboot {
    /// The configured reboot command ran: the machine is going down.
    Command,
    /// The simulated bootloader chose `booted`: the agent must exit with
    /// [`crate::REBOOT_EXIT_CODE`] so its supervisor starts it again, as a real reboot would.
    Simulated {
        /// The slot the simulated bootloader booted.
        booted: SlotId,
    },
}

/// Reboots, after letting go of the device (its record is saved already): the configured command, or
/// for the simulated bootloader its boot selection.
pub fn reboot(config: &AgentConfig, device: ConfiguredDevice) -> Result<Reboot> {
    drop(device);
    if config.boot.backend == BootBackend::Sim {
        let booted = SimBootloader::open_file(&config.boot.env)?.reboot()?;
        tracing::info!(slot = %booted, "simulated reboot");
        return Ok(Reboot::Simulated { booted });
    }
    let Some((program, args)) = config.boot.reboot_command.split_first() else {
        return Err(Error::RebootCommand {
            program: String::new(),
            why: "boot.reboot_command is empty".to_owned(),
        });
    };
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| Error::RebootCommand {
            program: program.clone(),
            why: format!("cannot run it: {e}"),
        })?;
    if !status.success() {
        return Err(Error::RebootCommand {
            program: program.clone(),
            why: format!("it failed: {status}"),
        });
    }
    Ok(Reboot::Command)
}

/// Whether the daemon loops or polls once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Poll once and return (`run --once`); a failed poll is an error.
    Once,
    /// Poll on the configured schedule until a reboot; a failed poll is logged and retried with backoff.
    Forever,
}

/// How the daemon ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It rebooted (into a trial, off a rejected slot, or into a commit).
    Rebooted(Reboot),
    /// It polled once and nothing asks for a reboot.
    PolledOnce,
}

/// The daemon: finishes what the last run left (a failure there is fatal), then polls. `report` sees
/// every step's outcome; `rng` jitters the waits. With a `[report]` section the queued reports are
/// delivered beside the polls (`run --once`: one bounded pass after the poll), never before a reboot.
pub async fn run(
    config: &AgentConfig,
    polling: Polling,
    rng: &mut impl Rng,
    report: &mut dyn FnMut(&Outcome),
) -> Result<Ended> {
    {
        let _lock = AgentLock::acquire(&config.state_dir)?;
        let mut device = open_device(config)?;
        let outcome = device.on_boot().await?;
        report(&outcome);
        if outcome.reboot {
            return reboot(config, device).map(Ended::Rebooted);
        }
    }
    let wake = tokio::sync::Notify::new();
    let polls = poll_loop(config, polling, rng, report, &wake);
    let Some(reporting) = &config.report else {
        return polls.await;
    };
    if polling == Polling::Once {
        let ended = polls.await?;
        if ended == Ended::PolledOnce {
            deliver_once(config, reporting).await;
        }
        return Ok(ended);
    }
    // One thread: the sender runs while the poll loop waits, and is dropped when the loop reboots.
    tokio::select! {
        ended = polls => ended,
        never = send_forever(config, reporting, &wake) => match never {},
    }
}

/// `run --offline`, for a device updated only from bundles: finishes what the last run left (health
/// checks and commit or rollback after a trial boot) and resumes a bundle install cut short, from its
/// bundle; never polls the repository.
pub async fn run_offline(config: &AgentConfig, report: &mut dyn FnMut(&Outcome)) -> Result<Ended> {
    let _lock = AgentLock::acquire(&config.state_dir)?;
    let mut device = open_device(config)?;
    let mut outcome = device.on_boot().await?;
    report(&outcome);
    let from_bundle = matches!(
        &device.record().state,
        crate::state::UpdateState::Downloading {
            source: crate::state::InstallSource::Bundle { .. },
            ..
        }
    );
    if !outcome.reboot && from_bundle {
        outcome = device.poll_once().await?;
        report(&outcome);
    }
    if outcome.reboot {
        return reboot(config, device).map(Ended::Rebooted);
    }
    Ok(Ended::PolledOnce)
}

/// The poll loop after the start: polls on the schedule (or once), waking the report sender after each.
async fn poll_loop(
    config: &AgentConfig,
    polling: Polling,
    rng: &mut impl Rng,
    report: &mut dyn FnMut(&Outcome),
    wake: &tokio::sync::Notify,
) -> Result<Ended> {
    // Between polls the daemon holds neither the lock nor the device (its HTTP client, its metadata):
    // an operator's command can run, and the idle daemon stays small.
    let mut schedule = PollSchedule::new(&config.poll);
    loop {
        let ok = match poll_cycle(config, report).await {
            Ok(Some(rebooted)) => return Ok(Ended::Rebooted(rebooted)),
            Ok(None) => true,
            Err(e) if polling == Polling::Once => return Err(e),
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "poll failed");
                false
            }
        };
        wake.notify_one();
        if polling == Polling::Once {
            return Ok(Ended::PolledOnce);
        }
        let wait = schedule.after_poll(ok, rng);
        tracing::info!(seconds = wait.as_secs(), "next poll");
        tokio::time::sleep(wait).await;
    }
}

/// One poll of the daemon: takes the agent lock, opens the device afresh (so a command run since the
/// last poll is seen), polls, and lets go of both. `Some` when it rebooted.
async fn poll_cycle(config: &AgentConfig, report: &mut dyn FnMut(&Outcome)) -> Result<Option<Reboot>> {
    let _lock = AgentLock::acquire(&config.state_dir)?;
    let mut device = open_device(config)?;
    let outcome = device.poll_once().await?;
    report(&outcome);
    if outcome.reboot {
        return reboot(config, device).map(Some);
    }
    Ok(None)
}

/// An error with its sources, `: `-separated (as anyhow's `{:#}` prints it), for the log.
struct ErrorChain<'e>(&'e (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
