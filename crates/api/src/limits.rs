//! What keeps one tenant (or one stranger) from exhausting what all share: a request rate limit
//! per credential, a throttle on failed authentication per client address, and each tenant's
//! quotas on announced uploads, unfinished jobs and stored bytes.
//!
//! The rate limits are GCRA buckets ([`governor`]) held in this process: with several API
//! replicas a client gets each replica's allowance, which the settings' defaults account for.
//! The quotas are counted in the database, so they hold across replicas (two announcements
//! racing each other can both pass the check, overshooting by at most one upload each).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The settings of this module, flattened into [`crate::Config`].
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Requests per minute one credential (a bearer token, or a client address without one)
    /// may make on average. 0 turns the rate limit off.
    #[arg(long, env = "BLINDFOLD_API_RATE_PER_MINUTE", default_value_t = 1200)]
    pub rate_per_minute: u32,

    /// Requests one credential may make at once above its rate (the bucket's size).
    #[arg(long, env = "BLINDFOLD_API_RATE_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,

    /// Failed authentications (401) one client address may make per minute before every
    /// request from it is answered 429 until the minute has passed. 0 turns it off.
    #[arg(long, env = "BLINDFOLD_API_AUTH_FAILURES_PER_MINUTE", default_value_t = 10)]
    pub auth_failures_per_minute: u32,

    /// The header that carries the client's address when the API is reached only through a
    /// proxy (an ingress): `x-forwarded-for` (its last entry, the one the proxy appended) or
    /// `x-real-ip`. Unset: the TCP peer's address. Behind a proxy without it, every client
    /// shares the proxy's address, and ten failed logins by anyone would throttle everyone.
    /// Set it only where clients cannot reach the API but through the proxy, or they can
    /// choose their own address.
    #[arg(long, env = "BLINDFOLD_API_CLIENT_ADDRESS_HEADER")]
    pub client_address_header: Option<String>,

    /// Uploads one tenant may have announced and not completed (key sets and jobs).
    #[arg(long, env = "BLINDFOLD_TENANT_MAX_PENDING_UPLOADS", default_value_t = 100)]
    pub tenant_max_pending_uploads: u32,

    /// Jobs one tenant may have unfinished: announced, queued or running.
    #[arg(long, env = "BLINDFOLD_TENANT_MAX_ACTIVE_JOBS", default_value_t = 1000)]
    pub tenant_max_active_jobs: u32,

    /// Bytes one tenant may keep in storage: key bundles, inputs of jobs not yet purged by
    /// retention, and announced uploads at their announced size. Results are not counted (a
    /// result is far smaller than its input).
    #[arg(long, env = "BLINDFOLD_TENANT_MAX_STORED_BYTES", default_value_t = 1 << 40)]
    pub tenant_max_stored_bytes: u64,
}

impl Default for Limits {
    /// The flags' defaults (a test checks that they agree).
    fn default() -> Self {
        Self {
            rate_per_minute: 1200,
            rate_burst: 100,
            auth_failures_per_minute: 10,
            client_address_header: None,
            tenant_max_pending_uploads: 100,
            tenant_max_active_jobs: 1000,
            tenant_max_stored_bytes: 1 << 40,
        }
    }
}

impl Limits {
    /// The limits the environment sets (`BLINDFOLD_API_RATE_PER_MINUTE`, …), the defaults
    /// elsewhere: for processes that embed the API without its command line (`blindfold dev
    /// up`, `demo`).
    pub fn from_env() -> Result<Self, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            limits: Limits,
        }
        Flags::try_parse_from(["blindfold"]).map(|flags| flags.limits)
    }
}

/// The in-process rate limiters.
#[derive(Debug)]
pub(crate) struct Throttle {
    /// By the SHA-256 of the credential.
    requests: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses that used up their failures, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl Throttle {
    pub(crate) fn new(limits: &Limits) -> Self {
        let requests = NonZeroU32::new(limits.rate_per_minute).map(|rate| {
            let burst = NonZeroU32::new(limits.rate_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        let failures = NonZeroU32::new(limits.auth_failures_per_minute)
            .map(|per_minute| RateLimiter::keyed(Quota::per_minute(per_minute)));
        Self { requests, failures, blocked: Mutex::new(HashMap::new()) }
    }

    /// Forgets buckets that are full again and blocks that ended, so that the state does not
    /// grow with every address and token ever seen. Run by [`spawn_pruner`].
    pub(crate) fn prune(&self) {
        if let Some(requests) = &self.requests {
            requests.retain_recent();
        }
        if let Some(failures) = &self.failures {
            failures.retain_recent();
        }
        let now = Instant::now();
        self.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|_, until| *until > now);
    }

    fn blocked_for(&self, address: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        blocked.get(&address).and_then(|until| until.checked_duration_since(Instant::now()))
    }

    fn failed(&self, address: IpAddr) {
        let Some(failures) = &self.failures else { return };
        if let Err(not_until) = failures.check_key(&address) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            tracing::warn!(%address, wait_s = wait.as_secs(), "too many failed authentications; address throttled");
            let mut blocked = self.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            blocked.insert(address, Instant::now() + wait);
        }
    }
}

/// Prunes the rate limiters' state once a minute for as long as the returned task lives.
pub(crate) fn spawn_pruner(state: &AppState) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            state.throttle.prune();
        }
    })
}

