//! The device's TUF client: the specification's client workflow in pure Rust, streaming verified targets into any sink.
#![deny(missing_docs)]
