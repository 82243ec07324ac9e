//! Round trips and refusals of the delta codec on random and structured data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Cursor;

use ota_delta::{
    apply, encode, read_header, verify_base, EncodeOptions, Error, Filter, FilterChoice, HEADER_LEN,
    MAX_WINDOW_LOG, SIDE_MAX_WINDOW_LOG,
};
use ota_testbed::noise;
use proptest::prelude::*;

fn fast_opts() -> EncodeOptions {
    EncodeOptions {
        level: 3,
        threads: 2,
        ..EncodeOptions::default()
    }
}

fn round_trip(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Vec<u8> {
    let delta = encode(old, new, opts).unwrap();
    let mut out = Vec::new();
    let summary = apply(Cursor::new(old), delta.as_slice(), &mut out).unwrap();
    assert_eq!(out, new);
    assert_eq!(summary.new_len, new.len() as u64);
    assert_eq!(summary.delta_len, delta.len() as u64);
    delta
}

/// A synthetic x86-64 "text section": calls to a table of functions; `shift` moves the code by inserting
/// bytes near the start, as a rebuild does, so every rel32 after it changes.
fn fake_x86_code(shift: usize, len: usize) -> Vec<u8> {
    let mut code = noise(7, 64);
    code.extend(std::iter::repeat_n(0x90, shift));
    let mut i = 0u32;
    while code.len() < len {
        let pos = code.len() as u32;
        let target = 0x40_0000 + (i.wrapping_mul(2_654_435_761) % 4096) * 64;
        code.extend_from_slice(&[0x48, 0x89, 0xc7]);
        code.push(0xE8);
        code.extend_from_slice(&target.wrapping_sub(pos + 3 + 5).to_le_bytes());
        code.extend_from_slice(&[0x48, 0x83, 0xc4, (i % 97) as u8]);
        i += 1;
    }
    code.truncate(len);
    code
}

#[test]
fn empty_and_tiny_inputs_round_trip() {
    let opts = fast_opts();
    for (old, new) in [
        (&b""[..], &b""[..]),
        (b"", b"x"),
        (b"x", b""),
        (b"abc", b"abd"),
        (b"same", b"same"),
    ] {
        round_trip(old, new, &opts);
    }
}

#[test]
fn small_edit_in_large_random_image_gives_small_delta() {
    let old = noise(1, 3 << 19);
    let mut new = old.clone();
    new[500_000..500_100].copy_from_slice(&noise(2, 100));
    new.splice(1_000_000..1_000_000, noise(3, 5000));
    let delta = round_trip(&old, &new, &fast_opts());
    assert!(
        delta.len() < 10_000,
        "delta of {} bytes for a 5 KiB change",
        delta.len()
    );
}

/// `code` as the one executable section of an ELF64 file for `machine`, after a 4 KiB page of headers.
fn as_elf(machine: u16, code: &[u8]) -> Vec<u8> {
    let mut file = vec![0u8; 4096];
    file[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    file[18..20].copy_from_slice(&machine.to_le_bytes());
    file[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    file[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    file[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    file[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    file[68..72].copy_from_slice(&5u32.to_le_bytes()); // R+X
    file[72..80].copy_from_slice(&4096u64.to_le_bytes()); // p_offset
    file[96..104].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    file.extend_from_slice(code);
    file
}

#[test]
fn x86_filter_beats_plain_matching_on_shifted_code() {
    let old = as_elf(0x3E, &fake_x86_code(0, 1 << 20));
    let new = as_elf(0x3E, &fake_x86_code(37, 1 << 20));
    let only = |f| EncodeOptions {
        filters: FilterChoice::Only(vec![f]),
        ..fast_opts()
    };
    let plain = round_trip(&old, &new, &only(Filter::None));
    let filtered = round_trip(&old, &new, &only(Filter::X86));
    assert!(
        filtered.len() * 5 < plain.len() * 4,
        "x86 {} vs none {}",
        filtered.len(),
        plain.len()
    );
    // Auto tries both and keeps the smaller.
    let auto = round_trip(&old, &new, &fast_opts());
    assert!(
        auto.len() * 20 <= filtered.len() * 21,
        "auto {} vs x86 {}",
        auto.len(),
        filtered.len()
    );
}

#[test]
fn arm64_filter_round_trips_on_branchy_code() {
    let mut old = Vec::new();
    for i in 0..100_000u32 {
        let word = match i % 4 {
            0 => 0x9400_0000 | (i.wrapping_mul(77) & 0x3FF_FFFF),
            1 => 0x9000_0000 | ((i & 0xFFFF) << 5) | 1,
            2 => 0x1400_0000 | (i & 0xFF),
            _ => 0xD503_201F,
        };
        old.extend_from_slice(&word.to_le_bytes());
    }
    let mut new = old.clone();
    new.splice(4000..4000, [0x1F, 0x20, 0x03, 0xD5]);
    let opts = EncodeOptions {
        filters: FilterChoice::Only(vec![Filter::Arm64]),
        ..fast_opts()
    };
    let delta = round_trip(&old, &new, &opts);
    assert_eq!(read_header(delta.as_slice()).unwrap().filter, Filter::Arm64);
}

#[test]
fn image_larger_than_segment_caps_round_trips() {
    // New data unrelated to old forces several 1 MiB extra segments.
    let old = noise(10, 1 << 19);
    let mut new = noise(11, 5 << 19);
    new.extend_from_slice(&old[..300_000]);
    round_trip(&old, &new, &fast_opts());
}

#[test]
fn mismatching_base_is_detected_before_and_after() {
    let old = noise(20, 200_000);
    let mut new = old.clone();
    new[5000] ^= 1;
    let delta = encode(&old, &new, &fast_opts()).unwrap();
    let header = read_header(delta.as_slice()).unwrap();
    verify_base(&header, old.as_slice()).unwrap();
    let mut other = old.clone();
    other[100_000] ^= 0x55;
    let err = verify_base(&header, other.as_slice()).unwrap_err();
    assert!(matches!(err, Error::BaseMismatch { .. }), "{err}");
    // Applying anyway does not silently produce garbage.
    let err = apply(Cursor::new(&other), delta.as_slice(), &mut Vec::new()).unwrap_err();
    assert!(matches!(err, Error::NewDigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("wrong base"), "{err}");
    // A shorter base is reported as such.
    let err = apply(Cursor::new(&old[..1000]), delta.as_slice(), &mut Vec::new()).unwrap_err();
    assert!(matches!(err, Error::OldTooShort { .. }), "{err}");
}

#[test]
fn truncated_delta_is_refused_with_a_clear_error() {
    let old = noise(30, 300_000);
    let mut new = old.clone();
    new.splice(1000..1000, noise(31, 20_000));
    let delta = encode(&old, &new, &fast_opts()).unwrap();
    for cut in [
        0,
        10,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 5,
        delta.len() / 2,
        delta.len() - 1,
    ] {
        let err = apply(Cursor::new(&old), &delta[..cut], &mut Vec::new()).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "cut at {cut}: {err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    let mut longer = delta.clone();
    longer.push(0);
    let err = apply(Cursor::new(&old), longer.as_slice(), &mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Malformed {
                what: "delta end",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn corrupted_delta_never_yields_a_wrong_image() {
    let old = noise(40, 100_000);
    let mut new = old.clone();
    new.splice(500..500, noise(41, 3000));
    new[50_000] = 9;
    let delta = encode(&old, &new, &fast_opts()).unwrap();
    for at in (0..delta.len()).step_by(7) {
        let mut bad = delta.clone();
        bad[at] ^= 0x5a;
        let mut out = Vec::new();
        if apply(Cursor::new(&old), bad.as_slice(), &mut out).is_ok() {
            assert_eq!(out, new, "corruption at {at} accepted with a different result");
        }
    }
}

#[test]
fn header_fields_are_validated() {
    let delta = encode(b"old image", b"new image", &fast_opts()).unwrap();
    let mut bad = delta.clone();
    bad[0] = b'X';
    assert!(matches!(read_header(bad.as_slice()), Err(Error::BadMagic { .. })));
    // Versions 1 to 6 (other diff codings, one filter per file, a region table never compressed) are
    // refused, not misread.
    for old_version in [1u8, 2, 3, 4, 5, 6] {
        let mut bad = delta.clone();
        bad[8] = old_version;
        assert!(matches!(
            read_header(bad.as_slice()),
            Err(Error::UnsupportedVersion { got, supported: 7 }) if got == u16::from(old_version)
        ));
    }
    let mut bad = delta.clone();
    bad[10] = 77;
    assert!(matches!(
        read_header(bad.as_slice()),
        Err(Error::UnknownFilter { id: 77 })
    ));
    let mut bad = delta.clone();
    bad[11] = 5;
    assert!(matches!(
        read_header(bad.as_slice()),
        Err(Error::UnknownCodec { id: 5 })
    ));
    let h = read_header(delta.as_slice()).unwrap();
    assert_eq!((h.old_len, h.new_len), (9, 9));
}

/// AArch64 code: BL, ADRP and B among other instructions; `shift` nops inserted near the start.
fn fake_arm64_code(shift: usize, words: u32) -> Vec<u8> {
    let mut code: Vec<u8> = std::iter::repeat_n([0x1F, 0x20, 0x03, 0xD5], shift)
        .flatten()
        .collect();
    for i in 0..words {
        let pos = code.len() as u32 / 4;
        let target = 0x8000 + (i.wrapping_mul(2_654_435_761) % 2048) * 16;
        let word = match i % 4 {
            0 => 0x9400_0000 | (target.wrapping_sub(pos) & 0x3FF_FFFF),
            1 => 0x9000_0000 | ((i & 0xFFFF) << 5) | 1,
            2 => 0x1400_0000 | (target.wrapping_sub(pos) & 0x3FF_FFFF),
            _ => 0xAA00_03E0 | (i % 31),
        };
        code.extend_from_slice(&word.to_le_bytes());
    }
    code
}

/// Offsets (from the table's start) of each region's filter id byte in a region table.
fn region_id_offsets(table: &[u8], regions: usize) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    for _ in 0..regions {
        for _ in 0..3 {
            while table[at] & 0x80 != 0 {
                at += 1;
            }
            at += 1;
        }
        out.push(at);
        at += 1;
    }
    out
}

/// A filesystem-like image: data, an AArch64 file at a block offset, data. The delta filters the file's
/// code alone (arm64) and round-trips; a broken region table is refused with a clear error.
#[test]
fn arm64_file_inside_an_image_is_filtered_alone_and_bad_region_tables_are_refused() {
    let image = |shift| {
        let mut img = noise(70, 3 << 16);
        img.extend(as_elf(0xB7, &fake_arm64_code(shift, 150_000)));
        img.resize(img.len().next_multiple_of(4096), 0);
        img.extend(noise(71, 1 << 16));
        img
    };
    let (old, new) = (image(0), image(9));
    let plain = round_trip(
        &old,
        &new,
        &EncodeOptions {
            filters: FilterChoice::Only(vec![Filter::None]),
            ..fast_opts()
        },
    );
    let delta = round_trip(&old, &new, &fast_opts());
    let h = read_header(delta.as_slice()).unwrap();
    assert_eq!((h.filter, h.old_regions, h.new_regions), (Filter::Arm64, 1, 1));
    assert!(
        delta.len() < plain.len(),
        "arm64 {} vs none {}",
        delta.len(),
        plain.len()
    );
    let table_len = h.region_table_len as usize;
    let table = &delta[HEADER_LEN..HEADER_LEN + table_len];
    let ids = region_id_offsets(table, 2);
    assert_eq!(ids.last(), Some(&(table_len - 1)));
    let refused = |bad: &[u8]| apply(Cursor::new(&old), bad, &mut Vec::new()).unwrap_err();
    let mut bad = delta.clone();
    bad[HEADER_LEN + ids[1]] = 0;
    assert!(matches!(
        refused(&bad),
        Error::Malformed {
            what: "region table",
            ..
        }
    ));
    bad[HEADER_LEN + ids[1]] = 99;
    let err = refused(&bad);
    assert!(err.to_string().contains("unknown filter id 99"), "{err}");
    // A region past the end of the image.
    let mut bad = delta[..HEADER_LEN].to_vec();
    bad.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x01, 0x10, 0x00, 2]);
    bad.extend_from_slice(&table[ids[0] + 1..]);
    let bad_table_len = (bad.len() - HEADER_LEN) as u32;
    bad[104..108].copy_from_slice(&bad_table_len.to_le_bytes());
    bad.extend_from_slice(&delta[HEADER_LEN + table_len..]);
    let err = refused(&bad);
    assert!(err.to_string().contains("old region 0"), "{err}");
    // Counts above the cap, a table too long for its regions, nonzero reserved bytes, a cut table.
    for (at, value) in [
        (96usize, ota_delta::MAX_REGIONS + 1),
        (104, table_len as u32 + 1),
        (108, 1),
    ] {
        let mut bad = delta.clone();
        bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
        assert!(matches!(refused(&bad), Error::Malformed { .. }), "field at {at}");
    }
    let err = refused(&delta[..HEADER_LEN + table_len - 1]);
    assert!(
        matches!(
            err,
            Error::Truncated {
                what: "the region table",
                ..
            }
        ),
        "{err}"
    );
}

/// A filesystem-like image of many AArch64 files: its region table (a few hundred bytes of varints) is
/// stored as an xz stream, smaller, and round-trips; a table that does not decompress to exactly the
/// declared length is refused as a malformed region table.
#[test]
fn many_regions_are_stored_as_a_compressed_table() {
    let image = |shift| {
        let mut img = Vec::new();
        for k in 0..48 {
            img.extend(noise(80 + k, 4096));
            img.extend(as_elf(0xB7, &fake_arm64_code(shift + k as usize % 3, 3000)));
            img.resize(img.len().next_multiple_of(4096), 0);
        }
        img
    };
    let (old, new) = (image(0), image(5));
    let delta = round_trip(&old, &new, &fast_opts());
    let h = read_header(delta.as_slice()).unwrap();
    assert!(h.new_regions >= 48, "{} regions", h.new_regions);
    assert!(
        h.region_table_raw_len > h.region_table_len,
        "table {} bytes stored, {} raw",
        h.region_table_len,
        h.region_table_raw_len
    );
    let refused = |bad: &[u8]| apply(Cursor::new(&old), bad, &mut Vec::new()).unwrap_err();
    for raw_len in [h.region_table_raw_len - 1, h.region_table_raw_len + 1] {
        let mut bad = delta.clone();
        bad[108..112].copy_from_slice(&raw_len.to_le_bytes());
        let err = refused(&bad);
        assert!(
            matches!(
                err,
                Error::Malformed {
                    what: "region table",
                    ..
                }
            ),
            "{err}"
        );
    }
    let mut bad = delta.clone();
    bad[HEADER_LEN + h.region_table_len as usize / 2] ^= 0x40;
    refused(&bad);
}

#[test]
fn declared_window_above_the_cap_is_refused() {
    let delta = encode(b"old image", b"new image", &fast_opts()).unwrap();
    let header = read_header(delta.as_slice()).unwrap();
    assert!(header.window_logs.iter().all(|&w| w <= MAX_WINDOW_LOG));
    assert!(header.runs_window_log <= SIDE_MAX_WINDOW_LOG);
    for stream in 0..4 {
        let mut bad = delta.clone();
        bad[92 + stream] = MAX_WINDOW_LOG + 1;
        let err = apply(Cursor::new(b"old image"), bad.as_slice(), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, Error::WindowTooLarge { declared, .. } if declared == MAX_WINDOW_LOG + 1),
            "{err}"
        );
    }
}

#[test]
fn stream_asking_for_a_larger_dictionary_than_declared_is_refused() {
    // 2 MiB of new bytes without a match in old get a 2 MiB extra dictionary; the header is then rewritten
    // to claim a 4 KiB one: the decoder must refuse the stream rather than allocate what it asks for.
    let old = noise(50, 64 << 10);
    let new = noise(51, 2 << 20);
    let opts = EncodeOptions {
        filters: FilterChoice::Only(vec![Filter::None]),
        ..fast_opts()
    };
    let delta = encode(&old, &new, &opts).unwrap();
    let header = read_header(delta.as_slice()).unwrap();
    assert_eq!(header.window_logs[2], 21, "{:?}", header.window_logs);
    let mut bad = delta.clone();
    bad[94] = 12;
    let err = apply(Cursor::new(&old), bad.as_slice(), &mut Vec::new()).unwrap_err();
    assert!(matches!(err, Error::Decompress { stream: "extra", .. }), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_pairs_round_trip(old in proptest::collection::vec(any::<u8>(), 0..3000),
                               new in proptest::collection::vec(any::<u8>(), 0..3000)) {
        round_trip(&old, &new, &fast_opts());
    }

    #[test]
    fn edited_copies_round_trip(old in proptest::collection::vec(0u8..4, 0..20_000),
                                edits in proptest::collection::vec((any::<u16>(), 0usize..64, any::<u8>()), 0..20)) {
        let mut new = old.clone();
        for (at, len, byte) in edits {
            let at = usize::from(at) % (new.len() + 1);
            if byte % 2 == 0 {
                new.splice(at..at, std::iter::repeat_n(byte, len));
            } else {
                let end = (at + len).min(new.len());
                new.drain(at..end);
            }
        }
        round_trip(&old, &new, &EncodeOptions { filters: FilterChoice::Only(Filter::ALL.to_vec()), ..fast_opts() });
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
        let delta = encode(b"base", b"next", &fast_opts()).unwrap();
        let mut bad = delta[..HEADER_LEN].to_vec();
        bad.extend_from_slice(&tail);
        let mut out = Vec::new();
        if apply(Cursor::new(b"base"), bad.as_slice(), &mut out).is_ok() {
            prop_assert_eq!(out, b"next".to_vec());
        }
    }
}

#[test]
fn fuzzing_entry_point_survives_mutations_of_a_valid_input() {
    // The fuzz target's input layout: byte 0 = old length / 4, then old, then the delta.
    let old: Vec<u8> = noise(60, 400);
    let mut new = old.clone();
    new.splice(100..100, *b"inserted");
    let delta = encode(&old, &new, &fast_opts()).unwrap();
    let mut input = vec![100u8];
    input.extend_from_slice(&old);
    input.extend_from_slice(&delta);
    ota_delta::fuzzing::fuzz_decode(&input);
    for at in (0..input.len()).step_by(3) {
        let mut bad = input.clone();
        bad[at] = bad[at].wrapping_add(1 + (at % 200) as u8);
        ota_delta::fuzzing::fuzz_decode(&bad);
        ota_delta::fuzzing::fuzz_decode(&bad[..at]);
    }
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1024);
    let mut opts = xz2::stream::LzmaOptions::new_preset(1).unwrap();
    opts.dict_size(4096);
    let mut filters = xz2::stream::Filters::new();
    filters.lzma2(&opts);
    let mut s = xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::None).unwrap();
    s.process_vec(data, &mut out, xz2::stream::Action::Run).unwrap();
    while s.process_vec(&[], &mut out, xz2::stream::Action::Finish).unwrap() != xz2::stream::Status::StreamEnd
    {
        out.reserve(1024);
    }
    out
}

/// A delta of one hand-made segment after `header`: the given raw control, extra, zero-run and
/// literal-length bytes, `diff_raw`, and an already compressed literal chunk.
fn crafted_delta(header: &[u8], raw: [&[u8]; 4], diff_raw: u64, literals_xz: &[u8]) -> Vec<u8> {
    let mut crafted = header[..HEADER_LEN].to_vec();
    crafted.push(1);
    let chunks: Vec<Vec<u8>> = raw.iter().map(|r| xz(r)).collect();
    for (r, c) in raw.iter().zip(&chunks) {
        crafted.extend_from_slice(&(r.len() as u32).to_le_bytes());
        crafted.extend_from_slice(&(c.len() as u32).to_le_bytes());
    }
    crafted.extend_from_slice(&diff_raw.to_le_bytes());
    crafted.extend_from_slice(&(literals_xz.len() as u32).to_le_bytes());
    for c in &chunks {
        crafted.extend_from_slice(c);
    }
    crafted.extend_from_slice(literals_xz);
    crafted.push(0);
    crafted
}

#[test]
fn literal_stream_ending_before_the_control_entries_is_refused_not_hung() {
    let old = vec![7u8; 64];
    let delta = encode(&old, &old, &fast_opts()).unwrap();
    // One entry (count 1) adding 10 bytes, one pair (0 zeros, 10 literals), but the literal stream holds 5 bytes
    // and then junk.
    let mut literals = xz(&[1u8; 5]);
    literals.extend_from_slice(b"junk after the end of the stream");
    let crafted = crafted_delta(&delta, [&[1, 10, 0, 0], &[], &[0], &[10]], 10, &literals);
    let err = apply(Cursor::new(&old), crafted.as_slice(), &mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Malformed {
                what: "compressed stream",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("literal stream ended after 5 of the 10 bytes"),
        "{err}"
    );
}

#[test]
fn run_lengths_that_disagree_with_the_control_entries_are_refused() {
    let old = vec![7u8; 64];
    let delta = encode(&old, &old, &fast_opts()).unwrap();
    let literals = xz(&[1u8; 10]);
    let cases: [(&[u8], &[u8], &str); 4] = [
        // A pair covering more diff bytes than the segment declares.
        (
            &[0x80, 0x80, 0x80, 0x80, 0x01],
            &[10],
            "exceeds the segment's 10 diff bytes left",
        ),
        // A zero run without its literal length, and the reverse.
        (&[0], &[], "literal-length stream ended"),
        (&[], &[10], "zero-run stream ended"),
        // A pair left over after the add steps consumed the segment's diff.
        (&[0, 0], &[10, 0], "1 zero-run and 1 literal-length bytes"),
    ];
    for (zeros, lengths, expected) in cases {
        let crafted = crafted_delta(&delta, [&[1, 10, 0, 0], &[], zeros, lengths], 10, &literals);
        let err = apply(Cursor::new(&old), crafted.as_slice(), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Malformed {
                    what: "diff run lengths",
                    ..
                }
            ),
            "{expected}: {err}"
        );
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
}

/// Matching splits new into one range per thread above 1 MiB; every range must start aligned with the same
/// offset in old, or a later range codes its first stretch against old's beginning (a regression: a 2 MiB
/// image with a few changed KiB gave an 8x larger delta with two threads than with one).
#[test]
fn matching_in_parallel_ranges_is_as_small_as_one_range() {
    let old = noise(11, 2 << 20);
    let mut new = old.clone();
    for at in [100_000usize, 700_000, 1_300_000, 1_900_000] {
        new[at..at + 2048].copy_from_slice(&noise(at as u64, 2048));
    }
    let one = EncodeOptions {
        threads: 1,
        filters: FilterChoice::Only(vec![Filter::None]),
        ..fast_opts()
    };
    let two = EncodeOptions {
        threads: 2,
        ..one.clone()
    };
    let single = round_trip(&old, &new, &one).len();
    let parallel = round_trip(&old, &new, &two).len();
    assert!(
        parallel <= single + single / 10 + 256,
        "two threads gave {parallel} bytes, one thread {single}"
    );
}

/// Issue 22: the I/O error's message names what was being done, and its cause is the source alone,
/// so a binary printing the chain (`{:#}`) shows the OS error once.
#[test]
fn an_io_error_names_its_cause_once_in_the_chain() {
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let err = read_header(Failing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(!err.to_string().contains("disk on fire"), "{err}");
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert_eq!(chain.matches("disk on fire").count(), 1, "{chain}");
}
