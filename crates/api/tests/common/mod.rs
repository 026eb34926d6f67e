//! Test harness: a real PostgreSQL (blindfold-testkit), the embedded S3 endpoint, the API on a
//! random port, reqwest as the client, and genuine key bundles and batches for a real model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::sync::{Arc, OnceLock};

use blindfold_api::{Application, CompletedPart, Config, Upload};
use blindfold_batch::{BatchHeader, InputBatchWriter, KeyBundle, Packing};
use blindfold_ckks::{Context, GaloisKeys, KeyGenerator, SecretKeyEncryptor};
use blindfold_compiler::ThroughputPlan;
use blindfold_store::{EmbeddedS3, StoreConfig};
use blindfold_testkit::TestDatabase;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

pub const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";
pub const MODEL: &str = "mnist-cryptonets";

pub struct Api {
    pub base: String,
    /// The metrics listener's `/metrics`.
    pub metrics: String,
    pub http: reqwest::Client,
    pub db: TestDatabase,
    pub s3: EmbeddedS3,
    pub store: blindfold_store::Store,
    _dir: tempfile::TempDir,
}

pub async fn start() -> Api {
    start_with(|_| {}).await
}

/// The API on a fresh database, logged in as the production API role (`blindfold_api`), so
/// every test also proves the role's grants suffice for what it exercises.
pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Api {
    let db = TestDatabase::new().await.unwrap();
    let url = db.login_in("blindfold_api").await.unwrap();
    start_on(db, url, adjust).await.unwrap()
}

/// The API on `db`, connecting with `database_url`: what [`Application::build`] answers.
pub async fn start_on(db: TestDatabase, database_url: String, adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Api> {
    let dir = tempfile::tempdir().unwrap();
    let secret = SecretString::from("api-test-secret-key-0123456789");
    let s3 = EmbeddedS3::start(dir.path().join("s3"), 0, "api-test-ak", &secret).await.unwrap();
    let mut store_config = StoreConfig::for_endpoint(s3.endpoint(), "blindfold-api-test", "api-test-ak", secret);
    store_config.part_size_mib = 5;
    let mut config = Config {
        database_url: SecretString::from(database_url),
        migrate: false,
        db_max_connections: 4,
        bind: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(SecretString::from(ADMIN)),
        max_body_bytes: 16 * 1024,
        max_images: 1000,
        max_upload_bytes: 1 << 30,
        presign_secs: 600,
        max_page: 100,
        max_verifications: 2,
        metrics_bind: "127.0.0.1:0".parse().unwrap(),
        fleet_memory_mib: None,
        housekeeping: blindfold_housekeeping::Settings::default(),
        // Off here: tests send many unauthenticated requests from one address on purpose;
        // `throttling` turns them on.
        limits: blindfold_api::Limits { auth_failures_per_minute: 0, rate_per_minute: 0, ..Default::default() },
        store: store_config.clone(),
    };
    adjust(&mut config);
    let serving = Application::build(config).await?;
    tokio::spawn(serving.server);
    let store = blindfold_store::Store::connect(&store_config).await.unwrap();
    Ok(Api {
        base: format!("http://{}", serving.addr),
        metrics: format!("http://{}/metrics", serving.metrics_addr),
        http: reqwest::Client::new(),
        db,
        s3,
        store,
        _dir: dir,
    })
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    /// The `Connection` header, empty when absent.
    pub connection: String,
    /// The `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
    pub body: Value,
}

impl Reply {
    /// The problem code of an error answer.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
    pub fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or("")
    }
}

