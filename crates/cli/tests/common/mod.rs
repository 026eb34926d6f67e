//! The service stack the CLI's integration tests run against: a real PostgreSQL
//! (blindfold-testkit), the embedded S3 endpoint and the API on a free port, with real workers
//! on demand; and the `blindfold` binary run as a hospital or an operator would run it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use blindfold_api::{Application, Config};
use blindfold_store::{EmbeddedS3, StoreConfig};
use blindfold_testkit::TestDatabase;
use secrecy::SecretString;
use serde_json::Value;

pub const ADMIN: &str = "admin-token-for-cli-tests-0123456789abcdef";
pub const MODEL: &str = "mnist-cryptonets";

/// The service, running on its own runtime while the test thread runs the binary.
pub struct Stack {
    pub api: String,
    pub home: tempfile::TempDir,
    pub store: StoreConfig,
    pub db: TestDatabase,
    _s3: EmbeddedS3,
    pub runtime: tokio::runtime::Runtime,
}

impl Stack {
    pub fn start() -> Stack {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let home = tempfile::tempdir().unwrap();
        let (api, s3, db, store) = runtime.block_on(async {
            let db = TestDatabase::new().await.unwrap();
            let secret = SecretString::from("cli-test-secret-key-0123456789");
            let s3 = EmbeddedS3::start(home.path().join("s3"), 0, "cli-test-ak", &secret).await.unwrap();
            let mut store = StoreConfig::for_endpoint(s3.endpoint(), "blindfold-cli-test", "cli-test-ak", secret);
            // Small parts, so a batch of a few images goes up in several presigned parts.
            store.part_size_mib = 5;
            // The API and the workers log in as their production roles.
            let api_url = db.login_in("blindfold_api").await.unwrap();
            let config = Config {
                database_url: SecretString::from(api_url),
                migrate: false,
                db_max_connections: 4,
                bind: "127.0.0.1:0".parse().unwrap(),
                admin_token: Some(SecretString::from(ADMIN)),
                max_body_bytes: 64 * 1024,
                max_images: 1000,
                max_upload_bytes: 1 << 30,
                presign_secs: 600,
                max_page: 100,
                max_verifications: 2,
                metrics_bind: "127.0.0.1:0".parse().unwrap(),
                fleet_memory_mib: None,
                housekeeping: blindfold_housekeeping::Settings::default(),
                limits: blindfold_api::Limits::default(),
                store: store.clone(),
            };
            let serving = Application::build(config).await.unwrap();
            tokio::spawn(serving.server);
            (format!("http://{}", serving.addr), s3, db, store)
        });
        Stack { api, home, store, db, _s3: s3, runtime }
    }

    /// Starts a worker (the real one, in this process); it stops when the stack is dropped.
    pub fn start_worker(&self) {
        let worker_url = self.runtime.block_on(self.db.login_in("blindfold_worker")).unwrap();
        let mut config = blindfold_worker::Config::new(worker_url, self.store.clone());
        config.threads = Some(2);
        config.poll_ms = 200;
        self.runtime.spawn(async move {
            if let Err(error) = blindfold_worker::run(config, std::future::pending()).await {
                panic!("the worker stopped: {error}");
            }
        });
    }

    /// Flips one byte in the middle of a submitted job's input batch in storage.
    pub fn corrupt_input(&self, tenant: &str, job: &str) {
        use blindfold_store::{JobId, ObjectKey, ObjectName, Store, TenantId};
        self.runtime.block_on(async {
            let store = Store::connect(&self.store).await.unwrap();
            let key = ObjectKey::job_input(
                &TenantId::new(tenant.to_owned()).unwrap(),
                &JobId::new(job.to_owned()).unwrap(),
                &ObjectName::new("batch.bfib").unwrap(),
            );
            let mut bytes = store.get_bytes(&key).await.unwrap().to_vec();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            store.put_bytes(&key, bytes.into()).await.unwrap();
        });
    }

    /// Replaces a succeeded job's result in storage with another job's (a stale or swapped
    /// result, as a storage mix-up or a compromised service would serve it).
    pub fn swap_result(&self, tenant: &str, job: &str, with: &[u8]) {
        use blindfold_store::{JobId, ObjectKey, ObjectName, Store, TenantId};
        self.runtime.block_on(async {
            let store = Store::connect(&self.store).await.unwrap();
            let key = ObjectKey::job_result(
                &TenantId::new(tenant.to_owned()).unwrap(),
                &JobId::new(job.to_owned()).unwrap(),
                &ObjectName::new("result-1.bfrb").unwrap(),
            );
            assert!(store.head(&key).await.unwrap().is_some(), "job {job} has no result-1.bfrb");
            store.put_bytes(&key, with.to_vec().into()).await.unwrap();
        });
    }

    pub fn config_file(&self) -> PathBuf {
        self.home.path().join("config").join("blindfold.toml")
    }

    /// The binary with a clean environment: its own HOME and config file, no inherited API
    /// settings.
    pub fn blindfold(&self) -> Command {
        let mut command = Command::cargo_bin("blindfold").unwrap();
        command
            .env("RUST_BACKTRACE", "0")
            .env("HOME", self.home.path())
            .env("BLINDFOLD_CONFIG", self.config_file())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("BLINDFOLD_API")
            .env_remove("BLINDFOLD_TOKEN")
            .env_remove("BLINDFOLD_ADMIN_TOKEN");
        command
    }

    /// Runs an operator command against this API.
    pub fn admin(&self, args: &[&str]) -> Outcome {
        outcome(self.blindfold().env("BLINDFOLD_API", &self.api).env("BLINDFOLD_ADMIN_TOKEN", ADMIN).args(args))
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        outcome(self.blindfold().args(args))
    }

    /// A tenant with a token, as an operator makes them: (token, token id, tenant id).
    pub fn tenant(&self, name: &str) -> (String, String, String) {
        let created = self.admin(&["admin", "tenant", "create", name, "--json"]).ok().json();
        assert_eq!(created["tenant"]["name"], name);
        let issued =
            self.admin(&["admin", "token", "create", "--tenant", name, "--label", "tests", "--json"]).ok().json();
        assert_eq!(issued["tenant"]["id"], created["tenant"]["id"]);
        let text = |v: &Value| v.as_str().unwrap().to_owned();
        (text(&issued["token"]), text(&issued["token_id"]), text(&created["tenant"]["id"]))
    }
}

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn outcome(command: &mut Command) -> Outcome {
    let out = command.output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Outcome {
    pub fn ok(self) -> Outcome {
        assert_eq!(self.code, 0, "failed: {}\n{}", self.stderr, self.stdout);
        self
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
    /// Asserts the exit code and that stderr says `needle`.
    pub fn refused(self, code: i32, needle: &str) -> Outcome {
        assert_eq!(self.code, code, "expected exit code {code}: {}\n{}", self.stderr, self.stdout);
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}: {}", self.stderr);
        self
    }
}

pub fn mnist_images() -> PathBuf {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist/t10k-images-idx3-ubyte.gz");
    assert!(file.exists(), "MNIST test images not found at {}", file.display());
    file
}

pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
