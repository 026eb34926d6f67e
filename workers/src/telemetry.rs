//! Prometheus metrics and the `/healthz`, `/readyz`, `/metrics` listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::error::Error;

/// The worker's metrics, registered in their own registry.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Attempts finished, by outcome (`succeeded`, `failed`, `retrying`, `cancelled`, `lost`,
    /// `released`).
    pub jobs: IntCounterVec,
    /// Images in succeeded jobs.
    pub images: IntCounter,
    /// Images per second of compute in the last succeeded job.
    pub images_per_second: Gauge,
    /// Seconds per stage of a job (`keys`, `download` (overlapping `compute`), `compute`, `upload`,
    /// `complete`).
    pub stage_seconds: HistogramVec,
    /// Cache lookups by cache (`keys`, `model`) and result (`hit`, `miss`).
    pub cache: IntCounterVec,
    /// Jobs running now.
    pub running: IntGauge,
    /// Resident memory, read at each scrape.
    pub resident_bytes: IntGauge,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, Error> {
        let fail = |e: prometheus::Error| Error::Setup { context: "registering metrics", detail: e.to_string() };
        let registry = Registry::new();
        let jobs = IntCounterVec::new(
            Opts::new("blindfold_worker_jobs_total", "Job attempts finished, by outcome"),
            &["outcome"],
        )
        .map_err(fail)?;
        let images = IntCounter::new("blindfold_worker_images_total", "Images in succeeded jobs").map_err(fail)?;
        let images_per_second =
            Gauge::new("blindfold_worker_images_per_second", "Images per second of compute in the last succeeded job")
                .map_err(fail)?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("blindfold_worker_stage_seconds", "Seconds per stage of a job")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0]),
            &["stage"],
        )
        .map_err(fail)?;
        let cache = IntCounterVec::new(
            Opts::new("blindfold_worker_cache_lookups_total", "Cache lookups by cache and result"),
            &["cache", "result"],
        )
        .map_err(fail)?;
        let running = IntGauge::new("blindfold_worker_running_jobs", "Jobs running now").map_err(fail)?;
        let resident_bytes =
            IntGauge::new("blindfold_worker_resident_bytes", "Resident memory of the worker process").map_err(fail)?;
        registry.register(Box::new(jobs.clone())).map_err(fail)?;
        registry.register(Box::new(images.clone())).map_err(fail)?;
        registry.register(Box::new(images_per_second.clone())).map_err(fail)?;
        registry.register(Box::new(stage_seconds.clone())).map_err(fail)?;
        registry.register(Box::new(cache.clone())).map_err(fail)?;
        registry.register(Box::new(running.clone())).map_err(fail)?;
        registry.register(Box::new(resident_bytes.clone())).map_err(fail)?;
        Ok(Self { registry, jobs, images, images_per_second, stage_seconds, cache, running, resident_bytes })
    }

    fn render(&self) -> Result<String, prometheus::Error> {
        if let Some(bytes) = resident_bytes() {
            self.resident_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The process's resident set size, from `/proc/self/status` (Linux; `None` elsewhere).
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug, Clone)]
struct Health {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

/// Binds the health and metrics listener and serves it until `stop` resolves. `/readyz`
/// answers 200 while `ready` is set (cleared at shutdown so no new traffic is routed here).
pub(crate) async fn serve(
    bind: SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| Error::Setup {
        context: "binding the metrics address (--metrics-bind)",
        detail: format!("{bind}: {e}"),
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Setup { context: "reading the metrics address", detail: e.to_string() })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(Health { metrics, ready });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    });
    Ok(addr)
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn metrics_page(State(health): State<Health>) -> impl IntoResponse {
    match health.metrics.render() {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text),
        Err(error) => {
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], format!("metrics: {error}\n"))
        }
    }
}
