//! The `device-agent` command line: parses (clap), sets up logging, calls the library, prints, and maps
//! the result to an exit status: 0 done, [`REBOOT_EXIT_CODE`] after a simulated reboot (the supervisor
//! starts the agent again), 1 with a message on stderr for any error, 2 for a usage error (clap); the
//! list is `EXIT_STATUS_HELP`, shown by `--help`.

mod check_report;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use device_agent::channels::provision_channels;
use device_agent::config::AgentConfig;
use device_agent::daemon::{self, ConfiguredDevice, Ended, Polling, Reboot};
use device_agent::device::RolloutStatus;
use device_agent::device::{create_state_dir, FactoryImage, Outcome, Preflight, Status};
use device_agent::identity::open_configured;
use device_agent::lock::AgentLock;
use device_agent::provision::{provision_with, IdentitySource};
use device_agent::rollout::{format_unix, DrillOutcome};
use device_agent::select::Decision;
use device_agent::REBOOT_EXIT_CODE;
use tracing_subscriber::filter::Targets;

/// The exit statuses, listed by `--help` and the README.
const EXIT_STATUS_HELP: &str = "\
Exit status:
  0   done (after `install` with a reboot command: the machine is rebooting into the trial)
  1   error: the message on stderr names each cause, down to the OS error; `check` also exits 1 when
      `install` would refuse the chosen release (for example an image larger than the slot)
  2   usage error (unknown command or flag)
  75  reboot needed (boot.backend = \"sim\"): the simulated bootloader has chosen the next slot; start
      `device-agent run` again, as the boot would, to run the health checks and commit or roll back";

#[derive(Parser)]
#[command(
    name = "device-agent",
    version,
    about = "Installs signed firmware into the inactive A/B slot, \
trial-boots it, and commits or rolls back.",
    after_help = EXIT_STATUS_HELP
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
        /// Pin this CA certificate (PEM) for the repository's HTTPS: only servers it vouches for are
        /// talked to (the system's trust store is not used).
        #[arg(long)]
        repository_ca: Option<PathBuf>,
        /// Pin this CA certificate (PEM) for the report collector's HTTPS (mutual TLS).
        #[arg(long)]
        collector_ca: Option<PathBuf>,
    },
    /// Print the device's identity for onboarding: its id, its public key's fingerprint and the same
    /// as a QR code (the text `collector enroll` reads); optionally also as image files.
    Identity {
        /// Also write the QR code as an SVG file (for a label printer).
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Also write the QR code as a PNG file (for a label printer).
        #[arg(long)]
        png: Option<PathBuf>,
    },
    /// The daemon: finish what the last run left (health checks after a trial boot), then poll.
    Run {
        /// Poll once and exit instead of looping.
        #[arg(long)]
        once: bool,
        /// Never poll the repository (a device updated only from bundles): finish what the last run
        /// left (health checks, commit or roll back; a bundle install cut short, from its bundle), then
        /// exit.
        #[arg(long, conflicts_with = "once")]
        offline: bool,
    },
    /// Poll once and print what would be installed and whether `install` would accept it (slot
    /// capacity, delta base), then the next step; changes nothing (exit 1 when install would refuse).
    Check {
        /// As one JSON object (fields in the README).
        #[arg(long)]
        json: bool,
    },
    /// Poll once and install what is chosen now (then reboot into the trial).
    Install {
        /// Install from this offline bundle (`repo-tool bundle`) instead of the repository: verified
        /// against the pinned root exactly as online, no network used.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell); needs no configuration.
    #[cfg(feature = "cli-docs")]
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout; needs no configuration.
    #[cfg(feature = "cli-docs")]
    #[command(hide = true)]
    Man,
}