/// The middleware: throttled addresses first, then the credential's rate, then the request;
/// a 401 answer counts as a failure of the client's address. Health probes pass untouched.
pub(crate) async fn throttle(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(request).await;
    }
    let address = client_address(&request, state.config.limits.client_address_header.as_deref());
    if let Some(wait) = address.and_then(|a| state.throttle.blocked_for(a)) {
        return ApiError::too_many(
            "too_many_failed_authentications",
            "too many requests from this address failed authentication; wait before trying again",
            wait,
        )
        .into_response();
    }
    if let Some(requests) = &state.throttle.requests {
        let credential: [u8; 32] = match (request.headers().get(AUTHORIZATION), address) {
            (Some(value), _) => Sha256::digest(value.as_bytes()).into(),
            (None, Some(address)) => Sha256::digest(address.to_string().as_bytes()).into(),
            (None, None) => [0; 32],
        };
        if let Err(not_until) = requests.check_key(&credential) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return ApiError::too_many(
                "rate_limited",
                format!(
                    "more than {} requests per minute with this credential; slow down",
                    state.config.limits.rate_per_minute
                ),
                wait,
            )
            .into_response();
        }
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(address) = address
    {
        state.throttle.failed(address);
    }
    response
}

/// The client's address: from `header` when the settings name one and it holds an address
/// (for `x-forwarded-for`, its last entry), else the TCP peer's.
fn client_address(request: &Request, header: Option<&str>) -> Option<IpAddr> {
    let forwarded = header
        .and_then(|name| request.headers().get(name))
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok());
    forwarded.or_else(|| request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip()))
}

/// What a tenant holds now, as its quotas count it.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Usage {
    pending_uploads: i64,
    active_jobs: i64,
    stored_bytes: i64,
}

/// What an announcement would add.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Announcing {
    /// Bytes the client will upload.
    pub(crate) bytes: u64,
    /// Whether it is a job (counted among the tenant's active jobs).
    pub(crate) job: bool,
}

/// Refuses an announcement that would take `tenant` past a quota: 429 `quota_exceeded`, naming
/// the quota, the usage and the limit.
pub(crate) async fn check_quotas(state: &AppState, tenant: Uuid, announcing: Announcing) -> ApiResult<()> {
    let usage: Usage = sqlx::query_as(
        r#"
        SELECT
            (SELECT count(*) FROM pending_uploads WHERE tenant_id = $1) AS pending_uploads,
            (SELECT count(*) FROM pending_uploads WHERE tenant_id = $1 AND kind = 'job')
              + (SELECT count(*) FROM jobs WHERE tenant_id = $1 AND state IN ('queued', 'running')) AS active_jobs,
            ((SELECT coalesce(sum(size_bytes), 0) FROM pending_uploads WHERE tenant_id = $1)
              + (SELECT coalesce(sum(size_bytes), 0) FROM key_sets WHERE tenant_id = $1)
              + (SELECT coalesce(sum(input_bytes), 0) FROM jobs WHERE tenant_id = $1))::bigint AS stored_bytes
        "#,
    )
    .bind(tenant)
    .fetch_one(&state.pool)
    .await?;
    let limits = &state.config.limits;
    let refuse = |quota: &str, usage: String, limit: String| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("this would exceed your quota of {quota}: {usage} now, {limit} allowed; {}", remedy(quota)),
        )
    };
    if usage.pending_uploads >= i64::from(limits.tenant_max_pending_uploads) {
        return Err(refuse(
            "announced uploads",
            usage.pending_uploads.to_string(),
            limits.tenant_max_pending_uploads.to_string(),
        ));
    }
    if announcing.job && usage.active_jobs >= i64::from(limits.tenant_max_active_jobs) {
        return Err(refuse(
            "unfinished jobs",
            usage.active_jobs.to_string(),
            limits.tenant_max_active_jobs.to_string(),
        ));
    }
    let after = u64::try_from(usage.stored_bytes).unwrap_or(0).saturating_add(announcing.bytes);
    if after > limits.tenant_max_stored_bytes {
        return Err(refuse(
            "stored bytes",
            format!("{} (with this upload {after})", usage.stored_bytes),
            limits.tenant_max_stored_bytes.to_string(),
        ));
    }
    Ok(())
}

fn remedy(quota: &str) -> &'static str {
    match quota {
        "announced uploads" => "complete or delete the uploads you announced first",
        "unfinished jobs" => "wait for jobs to finish, or cancel some",
        _ => "delete key sets or wait for finished jobs to be purged",
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Limits;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn the_client_address_comes_from_the_proxy_header_only_when_configured() {
        use std::net::SocketAddr;

        use axum::extract::{ConnectInfo, Request};

        let peer: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let request = |forwarded: &str| {
            let mut request =
                Request::builder().header("x-forwarded-for", forwarded).body(axum::body::Body::empty()).unwrap();
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        };
        let ip = |s: &str| Some(s.parse().unwrap());
        let spoofed_then_real = request("198.51.100.9, 192.0.2.7");
        assert_eq!(super::client_address(&spoofed_then_real, None), ip("10.1.2.3"), "the peer unless configured");
        assert_eq!(super::client_address(&spoofed_then_real, Some("x-forwarded-for")), ip("192.0.2.7"), "the last hop");
        assert_eq!(super::client_address(&request("garbage"), Some("x-forwarded-for")), ip("10.1.2.3"));
    }

    #[test]
    fn the_default_is_the_flags_default() {
        assert_eq!(Flags::parse_from(["api"]).limits, Limits::default());
    }
}
