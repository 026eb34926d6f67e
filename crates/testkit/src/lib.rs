//! A real PostgreSQL for tests and the demo.
//!
//! [`TestDatabase::new`] hands a test its own fresh database with the workspace migrations
//! applied. The server behind it is the one in `DATABASE_URL` when that is set; otherwise a
//! [`ThrowawayCluster`] started with `initdb`/`pg_ctl` on a free loopback port in a temporary
//! directory, shared by every test of the process and removed when the process exits.
//!
//! ```no_run
//! # async fn example() -> Result<(), blindfold_testkit::Error> {
//! let db = blindfold_testkit::TestDatabase::new().await?;
//! sqlx::query("CREATE TABLE t (x int)").execute(db.pool()).await?;
//! # Ok(()) }
//! ```
//!
//! The demo and `blindfold dev up` use [`ThrowawayCluster`] directly: it stops and deletes its
//! cluster when dropped.

mod cluster;
mod database;
mod error;

pub use cluster::{ThrowawayCluster, find_postgres_binaries};
pub use database::{TestDatabase, shared_server_url};
pub use error::Error;

/// The workspace's sqlx migrations (`migrations/` at the repository root), embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