/// `completions` and `man`: generated from the clap definitions, so they match the flags accepted.
#[cfg(feature = "cli-docs")]
fn print_docs(command: &Command) -> Option<Result<ExitCode>> {
    use clap::CommandFactory as _;
    let mut cli = Cli::command();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "device-agent", &mut std::io::stdout());
        }
        Command::Man => {
            if let Err(e) = clap_mangen::Man::new(cli).render(&mut std::io::stdout()) {
                return Some(Err(e.into()));
            }
        }
        _ => return None,
    }
    Some(Ok(ExitCode::SUCCESS))
}

fn main() -> ExitCode {
    init_logging();
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

/// Logs to stderr, filtered by `OTA_AGENT_LOG` (`info` by default; `info,ota_tuf=debug` style
/// directives); colours only on a terminal: under systemd stderr is the journal, which would keep the
/// escapes.
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let default = || Targets::new().with_default(tracing::Level::INFO);
    let filter = match std::env::var("OTA_AGENT_LOG") {
        Ok(text) => text.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("device-agent: OTA_AGENT_LOG={text:?} ignored ({e}); logging at info");
            default()
        }),
        Err(_) => default(),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry().with(layer).with(filter).init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    #[cfg(feature = "cli-docs")]
    if let Some(done) = print_docs(&cli.command) {
        return done;
    }
    let config = AgentConfig::load(&cli.config)?;
    match cli.command {
        Command::Provision {
            root,
            fingerprint,
            running_version,
            running_length,
            repository_ca,
            collector_ca,
        } => {
            let factory = FactoryImage {
                version: running_version,
                length: running_length,
            };
            let cas = [repository_ca.as_deref(), collector_ca.as_deref()];
            run_provision(&config, &root, &fingerprint, &factory, cas)
        }
        Command::Identity { svg, png } => {
            print_identity(&config, svg.as_deref(), png.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { offline: true, .. } => {
            let ended = daemon::run_offline(&config, &mut print_outcome).await?;
            Ok(match ended {
                Ended::Rebooted(how) => exit_after(how),
                Ended::PolledOnce => ExitCode::SUCCESS,
            })
        }
        Command::Run { once, .. } => {
            let polling = if once { Polling::Once } else { Polling::Forever };
            let mut rng = rand::thread_rng();
            let ended = daemon::run(&config, polling, &mut rng, &mut print_outcome).await?;
            Ok(match ended {
                Ended::Rebooted(how) => exit_after(how),
                Ended::PolledOnce => ExitCode::SUCCESS,
            })
        }
        Command::Check { json: true } => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let mut device = daemon::open_device(&config)?;
            let decision = device.check().await?;
            let preflight = device
                .preflight(&decision)
                .map_err(|e| format!("{:#}", anyhow::Error::new(e)));
            let report = check_report::check_json(&decision, &device.rollout_status()?, &preflight);
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if preflight.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Check { json: false } => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let mut device = daemon::open_device(&config)?;
            let decision = device.check().await?;
            print_decision(&decision);
            print_rollout(&device.rollout_status()?);
            print_preflight(&decision, device.preflight(&decision)?.as_ref());
            Ok(ExitCode::SUCCESS)
        }
        Command::Install { bundle } => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let mut device = daemon::open_device(&config)?;
            let outcome = match bundle {
                Some(path) => device.install_bundle(&path).await?,
                None => device.poll_once().await?,
            };
            finish(&config, device, &outcome)
        }
        Command::Status { json } => {
            // No lock: read-only, and health checks run it while the daemon holds the lock.
            let status = daemon::open_device(&config)?.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::MarkGood => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            print_outcome(&daemon::open_device(&config)?.mark_good().await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback => {
            let _lock = AgentLock::acquire(&config.state_dir)?;
            let mut device = daemon::open_device(&config)?;
            let outcome = device.rollback().await?;
            finish(&config, device, &outcome)
        }
        // Printed by `print_docs` before the configuration is read.
        #[cfg(feature = "cli-docs")]
        Command::Completions { .. } | Command::Man => Ok(ExitCode::SUCCESS),
    }
}

fn run_provision(
    config: &AgentConfig,
    root: &std::path::Path,
    fingerprint: &str,
    factory: &FactoryImage,
    [repository_ca, collector_ca]: [Option<&std::path::Path>; 2],
) -> Result<ExitCode> {
    create_state_dir(&config.state_dir)?;
    let _lock = AgentLock::acquire(&config.state_dir)?;
    let (mut slots, mut boot) = daemon::open_parts(config)?;
    let r = provision_with(
        &config.state_dir,
        IdentitySource::of(config.identity.as_ref()),
        (root, fingerprint),
        factory,
        &mut slots,
        &mut boot,
    )?;
    let identity = if r.key_created {
        "created"
    } else {
        "kept (already provisioned)"
    };
    println!("device id     {}", r.device_id);
    println!("public key    {}", r.public_key);
    println!("identity      {identity}");
    println!("pinned root   {}", r.root_sha256);
    println!("running       slot {} sha256 {}", r.booted, r.running_sha256);
    let identity = open_configured(config)?;
    let channels = provision_channels(&config.state_dir, &identity, repository_ca, collector_ca)?;
    for (pinned, what) in [
        (channels.repository_ca, "pinned repository CA"),
        (channels.collector_ca, "pinned collector CA"),
    ] {
        if pinned {
            println!("{what}");
        }
    }
    let kept = if channels.client_cert_created {
        "created"
    } else {
        "kept"
    };
    println!(
        "client cert   {kept} ({})",
        device_agent::channels::CLIENT_CERT_FILE
    );
    Ok(ExitCode::SUCCESS)
}

/// `identity`: the onboarding card as text and QR code, and the image files asked for.
fn print_identity(
    config: &AgentConfig,
    svg: Option<&std::path::Path>,
    png: Option<&std::path::Path>,
) -> Result<()> {
    use device_agent::identity::IdentityKey as _;
    use device_agent::onboarding::{card_of, fingerprint, CardQr};
    // Read-only, like `status`: no lock.
    let identity = open_configured(config)?;
    let card = card_of(&identity)?;
    let qr = CardQr::new(&card)?;
    println!("device id     {}", identity.device_id());
    println!("public key    {}", identity.public_key_hex());
    println!("fingerprint   {}", fingerprint(&card));
    println!("card          {}", card.to_text());
    print!("{}", qr.to_terminal());
    println!();
    if let Some(path) = svg {
        ota_fs::write_atomic(path, qr.to_svg().as_bytes(), 0o644)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = png {
        ota_fs::write_atomic(path, &qr.to_png()?, 0o644)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Prints a command's outcome and reboots when it asks for it.
fn finish(config: &AgentConfig, device: ConfiguredDevice, outcome: &Outcome) -> Result<ExitCode> {
    print_outcome(outcome);
    if outcome.reboot {
        return Ok(exit_after(daemon::reboot(config, device)?));
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_after(reboot: Reboot) -> ExitCode {
    match reboot {
        Reboot::Command => ExitCode::SUCCESS,
        Reboot::Simulated { booted } => {
            eprintln!(
                "device-agent: simulated reboot into slot {booted}: exit {REBOOT_EXIT_CODE} (reboot needed); \
                 start `device-agent run` again, as the boot would, to continue (health checks, then \
                 commit or roll back)"
            );
            ExitCode::from(u8::try_from(REBOOT_EXIT_CODE).unwrap_or(1))
        }
    }
}

fn print_outcome(outcome: &Outcome) {
    println!("{}: {}", outcome.state.name(), outcome.note);
}

fn print_decision(decision: &Decision) {
    match decision {
        Decision::UpToDate { .. } => println!("up to date"),
        Decision::Install {
            image,
            delta,
            purpose,
            ..
        } => {
            println!(
                "would install {} ({}, {} bytes, sha256 {}){purpose}",
                image.version, image.target, image.length, image.sha256
            );
            if let Some(d) = delta {
                println!("  delta offered: {} ({} bytes)", d.target, d.length);
            }
        }
        Decision::SwitchBack {
            slot, image, pulled, ..
        } => println!(
            "would go back to {} in slot {slot} ({pulled} is pulled): the slot is hashed against the signed \
             sha256 {}, no download",
            image.version, image.sha256
        ),
    }
    for s in decision.skipped() {
        println!("  skipped {}: {}", s.target, s.why);
    }
}

/// What `install` would do with the decision, and the next step.
fn print_preflight(decision: &Decision, preflight: Option<&Preflight>) {
    let next = check_report::next_step(decision, &Ok(preflight.cloned()));
    let (Some(p), false) = (preflight, matches!(decision, Decision::SwitchBack { .. })) else {
        println!("next: {next}");
        return;
    };
    println!("  fits slot {} ({} bytes)", p.slot, p.capacity);
    match &p.delta {
        Some(Ok(delta)) => println!("  delta {delta}: its base is the running image"),
        Some(Err(why)) => println!("  delta not usable, the full image would be downloaded: {why}"),
        None => {}
    }
    println!("next: {next}");
}

fn print_status(s: &Status) {
    let version =
        |v: &Option<ota_release::Version>| v.as_ref().map_or("unknown".to_owned(), |v| v.to_string());
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
    if let Some(p) = &s.install_progress {
        println!("progress    {p}");
    }
    if let Some(r) = &s.retry {
        println!(
            "retry       {} attempts at {} ended before verification (last: {}); next try at unix time {}",
            r.attempts, r.version, r.last_reason, r.next_try_unix
        );
    }
    if !s.failed.is_empty() {
        let failed: Vec<String> = s.failed.iter().map(|v| v.to_string()).collect();
        println!("failed      {}", failed.join(", "));
    }
    match &s.reports {
        None => println!("reports     off (no [report] section)"),
        Some(q) => {
            println!(
                "reports     {} queued ({} bytes; at most {} reports, {} bytes), {} dropped, {} delivered, \
                 {} refused, next sequence {}",
                q.count,
                q.bytes,
                q.max_reports,
                q.max_bytes,
                q.dropped,
                q.delivered,
                q.refused,
                q.next_sequence
            );
            if let Some(e) = &q.last_error {
                println!("            last send error (unix time {}): {}", e.unix, e.text);
            }
        }
    }
    for d in &s.drills {
        let why = if d.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", d.reason)
        };
        let outcome = match d.outcome {
            DrillOutcome::DrillPassed => "passed (healthy, rolled back on purpose)",
            DrillOutcome::DrillFailed => "failed",
        };
        println!("drill       {} on {}: {outcome}{why}", d.id, d.version);
    }
    print_rollout(&s.rollout);
}

/// The device's seed and its standing in each offered release's rollout.
fn print_rollout(r: &RolloutStatus) {
    println!("seed        {}", r.seed);
    match r.checked_unix {
        None => println!("rollout     not checked yet (the next poll fetches it)"),
        Some(t) => println!(
            "rollout     checked {}, {}",
            format_unix(t),
            if r.controlled {
                "rollout-control file verified"
            } else {
                "no rollout-control file"
            }
        ),
    }
    if let Some(why) = &r.control_error {
        println!("  refused   the newest rollout-control file: {why} (the last verified one stays in force)");
    }
    for rel in &r.releases {
        let wave = rel.wave.map_or(String::new(), |w| format!(", wave {}", w + 1));
        let when = match (rel.standing, rel.eligible_unix, rel.since_unix) {
            ("open", Some(t), _) => format!(", eligible since {}", format_unix(t)),
            ("open", None, _) => ", no plan: everyone at once".to_owned(),
            ("waiting", Some(t), _) => format!(", eligible at {}", format_unix(t)),
            (_, _, Some(t)) => format!(" since {}", format_unix(t)),
            _ => String::new(),
        };
        let why = if rel.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", rel.reason)
        };
        println!("  {:<9} {}{wave}{when}{why}", rel.standing, rel.version);
    }
}
