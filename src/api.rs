//! The HTTP API: balances of owned accounts, Prometheus metrics, liveness and readiness.
//!
//! Balances are read from checkpointed state, never from uncheckpointed work in progress, so an answer
//! always reflects a consistent prefix of the input.
//!
//! `/v1/` routes pass a [`Guard`] first: request size, the rate limit, then the bearer token.
//! `/livez`, `/readyz` and `/metrics` stay open, so probes and scrapers need no secret.

use crate::metrics::{ErrorKind, Metrics};
use crate::registry::PartitionRegistry;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<PartitionRegistry>,
    pub metrics: Metrics,
    pub guard: Arc<Guard>,
}

/// What a `/v1/` request must pass before its handler runs.
pub struct Guard {
    /// The bearer token; `None` means no authentication.
    token: Option<String>,
    max_request_bytes: usize,
    limiter: Option<Mutex<TokenBucket>>,
}

impl Guard {
    /// `rate_limit` is requests per second (0: unlimited), with bursts of one second's worth.
    pub fn new(token: Option<String>, max_request_bytes: u64, rate_limit: u32) -> Guard {
        let limiter = (rate_limit > 0).then(|| {
            let rate = f64::from(rate_limit);
            Mutex::new(TokenBucket { rate, tokens: rate, last: Instant::now() })
        });
        Guard { token, max_request_bytes: usize::try_from(max_request_bytes).unwrap_or(usize::MAX), limiter }
    }

    /// The refusal to send instead of running the handler, if any.
    fn refusal(&self, request: &Request) -> Option<Response> {
        let declared_body = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let target = request.uri().path_and_query().map_or(0, |target| target.as_str().len());
        let size = target + header_bytes(request.headers()) + declared_body;
        if size > self.max_request_bytes {
            return Some(error(StatusCode::PAYLOAD_TOO_LARGE, "request too large"));
        }
        if let Some(limiter) = &self.limiter {
            if !limiter.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let mut refusal = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                refusal.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return Some(refusal);
            }
        }
        if let Some(token) = &self.token {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
                let mut refusal = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                refusal.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                return Some(refusal);
            }
        }
        None
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

/// Compares without stopping at the first difference, so response time does not reveal how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Refills at `rate` tokens per second up to `rate`; a request takes one.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

pub fn router(state: ApiState) -> Router {
    let guarded = Router::new()
        .route("/v1/accounts/{account_id}", get(account))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .merge(guarded)
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn account(State(state): State<ApiState>, Path(account_id): Path<String>) -> Response {
    for (partition, store) in state.registry.stores() {
        match store.account_balances(&account_id) {
            Ok(balances) if balances.is_empty() => continue,
            Ok(balances) => {
                let balances: BTreeMap<&str, String> =
                    balances.iter().map(|(currency, amount)| (currency.as_str(), amount.to_string())).collect();
                return Json(json!({ "account_id": account_id, "balances": balances })).into_response();
            }
            Err(e) => {
                // The detail goes to the log, never to the client.
                state.metrics.handled_error(ErrorKind::StateRead, &format_args!("partition {partition}: {e}"));
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        }
    }
    (StatusCode::NOT_FOUND, Json(json!({ "error": "account not found", "account_id": account_id }))).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.registry.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match state.guard.refusal(&request) {
        None => next.run(request).await,
        Some(refusal) => refusal,
    }
}

async fn count_requests(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    // The matched route template, never the raw path: labels stay bounded.
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let response = next.run(request).await;
    state.metrics.http_requests.with_label_values(&[&route, response.status().as_str()]).inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Amount, Currency};
    use crate::registry::PartitionHandle;
    use axum::body::Body;
    use tower::ServiceExt;

    /// A router over one partition holding account `acct-1` with 12.50 USD.
    fn app(guard: Guard, dir: &std::path::Path) -> Router {
        let env = crate::store::test_env(dir);
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let mut batch = store.begin();
        batch.put_balance("acct-1", Currency::parse("USD").unwrap(), Amount::parse("12.50").unwrap(), 1);
        batch.commit(1, 0).unwrap();
        let registry = Arc::new(PartitionRegistry::default());
        registry.insert(Arc::new(PartitionHandle::new(0, Arc::new(store))));
        router(ApiState { registry, metrics: Metrics::new(), guard: Arc::new(guard) })
    }

    async fn get(app: &Router, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
        let mut request = axum::http::Request::builder().uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        (response.status(), response.headers().clone())
    }

    #[tokio::test]
    async fn v1_routes_need_the_bearer_token_and_probes_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(Some("t0k3n".into()), 16 << 10, 0), dir.path());
        let (status, headers) = get(&app, "/v1/accounts/acct-1", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        for wrong in ["Bearer t0k3", "Bearer t0k3n2", "t0k3n", "Basic t0k3n"] {
            assert_eq!(get(&app, "/v1/accounts/acct-1", &[("authorization", wrong)]).await.0, StatusCode::UNAUTHORIZED);
        }
        let with_token = [("authorization", "Bearer t0k3n")];
        assert_eq!(get(&app, "/v1/accounts/acct-1", &with_token).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/v1/accounts/nobody", &with_token).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&app, "/livez", &[]).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/metrics", &[]).await.0, StatusCode::OK);
        // Not ready (no group joined), but answered without a token.
        assert_eq!(get(&app, "/readyz", &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn without_a_token_configured_v1_routes_are_open() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(None, 16 << 10, 0), dir.path());
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_beyond_the_rate_limit_get_429_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(None, 16 << 10, 2), dir.path());
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
        let (status, headers) = get(&app, "/v1/accounts/acct-1", &[]).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(get(&app, "/livez", &[]).await.0, StatusCode::OK, "probes are not rate limited");
    }

    #[tokio::test]
    async fn oversized_requests_get_413() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(None, 4096, 0), dir.path());
        let big = "x".repeat(5000);
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[("x-padding", &big)]).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(get(&app, &format!("/v1/accounts/{big}"), &[]).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            get(&app, "/v1/accounts/acct-1", &[("content-length", "10000")]).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
