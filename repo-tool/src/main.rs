//! repo-tool command line: parses flags and calls the `ota_publish` library; see its crate doc.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ota_delta::EncodeStage;
use ota_publish::deltas::{add_with_deltas, DeltaPolicy};
use ota_publish::{Expiries, KeyRing};

#[derive(Parser)]
#[command(
    name = "repo-tool",
    version,
    about = "Build and maintain a TUF repository of firmware releases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
struct SigningKeys {
    /// A private key file (PKCS#8) to sign with; repeat for several.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// A directory whose *.pk8 private keys may all be used to sign.
    #[arg(long = "keys-dir", value_name = "DIR")]
    keys_dir: Option<PathBuf>,
}

impl SigningKeys {
    fn load(&self) -> Result<KeyRing> {
        let mut ring = KeyRing::from_files(&self.keys)?;
        if let Some(d) = &self.keys_dir {
            ring.extend(KeyRing::from_dir(d)?);
        }
        Ok(ring)
    }
}

#[derive(Args, Clone)]
struct Lifetimes {
    /// Lifetime of root metadata signed by this command (e.g. 365d).
    #[arg(long, default_value = "365d", value_parser = lifetime)]
    root_expires: jiff::SignedDuration,
    /// Lifetime of targets metadata (top-level and delegated).
    #[arg(long, default_value = "90d", value_parser = lifetime)]
    targets_expires: jiff::SignedDuration,
    /// Lifetime of snapshot metadata.
    #[arg(long, default_value = "7d", value_parser = lifetime)]
    snapshot_expires: jiff::SignedDuration,
    /// Lifetime of timestamp metadata.
    #[arg(long, default_value = "1d", value_parser = lifetime)]
    timestamp_expires: jiff::SignedDuration,
}

impl Lifetimes {
    fn expiries(&self) -> Expiries {
        Expiries {
            root: self.root_expires,
            targets: self.targets_expires,
            snapshot: self.snapshot_expires,
            timestamp: self.timestamp_expires,
        }
    }
}

