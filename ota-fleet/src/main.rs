//! `ota-drill`: runs a fleet drill and writes its report. See the ota-fleet crate doc.
fn main() {}
