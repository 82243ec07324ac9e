//! [`Client`]: the trusted state and the detailed client workflow (TUF 1.0.x section 5), step by step.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256, Sha512};
use tokio::io::AsyncWrite;

use crate::bundle::BundleSource;
use crate::fetch::{Fetched, Fetcher, Source};
use crate::metadata::{self, DelegatedRoles, MetaFile, Root, Snapshot, Targets, Timestamp};
use crate::{store, ClientConfig, Error, Result, TargetInfo};

/// The device's TUF client: a metadata directory plus the roles verified in this update, in memory.
///
/// Build with [`Client::load`] after provisioning with [`Client::init`]; call [`Client::refresh`] to run
/// the update workflow, then [`Client::target`] / [`Client::all_targets`] and
/// [`Client::download_target`].
#[derive(Debug)]
pub struct Client {
    dir: PathBuf,
    config: ClientConfig,
    /// Where metadata and targets are read from: the configured URLs, or an offline bundle.
    source: Source,
    /// The trusted root (TUF 5.2).
    root: Root,
    /// Everything verified by the last successful refresh; None before it (or after a failed one).
    session: Option<Session>,
}

/// What one refresh established.
#[derive(Debug)]
struct Session {
    /// The one time the whole update judges expiry against (TUF 5.1: "fixed update start time").
    reference_time: DateTime<Utc>,
    snapshot: Snapshot,
    /// Targets roles loaded so far, by name: one file per name in this snapshot, so the content does not
    /// depend on how the search reached it; each was verified through at least one delegation.
    roles: HashMap<String, Arc<Targets>>,
    /// The delegations (delegator, role) each role was verified through. A role's trust comes from the
    /// delegation that led to it: reached through another delegator, it is verified again against that
    /// one's keys and threshold, never trusted because another delegator's keys signed it.
    verified: HashSet<(String, String)>,
}

/// Ensures a base URL ends with `/` so names can be appended.
fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

impl Client {
    /// Provisioning: trust this root (the exact bytes; it must be a valid self-signed root, TUF 5.2).
    /// Expiry is not judged here; the first refresh does. No network.
    pub fn init(metadata_dir: &Path, root_json: &[u8]) -> Result<()> {
        verify_self_signed_root(root_json)?;
        std::fs::create_dir_all(metadata_dir).map_err(|e| Error::io(metadata_dir, e))?;
        store::write(metadata_dir, "root", root_json)
    }

    /// Loads the trusted root from `metadata_dir` (TUF 5.2; `root.json` must exist). No network.
    pub fn load(metadata_dir: &Path, config: ClientConfig) -> Result<Client> {
        let fetcher = Fetcher::new(config.request_timeout, &config.http)?.with_min_rate(config.min_rate);
        let source = Source::Http {
            fetcher,
            metadata_base: with_slash(&config.metadata_base_url),
            targets_base: with_slash(&config.targets_base_url),
        };
        Client::load_from(metadata_dir, config, source)
    }

    /// Loads the trusted root like [`Client::load`], but reads metadata and targets from an offline
    /// bundle instead of the configured URLs: the same workflow verifies them (root rotation,
    /// signatures, thresholds, rollback, expiry against [`ClientConfig::clock`], lengths and hashes),
    /// and what verifies is persisted as trusted, as after an online refresh.
    pub fn load_bundle(metadata_dir: &Path, config: ClientConfig, bundle: BundleSource) -> Result<Client> {
        Client::load_from(metadata_dir, config, Source::Bundle(bundle))
    }

    /// The bundle this client reads, when it reads one.
    pub fn bundle(&self) -> Option<&BundleSource> {
        match &self.source {
            Source::Bundle(b) => Some(b),
            Source::Http { .. } => None,
        }
    }