fn lifetime(s: &str) -> std::result::Result<jiff::SignedDuration, String> {
    ota_publish::parse_lifetime(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create a new repository and print its root fingerprint (text and QR code).
    Init {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Public (or private) key files of the root role.
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        /// Signatures needed for root.
        #[arg(long, default_value_t = 1)]
        root_threshold: u64,
        /// Key files of the targets role.
        #[arg(long = "targets-key", required = true)]
        targets_keys: Vec<PathBuf>,
        /// Signatures needed for targets.
        #[arg(long, default_value_t = 1)]
        targets_threshold: u64,
        /// Key files of the snapshot role.
        #[arg(long = "snapshot-key", required = true)]
        snapshot_keys: Vec<PathBuf>,
        /// Signatures needed for snapshot.
        #[arg(long, default_value_t = 1)]
        snapshot_threshold: u64,
        /// Key files of the timestamp role.
        #[arg(long = "timestamp-key", required = true)]
        timestamp_keys: Vec<PathBuf>,
        /// Signatures needed for timestamp.
        #[arg(long, default_value_t = 1)]
        timestamp_threshold: u64,
        /// Do not print the QR code.
        #[arg(long)]
        no_qr: bool,
        #[command(flatten)]
        lifetimes: Lifetimes,
        #[command(flatten)]
        signing: SigningKeys,
    },
    /// Publish firmware images (one with --image and --version, or a directory with --dir).
    Add {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The image file.
        #[arg(
            long,
            conflicts_with = "dir",
            required_unless_present = "dir",
            requires = "version"
        )]
        image: Option<PathBuf>,
        /// The image's semantic version.
        #[arg(long)]
        version: Option<String>,
        /// Publish every file of this directory; names must be <name>-<semver>[.<ext>].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Compatible hardware id; repeat for several.
        #[arg(long = "hardware", required = true)]
        hardware: Vec<String>,
        /// Release channel.
        #[arg(long)]
        channel: String,
        /// Percent of the fleet offered the release.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
        rollout: u8,
        /// Target name; only with --image. Default: <hardware>/<channel>/<basename> when the image's
        /// file name carries the version (e.g. fw-1.2.0.bin; always so with --dir), else
        /// <hardware>/<channel>/<version>/<basename>.
        #[arg(long, conflicts_with = "dir")]
        name: Option<String>,
        /// Add into this delegated role (at any depth of the delegation tree) instead of top-level targets.
        #[arg(long)]
        role: Option<String>,
        /// Build deltas to each new release from this many of the newest older releases of the same
        /// hardware id and channel (0: none).
        #[arg(long = "deltas", default_value_t = 2)]
        deltas: usize,
        /// Keep a delta only if smaller than this percentage of the full image.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
        delta_max_share: u8,
        /// Build no deltas for images smaller than this many bytes (a small image is fetched in
        /// about one round trip anyway).
        #[arg(long, value_name = "BYTES", default_value_t = DeltaPolicy::DEFAULT_MIN_IMAGE_LEN)]
        delta_min_image: u64,
        /// Do not publish: write the target files and the role's next version, signed with the
        /// role's keys given (maybe fewer than its threshold), to this new file; its key holders then
        /// run `repo-tool role sign`, and `repo-tool role publish` publishes it.
        #[arg(long, value_name = "FILE")]
        stage: Option<PathBuf>,
        #[command(flatten)]
        lifetimes: Lifetimes,
        #[command(flatten)]
        signing: SigningKeys,
    },
    /// Re-sign timestamp (and snapshot with --snapshot) with a new expiry: run it from cron.
    Refresh {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Re-sign snapshot too.
        #[arg(long)]
        snapshot: bool,
        #[command(flatten)]
        lifetimes: Lifetimes,
        #[command(flatten)]
        signing: SigningKeys,
    },
    /// Delegate path patterns to a new targets role with its own keys.
    Delegate {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The new role's name.
        #[arg(long)]
        role: String,
        /// Delegate from this role (a delegated role, signed with its keys) instead of top-level
        /// targets; the new role's patterns must lie inside this role's.
        #[arg(long, default_value = "targets")]
        from: String,
        /// Path pattern (`*` and `?` within one segment), e.g. gw-a/*/*/*; repeat for several.
        #[arg(long = "path", required = true)]
        paths: Vec<String>,
        /// Key files of the new role.
        #[arg(long = "role-key", required = true)]
        role_keys: Vec<PathBuf>,
        /// Signatures needed for the new role.
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// Stop the search at this role for matching targets.
        #[arg(long)]
        terminating: bool,
        /// Do not publish: write the delegating role's next version and the new role's first one,
        /// signed with the keys given (maybe fewer than their thresholds), to this new file; see
        /// `repo-tool role sign` and `repo-tool role publish`.
        #[arg(long, value_name = "FILE")]
        stage: Option<PathBuf>,
        #[command(flatten)]
        lifetimes: Lifetimes,
        #[command(flatten)]
        signing: SigningKeys,
    },
    /// Root rotation and key revocation, signed in steps by the holders of the root keys.
    Root {
        #[command(subcommand)]
        command: RootCommand,
    },
    /// Targets roles (top-level or delegated) signed in steps: sign and publish a file staged by
    /// `add --stage` or `delegate --stage`.
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// Check the repository as a client would; non-zero exit on any problem.
    Verify {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Warn about metadata expiring within this time.
        #[arg(long, default_value = "12h", value_parser = lifetime)]
        warn_within: jiff::SignedDuration,
    },
    /// Releases per hardware id and channel, and each role's version and expiry.
    List {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate ed25519 keys: DIR/NAME.pk8 (private, 0600) and DIR/NAME.pub.json. Never overwrites.
    Generate {
        /// Directory for the key files.
        #[arg(long)]
        dir: PathBuf,
        /// Key names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RootCommand {
    /// Write the next root version, unsigned, to --out.
    Stage {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The staged root file to create.
        #[arg(long)]
        out: PathBuf,
        /// ROLE=KEYFILE: add a key to a top-level role.
        #[arg(long = "add-key")]
        add_keys: Vec<String>,
        /// ROLE=KEYID: remove (revoke) a key from a role.
        #[arg(long = "remove-key")]
        remove_keys: Vec<String>,
        /// ROLE=N: set a role's threshold.
        #[arg(long = "threshold")]
        thresholds: Vec<String>,
        #[command(flatten)]
        lifetimes: Lifetimes,
    },
    /// Sign a staged root with the root keys you hold, then pass the file on.
    Sign {
        /// The staged root file.
        staged: PathBuf,
        /// The repository (lets keys of the current root sign, and shows both thresholds).
        #[arg(long)]
        repo: Option<PathBuf>,
        #[command(flatten)]
        signing: SigningKeys,
    },
    /// Publish a staged root once the current and the new root thresholds are met.
    Publish {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The staged root file.
        staged: PathBuf,
        #[command(flatten)]
        lifetimes: Lifetimes,
        #[command(flatten)]
        signing: SigningKeys,
    },
}

#[derive(Subcommand)]
enum RoleCommand {
    /// Sign a staged role file with the role keys you hold, then pass the file on.
    Sign {
        /// The staged role file.
        #[arg(long)]
        file: PathBuf,
        /// The repository (checks against the role's current keys and threshold; without it, those
        /// recorded in the file when it was staged).
        #[arg(long)]
        repo: Option<PathBuf>,
        #[command(flatten)]
        signing: SigningKeys,
    },
    /// Publish a staged role file once each staged role's threshold is met; needs the snapshot and
    /// timestamp keys.
    Publish {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The staged role file.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        lifetimes: Lifetimes,
        #[command(flatten)]
        signing: SigningKeys,
    },
}

fn role_spec(paths: &[PathBuf], threshold: u64) -> Result<ota_publish::RoleSpec> {
    let keys = paths
        .iter()
        .map(|p| ota_publish::read_public_key(p))
        .collect::<ota_publish::Result<Vec<_>>>()?;
    Ok(ota_publish::RoleSpec { keys, threshold })
}

fn split_pair<'a>(flag: &str, s: &'a str) -> Result<(ota_publish::RoleType, &'a str)> {
    let Some((role, value)) = s.split_once('=') else {
        bail!("--{flag} {s:?}: expected ROLE=VALUE, e.g. timestamp=keys/ts2.pub.json");
    };
    Ok((ota_publish::parse_role(role)?, value))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keys {
            command: KeysCommand::Generate { dir, names },
        } => {
            for name in names {
                let k = ota_publish::generate_key(&dir, &name)?;
                println!("{name}\t{}\t{}", k.keyid, k.private_path.display());
            }
        }
        Command::Init {
            repo,
            root_keys,
            root_threshold,
            targets_keys,
            targets_threshold,
            snapshot_keys,
            snapshot_threshold,
            timestamp_keys,
            timestamp_threshold,
            no_qr,
            lifetimes,
            signing,
        } => {
            let spec = ota_publish::InitSpec {
                root: role_spec(&root_keys, root_threshold)?,
                targets: role_spec(&targets_keys, targets_threshold)?,
                snapshot: role_spec(&snapshot_keys, snapshot_threshold)?,
                timestamp: role_spec(&timestamp_keys, timestamp_threshold)?,
                expiries: lifetimes.expiries(),
            };
            let fp = ota_publish::init(&repo, &spec, &signing.load()?)?;
            println!("created {}", repo.display());
            println!("root fingerprint (sha256 of {}):", fp.path.display());
            println!("{}", fp.sha256);
            if !no_qr {
                println!("{}", ota_publish::qr_for_terminal(&fp.sha256)?);
            }
        }
        Command::Add {
            repo,
            image,
            version,
            dir,
            hardware,
            channel,
            rollout,
            name,
            role,
            deltas,
            delta_max_share,
            delta_min_image,
            stage,
            lifetimes,
            signing,
        } => {
            let releases = match (image, dir) {
                (Some(image), None) => vec![ota_publish::ReleaseSpec {
                    image,
                    version: version.context("--version is required with --image")?,
                    hardware,
                    channel,
                    rollout_percent: rollout,
                    name,
                }],
                (None, Some(dir)) => ota_publish::releases_in_dir(&dir, &hardware, &channel, rollout)?,
                _ => bail!("give exactly one of --image or --dir"),
            };
            let opts = ota_publish::AddOptions {
                role,
                expiries: lifetimes.expiries(),
                stage: stage.clone(),
            };
            let policy = DeltaPolicy {
                keep: deltas,
                max_share_percent: delta_max_share,
                min_image_len: delta_min_image,
            };
            let report = add_with_deltas(
                &repo,
                &releases,
                &opts,
                &signing.load()?,
                &policy,
                &mut encode_delta_with_progress_bar,
            )?;
            for s in &report.skipped {
                println!(
                    "not kept: delta from {} for {} ({} bytes, not under {delta_max_share}% of {} bytes)",
                    s.base_version, s.release_target, s.delta_len, s.image_len
                );
            }
            let report = report.add;
            // One write for all lines, not one per line (a bulk add reports 10,000 targets).
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for (name, sha, len) in &report.added {
                writeln!(out, "added {name} ({len} bytes, sha256 {sha})")?;
            }
            match (&report.staged, &stage) {
                (Some(s), Some(file)) => print_staged(&mut out, std::slice::from_ref(s), file)?,
                _ => writeln!(out, "{} version {} published", report.role, report.role_version)?,
            }
            out.flush()?;
        }
        Command::Refresh {
            repo,
            snapshot,
            lifetimes,
            signing,
        } => {
            let opts = ota_publish::RefreshOptions {
                snapshot,
                expiries: lifetimes.expiries(),
            };
            ota_publish::refresh(&repo, &opts, &signing.load()?)?;
            println!("refreshed {}", repo.display());
        }
        Command::Delegate {
            repo,
            role,
            from,
            paths,
            role_keys,
            threshold,
            terminating,
            stage,
            lifetimes,
            signing,
        } => {
            let spec = ota_publish::DelegateSpec {
                role: role.clone(),
                paths,
                keys: role_spec(&role_keys, threshold)?,
                terminating,
            };
            match stage {
                Some(file) => {
                    let status = ota_publish::delegate_stage(
                        &repo,
                        &from,
                        &spec,
                        &lifetimes.expiries(),
                        &signing.load()?,
                        &file,
                    )?;
                    print_staged(&mut std::io::stdout().lock(), &status, &file)?;
                }
                None => {
                    ota_publish::delegate_from(&repo, &from, &spec, &lifetimes.expiries(), &signing.load()?)?;
                    println!("delegated to role {role} from {from}");
                }
            }
        }
        Command::Root { command } => root_command(command)?,
        Command::Role { command } => role_command(command)?,
        Command::Verify { repo, warn_within } => {
            let now = ota_publish::whole_seconds(jiff::Timestamp::now())?;
            let report = ota_publish::verify(&repo, now, warn_within)?;
            for w in &report.warnings {
                println!("warning: {w}");
            }
            for p in &report.problems {
                println!("problem: {p}");
            }
            if !report.is_ok() {
                bail!("{} problem(s) found in {}", report.problems.len(), repo.display());
            }
            println!(
                "ok: {} root version(s), {} target file(s) checked",
                report.root_versions, report.targets_checked
            );
        }
        Command::List { repo } => print_listing(&repo)?,
    }
    Ok(())
}

