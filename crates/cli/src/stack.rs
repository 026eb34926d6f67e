//! The whole service on this machine: PostgreSQL (a throwaway cluster or `DATABASE_URL`), the
//! embedded S3 endpoint, the API and workers. `blindfold dev up`, `blindfold demo` and
//! `blindfold bench fleet` start it; nothing here is a stand-in: the API, the queue, the store
//! client and the workers are the production code, only PostgreSQL and S3 are local.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use blindfold_queue::{TenantId, tenants};
use blindfold_store::{EmbeddedS3, StoreConfig};
use blindfold_testkit::ThrowawayCluster;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How the stack runs its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// `n` `blindfold worker` processes (what `dev up` and `bench fleet` start).
    Processes(usize),
    /// `n` workers inside this process (the demo: one process, nothing to clean up).
    InProcess(usize),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// An existing database to use (migrated at start); `None` starts a throwaway cluster.
    pub database_url: Option<String>,
    /// The API's address (port 0 picks a free one).
    pub api_bind: SocketAddr,
    /// The S3 endpoint's port on 127.0.0.1 (0 picks a free one).
    pub s3_port: u16,
    /// Where the S3 endpoint keeps its objects (`None`: a temporary directory).
    pub s3_dir: Option<PathBuf>,
    /// The workers.
    pub workers: Workers,
    /// Threads per worker (`None`: every core).
    pub worker_threads: Option<usize>,
    /// Jobs in parallel per worker.
    pub worker_jobs: u32,
    /// Where worker processes log (`None`: this process's stderr).
    pub worker_logs: Option<PathBuf>,
    /// The tenant created for the hospital.
    pub tenant: String,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            database_url: None,
            api_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            s3_port: 0,
            s3_dir: None,
            workers: Workers::Processes(1),
            worker_threads: None,
            worker_jobs: 1,
            worker_logs: None,
            tenant: "dev-hospital".to_owned(),
        }
    }
}

/// How to reach the running stack: what `dev up` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoints {
    /// The API's base URL.
    pub api_url: String,
    /// A token of the created tenant.
    pub token: String,
    /// The operator token of `/v1/admin/*`.
    pub admin_token: String,
    /// The service database.
    pub database_url: String,
    /// The S3 endpoint.
    pub s3_endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The S3 access key.
    pub s3_access_key: String,
    /// The S3 secret key (a throwaway of this run).
    pub s3_secret_key: String,
    /// The created tenant.
    pub tenant_id: TenantId,
}

/// The running stack. [`LocalStack::stop`] stops it; dropping it kills what is left.
#[derive(Debug)]
pub struct LocalStack {
    /// How to reach it.
    pub endpoints: Endpoints,
    store_config: StoreConfig,
    cluster: Option<ThrowawayCluster>,
    s3: Option<EmbeddedS3>,
    _s3_dir: Option<tempfile::TempDir>,
    api: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    workers: Vec<WorkerHandle>,
}

#[derive(Debug)]
enum WorkerHandle {
    /// A `blindfold worker` process under [`supervise`]; sending stops it.
    Process(oneshot::Sender<()>, JoinHandle<()>),
    InProcess(oneshot::Sender<()>, JoinHandle<Result<(), blindfold_worker::Error>>),
}

