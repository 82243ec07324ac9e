//! The fleet collector: enrols device keys, takes in signed update reports over HTTP, stores each one it
//! accepts and summarizes every release from them.
//!
//! **What it does.** [`Ingest::accept`] turns the exact bytes a device sent into a stored report or a
//! refusal naming why: the body is bounded before it is read, parsed as an [`ota_report::Envelope`], the
//! signing key looked up among the enrolled devices (by the signature's `keyid`, a hint only), the DSSE
//! signature verified over the bytes received, and the report stored by [`Store::insert_report`], whose
//! transaction (a savepoint of its own inside a group commit, for SQLite) re-checks enrolment and
//! revocation and refuses a sequence number not above the device's last (replay), all in one. Nothing
//! refused is stored. [`http::router`] serves it as `POST /v1/reports` and the
//! [`Summary`] as `GET /v1/summary`; [`http::serve`] bounds slow clients (header and body read timeouts).
//! [`dashboard`] adds a read-only web page at `GET /` and the fleet over time, [`History`], at
//! `GET /v1/history`. [`http::serve_tls`] serves the same over mutual TLS ([`tls`]): only an enrolled, unrevoked device's
//! certificate completes the handshake, and a report must be signed by the device of its connection.
//! [`parse_device_key`] reads what an operator enrols: a key in hex, or the text `device-agent provision`
//! prints.
//!
//! **Storage.** One trait, [`Store`], two implementations: [`SqliteStore`] (embedded, WAL mode, the
//! default) and [`PostgresStore`] (a server on this machine, for a fleet that outgrows one file), chosen by
//! [`open_store`] from a path or `sqlite:` URL, or a `postgres://` / `postgresql://` URL. The schema lives
//! in `migrations/NNNN_name.sql`, applied in order by both, each in its own transaction recorded in
//! `schema_version`. The SQL is kept portable (only `TEXT`, `BIGINT` and `INTEGER` columns, times as Unix
//! milliseconds, the raw envelope as text since an accepted one is UTF-8 JSON, no `AUTOINCREMENT`, upserts
//! as `INSERT .. ON CONFLICT .. DO UPDATE`, which both SQLite 3.24+ and PostgreSQL 9.5+ read). Each
//! report's transaction also keeps `release_status` (every device's latest report per release) and
//! `release_counts` (devices per release and outcome) up to date, so the summary reads a few rows per
//! release however many reports are stored. Both stores commit reports in groups (several per
//! transaction, each under its own savepoint, each caller answered after its commit); SQLite through its
//! one writer, PostgreSQL in parallel lanes with the device row locked by the sequence check (see
//! `pg.rs`). Messages naming a store URL hide its password ([`redact_url`]).
//!
//! **Automatic halt.** [`halt::AutoHalt`] judges each rollout's open wave by its [`halt::HaltRule`]s
//! after reports are stored and, with the rollout-control, snapshot and timestamp keys, signs and
//! publishes a halt to the repository (else it only alerts); every halt and alert is stored
//! ([`RolloutAction`]) and shown by the [`Summary`], as is the count of reports the devices' queues
//! dropped. [`halt::summary_with_waves`] adds each release's waves, placed by the repository's plans.
//!
//! **Dashboard.** [`dashboard`] serves a read-only page of the fleet over time ([`History`]).
//!
//! **What it does not do (yet).** The `wave` columns stay empty (waves are placed from the repository's
//! plans when read). It never talks to devices beyond answering their reports.
//!
//! **Main types.** [`Store`], [`SqliteStore`], [`PostgresStore`], [`Ingest`], [`Summary`], [`History`],
//! [`Error`].
#![deny(missing_docs)]

mod actions;
pub mod dashboard;
mod error;
pub mod halt;
pub mod history;
pub mod http;
mod ingest;
mod keys;
mod migrations;
mod pg;
mod sqlite;
mod store;
mod summary;
pub mod tls;

pub use actions::{ActionKind, DeviceStatus, LineDevice, ReportRef, RolloutAction, MAX_ACTION_REPORTS};
pub use error::{Error, Result};
pub use history::{History, ReleaseAction, ReleaseHistory, StateCounts, Status, WaveHistory};
pub use ingest::{Accepted, Ingest};
pub use keys::parse_device_key;
pub use migrations::{Migration, MIGRATIONS};
pub use pg::PostgresStore;
pub use sqlite::SqliteStore;
pub use store::{
    open_store, redact_url, EnrolledDevice, Enrolment, LineEnrolment, ReportDone, Store, StoredReport,
};
pub use summary::{ReasonCount, ReleaseSummary, Summary, WaveSummary};
