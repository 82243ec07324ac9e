//! Command-line shell over the codec, used by scripts/bench-delta.sh to measure each side in its own
//! process: `ota-delta encode OLD NEW DELTA`, `ota-delta apply OLD DELTA NEW`, `ota-delta info DELTA`.
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Encode and apply ota-delta files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a delta from OLD to NEW.
    Encode {
        old: PathBuf,
        new: PathBuf,
        delta: PathBuf,
        /// xz preset 0..=9 (extreme variant).
        #[arg(long, default_value_t = 9)]
        level: u32,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Only this filter over every ELF file's code (none, x86, x86-rip, x86-full, arm64, arm64-page, arm,
        /// thumb); default: a sample of the pair picks among the plausible ones.
        #[arg(long)]
        filter: Option<String>,
        /// Print each stage to stderr.
        #[arg(long)]
        verbose: bool,
    },
    /// Apply DELTA to OLD, writing NEW (streamed, bounded memory).
    Apply {
        old: PathBuf,
        delta: PathBuf,
        new: PathBuf,
    },
    /// Print the header of DELTA.
    Info { delta: PathBuf },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Encode {
            old,
            new,
            delta,
            level,
            threads,
            filter,
            verbose,
        } => {
            let old_bytes = std::fs::read(&old).with_context(|| format!("reading {}", old.display()))?;
            let new_bytes = std::fs::read(&new).with_context(|| format!("reading {}", new.display()))?;
            let mut opts = ota_delta::EncodeOptions {
                level,
                ..Default::default()
            };
            if let Some(t) = threads {
                opts.threads = t;
            }
            if let Some(name) = filter {
                let f = ota_delta::Filter::ALL
                    .into_iter()
                    .find(|f| f.name() == name)
                    .with_context(|| {
                        let known: Vec<&str> = ota_delta::Filter::ALL.iter().map(|f| f.name()).collect();
                        format!("unknown filter {name:?} (known: {})", known.join(", "))
                    })?;
                opts.filters = ota_delta::FilterChoice::Only(vec![f]);
            }
            let start = Instant::now();
            let report = move |stage: ota_delta::EncodeStage| {
                if verbose {
                    eprintln!("[{:7.2}s] {stage:?}", start.elapsed().as_secs_f64());
                }
            };
            let bytes = ota_delta::encode_owned(old_bytes, new_bytes, &opts, &report)?;
            std::fs::write(&delta, &bytes).with_context(|| format!("writing {}", delta.display()))?;
            let header = ota_delta::read_header(bytes.as_slice())?;
            println!("{} bytes, filter {}", bytes.len(), header.filter);
        }
        Command::Apply { old, delta, new } => {
            let old_file = File::open(&old).with_context(|| format!("opening {}", old.display()))?;
            let delta_file = File::open(&delta).with_context(|| format!("opening {}", delta.display()))?;
            let new_file = File::create(&new).with_context(|| format!("creating {}", new.display()))?;
            let summary = ota_delta::apply(
                BufReader::new(old_file),
                BufReader::new(delta_file),
                BufWriter::new(new_file),
            )?;
            println!(
                "{} bytes written in {} segments",
                summary.new_len, summary.segments
            );
        }
        Command::Info { delta } => {
            let file = File::open(&delta).with_context(|| format!("opening {}", delta.display()))?;
            println!("{:#?}", ota_delta::read_header(BufReader::new(file))?);
        }
    }
    Ok(())
}
