//! Delta installs (issue 5): a binary delta from the running slot's image is downloaded into a spool file
//! in the state directory (bounded by its signed length, checked against its signed hashes), checked
//! against the running slot and the release's signed metadata, then decoded by `ota_delta` straight into
//! the inactive slot: the old image is read by offset from the running slot, the new one written
//! sequentially, in memory bounded by the decoder's small constant whatever the image size.
//!
//! Any reason not to use a delta is a [`DeltaFallback`]: the caller logs it and installs the full image.
//! Only storage failures (the slots themselves, a power loss) and persistence errors are not fallbacks:
//! the full image would go through the same storage.
//!
//! The spool is a file, not memory: a delta can be tens of MiB and the agent's goal is a flat RSS. It is
//! not fsynced (it is verified by hash before use, and after a cut it is simply downloaded again).

use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use ota_release::DeltaOffer;
use ota_slot::{Slot, SlotReader, SlotWriter};

use crate::progress::{InstallMeter, MeteredWrite};
use crate::state::{ImageRef, InstallReport, InstallVia};

/// Name of the delta spool file inside the state directory.
pub const SPOOL_FILE: &str = "delta.spool";

/// Buffer between the network and the spool file, and between the spool file and the decoder.
const SPOOL_BUFFER: usize = 64 * 1024;

/// Why an offered delta was not used; the full image is installed instead.
#[derive(Debug)]
#[non_exhaustive]
pub enum DeltaFallback {
    /// The delta is not smaller than the full image: nothing to gain.
    NotSmaller {
        /// The delta's signed length.
        delta: u64,
        /// The image's signed length.
        image: u64,
    },
    /// The release offers a delta whose target is not in the signed targets metadata.
    NotListed {
        /// The delta's target name.
        target: String,
    },
    /// The last attempt was cut short while applying this delta (power cut or crash): the full image is
    /// the one path that does not depend on the delta.
    Interrupted {
        /// The delta's target name.
        target: String,
    },
    /// The running slot does not hold the delta's base image (modified, or a different build).
    BaseMismatch {
        /// The base sha256 the release's signed metadata names.
        expected: String,
        /// The sha256 of the running slot's first `length` bytes.
        got: String,
        /// The base length.
        length: u64,
    },
    /// The delta could not be downloaded, or its length or hashes differ from signed metadata.
    Download(ota_tuf::Error),
    /// The spool file could not be written or read.
    Spool {
        /// What was being done.
        what: &'static str,
        /// The spool file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The delta's own header contradicts the signed metadata (base or result).
    HeaderMismatch {
        /// Which field.
        field: &'static str,
        /// From signed metadata.
        expected: String,
        /// From the delta's header.
        got: String,
    },
    /// The decoder refused the delta (malformed, corrupt stream, wrong result digest).
    Decode(ota_delta::Error),
    /// The slot read back after the delta does not hash to the release's signed sha256.
    ReadBack {
        /// The signed sha256.
        expected: String,
        /// What the slot holds.
        got: String,
    },
}

impl fmt::Display for DeltaFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeltaFallback::NotSmaller { delta, image } => {
                write!(
                    f,
                    "the delta ({delta} bytes) is not smaller than the image ({image} bytes)"
                )
            }
            DeltaFallback::NotListed { target } => {
                write!(
                    f,
                    "delta {target} is offered but not in the signed targets metadata"
                )
            }
            DeltaFallback::Interrupted { target } => {
                write!(f, "the last attempt to apply delta {target} was interrupted")
            }
            DeltaFallback::BaseMismatch {
                expected,
                got,
                length,
            } => write!(
                f,
                "base mismatch: the running slot's first {length} bytes hash to {got}, the delta's base is \
                 {expected}"
            ),
            DeltaFallback::Download(e) => {
                write!(f, "delta download refused or failed: {}", crate::error_chain(e))
            }
            DeltaFallback::Spool { what, path, source } => {
                write!(f, "{what} delta spool {}: {source}", path.display())
            }
            DeltaFallback::HeaderMismatch { field, expected, got } => write!(
                f,
                "the delta's header says {field} {got}, the signed metadata says {expected}"
            ),
            DeltaFallback::Decode(e) => {
                write!(f, "delta refused by the decoder: {}", crate::error_chain(e))
            }
            DeltaFallback::ReadBack { expected, got } => write!(
                f,
                "the slot read back after the delta holds {got}, expected the signed sha256 {expected}"
            ),
        }
    }
}