impl Api {
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let connection =
            response.headers().get("connection").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, content_type, connection, retry_after, body }
    }

    pub async fn raw(&self, method: Method, path: &str, token: &str, body: Vec<u8>) -> Reply {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let connection =
            response.headers().get("connection").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
        let body = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null);
        Reply { status, content_type, connection, retry_after, body }
    }

    /// A tenant and a token for it.
    pub async fn tenant(&self, name: &str) -> (Uuid, String, Uuid) {
        let tenant = self.call(Method::POST, "/v1/admin/tenants", Some(ADMIN), Some(json!({"name": name}))).await;
        assert_eq!(tenant.status, StatusCode::CREATED, "{:?}", tenant.body);
        let id: Uuid = tenant.body["id"].as_str().unwrap().parse().unwrap();
        let token = self
            .call(Method::POST, &format!("/v1/admin/tenants/{id}/tokens"), Some(ADMIN), Some(json!({"label": "test"})))
            .await;
        assert_eq!(token.status, StatusCode::CREATED, "{:?}", token.body);
        (id, token.body["token"].as_str().unwrap().to_owned(), token.body["id"].as_str().unwrap().parse().unwrap())
    }

    /// Uploads `bytes` as `upload` says, returning the parts to send back (multipart only).
    pub async fn upload(&self, upload: &Value, bytes: &[u8]) -> Vec<CompletedPart> {
        let upload: Upload = serde_json::from_value(upload.clone()).unwrap();
        match upload {
            Upload::Single { request } => {
                let mut put = self.http.put(&request.url).body(bytes.to_vec());
                // Content-Length comes from the body (it is signed: another length is refused).
                for header in request.headers.iter().filter(|h| !h.name.eq_ignore_ascii_case("content-length")) {
                    put = put.header(&header.name, &header.value);
                }
                let response = put.send().await.unwrap();
                assert!(response.status().is_success(), "PUT: {}", response.status());
                Vec::new()
            }
            Upload::Multipart { part_size, parts } => {
                let mut done = Vec::new();
                for part in parts {
                    let start = (part.part_number as usize - 1) * part_size as usize;
                    let end = (start + part_size as usize).min(bytes.len());
                    let mut put = self.http.put(&part.request.url).body(bytes[start..end].to_vec());
                    for header in part.request.headers.iter().filter(|h| !h.name.eq_ignore_ascii_case("content-length"))
                    {
                        put = put.header(&header.name, &header.value);
                    }
                    let response = put.send().await.unwrap();
                    assert!(response.status().is_success(), "PUT part: {}", response.status());
                    let e_tag = response.headers()["etag"].to_str().unwrap().to_owned();
                    done.push(CompletedPart { part_number: part.part_number, e_tag });
                }
                done
            }
        }
    }

    /// Creates, uploads and completes a key set for the test model; returns its id.
    pub async fn ready_key_set(&self, token: &str) -> Uuid {
        let crypto = crypto();
        // A bundle's size does not depend on the key-set id written into it.
        let size = crypto.bundle(Uuid::nil()).len();
        let created = self
            .call(Method::POST, "/v1/key-sets", Some(token), Some(json!({"model": MODEL, "size_bytes": size})))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        let id: Uuid = created.body["key_set"]["id"].as_str().unwrap().parse().unwrap();
        let bundle = crypto.bundle(id);
        let parts = self.upload(&created.body["upload"], &bundle).await;
        let done = self
            .call(Method::POST, &format!("/v1/key-sets/{id}/complete"), Some(token), Some(json!({"parts": parts})))
            .await;
        assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
        assert_eq!(done.body["status"], "ready");
        id
    }

    /// Announces a job for a genuine batch; returns (job id, upload, batch bytes).
    pub async fn announce_job(&self, token: &str, key_set: Uuid, images: u64, extra: Value) -> (Uuid, Value, Vec<u8>) {
        let batch = crypto().batch(key_set, images, MODEL);
        let mut body = json!({"model": MODEL, "key_set_id": key_set, "image_count": images, "size_bytes": batch.len()});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let created = self.call(Method::POST, "/v1/jobs", Some(token), Some(body)).await;
        assert!(created.status.is_success(), "{:?}", created.body);
        let id = created.body["job"]["id"].as_str().unwrap().parse().unwrap();
        (id, created.body["upload"].clone(), batch)
    }

    /// Announces, uploads and submits a job; returns its id.
    pub async fn queued_job(&self, token: &str, key_set: Uuid) -> Uuid {
        let (id, upload, batch) = self.announce_job(token, key_set, 3, json!({})).await;
        let parts = self.upload(&upload, &batch).await;
        let submitted =
            self.call(Method::POST, &format!("/v1/jobs/{id}/submit"), Some(token), Some(json!({"parts": parts}))).await;
        assert_eq!(submitted.status, StatusCode::OK, "{:?}", submitted.body);
        assert_eq!(submitted.body["state"], "queued");
        id
    }
}

/// The test model's real CKKS setting (its compiled throughput plan's parameters).
pub struct Crypto {
    pub context: Arc<Context>,
    pub keys: KeyGenerator,
    pub encryptor: SecretKeyEncryptor,
    pub relin: blindfold_ckks::RelinKey,
    pub level: usize,
    pub scale: f64,
    pub version: String,
}

