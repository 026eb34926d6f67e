//! A real stack for worker tests: a fresh PostgreSQL database, the embedded S3 endpoint, a key
//! set and encrypted MNIST batches, and worker processes started from the built binary.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use blindfold_batch::{InputBatchReader, Packing};
use blindfold_client::{Intake, IntakeOptions, KeySet, PackingChoice, read_inputs};
use blindfold_compiler::Control;
use blindfold_evaluate::{BatchEvaluator, BatchExpect, CompiledModel};
use blindfold_queue::{Job, JobId, JobState, NewJob, Queue, QueueConfig, TenantId, tenants};
use blindfold_store::{EmbeddedS3, ObjectKey, ObjectName, Store, StoreConfig};
use blindfold_testkit::{TestDatabase, ThrowawayCluster};
use bytes::Bytes;
use secrecy::SecretString;
use sqlx::PgPool;

pub const MODEL: &str = "mnist-cryptonets";
const ACCESS_KEY: &str = "worker-test";
const SECRET_KEY: &str = "worker-test-secret-key";
const BUCKET: &str = "blindfold-test";

/// Tests in one binary run one at a time: each starts worker processes that use every core, and
/// leases of a few seconds must not expire because another test starved them.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A latency-packing key set for the test model, made once per test binary.
pub fn key_set() -> &'static (tempfile::TempDir, KeySet) {
    static KEYS: OnceLock<(tempfile::TempDir, KeySet)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeySet::generate(&dir.path().join("keys"), MODEL, PackingChoice::Latency).unwrap();
        (dir, keys)
    })
}

/// The compiled model and an evaluator bound to the key set: the reference "single undisturbed
/// worker", made once per test binary.
pub fn reference() -> &'static BatchEvaluator {
    static EVALUATOR: OnceLock<BatchEvaluator> = OnceLock::new();
    EVALUATOR.get_or_init(|| {
        let (_, keys) = key_set();
        BatchEvaluator::new(CompiledModel::load(MODEL, Packing::Latency).unwrap(), keys.evaluation_keys().unwrap())
            .unwrap()
    })
}