fn root_command(command: RootCommand) -> Result<()> {
    match command {
        RootCommand::Stage {
            repo,
            out,
            add_keys,
            remove_keys,
            thresholds,
            lifetimes,
        } => {
            let mut change = ota_publish::RootChange {
                expiries: lifetimes.expiries(),
                ..Default::default()
            };
            for s in &add_keys {
                let (role, path) = split_pair("add-key", s)?;
                change
                    .add_keys
                    .push((role, ota_publish::read_public_key(Path::new(path))?));
            }
            for s in &remove_keys {
                let (role, id) = split_pair("remove-key", s)?;
                change.remove_keys.push((role, id.to_owned()));
            }
            for s in &thresholds {
                let (role, n) = split_pair("threshold", s)?;
                let n: u64 = n
                    .parse()
                    .with_context(|| format!("--threshold {s:?}: not a number"))?;
                change.thresholds.push((role, n));
            }
            let v = ota_publish::root_stage(&repo, &change, &out)?;
            println!(
                "staged root version {v} in {}; sign it with `repo-tool root sign`",
                out.display()
            );
        }
        RootCommand::Sign {
            staged,
            repo,
            signing,
        } => {
            let s = ota_publish::root_sign(&staged, repo.as_deref(), &signing.load()?)?;
            println!(
                "root version {}: {}/{} signatures of the new root's keys",
                s.version, s.new_root.0, s.new_root.1
            );
            if let Some((n, t)) = s.current_root {
                println!(
                    "root version {}: {n}/{t} signatures of the current root's keys",
                    s.version
                );
            }
        }
        RootCommand::Publish {
            repo,
            staged,
            lifetimes,
            signing,
        } => {
            let v = ota_publish::root_publish(&repo, &staged, &lifetimes.expiries(), &signing.load()?)?;
            println!("published root version {v}");
        }
    }
    Ok(())
}

