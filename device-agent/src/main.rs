//! The `device-agent` command line: parses (clap), opens the device from the configuration, calls the
//! library, and maps errors to a message and a non-zero exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use device_agent::config::{AgentConfig, BootBackend};
use device_agent::device::{
    create_state_dir, provision, Device, DeviceSettings, FactoryImage, Outcome, SlotPair,
};
use device_agent::lock::AgentLock;
use device_agent::schedule::PollSchedule;
use device_agent::select::Decision;
use device_agent::REBOOT_EXIT_CODE;
use ota_slot::{BootControl, FileSlot, GrubEnv, SimBootloader, UBootEnv};

#[derive(Parser)]
#[command(
    name = "device-agent",
    version,
    about = "Installs signed firmware into the inactive A/B slot, \
trial-boots it, and commits or rolls back."
)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        env = "OTA_AGENT_CONFIG",
        default_value = "/etc/ota-agent/agent.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pin the root of trust (refused unless its sha256 is the fingerprint) and create the device identity.
    Provision {
        /// The repository's root.json.
        #[arg(long)]
        root: PathBuf,
        /// The root's sha256 as repo-tool prints it (hex; ':' and spaces allowed).
        #[arg(long)]
        fingerprint: String,
        /// Version of the image in the running slot.
        #[arg(long)]
        running_version: ota_release::Version,
        /// Length in bytes of the image in the running slot.
        #[arg(long)]
        running_length: u64,
    },
    /// The daemon: finish what the last run left (health checks after a trial boot), then poll.
    Run {
        /// Poll once and exit instead of looping.
        #[arg(long)]
        once: bool,
    },
    /// Poll once and print what would be installed; changes nothing.
    Check,
    /// Poll once and install what is chosen now (then reboot into the trial).
    Install,
    /// Print the device's update status.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Commit the running trial without waiting for the health checks.
    MarkGood,
    /// Abandon the running trial: mark its slot bad and reboot into the old one.
    Rollback,
}

type BoxedDevice = Device<FileSlot, Box<dyn BootControl>>;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OTA_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("device-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("device-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open_parts(config: &AgentConfig) -> Result<(SlotPair<FileSlot>, Box<dyn BootControl>)> {
    let open = |s: &device_agent::config::SlotConfig| {
        FileSlot::open(&s.path, s.capacity).with_context(|| format!("opening slot {}", s.path.display()))
    };
    let slots = SlotPair {
        a: open(&config.slots.a)?,
        b: open(&config.slots.b)?,
    };
    let env = &config.boot.env;
    let boot: Box<dyn BootControl> = match config.boot.backend {
        BootBackend::UBoot => Box::new(UBootEnv::new(env)),
        BootBackend::Grub => Box::new(GrubEnv::new(env)),
        BootBackend::Sim => Box::new(
            SimBootloader::open_file(env)
                .with_context(|| format!("opening simulated boot env {}", env.display()))?,
        ),
    };
    Ok((slots, boot))
}

fn open_device(config: &AgentConfig) -> Result<BoxedDevice> {
    let (slots, boot) = open_parts(config)?;
    Ok(Device::open(DeviceSettings::from_config(config), slots, boot)?)
}

/// Reboots: the configured command, or for the simulated bootloader its boot selection and an exit with
/// [`REBOOT_EXIT_CODE`] (the supervisor starts the agent again).
fn reboot(config: &AgentConfig, device: BoxedDevice) -> Result<ExitCode> {
    drop(device);
    if config.boot.backend == BootBackend::Sim {
        let booted = SimBootloader::open_file(&config.boot.env)?.reboot()?;
        eprintln!("device-agent: simulated reboot into slot {booted}");
        return Ok(ExitCode::from(u8::try_from(REBOOT_EXIT_CODE).unwrap_or(1)));
    }
    let Some((program, args)) = config.boot.reboot_command.split_first() else {
        bail!("boot.reboot_command is empty");
    };
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("reboot command {program} failed: {status}");
    }
    Ok(ExitCode::SUCCESS)
}

fn report(outcome: &Outcome) {
    println!("{}: {}", outcome.state.name(), outcome.note);
}

