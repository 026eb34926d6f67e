//! The worker's settings: every flag also reads an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use blindfold_store::StoreConfig;
use secrecy::SecretString;

/// How a worker process runs. Defaults suit one worker per machine or pod: one job at a time on
/// every core.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL URL of the service database, as a member of the `blindfold_worker` role. The
    /// schema must be current (`blindfold admin migrate`, the Kubernetes migrate Job): workers
    /// never migrate, and refuse to start on an older or newer schema.
    #[arg(long, env = "BLINDFOLD_DATABASE_URL", value_parser = parse_secret, hide_env_values = true)]
    pub database_url: SecretString,

    /// Jobs evaluated at once. They share the thread pool; more than one helps only when
    /// downloads and uploads are slow next to the computation.
    #[arg(long, env = "BLINDFOLD_WORKER_JOBS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,

    /// Threads evaluating ciphertexts (default: every core the process may use).
    #[arg(long, env = "BLINDFOLD_WORKER_THREADS")]
    pub threads: Option<usize>,

    /// Seconds a claim or heartbeat holds a job. Heartbeats go out every third of it; a worker
    /// that stops heartbeating loses its job to another after this long.
    #[arg(long, env = "BLINDFOLD_WORKER_LEASE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(3..=86_400))]
    pub lease_secs: u64,

    /// Evaluators (a key set bound to its compiled model) kept in memory, in MiB of what each
    /// holds: its keys unpacked to 64-bit coefficients (about four times their serialized size),
    /// the engine's encoded weights or plaintext diagonals, and the model (the plan's
    /// `resident_bytes`; least recently used go first). A CryptoNets throughput evaluator holds a
    /// few MB, a LeNet-5 latency one about 0.7 GB (`blindfold model show`).
    #[arg(long, env = "BLINDFOLD_WORKER_KEY_CACHE_MIB", default_value_t = 2048)]
    pub key_cache_mib: u64,

    /// Compiled models kept in memory, in MiB (one entry per model version and packing, costed
    /// at its ONNX file plus its weights as f64; least recently used go first). A model larger
    /// than the whole budget is compiled for each job and not kept.
    #[arg(long, env = "BLINDFOLD_WORKER_MODEL_CACHE_MIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub model_cache_mib: u64,

    /// Memory one job's evaluation may use, in MiB (default: the cgroup's `memory.max` when
    /// set, else the memory available when the worker starts). A latency plan whose encoded
    /// diagonals would not fit streams them (encodes them per image; slower, far smaller), and
    /// a plan that does not fit even so fails with `does_not_fit`, naming the layer.
    #[arg(long, env = "BLINDFOLD_WORKER_MEMORY_MIB", value_parser = clap::value_parser!(u64).range(64..))]
    pub memory_mib: Option<u64>,

    /// Address of `/healthz`, `/readyz` and `/metrics` (port 0 picks a free port).
    #[arg(long, env = "BLINDFOLD_WORKER_METRICS_BIND", default_value = "127.0.0.1:9464")]
    pub metrics_bind: SocketAddr,

    /// After SIGTERM/SIGINT, seconds a running job may take to finish before it is cancelled
    /// and given back to the queue. Keep it below the pod's termination grace period.
    #[arg(long, env = "BLINDFOLD_WORKER_SHUTDOWN_SECS", default_value_t = 25)]
    pub shutdown_secs: u64,

    /// Milliseconds between queue polls when no notification arrives (LISTEN/NOTIFY wakes the
    /// worker at once; polling covers lost notifications and retry backoffs coming due).
    #[arg(long, env = "BLINDFOLD_WORKER_POLL_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub poll_ms: u64,

    /// Tries of each storage or database operation before the attempt fails as transient; the
    /// waits between them double from half a second up to 8 s.
    #[arg(long, env = "BLINDFOLD_WORKER_RETRIES", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=30))]
    pub retries: u32,

    /// This worker's name in the queue (default: host name and process id). A random suffix is
    /// always added, so a restarted process never inherits an old lease.
    #[arg(long, env = "BLINDFOLD_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Test hook (hidden): while this file exists, every claimed attempt waits after loading
    /// its keys, heartbeating and reporting the stage `held`; a cancel, a lost lease or the
    /// shutdown deadline still stop it. Fault tests use it to hold a job exactly where they
    /// kill, cancel or stop its worker, instead of racing the computation.
    #[arg(long, env = "BLINDFOLD_WORKER_TEST_HOLD_FILE", hide = true)]
    pub test_hold_file: Option<std::path::PathBuf>,

    /// Object storage.
    #[command(flatten)]
    pub store: StoreConfig,

    /// Housekeeping, which every worker runs beside its jobs.
    #[command(flatten)]
    pub housekeeping: blindfold_housekeeping::Settings,
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.is_empty() {
        return Err("empty".to_owned());
    }
    Ok(SecretString::from(value))
}

impl Config {
    /// The defaults for a database and a store, metrics on a free loopback port.
    pub fn new(database_url: impl Into<String>, store: StoreConfig) -> Self {
        Self {
            database_url: SecretString::from(database_url.into()),
            jobs: 1,
            threads: None,
            lease_secs: 60,
            key_cache_mib: 2048,
            model_cache_mib: 1024,
            memory_mib: None,
            metrics_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_secs: 25,
            poll_ms: 2000,
            retries: 6,
            worker_id: None,
            test_hold_file: None,
            store,
            housekeeping: blindfold_housekeeping::Settings::default(),
        }
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// How often heartbeats go out: a third of the lease.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease() / 3
    }

    /// How long a running job may go on after a shutdown signal.
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_secs(self.shutdown_secs)
    }

    /// Bytes one job's evaluation may use: `memory_mib`, else the cgroup limit, else
    /// `MemAvailable`; `None` when none is known (no limit is applied).
    pub fn memory_budget(&self) -> Option<u64> {
        self.memory_mib.map(|mib| mib << 20).or_else(cgroup_limit).or_else(memory_available)
    }

    /// The thread count in use.
    pub fn thread_count(&self) -> usize {
        self.threads.filter(|&n| n > 0).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// The cgroup v2 memory limit of this process (`memory.max`), if one is set.
fn cgroup_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    text.trim().parse().ok()
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = text.lines().find_map(|line| line.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim();
    kb.parse::<u64>().ok().map(|kb| kb * 1024)
}