fn role_command(command: RoleCommand) -> Result<()> {
    match command {
        RoleCommand::Sign { file, repo, signing } => {
            let status = ota_publish::role_sign(&file, repo.as_deref(), &signing.load()?)?;
            for s in &status {
                println!(
                    "role {} version {}: {} of {} signature(s) present{}",
                    s.role,
                    s.version,
                    s.present,
                    s.threshold,
                    if s.present >= s.threshold {
                        "; ready for `repo-tool role publish`"
                    } else {
                        ""
                    }
                );
            }
        }
        RoleCommand::Publish {
            repo,
            file,
            lifetimes,
            signing,
        } => {
            for s in ota_publish::role_publish(&repo, &file, &lifetimes.expiries(), &signing.load()?)? {
                println!(
                    "published role {} version {} ({} of {} signatures)",
                    s.role, s.version, s.present, s.threshold
                );
            }
        }
    }
    Ok(())
}

/// What a staging command tells the user: each staged role's signatures and the next steps.
fn print_staged(out: &mut impl Write, status: &[ota_publish::RoleSignatures], file: &Path) -> Result<()> {
    for s in status {
        writeln!(
            out,
            "staged role {} version {} in {}: {} of {} signature(s) present",
            s.role,
            s.version,
            file.display(),
            s.present,
            s.threshold
        )?;
    }
    writeln!(
        out,
        "next: each key holder runs `repo-tool role sign --file {0} --key KEY`, then \
         `repo-tool role publish --repo REPO --file {0}` with the snapshot and timestamp keys",
        file.display()
    )?;
    Ok(())
}

