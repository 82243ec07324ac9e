//! device-agent: the daemon that installs signed firmware into the inactive A/B slot, trial-boots it, and commits or rolls back.
#![deny(missing_docs)]
