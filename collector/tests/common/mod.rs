//! Shared by the collector's tests: a real `collector` process on 127.0.0.1, devices that sign reports,
//! and row counts read straight from the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{TimeZone as _, Utc};
use ota_report::{
    pae, Channel, Envelope, HardwareId, InstallMethod, Outcome, Reason, Report, ReportSigner, TargetName,
    Version, PAYLOAD_TYPE,
};

pub mod halt_repo;
pub mod pg_server;

// Only the tests that halt by a rule use these.
#[allow(unused_imports)]
pub use halt_repo::{serve_and_trip_the_rule, wait_for_action, Repo};
pub use pg_server::PgDb;

pub fn collector_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_collector"))
}

/// Runs the real binary with `args`.
pub fn collector(args: &[&str]) -> Output {
    collector_bin().args(args).output().unwrap()
}

/// A database in a fresh temporary directory.
pub struct Db {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Db {
    pub fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.db");
        Db { _dir: dir, path }
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// `collector enroll` of this key; panics unless it succeeds.
    pub fn enroll(&self, key: &ed25519_dalek::SigningKey) {
        let hex = hex::encode(key.verifying_key().as_bytes());
        let out = collector(&["enroll", "--db", self.arg(), "--key", &hex]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Rows in each table that holds report data: (reports, release_status, devices with a sequence).
    pub fn rows(&self) -> (i64, i64, i64) {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        (
            count("SELECT COUNT(*) FROM reports"),
            count("SELECT COUNT(*) FROM release_status"),
            count("SELECT COUNT(*) FROM devices WHERE last_sequence IS NOT NULL"),
        )
    }
}

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty store of either backend, and what tests read from it directly.
pub enum StoreDb {
    Sqlite(Db),
    Postgres(PgDb),
}

impl StoreDb {
    pub fn new(backend: Backend) -> StoreDb {
        match backend {
            Backend::Sqlite => StoreDb::Sqlite(Db::new()),
            Backend::Postgres => StoreDb::Postgres(PgDb::new()),
        }
    }

    /// What `open_store` and `--db` take.
    pub fn location(&self) -> &str {
        match self {
            StoreDb::Sqlite(db) => db.arg(),
            StoreDb::Postgres(db) => &db.url,
        }
    }

    /// Runs SQL statements straight on the database.
    pub fn exec(&self, sql: &str) {
        match self {
            StoreDb::Sqlite(db) => rusqlite::Connection::open(&db.path)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            StoreDb::Postgres(db) => db.client().batch_execute(sql).unwrap(),
        }
    }

    /// The rows of a query selecting (text, text, integer).
    pub fn triples(&self, sql: &str) -> Vec<(String, String, i64)> {
        match self {
            StoreDb::Sqlite(db) => {
                let conn = rusqlite::Connection::open(&db.path).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            StoreDb::Postgres(db) => db
                .client()
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
        }
    }

    /// The one integer a query selects (cast to BIGINT in PostgreSQL).
    pub fn count(&self, sql: &str) -> i64 {
        match self {
            StoreDb::Sqlite(db) => rusqlite::Connection::open(&db.path)
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            StoreDb::Postgres(db) => db.client().query_one(sql, &[]).unwrap().get(0),
        }
    }

    /// Rows in each table that holds report data: (reports, release_status, devices with a sequence).
    pub fn rows(&self) -> (i64, i64, i64) {
        (
            self.count("SELECT COUNT(*) FROM reports"),
            self.count("SELECT COUNT(*) FROM release_status"),
            self.count("SELECT COUNT(*) FROM devices WHERE last_sequence IS NOT NULL"),
        )
    }
}

/// `test_fn(backend)` as two tests, `NAME::sqlite` and `NAME::postgres`: a failure names its backend.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::common::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name($crate::common::Backend::Postgres)
            }
        }
    )+};
}

/// A running `collector serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// `db`: a path or any store location `--db` takes.
    pub fn start(db: impl AsRef<std::ffi::OsStr>, extra: &[&str]) -> Server {
        let (child, addr) = ota_testbed::spawn_listening(
            collector_bin()
                .args(["serve", "--listen", "127.0.0.1:0", "--db"])
                .arg(db)
                .args(extra),
        );
        Server {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub fn addr(&self) -> &str {
        self.base.strip_prefix("http://").unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

pub fn device_key(n: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[n; 32])
}

/// A report from `key` on board-a/stable 1.0.0 -> `to`.
pub fn report(
    key: &ed25519_dalek::SigningKey,
    sequence: u64,
    to: &str,
    outcome: Outcome,
    reason: &str,
) -> Report {
    let to_version = Version::parse(to).unwrap();
    Report {
        schema: ota_report::SCHEMA_VERSION,
        device_id: key.public_key().device_id(),
        sequence,
        hardware: HardwareId::new("board-a").unwrap(),
        channel: Channel::new("stable").unwrap(),
        from_version: Version::new(1, 0, 0),
        to_version,
        target: TargetName::new(format!("board-a/stable/{to}/fw.img")).unwrap(),
        outcome,
        reason: Reason::new(reason).unwrap(),
        started: Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap(),
        finished: Utc.with_ymd_and_hms(2026, 12, 7, 9, 3, 0).unwrap(),
        bytes_downloaded: 4096,
        install_method: Some(InstallMethod::Delta),
        reports_dropped: 0,
    }
}

pub fn signed(report: &Report, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    Envelope::sign(report, key).unwrap().to_json()
}

/// An envelope around any payload bytes with a signature by `signer` under `keyid` (for envelopes
/// `Envelope::sign` would never make).
pub fn sealed(payload: &[u8], signer: &ed25519_dalek::SigningKey, keyid: &str) -> Vec<u8> {
    let sig = ReportSigner::sign(signer, &pae(PAYLOAD_TYPE, payload)).unwrap();
    serde_json::to_vec(&serde_json::json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": BASE64.encode(payload),
        "signatures": [{"keyid": keyid, "sig": BASE64.encode(sig)}],
    }))
    .unwrap()
}

/// POSTs `body` to /v1/reports; the status and the JSON answer.
pub async fn post(client: &reqwest::Client, base: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let resp = client
        .post(format!("{base}/v1/reports"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}
