//! ota-publish: builds and maintains the TUF repository (spec 1.0) of firmware releases that devices
//! update from. The `repo-tool` binary is a thin command line over these functions; tests, the demo
//! and the fleet drill call them in-process.
//!
//! It does: keys ([`generate_key`], [`KeyRing`]; keys in PKCS#11 tokens through [`KeyRef`] and
//! [`generate_token_key`]), [`init`], [`add`] (one image or a directory, with
//! the `ota-release` custom fields), [`refresh`] (cron: re-sign timestamp/snapshot), [`delegate`] and
//! [`delegate_from`] (delegations from top-level targets or, nested, from a delegated role), signing
//! in steps by different people for every role, root included ([`root_stage`]/[`delegate_stage`]/
//! [`AddOptions::stage`] → [`root_sign`]/[`role_sign`] → [`root_publish`]/[`role_publish`]),
//! [`verify`] (which also reports files under `targets/` no metadata names) and [`list`], [`gc`]
//! (removes those files); staged rollouts ([`AddOptions::waves`], the rollout-control role:
//! [`rollout_init`], [`set_state`] to halt, resume or pull, [`set_plan`], [`add_drill`],
//! [`rollout_status`]); [`deltas::add_with_deltas`] publishes a release with binary deltas from the
//! last K releases of its hardware and channel, kept only when under a share of the image
//! ([`deltas::DeltaPolicy`]); [`publish_to_bucket`] copies a repository to object storage (S3 or
//! any `object_store` backend: only new objects, `timestamp.json` last, CDN cache headers; see
//! [`bucket`]); [`write_bundle`] writes an offline bundle (one release and the signed metadata that
//! verifies it, for `device-agent install --bundle`). It does not serve files (any static web server does), encode deltas
//! (`ota-delta` does; the binary passes `ota_delta::encode_with_progress` to the seam), run on devices
//! (`ota-tuf` is the client) or write files by hand (`ota-fs` does every atomic write, private key
//! file, lock and file-system flush).
//!
//! # Structure: a loader apart from an editor (as tough keeps `RepositoryLoader` and `RepositoryEditor`)
//! Dependencies point down this list; no module imports one above it.
//! ```text
//! publish (init, add, refresh, delegate)   rotate (root stage/sign/publish)   deltas   verify   gc
//!   (order: add's version check)
//!        │                 │                       │
//!        │                 └──────► staged: one stage file format and flow for every role
//!        ▼                                 ▼
//!  editor: Publication (new metadata files, timestamp last) ─► store: RepoStore trait, DirStore
//!        │          snapshot/timestamp re-signing                  (stage: target files in a directory)
//!        ▼
//!  loader: RepoState (reads and checks what a client would find; changes nothing)
//!        ▼
//!  trust: RoleKeySet, RoleTrust, signature checks ─► keys (KeyRing), canonical (JSON), meta (names)
//! ```
//! - **Loader** (`loader`, `RepoState::load`): reads the repository as a client would, from
//!   `timestamp.json` down the delegation tree, and answers questions (a role's metadata, its keys,
//!   the delegations leading to it, whether a target name may be listed by it). Read-only.
//! - **Editor** (`publish`, `staged`, `rotate`, `rollout`, `editor`): checks every input against the loaded
//!   state, signs everything in memory, then commits a `Publication` through a [`RepoStore`].
//! - **Store** ([`RepoStore`]): everything the editor may do to the files: put a content-addressed
//!   target file, put a new versioned metadata file, flush, replace `timestamp.json` last, and roll
//!   back what an aborted publish wrote. [`DirStore`] is the local directory (target files created in
//!   place or hard-linked, metadata through `ota-fs`, one `syncfs` for bulk publishes); object storage
//!   could be another implementation of the same trait (atomic puts, no flush). Publishing to a bucket
//!   is done apart instead ([`bucket`]): the directory stays the one place every command edits under
//!   its lock, and a copy step sends what the bucket lacks, so a failed upload never leaves the
//!   editor's state half in one place and half in the other.
//! - **Key source**: the editor signs only through [`KeyRing`], which holds signers loaded from
//!   tough's [`KeySource`] trait (`KeyRing::from_sources`). Key files are `LocalKeySource` today; a
//!   PKCS#11 token is one more `KeySource` implementation (its `as_sign` returns a `Sign` whose
//!   `sign` asks the token), passed to `KeyRing::from_sources`; nothing else changes. We use tough's
//!   trait rather than our own because tough's `Sign` is what signs its schema types, and KMS and SSM
//!   sources exist for it already; a second trait would only wrap it.
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
//! Every command that changes a repository takes its lock ([`RepoLock`] over `ota_fs::FileLock`; a
//! second command fails at once, naming the holder), checks all input and that the given keys meet
//! every threshold it needs, streams each image once (hashing as it copies, fixed buffer) to its
//! final content-addressed name (no client asks for it before the metadata naming it is published),
//! signs everything in memory, then writes new metadata and `timestamp.json` last through the store.
//! If any step fails, the store removes what it created: the repository is left byte-for-byte as it
//! was.
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
//! # Thresholds held by different people: one flow for every role
//! Any role, root included, can be staged to a file, signed there by each holder on their own machine
//! and published once its thresholds are met (see `staged`). One file format for all:
//! `{"staged_roles": [{"role", "threshold", "keys", "previous_root"?, "metadata"}]}`. Only the rules
//! differ by role: a targets role (top-level or delegated, at any depth) needs the threshold its
//! delegator sets and must be exactly the next version; root needs the thresholds of both the root it
//! replaces and its own (TUF 5.3.4), must be the current version + 1, and re-signs targets when the
//! targets keys change. Publishing refuses a threshold not met and a stage another publish has
//! overtaken. Target files a stage wrote stay in `targets/` if the stage is abandoned (unreferenced,
//! never served by metadata); `add --stage` records them in `.repo-tool.staged/` so that [`gc`] keeps
//! them while the stage can still be published, and removes them (and `verify` reports them) after.
//!
//! Main types: [`KeyRing`], [`InitSpec`]/[`RoleSpec`], [`ReleaseSpec`]/[`AddOptions`], [`RootChange`],
//! [`RepoStore`]/[`DirStore`], [`VerifyReport`], [`Listing`], [`RoleSignatures`], [`RepoLock`],
//! [`Error`].
#![deny(missing_docs)]

