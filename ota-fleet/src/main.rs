//! `ota-drill`: runs a fleet rollback drill and writes its report (see the ota-fleet crate doc).
//!
//! Exit status: 0 when every invariant held, 1 when one broke (a device unbootable or running an image
//! that was not signed), 2 when the drill could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ota_fleet::{DrillObserver, DrillOptions, Scenario};

/// The drill allocates small buffers from many threads for tens of thousands of devices; glibc's
/// allocator spent 10-17 % of a 10,000-device drill's CPU in malloc and free and grew its heap with
/// fragments. mimalloc (C, compiled in by its crate) is the drill's allocator only: the device-agent
/// and the libraries keep the system's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rehearse releases on a simulated fleet (real device-agent code, simulated flash and bootloader,
/// a loopback mirror injecting faults) and report per release who committed and who rolled back.
#[derive(Parser, Debug)]
#[command(
    name = "ota-drill",
    version,
    after_help = "Exit status:\n  0  every invariant held\n  1  an invariant broke (a device unbootable or \
running an image that was not signed): see the report\n  2  the drill could not run (the message says why; \
also usage errors)"
)]
struct Args {
    /// Scenario file (TOML); absent fields, or no file at all, take the defaults of
    /// ota-fleet/scenarios/default.toml.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Override the fleet size.
    #[arg(long)]
    devices: Option<u32>,
    /// Override the seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the image size in KiB.
    #[arg(long)]
    image_kib: Option<u32>,
    /// Override how many devices step at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Where report.json, report.svg and report.html go.
    #[arg(long, default_value = "drill-report")]
    out: PathBuf,
    /// Scratch directory for the repository and device state (default: a temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) instead of drilling.
    #[arg(long, value_name = "SHELL", hide = true)]
    completions: Option<clap_complete::Shell>,
    /// Print the man page (roff) instead of drilling.
    #[arg(long, hide = true)]
    man: bool,
}

/// `--completions` and `--man`: generated from the clap definitions, so they match the flags accepted.
fn print_docs(args: &Args) -> anyhow::Result<bool> {
    use clap::CommandFactory as _;
    let mut cli = Args::command();
    match args.completions {
        Some(shell) => clap_complete::generate(shell, &mut cli, "ota-drill", &mut std::io::stdout()),
        None => clap_mangen::Man::new(cli).render(&mut std::io::stdout())?,
    }
    Ok(true)
}

struct Bar(ProgressBar);

impl DrillObserver for Bar {
    fn release_started(&self, version: &str, devices: u32) {
        self.0.set_length(u64::from(devices));
        self.0.set_position(0);
        self.0.set_message(format!("release {version}: publishing"));
    }
    fn round_done(&self, version: &str, round: u32, settled: u32) {
        self.0.set_position(u64::from(settled));
        self.0.set_message(format!("release {version}, round {round}"));
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("ota-drill: an invariant broke (see the report)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ota-drill: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    if args.completions.is_some() || args.man {
        return print_docs(&args);
    }
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::from_file(path)?,
        None => Scenario::default(),
    };
    if let Some(n) = args.devices {
        scenario.devices = n;
    }
    if let Some(s) = args.seed {
        scenario.seed = s;
    }
    if let Some(k) = args.image_kib {
        scenario.image_kib = k;
    }
    if let Some(c) = args.concurrency {
        scenario.concurrency = c;
    }
    scenario.validate()?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(scenario.devices))
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} settled  {msg}")
            .context("progress bar template")?,
    );
    let observer = Bar(bar.clone());
    let collector_db = args.out.join("collector.db");
    // A fresh collector per drill: the devices' keys and sequence numbers start over.
    for stale in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{stale}", collector_db.display()));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
        }
    }
    let options = DrillOptions {
        work_dir: args.work_dir.clone(),
        collector_db: Some(collector_db.clone()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = runtime.block_on(ota_fleet::run(&scenario, &options, &observer))?;
    bar.finish_and_clear();
    print!("{}", report.table());
    let written = report.write_to(&args.out)?;
    println!(
        "report: {} (chart: {}, {})",
        written.json.display(),
        written.svg.display(),
        written.html.display()
    );
    println!(
        "collector: {} (collector summary --db {})",
        collector_db.display(),
        collector_db.display()
    );
    Ok(report.invariants.hold())
}
