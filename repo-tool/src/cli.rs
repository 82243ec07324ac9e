//! The command line's clap definitions and the flags' small conversions (keys to load, lifetimes);
//! running and printing each command lives in its group's module.

use std::path::PathBuf;

use anyhow::Result;
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use ota_publish::deltas::DeltaPolicy;
use ota_publish::{Expiries, KeyAlgorithm, KeyRef, KeyRing, Pkcs11Uri};

/// Exit status when the command ran to its end (for `verify`: found no problem).
pub const EXIT_OK: u8 = 0;
/// Exit status when `verify` ran and found problems in the repository.
pub const EXIT_PROBLEMS_FOUND: u8 = 1;
/// Exit status when the command could not run: bad usage (clap's own exit status for usage errors
/// is also 2), a missing or unreadable repository, missing keys, a refused change.
pub const EXIT_COULD_NOT_RUN: u8 = 2;

/// The exit statuses as `--help` documents them; scripts rely on them, so they stay as they are.
const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success (verify: no problem found)
  1  verify found problems in the repository (each printed as `problem: ...`)
  2  could not run: usage error, missing or unreadable repository or key, refused change";

#[derive(Parser)]
#[command(
    name = "repo-tool",
    version,
    about = "Build and maintain a TUF repository of firmware releases",
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone, Default)]
pub struct SigningKeys {
    /// A private key to sign with: a PKCS#8 file, or a key in a PKCS#11 token as an RFC 7512 URI
    /// (`pkcs11:token=LABEL;object=KEY?pin-source=PINFILE`; the PIN from that file, mode 0600, or
    /// from $OTA_PKCS11_PIN, never from the command line); repeat for several.
    #[arg(long = "key", value_name = "FILE|PKCS11-URI", value_parser = NoEcho::<KeyRef>::new())]
    pub keys: Vec<KeyRef>,
    /// A directory whose *.pk8 private keys may all be used to sign.
    #[arg(long = "keys-dir", value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    #[command(flatten)]
    pub module: Pkcs11Module,
}

/// The PKCS#11 module for `pkcs11:` keys whose URI has no `module-path`.
#[derive(Args, Clone, Default)]
pub struct Pkcs11Module {
    /// The PKCS#11 module (a shared library, loaded at run time) for `pkcs11:` URIs without
    /// module-path, e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long = "pkcs11-module", value_name = "MODULE", env = "OTA_PKCS11_MODULE")]
    pub path: Option<PathBuf>,
}

impl SigningKeys {
    pub fn load(&self) -> Result<KeyRing> {
        let mut ring = KeyRing::from_refs(&self.keys, self.module.path.as_deref())?;
        if let Some(d) = &self.keys_dir {
            ring.extend(KeyRing::from_dir(d)?);
        }
        Ok(ring)
    }
}

#[derive(Args, Clone)]
pub struct Lifetimes {
    /// Lifetime of root metadata signed by this command (e.g. 365d).
    #[arg(long, default_value = "365d", value_parser = lifetime)]
    pub root_expires: jiff::SignedDuration,
    /// Lifetime of targets metadata (top-level and delegated).
    #[arg(long, default_value = "90d", value_parser = lifetime)]
    pub targets_expires: jiff::SignedDuration,
    /// Lifetime of snapshot metadata.
    #[arg(long, default_value = "7d", value_parser = lifetime)]
    pub snapshot_expires: jiff::SignedDuration,
    /// Lifetime of timestamp metadata.
    #[arg(long, default_value = "1d", value_parser = lifetime)]
    pub timestamp_expires: jiff::SignedDuration,
}

impl Lifetimes {
    pub fn expiries(&self) -> Expiries {
        Expiries {
            root: self.root_expires,
            targets: self.targets_expires,
            snapshot: self.snapshot_expires,
            timestamp: self.timestamp_expires,
        }
    }
}

/// Parses a value with its `FromStr` without echoing the value in the error: a refused `pkcs11:`
/// URI may hold a PIN (`pin-value`), which must not be copied to stderr and logs.
#[derive(Clone)]
pub struct NoEcho<T>(std::marker::PhantomData<T>);

impl<T> NoEcho<T> {
    pub fn new() -> NoEcho<T> {
        NoEcho(std::marker::PhantomData)
    }
}

