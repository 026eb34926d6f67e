//! One fresh database per test on a server shared by the whole process.

use std::str::FromStr;
use std::sync::OnceLock;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::{Error, MIGRATOR, ThrowawayCluster};

/// Connections per test pool: enough for the queue's concurrency tests, small enough that the
/// tests running in parallel stay well under the server's `max_connections`.
const POOL_SIZE: u32 = 24;

/// The server every test of this process uses.
#[derive(Debug)]
enum Server {
    /// `DATABASE_URL`: someone else's server; we create and drop our databases on it.
    External { admin_url: String },
    /// Our own cluster, deleted at process exit.
    Throwaway(ThrowawayCluster),
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

impl Server {
    fn shared() -> Result<&'static Server, Error> {
        SERVER
            .get_or_init(|| Server::start().map_err(|error| error.to_string()))
            .as_ref()
            .map_err(|message| Error::ServerUnavailable(message.clone()))
    }

    fn start() -> Result<Self, Error> {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|url| !url.is_empty()) {
            PgConnectOptions::from_str(&url).map_err(|error| Error::BadUrl(error.to_string()))?;
            return Ok(Server::External { admin_url: url });
        }
        let cluster = ThrowawayCluster::start()?;
        register_exit_cleanup();
        Ok(Server::Throwaway(cluster))
    }

    fn url(&self, database: &str) -> Result<String, Error> {
        match self {
            Server::External { admin_url } => {
                let mut url = url::Url::parse(admin_url).map_err(|error| Error::BadUrl(error.to_string()))?;
                url.set_path(database);
                Ok(url.to_string())
            }
            Server::Throwaway(cluster) => Ok(cluster.url(database)),
        }
    }

    fn admin_url(&self) -> Result<String, Error> {
        match self {
            Server::External { admin_url } => Ok(admin_url.clone()),
            Server::Throwaway(cluster) => Ok(cluster.url("postgres")),
        }
    }
}

/// Statics are never dropped, so the shared cluster is stopped from an exit handler.
#[allow(unsafe_code)]
fn register_exit_cleanup() {
    extern "C" fn stop_shared_cluster() {
        if let Some(Ok(Server::Throwaway(cluster))) = SERVER.get() {
            cluster.stop();
        }
    }
    // SAFETY: registering a plain `extern "C" fn` with no captured state; it only touches a
    // `OnceLock` that is fully initialised before registration.
    let status = unsafe { libc::atexit(stop_shared_cluster) };
    if status != 0 {
        tracing::warn!("could not register the throwaway PostgreSQL cleanup; it will be removed by the next run");
    }
}

/// The URL of the process-wide server (its `postgres` database), starting it if needed.
///
/// For tools that need a server but not a migrated database (the demo, `dev up`).
pub fn shared_server_url() -> Result<String, Error> {
    Server::shared()?.admin_url()
}

/// A fresh database with the workspace migrations applied, for one test.
///
/// Dropping it drops the database when it lives on an external server (`DATABASE_URL`); on the
/// throwaway cluster everything goes when the process exits.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    pool: PgPool,
    server: &'static Server,
    /// LOGIN roles made by [`TestDatabase::login_in`], dropped with the database.
    logins: std::sync::Mutex<Vec<String>>,
}

impl TestDatabase {
    /// Creates the database and applies the migrations.
    pub async fn new() -> Result<Self, Error> {
        let server = tokio::task::spawn_blocking(Server::shared)
            .await
            .map_err(|error| Error::ServerUnavailable(error.to_string()))??;
        let name = format!("blindfold_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server.admin_url()?).await?;
        admin.execute(format!(r#"CREATE DATABASE "{name}""#).as_str()).await?;
        admin.close().await?;

        let url = server.url(&name)?;
        let pool = PgPoolOptions::new().max_connections(POOL_SIZE).connect(&url).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { name, url, pool, server, logins: std::sync::Mutex::default() })
    }

    /// Creates a LOGIN role (random name and password) that is a member of the group role
    /// `group` and nothing else, and returns a URL for this database as that role: how a test
    /// connects as the API or a worker does in production, with only the group's rights.
    pub async fn login_in(&self, group: &str) -> Result<String, Error> {
        if group.is_empty() || !group.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(Error::BadUrl(format!("{group:?} is not a plain role name")));
        }
        let user = format!("{group}_login_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let password = uuid::Uuid::new_v4().simple().to_string();
        // Roles are cluster-wide: the random suffix keeps tests running side by side apart.
        let statement = format!(r#"CREATE ROLE "{user}" LOGIN PASSWORD '{password}' IN ROLE "{group}""#);
        self.pool.execute(statement.as_str()).await?;
        self.logins.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(user.clone());
        let mut url = url::Url::parse(&self.url).map_err(|error| Error::BadUrl(error.to_string()))?;
        url.set_username(&user).map_err(|()| Error::BadUrl("cannot set the user".into()))?;
        url.set_password(Some(&password)).map_err(|()| Error::BadUrl("cannot set the password".into()))?;
        Ok(url.to_string())
    }

    /// A pool of connections to this test's database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection URL for this test's database (for child processes).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Server::External { .. } = self.server else { return };
        let Ok(admin_url) = self.server.admin_url() else { return };
        let logins = std::mem::take(&mut *self.logins.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        // The roles outlive the database on someone else's server unless dropped too; once the
        // database is gone they own nothing and hold no rights, so DROP ROLE succeeds.
        let statements: Vec<String> =
            std::iter::once(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name))
                .chain(logins.iter().map(|user| format!(r#"DROP ROLE IF EXISTS "{user}""#)))
                .collect();
        // Drop cannot await, and the test's runtime may be single-threaded and busy dropping us,
        // so the DROP runs on a runtime of its own.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                for statement in &statements {
                    admin.execute(statement.as_str()).await.ok()?;
                }
                admin.close().await.ok()
            })
        });
        if dropper.join().ok().flatten().is_none() {
            tracing::warn!(database = %self.name, "could not drop the test database");
        }
    }
}
