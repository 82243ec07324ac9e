//! The schema, as SQL files applied in order (portable across SQLite and PostgreSQL).

/// One schema change: its number (applied in increasing order, recorded in `schema_version`), its file
/// name and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, from 1, without gaps.
    pub version: u32,
    /// Its file name under `collector/migrations/`.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration this build knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_devices_and_reports.sql",
        sql: include_str!("../migrations/0001_devices_and_reports.sql"),
    },
    Migration {
        version: 2,
        name: "0002_release_counts.sql",
        sql: include_str!("../migrations/0002_release_counts.sql"),
    },
    Migration {
        version: 3,
        name: "0003_rollout_actions.sql",
        sql: include_str!("../migrations/0003_rollout_actions.sql"),
    },
];

/// Created before any migration runs; one row per migration applied.
pub(crate) const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_and_match_file_names() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
        }
    }

    /// Keeps the files readable by PostgreSQL too: no SQLite-only words.
    #[test]
    fn migrations_use_no_sqlite_only_syntax() {
        for m in MIGRATIONS {
            let sql = m.sql.to_ascii_uppercase();
            for word in [
                "AUTOINCREMENT",
                "PRAGMA",
                "WITHOUT ROWID",
                "BLOB",
                "INSERT OR ",
                "DATETIME",
            ] {
                assert!(!sql.contains(word), "{} uses {word}", m.name);
            }
        }
    }
}
