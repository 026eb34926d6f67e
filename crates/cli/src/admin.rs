//! `blindfold admin …`: operator commands.

use anyhow::Context;
use clap::Subcommand;

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Admin {
    /// Applies the service database's migrations (idempotent; forward-only).
    Migrate {
        /// The service database.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

/// Runs an admin command.
pub fn run(command: Admin) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        Admin::Migrate { database_url } => runtime.block_on(async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&database_url)
                .await
                .context("connecting to the database (--database-url / DATABASE_URL)")?;
            blindfold_queue::MIGRATOR.run(&pool).await.context("applying the migrations")?;
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
                .context("reading the applied migrations")?;
            println!("database is up to date: {applied} migrations applied");
            Ok(())
        }),
    }
}