/// A delta the device may use: the release's offer and the delta target's signed description.
#[derive(Clone, Debug)]
pub struct DeltaPlan {
    /// The offer from the release's signed custom metadata (base version, sha256, length).
    pub offer: DeltaOffer,
    /// The delta file as signed targets metadata lists it (length and hashes bound the download).
    pub target: ota_tuf::TargetInfo,
}

/// Decides whether the release's delta `offer` can be tried for `image`: it must be listed in signed
/// targets metadata, smaller than the image, and not the delta whose application the last attempt at
/// this same version was cut short in (`last`; then the full image is the way forward).
pub fn plan(
    offer: &DeltaOffer,
    image: &ImageRef,
    targets: &[ota_tuf::TargetInfo],
    last: Option<&InstallReport>,
) -> Result<DeltaPlan, DeltaFallback> {
    let interrupted = last.is_some_and(|r| {
        r.version == image.version
            && matches!(&r.via, InstallVia::Delta { target } if *target == offer.target)
    });
    if interrupted {
        return Err(DeltaFallback::Interrupted {
            target: offer.target.clone(),
        });
    }
    let target = targets
        .iter()
        .find(|t| t.name == offer.target)
        .cloned()
        .ok_or_else(|| DeltaFallback::NotListed {
            target: offer.target.clone(),
        })?;
    if target.length >= image.length {
        return Err(DeltaFallback::NotSmaller {
            delta: target.length,
            image: image.length,
        });
    }
    Ok(DeltaPlan {
        offer: offer.clone(),
        target,
    })
}

/// Measures the running slot's first `offer.base_length` bytes: the delta is used only if they hash to
/// the offer's base sha256 (the record says what was installed; this says what is there now).
/// Err only when the slot cannot be read.
pub fn check_base<S: Slot + ?Sized>(
    running: &mut S,
    offer: &DeltaOffer,
) -> ota_slot::Result<Result<(), DeltaFallback>> {
    let capacity = running.capacity();
    if offer.base_length > capacity {
        return Ok(Err(DeltaFallback::BaseMismatch {
            expected: offer.base_sha256.to_hex(),
            got: format!("(the slot holds only {capacity} bytes)"),
            length: offer.base_length,
        }));
    }
    let got = ota_slot::slot_sha256(running, offer.base_length)?;
    if got != offer.base_sha256.0 {
        return Ok(Err(DeltaFallback::BaseMismatch {
            expected: offer.base_sha256.to_hex(),
            got: hex::encode(got),
            length: offer.base_length,
        }));
    }
    Ok(Ok(()))
}

/// Checks what the delta's header declares against the signed metadata: its base must be the offer's base
/// and its result the release's image. The decoder checks the result again as it writes.
pub fn check_header(
    header: &ota_delta::DeltaHeader,
    offer: &DeltaOffer,
    image: &ImageRef,
) -> Result<(), DeltaFallback> {
    let mismatch = |field: &'static str, expected: String, got: String| {
        Err(DeltaFallback::HeaderMismatch { field, expected, got })
    };
    if header.old_sha256 != offer.base_sha256.0 {
        return mismatch(
            "base sha256",
            offer.base_sha256.to_hex(),
            hex::encode(header.old_sha256),
        );
    }
    if header.old_len != offer.base_length {
        return mismatch(
            "base length",
            offer.base_length.to_string(),
            header.old_len.to_string(),
        );
    }
    if header.new_sha256 != image.sha256.0 {
        return mismatch(
            "result sha256",
            image.sha256.to_hex(),
            hex::encode(header.new_sha256),
        );
    }
    if header.new_len != image.length {
        return mismatch(
            "result length",
            image.length.to_string(),
            header.new_len.to_string(),
        );
    }
    Ok(())
}

/// Why applying a spooled delta stopped.
#[derive(Debug)]
pub enum ApplyFailure {
    /// The delta (or its spool) is unusable: fall back to the full image.
    Fallback(DeltaFallback),
    /// A slot failed (including a simulated power loss): stop, as the full image would fail the same way.
    Storage(ota_slot::Error),
}

