//! Benchmark: stream an image into a file slot with `SlotWriter`, read it back with `slot_sha256`, and
//! compare with a plain `std::fs` write + read-and-hash of the same bytes. Prints a table with wall times,
//! throughput and the process's peak RSS (VmHWM), which must stay bounded whatever the image size.
//!
//! `cargo run --release -p ota-slot --example slot_throughput -- [MiB] [dir]` (default 1024 MiB, /var/tmp)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{Read, Write};
use std::time::Instant;

use ota_slot::{slot_sha256, FileSlot, SlotWriter};
use sha2::{Digest, Sha256};

const BLOCK: usize = 64 * 1024;

/// Deterministic, incompressible-ish image bytes produced block by block (never the whole image).
fn fill(block: &mut [u8], index: u64) {
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args
        .get(1)
        .map(|s| s.parse().expect("size in MiB"))
        .unwrap_or(1024);
    let dir = tempfile::tempdir_in(args.get(2).map(String::as_str).unwrap_or("/var/tmp")).unwrap();
    let len = mib * 1024 * 1024;
    let blocks = len / BLOCK as u64;
    let mut block = vec![0u8; BLOCK];
    let mut rows: Vec<(&str, f64)> = Vec::new();

    // Baseline: write the file with std::fs, fsync, then read it back and hash it.
    let plain = dir.path().join("plain.img");
    let t = Instant::now();
    let mut f = File::create(&plain).unwrap();
    for i in 0..blocks {
        fill(&mut block, i);
        f.write_all(&block).unwrap();
    }
    rows.push(("std::fs write", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    f.sync_data().unwrap();
    drop(f);
    rows.push(("std::fs fdatasync", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let mut f = File::open(&plain).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let plain_digest: [u8; 32] = hasher.finalize().into();
    rows.push(("std::fs read + sha256", t.elapsed().as_secs_f64()));
    std::fs::remove_file(&plain).unwrap();

    // The slot path: FileSlot + SlotWriter (erase-ahead, chunking, finish = fdatasync), then slot_sha256.
    let mut slot = FileSlot::create(dir.path().join("slot_b"), len).unwrap();
    let t = Instant::now();
    let mut w = SlotWriter::new(&mut slot, len).unwrap();
    for i in 0..blocks {
        fill(&mut block, i);
        w.write_all(&block).unwrap();
    }
    rows.push(("SlotWriter into FileSlot", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    w.finish().unwrap();
    rows.push(("SlotWriter::finish (fdatasync)", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let digest = slot_sha256(&mut slot, len).unwrap();
    rows.push(("slot_sha256 read-back", t.elapsed().as_secs_f64()));
    assert_eq!(digest, plain_digest, "slot holds the same bytes");

    println!("image: {mib} MiB in {}", dir.path().display());
    println!("| {:<40} | {:>8} | {:>9} |", "step", "seconds", "MiB/s");
    println!("|{:-<42}|{:-<10}|{:-<11}|", "", "", "");
    for (name, secs) in &rows {
        println!("| {name:<40} | {secs:>8.3} | {:>9.0} |", mib as f64 / secs);
    }
    println!(
        "peak RSS (VmHWM) of this process: {:.1} MiB",
        peak_rss_kib() as f64 / 1024.0
    );
}
