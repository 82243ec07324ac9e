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
use collector::http::{self, ReadTimeouts};
use collector::{open_store, parse_device_key, Enrolment, Error, Ingest};
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
    /// Serve POST /v1/reports and GET /v1/summary.
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
    },
    /// Print each release's devices by outcome and its top failure reasons.
    Summary {
        /// The database.
        #[arg(long, env = "COLLECTOR_DB")]
        db: String,
        /// Print JSON (the same as GET /v1/summary).
        #[arg(long)]
        json: bool,
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

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Enroll { db, key, key_file } => enroll(&db, key, key_file),
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
        } => serve(
            &db,
            &listen,
            ReadTimeouts {
                headers: Duration::from_secs(header_timeout_secs),
                body: Duration::from_secs(body_timeout_secs),
            },
            tls_cert.zip(tls_key),
        ),
        Command::Summary { db, json } => {
            let summary = open_store(&db)?.summary()?;
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

fn enroll(db: &str, key: Option<String>, key_file: Option<PathBuf>) -> Result<()> {
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
    match open_store(db)?.enroll(&key, chrono::Utc::now())? {
        Enrolment::Added => println!("enrolled {device} ({})", key.algorithm()),
        Enrolment::AlreadyEnrolled => println!("already enrolled {device} ({})", key.algorithm()),
    }
    Ok(())
}

fn serve(db: &str, listen: &str, timeouts: ReadTimeouts, tls: Option<(PathBuf, PathBuf)>) -> Result<()> {
    let store: Arc<dyn collector::Store> = Arc::from(open_store(db)?);
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
        Some(Error::KeyText { .. } | Error::EnrolmentConflict { .. } | Error::NotEnrolled { .. }) => {
            EXIT_REFUSED
        }
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
