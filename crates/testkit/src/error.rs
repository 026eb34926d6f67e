use std::path::PathBuf;

/// Why no database could be handed out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither `DATABASE_URL` nor PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl) found on PATH or under {searched}; \
         install the postgresql package (Debian/Ubuntu: `apt-get install postgresql`), \
         or set DATABASE_URL to a running server"
    )]
    NoPostgresBinaries {
        /// The places that were searched besides PATH.
        searched: String,
    },
    /// Running as root, and no unprivileged user to run the server as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root: create an unprivileged \
         'postgres' user (the postgresql package does) or set DATABASE_URL"
    )]
    NoUnprivilegedUser,
    /// A PostgreSQL tool exited with an error.
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        /// The command that failed.
        tool: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed (or of the server log).
        output: String,
    },
    /// File system work around the cluster failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `DATABASE_URL` could not be parsed.
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    /// The shared server could not be started earlier in this process.
    #[error("the test database server is unavailable: {0}")]
    ServerUnavailable(String),
    /// Talking to the server failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