/// The production delta encoder (`ota_delta`), with a progress bar on stderr; indicatif hides it
/// when stderr is not a terminal.
fn encode_delta_with_progress_bar(old: &[u8], new: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] delta {pos}/{len} candidates: {msg}")
            .map_err(|e| e.to_string())?;
    bar.set_style(style);
    bar.set_message(format!("{} -> {} bytes", old.len(), new.len()));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let progress = |stage: EncodeStage| match stage {
        EncodeStage::Candidate { count, .. } => bar.set_length(u64::try_from(count).unwrap_or(u64::MAX)),
        EncodeStage::Indexing(f) => bar.set_message(format!("{f}: indexing the old image")),
        EncodeStage::Matching(f) => bar.set_message(format!("{f}: matching")),
        EncodeStage::Compressing(f) => bar.set_message(format!("{f}: compressing")),
        EncodeStage::Finished { filter, delta_len } => {
            bar.inc(1);
            bar.set_message(format!("{filter}: {delta_len} bytes"));
        }
        _ => {}
    };
    let result = ota_delta::encode_with_progress(old, new, &ota_delta::EncodeOptions::default(), &progress);
    bar.finish_and_clear();
    result.map_err(|e| e.to_string())
}

fn print_listing(repo: &Path) -> Result<()> {
    let listing = ota_publish::list(repo)?;
    println!("{:<12} {:>8}  expires", "role", "version");
    for (role, version, expires) in &listing.roles {
        println!("{role:<12} {version:>8}  {expires}");
    }
    for ((hw, channel), releases) in &listing.releases {
        println!("\n{hw} / {channel}:");
        for r in releases {
            println!(
                "  {:<16} {:>4}%  {:>12} bytes  {}  (role {})",
                r.version.to_string(),
                r.rollout_percent,
                r.length,
                r.target,
                r.role
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors already name their cause; `{e}` avoids printing it twice.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
