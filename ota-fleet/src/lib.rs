//! Field rollback drills: a simulated fleet running the real device-agent code against one repository, with faults injected.
#![deny(missing_docs)]