/// The first wait before restarting a worker process that died; it doubles per restart up to
/// [`MAX_RESTART_BACKOFF`], and starts over once a process has run [`HEALTHY_RUN`] (as
/// Kubernetes' CrashLoopBackOff does for the Deployment's pods).
const FIRST_RESTART_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs a worker process and restarts it whenever it exits unasked, with backoff, saying so on
/// stderr; on `stop`, sends it SIGTERM and waits up to 60 s before killing it.
async fn supervise(name: String, command: Command, mut stop: oneshot::Receiver<()>) {
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let mut backoff = FIRST_RESTART_BACKOFF;
    let mut restarts = 0u32;
    loop {
        let started = std::time::Instant::now();
        let exited = match command.spawn() {
            Ok(mut child) => {
                tokio::select! {
                    status = child.wait() => status.map_or_else(|e| format!("could not be waited for: {e}"), |s| s.to_string()),
                    _ = &mut stop => {
                        terminate(&name, child).await;
                        return;
                    }
                }
            }
            Err(error) => format!("could not start: {error}"),
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_RESTART_BACKOFF;
        }
        restarts += 1;
        eprintln!(
            "blindfold dev up: worker {name} exited ({exited}); restarting it in {:.0} s (restart {restarts})",
            backoff.as_secs_f64()
        );
        tracing::warn!(worker = %name, exited, restarts, backoff_s = backoff.as_secs_f64(), "worker process exited; restarting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
    }
}

/// SIGTERM, as an orchestrator sends; a kill after 60 s.
async fn terminate(name: &str, mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    if tokio::time::timeout(Duration::from_secs(60), child.wait()).await.is_err() {
        tracing::warn!(worker = %name, "a worker process ignored SIGTERM for 60 s and was killed");
        let _ = child.kill().await;
    }
}

const BUCKET: &str = "blindfold";

impl LocalStack {
    /// Starts everything and creates the tenant and its token.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let (cluster, database_url) = match &options.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let cluster = tokio::task::spawn_blocking(ThrowawayCluster::start)
                    .await?
                    .context("starting a throwaway PostgreSQL (set DATABASE_URL to use a running server)")?;
                let admin = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&cluster.url("postgres"))
                    .await
                    .context("connecting to the throwaway PostgreSQL")?;
                sqlx::query("CREATE DATABASE blindfold").execute(&admin).await.context("creating the database")?;
                admin.close().await;
                let url = cluster.url("blindfold");
                (Some(cluster), url)
            }
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&database_url)
            .await
            .with_context(|| format!("connecting to {}", redact(&database_url)))?;
        blindfold_queue::MIGRATOR.run(&pool).await.context("applying the migrations")?;

        let (s3_dir, owned_dir) = match &options.s3_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("blindfold-s3-")
                    .tempdir()
                    .context("creating the S3 data directory")?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        let access_key = format!("dev{}", &random_hex()[..12]);
        let secret_key = SecretString::from(random_hex());
        let s3 = EmbeddedS3::start(&s3_dir, options.s3_port, &access_key, &secret_key)
            .await
            .context("starting the embedded S3 endpoint")?;
        let store_config = StoreConfig::for_endpoint(s3.endpoint(), BUCKET, &access_key, secret_key.clone());

        let admin_token = random_hex();
        let api_config = blindfold_api::Config {
            database_url: SecretString::from(database_url.clone()),
            migrate: false,
            db_max_connections: 8,
            bind: options.api_bind,
            admin_token: Some(SecretString::from(admin_token.clone())),
            max_body_bytes: 64 * 1024,
            max_images: 100_000,
            max_upload_bytes: 64 << 30,
            presign_secs: 3600,
            max_page: 200,
            max_verifications: 2,
            metrics_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            fleet_memory_mib: None,
            housekeeping: blindfold_housekeeping::Settings::default(),
            limits: blindfold_api::Limits::from_env().context("reading the BLINDFOLD_API_* limits")?,
            store: store_config.clone(),
        };
        let state = blindfold_api::AppState::connect(api_config).await.context("starting the API")?;
        let (stop_api, api_stopped) = oneshot::channel::<()>();
        let serving = blindfold_api::Application::serve(state, options.api_bind, async {
            let _ = api_stopped.await;
        })
        .await?;
        let api_addr = serving.addr;
        let api = tokio::spawn(serving.server);

        let tenant = match tenants::tenant_by_name(&pool, &options.tenant).await? {
            Some(tenant) => tenant,
            None => tenants::create_tenant(&pool, &options.tenant).await.context("creating the tenant")?,
        };
        let token = tenants::issue_token(&pool, tenant.id, "dev").await.context("issuing a token")?;
        pool.close().await;

        let endpoints = Endpoints {
            api_url: format!("http://{api_addr}"),
            token: token.secret.clone(),
            admin_token,
            database_url,
            s3_endpoint: s3.endpoint(),
            bucket: BUCKET.to_owned(),
            s3_access_key: access_key,
            s3_secret_key: secret_key.expose_secret().to_owned(),
            tenant_id: tenant.id,
        };
        let mut stack = Self {
            endpoints,
            store_config,
            cluster,
            s3: Some(s3),
            _s3_dir: owned_dir,
            api: Some((stop_api, api)),
            workers: Vec::new(),
        };
        match options.workers {
            Workers::Processes(count) => {
                for index in 0..count {
                    stack.spawn_worker_process(index, &options)?;
                }
            }
            Workers::InProcess(count) => {
                for index in 0..count {
                    stack.start_worker_in_process(index, &options).await?;
                }
            }
        }
        Ok(stack)
    }

    /// The worker settings for this stack.
    fn worker_config(&self, index: usize, options: &StackOptions) -> blindfold_worker::Config {
        let mut config = blindfold_worker::Config::new(&self.endpoints.database_url, self.store_config.clone());
        config.threads = options.worker_threads;
        config.jobs = options.worker_jobs;
        config.poll_ms = 500;
        config.worker_id = Some(format!("local-{index}"));
        config
    }

    async fn start_worker_in_process(&mut self, index: usize, options: &StackOptions) -> anyhow::Result<()> {
        let worker =
            blindfold_worker::Worker::start(self.worker_config(index, options)).await.context("starting a worker")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.serve(async {
            let _ = stopped.await;
        }));
        self.workers.push(WorkerHandle::InProcess(stop, task));
        Ok(())
    }

    fn spawn_worker_process(&mut self, index: usize, options: &StackOptions) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the blindfold executable")?;
        let endpoints = &self.endpoints;
        let mut command = Command::new(exe);
        command
            .arg("worker")
            .env("BLINDFOLD_DATABASE_URL", &endpoints.database_url)
            .env("BLINDFOLD_S3_ENDPOINT", &endpoints.s3_endpoint)
            .env("BLINDFOLD_S3_BUCKET", &endpoints.bucket)
            .env("BLINDFOLD_S3_ACCESS_KEY", &endpoints.s3_access_key)
            .env("BLINDFOLD_S3_SECRET_KEY", &endpoints.s3_secret_key)
            .env("BLINDFOLD_S3_PATH_STYLE", "true")
            .env("BLINDFOLD_WORKER_JOBS", options.worker_jobs.to_string())
            .env("BLINDFOLD_WORKER_METRICS_BIND", "127.0.0.1:0")
            .env("BLINDFOLD_WORKER_POLL_MS", "500")
            .env("BLINDFOLD_WORKER_ID", format!("local-{index}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(threads) = options.worker_threads {
            command.env("BLINDFOLD_WORKER_THREADS", threads.to_string());
        }
        if let Some(dir) = &options.worker_logs {
            // Appended to, so a restarted process's log follows the one that died.
            let path = dir.join(format!("worker-{index}.log"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            command.stderr(file);
        }
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(supervise(format!("local-{index}"), command, stopped));
        self.workers.push(WorkerHandle::Process(stop, task));
        Ok(())
    }

    /// Stops the workers (SIGTERM, as an orchestrator would), the API, the S3 endpoint and the
    /// throwaway cluster.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for worker in self.workers.drain(..) {
            match worker {
                WorkerHandle::InProcess(stop, task) => {
                    let _ = stop.send(());
                    task.await.context("joining a worker")?.context("a worker failed")?;
                }
                WorkerHandle::Process(stop, task) => {
                    let _ = stop.send(());
                    task.await.context("joining a worker's supervisor")?;
                }
            }
        }
        if let Some((stop, task)) = self.api.take() {
            let _ = stop.send(());
            task.await.context("joining the API")??;
        }
        if let Some(s3) = self.s3.take() {
            s3.shutdown().await;
        }
        if let Some(cluster) = self.cluster.take() {
            tokio::task::spawn_blocking(move || cluster.stop()).await?;
        }
        Ok(())
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        // A supervisor's child is killed when the aborted task drops it (`kill_on_drop`).
        for worker in &self.workers {
            if let WorkerHandle::Process(_, task) = worker {
                task.abort();
            }
        }
    }
}

/// 64 hex digits from the operating system's random source (via UUID v4).
fn random_hex() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