mod block;
pub mod bucket;
mod bundle;
mod canonical;
pub mod deltas;
mod digest;
mod editor;
mod error;
mod gc;
mod hash_bins;
mod keys;
mod loader;
mod lock;
mod meta;
mod names;
mod order;
mod publish;
mod qr;
mod rollout;
mod rotate;
mod stage;
mod staged;
mod store;
mod token_keys;
mod trust;
mod verify;

pub use bucket::{
    publish_to_bucket, publish_to_bucket_blocking, Bucket, BucketSpec, PublishOptions, PublishReport,
    SentObject,
};
pub use bundle::{write_bundle, BundleReport, BundleSpec};
pub use error::{Error, Result};
pub use gc::{gc, GcReport, UnreferencedFile, STAGED_DIR};
pub use hash_bins::{delegate_hash_bins, HashBinSpec, MAX_BINS};
pub use keys::{
    generate_key, key_id, read_public_key, GeneratedKey, KeyId, KeyRing, PRIVATE_KEY_SUFFIX,
    PUBLIC_KEY_SUFFIX,
};
pub use lock::{RepoLock, LOCK_FILE};
pub use meta::{
    expiry_after, parse_lifetime, whole_seconds, Expiries, METADATA_DIR, SPEC_VERSION, TARGETS_DIR,
};
pub use names::{check_path_pattern, check_target_name, path_matches, pattern_covers};
/// The object-store crate the [`bucket`] module publishes through (tests build stores with it).
pub use object_store;
pub use ota_pkcs11::{KeyAlgorithm, Pkcs11Uri};
pub use publish::{
    add, default_target_name, delegate, delegate_from, delegate_stage, init, refresh, releases_in_dir,
    version_from_file_name, AddOptions, AddReport, DelegateSpec, InitSpec, RefreshOptions, ReleaseSpec,
    RoleSpec, RootFingerprint,
};
pub use qr::qr_for_terminal;
pub use rollout::{
    add_drill, parse_duration_secs, parse_share_bp, rollout_init, set_plan, set_state, share_text,
    status as rollout_status, ChannelRollout, ControlReport, DeviceSeed, DeviceStanding, PlanSource,
    ReleaseRef, ReleaseRollout, RolloutStatus, WaveStatus, WavesSpec,
};
pub use rotate::{parse_role, root_publish, root_sign, root_stage, RootChange, RootSignatures};
pub use stage::target_file_path;
pub use staged::{role_publish, role_sign, RoleSignatures};
pub use store::{DirStore, RepoStore, StoredTarget};
pub use token_keys::{generate_token_key, tuf_key, GeneratedTokenKey, KeyRef, Pkcs11KeySource, MODULE_ENV};
pub use tough::key_source::KeySource;
pub use tough::schema::key::Key;
pub use tough::schema::RoleType;
pub use verify::{list, verify, ListedRelease, Listing, VerifyReport};