    fn load_from(metadata_dir: &Path, config: ClientConfig, source: Source) -> Result<Client> {
        let path = metadata_dir.join(store::file_name("root"));
        let bytes = store::read(metadata_dir, "root", config.limits.root_max).ok_or_else(|| {
            Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no trusted root (or too large)"),
            )
        })?;
        let root = verify_self_signed_root(&bytes)?;
        Ok(Client {
            dir: metadata_dir.to_path_buf(),
            source,
            config,
            root,
            session: None,
        })
    }

    /// The version of the trusted root.
    pub fn root_version(&self) -> u64 {
        self.root.common.version
    }

    /// The spec's client workflow for the top-level roles: root rotation (TUF 5.3), timestamp (5.4),
    /// snapshot (5.5), top-level targets (5.6). Delegated roles are loaded later, on demand. Expiry is
    /// judged against one time read from [`ClientConfig::clock`] at the start.
    pub async fn refresh(&mut self) -> Result<()> {
        self.session = None;
        // TUF 5.1: record the time at which the update began (from the caller's clock); every expiry
        // check below uses it.
        let reference_time = self.config.clock.now();
        let timestamp_keys = self.root.key_identities("timestamp");
        let snapshot_keys = self.root.key_identities("snapshot");

        self.update_root().await?;
        // TUF 5.3.10: the final root must not be expired.
        self.root.common.check_expiry("root", reference_time)?;
        // TUF 5.3.11: after a rotation of timestamp or snapshot keys (a trusted key removed), forget the
        // trusted timestamp and snapshot, so that a fast-forward attack with the old keys cannot block
        // updates forever. Keys only added (or a threshold changed) keep the files, as python-tuf and the
        // conformance suite expect; a trusted copy that no longer verifies is ignored when loaded anyway.
        let removed = |old: &[Vec<u8>], new: &[Vec<u8>]| old.iter().any(|k| !new.contains(k));
        if removed(&timestamp_keys, &self.root.key_identities("timestamp"))
            || removed(&snapshot_keys, &self.root.key_identities("snapshot"))
        {
            tracing::info!("timestamp or snapshot keys rotated: deleting trusted timestamp and snapshot");
            store::remove(&self.dir, "timestamp")?;
            store::remove(&self.dir, "snapshot")?;
        }

        let timestamp = self.update_timestamp(reference_time).await?;
        let snapshot = self.update_snapshot(reference_time, &timestamp).await?;
        self.session = Some(Session {
            reference_time,
            snapshot,
            roles: HashMap::new(),
            verified: HashSet::new(),
        });
        // TUF 5.6: top-level targets; if it fails the refresh failed.
        if let Err(e) = self.load_targets("targets", "root").await {
            self.session = None;
            return Err(e);
        }
        Ok(())
    }

    /// TUF 5.3.2 - 5.3.9: fetch `N+1.root.json` until it is not found (or the rotation cap is reached),
    /// each verified by the old root's threshold and its own, with the version exactly N+1, each
    /// persisted as received.
    async fn update_root(&mut self) -> Result<()> {
        for _ in 0..self.config.limits.max_root_rotations {
            let next = self
                .root
                .common
                .version
                .checked_add(1)
                .ok_or_else(|| Error::malformed("root", "version cannot grow further"))?;
            // TUF 5.3.3: bounded by the configured maximum root size.
            let name = format!("{next}.root.json");
            let bytes = match self.source.metadata(&name, self.config.limits.root_max).await? {
                Fetched::NotFound => break,
                Fetched::Body(b) => b,
            };
            let envelope = metadata::parse_envelope("root", &bytes)?;
            let new_root = Root::parse(&bytes)?;
            // TUF 5.3.4: signed by a threshold of the keys of the trusted root's root role ...
            self.root.verify("root", &envelope)?;
            // TUF 5.3.5: ... version exactly N+1 ...
            if new_root.common.version != next {
                return Err(Error::VersionMismatch {
                    role: "root".into(),
                    expected: next,
                    got: new_root.common.version,
                });
            }
            // TUF 5.3.4: ... and by a threshold of its own root role's keys.
            new_root.verify("root", &envelope)?;
            // TUF 5.3.8: persist, then trust (5.3.6: expiry of intermediate roots is not checked).
            store::write(&self.dir, "root", &bytes)?;
            tracing::debug!(version = next, "rotated to new root");
            self.root = new_root;
        }
        Ok(())
    }

    /// Verifies timestamp bytes under the trusted root (TUF 5.4.2), without rollback or expiry checks.
    fn check_timestamp(&self, bytes: &[u8]) -> Result<Timestamp> {
        let envelope = metadata::parse_envelope("timestamp", bytes)?;
        let timestamp = Timestamp::parse(bytes)?;
        self.root.verify("timestamp", &envelope)?;
        Ok(timestamp)
    }

    /// TUF 5.4: timestamp. The trusted (persisted) one, if it still verifies, is the reference for rollback
    /// checks even when expired. A new one with the same version is discarded (the trusted one stays, as
    /// python-tuf does), so same-version different content is never adopted.
    async fn update_timestamp(&mut self, reference_time: DateTime<Utc>) -> Result<Timestamp> {
        let limits = &self.config.limits;
        let trusted = store::read(&self.dir, "timestamp", limits.timestamp_max).and_then(|b| {
            self.check_timestamp(&b)
                .map_err(|e| tracing::debug!("trusted timestamp unusable: {e}"))
                .ok()
        });
        // TUF 5.4.1: bounded by the configured maximum; never version-prefixed.
        let bytes = self
            .source
            .required_metadata("timestamp.json", limits.timestamp_max)
            .await?;
        // TUF 5.4.2: signatures by the root's timestamp keys.
        let new = self.check_timestamp(&bytes)?;
        if let Some(old) = trusted {
            // TUF 5.4.3.1: no rollback of the timestamp version.
            if new.common.version < old.common.version {
                return Err(Error::Rollback {
                    role: "timestamp".into(),
                    trusted: old.common.version,
                    got: new.common.version,
                });
            }
            if new.common.version == old.common.version {
                tracing::debug!("timestamp unchanged (same version): keeping the trusted one");
                old.common.check_expiry("timestamp", reference_time)?;
                return Ok(old);
            }
            // TUF 5.4.3.2: no rollback of the snapshot version it lists.
            if new.snapshot.version < old.snapshot.version {
                return Err(Error::Rollback {
                    role: "snapshot (in timestamp)".into(),
                    trusted: old.snapshot.version,
                    got: new.snapshot.version,
                });
            }
        }
        // TUF 5.4.4: not expired.
        new.common.check_expiry("timestamp", reference_time)?;
        // TUF 5.4.5: persist as received.
        store::write(&self.dir, "timestamp", &bytes)?;
        Ok(new)
    }

    /// Verifies snapshot bytes under the trusted root (TUF 5.5.3), without hash, rollback or expiry checks.
    fn check_snapshot(&self, bytes: &[u8]) -> Result<Snapshot> {
        let envelope = metadata::parse_envelope("snapshot", bytes)?;
        let snapshot = Snapshot::parse(bytes)?;
        self.root.verify("snapshot", &envelope)?;
        Ok(snapshot)
    }

    /// TUF 5.5: snapshot. The trusted one is kept when it is still the one timestamp names (version match,
    /// not expired); otherwise it is the rollback reference for the new one.
    async fn update_snapshot(
        &mut self,
        reference_time: DateTime<Utc>,
        timestamp: &Timestamp,
    ) -> Result<Snapshot> {
        let limits = &self.config.limits;
        let meta = &timestamp.snapshot;
        let trusted = store::read(
            &self.dir,
            "snapshot",
            limits.snapshot_max.max(meta.length.unwrap_or(0)),
        )
        .and_then(|b| {
            self.check_snapshot(&b)
                .map_err(|e| tracing::debug!("trusted snapshot unusable: {e}"))
                .ok()
        });
        if let Some(old) = &trusted {
            if old.common.version == meta.version
                && old.common.check_expiry("snapshot", reference_time).is_ok()
            {
                tracing::debug!("trusted snapshot is current: not downloading");
                return Ok(old.clone());
            }
        }
        // TUF 5.5.1: length from timestamp, else the configured maximum; versioned name with consistent
        // snapshots.
        let length = meta.length.unwrap_or(limits.snapshot_max);
        let name = if self.root.consistent_snapshot {
            format!("{}.snapshot.json", meta.version)
        } else {
            "snapshot.json".to_owned()
        };
        let bytes = self.source.required_metadata(&name, length).await?;
        // TUF 5.5.2: hashes and length from timestamp.
        check_meta_file("snapshot", &bytes, meta)?;
        // TUF 5.5.3: signatures by the root's snapshot keys.
        let new = self.check_snapshot(&bytes)?;
        // TUF 5.5.4: the version timestamp names.
        if new.common.version != meta.version {
            return Err(Error::VersionMismatch {
                role: "snapshot".into(),
                expected: meta.version,
                got: new.common.version,
            });
        }
        // TUF 5.5.5: no targets role disappears and none goes back in version.
        if let Some(old) = &trusted {
            for (name, old_meta) in &old.meta {
                let Some(new_meta) = new.meta.get(name) else {
                    return Err(Error::MissingMeta {
                        role: name.clone(),
                        referrer: "snapshot".into(),
                    });
                };
                if new_meta.version < old_meta.version {
                    return Err(Error::Rollback {
                        role: name.clone(),
                        trusted: old_meta.version,
                        got: new_meta.version,
                    });
                }
            }
        }
        // TUF 5.5.6: not expired.
        new.common.check_expiry("snapshot", reference_time)?;
        // TUF 5.5.7: persist as received.
        store::write(&self.dir, "snapshot", &bytes)?;
        Ok(new)
    }

    /// TUF 5.6.1 - 5.6.6 for one targets role (top-level or delegated by `delegator`): the trusted copy if
    /// it still matches snapshot, else a download; verified against snapshot's meta (length, hashes,
    /// version) and the delegator's keys, not expired, persisted as received. A role already loaded in
    /// this session through another delegator is verified again against `delegator`'s keys.
    async fn load_targets(&mut self, role: &str, delegator: &str) -> Result<Arc<Targets>> {
        let session = self
            .session
            .as_ref()
            .ok_or_else(|| Error::Misuse("refresh first".into()))?;
        let edge = (delegator.to_string(), role.to_string());
        if let Some(t) = session.roles.get(role) {
            if session.verified.contains(&edge) {
                return Ok(Arc::clone(t));
            }
            // Loaded through another delegator: the same bytes, verified against this one's keys.
            let t = Arc::clone(t);
            let meta = self.snapshot_meta(role)?;
            self.check_targets(role, delegator, t.bytes().to_vec(), &meta)?;
            if let Some(s) = self.session.as_mut() {
                s.verified.insert(edge);
            }
            return Ok(t);
        }
        let meta = self.snapshot_meta(role)?;
        // TUF 5.6.1: length from snapshot, else the configured maximum.
        let limit = meta.length.unwrap_or(self.config.limits.targets_max);
        let local = store::read(&self.dir, role, limit).and_then(|b| {
            self.check_targets(role, delegator, b, &meta)
                .map_err(|e| tracing::debug!(role, "trusted copy unusable: {e}"))
                .ok()
        });
        let targets = match local {
            Some(t) => t,
            None => self.fetch_targets(role, delegator, &meta, limit).await?,
        };
        let targets = Arc::new(targets);
        if let Some(s) = self.session.as_mut() {
            s.roles.insert(role.to_string(), Arc::clone(&targets));
            s.verified.insert(edge);
        }
        Ok(targets)
    }

    /// Snapshot's entry for a targets role (TUF 5.6.1).
    fn snapshot_meta(&self, role: &str) -> Result<MetaFile> {
        let session = self
            .session
            .as_ref()
            .ok_or_else(|| Error::Misuse("refresh first".into()))?;
        session
            .snapshot
            .meta
            .get(&format!("{role}.json"))
            .cloned()
            .ok_or_else(|| Error::MissingMeta {
                role: role.to_string(),
                referrer: "snapshot".into(),
            })
    }

    /// Downloads a targets role (versioned name with consistent snapshots), verifies it (TUF 5.6.2 -
    /// 5.6.5) and persists it as received (5.6.6).
    async fn fetch_targets(
        &self,
        role: &str,
        delegator: &str,
        meta: &MetaFile,
        limit: u64,
    ) -> Result<Targets> {
        let quoted = crate::paths::quote_name(role);
        let name = if self.root.consistent_snapshot {
            format!("{}.{quoted}.json", meta.version)
        } else {
            format!("{quoted}.json")
        };
        let bytes = self.source.required_metadata(&name, limit).await?;
        let t = self.check_targets(role, delegator, bytes, meta)?;
        // TUF 5.6.6: persist as received.
        store::write(&self.dir, role, t.bytes())?;
        Ok(t)
    }

    fn check_targets(&self, role: &str, delegator: &str, bytes: Vec<u8>, meta: &MetaFile) -> Result<Targets> {
        let session = self
            .session
            .as_ref()
            .ok_or_else(|| Error::Misuse("refresh first".into()))?;
        // TUF 5.6.2: hashes and length from snapshot (mix-and-match protection).
        check_meta_file(role, &bytes, meta)?;
        // TUF 5.6.3: signatures by the delegator's keys for this role, checked before `signed` is read.
        let targets = Targets::parse(role, bytes, |envelope| {
            if delegator == "root" {
                return self.root.verify("targets", envelope);
            }
            let not_delegated = || Error::NotDelegated {
                role: role.to_string(),
                delegator: delegator.to_string(),
            };
            let parent = session.roles.get(delegator).ok_or_else(not_delegated)?;
            let delegations = parent.delegations.as_ref().ok_or_else(not_delegated)?;
            let role_keys = delegations.role_keys(role).ok_or_else(not_delegated)?;
            metadata::verify_threshold(role, delegator, envelope, role_keys, &delegations.keys)
        })?;
        // TUF 5.6.4: the version snapshot names.
        if targets.common.version != meta.version {
            return Err(Error::VersionMismatch {
                role: role.to_string(),
                expected: meta.version,
                got: targets.common.version,
            });
        }
        // TUF 5.6.5: not expired.
        targets.common.check_expiry(role, session.reference_time)?;
        Ok(targets)
    }

    async fn ensure_refreshed(&mut self) -> Result<()> {
        if self.session.is_none() {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Lazy, pre-order depth-first search of the delegation tree for one target (TUF 5.6.7): roles are
    /// visited in the order they are listed, each loaded only when reached; a terminating delegation that
    /// matches ends backtracking; each role is visited once; at most `max_delegations` roles are visited.
    /// `Ok(None)` when no reachable role lists the target.
    pub async fn target(&mut self, name: &str) -> Result<Option<TargetInfo>> {
        self.ensure_refreshed().await?;
        let cap = usize::try_from(self.config.limits.max_delegations).unwrap_or(usize::MAX);
        let mut to_visit: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut visited: HashSet<String> = HashSet::new();
        while visited.len() <= cap {
            let Some((role, delegator)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&role) {
                continue;
            }
            let targets = self.load_targets(&role, &delegator).await?;
            // TUF 5.6.7.1: the first role (in pre-order) that lists the target wins.
            if let Some(info) = targets.get(&role, name)? {
                return Ok(Some(info));
            }
            visited.insert(role.clone());
            if let Some(delegations) = &targets.delegations {
                // TUF 5.6.7.2: children responsible for this path, in listed order.
                let mut children = Vec::new();
                for (child, terminating) in delegations.roles_for_target(name) {
                    children.push((child, role.clone()));
                    if terminating {
                        // TUF 5.6.7.2.1: terminating: do not backtrack to other roles.
                        to_visit.clear();
                        break;
                    }
                }
                to_visit.extend(children.into_iter().rev());
            }
        }
        if !to_visit.is_empty() {
            tracing::warn!(name, cap, "delegation search stopped at the cap on visited roles");
        }
        Ok(None)
    }

    /// Every target visible to this client: top-level plus every reachable delegated role (at most
    /// `max_roles_listed` roles loaded); each name is resolved with the same search as [`Client::target`],
    /// so it is reported from the role that search reaches first, and only when that role is trusted for
    /// its path. A delegated role that fails to load is skipped (logged), so one bad branch hides only its
    /// own targets. Sorted by name.
    pub async fn all_targets(&mut self) -> Result<Vec<TargetInfo>> {
        self.ensure_refreshed().await?;
        let cap = usize::try_from(self.config.limits.max_roles_listed).unwrap_or(usize::MAX);
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut to_visit: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        // Tried per delegation, listed per role: a role that fails to verify through one delegator is
        // still listed when another delegator's keys sign it.
        let mut tried: HashSet<(String, String)> = HashSet::new();
        let mut listed: HashSet<String> = HashSet::new();
        while tried.len() < cap {
            let Some((role, delegator)) = to_visit.pop() else {
                break;
            };
            if listed.contains(&role) || !tried.insert((delegator.clone(), role.clone())) {
                continue;
            }
            let targets = match self.load_targets(&role, &delegator).await {
                Ok(t) => t,
                Err(e) if role != "targets" => {
                    tracing::warn!(role, delegator, "skipping delegated role: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            listed.insert(role.clone());
            names.extend(targets.names().map(str::to_string));
            if let Some(d) = &targets.delegations {
                let children: Vec<String> = match &d.roles {
                    DelegatedRoles::Listed(list) => list.iter().map(|r| r.name.clone()).collect(),
                    DelegatedRoles::Succinct(s) => {
                        let bins = 1u64 << s.bit_length.clamp(1, 32);
                        let room = u64::try_from(cap.saturating_sub(tried.len())).unwrap_or(u64::MAX);
                        let width = format!("{:x}", bins - 1).len();
                        (0..bins.min(room))
                            .map(|i| format!("{}-{i:0width$x}", s.name_prefix))
                            .collect()
                    }
                };
                to_visit.extend(children.into_iter().rev().map(|c| (c, role.clone())));
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.target(&name).await {
                Ok(Some(info)) => out.push(info),
                Ok(None) => {}
                Err(e) => tracing::warn!(name, "target not resolvable: {e}"),
            }
        }
        Ok(out)
    }

    /// Where a target is read from: its URL (or, reading a bundle, `<bundle>:targets/<path>`), the path
    /// being [`Client::target_path`].
    pub fn target_url(&self, target: &TargetInfo) -> String {
        self.source.target_location(&self.target_path(target))
    }

    /// A target's path under the targets base: `<dir>/<hash>.<basename>` with consistent snapshots
    /// (TUF 5.7.3; the sha256 digest when listed, else sha512), else the target path itself.
    pub fn target_path(&self, target: &TargetInfo) -> String {
        if !self.root.consistent_snapshot {
            return target.name.clone();
        }
        let digest = target
            .hashes
            .get("sha256")
            .or_else(|| target.hashes.get("sha512"))
            .or_else(|| target.hashes.values().next())
            .map(hex::encode)
            .unwrap_or_default();
        match target.name.rsplit_once('/') {
            Some((dir, base_name)) => format!("{dir}/{digest}.{base_name}"),
            None => format!("{digest}.{}", target.name),
        }
    }

    /// Streams the target into `sink` while checking length and every hash (TUF 5.7). Err on any mismatch,
    /// and then whatever reached the sink is garbage; the caller must not use it. Returns bytes written.
    pub async fn download_target<W: AsyncWrite + Unpin>(&self, target: &TargetInfo, sink: W) -> Result<u64> {
        // Refuse before downloading anything that could not be checked.
        let mut digests = Digests::new(&target.name, &target.hashes)?;
        let path = self.target_path(target);
        let written = self
            .source
            .target(
                &path,
                &target.name,
                target.length,
                self.config.limits.min_target_bytes_per_sec,
                sink,
                |chunk| digests.update(chunk),
            )
            .await?;
        if written != target.length {
            return Err(Error::LengthMismatch {
                what: target.name.clone(),
                expected: target.length,
                got: written,
            });
        }
        digests.check(&target.name)?;
        Ok(written)
    }
}

fn verify_self_signed_root(bytes: &[u8]) -> Result<Root> {
    let envelope = metadata::parse_envelope("root", bytes)?;
    let root = Root::parse(bytes)?;
    root.verify("root", &envelope)?;
    Ok(root)
}

/// Checks length and hashes of a metadata file against the referring role's META entry.
fn check_meta_file(role: &str, bytes: &[u8], meta: &MetaFile) -> Result<()> {
    if let Some(expected) = meta.length {
        if bytes.len() as u64 != expected {
            return Err(Error::LengthMismatch {
                what: role.to_string(),
                expected,
                got: bytes.len() as u64,
            });
        }
    }
    if let Some(hashes) = &meta.hashes {
        let mut digests = Digests::new(role, hashes)?;
        digests.update(bytes);
        digests.check(role)?;
    }
    Ok(())
}

/// Running digests for every signed hash of one file.
pub(crate) struct Digests {
    running: Vec<(String, Running, Vec<u8>)>,
}

enum Running {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Digests {
    /// Err when an algorithm is not supported (the file could not be fully checked).
    pub(crate) fn new(what: &str, hashes: &BTreeMap<String, Vec<u8>>) -> Result<Digests> {
        let running = hashes
            .iter()
            .map(|(alg, expected)| {
                let r = match alg.as_str() {
                    "sha256" => Running::Sha256(Sha256::new()),
                    "sha512" => Running::Sha512(Sha512::new()),
                    _ => {
                        return Err(Error::UnsupportedHash {
                            what: what.to_string(),
                            algorithm: alg.clone(),
                        })
                    }
                };
                Ok((alg.clone(), r, expected.clone()))
            })
            .collect::<Result<_>>()?;
        Ok(Digests { running })
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        for (_, r, _) in &mut self.running {
            match r {
                Running::Sha256(h) => h.update(data),
                Running::Sha512(h) => h.update(data),
            }
        }
    }

    pub(crate) fn check(self, what: &str) -> Result<()> {
        for (alg, r, expected) in self.running {
            let got = match r {
                Running::Sha256(h) => h.finalize().to_vec(),
                Running::Sha512(h) => h.finalize().to_vec(),
            };
            if got != expected {
                return Err(Error::HashMismatch {
                    what: what.to_string(),
                    algorithm: alg,
                    expected: hex::encode(expected),
                    got: hex::encode(got),
                });
            }
        }
        Ok(())
    }
}
