//! The seam for binary deltas: [`add_with_deltas`] is [`crate::add`] plus, for each new release, a
//! delta from each of the last `keep` releases of the same (first hardware id, channel), made by a
//! caller-supplied encoder (in production `ota_delta::encode_with_progress`; this library does not encode).
//!
//! Each delta is published as its own target (custom `OtaTarget::Delta`)
//! `<release-target-dir>/deltas/<base-version>.delta`, or
//! `<release-target-dir>/deltas/<new-version>/<base-version>.delta` when the release's directory is
//! shared by several releases (as with `<hw>/<channel>/<name>-<version>.bin`), and the release's
//! custom metadata lists the `DeltaOffer`s. A delta is kept only when it is worth it: smaller than
//! [`DeltaPolicy::max_share_percent`] of the full image (a device saves little by applying a delta
//! nearly as large as the image, and the base must match).

use std::fs;
use std::path::Path;

use ota_release::{DeltaOffer, DeltaTarget, HardwareId, OtaTarget, Release, Sha256Digest, Version};
use tough::schema::Target;
use tough::TargetName;

use crate::error::{io, Error, Result};
use crate::keys::KeyRing;
use crate::loader::RepoState;
use crate::publish::{add_with, ota_custom, tuf_target, AddOptions, AddReport, NewTarget, ReleaseSpec};
use crate::stage::target_file_path;
use crate::store::RepoStore;

/// Encodes a delta from `old` to `new`; an error string skips that delta (the release is published
/// without it, [`SkipReason::EncoderFailed`]).
pub type Encoder<'a> = dyn FnMut(&[u8], &[u8]) -> std::result::Result<Vec<u8>, String> + 'a;

/// Which deltas [`add_with_deltas`] builds and which it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaPolicy {
    /// Build deltas from this many of the newest older releases (same first hardware id and
    /// channel); 0 builds none.
    pub keep: usize,
    /// Keep a delta only if it is smaller than this percentage of the new full image (0 keeps none).
    pub max_share_percent: u8,
    /// Build no delta for an image smaller than this many bytes. A device fetches a small image in
    /// about one round trip anyway, so a delta saves it nothing worth a second file in the metadata
    /// every device downloads, and encoding (reading both images, trying every filter) would be
    /// most of the cost of publishing it. Default [`DeltaPolicy::DEFAULT_MIN_IMAGE_LEN`].
    pub min_image_len: u64,
    /// The largest old or new image the encoder takes, in bytes; a larger pair gets no delta
    /// ([`SkipReason::TooLarge`]), checked before either image is read. Default `u64::MAX` (no
    /// limit); `repo-tool` passes `ota_delta::MAX_INPUT_LEN`.
    pub max_input_len: u64,
}

impl DeltaPolicy {
    /// Default [`DeltaPolicy::min_image_len`]: 64 KiB.
    pub const DEFAULT_MIN_IMAGE_LEN: u64 = 64 * 1024;

    /// Whether deltas are built at all for a new image of `image_len` bytes.
    pub fn wants_deltas_for(&self, image_len: u64) -> bool {
        self.keep > 0 && self.max_share_percent > 0 && image_len >= self.min_image_len
    }
}

impl Default for DeltaPolicy {
    /// Deltas from the last 2 releases, kept under 50 % of the image, for images of 64 KiB or more.
    fn default() -> Self {
        DeltaPolicy {
            keep: 2,
            max_share_percent: 50,
            min_image_len: DeltaPolicy::DEFAULT_MIN_IMAGE_LEN,
            max_input_len: u64::MAX,
        }
    }
}

impl DeltaPolicy {
    /// Whether a delta of `delta_len` bytes is worth offering for an image of `image_len` bytes.
    pub fn worth_keeping(&self, delta_len: u64, image_len: u64) -> bool {
        // u128: no overflow for any u64 lengths.
        u128::from(delta_len) * 100 < u128::from(image_len) * u128::from(self.max_share_percent)
    }
}

/// Why a delta was not published (the release always is).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// Built, but not smaller than the policy's share of the full image: its length.
    NotWorthIt {
        /// The delta's length in bytes.
        delta_len: u64,
    },
    /// The old or new image is larger than the encoder takes ([`DeltaPolicy::max_input_len`]); the
    /// encoder was not started.
    TooLarge {
        /// Which image ("old image" or "new image").
        what: &'static str,
        /// Its length in bytes.
        len: u64,
        /// The encoder's limit in bytes.
        max: u64,
    },
    /// The encoder failed: its message.
    EncoderFailed(String),
    /// The delta's target name lies outside the paths delegated to the role: a client would never
    /// look for it there. Nothing was encoded.
    OutsideRole {
        /// The delta's target name.
        name: String,
        /// The delegated role whose paths do not cover it.
        role: String,
        /// A path pattern that would cover it.
        needs: String,
    },
}