/// Encrypted batches of `images_each` consecutive MNIST test images.
pub fn batches(count: usize, images_each: usize) -> Vec<Bytes> {
    let (_, keys) = key_set();
    let model = CompiledModel::load(MODEL, Packing::Latency).unwrap();
    let data = shared_data().join("mnist/t10k-images-idx3-ubyte.gz");
    let intake = read_inputs(
        model.manifest(),
        &[data],
        IntakeOptions { limit: Some(count * images_each), ..Default::default() },
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    (0..count)
        .map(|i| {
            let part = Intake {
                names: intake.names[i * images_each..(i + 1) * images_each].to_vec(),
                inputs: intake.inputs[i * images_each..(i + 1) * images_each].to_vec(),
            };
            let path = out.path().join(format!("job{i}.bfib"));
            let written = blindfold_client::encrypt(keys, &model, &part, &path, &|_, _| {}).unwrap();
            assert_eq!(written.len(), 1);
            Bytes::from(std::fs::read(&written[0].path).unwrap())
        })
        .collect()
}

/// What the reference evaluator makes of a batch for job `job` (the result records it).
pub fn expected_result(batch: &Bytes, job: JobId) -> Vec<u8> {
    let evaluator = reference();
    let (_, keys) = key_set();
    let expect = evaluator.model().expect_input(keys.id());
    let input = InputBatchReader::open(&batch[..], evaluator.keys().context(), &expect).unwrap();
    evaluator.evaluate_job(job.0, input, Vec::new(), &Control::none()).unwrap().finished.writer
}

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// The stack's database: a fresh one on the shared server, or one on a cluster of the test's
/// own (which the test may restart).
pub struct Database {
    url: String,
    pool: PgPool,
    _fresh: Option<TestDatabase>,
    pub cluster: Option<ThrowawayCluster>,
}

impl Database {
    async fn fresh() -> Self {
        let db = TestDatabase::new().await.unwrap();
        Self { url: db.url().to_owned(), pool: db.pool().clone(), _fresh: Some(db), cluster: None }
    }

    async fn own_cluster() -> Self {
        let cluster = tokio::task::spawn_blocking(ThrowawayCluster::start).await.unwrap().unwrap();
        let url = cluster.url("postgres");
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&url).await.unwrap();
        blindfold_queue::MIGRATOR.run(&pool).await.unwrap();
        Self { url, pool, _fresh: None, cluster: Some(cluster) }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A URL for this database as a fresh LOGIN user in the group role `group` (what a
    /// deployment gives the workers: `blindfold_worker`).
    pub async fn login_in(&self, group: &str) -> String {
        if let Some(db) = &self._fresh {
            return db.login_in(group).await.unwrap();
        }
        // A cluster of the test's own (trusting local users): the role goes with it.
        let user = format!("{group}_login_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        sqlx::query(&format!(r#"CREATE ROLE "{user}" LOGIN IN ROLE "{group}""#)).execute(&self.pool).await.unwrap();
        self.url.replacen("postgres://postgres@", &format!("postgres://{user}@"), 1)
    }
}

/// A database, a store with the test tenant's key set registered, and the queue. Worker
/// processes log in as the worker role, as in a deployment; the test itself (playing the API
/// and the operator) as the owner.
pub struct Stack {
    pub db: Database,
    /// The workers' database URL: a member of `blindfold_worker`.
    pub worker_url: String,
    pub s3: Option<EmbeddedS3>,
    pub s3_dir: tempfile::TempDir,
    pub s3_port: u16,
    pub store: Store,
    pub queue: Queue,
    pub tenant: TenantId,
    pub logs: tempfile::TempDir,
    /// What each upload stored (size and ETag), as the API records it at `submit`: jobs are
    /// enqueued pinned to it, even while the store is down.
    uploaded: std::sync::Mutex<std::collections::HashMap<String, blindfold_store::Pinned>>,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_on(Database::fresh().await).await
    }

    /// A stack whose PostgreSQL is a cluster of its own, which [`Stack::restart_database`]
    /// restarts.
    pub async fn start_on_own_cluster() -> Self {
        Self::start_on(Database::own_cluster().await).await
    }

    /// The object of the test key set's evaluation-key bundle, registered at its verified size.
    pub fn key_set_object(&self) -> ObjectKey {
        let (_, keys) = key_set();
        ObjectKey::keyset(
            &blindfold_store::TenantId::new(self.tenant.to_string()).unwrap(),
            &blindfold_store::KeysetId::new(keys.id().to_string()).unwrap(),
            &ObjectName::new("evaluation.keys").unwrap(),
        )
    }

    /// Restarts the stack's own PostgreSQL cluster: every session is cut.
    pub async fn restart_database(&self) {
        let cluster = self.db.cluster.as_ref().expect("a stack on its own cluster");
        tokio::task::block_in_place(|| cluster.restart()).unwrap();
    }

    async fn start_on(db: Database) -> Self {
        let s3_dir = tempfile::tempdir().unwrap();
        let s3 = EmbeddedS3::start(s3_dir.path(), 0, ACCESS_KEY, &SecretString::from(SECRET_KEY)).await.unwrap();
        let s3_port = s3.port();
        let store = Store::connect(&store_config(&s3.endpoint())).await.unwrap();
        store.ensure_bucket().await.unwrap();
        let queue = Queue::new(db.pool().clone(), QueueConfig::default());
        let tenant = tenants::create_tenant(db.pool(), "test-hospital").await.unwrap().id;

        let (_, keys) = key_set();
        let bundle = std::fs::read(keys.dir().join("evaluation.keys")).unwrap();
        let object = ObjectKey::keyset(
            &blindfold_store::TenantId::new(tenant.to_string()).unwrap(),
            &blindfold_store::KeysetId::new(keys.id().to_string()).unwrap(),
            &ObjectName::new("evaluation.keys").unwrap(),
        );
        let stored = store.put_bytes(&object, Bytes::from(bundle.clone())).await.unwrap();
        // Registered as the API registers a verified bundle: its size and ETag.
        sqlx::query(
            "INSERT INTO key_sets (id, tenant_id, params_fingerprint, object_key, size_bytes, object_etag) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(keys.id())
        .bind(tenant)
        .bind(&keys.descriptor().fingerprint)
        .bind(object.as_str())
        .bind(bundle.len() as i64)
        .bind(stored.e_tag.expect("the embedded endpoint gives ETags"))
        .execute(db.pool())
        .await
        .unwrap();
        let worker_url = db.login_in("blindfold_worker").await;
        Self {
            db,
            worker_url,
            s3: Some(s3),
            s3_dir,
            s3_port,
            store,
            queue,
            tenant,
            logs: tempfile::tempdir().unwrap(),
            uploaded: Default::default(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Stops the storage endpoint (its data stays on disk).
    pub async fn stop_storage(&mut self) {
        if let Some(s3) = self.s3.take() {
            s3.shutdown().await;
        }
    }

    /// Starts the storage endpoint again on the same port and data.
    pub async fn restart_storage(&mut self) {
        let s3 = EmbeddedS3::start(self.s3_dir.path(), self.s3_port, ACCESS_KEY, &SecretString::from(SECRET_KEY))
            .await
            .unwrap();
        self.s3 = Some(s3);
    }

    /// Uploads `batch` and enqueues a job for it.
    pub async fn submit(&self, batch: &Bytes, images: usize) -> JobId {
        let (id, key) = self.upload(batch).await;
        self.enqueue(id, &key, images).await;
        id
    }

    /// Stores `batch` as the input of a new job id (not yet enqueued).
    pub async fn upload(&self, batch: &Bytes) -> (JobId, ObjectKey) {
        let id = JobId::new_random();
        let key = ObjectKey::job_input(
            &blindfold_store::TenantId::new(self.tenant.to_string()).unwrap(),
            &blindfold_store::JobId::new(id.to_string()).unwrap(),
            &ObjectName::new("batch.bfib").unwrap(),
        );
        let receipt = self.store.put_bytes(&key, batch.clone()).await.unwrap();
        let pin = blindfold_store::Pinned { size: receipt.size, e_tag: receipt.e_tag };
        self.uploaded.lock().unwrap().insert(key.as_str().to_owned(), pin);
        (id, key)
    }

    /// Enqueues the job `id` for the uploaded batch `key`.
    pub async fn enqueue(&self, id: JobId, key: &ObjectKey, images: usize) {
        self.enqueue_attempts(id, key, images, None).await;
    }

    /// As [`Stack::enqueue`], with `max_attempts` attempts (the queue's default when `None`).
    pub async fn enqueue_attempts(&self, id: JobId, key: &ObjectKey, images: usize, max_attempts: Option<i32>) {
        let (_, keys) = key_set();
        let job = NewJob {
            tenant_id: self.tenant,
            idempotency_key: None,
            model: MODEL.into(),
            model_version: None,
            packing: "latency".into(),
            key_set_id: Some(blindfold_queue::KeySetId(keys.id())),
            image_count: images as i32,
            priority: 0,
            input_key: key.as_str().to_owned(),
            max_attempts,
        };
        let mut conn = self.db.pool().acquire().await.unwrap();
        self.queue.enqueue_as_in(&mut conn, id, job).await.unwrap();
        // Pinned as the API's submit pins what it verified.
        let pin = self.uploaded.lock().unwrap().get(key.as_str()).cloned().expect("uploaded by Stack::upload");
        self.queue.pin_input(&mut conn, id, pin.size as i64, pin.e_tag.as_deref()).await.unwrap();
    }

    pub async fn job(&self, id: JobId) -> Job {
        self.queue.job(id).await.unwrap().unwrap()
    }

    /// Waits until `done(job)` holds, up to `limit`.
    pub async fn wait_for(&self, id: JobId, limit: Duration, done: impl Fn(&Job) -> bool) -> Job {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                start.elapsed() < limit,
                "job {id} still {:?} after {limit:?}: {job:?}\n{}",
                job.state,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_final(&self, id: JobId) -> Job {
        self.wait_for(id, Duration::from_secs(240), |job| job.state.is_final()).await
    }

    /// A closed gate: workers started with [`Gate::env`] hold every job they claim (after
    /// loading its keys) until [`Gate::open`].
    pub fn gate(&self, name: &str) -> Gate {
        let path = self.logs.path().join(format!("{name}.hold"));
        std::fs::write(&path, b"held by a test").unwrap();
        Gate { path }
    }

    /// Waits until a worker holds the job at its gate (its heartbeat reported the stage).
    pub async fn wait_held(&self, id: JobId) -> Job {
        self.wait_for(id, Duration::from_secs(120), |job| {
            job.state == JobState::Running && job.stage.as_deref() == Some("held")
        })
        .await
    }

    pub async fn result_bytes(&self, job: &Job) -> Vec<u8> {
        let key = ObjectKey::parse(job.result_key.as_deref().unwrap()).unwrap();
        self.store.get_bytes(&key).await.unwrap().to_vec()
    }

    /// The names of the job's result objects.
    pub async fn result_objects(&self, id: JobId) -> Vec<String> {
        let prefix = blindfold_store::Prefix::job_result(
            &blindfold_store::TenantId::new(self.tenant.to_string()).unwrap(),
            &blindfold_store::JobId::new(id.to_string()).unwrap(),
        );
        self.store.list(&prefix).await.unwrap().into_iter().map(|o| o.key.to_string()).collect()
    }

    /// Starts a worker process named `name` with test-sized settings plus `extra`.
    pub fn worker(&self, name: &str, extra: &[(&str, &str)]) -> WorkerProcess {
        let log = self.logs.path().join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_blindfold-worker"));
        command
            .env_clear()
            .env("BLINDFOLD_DATABASE_URL", &self.worker_url)
            .env("BLINDFOLD_S3_ENDPOINT", self.endpoint())
            .env("BLINDFOLD_S3_BUCKET", BUCKET)
            .env("BLINDFOLD_S3_ACCESS_KEY", ACCESS_KEY)
            .env("BLINDFOLD_S3_SECRET_KEY", SECRET_KEY)
            .env("BLINDFOLD_S3_PATH_STYLE", "true")
            .env("BLINDFOLD_S3_MAX_ATTEMPTS", "2")
            .env("BLINDFOLD_WORKER_LEASE_SECS", "6")
            .env("BLINDFOLD_WORKER_POLL_MS", "200")
            .env("BLINDFOLD_WORKER_THREADS", "1")
            .env("BLINDFOLD_WORKER_METRICS_BIND", "127.0.0.1:0")
            .env("BLINDFOLD_WORKER_ID", name)
            .env("RUST_LOG", "info");
        for (key, value) in extra {
            command.env(key, value);
        }
        let file = std::fs::File::create(&log).unwrap();
        let child = command.stdout(Stdio::null()).stderr(file).spawn().unwrap();
        WorkerProcess { child: Some(child), log, name: name.to_owned() }
    }

    /// The end of every worker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", entry.path().display()));
            for line in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

pub fn store_config(endpoint: &str) -> StoreConfig {
    StoreConfig::for_endpoint(endpoint, BUCKET, ACCESS_KEY, SecretString::from(SECRET_KEY))
}

/// The worker's test hook (`BLINDFOLD_WORKER_TEST_HOLD_FILE`): closed while its file exists.
pub struct Gate {
    path: PathBuf,
}

impl Gate {
    /// The environment entry that makes a worker wait at this gate.
    pub fn env(&self) -> (&'static str, &str) {
        ("BLINDFOLD_WORKER_TEST_HOLD_FILE", self.path.to_str().unwrap())
    }

    /// Lets held jobs go on.
    pub fn open(&self) {
        std::fs::remove_file(&self.path).unwrap();
    }
}

/// A worker process, killed when dropped.
pub struct WorkerProcess {
    child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl WorkerProcess {
    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "worker {} ignored SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM without waiting (see [`WorkerProcess::exited`]).
    pub fn signal_terminate(&mut self) {
        let child = self.child.as_ref().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// The worker's log lines parsed as JSON.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The metrics address the worker logged at start.
    pub fn metrics_addr(&self) -> String {
        let start = Instant::now();
        loop {
            if let Some(addr) = self.log_lines().iter().find_map(|line| {
                (line["fields"]["message"] == "worker ready")
                    .then(|| line["fields"]["metrics"].as_str().map(str::to_owned))?
            }) {
                return addr;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "worker {} did not start", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The reasons of a job's events, in order.
pub async fn event_reasons(queue: &Queue, id: JobId) -> Vec<String> {
    queue.events(id).await.unwrap().into_iter().map(|e| e.reason).collect()
}