/// Decodes the spooled delta: reads the base from `running[0..offer.base_length]` and writes the new
/// image into `inactive` (which the caller has marked bad). Checks the header against the signed metadata
/// before touching `inactive`. On success the inactive slot holds an image whose sha256 the decoder has
/// computed as it wrote (the caller still reads it back).
pub fn apply_spooled<S: Slot + ?Sized>(
    spool: &Path,
    offer: &DeltaOffer,
    image: &ImageRef,
    (running, inactive): (&mut S, &mut S),
    meter: &mut InstallMeter,
) -> Result<ota_delta::ApplySummary, ApplyFailure> {
    let open = || {
        File::open(spool).map_err(|source| {
            ApplyFailure::Fallback(DeltaFallback::Spool {
                what: "open",
                path: spool.to_owned(),
                source,
            })
        })
    };
    let header = ota_delta::read_header(BufReader::new(open()?))
        .map_err(|e| ApplyFailure::Fallback(DeltaFallback::Decode(e)))?;
    check_header(&header, offer, image).map_err(ApplyFailure::Fallback)?;
    let old = SlotReader::new(running, header.old_len).map_err(ApplyFailure::Storage)?;
    let mut writer = SlotWriter::new(inactive, image.length).map_err(ApplyFailure::Storage)?;
    let delta = BufReader::with_capacity(SPOOL_BUFFER, open()?);
    let metered = MeteredWrite {
        inner: &mut writer,
        meter,
    };
    let summary = ota_delta::apply(old, delta, metered).map_err(classify)?;
    writer.finish().map_err(ApplyFailure::Storage)?;
    Ok(summary)
}

/// A decoder error caused by a slot (read of the base, write of the result) is a storage failure; any
/// other is the delta's fault.
fn classify(e: ota_delta::Error) -> ApplyFailure {
    match e {
        ota_delta::Error::Io { what, source }
            if source
                .get_ref()
                .is_some_and(|inner| inner.is::<ota_slot::Error>()) =>
        {
            match source
                .into_inner()
                .map(|inner| inner.downcast::<ota_slot::Error>())
            {
                Some(Ok(slot)) => ApplyFailure::Storage(*slot),
                // Not reached (the guard checked the type); keep the message rather than lose it.
                other => ApplyFailure::Fallback(DeltaFallback::Decode(ota_delta::Error::Io {
                    what,
                    source: std::io::Error::other(format!("{other:?}")),
                })),
            }
        }
        other => ApplyFailure::Fallback(DeltaFallback::Decode(other)),
    }
}

/// An async sink writing synchronously into a buffered spool file (the agent runs one task; a blocking
/// write of 64 KiB is shorter than a network round trip). Counts the bytes it accepted.
pub struct SpoolSink {
    file: BufWriter<File>,
    /// Bytes accepted so far.
    pub written: u64,
}

impl SpoolSink {
    /// Creates (truncating) the spool file.
    pub fn create(path: &Path) -> Result<SpoolSink, DeltaFallback> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| DeltaFallback::Spool {
                what: "create",
                path: path.to_owned(),
                source,
            })?;
        Ok(SpoolSink {
            file: BufWriter::with_capacity(SPOOL_BUFFER, file),
            written: 0,
        })
    }
}

impl tokio::io::AsyncWrite for SpoolSink {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let n = this.file.write(buf)?;
        this.written = this.written.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().file.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().file.flush())
    }
}