/// A delta that was not published, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedDelta {
    /// Target name of the release the delta leads to.
    pub release_target: String,
    /// Version of the base release it started from.
    pub base_version: String,
    /// Length of the full image in bytes.
    pub image_len: u64,
    /// Why it was not published.
    pub reason: SkipReason,
}

/// What [`add_with_deltas`] did: the publish, plus the deltas it built but did not keep.
#[derive(Clone, Debug)]
pub struct DeltaAddReport {
    /// The publish (the kept deltas are among its added targets).
    pub add: AddReport,
    /// Deltas not kept, in the order they were built.
    pub skipped: Vec<SkippedDelta>,
}

/// [`crate::add`], offering deltas from the last `policy.keep` older releases of the same first
/// hardware id and channel, keeping those worth it ([`DeltaPolicy::worth_keeping`]); images under
/// [`DeltaPolicy::min_image_len`] get none. Images are read whole into memory here: encoders need
/// random access to both. A delta never stops a release: one whose name the role may not hold,
/// whose images are larger than [`DeltaPolicy::max_input_len`] (checked before reading them), whose
/// encoder fails or that is not worth it is left out and reported in [`DeltaAddReport::skipped`].
pub fn add_with_deltas(
    repo: &Path,
    releases: &[ReleaseSpec],
    opts: &AddOptions,
    ring: &KeyRing,
    policy: &DeltaPolicy,
    encoder: &mut Encoder<'_>,
) -> Result<DeltaAddReport> {
    let mut skipped = Vec::new();
    let add = add_with(repo, releases, opts, ring, |state, nt, store| {
        if !policy.wants_deltas_for(nt.staged.length) {
            return Ok(Vec::new());
        }
        let Some(OtaTarget::Release(mut release)) = ota_custom(&nt.target) else {
            return Ok(Vec::new());
        };
        let Some(hw) = release.hardware.first().cloned() else {
            return Ok(Vec::new());
        };
        let bases = newest_older_releases(state, &release, &hw, policy.keep);
        if bases.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = Context { state, opts, policy };
        let extra = deltas_from(&ctx, bases, nt, &mut release, &mut *encoder, store, &mut skipped)?;
        release.validate().map_err(|source| Error::Release {
            image: nt.staged.path.clone(),
            source,
        })?;
        nt.target = tuf_target(&nt.staged, &OtaTarget::Release(release))?;
        Ok(extra)
    })?;
    Ok(DeltaAddReport { add, skipped })
}

/// What every delta of one `add` is built against.
struct Context<'a> {
    state: &'a RepoState,
    opts: &'a AddOptions,
    policy: &'a DeltaPolicy,
}

/// The deltas from each of `bases` to the new image `nt`, offered in `release`; those not built or
/// not kept go to `skipped`. The new image is read once, for the first delta that passes the
/// checks that need no bytes ([`cannot_build`]).
fn deltas_from(
    ctx: &Context<'_>,
    bases: Vec<(Version, &TargetName, &Target)>,
    nt: &NewTarget,
    release: &mut Release,
    encoder: &mut Encoder<'_>,
    store: &mut dyn RepoStore,
    skipped: &mut Vec<SkippedDelta>,
) -> Result<Vec<NewTarget>> {
    let dir = nt.name.rsplit_once('/').map_or("", |(d, _)| d);
    let mut extra = Vec::new();
    let mut new_bytes: Option<Vec<u8>> = None;
    for (version, base_name, base) in bases {
        let base = BaseRelease {
            version,
            name: base_name.raw(),
            target: base,
        };
        let skip = |reason| SkippedDelta {
            release_target: nt.name.clone(),
            base_version: base.version.to_string(),
            image_len: nt.staged.length,
            reason,
        };
        let name = delta_target_name(dir, &release.version, &base.version);
        if let Some(reason) = cannot_build(ctx.state, ctx.opts, ctx.policy, &name, nt, &base) {
            skipped.push(skip(reason));
            continue;
        }
        let bytes = match &mut new_bytes {
            Some(b) => b,
            none => none.insert(store.read_target(&nt.staged)?),
        };
        let new = NewImage {
            target: nt,
            bytes,
            name,
        };
        match build_delta(
            ctx.state,
            &new,
            &base,
            release,
            (ctx.policy, &mut *encoder),
            store,
        )? {
            Built::Kept(t) => extra.push(*t),
            Built::Skipped(reason) => skipped.push(skip(reason)),
        }
    }
    Ok(extra)
}

