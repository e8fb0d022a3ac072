//! The schema's migrations: SQL files in `cms-server/migrations/`, built
//! into the binary, applied in order when a store opens.
//!
//! Several replicas may start at once against one new database: each
//! applies the missing migrations inside one transaction that first takes
//! `pg_advisory_xact_lock(MIGRATION_LOCK)`, so the others wait, then find
//! them recorded in `schema_migrations` and apply nothing. A migration and
//! its record commit together, so a crash leaves none half-applied. A
//! database with a migration this binary does not know (a newer server
//! migrated it) is refused rather than used with the wrong schema.

use deadpool_postgres::Pool;

use super::Failure;
use crate::store::StoreError;

/// One migration: its number, its name, its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order; the last is the schema this binary uses.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("../../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_dashboard_sessions",
        sql: include_str!("../../../migrations/0002_dashboard_sessions.sql"),
    },
    Migration {
        version: 3,
        name: "0003_dashboard_tokens",
        sql: include_str!("../../../migrations/0003_dashboard_tokens.sql"),
    },
    Migration {
        version: 4,
        name: "0004_dashboard_session_tokens",
        sql: include_str!("../../../migrations/0004_dashboard_session_tokens.sql"),
    },
];

/// The advisory lock id held while migrating: "cms" and 1, any fixed
/// number no other application of the database uses.
pub const MIGRATION_LOCK: i64 = 0x636d_7300_0000_0001;

/// Applies the migrations the database lacks, under the lock. Returns the
/// versions it applied (empty when the schema was current).
pub async fn migrate(pool: Pool, target: String) -> Result<Vec<i32>, Failure> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let applied: Vec<i32> = transaction
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(&newest) = applied.last()
        && newest > known
    {
        return Err(Failure::Store(StoreError::SchemaTooNew {
            target,
            found: newest,
            known,
        }));
    }
    let mut newly = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        transaction.batch_execute(migration.sql).await?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .await?;
        newly.push(migration.version);
    }
    transaction.commit().await?;
    Ok(newly)
}
