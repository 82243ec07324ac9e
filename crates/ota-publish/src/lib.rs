//! ota-publish: builds and maintains the TUF repository (spec 1.0) of firmware releases that devices
//! update from. The `repo-tool` binary is a thin command line over these functions; tests, the demo
//! and the fleet drill call them in-process.
//!
//! It does: keys ([`generate_key`], [`KeyRing`] over tough's `KeySource`, so a key can live in a file
//! now and a KMS/HSM later), [`init`], [`add`] (one image or a directory, with the `ota-release`
//! custom fields), [`refresh`] (cron: re-sign timestamp/snapshot), [`delegate`] and [`delegate_from`]
//! (delegations from top-level targets or, nested, from a delegated role), root rotation with
//! thresholds held by different people ([`root_stage`] → [`root_sign`] on each holder's machine →
//! [`root_publish`]), [`verify`] and [`list`]; [`deltas::add_with_deltas`] publishes a release with binary
//! deltas from the last K releases of its hardware and channel, kept only when under a share of the image
//! ([`deltas::DeltaPolicy`]). It does not serve files (any static web server does), encode deltas
//! (`ota-delta` does; the binary passes `ota_delta::encode_with_progress` to the seam) or run on devices
//! (`ota-tuf` is the client).
//!
//! # On disk (the TUF specification's layout, consistent snapshots)
//! ```text
//! metadata/1.root.json, 2.root.json, ...   every root version, kept forever
//! metadata/timestamp.json                  the entry point, replaced last by every publish
//! metadata/V.snapshot.json  V.targets.json  V.<role>.json
//! targets/<dir>/<sha256-hex>.<basename>    e.g. targets/gw-a/stable/<sha>.fw-2.1.0.bin
//! ```
//! Default target name ([`default_target_name`]): `<first-hardware-id>/<channel>/<basename>` when the
//! image's file name carries its version (`fw-2.1.0.bin`; always so in a bulk add, whose file names
//! are `<name>-<semver>[.<ext>]`), else `<first-hardware-id>/<channel>/<version>/<basename>`. No
//! directory per version in the common case: a 10,000-target bulk add creates 10,000 inodes, not
//! 20,000. A product line or channel is delegated with patterns like `gw-a/*/*` and `gw-a/*/*/*`.
//! Expiry times are whole seconds (`YYYY-MM-DDTHH:MM:SSZ`).
//! `.repo-tool.lock` ([`RepoLock`]) sits next to `metadata/` and `targets/`, outside what is served.
//!
//! # Publishing is atomic
//! Every command that changes a repository takes its lock ([`RepoLock`]; a second command fails at
//! once, naming the holder), checks all input and that the given keys meet every threshold it needs,
//! streams each image once (hashing as it copies, fixed buffer) to its final content-addressed name
//! (no client asks for it before the metadata naming it is published), signs everything in memory,
//! then writes new metadata (temp + fsync + rename, directories fsynced) and `timestamp.json` last.
//! If any step fails, what it created is removed: the repository is left byte-for-byte as it was.
//!
//! # Speed
//! Targets, snapshot and timestamp metadata are built from tough's schema types and signed with tough's
//! `Sign` over their canonical JSON, not through `RepositoryEditor` (which re-reads and re-hashes every
//! target). Canonical JSON is written by a small ASCII-only writer (targets entry by entry), checked
//! byte for byte against olpc-cjson in unit tests, with olpc-cjson as the fallback for anything else.
//! Bulk publishes flush the file system once (`syncfs`) instead of an fsync per file, and write each
//! small target file with one create and one write (no temp name, rename or staging directory).
//! `add` builds no deltas for images under [`deltas::DeltaPolicy::min_image_len`] (64 KiB). Figures:
//! `scripts/bench-repo-tool.sh`.
//!
//! # Thresholds held by different people
//! Root: `root stage` → `root sign` on each holder's machine → `root publish` ([`root_stage`],
//! [`root_sign`], [`root_publish`]). Any targets role (top-level or delegated, at any depth): `add
//! --stage FILE` ([`AddOptions::stage`]) or `delegate --stage FILE` ([`delegate_stage`]) →
//! `role sign` ([`role_sign`]) → `role publish` ([`role_publish`]), which refuses a threshold not
//! met and a stage another publish has overtaken (see `staged`). Target files a stage wrote
//! stay in `targets/` if the stage is abandoned (unreferenced, never served by metadata).
//!
//! Main types: [`KeyRing`], [`InitSpec`]/[`RoleSpec`], [`ReleaseSpec`]/[`AddOptions`], [`RootChange`],
//! [`VerifyReport`], [`Listing`], [`RoleSignatures`], [`RepoLock`], [`Error`].
#![deny(missing_docs)]

mod block;
mod canonical;
pub mod deltas;
mod digest;
mod editor;
mod error;
mod keys;
mod loader;
mod lock;
mod meta;
mod names;
mod publish;
mod qr;
mod rotate;
mod stage;
mod staged;
mod trust;
mod verify;

pub use error::{Error, Result};
pub use keys::{
    generate_key, key_id, read_public_key, GeneratedKey, KeyId, KeyRing, PRIVATE_KEY_SUFFIX,
    PUBLIC_KEY_SUFFIX,
};
pub use lock::{RepoLock, LOCK_FILE};
pub use meta::{
    expiry_after, parse_lifetime, whole_seconds, Expiries, METADATA_DIR, SPEC_VERSION, TARGETS_DIR,
};
pub use names::{check_path_pattern, check_target_name, path_matches, pattern_covers};
pub use publish::{
    add, default_target_name, delegate, delegate_from, delegate_stage, init, refresh, releases_in_dir,
    version_from_file_name, AddOptions, AddReport, DelegateSpec, InitSpec, RefreshOptions, ReleaseSpec,
    RoleSpec, RootFingerprint,
};
pub use qr::qr_for_terminal;
pub use rotate::{parse_role, root_publish, root_sign, root_stage, RootChange, RootSignatures};
pub use stage::target_file_path;
pub use staged::{role_publish, role_sign, RoleSignatures};
pub use tough::key_source::KeySource;
pub use tough::schema::key::Key;
pub use tough::schema::RoleType;
pub use verify::{list, verify, ListedRelease, Listing, VerifyReport};