/// An older release a delta starts from.
struct BaseRelease<'a> {
    version: Version,
    name: &'a str,
    target: &'a Target,
}

/// The new release's image, as staged, and the name its delta gets.
struct NewImage<'a> {
    target: &'a NewTarget,
    bytes: &'a [u8],
    /// The delta's target name.
    name: String,
}

/// What [`build_delta`] did with one delta.
enum Built {
    /// Worth offering: its target, already in the store; the release lists the offer.
    Kept(Box<NewTarget>),
    /// Not published: why.
    Skipped(SkipReason),
}

/// Why the delta named `name` from `base` to the new image `nt` cannot be built, known before any
/// image is read: a name outside the role's delegated paths, or an image larger than the encoder
/// takes.
fn cannot_build(
    state: &RepoState,
    opts: &AddOptions,
    policy: &DeltaPolicy,
    name: &str,
    nt: &NewTarget,
    base: &BaseRelease<'_>,
) -> Option<SkipReason> {
    let role = opts.role.as_deref().unwrap_or(crate::meta::TARGETS_ROLE);
    if let Err(Error::NotDelegated { role, paths, .. }) = state.check_delegated(role, name) {
        return Some(SkipReason::OutsideRole {
            name: name.to_owned(),
            needs: pattern_for_delta(&paths, &nt.name, name),
            role,
        });
    }
    let max = policy.max_input_len;
    [("old image", base.target.length), ("new image", nt.staged.length)]
        .into_iter()
        .find(|&(_, len)| len > max)
        .map(|(what, len)| SkipReason::TooLarge { what, len, max })
}

/// A path pattern covering delta `delta` of release `release`: the pattern among `paths` (as
/// `NotDelegated` lists them) that matches the release, with its last segment replaced by the
/// delta's segments after the release's directory, `*` but for `deltas` (`product/*/*` →
/// `product/*/deltas/*/*`);
/// the delta's own name when none matches.
fn pattern_for_delta(paths: &str, release: &str, delta: &str) -> String {
    let release_dir = release.rsplit_once('/').map_or("", |(d, _)| d);
    let tail = delta
        .strip_prefix(release_dir)
        .unwrap_or(delta)
        .trim_start_matches('/');
    // `deltas` stays literal: the pattern covers deltas, not every deeper name.
    let stars: Vec<&str> = tail
        .split('/')
        .map(|seg| if seg == "deltas" { seg } else { "*" })
        .collect();
    paths
        .split(", ")
        .find(|p| crate::names::path_matches(p, release))
        .and_then(|p| p.rsplit_once('/'))
        .map(|(dir, _)| format!("{dir}/{}", stars.join("/")))
        .unwrap_or_else(|| delta.to_owned())
}

