//! Whether a database has exactly this binary's migrations applied. The API and the workers
//! check it at start instead of migrating: only the migration step (`blindfold admin migrate`,
//! the Kubernetes migrate Job) runs with rights to change the schema.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgPool;
use sqlx::migrate::Migrate as _;

use crate::MIGRATOR;

/// What to do about a schema that is not current, appended to every [`SchemaError`] that an
/// operator can fix.
const REMEDY: &str = "run `blindfold admin migrate` (in Kubernetes: the blindfold-migrate Job) with the schema \
                      owner's credentials";

/// Why the database's schema is not the one this binary was built for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// No migration was ever applied (`_sqlx_migrations` does not exist).
    #[error("the database has no Blindfold schema (no migrations applied); {}", REMEDY)]
    Empty,
    /// Migrations of this binary are not applied yet.
    #[error("the database schema is behind this binary: {} not applied; {}", versions(.missing), REMEDY)]
    Behind {
        /// Versions this binary has and the database lacks.
        missing: Vec<i64>,
    },
    /// The database has migrations this binary does not know: it was migrated by a newer
    /// release.
    #[error(
        "the database schema is ahead of this binary: {} applied by a newer release; run that release \
         (or newer)",
        versions(.unknown)
    )]
    Ahead {
        /// Versions applied that this binary does not have.
        unknown: Vec<i64>,
    },
    /// A migration failed half-way.
    #[error("migration {version} failed part-way and left the database dirty; fix it by hand, then {}", REMEDY)]
    Dirty {
        /// The failed migration.
        version: i64,
    },
    /// A migration was applied from a different file than this binary's (its checksum differs).
    #[error("migration {version} was applied from a different file than this binary's (checksum differs)")]
    Modified {
        /// The migration.
        version: i64,
    },
    /// The check itself failed: PostgreSQL unreachable, or the role may not read
    /// `_sqlx_migrations`.
    #[error("reading the applied migrations: {0}")]
    Database(#[from] sqlx::Error),
    /// As [`SchemaError::Database`], from sqlx's migration helpers.
    #[error("reading the applied migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn versions(list: &[i64]) -> String {
    let names: Vec<String> = list.iter().map(ToString::to_string).collect();
    match names.as_slice() {
        [one] => format!("migration {one}"),
        _ => format!("migrations {}", names.join(", ")),
    }
}

/// Checks that the database has exactly [`MIGRATOR`]'s migrations applied, each from the same
/// file, none failed. Reads `_sqlx_migrations` only: any role granted `SELECT` on it may call
/// this (both service roles are).
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let mut conn = pool.acquire().await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text").fetch_one(&mut *conn).await?;
    if exists.is_none() {
        return Err(SchemaError::Empty);
    }
    if let Some(version) = conn.dirty_version().await? {
        return Err(SchemaError::Dirty { version });
    }
    let applied: BTreeMap<i64, Vec<u8>> = conn
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|migration| (migration.version, migration.checksum.into_owned()))
        .collect();
    let known: BTreeMap<i64, &[u8]> = MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .map(|migration| (migration.version, migration.checksum.as_ref()))
        .collect();
    let unknown: Vec<i64> = applied.keys().filter(|version| !known.contains_key(version)).copied().collect();
    if !unknown.is_empty() {
        return Err(SchemaError::Ahead { unknown });
    }
    for (version, checksum) in &applied {
        if known.get(version).is_some_and(|known| *known != checksum.as_slice()) {
            return Err(SchemaError::Modified { version: *version });
        }
    }
    let applied: BTreeSet<i64> = applied.into_keys().collect();
    let missing: Vec<i64> = known.keys().filter(|version| !applied.contains(version)).copied().collect();
    if missing.is_empty() {
        return Ok(());
    }
    if applied.is_empty() {
        return Err(SchemaError::Empty);
    }
    Err(SchemaError::Behind { missing })
}
