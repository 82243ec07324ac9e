//! The delta codec: binary deltas between firmware images, encoded by the publisher ([`encode`]) and
//! decoded on the device ([`apply`]) in memory bounded by a small constant, whatever the image size.
//!
//! What it does not do: it knows nothing of TUF, slots or the network. It does not check the base image's
//! digest while applying (the caller compares the running slot's digest with [`DeltaHeader::old_sha256`]
//! up front, or calls [`verify_base`]), but it always checks the produced image's length and sha256 against
//! the header and fails with [`Error::NewDigestMismatch`] / [`Error::NewLengthMismatch`] otherwise.
//!
//! Main types: [`EncodeOptions`] (publisher knobs), [`DeltaHeader`] (what a delta declares about itself),
//! [`Filter`] (the executable-aware pre-filters), [`ApplySummary`] and the crate's one [`Error`].
//!
//! # How it works
//! The encoder follows bsdiff: a suffix array of the old image (libsais, SA-IS family) finds long matches,
//! which are extended approximately forwards and backwards; each step of the patch is a control entry
//! `(add_len, copy_len, seek)`: add `add_len` bytes of "diff" (new minus old, bytewise) to old starting at
//! the current old offset, then copy `copy_len` literal "extra" bytes, then move the old offset by `seek`.
//! The diff is mostly zeros (bytes that matched) with scattered small differences, so it is coded as run
//! lengths: pairs (zero run, literal run) in two streams of varints, and the literal bytes in a third; this
//! codes 5-20 times fewer bytes than the raw diff (so compression takes seconds, not minutes) and comes
//! out smaller than LZMA2 on the raw diff on most binaries. In an ELF file's data (after its executable
//! segments) zeros may stay inside literal runs: gaps of up to 4, or all of them, so that LZMA2 sees the
//! data's raw diff (Go's tables: 4% smaller), as windows of the data sampled both ways decide. In the
//! code (all of an image that is no 64-bit ELF file) zeros may stay literals too, from an add's first
//! change to its end, so LZMA2 sees the code's raw diff as bsdiff's compressor does: where changed
//! references are dense (ARM code: every ADRP/ADD and BL word that points across a moved function) the
//! positions cost less as zeros among literals than as run lengths (systemd-arm64 -32%); windows of the
//! code sampled both ways decide, and the ARM code regions of a filesystem image are always coded raw
//! (rootfs-arm64 -16%). The decoder reads any split alike. The five streams (control, extra, zero runs, literal lengths,
//! literals) are compressed separately with xz/LZMA2 (they have very different statistics).
//! Before matching, the machine code in both images may be passed through a [`Filter`] that rewrites
//! relative branch and data references into absolute ones, as xz's BCJ filters do, so that code that
//! merely moved matches exactly. Filters run per region: only over the executable sections of ELF files
//! (the image itself, or the files inside a filesystem image, found at 512-byte aligned offsets), each
//! file's code with its own machine's transform (x86-64 `E8`/`E9` rel32 and RIP-relative disp32; AArch64
//! `BL`/`B` imm26 and `ADRP`; 32-bit ARM `BL`; Thumb-2 `BL`) and branch arithmetic relative to the file's
//! start, so a file the filesystem moved filters to the same bytes. Data, and input with no ELF file, is
//! never filtered. The delta lists each image's regions; the decoder filters old reads and undoes the
//! filter on its output over exactly those regions. A sample of four windows picks, among the plausible
//! candidates (no filter; data references alone; data references and branches), the one that runs in full.
//!
//! # Format (version 7)
//! ```text
//! header (112 bytes, little endian)
//!   0  magic "OTADELTA"          8  format version u16 (7)  10 filter id u8   11 codec id u8 (1 = xz/LZMA2)
//!      (the filter of most filtered bytes; filter ids: 0 none, 1 x86 calls/jumps, 2 arm64, 3 x86
//!       RIP-relative, 4 x86 calls/jumps and RIP-relative, 5 arm64 ADRP alone, 6 ARM BL, 7 Thumb-2 BL)
//!   12 old_len u64   20 old_sha256 [32]   52 new_len u64   60 new_sha256 [32]
//!   92 dictionary logs u8 x4: control (<= SIDE_MAX_WINDOW_LOG), literals, extra (<= MAX_WINDOW_LOG),
//!      zero runs and literal lengths (<= SIDE_MAX_WINDOW_LOG)
//!   96 old regions u32   100 new regions u32 (each <= MAX_REGIONS)   104 region table length u32
//!   108 region table decompressed length u32 (0: the table is stored as is; else it is an xz stream
//!       that decodes to exactly this many bytes, at most the cap of a raw table)
//! region table: the old image's regions then the new's, each: varints (gap since the previous region's
//!   end, length, distance back to the file's start) and a filter id u8 (not 0); regions in order,
//!   disjoint, inside their image
//! then segments, each:
//!   tag u8 (1 = segment, 0 = end of delta; nothing may follow the end tag)
//!   control_raw u32 (<= SEGMENT_CONTROL_MAX)  control_xz u32
//!   extra_raw   u32 (<= SEGMENT_EXTRA_MAX)    extra_xz   u32
//!   zeros_raw   u32 (<= SEGMENT_RUNS_MAX)     zeros_xz   u32
//!   lengths_raw u32 (<= SEGMENT_RUNS_MAX)     lengths_xz u32
//!   diff_raw    u64 (diff bytes of the add steps)   literals_xz u32
//!   the control, extra, zero-run, literal-length and literal chunks, in that order
//! ```
//! Each of the five streams is one continuous xz stream (LZMA2, no check: the result's sha256 is checked)
//! across all segments (so its dictionary carries over), sync-flushed at every segment end, so the decoder
//! can consume a segment as soon as it has read it. (The encoder may cut a long literal stream into xz
//! blocks compressed on several threads, each block ending at a segment's end at the latest: one .xz
//! stream still, read alike.) A segment's control bytes are LEB128 varints grouped by
//! field: the entry count, then every `add_len`, every `copy_len`, every zigzag `seek`. A segment's diff
//! (`diff_raw` bytes, its add steps' in order) is the concatenation, over its pairs, of `zeros` zero bytes
//! then `literals` bytes of the literal stream. Bytes are added to old in runs of changed bytes (new != old;
//! a run starts at the segment start or after an unchanged byte): a run's first [`CARRY_BYTES`] bytes are one
//! little-endian integer added with carry (the carry out of the last of them is dropped), the rest bytewise.
//! The decoder buffers one segment's control, extra and run-length bytes (all capped) and streams the
//! literals; old is read through a block cache (2 MiB), new is written strictly sequentially. The dictionaries
//! are capped: a header declaring more is refused before anything is allocated, and liblzma's memory limit
//! refuses a stream whose own header asks for more than the delta header declared.
#![deny(missing_docs)]
// Deltas come from outside: a narrowing or sign-changing `as` is either replaced by a checked conversion or
// allowed on the smallest item with the reason it cannot lose bits.
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]

