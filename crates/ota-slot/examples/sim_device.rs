//! Creates the storage of a simulated device for scripts (scripts/bench-agent.sh): two file slots of
//! `CAPACITY` bytes (`slot-a.img`, `slot-b.img`, sparse, reading as zeros) and a simulated bootloader
//! environment (`bootenv`) that boots slot A. The agent's configuration and provisioning are the
//! script's job.
//!
//! `cargo run --release -p ota-slot --example sim_device -- DIR CAPACITY`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use ota_slot::{FileSlot, SimBootloader, SlotId};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(capacity)) = (args.next(), args.next()) else {
        eprintln!("usage: sim_device DIR CAPACITY_BYTES");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let capacity: u64 = capacity.parse().expect("CAPACITY_BYTES: a number of bytes");
    std::fs::create_dir_all(&dir).expect("create the device directory");
    for id in [SlotId::A, SlotId::B] {
        FileSlot::create(dir.join(format!("slot-{id}.img")), capacity).expect("create a file slot");
    }
    SimBootloader::create_file(dir.join("bootenv"), SlotId::A).expect("create the simulated boot env");
}
