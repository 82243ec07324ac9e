//! collector command line: parses flags and calls the `collector` library; see its crate doc.
//! `main` only maps the outcome to an exit status: 0 done, 1 refused by a rule (a key that is not one,
//! a conflicting or unknown enrolment), 2 could not run (storage, network, usage).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use collector::halt::{self, load_halt_keys, AutoHalt, HaltRule};
use collector::http::{self, ReadTimeouts};
use collector::{open_store, parse_device_key, Enrolment, Error, Ingest};
use ota_publish::KeyRef;
use ota_report::DeviceId;

const EXIT_REFUSED: u8 = 1;
const EXIT_COULD_NOT_RUN: u8 = 2;

/// The fleet collector: enrols device keys, takes in their signed update reports, summarizes releases.
#[derive(Parser)]
#[command(
    name = "collector",
    version,
    after_help = "Exit status:\n  0  done\n  1  refused by a rule (a key that is not one, a conflicting or \
unknown enrolment)\n  2  could not run (storage, network, usage error)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol a device's public key (hex, `ed25519:<hex>`, what `device-agent provision` or
    /// `device-agent identity` printed, or the device card its QR code carries).
    Enroll {
        /// The database: a file path, a sqlite: URL or a postgres:// URL (created or migrated as needed;
        /// give a URL with a password through COLLECTOR_DB, off the command line).
        #[arg(long, env = "COLLECTOR_DB")]
        db: String,
        /// The key text, or the scanned QR code's text (`ota-device:v1?id=...&key=...`).
        #[arg(long, conflicts_with = "key_file", required_unless_present = "key_file")]
        key: Option<String>,
        /// A file holding the key text (`-` for standard input).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The device's hardware id, when the factory knows it: the device counts as pending on that
        /// hardware's releases before its first report.
        #[arg(long, requires = "channel")]
        hardware: Option<String>,
        /// The device's channel (with --hardware).
        #[arg(long, requires = "hardware")]
        channel: Option<String>,
    },
    /// Revoke a device: its reports are refused from now on.
    Revoke {
        /// The database.
        #[arg(long, env = "COLLECTOR_DB")]
        db: String,
        /// The device id (dev-...).
        #[arg(long)]
        device: String,
    },
    /// Serve POST /v1/reports, GET /v1/summary, and the dashboard at GET / (with GET /v1/history).
    Serve {
        /// The database.
        #[arg(long, env = "COLLECTOR_DB")]
        db: String,
        /// The address to listen on (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: String,
        /// Seconds a client may take to send a request's headers.
        #[arg(long, default_value_t = 10)]
        header_timeout_secs: u64,
        /// Seconds a client may take to send a request's body.
        #[arg(long, default_value_t = 10)]
        body_timeout_secs: u64,
        /// Serve HTTPS with this certificate chain (PEM), and require every client to present a
        /// certificate whose key is an enrolled, unrevoked device (mutual TLS). Without it: plain
        /// HTTP (keep that to loopback).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        halt: HaltArgs,
    },
    /// Print each release's devices by outcome and its top failure reasons.
    Summary {
        /// The database.
        #[arg(long, env = "COLLECTOR_DB")]
        db: String,
        /// Print JSON (the same as GET /v1/summary).
        #[arg(long)]
        json: bool,
        /// The repository directory: adds each release's waves (placed by its plan, as devices do).
        #[arg(long)]
        repo: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    #[command(hide = true)]
    Man,
}

/// `completions` and `man`: generated from the clap definitions, so they match the flags accepted.
fn print_docs(shell: Option<clap_complete::Shell>) -> Result<()> {
    use clap::CommandFactory as _;
    let mut cli = Cli::command();
    match shell {
        Some(shell) => clap_complete::generate(shell, &mut cli, "collector", &mut std::io::stdout()),
        None => clap_mangen::Man::new(cli).render(&mut std::io::stdout())?,
    }
    Ok(())
}

/// The automatic halt (see the README's "Automatic halt").
#[derive(clap::Args)]
struct HaltArgs {
    /// A halt rule: `rollback_percent=20,min_reports=3[,hardware=ID][,channel=NAME][,release=VERSION]`
    /// (repeat for several).
    #[arg(long = "halt-rule", value_name = "RULE")]
    rules: Vec<String>,
    /// A TOML file of `[[rule]]` tables with the same fields.
    #[arg(long = "halt-rules", value_name = "FILE")]
    rules_file: Option<PathBuf>,
    /// The repository directory halts are published to (and rollout plans read from).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// A key a halt signs with: the rollout-control, snapshot and timestamp keys, each a PKCS#8 file
    /// (mode 0600) or a `pkcs11:` URI (PIN from its pin-source file or OTA_PKCS11_PIN). Without them
    /// the collector only alerts.
    #[arg(long = "halt-key", value_name = "FILE|PKCS11-URI")]
    keys: Vec<String>,
    /// The PKCS#11 module for `pkcs11:` keys without module-path.
    #[arg(long = "pkcs11-module", env = "OTA_PKCS11_MODULE")]
    module: Option<PathBuf>,
    /// Seconds between two evaluations of the rules (after reports are stored, never in a request).
    #[arg(long, default_value_t = 5)]
    halt_interval_secs: u64,
}

