//! repo-tool: the release engineer's CLI that builds and maintains a TUF repository of firmware releases.
#![deny(missing_docs)]