pub fn crypto() -> &'static Crypto {
    static CRYPTO: OnceLock<Crypto> = OnceLock::new();
    CRYPTO.get_or_init(|| {
        let model = blindfold_nn::registry::load(MODEL).unwrap();
        let plan = ThroughputPlan::compile(MODEL, &model.network).unwrap();
        let context = Context::new(plan.params().clone()).unwrap();
        let keys = KeyGenerator::new(&context);
        let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
        Crypto {
            relin: keys.relin_key(),
            encryptor,
            level: plan.input_level(),
            scale: plan.input_scale(),
            version: model.manifest.version.to_string(),
            context,
            keys,
        }
    })
}

impl Crypto {
    /// A genuine key bundle (relinearization key, no Galois keys) for key set `id`.
    pub fn bundle(&self, id: Uuid) -> Vec<u8> {
        KeyBundle::write(Vec::new(), &self.context, id, &self.relin, &GaloisKeys::default()).unwrap().writer
    }

    /// A genuine input batch with two real ciphertexts.
    pub fn batch(&self, key_set: Uuid, images: u64, model: &str) -> Vec<u8> {
        self.batch_of(key_set, images, model, 2)
    }

    /// A genuine input batch with `ciphertexts` real ciphertexts.
    pub fn batch_of(&self, key_set: Uuid, images: u64, model: &str, ciphertexts: u64) -> Vec<u8> {
        let header = BatchHeader {
            model: model.into(),
            model_version: self.version.clone(),
            packing: Packing::Throughput,
            shape: vec![1, 28, 28],
            image_count: images,
            ciphertext_count: ciphertexts,
            level: self.level,
            scale: self.scale,
            key_set,
            origin: None,
        };
        let mut writer = InputBatchWriter::new(Vec::new(), &self.context, header).unwrap();
        for index in 0..ciphertexts {
            let pixel = index as f64 / ciphertexts as f64;
            let plaintext = self.context.encode(&vec![pixel; images as usize], self.level, self.scale).unwrap();
            writer.push(&self.encryptor.encrypt_seeded(&plaintext).unwrap()).unwrap();
        }
        writer.finish().unwrap().writer
    }
}

/// A key bundle written from FORMAT.md with a *secret key* in place of the relinearization
/// key, every checksum valid: what a confused (or malicious) client might upload.
pub fn bundle_with_secret_key(key_set: Uuid) -> Vec<u8> {
    let crypto = crypto();
    let mut sections = [
        crypto.context.params().to_bytes(),
        crypto.keys.secret_key().to_bytes().to_vec(),
        GaloisKeys::default().to_bytes(&crypto.context),
    ];
    let chunk_size: u32 = 1 << 20;
    // Padded to the exact size of a genuine bundle, the only size the API accepts: the same
    // payload in the same chunks. The last section's tail is never read: the secret key before
    // it is refused first.
    let genuine = crypto.bundle(Uuid::nil());
    let genuine_payload: u64 =
        (0..3).map(|i| u64::from_le_bytes(genuine[64 + 8 * i..72 + 8 * i].try_into().unwrap())).sum();
    let payload: u64 = sections.iter().map(|s| s.len() as u64).sum();
    let padded = sections[2].len() + usize::try_from(genuine_payload - payload).unwrap();
    sections[2].resize(padded, 0);
    let mut out = Vec::new();
    out.extend_from_slice(b"BFKB");
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&96u32.to_le_bytes());
    out.extend_from_slice(&crypto.context.params().fingerprint().0);
    out.extend_from_slice(key_set.as_bytes());
    out.extend_from_slice(&chunk_size.to_le_bytes());
    for section in &sections {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let payload: Vec<u8> = sections.concat();
    let chunks: Vec<&[u8]> = payload.chunks(chunk_size as usize).collect();
    for (index, chunk) in chunks.iter().enumerate() {
        let start = out.len();
        out.extend_from_slice(b"BFCH");
        out.extend_from_slice(&(index as u32).to_le_bytes());
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        out.extend_from_slice(chunk);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    let digest = blake3::hash(&out);
    let start = out.len();
    out.extend_from_slice(b"BFTR");
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(digest.as_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The size of a genuine key bundle for the test model (throughput packing): the only size
/// `POST /v1/key-sets` accepts for it.
pub fn bundle_len() -> usize {
    crypto().bundle(Uuid::nil()).len()
}