impl HaltArgs {
    /// The automatic halt these flags configure, or `None` without rules.
    fn load(&self, store: Arc<dyn collector::Store>) -> Result<Option<AutoHalt>> {
        let mut rules = Vec::new();
        for spec in &self.rules {
            rules.push(HaltRule::parse_spec(spec)?);
        }
        if let Some(path) = &self.rules_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read the halt rules {}", path.display()))?;
            rules.extend(HaltRule::parse_file(&text, &path.display().to_string())?);
        }
        if rules.is_empty() {
            anyhow::ensure!(
                self.keys.is_empty(),
                "--halt-key without a --halt-rule or --halt-rules"
            );
            return Ok(None);
        }
        anyhow::ensure!(
            self.keys.is_empty() || self.repo.is_some(),
            "--halt-key needs --repo"
        );
        let mut refs = Vec::new();
        for (i, text) in self.keys.iter().enumerate() {
            // Parsed here, not by clap, so a refused pkcs11: URI (it may hold a PIN) is never echoed.
            let key: KeyRef = text.parse().map_err(|_| {
                anyhow::anyhow!("--halt-key number {} is neither a file nor a pkcs11: URI", i + 1)
            })?;
            refs.push(key);
        }
        let keys = if refs.is_empty() {
            None
        } else {
            Some(load_halt_keys(&refs, self.module.as_deref())?)
        };
        Ok(Some(AutoHalt::new(
            store,
            rules,
            self.repo.clone(),
            keys,
            halt::wall_clock(),
        )))
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Enroll {
            db,
            key,
            key_file,
            hardware,
            channel,
        } => enroll(&db, key, key_file, hardware.zip(channel)),
        Command::Revoke { db, device } => {
            let device = DeviceId::try_from(device).context("--device")?;
            open_store(&db)?.revoke(&device, chrono::Utc::now())?;
            println!("revoked {device}");
            Ok(())
        }
        Command::Serve {
            db,
            listen,
            header_timeout_secs,
            body_timeout_secs,
            tls_cert,
            tls_key,
            halt,
        } => serve(
            &db,
            &listen,
            ReadTimeouts {
                headers: Duration::from_secs(header_timeout_secs),
                body: Duration::from_secs(body_timeout_secs),
            },
            tls_cert.zip(tls_key),
            &halt,
        ),
        Command::Summary { db, json, repo } => {
            let store = open_store(&db)?;
            let summary = match repo {
                Some(repo) => halt::summary_with_waves(&*store, &repo, chrono::Utc::now().timestamp())?,
                None => store.summary()?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.to_text());
            }
            Ok(())
        }
        Command::Completions { shell } => print_docs(Some(shell)),
        Command::Man => print_docs(None),
    }
}

fn enroll(
    db: &str,
    key: Option<String>,
    key_file: Option<PathBuf>,
    line: Option<(String, String)>,
) -> Result<()> {
    let text = match (key, key_file) {
        (Some(text), _) => text,
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .context("read the key from standard input")?;
            text
        }
        (None, Some(path)) => {
            std::fs::read_to_string(&path).with_context(|| format!("read the key from {}", path.display()))?
        }
        (None, None) => anyhow::bail!("give --key or --key-file"),
    };
    let key = parse_device_key(&text)?;
    let device = key.device_id();
    let store = open_store(db)?;
    match store.enroll(&key, chrono::Utc::now())? {
        Enrolment::Added => println!("enrolled {device} ({})", key.algorithm()),
        Enrolment::AlreadyEnrolled => println!("already enrolled {device} ({})", key.algorithm()),
    }
    if let Some((hardware, channel)) = line {
        ota_release::HardwareId::new(&hardware).context("--hardware")?;
        ota_release::Channel::new(&channel).context("--channel")?;
        store.set_device_line(&device, &hardware, &channel)?;
    }
    Ok(())
}

fn serve(
    db: &str,
    listen: &str,
    timeouts: ReadTimeouts,
    tls: Option<(PathBuf, PathBuf)>,
    halt: &HaltArgs,
) -> Result<()> {
    let store: Arc<dyn collector::Store> = Arc::from(open_store(db)?);
    let auto_halt = halt.load(store.clone())?.map(Arc::new);
    let halt_interval = Duration::from_secs(halt.halt_interval_secs.max(1));
    let tls = match tls {
        Some((cert, key)) => Some(Arc::new(collector::tls::server_config(
            &cert,
            &key,
            store.clone(),
        )?)),
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Io {
                action: "listen on",
                what: listen.to_string(),
                source,
            })?;
        let addr = listener.local_addr().context("read the listening address")?;
        // Scripts and tests wait for this line to know the port.
        println!("listening on {addr}");
        std::io::stdout().flush().ok();
        if let Some(auto_halt) = auto_halt {
            if !auto_halt.can_halt() {
                tracing::warn!("halt rules without --repo and --halt-key: the collector only alerts");
            }
            tokio::spawn(auto_halt.run_every(halt_interval));
        }
        let app = http::router(Ingest::new(store), timeouts);
        let shutdown = async {
            tokio::signal::ctrl_c().await.ok();
        };
        match tls {
            Some(tls) => http::serve_tls(listener, app, timeouts, tls, shutdown).await?,
            None => http::serve(listener, app, timeouts, shutdown).await?,
        }
        Ok(())
    })
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(
            Error::KeyText { .. }
            | Error::EnrolmentConflict { .. }
            | Error::NotEnrolled { .. }
            | Error::HaltRule { .. }
            | Error::HaltKey { .. },
        ) => EXIT_REFUSED,
        _ => EXIT_COULD_NOT_RUN,
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COLLECTOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints each cause once (library messages do not repeat their sources).
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