/// Encodes the delta from `base` to the new image and, if the policy keeps it (`keep`), puts it in
/// the store as its own target and offers it in `release`.
fn build_delta(
    state: &RepoState,
    new: &NewImage<'_>,
    base: &BaseRelease<'_>,
    release: &mut Release,
    (policy, encoder): (&DeltaPolicy, &mut Encoder<'_>),
    store: &mut dyn RepoStore,
) -> Result<Built> {
    let (version, base_name) = (&base.version, base.name);
    let digest = <[u8; 32]>::try_from(base.target.hashes.sha256.as_ref())
        .map_err(|_| Error::Tough(format!("target {base_name} has a malformed sha256")))?;
    let base_path = state.dir.join(target_file_path(base_name, &digest));
    let old = fs::read(&base_path).map_err(io("read base image", &base_path))?;
    let delta = match encoder(&old, new.bytes) {
        Ok(d) => d,
        Err(why) => return Ok(Built::Skipped(SkipReason::EncoderFailed(why))),
    };
    let delta_len = u64::try_from(delta.len()).unwrap_or(u64::MAX);
    if !policy.worth_keeping(delta_len, new.target.staged.length) {
        return Ok(Built::Skipped(SkipReason::NotWorthIt { delta_len }));
    }
    let name = new.name.clone();
    let staged = store.put_target_bytes(&name, &delta)?;
    release.deltas.push(DeltaOffer {
        base_version: version.clone(),
        base_sha256: Sha256Digest(digest),
        base_length: base.target.length,
        target: name.clone(),
        length: staged.length,
    });
    let target = tuf_target(
        &staged,
        &OtaTarget::Delta(DeltaTarget {
            base_version: version.clone(),
            base_sha256: Sha256Digest(digest),
            version: release.version.clone(),
            release_target: new.target.name.clone(),
        }),
    )?;
    Ok(Built::Kept(Box::new(NewTarget { name, target, staged })))
}

/// The target name of the delta from `base` to release `new` whose target lives in directory `dir`:
/// `<dir>/deltas/<base>.delta` when `dir` is the release's own version directory
/// (`<hw>/<channel>/<version>`), else `<dir>/deltas/<new>/<base>.delta`, so that releases sharing a
/// directory (`<hw>/<channel>/<name>-<version>.bin`, see `default_target_name`) never share a
/// delta name.
fn delta_target_name(dir: &str, new: &Version, base: &Version) -> String {
    let new = new.to_string();
    let own_dir = dir.rsplit('/').next() == Some(new.as_str());
    match (dir.is_empty(), own_dir) {
        (true, _) => format!("deltas/{new}/{base}.delta"),
        (false, true) => format!("{dir}/deltas/{base}.delta"),
        (false, false) => format!("{dir}/deltas/{new}/{base}.delta"),
    }
}

/// The `keep` newest releases older than `release` on its channel for hardware `hw`, newest first:
/// (version, target name, target). Every target of every role is looked at, so the scan reads the
/// JSON fields it filters on in place and fully parses only the candidates it returns.
fn newest_older_releases<'s>(
    state: &'s RepoState,
    release: &Release,
    hw: &HardwareId,
    keep: usize,
) -> Vec<(Version, &'s TargetName, &'s Target)> {
    let mut candidates = Vec::new();
    for (_, t) in state.all_roles() {
        for (name, target) in &t.targets {
            let Some(ota) = target.custom.get(ota_release::CUSTOM_KEY) else {
                continue;
            };
            let field = |k: &str| ota.get(k).and_then(|v| v.as_str());
            let same_line = field("kind") == Some("release")
                && field("channel") == Some(release.channel.as_str())
                && ota
                    .get("hardware")
                    .and_then(|h| h.as_array())
                    .is_some_and(|hs| hs.iter().any(|h| h.as_str() == Some(hw.as_str())));
            if !same_line {
                continue;
            }
            match field("version").map(ota_release::parse_version) {
                Some(Ok(v)) if v < release.version => candidates.push((v, name, target)),
                _ => {}
            }
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0));
    // Only valid releases are bases (as the device would see them).
    candidates
        .into_iter()
        .filter(|(_, _, target)| matches!(ota_custom(target), Some(OtaTarget::Release(_))))
        .take(keep)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_sharing_a_directory_never_share_a_delta_name() {
        let v = |s: &str| ota_release::parse_version(s).unwrap();
        let name = |dir: &str, new: &str, base: &str| delta_target_name(dir, &v(new), &v(base));
        // A release in its own version directory keeps the short form.
        assert_eq!(
            name("gw/stable/2.0.0", "2.0.0", "1.0.0"),
            "gw/stable/2.0.0/deltas/1.0.0.delta"
        );
        // Releases sharing gw/stable (fw-2.0.0.bin, fw-3.0.0.bin) get one directory per new version.
        assert_eq!(
            name("gw/stable", "2.0.0", "1.0.0"),
            "gw/stable/deltas/2.0.0/1.0.0.delta"
        );
        assert_ne!(
            name("gw/stable", "2.0.0", "1.0.0"),
            name("gw/stable", "3.0.0", "1.0.0")
        );
        assert_eq!(name("", "2.0.0", "1.0.0"), "deltas/2.0.0/1.0.0.delta");
    }

    #[test]
    fn the_pattern_suggested_for_a_delta_outside_the_role_follows_the_releases_pattern() {
        let delta = "product/beta/deltas/2.1.0/2.0.0.delta";
        assert_eq!(
            pattern_for_delta("product/*/*", "product/beta/fw-2.1.0.bin", delta),
            "product/*/deltas/*/*"
        );
        assert_eq!(
            pattern_for_delta(
                "other/*, product/beta/*/*",
                "product/beta/2.1.0/fw.bin",
                "product/beta/2.1.0/deltas/2.0.0.delta"
            ),
            "product/beta/*/deltas/*"
        );
        // No pattern matches the release (it came through another route): the delta's own name.
        assert_eq!(
            pattern_for_delta("x/*", "product/beta/fw-2.1.0.bin", delta),
            delta
        );
    }
}