mod coding;
mod decode;
mod elf;
mod encode;
mod filter;
mod format;
mod matching;
mod suffix;

pub use decode::{apply, read_header, verify_base, ApplySummary};
pub use encode::{
    encode, encode_owned, encode_with_progress, EncodeOptions, EncodeStage, FilterChoice, MAX_INPUT_LEN,
};
pub use filter::Filter;
pub use format::{
    DeltaHeader, CARRY_BYTES, FORMAT_VERSION, HEADER_LEN, MAX_REGIONS, MAX_WINDOW_LOG, SEGMENT_CONTROL_MAX,
    SEGMENT_EXTRA_MAX, SEGMENT_RUNS_MAX, SIDE_MAX_WINDOW_LOG,
};

/// Everything that can go wrong while encoding or applying a delta.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the delta, the old image or writing the new image failed.
    #[error("I/O error while {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The delta does not start with the magic bytes: it is not an ota-delta file.
    #[error("not an ota-delta file: magic is {got:02x?}, expected \"OTADELTA\"")]
    BadMagic {
        /// The first eight bytes found.
        got: [u8; 8],
    },
    /// The delta's format version is not one this decoder knows.
    #[error("unsupported delta format version {got}, this decoder supports {supported}")]
    UnsupportedVersion {
        /// The version in the header.
        got: u16,
        /// The version this build supports.
        supported: u16,
    },
    /// The delta names a filter this decoder does not know.
    #[error("unknown filter id {id} in delta header")]
    UnknownFilter {
        /// The id found.
        id: u8,
    },
    /// The delta names a stream codec this decoder does not know.
    #[error("unknown codec id {id} in delta header")]
    UnknownCodec {
        /// The id found.
        id: u8,
    },
    /// The delta declares a compression window larger than the decoder's memory budget allows.
    #[error("delta {stream} stream declares a window of 2^{declared} bytes, above the cap of 2^{max}")]
    WindowTooLarge {
        /// Which stream.
        stream: &'static str,
        /// The declared window log.
        declared: u8,
        /// The cap ([`MAX_WINDOW_LOG`]).
        max: u8,
    },
    /// The delta ended before a complete structure was read.
    #[error("delta truncated at byte {offset}: expected {what}")]
    Truncated {
        /// What was expected there.
        what: &'static str,
        /// Offset in the delta where it ended.
        offset: u64,
    },
    /// A structure in the delta is invalid.
    #[error("malformed delta at byte {offset}: {what}: {detail}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// Offset in the delta (of the structure or of the segment holding it).
        offset: u64,
        /// What is wrong, with the values found.
        detail: String,
    },
    /// A compressed stream in the delta could not be decoded.
    #[error("corrupt {stream} stream in the segment at delta byte {offset}")]
    Decompress {
        /// Which stream.
        stream: &'static str,
        /// Offset of the segment.
        offset: u64,
        /// The decoder's complaint.
        #[source]
        source: std::io::Error,
    },
    /// The delta asks to read old bytes outside the old image.
    #[error("delta reads old image at {offset}..{end}, but the old image is {old_len} bytes")]
    OldOutOfBounds {
        /// Start of the read (may be negative after a bad seek).
        offset: i64,
        /// End of the read.
        end: i64,
        /// The old image's length from the header.
        old_len: u64,
    },
    /// The old image given is shorter than the header says.
    #[error("old image ended at {got} bytes, the delta expects {expected}")]
    OldTooShort {
        /// Length from the header.
        expected: u64,
        /// Bytes actually available.
        got: u64,
    },
    /// The base image is not the one the delta was made against.
    #[error("base image mismatch: delta expects {expected_len} bytes with sha256 {expected}, got {got_len} bytes with sha256 {got}")]
    BaseMismatch {
        /// Expected sha256 (hex).
        expected: String,
        /// Actual sha256 (hex).
        got: String,
        /// Expected length.
        expected_len: u64,
        /// Actual length.
        got_len: u64,
    },
    /// The delta produced a different number of bytes than its header declares.
    #[error("delta produced {got} bytes, its header declares {expected}")]
    NewLengthMismatch {
        /// Length from the header.
        expected: u64,
        /// Bytes produced.
        got: u64,
    },
    /// The produced image's sha256 differs from the header's: wrong base or corrupt delta.
    #[error("result sha256 {got} differs from the delta's declared {expected} (wrong base image or corrupt delta)")]
    NewDigestMismatch {
        /// Declared sha256 (hex).
        expected: String,
        /// sha256 of what was produced (hex).
        got: String,
    },
    /// An input to the encoder exceeds what the format or the suffix array supports.
    #[error("{what} is {len} bytes, the encoder supports at most {max}")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// xz refused to compress (bad parameters or out of memory).
    #[error("compressing the {stream} stream failed")]
    Compress {
        /// Which stream.
        stream: &'static str,
        /// The encoder's complaint.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `here` on this thread and, when `parallel`, `beside` on a thread of its own meanwhile (else after
/// `here`); returns both results. A panic in `beside` is resumed on this thread.
pub(crate) fn run_both<A: Send, B>(
    parallel: bool,
    beside: impl FnOnce() -> A + Send,
    here: impl FnOnce() -> B,
) -> (A, B) {
    if !parallel {
        let b = here();
        return (beside(), b);
    }
    std::thread::scope(|scope| {
        let other = scope.spawn(beside);
        let b = here();
        let a = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (a, b)
    })
}

/// Entry points for `cargo fuzz` (see `fuzz/fuzz_targets/delta_decode.rs`). Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::io::Cursor;

    /// Splits `data` into an old image and a delta, applies it: must never panic nor allocate without
    /// bound. When the input is a short "encode" request instead (first byte odd), checks that
    /// encode → apply round-trips.
    pub fn fuzz_decode(data: &[u8]) {
        let Some((&first, rest)) = data.split_first() else {
            return;
        };
        let split = usize::from(first) * 4;
        let (old, delta) = rest.split_at(split.min(rest.len()));
        // The output is bounded by the declared length; keep the fuzzer's memory small.
        if crate::read_header(delta).is_ok_and(|h| h.new_len <= 16 << 20) {
            let mut out = Vec::new();
            // Any outcome but a panic is fine; success implies the declared digest matched.
            if let Ok(summary) = apply(Cursor::new(old), delta, &mut out) {
                assert_eq!(summary.new_len, out.len() as u64);
            }
        }
        // Every filter inverts on any bytes at any block-aligned start, over any region.
        let start = u64::from(first) * crate::filter::FILTER_BLOCK as u64;
        let lo = start + u64::from(first) * 37 % (rest.len() as u64 + 1);
        for filter in crate::Filter::ALL {
            let region = crate::filter::Region {
                lo,
                hi: lo + 4096,
                base: lo.saturating_sub(u64::from(first) * 3),
                filter,
            };
            for map in [filter.everywhere(), crate::filter::RegionMap::new(vec![region])] {
                let mut buf = rest.to_vec();
                map.encode_in_place(&mut buf, start);
                map.decode_in_place(&mut buf, start);
                assert!(buf == rest, "filter {filter} does not invert");
            }
        }
        if first & 1 == 1 && rest.len() < 4096 {
            let (old, new) = rest.split_at(rest.len() / 2);
            let opts = super::EncodeOptions {
                threads: 1,
                level: 1,
                extreme: false,
                ..super::EncodeOptions::default()
            };
            let delta = match super::encode(old, new, &opts) {
                Ok(delta) => delta,
                Err(e) => panic!("encode failed: {e}"),
            };
            let mut again = Vec::new();
            let applied = apply(Cursor::new(old), delta.as_slice(), &mut again);
            assert!(applied.is_ok(), "round trip failed: {applied:?}");
            assert_eq!(again, new);
        }
    }

    use super::apply;
}
