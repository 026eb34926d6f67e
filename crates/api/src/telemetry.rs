//! Prometheus metrics (HTTP requests and latency by route, jobs by state, queue wait and run
//! times) and the request-tracking middleware.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use sqlx::PgPool;

use crate::state::AppState;

/// Per phase: mean, median, p90, p99 seconds.
type PhaseRow = (String, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// The API's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    jobs: IntGaugeVec,
    durations: GaugeVec,
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("blindfold_http_requests_total", "HTTP requests by method, route and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("blindfold_http_request_duration_seconds", "HTTP request latency by method and route")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["method", "route"],
        )?;
        let jobs = IntGaugeVec::new(Opts::new("blindfold_jobs", "Jobs by state (all tenants)"), &["state"])?;
        let durations = GaugeVec::new(
            Opts::new(
                "blindfold_job_duration_seconds",
                "Queue wait (submitted to started) and run time (started to finished) of the jobs finished in the last \
                 hour: mean and quantiles",
            ),
            &["phase", "statistic"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        Ok(Self { registry, requests, latency, jobs, durations })
    }

    /// Records one request.
    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests.with_label_values(&[method, route, &status.to_string()]).inc();
        self.latency.with_label_values(&[method, route]).observe(seconds);
    }

    /// Refreshes the job gauges from the database and renders everything in the text format.
    pub async fn render(&self, pool: &PgPool) -> Result<String, sqlx::Error> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state").fetch_all(pool).await?;
        for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
            let count = counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            self.jobs.with_label_values(&[state]).set(count);
        }
        let rows: Vec<PhaseRow> = sqlx::query_as(
            r#"
            WITH finished AS (
                SELECT extract(epoch FROM started_at - created_at)::float8 AS queue_wait,
                       extract(epoch FROM finished_at - started_at)::float8 AS run
                FROM jobs
                WHERE finished_at > now() - interval '1 hour' AND started_at IS NOT NULL
            ),
            phases AS (
                SELECT 'queue_wait' AS phase, queue_wait AS seconds FROM finished
                UNION ALL SELECT 'run', run FROM finished
            )
            SELECT phase,
                   avg(seconds),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds),
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY seconds),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY seconds)
            FROM phases GROUP BY phase
            "#,
        )
        .fetch_all(pool)
        .await?;
        for phase in ["queue_wait", "run"] {
            let row = rows.iter().find(|row| row.0 == phase);
            let values = [
                ("mean", row.and_then(|r| r.1)),
                ("0.5", row.and_then(|r| r.2)),
                ("0.9", row.and_then(|r| r.3)),
                ("0.99", row.and_then(|r| r.4)),
            ];
            for (statistic, value) in values {
                self.durations.with_label_values(&[phase, statistic]).set(value.unwrap_or(0.0));
            }
        }
        let mut buffer = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

/// Middleware: counts and times every request by its route template (never the raw path).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.observe(&method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}