/// One poll of the daemon: takes the agent lock, opens the device afresh (so a command run since the
/// last poll is seen), polls, and lets go of both. Some(code) when the agent must exit (reboot).
async fn poll_cycle(config: &AgentConfig) -> Result<Option<ExitCode>> {
    let _lock = AgentLock::acquire(&config.state_dir)?;
    let mut device = open_device(config)?;
    let outcome = device.poll_once().await?;
    report(&outcome);
    if outcome.reboot {
        return reboot(config, device).map(Some);
    }
    Ok(None)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = AgentConfig::load(&cli.config)?;
    match cli.command {
        Command::Provision {
            root,
            fingerprint,
            running_version,
            running_length,
        } => {
            create_state_dir(&config.state_dir)?;
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let (mut slots, mut boot) = open_parts(&config)?;
            let factory = FactoryImage {
                version: running_version,
                length: running_length,
            };
            let r = provision(
                &config.state_dir,
                &root,
                &fingerprint,
                &factory,
                &mut slots,
                &mut boot,
            )?;
            println!("device id     {}", r.device_id);
            println!("public key    {}", r.public_key);
            println!(
                "identity      {}",
                if r.key_created {
                    "created"
                } else {
                    "kept (already provisioned)"
                }
            );
            println!("pinned root   {}", r.root_sha256);
            println!("running       slot {} sha256 {}", r.booted, r.running_sha256);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { once } => {
            // After every start: finish what the last run left (a refusal to start is fatal).
            {
                let _lock = AgentLock::acquire(&config.state_dir)?;
                let mut device = open_device(&config)?;
                let outcome = device.on_boot().await?;
                report(&outcome);
                if outcome.reboot {
                    return reboot(&config, device);
                }
            }
            // Between polls the daemon holds neither the lock nor the device (its HTTP client, its
            // metadata): an operator's command can run, and the idle daemon stays small.
            let mut schedule = PollSchedule::new(&config.poll);
            let mut rng = rand::thread_rng();
            loop {
                let ok = match poll_cycle(&config).await {
                    Ok(Some(code)) => return Ok(code),
                    Ok(None) => true,
                    Err(e) if once => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "poll failed");
                        false
                    }
                };
                if once {
                    return Ok(ExitCode::SUCCESS);
                }
                let wait = schedule.after_poll(ok, &mut rng);
                tracing::info!(seconds = wait.as_secs(), "next poll");
                tokio::time::sleep(wait).await;
            }
        }
        Command::Check => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let mut device = open_device(&config)?;
            match device.check().await? {
                Decision::UpToDate { skipped } => {
                    println!("up to date");
                    for s in skipped {
                        println!("  skipped {}: {}", s.target, s.why);
                    }
                }
                Decision::Install {
                    image,
                    delta,
                    skipped,
                    ..
                } => {
                    println!(
                        "would install {} ({}, {} bytes, sha256 {})",
                        image.version, image.target, image.length, image.sha256
                    );
                    if let Some(d) = delta {
                        println!("  delta offered: {} ({} bytes)", d.target, d.length);
                    }
                    for s in skipped {
                        println!("  skipped {}: {}", s.target, s.why);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Install => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let mut device = open_device(&config)?;
            let outcome = device.poll_once().await?;
            report(&outcome);
            if outcome.reboot {
                return reboot(&config, device);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            // No lock: read-only, and health checks run it while the daemon holds the lock.
            let mut device = open_device(&config)?;
            let s = device.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let version = |v: &Option<ota_release::Version>| {
                    v.as_ref().map_or("unknown".to_owned(), |v| v.to_string())
                };
                println!("device      {}", s.device_id);
                println!("hardware    {} (channel {})", s.hardware_id, s.channel);
                println!(
                    "running     {} in slot {} (primary {})",
                    version(&s.running_version),
                    s.booted,
                    s.primary
                );
                match s.trial {
                    Some(t) => println!("trial       slot {} ({} tries left)", t.slot, t.tries_left),
                    None => println!("trial       none"),
                }
                println!("floor       {}", s.floor);
                println!("state       {}", s.state_text);
                if let Some(last) = &s.last_install {
                    println!("last        {last}");
                }
                if !s.failed.is_empty() {
                    let failed: Vec<String> = s.failed.iter().map(|v| v.to_string()).collect();
                    println!("failed      {}", failed.join(", "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::MarkGood => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let mut device = open_device(&config)?;
            report(&device.mark_good().await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let mut device = open_device(&config)?;
            let outcome = device.rollback().await?;
            report(&outcome);
            if outcome.reboot {
                return reboot(&config, device);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
