//! Conformance client: the command line TUF client test suites drive (tuf-conformance's CLIENT-CLI):
//!
//! ```text
//! ota-tuf-client --metadata-dir D init ROOT_FILE
//! ota-tuf-client --metadata-url U --metadata-dir D refresh
//! ota-tuf-client --metadata-url U --metadata-dir D --target-name P [--target-name P2 ...] \
//!     --target-dir T --target-base-url TU download
//! ```
//! Exit 0 on complete success, 1 otherwise (including bad arguments). Downloads land at
//! `T/<url-quoted target path>`, the same path every time, written atomically once verified; a file already
//! there with the signed length and hashes is not fetched again.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use ota_tuf::{Client, ClientConfig, Limits};

#[derive(Parser)]
#[command(
    version,
    about = "TUF client (ota-tuf) with the conformance-suite command line"
)]
struct Cli {
    /// Directory of trusted metadata.
    #[arg(long, global = true)]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata.
    #[arg(long, global = true)]
    metadata_url: Option<String>,
    /// Target path to download (repeatable; downloaded in order, stopping at the first failure).
    #[arg(long = "target-name", global = true)]
    target_names: Vec<String>,
    /// Directory downloaded targets are stored in.
    #[arg(long, global = true)]
    target_dir: Option<PathBuf>,
    /// Base URL of the repository's targets.
    #[arg(long, global = true)]
    target_base_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trust this root (a valid self-signed root); no network.
    Init {
        /// The root metadata file to trust.
        trusted_root: PathBuf,
    },
    /// Update the top-level metadata (TUF client workflow).
    Refresh,
    /// Refresh, then download each --target-name into --target-dir.
    Download,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let metadata_dir = cli.metadata_dir.context("--metadata-dir is required")?;
    match cli.command {
        Command::Init { trusted_root } => {
            let bytes = ota_fs::read_bounded(&trusted_root, Limits::default().root_max)?;
            Client::init(&metadata_dir, &bytes)?;
        }
        Command::Refresh => {
            let url = cli.metadata_url.context("--metadata-url is required")?;
            let mut client = Client::load(&metadata_dir, ClientConfig::new(url, String::new()))?;
            client.refresh().await?;
        }
        Command::Download => {
            let url = cli.metadata_url.context("--metadata-url is required")?;
            let target_dir = cli.target_dir.context("--target-dir is required")?;
            let target_base = cli.target_base_url.context("--target-base-url is required")?;
            if cli.target_names.is_empty() {
                bail!("--target-name is required");
            }
            let mut client = Client::load(&metadata_dir, ClientConfig::new(url, target_base))?;
            client.refresh().await?;
            std::fs::create_dir_all(&target_dir)
                .with_context(|| format!("creating {}", target_dir.display()))?;
            for name in &cli.target_names {
                download(&mut client, name, &target_dir)
                    .await
                    .with_context(|| format!("target {name:?}"))?;
            }
        }
    }
    Ok(())
}

/// Downloads into memory (bounded by the signed length), then writes the checked bytes in one atomic
/// step, so the file at `path` is either the old one or the verified new one.
async fn download(client: &mut Client, name: &str, target_dir: &Path) -> anyhow::Result<()> {
    let Some(info) = client.target(name).await? else {
        bail!("not found in any trusted targets role")
    };
    let path = target_dir.join(ota_tuf::quote_name(name));
    if info.verify_local(&path)? {
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(info.length).unwrap_or(0));
    client.download_target(&info, &mut bytes).await?;
    ota_fs::write_atomic(&path, &bytes, 0o644)?;
    Ok(())
}