impl<T> clap::builder::TypedValueParser for NoEcho<T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<T, clap::Error> {
        let name = arg.map(|a| a.to_string()).unwrap_or_default();
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{name}: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refuse("not UTF-8".into()))?;
        text.parse().map_err(|e: T::Err| refuse(e.to_string()))
    }
}

/// `completions` and `man`: generated from these definitions, so they match the flags accepted.
pub fn print_docs(command: &Command) -> Result<()> {
    use clap::CommandFactory as _;
    let mut cli = Cli::command();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "repo-tool", &mut std::io::stdout());
        }
        _ => clap_mangen::Man::new(cli).render(&mut std::io::stdout())?,
    }
    Ok(())
}

fn lifetime(s: &str) -> std::result::Result<jiff::SignedDuration, String> {
    ota_publish::parse_lifetime(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
pub enum Command {
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create a new repository and print its root fingerprint (text and QR code).
    Init(InitArgs),
    /// Publish firmware images (one with --image and --version, or a directory with --dir).
    Add(AddArgs),
    /// Re-sign timestamp (and snapshot with --snapshot) with a new expiry: run it from cron.
    Refresh(RefreshArgs),
    /// Delegate path patterns to a new targets role with its own keys.
    Delegate(DelegateArgs),
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
    /// Check the repository as a client would, and that every file under targets/ is named by signed
    /// metadata (see `gc`); exit status 1 on any problem found, 2 if it could not be checked.
    #[command(after_help = EXIT_STATUS_HELP)]
    Verify(VerifyArgs),
    /// Remove files under targets/ that no signed targets metadata names (left by an interrupted
    /// add or an abandoned stage); files a pending `add --stage` wrote are kept.
    Gc(GcArgs),
    /// Staged rollouts: the rollout-control role (its own online key) halts, resumes, pulls, speeds
    /// up and drills releases; never needs the targets or root key after `init`.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Copy the repository to an S3 bucket (or any object store): only the objects the bucket lacks,
    /// target files first, timestamp.json last, with CDN cache headers.
    #[command(after_help = PUBLISH_HELP)]
    Publish(PublishArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    #[command(hide = true)]
    Man,
    /// Releases per hardware id and channel (with their waves and rollout-control state), and each
    /// role's version and expiry.
    List {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Print one JSON object instead of text (fields in the README).
        #[arg(long)]
        json: bool,
    },
    /// Write an offline bundle: one file holding a release (its image, optionally deltas from named
    /// base versions, the rollout-control file) and the signed metadata a device needs to verify it
    /// (`device-agent install --bundle FILE`). Valid until the repository's timestamp expires.
    Bundle(BundleArgs),
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Generate ed25519 keys: DIR/NAME.pk8 (private, 0600) and DIR/NAME.pub.json. Never overwrites.
    Generate {
        /// Directory for the key files.
        #[arg(long)]
        dir: PathBuf,
        /// Key names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Generate a key pair inside a PKCS#11 token (never extractable) and write its public key to
    /// DIR/NAME.pub.json, for `init --root-key` or `root stage --add-key`; sign with `--key URI`.
    GenerateInToken {
        /// The key's URI: token and object label (and id), e.g.
        /// `pkcs11:token=ota-root;object=root-1?pin-source=/path/pin`.
        #[arg(long, value_name = "PKCS11-URI", value_parser = NoEcho::<Pkcs11Uri>::new().map(Box::new))]
        uri: Box<Pkcs11Uri>,
        /// ecdsa-p256 (TUF ecdsa-sha2-nistp256; HSMs, secure elements, TPMs) or ed25519.
        #[arg(long, default_value = "ecdsa-p256")]
        algorithm: KeyAlgorithm,
        /// Directory for the public key file.
        #[arg(long)]
        dir: PathBuf,
        /// Name of the public key file (NAME.pub.json).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        module: Pkcs11Module,
    },
}

#[derive(Subcommand)]
pub enum RootCommand {
    /// Write the next root version, unsigned, to --out.
    Stage {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The staged root file to create.
        #[arg(long)]
        out: PathBuf,
        /// ROLE=KEYFILE (or ROLE=pkcs11:URI, read from the token): add a key to a top-level role.
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
pub enum RoleCommand {
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

#[derive(Args)]
pub struct InitArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Keys of the root role: public or private key files, or `pkcs11:` URIs of token keys.
    #[arg(long = "root-key", required = true, value_parser = NoEcho::<KeyRef>::new())]
    pub root_keys: Vec<KeyRef>,
    /// Signatures needed for root.
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u64,
    /// Key files of the targets role.
    #[arg(long = "targets-key", required = true, value_parser = NoEcho::<KeyRef>::new())]
    pub targets_keys: Vec<KeyRef>,
    /// Signatures needed for targets.
    #[arg(long, default_value_t = 1)]
    pub targets_threshold: u64,
    /// Key files of the snapshot role.
    #[arg(long = "snapshot-key", required = true, value_parser = NoEcho::<KeyRef>::new())]
    pub snapshot_keys: Vec<KeyRef>,
    /// Signatures needed for snapshot.
    #[arg(long, default_value_t = 1)]
    pub snapshot_threshold: u64,
    /// Key files of the timestamp role.
    #[arg(long = "timestamp-key", required = true, value_parser = NoEcho::<KeyRef>::new())]
    pub timestamp_keys: Vec<KeyRef>,
    /// Signatures needed for timestamp.
    #[arg(long, default_value_t = 1)]
    pub timestamp_threshold: u64,
    /// Do not print the QR code.
    #[arg(long)]
    pub no_qr: bool,
    #[command(flatten)]
    pub lifetimes: Lifetimes,
    #[command(flatten)]
    pub signing: SigningKeys,
}

#[derive(Args)]
pub struct AddArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// The image file.
    #[arg(
        long,
        conflicts_with = "dir",
        required_unless_present = "dir",
        requires = "version"
    )]
    pub image: Option<PathBuf>,
    /// The image's semantic version.
    #[arg(long)]
    pub version: Option<String>,
    /// Publish every file of this directory; names must be <name>-<semver>[.<ext>].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Compatible hardware id; repeat for several.
    #[arg(long = "hardware", required = true)]
    pub hardware: Vec<String>,
    /// Release channel.
    #[arg(long)]
    pub channel: String,
    /// Percent of the fleet offered the release.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rollout: u8,
    /// Target name; only with --image. Default: <hardware>/<channel>/<basename> when the image's
    /// file name carries the version (e.g. fw-1.2.0.bin; always so with --dir), else
    /// <hardware>/<channel>/<version>/<basename>.
    #[arg(long, conflicts_with = "dir")]
    pub name: Option<String>,
    /// Add into this delegated role (at any depth of the delegation tree) instead of top-level targets.
    #[arg(long)]
    pub role: Option<String>,
    /// Build deltas to each new release from this many of the newest older releases of the same
    /// hardware id and channel (0: none).
    #[arg(long = "deltas", default_value_t = 2)]
    pub deltas: usize,
    /// Keep a delta only if smaller than this percentage of the full image.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub delta_max_share: u8,
    /// Build no deltas for images smaller than this many bytes (a small image is fetched in
    /// about one round trip anyway).
    #[arg(long, value_name = "BYTES", default_value_t = DeltaPolicy::DEFAULT_MIN_IMAGE_LEN)]
    pub delta_min_image: u64,
    /// Do not publish: write the target files and the role's next version, signed with the
    /// role's keys given (maybe fewer than its threshold), to this new file; its key holders then
    /// run `repo-tool role sign`, and `repo-tool role publish` publishes it.
    #[arg(long, value_name = "FILE")]
    pub stage: Option<PathBuf>,
    /// Publish a version not above the newest already published for the same hardware id and
    /// channel (a hotfix branch); refused without it.
    #[arg(long)]
    pub allow_lower: bool,
    /// Rollout waves, counted from publication: `default` (1% at once, 10% after 1d, 50% after 3d,
    /// everyone after 7d, spread over 1d), `now` (everyone at once), or SHARE@WHEN items, WHEN an
    /// offset (0, 90s, 30m, 6h, 1d) or an RFC 3339 UTC time, then optionally spread=DURATION for the
    /// last wave: e.g. 1%@0,10%@1d,100%@3d,spread=12h.
    #[arg(long, value_name = "SPEC", default_value = "default", value_parser = waves_spec)]
    pub waves: ota_publish::WavesSpec,
    #[command(flatten)]
    pub lifetimes: Lifetimes,
    #[command(flatten)]
    pub signing: SigningKeys,
    /// Print one JSON object instead of text (fields in the README).
    #[arg(long)]
    pub json: bool,
}

fn waves_spec(s: &str) -> std::result::Result<ota_publish::WavesSpec, String> {
    s.parse().map_err(|e: ota_publish::Error| e.to_string())
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Create the rollout-control role (once): top-level targets delegates rollouts/*/*.json, and
    /// nothing else, to it. Signed with the targets key (and snapshot and timestamp keys).
    Init(RolloutInitArgs),
    /// Halt a release's rollout: devices that have not installed it do not start it.
    Halt(RolloutStateArgs),
    /// Resume a halted (or pulled) release's rollout by its plan.
    Resume(RolloutStateArgs),
    /// Withdraw a release: devices running it go back to the newest release not pulled.
    Pull(RolloutStateArgs),
    /// Replace a release's plan with --waves, counted from now (speed up or slow down); a halted
    /// or pulled release stays so until `resume`.
    Start(RolloutStartArgs),
    /// Add a field drill: a cohort installs the release in trial mode and rolls back on purpose.
    Drill(RolloutDrillArgs),
    /// Where each release's rollout stands (and one device's place in it with --device-id).
    Status(RolloutStatusArgs),
}

#[derive(Args)]
pub struct RolloutInitArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Key file (public, or private: then it also signs the role's first version) of the
    /// rollout-control role; repeat for several.
    #[arg(
        long = "control-key",
        required = true,
        value_name = "FILE|PKCS11-URI",
        value_parser = NoEcho::<KeyRef>::new()
    )]
    pub control_keys: Vec<KeyRef>,
    /// Signatures needed for the rollout-control role.
    #[arg(long, default_value_t = 1)]
    pub threshold: u64,
    #[command(flatten)]
    pub lifetimes: Lifetimes,
    #[command(flatten)]
    pub signing: SigningKeys,
}

/// The release a rollout command is about.
#[derive(Args)]
pub struct RolloutRelease {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Hardware id.
    #[arg(long)]
    pub hardware: String,
    /// Channel.
    #[arg(long)]
    pub channel: String,
    /// The release's version (the repository must offer it for that hardware id and channel).
    #[arg(long)]
    pub version: String,
}

#[derive(Args)]
pub struct RolloutStateArgs {
    #[command(flatten)]
    pub release: RolloutRelease,
    /// Why (shown by `status`, kept in the signed file; at most 256 bytes).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub lifetimes: Lifetimes,
    #[command(flatten)]
    pub signing: SigningKeys,
}

#[derive(Args)]
pub struct RolloutStartArgs {
    #[command(flatten)]
    pub release: RolloutRelease,
    /// The replacement plan, counted from now (same SPEC as `add --waves`).
    #[arg(long, value_name = "SPEC", value_parser = waves_spec)]
    pub waves: ota_publish::WavesSpec,
    #[command(flatten)]
    pub lifetimes: Lifetimes,
    #[command(flatten)]
    pub signing: SigningKeys,
}

#[derive(Args)]
pub struct RolloutDrillArgs {
    #[command(flatten)]
    pub release: RolloutRelease,
    /// The drill's name, reported back by the devices; a drill of the same name is replaced.
    #[arg(long)]
    pub id: String,
    /// The cohort: these device ids (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "share",
        conflicts_with = "share"
    )]
    pub devices: Vec<String>,
    /// The cohort: this share of the hardware id and channel's devices (e.g. 1% or 0.5%), by seed.
    #[arg(long)]
    pub share: Option<String>,
    /// When the drill ends: an RFC 3339 UTC time, or a duration from now (90s, 30m, 6h, 1d).
    #[arg(long)]
    pub until: String,
    #[command(flatten)]
    pub lifetimes: Lifetimes,
    #[command(flatten)]
    pub signing: SigningKeys,
}

#[derive(Args)]
pub struct RolloutStatusArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Only this hardware id.
    #[arg(long)]
    pub hardware: Option<String>,
    /// Only this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Also show this device's seed, wave, eligible time and standing in each release.
    #[arg(long)]
    pub device_id: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RefreshArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Re-sign snapshot too.
    #[arg(long)]
    pub snapshot: bool,
    #[command(flatten)]
    pub lifetimes: Lifetimes,
    #[command(flatten)]
    pub signing: SigningKeys,
}

#[derive(Args)]
pub struct DelegateArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// The new role's name (with --hash-bins: the bins' name prefix, bins are <role>-<hex>).
    #[arg(long)]
    pub role: String,
    /// Delegate from this role (a delegated role, signed with its keys) instead of top-level
    /// targets; the new role's patterns must lie inside this role's.
    #[arg(long, default_value = "targets")]
    pub from: String,
    /// Path pattern (`*` and `?` within one segment), e.g. gw-a/*/*/*; repeat for several.
    #[arg(long = "path", required_unless_present = "hash_bins")]
    pub paths: Vec<String>,
    /// Delegate every target under --from to N succinct hash bins (TAP 15; N a power of two, at
    /// most 16384), all signed with --role-key and --threshold; `add` then places each target in its
    /// bin (the first log2(N) bits of sha256 of its name).
    #[arg(long, value_name = "N", conflicts_with_all = ["paths", "terminating", "stage"])]
    pub hash_bins: Option<u32>,
    /// Key files of the new role.
    #[arg(long = "role-key", required = true, value_parser = NoEcho::<KeyRef>::new())]
    pub role_keys: Vec<KeyRef>,
    /// Signatures needed for the new role.
    #[arg(long, default_value_t = 1)]
    pub threshold: u64,
    /// Stop the search at this role for matching targets.
    #[arg(long)]
    pub terminating: bool,
    /// Do not publish: write the delegating role's next version and the new role's first one,
    /// signed with the keys given (maybe fewer than their thresholds), to this new file; see
    /// `repo-tool role sign` and `repo-tool role publish`.
    #[arg(long, value_name = "FILE")]
    pub stage: Option<PathBuf>,
    #[command(flatten)]
    pub lifetimes: Lifetimes,
    #[command(flatten)]
    pub signing: SigningKeys,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Warn about metadata expiring within this time.
    #[arg(long, default_value = "12h", value_parser = lifetime)]
    pub warn_within: jiff::SignedDuration,
    /// Print one JSON object instead of text (fields in the README); the exit status is the same.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GcArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

const PUBLISH_HELP: &str =
    "Credentials: the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL), or --credentials FILE (AWS shared-credentials format, mode \
0600), never on the command line. Exit status: 0 published (or nothing to send), 2 could not publish: the \
bucket still serves the repository it served before; run the command again to finish.";

#[derive(Args)]
pub struct PublishArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Destination: s3://BUCKET[/PREFIX] or file:///DIR.
    #[arg(long)]
    pub to: String,
    /// An S3-compatible server (MinIO, Ceph, R2, moto...), e.g. http://127.0.0.1:9000; path-style requests.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The bucket's region (default: AWS_REGION, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// AWS shared-credentials file (mode 0600) to read the keys from.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Profile in the credentials file.
    #[arg(long, default_value = "default", requires = "credentials")]
    pub profile: String,
    /// Replace objects whose size in the bucket differs from the repository's file (refused otherwise).
    #[arg(long)]
    pub repair: bool,
    /// Objects uploaded at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Part size of multipart uploads in MiB (S3 needs at least 5); smaller files go up in one request.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(5..=1024))]
    pub part_mib: u16,
    /// Retries of each request, with exponential backoff.
    #[arg(long, default_value_t = 5)]
    pub retries: u8,
    /// Only list what would be sent.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BundleArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// The hardware id the release is for.
    #[arg(long)]
    pub hardware: ota_release::HardwareId,
    /// Its channel.
    #[arg(long)]
    pub channel: ota_release::Channel,
    /// The release's version.
    #[arg(long)]
    pub version: ota_release::Version,
    /// Also include the release's delta from this base version (repeat, or comma-separate).
    #[arg(long = "delta-from", value_name = "VERSION", value_delimiter = ',')]
    pub delta_from: Vec<ota_release::Version>,
    /// The bundle file to write (refused when it exists).
    #[arg(long)]
    pub out: PathBuf,
}