/// Removes the spool file; a missing file is fine, any other failure is only logged (it is garbage by
/// construction and the next delta truncates it).
pub fn remove_spool(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove the delta spool"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::InstallSource;
    use ota_release::{Sha256Digest, Version};
    use ota_slot::FileSlot;

    const SLOT: u64 = 256 * 1024;

    fn firmware(seed: u8, len: usize) -> Vec<u8> {
        // Not compressible, like real code sections (xorshift).
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        v1: Vec<u8>,
        v2: Vec<u8>,
        offer: DeltaOffer,
        image: ImageRef,
        delta: Vec<u8>,
    }

    /// [`apply_spooled`] with no progress meter.
    fn apply_unmetered(
        spool: &Path,
        offer: &DeltaOffer,
        image: &ImageRef,
        slots: (&mut FileSlot, &mut FileSlot),
    ) -> Result<ota_delta::ApplySummary, ApplyFailure> {
        apply_spooled(spool, offer, image, slots, &mut InstallMeter::off())
    }

    impl Fixture {
        fn new() -> Fixture {
            let v1 = firmware(1, 100_000);
            let mut v2 = v1.clone();
            v2[40_000..41_000].copy_from_slice(&firmware(2, 1000));
            let opts = ota_delta::EncodeOptions {
                threads: 1,
                level: 6,
                extreme: false,
                ..ota_delta::EncodeOptions::default()
            };
            let delta = ota_delta::encode(&v1, &v2, &opts).unwrap();
            let offer = DeltaOffer {
                base_version: "1.0.0".parse().unwrap(),
                base_sha256: Sha256Digest::of(&v1),
                base_length: v1.len() as u64,
                target: "gw/deltas/1.0.0.delta".into(),
                length: delta.len() as u64,
            };
            let image = ImageRef {
                target: "gw/2.0.0.img".into(),
                version: "2.0.0".parse().unwrap(),
                sha256: Sha256Digest::of(&v2),
                length: v2.len() as u64,
            };
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                v1,
                v2,
                offer,
                image,
                delta,
            }
        }

        /// Slot A running v1 (possibly altered), slot B holding other bytes.
        fn slots(&self, running: &[u8]) -> (FileSlot, FileSlot) {
            let mut a = FileSlot::create(self.dir.path().join("a.img"), SLOT).unwrap();
            let b = FileSlot::create(self.dir.path().join("b.img"), SLOT).unwrap();
            let mut w = SlotWriter::new(&mut a, running.len() as u64).unwrap();
            w.write_all(running).unwrap();
            w.finish().unwrap();
            (a, b)
        }

        fn spool(&self, delta: &[u8]) -> PathBuf {
            let p = self.dir.path().join(SPOOL_FILE);
            std::fs::write(&p, delta).unwrap();
            p
        }

        fn listed(&self) -> ota_tuf::TargetInfo {
            ota_tuf::TargetInfo {
                name: self.offer.target.clone(),
                length: self.delta.len() as u64,
                hashes: [("sha256".to_owned(), Sha256Digest::of(&self.delta).0.to_vec())].into(),
                custom: serde_json::Value::Null,
            }
        }
    }

    #[test]
    fn a_matching_delta_rebuilds_the_image_and_only_reads_the_running_slot() {
        let f = Fixture::new();
        let (mut a, mut b) = f.slots(&f.v1);
        assert!(check_base(&mut a, &f.offer).unwrap().is_ok());
        let spool = f.spool(&f.delta);
        let summary = apply_unmetered(&spool, &f.offer, &f.image, (&mut a, &mut b)).unwrap();
        assert_eq!(summary.new_sha256, f.image.sha256.0);
        let len = f.v2.len() as u64;
        assert_eq!(ota_slot::slot_sha256(&mut b, len).unwrap(), f.image.sha256.0);
        let v1_len = f.v1.len() as u64;
        assert_eq!(
            ota_slot::slot_sha256(&mut a, v1_len).unwrap(),
            f.offer.base_sha256.0
        );
    }

    #[test]
    fn a_modified_running_slot_is_a_base_mismatch() {
        let f = Fixture::new();
        let mut altered = f.v1.clone();
        altered[77] ^= 1;
        let (mut a, _) = f.slots(&altered);
        let reason = check_base(&mut a, &f.offer).unwrap().unwrap_err();
        assert!(matches!(reason, DeltaFallback::BaseMismatch { .. }), "{reason}");
        assert!(reason.to_string().contains("base mismatch"), "{reason}");
        // A base longer than the slot is a mismatch too, not a storage error.
        let mut long = f.offer.clone();
        long.base_length = SLOT + 1;
        let reason = check_base(&mut a, &long).unwrap().unwrap_err();
        assert!(reason.to_string().contains("holds only"), "{reason}");
    }

    #[test]
    fn a_corrupt_delta_is_refused_by_the_decoder() {
        let f = Fixture::new();
        let (mut a, mut b) = f.slots(&f.v1);
        let mut bad = f.delta.clone();
        let at = ota_delta::HEADER_LEN + (bad.len() - ota_delta::HEADER_LEN) / 2;
        bad[at] ^= 0xff;
        let spool = f.spool(&bad);
        match apply_unmetered(&spool, &f.offer, &f.image, (&mut a, &mut b)) {
            Err(ApplyFailure::Fallback(DeltaFallback::Decode(e))) => {
                assert!(!e.to_string().is_empty())
            }
            other => panic!("{other:?}"),
        }
        // Truncated: also the delta's fault.
        let spool = f.spool(&f.delta[..f.delta.len() / 2]);
        let got = apply_unmetered(&spool, &f.offer, &f.image, (&mut a, &mut b));
        assert!(
            matches!(got, Err(ApplyFailure::Fallback(DeltaFallback::Decode(_)))),
            "{got:?}"
        );
        // Not a delta at all.
        let spool = f.spool(b"<html>404</html>");
        let got = apply_unmetered(&spool, &f.offer, &f.image, (&mut a, &mut b));
        assert!(
            matches!(got, Err(ApplyFailure::Fallback(DeltaFallback::Decode(_)))),
            "{got:?}"
        );
    }

    #[test]
    fn a_header_contradicting_the_signed_metadata_is_refused_before_writing() {
        let f = Fixture::new();
        let (mut a, mut b) = f.slots(&f.v1);
        let before = std::fs::read(f.dir.path().join("b.img")).unwrap();
        let spool = f.spool(&f.delta);
        let mut other_release = f.image.clone();
        other_release.sha256 = Sha256Digest::of(b"another build");
        match apply_unmetered(&spool, &f.offer, &other_release, (&mut a, &mut b)) {
            Err(ApplyFailure::Fallback(DeltaFallback::HeaderMismatch { field, .. })) => {
                assert_eq!(field, "result sha256")
            }
            other => panic!("{other:?}"),
        }
        let mut other_base = f.offer.clone();
        other_base.base_sha256 = Sha256Digest::of(b"another base");
        let got = apply_unmetered(&spool, &other_base, &f.image, (&mut a, &mut b));
        assert!(
            matches!(&got, Err(ApplyFailure::Fallback(DeltaFallback::HeaderMismatch { field, .. })) if *field == "base sha256"),
            "{got:?}"
        );
        assert_eq!(
            std::fs::read(f.dir.path().join("b.img")).unwrap(),
            before,
            "slot untouched"
        );
        // A missing spool is a fallback, not a crash.
        let got = apply_unmetered(&f.dir.path().join("gone"), &f.offer, &f.image, (&mut a, &mut b));
        assert!(
            matches!(got, Err(ApplyFailure::Fallback(DeltaFallback::Spool { .. }))),
            "{got:?}"
        );
    }

    #[test]
    fn plan_needs_a_listed_smaller_delta_not_interrupted_before() {
        let f = Fixture::new();
        let listed = [f.listed()];
        let plan = plan(&f.offer, &f.image, &listed, None).unwrap();
        assert_eq!(plan.target.name, f.offer.target);

        let reason = super::plan(&f.offer, &f.image, &[], None).unwrap_err();
        assert!(matches!(reason, DeltaFallback::NotListed { .. }), "{reason}");

        let mut big = f.listed();
        big.length = f.image.length;
        let reason = super::plan(&f.offer, &f.image, &[big], None).unwrap_err();
        assert!(matches!(reason, DeltaFallback::NotSmaller { .. }), "{reason}");

        // The last attempt at this version was applying this delta when it stopped: full image.
        let mut last = InstallReport {
            version: f.image.version.clone(),
            via: InstallVia::Delta {
                target: f.offer.target.clone(),
            },
            downloaded_bytes: 10,
            delta_fallback: None,
            source: InstallSource::Repository,
        };
        let reason = super::plan(&f.offer, &f.image, &listed, Some(&last)).unwrap_err();
        assert!(reason.to_string().contains("interrupted"), "{reason}");
        // ... but an earlier version's delta install says nothing about this one.
        last.version = Version::new(1, 5, 0);
        assert!(super::plan(&f.offer, &f.image, &listed, Some(&last)).is_ok());
    }
}
